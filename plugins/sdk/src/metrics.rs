//! Per-component counters, rendered by the engine as Prometheus text on `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering};

/// A monotonically increasing counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down (bytes held in a disk buffer).
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// What every component counts. Buffer fill is read from the channels by the engine.
#[derive(Debug, Default)]
pub struct ComponentMetrics {
    pub rows_in: Counter,
    pub rows_out: Counter,
    /// Rows a sink durably wrote (their acks released as delivered), not counting rows it sent to
    /// its dead letters. Counted by the engine; zero for sources and transforms.
    pub rows_written: Counter,
    pub bytes_in: Counter,
    pub bytes_out: Counter,
    pub batches_in: Counter,
    pub batches_out: Counter,
    /// Bad input, failed writes, failed polls: anything that went wrong and was reported.
    pub errors: Counter,
    /// Rows (or payloads) sent to the component's dead-letter output.
    pub dead_letters: Counter,
    /// Retried operations (writes, polls, connections).
    pub retries: Counter,
    /// Input a source could not keep because the pipeline was busy and it cannot push back
    /// (Redis Pub/Sub), or its disk buffer was full with `when_full: drop_newest`: dropped, and
    /// counted here (rows).
    pub dropped: Counter,
    /// Disk buffer: fsyncs done (one serves every append that arrived meanwhile: group commit).
    pub buffer_fsyncs: Counter,
    /// Disk buffer: rows of a previous run read back from disk and sent on at start.
    pub buffer_replayed: Counter,
    /// Exactly-once sink: replayed rows dropped before the sink because it had written them
    /// already (their position was stored with them).
    pub replay_skipped: Counter,
    /// Disk buffer: bytes on disk not yet reclaimed (records whose acks have not all resolved).
    pub buffer_bytes: Gauge,
    /// While a sink retries a transient failure: since when (µs since the epoch) and the last
    /// error. Set and cleared by the engine; `/health` and `/metrics` read it.
    pub failing: std::sync::Mutex<Option<(i64, String)>>,
    /// Sink: when rows last became durable (µs since the epoch; 0 before the first write) and
    /// how long that write or flush took, retries included (µs). Set by the engine.
    pub last_write_us: Gauge,
    pub last_write_latency_us: Gauge,
}

impl ComponentMetrics {
    /// Since when (µs) and why the component is failing, if it is.
    pub fn failing(&self) -> Option<(i64, String)> {
        self.failing.lock().expect("metrics lock").clone()
    }
    pub fn set_failing(&self, state: Option<(i64, String)>) {
        *self.failing.lock().expect("metrics lock") = state;
    }
    /// A write (or flush) begun at `started` made rows durable just now.
    pub fn wrote(&self, started: std::time::Instant) {
        self.last_write_us.set(crate::now_us().max(0) as u64);
        self.last_write_latency_us.set(started.elapsed().as_micros() as u64);
    }
}
