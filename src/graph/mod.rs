//! From declarations to a checked, runnable plan: plugin configs built, `inputs:` resolved,
//! cycles rejected, SQL planned against its input schemas, sinks checked against theirs.
//! Nothing here touches the network, so `validate` runs it anywhere.

mod delivery;
mod engine_keys;
pub mod mermaid;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use serde::Deserialize;
use tributary_sdk::dead_letter::dead_letter_schema;
use tributary_sdk::{ComponentConfig, OutputSpec, Sink, Source, DEAD_LETTER_OUTPUT};

use crate::config::{quoted, ComponentDecl, Diagnostic, Diagnostics, Guarantee, Kind, PipelineFile};
use crate::plugins::Registry;
use crate::sql::interval::{IntervalJoinConfig, IntervalSpec};
use crate::sql::window::{self, WindowConfig, WindowSpec};
use crate::sql::{LookupTable, SqlTransform};
use crate::tables::PlannedTable;
pub use engine_keys::{DiskBufferConfig, SinkRetry, SourceBuffer, WhenFull};

/// An `inputs:` entry resolved to a component and one of its outputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputRef {
    /// As written: `probes`, `webex.utilization`, `db.dead_letter`.
    pub name: String,
    pub component: String,
    /// `""` for the main output.
    pub output: String,
}

pub struct PlannedSource {
    pub id: String,
    pub type_name: String,
    pub outputs: Vec<OutputSpec>,
    pub source: Box<dyn Source>,
    /// `buffer:` — the engine's, not the plugin's: memory (default) or a disk buffer.
    pub buffer: SourceBuffer,
}

pub struct PlannedTransform {
    pub id: String,
    pub inputs: Vec<InputRef>,
    /// Planned over the inputs' schemas (with `window_start`/`window_end` when windowed).
    pub sql: SqlTransform,
    pub window: Option<WindowPlan>,
    /// `interval_join:`: the two inputs' rows pair across batches (see `sql/interval.rs`).
    pub interval: Option<IntervalPlan>,
}

/// What an interval-join transform needs besides its SQL.
pub struct IntervalPlan {
    pub spec: IntervalSpec,
    pub inputs: Vec<(String, SchemaRef)>,
    /// Schema of `<id>.late`.
    pub late_schema: SchemaRef,
}

/// What a windowed transform needs besides its SQL.
pub struct WindowPlan {
    pub spec: WindowSpec,
    /// The inputs' own names and schemas (without the window columns).
    pub inputs: Vec<(String, SchemaRef)>,
    /// Schema of `<id>.late`.
    pub late_schema: SchemaRef,
    /// It feeds an exactly-once sink: its emissions carry positions (set by the planner's
    /// `check_exactly_once`).
    pub exactly_once: bool,
    /// `partition_by`, when the source it reads re-keys its rows across a consumer group: how it
    /// does (for `validate`). Its windows are then kept per partition of the re-keyed stream.
    pub repartitioned: Option<String>,
}

/// Name of a windowed transform's output for rows that arrived after their window closed.
pub const LATE_OUTPUT: &str = "late";

pub struct PlannedSink {
    pub id: String,
    pub type_name: String,
    pub inputs: Vec<InputRef>,
    pub sink: Box<dyn Sink>,
    /// `retry:` — the engine's, not the plugin's: how transient failures are retried.
    pub retry: SinkRetry,
    /// `delivery: exactly_once` (its own or the pipeline's), checked against every path into it;
    /// `None` for at-least-once.
    pub exactly_once: Option<ExactlyOnce>,
}

/// An exactly-once sink's inputs, as the planner found them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExactlyOnce {
    /// The sources whose positions reach the sink (its streams), in name order.
    pub streams: Vec<std::sync::Arc<str>>,
}

/// A validated pipeline, ready to run.
pub struct Plan {
    pub sources: Vec<PlannedSource>,
    /// In dependency order.
    pub transforms: Vec<PlannedTransform>,
    pub sinks: Vec<PlannedSink>,
    /// Every output by its `inputs:` name, with its schema.
    pub outputs: BTreeMap<String, SchemaRef>,
    /// Declarations, for the graph and summaries.
    pub decls: Vec<ComponentDecl>,
    /// Where dead letters of unwired `<id>.dead_letter` outputs are stored (`dead_letters.path`).
    pub dead_letter_dir: std::path::PathBuf,
    /// `tables:`, planned (not loaded).
    pub tables: Vec<PlannedTable>,
}

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids = |v: Vec<&String>| v.into_iter().cloned().collect::<Vec<_>>();
        f.debug_struct("Plan")
            .field("sources", &ids(self.sources.iter().map(|s| &s.id).collect()))
            .field("transforms", &ids(self.transforms.iter().map(|t| &t.id).collect()))
            .field("sinks", &ids(self.sinks.iter().map(|s| &s.id).collect()))
            .finish()
    }
}

/// Config of a SQL transform.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SqlTransformConfig {
    /// The query; input ids (and `source.output` names) are its tables.
    sql: String,
    /// Event-time window; the SQL then sees `window_start` and `window_end` on every input.
    #[serde(default)]
    window: Option<WindowConfig>,
    /// Row-level join of two streams: rows pair when their event times are `within` apart.
    #[serde(default)]
    interval_join: Option<IntervalJoinConfig>,
    /// A window's key columns: when its source is shared by a consumer group, rows are re-keyed
    /// by them so that every key is counted by one instance (see `docs/scaling.md`).
    #[serde(default)]
    partition_by: Vec<String>,
}

/// A source's `buffer:` option, taken out of its config (the plugin never sees it).
fn source_buffer(cfg: &mut ComponentConfig) -> Result<SourceBuffer, tributary_sdk::ConfigError> {
    let Some(value) = cfg.options.as_mapping_mut().and_then(|m| m.remove("buffer")) else {
        return Ok(SourceBuffer::default());
    };
    let buffer = ComponentConfig::new(cfg.id.clone(), value).decode::<SourceBuffer>().map_err(|e| e.within("buffer"))?;
    buffer.validate().map_err(|e| e.within("buffer"))?;
    Ok(buffer)
}

fn output_name(component: &str, output: &str) -> String {
    if output.is_empty() {
        component.to_string()
    } else {
        format!("{component}.{output}")
    }
}

/// Check and build everything in `file`: every problem found at one step is reported together,
/// and a step runs only when the ones before it found none.
pub async fn plan(file: &PipelineFile, registry: &Registry) -> Result<Plan, Diagnostics> {
    let mut p = Planner { file, registry, errors: Vec::new(), outputs: BTreeMap::new() };
    let (mut sources, sqls) = p.declare();
    let (mut tables, kept_later) = p.plan_tables().await;
    p.check()?;
    let inputs = p.resolve_inputs(&sqls);
    p.check()?;
    let order = topo_order(file, &with_table_edges(&inputs, &sqls, &kept_later)).map_err(|d| Diagnostics(vec![d]))?;
    let mut transforms = p.plan_transforms(&order, &inputs, &sqls, &mut tables, kept_later).await;
    p.check()?;
    p.plan_repartitions(&mut sources, &mut transforms, &sqls);
    p.check()?;
    let mut sinks = p.build_sinks(&inputs);
    p.check()?;
    let mut decls = file.components.clone();
    for (sink, decl) in tables.iter().filter_map(table_sink) {
        sinks.push(sink);
        decls.push(decl);
    }
    p.check_exactly_once(&mut sinks, &sources, &mut transforms);
    p.check()?;
    Ok(Plan { sources, transforms, sinks, outputs: p.outputs, decls, dead_letter_dir: file.dead_letters.path.clone(), tables })
}

/// The state of one `plan`: problems found so far, and every output known so far with its schema.
struct Planner<'a> {
    file: &'a PipelineFile,
    registry: &'a Registry,
    errors: Vec<Diagnostic>,
    outputs: BTreeMap<String, SchemaRef>,
}

impl<'a> Planner<'a> {
    fn check(&mut self) -> Result<(), Diagnostics> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(Diagnostics(std::mem::take(&mut self.errors)))
        }
    }

    /// 1. Types, and every source's outputs (its schema is known from its config alone).
    fn declare(&mut self) -> (Vec<PlannedSource>, HashMap<String, SqlTransformConfig>) {
        let file = self.file;
        let mut sources = Vec::new();
        let mut sqls: HashMap<String, SqlTransformConfig> = HashMap::new();
        for c in &file.components {
            let mut cfg = ComponentConfig::new(c.id.clone(), c.options.clone());
            match c.kind {
                Kind::Source => match self.registry.source(&c.type_name) {
                    None => self.errors.push(unknown_type(file, c, &self.registry.source_types())),
                    Some(plugin) => match source_buffer(&mut cfg).and_then(|buffer| Ok((plugin.build(&cfg)?, buffer))) {
                        Ok((built, buffer)) => {
                            for o in &built.outputs {
                                self.outputs.insert(output_name(&c.id, &o.name), o.schema.clone());
                            }
                            sources.push(PlannedSource {
                                id: c.id.clone(),
                                type_name: c.type_name.clone(),
                                outputs: built.outputs,
                                source: built.source,
                                buffer,
                            });
                        }
                        Err(e) => self.errors.push(file.component_diag(c, &e)),
                    },
                },
                Kind::Transform => {
                    if c.type_name != "sql" {
                        self.errors.push(unknown_type(file, c, &["sql"]));
                        continue;
                    }
                    match cfg.decode::<SqlTransformConfig>() {
                        Ok(t) => {
                            sqls.insert(c.id.clone(), t);
                        }
                        Err(e) => self.errors.push(file.component_diag(c, &e)),
                    }
                }
                Kind::Sink => {
                    if self.registry.sink(&c.type_name).is_none() {
                        self.errors.push(unknown_type(file, c, &self.registry.sink_types()));
                    }
                }
            }
            self.outputs.insert(output_name(&c.id, DEAD_LETTER_OUTPUT), dead_letter_schema());
        }
        (sources, sqls)
    }

    /// 1b. Tables: options checked, schemas known (a file's read from it unless declared). A
    /// latest table that keeps what is not a source's output is returned apart, to be planned
    /// once its input is (`plan_transforms`).
    async fn plan_tables(&mut self) -> (Vec<PlannedTable>, Vec<KeptLater<'a>>) {
        let file: &'a PipelineFile = self.file;
        let mut tables = Vec::new();
        let mut kept_later = Vec::new();
        for decl in &file.tables {
            match crate::tables::latest_input(decl) {
                Some(input) if !self.outputs.contains_key(&input) => kept_later.push(KeptLater { decl, input }),
                _ => {
                    if let Some(t) = self.plan_table(decl).await {
                        tables.push(t);
                    }
                }
            }
        }
        (tables, kept_later)
    }

    async fn plan_table(&mut self, decl: &crate::config::TableDecl) -> Option<PlannedTable> {
        match crate::tables::plan(decl, &self.outputs).await {
            Ok(t) => Some(t),
            Err(e) => {
                let inner = tributary_sdk::config::path_to_string(&e.path);
                let at = if inner.is_empty() { format!("tables.{}", decl.name) } else { format!("tables.{}.{inner}", decl.name) };
                self.errors.push(self.file.diag(&at, e.message));
                None
            }
        }
    }

    /// 2. Inputs name existing outputs (a transform's, a source's, `<id>.late` of a windowed one).
    fn resolve_inputs(&mut self, sqls: &HashMap<String, SqlTransformConfig>) -> HashMap<String, Vec<InputRef>> {
        let file = self.file;
        let mut inputs: HashMap<String, Vec<InputRef>> = HashMap::new();
        for c in file.components.iter().filter(|c| c.kind != Kind::Source) {
            let mut refs = Vec::new();
            for (i, name) in c.inputs.iter().enumerate() {
                let (component, output) = name.split_once('.').unwrap_or((name.as_str(), ""));
                let windowed = sqls.get(component).is_some_and(|t| t.window.is_some() || t.interval_join.is_some());
                let exists = self.outputs.contains_key(name)
                    || file.get(component).is_some_and(|d| d.kind == Kind::Transform && output.is_empty())
                    || (windowed && output == LATE_OUTPUT);
                if exists {
                    refs.push(InputRef { name: name.clone(), component: component.to_string(), output: output.to_string() });
                } else {
                    let what = unknown_input(file, &self.outputs, name);
                    self.errors.push(file.diag(&format!("{}.{}.inputs[{i}]", c.kind.section(), c.id), what));
                }
            }
            inputs.insert(c.id.clone(), refs);
        }
        inputs
    }

    /// 3. SQL plans against its inputs' schemas, in dependency order.
    async fn plan_transforms(
        &mut self,
        order: &[String],
        inputs: &HashMap<String, Vec<InputRef>>,
        sqls: &HashMap<String, SqlTransformConfig>,
        tables: &mut Vec<PlannedTable>,
        mut kept_later: Vec<KeptLater<'_>>,
    ) -> Vec<PlannedTransform> {
        let file = self.file;
        let mut transforms = Vec::new();
        for id in order.iter().filter(|id| sqls.contains_key(*id)) {
            // Latest tables over the outputs planned so far (order puts their readers after them).
            for later in extract_if(&mut kept_later, |k| self.outputs.contains_key(&k.input)) {
                tables.extend(self.plan_table(later.decl).await);
            }
            let lookups: Vec<Arc<LookupTable>> = tables.iter().map(|t| t.table.clone()).collect();
            let lookups = &lookups[..];
            let refs = inputs[id].clone();
            let tables: Vec<(String, SchemaRef)> = refs.iter().map(|r| (r.name.clone(), self.outputs[&r.name].clone())).collect();
            let cfg = &sqls[id];
            let window = match &cfg.window {
                None => None,
                Some(w) => match WindowSpec::from_config(w).and_then(|spec| {
                    window::check_inputs(&spec, &tables)?;
                    let late_schema = window::late_schema(&tables)?;
                    Ok(WindowPlan { spec, inputs: tables.clone(), late_schema, exactly_once: false, repartitioned: None })
                }) {
                    Ok(p) => Some(p),
                    Err(msg) => {
                        self.errors.push(file.diag(&format!("transforms.{id}.window"), msg));
                        continue;
                    }
                },
            };
            let interval = match (&cfg.interval_join, &window) {
                (None, _) => None,
                (Some(_), Some(_)) => {
                    self.errors.push(file.diag(
                        &format!("transforms.{id}.interval_join"),
                        "a transform has either `window:` or `interval_join:`, not both".into(),
                    ));
                    continue;
                }
                (Some(c), None) => match IntervalSpec::new(c, &tables).and_then(|spec| {
                    let late_schema = window::late_schema(&tables)?;
                    Ok(IntervalPlan { spec, inputs: tables.clone(), late_schema })
                }) {
                    Ok(p) => Some(p),
                    Err(msg) => {
                        self.errors.push(file.diag(&format!("transforms.{id}.interval_join"), msg));
                        continue;
                    }
                },
            };
            let sql_tables: Vec<(String, SchemaRef)> = match &window {
                None => tables.clone(),
                Some(_) => tables.iter().map(|(n, s)| (n.clone(), window::windowed_input_schema(s))).collect(),
            };
            match SqlTransform::plan(&cfg.sql, &sql_tables, lookups).await {
                Ok(sql) if interval.is_some() && sql.joined_inputs().is_none() => {
                    self.errors.push(file.diag(
                        &format!("transforms.{id}.sql"),
                        format!(
                            "an interval join's SQL joins its two inputs (`{}` and `{}`), on their time columns and anything else",
                            tables[0].0, tables[1].0
                        ),
                    ));
                }
                Ok(sql) if window.is_none() && interval.is_none() && sql.joined_inputs().is_some() => {
                    let (a, b) = sql.joined_inputs().expect("checked");
                    self.errors.push(file.diag(
                        &format!("transforms.{id}.sql"),
                        format!(
                            "joins `{a}` with `{b}`, which only works in a windowed transform: without `window:` the SQL runs once \
                             per arriving batch, which holds rows of one input only, so the join would never match. Add \
                             `window: {{tumbling: 1m}}` (any window) to join the rows of each window, or `interval_join: {{within: 30s}}` \
                             to pair rows whose times are that close; to merge inputs, use UNION ALL"
                        ),
                    ));
                }
                Ok(sql) => {
                    let schema = sql.output_schema();
                    match &window {
                        Some(w) => {
                            if schema.field_with_name(window::PARTIAL).is_ok() {
                                self.errors.push(file.diag(
                                    &format!("transforms.{id}.sql"),
                                    format!(
                                        "a windowed transform adds the `{}` column itself; rename the SQL's `{}`",
                                        window::PARTIAL,
                                        window::PARTIAL
                                    ),
                                ));
                                continue;
                            }
                            self.outputs.insert(id.clone(), window::windowed_output_schema(&schema));
                            self.outputs.insert(output_name(id, LATE_OUTPUT), w.late_schema.clone());
                        }
                        None => {
                            if let Some(i) = &interval {
                                self.outputs.insert(output_name(id, LATE_OUTPUT), i.late_schema.clone());
                            }
                            self.outputs.insert(id.clone(), schema);
                        }
                    }
                    transforms.push(PlannedTransform { id: id.clone(), inputs: refs, sql, window, interval });
                }
                Err(e) => {
                    let available: Vec<String> =
                        sql_tables.iter().map(|(n, _)| n).chain(lookups.iter().map(|t| &t.name)).map(|n| format!("`{n}`")).collect();
                    self.errors.push(file.diag(
                        &format!("transforms.{id}.sql"),
                        format!("SQL does not plan: {} (tables: {})", clean_df_error(&e.to_string()), available.join(", ")),
                    ));
                }
            }
        }
        // Those over the last transforms' outputs, and those whose input names no output (the
        // error lists every output).
        for later in kept_later {
            tables.extend(self.plan_table(later.decl).await);
        }
        transforms
    }

    /// 4. Sinks know their input schemas.
    fn build_sinks(&mut self, inputs: &HashMap<String, Vec<InputRef>>) -> Vec<PlannedSink> {
        let file = self.file;
        let mut sinks = Vec::new();
        for c in file.components.iter().filter(|c| c.kind == Kind::Sink) {
            let refs = inputs[&c.id].clone();
            let schemas: Vec<(String, SchemaRef)> = refs.iter().map(|r| (r.name.clone(), self.outputs[&r.name].clone())).collect();
            let plugin = self.registry.sink(&c.type_name).expect("checked");
            let mut options = c.options.clone();
            let retry = match options.as_mapping_mut().and_then(|m| m.remove("retry")) {
                None => SinkRetry::default(),
                Some(value) => match ComponentConfig::new(c.id.clone(), value).decode::<SinkRetry>() {
                    Ok(retry) => retry,
                    Err(e) => {
                        self.errors.push(file.component_diag(c, &e.within("retry")));
                        continue;
                    }
                },
            };
            let guarantee = match delivery::sink_guarantee(&c.id, &mut options, file.delivery) {
                Ok(guarantee) => guarantee,
                Err(e) => {
                    self.errors.push(file.component_diag(c, &e));
                    continue;
                }
            };
            // Its streams are filled in once every path into it is known (`check_exactly_once`).
            let exactly_once = (guarantee == Guarantee::ExactlyOnce).then(ExactlyOnce::default);
            match plugin.build(&ComponentConfig::new(c.id.clone(), options), &schemas) {
                Ok(sink) => {
                    sinks.push(PlannedSink { id: c.id.clone(), type_name: c.type_name.clone(), inputs: refs, sink, retry, exactly_once })
                }
                Err(e) => self.errors.push(file.component_diag(c, &e)),
            }
        }
        sinks
    }
}

impl Planner<'_> {
    /// Step 3b: a windowed transform's `partition_by` asks the source it reads to re-key its rows
    /// across the instances sharing it (see `tributary_sdk::repartition`).
    fn plan_repartitions(
        &mut self,
        sources: &mut [PlannedSource],
        transforms: &mut [PlannedTransform],
        sqls: &HashMap<String, SqlTransformConfig>,
    ) {
        let file = self.file;
        for t in transforms.iter_mut() {
            let by = &sqls[&t.id].partition_by;
            if by.is_empty() {
                continue;
            }
            let at = format!("transforms.{}.partition_by", t.id);
            let Some(window) = &mut t.window else {
                self.errors.push(file.diag(&at, "`partition_by` keys a window's rows; this transform has no `window:`".into()));
                continue;
            };
            if let Some((input, c)) =
                window.inputs.iter().find_map(|(n, s)| by.iter().find(|c| s.field_with_name(c).is_err()).map(|c| (n, c)))
            {
                self.errors.push(file.diag(&at, format!("input `{input}` has no column `{c}`")));
                continue;
            }
            let source = match &t.inputs[..] {
                [r] if r.output.is_empty() => sources.iter_mut().find(|s| s.id == r.component),
                _ => None,
            };
            let Some(source) = source else {
                let names: Vec<String> = t.inputs.iter().map(|r| format!("`{}`", r.name)).collect();
                self.errors.push(file.diag(
                    &at,
                    format!(
                        "rows are re-keyed as they leave a source, so a transform with `partition_by` reads one source's main output (it reads {}); put the window's filters in its own SQL",
                        names.join(", ")
                    ),
                ));
                continue;
            };
            let ask = tributary_sdk::Repartition { transform: t.id.clone(), by: by.clone() };
            match source.source.repartition(&ask) {
                Ok(how) => window.repartitioned = how,
                Err(why) => self.errors.push(file.diag(&at, format!("source `{}` cannot re-key its rows by it: {why}", source.id))),
            }
        }
    }

    /// Step 5: every exactly-once sink can be written exactly once on every path into it, and
    /// learns its streams. A problem is reported where `delivery: exactly_once` was asked for:
    /// the sink's own, or the top level.
    fn check_exactly_once(&mut self, sinks: &mut [PlannedSink], sources: &[PlannedSource], transforms: &mut [PlannedTransform]) {
        let file = self.file;
        for sink in sinks.iter_mut().filter(|s| s.exactly_once.is_some()) {
            match delivery::streams(sink, sources, transforms) {
                Ok(streams) => sink.exactly_once = Some(ExactlyOnce { streams }),
                Err(why) => {
                    let own = file.get(&sink.id).and_then(|c| c.options.get("delivery")).is_some();
                    let at = if own { format!("sinks.{}.delivery", sink.id) } else { "delivery".to_string() };
                    self.errors.push(file.diag(&at, why));
                }
            }
        }
        let streams: std::collections::BTreeSet<&str> =
            sinks.iter().filter_map(|s| s.exactly_once.as_ref()).flat_map(|e| e.streams.iter().map(|s| &**s)).collect();
        for t in transforms {
            if let Some(window) = &mut t.window {
                window.exactly_once = streams.contains(t.id.as_str());
            }
        }
    }
}

/// A latest table over an output not yet planned when the tables are: a transform's.
struct KeptLater<'a> {
    decl: &'a crate::config::TableDecl,
    input: String,
}

/// The elements of `v` that `pred` picks, taken out in order (`Vec::extract_if` without its range).
fn extract_if<T>(v: &mut Vec<T>, mut pred: impl FnMut(&T) -> bool) -> Vec<T> {
    let (taken, kept) = std::mem::take(v).into_iter().partition(|x| pred(x));
    *v = kept;
    taken
}

/// `inputs`, plus an edge from every transform whose SQL reads a latest table in `kept_later` to
/// the component that feeds that table: planning (and a cycle check) then treats reading the
/// table like reading its input.
fn with_table_edges(
    inputs: &HashMap<String, Vec<InputRef>>,
    sqls: &HashMap<String, SqlTransformConfig>,
    kept_later: &[KeptLater<'_>],
) -> HashMap<String, Vec<InputRef>> {
    let mut edges = inputs.clone();
    for (id, cfg) in sqls {
        let read = crate::sql::referenced_tables(&cfg.sql);
        for later in kept_later.iter().filter(|k| read.contains(&k.decl.name)) {
            let (component, output) = later.input.split_once('.').unwrap_or((later.input.as_str(), ""));
            let edge = InputRef { name: later.input.clone(), component: component.to_string(), output: output.to_string() };
            edges.entry(id.clone()).or_default().push(edge);
        }
    }
    edges
}

/// The engine's sink that keeps a `latest` table, named after it, and its declaration (so runs,
/// reloads, graphs and metrics see it like any sink).
fn table_sink(t: &PlannedTable) -> Option<(PlannedSink, ComponentDecl)> {
    let key = t.kept_by.clone()?;
    let (component, output) = key.input.split_once('.').unwrap_or((key.input.as_str(), ""));
    let input = InputRef { name: key.input.clone(), component: component.to_string(), output: output.to_string() };
    let decl = ComponentDecl {
        id: t.name().to_string(),
        kind: Kind::Sink,
        type_name: crate::tables::LATEST_TABLE_SINK.to_string(),
        inputs: vec![key.input.clone()],
        options: t.decl.options.clone(),
    };
    let sink = PlannedSink {
        id: t.name().to_string(),
        type_name: crate::tables::LATEST_TABLE_SINK.to_string(),
        inputs: vec![input],
        sink: Box::new(crate::tables::LatestTableSink { table: t.table.clone(), key }),
        retry: SinkRetry::default(),
        exactly_once: None,
    };
    Some((sink, decl))
}

fn unknown_type(file: &PipelineFile, c: &ComponentDecl, valid: &[&str]) -> Diagnostic {
    file.diag(
        &format!("{}.{}.type", c.kind.section(), c.id),
        format!("unknown {} type `{}`, expected one of {}", c.kind.label(), c.type_name, quoted(valid)),
    )
}

fn unknown_input(file: &PipelineFile, outputs: &BTreeMap<String, SchemaRef>, name: &str) -> String {
    let mut valid: Vec<String> = outputs.keys().filter(|k| !k.ends_with(".dead_letter")).cloned().collect();
    valid.extend(file.components.iter().filter(|c| c.kind == Kind::Transform).map(|c| c.id.clone()));
    valid.sort();
    valid.dedup();
    let list: Vec<&str> = valid.iter().map(String::as_str).collect();
    format!("unknown input `{name}`, expected one of {} (or `<id>.dead_letter`)", quoted(&list))
}

/// Components in dependency order, or the first cycle found.
fn topo_order(file: &PipelineFile, inputs: &HashMap<String, Vec<InputRef>>) -> Result<Vec<String>, Diagnostic> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Active,
        Done,
    }
    fn visit(
        id: &str,
        inputs: &HashMap<String, Vec<InputRef>>,
        marks: &mut HashMap<String, Mark>,
        stack: &mut Vec<String>,
        order: &mut Vec<String>,
    ) -> Result<(), Vec<String>> {
        match marks.get(id).copied().unwrap_or(Mark::New) {
            Mark::Done => return Ok(()),
            Mark::Active => {
                let start = stack.iter().position(|s| s == id).expect("on stack");
                let mut cycle = stack[start..].to_vec();
                cycle.push(id.to_string());
                return Err(cycle);
            }
            Mark::New => {}
        }
        marks.insert(id.to_string(), Mark::Active);
        stack.push(id.to_string());
        for r in inputs.get(id).into_iter().flatten() {
            visit(&r.component, inputs, marks, stack, order)?;
        }
        stack.pop();
        marks.insert(id.to_string(), Mark::Done);
        order.push(id.to_string());
        Ok(())
    }
    let mut marks = HashMap::new();
    let mut order = Vec::new();
    for c in &file.components {
        let mut stack = Vec::new();
        if let Err(cycle) = visit(&c.id, inputs, &mut marks, &mut stack, &mut order) {
            // Report where the component that closes the cycle reads its next: its `inputs:`, or
            // its SQL when it reads a latest table kept from it.
            let closer = file.get(&cycle[cycle.len() - 2]).expect("declared");
            let read = |from: &String, to: &String| closer_reads_input(file, from, to);
            let through_table = cycle.windows(2).any(|w| !read(&w[0], &w[1]));
            let key = if read(&cycle[cycle.len() - 2], &cycle[cycle.len() - 1]) { "inputs" } else { "sql" };
            let why = if through_table {
                "a transform may not read a latest table kept from its own output, directly or indirectly"
            } else {
                "a component may not consume its own output, directly or indirectly"
            };
            return Err(file.diag(
                &format!("{}.{}.{key}", closer.kind.section(), closer.id),
                format!("cycle in the pipeline graph: {} ({why})", cycle.iter().rev().cloned().collect::<Vec<_>>().join(" → ")),
            ));
        }
    }
    Ok(order)
}

/// `from` names an output of `to` in its `inputs:` (and does not just read a table kept from it).
fn closer_reads_input(file: &PipelineFile, from: &str, to: &str) -> bool {
    file.get(from).is_some_and(|c| c.inputs.iter().any(|i| i.split_once('.').map_or(i.as_str(), |(c, _)| c) == to))
}

/// DataFusion prefixes errors with their category; keep the part a user acts on.
fn clean_df_error(s: &str) -> String {
    let s = s.trim();
    let s = s.strip_prefix("Error during planning: ").unwrap_or(s);
    s.split("\nCaused by").next().unwrap_or(s).trim().to_string()
}

#[cfg(test)]
mod tests;
