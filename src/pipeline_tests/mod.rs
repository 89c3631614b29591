//! `tributary test FILE`: the `tests:` of a pipeline file, run without any network.
//!
//! Each test runs the pipeline on the real runtime (the same tasks, channels, windows, dead
//! letters and acks as `tributary run`) with a fixture source in place of each source and a
//! capturing sink in place of each sink, on a manual clock that `advance_clock` moves. It feeds
//! fixture rows into sources' outputs, waits after each step until nothing is in flight, and
//! compares what reached each transform, sink, `.late` or `.dead_letter` output with the expected
//! rows. Sources and sinks are built (so their configs are checked) but never started. A test ends
//! the way a clean shutdown does: open windows are flushed, marked `partial: true`.
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

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use serde::Deserialize;
use serde_json::{Map, Value as Json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tributary_sdk::{HumanDuration, InFlight, Tap};

use crate::config::{Diagnostics, PipelineFile};
use crate::graph::{self, Plan, SourceBuffer};
use crate::plugins::Registry;
use crate::runtime::{self, Clock, ManualClock, RunOptions};

mod compare;
mod fixtures;

use compare::compare;
use fixtures::{fixture_rows, Captured, CapturingSink, Feed, FixtureSource};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestCase {
    name: String,
    /// Source output → rows (or `{file: …}` entries), fed in order before `steps`.
    #[serde(default)]
    inputs: serde_yaml::Mapping,
    #[serde(default)]
    steps: Vec<Step>,
    /// Table → its rows for this test (or `{file: …}` entries), instead of loading it: a
    /// `postgres` table needs no database, a file table reads no file.
    #[serde(default)]
    tables: serde_yaml::Mapping,
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

/// How long a step may take to settle before the test is failed (a pipeline that never settles
/// would otherwise hang `tributary test`).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Batches a tap may hold for the test before it counts as fallen behind.
const TAP_CAPACITY: usize = 1 << 16;

/// Runs one test case on the real runtime: a [`FixtureSource`] per source, a [`CapturingSink`]
/// per sink, a manual clock, and a tap on every output. After each step it waits until the
/// pipeline has handled everything (no delivery in flight), then the run stops like a clean
/// shutdown (open windows flush as partial) and the outputs are compared.
async fn run_case(mut plan: Plan, case: &TestCase, base: &Path) -> anyhow::Result<TestResult> {
    let outputs = plan.outputs.clone();
    let sink_ids: Vec<String> = plan.sinks.iter().map(|s| s.id.clone()).collect();
    for (name, rows) in &case.tables {
        let name = name.as_str().ok_or_else(|| anyhow!("`tables` keys must be table names"))?;
        let Some(table) = plan.tables.iter_mut().find(|t| t.name() == name) else {
            let known: Vec<&str> = plan.tables.iter().map(|t| t.name()).collect();
            bail!("tables.{name}: no such table; the pipeline's tables: {}", known.join(", "));
        };
        let entries: Vec<Json> = serde_yaml::from_value(rows.clone()).with_context(|| format!("tables.{name}: expected a list of rows"))?;
        table.use_rows(vec![fixture_rows(name, &table.table.schema, &entries, base)?]);
    }
    // `expect:` may name a table: its rows as the test ends.
    let tables: Vec<(String, Arc<crate::sql::LookupTable>)> = plan.tables.iter().map(|t| (t.name().to_string(), t.table.clone())).collect();
    // `inputs:` name of each source output → (source id, output name), and the source's feed.
    let mut source_outputs: BTreeMap<String, (String, String)> = BTreeMap::new();
    let mut feeds: HashMap<String, mpsc::UnboundedSender<Feed>> = HashMap::new();
    for s in &mut plan.sources {
        // The real source was built (its config is checked) but never runs.
        let (tx, rx) = mpsc::unbounded_channel();
        s.source = Box::new(FixtureSource { feeds: rx });
        s.buffer = SourceBuffer::Memory;
        feeds.insert(s.id.clone(), tx);
        for o in &s.outputs {
            let name = if o.name.is_empty() { s.id.clone() } else { format!("{}.{}", s.id, o.name) };
            source_outputs.insert(name, (s.id.clone(), o.name.clone()));
        }
    }
    let captured = Captured::default();
    // Captured rows store no positions: a test runs at least once, so open windows flush as
    // partial at its end whatever `delivery:` says.
    // The engine's own sinks (those keeping `latest` tables) stay: the tables must fill.
    for s in plan.sinks.iter_mut().filter(|s| s.type_name != crate::tables::LATEST_TABLE_SINK) {
        s.sink = Box::new(CapturingSink { id: s.id.clone(), captured: captured.clone() });
        s.exactly_once = None;
    }
    for w in plan.transforms.iter_mut().filter_map(|t| t.window.as_mut()) {
        w.exactly_once = false;
    }
    let dead_letters = tempfile::tempdir().context("a folder for the test's dead letters")?;
    plan.dead_letter_dir = dead_letters.path().to_path_buf();

    let in_flight = Arc::new(InFlight::default());
    let clock = Arc::new(ManualClock::new(in_flight.clone()));
    let mut observed: BTreeMap<String, mpsc::Receiver<RecordBatch>> = BTreeMap::new();
    let mut behind = Vec::new();
    let taps: HashMap<String, Arc<Tap>> = outputs
        .keys()
        .map(|name| {
            let tap = Arc::new(Tap::default());
            let (rx, fell_behind) = tap.subscribe(TAP_CAPACITY);
            observed.insert(name.clone(), rx);
            behind.push((name.clone(), fell_behind));
            (name.clone(), tap)
        })
        .collect();
    let opts =
        RunOptions { clock: Clock::Manual(clock.clone()), in_flight: Some(in_flight.clone()), taps: Some(taps), ..RunOptions::default() };
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(runtime::run(plan, None, shutdown.clone(), opts));

    let driver = Driver { source_outputs: &source_outputs, outputs: &outputs, feeds: &feeds, in_flight: &in_flight, base };
    let stepped = driver.run_steps(case, &clock).await;
    // Stop like a clean shutdown whatever happened, so open windows flush and tasks end.
    shutdown.cancel();
    drop(feeds);
    let report = running.await.context("the pipeline's run panicked")?;
    // A component that failed is the cause of whatever the steps saw after it (a closed feed).
    if let Some((id, error)) = report.failures.first() {
        bail!("`{id}` failed: {error}");
    }
    stepped?;
    if let Some((name, _)) = behind.iter().find(|(_, b)| b.load(std::sync::atomic::Ordering::Acquire)) {
        bail!("`{name}` produced more than {TAP_CAPACITY} batches; split the test");
    }

    let mut seen: BTreeMap<String, Vec<RecordBatch>> = std::mem::take(&mut *captured.lock().expect("captured lock"));
    for (name, mut rx) in observed {
        let batches = seen.entry(name).or_default();
        while let Ok(b) = rx.try_recv() {
            batches.push(b);
        }
    }
    for id in &sink_ids {
        seen.entry(id.clone()).or_default();
    }
    for (name, table) in tables {
        seen.insert(name, table.snapshot().batches.clone());
    }
    let mut failures = Vec::new();
    for (name, expected) in &case.expect {
        let name = name.as_str().ok_or_else(|| anyhow!("`expect` keys must be component or output names"))?;
        let expected: Vec<Map<String, Json>> =
            serde_yaml::from_value(expected.clone()).with_context(|| format!("expect.{name}: expected a list of rows (mappings)"))?;
        let Some(actual) = seen.get(name) else {
            bail!("expect.{name}: no such output or sink; known: {}", seen.keys().map(String::as_str).collect::<Vec<_>>().join(", "))
        };
        if let Some(diff) = compare(name, &expected, actual)? {
            failures.push(diff);
        }
    }
    Ok(TestResult { name: case.name.clone(), failures, checked: case.expect.len() })
}

/// Feeds a running test pipeline and moves its clock, waiting after each step until it settles.
struct Driver<'a> {
    source_outputs: &'a BTreeMap<String, (String, String)>,
    outputs: &'a BTreeMap<String, SchemaRef>,
    feeds: &'a HashMap<String, mpsc::UnboundedSender<Feed>>,
    in_flight: &'a Arc<InFlight>,
    base: &'a Path,
}

impl Driver<'_> {
    async fn run_steps(&self, case: &TestCase, clock: &ManualClock) -> anyhow::Result<()> {
        for (name, rows) in &case.inputs {
            let name = name.as_str().ok_or_else(|| anyhow!("`inputs` keys must be output names"))?;
            let entries: Vec<Json> =
                serde_yaml::from_value(rows.clone()).with_context(|| format!("inputs.{name}: expected a list of rows"))?;
            self.feed(name, &entries).await?;
        }
        for (i, step) in case.steps.iter().enumerate() {
            match (&step.input, step.advance_clock) {
                (Some(name), None) => {
                    let mut entries = step.rows.clone();
                    if let Some(f) = &step.file {
                        entries.push(serde_json::json!({ "file": f }));
                    }
                    self.feed(name, &entries).await.with_context(|| format!("steps[{i}]"))?;
                }
                (None, Some(d)) => {
                    clock.advance(d.0);
                    self.settle().await.with_context(|| format!("steps[{i}]"))?;
                }
                _ => bail!("steps[{i}]: a step is either `{{input: NAME, rows: [...]}}` (or `file:`) or `{{advance_clock: DURATION}}`"),
            }
        }
        Ok(())
    }

    async fn feed(&self, name: &str, entries: &[Json]) -> anyhow::Result<()> {
        let Some((source, output)) = self.source_outputs.get(name) else {
            let known: Vec<&str> = self.source_outputs.keys().map(String::as_str).collect();
            let what = if self.outputs.contains_key(name) { "is not a source's output" } else { "is not an output of this pipeline" };
            bail!("`{name}` {what}; tests feed sources' outputs: {}", known.join(", "));
        };
        let rows = fixture_rows(name, &self.outputs[name], entries, self.base)?;
        let work = self.in_flight.begin();
        self.feeds[source]
            .send(Feed { output: output.clone(), rows, work })
            .map_err(|_| anyhow!("the pipeline stopped before `{name}` was fed"))?;
        self.settle().await
    }

    /// Wait until nothing is in flight: every row fed so far has been handled everywhere.
    async fn settle(&self) -> anyhow::Result<()> {
        tokio::time::timeout(SETTLE_TIMEOUT, self.in_flight.idle()).await.map_err(|_| {
            anyhow!("the pipeline did not settle within {SETTLE_TIMEOUT:?} ({} deliveries still in flight)", self.in_flight.pending())
        })
    }
}
