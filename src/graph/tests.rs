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
    assert_eq!(errs, ["p.yaml:2:7: sources.a.type: unknown source type `dmeo`, expected one of `demo`, `file`, `http_server`, `site_probe`, `kafka`, `badge_events`, `srt_stats`, `webex_mesh`, `parquet`"]);
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
                   {tumbling: 1m}` (any window) to join the rows of each window; to merge inputs, use UNION ALL";
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
