//! `kafka` sink: one message per row; the batch is acknowledged only after every delivery report.
//! Messages the broker refuses for good come back as dead letters; undelivered ones (timeouts,
//! unreachable brokers) are handed back to the engine, which retries just those rows.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use datafusion::arrow::array::{Array, AsArray, RecordBatch, UInt32Array};
use datafusion::arrow::compute::{cast, take_record_batch};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Deserialize;
use tributary_sdk::{
    single_input_schema, ComponentConfig, ConfigError, DeadLetter, Durability, Period, Secret, Sink, SinkContext, SinkPlugin, Transient,
    Written,
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
    /// How long librdkafka keeps retrying one message before the write fails transiently and the
    /// engine retries the undelivered messages (default 30s).
    #[serde(default = "default_delivery_timeout")]
    pub delivery_timeout: Period,
    #[serde(default)]
    pub ssl: Option<SslConfig>,
    #[serde(default)]
    pub librdkafka: BTreeMap<String, Secret>,
}

fn default_delivery_timeout() -> Period {
    Period(Duration::from_secs(30))
}

pub struct KafkaSinkPlugin;

impl SinkPlugin for KafkaSinkPlugin {
    fn type_name(&self) -> &'static str {
        "kafka"
    }
    fn delivery(&self) -> &'static [tributary_sdk::delivery::SinkDelivery] {
        use tributary_sdk::delivery::SinkDelivery;
        &[SinkDelivery {
            variant: "",
            durable_when: "every message's delivery report came back (`acks: all`)",
            duplicates: "messages retried after a timeout may be written twice (the producer is not idempotent by default; set `librdkafka: {enable.idempotence: 'true'}`)",
        }]
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

    async fn write(&mut self, batch: RecordBatch, _ctx: &SinkContext) -> Result<Written, Transient> {
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
        let mut retry_rows: Vec<u32> = Vec::new();
        let mut rejected = Vec::new();
        let mut last_error = None;
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
                        let reason = format!("cannot queue a message for topic `{}`: {e}", self.cfg.topic);
                        if refused_for_good(&e) {
                            rejected.push(DeadLetter { payload: payload.clone(), reason });
                        } else {
                            retry_rows.push(i as u32);
                            last_error = Some(reason);
                        }
                        break;
                    }
                }
            }
        }
        for (i, delivery) in in_flight {
            let error = match delivery.await {
                Ok(Ok(_)) => continue,
                Ok(Err((e, _))) => e,
                Err(_) => KafkaError::Canceled,
            };
            let reason = format!("delivery to topic `{}` failed: {e}", self.cfg.topic, e = error);
            if refused_for_good(&error) {
                rejected.push(DeadLetter { payload: messages[i].clone(), reason });
            } else {
                retry_rows.push(i as u32);
                last_error = Some(reason);
            }
        }
        if !retry_rows.is_empty() {
            // Only the undelivered rows are tried again; the refused ones are reported now.
            retry_rows.sort_unstable();
            let rows = take_record_batch(&batch, &UInt32Array::from(retry_rows))?;
            let error = last_error.unwrap_or_default();
            let error = anyhow::anyhow!("{error} ({} of {} messages to retry)", rows.num_rows(), batch.num_rows());
            return Err(Transient::partial(error, rows).with_rejected(rejected));
        }
        Ok(Written::with(Durability::Durable, rejected))
    }

    async fn flush(&mut self, _ctx: &SinkContext) -> Result<Vec<DeadLetter>, Transient> {
        // Every write awaited its delivery reports: nothing is buffered here.
        Ok(Vec::new())
    }
}

/// Errors the broker will answer the same way every time (a message too large, a topic that is
/// invalid or not ours to write): such messages are dead letters. Everything else — timeouts,
/// unreachable brokers, leader changes, throttling — is worth retrying.
fn refused_for_good(error: &KafkaError) -> bool {
    use RDKafkaErrorCode::*;
    matches!(
        error.rdkafka_error_code(),
        Some(
            MessageSizeTooLarge
                | InvalidMessageSize
                | InvalidMessage
                | MessageBatchTooLarge
                | InvalidRecord
                | TopicAuthorizationFailed
                | ClusterAuthorizationFailed
                | InvalidTopic
                | InvalidRequiredAcks
                | UnsupportedForMessageFormat
                | PolicyViolation
        )
    )
}
