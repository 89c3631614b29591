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
//! is wired), through the same [`Builder`] as at start: a start is this diff applied to a pipeline
//! with no component. A changed `buffer:`, or a transform turning windowed, are refused with the
//! reason, and the running pipeline continues as it was.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use datafusion::arrow::datatypes::SchemaRef;
use tokio::sync::mpsc;
use tributary_sdk::{ComponentMetrics, Delivery};

use super::build::{open_source, Builder, ExactlyOnceLinks, Schemas};
use super::versions::{NewVersion, SinkVersion};
use crate::admin::AdminState;
use crate::config::{ComponentDecl, Kind};
use crate::graph::{InputRef, Plan};

/// What the CLI sends when the file changed (or on SIGHUP).
pub enum ReloadRequest {
    /// The new file validated: apply it.
    Valid(Plan),
    /// The new file did not validate (the diagnostics, with file:line:col): keep running.
    Invalid(String),
}

/// Why a plan was not applied; nothing of it was.
#[derive(Debug)]
pub(crate) struct Refused {
    /// The component that could not start, where one is to blame.
    pub component: Option<String>,
    pub reason: String,
}

impl From<String> for Refused {
    fn from(reason: String) -> Refused {
        Refused { component: None, reason }
    }
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.component {
            Some(id) => write!(f, "`{id}`: {}", self.reason),
            None => f.write_str(&self.reason),
        }
    }
}

/// Every component a run started, with its counters, for the run's summary and supervisor.
pub(crate) type Started = Arc<Mutex<Vec<(ComponentDecl, Arc<ComponentMetrics>)>>>;

/// The running pipeline: what each component runs now, and how to start or reach one.
pub(crate) struct Topology {
    builder: Builder,
    decls: Vec<ComponentDecl>,
    outputs: BTreeMap<String, SchemaRef>,
    windowed: BTreeSet<String>,
    interval_joins: BTreeSet<String>,
    /// `tables:` as the run loaded them (a reloaded plan's tables read these).
    tables: Vec<crate::tables::PlannedTable>,
    pub started: Started,
    /// The last reload's changed transforms, telling when they have counted their queued rows.
    switching: Vec<tokio::sync::oneshot::Receiver<()>>,
}

impl Topology {
    /// A pipeline with no component: its first plan starts everything.
    pub fn empty(builder: Builder) -> Topology {
        Topology {
            builder,
            decls: Vec::new(),
            outputs: BTreeMap::new(),
            windowed: BTreeSet::new(),
            interval_joins: BTreeSet::new(),
            tables: Vec::new(),
            started: Default::default(),
            switching: Vec::new(),
        }
    }

    /// Apply reloads until `requests` closes, recording each outcome in `/health`.
    pub async fn serve(mut self, mut requests: mpsc::Receiver<ReloadRequest>, admin: Option<&AdminState>) {
        while let Some(request) = requests.recv().await {
            let outcome = match request {
                ReloadRequest::Invalid(diagnostics) => Err(format!("the new file is invalid:\n{diagnostics}")),
                ReloadRequest::Valid(plan) => self.apply(plan, admin).map_err(|e| e.to_string()),
            };
            // Recorded once the changed transforms counted what was queued before it (a second
            // at most: a transform busy with one batch answers after it).
            for taken in std::mem::take(&mut self.switching) {
                let _ = tokio::time::timeout(std::time::Duration::from_secs(1), taken).await;
            }
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

    /// Hand the changed components their new versions and start the added ones; returns their
    /// ids (`+id` added, `-id` removed), or why nothing was changed.
    pub fn apply(&mut self, mut plan: Plan, admin: Option<&AdminState>) -> Result<Vec<String>, Refused> {
        let changed = self.changed(&plan)?;
        // The start's tables were loaded before it (`run_reloadable`); a reload's read them.
        let tables = std::mem::take(&mut plan.tables);
        if self.decls.is_empty() {
            self.tables = tables;
        } else {
            crate::tables::adopt(&self.tables, &tables)?;
        }
        let added: BTreeSet<String> =
            plan.decls.iter().filter(|d| !self.decls.iter().any(|o| o.id == d.id)).map(|d| d.id.clone()).collect();
        let old_inputs: HashMap<&str, &Vec<String>> = self.decls.iter().map(|d| (d.id.as_str(), &d.inputs)).collect();
        let rewired: BTreeSet<String> =
            plan.decls.iter().filter(|d| old_inputs.get(d.id.as_str()).is_some_and(|i| **i != d.inputs)).map(|d| d.id.clone()).collect();
        let removed: Vec<ComponentDecl> = self.decls.iter().filter(|d| !plan.decls.iter().any(|n| n.id == d.id)).cloned().collect();
        let changed_inputs = |decl: &ComponentDecl| -> Vec<Option<SchemaRef>> {
            decl.inputs.iter().map(|name| plan.outputs.get(name).filter(|s| self.outputs.get(name) != Some(*s)).cloned()).collect()
        };
        let inputs: HashMap<String, Vec<Option<SchemaRef>>> =
            plan.decls.iter().filter(|d| changed.contains(&d.id)).map(|d| (d.id.clone(), changed_inputs(d))).collect();
        let wiring: Vec<(String, Vec<InputRef>)> = plan
            .transforms
            .iter()
            .map(|t| (t.id.clone(), t.inputs.clone()))
            .chain(plan.sinks.iter().map(|s| (s.id.clone(), s.inputs.clone())))
            .collect();
        let Plan { sources, transforms, sinks, decls, outputs, .. } = plan;
        let (added_sources, sources): (Vec<_>, Vec<_>) = sources.into_iter().partition(|s| added.contains(&s.id));
        // The one step that can fail on the machine comes first, so a refused plan changes nothing.
        let opened = added_sources
            .into_iter()
            .map(open_source)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|(id, reason)| Refused { component: Some(id), reason })?;
        // From here on the new columns are the pipeline's (added outputs' taps take them).
        self.outputs = outputs;
        let (added_sinks, sinks): (Vec<_>, Vec<_>) = sinks.into_iter().partition(|s| added.contains(&s.id));
        let (added_transforms, transforms): (Vec<_>, Vec<_>) = transforms.into_iter().partition(|t| added.contains(&t.id));
        let mut links = ExactlyOnceLinks::new(&added_sinks, &added_transforms, &opened);
        // New channels for added and rewired consumers, held strongly until the routes hold them.
        let mut new_channels: HashMap<String, mpsc::Sender<Delivery>> = HashMap::new();
        let mut channel = |id: &str| -> mpsc::Receiver<Delivery> {
            let (tx, rx) = mpsc::channel(super::CHANNEL_CAPACITY);
            new_channels.insert(id.to_string(), tx);
            rx
        };
        let added_sinks: Vec<_> = added_sinks.into_iter().map(|s| (channel(&s.id), s)).collect();
        let added_transforms: Vec<_> = added_transforms.into_iter().map(|t| (channel(&t.id), t)).collect();
        // Downstream first: a changed consumer is in place before a changed producer restarts.
        for s in sinks.into_iter().filter(|s| changed.contains(&s.id)) {
            let new = NewVersion {
                changed_inputs: inputs[&s.id].clone(),
                channel: rewired.contains(&s.id).then(|| channel(&s.id)),
                component: SinkVersion { sink: s.sink, retry: s.retry, exactly_once: s.exactly_once },
                taken: None,
            };
            send(&self.builder.sinks, &s.id, new)?;
        }
        for t in transforms.into_iter().filter(|t| changed.contains(&t.id)) {
            let id = t.id.clone();
            let (taken, switched) = tokio::sync::oneshot::channel();
            self.switching.push(switched);
            let new = NewVersion {
                changed_inputs: inputs[&id].clone(),
                channel: rewired.contains(&id).then(|| channel(&id)),
                component: t,
                taken: Some(taken),
            };
            send(&self.builder.transforms, &id, new)?;
        }
        for s in sources.into_iter().filter(|s| changed.contains(&s.id)) {
            send(&self.builder.sources, &s.id, Some(s.source))?;
        }
        if !rewired.is_empty() || !removed.is_empty() || !added.is_empty() {
            self.builder.use_channels(&new_channels);
            let schemas = Schemas { outputs: &self.outputs, admin };
            // Consumers before producers: a sink is running before the transform feeding it.
            let mut infos = Vec::new();
            for (rx, s) in added_sinks {
                infos.push(self.builder.start_sink(s, rx, &mut links, &schemas)?);
            }
            for (rx, t) in added_transforms.into_iter().rev() {
                if t.window.is_some() {
                    self.windowed.insert(t.id.clone());
                }
                if t.interval.is_some() {
                    self.interval_joins.insert(t.id.clone());
                }
                let type_name = decls.iter().find(|d| d.id == t.id).map_or("sql", |d| d.type_name.as_str());
                infos.push(self.builder.start_transform(t, type_name, rx, &mut links, &schemas)?);
            }
            let prepared: Vec<_> = opened.into_iter().map(|o| self.builder.prepare_source(o, &mut links, &schemas)).collect();
            // Every output's routes exist now: wire everything, then start the added sources.
            self.builder.reroute(&wiring);
            for p in prepared {
                infos.push(self.builder.start_source(p)?);
            }
            infos.sort_by_key(|info| decls.iter().position(|d| d.id == info.id));
            let mut started = self.started.lock().unwrap_or_else(|e| e.into_inner());
            for info in &infos {
                if let Some(d) = decls.iter().find(|d| d.id == info.id) {
                    started.push((d.clone(), info.metrics.clone()));
                }
            }
            drop(started);
            if let Some(admin) = admin {
                for info in infos {
                    admin.add_component(info);
                }
            }
            for d in &removed {
                self.builder.forget_channel(&d.id);
                if d.kind == Kind::Source {
                    send(&self.builder.sources, &d.id, None)?;
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

    /// Which components must restart for `plan`, or why the change needs a process restart.
    fn changed(&self, plan: &Plan) -> Result<BTreeSet<String>, String> {
        let old: HashMap<&str, &ComponentDecl> = self.decls.iter().map(|d| (d.id.as_str(), d)).collect();
        let restart = "; that needs a restart of the process";
        let mut changed = BTreeSet::new();
        for d in &plan.decls {
            let Some(was) = old.get(d.id.as_str()) else { continue };
            if was.kind != d.kind {
                return Err(format!("`{}` moved from {} to {}{restart}", d.id, was.kind.label(), d.kind.label()));
            }
            if was.type_name != d.type_name || was.options != d.options || was.inputs != d.inputs {
                changed.insert(d.id.clone());
            }
            // The source re-keys its rows for it (see `plan_repartitions`), set up when it starts.
            if d.kind == Kind::Transform && was.options.get("partition_by") != d.options.get("partition_by") {
                return Err(format!("the `partition_by` of transform `{}` changed{restart}", d.id));
            }
        }
        // A consumer of an output whose columns change is planned anew over them.
        for (name, schema) in &plan.outputs {
            if self.outputs.get(name) != Some(schema) {
                changed
                    .extend(plan.decls.iter().filter(|d| d.inputs.contains(name) && old.contains_key(d.id.as_str())).map(|d| d.id.clone()));
            }
        }
        // A source's buffer (memory or disk) is the engine's, set up when the source starts.
        for d in plan.decls.iter().filter(|d| d.kind == Kind::Source && changed.contains(&d.id)) {
            if old[d.id.as_str()].options.get("buffer") != d.options.get("buffer") {
                return Err(format!("the `buffer` of source `{}` changed{restart}", d.id));
            }
        }
        for t in &plan.transforms {
            if changed.contains(&t.id) && self.windowed.contains(&t.id) != t.window.is_some() {
                return Err(format!("transform `{}` turned windowed or unwindowed{restart}", t.id));
            }
            if changed.contains(&t.id) && self.interval_joins.contains(&t.id) != t.interval.is_some() {
                return Err(format!("transform `{}` turned into an interval join or out of one{restart}", t.id));
            }
        }
        Ok(changed)
    }
}

/// Hand `new` to the running component `id`.
fn send<T>(slots: &HashMap<String, mpsc::UnboundedSender<T>>, id: &str, new: T) -> Result<(), String> {
    slots.get(id).ok_or_else(|| format!("`{id}` is not running"))?.send(new).map_err(|_| "the pipeline is stopping".to_string())
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

    /// A pipeline with no component, its dead letters under `dir`. The tasks it starts stay queued
    /// in the receiver for a supervisor that never runs them, with their version slots held.
    fn idle_topology(dir: &std::path::Path) -> (Topology, mpsc::UnboundedReceiver<super::super::build::StartedTask>) {
        let (supervisor, tasks) = mpsc::unbounded_channel();
        let context = super::super::build::RunContext {
            dead_letter_dir: dir.to_path_buf(),
            shutdown: Default::default(),
            clock: Default::default(),
            in_flight: None,
            taps: Default::default(),
            ownership: Default::default(),
        };
        (Topology::empty(Builder::new(context, supervisor)), tasks)
    }

    /// Apply `text` to a pipeline running BASE. Its tasks stay queued for a supervisor that never
    /// runs them, with their version slots held, as if running.
    async fn reload(text: &str) -> Result<Vec<String>, String> {
        let dir = tempfile::tempdir().unwrap();
        let (mut running, _tasks) = idle_topology(dir.path());
        let started = running.apply(plan(BASE).await, None).unwrap();
        assert_eq!(started, ["+counts", "+ingest", "+keep", "+kept", "+per_minute"], "the start adds everything");
        running.apply(plan(text).await, None).map_err(|e| e.to_string())
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
        // An added transform and the sink reading it are added, not restarted.
        let added = BASE.replace(
            "sinks:",
            "  less: {inputs: [keep], sql: SELECT id FROM keep}\nsinks:\n  fewer: {type: file, inputs: [less], path: /dev/null}",
        );
        assert_eq!(reload(&added).await.unwrap(), ["+fewer", "+less"]);
    }

    #[tokio::test]
    async fn a_reload_reads_the_running_tables_and_refuses_to_change_them() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("sites.csv");
        std::fs::write(&csv, "id,site\n1,ams\n").unwrap();
        let with_table = format!("{BASE}tables:\n  sites: {{type: file, path: {}}}\n", csv.display())
            .replace("SELECT id, score FROM ingest WHERE score > 100", "SELECT i.id, s.site FROM ingest i JOIN sites s ON i.id = s.id");
        let (mut running, _tasks) = idle_topology(dir.path());
        let start = plan(&with_table).await;
        let loaded = start.tables[0].table.clone();
        loaded.replace(Vec::new());
        running.apply(start, None).unwrap();

        let same = plan(&with_table).await;
        let reloaded = same.tables[0].table.clone();
        assert_ne!(reloaded.snapshot().version, loaded.snapshot().version, "planned, not loaded");
        running.apply(same, None).unwrap();
        assert_eq!(reloaded.snapshot().version, loaded.snapshot().version, "the reloaded plan reads the running table");
        loaded.replace(Vec::new());
        assert_eq!(reloaded.snapshot().version, loaded.snapshot().version, "and its refreshes");

        let changed = with_table.replace("sites: {type: file,", "sites: {type: file, refresh: 1m,");
        assert_eq!(
            running.apply(plan(&changed).await, None).unwrap_err().to_string(),
            "the reload changes the table `sites`; changing `tables:` needs a restart"
        );
        let removed = BASE.to_string();
        assert_eq!(
            running.apply(plan(&removed).await, None).unwrap_err().to_string(),
            "the reload adds or removes the table `sites`; changing `tables:` needs a restart"
        );
    }

    #[tokio::test]
    async fn a_disk_buffered_source_can_be_added_but_a_buffer_not_changed() {
        let dir = tempfile::tempdir().unwrap();
        let buffer = dir.path().join("more").display().to_string();
        let added = BASE.replace(
            "transforms:",
            &format!("  more: {{type: http_server, address: \"127.0.0.1:0\", schema: {{id: int}}, buffer: {{type: disk, path: \"{buffer}\"}}}}\ntransforms:"),
        );
        assert_eq!(reload(&added).await.unwrap(), ["+more"]);
        assert!(dir.path().join("more").is_dir(), "the added source's buffer is open");
        // A buffer that cannot be opened refuses the whole reload, naming the source.
        let blocked = dir.path().join("file");
        std::fs::write(&blocked, "").unwrap();
        let unopenable = added.replace(&buffer, &blocked.join("sub").display().to_string());
        let refused = reload(&unopenable).await.unwrap_err();
        assert!(refused.starts_with("`more`: cannot create the disk buffer folder"), "{refused}");
        let buffered = BASE.replace(
            "schema: {id: int, score: int, ts: timestamp}}",
            &format!("schema: {{id: int, score: int, ts: timestamp}}, buffer: {{type: disk, path: \"{buffer}\"}}}}"),
        );
        assert_eq!(reload(&buffered).await.unwrap_err(), "the `buffer` of source `ingest` changed; that needs a restart of the process");
    }

    #[tokio::test]
    async fn a_window_s_partition_by_cannot_change_in_place() {
        let keyed = BASE.replace("    window: {tumbling: 1m}\n", "    partition_by: [id]\n    window: {tumbling: 1m}\n");
        assert_eq!(
            reload(&keyed).await.unwrap_err(),
            "the `partition_by` of transform `per_minute` changed; that needs a restart of the process"
        );
    }
}
