use std::sync::Arc;

use datafusion::arrow::array::{Float64Array, Int64Array, StringArray, TimestampMicrosecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    metric, number_data_point, AggregationTemporality, HistogramDataPoint, Metric, NumberDataPoint,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tributary_sdk::config::event_time_type;
use tributary_testkit::{flush_retrying, free_port, sink_context, RotelReceiver};

use super::*;

const T0: i64 = 1_795_000_000_000_000; // µs

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("ts", event_time_type(), true),
        Field::new("channel", DataType::Utf8, true),
        Field::new("status", DataType::Int64, true),
        Field::new("events", DataType::Int64, true),
        Field::new("score", DataType::Float64, true),
    ]))
}

type Row<'a> = (Option<i64>, Option<&'a str>, Option<i64>, Option<i64>, Option<f64>);

fn batch(rows: &[Row]) -> RecordBatch {
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(TimestampMicrosecondArray::from(rows.iter().map(|r| r.0).collect::<Vec<_>>()).with_timezone("UTC")),
            Arc::new(StringArray::from(rows.iter().map(|r| r.1).collect::<Vec<_>>())),
            Arc::new(Int64Array::from(rows.iter().map(|r| r.2).collect::<Vec<_>>())),
            Arc::new(Int64Array::from(rows.iter().map(|r| r.3).collect::<Vec<_>>())),
            Arc::new(Float64Array::from(rows.iter().map(|r| r.4).collect::<Vec<_>>())),
        ],
    )
    .unwrap()
}

fn layout(yaml: &str) -> Layout {
    let cfg: OtlpSinkConfig = serde_yaml::from_str(yaml).unwrap();
    cfg.validate().unwrap();
    Layout::new(&cfg, &schema()).unwrap()
}

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue { key: key.into(), value: Some(AnyValue { value: Some(value) }), ..Default::default() }
}
fn s(key: &str, v: &str) -> KeyValue {
    kv(key, any_value::Value::StringValue(v.into()))
}
fn ns(us: i64) -> u64 {
    us as u64 * 1000
}

const METRICS: &str = "
endpoint: http://x
aggregation_temporality: delta
resource: {deployment.environment: lab}
metrics:
  - {name: badge.events, kind: gauge, value: events, attributes: [channel, {column: status, name: http.status}], unit: '1', description: events per minute}
  - {name: badge.events.total, kind: counter, value: events, attributes: [channel]}
  - {name: badge.delta, kind: counter, value: events, temporality: delta}
  - {name: badge.score, kind: histogram, value: score, attributes: [channel], buckets: [5, 10, 100]}
";

#[test]
fn rows_become_typed_points_with_their_own_times_and_rows_without_time_are_rejected() {
    let layout = layout(METRICS);
    let mut clock = SeriesState::default();
    let rows = batch(&[
        (Some(T0), Some("fact"), Some(200), Some(3), Some(1.0)),
        (Some(T0 + 60_000_000), Some("fact"), None, Some(5), Some(5.0)),
        (Some(T0 + 30_000_000), Some("a b,c=d"), Some(500), None, Some(7.0)),
        (None, Some("fact"), Some(200), Some(9), Some(1.0)),
        (Some(T0 + 90_000_000), Some("fact"), Some(200), Some(8), Some(20000.0)),
        (Some(T0 + 10_000_000), Some("fact"), Some(200), Some(1), Some(100.0)),
    ]);
    let (request, rejected) = layout.request(&rows, &mut clock).unwrap();
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].reason, "time column `ts` is null");
    assert_eq!(rejected[0].payload, r#"{"channel":"fact","status":200,"events":9,"score":1.0}"#);

    let request = request.unwrap();
    let rm = &request.resource_metrics[0];
    assert_eq!(rm.resource.as_ref().unwrap().attributes, [s("service.name", "tributary"), s("deployment.environment", "lab")]);
    let scope = &rm.scope_metrics[0];
    assert_eq!(scope.scope.as_ref().unwrap().name, "tributary");
    let names: Vec<&str> = scope.metrics.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["badge.events", "badge.events.total", "badge.delta", "badge.score"]);

    let gauge = &scope.metrics[0];
    assert_eq!((gauge.unit.as_str(), gauge.description.as_str()), ("1", "events per minute"));
    let Some(metric::Data::Gauge(g)) = &gauge.data else { panic!("{gauge:?}") };
    let point = |t: i64, attrs: Vec<KeyValue>, v: i64| NumberDataPoint {
        attributes: attrs,
        time_unix_nano: ns(t),
        value: Some(number_data_point::Value::AsInt(v)),
        ..Default::default()
    };
    // The row with a null value gives no point; a null attribute is left out; renamed and typed.
    assert_eq!(
        g.data_points,
        [
            point(T0, vec![s("channel", "fact"), kv("http.status", any_value::Value::IntValue(200))], 3),
            point(T0 + 60_000_000, vec![s("channel", "fact")], 5),
            point(T0 + 90_000_000, vec![s("channel", "fact"), kv("http.status", any_value::Value::IntValue(200))], 8),
            point(T0 + 10_000_000, vec![s("channel", "fact"), kv("http.status", any_value::Value::IntValue(200))], 1),
        ]
    );

    // Cumulative: every point of a series starts at the earliest time the sink saw it.
    let Some(metric::Data::Sum(total)) = &scope.metrics[1].data else { panic!() };
    assert!(total.is_monotonic);
    assert_eq!(total.aggregation_temporality, AggregationTemporality::Cumulative as i32);
    let starts: Vec<(u64, u64)> = total.data_points.iter().map(|p| (p.start_time_unix_nano, p.time_unix_nano)).collect();
    assert_eq!(starts, [(ns(T0), ns(T0)), (ns(T0), ns(T0 + 60_000_000)), (ns(T0), ns(T0 + 90_000_000)), (ns(T0), ns(T0 + 10_000_000))]);

    // Delta: a point starts where the series' previous one ended; an out-of-order row starts at itself.
    let Some(metric::Data::Sum(delta)) = &scope.metrics[2].data else { panic!() };
    assert_eq!(delta.aggregation_temporality, AggregationTemporality::Delta as i32);
    let starts: Vec<(u64, u64)> = delta.data_points.iter().map(|p| (p.start_time_unix_nano, p.time_unix_nano)).collect();
    assert_eq!(
        starts,
        [
            (ns(T0), ns(T0)),
            (ns(T0), ns(T0 + 60_000_000)),
            (ns(T0 + 60_000_000), ns(T0 + 90_000_000)),
            (ns(T0 + 10_000_000), ns(T0 + 10_000_000))
        ]
    );

    // Histogram: one point per attribute set; bucket i holds (bounds[i-1], bounds[i]].
    let Some(metric::Data::Histogram(h)) = &scope.metrics[3].data else { panic!() };
    assert_eq!(
        h.data_points,
        [
            HistogramDataPoint {
                attributes: vec![s("channel", "fact")],
                start_time_unix_nano: ns(T0),
                time_unix_nano: ns(T0 + 90_000_000),
                count: 4,
                sum: Some(20106.0),
                bucket_counts: vec![2, 0, 1, 1],
                explicit_bounds: vec![5.0, 10.0, 100.0],
                min: Some(1.0),
                max: Some(20000.0),
                ..Default::default()
            },
            HistogramDataPoint {
                attributes: vec![s("channel", "a b,c=d")],
                start_time_unix_nano: ns(T0 + 30_000_000),
                time_unix_nano: ns(T0 + 30_000_000),
                count: 1,
                sum: Some(7.0),
                bucket_counts: vec![0, 1, 0, 0],
                explicit_bounds: vec![5.0, 10.0, 100.0],
                min: Some(7.0),
                max: Some(7.0),
                ..Default::default()
            },
        ]
    );

    // The next export continues the series: cumulative start stays, delta starts at the last end.
    let (next, _) = layout.request(&batch(&[(Some(T0 + 120_000_000), None, None, Some(20), None)]), &mut clock).unwrap();
    let next = next.unwrap();
    let metrics = &next.resource_metrics[0].scope_metrics[0].metrics;
    let Some(metric::Data::Sum(delta)) = &metrics[2].data else { panic!() };
    assert_eq!(delta.data_points[0].start_time_unix_nano, ns(T0 + 90_000_000));
    let Some(metric::Data::Sum(total)) = &metrics[1].data else { panic!() };
    assert_eq!(
        (total.data_points[0].start_time_unix_nano, total.data_points[0].attributes.len()),
        (ns(T0 + 120_000_000), 0),
        "a new series (no channel) starts at its own first point"
    );
    assert_eq!(metrics.len(), 3, "no score values: no histogram");
}

/// The default `aggregation_temporality: cumulative`: a counter of increases is sent as its running
/// total per series, a histogram as everything the series saw since the sink started; both carry
/// the series' first time as start, across exports.
#[test]
fn increases_and_histograms_are_sent_cumulative_with_state_per_series() {
    let layout = layout(
        "
endpoint: http://x
metrics:
  - {name: events_total, kind: counter, value: events, temporality: delta, attributes: [channel]}
  - {name: score, kind: histogram, value: score, attributes: [channel], buckets: [5, 10]}
",
    );
    let mut series = SeriesState::default();
    let export = |series: &mut SeriesState, rows: &[Row]| {
        let request = layout.request(&batch(rows), series).unwrap().0.unwrap();
        request.resource_metrics[0].scope_metrics[0].metrics.clone()
    };
    let sums = |m: &Metric| -> Vec<(String, u64, u64, i64)> {
        let Some(metric::Data::Sum(sum)) = &m.data else { panic!("{m:?}") };
        assert_eq!((sum.aggregation_temporality, sum.is_monotonic), (AggregationTemporality::Cumulative as i32, true));
        sum.data_points
            .iter()
            .map(|p| {
                let Some(any_value::Value::StringValue(ch)) = p.attributes[0].value.as_ref().unwrap().value.clone() else { panic!() };
                let Some(number_data_point::Value::AsInt(v)) = p.value else { panic!() };
                (ch, p.start_time_unix_nano, p.time_unix_nano, v)
            })
            .collect()
    };
    let first = export(
        &mut series,
        &[
            (Some(T0), Some("fact"), None, Some(3), Some(1.0)),
            (Some(T0), Some("news"), None, Some(10), Some(7.0)),
            (Some(T0 + 60_000_000), Some("fact"), None, Some(4), Some(20.0)),
        ],
    );
    assert_eq!(
        sums(&first[0]),
        [("fact".into(), ns(T0), ns(T0), 3), ("news".into(), ns(T0), ns(T0), 10), ("fact".into(), ns(T0), ns(T0 + 60_000_000), 7)]
    );
    let second = export(&mut series, &[(Some(T0 + 120_000_000), Some("fact"), None, Some(5), Some(6.0))]);
    assert_eq!(sums(&second[0]), [("fact".into(), ns(T0), ns(T0 + 120_000_000), 12)], "3 + 4 + 5 since the series started");

    let Some(metric::Data::Histogram(h)) = &second[1].data else { panic!() };
    assert_eq!(h.aggregation_temporality, AggregationTemporality::Cumulative as i32);
    assert_eq!(
        h.data_points,
        [HistogramDataPoint {
            attributes: vec![s("channel", "fact")],
            start_time_unix_nano: ns(T0),
            time_unix_nano: ns(T0 + 120_000_000),
            count: 3,
            sum: Some(27.0),
            bucket_counts: vec![1, 1, 1],
            explicit_bounds: vec![5.0, 10.0],
            min: Some(1.0),
            max: Some(20.0),
            ..Default::default()
        }],
        "the first export's two fact rows and this one's; the news series is not re-sent"
    );
}

#[test]
fn config_errors_name_the_field() {
    let err = |yaml: &str| {
        let cfg = ComponentConfig::from_yaml("otlp", yaml);
        OtlpSinkPlugin.build(&cfg, &[("in".into(), schema())]).err().map(|e| e.to_string()).unwrap()
    };
    assert_eq!(err("{endpoint: 'x:4317', metrics: [{name: a, kind: gauge, value: events}]}"), "endpoint: `x:4317` is not an http(s) URL");
    assert_eq!(err("{endpoint: 'http://x', metrics: []}"), "metrics: at least one metric is required");
    assert_eq!(
        err("{endpoint: 'http://x', metrics: [{name: a, kind: gauge, value: channel}]}"),
        "metrics[0].value: column `channel` is Utf8, expected a number"
    );
    assert_eq!(
        err("{endpoint: 'http://x', metrics: [{name: a, kind: gauge, value: nope}]}"),
        "metrics[0].value: column `nope` is not in the input (columns: ts, channel, status, events, score)"
    );
    assert_eq!(
        err("{endpoint: 'http://x', metrics: [{name: a, kind: histogram, value: score, buckets: [10, 5]}]}"),
        "metrics[0].buckets: bucket bounds must be finite and strictly ascending"
    );
    assert_eq!(
        err("{endpoint: 'http://x', metrics: [{name: a, kind: gauge, value: score, buckets: [1]}]}"),
        "metrics[0].buckets: only histograms have buckets"
    );
    assert_eq!(
        err("{endpoint: 'http://x', metrics: [{name: a, kind: summary, value: score}]}"),
        "metrics[0].kind: unknown variant `summary`, expected one of `gauge`, `counter`, `histogram`"
    );
    assert_eq!(
        err("{endpoint: 'http://x', headers: {'bad header': x}, metrics: [{name: a, kind: gauge, value: score}]}"),
        "headers: `bad header` is not a valid header name"
    );
    assert_eq!(
        err("{endpoint: 'http://x', time_column: channel, metrics: [{name: a, kind: gauge, value: score}]}"),
        "time_column: column `channel` is Utf8, expected a timestamp"
    );
}

// ---- against a real OTLP receiver -------------------------------------------------------------

async fn export_through(protocol: &str, endpoint: &str) -> (Arc<tributary_sdk::ComponentMetrics>, usize) {
    let yaml = METRICS
        .replace("endpoint: http://x", &format!("endpoint: '{endpoint}'\nprotocol: {protocol}\nheaders: {{x-tenant: lab}}"))
        .replace("{deployment.environment: lab}", "{service.name: badges}");
    let cfg = ComponentConfig::from_yaml("otlp", &yaml);
    let mut sink = OtlpSinkPlugin.build(&cfg, &[("in".into(), schema())]).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    let ctx = sink_context("otlp");
    sink.start(&ctx).await.unwrap();
    let rows = batch(&[
        (Some(T0), Some("fact"), Some(200), Some(3), Some(1.0)),
        (Some(T0 + 60_000_000), Some("a b,c=d"), Some(500), Some(5), Some(7.5)),
    ]);
    assert_eq!(sink.write(rows, &ctx).await.unwrap(), Written::buffered());
    let letters = sink.flush(&ctx).await.unwrap().len();
    (ctx.metrics.clone(), letters)
}

fn assert_received(out: &str) {
    for expected in [
        "-> service.name: Str(badges)",
        "InstrumentationScope tributary",
        "-> Name: badge.events\n     -> Description: events per minute\n     -> Unit: 1\n     -> DataType: Gauge",
        "-> Name: badge.events.total",
        "-> Name: badge.events.total\n     -> Description:\n     -> Unit:\n     -> DataType: Sum\n     -> IsMonotonic: true\n     -> AggregationTemporality: AGGREGATION_TEMPORALITY_CUMULATIVE",
        "-> Name: badge.delta\n     -> Description:\n     -> Unit:\n     -> DataType: Sum\n     -> IsMonotonic: true\n     -> AggregationTemporality: AGGREGATION_TEMPORALITY_DELTA",
        // The delta series' second point starts where the first ended.
        &format!("StartTimestamp: {}\nTimestamp: {}\nValue: 5", ns(T0), ns(T0 + 60_000_000)),
        "-> Name: badge.score",
        "-> DataType: Histogram",
        "-> channel: Str(fact)\n     -> http.status: Int(200)",
        "-> channel: Str(a b,c=d)\n     -> http.status: Int(500)",
        "Value: 3",
        "Value: 5",
        &format!("Timestamp: {}", ns(T0 + 60_000_000)),
        "Count: 1\nSum: 7.5\nMin: 7.5\nMax: 7.5\nExplicitBounds #0: 5\nExplicitBounds #1: 10\nExplicitBounds #2: 100\nBuckets #0, Count: 0\nBuckets #1, Count: 1\nBuckets #2, Count: 0\nBuckets #3, Count: 0",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
}

#[tokio::test]
async fn exports_over_http_and_grpc_to_a_real_receiver() {
    let receiver = RotelReceiver::start().await;
    let (metrics, letters) = export_through("http", &format!("http://127.0.0.1:{}/v1/metrics", receiver.http)).await;
    assert_eq!((letters, metrics.errors.get(), metrics.retries.get()), (0, 0, 0));
    assert_received(&receiver.output_with("-> Name: badge.score", 0).await);

    let from = receiver.mark();
    let (metrics, letters) = export_through("grpc", &format!("http://127.0.0.1:{}", receiver.grpc)).await;
    assert_eq!((letters, metrics.errors.get(), metrics.retries.get()), (0, 0, 0));
    assert_received(&receiver.output_with("-> Name: badge.score", from).await);
}

#[tokio::test]
async fn refused_and_unreachable_exports_dead_letter_the_rows_with_the_reason() {
    let receiver = RotelReceiver::start().await;
    // A path the receiver does not serve: 404 is not retryable.
    let endpoint = format!("http://127.0.0.1:{}/v1/nothing", receiver.http);
    let (metrics, letters) = export_through("http", &endpoint).await;
    assert_eq!((letters, metrics.retries.get()), (2, 0), "both rows refused at once, no retry");

    // Nothing listens: a transient failure that keeps the request for the engine's retry; the
    // rows come back whole when the engine gives up.
    let port = free_port();
    let yaml = format!("{{endpoint: 'http://127.0.0.1:{port}/v1/metrics', metrics: [{{name: a, kind: gauge, value: score}}]}}");
    let mut sink = OtlpSinkPlugin.build(&ComponentConfig::from_yaml("otlp", &yaml), &[("in".into(), schema())]).unwrap();
    let ctx = sink_context("otlp");
    sink.write(batch(&[(Some(T0), None, None, None, Some(2.0))]), &ctx).await.unwrap();
    for _ in 0..2 {
        let err = sink.flush(&ctx).await.unwrap_err().to_string();
        assert!(err.starts_with(&format!("exporting to http://127.0.0.1:{port}/v1/metrics: error sending request")), "{err}");
    }
    let held = sink.take_buffered();
    assert_eq!(held.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
    assert_eq!(sink.flush(&ctx).await.unwrap(), vec![], "nothing left after the rows were taken back");
}

/// A receiver that answers 503 to the first request and 200 to the next: the export is retried
/// and lands once.
#[tokio::test]
async fn retryable_answers_are_retried_until_accepted_with_the_configured_headers() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let mut bodies = Vec::new();
        for status in ["503 Service Unavailable", "200 OK"] {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 65536];
            let mut got = Vec::new();
            // Read headers and the Content-Length body.
            loop {
                let n = conn.read(&mut buf).await.unwrap();
                got.extend_from_slice(&buf[..n]);
                if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
                    let len: usize = head.lines().find_map(|l| l.strip_prefix("content-length: ")).unwrap().trim().parse().unwrap();
                    if got.len() >= end + 4 + len {
                        bodies.push((head, got[end + 4..end + 4 + len].to_vec()));
                        break;
                    }
                }
            }
            conn.write_all(format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").as_bytes()).await.unwrap();
        }
        bodies
    });
    let yaml = format!("{{endpoint: 'http://127.0.0.1:{port}/v1/metrics', headers: {{X-Api-Key: k-123}}, metrics: [{{name: a, kind: gauge, value: score}}]}}");
    let mut sink = OtlpSinkPlugin.build(&ComponentConfig::from_yaml("otlp", &yaml), &[("in".into(), schema())]).unwrap();
    let ctx = sink_context("otlp");
    sink.write(batch(&[(Some(T0), None, None, None, Some(2.5))]), &ctx).await.unwrap();
    assert_eq!(flush_retrying(sink.as_mut(), &ctx, 3).await, vec![], "nothing dead-lettered");
    assert_eq!((ctx.metrics.retries.get(), ctx.metrics.errors.get()), (1, 0));
    let bodies = server.await.unwrap();
    assert_eq!(bodies[0].1, bodies[1].1, "the same request is sent again");
    for (head, _) in &bodies {
        assert!(head.contains("\r\nx-api-key: k-123") && head.contains("\r\ncontent-type: application/x-protobuf"), "{head}");
    }
    let bodies: Vec<Vec<u8>> = bodies.into_iter().map(|(_, b)| b).collect();
    let request =
        <opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest as prost::Message>::decode(bodies[1].as_slice())
            .unwrap();
    let Some(metric::Data::Gauge(g)) = &request.resource_metrics[0].scope_metrics[0].metrics[0].data else { panic!() };
    assert_eq!(g.data_points[0].value, Some(number_data_point::Value::AsDouble(2.5)));
}

/// Delta points towards a receiver known to drop them is a warning (`validate` prints it, a run
/// logs it); cumulative, a forwarder, or delta with nothing aggregated is not.
#[test]
fn delta_towards_a_cumulative_only_receiver_is_a_warning() {
    let warnings = |yaml: &str| {
        let sink =
            OtlpSinkPlugin.build(&ComponentConfig::from_yaml("otlp", yaml), &[("in".into(), schema())]).map_err(|e| e.to_string()).unwrap();
        sink.warnings()
    };
    let metrics = "[{name: a, kind: gauge, value: score}, {name: h, kind: histogram, value: score}, {name: c, kind: counter, value: events, temporality: delta}]";
    assert_eq!(
        warnings(&format!("{{endpoint: 'http://vm:8428/opentelemetry/api/v1/push', aggregation_temporality: delta, metrics: {metrics}}}")),
        ["aggregation_temporality: delta sends delta sums and histograms (h, c), which VictoriaMetrics (up to v1.131; its `vm_protoparser_rows_dropped_total` counts them) answers with success and drops; use `cumulative`"]
    );
    assert_eq!(
        warnings(&format!("{{endpoint: 'http://prom:9090/api/v1/otlp/v1/metrics/', aggregation_temporality: delta, metrics: {metrics}}}")),
        ["aggregation_temporality: delta sends delta sums and histograms (h, c), which Prometheus (unless its experimental delta-to-cumulative feature is on) answers with success and drops; use `cumulative`"]
    );
    assert!(warnings(&format!("{{endpoint: 'http://vm:8428/opentelemetry/api/v1/push', metrics: {metrics}}}")).is_empty(), "cumulative");
    assert!(
        warnings(&format!("{{endpoint: 'http://collector:4318/v1/metrics', aggregation_temporality: delta, metrics: {metrics}}}"))
            .is_empty(),
        "a forwarder"
    );
    assert!(
        warnings("{endpoint: 'http://vm:8428/opentelemetry/api/v1/push', aggregation_temporality: delta, metrics: [{name: a, kind: gauge, value: score}]}")
            .is_empty(),
        "nothing aggregated: gauges are sent as they are"
    );
}
