//! Throughput of the metrics sinks into real local receivers, each next to the receiver's own
//! ingest rate measured in the same run: the same points, pre-encoded outside the timed loop, POSTed
//! sequentially in the same batch sizes with reqwest. The ratio is what the sink costs on top of
//! the receiver and the HTTP round trips.
//!
//! - influx → VictoriaMetrics `/api/v2/write` (`TRIBUTARY_TEST_VICTORIAMETRICS`, default
//!   `http://127.0.0.1:8428`); baseline: line protocol formatted up front.
//! - prometheus_remote_write → VictoriaMetrics `/api/v1/write`; baseline: snappy-compressed
//!   `WriteRequest`s encoded up front (the series grouped as the sink groups them).
//! - otlp (HTTP/protobuf) → `rotel-agent` with its blackhole exporter on a free port; baseline:
//!   `ExportMetricsServiceRequest`s encoded up front.
//!
//! A point is one sample: each row carries two values (two fields; two gauge metrics), so rows × 2.
//! `cargo bench --bench metrics_sinks` writes 200,000 rows per sink (METRICS_BENCH_ROWS to change);
//! under `cargo test` a 4,000-row smoke pass runs.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point, Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics};
use prost::Message;
use tributary_sdk::config::event_time_type;
use tributary_sdk::{ComponentConfig, SinkPlugin};
use tributary_testkit::{free_port, rotel_agent, sink_context, write_like_the_engine};

const BATCH: usize = 2000;
/// Whole seconds a few minutes ago: VictoriaMetrics keeps them (retention) and they are unique per run.
fn base_us() -> i64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    (now - 600) * 1_000_000
}

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("ts", event_time_type(), false),
        Field::new("site", DataType::Utf8, false),
        Field::new("channel", DataType::Utf8, false),
        Field::new("latency_ms", DataType::Float64, false),
        Field::new("status", DataType::Int64, false),
    ]))
}

/// Row i: its time, site, channel and two values.
/// ts_us, site, channel, latency_ms, status.
type BenchRow = (i64, String, String, f64, i64);

fn row(base: i64, i: usize) -> BenchRow {
    (
        base + i as i64 * 1000,
        format!("site-{}", i % 20),
        format!("ch-{}", i % 5),
        (i % 900) as f64 * 0.5,
        if i.is_multiple_of(50) { 500 } else { 200 },
    )
}

fn batch(base: i64, start: usize, n: usize) -> RecordBatch {
    let rows: Vec<_> = (start..start + n).map(|i| row(base, i)).collect();
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.0)).with_timezone("UTC")),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1.as_str()))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.2.as_str()))),
            Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.3))),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.4))),
        ],
    )
    .unwrap()
}

/// Points/s through a sink built from `yaml`.
async fn through_sink(plugin: &dyn SinkPlugin, yaml: &str, base: i64, rows: usize) -> f64 {
    let mut sink = plugin.build(&ComponentConfig::from_yaml("bench", yaml), &[("in".into(), schema())]).map_err(|e| e.to_string()).unwrap();
    let ctx = sink_context("bench");
    sink.start(&ctx).await.unwrap();
    let batches: Vec<RecordBatch> = (0..rows).step_by(BATCH).map(|s| batch(base, s, BATCH.min(rows - s))).collect();
    let start = Instant::now();
    let mut rejected = Vec::new();
    for b in batches {
        rejected.extend(write_like_the_engine(sink.as_mut(), b, &ctx).await.unwrap());
    }
    rejected.extend(sink.flush(&ctx).await.unwrap());
    let secs = start.elapsed().as_secs_f64();
    assert!(rejected.is_empty(), "nothing dead-lettered: {rejected:?}");
    assert_eq!((ctx.metrics.errors.get(), ctx.metrics.retries.get()), (0, 0));
    (rows * 2) as f64 / secs
}

/// Points/s of pre-encoded bodies POSTed one after another.
async fn raw_posts(url: &str, content_type: &str, bodies: Vec<Vec<u8>>, points: usize) -> f64 {
    let client = reqwest::Client::new();
    let start = Instant::now();
    for body in bodies {
        let mut post = client.post(url).header("content-type", content_type);
        if url.ends_with("/api/v1/write") {
            post = post.header("content-encoding", "snappy").header("x-prometheus-remote-write-version", "0.1.0");
        }
        let answer = post.body(body).send().await.unwrap();
        assert!(answer.status().is_success(), "{url}: {}", answer.status());
    }
    points as f64 / start.elapsed().as_secs_f64()
}

fn line_protocol(measurement: &str, base: i64, rows: usize) -> Vec<Vec<u8>> {
    (0..rows)
        .step_by(BATCH)
        .map(|s| {
            let mut body = String::new();
            for i in s..(s + BATCH).min(rows) {
                let (ts, site, ch, lat, status) = row(base, i);
                body.push_str(&format!("{measurement},site={site},channel={ch} latency_ms={lat},status={status}i {}\n", ts * 1000));
            }
            body.into_bytes()
        })
        .collect()
}

fn remote_write_requests(prefix: &str, base: i64, rows: usize) -> Vec<Vec<u8>> {
    use std::collections::BTreeMap;
    use tributary_prometheus::wire::{Label, Sample, TimeSeries, WriteRequest};
    (0..rows)
        .step_by(BATCH)
        .map(|start| {
            let mut series: BTreeMap<Vec<Label>, Vec<Sample>> = BTreeMap::new();
            for i in start..(start + BATCH).min(rows) {
                let (ts, site, ch, lat, status) = row(base, i);
                for (name, value) in [("latency_ms", lat), ("status", status as f64)] {
                    let labels = [("__name__", format!("{prefix}_{name}")), ("channel", ch.clone()), ("site", site.clone())]
                        .into_iter()
                        .map(|(name, value)| Label { name: name.into(), value })
                        .collect();
                    series.entry(labels).or_default().push(Sample { value, timestamp: ts / 1000 });
                }
            }
            WriteRequest { timeseries: series.into_iter().map(|(labels, samples)| TimeSeries { labels, samples }).collect() }.body()
        })
        .collect()
}

fn otlp_requests(base: i64, rows: usize) -> Vec<Vec<u8>> {
    let s = |k: &str, v: String| KeyValue {
        key: k.into(),
        value: Some(AnyValue { value: Some(any_value::Value::StringValue(v)) }),
        ..Default::default()
    };
    (0..rows)
        .step_by(BATCH)
        .map(|start| {
            let rows: Vec<_> = (start..(start + BATCH).min(rows)).map(|i| row(base, i)).collect();
            let gauge = |name: &str, value: &dyn Fn(&BenchRow) -> number_data_point::Value| Metric {
                name: name.into(),
                data: Some(metric::Data::Gauge(Gauge {
                    data_points: rows
                        .iter()
                        .map(|r| NumberDataPoint {
                            attributes: vec![s("site", r.1.clone()), s("channel", r.2.clone())],
                            time_unix_nano: r.0 as u64 * 1000,
                            value: Some(value(r)),
                            ..Default::default()
                        })
                        .collect(),
                })),
                ..Default::default()
            };
            ExportMetricsServiceRequest {
                resource_metrics: vec![ResourceMetrics {
                    scope_metrics: vec![ScopeMetrics {
                        metrics: vec![
                            gauge("latency_ms", &|r| number_data_point::Value::AsDouble(r.3)),
                            gauge("status", &|r| number_data_point::Value::AsInt(r.4)),
                        ],
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            }
            .encode_to_vec()
        })
        .collect()
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let rows: usize = std::env::var("METRICS_BENCH_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(if full { 200_000 } else { 4_000 });
    let vm = tributary_testkit::test_victoriametrics_url();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let run = std::process::id();
        let base = base_us();
        // influx → VictoriaMetrics.
        let raw_influx = raw_posts(&format!("{vm}/api/v2/write?bucket=bench"), "text/plain", line_protocol(&format!("bench_raw_{run}"), base, rows), rows * 2).await;
        let yaml = format!("{{url: '{vm}', bucket: bench, measurement: bench_sink_{run}, tags: [site, channel], fields: [latency_ms, status], batch: {{max_rows: {BATCH}}}}}");
        let influx = through_sink(&tributary_influx::InfluxSinkPlugin, &yaml, base, rows).await;

        // prometheus_remote_write → VictoriaMetrics.
        let raw_rw = raw_posts(&format!("{vm}/api/v1/write"), "application/x-protobuf", remote_write_requests(&format!("bench_rw_raw_{run}"), base, rows), rows * 2).await;
        let yaml = format!(
            "{{endpoint: '{vm}/api/v1/write', batch: {{max_rows: {BATCH}}}, metrics: [{{name: bench_rw_sink_{run}_latency_ms, value: latency_ms, labels: [site, channel]}}, {{name: bench_rw_sink_{run}_status, value: status, labels: [site, channel]}}]}}"
        );
        let remote_write = through_sink(&tributary_prometheus::RemoteWriteSinkPlugin, &yaml, base, rows).await;

        // otlp → rotel-agent (blackhole exporter).
        let (port, grpc) = (free_port(), free_port());
        let mut rotel = std::process::Command::new(rotel_agent())
            .args(["start", "--otlp-http-endpoint", &format!("127.0.0.1:{port}"), "--otlp-grpc-endpoint", &format!("127.0.0.1:{grpc}"), "--exporter", "blackhole"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("rotel-agent (pip install rotel)");
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let url = format!("http://127.0.0.1:{port}/v1/metrics");
        let raw_otlp = raw_posts(&url, "application/x-protobuf", otlp_requests(base, rows), rows * 2).await;
        let yaml = format!(
            "{{endpoint: '{url}', batch: {{max_rows: {BATCH}}}, metrics: [{{name: latency_ms, kind: gauge, value: latency_ms, attributes: [site, channel]}}, {{name: status, kind: gauge, value: status, attributes: [site, channel]}}]}}"
        );
        let otlp = through_sink(&tributary_otlp::OtlpSinkPlugin, &yaml, base, rows).await;
        rotel.kill().unwrap();
        let _ = rotel.wait();

        println!("metrics sinks, {rows} rows × 2 values = {} points, batches of {BATCH} rows:", rows * 2);
        println!("  influx → VictoriaMetrics: baseline raw line-protocol POSTs {raw_influx:>10.0} points/s");
        println!("                            influx sink                      {influx:>10.0} points/s  ({:.0}% of baseline)", influx / raw_influx * 100.0);
        println!("  remote write → VictoriaMetrics: baseline raw snappy POSTs {raw_rw:>10.0} points/s");
        println!("                            remote-write sink                {remote_write:>10.0} points/s  ({:.0}% of baseline)", remote_write / raw_rw * 100.0);
        println!("  otlp/HTTP → rotel-agent:  baseline raw protobuf POSTs      {raw_otlp:>10.0} points/s");
        println!("                            otlp sink                        {otlp:>10.0} points/s  ({:.0}% of baseline)", otlp / raw_otlp * 100.0);
    });
}
