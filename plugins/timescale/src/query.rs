//! A PostgreSQL query read whole into Arrow rows: what a `postgres` lookup table loads on every
//! refresh.
//!
//! The query runs over the simple (text) protocol, so any column type the server can print reads
//! the same way; each column is then cast to its declared type, and a value that does not cast is
//! an error naming the column and the value rather than a silent null.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use datafusion::arrow::array::{ArrayRef, RecordBatch, StringBuilder};
use datafusion::arrow::compute::{cast_with_options, CastOptions};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::util::display::FormatOptions;
use tokio_postgres::SimpleQueryMessage;
use tokio_postgres_rustls::MakeRustlsConnect;
use tributary_sdk::ConfigError;

use crate::tls;

/// Rows per Arrow batch of a loaded table.
const BATCH_ROWS: usize = 8192;

/// A query and where to run it, checked at build.
#[derive(Clone)]
pub struct PgQuery {
    pg: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    query: String,
    schema: SchemaRef,
    timeout: Duration,
}

impl PgQuery {
    /// `connection` is a libpq string or URL (with `sslmode` as in the sink); `schema` the columns
    /// the query returns, in order. Errors name the `connection` option.
    pub fn new(connection: &str, query: String, schema: SchemaRef, timeout: Duration, name: &str) -> Result<PgQuery, ConfigError> {
        let (connection, tls_options) = tls::split(connection).map_err(|e| ConfigError::at("connection", e))?;
        let mut pg = connection
            .parse::<tokio_postgres::Config>()
            .map_err(|e| ConfigError::at("connection", format!("not a valid PostgreSQL connection string: {e}")))?;
        let tls = tls::connector(&tls_options).map_err(|e| ConfigError::at("connection", e))?;
        if pg.get_application_name().is_none() {
            pg.application_name(format!("tributary/table/{name}"));
        }
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(timeout);
        }
        Ok(PgQuery { pg, tls, query, schema, timeout })
    }

    /// Run the query on a new connection, bounded by the timeout, and return its rows.
    pub async fn load(&self) -> anyhow::Result<Vec<RecordBatch>> {
        tokio::time::timeout(self.timeout, self.run()).await.map_err(|_| anyhow!("the query did not finish within {:?}", self.timeout))?
    }

    async fn run(&self) -> anyhow::Result<Vec<RecordBatch>> {
        let (client, conn) = self.pg.connect(self.tls.clone()).await.context("connecting to PostgreSQL")?;
        let connection = tokio::spawn(conn);
        // ISO text in UTC for timestamps, so the cast below reads them whatever the server's zone.
        client.batch_execute("SET TimeZone = 'UTC'; SET DateStyle = 'ISO'").await.context("setting the session's time zone")?;
        let messages = client.simple_query(&self.query).await.context("running the query")?;
        drop(client);
        connection.abort();
        let mut columns: Vec<StringBuilder> = self.schema.fields().iter().map(|_| StringBuilder::new()).collect();
        let mut batches = Vec::new();
        let mut rows = 0;
        for message in messages {
            let SimpleQueryMessage::Row(row) = message else { continue };
            if row.len() != columns.len() {
                let names: Vec<&str> = row.columns().iter().map(|c| c.name()).collect();
                return Err(anyhow!(
                    "the query returns {} columns ({}), the table's `schema` declares {}",
                    row.len(),
                    names.join(", "),
                    columns.len()
                ));
            }
            for (i, column) in columns.iter_mut().enumerate() {
                column.append_option(row.get(i));
            }
            rows += 1;
            if rows == BATCH_ROWS {
                batches.push(self.typed(&mut columns)?);
                rows = 0;
            }
        }
        if rows > 0 {
            batches.push(self.typed(&mut columns)?);
        }
        Ok(batches)
    }

    /// The text columns built so far, cast to the declared types.
    fn typed(&self, columns: &mut [StringBuilder]) -> anyhow::Result<RecordBatch> {
        let strict = CastOptions { safe: false, format_options: FormatOptions::default() };
        let arrays = columns
            .iter_mut()
            .zip(self.schema.fields())
            .map(|(column, field)| {
                let text: ArrayRef = Arc::new(column.finish());
                let typed = match field.data_type() {
                    DataType::Boolean => cast_with_options(&text, &DataType::Boolean, &strict),
                    // PostgreSQL prints a UTC timestamp as `2026-12-07 10:00:00+00`.
                    DataType::Timestamp(..) => cast_with_options(&iso_offsets(&text), field.data_type(), &strict),
                    other => cast_with_options(&text, other, &strict),
                };
                typed.map_err(|e| anyhow!("column `{}`: {e}", field.name()))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(RecordBatch::try_new(self.schema.clone(), arrays)?)
    }
}

/// `…+00` → `…+00:00`: Arrow reads offsets with minutes only.
fn iso_offsets(text: &ArrayRef) -> ArrayRef {
    let strings = text.as_any().downcast_ref::<datafusion::arrow::array::StringArray>().expect("a text column");
    let fixed: datafusion::arrow::array::StringArray = strings
        .iter()
        .map(|v| {
            v.map(|s| match s.len().checked_sub(3).map(|at| s.split_at(at)) {
                Some((head, tail)) if (tail.starts_with('+') || tail.starts_with('-')) && tail[1..].bytes().all(|b| b.is_ascii_digit()) => {
                    format!("{head}{tail}:00")
                }
                _ => s.to_string(),
            })
        })
        .collect();
    Arc::new(fixed)
}
