//! Fault figures: the built `tributary` binary under the faults operators meet, with the counts
//! printed as a table and every "0 lost" asserted.
//!
//! ```text
//! cargo test --test figures fault_figures              # short faults (what CI runs): 10 s cut, 40 s soak
//! cargo test --test figures fault_figures -- --full    # the documented figures: 60 s cut, 3-minute soak
//! cargo test --test figures fault_figures -- --only=brokers # the broker restarts alone
//! ```
//!
//! 1. **PostgreSQL cut under load**: HTTP ingest → timescale through a TCP proxy that is cut while
//!    a client keeps posting. Accepted rows (HTTP 200) must all be in the table afterwards; while
//!    cut, `/health` must name the sink and `/metrics` show it failing; RSS is sampled.
//! 2. **Kafka source, database cut and `kill -9`**: no offset may be committed past a row that is
//!    not in the table; after a restart every message is there.
//! 3. **Redis restarted under the stream source**: every entry reaches the sink and the pending
//!    list ends empty.
//! 4. **`pipelines/badge-events.yaml` soak** with one consumer: the per-minute counts it writes to
//!    PostgreSQL add up to the entries published.
//!
//! 5. **The sink's disk fills** (`parquet` on a tmpfs, no disk buffer): clients get 503, `/health`
//!    names the sink, and it resumes by itself.
//! 6. **Deeply nested JSON** among good rows: a 400 naming the limit, the process lives, the good
//!    rows are written.
//! 7. **Hostile reloads**: a running pipeline's file replaced by SQL with 10,000 OR terms, then by
//!    YAML nested 10,000 deep: the reload is refused naming the limit and the pipeline runs on;
//!    `validate` exits 1 on both.
//! 8. **Memory per body**: a million empty objects in 3 MB: resident memory before, at the peak
//!    and after.
//! 9. **NATS restarted under the JetStream source** (see `brokers.rs`): every message published
//!    reaches the sink, `/health` says 503 while NATS is down, and the consumer ends with nothing
//!    pending.
//! 10. **Mosquitto restarted under the MQTT source**: every message published reaches the sink
//!     (written-but-unacknowledged ones come again, counted as duplicates).
//! 11. **RabbitMQ restarted under the AMQP source**: every persistent message reaches the sink,
//!     and the queue ends empty.
//!
//! Run by the `figures` binary's plain `main` (harness = false): the scenarios share one runtime, run one after another and
//! print one table. Test-name filters that do not match `fault_figures` skip it.

use crate::common;
use crate::hostile_reloads as hostile;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::figures::{harness_args, report, Figure};
use common::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use redis::AsyncCommands;

/// How long the faults last.
struct Durations {
    cut: Duration,
    soak: Duration,
}

pub fn run() {
    let Some(args) = harness_args("fault_figures") else { return };
    let full = args.iter().any(|a| a == "--full");
    let d = if full {
        Durations { cut: Duration::from_secs(60), soak: Duration::from_secs(180) }
    } else {
        Durations { cut: Duration::from_secs(10), soak: Duration::from_secs(40) }
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    // The broker restarts alone (a minute instead of several).
    if args.iter().any(|a| a == "--only=brokers") {
        let figures = rt.block_on(async {
            vec![
                crate::brokers::nats_restart_under_jetstream().await,
                crate::brokers::mosquitto_restart_under_mqtt().await,
                crate::brokers::rabbitmq_restart_under_amqp().await,
            ]
        });
        report("broker figures", "sent", &figures);
        return;
    }
    let figures = rt.block_on(async {
        vec![
            postgres_cut_under_load(&d).await,
            kafka_cut_and_kill(&d).await,
            redis_restart_under_stream().await,
            badge_events_soak(&d).await,
            hostile::disk_full_without_buffer().await,
            hostile::deep_nesting().await,
            hostile::hostile_reloads().await,
            hostile::memory_per_body().await,
            crate::brokers::nats_restart_under_jetstream().await,
            crate::brokers::mosquitto_restart_under_mqtt().await,
            crate::brokers::rabbitmq_restart_under_amqp().await,
        ]
    });
    report("fault figures", "sent", &figures);
}

/// Resident memory of a process in MB (0 when it is gone).
pub(crate) fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb: f64 = status.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()).unwrap_or(0.0);
    kb / 1024.0
}

pub(crate) async fn wait_until(limit: Duration, mut done: impl AsyncFnMut() -> bool) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if done().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    done().await
}

/// (distinct ids, rows) of `table`'s bigint column `column`.
async fn distinct_and_rows(db: &tokio_postgres::Client, table: &str, column: &str) -> (i64, i64) {
    match db.query_one(&format!("SELECT count(DISTINCT {column}), count(*) FROM \"{table}\""), &[]).await {
        Ok(row) => (row.get(0), row.get(1)),
        Err(_) => (0, 0),
    }
}

pub(crate) async fn health(admin: std::net::SocketAddr) -> (u16, serde_json::Value) {
    let (status, body) = tokio::task::spawn_blocking(move || get(admin, "/health")).await.unwrap().unwrap_or((0, String::new()));
    (status, serde_json::from_str(&body).unwrap_or_default())
}

async fn metrics_text(admin: std::net::SocketAddr) -> String {
    tokio::task::spawn_blocking(move || get(admin, "/metrics")).await.unwrap().map(|r| r.1).unwrap_or_default()
}

/// Scenario 1, HTTP ingest → PostgreSQL through a proxy cut for `d.cut` while a client keeps posting.
async fn postgres_cut_under_load(d: &Durations) -> Figure {
    let mut f = Figure {
        scenario: "PostgreSQL cut under load",
        fault: format!("database unreachable {} s", d.cut.as_secs()),
        ..Default::default()
    };
    let table = format!("fault_http_{}", std::process::id());
    let db = pg().await;
    db.batch_execute(&format!("DROP TABLE IF EXISTS \"{table}\"")).await.unwrap();
    let (mut proxy, via_proxy) = CuttableProxy::to_test_postgres().await;
    let dir = tempfile::tempdir().unwrap();
    let (admin, ingest) = (free_addr(), free_addr());
    let pipeline = write(
        dir.path(),
        "p.yaml",
        &format!(
            "admin: {{address: \"{admin}\", degraded_after: 3s}}\ndead_letters: {{path: \"{dl}\"}}\nsources:\n  ingest:\n    type: http_server\n    address: \"{ingest}\"\n    path: /ingest\n    accept_timeout: 200ms\n    schema: {{seq: int, site: string, latency_ms: int, ts: timestamp}}\nsinks:\n  db:\n    type: timescale\n    inputs: [ingest]\n    connection: \"{via_proxy}\"\n    table: {table}\n    batch: {{max_age: 200ms}}\n    timeout: 3s\n",
            dl = dir.path().join("dead_letters").display()
        ),
    );
    let mut child = run_bin(&pipeline);
    wait_for_port(admin).await;
    wait_for_port(ingest).await;
    let pid = child.id();

    // The client: 100 rows per request, as fast as answers come; a 503 is retried after a pause.
    let stop = tokio_util::sync::CancellationToken::new();
    let client = {
        let stop = stop.clone();
        tokio::task::spawn_blocking(move || {
            let (mut accepted, mut refused, mut seq) = (0i64, 0i64, 0i64);
            while !stop.is_cancelled() {
                let body: String = (seq..seq + 100)
                    .map(|n| {
                        format!("{{\"seq\":{n},\"site\":\"s{}\",\"latency_ms\":{},\"ts\":\"2026-11-29T10:00:00Z\"}}\n", n % 7, n % 500)
                    })
                    .collect();
                match post(ingest, "/ingest", &[("Content-Type", "application/x-ndjson")], body.as_bytes()) {
                    Ok((200, _)) => {
                        accepted += 100;
                        seq += 100;
                    }
                    Ok((503, _)) => {
                        refused += 1;
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    other => panic!("unexpected answer {other:?}"),
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            (accepted, refused)
        })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_before = rss_mb(pid);
    proxy.cut();
    let cut_at = Instant::now();
    let (mut rss_max, mut saw_degraded, mut failing_max) = (0f64, false, 0f64);
    while cut_at.elapsed() < d.cut {
        rss_max = rss_max.max(rss_mb(pid));
        let (status, h) = health(admin).await;
        if status == 503 && h["failing"] == serde_json::json!(["db"]) {
            saw_degraded = true;
        }
        failing_max = failing_max.max(metric(&metrics_text(admin).await, "tributary_component_failing_seconds", "db").unwrap_or(0.0));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let metrics = metrics_text(admin).await;
    let retries = metric(&metrics, "tributary_component_retries_total", "db").unwrap_or(0.0);
    let fill = metric(&metrics, "tributary_component_buffer_fill_ratio", "db").unwrap_or(0.0);
    proxy.open().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.cancel();
    let (accepted, refused) = client.await.unwrap();
    let caught_up = wait_until(Duration::from_secs(120), async || distinct_and_rows(&db, &table, "seq").await.0 >= accepted).await;
    let (status, _) = health(admin).await;
    sigterm(&child);
    let exit = child.wait().unwrap();
    let (distinct, rows) = distinct_and_rows(&db, &table, "seq").await;
    f.sent = accepted;
    f.written = distinct;
    f.lost = accepted - distinct;
    f.duplicates = rows - distinct;
    f.notes = vec![
        format!("{refused} requests answered 503 (retried)"),
        format!("RSS {rss_before:.0} MB before, {rss_max:.0} MB max while cut"),
        format!(
            "/health 503 naming db: {saw_degraded}; failing_seconds up to {failing_max:.0}; {retries:.0} retries; input buffer {:.0}% full",
            fill * 100.0
        ),
        format!("caught up: {caught_up}; /health after: {status}; exit {}", exit.code().unwrap_or(-1)),
    ];
    f.check(f.lost == 0 && caught_up, format!("{} accepted rows missing", f.lost));
    f.check(f.duplicates == 0, format!("{} rows written twice", f.duplicates));
    f.check(saw_degraded, "/health never reported the failing sink");
    f.check(refused > 0, "the pipeline never pushed back (no 503) while the database was away");
    f.check(status == 200 && exit.success(), format!("after: /health {status}, exit {exit:?}"));
    f.check(!dir.path().join("dead_letters").exists(), "transient failures became dead letters");
    db.batch_execute(&format!("DROP TABLE IF EXISTS \"{table}\"")).await.unwrap();
    f
}

/// Scenario 2, Kafka → PostgreSQL through a proxy: cut, `kill -9` while cut, check the committed offsets
/// against the table, restore, restart, everything arrives.
async fn kafka_cut_and_kill(d: &Durations) -> Figure {
    const TOTAL: i64 = 3000;
    const PARTITIONS: i32 = 3;
    let mut f = Figure {
        scenario: "Kafka source, database cut + kill -9",
        fault: format!("database unreachable {} s, SIGKILL while cut", d.cut.as_secs()),
        ..Default::default()
    };
    let table = format!("fault_kafka_{}", std::process::id());
    let db = pg().await;
    db.batch_execute(&format!("DROP TABLE IF EXISTS \"{table}\"")).await.unwrap();
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("statuses", PARTITIONS, 1).unwrap();
    let bootstrap = mock.bootstrap_servers();
    let (mut proxy, via_proxy) = CuttableProxy::to_test_postgres().await;
    let dir = tempfile::tempdir().unwrap();
    let admin = free_addr();
    let pipeline = write(
        dir.path(),
        "p.yaml",
        &format!(
            "admin: {{address: \"{admin}\", degraded_after: 3s}}\ndead_letters: {{path: \"{dl}\"}}\nsources:\n  statuses:\n    type: kafka\n    bootstrap_servers: \"{bootstrap}\"\n    topics: [statuses]\n    group_id: faults\n    batch_size: 50\n    batch_wait: 50ms\n    schema: {{id: int, site: string, ts: timestamp}}\n    librdkafka: {{session.timeout.ms: \"6000\", heartbeat.interval.ms: \"500\"}}\nsinks:\n  db:\n    type: timescale\n    inputs: [statuses]\n    connection: \"{via_proxy}\"\n    table: {table}\n    batch: {{max_age: 200ms}}\n    timeout: 3s\n",
            dl = dir.path().join("dead_letters").display()
        ),
    );
    // Message `id` goes to partition id % 3, so offset o of partition p holds id o * 3 + p.
    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", &bootstrap).create().unwrap();
    let produce = tokio::spawn(async move {
        for id in 0..TOTAL {
            let payload = format!(r#"{{"id":{id},"site":"https://s{}.example","ts":"2026-11-22T10:00:00Z"}}"#, id % 7);
            producer
                .send(
                    FutureRecord::<(), _>::to("statuses").partition((id % PARTITIONS as i64) as i32).payload(&payload),
                    Duration::from_secs(5),
                )
                .await
                .map_err(|(e, _)| e)
                .unwrap();
            if id % 50 == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    let mut first = run_bin(&pipeline);
    wait_until(Duration::from_secs(60), async || distinct_and_rows(&db, &table, "id").await.0 >= 300).await;
    proxy.cut();
    tokio::time::sleep(d.cut).await;
    first.kill().unwrap();
    first.wait().unwrap();
    let before_restart = distinct_and_rows(&db, &table, "id").await.0;

    // Every id below a committed offset must be in the table.
    let committed = committed_offsets(&bootstrap, PARTITIONS);
    let written: std::collections::HashSet<i64> =
        db.query(&format!("SELECT DISTINCT id FROM \"{table}\""), &[]).await.unwrap().iter().map(|r| r.get::<_, i64>(0)).collect();
    let past_unwritten: usize =
        committed.iter().map(|(p, c)| (0..*c).filter(|o| !written.contains(&(o * PARTITIONS as i64 + *p as i64))).count()).sum();

    proxy.open().await;
    let mut second = run_bin(&pipeline);
    produce.await.unwrap();
    let caught_up = wait_until(Duration::from_secs(120), async || distinct_and_rows(&db, &table, "id").await.0 >= TOTAL).await;
    sigterm(&second);
    let exit = second.wait().unwrap();
    let (distinct, rows) = distinct_and_rows(&db, &table, "id").await;
    f.sent = TOTAL;
    f.written = distinct;
    f.lost = TOTAL - distinct;
    f.duplicates = rows - distinct;
    f.notes = vec![
        format!("{before_restart} written before the kill; committed offsets {committed:?}"),
        format!("{past_unwritten} committed offsets past an unwritten row"),
        format!("caught up after restart: {caught_up}; exit {}", exit.code().unwrap_or(-1)),
    ];
    f.check(past_unwritten == 0, format!("{past_unwritten} messages committed but not written"));
    f.check(f.lost == 0, format!("{} messages missing", f.lost));
    f.check(exit.success(), format!("exit {exit:?}"));
    db.batch_execute(&format!("DROP TABLE IF EXISTS \"{table}\"")).await.unwrap();
    f
}

/// The group's committed offset per partition (0 when none).
fn committed_offsets(bootstrap: &str, partitions: i32) -> BTreeMap<i32, i64> {
    let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", bootstrap).set("group.id", "faults").create().unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition("statuses", p);
    }
    let committed = consumer.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    committed.elements().iter().map(|e| (e.partition(), if let Offset::Offset(o) = e.offset() { o } else { 0 })).collect()
}

/// A Redis server of this scenario's own, keeping its data in `dir` (append-only file), so it can
/// be stopped and started again without touching the shared one.
/// A server of a figure's own on its own port, stopped (SIGTERM) and started again with the same
/// command, so its data folder carries over.
pub(crate) struct OwnServer {
    port: u16,
    program: &'static str,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    child: Option<std::process::Child>,
}

impl OwnServer {
    pub(crate) async fn start(program: &'static str, args: Vec<String>, port: u16) -> OwnServer {
        Self::start_with(program, args, Vec::new(), port).await
    }
    /// With these environment variables (RabbitMQ takes its node name, ports and folders so).
    pub(crate) async fn start_with(program: &'static str, args: Vec<String>, envs: Vec<(String, String)>, port: u16) -> OwnServer {
        let mut server = OwnServer { port, program, args, envs, child: None };
        server.restart().await;
        server
    }
    pub(crate) async fn restart(&mut self) {
        let child = std::process::Command::new(self.program)
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{} must be installed (./scripts/test installs it): {e}", self.program));
        self.child = Some(child);
        // Up to a minute: a RabbitMQ node takes several seconds to boot.
        for _ in 0..600 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{} did not listen on {} within a minute", self.program, self.port);
    }
    pub(crate) fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = std::process::Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
            let _ = c.wait();
        }
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Scenario 3, the stream source while its Redis stops and starts again (data kept on disk).
async fn redis_restart_under_stream() -> Figure {
    const TOTAL: u32 = 1000;
    let mut f = Figure {
        scenario: "Redis restarted under the stream source",
        fault: "redis-server stopped 5 s, started again".into(),
        ..Default::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let port = tributary_testkit::free_port();
    let args =
        ["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes", "--appendfsync", "always", "--dir"]
            .iter()
            .map(|a| a.to_string())
            .chain([dir.path().display().to_string()])
            .collect();
    let mut redis_server = OwnServer::start("redis-server", args, port).await;
    let url = format!("redis://127.0.0.1:{port}");
    let connect = || async { redis::Client::open(url.as_str()).unwrap().get_multiplexed_async_connection().await.unwrap() };
    let mut conn = connect().await;
    let out = dir.path().join("out.jsonl");
    let admin = free_addr();
    let pipeline = write(
        dir.path(),
        "p.yaml",
        &format!(
            "admin: {{address: \"{admin}\", degraded_after: 2s}}\nsources:\n  badges:\n    type: badge_events\n    mode: stream\n    url: {url}\n    stream: badges\n    group: g\n    consumer: c1\n    batch_size: 50\nsinks:\n  out:\n    type: file\n    inputs: [badges]\n    path: {}\n    flush_interval: 100ms\n",
            out.display()
        ),
    );
    let mut child = run_bin(&pipeline);
    wait_for_port(admin).await;
    xadd_scores(&mut conn, "badges", 1..=TOTAL / 2).await;
    let half = wait_until(Duration::from_secs(30), async || lines_by_score(&out).len() as u32 >= TOTAL / 2).await;
    redis_server.stop();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (status_down, health_down) = health(admin).await;
    redis_server.restart().await;
    let mut conn = connect().await;
    xadd_scores(&mut conn, "badges", TOTAL / 2 + 1..=TOTAL).await;
    let caught_up = wait_until(Duration::from_secs(60), async || {
        lines_by_score(&out).len() as u32 >= TOTAL && pending(&mut conn, "badges", "g").await == 0
    })
    .await;
    let reconnects = metric(&metrics_text(admin).await, "tributary_component_retries_total", "badges").unwrap_or(0.0);
    sigterm(&child);
    let exit = child.wait().unwrap();
    let seen = lines_by_score(&out);
    f.sent = TOTAL as i64;
    f.written = seen.len() as i64;
    f.lost = (1..=TOTAL as i64).filter(|s| !seen.contains_key(s)).count() as i64;
    f.duplicates = seen.values().map(|n| n - 1).sum::<i64>();
    let left_pending = pending(&mut conn, "badges", "g").await;
    f.notes = vec![
        format!("first half written before the stop: {half}"),
        format!("/health while Redis was down: {status_down} failing {}; {reconnects:.0} read retries", health_down["failing"]),
        format!("pending after: {left_pending}; exit {}", exit.code().unwrap_or(-1)),
    ];
    f.check(f.lost == 0 && caught_up, format!("{} entries missing", f.lost));
    f.check(left_pending == 0, format!("{left_pending} entries left pending"));
    f.check(
        status_down == 503 && health_down["failing"] == serde_json::json!(["badges"]),
        "/health did not name the source while Redis was down",
    );
    f.check(exit.success(), format!("exit {exit:?}"));
    f
}

/// score → how many times a row with it was written to the file sink.
pub(crate) fn lines_by_score(path: &std::path::Path) -> BTreeMap<i64, i64> {
    let mut seen = BTreeMap::new();
    for line in std::fs::read_to_string(path).unwrap_or_default().lines() {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
            if let Some(score) = v["score"].as_i64() {
                *seen.entry(score).or_insert(0) += 1;
            }
        }
    }
    seen
}

/// Scenario 4, the shipped badge pipeline with one consumer for `d.soak`, fed a steady stream.
async fn badge_events_soak(d: &Durations) -> Figure {
    let mut f = Figure {
        scenario: "pipelines/badge-events.yaml soak",
        fault: format!("{} s of steady input, one consumer, clean stop", d.soak.as_secs()),
        ..Default::default()
    };
    let run = std::process::id();
    let stream = format!("badge-soak-{run}");
    let channel_table = format!("badge_channel_minutes_{run}");
    let dir = tempfile::tempdir().unwrap();
    let admin = free_addr();
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines/badge-events.yaml")).unwrap();
    let mut doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    doc["admin"]["address"] = admin.to_string().into();
    doc["dead_letters"] = serde_yaml::from_str(&format!("{{path: \"{}\"}}", dir.path().join("dead_letters").display())).unwrap();
    doc["sources"]["badges"]["url"] = tributary_testkit::test_redis_url().into();
    doc["sources"]["badges"]["stream"] = stream.clone().into();
    for (_, sink) in doc["sinks"].as_mapping_mut().unwrap().iter_mut() {
        match sink["type"].as_str().unwrap() {
            "timescale" => {
                sink["connection"] = tributary_testkit::test_postgres_url().into();
                let table = format!("{}_{run}", sink["table"].as_str().unwrap());
                sink["table"] = table.into();
            }
            "prometheus_remote_write" => {
                sink["endpoint"] = format!("{}/api/v1/write", tributary_testkit::test_victoriametrics_url()).into()
            }
            "parquet" => sink["path"] = dir.path().join("badge_events").to_str().unwrap().into(),
            _ => {}
        }
    }
    let path = write(dir.path(), "badge-events.yaml", &serde_yaml::to_string(&doc).unwrap());
    let mut conn = redis::Client::open(tributary_testkit::test_redis_url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("DEL").arg(&stream).query_async(&mut conn).await.unwrap();
    let db = pg().await;
    let mut child = run_bin(&path);
    wait_for_port(admin).await;
    let pid = child.id();

    // About 20 entries a second over three channels, one row each.
    let t0 = Instant::now();
    let (mut published, mut rss_max) = (0i64, 0f64);
    while t0.elapsed() < d.soak {
        for _ in 0..10 {
            published += 1;
            let (channel, payload) = match published % 3 {
                0 => (
                    "high-score-processor",
                    format!(
                        r#"{{"user_uuid":"u-{}","mac_address":"aa:{:02x}","event":"high-score","high_scores":[["BO",{published},10]]}}"#,
                        published % 40,
                        published % 40
                    ),
                ),
                1 => (
                    "achievement",
                    format!(r#"{{"handle":"h{}","name":"Badge {}","description":"d","points":1}}"#, published % 9, published % 5),
                ),
                _ => ("community-message", format!("someone said hello #{published}")),
            };
            let _: String = conn.xadd(&stream, "*", &[("channel", channel), ("payload", payload.as_str())]).await.unwrap();
        }
        rss_max = rss_max.max(rss_mb(pid));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Rows of the open minute windows are held (not acknowledged) until the windows close or the
    // clean stop flushes them.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let held = pending(&mut conn, &stream, "tributary").await;
    sigterm(&child);
    let exit = child.wait().unwrap();
    let counted: i64 = db
        .query_one(&format!("SELECT coalesce(sum(events), 0)::bigint, count(*) FROM \"{channel_table}\""), &[])
        .await
        .map(|r| r.get(0))
        .unwrap_or(0);
    let windows: i64 = pg_count(&db, &channel_table).await;
    let left_pending = pending(&mut conn, &stream, "tributary").await;
    f.sent = published;
    f.written = counted;
    f.lost = published - counted;
    f.duplicates = (counted - published).max(0);
    f.notes = vec![
        format!("{windows} channel-minute rows; RSS max {rss_max:.0} MB"),
        format!("{held} entries held by open windows at the stop, {left_pending} pending after; exit {}", exit.code().unwrap_or(-1)),
    ];
    f.check(counted == published, format!("the per-minute counts add up to {counted}, {published} entries were published"));
    f.check(left_pending == 0, format!("{left_pending} entries left pending"));
    f.check(exit.success(), format!("exit {exit:?}"));
    f.check(!dir.path().join("dead_letters").exists(), "rows went to dead letters");
    for table in ["badge_channel_minutes", "badge_game_minutes", "badge_registrations"] {
        db.batch_execute(&format!("DROP TABLE IF EXISTS \"{table}_{run}\"")).await.unwrap();
    }
    let _: () = redis::cmd("DEL").arg(&stream).query_async(&mut conn).await.unwrap();
    f
}
