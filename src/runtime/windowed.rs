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

use tokio::sync::{mpsc, watch};
use tributary_sdk::{Batch, ComponentMetrics, DeadLetters, Delivery, Output, Position, Positions, Work};

use super::versions::{NewVersion, Versions};
use super::{one_batch, send_sharing_acks, Timer};
use crate::graph::PlannedTransform;
use crate::sql::window::{Accepted, Emission, WindowOperator};

/// Window ends are event times, which do not start again when a buffer folder is made afresh:
/// one epoch for every emission.
const EMISSION_EPOCH: u64 = 0;

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

/// `sinks_written`: one per exactly-once sink it feeds, at the first start (a window added by a
/// reload has nothing written yet).
pub(super) async fn run_windowed_transform(
    t: PlannedTransform,
    mut rx: mpsc::Receiver<Delivery>,
    out: WindowOutputs,
    sinks_written: Vec<SinkWritten>,
    mut timer: Timer,
    mut replace: mpsc::UnboundedReceiver<NewVersion<PlannedTransform>>,
) -> anyhow::Result<()> {
    let exactly_once = t.window.as_ref().is_some_and(|w| w.exactly_once);
    let stream = exactly_once.then(|| Arc::<str>::from(out.id.as_str()));
    let w = Emitter { out, stream };
    let mut op = window_operator(t, &timer)?;
    if let Some(stream) = w.stream.as_ref().filter(|_| !sinks_written.is_empty()) {
        let written = written_by_sinks(&w.out.id, stream, sinks_written).await?;
        op.resume(&written);
        let through: Vec<String> = written.iter().map(|w| w.map_or("nothing".into(), format_micros)).collect();
        tracing::info!(transform = %w.out.id, "exactly once: the sinks it feeds wrote its windows through {}; replayed rows of those windows are skipped", through.join(", "));
    }
    let mut versions = Versions::default();
    loop {
        // Held until what this delivery or tick produced is queued downstream (see `InFlight`).
        let _work;
        let emission = tokio::select! {
            biased;
            Some(new) = replace.recv() => {
                _work = Work::default();
                if let Some(new) = versions.arrive(new, &w.out.id) {
                    // What was queued goes into the old windows first.
                    for _ in 0..rx.len() {
                        let Some(delivery) = rx.recv().await else { break };
                        let (emission, _work) = w.deliver(&mut op, delivery, &timer).await?;
                        w.send(emission).await?;
                    }
                    w.replace(&mut op, new, &timer).await?;
                }
                None
            }
            delivery = rx.recv() => {
                let Some(delivery) = delivery else {
                    // The old inputs let go: new windows over the new inputs.
                    let Some((next, next_rx)) = versions.rewired() else { break };
                    w.replace(&mut op, next, &timer).await?;
                    rx = next_rx;
                    continue;
                };
                if let Some(new) = versions.due(delivery.input, &delivery.batch.data) {
                    w.replace(&mut op, new, &timer).await?;
                }
                let (emission, work) = w.deliver(&mut op, delivery, &timer).await?;
                _work = work;
                emission
            }
            work = timer.tick() => {
                _work = work;
                op.advance(timer.now_us()).await?
            }
        };
        w.send(emission).await?;
    }
    if w.stream.is_some() {
        let held = op.buffered_rows();
        // Their acks fail: the buffer keeps the rows, and the next start rebuilds the windows.
        drop(op);
        if held > 0 {
            tracing::info!(transform = %w.out.id, rows = held, "exactly once: open windows are not flushed as partial; their rows stay in the source's disk buffer and rebuild the windows at the next start");
        }
        return Ok(());
    }
    let emission = op.finish().await?;
    w.send(emission).await
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

fn format_micros(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us).map_or(us.to_string(), |t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
}

fn window_operator(t: PlannedTransform, timer: &Timer) -> anyhow::Result<WindowOperator> {
    let plan = t.window.expect("windowed");
    Ok(WindowOperator::new(plan.spec, t.sql, &plan.inputs, plan.late_schema, timer.now_us())?)
}

impl Emitter {
    /// Put one delivery into its windows; returns the windows it closed and the delivery's
    /// in-flight token.
    async fn deliver(&self, op: &mut WindowOperator, delivery: Delivery, timer: &Timer) -> anyhow::Result<(Option<Emission>, Work)> {
        let Delivery { input, batch, work } = delivery;
        let now = timer.now_us();
        self.out.metrics.rows_in.add(batch.data.num_rows() as u64);
        self.out.metrics.bytes_in.add(batch.data.get_array_memory_size() as u64);
        self.out.metrics.batches_in.inc();
        let accepted = op.accept(input, batch.data, batch.acks, now)?;
        self.route(accepted).await?;
        Ok((op.advance(now).await?, work))
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

    /// Send closed windows downstream; a failed query dead-letters the windows' rows.
    async fn send(&self, emission: Option<Emission>) -> anyhow::Result<()> {
        let Some(Emission { result, acks, through }) = emission else { return Ok(()) };
        // A partial flush (a reload whose inputs changed) has no place among the positions.
        let stream = self.stream.as_ref().filter(|_| through != i64::MAX);
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
    async fn replace(&self, op: &mut WindowOperator, new: PlannedTransform, timer: &Timer) -> anyhow::Result<()> {
        let inputs = new.window.as_ref().map(|w| w.inputs.clone()).unwrap_or_default();
        let next = window_operator(new, timer)?;
        if self.stream.is_some() {
            if op.hands_over_to(&inputs) {
                let old = std::mem::replace(op, next);
                for accepted in op.take_over(old.into_open_windows(), timer.now_us())? {
                    self.route(accepted).await?;
                }
                tracing::info!(transform = %self.out.id, "reloaded, exactly once: the open windows' rows went into the new version's windows");
                return Ok(());
            }
            tracing::warn!(transform = %self.out.id, "reloaded: an input of the open windows is gone or has new columns, so they are emitted as partial, outside exactly once");
        }
        self.send(op.finish().await?).await?;
        *op = next;
        tracing::info!(transform = %self.out.id, "reloaded: open windows were emitted as partial; new windows run the new SQL");
        Ok(())
    }
}
