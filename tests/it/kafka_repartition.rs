//! Keyed repartitioning (issue 46): badge events keyed by badge, windowed per channel
//! (`partition_by: [channel]`), in a group of `tributary run` processes on librdkafka's mock
//! broker. One member is SIGKILLed while its windows are open, and another joins after windows
//! have started closing. Each (window, channel) row in the exactly-once table must equal what
//! one process computes over the same events: none partial, none twice.

use crate::common;
use common::scale_out::Member;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

const PARTITIONS: i32 = 6;
/// Events per second: event time follows the wall clock.
const RATE: i64 = 300;
/// How long the group test produces.
const SECONDS: i64 = 40;
const CHANNELS: i64 = 7;
const BADGES: i64 = 40;
const WINDOW_MS: i64 = 2000;

fn start(name: &'static str, dir: &Path, pipeline: &Path) -> Member {
    common::scale_out::start(name, name, dir, pipeline, "info", &[])
}

/// One event: (event time in ms, badge, channel, value).
fn event(i: i64, base_ms: i64) -> (i64, i64, i64, i64) {
    (base_ms + i * 1000 / RATE, (i * 7) % BADGES, (i * 5 + i / 3) % CHANNELS, i % 10)
}

/// (window start in ms, channel) → (count, sum), as one process windows the events.
fn expected(base_ms: i64, seconds: i64) -> BTreeMap<(i64, String), (i64, i64)> {
    let mut out: BTreeMap<(i64, String), (i64, i64)> = BTreeMap::new();
    for i in 0..RATE * seconds {
        let (ts, _, channel, value) = event(i, base_ms);
        let e = out.entry((ts - ts.rem_euclid(WINDOW_MS), format!("c{channel}"))).or_default();
        e.0 += 1;
        e.1 += value;
    }
    out
}

fn payload(ts_ms: i64, badge: i64, channel: i64, value: i64) -> String {
    let ts = chrono::DateTime::from_timestamp_millis(ts_ms).unwrap().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    format!(r#"{{"badge":"b{badge}","channel":"c{channel}","value":{value},"ts":"{ts}"}}"#)
}

/// Produces the events at `RATE` (keyed by badge), then, `settle` later, one event per channel far
/// ahead, whose watermark closes every window of the run. The closers go through one input
/// partition: sent before every other partition's rows were copied (a rebalance still under way),
/// they would make those rows late.
async fn produce(bootstrap: String, topic: String, base_ms: i64, seconds: i64, settle: Duration) {
    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", &bootstrap).set("linger.ms", "5").create().unwrap();
    let t0 = Instant::now();
    let per_tick = RATE / 20;
    for tick in 0..seconds * 20 {
        let sends = (tick * per_tick..(tick + 1) * per_tick).map(|i| {
            let (ts, badge, channel, value) = event(i, base_ms);
            let (key, body) = (format!("b{badge}"), payload(ts, badge, channel, value));
            let producer = producer.clone();
            let topic = topic.clone();
            async move {
                producer.send(FutureRecord::to(&topic).key(&key).payload(&body), Duration::from_secs(5)).await.map_err(|(e, _)| e).unwrap();
            }
        });
        futures::future::join_all(sends).await;
        tokio::time::sleep_until((t0 + Duration::from_millis(50 * (tick as u64 + 1))).into()).await;
    }
    tokio::time::sleep(settle).await;
    for channel in 0..CHANNELS {
        let body = payload(base_ms + (seconds + 60) * 1000, BADGES, channel, 0);
        producer.send(FutureRecord::to(&topic).key("closer").payload(&body), Duration::from_secs(5)).await.map_err(|(e, _)| e).unwrap();
    }
}

/// The table's windows once it holds every (window, channel) of `want`, or after `limit`.
async fn windows_awaited(
    db: &tokio_postgres::Client,
    table: &str,
    want: &BTreeMap<(i64, String), (i64, i64)>,
    limit: Duration,
) -> BTreeMap<(i64, String), Vec<(i64, i64)>> {
    let t0 = Instant::now();
    let mut got = windows_in(db, table).await;
    while want.keys().any(|k| !got.contains_key(k)) && t0.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(300)).await;
        got = windows_in(db, table).await;
    }
    got
}

/// (window start in ms, channel) → every (count, sum) row the table holds for it.
async fn windows_in(db: &tokio_postgres::Client, table: &str) -> BTreeMap<(i64, String), Vec<(i64, i64)>> {
    let sql = format!("SELECT (extract(epoch FROM window_start) * 1000)::bigint, channel, n, total FROM \"{table}\"");
    let mut out: BTreeMap<(i64, String), Vec<(i64, i64)>> = BTreeMap::new();
    for row in db.query(&sql, &[]).await.unwrap_or_default() {
        out.entry((row.get(0), row.get(1))).or_default().push((row.get(2), row.get(3)));
    }
    out
}

/// The badge pipeline: windows per channel over events keyed by badge, re-keyed by channel.
fn pipeline_yaml(delivery: &str, bootstrap: &str, topic: &str, group: &str, table: &str, dir: &Path) -> String {
    format!(
        r#"delivery: {delivery}
admin: {{address: "${{ADMIN}}"}}
dead_letters: {{path: "{dead}"}}
sources:
  badges:
    type: kafka
    bootstrap_servers: "{bootstrap}"
    topics: [{topic}]
    group_id: {group}
    batch_wait: 50ms
    rebalance_wait: 3s
    schema: {{badge: string, channel: string, value: int, ts: timestamp}}
    librdkafka: {{session.timeout.ms: "6000", heartbeat.interval.ms: "500"}}
transforms:
  per_channel:
    inputs: [badges]
    partition_by: [channel]
    window: {{tumbling: 2s, allowed_lateness: 20s}}
    sql: SELECT window_start, channel, count(*) AS n, sum(value) AS total FROM badges GROUP BY window_start, channel
sinks:
  db: {{type: timescale, inputs: [per_channel], connection: "{url}", table: {table}, time_column: window_start, batch: {{max_age: 100ms}}}}
"#,
        url = tributary_testkit::test_postgres_url(),
        dead = dir.join("dead").display(),
    )
}

/// A mock broker with the badge topic and the repartition topic (the mock cannot create topics on
/// request; a Kafka broker gets it from the source), and an empty table.
async fn setup(
    mock: &MockCluster<'_, rdkafka::producer::DefaultProducerContext>,
    group: &str,
    table: &str,
) -> (String, tokio_postgres::Client) {
    let topic = format!("{group}_badges");
    mock.create_topic(&topic, PARTITIONS, 1).unwrap();
    mock.create_topic(&format!("{group}-per_channel-repartition"), PARTITIONS, 1).unwrap();
    let db = common::pg().await;
    db.batch_execute(&format!("DROP TABLE IF EXISTS \"{table}\"; DELETE FROM tributary_positions WHERE target = 'public.{table}'"))
        .await
        .ok();
    (topic, db)
}

fn next_window_ms() -> i64 {
    let now_ms = chrono::Utc::now().timestamp_millis();
    now_ms - now_ms.rem_euclid(WINDOW_MS) + WINDOW_MS
}

/// One instance, at least once: every (window, channel) row once and whole, with the windows
/// kept per partition of the repartition topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_instance_repartitioned_at_least_once_counts_each_window_once() {
    let mock = MockCluster::new(1).unwrap();
    let bootstrap = mock.bootstrap_servers();
    let group = format!("rp1_{}", std::process::id());
    let table = format!("{group}_per_channel");
    let (topic, db) = setup(&mock, &group, &table).await;
    let dir = tempfile::tempdir().unwrap();
    let pipeline =
        common::write(dir.path(), "pipeline.yaml", &pipeline_yaml("at_least_once", &bootstrap, &topic, &group, &table, dir.path()));
    let base_ms = next_window_ms();
    let mut member = start("solo", dir.path(), &pipeline);
    produce(bootstrap, topic, base_ms, 6, Duration::ZERO).await;
    let want = expected(base_ms, 6);
    let mut got = windows_awaited(&db, &table, &want, Duration::from_secs(60)).await;
    common::sigterm(&member.child);
    let status = member.child.wait().unwrap();
    let log = std::fs::read_to_string(&member.log).unwrap_or_default();
    assert!(status.success(), "{log}");
    // The stop flushes the closers' open windows as partial (at least once): left out.
    got.retain(|(start, _), _| *start < base_ms + 6 * 1000);
    let want: BTreeMap<_, _> = want.into_iter().map(|(k, v)| (k, vec![v])).collect();
    assert_eq!(got, want, "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repartitioned_windows_in_a_group_with_a_kill_and_a_join_equal_one_process() {
    let mock = MockCluster::new(1).unwrap();
    let bootstrap = mock.bootstrap_servers();
    let group = format!("rp_{}", std::process::id());
    let table = format!("{group}_per_channel");
    let (topic, db) = setup(&mock, &group, &table).await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = pipeline_yaml("exactly_once", &bootstrap, &topic, &group, &table, dir.path());
    let pipeline = common::write(dir.path(), "pipeline.yaml", &yaml);
    let validated = std::process::Command::new(common::bin())
        .args(["validate", pipeline.to_str().unwrap()])
        .env("ADMIN", "127.0.0.1:0")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&validated.stdout);
    assert!(
        said.contains(&format!(
            "transform per_channel: will repartition `badges` by channel through Kafka topic `{group}-per_channel-repartition`"
        )),
        "{said}{}",
        String::from_utf8_lossy(&validated.stderr)
    );

    let base_ms = next_window_ms();
    let mut members = vec![start("a", dir.path(), &pipeline), start("b", dir.path(), &pipeline), start("c", dir.path(), &pipeline)];
    let producing = tokio::spawn(produce(bootstrap, topic, base_ms, SECONDS, Duration::from_secs(10)));
    // b dies with every window open (the first closes 22 s in).
    tokio::time::sleep(Duration::from_secs(4)).await;
    members[1].child.kill().unwrap();
    members[1].child.wait().unwrap();
    // d joins once windows are closing: partitions move away from members that emitted some.
    tokio::time::sleep(Duration::from_secs(26)).await;
    members.push(start("d", dir.path(), &pipeline));
    producing.await.unwrap();

    let want = expected(base_ms, SECONDS);
    windows_awaited(&db, &table, &want, Duration::from_secs(90)).await;
    // A second later: a row written twice would show by now.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let got = windows_in(&db, &table).await;
    for m in members.iter().filter(|m| m.name != "b") {
        common::sigterm(&m.child);
    }
    let mut logs = String::new();
    // What the members did with the partitions that moved: open windows dropped by the member
    // losing one, and windows a new owner found already written.
    let (mut dropped, mut found_written) = (0, 0);
    for m in &mut members {
        let status = m.child.wait().unwrap();
        let log = std::fs::read_to_string(&m.log).unwrap_or_default();
        dropped += log.lines().filter(|l| l.contains("partition revoked: its open windows are dropped") && !l.contains(" rows=0 ")).count();
        found_written +=
            log.lines().filter(|l| l.contains("windows of a partition new to this instance: the sinks wrote them through 2")).count();
        if m.name != "b" {
            assert!(status.success(), "member {} exits 0 on SIGTERM: {status:?}\n{log}", m.name);
        }
        logs.push_str(&format!(
            "--- {}\n{}\n",
            m.name,
            log.lines().filter(|l| l.contains("partition")).take(40).collect::<Vec<_>>().join("\n")
        ));
    }

    let (mut partial, mut double, mut missing) = (Vec::new(), Vec::new(), Vec::new());
    for (key, want_row) in &want {
        match got.get(key).map(Vec::as_slice) {
            None => missing.push(key.clone()),
            Some([row]) if row == want_row => {}
            Some([row]) => partial.push((key.clone(), *row, *want_row)),
            Some(rows) => double.push((key.clone(), rows.to_vec())),
        }
    }
    let extra: Vec<_> = got.keys().filter(|k| !want.contains_key(*k)).collect();
    // Rows that came after their window closed (the members share one dead-letter folder).
    let dead = std::fs::read_to_string(dir.path().join("dead").join("per_channel.jsonl")).unwrap_or_default();
    let late = dead.lines().count();
    eprintln!(
        "repartition, 4 processes (b killed at 4 s, d joined at 30 s): {} (window, channel) rows expected, {} written; {} missing, {} partial, {} twice, {} unexpected, {late} late; {dropped} partitions left a member with open windows, {found_written} reached one with windows already written",
        want.len(),
        got.len(),
        missing.len(),
        partial.len(),
        double.len(),
        extra.len()
    );
    assert!(
        missing.is_empty() && partial.is_empty() && double.is_empty() && extra.is_empty(),
        "missing {missing:?}\npartial (got, want) {partial:?}\ntwice {double:?}\nunexpected {extra:?}\nfirst dead letters:\n{}\n{logs}",
        dead.lines().take(3).collect::<Vec<_>>().join("\n")
    );
    assert!(dropped > 0 && found_written > 0, "the run moved no partition with open windows, or none after windows were written:\n{logs}");
}
