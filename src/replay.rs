//! `tributary replay DEAD_LETTERS --pipeline FILE --into SINK`: stored dead letters back into the
//! sink that rejected them, once the cause is fixed (a constraint dropped, a column widened, the
//! sink's config corrected), with one outcome per letter: written, or rejected again and why.
//!
//! The sink is built from the pipeline file exactly as `tributary run` builds it; each letter's
//! payload (the row as JSON) is decoded with the sink's input schema. Nothing else of the pipeline
//! runs. With an upsert sink a replay converges: replaying twice leaves the same table.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::json::ReaderBuilder;
use tributary_sdk::dead_letter::rows_as_json;
use tributary_sdk::{DeadLetter, Period, Sink, SinkContext};

use crate::graph::SinkRetry;
use crate::runtime::Retrying;

/// Rows written per call to the sink.
const CHUNK: usize = 1000;

/// One stored dead letter and what the replay made of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Letter {
    /// `file:line` it came from.
    pub at: String,
    pub component: String,
    pub payload: String,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// To replay (only before the replay ran).
    Pending,
    Written,
    /// The sink refused the row again, for this reason.
    Rejected(String),
    /// The line or its payload could not be read as a row of the sink's input.
    Unreadable(String),
    /// A letter of another component (not replayed).
    Skipped,
}

/// The letters in file order.
pub struct Report {
    pub into: String,
    pub letters: Vec<Letter>,
}

impl Report {
    fn count(&self, f: impl Fn(&Outcome) -> bool) -> usize {
        self.letters.iter().filter(|l| f(&l.outcome)).count()
    }

    /// Every letter replayed was written.
    pub fn all_written(&self) -> bool {
        self.count(|o| matches!(o, Outcome::Rejected(_) | Outcome::Unreadable(_))) == 0
    }

    /// One line per letter replayed (skipped ones are only counted), then the totals.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for l in &self.letters {
            let line = match &l.outcome {
                Outcome::Written => format!("{}: written\n", l.at),
                Outcome::Rejected(reason) => format!("{}: rejected again: {reason}\n    {}\n", l.at, l.payload),
                Outcome::Unreadable(why) => format!("{}: not replayed: {why}\n", l.at),
                Outcome::Skipped | Outcome::Pending => continue,
            };
            out.push_str(&line);
        }
        let replayed = self.letters.len() - self.count(|o| *o == Outcome::Skipped);
        out.push_str(&format!(
            "{replayed} letters of `{}`: {} written, {} rejected again, {} not readable; {} of other components skipped\n",
            self.into,
            self.count(|o| *o == Outcome::Written),
            self.count(|o| matches!(o, Outcome::Rejected(_))),
            self.count(|o| matches!(o, Outcome::Unreadable(_))),
            self.count(|o| *o == Outcome::Skipped),
        ));
        out
    }

    /// Letters still not written, as dead-letter lines with their new reasons (to replay later).
    pub fn still_rejected(&self) -> String {
        let mut out = String::new();
        for l in &self.letters {
            if let Outcome::Rejected(reason) | Outcome::Unreadable(reason) = &l.outcome {
                let line = serde_json::json!({"ts": chrono::Utc::now().to_rfc3339(), "component": l.component, "reason": reason, "payload": l.payload});
                out.push_str(&format!("{line}\n"));
            }
        }
        out
    }
}

/// Replay the letters at `letters` (a JSON-lines file, or a folder of them) into sink `into` of
/// the pipeline `pipeline`. Transient failures are retried as the sink's `retry:` says (a replay
/// with no `max_elapsed` gives up after 5 minutes instead of waiting forever).
pub async fn replay(letters: &Path, pipeline: &Path, into: &str) -> anyhow::Result<Report> {
    let plan = crate::validate_file(pipeline).await.map_err(|d| anyhow::anyhow!("{d}"))?;
    let names = |ids: Vec<&String>| ids.iter().map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", ");
    let Some(index) = plan.sinks.iter().position(|s| s.id == into) else {
        let other = plan.sources.iter().map(|s| &s.id).chain(plan.transforms.iter().map(|t| &t.id)).any(|id| id == into);
        let sinks = names(plan.sinks.iter().map(|s| &s.id).collect());
        if other {
            bail!("`{into}` is not a sink of {}: dead letters are replayed into sinks ({sinks})", pipeline.display());
        }
        bail!("{} has no sink `{into}` (sinks: {sinks})", pipeline.display());
    };
    let mut plan = plan;
    let planned = plan.sinks.swap_remove(index);
    let schema = plan.outputs[&planned.inputs[0].name].clone();
    let mut letters = read_letters(letters, into)?;
    let rows = decode(&mut letters, &schema);

    let mut sink = planned.sink;
    let ctx = SinkContext { id: into.to_string(), metrics: std::sync::Arc::new(tributary_sdk::ComponentMetrics::default()) };
    sink.start(&ctx).await.with_context(|| format!("starting sink `{into}`"))?;
    // The sink's own `retry:`, with a 5-minute `max_elapsed` when it sets none (a command gives up).
    let retry = SinkRetry { max_elapsed: Some(planned.retry.max_elapsed.unwrap_or(Period(Duration::from_secs(300)))), ..planned.retry };
    let progress = tributary_sdk::progress_report::ProgressReport::new("replay", "letters", rows.len() as u64);
    for chunk in rows.chunks(CHUNK) {
        let batch = concat_batches(&schema, chunk.iter().map(|(_, row)| row))?;
        let mut refused = write_all(sink.as_mut(), &ctx, batch, &retry).await?;
        refused.extend(flush(sink.as_mut(), &ctx, &retry).await?);
        for (letter, row) in chunk {
            let json = rows_as_json(row).pop().unwrap_or_default();
            letters[*letter].outcome = match refused.iter().position(|r| r.payload == json) {
                Some(i) => Outcome::Rejected(refused.swap_remove(i).reason),
                None => Outcome::Written,
            };
        }
        progress.add(chunk.len() as u64);
    }
    progress.finish();
    Ok(Report { into: into.to_string(), letters })
}

/// `letters`: one file, or every `*.jsonl` in a folder (name order); letters of `into` only.
fn read_letters(path: &Path, into: &str) -> anyhow::Result<Vec<Letter>> {
    let files: Vec<PathBuf> = if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("reading {}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
            .collect();
        files.sort();
        files
    } else {
        vec![path.to_path_buf()]
    };
    let mut letters = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
        for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let at = format!("{}:{}", file.display(), n + 1);
            let letter = match serde_json::from_str::<serde_json::Value>(line) {
                Ok(v) => match (v["component"].as_str(), v["payload"].as_str()) {
                    (Some(component), Some(payload)) => Letter {
                        at,
                        component: component.to_string(),
                        payload: payload.to_string(),
                        outcome: if component == into { Outcome::Pending } else { Outcome::Skipped },
                    },
                    _ => Letter {
                        at,
                        component: String::new(),
                        payload: line.to_string(),
                        outcome: unreadable("no `component` and `payload`"),
                    },
                },
                Err(e) => {
                    Letter { at, component: String::new(), payload: line.to_string(), outcome: unreadable(&format!("not JSON ({e})")) }
                }
            };
            letters.push(letter);
        }
    }
    Ok(letters)
}

fn unreadable(why: &str) -> Outcome {
    Outcome::Unreadable(format!("not a dead letter: {why}"))
}

/// Each letter to replay as one row of `schema`, with its index; a payload that does not decode is
/// marked unreadable.
fn decode(letters: &mut [Letter], schema: &SchemaRef) -> Vec<(usize, RecordBatch)> {
    let mut rows = Vec::new();
    for (i, letter) in letters.iter_mut().enumerate().filter(|(_, l)| l.outcome == Outcome::Pending) {
        match decode_row(&letter.payload, schema) {
            Ok(row) => rows.push((i, row)),
            Err(e) => letter.outcome = Outcome::Unreadable(format!("the payload is not a row of the sink's input: {e}")),
        }
    }
    rows
}

fn decode_row(payload: &str, schema: &SchemaRef) -> anyhow::Result<RecordBatch> {
    let mut decoder = ReaderBuilder::new(schema.clone()).with_strict_mode(true).build_decoder()?;
    decoder.decode(payload.as_bytes())?;
    match decoder.flush()? {
        Some(row) if row.num_rows() == 1 => Ok(row),
        _ => bail!("not one JSON object"),
    }
}

/// Write `batch` under the engine's retry of transient failures (with the rows still unwritten);
/// the rows the sink refused for good.
async fn write_all(sink: &mut dyn Sink, ctx: &SinkContext, mut batch: RecordBatch, retry: &SinkRetry) -> anyhow::Result<Vec<DeadLetter>> {
    let mut refused = Vec::new();
    let mut retrying = Retrying::new(ctx, retry, "write");
    loop {
        match sink.write(batch.clone(), ctx).await {
            Ok(written) => {
                retrying.succeeded();
                refused.extend(written.rejected);
                return Ok(refused);
            }
            Err(t) => {
                refused.extend(t.rejected);
                if let Some(rest) = t.unwritten {
                    batch = rest;
                }
                if let Some(reason) = retrying.wait(&t.error).await {
                    bail!("sink `{}`: {reason}", ctx.id);
                }
            }
        }
    }
}

/// Flush under the engine's retry; the rows refused at the flush.
async fn flush(sink: &mut dyn Sink, ctx: &SinkContext, retry: &SinkRetry) -> anyhow::Result<Vec<DeadLetter>> {
    let mut retrying = Retrying::new(ctx, retry, "flush");
    loop {
        match sink.flush(ctx).await {
            Ok(refused) => {
                retrying.succeeded();
                return Ok(refused);
            }
            Err(t) => {
                if let Some(reason) = retrying.wait(&t.error).await {
                    bail!("sink `{}`: {reason}", ctx.id);
                }
            }
        }
    }
}
