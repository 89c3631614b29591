//! `timescale` sink: rows into a PostgreSQL table, a TimescaleDB hypertable when the extension is
//! available. Append mode streams binary `COPY`; upsert mode stages a binary `COPY` in a temporary
//! table and merges it with `INSERT … ON CONFLICT DO UPDATE`, so replays never duplicate rows.

mod pgtype;
mod positions;
mod query;
mod sink;
mod table;
mod tls;

use std::time::Duration;

use datafusion::arrow::datatypes::{DataType, SchemaRef};
use serde::Deserialize;
use tokio_postgres_rustls::MakeRustlsConnect;
use tributary_sdk::{single_input_schema, BatchConfig, Batching, ComponentConfig, ConfigError, Period, Secret, Sink, SinkPlugin};

pub use query::PgQuery;
pub use sink::TimescaleSink;

/// `mode` and `key` together, resolved against the input at build: an upsert always has key
/// columns, and each is a column of the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    Append,
    Upsert { key: Vec<KeyColumn> },
}

/// A key column: its name and its index in the input schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyColumn {
    pub name: String,
    pub index: usize,
}

impl Write {
    /// Whether `name` is one of the upsert key's columns.
    pub fn is_key(&self, name: &str) -> bool {
        matches!(self, Write::Upsert { key } if key.iter().any(|k| k.name == name))
    }
}

/// An input column and the PostgreSQL type the sink gives it when it creates or extends the table
/// (`udt` as `information_schema` names it, `sql` as DDL writes it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputColumn {
    pub name: String,
    pub data_type: DataType,
    pub udt: &'static str,
    pub sql: &'static str,
}

/// What `build` resolved from the config and the input schema, once: every input column with its
/// type, in input order, and how rows land.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub columns: Vec<InputColumn>,
    pub write: Write,
}

/// A config checked against its input: the connection parsed, and the [`Layout`].
pub struct Resolved {
    pub pg: tokio_postgres::Config,
    pub tls: MakeRustlsConnect,
    pub layout: Layout,
}

/// How rows reach the table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WriteMode {
    /// Binary `COPY`: the fast path; a replay after a crash may write a row twice.
    #[default]
    Append,
    /// `INSERT … ON CONFLICT (key) DO UPDATE`: idempotent, the last row for a key wins.
    Upsert,
}

/// Config of a `timescale` sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimescaleSinkConfig {
    /// libpq connection string or URL, e.g. `host=127.0.0.1 user=postgres dbname=metrics
    /// password=${PGPASSWORD}`. Redacted in every printout.
    pub connection: Secret,
    /// Target table (created from the input schema if missing).
    pub table: String,
    /// PostgreSQL schema of the table (default `public`).
    #[serde(default = "default_schema")]
    pub schema: String,
    /// The timestamp column: hypertable dimension, or the plain table's time index (default `ts`).
    #[serde(default = "default_time_column")]
    pub time_column: String,
    #[serde(default)]
    pub mode: WriteMode,
    /// Columns identifying a row in upsert mode (a unique index on them is created if missing).
    #[serde(default)]
    pub key: Vec<String>,
    /// Write at `max_rows` buffered rows (default 5000) or every `max_age` (default 1s).
    #[serde(default)]
    pub batch: BatchConfig,
    /// Hypertable chunk interval (TimescaleDB only; default 1 day).
    #[serde(default = "default_chunk_interval")]
    pub chunk_interval: Period,
    /// Drop chunks older than this (TimescaleDB only; default 30 days; `null` keeps everything).
    #[serde(default = "default_retention")]
    pub retention: Option<Period>,
    /// Compress chunks older than this (TimescaleDB only; default off).
    #[serde(default)]
    pub compress_after: Option<Period>,
    /// Attempts to connect and prepare the table at start while the server is unreachable or
    /// still starting (default 12, backoff 100ms doubling up to 10s: about a minute). Writes are
    /// retried by the engine without limit (the sink's `retry:` option).
    #[serde(default = "default_connect_attempts")]
    pub connect_attempts: u32,
    /// A connection attempt or a write that takes longer fails transiently and is retried on a new
    /// connection (default 30s): a server that accepts and never answers does not hang the sink.
    #[serde(default = "default_timeout")]
    pub timeout: Period,
}

fn default_schema() -> String {
    "public".into()
}
fn default_time_column() -> String {
    "ts".into()
}
const DEFAULT_BATCHING: Batching = Batching { max_rows: 5000, max_age: Duration::from_secs(1) };
fn default_chunk_interval() -> Period {
    Period(Duration::from_secs(86_400))
}
fn default_retention() -> Option<Period> {
    Some(Period(Duration::from_secs(30 * 86_400)))
}
fn default_connect_attempts() -> u32 {
    12
}
fn default_timeout() -> Period {
    Period(Duration::from_secs(30))
}

impl TimescaleSinkConfig {
    /// Checks against the input schema, before anything connects, and resolves what the sink uses:
    /// the parsed connection, its TLS connector and the [`Layout`].
    fn resolve(&self, schema: &SchemaRef) -> Result<Resolved, ConfigError> {
        if self.table.is_empty() {
            return Err(ConfigError::at("table", "must not be empty"));
        }
        let names = || schema.fields().iter().map(|f| format!("`{}`", f.name())).collect::<Vec<_>>().join(", ");
        match schema.field_with_name(&self.time_column) {
            Ok(f) if matches!(f.data_type(), DataType::Timestamp(..)) => {}
            Ok(f) => {
                return Err(ConfigError::at("time_column", format!("column `{}` is {}, not a timestamp", self.time_column, f.data_type())))
            }
            Err(_) => {
                return Err(ConfigError::at(
                    "time_column",
                    format!("the input has no column `{}`; columns are {}", self.time_column, names()),
                ))
            }
        }
        let mut columns = Vec::with_capacity(schema.fields().len());
        for f in schema.fields() {
            let Some((udt, sql)) = pgtype::pg_type_for(f.data_type()) else {
                return Err(ConfigError::at(
                    "inputs",
                    format!(
                        "column `{}` has type {} which this sink cannot store; cast it in a SQL transform (e.g. to a string)",
                        f.name(),
                        f.data_type()
                    ),
                ));
            };
            columns.push(InputColumn { name: f.name().clone(), data_type: f.data_type().clone(), udt, sql });
        }
        let write = match self.mode {
            WriteMode::Upsert if self.key.is_empty() => {
                return Err(ConfigError::at("key", "upsert mode needs the key columns that identify a row"))
            }
            WriteMode::Append if !self.key.is_empty() => {
                return Err(ConfigError::at("key", "only used in upsert mode (set `mode: upsert`)"))
            }
            WriteMode::Append => Write::Append,
            WriteMode::Upsert => {
                let key = self.key.iter().map(|k| match schema.index_of(k) {
                    Ok(index) => Ok(KeyColumn { name: k.clone(), index }),
                    Err(_) => Err(ConfigError::at("key", format!("the input has no column `{k}`; columns are {}", names()))),
                });
                Write::Upsert { key: key.collect::<Result<_, _>>()? }
            }
        };
        let (connection, tls) = tls::split(self.connection.expose()).map_err(|e| ConfigError::at("connection", e))?;
        let pg = connection
            .parse::<tokio_postgres::Config>()
            .map_err(|e| ConfigError::at("connection", format!("not a valid PostgreSQL connection string: {e}")))?;
        let tls = tls::connector(&tls).map_err(|e| ConfigError::at("connection", e))?;
        Ok(Resolved { pg, tls, layout: Layout { columns, write } })
    }
}

pub struct TimescaleSinkPlugin;

impl SinkPlugin for TimescaleSinkPlugin {
    fn type_name(&self) -> &'static str {
        "timescale"
    }
    fn delivery(&self) -> &'static [tributary_sdk::delivery::SinkDelivery] {
        use tributary_sdk::delivery::SinkDelivery;
        &[SinkDelivery {
            variant: "",
            durable_when: "the transaction commits (COPY or staged upsert); a silent server times out (`timeout`) and is retried",
            duplicates: "none from retries: `append` asks the server whether a COMMIT whose answer was lost committed (`txid_status` of the transaction's id, taken before the COMMIT; a transaction still open has its backend ended first) and writes the rows again only if it did not; `upsert` is idempotent on `key`",
        }]
    }
    fn build(&self, config: &ComponentConfig, inputs: &[(String, SchemaRef)]) -> Result<Box<dyn Sink>, ConfigError> {
        let cfg: TimescaleSinkConfig = config.decode()?;
        let schema = single_input_schema(inputs)?;
        let resolved = cfg.resolve(&schema)?;
        let batching = cfg.batch.resolve(DEFAULT_BATCHING)?;
        Ok(Box::new(TimescaleSink::new(config.id.clone(), cfg, batching, schema, resolved)))
    }
}

#[cfg(test)]
mod tests;
