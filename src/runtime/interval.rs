//! An interval join's task: each batch pairs with the other input's kept rows at once; late rows
//! go to `.late` (or the dead letters when nothing reads it).
//!
//! A reload or a stop ends the kept rows' wait: every pair they could make with the rows that came
//! was made, so their acknowledgements are released, and a new version starts with none kept
//! (pairs of a row from before and one from after are not made).

use tokio::sync::mpsc;
use tributary_sdk::{Delivery, Work};

use super::send_sharing_acks;
use super::versions::{NewVersion, Versions};
use super::windowed::WindowOutputs;
use crate::graph::PlannedTransform;
use crate::sql::interval::IntervalJoin;

fn operator(t: PlannedTransform) -> anyhow::Result<(IntervalJoin, Vec<String>)> {
    let names = t.inputs.iter().map(|i| i.name.clone()).collect();
    let plan = t.interval.ok_or_else(|| anyhow::anyhow!("transform `{}` is no longer an interval join", t.id))?;
    Ok((IntervalJoin::new(t.sql, plan.spec, &plan.inputs, plan.late_schema), names))
}

pub(super) async fn run_interval_join(
    t: PlannedTransform,
    mut rx: mpsc::Receiver<Delivery>,
    out: WindowOutputs,
    mut replace: mpsc::UnboundedReceiver<NewVersion<PlannedTransform>>,
) -> anyhow::Result<()> {
    let mut versions = Versions::default();
    let (mut op, mut names) = operator(t)?;
    loop {
        tokio::select! {
            biased;
            Some(new) = replace.recv() => {
                let Some(new) = versions.arrive(new, &out.id) else { continue };
                for _ in 0..rx.len() {
                    let Some(delivery) = rx.recv().await else { break };
                    deliver(&mut op, &names, delivery, &out).await?;
                }
                op.finish();
                (op, names) = operator(new)?;
                tracing::info!(transform = %out.id, "reloaded: the interval join starts again with no rows kept");
            }
            delivery = rx.recv() => {
                let Some(delivery) = delivery else {
                    let Some((next, next_rx)) = versions.rewired() else { break };
                    op.finish();
                    (op, names) = operator(next)?;
                    rx = next_rx;
                    continue;
                };
                if let Some(new) = versions.due(delivery.input, &delivery.batch.data) {
                    op.finish();
                    (op, names) = operator(new)?;
                }
                deliver(&mut op, &names, delivery, &out).await?;
            }
        }
    }
    op.finish();
    Ok(())
}

/// Pair one delivery; send the pairs, the late rows and the rows without an event time.
async fn deliver(op: &mut IntervalJoin, names: &[String], delivery: Delivery, out: &WindowOutputs) -> anyhow::Result<()> {
    // Held until what this delivery produced is queued downstream (see `InFlight`).
    let Delivery { input, batch, work } = delivery;
    let _work: Work = work;
    out.metrics.rows_in.add(batch.data.num_rows() as u64);
    out.metrics.bytes_in.add(batch.data.get_array_memory_size() as u64);
    out.metrics.batches_in.inc();
    let rows = batch.data.clone();
    let joined = op.accept(input, batch.data, batch.acks).await?;
    if let Some((late, acks)) = joined.late {
        if out.late.is_unconnected() {
            let reason = format!(
                "arrived behind the interval join's watermark: the rows it could pair with are gone; wire `{}.late` to handle late rows",
                out.id
            );
            out.dead.send_rows(&late, &reason, acks).await?;
        } else {
            out.late.send(tributary_sdk::Batch::with_acks(late, acks)).await?;
        }
    }
    if let Some((untimed, acks)) = joined.untimed {
        let reason = format!("input `{}`: the row has no event time", names[input]);
        tributary_sdk::report_error!(out.metrics, debug, transform = %out.id, rows = untimed.num_rows(), "{reason}");
        out.dead.send_rows(&untimed, &reason, acks).await?;
    }
    match joined.pairs {
        None => {}
        Some((Ok(pairs), acks)) => send_sharing_acks(&out.output, pairs, acks).await?,
        Some((Err(e), acks)) => {
            let reason = crate::sql::failure_reason(&names[input], &e);
            tributary_sdk::report_error!(out.metrics, warn, transform = %out.id, "{reason}");
            out.dead.send_rows(&rows, &reason, acks).await?;
        }
    }
    Ok(())
}
