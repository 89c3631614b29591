//! `nats` source: a core subject (at most once), or a JetStream durable pull consumer whose
//! messages are acknowledged only after the sinks wrote their rows.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::consumer::{pull, AckPolicy, PullConsumer};
use async_nats::jetstream::message::{AckKind, Acker};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use futures::StreamExt;
use serde::Deserialize;
use tokio::sync::mpsc;
use tributary_sdk::json::JsonRows;
use tributary_sdk::{
    Ack, AckSet, AckStatus, BuiltSource, ComponentConfig, ConfigError, DeadLetter, DeclaredSchema, OutputSpec, Period, Replay, Secret,
    Source, SourceContext, SourcePlugin,
};

use crate::connect::Connection;

/// Config of a `nats` source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSourceConfig {
    pub url: String,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub password: Option<Secret>,
    #[serde(default)]
    pub token: Option<Secret>,
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// Core NATS: the subject to subscribe to (wildcards allowed). With `stream`: only the
    /// stream's messages on these subjects (the consumer's filter).
    #[serde(default)]
    pub subject: Option<String>,
    /// Core NATS: processes in one queue group share the subject's messages.
    #[serde(default)]
    pub queue_group: Option<String>,
    /// An existing JetStream stream to read.
    #[serde(default)]
    pub stream: Option<String>,
    /// The durable pull consumer's name (created when missing); processes that name the same
    /// consumer share its messages.
    #[serde(default)]
    pub consumer: Option<String>,
    /// Columns and types of the JSON messages.
    pub schema: DeclaredSchema,
    /// Timestamp column filled with the receive time when a message lacks it (default `ts`).
    #[serde(default = "default_time_column")]
    pub time_column: String,
    /// The column that holds each message's subject (default `subject`).
    #[serde(default = "default_subject_column")]
    pub subject_column: String,
    /// Messages per batch at most (default 500).
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// How long a partial batch waits for more messages (default 200ms).
    #[serde(default = "default_batch_wait")]
    pub batch_wait: Period,
    /// JetStream: how long the server waits for a message's acknowledgement before it delivers
    /// it again, to any process of the consumer (default 30s). Messages waiting for the sinks are
    /// kept alive with progress notes meanwhile; a process that dies lets them go after this.
    #[serde(default = "default_ack_wait")]
    pub ack_wait: Period,
    /// JetStream: deliveries of one message at most; a message whose last delivery still failed
    /// downstream goes to the dead letters (default 5).
    #[serde(default = "default_max_deliver")]
    pub max_deliver: u32,
    /// JetStream: batches sent but not yet acknowledged before reading pauses (default 64).
    #[serde(default = "default_max_pending_batches")]
    pub max_pending_batches: usize,
}

fn default_time_column() -> String {
    "ts".into()
}
fn default_subject_column() -> String {
    "subject".into()
}
fn default_batch_size() -> usize {
    500
}
fn default_batch_wait() -> Period {
    Period::from_millis(200)
}
fn default_ack_wait() -> Period {
    Period::from_secs(30)
}
fn default_max_deliver() -> u32 {
    5
}
fn default_max_pending_batches() -> usize {
    64
}

/// What the source reads, decided once from the config.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Mode {
    Core { subject: String, queue_group: Option<String> },
    JetStream { stream: String, consumer: String, filter: Option<String> },
}

impl Mode {
    fn of(cfg: &NatsSourceConfig) -> Result<Mode, ConfigError> {
        match (&cfg.stream, &cfg.consumer) {
            (Some(stream), Some(consumer)) => {
                if cfg.queue_group.is_some() {
                    return Err(ConfigError::at(
                        "queue_group",
                        "a JetStream consumer is already shared by every process that names it; remove `queue_group`",
                    ));
                }
                Ok(Mode::JetStream { stream: stream.clone(), consumer: consumer.clone(), filter: cfg.subject.clone() })
            }
            (Some(_), None) => Err(ConfigError::at("consumer", "reading a JetStream `stream` needs the durable `consumer`'s name")),
            (None, Some(_)) => Err(ConfigError::at("stream", "a `consumer` reads a JetStream stream: name it in `stream`")),
            (None, None) => match &cfg.subject {
                Some(subject) => Ok(Mode::Core { subject: subject.clone(), queue_group: cfg.queue_group.clone() }),
                None => Err(ConfigError::at(
                    "subject",
                    "set `subject` (core NATS, at most once) or `stream` and `consumer` (JetStream, acknowledged after the sinks wrote)",
                )),
            },
        }
    }
}

pub struct NatsSourcePlugin;

impl SourcePlugin for NatsSourcePlugin {
    fn type_name(&self) -> &'static str {
        "nats"
    }
    fn delivery(&self) -> &'static [tributary_sdk::delivery::SourceDelivery] {
        use tributary_sdk::delivery::SourceDelivery;
        &[
            SourceDelivery {
                variant: "`stream` + `consumer` (JetStream)",
                guarantee: "at-least-once",
                how: "each message acknowledged only after the acks resolve, kept alive with progress notes until then; a message unacknowledged for `ack_wait` (its process died) is delivered again, to any process of the consumer; its last delivery (`max_deliver`) that still fails goes to the dead letters",
                duplicates: "messages written but not yet acknowledged when a process dies are delivered again",
                crash_loses: "nothing acknowledged",
            },
            SourceDelivery {
                variant: "`subject` (core NATS)",
                guarantee: "at-most-once",
                how: "core NATS keeps nothing: messages published while the source is away, or beyond what the client buffers, are gone",
                duplicates: "none",
                crash_loses: "messages in flight (with `buffer: {type: disk}`: nothing stored)",
            },
        ]
    }
    fn build(&self, config: &ComponentConfig) -> Result<BuiltSource, ConfigError> {
        let cfg: NatsSourceConfig = config.decode()?;
        let connection = Connection {
            url: cfg.url.clone(),
            user: cfg.user.clone(),
            password: cfg.password.clone(),
            token: cfg.token.clone(),
            tls_ca_file: cfg.tls_ca_file.clone(),
        };
        connection.check()?;
        let mode = Mode::of(&cfg)?;
        if cfg.batch_size == 0 || cfg.max_pending_batches == 0 || cfg.max_deliver == 0 {
            return Err(ConfigError::at("batch_size", "batch_size, max_pending_batches and max_deliver must be at least 1"));
        }
        let rows = JsonRows::new(&cfg.schema, Some(&cfg.time_column));
        let schema = rows.schema_with_label(&cfg.subject_column, "subject's").map_err(|m| ConfigError::at("subject_column", m))?;
        Ok(BuiltSource {
            outputs: vec![OutputSpec::main(schema.clone())],
            source: Box::new(NatsSource { id: config.id.clone(), cfg, connection, mode, rows, schema }),
        })
    }
}

pub struct NatsSource {
    id: String,
    cfg: NatsSourceConfig,
    connection: Connection,
    mode: Mode,
    rows: JsonRows,
    schema: SchemaRef,
}

/// A JetStream message sent downstream and not yet acknowledged.
struct Pending {
    acker: Acker,
    subject: String,
    payload: bytes::Bytes,
    stream_sequence: u64,
    delivered: i64,
}

#[async_trait::async_trait]
impl Source for NatsSource {
    fn replay(&self) -> Replay {
        match self.mode {
            Mode::Core { .. } => Replay::Nothing,
            // The server redelivers what was not acknowledged, with no position of ours.
            Mode::JetStream { .. } => Replay::FromItsOwnPlace,
        }
    }
    async fn run(self: Box<Self>, ctx: SourceContext) -> anyhow::Result<()> {
        match self.mode.clone() {
            Mode::Core { subject, queue_group } => self.run_core(ctx, &subject, queue_group).await,
            Mode::JetStream { stream, consumer, filter } => self.run_jetstream(ctx, &stream, &consumer, filter).await,
        }
    }
}

impl NatsSource {
    /// Decodes messages (subject, payload) into rows plus their subjects, and dead letters that
    /// name the message (`where_` says where each came from).
    fn decode(&self, messages: &[(&str, &[u8])], where_: impl Fn(usize) -> String) -> anyhow::Result<(RecordBatch, Vec<DeadLetter>)> {
        let decoded = self.rows.decode_messages(messages.iter().map(|(_, p)| *p));
        let letters = decoded
            .bad
            .iter()
            .map(|e| DeadLetter { payload: e.raw.clone(), reason: format!("{}: {}", where_(e.message), e.reason) })
            .collect();
        Ok((decoded.labelled(&self.schema, |i| messages[i].0)?, letters))
    }

    async fn run_core(&self, ctx: SourceContext, subject: &str, queue_group: Option<String>) -> anyhow::Result<()> {
        let client = self.connection.connect(&self.id, &ctx.metrics).await?;
        let mut subscription = match queue_group {
            Some(group) => client.queue_subscribe(subject.to_string(), group).await,
            None => client.subscribe(subject.to_string()).await,
        }
        .with_context(|| format!("subscribing to `{subject}`"))?;
        tracing::info!(source = %self.id, subject, "subscribed (core NATS)");
        let shutdown = ctx.shutdown.clone();
        loop {
            let first = tokio::select! {
                _ = shutdown.cancelled() => break,
                m = subscription.next() => match m { Some(m) => m, None => break },
            };
            let mut received = vec![first];
            let until = tokio::time::Instant::now() + self.cfg.batch_wait.0;
            while received.len() < self.cfg.batch_size {
                match tokio::time::timeout_at(until, subscription.next()).await {
                    Ok(Some(m)) => received.push(m),
                    _ => break,
                }
            }
            let messages: Vec<(&str, &[u8])> = received.iter().map(|m| (m.subject.as_str(), m.payload.as_ref())).collect();
            let (rows, letters) = self.decode(&messages, |i| format!("subject {}", messages[i].0))?;
            ctx.send_decoded(rows, letters, AckSet::none()).await?;
        }
        Ok(())
    }

    /// The durable consumer, created when missing. Waits for the server (and the stream) to be
    /// there, so a pipeline may start before its broker.
    async fn consumer(
        &self,
        ctx: &SourceContext,
        js: &async_nats::jetstream::Context,
        stream: &str,
        consumer: &str,
        filter: &Option<String>,
    ) -> anyhow::Result<Option<PullConsumer>> {
        let config = pull::Config {
            durable_name: Some(consumer.to_string()),
            ack_policy: AckPolicy::Explicit,
            ack_wait: self.cfg.ack_wait.0,
            max_deliver: i64::from(self.cfg.max_deliver),
            filter_subject: filter.clone().unwrap_or_default(),
            ..Default::default()
        };
        loop {
            let found = match js.get_stream(stream).await {
                Ok(s) => s.get_or_create_consumer(consumer, config.clone()).await.map_err(anyhow::Error::from),
                Err(e) => Err(anyhow::Error::from(e).context(format!("JetStream stream `{stream}` (the source reads an existing stream)"))),
            };
            match found {
                Ok(c) => return Ok(Some(c)),
                Err(e) => {
                    ctx.metrics.retries.inc();
                    tributary_sdk::report_error!(ctx.metrics, warn, source = %self.id, error = %format!("{e:#}"), "cannot open the JetStream consumer; retrying");
                    tokio::select! {
                        _ = ctx.shutdown.cancelled() => return Ok(None),
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    }

    async fn run_jetstream(&self, mut ctx: SourceContext, stream: &str, consumer: &str, filter: Option<String>) -> anyhow::Result<()> {
        let client = self.connection.connect(&self.id, &ctx.metrics).await?;
        let js = async_nats::jetstream::new(client.clone());
        let Some(pull) = self.consumer(&ctx, &js, stream, consumer, &filter).await? else { return Ok(()) };
        tracing::info!(source = %self.id, stream, consumer, "reading (JetStream)");
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(u64, AckStatus)>();
        let mut in_flight: HashMap<u64, Vec<Pending>> = HashMap::new();
        let mut next_batch = 0u64;
        let mut keep_alive = tokio::time::interval(self.cfg.ack_wait.0 / 3);
        keep_alive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_keep_alive = tokio::time::Instant::now();
        let shutdown = ctx.shutdown.clone();
        loop {
            while let Ok((batch, status)) = done_rx.try_recv() {
                self.settle(&ctx, in_flight.remove(&batch), status, &done_tx, &mut next_batch, &mut in_flight).await;
            }
            if shutdown.is_cancelled() {
                break;
            }
            if in_flight.len() >= self.cfg.max_pending_batches {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = keep_alive.tick() => keep_in_progress(&in_flight).await,
                    Some((batch, status)) = done_rx.recv() => {
                        self.settle(&ctx, in_flight.remove(&batch), status, &done_tx, &mut next_batch, &mut in_flight).await;
                    }
                }
                continue;
            }
            if last_keep_alive.elapsed() >= self.cfg.ack_wait.0 / 3 {
                keep_in_progress(&in_flight).await;
                last_keep_alive = tokio::time::Instant::now();
            }
            // Nothing but the stop may cancel a fetch: messages the server already handed to a
            // dropped fetch wait `ack_wait` before anyone gets them again.
            let fetched = tokio::select! {
                _ = shutdown.cancelled() => break,
                fetched = fetch(&pull, self.cfg.batch_size, self.cfg.batch_wait.0) => fetched,
            };
            let messages = match fetched {
                Ok(m) => m,
                Err(e) => {
                    ctx.metrics.retries.inc();
                    // `/health` names a source that keeps failing (after `admin.degraded_after`).
                    if ctx.metrics.failing().is_none() {
                        ctx.metrics.set_failing(Some((tributary_sdk::now_us(), format!("fetching from JetStream: {e:#}"))));
                    }
                    tributary_sdk::report_error!(ctx.metrics, warn, source = %self.id, error = %format!("{e:#}"), "fetching from JetStream failed; retrying");
                    tokio::select! { _ = shutdown.cancelled() => break, _ = tokio::time::sleep(Duration::from_millis(500)) => {} }
                    continue;
                }
            };
            // A fetch also comes back (empty, at its expiry) while the connection is down: only a
            // connected client clears the mark the connection's events set.
            if ctx.metrics.failing().is_some() && client.connection_state() == async_nats::connection::State::Connected {
                ctx.metrics.set_failing(None);
            }
            if messages.is_empty() {
                continue;
            }
            let mut pending = Vec::with_capacity(messages.len());
            for m in messages {
                let (stream_sequence, delivered) = m.info().map(|i| (i.stream_sequence, i.delivered)).unwrap_or((0, 1));
                let (message, acker) = m.split();
                pending.push(Pending { acker, subject: message.subject.to_string(), payload: message.payload, stream_sequence, delivered });
            }
            let view: Vec<(&str, &[u8])> = pending.iter().map(|p| (p.subject.as_str(), p.payload.as_ref())).collect();
            let (rows, letters) = self.decode(&view, |i| format!("{stream} #{} ({})", pending[i].stream_sequence, pending[i].subject))?;
            let batch = next_batch;
            next_batch += 1;
            in_flight.insert(batch, pending);
            let tx = done_tx.clone();
            let ack = Ack::new(move |status| {
                let _ = tx.send((batch, status));
            });
            ctx.send_decoded(rows, letters, AckSet::single(ack)).await?;
        }
        // Let downstream flush, then acknowledge what it wrote before leaving; the rest is
        // delivered again after `ack_wait`.
        ctx.close_outputs();
        let until = tokio::time::Instant::now() + Duration::from_secs(25);
        while !in_flight.is_empty() {
            match tokio::time::timeout_at(until, done_rx.recv()).await {
                Ok(Some((batch, status))) => {
                    self.settle(&ctx, in_flight.remove(&batch), status, &done_tx, &mut next_batch, &mut in_flight).await
                }
                _ => {
                    let messages: usize = in_flight.values().map(Vec::len).sum();
                    tracing::warn!(source = %self.id, messages, "messages still unacknowledged at shutdown are delivered again after ack_wait");
                    break;
                }
            }
        }
        // An ack is a publish the client buffers: without a flush, the last ones die with the
        // process, and the server delivers those messages again after `ack_wait` (seen: 100 of
        // a survivor's messages still pending after it stopped in the scale-out test).
        if let Err(e) = tokio::time::timeout(Duration::from_secs(5), client.flush()).await.unwrap_or_else(|_| Ok(())) {
            tracing::warn!(source = %self.id, error = %e, "sending the last acknowledgements failed; those messages are delivered again after ack_wait");
        }
        Ok(())
    }

    /// Acknowledges a written batch. A failed one is delivered again (after a second), except
    /// its messages on their last delivery, which go to the dead letters.
    async fn settle(
        &self,
        ctx: &SourceContext,
        messages: Option<Vec<Pending>>,
        status: AckStatus,
        done: &mpsc::UnboundedSender<(u64, AckStatus)>,
        next_batch: &mut u64,
        in_flight: &mut HashMap<u64, Vec<Pending>>,
    ) {
        let Some(messages) = messages else { return };
        match status {
            AckStatus::Delivered => {
                for m in &messages {
                    if let Err(e) = m.acker.ack().await {
                        tributary_sdk::report_error!(ctx.metrics, warn, source = %self.id, error = %e, "acknowledging a message failed; it will be delivered again");
                    }
                }
            }
            AckStatus::Failed => {
                let (last, again): (Vec<Pending>, Vec<Pending>) =
                    messages.into_iter().partition(|m| m.delivered >= i64::from(self.cfg.max_deliver));
                tributary_sdk::report_error!(ctx.metrics, warn, source = %self.id, again = again.len(), dead_letters = last.len(), "downstream failed to write; messages go back to the stream");
                for m in &again {
                    let _ = m.acker.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
                }
                if last.is_empty() {
                    return;
                }
                let letters = last
                    .iter()
                    .map(|m| DeadLetter {
                        payload: String::from_utf8_lossy(&m.payload).into_owned(),
                        reason: format!(
                            "#{} ({}): delivered {} times (max_deliver) and never written",
                            m.stream_sequence, m.subject, m.delivered
                        ),
                    })
                    .collect();
                let batch = *next_batch;
                *next_batch += 1;
                let tx = done.clone();
                let ack = Ack::new(move |status| {
                    let _ = tx.send((batch, status));
                });
                // Acknowledged once the dead letters are stored. Marked as not on their last
                // delivery, so that if even that write fails they are negatively acknowledged
                // rather than dead-lettered again; the server then keeps them (it stops
                // delivering them after `max_deliver`).
                let mut last = last;
                for m in &mut last {
                    m.delivered = i64::MIN;
                }
                in_flight.insert(batch, last);
                if ctx.dead_letters.send(letters, AckSet::single(ack)).await.is_err() {
                    tracing::warn!(source = %self.id, "the dead-letter output is closed; messages on their last delivery stay unacknowledged");
                }
            }
        }
    }
}

/// Up to `max` messages, as many as the stream has for this consumer now; when it has none,
/// after waiting `wait` (a pull request that waits on the server, `batch` with `expires`, never
/// returned the stream's messages from NATS 2.9).
async fn fetch(consumer: &PullConsumer, max: usize, wait: Duration) -> anyhow::Result<Vec<async_nats::jetstream::Message>> {
    let mut batch = consumer.fetch().max_messages(max).messages().await?;
    let mut out = Vec::new();
    while let Some(m) = batch.next().await {
        out.push(m.map_err(|e| anyhow::anyhow!(e))?);
    }
    if out.is_empty() {
        tokio::time::sleep(wait).await;
    }
    Ok(out)
}

/// Tells the server that the messages waiting for the sinks are still being worked on, so it
/// does not hand them to another process after `ack_wait`.
async fn keep_in_progress(in_flight: &HashMap<u64, Vec<Pending>>) {
    for m in in_flight.values().flatten() {
        let _ = m.acker.ack_with(AckKind::Progress).await;
    }
}
