//! Disk buffer figures: the built `tributary` binary with HTTP ingest on `buffer: {type: disk}`,
//! under the faults a disk buffer exists for; counts printed as a table, every "0 lost" asserted.
//!
//! ```text
//! cargo test --test figures buffer_figures               # 5 kills (what CI runs)
//! cargo test --test figures buffer_figures -- --full     # the documented figures: 20 kills
//! cargo test --test figures buffer_figures -- --only=window   # one scenario (its key: see `main`)
//! ```
//!
//! 1. **`kill -9` under load**: eight clients post NDJSON (1–20 rows, unique ids) as fast as they
//!    are answered; the process is killed at a random moment and restarted, N times, then stopped
//!    cleanly. Every id answered 200 must be in the file sink; duplicates are counted.
//! 2. **SIGTERM while the sink cannot finish**: rows accepted while PostgreSQL is cut (through a
//!    proxy), one client holding half a request header open, SIGTERM with `--drain-timeout 3s`: the
//!    process must exit within the drain and `stop_timeout`, and after a restart with the database
//!    back every accepted row must be in the table.
//! 3. **A buffer cut mid-record**: the segment file of a stopped run truncated inside its last
//!    record: at restart the intact records are written and the cut is logged with the file and
//!    byte offset.
//!
//! 4. **The buffer's disk fills under load**: its 8 MB tmpfs filled for 3 s while four clients
//!    post, then freed. Clients get 503 (never 200 for rows not stored), `/health` names the
//!    buffer and the error, writing resumes by itself; every row answered 200 is written once.
//! 5. **An idle `kill -9`**: 2,000 rows written by both sinks, quiet, `kill -9`, restart: nothing
//!    is written twice (the acked position used to be saved only when a later ack came).
//! 6. **`kill -9` under load, exactly once**: scenario 1 into a timescale `append` table with
//!    `delivery: exactly_once`: nothing lost and, asserted, nothing written twice.
//! 7. **The same into a Delta table** (`format: delta`), read back by the `deltalake` Python
//!    package.
//! 8. **PostgreSQL cut, and COMMIT answers lost**, exactly once: four clients post while a proxy
//!    loses the answers to 3 COMMITs (the server commits, the sink never hears), cuts the database
//!    for 5 s (60 s with `--full`), then loses 3 more: nothing lost, nothing written twice.
//!
//! 9. **A window killed mid-window**, exactly once: badge-style events (one per millisecond of
//!    event time, four channels) counted per channel per minute into a timescale table, killed
//!    10 times (3 in CI) under load. Every row lists the ids it counted: each id answered 200 is in
//!    exactly one row, that of its own minute and channel, so every count equals a run never
//!    killed; no (minute, channel) row is written twice. With `--full`, the same at least once
//!    beside it (its duplicates are expected, and counted).
//!
//! 10. **`kill -9` under load into JetStream**: scenario 1 into a `nats` sink with `stream`. Each
//!     message's `Nats-Msg-Id` names the buffer record its row came from and its index in it, so a
//!     replay of rows the killed run had published is dropped by the stream (the log counts these
//!     copies): nothing lost and, asserted, nothing stored twice.
//!
//! Run by the `figures` binary's plain `main` (harness = false), after `fault_figures`. Test-name filters that do not match
//! `buffer_figures` skip it.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::figures::{harness_args, report, Figure};
use common::*;
use rand::Rng;

/// One scenario's run, not started yet.
type Scenario = std::pin::Pin<Box<dyn std::future::Future<Output = Figure>>>;

pub fn run() {
    let Some(args) = harness_args("buffer_figures") else { return };
    let full = args.iter().any(|a| a == "--full");
    let kills = if full { 20 } else { 5 };
    let cut = Duration::from_secs(if full { 60 } else { 5 });
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    // `--only=WORD`: just the scenarios whose key has WORD (kill, sigterm, cut, disk, idle,
    // timescale, delta, jetstream, commits, window).
    let only = args.iter().find_map(|a| a.strip_prefix("--only=")).map(str::to_string);
    let figures = rt.block_on(async {
        let scenarios: Vec<(&str, Scenario)> = vec![
            ("kill", Box::pin(kill_under_load(kills, Into::File))),
            ("sigterm", Box::pin(sigterm_with_a_stuck_sink())),
            ("cut", Box::pin(cut_mid_record())),
            ("disk", Box::pin(disk_full())),
            ("idle", Box::pin(idle_kill())),
            ("timescale", Box::pin(kill_under_load(kills, Into::TimescaleExactlyOnce))),
            ("delta", Box::pin(kill_under_load(kills, Into::DeltaExactlyOnce))),
            ("jetstream", Box::pin(kill_under_load(kills, Into::JetStream))),
            ("commits", Box::pin(database_cut_with_lost_commits(cut))),
            ("window", Box::pin(windowed_kills(if full { 10 } else { 3 }, true))),
        ];
        // The same windows at least once, beside it: documented figures only.
        let scenarios = match full {
            true => scenarios.into_iter().chain([("window", Box::pin(windowed_kills(10, false)) as Scenario)]).collect(),
            false => scenarios,
        };
        let mut figures = Vec::new();
        for (key, scenario) in scenarios {
            if only.as_deref().is_none_or(|o| key.contains(o)) {
                figures.push(scenario.await);
            }
        }
        figures
    });
    report("buffer figures", "accepted (200)", &figures);
}

/// Wait until the pipeline listens on `addr`; if it never does, show what it logged.
async fn wait_listening(addr: std::net::SocketAddr, log: &Path) {
    for _ in 0..400 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("nothing listens on {addr}; the pipeline logged:\n{}", std::fs::read_to_string(log).unwrap_or_default());
}

/// Clients posting NDJSON bodies (each row with a new id) as fast as they are answered.
struct Load {
    accepted: Arc<Mutex<BTreeSet<i64>>>,
    stop: Arc<AtomicBool>,
    clients: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    /// `clients` threads, each body of a random number of rows in `rows`: `{"id", "request"}`.
    fn start(ingest: std::net::SocketAddr, clients: usize, rows: std::ops::RangeInclusive<i64>) -> Load {
        Load::start_with(ingest, clients, rows, |id, request| format!("{{\"id\":{id},\"request\":{request}}}\n"))
    }

    /// As [`start`](Self::start), each row made by `line(id, request)`.
    fn start_with(ingest: std::net::SocketAddr, clients: usize, rows: std::ops::RangeInclusive<i64>, line: fn(i64, i64) -> String) -> Load {
        let accepted = Arc::new(Mutex::new(BTreeSet::new()));
        let next_id = Arc::new(AtomicI64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let clients = (0..clients)
            .map(|_| {
                let (accepted, next_id, stop, rows) = (accepted.clone(), next_id.clone(), stop.clone(), rows.clone());
                std::thread::spawn(move || {
                    let mut rng = rand::rng();
                    let mut requests = 0i64;
                    while !stop.load(Ordering::Relaxed) {
                        let n = rng.random_range(rows.clone());
                        let first = next_id.fetch_add(n, Ordering::Relaxed);
                        let body: String = (first..first + n).map(|id| line(id, requests)).collect();
                        requests += 1;
                        match post(ingest, "/", &[], body.as_bytes()) {
                            Ok((200, _)) => accepted.lock().unwrap().extend(first..first + n),
                            // Down (being killed or restarting), or busy: those ids were not accepted.
                            _ => std::thread::sleep(Duration::from_millis(20)),
                        }
                    }
                })
            })
            .collect();
        Load { accepted, stop, clients }
    }

    /// Stops the clients; the ids answered 200.
    fn stop(self) -> BTreeSet<i64> {
        self.stop.store(true, Ordering::Relaxed);
        for c in self.clients {
            c.join().unwrap();
        }
        let accepted = self.accepted.lock().unwrap();
        accepted.clone()
    }
}

/// id → how many lines of the file sink carry it.
fn ids_written(path: &Path) -> BTreeMap<i64, i64> {
    let mut seen = BTreeMap::new();
    for line in std::fs::read_to_string(path).unwrap_or_default().lines() {
        if let Some(id) = serde_json::from_str::<serde_json::Value>(line).ok().and_then(|v| v["id"].as_i64()) {
            *seen.entry(id).or_insert(0) += 1;
        }
    }
    seen
}

/// Accepted ids against what the sink holds: (distinct written, lost, duplicates).
fn reconcile(accepted: &BTreeSet<i64>, written: &BTreeMap<i64, i64>) -> (i64, i64, i64) {
    let lost = accepted.iter().filter(|id| !written.contains_key(id)).count() as i64;
    let duplicates = written.values().map(|n| n - 1).sum();
    (written.len() as i64, lost, duplicates)
}

fn ingest_pipeline(dir: &Path, admin: std::net::SocketAddr, ingest: std::net::SocketAddr, sink: &str) -> std::path::PathBuf {
    ingest_pipeline_buffered_in(dir, admin, ingest, sink, &dir.join("buffer"), "64MiB")
}

/// As [`ingest_pipeline`], with the buffer's segments in `buffer`, `max_size` at most.
fn ingest_pipeline_buffered_in(
    dir: &Path,
    admin: std::net::SocketAddr,
    ingest: std::net::SocketAddr,
    sink: &str,
    buffer: &Path,
    max_size: &str,
) -> std::path::PathBuf {
    write(
        dir,
        "p.yaml",
        &format!(
            "admin: {{address: \"{admin}\"}}\ndead_letters: {{path: \"{dl}\"}}\nsources:\n  ingest:\n    type: http_server\n    address: \"{ingest}\"\n    accept_timeout: 500ms\n    stop_timeout: 2s\n    schema: {{ts: timestamp, id: int, request: int}}\n    buffer: {{type: disk, max_size: {max_size}, path: \"{buffer}\"}}\nsinks:\n{sink}",
            dl = dir.join("dead_letters").display(),
            buffer = buffer.display(),
        ),
    )
}

/// Where scenarios 1 and 6 write.
#[derive(Clone, Copy, PartialEq)]
enum Into {
    /// A file sink, at-least-once.
    File,
    /// A timescale `append` table with `delivery: exactly_once`.
    TimescaleExactlyOnce,
    /// A Delta table (`parquet` sink, `format: delta`) with `delivery: exactly_once`, read back
    /// by the `deltalake` Python package.
    DeltaExactlyOnce,
    /// A JetStream stream through the `nats` sink: the ids it takes from the buffer's records let
    /// the stream drop replayed rows (counted from the sink's log).
    JetStream,
}

/// Scenarios 1 and 6: `kill -9` at random moments while eight clients post.
async fn kill_under_load(kills: usize, into: Into) -> Figure {
    let mut f = Figure {
        scenario: match into {
            Into::File => "kill -9 under HTTP load",
            Into::TimescaleExactlyOnce => "kill -9 under HTTP load, exactly once",
            Into::DeltaExactlyOnce => "kill -9 under HTTP load, exactly once into Delta",
            Into::JetStream => "kill -9 under HTTP load into JetStream (Nats-Msg-Id per buffer record)",
        },
        fault: format!("{kills} × kill -9 at a random moment, then SIGTERM"),
        ..Default::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let (admin, ingest) = (free_addr(), free_addr());
    let out = dir.path().join("out.jsonl");
    let table = format!("buffer_exactly_once_{}", std::process::id());
    let db = pg().await;
    let sink = match into {
        Into::File => format!("  out:\n    type: file\n    inputs: [ingest]\n    path: \"{}\"\n    flush_interval: 200ms\n", out.display()),
        Into::TimescaleExactlyOnce => {
            db.batch_execute(&format!("DROP TABLE IF EXISTS \"{table}\"; DELETE FROM tributary_positions WHERE target = 'public.{table}'"))
                .await
                .ok();
            format!(
                "  db:\n    type: timescale\n    inputs: [ingest]\n    connection: \"{}\"\n    table: {table}\n    batch: {{max_age: 200ms}}\n",
                tributary_testkit::test_postgres_url()
            )
        }
        Into::DeltaExactlyOnce => format!(
            "  lake:\n    type: parquet\n    format: delta\n    inputs: [ingest]\n    path: \"{}\"\n    max_age: 200ms\n",
            dir.path().join("lake").display()
        ),
        Into::JetStream => {
            let js = jetstream().await;
            let config = async_nats::jetstream::stream::Config {
                name: table.clone(),
                subjects: vec![format!("{table}.rows")],
                ..Default::default()
            };
            js.create_stream(config).await.unwrap();
            format!(
                "  bus:\n    type: nats\n    inputs: [ingest]\n    url: {}\n    subject: {table}.rows\n    stream: {table}\n",
                tributary_testkit::test_nats_url()
            )
        }
    };
    let pipeline = ingest_pipeline(dir.path(), admin, ingest, &sink);
    if matches!(into, Into::TimescaleExactlyOnce | Into::DeltaExactlyOnce) {
        let text = std::fs::read_to_string(&pipeline).unwrap();
        std::fs::write(&pipeline, format!("delivery: exactly_once\n{text}")).unwrap();
    }
    let log = dir.path().join("stderr.log");

    let load = Load::start(ingest, 8, 1..=20);
    let child = run_logged(&pipeline, &[], &log);
    let mut child = kill_repeatedly(child, &pipeline, &log, ingest, kills, 300..2500).await;
    let accepted = load.stop();
    if into == Into::JetStream {
        // A debug build publishes more slowly than eight clients post: let it catch up with what
        // the buffer holds, so the stop's drain (30 s) has only the last batches to write.
        let started = Instant::now();
        let stream = jetstream().await.get_stream(&table).await.unwrap();
        let caught_up = crate::fault::wait_until(Duration::from_secs(180), async || {
            stream.get_info().await.is_ok_and(|i| i.state.messages >= accepted.len() as u64)
        })
        .await;
        f.notes.push(format!("caught up {:.0} s after the load stopped: {caught_up}", started.elapsed().as_secs_f64()));
    }
    sigterm(&child);
    let exit = child.wait().unwrap();
    let written = match into {
        Into::File => ids_written(&out),
        Into::TimescaleExactlyOnce => {
            let rows = db.query(&format!("SELECT id, count(*) FROM \"{table}\" GROUP BY id"), &[]).await.unwrap();
            rows.iter().map(|r| (r.get::<_, i64>(0), r.get::<_, i64>(1))).collect()
        }
        Into::DeltaExactlyOnce => ids_in_delta(&dir.path().join("lake")),
        Into::JetStream => ids_in_jetstream(&table).await,
    };
    let (written, lost, duplicates) = reconcile(&accepted, &written);
    f.sent = accepted.len() as i64;
    (f.written, f.lost, f.duplicates) = (written, lost, duplicates);
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    let last_error = logged.lines().rfind(|l| l.contains(" ERROR ")).unwrap_or("none");
    f.check(exit.success(), format!("the clean stop exited {exit}; the last error logged: {last_error}"));
    f.check(f.sent > 1000, format!("only {} rows accepted: the load never ran", f.sent));
    f.check(lost == 0, format!("{lost} rows answered 200 are not in the sink"));
    let replayed = logged.matches("disk buffer: replaying").count();
    f.notes.push(format!("{replayed} of {kills} restarts replayed stored rows"));
    if into == Into::JetStream {
        let copies: u64 = logged
            .lines()
            .filter(|l| l.contains("JetStream dropped messages"))
            .filter_map(|l| l.split("copies=").nth(1))
            .filter_map(|rest| rest.split(|c: char| !c.is_ascii_digit()).next()?.parse::<u64>().ok())
            .sum();
        f.notes.push(format!("{copies} replayed rows dropped by JetStream as copies (same Nats-Msg-Id)"));
        // Every restart comes within the stream's duplicate window (2 minutes), and every replayed
        // row has the id it was first published with: none is stored twice.
        f.check(duplicates == 0, format!("{duplicates} rows stored twice in the stream: their ids did not follow their records"));
        jetstream().await.delete_stream(&table).await.unwrap();
    }
    if matches!(into, Into::TimescaleExactlyOnce | Into::DeltaExactlyOnce) {
        f.check(duplicates == 0, format!("{duplicates} rows written twice with delivery: exactly_once"));
        let skipped: u64 = logged
            .lines()
            .filter_map(|l| l.split("replay_skipped_rows=").nth(1))
            .filter_map(|rest| rest.split(|c: char| !c.is_ascii_digit()).next()?.parse::<u64>().ok())
            .sum();
        f.notes.push(format!("{skipped} replayed rows skipped as already written"));
        db.batch_execute(&format!("DROP TABLE IF EXISTS \"{table}\"; DELETE FROM tributary_positions WHERE target = 'public.{table}'"))
            .await
            .ok();
    }
    f
}

async fn jetstream() -> async_nats::jetstream::Context {
    async_nats::jetstream::new(async_nats::connect(tributary_testkit::test_nats_url()).await.unwrap())
}

/// id → how many messages of JetStream stream `name` carry it (read with a consumer that needs no
/// acks: a default one stops at 1,000 unacknowledged).
async fn ids_in_jetstream(name: &str) -> BTreeMap<i64, i64> {
    use async_nats::jetstream::consumer::{pull, AckPolicy, PullConsumer};
    use futures::StreamExt;
    let stream = jetstream().await.get_stream(name).await.unwrap();
    let total = stream.get_info().await.unwrap().state.messages;
    let consumer: PullConsumer = stream.create_consumer(pull::Config { ack_policy: AckPolicy::None, ..Default::default() }).await.unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut seen = BTreeMap::new();
    for _ in 0..total {
        let m = tokio::time::timeout(Duration::from_secs(10), messages.next()).await.expect("the stream's messages come").unwrap().unwrap();
        if let Some(id) = serde_json::from_slice::<serde_json::Value>(&m.payload).ok().and_then(|v| v["id"].as_i64()) {
            *seen.entry(id).or_insert(0) += 1;
        }
    }
    seen
}

/// `kill -9`s the run of `pipeline` `kills` times, each after a random pause in `pause_ms` once it
/// listens on `ingest`, and restarts it; returns the last run, listening for a second.
async fn kill_repeatedly(
    mut child: std::process::Child,
    pipeline: &Path,
    log: &Path,
    ingest: std::net::SocketAddr,
    kills: usize,
    pause_ms: std::ops::Range<u64>,
) -> std::process::Child {
    let mut rng = rand::rng();
    for _ in 0..kills {
        wait_listening(ingest, log).await;
        tokio::time::sleep(Duration::from_millis(rng.random_range(pause_ms.clone()))).await;
        child.kill().unwrap();
        child.wait().unwrap();
        child = run_logged(pipeline, &[], log);
    }
    wait_listening(ingest, log).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    child
}

/// Scenario 2: SIGTERM while PostgreSQL is cut and one client holds half a request header.
async fn sigterm_with_a_stuck_sink() -> Figure {
    let mut f = Figure {
        scenario: "SIGTERM, sink cut, half a request open",
        fault: "PostgreSQL cut, --drain-timeout 3s, a client sends half its headers and waits".into(),
        ..Default::default()
    };
    let table = format!("buffer_drain_{}", std::process::id());
    let db = pg().await;
    db.batch_execute(&format!("DROP TABLE IF EXISTS \"{table}\"")).await.unwrap();
    let (mut proxy, via_proxy) = CuttableProxy::to_test_postgres().await;
    let dir = tempfile::tempdir().unwrap();
    let (admin, ingest) = (free_addr(), free_addr());
    let sink = format!("  db:\n    type: timescale\n    inputs: [ingest]\n    connection: \"{via_proxy}\"\n    table: {table}\n    batch: {{max_age: 200ms}}\n    timeout: 2s\n");
    let pipeline = ingest_pipeline(dir.path(), admin, ingest, &sink);
    let log = dir.path().join("stderr.log");

    // The table exists and the sink is connected, then the database goes away.
    let mut child = run_logged(&pipeline, &["--drain-timeout", "3s"], &log);
    wait_listening(ingest, &log).await;
    let mut accepted = BTreeSet::new();
    let post_ids = |range: std::ops::Range<i64>, accepted: &mut BTreeSet<i64>| {
        let body: String = range.clone().map(|id| format!("{{\"id\":{id},\"request\":0}}\n")).collect();
        if let Ok((200, _)) = post(ingest, "/", &[], body.as_bytes()) {
            accepted.extend(range);
        }
    };
    post_ids(0..100, &mut accepted);
    let ready = async {
        for _ in 0..100 {
            if pg_count(&db, &table).await == 100 {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    };
    f.check(ready.await, "the first 100 rows never reached PostgreSQL");
    proxy.cut();
    for i in 1..20 {
        post_ids(i * 100..i * 100 + 100, &mut accepted);
    }
    // Half a request: the headers never end.
    let mut hostage = std::net::TcpStream::connect(ingest).unwrap();
    hostage.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Le").unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The drain cannot finish (the sink retries); the stop must still end, within about
    // stop_timeout (2s) + --drain-timeout (3s).
    let t0 = Instant::now();
    sigterm(&child);
    let exit = child.wait().unwrap();
    let stopped_in = t0.elapsed();
    f.notes.push(format!("stopped in {:.1} s ({exit})", stopped_in.as_secs_f64()));
    f.check(stopped_in < Duration::from_secs(12), format!("the stop took {stopped_in:?}: held hostage"));
    drop(hostage);

    // Database back: a restart writes everything the buffer kept.
    proxy.open().await;
    let mut child = run_logged(&pipeline, &[], &log);
    wait_listening(ingest, &log).await;
    let expected = accepted.len() as i64;
    for _ in 0..150 {
        if pg_count(&db, &table).await >= expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    sigterm(&child);
    f.check(child.wait().unwrap().success(), "the last run did not stop cleanly");
    let rows = db.query(&format!("SELECT id FROM \"{table}\""), &[]).await.unwrap();
    let mut written = BTreeMap::new();
    for r in rows {
        *written.entry(r.get::<_, i64>(0)).or_insert(0) += 1;
    }
    let (distinct, lost, duplicates) = reconcile(&accepted, &written);
    (f.sent, f.written, f.lost, f.duplicates) = (expected, distinct, lost, duplicates);
    f.check(f.sent == 2000, format!("{} of 2000 rows accepted", f.sent));
    f.check(lost == 0, format!("{lost} rows answered 200 are not in the table"));
    db.batch_execute(&format!("DROP TABLE IF EXISTS \"{table}\"")).await.unwrap();
    f
}

/// Scenario 8: exactly once into timescale through a proxy that loses COMMIT answers and is cut.
async fn database_cut_with_lost_commits(cut: Duration) -> Figure {
    let mut f = Figure {
        scenario: "PostgreSQL cut + lost COMMIT answers, exactly once",
        fault: format!("3 COMMIT answers lost, PostgreSQL cut {} s, 3 more lost", cut.as_secs()),
        ..Default::default()
    };
    let table = format!("buffer_in_doubt_{}", std::process::id());
    let db = pg().await;
    let forget = format!("DROP TABLE IF EXISTS \"{table}\"; DELETE FROM tributary_positions WHERE target = 'public.{table}'");
    db.batch_execute(&forget).await.ok();
    let (mut proxy, via_proxy) = CuttableProxy::to_test_postgres().await;
    // In clear text, so that the proxy sees the COMMITs (the test server offers TLS).
    let via_proxy = match via_proxy.contains("://") {
        true => format!("{via_proxy}{}sslmode=disable", if via_proxy.contains('?') { '&' } else { '?' }),
        false => format!("{via_proxy} sslmode=disable"),
    };
    let dir = tempfile::tempdir().unwrap();
    let (admin, ingest) = (free_addr(), free_addr());
    let sink = format!("  db:\n    type: timescale\n    inputs: [ingest]\n    connection: \"{via_proxy}\"\n    table: {table}\n    batch: {{max_age: 200ms}}\n    timeout: 2s\n");
    let pipeline = ingest_pipeline(dir.path(), admin, ingest, &sink);
    let text = std::fs::read_to_string(&pipeline).unwrap();
    std::fs::write(&pipeline, format!("delivery: exactly_once\n{text}")).unwrap();
    let log = dir.path().join("stderr.log");

    let mut child = run_logged(&pipeline, &[], &log);
    wait_listening(ingest, &log).await;
    let load = Load::start(ingest, 4, 10..=10);
    tokio::time::sleep(Duration::from_secs(1)).await;
    f.check(lose_commit_answers(&proxy, 3).await, "the first 3 COMMITs never came");
    proxy.cut();
    tokio::time::sleep(cut).await;
    proxy.open().await;
    f.check(lose_commit_answers(&proxy, 3).await, "3 COMMITs after the cut never came");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let accepted = load.stop();
    // What the cut held back (up to the buffer's 64 MiB) is written before the clean stop.
    let t0 = Instant::now();
    while pg_count(&db, &table).await < accepted.len() as i64 && t0.elapsed() < Duration::from_secs(240) {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    f.notes.push(format!("caught up {:.0} s after the load stopped", t0.elapsed().as_secs_f64()));
    sigterm(&child);
    let exit = child.wait().unwrap();
    let rows = db.query(&format!("SELECT id, count(*) FROM \"{table}\" GROUP BY id"), &[]).await.unwrap();
    let written: BTreeMap<i64, i64> = rows.iter().map(|r| (r.get::<_, i64>(0), r.get::<_, i64>(1))).collect();
    let (distinct, lost, duplicates) = reconcile(&accepted, &written);
    (f.sent, f.written, f.lost, f.duplicates) = (accepted.len() as i64, distinct, lost, duplicates);
    f.check(exit.success(), format!("the clean stop exited {exit}"));
    f.check(f.sent > 1000, format!("only {} rows accepted: the load never ran", f.sent));
    f.check(lost == 0, format!("{lost} rows answered 200 are not in the table"));
    f.check(duplicates == 0, format!("{duplicates} rows written twice with delivery: exactly_once"));
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    let decided = logged.matches("an unanswered COMMIT had committed").count();
    f.notes.push(format!("{decided} of 6 unanswered COMMITs were of rows, found committed (txid_status) and not written again"));
    f.check(decided > 0, "no unanswered COMMIT of rows was decided: the proxy lost no answer that mattered");
    let _ = child.kill();
    db.batch_execute(&forget).await.ok();
    f
}

/// Loses the answers to the next `n` COMMITs; false if they do not all come within 90 s (after a
/// long cut the sink's retries are up to 30 s apart).
async fn lose_commit_answers(proxy: &CuttableProxy, n: usize) -> bool {
    proxy.lose_commit_answers(n);
    for _ in 0..900 {
        if proxy.commit_answers_to_lose() == 0 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Scenario 3: a stopped run's segment truncated inside its last record.
async fn cut_mid_record() -> Figure {
    let mut f =
        Figure { scenario: "buffer cut mid-record", fault: "last segment truncated inside its last record".into(), ..Default::default() };
    let dir = tempfile::tempdir().unwrap();
    let (admin, ingest) = (free_addr(), free_addr());
    let out = dir.path().join("out.jsonl");
    // A sink that never writes during the first run: the rows stay in the buffer.
    let never = format!("  out:\n    type: file\n    inputs: [ingest]\n    path: \"{}\"\n    flush_interval: 1h\n", out.display());
    let pipeline = ingest_pipeline(dir.path(), admin, ingest, &never);
    let log = dir.path().join("stderr.log");
    let mut child = run_logged(&pipeline, &[], &log);
    wait_listening(ingest, &log).await;
    let mut accepted = BTreeSet::new();
    for i in 0..10i64 {
        let body: String = (i * 10..i * 10 + 10).map(|id| format!("{{\"id\":{id},\"request\":{i}}}\n")).collect();
        if let Ok((200, _)) = post(ingest, "/", &[], body.as_bytes()) {
            accepted.extend(i * 10..i * 10 + 10);
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // Nothing was written (the sink flushes hourly), so everything is still in the buffer.
    std::fs::remove_file(&out).ok();
    let mut segments = files_ending(&dir.path().join("buffer"), ".seg");
    segments.sort();
    let segment = segments.pop().expect("a segment");
    let len = std::fs::metadata(&segment).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&segment).unwrap().set_len(len - 20).unwrap();

    let fast = pipeline.with_file_name("fast.yaml");
    std::fs::write(&fast, std::fs::read_to_string(&pipeline).unwrap().replace("flush_interval: 1h", "flush_interval: 200ms")).unwrap();
    let mut child = run_logged(&fast, &[], &log);
    wait_listening(ingest, &log).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    sigterm(&child);
    child.wait().unwrap();
    let written = ids_written(&out);
    let (distinct, lost, duplicates) = reconcile(&accepted, &written);
    (f.sent, f.written, f.duplicates) = (accepted.len() as i64, distinct, duplicates);
    // The cut record's rows are the ten of the last request: lost to the damage, not to the buffer.
    f.lost = lost;
    let expected: BTreeSet<i64> = (0..90).collect();
    f.check(
        written.keys().copied().collect::<BTreeSet<_>>() == expected,
        format!("written ids {:?}, expected 0..90", written.keys().collect::<Vec<_>>()),
    );
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let cut_line = text.lines().find(|l| l.contains("disk buffer: ") && l.contains(" is damaged at byte ")).unwrap_or("");
    f.check(cut_line.contains(&segment.display().to_string()), format!("no log line naming the damage: {text}"));
    if let Some(at) = cut_line.split(" at byte ").nth(1) {
        f.notes.push(format!("logged: damaged at byte {}", at.split(':').next().unwrap_or("?")));
    }
    f.notes.push("the 10 rows of the torn record are the expected loss".into());
    f
}

/// What one client posted: the ids answered 200, and the count of answers per status.
type Posted = (BTreeSet<i64>, BTreeMap<u16, i64>);

/// Clients posting NDJSON bodies of unique ids until `stop`.
fn posting_clients(ingest: std::net::SocketAddr, clients: usize, stop: Arc<AtomicBool>) -> Vec<std::thread::JoinHandle<Posted>> {
    let next_id = Arc::new(AtomicI64::new(0));
    (0..clients)
        .map(|_| {
            let (next_id, stop) = (next_id.clone(), stop.clone());
            std::thread::spawn(move || {
                let (mut accepted, mut answers) = (BTreeSet::new(), BTreeMap::new());
                let mut request = 0i64;
                while !stop.load(Ordering::Relaxed) {
                    let first = next_id.fetch_add(20, Ordering::Relaxed);
                    let body: String = (first..first + 20).map(|id| format!("{{\"id\":{id},\"request\":{request}}}\n")).collect();
                    request += 1;
                    let status = post(ingest, "/", &[], body.as_bytes()).map(|(s, _)| s).unwrap_or(0);
                    *answers.entry(status).or_insert(0) += 1;
                    if status == 200 {
                        accepted.extend(first..first + 20);
                    } else {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
                (accepted, answers)
            })
        })
        .collect()
}

/// Scenario 4: the buffer's disk fills under load, then space comes back.
async fn disk_full() -> Figure {
    let mut f =
        Figure { scenario: "buffer disk full under load", fault: "8 MB tmpfs filled for 3 s, then freed".into(), ..Default::default() };
    let Some(disk) = tributary_testkit::Tmpfs::mount(8 << 20) else {
        f.notes.push("skipped: cannot mount a tmpfs (not root)".into());
        return f;
    };
    let dir = tempfile::tempdir().unwrap();
    let (admin, ingest) = (free_addr(), free_addr());
    let out = dir.path().join("out.jsonl");
    let sink = format!("  out:\n    type: file\n    inputs: [ingest]\n    path: \"{}\"\n    flush_interval: 200ms\n", out.display());
    let buffer = disk.path().join("buffer");
    let pipeline = ingest_pipeline_buffered_in(dir.path(), admin, ingest, &sink, &buffer, "4MiB");
    let log = dir.path().join("stderr.log");
    let mut child = run_logged(&pipeline, &[], &log);
    wait_listening(ingest, &log).await;
    let stop = Arc::new(AtomicBool::new(false));
    let clients = posting_clients(ingest, 4, stop.clone());
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let filled = tokio::task::spawn_blocking({
        let path = disk.path().to_path_buf();
        move || tributary_testkit::tmpfs::fill(&path, "filler", 0)
    })
    .await
    .unwrap()
    .unwrap();
    let full_at = Instant::now();
    let (mut named, mut most_segments) = (String::new(), 0);
    while full_at.elapsed() < Duration::from_secs(3) {
        if let Ok((_, body)) = get(admin, "/health") {
            let h: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            if let Some(e) = h["components"]["ingest"]["last_error"].as_str() {
                named = e.to_string();
            }
        }
        most_segments = most_segments.max(files_ending(&buffer, ".seg").len());
        // Often: a failing spell can be short once written segments are reclaimed.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    std::fs::remove_file(disk.path().join("filler")).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = get(admin, "/health").map(|(_, b)| b).unwrap_or_default();
    stop.store(true, Ordering::Relaxed);
    let (mut accepted, mut answers) = (BTreeSet::new(), BTreeMap::<u16, i64>::new());
    for c in clients {
        let (a, n) = c.join().unwrap();
        accepted.extend(a);
        for (status, count) in n {
            *answers.entry(status).or_insert(0) += count;
        }
    }
    sigterm(&child);
    let exit = child.wait().unwrap();
    let (written, lost, duplicates) = reconcile(&accepted, &ids_written(&out));
    (f.sent, f.written, f.lost, f.duplicates) = (accepted.len() as i64, written, lost, duplicates);
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    let error_lines = logged.lines().filter(|l| l.contains("ERROR")).count();
    f.notes.push(format!("{} MB filled; answers {answers:?}", filled >> 20));
    f.notes.push(format!("/health last_error: {named:?}; at most {most_segments} segment files; {error_lines} ERROR lines"));
    f.check(lost == 0, format!("{lost} rows answered 200 are not in the sink"));
    f.check(duplicates == 0, format!("{duplicates} rows written twice"));
    f.check(answers.get(&503).copied().unwrap_or(0) > 0, "no client was refused while the disk was full");
    f.check(answers.keys().all(|s| *s == 200 || *s == 503), format!("answers other than 200 and 503: {answers:?}"));
    f.check(
        named.contains("disk buffer") && named.contains("No space left on device"),
        format!("/health never named the buffer's error: {named:?}"),
    );
    f.check(!after.contains("\"last_error\""), format!("still failing after the space came back: {after}"));
    // At most max_size / segment size (4 MiB / 512 KiB) + the active one; the storm made 6,134.
    f.check(most_segments <= 9, format!("{most_segments} segment files while the disk was full"));
    f.check(error_lines <= 2, format!("{error_lines} ERROR lines: the failure is logged once, not per request"));
    if !f.problems.is_empty() {
        // What the run said, to tell a loss from a miscount.
        let said: Vec<&str> = logged.lines().filter(|l| l.contains("ERROR") || l.contains("WARN")).take(20).collect();
        f.notes.push(format!("its ERROR and WARN lines: {said:?}"));
    }
    f.check(exit.success(), format!("the clean stop exited {exit}"));
    f
}

/// Scenario 5: 2,000 rows written by both sinks, a quiet spell, `kill -9`, restart.
async fn idle_kill() -> Figure {
    let mut f = Figure { scenario: "idle kill -9", fault: "every ack resolved, 1 s quiet, kill -9, restart".into(), ..Default::default() };
    let table = format!("buffer_idle_{}", std::process::id());
    let db = pg().await;
    db.batch_execute(&format!("DROP TABLE IF EXISTS \"{table}\"")).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (admin, ingest) = (free_addr(), free_addr());
    let out = dir.path().join("out.jsonl");
    let sinks = format!(
        "  out:\n    type: file\n    inputs: [ingest]\n    path: \"{}\"\n    flush_interval: 200ms\n  db:\n    type: timescale\n    inputs: [ingest]\n    connection: \"{}\"\n    table: {table}\n    batch: {{max_age: 200ms}}\n",
        out.display(),
        tributary_testkit::test_postgres_url()
    );
    let pipeline = ingest_pipeline(dir.path(), admin, ingest, &sinks);
    let log = dir.path().join("stderr.log");
    let mut child = run_logged(&pipeline, &[], &log);
    wait_listening(ingest, &log).await;
    let mut accepted = BTreeSet::new();
    for request in 0..20i64 {
        let body: String = (request * 100..request * 100 + 100).map(|id| format!("{{\"id\":{id},\"request\":{request}}}\n")).collect();
        if let Ok((200, _)) = post(ingest, "/", &[], body.as_bytes()) {
            accepted.extend(request * 100..request * 100 + 100);
        }
    }
    for _ in 0..100 {
        if ids_written(&out).len() >= 2000 && pg_count(&db, &table).await >= 2000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    child.kill().unwrap();
    child.wait().unwrap();
    let mut child = run_logged(&pipeline, &[], &log);
    wait_listening(ingest, &log).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    sigterm(&child);
    let exit = child.wait().unwrap();
    let (written, lost, file_duplicates) = reconcile(&accepted, &ids_written(&out));
    let (rows, distinct): (i64, i64) = {
        let r = db.query_one(&format!("SELECT count(*), count(DISTINCT id) FROM \"{table}\""), &[]).await.unwrap();
        (r.get(0), r.get(1))
    };
    (f.sent, f.written, f.lost, f.duplicates) = (accepted.len() as i64, written, lost, file_duplicates + rows - distinct);
    f.notes.push(format!("file sink: {file_duplicates} written twice; timescale: {} written twice", rows - distinct));
    f.check(f.sent == 2000, format!("{} of 2000 rows accepted", f.sent));
    f.check(lost == 0 && distinct == 2000, format!("{lost} rows missing from the file, {} from the table", 2000 - distinct));
    f.check(f.duplicates == 0, format!("{} rows written twice after an idle kill", f.duplicates));
    f.check(exit.success(), format!("the clean stop exited {exit}"));
    db.batch_execute(&format!("DROP TABLE IF EXISTS \"{table}\"")).await.unwrap();
    f
}

/// 2026-01-01T00:00:00Z in milliseconds: event time of id 0 (id `i` happened `i` ms later).
const WINDOW_EPOCH_MS: i64 = 1_767_225_600_000;
const CHANNELS: i64 = 4;

/// A badge-style event: its event time follows its id, its channel is `id % 4`.
fn event_line(id: i64, _request: i64) -> String {
    let ts = chrono::DateTime::from_timestamp_millis(WINDOW_EPOCH_MS + id).expect("in range");
    format!("{{\"ts\":\"{}\",\"channel\":\"c{}\",\"id\":{id}}}\n", ts.to_rfc3339_opts(chrono::SecondsFormat::Millis, true), id % CHANNELS)
}

/// Scenario 9: a per-minute, per-channel count, exactly once, killed mid-window.
async fn windowed_kills(kills: usize, exactly_once: bool) -> Figure {
    let mut f = Figure {
        scenario: if exactly_once {
            "windowed counts killed mid-window, exactly once"
        } else {
            "windowed counts killed mid-window, at least once"
        },
        fault: format!("{kills} × kill -9 at a random moment, then SIGTERM"),
        ..Default::default()
    };
    let table = format!("buffer_window_{}", std::process::id());
    let db = pg().await;
    let forget = format!("DROP TABLE IF EXISTS \"{table}\"; DELETE FROM tributary_positions WHERE target = 'public.{table}'");
    db.batch_execute(&forget).await.ok();
    let dir = tempfile::tempdir().unwrap();
    let (admin, ingest) = (free_addr(), free_addr());
    let pipeline = write(
        dir.path(),
        "p.yaml",
        &format!(
            "delivery: {delivery}\nadmin: {{address: \"{admin}\"}}\ndead_letters: {{path: \"{dl}\"}}\n\
             sources:\n  ingest:\n    type: http_server\n    address: \"{ingest}\"\n    accept_timeout: 500ms\n    stop_timeout: 2s\n    schema: {{ts: timestamp, channel: string, id: int}}\n    buffer: {{type: disk, max_size: 256MiB, path: \"{buffer}\"}}\n\
             transforms:\n  per_minute:\n    inputs: [ingest]\n    window: {{tumbling: 1m, allowed_lateness: 1m}}\n    sql: SELECT window_start, channel, count(*) AS n, string_agg(CAST(id AS VARCHAR), ',') AS ids FROM ingest GROUP BY window_start, channel\n\
             sinks:\n  db:\n    type: timescale\n    inputs: [per_minute]\n    connection: \"{url}\"\n    table: {table}\n    time_column: window_start\n    batch: {{max_age: 200ms}}\n",
            dl = dir.path().join("dead_letters").display(),
            buffer = dir.path().join("buffer").display(),
            url = tributary_testkit::test_postgres_url(),
            delivery = if exactly_once { "exactly_once" } else { "at_least_once" },
        ),
    );
    let log = dir.path().join("stderr.log");

    let load = Load::start_with(ingest, 8, 1..=20, event_line);
    // The first kill comes once the sink has written a window, so every restart has a point to
    // resume after (a slow machine used to kill before the first minute closed).
    let select = format!("SELECT window_start, channel, n, ids FROM \"{table}\"");
    let child = run_logged(&pipeline, &[], &log);
    let t0 = Instant::now();
    while db.query(&select, &[]).await.map_or(true, |rows| rows.is_empty()) && t0.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut child = kill_repeatedly(child, &pipeline, &log, ingest, kills, 1000..4000).await;
    let accepted = load.stop();
    // One event three minutes past the last: the watermark passes every minute the load reached.
    let last = accepted.iter().next_back().copied().unwrap_or(0);
    let closer = last + 180_000;
    let (status, _) = post(ingest, "/", &[], event_line(closer, 0).as_bytes()).unwrap();
    f.check(status == 200, format!("the closing event was answered {status}"));
    let minutes = |id: i64| (id / 60_000, id % CHANNELS);
    let expected_rows: BTreeSet<(i64, i64)> = accepted.iter().map(|&id| minutes(id)).collect();
    // Until every accepted event is counted somewhere (what the kills left in the buffer is
    // written first).
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(120) {
        let rows = db.query(&select, &[]).await.unwrap_or_default();
        let counted: BTreeSet<i64> =
            rows.iter().flat_map(|r| r.get::<_, String>(3).split(',').map(|i| i.parse::<i64>().unwrap()).collect::<Vec<_>>()).collect();
        if accepted.is_subset(&counted) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    sigterm(&child);
    let exit = child.wait().unwrap();
    let rows = db.query(&select, &[]).await.unwrap();

    let mut written: BTreeMap<i64, i64> = BTreeMap::new();
    let mut rows_per_window: BTreeMap<(i64, i64), usize> = BTreeMap::new();
    let (mut misplaced, mut miscounted) = (0, 0);
    for r in &rows {
        let start: std::time::SystemTime = r.get(0);
        let start_ms = start.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64 - WINDOW_EPOCH_MS;
        let channel: String = r.get(1);
        let (n, ids): (i64, String) = (r.get(2), r.get(3));
        let key = (start_ms / 60_000, channel.trim_start_matches('c').parse::<i64>().unwrap());
        *rows_per_window.entry(key).or_insert(0) += 1;
        let ids: Vec<i64> = ids.split(',').map(|i| i.parse().unwrap()).collect();
        miscounted += (ids.len() as i64 != n) as i64;
        for id in ids {
            misplaced += (minutes(id) != key) as i64;
            *written.entry(id).or_insert(0) += 1;
        }
    }
    let (distinct, lost, duplicates) = reconcile(&accepted, &written);
    (f.sent, f.written, f.lost, f.duplicates) = (accepted.len() as i64, distinct, lost, duplicates);
    let twice = rows_per_window.values().filter(|&&n| n > 1).count();
    f.notes.push(format!("{} (minute, channel) rows for {} expected", rows.len(), expected_rows.len()));
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    f.notes.push(format!("{} of {kills} restarts replayed stored rows", logged.matches("disk buffer: replaying").count()));
    // Each start after the first learned from the sink where its windows stopped.
    let resumed = logged.matches("exactly once: the sinks it feeds wrote its windows through 2026-01-01T").count();
    if exactly_once {
        f.notes.push(format!("{resumed} of {kills} restarts resumed after the last window the sink wrote"));
    }
    f.notes.push(format!("{twice} (minute, channel) rows written more than once"));
    f.check(exit.success(), format!("the clean stop exited {exit}"));
    f.check(f.sent > 10_000, format!("only {} events accepted: the load never ran", f.sent));
    f.check(lost == 0, format!("{lost} events answered 200 are in no window"));
    if !exactly_once {
        db.batch_execute(&forget).await.ok();
        return f;
    }
    f.check(resumed == kills, format!("{resumed} of {kills} restarts were told where the sink's windows stopped"));
    f.check(duplicates == 0, format!("{duplicates} events counted twice"));
    f.check(twice == 0, format!("{twice} (minute, channel) rows written more than once"));
    f.check(misplaced == 0, format!("{misplaced} events counted in another minute or channel"));
    f.check(miscounted == 0, format!("{miscounted} rows whose count is not the number of ids they list"));
    f.check(
        rows_per_window.keys().all(|k| expected_rows.contains(k) || k.0 == minutes(closer).0),
        "a (minute, channel) row no accepted event belongs to",
    );
    db.batch_execute(&forget).await.ok();
    f
}
