//! A `tributary` reading badge events from a Redis Stream is killed (SIGKILL) mid-stream and
//! restarted: every entry reaches the sink (duplicates allowed, none missing) and the consumer
//! group's pending list ends empty, because entries are XACKed only after the sink wrote them.

use crate::common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use redis::AsyncCommands;

const TOTAL: usize = 2000;

fn redis_url() -> String {
    tributary_testkit::test_redis_url()
}

/// user_uuid → how many times it was written.
fn written(path: &std::path::Path) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for line in std::fs::read_to_string(path).unwrap_or_default().lines() {
        // The last line can be partial while the sink writes: ignore what does not parse.
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
            *seen.entry(v["user_uuid"].as_str().unwrap().to_string()).or_insert(0) += 1;
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_stream_consumer_restarts_without_losing_an_entry() {
    let stream = format!("badge-restart-{}", std::process::id());
    let mut conn = redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("Redis must run at {} for this test ({e})", redis_url()));
    let _: () = redis::cmd("DEL").arg(&stream).query_async(&mut conn).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let yaml = format!(
        r#"
admin: {{address: "{admin}"}}
sources:
  badges:
    type: badge_events
    mode: stream
    url: {url}
    stream: {stream}
    batch_size: 50
sinks:
  out:
    type: file
    inputs: [badges]
    path: {out}
    flush_interval: 100ms
"#,
        admin = common::free_addr(),
        url = redis_url(),
        out = out.display()
    );
    let path = common::write(dir.path(), "badges.yaml", &yaml);

    let mut producer = conn.clone();
    let key = stream.clone();
    let produce = tokio::spawn(async move {
        for id in 0..TOTAL {
            let payload = format!(r#"{{"user_uuid":"u-{id}","mac_address":"aa:bb","event":"high-score","high_scores":[["BO",{id},10]]}}"#);
            let _: String = producer.xadd(&key, "*", &[("channel", "high-score-processor"), ("payload", payload.as_str())]).await.unwrap();
            if id % 20 == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });

    let mut first = common::run_bin(&path);
    let t0 = Instant::now();
    while written(&out).len() < 200 && t0.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill().unwrap();
    first.wait().unwrap();
    let before_kill = written(&out).len();
    assert!((200..TOTAL).contains(&before_kill), "killed mid-stream after {before_kill} rows");

    let mut second = common::run_bin(&path);
    produce.await.unwrap();
    let t0 = Instant::now();
    // Rows the killed run wrote but never acknowledged are in the file already; the restarted
    // consumer re-reads its pending entries (batch by batch), so wait for the pending list too.
    while (written(&out).len() < TOTAL || common::pending(&mut conn, &stream, "tributary").await > 0)
        && t0.elapsed() < Duration::from_secs(60)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    common::sigterm(&second);
    let status = second.wait().unwrap();
    assert!(status.success(), "clean shutdown exits 0: {status:?}");

    let seen = written(&out);
    let missing: Vec<usize> = (0..TOTAL).filter(|id| !seen.contains_key(&format!("u-{id}"))).collect();
    assert!(missing.is_empty(), "{} entries lost, first: {:?}", missing.len(), &missing[..missing.len().min(10)]);
    assert_eq!(common::pending(&mut conn, &stream, "tributary").await, 0, "every entry acknowledged");
    let duplicates: usize = seen.values().map(|n| n - 1).sum();
    eprintln!("{TOTAL} entries, {before_kill} written before the kill, {duplicates} re-read after the restart");
    let _: () = redis::cmd("DEL").arg(&stream).query_async(&mut conn).await.unwrap();
}

/// user_uuid → how many rows of `table` carry it.
async fn uuids_in_table(db: &tokio_postgres::Client, table: &str) -> BTreeMap<String, i64> {
    let rows = db.query(&format!("SELECT user_uuid, count(*) FROM \"{table}\" GROUP BY user_uuid"), &[]).await.unwrap_or_default();
    rows.iter().map(|r| (r.get(0), r.get(1))).collect()
}

/// The same stream with `delivery: exactly_once`, no disk buffer, into two timescale tables that
/// commit at different paces (100 ms and 700 ms), killed 3 times: the consumer re-reads its pending
/// entries, XACKs what both tables wrote, cuts its batches where one of them stopped, and every
/// entry is in each table once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_stream_consumer_writes_every_entry_once_with_exactly_once() {
    let stream = format!("badge-eo-{}", std::process::id());
    let (fast, slow) = (format!("badge_eo_fast_{}", std::process::id()), format!("badge_eo_slow_{}", std::process::id()));
    let mut conn = redis::Client::open(redis_url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("DEL").arg(&stream).query_async(&mut conn).await.unwrap();
    let db = common::pg().await;
    for t in [&fast, &slow] {
        db.batch_execute(&format!("DROP TABLE IF EXISTS \"{t}\"; DELETE FROM tributary_positions WHERE target = 'public.{t}'")).await.ok();
    }
    let dir = tempfile::tempdir().unwrap();
    let admin = common::free_addr();
    let yaml = format!(
        r#"delivery: exactly_once
admin: {{address: "{admin}"}}
sources:
  badges:
    type: badge_events
    mode: stream
    url: {url}
    stream: {stream}
    batch_size: 50
sinks:
  fast: {{type: timescale, inputs: [badges], connection: "{pg}", table: {fast}, batch: {{max_age: 100ms}}}}
  slow: {{type: timescale, inputs: [badges], connection: "{pg}", table: {slow}, batch: {{max_age: 700ms}}}}
"#,
        url = redis_url(),
        pg = tributary_testkit::test_postgres_url(),
    );
    let path = common::write(dir.path(), "badges.yaml", &yaml);
    let log = dir.path().join("run.log");
    let skipped_so_far = || {
        let Ok((200, text)) = common::get(admin, "/metrics") else { return 0.0 };
        ["badges", "fast", "slow"]
            .iter()
            .filter_map(|c| common::metric(&text, "tributary_component_replay_skipped_rows_total", c))
            .sum::<f64>()
    };

    let mut producer = conn.clone();
    let key = stream.clone();
    let produce = tokio::spawn(async move {
        for id in 0..TOTAL {
            let payload = format!(r#"{{"user_uuid":"u-{id}","mac_address":"aa:bb","event":"high-score","high_scores":[["BO",{id},10]]}}"#);
            let _: String = producer.xadd(&key, "*", &[("channel", "high-score-processor"), ("payload", payload.as_str())]).await.unwrap();
            // About 250 a second: the three kills land while entries still come.
            if id % 5 == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    let (mut child, mut skipped) =
        common::kill_as_table_grows(&db, &fast, (3, 300, Duration::ZERO), || common::run_logged(&path, &[], &log), &skipped_so_far).await;
    produce.await.unwrap();
    let t0 = Instant::now();
    while (uuids_in_table(&db, &fast).await.len() < TOTAL
        || uuids_in_table(&db, &slow).await.len() < TOTAL
        || common::pending(&mut conn, &stream, "tributary").await > 0)
        && t0.elapsed() < Duration::from_secs(60)
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    skipped += skipped_so_far();
    common::sigterm(&child);
    let status = child.wait().unwrap();
    assert!(status.success(), "clean shutdown exits 0: {status:?}\n{}", std::fs::read_to_string(&log).unwrap_or_default());
    for t in [&fast, &slow] {
        let seen = uuids_in_table(&db, t).await;
        let missing: Vec<usize> = (0..TOTAL).filter(|id| !seen.contains_key(&format!("u-{id}"))).collect();
        let twice: i64 = seen.values().map(|n| n - 1).sum();
        eprintln!("{t}: {} entries, {} missing, {twice} written twice", seen.len(), missing.len());
        assert!(missing.is_empty() && twice == 0, "{t}: missing {:?}…, {twice} written twice", &missing[..missing.len().min(10)]);
    }
    assert_eq!(common::pending(&mut conn, &stream, "tributary").await, 0, "every entry acknowledged");
    eprintln!("{skipped} replayed rows skipped");
    assert!(skipped > 0.0, "the kills left pending entries the tables had written");
    let _: () = redis::cmd("DEL").arg(&stream).query_async(&mut conn).await.unwrap();
    for t in [&fast, &slow] {
        db.batch_execute(&format!("DROP TABLE IF EXISTS \"{t}\"; DELETE FROM tributary_positions WHERE target = 'public.{t}'")).await.ok();
    }
}
