//! `format: delta`: on local disk, read back by this crate and by a second implementation (the
//! `deltalake` package from PyPI), and on a real S3 protocol server (moto) with a commit whose
//! answer is lost.

use std::sync::Arc;

use datafusion::arrow::array::AsArray;
use datafusion::arrow::datatypes::{Field, Int64Type, Schema};
use tributary_sdk::config::event_time_type;
use tributary_sdk::Position;
use tributary_testkit::s3::{MotoServer, S3Proxy, ACCESS_KEY, REGION, SECRET_KEY};

use super::tests::{batch, schema};
use super::*;

fn delta_sink(yaml: &str) -> Box<dyn Sink> {
    ParquetSinkPlugin.build(&ComponentConfig::from_yaml("lake", yaml), &[("src".into(), schema())]).map_err(|e| e.to_string()).unwrap()
}

fn at(stream: &str, epoch: u64, seq: u64) -> Position {
    Position { stream: stream.into(), epoch, seq }
}

/// The values of `n` in the table's files (as its log lists them), sorted, and the table's version.
async fn table_values(location: &store::ObjectLocation) -> (Vec<i64>, u64) {
    let url = url::Url::parse(&location.url()).unwrap();
    let (_, state) = delta::load(location, &url).await.unwrap().expect("a Delta table");
    let mut values = Vec::new();
    for (path, _) in delta::table_files(location).await.unwrap().unwrap() {
        let bytes = location.store.get(&path).await.unwrap().bytes().await.unwrap();
        for b in ParquetRecordBatchReaderBuilder::try_new(bytes).unwrap().build().unwrap() {
            values.extend(b.unwrap().column(1).as_primitive::<Int64Type>().values().iter().copied());
        }
    }
    values.sort();
    (values, state.version())
}

async fn committed(sink: &mut Box<dyn Sink>, streams: &[&str]) -> String {
    let streams: Vec<Arc<str>> = streams.iter().map(|s| Arc::from(*s)).collect();
    let ctx = tributary_testkit::sink_context("lake");
    sink.positions().expect("a Delta table stores positions").committed(&ctx, &streams).await.unwrap().to_string()
}

#[tokio::test]
async fn a_flush_is_one_delta_commit_holding_its_rows_and_their_positions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scores");
    let yaml = format!("{{path: '{}', format: delta}}", path.display());
    let location = store::ObjectLocation::local(&path).unwrap();
    let ctx = tributary_testkit::sink_context("lake");

    let mut sink = delta_sink(&yaml);
    sink.start(&ctx).await.unwrap();
    assert_eq!(committed(&mut sink, &["http"]).await, "none", "a new table holds no positions");
    sink.positions().unwrap().reached(&at("http", 7, 3));
    let rows = batch(&[Some("2026-11-21T23:59:59Z"), Some("2026-11-22T00:00:00Z"), None], &[1, 2, 3]);
    assert_eq!(sink.write(rows, &ctx).await.unwrap(), Written::buffered());
    assert_eq!(table_values(&location).await, (vec![], 0), "made at start; nothing visible before the flush");

    assert_eq!(sink.flush(&ctx).await.unwrap(), vec![]);
    assert_eq!(table_values(&location).await, (vec![1, 2, 3], 1), "three dates' files in one commit");
    assert_eq!(sink.flush(&ctx).await.unwrap(), vec![]);
    assert_eq!(table_values(&location).await.1, 1, "an empty buffer commits nothing");

    // Positions of a batch with no rows (all filtered out upstream) are committed on their own.
    sink.positions().unwrap().reached(&at("http", 7, 4));
    sink.write(batch(&[], &[]), &ctx).await.unwrap();
    sink.flush(&ctx).await.unwrap();
    assert_eq!(table_values(&location).await, (vec![1, 2, 3], 2));

    // The next run reads them back, per stream.
    let mut next = delta_sink(&yaml);
    next.start(&ctx).await.unwrap();
    assert_eq!(committed(&mut next, &["http", "badges"]).await, "http #4 (epoch 7)");

    // A second implementation reads the same rows: the `deltalake` package (delta-rs's Python).
    let script = "t = deltalake.DeltaTable(sys.argv[1])\nprint(t.version(), sorted(t.to_pyarrow_table().column('n').to_pylist()))";
    assert_eq!(tributary_testkit::read_delta_with_python(&path, script).trim(), "2 [1, 2, 3]");
}

#[tokio::test]
async fn a_delta_table_with_other_columns_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t");
    let ctx = tributary_testkit::sink_context("lake");
    let mut sink = delta_sink(&format!("{{path: '{}', format: delta}}", path.display()));
    sink.start(&ctx).await.unwrap();
    let other = Arc::new(Schema::new(vec![Field::new("ts", event_time_type(), true), Field::new("m", DataType::Utf8, true)]));
    let cfg = ComponentConfig::from_yaml("lake", &format!("{{path: '{}', format: delta}}", path.display()));
    let mut sink = ParquetSinkPlugin.build(&cfg, &[("src".into(), other)]).map_err(|e| e.to_string()).unwrap();
    let err = format!("{:#}", sink.start(&ctx).await.unwrap_err());
    assert_eq!(ctx.metrics.retries.get(), 0, "other columns are not retried");
    assert_eq!(
        err,
        format!(
            "the Delta table {}/ has the columns ts timestamp, n long, but this sink writes ts timestamp, m string",
            url::Url::from_directory_path(std::path::absolute(&path).unwrap()).unwrap().as_str().trim_end_matches('/')
        )
    );
}

#[test]
fn columns_without_a_delta_type_are_refused_at_build() {
    let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::UInt64, false)]));
    let cfg = ComponentConfig::from_yaml("lake", "{path: /tmp/t, format: delta, partition_by_date: false}");
    let err = ParquetSinkPlugin.build(&cfg, &[("src".into(), schema)]).err().expect("refused");
    assert_eq!(err.to_string(), "format: column `n` is UInt64, which Delta has no type for: cast it to a signed integer in SQL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_s3_a_commit_whose_answer_was_lost_is_not_made_twice() {
    let moto = MotoServer::start().await;
    moto.create_bucket("lake").await;
    let proxy = S3Proxy::start(&moto.endpoint()).await;
    let yaml = format!(
        "{{path: 's3://lake/scores', format: delta, storage: {{endpoint: '{}', region: {REGION}, access_key_id: {ACCESS_KEY}, secret_access_key: {SECRET_KEY}}}}}",
        proxy.endpoint()
    );
    let ctx = tributary_testkit::sink_context("lake");
    let mut sink = delta_sink(&yaml);
    sink.start(&ctx).await.unwrap();
    sink.positions().unwrap().reached(&at("http", 1, 2));
    sink.write(batch(&[None, None], &[5, 6]), &ctx).await.unwrap();

    // The commit reaches the store, and its answer is lost: the flush cannot know it happened.
    proxy.lose_answers_to_puts(Some("_delta_log/00000000000000000001.json"));
    let failed = format!("{:#}", sink.flush(&ctx).await.unwrap_err());
    assert!(failed.contains("committing to the Delta table s3://lake/scores/"), "{failed}");
    assert!(proxy.lost() >= 1);
    proxy.lose_answers_to_puts(None);
    // The engine's retry finds the commit in the log and does not make it again.
    assert_eq!(sink.flush(&ctx).await.unwrap(), vec![]);

    let location = super::s3_tests::store(&moto.endpoint(), "lake").child("scores");
    assert_eq!(table_values(&location).await, (vec![5, 6], 1), "one commit, each row once");
    let mut next = delta_sink(&yaml);
    next.start(&ctx).await.unwrap();
    assert_eq!(committed(&mut next, &["http"]).await, "http #2 (epoch 1)");
}
