use super::*;

fn parse(text: &str) -> Result<PipelineFile, Vec<String>> {
    let env = |k: &str| match k {
        "RATE" => Some("25".to_string()),
        "TOKEN" => Some("s3cr3t-t0ken".to_string()),
        _ => None,
    };
    PipelineFile::parse("p.yaml", text, &env).map_err(|d| d.0.iter().map(|d| d.to_string()).collect())
}

#[test]
fn components_are_read_with_types_inputs_and_typed_interpolation() {
    let p = parse("sources:\n  gen: {type: demo, kind: probes, rate: \"${RATE}\"}\ntransforms:\n  slow:\n    inputs: [gen]\n    sql: SELECT 1\nsinks:\n  out: {type: console, inputs: [slow]}\n").unwrap();
    let ids: Vec<_> = p.components.iter().map(|c| (c.id.as_str(), c.kind, c.type_name.as_str())).collect();
    assert_eq!(ids, [("gen", Kind::Source, "demo"), ("slow", Kind::Transform, "sql"), ("out", Kind::Sink, "console")]);
    assert_eq!(p.get("gen").unwrap().options["rate"], serde_yaml::Value::Number(25.into()), "a lone reference is typed");
    assert_eq!(p.get("out").unwrap().inputs, ["slow"]);
}

#[test]
fn shape_errors_have_positions() {
    let errs = parse("sources:\n  gen: {kind: probes}\n  Bad-Id: {type: demo}\nsinkz: {}\n").unwrap_err();
    assert_eq!(
        errs,
        [
            "p.yaml:4:1: sinkz: unknown key `sinkz`, expected one of `sources`, `transforms`, `sinks`, `tables`, `delivery`, `admin`, `dead_letters`, `tests`",
            "p.yaml:2:3: sources.gen: missing field `type`",
            "p.yaml:3:3: sources.Bad-Id: invalid component id `Bad-Id`: use lowercase letters, digits and `_`, starting with a letter or `_` (ids are SQL table names)",
        ]
    );
}

#[test]
fn inputs_rules_and_duplicate_ids() {
    let errs = parse("sources:\n  a: {type: demo, inputs: [b]}\n  b: {type: demo}\nsinks:\n  b: {type: console, inputs: [a]}\n  c: {type: console}\n  d: {type: console, inputs: x}\n").unwrap_err();
    assert_eq!(
        errs,
        [
            "p.yaml:2:19: sources.a.inputs: sources do not take `inputs`",
            "p.yaml:5:3: sinks.b: component id `b` is already used by the source `b`; ids must be unique across sections",
            "p.yaml:6:3: sinks.c: missing field `inputs`",
            "p.yaml:7:22: sinks.d.inputs: invalid type: expected a list of component ids, e.g. `[probes]`",
        ]
    );
}

#[test]
fn syntax_errors_and_missing_variables() {
    let errs = parse("sources:\n  a: {type: demo\n").unwrap_err();
    assert_eq!(errs.len(), 1);
    assert!(errs[0].starts_with("p.yaml:3:1: invalid YAML: "), "{}", errs[0]);
    let errs = parse("sources:\n  a: {type: demo, url: \"${NOPE}\"}\n").unwrap_err();
    assert_eq!(errs, ["p.yaml:2:19: sources.a.url: environment variable `NOPE` is not set (write `${NOPE:-default}` for a default)"]);
}

#[test]
fn interpolated_secrets_are_redacted_from_messages() {
    let p = parse("sources:\n  a: {type: demo, token: \"${TOKEN}\"}\n").unwrap();
    let d = p.diag("sources.a.token", "invalid type: string \"s3cr3t-t0ken\", expected u64".into());
    assert_eq!(d.to_string(), "p.yaml:2:19: sources.a.token: invalid type: string \"***\", expected u64");
}
