//! A windowed transform's open windows: one operator, or, for a repartitioned window
//! (`partition_by`), one per partition of the re-keyed stream.
//!
//! Per partition, because a partition moves between the instances of a consumer group. Its
//! windows move with it:
//! - **The member losing it** drops that partition's open windows, and their rows' acks with
//!   them. So it emits no partial row for them, and the source commits only up to those rows.
//! - **The new owner** reads the partition again from that commit. It rebuilds the windows from
//!   the rows. Exactly once, it first asks the sinks how far the partition's windows were
//!   written, and so emits nothing twice.
//!
//! Each partition's emissions are a stream of their own, `<transform>/<partition's stream>`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use anyhow::Context;
use datafusion::arrow::datatypes::SchemaRef;
use tributary_sdk::{Position, SinkPositions};

use super::windowed::{format_micros, EMISSION_EPOCH};
use crate::graph::PlannedTransform;
use crate::sql::window::{Accepted, Emission, WindowOperator, WindowSpec};
use crate::sql::SqlTransform;

/// An emission and, kept per partition, the stream its position belongs to.
pub(super) type Emitted = (Option<Arc<str>>, Option<Emission>);

/// What a new operator of one transform version is made of.
pub(super) struct Template {
    spec: WindowSpec,
    sql: Arc<SqlTransform>,
    pub inputs: Vec<(String, SchemaRef)>,
    late_schema: SchemaRef,
}

impl Template {
    pub fn of(t: PlannedTransform) -> anyhow::Result<Template> {
        let plan = t.window.with_context(|| format!("transform `{}` has no window", t.id))?;
        Ok(Template { spec: plan.spec, sql: Arc::new(t.sql), inputs: plan.inputs, late_schema: plan.late_schema })
    }

    fn make(&self, now: i64) -> anyhow::Result<WindowOperator> {
        Ok(WindowOperator::new(self.spec.clone(), self.sql.clone(), &self.inputs, self.late_schema.clone(), now)?)
    }
}

pub(super) enum Windows {
    One {
        template: Template,
        op: Box<WindowOperator>,
    },
    PerPartition {
        template: Template,
        parts: BTreeMap<Arc<str>, WindowOperator>,
        ask: SinkPositions,
        /// Partitions revoked and not assigned again: their batches still on the way are dropped
        /// (once assigned again, the source's withdrawal of those batches says it: see `of`).
        lost: BTreeSet<Arc<str>>,
    },
}

impl Windows {
    pub fn new(template: Template, per_partition: bool, ask: SinkPositions, now: i64) -> anyhow::Result<Windows> {
        Ok(if per_partition {
            Windows::PerPartition { template, parts: BTreeMap::new(), ask, lost: BTreeSet::new() }
        } else {
            let op = Box::new(template.make(now)?);
            Windows::One { template, op }
        })
    }

    /// The operator a batch at `position` goes to, and its emissions' stream when kept per
    /// partition; `None` for a partition revoked since, or a batch its source `withdrawn` (its
    /// partition was revoked and assigned back: the batch is read again from the commit). Exactly
    /// once, a partition new to this process first learns where the sinks stopped.
    pub async fn of(
        &mut self,
        position: Option<&Position>,
        withdrawn: bool,
        id: &str,
        now: i64,
    ) -> anyhow::Result<Option<(Option<Arc<str>>, &mut WindowOperator)>> {
        match self {
            Windows::One { op, .. } => Ok(Some((None, op.as_mut()))),
            Windows::PerPartition { template, parts, ask, lost } => {
                let part: Arc<str> = match position {
                    Some(p) => Arc::from(format!("{id}/{}", p.stream)),
                    None => Arc::from(id),
                };
                if withdrawn || lost.contains(&part) {
                    return Ok(None);
                }
                if !parts.contains_key(&part) && ask.is_empty() {
                    parts.insert(part.clone(), template.make(now)?);
                }
                if !parts.contains_key(&part) {
                    let mut op = template.make(now)?;
                    let written = ask
                        .written(std::slice::from_ref(&part))
                        .await
                        .context("asking the exactly-once sinks where the partition's windows stopped")?;
                    let through: Vec<Option<i64>> =
                        written.iter().map(|w| w.seq_in(&part, EMISSION_EPOCH).map(|s| i64::try_from(s).unwrap_or(i64::MAX))).collect();
                    op.resume(&through);
                    let said: Vec<String> = through.iter().map(|w| w.map_or("nothing".into(), format_micros)).collect();
                    tracing::info!(transform = %id, partition = %part, "windows of a partition new to this instance: the sinks wrote them through {}", said.join(", "));
                    parts.insert(part.clone(), op);
                }
                let op = parts.get_mut(&part).context("inserted above")?;
                Ok(Some((Some(part), op)))
            }
        }
    }

    /// This process no longer owns the source's `stream`: its open windows are the new owner's.
    pub fn lose(&mut self, stream: &str, id: &str) {
        let Windows::PerPartition { parts, lost, .. } = self else { return };
        let part: Arc<str> = Arc::from(format!("{id}/{stream}"));
        if let Some(op) = parts.remove(&part) {
            tracing::info!(transform = %id, partition = %part, rows = op.buffered_rows(), "partition revoked: its open windows are dropped here, and its new owner builds them again");
        }
        lost.insert(part);
    }

    /// The source's `stream` is this process's (again): its batches count from here on.
    pub fn gain(&mut self, stream: &str, id: &str) {
        let Windows::PerPartition { lost, .. } = self else { return };
        lost.remove(format!("{id}/{stream}").as_str());
    }

    /// Revokes were missed (over a thousand at once): every partition's windows are dropped.
    /// Their rows' acks fail, so the source stops uncommitted and the next start reads them again.
    pub fn lose_all(&mut self, id: &str) {
        let Windows::PerPartition { parts, .. } = self else { return };
        tracing::warn!(transform = %id, partitions = parts.len(), "missed revokes: dropping every partition's open windows");
        parts.clear();
    }

    fn operators(&mut self) -> Vec<(Option<Arc<str>>, &mut WindowOperator)> {
        match self {
            Windows::One { op, .. } => vec![(None, op.as_mut())],
            Windows::PerPartition { parts, .. } => parts.iter_mut().map(|(k, op)| (Some(k.clone()), op)).collect(),
        }
    }

    pub async fn advance(&mut self, now: i64) -> anyhow::Result<Vec<Emitted>> {
        let mut out = Vec::new();
        for (part, op) in self.operators() {
            out.push((part, op.advance(now).await?));
        }
        Ok(out)
    }

    /// Every open window, as partial.
    pub async fn finish(&mut self) -> anyhow::Result<Vec<Emitted>> {
        let mut out = Vec::new();
        for (part, op) in self.operators() {
            out.push((part, op.finish().await?));
        }
        Ok(out)
    }

    pub fn buffered_rows(&self) -> usize {
        match self {
            Windows::One { op, .. } => op.buffered_rows(),
            Windows::PerPartition { parts, .. } => parts.values().map(WindowOperator::buffered_rows).sum(),
        }
    }

    pub fn hands_over_to(&mut self, inputs: &[(String, SchemaRef)]) -> bool {
        self.operators().into_iter().all(|(_, op)| op.hands_over_to(inputs))
    }

    /// A reload, exactly once: the open windows' rows go into `next`'s windows (checked with
    /// [`hands_over_to`](Self::hands_over_to)).
    pub fn take_over(&mut self, next: Template, now: i64) -> anyhow::Result<Vec<Accepted>> {
        let mut accepted = Vec::new();
        for (_, op) in self.operators() {
            let old = std::mem::replace(op, next.make(now)?);
            accepted.extend(op.take_over(old.into_open_windows(), now)?);
        }
        self.set_template(next);
        Ok(accepted)
    }

    /// Empty windows of `next` (after [`finish`](Self::finish)).
    pub fn restart(&mut self, next: Template, now: i64) -> anyhow::Result<()> {
        match self {
            Windows::One { op, .. } => **op = next.make(now)?,
            Windows::PerPartition { parts, .. } => parts.clear(),
        }
        self.set_template(next);
        Ok(())
    }

    fn set_template(&mut self, next: Template) {
        match self {
            Windows::One { template, .. } | Windows::PerPartition { template, .. } => *template = next,
        }
    }
}
