//! `kafka` sink: one message per row; the batch is acknowledged only after every delivery report.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Deserialize;
use tributary_sdk::{
    single_input_schema, AckSet, ComponentConfig, ConfigError, DeadLetter, Durability, HumanDuration, Secret, Sink, SinkContext, SinkPlugin,
};

use crate::client::{client_config, SslConfig};
use crate::format::{api_status_messages, check_api_status_columns, json_messages};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkFormat {
    /// Each row as a JSON object (null columns omitted).
    #[default]
    Json,
    /// Exactly the API status monitor's message (see the README).
    ApiStatusMonitor,
}

/// Config of a `kafka` sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkConfig {
    pub bootstrap_servers: String,
    pub topic: String,
    /// Column whose value (as text) is the message key; no key when absent (like the original).
    #[serde(default)]
    pub key_column: Option<String>,
    #[serde(default)]
    pub format: SinkFormat,
    /// How long librdkafka keeps retrying one message before it is a dead letter (default 30s).
    #[serde(default = "default_delivery_timeout")]
    pub delivery_timeout: HumanDuration,
    #[serde(default)]
    pub ssl: Option<SslConfig>,
    #[serde(default)]
    pub librdkafka: BTreeMap<String, Secret>,
}

fn default_delivery_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}

pub struct KafkaSinkPlugin;

impl SinkPlugin for KafkaSinkPlugin {
    fn type_name(&self) -> &'static str {
        "kafka"
    }
    fn build(&self, config: &ComponentConfig, inputs: &[(String, SchemaRef)]) -> Result<Box<dyn Sink>, ConfigError> {
        let cfg: KafkaSinkConfig = config.decode()?;
        let schema = single_input_schema(inputs)?;
        if let Some(k) = &cfg.key_column {
            if schema.field_with_name(k).is_err() {
                return Err(ConfigError::at("key_column", format!("the input has no column `{k}`")));
            }
        }
        if cfg.format == SinkFormat::ApiStatusMonitor {
            check_api_status_columns(&schema)?;
        }
        if cfg.topic.is_empty() {
            return Err(ConfigError::at("topic", "must not be empty"));
        }
        Ok(Box::new(KafkaSink { id: config.id.clone(), cfg, producer: None }))
    }
}

pub struct KafkaSink {
    id: String,
    cfg: KafkaSinkConfig,
    producer: Option<FutureProducer>,
}

#[async_trait::async_trait]
impl Sink for KafkaSink {
    async fn start(&mut self, _ctx: &SinkContext) -> anyhow::Result<()> {
        // Like the original producer: wait for all in-sync replicas (overridable via `librdkafka:`).
        let defaults = [("acks", "all".to_string()), ("message.timeout.ms", self.cfg.delivery_timeout.0.as_millis().to_string())];
        let cfg = client_config(
            &format!("tributary/{}", self.id),
            &self.cfg.bootstrap_servers,
            self.cfg.ssl.as_ref(),
            &defaults,
            &self.cfg.librdkafka,
        );
        self.producer = Some(cfg.create().context("creating the Kafka producer")?);
        Ok(())
    }

    async fn write(&mut self, batch: RecordBatch, ctx: &SinkContext) -> anyhow::Result<Durability> {
        let producer = self.producer.as_ref().expect("started");
        let messages = match self.cfg.format {
            SinkFormat::Json => json_messages(&batch),
            SinkFormat::ApiStatusMonitor => api_status_messages(&batch),
        };
        let keys = match &self.cfg.key_column {
            Some(k) => Some(cast(batch.column_by_name(k).expect("checked at build"), &DataType::Utf8)?),
            None => None,
        };
        let key_at = |i: usize| keys.as_ref().filter(|k| k.is_valid(i)).map(|k| k.as_string::<i32>().value(i).to_string());
        let mut in_flight = Vec::with_capacity(messages.len());
        for (i, payload) in messages.iter().enumerate() {
            let key = key_at(i);
            loop {
                let mut record = FutureRecord::<String, String>::to(&self.cfg.topic).payload(payload);
                if let Some(k) = &key {
                    record = record.key(k);
                }
                match producer.send_result(record) {
                    Ok(delivery) => {
                        in_flight.push((i, delivery));
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                        // librdkafka's local queue is full: wait for deliveries to drain it.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    Err((e, _)) => {
                        return Err(anyhow::anyhow!("cannot queue a message for topic `{}`: {e}", self.cfg.topic));
                    }
                }
            }
        }
        let mut failed = Vec::new();
        for (i, delivery) in in_flight {
            let reason = match delivery.await {
                Ok(Ok(_)) => continue,
                Ok(Err((e, _))) => format!("delivery to topic `{}` failed: {e}", self.cfg.topic),
                Err(_) => format!("delivery to topic `{}` was cancelled (producer closed)", self.cfg.topic),
            };
            failed.push(DeadLetter { payload: messages[i].clone(), reason });
        }
        if !failed.is_empty() {
            ctx.metrics.errors.add(failed.len() as u64);
            tracing::warn!(sink = %self.id, failed = failed.len(), "messages not delivered; sending them to the dead-letter output");
            ctx.dead_letters.send(failed, AckSet::none()).await?;
        }
        Ok(Durability::Durable)
    }

    async fn flush(&mut self, _ctx: &SinkContext) -> anyhow::Result<()> {
        // Every write awaited its delivery reports: nothing is buffered here.
        Ok(())
    }
}
