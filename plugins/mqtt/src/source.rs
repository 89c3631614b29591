//! `mqtt` source: topic filters, one row per JSON message with its topic (or the badge API's
//! messages, `format: badge`), QoS 1 and 2 messages acknowledged only after the sinks wrote
//! their rows.

use std::time::Duration;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tributary_sdk::json::JsonRows;
use tributary_sdk::{
    Ack, AckSet, AckStatus, BuiltSource, ComponentConfig, ConfigError, DeadLetter, OutputSpec, Replay, Source, SourceContext, SourcePlugin,
};

use crate::client::{self, Acknowledge, Client, Happening, Received};
use crate::config::{check_filter, Broker, MqttSourceConfig, PayloadFormat, Qos};

pub struct MqttSourcePlugin;

impl SourcePlugin for MqttSourcePlugin {
    fn type_name(&self) -> &'static str {
        "mqtt"
    }
    fn delivery(&self) -> &'static [tributary_sdk::delivery::SourceDelivery] {
        use tributary_sdk::delivery::SourceDelivery;
        &[
            SourceDelivery {
                variant: "`qos: 1` or `2`, `clean_session: false`",
                guarantee: "at-least-once",
                how: "PUBACK (QoS 1) or PUBREC (QoS 2) only after the acks resolve; the broker keeps the session and what was not acknowledged, and delivers it again when the source reconnects",
                duplicates: "messages written but not yet acknowledged when the process stops are delivered again",
                crash_loses: "nothing acknowledged (as long as the broker keeps the session: Mosquitto's `persistence true` across a broker restart)",
            },
            SourceDelivery {
                variant: "`qos: 0`, or `clean_session: true`",
                guarantee: "at-most-once",
                how: "the broker keeps nothing for the source while it is away",
                duplicates: "none",
                crash_loses: "messages in flight (with `buffer: {type: disk}`: nothing stored)",
            },
        ]
    }
    fn build(&self, config: &ComponentConfig) -> Result<BuiltSource, ConfigError> {
        let cfg: MqttSourceConfig = config.decode()?;
        // A persistent session lives under a stable id; a clean one only needs a unique id.
        let client_id = cfg.client_id.clone().unwrap_or_else(|| match cfg.clean_session {
            false => format!("tributary-{}", config.id),
            true => format!("tributary-{}-{}-{:x}", config.id, std::process::id(), tributary_sdk::now_us()),
        });
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
        if cfg.topics.is_empty() {
            return Err(ConfigError::at("topics", "at least one topic filter is required"));
        }
        for (i, filter) in cfg.topics.iter().enumerate() {
            check_filter(filter).map_err(|m| ConfigError::at(&format!("topics[{i}]"), m))?;
        }
        if cfg.batch_size == 0 || cfg.max_in_flight == 0 {
            return Err(ConfigError::at("batch_size", "batch_size and max_in_flight must be at least 1"));
        }
        let payloads = match (cfg.format, &cfg.schema) {
            (PayloadFormat::Json, Some(declared)) => {
                let rows = JsonRows::new(declared, Some(&cfg.time_column));
                let schema = rows.schema_with_label(&cfg.topic_column, "topic's").map_err(|m| ConfigError::at("topic_column", m))?;
                Payloads::Json { rows, schema }
            }
            (PayloadFormat::Json, None) => {
                return Err(ConfigError::at("schema", "the columns of the JSON messages are required (or `format: badge`)"))
            }
            (PayloadFormat::Badge, None) => Payloads::Badge,
            (PayloadFormat::Badge, Some(_)) => {
                return Err(ConfigError::at("schema", "`format: badge` has the badge schema (see the README); remove `schema`"))
            }
        };
        Ok(BuiltSource {
            outputs: vec![OutputSpec::main(payloads.schema())],
            source: Box::new(MqttSource { id: config.id.clone(), cfg, broker, qos, payloads }),
        })
    }
}

/// How messages become rows: decoded once the config is, so `emit` has no mode to check.
enum Payloads {
    Json { rows: JsonRows, schema: SchemaRef },
    Badge,
}

impl Payloads {
    fn schema(&self) -> SchemaRef {
        match self {
            Payloads::Json { schema, .. } => schema.clone(),
            Payloads::Badge => tributary_sdk::badge::badge_schema(),
        }
    }

    /// The rows of `received`, and a dead letter (naming the topic) for each message that does
    /// not decode.
    fn decode(&self, received: &[Received]) -> anyhow::Result<(RecordBatch, Vec<DeadLetter>)> {
        match self {
            Payloads::Json { rows, schema } => {
                let decoded = rows.decode_messages(received.iter().map(|m| m.payload.as_ref()));
                let letters = decoded
                    .bad
                    .iter()
                    .map(|e| DeadLetter { payload: e.raw.clone(), reason: format!("topic {}: {}", received[e.message].topic, e.reason) })
                    .collect();
                Ok((decoded.labelled(schema, |i| received[i].topic.as_str())?, letters))
            }
            Payloads::Badge => {
                let now = tributary_sdk::now_us();
                let mut letters = Vec::new();
                let (mut messages, mut topics) = (Vec::with_capacity(received.len()), Vec::with_capacity(received.len()));
                for m in received {
                    match std::str::from_utf8(&m.payload) {
                        Ok(text) => {
                            let channel = tributary_sdk::badge::channel_of_topic(&m.topic).to_string();
                            messages.push(tributary_sdk::badge::Message { ts_us: now, channel, payload: text.to_string() });
                            topics.push(m.topic.as_str());
                        }
                        Err(e) => letters.push(DeadLetter {
                            payload: String::from_utf8_lossy(&m.payload).into_owned(),
                            reason: format!("topic {}: the message is not UTF-8 text: {e}", m.topic),
                        }),
                    }
                }
                let (rows, bad) = tributary_sdk::badge::to_batch_from(&messages, |i| Some(format!("topic {}", topics[i])));
                letters.extend(bad);
                Ok((rows, letters))
            }
        }
    }
}

pub struct MqttSource {
    id: String,
    cfg: MqttSourceConfig,
    broker: Broker,
    qos: Qos,
    payloads: Payloads,
}

type Done = (Vec<Acknowledge>, AckStatus);

#[async_trait::async_trait]
impl Source for MqttSource {
    fn replay(&self) -> Replay {
        if self.qos == Qos::AtMostOnce || self.cfg.clean_session {
            Replay::Nothing
        } else {
            // The broker delivers again what was not acknowledged, with no position of ours.
            Replay::FromItsOwnPlace
        }
    }

    async fn run(self: Box<Self>, mut ctx: SourceContext) -> anyhow::Result<()> {
        let subscriptions = self.cfg.topics.iter().map(|t| (t.clone(), self.qos)).collect();
        let (client, mut events) =
            client::open(&self.broker, self.cfg.clean_session, true, self.cfg.max_in_flight, subscriptions, self.cfg.batch_size * 2)?;
        tracing::info!(source = %self.id, broker = %self.broker, topics = %self.cfg.topics.join(","), client_id = %self.broker.client_id, "subscribing (MQTT)");
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
        let shutdown = ctx.shutdown.clone();
        let mut received: Vec<Received> = Vec::new();
        let mut deadline: Option<Instant> = None;
        let mut in_flight = 0usize;
        loop {
            let happening = tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(done) = done_rx.recv() => {
                    in_flight -= 1;
                    self.settle(&ctx, &client, done).await;
                    continue;
                }
                _ = tributary_sdk::batcher::batch_deadline(deadline) => None,
                h = events.recv() => match h {
                    Some(h) => Some(h),
                    None => break,
                },
            };
            match happening {
                Some(Happening::Message(m)) => {
                    received.push(*m);
                    deadline.get_or_insert_with(|| Instant::now() + self.cfg.batch_wait.0);
                    if received.len() < self.cfg.batch_size {
                        continue;
                    }
                }
                Some(Happening::Connected { session_present }) => {
                    ctx.metrics.set_failing(None);
                    if !session_present && !self.cfg.clean_session {
                        tracing::info!(source = %self.id, client_id = %self.broker.client_id, "the broker had no session of this client: a new one starts now");
                    } else {
                        tracing::info!(source = %self.id, session_present, "connected to the broker");
                    }
                    continue;
                }
                Some(Happening::Lost(reason)) => {
                    ctx.metrics.retries.inc();
                    if ctx.metrics.failing().is_none() {
                        ctx.metrics.set_failing(Some((tributary_sdk::now_us(), format!("MQTT broker {}: {reason}", self.broker))));
                    }
                    tributary_sdk::report_error!(ctx.metrics, warn, source = %self.id, broker = %self.broker, error = %reason, "MQTT connection lost; reconnecting");
                    continue;
                }
                Some(Happening::Published) => continue,
                None => {}
            }
            deadline = None;
            if received.is_empty() {
                continue;
            }
            in_flight += 1;
            self.emit(&ctx, std::mem::take(&mut received), &done_tx).await?;
        }
        // Let downstream flush, then acknowledge what it wrote; the rest is delivered again at
        // the next connection (a persistent session keeps it).
        ctx.close_outputs();
        let until = Instant::now() + Duration::from_secs(25);
        while in_flight > 0 {
            match tokio::time::timeout_at(until, done_rx.recv()).await {
                Ok(Some(done)) => {
                    in_flight -= 1;
                    self.settle(&ctx, &client, done).await;
                }
                _ => {
                    tracing::warn!(source = %self.id, batches = in_flight, "messages still unacknowledged at shutdown are delivered again at the next start");
                    break;
                }
            }
        }
        // Give the event loop a moment to send the last acknowledgements, then leave cleanly.
        tokio::time::sleep(Duration::from_millis(100)).await;
        client.disconnect().await;
        Ok(())
    }
}

impl MqttSource {
    async fn emit(&self, ctx: &SourceContext, received: Vec<Received>, done: &mpsc::UnboundedSender<Done>) -> anyhow::Result<()> {
        let (rows, letters) = self.payloads.decode(&received)?;
        let acks: Vec<Acknowledge> = received.into_iter().filter_map(|m| m.ack).collect();
        let tx = done.clone();
        let ack = AckSet::single(Ack::new(move |status| {
            let _ = tx.send((acks, status));
        }));
        ctx.send_decoded(rows, letters, ack).await?;
        Ok(())
    }

    /// Acknowledges a written batch's messages. MQTT has no negative acknowledgement: a failed
    /// batch's messages stay unacknowledged, and the broker delivers them again at the next
    /// connection.
    async fn settle(&self, ctx: &SourceContext, client: &Client, (acks, status): Done) {
        match status {
            AckStatus::Delivered => {
                for a in &acks {
                    if let Err(e) = client.ack(a).await {
                        tributary_sdk::report_error!(ctx.metrics, warn, source = %self.id, error = %e, "acknowledging a message failed; it will be delivered again");
                    }
                }
            }
            AckStatus::Failed => {
                tributary_sdk::report_error!(ctx.metrics, error, source = %self.id, messages = acks.len(), "downstream failed to write; the messages stay unacknowledged and come again at the next connection");
            }
        }
    }
}
