//! A windowed transform's task: rows wait in their windows; a timer lets idle inputs close
//! windows; closing the input flushes open windows as partial.
//!
//! **Exactly once** (the window is on the path of an exactly-once sink): each emission carries the
//! position "every window ending at or before `through` is emitted" (stream: the transform's id),
//! which the sink stores with the rows. Rows in open windows hold their acks, so the source's disk
//! buffer keeps them until their windows are written; after a crash they are replayed and rebuild
//! the windows. The buffer is the checkpoint of the open windows, and the sink's stored position
//! is the checkpoint of what was emitted: at start the task asks each such sink where it stopped
//! ([`WindowOperator::resume`]), and does not emit again what they wrote. So a stop keeps the open
//! windows in the buffer instead of flushing them as partial, and a reload hands them to the new
//! version.

use std::sync::Arc;

use tokio::sync::{broadcast, mpsc, watch};
use tributary_sdk::{Batch, ComponentMetrics, DeadLetters, Delivery, Output, Owned, Position, Positions, SinkPositions, Work};

use super::versions::{NewVersion, Versions};
use super::window_parts::{Emitted, Template, Windows};
use super::{one_batch, send_sharing_acks, Timer};
use crate::graph::PlannedTransform;
use crate::sql::window::{Accepted, Emission};

/// Window ends are event times, which do not start again when a buffer folder is made afresh:
/// one epoch for every emission.
pub(super) const EMISSION_EPOCH: u64 = 0;

/// What an exactly-once sink fed by the window had written when it started (`None` until then).
pub(super) type SinkWritten = watch::Receiver<Option<Positions>>;

/// What a windowed transform sends to.
pub(super) struct WindowOutputs {
    pub id: String,
    pub output: Output,
    pub late: Output,
    pub dead: DeadLetters,
    pub metrics: Arc<ComponentMetrics>,
}

/// The running task's view: its outputs, and (exactly once) the stream of the positions its
/// emissions carry.
struct Emitter {
    out: WindowOutputs,
    stream: Option<Arc<str>>,
}

/// How a windowed transform learns what its exactly-once sinks wrote.
pub(super) struct Resume {
    /// One per exactly-once sink it feeds, at the first start (a window added by a reload has
    /// nothing written yet).
    pub at_start: Vec<SinkWritten>,
    /// Kept per partition: the sinks, asked when a partition reaches this process.
    pub ask: SinkPositions,
    /// Kept per partition: the partitions this process stops or starts owning.
    pub owned: broadcast::Receiver<Owned>,
}

pub(super) async fn run_windowed_transform(
    t: PlannedTransform,
    mut rx: mpsc::Receiver<Delivery>,
    out: WindowOutputs,
    resume: Resume,
    mut timer: Timer,
    mut replace: mpsc::UnboundedReceiver<NewVersion<PlannedTransform>>,
) -> anyhow::Result<()> {
    let exactly_once = t.window.as_ref().is_some_and(|w| w.exactly_once);
    // Repartitioned, a partition's windows move with it (at least once too: the member losing it
    // emits nothing partial for it; only exactly once also skips what its last owner emitted).
    let per_partition = t.window.as_ref().is_some_and(|w| w.repartitioned.is_some());
    let stream = exactly_once.then(|| Arc::<str>::from(out.id.as_str()));
    let w = Emitter { out, stream };
    let Resume { at_start, ask, mut owned } = resume;
    let mut windows = Windows::new(Template::of(t)?, per_partition, ask, timer.now_us())?;
    if let (Some(stream), Windows::One { op, .. }) = (w.stream.as_ref().filter(|_| !at_start.is_empty()), &mut windows) {
        let written = written_by_sinks(&w.out.id, stream, at_start).await?;
        op.resume(&written);
        let through: Vec<String> = written.iter().map(|w| w.map_or("nothing".into(), format_micros)).collect();
        tracing::info!(transform = %w.out.id, "exactly once: the sinks it feeds wrote its windows through {}; replayed rows of those windows are skipped", through.join(", "));
    }
    let mut versions = Versions::default();
    let mut listening = per_partition;
    loop {
        // Held until what this delivery or tick produced is queued downstream (see `InFlight`).
        let _work;
        let emissions = tokio::select! {
            biased;
            change = owned.recv(), if listening => {
                _work = Work::default();
                match change {
                    Ok(Owned::Lost(stream)) => windows.lose(&stream, &w.out.id),
                    Ok(Owned::Gained(stream)) => windows.gain(&stream, &w.out.id),
                    Err(broadcast::error::RecvError::Lagged(_)) => windows.lose_all(&w.out.id),
                    Err(broadcast::error::RecvError::Closed) => listening = false,
                }
                Vec::new()
            }
            Some(new) = replace.recv() => {
                _work = Work::default();
                if let Some(new) = versions.arrive(new, &w.out.id) {
                    // What was queued goes into the old windows first.
                    for _ in 0..rx.len() {
                        let Some(delivery) = rx.recv().await else { break };
                        let (emissions, _work) = w.deliver(&mut windows, delivery, &timer).await?;
                        w.send_all(emissions).await?;
                    }
                    w.replace(&mut windows, new, &timer).await?;
                }
                Vec::new()
            }
            delivery = rx.recv() => {
                let Some(delivery) = delivery else {
                    // The old inputs let go: new windows over the new inputs.
                    let Some((next, next_rx)) = versions.rewired() else { break };
                    w.replace(&mut windows, next, &timer).await?;
                    rx = next_rx;
                    continue;
                };
                if let Some(new) = versions.due(delivery.input, &delivery.batch.data) {
                    w.replace(&mut windows, new, &timer).await?;
                }
                let (emissions, work) = w.deliver(&mut windows, delivery, &timer).await?;
                _work = work;
                emissions
            }
            work = timer.tick() => {
                _work = work;
                windows.advance(timer.now_us()).await?
            }
        };
        w.send_all(emissions).await?;
    }
    if w.stream.is_some() {
        let held = windows.buffered_rows();
        // Their acks fail: the buffer keeps the rows, and the next start rebuilds the windows.
        drop(windows);
        if held > 0 {
            tracing::info!(transform = %w.out.id, rows = held, "exactly once: open windows are not flushed as partial; their rows stay in the source's disk buffer and rebuild the windows at the next start");
        }
        return Ok(());
    }
    let emissions = windows.finish().await?;
    w.send_all(emissions).await
}

/// Per sink, the end of the last window of `stream` it wrote, once each has started.
async fn written_by_sinks(id: &str, stream: &Arc<str>, sinks: Vec<SinkWritten>) -> anyhow::Result<Vec<Option<i64>>> {
    let mut out = Vec::with_capacity(sinks.len());
    for mut sink in sinks {
        let positions = sink
            .wait_for(Option::is_some)
            .await
            .map_err(|_| {
                anyhow::anyhow!("an exactly-once sink fed by transform `{id}` stopped before it said which windows it had written")
            })?
            .clone()
            .unwrap_or_default();
        out.push(positions.seq_in(stream, EMISSION_EPOCH).map(|seq| i64::try_from(seq).unwrap_or(i64::MAX)));
    }
    Ok(out)
}

pub(super) fn format_micros(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us).map_or(us.to_string(), |t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
}

impl Emitter {
    /// Put one delivery into its windows; returns the windows it closed and the delivery's
    /// in-flight token.
    async fn deliver(&self, windows: &mut Windows, delivery: Delivery, timer: &Timer) -> anyhow::Result<(Vec<Emitted>, Work)> {
        let Delivery { input, batch, work } = delivery;
        let now = timer.now_us();
        self.out.metrics.rows_in.add(batch.data.num_rows() as u64);
        self.out.metrics.bytes_in.add(batch.data.get_array_memory_size() as u64);
        self.out.metrics.batches_in.inc();
        let Some((part, op)) = windows.of(batch.position.as_ref(), batch.acks.withdrawn(), &self.out.id, now).await? else {
            // A batch of a partition revoked since it was sent: its next owner reads it again.
            self.out.metrics.replay_skipped.add(batch.data.num_rows() as u64);
            return Ok((Vec::new(), work));
        };
        let accepted = op.accept(input, batch.data, batch.acks, now)?;
        self.route(accepted).await?;
        Ok((vec![(part, op.advance(now).await?)], work))
    }

    async fn send_all(&self, emissions: Vec<Emitted>) -> anyhow::Result<()> {
        for (part, emission) in emissions {
            self.send(part.as_ref(), emission).await?;
        }
        Ok(())
    }

    /// Late rows to `.late` (or dead letters), rejected rows to dead letters.
    async fn route(&self, accepted: Accepted) -> anyhow::Result<()> {
        self.out.metrics.replay_skipped.add(accepted.written_before as u64);
        if let Some((rows, acks)) = accepted.late {
            if self.out.late.is_unconnected() {
                // Nobody reads `.late`: keep the rows as dead letters rather than drop them.
                let reason =
                    format!("arrived after its window closed (behind the watermark); wire `{}.late` to handle late rows", self.out.id);
                self.out.dead.send_rows(&rows, &reason, acks).await?;
            } else {
                self.out.late.send(Batch::with_acks(rows, acks)).await?;
            }
        }
        for (rows, acks, reason) in accepted.rejected {
            tributary_sdk::report_error!(self.out.metrics, debug, transform = %self.out.id, rows = rows.num_rows(), "{reason}");
            self.out.dead.send_rows(&rows, &reason, acks).await?;
        }
        Ok(())
    }

    /// Send closed windows downstream (of partition `part` when kept per partition); a failed
    /// query dead-letters the windows' rows.
    async fn send(&self, part: Option<&Arc<str>>, emission: Option<Emission>) -> anyhow::Result<()> {
        let Some(Emission { result, acks, through }) = emission else { return Ok(()) };
        // A partial flush (a reload whose inputs changed) has no place among the positions.
        // Positions only exactly once; a partition's emissions are a stream of their own.
        let stream = self.stream.as_ref().map(|own| part.unwrap_or(own)).filter(|_| through != i64::MAX);
        match result {
            Ok(batches) => match (stream, batches.first().map(|b| b.schema())) {
                (Some(stream), Some(schema)) => {
                    // One batch carrying the position: a sink that stored it with the first of
                    // several would skip the rest as written when they are emitted again.
                    let position = Position { stream: stream.clone(), epoch: EMISSION_EPOCH, seq: u64::try_from(through).unwrap_or(0) };
                    match one_batch(schema, batches)
                        .map_err(|e| anyhow::anyhow!("joining the results of transform `{}`: {e}", self.out.id))?
                    {
                        Some(rows) => self.out.output.send(Batch::with_acks(rows, acks).at(Some(position))).await?,
                        None => acks.release(),
                    }
                }
                _ => send_sharing_acks(&self.out.output, batches, acks).await?,
            },
            Err(failed) => {
                let n = failed.len();
                let mut acks = Some(acks);
                for (k, (rows, reason)) in failed.into_iter().enumerate() {
                    // One error per failed query (a window's rows are one query).
                    tributary_sdk::report_error!(self.out.metrics, warn, transform = %self.out.id, "{reason}");
                    let a = if k + 1 == n { acks.take().unwrap_or_default() } else { acks.clone().unwrap_or_default() };
                    self.out.dead.send_rows(&rows, &reason, a).await?;
                }
            }
        }
        Ok(())
    }

    /// A changed window. Exactly once, when the open windows' inputs are still there with the
    /// same columns, their rows go into the new version's windows; otherwise the old windows
    /// close as partial (as on an at-least-once stop) and the new SQL starts with empty windows.
    async fn replace(&self, windows: &mut Windows, new: PlannedTransform, timer: &Timer) -> anyhow::Result<()> {
        let next = Template::of(new)?;
        let now = timer.now_us();
        if self.stream.is_some() {
            if windows.hands_over_to(&next.inputs) {
                for accepted in windows.take_over(next, now)? {
                    self.route(accepted).await?;
                }
                tracing::info!(transform = %self.out.id, "reloaded, exactly once: the open windows' rows went into the new version's windows");
                return Ok(());
            }
            tracing::warn!(transform = %self.out.id, "reloaded: an input of the open windows is gone or has new columns, so they are emitted as partial, outside exactly once");
        }
        let emissions = windows.finish().await?;
        self.send_all(emissions).await?;
        windows.restart(next, now)?;
        tracing::info!(transform = %self.out.id, "reloaded: open windows were emitted as partial; new windows run the new SQL");
        Ok(())
    }
}
