//! The sink against a real S3 protocol server (moto), directly or through a proxy that throttles
//! and records requests.

use std::sync::Arc;

use datafusion::arrow::array::{AsArray, Int64Array, TimestampMicrosecondArray};
use datafusion::arrow::datatypes::{Field, Int64Type, Schema};
use object_store::ObjectStore;
use tributary_sdk::config::event_time_type;
use tributary_testkit::s3::{MotoServer, S3Proxy, ACCESS_KEY, REGION, SECRET_KEY};

use tributary_sdk::Secret;

use super::*;

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("ts", event_time_type(), true), Field::new("n", DataType::Int64, false)]))
}

fn batch(ts: Vec<Option<i64>>, n: Vec<i64>) -> RecordBatch {
    let ts = TimestampMicrosecondArray::from(ts).with_timezone("UTC");
    RecordBatch::try_new(schema(), vec![Arc::new(ts), Arc::new(Int64Array::from(n))]).unwrap()
}

fn micros(t: &str) -> Option<i64> {
    Some(chrono::DateTime::parse_from_rfc3339(t).unwrap().timestamp_micros())
}

/// A sink writing to `path` on the S3 server at `endpoint`; `storage` adds `storage:` options.
fn sink(endpoint: &str, path: &str, extra: &str, storage: &str) -> Box<dyn Sink> {
    let yaml = format!(
        "{{path: '{path}', storage: {{endpoint: '{endpoint}', region: {REGION}, access_key_id: {ACCESS_KEY}, secret_access_key: {SECRET_KEY}, {storage}}}, {extra}}}"
    );
    ParquetSinkPlugin.build(&ComponentConfig::from_yaml("pq", &yaml), &[("src".into(), schema())]).map_err(|e| e.to_string()).unwrap()
}

/// The store the sink writes to, to read back what is there.
pub(super) fn store(endpoint: &str, bucket: &str) -> store::ObjectLocation {
    let options = store::StorageOptions {
        endpoint: Some(endpoint.into()),
        region: Some(REGION.into()),
        access_key_id: Some(Secret::new(ACCESS_KEY)),
        secret_access_key: Some(Secret::new(SECRET_KEY)),
        ..Default::default()
    };
    match store::parse_location(&format!("s3://{bucket}"), &options).unwrap() {
        store::Location::Objects(o) => o,
        store::Location::Folder(_) => unreachable!(),
    }
}

/// Every object under `prefix`: (its key's folder, the values of `n` in it).
async fn objects(lake: &store::ObjectLocation, prefix: &str) -> Vec<(String, Vec<i64>)> {
    let mut out = Vec::new();
    let listed: Vec<_> = lake.store.list(Some(&ObjectPath::from(prefix))).try_collect().await.unwrap();
    for meta in listed {
        let bytes = lake.store.get(&meta.location).await.unwrap().bytes().await.unwrap();
        let mut values = Vec::new();
        for b in ParquetRecordBatchReaderBuilder::try_new(bytes).unwrap().build().unwrap() {
            values.extend(b.unwrap().column(1).as_primitive::<Int64Type>().values().iter().copied());
        }
        let key = meta.location.to_string();
        let name = meta.location.filename().unwrap().to_string();
        assert!(name.starts_with("part-") && name.ends_with(".parquet"), "object name {key}");
        out.push((key.rsplit_once('/').unwrap().0.to_string(), values));
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_become_objects_only_at_the_flush_with_exact_rows() {
    let moto = MotoServer::start().await;
    moto.create_bucket("lake").await;
    let mut sink = sink(&moto.endpoint(), "s3://lake/probes", "", "");
    let ctx = tributary_testkit::sink_context("pq");
    sink.start(&ctx).await.unwrap();
    let rows = batch(
        vec![micros("2026-11-21T23:59:59Z"), micros("2026-11-22T00:00:00Z"), micros("2026-11-21T12:00:00+02:00"), None],
        vec![1, 2, 3, 4],
    );
    assert_eq!(sink.write(rows, &ctx).await.unwrap(), Written::buffered());
    assert!(moto.keys("lake", "").await.is_empty(), "nothing is visible before the flush");

    assert_eq!(sink.flush(&ctx).await.unwrap(), vec![]);
    let lake = store(&moto.endpoint(), "lake");
    assert_eq!(
        objects(&lake, "probes").await,
        [
            ("probes/date=2026-11-21".to_string(), vec![1, 3]),
            ("probes/date=2026-11-22".to_string(), vec![2]),
            ("probes/date=unknown".to_string(), vec![4])
        ]
    );
    assert_eq!(sink.flush(&ctx).await.unwrap(), vec![], "an empty buffer uploads nothing");
    assert_eq!(moto.keys("lake", "").await.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_puts_are_retried_inside_one_flush() {
    let moto = MotoServer::start().await;
    moto.create_bucket("lake").await;
    let proxy = S3Proxy::start(&moto.endpoint()).await;
    let mut sink = sink(&proxy.endpoint(), "s3://lake/t", "partition_by_date: false", "");
    let ctx = tributary_testkit::sink_context("pq");
    sink.start(&ctx).await.unwrap();
    sink.write(batch(vec![None, None], vec![7, 8]), &ctx).await.unwrap();
    proxy.throttle_puts(2);
    assert_eq!(sink.flush(&ctx).await.unwrap(), vec![]);
    assert_eq!(proxy.throttled(), 2, "two 503 SlowDown answers");
    let puts = proxy.requests().iter().filter(|r| r.starts_with("PUT /lake/t/part-")).count();
    assert_eq!(puts, 3, "the same object PUT three times: {:?}", proxy.requests());
    assert_eq!(objects(&store(&moto.endpoint(), "lake"), "t").await, [("t".to_string(), vec![7, 8])]);
}

/// Pseudo-random values (xorshift): incompressible enough to make a file of several parts.
fn noise(rows: usize) -> Vec<i64> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..rows)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as i64
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_files_go_up_in_parts_and_a_failed_upload_is_aborted_and_retried_whole() {
    let moto = MotoServer::start().await;
    moto.create_bucket("lake").await;
    let proxy = S3Proxy::start(&moto.endpoint()).await;
    // 1.5M random i64s: about 12 MB of Parquet, three 5 MiB parts.
    let values = noise(1_500_000);
    let mut sink = sink(&proxy.endpoint(), "s3://lake/big", "partition_by_date: false, part_size: 5MiB", "retries: 1");
    let ctx = tributary_testkit::sink_context("pq");
    sink.start(&ctx).await.unwrap();
    sink.write(batch(vec![None; values.len()], values.clone()), &ctx).await.unwrap();

    // More 503s than each part's one retry: the flush fails, the upload is aborted, nothing shows.
    proxy.throttle_puts(10);
    let failed = sink.flush(&ctx).await.unwrap_err().to_string();
    assert!(failed.contains("uploading s3://lake/big/part-") && failed.contains("in parts"), "{failed}");
    assert_eq!(moto.keys("lake", "").await, Vec::<String>::new());
    assert_eq!(moto.unfinished_uploads("lake").await, 0, "the failed multipart upload was aborted");
    assert!(proxy.requests().iter().any(|r| r.starts_with("DELETE /lake/big/part-") && r.contains("uploadId=")), "{:?}", proxy.requests());

    // The buffer was kept: the engine's retry uploads the whole file again.
    proxy.throttle_puts(0);
    proxy.clear_requests();
    assert_eq!(sink.flush(&ctx).await.unwrap(), vec![]);
    let parts = proxy.requests().iter().filter(|r| r.starts_with("PUT /lake/big/part-") && r.contains("partNumber=")).count();
    assert_eq!(parts, 3, "{:?}", proxy.requests());
    let written = objects(&store(&moto.endpoint(), "lake"), "big").await;
    assert_eq!(written.len(), 1);
    assert_eq!(written[0].1, values, "every row, in order");
    assert_eq!(moto.unfinished_uploads("lake").await, 0);
}

/// Exactly once with plain files in a bucket: a restarted sink reads the positions from the
/// objects' footers, and the objects of a flush a crash interrupted are deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_files_in_a_bucket_keep_their_positions_and_lose_an_interrupted_flush() {
    let moto = MotoServer::start().await;
    moto.create_bucket("lake").await;
    let ctx = tributary_testkit::sink_context("pq");
    let at = |seq| tributary_sdk::Position { stream: "in".into(), epoch: 3, seq };
    let restarted = || async {
        let mut sink = sink(&moto.endpoint(), "s3://lake/eo", "max_age: 1h", "");
        sink.start(&ctx).await.unwrap();
        let written = sink.positions().unwrap().committed(&ctx, &["in".into()]).await.unwrap();
        (sink, written)
    };
    let (mut first, written) = restarted().await;
    assert!(written.is_empty());
    first.positions().unwrap().reached(&at(5));
    first.write(batch(vec![micros("2026-11-21T10:00:00Z")], vec![1]), &ctx).await.unwrap();
    first.flush(&ctx).await.unwrap();
    drop(first);

    // A flush over two days whose second object is never written: as if the process died
    // between the two uploads (the first is put here by a sink of its own with the same tag).
    let (mut second, written) = restarted().await;
    assert_eq!(written.to_string(), "in #5 (epoch 3)");
    second.positions().unwrap().reached(&at(9));
    second.write(batch(vec![micros("2026-11-22T10:00:00Z"), micros("2026-11-23T10:00:00Z")], vec![2, 3]), &ctx).await.unwrap();
    second.flush(&ctx).await.unwrap();
    drop(second);
    let lake = store(&moto.endpoint(), "lake");
    let newest: Vec<ObjectPath> = {
        let mut keys: Vec<ObjectPath> = lake.store.list(Some(&ObjectPath::from("eo"))).map_ok(|m| m.location).try_collect().await.unwrap();
        keys.sort_by(|a, b| a.filename().cmp(&b.filename()));
        keys
    };
    assert_eq!(newest.len(), 3);
    lake.store.delete(&newest[2]).await.unwrap(); // the flush's last object never arrived

    let (_, written) = restarted().await;
    assert_eq!(written.to_string(), "in #5 (epoch 3)", "the interrupted flush's position does not count");
    let left: Vec<(String, Vec<i64>)> = objects(&lake, "eo").await;
    let values: Vec<i64> = left.iter().flat_map(|(_, v)| v.clone()).collect();
    assert_eq!(values, [1], "its other object is deleted: its rows come again");
}
