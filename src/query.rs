//! `tributary query`: DataFusion SQL over Parquet output. Every folder under the data directory
//! is a table named after it (`./data/probes` → `probes`), with `date=` partitions as a column; a
//! Delta table (a folder with a `_delta_log`) is the files its log holds. A
//! folder of JSON-lines files (`*.jsonl`, such as the default dead-letter store
//! `./data/dead_letters`) is a table too. The data folder may be an object store prefix
//! (`s3://bucket/lake`): the same layout, listed level by level, never the whole bucket.

use std::sync::Arc;

use anyhow::{bail, Context};
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::listing::{ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{JsonReadOptions, ParquetReadOptions};
use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use tributary_parquet::store::{read_location, ObjectLocation, StorageOptions};

/// Output format of query results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum QueryFormat {
    Table,
    Csv,
    Json,
}

/// A table: its name and where its files are.
#[derive(Debug, Clone)]
pub struct Table {
    pub name: String,
    pub location: ObjectLocation,
}

/// `--data` or a `--table` path: a folder, or an object store URL (`s3://bucket/prefix`) reached
/// with the provider's environment (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, …).
pub fn data_location(data: &str) -> anyhow::Result<ObjectLocation> {
    read_location(data, &StorageOptions::default()).map_err(|e| anyhow::anyhow!("`{data}`: {}", e.message))
}

/// Tables found under `root` (one listing with a delimiter: its sub-folders), plus explicit
/// `name=path` ones.
pub async fn discover_tables(root: &ObjectLocation, explicit: &[String]) -> anyhow::Result<Vec<Table>> {
    let mut tables = Vec::new();
    for t in explicit {
        let (name, path) = t.split_once('=').with_context(|| format!("--table `{t}`: expected NAME=PATH"))?;
        tables.push(Table { name: name.to_string(), location: data_location(path).with_context(|| format!("--table `{t}`"))? });
    }
    for table in table_folders(root).await? {
        if !tables.iter().any(|t: &Table| t.name == table.name) && layout(&table.location).await?.has_files {
            tables.push(table);
        }
    }
    if tables.is_empty() {
        bail!(
            "no tables: `{}` has no folders with Parquet files (run a pipeline with a parquet sink first, or pass --table NAME=PATH)",
            shown(root)
        );
    }
    Ok(tables)
}

/// Every folder under `root` as a table (files or not), in name order: one listing with a
/// delimiter. `./data/probes` → `probes`; other characters than letters and digits become `_`.
pub async fn table_folders(root: &ObjectLocation) -> anyhow::Result<Vec<Table>> {
    let mut folders = list(root).await.with_context(|| format!("listing {}", root.url()))?.common_prefixes;
    folders.sort();
    Ok(folders
        .into_iter()
        .map(|folder| {
            let name = folder
                .filename()
                .unwrap_or_default()
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' })
                .collect();
            Table { name, location: ObjectLocation { prefix: folder, ..root.clone() } }
        })
        .collect())
}

/// A location as a user wrote it: a local folder as a path, a bucket as its URL.
fn shown(location: &ObjectLocation) -> String {
    match location.is_local() {
        true => format!("/{}", location.prefix),
        false => location.url(),
    }
}

/// One level of `location` (a missing local folder lists as empty).
async fn list(location: &ObjectLocation) -> anyhow::Result<object_store::ListResult> {
    match location.store.list_with_delimiter(Some(&location.prefix)).await {
        Err(object_store::Error::NotFound { .. }) => Ok(object_store::ListResult { common_prefixes: vec![], objects: vec![] }),
        other => Ok(other?),
    }
}

/// A finished Parquet file (not a hidden temporary).
fn is_parquet(path: &ObjectPath) -> bool {
    path.filename().is_some_and(|f| f.ends_with(".parquet") && !f.starts_with('.'))
}

/// What a table's place holds.
#[derive(Debug, Clone)]
pub struct TableLayout {
    pub location: ObjectLocation,
    /// JSON-lines files (the dead-letter store) and no Parquet.
    pub json_lines: bool,
    /// `date=` sub-folders (a `date` partition column), in date order.
    pub dates: Vec<ObjectPath>,
    /// The newest Parquet file found, whose schema is the table's: DataFusion would otherwise list
    /// the whole table and read every file's footer to infer one, at each registration.
    sample: Option<object_store::ObjectMeta>,
    /// Any Parquet or JSON-lines file at all.
    pub has_files: bool,
    /// A Delta table (a `_delta_log` folder): the files its log says it holds, which are the
    /// table, whatever else the folder holds (files a failed commit left, files a later one
    /// removed).
    pub delta_files: Option<Vec<ObjectPath>>,
}

/// Look at a table's place: one listing of its level; when the Parquet files are in `date=`
/// folders, one listing of the newest; in other sub-folders, a listing below until the first file.
pub async fn layout(location: &ObjectLocation) -> anyhow::Result<TableLayout> {
    let level = list(location).await.with_context(|| format!("listing {}", location.url()))?;
    if level.common_prefixes.iter().any(|p| p.filename() == Some("_delta_log")) {
        return delta_layout(location).await;
    }
    let mut dates: Vec<ObjectPath> =
        level.common_prefixes.iter().filter(|p| p.filename().is_some_and(|f| f.starts_with("date="))).cloned().collect();
    dates.sort();
    // `date=unknown` (rows without a time) sorts after every date: the newest is the last dated one.
    let newest_date = dates.iter().rev().find(|p| p.filename() != Some("date=unknown")).or(dates.last()).cloned();
    let newest_file =
        |objects: &[object_store::ObjectMeta]| objects.iter().filter(|o| is_parquet(&o.location)).max_by_key(|o| o.last_modified).cloned();
    let mut sample = newest_file(&level.objects);
    if let (None, Some(date)) = (&sample, &newest_date) {
        let newest = ObjectLocation { prefix: date.clone(), ..location.clone() };
        sample = newest_file(&list(&newest).await.with_context(|| format!("listing {}", newest.url()))?.objects);
    }
    if sample.is_none() && !level.common_prefixes.is_empty() {
        let mut below = location.store.list(Some(&location.prefix));
        while let Some(object) = below.try_next().await.with_context(|| format!("listing {}", location.url()))? {
            if is_parquet(&object.location) {
                sample = Some(object);
                break;
            }
        }
    }
    let json_lines = sample.is_none() && level.objects.iter().any(|o| o.location.extension() == Some("jsonl"));
    let has_files = sample.is_some() || json_lines;
    Ok(TableLayout { location: location.clone(), json_lines, dates, sample, has_files, delta_files: None })
}

/// A Delta table's files, from its log (no `date` column: its files' folders are not partitions
/// the log declares).
async fn delta_layout(location: &ObjectLocation) -> anyhow::Result<TableLayout> {
    let files = tributary_parquet::delta::table_files(location).await?.unwrap_or_default();
    let sample = files.last().map(|(path, size)| object_store::ObjectMeta {
        location: path.clone(),
        last_modified: chrono::Utc::now(),
        size: *size,
        e_tag: None,
        version: None,
    });
    let has_files = !files.is_empty();
    let delta_files = Some(files.into_iter().map(|(path, _)| path).collect());
    Ok(TableLayout { location: location.clone(), json_lines: false, dates: Vec::new(), sample, has_files, delta_files })
}

/// Register the table (Parquet, with `date=` partitions as a column, or JSON lines) in `ctx`.
pub async fn register(ctx: &datafusion::prelude::SessionContext, table: &Table) -> anyhow::Result<()> {
    register_layout(ctx, &table.name, &layout(&table.location).await?).await
}

/// Register a table whose place [`layout`] looked at.
pub async fn register_layout(ctx: &datafusion::prelude::SessionContext, name: &str, layout: &TableLayout) -> anyhow::Result<()> {
    layout.location.register_in(ctx);
    let location = &layout.location.url();
    if layout.json_lines {
        let opts = JsonReadOptions { file_extension: ".jsonl", ..Default::default() };
        ctx.register_json(name, location, opts).await.with_context(|| format!("table `{name}` at {location}"))?;
        return Ok(());
    }
    if let Some(files) = &layout.delta_files {
        return register_files(ctx, name, layout, files).await;
    }
    let partitions = if layout.dates.is_empty() { vec![] } else { vec![("date".to_string(), DataType::Utf8)] };
    let schema = file_schema(ctx, name, layout).await?;
    let mut opts = ParquetReadOptions::default().table_partition_cols(partitions);
    if let Some(schema) = &schema {
        opts = opts.schema(schema);
    }
    ctx.register_parquet(name, location, opts).await.with_context(|| format!("table `{name}` at {location}"))?;
    Ok(())
}

/// Register exactly `files` (of a Delta table) as the table.
async fn register_files(
    ctx: &datafusion::prelude::SessionContext,
    name: &str,
    layout: &TableLayout,
    files: &[ObjectPath],
) -> anyhow::Result<()> {
    let schema = file_schema(ctx, name, layout).await?.with_context(|| format!("table `{name}` has no Parquet file"))?;
    let urls = files
        .iter()
        .map(|f| ListingTableUrl::parse(format!("{}{f}", layout.location.store_url)))
        .collect::<datafusion::error::Result<Vec<_>>>()?;
    let options = ListingOptions::new(Arc::new(parquet_format(ctx))).with_file_extension(".parquet");
    let config = ListingTableConfig::new_with_multi_paths(urls).with_listing_options(options).with_schema(schema);
    ctx.register_table(name, Arc::new(ListingTable::try_new(config)?)).with_context(|| format!("table `{name}`"))?;
    Ok(())
}

/// The table's file schema (without `date`), from its newest file only.
pub async fn file_schema(
    ctx: &datafusion::prelude::SessionContext,
    name: &str,
    layout: &TableLayout,
) -> anyhow::Result<Option<datafusion::arrow::datatypes::SchemaRef>> {
    let Some(file) = &layout.sample else { return Ok(None) };
    // With the session's Parquet options, as DataFusion's own inference would (view types).
    let schema = parquet_format(ctx)
        .infer_schema(&ctx.state(), &layout.location.store, std::slice::from_ref(file))
        .await
        .with_context(|| format!("table `{name}`: reading the schema of {}", file.location))?;
    Ok(Some(schema))
}

/// Parquet as this session reads it.
pub fn parquet_format(ctx: &datafusion::prelude::SessionContext) -> ParquetFormat {
    ParquetFormat::default().with_options(ctx.state().table_options().parquet.clone())
}

/// Run `sql` over the tables and return the result batches.
pub async fn run_query(sql: &str, tables: &[Table]) -> anyhow::Result<Vec<RecordBatch>> {
    crate::sql::limits::check(sql).map_err(anyhow::Error::msg)?;
    let ctx = crate::sql::session();
    for table in tables {
        register(&ctx, table).await?;
    }
    let df = ctx.sql(sql).await?;
    let plan = df.create_physical_plan().await?;
    let work = datafusion::physical_plan::collect(plan.clone(), ctx.task_ctx());
    Ok(with_progress(&plan, work).await?)
}

/// `work` (executing `plan`), showing the rows its scans have read (out of what the files'
/// statistics say they hold) once it has run for a second (`TRIBUTARY_PROGRESS_AFTER`): a quick
/// query prints nothing but its answer.
async fn with_progress<T>(plan: &Arc<dyn ExecutionPlan>, work: impl std::future::Future<Output = T>) -> T {
    let quiet_for = std::env::var("TRIBUTARY_PROGRESS_AFTER")
        .ok()
        .and_then(|v| humantime::parse_duration(&v).ok())
        .unwrap_or(std::time::Duration::from_secs(1));
    tokio::pin!(work);
    tokio::select! {
        biased;
        done = &mut work, if !quiet_for.is_zero() => return done,
        _ = tokio::time::sleep(quiet_for) => {}
    }
    let progress = tributary_sdk::progress_report::ProgressReport::new(
        "query",
        "rows read",
        scan_rows(plan, |p| {
            let stats = datafusion::physical_plan::statistics::StatisticsContext::new()
                .compute(p.as_ref(), &datafusion::physical_plan::statistics::StatisticsArgs::new());
            stats.ok().and_then(|s| s.num_rows.get_value().copied()).unwrap_or(0)
        }),
    );
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(200));
    loop {
        tokio::select! {
            done = &mut work => {
                progress.set(scan_rows(plan, |p| p.metrics().and_then(|m| m.output_rows()).unwrap_or(0)));
                progress.finish();
                return done;
            }
            _ = tick.tick() => progress.set(scan_rows(plan, |p| p.metrics().and_then(|m| m.output_rows()).unwrap_or(0))),
        }
    }
}

/// `rows` summed over the plan's leaves (its scans).
fn scan_rows(plan: &Arc<dyn ExecutionPlan>, rows: impl Fn(&Arc<dyn ExecutionPlan>) -> usize + Copy) -> u64 {
    if plan.children().is_empty() {
        return rows(plan) as u64;
    }
    plan.children().into_iter().map(|c| scan_rows(c, rows)).sum()
}

/// Render results in the chosen format.
pub fn render(batches: &[RecordBatch], format: QueryFormat) -> anyhow::Result<String> {
    Ok(match format {
        QueryFormat::Table => datafusion::arrow::util::pretty::pretty_format_batches(batches)?.to_string() + "\n",
        QueryFormat::Csv => {
            let mut buf = Vec::new();
            {
                let mut w = datafusion::arrow::csv::WriterBuilder::new().with_header(true).build(&mut buf);
                for b in batches {
                    w.write(b)?;
                }
            }
            String::from_utf8(buf)?
        }
        QueryFormat::Json => {
            let mut buf = Vec::new();
            {
                let mut w = datafusion::arrow::json::LineDelimitedWriter::new(&mut buf);
                for b in batches {
                    w.write(b)?;
                }
                w.finish()?;
            }
            String::from_utf8(buf)?
        }
    })
}
