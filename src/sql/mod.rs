//! SQL transforms on DataFusion: planned once, executed per batch.
//!
//! Each input (`probes`, or `webex.utilization` for a named output) is a table whose contents are
//! swapped in before every execution. The physical plan is built once at validate time — that is
//! also how the output schema is known before anything runs — and re-executed per batch after
//! resetting operator state (dynamic filter pushdown is off, because its filters would carry over
//! between executions).

pub mod interval;
mod json_path;
pub mod limits;
pub mod lookup;
pub mod window;

use std::sync::{Arc, Mutex};

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::streaming::StreamingTable;
use datafusion::catalog::{MemorySchemaProvider, SchemaProvider};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::Result as DfResult;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{LogicalPlan, ScalarUDF};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::execution_plan::reset_plan_states;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use datafusion::physical_plan::{collect, ExecutionPlan, SendableRecordBatchStream};
use datafusion::prelude::{SessionConfig, SessionContext};

pub use json_path::JsonPathUdf;
pub use lookup::LookupTable;

/// The rows one input table shows during an execution.
#[derive(Debug)]
struct InputSlot {
    schema: SchemaRef,
    rows: Mutex<Vec<RecordBatch>>,
    /// How often a plan read it (a lookup table's build is kept: see `lookup.rs`).
    scans: std::sync::atomic::AtomicUsize,
}

impl InputSlot {
    fn new(schema: SchemaRef) -> Arc<InputSlot> {
        Arc::new(InputSlot { schema, rows: Mutex::new(Vec::new()), scans: Default::default() })
    }
}

impl PartitionStream for InputSlot {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }
    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        self.scans.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let rows = self.rows.lock().expect("slot lock").clone();
        Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), futures::stream::iter(rows.into_iter().map(Ok))))
    }
}

/// A session with Tributary's settings and functions.
pub fn session() -> SessionContext {
    session_with(Vec::new())
}

/// [`session`], with physical optimizer rules run after DataFusion's own.
fn session_with(rules: Vec<Arc<dyn PhysicalOptimizerRule + Send + Sync>>) -> SessionContext {
    let mut config = SessionConfig::new().with_target_partitions(1).with_batch_size(8192);
    let opts = config.options_mut();
    opts.optimizer.enable_dynamic_filter_pushdown = false;
    opts.optimizer.enable_topk_dynamic_filter_pushdown = false;
    opts.optimizer.enable_join_dynamic_filter_pushdown = false;
    opts.optimizer.enable_aggregate_dynamic_filter_pushdown = false;
    let mut state = SessionStateBuilder::new().with_config(config).with_default_features();
    for rule in rules {
        state = state.with_physical_optimizer_rule(rule);
    }
    let ctx = SessionContext::new_with_state(state.build());
    ctx.register_udf(ScalarUDF::from(JsonPathUdf::new()));
    ctx
}

/// The dead-letter reason for rows of input `input` the SQL failed on.
pub fn failure_reason(input: &str, err: &datafusion::error::DataFusionError) -> String {
    format!("SQL failed on input `{input}`: {err}")
}

/// An executable plan and the lookup-table versions its kept hash tables were built over.
type PreparedPlan = (Vec<u64>, Arc<dyn ExecutionPlan>);

/// A planned SQL transform.
pub struct SqlTransform {
    plan: Arc<dyn ExecutionPlan>,
    /// The inputs' slots, then the lookup tables' (in `lookups` order).
    slots: Vec<Arc<InputSlot>>,
    lookups: Vec<Arc<LookupTable>>,
    /// The lookup slots' addresses, which mark their scans in the plan.
    lookup_streams: Vec<usize>,
    /// The plan last executed and the table versions it was built over: its hash tables over
    /// lookup tables are reused while those versions stay.
    prepared: Mutex<Option<PreparedPlan>>,
    task_ctx: Arc<TaskContext>,
    joined_inputs: Option<(String, String)>,
}

/// The first two different inputs that one join of `plan` combines (its two sides, or one side
/// reading two inputs); lookup tables (`tables`) do not count. Read from the optimized plan, where
/// `IN (SELECT …)` and scalar subqueries have become joins too.
fn joined_tables(plan: &LogicalPlan, tables: &[Arc<LookupTable>]) -> Option<(String, String)> {
    let lookup_names: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
    let mut found = None;
    let _ = plan.apply_with_subqueries(|node| {
        if matches!(node, LogicalPlan::Join(_)) {
            let mut tables = std::collections::BTreeSet::new();
            let _ = node.apply_with_subqueries(|n| {
                if let LogicalPlan::TableScan(scan) = n {
                    let name = scan.table_name.to_string();
                    if !lookup_names.contains(&name.as_str()) {
                        tables.insert(name);
                    }
                }
                Ok(TreeNodeRecursion::Continue)
            });
            let mut names = tables.into_iter();
            if let (Some(a), Some(b)) = (names.next(), names.next()) {
                found = Some((a, b));
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    found
}

/// The table names `sql` reads, as written (`sites`, `mesh.cluster_details`), CTE names left out;
/// empty when it does not parse or exceeds the limits (planning then reports why). The planner
/// orders transforms by it: one that reads a table kept from another transform's output comes
/// after that transform.
pub fn referenced_tables(sql: &str) -> Vec<String> {
    if limits::check(sql).is_err() {
        return Vec::new();
    }
    let Ok(statements) = datafusion::sql::parser::DFParser::parse_sql(sql) else {
        return Vec::new();
    };
    let mut names = Vec::new();
    for statement in &statements {
        if let Ok((relations, _ctes)) = datafusion::sql::resolve::resolve_table_references(statement, true) {
            names.extend(relations.iter().map(|r| r.to_string()));
        }
    }
    names
}

impl SqlTransform {
    /// Plan `sql` over `inputs` (table name, schema) and the lookup `tables`. Errors are
    /// DataFusion's messages.
    pub async fn plan(sql: &str, inputs: &[(String, SchemaRef)], tables: &[Arc<LookupTable>]) -> DfResult<Self> {
        limits::check(sql).map_err(datafusion::error::DataFusionError::Plan)?;
        let lookup_slots: Vec<Arc<InputSlot>> = tables.iter().map(|t| InputSlot::new(t.schema.clone())).collect();
        let lookup_streams: Vec<usize> = lookup_slots.iter().map(lookup::stream_address).collect();
        let ctx = session_with(vec![Arc::new(lookup::LookupBuildSide { lookups: lookup_streams.clone() })]);
        let mut slots = Vec::new();
        let named = inputs
            .iter()
            .map(|(n, s)| (n, s, None))
            .chain(tables.iter().zip(&lookup_slots).map(|(t, slot)| (&t.name, &t.schema, Some(slot))));
        for (name, schema, lookup_slot) in named {
            let slot = match lookup_slot {
                Some(slot) => slot.clone(),
                None => InputSlot::new(schema.clone()),
            };
            let table = Arc::new(StreamingTable::try_new(schema.clone(), vec![slot.clone() as Arc<dyn PartitionStream>])?);
            match name.split_once('.') {
                None => {
                    ctx.register_table(name.as_str(), table)?;
                }
                // `source.output` → table `output` in schema `source`.
                Some((schema_name, table_name)) => {
                    let catalog = ctx.catalog("datafusion").expect("default catalog");
                    let provider = match catalog.schema(schema_name) {
                        Some(p) => p,
                        None => {
                            let p: Arc<dyn SchemaProvider> = Arc::new(MemorySchemaProvider::new());
                            catalog.register_schema(schema_name, p.clone())?;
                            p
                        }
                    };
                    provider.register_table(table_name.to_string(), table)?;
                }
            }
            slots.push(slot);
        }
        let df = ctx.sql(sql).await?;
        let joined_inputs = joined_tables(&df.clone().into_optimized_plan()?, tables);
        let plan = df.create_physical_plan().await?;
        Ok(SqlTransform {
            plan,
            slots,
            lookups: tables.to_vec(),
            lookup_streams,
            prepared: Mutex::new(None),
            task_ctx: ctx.task_ctx(),
            joined_inputs,
        })
    }

    pub fn output_schema(&self) -> SchemaRef {
        self.plan.schema()
    }

    /// Two different inputs the SQL joins, if it does. Per-batch execution shows one input's
    /// batch at a time, so such a join only matches inside a window (all inputs' rows at once).
    pub fn joined_inputs(&self) -> Option<&(String, String)> {
        self.joined_inputs.as_ref()
    }

    /// Run the query with `batch` as the contents of input `input` (other inputs empty).
    pub async fn execute(&self, input: usize, batch: RecordBatch) -> DfResult<Vec<RecordBatch>> {
        self.execute_with(&[(input, vec![batch])]).await
    }

    /// Run the query with the given contents per input index (unlisted inputs are empty), and
    /// each lookup table's current rows.
    pub async fn execute_with(&self, contents: &[(usize, Vec<RecordBatch>)]) -> DfResult<Vec<RecordBatch>> {
        for slot in &self.slots {
            slot.rows.lock().expect("slot lock").clear();
        }
        for (i, rows) in contents {
            *self.slots[*i].rows.lock().expect("slot lock") = rows.clone();
        }
        let first_lookup = self.slots.len() - self.lookups.len();
        let mut versions = Vec::with_capacity(self.lookups.len());
        for (table, slot) in self.lookups.iter().zip(&self.slots[first_lookup..]) {
            let snapshot = table.snapshot();
            versions.push(snapshot.version);
            *slot.rows.lock().expect("slot lock") = snapshot.batches.clone();
        }
        let plan = self.prepare(versions)?;
        let out = collect(plan, self.task_ctx.clone()).await;
        if out.is_err() {
            // A failed build is kept by the join too: build afresh next time.
            *self.prepared.lock().expect("prepared lock") = None;
        }
        for slot in &self.slots {
            slot.rows.lock().expect("slot lock").clear();
        }
        Ok(out?.into_iter().filter(|b| b.num_rows() > 0).collect())
    }

    /// How often each lookup table (in `plan`'s order) was read by an execution.
    #[cfg(test)]
    fn lookup_scans(&self) -> Vec<usize> {
        let first = self.slots.len() - self.lookups.len();
        self.slots[first..].iter().map(|s| s.scans.load(std::sync::atomic::Ordering::Relaxed)).collect()
    }

    /// The plan to execute over lookup tables at `versions`: with no tables, the planned one with
    /// its state reset; otherwise one that shares the hash tables built over the same versions.
    fn prepare(&self, versions: Vec<u64>) -> DfResult<Arc<dyn ExecutionPlan>> {
        if self.lookups.is_empty() {
            return reset_plan_states(self.plan.clone());
        }
        let mut prepared = self.prepared.lock().expect("prepared lock");
        let base = match &*prepared {
            Some((built_over, plan)) if *built_over == versions => plan.clone(),
            _ => {
                let fresh = reset_plan_states(self.plan.clone())?;
                *prepared = Some((versions, fresh.clone()));
                fresh
            }
        };
        lookup::reset_keeping_lookup_builds(base, &self.lookup_streams)
    }
}

#[cfg(test)]
mod lookup_tests;
#[cfg(test)]
mod tests;
