//! The HTTP side shared by every source that receives requests (`http_server`, `badge_events` in
//! `mode: http`): a server loop with header, body and stop time limits, bearer tokens, body
//! limits, decoding off the async workers, and backpressure turned into 503 + `Retry-After`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use datafusion::arrow::record_batch::RecordBatch;

use crate::{Batch, ComponentMetrics, Output, Period, Secret, SourceContext, TrySendError};

/// Default `header_timeout` of an HTTP source.
pub fn default_header_timeout() -> Period {
    Period::from_secs(10)
}
/// Default `body_timeout` of an HTTP source.
pub fn default_body_timeout() -> Period {
    Period::from_secs(30)
}
/// Default `stop_timeout` of an HTTP source.
pub fn default_stop_timeout() -> Period {
    Period::from_secs(5)
}

/// Time limits of an HTTP ingest server.
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub stop_timeout: Duration,
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            header_timeout: default_header_timeout().0,
            body_timeout: default_body_timeout().0,
            stop_timeout: default_stop_timeout().0,
        }
    }
}

/// The HTTP side of an ingest endpoint: bearer-token check, body limit, and handing rows to the
/// pipeline with backpressure turned into 503 + `Retry-After`. Errors are counted.
pub struct Ingest {
    pub id: String,
    pub token: Option<Secret>,
    pub max_body: usize,
    pub accept_timeout: Duration,
    /// How long reading a body may take before 408.
    pub body_timeout: Duration,
    pub output: Output,
    pub metrics: Arc<ComponentMetrics>,
}

impl Ingest {
    /// The request body, or the response refusing it (401, 413).
    pub async fn read_body(&self, headers: &HeaderMap, body: Body) -> Result<axum::body::Bytes, Response> {
        if let Some(token) = &self.token {
            if !token.matches_bearer(headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok())) {
                return Err(self.reject(StatusCode::UNAUTHORIZED, "missing or invalid bearer token".into()));
            }
        }
        let too_large = || format!("body larger than the limit of {} bytes", self.max_body);
        let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|n| n > self.max_body) {
            return Err(self.reject(StatusCode::PAYLOAD_TOO_LARGE, too_large()));
        }
        let bytes = match tokio::time::timeout(self.body_timeout, axum::body::to_bytes(body, self.max_body)).await {
            Ok(read) => read.map_err(|_| self.reject(StatusCode::PAYLOAD_TOO_LARGE, too_large()))?,
            Err(_) => {
                let waited = humantime::format_duration(self.body_timeout);
                return Err(self.reject(StatusCode::REQUEST_TIMEOUT, format!("the body did not arrive within {waited}")));
            }
        };
        self.metrics.bytes_in.add(bytes.len() as u64);
        Ok(bytes)
    }

    /// Hand rows to the pipeline: 200 with the count once accepted, 503 when it is full or stopping.
    pub async fn accept(&self, batch: RecordBatch) -> Response {
        let n = batch.num_rows();
        if n == 0 {
            return reply(StatusCode::OK, serde_json::json!({ "accepted": 0 }));
        }
        match self.hand_on(batch, self.accept_timeout).await {
            Ok(()) => reply(StatusCode::OK, serde_json::json!({ "accepted": n })),
            Err(e) => self.refuse_busy(e),
        }
    }

    /// Send rows to the pipeline, waiting at most `wait` for room, and count them once accepted.
    pub async fn hand_on(&self, batch: RecordBatch, wait: Duration) -> Result<(), TrySendError> {
        let n = batch.num_rows();
        self.output.send_within(Batch::new(batch), wait).await?;
        self.metrics.rows_in.add(n as u64);
        Ok(())
    }

    /// 503 + `Retry-After: 1`: the pipeline stayed full for `accept_timeout`, or is stopping.
    pub fn refuse_busy(&self, e: TrySendError) -> Response {
        let mut r = self.reject(
            StatusCode::SERVICE_UNAVAILABLE,
            match e {
                TrySendError::Full => "pipeline is busy (backpressure); retry later".into(),
                TrySendError::Closed => "pipeline is shutting down".into(),
            },
        );
        r.headers_mut().insert(header::RETRY_AFTER, "1".parse().unwrap());
        r
    }

    /// Refuse a request with a JSON `{"error": message}` body.
    pub fn reject(&self, status: StatusCode, message: String) -> Response {
        // At debug: the client is told, and a flood of bad requests must not flood the log.
        crate::report_error!(self.metrics, debug, source = %self.id, %status, %message, "request rejected");
        reply(status, serde_json::json!({ "error": message }))
    }
}

/// How many connections a server has open (HTTP/1.1 carries one request at a time on each, so a
/// source batching requests knows when every client already has one waiting).
#[derive(Debug, Clone, Default)]
pub struct OpenConnections(Arc<(std::sync::atomic::AtomicUsize, tokio::sync::Notify)>);

impl OpenConnections {
    pub fn get(&self) -> usize {
        self.0 .0.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Resolves when a connection closes after this call (create it before reading the count).
    pub fn closed(&self) -> tokio::sync::futures::Notified<'_> {
        self.0 .1.notified()
    }
}

/// Decrements the count when a connection's task ends, however it ends.
struct OpenConnection(OpenConnections);

impl OpenConnection {
    fn new(open: &OpenConnections) -> Self {
        open.0 .0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        OpenConnection(open.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0 .0 .0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        self.0 .0 .1.notify_waiters();
    }
}

/// Serve `app` on `address` until shutdown, counting its connections in `open`. A client gets `header_timeout` to send its headers;
/// on stop, requests in flight get `stop_timeout` to finish (their rows are sent), then every
/// connection is closed: a client that sends half a request and waits cannot hold the stop.
pub async fn serve(
    address: SocketAddr,
    app: Router,
    ctx: &SourceContext,
    what: &str,
    limits: ServeLimits,
    open: &OpenConnections,
) -> anyhow::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    let listener = tokio::net::TcpListener::bind(address).await.map_err(|e| anyhow::anyhow!("cannot listen on {address}: {e}"))?;
    tracing::info!(source = %ctx.id, address = %listener.local_addr()?, "{what} listening");
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
    let mut connections = tokio::task::JoinSet::new();
    let stop = ctx.shutdown.clone();
    loop {
        let (stream, _) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of descriptors and the like: keep serving the connections we have.
                    tracing::warn!(source = %ctx.id, "accepting a connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let (builder, stop, counted) = (builder.clone(), stop.clone(), OpenConnection::new(open));
        connections.spawn(async move {
            let _counted = counted;
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let served = tokio::select! {
                served = conn.as_mut() => served,
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = served {
                tracing::debug!("connection ended: {e}");
            }
        });
        // Reap finished connections so the set stays the size of what is open.
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    let open = connections.len();
    if tokio::time::timeout(limits.stop_timeout, async { while connections.join_next().await.is_some() {} }).await.is_err() {
        tracing::warn!(
            source = %ctx.id,
            "{} of {open} connections still open {} after the stop began: closed",
            connections.len(),
            humantime::format_duration(limits.stop_timeout)
        );
        connections.shutdown().await;
    }
    Ok(())
}

/// A JSON response.
pub fn reply(status: StatusCode, body: serde_json::Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// Bodies decoded at once in the whole process: one per core.
static DECODERS: std::sync::LazyLock<tokio::sync::Semaphore> =
    std::sync::LazyLock::new(|| tokio::sync::Semaphore::new(std::thread::available_parallelism().map_or(2, |n| n.get())));

/// Runs `decode` on the blocking pool, at most one per core at a time: a burst of large bodies
/// neither stalls the async workers (the admin API and other sources stay responsive) nor holds
/// the decoded form of every concurrent body in memory at once.
/// A decoder that panicked (a bug hostile input found) is an `Err`, not a crash.
pub async fn decode_off_reactor<T: Send + 'static>(decode: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    let _permit = DECODERS.acquire().await.map_err(|e| e.to_string())?;
    tokio::task::spawn_blocking(decode).await.map_err(|e| format!("the body decoder failed: {e}"))
}

/// Bodies up to this size are decoded where they were read, on the async worker: a hop to the
/// blocking pool and back costs two thread wake-ups, more than decoding a small body takes (the
/// OTLP receiver's 5 KiB requests spent more time in the hop than in the decoder).
pub const DECODE_INLINE_BYTES: usize = 256 << 10;

/// [`decode_off_reactor`] for a body of `bytes`, or `decode` right here when the body is at most
/// [`DECODE_INLINE_BYTES`]. Either way a decoder that panicked is an `Err`, not a crash.
pub async fn decode_sized<T: Send + 'static>(bytes: usize, decode: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    if bytes > DECODE_INLINE_BYTES {
        return decode_off_reactor(decode).await;
    }
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(decode)).map_err(|panic| {
        let what = panic.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| panic.downcast_ref::<String>().cloned());
        format!("the body decoder failed: {}", what.unwrap_or_else(|| "it panicked".into()))
    })
}
