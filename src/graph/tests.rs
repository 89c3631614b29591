use super::*;

async fn check(text: &str) -> Result<Plan, Vec<String>> {
    let file = PipelineFile::parse("p.yaml", text, &|_| None).map_err(|d| d.0.iter().map(|d| d.to_string()).collect::<Vec<_>>())?;
    plan(&file, &Registry::builtin()).await.map_err(|d| d.0.iter().map(|d| d.to_string()).collect())
}

const SOURCES: &str = "sources:\n  probes: {type: demo, kind: probes}\n";

#[tokio::test]
async fn a_valid_pipeline_plans_every_component_with_schemas() {
    let p = check(&format!(
        "{SOURCES}transforms:\n  slow:\n    inputs: [probes]\n    sql: SELECT site, response_time_ms FROM probes WHERE NOT in_sla\n  errs:\n    inputs: [slow.dead_letter]\n    sql: SELECT reason FROM slow.dead_letter\nsinks:\n  out: {{type: console, inputs: [slow, errs]}}\n"
    ))
    .await
    .unwrap();
    assert_eq!(p.transforms.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(), ["slow", "errs"]);
    let slow: Vec<_> = p.outputs["slow"].fields().iter().map(|f| f.name().clone()).collect();
    assert_eq!(slow, ["site", "response_time_ms"]);
    assert_eq!(p.sinks[0].inputs.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(), ["slow", "errs"]);
}

#[tokio::test]
async fn unknown_types_list_the_valid_ones() {
    let errs = check("sources:\n  a: {type: dmeo}\n").await.unwrap_err();
    assert_eq!(errs, ["p.yaml:2:7: sources.a.type: unknown source type `dmeo`, expected one of `demo`, `file`, `http_server`, `site_probe`, `kafka`, `badge_events`, `srt_stats`, `webex_mesh`, `parquet`, `prometheus_scrape`, `otlp`, `nats`, `mqtt`, `amqp`"]);
}

#[tokio::test]
async fn plugin_option_errors_point_at_the_option() {
    let errs = check("sources:\n  a:\n    type: demo\n    kind: probes\n    rat: 5\n").await.unwrap_err();
    assert_eq!(errs, ["p.yaml:5:5: sources.a.rat: unknown field `rat`, expected one of `kind`, `rate`, `batch_size`, `count`, `seed`"]);
    let errs = check("sources:\n  a:\n    type: demo\n    kind: probes\n    rate: fast\n").await.unwrap_err();
    assert_eq!(errs, ["p.yaml:5:5: sources.a.rate: invalid type: string \"fast\", expected f64"]);
    let errs = check("sources:\n  a:\n    type: demo\n    rate: 5\n").await.unwrap_err();
    assert_eq!(errs, ["p.yaml:2:3: sources.a: missing field `kind`"]);
}

#[tokio::test]
async fn dangling_inputs_and_cycles_are_rejected() {
    let errs = check(&format!("{SOURCES}sinks:\n  out: {{type: console, inputs: [probez]}}\n")).await.unwrap_err();
    assert_eq!(errs, ["p.yaml:4:33: sinks.out.inputs[0]: unknown input `probez`, expected one of `probes` (or `<id>.dead_letter`)"]);
    let errs = check(&format!(
        "{SOURCES}transforms:\n  a:\n    inputs: [probes, b]\n    sql: SELECT 1\n  b:\n    inputs: [a]\n    sql: SELECT 1\n"
    ))
    .await
    .unwrap_err();
    assert_eq!(errs, ["p.yaml:8:5: transforms.b.inputs: cycle in the pipeline graph: a → b → a (a component may not consume its own output, directly or indirectly)"]);
}

#[tokio::test]
async fn sql_that_does_not_plan_names_the_column() {
    let errs = check(&format!("{SOURCES}transforms:\n  t:\n    inputs: [probes]\n    sql: SELECT sight FROM probes\n")).await.unwrap_err();
    assert_eq!(errs.len(), 1);
    assert!(errs[0].starts_with("p.yaml:6:5: transforms.t.sql: SQL does not plan: Schema error: No field named sight."), "{}", errs[0]);
    assert!(errs[0].ends_with("(tables: `probes`)"), "{}", errs[0]);
}

#[tokio::test]
async fn sinks_are_checked_against_their_input_schema() {
    let errs = check(&format!("{SOURCES}transforms:\n  t:\n    inputs: [probes]\n    sql: SELECT site FROM probes\nsinks:\n  pq: {{type: parquet, inputs: [t], path: /tmp/x}}\n")).await.unwrap_err();
    assert_eq!(errs, ["p.yaml:8:3: sinks.pq.time_column: column `ts` is not in the input (columns: site); set `time_column`, or `partition_by_date: false`"]);
}

#[test]
fn mermaid_shows_components_and_named_edges() {
    let file = PipelineFile::parse(
        "p.yaml",
        "sources:\n  a: {type: demo}\ntransforms:\n  t: {inputs: [a], sql: x}\nsinks:\n  s: {type: console, inputs: [t, t.dead_letter]}\n",
        &|_| None,
    )
    .unwrap();
    assert_eq!(
        mermaid::render(&file.components),
        "flowchart LR\n  a([\"a<br/><small>demo</small>\"])\n  t[\"t<br/><small>sql</small>\"]\n  s[[\"s<br/><small>console</small>\"]]\n  a --> t\n  t --> s\n  t -- dead_letter --> s\n"
    );
}

#[tokio::test]
async fn a_join_of_two_inputs_needs_a_window() {
    const TWO: &str = "sources:\n  a: {type: demo, kind: probes}\n  b: {type: demo, kind: probes}\ntransforms:\n  t:\n    inputs: [a, b]\n";
    let refused = "joins `a` with `b`, which only works in a windowed transform: without `window:` the SQL runs once per \
                   arriving batch, which holds rows of one input only, so the join would never match. Add `window: \
                   {tumbling: 1m}` (any window) to join the rows of each window, or `interval_join: {within: 30s}` to pair rows \
                   whose times are that close; to merge inputs, use UNION ALL";
    for sql in [
        "SELECT a.site, b.response_time_ms FROM a JOIN b ON a.site = b.site",
        "SELECT a.site FROM a, b",
        "SELECT site FROM a WHERE site IN (SELECT site FROM b WHERE NOT in_sla)",
    ] {
        let errs = check(&format!("{TWO}    sql: {sql}\n")).await.unwrap_err();
        assert_eq!(errs, [format!("p.yaml:7:5: transforms.t.sql: {refused}")], "{sql}");
    }
    // Per-batch SQL that reads one input at a time, a self-join, and a windowed join all plan.
    for ok in [
        "    sql: SELECT site FROM a UNION ALL SELECT site FROM b\n".to_string(),
        "    sql: SELECT x.site FROM a x JOIN a y ON x.site = y.site\n".to_string(),
        "    window: {tumbling: 1m}\n    sql: SELECT a.window_start, count(*) AS n FROM a JOIN b ON a.site = b.site AND a.window_start = b.window_start GROUP BY a.window_start\n".to_string(),
    ] {
        check(&format!("{TWO}{ok}")).await.unwrap_or_else(|e| panic!("{ok}: {e:?}"));
    }
}

#[tokio::test]
async fn retry_and_dead_letters_are_the_engines_options_and_are_checked() {
    let p = check(&format!("{SOURCES}dead_letters: {{path: /var/lib/t/dl}}\nsinks:\n  out: {{type: console, inputs: [probes], retry: {{max: 5s, max_elapsed: 10m}}}}\n"))
        .await
        .unwrap();
    assert_eq!(p.dead_letter_dir, std::path::PathBuf::from("/var/lib/t/dl"));
    assert_eq!(p.sinks[0].retry.max.0, std::time::Duration::from_secs(5));
    assert_eq!(p.sinks[0].retry.max_elapsed.map(|d| d.0), Some(std::time::Duration::from_secs(600)));
    let errs =
        check(&format!("{SOURCES}sinks:\n  out: {{type: console, inputs: [probes], retry: {{max_elapsd: 10m}}}}\n")).await.unwrap_err();
    assert_eq!(
        errs,
        ["p.yaml:4:50: sinks.out.retry.max_elapsd: unknown field `max_elapsd`, expected one of `initial`, `max`, `max_elapsed`"]
    );
    let errs =
        check(&format!("{SOURCES}dead_letters: {{dir: x}}\nsinks:\n  out: {{type: console, inputs: [probes]}}\n")).await.unwrap_err();
    assert_eq!(errs, ["p.yaml:3:16: dead_letters.dir: unknown field `dir`, expected `path`"]);
}

#[tokio::test]
async fn a_source_buffer_is_the_engines_option_and_is_checked() {
    let sink = "sinks:\n  out: {type: console, inputs: [probes]}\n";
    let p =
        check(&format!("sources:\n  probes: {{type: demo, kind: probes, buffer: {{type: disk, max_size: 2MiB, path: /tmp/b}}}}\n{sink}"))
            .await
            .unwrap();
    let SourceBuffer::Disk(disk) = &p.sources[0].buffer else { panic!("a disk buffer") };
    assert_eq!((disk.max_size.0, disk.path.as_deref()), (2 << 20, Some(std::path::Path::new("/tmp/b"))));
    assert_eq!(check(&format!("{SOURCES}{sink}")).await.unwrap().sources[0].buffer, SourceBuffer::Memory);
    let errs = check(&format!("sources:\n  probes: {{type: demo, kind: probes, buffer: {{type: disk, max_size: 10}}}}\n{sink}"))
        .await
        .unwrap_err();
    assert_eq!(errs, ["p.yaml:2:59: sources.probes.buffer.max_size: must be at least 1MiB, got 10 bytes"]);
    let errs = check(&format!("sources:\n  probes: {{type: demo, kind: probes, buffer: {{type: tape}}}}\n{sink}")).await.unwrap_err();
    assert_eq!(errs.len(), 1);
    assert!(
        errs[0].starts_with("p.yaml:2:")
            && errs[0].contains("sources.probes.buffer")
            && errs[0].contains("unknown variant `tape`, expected `memory` or `disk`"),
        "{errs:?}"
    );
}

/// An `http_server` with a disk buffer, and `{sinks}` after it.
fn exactly_once_pipeline(top: &str, buffer: &str, rest: &str) -> String {
    format!(
        "{top}sources:\n  ingest:\n    type: http_server\n    address: 127.0.0.1:0\n    schema: {{ts: timestamp, id: int}}\n{buffer}{rest}"
    )
}

const DISK: &str = "    buffer: {type: disk}\n";
const DB: &str = "sinks:\n  db: {type: timescale, inputs: [ingest], connection: 'host=localhost', table: t}\n";

#[tokio::test]
async fn exactly_once_plans_a_disk_buffered_source_into_timescale() {
    let p = check(&exactly_once_pipeline("delivery: exactly_once\n", DISK, DB)).await.unwrap();
    assert_eq!(p.sinks[0].exactly_once, Some(ExactlyOnce { streams: vec!["ingest".into()] }));
    let p = check(&exactly_once_pipeline("", DISK, DB)).await.unwrap();
    assert!(p.sinks[0].exactly_once.is_none(), "at-least-once is the default");
    // A Delta table stores positions too; plain Parquet files do not (refused below).
    let delta = "sinks:\n  lake: {type: parquet, format: delta, inputs: [ingest], path: /tmp/lake}\n";
    let p = check(&exactly_once_pipeline("delivery: exactly_once\n", DISK, delta)).await.unwrap();
    assert_eq!(p.sinks[0].exactly_once, Some(ExactlyOnce { streams: vec!["ingest".into()] }));
    // Through a SQL transform without a window, too.
    let sql = "transforms:\n  keep:\n    inputs: [ingest]\n    sql: SELECT * FROM ingest WHERE id > 0\nsinks:\n  db: {type: timescale, inputs: [keep], connection: 'host=localhost', table: t}\n";
    assert!(check(&exactly_once_pipeline("delivery: exactly_once\n", DISK, sql)).await.unwrap().sinks[0].exactly_once.is_some());
    // Through a window: its emissions are a stream of their own, and it is told to emit positions.
    let p = check(&exactly_once_pipeline("delivery: exactly_once\n", DISK, WINDOWED)).await.unwrap();
    assert_eq!(p.sinks[0].exactly_once, Some(ExactlyOnce { streams: vec!["per_minute".into()] }));
    assert!(p.transforms[0].window.as_ref().unwrap().exactly_once);
    let p = check(&exactly_once_pipeline("", DISK, WINDOWED)).await.unwrap();
    assert!(!p.transforms[0].window.as_ref().unwrap().exactly_once, "at least once, a window emits no positions");
}

#[tokio::test]
async fn exactly_once_takes_a_kafka_source_by_its_own_positions_and_refuses_its_disk_buffer() {
    let kafka = "delivery: exactly_once\nsources:\n  events:\n    type: kafka\n    bootstrap_servers: 127.0.0.1:9\n    topics: [e]\n    group_id: g\n    schema: {ts: timestamp, id: int}\n";
    let db = DB.replace("[ingest]", "[events]");
    let p = check(&format!("{kafka}{db}")).await.unwrap();
    assert_eq!(p.sinks[0].exactly_once, Some(ExactlyOnce { streams: vec!["events".into()] }));
    // Into a window, too: its offsets are committed only once the window's rows are written.
    let windowed = WINDOWED.replace("ingest", "events");
    assert!(check(&format!("{kafka}{windowed}")).await.unwrap().transforms[0].window.as_ref().unwrap().exactly_once);
    let errs = check(&format!("{kafka}    buffer: {{type: disk}}\n{db}")).await.unwrap_err();
    assert_eq!(errs, ["p.yaml:1:1: delivery: sink `db` cannot be written exactly once: source `events` (kafka) has positions of its own, which sinks store; its disk buffer would send again after a crash rows it had stored, so remove `buffer: {type: disk}`; or set `delivery: at_least_once` on it"]);
}

/// Badge-style counts per minute from the disk-buffered `ingest`, into timescale.
const WINDOWED: &str = "transforms:\n  per_minute:\n    inputs: [ingest]\n    window: {tumbling: 1m}\n    sql: SELECT window_start, count(*) AS n FROM ingest GROUP BY window_start\nsinks:\n  db: {type: timescale, inputs: [per_minute], connection: 'host=localhost', table: t, time_column: window_start}\n";

#[tokio::test]
async fn exactly_once_is_refused_naming_what_cannot_give_it() {
    let eo = "delivery: exactly_once\n";
    let errs = check(&exactly_once_pipeline(eo, "", DB)).await.unwrap_err();
    assert_eq!(errs, ["p.yaml:1:1: delivery: sink `db` cannot be written exactly once: source `ingest` (http_server) cannot replay what it sent; give it `buffer: {type: disk}`, whose positions the sink stores; or set `delivery: at_least_once` on it"]);

    let files = "sinks:\n  out: {type: file, inputs: [ingest], path: /tmp/out.ndjson}\n";
    let errs = check(&exactly_once_pipeline(eo, DISK, files)).await.unwrap_err();
    assert_eq!(errs, ["p.yaml:1:1: delivery: sink `out` cannot be written exactly once: the `file` sink does not store positions with its rows (exactly-once sinks: `timescale`, `parquet`); or set `delivery: at_least_once` on it"]);
    // The sink's own `delivery:` overrides the pipeline's.
    let files_at_least_once = "sinks:\n  out: {type: file, inputs: [ingest], path: /tmp/out.ndjson, delivery: at_least_once}\n";
    assert!(check(&exactly_once_pipeline(eo, DISK, files_at_least_once)).await.unwrap().sinks[0].exactly_once.is_none());
    let lake = "sinks:\n  lake: {type: parquet, inputs: [ingest], path: /tmp/lake}\n";
    assert!(
        check(&exactly_once_pipeline(eo, DISK, lake)).await.unwrap().sinks[0].exactly_once.is_some(),
        "plain Parquet files store positions in their footers"
    );

    // A window's own inputs must replay (its open windows are rebuilt from them), by one window.
    let errs = check(&exactly_once_pipeline(eo, "", WINDOWED)).await.unwrap_err();
    assert_eq!(errs, ["p.yaml:1:1: delivery: sink `db` cannot be written exactly once: source `ingest` (http_server) cannot replay what it sent; give it `buffer: {type: disk}`, whose positions the sink stores; or set `delivery: at_least_once` on it"]);
    let late = WINDOWED.replace(
        "inputs: [per_minute], connection: 'host=localhost', table: t, time_column: window_start",
        "inputs: [per_minute.late], connection: 'host=localhost', table: t",
    );
    let errs = check(&exactly_once_pipeline(eo, DISK, &late)).await.unwrap_err();
    assert_eq!(errs, ["p.yaml:1:1: delivery: sink `db` cannot be written exactly once: its input `per_minute.late` carries late rows, which are in no emitted window and have no position; or set `delivery: at_least_once` on it"]);
    let two_windows = "transforms:\n  per_second:\n    inputs: [ingest]\n    window: {tumbling: 1s}\n    sql: SELECT window_end AS ts, count(*) AS id FROM ingest GROUP BY window_end\n  per_minute:\n    inputs: [per_second]\n    window: {tumbling: 1m}\n    sql: SELECT window_start, sum(id) AS n FROM per_second GROUP BY window_start\nsinks:\n  db: {type: timescale, inputs: [per_minute], connection: 'host=localhost', table: t, time_column: window_start}\n";
    let errs = check(&exactly_once_pipeline(eo, DISK, two_windows)).await.unwrap_err();
    assert_eq!(errs, ["p.yaml:1:1: delivery: sink `db` cannot be written exactly once: windowed transform `per_minute` reads windowed transform `per_second`: one window per path can be exactly once; or set `delivery: at_least_once` on it"]);
    let twice = "transforms:\n  per_minute:\n    inputs: [ingest]\n    window: {tumbling: 1m}\n    sql: SELECT window_start, count(*) AS n FROM ingest GROUP BY window_start\n  again:\n    inputs: [per_minute]\n    sql: SELECT * FROM per_minute\nsinks:\n  db: {type: timescale, inputs: [per_minute, again], connection: 'host=localhost', table: t, time_column: window_start}\n";
    let errs = check(&exactly_once_pipeline(eo, DISK, twice)).await.unwrap_err();
    assert_eq!(errs, ["p.yaml:1:1: delivery: sink `db` cannot be written exactly once: windowed transform `per_minute` reaches it by 2 paths (through `again`, `per_minute`), and one position per stream cannot say which path's rows were written; or set `delivery: at_least_once` on it"]);

    let two_paths = "transforms:\n  a:\n    inputs: [ingest]\n    sql: SELECT * FROM ingest WHERE id > 0\n  b:\n    inputs: [ingest]\n    sql: SELECT * FROM ingest WHERE id <= 0\nsinks:\n  db: {type: timescale, inputs: [a, b], connection: 'host=localhost', table: t}\n";
    let errs = check(&exactly_once_pipeline(eo, DISK, two_paths)).await.unwrap_err();
    assert_eq!(errs, ["p.yaml:1:1: delivery: sink `db` cannot be written exactly once: source `ingest` reaches it by 2 paths (through `a`, `b`), and one position per stream cannot say which path's rows were written; or set `delivery: at_least_once` on it"]);

    let dead = "sinks:\n  db: {type: timescale, inputs: [ingest], connection: 'host=localhost', table: t}\n  errors: {type: timescale, inputs: [db.dead_letter], connection: 'host=localhost', table: e, delivery: exactly_once}\n";
    let errs = check(&exactly_once_pipeline("", DISK, dead)).await.unwrap_err();
    assert_eq!(errs, ["p.yaml:9:95: sinks.errors.delivery: sink `errors` cannot be written exactly once: its input `db.dead_letter` carries dead letters, which have no position in a source's stream; or set `delivery: at_least_once` on it"]);

    let amqp = "delivery: exactly_once\nsources:\n  ingest:\n    type: amqp\n    url: 'amqp://127.0.0.1:5672/%2f'\n    queue: q\n    schema: {ts: timestamp, id: int}\n    buffer: {type: disk}\n";
    let errs = check(&format!("{amqp}{DB}")).await.unwrap_err();
    assert_eq!(errs, ["p.yaml:1:1: delivery: sink `db` cannot be written exactly once: source `ingest` (amqp) saves its own place once its rows are acknowledged, so after a crash it sends again rows its disk buffer had stored; its own positions are not stored by sinks yet; or set `delivery: at_least_once` on it"]);
    // A file replays with positions of its own: its disk buffer would be a second replay.
    let file = "delivery: exactly_once\nsources:\n  ingest:\n    type: file\n    path: /tmp/in.jsonl\n    schema: {ts: timestamp, id: int}\n    buffer: {type: disk}\n";
    let errs = check(&format!("{file}{DB}")).await.unwrap_err();
    assert_eq!(errs, ["p.yaml:1:1: delivery: sink `db` cannot be written exactly once: source `ingest` (file) has positions of its own, which sinks store; its disk buffer would send again after a crash rows it had stored, so remove `buffer: {type: disk}`; or set `delivery: at_least_once` on it"]);

    let errs = check(&exactly_once_pipeline("delivery: twice\n", DISK, DB)).await.unwrap_err();
    assert_eq!(errs, ["p.yaml:1:1: delivery: unknown variant `twice`, expected `at_least_once` or `exactly_once`"]);
}

#[tokio::test]
async fn tables_join_any_transform_without_a_window_and_sql_is_planned_against_their_columns() {
    let dir = tempfile::tempdir().unwrap();
    let sites = dir.path().join("sites.csv");
    std::fs::write(&sites, "site,region\na,emea\n").unwrap();
    let tables = format!("tables:\n  sites: {{type: file, path: {}}}\n", sites.display());
    let enrich = "SELECT p.site, s.region FROM probes p LEFT JOIN sites s ON p.site = s.site";
    let p = check(&format!("{SOURCES}{tables}transforms:\n  t:\n    inputs: [probes]\n    sql: {enrich}\n")).await.unwrap();
    assert_eq!(p.tables.iter().map(|t| t.name()).collect::<Vec<_>>(), ["sites"]);
    let columns: Vec<String> = p.outputs["t"].fields().iter().map(|f| format!("{} {}", f.name(), f.data_type())).collect();
    assert_eq!(columns, ["site Utf8", "region Utf8"]);
    // Windowed too.
    let windowed = "SELECT p.window_start, s.region, count(*) AS n FROM probes p JOIN sites s ON p.site = s.site GROUP BY 1, 2";
    check(&format!("{SOURCES}{tables}transforms:\n  t:\n    inputs: [probes]\n    window: {{tumbling: 1m}}\n    sql: {windowed}\n"))
        .await
        .unwrap();
    // A column the table does not have, named with the tables the SQL could read.
    let errs = check(&format!(
        "{SOURCES}{tables}transforms:\n  t:\n    inputs: [probes]\n    sql: SELECT p.site, s.country FROM probes p JOIN sites s ON p.site = s.site\n"
    ))
    .await
    .unwrap_err();
    assert_eq!(errs.len(), 1);
    assert!(errs[0].starts_with("p.yaml:8:5: transforms.t.sql: SQL does not plan: Schema error: No field named s.country."), "{}", errs[0]);
    assert!(errs[0].ends_with("(tables: `probes`, `sites`)"), "{}", errs[0]);
}

#[tokio::test]
async fn table_declarations_are_checked_where_they_are_written() {
    let errs = check(&format!("{SOURCES}tables:\n  sites: {{type: file, path: /nonexistent/sites.csv}}\n")).await.unwrap_err();
    assert_eq!(errs, ["p.yaml:4:23: tables.sites.path: `/nonexistent/sites.csv` is not a file"]);
    let errs = check(&format!("{SOURCES}tables:\n  probes: {{type: file, path: x.csv}}\n")).await.unwrap_err();
    assert_eq!(
        errs,
        ["p.yaml:4:3: tables.probes: table name `probes` is already the id of the source `probes`; SQL could not tell them apart"]
    );
    let errs = check(&format!("{SOURCES}tables:\n  Sites: {{type: file, path: x.csv}}\n")).await.unwrap_err();
    assert_eq!(
        errs,
        ["p.yaml:4:3: tables.Sites: invalid table name `Sites`: use lowercase letters, digits and `_`, starting with a letter or `_` (it is an SQL table name)"]
    );
    let errs = check(&format!("{SOURCES}tables:\n  sites: {{type: file}}\n")).await.unwrap_err();
    assert_eq!(errs, ["p.yaml:4:3: tables.sites: missing field `path`"]);
}

#[tokio::test]
async fn an_interval_join_pairs_two_inputs_and_says_what_is_wrong_where() {
    const TWO: &str = "sources:\n  a: {type: demo, kind: probes}\n  b: {type: demo, kind: probes}\ntransforms:\n  t:\n    inputs: [a, b]\n";
    let join = "    sql: SELECT a.site FROM a JOIN b ON a.site = b.site AND b.ts BETWEEN a.ts - INTERVAL '5 seconds' AND a.ts\n";
    let p = check(&format!("{TWO}    interval_join: {{within: 5s}}\n{join}")).await.unwrap();
    assert!(p.transforms[0].interval.is_some());
    assert!(p.outputs.contains_key("t.late"), "late rows have an output, as windows do");
    let errs = check(&format!("{TWO}    interval_join: {{within: 5s}}\n    sql: SELECT site FROM a UNION ALL SELECT site FROM b\n"))
        .await
        .unwrap_err();
    assert_eq!(errs, ["p.yaml:8:5: transforms.t.sql: an interval join's SQL joins its two inputs (`a` and `b`), on their time columns and anything else"]);
    let errs = check(&format!("{TWO}    interval_join: {{within: 5s, time_column: at}}\n{join}")).await.unwrap_err();
    assert_eq!(errs, ["p.yaml:7:5: transforms.t.interval_join: input `a` has no time column `at` (set `interval_join.time_column`)"]);
    let errs = check(&format!("{TWO}    interval_join: {{within: 5s}}\n    window: {{tumbling: 1m}}\n{join}")).await.unwrap_err();
    assert_eq!(errs, ["p.yaml:7:5: transforms.t.interval_join: a transform has either `window:` or `interval_join:`, not both"]);
    // Its pairs have no place in a source's stream: no exactly-once sink behind it.
    let dir = tempfile::tempdir().unwrap();
    let exactly_once = format!(
        "{TWO}    interval_join: {{within: 5s}}\n{join}sinks:\n  lake: {{type: parquet, inputs: [t], path: {}, format: delta, partition_by_date: false, delivery: exactly_once}}\n",
        dir.path().display()
    );
    let errs = check(&exactly_once).await.unwrap_err();
    assert_eq!(errs.len(), 1);
    assert!(
        errs[0].contains("sink `lake` cannot be written exactly once: its input `t` comes from the interval join `t`, whose pairs carry no position in a source's stream"),
        "{}",
        errs[0]
    );
}

const TWO_SOURCES: &str = "sources:\n  probes: {type: demo, kind: probes}\n  badges: {type: demo, kind: badges}\n";

/// A latest table kept from a transform's output: its readers come after that transform (even
/// declared before it), a cycle through the table is refused at the reader's SQL, and an input
/// that is no output lists the transforms' outputs too.
#[tokio::test]
async fn a_latest_table_over_a_transform_orders_its_readers_and_refuses_a_cycle() {
    let p = check(&format!(
        "{TWO_SOURCES}tables:\n  last_site:\n    type: latest\n    input: per_site\n    key: [site]\ntransforms:\n  reader:\n    inputs: [badges]\n    sql: SELECT b.*, s.n FROM badges b LEFT JOIN last_site s ON s.site = b.channel\n  per_site:\n    inputs: [probes]\n    sql: SELECT site, 1 AS n FROM probes\n"
    ))
    .await
    .unwrap();
    assert_eq!(p.transforms.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(), ["per_site", "reader"]);
    let table: Vec<_> = p.tables[0].table.schema.fields().iter().map(|f| f.name().clone()).collect();
    assert_eq!(table, ["site", "n"]);
    assert_eq!(p.sinks.iter().map(|s| (s.id.as_str(), s.inputs[0].name.as_str())).collect::<Vec<_>>(), [("last_site", "per_site")]);

    let errs = check(&format!(
        "{TWO_SOURCES}tables:\n  last_site:\n    type: latest\n    input: per_site\n    key: [site]\ntransforms:\n  per_site:\n    inputs: [probes]\n    sql: SELECT p.site, 1 AS n FROM probes p JOIN last_site s ON s.site = p.site\n"
    ))
    .await
    .unwrap_err();
    assert_eq!(errs, ["p.yaml:12:5: transforms.per_site.sql: cycle in the pipeline graph: per_site → per_site (a transform may not read a latest table kept from its own output, directly or indirectly)"]);

    let errs = check(&format!("{TWO_SOURCES}tables:\n  last_site:\n    type: latest\n    input: per_sit\n    key: [site]\ntransforms:\n  per_site:\n    inputs: [probes]\n    sql: SELECT site FROM probes\n"))
        .await
        .unwrap_err();
    assert_eq!(errs.len(), 1);
    assert!(errs[0].starts_with("p.yaml:7:5: tables.last_site.input: `per_sit` is no output of this pipeline; a latest table reads one of `badges`, `per_site`, `probes`"), "{}", errs[0]);
}

#[tokio::test]
async fn partition_by_asks_the_kafka_source_to_rekey_and_says_what_is_wrong_where() {
    let kafka = |format: &str| {
        format!(
            "sources:\n  badges:\n    type: kafka\n    bootstrap_servers: k:9092\n    topics: [badges]\n    group_id: bp\n{format}\
             transforms:\n"
        )
    };
    let json = kafka("    schema: {badge: string, channel: string, ts: timestamp}\n");
    let window = |inputs: &str, by: &str| {
        format!(
            "  per_channel:\n    inputs: [{inputs}]\n    partition_by: [{by}]\n    window: {{tumbling: 1m}}\n    \
             sql: SELECT window_start, channel, count(*) AS n FROM {inputs} GROUP BY window_start, channel\n"
        )
    };
    let p = check(&format!("{json}{}", window("badges", "channel"))).await.unwrap();
    assert_eq!(
        p.transforms[0].window.as_ref().unwrap().repartitioned.as_deref(),
        Some("by channel through Kafka topic `bp-per_channel-repartition` (created with the partition count of `badges`), read by consumer group `bp-per_channel`")
    );
    let errs = check(&format!("{json}{}", window("badges", "chanel"))).await.unwrap_err();
    assert_eq!(errs, ["p.yaml:11:5: transforms.per_channel.partition_by: input `badges` has no column `chanel`"]);
    let errs = check(&format!("{json}  plain:\n    inputs: [badges]\n    partition_by: [channel]\n    sql: SELECT * FROM badges\n"))
        .await
        .unwrap_err();
    assert_eq!(errs, ["p.yaml:11:5: transforms.plain.partition_by: `partition_by` keys a window's rows; this transform has no `window:`"]);
    let errs = check(&format!(
        "{json}  kept:\n    inputs: [badges]\n    sql: SELECT * FROM badges WHERE badge <> ''\n{}",
        window("kept", "channel")
    ))
    .await
    .unwrap_err();
    assert_eq!(errs, ["p.yaml:14:5: transforms.per_channel.partition_by: rows are re-keyed as they leave a source, so a transform with `partition_by` reads one source's main output (it reads `kept`); put the window's filters in its own SQL"]);
    let errs = check(&format!("{json}{}{}", window("badges", "channel"), window("badges", "badge").replace("per_channel", "per_badge")))
        .await
        .unwrap_err();
    assert_eq!(errs, ["p.yaml:16:5: transforms.per_badge.partition_by: source `badges` cannot re-key its rows by it: it already re-keys its rows for another window (into `bp-per_channel-repartition`); one `partition_by` per source"]);
    // The API status monitor's `success` is computed after decoding: it cannot key the copies.
    let errs = check(&format!(
        "{}  per_outcome:\n    inputs: [badges]\n    partition_by: [success]\n    window: {{tumbling: 1m}}\n    \
         sql: SELECT window_start, success, count(*) AS n FROM badges GROUP BY window_start, success\n",
        kafka("    format: api_status_monitor\n")
    ))
    .await
    .unwrap_err();
    assert_eq!(errs, ["p.yaml:11:5: transforms.per_outcome.partition_by: source `badges` cannot re-key its rows by it: `success` is not in the messages as they arrive (the repartitioning reads it before any decoding step of `format`)"]);
    // One process reads every key of any other source: nothing to do, nothing said.
    let p = check(&format!(
        "{SOURCES}transforms:\n  per_site:\n    inputs: [probes]\n    partition_by: [site]\n    window: {{tumbling: 1m}}\n    \
         sql: SELECT window_start, site, count(*) AS n FROM probes GROUP BY window_start, site\n"
    ))
    .await
    .unwrap();
    assert_eq!(p.transforms[0].window.as_ref().unwrap().repartitioned, None);
}
