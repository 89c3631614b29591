//! `/api/tables` and `/api/series` over a fixture lake whose binned values are worked out by hand
//! (tests/it/common/lake.rs), through the real HTTP server.

use crate::common;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use tributary::serve::{Lake, Limits, Tables};

async fn start_server(data: &std::path::Path, limits: Limits) -> (SocketAddr, CancellationToken) {
    let addr = common::free_addr();
    let stop = CancellationToken::new();
    let lake = Lake::new(Tables::Under(tributary_parquet::store::ObjectLocation::local(data).unwrap()), limits, false).unwrap();
    tokio::spawn(tributary::serve::serve(addr, lake, stop.clone()));
    common::wait_for_port(addr).await;
    (addr, stop)
}

async fn fixture(limits: Limits) -> (tempfile::TempDir, SocketAddr, CancellationToken) {
    let dir = tempfile::tempdir().unwrap();
    common::lake::write_fixture(dir.path());
    let (addr, stop) = start_server(dir.path(), limits).await;
    (dir, addr, stop)
}

async fn series(addr: SocketAddr, query: &[(&str, &str)]) -> (u16, Value) {
    let res = reqwest::Client::new().get(format!("http://{addr}/api/series")).query(query).send().await.unwrap();
    let status = res.status().as_u16();
    (status, serde_json::from_str(&res.text().await.unwrap()).unwrap())
}

fn points(answer: &Value) -> Vec<(Value, Vec<Value>)> {
    answer["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["group"].clone(), s["points"].as_array().unwrap().iter().map(|p| json!([p[0], p[1]])).collect()))
        .collect()
}

#[tokio::test]
async fn one_minute_averages_per_site_with_every_bin_present() {
    let (_dir, addr, _stop) = fixture(Limits::default()).await;
    let (status, answer) = series(
        addr,
        &[
            ("table", "latency"),
            ("value", "ms"),
            ("agg", "avg"),
            ("bin", "1m"),
            ("from", "2026-11-01T00:00:00Z"),
            ("to", "2026-11-01T00:05:00Z"),
            ("group_by", "site"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["bins"], 5);
    assert_eq!(answer["bin"], "1m");
    assert_eq!(
        points(&answer),
        vec![
            (
                json!("a"),
                vec![
                    json!(["2026-11-01T00:00:00Z", 15.0]),
                    json!(["2026-11-01T00:01:00Z", null]),
                    json!(["2026-11-01T00:02:00Z", null]),
                    json!(["2026-11-01T00:03:00Z", 30.5]),
                    json!(["2026-11-01T00:04:00Z", null]),
                ]
            ),
            (
                json!("b"),
                vec![
                    json!(["2026-11-01T00:00:00Z", null]),
                    json!(["2026-11-01T00:01:00Z", 5.0]),
                    json!(["2026-11-01T00:02:00Z", null]),
                    json!(["2026-11-01T00:03:00Z", null]),
                    json!(["2026-11-01T00:04:00Z", null]),
                ]
            ),
        ]
    );
}

#[tokio::test]
async fn a_bin_that_does_not_divide_the_range_counts_only_rows_inside_it() {
    let (_dir, addr, _stop) = fixture(Limits::default()).await;
    // 3-minute bins from 00:01 to 00:10: 00:00 (rows from 00:01 on), 00:03, 00:06 (empty), 00:09.
    let (status, answer) = series(
        addr,
        &[
            ("table", "latency"),
            ("value", "ms"),
            ("agg", "count"),
            ("bin", "3m"),
            ("from", "2026-11-01T00:01:00Z"),
            ("to", "2026-11-01T00:10:00Z"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        points(&answer),
        vec![(
            Value::Null,
            vec![
                json!(["2026-11-01T00:00:00Z", 1.0]),
                json!(["2026-11-01T00:03:00Z", 2.0]),
                json!(["2026-11-01T00:06:00Z", null]),
                json!(["2026-11-01T00:09:00Z", 1.0]),
            ]
        )]
    );
}

#[tokio::test]
async fn day_bins_follow_the_requested_offset_across_utc_date_partitions() {
    let (_dir, addr, _stop) = fixture(Limits::default()).await;
    // 1 November at +02:00 starts at 22:00 UTC on 31 October: that partition's rows belong to it.
    let (status, answer) = series(
        addr,
        &[
            ("table", "latency"),
            ("value", "ms"),
            ("agg", "sum"),
            ("bin", "1d"),
            ("tz", "+02:00"),
            ("from", "2026-11-01"),
            ("to", "2026-11-02"),
            ("group_by", "site"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["from"], "2026-11-01T00:00:00+02:00");
    assert_eq!(
        points(&answer),
        vec![
            (json!("a"), vec![json!(["2026-11-01T00:00:00+02:00", 290.0])]),
            (json!("b"), vec![json!(["2026-11-01T00:00:00+02:00", 52.0])])
        ]
    );
    // The same range in UTC day bins: two bins, the first from 22:00 on.
    let (status, answer) = series(
        addr,
        &[
            ("table", "latency"),
            ("value", "ms"),
            ("agg", "sum"),
            ("bin", "1d"),
            ("from", "2026-11-01T00:00:00+02:00"),
            ("to", "2026-11-02T00:00:00+02:00"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(points(&answer), vec![(Value::Null, vec![json!(["2026-10-31T00:00:00Z", 140.0]), json!(["2026-11-01T00:00:00Z", 202.0])])]);
}

#[tokio::test]
async fn percentiles_min_and_max_with_a_where_condition() {
    let (_dir, addr, _stop) = fixture(Limits::default()).await;
    let mut got = Vec::new();
    for agg in ["p50", "p95", "min", "max"] {
        let (status, answer) = series(
            addr,
            &[
                ("table", "latency"),
                ("value", "ms"),
                ("agg", agg),
                ("bin", "5m"),
                ("from", "2026-11-01T00:00:00Z"),
                ("to", "2026-11-01T00:05:00Z"),
                ("where", "site = 'a' AND status = 'up'"),
            ],
        )
        .await;
        assert_eq!(status, 200, "{answer}");
        got.push(answer["series"][0]["points"][0][1].clone());
    }
    // site a, up, 00:00–00:05: 10, 20, 30 (31 is down). p95 interpolates between 20 and 30 at
    // 0.95 × 2 − 1 = 0.8999999999999999, which DataFusion's percentile_cont truncates to 6 decimals
    // (0.899999): 20 + 0.899999 × 10.
    assert_eq!(got, vec![json!(20.0), json!(28.99999), json!(10.0), json!(30.0)]);
}

#[tokio::test]
async fn csv_by_accept_header_or_format_parameter() {
    let (_dir, addr, _stop) = fixture(Limits::default()).await;
    let query = [
        ("table", "latency"),
        ("value", "ms"),
        ("bin", "2m"),
        ("from", "2026-11-01T00:00:00Z"),
        ("to", "2026-11-01T00:04:00Z"),
        ("group_by", "site"),
    ];
    let expected = "group,bin_start,value\na,2026-11-01T00:00:00Z,15\na,2026-11-01T00:02:00Z,30.5\nb,2026-11-01T00:00:00Z,5\nb,2026-11-01T00:02:00Z,\n";
    let res =
        reqwest::Client::new().get(format!("http://{addr}/api/series")).query(&query).header("Accept", "text/csv").send().await.unwrap();
    assert_eq!(res.headers()["content-type"], "text/csv; charset=utf-8");
    assert_eq!(res.text().await.unwrap(), expected);
    let mut with_format = query.to_vec();
    with_format.push(("format", "csv"));
    let res = reqwest::Client::new().get(format!("http://{addr}/api/series")).query(&with_format).send().await.unwrap();
    assert_eq!(res.text().await.unwrap(), expected);
}

#[tokio::test]
async fn bad_parameters_are_each_named_in_one_400() {
    let (_dir, addr, _stop) = fixture(Limits::default()).await;
    let range = [("from", "2026-11-01T00:00:00Z"), ("to", "2026-11-01T00:05:00Z")];
    let errors = |answer: &Value| -> Vec<(String, String)> {
        answer["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["parameter"].as_str().unwrap().to_string(), e["message"].as_str().unwrap().to_string()))
            .collect()
    };

    let (status, answer) = series(addr, &[("table", "nope"), ("value", "ms")]).await;
    assert_eq!(status, 400);
    assert_eq!(errors(&answer), vec![("table".to_string(), "no table `nope` (tables: latency, names)".to_string())]);

    let (status, answer) = series(
        addr,
        &[
            ("table", "latency"),
            ("value", "site"),
            ("bin", "fast"),
            ("group_by", "region"),
            ("where", "nosuch > 1"),
            ("from", "2026-11-02T00:00:00Z"),
            ("to", "2026-11-01T00:00:00Z"),
        ],
    )
    .await;
    assert_eq!(status, 400);
    let got = errors(&answer);
    assert_eq!(got[0], ("bin".into(), "`fast` is not a duration such as `30s`, `1m`, `1h`, `1d` (expected number at 0)".into()));
    assert_eq!(got[1], ("from".into(), "2026-11-02T00:00:00Z is not before `to` (2026-11-01T00:00:00Z)".into()));
    assert_eq!(got[2], ("value".into(), "column `site` is string, not a number (only `agg=count` counts non-numeric values)".into()));
    assert_eq!(got[3], ("group_by".into(), "table `latency` has no column `region` (columns: ts, site, ms, status, date)".into()));
    assert_eq!(got[4].0, "where");
    assert!(got[4].1.contains("nosuch"), "{got:?}");
    assert_eq!(got.len(), 5, "{got:?}");

    let mut q = vec![("table", "latency"), ("value", "ms"), ("where", "ms IN (SELECT ms FROM latency)")];
    q.extend(range);
    let (status, answer) = series(addr, &q).await;
    assert_eq!(status, 400);
    assert_eq!(errors(&answer), vec![("where".to_string(), "`ms IN (SELECT ms FROM latency)`: subqueries are not allowed".to_string())]);

    let mut q = vec![("table", "latency"), ("value", "ms"), ("where", "length(repeat(site, 1000000000)) > 1")];
    q.extend(range);
    let (status, answer) = series(addr, &q).await;
    assert_eq!(status, 400);
    assert!(
        errors(&answer)[0]
            .1
            .starts_with("`length(repeat(site, 1000000000)) > 1`: function `repeat` is not allowed in a filter (allowed: abs,"),
        "{answer}"
    );

    let (status, answer) = series(addr, &[("table", "names"), ("value", "name"), ("agg", "count")]).await;
    assert_eq!(status, 400);
    assert_eq!(errors(&answer), vec![("time".to_string(), "table `names` has no timestamp column (columns: name)".to_string())]);
}

#[tokio::test]
async fn an_answer_too_big_is_refused_with_a_bin_that_fits() {
    let (_dir, addr, _stop) = fixture(Limits { max_points: 8, ..Limits::default() }).await;
    // Known before reading: 300 one-second bins.
    let (status, answer) = series(
        addr,
        &[("table", "latency"), ("value", "ms"), ("bin", "1s"), ("from", "2026-11-01T00:00:00Z"), ("to", "2026-11-01T00:05:00Z")],
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(answer["errors"][0]["message"], "300 bins × 1 series = 300 points is more than the 8 one answer holds; bin=1m fits");
    // Known after: 5 bins fit, but two sites make 10 points.
    let (status, answer) = series(
        addr,
        &[
            ("table", "latency"),
            ("value", "ms"),
            ("bin", "1m"),
            ("from", "2026-11-01T00:00:00Z"),
            ("to", "2026-11-01T00:05:00Z"),
            ("group_by", "site"),
        ],
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(answer["errors"][0]["message"], "5 bins × 2 series = 10 points is more than the 8 one answer holds; bin=2m fits");
}

#[tokio::test]
async fn a_query_past_the_timeout_is_stopped_with_503() {
    // Two million rows, p99 per second: hundreds of milliseconds of work against a 10 ms limit (a
    // zero limit is not enough: a tiny query can finish before the timer's first tick).
    let dir = tempfile::tempdir().unwrap();
    let n = 2_000_000i64;
    let start = chrono::DateTime::parse_from_rfc3339("2026-11-01T00:00:00Z").unwrap().timestamp_micros();
    let schema = std::sync::Arc::new(datafusion::arrow::datatypes::Schema::new(vec![
        datafusion::arrow::datatypes::Field::new(
            "ts",
            datafusion::arrow::datatypes::DataType::Timestamp(datafusion::arrow::datatypes::TimeUnit::Microsecond, None),
            false,
        ),
        datafusion::arrow::datatypes::Field::new("ms", datafusion::arrow::datatypes::DataType::Float64, false),
    ]));
    let batch = datafusion::arrow::array::RecordBatch::try_new(
        schema,
        vec![
            std::sync::Arc::new(datafusion::arrow::array::TimestampMicrosecondArray::from_iter_values((0..n).map(|i| start + i * 1000))),
            std::sync::Arc::new(datafusion::arrow::array::Float64Array::from_iter_values((0..n).map(|i| ((i * 7919) % 1000) as f64))),
        ],
    )
    .unwrap();
    common::lake::write_parquet(&dir.path().join("big/part-0.parquet"), &batch);
    let (addr, _stop) = start_server(dir.path(), Limits { query_timeout: Duration::from_millis(10), ..Limits::default() }).await;
    let (status, answer) = series(
        addr,
        &[
            ("table", "big"),
            ("value", "ms"),
            ("agg", "p99"),
            ("bin", "1s"),
            ("from", "2026-11-01T00:00:00Z"),
            ("to", "2026-11-01T00:40:00Z"),
        ],
    )
    .await;
    assert_eq!(status, 503, "{answer}");
    assert_eq!(answer["errors"][0]["message"], "stopped after 10ms (the server's query timeout)");
}

#[tokio::test]
async fn tables_with_columns_time_range_and_rows() {
    let (_dir, addr, _stop) = fixture(Limits::default()).await;
    let body: Value = reqwest::get(format!("http://{addr}/api/tables")).await.unwrap().json().await.unwrap();
    let latency = &body["tables"][0];
    assert_eq!(latency["name"], "latency");
    assert_eq!(latency["time_column"], "ts");
    assert_eq!(latency["first"], "2026-10-31T22:30:00Z");
    assert_eq!(latency["last"], "2026-11-01T00:12:00Z");
    assert_eq!(latency["rows"], 9);
    let columns: Vec<(String, String)> = latency["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap().into(), c["type"].as_str().unwrap().into()))
        .collect();
    assert_eq!(
        columns,
        vec![
            ("ts".into(), "Timestamp(µs)".into()),
            ("site".into(), "string".into()),
            ("ms".into(), "Float64".into()),
            ("status".into(), "string".into()),
            ("date".into(), "string".into())
        ]
    );
    // The view the page opens on: the first float, split by site, over the 1 h 42 min the rows
    // cover, in 15-minute bins (9 rows 12.75 minutes apart on average: auto bins would be 30 s).
    assert_eq!(
        latency["default"],
        json!({"value": "ms", "group_by": "site", "from": "2026-10-31T22:30:00Z", "to": "2026-11-01T00:12:01Z", "bin": "15m"})
    );
    assert_eq!(
        body["tables"][1],
        json!({"name": "names", "columns": [{"name": "name", "type": "string", "numeric": false}], "time_column": null, "first": null, "last": null, "rows": 2,
               "default": {"value": null, "group_by": "name", "from": null, "to": null, "bin": null}})
    );
}

#[tokio::test]
async fn a_running_pipeline_serves_charts_of_its_parquet_sinks() {
    let dir = tempfile::tempdir().unwrap();
    let input = common::write(
        dir.path(),
        "in.ndjson",
        concat!(
            r#"{"ts":"2026-11-01T00:00:05Z","site":"ams","latency_ms":120}"#,
            "\n",
            r#"{"ts":"2026-11-01T00:00:45Z","site":"ams","latency_ms":80}"#,
            "\n",
            r#"{"ts":"2026-11-01T00:01:10Z","site":"blr","latency_ms":300}"#,
            "\n",
        ),
    );
    let data = dir.path().join("data");
    let admin = common::free_addr();
    let pipeline = common::write(
        dir.path(),
        "p.yaml",
        &format!(
            r#"
admin: {{address: "{admin}"}}
sources:
  events:
    type: file
    path: {input}
    schema: {{ts: timestamp, site: string, latency_ms: int}}
    checkpoint_file: {data}/events.checkpoint.json
sinks:
  lake:
    type: parquet
    inputs: [events]
    path: {data}/lake
    max_age: 100ms
"#,
            input = input.display(),
            data = data.display()
        ),
    );
    let (handle, stop) = common::spawn_pipeline(&pipeline);
    common::wait_for_port(admin).await;
    let query = [
        ("table", "lake"),
        ("value", "latency_ms"),
        ("bin", "1m"),
        ("from", "2026-11-01T00:00:00Z"),
        ("to", "2026-11-01T00:02:00Z"),
        ("group_by", "site"),
    ];
    let mut answer = Value::Null;
    for _ in 0..100 {
        let (status, body) = series(admin, &query).await;
        answer = body;
        if status == 200 {
            break;
        }
        // Until the sink writes its first file, the table has none.
        assert_eq!(answer["errors"][0]["message"], "table `lake` has no files yet", "{answer}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        points(&answer),
        vec![
            (json!("ams"), vec![json!(["2026-11-01T00:00:00Z", 100.0]), json!(["2026-11-01T00:01:00Z", null])]),
            (json!("blr"), vec![json!(["2026-11-01T00:00:00Z", null]), json!(["2026-11-01T00:01:00Z", 300.0])]),
        ]
    );
    let page = reqwest::get(format!("http://{admin}/")).await.unwrap().text().await.unwrap();
    assert!(page.contains("window.TRIBUTARY_LIVE = true;"), "a pipeline's page offers auto-refresh");
    stop.cancel();
    assert!(handle.await.unwrap().ok());
}

#[tokio::test]
async fn two_servers_over_one_folder_answer_alike_and_see_a_new_file_at_once() {
    let (dir, first, _stop1) = fixture(Limits::default()).await;
    let (second, _stop2) = start_server(dir.path(), Limits::default()).await;
    let day = [("table", "latency"), ("value", "ms"), ("agg", "count"), ("bin", "1d"), ("from", "2026-11-01"), ("to", "2026-11-02")];
    let count = |answer: &Value| answer["series"][0]["points"][0][1].clone();
    let (a, b) = (series(first, &day).await.1, series(second, &day).await.1);
    assert_eq!((count(&a), count(&b)), (json!(7.0), json!(7.0)));
    // A file the sink renames into place is in the next answer of either server.
    common::lake::write_latency(
        &dir.path().join("latency/date=2026-11-01/part-1.parquet"),
        &[("2026-11-01T08:00:00Z", "c", 1.0, "up"), ("2026-11-01T09:00:00Z", "c", 2.0, "up")],
    );
    let (a, b) = (series(first, &day).await.1, series(second, &day).await.1);
    assert_eq!((count(&a), count(&b)), (json!(9.0), json!(9.0)));
    assert_eq!(a, b);
}
