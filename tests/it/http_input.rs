//! Bad HTTP input gets the right status and reason, is counted in /metrics, and the pipeline keeps
//! serving; a stalled sink turns into 503 (backpressure) and nothing answered 200 is lost.

use crate::common;

use std::io::BufRead;

use common::*;

async fn post_async(addr: std::net::SocketAddr, headers: &'static [(&'static str, &'static str)], body: Vec<u8>) -> (u16, String) {
    tokio::task::spawn_blocking(move || post(addr, "/ingest", headers, &body).unwrap()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_rejected_with_reasons_counted_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, admin) = (free_addr(), free_addr());
    let out = dir.path().join("out.jsonl");
    let pipeline = write(
        dir.path(),
        "p.yaml",
        &format!(
            "admin: {{address: \"{admin}\"}}\nsources:\n  ingest:\n    type: http_server\n    address: \"{addr}\"\n    path: /ingest\n    token: ${{INGEST_TOKEN_T1:-tok-123456}}\n    max_body_bytes: 1KiB\n    schema: {{user: string, score: int}}\nsinks:\n  out: {{type: file, inputs: [ingest], path: \"{}\", flush_interval: 50ms}}\n",
            out.display()
        ),
    );
    let (run, shutdown) = spawn_pipeline(&pipeline);
    wait_for_port(addr).await;
    const AUTH: &[(&str, &str)] = &[("Authorization", "Bearer tok-123456")];

    let (status, body) = post_async(addr, &[], br#"{"user":"a","score":1}"#.to_vec()).await;
    assert_eq!((status, body.as_str()), (401, r#"{"error":"missing or invalid bearer token"}"#));
    let (status, _) = post_async(addr, &[("Authorization", "Bearer wrong")], br#"{"user":"a","score":1}"#.to_vec()).await;
    assert_eq!(status, 401);

    let (status, body) = post_async(addr, AUTH, b"{\"user\":\"a\",\"score\":1}\n{\"user\": oops}\n".to_vec()).await;
    assert_eq!(status, 400);
    assert!(body.starts_with(r#"{"error":"line 2: malformed JSON: expected value"#), "{body}");

    let (status, body) = post_async(addr, AUTH, br#"[{"user":"a","score":1},{"user":"b","score":"many"}]"#.to_vec()).await;
    assert_eq!(status, 400);
    assert!(body.contains("element 1: ") && body.contains("score"), "{body}");

    let (status, body) = post_async(addr, AUTH, br#"["not an object"]"#.to_vec()).await;
    assert_eq!((status, body.as_str()), (400, r#"{"error":"element 0: expected a JSON object, got a string"}"#));

    let big = format!(r#"{{"user":"{}","score":1}}"#, "x".repeat(2000));
    let (status, body) = post_async(addr, AUTH, big.into_bytes()).await;
    assert_eq!((status, body.as_str()), (413, r#"{"error":"body larger than the limit of 1024 bytes"}"#));

    // Still serving, and only the good request's rows arrive.
    let (status, body) = post_async(addr, AUTH, b"{\"user\":\"ok\",\"score\":5}\n{\"user\":\"ok2\",\"score\":6}".to_vec()).await;
    assert_eq!((status, body.as_str()), (200, r#"{"accepted":2}"#));

    // Once the sink has written the two rows, its input buffer is empty again.
    let mut metrics = String::new();
    for _ in 0..100 {
        let (status, text) = tokio::task::spawn_blocking(move || get(admin, "/metrics").unwrap()).await.unwrap();
        assert_eq!(status, 200);
        metrics = text;
        if metric(&metrics, "tributary_component_rows_written_total", "out") == Some(2.0) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(metric(&metrics, "tributary_component_errors_total", "ingest"), Some(6.0), "{metrics}");
    assert_eq!(metric(&metrics, "tributary_component_rows_out_total", "ingest"), Some(2.0), "{metrics}");
    assert!(metrics.contains("tributary_up 1"), "{metrics}");
    assert_eq!(metric(&metrics, "tributary_component_buffer_fill_ratio", "out"), Some(0.0), "{metrics}");
    let (status, health) = tokio::task::spawn_blocking(move || get(admin, "/health").unwrap()).await.unwrap();
    assert_eq!(status, 200);
    let health: serde_json::Value = serde_json::from_str(&health).unwrap();
    // The pipeline file as started: generation 1, loaded when the run began.
    let loaded_at = health["config"]["loaded_at"].as_str().unwrap_or_default();
    assert!(humantime::parse_rfc3339(loaded_at).is_ok(), "loaded_at is an RFC 3339 time: {health}");
    assert_eq!(
        health,
        serde_json::json!({"status": "ok", "config": {"generation": 1, "loaded_at": loaded_at}, "components": {
            "ingest": {"kind": "source", "type": "http_server", "errors": 6},
            "out": {"kind": "sink", "type": "file", "errors": 0}
        }})
    );

    shutdown.cancel();
    assert!(run.await.unwrap().ok());
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "{\"user\":\"ok\",\"score\":5}\n{\"user\":\"ok2\",\"score\":6}\n");
}

/// The file sink writes to a FIFO nobody reads yet, so it stalls: buffers fill, clients get 503.
/// Once a reader appears everything that was answered 200 comes out, and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn a_stalled_sink_backpressures_clients_with_503_and_loses_nothing_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let fifo = dir.path().join("out.fifo");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let pipeline = write(
        dir.path(),
        "p.yaml",
        &format!(
            "admin: {{enabled: false}}\nsources:\n  ingest:\n    type: http_server\n    address: \"{addr}\"\n    path: /ingest\n    accept_timeout: 100ms\n    schema: {{n: int}}\nsinks:\n  out: {{type: file, inputs: [ingest], path: \"{}\"}}\n",
            fifo.display()
        ),
    );
    let (run, shutdown) = spawn_pipeline(&pipeline);
    wait_for_port(addr).await;

    let mut accepted = Vec::new();
    let mut saw_503 = None;
    for n in 0..200 {
        let (status, body) = post_async(addr, &[], format!("{{\"n\":{n}}}").into_bytes()).await;
        match status {
            200 => accepted.push(n),
            503 => {
                saw_503 = Some(body);
                break;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(saw_503.as_deref(), Some(r#"{"error":"pipeline is busy (backpressure); retry later"}"#));
    assert!(accepted.len() >= 16, "the buffers took {} requests before pushing back", accepted.len());

    let reader = std::thread::spawn(move || {
        let f = std::fs::File::open(&fifo).unwrap();
        std::io::BufReader::new(f).lines().map(|l| l.unwrap()).collect::<Vec<_>>()
    });
    shutdown.cancel();
    assert!(run.await.unwrap().ok());
    let lines = reader.join().unwrap();
    let expected: Vec<String> = accepted.iter().map(|n| format!("{{\"n\":{n}}}")).collect();
    assert_eq!(lines, expected);
}

/// A client that never finishes its headers is disconnected after `header_timeout`; one stuck in
/// its body holds a stop for `stop_timeout` at most; the rows accepted before are written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_and_cannot_hold_a_stop_hostage() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let (addr, admin) = (free_addr(), free_addr());
    let out = dir.path().join("out.jsonl");
    let pipeline = write(
        dir.path(),
        "p.yaml",
        &format!(
            "admin: {{address: \"{admin}\"}}\nsources:\n  ingest:\n    type: http_server\n    address: \"{addr}\"\n    header_timeout: 1s\n    body_timeout: 1h\n    stop_timeout: 1s\n    schema: {{user: string, score: int}}\n    buffer: {{type: disk, max_size: 8MiB, path: \"{}\"}}\nsinks:\n  out: {{type: file, inputs: [ingest], path: \"{}\", flush_interval: 1h}}\n",
            dir.path().join("buffer").display(),
            out.display()
        ),
    );
    // The sink flushes only at the stop, so the record stays in the buffer until then (with a
    // 50 ms flush the check below raced the acknowledgement and failed in CI).
    let (run, shutdown) = spawn_pipeline(&pipeline);
    wait_for_port(addr).await;
    let (status, body) = tokio::task::spawn_blocking(move || post(addr, "/", &[], b"{\"user\":\"a\",\"score\":1}").unwrap()).await.unwrap();
    assert_eq!((status, body.as_str()), (200, r#"{"accepted":1}"#));
    // One request, one fsync before its 200; the record is on disk until the sink acknowledges it.
    let (_, metrics) = tokio::task::spawn_blocking(move || get(admin, "/metrics").unwrap()).await.unwrap();
    assert_eq!(metric(&metrics, "tributary_component_buffer_fsyncs_total", "ingest"), Some(1.0), "{metrics}");
    assert!(metric(&metrics, "tributary_component_disk_buffer_bytes", "ingest").is_some_and(|b| b > 8.0), "{metrics}");

    let half_headers = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
        s.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Le").unwrap();
        let t0 = std::time::Instant::now();
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        (t0.elapsed(), String::from_utf8_lossy(&answer).into_owned())
    });
    let (waited, answer) = half_headers.await.unwrap();
    assert!(waited >= std::time::Duration::from_millis(900) && waited < std::time::Duration::from_secs(5), "closed after {waited:?}");
    assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 408"), "{answer}");

    // Headers complete, the body never comes: an in-flight request when the stop begins.
    let mut stuck = std::net::TcpStream::connect(addr).unwrap();
    stuck.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"user\":").unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let t0 = std::time::Instant::now();
    shutdown.cancel();
    let report = tokio::time::timeout(std::time::Duration::from_secs(10), run).await.expect("the stop is not held").unwrap();
    let took = t0.elapsed();
    assert!(report.ok(), "{:?}", report.failures);
    assert!(took < std::time::Duration::from_secs(4), "stop took {took:?} (stop_timeout is 1s)");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "{\"user\":\"a\",\"score\":1}\n");
    drop(stuck);
}

/// A body that stops arriving gets 408 after `body_timeout`, with the reason; the server goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stops_arriving_gets_408() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let pipeline = write(
        dir.path(),
        "p.yaml",
        &format!(
            "admin: {{enabled: false}}\nsources:\n  ingest:\n    type: http_server\n    address: \"{addr}\"\n    body_timeout: 1s\n    schema: {{user: string}}\nsinks:\n  out: {{type: console, inputs: [ingest]}}\n"
        ),
    );
    let (run, shutdown) = spawn_pipeline(&pipeline);
    wait_for_port(addr).await;
    let answer = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
        s.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\nConnection: close\r\n\r\n{\"user\":").unwrap();
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        String::from_utf8_lossy(&answer).into_owned()
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.ends_with(r#"{"error":"the body did not arrive within 1s"}"#), "{answer}");
    let (status, _) = tokio::task::spawn_blocking(move || post(addr, "/", &[], br#"{"user":"still here"}"#).unwrap()).await.unwrap();
    assert_eq!(status, 200);
    shutdown.cancel();
    assert!(run.await.unwrap().ok());
}

/// Single-event requests sent together are decoded and handed on as a few batches, not one per
/// request, and each is still answered on its own terms: the good ones 200 with their row written,
/// each bad one 400 with the message it gets when sent alone, and nothing of it in the output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_single_event_requests_are_batched_and_answered_one_by_one() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, admin) = (free_addr(), free_addr());
    let out = dir.path().join("out.jsonl");
    let pipeline = write(
        dir.path(),
        "p.yaml",
        &format!(
            "admin: {{address: \"{admin}\"}}\nsources:\n  ingest:\n    type: http_server\n    address: \"{addr}\"\n    path: /ingest\n    batch: {{max_rows: 100, max_age: 300ms}}\n    schema: {{user: string, score: int}}\nsinks:\n  out: {{type: file, inputs: [ingest], path: \"{}\", flush_interval: 50ms}}\n",
            out.display()
        ),
    );
    let (run, shutdown) = spawn_pipeline(&pipeline);
    wait_for_port(addr).await;

    // What each bad body is told when it is the only request in flight.
    let bad: [&[u8]; 3] = [br#"{"user":"b","score":"lots"}"#, br#"{"user": oops}"#, br#"{"user":"c","score":1}{"user":"d","score":2}"#];
    let mut alone = Vec::new();
    for body in bad {
        alone.push(post_async(addr, &[], body.to_vec()).await);
    }
    assert!(alone.iter().all(|(status, _)| *status == 400), "{alone:?}");
    assert!(alone[0].1.starts_with(r#"{"error":"line 1: "#) && alone[0].1.contains("lots"), "{alone:?}");
    assert!(alone[1].1.starts_with(r#"{"error":"line 1: malformed JSON: expected value"#), "{alone:?}");
    assert!(alone[2].1.starts_with(r#"{"error":"line 1: malformed JSON: trailing characters"#), "{alone:?}");

    // 60 requests at once, every 20th one bad.
    let requests = (0..60).map(|i| {
        let body = if i % 20 == 7 { bad[i / 20].to_vec() } else { format!(r#"{{"user":"u{i}","score":{i}}}"#).into_bytes() };
        tokio::spawn(post_async(addr, &[], body))
    });
    let answers: Vec<(u16, String)> = futures::future::join_all(requests).await.into_iter().map(Result::unwrap).collect();
    for (i, answer) in answers.iter().enumerate() {
        if i % 20 == 7 {
            assert_eq!(answer, &alone[i / 20], "request {i}");
        } else {
            assert_eq!((answer.0, answer.1.as_str()), (200, r#"{"accepted":1}"#), "request {i}");
        }
    }

    let (_, metrics) = tokio::task::spawn_blocking(move || get(admin, "/metrics").unwrap()).await.unwrap();
    assert_eq!(metric(&metrics, "tributary_component_rows_out_total", "ingest"), Some(57.0), "{metrics}");
    assert_eq!(metric(&metrics, "tributary_component_errors_total", "ingest"), Some(6.0), "{metrics}");
    // One batch per request would be 57; they arrived within one `max_age` of each other.
    let batches = metric(&metrics, "tributary_component_batches_out_total", "ingest").unwrap();
    assert!(batches < 57.0 / 2.0, "57 rows in {batches} batches");
    eprintln!("57 rows in {batches} batches");

    shutdown.cancel();
    assert!(run.await.unwrap().ok());
    let mut written: Vec<String> = std::fs::read_to_string(&out).unwrap().lines().map(str::to_string).collect();
    written.sort();
    let mut expected: Vec<String> = (0..60).filter(|i| i % 20 != 7).map(|i| format!(r#"{{"user":"u{i}","score":{i}}}"#)).collect();
    expected.sort();
    assert_eq!(written, expected);
}

/// A request waits for company only while other connections are open: a lone client's request
/// is handed on at once even with a `max_age` of an hour (each of these would otherwise hang).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_client_is_never_kept_waiting_for_company() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let out = dir.path().join("out.jsonl");
    let pipeline = write(
        dir.path(),
        "p.yaml",
        &format!(
            "admin: {{enabled: false}}\nsources:\n  ingest:\n    type: http_server\n    address: \"{addr}\"\n    path: /ingest\n    batch: {{max_age: 1h}}\n    schema: {{n: int}}\nsinks:\n  out: {{type: file, inputs: [ingest], path: \"{}\"}}\n",
            out.display()
        ),
    );
    let (run, shutdown) = spawn_pipeline(&pipeline);
    wait_for_port(addr).await;
    for n in 0..5 {
        let answer = tokio::time::timeout(std::time::Duration::from_secs(20), post_async(addr, &[], format!("{{\"n\":{n}}}").into_bytes()));
        let (status, body) = answer.await.unwrap_or_else(|_| panic!("request {n} was kept waiting"));
        assert_eq!((status, body.as_str()), (200, r#"{"accepted":1}"#));
    }
    shutdown.cancel();
    assert!(run.await.unwrap().ok());
    assert_eq!(std::fs::read_to_string(&out).unwrap(), (0..5).map(|n| format!("{{\"n\":{n}}}\n")).collect::<String>());
}
