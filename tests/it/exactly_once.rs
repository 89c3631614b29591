//! `delivery: exactly_once` through the real runtime: a disk-buffered source, a sink that stores
//! positions with its rows (an in-memory "database" shared across runs), and a crash in the worst
//! place: the sink's commit happened, its answer was lost, and the process died before any ack.
//! The next run replays what the buffer stored; the sink must end up with every row once.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use datafusion::arrow::array::{Int64Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use tokio_util::sync::CancellationToken;
use tributary::config::{ComponentDecl, Kind};
use tributary::graph::{DiskBufferConfig, SinkRetry, SourceBuffer, WhenFull};
use tributary::graph::{ExactlyOnce, InputRef, Plan, PlannedSink, PlannedSource};
use tributary::runtime::{run, RunOptions};
use tributary_sdk::config::ByteSize;
use tributary_sdk::{
    DeadLetter, Durability, OutputSpec, Position, PositionStore, Positions, Sink, SinkContext, Source, SourceContext, Transient, Written,
};

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]))
}

fn values(batch: &RecordBatch) -> Vec<i64> {
    batch.column(0).as_any().downcast_ref::<Int64Array>().unwrap().values().to_vec()
}

/// Sends `first..first + count`, one row per batch, then waits for shutdown.
struct Counting {
    first: i64,
    count: i64,
}

#[async_trait::async_trait]
impl Source for Counting {
    async fn run(self: Box<Self>, ctx: SourceContext) -> anyhow::Result<()> {
        for n in self.first..self.first + self.count {
            ctx.send(RecordBatch::try_new(schema(), vec![Arc::new(Int64Array::from(vec![n]))])?).await?;
        }
        ctx.shutdown.cancelled().await;
        Ok(())
    }
}

/// What a transactional destination holds: rows and positions, changed together.
#[derive(Default)]
struct Database {
    rows: Vec<i64>,
    positions: Positions,
}

/// Buffers rows; a flush commits them with their positions. With `answer_lost`, every flush
/// commits and then reports a lost connection, as a COMMIT whose answer never came.
struct TransactionalSink {
    db: Arc<Mutex<Database>>,
    buffered: Vec<i64>,
    staged: Vec<Position>,
    next: Option<Position>,
    answer_lost: bool,
}

#[async_trait::async_trait]
impl Sink for TransactionalSink {
    async fn write(&mut self, batch: RecordBatch, _ctx: &SinkContext) -> Result<Written, Transient> {
        self.buffered.extend(values(&batch));
        self.staged.extend(self.next.take());
        Ok(Written::with(Durability::Buffered, Vec::new()))
    }
    async fn flush(&mut self, _ctx: &SinkContext) -> Result<Vec<DeadLetter>, Transient> {
        {
            let mut db = self.db.lock().unwrap();
            db.rows.append(&mut self.buffered);
            for p in self.staged.drain(..) {
                db.positions.advance(&p);
            }
        }
        if self.answer_lost {
            return Err(Transient::new(anyhow::anyhow!("connection lost before the COMMIT's answer")));
        }
        Ok(Vec::new())
    }
    /// Losing the answer, the engine retries the flush for ever and passes no new rows: the first
    /// flush must hold them all.
    fn flush_interval(&self) -> Option<Duration> {
        Some(Duration::from_millis(if self.answer_lost { 500 } else { 20 }))
    }
    fn positions(&mut self) -> Option<&mut dyn PositionStore> {
        Some(self)
    }
}

#[async_trait::async_trait]
impl PositionStore for TransactionalSink {
    async fn committed(&mut self, _ctx: &SinkContext, _streams: &[Arc<str>]) -> anyhow::Result<Positions> {
        Ok(self.db.lock().unwrap().positions.clone())
    }
    fn reached(&mut self, position: &Position) {
        self.next = Some(position.clone());
    }
}

fn decl(id: &str, kind: Kind, inputs: &[&str]) -> ComponentDecl {
    ComponentDecl {
        id: id.into(),
        kind,
        type_name: "test".into(),
        inputs: inputs.iter().map(|s| s.to_string()).collect(),
        options: serde_yaml::Value::Null,
    }
}

/// One run: `count` rows from `first`, into `db`, until every row reached the database (at most
/// 5 s), then a stop whose drain gives up quickly (the "crash": nothing more is acked).
async fn one_run(dir: &std::path::Path, db: &Arc<Mutex<Database>>, (first, count): (i64, i64), answer_lost: bool, exactly_once: bool) {
    let buffer = DiskBufferConfig { max_size: ByteSize(16 << 20), when_full: WhenFull::Block, path: Some(dir.join("buffer")) };
    let sink = TransactionalSink { db: db.clone(), buffered: Vec::new(), staged: Vec::new(), next: None, answer_lost };
    let retry = SinkRetry {
        initial: tributary_sdk::Period(Duration::from_millis(10)),
        max: tributary_sdk::Period(Duration::from_millis(50)),
        max_elapsed: None,
    };
    let plan = Plan {
        sources: vec![PlannedSource {
            id: "src".into(),
            type_name: "test".into(),
            outputs: vec![OutputSpec::main(schema())],
            source: Box::new(Counting { first, count }),
            buffer: SourceBuffer::Disk(buffer),
        }],
        transforms: vec![],
        sinks: vec![PlannedSink {
            id: "db".into(),
            type_name: "test".into(),
            inputs: vec![InputRef { name: "src".into(), component: "src".into(), output: String::new() }],
            sink: Box::new(sink),
            retry,
            exactly_once: exactly_once.then(|| ExactlyOnce { streams: vec!["src".into()] }),
        }],
        outputs: Default::default(),
        decls: vec![decl("src", Kind::Source, &[]), decl("db", Kind::Sink, &["src"])],
        dead_letter_dir: dir.join("dead_letters"),
        tables: vec![],
    };
    let shutdown = CancellationToken::new();
    let opts = RunOptions { drain_timeout: Duration::from_millis(300), ..Default::default() };
    let running = tokio::spawn(run(plan, None, shutdown.clone(), opts));
    let want = first + count;
    for _ in 0..500 {
        if db.lock().unwrap().rows.iter().any(|&n| n == want - 1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Give the replay's skipped batches time to be acked too (they are, at once).
    tokio::time::sleep(Duration::from_millis(200)).await;
    shutdown.cancel();
    running.await.unwrap();
    // The buffer's writer thread lets go of the folder.
    tokio::time::sleep(Duration::from_millis(200)).await;
}

/// The distinct rows the database holds, and how many it holds more than once.
fn counted(db: &Arc<Mutex<Database>>) -> (Vec<i64>, usize) {
    let mut rows = db.lock().unwrap().rows.clone();
    let all = rows.len();
    rows.sort();
    rows.dedup();
    let duplicates = all - rows.len();
    (rows, duplicates)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_committed_before_a_crash_are_not_written_again() {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(Mutex::new(Database::default()));
    // Run 1: every commit's answer is lost, so nothing is ever acked; then the crash.
    one_run(dir.path(), &db, (0, 50), true, true).await;
    assert_eq!(db.lock().unwrap().rows.len(), 50, "all 50 committed, none acknowledged");
    // Run 2: the buffer replays all 50 (they were never acked), then 30 new rows.
    one_run(dir.path(), &db, (50, 30), false, true).await;
    let (distinct, duplicates) = counted(&db);
    assert_eq!(distinct, (0..80).collect::<Vec<_>>());
    assert_eq!(duplicates, 0, "rows written twice: {:?}", db.lock().unwrap().rows);
}

/// The same crash at least once: the replay writes the 50 rows again. This is what
/// `exactly_once` removes (and shows the test above can fail).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_least_once_writes_the_same_rows_twice_after_that_crash() {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(Mutex::new(Database::default()));
    one_run(dir.path(), &db, (0, 50), true, false).await;
    one_run(dir.path(), &db, (50, 30), false, false).await;
    let (distinct, duplicates) = counted(&db);
    assert_eq!(distinct, (0..80).collect::<Vec<_>>());
    assert_eq!(duplicates, 50);
}
