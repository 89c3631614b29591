//! `mode: stream`: a Redis Stream read through a consumer group (`XREADGROUP`). An entry is
//! `XACK`ed only after every sink wrote its rows (ack handles); at start the reader first re-reads
//! its own pending entries, and it periodically claims entries another consumer left pending
//! longer than `claim_idle` (XPENDING + XCLAIM, never its own in-flight entries): at-least-once
//! end to end.

use std::time::Duration;

use anyhow::Context;

use redis::streams::{StreamClaimReply, StreamId, StreamReadOptions, StreamReadReply};
use redis::AsyncCommands;
use tokio::sync::mpsc;
use tributary_sdk::{now_us, Ack, AckSet, AckStatus, SourceContext};

use crate::config::StreamConfig;
use crate::positions::EntryPositions;
use crate::{Message, RECONNECT};

pub(crate) struct StreamReader {
    pub id: String,
    pub cfg: StreamConfig,
}

impl StreamReader {
    fn client(&self) -> anyhow::Result<redis::Client> {
        Ok(redis::Client::open(self.cfg.url.expose())?)
    }

    /// A connection with the consumer group in place (created with the stream when missing, as
    /// after a Redis restart that kept nothing), retried with backoff until Redis answers. A Redis
    /// still loading its data after a restart answers `LOADING` between loading steps: that is
    /// waited out like a Redis that is down, not taken as the end of the source.
    async fn connect_stream(&self, client: &redis::Client, ctx: &SourceContext) -> anyhow::Result<redis::aio::MultiplexedConnection> {
        let cfg = &self.cfg;
        // Errors come tagged: `true` for connecting (always retried, as for a Redis that is down),
        // `false` for creating the group (retried when the error passes with time).
        let connect = || async {
            let mut conn = client.get_multiplexed_async_connection().await.map_err(|e| (true, e))?;
            let created: redis::RedisResult<()> = conn.xgroup_create_mkstream(&cfg.stream, &cfg.group, "0").await;
            match created {
                Err(e) if e.code() != Some("BUSYGROUP") => Err((false, e)),
                _ => Ok(conn),
            }
        };
        RECONNECT
            .retry(
                connect,
                |(connecting, e)| !ctx.shutdown.is_cancelled() && (*connecting || passes(e)),
                |_, (_, e), d| {
                    ctx.metrics.retries.inc();
                    tracing::warn!(source = %self.id, error = %e, retry_in = ?d, "cannot reach Redis; retrying");
                },
            )
            .await
            .map_err(|(_, e)| anyhow::anyhow!("creating consumer group `{}` on stream `{}`: {e}", cfg.group, cfg.stream))
    }

    pub async fn run(&self, mut ctx: SourceContext) -> anyhow::Result<()> {
        let client = self.client()?;
        let cfg = &self.cfg;
        let mut conn = self.connect_stream(&client, &ctx).await?;
        tracing::info!(source = %self.id, stream = %cfg.stream, group = %cfg.group, consumer = %cfg.consumer, "reading stream");
        let mut positions = EntryPositions::new(&self.id, cfg);
        positions.ask(&ctx).await.context("asking the exactly-once sinks where they stopped")?;
        // Acked entry ids come back here to be XACKed; failed ones are read again from our PEL.
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(Vec<String>, AckStatus)>();
        let mut in_flight = 0usize;
        // Start with our own pending entries (a previous run's unacknowledged ones).
        let mut pending = OwnPending::new();
        let mut last_claim = tokio::time::Instant::now() - cfg.claim_idle.0;
        let shutdown = ctx.shutdown.clone();
        loop {
            // Entries claimed from another consumer carry no position (see `positions`).
            let mut claimed = false;
            // Settle finished batches first.
            while let Ok((ids, status)) = done_rx.try_recv() {
                in_flight -= 1;
                self.settle(&mut conn, &ids, status, &mut pending, &ctx).await;
            }
            if shutdown.is_cancelled() {
                break;
            }
            let entries: Vec<StreamId> = if pending.reading {
                let opts = StreamReadOptions::default().group(&cfg.group, &cfg.consumer).count(cfg.batch_size);
                let reply: StreamReadReply = match conn.xread_options(&[&cfg.stream], &[pending.cursor.as_str()], &opts).await {
                    Ok(r) => r,
                    Err(e) => {
                        if self.read_failed(&ctx, &e).await {
                            conn = self.connect_stream(&client, &ctx).await?;
                            self.ask_again(&mut positions, &ctx).await;
                            pending.reread();
                        }
                        continue;
                    }
                };
                pending.next(reply.keys.into_iter().flat_map(|k| k.ids).collect())
            } else if last_claim.elapsed() >= cfg.claim_idle.0 {
                last_claim = tokio::time::Instant::now();
                match claim_from_other_consumers(&mut conn, cfg).await {
                    Ok(entries) => {
                        if !entries.is_empty() {
                            tracing::info!(source = %self.id, entries = entries.len(), "claimed entries another consumer left pending");
                        }
                        claimed = true;
                        entries
                    }
                    Err(e) => {
                        if self.read_failed(&ctx, &e).await {
                            conn = self.connect_stream(&client, &ctx).await?;
                            self.ask_again(&mut positions, &ctx).await;
                            pending.reread();
                        }
                        continue;
                    }
                }
            } else {
                let opts = StreamReadOptions::default().group(&cfg.group, &cfg.consumer).count(cfg.batch_size).block(500);
                let (keys, ids) = ([&cfg.stream], [">"]);
                // Not cancelled on shutdown: Redis moves entries into our pending list when it
                // answers, so a dropped reply would leave them pending until the next start. The
                // block is short; shutdown waits for it.
                let reply = conn.xread_options::<_, _, Option<StreamReadReply>>(&keys, &ids, &opts).await;
                match reply {
                    Ok(r) => r.map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect()).unwrap_or_default(),
                    Err(e) => {
                        if self.read_failed(&ctx, &e).await {
                            // Entries whose XACK was lost with the connection are re-read.
                            conn = self.connect_stream(&client, &ctx).await?;
                            self.ask_again(&mut positions, &ctx).await;
                            pending.reread();
                        }
                        continue;
                    }
                }
            };
            if ctx.metrics.failing().is_some() {
                ctx.metrics.set_failing(None);
            }
            if entries.is_empty() {
                continue;
            }
            let pieces = if claimed {
                vec![entries]
            } else {
                // Pending entries read again that every exactly-once sink wrote (their XACK was
                // lost with a crash or a connection) are acknowledged, not sent again.
                let (written, rest): (Vec<StreamId>, Vec<StreamId>) = entries.into_iter().partition(|e| positions.written_everywhere(e));
                if !written.is_empty() {
                    let ids: Vec<String> = written.iter().map(|e| e.id.clone()).collect();
                    ctx.metrics.replay_skipped.add(ids.len() as u64);
                    self.settle(&mut conn, &ids, AckStatus::Delivered, &mut pending, &ctx).await;
                }
                positions.split(rest)
            };
            for piece in pieces {
                let position = if claimed { None } else { positions.position(&piece) };
                let ids: Vec<String> = piece.iter().map(|e| e.id.clone()).collect();
                let messages: Vec<Message> = piece.iter().map(entry_message).collect();
                let tx = done_tx.clone();
                let ack = Ack::new(move |status| {
                    let _ = tx.send((ids, status));
                });
                in_flight += 1;
                pending.in_flight.extend(piece.iter().map(|e| e.id.clone()));
                crate::emit(&self.id, &ctx, &messages, AckSet::single(ack), position).await?;
            }
        }
        // Let downstream flush, then acknowledge what it wrote before leaving.
        ctx.close_outputs();
        drop(done_tx);
        let until = tokio::time::Instant::now() + Duration::from_secs(25);
        while in_flight > 0 {
            match tokio::time::timeout_at(until, done_rx.recv()).await {
                Ok(Some((ids, status))) => {
                    in_flight -= 1;
                    self.settle(&mut conn, &ids, status, &mut pending, &ctx).await;
                }
                _ => {
                    tracing::warn!(source = %self.id, in_flight, "entries still unacknowledged at shutdown stay pending and are read again next start");
                    break;
                }
            }
        }
        Ok(())
    }

    /// After a reconnect, pending entries are read again: the sinks may have written some since
    /// they were last asked. A sink that cannot answer (the pipeline is stopping) leaves the old
    /// answer, which only means more is sent again (at least once).
    async fn ask_again(&self, positions: &mut EntryPositions, ctx: &SourceContext) {
        if let Err(e) = positions.ask(ctx).await {
            tracing::warn!(source = %self.id, error = %e, "the exactly-once sinks did not say where they stopped");
        }
    }

    /// XACK delivered entries; failed ones stay pending and are re-read.
    async fn settle(
        &self,
        conn: &mut redis::aio::MultiplexedConnection,
        ids: &[String],
        status: AckStatus,
        pending: &mut OwnPending,
        ctx: &SourceContext,
    ) {
        for id in ids {
            pending.in_flight.remove(id);
        }
        match status {
            AckStatus::Delivered => {
                let r: redis::RedisResult<i64> = conn.xack(&self.cfg.stream, &self.cfg.group, ids).await;
                if let Err(e) = r {
                    tributary_sdk::report_error!(ctx.metrics, warn, source = %self.id, error = %e, "XACK failed; the entries will be delivered again");
                }
            }
            AckStatus::Failed => {
                tributary_sdk::report_error!(ctx.metrics, warn, source = %self.id, entries = ids.len(), "downstream failed to write; re-reading pending entries");
                pending.reread();
            }
        }
    }

    /// Counts and logs a failed read, waits a little; `true` when the connection itself is gone
    /// (a multiplexed connection does not come back by itself: the caller reconnects).
    async fn read_failed(&self, ctx: &SourceContext, e: &redis::RedisError) -> bool {
        ctx.metrics.retries.inc();
        let lost = e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_unrecoverable_error();
        // `/health` names a source that keeps failing (after `admin.degraded_after`).
        if ctx.metrics.failing().is_none() {
            ctx.metrics.set_failing(Some((now_us(), format!("reading the Redis stream: {e}"))));
        }
        tributary_sdk::report_error!(ctx.metrics, warn, source = %self.id, error = %e, reconnecting = lost, "reading the stream failed; retrying");
        tokio::select! { _ = ctx.shutdown.cancelled() => {}, _ = tokio::time::sleep(Duration::from_millis(500)) => {} }
        lost
    }
}

/// Re-reading this consumer's own pending entries (at start, after a reconnect or a failed batch),
/// in id order and before any new entry: a batch's position says "every entry of this consumer up
/// to here", so a new entry sent ahead of a pending one would let a sink that wrote it take the
/// pending one for written. A cursor walks the pending list, so the entries in flight (a window
/// may hold their acks for minutes, and only newer entries close it) need not settle first; those
/// still in flight are not sent again.
struct OwnPending {
    reading: bool,
    /// The last pending id read in this pass (`0`: from the start).
    cursor: String,
    /// Entries sent and not settled yet.
    in_flight: std::collections::HashSet<String>,
}

impl OwnPending {
    fn new() -> Self {
        OwnPending { reading: true, cursor: "0".into(), in_flight: Default::default() }
    }

    /// Read the pending list again from its start.
    fn reread(&mut self) {
        self.reading = true;
        self.cursor = "0".into();
    }

    /// One read of the pending list: the entries to send (those not in flight). An empty read
    /// ends the pass.
    fn next(&mut self, read: Vec<StreamId>) -> Vec<StreamId> {
        match read.last() {
            Some(last) => self.cursor = last.id.clone(),
            None => self.reading = false,
        }
        read.into_iter().filter(|e| !self.in_flight.contains(&e.id)).collect()
    }
}

/// Whether a Redis error passes with time: a dropped connection, a server loading its data
/// (`LOADING`) or failing over. Not a key of another type (`WRONGTYPE`) or a denied command
/// (`NOPERM`), which no retry mends.
fn passes(e: &redis::RedisError) -> bool {
    !matches!(e.retry_method(), redis::RetryMethod::NoRetry)
}

/// An entry's message: its time is the entry id's milliseconds (when it was added). An id given
/// explicitly by the producer (`XADD s 99999999999999999-0`) that is no time in microseconds gets
/// the read time instead of overflowing.
pub(crate) fn entry_message(e: &StreamId) -> Message {
    let ts_us = e.id.split('-').next().and_then(|m| m.parse::<i64>().ok()).and_then(|ms| ms.checked_mul(1000)).unwrap_or_else(now_us);
    let field = |k: &str| e.map.get(k).and_then(|v| redis::from_redis_value::<String>(v).ok());
    Message {
        ts_us,
        channel: field("channel").unwrap_or_else(|| "high-score-processor".into()),
        payload: field("payload").unwrap_or_default(),
    }
}

/// Entries pending on *another* consumer of the group for at least `claim_idle` (a consumer that
/// died), moved to this one. Never this consumer's own: those are in flight here, waiting for the
/// sinks (a window or a Parquet file may hold their acks longer than `claim_idle`), and claiming
/// them would deliver them twice. XAUTOCLAIM cannot exclude a consumer, so: XPENDING with IDLE,
/// then XCLAIM of the others' ids (XCLAIM re-checks the idle time, so a race with another
/// claimer or a late XACK claims nothing).
async fn claim_from_other_consumers(conn: &mut redis::aio::MultiplexedConnection, cfg: &StreamConfig) -> redis::RedisResult<Vec<StreamId>> {
    let idle_ms = cfg.claim_idle.0.as_millis() as u64;
    let pending: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
        .arg(&cfg.stream)
        .arg(&cfg.group)
        .arg("IDLE")
        .arg(idle_ms)
        .arg("-")
        .arg("+")
        .arg(cfg.batch_size)
        .query_async(conn)
        .await?;
    let others: Vec<&str> = pending.iter().filter(|(_, consumer, _, _)| *consumer != cfg.consumer).map(|(id, ..)| id.as_str()).collect();
    if others.is_empty() {
        return Ok(Vec::new());
    }
    let claimed: StreamClaimReply = conn.xclaim(&cfg.stream, &cfg.group, &cfg.consumer, idle_ms, &others).await?;
    Ok(claimed.ids)
}
