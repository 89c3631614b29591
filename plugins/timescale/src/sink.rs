//! The running sink: buffers rows, writes them by binary COPY (append) or staged merge (upsert),
//! reports an unreachable or silent server as transient (the engine retries; the next attempt uses
//! a fresh connection), and isolates rows the database rejects.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::{Bytes, BytesMut};
use datafusion::arrow::array::{RecordBatch, UInt32Array};
use datafusion::arrow::compute::take_record_batch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::row::{RowConverter, SortField};
use futures::SinkExt;
use tokio_postgres::Client;
use tokio_postgres_rustls::MakeRustlsConnect;
use tributary_sdk::buffer::RowBuffer;
use tributary_sdk::dead_letter::letters_for_rows;
use tributary_sdk::retry::Backoff;
use tributary_sdk::{Batching, DeadLetter, Durability, Position, PositionStore, Positions, Sink, SinkContext, Transient, Written};

use crate::pgtype::{ColumnEncoder, COPY_HEADER, COPY_TRAILER};
use crate::positions::PositionTable;
use crate::table::{prepare, quote_ident, PreparedTable};
use crate::{KeyColumn, Layout, Resolved, TimescaleSinkConfig, Write};

/// Why a write did not happen.
enum Failure {
    /// The server could not be reached or is restarting: retry on a new connection.
    Unavailable(anyhow::Error),
    /// The server refused the rows (bad value, constraint): retrying the same rows cannot help.
    Rejected(String),
}

fn classify(e: tokio_postgres::Error) -> Failure {
    match e.as_db_error() {
        Some(db) if !is_transient_pg(&e) => {
            let column = db.column().map(|c| format!(" (column `{c}`)")).unwrap_or_default();
            Failure::Rejected(format!("{}{column} [SQLSTATE {}]", db.message(), db.code().code()))
        }
        _ => Failure::Unavailable(e.into()),
    }
}

/// Worth retrying on a new connection: SQLSTATE 08 (connection exception), 53 (insufficient
/// resources), 57P (shutdown/restart), 40001/40P01 (serialization failure/deadlock), and errors
/// without a SQLSTATE (I/O: the connection was lost).
fn is_transient_pg(e: &tokio_postgres::Error) -> bool {
    if crate::tls::is_permanent_tls_failure(e) {
        return false;
    }
    e.as_db_error().is_none_or(|db| {
        let code = db.code().code();
        code.starts_with("08") || code.starts_with("53") || code.starts_with("57P") || code == "40001" || code == "40P01"
    })
}

/// Whether an error chain ends in a transient PostgreSQL error.
fn is_transient(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| cause.downcast_ref::<tokio_postgres::Error>().is_some_and(is_transient_pg))
}

pub struct TimescaleSink {
    id: String,
    cfg: TimescaleSinkConfig,
    layout: Layout,
    pg: tokio_postgres::Config,
    /// TLS as `sslmode` says (see [`crate::tls`]).
    tls: MakeRustlsConnect,
    client: Option<Client>,
    table: Option<PreparedTable>,
    buffer: RowBuffer,
    batching: Batching,
    /// Backoff for connecting at start; writes are retried by the engine.
    backoff: Backoff,
    /// An append whose COMMIT was sent and never answered: the first rows of the buffer.
    in_doubt: Option<InDoubt>,
    /// `delivery: exactly_once`: where positions go, once `committed` was asked.
    positions: Option<PositionTable>,
    staged: Staged,
}

/// Positions of buffered rows, each with the row count (since the sink started) its batch ends
/// at: an append commits a position with the part of the buffer that holds its batch's last row.
#[derive(Default)]
struct Staged {
    /// The position the next `write` reaches.
    next: Option<Position>,
    /// Oldest first: (rows up to the end of the batch, its position).
    ends: Vec<(u64, Position)>,
    /// Rows passed to `write` so far.
    rows: u64,
    /// Rows before the buffer's first: written or dead-lettered.
    done: u64,
}

impl Staged {
    fn wrote(&mut self, rows: usize) {
        self.rows += rows as u64;
        if let Some(p) = self.next.take() {
            self.ends.push((self.rows, p));
        }
    }
    /// The positions whose batches end by row `end`.
    fn through(&self, end: u64) -> Vec<Position> {
        self.ends.iter().take_while(|(e, _)| *e <= end).map(|(_, p)| p.clone()).collect()
    }
    /// Rows up to `end` are handled: their positions are stored (or not needed any more).
    fn handled(&mut self, end: u64) {
        self.done = self.done.max(end);
        self.ends.retain(|(e, _)| *e > end);
    }
}

/// A transaction whose COMMIT may or may not have happened (its answer was lost with the
/// connection), decided on the next attempt with `txid_status`, which PostgreSQL provides for
/// exactly this. Retrying without asking wrote the rows twice.
#[derive(Debug, Clone, Copy)]
struct InDoubt {
    xid: i64,
    /// Its backend, ended if the transaction is still open when asked.
    pid: i32,
    rows: usize,
}

impl TimescaleSink {
    /// `resolved` is the config checked against `schema`, the sink's input.
    pub fn new(id: String, cfg: TimescaleSinkConfig, batching: Batching, schema: SchemaRef, resolved: Resolved) -> Self {
        let Resolved { mut pg, tls, layout } = resolved;
        if pg.get_application_name().is_none() {
            pg.application_name(format!("tributary/{id}"));
        }
        if pg.get_options().is_none() {
            // The staged upsert's `CREATE TEMP TABLE IF NOT EXISTS` would log a NOTICE per batch.
            pg.options("-c client_min_messages=warning");
        }
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(cfg.timeout.0);
        }
        // A peer that vanishes without a FIN (a cut network) is noticed within about a minute.
        pg.keepalives(true).keepalives_idle(Duration::from_secs(30));
        let backoff =
            Backoff { initial: Duration::from_millis(100), max: Duration::from_secs(10), max_attempts: Some(cfg.connect_attempts.max(1)) };
        let buffer = RowBuffer::new(schema, batching.max_rows);
        TimescaleSink {
            id,
            cfg,
            layout,
            pg,
            tls,
            client: None,
            table: None,
            buffer,
            batching,
            backoff,
            in_doubt: None,
            positions: None,
            staged: Staged::default(),
        }
    }

    async fn connect(&self) -> anyhow::Result<Client> {
        let (client, conn) = self.pg.connect(self.tls.clone()).await.context("connecting to PostgreSQL")?;
        let id = self.id.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::warn!(sink = %id, error = %e, "PostgreSQL connection closed");
            }
        });
        Ok(client)
    }

    /// One attempt on the kept connection (or a new one), bounded by `timeout`. A connection
    /// that failed is dropped so the next attempt starts afresh.
    async fn write_part(&mut self, part: &RecordBatch, positions: &[Position]) -> Result<(), Failure> {
        let timeout = self.cfg.timeout.0;
        let attempt = async {
            let mut client = match self.client.take() {
                Some(c) if !c.is_closed() => c,
                _ => self.connect().await.map_err(Failure::Unavailable)?,
            };
            let stored = self.positions.as_ref().map(|table| (table, positions));
            let r =
                write_once(&mut client, self.table.as_ref().expect("started"), &self.layout.write, part, stored, &mut self.in_doubt).await;
            Ok::<_, Failure>((client, r))
        };
        match tokio::time::timeout(timeout, attempt).await {
            Err(_) => Err(Failure::Unavailable(anyhow::anyhow!("no answer from PostgreSQL within {timeout:?}"))),
            Ok(Err(f)) => Err(f),
            Ok(Ok((client, r))) => {
                if !matches!(r, Err(Failure::Unavailable(_))) {
                    self.client = Some(client);
                }
                r
            }
        }
    }

    /// Whether the transaction of an unanswered COMMIT committed. One still in progress (its
    /// backend is stuck behind the cut) has its backend ended, which ends it one way or the other.
    async fn committed(&mut self, doubt: InDoubt) -> Result<bool, Failure> {
        let timeout = self.cfg.timeout.0;
        let ask = async {
            let client = match self.client.take() {
                Some(c) if !c.is_closed() => c,
                _ => self.connect().await.map_err(Failure::Unavailable)?,
            };
            for _ in 0..20 {
                let status: Option<String> = client.query_one("SELECT txid_status($1)", &[&doubt.xid]).await.map_err(classify)?.get(0);
                match status.as_deref() {
                    Some("committed") => return Ok((client, true)),
                    // NULL: too old to know, which a retry within minutes never meets.
                    Some("aborted") | None => return Ok((client, false)),
                    _ => {
                        client.execute("SELECT pg_terminate_backend($1)", &[&doubt.pid]).await.map_err(classify)?;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
            Err(Failure::Unavailable(anyhow::anyhow!("transaction {} is still in progress", doubt.xid)))
        };
        let (client, committed) = tokio::time::timeout(timeout, ask)
            .await
            .map_err(|_| Failure::Unavailable(anyhow::anyhow!("no answer from PostgreSQL within {timeout:?}")))??;
        self.client = Some(client);
        Ok(committed)
    }

    /// Writes everything buffered. Rows the database rejects are isolated by halving the batch and
    /// come back as dead letters with the database's error; the rest is written. When the server
    /// is unavailable, what is not written yet stays buffered (parts already committed do not) and
    /// the rejections found so far go with the transient failure.
    async fn write_buffer(&mut self) -> Result<Vec<DeadLetter>, Transient> {
        let Some(mut rows) = self.buffer.take()? else {
            return self.write_positions_only().await.map(|()| Vec::new());
        };
        if let Some(doubt) = self.in_doubt {
            match self.committed(doubt).await {
                Ok(committed) => {
                    self.in_doubt = None;
                    if committed {
                        // Written by the attempt whose answer was lost: not again.
                        tracing::info!(sink = %self.id, rows = doubt.rows, "an unanswered COMMIT had committed; its rows are not written again");
                        let written = doubt.rows.min(rows.num_rows());
                        rows = rows.slice(written, rows.num_rows() - written);
                        self.staged.handled(self.staged.done + written as u64);
                    }
                }
                Err(f) => {
                    self.buffer.push(rows);
                    let e = match f {
                        Failure::Unavailable(e) => e,
                        Failure::Rejected(reason) => anyhow::anyhow!(reason),
                    };
                    return Err(Transient::new(e.context("PostgreSQL unavailable (deciding whether an unanswered COMMIT committed)")));
                }
            }
        }
        let mut rejected = Vec::new();
        let upsert = matches!(self.layout.write, Write::Upsert { .. });
        if let Write::Upsert { key } = &self.layout.write {
            rows = last_row_per_key(&rows, key)?;
        }
        // Rows before the first rejected one: positions are stored only up to there, so a row
        // refused here is not taken for written before its dead letter is stored (the next
        // flush, after the engine stored it, stores them).
        let mut clean_until = u64::MAX;
        let mut pending = vec![(self.staged.done, rows)];
        while let Some((start, part)) = pending.pop() {
            let end = start + part.num_rows() as u64;
            // An upsert's parts are not in row order (one row per key was kept): all positions
            // go with its last part.
            let positions = match upsert {
                false => self.staged.through(end.min(clean_until)),
                true if pending.is_empty() && clean_until == u64::MAX => self.staged.through(self.staged.rows),
                true => Vec::new(),
            };
            match self.write_part(&part, &positions).await {
                Ok(()) => {
                    if upsert {
                        self.staged.handled(if pending.is_empty() { self.staged.rows } else { self.staged.done });
                    } else {
                        self.staged.handled(end.min(clean_until));
                        self.staged.done = end;
                    }
                }
                Err(Failure::Rejected(reason)) if part.num_rows() > 1 => {
                    let mid = part.num_rows() / 2;
                    pending.push((start + mid as u64, part.slice(mid, part.num_rows() - mid)));
                    pending.push((start, part.slice(0, mid)));
                    tracing::debug!(sink = %self.id, %reason, rows = part.num_rows(), "rejected; splitting to find the bad rows");
                }
                Err(Failure::Rejected(reason)) => {
                    clean_until = clean_until.min(start);
                    if !upsert {
                        self.staged.done = end;
                    }
                    rejected.extend(letters_for_rows(&part, &format!("rejected by PostgreSQL: {reason}")));
                }
                Err(Failure::Unavailable(e)) => {
                    self.buffer.push(part);
                    for (_, rest) in pending.into_iter().rev() {
                        self.buffer.push(rest);
                    }
                    return Err(Transient::new(e.context("PostgreSQL unavailable")).with_rejected(rejected));
                }
            }
        }
        if upsert {
            self.staged.done = self.staged.rows;
        }
        Ok(rejected)
    }

    /// Positions whose rows are all handled but were not stored with them (every row of their
    /// batch was refused, or came after a refused one): stored on their own.
    async fn write_positions_only(&mut self) -> Result<(), Transient> {
        let positions = self.staged.through(self.staged.done);
        let Some(table) = self.positions.as_ref().filter(|_| !positions.is_empty()) else { return Ok(()) };
        let client = match self.client.take() {
            Some(c) if !c.is_closed() => c,
            _ => self.connect().await.map_err(Transient::new)?,
        };
        let stored = async {
            let mut client = client;
            let tx = client.transaction().await?;
            table.store(&tx, &positions).await?;
            tx.commit().await?;
            Ok::<_, tokio_postgres::Error>(client)
        };
        match tokio::time::timeout(self.cfg.timeout.0, stored).await {
            Ok(Ok(client)) => {
                self.client = Some(client);
                self.staged.handled(self.staged.done);
                Ok(())
            }
            Ok(Err(e)) => Err(Transient::new(anyhow::Error::new(e).context("storing positions"))),
            Err(_) => Err(Transient::new(anyhow::anyhow!("no answer from PostgreSQL within {:?} (storing positions)", self.cfg.timeout.0))),
        }
    }
}

#[async_trait::async_trait]
impl Sink for TimescaleSink {
    async fn start(&mut self, ctx: &SinkContext) -> anyhow::Result<()> {
        // Connecting and preparing the table are retried (`connect_attempts`, up to about a
        // minute by default) while the server is unreachable or still starting: a stack
        // started all at once (compose) brings the database up after its pipelines. A table
        // that does not fit fails at once.
        let this = &*self;
        let (client, table) = self
            .backoff
            .retry(
                || async {
                    let client = this.connect().await?;
                    let table = prepare(&client, &this.cfg, &this.layout, &this.id).await?;
                    Ok::<_, anyhow::Error>((client, table))
                },
                is_transient,
                |_, e, _| {
                    ctx.metrics.retries.inc();
                    tracing::warn!(sink = %this.id, error = %format!("{e:#}"), "PostgreSQL not ready; retrying");
                },
            )
            .await?;
        self.client = Some(client);
        self.table = Some(table);
        Ok(())
    }

    async fn write(&mut self, batch: RecordBatch, _ctx: &SinkContext) -> Result<Written, Transient> {
        self.staged.wrote(batch.num_rows());
        let full = self.buffer.push(batch);
        Ok(Written::with(if full { Durability::BufferFull } else { Durability::Buffered }, Vec::new()))
    }

    async fn flush(&mut self, _ctx: &SinkContext) -> Result<Vec<DeadLetter>, Transient> {
        self.write_buffer().await
    }

    fn take_buffered(&mut self) -> Vec<RecordBatch> {
        // The rows leave the sink (as dead letters): nothing of the buffer is in doubt any more,
        // and their positions need not be stored (the engine acknowledges them as dead letters).
        self.in_doubt = None;
        self.staged.handled(self.staged.rows);
        self.buffer.take().ok().flatten().into_iter().collect()
    }

    fn flush_interval(&self) -> Option<Duration> {
        Some(self.batching.max_age)
    }

    fn positions(&mut self) -> Option<&mut dyn PositionStore> {
        Some(self)
    }
}

#[async_trait::async_trait]
impl PositionStore for TimescaleSink {
    async fn committed(&mut self, _ctx: &SinkContext, _streams: &[Arc<str>]) -> anyhow::Result<Positions> {
        // The table holds every stream's row: read whole.
        let table = PositionTable::new(&self.cfg, &self.id);
        let client = self.client.as_ref().context("not started")?;
        table.create(client).await.context("creating tributary_positions")?;
        let written = table.read(client).await.context("reading tributary_positions")?;
        self.positions = Some(table);
        Ok(written)
    }

    fn reached(&mut self, position: &Position) {
        self.staged.next = Some(position.clone());
    }
}

/// One attempt: binary COPY into the table (append), or into a session-temporary stage that is
/// merged with `INSERT … ON CONFLICT` in the same transaction (upsert).
/// An append's COMMIT is sent with `in_doubt` set to its transaction, cleared once answered.
async fn write_once(
    client: &mut Client,
    table: &PreparedTable,
    write: &Write,
    part: &RecordBatch,
    positions: Option<(&PositionTable, &[Position])>,
    in_doubt: &mut Option<InDoubt>,
) -> Result<(), Failure> {
    let (payload, unencodable) = encode(part, table);
    if let Some(reason) = unencodable {
        return Err(Failure::Rejected(reason));
    }
    let cols: Vec<String> = table.columns.iter().map(|(n, _)| quote_ident(n)).collect();
    let cols = cols.join(", ");
    match write {
        Write::Append => {
            // An explicit transaction: tokio-postgres reports a COPY complete on its
            // CommandComplete, which the server sends *before* the implicit commit at Sync — a
            // backend terminated in between loses rows that were reported written (seen in the
            // termination test). COMMIT's own reply comes only after the commit.
            let tx = client.transaction().await.map_err(classify)?;
            let sink = tx.copy_in(&format!("COPY {} ({cols}) FROM STDIN (FORMAT binary)", table.qualified)).await.map_err(classify)?;
            send_copy(sink, payload).await?;
            if let Some((table, positions)) = positions {
                table.store(&tx, positions).await.map_err(classify)?;
            }
            let row = tx.query_one("SELECT txid_current(), pg_backend_pid()", &[]).await.map_err(classify)?;
            *in_doubt = Some(InDoubt { xid: row.get(0), pid: row.get(1), rows: part.num_rows() });
            let committed = tx.commit().await.map_err(classify);
            if !matches!(committed, Err(Failure::Unavailable(_))) {
                // Answered: committed, or refused at commit (and so rolled back).
                *in_doubt = None;
            }
            committed
        }
        Write::Upsert { key } => {
            let tx = client.transaction().await.map_err(classify)?;
            tx.batch_execute(&format!(
                "CREATE TEMP TABLE IF NOT EXISTS tributary_stage (LIKE {} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS",
                table.qualified
            ))
            .await
            .map_err(classify)?;
            let sink = tx.copy_in(&format!("COPY tributary_stage ({cols}) FROM STDIN (FORMAT binary)")).await.map_err(classify)?;
            send_copy(sink, payload).await?;
            let keys: Vec<String> = key.iter().map(|k| quote_ident(&k.name)).collect();
            let updates: Vec<String> = table
                .columns
                .iter()
                .filter(|(n, _)| !write.is_key(n))
                .map(|(n, _)| format!("{0} = EXCLUDED.{0}", quote_ident(n)))
                .collect();
            let action = if updates.is_empty() { "NOTHING".to_string() } else { format!("UPDATE SET {}", updates.join(", ")) };
            tx.batch_execute(&format!(
                "INSERT INTO {} ({cols}) SELECT {cols} FROM tributary_stage ON CONFLICT ({}) DO {action}",
                table.qualified,
                keys.join(", ")
            ))
            .await
            .map_err(classify)?;
            if let Some((table, positions)) = positions {
                table.store(&tx, positions).await.map_err(classify)?;
            }
            tx.commit().await.map_err(classify)
        }
    }
}

async fn send_copy(sink: tokio_postgres::CopyInSink<Bytes>, payload: Bytes) -> Result<(), Failure> {
    futures::pin_mut!(sink);
    sink.send(payload).await.map_err(classify)?;
    sink.finish().await.map_err(classify)?;
    Ok(())
}

/// The binary COPY payload of `part`; the reason of the first row that cannot be encoded (such a
/// row is rejected like a database refusal, so halving isolates it).
fn encode(part: &RecordBatch, table: &PreparedTable) -> (Bytes, Option<String>) {
    let encoders: Vec<ColumnEncoder> =
        table.columns.iter().zip(part.columns()).map(|((name, udt), column)| ColumnEncoder::new(name, column.clone(), udt)).collect();
    let mut out = BytesMut::with_capacity(COPY_HEADER.len() + part.num_rows() * (2 + encoders.len() * 16));
    out.extend_from_slice(COPY_HEADER);
    for row in 0..part.num_rows() {
        out.extend_from_slice(&(encoders.len() as i16).to_be_bytes());
        for enc in &encoders {
            if let Err(reason) = enc.encode(row, &mut out) {
                return (Bytes::new(), Some(reason));
            }
        }
    }
    out.extend_from_slice(COPY_TRAILER);
    (out.freeze(), None)
}

/// Upserts cannot touch one key twice in a statement: keep the last row per key.
fn last_row_per_key(rows: &RecordBatch, key: &[KeyColumn]) -> anyhow::Result<RecordBatch> {
    let columns: Vec<_> = key.iter().map(|k| rows.column(k.index).clone()).collect();
    let converter = RowConverter::new(columns.iter().map(|c| SortField::new(c.data_type().clone())).collect())?;
    let encoded = converter.convert_columns(&columns)?;
    let mut last = HashMap::with_capacity(rows.num_rows());
    for i in 0..rows.num_rows() {
        last.insert(encoded.row(i), i as u32);
    }
    if last.len() == rows.num_rows() {
        return Ok(rows.clone());
    }
    let mut keep: Vec<u32> = last.into_values().collect();
    keep.sort_unstable();
    Ok(take_record_batch(rows, &UInt32Array::from(keep))?)
}
