//! `tables:` — named reference tables (inventories: sites, rooms, customers) that every SQL
//! transform reads by name, loaded before the sources start and refreshed in the background.
//!
//! A refresh loads the whole table aside and then swaps it in at once ([`LookupTable::replace`]);
//! a query pins one snapshot for its whole execution, so a join sees the old rows or the new ones,
//! never a mix. A refresh that fails keeps the rows the table had, and says why.

mod file;
pub mod latest;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tributary_sdk::{ComponentConfig, ConfigError, DeclaredSchema, Period, Secret};
use tributary_timescale::PgQuery;

use crate::config::TableDecl;
use crate::sql::LookupTable;
pub use file::FileFormat;
pub use latest::{LatestKey, LatestTableSink, LATEST_TABLE_SINK};

/// A table's options, by `type:`.
#[derive(Debug)]
enum TableConfig {
    File(FileTableConfig),
    Postgres(PostgresTableConfig),
    Latest(LatestTableConfig),
}

impl TableConfig {
    /// Decoded per `type:` (not as a serde-tagged enum, which would lose the path of an error
    /// inside the options).
    fn decode(name: &str, options: &serde_yaml::Value) -> Result<TableConfig, ConfigError> {
        let mut options = options.clone();
        let type_name = options.as_mapping_mut().and_then(|m| m.remove("type"));
        let config = ComponentConfig::new(name.to_string(), options);
        match type_name.as_ref().map(|t| t.as_str()) {
            Some(Some("file")) => config.decode().map(TableConfig::File),
            Some(Some("postgres")) => config.decode().map(TableConfig::Postgres),
            Some(Some("latest")) => config.decode().map(TableConfig::Latest),
            Some(Some(other)) => Err(ConfigError::at("type", format!("unknown table type `{other}`, expected one of {TABLE_TYPES}"))),
            Some(None) => Err(ConfigError::at("type", format!("expected one of {TABLE_TYPES}"))),
            None => Err(ConfigError::at("", format!("missing field `type`: one of {TABLE_TYPES}"))),
        }
    }
}

const TABLE_TYPES: &str = "`file`, `postgres`, `latest`";

/// `type: latest`: the newest row per key of a source's or transform's output, kept as its rows
/// arrive.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatestTableConfig {
    /// A source's or transform's output, as in `inputs:` (`mesh.cluster_details`, `srt`,
    /// `session_state`).
    input: String,
    /// The columns that identify a row; a newer row with the same values replaces the older one.
    key: Vec<String>,
}

/// `type: file`: a CSV, JSON-lines or Parquet file, read again when it changes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTableConfig {
    path: PathBuf,
    /// `csv` (with a header row), `jsonl` or `parquet`; default from the file's extension.
    #[serde(default)]
    format: Option<FileFormat>,
    /// The columns and their types; default read from the file when the pipeline is planned.
    #[serde(default)]
    schema: Option<DeclaredSchema>,
    /// How often the file is checked for a change (default `10s`).
    #[serde(default = "default_file_refresh")]
    refresh: Period,
}

/// `type: postgres`: a query's result, run again every `refresh`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresTableConfig {
    /// libpq connection string or URL (`sslmode` as in the `timescale` sink). Redacted.
    connection: Secret,
    query: String,
    /// The columns the query returns, in order, with their types (declared, so `validate` can
    /// plan joins without a database).
    schema: DeclaredSchema,
    /// How often the query runs again (default `1m`).
    #[serde(default = "default_query_refresh")]
    refresh: Period,
    /// A connection or query that takes longer fails (default `30s`).
    #[serde(default = "default_query_timeout")]
    timeout: Period,
}

fn default_file_refresh() -> Period {
    Period::from_secs(10)
}
fn default_query_refresh() -> Period {
    Period::from_secs(60)
}
fn default_query_timeout() -> Period {
    Period::from_secs(30)
}

/// How a table's rows are loaded.
enum Loader {
    File(file::FileTable),
    Postgres(Box<PgQuery>),
    /// Kept by the engine's sink of that name: nothing to load.
    Latest,
    /// Given rows (a pipeline test's fixture), never refreshed.
    Rows(Vec<RecordBatch>),
}

/// A table of a plan: its declaration (a reload compares it), the table SQL reads, and its loader.
pub struct PlannedTable {
    pub decl: TableDecl,
    pub table: Arc<LookupTable>,
    pub stats: Arc<TableStats>,
    /// A latest table's input and key: the engine's sink that keeps it.
    pub kept_by: Option<LatestKey>,
    loader: Arc<Loader>,
    refresh: Duration,
}

/// What a table's loads came to, for `/metrics` and the logs.
#[derive(Debug, Default)]
pub struct TableStats {
    pub loads: AtomicU64,
    pub failures: AtomicU64,
    pub last_error: Mutex<Option<String>>,
}

/// The output a latest table keeps (`None` for other tables, or when its options do not decode:
/// `plan` says why). The planner plans such a table once its input's schema is known.
pub fn latest_input(decl: &TableDecl) -> Option<String> {
    match TableConfig::decode(&decl.name, &decl.options) {
        Ok(TableConfig::Latest(l)) => Some(l.input),
        _ => None,
    }
}

/// Decode and check `decl`; a file table's schema is read from the file unless declared, a
/// latest table's is its input's (`outputs`: the schema of every output planned so far).
pub async fn plan(decl: &TableDecl, outputs: &BTreeMap<String, SchemaRef>) -> Result<PlannedTable, ConfigError> {
    let config = TableConfig::decode(&decl.name, &decl.options)?;
    let mut kept_by = None;
    let (schema, loader, refresh) = match config {
        TableConfig::File(f) => {
            let table = file::FileTable::plan(f.path, f.format, f.schema.as_ref()).await?;
            (table.schema(), Loader::File(table), f.refresh.0)
        }
        TableConfig::Postgres(p) => {
            let schema = p.schema.arrow_schema();
            let query = PgQuery::new(p.connection.expose(), p.query, schema.clone(), p.timeout.0, &decl.name)?;
            (schema, Loader::Postgres(Box::new(query)), p.refresh.0)
        }
        TableConfig::Latest(l) => {
            let Some(schema) = outputs.get(&l.input) else {
                let names: Vec<&str> = outputs.keys().map(String::as_str).filter(|n| !n.ends_with(".dead_letter")).collect();
                return Err(ConfigError::at(
                    "input",
                    format!("`{}` is no output of this pipeline; a latest table reads one of {}", l.input, crate::config::quoted(&names)),
                ));
            };
            let schema = table_schema(schema);
            kept_by = Some(LatestKey::resolve(l.input, &l.key, &schema).map_err(|e| ConfigError::at("key", e))?);
            (schema, Loader::Latest, Duration::MAX)
        }
    };
    let table = Arc::new(LookupTable::new(decl.name.clone(), schema));
    Ok(PlannedTable { decl: decl.clone(), table, kept_by, stats: Default::default(), loader: Arc::new(loader), refresh })
}

/// Every field nullable, no metadata, and plain strings: what a table's rows are checked
/// against, whatever the file or the database said about them (DataFusion reads Parquet
/// strings as views; the pipeline's own columns are `Utf8`).
fn table_schema(schema: &Schema) -> SchemaRef {
    let plain = |t: &DataType| match t {
        DataType::Utf8View => DataType::Utf8,
        DataType::BinaryView => DataType::Binary,
        other => other.clone(),
    };
    Arc::new(Schema::new(schema.fields().iter().map(|f| Field::new(f.name(), plain(f.data_type()), true)).collect::<Vec<_>>()))
}

impl PlannedTable {
    pub fn name(&self) -> &str {
        &self.table.name
    }

    /// Load `rows` instead of what the table's options say (a pipeline test's fixture).
    pub fn use_rows(&mut self, rows: Vec<RecordBatch>) {
        self.loader = Arc::new(Loader::Rows(rows));
    }

    /// Load the rows now and swap them in.
    async fn load(&self) -> anyhow::Result<()> {
        load(&self.table, &self.loader, &self.stats).await
    }
}

/// Load `table`'s rows with `loader` and swap them in, counting the outcome.
async fn load(table: &LookupTable, loader: &Loader, stats: &TableStats) -> anyhow::Result<()> {
    let outcome = load_rows(table, loader).await;
    match &outcome {
        Ok(()) => stats.loads.fetch_add(1, Ordering::Relaxed),
        Err(e) => {
            *stats.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(format!("{e:#}"));
            stats.failures.fetch_add(1, Ordering::Relaxed)
        }
    };
    outcome
}

async fn load_rows(table: &LookupTable, loader: &Loader) -> anyhow::Result<()> {
    {
        let batches = match loader {
            Loader::File(f) => f.load().await?,
            Loader::Postgres(q) => q.load().await?,
            Loader::Latest => return Ok(()),
            Loader::Rows(rows) => rows.clone(),
        };
        let batches = batches
            .into_iter()
            .map(|b| RecordBatch::try_new(table.schema.clone(), b.columns().to_vec()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!("the rows do not have the table's columns: {e}"))?;
        let snapshot = table.replace(batches);
        tracing::info!(table = %table.name, rows = snapshot.rows, bytes = snapshot.bytes, "table loaded");
        Ok(())
    }
}

/// Refresh every `refresh` until `stop`: a file when it changed, a query always.
async fn keep_fresh(table: Arc<LookupTable>, loader: Arc<Loader>, stats: Arc<TableStats>, refresh: Duration, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(refresh) => {}
        }
        if let Loader::File(f) = loader.as_ref() {
            if !f.changed().await {
                continue;
            }
        }
        if let Err(e) = load(&table, &loader, &stats).await {
            tracing::error!(table = %table.name, "refresh failed; the table keeps its previous rows: {e:#}");
        }
    }
}

/// Load every table once (the sources start after), then keep each fresh until `stop`. The
/// first table that cannot load is the error: (its name, why).
pub async fn start(tables: &[PlannedTable], stop: &CancellationToken) -> Result<(), (String, String)> {
    for t in tables {
        t.load().await.map_err(|e| (t.name().to_string(), format!("table `{}` cannot load: {e:#}", t.name())))?;
    }
    for t in tables.iter().filter(|t| matches!(t.loader.as_ref(), Loader::File(_) | Loader::Postgres(_))) {
        tokio::spawn(keep_fresh(t.table.clone(), t.loader.clone(), t.stats.clone(), t.refresh, stop.clone()));
    }
    Ok(())
}

/// A reloaded plan's tables read the running ones' rows; a reload cannot add, remove or change a
/// table (the loaders run for the whole run), so that is refused, naming the table.
pub fn adopt(running: &[PlannedTable], reloaded: &[PlannedTable]) -> Result<(), String> {
    let names = |ts: &[PlannedTable]| ts.iter().map(|t| t.name().to_string()).collect::<std::collections::BTreeSet<_>>();
    if let Some(name) = names(running).symmetric_difference(&names(reloaded)).next() {
        return Err(format!("the reload adds or removes the table `{name}`; changing `tables:` needs a restart"));
    }
    for new in reloaded {
        let old = running.iter().find(|t| t.name() == new.name()).expect("same names");
        if old.decl != new.decl {
            return Err(format!("the reload changes the table `{}`; changing `tables:` needs a restart", new.name()));
        }
        new.table.adopt(&old.table);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
