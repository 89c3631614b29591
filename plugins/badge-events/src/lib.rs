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

mod config;
pub mod decode;
mod http;
mod pubsub;
mod stream;

use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use tributary_sdk::config::event_time_type;
use tributary_sdk::retry::Backoff;
use tributary_sdk::{
    AckSet, Batch, BuiltSource, ComponentConfig, ConfigError, DeadLetter, OutputSpec, Replay, Source, SourceContext, SourcePlugin,
};

pub use config::{BadgeEventsConfig, HttpConfig, HttpMode, Mode, PubsubConfig, StreamConfig};
use decode::{decode, BadgeRow};

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
    fn delivery(&self) -> &'static [tributary_sdk::delivery::SourceDelivery] {
        use tributary_sdk::delivery::SourceDelivery;
        &[
            SourceDelivery {
                variant: "`mode: stream`",
                guarantee: "at-least-once",
                how: "`XACK` only after the acks resolve; at start the consumer re-reads its own pending entries; entries of other consumers idle for `claim_idle` are claimed (never its own in-flight ones)",
                duplicates: "entries written but not yet XACKed are read again after a restart",
                crash_loses: "nothing acknowledged",
            },
            SourceDelivery {
                variant: "`mode: pubsub`",
                guarantee: "at-most-once",
                how: "Redis Pub/Sub keeps nothing",
                duplicates: "none",
                crash_loses: "messages in memory; messages published while disconnected; while the pipeline is busy, messages beyond `max_buffered` are dropped and counted in `dropped_total`",
            },
            SourceDelivery { variant: "`mode: http`", ..tributary_sdk::delivery::HTTP_RECEIVER },
        ]
    }
    fn build(&self, config: &ComponentConfig) -> Result<BuiltSource, ConfigError> {
        let cfg = BadgeEventsConfig::from_component(config)?;
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

/// Send decoded rows and dead letters; `acks` resolve when both are stored.
async fn emit(id: &str, ctx: &SourceContext, messages: &[Message], acks: AckSet) -> anyhow::Result<()> {
    let (batch, dead) = to_batch(messages);
    ctx.metrics.bytes_in.add(messages.iter().map(|m| m.payload.len() as u64).sum());
    if !dead.is_empty() {
        tributary_sdk::report_error!(ctx.metrics, warn, count = dead.len(), source = %id, first_reason = %dead[0].reason, "undecodable badge events");
        ctx.dead_letters.send(dead, acks.clone()).await?;
    }
    if batch.num_rows() == 0 {
        acks.release();
    } else {
        ctx.output("").send(Batch::with_acks(batch, acks)).await?;
    }
    Ok(())
}

#[async_trait::async_trait]
impl Source for BadgeEventsSource {
    /// `mode: stream` XACKs once the rows are acknowledged.
    fn replay(&self) -> Replay {
        match self.cfg {
            BadgeEventsConfig::Stream(_) => Replay::FromItsOwnPlace,
            _ => Replay::Nothing,
        }
    }
    async fn run(self: Box<Self>, ctx: SourceContext) -> anyhow::Result<()> {
        match self.cfg {
            BadgeEventsConfig::Pubsub(cfg) => pubsub::PubsubReader { id: self.id, cfg }.run(&ctx).await,
            BadgeEventsConfig::Stream(cfg) => stream::StreamReader { id: self.id, cfg }.run(ctx).await,
            BadgeEventsConfig::Http(cfg) => http::run(self.id, cfg, ctx).await,
        }
    }
}

#[cfg(test)]
mod tests;
