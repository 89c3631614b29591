//! The `tributary` binary as a user runs it: validate, graph, query, run with the quickstart, and a
//! SIGTERM in the middle of HTTP ingest.

use crate::common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

fn tributary(args: &[&str], cwd: &Path) -> Output {
    Command::new(bin()).args(args).current_dir(cwd).env("TRIBUTARY_LOG", "warn").output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Validate a pipeline text; returns (exit success, stderr).
fn validate(text: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "p.yaml", text);
    let o = tributary(&["validate", "p.yaml"], dir.path());
    (o.status.success(), stderr(&o))
}

const DEMO: &str = "sources:\n  probes:\n    type: demo\n    kind: probes\n";

#[test]
fn validate_accepts_every_shipped_pipeline() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for entry in std::fs::read_dir(root.join("pipelines")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let o = tributary(&["validate", path.to_str().unwrap()], root);
        assert!(o.status.success(), "{}: {}", path.display(), stderr(&o));
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(out.contains(": valid ("), "{out}");
    }
}

#[test]
fn validate_reports_an_unknown_key_with_position_and_valid_keys() {
    let (ok, err) = validate(&format!("{DEMO}    rat: 5\n"));
    assert!(!ok);
    assert_eq!(
        err.trim(),
        "p.yaml:5:5: sources.probes.rat: unknown field `rat`, expected one of `kind`, `rate`, `batch_size`, `count`, `seed`"
    );
}

#[test]
fn validate_reports_a_wrong_type() {
    let (ok, err) = validate(&format!("{DEMO}    rate: [1, 2]\n"));
    assert!(!ok);
    assert_eq!(err.trim(), "p.yaml:5:5: sources.probes.rate: invalid type: sequence, expected f64");
}

#[test]
fn validate_reports_a_missing_required_field() {
    let (ok, err) = validate("sources:\n  probes:\n    type: demo\n    rate: 5\n");
    assert!(!ok);
    assert_eq!(err.trim(), "p.yaml:2:3: sources.probes: missing field `kind`");
}

/// Zero periods used to pass `validate` and panic at run time ("`period` must be non-zero").
#[test]
fn validate_refuses_zero_periods_naming_each() {
    let (ok, err) = validate(&format!(
        "{DEMO}sinks:\n  out:\n    type: file\n    inputs: [probes]\n    path: out.jsonl\n    flush_interval: 0s\n  lake:\n    type: parquet\n    inputs: [probes]\n    path: lake\n    max_age: 0ms\n"
    ));
    assert!(!ok);
    assert_eq!(
        err.trim(),
        "p.yaml:10:5: sinks.out.flush_interval: must be longer than 0s\np.yaml:15:5: sinks.lake.max_age: must be longer than 0s"
    );
}

#[test]
fn validate_reports_an_input_that_does_not_exist() {
    let (ok, err) = validate(&format!("{DEMO}sinks:\n  out:\n    type: console\n    inputs: [probes, prbes]\n"));
    assert!(!ok);
    assert_eq!(err.trim(), "p.yaml:8:22: sinks.out.inputs[1]: unknown input `prbes`, expected one of `probes` (or `<id>.dead_letter`)");
}

#[test]
fn validate_reports_a_cycle() {
    let (ok, err) = validate(&format!(
        "{DEMO}transforms:\n  a:\n    inputs: [probes, c]\n    sql: SELECT 1 AS x\n  b:\n    inputs: [a]\n    sql: SELECT 1 AS x\n  c:\n    inputs: [b]\n    sql: SELECT 1 AS x\n"
    ));
    assert!(!ok);
    assert_eq!(err.trim(), "p.yaml:10:5: transforms.b.inputs: cycle in the pipeline graph: a → b → c → a (a component may not consume its own output, directly or indirectly)");
}

#[test]
fn validate_reports_sql_that_does_not_plan_with_the_column_name() {
    let (ok, err) = validate(&format!("{DEMO}transforms:\n  slow:\n    inputs: [probes]\n    sql: SELECT site, latency FROM probes\n"));
    assert!(!ok);
    assert!(err.starts_with("p.yaml:8:5: transforms.slow.sql: SQL does not plan: Schema error: No field named latency."), "{err}");
    assert!(err.contains("probes.response_time_ms"), "lists valid fields: {err}");
}

#[test]
fn validate_reports_invalid_yaml_and_never_prints_secrets() {
    let (ok, err) = validate("sources:\n  probes: {type: demo\n");
    assert!(!ok);
    assert!(err.starts_with("p.yaml:3:1: invalid YAML: "), "{err}");

    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "p.yaml", "sources:\n  probes:\n    type: demo\n    kind: probes\n    rate: ${DEMO_SECRET}\n");
    let o = Command::new(bin())
        .args(["validate", "p.yaml"])
        .current_dir(dir.path())
        .env("DEMO_SECRET", "hunter2-correct-horse")
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = stderr(&o);
    assert_eq!(err.trim(), "p.yaml:5:5: sources.probes.rate: invalid type: string \"***\", expected f64");
}

#[test]
fn run_checks_the_pipeline_before_starting_anything() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "p.yaml", &format!("{DEMO}sinks:\n  lake: {{type: parquet, inputs: [probes], path: data/x, max_rows: lots}}\n"));
    let o = tributary(&["run", "p.yaml", "--duration", "1s"], dir.path());
    assert!(!o.status.success());
    assert_eq!(stderr(&o).trim(), "p.yaml:6:57: sinks.lake.max_rows: invalid type: string \"lots\", expected usize");
    assert!(!dir.path().join("data").exists(), "nothing ran");
}

#[test]
fn graph_prints_mermaid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let o = tributary(&["graph", "pipelines/quickstart.yaml"], root);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.starts_with("flowchart LR\n  probes([\"probes<br/><small>demo</small>\"])\n"), "{out}");
    for edge in ["  probes --> sla_breaches\n", "  sla_breaches --> breaches_parquet\n", "  badges --> high_scores\n"] {
        assert!(out.contains(edge), "missing {edge:?} in {out}");
    }
}

#[test]
fn quickstart_runs_flushes_and_is_queryable() {
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let pipeline = root.join("pipelines/quickstart.yaml");
    let o = Command::new(bin())
        .args(["run", pipeline.to_str().unwrap(), "--duration", "3s"])
        .current_dir(dir.path())
        .env("TRIBUTARY_ADMIN", "127.0.0.1:0")
        .output()
        .unwrap();
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("stopped cleanly"), "{err}");
    assert!(err.contains("running for 3s, until 20"), "--duration says when it stops: {err}");
    assert!(err.contains("probes (demo source): "), "per-component summary: {err}");
    // A sink's line reports the rows it wrote: every probe row the Parquet sink received is in
    // its files.
    let line = err.lines().find(|l| l.contains("probes_parquet (parquet sink): ")).unwrap_or_else(|| panic!("{err}"));
    let written = line.split("probes_parquet (parquet sink): ").nth(1).unwrap();
    let rows_in: u64 = written.split(" rows in, ").next().unwrap().parse().unwrap();
    assert!(rows_in > 20, "{line}");
    assert!(written.starts_with(&format!("{rows_in} rows in, {rows_in} written, 0 errors, 0 dead letters")), "{line}");
    assert!(String::from_utf8_lossy(&o.stdout).contains("[breaches_summary] +"), "console summary printed");
    assert!(files_ending(dir.path(), ".tmp").is_empty());

    let q = tributary(&["query", "SELECT count(*) AS rows, count(DISTINCT site) AS sites FROM probes", "--format", "csv"], dir.path());
    assert!(q.status.success(), "{}", stderr(&q));
    assert_eq!(String::from_utf8_lossy(&q.stdout), format!("rows,sites\n{rows_in},5\n"));
    let q = tributary(&["query", "SELECT count(*) AS n FROM high_scores WHERE points_per_second IS NULL", "--format", "json"], dir.path());
    assert_eq!(String::from_utf8_lossy(&q.stdout), "{\"n\":0}\n");
    let q = tributary(&["query", "SELECT nope FROM probes"], dir.path());
    assert!(!q.status.success());
    assert!(stderr(&q).contains("nope"), "{}", stderr(&q));
}

/// A Delta table (`format: delta`) written by a run, read by `tributary query` as its log says:
/// a Parquet file in its folder that no commit added (what a crash between upload and commit
/// leaves) is not part of the table.
#[test]
fn query_reads_a_delta_table_as_its_log_holds_it() {
    let dir = tempfile::tempdir().unwrap();
    let lines: String = (1..=40).map(|n| format!("{{\"ts\":\"2026-12-0{}T10:00:00Z\",\"n\":{n}}}\n", 1 + n % 3)).collect();
    write(dir.path(), "in.jsonl", &lines);
    write(
        dir.path(),
        "p.yaml",
        "sources:\n  scores: {type: file, path: in.jsonl, schema: {ts: timestamp, n: int}}\nsinks:\n  lake: {type: parquet, format: delta, inputs: [scores], path: data/scores}\n",
    );
    let o = tributary(&["run", "p.yaml"], dir.path());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(dir.path().join("data/scores/_delta_log/00000000000000000001.json").exists(), "one commit after the table's creation");
    let committed = files_ending(&dir.path().join("data/scores"), ".parquet");
    assert_eq!(committed.len(), 3, "one file per date: {committed:?}");
    // An uploaded file no commit took: not in the table.
    std::fs::copy(&committed[0], dir.path().join("data/scores/date=2026-12-02/part-orphan.parquet")).unwrap();

    let q = tributary(&["query", "SELECT count(*) AS rows, sum(n) AS total FROM scores", "--format", "csv"], dir.path());
    assert!(q.status.success(), "{}", stderr(&q));
    assert_eq!(String::from_utf8_lossy(&q.stdout), "rows,total\n40,820\n");
}

/// SIGTERM while clients post: every request answered 200 is in the Parquet output, nothing else
/// is, the process exits 0, and no temporary file is left.
#[test]
fn sigterm_during_http_ingest_loses_nothing_that_was_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let admin = free_addr();
    write(
        dir.path(),
        "p.yaml",
        &format!(
            "admin: {{address: \"{admin}\"}}\nsources:\n  ingest:\n    type: http_server\n    address: \"{addr}\"\n    schema: {{ts: timestamp, req: int, i: int}}\ntransforms:\n  rows:\n    inputs: [ingest]\n    sql: SELECT ts, req, i FROM ingest\nsinks:\n  lake: {{type: parquet, inputs: [rows], path: data/rows, max_rows: 500, max_age: 1h}}\n"
        ),
    );
    let mut child =
        Command::new(bin()).args(["run", "p.yaml"]).current_dir(dir.path()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    for _ in 0..400 {
        if std::net::TcpStream::connect(addr).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }

    let accepted = Arc::new(Mutex::new(BTreeSet::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let (accepted, stop) = (accepted.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut req = c * 1_000_000;
                while !stop.load(Ordering::SeqCst) {
                    req += 1;
                    let body: String = (0..10).map(|i| format!("{{\"req\":{req},\"i\":{i}}}\n")).collect();
                    match post(addr, "/", &[], body.as_bytes()) {
                        Ok((200, _)) => {
                            accepted.lock().unwrap().insert(req);
                        }
                        Ok(_) => {}
                        Err(_) => break, // the listener is gone
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    let before = accepted.lock().unwrap().len();
    assert!(before > 20, "clients got going ({before} requests accepted)");
    common::sigterm(&child);
    let status = child.wait().unwrap();
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(status.success(), "exit {status:?}: {err}");

    let accepted: BTreeSet<i64> = accepted.lock().unwrap().iter().copied().collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let root = tributary_parquet::store::ObjectLocation::local(&dir.path().join("data")).unwrap();
    let tables = rt.block_on(tributary::query::discover_tables(&root, &[])).unwrap();
    let batches = rt.block_on(tributary::query::run_query("SELECT req, count(*) AS n FROM rows GROUP BY req", &tables)).unwrap();
    let mut written = BTreeSet::new();
    for b in &batches {
        let req = b.column(0).as_any().downcast_ref::<datafusion::arrow::array::Int64Array>().unwrap();
        let n = b.column(1).as_any().downcast_ref::<datafusion::arrow::array::Int64Array>().unwrap();
        for i in 0..b.num_rows() {
            assert_eq!(n.value(i), 10, "request {} written whole, once", req.value(i));
            written.insert(req.value(i));
        }
    }
    let missing: Vec<_> = accepted.difference(&written).collect();
    let unexpected: Vec<_> = written.difference(&accepted).collect();
    assert!(missing.is_empty(), "{} accepted requests missing, e.g. {:?}", missing.len(), &missing[..missing.len().min(5)]);
    assert!(unexpected.is_empty(), "rows from requests that were not answered 200: {unexpected:?}");
    assert!(files_ending(dir.path(), ".tmp").is_empty());
}

/// Dead letters of an unwired `<id>.dead_letter` output are stored, not only logged: one JSON
/// line per letter under `dead_letters.path`, as many as `/metrics` and the summary count, and
/// `tributary query` reads them as the table `dead_letters`.
#[test]
fn unwired_dead_letters_are_stored_and_queryable() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("in.jsonl"),
        "{\"user\":\"a\",\"score\":1}\n{not json\n{\"user\":\"b\",\"score\":\"high\"}\n{\"user\":\"c\",\"score\":3}\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("p.yaml"),
        "admin: {enabled: false}\nsources:\n  events:\n    type: file\n    path: in.jsonl\n    schema: {user: string, score: int}\nsinks:\n  out: {type: file, inputs: [events], path: out.jsonl}\n",
    )
    .unwrap();
    let o = Command::new(bin()).args(["run", "p.yaml"]).current_dir(dir.path()).env("TRIBUTARY_LOG", "info").output().unwrap();
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("events (file source): 2 rows out, 2 errors, 2 dead letters"), "{err}");
    assert!(err.contains("dead letters stored in ./data/dead_letters/events.jsonl"), "{err}");
    let stored = std::fs::read_to_string(dir.path().join("data/dead_letters/events.jsonl")).unwrap();
    assert_eq!(stored.lines().count(), 2, "{stored}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("out.jsonl")).unwrap(),
        "{\"user\":\"a\",\"score\":1}\n{\"user\":\"c\",\"score\":3}\n"
    );

    let q = tributary(&["query", "SELECT component, payload FROM dead_letters ORDER BY payload", "--format", "csv"], dir.path());
    assert!(q.status.success(), "{}", stderr(&q));
    assert_eq!(
        String::from_utf8_lossy(&q.stdout),
        "component,payload\nevents,\"{\"\"user\"\":\"\"b\"\",\"\"score\"\":\"\"high\"\"}\"\nevents,{not json\n"
    );
    let q = tributary(&["query", "SELECT count(*) AS n FROM dead_letters WHERE reason LIKE 'in.jsonl:%'", "--format", "csv"], dir.path());
    assert_eq!(String::from_utf8_lossy(&q.stdout), "n\n2\n", "{}", stderr(&q));
}

/// Credentials in a URL and secret values from the environment never reach a log line, even when
/// a library's error text carries them.
#[test]
fn log_lines_never_show_url_credentials_or_secret_values() {
    let dir = tempfile::tempdir().unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port(); // freed below: nothing listens
    std::fs::write(
        dir.path().join("p.yaml"),
        format!(
            "admin: {{enabled: false}}\nsources:\n  probes: {{type: demo, kind: probes, rate: 20, count: 5}}\nsinks:\n  metrics:\n    type: influx\n    inputs: [probes]\n    url: http://admin:${{INFLUX_PASSWORD}}@127.0.0.1:{closed}\n    bucket: b\n    token: ${{INFLUX_TOKEN}}\n    measurement: probes\n    batch: {{max_age: 100ms}}\n    timeout: 1s\n    retry: {{initial: 100ms, max: 200ms, max_elapsed: 2s}}\n"
        ),
    )
    .unwrap();
    let o = Command::new(bin())
        .args(["run", "p.yaml", "--duration", "4s"])
        .current_dir(dir.path())
        .env("TRIBUTARY_LOG", "info")
        .env("INFLUX_PASSWORD", "pw-hunter2-xyz")
        .env("INFLUX_TOKEN", "tok-secret-9876")
        .output()
        .unwrap();
    let err = stderr(&o);
    assert!(err.contains(&format!("http://***@127.0.0.1:{closed}")), "the URL is shown without credentials: {err}");
    assert!(!err.contains("pw-hunter2-xyz") && !err.contains("tok-secret-9876") && !err.contains("admin:"), "{err}");
    // The rows the sink gave up on are dead letters, whose reasons carry no credentials either.
    let letters = std::fs::read_to_string(dir.path().join("data/dead_letters/metrics.jsonl")).unwrap();
    assert_eq!(letters.lines().count(), 5, "{letters}");
    assert!(!letters.contains("pw-hunter2-xyz") && letters.contains("http://***@127.0.0.1"), "{letters}");
}

#[test]
fn serve_on_a_taken_address_fails_at_once_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let o = tributary(&["serve", "--data", ".", "--address", &addr], dir.path());
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains(&format!("cannot serve on {addr}: ")) && err.contains("(pick another with --address)"), "{err}");
}

/// Valid, but VictoriaMetrics would answer 200 and drop every delta histogram: `validate` passes
/// and says so.
#[test]
fn validate_warns_of_delta_points_to_a_cumulative_only_receiver() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "p.yaml",
        &format!("{DEMO}sinks:\n  vm:\n    type: otlp\n    inputs: [probes]\n    endpoint: http://127.0.0.1:8428/opentelemetry/api/v1/push\n    aggregation_temporality: delta\n    metrics: [{{name: probe_ttfb, kind: histogram, value: ttfb_ms}}]\n"),
    );
    let o = tributary(&["validate", "p.yaml"], dir.path());
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stderr(&o),
        "warning: p.yaml: sinks.vm: aggregation_temporality: delta sends delta sums and histograms (probe_ttfb), which VictoriaMetrics (up to v1.131; its `vm_protoparser_rows_dropped_total` counts them) answers with success and drops; use `cumulative`\n"
    );
}

/// A query that runs long shows the rows its scans read (here at once: `TRIBUTARY_PROGRESS_AFTER=0s`),
/// as plain lines on stderr when there is no terminal; the answer alone is on stdout.
#[test]
fn a_long_query_reports_the_rows_it_read_on_stderr() {
    let dir = tempfile::tempdir().unwrap();
    common::lake::write_fixture(&dir.path().join("data"));
    let o = Command::new(bin())
        .args(["query", "SELECT site, sum(ms) AS total FROM latency GROUP BY site ORDER BY site", "--format", "csv"])
        .current_dir(dir.path())
        .env("TRIBUTARY_PROGRESS_AFTER", "0s")
        .env("TRIBUTARY_PROGRESS_EVERY", "0s")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "site,total\na,290.0\nb,52.0\n");
    let err = stderr(&o);
    let last = err.lines().rfind(|l| l.starts_with("query: ")).unwrap_or_else(|| panic!("no progress: {err}"));
    assert!(last.starts_with(&format!("query: {} rows read in ", common::lake::LATENCY.len())), "{err}");
}
