use std::sync::Arc;

use datafusion::arrow::array::{BooleanArray, Float64Array, Int64Array, StringArray, TimestampMicrosecondArray};
use datafusion::arrow::datatypes::{Field, Schema};
use influxdb2::models::WriteDataPoint;
use tributary_sdk::config::event_time_type;
use tributary_testkit::sink_context;

use super::*;

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("ts", event_time_type(), true),
        Field::new("site", DataType::Utf8, true),
        Field::new("channel", DataType::Utf8, true),
        Field::new("latency_ms", DataType::Float64, true),
        Field::new("status", DataType::Int64, true),
        Field::new("ok", DataType::Boolean, true),
        Field::new("note", DataType::Utf8, true),
    ]))
}

type Row<'a> = (Option<i64>, Option<&'a str>, Option<&'a str>, Option<f64>, Option<i64>, Option<bool>, Option<&'a str>);

fn batch(rows: &[Row]) -> RecordBatch {
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(TimestampMicrosecondArray::from(rows.iter().map(|r| r.0).collect::<Vec<_>>()).with_timezone("UTC")),
            Arc::new(StringArray::from(rows.iter().map(|r| r.1).collect::<Vec<_>>())),
            Arc::new(StringArray::from(rows.iter().map(|r| r.2).collect::<Vec<_>>())),
            Arc::new(Float64Array::from(rows.iter().map(|r| r.3).collect::<Vec<_>>())),
            Arc::new(Int64Array::from(rows.iter().map(|r| r.4).collect::<Vec<_>>())),
            Arc::new(BooleanArray::from(rows.iter().map(|r| r.5).collect::<Vec<_>>())),
            Arc::new(StringArray::from(rows.iter().map(|r| r.6).collect::<Vec<_>>())),
        ],
    )
    .unwrap()
}

fn config(yaml: &str) -> InfluxSinkConfig {
    serde_yaml::from_str(yaml).unwrap()
}

fn line_protocol(points: &[DataPoint]) -> String {
    let mut out = Vec::new();
    for p in points {
        p.write_data_point_to(&mut out).unwrap();
    }
    String::from_utf8(out).unwrap()
}

#[test]
fn rows_become_escaped_line_protocol_and_unwritable_rows_are_rejected_with_the_reason() {
    let cfg = config("{url: 'http://x', bucket: b, measurement: 'probe results', tags: [site, channel]}");
    let layout = Layout::new(&cfg, &schema()).unwrap();
    let rows = batch(&[
        (Some(1_000_000), Some("a b,c=d"), Some(""), Some(1.5), Some(200), Some(true), Some("say \"hi\"")),
        (Some(2_000_000), None, Some("x"), None, Some(500), None, None),
        (None, Some("a"), None, Some(1.0), None, None, None),
        (Some(3_000_000), Some("a"), None, None, None, None, None),
    ]);
    let (points, point_rows, rejected) = points(&rows, &layout).unwrap();
    assert_eq!(point_rows, [0, 1], "the row of each point");
    assert_eq!(
        line_protocol(&points),
        "probe\\ results,site=a\\ b\\,c\\=d latency_ms=1.5,note=\"say \\\"hi\\\"\",ok=t,status=200i 1000000000\n\
         probe\\ results,channel=x status=500i 2000000000\n"
    );
    let reasons: Vec<&str> = rejected.iter().map(|d| d.reason.as_str()).collect();
    assert_eq!(reasons, ["time column `ts` is null", "every field of the row is null (a point needs at least one field)"]);
    assert_eq!(rejected[0].payload, r#"{"site":"a","latency_ms":1.0}"#);
}

#[test]
fn config_errors_name_the_field() {
    let err = |yaml: &str| {
        let cfg = ComponentConfig::from_yaml("m", yaml);
        InfluxSinkPlugin.build(&cfg, &[("in".into(), schema())]).err().map(|e| e.to_string()).unwrap()
    };
    assert_eq!(
        err("{url: 'http://x', bucket: b, tags: [site]}"),
        "measurement: set exactly one of `measurement` (a name) or `measurement_column`"
    );
    assert_eq!(
        err("{url: 'http://x', bucket: b, measurement: m, tags: [nope]}"),
        "tags: column `nope` is not in the input (columns: ts, site, channel, latency_ms, status, ok, note)"
    );
    assert_eq!(err("{url: 'x:8428', bucket: b, measurement: m}"), "url: `x:8428` is not an http(s) URL");
    assert_eq!(err("{url: 'http://x', bucket: b, measurement_column: status}"), "measurement_column: column `status` must be a string");
}

fn vm_url() -> String {
    tributary_testkit::test_victoriametrics_url()
}

/// GET on VictoriaMetrics with a tiny HTTP/1.0 client (the test needs no HTTP crate).
async fn vm(path_and_query: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let url = vm_url();
    let host = url.trim_start_matches("http://").trim_end_matches('/');
    let mut s =
        tokio::net::TcpStream::connect(host).await.unwrap_or_else(|e| panic!("VictoriaMetrics must run at {url} for this test ({e})"));
    s.write_all(format!("GET {path_and_query} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()
}

#[tokio::test]
async fn writes_to_victoriametrics_and_reads_back_values_and_awkward_labels() {
    let run = std::process::id();
    let measurement = format!("tributary_influx_test_{run}");
    let cfg = ComponentConfig::from_yaml(
        "vm",
        &format!("{{url: '{}', org: ops, bucket: telemetry, token: secret-token, measurement: {measurement}, tags: [site, channel], fields: [latency_ms, status], batch: {{max_rows: 2}}}}", vm_url()),
    );
    let mut sink = InfluxSinkPlugin.build(&cfg, &[("in".into(), schema())]).map_err(|e| e.to_string()).unwrap();
    let ctx = sink_context("vm");
    sink.start(&ctx).await.unwrap();
    // Whole seconds near now: VictoriaMetrics drops samples outside its retention.
    let now_us = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64 * 1_000_000;
    let first = sink.write(batch(&[(Some(now_us), Some("a b,c=d"), Some("x=y"), Some(12.5), Some(200), None, None)]), &ctx).await.unwrap();
    assert_eq!(first, Written::buffered());
    let second = sink.write(batch(&[(Some(now_us + 1_000_000), Some("plain"), None, Some(7.0), None, None, None)]), &ctx).await.unwrap();
    assert_eq!(second.durability, Durability::BufferFull, "batch.max_rows reached: the engine flushes");
    assert_eq!(sink.flush(&ctx).await.unwrap(), vec![], "nothing dead-lettered");

    // Newly created series become searchable a moment after ingestion: poll (bounded).
    let mut lines: Vec<serde_json::Value> = Vec::new();
    for _ in 0..50 {
        vm("/internal/force_flush").await;
        let export = vm(&format!("/api/v1/export?match[]=%7B__name__%3D~%22{measurement}_.*%22%7D")).await;
        lines = export.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        if lines.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    lines.sort_by_key(|l| l["metric"].to_string());
    let ms = now_us / 1000;
    assert_eq!(
        lines,
        vec![
            serde_json::json!({"metric": {"__name__": format!("{measurement}_latency_ms"), "channel": "x=y", "site": "a b,c=d"}, "values": [12.5], "timestamps": [ms]}),
            serde_json::json!({"metric": {"__name__": format!("{measurement}_latency_ms"), "site": "plain"}, "values": [7], "timestamps": [ms + 1000]}),
            serde_json::json!({"metric": {"__name__": format!("{measurement}_status"), "channel": "x=y", "site": "a b,c=d"}, "values": [200], "timestamps": [ms]}),
        ]
    );
}

#[tokio::test]
async fn an_unreachable_server_is_transient_and_the_rows_stay_buffered() {
    let cfg = ComponentConfig::from_yaml("down", "{url: 'http://127.0.0.1:1', bucket: b, measurement: m}");
    let mut sink = InfluxSinkPlugin.build(&cfg, &[("in".into(), schema())]).map_err(|e| e.to_string()).unwrap();
    let ctx = sink_context("down");
    sink.write(batch(&[(Some(1_000_000), Some("a"), None, Some(1.0), None, None, None)]), &ctx).await.unwrap();
    for _ in 0..2 {
        let err = sink.flush(&ctx).await.unwrap_err().to_string();
        assert!(err.starts_with("writing to http://127.0.0.1:1: "), "{err}");
    }
    // Given up on by the engine: the same rows come back, once.
    let held = sink.take_buffered();
    assert_eq!(tributary_sdk::dead_letter::rows_as_json(&held[0]), [r#"{"ts":"1970-01-01T00:00:01Z","site":"a","latency_ms":1.0}"#]);
    assert_eq!(sink.flush(&ctx).await.unwrap(), vec![]);
}
