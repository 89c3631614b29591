//! `amqp` sink: each row as a persistent JSON message, published under publisher confirms.

use std::path::PathBuf;

use anyhow::Context;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use serde::Deserialize;
use tributary_sdk::dead_letter::rows_as_json;
use tributary_sdk::template::RowTemplate;
use tributary_sdk::{
    single_input_schema, ComponentConfig, ConfigError, DeadLetter, Durability, Period, Secret, Sink, SinkContext, SinkPlugin, Transient,
    Written,
};

use crate::Broker;

/// Config of an `amqp` sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpSinkConfig {
    pub url: String,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub password: Option<Secret>,
    /// `amqps://`: PEM file of the CA that signed the broker's certificate (default: the public roots).
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// The exchange to publish to (default: the default exchange, which routes to the queue
    /// named by the routing key).
    #[serde(default)]
    pub exchange: String,
    /// Each row's routing key; `{column}` takes the row's value (`probes.{site}`).
    pub routing_key: String,
    /// How long the broker may take to confirm a batch (default 10s).
    #[serde(default = "default_timeout")]
    pub timeout: Period,
}

fn default_timeout() -> Period {
    Period::from_secs(10)
}

pub struct AmqpSinkPlugin;

impl SinkPlugin for AmqpSinkPlugin {
    fn type_name(&self) -> &'static str {
        "amqp"
    }
    fn delivery(&self) -> &'static [tributary_sdk::delivery::SinkDelivery] {
        use tributary_sdk::delivery::SinkDelivery;
        &[SinkDelivery {
            variant: "",
            durable_when: "the broker confirmed every message of the batch (publisher confirms; persistent messages in a durable queue are on disk then)",
            duplicates: "a batch retried after a lost connection or a timeout is published again",
        }]
    }
    fn build(&self, config: &ComponentConfig, inputs: &[(String, SchemaRef)]) -> Result<Box<dyn Sink>, ConfigError> {
        let cfg: AmqpSinkConfig = config.decode()?;
        let schema = single_input_schema(inputs)?;
        let broker = Broker::parse(&cfg.url, &cfg.user, &cfg.password, &cfg.tls_ca_file)?;
        let routing_key = RowTemplate::parse(&cfg.routing_key, &schema).map_err(|m| ConfigError::at("routing_key", m))?;
        Ok(Box::new(AmqpSink { broker, cfg, routing_key, channel: None }))
    }
}

pub struct AmqpSink {
    broker: Broker,
    cfg: AmqpSinkConfig,
    routing_key: RowTemplate,
    channel: Option<(Connection, Channel)>,
}

impl AmqpSink {
    /// The channel, opened (with confirms on) when there is none or the last one broke.
    async fn channel(&mut self) -> anyhow::Result<Channel> {
        if let Some((_, channel)) = &self.channel {
            if channel.status().connected() {
                return Ok(channel.clone());
            }
        }
        let connection = self.broker.connect().await.with_context(|| format!("connecting to the AMQP broker {}", self.cfg.url))?;
        let channel = connection.create_channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        self.channel = Some((connection, channel.clone()));
        Ok(channel)
    }
}

#[async_trait::async_trait]
impl Sink for AmqpSink {
    async fn write(&mut self, batch: RecordBatch, _ctx: &SinkContext) -> Result<Written, Transient> {
        let mut rejected = Vec::new();
        let mut messages = Vec::with_capacity(batch.num_rows());
        for (key, payload) in self.routing_key.render(&batch, &[]).into_iter().zip(rows_as_json(&batch)) {
            match key {
                Ok(key) if key.len() <= 255 => messages.push((key, payload)),
                Ok(key) => rejected.push(DeadLetter { payload, reason: format!("routing key `{key}` is longer than 255 bytes") }),
                Err(reason) => rejected.push(DeadLetter { payload, reason }),
            }
        }
        let channel = self.channel().await?;
        let exchange = self.cfg.exchange.clone();
        let properties = BasicProperties::default().with_delivery_mode(2).with_content_type("application/json".into());
        let confirming = async {
            let mut confirms = Vec::with_capacity(messages.len());
            for (key, payload) in &messages {
                let options = BasicPublishOptions { mandatory: true, ..Default::default() };
                confirms.push(
                    channel
                        .basic_publish(exchange.as_str().into(), key.as_str().into(), options, payload.as_bytes(), properties.clone())
                        .await?,
                );
            }
            let mut unroutable = Vec::new();
            for (confirm, (key, payload)) in confirms.into_iter().zip(&messages) {
                match confirm.await? {
                    Confirmation::Ack(None) | Confirmation::NotRequested => {}
                    Confirmation::Ack(Some(_returned)) => unroutable.push(DeadLetter {
                        payload: payload.clone(),
                        reason: format!("no queue is bound to exchange `{exchange}` for routing key `{key}`"),
                    }),
                    Confirmation::Nack(_) => anyhow::bail!("the broker could not store a message (negative confirm)"),
                }
            }
            Ok::<_, anyhow::Error>(unroutable)
        };
        let unroutable = tokio::time::timeout(self.cfg.timeout.0, confirming)
            .await
            .map_err(|_| Transient::new(anyhow::anyhow!("the AMQP broker did not confirm the batch within {:?}", self.cfg.timeout.0)))?
            .inspect_err(|_| self.channel = None)?;
        rejected.extend(unroutable);
        Ok(Written::with(Durability::Durable, rejected))
    }

    async fn flush(&mut self, _ctx: &SinkContext) -> Result<Vec<DeadLetter>, Transient> {
        Ok(Vec::new())
    }
}
