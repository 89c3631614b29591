//! What stands in for a test's sources and sinks: fixture rows parsed against a source output's
//! schema, a [`FixtureSource`] that sends them when told, and a [`CapturingSink`] that keeps what
//! it is given. Everything between them is the real runtime.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Context};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::json::ReaderBuilder;
use serde_json::{Map, Value as Json};
use tokio::sync::mpsc;
use tributary_sdk::{Batch, DeadLetter, Sink, SinkContext, Source, SourceContext, Transient, Work, Written};

/// Fixture rows (inline mappings or `{file: …}` JSON lines, relative to `base`) as one batch of
/// `schema`. Columns left out are null, or zero / empty / false / the epoch where the schema
/// forbids null.
pub(super) fn fixture_rows(output: &str, schema: &SchemaRef, entries: &[Json], base: &Path) -> anyhow::Result<RecordBatch> {
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

fn zero_value(dt: &DataType) -> Json {
    match dt {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Json::String(String::new()),
        DataType::Boolean => Json::Bool(false),
        DataType::Timestamp(..) | DataType::Date32 | DataType::Date64 => Json::String("1970-01-01T00:00:00Z".into()),
        DataType::List(_) | DataType::LargeList(_) => Json::Array(Vec::new()),
        _ => Json::from(0),
    }
}

/// Rows for one of a source's outputs; `work` keeps the pipeline counted busy until they are sent.
pub(super) struct Feed {
    pub output: String,
    pub rows: RecordBatch,
    pub work: Work,
}

/// Stands in for a source: sends the fixture rows it is fed, until the pipeline stops.
pub(super) struct FixtureSource {
    pub feeds: mpsc::UnboundedReceiver<Feed>,
}

#[async_trait::async_trait]
impl Source for FixtureSource {
    async fn run(mut self: Box<Self>, ctx: SourceContext) -> anyhow::Result<()> {
        loop {
            tokio::select! {
                feed = self.feeds.recv() => {
                    let Some(Feed { output, rows, work: _work }) = feed else { return Ok(()) };
                    ctx.output(&output).send(Batch::new(rows)).await?;
                }
                _ = ctx.shutdown.cancelled() => return Ok(()),
            }
        }
    }
}

/// What each sink was given, by sink id.
pub(super) type Captured = Arc<Mutex<BTreeMap<String, Vec<RecordBatch>>>>;

/// Stands in for a sink: every batch is written at once, into [`Captured`].
pub(super) struct CapturingSink {
    pub id: String,
    pub captured: Captured,
}

#[async_trait::async_trait]
impl Sink for CapturingSink {
    async fn write(&mut self, batch: RecordBatch, _ctx: &SinkContext) -> Result<Written, Transient> {
        self.captured.lock().expect("captured lock").entry(self.id.clone()).or_default().push(batch);
        Ok(Written::durable())
    }

    async fn flush(&mut self, _ctx: &SinkContext) -> Result<Vec<DeadLetter>, Transient> {
        Ok(Vec::new())
    }
}
