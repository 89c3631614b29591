//! Hot reload of a running `tributary run`: a SQL transform's predicate changes (SIGHUP) while HTTP
//! ingest runs at load. No accepted row is lost, rows accepted before the reload ran the old SQL,
//! rows sent after it the new one, and the unchanged windowed transform beside it keeps its open
//! windows: its counts are exact across the reload. An invalid file first is refused with its
//! line and column, and the pipeline keeps running.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn pipeline(http: SocketAddr, admin: SocketAddr, dir: &Path, predicate: &str) -> String {
    format!(
        r#"admin: {{address: "{admin}"}}
sources:
  ingest:
    type: http_server
    address: "{http}"
    schema: {{id: int, badge: string, score: int, ts: timestamp}}
transforms:
  keep:
    inputs: [ingest]
    sql: SELECT id, score FROM ingest WHERE {predicate}
  per_badge:
    inputs: [ingest]
    window: {{tumbling: 1m, allowed_lateness: 1m}}
    sql: SELECT window_start, badge, count(*) AS n FROM ingest GROUP BY window_start, badge
sinks:
  kept: {{type: file, inputs: [keep], path: "{kept}", flush_interval: 100ms}}
  counts: {{type: file, inputs: [per_badge], path: "{counts}", flush_interval: 100ms}}
"#,
        kept = dir.join("kept.jsonl").display(),
        counts = dir.join("counts.jsonl").display(),
    )
}

fn health(admin: SocketAddr) -> serde_json::Value {
    let (_, body) = common::get(admin, "/health").unwrap_or_default();
    serde_json::from_str(&body).unwrap_or_default()
}

/// `tributary run [--watch] FILE`, its log at info level in `log` (else warnings on stderr), once
/// its `/health` answers.
fn start(file: &Path, watch: bool, admin: SocketAddr, log: Option<&Path>) -> std::process::Child {
    let mut args = vec!["run"];
    if watch {
        args.push("--watch");
    }
    args.push(file.to_str().unwrap());
    let (level, stderr) = match log {
        Some(path) => ("info", Stdio::from(std::fs::File::create(path).unwrap())),
        None => ("warn", Stdio::inherit()),
    };
    let child = Command::new(common::bin()).args(args).env("TRIBUTARY_LOG", level).stdout(Stdio::null()).stderr(stderr).spawn().unwrap();
    wait_for("the pipeline to answer /health", || health(admin)["status"] == "ok");
    child
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Phases of the run, as a request sees them when it starts and when its answer arrives.
const BEFORE: u8 = 0;
const RELOADING: u8 = 1;
const AFTER: u8 = 2;

struct Sent {
    status: u16,
    started: u8,
    answered: u8,
}

/// Clients POSTing one numbered event each, as fast as answers come; each request records its
/// status and the phase when it started and when it was answered.
struct Load {
    phase: Arc<AtomicU8>,
    stop: Arc<AtomicBool>,
    sent: Arc<Mutex<BTreeMap<i64, Sent>>>,
    clients: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(clients: usize, http: SocketAddr, body: fn(i64) -> String) -> Load {
        // `/health` answers once the admin server is up, which can be before the http source
        // listens (CI once saw the first 290 POSTs of a load find no listener).
        wait_for("the http source to listen", || std::net::TcpStream::connect(http).is_ok());
        let phase = Arc::new(AtomicU8::new(BEFORE));
        let stop = Arc::new(AtomicBool::new(false));
        let next = Arc::new(AtomicUsize::new(0));
        let sent: Arc<Mutex<BTreeMap<i64, Sent>>> = Arc::default();
        let clients = (0..clients)
            .map(|_| {
                let (phase, stop, next, sent) = (phase.clone(), stop.clone(), next.clone(), sent.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        let id = next.fetch_add(1, Ordering::SeqCst) as i64;
                        let started = phase.load(Ordering::SeqCst);
                        let status =
                            common::post(http, "/", &[("Content-Type", "application/json")], body(id).as_bytes()).map_or(0, |r| r.0);
                        sent.lock().unwrap().insert(id, Sent { status, started, answered: phase.load(Ordering::SeqCst) });
                    }
                })
            })
            .collect();
        Load { phase, stop, sent, clients }
    }

    fn count(&self) -> usize {
        self.sent.lock().unwrap().len()
    }

    /// Wait until `n` more requests were answered.
    fn wait_for_more(&self, n: usize) {
        let from = self.count();
        wait_for(&format!("{n} more events"), || self.count() >= from + n);
    }

    fn phase(&self, phase: u8) {
        self.phase.store(phase, Ordering::SeqCst);
    }

    fn finish(self) -> BTreeMap<i64, Sent> {
        self.stop.store(true, Ordering::SeqCst);
        for client in self.clients {
            client.join().unwrap();
        }
        std::mem::take(&mut *self.sent.lock().unwrap())
    }
}

#[test]
fn a_changed_predicate_reloads_without_losing_rows_or_open_windows() {
    let dir = tempfile::tempdir().unwrap();
    let (http, admin) = (common::free_addr(), common::free_addr());
    let file = common::write(dir.path(), "reload.yaml", &pipeline(http, admin, dir.path(), "score > 100"));
    let log = dir.path().join("run.log");
    let mut child = start(&file, false, admin, Some(&log));
    assert_eq!(health(admin)["config"]["generation"], 1);

    // Four clients, one event per POST; event time moves 10 ms per id (no row is late).
    let load = Load::start(4, http, |id| {
        let ts = std::time::UNIX_EPOCH + Duration::from_millis(1_796_032_800_000 + id as u64 * 10); // from 2026-11-30T10:00:00Z
        format!(r#"{{"id":{id},"badge":"b{}","score":{},"ts":"{}"}}"#, id % 5, id % 1000, humantime::format_rfc3339_millis(ts))
    });
    load.wait_for_more(1000);

    // An invalid file: refused with its place, the pipeline keeps running the old one.
    std::fs::write(&file, pipeline(http, admin, dir.path(), "no_such_column > 100")).unwrap();
    common::sighup(&child);
    wait_for("the refused reload in /health", || health(admin)["config"]["last_reload_error"].is_string());
    let h = health(admin);
    let error = h["config"]["last_reload_error"].as_str().unwrap();
    assert!(
        error.starts_with("the new file is invalid:\n")
            && error.contains("reload.yaml:10:5: transforms.keep.sql: SQL does not plan: Schema error: No field named no_such_column."),
        "the refusal names the file, line and column: {error}"
    );
    assert_eq!(h["config"]["generation"], 1);
    load.wait_for_more(500);

    std::fs::write(&file, pipeline(http, admin, dir.path(), "score > 500")).unwrap();
    load.phase(RELOADING);
    common::sighup(&child);
    wait_for("generation 2 in /health", || health(admin)["config"]["generation"] == 2);
    load.phase(AFTER);
    load.wait_for_more(1000);
    let sent = load.finish();
    common::sigterm(&child);
    assert!(child.wait().unwrap().success(), "clean stop");

    let refused: Vec<_> = sent.iter().filter(|(_, s)| s.status != 200).map(|(id, s)| (*id, s.status)).collect();
    assert!(refused.is_empty(), "every POST accepted: {refused:?}");
    let lines = |name: &str| -> Vec<serde_json::Value> {
        std::fs::read_to_string(dir.path().join(name)).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    let kept: BTreeSet<i64> = lines("kept.jsonl").iter().map(|v| v["id"].as_i64().unwrap()).collect();
    let score = |id: i64| id % 1000;

    // Rows both predicates keep: every one is there.
    let lost: Vec<i64> = sent.keys().copied().filter(|id| score(*id) > 500 && !kept.contains(id)).collect();
    assert!(lost.is_empty(), "{} rows lost across the reload: {:?}", lost.len(), &lost[..lost.len().min(10)]);
    // Accepted before the reload: the old SQL, even if still queued when the new file arrived.
    let old_sql: Vec<i64> = sent.iter().filter(|(id, s)| s.answered == BEFORE && score(**id) > 100).map(|(id, _)| *id).collect();
    let missing_old: Vec<i64> = old_sql.iter().copied().filter(|id| !kept.contains(id)).collect();
    assert!(missing_old.is_empty(), "accepted under `score > 100` but not written: {:?}", &missing_old[..missing_old.len().min(10)]);
    // Sent after the reload: the new SQL.
    let new_sql: Vec<i64> = sent.iter().filter(|(_, s)| s.started == AFTER).map(|(id, _)| *id).collect();
    let wrong: Vec<i64> = new_sql.iter().copied().filter(|id| kept.contains(id) != (score(*id) > 500)).collect();
    assert!(wrong.is_empty(), "rows sent after the reload that did not follow `score > 500`: {:?}", &wrong[..wrong.len().min(10)]);
    assert!(
        old_sql.len() >= 1000 && new_sql.len() >= 900,
        "both sides of the reload were exercised: {} and {}",
        old_sql.len(),
        new_sql.len()
    );

    // The windowed transform did not restart: per badge, its windows counted every event once.
    let mut counted: BTreeMap<String, i64> = BTreeMap::new();
    for v in lines("counts.jsonl") {
        *counted.entry(v["badge"].as_str().unwrap().to_string()).or_default() += v["n"].as_i64().unwrap();
    }
    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    for id in sent.keys() {
        *expected.entry(format!("b{}", id % 5)).or_default() += 1;
    }
    assert_eq!(counted, expected, "window counts across the reload");
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("restarted=keep") && !log.contains("restarted=keep,per_badge"), "only `keep` restarted:\n{log}");
    eprintln!(
        "{} events: {} before the reload (old SQL), {} after (new SQL); {} rows kept; window counts exact: {counted:?}",
        sent.len(),
        old_sql.len(),
        new_sql.len(),
        kept.len()
    );
}

/// `run --watch`: saving the file is enough. A changed source stops as on a shutdown and its new
/// version starts on the same outputs; what the old one accepted is written.
#[test]
fn a_changed_source_restarts_on_the_same_outputs_under_watch() {
    let dir = tempfile::tempdir().unwrap();
    let (http, admin) = (common::free_addr(), common::free_addr());
    let out = dir.path().join("out.jsonl");
    let yaml = |extra: &str| {
        format!(
            "admin: {{address: \"{admin}\"}}\nsources:\n  ingest:\n    type: http_server\n    address: \"{http}\"\n    schema: {{id: int}}\n{extra}sinks:\n  out: {{type: file, inputs: [ingest], path: \"{}\", flush_interval: 100ms}}\n",
            out.display()
        )
    };
    let file = common::write(dir.path(), "watch.yaml", &yaml(""));
    let mut child = start(&file, true, admin, None);
    let post = |id: i64, token: Option<&str>| {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
        common::post(http, "/", &headers, format!(r#"{{"id":{id}}}"#).as_bytes()).map_or(0, |r| r.0)
    };
    for id in 0..100 {
        assert_eq!(post(id, None), 200);
    }
    std::fs::write(&file, yaml("    token: s3cret\n")).unwrap();
    wait_for("generation 2 in /health", || health(admin)["config"]["generation"] == 2);
    // The new source may still be binding its port.
    wait_for("the new source to refuse a request without the token", || post(1000, None) == 401);
    for id in 100..200 {
        assert_eq!(post(id, Some("s3cret")), 200);
    }
    common::sigterm(&child);
    assert!(child.wait().unwrap().success(), "clean stop");
    let written: Vec<i64> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["id"].as_i64().unwrap())
        .collect();
    assert_eq!(written, (0..200).collect::<Vec<_>>(), "every accepted row, once, in order");
}

/// A reload that changes a transform's columns: its sink is planned anew over them and switches at
/// the first batch that has them. Rows accepted before the reload keep the old columns, rows sent
/// after it have the new ones, and every row is written once.
#[test]
fn new_columns_reach_the_sink_at_the_batch_that_has_them() {
    let dir = tempfile::tempdir().unwrap();
    let (http, admin) = (common::free_addr(), common::free_addr());
    let out = dir.path().join("out.jsonl");
    let yaml = |columns: &str| {
        format!(
            "admin: {{address: \"{admin}\"}}\nsources:\n  ingest:\n    type: http_server\n    address: \"{http}\"\n    schema: {{id: int, score: int}}\ntransforms:\n  pick: {{inputs: [ingest], sql: \"SELECT {columns} FROM ingest\"}}\nsinks:\n  out: {{type: file, inputs: [pick], path: \"{}\", flush_interval: 100ms}}\n",
            out.display()
        )
    };
    let file = common::write(dir.path(), "columns.yaml", &yaml("id"));
    let mut child = start(&file, false, admin, None);

    let load = Load::start(2, http, |id| format!(r#"{{"id":{id},"score":{}}}"#, id * 2));
    load.wait_for_more(500);
    std::fs::write(&file, yaml("id, score")).unwrap();
    load.phase(RELOADING);
    common::sighup(&child);
    wait_for("generation 2 in /health", || health(admin)["config"]["generation"] == 2);
    load.phase(AFTER);
    load.wait_for_more(500);
    let sent = load.finish();
    common::sigterm(&child);
    assert!(child.wait().unwrap().success(), "clean stop");

    assert!(sent.values().all(|s| s.status == 200), "every POST accepted");
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(&out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let mut ids: Vec<i64> = rows.iter().map(|r| r["id"].as_i64().unwrap()).collect();
    ids.sort();
    assert_eq!(ids, sent.keys().copied().collect::<Vec<_>>(), "every accepted row written once");
    let score: BTreeMap<i64, Option<i64>> =
        rows.iter().map(|r| (r["id"].as_i64().unwrap(), r.get("score").and_then(|v| v.as_i64()))).collect();
    for (id, s) in sent.iter() {
        match (s.answered, s.started) {
            (BEFORE, _) => assert_eq!(score[id], None, "id {id} was accepted before the reload: old columns"),
            (_, AFTER) => assert_eq!(score[id], Some(id * 2), "id {id} was sent after the reload: new columns"),
            _ => {}
        }
    }
}

/// Rewiring: a sink gains an input, another is removed and a third added, under load. Each row
/// reaches exactly one of the first two: the removed one writes what it was sent before it goes,
/// and rows sent after the reload follow the new wiring; the added sink gets what its input sends
/// from the reload on.
#[test]
fn sinks_are_rewired_removed_and_added_without_losing_a_row() {
    let dir = tempfile::tempdir().unwrap();
    let (http, admin) = (common::free_addr(), common::free_addr());
    let (a, b, c) = (dir.path().join("a.jsonl"), dir.path().join("b.jsonl"), dir.path().join("c.jsonl"));
    let yaml = |sinks: &str| {
        format!(
            "admin: {{address: \"{admin}\"}}\nsources:\n  ingest:\n    type: http_server\n    address: \"{http}\"\n    schema: {{id: int, score: int}}\ntransforms:\n  high: {{inputs: [ingest], sql: \"SELECT id, score FROM ingest WHERE score > 500\"}}\n  low: {{inputs: [ingest], sql: \"SELECT id, score FROM ingest WHERE score <= 500\"}}\nsinks:\n{sinks}"
        )
    };
    let before = format!(
        "  a: {{type: file, inputs: [high], path: \"{}\", flush_interval: 100ms}}\n  b: {{type: file, inputs: [low], path: \"{}\", flush_interval: 100ms}}\n",
        a.display(),
        b.display()
    );
    let after = format!(
        "  a: {{type: file, inputs: [high, low], path: \"{}\", flush_interval: 100ms}}\n  c: {{type: file, inputs: [high], path: \"{}\", flush_interval: 100ms}}\n",
        a.display(),
        c.display()
    );
    let file = common::write(dir.path(), "rewire.yaml", &yaml(&before));
    let log = dir.path().join("run.log");
    let mut child = start(&file, false, admin, Some(&log));

    let load = Load::start(3, http, |id| format!(r#"{{"id":{id},"score":{}}}"#, id % 1000));
    load.wait_for_more(1000);
    std::fs::write(&file, yaml(&after)).unwrap();
    load.phase(RELOADING);
    common::sighup(&child);
    wait_for("generation 2 in /health", || health(admin)["config"]["generation"] == 2);
    load.phase(AFTER);
    let components = health(admin)["components"].clone();
    assert!(components.get("c").is_some() && components.get("b").is_none(), "/health lists c, not b: {components}");
    load.wait_for_more(1000);
    let sent = load.finish();
    common::sigterm(&child);
    assert!(child.wait().unwrap().success(), "clean stop");

    assert!(sent.values().all(|s| s.status == 200), "every POST accepted");
    let ids = |path: &Path| -> Vec<i64> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["id"].as_i64().unwrap())
            .collect()
    };
    let (in_a, in_b, in_c) = (ids(&a), ids(&b), ids(&c));
    let mut all: Vec<i64> = in_a.iter().chain(&in_b).copied().collect();
    all.sort();
    assert_eq!(all, sent.keys().copied().collect::<Vec<_>>(), "every accepted row in exactly one sink");
    let (in_a, in_b): (BTreeSet<i64>, BTreeSet<i64>) = (in_a.into_iter().collect(), in_b.into_iter().collect());
    for (id, s) in sent.iter() {
        let low = id % 1000 <= 500;
        if !low {
            assert!(in_a.contains(id), "id {id} (high) goes to a before and after");
        } else if s.answered == BEFORE {
            assert!(in_b.contains(id), "id {id} (low) was accepted before the reload: b");
        } else if s.started == AFTER {
            assert!(in_a.contains(id), "id {id} (low) was sent after the reload: a");
        }
    }
    // The added sink: high rows only, each once, every one sent after the reload.
    let in_c_set: BTreeSet<i64> = in_c.iter().copied().collect();
    assert_eq!(in_c_set.len(), in_c.len(), "c writes each row once");
    assert!(in_c.iter().all(|id| id % 1000 > 500), "c reads `high` only");
    let missing: Vec<i64> =
        sent.iter().filter(|(id, s)| s.started == AFTER && *id % 1000 > 500 && !in_c_set.contains(id)).map(|(id, _)| *id).collect();
    assert!(missing.is_empty(), "high rows sent after the reload missing from c: {missing:?}");
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("restarted=a,+c,-b"), "a rewired, c added, b removed:\n{log}");
    eprintln!("{} rows: a {}, b {} (removed at the reload), c {} (added)", sent.len(), in_a.len(), in_b.len(), in_c.len());
}

/// A reload adds a source (with a disk buffer), a transform and sinks: they start, are wired, show
/// in `/health` and `/metrics`, and what the untouched part of the pipeline does goes on. The added
/// source starts exactly as it would at start: its rows go through its buffer on disk.
#[test]
fn a_reload_adds_a_source_a_transform_and_sinks() {
    let dir = tempfile::tempdir().unwrap();
    let (http, http2, admin) = (common::free_addr(), common::free_addr(), common::free_addr());
    let path = |name: &str| dir.path().join(name).display().to_string();
    let first = format!(
        "admin: {{address: \"{admin}\"}}\nsources:\n  ingest: {{type: http_server, address: \"{http}\", schema: {{id: int, score: int}}}}\nsinks:\n  a: {{type: file, inputs: [ingest], path: \"{}\", flush_interval: 100ms}}\n",
        path("a.jsonl")
    );
    let file = common::write(dir.path(), "add.yaml", &first);
    let log = dir.path().join("run.log");
    let mut child = start(&file, true, admin, Some(&log));
    let post = |addr: SocketAddr, id: i64| {
        common::post(addr, "/", &[], format!(r#"{{"id":{id},"score":{}}}"#, id * 10).as_bytes()).map_or(0, |r| r.0)
    };
    for id in 0..50 {
        assert_eq!(post(http, id), 200);
    }
    let grown = first.replace(
        "sinks:\n",
        &format!(
            "  other: {{type: http_server, address: \"{http2}\", schema: {{id: int, score: int}}, buffer: {{type: disk, path: \"{}\"}}}}\ntransforms:\n  doubled: {{inputs: [ingest], sql: \"SELECT id, score * 2 AS score2 FROM ingest\"}}\nsinks:\n  d: {{type: file, inputs: [doubled], path: \"{}\", flush_interval: 100ms}}\n  e: {{type: file, inputs: [other], path: \"{}\", flush_interval: 100ms}}\n",
            path("other-buffer"),
            path("d.jsonl"),
            path("e.jsonl")
        ),
    );
    std::fs::write(&file, grown).unwrap();
    wait_for("generation 2 in /health", || health(admin)["config"]["generation"] == 2);
    let components = health(admin)["components"].clone();
    for id in ["ingest", "other", "doubled", "a", "d", "e"] {
        assert!(components.get(id).is_some(), "/health lists {id}: {components}");
    }
    wait_for("the added source to listen", || post(http2, 1000) == 200);
    let (_, metrics) = common::get(admin, "/metrics").unwrap();
    assert!(metrics.contains("tributary_component_disk_buffer_bytes{component=\"other\""), "{metrics}");
    assert!(std::fs::read_dir(path("other-buffer")).unwrap().count() > 1, "the added source stores in its buffer folder");
    for id in 50..100 {
        assert_eq!(post(http, id), 200);
        assert_eq!(post(http2, 1000 + id), 200);
    }
    common::sigterm(&child);
    assert!(child.wait().unwrap().success(), "clean stop");
    let rows = |name: &str| -> Vec<serde_json::Value> {
        std::fs::read_to_string(path(name)).unwrap_or_default().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    let ids = |rows: &[serde_json::Value]| rows.iter().map(|r| r["id"].as_i64().unwrap()).collect::<Vec<_>>();
    assert_eq!(ids(&rows("a.jsonl")), (0..100).collect::<Vec<_>>(), "the untouched sink got every row");
    let d = rows("d.jsonl");
    assert_eq!(ids(&d), (50..100).collect::<Vec<_>>(), "the added transform sees rows from the reload on");
    assert!(d.iter().all(|r| r["score2"].as_i64() == Some(r["id"].as_i64().unwrap() * 20)), "{d:?}");
    let e = ids(&rows("e.jsonl"));
    assert_eq!(e, std::iter::once(1000).chain(1050..1100).collect::<Vec<_>>(), "the added source's rows");
    // The run's summary counts the added components too.
    let log = std::fs::read_to_string(&log).unwrap();
    for line in [
        "other (http_server source): 51 rows out",
        "doubled (sql transform): 50 rows in, 50 rows out",
        "d (file sink): 50 rows in, 50 written",
    ] {
        assert!(log.contains(line), "summary line `{line}` in:\n{log}");
    }
}

/// `delivery: exactly_once`: a reload that changes a window's SQL hands its open windows' rows to
/// the new version. Each (minute, badge) row is written once, whole, never as a partial flush; an
/// at-least-once reload emits the open minute as partial and counts the rest again in a second
/// row for the same minute.
#[test]
fn an_exactly_once_window_hands_its_open_windows_to_the_reloaded_version() {
    let dir = tempfile::tempdir().unwrap();
    let (http, admin) = (common::free_addr(), common::free_addr());
    let table = format!("reload_window_{}", std::process::id());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(common::pg());
    let forget = format!("DROP TABLE IF EXISTS \"{table}\"; DELETE FROM tributary_positions WHERE target = 'public.{table}'");
    rt.block_on(db.batch_execute(&forget)).ok();
    let pipeline = |counted: &str| {
        format!(
            r#"delivery: exactly_once
admin: {{address: "{admin}"}}
sources:
  ingest:
    type: http_server
    address: "{http}"
    schema: {{id: int, badge: string, ts: timestamp}}
    buffer: {{type: disk, path: "{buffer}"}}
transforms:
  per_badge:
    inputs: [ingest]
    window: {{tumbling: 1m, allowed_lateness: 1m}}
    sql: SELECT window_start, badge, count({counted}) AS n FROM ingest GROUP BY window_start, badge
sinks:
  counts: {{type: timescale, inputs: [per_badge], connection: "{url}", table: {table}, time_column: window_start, batch: {{max_age: 200ms}}}}
"#,
            buffer = dir.path().join("buffer").display(),
            url = tributary_testkit::test_postgres_url(),
        )
    };
    let file = common::write(dir.path(), "reload.yaml", &pipeline("*"));
    let log = dir.path().join("run.log");
    let mut child = start(&file, false, admin, Some(&log));
    // 10 ms of event time per id: a minute every 6,000 events, so the reload lands mid-minute.
    fn event(id: i64) -> String {
        let ts = std::time::UNIX_EPOCH + Duration::from_millis(1_796_032_800_000 + id as u64 * 10);
        format!(r#"{{"id":{id},"badge":"b{}","ts":"{}"}}"#, id % 3, humantime::format_rfc3339_millis(ts))
    }
    let load = Load::start(4, http, event);
    load.wait_for_more(8000);
    std::fs::write(&file, pipeline("id")).unwrap();
    common::sighup(&child);
    wait_for("generation 2 in /health", || health(admin)["config"]["generation"] == 2);
    load.wait_for_more(4000);
    let sent = load.finish();
    let refused: Vec<_> = sent.iter().filter(|(_, s)| s.status != 200).map(|(id, s)| (*id, s.status)).collect();
    assert!(refused.is_empty(), "every POST accepted: {refused:?}");
    // An event three minutes on closes every minute the load reached.
    let last = *sent.keys().next_back().unwrap();
    assert_eq!(common::post(http, "/", &[], event(last + 18_000).as_bytes()).unwrap().0, 200);
    let minute = |id: i64| id * 10 / 60_000;
    let mut expected: BTreeMap<(i64, String), i64> = BTreeMap::new();
    for id in sent.keys() {
        *expected.entry((minute(*id), format!("b{}", id % 3))).or_default() += 1;
    }
    let query = format!("SELECT window_start, badge, n, partial FROM \"{table}\" ORDER BY window_start, badge");
    let read = || -> Vec<(i64, String, i64, bool)> {
        let rows = rt.block_on(db.query(&query, &[])).unwrap_or_default();
        rows.iter()
            .map(|r| {
                let start: std::time::SystemTime = r.get(0);
                let ms = start.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64 - 1_796_032_800_000;
                (ms / 60_000, r.get(1), r.get(2), r.get(3))
            })
            .collect()
    };
    wait_for("every accepted event counted", || read().iter().map(|r| r.2).sum::<i64>() >= sent.len() as i64);
    common::sigterm(&child);
    assert!(child.wait().unwrap().success(), "clean stop");
    let rows = read();
    let partial: Vec<_> = rows.iter().filter(|r| r.3).collect();
    assert!(partial.is_empty(), "no window was flushed as partial by the reload: {partial:?}");
    let counted: BTreeMap<(i64, String), i64> = rows.iter().map(|r| ((r.0, r.1.clone()), r.2)).collect();
    assert_eq!(counted.len(), rows.len(), "a (minute, badge) row written twice: {rows:?}");
    assert_eq!(counted, expected, "every minute counted once, whole, across the reload");
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("reloaded, exactly once: the open windows' rows went into the new version's windows"), "{log}");
    rt.block_on(db.batch_execute(&forget)).ok();
}
