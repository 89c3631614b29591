use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use datafusion::arrow::json::writer::LineDelimitedWriter;
use datafusion::arrow::record_batch::RecordBatch;
use serde::Deserialize;
use tributary_sdk::arrow::datatypes::SchemaRef;
use tributary_sdk::{ComponentConfig, ConfigError, DeadLetter, Period, Sink, SinkContext, SinkPlugin, Transient, Written};

/// Config of a `file` sink: rows appended as JSON lines.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
    /// The file to append to (created, with its directory, if missing).
    pub path: PathBuf,
    /// How often buffered lines are flushed and fsynced (default 1s).
    #[serde(default = "default_flush")]
    pub flush_interval: Period,
}

fn default_flush() -> Period {
    Period(Duration::from_secs(1))
}

pub struct FileSinkPlugin;

impl SinkPlugin for FileSinkPlugin {
    fn type_name(&self) -> &'static str {
        "file"
    }
    fn delivery(&self) -> &'static [tributary_sdk::delivery::SinkDelivery] {
        use tributary_sdk::delivery::SinkDelivery;
        &[SinkDelivery { variant: "", durable_when: "fsync at each flush (`flush_interval`)", duplicates: "none from retries" }]
    }
    fn build(&self, config: &ComponentConfig, _inputs: &[(String, SchemaRef)]) -> Result<Box<dyn Sink>, ConfigError> {
        let cfg: FileSinkConfig = config.decode()?;
        Ok(Box::new(FileSink { cfg, out: None }))
    }
}

pub struct FileSink {
    cfg: FileSinkConfig,
    out: Option<BufWriter<File>>,
}

#[async_trait::async_trait]
impl Sink for FileSink {
    async fn start(&mut self, _ctx: &SinkContext) -> anyhow::Result<()> {
        let path = &self.cfg.path;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let f = OpenOptions::new().create(true).append(true).open(path).with_context(|| format!("cannot open {}", path.display()))?;
        self.out = Some(BufWriter::with_capacity(1 << 16, f));
        Ok(())
    }

    async fn write(&mut self, batch: RecordBatch, _ctx: &SinkContext) -> Result<Written, Transient> {
        // Encoded whole before anything is written, so a failed write leaves no half batch.
        let mut lines = Vec::new();
        let mut w = LineDelimitedWriter::new(&mut lines);
        w.write(&batch)?;
        w.finish()?;
        self.out.as_mut().expect("started").write_all(&lines)?;
        Ok(Written::buffered())
    }

    async fn flush(&mut self, _ctx: &SinkContext) -> Result<Vec<DeadLetter>, Transient> {
        if let Some(out) = self.out.as_mut() {
            out.flush()?;
            match out.get_ref().sync_data() {
                // A FIFO or a character device (`/dev/stdout`) cannot be synced (EINVAL): what was
                // written to it has gone as far as it can.
                Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {}
                other => other?,
            }
        }
        Ok(Vec::new())
    }

    fn flush_interval(&self) -> Option<Duration> {
        Some(self.cfg.flush_interval.0)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use tributary_testkit::sink_context;

    use super::*;

    #[tokio::test]
    async fn appends_json_lines_and_reports_buffered_until_flushed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/out.jsonl");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "{\"existing\":true}\n").unwrap();
        let cfg = ComponentConfig::from_yaml("out", &format!("{{path: {}}}", path.display()));
        let mut sink = FileSinkPlugin.build(&cfg, &[]).map_err(|e| e.to_string()).unwrap();
        let ctx = sink_context("out");
        sink.start(&ctx).await.unwrap();
        let schema = Arc::new(Schema::new(vec![Field::new("site", DataType::Utf8, true), Field::new("ms", DataType::Int64, true)]));
        let batch =
            RecordBatch::try_new(schema, vec![Arc::new(StringArray::from(vec![Some("a"), None])), Arc::new(Int64Array::from(vec![1, 2]))])
                .unwrap();
        assert_eq!(sink.write(batch, &ctx).await.unwrap(), Written::buffered());
        assert_eq!(sink.flush(&ctx).await.unwrap(), vec![]);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"existing\":true}\n{\"site\":\"a\",\"ms\":1}\n{\"ms\":2}\n");
    }
}
