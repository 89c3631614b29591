//! Running a plan: one tokio task per component, bounded channels between them, acks released by
//! sinks, and an orderly drain on shutdown.
//!
//! Shutdown order falls out of channel ownership: cancelling the token stops the sources; when a
//! source returns, its outputs (the only senders into its consumers' channels) are dropped; a
//! transform whose inputs are all closed finishes and drops its outputs; a sink whose input is
//! closed flushes and returns. So everything accepted is written before `run` returns.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::record_batch::RecordBatch;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

mod build;
mod clock;
pub mod disk_buffer;
mod interval;
mod reload;
mod sink;
mod versions;
mod window_parts;
mod windowed;
pub use clock::{Clock, ManualClock, Timer};
pub use reload::ReloadRequest;
pub(crate) use sink::Retrying;
use tributary_sdk::{AckSet, Batch, ComponentMetrics, DeadLetterStore, DeadLetters, Delivery, InFlight, Output, SourceContext, Tap};
use versions::{NewVersion, Versions};

use crate::admin::AdminState;
use crate::config::Kind;
use crate::graph::{Plan, PlannedTransform};

/// Batches buffered in front of each transform and sink.
pub const CHANNEL_CAPACITY: usize = 16;

/// Options for a run.
#[derive(Clone)]
pub struct RunOptions {
    /// How long the drain may take after shutdown starts before tasks are aborted.
    pub drain_timeout: Duration,
    /// What windowed transforms' idle timeouts follow: the wall clock, or a manual one.
    pub clock: Clock,
    /// Count deliveries in flight here, so the caller can wait until all it fed was handled.
    pub in_flight: Option<Arc<InFlight>>,
    /// The taps of the outputs (by `inputs:` name), when the caller observes them from the start;
    /// otherwise the run makes one per output for `tributary tap`.
    pub taps: Option<HashMap<String, Arc<Tap>>>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions { drain_timeout: Duration::from_secs(30), clock: Clock::Wall, in_flight: None, taps: None }
    }
}

/// What happened, per component.
#[derive(Debug, Default)]
pub struct RunReport {
    /// Components that failed, with the error.
    pub failures: Vec<(String, String)>,
    /// One line per component: rows in/out, errors, dead letters.
    pub summary: Vec<String>,
    /// The drain did not finish in time.
    pub timed_out: bool,
}

impl RunReport {
    pub fn ok(&self) -> bool {
        self.failures.is_empty() && !self.timed_out
    }
}

/// An output by its `inputs:` name: `probes`, `webex.utilization`, `t.late`.
fn output_name(producer: &str, output: &str) -> String {
    if output.is_empty() {
        producer.to_string()
    } else {
        format!("{producer}.{output}")
    }
}

/// `out`, counting its work in flight and shown to its tap, where the run has them.
fn observed(mut out: Output, in_flight: Option<&Arc<InFlight>>, tap: Option<Arc<Tap>>) -> Output {
    if let Some(in_flight) = in_flight {
        out = out.with_in_flight(in_flight.clone());
    }
    match tap {
        Some(tap) => out.with_tap(tap),
        None => out,
    }
}

/// A component's dead letters: to the consumers of `<id>.dead_letter` (`output`), or, unwired, to
/// the default store `<dead_letters.path>/<id>.jsonl`.
fn dead_letters_in(dir: &std::path::Path, id: &str, output: Output, metrics: Arc<ComponentMetrics>) -> DeadLetters {
    let store = Arc::new(DeadLetterStore::new(dir.join(format!("{id}.jsonl"))));
    DeadLetters::new(id, output, metrics).with_store(store)
}

/// A windowed transform's timer, so idle inputs still close windows: a quarter of its idle
/// timeout, between 10 ms and 1 s.
fn window_timer(clock: &Clock, window: &crate::graph::WindowPlan) -> Timer {
    clock.timer(Duration::from_micros((window.spec.idle_timeout / 4).clamp(10_000, 1_000_000) as u64))
}

/// Run `plan` until `shutdown` is cancelled (or every source finishes), then drain.
pub async fn run(plan: Plan, admin: Option<Arc<AdminState>>, shutdown: CancellationToken, opts: RunOptions) -> RunReport {
    run_reloadable(plan, admin, shutdown, opts, None).await
}

/// [`run`], taking new versions of the pipeline from `reloads` while it runs (see `reload.rs`).
/// The start is the first of them: the plan applied to a pipeline with no component.
pub async fn run_reloadable(
    plan: Plan,
    admin: Option<Arc<AdminState>>,
    shutdown: CancellationToken,
    opts: RunOptions,
    reloads: Option<mpsc::Receiver<ReloadRequest>>,
) -> RunReport {
    let (supervisor, started_tasks) = mpsc::unbounded_channel();
    let context = build::RunContext {
        dead_letter_dir: plan.dead_letter_dir.clone(),
        shutdown: shutdown.clone(),
        clock: opts.clock,
        in_flight: opts.in_flight,
        taps: opts.taps.unwrap_or_default(),
        ownership: Default::default(),
    };
    let mut topology = reload::Topology::empty(build::Builder::new(context, supervisor));
    let started = topology.started.clone();
    let mut report = RunReport::default();
    // Tables load before anything starts, so the first rows are already enriched.
    if let Err((table, reason)) = crate::tables::start(&plan.tables, &shutdown).await {
        tracing::error!("failed to start: {reason}");
        report.failures.push((table, reason));
        return report;
    }
    if let Some(admin) = &admin {
        admin.set_tables(&plan.tables);
    }
    if let Err(refused) = topology.apply(plan, admin.as_deref()) {
        tracing::error!("failed to start: {refused}");
        report.failures.push((refused.component.unwrap_or_else(|| "pipeline".into()), refused.reason));
        shutdown.cancel();
    }
    if let Some(reloads) = reloads {
        // Ends when the sender goes (the CLI stops watching) or the pipeline stops.
        let (admin, stop) = (admin.clone(), shutdown.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = topology.serve(reloads, admin.as_deref()) => {}
                _ = stop.cancelled() => {}
            }
        });
    } else {
        drop(topology);
    }

    supervise(started_tasks, &started, &mut report, admin.as_deref(), &shutdown, opts.drain_timeout).await;
    if let Some(a) = &admin {
        a.set_stopping();
    }
    let started = std::mem::take(&mut *started.lock().unwrap_or_else(|e| e.into_inner()));
    report.summary = started.iter().map(|(d, m)| summary_line(d, m)).collect();
    report
}

type ComponentTasks = JoinSet<(String, anyhow::Result<()>)>;

/// What a source runs with; kept by its task so a reload can start a new version of the source on
/// the same outputs.
struct SourceRun {
    id: String,
    outputs: HashMap<String, Output>,
    dead: DeadLetters,
    shutdown: CancellationToken,
    metrics: Arc<ComponentMetrics>,
    sink_positions: tributary_sdk::SinkPositions,
    ownership: tributary_sdk::Ownership,
}

impl SourceRun {
    async fn run(
        self,
        mut source: Box<dyn tributary_sdk::Source>,
        mut replace: mpsc::UnboundedReceiver<Option<Box<dyn tributary_sdk::Source>>>,
    ) -> anyhow::Result<()> {
        loop {
            let stop = self.shutdown.child_token();
            let ctx = SourceContext::new(self.id.clone(), self.outputs.clone(), self.dead.clone(), stop.clone(), self.metrics.clone())
                .with_sink_positions(self.sink_positions.clone())
                .with_ownership(self.ownership.clone());
            let mut running = source.run(ctx);
            tokio::select! {
                result = &mut running => return result,
                _ = self.shutdown.cancelled() => {
                    // Only the running source may hold the outputs now, so that downstream sees
                    // them close when it returns (and flushes).
                    drop(self);
                    return running.await;
                }
                Some(new) = replace.recv() => {
                    // The old version stops as on a shutdown (sends what it has, waits for its
                    // acks); the outputs stay open for the new one, if any.
                    stop.cancel();
                    let Some(new) = new else {
                        tracing::info!(source = %self.id, "reloaded: removed from the pipeline");
                        drop(self);
                        return running.await;
                    };
                    running.await?;
                    source = new;
                    tracing::info!(source = %self.id, "reloaded: restarted with the new config");
                }
            }
        }
    }
}

/// Wait for every component to finish: a failed one stops the pipeline cleanly (one missing
/// component cannot deliver what the pipeline promises); once a stop begins, the drain gets
/// `drain_timeout` before what is left is aborted.
async fn supervise(
    mut started_tasks: mpsc::UnboundedReceiver<build::StartedTask>,
    started: &reload::Started,
    report: &mut RunReport,
    admin: Option<&AdminState>,
    shutdown: &CancellationToken,
    drain_timeout: Duration,
) {
    let mut tasks = ComponentTasks::new();
    // The start's tasks are all queued by now; a reload's arrive while the run goes on.
    while let Ok(build::StartedTask { id, task }) = started_tasks.try_recv() {
        tasks.spawn(async move { (id, task.await) });
    }
    let deadline = async {
        shutdown.cancelled().await;
        if let Some(a) = admin {
            a.set_stopping();
        }
        tracing::info!("shutting down: sources stopped, draining transforms and sinks");
        tokio::time::sleep(drain_timeout).await;
    };
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            // A component a reload added runs under the same supervision.
            Some(build::StartedTask { id, task }) = started_tasks.recv() => {
                tasks.spawn(async move { (id, task.await) });
            }
            joined = tasks.join_next() => match joined {
                None => return,
                Some(Ok((id, Ok(())))) => tracing::debug!(component = %id, "finished"),
                Some(Ok((id, Err(e)))) => {
                    let metrics = started.lock().unwrap_or_else(|e| e.into_inner()).iter().rev().find(|(d, _)| d.id == id).map(|(_, m)| m.clone());
                    match metrics {
                        Some(m) => tributary_sdk::report_error!(m, error, component = %id, "failed: {e:#}"),
                        None => tracing::error!(component = %id, "failed: {e:#}"),
                    }
                    report.failures.push((id, format!("{e:#}")));
                    shutdown.cancel();
                }
                Some(Err(join_err)) => {
                    tracing::error!("a component task panicked: {join_err}");
                    report.failures.push(("<task>".into(), join_err.to_string()));
                    shutdown.cancel();
                }
            },
            _ = &mut deadline => {
                tracing::error!(timeout = ?drain_timeout, remaining = tasks.len(), "drain timed out; aborting the remaining components");
                report.timed_out = true;
                tasks.abort_all();
                while tasks.join_next().await.is_some() {}
                return;
            }
        }
    }
}

/// One component's line of the run summary: rows in/out, errors, dead letters.
fn summary_line(d: &crate::config::ComponentDecl, m: &ComponentMetrics) -> String {
    let flow = match d.kind {
        Kind::Source => format!("{} rows out", m.rows_out.get()),
        Kind::Transform => format!("{} rows in, {} rows out", m.rows_in.get(), m.rows_out.get()),
        Kind::Sink => format!("{} rows in, {} written", m.rows_in.get(), m.rows_written.get()),
    };
    format!("{} ({} {}): {flow}, {} errors, {} dead letters", d.id, d.type_name, d.kind.label(), m.errors.get(), m.dead_letters.get())
}

async fn run_transform(
    mut t: PlannedTransform,
    mut rx: mpsc::Receiver<Delivery>,
    output: Output,
    dead: DeadLetters,
    metrics: Arc<ComponentMetrics>,
    mut replace: mpsc::UnboundedReceiver<NewVersion<PlannedTransform>>,
) -> anyhow::Result<()> {
    let mut versions = Versions::default();
    loop {
        tokio::select! {
            biased;
            Some(mut new) = replace.recv() => {
                // What was queued before the reload was accepted under the old SQL: it gets it.
                let queued = rx.len();
                if let Some(taken) = new.taken.take() {
                    let _ = taken.send(());
                }
                let Some(new) = versions.arrive(new, &t.id) else { continue };
                for _ in 0..queued {
                    let Some(delivery) = rx.recv().await else { break };
                    transform_delivery(&t, delivery, &output, &dead, &metrics).await?;
                }
                t = new;
                tracing::info!(transform = %t.id, "reloaded: rows from here on run the new SQL");
            }
            delivery = rx.recv() => {
                let Some(delivery) = delivery else {
                    // The old inputs let go: the new version reads its new inputs.
                    let Some((next, next_rx)) = versions.rewired() else { break };
                    (t, rx) = (next, next_rx);
                    tracing::info!(transform = %t.id, "reloaded: reading its new inputs with the new SQL");
                    continue;
                };
                if let Some(new) = versions.due(delivery.input, &delivery.batch.data) {
                    t = new;
                    tracing::info!(transform = %t.id, "reloaded: the new columns arrived; rows from here on run the new SQL");
                }
                transform_delivery(&t, delivery, &output, &dead, &metrics).await?;
            }
        }
    }
    Ok(())
}

async fn transform_delivery(
    t: &PlannedTransform,
    delivery: Delivery,
    output: &Output,
    dead: &DeadLetters,
    metrics: &ComponentMetrics,
) -> anyhow::Result<()> {
    // `_work` lives until the batch's results are queued downstream (see `InFlight`).
    let Delivery { input, batch, work: _work } = delivery;
    metrics.rows_in.add(batch.data.num_rows() as u64);
    metrics.bytes_in.add(batch.data.get_array_memory_size() as u64);
    metrics.batches_in.inc();
    match t.sql.execute(input, batch.data.clone()).await {
        // Filtered out entirely: nothing left to deliver, the acks are released.
        Ok(out) => match batch.position {
            None => send_sharing_acks(output, out, batch.acks).await?,
            // One batch out per batch in, carrying its position: a sink that stored the position
            // with the first of several would drop the rest as written when they are replayed.
            Some(position) => match one_batch(t.sql.output_schema(), out) {
                Ok(None) => batch.acks.release(),
                Ok(Some(rows)) => output.send(Batch::with_acks(rows, batch.acks).at(Some(position))).await?,
                Err(e) => {
                    let reason = format!("the results of transform `{}` could not be joined into one batch: {e}", t.id);
                    tributary_sdk::report_error!(metrics, warn, transform = %t.id, "{reason}");
                    dead.send_rows(&batch.data, &reason, batch.acks).await?;
                }
            },
        },
        Err(e) => {
            let reason = crate::sql::failure_reason(&t.inputs[input].name, &e);
            tributary_sdk::report_error!(metrics, warn, transform = %t.id, "{reason}");
            dead.send_rows(&batch.data, &reason, batch.acks).await?;
        }
    }
    Ok(())
}

/// Send `batches`, the last one carrying `acks` and the others a share; nothing to send → done.
/// A query's result batches as one (no copy for one batch); `None` when it has no rows.
fn one_batch(
    schema: datafusion::arrow::datatypes::SchemaRef,
    mut batches: Vec<RecordBatch>,
) -> Result<Option<RecordBatch>, datafusion::arrow::error::ArrowError> {
    batches.retain(|b| b.num_rows() > 0);
    match batches.len() {
        0 => Ok(None),
        1 => Ok(batches.pop()),
        _ => datafusion::arrow::compute::concat_batches(&schema, &batches).map(Some),
    }
}

async fn send_sharing_acks(output: &Output, batches: Vec<RecordBatch>, acks: AckSet) -> Result<(), tributary_sdk::Closed> {
    let n = batches.len();
    if n == 0 {
        acks.release();
        return Ok(());
    }
    let mut acks = Some(acks);
    for (i, b) in batches.into_iter().enumerate() {
        let a = if i + 1 == n { acks.take().unwrap_or_default() } else { acks.clone().unwrap_or_default() };
        output.send(Batch::with_acks(b, a)).await?;
    }
    Ok(())
}
