use std::sync::Arc;

use datafusion::arrow::array::{Float64Array, Int64Array, StringArray, TimestampMicrosecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use serde_json::json;
use tributary_sdk::config::event_time_type;
use tributary_testkit::sink_context;

use super::*;
use crate::wire::{Label, Sample, TimeSeries, WriteRequest};

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("ts", event_time_type(), true),
        Field::new("channel", DataType::Utf8, true),
        Field::new("events", DataType::Int64, true),
        Field::new("score", DataType::Float64, true),
    ]))
}

type Row<'a> = (Option<i64>, Option<&'a str>, Option<i64>, Option<f64>);

fn batch(rows: &[Row]) -> RecordBatch {
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(TimestampMicrosecondArray::from(rows.iter().map(|r| r.0).collect::<Vec<_>>()).with_timezone("UTC")),
            Arc::new(StringArray::from(rows.iter().map(|r| r.1).collect::<Vec<_>>())),
            Arc::new(Int64Array::from(rows.iter().map(|r| r.2).collect::<Vec<_>>())),
            Arc::new(Float64Array::from(rows.iter().map(|r| r.3).collect::<Vec<_>>())),
        ],
    )
    .unwrap()
}

fn build(yaml: &str) -> Result<Box<dyn Sink>, String> {
    RemoteWriteSinkPlugin.build(&ComponentConfig::from_yaml("rw", yaml), &[("in".into(), schema())]).map_err(|e| e.to_string())
}

fn err(yaml: &str) -> String {
    match build(yaml) {
        Ok(_) => panic!("accepted: {yaml}"),
        Err(e) => e,
    }
}

#[test]
fn config_errors_name_the_option() {
    assert_eq!(
        err("{endpoint: 'vm:8428/api/v1/write', metrics: [{name: a, value: events}]}"),
        "endpoint: `vm:8428/api/v1/write` is not an http(s) URL"
    );
    assert_eq!(err("{endpoint: 'http://vm', metrics: []}"), "metrics: at least one metric is required");
    assert_eq!(
        err("{endpoint: 'http://vm', metrics: [{name: badge.events, value: events}]}"),
        "metrics[0].name: `badge.events` is not a Prometheus metric name ([a-zA-Z_:][a-zA-Z0-9_:]*)"
    );
    assert_eq!(
        err("{endpoint: 'http://vm', metrics: [{name: a, value: channel}]}"),
        "metrics[0].value: column `channel` is Utf8, expected a number"
    );
    assert_eq!(
        err("{endpoint: 'http://vm', metrics: [{name: a, value: events, labels: [nope]}]}"),
        "metrics[0].labels: column `nope` is not in the input (columns: ts, channel, events, score)"
    );
    assert_eq!(
        err("{endpoint: 'http://vm', metrics: [{name: a, value: events, labels: [{column: channel, name: __name__}]}]}"),
        "metrics[0].labels: `__name__` is not a Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*, no `__` prefix)"
    );
    assert_eq!(
        err("{endpoint: 'http://vm', external_labels: {channel: x}, metrics: [{name: a, value: events, labels: [channel]}]}"),
        "metrics[0].labels: label `channel` is given twice (a series has one value per label)"
    );
    assert_eq!(
        err("{endpoint: 'http://vm', time_column: channel, metrics: [{name: a, value: events}]}"),
        "time_column: column `channel` is Utf8, expected a timestamp"
    );
    assert!(err("{endpoint: 'http://vm', metric: []}").contains("unknown field `metric`"));
}

fn request(yaml: &str, rows: &[Row]) -> (Option<WriteRequest>, Vec<DeadLetter>) {
    let cfg: RemoteWriteConfig = serde_yaml::from_str(yaml).unwrap();
    Layout::new(&cfg, &schema()).unwrap().request(&batch(rows)).unwrap()
}

fn labels(pairs: &[(&str, &str)]) -> Vec<Label> {
    pairs.iter().map(|(n, v)| Label { name: n.to_string(), value: v.to_string() }).collect()
}

/// One series per metric and label set, labels sorted with `__name__`, samples in time order
/// and in milliseconds; null values give no sample, null or empty labels are left out, and a row
/// without a time is a dead letter.
#[test]
fn rows_become_series_as_the_spec_orders_them() {
    let yaml = "{endpoint: 'http://vm', external_labels: {job: tributary}, metrics: [{name: badge_events, value: events, labels: [{column: channel, name: door}]}, {name: score, value: score}]}";
    let (request, rejected) = request(
        yaml,
        &[
            (Some(2_000_500), Some("north"), Some(3), Some(0.5)),
            (Some(1_000_000), Some("north"), Some(1), None),
            (Some(1_000_000), Some(""), Some(7), None),
            (Some(1_000_000), None, None, Some(1.5)),
            (None, Some("south"), Some(9), Some(9.0)),
        ],
    );
    let body = request.unwrap().body();
    let decoded = WriteRequest::from_body(&body).unwrap();
    assert_eq!(
        decoded.timeseries,
        vec![
            TimeSeries {
                labels: labels(&[("__name__", "badge_events"), ("door", "north"), ("job", "tributary")]),
                samples: vec![Sample { value: 1.0, timestamp: 1000 }, Sample { value: 3.0, timestamp: 2000 }]
            },
            TimeSeries {
                labels: labels(&[("__name__", "badge_events"), ("job", "tributary")]),
                samples: vec![Sample { value: 7.0, timestamp: 1000 }]
            },
            TimeSeries {
                labels: labels(&[("__name__", "score"), ("job", "tributary")]),
                samples: vec![Sample { value: 1.5, timestamp: 1000 }, Sample { value: 0.5, timestamp: 2000 }]
            },
        ]
    );
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].reason, "time column `ts` is null");
    assert_eq!(rejected[0].payload, r#"{"channel":"south","events":9,"score":9.0}"#);
    assert_eq!(
        WriteRequest::from_body(b"not snappy").unwrap_err(),
        "snappy: snappy: corrupt input (expected valid offset but got offset 1853038708; dst position: 0)"
    );
}

fn vm_url() -> String {
    tributary_testkit::test_victoriametrics_url()
}

/// GET on VictoriaMetrics.
async fn vm(path_and_query: &str) -> String {
    reqwest::get(format!("{}{path_and_query}", vm_url())).await.unwrap().text().await.unwrap()
}

/// Written to the real VictoriaMetrics, then read back with `/api/v1/export`: every sample, label
/// and timestamp exact.
#[tokio::test]
async fn writes_to_victoriametrics_and_reads_back_exact_samples() {
    let name = format!("tributary_rw_test_{}", std::process::id());
    let yaml = format!(
        "{{endpoint: '{}/api/v1/write', headers: {{Authorization: 'Bearer not-checked'}}, external_labels: {{job: test}}, metrics: [{{name: {name}, value: events, labels: [channel]}}], batch: {{max_rows: 2}}}}",
        vm_url()
    );
    let mut sink = build(&yaml).unwrap();
    let ctx = sink_context("rw");
    // Whole seconds near now: VictoriaMetrics drops samples outside its retention.
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64 * 1000;
    let first = sink.write(batch(&[(Some(now_ms * 1000), Some("a b=\"c\""), Some(12), None)]), &ctx).await.unwrap();
    assert_eq!(first, Written::buffered());
    let second = sink.write(batch(&[(Some((now_ms + 1000) * 1000), Some("plain"), Some(-4), None)]), &ctx).await.unwrap();
    assert_eq!(second.durability, Durability::BufferFull);
    assert_eq!(sink.flush(&ctx).await.unwrap(), vec![], "nothing dead-lettered");
    let mut lines: Vec<serde_json::Value> = Vec::new();
    for _ in 0..50 {
        vm("/internal/force_flush").await;
        let export = vm(&format!("/api/v1/export?match[]={{__name__=\"{name}\"}}")).await;
        lines = export.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        if lines.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    lines.sort_by_key(|l| l["metric"]["channel"].to_string());
    assert_eq!(
        lines,
        vec![
            json!({"metric": {"__name__": name, "channel": "a b=\"c\"", "job": "test"}, "values": [12], "timestamps": [now_ms]}),
            json!({"metric": {"__name__": name, "channel": "plain", "job": "test"}, "values": [-4], "timestamps": [now_ms + 1000]}),
        ]
    );
}

/// A 4xx answer refuses the request: its rows become dead letters with the receiver's message.
#[tokio::test]
async fn a_refused_write_dead_letters_the_rows_with_the_answer() {
    let yaml = format!("{{endpoint: '{}/api/v1/not-a-write-path', metrics: [{{name: a, value: events}}]}}", vm_url());
    let mut sink = build(&yaml).unwrap();
    let ctx = sink_context("rw");
    sink.write(batch(&[(Some(1_000_000), Some("x"), Some(1), None)]), &ctx).await.unwrap();
    let letters = sink.flush(&ctx).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].payload, r#"{"ts":"1970-01-01T00:00:01Z","channel":"x","events":1}"#);
    assert!(
        letters[0].reason.starts_with(&format!("{}/api/v1/not-a-write-path refused the write: HTTP 400 Bad Request: ", vm_url())),
        "{}",
        letters[0].reason
    );
}

#[tokio::test]
async fn an_unreachable_receiver_is_transient_and_the_rows_stay_buffered() {
    let port = tributary_testkit::free_port();
    let mut sink = build(&format!("{{endpoint: 'http://127.0.0.1:{port}/api/v1/write', metrics: [{{name: a, value: events}}]}}")).unwrap();
    let ctx = sink_context("rw");
    sink.write(batch(&[(Some(1_000_000), Some("x"), Some(1), None)]), &ctx).await.unwrap();
    for _ in 0..2 {
        let err = sink.flush(&ctx).await.unwrap_err().error.to_string();
        assert!(err.starts_with(&format!("writing to http://127.0.0.1:{port}/api/v1/write: ")), "{err}");
    }
    let held = sink.take_buffered();
    assert_eq!(tributary_sdk::dead_letter::rows_as_json(&held[0]), [r#"{"ts":"1970-01-01T00:00:01Z","channel":"x","events":1}"#]);
    assert_eq!(sink.flush(&ctx).await.unwrap(), vec![]);
}
