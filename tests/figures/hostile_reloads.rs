//! The hostile-input and full-disk scenarios of `fault_figures` (5 to 8).

use std::time::{Duration, Instant};

use crate::common::figures::Figure;
use crate::common::*;
use crate::fault::{health, rss_mb, wait_until};

/// An `http_server` source `ingest` on `address` (body limit `max_body`) and the rest of a pipeline.
fn ingest(admin: std::net::SocketAddr, address: std::net::SocketAddr, max_body: &str, rest: &str) -> String {
    format!(
        "admin: {{address: \"{admin}\", degraded_after: 1s}}\nsources:\n  ingest:\n    type: http_server\n    address: \"{address}\"\n    accept_timeout: 300ms\n    max_body_bytes: {max_body}\n    schema: {{seq: int, site: string, ts: timestamp}}\n{rest}"
    )
}

fn rows(seqs: std::ops::Range<i64>) -> String {
    seqs.map(|n| format!("{{\"seq\":{n},\"site\":\"s{}\",\"ts\":\"2026-12-04T10:00:00Z\"}}\n", n % 3)).collect()
}

/// A running `http_server` → `file` pipeline.
struct ToFile {
    _dir: tempfile::TempDir,
    address: std::net::SocketAddr,
    out: std::path::PathBuf,
    child: std::process::Child,
}

/// Start an `http_server` (body limit `max_body`) → `file` pipeline and wait until it listens.
async fn start_to_file(max_body: &str) -> ToFile {
    let dir = tempfile::tempdir().unwrap();
    let (admin, address) = (free_addr(), free_addr());
    let out = dir.path().join("out.jsonl");
    let sink =
        format!("sinks:\n  out:\n    type: file\n    inputs: [ingest]\n    path: \"{}\"\n    flush_interval: 100ms\n", out.display());
    let pipeline = write(dir.path(), "p.yaml", &ingest(admin, address, max_body, &sink));
    let child = run_logged(&pipeline, &[], &dir.path().join("stderr.log"));
    wait_for_port(address).await;
    ToFile { _dir: dir, address, out, child }
}

/// seq → lines of the file sink holding it.
fn seqs_in(path: &std::path::Path) -> std::collections::BTreeMap<i64, i64> {
    let mut seen = std::collections::BTreeMap::new();
    for line in std::fs::read_to_string(path).unwrap_or_default().lines() {
        if let Some(seq) = serde_json::from_str::<serde_json::Value>(line).ok().and_then(|v| v["seq"].as_i64()) {
            *seen.entry(seq).or_insert(0) += 1;
        }
    }
    seen
}

/// Scenario 5: the parquet sink's folder on a disk that fills (no disk buffer in front).
pub async fn disk_full_without_buffer() -> Figure {
    let mut f =
        Figure { scenario: "sink disk full", fault: "parquet sink's 32 MB tmpfs filled for 4 s, then freed".into(), ..Default::default() };
    // Room for what the sink writes in a run (about 8 bytes a row uncompressed) besides the filler.
    let Some(disk) = tributary_testkit::Tmpfs::mount(32 << 20) else {
        f.notes.push("skipped: cannot mount a tmpfs (not root)".into());
        return f;
    };
    let dir = tempfile::tempdir().unwrap();
    let (admin, address) = (free_addr(), free_addr());
    let lake = disk.path().join("lake");
    let pipeline = write(
        dir.path(),
        "p.yaml",
        &ingest(
            admin,
            address,
            "10MiB",
            &format!(
                "sinks:\n  lake:\n    type: parquet\n    inputs: [ingest]\n    path: \"{}\"\n    max_age: 300ms\n    compression: none\n    retry: {{initial: 100ms, max: 500ms}}\n",
                lake.display()
            ),
        ),
    );
    let log = dir.path().join("stderr.log");
    let mut child = run_logged(&pipeline, &[], &log);
    wait_for_port(address).await;
    let (mut accepted, mut refused, mut seq) = (0i64, 0i64, 0i64);
    let send = |accepted: &mut i64, refused: &mut i64, seq: &mut i64| match post(address, "/", &[], rows(*seq..*seq + 200).as_bytes()) {
        Ok((200, _)) => {
            *accepted += 200;
            *seq += 200;
        }
        _ => *refused += 1,
    };
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(1) {
        send(&mut accepted, &mut refused, &mut seq);
    }
    let path = disk.path().to_path_buf();
    tokio::task::spawn_blocking(move || tributary_testkit::tmpfs::fill(&path, "filler", 0)).await.unwrap().unwrap();
    let full_at = Instant::now();
    let mut named = false;
    while full_at.elapsed() < Duration::from_secs(4) {
        send(&mut accepted, &mut refused, &mut seq);
        let (status, h) = health(admin).await;
        named |= status == 503 && h["failing"] == serde_json::json!(["lake"]);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    std::fs::remove_file(disk.path().join("filler")).unwrap();
    let free_at = Instant::now();
    while free_at.elapsed() < Duration::from_secs(2) {
        send(&mut accepted, &mut refused, &mut seq);
    }
    sigterm(&child);
    let exit = child.wait().unwrap();
    let written = query_count(disk.path(), "SELECT count(DISTINCT seq) FROM lake").await;
    let rows = query_count(disk.path(), "SELECT count(*) FROM lake").await;
    (f.sent, f.written, f.lost, f.duplicates) = (accepted, written, accepted - written, rows - written);
    f.notes.push(format!("{refused} requests refused while full; /health 503 naming lake: {named}"));
    f.check(f.lost == 0, format!("{} accepted rows missing", f.lost));
    f.check(f.duplicates == 0, format!("{} rows written twice", f.duplicates));
    f.check(refused > 0, "the full disk never pushed back on clients");
    f.check(named, "/health never named the failing sink");
    f.check(exit.success(), format!("exit {exit}"));
    f
}

/// Scenario 6: bodies nested 30,000 deep (inside a declared string column, under an unknown key,
/// at the top) between good rows.
pub async fn deep_nesting() -> Figure {
    let mut f = Figure { scenario: "deeply nested JSON", fault: "bodies nested 30,000 deep among good rows".into(), ..Default::default() };
    let ToFile { _dir, address, out, mut child } = start_to_file("10MiB").await;
    let deep = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
    let hostile = [
        format!("{{\"seq\":-1,\"site\":{}}}", deep(30_000)),
        format!("{{\"seq\":-2,\"other\":{}}}", deep(30_000)),
        deep(30_000),
        format!("[{{\"seq\":-3,\"site\":{}}}]", deep(30_000)),
    ];
    let (mut accepted, mut answers) = (0i64, Vec::new());
    for (i, body) in hostile.iter().enumerate() {
        let good = i as i64 * 5;
        for seq in good..good + 5 {
            if let Ok((200, _)) = post(address, "/", &[], rows(seq..seq + 1).as_bytes()) {
                accepted += 1;
            }
        }
        answers.push(post(address, "/", &[], body.as_bytes()).unwrap_or((0, String::new())));
    }
    let alive = child.try_wait().unwrap().is_none();
    let caught_up = wait_until(Duration::from_secs(10), async || seqs_in(&out).len() as i64 >= accepted).await;
    sigterm(&child);
    let exit = child.wait().unwrap();
    let written = seqs_in(&out);
    f.sent = accepted;
    f.written = written.len() as i64;
    f.lost = accepted - f.written;
    f.duplicates = written.values().map(|n| n - 1).sum();
    let statuses: Vec<u16> = answers.iter().map(|(s, _)| *s).collect();
    f.notes.push(format!("hostile bodies answered {statuses:?}; alive after: {alive}; first refusal: {}", answers[0].1.trim()));
    f.check(alive && exit.success(), format!("the process died or stopped badly: alive {alive}, exit {exit}"));
    f.check(statuses == [400; 4], format!("answers {statuses:?}"));
    f.check(answers.iter().all(|(_, b)| b.contains("JSON nested deeper than 64 levels (the limit)")), format!("answers {answers:?}"));
    f.check(caught_up && f.lost == 0 && f.duplicates == 0, format!("{} good rows lost, {} twice", f.lost, f.duplicates));
    f
}

/// Scenario 7: a running pipeline's file replaced by one whose SQL has 10,000 OR terms, then by
/// one nested 10,000 levels deep; `validate` on both.
pub async fn hostile_reloads() -> Figure {
    let mut f =
        Figure { scenario: "hostile reload", fault: "--watch, then 10,000 OR terms, then YAML 10,000 deep".into(), ..Default::default() };
    let dir = tempfile::tempdir().unwrap();
    let (admin, address) = (free_addr(), free_addr());
    let out = dir.path().join("out.jsonl");
    let with_sql = |sql: &str| {
        ingest(
            admin,
            address,
            "10MiB",
            &format!(
                "transforms:\n  kept:\n    inputs: [ingest]\n    sql: \"{sql}\"\nsinks:\n  out:\n    type: file\n    inputs: [kept]\n    path: \"{}\"\n    flush_interval: 100ms\n",
                out.display()
            ),
        )
    };
    let pipeline = write(dir.path(), "p.yaml", &with_sql("SELECT * FROM ingest WHERE seq >= 0"));
    let log = dir.path().join("stderr.log");
    let mut child = run_logged(&pipeline, &["--watch"], &log);
    wait_for_port(address).await;
    let mut accepted = 0i64;
    let mut post_rows = |range: std::ops::Range<i64>| {
        if let Ok((200, _)) = post(address, "/", &[], rows(range.clone()).as_bytes()) {
            accepted += range.end - range.start;
        }
    };
    post_rows(0..100);
    let terms: Vec<String> = (0..10_000).map(|i| format!("site = 's{i}'")).collect();
    let long_or = with_sql(&format!("SELECT * FROM ingest WHERE {}", terms.join(" OR ")));
    // Block style, 10,000 levels: compact nested sequences (`- - - …`).
    let deep_yaml = format!("{}deep:\n{}1\n", with_sql("SELECT * FROM ingest"), "- ".repeat(10_000));
    let mut refusals = Vec::new();
    for (name, text) in [("long OR", &long_or), ("deep YAML", &deep_yaml)] {
        let candidate = write(dir.path(), &format!("{}.yaml", name.replace(' ', "_")), text);
        let validated = std::process::Command::new(bin()).args(["validate", candidate.to_str().unwrap()]).output().unwrap();
        let said = String::from_utf8_lossy(&validated.stderr).into_owned() + &String::from_utf8_lossy(&validated.stdout);
        refusals.push(format!("validate {name}: exit {:?}", validated.status.code()));
        f.check(validated.status.code() == Some(1), format!("validate {name} exited {:?} (a signal is a crash): {said}", validated.status));
        let expected = if name == "long OR" { "operators" } else { "YAML nested deeper than 64 levels (the limit)" };
        f.check(said.contains(expected), format!("validate {name} said {said:?}"));
        std::fs::write(&pipeline, text).unwrap();
        let refused = wait_until(Duration::from_secs(10), async || {
            health(admin).await.1["config"]["last_reload_error"].as_str().is_some_and(|e| e.contains(expected))
        })
        .await;
        f.check(refused, format!("the reload of the {name} file was not refused naming the limit"));
        f.check(child.try_wait().unwrap().is_none(), format!("the running pipeline died reloading the {name} file"));
    }
    post_rows(100..200);
    let caught_up = wait_until(Duration::from_secs(10), async || seqs_in(&out).len() as i64 >= accepted).await;
    sigterm(&child);
    let exit = child.wait().unwrap();
    let written = seqs_in(&out);
    (f.sent, f.written) = (accepted, written.len() as i64);
    f.lost = f.sent - f.written;
    f.duplicates = written.values().map(|n| n - 1).sum();
    f.notes.push(refusals.join(", "));
    f.check(caught_up && f.lost == 0, format!("{} rows lost", f.lost));
    f.check(exit.success(), format!("exit {exit}"));
    f
}

/// Scenario 8: a 3 MB array of a million empty objects, and the same as NDJSON: resident memory
/// before, at the peak, and 8 s after (the binary hands freed memory back every 5 s).
pub async fn memory_per_body() -> Figure {
    let mut f = Figure {
        scenario: "memory per body",
        fault: "1,000,000 empty objects (3 MB) as an array, then as NDJSON".into(),
        ..Default::default()
    };
    let ToFile { _dir, address, out, mut child } = start_to_file("8MiB").await;
    let pid = child.id();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_mb(pid);
    let array = format!("[{}{{}}]", "{},".repeat(999_999));
    let ndjson = "{}\n".repeat(1_000_000);
    let mut answers = Vec::new();
    for body in [&array, &ndjson] {
        let (status, reply) = post(address, "/", &[], body.as_bytes()).unwrap_or((0, String::new()));
        answers.push((status, reply.trim().to_string()));
        if status == 200 {
            f.sent += 1_000_000;
        }
    }
    let peak = peak_mb(pid);
    let caught_up = wait_until(Duration::from_secs(60), async || line_count(&out) >= f.sent).await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    let after = rss_mb(pid);
    sigterm(&child);
    let exit = child.wait().unwrap();
    f.written = line_count(&out);
    f.lost = f.sent - f.written;
    let per_byte = (peak - before) * 1e6 / array.len() as f64;
    f.notes.push(format!(
        "answers {answers:?}; RSS {before:.0} MB before, {peak:.0} MB peak ({per_byte:.0} bytes per body byte), {after:.0} MB 8 s after"
    ));
    f.check(answers.iter().all(|(s, _)| *s == 200), format!("answers {answers:?}"));
    f.check(caught_up && f.lost == 0, format!("{} rows lost", f.lost));
    // Before: 1.37 GB for the array alone.
    f.check(peak - before < 400.0, format!("the peak grew {:.0} MB for a 3 MB body", peak - before));
    f.check(
        after - before < (peak - before) / 2.0,
        format!("{after:.0} MB 8 s after the burst: the freed memory stayed (before {before:.0}, peak {peak:.0})"),
    );
    f.check(exit.success(), format!("exit {exit}"));
    f
}

/// The highest resident memory of a process so far, in MB.
fn peak_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok()).unwrap_or(0.0) / 1024.0
}

fn line_count(path: &std::path::Path) -> i64 {
    std::fs::read(path).map(|b| memchr_count(&b)).unwrap_or(0)
}

fn memchr_count(bytes: &[u8]) -> i64 {
    bytes.iter().filter(|b| **b == b'\n').count() as i64
}
