//! The Tributary plugin SDK: everything a source or sink plugin needs, and nothing of the engine.
//!
//! - A **source** implements [`Source`] and is built by a [`SourcePlugin`] from its config, declaring
//!   its output schemas before anything runs.
//! - A **sink** implements [`Sink`] and is built by a [`SinkPlugin`] knowing its input schemas.
//! - Data moves as [`Batch`]es (Arrow record batches with [`AckSet`]s); rows that cannot be handled
//!   go to [`DeadLetters`].
//!
//! Arrow, Parquet and DataFusion come from [`datafusion`] (re-exported) so the build has one arrow.

pub mod ack;
pub mod badge;
pub mod batcher;
pub mod buffer;
pub mod columns;
pub mod config;
pub mod dead_letter;
pub mod delivery;
pub mod event;
pub mod http;
pub mod in_flight;
pub mod json;
pub mod merge;
pub mod metrics;
pub mod output;
pub mod position;
pub mod progress;
pub mod progress_report;
pub mod redact;
pub mod repartition;
pub mod retry;
pub mod schedule;
pub mod sink;
pub mod template;
pub mod tls;

use std::collections::HashMap;
use std::sync::Arc;

pub use datafusion;
pub use datafusion::arrow;
pub use tokio_util::sync::CancellationToken;
#[doc(hidden)]
pub use tracing;

pub use ack::{Ack, AckSet, AckStatus, Withdrawal};
pub use batcher::{Batcher, Gather};
pub use config::{BatchConfig, Batching, ComponentConfig, ConfigError, DeclaredSchema, HumanDuration, Period, Secret};
pub use dead_letter::{DeadLetter, DeadLetterStore, DeadLetters};
pub use in_flight::{InFlight, Work};
pub use metrics::ComponentMetrics;
pub use output::{Batch, Closed, Delivery, DurableQueue, Output, OutputSpec, Records, Routes, Tap, TrySendError, DEAD_LETTER_OUTPUT};
pub use position::{Position, PositionQuery, Positions, SinkPositions};
pub use repartition::{Owned, Ownership, Repartition};
pub use sink::{Durability, PositionStore, Sink, SinkContext, Transient, Written};

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;

/// What a running source gets from the engine.
pub struct SourceContext {
    pub id: String,
    outputs: HashMap<String, Output>,
    pub dead_letters: DeadLetters,
    /// Cancelled when the pipeline stops: finish the current batch, send it, return.
    pub shutdown: CancellationToken,
    pub metrics: Arc<ComponentMetrics>,
    /// For a source that stamps its own positions ([`Replay::WithPositions`]) on an exactly-once
    /// path: the sinks to ask where its streams were written. Empty otherwise.
    pub sink_positions: SinkPositions,
    /// Where a source that reads a share of a partitioned log says which streams it lost.
    pub ownership: Ownership,
}

impl SourceContext {
    pub fn new(
        id: String,
        outputs: HashMap<String, Output>,
        dead_letters: DeadLetters,
        shutdown: CancellationToken,
        metrics: Arc<ComponentMetrics>,
    ) -> Self {
        SourceContext {
            id,
            outputs,
            dead_letters,
            shutdown,
            metrics,
            sink_positions: SinkPositions::default(),
            ownership: Ownership::default(),
        }
    }

    pub fn with_sink_positions(mut self, sink_positions: SinkPositions) -> Self {
        self.sink_positions = sink_positions;
        self
    }

    pub fn with_ownership(mut self, ownership: Ownership) -> Self {
        self.ownership = ownership;
        self
    }

    /// One of the outputs the source declared (`""` is the main output).
    pub fn output(&self, name: &str) -> &Output {
        self.outputs.get(name).unwrap_or_else(|| panic!("source `{}` sent to output `{name}` it did not declare", self.id))
    }

    /// Close every output (and the dead-letter output) while the source keeps running: downstream
    /// components then drain and flush, so a source can wait for the acks of what it already sent
    /// (the Kafka source does, to commit its offsets before it returns).
    pub fn close_outputs(&mut self) {
        self.outputs.clear();
        self.dead_letters = self.dead_letters.unconnected();
    }

    /// Sends what a batch of messages decoded to: the rows to the main output and the messages
    /// that did not decode to the dead letters (counted as errors), under one acknowledgement, so
    /// the messages are acknowledged once both are written.
    pub async fn send_decoded(&self, rows: RecordBatch, undecodable: Vec<DeadLetter>, acks: AckSet) -> Result<(), Closed> {
        if let Some(first) = undecodable.first() {
            crate::report_error!(self.metrics, debug, count = undecodable.len(), source = %self.id, first_reason = %first.reason, "undecodable messages");
            self.dead_letters.send(undecodable, acks.clone()).await?;
        }
        if rows.num_rows() == 0 {
            acks.release();
            return Ok(());
        }
        self.output("").send(Batch::with_acks(rows, acks)).await
    }

    /// Send rows without an acknowledgement to the main output.
    pub async fn send(&self, data: RecordBatch) -> Result<(), Closed> {
        self.output("").send(Batch::new(data)).await
    }
}

/// A source of rows. `run` returns when the source is exhausted or `ctx.shutdown` fires.
#[async_trait::async_trait]
pub trait Source: Send {
    async fn run(self: Box<Self>, ctx: SourceContext) -> anyhow::Result<()>;
    /// What `tributary validate` checks against the outside world, beyond the config (a declared
    /// schema against the data it will read, say). Never called by `run`.
    async fn check(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
    /// What it sends again after a crash (see [`Replay`]).
    fn replay(&self) -> Replay {
        Replay::Nothing
    }
    /// Re-key the rows by `r.by` across the instances sharing this source (see [`repartition`]).
    /// Returns how, for `validate` to print, or `None` when there is nothing to share (the
    /// default): one process then sees every key anyway. An error says why it cannot.
    fn repartition(&mut self, r: &Repartition) -> Result<Option<String>, String> {
        let _ = r;
        Ok(None)
    }
}

/// What a source sends again after a crash, which decides whether `delivery: exactly_once` can
/// hold on its paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    /// Nothing by itself (a poll, a push): a disk buffer in front of it replays what it stored,
    /// with the buffer's positions.
    Nothing,
    /// It saves its own place (a file checkpoint, `XACK`) once its rows are acknowledged, and
    /// sends again rows acknowledged just before a crash, with no position: a disk buffer would
    /// store them twice, so exactly once refuses it.
    FromItsOwnPlace,
    /// It stamps its batches with positions of its own streams, named `<source id>/…` (Kafka:
    /// one stream per partition, the offset as the sequence), and asks the sinks through
    /// [`SourceContext::sink_positions`] where to cut its batches: exactly once without a disk
    /// buffer.
    WithPositions,
}

/// A built source: its declared outputs and the runnable source.
pub struct BuiltSource {
    pub outputs: Vec<OutputSpec>,
    pub source: Box<dyn Source>,
}

/// Builds sources of one `type:` from config. Building never touches the network.
pub trait SourcePlugin: Send + Sync {
    fn type_name(&self) -> &'static str;
    /// What its acknowledgement means: its rows of the delivery tables.
    fn delivery(&self) -> &'static [delivery::SourceDelivery];
    fn build(&self, config: &ComponentConfig) -> Result<BuiltSource, ConfigError>;
}

/// Builds sinks of one `type:` from config and the schemas of its `inputs:` (in order).
pub trait SinkPlugin: Send + Sync {
    fn type_name(&self) -> &'static str;
    /// When its writes count as durable: its rows of the delivery tables.
    fn delivery(&self) -> &'static [delivery::SinkDelivery];
    fn build(&self, config: &ComponentConfig, inputs: &[(String, SchemaRef)]) -> Result<Box<dyn Sink>, ConfigError>;
}

/// For sinks that need one schema: all inputs must share it.
pub fn single_input_schema(inputs: &[(String, SchemaRef)]) -> Result<SchemaRef, ConfigError> {
    let (first_name, first) = inputs.first().ok_or_else(|| ConfigError::at("inputs", "at least one input is required"))?;
    for (name, schema) in &inputs[1..] {
        if schema.fields() != first.fields() {
            return Err(ConfigError::at(
                "inputs",
                format!("inputs `{first_name}` and `{name}` have different schemas; this sink writes one schema (add a SQL transform that aligns them)"),
            ));
        }
    }
    Ok(first.clone())
}

/// Now, in microseconds since the Unix epoch (the unit of every event-time column).
pub fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`), for
/// the hand-written timestamp parsers on hot paths (JSON lines, SRT statistics).
pub fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// An error and its causes on one line ("error sending request: connection refused").
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// At most `max` bytes of `s`, cut at a character boundary (for logs and error messages).
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
