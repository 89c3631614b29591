//! HTTP ingest → SQL → Parquet, with the source's `buffer:` in memory and on disk, side by side in
//! one run: what "200 means fsynced" costs. Two loads, as a user's clients would send them:
//! one JSON event per POST over 64 keep-alive connections, and 1,000-event NDJSON bodies over 8.
//! Prints events/s, requests/s, p50/p99 latency per request, and fsyncs/s (group commit: one
//! fsync serves every request waiting at the time).
//!
//! The pipeline runs in a child process (this binary with `--phase server`) so the clients and the
//! server do not share a runtime. `cargo bench --bench http_ingest` runs 10 s per case
//! (`HTTP_BENCH_SECONDS`); under `cargo test` a 1-second smoke pass checks that rows arrive.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

fn server(pipeline: &Path) {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    rt.spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
        term.recv().await;
        stop.cancel();
    });
    let report = rt.block_on(tributary::run_file(pipeline, None, shutdown, Default::default())).unwrap();
    assert!(report.ok(), "{report:?}");
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

fn write_pipeline(dir: &Path, buffer: &str, ingest: SocketAddr, admin: SocketAddr) -> std::path::PathBuf {
    let yaml = format!(
        r#"
admin: {{address: "{admin}"}}
sources:
  ingest:
    type: http_server
    address: "{ingest}"
    accept_timeout: 5s
    schema: {{ts: timestamp, user: string, game: string, score: int}}
    buffer: {buffer}
transforms:
  scores:
    inputs: [ingest]
    sql: SELECT ts, user, game, score FROM ingest WHERE score > 1000
sinks:
  lake:
    type: parquet
    inputs: [scores]
    path: "{out}"
"#,
        out = dir.join("out").display()
    );
    let path = dir.join("p.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

/// One keep-alive connection posting `body` until `until`; latencies in µs.
async fn client(addr: SocketAddr, body: Arc<Vec<u8>>, until: Instant) -> (u64, Vec<u32>) {
    let stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let head = format!("POST / HTTP/1.1\r\nHost: bench\r\nContent-Type: application/x-ndjson\r\nContent-Length: {}\r\n\r\n", body.len());
    let mut request = head.into_bytes();
    request.extend_from_slice(&body);
    let (mut ok, mut latencies) = (0u64, Vec::new());
    let mut buf = Vec::with_capacity(512);
    while Instant::now() < until {
        let t0 = Instant::now();
        w.write_all(&request).await.unwrap();
        // Status line and headers, then the Content-Length body.
        buf.clear();
        loop {
            let b = r.read_u8().await.unwrap();
            buf.push(b);
            if buf.ends_with(b"\r\n\r\n") {
                break;
            }
        }
        let text = String::from_utf8_lossy(&buf).to_ascii_lowercase();
        let len: usize = text.lines().find_map(|l| l.strip_prefix("content-length: ")).and_then(|v| v.trim().parse().ok()).unwrap_or(0);
        let mut answer = vec![0u8; len];
        r.read_exact(&mut answer).await.unwrap();
        if text.starts_with("http/1.1 200") {
            ok += 1;
            latencies.push(t0.elapsed().as_micros() as u32);
        }
    }
    (ok, latencies)
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l.contains("component=\"ingest\""))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

async fn admin_metrics(admin: SocketAddr) -> String {
    let mut s = TcpStream::connect(admin).await.unwrap();
    s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {admin}\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

struct Case {
    events_per_request: usize,
    connections: usize,
}

struct Outcome {
    events_per_s: f64,
    requests_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    fsyncs_per_s: f64,
}

fn run_case(case: &Case, buffer: &str, seconds: u64) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    let (ingest, admin) = (free_addr(), free_addr());
    let buffer = buffer.replace("PATH", &dir.path().join("buffer").display().to_string());
    let pipeline = write_pipeline(dir.path(), &buffer, ingest, admin);
    let mut child: Child = Command::new(std::env::current_exe().unwrap()).args(["--phase", "server"]).arg(&pipeline).spawn().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let outcome = rt.block_on(async {
        for _ in 0..400 {
            if TcpStream::connect(ingest).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let body: String = (0..case.events_per_request)
            .map(|i| {
                format!(
                    "{{\"ts\":\"2026-11-29T10:00:00Z\",\"user\":\"u{}\",\"game\":\"Breakout\",\"score\":{}}}\n",
                    i % 97,
                    500 + (i * 37) % 1500
                )
            })
            .collect();
        let body = Arc::new(body.into_bytes());
        let before = admin_metrics(admin).await;
        let t0 = Instant::now();
        let until = t0 + Duration::from_secs(seconds);
        let clients: Vec<_> = (0..case.connections).map(|_| tokio::spawn(client(ingest, body.clone(), until))).collect();
        let (mut ok, mut latencies) = (0u64, Vec::new());
        for c in clients {
            let (n, l) = c.await.unwrap();
            ok += n;
            latencies.extend(l);
        }
        let elapsed = t0.elapsed().as_secs_f64();
        let after = admin_metrics(admin).await;
        latencies.sort_unstable();
        let pct = |p: f64| {
            latencies.get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1))).copied().unwrap_or(0) as f64
                / 1000.0
        };
        let fsyncs = metric(&after, "tributary_component_buffer_fsyncs_total") - metric(&before, "tributary_component_buffer_fsyncs_total");
        Outcome {
            events_per_s: (ok as usize * case.events_per_request) as f64 / elapsed,
            requests_per_s: ok as f64 / elapsed,
            p50_ms: pct(0.50),
            p99_ms: pct(0.99),
            fsyncs_per_s: fsyncs / elapsed,
        }
    });
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "the server stopped with {status}");
    assert!(outcome.requests_per_s > 0.0, "no request was answered 200");
    outcome
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--phase") {
        server(Path::new(&args[i + 2]));
        return;
    }
    let benching = args.iter().any(|a| a == "--bench");
    let seconds = if benching { std::env::var("HTTP_BENCH_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(10) } else { 1 };
    let cases = [Case { events_per_request: 1, connections: 64 }, Case { events_per_request: 1000, connections: 8 }];
    println!("HTTP → SQL → Parquet, {seconds} s per case");
    for case in &cases {
        let memory = run_case(case, "{type: memory}", seconds);
        let disk = run_case(case, "{type: disk, max_size: 1GiB, path: \"PATH\"}", seconds);
        println!("  {} event(s) per POST, {} connections:", case.events_per_request, case.connections);
        for (name, o) in [("memory", &memory), ("disk  ", &disk)] {
            println!(
                "    {name}: {:>10.0} events/s {:>8.0} requests/s   p50 {:>6.2} ms   p99 {:>6.2} ms   {:>6.0} fsyncs/s",
                o.events_per_s, o.requests_per_s, o.p50_ms, o.p99_ms, o.fsyncs_per_s
            );
        }
        println!("    disk buffer at {:.0}% of memory-buffered throughput", disk.events_per_s / memory.events_per_s * 100.0);
    }
}
