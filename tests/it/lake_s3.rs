//! The Parquet lake in an S3 bucket (a real S3 protocol server: moto), through a proxy that records
//! and disturbs requests:
//! - `tributary run` killed (SIGKILL) while its multipart upload waits for completion leaves no
//!   visible object; the restarted run re-reads the unacknowledged file and writes every row once;
//! - `tributary query --data s3://…` and the chart server read the bucket with the same answers
//!   as over the same lake on disk, listing only the `date=` partitions a range needs.

use crate::common;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tributary::serve::{Lake, Limits, Tables};
use tributary_parquet::store::{parse_location, Location, ObjectLocation, StorageOptions};
use tributary_sdk::Secret;
use tributary_testkit::s3::{MotoServer, S3Proxy, ACCESS_KEY, REGION, SECRET_KEY};

/// The environment a user gives `tributary query` for an S3-compatible server.
fn s3_env(endpoint: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", endpoint.to_string()),
        ("AWS_ALLOW_HTTP", "true".into()),
        ("AWS_REGION", REGION.into()),
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
        ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
    ]
}

fn tributary_query(endpoint: &str, data: &str, sql: &str) -> String {
    let out = std::process::Command::new(common::bin())
        .args(["query", "--data", data, "--format", "csv", sql])
        .envs(s3_env(endpoint))
        .output()
        .unwrap();
    assert!(out.status.success(), "query failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// `count` NDJSON rows with ids 0.. and a random 32-character token each (so the Parquet file is
/// ~2 bytes of zstd per character: a file of several 5 MiB parts).
fn write_rows(path: &Path, count: usize) {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let mut text = String::with_capacity(count * 90);
    for id in 0..count {
        let token: String = (0..32)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                ALPHABET[(x % ALPHABET.len() as u64) as usize] as char
            })
            .collect();
        text.push_str(&format!("{{\"ts\":\"2026-11-30T08:{:02}:{:02}Z\",\"id\":{id},\"token\":\"{token}\"}}\n", (id / 60) % 60, id % 60));
    }
    std::fs::write(path, text).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_killed_mid_upload_leaves_no_object_and_the_restart_writes_every_row_once() {
    const ROWS: usize = 400_000;
    let moto = MotoServer::start().await;
    moto.create_bucket("telemetry").await;
    let proxy = S3Proxy::start(&moto.endpoint()).await;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("rows.ndjson");
    write_rows(&input, ROWS);
    let yaml = format!(
        r#"
admin: {{enabled: false}}
sources:
  rows:
    type: file
    path: {input}
    schema: {{ts: timestamp, id: int, token: string}}
    checkpoint_file: {checkpoint}
sinks:
  lake:
    type: parquet
    inputs: [rows]
    path: s3://telemetry/lake/rows
    part_size: 5MiB
    storage:
      endpoint: {endpoint}
      region: {REGION}
      access_key_id: ${{TEST_S3_KEY}}
      secret_access_key: ${{TEST_S3_SECRET}}
"#,
        input = input.display(),
        checkpoint = dir.path().join("rows.checkpoint").display(),
        endpoint = proxy.endpoint(),
    );
    let pipeline = common::write(dir.path(), "lake.yaml", &yaml);
    let run = || {
        std::process::Command::new(common::bin())
            .args(["run", pipeline.to_str().unwrap()])
            .env("TEST_S3_KEY", ACCESS_KEY)
            .env("TEST_S3_SECRET", SECRET_KEY)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .unwrap()
    };

    // First run: the parts go up, the completion is held, and the process is killed there.
    proxy.hold_completions(true);
    let mut first = run();
    let t0 = Instant::now();
    while proxy.held() == 0 {
        assert!(t0.elapsed() < Duration::from_secs(120), "the upload never reached its completion");
        assert!(first.try_wait().unwrap().is_none(), "the first run ended before its upload completed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill().unwrap();
    first.wait().unwrap();
    let parts = proxy
        .requests()
        .iter()
        .filter(|r| r.starts_with("PUT /telemetry/lake/rows/date=2026-11-30/part-") && r.contains("partNumber="))
        .count();
    assert!(parts >= 2, "a multipart upload: {:?}", proxy.requests());
    assert_eq!(moto.keys("telemetry", "").await, Vec::<String>::new(), "nothing visible after the kill");
    assert_eq!(moto.unfinished_uploads("telemetry").await, 1, "the killed run's parts are there, invisible");

    // Second run: nothing was acknowledged, so the file is read again from its start.
    proxy.hold_completions(false);
    let mut second = run();
    let t0 = Instant::now();
    let status = loop {
        if let Some(status) = second.try_wait().unwrap() {
            break status;
        }
        assert!(t0.elapsed() < Duration::from_secs(180), "the second run did not finish");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "the second run exits 0: {status:?}");
    let keys = moto.keys("telemetry", "").await;
    assert_eq!(keys.len(), 1, "one file: {keys:?}");
    assert!(keys[0].starts_with("lake/rows/date=2026-11-30/part-") && keys[0].ends_with(".parquet"), "{keys:?}");

    let sql = "SELECT count(*) AS n, count(DISTINCT id) AS ids, sum(id) AS total, min(id) AS low, max(id) AS high FROM rows";
    let answer = tributary_query(&moto.endpoint(), "s3://telemetry/lake", sql);
    let total = ROWS * (ROWS - 1) / 2;
    assert_eq!(answer, format!("n,ids,total,low,high\n{ROWS},{ROWS},{total},0,{}\n", ROWS - 1));
    eprintln!("killed with {parts} parts uploaded and the completion held; the restart wrote {ROWS} rows once");
}

/// The fixture lake (tests/it/common/lake.rs) on disk and the same files in `bucket` under `lake/`.
async fn mirrored_fixture(moto: &MotoServer, bucket: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    common::lake::write_fixture(dir.path());
    let target = objects(&moto.endpoint(), bucket);
    for file in common::files_ending(dir.path(), ".parquet") {
        let key = object_store::path::Path::from(format!("lake/{}", file.strip_prefix(dir.path()).unwrap().display()));
        object_store::ObjectStoreExt::put(&target.store, &key, std::fs::read(&file).unwrap().into()).await.unwrap();
    }
    dir
}

fn objects(endpoint: &str, bucket: &str) -> ObjectLocation {
    let options = StorageOptions {
        endpoint: Some(endpoint.into()),
        region: Some(REGION.into()),
        access_key_id: Some(Secret::new(ACCESS_KEY)),
        secret_access_key: Some(Secret::new(SECRET_KEY)),
        ..Default::default()
    };
    match parse_location(&format!("s3://{bucket}"), &options).unwrap() {
        Location::Objects(o) => o,
        Location::Folder(_) => unreachable!(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_reads_the_bucket_as_it_reads_the_folder() {
    let moto = MotoServer::start().await;
    moto.create_bucket("lake").await;
    let local = mirrored_fixture(&moto, "lake").await;
    let sql = "SELECT date, site, count(*) AS n, sum(ms) AS ms FROM latency GROUP BY date, site ORDER BY date, site";
    let from_bucket = tributary_query(&moto.endpoint(), "s3://lake/lake", sql);
    assert_eq!(from_bucket, "date,site,n,ms\n2026-10-31,a,1,100.0\n2026-10-31,b,1,40.0\n2026-11-01,a,5,190.0\n2026-11-01,b,2,12.0\n");
    let out = std::process::Command::new(common::bin())
        .args(["query", "--data", local.path().to_str().unwrap(), "--format", "csv", sql])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), from_bucket, "the same answer from the folder");

    let tables = tributary_query(&moto.endpoint(), "s3://lake/lake", "SELECT count(*) AS n FROM names");
    assert_eq!(tables, "n\n2\n");
    let missing = std::process::Command::new(common::bin())
        .args(["query", "--data", "s3://lake/nothing-here", "SELECT 1"])
        .envs(s3_env(&moto.endpoint()))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&missing.stderr).trim(),
        "query failed: no tables: `s3://lake/nothing-here/` has no folders with Parquet files (run a pipeline with a parquet sink first, or pass --table NAME=PATH)"
    );
}

async fn serve(tables: Tables) -> (std::net::SocketAddr, CancellationToken) {
    let addr = common::free_addr();
    let stop = CancellationToken::new();
    tokio::spawn(tributary::serve::serve(addr, Lake::new(tables, Limits::default(), false).unwrap(), stop.clone()));
    common::wait_for_port(addr).await;
    (addr, stop)
}

async fn get_json(addr: std::net::SocketAddr, path: &str) -> Value {
    let res = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
    assert_eq!(res.status(), 200, "{path}");
    serde_json::from_str(&res.text().await.unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn charts_read_the_bucket_listing_only_the_dates_a_range_needs() {
    let moto = MotoServer::start().await;
    moto.create_bucket("lake").await;
    let local = mirrored_fixture(&moto, "lake").await;
    let proxy = S3Proxy::start(&moto.endpoint()).await;
    let bucket = ObjectLocation { prefix: "lake".into(), ..objects(&proxy.endpoint(), "lake") };
    let (from_bucket, stop_bucket) = serve(Tables::Under(bucket)).await;
    let (from_folder, stop_folder) = serve(Tables::Under(ObjectLocation::local(local.path()).unwrap())).await;

    let tables = get_json(from_bucket, "/api/tables").await;
    assert_eq!(tables, get_json(from_folder, "/api/tables").await);
    assert_eq!(tables["tables"][0]["name"], "latency");
    assert_eq!(tables["tables"][0]["rows"], 9);

    proxy.clear_requests();
    let series = "/api/series?table=latency&value=ms&agg=avg&bin=5m&from=2026-11-01T00:00:00Z&to=2026-11-01T00:15:00Z&group_by=site";
    let answer = get_json(from_bucket, series).await;
    assert_eq!(answer, get_json(from_folder, series).await, "the same points from the bucket and the folder");
    assert_eq!(answer["series"].as_array().unwrap().len(), 2);
    let requests = proxy.requests();
    assert!(requests.iter().any(|r| r.contains("date=2026-11-01/part-0.parquet")), "the day's file was read: {requests:?}");
    assert!(!requests.iter().any(|r| r.contains("date=2026-10-31")), "the other day was neither listed nor read: {requests:?}");
    assert!(!requests.iter().any(|r| r.contains("lake/names")), "another table was not looked at: {requests:?}");
    assert!(
        requests
            .iter()
            .filter(|r| r.contains("list-type=2"))
            .all(|r| r.contains("delimiter=") || r.contains("prefix=lake/latency/date=2026-11-01")),
        "listings go level by level, never the whole bucket: {requests:?}"
    );
    stop_bucket.cancel();
    stop_folder.cancel();
}
