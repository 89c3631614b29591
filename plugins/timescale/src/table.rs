//! Making the target table fit the input: create it (hypertable when TimescaleDB is available),
//! or check an existing one and add missing nullable columns.

use anyhow::{bail, Context};
use tokio_postgres::Client;

use crate::pgtype::compatible;
use crate::{Layout, TimescaleSinkConfig, Write};

/// What the sink learned about the table: its quoted name and the PostgreSQL type of each input
/// column, in input order (`columns[i]` is the input's column `i`).
#[derive(Debug, Clone)]
pub struct PreparedTable {
    pub qualified: String,
    pub columns: Vec<(String, String)>,
}

pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// An interval literal in the largest unit that divides it (`INTERVAL '14 days'`), so what a DBA
/// sees in `timescaledb_information.jobs` reads like the pipeline file, not `336:00:00`.
pub fn interval(d: std::time::Duration) -> String {
    let secs = d.as_secs().max(1);
    let (n, unit) = [(86_400, "day"), (3_600, "hour"), (60, "minute"), (1, "second")]
        .into_iter()
        .find(|(size, _)| secs.is_multiple_of(*size))
        .map(|(size, unit)| (secs / size, unit))
        .expect("1 divides everything");
    format!("INTERVAL '{n} {unit}{}'", if n == 1 { "" } else { "s" })
}

/// Advisory lock key every Tributary sink takes around its DDL ("tributar" in ASCII): concurrent
/// `CREATE EXTENSION/SCHEMA/TABLE IF NOT EXISTS` collide in PostgreSQL's catalog (unique
/// violations), whether from the sinks of one pipeline or of several processes.
const DDL_LOCK: i64 = 0x7472_6962_7574_6172;

/// Run `ddl` while holding the database-wide DDL lock (session level: released by the unlock, or
/// by the server if the connection dies).
pub async fn with_ddl_lock<T>(client: &Client, ddl: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    client.execute("SELECT pg_advisory_lock($1)", &[&DDL_LOCK]).await.context("waiting for the DDL lock")?;
    let result = ddl.await;
    let _ = client.execute("SELECT pg_advisory_unlock($1)", &[&DDL_LOCK]).await;
    result
}

/// Make the table fit the input, one sink at a time per database (see [`DDL_LOCK`]).
pub async fn prepare(client: &Client, cfg: &TimescaleSinkConfig, layout: &Layout, sink_id: &str) -> anyhow::Result<PreparedTable> {
    with_ddl_lock(client, prepare_locked(client, cfg, layout, sink_id)).await
}

async fn prepare_locked(client: &Client, cfg: &TimescaleSinkConfig, layout: &Layout, sink_id: &str) -> anyhow::Result<PreparedTable> {
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
        let defs: Vec<String> = layout
            .columns
            .iter()
            .map(|c| {
                let not_null = if c.name == cfg.time_column { " NOT NULL" } else { "" };
                format!("{} {}{not_null}", quote_ident(&c.name), c.sql)
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
        columns.extend(layout.columns.iter().map(|c| (c.name.clone(), c.udt.to_string())));
    } else {
        let mut problems = Vec::new();
        for c in &layout.columns {
            match existing.iter().find(|(n, _)| *n == c.name) {
                Some((_, udt)) if compatible(&c.data_type, udt) => columns.push((c.name.clone(), udt.clone())),
                Some((_, udt)) => problems.push(format!("column `{}` is {udt} in {shown} but the input has {}", c.name, c.data_type)),
                None => {
                    client
                        .batch_execute(&format!("ALTER TABLE {qualified} ADD COLUMN IF NOT EXISTS {} {}", quote_ident(&c.name), c.sql))
                        .await
                        .with_context(|| format!("adding column `{}` to {shown}", c.name))?;
                    tracing::info!(sink = sink_id, table = %shown, column = %c.name, "added missing nullable column");
                    columns.push((c.name.clone(), c.udt.to_string()));
                }
            }
        }
        if !problems.is_empty() {
            bail!("table {shown} does not fit the input: {} (alter the table or cast in a SQL transform)", problems.join("; "));
        }
    }

    let time_col = quote_ident(&cfg.time_column);
    let timescale = timescale_state(client).await?;
    // A hypertable's unique indexes must contain its time column: a table upserted on other
    // columns (a dimension such as "badges by id"), or one whose own key lacks it (`id bigserial
    // PRIMARY KEY`), stays a plain table.
    let keyed_off_time = matches!(layout.write, Write::Upsert { .. }) && !layout.write.is_key(&cfg.time_column);
    let already_hypertable = timescale == Timescale::Available && is_hypertable(client, cfg).await?;
    let blocking_indexes = if timescale == Timescale::Available && !already_hypertable {
        unique_indexes_without(client, &qualified, &cfg.time_column).await?
    } else {
        Vec::new()
    };
    let hypertable = match timescale {
        Timescale::Absent => {
            tracing::info!(
                sink = sink_id,
                table = %shown,
                "timescaledb extension not available: plain table with a time index (no chunks, retention not enforced)"
            );
            false
        }
        Timescale::NotPreloaded => {
            tracing::warn!(
                sink = sink_id,
                table = %shown,
                "the timescaledb extension is installed but not preloaded: plain table with a time index (no chunks, retention \
                 not enforced). To get a hypertable, add timescaledb to shared_preload_libraries in postgresql.conf and restart PostgreSQL"
            );
            false
        }
        Timescale::Available if keyed_off_time => {
            tracing::info!(sink = sink_id, table = %shown, "upsert key does not contain the time column `{}`: plain table, not a hypertable", cfg.time_column);
            false
        }
        Timescale::Available if !blocking_indexes.is_empty() => {
            tracing::warn!(
                sink = sink_id,
                table = %shown,
                "stays a plain table: TimescaleDB needs the time column `{}` in every unique index of a hypertable, and {} lacks it. \
                 To make it a hypertable, add `{}` to that key (e.g. PRIMARY KEY (id, {})) and restart",
                cfg.time_column,
                blocking_indexes.join(", "),
                cfg.time_column,
                cfg.time_column
            );
            false
        }
        Timescale::Available => true,
    };
    if hypertable {
        make_hypertable(client, cfg, &qualified, &shown, sink_id, already_hypertable).await?;
    } else {
        let index = quote_ident(&format!("{}_{}_idx", cfg.table, cfg.time_column));
        client
            .batch_execute(&format!("CREATE INDEX IF NOT EXISTS {index} ON {qualified} ({time_col} DESC)"))
            .await
            .with_context(|| format!("creating the time index on {shown}"))?;
    }
    if let Write::Upsert { key } = &layout.write {
        let index = quote_ident(&format!("{}_upsert_key", cfg.table));
        let names: Vec<&str> = key.iter().map(|k| k.name.as_str()).collect();
        let keys: Vec<String> = names.iter().map(|k| quote_ident(k)).collect();
        client
            .batch_execute(&format!("CREATE UNIQUE INDEX IF NOT EXISTS {index} ON {qualified} ({})", keys.join(", ")))
            .await
            .with_context(|| format!("creating the unique index on ({}) that upserts need", names.join(", ")))?;
    }
    Ok(PreparedTable { qualified, columns })
}

/// Whether TimescaleDB can be used on this server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timescale {
    /// Not installed on the server.
    Absent,
    /// Installed, but `CREATE EXTENSION` would fail: not in `shared_preload_libraries`.
    NotPreloaded,
    Available,
}

impl Timescale {
    pub fn from_server(available: bool, preload_libraries: &str) -> Timescale {
        let preloaded = preload_libraries.split(',').any(|l| l.trim().trim_matches('"') == "timescaledb");
        match (available, preloaded) {
            (false, _) => Timescale::Absent,
            (true, false) => Timescale::NotPreloaded,
            (true, true) => Timescale::Available,
        }
    }
}

async fn timescale_state(client: &Client) -> anyhow::Result<Timescale> {
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'), current_setting('shared_preload_libraries')",
            &[],
        )
        .await
        .context("checking for the timescaledb extension")?;
    Ok(Timescale::from_server(row.get(0), row.get::<_, String>(1).as_str()))
}

async fn is_hypertable(client: &Client, cfg: &TimescaleSinkConfig) -> anyhow::Result<bool> {
    let installed = client.query_opt("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'", &[]).await?.is_some();
    if !installed {
        return Ok(false);
    }
    let found = client
        .query_opt(
            "SELECT 1 FROM timescaledb_information.hypertables WHERE hypertable_schema = $1 AND hypertable_name = $2",
            &[&cfg.schema, &cfg.table],
        )
        .await
        .context("looking the table up in timescaledb_information.hypertables")?;
    Ok(found.is_some())
}

/// The table's unique indexes (primary key included) that lack `column`, as
/// `name (definition)`: TimescaleDB refuses to make such a table a hypertable.
pub async fn unique_indexes_without(client: &Client, qualified: &str, column: &str) -> anyhow::Result<Vec<String>> {
    let rows = client
        .query(
            "SELECT i.relname::text, pg_get_indexdef(x.indexrelid) FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid \
             WHERE x.indrelid = $1::text::regclass AND x.indisunique \
             AND NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = x.indrelid AND a.attnum = ANY(x.indkey) AND a.attname = $2) \
             ORDER BY 1",
            &[&qualified, &column],
        )
        .await
        .context("reading the table's unique indexes")?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let (name, def): (String, String) = (r.get(0), r.get(1));
            let columns = def.rsplit_once(" USING ").map_or(def.as_str(), |(_, c)| c).trim_start_matches("btree ");
            format!("`{name}` {columns}")
        })
        .collect())
}

/// The hypertable path: only runs where the `timescaledb` extension is installed and preloaded.
/// A new hypertable gets the configured settings; an existing one (`exists`, from
/// [`is_hypertable`]) is brought to them, and every change is logged with what it was before.
async fn make_hypertable(
    client: &Client,
    cfg: &TimescaleSinkConfig,
    qualified: &str,
    shown: &str,
    sink_id: &str,
    exists: bool,
) -> anyhow::Result<()> {
    let literal = qualified.replace('\'', "''");
    if !exists {
        // Checked first: `IF NOT EXISTS` on an installed extension logs a NOTICE without the sink's id.
        let installed = client.query_opt("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'", &[]).await?.is_some();
        if !installed {
            client.batch_execute("CREATE EXTENSION IF NOT EXISTS timescaledb").await.context("creating the timescaledb extension")?;
        }
        let mut sql = format!(
            "SELECT create_hypertable('{literal}', '{}', chunk_time_interval => {}, migrate_data => TRUE);",
            cfg.time_column.replace('\'', "''"),
            interval(cfg.chunk_interval.0)
        );
        if let Some(r) = cfg.retention {
            sql += &format!("SELECT add_retention_policy('{literal}', {});", interval(r.0));
        }
        if let Some(c) = cfg.compress_after {
            sql += &format!(
                "ALTER TABLE {qualified} SET (timescaledb.compress); SELECT add_compression_policy('{literal}', {});",
                interval(c.0)
            );
        }
        client.batch_execute(&sql).await.with_context(|| format!("making {shown} a hypertable"))?;
        tracing::info!(sink = sink_id, table = %shown, chunk_interval = %interval(cfg.chunk_interval.0), retention = ?cfg.retention.map(|r| interval(r.0)), compress_after = ?cfg.compress_after.map(|c| interval(c.0)), "created TimescaleDB hypertable");
        return Ok(());
    }
    let (schema, table) = (&cfg.schema, &cfg.table);
    let current_chunk: Option<i64> = client
        .query_opt(
            "SELECT EXTRACT(EPOCH FROM time_interval)::bigint FROM timescaledb_information.dimensions \
             WHERE hypertable_schema = $1 AND hypertable_name = $2 AND column_name = $3",
            &[schema, table, &cfg.time_column],
        )
        .await
        .context("reading the hypertable's chunk interval")?
        .and_then(|r| r.get(0));
    let wanted_chunk = cfg.chunk_interval.0.as_secs().max(1) as i64;
    if current_chunk != Some(wanted_chunk) {
        client
            .batch_execute(&format!("SELECT set_chunk_time_interval('{literal}', {})", interval(cfg.chunk_interval.0)))
            .await
            .with_context(|| format!("changing the chunk interval of {shown}"))?;
        tracing::info!(sink = sink_id, table = %shown, "chunk_interval changed from {} to {} (new chunks only)", shown_secs(current_chunk), interval(cfg.chunk_interval.0));
    }
    let policies = [
        ("policy_retention", "drop_after", "retention", cfg.retention, "remove_retention_policy", "add_retention_policy"),
        (
            "policy_compression",
            "compress_after",
            "compress_after",
            cfg.compress_after,
            "remove_compression_policy",
            "add_compression_policy",
        ),
    ];
    for (proc_name, key, option, wanted, remove, add) in policies {
        let current: Option<i64> = client
            .query_opt(
                &format!(
                    "SELECT EXTRACT(EPOCH FROM (config->>'{key}')::interval)::bigint FROM timescaledb_information.jobs \
                     WHERE proc_name = $1 AND hypertable_schema = $2 AND hypertable_name = $3"
                ),
                &[&proc_name, schema, table],
            )
            .await
            .with_context(|| format!("reading the {option} policy of {shown}"))?
            .and_then(|r| r.get(0));
        let wanted_secs = wanted.map(|w| w.0.as_secs().max(1) as i64);
        if current == wanted_secs {
            continue;
        }
        let mut sql = String::new();
        if current.is_some() {
            sql += &format!("SELECT {remove}('{literal}');");
        }
        if let Some(w) = wanted {
            if option == "compress_after" {
                sql += &format!("ALTER TABLE {qualified} SET (timescaledb.compress);");
            }
            sql += &format!("SELECT {add}('{literal}', {});", interval(w.0));
        }
        client.batch_execute(&sql).await.with_context(|| format!("changing the {option} policy of {shown}"))?;
        tracing::info!(
            sink = sink_id,
            table = %shown,
            "{option} changed from {} to {}",
            shown_secs(current),
            wanted.map_or("none".to_string(), |w| interval(w.0))
        );
    }
    Ok(())
}

fn shown_secs(secs: Option<i64>) -> String {
    secs.map_or("none".to_string(), |s| interval(std::time::Duration::from_secs(s.max(1) as u64)))
}
