//! The one way a component starts, at `run` and on a reload alike (a start is a reload from an
//! empty pipeline, see `reload.rs`): its outputs and dead letters made and routable, the slot
//! through which a reload hands it new versions, and its task given to the run's supervisor.
//!
//! Outputs are made with no targets: [`Builder::reroute`] points every output at its consumers once
//! all the components a plan adds exist, and only then do the added sources (and the forwarders of
//! their disk buffers) start, so no row is sent before its consumers are wired.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tributary_sdk::{
    ComponentMetrics, DeadLetters, Delivery, InFlight, Output, PositionQuery, Positions, Routes, SinkContext, Source, Tap,
    DEAD_LETTER_OUTPUT,
};

use super::versions::{NewSink, NewVersion, SinkVersion};
use super::{disk_buffer, interval, windowed, Clock};
use crate::admin::{AdminState, ComponentInfo};
use crate::config::Kind;
use crate::graph::{InputRef, PlannedSink, PlannedSource, PlannedTransform, SourceBuffer, LATE_OUTPUT};

/// A component's task, as the supervisor runs it.
pub(crate) type ComponentTask = Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send>>;

/// A component's task, for the run's supervisor.
pub(crate) struct StartedTask {
    pub id: String,
    pub task: ComponentTask,
}

/// What every component of a run starts with, whichever plan added it.
pub(crate) struct RunContext {
    pub dead_letter_dir: std::path::PathBuf,
    /// Stops the sources; the rest drains behind them.
    pub shutdown: CancellationToken,
    /// What windowed transforms' idle timeouts follow.
    pub clock: Clock,
    /// Set when the caller counts work in flight (`tributary test`).
    pub in_flight: Option<Arc<InFlight>>,
    /// The taps the caller observes, by output name (`tributary test`); otherwise the admin API
    /// gets one per output for `tributary tap`.
    pub taps: HashMap<String, Arc<Tap>>,
    /// Where sources say which streams this process stopped owning (a Kafka rebalance), for the
    /// windows kept per partition of a repartitioned stream.
    pub ownership: tributary_sdk::Ownership,
}

/// Makes the components' outputs and tasks, and keeps what a reload needs to reach them.
pub(crate) struct Builder {
    context: RunContext,
    /// Every output's routes, by (producer, output name).
    routes: Vec<((String, String), Routes)>,
    /// Each consumer's current channel (weak: the producers' routes hold it).
    channels: HashMap<String, mpsc::WeakSender<Delivery>>,
    /// Per component: where its new versions go (`None` stops a removed source).
    pub sources: HashMap<String, mpsc::UnboundedSender<Option<Box<dyn Source>>>>,
    pub transforms: HashMap<String, mpsc::UnboundedSender<NewVersion<PlannedTransform>>>,
    pub sinks: HashMap<String, mpsc::UnboundedSender<NewSink>>,
    supervisor: mpsc::UnboundedSender<StartedTask>,
}

/// A source made but not running: it starts once every output is routed.
pub(crate) struct PreparedSource {
    pub info: ComponentInfo,
    /// The source's task, and its disk buffer's forwarder if it has one.
    tasks: Vec<StartedTask>,
}

/// A source's disk buffer, opened before anything of a plan starts: the one step of a start that
/// can fail on the machine (a folder it cannot create, a buffer another process holds).
pub(crate) struct OpenedSource {
    source: PlannedSource,
    buffer: Option<disk_buffer::OpenedBuffer>,
    metrics: Arc<ComponentMetrics>,
}

/// Open `s`'s disk buffer, if it has one.
pub(crate) fn open_source(s: PlannedSource) -> Result<OpenedSource, (String, String)> {
    let metrics = Arc::new(ComponentMetrics::default());
    let buffer = match &s.buffer {
        SourceBuffer::Memory => None,
        SourceBuffer::Disk(cfg) => {
            Some(disk_buffer::open(&s.id, cfg, &s.outputs, metrics.clone()).map_err(|e| (s.id.clone(), format!("{e:#}")))?)
        }
    };
    Ok(OpenedSource { source: s, buffer, metrics })
}

/// How the exactly-once components a plan adds find each other: the windowed transforms wait for
/// the positions their sinks had written, and sources with positions of their own ask the sinks
/// they reach where to start (one query channel per sink, shared by every such source).
#[derive(Default)]
pub(crate) struct ExactlyOnceLinks {
    /// Per sink: where it publishes what it had written when it started.
    publish_written: HashMap<String, watch::Sender<Option<Positions>>>,
    /// Per windowed transform: the sinks' published positions.
    sinks_written: HashMap<String, Vec<windowed::SinkWritten>>,
    /// Per sink: the queries it answers.
    position_queries: HashMap<String, mpsc::UnboundedReceiver<PositionQuery>>,
    /// Per source: the sinks it asks.
    sink_positions: HashMap<String, Vec<mpsc::UnboundedSender<PositionQuery>>>,
}

impl ExactlyOnceLinks {
    pub fn new(sinks: &[PlannedSink], transforms: &[PlannedTransform], sources: &[OpenedSource]) -> ExactlyOnceLinks {
        let mut links = ExactlyOnceLinks::default();
        for s in sinks {
            let streams: Vec<&str> = s.exactly_once.iter().flat_map(|e| e.streams.iter()).map(|s| &**s).collect();
            for stream in &streams {
                if transforms.iter().any(|t| t.id == *stream && t.window.as_ref().is_some_and(|w| w.exactly_once)) {
                    let tx = links.publish_written.entry(s.id.clone()).or_insert_with(|| watch::channel(None).0);
                    links.sinks_written.entry(stream.to_string()).or_default().push(tx.subscribe());
                }
            }
            // Sources with positions of their own, and windows kept per partition (they ask when a
            // partition reaches them).
            let asking: Vec<&str> = streams
                .into_iter()
                .filter(|stream| {
                    sources.iter().any(|o| o.source.id == *stream && o.source.source.replay() == tributary_sdk::Replay::WithPositions)
                        || transforms
                            .iter()
                            .any(|t| t.id == *stream && t.window.as_ref().is_some_and(|w| w.exactly_once && w.repartitioned.is_some()))
                })
                .collect();
            if asking.is_empty() {
                continue;
            }
            let (tx, rx) = mpsc::unbounded_channel();
            links.position_queries.insert(s.id.clone(), rx);
            for stream in asking {
                links.sink_positions.entry(stream.to_string()).or_default().push(tx.clone());
            }
        }
        links
    }
}

impl Builder {
    pub fn new(context: RunContext, supervisor: mpsc::UnboundedSender<StartedTask>) -> Builder {
        Builder {
            context,
            routes: Vec::new(),
            channels: HashMap::new(),
            sources: HashMap::new(),
            transforms: HashMap::new(),
            sinks: HashMap::new(),
            supervisor,
        }
    }

    /// Consumers read `channels` from now on; [`Builder::reroute`] points their producers there.
    pub fn use_channels(&mut self, channels: &HashMap<String, mpsc::Sender<Delivery>>) {
        self.channels.extend(channels.iter().map(|(id, tx)| (id.clone(), tx.downgrade())));
    }

    pub fn forget_channel(&mut self, id: &str) {
        self.channels.remove(id);
    }

    /// Point every output at the consumers that read it now (`wiring`: each consumer's inputs).
    pub fn reroute(&mut self, wiring: &[(String, Vec<InputRef>)]) {
        // Outputs whose producer finished are gone for good.
        self.routes.retain(|((producer, output), routes)| {
            let mut targets = Vec::new();
            for (consumer, inputs) in wiring {
                for (i, r) in inputs.iter().enumerate() {
                    if &r.component == producer && &r.output == output {
                        if let Some(tx) = self.channels.get(consumer).and_then(mpsc::WeakSender::upgrade) {
                            targets.push((tx, i));
                        }
                    }
                }
            }
            routes.set(targets)
        });
    }

    /// An output, routed nowhere until the next [`Builder::reroute`]; tappable.
    fn output(
        &mut self,
        producer: &str,
        output: &str,
        metrics: &Arc<ComponentMetrics>,
        counts_as_rows_out: bool,
        schemas: &Schemas,
    ) -> Output {
        let out = Output::new(Vec::new(), metrics.clone(), counts_as_rows_out);
        self.routes.push(((producer.to_string(), output.to_string()), out.routes()));
        let name = super::output_name(producer, output);
        let tap = match (self.context.taps.get(&name), schemas.admin, schemas.outputs.get(&name)) {
            (Some(tap), Some(admin), Some(schema)) => {
                admin.add_tap(name, schema.clone(), tap.clone());
                Some(tap.clone())
            }
            (Some(tap), _, _) => Some(tap.clone()),
            (None, Some(admin), Some(schema)) => {
                let tap = Arc::new(Tap::default());
                admin.add_tap(name, schema.clone(), tap.clone());
                Some(tap)
            }
            (None, _, _) => None,
        };
        super::observed(out, self.context.in_flight.as_ref(), tap)
    }

    fn dead_letters(&mut self, id: &str, metrics: &Arc<ComponentMetrics>, schemas: &Schemas) -> DeadLetters {
        let output = self.output(id, DEAD_LETTER_OUTPUT, metrics, false, schemas);
        super::dead_letters_in(&self.context.dead_letter_dir, id, output, metrics.clone())
    }

    fn spawn(&self, id: &str, task: ComponentTask) -> Result<(), String> {
        self.supervisor.send(StartedTask { id: id.to_string(), task }).map_err(|_| "the pipeline is stopping".to_string())
    }

    /// Start sink `s`, reading `rx`.
    pub fn start_sink(
        &mut self,
        s: PlannedSink,
        rx: mpsc::Receiver<Delivery>,
        links: &mut ExactlyOnceLinks,
        schemas: &Schemas,
    ) -> Result<ComponentInfo, String> {
        let metrics = Arc::new(ComponentMetrics::default());
        for warning in s.sink.warnings() {
            tracing::warn!(sink = %s.id, "{warning}");
        }
        let dead = self.dead_letters(&s.id, &metrics, schemas);
        let ctx = SinkContext { id: s.id.clone(), metrics: metrics.clone() };
        let (tx, replace) = mpsc::unbounded_channel();
        self.sinks.insert(s.id.clone(), tx);
        let version = SinkVersion { sink: s.sink, retry: s.retry, exactly_once: s.exactly_once };
        let (publish, queries) = (links.publish_written.remove(&s.id), links.position_queries.remove(&s.id));
        self.spawn(&s.id, Box::pin(super::sink::run_sink(version, rx, ctx, dead, replace, publish, queries)))?;
        let input = self.channels.get(&s.id).cloned();
        Ok(ComponentInfo { id: s.id, kind: Kind::Sink, type_name: s.type_name, metrics, input, disk_buffer: false })
    }

    /// Start transform `t`, reading `rx`.
    pub fn start_transform(
        &mut self,
        t: PlannedTransform,
        type_name: &str,
        rx: mpsc::Receiver<Delivery>,
        links: &mut ExactlyOnceLinks,
        schemas: &Schemas,
    ) -> Result<ComponentInfo, String> {
        let metrics = Arc::new(ComponentMetrics::default());
        let output = self.output(&t.id, "", &metrics, true, schemas);
        let dead = self.dead_letters(&t.id, &metrics, schemas);
        let (tx, replace) = mpsc::unbounded_channel();
        self.transforms.insert(t.id.clone(), tx);
        let id = t.id.clone();
        let task: ComponentTask = match &t.window {
            None if t.interval.is_some() => {
                let late = self.output(&t.id, LATE_OUTPUT, &metrics, true, schemas);
                let out = windowed::WindowOutputs { id: id.clone(), output, late, dead, metrics: metrics.clone() };
                Box::pin(interval::run_interval_join(t, rx, out, replace))
            }
            Some(window) => {
                let late = self.output(&t.id, LATE_OUTPUT, &metrics, true, schemas);
                // Made here, not in the task, so a manual clock's first advance already reaches it.
                let timer = super::window_timer(&self.context.clock, window);
                let resume = windowed::Resume {
                    at_start: links.sinks_written.remove(&id).unwrap_or_default(),
                    ask: tributary_sdk::SinkPositions::new(links.sink_positions.remove(&id).unwrap_or_default()),
                    owned: self.context.ownership.listen(),
                };
                let out = windowed::WindowOutputs { id: id.clone(), output, late, dead, metrics: metrics.clone() };
                Box::pin(windowed::run_windowed_transform(t, rx, out, resume, timer, replace))
            }
            None => Box::pin(super::run_transform(t, rx, output, dead, metrics.clone(), replace)),
        };
        self.spawn(&id, task)?;
        let input = self.channels.get(&id).cloned();
        Ok(ComponentInfo { id, kind: Kind::Transform, type_name: type_name.to_string(), metrics, input, disk_buffer: false })
    }

    /// Make source `s`'s outputs (and its disk buffer's forwarder's); it starts with
    /// [`Builder::start_source`], once they are routed.
    pub fn prepare_source(&mut self, opened: OpenedSource, links: &mut ExactlyOnceLinks, schemas: &Schemas) -> PreparedSource {
        let OpenedSource { source: s, buffer, metrics } = opened;
        let mut tasks = Vec::new();
        let outputs: HashMap<String, Output> = match buffer {
            None => s.outputs.iter().map(|o| (o.name.clone(), self.output(&s.id, &o.name, &metrics, true, schemas))).collect(),
            Some(opened) => {
                // The source's rows were counted when stored; the forwarder's sends are not again.
                let downstream =
                    s.outputs.iter().map(|o| (self.output(&s.id, &o.name, &metrics, false, schemas), o.schema.clone())).collect();
                let dead = self.dead_letters(&s.id, &metrics, schemas);
                tasks.push(StartedTask { id: s.id.clone(), task: Box::pin(opened.forwarder.run(downstream, dead)) });
                s.outputs.iter().map(|o| (o.name.clone(), Output::buffered(opened.queue.clone(), &o.name, metrics.clone()))).collect()
            }
        };
        let (tx, replace) = mpsc::unbounded_channel();
        self.sources.insert(s.id.clone(), tx);
        let run = super::SourceRun {
            id: s.id.clone(),
            outputs,
            dead: self.dead_letters(&s.id, &metrics, schemas),
            shutdown: self.context.shutdown.clone(),
            metrics: metrics.clone(),
            sink_positions: tributary_sdk::SinkPositions::new(links.sink_positions.remove(&s.id).unwrap_or_default()),
            ownership: self.context.ownership.clone(),
        };
        let disk_buffer = matches!(s.buffer, SourceBuffer::Disk(_));
        tasks.push(StartedTask { id: s.id.clone(), task: Box::pin(run.run(s.source, replace)) });
        let info = ComponentInfo { id: s.id, kind: Kind::Source, type_name: s.type_name, metrics, input: None, disk_buffer };
        PreparedSource { info, tasks }
    }

    /// Run a prepared source (and its forwarder); returns its admin entry.
    pub fn start_source(&self, prepared: PreparedSource) -> Result<ComponentInfo, String> {
        for StartedTask { id, task } in prepared.tasks {
            self.spawn(&id, task)?;
        }
        Ok(prepared.info)
    }
}

/// The plan's output columns (for the taps) and the admin API that lists taps, while a plan's
/// components are made.
pub(crate) struct Schemas<'a> {
    pub outputs: &'a std::collections::BTreeMap<String, SchemaRef>,
    pub admin: Option<&'a AdminState>,
}
