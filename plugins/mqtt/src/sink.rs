//! `mqtt` sink: each row as a JSON object on a topic made from the row. With QoS 1 or 2 a batch
//! counts as written once the broker acknowledged every message (PUBACK, PUBCOMP).

use std::time::Duration;

use anyhow::Context;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use tokio::sync::mpsc;
use tributary_sdk::dead_letter::rows_as_json;
use tributary_sdk::template::RowTemplate;
use tributary_sdk::{
    single_input_schema, ComponentConfig, ConfigError, DeadLetter, Durability, Sink, SinkContext, SinkPlugin, Transient, Written,
};

use crate::client::{self, Client, Happening};
use crate::config::{Broker, MqttSinkConfig, Qos};

/// Characters a topic cannot take from a row: the wildcards, NUL, and whitespace (a `/` in a
/// value makes more levels, which is allowed).
const NOT_IN_TOPICS: [char; 4] = [' ', '+', '#', '\0'];

pub struct MqttSinkPlugin;

impl SinkPlugin for MqttSinkPlugin {
    fn type_name(&self) -> &'static str {
        "mqtt"
    }
    fn delivery(&self) -> &'static [tributary_sdk::delivery::SinkDelivery] {
        use tributary_sdk::delivery::SinkDelivery;
        &[
            SinkDelivery {
                variant: "`qos: 1` or `2`",
                durable_when: "the broker acknowledged every message of the batch (PUBACK, PUBCOMP)",
                duplicates: "QoS 1: a batch retried after a lost connection or a timeout is published again",
            },
            SinkDelivery { variant: "`qos: 0`", durable_when: "the messages were sent; the broker confirms nothing", duplicates: "none" },
        ]
    }
    fn build(&self, config: &ComponentConfig, inputs: &[(String, SchemaRef)]) -> Result<Box<dyn Sink>, ConfigError> {
        let cfg: MqttSinkConfig = config.decode()?;
        let schema = single_input_schema(inputs)?;
        // A sink keeps no session, so its default id only has to be unique: two processes of one
        // pipeline with the same id would take the connection from each other.
        let client_id = cfg
            .client_id
            .clone()
            .unwrap_or_else(|| format!("tributary-{}-{}-{:x}", config.id, std::process::id(), tributary_sdk::now_us()));
        let broker = Broker::parse(
            &cfg.url,
            Some(&client_id),
            &config.id,
            cfg.protocol,
            &cfg.user,
            &cfg.password,
            &cfg.tls_ca_file,
            cfg.keep_alive.0,
        )?;
        let qos = Qos::parse(cfg.qos)?;
        let topic = RowTemplate::parse(&cfg.topic, &schema).map_err(|m| ConfigError::at("topic", m))?;
        Ok(Box::new(MqttSink { id: config.id.clone(), broker, qos, retain: cfg.retain, topic, timeout: cfg.timeout.0, connection: None }))
    }
}

pub struct MqttSink {
    id: String,
    broker: Broker,
    qos: Qos,
    retain: bool,
    topic: RowTemplate,
    timeout: Duration,
    connection: Option<(Client, mpsc::Receiver<Happening>)>,
}

impl MqttSink {
    /// The rows as (topic, JSON) messages, and the rows whose topic cannot be made.
    fn messages(&self, batch: &RecordBatch) -> (Vec<(String, String)>, Vec<DeadLetter>) {
        let mut out = Vec::with_capacity(batch.num_rows());
        let mut rejected = Vec::new();
        for (topic, payload) in self.topic.render(batch, &NOT_IN_TOPICS).into_iter().zip(rows_as_json(batch)) {
            match topic.and_then(|t| if t.is_empty() { Err("an empty topic".to_string()) } else { Ok(t) }) {
                Ok(topic) => out.push((topic, payload)),
                Err(reason) => rejected.push(DeadLetter { payload, reason }),
            }
        }
        (out, rejected)
    }
}

#[async_trait::async_trait]
impl Sink for MqttSink {
    async fn start(&mut self, _ctx: &SinkContext) -> anyhow::Result<()> {
        self.connection = Some(client::open(&self.broker, true, false, u16::MAX, Vec::new(), 1024)?);
        tracing::info!(sink = %self.id, broker = %self.broker, topic = %self.topic, "publishing (MQTT)");
        Ok(())
    }

    async fn write(&mut self, batch: RecordBatch, ctx: &SinkContext) -> Result<Written, Transient> {
        let (messages, rejected) = self.messages(&batch);
        let (id, broker, qos, retain, timeout) = (&self.id, self.broker.to_string(), self.qos, self.retain, self.timeout);
        let Some((client, events)) = &mut self.connection else { return Err(Transient::new(anyhow::anyhow!("not started"))) };
        // Confirmations left over from an earlier attempt that timed out are not this batch's.
        while events.try_recv().is_ok() {}
        let expected = messages.len();
        let publishing = async {
            for (topic, payload) in messages {
                client.publish(topic, qos, retain, payload.into_bytes()).await.context("publishing to the MQTT broker")?;
            }
            Ok::<_, anyhow::Error>(())
        };
        // The event loop runs meanwhile; count the broker's confirmations as they come.
        let counting = async {
            let mut confirmed = 0;
            while confirmed < expected {
                match events.recv().await {
                    Some(Happening::Published) => confirmed += 1,
                    Some(Happening::Lost(reason)) => {
                        ctx.metrics.retries.inc();
                        tracing::warn!(sink = %id, broker = %broker, error = %reason, "MQTT connection lost; reconnecting");
                    }
                    Some(_) => {}
                    None => anyhow::bail!("the MQTT connection ended"),
                }
            }
            Ok(())
        };
        let (published, counted) = tokio::time::timeout(timeout, async { tokio::join!(publishing, counting) })
            .await
            .map_err(|_| Transient::new(anyhow::anyhow!("the MQTT broker {broker} did not confirm the batch within {timeout:?}")))?;
        published?;
        counted?;
        Ok(Written::with(Durability::Durable, rejected))
    }

    async fn flush(&mut self, _ctx: &SinkContext) -> Result<Vec<DeadLetter>, Transient> {
        Ok(Vec::new())
    }
}
