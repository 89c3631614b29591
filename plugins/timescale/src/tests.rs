//! Against the machine's real PostgreSQL (`TRIBUTARY_TEST_POSTGRES`, default
//! `host=127.0.0.1 user=postgres dbname=test`). Each test uses its own table.

use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{Array, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use tokio_postgres::{Client, NoTls};
use tributary_sdk::{ComponentConfig, Durability, Sink, SinkPlugin, Written};
use tributary_testkit::{flush_retrying, sink_context};

use super::*;

fn pg_url() -> String {
    tributary_testkit::test_postgres_url()
}

async fn admin() -> Client {
    let (client, conn) = tokio_postgres::connect(&pg_url(), NoTls)
        .await
        .expect("PostgreSQL must be running for these tests (./scripts/test starts it; see docs/testing.md)");
    tokio::spawn(conn);
    client
}

fn unique_table(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("{prefix}_{}_{nanos}", std::process::id())
}

fn probe_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("ts", DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), false),
        Field::new("site", DataType::Utf8, true),
        Field::new("status_code", DataType::Int64, true),
        Field::new("response_time_ms", DataType::Float64, true),
        Field::new("success", DataType::Boolean, true),
    ]))
}

/// `ts` = 2026-11-21T10:00:00Z + `i` seconds.
fn probe_rows(ids: std::ops::Range<i64>, site: &str) -> RecordBatch {
    let base = 1_795_255_200_000_000i64;
    let n = (ids.end - ids.start) as usize;
    RecordBatch::try_new(
        probe_schema(),
        vec![
            Arc::new(TimestampMicrosecondArray::from(ids.clone().map(|i| base + i * 1_000_000).collect::<Vec<_>>()).with_timezone("UTC")),
            Arc::new(StringArray::from(vec![site; n])),
            Arc::new(Int64Array::from(ids.clone().map(|i| if i % 10 == 0 { 500 } else { 200 }).collect::<Vec<_>>())),
            Arc::new(Float64Array::from(ids.clone().map(|i| i as f64 + 0.5).collect::<Vec<_>>())),
            Arc::new(BooleanArray::from(ids.map(|i| i % 10 != 0).collect::<Vec<_>>())),
        ],
    )
    .unwrap()
}

fn build(table: &str, extra: &str, schema: SchemaRef) -> Box<dyn Sink> {
    build_as("pg", table, extra, schema)
}

/// The sink's id names its connections (`application_name = tributary/<id>`).
fn build_as(id: &str, table: &str, extra: &str, schema: SchemaRef) -> Box<dyn Sink> {
    let cfg =
        ComponentConfig::from_yaml(id, &format!("{{connection: '{}', table: {table}, batch: {{max_rows: 100000}} {extra}}}", pg_url()));
    TimescaleSinkPlugin.build(&cfg, &[("in".into(), schema)]).map_err(|e| e.to_string()).unwrap()
}

fn build_err(yaml: &str) -> String {
    let cfg = ComponentConfig::from_yaml("pg", yaml);
    match TimescaleSinkPlugin.build(&cfg, &[("in".into(), probe_schema())]) {
        Ok(_) => panic!("config should be refused: {yaml}"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn creates_the_table_with_mapped_types_and_copies_rows_exactly() {
    let table = unique_table("ts_create");
    let db = admin().await;
    let mut sink = build(&table, "", probe_schema());
    let ctx = sink_context("pg");
    sink.start(&ctx).await.unwrap();

    let types: Vec<(String, String, String)> = db
        .query(
            "SELECT column_name::text, data_type::text, is_nullable::text FROM information_schema.columns WHERE table_name = $1 ORDER BY ordinal_position",
            &[&table],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let expect = [
        ("ts", "timestamp with time zone", "NO"),
        ("site", "text", "YES"),
        ("status_code", "bigint", "YES"),
        ("response_time_ms", "double precision", "YES"),
        ("success", "boolean", "YES"),
    ];
    assert_eq!(types, expect.map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string())));
    let index: i64 = db
        .query_one("SELECT count(*) FROM pg_indexes WHERE tablename = $1 AND indexname = $2", &[&table, &format!("{table}_ts_idx")])
        .await
        .unwrap()
        .get(0);
    assert_eq!(index, 1, "plain PostgreSQL gets a time index");

    assert_eq!(sink.write(probe_rows(0..3, "https://a.example"), &ctx).await.unwrap(), Written::buffered());
    let before: i64 = db.query_one(&format!("SELECT count(*) FROM \"{table}\""), &[]).await.unwrap().get(0);
    assert_eq!(before, 0, "buffered rows are not written before a flush");
    assert_eq!(sink.flush(&ctx).await.unwrap(), vec![]);

    let rows = db
        .query(&format!("SELECT to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'), site, status_code, response_time_ms, success FROM \"{table}\" ORDER BY ts"), &[])
        .await
        .unwrap();
    let got: Vec<(String, String, i64, f64, bool)> = rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4))).collect();
    assert_eq!(
        got,
        vec![
            ("2026-11-21 10:00:00".into(), "https://a.example".into(), 500, 0.5, false),
            ("2026-11-21 10:00:01".into(), "https://a.example".into(), 200, 1.5, true),
            ("2026-11-21 10:00:02".into(), "https://a.example".into(), 200, 2.5, true),
        ]
    );
    db.batch_execute(&format!("DROP TABLE \"{table}\"")).await.unwrap();
}

#[tokio::test]
async fn asks_for_a_flush_at_batch_max_rows() {
    let table = unique_table("ts_batch");
    let db = admin().await;
    let cfg = ComponentConfig::from_yaml("pg", &format!("{{connection: '{}', table: {table}, batch: {{max_rows: 5}}}}", pg_url()));
    let mut sink = TimescaleSinkPlugin.build(&cfg, &[("in".into(), probe_schema())]).map_err(|e| e.to_string()).unwrap();
    let ctx = sink_context("pg");
    sink.start(&ctx).await.unwrap();
    assert_eq!(sink.write(probe_rows(0..3, "s"), &ctx).await.unwrap(), Written::buffered());
    assert_eq!(sink.write(probe_rows(3..6, "s"), &ctx).await.unwrap().durability, Durability::BufferFull);
    let n: i64 = db.query_one(&format!("SELECT count(*) FROM \"{table}\""), &[]).await.unwrap().get(0);
    assert_eq!(n, 0, "a write does no I/O: the engine flushes");
    assert_eq!(sink.flush(&ctx).await.unwrap(), vec![]);
    let n: i64 = db.query_one(&format!("SELECT count(*) FROM \"{table}\""), &[]).await.unwrap().get(0);
    assert_eq!(n, 6);
    db.batch_execute(&format!("DROP TABLE \"{table}\"")).await.unwrap();
}

#[tokio::test]
async fn existing_table_gains_missing_columns_and_narrow_types_are_honoured() {
    // The original monitor's shape: smallint times, varchar(255) text, no `success` column yet.
    let table = unique_table("ts_existing");
    let db = admin().await;
    db.batch_execute(&format!(
        "CREATE TABLE \"{table}\" (ts timestamp without time zone NOT NULL, site varchar(12), status_code smallint, response_time_ms real)"
    ))
    .await
    .unwrap();
    let mut sink = build(&table, "", probe_schema());
    let ctx = sink_context("pg");
    sink.start(&ctx).await.unwrap();
    let added: String = db
        .query_one("SELECT data_type::text FROM information_schema.columns WHERE table_name = $1 AND column_name = 'success'", &[&table])
        .await
        .unwrap()
        .get(0);
    assert_eq!(added, "boolean");

    // Row 1 has a site too long for varchar(12): the database rejects it alone.
    let mut rows = probe_rows(0..3, "short.io");
    let sites = StringArray::from(vec!["short.io", "much-too-long.example", "short.io"]);
    let mut cols = rows.columns().to_vec();
    cols[1] = Arc::new(sites);
    rows = RecordBatch::try_new(probe_schema(), cols).unwrap();
    sink.write(rows, &ctx).await.unwrap();
    let letters = sink.flush(&ctx).await.unwrap();

    let got: Vec<(i16, f32, bool)> = db
        .query(&format!("SELECT status_code, response_time_ms, success FROM \"{table}\" ORDER BY ts"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(got, vec![(500, 0.5, false), (200, 2.5, true)]);
    assert_eq!(letters.len(), 1, "the rejected row comes back as a dead letter: {letters:?}");
    assert_eq!(letters[0].reason, "rejected by PostgreSQL: value too long for type character varying(12) [SQLSTATE 22001]");
    assert!(letters[0].payload.contains("\"site\":\"much-too-long.example\""), "{}", letters[0].payload);

    // A value beyond smallint never reaches the server: same dead-letter path, named column.
    let mut cols = probe_rows(10..11, "short.io").columns().to_vec();
    cols[2] = Arc::new(Int64Array::from(vec![70_000]));
    sink.write(RecordBatch::try_new(probe_schema(), cols).unwrap(), &ctx).await.unwrap();
    let letters = sink.flush(&ctx).await.unwrap();
    assert_eq!(letters.len(), 1, "out-of-range row is a dead letter");
    assert_eq!(letters[0].reason, "rejected by PostgreSQL: column `status_code`: value 70000 is out of range for PostgreSQL type smallint");

    // A timestamp at the integer limit (hostile input) used to overflow the epoch shift: now it
    // is a dead letter and the rows around it are written.
    let mut cols = probe_rows(20..23, "short.io").columns().to_vec();
    let times = cols[0].as_any().downcast_ref::<TimestampMicrosecondArray>().unwrap();
    cols[0] = Arc::new(TimestampMicrosecondArray::from(vec![times.value(0), i64::MIN, times.value(2)]).with_timezone("UTC"));
    sink.write(RecordBatch::try_new(probe_schema(), cols).unwrap(), &ctx).await.unwrap();
    let letters = sink.flush(&ctx).await.unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(
        letters[0].reason,
        "rejected by PostgreSQL: column `ts`: timestamp -9223372036854775808 µs since 1970 is outside PostgreSQL's range (4713 BC to 294276 AD)"
    );
    let n: i64 = db.query_one(&format!("SELECT count(*) FROM \"{table}\""), &[]).await.unwrap().get(0);
    assert_eq!(n, 4, "the two good rows around it are written");
    db.batch_execute(&format!("DROP TABLE \"{table}\"")).await.unwrap();
}

#[tokio::test]
async fn an_incompatible_existing_column_is_refused_at_start() {
    let table = unique_table("ts_incompatible");
    let db = admin().await;
    db.batch_execute(&format!("CREATE TABLE \"{table}\" (ts timestamptz NOT NULL, site text, status_code text)")).await.unwrap();
    let mut sink = build(&table, "", probe_schema());
    let ctx = sink_context("pg");
    let err = format!("{:#}", sink.start(&ctx).await.unwrap_err());
    assert_eq!(
        err,
        format!("table public.{table} does not fit the input: column `status_code` is text in public.{table} but the input has Int64 (alter the table or cast in a SQL transform)")
    );
    db.batch_execute(&format!("DROP TABLE \"{table}\"")).await.unwrap();
}

#[tokio::test]
async fn upsert_keeps_the_last_row_per_key_within_and_across_batches() {
    let table = unique_table("ts_upsert");
    let db = admin().await;
    let mut sink = build(&table, ", mode: upsert, key: [site, ts]", probe_schema());
    let ctx = sink_context("pg");
    sink.start(&ctx).await.unwrap();
    sink.write(probe_rows(0..3, "a"), &ctx).await.unwrap();
    // Same keys again in the same flush, with different values: the later one wins.
    let mut cols = probe_rows(1..3, "a").columns().to_vec();
    cols[2] = Arc::new(Int64Array::from(vec![301, 302]));
    sink.write(RecordBatch::try_new(probe_schema(), cols).unwrap(), &ctx).await.unwrap();
    sink.flush(&ctx).await.unwrap();
    // And in a later flush.
    let mut cols = probe_rows(2..4, "a").columns().to_vec();
    cols[2] = Arc::new(Int64Array::from(vec![402, 403]));
    sink.write(RecordBatch::try_new(probe_schema(), cols).unwrap(), &ctx).await.unwrap();
    sink.flush(&ctx).await.unwrap();

    let got: Vec<(f64, i64)> = db
        .query(&format!("SELECT response_time_ms, status_code FROM \"{table}\" ORDER BY ts"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(got, vec![(0.5, 500), (1.5, 301), (2.5, 402), (3.5, 403)]);
    db.batch_execute(&format!("DROP TABLE \"{table}\"")).await.unwrap();
}

/// Terminates the sink's backend over and over while it writes: every row arrives, and in upsert
/// mode none twice.
async fn survives_backend_terminations(mode_yaml: &str, table: &str) -> (i64, i64, u64) {
    let db = admin().await;
    let id = table.to_string();
    let mut sink = build_as(&id, table, mode_yaml, probe_schema());
    let ctx = sink_context(&id);
    sink.start(&ctx).await.unwrap();
    let app = format!("tributary/{id}");
    let killer = tokio::spawn(async move {
        let db = admin().await;
        let mut kills = 0;
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(15)).await;
            kills += db
                .query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1", &[&app])
                .await
                .unwrap()
                .len();
        }
        kills
    });
    // 60 writes at least 15 ms apart outlast the killer's 40 × 15 ms, so terminations land
    // between and during writes, never all after the last one (with 5 ms pauses a fast machine
    // finished first: kills, but no write ever met a terminated connection).
    for i in 0..60 {
        sink.write(probe_rows(i * 50..(i + 1) * 50, "kill"), &ctx).await.unwrap();
        assert_eq!(flush_retrying(sink.as_mut(), &ctx, 100).await, vec![]);
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    let kills = killer.await.unwrap();
    assert!(kills > 0, "the test must actually terminate the sink's connection");
    let row = db.query_one(&format!("SELECT count(*), count(DISTINCT ts) FROM \"{table}\""), &[]).await.unwrap();
    db.batch_execute(&format!("DROP TABLE \"{table}\"")).await.unwrap();
    (row.get(0), row.get(1), ctx.metrics.retries.get())
}

/// A database that comes up seconds after the sink starts (compose starting a stack at once) is
/// waited for, not a start failure. Nothing listens on the sink's port until a proxy to the real
/// server opens there 2.5 s later.
#[tokio::test]
async fn start_waits_for_a_database_that_comes_up_later() {
    let port = tributary_testkit::free_port();
    let (target, conn) = tributary_testkit::test_postgres_via(port);
    let table = unique_table("ts_late_db");
    let cfg = ComponentConfig::from_yaml("pg", &format!("{{connection: '{conn}', table: {table}}}"));
    let mut sink = TimescaleSinkPlugin.build(&cfg, &[("in".into(), probe_schema())]).map_err(|e| e.to_string()).unwrap();

    let proxy = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        loop {
            let (mut client, _) = listener.accept().await.unwrap();
            let mut server = tokio::net::TcpStream::connect(&target).await.unwrap();
            tokio::spawn(async move { tokio::io::copy_bidirectional(&mut client, &mut server).await });
        }
    });
    let ctx = sink_context("pg");
    sink.start(&ctx).await.expect("the sink waits for the database");
    assert!(ctx.metrics.retries.get() >= 3, "connections were refused before the database came up: {} retries", ctx.metrics.retries.get());
    sink.write(probe_rows(0..3, "late"), &ctx).await.unwrap();
    assert_eq!(sink.flush(&ctx).await.unwrap(), vec![]);
    proxy.abort();

    let db = admin().await;
    let sites: Vec<String> =
        db.query(&format!("SELECT site FROM \"{table}\" ORDER BY ts"), &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    db.batch_execute(&format!("DROP TABLE \"{table}\"")).await.unwrap();
    assert_eq!(sites, ["late", "late", "late"]);
}

#[tokio::test]
async fn upsert_loses_and_duplicates_nothing_when_the_backend_is_terminated() {
    let (rows, distinct, retries) = survives_backend_terminations(", mode: upsert, key: [ts]", &unique_table("ts_kill_upsert")).await;
    assert_eq!((rows, distinct), (3000, 3000));
    assert!(retries > 0, "terminations should have forced reconnects");
}

#[tokio::test]
async fn append_loses_and_duplicates_nothing_when_the_backend_is_terminated() {
    let (rows, distinct, retries) = survives_backend_terminations("", &unique_table("ts_kill_append")).await;
    assert_eq!((rows, distinct), (3000, 3000));
    assert!(retries > 0, "terminations should have forced reconnects");
}

#[test]
fn config_errors_name_the_field() {
    let base = "connection: 'host=127.0.0.1'";
    assert_eq!(build_err(&format!("{{{base}, table: t, mode: upsert}}")), "key: upsert mode needs the key columns that identify a row");
    assert_eq!(
        build_err(&format!("{{{base}, table: t, mode: upsert, key: [host]}}")),
        "key: the input has no column `host`; columns are `ts`, `site`, `status_code`, `response_time_ms`, `success`"
    );
    assert_eq!(build_err(&format!("{{{base}, table: t, time_column: site}}")), "time_column: column `site` is Utf8, not a timestamp");
    assert_eq!(build_err(&format!("{{{base}, table: t, mode: merge}}")), "mode: unknown variant `merge`, expected `append` or `upsert`");
    assert!(build_err("{connection: 'host=x port=notaport', table: t}").starts_with("connection: not a valid PostgreSQL connection string"));
}

/// A TCP proxy to the real server that the test can make silent: connections it accepts while
/// silent are held open and never answered, and switching to silent cuts the current ones.
struct SilentableProxy {
    silent: Arc<std::sync::atomic::AtomicBool>,
    forwarding: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    _accept: tokio::task::JoinHandle<()>,
}

impl SilentableProxy {
    async fn start(port: u16, target: String) -> Self {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let silent = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let forwarding = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (s, f) = (silent.clone(), forwarding.clone());
        let accept = tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let (mut client, _) = listener.accept().await.unwrap();
                if s.load(std::sync::atomic::Ordering::SeqCst) {
                    held.push(client);
                    continue;
                }
                let target = target.clone();
                f.lock().unwrap().push(tokio::spawn(async move {
                    let mut server = tokio::net::TcpStream::connect(&target).await.unwrap();
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }));
            }
        });
        SilentableProxy { silent, forwarding, _accept: accept }
    }

    fn set_silent(&self, silent: bool) {
        self.silent.store(silent, std::sync::atomic::Ordering::SeqCst);
        if silent {
            self.forwarding.lock().unwrap().drain(..).for_each(|t| t.abort());
        }
    }
}

/// A server that accepts and never answers is a transient failure after `timeout`, not a hang;
/// the rows stay buffered and are written once it answers again.
#[tokio::test]
async fn a_silent_server_times_out_and_the_rows_wait_for_it() {
    let port = tributary_testkit::free_port();
    let (target, conn) = tributary_testkit::test_postgres_via(port);
    let proxy = SilentableProxy::start(port, target).await;
    let table = unique_table("ts_silent");
    let cfg = ComponentConfig::from_yaml("pg", &format!("{{connection: '{conn}', table: {table}, timeout: 1s}}"));
    let mut sink = TimescaleSinkPlugin.build(&cfg, &[("in".into(), probe_schema())]).map_err(|e| e.to_string()).unwrap();
    let ctx = sink_context("pg");
    sink.start(&ctx).await.unwrap();

    proxy.set_silent(true);
    sink.write(probe_rows(0..3, "silent"), &ctx).await.unwrap();
    let started = std::time::Instant::now();
    let mut errors = Vec::new();
    for _ in 0..3 {
        match sink.flush(&ctx).await {
            Ok(_) => panic!("nothing can be written while the server is silent"),
            Err(e) => errors.push(e.to_string()),
        }
    }
    assert!(started.elapsed() < Duration::from_secs(10), "each attempt is bounded by `timeout`: {:?}", started.elapsed());
    assert!(errors.iter().any(|e| e == "PostgreSQL unavailable: no answer from PostgreSQL within 1s"), "{errors:?}");

    proxy.set_silent(false);
    assert_eq!(flush_retrying(sink.as_mut(), &ctx, 100).await, vec![]);
    let db = admin().await;
    let n: i64 = db.query_one(&format!("SELECT count(*) FROM \"{table}\" WHERE site = 'silent'"), &[]).await.unwrap().get(0);
    db.batch_execute(&format!("DROP TABLE \"{table}\"")).await.unwrap();
    assert_eq!(n, 3, "the buffered rows, once");
}

/// TLS with libpq's `sslmode` meanings against the test server (Debian's PostgreSQL has TLS on,
/// with a self-signed "snakeoil" certificate).
#[tokio::test]
async fn sslmode_require_encrypts_and_a_certificate_that_does_not_verify_fails_at_once() {
    let db = admin().await;
    let ssl_on: String = db.query_one("SHOW ssl", &[]).await.unwrap().get(0);
    assert_eq!(ssl_on, "on", "the test server must offer TLS (Debian's default)");

    // require: encrypted, certificate not checked (as libpq).
    let table = unique_table("ts_tls");
    let build_with = |id: &str, ssl: &str| {
        let cfg = ComponentConfig::from_yaml(id, &format!("{{connection: '{} {ssl}', table: {table}}}", pg_url()));
        TimescaleSinkPlugin.build(&cfg, &[("in".into(), probe_schema())])
    };
    let mut sink = build_with("tls_require", "sslmode=require").map_err(|e| e.to_string()).unwrap();
    let ctx = sink_context("tls_require");
    sink.start(&ctx).await.unwrap();
    sink.write(probe_rows(0..3, "tls.example"), &ctx).await.unwrap();
    assert_eq!(sink.flush(&ctx).await.unwrap(), vec![]);
    let encrypted: bool = db
        .query_one("SELECT bool_and(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.application_name = 'tributary/tls_require'", &[])
        .await
        .unwrap()
        .get(0);
    assert!(encrypted, "the sink's connection is encrypted");

    // verify-full against the Mozilla roots: a self-signed certificate fails at start, once,
    // as a configuration problem (no minute of retries).
    let mut sink = build_with("tls_verify", "sslmode=verify-full").map_err(|e| e.to_string()).unwrap();
    let ctx = sink_context("tls_verify");
    let err = format!("{:#}", sink.start(&ctx).await.unwrap_err());
    assert!(err.contains("invalid peer certificate"), "{err}");
    assert_eq!(ctx.metrics.retries.get(), 0, "not retried: {err}");

    // An unreadable root certificate is refused before anything runs.
    let err = build_with("tls_ca", "sslmode=verify-ca sslrootcert=/nonexistent/ca.pem").err().map(|e| e.to_string()).unwrap();
    assert!(err.starts_with("connection: sslrootcert /nonexistent/ca.pem: "), "{err}");
    db.batch_execute(&format!("DROP TABLE \"{table}\"")).await.unwrap();
}

#[test]
fn intervals_are_sent_in_the_unit_a_user_would_write() {
    let d = |s: u64| crate::table::interval(Duration::from_secs(s));
    assert_eq!(d(14 * 86_400), "INTERVAL '14 days'");
    assert_eq!(d(86_400), "INTERVAL '1 day'");
    assert_eq!(d(7_200), "INTERVAL '2 hours'");
    assert_eq!(d(5_400), "INTERVAL '90 minutes'");
    assert_eq!(d(61), "INTERVAL '61 seconds'");
    assert_eq!(crate::table::interval(Duration::from_millis(10)), "INTERVAL '1 second'");
}

#[test]
fn timescaledb_must_be_installed_and_preloaded() {
    use crate::table::Timescale;
    assert_eq!(Timescale::from_server(false, "timescaledb"), Timescale::Absent);
    assert_eq!(Timescale::from_server(true, ""), Timescale::NotPreloaded);
    assert_eq!(Timescale::from_server(true, "pg_stat_statements"), Timescale::NotPreloaded);
    assert_eq!(Timescale::from_server(true, "pg_stat_statements, timescaledb"), Timescale::Available);
    assert_eq!(Timescale::from_server(true, "\"timescaledb\""), Timescale::Available);
}

/// Eight sinks creating one table in a schema that does not exist yet, at the same moment (the
/// first start of a pipeline with several sinks): every one starts. Unserialised, concurrent
/// `CREATE SCHEMA/TABLE IF NOT EXISTS` fail with unique violations in the catalog.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sinks_starting_together_on_a_new_table_all_start() {
    let table = unique_table("ts_race");
    let schema = format!("race_{}", table.rsplit('_').next().unwrap());
    let starts: Vec<_> = (0..8)
        .map(|i| {
            let (table, schema) = (table.clone(), schema.clone());
            tokio::spawn(async move {
                let mut sink = build_as(&format!("pg{i}"), &table, &format!(", schema: {schema}"), probe_schema());
                sink.start(&sink_context("pg")).await.map_err(|e| format!("{e:#}"))
            })
        })
        .collect();
    for s in starts {
        assert_eq!(s.await.unwrap(), Ok(()));
    }
    let db = admin().await;
    let columns: i64 = db
        .query_one("SELECT count(*) FROM information_schema.columns WHERE table_schema = $1 AND table_name = $2", &[&schema, &table])
        .await
        .unwrap()
        .get(0);
    assert_eq!(columns, 5);
    db.batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE")).await.unwrap();
}

/// The race the issue names, on plain PostgreSQL: concurrent `CREATE EXTENSION IF NOT EXISTS`
/// under the sinks' DDL lock all succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_extension_under_the_ddl_lock_never_collides() {
    let creates: Vec<_> = (0..8)
        .map(|_| {
            tokio::spawn(async move {
                let db = admin().await;
                crate::table::with_ddl_lock(&db, async {
                    db.batch_execute("CREATE EXTENSION IF NOT EXISTS hstore").await?;
                    Ok(())
                })
                .await
                .map_err(|e| format!("{e:#}"))
            })
        })
        .collect();
    for c in creates {
        assert_eq!(c.await.unwrap(), Ok(()));
    }
    let db = admin().await;
    crate::table::with_ddl_lock(&db, async {
        db.batch_execute("DROP EXTENSION IF EXISTS hstore").await?;
        Ok(())
    })
    .await
    .unwrap();
}

/// An application's table keyed by `id bigserial PRIMARY KEY`: its key lacks the time column,
/// so TimescaleDB would refuse it; the sink names the index (and keeps a plain table, writing).
#[tokio::test]
async fn unique_indexes_without_the_time_column_are_named() {
    let table = unique_table("ts_app");
    let db = admin().await;
    db.batch_execute(&format!(
        "CREATE TABLE \"{table}\" (id bigserial PRIMARY KEY, ts timestamptz NOT NULL, site text, status_code bigint, response_time_ms double precision, success boolean, UNIQUE (site, ts))"
    ))
    .await
    .unwrap();
    let found = crate::table::unique_indexes_without(&db, &format!("\"public\".\"{table}\""), "ts").await.unwrap();
    assert_eq!(found, vec![format!("`{table}_pkey` (id)")]);
    let mut sink = build(&table, "", probe_schema());
    let ctx = sink_context("pg");
    sink.start(&ctx).await.unwrap();
    sink.write(probe_rows(0..3, "a"), &ctx).await.unwrap();
    assert_eq!(flush_retrying(sink.as_mut(), &ctx, 20).await, vec![]);
    assert_eq!(db.query_one(&format!("SELECT count(*) FROM \"{table}\""), &[]).await.unwrap().get::<_, i64>(0), 3);
    db.batch_execute(&format!("DROP TABLE \"{table}\"")).await.unwrap();
}

/// Where a TimescaleDB server is given (`TRIBUTARY_TEST_TIMESCALEDB`, a libpq URL): a restart with
/// other settings changes the hypertable's chunk interval and retention, in the user's units.
/// Without the variable there is no TimescaleDB here to test against, and the test says so; with
/// it set and the server unreachable, it fails.
#[tokio::test]
async fn a_restart_with_other_settings_changes_the_hypertable() {
    let Ok(url) = std::env::var("TRIBUTARY_TEST_TIMESCALEDB") else {
        eprintln!("TRIBUTARY_TEST_TIMESCALEDB is not set: the hypertable settings test needs a TimescaleDB server");
        return;
    };
    let (db, conn) = tokio_postgres::connect(&url, NoTls).await.expect("TRIBUTARY_TEST_TIMESCALEDB is set but unreachable");
    tokio::spawn(conn);
    let table = unique_table("ts_settings");
    let start = |extra: &'static str| {
        let cfg = ComponentConfig::from_yaml("pg", &format!("{{connection: '{url}', table: {table}{extra}}}"));
        TimescaleSinkPlugin.build(&cfg, &[("in".into(), probe_schema())]).map_err(|e| e.to_string()).unwrap()
    };
    start(", chunk_interval: 1d, retention: 30d").start(&sink_context("pg")).await.unwrap();
    start(", chunk_interval: 7d, retention: 14d, compress_after: 2d").start(&sink_context("pg")).await.unwrap();
    let chunk: String = db
        .query_one("SELECT time_interval::text FROM timescaledb_information.dimensions WHERE hypertable_name = $1", &[&table])
        .await
        .unwrap()
        .get(0);
    assert_eq!(chunk, "7 days");
    let jobs: Vec<(String, String)> = db
        .query(
            "SELECT proc_name::text, coalesce(config->>'drop_after', config->>'compress_after') FROM timescaledb_information.jobs WHERE hypertable_name = $1 ORDER BY 1",
            &[&table],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(jobs, vec![("policy_compression".into(), "2 days".into()), ("policy_retention".into(), "14 days".into())]);
    db.batch_execute(&format!("DROP TABLE \"{table}\"")).await.unwrap();
}

/// A TCP proxy to the real server that, once armed, forwards the next `COMMIT` and closes both
/// sides before the server's answer can come back: the sink cannot know whether it committed.
struct CommitEatingProxy {
    armed: Arc<std::sync::atomic::AtomicBool>,
    eaten: Arc<std::sync::atomic::AtomicUsize>,
    _accept: tokio::task::JoinHandle<()>,
}

impl CommitEatingProxy {
    async fn start(port: u16, target: String) -> Self {
        use std::sync::atomic::Ordering::SeqCst;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let armed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let eaten = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (a, n) = (armed.clone(), eaten.clone());
        let accept = tokio::spawn(async move {
            loop {
                let (client, _) = listener.accept().await.unwrap();
                let server = tokio::net::TcpStream::connect(&target).await.unwrap();
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let mute = Arc::new(std::sync::atomic::AtomicBool::new(false));
                let replies = {
                    let mute = mute.clone();
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 64 << 10];
                        while let Ok(n) = server_read.read(&mut buf).await {
                            if n == 0 || mute.load(SeqCst) || client_write.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    })
                };
                let (a, n) = (a.clone(), n.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 << 10];
                    while let Ok(len) = client_read.read(&mut buf).await {
                        if len == 0 {
                            break;
                        }
                        let commit = buf[..len].windows(6).any(|w| w == b"COMMIT");
                        if commit && a.swap(false, SeqCst) {
                            mute.store(true, SeqCst);
                            n.fetch_add(1, SeqCst);
                            let _ = server_write.write_all(&buf[..len]).await;
                            // The server commits; its answer is dropped with the connection.
                            tokio::time::sleep(Duration::from_millis(300)).await;
                            replies.abort();
                            return;
                        }
                        if server_write.write_all(&buf[..len]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        CommitEatingProxy { armed, eaten, _accept: accept }
    }
}

/// A COMMIT whose answer is lost: the retry asks the server whether that transaction committed
/// (`txid_status`) instead of writing the rows again. Before, the rows were in the table twice.
#[tokio::test]
async fn an_append_whose_commit_answer_was_lost_is_written_once() {
    use std::sync::atomic::Ordering::SeqCst;
    let port = tributary_testkit::free_port();
    let (target, conn) = tributary_testkit::test_postgres_via(port);
    let proxy = CommitEatingProxy::start(port, target).await;
    // In clear text, so the proxy can see the COMMIT.
    let conn = if conn.contains("://") {
        format!("{conn}{}sslmode=disable", if conn.contains('?') { '&' } else { '?' })
    } else {
        format!("{conn} sslmode=disable")
    };
    let table = unique_table("ts_in_doubt");
    let cfg = ComponentConfig::from_yaml("pg", &format!("{{connection: '{conn}', table: {table}, timeout: 2s}}"));
    let mut sink = TimescaleSinkPlugin.build(&cfg, &[("in".into(), probe_schema())]).map_err(|e| e.to_string()).unwrap();
    let ctx = sink_context("pg");
    sink.start(&ctx).await.unwrap();
    proxy.armed.store(true, SeqCst);
    sink.write(probe_rows(0..5, "doubt"), &ctx).await.unwrap();
    let lost = sink.flush(&ctx).await.err().map(|e| e.to_string());
    assert!(lost.is_some(), "the COMMIT's answer never came");
    assert_eq!(proxy.eaten.load(SeqCst), 1, "{lost:?}");
    sink.write(probe_rows(5..8, "after"), &ctx).await.unwrap();
    assert_eq!(flush_retrying(sink.as_mut(), &ctx, 100).await, vec![]);
    let db = admin().await;
    let counts: Vec<(String, i64)> = db
        .query(&format!("SELECT site, count(*) FROM \"{table}\" GROUP BY site ORDER BY site"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    db.batch_execute(&format!("DROP TABLE \"{table}\"")).await.unwrap();
    assert_eq!(counts, vec![("after".to_string(), 3), ("doubt".to_string(), 5)], "the committed rows once, the next rows after them");
}

fn at(seq: u64) -> tributary_sdk::Position {
    tributary_sdk::Position { stream: "http_in".into(), epoch: 42, seq }
}

/// `delivery: exactly_once`: each flush stores the positions its rows reach in the same
/// transaction, a restarted sink reads them back, and a batch whose rows were refused still gets
/// its position stored (on its own), after the rows before it.
#[tokio::test]
async fn positions_are_committed_with_the_rows_and_read_back_by_the_next_start() {
    let table = unique_table("ts_positions");
    let id = format!("eo_{table}");
    let ctx = sink_context(&id);
    let db = admin().await;
    let stored = || async {
        let rows = db
            .query(&format!("SELECT stream, epoch, seq FROM tributary_positions WHERE sink = '{id}'"), &[])
            .await
            .map(|rows| rows.iter().map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1), r.get::<_, i64>(2))).collect::<Vec<_>>());
        rows.unwrap_or_default()
    };
    let mut sink = build_as(&id, &table, "", probe_schema());
    sink.start(&ctx).await.unwrap();
    let first = sink.positions().expect("timescale stores positions").committed(&ctx, &[]).await.unwrap();
    assert!(first.is_empty(), "a new sink has written nothing: {first}");
    sink.positions().unwrap().reached(&at(3));
    sink.write(probe_rows(0..4, "a"), &ctx).await.unwrap();
    sink.positions().unwrap().reached(&at(7));
    sink.write(probe_rows(4..6, "a"), &ctx).await.unwrap();
    assert_eq!(stored().await, vec![], "nothing before the flush");
    assert_eq!(sink.flush(&ctx).await.unwrap(), vec![]);
    assert_eq!(stored().await, vec![("http_in".to_string(), 42, 7)]);

    // A row the table refuses (NULL in the NOT NULL time column): the rows around it are written
    // with the position before it; the rest is stored by the next flush, on its own.
    let bad = {
        let rows = probe_rows(6..9, "b");
        let mut cols = rows.columns().to_vec();
        cols[0] = Arc::new(
            TimestampMicrosecondArray::from(vec![Some(1_795_255_206_000_000), None, Some(1_795_255_208_000_000)]).with_timezone("UTC"),
        );
        let nullable =
            Arc::new(Schema::new(probe_schema().fields().iter().map(|f| f.as_ref().clone().with_nullable(true)).collect::<Vec<_>>()));
        RecordBatch::try_new(nullable, cols).unwrap()
    };
    drop(sink);
    let nullable_schema = bad.schema();
    let mut sink = build_as(&id, &table, "", nullable_schema);
    sink.start(&ctx).await.unwrap();
    assert_eq!(sink.positions().unwrap().committed(&ctx, &[]).await.unwrap().to_string(), "http_in #7 (epoch 2a)");
    sink.positions().unwrap().reached(&at(8));
    sink.write(bad, &ctx).await.unwrap();
    let refused = sink.flush(&ctx).await.unwrap();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(stored().await, vec![("http_in".to_string(), 42, 7)], "not past a refused row before its dead letter is stored");
    assert_eq!(sink.flush(&ctx).await.unwrap(), vec![]);
    assert_eq!(stored().await, vec![("http_in".to_string(), 42, 8)]);
    let count: i64 = db.query_one(&format!("SELECT count(*) FROM \"{table}\""), &[]).await.unwrap().get(0);
    db.batch_execute(&format!("DROP TABLE \"{table}\"; DELETE FROM tributary_positions WHERE sink = '{id}'")).await.unwrap();
    assert_eq!(count, 8, "6 rows, then 2 of the 3");
}
