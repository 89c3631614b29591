//! Running one sink under the engine's failure model (see `tributary_sdk::sink`): transient
//! failures are retried here with capped backoff while the sink's input channel backs up; rows
//! the destination refused go to the sink's dead letters carrying the batch's acks; only
//! `retry.max_elapsed` makes the engine give up, through the same dead-letter path.

use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use super::versions::{NewSink, SinkVersion, Versions};
use crate::graph::{ExactlyOnce, SinkRetry};
use tributary_sdk::retry::Backoff;
use tributary_sdk::{AckSet, Batch, Closed, DeadLetter, DeadLetters, Delivery, Durability, PositionQuery, Positions, Sink, SinkContext};

/// Acks (and the row count) of rows the sink holds until its next successful flush.
#[derive(Default)]
struct Pending {
    acks: AckSet,
    rows: u64,
}

/// One episode of transient failures: counts, logs, waits, tells `/health`, and decides when to
/// give up.
pub(crate) struct Retrying<'a> {
    ctx: &'a SinkContext,
    retry: &'a SinkRetry,
    backoff: Backoff,
    what: &'static str,
    /// When the episode began: monotonic (for `max_elapsed`) and wall clock (for `/health`).
    since: Option<(tokio::time::Instant, i64)>,
    attempt: u32,
}

impl<'a> Retrying<'a> {
    pub(crate) fn new(ctx: &'a SinkContext, retry: &'a SinkRetry, what: &'static str) -> Self {
        let backoff = Backoff { initial: retry.initial.0, max: retry.max.0, max_attempts: None };
        Retrying { ctx, retry, backoff, what, since: None, attempt: 0 }
    }

    /// After a failed attempt: `None` once the wait before the next attempt is over, or the
    /// give-up reason when `max_elapsed` has passed.
    pub(crate) async fn wait(&mut self, error: &anyhow::Error) -> Option<String> {
        let m = &self.ctx.metrics;
        let first = self.since.is_none();
        let (since, since_us) = *self.since.get_or_insert_with(|| (tokio::time::Instant::now(), tributary_sdk::now_us()));
        self.attempt += 1;
        let delay = self.backoff.delay(self.attempt);
        let error_text = format!("{error:#}");
        // One error per episode of failures; the attempts after the first are retries.
        if first {
            tributary_sdk::report_error!(m, warn, sink = %self.ctx.id, attempt = 1, retry_in = ?delay, error = %error_text, "{} failed; retrying (rows wait, nothing is dropped)", self.what);
        }
        m.set_failing(Some((since_us, error_text.clone())));
        if let Some(limit) = self.retry.max_elapsed.filter(|limit| since.elapsed() >= limit.0) {
            m.set_failing(None);
            return Some(format!(
                "{} still failing after retry.max_elapsed {} ({} attempts); last error: {error:#}",
                self.what,
                humantime::format_duration(limit.0),
                self.attempt
            ));
        }
        m.retries.inc();
        // The first attempts, then every 10th: a database down for an hour is not 10,000 lines.
        if !first && (self.attempt <= 3 || self.attempt.is_multiple_of(10)) {
            tracing::warn!(sink = %self.ctx.id, attempt = self.attempt, retry_in = ?delay, error = %error_text, "{} failed; retrying (rows wait, nothing is dropped)", self.what);
        }
        tokio::time::sleep(delay).await;
        None
    }

    pub(crate) fn succeeded(self) {
        if let Some((since, _)) = self.since {
            self.ctx.metrics.set_failing(None);
            tracing::info!(sink = %self.ctx.id, attempts = self.attempt + 1, after = ?since.elapsed(), "{} succeeded again", self.what);
        }
    }
}

/// The sink's task: writes every delivered batch, flushes on its interval and at the end;
/// `publish_written` gets the positions an exactly-once sink had written when it started, and
/// `queries` asks it, while it runs, for the positions of streams a source is about to replay
/// (see `tributary_sdk::SinkPositions`).
pub(crate) async fn run_sink(
    first: SinkVersion,
    mut rx: mpsc::Receiver<Delivery>,
    ctx: SinkContext,
    dead: DeadLetters,
    mut replace: mpsc::UnboundedReceiver<NewSink>,
    publish_written: Option<watch::Sender<Option<Positions>>>,
    mut queries: Option<mpsc::UnboundedReceiver<PositionQuery>>,
) -> anyhow::Result<()> {
    let SinkVersion { mut sink, mut retry, exactly_once } = first;
    let mut replay = start(sink.as_mut(), exactly_once.as_ref(), &ctx).await?;
    // The windowed transforms it reads wait for this before they emit (see `windowed.rs`).
    if let Some(publish) = publish_written {
        publish.send_replace(Some(replay.as_ref().map(|r| r.written.clone()).unwrap_or_default()));
    }
    let mut pending = Pending::default();
    let mut ticker = flush_ticker(sink.as_ref());
    let mut versions = Versions::default();
    loop {
        let tick = async {
            match ticker.as_mut() {
                Some(t) => {
                    t.tick().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            Some(new) = replace.recv() => {
                let Some(new) = versions.arrive(new, &ctx.id) else { continue };
                // What was queued before the reload goes to the old sink, which flushes it.
                for _ in 0..rx.len() {
                    let Some(Delivery { batch, work: _work, .. }) = rx.recv().await else { break };
                    count_in(&ctx, &batch);
                    if let Some(batch) = unless_written(&ctx, replay.as_mut(), batch) {
                        write(sink.as_mut(), &ctx, &dead, &retry, batch, &mut pending).await?;
                    }
                }
                replay = switch_sink(&mut sink, &mut retry, new, &ctx, &dead, &mut pending).await?;
                ticker = flush_ticker(sink.as_ref());
            }
            // Before deliveries: the asking source sends nothing until it has the answer.
            Some(query) = async { queries.as_mut()?.recv().await }, if queries.is_some() => {
                flush(sink.as_mut(), &ctx, &dead, &retry, &mut pending).await?;
                let answer = stored_positions(sink.as_mut(), &ctx, &retry, &query.streams).await;
                if let (Ok(written), Some(replay)) = (&answer, replay.as_mut()) {
                    written.iter().for_each(|p| replay.written.advance(&p));
                }
                // The source may have stopped meanwhile; then nobody needs the answer.
                let _ = query.answer.send(answer);
            }
            delivery = rx.recv() => {
                // `_work` lives until the batch is written (see `InFlight`).
                let Some(Delivery { input, batch, work: _work }) = delivery else {
                    // The old inputs let go: the new version reads its new inputs.
                    let Some((next, next_rx)) = versions.rewired() else { break };
                    replay = switch_sink(&mut sink, &mut retry, next, &ctx, &dead, &mut pending).await?;
                    ticker = flush_ticker(sink.as_ref());
                    rx = next_rx;
                    continue;
                };
                if let Some(new) = versions.due(input, &batch.data) {
                    replay = switch_sink(&mut sink, &mut retry, new, &ctx, &dead, &mut pending).await?;
                    ticker = flush_ticker(sink.as_ref());
                }
                count_in(&ctx, &batch);
                if let Some(batch) = unless_written(&ctx, replay.as_mut(), batch) {
                    write(sink.as_mut(), &ctx, &dead, &retry, batch, &mut pending).await?;
                }
            }
            _ = tick => flush(sink.as_mut(), &ctx, &dead, &retry, &mut pending).await?,
        }
    }
    flush(sink.as_mut(), &ctx, &dead, &retry, &mut pending).await?;
    Ok(())
}

/// Starts a sink version; an exactly-once one then reports what earlier runs (or the version
/// before a reload) wrote.
async fn start(sink: &mut dyn Sink, exactly_once: Option<&ExactlyOnce>, ctx: &SinkContext) -> anyhow::Result<Option<Replay>> {
    sink.start(ctx).await?;
    let Some(exactly_once) = exactly_once else { return Ok(None) };
    // Checked by `validate`, and a reload plans its new versions the same way.
    let Some(store) = sink.positions() else {
        anyhow::bail!("delivery: exactly_once, but this sink does not store positions with its rows");
    };
    let written =
        store.committed(ctx, &exactly_once.streams).await.map_err(|e| e.context("reading the positions written with the rows"))?;
    tracing::info!(sink = %ctx.id, "exactly once: replayed rows up to {written} are already written and will be skipped");
    Ok(Some(Replay { written, skipped: 0 }))
}

/// The positions of `streams` the sink stored (everything it held was just flushed), read again
/// until the destination answers or `retry.max_elapsed` passes.
async fn stored_positions(sink: &mut dyn Sink, ctx: &SinkContext, retry: &SinkRetry, streams: &[Arc<str>]) -> anyhow::Result<Positions> {
    let Some(store) = sink.positions() else {
        anyhow::bail!("sink `{}` was asked for positions but does not store them", ctx.id);
    };
    let mut retrying = Retrying::new(ctx, retry, "reading the stored positions");
    loop {
        match store.committed(ctx, streams).await {
            Ok(written) => {
                retrying.succeeded();
                return Ok(written);
            }
            Err(e) => {
                if let Some(reason) = retrying.wait(&e).await {
                    anyhow::bail!("sink `{}`: {reason}", ctx.id);
                }
            }
        }
    }
}

/// What an exactly-once sink had written when it started, and the replayed rows skipped since
/// the last batch it wrote.
struct Replay {
    written: Positions,
    skipped: u64,
}

/// `batch`, unless it is a replayed batch the sink wrote before the restart: then its acks are
/// released, and it goes no further. `replay` is `None` for an at-least-once sink, which is not
/// given positions to store.
fn unless_written(ctx: &SinkContext, replay: Option<&mut Replay>, batch: Batch) -> Option<Batch> {
    let Some(replay) = replay else {
        return Some(batch);
    };
    match &batch.position {
        Some(position) if replay.written.covers(position) => {
            let rows = batch.data.num_rows() as u64;
            ctx.metrics.replay_skipped.add(rows);
            replay.skipped += rows;
            batch.acks.release();
            None
        }
        _ => {
            if replay.skipped > 0 {
                tracing::info!(sink = %ctx.id, replay_skipped_rows = replay.skipped, "exactly once: replayed rows the sink had written were skipped");
                replay.skipped = 0;
            }
            Some(batch)
        }
    }
}

/// The old sink writes what it holds; then the new version starts (and, exactly once, reads the
/// positions the old one stored: a reload neither loses nor repeats rows).
async fn switch_sink(
    sink: &mut Box<dyn Sink>,
    retry: &mut SinkRetry,
    new: SinkVersion,
    ctx: &SinkContext,
    dead: &DeadLetters,
    pending: &mut Pending,
) -> anyhow::Result<Option<Replay>> {
    flush(sink.as_mut(), ctx, dead, retry, pending).await?;
    (*sink, *retry) = (new.sink, new.retry);
    let replay = start(sink.as_mut(), new.exactly_once.as_ref(), ctx).await?;
    tracing::info!(sink = %ctx.id, "reloaded: rows from here on go to the new config");
    Ok(replay)
}

fn count_in(ctx: &SinkContext, batch: &Batch) {
    let m = &ctx.metrics;
    m.rows_in.add(batch.data.num_rows() as u64);
    m.bytes_in.add(batch.data.get_array_memory_size() as u64);
    m.batches_in.inc();
}

fn flush_ticker(sink: &dyn Sink) -> Option<tokio::time::Interval> {
    // A plugin's zero interval would panic the timer: treat it as "no periodic flush".
    sink.flush_interval().filter(|d| !d.is_zero()).map(|d| {
        let mut t = tokio::time::interval_at(tokio::time::Instant::now() + d, d);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    })
}

/// Writes one batch until the sink takes it (or `max_elapsed` passes).
async fn write(
    sink: &mut dyn Sink,
    ctx: &SinkContext,
    dead: &DeadLetters,
    retry: &SinkRetry,
    batch: Batch,
    pending: &mut Pending,
) -> Result<(), Closed> {
    let Batch { data, acks, position, records } = batch;
    let total = data.num_rows() as u64;
    let mut todo = data;
    let mut refused = 0;
    let mut retrying = Retrying::new(ctx, retry, "write");
    let started = std::time::Instant::now();
    let written = loop {
        if let Some(store) = sink.positions() {
            if let Some(p) = &position {
                store.reached(p);
            }
        } else {
            // Rows left after a partial write are no longer the records' rows.
            let whole = todo.num_rows() as u64 == total;
            sink.next_at(position.as_ref(), records.as_deref().filter(|_| whole));
        }
        match sink.write(todo.clone(), ctx).await {
            Ok(written) => break written,
            Err(failure) => {
                refused += refuse(ctx, dead, failure.rejected, &acks).await?;
                if let Some(rest) = failure.unwritten {
                    todo = rest;
                }
                if let Some(reason) = retrying.wait(&failure.error).await {
                    tracing::error!(sink = %ctx.id, rows = todo.num_rows(), "{reason}; sending the rows to the dead letters");
                    ctx.metrics.rows_written.add(total - refused - todo.num_rows() as u64);
                    return dead.send_rows(&todo, &reason, acks).await;
                }
            }
        }
    };
    retrying.succeeded();
    refused += refuse(ctx, dead, written.rejected, &acks).await?;
    let kept = total - refused;
    match written.durability {
        Durability::Durable => {
            ctx.metrics.wrote(started);
            ctx.metrics.rows_written.add(std::mem::take(&mut pending.rows) + kept);
            std::mem::take(&mut pending.acks).release();
            acks.release();
        }
        Durability::Buffered | Durability::BufferFull => {
            pending.rows += kept;
            pending.acks.extend(acks);
            if written.durability == Durability::BufferFull {
                flush(sink, ctx, dead, retry, pending).await?;
            }
        }
    }
    Ok(())
}

/// Flushes until the sink's buffer is durable (or `max_elapsed` passes: then the buffered rows
/// are taken back and dead-lettered with their acks).
async fn flush(sink: &mut dyn Sink, ctx: &SinkContext, dead: &DeadLetters, retry: &SinkRetry, pending: &mut Pending) -> Result<(), Closed> {
    let mut retrying = Retrying::new(ctx, retry, "flush");
    let mut refused = 0;
    let started = std::time::Instant::now();
    loop {
        match sink.flush(ctx).await {
            Ok(rejected) => {
                retrying.succeeded();
                if pending.rows > 0 {
                    ctx.metrics.wrote(started);
                }
                refused += refuse(ctx, dead, rejected, &pending.acks).await?;
                let Pending { acks, rows } = std::mem::take(pending);
                ctx.metrics.rows_written.add(rows.saturating_sub(refused));
                acks.release();
                return Ok(());
            }
            Err(failure) => {
                refused += refuse(ctx, dead, failure.rejected, &pending.acks).await?;
                if let Some(reason) = retrying.wait(&failure.error).await {
                    let Pending { acks, .. } = std::mem::take(pending);
                    for rows in sink.take_buffered() {
                        tracing::error!(sink = %ctx.id, rows = rows.num_rows(), "{reason}; sending the rows to the dead letters");
                        dead.send_rows(&rows, &reason, acks.clone()).await?;
                    }
                    acks.release();
                    return Ok(());
                }
            }
        }
    }
}

/// Rows the destination refused for good: counted as errors and dead-lettered with a share of
/// `acks`, so the source's ack waits for the dead letters too. Returns how many.
async fn refuse(ctx: &SinkContext, dead: &DeadLetters, letters: Vec<DeadLetter>, acks: &AckSet) -> Result<u64, Closed> {
    let n = letters.len() as u64;
    if n > 0 {
        tributary_sdk::report_error!(ctx.metrics, debug, count = n, sink = %ctx.id, first_reason = %letters[0].reason, "rows refused by the destination");
        dead.send(letters, acks.clone()).await?;
    }
    Ok(n)
}
