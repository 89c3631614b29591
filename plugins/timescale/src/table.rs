//! Making the target table fit the input: create it (hypertable when TimescaleDB is available),
//! or check an existing one and add missing nullable columns.

use anyhow::{bail, Context};
use datafusion::arrow::datatypes::SchemaRef;
use tokio_postgres::Client;

use crate::pgtype::{compatible, pg_type_for};
use crate::{TimescaleSinkConfig, WriteMode};

/// What the sink learned about the table: its quoted name and the PostgreSQL type of each input
/// column, in input order.
#[derive(Debug, Clone)]
pub struct PreparedTable {
    pub qualified: String,
    pub columns: Vec<(String, String)>,
}

pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn interval(d: std::time::Duration) -> String {
    format!("INTERVAL '{} seconds'", d.as_secs().max(1))
}

pub async fn prepare(client: &Client, cfg: &TimescaleSinkConfig, schema: &SchemaRef, sink_id: &str) -> anyhow::Result<PreparedTable> {
    let qualified = format!("{}.{}", quote_ident(&cfg.schema), quote_ident(&cfg.table));
    let shown = format!("{}.{}", cfg.schema, cfg.table);
    let existing: Vec<(String, String)> = client
        .query(
            "SELECT column_name::text, udt_name::text FROM information_schema.columns \
             WHERE table_schema = $1 AND table_name = $2 ORDER BY ordinal_position",
            &[&cfg.schema, &cfg.table],
        )
        .await
        .context("reading the table's columns")?
        .into_iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();

    let mut columns = Vec::new();
    if existing.is_empty() {
        let defs: Vec<String> = schema
            .fields()
            .iter()
            .map(|f| {
                let (_, sql) = pg_type_for(f.data_type()).expect("validated");
                let not_null = if *f.name() == cfg.time_column { " NOT NULL" } else { "" };
                format!("{} {sql}{not_null}", quote_ident(f.name()))
            })
            .collect();
        // Checked first: concurrent `CREATE SCHEMA IF NOT EXISTS` can still collide in the catalog.
        let schema_exists = client.query_opt("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[&cfg.schema]).await?.is_some();
        if !schema_exists {
            client
                .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {}", quote_ident(&cfg.schema)))
                .await
                .with_context(|| format!("creating schema {}", cfg.schema))?;
        }
        client
            .batch_execute(&format!("CREATE TABLE IF NOT EXISTS {qualified} ({})", defs.join(", ")))
            .await
            .with_context(|| format!("creating table {shown}"))?;
        tracing::info!(sink = sink_id, table = %shown, "created table from the input schema");
        for f in schema.fields() {
            columns.push((f.name().clone(), pg_type_for(f.data_type()).expect("validated").0.to_string()));
        }
    } else {
        let mut problems = Vec::new();
        for f in schema.fields() {
            match existing.iter().find(|(n, _)| n == f.name()) {
                Some((_, udt)) if compatible(f.data_type(), udt) => columns.push((f.name().clone(), udt.clone())),
                Some((_, udt)) => problems.push(format!("column `{}` is {udt} in {shown} but the input has {}", f.name(), f.data_type())),
                None => {
                    let (udt, sql) = pg_type_for(f.data_type()).expect("validated");
                    client
                        .batch_execute(&format!("ALTER TABLE {qualified} ADD COLUMN IF NOT EXISTS {} {sql}", quote_ident(f.name())))
                        .await
                        .with_context(|| format!("adding column `{}` to {shown}", f.name()))?;
                    tracing::info!(sink = sink_id, table = %shown, column = %f.name(), "added missing nullable column");
                    columns.push((f.name().clone(), udt.to_string()));
                }
            }
        }
        if !problems.is_empty() {
            bail!("table {shown} does not fit the input: {} (alter the table or cast in a SQL transform)", problems.join("; "));
        }
    }

    let timescale = client
        .query_opt("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'", &[])
        .await
        .context("checking for the timescaledb extension")?
        .is_some();
    let time_col = quote_ident(&cfg.time_column);
    // A hypertable's unique indexes must contain its time column: a table upserted on other
    // columns (a dimension such as "badges by id") stays a plain table.
    let keyed_off_time = cfg.mode == WriteMode::Upsert && !cfg.key.contains(&cfg.time_column);
    if timescale && keyed_off_time {
        tracing::info!(sink = sink_id, table = %shown, "upsert key does not contain the time column `{}`: plain table, not a hypertable", cfg.time_column);
    }
    if timescale && !keyed_off_time {
        make_hypertable(client, cfg, &qualified, &shown).await?;
        tracing::info!(sink = sink_id, table = %shown, chunk_interval = ?cfg.chunk_interval.0, retention = ?cfg.retention.map(|r| r.0), "TimescaleDB hypertable");
    } else {
        let index = quote_ident(&format!("{}_{}_idx", cfg.table, cfg.time_column));
        client
            .batch_execute(&format!("CREATE INDEX IF NOT EXISTS {index} ON {qualified} ({time_col} DESC)"))
            .await
            .with_context(|| format!("creating the time index on {shown}"))?;
        if !timescale {
            tracing::info!(
                sink = sink_id,
                table = %shown,
                "timescaledb extension not available: plain table with a time index (no chunks, retention not enforced)"
            );
        }
    }
    if cfg.mode == WriteMode::Upsert {
        let index = quote_ident(&format!("{}_upsert_key", cfg.table));
        let keys: Vec<String> = cfg.key.iter().map(|k| quote_ident(k)).collect();
        client
            .batch_execute(&format!("CREATE UNIQUE INDEX IF NOT EXISTS {index} ON {qualified} ({})", keys.join(", ")))
            .await
            .with_context(|| format!("creating the unique index on ({}) that upserts need", cfg.key.join(", ")))?;
    }
    Ok(PreparedTable { qualified, columns })
}

/// The hypertable path: only runs where the `timescaledb` extension is installed.
async fn make_hypertable(client: &Client, cfg: &TimescaleSinkConfig, qualified: &str, shown: &str) -> anyhow::Result<()> {
    let literal = qualified.replace('\'', "''");
    let mut sql = format!(
        "CREATE EXTENSION IF NOT EXISTS timescaledb; \
         SELECT create_hypertable('{literal}', '{}', chunk_time_interval => {}, if_not_exists => TRUE, migrate_data => TRUE);",
        cfg.time_column.replace('\'', "''"),
        interval(cfg.chunk_interval.0)
    );
    if let Some(r) = cfg.retention {
        sql += &format!("SELECT add_retention_policy('{literal}', {}, if_not_exists => TRUE);", interval(r.0));
    }
    if let Some(c) = cfg.compress_after {
        sql += &format!(
            "ALTER TABLE {qualified} SET (timescaledb.compress); SELECT add_compression_policy('{literal}', {}, if_not_exists => TRUE);",
            interval(c.0)
        );
    }
    client.batch_execute(&sql).await.with_context(|| format!("making {shown} a hypertable"))?;
    Ok(())
}
