//! `buffer: {type: disk}` on a source: what it emits is fsynced to checksummed segment files
//! before the source hears "accepted", then forwarded downstream from disk; space is reclaimed as
//! the forwarded rows' acks resolve; after a crash, what was stored and not yet written by every
//! sink is replayed before new input.
//!
//! Three parts share one [`Ledger`]:
//! - the [`Appender`] (the source's outputs call it): encodes rows as an Arrow IPC record,
//!   reserves room (blocking or dropping the newest when full) and hands the record to
//! - the writer thread, which writes every record waiting at the time and fsyncs once for all of
//!   them (group commit), then answers each appender;
//! - the [`Forwarder`] task, which reads the durable records in order, merges small ones, and
//!   sends them to the consumers with an ack; [`AckedProgress`] turns resolved acks into a
//!   committed sequence number, which deletes whole segments and is saved in `acked`.
//!
//! Plain segment files rather than a crate: the embedded queues looked at (yaque: one reader that
//! commits in order, state saved when dropped, no fsync per append; sled and redb: a B-tree with
//! its own write-ahead log under a log) either do not fsync per group of appends, or cannot
//! reclaim by out-of-order acks, or write every byte twice. The format is in [`segment`].

mod segment;

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use tokio::sync::{oneshot, Notify};
use tributary_sdk::progress::AckedProgress;
use tributary_sdk::{AckSet, Batch, Closed, ComponentMetrics, DeadLetters, DurableQueue, Output, OutputSpec, Position, TrySendError};

use crate::graph::{DiskBufferConfig, WhenFull};
use segment::{
    decode_rows, encode_rows, keep_intact, record_len, scan, segment_first_seq, segment_path, write_record, SegmentReader, MAGIC,
};

/// Rows merged into one forwarded batch at most (small appends, such as one HTTP event each,
/// travel on together).
const FORWARD_ROWS: usize = 8192;
/// Bytes of records read from disk per step of the forwarder.
const READ_BYTES: usize = 8 << 20;
/// How often the acked position is saved (when it moved): after a crash, rows written within this
/// long before it (and rows not yet acknowledged) are sent again.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(50);
/// After a failed write (a full disk), nothing touches the disk for this long, doubling up to
/// [`RETRY_MAX`]; appenders waiting for an answer meanwhile are told at once (HTTP: 503).
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);
/// A write failure is logged at most this often (each is counted in `errors_total`).
const LOG_FAILURE_EVERY: Duration = Duration::from_secs(10);
/// Bytes one group commit writes at most before it fsyncs and answers.
const GROUP_BYTES: usize = 8 << 20;

struct Segment {
    first_seq: u64,
    path: PathBuf,
    /// Bytes fsynced: the forwarder reads up to here.
    durable_len: u64,
    /// No more records will be appended (a later segment exists).
    sealed: bool,
}

struct Ledger {
    /// Oldest first; the last one is being written.
    segments: VecDeque<Segment>,
    /// Sum of the segments' durable lengths.
    used: u64,
    /// Bytes of records accepted for writing and not yet written.
    reserved: u64,
    /// Every forwarded record up to this sequence number is written by every sink.
    committed: Option<u64>,
    /// The committed sequence number last saved in `acked`.
    checkpoint_saved: Option<u64>,
    /// Saving it failed last time (logged once until it works again).
    checkpoint_failing: bool,
    /// The writer has stopped: no more records will come.
    closed: bool,
    /// Failed writes cut off so far. The bytes of a failed write may have been read ahead by the
    /// forwarder before they were cut, and the same offsets then hold other records: a forwarder
    /// that sees this change forgets what it read ahead.
    cuts: u64,
}

struct Shared {
    id: String,
    dir: PathBuf,
    max_size: u64,
    segment_size: u64,
    when_full: WhenFull,
    outputs: Vec<String>,
    ledger: Mutex<Ledger>,
    /// New durable records, or the writer closed.
    written: Notify,
    /// Room was freed.
    space: Notify,
    metrics: Arc<ComponentMetrics>,
    /// Held for the buffer's life: one process per buffer folder.
    _lock: File,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().expect("disk buffer lock")
    }

    /// Every forwarded record up to `seq` is written: drop the segments that hold nothing newer.
    fn commit(&self, seq: u64) {
        let mut l = self.lock();
        l.committed = Some(seq);
        while l.segments.len() > 1 && l.segments[0].sealed && l.segments[1].first_seq <= seq + 1 {
            let gone = l.segments.pop_front().expect("checked");
            l.used -= gone.durable_len;
            if let Err(e) = std::fs::remove_file(&gone.path) {
                tracing::warn!(source = %self.id, "cannot remove the written buffer segment {}: {e}", gone.path.display());
            }
        }
        self.metrics.buffer_bytes.set(l.used);
        drop(l);
        self.space.notify_waiters();
    }
}

/// `acked` holds the committed sequence number, so a restart does not replay what was written
/// (not fsynced: an older value only means more duplicates, never a loss).
fn save_checkpoint(id: &str, dir: &Path, l: &mut Ledger) {
    if let Some(seq) = l.committed.filter(|c| Some(*c) != l.checkpoint_saved) {
        let tmp = dir.join("acked.tmp");
        let saved = std::fs::write(&tmp, seq.to_string()).and_then(|()| std::fs::rename(&tmp, dir.join("acked")));
        match saved {
            Ok(()) => {
                l.checkpoint_saved = Some(seq);
                l.checkpoint_failing = false;
            }
            // Once per spell (a full disk would repeat it every CHECKPOINT_EVERY).
            Err(e) if !l.checkpoint_failing => {
                l.checkpoint_failing = true;
                tracing::warn!(source = %id, "cannot save the buffer's acked position in {}: {e}", dir.display());
            }
            Err(_) => {}
        }
    }
}

/// Save the committed position every [`CHECKPOINT_EVERY`] while it moves, until the buffer is
/// gone. Saved by the clock rather than by the next ack: the last acks before a quiet spell were
/// never saved, and an idle `kill -9` then re-sent what every sink had written.
async fn save_checkpoints(shared: Weak<Shared>) {
    let mut every = tokio::time::interval(CHECKPOINT_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(shared) = shared.upgrade() else { return };
        let mut l = shared.lock();
        if l.committed != l.checkpoint_saved {
            save_checkpoint(&shared.id, &shared.dir, &mut l);
        }
    }
}

impl Drop for Shared {
    /// The last holder is gone (every ack resolved): save the final position.
    fn drop(&mut self) {
        let ledger = self.ledger.get_mut().unwrap_or_else(|p| p.into_inner());
        save_checkpoint(&self.id, &self.dir, ledger);
    }
}

/// A record on its way to the writer thread.
struct Append {
    output: u16,
    payload: Vec<u8>,
    done: Done,
}

/// Who hears that a record is durable.
enum Done {
    /// An appender waiting for the answer (HTTP answers 200 after it).
    Reply(oneshot::Sender<Result<(), String>>),
    /// The batch's acknowledgements: released when durable, failed when the write failed.
    Acks(AckSet),
}

/// A batch made ready for the writer.
enum Prepared {
    Empty,
    Ready { index: u16, payload: Vec<u8>, size: u64 },
    Refused(String),
}

/// The source side: what its outputs call. Dropping the last one stops the writer, which tells
/// the forwarder that nothing more will come.
pub struct Appender {
    shared: Arc<Shared>,
    tx: Sender<Append>,
}

impl Appender {
    async fn reserve(&self, size: u64, wait: Option<Duration>) -> Result<(), TrySendError> {
        let deadline = wait.map(|w| tokio::time::Instant::now() + w);
        loop {
            let notified = self.shared.space.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut l = self.shared.lock();
                if l.closed {
                    return Err(TrySendError::Closed);
                }
                if l.used + l.reserved + size <= self.shared.max_size {
                    l.reserved += size;
                    return Ok(());
                }
            }
            if self.shared.when_full == WhenFull::DropNewest {
                return Err(TrySendError::Full);
            }
            match deadline {
                None => notified.await,
                Some(d) => {
                    if tokio::time::timeout_at(d, notified).await.is_err() {
                        return Err(TrySendError::Full);
                    }
                }
            }
        }
    }

    /// `data` as a record for output `output`, or why it cannot be one (counted as an error).
    fn prepare(&self, output: &str, data: &RecordBatch) -> Prepared {
        if data.num_rows() == 0 {
            return Prepared::Empty;
        }
        let index = self.shared.outputs.iter().position(|o| o == output).expect("the source declared this output") as u16;
        let refused = match encode_rows(data) {
            Ok(payload) => {
                let size = record_len(&payload);
                if size <= self.shared.max_size / 2 {
                    return Prepared::Ready { index, payload, size };
                }
                format!("a batch of {size} bytes is larger than half of buffer.max_size ({} bytes); raise it", self.shared.max_size)
            }
            Err(e) => format!("rows could not be encoded: {e}"),
        };
        tributary_sdk::report_error!(self.shared.metrics, warn, source = %self.shared.id, "disk buffer: {refused}");
        Prepared::Refused(refused)
    }

    fn dropped(&self, rows: u64, why: &str) {
        self.shared.metrics.dropped.add(rows);
        tracing::warn!(source = %self.shared.id, rows, "disk buffer: {why}; rows dropped");
    }
}

#[async_trait::async_trait]
impl DurableQueue for Appender {
    async fn append(&self, output: &str, data: &RecordBatch, wait: Duration) -> Result<(), TrySendError> {
        let (index, payload, size) = match self.prepare(output, data) {
            Prepared::Empty => return Ok(()),
            Prepared::Refused(_) => return Err(TrySendError::Full),
            Prepared::Ready { index, payload, size } => (index, payload, size),
        };
        self.reserve(size, Some(wait)).await?;
        let (reply, answer) = oneshot::channel();
        if self.tx.send(Append { output: index, payload, done: Done::Reply(reply) }).is_err() {
            return Err(TrySendError::Closed);
        }
        match answer.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                // A disk that cannot be written: the client is told to retry later (the writer
                // logs the failure once; each refusal is counted).
                tributary_sdk::report_error!(self.shared.metrics, debug, source = %self.shared.id, "disk buffer: cannot write to {}: {e}", self.shared.dir.display());
                Err(TrySendError::Full)
            }
            Err(_) => Err(TrySendError::Closed),
        }
    }

    async fn append_detached(&self, output: &str, data: &RecordBatch, acks: AckSet) -> Result<(), Closed> {
        let rows = data.num_rows() as u64;
        let (index, payload, size) = match self.prepare(output, data) {
            Prepared::Empty => {
                acks.release();
                return Ok(());
            }
            Prepared::Refused(why) => {
                self.dropped(rows, &why);
                acks.fail();
                return Ok(());
            }
            Prepared::Ready { index, payload, size } => (index, payload, size),
        };
        match self.reserve(size, None).await {
            Ok(()) => {}
            Err(TrySendError::Full) => {
                // when_full: drop_newest, as the user chose: the rows count as handled.
                self.dropped(rows, "full (when_full: drop_newest)");
                acks.release();
                return Ok(());
            }
            Err(TrySendError::Closed) => return Err(Closed),
        }
        self.tx.send(Append { output: index, payload, done: Done::Acks(acks) }).map_err(|_| Closed)
    }

    fn fill(&self) -> f64 {
        let l = self.shared.lock();
        (l.used + l.reserved) as f64 / self.shared.max_size as f64
    }
}

/// The file being appended to, owned by the writer thread.
struct Active {
    file: File,
    /// Bytes durable in it: a failed write is cut back to here.
    len: u64,
    /// A failed write could not be cut off: append no more to this file.
    torn: bool,
}

/// A new segment file holding the magic, fsynced with its folder. A file that could not be
/// made whole is removed (a full disk used to leave thousands of empty segments).
fn create_segment(dir: &Path, first_seq: u64) -> std::io::Result<Active> {
    let path = segment_path(dir, first_seq);
    let mut file = OpenOptions::new().create_new(true).append(true).open(&path)?;
    let made = file.write_all(MAGIC).and_then(|()| file.sync_data()).and_then(|()| File::open(dir)?.sync_all());
    if let Err(e) = made {
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    Ok(Active { file, len: MAGIC.len() as u64, torn: false })
}

/// A new segment after the current one, which is sealed: created, and counted in the ledger.
fn start_segment(shared: &Shared, first_seq: u64) -> std::io::Result<Active> {
    let active = create_segment(&shared.dir, first_seq)?;
    let mut l = shared.lock();
    if let Some(last) = l.segments.back_mut() {
        last.sealed = true;
    }
    l.segments.push_back(Segment { first_seq, path: segment_path(&shared.dir, first_seq), durable_len: active.len, sealed: false });
    l.used += active.len;
    Ok(active)
}

/// The writer is failing: since when, why, and when it tries again.
struct Failure {
    since_us: i64,
    error: String,
    retry_at: Instant,
    backoff: Duration,
}

fn write_loop(shared: Arc<Shared>, rx: Receiver<Append>, mut active: Active, mut next_seq: u64) {
    let mut buf = Vec::new();
    // Detached appends (their acks wait) that a failed write keeps for the next try.
    let mut carried: Vec<Append> = Vec::new();
    let mut failure: Option<Failure> = None;
    let mut last_logged: Option<Instant> = None;
    loop {
        let mut group = std::mem::take(&mut carried);
        let mut open = true;
        if let Some(f) = &failure {
            open = back_off(&shared, &rx, f, &mut group);
        }
        if group.is_empty() {
            if !open {
                break;
            }
            match rx.recv() {
                Ok(a) => group.push(a),
                Err(_) => break,
            }
        }
        let mut bytes: usize = group.iter().map(|a| a.payload.len()).sum();
        while bytes < GROUP_BYTES {
            match rx.try_recv() {
                Ok(a) => {
                    bytes += a.payload.len();
                    group.push(a);
                }
                Err(_) => break,
            }
        }
        let first_seq = next_seq;
        let (durable, error) = match write_group(&shared, &mut active, &mut next_seq, &group, &mut buf) {
            Ok(()) => (group.len(), None),
            Err((durable, e)) => {
                // Records past the last durable one are cut off and their numbers reused, so no
                // record is ever written behind a torn one.
                next_seq = first_seq + durable as u64;
                roll_back(&shared, &mut active);
                reclaim_written_active(&shared, &mut active, next_seq);
                (durable, Some(e.to_string()))
            }
        };
        match &error {
            None => {
                if failure.take().is_some() {
                    shared.metrics.set_failing(None);
                    tracing::debug!(source = %shared.id, "disk buffer: writing to {} again", shared.dir.display());
                }
            }
            Some(e) => {
                if let Some(f) = failure.as_mut() {
                    f.backoff = (f.backoff * 2).min(RETRY_MAX);
                    f.retry_at = Instant::now() + f.backoff;
                    f.error = e.clone();
                    shared.metrics.errors.inc();
                    shared.metrics.set_failing(Some((f.since_us, failing_text(&shared, e))));
                } else {
                    let since_us = tributary_sdk::now_us();
                    // Logged once per LOG_FAILURE_EVERY: a disk at its limit may fail, recover and
                    // fail again many times a second.
                    if last_logged.is_none_or(|at: Instant| at.elapsed() >= LOG_FAILURE_EVERY) {
                        last_logged = Some(Instant::now());
                        tributary_sdk::report_error!(shared.metrics, error, source = %shared.id, "disk buffer: cannot write to {}: {e}; clients are refused (503) and stored rows wait until it can be written again", shared.dir.display());
                    } else {
                        tributary_sdk::report_error!(shared.metrics, debug, source = %shared.id, "disk buffer: cannot write to {}: {e}", shared.dir.display());
                    }
                    shared.metrics.set_failing(Some((since_us, failing_text(&shared, e))));
                    failure = Some(Failure { since_us, error: e.clone(), retry_at: Instant::now() + RETRY_FIRST, backoff: RETRY_FIRST });
                }
            }
        }
        shared.metrics.buffer_fsyncs.inc();
        // Before the answers: a client that heard 200 and reads /metrics finds its record in the
        // gauge (set after them, CI once read the 8 bytes of an empty segment).
        shared.metrics.buffer_bytes.set(shared.lock().used);
        let mut answered = 0;
        for (i, a) in group.into_iter().enumerate() {
            match (a.done, &error) {
                (done, _) if i < durable => {
                    answered += record_len(&a.payload);
                    match done {
                        Done::Reply(reply) => {
                            let _ = reply.send(Ok(()));
                        }
                        Done::Acks(acks) => acks.release(),
                    }
                }
                (Done::Reply(reply), Some(e)) => {
                    answered += record_len(&a.payload);
                    let _ = reply.send(Err(e.clone()));
                }
                (Done::Acks(acks), _) if open => carried.push(Append { output: a.output, payload: a.payload, done: Done::Acks(acks) }),
                (Done::Acks(acks), _) => {
                    // The source is gone and the disk still refuses: not acknowledged.
                    answered += record_len(&a.payload);
                    acks.fail();
                }
                (Done::Reply(reply), None) => {
                    let _ = reply.send(Ok(()));
                }
            }
        }
        {
            let mut l = shared.lock();
            l.reserved -= answered;
        }
        shared.written.notify_waiters();
        shared.space.notify_waiters();
    }
    shared.lock().closed = true;
    shared.written.notify_waiters();
    shared.space.notify_waiters();
}

fn failing_text(shared: &Shared, error: &str) -> String {
    format!("disk buffer {}: {error}", shared.dir.display())
}

/// Wait until `failure.retry_at` without touching the disk: appenders waiting for an answer are
/// refused at once, detached appends join `group` for the retry. `false` once every appender is
/// gone.
fn back_off(shared: &Shared, rx: &Receiver<Append>, failure: &Failure, group: &mut Vec<Append>) -> bool {
    loop {
        let now = Instant::now();
        if now >= failure.retry_at {
            return true;
        }
        match rx.recv_timeout(failure.retry_at - now) {
            Ok(Append { payload, done: Done::Reply(reply), .. }) => {
                shared.lock().reserved -= record_len(&payload);
                let _ = reply.send(Err(failure.error.clone()));
                shared.space.notify_waiters();
            }
            Ok(detached) => group.push(detached),
            Err(RecvTimeoutError::Timeout) => return true,
            Err(RecvTimeoutError::Disconnected) => return false,
        }
    }
}

/// Cut the active segment back to its last durable record after a failed write. A segment that
/// cannot be cut is left as it is (its ledger length stops before the torn bytes, so nothing
/// reads them) and the next write starts a new one.
fn roll_back(shared: &Shared, active: &mut Active) {
    // Counted before the cut: the forwarder must not take read-ahead torn bytes for what is
    // written at their offsets next.
    shared.lock().cuts += 1;
    active.torn = match active.file.set_len(active.len) {
        Ok(()) => false,
        Err(e) => {
            tracing::warn!(source = %shared.id, "disk buffer: cannot cut a failed write off its segment ({e}); the next write starts a new one");
            true
        }
    };
}

/// After a failed write: when every record of the active segment is written by every sink, its
/// space is given back at once: the file is cut back to its magic and renamed for the next
/// sequence number, becoming the next segment in its place. (Cut, not removed: the forwarder may
/// still hold it open, and a removed file's space returns only once nobody does.) Otherwise a
/// segment is reclaimed only once a later one exists, and a buffer whose active segment had
/// filled the disk never could.
fn reclaim_written_active(shared: &Shared, active: &mut Active, next_seq: u64) {
    let magic = MAGIC.len() as u64;
    let (old, new) = {
        let mut l = shared.lock();
        let all_written = next_seq == 0 || l.committed.is_some_and(|c| c + 1 >= next_seq);
        let Some(last) = l.segments.back_mut().filter(|last| all_written && !last.sealed && last.durable_len > magic) else { return };
        let freed = last.durable_len - magic;
        let new = segment_path(&shared.dir, next_seq);
        let old = std::mem::replace(&mut last.path, new.clone());
        (last.first_seq, last.durable_len) = (next_seq, magic);
        l.used -= freed;
        shared.metrics.buffer_bytes.set(l.used);
        (old, new)
    };
    let reused = active
        .file
        .set_len(magic)
        .and_then(|()| active.file.sync_data())
        .and_then(|()| std::fs::rename(&old, &new))
        .and_then(|()| File::open(&shared.dir)?.sync_all());
    match reused {
        Ok(()) => (active.len, active.torn) = (magic, false),
        Err(e) => {
            tracing::warn!(source = %shared.id, "disk buffer: cannot reuse the written segment {}: {e}; the next write starts a new one", old.display());
            active.torn = true;
        }
    }
    shared.space.notify_waiters();
}

/// Write and fsync one group, rotating segments as they fill; publish what became durable. On
/// failure: how many of the group's records (from the first) are durable, and the error.
fn write_group(
    shared: &Shared,
    active: &mut Active,
    next_seq: &mut u64,
    group: &[Append],
    buf: &mut Vec<u8>,
) -> Result<(), (usize, std::io::Error)> {
    buf.clear();
    if active.torn {
        *active = start_segment(shared, *next_seq).map_err(|e| (0, e))?;
    }
    let mut durable = 0;
    for (i, a) in group.iter().enumerate() {
        if active.len + buf.len() as u64 >= shared.segment_size {
            flush(shared, active, buf).map_err(|e| (durable, e))?;
            durable = i;
            *active = start_segment(shared, *next_seq).map_err(|e| (durable, e))?;
        }
        write_record(buf, *next_seq, a.output, &a.payload);
        *next_seq += 1;
    }
    flush(shared, active, buf).map_err(|e| (durable, e))
}

fn flush(shared: &Shared, active: &mut Active, buf: &mut Vec<u8>) -> std::io::Result<()> {
    if buf.is_empty() {
        return Ok(());
    }
    active.file.write_all(buf)?;
    active.file.sync_data()?;
    active.len += buf.len() as u64;
    let mut l = shared.lock();
    let added = buf.len() as u64;
    if let Some(last) = l.segments.back_mut() {
        last.durable_len = active.len;
    }
    l.used += added;
    buf.clear();
    Ok(())
}

/// The consumer side: reads durable records in order and sends them on.
pub struct Forwarder {
    shared: Arc<Shared>,
    /// The positions of what it sends (see [`Position`]): the source id, and this folder's epoch.
    stream: Arc<str>,
    epoch: u64,
    /// Records up to here were committed by an earlier run: skipped.
    skip_through: Option<u64>,
    /// The writer's [`Ledger::cuts`] when the cursor last forgot its read-ahead.
    cuts_seen: u64,
    /// Records below this sequence number were stored by an earlier run (counted as replayed).
    first_new_seq: u64,
    /// Where reading resumes.
    cursor: Option<Cursor>,
}

struct Cursor {
    /// The segment being read.
    first_seq: u64,
    reader: SegmentReader,
    /// A record in it did not verify and none after it does: move on once a later segment exists.
    damaged: bool,
    /// The last record read from it.
    last_seq: Option<u64>,
}

/// A disk buffer opened for one source: the outputs to give the source, and the task that
/// forwards to its consumers.
pub struct OpenedBuffer {
    pub queue: Arc<dyn DurableQueue>,
    pub forwarder: Forwarder,
}

/// Open (or create) the buffer folder, cut torn tails, and start the writer thread.
pub fn open(id: &str, cfg: &DiskBufferConfig, outputs: &[OutputSpec], metrics: Arc<ComponentMetrics>) -> anyhow::Result<OpenedBuffer> {
    let dir = cfg.path.clone().unwrap_or_else(|| PathBuf::from("data/buffers").join(id));
    std::fs::create_dir_all(&dir).map_err(|e| anyhow::anyhow!("cannot create the disk buffer folder {}: {e}", dir.display()))?;
    let lock = OpenOptions::new().create(true).truncate(false).write(true).open(dir.join("lock"))?;
    if lock.try_lock().is_err() {
        anyhow::bail!("the disk buffer folder {} is in use by another Tributary process", dir.display());
    }
    let checkpoint: Option<u64> = std::fs::read_to_string(dir.join("acked")).ok().and_then(|s| s.trim().parse().ok());
    let epoch = epoch(&dir)?;

    let mut paths: Vec<(u64, PathBuf)> =
        std::fs::read_dir(&dir)?.filter_map(|e| e.ok()).filter_map(|e| segment_first_seq(&e.path()).map(|s| (s, e.path()))).collect();
    paths.sort();
    let mut segments = VecDeque::new();
    let mut last_seq: Option<u64> = None;
    let mut replay_rows = 0;
    // Removed once the new active segment exists: until then their names keep the numbers used.
    let mut written = Vec::new();
    for (first_seq, path) in paths {
        // A segment's name is its first sequence number, so the numbers below it were given out
        // even when the segment is empty (a reclaimed one): they are never given out again, or an
        // exactly-once sink would take new rows for ones it wrote.
        last_seq = last_seq.max(first_seq.checked_sub(1));
        let scanned = scan(&path, last_seq).map_err(|e| anyhow::anyhow!("cannot read the disk buffer segment {}: {e}", path.display()))?;
        if !scanned.damage.is_empty() {
            let file_len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            let places: Vec<String> = scanned.damage.iter().map(|d| format!("byte {}: {}", d.offset, d.reason)).collect();
            tracing::warn!(
                source = %id,
                "disk buffer: {} is damaged at {}; its {} intact records are kept ({} bytes dropped)",
                path.display(),
                places.join("; "),
                scanned.seqs.len(),
                file_len.saturating_sub(scanned.intact_len())
            );
            keep_intact(&path, &scanned.intact)?;
        }
        let newest = scanned.seqs.last().copied();
        if newest.is_none() || newest <= checkpoint {
            // Empty, or every record in it already written.
            written.push(path);
            last_seq = last_seq.max(newest);
            continue;
        }
        replay_rows += scanned.rows;
        last_seq = newest;
        segments.push_back(Segment { first_seq, path, durable_len: scanned.intact_len(), sealed: true });
    }
    let next_seq = last_seq.max(checkpoint).map_or(0, |s| s + 1);
    if !segments.is_empty() {
        tracing::info!(source = %id, segments = segments.len(), "disk buffer: replaying what an earlier run stored and did not finish writing (up to {replay_rows} rows) before new input");
    }
    // An empty segment already named for the next number (a reclaimed one) is made afresh: the
    // new one keeps its name, and with it the floor.
    let next_path = segment_path(&dir, next_seq);
    if written.contains(&next_path) {
        std::fs::remove_file(&next_path)?;
    }
    let active = create_segment(&dir, next_seq)?;
    for path in written.iter().filter(|p| **p != next_path) {
        std::fs::remove_file(path)?;
    }
    segments.push_back(Segment { first_seq: next_seq, path: segment_path(&dir, next_seq), durable_len: active.len, sealed: false });
    let used = segments.iter().map(|s| s.durable_len).sum();
    metrics.buffer_bytes.set(used);
    let shared = Arc::new(Shared {
        id: id.to_string(),
        dir,
        max_size: cfg.max_size.0,
        segment_size: (cfg.max_size.0 / 8).clamp(64 << 10, 128 << 20),
        when_full: cfg.when_full,
        outputs: outputs.iter().map(|o| o.name.clone()).collect(),
        ledger: Mutex::new(Ledger {
            segments,
            used,
            reserved: 0,
            committed: checkpoint,
            checkpoint_saved: checkpoint,
            checkpoint_failing: false,
            closed: false,
            cuts: 0,
        }),
        written: Notify::new(),
        space: Notify::new(),
        metrics,
        _lock: lock,
    });
    let (tx, rx) = std::sync::mpsc::channel();
    let writer_shared = shared.clone();
    std::thread::Builder::new().name(format!("buffer-{id}")).spawn(move || write_loop(writer_shared, rx, active, next_seq))?;
    Ok(OpenedBuffer {
        queue: Arc::new(Appender { shared: shared.clone(), tx }),
        forwarder: Forwarder {
            shared,
            stream: id.into(),
            epoch,
            skip_through: checkpoint,
            cuts_seen: 0,
            first_new_seq: next_seq,
            cursor: None,
        },
    })
}

/// This folder's epoch (see [`Position::epoch`]), made when the folder is: a buffer folder made
/// afresh numbers its records from 0 again, and a sink must not take them for the old ones.
fn epoch(dir: &Path) -> anyhow::Result<u64> {
    let path = dir.join("epoch");
    if let Ok(text) = std::fs::read_to_string(&path) {
        if let Ok(epoch) = u64::from_str_radix(text.trim(), 16) {
            return Ok(epoch);
        }
    }
    let epoch: u64 = rand::random();
    let tmp = dir.join("epoch.tmp");
    let mut file = File::create(&tmp)?;
    file.write_all(format!("{epoch:016x}\n").as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    File::open(dir)?.sync_all()?;
    Ok(epoch)
}

/// A record read back, with its rows.
struct Forwardable {
    seq: u64,
    output: u16,
    rows: RecordBatch,
}

impl Forwarder {
    /// Send everything stored, in order, until the source has stopped and all of it is sent.
    /// `outputs` are the source's declared outputs, in order; rows an earlier run stored under
    /// another output list or schema (the pipeline file changed) go to `dead` instead.
    pub async fn run(mut self, outputs: Vec<(Output, SchemaRef)>, dead: DeadLetters) -> anyhow::Result<()> {
        let progress = {
            let shared = self.shared.clone();
            AckedProgress::new(move |seq: u64| shared.commit(seq))
        };
        tokio::spawn(save_checkpoints(Arc::downgrade(&self.shared)));
        let shared = self.shared.clone();
        loop {
            let notified = shared.written.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let closed = shared.lock().closed;
            let (this, records) = tokio::task::spawn_blocking(move || {
                let records = self.read();
                (self, records)
            })
            .await?;
            self = this;
            if records.is_empty() {
                if closed {
                    return Ok(());
                }
                notified.await;
                continue;
            }
            // Counted per record: a merged batch may hold an earlier run's rows and this run's.
            let replayed: usize = records.iter().filter(|r| r.seq < self.first_new_seq).map(|r| r.rows.num_rows()).sum();
            self.shared.metrics.buffer_replayed.add(replayed as u64);
            for Merged { output, rows, records } in merge(records, self.first_new_seq) {
                let last_seq = records.last().map_or(0, |(seq, _)| *seq);
                let acks = AckSet::single(progress.track(last_seq));
                let position = Position { stream: self.stream.clone(), epoch: self.epoch, seq: last_seq };
                let sent = match outputs.get(output as usize) {
                    Some((out, schema)) if rows.schema().fields() == schema.fields() => {
                        out.send(Batch::with_acks(rows, acks).at(Some(position)).of_records(records)).await
                    }
                    _ => {
                        let why = "stored in the disk buffer by an earlier run whose source had other outputs or another schema";
                        tributary_sdk::report_error!(self.shared.metrics, warn, source = %self.shared.id, rows = rows.num_rows(), "{why}: sent to the dead letters");
                        dead.send_rows(&rows, why, acks).await
                    }
                };
                if sent.is_err() {
                    // The pipeline is going away; what was not written stays on disk for the next run.
                    return Ok(());
                }
            }
        }
    }

    /// Durable records after the cursor, up to [`READ_BYTES`].
    fn read(&mut self) -> Vec<Forwardable> {
        let mut out = Vec::new();
        let mut bytes = 0;
        while bytes < READ_BYTES {
            // The cursor's segment: how far it is durable, and the next one once it is sealed.
            let (durable_len, next) = {
                let l = self.shared.lock();
                if l.cuts != self.cuts_seen {
                    self.cuts_seen = l.cuts;
                    if let Some(c) = self.cursor.as_mut() {
                        c.reader.forget_read_ahead();
                    }
                }
                let at = self.cursor.as_ref().and_then(|c| l.segments.iter().position(|s| s.first_seq == c.first_seq));
                match at {
                    Some(i) => {
                        let s = &l.segments[i];
                        (s.durable_len, if s.sealed { l.segments.get(i + 1).map(|n| (n.first_seq, n.path.clone())) } else { None })
                    }
                    None => {
                        let Some(front) = l.segments.front() else { break };
                        let (first_seq, path) = (front.first_seq, front.path.clone());
                        drop(l);
                        if !self.open_cursor(first_seq, &path) {
                            break;
                        }
                        continue;
                    }
                }
            };
            let cursor = self.cursor.as_mut().expect("positioned above");
            if cursor.damaged || cursor.reader.offset() >= durable_len {
                match next {
                    Some((first_seq, path)) if self.open_cursor(first_seq, &path) => continue,
                    _ => break,
                }
            }
            match cursor.reader.next_record() {
                Ok(Some(r)) if self.skip_through.is_some_and(|s| r.seq <= s) => cursor.last_seq = Some(r.seq),
                Ok(Some(r)) => {
                    cursor.last_seq = Some(r.seq);
                    bytes += r.payload.len();
                    match decode_rows(&r.payload) {
                        Ok(rows) => out.push(Forwardable { seq: r.seq, output: r.output, rows }),
                        Err(e) => {
                            tributary_sdk::report_error!(self.shared.metrics, error, source = %self.shared.id, seq = r.seq, "disk buffer: a stored record cannot be read and is skipped: {e}");
                        }
                    }
                }
                Ok(None) => break,
                Err(d) => {
                    // Durable bytes that no longer verify: the disk changed under us. Only the
                    // damaged record is lost: reading resumes at the next one that verifies.
                    match cursor.reader.skip_damage(durable_len, cursor.last_seq) {
                        Ok(Some(at)) => {
                            tributary_sdk::report_error!(self.shared.metrics, error, source = %self.shared.id, "disk buffer: segment damaged at byte {}: {}; reading resumes at byte {at}", d.offset, d.reason);
                        }
                        _ => {
                            tributary_sdk::report_error!(self.shared.metrics, error, source = %self.shared.id, "disk buffer: segment damaged at byte {}: {}; no intact record follows it", d.offset, d.reason);
                            cursor.damaged = true;
                        }
                    }
                }
            }
        }
        out
    }

    fn open_cursor(&mut self, first_seq: u64, path: &Path) -> bool {
        match SegmentReader::open(path) {
            Ok(reader) => {
                self.cursor = Some(Cursor { first_seq, reader, damaged: false, last_seq: None });
                true
            }
            Err(e) => {
                tributary_sdk::report_error!(self.shared.metrics, error, source = %self.shared.id, "disk buffer: cannot read {}: {e}", path.display());
                false
            }
        }
    }
}

/// Records merged into one batch: their output, their rows, and each one's sequence number and
/// row count (the batch's position is the last one's).
struct Merged {
    output: u16,
    rows: RecordBatch,
    records: tributary_sdk::Records,
}

/// Consecutive records of one output and schema merged into batches of up to [`FORWARD_ROWS`] rows.
/// Records an earlier run stored (below `first_new_seq`) go one by one: an exactly-once sink wrote
/// some of them, up to a record, and drops a replayed batch whole or not at all.
fn merge(records: Vec<Forwardable>, first_new_seq: u64) -> Vec<Merged> {
    let mut out: Vec<Merged> = Vec::new();
    let mut run: Vec<Forwardable> = Vec::new();
    let one = |f: Forwardable| Merged { output: f.output, records: Arc::from([(f.seq, f.rows.num_rows() as u32)]), rows: f.rows };
    let flush = |run: &mut Vec<Forwardable>, out: &mut Vec<Merged>| {
        let Some(last) = run.last() else { return };
        let output = last.output;
        if run.len() == 1 {
            out.extend(run.pop().map(one));
            return;
        }
        let schema = run[0].rows.schema();
        match concat_batches(&schema, run.iter().map(|f| &f.rows)) {
            Ok(rows) => {
                let records = run.iter().map(|f| (f.seq, f.rows.num_rows() as u32)).collect();
                out.push(Merged { output, rows, records });
                run.clear();
            }
            // Cannot happen for one output's rows; send them one by one.
            Err(_) => out.extend(run.drain(..).map(one)),
        }
    };
    let mut rows_in_run = 0;
    for r in records {
        // Same output and same columns: a record an earlier run stored under another schema
        // must not be merged into (and relabelled as) this run's rows.
        let same = r.seq >= first_new_seq
            && run.last().is_some_and(|l| l.seq >= first_new_seq && l.output == r.output && l.rows.schema() == r.rows.schema());
        if !same || rows_in_run + r.rows.num_rows() > FORWARD_ROWS {
            flush(&mut run, &mut out);
            rows_in_run = 0;
        }
        rows_in_run += r.rows.num_rows();
        run.push(r);
    }
    flush(&mut run, &mut out);
    out
}

#[cfg(test)]
mod tests;
