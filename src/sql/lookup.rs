//! Lookup tables inside SQL transforms: a table's rows are pinned once per execution (so a join
//! never sees half of a refresh), the table is always the hash join's build side, and that build
//! (the hash table over every row) is kept between executions until the table is refreshed.
//!
//! Without the last two, a 1M-row table joined per arriving batch would be scanned, or hashed
//! again, for every batch of a few thousand events.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::JoinType;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};
use datafusion::physical_plan::streaming::StreamingTableExec;
use datafusion::physical_plan::ExecutionPlan;

/// Every snapshot of every table gets its own number, so "the same version" means the same rows.
static NEXT_VERSION: AtomicU64 = AtomicU64::new(1);

/// One complete set of a table's rows.
#[derive(Debug)]
pub struct Snapshot {
    pub version: u64,
    pub batches: Vec<RecordBatch>,
    pub rows: usize,
    /// Memory the rows take (Arrow buffers).
    pub bytes: usize,
}

impl Snapshot {
    fn new(batches: Vec<RecordBatch>) -> Snapshot {
        let rows = batches.iter().map(RecordBatch::num_rows).sum();
        let bytes = batches.iter().map(RecordBatch::get_array_memory_size).sum();
        Snapshot { version: NEXT_VERSION.fetch_add(1, Ordering::Relaxed), batches, rows, bytes }
    }
}

/// Where a table's current snapshot is kept; shared by every plan of a run that reads the table.
#[derive(Debug)]
struct Cell(RwLock<Arc<Snapshot>>);

/// A named reference table as SQL transforms see it: a schema, and whatever snapshot is current.
#[derive(Debug)]
pub struct LookupTable {
    pub name: String,
    pub schema: SchemaRef,
    cell: Mutex<Arc<Cell>>,
}

impl LookupTable {
    /// An empty table (version 0) until its first load.
    pub fn new(name: String, schema: SchemaRef) -> LookupTable {
        let empty = Snapshot { version: 0, batches: Vec::new(), rows: 0, bytes: 0 };
        LookupTable { name, schema, cell: Mutex::new(Arc::new(Cell(RwLock::new(Arc::new(empty))))) }
    }

    fn cell(&self) -> Arc<Cell> {
        self.cell.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The rows a query sees now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.cell().0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Make `batches` the table's rows, at once for every query that starts after; returns the
    /// new snapshot. Each batch must have the table's schema.
    pub fn replace(&self, batches: Vec<RecordBatch>) -> Arc<Snapshot> {
        let snapshot = Arc::new(Snapshot::new(batches));
        *self.cell().0.write().unwrap_or_else(|e| e.into_inner()) = snapshot.clone();
        snapshot
    }

    /// Read `running`'s rows from now on, including its later refreshes: a reloaded plan's table
    /// takes over the loaded one instead of loading again.
    pub fn adopt(&self, running: &LookupTable) {
        *self.cell.lock().unwrap_or_else(|e| e.into_inner()) = running.cell();
    }
}

/// Address of a partition stream, to recognise a lookup table's scan in a physical plan.
pub(super) fn stream_address<T: ?Sized>(stream: &Arc<T>) -> usize {
    Arc::as_ptr(stream) as *const () as usize
}

/// Whether every scan under `plan` reads one of the `lookups` streams (and there is one).
fn reads_only_lookups(plan: &Arc<dyn ExecutionPlan>, lookups: &[usize]) -> bool {
    let (mut lookup, mut other) = (false, false);
    let _ = plan.apply(|node| {
        if let Some(scan) = node.downcast_ref::<StreamingTableExec>() {
            for p in scan.partitions() {
                if lookups.contains(&stream_address(p)) {
                    lookup = true;
                } else {
                    other = true;
                }
            }
        } else if node.children().is_empty() {
            // Any other leaf (VALUES, an empty relation) is not a table we keep.
            other = true;
        }
        Ok(TreeNodeRecursion::Continue)
    });
    lookup && !other
}

/// A hash join whose build side reads lookup tables only, and whose result needs no pass over the
/// build side after probing (which a kept build could not repeat).
fn keeps_build(join: &HashJoinExec, lookups: &[usize]) -> bool {
    join.partition_mode() == &PartitionMode::CollectLeft
        && !matches!(join.join_type(), JoinType::Left | JoinType::LeftAnti | JoinType::LeftSemi | JoinType::LeftMark | JoinType::Full)
        && reads_only_lookups(join.left(), lookups)
}

/// Physical rule: put the lookup table on a hash join's build side. DataFusion picks sides by
/// statistics, which a stream's batch does not have, so it would keep the SQL's order and hash the
/// arriving batch while scanning the whole table for every batch.
#[derive(Debug)]
pub(super) struct LookupBuildSide {
    pub lookups: Vec<usize>,
}

impl PhysicalOptimizerRule for LookupBuildSide {
    fn optimize(&self, plan: Arc<dyn ExecutionPlan>, _config: &ConfigOptions) -> DfResult<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let Some(join) = node.downcast_ref::<HashJoinExec>() else { return Ok(Transformed::no(node)) };
            let build_is_table = reads_only_lookups(join.left(), &self.lookups);
            let probe_is_table = reads_only_lookups(join.right(), &self.lookups);
            if probe_is_table && !build_is_table {
                Ok(Transformed::yes(join.swap_inputs(PartitionMode::CollectLeft)?))
            } else if build_is_table && join.partition_mode() != &PartitionMode::CollectLeft {
                let collect_left = join.builder().with_partition_mode(PartitionMode::CollectLeft).build_exec()?;
                Ok(Transformed::yes(collect_left))
            } else {
                Ok(Transformed::no(node))
            }
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "lookup_build_side"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// `plan` ready for another execution: every operator's state reset, except the hash tables
/// built over lookup tables, which the new plan shares with `plan`.
pub(super) fn reset_keeping_lookup_builds(plan: Arc<dyn ExecutionPlan>, lookups: &[usize]) -> DfResult<Arc<dyn ExecutionPlan>> {
    plan.transform_up(|node| {
        // Its children were replaced already, through `with_new_children`, which keeps the build.
        if node.downcast_ref::<HashJoinExec>().is_some_and(|j| keeps_build(j, lookups)) {
            return Ok(Transformed::yes(node));
        }
        Ok(Transformed::yes(node.reset_state()?))
    })
    .map(|t| t.data)
}
