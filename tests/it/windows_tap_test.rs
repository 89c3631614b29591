//! Event-time windows in a running pipeline (late output, shutdown flush, idempotent replay into
//! an upsert sink), `tributary tap` against a live pipeline, and `tributary test` on every
//! pipeline in `pipelines/` plus a failing test's diff.

use crate::common;

use std::path::Path;
use std::time::Duration;

use common::*;

async fn post_async(addr: std::net::SocketAddr, body: String) -> (u16, String) {
    tokio::task::spawn_blocking(move || post(addr, "/ingest", &[], body.as_bytes()).unwrap()).await.unwrap()
}

fn windowed_pipeline(dir: &Path, admin: std::net::SocketAddr, addr: std::net::SocketAddr, table: &str) -> std::path::PathBuf {
    let pg = tributary_testkit::test_postgres_url();
    write(
        dir,
        &format!("{table}.yaml"),
        &format!(
            r#"
admin: {{address: "{admin}"}}
sources:
  ingest:
    type: http_server
    address: "{addr}"
    path: /ingest
    schema: {{ts: timestamp, site: string, ms: int}}
transforms:
  per_minute:
    inputs: [ingest]
    window: {{tumbling: 1m, allowed_lateness: 10s}}
    sql: |
      SELECT window_start, window_end, site, count(*) AS n, sum(ms) AS total_ms
      FROM ingest GROUP BY window_start, window_end, site
sinks:
  db:
    type: timescale
    inputs: [per_minute]
    connection: "{pg}"
    table: {table}
    time_column: window_start
    mode: upsert
    key: [window_start, site]
    batch: {{max_age: 50ms}}
  late:
    type: file
    inputs: [per_minute.late]
    path: "{late}"
    flush_interval: 50ms
"#,
            late = dir.join(format!("{table}_late.jsonl")).display()
        ),
    )
}

const BATCH_1: &str = "{\"ts\":\"2026-11-22T10:00:05Z\",\"site\":\"a\",\"ms\":10}\n{\"ts\":\"2026-11-22T10:00:40Z\",\"site\":\"a\",\"ms\":20}\n{\"ts\":\"2026-11-22T10:00:30Z\",\"site\":\"b\",\"ms\":5}";
/// Closes 10:00 (watermark 10:01:15 − 10 s), then a row for the closed minute: late.
const BATCH_2: &str = "{\"ts\":\"2026-11-22T10:01:15Z\",\"site\":\"a\",\"ms\":7}";
const BATCH_3: &str =
    "{\"ts\":\"2026-11-22T10:00:55Z\",\"site\":\"b\",\"ms\":99}\n{\"ts\":\"2026-11-22T10:01:30Z\",\"site\":\"b\",\"ms\":3}";

async fn run_once(dir: &Path, table: &str) {
    let (admin, addr) = (free_addr(), free_addr());
    let pipeline = windowed_pipeline(dir, admin, addr, table);
    let (run, shutdown) = spawn_pipeline(&pipeline);
    wait_for_port(addr).await;
    for body in [BATCH_1, BATCH_2, BATCH_3] {
        assert_eq!(post_async(addr, body.to_string()).await.0, 200);
    }
    shutdown.cancel();
    let report = run.await.unwrap();
    assert!(report.ok(), "{:?}", report.failures);
}

async fn table_rows(table: &str) -> String {
    let db = pg().await;
    let rows = db
        .query(
            &format!("SELECT to_char(window_start AT TIME ZONE 'UTC', 'HH24:MI'), site, n, total_ms, partial FROM {table} ORDER BY 1, 2"),
            &[],
        )
        .await
        .unwrap();
    rows.iter()
        .map(|r| {
            format!(
                "{} {} n={} total={} partial={}",
                r.get::<_, String>(0),
                r.get::<_, String>(1),
                r.get::<_, i64>(2),
                r.get::<_, i64>(3),
                r.get::<_, bool>(4)
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_emit_once_route_late_rows_flush_partial_on_shutdown_and_replays_converge_in_an_upsert_sink() {
    let dir = tempfile::tempdir().unwrap();
    let table = format!("win_e2e_{}", std::process::id());
    run_once(dir.path(), &table).await;
    let expected = "10:00 a n=2 total=30 partial=false\n\
                    10:00 b n=1 total=5 partial=false\n\
                    10:01 a n=1 total=7 partial=true\n\
                    10:01 b n=1 total=3 partial=true";
    assert_eq!(table_rows(&table).await, expected);
    let late = std::fs::read_to_string(dir.path().join(format!("{table}_late.jsonl"))).unwrap();
    assert_eq!(late, "{\"ts\":\"2026-11-22T10:00:55Z\",\"site\":\"b\",\"ms\":99}\n");

    // The same input again (a replay): the upsert keys are the window bounds, so nothing doubles.
    run_once(dir.path(), &table).await;
    assert_eq!(table_rows(&table).await, expected);
}

/// Late rows with nothing reading `<id>.late` used to vanish; now they are dead letters with the
/// reason, in the default store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_rows_of_an_unwired_late_output_are_dead_letters_not_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let pipeline = write(
        dir.path(),
        "p.yaml",
        &format!(
            "admin: {{enabled: false}}\ndead_letters: {{path: \"{dl}\"}}\nsources:\n  ingest:\n    type: http_server\n    address: \"{addr}\"\n    path: /ingest\n    schema: {{ts: timestamp, site: string}}\ntransforms:\n  per_minute:\n    inputs: [ingest]\n    window: {{tumbling: 1m}}\n    sql: SELECT window_start, site, count(*) AS n FROM ingest GROUP BY window_start, site\nsinks:\n  out: {{type: file, inputs: [per_minute], path: \"{out}\"}}\n",
            dl = dir.path().join("dead_letters").display(),
            out = dir.path().join("out.jsonl").display()
        ),
    );
    let (run, shutdown) = spawn_pipeline(&pipeline);
    wait_for_port(addr).await;
    assert_eq!(post_async(addr, r#"{"ts":"2026-11-22T10:02:10Z","site":"on-time"}"#.into()).await.0, 200);
    // The watermark is 10:02:10: the 10:00 window has closed, so this row is late.
    assert_eq!(post_async(addr, r#"{"ts":"2026-11-22T10:00:05Z","site":"late"}"#.into()).await.0, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    shutdown.cancel();
    assert!(run.await.unwrap().ok());
    let letters = std::fs::read_to_string(dir.path().join("dead_letters/per_minute.jsonl")).expect("the late row is stored");
    let letter: serde_json::Value = serde_json::from_str(letters.lines().next().unwrap()).unwrap();
    assert_eq!(letters.lines().count(), 1, "{letters}");
    assert_eq!(letter["reason"], "arrived after its window closed (behind the watermark); wire `per_minute.late` to handle late rows");
    assert!(letter["payload"].as_str().unwrap().contains("\"site\":\"late\""), "{letter}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tap_prints_live_filtered_rows_of_a_running_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let (admin, addr) = (free_addr(), free_addr());
    let pipeline = write(
        dir.path(),
        "p.yaml",
        &format!(
            "admin: {{address: \"{admin}\", token: \"${{TAP_TEST_TOKEN:-tap-token-123}}\"}}\nsources:\n  ingest:\n    type: http_server\n    address: \"{addr}\"\n    path: /ingest\n    schema: {{site: string, latency_ms: int}}\nsinks:\n  out: {{type: file, inputs: [ingest], path: \"{}\"}}\n",
            dir.path().join("out.jsonl").display()
        ),
    );
    let (run, shutdown) = spawn_pipeline(&pipeline);
    wait_for_port(addr).await;
    wait_for_port(admin).await;

    // `/tap` serves rows and dead letters: without the admin token it serves nothing.
    let refused = std::process::Command::new(bin())
        .args(["tap", "ingest", "--admin", &admin.to_string()])
        .env_remove("TRIBUTARY_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("the admin token is required for /tap"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    let tap = tokio::process::Command::new(bin())
        .args(["tap", "ingest", "--where", "latency_ms > 500", "--limit", "2", "--admin", &admin.to_string()])
        .env("TRIBUTARY_ADMIN_TOKEN", "tap-token-123")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Rows posted before the tap attaches are not shown; keep posting until it has its two rows.
    let poster = tokio::spawn(async move {
        for i in 0.. {
            let body = format!("{{\"site\":\"s{i}\",\"latency_ms\":{}}}\n{{\"site\":\"fast\",\"latency_ms\":3}}", 600 + i);
            post_async(addr, body).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let out = tokio::time::timeout(Duration::from_secs(30), tap.wait_with_output()).await.expect("tap ends at its limit").unwrap();
    poster.abort();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    for l in &lines {
        assert!(l["latency_ms"].as_i64().unwrap() > 500 && l["site"].as_str().unwrap().starts_with('s'), "{l}");
    }
    assert_eq!(String::from_utf8(out.stderr).unwrap(), "tap closed: limit reached\n");

    // An unknown output and a bad predicate are refused with the reason.
    let bad = std::process::Command::new(bin())
        .args(["tap", "nope", "--admin", &admin.to_string(), "--token", "tap-token-123"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("no output `nope`; outputs: ingest, ingest.dead_letter, out.dead_letter"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    let bad = std::process::Command::new(bin())
        .args(["tap", "ingest", "--where", "no_such_column > 1", "--admin", &admin.to_string(), "--token", "tap-token-123"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("invalid --where `no_such_column > 1`"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    // The filter is one predicate over the output's columns: no appended SQL, no generators.
    let bad = std::process::Command::new(bin())
        .args(["tap", "ingest", "--where", "1=1 UNION SELECT * FROM generate_series(1, 1000000000)", "--admin", &admin.to_string()])
        .env("TRIBUTARY_ADMIN_TOKEN", "tap-token-123")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&bad.stderr),
        "tap failed: invalid --where `1=1 UNION SELECT * FROM generate_series(1, 1000000000)`: only one predicate is allowed; `UNION` follows it\n"
    );

    shutdown.cancel();
    assert!(run.await.unwrap().ok());
}

#[tokio::test]
async fn every_shipped_pipeline_has_tests_and_they_pass() {
    let mut files: Vec<_> = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 4);
    for f in files {
        let report = tributary::pipeline_tests::test_file(&f).await.unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        assert!(!report.results.is_empty(), "{} ships without tests", f.display());
        assert!(report.passed(), "{}", report.render());
    }
}

#[test]
fn a_failing_pipeline_test_prints_a_diff_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = write(
        dir.path(),
        "p.yaml",
        r#"
sources:
  ingest: {type: http_server, address: "127.0.0.1:1", path: /i, schema: {ts: timestamp, site: string, ms: int}}
transforms:
  slow:
    inputs: [ingest]
    sql: SELECT site, ms FROM ingest WHERE ms > 100
sinks:
  out: {type: file, inputs: [slow], path: /dev/null}
tests:
  - name: passes
    inputs:
      ingest: [{site: a, ms: 150}, {file: rows.jsonl}]
    expect:
      slow: [{site: a, ms: 150}]
  - name: fails
    inputs:
      ingest: [{site: a, ms: 150}, {site: c, ms: 300}]
    expect:
      out: [{site: a, ms: 151}]
"#,
    );
    write(dir.path(), "rows.jsonl", "{\"site\":\"b\",\"ms\":50}\n\n{\"site\":\"d\",\"ms\":20}\n");
    let out = std::process::Command::new(bin()).args(["test", pipeline.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!(
            "{}\n  ok    passes (1 outputs checked)\n  FAIL  fails\n        out: expected 1 rows, got 2\n          missing:    {{\"site\":\"a\",\"ms\":151}}\n          unexpected: {{\"site\":\"a\",\"ms\":150}}\n          unexpected: {{\"site\":\"c\",\"ms\":300}}\n1 passed, 1 failed\n",
            pipeline.display()
        )
    );
}

/// `tributary test` runs the real runtime: a failing SQL batch and a late row with nothing
/// reading `.late` become dead letters with the runtime's own reasons (an earlier harness of its
/// own showed such rows under `.late`, which a real run never does), and a test may only feed
/// sources.
#[test]
fn pipeline_tests_see_the_runtime_s_dead_letters_and_feed_only_sources() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = write(
        dir.path(),
        "p.yaml",
        r#"
sources:
  ingest: {type: http_server, address: "127.0.0.1:1", path: /i, schema: {ts: timestamp, site: string, ms: string}}
transforms:
  parsed:
    inputs: [ingest]
    sql: SELECT ts, site, CAST(ms AS BIGINT) AS ms FROM ingest
  per_minute:
    inputs: [parsed]
    window: {tumbling: 1m}
    sql: SELECT window_start, site, count(*) AS n, sum(ms) AS total FROM parsed GROUP BY window_start, site
sinks:
  out: {type: file, inputs: [per_minute], path: /dev/null}
tests:
  - name: bad and late rows are dead letters
    steps:
      - input: ingest
        rows: [{ts: "2026-11-22T10:00:05Z", site: a, ms: "12"}, {ts: "2026-11-22T10:01:05Z", site: a, ms: "7"}]
      - input: ingest
        rows: [{ts: "2026-11-22T10:00:30Z", site: b, ms: "3"}]
      - input: ingest
        rows: [{ts: "2026-11-22T10:01:10Z", site: c, ms: "x"}]
    expect:
      out:
        - {window_start: "2026-11-22T10:00:00Z", site: a, n: 1, total: 12, partial: false}
        - {window_start: "2026-11-22T10:01:00Z", site: a, n: 1, total: 7, partial: true}
      per_minute.late: []
      per_minute.dead_letter:
        - {component: per_minute, reason: "arrived after its window closed (behind the watermark); wire `per_minute.late` to handle late rows", payload: '{"ts":"2026-11-22T10:00:30Z","site":"b","ms":3}'}
      parsed.dead_letter:
        - {component: parsed, reason: "SQL failed on input `ingest`: Arrow error: Cast error: Cannot cast string 'x' to value of Int64 type"}
  - name: feeding a transform is refused
    inputs:
      parsed: [{site: a}]
"#,
    );
    let out = std::process::Command::new(bin()).args(["test", pipeline.to_str().unwrap()]).output().unwrap();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!(
            "{}\n  ok    bad and late rows are dead letters (4 outputs checked)\n  FAIL  feeding a transform is refused\n        `parsed` is not a source's output; tests feed sources' outputs: ingest\n1 passed, 1 failed\n",
            pipeline.display()
        )
    );
    // The run's own logs stay out of the report (only errors would show).
    assert_eq!(String::from_utf8(out.stderr).unwrap(), "");
    assert_eq!(out.status.code(), Some(1));
}

/// `tributary test` of an exactly-once pipeline with a window: the captured rows store no
/// positions, so the test runs at least once and ends with the partial flush, as every test does
/// (it used to fail: the capturing sink "does not store positions").
#[tokio::test]
async fn a_pipeline_test_of_an_exactly_once_window_runs_at_least_once() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = write(
        dir.path(),
        "p.yaml",
        r#"
delivery: exactly_once
sources:
  ingest:
    type: http_server
    address: 127.0.0.1:0
    schema: {ts: timestamp, channel: string}
    buffer: {type: disk}
transforms:
  per_minute:
    inputs: [ingest]
    window: {tumbling: 1m}
    sql: SELECT window_start, channel, count(*) AS n FROM ingest GROUP BY window_start, channel
sinks:
  db: {type: timescale, inputs: [per_minute], connection: 'host=127.0.0.1', table: unused, time_column: window_start}
tests:
  - name: the closed minute, then the open one flushed as partial
    inputs:
      ingest:
        - {ts: "2026-11-22T10:00:05Z", channel: a}
        - {ts: "2026-11-22T10:00:15Z", channel: a}
        - {ts: "2026-11-22T10:01:05Z", channel: a}
    expect:
      db:
        - {window_start: "2026-11-22T10:00:00Z", channel: a, n: 2, partial: false}
        - {window_start: "2026-11-22T10:01:00Z", channel: a, n: 1, partial: true}
"#,
    );
    let report = tributary::pipeline_tests::test_file(&pipeline).await.unwrap();
    assert!(report.passed(), "{}", report.render());
    assert_eq!(report.results.len(), 1);
}
