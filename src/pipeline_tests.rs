//! `tributary test FILE`: the `tests:` of a pipeline file, run without any network.
//!
//! Each test feeds fixture rows into sources' outputs, runs the pipeline's transforms (windows
//! included, on a simulated processing clock) and compares what reached each transform, sink,
//! `.late` or `.dead_letter` output with the expected rows. Sources and sinks are built (so their
//! configs are checked) but never started. At the end of a test the run stops the way a clean
//! shutdown does: open windows are flushed, marked `partial: true`.
//!
//! ```yaml
//! tests:
//!   - name: slow probes per minute
//!     inputs:                       # rows per source output, fed in this order
//!       probes:
//!         - {ts: "2026-11-22T10:00:05Z", site: a, response_time_ms: 900}
//!         - {file: fixtures/more-probes.jsonl}      # JSON lines, relative to the pipeline file
//!     steps:                        # or, for interleaving and idle inputs:
//!       - {input: probes, rows: [...]}
//!       - {advance_clock: 2m}
//!     expect:                       # exact row count; each row compared on the columns given
//!       per_minute: [{site: a, probes: 1, partial: true}]
//!       per_minute.late: []
//! ```

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use chrono::{DateTime, SecondsFormat, Utc};
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, SchemaRef, TimeUnit, TimestampMicrosecondType};
use datafusion::arrow::json::ReaderBuilder;
use datafusion::arrow::util::display::array_value_to_string;
use serde::Deserialize;
use serde_json::{Map, Value as Json};
use tributary_sdk::dead_letter::{dead_letter_batch, letters_for_rows};
use tributary_sdk::{AckSet, HumanDuration, DEAD_LETTER_OUTPUT};

use crate::config::{Diagnostics, PipelineFile};
use crate::graph::{self, Plan, LATE_OUTPUT};
use crate::plugins::Registry;
use crate::sql::window::{Emission, WindowOperator};
use crate::sql::SqlTransform;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestCase {
    name: String,
    /// Source output → rows (or `{file: …}` entries), fed in order before `steps`.
    #[serde(default)]
    inputs: serde_yaml::Mapping,
    #[serde(default)]
    steps: Vec<Step>,
    /// Component or output → expected rows.
    #[serde(default)]
    expect: serde_yaml::Mapping,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Step {
    input: Option<String>,
    #[serde(default)]
    rows: Vec<Json>,
    file: Option<String>,
    /// Let simulated processing time pass (idle inputs' watermarks follow it).
    advance_clock: Option<HumanDuration>,
}

/// The outcome of one test.
#[derive(Debug)]
pub struct TestResult {
    pub name: String,
    /// Empty when the test passed; otherwise one entry per mismatching output.
    pub failures: Vec<String>,
    pub checked: usize,
}

/// The outcome of a file's tests.
#[derive(Debug)]
pub struct TestReport {
    pub file: String,
    pub results: Vec<TestResult>,
}

impl TestReport {
    pub fn passed(&self) -> bool {
        self.results.iter().all(|r| r.failures.is_empty())
    }

    pub fn render(&self) -> String {
        let mut out = format!("{}\n", self.file);
        if self.results.is_empty() {
            out.push_str("  no tests (add `tests:` to the pipeline file)\n");
        }
        for r in &self.results {
            if r.failures.is_empty() {
                out.push_str(&format!("  ok    {} ({} outputs checked)\n", r.name, r.checked));
            } else {
                out.push_str(&format!("  FAIL  {}\n", r.name));
                for f in &r.failures {
                    for line in f.lines() {
                        out.push_str(&format!("        {line}\n"));
                    }
                }
            }
        }
        let failed = self.results.iter().filter(|r| !r.failures.is_empty()).count();
        out.push_str(&format!("{} passed, {failed} failed\n", self.results.len() - failed));
        out
    }
}

/// Why a file's tests could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum TestFileError {
    #[error("{0}")]
    Invalid(#[from] Diagnostics),
    #[error("{0:#}")]
    Tests(anyhow::Error),
}

/// Run every test in the pipeline file at `path`.
pub async fn test_file(path: &Path) -> Result<TestReport, TestFileError> {
    let file = PipelineFile::load(path)?;
    let registry = Registry::builtin();
    // Validate once up front so a broken pipeline is reported as such, not per test.
    graph::plan(&file, &registry).await?;
    let cases: Vec<TestCase> = match &file.tests {
        None | Some(serde_yaml::Value::Null) => Vec::new(),
        Some(v) => serde_path_to_error::deserialize(v.clone())
            .map_err(|e| TestFileError::Tests(anyhow!("{}: tests{}: {}", file.file, path_suffix(&e.path().to_string()), e.inner())))?,
    };
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut results = Vec::new();
    for case in &cases {
        // A fresh plan per test: windows and SQL state start empty.
        let plan = graph::plan(&file, &registry).await?;
        let result = match run_case(plan, case, &base).await {
            Ok(r) => r,
            Err(e) => TestResult { name: case.name.clone(), failures: vec![format!("{e:#}")], checked: 0 },
        };
        results.push(result);
    }
    Ok(TestReport { file: file.file.clone(), results })
}

fn path_suffix(p: &str) -> String {
    if p.is_empty() || p == "." {
        String::new()
    } else if p.starts_with('[') {
        p.to_string()
    } else {
        format!(".{p}")
    }
}

enum Operator {
    Stateless(SqlTransform),
    Windowed(Box<WindowOperator>),
}

struct Harness {
    plan_outputs: BTreeMap<String, SchemaRef>,
    /// Output name → (consumer id, input index).
    consumers: HashMap<String, Vec<(String, usize)>>,
    operators: HashMap<String, Operator>,
    input_names: HashMap<String, Vec<String>>,
    /// Transforms in dependency order.
    order: Vec<String>,
    sinks: Vec<String>,
    /// What each output sent and each sink received.
    seen: BTreeMap<String, Vec<RecordBatch>>,
    queue: VecDeque<(String, RecordBatch)>,
    clock: i64,
}

async fn run_case(plan: Plan, case: &TestCase, base: &Path) -> anyhow::Result<TestResult> {
    let Plan { transforms, sinks, outputs, .. } = plan;
    let mut h = Harness {
        plan_outputs: outputs,
        consumers: HashMap::new(),
        operators: HashMap::new(),
        input_names: HashMap::new(),
        order: Vec::new(),
        sinks: sinks.iter().map(|s| s.id.clone()).collect(),
        seen: BTreeMap::new(),
        queue: VecDeque::new(),
        clock: 0,
    };
    for s in &sinks {
        for (i, r) in s.inputs.iter().enumerate() {
            h.consumers.entry(r.name.clone()).or_default().push((s.id.clone(), i));
        }
    }
    for t in transforms {
        for (i, r) in t.inputs.iter().enumerate() {
            h.consumers.entry(r.name.clone()).or_default().push((t.id.clone(), i));
        }
        h.input_names.insert(t.id.clone(), t.inputs.iter().map(|r| r.name.clone()).collect());
        h.order.push(t.id.clone());
        let op = match t.window {
            None => Operator::Stateless(t.sql),
            Some(w) => Operator::Windowed(Box::new(WindowOperator::new(w.spec, t.sql, &w.inputs, w.late_schema, 0)?)),
        };
        h.operators.insert(t.id, op);
    }
    for s in &h.sinks {
        h.seen.entry(s.clone()).or_default();
    }

    for (name, rows) in &case.inputs {
        let name = name.as_str().ok_or_else(|| anyhow!("`inputs` keys must be output names"))?;
        let entries: Vec<Json> = serde_yaml::from_value(rows.clone()).with_context(|| format!("inputs.{name}: expected a list of rows"))?;
        let batch = h.fixture_rows(name, &entries, base)?;
        h.feed(name, batch).await?;
    }
    for (i, step) in case.steps.iter().enumerate() {
        match (&step.input, step.advance_clock) {
            (Some(name), None) => {
                let mut entries = step.rows.clone();
                if let Some(f) = &step.file {
                    entries.push(serde_json::json!({ "file": f }));
                }
                let batch = h.fixture_rows(name, &entries, base).with_context(|| format!("steps[{i}]"))?;
                h.feed(name, batch).await?;
            }
            (None, Some(d)) => {
                h.clock += d.0.as_micros() as i64;
                h.tick().await?;
            }
            _ => bail!("steps[{i}]: a step is either `{{input: NAME, rows: [...]}}` (or `file:`) or `{{advance_clock: DURATION}}`"),
        }
    }
    h.finish().await?;

    let mut failures = Vec::new();
    for (name, expected) in &case.expect {
        let name = name.as_str().ok_or_else(|| anyhow!("`expect` keys must be component or output names"))?;
        let expected: Vec<Map<String, Json>> =
            serde_yaml::from_value(expected.clone()).with_context(|| format!("expect.{name}: expected a list of rows (mappings)"))?;
        let actual = match h.seen.get(name) {
            Some(b) => b.clone(),
            None if h.plan_outputs.contains_key(name) => Vec::new(),
            None => {
                let mut known: Vec<&String> = h.plan_outputs.keys().chain(h.sinks.iter()).collect();
                known.sort();
                known.dedup();
                bail!("expect.{name}: no such output or sink; known: {}", known.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "))
            }
        };
        if let Some(diff) = compare(name, &expected, &actual)? {
            failures.push(diff);
        }
    }
    Ok(TestResult { name: case.name.clone(), failures, checked: case.expect.len() })
}

impl Harness {
    /// Fixture rows (inline mappings or `{file: …}` JSON lines) as a batch of `output`'s schema.
    /// Columns left out are null, or zero / empty / false / the epoch where the schema forbids null.
    fn fixture_rows(&self, output: &str, entries: &[Json], base: &Path) -> anyhow::Result<RecordBatch> {
        let schema = self
            .plan_outputs
            .get(output)
            .ok_or_else(|| anyhow!("`{output}` is not an output of this pipeline (sources' outputs are `<id>` or `<id>.<output>`)"))?;
        let mut rows: Vec<Map<String, Json>> = Vec::new();
        for e in entries {
            match e {
                Json::Object(m) if m.len() == 1 && m.contains_key("file") => {
                    let rel = m["file"].as_str().ok_or_else(|| anyhow!("`file` must be a path"))?;
                    let path: PathBuf = base.join(rel);
                    let text = std::fs::read_to_string(&path).with_context(|| format!("reading fixture {}", path.display()))?;
                    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
                        match serde_json::from_str(line) {
                            Ok(Json::Object(m)) => rows.push(m),
                            _ => bail!("{}:{}: expected one JSON object per line", path.display(), n + 1),
                        }
                    }
                }
                Json::Object(m) => rows.push(m.clone()),
                other => bail!("input `{output}`: a row must be a mapping of column to value, got {other}"),
            }
        }
        let mut text = String::new();
        for (i, mut row) in rows.into_iter().enumerate() {
            for key in row.keys() {
                if schema.field_with_name(key).is_err() {
                    let cols: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                    bail!("input `{output}` row {i}: unknown column `{key}`; columns: {}", cols.join(", "));
                }
            }
            for f in schema.fields().iter().filter(|f| !f.is_nullable()) {
                if !row.contains_key(f.name()) || row[f.name()].is_null() {
                    row.insert(f.name().clone(), zero_value(f.data_type()));
                }
            }
            text.push_str(&Json::Object(row).to_string());
            text.push('\n');
        }
        let reader = ReaderBuilder::new(schema.clone()).build(text.as_bytes())?;
        let batches = reader.collect::<Result<Vec<_>, _>>().with_context(|| format!("input `{output}`: rows do not fit the schema"))?;
        Ok(datafusion::arrow::compute::concat_batches(schema, &batches)?)
    }

    async fn feed(&mut self, output: &str, batch: RecordBatch) -> anyhow::Result<()> {
        self.queue.push_back((output.to_string(), batch));
        self.drain().await
    }

    /// Deliver queued batches in arrival order until nothing moves.
    async fn drain(&mut self) -> anyhow::Result<()> {
        while let Some((output, batch)) = self.queue.pop_front() {
            self.seen.entry(output.clone()).or_default().push(batch.clone());
            for (consumer, input) in self.consumers.get(&output).cloned().unwrap_or_default() {
                if self.sinks.contains(&consumer) {
                    self.seen.entry(consumer).or_default().push(batch.clone());
                    continue;
                }
                let clock = self.clock;
                match self.operators.get_mut(&consumer).expect("transform") {
                    Operator::Stateless(sql) => match sql.execute(input, batch.clone()).await {
                        Ok(out) => out.into_iter().for_each(|b| self.queue.push_back((consumer.clone(), b))),
                        Err(e) => {
                            let reason = crate::sql::failure_reason(&self.input_names[&consumer][input], &e);
                            let dl = dead_letters(&consumer, &batch, &reason);
                            self.queue.push_back((format!("{consumer}.{DEAD_LETTER_OUTPUT}"), dl));
                        }
                    },
                    Operator::Windowed(op) => {
                        let accepted = op.accept(input, batch.clone(), AckSet::none(), clock)?;
                        if let Some((rows, _)) = accepted.late {
                            self.queue.push_back((format!("{consumer}.{LATE_OUTPUT}"), rows));
                        }
                        for (rows, _, reason) in accepted.rejected {
                            self.queue.push_back((format!("{consumer}.{DEAD_LETTER_OUTPUT}"), dead_letters(&consumer, &rows, &reason)));
                        }
                        let emission = op.advance(clock).await?;
                        self.emitted(&consumer, emission);
                    }
                }
            }
        }
        Ok(())
    }

    fn emitted(&mut self, id: &str, emission: Option<Emission>) {
        let Some(e) = emission else { return };
        match e.result {
            Ok(batches) => batches.into_iter().for_each(|b| self.queue.push_back((id.to_string(), b))),
            Err(failed) => {
                for (rows, reason) in failed {
                    self.queue.push_back((format!("{id}.{DEAD_LETTER_OUTPUT}"), dead_letters(id, &rows, &reason)));
                }
            }
        }
    }

    /// The clock moved: windowed transforms, upstream first, may close windows of idle inputs.
    async fn tick(&mut self) -> anyhow::Result<()> {
        for id in self.order.clone() {
            if let Some(Operator::Windowed(op)) = self.operators.get_mut(&id) {
                let emission = op.advance(self.clock).await?;
                self.emitted(&id, emission);
                self.drain().await?;
            }
        }
        Ok(())
    }

    /// A clean stop: open windows flushed as partial, upstream first.
    async fn finish(&mut self) -> anyhow::Result<()> {
        for id in self.order.clone() {
            if let Some(Operator::Windowed(op)) = self.operators.get_mut(&id) {
                let emission = op.finish().await?;
                self.emitted(&id, emission);
                self.drain().await?;
            }
        }
        Ok(())
    }
}

fn dead_letters(component: &str, rows: &RecordBatch, reason: &str) -> RecordBatch {
    dead_letter_batch(component, &letters_for_rows(rows, reason), 0)
}

fn zero_value(dt: &DataType) -> Json {
    match dt {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Json::String(String::new()),
        DataType::Boolean => Json::Bool(false),
        DataType::Timestamp(..) | DataType::Date32 | DataType::Date64 => Json::String("1970-01-01T00:00:00Z".into()),
        DataType::List(_) | DataType::LargeList(_) => Json::Array(Vec::new()),
        _ => Json::from(0),
    }
}

/// One cell as compared and shown: timestamps as RFC 3339 UTC, numbers as numbers.
fn cell(col: &dyn Array, i: usize) -> anyhow::Result<Json> {
    if col.is_null(i) {
        return Ok(Json::Null);
    }
    Ok(match col.data_type() {
        DataType::Timestamp(..) => {
            let us = cast(&col.slice(i, 1), &DataType::Timestamp(TimeUnit::Microsecond, None))?;
            let us = us.as_primitive::<TimestampMicrosecondType>().value(0);
            Json::String(
                DateTime::<Utc>::from_timestamp_micros(us).map(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true)).unwrap_or_default(),
            )
        }
        DataType::Boolean => Json::Bool(col.as_boolean().value(i)),
        dt if dt.is_integer() => serde_json::from_str(&array_value_to_string(col, i)?)?,
        dt if dt.is_floating() => {
            let f = cast(&col.slice(i, 1), &DataType::Float64)?;
            serde_json::Number::from_f64(f.as_primitive::<datafusion::arrow::datatypes::Float64Type>().value(0))
                .map(Json::Number)
                .unwrap_or(Json::Null)
        }
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Json::String(array_value_to_string(col, i)?),
        _ => Json::String(array_value_to_string(col, i)?),
    })
}

fn rows_of(batches: &[RecordBatch]) -> anyhow::Result<Vec<Map<String, Json>>> {
    let mut out = Vec::new();
    for b in batches {
        for i in 0..b.num_rows() {
            let mut row = Map::new();
            for (f, col) in b.schema().fields().iter().zip(b.columns()) {
                row.insert(f.name().clone(), cell(col.as_ref(), i)?);
            }
            out.push(row);
        }
    }
    Ok(out)
}

/// Whether an actual value equals what the test wrote: timestamps by instant, floats within a
/// relative 1e-9, everything else exactly.
fn value_matches(expected: &Json, actual: &Json) -> bool {
    match (expected, actual) {
        (Json::Number(e), Json::Number(a)) => match (e.as_i64(), a.as_i64()) {
            (Some(x), Some(y)) => x == y,
            _ => {
                let (x, y) = (e.as_f64().unwrap_or(f64::NAN), a.as_f64().unwrap_or(f64::NAN));
                x == y || (x - y).abs() <= 1e-9 * x.abs().max(y.abs())
            }
        },
        (Json::String(e), Json::String(a)) => e == a || matches!((parse_time(e), parse_time(a)), (Some(x), Some(y)) if x == y),
        (e, a) => e == a,
    }
}

fn parse_time(s: &str) -> Option<i64> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.timestamp_micros());
    }
    chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f").ok().map(|t| t.and_utc().timestamp_micros())
}

fn row_matches(expected: &Map<String, Json>, actual: &Map<String, Json>) -> bool {
    expected.iter().all(|(k, v)| actual.get(k).is_some_and(|a| value_matches(v, a)))
}

/// `None` when `actual` has exactly the expected rows (in any order, compared on the columns each
/// expected row names); otherwise a readable diff.
fn compare(name: &str, expected: &[Map<String, Json>], actual: &[RecordBatch]) -> anyhow::Result<Option<String>> {
    let actual = rows_of(actual)?;
    if let Some(first) = actual.first() {
        for row in expected {
            if let Some(k) = row.keys().find(|k| !first.contains_key(*k)) {
                let cols: Vec<&str> = first.keys().map(String::as_str).collect();
                bail!("expect.{name}: `{k}` is not a column of `{name}`; columns: {}", cols.join(", "));
            }
        }
    }
    let mut used = vec![false; actual.len()];
    let mut missing = Vec::new();
    for e in expected {
        match (0..actual.len()).find(|&i| !used[i] && row_matches(e, &actual[i])) {
            Some(i) => used[i] = true,
            None => missing.push(e),
        }
    }
    let unexpected: Vec<&Map<String, Json>> = actual.iter().zip(&used).filter(|(_, u)| !**u).map(|(r, _)| r).collect();
    if missing.is_empty() && unexpected.is_empty() {
        return Ok(None);
    }
    let mut msg = format!("{name}: expected {} rows, got {}", expected.len(), actual.len());
    for m in missing {
        msg.push_str(&format!("\n  missing:    {}", Json::Object(m.clone())));
    }
    // Show unexpected rows on the columns the test talks about, so the diff stays readable.
    let mut shown_cols: Vec<&String> = expected.iter().flat_map(|r| r.keys()).collect();
    shown_cols.sort();
    shown_cols.dedup();
    for u in unexpected {
        let shown: Map<String, Json> = if shown_cols.is_empty() {
            u.clone()
        } else {
            u.iter().filter(|(k, _)| shown_cols.contains(k)).map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        msg.push_str(&format!("\n  unexpected: {}", Json::Object(shown)));
    }
    Ok(Some(msg))
}
