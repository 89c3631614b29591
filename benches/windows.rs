//! Event-time windows: 1-minute tumbling windows over 1,000 keys with `count`, `avg` and
//! `approx_percentile_cont(…, 0.95)`, streamed through the engine's window operator, next to
//! DataFusion running the same GROUP BY over the same rows held in one MemTable (what a user would
//! run as a batch query). Rows arrive in order, then with 5% of them up to 20 s out of order (within
//! the 30 s allowed lateness, so none is late). Prints events/s and peak RSS per case and the ratio.
//!
//! Each case runs in a child process (this binary with `--phase …`) so its peak RSS is its own. The
//! window operator's rows are generated batch by batch as a source would send them, so its RSS is
//! what the open windows hold; the batch query needs every row in memory first (its generation is
//! not timed). `cargo bench --bench windows` runs 10,000,000 rows (`WINDOW_ROWS` to change); under
//! `cargo test` a 200,000-row smoke pass checks that both sides produce the same number of groups.

use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow::array::{ArrayRef, Float64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use tributary::sql::window::{self, WindowConfig, WindowOperator, WindowSpec};
use tributary::sql::SqlTransform;
use tributary_sdk::config::event_time_type;
use tributary_sdk::AckSet;

const BATCH: usize = 8192;
const KEYS: u64 = 1000;
/// 100,000 rows per minute: 600 µs of event time per row.
const STEP_US: i64 = 600;
/// 2026-01-01T00:00:00Z: in the past, so no row is beyond `max_future`.
const START_US: i64 = 1_767_225_600_000_000;

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("ts", event_time_type(), false),
        Field::new("key", DataType::Utf8, false),
        Field::new("v", DataType::Float64, false),
    ]))
}

/// Rows `first..first + n`: a key per row round the 1,000, a value from a cheap LCG, and with
/// `shuffled` one row in twenty moved up to 20 s earlier than its place.
fn rows(first: u64, n: usize, shuffled: bool) -> RecordBatch {
    let mut ts = Vec::with_capacity(n);
    let mut keys = Vec::with_capacity(n);
    let mut values = Vec::with_capacity(n);
    for i in first..first + n as u64 {
        let h = i.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let mut t = START_US + i as i64 * STEP_US;
        if shuffled && (h >> 33) % 20 == 0 {
            t -= ((h >> 13) % 20_000_000) as i64;
        }
        ts.push(t);
        keys.push(format!("k{:03}", (i * 7919) % KEYS));
        values.push(((h >> 11) % 10_000) as f64 / 10.0);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(TimestampMicrosecondArray::from(ts).with_timezone("UTC")),
        Arc::new(StringArray::from(keys)),
        Arc::new(Float64Array::from(values)),
    ];
    RecordBatch::try_new(schema(), columns).unwrap()
}

const WINDOW_SQL: &str = "SELECT window_start, key, count(*) AS n, avg(v) AS avg_v, approx_percentile_cont(v, 0.95) AS p95_v \
                          FROM events GROUP BY window_start, key";
const BATCH_SQL: &str = "SELECT date_bin(INTERVAL '1 minute', ts) AS window_start, key, count(*) AS n, avg(v) AS avg_v, \
                         approx_percentile_cont(v, 0.95) AS p95_v FROM events GROUP BY 1, 2";

/// Rows through the window operator, batch by batch; returns (seconds, groups emitted, peak rows held).
async fn windowed(total: u64, shuffled: bool) -> (f64, usize, usize) {
    let tables = vec![("events".to_string(), schema())];
    let config: WindowConfig = serde_yaml::from_str("{tumbling: 1m, allowed_lateness: 30s}").unwrap();
    let spec = WindowSpec::from_config(&config).unwrap();
    let late = window::late_schema(&tables).unwrap();
    let sql = SqlTransform::plan(WINDOW_SQL, &[("events".to_string(), window::windowed_input_schema(&schema()))], &[]).await.unwrap();
    let mut op = WindowOperator::new(spec, sql, &tables, late, 0).unwrap();
    let (mut groups, mut held, mut late_rows) = (0, 0, 0);
    let started = Instant::now();
    let mut first = 0;
    while first < total {
        let n = BATCH.min((total - first) as usize);
        let accepted = op.accept(0, rows(first, n, shuffled), AckSet::none(), 0).unwrap();
        late_rows += accepted.late.map_or(0, |(r, _)| r.num_rows());
        held = held.max(op.buffered_rows());
        if let Some(e) = op.advance(0).await.unwrap() {
            groups += e.result.expect("windows compute").iter().map(|b| b.num_rows()).sum::<usize>();
        }
        first += n as u64;
    }
    if let Some(e) = op.finish().await.unwrap() {
        groups += e.result.expect("windows compute").iter().map(|b| b.num_rows()).sum::<usize>();
    }
    assert_eq!(late_rows, 0, "every out-of-order row is within the lateness");
    (started.elapsed().as_secs_f64(), groups, held)
}

/// The same rows in one MemTable, one GROUP BY; returns (seconds of the query, groups).
async fn batch_query(total: u64, shuffled: bool) -> (f64, usize) {
    let mut batches = Vec::new();
    let mut first = 0;
    while first < total {
        let n = BATCH.min((total - first) as usize);
        batches.push(rows(first, n, shuffled));
        first += n as u64;
    }
    let ctx = SessionContext::new();
    ctx.register_table("events", Arc::new(MemTable::try_new(schema(), vec![batches]).unwrap())).unwrap();
    let started = Instant::now();
    let out = ctx.sql(BATCH_SQL).await.unwrap().collect().await.unwrap();
    (started.elapsed().as_secs_f64(), out.iter().map(|b| b.num_rows()).sum())
}

fn phase(which: &str, total: u64, shuffled: bool) {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let (secs, groups, held) = match which {
        "window" => rt.block_on(windowed(total, shuffled)),
        _ => {
            let (secs, groups) = rt.block_on(batch_query(total, shuffled));
            (secs, groups, total as usize)
        }
    };
    println!("{secs} {groups} {held} {}", tributary_testkit::peak_rss_mb());
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--phase") {
        phase(&args[i + 1], args[i + 2].parse().unwrap(), args[i + 3] == "shuffled");
        return;
    }
    let benching = args.iter().any(|a| a == "--bench");
    let total: u64 = if benching { std::env::var("WINDOW_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000_000) } else { 200_000 };
    println!("event-time windows: {total} rows, 1-minute tumbling, {KEYS} keys, count/avg/approx_percentile_cont(0.95)");
    println!("{:<28} {:>12} {:>10} {:>10} {:>14}", "case", "events/s", "seconds", "peak RSS", "groups");
    for order in ["in_order", "shuffled"] {
        let mut speeds = Vec::new();
        let mut groups = Vec::new();
        for which in ["window", "batch"] {
            let out = Command::new(std::env::current_exe().unwrap()).args(["--phase", which, &total.to_string(), order]).output().unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            let text = String::from_utf8(out.stdout).unwrap();
            let f: Vec<f64> = text.split_whitespace().map(|x| x.parse().unwrap()).collect();
            let (secs, n, held, rss) = (f[0], f[1] as usize, f[2] as usize, f[3]);
            let name = if which == "window" { format!("window operator, {order}") } else { format!("DataFusion GROUP BY, {order}") };
            let detail = if which == "window" { format!(" (at most {held} rows held)") } else { String::new() };
            println!("{name:<28} {:>12.0} {secs:>10.2} {rss:>7.0} MiB {n:>14}{detail}", total as f64 / secs);
            speeds.push(total as f64 / secs);
            groups.push(n);
        }
        assert_eq!(groups[0], groups[1], "both sides find the same (window, key) groups");
        println!("  window operator at {:.0}% of the batch query's throughput", 100.0 * speeds[0] / speeds[1]);
    }
}
