//! Hostile input, two ways.
//!
//! 1. **Fuzz targets** for every decoder that takes untrusted bytes: the HTTP body decoder, the
//!    SRT statistics/event line parser, the Webex response decoders, the API status monitor's
//!    Kafka messages, the badge API's messages, and the pipeline YAML loader (parse and plan).
//!    Inputs are real examples (the simulator's bodies, the shipped pipelines, recorded lines)
//!    mutated by [`mutate`] under `arbtest` (stable Rust; cargo-fuzz needs nightly). A target
//!    passes when nothing panics or overflows the stack; each prints its executions.
//! 2. **Against the built binary**: the known hostile inputs and a few hundred fuzzer-made bodies,
//!    POSTed between good rows to a running `tributary` (HTTP → window → file), and hostile YAML
//!    to `tributary validate`. Printed: inputs tried, rejected with a clear error, crashes (must
//!    be 0), good rows lost around them (must be 0).
//!
//! ```text
//! cargo test --test it hostile::                                   # 3 s per fuzz target (CI)
//! FUZZ_SECONDS=600 cargo test --test it hostile:: -- --nocapture   # 10 minutes per target
//! ```
//! A failing fuzz case prints arbtest's seed; `ARBTEST_SEED=0x… cargo test --test it hostile::NAME`
//! replays it.

use crate::common;

use std::sync::atomic::{AtomicU64, Ordering};

use arbitrary::Unstructured;
use common::*;

/// Milliseconds each fuzz target runs.
fn budget_ms() -> u64 {
    std::env::var("FUZZ_SECONDS").ok().and_then(|s| s.parse::<u64>().ok()).map_or(3_000, |s| s * 1000)
}

/// Runs `target` on mutated `seeds` for the budget; returns the executions.
fn fuzz(name: &str, seeds: &[Vec<u8>], target: impl Fn(&[u8])) -> u64 {
    let runs = AtomicU64::new(0);
    arbtest::arbtest(|u| {
        let seed = u.choose(seeds)?;
        let input = mutate(seed, seeds, u)?;
        target(&input);
        runs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    })
    .budget_ms(budget_ms())
    .run();
    let n = runs.load(Ordering::Relaxed);
    println!("fuzz {name}: {n} executions, 0 panics");
    assert!(n > 0, "{name}: the fuzzer never ran");
    n
}

/// Edits aimed at text formats: random and JSON-significant bytes, deletions, truncation, long
/// runs (deep nesting, huge tokens), extreme numbers, odd strings, and splices of other seeds.
fn mutate(seed: &[u8], seeds: &[Vec<u8>], u: &mut Unstructured) -> arbitrary::Result<Vec<u8>> {
    const NUMBERS: [&str; 9] =
        ["9223372036854775807", "-9223372036854775808", "18446744073709551616", "1e308", "-1e309", "9.3e12", "-0", "0.000001", "NaN"];
    const PIECES: [&str; 12] = ["\u{0}", "\u{ffff}", "\\ud800", "\"", "\n", "\r\n", "null", "true", "[]", "{}", ":", ","];
    let mut v = seed.to_vec();
    for _ in 0..u.int_in_range(1..=6)? {
        let at = u.choose_index(v.len() + 1)?;
        match u.int_in_range(0..=9)? {
            0 if !v.is_empty() => {
                let i = at.min(v.len() - 1);
                v[i] = u.arbitrary()?;
            }
            1 => v.insert(at, *u.choose(b"[]{}\",:\\0-9eE.\n ")?),
            2 => {
                let end = u.int_in_range(at..=v.len())?;
                v.drain(at..end);
            }
            3 => {
                let (byte, n) = (*u.choose(b"[{\"9 a\\")?, u.int_in_range(1..=20_000)?);
                v.splice(at..at, std::iter::repeat_n(byte, n));
            }
            4 => {
                v.splice(at..at, u.choose(&NUMBERS)?.bytes());
            }
            5 => v.truncate(at),
            6 => {
                v.splice(at..at, u.choose(&PIECES)?.bytes());
            }
            7 => {
                let other = u.choose(seeds)?;
                let from = u.choose_index(other.len() + 1)?;
                v.splice(at..at, other[from..].iter().copied());
            }
            8 => {
                // The depth dictionary: nesting and chains up to 40,000 deep, past every parser's
                // recursion (JSON, YAML block and flow, SQL), balanced or not.
                const NESTS: [(&str, &str); 9] = [
                    ("[", "]"),
                    ("{\"a\":", "}"),
                    ("(", ")"),
                    ("- ", ""),
                    ("a:\n ", ""),
                    ("NOT ", ""),
                    ("-", ""),
                    ("{\"s\":[", "]}"),
                    ("[{", "}]"),
                ];
                const CHAINS: [&str; 5] = [" OR x = 1", " AND y < 2", " + 1", " || 'a'", " UNION ALL SELECT 1"];
                let n = u.int_in_range(1..=40_000)?;
                if u.ratio(1, 3)? {
                    v.splice(at..at, u.choose(&CHAINS)?.repeat(n).into_bytes());
                } else {
                    let (open, close) = u.choose(&NESTS)?;
                    let nested = format!("{}{}", open.repeat(n), if u.arbitrary()? { close.repeat(n) } else { String::new() });
                    v.splice(at..at, nested.into_bytes());
                }
            }
            _ => {
                let bytes: Vec<u8> = u.arbitrary()?;
                v.splice(at..at, bytes);
            }
        }
    }
    Ok(v)
}

/// The files of `tests/corpus/<target>`: cases that once crashed or misbehaved, replayed as seeds.
fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus").join(target);
    let mut files: Vec<_> =
        std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())).flatten().map(|e| e.path()).collect();
    files.sort();
    assert!(!files.is_empty(), "no corpus in {}", dir.display());
    files.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

fn text(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(bytes)
}

const HTTP_SCHEMA: &str = "{user: string, score: int, ts: timestamp, ok: bool, ratio: float, tags: json}";

fn http_rows() -> tributary_sdk::json::JsonRows {
    tributary_sdk::json::JsonRows::new(&serde_yaml::from_str(HTTP_SCHEMA).unwrap(), Some("ts"))
}

fn http_seeds() -> Vec<Vec<u8>> {
    [
        r#"{"user":"ana","score":7,"ts":"2026-11-22T10:00:00Z","ok":true,"ratio":0.5,"tags":{"a":[1,2]}}"#,
        r#"[{"user":"bo","score":1},{"user":"cy","score":2,"tags":null}]"#,
        "{\"user\":\"d\",\"score\":3}\n{\"user\":\"e\",\"score\":4,\"ts\":1795341600000000}\n",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .chain(corpus("http"))
    .collect()
}

#[test]
fn fuzz_http_body_decoder() {
    let rows = http_rows();
    fuzz("http body", &http_seeds(), |input| {
        let _ = rows.decode_document(input);
    });
}

#[test]
fn fuzz_srt_line_parser() {
    let seeds: Vec<Vec<u8>> = [
        r#"{"sid":724722113,"timepoint":"2026-11-22T10:51:45.123456+0000","time":1042,"window":{"flow":8192,"congestion":8192,"flight":0},"link":{"rtt":0.413,"bandwidth":1220.74,"maxBandwidth":1000},"send":{"packets":0,"packetsUnique":0,"packetsLost":0,"mbitRate":0},"recv":{"packets":7380,"packetsLost":12,"bytes":9714000,"mbitRate":7.5}}"#,
        "Timepoint,Time,SocketID,pktFlowWindow,pktCongestionWindow,pktFlightSize,msRTT,mbpsBandwidth,mbpsMaxBW,pktSent,pktSndLoss\n2026-11-22T10:51:45.123456+0000,1042,724722113,8192,8192,0,0.413,1220.74,1000,0,0",
        "SRT target connected",
        "10:51:45.410554/srt-live-transm!W:SRT.ac: @720476295: processConnectRequest: rsp(REJECT): 1002 - peer rejected",
        "Media path: 'udp://127.0.0.1:15000' --> 'srt://:19000?mode=listener'",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    fuzz("srt lines", &seeds, |input| {
        for line in text(input).lines() {
            let _ = tributary_srt_stats::parse::parse_line(line);
        }
    });
}

#[test]
fn fuzz_webex_response_decoders() {
    use tributary_webex_mesh::datasets::{self, Ctx, Dataset};
    use tributary_webex_mesh::simulator::bodies::{self, TestKind};
    use tributary_webex_mesh::simulator::{Model, Shapes};
    let m = Model::new(1, "Acme");
    let (to, from) = (chrono::Utc::now(), chrono::Utc::now() - chrono::Duration::hours(2));
    let mut seeds = Vec::new();
    for shapes in [Shapes::Spec, Shapes::Legacy] {
        seeds.push(bodies::organizations(&m, shapes));
        seeds.push(bodies::clusters(&m, shapes, to));
        seeds.push(bodies::cluster_availability(&m, shapes, from, to));
        seeds.push(bodies::utilization(&m, shapes, from, to));
        seeds.push(bodies::cloud_overflow(&m, shapes, from, to));
        seeds.push(bodies::call_redirects(&m, shapes, from, to));
        seeds.push(bodies::client_types(&m, shapes, from, to, &["ALL".to_string()]));
        for kind in [TestKind::Reachability, TestKind::MediaHealth, TestKind::Network] {
            seeds.push(bodies::test_results(&m, shapes, kind, from, to, "All"));
        }
    }
    let seeds: Vec<Vec<u8>> = seeds.iter().map(|v| v.to_string().into_bytes()).collect();
    let ctx = Ctx { org_id: "ORG", poll_ts: "2026-11-22T10:00:00Z", trigger_query: "All" };
    fuzz("webex responses", &seeds, |input| {
        let Ok(body) = serde_json::from_slice::<serde_json::Value>(input) else { return };
        let _ = datasets::organizations(&body, ctx.poll_ts);
        let _ = datasets::clusters(&body, &ctx);
        for d in Dataset::all().into_iter().filter(|d| *d != Dataset::Clusters) {
            // Every row a body gives must encode: a table's types and its values agree.
            if let Ok(parsed) = datasets::rows(d, &body, &ctx) {
                if let Err(e) = datasets::to_batch(d.output(), &parsed.rows) {
                    panic!("{d:?}: rows that do not encode: {e}");
                }
            }
        }
    });
}

#[test]
fn fuzz_api_status_monitor_messages() {
    let seeds: Vec<Vec<u8>> = [
        r#"{"site": "https://aiven.io", "endpoint": "/", "status_code": 200, "log": "Freedom", "error": "", "response_time_ms": 345, "sla_ms": 1000, "in_sla": true, "timestamp": 1622106394}"#,
        r#"{"site": "https://www.jpx.co.jp", "endpoint": "/", "status_code": 0, "log": "", "error": "TIMEOUT", "response_time_ms": 2500, "sla_ms": 2500, "in_sla": true, "timestamp": 1622106395}"#,
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    fuzz("kafka api_status", &seeds, |input| {
        let (rows, letters) = tributary_kafka::decode_api_status_messages(input, -7200);
        let lines = input.split(|b| *b == b'\n').filter(|l| !l.trim_ascii().is_empty()).count();
        assert!(
            rows.num_rows() + letters.len() <= lines.max(1),
            "no message becomes two: {} rows + {} letters from {lines} lines of {:?}",
            rows.num_rows(),
            letters.len(),
            text(input)
        );
    });
}

#[test]
fn fuzz_badge_messages() {
    let seeds: Vec<Vec<u8>> = [
        "high-score-processor\n{\"user_uuid\":\"u-1\",\"mac_address\":\"aa:bb\",\"event\":\"high-score\",\"high_scores\":[[\"BO\",1200,95],{\"g\":\"TT\",\"s\":37,\"d\":30}]}",
        "achievement\n{\"handle\":\"someone\",\"name\":\"Rick Rolled\",\"description\":\"d\",\"points\":1}",
        "fact\n{\"fact\":\"Cats sleep 16 hours\",\"discord_handle\":\"x\",\"discord_user_id\":\"1\"}",
        "community-message\nsomeone has already unlocked: Hello World",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    fuzz("badge messages", &seeds, |input| {
        let t = text(input);
        let (channel, payload) = t.split_once('\n').unwrap_or(("high-score-processor", &t));
        let _ = tributary_badge_events::decode::decode(channel, payload);
    });
}

#[test]
fn fuzz_pipeline_yaml_loader() {
    let mut seeds: Vec<Vec<u8>> = Vec::new();
    for e in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines")).unwrap().flatten() {
        if e.path().extension().is_some_and(|x| x == "yaml") {
            seeds.push(std::fs::read(e.path()).unwrap());
        }
    }
    seeds.extend(corpus("yaml"));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let registry = tributary::plugins::Registry::builtin();
    let env = |name: &str| (name == "HOME").then(|| "/root".to_string());
    // Planning recurses over the SQL's tree: on the 8 MiB the binary's threads have.
    std::thread::Builder::new()
        .stack_size(8 << 20)
        .spawn(move || {
            fuzz("pipeline yaml", &seeds, |input| {
                // Any YAML is a config error or a plan, never a panic.
                if let Ok(file) = tributary::config::PipelineFile::parse("fuzz.yaml", &text(input), &env) {
                    let _ = rt.block_on(tributary::graph::plan(&file, &registry));
                }
            })
        })
        .unwrap()
        .join()
        .unwrap();
}

/// SQL against the limits and the planner: refused with a message, or planned; never a crash.
#[test]
fn fuzz_sql_planner() {
    use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    let schema = std::sync::Arc::new(Schema::new(vec![
        Field::new("ts", DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), true),
        Field::new("site", DataType::Utf8, true),
        Field::new("latency_ms", DataType::Int64, true),
    ]));
    let mut seeds: Vec<Vec<u8>> = [
        "SELECT site, latency_ms FROM probes WHERE latency_ms > 500",
        "SELECT site, count(*) AS n, avg(latency_ms) AS avg_ms FROM probes GROUP BY site",
        "SELECT * FROM probes WHERE site IN ('a', 'b') AND (latency_ms BETWEEN 1 AND 9 OR site LIKE 'x%')",
        "SELECT CASE WHEN latency_ms > 1 THEN 'slow' ELSE 'ok' END AS s, -(-latency_ms) AS m FROM probes",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    seeds.extend(corpus("sql"));
    let inputs = vec![("probes".to_string(), schema as datafusion::arrow::datatypes::SchemaRef)];
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    // DataFusion recurses over the tree it plans: on the 8 MiB the binary's threads have.
    std::thread::Builder::new()
        .stack_size(8 << 20)
        .spawn(move || {
            fuzz("sql planner", &seeds, |input| {
                let _ = rt.block_on(tributary::sql::SqlTransform::plan(&text(input), &inputs, &[]));
            })
        })
        .unwrap()
        .join()
        .unwrap();
}

/// The known hostile inputs and fuzzer-made bodies against a running binary, between good rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_against_the_binary_lose_no_good_row_and_crash_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (admin, ingest) = (free_addr(), free_addr());
    let out = dir.path().join("out.jsonl");
    let pipeline = write(
        dir.path(),
        "p.yaml",
        &format!(
            "admin: {{address: \"{admin}\"}}\ndead_letters: {{path: \"{dl}\"}}\nsources:\n  ingest:\n    type: http_server\n    address: \"{ingest}\"\n    path: /ingest\n    max_body_bytes: 1MiB\n    schema: {HTTP_SCHEMA}\ntransforms:\n  per_minute:\n    inputs: [ingest]\n    window: {{tumbling: 1m}}\n    sql: SELECT window_start, count(*) AS n FROM ingest GROUP BY window_start\nsinks:\n  rows:\n    type: file\n    inputs: [ingest]\n    path: {out}\n    flush_interval: 100ms\n  minutes:\n    type: file\n    inputs: [per_minute]\n    path: {minutes}\n",
            dl = dir.path().join("dead_letters").display(),
            out = out.display(),
            minutes = dir.path().join("minutes.jsonl").display(),
        ),
    );
    let mut child = run_bin(&pipeline);
    wait_for_port(ingest).await;

    let mut hostile: Vec<(String, Vec<u8>)> = vec![
        ("nested arrays, 60 KB".into(), format!("{}{}", "[".repeat(30_000), "]".repeat(30_000)).into_bytes()),
        ("nested objects".into(), "{\"tags\":".repeat(20_000).into_bytes()),
        ("ts at i64::MAX".into(), br#"{"user":"h1","score":1,"ts":9223372036854775807}"#.to_vec()),
        ("ts at i64::MIN".into(), br#"{"user":"h2","score":1,"ts":-9223372036854775808}"#.to_vec()),
        ("ts 9999-12-31".into(), br#"{"user":"h3","score":1,"ts":"9999-12-31T23:59:59Z"}"#.to_vec()),
        ("score beyond i64".into(), br#"{"user":"h4","score":18446744073709551616}"#.to_vec()),
        ("wrong type".into(), br#"{"user":"h5","score":"seven"}"#.to_vec()),
        ("not UTF-8".into(), b"{\"user\":\"\xff\xfe\",\"score\":1}".to_vec()),
        ("malformed JSON".into(), b"{\"user\":".to_vec()),
        ("2 MiB body (limit 1 MiB)".into(), vec![b' '; 2 << 20]),
        ("lone surrogate".into(), br#"{"user":"\ud800","score":1}"#.to_vec()),
    ];
    // A fixed slice of what the fuzzer makes, so every run replays the same bodies.
    let seeds = http_seeds();
    let mut bytes = vec![0u8; 1 << 20];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for b in bytes.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let mut u = Unstructured::new(&bytes);
    for i in 0..300 {
        let Ok(seed) = u.choose(&seeds) else { break };
        if let Ok(body) = mutate(seed, &seeds, &mut u) {
            hostile.push((format!("fuzzed body {i}"), body));
        }
    }

    let (mut rejected_clearly, mut accepted, mut unclear) = (0, 0, Vec::new());
    let mut good_sent = 0;
    for (i, (what, body)) in hostile.iter().enumerate() {
        let good = format!(r#"{{"user":"good-{i}","score":{i}}}"#);
        for payload in [good.as_bytes(), body.as_slice()] {
            let payload = payload.to_vec();
            let (status, reply) = tokio::task::spawn_blocking(move || post(ingest, "/ingest", &[], &payload))
                .await
                .unwrap()
                .unwrap_or_else(|e| panic!("the binary stopped answering at `{what}`: {e}"));
            match status {
                200 => accepted += 1,
                400 | 413 if reply.contains("\"error\":\"") && reply.len() > 12 => rejected_clearly += 1,
                other => unclear.push(format!("{what}: {other} {reply}")),
            }
        }
        good_sent += 1;
    }
    sigterm(&child);
    let exit = child.wait().unwrap();
    let written = std::fs::read_to_string(&out).unwrap();
    let lost: Vec<usize> = (0..good_sent).filter(|i| !written.contains(&format!("\"user\":\"good-{i}\""))).collect();
    let dead = files_ending(&dir.path().join("dead_letters"), ".jsonl")
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap().lines().count())
        .sum::<usize>();
    println!(
        "hostile HTTP: {} inputs tried ({} known, {} fuzzed) between {good_sent} good rows; {rejected_clearly} rejected with a clear error, {} accepted (good rows and hostile ones that are valid), {dead} rows dead-lettered by the window (times out of range); crashes: {}; good rows lost: {}",
        hostile.len(),
        11,
        hostile.len() - 11,
        accepted - good_sent,
        if exit.success() { 0 } else { 1 },
        lost.len()
    );
    assert!(unclear.is_empty(), "answers without a clear error: {unclear:?}");
    assert!(exit.success(), "the binary crashed or failed to stop: {exit:?}");
    assert_eq!(lost, Vec::<usize>::new(), "good rows lost");
    assert!(dead >= 3, "the three out-of-range times are dead letters, not windows: {dead}");
}

/// Hostile pipeline files against `tributary validate`: an error naming the problem, exit 1, never
/// a crash.
#[test]
fn hostile_yaml_is_a_config_error_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("deep nesting", format!("sources: {}{}", "[".repeat(50_000), "]".repeat(50_000)).into_bytes()),
        ("alias bomb", b"a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\ng: [*f, *f, *f, *f, *f, *f, *f, *f, *f]\n".to_vec()),
        ("not UTF-8", b"sources:\n  a: {type: demo, kind: \xff\xfe}\n".to_vec()),
        ("huge number", b"sources:\n  a: {type: demo, kind: probes, rate: 1e400}\n".to_vec()),
        ("tab indentation", b"sources:\n\ta: {type: demo}\n".to_vec()),
        ("zero period", b"sources:\n  a: {type: demo, kind: probes}\nsinks:\n  f: {type: file, inputs: [a], path: x, flush_interval: 0s}\n".to_vec()),
        ("block nesting 10,000 deep", format!("sources:\n  a: {{type: demo, kind: probes}}\ndeep:\n{}1\n", "- ".repeat(10_000)).into_bytes()),
        (
            "a WHERE of 10,000 OR terms",
            format!(
                "sources:\n  probes: {{type: demo, kind: probes}}\ntransforms:\n  t:\n    inputs: [probes]\n    sql: \"SELECT * FROM probes WHERE {}\"\n",
                (0..10_000).map(|i| format!("site = 's{i}'")).collect::<Vec<_>>().join(" OR ")
            )
            .into_bytes(),
        ),
    ];
    for (what, yaml) in &cases {
        std::fs::write(dir.path().join("p.yaml"), yaml).unwrap();
        let o = std::process::Command::new(bin()).args(["validate", "p.yaml"]).current_dir(dir.path()).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{what}: {err}");
        assert!(err.starts_with("p.yaml:") && !err.contains("panicked"), "{what}: {err}");
    }
    println!("hostile YAML: {} files, each a config error naming the file and position, 0 crashes", cases.len());
}
