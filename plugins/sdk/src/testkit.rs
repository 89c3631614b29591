//! Running a source or sink in a plugin's own tests, without the engine.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{ComponentMetrics, DeadLetters, Delivery, Output, SinkContext, SourceContext};

/// What a source under test sends, and the handles to stop and observe it.
pub struct SourceHarness {
    /// Batches per declared output name (`""` = main) and the dead letters.
    pub outputs: HashMap<String, mpsc::Receiver<Delivery>>,
    pub dead_letters: mpsc::Receiver<Delivery>,
    pub shutdown: CancellationToken,
    pub metrics: Arc<ComponentMetrics>,
}

/// A context for source `id` whose outputs (`output_names`) and dead letters feed the harness.
pub fn source_context(id: &str, output_names: &[&str], capacity: usize) -> (SourceContext, SourceHarness) {
    let metrics = Arc::new(ComponentMetrics::default());
    let mut outputs = HashMap::new();
    let mut receivers = HashMap::new();
    for name in output_names {
        let (tx, rx) = mpsc::channel(capacity);
        outputs.insert(name.to_string(), Output::new(vec![(tx, 0)], metrics.clone(), true));
        receivers.insert(name.to_string(), rx);
    }
    let (dl_tx, dl_rx) = mpsc::channel(capacity);
    let dead = DeadLetters::new(id, Output::new(vec![(dl_tx, 0)], metrics.clone(), false), metrics.clone());
    let shutdown = CancellationToken::new();
    let ctx = SourceContext::new(id.to_string(), outputs, dead, shutdown.clone(), metrics.clone());
    (ctx, SourceHarness { outputs: receivers, dead_letters: dl_rx, shutdown, metrics })
}

/// A context for sink `id` whose dead letters feed the returned receiver.
pub fn sink_context(id: &str) -> (SinkContext, mpsc::Receiver<Delivery>) {
    let metrics = Arc::new(ComponentMetrics::default());
    let (tx, rx) = mpsc::channel(64);
    let dead = DeadLetters::new(id, Output::new(vec![(tx, 0)], metrics.clone(), false), metrics.clone());
    (SinkContext { id: id.to_string(), dead_letters: dead, metrics }, rx)
}

/// The PostgreSQL the tests and benchmarks use: `TRIBUTARY_TEST_POSTGRES`, default the machine's
/// pre-started server (`host=127.0.0.1 user=postgres dbname=test`).
pub fn test_postgres_url() -> String {
    std::env::var("TRIBUTARY_TEST_POSTGRES").unwrap_or_else(|_| "host=127.0.0.1 user=postgres dbname=test".into())
}

/// A localhost port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A localhost UDP port nobody uses right now, below Linux's ephemeral range (32768+): a port
/// taken from that range could be handed to another socket's `bind(0)` before srt-live-transmit
/// binds it.
pub fn free_udp_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let seed = (std::process::id() as u64 * 7919
        + std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos() as u64)
        % 12_000;
    let _ = NEXT.compare_exchange(
        0,
        20_000 + seed as u16,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    loop {
        let port = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = if port >= 32_000 {
            NEXT.store(20_001, Ordering::Relaxed);
            20_000
        } else {
            port
        };
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// `rotel-agent`, the OpenTelemetry collector in PyPI's `rotel` wheel, used as a real OTLP
/// receiver: `ROTEL_AGENT`, or found through python3. Missing is a failure, not a skip (.ci/run
/// installs it).
pub fn rotel_agent() -> String {
    if let Ok(path) = std::env::var("ROTEL_AGENT") {
        return path;
    }
    let out = std::process::Command::new("python3")
        .args(["-c", "import rotel, os; print(os.path.join(os.path.dirname(rotel.__file__), 'rotel-agent'))"])
        .output()
        .expect("python3 runs");
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(out.status.success() && std::path::Path::new(&path).exists(), "rotel-agent not found: `pip install rotel` (or set ROTEL_AGENT)");
    path
}

/// A running rotel-agent (started on free ports) printing every metric it receives; its stdout
/// lines are collected for assertions.
pub struct RotelReceiver {
    _child: tokio::process::Child,
    pub grpc: u16,
    pub http: u16,
    lines: Arc<std::sync::Mutex<Vec<String>>>,
}

impl RotelReceiver {
    /// Starts a receiver on two free ports. Under a loaded test run the agent may take seconds
    /// to listen, or lose a port to another test between `free_port` and its bind (it exits):
    /// then it is started again on new ports.
    pub async fn start() -> RotelReceiver {
        for _ in 0..3 {
            if let Some(receiver) = Self::try_start().await {
                return receiver;
            }
        }
        panic!("rotel-agent did not start listening after 3 tries (30 s each)");
    }

    async fn try_start() -> Option<RotelReceiver> {
        use tokio::io::AsyncBufReadExt;
        let (grpc, http) = (free_port(), free_port());
        let mut child = tokio::process::Command::new(rotel_agent())
            .args([
                "start",
                "--otlp-grpc-endpoint",
                &format!("127.0.0.1:{grpc}"),
                "--otlp-http-endpoint",
                &format!("127.0.0.1:{http}"),
            ])
            .args([
                "--exporter",
                "blackhole",
                "--debug-log",
                "metrics",
                "--debug-log-verbosity",
                "detailed",
            ])
            .env("NO_COLOR", "1")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("rotel-agent starts");
        let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut reader = tokio::io::BufReader::new(child.stdout.take().expect("piped")).lines();
        let sink = lines.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = reader.next_line().await {
                sink.lock().unwrap().push(line);
            }
        });
        for _ in 0..600 {
            if tokio::net::TcpStream::connect(("127.0.0.1", http)).await.is_ok()
                && tokio::net::TcpStream::connect(("127.0.0.1", grpc)).await.is_ok()
            {
                return Some(RotelReceiver { _child: child, grpc, http, lines });
            }
            if let Ok(Some(status)) = child.try_wait() {
                eprintln!("rotel-agent on {http}/{grpc} exited ({status}) before listening; retrying on new ports");
                return None;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        eprintln!("rotel-agent did not listen on {http}/{grpc} within 30 s");
        None
    }

    /// How many lines were printed so far.
    pub fn mark(&self) -> usize {
        self.lines.lock().unwrap().len()
    }

    /// The debug output after line `from`, once it mentions `marker` (it logs asynchronously);
    /// colour codes and trailing spaces removed.
    pub async fn output_with(&self, marker: &str, from: usize) -> String {
        let text = || strip_ansi(&self.lines.lock().unwrap()[from..].join("\n"));
        for _ in 0..200 {
            if text().contains(marker) {
                // Let the rest of the same request's dump arrive.
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                return text();
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!(
            "rotel never printed {marker}; output:\n{}",
            self.lines.lock().unwrap().join("\n")
        );
    }
}

/// Text without ANSI colour sequences (`ESC [ … m`) and trailing spaces.
fn strip_ansi(s: &str) -> String {
    let mut plain = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' && chars.peek() == Some(&'[') {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
        .lines()
        .map(str::trim_end)
        .collect::<Vec<_>>()
        .join("\n")
}
