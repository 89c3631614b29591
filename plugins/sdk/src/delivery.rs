//! What an acknowledgement means for each plugin, declared beside its code. The delivery tables
//! in the README and in docs/delivery.md are rendered from these declarations (a test in
//! tests/it/config_docs.rs compares them, and rewrites them with `TRIBUTARY_BLESS=1`), so a plugin
//! cannot ship without saying what its ack means.

/// One row of the sources' delivery table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceDelivery {
    /// The configurations the row is about (``"`mode: stream`"``), or `""` for every one.
    pub variant: &'static str,
    /// In a few words: at-least-once, at-most-once, ….
    pub guarantee: &'static str,
    /// What makes it hold: when the ack resolves, and what is saved where.
    pub how: &'static str,
    pub duplicates: &'static str,
    pub crash_loses: &'static str,
}

/// One row of the sinks' delivery table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SinkDelivery {
    /// The configurations the row is about (``"with `format: delta`"``), or `""` for every one.
    pub variant: &'static str,
    /// When a write counts as durable, so the rows' acks may resolve.
    pub durable_when: &'static str,
    pub duplicates: &'static str,
}

/// A receiver that answers its clients: the engine's disk buffer makes the answer mean stored.
pub const HTTP_RECEIVER: SourceDelivery = SourceDelivery {
    variant: "",
    guarantee: "with `buffer: {type: disk}`: acknowledged when fsynced; otherwise when in the pipeline's memory",
    how: "200 once the rows are fsynced in the disk buffer (or, without one, in a bounded channel); 503 + `Retry-After` when the pipeline or the buffer is full",
    duplicates: "a client that retries after a lost answer; rows forwarded but not yet acknowledged by every sink, after a crash",
    crash_loses: "with a disk buffer: nothing answered 200; without: rows answered 200 and not yet written",
};

/// A source that measures: nothing upstream keeps what it saw, so only the disk buffer does.
pub const MEASURED: SourceDelivery = SourceDelivery {
    variant: "",
    guarantee: "in memory, or on disk with `buffer: {type: disk}`",
    how: "measurements are emitted once",
    duplicates: "with a disk buffer: rows forwarded but not yet acknowledged, after a crash",
    crash_loses: "without a disk buffer: measurements in flight; with one: nothing stored",
};

/// A sink whose receiver stores what it answered 2xx to, with no way to ask what it holds.
pub const RECEIVER_2XX: SinkDelivery = SinkDelivery {
    variant: "",
    durable_when: "the receiver answered 2xx",
    duplicates: "a request retried after a lost answer may store points twice (same timestamps)",
};
