//! The sink contract: what a sink tells the engine about each batch, and nothing more.
//!
//! One failure model, owned by the engine:
//! - rows the destination refused **for good** (a value it cannot store, a constraint, a 4xx
//!   answer) come back in [`Written::rejected`]; the engine turns them into dead letters and hands
//!   them the batch's acks, so the source's ack resolves only once the dead letters are durable;
//! - a failure that **may pass** (connection refused or lost, timeout, 5xx, 429, database
//!   restarting) is a [`Transient`]: the engine waits (capped exponential backoff) and calls again.
//!   The batch's acks stay pending and the sink takes no new batches meanwhile, so its input
//!   channel fills and the backpressure reaches the sources. Rows are never acknowledged and dropped;
//!   only a sink configured with `retry: {max_elapsed: …}` gives up, and then the engine
//!   dead-letters the unwritten rows through the same path.
//!
//! A sink never sends dead letters itself and never retries a transient failure itself.

use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::record_batch::RecordBatch;

use crate::dead_letter::DeadLetter;
use crate::metrics::ComponentMetrics;
use crate::position::{Position, Positions};

/// What a running sink gets from the engine.
pub struct SinkContext {
    pub id: String,
    pub metrics: Arc<ComponentMetrics>,
}

/// Where the rows a sink accepted stand after a `write`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Everything accepted so far is durable: the engine releases the acks now.
    Durable,
    /// Held in the sink's buffer; their acks are released after the next successful `flush`.
    Buffered,
    /// Held, and the buffer reached its size: the engine calls `flush` now (and retries it) before
    /// it passes the next batch.
    BufferFull,
}

/// The outcome of a `write` that did not fail transiently.
#[derive(Debug, PartialEq)]
pub struct Written {
    pub durability: Durability,
    /// Rows the destination refused for good, each with the reason (as a dead letter's payload
    /// and reason). They count as handled: the engine dead-letters them.
    pub rejected: Vec<DeadLetter>,
}

impl Written {
    pub fn durable() -> Self {
        Written { durability: Durability::Durable, rejected: Vec::new() }
    }
    pub fn buffered() -> Self {
        Written { durability: Durability::Buffered, rejected: Vec::new() }
    }
    pub fn with(durability: Durability, rejected: Vec<DeadLetter>) -> Self {
        Written { durability, rejected }
    }
}

/// A failure that may pass if the same work is tried again later.
#[derive(Debug)]
pub struct Transient {
    pub error: anyhow::Error,
    /// For `write`: the rows still to write when part of the batch got through (the Kafka sink's
    /// undelivered messages, say); `None` means the whole batch. Ignored for `flush`, which is
    /// retried as is: a buffered sink keeps its buffer until a flush succeeds.
    pub unwritten: Option<RecordBatch>,
    /// Rows the destination refused for good before the failure (a bad row found while halving
    /// a batch, a message too large): the engine dead-letters them now; they are not passed again.
    pub rejected: Vec<DeadLetter>,
}

impl Transient {
    pub fn new(error: impl Into<anyhow::Error>) -> Self {
        Transient { error: error.into(), unwritten: None, rejected: Vec::new() }
    }
    /// Part of the batch was written; `rows` were not.
    pub fn partial(error: impl Into<anyhow::Error>, rows: RecordBatch) -> Self {
        Transient { unwritten: Some(rows), ..Transient::new(error) }
    }
    /// Also reports rows refused for good before the failure.
    pub fn with_rejected(mut self, rejected: Vec<DeadLetter>) -> Self {
        self.rejected = rejected;
        self
    }
}

impl std::fmt::Display for Transient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.error)
    }
}

/// Any error converts to a transient one with `?`: an error a sink did not classify is retried,
/// never turned into lost rows.
impl<E: Into<anyhow::Error>> From<E> for Transient {
    fn from(e: E) -> Self {
        Transient::new(e)
    }
}

/// A destination for rows.
#[async_trait::async_trait]
pub trait Sink: Send {
    /// Called once before the first batch (create tables, open connections). An error stops the
    /// pipeline; retry inside when the destination may still be starting.
    async fn start(&mut self, _ctx: &SinkContext) -> anyhow::Result<()> {
        Ok(())
    }
    /// Write or buffer a batch. A buffered sink does no I/O here: it returns
    /// [`Durability::BufferFull`] and the engine calls `flush`. After `Err(Transient)` the sink
    /// must hold nothing of the batch: the engine passes the same rows again.
    async fn write(&mut self, batch: RecordBatch, ctx: &SinkContext) -> Result<Written, Transient>;
    /// Make everything buffered durable; returns the rows the destination refused for good. After
    /// `Err(Transient)` the buffer must be intact: the engine calls `flush` again. Called every
    /// [`flush_interval`](Sink::flush_interval), when the buffer is full, and at shutdown.
    async fn flush(&mut self, ctx: &SinkContext) -> Result<Vec<DeadLetter>, Transient>;
    fn flush_interval(&self) -> Option<Duration> {
        None
    }
    /// The buffered rows, handed over when the engine gives up on a flush (`retry.max_elapsed`) so
    /// it can dead-letter them; the buffer is empty afterwards.
    fn take_buffered(&mut self) -> Vec<RecordBatch> {
        Vec::new()
    }
    /// Config that is valid but loses data at the receiver it names (delta points sent to a
    /// cumulative-only one, say): `tributary validate` prints these, and a run logs them at start.
    fn warnings(&self) -> Vec<String> {
        Vec::new()
    }
    /// `Some` for a sink that stores positions in the same transaction as its rows, which makes
    /// it exactly-once (`delivery: exactly_once`). Usually `Some(self)`.
    fn positions(&mut self) -> Option<&mut dyn PositionStore> {
        None
    }
    /// Where the rows of the next `write` stand in a replayable stream (`None`: a source that
    /// cannot replay), and the records they are when that is known (see
    /// [`Records`](crate::Records)). Told to a sink that is not a [`PositionStore`], before every
    /// write: one that cannot store positions with its rows can still make a replay of the same
    /// rows idempotent (JetStream drops a message whose `Nats-Msg-Id` it has stored).
    fn next_at(&mut self, _position: Option<&Position>, _records: Option<&[(u64, u32)]>) {}
}

/// What an exactly-once sink does besides writing rows (see [`crate::position`]).
#[async_trait::async_trait]
pub trait PositionStore: Send {
    /// The positions of `streams` already written with rows, read after each `start`: the engine
    /// drops replayed batches at or below them. `streams` are the sources whose positions reach
    /// this sink (a store that cannot list what it holds looks these up).
    async fn committed(&mut self, ctx: &SinkContext, streams: &[Arc<str>]) -> anyhow::Result<Positions>;
    /// The rows of the next `write` take the stream to `position`. Stored atomically with those
    /// rows, when they become durable (in the same transaction, or the same commit).
    fn reached(&mut self, position: &Position);
}
