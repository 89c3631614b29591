use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use datafusion::arrow::record_batch::RecordBatch;
use serde::Deserialize;
use tokio::io::AsyncSeekExt;
use tributary_sdk::config::ByteSize;
use tributary_sdk::http::decode_off_reactor;
use tributary_sdk::json::{JsonRows, LineError};
use tributary_sdk::progress::AckedProgress;
use tributary_sdk::{
    AckSet, Batch, BuiltSource, ComponentConfig, ConfigError, DeadLetter, DeclaredSchema, OutputSpec, Period, Position, Replay, Source,
    SourceContext, SourcePlugin,
};

use crate::checkpoint::{Checkpoint, CheckpointSaver, FileIdentity};

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
    pub poll_interval: Period,
    /// Where the offset of the lines every sink has written is kept, with the file's identity
    /// (default `data/checkpoints/<source id>.json`). A restart resumes there when it is the same
    /// file (path, device, inode and the first KiB unchanged), and reads from the start otherwise.
    #[serde(default)]
    pub checkpoint_file: Option<PathBuf>,
    /// Read from the start even when a checkpoint says otherwise (the checkpoint is still written).
    #[serde(default)]
    pub ignore_checkpoint: bool,
}

fn default_time_column() -> String {
    "ts".into()
}
fn default_chunk() -> ByteSize {
    ByteSize(1 << 20)
}
fn default_poll() -> Period {
    Period(Duration::from_millis(250))
}

pub struct FileSourcePlugin;

impl SourcePlugin for FileSourcePlugin {
    fn type_name(&self) -> &'static str {
        "file"
    }
    fn delivery(&self) -> &'static [tributary_sdk::delivery::SourceDelivery] {
        use tributary_sdk::delivery::SourceDelivery;
        &[SourceDelivery {
            variant: "",
            guarantee: "at-least-once; exactly once into `delivery: exactly_once` sinks",
            how: "the offset of the lines every sink wrote is saved in `checkpoint_file` (with the file's path, device, inode and a fingerprint of its first KiB), in read order as acks resolve; a restart resumes there when it is the same file, and reads a rotated or rewritten file from the start. Each chunk carries its end offset as a position, which exactly-once sinks store with the rows",
            duplicates: "lines read after the last saved offset, after a crash (none in an exactly-once sink)",
            crash_loses: "nothing acknowledged",
        }]
    }
    fn build(&self, config: &ComponentConfig) -> Result<BuiltSource, ConfigError> {
        let cfg: FileSourceConfig = config.decode()?;
        if cfg.chunk_size.0 < 1024 {
            return Err(ConfigError::at("chunk_size", "must be at least 1KiB"));
        }
        let rows = JsonRows::new(&cfg.schema, Some(&cfg.time_column));
        let checkpoint_file =
            cfg.checkpoint_file.clone().unwrap_or_else(|| PathBuf::from("data/checkpoints").join(format!("{}.json", config.id)));
        Ok(BuiltSource {
            outputs: vec![OutputSpec::main(rows.schema().clone())],
            source: Box::new(FileSource { cfg, rows: Arc::new(rows), checkpoint_file }),
        })
    }
}

/// A chunk of lines being decoded on the blocking pool.
struct Decoding {
    first_line: usize,
    ack: tributary_sdk::Ack,
    /// Where the chunk ends in the file's stream (a regular file only).
    position: Option<Position>,
    lines: tokio::task::JoinHandle<Result<(RecordBatch, Vec<LineError>), String>>,
}

/// Where this run's chunks stand: the stream (the source's id) and the file's epoch, and the
/// offsets where an exactly-once sink stopped, at which chunks are cut so that each sink drops
/// exactly what it wrote (as the Kafka source cuts its batches at each sink's offset).
struct Positions {
    stream: Arc<str>,
    epoch: u64,
    cuts: Vec<u64>,
}

impl Positions {
    fn at(&self, offset: u64) -> Position {
        Position { stream: self.stream.clone(), epoch: self.epoch, seq: offset }
    }
}

/// `complete` (whole lines from `start` on) split at the `cuts` inside it: the pieces and the
/// offset each ends at. A cut is where a chunk of an earlier run ended, so it is a line's end.
fn split_at_cuts(mut complete: Vec<u8>, start: u64, cuts: &[u64]) -> Vec<(Vec<u8>, u64)> {
    let end = start + complete.len() as u64;
    let mut pieces = Vec::new();
    let mut from = start;
    for &cut in cuts.iter().filter(|&&c| start < c && c < end) {
        let rest = complete.split_off((cut - from) as usize);
        pieces.push((std::mem::replace(&mut complete, rest), cut));
        from = cut;
    }
    pieces.push((complete, end));
    pieces
}

pub struct FileSource {
    cfg: FileSourceConfig,
    rows: Arc<JsonRows>,
    checkpoint_file: PathBuf,
}

impl FileSource {
    /// Start decoding complete lines on the blocking pool (chunks decode in parallel, one per core;
    /// they are sent in file order). `first_line` numbers the lines; `ack` covers the checkpoint
    /// after them and resolves when their rows and dead letters are durable.
    fn decode(
        &self,
        ctx: &SourceContext,
        text: Vec<u8>,
        first_line: usize,
        ack: tributary_sdk::Ack,
        position: Option<Position>,
    ) -> Decoding {
        ctx.metrics.bytes_in.add(text.len() as u64);
        let rows = self.rows.clone();
        // Spawned so it starts now; decode_off_reactor bounds decoding to one per core process-wide.
        Decoding { first_line, ack, position, lines: tokio::spawn(decode_off_reactor(move || rows.decode_lines(&text))) }
    }

    /// Send a chunk's good rows, dead-letter its bad lines. False once the pipeline is stopping.
    async fn emit(&self, ctx: &SourceContext, decoding: Decoding) -> bool {
        let Decoding { first_line, ack, position, lines } = decoding;
        let (batch, errors) = match lines.await.map_err(|e| e.to_string()).and_then(|decoded| decoded) {
            Ok(decoded) => decoded,
            Err(e) => {
                tracing::error!(source = %ctx.id, "decoding lines {first_line}… failed ({e}); they are read again on restart");
                return false;
            }
        };
        let acks = AckSet::single(ack);
        if !errors.is_empty() {
            tributary_sdk::report_error!(ctx.metrics, debug, count = errors.len(), source = %ctx.id, first_reason = %errors[0].reason, "undecodable lines");
            let letters = errors
                .into_iter()
                .map(|e| DeadLetter {
                    reason: format!("{}:{}: {}", self.cfg.path.display(), first_line + e.line - 1, e.reason),
                    payload: e.raw,
                })
                .collect();
            if ctx.dead_letters.send(letters, acks.clone()).await.is_err() {
                return false;
            }
        }
        if batch.num_rows() == 0 {
            acks.release();
            return true;
        }
        ctx.metrics.rows_in.add(batch.num_rows() as u64);
        ctx.output("").send(Batch::with_acks(batch, acks).at(position)).await.is_ok()
    }

    /// Send every chunk still decoding, in order (at the end of the file, or on stop).
    async fn emit_all(&self, ctx: &SourceContext, decoding: &mut VecDeque<Decoding>) -> bool {
        while let Some(d) = decoding.pop_front() {
            if !self.emit(ctx, d).await {
                return false;
            }
        }
        true
    }

    /// Where to start reading `file`: the checkpoint's offset when it is about this very file.
    fn resume_point(&self, ctx: &SourceContext, identity: &FileIdentity, len: u64) -> Checkpoint {
        let start = Checkpoint { identity: Some(identity.clone()), offset: 0, line: 1, epoch: None };
        if self.cfg.ignore_checkpoint {
            return start;
        }
        match Checkpoint::load(&self.checkpoint_file) {
            Ok(None) => start,
            Ok(Some(saved)) => match saved.resumes(identity, len) {
                Ok(()) => {
                    tracing::info!(source = %ctx.id, path = %self.cfg.path.display(), offset = saved.offset, line = saved.line,
                        "resuming after the lines every sink wrote");
                    saved
                }
                Err(why) => {
                    tracing::info!(source = %ctx.id, path = %self.cfg.path.display(), "reading from the start: {why}");
                    start
                }
            },
            Err(e) => {
                tracing::warn!(source = %ctx.id, "reading from the start: {e:#}");
                start
            }
        }
    }

    /// The positions of this reading of the file (`None` for what is not a regular file, which
    /// cannot be read again), and `resume` with their epoch. A resumed reading keeps its
    /// checkpoint's epoch; one from the start draws a new epoch and saves it in the checkpoint
    /// before a line is read, so every position a sink stores names an epoch the next start
    /// knows. Exactly-once sinks are asked where they stopped in it.
    async fn positions(&self, ctx: &SourceContext, resume: Checkpoint) -> anyhow::Result<(Checkpoint, Option<Positions>)> {
        if resume.identity.is_none() {
            return Ok((resume, None));
        }
        let resume = match resume.epoch {
            Some(_) => resume,
            None => {
                let fresh = Checkpoint { epoch: Some(rand::random()), ..resume };
                let (saved, path) = (fresh.clone(), self.checkpoint_file.clone());
                tokio::task::spawn_blocking(move || saved.save(&path)).await??;
                fresh
            }
        };
        let Some(epoch) = resume.epoch else { return Ok((resume, None)) };
        let stream: Arc<str> = ctx.id.as_str().into();
        let mut cuts = Vec::new();
        if !ctx.sink_positions.is_empty() {
            let written = ctx
                .sink_positions
                .written(std::slice::from_ref(&stream))
                .await
                .context("asking the exactly-once sinks where they stopped")?;
            cuts = written.iter().filter_map(|w| w.seq_in(&stream, epoch)).filter(|&seq| seq > resume.offset).collect();
            cuts.sort_unstable();
            cuts.dedup();
            let said: Vec<String> = written.iter().map(|w| w.to_string()).collect();
            tracing::info!(source = %ctx.id, sinks_wrote = %said.join("; "), "exactly once: lines the sinks wrote are skipped");
        }
        Ok((resume, Some(Positions { stream, epoch, cuts })))
    }

    /// Commits checkpoints as the acks of the lines before them resolve (saved on their own thread,
    /// the newest waiting one only).
    fn progress(&self, ctx: &SourceContext) -> AckedProgress<Checkpoint> {
        let saver = CheckpointSaver::new(self.checkpoint_file.clone(), ctx.id.to_string());
        AckedProgress::new(move |c: Checkpoint| {
            // Without an identity it is not a regular file: nothing to resume.
            if c.identity.is_some() {
                saver.save(c);
            }
        })
    }
}

#[async_trait::async_trait]
impl Source for FileSource {
    /// A restart reads again from the checkpoint (saved once the lines are acknowledged), and
    /// each chunk carries its end offset as a position, which exactly-once sinks store.
    fn replay(&self) -> Replay {
        Replay::WithPositions
    }
    async fn run(self: Box<Self>, ctx: SourceContext) -> anyhow::Result<()> {
        let path = &self.cfg.path;
        let mut file = tokio::fs::File::open(path).await.with_context(|| format!("cannot open {}", path.display()))?;
        let mut identity = FileIdentity::of(path, &mut file).await?;
        let len = file.metadata().await?.len();
        let resume = match &identity {
            Some(identity) => self.resume_point(&ctx, identity, len),
            None => Checkpoint::start(),
        };
        if resume.offset > 0 {
            file.seek(std::io::SeekFrom::Start(resume.offset)).await?;
        }
        let (resume, mut positions) = self.positions(&ctx, resume).await?;
        let progress = self.progress(&ctx);
        // Reads go straight into `buf` on the blocking pool (tokio's File reads into a buffer of its
        // own and copies, and `buf` would need zero-filling first: 2 of every 3 bytes moved).
        let mut file = file.into_std().await;
        let chunk = self.cfg.chunk_size.0 as usize;
        let mut buf: Vec<u8> = Vec::with_capacity(chunk * 2);
        let mut offset: u64 = resume.offset; // bytes of the file consumed into `buf` so far
        let mut line_no = resume.line; // line number of buf's first line

        // Chunks in flight: twice the cores, so a core that finishes one finds the next already read
        // (the decoders themselves are limited to one per core by `decode_off_reactor`).
        let in_flight = 2 * std::thread::available_parallelism().map_or(2, |n| n.get());
        let mut decoding = VecDeque::with_capacity(in_flight);
        loop {
            if ctx.shutdown.is_cancelled() {
                self.emit_all(&ctx, &mut decoding).await;
                return Ok(());
            }
            let (f, b, read) = tokio::task::spawn_blocking(move || {
                let read = std::io::Read::read_to_end(&mut std::io::Read::take(&mut file, chunk as u64), &mut buf);
                (file, buf, read)
            })
            .await?;
            (file, buf) = (f, b);
            let n = read.with_context(|| format!("reading {}", path.display()))?;
            offset += n as u64;
            if n == 0 {
                match self.cfg.mode {
                    ReadMode::ReadOnce => {
                        // A last line without a newline is still a line.
                        if !buf.is_empty() {
                            let epoch = positions.as_ref().map(|p| p.epoch);
                            let ack = progress.track(Checkpoint { identity: identity.clone(), offset, line: line_no + 1, epoch });
                            let position = positions.as_ref().map(|p| p.at(offset));
                            decoding.push_back(self.decode(&ctx, std::mem::take(&mut buf), line_no, ack, position));
                        }
                        self.emit_all(&ctx, &mut decoding).await;
                        return Ok(());
                    }
                    ReadMode::Tail => {
                        // Caught up: what was read goes out before waiting for more.
                        if !self.emit_all(&ctx, &mut decoding).await {
                            return Ok(());
                        }
                        tokio::select! {
                            _ = ctx.shutdown.cancelled() => return Ok(()),
                            _ = tokio::time::sleep(self.cfg.poll_interval.0) => {}
                        }
                        let len = tokio::fs::metadata(path).await.map(|m| m.len()).unwrap_or(offset);
                        if len < offset {
                            tracing::info!(source = %ctx.id, path = %path.display(), "file truncated; reading from the start");
                            let mut reopened = tokio::fs::File::open(path).await?;
                            identity = FileIdentity::of(path, &mut reopened).await?;
                            file = reopened.into_std().await;
                            buf.clear();
                            offset = 0;
                            line_no = 1;
                            // Other bytes at the same offsets: positions of a new epoch.
                            let afresh = Checkpoint { identity: identity.clone(), ..Checkpoint::start() };
                            positions = self.positions(&ctx, afresh).await?.1;
                        }
                        continue;
                    }
                }
            }
            // Emit complete lines only; keep a trailing partial line for the next read.
            let Some(last_nl) = buf.iter().rposition(|b| *b == b'\n') else { continue };
            let partial = buf.split_off(last_nl + 1);
            let complete = std::mem::replace(&mut buf, Vec::with_capacity(chunk * 2));
            buf.extend_from_slice(&partial);
            let end = offset - partial.len() as u64;
            let start = end - complete.len() as u64;
            let cuts = positions.as_ref().map_or(&[][..], |p| &p.cuts[..]);
            for (piece, piece_end) in split_at_cuts(complete, start, cuts) {
                let lines = memchr::memchr_iter(b'\n', &piece).count();
                let epoch = positions.as_ref().map(|p| p.epoch);
                let ack = progress.track(Checkpoint { identity: identity.clone(), offset: piece_end, line: line_no + lines, epoch });
                if decoding.len() == in_flight && !self.emit(&ctx, decoding.pop_front().expect("full")).await {
                    return Ok(());
                }
                let position = positions.as_ref().map(|p| p.at(piece_end));
                decoding.push_back(self.decode(&ctx, piece, line_no, ack, position));
                line_no += lines;
            }
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
    use tributary_sdk::Delivery;
    use tributary_testkit::source_context;

    use super::*;

    /// A source reading `path`, its checkpoint beside it (`<path>.ckpt`).
    fn build(path: &std::path::Path, mode: &str) -> Box<dyn Source> {
        let cfg = ComponentConfig::from_yaml(
            "events",
            &format!(
                "{{path: {}, mode: {mode}, poll_interval: 20ms, chunk_size: 1KiB, schema: {{n: int}}, checkpoint_file: {}.ckpt}}",
                path.display(),
                path.display()
            ),
        );
        FileSourcePlugin.build(&cfg).map_err(|e| e.to_string()).unwrap().source
    }

    fn lines(range: std::ops::Range<i64>) -> String {
        range.map(|n| format!("{{\"n\":{n}}}\n")).collect()
    }

    /// Reads `path` once; the batches' acks are released (every sink wrote them) or dropped.
    async fn read_once(path: &std::path::Path, written: bool) -> Vec<i64> {
        let (ctx, mut h) = source_context("events", &[""], 1024);
        build(path, "read_once").run(ctx).await.unwrap();
        let mut got = Vec::new();
        while let Ok(d) = h.outputs.get_mut("").unwrap().try_recv() {
            got.extend(values(&d.batch.data));
            if written {
                d.batch.acks.release();
            }
        }
        got
    }

    #[tokio::test]
    async fn a_restart_reads_only_lines_after_those_every_sink_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.jsonl");
        std::fs::write(&path, lines(0..500)).unwrap();
        assert_eq!(read_once(&path, true).await, (0..500).collect::<Vec<_>>());
        assert_eq!(read_once(&path, true).await, Vec::<i64>::new(), "a second run reads nothing again");

        let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(lines(500..503).as_bytes()).unwrap();
        assert_eq!(read_once(&path, true).await, [500, 501, 502], "appended lines only");
        let saved: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path.with_extension("jsonl.ckpt")).unwrap()).unwrap();
        assert_eq!((saved["offset"].as_u64(), saved["line"].as_u64()), (Some(std::fs::metadata(&path).unwrap().len()), Some(504)));
    }

    #[tokio::test]
    async fn lines_whose_acks_failed_are_read_again_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.jsonl");
        std::fs::write(&path, lines(0..300)).unwrap();
        assert_eq!(read_once(&path, false).await.len(), 300);
        let saved: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path.with_extension("jsonl.ckpt")).unwrap()).unwrap();
        assert_eq!(saved["offset"], 0, "nothing was written: the checkpoint (saved with its epoch before a line is read) is at the start");
        assert_eq!(read_once(&path, true).await.len(), 300, "all of it again");
        assert_eq!(read_once(&path, true).await.len(), 0);
    }

    /// Reads `path` once, every batch written: each batch's (epoch, end offset).
    async fn positions(path: &std::path::Path) -> Vec<(u64, u64)> {
        let (ctx, mut h) = source_context("events", &[""], 1024);
        build(path, "read_once").run(ctx).await.unwrap();
        let mut got = Vec::new();
        while let Ok(d) = h.outputs.get_mut("").unwrap().try_recv() {
            let p = d.batch.position.clone().expect("a regular file's batches have positions");
            assert_eq!(&*p.stream, "events");
            got.push((p.epoch, p.seq));
            d.batch.acks.release();
        }
        got
    }

    /// Positions are byte offsets where batches end, in an epoch the checkpoint keeps while a
    /// restart resumes the file; a rewritten file is another epoch (its offsets are other bytes).
    #[tokio::test]
    async fn batches_end_at_byte_offsets_in_an_epoch_kept_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.jsonl");
        std::fs::write(&path, lines(0..300)).unwrap();
        let first = positions(&path).await;
        let epoch = first[0].0;
        assert!(first.len() > 1 && first.iter().all(|(e, _)| *e == epoch), "{first:?}");
        assert!(first.windows(2).all(|w| w[0].1 < w[1].1), "offsets grow: {first:?}");
        assert_eq!(first.last().unwrap().1, std::fs::metadata(&path).unwrap().len());

        let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(lines(300..303).as_bytes()).unwrap();
        assert_eq!(positions(&path).await, [(epoch, std::fs::metadata(&path).unwrap().len())], "resumed: the same epoch");

        std::fs::write(&path, lines(1000..1100)).unwrap();
        let rewritten = positions(&path).await;
        assert!(rewritten.iter().all(|(e, _)| *e != epoch), "a rewritten file starts a new epoch");
    }

    #[tokio::test]
    async fn a_replaced_or_rewritten_file_is_read_from_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.jsonl");
        std::fs::write(&path, lines(0..100)).unwrap();
        assert_eq!(read_once(&path, true).await.len(), 100);

        // Rotated: a new file (another inode) under the same name.
        let next = dir.path().join("next.jsonl");
        std::fs::write(&next, lines(1000..1100)).unwrap();
        std::fs::rename(&next, &path).unwrap();
        assert_eq!(read_once(&path, true).await, (1000..1100).collect::<Vec<_>>());

        // Rewritten in place (same inode), longer than before: the head differs.
        std::fs::write(&path, lines(2000..2150)).unwrap();
        assert_eq!(read_once(&path, true).await, (2000..2150).collect::<Vec<_>>());
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

    /// Chunks decode in parallel; rows still come out in file order and every bad line is a dead
    /// letter with its own line number, whichever chunk it fell in.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn chunks_decoded_in_parallel_come_out_in_order_with_exact_line_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.jsonl");
        let text: String =
            (0..3000).map(|n| if n % 700 == 13 { format!("{{\"n\":\"bad {n}\"}}\n") } else { format!("{{\"n\":{n}}}\n") }).collect();
        std::fs::write(&path, text).unwrap();
        let (ctx, mut h) = source_context("events", &[""], 1024);
        build(&path, "read_once").run(ctx).await.unwrap();
        let mut got = Vec::new();
        while let Ok(d) = h.outputs.get_mut("").unwrap().try_recv() {
            got.extend(values(&d.batch.data));
        }
        assert_eq!(got, (0..3000).filter(|n| n % 700 != 13).collect::<Vec<_>>());
        let mut reasons = Vec::new();
        while let Ok(d) = h.dead_letters.try_recv() {
            let dl = d.batch.data;
            reasons.extend((0..dl.num_rows()).map(|i| dl.column(2).as_string::<i32>().value(i).split(": ").next().unwrap().to_string()));
        }
        let expected: Vec<String> = [13, 713, 1413, 2113, 2813].iter().map(|n| format!("{}:{}", path.display(), n + 1)).collect();
        assert_eq!(reasons, expected);
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

    /// A chunk is cut where an exactly-once sink stopped: each piece ends at its cut, the last at
    /// the chunk's end; cuts outside the chunk or at its edges cut nothing.
    #[test]
    fn chunks_are_cut_at_the_offsets_where_sinks_stopped() {
        let chunk = b"a\nbb\nccc\n".to_vec(); // bytes 100..109 of the file
        let pieces = |cuts: &[u64]| -> Vec<(String, u64)> {
            split_at_cuts(chunk.clone(), 100, cuts).into_iter().map(|(b, end)| (String::from_utf8(b).unwrap(), end)).collect()
        };
        assert_eq!(pieces(&[]), [("a\nbb\nccc\n".to_string(), 109)]);
        assert_eq!(pieces(&[50, 100, 109, 200]), [("a\nbb\nccc\n".to_string(), 109)]);
        assert_eq!(pieces(&[102, 105]), [("a\n".to_string(), 102), ("bb\n".to_string(), 105), ("ccc\n".to_string(), 109)]);
    }

    #[tokio::test]
    async fn a_missing_file_is_an_error_naming_it() {
        let (ctx, _h) = source_context("events", &[""], 8);
        let err = build(std::path::Path::new("/nonexistent/in.jsonl"), "read_once").run(ctx).await.unwrap_err();
        assert_eq!(format!("{err:#}"), "cannot open /nonexistent/in.jsonl: No such file or directory (os error 2)");
    }
}
