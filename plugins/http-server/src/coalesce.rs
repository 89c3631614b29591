//! Single-event requests batched together before they enter the pipeline.
//!
//! One JSON object per POST is how most clients send events. Handed on one by one, each request
//! costs a decoder, a one-row Arrow batch, a run of every SQL plan downstream and a sink write:
//! that work, not HTTP, bounded ingest at ~17k requests/s. Here the bodies of concurrent requests
//! are gathered, decoded in one pass and sent as one batch; each request is answered once its own
//! rows are accepted, exactly as if it had been sent alone (200 only after the pipeline — or the
//! disk buffer — took them, 400 for its own bad line only, 503 if the pipeline stayed full).
//!
//! A batch is what is queued when the previous one was handed on (group commit), plus what arrives
//! within `batch.max_age` of its first request while other connections are open without a request
//! in it: an HTTP/1.1 connection carries one request at a time, so once every open connection has
//! one in the batch nothing is gained by waiting (a lone client is never delayed), while 64 busy
//! clients make batches of dozens instead of ones and twos. `batch.max_rows` caps a batch.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use datafusion::arrow::record_batch::RecordBatch;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tributary_sdk::config::Batching;
use tributary_sdk::http::{decode_off_reactor, Ingest, OpenConnections, DECODE_INLINE_BYTES};
use tributary_sdk::json::JsonRows;
use tributary_sdk::TrySendError;

/// Bodies up to this size that hold one line are batched; larger ones are decoded on their own.
pub const MAX_BATCHED_BODY: usize = 64 << 10;

/// Whether `body` is one JSON object on one line (the single-event POST this module batches).
pub fn is_single_line_object(body: &[u8]) -> bool {
    let trimmed = body.trim_ascii();
    body.len() <= MAX_BATCHED_BODY && trimmed.first() == Some(&b'{') && !trimmed.contains(&b'\n')
}

struct Waiting {
    body: Bytes,
    /// When the request's `accept_timeout` runs out.
    deadline: Instant,
    answer: oneshot::Sender<Response>,
}

/// The requests' side of the micro-batcher.
#[derive(Clone)]
pub struct Coalescer {
    queue: mpsc::Sender<Waiting>,
}

impl Coalescer {
    /// Starts the task that batches requests for `ingest`. It ends once every `Coalescer` clone
    /// is dropped and the last batch was handed on: await it after the server stopped.
    pub fn start(
        ingest: Arc<Ingest>,
        rows: JsonRows,
        batching: Batching,
        open: OpenConnections,
    ) -> (Coalescer, tokio::task::JoinHandle<()>) {
        let (queue, waiting) = mpsc::channel(batching.max_rows);
        (Coalescer { queue }, tokio::spawn(gather(waiting, ingest, rows, batching, open)))
    }

    /// Queue one single-line body; the response once its row was accepted or refused.
    pub async fn submit(&self, ingest: &Ingest, body: Bytes) -> Response {
        let (answer, answered) = oneshot::channel();
        let deadline = Instant::now() + ingest.accept_timeout;
        let queued = tokio::time::timeout_at(deadline, self.queue.send(Waiting { body, deadline, answer })).await;
        match queued {
            Ok(Ok(())) => answered.await.unwrap_or_else(|_| ingest.refuse_busy(TrySendError::Closed)),
            Ok(Err(_)) => ingest.refuse_busy(TrySendError::Closed),
            Err(_) => ingest.refuse_busy(TrySendError::Full),
        }
    }
}

async fn gather(mut waiting: mpsc::Receiver<Waiting>, ingest: Arc<Ingest>, rows: JsonRows, batching: Batching, open: OpenConnections) {
    let rows = Arc::new(rows);
    while let Some(first) = waiting.recv().await {
        let linger_until = Instant::now() + batching.max_age;
        let mut batch = vec![first];
        loop {
            while batch.len() < batching.max_rows {
                match waiting.try_recv() {
                    Ok(w) => batch.push(w),
                    Err(_) => break,
                }
            }
            // Created before the count is read, so a connection closing meanwhile is not missed.
            let closed = open.closed();
            if batch.len() >= batching.max_rows || batch.len() >= open.get() || batching.max_age.is_zero() {
                break;
            }
            tokio::select! {
                next = tokio::time::timeout_at(linger_until, waiting.recv()) => match next {
                    Ok(Some(w)) => batch.push(w),
                    _ => break,
                },
                // One fewer connection to wait for: count again.
                _ = closed => {}
            }
        }
        hand_on(batch, ingest.clone(), rows.clone()).await;
    }
}

/// Decode the bodies as the lines of one NDJSON text, send the good rows as one batch, and
/// answer every request.
async fn hand_on(batch: Vec<Waiting>, ingest: Arc<Ingest>, rows: Arc<JsonRows>) {
    let mut text = Vec::with_capacity(batch.iter().map(|w| w.body.len() + 1).sum());
    for w in &batch {
        text.extend_from_slice(w.body.trim_ascii());
        text.push(b'\n');
    }
    let large = batch.len() > 1 && text.len() > DECODE_INLINE_BYTES;
    let decode = {
        let rows = rows.clone();
        move || rows.decode_lines(&text)
    };
    let decoded = if large { decode_off_reactor(decode).await } else { Ok(decode()) };
    let (good, bad_lines) = match decoded {
        Ok(d) => d,
        Err(reason) => {
            // The decoder panicked: every request of the batch is told, none is half-taken.
            for w in batch {
                let _ = w.answer.send(ingest.reject(StatusCode::BAD_REQUEST, reason.clone()));
            }
            return;
        }
    };
    // Line n of the text is request n - 1; a bad line is answered with the message it would have
    // got alone.
    let mut accepted = Vec::with_capacity(batch.len());
    let bad: std::collections::HashSet<usize> = bad_lines.into_iter().map(|e| e.line - 1).collect();
    for (i, w) in batch.into_iter().enumerate() {
        if bad.contains(&i) {
            let reason = rows.decode_document(&w.body).err().map_or_else(|| "the row could not be decoded".into(), |e| e.to_string());
            let _ = w.answer.send(ingest.reject(StatusCode::BAD_REQUEST, reason));
        } else {
            accepted.push(w);
        }
    }
    if accepted.is_empty() {
        return;
    }
    debug_assert_eq!(good.num_rows(), accepted.len());
    let deadline = accepted.iter().map(|w| w.deadline).min().expect("not empty");
    let wait = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
    send(&ingest, good, wait, accepted).await;
}

async fn send(ingest: &Ingest, good: RecordBatch, wait: Duration, accepted: Vec<Waiting>) {
    let handed_on = ingest.hand_on(good, wait).await;
    for w in accepted {
        let _ = w.answer.send(match handed_on {
            Ok(()) => one_accepted(),
            Err(e) => ingest.refuse_busy(e),
        });
    }
}

/// The 200 of a single-event request, without building a JSON value per request.
fn one_accepted() -> Response {
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], r#"{"accepted":1}"#).into_response()
}
