//! `delivery: exactly_once`: the positions a sink has written, kept in `tributary_positions` beside
//! its table and changed in the same transaction as the rows, so a restart knows exactly which
//! replayed rows the table already holds.
//!
//! One row per sink, table and stream. Rows of other pipelines' sinks are left alone.

use tokio_postgres::{Client, GenericClient};
use tributary_sdk::{Position, Positions};

use crate::table::{quote_ident, with_ddl_lock};
use crate::TimescaleSinkConfig;

/// The positions table of one sink.
pub struct PositionTable {
    qualified: String,
    sink: String,
    /// The sink's table, `schema.table`: a sink id moved to another table starts afresh there.
    target: String,
}

impl PositionTable {
    pub fn new(cfg: &TimescaleSinkConfig, sink_id: &str) -> Self {
        PositionTable {
            qualified: format!("{}.tributary_positions", quote_ident(&cfg.schema)),
            sink: sink_id.to_string(),
            target: format!("{}.{}", cfg.schema, cfg.table),
        }
    }

    /// Created if missing (the sink's table is prepared first, so its schema exists).
    pub async fn create(&self, client: &Client) -> anyhow::Result<()> {
        let ddl = format!(
            "CREATE TABLE IF NOT EXISTS {} (sink text NOT NULL, target text NOT NULL, stream text NOT NULL, \
             epoch bigint NOT NULL, seq bigint NOT NULL, written_at timestamptz NOT NULL DEFAULT now(), \
             PRIMARY KEY (sink, target, stream))",
            self.qualified
        );
        with_ddl_lock(client, async { Ok(client.batch_execute(&ddl).await?) }).await
    }

    pub async fn read(&self, client: &Client) -> Result<Positions, tokio_postgres::Error> {
        let rows = client
            .query(
                &format!("SELECT stream, epoch, seq FROM {} WHERE sink = $1 AND target = $2", self.qualified),
                &[&self.sink, &self.target],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| Position { stream: r.get::<_, String>(0).into(), epoch: r.get::<_, i64>(1) as u64, seq: r.get::<_, i64>(2) as u64 })
            .collect())
    }

    /// Inside the transaction that writes the rows these positions cover.
    pub async fn store(&self, tx: &impl GenericClient, positions: &[Position]) -> Result<(), tokio_postgres::Error> {
        let upsert = format!(
            "INSERT INTO {} (sink, target, stream, epoch, seq) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (sink, target, stream) DO UPDATE SET epoch = EXCLUDED.epoch, seq = EXCLUDED.seq, written_at = now()",
            self.qualified
        );
        for p in Positions::from_iter(positions.iter().cloned()).iter() {
            tx.execute(&upsert, &[&self.sink, &self.target, &&*p.stream, &(p.epoch as i64), &(p.seq as i64)]).await?;
        }
        Ok(())
    }
}
