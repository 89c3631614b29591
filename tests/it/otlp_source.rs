//! The `otlp` source against real OpenTelemetry clients: the Python SDK's exporters (HTTP and
//! gRPC) into the pipeline, rows exact in the sinks; and a round trip into rotel through the
//! `otlp` sink.

use crate::common;

use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// A client run: the SDK records, then each exporter sends once. Returns its printed results.
async fn python_client(protocol: &str, endpoint: String, token: &str) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/otlp_client.py");
    let out = tokio::process::Command::new("python3").arg(script).args([protocol, &endpoint, token]).output().await.expect("python3 runs");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    assert!(
        !stderr.contains("No module named 'opentelemetry"),
        "the OpenTelemetry Python SDK is missing; `./scripts/test` installs it, or: python3 -m pip install opentelemetry-sdk \
         opentelemetry-exporter-otlp-proto-http opentelemetry-exporter-otlp-proto-grpc"
    );
    assert!(out.status.success(), "the client's exports failed:\n{stdout}\n{stderr}");
    stdout
}

/// The JSON lines of a file sink, once there are `n`.
async fn lines(path: &Path, n: usize) -> Vec<Value> {
    for _ in 0..200 {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let rows: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        if rows.len() >= n {
            assert_eq!(rows.len(), n, "{text}");
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{} never had {n} lines: {:?}", path.display(), std::fs::read_to_string(path));
}

/// The row without `keys` (times and ids the SDK makes up; a gauge has no start time).
fn without(mut row: Value, keys: &[&str]) -> Value {
    for key in keys {
        row.as_object_mut().unwrap().remove(*key);
    }
    row
}

/// The resource column, checked for what the client set, then left out of the comparison (the
/// SDK adds its own version to it).
fn checked_origin(mut row: Value) -> Value {
    let resource: Value = serde_json::from_str(row["resource"].as_str().unwrap()).unwrap();
    assert_eq!(
        (&resource["service.name"], &resource["site"], &resource["telemetry.sdk.language"]),
        (&json!("door-controller"), &json!("hq"), &json!("python")),
        "{resource}"
    );
    assert_eq!(row["service_name"], "door-controller");
    row.as_object_mut().unwrap().remove("resource");
    row
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_source_takes_the_python_sdk_over_http_and_grpc() {
    let dir = tempfile::tempdir().unwrap();
    let (grpc, http) = (free_addr(), free_addr());
    let out = |name: &str| dir.path().join(format!("{name}.jsonl"));
    let pipeline = write(
        dir.path(),
        "p.yaml",
        &format!(
            "admin: {{enabled: false}}\nsources:\n  otel: {{type: otlp, grpc_address: \"{grpc}\", http_address: \"{http}\", token: tok-otlp-1}}\n\
             sinks:\n  m: {{type: file, inputs: [otel.metrics], path: \"{}\", flush_interval: 50ms}}\n  \
             s: {{type: file, inputs: [otel.spans], path: \"{}\", flush_interval: 50ms}}\n  \
             l: {{type: file, inputs: [otel.logs], path: \"{}\", flush_interval: 50ms}}\n",
            out("metrics").display(),
            out("spans").display(),
            out("logs").display()
        ),
    );
    let (run, shutdown) = spawn_pipeline(&pipeline);
    wait_for_port(grpc).await;
    wait_for_port(http).await;

    let start = std::time::SystemTime::now();
    let printed = python_client("http", format!("http://{http}"), "tok-otlp-1").await;
    assert_eq!(printed, "OTLPMetricExporter SUCCESS\nOTLPSpanExporter SUCCESS\nOTLPLogExporter SUCCESS\n");
    // The answers came after the sinks wrote: the rows are already in the files.
    let metric_rows =
        |rows: Vec<Value>| -> Vec<Value> { rows.into_iter().map(|r| checked_origin(without(r, &["ts", "start_ts"]))).collect() };
    let metrics = metric_rows(lines(&out("metrics"), 4).await);
    let origin = json!({"service_name": "door-controller", "scope_name": "doors", "scope_version": "0.3"});
    let with_origin = |mut row: Value| {
        row.as_object_mut().unwrap().extend(origin.as_object().unwrap().clone());
        row
    };
    assert_eq!(
        metrics,
        [
            with_origin(
                json!({"name": "badge_swipes", "description": "badge swipes", "unit": "{swipe}", "type": "sum", "temporality": "cumulative", "monotonic": true, "value": 5.0, "attributes": "{\"door\":\"d1\"}"})
            ),
            with_origin(
                json!({"name": "badge_swipes", "description": "badge swipes", "unit": "{swipe}", "type": "sum", "temporality": "cumulative", "monotonic": true, "value": 1.0, "attributes": "{\"door\":\"d2\"}"})
            ),
            with_origin(
                json!({"name": "door_open_ms", "unit": "ms", "type": "histogram", "temporality": "cumulative", "count": 3, "sum": 555.0, "min": 5.0, "max": 500.0, "bucket_bounds": [10.0, 100.0], "bucket_counts": [1, 1, 1], "attributes": "{\"door\":\"d1\"}"})
            ),
            with_origin(json!({"name": "room_temp", "type": "gauge", "value": 21.5, "attributes": "{\"room\":\"b1\"}"})),
        ]
    );
    let spans = lines(&out("spans"), 2).await;
    // The child ends first; it is the server span's child in the same trace.
    assert_eq!(spans[0]["parent_span_id"], spans[1]["span_id"]);
    assert_eq!(spans[0]["trace_id"], spans[1]["trace_id"]);
    assert!(spans[1].get("parent_span_id").is_none(), "{}", spans[1]);
    assert!(spans.iter().all(|s| s["duration_ns"].as_i64().unwrap() > 0), "{spans:?}");
    let volatile = ["ts", "end_ts", "duration_ns", "trace_id", "span_id"];
    let spans = [without(spans[0].clone(), &[&volatile[..], &["parent_span_id"]].concat()), without(spans[1].clone(), &volatile)];
    let spans: Vec<Value> = spans.into_iter().map(checked_origin).collect();
    let events = spans[0]["events"].as_str().unwrap().to_string();
    let events: Value = serde_json::from_str(&events).unwrap();
    assert_eq!((&events[0]["name"], &events[0]["attributes"]), (&json!("retry"), &json!({"attempt": 2})), "{events}");
    assert_eq!(
        spans.into_iter().map(|s| without(s, &["events"])).collect::<Vec<_>>(),
        [
            with_origin(
                json!({"name": "unlock", "kind": "internal", "status_code": "error", "status_message": "actuator timeout", "attributes": "{}", "links": "[]"})
            ),
            with_origin(
                json!({"name": "POST /open", "kind": "server", "status_code": "unset", "attributes": "{\"door\":\"d1\"}", "links": "[]"})
            ),
        ]
    );
    let logs: Vec<Value> = lines(&out("logs"), 2).await.into_iter().map(|l| checked_origin(without(l, &["ts", "observed_ts"]))).collect();
    let summary: Vec<Value> = logs
        .iter()
        .map(|l| {
            let attributes: Value = serde_json::from_str(l["attributes"].as_str().unwrap()).unwrap();
            json!([l["severity_number"], l["severity_text"], l["body"], attributes["door"], l["scope_name"], l.get("trace_id")])
        })
        .collect();
    assert_eq!(
        summary,
        [json!([13, "WARN", "door d3 forced open", "d3", "doors", null]), json!([9, "INFO", "door d1 closed", null, "doors", null])]
    );

    // The same client over gRPC: the same rows again.
    let printed = python_client("grpc", format!("http://{grpc}"), "tok-otlp-1").await;
    assert_eq!(printed, "OTLPMetricExporter SUCCESS\nOTLPSpanExporter SUCCESS\nOTLPLogExporter SUCCESS\n");
    assert_eq!(metric_rows(lines(&out("metrics"), 8).await)[4..], metrics[..]);
    lines(&out("spans"), 4).await;
    lines(&out("logs"), 4).await;

    // A wrong token is refused before anything is decoded.
    let refused = tokio::process::Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/otlp_client.py"))
        .args(["http", &format!("http://{http}"), "wrong"])
        .output()
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&refused.stdout), "OTLPMetricExporter FAILURE\nOTLPSpanExporter FAILURE\nOTLPLogExporter FAILURE\n");
    let stamped = |rows: &[Value]| {
        rows.iter().all(|r| {
            let ts = humantime::parse_rfc3339(r["ts"].as_str().unwrap()).unwrap();
            ts >= start - Duration::from_secs(1) && ts <= std::time::SystemTime::now()
        })
    };
    assert!(stamped(&lines(&out("metrics"), 8).await), "the SDK's times are kept");
    shutdown.cancel();
    run.await.unwrap();
}

/// otlp → tributary → otlp: what the SDK sent arrives at rotel, relayed by the `otlp` sink.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_source_round_trips_into_rotel_through_the_otlp_sink() {
    let receiver = tributary_testkit::RotelReceiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let grpc = free_addr();
    let pipeline = write(
        dir.path(),
        "p.yaml",
        &format!(
            "admin: {{enabled: false}}\nsources:\n  otel: {{type: otlp, grpc_address: \"{grpc}\"}}\n\
             transforms:\n  swipes:\n    inputs: [otel.metrics]\n    sql: \"SELECT ts, value, attributes FROM otel.metrics WHERE name = 'badge_swipes'\"\n\
             sinks:\n  relay:\n    type: otlp\n    inputs: [swipes]\n    endpoint: http://127.0.0.1:{}/v1/metrics\n    resource: {{service.name: relay}}\n    \
             metrics: [{{name: badge_swipes_relayed, kind: counter, value: value, attributes: [attributes]}}]\n    batch: {{max_age: 100ms}}\n",
            receiver.http
        ),
    );
    let (run, shutdown) = spawn_pipeline(&pipeline);
    wait_for_port(grpc).await;
    let printed = python_client("grpc", format!("http://{grpc}"), "").await;
    // Answered after the relay's export was accepted by rotel.
    assert_eq!(printed, "OTLPMetricExporter SUCCESS\nOTLPSpanExporter SUCCESS\nOTLPLogExporter SUCCESS\n");
    let out = receiver.output_with("-> Name: badge_swipes_relayed", 0).await;
    for expected in [
        "-> service.name: Str(relay)",
        "-> DataType: Sum\n     -> IsMonotonic: true\n     -> AggregationTemporality: AGGREGATION_TEMPORALITY_CUMULATIVE",
        "-> attributes: Str({\"door\":\"d1\"})",
        "Value: 5",
        "-> attributes: Str({\"door\":\"d2\"})",
        "Value: 1",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
    shutdown.cancel();
    run.await.unwrap();
}

/// On the built binary: while the database is cut, the client hears nothing; once it is back,
/// the rows are written and only then does the client hear 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_source_answers_only_after_the_database_has_the_rows() {
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::metrics::v1::{
        metric::Data, number_data_point, Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics,
    };
    use prost::Message;

    let (mut proxy, via_proxy) = CuttableProxy::to_test_postgres().await;
    let db = pg().await;
    let table = format!("otlp_ack_{}", std::process::id());
    db.batch_execute(&format!("DROP TABLE IF EXISTS {table}")).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let http = free_addr();
    let pipeline = write(
        dir.path(),
        "p.yaml",
        &format!(
            "sources:\n  otel: {{type: otlp, http_address: \"{http}\"}}\n\
             transforms:\n  points:\n    inputs: [otel.metrics]\n    sql: SELECT ts, name, value, attributes FROM otel.metrics\n\
             sinks:\n  db: {{type: timescale, inputs: [points], connection: \"{via_proxy}\", table: {table}, batch: {{max_age: 100ms}}, timeout: 2s}}\n"
        ),
    );
    let mut child = run_bin(&pipeline);
    wait_for_port(http).await;
    let request = |value: f64| {
        let point = NumberDataPoint {
            time_unix_nano: 1_764_000_000_000_000_000,
            value: Some(number_data_point::Value::AsDouble(value)),
            ..Default::default()
        };
        let metric = Metric { name: "room_temp".into(), data: Some(Data::Gauge(Gauge { data_points: vec![point] })), ..Default::default() };
        let scope = ScopeMetrics { metrics: vec![metric], ..Default::default() };
        ExportMetricsServiceRequest { resource_metrics: vec![ResourceMetrics { scope_metrics: vec![scope], ..Default::default() }] }
            .encode_to_vec()
    };
    let send = |body: Vec<u8>| {
        tokio::task::spawn_blocking(move || post(http, "/v1/metrics", &[("Content-Type", "application/x-protobuf")], &body).unwrap())
    };
    assert_eq!(send(request(1.0)).await.unwrap().0, 200);
    assert_eq!(pg_count(&db, &table).await, 1, "written before the answer");

    proxy.cut();
    let waiting = send(request(2.0));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!waiting.is_finished(), "answered while the database was cut");
    assert_eq!(pg_count(&db, &table).await, 1);
    proxy.open().await;
    assert_eq!(waiting.await.unwrap().0, 200);
    let rows = db.query(&format!("SELECT name, value, attributes FROM {table} ORDER BY value"), &[]).await.unwrap();
    let rows: Vec<(String, f64, String)> = rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
    assert_eq!(rows, [("room_temp".to_string(), 1.0, "{}".to_string()), ("room_temp".to_string(), 2.0, "{}".to_string())]);
    sigterm(&child);
    assert!(child.wait().unwrap().success());
    db.batch_execute(&format!("DROP TABLE {table}")).await.unwrap();
}
