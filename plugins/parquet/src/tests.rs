use std::sync::Arc;

use datafusion::arrow::array::{AsArray, Int64Array, TimestampMicrosecondArray};
use datafusion::arrow::datatypes::{Field, Int64Type, Schema};
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use tributary_sdk::config::event_time_type;
use tributary_sdk::{ComponentMetrics, DeadLetters, Output};

use super::*;

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("ts", event_time_type(), true), Field::new("n", DataType::Int64, false)]))
}

fn batch(ts: &[Option<&str>], n: &[i64]) -> RecordBatch {
    let ts: TimestampMicrosecondArray = ts
        .iter()
        .map(|t| t.map(|t| chrono::DateTime::parse_from_rfc3339(t).unwrap().timestamp_micros()))
        .collect::<TimestampMicrosecondArray>()
        .with_timezone("UTC");
    RecordBatch::try_new(schema(), vec![Arc::new(ts), Arc::new(Int64Array::from(n.to_vec()))]).unwrap()
}

fn ctx() -> SinkContext {
    let m = Arc::new(ComponentMetrics::default());
    SinkContext { id: "pq".into(), dead_letters: DeadLetters::new("pq", Output::new(vec![], m.clone(), false), m.clone()), metrics: m }
}

fn build(dir: &Path, extra: &str) -> Box<dyn Sink> {
    let cfg = ComponentConfig::from_yaml("pq", &format!("{{path: {}, {extra}}}", dir.display()));
    ParquetSinkPlugin.build(&cfg, &[("src".into(), schema())]).map_err(|e| e.to_string()).unwrap()
}

/// Every (relative path, values of `n`) under `dir`, sorted; hidden temp files included as names.
fn files(dir: &Path) -> Vec<(String, Vec<i64>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
            let mut values = Vec::new();
            if rel.ends_with(".parquet") {
                let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(&p).unwrap()).unwrap().build().unwrap();
                for b in reader {
                    values.extend(b.unwrap().column(1).as_primitive::<Int64Type>().values().iter().copied());
                }
            }
            out.push((rel, values));
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn partitions_by_utc_date_and_hides_files_until_flushed() {
    let dir = tempfile::tempdir().unwrap();
    let mut sink = build(dir.path(), "");
    let ctx = ctx();
    sink.start(&ctx).await.unwrap();
    let b = batch(&[Some("2026-11-21T23:59:59Z"), Some("2026-11-22T00:00:00Z"), Some("2026-11-21T12:00:00+02:00"), None], &[1, 2, 3, 4]);
    assert_eq!(sink.write(b, &ctx).await.unwrap(), Durability::Buffered);
    let before = files(dir.path());
    assert_eq!(before.len(), 3);
    assert!(before.iter().all(|(name, _)| name.rsplit('/').next().unwrap().starts_with('.') && name.ends_with(".tmp")), "{before:?}");

    sink.flush(&ctx).await.unwrap();
    let after = files(dir.path());
    let by_dir: Vec<(&str, &Vec<i64>)> = after.iter().map(|(n, v)| (n.split('/').next().unwrap(), v)).collect();
    assert_eq!(by_dir, [("date=2026-11-21", &vec![1, 3]), ("date=2026-11-22", &vec![2]), ("date=unknown", &vec![4])]);
    assert!(after.iter().all(|(n, _)| n.ends_with(".parquet") && !n.contains("/.")));
}

#[tokio::test]
async fn rotates_by_rows_and_reports_durability() {
    let dir = tempfile::tempdir().unwrap();
    let mut sink = build(dir.path(), "partition_by_date: false, max_rows: 3");
    let ctx = ctx();
    sink.start(&ctx).await.unwrap();
    let t = Some("2026-11-22T10:00:00Z");
    assert_eq!(sink.write(batch(&[t, t], &[1, 2]), &ctx).await.unwrap(), Durability::Buffered);
    assert_eq!(sink.write(batch(&[t, t], &[3, 4]), &ctx).await.unwrap(), Durability::Durable, "4 rows ≥ max_rows closes the file");
    assert_eq!(sink.write(batch(&[t], &[5]), &ctx).await.unwrap(), Durability::Buffered);
    sink.flush(&ctx).await.unwrap();
    let got: Vec<Vec<i64>> = files(dir.path()).into_iter().map(|(_, v)| v).collect();
    assert_eq!(got, [vec![1, 2, 3, 4], vec![5]]);
}

#[tokio::test]
async fn dropping_an_unflushed_sink_leaves_no_temp_files() {
    let dir = tempfile::tempdir().unwrap();
    let mut sink = build(dir.path(), "");
    let ctx = ctx();
    sink.start(&ctx).await.unwrap();
    sink.write(batch(&[Some("2026-11-22T10:00:00Z")], &[1]), &ctx).await.unwrap();
    drop(sink);
    assert!(files(dir.path()).is_empty());
}

#[test]
fn a_missing_time_column_is_a_config_error_naming_the_columns() {
    let cfg = ComponentConfig::from_yaml("pq", "{path: /tmp/x, time_column: event_time}");
    let err = ParquetSinkPlugin.build(&cfg, &[("src".into(), schema())]).err().unwrap();
    assert_eq!(
        err.to_string(),
        "time_column: column `event_time` is not in the input (columns: ts, n); set `time_column`, or `partition_by_date: false`"
    );
}
