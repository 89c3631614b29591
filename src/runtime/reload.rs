//! Hot reload: a new version of the pipeline file, already validated, replaces only the components
//! whose config changed (or whose input schema did, because an upstream transform's SQL changed).
//! Everything else keeps running: sources keep their connections and offsets, untouched windows keep
//! their rows.
//!
//! A changed transform or sink first handles what is queued in front of it (accepted under the old
//! config), a sink flushes, a windowed transform emits its open windows as partial; a changed source
//! stops as on a shutdown (sends what it has, waits for its acks). Then the new version takes over
//! the same channels. When an output's columns change, its consumers are planned anew and switch at
//! the first batch with the new columns ([`Versions`]). A component whose `inputs:` changed gets a
//! new channel: every output is rerouted (`Routes`) from its next batch on, the old version drains
//! the old channel until the last producer lets go of it, then the new version reads the new one.
//! A removed component is routed nothing more (a source is stopped) and finishes as on a shutdown;
//! added components start under the run's supervision (consumers first; an added source once all
//! is wired). An added disk-buffered source, a changed `buffer:`, or a transform turning windowed
//! are refused with the reason, and the running pipeline continues as it was.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use datafusion::arrow::datatypes::SchemaRef;
use tokio::sync::mpsc;
use tributary_sdk::{ComponentMetrics, DeadLetters, Delivery, Output, Routes, SinkContext, Source, DEAD_LETTER_OUTPUT};

use super::versions::{NewSink, NewVersion, SinkVersion};
use crate::admin::{AdminState, ComponentInfo};
use crate::config::{ComponentDecl, Kind};
use crate::graph::{InputRef, Plan, PlannedTransform, SourceBuffer};

/// What the CLI sends when the file changed (or on SIGHUP).
pub enum ReloadRequest {
    /// The new file validated: apply it.
    Valid(Plan),
    /// The new file did not validate (the diagnostics, with file:line:col): keep running.
    Invalid(String),
}

/// One channel per component of a kind, through which its task receives new versions.
struct Slots<T> {
    senders: HashMap<String, mpsc::UnboundedSender<T>>,
    /// Receivers not yet handed to their tasks.
    receivers: HashMap<String, mpsc::UnboundedReceiver<T>>,
}

impl<T> Slots<T> {
    fn new<'a>(ids: impl Iterator<Item = &'a str>) -> Slots<T> {
        let mut slots = Slots { senders: HashMap::new(), receivers: HashMap::new() };
        for id in ids {
            let (tx, rx) = mpsc::unbounded_channel();
            slots.senders.insert(id.to_string(), tx);
            slots.receivers.insert(id.to_string(), rx);
        }
        slots
    }

    /// The receiving end for `id`'s task.
    fn take(&mut self, id: &str) -> mpsc::UnboundedReceiver<T> {
        self.receivers.remove(id).unwrap_or_else(|| mpsc::unbounded_channel().1)
    }

    fn send(&self, id: &str, new: T) -> Result<(), String> {
        self.senders[id].send(new).map_err(|_| "the pipeline is stopping".to_string())
    }
}

/// The running pipeline's components that can take a new version, and what they run now.
pub(crate) struct Replacers {
    /// `None` stops a removed source.
    sources: Slots<Option<Box<dyn Source>>>,
    transforms: Slots<NewVersion<PlannedTransform>>,
    sinks: Slots<NewSink>,
    decls: Vec<ComponentDecl>,
    outputs: BTreeMap<String, SchemaRef>,
    windowed: BTreeSet<String>,
    /// Every output's routes, by (producer, output name).
    routes: Vec<((String, String), Routes)>,
    /// Each consumer's current channel (weak: the producers' routes hold it).
    channels: HashMap<String, mpsc::WeakSender<Delivery>>,
    /// Starts an added component's task under the run's supervision.
    spawner: Option<mpsc::UnboundedSender<AddedTask>>,
    dead_letter_dir: std::path::PathBuf,
    /// What added components run with: the run's stop, clock and in-flight count.
    shutdown: tokio_util::sync::CancellationToken,
    clock: super::Clock,
    in_flight: Option<std::sync::Arc<tributary_sdk::InFlight>>,
    /// Components reloads added, for the run's final summary.
    pub added: AddedComponents,
}

/// Components reloads added, with their counters (shared with the run for its summary).
pub(crate) type AddedComponents = std::sync::Arc<std::sync::Mutex<Vec<(ComponentDecl, std::sync::Arc<ComponentMetrics>)>>>;

/// A component a reload added, for the supervisor to run.
pub(crate) struct AddedTask {
    pub id: String,
    pub task: std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send>>,
}

impl Replacers {
    pub fn new(decls: &[ComponentDecl], outputs: &BTreeMap<String, SchemaRef>, transforms: &[PlannedTransform]) -> Replacers {
        let ids = |kind: Kind| decls.iter().filter(move |d| d.kind == kind).map(|d| d.id.as_str());
        Replacers {
            sources: Slots::new(ids(Kind::Source)),
            transforms: Slots::new(ids(Kind::Transform)),
            sinks: Slots::new(ids(Kind::Sink)),
            decls: decls.to_vec(),
            outputs: outputs.clone(),
            windowed: transforms.iter().filter(|t| t.window.is_some()).map(|t| t.id.clone()).collect(),
            routes: Vec::new(),
            channels: HashMap::new(),
            spawner: None,
            dead_letter_dir: Default::default(),
            shutdown: Default::default(),
            clock: Default::default(),
            in_flight: None,
            added: Default::default(),
        }
    }

    /// The wiring as the run built it: outputs' routes and consumers' channels; where added
    /// components' tasks and dead letters go.
    #[allow(clippy::too_many_arguments)]
    pub fn wired(
        &mut self,
        routes: Vec<((String, String), Routes)>,
        channels: &HashMap<String, mpsc::Sender<Delivery>>,
        spawner: mpsc::UnboundedSender<AddedTask>,
        dead_letter_dir: std::path::PathBuf,
        shutdown: tokio_util::sync::CancellationToken,
        clock: super::Clock,
        in_flight: Option<std::sync::Arc<tributary_sdk::InFlight>>,
    ) {
        self.routes = routes;
        self.channels = channels.iter().map(|(id, tx)| (id.clone(), tx.downgrade())).collect();
        self.spawner = Some(spawner);
        self.dead_letter_dir = dead_letter_dir;
        self.shutdown = shutdown;
        self.clock = clock;
        self.in_flight = in_flight;
    }

    /// An output of an added component: no targets until the reroute; tappable.
    fn new_output(
        &mut self,
        producer: &str,
        output: &str,
        metrics: &std::sync::Arc<ComponentMetrics>,
        admin: Option<&AdminState>,
    ) -> Output {
        let out = Output::new(Vec::new(), metrics.clone(), output != DEAD_LETTER_OUTPUT);
        self.routes.push(((producer.to_string(), output.to_string()), out.routes()));
        let name = super::output_name(producer, output);
        let tap = match (admin, self.outputs.get(&name)) {
            (Some(admin), Some(schema)) => {
                let tap = std::sync::Arc::new(tributary_sdk::Tap::default());
                admin.add_tap(name, schema.clone(), tap.clone());
                Some(tap)
            }
            _ => None,
        };
        super::observed(out, self.in_flight.as_ref(), tap)
    }

    fn new_dead_letters(&mut self, id: &str, metrics: &std::sync::Arc<ComponentMetrics>, admin: Option<&AdminState>) -> DeadLetters {
        let output = self.new_output(id, DEAD_LETTER_OUTPUT, metrics, admin);
        super::dead_letters_in(&self.dead_letter_dir, id, output, metrics.clone())
    }

    fn spawn(&self, id: &str, task: std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send>>) -> Result<(), String> {
        let spawner = self.spawner.as_ref().ok_or("the pipeline is not running")?;
        spawner.send(AddedTask { id: id.to_string(), task }).map_err(|_| "the pipeline is stopping".to_string())
    }

    /// Start a transform the reload added, on `rx`.
    fn start_transform(
        &mut self,
        t: PlannedTransform,
        rx: mpsc::Receiver<Delivery>,
        admin: Option<&AdminState>,
    ) -> Result<ComponentInfo, String> {
        let metrics = std::sync::Arc::new(ComponentMetrics::default());
        let output = self.new_output(&t.id, "", &metrics, admin);
        let dead = self.new_dead_letters(&t.id, &metrics, admin);
        let (tx, replace) = mpsc::unbounded_channel();
        self.transforms.senders.insert(t.id.clone(), tx);
        let id = t.id.clone();
        let task: std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send>> = match &t.window {
            Some(window) => {
                let late = self.new_output(&t.id, crate::graph::LATE_OUTPUT, &metrics, admin);
                let timer = super::window_timer(&self.clock, window);
                self.windowed.insert(id.clone());
                let out = super::windowed::WindowOutputs { id: id.clone(), output, late, dead, metrics: metrics.clone() };
                // Added now: no sink has written its windows.
                Box::pin(super::windowed::run_windowed_transform(t, rx, out, Vec::new(), timer, replace))
            }
            None => Box::pin(super::run_transform(t, rx, output, dead, metrics.clone(), replace)),
        };
        self.spawn(&id, task)?;
        let input = self.channels.get(&id).cloned();
        Ok(ComponentInfo { id, kind: Kind::Transform, type_name: "sql".into(), metrics, input, disk_buffer: false })
    }

    /// A source the reload added (memory buffer only), its outputs made (and routable) but not
    /// running yet.
    fn prepare_source(&mut self, s: crate::graph::PlannedSource, admin: Option<&AdminState>) -> (AddedTask, ComponentInfo) {
        let metrics = std::sync::Arc::new(ComponentMetrics::default());
        let outputs = s.outputs.iter().map(|o| (o.name.clone(), self.new_output(&s.id, &o.name, &metrics, admin))).collect();
        let dead = self.new_dead_letters(&s.id, &metrics, admin);
        let (tx, replace) = mpsc::unbounded_channel();
        self.sources.senders.insert(s.id.clone(), tx);
        // A source a reload adds is not wired to the sinks' positions (run_reloadable does that
        // at start): a Kafka source added so writes at least once until the next start.
        let run = super::SourceRun {
            id: s.id.clone(),
            outputs,
            dead,
            shutdown: self.shutdown.clone(),
            metrics: metrics.clone(),
            sink_positions: Default::default(),
        };
        let task = AddedTask { id: s.id.clone(), task: Box::pin(run.run(s.source, replace)) };
        (task, ComponentInfo { id: s.id, kind: Kind::Source, type_name: s.type_name, metrics, input: None, disk_buffer: false })
    }

    /// Start a sink the reload added, on `rx`; returns its admin entry.
    /// The receiving ends for each component's task.
    pub fn source(&mut self, id: &str) -> mpsc::UnboundedReceiver<Option<Box<dyn Source>>> {
        self.sources.take(id)
    }

    pub fn transform(&mut self, id: &str) -> mpsc::UnboundedReceiver<NewVersion<PlannedTransform>> {
        self.transforms.take(id)
    }

    pub fn sink(&mut self, id: &str) -> mpsc::UnboundedReceiver<NewSink> {
        self.sinks.take(id)
    }

    /// Start a sink the reload added, on `rx`; returns its admin entry.
    fn start_sink(
        &mut self,
        s: crate::graph::PlannedSink,
        rx: mpsc::Receiver<Delivery>,
        admin: Option<&AdminState>,
    ) -> Result<ComponentInfo, String> {
        let metrics = std::sync::Arc::new(ComponentMetrics::default());
        let dead = self.new_dead_letters(&s.id, &metrics, admin);
        let ctx = SinkContext { id: s.id.clone(), metrics: metrics.clone() };
        let (tx, replace) = mpsc::unbounded_channel();
        self.sinks.senders.insert(s.id.clone(), tx);
        let version = SinkVersion { sink: s.sink, retry: s.retry, exactly_once: s.exactly_once };
        self.spawn(&s.id, Box::pin(super::sink::run_sink(version, rx, ctx, dead, replace, None, None)))?;
        let input = self.channels.get(&s.id).cloned();
        Ok(ComponentInfo { id: s.id, kind: Kind::Sink, type_name: s.type_name, metrics, input, disk_buffer: false })
    }

    /// Apply reloads until `requests` closes, recording each outcome in `/health`.
    pub async fn serve(mut self, mut requests: mpsc::Receiver<ReloadRequest>, admin: Option<&AdminState>) {
        while let Some(request) = requests.recv().await {
            let outcome = match request {
                ReloadRequest::Invalid(diagnostics) => Err(format!("the new file is invalid:\n{diagnostics}")),
                ReloadRequest::Valid(plan) => self.apply(plan, admin),
            };
            match &outcome {
                Ok(changed) if changed.is_empty() => tracing::info!("reloaded: no component changed"),
                Ok(changed) => tracing::info!(restarted = %changed.join(","), "reloaded"),
                Err(e) => tracing::error!("reload refused; the pipeline keeps running as it was: {e}"),
            }
            if let Some(admin) = admin {
                admin.record_reload(outcome.map(|_| ()));
            }
        }
    }

    /// Hand the changed components their new versions; returns their ids, or why nothing was
    /// changed.
    pub fn apply(&mut self, plan: Plan, admin: Option<&AdminState>) -> Result<Vec<String>, String> {
        let changed = self.changed(&plan)?;
        let added: BTreeSet<String> =
            plan.decls.iter().filter(|d| !self.decls.iter().any(|o| o.id == d.id)).map(|d| d.id.clone()).collect();
        let old_inputs: HashMap<&str, &Vec<String>> = self.decls.iter().map(|d| (d.id.as_str(), &d.inputs)).collect();
        let rewired: BTreeSet<String> =
            plan.decls.iter().filter(|d| old_inputs.get(d.id.as_str()).is_some_and(|i| **i != d.inputs)).map(|d| d.id.clone()).collect();
        let removed: Vec<ComponentDecl> = self.decls.iter().filter(|d| !plan.decls.iter().any(|n| n.id == d.id)).cloned().collect();
        let changed_inputs = |id: &str| -> Vec<Option<SchemaRef>> {
            let decl = plan.decls.iter().find(|d| d.id == id).expect("planned");
            decl.inputs.iter().map(|name| plan.outputs.get(name).filter(|s| self.outputs.get(name) != Some(*s)).cloned()).collect()
        };
        let inputs: HashMap<String, Vec<Option<SchemaRef>>> = changed.iter().map(|id| (id.clone(), changed_inputs(id))).collect();
        // New channels for rewired consumers, held strongly until the routes hold them.
        let mut new_channels: HashMap<String, mpsc::Sender<Delivery>> = HashMap::new();
        let mut channel_for = |id: &str| -> Option<mpsc::Receiver<Delivery>> {
            (rewired.contains(id) || added.contains(id)).then(|| {
                let (tx, rx) = mpsc::channel(super::CHANNEL_CAPACITY);
                new_channels.insert(id.to_string(), tx);
                rx
            })
        };
        let wiring: Vec<(String, Vec<InputRef>)> = plan
            .transforms
            .iter()
            .map(|t| (t.id.clone(), t.inputs.clone()))
            .chain(plan.sinks.iter().map(|s| (s.id.clone(), s.inputs.clone())))
            .collect();
        let Plan { sources, transforms, sinks, decls, outputs, .. } = plan;
        // From here on the new columns are the pipeline's (added outputs' taps take them).
        self.outputs = outputs;
        let (added_sinks, sinks): (Vec<_>, Vec<_>) = sinks.into_iter().partition(|s| added.contains(&s.id));
        let (added_transforms, transforms): (Vec<_>, Vec<_>) = transforms.into_iter().partition(|t| added.contains(&t.id));
        let (added_sources, sources): (Vec<_>, Vec<_>) = sources.into_iter().partition(|s| added.contains(&s.id));
        let mut started = Vec::new();
        for s in added_sinks {
            let rx = channel_for(&s.id).expect("added");
            started.push((s, rx));
        }
        let mut started_transforms = Vec::new();
        for t in added_transforms {
            let rx = channel_for(&t.id).expect("added");
            started_transforms.push((t, rx));
        }
        // Downstream first: a changed consumer is in place before a changed producer restarts.
        for s in sinks.into_iter().filter(|s| changed.contains(&s.id)) {
            let new = NewVersion {
                changed_inputs: inputs[&s.id].clone(),
                channel: channel_for(&s.id),
                component: SinkVersion { sink: s.sink, retry: s.retry, exactly_once: s.exactly_once },
            };
            self.sinks.send(&s.id, new)?;
        }
        for t in transforms.into_iter().filter(|t| changed.contains(&t.id)) {
            let id = t.id.clone();
            self.transforms.send(&id, NewVersion { changed_inputs: inputs[&id].clone(), channel: channel_for(&id), component: t })?;
        }
        for s in sources.into_iter().filter(|s| changed.contains(&s.id)) {
            self.sources.send(&s.id, Some(s.source))?;
        }
        if !rewired.is_empty() || !removed.is_empty() || !added.is_empty() {
            for (id, tx) in &new_channels {
                self.channels.insert(id.clone(), tx.downgrade());
            }
            // Consumers before producers: a sink is running before the transform feeding it.
            let mut infos = Vec::new();
            for (s, rx) in started {
                infos.push(self.start_sink(s, rx, admin)?);
            }
            for (t, rx) in started_transforms.into_iter().rev() {
                infos.push(self.start_transform(t, rx, admin)?);
            }
            let prepared: Vec<(AddedTask, ComponentInfo)> = added_sources.into_iter().map(|s| self.prepare_source(s, admin)).collect();
            // Every output's routes exist now: wire everything, then start the added sources.
            self.reroute(&wiring);
            for (task, info) in prepared {
                self.spawn(&task.id.clone(), task.task)?;
                infos.push(info);
            }
            let mut summary = self.added.lock().unwrap_or_else(|e| e.into_inner());
            for info in &infos {
                if let Some(d) = decls.iter().find(|d| d.id == info.id) {
                    summary.push((d.clone(), info.metrics.clone()));
                }
            }
            drop(summary);
            if let Some(admin) = admin {
                for info in infos {
                    admin.add_component(info);
                }
            }
            for d in &removed {
                self.channels.remove(&d.id);
                if d.kind == Kind::Source {
                    self.sources.send(&d.id, None)?;
                }
            }
            // Only the routes hold the new channels now; the old ones close once their
            // producers' sends in flight are done.
            drop(new_channels);
        }
        self.decls = decls;
        let mut restarted: Vec<String> = changed.into_iter().collect();
        restarted.extend(added.iter().map(|id| format!("+{id}")));
        restarted.extend(removed.iter().map(|d| format!("-{}", d.id)));
        if let Some(admin) = admin {
            for d in &removed {
                admin.remove_component(&d.id);
            }
        }
        Ok(restarted)
    }

    /// Point every output at the consumers that read it now (`wiring`: each consumer's inputs).
    fn reroute(&mut self, wiring: &[(String, Vec<InputRef>)]) {
        for ((producer, output), routes) in &self.routes {
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
            routes.set(targets);
        }
    }

    /// Which components must restart for `plan`, or why the change needs a process restart.
    fn changed(&self, plan: &Plan) -> Result<BTreeSet<String>, String> {
        let old: HashMap<&str, &ComponentDecl> = self.decls.iter().map(|d| (d.id.as_str(), d)).collect();
        let restart = "; that needs a restart of the process";
        if let Some(s) = plan.sources.iter().find(|s| !old.contains_key(s.id.as_str()) && !matches!(s.buffer, SourceBuffer::Memory)) {
            return Err(format!("source `{}` was added with a disk buffer{restart}", s.id));
        }
        let mut changed = BTreeSet::new();
        for d in &plan.decls {
            let Some(was) = old.get(d.id.as_str()) else { continue };
            if was.kind != d.kind {
                return Err(format!("`{}` moved from {} to {}{restart}", d.id, was.kind.label(), d.kind.label()));
            }
            if was.type_name != d.type_name || was.options != d.options || was.inputs != d.inputs {
                changed.insert(d.id.clone());
            }
        }
        // A consumer of an output whose columns change is planned anew over them.
        for (name, schema) in &plan.outputs {
            if self.outputs.get(name) != Some(schema) {
                changed.extend(plan.decls.iter().filter(|d| d.inputs.contains(name)).map(|d| d.id.clone()));
            }
        }
        // A source's buffer (memory or disk) is the engine's, set up once at start.
        for d in plan.decls.iter().filter(|d| d.kind == Kind::Source && changed.contains(&d.id)) {
            if old[d.id.as_str()].options.get("buffer") != d.options.get("buffer") {
                return Err(format!("the `buffer` of source `{}` changed{restart}", d.id));
            }
        }
        for t in &plan.transforms {
            if changed.contains(&t.id) && self.windowed.contains(&t.id) != t.window.is_some() {
                return Err(format!("transform `{}` turned windowed or unwindowed{restart}", t.id));
            }
        }
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PipelineFile;

    const BASE: &str = r#"
sources:
  ingest: {type: http_server, address: "127.0.0.1:0", schema: {id: int, score: int, ts: timestamp}}
transforms:
  keep: {inputs: [ingest], sql: "SELECT id, score FROM ingest WHERE score > 100"}
  per_minute:
    inputs: [ingest]
    window: {tumbling: 1m}
    sql: SELECT window_start, count(*) AS n FROM ingest GROUP BY window_start
sinks:
  kept: {type: file, inputs: [keep], path: /dev/null}
  counts: {type: file, inputs: [per_minute], path: /dev/null}
"#;

    async fn plan(text: &str) -> Plan {
        let file = PipelineFile::parse("p.yaml", text, &|_| None).unwrap();
        crate::graph::plan(&file, &crate::plugins::Registry::builtin()).await.unwrap()
    }

    /// Apply `text` to a pipeline running BASE; the receivers stay in `Replacers`, as if held by
    /// the running tasks.
    async fn reload(text: &str) -> Result<Vec<String>, String> {
        let p = plan(BASE).await;
        Replacers::new(&p.decls, &p.outputs, &p.transforms).apply(plan(text).await, None)
    }

    #[tokio::test]
    async fn only_changed_components_restart() {
        assert_eq!(reload(BASE).await.unwrap(), Vec::<String>::new());
        assert_eq!(reload(&BASE.replace("score > 100", "score > 500")).await.unwrap(), ["keep"]);
        assert_eq!(
            reload(&BASE.replace("path: /dev/null}\n  counts", "path: /dev/null, flush_interval: 2s}\n  counts")).await.unwrap(),
            ["kept"]
        );
        let source_changed = BASE.replace("address: \"127.0.0.1:0\",", "address: \"127.0.0.1:0\", max_body_bytes: 1MiB,");
        assert_eq!(reload(&source_changed).await.unwrap(), ["ingest"]);
        // New columns out of `keep`: its sink is planned anew over them.
        let columns = BASE.replace("SELECT id, score FROM", "SELECT id FROM");
        assert_eq!(reload(&columns).await.unwrap(), ["keep", "kept"]);
        // Rewired and removed components.
        let rewired = BASE.replace("inputs: [per_minute]", "inputs: [keep]");
        assert_eq!(reload(&rewired).await.unwrap(), ["counts"]);
        let removed = BASE.replace("  counts: {type: file, inputs: [per_minute], path: /dev/null}\n", "");
        assert_eq!(reload(&removed).await.unwrap(), ["-counts"]);
    }

    #[tokio::test]
    async fn additions_and_buffer_changes_are_refused_with_the_reason() {
        let added = BASE.replace(
            "transforms:",
            "  more: {type: http_server, address: \"127.0.0.1:0\", schema: {id: int}, buffer: {type: disk, path: /tmp/x}}\ntransforms:",
        );
        assert_eq!(reload(&added).await.unwrap_err(), "source `more` was added with a disk buffer; that needs a restart of the process");
        let buffered = BASE.replace(
            "schema: {id: int, score: int, ts: timestamp}}",
            "schema: {id: int, score: int, ts: timestamp}, buffer: {type: disk, path: /tmp/x}}",
        );
        assert_eq!(reload(&buffered).await.unwrap_err(), "the `buffer` of source `ingest` changed; that needs a restart of the process");
    }
}
