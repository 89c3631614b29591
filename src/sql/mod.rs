//! SQL transforms on DataFusion: planned once, executed per batch.
//!
//! Each input (`probes`, or `webex.utilization` for a named output) is a table whose contents are
//! swapped in before every execution. The physical plan is built once at validate time — that is
//! also how the output schema is known before anything runs — and re-executed per batch after
//! resetting operator state (dynamic filter pushdown is off, because its filters would carry over
//! between executions).

mod json_path;
pub mod limits;
pub mod window;

use std::sync::{Arc, Mutex};

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::streaming::StreamingTable;
use datafusion::catalog::{MemorySchemaProvider, SchemaProvider};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::Result as DfResult;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{LogicalPlan, ScalarUDF};
use datafusion::physical_plan::execution_plan::reset_plan_states;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use datafusion::physical_plan::{collect, ExecutionPlan, SendableRecordBatchStream};
use datafusion::prelude::{SessionConfig, SessionContext};

pub use json_path::JsonPathUdf;

/// The rows one input table shows during an execution.
#[derive(Debug)]
struct InputSlot {
    schema: SchemaRef,
    rows: Mutex<Vec<RecordBatch>>,
}

impl PartitionStream for InputSlot {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }
    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let rows = self.rows.lock().expect("slot lock").clone();
        Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), futures::stream::iter(rows.into_iter().map(Ok))))
    }
}

/// A session with Tributary's settings and functions.
pub fn session() -> SessionContext {
    let mut config = SessionConfig::new().with_target_partitions(1).with_batch_size(8192);
    let opts = config.options_mut();
    opts.optimizer.enable_dynamic_filter_pushdown = false;
    opts.optimizer.enable_topk_dynamic_filter_pushdown = false;
    opts.optimizer.enable_join_dynamic_filter_pushdown = false;
    opts.optimizer.enable_aggregate_dynamic_filter_pushdown = false;
    let ctx = SessionContext::new_with_config(config);
    ctx.register_udf(ScalarUDF::from(JsonPathUdf::new()));
    ctx
}

/// The dead-letter reason for rows of input `input` the SQL failed on.
pub fn failure_reason(input: &str, err: &datafusion::error::DataFusionError) -> String {
    format!("SQL failed on input `{input}`: {err}")
}

/// A planned SQL transform.
pub struct SqlTransform {
    plan: Arc<dyn ExecutionPlan>,
    slots: Vec<Arc<InputSlot>>,
    task_ctx: Arc<TaskContext>,
    joined_inputs: Option<(String, String)>,
}

/// The first two different tables that one join of `plan` combines (its two sides, or one side
/// reading two tables). Read from the optimized plan, where `IN (SELECT …)` and scalar subqueries
/// have become joins too.
fn joined_tables(plan: &LogicalPlan) -> Option<(String, String)> {
    let mut found = None;
    let _ = plan.apply_with_subqueries(|node| {
        if matches!(node, LogicalPlan::Join(_)) {
            let mut tables = std::collections::BTreeSet::new();
            let _ = node.apply_with_subqueries(|n| {
                if let LogicalPlan::TableScan(scan) = n {
                    tables.insert(scan.table_name.to_string());
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

impl SqlTransform {
    /// Plan `sql` over `inputs` (table name, schema). Errors are DataFusion's messages.
    pub async fn plan(sql: &str, inputs: &[(String, SchemaRef)]) -> DfResult<Self> {
        limits::check(sql).map_err(datafusion::error::DataFusionError::Plan)?;
        let ctx = session();
        let mut slots = Vec::new();
        for (name, schema) in inputs {
            let slot = Arc::new(InputSlot { schema: schema.clone(), rows: Mutex::new(Vec::new()) });
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
        let joined_inputs = joined_tables(&df.clone().into_optimized_plan()?);
        let plan = df.create_physical_plan().await?;
        Ok(SqlTransform { plan, slots, task_ctx: ctx.task_ctx(), joined_inputs })
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

    /// Run the query with the given contents per input index (unlisted inputs are empty).
    pub async fn execute_with(&self, contents: &[(usize, Vec<RecordBatch>)]) -> DfResult<Vec<RecordBatch>> {
        for slot in &self.slots {
            slot.rows.lock().expect("slot lock").clear();
        }
        for (i, rows) in contents {
            *self.slots[*i].rows.lock().expect("slot lock") = rows.clone();
        }
        let plan = reset_plan_states(self.plan.clone())?;
        let out = collect(plan, self.task_ctx.clone()).await;
        for slot in &self.slots {
            slot.rows.lock().expect("slot lock").clear();
        }
        Ok(out?.into_iter().filter(|b| b.num_rows() > 0).collect())
    }
}

#[cfg(test)]
mod tests;
