use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{Array, Int64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use tokio::sync::mpsc;
use tributary_sdk::config::ByteSize;
use tributary_sdk::{ComponentMetrics, DeadLetterStore, DeadLetters, Delivery, DurableQueue, Output, OutputSpec, TrySendError};

use super::segment::{segment_first_seq, HEADER_LEN};
use super::*;

/// How long a test's `append` may wait for room (it returns once the record is fsynced).
const DURABLE: Duration = Duration::from_secs(5);

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]))
}

fn rows(values: impl IntoIterator<Item = i64>) -> RecordBatch {
    RecordBatch::try_new(schema(), vec![Arc::new(Int64Array::from_iter_values(values))]).unwrap()
}

fn values(batch: &RecordBatch) -> Vec<i64> {
    batch.column(0).as_any().downcast_ref::<Int64Array>().unwrap().values().to_vec()
}

fn config(dir: &Path, max_size: u64, when_full: WhenFull) -> DiskBufferConfig {
    DiskBufferConfig { max_size: ByteSize(max_size), when_full, path: Some(dir.to_path_buf()) }
}

struct Running {
    queue: Arc<dyn DurableQueue>,
    forwarder: tokio::task::JoinHandle<anyhow::Result<()>>,
    rx: mpsc::Receiver<Delivery>,
    metrics: Arc<ComponentMetrics>,
}

/// A buffer whose forwarder sends to one channel (the consumer the test plays).
fn start(cfg: &DiskBufferConfig) -> Running {
    start_declaring(cfg, schema())
}

/// As [`start`], with the source declaring `declared` as its schema; its dead letters go to
/// `dead_letters.jsonl` beside the buffer folder.
fn start_declaring(cfg: &DiskBufferConfig, declared: SchemaRef) -> Running {
    let metrics = Arc::new(ComponentMetrics::default());
    let opened = open("src", cfg, &[OutputSpec::main(declared.clone())], metrics.clone()).unwrap();
    let (tx, rx) = mpsc::channel(1024);
    let output = Output::new(vec![(tx, 0)], metrics.clone(), false);
    let store = Arc::new(DeadLetterStore::new(cfg.path.as_ref().unwrap().with_extension("dead_letters.jsonl")));
    let dead = DeadLetters::new("src", Output::new(Vec::new(), metrics.clone(), false), metrics.clone()).with_store(store);
    let forwarder = tokio::spawn(opened.forwarder.run(vec![(output, declared)], dead));
    Running { queue: opened.queue, forwarder, rx, metrics }
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut s: Vec<PathBuf> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).filter(|p| segment_first_seq(p).is_some()).collect();
    s.sort();
    s
}

/// Every value the consumer receives until `n` values arrived; acks released when `ack`.
async fn receive(rx: &mut mpsc::Receiver<Delivery>, n: usize, ack: bool) -> Vec<i64> {
    let mut got = Vec::new();
    while got.len() < n {
        let d = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.expect("rows within 10s").expect("channel open");
        got.extend(values(&d.batch.data));
        if ack {
            d.batch.acks.release();
        }
        // Otherwise dropped unreleased: the rows count as not written (as after a crash).
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_share_fsyncs_and_arrive_in_order_then_space_is_reclaimed() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = start(&config(dir.path(), 1 << 20, WhenFull::Block));
    let appends: Vec<_> = (0..200)
        .map(|i| {
            let q = b.queue.clone();
            tokio::spawn(async move { q.append("", &rows([i]), Duration::from_secs(5)).await })
        })
        .collect();
    for a in appends {
        assert_eq!(a.await.unwrap(), Ok(()));
    }
    let fsyncs = b.metrics.buffer_fsyncs.get();
    assert!(fsyncs < 200, "group commit: {fsyncs} fsyncs for 200 concurrent appends");
    let mut got = receive(&mut b.rx, 200, true).await;
    got.sort();
    assert_eq!(got, (0..200).collect::<Vec<_>>());

    // Enough to fill several 128 KiB segments; all acked, all but the active segment go away.
    for i in 0..300 {
        b.queue.append("", &rows(i * 100..i * 100 + 100), DURABLE).await.unwrap();
    }
    assert_eq!(receive(&mut b.rx, 30_000, true).await, (0..30_000).collect::<Vec<_>>());
    let left = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let n = segments(dir.path()).len();
            if n == 1 {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("written segments are removed");
    assert_eq!(left, 1);
    drop(b.queue);
    b.forwarder.await.unwrap().unwrap();
    assert!(b.rx.recv().await.is_none(), "the forwarder closes its outputs once the source is gone");
}

#[tokio::test]
async fn what_was_not_acked_is_replayed_first_after_a_restart_and_what_was_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 1 << 20, WhenFull::Block);
    let mut first = start(&cfg);
    for i in 0..3 {
        first.queue.append("", &rows([i]), DURABLE).await.unwrap();
    }
    // The consumer writes the first three (acked) …
    assert_eq!(receive(&mut first.rx, 3, true).await, vec![0, 1, 2]);
    for i in 3..6 {
        first.queue.append("", &rows([i]), DURABLE).await.unwrap();
    }
    // … and holds the next three when the process dies (acks never resolve).
    assert_eq!(receive(&mut first.rx, 3, false).await, vec![3, 4, 5]);
    tokio::time::sleep(Duration::from_millis(600)).await;
    first.forwarder.abort();
    drop(first.queue);
    drop(first.rx);
    // The writer thread lets go of the folder once the appender and forwarder are gone.
    tokio::time::sleep(Duration::from_millis(100)).await;

    let mut second = start(&cfg);
    second.queue.append("", &rows([6]), DURABLE).await.unwrap();
    assert_eq!(receive(&mut second.rx, 4, true).await, vec![3, 4, 5, 6], "replayed before new input, acked ones not again");
    assert_eq!(second.metrics.buffer_replayed.get(), 3);
}

/// Every batch carries the position of its last record; a restart keeps the folder's epoch and
/// never gives out a number again, even once every segment was reclaimed (an exactly-once sink
/// would take a reused number for rows it wrote); a folder made afresh has a new epoch.
#[tokio::test]
async fn positions_never_repeat_in_a_folder_and_a_new_folder_has_a_new_epoch() {
    async fn next_position(r: &mut Running) -> Position {
        let d = tokio::time::timeout(Duration::from_secs(10), r.rx.recv()).await.unwrap().unwrap();
        d.batch.acks.release();
        d.batch.position.expect("a disk buffer's batches carry positions")
    }
    async fn stop(r: Running) {
        drop(r.queue);
        r.forwarder.await.unwrap().unwrap();
        // The writer thread lets go of the folder's lock once everything is gone.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 1 << 20, WhenFull::Block);
    let mut first = start(&cfg);
    let mut seen = Vec::new();
    for i in 0..3 {
        first.queue.append("", &rows([i]), DURABLE).await.unwrap();
        seen.push(next_position(&mut first).await);
    }
    assert_eq!(seen.iter().map(|p| p.seq).collect::<Vec<_>>(), [0, 1, 2]);
    assert!(seen.iter().all(|p| &*p.stream == "src" && p.epoch == seen[0].epoch));
    stop(first).await;
    // As a full disk leaves it: the written active segment was cut to its magic and renamed for
    // the next number, and the checkpoint was not saved. Only the name says 0..=2 were given out.
    for old in segments(dir.path()) {
        std::fs::remove_file(old).unwrap();
    }
    std::fs::write(segment_path(dir.path(), 3), MAGIC).unwrap();
    std::fs::remove_file(dir.path().join("acked")).unwrap();

    let mut second = start(&cfg);
    second.queue.append("", &rows([3]), DURABLE).await.unwrap();
    let after = next_position(&mut second).await;
    assert_eq!((after.epoch, after.seq), (seen[0].epoch, 3), "the same folder goes on numbering");
    stop(second).await;

    let fresh = tempfile::tempdir().unwrap();
    let mut third = start(&config(fresh.path(), 1 << 20, WhenFull::Block));
    third.queue.append("", &rows([0]), DURABLE).await.unwrap();
    let new = next_position(&mut third).await;
    assert_eq!(new.seq, 0);
    assert_ne!(new.epoch, seen[0].epoch, "a new folder is a new epoch");
}

#[tokio::test]
async fn a_torn_tail_is_cut_and_the_intact_records_are_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 1 << 20, WhenFull::Block);
    {
        let metrics = Arc::new(ComponentMetrics::default());
        let opened = open("src", &cfg, &[OutputSpec::main(schema())], metrics).unwrap();
        for i in 0..3 {
            opened.queue.append("", &rows([i * 10, i * 10 + 1]), DURABLE).await.unwrap();
        }
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let segment = segments(dir.path()).pop().unwrap();
    let len = std::fs::metadata(&segment).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&segment).unwrap().set_len(len - 7).unwrap();

    let mut b = start(&cfg);
    // Not acknowledged, so the segment stays for the look below.
    assert_eq!(receive(&mut b.rx, 4, false).await, vec![0, 1, 10, 11]);
    let cut = std::fs::metadata(&segment).unwrap().len();
    let record = (len - MAGIC.len() as u64) / 3;
    assert_eq!(cut, MAGIC.len() as u64 + 2 * record, "cut at the start of the torn record");
    assert_eq!(record, (HEADER_LEN + encode_rows(&rows([0, 1])).unwrap().len()) as u64);
}

#[tokio::test]
async fn a_full_buffer_blocks_until_acks_free_room_or_drops_the_newest_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = start(&config(dir.path(), 1 << 20, WhenFull::Block));
    let big = rows(0..20_000); // ~160 KB per record
    let mut accepted = 0;
    loop {
        match b.queue.append("", &big, Duration::from_millis(200)).await {
            Ok(()) => accepted += 1,
            Err(e) => {
                assert_eq!(e, TrySendError::Full);
                break;
            }
        }
    }
    assert!((5..=7).contains(&accepted), "1 MiB holds about six records of 160 KB, took {accepted}");
    assert!(b.queue.fill() > 0.8, "fill {}", b.queue.fill());
    // The consumer writes them: room again.
    receive(&mut b.rx, accepted * 20_000, true).await;
    b.queue.append("", &big, Duration::from_secs(5)).await.expect("room after the acks");

    let dir = tempfile::tempdir().unwrap();
    let mut d = start(&config(dir.path(), 1 << 20, WhenFull::DropNewest));
    for _ in 0..10 {
        d.queue.append_detached("", &big, tributary_sdk::AckSet::none()).await.unwrap();
    }
    let kept = d.metrics.dropped.get();
    assert!(kept >= 3 * 20_000, "dropped {kept} rows");
    assert_eq!(d.queue.append("", &big, Duration::from_millis(10)).await, Err(TrySendError::Full), "a client that can retry is told");
    let _ = receive(&mut d.rx, 10 * 20_000 - kept as usize, false).await;
}

/// The pipeline file changed between runs: rows stored under the old schema cannot go to
/// consumers planned for the new one, so they become dead letters (never dropped, never sent on).
#[tokio::test]
async fn rows_stored_under_another_schema_become_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir.path().join("buffer"), 1 << 20, WhenFull::Block);
    {
        let metrics = Arc::new(ComponentMetrics::default());
        let opened = open("src", &cfg, &[OutputSpec::main(schema())], metrics).unwrap();
        opened.queue.append("", &rows([41, 42]), DURABLE).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let renamed = Arc::new(Schema::new(vec![Field::new("value", DataType::Int64, false)]));
    let mut b = start_declaring(&cfg, renamed.clone());
    let new_rows = RecordBatch::try_new(renamed, vec![Arc::new(Int64Array::from(vec![7]))]).unwrap();
    b.queue.append("", &new_rows, DURABLE).await.unwrap();
    assert_eq!(receive(&mut b.rx, 1, true).await, vec![7], "only the new run's rows reach the consumer");
    let letters = std::fs::read_to_string(dir.path().join("buffer.dead_letters.jsonl")).unwrap();
    assert_eq!(letters.lines().count(), 2, "{letters}");
    assert!(
        letters.contains(r#"{\"v\":41}"#) && letters.contains("an earlier run whose source had other outputs or another schema"),
        "{letters}"
    );
    assert_eq!(b.metrics.errors.get(), 1);
}

/// What a source's `send` does: it hands the batch over and goes on; the batch's ack resolves
/// only once the record is fsynced, and the record is on disk by then (a reopen replays it).
#[tokio::test]
async fn a_detached_append_releases_its_ack_once_durable() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 1 << 20, WhenFull::Block);
    {
        let metrics = Arc::new(ComponentMetrics::default());
        let opened = open("src", &cfg, &[OutputSpec::main(schema())], metrics.clone()).unwrap();
        let (ack, status) = tributary_sdk::Ack::channel();
        opened.queue.append_detached("", &rows([5, 6]), tributary_sdk::AckSet::single(ack)).await.unwrap();
        assert_eq!(status.await.unwrap(), tributary_sdk::AckStatus::Delivered);
        assert_eq!(metrics.buffer_fsyncs.get(), 1);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut b = start(&cfg);
    assert_eq!(receive(&mut b.rx, 2, true).await, vec![5, 6]);
}

#[tokio::test]
async fn one_process_per_buffer_folder() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 1 << 20, WhenFull::Block);
    let _first = open("src", &cfg, &[OutputSpec::main(schema())], Arc::new(ComponentMetrics::default())).unwrap();
    let err = open("src", &cfg, &[OutputSpec::main(schema())], Arc::new(ComponentMetrics::default())).err().unwrap();
    assert_eq!(err.to_string(), format!("the disk buffer folder {} is in use by another Tributary process", dir.path().display()));
}

/// Small records travel on together, but never across outputs or schemas (a record of an earlier
/// run's schema merged into this run's rows would be relabelled, then misrouted).
#[test]
fn merging_stops_at_another_output_or_schema() {
    let other = Arc::new(Schema::new(vec![Field::new("value", DataType::Int64, false)]));
    let renamed = |v: i64| RecordBatch::try_new(other.clone(), vec![Arc::new(Int64Array::from(vec![v]))]).unwrap();
    let records = vec![
        Forwardable { seq: 1, output: 0, rows: rows([1]) },
        Forwardable { seq: 2, output: 0, rows: rows([2]) },
        Forwardable { seq: 3, output: 0, rows: renamed(3) },
        Forwardable { seq: 4, output: 1, rows: rows([4]) },
        Forwardable { seq: 5, output: 0, rows: rows([5]) },
    ];
    // Each batch lists its records (sequence number, rows): its position is the last one's.
    type Shown = (u16, Vec<i64>, String, Vec<(u64, u32)>);
    let merged: Vec<Shown> = merge(records, 0)
        .into_iter()
        .map(|m| (m.output, values(&m.rows), m.rows.schema().field(0).name().clone(), m.records.to_vec()))
        .collect();
    assert_eq!(
        merged,
        vec![
            (0, vec![1, 2], "v".into(), vec![(1, 1), (2, 1)]),
            (0, vec![3], "value".into(), vec![(3, 1)]),
            (1, vec![4], "v".into(), vec![(4, 1)]),
            (0, vec![5], "v".into(), vec![(5, 1)])
        ]
    );
}

/// Records an earlier run stored are replayed one by one, so an exactly-once sink that wrote up
/// to one of them can drop exactly those; this run's records merge again from the first one.
#[test]
fn replayed_records_are_not_merged() {
    let records = (1..=5).map(|seq| Forwardable { seq, output: 0, rows: rows([seq as i64]) }).collect();
    let merged: Vec<(Vec<i64>, u64)> = merge(records, 4).into_iter().map(|m| (values(&m.rows), m.records.last().unwrap().0)).collect();
    assert_eq!(merged, vec![(vec![1], 1), (vec![2], 2), (vec![3], 3), (vec![4, 5], 5)]);
}

/// The last acks before a quiet spell are saved by the clock: an idle `kill -9` then re-sends
/// nothing (the position used to be saved only when a later ack arrived).
#[tokio::test]
async fn the_acked_position_is_saved_without_a_later_ack() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = start(&config(dir.path(), 1 << 20, WhenFull::Block));
    for i in 0..3 {
        b.queue.append("", &rows([i]), DURABLE).await.unwrap();
    }
    assert_eq!(receive(&mut b.rx, 3, true).await, vec![0, 1, 2]);
    tokio::time::sleep(CHECKPOINT_EVERY * 4).await;
    assert_eq!(std::fs::read_to_string(dir.path().join("acked")).unwrap(), "2", "records 0..=2 are written");
}

/// The disk fills while rows arrive: appends are refused (never answered as stored), the failure
/// shows in the source's metrics naming the buffer, no segment storm, and once space returns
/// writing resumes by itself; every acknowledged row arrives, in order, and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_appends_then_resumes_without_losing_what_it_acknowledged() {
    let Some(disk) = tributary_testkit::Tmpfs::mount(4 << 20) else { return };
    let folder = disk.path().join("buffer");
    let mut b = start(&config(&folder, 64 << 20, WhenFull::Block));
    // Leave about 300 KB: a few of the ~80 KB records below fit.
    disk.fill("filler", 300_000).unwrap();
    let filler = disk.path().join("filler");
    let (mut acknowledged, mut refused, mut next) = (Vec::new(), 0, 0i64);
    while refused < 20 {
        match b.queue.append("", &rows(next..next + 10_000), Duration::from_millis(100)).await {
            Ok(()) => acknowledged.push(next),
            Err(e) => {
                assert_eq!(e, TrySendError::Full);
                refused += 1;
            }
        }
        next += 10_000;
    }
    let (since, why) = b.metrics.failing().expect("the buffer reports that it fails");
    assert!(since > 0 && why.starts_with(&format!("disk buffer {}: ", folder.display())), "{why}");
    assert!(why.contains("No space left on device"), "{why}");
    assert!(segments(&folder).len() <= 2, "no segment storm: {:?}", segments(&folder));
    std::fs::remove_file(&filler).unwrap();
    // Space again: within the back-off the writer tries again by itself.
    let resumed = loop {
        match b.queue.append("", &rows(next..next + 10_000), Duration::from_millis(100)).await {
            Ok(()) => break next,
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
        next += 10_000;
    };
    acknowledged.push(resumed);
    assert!(b.metrics.failing().is_none(), "recovered");
    let expected: Vec<i64> = acknowledged.iter().flat_map(|first| *first..first + 10_000).collect();
    assert_eq!(receive(&mut b.rx, expected.len(), true).await, expected);
    assert!(acknowledged.len() >= 3, "some records fit before the disk was full: {acknowledged:?}");
}

/// A buffer allowed more than its disk holds: its active segment fills the disk with rows every
/// sink has written. The failed write gives that segment's space back (it could only be
/// reclaimed once a later segment existed, and none could be created), so writing goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_active_segment_that_filled_the_disk_with_written_rows_is_reclaimed() {
    let Some(disk) = tributary_testkit::Tmpfs::mount(1 << 20) else { return };
    let folder = disk.path().join("buffer");
    // 64 MiB allowed: 8 MiB segments on a 1 MiB disk.
    let mut b = start(&config(&folder, 64 << 20, WhenFull::Block));
    let (mut acknowledged, mut refused, mut next) = (Vec::new(), 0, 0i64);
    while acknowledged.len() < 130 && refused < 200 {
        match b.queue.append("", &rows(next..next + 2_000), Duration::from_millis(100)).await {
            Ok(()) => {
                acknowledged.push(next);
                assert_eq!(receive(&mut b.rx, 2_000, true).await, (next..next + 2_000).collect::<Vec<_>>());
            }
            Err(_) => {
                refused += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        next += 2_000;
    }
    // 130 records of ~16 KB: twice the disk, in segments that would not have rotated by size.
    assert_eq!(acknowledged.len(), 130, "{refused} appends refused; the buffer never got its space back");
    assert!(b.metrics.failing().is_none(), "recovered");
}
