//! Batches and the outputs components send them through.

use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use tokio::sync::mpsc;

use crate::ack::AckSet;
use crate::metrics::ComponentMetrics;

/// Rows flowing between components, with the delivery obligations they carry.
#[derive(Debug, Clone)]
pub struct Batch {
    pub data: RecordBatch,
    pub acks: AckSet,
}

impl Batch {
    pub fn new(data: RecordBatch) -> Self {
        Batch { data, acks: AckSet::none() }
    }
    pub fn with_acks(data: RecordBatch, acks: AckSet) -> Self {
        Batch { data, acks }
    }
}

/// A batch as a consumer receives it: which of its `inputs:` it came from.
#[derive(Debug)]
pub struct Delivery {
    /// Index into the consumer's `inputs:` list.
    pub input: usize,
    pub batch: Batch,
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
#[derive(Debug, PartialEq, Eq)]
pub enum TrySendError {
    Full,
    Closed,
}

/// The pipeline is shutting down and nothing downstream reads any more.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("the pipeline is shutting down: output closed")]
pub struct Closed;

/// One output of a component, fanned out to every consumer wired to it.
#[derive(Clone)]
pub struct Output {
    targets: Vec<(mpsc::Sender<Delivery>, usize)>,
    metrics: Arc<ComponentMetrics>,
    /// Dead-letter outputs don't count as rows_out; they count as dead_letters.
    counts_as_rows_out: bool,
}

impl Output {
    /// Wiring is the engine's job; plugins receive ready outputs in their context.
    pub fn new(
        targets: Vec<(mpsc::Sender<Delivery>, usize)>,
        metrics: Arc<ComponentMetrics>,
        counts_as_rows_out: bool,
    ) -> Self {
        Output { targets, metrics, counts_as_rows_out }
    }

    /// No consumer is wired to this output.
    pub fn is_unconnected(&self) -> bool {
        self.targets.is_empty()
    }

    fn count(&self, batch: &Batch) {
        if self.counts_as_rows_out {
            self.metrics.rows_out.add(batch.data.num_rows() as u64);
            self.metrics.bytes_out.add(batch.data.get_array_memory_size() as u64);
            self.metrics.batches_out.inc();
        }
    }

    /// Send to every consumer, waiting for buffer space (this is how backpressure propagates).
    /// With no consumer the batch is complete: its acks are released.
    pub async fn send(&self, batch: Batch) -> Result<(), Closed> {
        self.count(&batch);
        let Some(((last_tx, last_input), rest)) = self.targets.split_last() else {
            batch.acks.release();
            return Ok(());
        };
        for (tx, input) in rest {
            tx.send(Delivery { input: *input, batch: batch.clone() }).await.map_err(|_| Closed)?;
        }
        last_tx.send(Delivery { input: *last_input, batch }).await.map_err(|_| Closed)
    }

    /// Send without waiting longer than `wait` for buffer space in every consumer.
    /// Nothing is sent unless all consumers have room, so a rejected batch can be retried whole.
    pub async fn send_within(&self, batch: Batch, wait: Duration) -> Result<(), TrySendError> {
        let reserve = async {
            let mut permits = Vec::with_capacity(self.targets.len());
            for (tx, input) in &self.targets {
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
            permit.send(Delivery { input, batch: b });
        }
        Ok(())
    }

    /// How full the fullest consumer buffer is, from 0.0 to 1.0.
    pub fn buffer_fill(&self) -> f64 {
        self.targets
            .iter()
            .map(|(tx, _)| 1.0 - tx.capacity() as f64 / tx.max_capacity() as f64)
            .fold(0.0, f64::max)
    }
}
