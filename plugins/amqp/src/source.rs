//! `amqp` source: a queue consumed with manual acknowledgements after the sinks wrote.

use std::path::PathBuf;
use std::time::Duration;

use datafusion::arrow::datatypes::SchemaRef;
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::Acker;
use lapin::Connection;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tributary_sdk::json::JsonRows;
use tributary_sdk::{
    Ack, AckSet, AckStatus, BuiltSource, ComponentConfig, ConfigError, DeadLetter, DeclaredSchema, OutputSpec, Period, Replay, Secret,
    Source, SourceContext, SourcePlugin,
};

use crate::Broker;

/// Config of an `amqp` source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpSourceConfig {
    pub url: String,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub password: Option<Secret>,
    /// `amqps://`: PEM file of the CA that signed the broker's certificate (default: the public roots).
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// The queue to consume (it must exist).
    pub queue: String,
    /// Messages delivered and not yet acknowledged at most (default 1000).
    #[serde(default = "default_prefetch")]
    pub prefetch: u16,
    /// Columns and types of the JSON messages.
    pub schema: DeclaredSchema,
    /// Timestamp column filled with the receive time when a message lacks it (default `ts`).
    #[serde(default = "default_time_column")]
    pub time_column: String,
    /// The column that holds each message's routing key (default `routing_key`).
    #[serde(default = "default_routing_key_column")]
    pub routing_key_column: String,
    /// Messages per batch at most (default 500).
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// How long a partial batch waits for more messages (default 100ms).
    #[serde(default = "default_batch_wait")]
    pub batch_wait: Period,
}

fn default_prefetch() -> u16 {
    1000
}
fn default_time_column() -> String {
    "ts".into()
}
fn default_routing_key_column() -> String {
    "routing_key".into()
}
fn default_batch_size() -> usize {
    500
}
fn default_batch_wait() -> Period {
    Period::from_millis(100)
}

pub struct AmqpSourcePlugin;

impl SourcePlugin for AmqpSourcePlugin {
    fn type_name(&self) -> &'static str {
        "amqp"
    }
    fn delivery(&self) -> &'static [tributary_sdk::delivery::SourceDelivery] {
        use tributary_sdk::delivery::SourceDelivery;
        &[SourceDelivery {
            variant: "",
            guarantee: "at-least-once",
            how: "`basic.ack` only after the acks resolve; a failed batch is requeued (`basic.nack`); at most `prefetch` messages wait unacknowledged",
            duplicates: "messages written but not yet acknowledged when the connection or the process ends are delivered again",
            crash_loses: "nothing acknowledged (a durable queue keeps persistent messages across a broker restart)",
        }]
    }
    fn build(&self, config: &ComponentConfig) -> Result<BuiltSource, ConfigError> {
        let cfg: AmqpSourceConfig = config.decode()?;
        let broker = Broker::parse(&cfg.url, &cfg.user, &cfg.password, &cfg.tls_ca_file)?;
        if cfg.batch_size == 0 || cfg.prefetch == 0 {
            return Err(ConfigError::at("prefetch", "prefetch and batch_size must be at least 1"));
        }
        let rows = JsonRows::new(&cfg.schema, Some(&cfg.time_column));
        let schema =
            rows.schema_with_label(&cfg.routing_key_column, "routing key's").map_err(|m| ConfigError::at("routing_key_column", m))?;
        Ok(BuiltSource {
            outputs: vec![OutputSpec::main(schema.clone())],
            source: Box::new(AmqpSource { id: config.id.clone(), broker, cfg, rows, schema }),
        })
    }
}

pub struct AmqpSource {
    id: String,
    /// With the credentials: never printed.
    broker: Broker,
    cfg: AmqpSourceConfig,
    rows: JsonRows,
    schema: SchemaRef,
}

struct Received {
    routing_key: String,
    payload: Vec<u8>,
    acker: Acker,
}

type Done = (Vec<Acker>, AckStatus);

#[async_trait::async_trait]
impl Source for AmqpSource {
    fn replay(&self) -> Replay {
        // The broker delivers again what was not acknowledged, with no position of ours.
        Replay::FromItsOwnPlace
    }

    async fn run(self: Box<Self>, mut ctx: SourceContext) -> anyhow::Result<()> {
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
        let shutdown = ctx.shutdown.clone();
        let mut in_flight = 0usize;
        // Closed cleanly at the end, so the last acknowledgements reach the broker first; the
        // consumer is kept until then too (acknowledging through a dropped consumer's deliveries
        // failed in a run of the tests, and the broker delivered them again).
        let mut open: Option<Connection> = None;
        let mut kept: Option<lapin::Consumer> = None;
        'connection: while !shutdown.is_cancelled() {
            let (connection, mut consumer) = match self.consume().await {
                Ok(c) => {
                    ctx.metrics.set_failing(None);
                    tracing::info!(source = %self.id, url = %self.cfg.url, queue = %self.cfg.queue, "consuming (AMQP)");
                    c
                }
                Err(e) => {
                    self.failed(&ctx, &e);
                    tokio::select! { _ = shutdown.cancelled() => break, _ = tokio::time::sleep(Duration::from_secs(1)) => {} }
                    continue;
                }
            };
            open = Some(connection);
            let mut received: Vec<Received> = Vec::new();
            let mut deadline: Option<Instant> = None;
            loop {
                let delivery = tokio::select! {
                    _ = shutdown.cancelled() => None,
                    Some(done) = done_rx.recv() => {
                        in_flight -= 1;
                        self.settle(&ctx, done).await;
                        continue;
                    }
                    _ = tributary_sdk::batcher::batch_deadline(deadline) => None,
                    d = consumer.next() => match d {
                        Some(Ok(d)) => Some(d),
                        Some(Err(e)) => {
                            self.failed(&ctx, &e.into());
                            continue 'connection;
                        }
                        None => continue 'connection,
                    },
                };
                if let Some(d) = delivery {
                    received.push(Received { routing_key: d.routing_key.as_str().to_string(), payload: d.data, acker: d.acker });
                    deadline.get_or_insert_with(|| Instant::now() + self.cfg.batch_wait.0);
                    if received.len() < self.cfg.batch_size {
                        continue;
                    }
                }
                deadline = None;
                if !received.is_empty() {
                    in_flight += 1;
                    self.emit(&ctx, std::mem::take(&mut received), &done_tx).await?;
                }
                if shutdown.is_cancelled() {
                    kept = Some(consumer);
                    break 'connection;
                }
            }
        }
        // Let downstream flush, then acknowledge what it wrote; the rest is delivered again.
        ctx.close_outputs();
        let until = Instant::now() + Duration::from_secs(25);
        while in_flight > 0 {
            match tokio::time::timeout_at(until, done_rx.recv()).await {
                Ok(Some(done)) => {
                    in_flight -= 1;
                    self.settle(&ctx, done).await;
                }
                _ => {
                    tracing::warn!(source = %self.id, batches = in_flight, "messages still unacknowledged at shutdown are delivered again");
                    break;
                }
            }
        }
        if let Some(connection) = open {
            let _ = connection.close(200, "stopping".into()).await;
        }
        drop(kept);
        Ok(())
    }
}

impl AmqpSource {
    async fn consume(&self) -> anyhow::Result<(Connection, lapin::Consumer)> {
        let connection = self.broker.connect().await?;
        let channel = connection.create_channel().await?;
        channel.basic_qos(self.cfg.prefetch, BasicQosOptions::default()).await?;
        let tag = format!("tributary/{}", self.id);
        let consumer = channel
            .basic_consume(self.cfg.queue.as_str().into(), tag.as_str().into(), BasicConsumeOptions::default(), FieldTable::default())
            .await
            .map_err(|e| anyhow::anyhow!("consuming queue `{}`: {e}", self.cfg.queue))?;
        Ok((connection, consumer))
    }

    fn failed(&self, ctx: &SourceContext, e: &anyhow::Error) {
        ctx.metrics.retries.inc();
        if ctx.metrics.failing().is_none() {
            ctx.metrics.set_failing(Some((tributary_sdk::now_us(), format!("AMQP broker {}: {e:#}", self.cfg.url))));
        }
        tributary_sdk::report_error!(ctx.metrics, warn, source = %self.id, url = %self.cfg.url, error = %format!("{e:#}"), "AMQP connection failed; reconnecting");
    }

    async fn emit(&self, ctx: &SourceContext, received: Vec<Received>, done: &mpsc::UnboundedSender<Done>) -> anyhow::Result<()> {
        let decoded = self.rows.decode_messages(received.iter().map(|m| m.payload.as_slice()));
        let letters: Vec<DeadLetter> = decoded
            .bad
            .iter()
            .map(|e| DeadLetter {
                payload: e.raw.clone(),
                reason: format!("queue {} ({}): {}", self.cfg.queue, received[e.message].routing_key, e.reason),
            })
            .collect();
        let rows = decoded.labelled(&self.schema, |i| received[i].routing_key.as_str())?;
        let ackers: Vec<Acker> = received.into_iter().map(|m| m.acker).collect();
        let tx = done.clone();
        let ack = AckSet::single(Ack::new(move |status| {
            let _ = tx.send((ackers, status));
        }));
        ctx.send_decoded(rows, letters, ack).await?;
        Ok(())
    }

    async fn settle(&self, ctx: &SourceContext, (ackers, status): Done) {
        for acker in &ackers {
            let result = match status {
                AckStatus::Delivered => acker.ack(BasicAckOptions::default()).await,
                AckStatus::Failed => acker.nack(BasicNackOptions { requeue: true, ..Default::default() }).await,
            };
            if let Err(e) = result {
                tributary_sdk::report_error!(ctx.metrics, warn, source = %self.id, error = %e, "settling a message failed; the broker delivers it again");
            }
        }
        if matches!(status, AckStatus::Failed) {
            tributary_sdk::report_error!(ctx.metrics, warn, source = %self.id, messages = ackers.len(), "downstream failed to write; the messages went back to the queue");
        }
    }
}
