//! Requests as rows, exactly; what is refused and why; and the answer waiting for the ack.

use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::pretty::pretty_format_batches;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value::Value, AnyValue, InstrumentationScope, KeyValue, KeyValueList};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{
    metric::Data, number_data_point, summary_data_point::ValueAtQuantile, ExponentialHistogram, ExponentialHistogramDataPoint, Gauge,
    Histogram, HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, Summary, SummaryDataPoint,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span, ResourceSpans, ScopeSpans, Span, Status};
use prost::Message;
use tributary_sdk::{ComponentMetrics, Output};

use super::http::{decompressed, Encoding};
use super::rows::{Budget, Refusal};
use super::*;

/// 2023-11-14T22:13:20.123456789Z
const T: u64 = 1_700_000_000_123_456_789;
const RECEIVED_US: i64 = 1_800_000_000_000_000;

fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue { key: key.into(), value: Some(AnyValue { value: Some(value) }), ..Default::default() }
}
fn s(value: &str) -> Value {
    Value::StringValue(value.into())
}

fn resource() -> Option<Resource> {
    Some(Resource { attributes: vec![kv("service.name", s("checkout")), kv("host", s("a"))], ..Default::default() })
}
fn scope() -> Option<InstrumentationScope> {
    Some(InstrumentationScope { name: "meter".into(), version: "1.2".into(), ..Default::default() })
}

fn table(batch: &RecordBatch, columns: &[&str]) -> String {
    let indices: Vec<usize> = columns.iter().map(|c| batch.schema().index_of(c).unwrap()).collect();
    pretty_format_batches(&[batch.project(&indices).unwrap()]).unwrap().to_string()
}

fn point(value: Option<number_data_point::Value>, time: u64, attributes: Vec<KeyValue>) -> NumberDataPoint {
    NumberDataPoint { value, time_unix_nano: time, attributes, ..Default::default() }
}

fn metric(name: &str, data: Data) -> Metric {
    Metric { name: name.into(), data: Some(data), ..Default::default() }
}

fn metrics_request() -> ExportMetricsServiceRequest {
    use number_data_point::Value::{AsDouble, AsInt};
    let metrics = vec![
        Metric {
            description: "room temperature".into(),
            unit: "Cel".into(),
            ..metric(
                "temp",
                Data::Gauge(Gauge {
                    data_points: vec![
                        point(Some(AsDouble(21.5)), T, vec![kv("room", s("b1"))]),
                        point(Some(AsInt(7)), 0, vec![]),
                        point(None, T, vec![]),
                    ],
                }),
            )
        },
        metric(
            "requests",
            Data::Sum(Sum {
                data_points: vec![NumberDataPoint { start_time_unix_nano: T - 60_000_000_000, ..point(Some(AsInt(42)), T, vec![]) }],
                aggregation_temporality: 2,
                is_monotonic: true,
            }),
        ),
        metric(
            "latency",
            Data::Histogram(Histogram {
                data_points: vec![
                    HistogramDataPoint {
                        time_unix_nano: T,
                        count: 3,
                        sum: Some(0.6),
                        min: Some(0.1),
                        max: Some(0.3),
                        explicit_bounds: vec![0.1, 0.5],
                        bucket_counts: vec![1, 2, 0],
                        ..Default::default()
                    },
                    HistogramDataPoint {
                        time_unix_nano: T,
                        count: 1,
                        explicit_bounds: vec![0.1],
                        bucket_counts: vec![1, 0],
                        ..Default::default()
                    },
                ],
                aggregation_temporality: 1,
            }),
        ),
        metric(
            "rt",
            Data::Summary(Summary {
                data_points: vec![SummaryDataPoint {
                    time_unix_nano: T,
                    count: 4,
                    sum: 2.0,
                    quantile_values: vec![ValueAtQuantile { quantile: 0.5, value: 0.4 }, ValueAtQuantile { quantile: 0.99, value: 0.9 }],
                    ..Default::default()
                }],
            }),
        ),
        metric(
            "sizes",
            Data::ExponentialHistogram(ExponentialHistogram {
                data_points: vec![ExponentialHistogramDataPoint::default(), ExponentialHistogramDataPoint::default()],
                aggregation_temporality: 2,
            }),
        ),
    ];
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: resource(),
            scope_metrics: vec![ScopeMetrics { scope: scope(), metrics, schema_url: String::new() }],
            schema_url: String::new(),
        }],
    }
}

#[test]
fn metrics_are_one_row_per_data_point_and_the_rest_is_a_counted_rejection() {
    let request = metrics_request();
    assert_eq!(request.records(), 9);
    let (batch, rejected) = request.rows(RECEIVED_US, &mut Budget::for_body(1000)).unwrap();
    assert_eq!(
        table(&batch, &["ts", "start_ts", "name", "description", "unit", "type", "temporality", "monotonic", "value", "attributes"]),
        "\
+-----------------------------+-----------------------------+----------+------------------+------+-----------+-------------+-----------+-------+---------------+
| ts                          | start_ts                    | name     | description      | unit | type      | temporality | monotonic | value | attributes    |
+-----------------------------+-----------------------------+----------+------------------+------+-----------+-------------+-----------+-------+---------------+
| 2023-11-14T22:13:20.123456Z |                             | temp     | room temperature | Cel  | gauge     |             |           | 21.5  | {\"room\":\"b1\"} |
| 2027-01-15T08:00:00Z        |                             | temp     | room temperature | Cel  | gauge     |             |           | 7.0   | {}            |
| 2023-11-14T22:13:20.123456Z | 2023-11-14T22:12:20.123456Z | requests |                  |      | sum       | cumulative  | true      | 42.0  | {}            |
| 2023-11-14T22:13:20.123456Z |                             | latency  |                  |      | histogram | delta       |           |       | {}            |
| 2023-11-14T22:13:20.123456Z |                             | latency  |                  |      | histogram | delta       |           |       | {}            |
| 2023-11-14T22:13:20.123456Z |                             | rt       |                  |      | summary   |             |           |       | {}            |
+-----------------------------+-----------------------------+----------+------------------+------+-----------+-------------+-----------+-------+---------------+"
    );
    assert_eq!(
        table(&batch, &["name", "count", "sum", "min", "max", "bucket_bounds", "bucket_counts", "quantiles", "quantile_values"]),
        "\
+----------+-------+-----+-----+-----+---------------+---------------+-------------+-----------------+
| name     | count | sum | min | max | bucket_bounds | bucket_counts | quantiles   | quantile_values |
+----------+-------+-----+-----+-----+---------------+---------------+-------------+-----------------+
| temp     |       |     |     |     |               |               |             |                 |
| temp     |       |     |     |     |               |               |             |                 |
| requests |       |     |     |     |               |               |             |                 |
| latency  | 3     | 0.6 | 0.1 | 0.3 | [0.1, 0.5]    | [1, 2, 0]     |             |                 |
| latency  | 1     |     |     |     | [0.1]         | [1, 0]        |             |                 |
| rt       | 4     | 2.0 |     |     |               |               | [0.5, 0.99] | [0.4, 0.9]      |
+----------+-------+-----+-----+-----+---------------+---------------+-------------+-----------------+"
    );
    let origin = table(&batch.slice(0, 1), &["service_name", "resource", "scope_name", "scope_version"]);
    assert_eq!(
        origin,
        "\
+--------------+----------------------------------------+------------+---------------+
| service_name | resource                               | scope_name | scope_version |
+--------------+----------------------------------------+------------+---------------+
| checkout     | {\"host\":\"a\",\"service.name\":\"checkout\"} | meter      | 1.2           |
+--------------+----------------------------------------+------------+---------------+"
    );
    assert_eq!(rejected.count, 3);
    assert_eq!(rejected.message(), "metric `temp`: a gauge point without a value (and 1 more rejections)",);
    let answer = ExportMetricsServiceRequest::response(rejected.count, rejected.message());
    assert_eq!(answer.partial_success.unwrap().rejected_data_points, 3);
    assert_eq!(ExportMetricsServiceRequest::response(0, String::new()).partial_success, None);
}

#[test]
fn histograms_with_inconsistent_buckets_or_counts_past_i64_are_rejected_by_name() {
    let bad = |p: HistogramDataPoint| ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![metric("h", Data::Histogram(Histogram { data_points: vec![p], aggregation_temporality: 2 }))],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let why = |p| {
        let (batch, rejected) = bad(p).rows(RECEIVED_US, &mut Budget::for_body(100)).unwrap();
        assert_eq!((batch.num_rows(), rejected.count), (0, 1));
        rejected.message()
    };
    assert_eq!(
        why(HistogramDataPoint { explicit_bounds: vec![1.0], bucket_counts: vec![1], count: 1, ..Default::default() }),
        "metric `h`: a histogram point with 1 bucket counts for 1 bounds (needs one more count than bounds)"
    );
    assert_eq!(why(HistogramDataPoint { count: u64::MAX, ..Default::default() }), "metric `h`: a histogram count above 2^63-1");
    assert_eq!(
        why(HistogramDataPoint { count: 1, explicit_bounds: vec![], bucket_counts: vec![u64::MAX], ..Default::default() }),
        "metric `h`: a histogram count above 2^63-1"
    );
}

#[test]
fn logs_are_one_row_per_record() {
    let records = vec![
        LogRecord {
            time_unix_nano: T,
            observed_time_unix_nano: T + 1_000,
            severity_number: 9,
            severity_text: "INFO".into(),
            body: Some(AnyValue { value: Some(s("door 4 opened")) }),
            attributes: vec![kv("door", Value::IntValue(4))],
            trace_id: vec![0xab; 16],
            span_id: vec![0x01; 8],
            ..Default::default()
        },
        LogRecord {
            observed_time_unix_nano: T,
            body: Some(AnyValue { value: Some(Value::KvlistValue(KeyValueList { values: vec![kv("k", Value::BoolValue(false))] })) }),
            event_name: "badge.denied".into(),
            ..Default::default()
        },
        LogRecord::default(),
    ];
    let request = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: resource(),
            scope_logs: vec![ScopeLogs { scope: None, log_records: records, schema_url: String::new() }],
            schema_url: String::new(),
        }],
    };
    assert_eq!(request.records(), 3);
    let (batch, rejected) = request.rows(RECEIVED_US, &mut Budget::for_body(100)).unwrap();
    assert_eq!(rejected.count, 0);
    assert_eq!(
        table(&batch, &["ts", "observed_ts", "severity_number", "severity_text", "body", "attributes", "event_name", "trace_id", "span_id"]),
        "\
+-----------------------------+-----------------------------+-----------------+---------------+---------------+------------+--------------+----------------------------------+------------------+
| ts                          | observed_ts                 | severity_number | severity_text | body          | attributes | event_name   | trace_id                         | span_id          |
+-----------------------------+-----------------------------+-----------------+---------------+---------------+------------+--------------+----------------------------------+------------------+
| 2023-11-14T22:13:20.123456Z | 2023-11-14T22:13:20.123457Z | 9               | INFO          | door 4 opened | {\"door\":4} |              | abababababababababababababababab | 0101010101010101 |
| 2023-11-14T22:13:20.123456Z | 2023-11-14T22:13:20.123456Z |                 |               | {\"k\":false}   | {}         | badge.denied |                                  |                  |
| 2027-01-15T08:00:00Z        |                             |                 |               |               | {}         |              |                                  |                  |
+-----------------------------+-----------------------------+-----------------+---------------+---------------+------------+--------------+----------------------------------+------------------+"
    );
    assert_eq!(
        table(&batch.slice(0, 1), &["service_name", "scope_name"]),
        "\
+--------------+------------+
| service_name | scope_name |
+--------------+------------+
| checkout     |            |
+--------------+------------+"
    );
}

#[test]
fn spans_are_one_row_per_span_and_spans_without_ids_are_rejected() {
    let spans = vec![
        Span {
            trace_id: (1..=16).collect(),
            span_id: vec![2; 8],
            parent_span_id: vec![3; 8],
            name: "GET /badges".into(),
            kind: span::SpanKind::Server as i32,
            start_time_unix_nano: T,
            end_time_unix_nano: T + 1_500,
            attributes: vec![kv("http.status_code", Value::IntValue(500))],
            events: vec![span::Event {
                time_unix_nano: T + 10,
                name: "retry".into(),
                attributes: vec![kv("n", Value::IntValue(1))],
                dropped_attributes_count: 0,
            }],
            links: vec![span::Link { trace_id: vec![9; 16], span_id: vec![8; 8], ..Default::default() }],
            status: Some(Status { message: "boom".into(), code: 2 }),
            ..Default::default()
        },
        Span { trace_id: vec![1; 3], span_id: vec![2; 8], name: "short".into(), ..Default::default() },
        Span { trace_id: vec![1; 16], span_id: vec![0; 8], name: "zero".into(), ..Default::default() },
    ];
    let request = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: resource(),
            scope_spans: vec![ScopeSpans { scope: scope(), spans, schema_url: String::new() }],
            schema_url: String::new(),
        }],
    };
    assert_eq!(request.records(), 3);
    let (batch, rejected) = request.rows(RECEIVED_US, &mut Budget::for_body(100)).unwrap();
    assert_eq!(
        table(&batch, &["ts", "end_ts", "duration_ns", "trace_id", "span_id", "parent_span_id", "name", "kind", "status_code", "status_message"]),
        "\
+-----------------------------+-----------------------------+-------------+----------------------------------+------------------+------------------+-------------+--------+-------------+----------------+
| ts                          | end_ts                      | duration_ns | trace_id                         | span_id          | parent_span_id   | name        | kind   | status_code | status_message |
+-----------------------------+-----------------------------+-------------+----------------------------------+------------------+------------------+-------------+--------+-------------+----------------+
| 2023-11-14T22:13:20.123456Z | 2023-11-14T22:13:20.123458Z | 1500        | 0102030405060708090a0b0c0d0e0f10 | 0202020202020202 | 0303030303030303 | GET /badges | server | error       | boom           |
+-----------------------------+-----------------------------+-------------+----------------------------------+------------------+------------------+-------------+--------+-------------+----------------+"
    );
    assert_eq!(
        table(&batch, &["attributes", "events", "links"]),
        "\
+--------------------------+----------------------------------------------------------------------------+-------------------------------------------------------------------------------------------------------------------+
| attributes               | events                                                                     | links                                                                                                             |
+--------------------------+----------------------------------------------------------------------------+-------------------------------------------------------------------------------------------------------------------+
| {\"http.status_code\":500} | [{\"ts_unix_nano\":1700000000123456799,\"name\":\"retry\",\"attributes\":{\"n\":1}}] | [{\"trace_id\":\"09090909090909090909090909090909\",\"span_id\":\"0808080808080808\",\"trace_state\":null,\"attributes\":{}}] |
+--------------------------+----------------------------------------------------------------------------+-------------------------------------------------------------------------------------------------------------------+"
    );
    assert_eq!(rejected.count, 2);
    assert_eq!(rejected.message(), "span `short`: trace_id must be 16 bytes, not all zero (got 3 bytes) (and 1 more rejections)");
}

/// The OTLP/JSON of the specification's example (hex ids, int64 as strings, camelCase).
#[test]
fn otlp_json_is_decoded_as_the_spec_writes_it() {
    let json = br#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"my.service"}}]},
        "scopeSpans":[{"scope":{"name":"my.library","version":"1.0.0"},"spans":[{"traceId":"5B8EFFF798038103D269B633813FC60C",
        "spanId":"EEE19B7EC3C1B174","parentSpanId":"EEE19B7EC3C1B173","name":"I'm a server span","startTimeUnixNano":"1544712660000000000",
        "endTimeUnixNano":"1544712661000000000","kind":2,"attributes":[{"key":"my.span.attr","value":{"intValue":"42"}}]}]}]}]}"#;
    let request: ExportTraceServiceRequest = Encoding::Json.decode(json).unwrap();
    let (batch, _) = request.rows(RECEIVED_US, &mut Budget::for_body(json.len())).unwrap();
    assert_eq!(
        table(&batch, &["ts", "duration_ns", "trace_id", "span_id", "name", "kind", "attributes", "service_name", "scope_version"]),
        "\
+----------------------+-------------+----------------------------------+------------------+-------------------+--------+---------------------+--------------+---------------+
| ts                   | duration_ns | trace_id                         | span_id          | name              | kind   | attributes          | service_name | scope_version |
+----------------------+-------------+----------------------------------+------------------+-------------------+--------+---------------------+--------------+---------------+
| 2018-12-13T14:51:00Z | 1000000000  | 5b8efff798038103d269b633813fc60c | eee19b7ec3c1b174 | I'm a server span | server | {\"my.span.attr\":42} | my.service   | 1.0.0         |
+----------------------+-------------+----------------------------------+------------------+-------------------+--------+---------------------+--------------+---------------+"
    );
}

/// The protobuf bytes of a log request whose body is `depth` kvlists deep, built outward in one
/// pass: prost's encoder recomputes every level's length at every level (quadratic: minutes at
/// 30,000), and building and dropping the nested values recurses.
fn nested_log_request(depth: usize) -> Vec<u8> {
    fn varint(mut n: usize, out: &mut Vec<u8>) {
        while n >= 0x80 {
            out.push((n as u8) | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
    }
    let innermost = vec![0x0a, 1, b'x']; // AnyValue { string_value: "x" }
    let mut len = innermost.len();
    let mut prefixes: Vec<Vec<u8>> = Vec::new();
    // Each level is `head`, then the field's tag and length, then what is inside.
    let mut wrap = |head: &[u8], tag: u8| {
        let mut prefix = head.to_vec();
        prefix.push(tag);
        varint(len, &mut prefix);
        len += prefix.len();
        prefixes.push(prefix);
    };
    for _ in 0..depth {
        wrap(&[0x0a, 1, b'k'], 0x12); // KeyValue { key: "k", value }
        wrap(&[], 0x0a); // KeyValueList { values: [kv] }
        wrap(&[], 0x32); // AnyValue { kvlist_value }
    }
    for tag in [0x2a, 0x12, 0x12, 0x0a] {
        wrap(&[], tag); // LogRecord.body, ScopeLogs.log_records, ResourceLogs.scope_logs, request.resource_logs
    }
    prefixes.into_iter().rev().flatten().chain(innermost).collect()
}

#[test]
fn the_nested_request_is_what_prost_encodes() {
    let mut value = AnyValue { value: Some(s("x")) };
    for _ in 0..3 {
        let inner = KeyValue { key: "k".into(), value: Some(value), ..Default::default() };
        value = AnyValue { value: Some(Value::KvlistValue(KeyValueList { values: vec![inner] })) };
    }
    let record = LogRecord { body: Some(value), ..Default::default() };
    let scope = ScopeLogs { log_records: vec![record], ..Default::default() };
    let request = ExportLogsServiceRequest { resource_logs: vec![ResourceLogs { scope_logs: vec![scope], ..Default::default() }] };
    assert_eq!(nested_log_request(3), request.encode_to_vec());
}

/// Nesting 30,000 deep is a 400 naming the problem, in JSON and in protobuf, not a stack overflow.
#[test]
fn deeply_nested_values_are_refused_in_both_encodings() {
    let depth = 30_000;
    let json = format!(
        r#"{{"resourceLogs":[{{"scopeLogs":[{{"logRecords":[{{"body":{}"stringValue":"x"{}}}]}}]}}]}}"#,
        r#"{"kvlistValue":{"values":[{"key":"k","value":"#.repeat(depth),
        "}]}}".repeat(depth)
    );
    match Encoding::Json.decode::<ExportLogsServiceRequest>(json.as_bytes()) {
        Err(Refusal::Invalid(m)) => assert!(m.starts_with("not an OTLP JSON request: recursion limit exceeded at line 1 column"), "{m}"),
        other => panic!("{other:?}"),
    }
    let bytes = nested_log_request(depth);
    match Encoding::Protobuf.decode::<ExportLogsServiceRequest>(&bytes) {
        Err(Refusal::Invalid(m)) => assert!(m.starts_with("not an OTLP protobuf request: failed to decode Protobuf message: "), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        Encoding::Protobuf.decode::<ExportLogsServiceRequest>(b"\x0a\xff").unwrap_err(),
        Refusal::Invalid(
            "not an OTLP protobuf request: failed to decode Protobuf message: ExportLogsServiceRequest.resource_logs: invalid varint"
                .into()
        )
    );
}

/// A large resource repeated on many points stops at the budget instead of filling memory.
#[test]
fn a_request_whose_rows_would_be_too_large_is_refused_whole() {
    let resource = Some(Resource { attributes: vec![kv("big", s(&"x".repeat(1 << 20)))], ..Default::default() });
    let points = (0..100).map(|_| point(Some(number_data_point::Value::AsInt(1)), T, vec![])).collect();
    let request = ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource,
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![metric("g", Data::Gauge(Gauge { data_points: points }))],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let body = request.encoded_len();
    assert_eq!(
        request.rows(RECEIVED_US, &mut Budget::for_body(body)).unwrap_err(),
        Refusal::TooLarge(format!(
            "its rows would take more than 67108864 bytes decoded (the limit for a {body}-byte request: 16 times its size, at least 64 MiB); send fewer records per request"
        ))
    );
}

#[test]
fn gzip_is_undone_within_the_limit() {
    use std::io::Write;
    let gzip = |data: &[u8]| {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(data).unwrap();
        axum::body::Bytes::from(encoder.finish().unwrap())
    };
    let mut headers = axum::http::HeaderMap::new();
    headers.insert("content-encoding", "gzip".parse().unwrap());
    assert_eq!(&decompressed(&headers, gzip(b"abc"), 3).unwrap()[..], b"abc");
    assert_eq!(
        decompressed(&headers, gzip(&vec![0; 5 << 20]), 1 << 20).unwrap_err(),
        Refusal::TooLarge("the body decompresses to more than the limit of 1048576 bytes".into())
    );
    assert!(
        matches!(decompressed(&headers, "not gzip".into(), 10), Err(Refusal::Invalid(m)) if m.starts_with("the gzip body does not decompress: "))
    );
    headers.insert("content-encoding", "br".parse().unwrap());
    assert_eq!(
        decompressed(&headers, "x".into(), 10).unwrap_err(),
        Refusal::Invalid("Content-Encoding `br` is not supported: send gzip or none".into())
    );
}

fn receiver(outputs: [Output; 3]) -> Receiver {
    Receiver {
        id: "otel".into(),
        merged: outputs.clone().map(|o| tributary_sdk::merge::MergedOutput::start(o, 100).0),
        outputs,
        accept_timeout: Duration::from_millis(50),
        max_body: 1 << 20,
        token: Some(tributary_sdk::Secret::new("t0ken")),
        metrics: Arc::new(ComponentMetrics::default()),
    }
}

fn output(targets: Vec<(tokio::sync::mpsc::Sender<tributary_sdk::Delivery>, usize)>) -> Output {
    Output::new(targets, Arc::new(ComponentMetrics::default()), true)
}

/// The answer is the ack: no success before the sink has the rows written, a retryable answer when
/// the write failed or the pipeline stays full, and a rejection of everything when nothing reads
/// the signal.
#[tokio::test]
async fn the_answer_waits_for_the_rows_to_be_written() {
    let (tx, mut sink) = tokio::sync::mpsc::channel(1);
    let receiver = Arc::new(receiver([output(vec![(tx, 0)]), output(vec![]), output(vec![])]));
    let request = metrics_request();
    let answer = {
        let (receiver, request) = (receiver.clone(), request.clone());
        tokio::spawn(async move { receiver.take::<ExportMetricsServiceRequest>(request.records(), convert(&request, 1000)).await })
    };
    let delivery = sink.recv().await.unwrap();
    assert_eq!(delivery.batch.data.num_rows(), 6);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!answer.is_finished(), "answered before the rows were written");
    delivery.batch.acks.release();
    let message = "metric `temp`: a gauge point without a value (and 1 more rejections)".to_string();
    assert_eq!(answer.await.unwrap(), Answer::Accepted { rejected: 3, message: message.clone() });

    // A failed write: retryable.
    let failing = {
        let (receiver, request) = (receiver.clone(), request.clone());
        tokio::spawn(async move { receiver.take::<ExportMetricsServiceRequest>(request.records(), convert(&request, 1000)).await })
    };
    sink.recv().await.unwrap().batch.acks.fail();
    assert_eq!(failing.await.unwrap(), Answer::Busy("the rows were not written (a sink failed); retry later".into()));

    // Full for longer than `accept_timeout`: retryable, and nothing was sent.
    let held = {
        let (receiver, request) = (receiver.clone(), request.clone());
        tokio::spawn(async move { receiver.take::<ExportMetricsServiceRequest>(request.records(), convert(&request, 1000)).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let busy = receiver.take::<ExportMetricsServiceRequest>(request.records(), convert(&request, 1000)).await;
    assert_eq!(busy, Answer::Busy("the pipeline is busy (backpressure); retry later".into()));
    sink.recv().await.unwrap().batch.acks.release();
    assert_eq!(held.await.unwrap(), Answer::Accepted { rejected: 3, message });
    assert!(sink.try_recv().is_err());

    // Logs with nothing reading them.
    let logs = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            scope_logs: vec![ScopeLogs { log_records: vec![LogRecord::default(); 2], ..Default::default() }],
            ..Default::default()
        }],
    };
    assert_eq!(
        receiver.take::<ExportLogsServiceRequest>(logs.records(), convert(&logs, 10)).await,
        Answer::Accepted { rejected: 2, message: "nothing reads `otel.logs`: its 2 log records were dropped".into() }
    );
    assert!(receiver.authorized(Some("Bearer t0ken")));
    assert!(!receiver.authorized(Some("Bearer t0ke")));
    assert!(!receiver.authorized(None));
}
