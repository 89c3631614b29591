//! Group commit of decoded requests: a receiver (OTLP, remote write) decodes each request on its
//! own, then hands its rows on through a [`MergedOutput`]. The requests that wait while the
//! previous batch is handed on go on together, as one batch with each request's ack. So under load
//! the pipeline (and a disk buffer's encoding and fsync) sees a few large batches instead of one
//! small batch per request, and a lone request is never delayed.
//!
//! Each request is still answered as if it were sent alone: the send's outcome is its own, and its
//! ack resolves when the merged batch is written.

use std::time::Duration;

use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::record_batch::RecordBatch;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::{Ack, AckSet, Batch, Output, TrySendError};

struct Waiting {
    rows: RecordBatch,
    ack: Ack,
    deadline: Instant,
    sent: oneshot::Sender<Result<(), TrySendError>>,
}

/// The requests' side; a task hands the merged batches on.
#[derive(Clone)]
pub struct MergedOutput {
    queue: mpsc::Sender<Waiting>,
}

impl MergedOutput {
    /// Starts the task that merges for `output`, up to `max_rows` rows a batch. It ends once every
    /// clone is dropped and the last batch was handed on.
    pub fn start(output: Output, max_rows: usize) -> (MergedOutput, tokio::task::JoinHandle<()>) {
        let (queue, waiting) = mpsc::channel(1024);
        (MergedOutput { queue }, tokio::spawn(merge(waiting, output, max_rows.max(1))))
    }

    /// Hand `rows` on within `wait`, with other requests' rows waiting at the same time. `ack`
    /// resolves once they are written (it fails with the batch when the send fails).
    pub async fn send_within(&self, rows: RecordBatch, ack: Ack, wait: Duration) -> Result<(), TrySendError> {
        let deadline = Instant::now() + wait;
        let (sent, outcome) = oneshot::channel();
        let queued = tokio::time::timeout_at(deadline, self.queue.send(Waiting { rows, ack, deadline, sent })).await;
        match queued {
            Ok(Ok(())) => outcome.await.unwrap_or(Err(TrySendError::Closed)),
            Ok(Err(_)) => Err(TrySendError::Closed),
            Err(_) => Err(TrySendError::Full),
        }
    }
}

async fn merge(mut waiting: mpsc::Receiver<Waiting>, output: Output, max_rows: usize) {
    while let Some(first) = waiting.recv().await {
        let mut rows = first.rows.num_rows();
        let mut group = vec![first];
        while rows < max_rows {
            match waiting.try_recv() {
                Ok(w) => {
                    rows += w.rows.num_rows();
                    group.push(w);
                }
                Err(_) => break,
            }
        }
        hand_on(&output, group).await;
    }
}

/// One batch of `group`'s rows (of one schema: an output's), or each on its own if they differ.
async fn hand_on(output: &Output, group: Vec<Waiting>) {
    let schema = group[0].rows.schema();
    if group.len() > 1 && group.iter().any(|w| w.rows.schema() != schema) {
        for w in group {
            hand_on_one(output, w).await;
        }
        return;
    }
    let merged = match concat_batches(&schema, group.iter().map(|w| &w.rows)) {
        Ok(merged) => merged,
        Err(_) => {
            for w in group {
                hand_on_one(output, w).await;
            }
            return;
        }
    };
    let deadline = group.iter().map(|w| w.deadline).min().unwrap_or_else(Instant::now);
    let wait = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
    let mut acks = AckSet::none();
    let mut answers = Vec::with_capacity(group.len());
    for w in group {
        acks.extend(AckSet::single(w.ack));
        answers.push(w.sent);
    }
    let outcome = output.send_within(Batch::with_acks(merged, acks), wait).await;
    for answer in answers {
        let _ = answer.send(outcome);
    }
}

async fn hand_on_one(output: &Output, w: Waiting) {
    let wait = w.deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
    let outcome = output.send_within(Batch::with_acks(w.rows, AckSet::single(w.ack)), wait).await;
    let _ = w.sent.send(outcome);
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Array, Int64Array};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    use super::*;
    use crate::{AckStatus, ComponentMetrics};

    fn rows(values: &[i64]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
        RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(values.to_vec()))]).unwrap()
    }

    #[tokio::test]
    async fn requests_waiting_together_go_on_as_one_batch_and_each_hears_its_own_ack() {
        // A full channel: the first batch waits for room while three more requests queue.
        let (tx, mut rx) = mpsc::channel(1);
        tx.send(crate::Delivery { input: 0, batch: Batch::new(rows(&[0])), work: Default::default() }).await.unwrap();
        let (merged, task) = MergedOutput::start(Output::new(vec![(tx, 0)], Arc::new(ComponentMetrics::default()), true), 100);
        let mut acks = Vec::new();
        let mut sends = Vec::new();
        for values in [vec![1], vec![2, 3], vec![4], vec![5, 6]] {
            let (ack, written) = Ack::channel();
            acks.push(written);
            let merged = merged.clone();
            sends.push(tokio::spawn(async move { merged.send_within(rows(&values), ack, Duration::from_secs(5)).await }));
            // The first request is taken (and waits for room) before the others arrive.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut batches = Vec::new();
        for _ in 0..3 {
            let d = rx.recv().await.unwrap();
            let v = d.batch.data.column(0).as_any().downcast_ref::<Int64Array>().unwrap().values().to_vec();
            batches.push((v, d.batch.acks.len()));
            d.batch.acks.release();
        }
        // The first request went on alone (nothing else was waiting); the three that queued behind
        // it went on as one batch with three acks.
        assert_eq!(batches, vec![(vec![0], 0), (vec![1], 1), (vec![2, 3, 4, 5, 6], 3)]);
        for send in sends {
            assert_eq!(send.await.unwrap(), Ok(()));
        }
        for written in acks {
            assert_eq!(written.await.unwrap(), AckStatus::Delivered);
        }
        drop(merged);
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_send_that_finds_the_pipeline_full_fails_every_request_of_its_batch() {
        let (tx, _rx) = mpsc::channel(1);
        tx.send(crate::Delivery { input: 0, batch: Batch::new(rows(&[0])), work: Default::default() }).await.unwrap();
        let (merged, _task) = MergedOutput::start(Output::new(vec![(tx, 0)], Arc::new(ComponentMetrics::default()), true), 100);
        let (ack, written) = Ack::channel();
        assert_eq!(merged.send_within(rows(&[1]), ack, Duration::from_millis(50)).await, Err(TrySendError::Full));
        assert_eq!(written.await.unwrap(), AckStatus::Failed);
    }
}
