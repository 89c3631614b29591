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
mod http;
mod positions;
mod pubsub;
mod stream;

use std::time::Duration;

use tributary_sdk::retry::Backoff;
use tributary_sdk::{
    AckSet, Batch, BuiltSource, ComponentConfig, ConfigError, OutputSpec, Position, Replay, Source, SourceContext, SourcePlugin,
};

pub use config::{BadgeEventsConfig, HttpConfig, HttpMode, Mode, PubsubConfig, StreamConfig};
/// The decoder lives in the sdk: the broker sources read the same messages (`format: badge`).
pub use tributary_sdk::badge as decode;
pub use tributary_sdk::badge::{badge_schema, to_batch, Message};

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
                guarantee: "at-least-once; exactly once into `delivery: exactly_once` sinks",
                how: "`XACK` only after the acks resolve; at start the consumer re-reads its own pending entries; entries of other consumers idle for `claim_idle` are claimed (never its own in-flight ones). Each batch carries its last entry id as a position, which exactly-once sinks store with the rows",
                duplicates: "entries written but not yet XACKed are read again after a restart (none in an exactly-once sink, except entries claimed from another consumer)",
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

/// Send decoded rows and dead letters; `acks` resolve when both are stored. `position`: where the
/// rows stand in a replayable stream (`mode: stream`).
async fn emit(id: &str, ctx: &SourceContext, messages: &[Message], acks: AckSet, position: Option<Position>) -> anyhow::Result<()> {
    let (batch, dead) = to_batch(messages);
    ctx.metrics.bytes_in.add(messages.iter().map(|m| m.payload.len() as u64).sum());
    if !dead.is_empty() {
        tributary_sdk::report_error!(ctx.metrics, warn, count = dead.len(), source = %id, first_reason = %dead[0].reason, "undecodable badge events");
        ctx.dead_letters.send(dead, acks.clone()).await?;
    }
    if batch.num_rows() == 0 {
        acks.release();
    } else {
        ctx.output("").send(Batch::with_acks(batch, acks).at(position)).await?;
    }
    Ok(())
}

#[async_trait::async_trait]
impl Source for BadgeEventsSource {
    /// `mode: stream` XACKs once the rows are acknowledged, reads its pending entries again after
    /// a restart, and gives each batch the id of its last entry as a position.
    fn replay(&self) -> Replay {
        match self.cfg {
            BadgeEventsConfig::Stream(_) => Replay::WithPositions,
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
