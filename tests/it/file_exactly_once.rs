//! `delivery: exactly_once` from a tailed `file` source (no disk buffer: the file is the replay)
//! into three exactly-once sinks that write at different paces (a timescale `append` table every
//! 100 ms, plain Parquet files every 350 ms, a Delta table every 1.5 s), `kill -9` three times
//! while lines are appended. After
//! each kill the source resumes at its checkpoint, which trails both sinks; it asks them where
//! they stopped and cuts its chunks there. Every line must be in each sink once.
//!
//! With `delivery: at_least_once` the same run writes lines again (the control shows it does).

use crate::common;

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

const TOTAL: i64 = 6000;
const KILLS: usize = 3;

/// Appends `TOTAL` lines to `path`, 50 at a time, about 1,000 a second.
async fn append_lines(path: std::path::PathBuf) {
    for block in 0..TOTAL / 50 {
        let text: String = (block * 50..(block + 1) * 50)
            .map(|id| format!("{{\"id\":{id},\"site\":\"s{}\",\"ts\":\"2026-12-05T10:00:00Z\"}}\n", id % 7))
            .collect();
        let mut file = std::fs::OpenOptions::new().append(true).create(true).open(&path).unwrap();
        file.write_all(text.as_bytes()).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs the pipeline while the lines are appended, kills it `KILLS` times as the table grows,
/// then lets a last run catch up. Returns the id counts of the table, the Delta table and the
/// plain files, and how many replayed rows the sinks skipped.
async fn killed_run(delivery: &str) -> (BTreeMap<i64, i64>, BTreeMap<i64, i64>, BTreeMap<i64, i64>, f64) {
    let dir = tempfile::tempdir().unwrap();
    let table = format!("file_eo_{delivery}_{}", std::process::id());
    let admin = common::free_addr();
    let input = dir.path().join("readings.ndjson");
    std::fs::write(&input, "").unwrap();
    let yaml = format!(
        r#"delivery: {delivery}
admin: {{address: "{admin}"}}
sources:
  readings:
    type: file
    path: "{input}"
    mode: tail
    poll_interval: 20ms
    chunk_size: 4KiB
    checkpoint_file: "{checkpoint}"
    schema: {{id: int, site: string, ts: timestamp}}
sinks:
  db: {{type: timescale, inputs: [readings], connection: "{url}", table: {table}, batch: {{max_age: 100ms}}}}
  lake: {{type: parquet, format: delta, inputs: [readings], path: "{lake}", max_age: 1500ms}}
  files: {{type: parquet, inputs: [readings], path: "{files}", max_age: 350ms}}
"#,
        input = input.display(),
        checkpoint = dir.path().join("checkpoint.json").display(),
        url = tributary_testkit::test_postgres_url(),
        lake = dir.path().join("lake").display(),
        files = dir.path().join("files").display(),
    );
    let pipeline = common::write(dir.path(), "pipeline.yaml", &yaml);
    let log = dir.path().join("run.log");
    let db = common::pg().await;
    db.batch_execute(&format!("DROP TABLE IF EXISTS \"{table}\"; DELETE FROM tributary_positions WHERE target = 'public.{table}'"))
        .await
        .ok();
    let skipped_so_far = || {
        let Ok((200, text)) = common::get(admin, "/metrics") else { return 0.0 };
        let each: Vec<f64> = ["db", "lake", "files"]
            .iter()
            .map(|c| common::metric(&text, "tributary_component_replay_skipped_rows_total", c).unwrap_or(0.0))
            .collect();
        eprintln!("{delivery}: replayed rows skipped by db, lake, files: {each:?}");
        each.iter().sum::<f64>()
    };

    let appending = tokio::spawn(append_lines(input.clone()));
    // At least 1.9 s a run: the kill then comes after the Delta table's first commit (1.5 s) and
    // the Parquet files' flush at 1.75 s, so each sink has written rows the others have not, and
    // that the replay sends again.
    let (mut child, mut skipped) = common::kill_as_table_grows(
        &db,
        &table,
        (KILLS, 700, Duration::from_millis(1900)),
        || common::run_logged(&pipeline, &[], &log),
        &skipped_so_far,
    )
    .await;
    appending.await.unwrap();
    let t0 = Instant::now();
    loop {
        let (rows, lake) = (common::ids_in_table(&db, &table).await, common::ids_in_delta(&dir.path().join("lake")));
        let files = common::ids_in_parquet_files(&dir.path().join("files"));
        if [&rows, &lake, &files].iter().all(|ids| ids.len() as i64 == TOTAL) || t0.elapsed() > Duration::from_secs(90) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    skipped += skipped_so_far();
    common::sigterm(&child);
    let status = child.wait().unwrap();
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success(), "a clean stop exits 0: {status:?}\n{logged}");
    let result = (
        common::ids_in_table(&db, &table).await,
        common::ids_in_delta(&dir.path().join("lake")),
        common::ids_in_parquet_files(&dir.path().join("files")),
        skipped,
    );
    db.batch_execute(&format!("DROP TABLE IF EXISTS \"{table}\"; DELETE FROM tributary_positions WHERE target = 'public.{table}'"))
        .await
        .ok();
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_file_pipeline_writes_every_line_once_into_both_sinks() {
    let (table, lake, files, skipped) = killed_run("exactly_once").await;
    let (missing, twice) = common::missing_and_twice("exactly_once, timescale", &table, TOTAL);
    assert!(missing.is_empty() && twice == 0, "timescale: missing {:?}…, {twice} written twice", &missing[..missing.len().min(10)]);
    let (missing, twice) = common::missing_and_twice("exactly_once, delta", &lake, TOTAL);
    assert!(missing.is_empty() && twice == 0, "delta: missing {:?}…, {twice} written twice", &missing[..missing.len().min(10)]);
    let (missing, twice) = common::missing_and_twice("exactly_once, plain parquet", &files, TOTAL);
    assert!(missing.is_empty() && twice == 0, "parquet: missing {:?}…, {twice} written twice", &missing[..missing.len().min(10)]);
    eprintln!("exactly_once: {skipped} replayed rows skipped");
    assert!(skipped > 0.0, "the kills left replays to skip");

    // The control: at least once, the table gets the Delta table's lag again after each kill.
    let (table, lake, files, _) = killed_run("at_least_once").await;
    let (missing, twice) = common::missing_and_twice("at_least_once, timescale", &table, TOTAL);
    assert!(missing.is_empty(), "at least once loses nothing either");
    assert!(twice > 0, "the kills replayed lines the table had written");
    assert!(common::missing_and_twice("at_least_once, delta", &lake, TOTAL).0.is_empty());
    let (missing, twice) = common::missing_and_twice("at_least_once, plain parquet", &files, TOTAL);
    assert!(missing.is_empty() && twice > 0, "the kills replayed lines the Parquet files had written");
}
