//! End to end in process: real sources → SQL → Parquet, read back and compared row for row.

use crate::common;

use common::*;
use tokio_util::sync::CancellationToken;
use tributary::runtime::RunOptions;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_through_sql_to_parquet_keeps_good_rows_and_dead_letters_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    let input = write(
        dir.path(),
        "events.jsonl",
        concat!(
            r#"{"ts":"2026-11-21T23:59:58Z","site":"ams","latency_ms":120,"tags":{"tier":"gold"}}"#,
            "\n",
            r#"{"ts":"2026-11-21T23:59:59Z","site":"sjc","latency_ms":900}"#,
            "\n",
            "this line is not json\n",
            r#"{"ts":"2026-11-22T00:00:01Z","site":"blr","latency_ms":"slow"}"#,
            "\n",
            r#"{"ts":"2026-11-22T00:00:02Z","site":"ams","latency_ms":640,"tags":["a"]}"#,
            "\n",
            r#"{"ts":"2026-11-22T00:00:03Z","site":"sjc","latency_ms":15}"#,
        ),
    );
    let data = dir.path().join("data");
    let pipeline = write(
        dir.path(),
        "p.yaml",
        &format!(
            r#"
admin: {{enabled: false}}
sources:
  events:
    type: file
    path: {input}
    schema: {{ts: timestamp, site: string, latency_ms: int, tags: json}}
    checkpoint_file: {data}/events.checkpoint.json
transforms:
  slow:
    inputs: [events]
    sql: |
      SELECT ts, upper(site) AS site, latency_ms, json_path(tags, '$.tier') AS tier
      FROM events WHERE latency_ms > 100
sinks:
  lake:
    type: parquet
    inputs: [slow]
    path: {data}/slow
  rejects:
    type: file
    inputs: [events.dead_letter]
    path: {data}/rejects.jsonl
"#,
            input = input.display(),
            data = data.display()
        ),
    );
    let report = tributary::run_file(&pipeline, None, CancellationToken::new(), RunOptions::default()).await.unwrap();
    assert!(report.ok(), "{report:?}");

    assert_eq!(
        query(&data, "SELECT date, ts, site, latency_ms, tier FROM slow ORDER BY ts").await,
        "+------------+----------------------+------+------------+------+\n\
         | date       | ts                   | site | latency_ms | tier |\n\
         +------------+----------------------+------+------------+------+\n\
         | 2026-11-21 | 2026-11-21T23:59:58Z | AMS  | 120        | gold |\n\
         | 2026-11-21 | 2026-11-21T23:59:59Z | SJC  | 900        |      |\n\
         | 2026-11-22 | 2026-11-22T00:00:02Z | AMS  | 640        |      |\n\
         +------------+----------------------+------+------------+------+"
    );
    let rejects: Vec<serde_json::Value> =
        std::fs::read_to_string(data.join("rejects.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rejects.len(), 2);
    assert_eq!(rejects[0]["component"], "events");
    assert_eq!(rejects[0]["payload"], "this line is not json");
    assert_eq!(rejects[0]["reason"].as_str().unwrap(), format!("{}:3: malformed JSON: expected ident at line 1 column 2", input.display()));
    assert_eq!(rejects[1]["payload"], r#"{"ts":"2026-11-22T00:00:01Z","site":"blr","latency_ms":"slow"}"#);
    let reason = rejects[1]["reason"].as_str().unwrap();
    assert!(reason.starts_with(&format!("{}:4: ", input.display())) && reason.contains("latency_ms"), "{reason}");
    assert!(files_ending(&data, ".tmp").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_server_through_sql_to_parquet_with_every_body_shape() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let data = dir.path().join("data");
    let pipeline = write(
        dir.path(),
        "p.yaml",
        &format!(
            r#"
admin: {{enabled: false}}
sources:
  ingest:
    type: http_server
    address: {addr}
    path: /events
    schema: {{ts: timestamp, user: string, score: int}}
transforms:
  scores:
    inputs: [ingest]
    sql: SELECT ts, user, score * 10 AS points FROM ingest WHERE score > 0
sinks:
  lake: {{type: parquet, inputs: [scores], path: "{data}/scores", max_age: 1h}}
"#,
            data = data.display()
        ),
    );
    let (run, shutdown) = spawn_pipeline(&pipeline);
    wait_for_port(addr).await;

    let bodies: [&[u8]; 3] = [
        br#"{"ts":"2026-11-22T10:00:00Z","user":"ana","score":3}"#,
        br#"[{"ts":"2026-11-22T10:00:01Z","user":"bo","score":0},{"ts":"2026-11-22T10:00:02Z","user":"cy","score":7}]"#,
        b"{\"ts\":\"2026-11-22T10:00:03Z\",\"user\":\"di\",\"score\":1}\n{\"ts\":\"2026-11-22T10:00:04Z\",\"user\":\"ed\",\"score\":2}\n",
    ];
    let mut accepted = Vec::new();
    for b in bodies {
        let b = b.to_vec();
        accepted.push(tokio::task::spawn_blocking(move || post(addr, "/events", &[], &b).unwrap()).await.unwrap());
    }
    assert_eq!(
        accepted,
        [(200, r#"{"accepted":1}"#.to_string()), (200, r#"{"accepted":2}"#.to_string()), (200, r#"{"accepted":2}"#.to_string())]
    );
    // max_age is an hour: only the shutdown flush makes these rows visible.
    assert!(files_ending(&data, ".parquet").is_empty());
    shutdown.cancel();
    let report = run.await.unwrap();
    assert!(report.ok(), "{report:?}");
    assert_eq!(
        query(&data, "SELECT user, points FROM scores ORDER BY ts").await,
        "+------+--------+\n| user | points |\n+------+--------+\n| ana  | 30     |\n| cy   | 70     |\n| di   | 10     |\n| ed   | 20     |\n+------+--------+"
    );
    assert!(files_ending(&data, ".tmp").is_empty());
}
