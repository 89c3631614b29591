//! `badge_events` source: the badge API's events from Redis, normalised to one schema.
//!
//! - `mode: pubsub` subscribes to the API's channels: compatible with the unmodified API, but
//!   Redis Pub/Sub keeps nothing — whatever is published while we are disconnected is gone. The
//!   source reconnects with backoff and counts reconnects (`retries_total`).
//! - `mode: stream` reads a Redis Stream through a consumer group (`XREADGROUP`), and `XACK`s an
//!   entry only after every sink wrote its rows (ack handles). At start it first re-reads its own
//!   pending entries, and periodically claims entries another consumer left pending longer than
//!   `claim_idle` (XPENDING + XCLAIM, never its own in-flight entries): at-least-once end to end.
//! - `mode: http` receives the events over HTTP instead: `POST /<channel>` with the message as the
//!   body (what the API would have PUBLISHed), or `POST /` with NDJSON envelopes
//!   `{"channel": …, "payload": …}`. Same auth, size limit and backpressure answers as
//!   `http_server`; 200 once the rows are in the pipeline.
//!
//! Stream entries carry `channel` and `payload` fields (the channel says how to decode the
//! payload; default `high-score-processor`). Undecodable messages go to the dead-letter output
//! with the reason (and, in stream mode, are acknowledged once the dead letter is stored).

pub mod decode;
mod http;

use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use futures::StreamExt;
use redis::streams::{StreamClaimReply, StreamId, StreamReadOptions, StreamReadReply};
use redis::AsyncCommands;
use serde::Deserialize;
use tokio::sync::mpsc;
use tributary_sdk::config::event_time_type;
use tributary_sdk::retry::Backoff;
use tributary_sdk::{
    now_us, Ack, AckSet, AckStatus, Batch, BuiltSource, ComponentConfig, ConfigError, DeadLetter, HumanDuration, OutputSpec, Period,
    Secret, Source, SourceContext, SourcePlugin,
};

use decode::{decode, BadgeRow};

/// How events are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Pubsub,
    Stream,
    Http,
}

/// Config of a `badge_events` source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BadgeEventsConfig {
    pub mode: Mode,
    /// `redis://[:password@]host:port/db` (a secret: it may hold a password).
    #[serde(default = "default_url")]
    pub url: Secret,
    /// Pub/Sub channels (pubsub mode).
    #[serde(default = "default_channels")]
    pub channels: Vec<String>,
    /// Stream key (stream mode).
    #[serde(default = "default_stream")]
    pub stream: String,
    /// Consumer group (created at the start of the stream if missing).
    #[serde(default = "default_group")]
    pub group: String,
    /// This consumer's name in the group; keep it stable across restarts so its own pending
    /// entries are re-read.
    #[serde(default = "default_consumer")]
    pub consumer: String,
    /// Entries pending on another consumer for this long are claimed (default 60s).
    #[serde(default = "default_claim_idle")]
    pub claim_idle: Period,
    /// Entries per read (default 500).
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Pub/Sub messages held while the pipeline is busy (default 10000); beyond, the newest are
    /// dropped and counted in `dropped_total` (Pub/Sub cannot be told to wait).
    #[serde(default = "default_max_buffered")]
    pub max_buffered: usize,
    /// Pub/Sub messages are batched for at most this long (default 200ms).
    #[serde(default = "default_batch_wait")]
    pub batch_wait: HumanDuration,
    /// HTTP mode: address to listen on, e.g. `0.0.0.0:8090`.
    #[serde(default)]
    pub address: Option<std::net::SocketAddr>,
    /// HTTP mode: path prefix (default `/`): `POST <path><channel>`, or NDJSON envelopes to `<path>`.
    #[serde(default = "default_path")]
    pub path: String,
    /// HTTP mode: require `Authorization: Bearer <token>` (use `${ENV}`).
    #[serde(default)]
    pub token: Option<Secret>,
    /// HTTP mode: largest accepted body (default 1MiB); larger gets 413.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: tributary_sdk::config::ByteSize,
    /// HTTP mode: time to send the request headers (default 10s); then the connection is closed.
    #[serde(default = "tributary_sdk::http::default_header_timeout")]
    pub header_timeout: Period,
    /// HTTP mode: time to send the body (default 30s); then 408.
    #[serde(default = "tributary_sdk::http::default_body_timeout")]
    pub body_timeout: Period,
    /// HTTP mode: on stop, how long requests in flight may take (default 5s); then connections close.
    #[serde(default = "tributary_sdk::http::default_stop_timeout")]
    pub stop_timeout: Period,
}

fn default_url() -> Secret {
    Secret::new("redis://127.0.0.1:6379")
}
fn default_channels() -> Vec<String> {
    ["high-score-processor", "achievement", "community-message", "fact"].map(String::from).to_vec()
}
fn default_stream() -> String {
    "badge-events".into()
}
fn default_group() -> String {
    "tributary".into()
}
fn default_consumer() -> String {
    "tributary-1".into()
}
fn default_max_buffered() -> usize {
    10_000
}
fn default_claim_idle() -> Period {
    Period(Duration::from_secs(60))
}
fn default_batch() -> usize {
    500
}
fn default_path() -> String {
    "/".into()
}
fn default_max_body() -> tributary_sdk::config::ByteSize {
    tributary_sdk::config::ByteSize(1 << 20)
}
fn default_batch_wait() -> HumanDuration {
    HumanDuration(Duration::from_millis(200))
}

/// The output schema: one row per event (per score for high-score lists).
pub fn badge_schema() -> SchemaRef {
    let s = |n: &str| Field::new(n, DataType::Utf8, true);
    let i = |n: &str| Field::new(n, DataType::Int64, true);
    Arc::new(Schema::new(vec![
        Field::new("ts", event_time_type(), false),
        Field::new("channel", DataType::Utf8, false),
        s("event"),
        s("user_uuid"),
        s("mac_address"),
        s("game"),
        i("score"),
        i("duration"),
        s("handle"),
        i("points"),
        s("message"),
        Field::new("raw", DataType::Utf8, false),
    ]))
}

/// A received message: when, where from, what.
#[derive(Debug, Clone)]
pub struct Message {
    pub ts_us: i64,
    pub channel: String,
    pub payload: String,
}

/// Decode messages into a batch, plus dead letters for the ones that do not decode.
pub fn to_batch(messages: &[Message]) -> (RecordBatch, Vec<DeadLetter>) {
    let mut rows: Vec<(&Message, BadgeRow)> = Vec::new();
    let mut dead = Vec::new();
    for m in messages {
        match decode(&m.channel, &m.payload) {
            Ok(decoded) => rows.extend(decoded.into_iter().map(|r| (m, r))),
            Err(reason) => dead.push(DeadLetter { payload: m.payload.clone(), reason }),
        }
    }
    let s = |f: fn(&BadgeRow) -> &Option<String>| Arc::new(StringArray::from_iter(rows.iter().map(|(_, r)| f(r).as_deref())));
    let i = |f: fn(&BadgeRow) -> Option<i64>| Arc::new(Int64Array::from_iter(rows.iter().map(|(_, r)| f(r))));
    let batch = RecordBatch::try_new(
        badge_schema(),
        vec![
            Arc::new(TimestampMicrosecondArray::from_iter_values(rows.iter().map(|(m, _)| m.ts_us)).with_timezone("UTC")),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|(m, _)| m.channel.as_str()))),
            s(|r| &r.event),
            s(|r| &r.user_uuid),
            s(|r| &r.mac_address),
            s(|r| &r.game),
            i(|r| r.score),
            i(|r| r.duration),
            s(|r| &r.handle),
            i(|r| r.points),
            s(|r| &r.message),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|(m, _)| m.payload.as_str()))),
        ],
    )
    .expect("columns match the badge schema");
    (batch, dead)
}

pub struct BadgeEventsPlugin;

impl SourcePlugin for BadgeEventsPlugin {
    fn type_name(&self) -> &'static str {
        "badge_events"
    }
    fn build(&self, config: &ComponentConfig) -> Result<BuiltSource, ConfigError> {
        let cfg: BadgeEventsConfig = config.decode()?;
        redis::Client::open(cfg.url.expose()).map_err(|e| ConfigError::at("url", format!("not a Redis URL: {e}")))?;
        if cfg.mode == Mode::Pubsub && cfg.channels.is_empty() {
            return Err(ConfigError::at("channels", "name at least one channel"));
        }
        if cfg.mode == Mode::Http {
            if cfg.address.is_none() {
                return Err(ConfigError::at("address", "`mode: http` needs an address to listen on, e.g. `0.0.0.0:8090`"));
            }
            if !cfg.path.starts_with('/') {
                return Err(ConfigError::at("path", format!("must start with `/`, got `{}`", cfg.path)));
            }
        }
        if cfg.batch_size == 0 {
            return Err(ConfigError::at("batch_size", "must be at least 1"));
        }
        if cfg.max_buffered == 0 {
            return Err(ConfigError::at("max_buffered", "must be at least 1"));
        }
        Ok(BuiltSource {
            outputs: vec![OutputSpec::main(badge_schema())],
            source: Box::new(BadgeEventsSource { id: config.id.clone(), cfg }),
        })
    }
}

pub struct BadgeEventsSource {
    id: String,
    cfg: BadgeEventsConfig,
}

/// Reconnects wait 100 ms doubling to 5 s, forever (until shutdown).
const RECONNECT: Backoff = Backoff { initial: Duration::from_millis(100), max: Duration::from_secs(5), max_attempts: None };

impl BadgeEventsSource {
    fn client(&self) -> anyhow::Result<redis::Client> {
        Ok(redis::Client::open(self.cfg.url.expose())?)
    }

    /// Send decoded rows and dead letters; `acks` resolve when both are stored.
    async fn emit(&self, ctx: &SourceContext, messages: &[Message], acks: AckSet) -> anyhow::Result<()> {
        let (batch, dead) = to_batch(messages);
        ctx.metrics.bytes_in.add(messages.iter().map(|m| m.payload.len() as u64).sum());
        if !dead.is_empty() {
            tributary_sdk::report_error!(ctx.metrics, warn, count = dead.len(), source = %self.id, first_reason = %dead[0].reason, "undecodable badge events");
            ctx.dead_letters.send(dead, acks.clone()).await?;
        }
        if batch.num_rows() == 0 {
            acks.release();
        } else {
            ctx.output("").send(Batch::with_acks(batch, acks)).await?;
        }
        Ok(())
    }

    /// Pub/Sub cannot push back: while the pipeline is busy, messages keep arriving. A reader
    /// drains Redis into a buffer of at most `max_buffered` messages (beyond it the newest are
    /// dropped and counted in `dropped_total`), so memory stays bounded; an emitter batches from
    /// the buffer and waits for the pipeline.
    async fn run_pubsub(&self, ctx: &SourceContext) -> anyhow::Result<()> {
        let (buffer, mut buffered) = mpsc::channel::<Message>(self.cfg.max_buffered);
        let emitter = async {
            let mut pending: Vec<Message> = Vec::new();
            loop {
                let next = if pending.is_empty() {
                    buffered.recv().await
                } else {
                    match tokio::time::timeout(self.cfg.batch_wait.0, buffered.recv()).await {
                        Ok(m) => m,
                        Err(_) => {
                            self.emit(ctx, &std::mem::take(&mut pending), AckSet::none()).await?;
                            continue;
                        }
                    }
                };
                match next {
                    Some(m) => {
                        pending.push(m);
                        if pending.len() >= self.cfg.batch_size {
                            self.emit(ctx, &std::mem::take(&mut pending), AckSet::none()).await?;
                        }
                    }
                    None => break,
                }
            }
            if !pending.is_empty() {
                self.emit(ctx, &pending, AckSet::none()).await?;
            }
            Ok::<_, anyhow::Error>(())
        };
        let reader = async move {
            let result = self.read_pubsub(ctx, &buffer).await;
            drop(buffer);
            result
        };
        tokio::try_join!(reader, emitter)?;
        Ok(())
    }

    async fn read_pubsub(&self, ctx: &SourceContext, buffer: &mpsc::Sender<Message>) -> anyhow::Result<()> {
        let client = self.client()?;
        let mut attempt = 0u32;
        while !ctx.shutdown.is_cancelled() {
            let mut pubsub = match client.get_async_pubsub().await {
                Ok(p) => p,
                Err(e) => {
                    attempt += 1;
                    ctx.metrics.retries.inc();
                    let d = RECONNECT.delay(attempt);
                    tracing::warn!(source = %self.id, error = %e, retry_in = ?d, "cannot reach Redis; messages published meanwhile are lost (Pub/Sub keeps nothing)");
                    tokio::select! { _ = ctx.shutdown.cancelled() => break, _ = tokio::time::sleep(d) => continue }
                }
            };
            for ch in &self.cfg.channels {
                pubsub.subscribe(ch).await?;
            }
            attempt = 0;
            tracing::info!(source = %self.id, channels = %self.cfg.channels.join(","), "subscribed");
            let mut messages = pubsub.on_message();
            let disconnected = loop {
                tokio::select! {
                    _ = ctx.shutdown.cancelled() => break false,
                    m = messages.next() => match m {
                        None => break true,
                        Some(msg) => {
                            let payload = String::from_utf8_lossy(msg.get_payload_bytes()).into_owned();
                            let message = Message { ts_us: now_us(), channel: msg.get_channel_name().to_string(), payload };
                            match buffer.try_send(message) {
                                Ok(()) => {}
                                Err(mpsc::error::TrySendError::Full(_)) => {
                                    ctx.metrics.dropped.inc();
                                    let dropped = ctx.metrics.dropped.get();
                                    if dropped == 1 || dropped.is_multiple_of(1000) {
                                        tracing::warn!(source = %self.id, dropped, max_buffered = self.cfg.max_buffered, "pipeline busy and the buffer full: dropping new Pub/Sub messages (counted in dropped_total; use mode: stream to keep them)");
                                    }
                                }
                                Err(mpsc::error::TrySendError::Closed(_)) => break false,
                            }
                        }
                    },
                }
            };
            if !disconnected {
                break;
            }
            tributary_sdk::report_error!(ctx.metrics, warn, source = %self.id, "Redis connection lost; resubscribing (messages published meanwhile are lost)");
        }
        Ok(())
    }

    /// A connection with the consumer group in place (created with the stream when missing, as
    /// after a Redis restart that kept nothing), retried with backoff until Redis answers.
    async fn connect_stream(&self, client: &redis::Client, ctx: &SourceContext) -> anyhow::Result<redis::aio::MultiplexedConnection> {
        let cfg = &self.cfg;
        let mut conn = RECONNECT
            .retry(
                || client.get_multiplexed_async_connection(),
                |_| !ctx.shutdown.is_cancelled(),
                |_, e, d| {
                    ctx.metrics.retries.inc();
                    tracing::warn!(source = %self.id, error = %e, retry_in = ?d, "cannot reach Redis; retrying");
                },
            )
            .await?;
        let created: redis::RedisResult<()> = conn.xgroup_create_mkstream(&cfg.stream, &cfg.group, "0").await;
        if let Err(e) = created {
            if e.code() != Some("BUSYGROUP") {
                return Err(anyhow::anyhow!("creating consumer group `{}` on stream `{}`: {e}", cfg.group, cfg.stream));
            }
        }
        Ok(conn)
    }

    async fn run_stream(&self, mut ctx: SourceContext) -> anyhow::Result<()> {
        let client = self.client()?;
        let cfg = &self.cfg;
        let mut conn = self.connect_stream(&client, &ctx).await?;
        tracing::info!(source = %self.id, stream = %cfg.stream, group = %cfg.group, consumer = %cfg.consumer, "reading stream");
        // Acked entry ids come back here to be XACKed; failed ones are read again from our PEL.
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(Vec<String>, AckStatus)>();
        let mut in_flight = 0usize;
        // Start with our own pending entries (a previous run's unacknowledged ones).
        let mut read_own_pending = true;
        let mut last_claim = tokio::time::Instant::now() - cfg.claim_idle.0;
        let shutdown = ctx.shutdown.clone();
        loop {
            // Settle finished batches first.
            while let Ok((ids, status)) = done_rx.try_recv() {
                in_flight -= 1;
                self.settle(&mut conn, &ids, status, &mut read_own_pending, &ctx).await;
            }
            if shutdown.is_cancelled() {
                break;
            }
            let entries: Vec<StreamId> = if read_own_pending && in_flight == 0 {
                let opts = StreamReadOptions::default().group(&cfg.group, &cfg.consumer).count(cfg.batch_size);
                let reply: StreamReadReply = match conn.xread_options(&[&cfg.stream], &["0"], &opts).await {
                    Ok(r) => r,
                    Err(e) => {
                        if self.read_failed(&ctx, &e).await {
                            conn = self.connect_stream(&client, &ctx).await?;
                        }
                        continue;
                    }
                };
                let ids: Vec<StreamId> = reply.keys.into_iter().flat_map(|k| k.ids).collect();
                read_own_pending = !ids.is_empty();
                ids
            } else if last_claim.elapsed() >= cfg.claim_idle.0 {
                last_claim = tokio::time::Instant::now();
                match claim_from_other_consumers(&mut conn, cfg).await {
                    Ok(claimed) => {
                        if !claimed.is_empty() {
                            tracing::info!(source = %self.id, entries = claimed.len(), "claimed entries another consumer left pending");
                        }
                        claimed
                    }
                    Err(e) => {
                        if self.read_failed(&ctx, &e).await {
                            conn = self.connect_stream(&client, &ctx).await?;
                            read_own_pending = true;
                        }
                        continue;
                    }
                }
            } else {
                let opts = StreamReadOptions::default().group(&cfg.group, &cfg.consumer).count(cfg.batch_size).block(500);
                let (keys, ids) = ([&cfg.stream], [">"]);
                // Not cancelled on shutdown: Redis moves entries into our pending list when it
                // answers, so a dropped reply would leave them pending until the next start. The
                // block is short; shutdown waits for it.
                let reply = conn.xread_options::<_, _, Option<StreamReadReply>>(&keys, &ids, &opts).await;
                match reply {
                    Ok(r) => r.map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect()).unwrap_or_default(),
                    Err(e) => {
                        if self.read_failed(&ctx, &e).await {
                            // Entries whose XACK was lost with the connection are re-read.
                            conn = self.connect_stream(&client, &ctx).await?;
                            read_own_pending = true;
                        }
                        continue;
                    }
                }
            };
            if ctx.metrics.failing().is_some() {
                ctx.metrics.set_failing(None);
            }
            if entries.is_empty() {
                continue;
            }
            let ids: Vec<String> = entries.iter().map(|e| e.id.clone()).collect();
            let messages: Vec<Message> = entries.iter().map(entry_message).collect();
            let tx = done_tx.clone();
            let ack = Ack::new(move |status| {
                let _ = tx.send((ids, status));
            });
            in_flight += 1;
            self.emit(&ctx, &messages, AckSet::single(ack)).await?;
        }
        // Let downstream flush, then acknowledge what it wrote before leaving.
        ctx.close_outputs();
        drop(done_tx);
        let until = tokio::time::Instant::now() + Duration::from_secs(25);
        while in_flight > 0 {
            match tokio::time::timeout_at(until, done_rx.recv()).await {
                Ok(Some((ids, status))) => {
                    in_flight -= 1;
                    let mut ignore = false;
                    self.settle(&mut conn, &ids, status, &mut ignore, &ctx).await;
                }
                _ => {
                    tracing::warn!(source = %self.id, in_flight, "entries still unacknowledged at shutdown stay pending and are read again next start");
                    break;
                }
            }
        }
        Ok(())
    }

    /// XACK delivered entries; failed ones stay pending and are re-read.
    async fn settle(
        &self,
        conn: &mut redis::aio::MultiplexedConnection,
        ids: &[String],
        status: AckStatus,
        reread: &mut bool,
        ctx: &SourceContext,
    ) {
        match status {
            AckStatus::Delivered => {
                let r: redis::RedisResult<i64> = conn.xack(&self.cfg.stream, &self.cfg.group, ids).await;
                if let Err(e) = r {
                    tributary_sdk::report_error!(ctx.metrics, warn, source = %self.id, error = %e, "XACK failed; the entries will be delivered again");
                }
            }
            AckStatus::Failed => {
                tributary_sdk::report_error!(ctx.metrics, warn, source = %self.id, entries = ids.len(), "downstream failed to write; re-reading pending entries");
                *reread = true;
            }
        }
    }

    /// Counts and logs a failed read, waits a little; `true` when the connection itself is gone
    /// (a multiplexed connection does not come back by itself: the caller reconnects).
    async fn read_failed(&self, ctx: &SourceContext, e: &redis::RedisError) -> bool {
        ctx.metrics.retries.inc();
        let lost = e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_unrecoverable_error();
        // `/health` names a source that keeps failing (after `admin.degraded_after`).
        if ctx.metrics.failing().is_none() {
            ctx.metrics.set_failing(Some((now_us(), format!("reading the Redis stream: {e}"))));
        }
        tributary_sdk::report_error!(ctx.metrics, warn, source = %self.id, error = %e, reconnecting = lost, "reading the stream failed; retrying");
        tokio::select! { _ = ctx.shutdown.cancelled() => {}, _ = tokio::time::sleep(Duration::from_millis(500)) => {} }
        lost
    }
}

/// An entry's message: its time is the entry id's milliseconds (when it was added). An id given
/// explicitly by the producer (`XADD s 99999999999999999-0`) that is no time in microseconds gets
/// the read time instead of overflowing.
fn entry_message(e: &StreamId) -> Message {
    let ts_us = e.id.split('-').next().and_then(|m| m.parse::<i64>().ok()).and_then(|ms| ms.checked_mul(1000)).unwrap_or_else(now_us);
    let field = |k: &str| e.map.get(k).and_then(|v| redis::from_redis_value::<String>(v).ok());
    Message {
        ts_us,
        channel: field("channel").unwrap_or_else(|| "high-score-processor".into()),
        payload: field("payload").unwrap_or_default(),
    }
}

#[async_trait::async_trait]
impl Source for BadgeEventsSource {
    async fn run(self: Box<Self>, ctx: SourceContext) -> anyhow::Result<()> {
        match self.cfg.mode {
            Mode::Pubsub => self.run_pubsub(&ctx).await,
            Mode::Stream => self.run_stream(ctx).await,
            Mode::Http => http::run(self.id.clone(), self.cfg.clone(), ctx).await,
        }
    }
}

/// Entries pending on *another* consumer of the group for at least `claim_idle` (a consumer that
/// died), moved to this one. Never this consumer's own: those are in flight here, waiting for the
/// sinks (a window or a Parquet file may hold their acks longer than `claim_idle`), and claiming
/// them would deliver them twice. XAUTOCLAIM cannot exclude a consumer, so: XPENDING with IDLE,
/// then XCLAIM of the others' ids (XCLAIM re-checks the idle time, so a race with another
/// claimer or a late XACK claims nothing).
async fn claim_from_other_consumers(
    conn: &mut redis::aio::MultiplexedConnection,
    cfg: &BadgeEventsConfig,
) -> redis::RedisResult<Vec<StreamId>> {
    let idle_ms = cfg.claim_idle.0.as_millis() as u64;
    let pending: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
        .arg(&cfg.stream)
        .arg(&cfg.group)
        .arg("IDLE")
        .arg(idle_ms)
        .arg("-")
        .arg("+")
        .arg(cfg.batch_size)
        .query_async(conn)
        .await?;
    let others: Vec<&str> = pending.iter().filter(|(_, consumer, _, _)| *consumer != cfg.consumer).map(|(id, ..)| id.as_str()).collect();
    if others.is_empty() {
        return Ok(Vec::new());
    }
    let claimed: StreamClaimReply = conn.xclaim(&cfg.stream, &cfg.group, &cfg.consumer, idle_ms, &others).await?;
    Ok(claimed.ids)
}

#[cfg(test)]
mod tests;
