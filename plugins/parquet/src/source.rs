//! `parquet` source: reads a Parquet lake back in (the `date=` layout the sink writes, or any
//! folder of Parquet files; local or in object storage) — to replay stored data through new SQL
//! or into another sink. The declared columns are read (cast to their declared types), rows in
//! `[from, to)` only, in event-time order: `date=` folders in date order, each folder's files
//! merged by their time column. `read_once` ends after the last folder; `follow` then looks for
//! new files every `poll_interval` and reads each new file once. On an exactly-once path the files
//! of a folder are read one after another instead, each in stored order, with positions
//! (see [`crate::file_streams`]).

use std::collections::HashSet;
use std::time::Duration;

use anyhow::Context;
use datafusion::arrow::datatypes::{DataType, Field, SchemaRef};
use datafusion::common::Column;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::logical_expr::{cast, lit, Expr};
use datafusion::prelude::{DataFrame, ParquetReadOptions, SessionConfig, SessionContext};
use datafusion::scalar::ScalarValue;
use futures::StreamExt;
use object_store::path::Path as ObjectPath;
use serde::Deserialize;
use tributary_sdk::{
    BuiltSource, ComponentConfig, ConfigError, DeclaredSchema, OutputSpec, Period, Replay, Source, SourceContext, SourcePlugin,
};

use crate::file_streams::{self, FileStream, Shape};
use crate::store::{self, ObjectLocation, StorageOptions};

/// When the source is done.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadMode {
    /// Read what is there, then finish (the pipeline stops when all sources are done).
    #[default]
    ReadOnce,
    /// Keep looking for new files and read each once.
    Follow,
}

/// Config of a `parquet` source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParquetSourceConfig {
    /// A folder or object store URL (`s3://bucket/lake/probes`): one table, with or without
    /// `date=` folders.
    pub path: String,
    /// How to reach object storage (as for the sink).
    #[serde(default)]
    pub storage: StorageOptions,
    /// The columns to read and their types; a file lacking one, or holding it with a type that
    /// does not convert, stops the source with an error naming both.
    pub schema: DeclaredSchema,
    /// The event-time column: order and `from`/`to` (default `ts`; must be declared `timestamp`).
    #[serde(default = "default_time_column")]
    pub time_column: String,
    /// Earliest event time read (RFC 3339), inclusive.
    pub from: Option<String>,
    /// Latest event time read (RFC 3339), exclusive.
    pub to: Option<String>,
    #[serde(default)]
    pub mode: ReadMode,
    /// How often `follow` looks for new files (default 10s).
    #[serde(default = "default_poll_interval")]
    pub poll_interval: Period,
}

fn default_time_column() -> String {
    "ts".into()
}
fn default_poll_interval() -> Period {
    Period(Duration::from_secs(10))
}

pub struct ParquetSourcePlugin;

impl SourcePlugin for ParquetSourcePlugin {
    fn type_name(&self) -> &'static str {
        "parquet"
    }
    fn delivery(&self) -> &'static [tributary_sdk::delivery::SourceDelivery] {
        use tributary_sdk::delivery::SourceDelivery;
        &[SourceDelivery {
            variant: "",
            guarantee: "at-least-once by reading again; exactly once into `delivery: exactly_once` sinks",
            how: "no acknowledgements or checkpoints: a restart reads the time range again from its start, in event-time order. On an exactly-once path each file is a stream of positions (`<source>/<path>`, the rows read so far), read in stored order, one file after another; at each folder it asks the sinks where they stopped and skips what they wrote",
            duplicates: "everything read before a crash, after it (an upsert sink converges); none in an exactly-once sink",
            crash_loses: "nothing: the files stay",
        }]
    }

    fn build(&self, config: &ComponentConfig) -> Result<BuiltSource, ConfigError> {
        let cfg: ParquetSourceConfig = config.decode()?;
        let schema = cfg.schema.arrow_schema();
        match schema.field_with_name(&cfg.time_column).map(|f| f.data_type().clone()) {
            Ok(DataType::Timestamp(..)) => {}
            Ok(other) => {
                return Err(ConfigError::at("time_column", format!("column `{}` is declared {other}, not timestamp", cfg.time_column)))
            }
            Err(_) => return Err(ConfigError::at("time_column", format!("column `{}` is not in `schema`", cfg.time_column))),
        }
        let instant = |key: &str, value: &Option<String>| -> Result<Option<i64>, ConfigError> {
            value
                .as_deref()
                .map(|v| {
                    chrono::DateTime::parse_from_rfc3339(v)
                        .map(|t| t.timestamp_micros())
                        .map_err(|e| ConfigError::at(key, format!("`{v}` is not an RFC 3339 time ({e})")))
                })
                .transpose()
        };
        let (from, to) = (instant("from", &cfg.from)?, instant("to", &cfg.to)?);
        if let (Some(f), Some(t)) = (from, to) {
            if f >= t {
                return Err(ConfigError::at("to", "must be after `from`"));
            }
        }
        let location = store::read_location(&cfg.path, &cfg.storage)?;
        let source = ParquetSource { cfg, location, schema: schema.clone(), from, to };
        Ok(BuiltSource { outputs: vec![OutputSpec::main(schema)], source: Box::new(source) })
    }
}

pub struct ParquetSource {
    cfg: ParquetSourceConfig,
    location: ObjectLocation,
    schema: SchemaRef,
    /// `[from, to)` in µs.
    from: Option<i64>,
    to: Option<i64>,
}

fn column(name: &str) -> Expr {
    Expr::Column(Column::new_unqualified(name))
}

/// A declared column against the one the files hold (`found`, `None` when they lack it): an
/// error names the column and `shown` (the files) when it is missing or does not convert.
pub(crate) fn check_declared(declared: &Field, found: Option<&Field>, shown: &str) -> anyhow::Result<()> {
    let name = declared.name();
    let found = found.ok_or_else(|| anyhow::anyhow!("column `{name}` (declared in `schema`) is not in {shown}"))?;
    if !datafusion::arrow::compute::can_cast_types(found.data_type(), declared.data_type()) {
        anyhow::bail!(
            "column `{name}` is {} in {shown}, which does not convert to the declared {}",
            found.data_type(),
            declared.data_type()
        );
    }
    Ok(())
}

/// `date=YYYY-MM-DD` of an instant in µs.
fn date_folder(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us).map_or_else(|| "date=unknown".into(), |t| t.format("date=%Y-%m-%d").to_string())
}

impl ParquetSource {
    /// The groups to read, in order: each `date=` folder in the range (or the table's own folder
    /// when it has none), with its Parquet files not read yet (name order).
    async fn pending(&self, read: &HashSet<ObjectPath>) -> anyhow::Result<Vec<(String, Vec<object_store::ObjectMeta>)>> {
        let top = self.location.store.list_with_delimiter(Some(&self.location.prefix)).await?;
        let mut folders: Vec<ObjectPath> =
            top.common_prefixes.into_iter().filter(|p| p.filename().is_some_and(|f| f.starts_with("date="))).collect();
        folders.sort();
        let (first, last) = (self.from.map(date_folder), self.to.map(|t| date_folder(t - 1)));
        let in_range = |name: &str| {
            let dated = name != "date=unknown";
            // Rows without a time fall outside any range.
            (first.is_none() && last.is_none())
                || dated && first.as_deref().is_none_or(|f| name >= f) && last.as_deref().is_none_or(|l| name <= l)
        };
        let mut groups = Vec::new();
        let unread = |objects: Vec<object_store::ObjectMeta>| -> Vec<object_store::ObjectMeta> {
            let mut files: Vec<object_store::ObjectMeta> = objects
                .into_iter()
                .filter(|o| {
                    let p = &o.location;
                    p.filename().is_some_and(|f| f.ends_with(".parquet") && !f.starts_with('.')) && !read.contains(p)
                })
                .collect();
            files.sort_by(|a, b| a.location.cmp(&b.location));
            files
        };
        let here = unread(top.objects);
        if !here.is_empty() {
            groups.push((self.location.url(), here));
        }
        for folder in folders.into_iter().filter(|f| f.filename().is_some_and(in_range)) {
            let listed = self.location.store.list_with_delimiter(Some(&folder)).await?;
            let files = unread(listed.objects);
            if !files.is_empty() {
                groups.push((folder.to_string(), files));
            }
        }
        Ok(groups)
    }

    /// The files as one DataFrame of the declared columns, cast to their declared types; an error
    /// names a column the files lack or hold with a type that does not convert.
    async fn declared(&self, session: &SessionContext, files: &[ObjectPath]) -> anyhow::Result<(DataFrame, String)> {
        let urls: Vec<String> = files.iter().map(|f| format!("{}{}", self.location.store_url, f)).collect();
        let shown = urls.join(", ");
        let df = session.read_parquet(urls, ParquetReadOptions::default()).await.with_context(|| format!("reading {shown}"))?;
        let available = df.schema().clone();
        let mut columns = Vec::new();
        for field in self.schema.fields() {
            let name = field.name();
            check_declared(field, available.field_with_unqualified_name(name).ok().map(|f| f.as_ref()), &shown)?;
            columns.push(cast(column(name), field.data_type().clone()).alias(name));
        }
        Ok((df.select(columns)?, shown))
    }

    /// Reads one group's files: the declared columns, cast, in range, sorted by time.
    async fn read_group(&self, session: &SessionContext, files: &[ObjectPath], ctx: &SourceContext) -> anyhow::Result<bool> {
        let (mut df, shown) = self.declared(session, files).await?;
        let time = || column(&self.cfg.time_column);
        let at = |us: i64| lit(ScalarValue::TimestampMicrosecond(Some(us), Some("UTC".into())));
        if let Some(from) = self.from {
            df = df.filter(time().gt_eq(at(from)))?;
        }
        if let Some(to) = self.to {
            df = df.filter(time().lt(at(to)))?;
        }
        let mut batches = df.sort(vec![time().sort(true, false)])?.execute_stream().await?;
        while let Some(batch) = batches.next().await {
            let batch = batch.with_context(|| format!("reading {shown}"))?;
            if batch.num_rows() > 0 && ctx.send(batch).await.is_err() {
                return Ok(false);
            }
            if ctx.shutdown.is_cancelled() {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

impl ParquetSource {
    /// Exactly once: the files one after another, each in stored order, with positions (see
    /// [`file_streams`]); the sinks are asked once per folder where they stopped in its files.
    async fn send_files(&self, files: Vec<object_store::ObjectMeta>, ctx: &SourceContext) -> anyhow::Result<bool> {
        let files: Vec<FileStream> = files.into_iter().map(|meta| FileStream::new(&ctx.id, &self.location, meta)).collect();
        let streams: Vec<_> = files.iter().map(|f| f.stream.clone()).collect();
        let written = ctx.sink_positions.written(&streams).await.context("asking the exactly-once sinks where they stopped")?;
        let shape = Shape { schema: &self.schema, time_column: &self.cfg.time_column, from: self.from, to: self.to };
        for file in &files {
            if !file_streams::send_file(&self.location, file, &file.cuts(&written), &shape, ctx).await? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn session(&self) -> anyhow::Result<SessionContext> {
        // Sorting a folder's rows may take more memory than a pipeline should: past this it spills
        // to temporary files.
        let runtime = RuntimeEnvBuilder::new().with_memory_limit(256 << 20, 1.0).build_arc()?;
        let session = SessionContext::new_with_config_rt(SessionConfig::new(), runtime);
        self.location.register_in(&session);
        Ok(session)
    }
}

#[async_trait::async_trait]
impl Source for ParquetSource {
    /// A restart reads the range again; on an exactly-once path each file is a stream of
    /// positions, which the sinks store (see [`file_streams`]).
    fn replay(&self) -> Replay {
        Replay::WithPositions
    }
    /// The declared columns against the newest file the source would read (none yet: nothing to
    /// check).
    async fn check(&mut self) -> anyhow::Result<()> {
        let groups = self.pending(&HashSet::new()).await.with_context(|| format!("listing {}", self.location.url()))?;
        let Some(newest) = groups.last().and_then(|(_, files)| files.last()) else { return Ok(()) };
        self.declared(&self.session()?, std::slice::from_ref(&newest.location)).await.map(|_| ())
    }

    async fn run(self: Box<Self>, ctx: SourceContext) -> anyhow::Result<()> {
        let session = self.session()?;
        let mut read: HashSet<ObjectPath> = HashSet::new();
        loop {
            for (group, files) in self.pending(&read).await.with_context(|| format!("listing {}", self.location.url()))? {
                tracing::debug!(source = %ctx.id, group, files = files.len(), "reading parquet files");
                let paths: Vec<ObjectPath> = files.iter().map(|f| f.location.clone()).collect();
                let sent = match ctx.sink_positions.is_empty() {
                    true => self.read_group(&session, &paths, &ctx).await?,
                    false => self.send_files(files, &ctx).await?,
                };
                if !sent {
                    return Ok(());
                }
                read.extend(paths);
            }
            if self.cfg.mode == ReadMode::ReadOnce {
                return Ok(());
            }
            tokio::select! {
                _ = ctx.shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(self.cfg.poll_interval.0) => {}
            }
        }
    }
}
