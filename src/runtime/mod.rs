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
use tributary_sdk::output::OutputSpec;

mod clock;
pub mod disk_buffer;
mod reload;
mod sink;
mod versions;
mod windowed;
pub use clock::{Clock, ManualClock, Timer};
pub use reload::ReloadRequest;
pub(crate) use sink::Retrying;
use tributary_sdk::{
    AckSet, Batch, ComponentMetrics, DeadLetterStore, DeadLetters, Delivery, InFlight, Output, SinkContext, SourceContext, Tap,
    DEAD_LETTER_OUTPUT,
};
use versions::{NewVersion, SinkVersion, Versions};

use crate::admin::{AdminState, ComponentInfo};
use crate::config::Kind;
use crate::graph::{InputRef, Plan, PlannedTransform, SourceBuffer, LATE_OUTPUT};

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

struct Wiring {
    /// Channel senders per consumer, taken when outputs are built.
    senders: HashMap<String, mpsc::Sender<Delivery>>,
    receivers: HashMap<String, mpsc::Receiver<Delivery>>,
    /// (consumer id, its inputs)
    consumers: Vec<(String, Vec<InputRef>)>,
    metrics: HashMap<String, Arc<ComponentMetrics>>,
    /// Per output (`probes`, `webex.utilization`, `t.late`): observers for `tributary tap`.
    taps: HashMap<String, Arc<Tap>>,
    dead_letter_dir: std::path::PathBuf,
    in_flight: Option<Arc<InFlight>>,
    /// Every output made, for rewiring on reload.
    routes: std::cell::RefCell<Vec<((String, String), tributary_sdk::Routes)>>,
}

impl Wiring {
    fn output(&self, producer: &str, output: &str) -> Output {
        self.output_counted(producer, output, output != DEAD_LETTER_OUTPUT)
    }

    /// `counts_as_rows_out: false` for the forwarder of a disk buffer: the source's own output
    /// counted the rows when it stored them.
    fn output_counted(&self, producer: &str, output: &str, counts_as_rows_out: bool) -> Output {
        let mut targets = Vec::new();
        for (consumer, inputs) in &self.consumers {
            for (i, r) in inputs.iter().enumerate() {
                if r.component == producer && r.output == output {
                    targets.push((self.senders[consumer].clone(), i));
                }
            }
        }
        let out = Output::new(targets, self.metrics[producer].clone(), counts_as_rows_out);
        self.routes.borrow_mut().push(((producer.to_string(), output.to_string()), out.routes()));
        observed(out, self.in_flight.as_ref(), self.taps.get(&output_name(producer, output)).cloned())
    }

    fn dead_letters(&self, producer: &str) -> DeadLetters {
        dead_letters_in(&self.dead_letter_dir, producer, self.output(producer, DEAD_LETTER_OUTPUT), self.metrics[producer].clone())
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
pub async fn run_reloadable(
    plan: Plan,
    admin: Option<Arc<AdminState>>,
    shutdown: CancellationToken,
    opts: RunOptions,
    reloads: Option<mpsc::Receiver<ReloadRequest>>,
) -> RunReport {
    let Plan { sources, transforms, sinks, decls, outputs, dead_letter_dir } = plan;
    let mut replacers = reload::Replacers::new(&decls, &outputs, &transforms);
    let taps = match opts.taps {
        Some(taps) => taps,
        None => outputs.keys().map(|name| (name.clone(), Arc::new(Tap::default()))).collect(),
    };
    let mut wiring = Wiring {
        senders: HashMap::new(),
        receivers: HashMap::new(),
        consumers: Vec::new(),
        metrics: HashMap::new(),
        taps,
        dead_letter_dir,
        in_flight: opts.in_flight,
        routes: Default::default(),
    };
    for d in &decls {
        wiring.metrics.insert(d.id.clone(), Arc::new(ComponentMetrics::default()));
    }
    for (id, inputs) in transforms.iter().map(|t| (&t.id, &t.inputs)).chain(sinks.iter().map(|s| (&s.id, &s.inputs))) {
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        wiring.senders.insert(id.clone(), tx);
        wiring.receivers.insert(id.clone(), rx);
        wiring.consumers.push((id.clone(), inputs.clone()));
    }
    if let Some(admin) = &admin {
        let infos = decls
            .iter()
            .map(|d| ComponentInfo {
                id: d.id.clone(),
                kind: d.kind,
                type_name: d.type_name.clone(),
                metrics: wiring.metrics[&d.id].clone(),
                input: wiring.senders.get(&d.id).map(|s| s.downgrade()),
                disk_buffer: sources.iter().any(|s| s.id == d.id && matches!(s.buffer, SourceBuffer::Disk(_))),
            })
            .collect();
        admin.set_components(infos);
        admin.set_taps(
            outputs.iter().filter_map(|(name, schema)| Some((name.clone(), (schema.clone(), wiring.taps.get(name)?.clone())))).collect(),
        );
    }

    // Exactly-once sinks tell the windowed transforms they read where they stopped.
    let mut sinks_written: HashMap<String, Vec<windowed::SinkWritten>> = HashMap::new();
    let mut publish_written: HashMap<String, tokio::sync::watch::Sender<Option<tributary_sdk::Positions>>> = HashMap::new();
    for s in &sinks {
        for stream in s.exactly_once.iter().flat_map(|e| e.streams.iter()) {
            if transforms.iter().any(|t| t.id == **stream && t.window.as_ref().is_some_and(|w| w.exactly_once)) {
                let tx = publish_written.entry(s.id.clone()).or_insert_with(|| tokio::sync::watch::channel(None).0);
                sinks_written.entry(stream.to_string()).or_default().push(tx.subscribe());
            }
        }
    }
    // Sources with positions of their own ask the exactly-once sinks they reach where to start:
    // one query channel per sink, shared by every such source that reaches it.
    let mut position_queries: HashMap<String, mpsc::UnboundedReceiver<tributary_sdk::PositionQuery>> = HashMap::new();
    let mut sink_positions: HashMap<String, Vec<mpsc::UnboundedSender<tributary_sdk::PositionQuery>>> = HashMap::new();
    for s in &sinks {
        let asking: Vec<&str> = s
            .exactly_once
            .iter()
            .flat_map(|e| e.streams.iter())
            .filter(|stream| sources.iter().any(|src| src.id == ***stream && src.source.replay() == tributary_sdk::Replay::WithPositions))
            .map(|stream| &**stream)
            .collect();
        if asking.is_empty() {
            continue;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        position_queries.insert(s.id.clone(), rx);
        for stream in asking {
            sink_positions.entry(stream.to_string()).or_default().push(tx.clone());
        }
    }
    let mut tasks = ComponentTasks::new();
    for s in sinks {
        let rx = wiring.receivers.remove(&s.id).expect("channel");
        let ctx = SinkContext { id: s.id.clone(), metrics: wiring.metrics[&s.id].clone() };
        let dead = wiring.dead_letters(&s.id);
        let id = s.id.clone();
        let replace = replacers.sink(&s.id);
        let first = SinkVersion { sink: s.sink, retry: s.retry, exactly_once: s.exactly_once };
        let (publish, queries) = (publish_written.remove(&s.id), position_queries.remove(&s.id));
        tasks.spawn(async move { (id, sink::run_sink(first, rx, ctx, dead, replace, publish, queries).await) });
    }
    for t in transforms {
        let rx = wiring.receivers.remove(&t.id).expect("channel");
        let output = wiring.output(&t.id, "");
        let dead = wiring.dead_letters(&t.id);
        let metrics = wiring.metrics[&t.id].clone();
        let id = t.id.clone();
        let replace = replacers.transform(&t.id);
        if let Some(window) = &t.window {
            let late = wiring.output(&t.id, LATE_OUTPUT);
            // Made here, not in the task, so a manual clock's first advance already reaches it.
            let timer = window_timer(&opts.clock, window);
            let sinks_written = sinks_written.remove(&t.id).unwrap_or_default();
            let out = windowed::WindowOutputs { id: id.clone(), output, late, dead, metrics };
            tasks.spawn(async move { (id, windowed::run_windowed_transform(t, rx, out, sinks_written, timer, replace).await) });
        } else {
            tasks.spawn(async move { (id, run_transform(t, rx, output, dead, metrics, replace).await) });
        }
    }
    let mut report = RunReport::default();
    for s in sources {
        let outputs: HashMap<String, Output> = match &s.buffer {
            SourceBuffer::Memory => s.outputs.iter().map(|o: &OutputSpec| (o.name.clone(), wiring.output(&s.id, &o.name))).collect(),
            SourceBuffer::Disk(cfg) => match disk_buffer::open(&s.id, cfg, &s.outputs, wiring.metrics[&s.id].clone()) {
                Ok(opened) => {
                    let downstream = s.outputs.iter().map(|o| (wiring.output_counted(&s.id, &o.name, false), o.schema.clone())).collect();
                    let (id, dead) = (s.id.clone(), wiring.dead_letters(&s.id));
                    tasks.spawn(async move { (id, opened.forwarder.run(downstream, dead).await) });
                    s.outputs
                        .iter()
                        .map(|o| (o.name.clone(), Output::buffered(opened.queue.clone(), &o.name, wiring.metrics[&s.id].clone())))
                        .collect()
                }
                Err(e) => {
                    tracing::error!(component = %s.id, "failed: {e:#}");
                    report.failures.push((s.id.clone(), format!("{e:#}")));
                    shutdown.cancel();
                    continue;
                }
            },
        };
        let run = SourceRun {
            id: s.id.clone(),
            outputs,
            dead: wiring.dead_letters(&s.id),
            shutdown: shutdown.clone(),
            metrics: wiring.metrics[&s.id].clone(),
            sink_positions: tributary_sdk::SinkPositions::new(sink_positions.remove(&s.id).unwrap_or_default()),
        };
        let (id, source, replace) = (s.id.clone(), s.source, replacers.source(&s.id));
        tasks.spawn(async move { (id, run.run(source, replace).await) });
    }
    // Only outputs hold senders now, so channels close as their producers finish.
    let metrics = std::mem::take(&mut wiring.metrics);
    let (spawner, added) = mpsc::unbounded_channel();
    let added_by_reloads = replacers.added.clone();
    replacers.wired(
        wiring.routes.take(),
        &wiring.senders,
        spawner,
        wiring.dead_letter_dir.clone(),
        shutdown.clone(),
        opts.clock.clone(),
        wiring.in_flight.clone(),
    );
    drop(wiring);
    if let Some(reloads) = reloads {
        // Ends when the sender goes (the CLI stops watching) or the pipeline stops.
        let (admin, stop) = (admin.clone(), shutdown.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = replacers.serve(reloads, admin.as_deref()) => {}
                _ = stop.cancelled() => {}
            }
        });
    } else {
        drop(replacers);
    }

    supervise(&mut tasks, added, &metrics, &mut report, admin.as_deref(), &shutdown, opts.drain_timeout).await;
    if let Some(a) = &admin {
        a.set_stopping();
    }
    report.summary = decls.iter().map(|d| summary_line(d, &metrics[&d.id])).collect();
    let added = std::mem::take(&mut *added_by_reloads.lock().unwrap_or_else(|e| e.into_inner()));
    report.summary.extend(added.iter().map(|(d, m)| summary_line(d, m)));
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
                .with_sink_positions(self.sink_positions.clone());
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
    tasks: &mut ComponentTasks,
    mut added: mpsc::UnboundedReceiver<reload::AddedTask>,
    metrics: &HashMap<String, Arc<ComponentMetrics>>,
    report: &mut RunReport,
    admin: Option<&AdminState>,
    shutdown: &CancellationToken,
    drain_timeout: Duration,
) {
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
            Some(reload::AddedTask { id, task }) = added.recv() => {
                tasks.spawn(async move { (id, task.await) });
            }
            joined = tasks.join_next() => match joined {
                None => return,
                Some(Ok((id, Ok(())))) => tracing::debug!(component = %id, "finished"),
                Some(Ok((id, Err(e)))) => {
                    match metrics.get(&id) {
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
            Some(new) = replace.recv() => {
                let Some(new) = versions.arrive(new, &t.id) else { continue };
                // What was queued before the reload was accepted under the old SQL: it gets it.
                for _ in 0..rx.len() {
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
