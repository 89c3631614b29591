//! `format: delta`: the sink's files become a Delta Lake table. The Parquet files are encoded and
//! uploaded as for `format: parquet`; a flush then commits them to the table's `_delta_log` in one
//! commit, so a reader (Spark, DuckDB, Polars, Trino, delta-rs) sees all of a flush's rows or none.
//!
//! Exactly once: each commit also carries Delta `txn` actions, one pair per stream that reached
//! the rows — `tributary/<sink>/<stream>` with the stream's sequence number as its version, and
//! `…/epoch` with the stream's epoch — the way Spark Structured Streaming's Delta sink records its
//! batch ids. At start the sink reads them back, and the engine skips replayed rows at or below.
//! A commit whose answer was lost is looked up before it is tried again (its files are in the
//! table or not), so it is never made twice.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use datafusion::arrow::datatypes::SchemaRef;
use deltalake_core::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake_core::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake_core::kernel::{Action, Add, StructType, Transaction};
use deltalake_core::logstore::{
    default_logstore, logstore_factories, LogStore, LogStoreFactory, LogStoreRef, ObjectStoreRef, StorageConfig,
};
use deltalake_core::protocol::{DeltaOperation, SaveMode};
use deltalake_core::table::state::DeltaTableState;
use deltalake_core::{DeltaTable, DeltaTableBuilder};
use object_store::path::Path as ObjectPath;
use tributary_sdk::retry::Backoff;
use tributary_sdk::{ComponentMetrics, Position, Positions};
use url::Url;

use crate::store::ObjectLocation;

/// A Delta table at a location, as one sink writes it.
pub struct DeltaLog {
    location: ObjectLocation,
    url: Url,
    /// The rows' columns as Delta types (checked at build).
    schema: StructType,
    /// The table once opened (or made) by `open`.
    table: Option<Opened>,
    /// Positions of the buffered rows: committed with them.
    staged: Positions,
    /// The last commit failed: it may have happened all the same (an answer lost on the way).
    in_doubt: bool,
}

struct Opened {
    log_store: LogStoreRef,
    state: DeltaTableState,
    /// `tributary/<sink id>`: the start of this sink's `txn` app ids.
    app: String,
}

impl DeltaLog {
    /// Checks that every column has a Delta type (no request is made).
    pub fn new(location: ObjectLocation, schema: &SchemaRef) -> Result<Self, String> {
        if let Some(f) = schema.fields().iter().find(|f| f.data_type().is_unsigned_integer()) {
            // delta-kernel would store it as the signed type of its width: values past its
            // maximum would not read back, and the files' unsigned annotations confuse readers.
            return Err(format!(
                "column `{}` is {}, which Delta has no type for: cast it to a signed integer in SQL",
                f.name(),
                f.data_type()
            ));
        }
        let delta: StructType =
            schema.as_ref().try_into_kernel().map_err(|e| format!("these columns cannot be written to a Delta table: {e}"))?;
        let url = Url::parse(&location.url()).map_err(|e| format!("{}: {e}", location.url()))?;
        Ok(DeltaLog { location, url, schema: delta, table: None, staged: Positions::default(), in_doubt: false })
    }

    pub fn location(&self) -> &ObjectLocation {
        &self.location
    }

    /// Opens the table, making it when there is none yet; an existing table must have this
    /// sink's columns. Retried for about a minute while the store cannot be reached (a stack
    /// started at once brings its object store up after its pipelines); other columns fail at
    /// once.
    pub async fn open(&mut self, sink_id: &str, metrics: &ComponentMetrics) -> anyhow::Result<()> {
        let backoff = Backoff { initial: Duration::from_millis(100), max: Duration::from_secs(10), max_attempts: Some(8) };
        let this = &*self;
        let opened = backoff
            .retry(
                || this.load_or_create(sink_id),
                |e| e.downcast_ref::<OtherColumns>().is_none(),
                |_, e, _| {
                    metrics.retries.inc();
                    tracing::warn!(table = %this.url, error = %format!("{e:#}"), "the Delta table cannot be opened yet; retrying");
                },
            )
            .await?;
        self.table = Some(opened);
        Ok(())
    }

    async fn load_or_create(&self, sink_id: &str) -> anyhow::Result<Opened> {
        let state = load(&self.location, &self.url).await?;
        let (log_store, state) = match state {
            Some(found) => found,
            None => {
                let log_store = builder(&self.location, &self.url)?.build()?.log_store();
                let table = DeltaTable::new(log_store.clone())
                    .create()
                    .with_log_store(log_store.clone())
                    .with_columns(self.schema.fields().cloned())
                    // Another writer making it first is fine: its columns are checked below.
                    .with_save_mode(SaveMode::Ignore)
                    .await
                    .with_context(|| format!("creating the Delta table {}", self.url))?;
                (log_store, table.snapshot()?.clone())
            }
        };
        let found = state.schema();
        if found.fields().map(|f| (f.name(), f.data_type())).ne(self.schema.fields().map(|f| (f.name(), f.data_type()))) {
            let (table, found, ours) = (self.url.to_string(), columns(found.fields()), columns(self.schema.fields()));
            return Err(OtherColumns { table, found, ours }.into());
        }
        Ok(Opened { log_store, state, app: format!("tributary/{sink_id}") })
    }

    /// The positions of `streams` the table's commits recorded.
    pub async fn committed(&self, streams: &[Arc<str>]) -> anyhow::Result<Positions> {
        let table = self.table.as_ref().context("the Delta table is not open")?;
        let mut written = Positions::default();
        for stream in streams {
            let (seq_id, epoch_id) = table.app_ids(stream);
            let seq = table.state.transaction_version(table.log_store.as_ref(), &seq_id).await?;
            let epoch = table.state.transaction_version(table.log_store.as_ref(), &epoch_id).await?;
            if let (Some(seq), Some(epoch)) = (seq, epoch) {
                written.advance(&Position { stream: stream.clone(), epoch: epoch as u64, seq: seq as u64 });
            }
        }
        Ok(written)
    }

    /// The next rows buffered take `position`'s stream there.
    pub fn reached(&mut self, position: &Position) {
        self.staged.advance(position);
    }

    /// Whether a commit is due although no files are: positions of rows that all went elsewhere.
    pub fn has_staged(&self) -> bool {
        !self.staged.is_empty()
    }

    /// The buffered rows leave the sink another way (as dead letters): their positions go too.
    pub fn forget_staged(&mut self) {
        self.staged = Positions::default();
        self.in_doubt = false;
    }

    /// Commits `files` (already uploaded) and the staged positions as one table version.
    pub async fn commit(&mut self, files: &[Add]) -> anyhow::Result<()> {
        let table = self.table.as_mut().context("the Delta table is not open")?;
        if std::mem::take(&mut self.in_doubt) {
            // The last attempt may have committed: if its first file is in the table, it did.
            table.state.update(table.log_store.as_ref(), None).await.context("reading the Delta log after a failed commit")?;
            if let Some(first) = files.first() {
                if table.state.log_data().iter().any(|f| f.path() == first.path) {
                    tracing::info!(table = %self.url, files = files.len(), "a Delta commit whose answer was lost had happened; not committed again");
                    self.staged = Positions::default();
                    return Ok(());
                }
            }
        }
        // The sink's own txn makes a commit that meets another of this sink's (its own, retried
        // after a lost answer) a conflict, not a second append of the same files.
        let next_version = table.state.version() as i64 + 1;
        let txns = std::iter::once(Transaction::new(&table.app, next_version))
            .chain(self.staged.iter().flat_map(|p| {
                let (seq_id, epoch_id) = table.app_ids(&p.stream);
                [Transaction::new(seq_id, p.seq as i64), Transaction::new(epoch_id, p.epoch as i64)]
            }))
            .collect();
        let actions = files.iter().cloned().map(Action::Add).collect();
        let operation = DeltaOperation::Write { mode: SaveMode::Append, partition_by: None, predicate: None };
        let committed = CommitBuilder::from(CommitProperties::default().with_application_transactions(txns))
            .with_actions(actions)
            .build(Some(&table.state), table.log_store.clone(), operation)
            .await;
        match committed {
            Ok(done) => {
                let version = done.version();
                table.state = done.snapshot;
                self.staged = Positions::default();
                if self.location.is_local() {
                    // The object store renames commit files into place without an fsync: a power
                    // cut must not take back a commit whose rows were acknowledged.
                    let log = self.location.prefix.clone().join("_delta_log");
                    sync_local(&log.clone().join(format!("{version:020}.json")));
                    sync_local(&log);
                }
                tracing::debug!(table = %self.url, version, files = files.len(), "delta commit");
                Ok(())
            }
            Err(e) => {
                self.in_doubt = !files.is_empty();
                Err(anyhow::Error::new(e).context(format!("committing to the Delta table {}", self.url)))
            }
        }
    }
}

/// The table exists with other columns than the sink's: no retry makes it fit.
#[derive(Debug)]
struct OtherColumns {
    table: String,
    found: String,
    ours: String,
}

impl std::fmt::Display for OtherColumns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the Delta table {} has the columns {}, but this sink writes {}", self.table, self.found, self.ours)
    }
}

impl std::error::Error for OtherColumns {}

impl Opened {
    fn app_ids(&self, stream: &str) -> (String, String) {
        (format!("{}/{stream}", self.app), format!("{}/{stream}/epoch", self.app))
    }
}

/// The `Add` action of a file uploaded to `path` (below the table's location).
pub fn add_action(relative: &str, size: usize, rows: usize) -> Add {
    Add {
        path: relative.to_string(),
        size: size as i64,
        partition_values: HashMap::new(),
        modification_time: chrono::Utc::now().timestamp_millis(),
        data_change: true,
        stats: Some(serde_json::json!({ "numRecords": rows }).to_string()),
        ..Default::default()
    }
}

/// The log store for object stores: delta-rs's default, which commits with put-if-absent (S3's
/// `If-None-Match`, GCS's and Azure's preconditions). delta-rs registers it only for `file://`
/// and `memory://`; its own S3 crate would add a DynamoDB lock for stores without
/// put-if-absent, which S3 no longer needs.
struct PutIfAbsentLogStore;

impl LogStoreFactory for PutIfAbsentLogStore {
    fn with_options(
        &self,
        prefixed_store: ObjectStoreRef,
        root_store: ObjectStoreRef,
        location: &Url,
        options: &StorageConfig,
    ) -> deltalake_core::DeltaResult<Arc<dyn LogStore>> {
        Ok(default_logstore(prefixed_store, root_store, location, options))
    }
}

fn builder(location: &ObjectLocation, url: &Url) -> anyhow::Result<DeltaTableBuilder> {
    static REGISTERED: std::sync::Once = std::sync::Once::new();
    REGISTERED.call_once(|| {
        for scheme in ["s3://", "s3a://", "gs://", "az://", "abfs://", "abfss://"] {
            logstore_factories().insert(Url::parse(scheme).expect("a scheme"), Arc::new(PutIfAbsentLogStore));
        }
    });
    // The store the rest of the lake goes through (its endpoint, credentials and retries), at the
    // root of which the table's URL points.
    Ok(DeltaTableBuilder::from_url(url.clone())?.with_storage_backend(location.store.clone(), url.clone()))
}

/// The table's latest state, or `None` when there is no table there.
pub async fn load(location: &ObjectLocation, url: &Url) -> anyhow::Result<Option<(LogStoreRef, DeltaTableState)>> {
    let mut table = builder(location, url)?.build()?;
    if !table.log_store().is_delta_table_location().await.with_context(|| format!("looking for a Delta table at {url}"))? {
        return Ok(None);
    }
    table.load().await.with_context(|| format!("reading the Delta table {url}"))?;
    let state = table.snapshot()?.clone();
    Ok(Some((table.log_store(), state)))
}

/// The files of the Delta table at `location` (paths from the store's root), with their sizes;
/// `None` when it holds no Delta table.
pub async fn table_files(location: &ObjectLocation) -> anyhow::Result<Option<Vec<(ObjectPath, u64)>>> {
    let url = Url::parse(&location.url())?;
    let Some((_, state)) = load(location, &url).await? else { return Ok(None) };
    Ok(Some(
        state
            .log_data()
            .iter()
            .map(|f| (ObjectPath::from_iter(location.prefix.parts().chain(f.object_store_path().parts())), f.size() as u64))
            .collect(),
    ))
}

fn columns<'a>(fields: impl Iterator<Item = &'a deltalake_core::kernel::StructField>) -> String {
    fields.map(|f| format!("{} {}", f.name(), f.data_type())).collect::<Vec<_>>().join(", ")
}

/// fsync a local file or folder, given as a path from the file system's root.
pub fn sync_local(path: &ObjectPath) {
    if let Ok(f) = std::fs::File::open(format!("/{path}")) {
        let _ = f.sync_all();
    }
}
