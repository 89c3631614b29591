//! `tributary query`: DataFusion SQL over Parquet output. Every folder under the data directory
//! is a table named after it (`./data/probes` → `probes`), with `date=` partitions as a column. A
//! folder of JSON-lines files (`*.jsonl`, such as the default dead-letter store
//! `./data/dead_letters`) is a table too.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::prelude::{JsonReadOptions, ParquetReadOptions};

/// Output format of query results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum QueryFormat {
    Table,
    Csv,
    Json,
}

/// Tables found under `data_dir`, plus explicit `name=path` ones.
pub fn discover_tables(data_dir: &Path, explicit: &[String]) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let mut tables = Vec::new();
    for t in explicit {
        let (name, path) = t.split_once('=').with_context(|| format!("--table `{t}`: expected NAME=PATH"))?;
        tables.push((name.to_string(), PathBuf::from(path)));
    }
    if data_dir.is_dir() {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(data_dir)?.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_dir()).collect();
        dirs.sort();
        for d in dirs {
            let name: String = d
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' })
                .collect();
            if !tables.iter().any(|(n, _)| *n == name) && (contains_parquet(&d) || contains_json_lines(&d)) {
                tables.push((name, d));
            }
        }
    }
    if tables.is_empty() {
        bail!(
            "no tables: `{}` has no folders with Parquet files (run a pipeline with a parquet sink first, or pass --table NAME=PATH)",
            data_dir.display()
        );
    }
    Ok(tables)
}

fn contains_parquet(dir: &Path) -> bool {
    std::fs::read_dir(dir).into_iter().flatten().flatten().any(|e| {
        let p = e.path();
        (p.is_dir() && contains_parquet(&p))
            || p.extension().is_some_and(|x| x == "parquet") && !e.file_name().to_string_lossy().starts_with('.')
    })
}

/// A folder with `*.jsonl` files directly in it (and no Parquet: that takes precedence).
fn contains_json_lines(dir: &Path) -> bool {
    std::fs::read_dir(dir).into_iter().flatten().flatten().any(|e| e.path().extension().is_some_and(|x| x == "jsonl"))
}

fn has_date_partitions(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| e.path().is_dir() && e.file_name().to_string_lossy().starts_with("date="))
}

/// What a table folder holds, found with blocking file-system calls.
#[derive(Debug, Clone)]
pub struct TableLayout {
    /// The folder as a DataFusion location (absolute, ending in `/`).
    location: String,
    /// JSON-lines files (the dead-letter store) and no Parquet.
    json_lines: bool,
    /// `date=` sub-folders: a `date` partition column.
    date_partitions: bool,
    /// Any Parquet or JSON-lines file at all.
    pub has_files: bool,
}

/// Look at the folder `path` (blocking: call it off the async threads where that matters).
pub fn layout(name: &str, path: &Path) -> anyhow::Result<TableLayout> {
    let location = format!("{}/", path.canonicalize().with_context(|| format!("table `{name}`: {}", path.display()))?.display());
    let parquet = contains_parquet(path);
    let json_lines = !parquet && contains_json_lines(path);
    Ok(TableLayout { location, json_lines, date_partitions: has_date_partitions(path), has_files: parquet || json_lines })
}

/// Register the table at `path` (Parquet, with `date=` partitions as a column, or JSON lines) in `ctx`.
pub async fn register(ctx: &datafusion::prelude::SessionContext, name: &str, path: &Path) -> anyhow::Result<()> {
    register_layout(ctx, name, &layout(name, path)?).await
}

/// Register a table whose folder [`layout`] looked at.
pub async fn register_layout(ctx: &datafusion::prelude::SessionContext, name: &str, layout: &TableLayout) -> anyhow::Result<()> {
    let location = &layout.location;
    if layout.json_lines {
        let opts = JsonReadOptions { file_extension: ".jsonl", ..Default::default() };
        ctx.register_json(name, location, opts).await.with_context(|| format!("table `{name}` at {location}"))?;
        return Ok(());
    }
    let partitions = if layout.date_partitions { vec![("date".to_string(), DataType::Utf8)] } else { vec![] };
    let opts = ParquetReadOptions::default().table_partition_cols(partitions);
    ctx.register_parquet(name, location, opts).await.with_context(|| format!("table `{name}` at {location}"))?;
    Ok(())
}

/// Run `sql` over the tables and return the result batches.
pub async fn run_query(sql: &str, tables: &[(String, PathBuf)]) -> anyhow::Result<Vec<RecordBatch>> {
    let ctx = crate::sql::session();
    for (name, path) in tables {
        register(&ctx, name, path).await?;
    }
    let df = ctx.sql(sql).await?;
    Ok(df.collect().await?)
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
