//! One instance reading Kafka: `kafka` source → SQL filter → Parquet, next to a bare librdkafka
//! consumer reading the same messages and doing nothing with them (the ceiling of the client and
//! broker on this machine). Both read 12 partitions from librdkafka's in-process mock broker, which
//! shares the cores with them; each round uses a new consumer group, so both read every message.
//! Both are timed from their first message (joining the group is not reading); the pipeline's time
//! ends when the Parquet sink has written every row (leaving the group afterwards is not timed).
//! Prints messages/s per side and the ratio; this is the per-instance figure `docs/scaling.md`
//! sizes a consumer group with.
//!
//! Then the cost of `partition_by` (issue 46) in one instance: a windowed pipeline per game, read
//! once as is and once re-keyed by game through a repartition topic (every message copied to Kafka
//! and read again), each timed from its first row out until its source has sent every row.
//!
//! `cargo bench --bench kafka_source` reads 400,000 messages per side (`KAFKA_BENCH_ROWS` to
//! change; the mock keeps at most 5 MB per partition, so more would be cut), two alternating rounds; under `cargo test` a 20,000-message smoke pass checks that both
//! sides read everything.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::ClientConfig;
use tokio_util::sync::CancellationToken;

const PARTITIONS: i32 = 12;

fn produce(bootstrap: &str, n: usize) {
    let producer: ThreadedProducer<_> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "20")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .unwrap();
    for id in 0..n {
        let payload = format!(
            r#"{{"ts":"2026-11-30T10:{:02}:{:02}Z","user":"u{}","game":"g{}","score":{}}}"#,
            (id / 60) % 60,
            id % 60,
            id % 5000,
            id % 7,
            (id * 7919) % 2000
        );
        let key = (id % 4096).to_string();
        let mut record = BaseRecord::to("events").key(&key).payload(&payload);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, r)) => {
                    record = r;
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(120)).unwrap();
}

/// A bare consumer: receive every message, touch its payload, nothing else.
async fn bare(bootstrap: &str, group: &str, n: usize) -> Duration {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&["events"]).unwrap();
    // Timed from the first message: joining the group (a few seconds on the mock) is not reading.
    let first = consumer.recv().await.unwrap();
    let t0 = Instant::now();
    let mut bytes = rdkafka::Message::payload(&first).map_or(0, <[u8]>::len);
    drop(first);
    for _ in 1..n {
        let m = consumer.recv().await.unwrap();
        bytes += rdkafka::Message::payload(&m).map_or(0, <[u8]>::len);
    }
    assert!(bytes > 0);
    t0.elapsed()
}

/// A running pipeline whose `events` source reads the topic in group `group`, followed by
/// `rest` (its transforms and sinks, which may use `{out}` for a folder of their own).
struct Running {
    admin: Arc<tributary::admin::AdminState>,
    shutdown: CancellationToken,
    run: tokio::task::JoinHandle<tributary::runtime::RunReport>,
}

async fn start(bootstrap: &str, group: &str, dir: &std::path::Path, rest: &str) -> Running {
    let yaml = format!(
        r#"
admin: {{enabled: false}}
sources:
  events:
    type: kafka
    bootstrap_servers: "{bootstrap}"
    topics: [events]
    group_id: {group}
    schema: {{ts: timestamp, user: string, game: string, score: int}}
{}"#,
        rest.replace("{out}", &dir.join(group).display().to_string())
    );
    let path = dir.join(format!("{group}.yaml"));
    std::fs::write(&path, yaml).unwrap();
    let plan = tributary::validate_file(&path).await.unwrap();
    let admin = Arc::new(tributary::admin::AdminState::new(Duration::from_secs(30)));
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(tributary::runtime::run(plan, Some(admin.clone()), shutdown.clone(), Default::default()));
    Running { admin, shutdown, run }
}

impl Running {
    /// A component's counter from the admin API's metrics.
    fn counter(&self, name: &str, component: &str) -> usize {
        let prefix = format!("tributary_component_{name}{{component=\"{component}\"");
        self.admin
            .render_metrics()
            .lines()
            .find(|l| l.starts_with(&prefix))
            .and_then(|l| l.rsplit(' ').next()?.parse::<usize>().ok())
            .unwrap_or(0)
    }

    /// From the source's first row out (after the group join) until it has sent `n`.
    async fn time_source(&self, n: usize) -> Instant {
        let mut t0 = None;
        loop {
            let sent = self.counter("rows_out_total", "events");
            if sent > 0 && t0.is_none() {
                t0 = Some(Instant::now());
            }
            if sent >= n {
                return t0.expect("rows came");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn stopped(self) {
        self.shutdown.cancel();
        let report = self.run.await.unwrap();
        assert!(report.ok(), "{report:?}");
    }
}

/// The windowed pipeline (per game and minute), re-keyed by game or not, until its source has
/// sent `n` rows (the windows hold them; the stop flushes them, untimed).
async fn windowed_side(bootstrap: &str, group: &str, n: usize, dir: &std::path::Path, repartition: bool) -> Duration {
    let partition_by = if repartition { "partition_by: [game]" } else { "" };
    let rest = format!(
        r#"transforms:
  per_game:
    inputs: [events]
    {partition_by}
    window: {{tumbling: 1m, allowed_lateness: 1h}}
    sql: SELECT window_start, game, count(*) AS n, max(score) AS best FROM events GROUP BY window_start, game
sinks:
  lake: {{type: parquet, inputs: [per_game], path: "{{out}}", time_column: window_start}}
"#
    );
    let running = start(bootstrap, group, dir, &rest).await;
    let elapsed = running.time_source(n).await.elapsed();
    running.stopped().await;
    elapsed
}

/// The pipeline, until its source has sent `n` rows and everything is written.
async fn tributary_side(bootstrap: &str, group: &str, n: usize, dir: &std::path::Path) -> Duration {
    let rest = r#"transforms:
  scores:
    inputs: [events]
    sql: SELECT ts, user, game, score FROM events WHERE score > 1000
sinks:
  lake: {type: parquet, inputs: [scores], path: "{out}"}
"#;
    let running = start(bootstrap, group, dir, rest).await;
    let t0 = running.time_source(n).await;
    // The sink writes its file on the stop; the consumer's leave-group after it is not timed.
    running.shutdown.cancel();
    let expected = (0..n).filter(|id| (id * 7919) % 2000 > 1000).count();
    while running.counter("rows_written_total", "lake") < expected {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = t0.elapsed();
    running.stopped().await;
    elapsed
}

fn main() {
    let benching = std::env::args().any(|a| a == "--bench");
    // The mock broker keeps at most 5 MB per partition: 400k of these messages fit in 12.
    let default_rows = if benching { 400_000 } else { 20_000 };
    let n: usize = std::env::var("KAFKA_BENCH_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(default_rows);
    let rounds = if benching { 2 } else { 1 };
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("events", PARTITIONS, 1).unwrap();
    let bootstrap = mock.bootstrap_servers();
    let t0 = Instant::now();
    produce(&bootstrap, n);
    eprintln!("produced {n} messages to {PARTITIONS} partitions in {:.1} s", t0.elapsed().as_secs_f64());

    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let (mut bare_rates, mut trib_rates) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let b = rt.block_on(bare(&bootstrap, &format!("bare-{round}"), n));
        let t = rt.block_on(tributary_side(&bootstrap, &format!("tributary-{round}"), n, dir.path()));
        let (br, tr) = (n as f64 / b.as_secs_f64(), n as f64 / t.as_secs_f64());
        println!(
            "round {round}: bare consumer {:.0} msg/s ({:.2} s), tributary kafka → SQL → Parquet {:.0} msg/s ({:.2} s) = {:.0}%",
            br,
            b.as_secs_f64(),
            tr,
            t.as_secs_f64(),
            100.0 * tr / br
        );
        bare_rates.push(br);
        trib_rates.push(tr);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (b, t) = (median(&mut bare_rates), median(&mut trib_rates));
    println!(
        "{n} messages: tributary {t:.0} msg/s vs bare librdkafka consumer {b:.0} msg/s = {:.0}% of the client's ceiling",
        100.0 * t / b
    );

    // partition_by: the same events windowed per game, as is and re-keyed through Kafka.
    let (mut plain, mut rekeyed) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let group = format!("windowed-{round}");
        let p = rt.block_on(windowed_side(&bootstrap, &group, n, dir.path(), false));
        let group = format!("rekeyed-{round}");
        // librdkafka's mock broker cannot create topics on request.
        mock.create_topic(&format!("{group}-per_game-repartition"), PARTITIONS, 1).unwrap();
        let r = rt.block_on(windowed_side(&bootstrap, &group, n, dir.path(), true));
        let (pr, rr) = (n as f64 / p.as_secs_f64(), n as f64 / r.as_secs_f64());
        println!(
            "round {round}: windows per game {pr:.0} msg/s ({:.2} s); re-keyed by game {rr:.0} msg/s ({:.2} s)",
            p.as_secs_f64(),
            r.as_secs_f64()
        );
        plain.push(pr);
        rekeyed.push(rr);
    }
    let (p, r) = (median(&mut plain), median(&mut rekeyed));
    println!(
        "{n} messages, one instance: windows per game {p:.0} msg/s; with partition_by (copied through a repartition topic) {r:.0} msg/s = {:.0}% of it",
        100.0 * r / p
    );
}
