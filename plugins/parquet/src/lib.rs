//! `parquet` sink: a directory of Parquet files, Hive-style `date=YYYY-MM-DD/` partitions, one
//! file per partition per flush (by rows, bytes and age). Rows are encoded into an in-memory
//! Parquet file per partition as they arrive (so encoding runs beside the sources' decoding instead
//! of all at once at the flush, and the buffer holds compressed pages rather than Arrow arrays), and
//! a file is written whole — hidden temporary name, fsync, rename — so a reader never sees a partial
//! file, and a write that fails leaves nothing behind and loses nothing: the encoded file stays
//! buffered and the engine retries.
//!
//! `path` may also be an object store URL (`s3://bucket/prefix`, `gs://…`, `az://…`): each file is
//! then one upload (a single PUT, or a multipart upload for files over `part_size`), which the
//! store makes visible only once complete, and the rows' acks wait for it.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use datafusion::arrow::array::{Array, RecordBatch, TimestampMicrosecondArray, UInt32Array};
use datafusion::arrow::compute::take_record_batch;
use datafusion::arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::{Compression as PqCompression, ZstdLevel};
use datafusion::parquet::file::properties::WriterProperties;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::ObjectStoreExt;
use serde::Deserialize;
use tributary_sdk::config::ByteSize;
use tributary_sdk::{
    single_input_schema, ComponentConfig, ConfigError, DeadLetter, Durability, Period, Positions, Sink, SinkContext, SinkPlugin, Transient,
    Written,
};

/// Column compression.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    Zstd,
    Snappy,
    None,
}

/// What the files make up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Files in folders: a reader lists them.
    #[default]
    Parquet,
    /// A Delta Lake table: each flush's files are one commit to its `_delta_log`, with the
    /// positions of its rows (exactly once).
    Delta,
}

/// Config of a `parquet` sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParquetSinkConfig {
    /// Folder of this sink's files (created if missing), or an object store URL:
    /// `s3://bucket/prefix`, `gs://bucket/prefix`, `az://container/prefix`.
    pub path: String,
    /// `parquet` (default): files in folders. `delta`: a Delta Lake table at `path`.
    #[serde(default)]
    pub format: Format,
    /// How to reach the object store (endpoint, region, credentials, retries); see the README.
    #[serde(default)]
    pub storage: store::StorageOptions,
    /// Files larger than this are uploaded to an object store in parts of this size, several at
    /// once (default 8MiB; at least 5MiB, S3's smallest part).
    #[serde(default = "default_part_size")]
    pub part_size: ByteSize,
    /// Partition files into `date=YYYY-MM-DD/` folders by the time column's UTC date (default true).
    #[serde(default = "yes")]
    pub partition_by_date: bool,
    /// Timestamp column used for date partitions (default `ts`).
    #[serde(default = "default_time_column")]
    pub time_column: String,
    #[serde(default)]
    pub compression: Compression,
    /// Write a file once a partition holds this many rows (default 1000000).
    #[serde(default = "default_max_rows")]
    pub max_rows: usize,
    /// Write a file once a partition's rows take this much memory (Arrow; the file is smaller,
    /// compressed) (default 128MiB).
    #[serde(default = "default_max_bytes")]
    pub max_bytes: ByteSize,
    /// Write buffered rows at least this often, so data becomes visible and acknowledged (default 60s).
    #[serde(default = "default_max_age")]
    pub max_age: Period,
    /// File name prefix (default `part`).
    #[serde(default = "default_prefix")]
    pub file_prefix: String,
    /// Partitions buffered at most (default 256): beyond, the buffer counts as full and is
    /// written, so rows spread over many dates neither pile up nor make one huge flush.
    #[serde(default = "default_max_partitions")]
    pub max_partitions: usize,
    /// The view the chart page (`serve`, the admin address) opens on for this table; unset
    /// parts are guessed from the data.
    #[serde(default)]
    pub chart: ChartDefaults,
}

/// A table's default chart: what the page shows and splits it by when the URL names neither.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChartDefaults {
    /// The column shown first (a number).
    #[serde(default)]
    pub value: Option<String>,
    /// The column it is split by first.
    #[serde(default)]
    pub group_by: Option<String>,
}

/// `chart:` names columns of the input, and its value is a number.
fn check_chart(chart: &ChartDefaults, schema: &SchemaRef) -> Result<(), ConfigError> {
    let cols = || schema.fields().iter().map(|f| f.name().as_str()).collect::<Vec<_>>().join(", ");
    for (key, name) in [("value", &chart.value), ("group_by", &chart.group_by)] {
        let Some(name) = name else { continue };
        let at = format!("chart.{key}");
        let field = schema
            .field_with_name(name)
            .map_err(|_| ConfigError::at(&at, format!("column `{name}` is not in the input (columns: {})", cols())))?;
        if key == "value" && !field.data_type().is_numeric() {
            return Err(ConfigError::at(&at, format!("column `{name}` is {}, expected a number to chart", field.data_type())));
        }
    }
    Ok(())
}

fn default_part_size() -> ByteSize {
    ByteSize(8 << 20)
}

fn default_max_partitions() -> usize {
    256
}

fn yes() -> bool {
    true
}
fn default_time_column() -> String {
    "ts".into()
}
fn default_max_rows() -> usize {
    1_000_000
}
fn default_max_bytes() -> ByteSize {
    ByteSize(128 << 20)
}
fn default_max_age() -> Period {
    Period(Duration::from_secs(60))
}
fn default_prefix() -> String {
    "part".into()
}

pub struct ParquetSinkPlugin;

impl SinkPlugin for ParquetSinkPlugin {
    fn type_name(&self) -> &'static str {
        "parquet"
    }
    fn delivery(&self) -> &'static [tributary_sdk::delivery::SinkDelivery] {
        use tributary_sdk::delivery::SinkDelivery;
        &[
            SinkDelivery {
                variant: "",
                durable_when: "the file is fsynced and renamed (in a bucket: its PUT or multipart upload completed); a failed file leaves no temporary file and keeps its rows",
                duplicates: "none from retries, and none after a crash with `delivery: exactly_once` (each file's footer holds the positions of its flush; a flush a crash interrupted is removed at the next start); a `.tmp` file a `kill -9` left is removed at the next start (its rows were never acknowledged)",
            },
            SinkDelivery {
                variant: "with `format: delta`",
                durable_when: "the Delta commit holding the flush's files is written (on local disk: the files, the commit and `_delta_log` fsynced)",
                duplicates: "none from retries, and none after a crash with `delivery: exactly_once`; files a crash left uncommitted are not in the table (`VACUUM` removes them)",
            },
        ]
    }
    fn build(&self, config: &ComponentConfig, inputs: &[(String, SchemaRef)]) -> Result<Box<dyn Sink>, ConfigError> {
        let cfg: ParquetSinkConfig = config.decode()?;
        let schema = single_input_schema(inputs)?;
        let time_index = if cfg.partition_by_date {
            let idx = schema.index_of(&cfg.time_column).map_err(|_| {
                let cols: Vec<_> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                ConfigError::at(
                    "time_column",
                    format!(
                        "column `{}` is not in the input (columns: {}); set `time_column`, or `partition_by_date: false`",
                        cfg.time_column,
                        cols.join(", ")
                    ),
                )
            })?;
            match schema.field(idx).data_type() {
                DataType::Timestamp(TimeUnit::Microsecond, _) => Some(idx),
                other => {
                    return Err(ConfigError::at(
                        "time_column",
                        format!("column `{}` is {other}, expected a microsecond timestamp", cfg.time_column),
                    ))
                }
            }
        } else {
            None
        };
        check_chart(&cfg.chart, &schema)?;
        if cfg.max_partitions == 0 {
            return Err(ConfigError::at("max_partitions", "must be at least 1"));
        }
        if cfg.max_rows == 0 {
            return Err(ConfigError::at("max_rows", "must be at least 1"));
        }
        if cfg.part_size.0 < 5 << 20 {
            return Err(ConfigError::at("part_size", "must be at least 5MiB (the smallest part S3 takes)"));
        }
        let target = match (cfg.format, store::parse_location(&cfg.path, &cfg.storage)?) {
            (Format::Parquet, store::Location::Folder(folder)) => Target::Files(Files::Folder(folder)),
            (Format::Parquet, store::Location::Objects(lake)) => Target::Files(Files::Objects(lake)),
            (Format::Delta, _) => {
                let location = store::read_location(&cfg.path, &cfg.storage)?;
                Target::Delta(Box::new(delta::DeltaLog::new(location, &schema).map_err(|e| ConfigError::at("format", e))?))
            }
        };
        if cfg.file_prefix.is_empty() || cfg.file_prefix.contains(['/', '\\']) || cfg.file_prefix.starts_with('.') {
            return Err(ConfigError::at("file_prefix", "must be a plain file name prefix"));
        }
        let compression = match cfg.compression {
            Compression::Zstd => PqCompression::ZSTD(ZstdLevel::default()),
            Compression::Snappy => PqCompression::SNAPPY,
            Compression::None => PqCompression::UNCOMPRESSED,
        };
        let props = WriterProperties::builder()
            .set_compression(compression)
            // Bounded memory: a row group is buffered until written.
            .set_max_row_group_row_count(Some(128 * 1024))
            .build();
        ArrowWriter::try_new(Vec::new(), schema.clone(), Some(props.clone()))
            .map_err(|e| ConfigError::at("inputs", format!("these columns cannot be written as Parquet: {e}")))?;
        Ok(Box::new(ParquetSink {
            cfg,
            target,
            schema,
            time_index,
            props,
            buffered: BTreeMap::new(),
            written: None,
            staged: Positions::default(),
            flushing: None,
        }))
    }
}

/// Rows waiting for one partition folder's next file: a Parquet file being encoded in memory, then
/// (once finished, and until it is on disk) its bytes.
struct Partition {
    file: PartitionFile,
    rows: usize,
    /// The rows' Arrow size (what `max_bytes` counts).
    bytes: usize,
    /// `format: delta`: the file, once uploaded and until committed.
    uploaded: Option<deltalake_core::kernel::Add>,
}

enum PartitionFile {
    // Boxed: the writer is ~360 bytes, the finished bytes a Vec.
    Encoding(Box<ArrowWriter<Vec<u8>>>),
    Encoded(Bytes),
}

impl Partition {
    fn new(schema: SchemaRef, props: WriterProperties) -> Self {
        // The schema was checked by a writer at build: creating one cannot fail for it.
        let writer = ArrowWriter::try_new(Vec::new(), schema, Some(props)).expect("the schema was checked at build");
        Partition { file: PartitionFile::Encoding(Box::new(writer)), rows: 0, bytes: 0, uploaded: None }
    }

    fn add(&mut self, batch: &RecordBatch) -> anyhow::Result<()> {
        match &mut self.file {
            PartitionFile::Encoding(w) => w.write(batch).context("encoding Parquet"),
            PartitionFile::Encoded(_) => unreachable!("a finished partition takes no rows: it is written or retried"),
        }
    }

    /// Puts the flush's tag in the file's footer (a partition finished by a failed flush keeps
    /// the tag it has: the retry is the same flush).
    fn tag(&mut self, tag: &flushes::FlushTag) {
        if let PartitionFile::Encoding(w) = &mut self.file {
            tag.key_values().into_iter().for_each(|kv| w.append_key_value_metadata(kv));
        }
    }

    /// The whole file (footer included).
    fn finish(&mut self) -> anyhow::Result<&Bytes> {
        if let PartitionFile::Encoding(_) = self.file {
            let PartitionFile::Encoding(w) = std::mem::replace(&mut self.file, PartitionFile::Encoded(Bytes::new())) else {
                unreachable!()
            };
            self.file = PartitionFile::Encoded(w.into_inner().context("finishing the Parquet file")?.into());
        }
        match &self.file {
            PartitionFile::Encoded(bytes) => Ok(bytes),
            PartitionFile::Encoding(_) => unreachable!(),
        }
    }

    /// The rows, decoded back from the encoded file (when the engine takes them as dead letters).
    fn into_rows(mut self, schema: &SchemaRef) -> anyhow::Result<Vec<RecordBatch>> {
        let bytes = self.finish()?.clone();
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)?.build()?;
        let mut rows = Vec::new();
        for b in reader {
            rows.push(RecordBatch::try_new(schema.clone(), b?.columns().to_vec())?);
        }
        Ok(rows)
    }
}

/// What the files make up.
enum Target {
    Files(Files),
    /// Boxed: the table's state is large next to a path.
    Delta(Box<delta::DeltaLog>),
}

/// Where plain files go.
enum Files {
    Folder(PathBuf),
    Objects(store::ObjectLocation),
}

pub struct ParquetSink {
    cfg: ParquetSinkConfig,
    target: Target,
    schema: SchemaRef,
    time_index: Option<usize>,
    props: WriterProperties,
    /// Buffered rows by partition folder ("" when not partitioned), in folder order.
    buffered: BTreeMap<String, Partition>,
    /// Plain files, exactly once: the positions the files say were written (read from their
    /// footers when first asked), with what each completed flush added.
    written: Option<Positions>,
    /// Positions of the buffered rows.
    staged: Positions,
    /// The flush begun and not yet complete: its files carry this tag.
    flushing: Option<flushes::FlushTag>,
}

static FILE_SEQ: AtomicU64 = AtomicU64::new(0);

/// A new file's name: time-ordered, unique per process and across processes.
fn file_name(prefix: &str) -> String {
    format!(
        "{}-{}-{:06}-{:08x}.parquet",
        prefix,
        chrono::Utc::now().format("%Y%m%dT%H%M%S%.3f"),
        FILE_SEQ.fetch_add(1, Ordering::Relaxed),
        std::process::id()
    )
}

/// Parts uploaded at once in a multipart upload.
const PARTS_IN_FLIGHT: usize = 4;

impl ParquetSink {
    /// Writes the encoded `parquet` as one new file in `partition`: under a hidden temporary name,
    /// fsynced, then renamed, so a reader never sees a partial file. On any error the temporary file
    /// is removed and nothing is visible: the encoded file stays buffered for the retry.
    fn write_file(&self, folder: &Path, partition: &str, parquet: &[u8], rows: usize) -> anyhow::Result<()> {
        let dir = folder.join(partition);
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let name = file_name(&self.cfg.file_prefix);
        let (tmp, target) = (dir.join(format!(".{name}.tmp")), dir.join(name));
        let written = (|| -> anyhow::Result<()> {
            let mut file = File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
            file.write_all(parquet).with_context(|| format!("writing {}", tmp.display()))?;
            file.sync_all()?;
            drop(file);
            std::fs::rename(&tmp, &target).with_context(|| format!("renaming to {}", target.display()))
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written?;
        sync_dir(&dir);
        tracing::debug!(file = %target.display(), rows, bytes = parquet.len(), "parquet file complete");
        Ok(())
    }

    /// Encodes rows into a partition's file; true when it reached `max_rows` or `max_bytes`, or
    /// the buffer holds `max_partitions` partitions.
    fn buffer(&mut self, partition: String, batch: &RecordBatch) -> anyhow::Result<bool> {
        let (schema, props) = (&self.schema, &self.props);
        let p = self.buffered.entry(partition).or_insert_with(|| Partition::new(schema.clone(), props.clone()));
        p.add(batch)?;
        p.rows += batch.num_rows();
        p.bytes += batch.get_array_memory_size();
        Ok(p.rows >= self.cfg.max_rows || p.bytes as u64 >= self.cfg.max_bytes.0 || self.buffered.len() >= self.cfg.max_partitions)
    }

    /// Temporary files a crashed run left (a kill between create and rename): never visible to
    /// readers, and their rows were never acknowledged (the source sends them again), so they go.
    fn remove_stale_temporaries(&self, folder: &Path) -> usize {
        let prefix = format!(".{}-", self.cfg.file_prefix);
        let mut removed = 0;
        let mut folders = vec![folder.to_path_buf()];
        while let Some(dir) = folders.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for e in entries.flatten() {
                let path = e.path();
                let name = e.file_name().to_string_lossy().into_owned();
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    folders.push(path);
                } else if name.starts_with(&prefix) && name.ends_with(".parquet.tmp") {
                    match std::fs::remove_file(&path) {
                        Ok(()) => removed += 1,
                        Err(e) => tracing::warn!("cannot remove the stale temporary file {}: {e}", path.display()),
                    }
                }
            }
        }
        removed
    }
}

/// Uploads the encoded `parquet` as one new object in `partition`: one PUT, or a multipart
/// upload for files over `part_size`. Either becomes visible only when complete; a multipart
/// upload that fails is aborted, and the encoded file stays buffered for the retry. (Not a
/// method: the sink's Parquet writers are not `Sync`, so a future borrowing the whole sink could
/// not move between threads.)
async fn upload(
    lake: &store::ObjectLocation,
    file_prefix: &str,
    part_size: usize,
    partition: &str,
    parquet: Bytes,
    rows: usize,
) -> anyhow::Result<ObjectPath> {
    let mut path = lake.prefix.clone();
    if !partition.is_empty() {
        path = path.join(partition);
    }
    let path: ObjectPath = path.join(file_name(file_prefix));
    let shown = format!("{}{}", lake.store_url, path);
    let size = parquet.len();
    if size <= part_size {
        lake.store.put(&path, parquet.into()).await.with_context(|| format!("uploading {shown}"))?;
    } else {
        let mut upload = lake.store.put_multipart(&path).await.with_context(|| format!("starting the upload of {shown}"))?;
        // Parts are slices of the encoded file: no copy, whatever the part count.
        let parts: Vec<_> =
            (0..size).step_by(part_size).map(|at| upload.put_part(parquet.slice(at..size.min(at + part_size)).into())).collect();
        let uploaded = futures::stream::iter(parts).buffer_unordered(PARTS_IN_FLIGHT).try_collect::<Vec<()>>().await;
        let completed = match uploaded {
            Ok(_) => upload.complete().await.map(|_| ()),
            Err(e) => Err(e),
        };
        if let Err(e) = completed {
            // Not visible either way; aborting frees the parts the store holds.
            if let Err(abort) = upload.abort().await {
                tracing::warn!("could not abort the failed upload of {shown}: {abort}");
            }
            return Err(anyhow::Error::new(e).context(format!("uploading {shown} ({size} bytes in parts)")));
        }
    }
    tracing::debug!(object = %shown, rows, bytes = size, "parquet object complete");
    Ok(path)
}

/// `format: delta`'s flush: uploads the partitions not uploaded yet (a retry after a failed commit
/// does not upload them again), then commits them all, with the rows' positions, as one table
/// version. Nothing is visible before the commit; the buffer is emptied only after it.
async fn commit_to_delta(
    table: &mut delta::DeltaLog,
    buffered: &mut BTreeMap<String, Partition>,
    cfg: &ParquetSinkConfig,
) -> anyhow::Result<()> {
    let mut files = Vec::with_capacity(buffered.len());
    for (partition, p) in buffered.iter_mut() {
        let add = match &p.uploaded {
            Some(add) => add.clone(),
            None => {
                let parquet = p.finish()?.clone();
                let size = parquet.len();
                let lake = table.location();
                let path = upload(lake, &cfg.file_prefix, cfg.part_size.0 as usize, partition, parquet, p.rows).await?;
                if lake.is_local() {
                    // The commit that follows makes the rows acknowledged: the file is on disk first.
                    delta::sync_local(&path);
                }
                let relative: Vec<_> =
                    path.prefix_match(&lake.prefix).into_iter().flatten().map(|part| part.as_ref().to_string()).collect();
                let add = delta::add_action(&relative.join("/"), size, p.rows);
                p.uploaded = Some(add.clone());
                add
            }
        };
        files.push(add);
    }
    if files.is_empty() && !table.has_staged() {
        return Ok(());
    }
    table.commit(&files).await?;
    buffered.clear();
    Ok(())
}

/// Rows of a batch grouped by UTC date of the time column, in first-seen order, in one pass.
fn split_by_date(batch: &RecordBatch, time_index: usize) -> Vec<(String, Option<UInt32Array>)> {
    let ts = batch.column(time_index).as_any().downcast_ref::<TimestampMicrosecondArray>().expect("µs timestamps");
    const DAY_US: i64 = 86_400_000_000;
    let day = |i: usize| ts.is_valid(i).then(|| ts.value(i).div_euclid(DAY_US));
    let first = if batch.num_rows() > 0 { day(0) } else { None };
    if (0..batch.num_rows()).all(|i| day(i) == first) {
        return vec![(partition_name(first), None)];
    }
    let mut groups: Vec<(Option<i64>, Vec<u32>)> = Vec::new();
    let mut group_of: HashMap<Option<i64>, usize> = HashMap::new();
    for i in 0..batch.num_rows() {
        let d = day(i);
        let g = *group_of.entry(d).or_insert_with(|| {
            groups.push((d, Vec::new()));
            groups.len() - 1
        });
        groups[g].1.push(i as u32);
    }
    groups.into_iter().map(|(d, idx)| (partition_name(d), Some(UInt32Array::from(idx)))).collect()
}

fn partition_name(day: Option<i64>) -> String {
    match day.and_then(|d| chrono::DateTime::from_timestamp(d * 86_400, 0)) {
        Some(t) => format!("date={}", t.format("%Y-%m-%d")),
        None => "date=unknown".into(),
    }
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

#[async_trait::async_trait]
impl Sink for ParquetSink {
    async fn start(&mut self, ctx: &SinkContext) -> anyhow::Result<()> {
        if let Target::Delta(table) = &mut self.target {
            return table.open(&ctx.id, &ctx.metrics).await;
        }
        // An object store needs nothing made: a key's prefixes exist once it does, and an upload an
        // interrupted run left unfinished was never visible (a bucket lifecycle rule removes its parts).
        let Target::Files(Files::Folder(folder)) = &self.target else { return Ok(()) };
        std::fs::create_dir_all(folder).with_context(|| format!("cannot create {}", folder.display()))?;
        let removed = self.remove_stale_temporaries(folder);
        if removed > 0 {
            tracing::info!(sink = %ctx.id, removed, "removed temporary files an interrupted run left in {}", folder.display());
        }
        Ok(())
    }

    /// Buffers the rows by date; files are written by `flush` (on `max_age`, or at once when a
    /// partition reaches `max_rows`/`max_bytes`).
    async fn write(&mut self, batch: RecordBatch, _ctx: &SinkContext) -> Result<Written, Transient> {
        if batch.num_rows() == 0 {
            // Nothing to file (a Delta table still commits the position such a batch reached).
            return Ok(Written::with(Durability::Buffered, Vec::new()));
        }
        let mut full = false;
        match self.time_index {
            None => full |= self.buffer(String::new(), &batch).map_err(Transient::new)?,
            Some(t) => {
                for (partition, rows) in split_by_date(&batch, t) {
                    full |= match rows {
                        None => self.buffer(partition, &batch),
                        Some(idx) => self.buffer(partition, &take_record_batch(&batch, &idx)?),
                    }
                    .map_err(Transient::new)?;
                }
            }
        }
        Ok(Written::with(if full { Durability::BufferFull } else { Durability::Buffered }, Vec::new()))
    }

    /// One file per buffered partition. A partition written is dropped from the buffer at once,
    /// so a retry after a failure writes only the rest (no duplicate files).
    async fn flush(&mut self, _ctx: &SinkContext) -> Result<Vec<DeadLetter>, Transient> {
        if let Target::Delta(table) = &mut self.target {
            return commit_to_delta(table, &mut self.buffered, &self.cfg).await.map(|()| Vec::new()).map_err(Transient::new);
        }
        let Target::Files(files) = &self.target else { return Ok(Vec::new()) };
        if self.flushing.is_none() && !self.buffered.is_empty() {
            // A new flush: each of its files says which flush it belongs to, how many files that
            // flush has, and where the sink stands once they are all written.
            let mut positions = self.written.clone().unwrap_or_default();
            self.staged.iter().for_each(|p| positions.advance(&p));
            let tag = flushes::FlushTag::new(self.buffered.len(), positions);
            self.buffered.values_mut().for_each(|p| p.tag(&tag));
            self.flushing = Some(tag);
        }
        while let Some((partition, mut p)) = self.buffered.pop_first() {
            let rows = p.rows;
            let written = match p.finish().cloned() {
                Err(e) => Err(e),
                Ok(parquet) => match files {
                    Files::Folder(folder) => self.write_file(folder, &partition, &parquet, rows),
                    Files::Objects(lake) => {
                        upload(lake, &self.cfg.file_prefix, self.cfg.part_size.0 as usize, &partition, parquet, rows).await.map(drop)
                    }
                },
            };
            if let Err(e) = written {
                self.buffered.insert(partition, p);
                return Err(Transient::new(e));
            }
        }
        if let Some(flush) = self.flushing.take() {
            self.written = self.written.is_some().then_some(flush.positions);
            self.staged = Positions::default();
        }
        Ok(Vec::new())
    }

    fn flush_interval(&self) -> Option<Duration> {
        Some(self.cfg.max_age.0)
    }

    /// A Delta table stores positions in the commits that add the rows; plain files in their
    /// footers (see [`flushes`]).
    fn positions(&mut self) -> Option<&mut dyn tributary_sdk::PositionStore> {
        Some(self)
    }

    fn take_buffered(&mut self) -> Vec<RecordBatch> {
        match &mut self.target {
            // Their files, if uploaded, were never committed: no reader sees them.
            Target::Delta(table) => table.forget_staged(),
            Target::Files(files) => {
                self.staged = Positions::default();
                if let Some(flush) = self.flushing.take() {
                    // Files of this flush may be written, and their rows are acknowledged with
                    // the rest: a restart must not take the flush for one a crash interrupted.
                    close_flush(files, &self.cfg.file_prefix, &flush.id);
                }
            }
        }
        let mut rows = Vec::new();
        for (partition, p) in std::mem::take(&mut self.buffered) {
            match p.into_rows(&self.schema) {
                Ok(batches) => rows.extend(batches),
                // Parquet this sink encoded a moment ago reads back; if it ever did not, say so loudly.
                Err(e) => tracing::error!("parquet sink: the buffered rows of {partition} could not be read back: {e:#}"),
            }
        }
        rows
    }
}

#[async_trait::async_trait]
impl tributary_sdk::PositionStore for ParquetSink {
    async fn committed(&mut self, ctx: &SinkContext, streams: &[std::sync::Arc<str>]) -> anyhow::Result<tributary_sdk::Positions> {
        let files = match &self.target {
            Target::Delta(table) => return table.committed(streams).await,
            Target::Files(files) => files,
        };
        if let Some(written) = &self.written {
            return Ok(written.clone());
        }
        // The first question after a start: the files answer it.
        let lake = files.location()?;
        let recovered = flushes::recover(&lake, &self.cfg.file_prefix).await?;
        if !recovered.removed.is_empty() {
            tracing::info!(
                sink = %ctx.id,
                removed = recovered.removed.len(),
                "removed the files of a flush a crash interrupted: their rows were not acknowledged and are written again"
            );
        }
        self.written = Some(recovered.written.clone());
        Ok(recovered.written)
    }

    fn reached(&mut self, position: &tributary_sdk::Position) {
        match &mut self.target {
            Target::Delta(table) => table.reached(position),
            Target::Files(_) => self.staged.advance(position),
        }
    }
}

impl Files {
    /// The files' place as an object store location (a local folder through the file system store).
    fn location(&self) -> anyhow::Result<store::ObjectLocation> {
        match self {
            Files::Folder(folder) => store::ObjectLocation::local(folder).map_err(anyhow::Error::msg),
            Files::Objects(lake) => Ok(lake.clone()),
        }
    }
}

/// Leaves the marker of a flush given up on (see [`flushes`]). `take_buffered` is not async, so
/// a bucket's marker is put by a task of its own; a failure is logged.
fn close_flush(files: &Files, file_prefix: &str, flush_id: &str) {
    let lake = match files.location() {
        Ok(lake) => lake,
        Err(e) => return tracing::error!("cannot leave the marker of a flush given up on: {e:#}"),
    };
    let marker = flushes::closed_marker(&lake, file_prefix, flush_id);
    match files {
        Files::Folder(folder) => {
            let path = folder.join(marker.filename().unwrap_or_default());
            if let Err(e) = File::create(&path).and_then(|f| f.sync_all()) {
                tracing::error!("cannot write {}: {e}; a restart may take that flush's files for an interrupted one", path.display());
            }
            sync_dir(folder);
        }
        Files::Objects(_) => {
            tokio::spawn(async move {
                if let Err(e) = lake.store.put(&marker, Bytes::new().into()).await {
                    tracing::error!("cannot write {marker}: {e}; a restart may take that flush's files for an interrupted one");
                }
            });
        }
    }
}

pub mod delta;
mod file_streams;
mod flushes;
pub mod source;
pub mod store;

pub use source::{ParquetSourceConfig, ParquetSourcePlugin};

#[cfg(test)]
mod delta_tests;
#[cfg(test)]
mod s3_tests;
#[cfg(test)]
mod source_tests;
#[cfg(test)]
mod tests;
