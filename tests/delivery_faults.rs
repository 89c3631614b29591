//! Delivery under faults, against the built binary: a Redis Stream feeding PostgreSQL through a
//! proxy the test cuts. Nothing the source acknowledged may be missing: while the database is
//! away the entries stay pending (not XACKed), `/health` names the failing sink, and once the
//! database is back every row is written and every entry acknowledged.

mod common;

use std::time::Duration;

use common::*;
use redis::AsyncCommands;

/// A TCP proxy to `target` on `port` that can be cut (listener and every forwarded connection
/// closed, like a lost network) and restored.
struct CuttableProxy {
    port: u16,
    target: String,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    forwarded: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl CuttableProxy {
    fn new(port: u16, target: String) -> Self {
        CuttableProxy { port, target, tasks: Vec::new(), forwarded: Default::default() }
    }

    async fn open(&mut self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port)).await.unwrap();
        let (target, forwarded) = (self.target.clone(), self.forwarded.clone());
        self.tasks.push(tokio::spawn(async move {
            loop {
                let (mut client, _) = listener.accept().await.unwrap();
                let target = target.clone();
                forwarded.lock().unwrap().push(tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                }));
            }
        }));
    }

    fn cut(&mut self) {
        self.tasks.drain(..).for_each(|t| t.abort());
        self.forwarded.lock().unwrap().drain(..).for_each(|t| t.abort());
    }
}

async fn xadd_scores(conn: &mut redis::aio::MultiplexedConnection, stream: &str, range: std::ops::RangeInclusive<u32>) {
    for i in range {
        let payload = format!(r#"{{"user_uuid":"u-{i}","mac_address":"aa","event":"high-score","high_scores":[["BO",{i},10]]}}"#);
        let _: String = conn.xadd(stream, "*", &[("channel", "high-score-processor"), ("payload", payload.as_str())]).await.unwrap();
    }
}

async fn pending(conn: &mut redis::aio::MultiplexedConnection, stream: &str) -> i64 {
    let summary: redis::Value = redis::cmd("XPENDING").arg(stream).arg("g").query_async(conn).await.unwrap();
    match summary {
        redis::Value::Array(v) => redis::from_redis_value(&v[0]).unwrap(),
        other => panic!("XPENDING: {other:?}"),
    }
}

async fn rows(db: &tokio_postgres::Client, table: &str) -> i64 {
    match db.query_one(&format!("SELECT count(*) FROM \"{table}\""), &[]).await {
        Ok(row) => row.get(0),
        Err(_) => 0, // not created yet
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_cut_under_a_stream_source_loses_nothing_and_acks_nothing_early() {
    let run = std::process::id();
    let (stream, table) = (format!("fault-badges-{run}"), format!("fault_badges_{run}"));
    let mut conn = redis::Client::open(tributary_sdk::testkit::test_redis_url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("DEL").arg(&stream).query_async(&mut conn).await.unwrap();
    let db = pg().await;
    db.batch_execute(&format!("DROP TABLE IF EXISTS \"{table}\"")).await.unwrap();

    let proxy_port = tributary_sdk::testkit::free_port();
    let (target, via_proxy) = tributary_sdk::testkit::test_postgres_via(proxy_port);
    let mut proxy = CuttableProxy::new(proxy_port, target);
    proxy.open().await;
    let dir = tempfile::tempdir().unwrap();
    let admin = free_addr();
    let pipeline = write(
        dir.path(),
        "p.yaml",
        &format!(
            "admin: {{address: \"{admin}\", degraded_after: 2s}}\ndead_letters: {{path: \"{}\"}}\nsources:\n  badges:\n    type: badge_events\n    mode: stream\n    url: {}\n    stream: {stream}\n    group: g\n    consumer: c1\nsinks:\n  db:\n    type: timescale\n    inputs: [badges]\n    connection: \"{via_proxy}\"\n    table: {table}\n    batch_age: 200ms\n    timeout: 3s\n",
            dir.path().join("dead_letters").display(),
            tributary_sdk::testkit::test_redis_url(),
        ),
    );
    let mut child = run_bin(&pipeline);
    wait_for_port(admin).await;

    xadd_scores(&mut conn, &stream, 1..=5).await;
    for _ in 0..100 {
        if rows(&db, &table).await == 5 && pending(&mut conn, &stream).await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!((rows(&db, &table).await, pending(&mut conn, &stream).await), (5, 0), "before the cut");

    proxy.cut();
    xadd_scores(&mut conn, &stream, 6..=55).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(rows(&db, &table).await, 5, "nothing can be written while the database is away");
    assert_eq!(pending(&mut conn, &stream).await, 50, "read but not acknowledged: nothing acked early");
    let (status, health) = tokio::task::spawn_blocking(move || get(admin, "/health").unwrap()).await.unwrap();
    let health: serde_json::Value = serde_json::from_str(&health).unwrap();
    assert_eq!(
        (status, health["status"].as_str(), health["failing"].clone()),
        (503, Some("degraded"), serde_json::json!(["db"])),
        "{health}"
    );
    assert!(health["components"]["db"]["last_error"].as_str().unwrap().starts_with("PostgreSQL unavailable"), "{health}");

    proxy.open().await;
    for _ in 0..300 {
        if rows(&db, &table).await == 55 && pending(&mut conn, &stream).await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(rows(&db, &table).await, 55, "every row once the database is back");
    assert_eq!(pending(&mut conn, &stream).await, 0, "every entry acknowledged once written");
    let distinct: i64 = db.query_one(&format!("SELECT count(DISTINCT score) FROM \"{table}\""), &[]).await.unwrap().get(0);
    assert_eq!(distinct, 55, "no row twice");
    let (status, _) = tokio::task::spawn_blocking(move || get(admin, "/health").unwrap()).await.unwrap();
    assert_eq!(status, 200);

    sigterm(&child);
    assert!(child.wait().unwrap().success());
    assert!(!dir.path().join("dead_letters").exists(), "no dead letters: transient failures are retried, not given up");
    db.batch_execute(&format!("DROP TABLE \"{table}\"")).await.unwrap();
    let _: () = redis::cmd("DEL").arg(&stream).query_async(&mut conn).await.unwrap();
}
