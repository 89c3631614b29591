//! Delivery under faults, against the built binary: a Redis Stream feeding PostgreSQL through a
//! proxy the test cuts. Nothing the source acknowledged may be missing: while the database is
//! away the entries stay pending (not XACKed), `/health` names the failing sink, and once the
//! database is back every row is written and every entry acknowledged.

use crate::common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_cut_under_a_stream_source_loses_nothing_and_acks_nothing_early() {
    let run = std::process::id();
    let (stream, table) = (format!("fault-badges-{run}"), format!("fault_badges_{run}"));
    let mut conn = redis::Client::open(tributary_testkit::test_redis_url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("DEL").arg(&stream).query_async(&mut conn).await.unwrap();
    let db = pg().await;
    db.batch_execute(&format!("DROP TABLE IF EXISTS \"{table}\"")).await.unwrap();

    let (mut proxy, via_proxy) = CuttableProxy::to_test_postgres().await;
    let dir = tempfile::tempdir().unwrap();
    let admin = free_addr();
    let pipeline = write(
        dir.path(),
        "p.yaml",
        &format!(
            "admin: {{address: \"{admin}\", degraded_after: 2s}}\ndead_letters: {{path: \"{}\"}}\nsources:\n  badges:\n    type: badge_events\n    mode: stream\n    url: {}\n    stream: {stream}\n    group: g\n    consumer: c1\nsinks:\n  db:\n    type: timescale\n    inputs: [badges]\n    connection: \"{via_proxy}\"\n    table: {table}\n    batch: {{max_age: 200ms}}\n    timeout: 3s\n",
            dir.path().join("dead_letters").display(),
            tributary_testkit::test_redis_url(),
        ),
    );
    let mut child = run_bin(&pipeline);
    wait_for_port(admin).await;

    xadd_scores(&mut conn, &stream, 1..=5).await;
    for _ in 0..100 {
        if pg_count(&db, &table).await == 5 && pending(&mut conn, &stream, "g").await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!((pg_count(&db, &table).await, pending(&mut conn, &stream, "g").await), (5, 0), "before the cut");

    proxy.cut();
    xadd_scores(&mut conn, &stream, 6..=55).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(pg_count(&db, &table).await, 5, "nothing can be written while the database is away");
    // How many of the 50 the source read before backpressure stopped it depends on timing (the
    // sink's buffer and the channels fill at the speed entries arrive); that none of them was
    // acknowledged does not: every entry read after the first five is still pending.
    let read = entries_read(&mut conn, &stream, "g").await;
    assert!(read > 5, "the source read entries during the cut: {read}");
    assert_eq!(pending(&mut conn, &stream, "g").await, read - 5, "read but not acknowledged: nothing acked early");
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
        if pg_count(&db, &table).await == 55 && pending(&mut conn, &stream, "g").await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(pg_count(&db, &table).await, 55, "every row once the database is back");
    assert_eq!(pending(&mut conn, &stream, "g").await, 0, "every entry acknowledged once written");
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

/// Entries the group's consumers have been given so far (`entries-read` of XINFO GROUPS).
async fn entries_read(conn: &mut redis::aio::MultiplexedConnection, stream: &str, group: &str) -> i64 {
    let groups: Vec<Vec<redis::Value>> = redis::cmd("XINFO").arg("GROUPS").arg(stream).query_async(conn).await.unwrap();
    for fields in groups {
        let pairs: Vec<(String, redis::Value)> =
            fields.chunks(2).map(|kv| (redis::from_redis_value::<String>(&kv[0]).unwrap(), kv[1].clone())).collect();
        if pairs.iter().any(|(k, v)| k == "name" && redis::from_redis_value::<String>(v).ok().as_deref() == Some(group)) {
            let (_, n) = pairs.iter().find(|(k, _)| k == "entries-read").expect("Redis 7 reports entries-read");
            return redis::from_redis_value(n).unwrap();
        }
    }
    panic!("no group `{group}` on `{stream}`");
}
