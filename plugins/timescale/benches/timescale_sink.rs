//! Timescale sink throughput on the machine's PostgreSQL: append (binary COPY from Arrow) and
//! upsert (staged COPY + INSERT … ON CONFLICT), next to the baseline measured in the same run —
//! tokio-postgres' own `COPY … FROM STDIN (FORMAT binary)` writer fed the same rows as native
//! Rust values, no engine, into the same table the sink writes (created by the sink, so with the
//! time index a plain-PostgreSQL table carries). A COPY into a bare table without that index is
//! printed for context: on this machine the index alone costs PostgreSQL about a third of its
//! insert time, which is the database's work, not the sink's.
//!
//! `cargo bench --bench timescale_sink` writes 500,000 rows per mode (TS_BENCH_ROWS to change);
//! under `cargo test` it runs a 5,000-row smoke pass that still checks the row counts.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use datafusion::arrow::array::{BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, NoTls};
use tributary_sdk::config::event_time_type;
use tributary_sdk::{ComponentConfig, SinkPlugin};
use tributary_testkit::{sink_context, write_like_the_engine};

const BATCH: usize = 5000;

fn pg_url() -> String {
    tributary_testkit::test_postgres_url()
}

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("ts", event_time_type(), false),
        Field::new("name", DataType::Utf8, false),
        Field::new("site", DataType::Utf8, false),
        Field::new("status_code", DataType::Int64, false),
        Field::new("response_time_ms", DataType::Int64, false),
        Field::new("ttfb_ms", DataType::Float64, true),
        Field::new("success", DataType::Boolean, false),
    ]))
}

const BASE_US: i64 = 1_795_255_200_000_000;

fn batch(start: usize, n: usize) -> RecordBatch {
    let ids = start..start + n;
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(TimestampMicrosecondArray::from_iter_values(ids.clone().map(|i| BASE_US + i as i64 * 1000)).with_timezone("UTC")),
            Arc::new(StringArray::from_iter_values(ids.clone().map(|i| format!("target-{}", i % 100)))),
            Arc::new(StringArray::from_iter_values(ids.clone().map(|i| format!("https://site{}.example.com", i % 10)))),
            Arc::new(Int64Array::from_iter_values(ids.clone().map(|i| if i % 50 == 0 { 500 } else { 200 }))),
            Arc::new(Int64Array::from_iter_values(ids.clone().map(|i| (i % 900) as i64))),
            Arc::new(Float64Array::from_iter(ids.clone().map(|i| Some((i % 700) as f64 * 0.5)))),
            Arc::new(BooleanArray::from_iter(ids.map(|i| Some(i % 50 != 0)))),
        ],
    )
    .unwrap()
}

async fn count(db: &Client, table: &str) -> i64 {
    db.query_one(&format!("SELECT count(*) FROM \"{table}\""), &[]).await.unwrap().get(0)
}

/// The baseline: tokio-postgres' binary COPY writer with values already in Rust types, into an
/// existing table with the bench's columns.
async fn raw_copy(db: &Client, table: &str, rows: usize) -> f64 {
    let names: Vec<String> = (0..rows).map(|i| format!("target-{}", i % 100)).collect();
    let sites: Vec<String> = (0..rows).map(|i| format!("https://site{}.example.com", i % 10)).collect();
    let types = [Type::TIMESTAMPTZ, Type::TEXT, Type::TEXT, Type::INT8, Type::INT8, Type::FLOAT8, Type::BOOL];
    let start = Instant::now();
    for chunk in (0..rows).collect::<Vec<_>>().chunks(BATCH) {
        let sink = db.copy_in(&format!("COPY \"{table}\" FROM STDIN (FORMAT binary)")).await.unwrap();
        let writer = BinaryCopyInWriter::new(sink, &types);
        futures::pin_mut!(writer);
        for &i in chunk {
            let ts = SystemTime::UNIX_EPOCH + std::time::Duration::from_micros((BASE_US + i as i64 * 1000) as u64);
            let status: i64 = if i % 50 == 0 { 500 } else { 200 };
            let rt = (i % 900) as i64;
            let ttfb = (i % 700) as f64 * 0.5;
            let ok = i % 50 != 0;
            writer.as_mut().write(&[&ts, &names[i], &sites[i], &status, &rt, &ttfb, &ok]).await.unwrap();
        }
        writer.finish().await.unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(count(db, table).await, rows as i64);
    rows as f64 / secs
}

/// A table exactly as the sink makes it (columns, time index), left empty.
async fn sink_made_table(db: &Client, table: &str) {
    db.batch_execute(&format!("DROP TABLE IF EXISTS \"{table}\"")).await.unwrap();
    let (mut sink, ctx) = started_sink(table, "").await;
    sink.flush(&ctx).await.unwrap();
}

/// A table with the bench's columns and no index.
async fn bare_table(db: &Client, table: &str) {
    db.batch_execute(&format!(
        "DROP TABLE IF EXISTS \"{table}\"; CREATE TABLE \"{table}\" (ts timestamptz NOT NULL, name text, site text, status_code bigint, response_time_ms bigint, ttfb_ms double precision, success boolean)"
    ))
    .await
    .unwrap();
}

/// The sink and its context.
async fn started_sink(table: &str, extra: &str) -> (Box<dyn tributary_sdk::Sink>, tributary_sdk::SinkContext) {
    let cfg = ComponentConfig::from_yaml(
        "bench",
        &format!("{{connection: '{}', table: {table}, batch: {{max_rows: {BATCH}}} {extra}}}", pg_url()),
    );
    let mut sink = tributary_timescale::TimescaleSinkPlugin.build(&cfg, &[("in".into(), schema())]).map_err(|e| e.to_string()).unwrap();
    let ctx = sink_context("bench");
    sink.start(&ctx).await.unwrap();
    (sink, ctx)
}

async fn through_sink(db: &Client, table: &str, rows: usize, extra: &str) -> f64 {
    db.batch_execute(&format!("DROP TABLE IF EXISTS \"{table}\"")).await.unwrap();
    let (mut sink, ctx) = started_sink(table, extra).await;
    let batches: Vec<RecordBatch> = (0..rows).step_by(BATCH).map(|s| batch(s, BATCH.min(rows - s))).collect();
    let start = Instant::now();
    for b in batches {
        assert!(write_like_the_engine(sink.as_mut(), b, &ctx).await.unwrap().is_empty());
    }
    sink.flush(&ctx).await.unwrap();
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(count(db, table).await, rows as i64);
    rows as f64 / secs
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let rows: usize = std::env::var("TS_BENCH_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(if full { 500_000 } else { 5_000 });
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (db, conn) = tokio_postgres::connect(&pg_url(), NoTls).await.expect("PostgreSQL must be running");
        tokio::spawn(conn);
        let t = format!("bench_ts_{}", std::process::id());
        bare_table(&db, &format!("{t}_bare")).await;
        let bare = raw_copy(&db, &format!("{t}_bare"), rows).await;
        sink_made_table(&db, &format!("{t}_raw")).await;
        let raw = raw_copy(&db, &format!("{t}_raw"), rows).await;
        let append = through_sink(&db, &format!("{t}_append"), rows, "").await;
        let upsert = through_sink(&db, &format!("{t}_upsert"), rows, ", mode: upsert, key: [name, ts]").await;
        println!("timescale sink, {rows} rows, batches of {BATCH}:");
        println!("  context: raw binary COPY into a bare table:       {bare:>10.0} rows/s  (no time index)");
        println!("  baseline raw binary COPY (tokio-postgres writer): {raw:>10.0} rows/s  (the sink's table, time index)");
        println!("  append (Arrow → binary COPY):                     {append:>10.0} rows/s  ({:.0}% of baseline)", append / raw * 100.0);
        println!("  upsert (staged COPY + ON CONFLICT):               {upsert:>10.0} rows/s  ({:.0}% of baseline)", upsert / raw * 100.0);
        for suffix in ["bare", "raw", "append", "upsert"] {
            db.batch_execute(&format!("DROP TABLE IF EXISTS \"{t}_{suffix}\"")).await.unwrap();
        }
    });
}
