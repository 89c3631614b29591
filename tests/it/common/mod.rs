//! Helpers shared by the end-to-end tests.
#![allow(dead_code)]

pub mod figures;
pub mod lake;
pub mod scale_out;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};

use std::time::Duration;

use redis::AsyncCommands;

use datafusion::arrow::util::pretty::pretty_format_batches;
use tokio_util::sync::CancellationToken;
use tributary::runtime::{RunOptions, RunReport};

/// A localhost address with a port nobody listens on right now.
pub fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// Write `text` to `dir/name` and return the path.
pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Run SQL over the Parquet tables under `data` and render the result as a table.
pub async fn query(data: &Path, sql: &str) -> String {
    let tables = tributary::query::discover_tables(&tributary_parquet::store::ObjectLocation::local(data).unwrap(), &[]).await.unwrap();
    let batches = tributary::query::run_query(sql, &tables).await.unwrap();
    pretty_format_batches(&batches).unwrap().to_string()
}

/// The one integer a `SELECT count(*) …` over the Parquet tables under `data` answers.
pub async fn query_count(data: &Path, sql: &str) -> i64 {
    use datafusion::arrow::array::AsArray;
    let tables = tributary::query::discover_tables(&tributary_parquet::store::ObjectLocation::local(data).unwrap(), &[]).await.unwrap();
    let batches = tributary::query::run_query(sql, &tables).await.unwrap();
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 1, "{sql}");
    let batch = batches.iter().find(|b| b.num_rows() == 1).unwrap();
    batch.column(0).as_primitive::<datafusion::arrow::datatypes::Int64Type>().value(0)
}

/// Every file under `dir` whose name ends with `suffix`.
pub fn files_ending(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.to_string_lossy().ends_with(suffix) {
                out.push(p);
            }
        }
    }
    out
}

/// The `tributary` binary built for these tests.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_tributary")
}

/// `tributary run <path>` as a child process (warnings to the test's stderr), to kill or SIGTERM.
pub fn run_bin(path: &Path) -> std::process::Child {
    std::process::Command::new(bin())
        .args(["run", path.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap()
}

/// `tributary run` with extra arguments, its stderr appended to `log`.
pub fn run_logged(pipeline: &Path, extra: &[&str], log: &Path) -> std::process::Child {
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

/// A minimal blocking HTTP/1.1 POST, so tests need no HTTP client crate: returns (status, body).
pub fn post(addr: SocketAddr, path: &str, headers: &[(&str, &str)], body: &[u8]) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    let mut req = format!("POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    // A server may answer (413) before reading a large body; ignore a reset while sending it.
    let _ = s.write_all(body);
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let text = String::from_utf8_lossy(&resp).into_owned();
    let status =
        text.split(' ').nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| std::io::Error::other(format!("no HTTP status in {text:?}")))?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}

/// A blocking HTTP GET returning (status, body).
pub fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    // HTTP/1.0: the body comes whole, never chunked.
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let text = String::from_utf8_lossy(&resp).into_owned();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((status, text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()))
}

/// The value of one Prometheus sample line, e.g. `metric(&text, "tributary_component_errors_total", "ingest")`.
pub fn metric(text: &str, name: &str, component: &str) -> Option<f64> {
    let prefix = format!("{name}{{component=\"{component}\",");
    text.lines().find(|l| l.starts_with(&prefix)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok())
}

/// Wait until something accepts connections on `addr`.
pub async fn wait_for_port(addr: SocketAddr) {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("nothing listens on {addr}");
}

/// Start the pipeline file in the background; cancel the token to stop it.
pub fn spawn_pipeline(path: &Path) -> (tokio::task::JoinHandle<RunReport>, CancellationToken) {
    let shutdown = CancellationToken::new();
    let (p, s) = (path.to_path_buf(), shutdown.clone());
    let handle = tokio::spawn(async move { tributary::run_file(&p, None, s, RunOptions::default()).await.expect("pipeline starts") });
    (handle, shutdown)
}

/// Ask a child process to stop the way an init system would.
pub fn sigterm(child: &std::process::Child) {
    let status = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success(), "kill -TERM {}", child.id());
}

pub fn sighup(child: &std::process::Child) {
    let status = std::process::Command::new("kill").args(["-HUP", &child.id().to_string()]).status().unwrap();
    assert!(status.success(), "kill -HUP {}", child.id());
}

/// A client of the test PostgreSQL (`TRIBUTARY_TEST_POSTGRES`, default local `test` database).
pub async fn pg() -> tokio_postgres::Client {
    let (db, conn) = tokio_postgres::connect(&tributary_testkit::test_postgres_url(), tokio_postgres::NoTls)
        .await
        .expect("PostgreSQL must be running (./scripts/test starts it; see docs/testing.md)");
    tokio::spawn(conn);
    db
}

/// Every panel of the TimescaleDB dashboard `dashboards/<file>` run on `db` with the macros and
/// `vars` expanded: each panel's title and the rows of its (one) query. A panel on another
/// datasource, a query that fails or one that answers nothing fails the test.
pub async fn sql_dashboard_panels(
    db: &tokio_postgres::Client,
    file: &str,
    (from_s, to_s): (i64, i64),
    vars: &[(&str, Vec<String>)],
) -> Vec<(String, Vec<tokio_postgres::Row>)> {
    let path = format!("{}/dashboards/{file}", env!("CARGO_MANIFEST_DIR"));
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut answers = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        let title = panel["title"].as_str().unwrap().to_string();
        assert_eq!(panel["datasource"]["uid"], "timescaledb", "{title}");
        let [target] = panel["targets"].as_array().unwrap().as_slice() else { panic!("{title}: one query per panel") };
        let sql = expand_grafana_sql(target["rawSql"].as_str().unwrap(), from_s, to_s, 10, vars);
        let rows = db.query(&sql, &[]).await.unwrap_or_else(|e| panic!("panel `{title}`: {e}\n{sql}"));
        assert!(!rows.is_empty(), "panel `{title}` returned no rows\n{sql}");
        answers.push((title, rows));
    }
    answers
}

/// The first variable query of the TimescaleDB dashboard `dashboards/<file>`, expanded and run.
pub async fn sql_dashboard_variable(db: &tokio_postgres::Client, file: &str, (from_s, to_s): (i64, i64)) -> Vec<String> {
    let path = format!("{}/dashboards/{file}", env!("CARGO_MANIFEST_DIR"));
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let sql = expand_grafana_sql(dashboard["templating"]["list"][0]["query"].as_str().unwrap(), from_s, to_s, 10, &[]);
    db.query(&sql, &[]).await.unwrap().iter().map(|r| r.get(0)).collect()
}

/// A Grafana PostgreSQL panel query with its macros and variables filled in, as Grafana would
/// send it for the range `from_s..to_s` (unix seconds) and a `$__interval` of `interval_s`.
/// Variables are multi-value lists (`${v:sqlstring}` / `$v` → `'a','b'`).
pub fn expand_grafana_sql(sql: &str, from_s: i64, to_s: i64, interval_s: i64, vars: &[(&str, Vec<String>)]) -> String {
    let ts = |s: i64| chrono::DateTime::from_timestamp(s, 0).unwrap().format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let mut q = sql.replace("$__interval", &format!("{interval_s}s"));
    // Macros with arguments: $__name(arg, …).
    while let Some(start) = q.find("$__") {
        let open = start + q[start..].find('(').unwrap_or_else(|| panic!("macro without arguments in {q}"));
        let close = open + q[open..].find(')').unwrap();
        let name = &q[start + 3..open];
        let args: Vec<&str> = q[open + 1..close].split(',').map(str::trim).collect();
        let seconds = |a: &str| humantime::parse_duration(a).unwrap_or_else(|e| panic!("interval {a}: {e}")).as_secs();
        let expanded = match name {
            "timeFilter" => format!("{} BETWEEN '{}' AND '{}'", args[0], ts(from_s), ts(to_s)),
            "timeFrom" => format!("'{}'", ts(from_s)),
            "timeTo" => format!("'{}'", ts(to_s)),
            "timeGroup" => format!("to_timestamp(floor(extract(epoch from {})/{n})*{n})", args[0], n = seconds(args[1])),
            "timeGroupAlias" => format!("to_timestamp(floor(extract(epoch from {})/{n})*{n}) AS \"time\"", args[0], n = seconds(args[1])),
            "unixEpochFilter" => format!("{c} >= {from_s} AND {c} <= {to_s}", c = args[0]),
            other => panic!("macro $__{other} is not expanded by this test helper"),
        };
        q.replace_range(start..close + 1, &expanded);
    }
    for (name, values) in vars {
        let list = values.iter().map(|v| format!("'{}'", v.replace('\'', "''"))).collect::<Vec<_>>().join(",");
        q = q.replace(&format!("${{{name}:sqlstring}}"), &list).replace(&format!("${{{name}}}"), &list).replace(&format!("${name}"), &list);
    }
    assert!(!q.contains('$'), "unexpanded macro or variable in {q}");
    q
}

/// A TCP proxy to `target` on `port` that can be cut (listener and every forwarded connection
/// closed, like a lost network) and restored, and can lose the answers to PostgreSQL COMMITs.
pub struct CuttableProxy {
    pub port: u16,
    target: String,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    forwarded: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    /// COMMITs whose answers are still to be lost.
    lose_commits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl CuttableProxy {
    pub fn new(port: u16, target: String) -> Self {
        CuttableProxy { port, target, tasks: Vec::new(), forwarded: Default::default(), lose_commits: Default::default() }
    }

    /// An open proxy to the test PostgreSQL and the connection string that goes through it.
    pub async fn to_test_postgres() -> (CuttableProxy, String) {
        let port = tributary_testkit::free_port();
        let (target, via_proxy) = tributary_testkit::test_postgres_via(port);
        let mut proxy = CuttableProxy::new(port, target);
        proxy.open().await;
        (proxy, via_proxy)
    }

    pub async fn open(&mut self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port)).await.unwrap();
        let (target, forwarded, lose_commits) = (self.target.clone(), self.forwarded.clone(), self.lose_commits.clone());
        self.tasks.push(tokio::spawn(async move {
            loop {
                let (client, _) = listener.accept().await.unwrap();
                let (target, lose_commits) = (target.clone(), lose_commits.clone());
                forwarded.lock().unwrap().push(tokio::spawn(async move {
                    if let Ok(server) = tokio::net::TcpStream::connect(&target).await {
                        forward_losing_commit_answers(client, server, lose_commits).await;
                    }
                }));
            }
        }));
    }

    pub fn cut(&mut self) {
        self.tasks.drain(..).for_each(|t| t.abort());
        self.forwarded.lock().unwrap().drain(..).for_each(|t| t.abort());
    }

    /// The next `n` COMMITs reach the server, which commits, and then their connection is closed
    /// before the answer reaches the client: it cannot know whether its transaction committed.
    /// The client must not use TLS (`sslmode=disable`): the proxy reads the COMMITs.
    pub fn lose_commit_answers(&self, n: usize) {
        self.lose_commits.store(n, std::sync::atomic::Ordering::SeqCst);
    }

    /// COMMITs whose answers are still to be lost.
    pub fn commit_answers_to_lose(&self) -> usize {
        self.lose_commits.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Both directions; once a chunk from the client holds a simple-protocol `COMMIT` (what
/// tokio-postgres sends) while answers are to be lost, it is forwarded, the server is given a
/// moment to commit, and the connection is closed with the answer unsent.
async fn forward_losing_commit_answers(
    client: tokio::net::TcpStream,
    server: tokio::net::TcpStream,
    lose_commits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut client_rx, mut client_tx) = client.into_split();
    let (mut server_rx, mut server_tx) = server.into_split();
    let silenced = std::sync::Arc::new(AtomicBool::new(false));
    let answers = {
        let silenced = silenced.clone();
        async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match server_rx.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if silenced.load(Ordering::SeqCst) || client_tx.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    };
    let requests = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match client_rx.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let chunk = &buf[..n];
            let commit = chunk.windows(7).any(|w| w == b"COMMIT\0");
            let lose = commit && lose_commits.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
            if lose {
                silenced.store(true, Ordering::SeqCst);
            }
            if server_tx.write_all(chunk).await.is_err() {
                return;
            }
            if lose {
                tokio::time::sleep(Duration::from_millis(100)).await;
                return;
            }
        }
    };
    // Whichever ends first closes both halves (dropped with the other future).
    tokio::select! {
        () = answers => {}
        () = requests => {}
    }
}

/// XADDs one high-score entry per number in `range` (user `u-<n>`, score `<n>`). A Redis that was
/// just restarted answers `LOADING` until it is ready: such an entry is sent again.
pub async fn xadd_scores(conn: &mut redis::aio::MultiplexedConnection, stream: &str, range: std::ops::RangeInclusive<u32>) {
    for i in range {
        let payload = format!(r#"{{"user_uuid":"u-{i}","mac_address":"aa","event":"high-score","high_scores":[["BO",{i},10]]}}"#);
        let mut attempts = 0;
        loop {
            let sent: redis::RedisResult<String> =
                conn.xadd(stream, "*", &[("channel", "high-score-processor"), ("payload", payload.as_str())]).await;
            match sent {
                Ok(_) => break,
                Err(e) if e.kind() == redis::ErrorKind::BusyLoadingError && attempts < 100 => {
                    attempts += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(e) => panic!("XADD to {stream}: {e}"),
            }
        }
    }
}

/// How many entries of `stream` the consumer group `group` read and has not acknowledged.
pub async fn pending(conn: &mut redis::aio::MultiplexedConnection, stream: &str, group: &str) -> i64 {
    let summary: redis::Value = redis::cmd("XPENDING").arg(stream).arg(group).query_async(conn).await.unwrap();
    match summary {
        redis::Value::Array(v) => redis::from_redis_value(&v[0]).unwrap(),
        other => panic!("XPENDING: {other:?}"),
    }
}

/// `count(*)` of `table`, 0 while it does not exist.
/// id → how many rows of `table` carry it (empty while the table does not exist).
pub async fn ids_in_table(db: &tokio_postgres::Client, table: &str) -> std::collections::BTreeMap<i64, i64> {
    let rows = db.query(&format!("SELECT id, count(*) FROM \"{table}\" GROUP BY id"), &[]).await.unwrap_or_default();
    rows.iter().map(|r| (r.get(0), r.get(1))).collect()
}

/// The ids of `0..total` missing from `ids`, and how many rows repeat one; printed under `what`.
pub fn missing_and_twice(what: &str, ids: &std::collections::BTreeMap<i64, i64>, total: i64) -> (Vec<i64>, i64) {
    let missing: Vec<i64> = (0..total).filter(|id| !ids.contains_key(id)).collect();
    let twice: i64 = ids.values().map(|n| n - 1).sum();
    eprintln!("{what}: {} ids, {} missing, {twice} written twice", ids.len(), missing.len());
    (missing, twice)
}

/// `kill -9` as `table` grows, `kills` times: each run lasts until the table holds `step` more
/// rows than at its start, and at least `min_run`; then it is killed and `start` runs the next.
/// Returns the last run, and the replayed rows the sinks had skipped, as `skipped` read them from
/// each run just before its kill.
pub async fn kill_as_table_grows(
    db: &tokio_postgres::Client,
    table: &str,
    (kills, step, min_run): (usize, i64, std::time::Duration),
    mut start: impl FnMut() -> std::process::Child,
    mut skipped: impl FnMut() -> f64,
) -> (std::process::Child, f64) {
    let mut child = start();
    let mut skipped_total = 0.0;
    for kill in 1..=kills {
        let target = pg_count(db, table).await + step;
        let t0 = std::time::Instant::now();
        while (pg_count(db, table).await < target || t0.elapsed() < min_run) && t0.elapsed() < std::time::Duration::from_secs(60) {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        skipped_total += skipped();
        child.kill().unwrap();
        child.wait().unwrap();
        eprintln!("kill {kill} at {} rows in {table}", pg_count(db, table).await);
        child = start();
    }
    (child, skipped_total)
}

pub async fn pg_count(db: &tokio_postgres::Client, table: &str) -> i64 {
    match db.query_one(&format!("SELECT count(*) FROM \"{table}\""), &[]).await {
        Ok(row) => row.get(0),
        Err(_) => 0, // not created yet
    }
}

/// id → how many rows carry it, over every visible Parquet file under `path` (what DuckDB or
/// `tributary query` reads as the table: hidden and temporary files left out).
pub fn ids_in_parquet_files(path: &Path) -> std::collections::BTreeMap<i64, i64> {
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::{DataType, Int64Type};
    let mut ids = std::collections::BTreeMap::new();
    let mut folders = vec![path.to_path_buf()];
    while let Some(folder) = folders.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else { continue };
        for entry in entries.flatten() {
            let (file, name) = (entry.path(), entry.file_name().to_string_lossy().into_owned());
            if file.is_dir() {
                folders.push(file);
            } else if name.ends_with(".parquet") && !name.starts_with('.') {
                let reader =
                    datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&file).unwrap())
                        .unwrap()
                        .build()
                        .unwrap();
                for batch in reader {
                    let batch = batch.unwrap();
                    let column =
                        datafusion::arrow::compute::cast(batch.column_by_name("id").expect("an id column"), &DataType::Int64).unwrap();
                    column.as_primitive::<Int64Type>().iter().flatten().for_each(|id| *ids.entry(id).or_insert(0) += 1);
                }
            }
        }
    }
    ids
}

/// id → how many rows of the Delta table at `path` carry it, as the `deltalake` Python package
/// (a second implementation of the protocol) reads the table.
pub fn ids_in_delta(path: &Path) -> std::collections::BTreeMap<i64, i64> {
    let script = "import collections\nids = deltalake.DeltaTable(sys.argv[1]).to_pyarrow_table().column('id').to_pylist()\nfor id, n in collections.Counter(ids).items(): print(id, n)";
    tributary_testkit::read_delta_with_python(path, script)
        .lines()
        .map(|l| {
            let (id, n) = l.split_once(' ').expect("id count");
            (id.parse().expect("an id"), n.parse().expect("a count"))
        })
        .collect()
}
