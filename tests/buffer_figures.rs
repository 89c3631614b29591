//! Disk buffer figures: the built `tributary` binary with HTTP ingest on `buffer: {type: disk}`,
//! under the faults a disk buffer exists for; counts printed as a table, every "0 lost" asserted.
//!
//! ```text
//! cargo test --test buffer_figures               # 5 kills (what CI runs)
//! cargo test --test buffer_figures -- --full     # the documented figures: 20 kills
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
//! A plain `main` (harness = false), like `fault_figures`. Test-name filters that do not match
//! `buffer_figures` skip it.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::figures::{harness_args, report, Figure};
use common::*;
use rand::Rng;

fn main() {
    let Some(args) = harness_args("buffer_figures") else { return };
    let kills = if args.iter().any(|a| a == "--full") { 20 } else { 5 };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let figures = rt.block_on(async { vec![kill_under_load(kills).await, sigterm_with_a_stuck_sink().await, cut_mid_record().await] });
    report("buffer figures", "accepted (200)", &figures);
}

/// `tributary run` with extra arguments, its stderr captured in `log`.
fn run_logged(pipeline: &Path, extra: &[&str], log: &Path) -> std::process::Child {
    std::process::Command::new(bin())
        .arg("run")
        .arg(pipeline)
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap())
        .spawn()
        .unwrap()
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
    write(
        dir,
        "p.yaml",
        &format!(
            "admin: {{address: \"{admin}\"}}\ndead_letters: {{path: \"{dl}\"}}\nsources:\n  ingest:\n    type: http_server\n    address: \"{ingest}\"\n    accept_timeout: 500ms\n    stop_timeout: 2s\n    schema: {{ts: timestamp, id: int, request: int}}\n    buffer: {{type: disk, max_size: 64MiB, path: \"{buffer}\"}}\nsinks:\n{sink}",
            dl = dir.join("dead_letters").display(),
            buffer = dir.join("buffer").display(),
        ),
    )
}

/// Scenario 1: `kill -9` at random moments while eight clients post.
async fn kill_under_load(kills: usize) -> Figure {
    let mut f = Figure {
        scenario: "kill -9 under HTTP load",
        fault: format!("{kills} × kill -9 at a random moment, then SIGTERM"),
        ..Default::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let (admin, ingest) = (free_addr(), free_addr());
    let out = dir.path().join("out.jsonl");
    let sink = format!("  out:\n    type: file\n    inputs: [ingest]\n    path: \"{}\"\n    flush_interval: 200ms\n", out.display());
    let pipeline = ingest_pipeline(dir.path(), admin, ingest, &sink);
    let log = dir.path().join("stderr.log");

    let accepted = Arc::new(Mutex::new(BTreeSet::new()));
    let next_id = Arc::new(AtomicI64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (accepted, next_id, stop) = (accepted.clone(), next_id.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut rng = rand::rng();
                let mut requests = 0i64;
                while !stop.load(Ordering::Relaxed) {
                    let n = rng.random_range(1..=20);
                    let first = next_id.fetch_add(n, Ordering::Relaxed);
                    let body: String = (first..first + n).map(|id| format!("{{\"id\":{id},\"request\":{requests}}}\n")).collect();
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

    let mut rng = rand::rng();
    let mut child = run_logged(&pipeline, &[], &log);
    for _ in 0..kills {
        wait_listening(ingest, &log).await;
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..2500))).await;
        child.kill().unwrap();
        child.wait().unwrap();
        child = run_logged(&pipeline, &[], &log);
    }
    wait_listening(ingest, &log).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    sigterm(&child);
    let exit = child.wait().unwrap();
    let accepted = accepted.lock().unwrap().clone();
    let (written, lost, duplicates) = reconcile(&accepted, &ids_written(&out));
    f.sent = accepted.len() as i64;
    (f.written, f.lost, f.duplicates) = (written, lost, duplicates);
    f.check(exit.success(), format!("the clean stop exited {exit}"));
    f.check(f.sent > 1000, format!("only {} rows accepted: the load never ran", f.sent));
    f.check(lost == 0, format!("{lost} rows answered 200 are not in the sink"));
    let replayed = std::fs::read_to_string(&log).unwrap_or_default().matches("disk buffer: replaying").count();
    f.notes.push(format!("{replayed} of {kills} restarts replayed stored rows"));
    f
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
    let cut_line = text.lines().find(|l| l.contains("disk buffer: cut")).unwrap_or("");
    f.check(
        cut_line.contains(&segment.display().to_string()) && cut_line.contains(" at byte "),
        format!("no log line naming the cut: {text}"),
    );
    if let Some(at) = cut_line.split(" at byte ").nth(1) {
        f.notes.push(format!("logged: cut at byte {}", at.split(':').next().unwrap_or("?")));
    }
    f.notes.push("the 10 rows of the torn record are the expected loss".into());
    f
}
