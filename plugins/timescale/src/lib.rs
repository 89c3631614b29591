//! `timescale` sink: rows into a PostgreSQL table, a TimescaleDB hypertable when the extension is
//! available. Append mode streams binary `COPY`; upsert mode stages a binary `COPY` in a temporary
//! table and merges it with `INSERT … ON CONFLICT DO UPDATE`, so replays never duplicate rows.

mod pgtype;
mod positions;
mod sink;
mod table;
mod tls;

use std::time::Duration;

use datafusion::arrow::datatypes::{DataType, SchemaRef};
use serde::Deserialize;
use tokio_postgres_rustls::MakeRustlsConnect;
use tributary_sdk::{single_input_schema, BatchConfig, Batching, ComponentConfig, ConfigError, Period, Secret, Sink, SinkPlugin};

pub use sink::TimescaleSink;

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
    /// Checks against the input schema, before anything connects; returns the parsed connection
    /// and its TLS connector, which the sink uses.
    fn validate(&self, schema: &SchemaRef) -> Result<(tokio_postgres::Config, MakeRustlsConnect), ConfigError> {
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
        for f in schema.fields() {
            if pgtype::pg_type_for(f.data_type()).is_none() {
                return Err(ConfigError::at(
                    "inputs",
                    format!(
                        "column `{}` has type {} which this sink cannot store; cast it in a SQL transform (e.g. to a string)",
                        f.name(),
                        f.data_type()
                    ),
                ));
            }
        }
        match self.mode {
            WriteMode::Upsert if self.key.is_empty() => {
                return Err(ConfigError::at("key", "upsert mode needs the key columns that identify a row"))
            }
            WriteMode::Append if !self.key.is_empty() => {
                return Err(ConfigError::at("key", "only used in upsert mode (set `mode: upsert`)"))
            }
            _ => {}
        }
        for k in &self.key {
            if schema.field_with_name(k).is_err() {
                return Err(ConfigError::at("key", format!("the input has no column `{k}`; columns are {}", names())));
            }
        }
        let (connection, tls) = tls::split(self.connection.expose()).map_err(|e| ConfigError::at("connection", e))?;
        let pg = connection
            .parse::<tokio_postgres::Config>()
            .map_err(|e| ConfigError::at("connection", format!("not a valid PostgreSQL connection string: {e}")))?;
        let tls = tls::connector(&tls).map_err(|e| ConfigError::at("connection", e))?;
        Ok((pg, tls))
    }
}

pub struct TimescaleSinkPlugin;

impl SinkPlugin for TimescaleSinkPlugin {
    fn type_name(&self) -> &'static str {
        "timescale"
    }
    fn build(&self, config: &ComponentConfig, inputs: &[(String, SchemaRef)]) -> Result<Box<dyn Sink>, ConfigError> {
        let cfg: TimescaleSinkConfig = config.decode()?;
        let schema = single_input_schema(inputs)?;
        let (pg, tls) = cfg.validate(&schema)?;
        let batching = cfg.batch.resolve(DEFAULT_BATCHING)?;
        Ok(Box::new(TimescaleSink::new(config.id.clone(), cfg, batching, schema, pg, tls)))
    }
}

#[cfg(test)]
mod tests;
