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
