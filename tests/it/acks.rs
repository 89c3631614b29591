//! Acknowledgements end to end through the runtime: a source's ack resolves only once every sink
//! that received rows derived from its batch has made them durable — the contract replayable
//! sources (Kafka offsets, Redis XACK) will commit on.

use std::sync::{Arc, Mutex};

use datafusion::arrow::array::{Int64Array, RecordBatch, TimestampMicrosecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tributary::config::{ComponentDecl, Kind};
use tributary::graph::{InputRef, Plan, PlannedSink, PlannedSource, PlannedTransform};
use tributary::runtime::{run, RunOptions};
use tributary::sql::SqlTransform;
use tributary_sdk::config::event_time_type;
use tributary_sdk::{Ack, AckSet, AckStatus, Batch, ComponentConfig, OutputSpec, SinkPlugin, Source, SourceContext};

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("ts", event_time_type(), false), Field::new("n", DataType::Int64, false)]))
}

fn rows(n: &[i64]) -> RecordBatch {
    let ts = TimestampMicrosecondArray::from(vec![1_764_000_000_000_000; n.len()]).with_timezone("UTC");
    RecordBatch::try_new(schema(), vec![Arc::new(ts), Arc::new(Int64Array::from(n.to_vec()))]).unwrap()
}

/// Sends each batch with its own ack, then waits for shutdown. Reports each ack's outcome.
struct AckingSource {
    batches: Vec<RecordBatch>,
    outcomes: Vec<oneshot::Sender<oneshot::Receiver<AckStatus>>>,
    sent: Arc<Mutex<usize>>,
}

#[async_trait::async_trait]
impl Source for AckingSource {
    async fn run(self: Box<Self>, ctx: SourceContext) -> anyhow::Result<()> {
        for (batch, report) in self.batches.into_iter().zip(self.outcomes) {
            let (ack, rx) = Ack::channel();
            ctx.output("").send(Batch::with_acks(batch, AckSet::single(ack))).await?;
            *self.sent.lock().unwrap() += 1;
            let _ = report.send(rx);
        }
        ctx.shutdown.cancelled().await;
        Ok(())
    }
}

fn decl(id: &str, kind: Kind, type_name: &str, inputs: &[&str]) -> ComponentDecl {
    ComponentDecl {
        id: id.into(),
        kind,
        type_name: type_name.into(),
        inputs: inputs.iter().map(|s| s.to_string()).collect(),
        options: serde_yaml::Value::Null,
    }
}

fn input(name: &str) -> InputRef {
    InputRef { name: name.into(), component: name.into(), output: String::new() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_resolve_when_rows_are_durable_or_filtered_out() {
    let dir = tempfile::tempdir().unwrap();
    let (tx_kept, rx_kept) = oneshot::channel();
    let (tx_dropped, rx_dropped) = oneshot::channel();
    let sent = Arc::new(Mutex::new(0));
    let source = AckingSource { batches: vec![rows(&[5, 50]), rows(&[1, 2])], outcomes: vec![tx_kept, tx_dropped], sent: sent.clone() };
    let sql = SqlTransform::plan("SELECT ts, n FROM src WHERE n > 3", &[("src".into(), schema())], &[]).await.unwrap();
    let sink_cfg = ComponentConfig::from_yaml("lake", &format!("{{path: {}, max_age: 1h}}", dir.path().display()));
    let sink =
        tributary_parquet::ParquetSinkPlugin.build(&sink_cfg, &[("big".into(), sql.output_schema())]).map_err(|e| e.to_string()).unwrap();
    let plan = Plan {
        sources: vec![PlannedSource {
            id: "src".into(),
            type_name: "test".into(),
            outputs: vec![OutputSpec::main(schema())],
            source: Box::new(source),
            buffer: Default::default(),
        }],
        transforms: vec![PlannedTransform { id: "big".into(), inputs: vec![input("src")], sql, window: None, interval: None }],
        sinks: vec![PlannedSink {
            id: "lake".into(),
            type_name: "parquet".into(),
            inputs: vec![input("big")],
            sink,
            retry: Default::default(),
            exactly_once: None,
        }],
        outputs: Default::default(),
        decls: vec![
            decl("src", Kind::Source, "test", &[]),
            decl("big", Kind::Transform, "sql", &["src"]),
            decl("lake", Kind::Sink, "parquet", &["big"]),
        ],
        dead_letter_dir: dir.path().join("dead_letters"),
        tables: vec![],
    };
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(run(plan, None, shutdown.clone(), RunOptions::default()));

    // Every row of the second batch is filtered out: nothing to deliver, so it resolves at once.
    let dropped = rx_dropped.await.unwrap();
    assert_eq!(dropped.await.unwrap(), AckStatus::Delivered);

    // The first batch's rows sit in an open Parquet file (max_age 1h): not yet durable.
    let mut kept = rx_kept.await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(kept.try_recv(), Err(oneshot::error::TryRecvError::Empty), "acked before the file was complete");

    // Shutdown flushes the file, and only then the ack resolves.
    shutdown.cancel();
    let report = running.await.unwrap();
    assert!(report.ok(), "{report:?}");
    assert_eq!(kept.await.unwrap(), AckStatus::Delivered);
    assert_eq!(*sent.lock().unwrap(), 2);
    let files: Vec<_> = walk(dir.path()).into_iter().filter(|p| p.extension().is_some_and(|e| e == "parquet")).collect();
    assert_eq!(files.len(), 1);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// What a [`ScriptedSink`] does with each write, in order (then `Take` forever).
#[derive(Clone, Copy, Debug)]
enum Step {
    /// Fail transiently (the destination is down).
    Down,
    /// Refuse the first `n` rows for good, write the rest.
    Refuse(usize),
    /// Refuse the first `n` rows for good, then fail transiently before the rest is written.
    RefuseThenDown(usize),
    /// Write everything.
    Take,
}

/// A sink that follows a script and records what it durably took.
struct ScriptedSink {
    script: std::collections::VecDeque<Step>,
    taken: Arc<Mutex<Vec<i64>>>,
}

#[async_trait::async_trait]
impl tributary_sdk::Sink for ScriptedSink {
    async fn write(
        &mut self,
        batch: RecordBatch,
        _ctx: &tributary_sdk::SinkContext,
    ) -> Result<tributary_sdk::Written, tributary_sdk::Transient> {
        let n: Vec<i64> = batch.column(1).as_any().downcast_ref::<Int64Array>().unwrap().values().to_vec();
        match self.script.pop_front().unwrap_or(Step::Take) {
            Step::Down => Err(tributary_sdk::Transient::new(anyhow::anyhow!("connection refused"))),
            Step::RefuseThenDown(k) => {
                let letters = tributary_sdk::dead_letter::letters_for_rows(&batch.slice(0, k), "value out of range");
                let rest = batch.slice(k, batch.num_rows() - k);
                Err(tributary_sdk::Transient::partial(anyhow::anyhow!("connection lost"), rest).with_rejected(letters))
            }
            Step::Refuse(k) => {
                let letters = tributary_sdk::dead_letter::letters_for_rows(&batch.slice(0, k), "value out of range");
                self.taken.lock().unwrap().extend(&n[k..]);
                Ok(tributary_sdk::Written::with(tributary_sdk::Durability::Durable, letters))
            }
            Step::Take => {
                self.taken.lock().unwrap().extend(n);
                Ok(tributary_sdk::Written::durable())
            }
        }
    }
    async fn flush(&mut self, _ctx: &tributary_sdk::SinkContext) -> Result<Vec<tributary_sdk::DeadLetter>, tributary_sdk::Transient> {
        Ok(Vec::new())
    }
}

/// Dead letters as (reason, payload), made durable only when `open` is released.
struct DeadLetterStore {
    stored: Arc<Mutex<Vec<(String, String)>>>,
    open: Arc<tokio::sync::Semaphore>,
}

#[async_trait::async_trait]
impl tributary_sdk::Sink for DeadLetterStore {
    async fn write(
        &mut self,
        batch: RecordBatch,
        _ctx: &tributary_sdk::SinkContext,
    ) -> Result<tributary_sdk::Written, tributary_sdk::Transient> {
        // Held until the test lets the store write: the source's ack must wait for it.
        let _permit = self.open.acquire().await.unwrap();
        let reasons = batch.column_by_name("reason").unwrap().as_any().downcast_ref::<datafusion::arrow::array::StringArray>().unwrap();
        let payloads = batch.column_by_name("payload").unwrap().as_any().downcast_ref::<datafusion::arrow::array::StringArray>().unwrap();
        let mut stored = self.stored.lock().unwrap();
        for i in 0..batch.num_rows() {
            stored.push((reasons.value(i).to_string(), payloads.value(i).to_string()));
        }
        Ok(tributary_sdk::Written::durable())
    }
    async fn flush(&mut self, _ctx: &tributary_sdk::SinkContext) -> Result<Vec<tributary_sdk::DeadLetter>, tributary_sdk::Transient> {
        Ok(Vec::new())
    }
}

struct FailureModelRun {
    outcome: oneshot::Receiver<AckStatus>,
    taken: Arc<Mutex<Vec<i64>>>,
    stored: Arc<Mutex<Vec<(String, String)>>>,
    open: Arc<tokio::sync::Semaphore>,
    shutdown: CancellationToken,
    running: tokio::task::JoinHandle<tributary::runtime::RunReport>,
    metrics: Arc<tributary::admin::AdminState>,
}

/// src → db (scripted) and db.dead_letter → store, with one batch of rows 1..=4.
async fn failure_model_run(script: &[Step], retry: tributary::graph::SinkRetry) -> FailureModelRun {
    let (tx, rx) = oneshot::channel();
    let source = AckingSource { batches: vec![rows(&[1, 2, 3, 4])], outcomes: vec![tx], sent: Arc::new(Mutex::new(0)) };
    let taken = Arc::new(Mutex::new(Vec::new()));
    let stored = Arc::new(Mutex::new(Vec::new()));
    let open = Arc::new(tokio::sync::Semaphore::new(0));
    let db = ScriptedSink { script: script.iter().copied().collect(), taken: taken.clone() };
    let store = DeadLetterStore { stored: stored.clone(), open: open.clone() };
    let dead_letter_input = InputRef { name: "db.dead_letter".into(), component: "db".into(), output: "dead_letter".into() };
    let plan = Plan {
        sources: vec![PlannedSource {
            id: "src".into(),
            type_name: "test".into(),
            outputs: vec![OutputSpec::main(schema())],
            source: Box::new(source),
            buffer: Default::default(),
        }],
        transforms: vec![],
        sinks: vec![
            PlannedSink {
                id: "db".into(),
                type_name: "test".into(),
                inputs: vec![input("src")],
                sink: Box::new(db),
                retry,
                exactly_once: None,
            },
            PlannedSink {
                id: "store".into(),
                type_name: "test".into(),
                inputs: vec![dead_letter_input],
                sink: Box::new(store),
                retry: Default::default(),
                exactly_once: None,
            },
        ],
        outputs: Default::default(),
        decls: vec![
            decl("src", Kind::Source, "test", &[]),
            decl("db", Kind::Sink, "test", &["src"]),
            decl("store", Kind::Sink, "test", &["db.dead_letter"]),
        ],
        // db's dead letters are wired to the store; nothing else here makes any.
        dead_letter_dir: std::env::temp_dir().join("tributary-acks-unused"),
        tables: vec![],
    };
    let admin = Arc::new(tributary::admin::AdminState::new(std::time::Duration::from_millis(200)));
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(run(plan, Some(admin.clone()), shutdown.clone(), RunOptions::default()));
    FailureModelRun { outcome: rx.await.unwrap(), taken, stored, open, shutdown, running, metrics: admin }
}

fn quick_retry(max_elapsed: Option<&str>) -> tributary::graph::SinkRetry {
    let yaml = match max_elapsed {
        Some(d) => format!("{{initial: 20ms, max: 50ms, max_elapsed: {d}}}"),
        None => "{initial: 20ms, max: 50ms}".to_string(),
    };
    serde_yaml::from_str(&yaml).unwrap()
}

fn metric(text: &str, name: &str, component: &str) -> f64 {
    let prefix = format!("tributary_component_{name}{{component=\"{component}\"");
    text.lines().find(|l| l.starts_with(&prefix)).and_then(|l| l.rsplit(' ').next()).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_failure_is_retried_and_the_ack_waits_for_the_write() {
    let mut r = failure_model_run(&[Step::Down, Step::Down, Step::Down], quick_retry(None)).await;
    let status = tokio::time::timeout(std::time::Duration::from_secs(5), &mut r.outcome).await.expect("written after the retries").unwrap();
    assert_eq!(status, AckStatus::Delivered);
    assert_eq!(*r.taken.lock().unwrap(), [1, 2, 3, 4], "every row written once");
    r.shutdown.cancel();
    let report = r.running.await.unwrap();
    assert!(report.ok(), "{report:?}");
    let line = report.summary.iter().find(|l| l.starts_with("db ")).unwrap();
    assert_eq!(line, "db (test sink): 4 rows in, 4 written, 1 errors, 0 dead letters");
    let after = r.metrics.render_metrics();
    assert_eq!(metric(&after, "retries_total", "db"), 3.0);
    assert_eq!(metric(&after, "failing_seconds", "db"), 0.0);
    assert!(r.stored.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_rows_become_dead_letters_carrying_the_ack() {
    let mut r = failure_model_run(&[Step::Refuse(1)], quick_retry(None)).await;
    // Rows 2..4 are written, row 1 is refused: the ack waits for the dead letter to be stored.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(*r.taken.lock().unwrap(), [2, 3, 4]);
    assert_eq!(r.outcome.try_recv(), Err(oneshot::error::TryRecvError::Empty), "acked before the dead letter was stored");
    r.open.add_permits(1);
    let status = tokio::time::timeout(std::time::Duration::from_secs(5), &mut r.outcome).await.unwrap().unwrap();
    assert_eq!(status, AckStatus::Delivered);
    let stored = r.stored.lock().unwrap().clone();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].0, "value out of range");
    assert!(stored[0].1.ends_with("\"n\":1}"), "{:?}", stored[0]);
    r.shutdown.cancel();
    let report = r.running.await.unwrap();
    let line = report.summary.iter().find(|l| l.starts_with("db ")).unwrap();
    assert_eq!(line, "db (test sink): 4 rows in, 3 written, 1 errors, 1 dead letters");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn giving_up_is_opt_in_and_goes_through_the_dead_letters() {
    let mut r = failure_model_run(&[Step::Down; 1000], quick_retry(Some("300ms"))).await;
    // Failing for longer than the admin's threshold (200ms here): /health names the sink.
    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    assert_eq!(r.outcome.try_recv(), Err(oneshot::error::TryRecvError::Empty), "nothing acknowledged while failing");
    let metrics = r.metrics.render_metrics();
    assert!(metric(&metrics, "failing_seconds", "db") >= 0.2, "{metrics}");
    let (status, body) = r.metrics.health();
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!((status.as_u16(), body["status"].as_str(), body["failing"].clone()), (503, Some("degraded"), serde_json::json!(["db"])));
    assert_eq!(body["components"]["db"]["last_error"], "connection refused");
    r.open.add_permits(1);
    let status = tokio::time::timeout(std::time::Duration::from_secs(5), &mut r.outcome).await.unwrap().unwrap();
    assert_eq!(status, AckStatus::Delivered, "the rows are durable as dead letters");
    let stored = r.stored.lock().unwrap().clone();
    assert_eq!(stored.len(), 4, "{stored:?}");
    assert!(stored[0].0.starts_with("write still failing after retry.max_elapsed 300ms ("), "{}", stored[0].0);
    assert!(stored[0].0.ends_with(" attempts); last error: connection refused"), "{}", stored[0].0);
    assert!(stored.iter().all(|(reason, _)| reason == &stored[0].0));
    assert!(r.taken.lock().unwrap().is_empty());
    r.shutdown.cancel();
    r.running.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_refused_before_a_transient_failure_are_dead_lettered_once_and_the_rest_retried() {
    let mut r = failure_model_run(&[Step::RefuseThenDown(1)], quick_retry(None)).await;
    r.open.add_permits(1);
    let status = tokio::time::timeout(std::time::Duration::from_secs(5), &mut r.outcome).await.unwrap().unwrap();
    assert_eq!(status, AckStatus::Delivered);
    assert_eq!(*r.taken.lock().unwrap(), [2, 3, 4], "only the unwritten rows are passed again");
    let stored = r.stored.lock().unwrap().clone();
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert!(stored[0].1.ends_with("\"n\":1}"), "{:?}", stored[0]);
    r.shutdown.cancel();
    let report = r.running.await.unwrap();
    let line = report.summary.iter().find(|l| l.starts_with("db ")).unwrap();
    assert_eq!(line, "db (test sink): 4 rows in, 3 written, 2 errors, 1 dead letters");
}
