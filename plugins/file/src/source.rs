use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tributary_sdk::config::ByteSize;
use tributary_sdk::json::JsonRows;
use tributary_sdk::{
    BuiltSource, ComponentConfig, ConfigError, DeadLetter, DeclaredSchema, HumanDuration, OutputSpec, Source, SourceContext, SourcePlugin,
};

/// How the file is read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadMode {
    /// Read to the end, then the source finishes (the pipeline ends when every source has).
    #[default]
    ReadOnce,
    /// Read to the end, then follow appended lines (and start over if the file is truncated).
    Tail,
}

/// Config of a `file` source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSourceConfig {
    /// The JSON-lines file.
    pub path: PathBuf,
    /// Columns and types of each line's object.
    pub schema: DeclaredSchema,
    #[serde(default)]
    pub mode: ReadMode,
    /// Timestamp column whose missing values are filled with the read time (default `ts`).
    #[serde(default = "default_time_column")]
    pub time_column: String,
    /// Bytes read and decoded at a time; each chunk becomes one batch (default 1MiB).
    #[serde(default = "default_chunk")]
    pub chunk_size: ByteSize,
    /// How often a tailed file is checked for new lines (default 250ms).
    #[serde(default = "default_poll")]
    pub poll_interval: HumanDuration,
}

fn default_time_column() -> String {
    "ts".into()
}
fn default_chunk() -> ByteSize {
    ByteSize(1 << 20)
}
fn default_poll() -> HumanDuration {
    HumanDuration(Duration::from_millis(250))
}

pub struct FileSourcePlugin;

impl SourcePlugin for FileSourcePlugin {
    fn type_name(&self) -> &'static str {
        "file"
    }
    fn build(&self, config: &ComponentConfig) -> Result<BuiltSource, ConfigError> {
        let cfg: FileSourceConfig = config.decode()?;
        if cfg.chunk_size.0 < 1024 {
            return Err(ConfigError::at("chunk_size", "must be at least 1KiB"));
        }
        let rows = JsonRows::new(&cfg.schema, Some(&cfg.time_column));
        Ok(BuiltSource { outputs: vec![OutputSpec::main(rows.schema().clone())], source: Box::new(FileSource { cfg, rows }) })
    }
}

pub struct FileSource {
    cfg: FileSourceConfig,
    rows: JsonRows,
}

impl FileSource {
    /// Decode complete lines, send good rows, dead-letter bad ones. `first_line` numbers the lines.
    async fn emit(&self, ctx: &SourceContext, text: &[u8], first_line: usize) -> bool {
        ctx.metrics.bytes_in.add(text.len() as u64);
        let (batch, errors) = self.rows.decode_lines(text);
        if !errors.is_empty() {
            ctx.metrics.errors.add(errors.len() as u64);
            let letters = errors
                .into_iter()
                .map(|e| DeadLetter {
                    reason: format!("{}:{}: {}", self.cfg.path.display(), first_line + e.line - 1, e.reason),
                    payload: e.raw,
                })
                .collect();
            if ctx.dead_letters.send(letters, Default::default()).await.is_err() {
                return false;
            }
        }
        if batch.num_rows() == 0 {
            return true;
        }
        ctx.metrics.rows_in.add(batch.num_rows() as u64);
        ctx.send(batch).await.is_ok()
    }
}

#[async_trait::async_trait]
impl Source for FileSource {
    async fn run(self: Box<Self>, ctx: SourceContext) -> anyhow::Result<()> {
        let path = &self.cfg.path;
        let mut file = tokio::fs::File::open(path).await.with_context(|| format!("cannot open {}", path.display()))?;
        let chunk = self.cfg.chunk_size.0 as usize;
        let mut buf: Vec<u8> = Vec::with_capacity(chunk * 2);
        let mut offset: u64 = 0; // bytes of the file consumed into `buf` so far
        let mut line_no = 1usize; // line number of buf's first line
        loop {
            let start = buf.len();
            buf.resize(start + chunk, 0);
            let n = tokio::select! {
                _ = ctx.shutdown.cancelled() => return Ok(()),
                r = file.read(&mut buf[start..]) => r.with_context(|| format!("reading {}", path.display()))?,
            };
            buf.truncate(start + n);
            offset += n as u64;
            if n == 0 {
                match self.cfg.mode {
                    ReadMode::ReadOnce => {
                        // A last line without a newline is still a line.
                        if !buf.is_empty() {
                            self.emit(&ctx, &buf, line_no).await;
                        }
                        return Ok(());
                    }
                    ReadMode::Tail => {
                        tokio::select! {
                            _ = ctx.shutdown.cancelled() => return Ok(()),
                            _ = tokio::time::sleep(self.cfg.poll_interval.0) => {}
                        }
                        let len = tokio::fs::metadata(path).await.map(|m| m.len()).unwrap_or(offset);
                        if len < offset {
                            tracing::info!(source = %ctx.id, path = %path.display(), "file truncated; reading from the start");
                            file = tokio::fs::File::open(path).await?;
                            file.seek(std::io::SeekFrom::Start(0)).await?;
                            buf.clear();
                            offset = 0;
                            line_no = 1;
                        }
                        continue;
                    }
                }
            }
            // Emit complete lines only; keep a trailing partial line for the next read.
            let Some(last_nl) = buf.iter().rposition(|b| *b == b'\n') else { continue };
            let complete = &buf[..=last_nl];
            let lines = complete.iter().filter(|b| **b == b'\n').count();
            if !self.emit(&ctx, complete, line_no).await {
                return Ok(());
            }
            line_no += lines;
            buf.drain(..=last_nl);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::time::Duration;

    use datafusion::arrow::array::{AsArray, RecordBatch};
    use datafusion::arrow::datatypes::Int64Type;
    use tokio::sync::mpsc::Receiver;
    use tributary_sdk::testkit::source_context;
    use tributary_sdk::Delivery;

    use super::*;

    fn build(path: &std::path::Path, mode: &str) -> Box<dyn Source> {
        let cfg = ComponentConfig::from_yaml(
            "events",
            &format!("{{path: {}, mode: {mode}, poll_interval: 20ms, schema: {{n: int}}}}", path.display()),
        );
        FileSourcePlugin.build(&cfg).map_err(|e| e.to_string()).unwrap().source
    }

    fn values(b: &RecordBatch) -> Vec<i64> {
        b.column(0).as_primitive::<Int64Type>().values().to_vec()
    }

    async fn next_values(rx: &mut Receiver<Delivery>) -> Vec<i64> {
        let d = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.expect("a batch in time").expect("open");
        values(&d.batch.data)
    }

    #[tokio::test]
    async fn read_once_reads_every_line_including_an_unterminated_last_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.jsonl");
        std::fs::write(&path, "{\"n\":1}\n{\"n\":\"two\"}\n\n{\"n\":3}").unwrap();
        let (ctx, mut h) = source_context("events", &[""], 8);
        build(&path, "read_once").run(ctx).await.unwrap();
        let main = h.outputs.get_mut("").unwrap();
        let mut got = Vec::new();
        while let Ok(d) = main.try_recv() {
            got.extend(values(&d.batch.data));
        }
        assert_eq!(got, [1, 3]);
        let dl = h.dead_letters.try_recv().unwrap().batch.data;
        assert_eq!(dl.column(3).as_string::<i32>().value(0), "{\"n\":\"two\"}");
        let reason = dl.column(2).as_string::<i32>().value(0).to_string();
        assert!(reason.starts_with(&format!("{}:2: ", path.display())), "{reason}");
        assert_eq!((h.metrics.errors.get(), h.metrics.rows_out.get()), (1, 2));
    }

    #[tokio::test]
    async fn tail_follows_appends_waits_for_whole_lines_and_restarts_after_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.jsonl");
        std::fs::write(&path, "{\"n\":1}\n").unwrap();
        let (ctx, mut h) = source_context("events", &[""], 8);
        let task = tokio::spawn(build(&path, "tail").run(ctx));
        let main = h.outputs.get_mut("").unwrap();
        assert_eq!(next_values(main).await, [1]);

        let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"n\":2}\n{\"n\":").unwrap();
        f.flush().unwrap();
        assert_eq!(next_values(main).await, [2], "the partial line waits");
        f.write_all(b"3}\n").unwrap();
        f.flush().unwrap();
        assert_eq!(next_values(main).await, [3]);

        std::fs::write(&path, "{\"n\":9}\n").unwrap(); // truncated and rewritten (e.g. rotated)
        assert_eq!(next_values(main).await, [9]);

        h.shutdown.cancel();
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_missing_file_is_an_error_naming_it() {
        let (ctx, _h) = source_context("events", &[""], 8);
        let err = build(std::path::Path::new("/nonexistent/in.jsonl"), "read_once").run(ctx).await.unwrap_err();
        assert_eq!(format!("{err:#}"), "cannot open /nonexistent/in.jsonl: No such file or directory (os error 2)");
    }
}
