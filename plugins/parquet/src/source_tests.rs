//! The `parquet` source reading back what the sink wrote: on disk and in a moto bucket.

use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{AsArray, Int64Array, TimestampMicrosecondArray};
use datafusion::arrow::datatypes::{Field, Int64Type, Schema, TimestampMicrosecondType};
use tributary_sdk::config::event_time_type;
use tributary_sdk::SourcePlugin;
use tributary_testkit::s3::{MotoServer, ACCESS_KEY, REGION, SECRET_KEY};

use super::*;

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("ts", event_time_type(), true), Field::new("n", DataType::Int64, false)]))
}

fn rows(rows: &[(&str, i64)]) -> RecordBatch {
    let ts: TimestampMicrosecondArray =
        rows.iter().map(|(t, _)| Some(chrono::DateTime::parse_from_rfc3339(t).unwrap().timestamp_micros())).collect();
    RecordBatch::try_new(
        schema(),
        vec![Arc::new(ts.with_timezone("UTC")), Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1)))],
    )
    .unwrap()
}

/// Each slice becomes its own files (one flush each), so a date's rows are spread over files.
async fn write_lake(path: &str, storage: &str, flushes: &[&[(&str, i64)]]) {
    let cfg = ComponentConfig::from_yaml("lake", &format!("{{path: '{path}', {storage}}}"));
    let mut sink = ParquetSinkPlugin.build(&cfg, &[("src".into(), schema())]).map_err(|e| e.to_string()).unwrap();
    let ctx = tributary_testkit::sink_context("lake");
    sink.start(&ctx).await.unwrap();
    for batch in flushes {
        sink.write(rows(batch), &ctx).await.unwrap();
        sink.flush(&ctx).await.unwrap();
    }
}

const FIRST: &[(&str, i64)] = &[("2026-11-21T10:00:05Z", 1), ("2026-11-21T10:00:01Z", 2), ("2026-11-22T00:00:01Z", 3)];
const SECOND: &[(&str, i64)] = &[("2026-11-21T10:00:03Z", 4), ("2026-11-20T23:59:59Z", 5), ("2026-11-22T08:00:00Z", 6)];

/// Starts the source; the rows it sends, as (RFC 3339, n), until it returns (or `until` rows).
async fn read(yaml: &str, until: usize) -> (Vec<(String, i64)>, anyhow::Result<()>) {
    let built = ParquetSourcePlugin.build(&ComponentConfig::from_yaml("replay", yaml)).map_err(|e| e.to_string()).unwrap();
    let (ctx, mut harness) = tributary_testkit::source_context("replay", &[""], 16);
    let task = tokio::spawn(built.source.run(ctx));
    let mut out = Vec::new();
    let mut main = harness.outputs.remove("").unwrap();
    while out.len() < until {
        let Some(delivery) = main.recv().await else { break };
        let b = delivery.batch.data;
        let ts = b.column_by_name("ts").unwrap().as_primitive::<TimestampMicrosecondType>();
        let n = b.column_by_name("n").unwrap().as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            let t = chrono::DateTime::from_timestamp_micros(ts.value(i)).unwrap();
            out.push((t.format("%Y-%m-%dT%H:%M:%SZ").to_string(), n.value(i)));
        }
    }
    harness.shutdown.cancel();
    drop(main);
    (out, task.await.unwrap())
}

fn expected(ns: &[i64]) -> Vec<(String, i64)> {
    let all: Vec<(&str, i64)> = FIRST.iter().chain(SECOND).copied().collect();
    ns.iter().map(|n| all.iter().find(|r| r.1 == *n).map(|r| (r.0.to_string(), r.1)).unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_the_range_in_event_time_order_across_files_and_dates() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("scores");
    write_lake(lake.to_str().unwrap(), "", &[FIRST, SECOND]).await;
    let yaml = format!(
        "{{path: '{}', schema: {{ts: timestamp, n: int}}, from: '2026-11-20T23:59:59Z', to: '2026-11-22T08:00:00Z'}}",
        lake.display()
    );
    let (got, result) = read(&yaml, usize::MAX).await;
    result.unwrap();
    // 5 (the 20th), then the 21st's two files merged by time (2, 4, 1), then the 22nd before 08:00 (3).
    assert_eq!(got, expected(&[5, 2, 4, 1, 3]));

    let (all, _) = read(&format!("{{path: '{}', schema: {{n: int, ts: timestamp}}}}", lake.display()), usize::MAX).await;
    assert_eq!(all.len(), 6, "no range: every row");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_column_the_files_lack_stops_the_source_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("scores");
    write_lake(lake.to_str().unwrap(), "partition_by_date: false", &[FIRST]).await;
    let yaml = format!("{{path: '{}', schema: {{ts: timestamp, n: int, site: string}}}}", lake.display());
    let (got, result) = read(&yaml, usize::MAX).await;
    assert!(got.is_empty());
    let message = format!("{:#}", result.unwrap_err());
    assert!(message.starts_with("column `site` (declared in `schema`) is not in file:///"), "{message}");

    let bad = |yaml: &str| ParquetSourcePlugin.build(&ComponentConfig::from_yaml("replay", yaml)).err().unwrap().to_string();
    assert_eq!(bad("{path: x, schema: {n: int}}"), "time_column: column `ts` is not in `schema`");
    assert_eq!(
        bad("{path: x, schema: {ts: timestamp}, from: yesterday}"),
        "from: `yesterday` is not an RFC 3339 time (premature end of input)"
    );
    assert_eq!(
        bad("{path: x, schema: {ts: timestamp}, from: '2026-11-22T00:00:00Z', to: '2026-11-21T00:00:00Z'}"),
        "to: must be after `from`"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_reads_each_new_file_once() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("scores");
    write_lake(lake.to_str().unwrap(), "", &[FIRST]).await;
    let yaml = format!("{{path: '{}', schema: {{ts: timestamp, n: int}}, mode: follow, poll_interval: 100ms}}", lake.display());
    let reader = tokio::spawn(async move { read(&yaml, 6).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    write_lake(lake.to_str().unwrap(), "", &[SECOND]).await;
    let (got, result) = tokio::time::timeout(Duration::from_secs(30), reader).await.unwrap().unwrap();
    result.unwrap();
    // The first files in time order, then the new ones in theirs; nothing read twice.
    assert_eq!(got, expected(&[2, 1, 3, 5, 4, 6]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_a_lake_in_a_bucket() {
    let moto = MotoServer::start().await;
    moto.create_bucket("lake").await;
    let storage = format!(
        "storage: {{endpoint: '{}', region: {REGION}, access_key_id: {ACCESS_KEY}, secret_access_key: {SECRET_KEY}}}",
        moto.endpoint()
    );
    write_lake("s3://lake/scores", &storage, &[FIRST, SECOND]).await;
    let yaml = format!("{{path: 's3://lake/scores', {storage}, schema: {{ts: timestamp, n: int}}, to: '2026-11-22T00:00:00Z'}}");
    let (got, result) = read(&yaml, usize::MAX).await;
    result.unwrap();
    assert_eq!(got, expected(&[5, 2, 4, 1]));
}

/// Reads as on an exactly-once path, with sinks that answer `answers` (one `Positions` a sink):
/// each row's `n` with its batch's position, and the rows skipped as written by every sink.
async fn read_exactly_once(yaml: &str, answers: Vec<tributary_sdk::Positions>) -> (Vec<(i64, tributary_sdk::Position)>, u64) {
    let built = ParquetSourcePlugin.build(&ComponentConfig::from_yaml("replay", yaml)).map_err(|e| e.to_string()).unwrap();
    let (ctx, mut harness) = tributary_testkit::source_context("replay", &[""], 16);
    let mut sinks = Vec::new();
    for answer in answers {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<tributary_sdk::PositionQuery>();
        sinks.push(tx);
        tokio::spawn(async move {
            while let Some(query) = rx.recv().await {
                let _ = query.answer.send(Ok(answer.clone()));
            }
        });
    }
    let task = tokio::spawn(built.source.run(ctx.with_sink_positions(tributary_sdk::SinkPositions::new(sinks))));
    let mut main = harness.outputs.remove("").unwrap();
    let mut out = Vec::new();
    while let Some(delivery) = main.recv().await {
        let position = delivery.batch.position.clone().expect("every batch has a position");
        let n = delivery.batch.data.column_by_name("n").unwrap().as_primitive::<Int64Type>().values().to_vec();
        out.extend(n.into_iter().map(|n| (n, position.clone())));
    }
    task.await.unwrap().unwrap();
    (out, harness.metrics.replay_skipped.get())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_each_file_is_a_stream_read_in_stored_order_and_what_the_sinks_wrote_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("scores");
    write_lake(lake.to_str().unwrap(), "", &[FIRST, SECOND]).await;
    let yaml = format!("{{path: '{}', schema: {{ts: timestamp, n: int}}}}", lake.display());

    let (rows, skipped) = read_exactly_once(&yaml, vec![Default::default()]).await;
    // File after file, each in stored order: the 20th (5); the 21st's first file (1, 2) and
    // second (4); the 22nd's (3), (6).
    let shown: Vec<(i64, String, u64)> = rows.iter().map(|(n, p)| (*n, p.stream.split('/').nth(1).unwrap().to_string(), p.seq)).collect();
    let day = |d: &str| format!("date=2026-11-{d}");
    assert_eq!(shown, [(5, day("20"), 1), (1, day("21"), 2), (2, day("21"), 2), (4, day("21"), 1), (3, day("22"), 1), (6, day("22"), 1)]);
    assert_eq!(skipped, 0);
    assert!(rows.iter().all(|(_, p)| p.stream.starts_with("replay/date=2026-11-2") && p.stream.ends_with(".parquet")));

    // One sink wrote the 20th's file and the first row of the 21st's first file; the other those
    // two files whole and the 21st's second file.
    let (of_20, first_of_21, second_of_21) = (rows[0].1.clone(), rows[1].1.clone(), rows[3].1.clone());
    let x: tributary_sdk::Positions = [of_20.clone(), tributary_sdk::Position { seq: 1, ..first_of_21.clone() }].into_iter().collect();
    let y: tributary_sdk::Positions = [of_20, first_of_21, second_of_21].into_iter().collect();
    let (rows, skipped) = read_exactly_once(&yaml, vec![x, y]).await;
    let sent: Vec<(i64, u64)> = rows.iter().map(|(n, p)| (*n, p.seq)).collect();
    // 5 and 1 are skipped (both wrote them); 2 ends at the second sink's position; 4 goes to the
    // sink that lacks it (the other drops it); 3 and 6 are new to both.
    assert_eq!(sent, [(2, 2), (4, 1), (3, 1), (6, 1)]);
    assert_eq!(skipped, 2);
}
