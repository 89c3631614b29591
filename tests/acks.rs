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
    let sql = SqlTransform::plan("SELECT ts, n FROM src WHERE n > 3", &[("src".into(), schema())]).await.unwrap();
    let sink_cfg = ComponentConfig::from_yaml("lake", &format!("{{path: {}, max_age: 1h}}", dir.path().display()));
    let sink =
        tributary_parquet::ParquetSinkPlugin.build(&sink_cfg, &[("big".into(), sql.output_schema())]).map_err(|e| e.to_string()).unwrap();
    let plan = Plan {
        sources: vec![PlannedSource {
            id: "src".into(),
            type_name: "test".into(),
            outputs: vec![OutputSpec::main(schema())],
            source: Box::new(source),
        }],
        transforms: vec![PlannedTransform { id: "big".into(), inputs: vec![input("src")], sql, window: None }],
        sinks: vec![PlannedSink { id: "lake".into(), type_name: "parquet".into(), inputs: vec![input("big")], sink }],
        outputs: Default::default(),
        decls: vec![
            decl("src", Kind::Source, "test", &[]),
            decl("big", Kind::Transform, "sql", &["src"]),
            decl("lake", Kind::Sink, "parquet", &["big"]),
        ],
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
