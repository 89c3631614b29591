use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use datafusion::arrow::util::pretty::pretty_format_batches;
use tokio_util::sync::CancellationToken;

use super::*;

fn decl(name: &str, yaml: &str) -> TableDecl {
    TableDecl { name: name.into(), options: serde_yaml::from_str(yaml).unwrap() }
}

fn rows(t: &PlannedTable) -> String {
    pretty_format_batches(&t.table.snapshot().batches).unwrap().to_string()
}

fn columns(t: &PlannedTable) -> Vec<String> {
    t.table.schema.fields().iter().map(|f| format!("{} {}", f.name(), f.data_type())).collect()
}

/// Replace `path`'s contents the way a careful writer does: a new file renamed over the old one.
fn rewrite(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn plan_table(decl: &TableDecl) -> Result<PlannedTable, ConfigError> {
    plan(decl, &BTreeMap::new()).await
}

async fn plan_err(name: &str, yaml: &str) -> String {
    let e = plan_table(&decl(name, yaml)).await.err().expect("an error");
    format!("{}: {}", tributary_sdk::config::path_to_string(&e.path), e.message)
}

#[tokio::test]
async fn a_csv_file_is_read_with_the_types_its_values_have_and_refreshed_when_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sites.csv");
    std::fs::write(&path, "target,region,racks\na.example,emea,4\nb.example,amer,12\n").unwrap();
    let t = plan_table(&decl("sites", &format!("{{type: file, path: {}, refresh: 50ms}}", path.display()))).await.unwrap();
    assert_eq!(columns(&t), ["target Utf8", "region Utf8", "racks Int64"]);
    assert_eq!(t.table.snapshot().rows, 0, "nothing is loaded when planned");

    let stop = CancellationToken::new();
    start(std::slice::from_ref(&t), &stop).await.unwrap();
    assert_eq!(
        rows(&t),
        "+-----------+--------+-------+\n\
         | target    | region | racks |\n\
         +-----------+--------+-------+\n\
         | a.example | emea   | 4     |\n\
         | b.example | amer   | 12    |\n\
         +-----------+--------+-------+"
    );
    let first = t.table.snapshot().version;

    rewrite(&path, "target,region,racks\nc.example,apac,1\n");
    wait_for("the refresh", || t.table.snapshot().version != first).await;
    assert_eq!(
        rows(&t),
        "+-----------+--------+-------+\n\
         | target    | region | racks |\n\
         +-----------+--------+-------+\n\
         | c.example | apac   | 1     |\n\
         +-----------+--------+-------+"
    );
    assert_eq!(t.stats.loads.load(Ordering::Relaxed), 2);

    // A value that no longer fits its column: the refresh fails and the table keeps its rows.
    let second = t.table.snapshot().version;
    rewrite(&path, "target,region,racks\nd.example,apac,many\n");
    wait_for("the failed refresh", || t.stats.failures.load(Ordering::Relaxed) == 1).await;
    assert_eq!(t.table.snapshot().version, second);
    assert!(rows(&t).contains("| c.example | apac   | 1     |"));
    let error = t.stats.last_error.lock().unwrap().clone().unwrap();
    assert!(error.contains("Error while parsing value 'many' as type 'Int64' for column 2"), "{error}");
    stop.cancel();
}

#[tokio::test]
async fn json_lines_and_parquet_files_load_with_a_declared_or_their_own_schema() {
    let dir = tempfile::tempdir().unwrap();
    let jsonl = dir.path().join("rooms.jsonl");
    std::fs::write(
        &jsonl,
        "{\"reader\": \"r1\", \"room\": \"lobby\", \"since\": \"2026-12-01T08:00:00Z\"}\n{\"reader\": \"r2\", \"room\": \"lab\", \"since\": \"2026-12-02T09:30:00Z\"}\n",
    )
    .unwrap();
    let rooms = plan_table(&decl(
        "rooms",
        &format!("{{type: file, path: {}, schema: {{reader: string, room: string, since: timestamp}}}}", jsonl.display()),
    ))
    .await
    .unwrap();
    assert_eq!(columns(&rooms), ["reader Utf8", "room Utf8", "since Timestamp(µs, \"UTC\")"]);

    // A Parquet file written from the rooms' rows, read back with the file's own schema.
    let stop = CancellationToken::new();
    start(std::slice::from_ref(&rooms), &stop).await.unwrap();
    let parquet = dir.path().join("rooms.parquet");
    let mut writer =
        datafusion::parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&parquet).unwrap(), rooms.table.schema.clone(), None)
            .unwrap();
    for b in &rooms.table.snapshot().batches {
        writer.write(b).unwrap();
    }
    writer.close().unwrap();
    let from_parquet = plan_table(&decl("rooms", &format!("{{type: file, path: {}}}", parquet.display()))).await.unwrap();
    assert_eq!(columns(&from_parquet), columns(&rooms));
    start(std::slice::from_ref(&from_parquet), &stop).await.unwrap();
    let expected = "+--------+-------+----------------------+\n\
                    | reader | room  | since                |\n\
                    +--------+-------+----------------------+\n\
                    | r1     | lobby | 2026-12-01T08:00:00Z |\n\
                    | r2     | lab   | 2026-12-02T09:30:00Z |\n\
                    +--------+-------+----------------------+";
    assert_eq!(rows(&rooms), expected);
    assert_eq!(rows(&from_parquet), expected);
    stop.cancel();
}

#[tokio::test]
async fn table_options_are_checked_with_the_option_named() {
    assert_eq!(plan_err("sites", "{type: file, path: /nonexistent/sites.csv}").await, "path: `/nonexistent/sites.csv` is not a file");
    let dir = tempfile::tempdir().unwrap();
    let odd = dir.path().join("sites.txt");
    std::fs::write(&odd, "a,b\n").unwrap();
    assert_eq!(
        plan_err("sites", &format!("{{type: file, path: {}}}", odd.display())).await,
        format!("format: cannot tell the format of `{}` from its name: set `format: csv`, `jsonl` or `parquet`", odd.display())
    );
    assert_eq!(plan_err("sites", "{type: postgres, connection: 'host=localhost', query: SELECT 1}").await, ": missing field `schema`");
    assert_eq!(
        plan_err("sites", "{type: redis, path: x}").await,
        "type: unknown table type `redis`, expected one of `file`, `postgres`, `latest`"
    );
    assert_eq!(
        plan_err("sites", "{type: postgres, connection: 'host=localhost', query: SELECT 1, schema: {n: int}, refresh: 0s}").await,
        "refresh: must be longer than 0s"
    );
}

#[tokio::test]
async fn a_postgres_table_casts_every_column_to_its_declared_type_and_reruns_its_query() {
    let url = tributary_testkit::test_postgres_url();
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    client
        .batch_execute(
            "DROP TABLE IF EXISTS lookup_clusters;
             CREATE TABLE lookup_clusters (id int4, name text, region varchar(8), capacity float8, active boolean, since timestamptz);
             INSERT INTO lookup_clusters VALUES
               (1, 'ams-1', 'emea', 0.75, true, '2026-12-01 08:00:00+00'),
               (2, 'sjc-1', NULL, 1.5, false, '2026-12-02 09:30:00.250+01');",
        )
        .await
        .unwrap();
    let table = plan_table(&decl(
        "clusters",
        &format!(
            "{{type: postgres, connection: '{url}', query: 'SELECT id, name, region, capacity, active, since FROM lookup_clusters ORDER BY id', \
             schema: {{id: int, name: string, region: string, capacity: float, active: bool, since: timestamp}}, refresh: 100ms}}"
        ),
    ))
    .await
    .unwrap();
    let stop = CancellationToken::new();
    start(std::slice::from_ref(&table), &stop).await.unwrap();
    assert_eq!(
        rows(&table),
        "+----+-------+--------+----------+--------+--------------------------+\n\
         | id | name  | region | capacity | active | since                    |\n\
         +----+-------+--------+----------+--------+--------------------------+\n\
         | 1  | ams-1 | emea   | 0.75     | true   | 2026-12-01T08:00:00Z     |\n\
         | 2  | sjc-1 |        | 1.5      | false  | 2026-12-02T08:30:00.250Z |\n\
         +----+-------+--------+----------+--------+--------------------------+"
    );

    client.batch_execute("UPDATE lookup_clusters SET region = 'amer' WHERE id = 2").await.unwrap();
    wait_for("the query to run again", || rows(&table).contains("| 2  | sjc-1 | amer   |")).await;

    // The query fails: the table keeps what it had, and the error says why.
    client.batch_execute("DROP TABLE lookup_clusters").await.unwrap();
    let failures = table.stats.failures.load(Ordering::Relaxed);
    wait_for("a failed refresh", || table.stats.failures.load(Ordering::Relaxed) > failures).await;
    assert!(rows(&table).contains("| 2  | sjc-1 | amer   |"));
    let error = table.stats.last_error.lock().unwrap().clone().unwrap();
    assert!(error.contains("relation \"lookup_clusters\" does not exist"), "{error}");
    stop.cancel();
}

#[tokio::test]
async fn a_table_that_cannot_load_at_start_is_named_with_the_reason() {
    let table = plan_table(&decl(
        "clusters",
        "{type: postgres, connection: 'host=127.0.0.1 port=1 user=nobody password=hunter2', query: SELECT 1, schema: {n: int}, timeout: 2s}",
    ))
    .await
    .unwrap();
    let (name, reason) = start(std::slice::from_ref(&table), &CancellationToken::new()).await.unwrap_err();
    assert_eq!(name, "clusters");
    assert!(reason.starts_with("table `clusters` cannot load: connecting to PostgreSQL: "), "{reason}");
    assert!(!reason.contains("hunter2"), "{reason}");
}

#[tokio::test]
async fn declared_csv_columns_are_found_by_their_header_names_in_any_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sites.csv");
    std::fs::write(&path, "region,racks,target,note\nemea,4,a.example,x\n").unwrap();
    let t = plan_table(&decl(
        "sites",
        &format!("{{type: file, path: {}, schema: {{target: string, racks: int, region: string}}, refresh: 50ms}}", path.display()),
    ))
    .await
    .unwrap();
    assert_eq!(columns(&t), ["target Utf8", "racks Int64", "region Utf8"]);
    let stop = CancellationToken::new();
    start(std::slice::from_ref(&t), &stop).await.unwrap();
    assert!(rows(&t).contains("| a.example | 4     | emea   |"), "{}", rows(&t));
    // The file's columns move around: still found by name.
    let first = t.table.snapshot().version;
    rewrite(&path, "target,note,region,racks\nb.example,y,amer,7\n");
    wait_for("the refresh", || t.table.snapshot().version != first).await;
    assert!(rows(&t).contains("| b.example | 7     | amer   |"), "{}", rows(&t));
    stop.cancel();
    assert_eq!(
        plan_err("sites", &format!("{{type: file, path: {}, schema: {{site: string}}}}", path.display())).await,
        format!("schema: `site` is not a column of `{}` (its header: `target`, `note`, `region`, `racks`)", path.display())
    );
}

#[tokio::test]
async fn a_json_lines_table_nested_30000_deep_is_refused_with_the_line_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("deep.jsonl");
    let deep = format!("{{\"a\": {}1{}}}", "[".repeat(30_000), "]".repeat(30_000));
    std::fs::write(&path, format!("{{\"a\": 1}}\n{deep}\n")).unwrap();
    assert_eq!(
        plan_err("deep", &format!("{{type: file, path: {}}}", path.display())).await,
        format!("path: `{}` line 2: JSON nested deeper than 64 levels (the limit)", path.display())
    );
    // A file that was fine at start and is replaced by a deep one: a failed refresh, not a crash.
    std::fs::write(&path, "{\"a\": 1}\n").unwrap();
    let t = plan_table(&decl("deep", &format!("{{type: file, path: {}, refresh: 50ms}}", path.display()))).await.unwrap();
    let stop = CancellationToken::new();
    start(std::slice::from_ref(&t), &stop).await.unwrap();
    rewrite(&path, &format!("{deep}\n"));
    wait_for("the failed refresh", || t.stats.failures.load(Ordering::Relaxed) == 1).await;
    assert_eq!(t.table.snapshot().rows, 1);
    stop.cancel();
}

/// A latest table may keep a transform's output (a state computed in SQL): the transforms that
/// read it are planned after that transform, whatever the file's order, and see its newest rows.
#[tokio::test]
async fn a_latest_table_keeps_a_transforms_output_for_the_transforms_that_read_it() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = dir.path().join("p.yaml");
    std::fs::write(
        &pipeline,
        r#"
sources:
  srt:
    type: http_server
    address: 127.0.0.1:0
    schema: {ts: timestamp, session: string, connected: int}
  probes:
    type: http_server
    address: 127.0.0.1:0
    schema: {ts: timestamp, session: string}
tables:
  links_now:
    type: latest
    input: link_state
    key: [session]
transforms:
  probes_with_link:
    inputs: [probes]
    sql: SELECT p.session, l.state, l.ts AS state_ts FROM probes p LEFT JOIN links_now l ON l.session = p.session
  link_state:
    inputs: [srt]
    sql: SELECT ts, session, CASE WHEN connected = 1 THEN 'up' ELSE 'down' END AS state FROM srt
sinks:
  out: {type: console, inputs: [probes_with_link]}
tests:
  - name: probes see each session's newest state
    steps:
      - input: srt
        rows:
          - {ts: "2026-11-22T10:00:01Z", session: a, connected: 1}
          - {ts: "2026-11-22T10:00:02Z", session: b, connected: 1}
          - {ts: "2026-11-22T10:00:03Z", session: a, connected: 0}
      - input: probes
        rows:
          - {ts: "2026-11-22T10:00:04Z", session: a}
          - {ts: "2026-11-22T10:00:05Z", session: b}
          - {ts: "2026-11-22T10:00:06Z", session: c}
    expect:
      probes_with_link:
        - {session: a, state: down, state_ts: "2026-11-22T10:00:03Z"}
        - {session: b, state: up, state_ts: "2026-11-22T10:00:02Z"}
        - {session: c, state: null, state_ts: null}
      links_now:
        - {ts: "2026-11-22T10:00:03Z", session: a, state: down}
        - {ts: "2026-11-22T10:00:02Z", session: b, state: up}
"#,
    )
    .unwrap();
    let report = crate::pipeline_tests::test_file(&pipeline).await.unwrap();
    assert!(report.passed(), "{}", report.render());
    assert_eq!(report.results[0].checked, 2);
}
