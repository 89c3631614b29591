//! Batches and the outputs components send them through.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use tokio::sync::mpsc;

use crate::ack::AckSet;
use crate::in_flight::{InFlight, Work};
use crate::metrics::ComponentMetrics;
use crate::position::Position;

/// Rows flowing between components, with the delivery obligations they carry.
#[derive(Debug, Clone)]
pub struct Batch {
    pub data: RecordBatch,
    pub acks: AckSet,
    /// Set by a replayable source (see [`crate::position`]); kept by transforms that emit one
    /// batch per batch, so an exactly-once sink can store it with the rows.
    pub position: Option<Position>,
    /// The records of the position's stream whose rows this batch holds, in order (see
    /// [`Records`]). Set by the disk buffer; no transform keeps it, as its output rows are not
    /// the records' rows.
    pub records: Option<Records>,
}

/// The records a batch holds, in order: each one's sequence number in its stream and its number of
/// rows. A batch may merge several records, and a replay may cut them otherwise (one per batch),
/// so a row is named the same in every run by its record and its index in it, not by the batch.
pub type Records = Arc<[(u64, u32)]>;

impl Batch {
    pub fn new(data: RecordBatch) -> Self {
        Batch { data, acks: AckSet::none(), position: None, records: None }
    }
    pub fn with_acks(data: RecordBatch, acks: AckSet) -> Self {
        Batch { data, acks, position: None, records: None }
    }
    pub fn at(mut self, position: Option<Position>) -> Self {
        self.position = position;
        self
    }
    /// With the records its rows are, when their counts add up to its rows (else without).
    pub fn of_records(mut self, records: Records) -> Self {
        let rows: u64 = records.iter().map(|(_, n)| u64::from(*n)).sum();
        self.records = (rows == self.data.num_rows() as u64).then_some(records);
        self
    }
}

/// A batch as a consumer receives it: which of its `inputs:` it came from.
#[derive(Debug)]
pub struct Delivery {
    /// Index into the consumer's `inputs:` list.
    pub input: usize,
    pub batch: Batch,
    /// Held until the consumer has handled the batch (see [`InFlight`]).
    pub work: Work,
}

/// Name of the output every component has for rows it could not handle.
pub const DEAD_LETTER_OUTPUT: &str = "dead_letter";

/// A named output a component declares before the pipeline starts.
#[derive(Debug, Clone)]
pub struct OutputSpec {
    /// `""` for the component's main output (referenced as `<id>`), else `<id>.<name>`.
    pub name: String,
    pub schema: SchemaRef,
}

impl OutputSpec {
    pub fn main(schema: SchemaRef) -> Self {
        OutputSpec { name: String::new(), schema }
    }
    pub fn named(name: impl Into<String>, schema: SchemaRef) -> Self {
        OutputSpec { name: name.into(), schema }
    }
}

/// The output is full: every downstream buffer is at capacity (backpressure).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrySendError {
    Full,
    Closed,
}

/// The pipeline is shutting down and nothing downstream reads any more.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("the pipeline is shutting down: output closed")]
pub struct Closed;

/// Live copies of an output's batches for observers (`tributary tap`). An observer that falls
/// behind is dropped, never waited for: taps must not slow the pipeline.
#[derive(Default)]
pub struct Tap {
    observers: Mutex<Vec<TapObserver>>,
    count: AtomicUsize,
}

struct TapObserver {
    tx: mpsc::Sender<RecordBatch>,
    fell_behind: Arc<AtomicBool>,
}

impl Tap {
    /// A new observer with room for `capacity` batches; the flag is set if it gets dropped for
    /// falling behind.
    pub fn subscribe(&self, capacity: usize) -> (mpsc::Receiver<RecordBatch>, Arc<AtomicBool>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let fell_behind = Arc::new(AtomicBool::new(false));
        let mut obs = self.observers.lock().expect("tap lock");
        obs.push(TapObserver { tx, fell_behind: fell_behind.clone() });
        self.count.store(obs.len(), Ordering::Release);
        (rx, fell_behind)
    }

    /// Observers currently attached.
    pub fn observers(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Offer a batch to every observer without waiting (one atomic load when nobody watches).
    pub fn offer(&self, batch: &RecordBatch) {
        if self.count.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut obs = self.observers.lock().expect("tap lock");
        obs.retain(|o| match o.tx.try_send(batch.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                o.fell_behind.store(true, Ordering::Release);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
        self.count.store(obs.len(), Ordering::Release);
    }
}

/// A durable queue in front of a source's consumers (the engine's disk buffer): an output that
/// has one stores each batch there, and the queue forwards it downstream on its own.
#[async_trait::async_trait]
pub trait DurableQueue: Send + Sync {
    /// Store `data` for the source's output `output`, returning once it is durable (an HTTP
    /// source answers 200 after it). Waits at most `wait` for room; a full queue (also one set to
    /// drop the newest) is `Full`, so a client that can retry is told.
    async fn append(&self, output: &str, data: &RecordBatch, wait: Duration) -> Result<(), TrySendError>;
    /// Store `data` without waiting for it to be durable: returns once the queue has room and has
    /// taken it (so a source reading a file or a topic goes on reading while the fsync runs, and
    /// consecutive batches share one); `acks` are released once it is durable, and failed if it
    /// cannot be written.
    async fn append_detached(&self, output: &str, data: &RecordBatch, acks: AckSet) -> Result<(), Closed>;
    /// How full the queue is, from 0.0 to 1.0.
    fn fill(&self) -> f64;
}

/// Where an output's batches go: each consumer's channel and the output's index in that
/// consumer's `inputs:`.
type Targets = Vec<(mpsc::Sender<Delivery>, usize)>;

/// An output's targets as the engine sees them, to rewire a running pipeline (hot reload). Weak:
/// it keeps neither the output nor its consumers' channels alive.
#[derive(Clone)]
pub struct Routes(std::sync::Weak<SharedTargets>);

/// The current targets, swapped whole on a rewiring: a send takes its snapshot with one reference
/// count, not a copy of the list.
type SharedTargets = std::sync::RwLock<Arc<Targets>>;

impl Routes {
    /// Send the output's batches to `targets` from its next batch on; false when the output is
    /// gone (its producer finished).
    pub fn set(&self, targets: Vec<(mpsc::Sender<Delivery>, usize)>) -> bool {
        let Some(shared) = self.0.upgrade() else { return false };
        *shared.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(targets);
        true
    }
}

/// One output of a component, fanned out to every consumer wired to it.
#[derive(Clone)]
pub struct Output {
    /// Shared by the output's clones, so a rewiring reaches all of them.
    targets: Arc<SharedTargets>,
    metrics: Arc<ComponentMetrics>,
    /// Dead-letter outputs don't count as rows_out; they count as dead_letters.
    counts_as_rows_out: bool,
    tap: Option<Arc<Tap>>,
    /// Set for a source with `buffer: {type: disk}`: batches go to the queue (name of this output).
    queue: Option<(Arc<dyn DurableQueue>, String)>,
    /// Set when the run counts work in flight (`tributary test`).
    in_flight: Option<Arc<InFlight>>,
}

impl Output {
    /// Wiring is the engine's job; plugins receive ready outputs in their context.
    pub fn new(targets: Vec<(mpsc::Sender<Delivery>, usize)>, metrics: Arc<ComponentMetrics>, counts_as_rows_out: bool) -> Self {
        Output {
            targets: Arc::new(std::sync::RwLock::new(Arc::new(targets))),
            metrics,
            counts_as_rows_out,
            tap: None,
            queue: None,
            in_flight: None,
        }
    }

    /// The engine's handle for rewiring this output.
    pub fn routes(&self) -> Routes {
        Routes(Arc::downgrade(&self.targets))
    }

    /// A snapshot of the targets (a send must not hold the lock while it waits for room).
    fn targets(&self) -> Arc<Targets> {
        self.targets.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// An output that stores what it is sent in `queue` (as the source's output `name`); the
    /// queue forwards it to the consumers. A batch's acks are released once it is durable there.
    pub fn buffered(queue: Arc<dyn DurableQueue>, name: &str, metrics: Arc<ComponentMetrics>) -> Self {
        Output {
            targets: Arc::default(),
            metrics,
            counts_as_rows_out: true,
            tap: None,
            queue: Some((queue, name.to_string())),
            in_flight: None,
        }
    }

    /// Let observers see what this output sends.
    pub fn with_tap(mut self, tap: Arc<Tap>) -> Self {
        self.tap = Some(tap);
        self
    }

    /// Count what this output queues as work in flight until its consumer has handled it.
    pub fn with_in_flight(mut self, in_flight: Arc<InFlight>) -> Self {
        self.in_flight = Some(in_flight);
        self
    }

    fn work(&self) -> Work {
        self.in_flight.as_ref().map(InFlight::begin).unwrap_or_default()
    }

    /// Show a batch to this output's observers without sending it (dead letters stored because
    /// nothing is wired are still visible to `tributary tap` and `tributary test`).
    pub fn observe(&self, batch: &RecordBatch) {
        if let Some(tap) = &self.tap {
            tap.offer(batch);
        }
    }

    /// No consumer is wired to this output.
    pub fn is_unconnected(&self) -> bool {
        self.targets().is_empty() && self.queue.is_none()
    }

    fn count(&self, batch: &Batch) {
        self.observe(&batch.data);
        if self.counts_as_rows_out {
            self.metrics.rows_out.add(batch.data.num_rows() as u64);
            self.metrics.bytes_out.add(batch.data.get_array_memory_size() as u64);
            self.metrics.batches_out.inc();
        }
    }

    /// Send to every consumer, waiting for buffer space (this is how backpressure propagates).
    /// With no consumer the batch is complete: its acks are released.
    pub async fn send(&self, batch: Batch) -> Result<(), Closed> {
        if let Some((queue, name)) = &self.queue {
            self.count(&batch);
            return queue.append_detached(name, &batch.data, batch.acks).await;
        }
        self.count(&batch);
        let targets = self.targets();
        let Some(((last_tx, last_input), rest)) = targets.split_last() else {
            batch.acks.release();
            return Ok(());
        };
        for (tx, input) in rest {
            tx.send(Delivery { input: *input, batch: batch.clone(), work: self.work() }).await.map_err(|_| Closed)?;
        }
        last_tx.send(Delivery { input: *last_input, batch, work: self.work() }).await.map_err(|_| Closed)
    }

    /// Send without waiting longer than `wait` for buffer space in every consumer.
    /// Nothing is sent unless all consumers have room, so a rejected batch can be retried whole.
    pub async fn send_within(&self, batch: Batch, wait: Duration) -> Result<(), TrySendError> {
        if let Some((queue, name)) = &self.queue {
            queue.append(name, &batch.data, wait).await?;
            self.count(&batch);
            batch.acks.release();
            return Ok(());
        }
        let targets = self.targets();
        let reserve = async {
            let mut permits = Vec::with_capacity(targets.len());
            for (tx, input) in targets.iter() {
                permits.push((tx.reserve().await.map_err(|_| TrySendError::Closed)?, *input));
            }
            Ok::<_, TrySendError>(permits)
        };
        let permits = match tokio::time::timeout(wait, reserve).await {
            Ok(p) => p?,
            Err(_) => return Err(TrySendError::Full),
        };
        self.count(&batch);
        if permits.is_empty() {
            batch.acks.release();
            return Ok(());
        }
        let last = permits.len() - 1;
        let mut batch = Some(batch);
        for (i, (permit, input)) in permits.into_iter().enumerate() {
            let b = if i == last { batch.take().unwrap() } else { batch.as_ref().unwrap().clone() };
            permit.send(Delivery { input, batch: b, work: self.work() });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tap_tests {
    use super::*;
    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    fn batch(v: i64) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
        RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![v]))]).unwrap()
    }

    #[tokio::test]
    async fn a_tap_that_falls_behind_is_dropped_and_the_output_never_waits_for_it() {
        let (tx, mut rx) = mpsc::channel(8);
        let tap = Arc::new(Tap::default());
        let out = Output::new(vec![(tx, 0)], Arc::new(ComponentMetrics::default()), true).with_tap(tap.clone());
        let (mut slow, slow_dropped) = tap.subscribe(1);
        let (mut keen, keen_dropped) = tap.subscribe(8);
        for v in 0..3 {
            // Completes although the slow observer never reads.
            out.send(Batch::new(batch(v))).await.unwrap();
        }
        assert!(slow_dropped.load(Ordering::Acquire) && !keen_dropped.load(Ordering::Acquire));
        assert_eq!(tap.observers(), 1);
        // The slow one got what fitted, then its stream ends; the keen one saw everything.
        assert_eq!(slow.recv().await.unwrap().column(0).as_any().downcast_ref::<Int64Array>().unwrap().value(0), 0);
        assert!(slow.recv().await.is_none());
        for v in 0..3 {
            assert_eq!(keen.recv().await.unwrap().column(0).as_any().downcast_ref::<Int64Array>().unwrap().value(0), v);
            assert_eq!(rx.recv().await.unwrap().batch.data.num_rows(), 1);
        }
    }
}
