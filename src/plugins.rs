//! The plugins linked into this build, by `type:` name.

use tributary_sdk::{SinkPlugin, SourcePlugin};

pub struct Registry {
    sources: Vec<Box<dyn SourcePlugin>>,
    sinks: Vec<Box<dyn SinkPlugin>>,
}

impl Registry {
    /// Every plugin in this build.
    pub fn builtin() -> Self {
        Registry {
            sources: vec![
                Box::new(crate::demo::DemoSourcePlugin),
                Box::new(tributary_file::FileSourcePlugin),
                Box::new(tributary_http_server::HttpServerPlugin),
                Box::new(tributary_site_probe::SiteProbePlugin),
                Box::new(tributary_kafka::KafkaSourcePlugin),
                Box::new(tributary_badge_events::BadgeEventsPlugin),
                Box::new(tributary_srt_stats::SrtStatsPlugin),
                Box::new(tributary_webex_mesh::WebexMeshPlugin),
                Box::new(tributary_parquet::ParquetSourcePlugin),
                Box::new(tributary_prometheus::ScrapeSourcePlugin),
                Box::new(tributary_otlp::OtlpSourcePlugin),
                Box::new(tributary_nats::NatsSourcePlugin),
                Box::new(tributary_mqtt::MqttSourcePlugin),
                Box::new(tributary_amqp::AmqpSourcePlugin),
            ],
            sinks: vec![
                Box::new(tributary_parquet::ParquetSinkPlugin),
                Box::new(tributary_console::ConsoleSinkPlugin),
                Box::new(tributary_file::FileSinkPlugin),
                Box::new(tributary_timescale::TimescaleSinkPlugin),
                Box::new(tributary_kafka::KafkaSinkPlugin),
                Box::new(tributary_influx::InfluxSinkPlugin),
                Box::new(tributary_otlp::OtlpSinkPlugin),
                Box::new(tributary_prometheus::RemoteWriteSinkPlugin),
                Box::new(tributary_nats::NatsSinkPlugin),
                Box::new(tributary_mqtt::MqttSinkPlugin),
                Box::new(tributary_amqp::AmqpSinkPlugin),
            ],
        }
    }

    pub fn source(&self, type_name: &str) -> Option<&dyn SourcePlugin> {
        self.sources.iter().find(|p| p.type_name() == type_name).map(|p| p.as_ref())
    }
    pub fn sink(&self, type_name: &str) -> Option<&dyn SinkPlugin> {
        self.sinks.iter().find(|p| p.type_name() == type_name).map(|p| p.as_ref())
    }
    pub fn sources(&self) -> impl Iterator<Item = &dyn SourcePlugin> {
        self.sources.iter().map(|p| p.as_ref())
    }
    pub fn sinks(&self) -> impl Iterator<Item = &dyn SinkPlugin> {
        self.sinks.iter().map(|p| p.as_ref())
    }
    pub fn source_types(&self) -> Vec<&'static str> {
        self.sources.iter().map(|p| p.type_name()).collect()
    }
    pub fn sink_types(&self) -> Vec<&'static str> {
        self.sinks.iter().map(|p| p.type_name()).collect()
    }
}
