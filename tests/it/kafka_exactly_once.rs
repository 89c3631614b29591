//! `delivery: exactly_once` from a Kafka source, through SQL, into two exactly-once sinks that
//! write at different paces (a timescale `append` table every 100 ms, a Delta table every 1.5 s):
//! `kill -9` mid-stream, three times. After each kill the group resumes from its last commit,
//! which trails both sinks; the timescale table is ahead of the Delta table. Every message must be
//! in each once.
//!
//! With `delivery: at_least_once` the same run writes the rows between the Delta table's last
//! commit and the kill into the timescale table again (the control below shows it does).

use crate::common;

use std::collections::BTreeMap;
use std::process::Child;
use std::time::{Duration, Instant};

use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

const TOTAL: i64 = 6000;
const KILLS: usize = 3;

struct Run {
    dir: tempfile::TempDir,
    table: String,
    admin: std::net::SocketAddr,
    pipeline: std::path::PathBuf,
    log: std::path::PathBuf,
}

impl Run {
    fn new(bootstrap: &str, topic: &str, delivery: &str) -> Run {
        let dir = tempfile::tempdir().unwrap();
        let table = format!("kafka_eo_{delivery}_{}", std::process::id());
        let admin = common::free_addr();
        let yaml = format!(
            r#"delivery: {delivery}
admin: {{address: "{admin}"}}
sources:
  readings:
    type: kafka
    bootstrap_servers: "{bootstrap}"
    topics: [{topic}]
    group_id: {table}
    batch_size: 100
    batch_wait: 50ms
    schema: {{id: int, site: string, ts: timestamp}}
    # The killed member holds its partitions until its session times out (default 45 s).
    librdkafka: {{session.timeout.ms: "6000", heartbeat.interval.ms: "500"}}
transforms:
  named:
    inputs: [readings]
    sql: SELECT id, upper(site) AS site, ts FROM readings WHERE id >= 0
sinks:
  db: {{type: timescale, inputs: [named], connection: "{url}", table: {table}, batch: {{max_age: 100ms}}}}
  lake: {{type: parquet, format: delta, inputs: [named], path: "{lake}", max_age: 1500ms}}
"#,
            url = tributary_testkit::test_postgres_url(),
            lake = dir.path().join("lake").display(),
        );
        let pipeline = common::write(dir.path(), "pipeline.yaml", &yaml);
        let log = dir.path().join("run.log");
        Run { dir, table, admin, pipeline, log }
    }

    fn start(&self) -> Child {
        common::run_logged(&self.pipeline, &[], &self.log)
    }

    /// Replayed messages or rows not written again, so far in this process (the source's and the
    /// sinks' `replay_skipped_rows_total`).
    fn skipped(&self) -> f64 {
        let Ok((200, text)) = common::get(self.admin, "/metrics") else { return 0.0 };
        ["readings", "db", "lake"].iter().filter_map(|c| common::metric(&text, "tributary_component_replay_skipped_rows_total", c)).sum()
    }
}

async fn produce(bootstrap: String, topic: String) {
    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", &bootstrap).create().unwrap();
    for id in 0..TOTAL {
        let payload = format!(r#"{{"id":{id},"site":"s{}","ts":"2026-12-05T10:00:00Z"}}"#, id % 7);
        let key = (id % 13).to_string();
        producer.send(FutureRecord::to(&topic).key(&key).payload(&payload), Duration::from_secs(5)).await.map_err(|(e, _)| e).unwrap();
        if id % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// Runs the pipeline while `TOTAL` messages are produced, kills it `KILLS` times as the table
/// grows, then lets a last run finish. Returns the table's and the Delta table's id counts, and
/// how many replayed rows were skipped.
async fn killed_run(
    mock: &MockCluster<'_, rdkafka::producer::DefaultProducerContext>,
    delivery: &str,
) -> (BTreeMap<i64, i64>, BTreeMap<i64, i64>, f64) {
    let topic = format!("readings_{delivery}");
    mock.create_topic(&topic, 3, 1).unwrap();
    let bootstrap = mock.bootstrap_servers();
    let run = Run::new(&bootstrap, &topic, delivery);
    let db = common::pg().await;
    db.batch_execute(&format!("DROP TABLE IF EXISTS \"{0}\"; DELETE FROM tributary_positions WHERE target = 'public.{0}'", run.table))
        .await
        .ok();
    let producing = tokio::spawn(produce(bootstrap, topic));

    // Killed once each run has written more rows, while messages are still produced.
    let (mut child, mut skipped) =
        common::kill_as_table_grows(&db, &run.table, (KILLS, 700, Duration::ZERO), || run.start(), || run.skipped()).await;
    producing.await.unwrap();
    let t0 = Instant::now();
    loop {
        let (table, lake) = (common::ids_in_table(&db, &run.table).await, common::ids_in_delta(&run.dir.path().join("lake")));
        if (table.len() as i64 == TOTAL && lake.len() as i64 == TOTAL) || t0.elapsed() > Duration::from_secs(90) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    skipped += run.skipped();
    common::sigterm(&child);
    let status = child.wait().unwrap();
    let log = std::fs::read_to_string(&run.log).unwrap_or_default();
    assert!(status.success(), "a clean stop exits 0: {status:?}\n{log}");
    (common::ids_in_table(&db, &run.table).await, common::ids_in_delta(&run.dir.path().join("lake")), skipped)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_kafka_pipeline_writes_every_message_once_into_both_sinks() {
    let mock = MockCluster::new(1).unwrap();

    let (table, lake, skipped) = killed_run(&mock, "exactly_once").await;
    let (missing, twice) = common::missing_and_twice("exactly_once, timescale", &table, TOTAL);
    assert!(missing.is_empty() && twice == 0, "timescale: missing {:?}…, {twice} written twice", &missing[..missing.len().min(10)]);
    let (missing, twice) = common::missing_and_twice("exactly_once, delta", &lake, TOTAL);
    assert!(missing.is_empty() && twice == 0, "delta: missing {:?}…, {twice} written twice", &missing[..missing.len().min(10)]);
    eprintln!("exactly_once: {skipped} replayed messages or rows skipped");
    assert!(skipped > 0.0, "the kills left replays to skip");

    // The control: at least once, the table gets the Delta table's lag again after each kill.
    let (table, lake, _) = killed_run(&mock, "at_least_once").await;
    let (missing, twice) = common::missing_and_twice("at_least_once, timescale", &table, TOTAL);
    assert!(missing.is_empty(), "at least once loses nothing either");
    assert!(twice > 0, "the kills replayed rows the table had written");
    assert!(common::missing_and_twice("at_least_once, delta", &lake, TOTAL).0.is_empty());
}

/// Two kafka sources into one exactly-once sink: each asks that sink where it stopped in its own
/// partitions, over one query channel the sink serves for both (a channel per source, kept per
/// sink, left the first source asking a sink that no longer listened: it failed at its first
/// message).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_kafka_sources_ask_one_sink_where_they_stopped() {
    let mock = MockCluster::new(1).unwrap();
    let bootstrap = mock.bootstrap_servers();
    let table = format!("kafka_eo_two_sources_{}", std::process::id());
    let db = common::pg().await;
    db.batch_execute(&format!("DROP TABLE IF EXISTS \"{table}\"; DELETE FROM tributary_positions WHERE target = 'public.{table}'"))
        .await
        .ok();
    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", &bootstrap).create().unwrap();
    for (topic, first) in [("two_a", 0), ("two_b", 1000)] {
        mock.create_topic(topic, 2, 1).unwrap();
        for id in first..first + 50 {
            let payload = format!(r#"{{"id":{id},"site":"s","ts":"2026-12-05T10:00:00Z"}}"#);
            let key = id.to_string();
            producer.send(FutureRecord::to(topic).key(&key).payload(&payload), Duration::from_secs(5)).await.map_err(|(e, _)| e).unwrap();
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let source = |topic: &str| {
        format!(
            "    type: kafka\n    bootstrap_servers: \"{bootstrap}\"\n    topics: [{topic}]\n    group_id: {table}_{topic}\n    \
             batch_wait: 50ms\n    schema: {{id: int, site: string, ts: timestamp}}\n"
        )
    };
    let yaml = format!(
        "delivery: exactly_once\nadmin: {{enabled: false}}\nsources:\n  a:\n{}  b:\n{}sinks:\n  db: {{type: timescale, inputs: [a, b], \
         connection: \"{}\", table: {table}, batch: {{max_age: 100ms}}}}\n",
        source("two_a"),
        source("two_b"),
        tributary_testkit::test_postgres_url(),
    );
    let (run, stop) = common::spawn_pipeline(&common::write(dir.path(), "pipeline.yaml", &yaml));
    let t0 = Instant::now();
    while common::pg_count(&db, &table).await < 100 && t0.elapsed() < Duration::from_secs(30) && !run.is_finished() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    let report = run.await.unwrap();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    let ids = common::ids_in_table(&db, &table).await;
    let expected: BTreeMap<i64, i64> = (0..50).chain(1000..1050).map(|id| (id, 1)).collect();
    assert_eq!(ids, expected);
}
