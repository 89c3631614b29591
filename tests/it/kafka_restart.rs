//! A `tributary` consumer is killed (SIGKILL) mid-stream and restarted: every message produced to
//! the Kafka topic ends up in the sink — duplicates allowed, none missing — because offsets are
//! committed only after the sink has durably written the rows.

use crate::common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

const TOTAL: i64 = 3000;

/// id → how many times it was written.
fn written(path: &std::path::Path) -> BTreeMap<i64, usize> {
    let mut seen = BTreeMap::new();
    for line in std::fs::read_to_string(path).unwrap_or_default().lines() {
        // The last line can be partial while the sink writes: ignore what does not parse.
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
            *seen.entry(v["id"].as_i64().unwrap()).or_insert(0) += 1;
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_consumer_restarts_without_losing_a_message() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("statuses", 3, 1).unwrap();
    let bootstrap = mock.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    let yaml = format!(
        r#"
admin: {{address: "{admin}"}}
sources:
  statuses:
    type: kafka
    bootstrap_servers: "{bootstrap}"
    topics: [statuses]
    group_id: restart-test
    batch_size: 50
    batch_wait: 50ms
    schema: {{id: int, site: string, ts: timestamp}}
    # The killed member holds its partitions until its session times out (default 45 s).
    librdkafka: {{session.timeout.ms: "6000", heartbeat.interval.ms: "500"}}
sinks:
  out:
    type: file
    inputs: [statuses]
    path: {out}
    flush_interval: 100ms
"#,
        admin = common::free_addr(),
        out = out.display()
    );
    let path = common::write(dir.path(), "consumer.yaml", &yaml);

    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", &bootstrap).create().unwrap();
    let produce = tokio::spawn(async move {
        for id in 0..TOTAL {
            let payload = format!(r#"{{"id":{id},"site":"https://s{}.example","ts":"2026-11-22T10:00:00Z"}}"#, id % 7);
            let key = (id % 13).to_string();
            producer
                .send(FutureRecord::to("statuses").key(&key).payload(&payload), Duration::from_secs(5))
                .await
                .map_err(|(e, _)| e)
                .unwrap();
            if id % 30 == 0 {
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
    });

    let mut first = common::run_bin(&path);
    // Kill it once it has written some rows but while messages are still being produced.
    let t0 = Instant::now();
    while written(&out).len() < 300 && t0.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill().unwrap();
    first.wait().unwrap();
    let before_kill = written(&out).len();
    assert!(before_kill >= 300 && (before_kill as i64) < TOTAL, "killed mid-stream after {before_kill} rows");

    let mut second = common::run_bin(&path);
    produce.await.unwrap();
    let t0 = Instant::now();
    while (written(&out).len() as i64) < TOTAL && t0.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A clean stop commits and exits 0.
    common::sigterm(&second);
    let status = second.wait().unwrap();
    assert!(status.success(), "clean shutdown exits 0: {status:?}");

    let seen = written(&out);
    let missing: Vec<i64> = (0..TOTAL).filter(|id| !seen.contains_key(id)).collect();
    assert!(missing.is_empty(), "{} messages lost, first: {:?}", missing.len(), &missing[..missing.len().min(10)]);
    let duplicates: usize = seen.values().map(|n| n - 1).sum();
    eprintln!("{TOTAL} messages, {before_kill} written before the kill, {duplicates} replayed duplicates");
}
