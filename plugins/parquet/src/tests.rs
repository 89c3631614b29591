use std::sync::Arc;

use datafusion::arrow::array::{AsArray, Int64Array, TimestampMicrosecondArray};
use datafusion::arrow::datatypes::{Field, Int64Type, Schema};
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use tributary_sdk::config::event_time_type;

use super::*;

pub(super) fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("ts", event_time_type(), true), Field::new("n", DataType::Int64, false)]))
}

pub(super) fn batch(ts: &[Option<&str>], n: &[i64]) -> RecordBatch {
    let ts: TimestampMicrosecondArray = ts
        .iter()
        .map(|t| t.map(|t| chrono::DateTime::parse_from_rfc3339(t).unwrap().timestamp_micros()))
        .collect::<TimestampMicrosecondArray>()
        .with_timezone("UTC");
    RecordBatch::try_new(schema(), vec![Arc::new(ts), Arc::new(Int64Array::from(n.to_vec()))]).unwrap()
}

fn ctx() -> SinkContext {
    tributary_testkit::sink_context("pq")
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
    assert_eq!(sink.write(b, &ctx).await.unwrap(), Written::buffered());
    assert!(files(dir.path()).is_empty(), "nothing is visible before the flush");

    assert_eq!(sink.flush(&ctx).await.unwrap(), vec![]);
    let after = files(dir.path());
    let by_dir: Vec<(&str, &Vec<i64>)> = after.iter().map(|(n, v)| (n.split('/').next().unwrap(), v)).collect();
    assert_eq!(by_dir, [("date=2026-11-21", &vec![1, 3]), ("date=2026-11-22", &vec![2]), ("date=unknown", &vec![4])]);
    assert!(after.iter().all(|(n, _)| n.ends_with(".parquet") && !n.contains("/.")));
}

#[tokio::test]
async fn a_full_partition_asks_for_a_flush() {
    let dir = tempfile::tempdir().unwrap();
    let mut sink = build(dir.path(), "partition_by_date: false, max_rows: 3");
    let ctx = ctx();
    sink.start(&ctx).await.unwrap();
    let t = Some("2026-11-22T10:00:00Z");
    assert_eq!(sink.write(batch(&[t, t], &[1, 2]), &ctx).await.unwrap(), Written::buffered());
    let full = sink.write(batch(&[t, t], &[3, 4]), &ctx).await.unwrap();
    assert_eq!(full.durability, Durability::BufferFull, "4 rows ≥ max_rows");
    assert_eq!(sink.flush(&ctx).await.unwrap(), vec![]);
    assert_eq!(sink.write(batch(&[t], &[5]), &ctx).await.unwrap(), Written::buffered());
    sink.flush(&ctx).await.unwrap();
    let got: Vec<Vec<i64>> = files(dir.path()).into_iter().map(|(_, v)| v).collect();
    assert_eq!(got, [vec![1, 2, 3, 4], vec![5]]);
}

#[tokio::test]
async fn a_failed_flush_leaves_no_file_and_keeps_the_rows_for_the_retry() {
    let dir = tempfile::tempdir().unwrap();
    let mut sink = build(dir.path(), "");
    let ctx = ctx();
    sink.start(&ctx).await.unwrap();
    sink.write(batch(&[Some("2026-11-21T10:00:00Z"), Some("2026-11-22T10:00:00Z")], &[1, 2]), &ctx).await.unwrap();
    // The second day's folder cannot be created (a file is in its way): the first day's file is
    // written, the second fails without leaving anything.
    std::fs::write(dir.path().join("date=2026-11-22"), b"in the way").unwrap();
    let err = sink.flush(&ctx).await.unwrap_err();
    assert!(err.to_string().contains("date=2026-11-22"), "{err}");
    let after_failure: Vec<(String, Vec<i64>)> =
        files(dir.path()).into_iter().map(|(n, v)| (n.split('/').next().unwrap().to_string(), v)).collect();
    assert_eq!(
        after_failure,
        [("date=2026-11-21".to_string(), vec![1]), ("date=2026-11-22".to_string(), vec![])],
        "the first day's file and the blocker; no temporary file"
    );
    std::fs::remove_file(dir.path().join("date=2026-11-22")).unwrap();
    assert_eq!(sink.flush(&ctx).await.unwrap(), vec![], "the retry writes the rest");
    let got: Vec<(String, Vec<i64>)> = files(dir.path()).into_iter().map(|(n, v)| (n.split('/').next().unwrap().to_string(), v)).collect();
    assert_eq!(got, [("date=2026-11-21".to_string(), vec![1]), ("date=2026-11-22".to_string(), vec![2])], "each row once");
    // Given up on: the buffer is handed back whole and emptied.
    sink.write(batch(&[Some("2026-11-23T10:00:00Z")], &[3]), &ctx).await.unwrap();
    let taken = sink.take_buffered();
    assert_eq!(taken.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
    assert_eq!(sink.flush(&ctx).await.unwrap(), vec![]);
    assert_eq!(files(dir.path()).len(), 2);
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

#[tokio::test]
async fn stale_temporary_files_are_removed_at_start_and_nothing_else_is() {
    let dir = tempfile::tempdir().unwrap();
    let day = dir.path().join("date=2026-01-01");
    std::fs::create_dir_all(&day).unwrap();
    std::fs::write(day.join(".part-20260101T000000.000-000001-0000abcd.parquet.tmp"), b"half a file").unwrap();
    std::fs::write(dir.path().join(".part-x.parquet.tmp"), b"half a file").unwrap();
    std::fs::write(day.join("notes.txt"), b"a user's file").unwrap();
    std::fs::write(day.join(".other-x.parquet.tmp"), b"another sink's prefix").unwrap();
    let mut sink = build(dir.path(), "max_age: 1h");
    sink.start(&ctx()).await.unwrap();
    assert_eq!(
        files(dir.path()).into_iter().map(|(name, _)| name).collect::<Vec<_>>(),
        vec!["date=2026-01-01/.other-x.parquet.tmp", "date=2026-01-01/notes.txt"]
    );
}

/// A hostile batch: every row on its own date. Split in one pass, written as one file per date
/// with one file open at a time, every row exactly once, nothing dead-lettered.
#[tokio::test]
async fn a_batch_over_thousands_of_dates_writes_every_row_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut sink = build(dir.path(), "max_age: 1h, max_partitions: 100");
    sink.start(&ctx()).await.unwrap();
    let day_us = 86_400_000_000i64;
    let ts = TimestampMicrosecondArray::from_iter_values((0..1500).map(|d| d * day_us + 1)).with_timezone("UTC");
    let rows = RecordBatch::try_new(schema(), vec![Arc::new(ts), Arc::new(Int64Array::from_iter_values(0..1500))]).unwrap();
    let written = sink.write(rows, &ctx()).await.unwrap();
    assert_eq!(written.durability, Durability::BufferFull, "over max_partitions: the engine is asked to flush");
    assert!(sink.flush(&ctx()).await.unwrap().is_empty());
    let files = files(dir.path());
    assert_eq!(files.len(), 1500);
    assert!(files.iter().all(|(name, _)| !name.ends_with(".tmp")));
    let mut all: Vec<i64> = files.iter().flat_map(|(_, v)| v.clone()).collect();
    all.sort();
    assert_eq!(all, (0..1500).collect::<Vec<_>>());
    assert_eq!(files[0].0.split('/').next(), Some("date=1970-01-01"));
    assert!(sink.take_buffered().is_empty());
}

/// The engine gives up on a flush that wrote part of the buffer: it dead-letters only what
/// `take_buffered` hands back, which is the unwritten partitions, so no row is both written and
/// dead-lettered.
#[tokio::test]
async fn a_partly_written_flush_hands_back_only_the_unwritten_rows() {
    let dir = tempfile::tempdir().unwrap();
    let mut sink = build(dir.path(), "");
    let ctx = ctx();
    sink.start(&ctx).await.unwrap();
    sink.write(batch(&[Some("2026-11-21T10:00:00Z"), Some("2026-11-22T10:00:00Z")], &[1, 2]), &ctx).await.unwrap();
    std::fs::write(dir.path().join("date=2026-11-22"), b"in the way").unwrap();
    sink.flush(&ctx).await.unwrap_err();
    let taken = sink.take_buffered();
    let values: Vec<i64> = taken.iter().flat_map(|b| b.column(1).as_primitive::<Int64Type>().values().to_vec()).collect();
    assert_eq!(values, vec![2], "row 1 is in date=2026-11-21's file; only row 2 may become a dead letter");
    let left: Vec<(String, Vec<i64>)> = files(dir.path()).into_iter().map(|(n, v)| (n.split('-').next().unwrap().to_string(), v)).collect();
    let left: Vec<(&str, &[i64])> = left.iter().map(|(n, v)| (n.as_str(), v.as_slice())).collect();
    assert_eq!(left, [(".part", &[][..]), ("date=2026", &[1][..]), ("date=2026", &[][..])], "the flush's marker, its file, the blocker");
}

fn at(stream: &str, seq: u64) -> tributary_sdk::Position {
    tributary_sdk::Position { stream: stream.into(), epoch: 7, seq }
}

/// Writes `n` values on `days` (one row a day), as rows reaching `position`.
async fn write_at(sink: &mut Box<dyn Sink>, days: &[&str], n: &[i64], position: tributary_sdk::Position) {
    sink.positions().unwrap().reached(&position);
    let ts: Vec<Option<&str>> = days.iter().map(|d| Some(*d)).collect();
    sink.write(batch(&ts, n), &ctx()).await.unwrap();
}

/// What a sink started on `dir` says it has written (exactly once asks this after each start).
async fn restarted(dir: &Path) -> (Box<dyn Sink>, tributary_sdk::Positions) {
    let mut sink = build(dir, "max_age: 1h");
    sink.start(&ctx()).await.unwrap();
    let written = sink.positions().unwrap().committed(&ctx(), &["a".into(), "b".into()]).await.unwrap();
    (sink, written)
}

#[tokio::test]
async fn plain_files_hold_the_positions_of_every_stream_written_so_far() {
    let dir = tempfile::tempdir().unwrap();
    let (mut sink, written) = restarted(dir.path()).await;
    assert!(written.is_empty(), "an empty folder: nothing written");
    write_at(&mut sink, &["2026-11-21T10:00:00Z"], &[1], at("a", 4)).await;
    write_at(&mut sink, &["2026-11-21T11:00:00Z"], &[2], at("b", 9)).await;
    sink.flush(&ctx()).await.unwrap();
    write_at(&mut sink, &["2026-11-22T10:00:00Z"], &[3], at("a", 6)).await;
    sink.flush(&ctx()).await.unwrap();
    assert_eq!(sink.positions().unwrap().committed(&ctx(), &[]).await.unwrap().to_string(), "a #6 (epoch 7), b #9 (epoch 7)");

    // The newest flush wrote only stream a, yet says where b stands too.
    let (_, written) = restarted(dir.path()).await;
    assert_eq!(written.to_string(), "a #6 (epoch 7), b #9 (epoch 7)");
}

#[tokio::test]
async fn a_flush_a_crash_interrupted_is_removed_and_the_one_before_it_counts() {
    let dir = tempfile::tempdir().unwrap();
    let (mut sink, _) = restarted(dir.path()).await;
    write_at(&mut sink, &["2026-11-20T10:00:00Z"], &[1], at("a", 1)).await;
    sink.flush(&ctx()).await.unwrap();
    // Three days in one flush; the third day's folder is blocked, so two files are written.
    write_at(&mut sink, &["2026-11-21T10:00:00Z", "2026-11-22T10:00:00Z", "2026-11-23T10:00:00Z"], &[2, 3, 4], at("a", 2)).await;
    std::fs::write(dir.path().join("date=2026-11-23"), b"in the way").unwrap();
    sink.flush(&ctx()).await.unwrap_err();
    drop(sink); // the crash
    std::fs::remove_file(dir.path().join("date=2026-11-23")).unwrap();
    assert_eq!(files(dir.path()).len(), 3, "day 20's file and two of the interrupted flush's");

    let (_, written) = restarted(dir.path()).await;
    assert_eq!(written.to_string(), "a #1 (epoch 7)", "the interrupted flush's position is not taken");
    let days: Vec<(String, Vec<i64>)> = files(dir.path()).into_iter().map(|(n, v)| (n.split('/').next().unwrap().to_string(), v)).collect();
    assert_eq!(days, [("date=2026-11-20".to_string(), vec![1])], "its files are gone: their rows come again");
}

#[tokio::test]
async fn a_flush_given_up_on_keeps_its_files() {
    let dir = tempfile::tempdir().unwrap();
    let (mut sink, _) = restarted(dir.path()).await;
    write_at(&mut sink, &["2026-11-21T10:00:00Z", "2026-11-22T10:00:00Z"], &[1, 2], at("a", 5)).await;
    std::fs::write(dir.path().join("date=2026-11-22"), b"in the way").unwrap();
    sink.flush(&ctx()).await.unwrap_err();
    assert_eq!(sink.take_buffered().len(), 1, "the engine gives up: row 2 becomes a dead letter, row 1 stays written");
    drop(sink);
    std::fs::remove_file(dir.path().join("date=2026-11-22")).unwrap();

    let (_, written) = restarted(dir.path()).await;
    assert!(written.is_empty(), "no complete flush: {written}");
    let values: Vec<i64> = files(dir.path()).into_iter().flat_map(|(_, v)| v).collect();
    assert_eq!(values, [1], "row 1's file stays: its row was acknowledged");
}
