//! What tests need and production code must not ship: running a source or sink in a plugin's
//! own tests without the engine, and the real servers the tests talk to (each checked before a
//! test relies on it). A dev-dependency only.

pub mod certs;
pub mod own_server;
pub mod s3;
pub mod test_site;
pub mod tmpfs;
pub use certs::{write_test_certificates, TestCertificates};
pub use own_server::OwnServer;
pub use test_site::TestSite;
pub use tmpfs::Tmpfs;

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use tributary_sdk::{ComponentMetrics, DeadLetters, Delivery, Output, SinkContext, SourceContext};

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

/// A context for sink `id`. (Sinks send no dead letters: what they reject comes back from
/// `write` and `flush`.)
pub fn sink_context(id: &str) -> SinkContext {
    SinkContext { id: id.to_string(), metrics: Arc::new(ComponentMetrics::default()) }
}

/// Flushes until the sink succeeds, as the engine would (with a fixed 50 ms wait instead of its
/// backoff); each retry is counted in `ctx.metrics.retries`. Panics after `max_attempts`.
pub async fn flush_retrying(sink: &mut dyn tributary_sdk::Sink, ctx: &SinkContext, max_attempts: u32) -> Vec<tributary_sdk::DeadLetter> {
    for _ in 1..max_attempts {
        match sink.flush(ctx).await {
            Ok(rejected) => return rejected,
            Err(_) => {
                ctx.metrics.retries.inc();
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
    sink.flush(ctx).await.unwrap_or_else(|e| panic!("still failing after {max_attempts} flushes: {e}"))
}

/// Writes `batch` the way the engine does, without its retries: `write`, then `flush` when the
/// sink says its buffer is full. Returns the rows refused for good; a transient failure is `Err`.
pub async fn write_like_the_engine(
    sink: &mut dyn tributary_sdk::Sink,
    batch: tributary_sdk::arrow::record_batch::RecordBatch,
    ctx: &SinkContext,
) -> Result<Vec<tributary_sdk::DeadLetter>, tributary_sdk::Transient> {
    let written = sink.write(batch, ctx).await?;
    let mut rejected = written.rejected;
    if written.durability == tributary_sdk::Durability::BufferFull {
        rejected.extend(sink.flush(ctx).await?);
    }
    Ok(rejected)
}

// The servers the tests use. Each accessor checks that its server answers before a test relies on
// it, so a missing one fails the test at once with the server's name and the command that starts
// it: never a hang, never a bare "connection refused" deep inside a plugin. `./scripts/test`
// starts all of them.

/// A server a test needs: its name, the variable that points elsewhere, its default address, and
/// how to start it by hand.
struct NeededServer {
    name: &'static str,
    variable: &'static str,
    default: &'static str,
    start: &'static str,
}

const POSTGRES: NeededServer = NeededServer {
    name: "PostgreSQL",
    variable: "TRIBUTARY_TEST_POSTGRES",
    default: "host=127.0.0.1 user=postgres dbname=test",
    start: "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
};
const REDIS: NeededServer = NeededServer {
    name: "Redis",
    variable: "TRIBUTARY_TEST_REDIS",
    default: "redis://127.0.0.1:6379",
    start: "redis-server --port 6379 --bind 127.0.0.1 --save '' --daemonize yes",
};
const VICTORIA_METRICS: NeededServer = NeededServer {
    name: "VictoriaMetrics",
    variable: "TRIBUTARY_TEST_VICTORIAMETRICS",
    default: "http://127.0.0.1:8428",
    start: "victoria-metrics -storageDataPath=/tmp/tributary-vm -httpListenAddr=127.0.0.1:8428 &",
};
const DOCKER_API: NeededServer = NeededServer {
    name: "a Docker Engine API",
    variable: "DOCKER_HOST",
    default: "unix:///tmp/podman.sock",
    start: "podman system service --time=0 unix:///tmp/podman.sock &",
};

const NATS: NeededServer = NeededServer {
    name: "NATS with JetStream",
    variable: "TRIBUTARY_TEST_NATS",
    default: "nats://127.0.0.1:4222",
    start: "nats-server -js -a 127.0.0.1 -p 4222 -sd /tmp/tributary-nats &",
};

const MQTT: NeededServer = NeededServer {
    name: "Mosquitto (MQTT)",
    variable: "TRIBUTARY_TEST_MQTT",
    default: "mqtt://127.0.0.1:1883",
    start: "mosquitto -p 1883 -d",
};

const AMQP: NeededServer = NeededServer {
    name: "RabbitMQ (AMQP)",
    variable: "TRIBUTARY_TEST_AMQP",
    default: "amqp://127.0.0.1:5672/%2f",
    start: "rabbitmq-server -detached",
};

impl NeededServer {
    /// The configured address, checked: panics with [`NeededServer::unreachable`]'s text.
    fn checked(&self) -> String {
        let value = std::env::var(self.variable).unwrap_or_else(|_| self.default.to_string());
        if let Err(problem) = self.check(&value) {
            panic!("{problem}");
        }
        value
    }

    fn check(&self, value: &str) -> Result<(), String> {
        let timeout = std::time::Duration::from_secs(2);
        let (shown, result) = match server_endpoint(value) {
            Endpoint::Unix(path) => (path.clone(), std::os::unix::net::UnixStream::connect(&path).map(drop)),
            Endpoint::Tcp(host, port) => {
                let shown = format!("{host}:{port}");
                let result = std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port)).and_then(|mut addrs| {
                    let addr = addrs.next().ok_or_else(|| std::io::Error::other("no address"))?;
                    std::net::TcpStream::connect_timeout(&addr, timeout).map(drop)
                });
                (shown, result)
            }
        };
        result.map_err(|e| self.unreachable(&shown, &e))
    }

    /// The failure text: which server, where it was looked for (never the whole value: it may
    /// hold a password), why, and how to start it.
    fn unreachable(&self, shown: &str, error: &std::io::Error) -> String {
        format!(
            "{} is not reachable at {shown} ({error}); this test needs it. `./scripts/test` starts it, \
             or by hand: {} (point {} elsewhere to use another)",
            self.name, self.start, self.variable
        )
    }
}

#[derive(Debug, PartialEq)]
enum Endpoint {
    Tcp(String, u16),
    Unix(String),
}

/// Where a connection string points: libpq key-values (`host=… port=…`), `unix:///path`, or a URL
/// (`scheme://[user[:password]@]host[:port][/…]`, default ports by scheme).
fn server_endpoint(value: &str) -> Endpoint {
    if let Some(path) = value.strip_prefix("unix://") {
        return Endpoint::Unix(path.to_string());
    }
    if let Some((scheme, rest)) = value.split_once("://") {
        let authority = rest.split(['/', '?']).next().unwrap_or("");
        let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
        let default_port = match scheme {
            "postgres" | "postgresql" => 5432,
            "redis" => 6379,
            "nats" => 4222,
            "mqtt" => 1883,
            "amqp" => 5672,
            "https" => 443,
            _ => 80,
        };
        return match host_port.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(':') => {
                Endpoint::Tcp(host.trim_matches(['[', ']']).to_string(), port.parse().unwrap_or(default_port))
            }
            _ => Endpoint::Tcp(host_port.to_string(), default_port),
        };
    }
    let field =
        |key: &str| value.split_whitespace().find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')).map(str::to_string));
    let host = field("host").unwrap_or_else(|| "localhost".into());
    let port = field("port").and_then(|p| p.parse().ok()).unwrap_or(5432);
    if host.starts_with('/') {
        Endpoint::Unix(format!("{host}/.s.PGSQL.{port}"))
    } else {
        Endpoint::Tcp(host, port)
    }
}

/// The PostgreSQL the tests and benchmarks use: `TRIBUTARY_TEST_POSTGRES`, default the machine's
/// pre-started server (`host=127.0.0.1 user=postgres dbname=test`). Panics naming the server and
/// how to start it when nothing answers there.
pub fn test_postgres_url() -> String {
    POSTGRES.checked()
}

/// The test PostgreSQL's `host:port`, and a connection string to the same database and user
/// through `127.0.0.1:port` (where a test puts a proxy it can cut).
pub fn test_postgres_via(port: u16) -> (String, String) {
    postgres_via(&test_postgres_url(), port)
}

fn postgres_via(url: &str, port: u16) -> (String, String) {
    let target = match server_endpoint(url) {
        Endpoint::Tcp(host, p) => format!("{host}:{p}"),
        Endpoint::Unix(path) => panic!("a proxied test needs PostgreSQL over TCP, not the socket {path}"),
    };
    let via = if let Some((scheme, rest)) = url.split_once("://") {
        let (authority, path) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
        let user = authority.rsplit_once('@').map(|(u, _)| format!("{u}@")).unwrap_or_default();
        format!("{scheme}://{user}127.0.0.1:{port}{path}")
    } else {
        let kept: Vec<&str> = url.split_whitespace().filter(|kv| !kv.starts_with("host=") && !kv.starts_with("port=")).collect();
        format!("host=127.0.0.1 port={port} {}", kept.join(" "))
    };
    (target, via)
}

/// The Redis the tests use: `TRIBUTARY_TEST_REDIS`, default `redis://127.0.0.1:6379`; checked.
pub fn test_redis_url() -> String {
    REDIS.checked()
}

/// The VictoriaMetrics the tests and benchmarks use: `TRIBUTARY_TEST_VICTORIAMETRICS`, default
/// `http://127.0.0.1:8428`; checked.
pub fn test_victoriametrics_url() -> String {
    VICTORIA_METRICS.checked()
}

/// The NATS server (with JetStream) the tests use: `TRIBUTARY_TEST_NATS`, default
/// `nats://127.0.0.1:4222`; checked.
pub fn test_nats_url() -> String {
    NATS.checked()
}

/// The MQTT broker the tests use: `TRIBUTARY_TEST_MQTT`, default `mqtt://127.0.0.1:1883`; checked.
pub fn test_mqtt_url() -> String {
    MQTT.checked()
}

/// The RabbitMQ the tests use (user guest): `TRIBUTARY_TEST_AMQP`, default
/// `amqp://127.0.0.1:5672/%2f`; checked.
pub fn test_amqp_url() -> String {
    AMQP.checked()
}

/// The Docker Engine API the tests use: `DOCKER_HOST`, default Podman's `unix:///tmp/podman.sock`;
/// checked.
pub fn test_docker_host() -> String {
    DOCKER_API.checked()
}

/// The srt-live-transmit the tests run: `SRT_LIVE_TRANSMIT`, default the one on `PATH`. Panics
/// naming the package when it is missing.
pub fn srt_live_transmit() -> String {
    let program = std::env::var("SRT_LIVE_TRANSMIT").unwrap_or_else(|_| "srt-live-transmit".into());
    let found = if program.contains('/') {
        std::path::Path::new(&program).exists()
    } else {
        std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(&program).exists()))
    };
    assert!(
        found,
        "srt-live-transmit ({program}) is not installed; this test needs it. `./scripts/test` installs it, \
         or by hand: apt-get install srt-tools (point SRT_LIVE_TRANSMIT elsewhere to use another)"
    );
    program
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
        + std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos() as u64)
        % 12_000;
    let _ = NEXT.compare_exchange(0, 20_000 + seed as u16, Ordering::Relaxed, Ordering::Relaxed);
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

/// Runs `script` (Python, with `sys` and `deltalake` imported and the table's path in
/// `sys.argv[1]`) against the Delta table at `path` with the `deltalake` package, delta-rs's
/// Python binding: a second implementation of the protocol. Returns what it printed.
///
/// The script ends with `os._exit(0)` once its output is flushed: the package sometimes aborts at
/// interpreter shutdown ("terminate called without an active exception", delta-io/delta-rs#2184,
/// seen in CI here) after printing the right answer, and that teardown is not what is tested.
pub fn read_delta_with_python(path: &std::path::Path, script: &str) -> String {
    let script = format!("import os, sys, deltalake\n{script}\nsys.stdout.flush()\nos._exit(0)");
    let out = std::process::Command::new("python3").arg("-c").arg(script).arg(path).output().expect("python3 runs");
    assert!(
        out.status.success(),
        "reading the Delta table {} with the deltalake package (`./scripts/test` installs it; by hand: \
         python3 -m pip install deltalake pyarrow): {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `rotel-agent`, the OpenTelemetry collector in PyPI's `rotel` wheel, used as a real OTLP
/// receiver: `ROTEL_AGENT`, or found through python3. Missing is a failure, not a skip
/// (`./scripts/test` installs it).
pub fn rotel_agent() -> String {
    if let Ok(path) = std::env::var("ROTEL_AGENT") {
        return path;
    }
    let out = std::process::Command::new("python3")
        .args(["-c", "import rotel, os; print(os.path.join(os.path.dirname(rotel.__file__), 'rotel-agent'))"])
        .output()
        .expect("python3 runs");
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success() && std::path::Path::new(&path).exists(),
        "rotel-agent (an OTLP receiver) is not installed; this test needs it. `./scripts/test` installs it, \
         or by hand: python3 -m pip install rotel (point ROTEL_AGENT elsewhere to use another)"
    );
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
            .args(["start", "--otlp-grpc-endpoint", &format!("127.0.0.1:{grpc}"), "--otlp-http-endpoint", &format!("127.0.0.1:{http}")])
            .args(["--exporter", "blackhole", "--debug-log", "metrics", "--debug-log-verbosity", "detailed"])
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
        panic!("rotel never printed {marker}; output:\n{}", self.lines.lock().unwrap().join("\n"));
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
    plain.lines().map(str::trim_end).collect::<Vec<_>>().join("\n")
}

/// This process's peak resident memory (`VmHWM`) in MiB, 0 where `/proc` does not say; benches
/// print it next to their throughput.
pub fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proxied_postgres_url_keeps_user_database_and_password() {
        assert_eq!(
            postgres_via("host=10.0.0.5 port=5433 user=postgres dbname=test password=pw", 7000),
            ("10.0.0.5:5433".to_string(), "host=127.0.0.1 port=7000 user=postgres dbname=test password=pw".to_string())
        );
        assert_eq!(
            postgres_via("postgres://u:pw@db:6000/test?sslmode=disable", 7000),
            ("db:6000".to_string(), "postgres://u:pw@127.0.0.1:7000/test?sslmode=disable".to_string())
        );
    }

    #[test]
    fn endpoints_of_the_connection_strings_tests_use() {
        let tcp = |h: &str, p| Endpoint::Tcp(h.into(), p);
        assert_eq!(server_endpoint("host=127.0.0.1 user=postgres dbname=test"), tcp("127.0.0.1", 5432));
        assert_eq!(server_endpoint("host=db port=6543 password=secret"), tcp("db", 6543));
        assert_eq!(server_endpoint("host=/run/postgresql"), Endpoint::Unix("/run/postgresql/.s.PGSQL.5432".into()));
        assert_eq!(server_endpoint("postgres://u:p@db:7000/test"), tcp("db", 7000));
        assert_eq!(server_endpoint("postgresql://u@db/test"), tcp("db", 5432));
        assert_eq!(server_endpoint("redis://127.0.0.1:6379"), tcp("127.0.0.1", 6379));
        assert_eq!(server_endpoint("redis://:pw@cache/2"), tcp("cache", 6379));
        assert_eq!(server_endpoint("http://127.0.0.1:8428/"), tcp("127.0.0.1", 8428));
        assert_eq!(server_endpoint("tcp://[::1]:2375"), tcp("::1", 2375));
        assert_eq!(server_endpoint("unix:///tmp/podman.sock"), Endpoint::Unix("/tmp/podman.sock".into()));
    }

    #[test]
    fn a_missing_server_is_named_with_how_to_start_it_and_no_password() {
        let port = free_port();
        let error = POSTGRES.check(&format!("host=127.0.0.1 port={port} password=hunter2")).unwrap_err();
        assert_eq!(
            error,
            format!(
                "PostgreSQL is not reachable at 127.0.0.1:{port} (Connection refused (os error 111)); this test \
                 needs it. `./scripts/test` starts it, or by hand: pg_ctlcluster --skip-systemctl-redirect \
                 $(ls /etc/postgresql) main start (point TRIBUTARY_TEST_POSTGRES elsewhere to use another)"
            )
        );
        let error = DOCKER_API.check("unix:///tmp/no-such-tributary.sock").unwrap_err();
        assert!(
            error.starts_with("a Docker Engine API is not reachable at /tmp/no-such-tributary.sock (No such file or directory"),
            "{error}"
        );
        // The listening side answers.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert_eq!(REDIS.check(&format!("redis://127.0.0.1:{port}")), Ok(()));
    }
}
