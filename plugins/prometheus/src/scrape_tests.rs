//! The scrape source against a local HTTP endpoint serving fixed bodies, and against the real
//! VictoriaMetrics' own `/metrics`.

use std::time::Duration;

use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use serde_json::Value;
use tributary_sdk::dead_letter::rows_as_json;
use tributary_sdk::{ComponentConfig, SourcePlugin};
use tributary_testkit::{source_context, SourceHarness};

use crate::ScrapeSourcePlugin;

const TEXT: &str = "# HELP http_requests_total Requests.\n# TYPE http_requests_total counter\nhttp_requests_total{code=\"200\",path=\"/a \\\"b\\\"\"} 1027 1795000000123\n# TYPE lag gauge\nlag{job=\"inner\",instance=\"db:5432\"} 2.5\n# TYPE rpc_seconds histogram\nrpc_seconds_bucket{le=\"0.1\"} 3\nrpc_seconds_bucket{le=\"+Inf\"} 5\nrpc_seconds_sum 1.25\nrpc_seconds_count 5\nuntyped_thing NaN\n";
const OPENMETRICS: &str = "# TYPE jobs counter\njobs_total{queue=\"q\"} 7 1795000000.5 # {trace_id=\"x\"} 1\n# EOF\n";

/// Serves the bodies the tests scrape; returns `http://127.0.0.1:port`.
async fn endpoint() -> String {
    let app = axum::Router::new()
        .route("/metrics", get(|| async { ([(CONTENT_TYPE, "text/plain; version=0.0.4")], TEXT) }))
        .route("/om", get(|| async { ([(CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], OPENMETRICS) }))
        .route("/fail", get(|| async { (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "boom") }))
        .route("/bad", get(|| async { "ok 1\nbroken{code=200} 1\n" }))
        .route("/big", get(|| async { format!("big 1\n# {}\n", "x".repeat(4000)) }))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                "late 1\n"
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

fn start(yaml: &str) -> SourceHarness {
    let built = ScrapeSourcePlugin.build(&ComponentConfig::from_yaml("scr", yaml)).map_err(|e| e.to_string()).unwrap();
    let (ctx, harness) = source_context("scr", &[""], 64);
    tokio::spawn(built.source.run(ctx));
    harness
}

/// The next scrape's rows as JSON objects.
async fn next_scrape(harness: &mut SourceHarness) -> Vec<Value> {
    let out = harness.outputs.get_mut("").unwrap();
    let d = tokio::time::timeout(Duration::from_secs(10), out.recv()).await.expect("a scrape within 10 s").unwrap();
    rows_as_json(&d.batch.data).iter().map(|r| serde_json::from_str(r).unwrap()).collect()
}

/// Rows without the scrape-dependent columns (`ts` of unstamped rows, `duration_ms`).
fn stable(rows: &[Value]) -> Vec<Value> {
    rows.iter()
        .map(|r| {
            let mut r = r.clone();
            let o = r.as_object_mut().unwrap();
            assert_eq!(o.remove("duration_ms").is_some(), o["name"] == "up", "only `up` rows carry a duration: {o:?}");
            if !o["ts"].as_str().unwrap().starts_with("2026-11-18T") {
                o.remove("ts");
            }
            r
        })
        .collect()
}

#[tokio::test]
async fn every_sample_is_a_row_and_each_scrape_adds_up() {
    let url = endpoint().await;
    let port = url.rsplit(':').next().unwrap().to_string();
    let mut h = start(&format!("{{targets: ['{url}/metrics'], interval: 1h, start_jitter: false, job: node}}"));
    let rows = stable(&next_scrape(&mut h).await);
    let instance = format!("127.0.0.1:{port}");
    let row = |name: &str, kind: Option<&str>, value: Value, labels: &str| {
        let mut r = serde_json::json!({"job": "node", "instance": instance, "name": name, "value": value, "labels": labels});
        if let Some(k) = kind {
            r["type"] = k.into();
        }
        r
    };
    let mut first = row("http_requests_total", Some("counter"), 1027.0.into(), r#"{"code":"200","path":"/a \"b\""}"#);
    first["ts"] = "2026-11-18T11:06:40.123Z".into();
    assert_eq!(
        rows,
        [
            first,
            row("lag", Some("gauge"), 2.5.into(), r#"{"exported_instance":"db:5432","exported_job":"inner"}"#),
            row("rpc_seconds_bucket", Some("histogram"), 3.0.into(), r#"{"le":"0.1"}"#),
            row("rpc_seconds_bucket", Some("histogram"), 5.0.into(), r#"{"le":"+Inf"}"#),
            row("rpc_seconds_sum", Some("histogram"), 1.25.into(), "{}"),
            row("rpc_seconds_count", Some("histogram"), 5.0.into(), "{}"),
            row("untyped_thing", None, Value::Null, "{}"),
            row("up", Some("gauge"), 1.0.into(), "{}"),
        ]
    );
    h.shutdown.cancel();
}

#[tokio::test]
async fn honor_labels_lets_the_scraped_job_and_instance_win() {
    let url = endpoint().await;
    let mut h = start(&format!("{{targets: ['{url}/metrics'], interval: 1h, start_jitter: false, honor_labels: true}}"));
    let rows = next_scrape(&mut h).await;
    let lag = rows.iter().find(|r| r["name"] == "lag").unwrap();
    assert_eq!((lag["job"].as_str(), lag["instance"].as_str(), lag["labels"].as_str()), (Some("inner"), Some("db:5432"), Some("{}")));
    let up = rows.last().unwrap();
    assert_eq!(up["job"], "scr", "the source's id is the default job");
    h.shutdown.cancel();
}

#[tokio::test]
async fn openmetrics_timestamps_are_seconds_and_exemplars_are_dropped() {
    let url = endpoint().await;
    let mut h = start(&format!("{{targets: ['{url}/om'], interval: 1h, start_jitter: false}}"));
    let rows = next_scrape(&mut h).await;
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["name"], "jobs_total");
    assert_eq!(rows[0]["type"], "counter");
    assert_eq!(rows[0]["value"], 7.0);
    assert_eq!(rows[0]["ts"], "2026-11-18T11:06:40.500Z");
    h.shutdown.cancel();
}

/// A failed scrape keeps nothing of the body and says why in its `up` row.
#[tokio::test]
async fn a_failed_scrape_is_up_0_with_the_reason() {
    let url = endpoint().await;
    let closed = format!("http://127.0.0.1:{}/metrics", tributary_testkit::free_port());
    let cases = [
        (format!("{url}/fail"), "HTTP 500 Internal Server Error".to_string()),
        (format!("{url}/bad"), "line 2: label `code`: expected a quoted value".to_string()),
        (format!("{url}/big"), "the body is larger than body_limit (1024 bytes)".to_string()),
        (format!("{url}/slow"), "timed out after 500ms".to_string()),
    ];
    for (target, error) in cases {
        let mut h = start(&format!("{{targets: ['{target}'], interval: 1h, timeout: 500ms, body_limit: 1KiB, start_jitter: false}}"));
        let rows = next_scrape(&mut h).await;
        assert_eq!(rows.len(), 1, "{target}: {rows:?}");
        assert_eq!(
            (rows[0]["name"].as_str(), rows[0]["value"].as_f64(), rows[0]["error"].as_str()),
            (Some("up"), Some(0.0), Some(error.as_str())),
            "{target}"
        );
        assert_eq!(h.metrics.errors.get(), 1, "{target}: counted");
        h.shutdown.cancel();
    }
    let mut h = start(&format!("{{targets: ['{closed}'], interval: 1h, start_jitter: false}}"));
    let rows = next_scrape(&mut h).await;
    let error = rows[0]["error"].as_str().unwrap();
    assert!(error.contains("Connection refused"), "{error}");
    h.shutdown.cancel();
}

/// Targets read from a file that is rewritten while the source runs.
#[tokio::test]
async fn a_rewritten_targets_file_starts_and_stops_targets() {
    let url = endpoint().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("targets.yaml");
    std::fs::write(&file, format!("- {url}/metrics\n")).unwrap();
    let mut h = start(&format!("{{targets_file: '{}', interval: 300ms, timeout: 300ms, start_jitter: false}}", file.display()));
    let rows = next_scrape(&mut h).await;
    assert_eq!(rows.len(), 8, "the text endpoint's 7 samples and up");
    std::fs::write(&file, format!("- {url}/om\n")).unwrap();
    // Within the 5 s check, scrapes come from /om only.
    let mut om_scrapes = 0;
    for _ in 0..60 {
        let rows = next_scrape(&mut h).await;
        if rows.len() == 2 {
            om_scrapes += 1;
            if om_scrapes == 3 {
                break;
            }
        } else {
            assert_eq!(om_scrapes, 0, "the removed target was scraped after the new one started");
        }
    }
    assert_eq!(om_scrapes, 3);
    std::fs::write(&file, "- not a url\n").unwrap();
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(next_scrape(&mut h).await.len(), 2, "an unreadable file keeps the last targets");
    assert_eq!(h.metrics.errors.get(), 1, "one warning for the bad file");
    h.shutdown.cancel();
}

#[test]
fn config_errors_name_the_option() {
    let err = |yaml: &str| ScrapeSourcePlugin.build(&ComponentConfig::from_yaml("scr", yaml)).err().map(|e| e.to_string()).unwrap();
    assert_eq!(err("{}"), "targets: give at least one target, or `targets_file`");
    assert_eq!(err("{targets: ['node:9100']}"), "targets[0]: `node:9100` is not an http(s) URL");
    assert_eq!(
        err("{targets: ['http://a/metrics'], interval: 10s, timeout: 15s}"),
        "timeout: (15s) must be more than 0 and at most the interval (10s)"
    );
    assert_eq!(err("{targets: ['http://a/metrics'], max_concurrency: 0}"), "max_concurrency: must be at least 1");
}

/// The real VictoriaMetrics exposes its own metrics in the text format.
#[tokio::test]
async fn scrapes_the_real_victoriametrics() {
    let vm = tributary_testkit::test_victoriametrics_url();
    let mut h = start(&format!("{{targets: ['{vm}/metrics'], interval: 1h, start_jitter: false}}"));
    let rows = next_scrape(&mut h).await;
    let up = rows.last().unwrap();
    assert_eq!((up["name"].as_str(), up["value"].as_f64(), up.get("error")), (Some("up"), Some(1.0), None), "{up}");
    let version = rows.iter().find(|r| r["name"] == "vm_app_version").expect("vm_app_version");
    assert!(version["labels"].as_str().unwrap().contains("\"version\":"), "{version}");
    assert!(rows.iter().any(|r| r["name"] == "process_cpu_seconds_total" && r["value"].as_f64().unwrap() > 0.0));
    assert!(rows.len() > 100, "{} rows", rows.len());
    h.shutdown.cancel();
}
