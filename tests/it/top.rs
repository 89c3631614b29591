//! `tributary top` against a running pipeline: piped, it prints plain tables with the exact
//! counts; in a terminal (tmux), it redraws one screen in place.

use crate::common;

use std::process::Command;
use std::time::Duration;

use common::*;

/// The pipeline's process, stopped when the test ends (passed or not).
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A pipeline with an HTTP source and a file sink that has written 50 posted rows.
async fn pipeline_with_50_rows(dir: &std::path::Path) -> (std::net::SocketAddr, Running) {
    let (addr, admin) = (free_addr(), free_addr());
    let pipeline = write(
        dir,
        "p.yaml",
        &format!(
            "admin: {{address: \"{admin}\"}}\nsources:\n  ingest:\n    type: http_server\n    address: \"{addr}\"\n    path: /ingest\n    schema: {{user: string, score: int}}\nsinks:\n  out: {{type: file, inputs: [ingest], path: \"{}\", flush_interval: 50ms}}\n",
            dir.join("out.jsonl").display()
        ),
    );
    let child = Running(run_bin(&pipeline));
    wait_for_port(addr).await;
    wait_for_port(admin).await;
    let body: String = (0..50).map(|i| format!("{{\"user\":\"u{i}\",\"score\":{i}}}\n")).collect();
    let (status, answer) = tokio::task::spawn_blocking(move || post(addr, "/ingest", &[], body.as_bytes()).unwrap()).await.unwrap();
    assert_eq!((status, answer.as_str()), (200, r#"{"accepted":50}"#));
    for _ in 0..200 {
        let (_, text) = tokio::task::spawn_blocking(move || get(admin, "/metrics").unwrap()).await.unwrap();
        if metric(&text, "tributary_component_rows_written_total", "out") == Some(50.0) {
            return (admin, child);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the sink did not write the 50 rows");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn piped_top_prints_plain_tables_with_each_components_counts() {
    let dir = tempfile::tempdir().unwrap();
    let (admin, child) = pipeline_with_50_rows(dir.path()).await;
    let out = Command::new(bin()).args(["top", "--admin", &admin.to_string(), "--count", "2", "--interval", "300ms"]).output().unwrap();
    drop(child);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(!text.contains('\x1b'), "no terminal codes when piped: {text:?}");
    let frames: Vec<&str> = text.split("tributary top  ").skip(1).collect();
    assert_eq!(frames.len(), 2, "{text}");
    let last: Vec<Vec<&str>> = frames[1].lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(last[0], [admin.to_string().as_str(), "health:", "ok", "components:", "2"]);
    assert_eq!(
        last[2],
        [
            "COMPONENT",
            "KIND",
            "TYPE",
            "IN",
            "IN/s",
            "OUT",
            "OUT/s",
            "ERRORS",
            "DEAD",
            "RETRIES",
            "BUFFER",
            "LAG",
            "LAST",
            "WRITE",
            "LATENCY"
        ]
    );
    // The README shows the same columns.
    let readme = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let shown = readme.lines().find(|l| l.starts_with("COMPONENT ")).expect("the README shows `top`");
    assert_eq!(shown.split_whitespace().collect::<Vec<_>>(), last[2], "README.md's `top` example");
    assert_eq!(last[3], ["ingest", "source", "http_server", "-", "-", "50", "0.0", "0", "0", "0", "-", "-", "-", "-"]);
    // The sink: 50 in, 50 written, nothing pending, a last write some seconds ago and its latency.
    assert_eq!(last[4][..12], ["out", "sink", "file", "50", "0.0", "50", "0.0", "0", "0", "0", "0%", "0"]);
    assert!(last[4][12].ends_with('s') && last[4][13] == "ago" && last[4][14].ends_with("ms"), "{:?}", last[4]);
    // The first table has no rates yet.
    let first: Vec<&str> = frames[0].lines().find(|l| l.starts_with("out ")).unwrap().split_whitespace().collect();
    assert_eq!(first[..7], ["out", "sink", "file", "50", "-", "50", "-"], "{}", frames[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_in_a_terminal_redraws_one_screen() {
    let dir = tempfile::tempdir().unwrap();
    let (admin, child) = pipeline_with_50_rows(dir.path()).await;
    let socket = format!("tributary-top-{}", std::process::id());
    let tmux = |args: &[&str]| Command::new("tmux").args(["-L", &socket]).args(args).output().expect("tmux (apt-get install tmux)");
    let started = tmux(&["new-session", "-d", "-s", "top", "-x", "150", "-y", "20", &format!("{} top --admin {admin}", bin())]);
    assert!(started.status.success(), "{}", String::from_utf8_lossy(&started.stderr));
    let mut screen = String::new();
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        screen = String::from_utf8_lossy(&tmux(&["capture-pane", "-p", "-t", "top"]).stdout).into_owned();
        // Rates show from the second reading on.
        let ingest = screen.lines().find(|l| l.starts_with("ingest ")).map(|l| l.split_whitespace().nth(6) == Some("0.0"));
        if ingest == Some(true) {
            break;
        }
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let later = String::from_utf8_lossy(&tmux(&["capture-pane", "-p", "-t", "top"]).stdout).into_owned();
    let _ = tmux(&["kill-server"]);
    drop(child);
    for s in [&screen, &later] {
        let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
        // One table on the screen, at its top: redrawn in place, not scrolled.
        assert!(lines[0].starts_with(&format!("tributary top  {admin}  health: ok")), "{s}");
        assert_eq!(s.matches("COMPONENT").count(), 1, "{s}");
        let row = |id: &str| {
            lines
                .iter()
                .find(|l| l.starts_with(id))
                .map(|l| l.split_whitespace().collect::<Vec<_>>())
                .unwrap_or_else(|| panic!("no {id} in {s}"))
        };
        assert_eq!(row("ingest")[..8], ["ingest", "source", "http_server", "-", "-", "50", "0.0", "0"], "{s}");
        assert_eq!(row("out")[..12], ["out", "sink", "file", "50", "0.0", "50", "0.0", "0", "0", "0", "0%", "0"], "{s}");
    }
}
