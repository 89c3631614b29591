//! Dead letters: rows or payloads a component could not handle, with the reason.
//!
//! Every component has a `<id>.dead_letter` output with [`dead_letter_schema`]. Wired to a sink it
//! is stored like any other data; unwired, the engine gives it a [`DeadLetterStore`]: JSON lines
//! appended and fsynced before the acks are released, so a dead letter is never only a log line.
//! Either way it is counted in `tributary_component_dead_letters_total`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use datafusion::arrow::array::{RecordBatch, StringArray, TimestampMicrosecondArray};
use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::arrow::json::writer::LineDelimitedWriter;

use crate::ack::AckSet;
use crate::config::event_time_type;
use crate::metrics::ComponentMetrics;
use crate::output::{Batch, Closed, Output};

/// `ts` (when it was dead-lettered), `component`, `reason`, `payload` (the original row as JSON,
/// or the raw payload).
pub fn dead_letter_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            Arc::new(Schema::new(vec![
                Field::new("ts", event_time_type(), false),
                Field::new("component", datafusion::arrow::datatypes::DataType::Utf8, false),
                Field::new("reason", datafusion::arrow::datatypes::DataType::Utf8, false),
                Field::new("payload", datafusion::arrow::datatypes::DataType::Utf8, false),
            ]))
        })
        .clone()
}

/// One payload that could not be handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub payload: String,
    pub reason: String,
}

/// Where the dead letters of a component with an unwired `<id>.dead_letter` output go: one
/// JSON-lines file, `{"ts", "component", "reason", "payload"}` per line, opened on the first letter.
pub struct DeadLetterStore {
    path: PathBuf,
    file: Mutex<Option<File>>,
}

impl DeadLetterStore {
    pub fn new(path: PathBuf) -> Self {
        DeadLetterStore { path, file: Mutex::new(None) }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `lines` and makes them durable (fsync) before returning.
    fn append(&self, lines: &[u8]) -> std::io::Result<()> {
        let mut file = self.file.lock().expect("dead-letter store lock");
        if file.is_none() {
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            *file = Some(OpenOptions::new().create(true).append(true).open(&self.path)?);
        }
        let f = file.as_mut().expect("opened");
        f.write_all(lines)?;
        f.sync_data()
    }
}

/// The dead-letter output of one component.
#[derive(Clone)]
pub struct DeadLetters {
    component: String,
    output: Output,
    metrics: Arc<ComponentMetrics>,
    /// For an unwired output: where its letters are stored (without one they are only logged,
    /// which only plugin unit tests do).
    store: Option<Arc<DeadLetterStore>>,
}

impl DeadLetters {
    pub fn new(component: impl Into<String>, output: Output, metrics: Arc<ComponentMetrics>) -> Self {
        DeadLetters { component: component.into(), output, metrics, store: None }
    }

    /// The same, storing letters in `store` while the output is unwired.
    pub fn with_store(mut self, store: Arc<DeadLetterStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// The same component's dead letters with the output detached (letters are stored or logged
    /// instead).
    pub fn unconnected(&self) -> Self {
        DeadLetters {
            component: self.component.clone(),
            output: Output::new(Vec::new(), self.metrics.clone(), false),
            metrics: self.metrics.clone(),
            store: self.store.clone(),
        }
    }

    /// Send payloads with their reasons. `acks` are the obligations of the data they came from:
    /// released once the dead letters are stored (or logged, when nothing is wired).
    pub async fn send(&self, letters: Vec<DeadLetter>, acks: AckSet) -> Result<(), Closed> {
        if letters.is_empty() {
            acks.release();
            return Ok(());
        }
        self.metrics.dead_letters.add(letters.len() as u64);
        if self.output.is_unconnected() {
            if let Some(store) = &self.store {
                let batch = dead_letter_batch(&self.component, &letters, crate::now_us());
                self.output.observe(&batch);
                let mut lines = rows_as_json(&batch).join("\n");
                lines.push('\n');
                let writer = store.clone();
                let stored = match tokio::task::spawn_blocking(move || writer.append(lines.as_bytes())).await {
                    Ok(result) => result.map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                match stored {
                    Ok(()) => {
                        tracing::warn!(
                            component = %self.component,
                            letters = letters.len(),
                            first_reason = %crate::truncate(&letters[0].reason, 512),
                            "dead letters stored in {} (wire `{}.dead_letter` to a sink to route them elsewhere)",
                            store.path().display(),
                            self.component
                        );
                        acks.release();
                    }
                    Err(error) => {
                        // Not durable: the acks fail, so a replayable source delivers the data again.
                        tracing::error!(component = %self.component, path = %store.path().display(), %error, "cannot store dead letters; logging them instead");
                        for l in &letters {
                            tracing::warn!(component = %self.component, reason = %l.reason, payload = %crate::truncate(&l.payload, 512), "dead letter");
                        }
                        acks.fail();
                    }
                }
                return Ok(());
            }
            for l in &letters {
                tracing::warn!(
                    component = %self.component,
                    reason = %l.reason,
                    payload = %crate::truncate(&l.payload, 512),
                    "dead letter (wire `{}.dead_letter` to a sink to keep these)",
                    self.component
                );
            }
            acks.release();
            return Ok(());
        }
        let batch = dead_letter_batch(&self.component, &letters, crate::now_us());
        self.output.send(Batch::with_acks(batch, acks)).await
    }

    /// Dead-letter one payload.
    pub async fn send_one(&self, payload: impl Into<String>, reason: impl Into<String>) -> Result<(), Closed> {
        self.send(vec![DeadLetter { payload: payload.into(), reason: reason.into() }], AckSet::none()).await
    }

    /// Dead-letter every row of `rows` (each row rendered as a JSON object) with one reason.
    pub async fn send_rows(&self, rows: &RecordBatch, reason: &str, acks: AckSet) -> Result<(), Closed> {
        self.send(letters_for_rows(rows, reason), acks).await
    }
}

/// One letter per row (the row as a JSON object), all with `reason`.
pub fn letters_for_rows(rows: &RecordBatch, reason: &str) -> Vec<DeadLetter> {
    rows_as_json(rows).into_iter().map(|payload| DeadLetter { payload, reason: reason.to_string() }).collect()
}

/// Letters of `component` as rows of [`dead_letter_schema`], stamped `ts_us`.
pub fn dead_letter_batch(component: &str, letters: &[DeadLetter], ts_us: i64) -> RecordBatch {
    let n = letters.len();
    RecordBatch::try_new(
        dead_letter_schema(),
        vec![
            Arc::new(TimestampMicrosecondArray::from(vec![ts_us; n]).with_timezone("UTC")),
            Arc::new(StringArray::from(vec![component; n])),
            Arc::new(StringArray::from_iter_values(letters.iter().map(|l| l.reason.as_str()))),
            Arc::new(StringArray::from_iter_values(letters.iter().map(|l| l.payload.as_str()))),
        ],
    )
    .expect("dead-letter columns match their schema")
}

/// Each row of a batch as a JSON object (nulls omitted).
pub fn rows_as_json(rows: &RecordBatch) -> Vec<String> {
    let mut buf = Vec::new();
    {
        let mut w = LineDelimitedWriter::new(&mut buf);
        if w.write(rows).and_then(|_| w.finish()).is_err() {
            return vec![format!("<{} rows that could not be rendered as JSON>", rows.num_rows())];
        }
    }
    String::from_utf8_lossy(&buf).lines().map(str::to_string).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ack::Ack;
    use crate::output::Delivery;
    use datafusion::arrow::array::{AsArray, Int64Array};
    use datafusion::arrow::datatypes::DataType;
    use tokio::sync::mpsc;

    #[tokio::test]
    async fn rows_go_to_the_wired_output_with_reason_and_json_payload() {
        let (tx, mut rx) = mpsc::channel::<Delivery>(4);
        let metrics = Arc::new(ComponentMetrics::default());
        let out = Output::new(vec![(tx, 0)], metrics.clone(), false);
        let dl = DeadLetters::new("db", out, metrics.clone());
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        let rows = RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![7, 8]))]).unwrap();
        let (ack, ack_rx) = Ack::channel();
        dl.send_rows(&rows, "value out of range", AckSet::single(ack)).await.unwrap();

        let got = rx.recv().await.unwrap().batch;
        assert_eq!(got.data.schema(), dead_letter_schema());
        let col = |i: usize| got.data.column(i).as_string::<i32>().iter().map(|v| v.unwrap().to_string()).collect::<Vec<_>>();
        assert_eq!(col(1), ["db", "db"]);
        assert_eq!(col(2), ["value out of range", "value out of range"]);
        assert_eq!(col(3), [r#"{"n":7}"#, r#"{"n":8}"#]);
        assert_eq!(metrics.dead_letters.get(), 2);
        assert_eq!(metrics.rows_out.get(), 0, "dead letters are not rows out");
        // The ack resolves only when the dead-letter sink releases it.
        got.acks.release();
        assert_eq!(ack_rx.await.unwrap(), crate::ack::AckStatus::Delivered);
    }
}
