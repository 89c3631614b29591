//! The dead-letter loop, end to end with the built binary and the real PostgreSQL: a bad deploy (a
//! CHECK constraint that is too strict) makes the timescale sink reject rows; they are stored as
//! dead letters; the constraint is dropped; `tributary replay` writes them, reporting the one
//! letter that a legitimate constraint still refuses; the table is then exactly what it would have
//! been without the bad deploy, and a second replay (upsert) leaves it unchanged.

use crate::common;

use std::process::Command;

/// `(id, score)` of the input rows: 1500, 2500 and 1000 break the bad constraint, -5 a real one.
const ROWS: &[(i64, i64)] = &[(1, 10), (2, 1500), (3, 20), (4, 2500), (5, -5), (6, 30), (7, 999), (8, 1000), (9, 40), (10, 50)];

async fn table(db: &tokio_postgres::Client, table: &str) -> Vec<(i64, i64)> {
    let rows = db.query(&format!("SELECT id, score FROM {table} ORDER BY id"), &[]).await.unwrap();
    rows.iter().map(|r| (r.get(0), r.get(1))).collect()
}

fn replay(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(common::bin()).arg("replay").args(args).output().unwrap();
    (out.status.success(), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_deploy_rejects_rows_and_a_replay_after_the_fix_converges() {
    let db = common::pg().await;
    let name = format!("replay_scores_{}", std::process::id());
    db.batch_execute(&format!(
        "DROP TABLE IF EXISTS {name};
         CREATE TABLE {name} (ts timestamptz NOT NULL, id bigint PRIMARY KEY, score bigint,
             CONSTRAINT too_strict CHECK (score < 1000), CONSTRAINT not_negative CHECK (score >= 0));"
    ))
    .await
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let input: String =
        ROWS.iter().map(|(id, score)| format!("{{\"ts\":\"2026-11-30T09:00:{id:02}Z\",\"id\":{id},\"score\":{score}}}\n")).collect();
    let input_path = common::write(dir.path(), "scores.ndjson", &input);
    let letters = dir.path().join("dead_letters");
    let yaml = format!(
        r#"
admin: {{enabled: false}}
dead_letters: {{path: {letters}}}
sources:
  scores:
    type: file
    path: {input}
    schema: {{ts: timestamp, id: int, score: int}}
sinks:
  db:
    type: timescale
    inputs: [scores]
    connection: "{pg}"
    table: {name}
    mode: upsert
    key: [id]
"#,
        letters = letters.display(),
        input = input_path.display(),
        pg = tributary_testkit::test_postgres_url(),
    );
    let pipeline = common::write(dir.path(), "scores.yaml", &yaml);

    // The bad deploy: four rows rejected and stored, the rest written.
    let run = Command::new(common::bin()).args(["run", pipeline.to_str().unwrap()]).env("RUST_LOG", "warn").output().unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert_eq!(table(&db, &name).await, [(1, 10), (3, 20), (6, 30), (7, 999), (9, 40), (10, 50)]);
    let stored = std::fs::read_to_string(letters.join("db.jsonl")).unwrap();
    let reasons: Vec<String> =
        stored.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["reason"].to_string()).collect();
    assert_eq!(reasons.len(), 4, "{stored}");
    assert_eq!(reasons.iter().filter(|r| r.contains("too_strict")).count(), 3, "{reasons:?}");
    assert_eq!(reasons.iter().filter(|r| r.contains("not_negative")).count(), 1, "{reasons:?}");

    // The fix, then the replay: three written, the negative score refused again with its reason.
    db.batch_execute(&format!("ALTER TABLE {name} DROP CONSTRAINT too_strict")).await.unwrap();
    let still = dir.path().join("still-rejected.jsonl");
    let letter_file = letters.join("db.jsonl");
    let args = [letter_file.to_str().unwrap(), "--pipeline", pipeline.to_str().unwrap(), "--into", "db"];
    let (ok, stdout, stderr) = replay(&[&args[..], &["--rejected", still.to_str().unwrap()]].concat());
    assert!(!ok, "a letter was not written, so the replay exits 1: {stdout}{stderr}");
    eprintln!("{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    let file = letter_file.display().to_string();
    let rejected_line = lines.iter().position(|l| l.contains("rejected again")).unwrap_or_else(|| panic!("{stdout}"));
    assert!(lines[rejected_line].contains("not_negative"), "{stdout}");
    assert!(lines[rejected_line + 1].contains(r#""id":5"#) && lines[rejected_line + 1].contains(r#""score":-5"#), "{stdout}");
    assert_eq!(lines.iter().filter(|l| l.starts_with(&file) && l.ends_with(": written")).count(), 3, "{stdout}");
    assert_eq!(lines.last().unwrap(), &"4 letters of `db`: 3 written, 1 rejected again, 0 not readable; 0 of other components skipped");
    let expected: Vec<(i64, i64)> = ROWS.iter().copied().filter(|(_, score)| *score >= 0).collect();
    assert_eq!(table(&db, &name).await, expected, "the table as if the bad constraint had never been there");
    let again: Vec<serde_json::Value> =
        std::fs::read_to_string(&still).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(again.len(), 1);
    assert!(again[0]["reason"].as_str().unwrap().contains("not_negative"), "{again:?}");

    // Replayed twice: upserts converge to the same table.
    let (_, stdout, _) = replay(&args);
    assert!(
        stdout.ends_with("4 letters of `db`: 3 written, 1 rejected again, 0 not readable; 0 of other components skipped\n"),
        "{stdout}"
    );
    assert_eq!(table(&db, &name).await, expected);

    // Replaying into something that is not a sink, or with a letter file that is not one, says so.
    let (ok, _, stderr) = replay(&[args[0], "--pipeline", args[2], "--into", "scores"]);
    assert!(!ok);
    assert_eq!(stderr.trim(), format!("replay failed: `scores` is not a sink of {}: dead letters are replayed into sinks (`db`)", args[2]));
    let garbage = common::write(dir.path(), "garbage.jsonl", "{\"component\":\"db\",\"payload\":\"{\\\"id\\\":\\\"x\\\"}\"}\nnot json\n");
    let (ok, stdout, _) = replay(&[garbage.to_str().unwrap(), "--pipeline", args[2], "--into", "db"]);
    assert!(!ok);
    assert!(stdout.contains(":1: not replayed: the payload is not a row of the sink's input"), "{stdout}");
    assert!(stdout.contains(":2: not replayed: not a dead letter: not JSON"), "{stdout}");
    db.batch_execute(&format!("DROP TABLE {name}")).await.unwrap();
}

/// The lake replayed through new SQL: a `parquet` source over the fixture lake (its `ts` has no
/// time zone: cast to the declared UTC timestamps) → a filter → a JSON-lines file.
#[test]
fn a_parquet_source_replays_the_lake_through_new_sql() {
    let dir = tempfile::tempdir().unwrap();
    common::lake::write_fixture(&dir.path().join("data"));
    let out = dir.path().join("slow.jsonl");
    let yaml = format!(
        r#"
admin: {{enabled: false}}
sources:
  history:
    type: parquet
    path: {lake}
    schema: {{ts: timestamp, site: string, ms: float}}
    from: "2026-10-31T23:00:00Z"
    to: "2026-11-01T00:10:00Z"
transforms:
  slow:
    inputs: [history]
    sql: SELECT ts, site, ms FROM history WHERE ms >= 20
sinks:
  out:
    type: file
    inputs: [slow]
    path: {out}
"#,
        lake = dir.path().join("data/latency").display(),
        out = out.display()
    );
    let pipeline = common::write(dir.path(), "replay.yaml", &yaml);
    // `validate` checks the declared columns against the newest file the source would read.
    let validate = |path: &std::path::Path| Command::new(common::bin()).args(["validate", path.to_str().unwrap()]).output().unwrap();
    assert!(validate(&pipeline).status.success(), "{}", String::from_utf8_lossy(&validate(&pipeline).stderr));
    let wrong = common::write(dir.path(), "wrong.yaml", &yaml.replace("ms: float}", "ms: float, region: string}"));
    let refused = validate(&wrong);
    assert!(!refused.status.success());
    let newest = dir.path().join("data/latency/date=2026-11-01/part-0.parquet");
    assert_eq!(
        String::from_utf8_lossy(&refused.stderr).trim(),
        format!("{}: sources.history: column `region` (declared in `schema`) is not in file://{}", wrong.display(), newest.display())
    );
    let run = Command::new(common::bin()).args(["run", pipeline.to_str().unwrap()]).env("RUST_LOG", "warn").output().unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let written = std::fs::read_to_string(&out).unwrap();
    assert_eq!(
        written,
        concat!(
            "{\"ts\":\"2026-10-31T23:59:30Z\",\"site\":\"a\",\"ms\":100.0}\n",
            "{\"ts\":\"2026-11-01T00:00:50Z\",\"site\":\"a\",\"ms\":20.0}\n",
            "{\"ts\":\"2026-11-01T00:03:00Z\",\"site\":\"a\",\"ms\":30.0}\n",
            "{\"ts\":\"2026-11-01T00:03:59Z\",\"site\":\"a\",\"ms\":31.0}\n",
        )
    );
}

/// A long replay reports its progress: without a terminal, plain lines on stderr (here after
/// every chunk of 1,000 letters: `TRIBUTARY_PROGRESS_EVERY=0s`), then how long it took; stdout
/// keeps the report.
#[test]
fn a_long_replay_prints_its_progress_without_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let letters: String =
        (0..2500).map(|n| format!("{{\"component\":\"out\",\"reason\":\"disk full\",\"payload\":\"{{\\\"n\\\":{n}}}\"}}\n")).collect();
    let letters = common::write(dir.path(), "out.jsonl", &letters);
    let written = dir.path().join("written.jsonl");
    let input = common::write(dir.path(), "in.jsonl", "");
    let pipeline = common::write(
        dir.path(),
        "p.yaml",
        &format!(
            "admin: {{enabled: false}}\nsources:\n  numbers: {{type: file, path: \"{}\", schema: {{n: int}}}}\nsinks:\n  out: {{type: file, inputs: [numbers], path: \"{}\"}}\n",
            input.display(),
            written.display()
        ),
    );
    let out = Command::new(common::bin())
        .args(["replay", letters.to_str().unwrap(), "--pipeline", pipeline.to_str().unwrap(), "--into", "out"])
        .env("TRIBUTARY_PROGRESS_EVERY", "0s")
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap());
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.ends_with("2500 letters of `out`: 2500 written, 0 rejected again, 0 not readable; 0 of other components skipped\n"),
        "{stdout}"
    );
    assert_eq!(std::fs::read_to_string(&written).unwrap().lines().count(), 2500);
    let progress: Vec<&str> = stderr.lines().filter(|l| l.starts_with("replay: ")).collect();
    assert_eq!(progress.len(), 4, "{stderr}");
    assert!(progress[0].starts_with("replay: 1,000 of 2,500 letters (40%), ") && progress[0].contains(" letters/s, ETA "), "{stderr}");
    assert!(progress[1].starts_with("replay: 2,000 of 2,500 letters (80%), "), "{stderr}");
    assert!(progress[2].starts_with("replay: 2,500 of 2,500 letters (100%), ") && !progress[2].contains("ETA"), "{stderr}");
    assert!(progress[3].starts_with("replay: 2,500 letters in ") && progress[3].ends_with(" letters/s)"), "{stderr}");
}
