//! `delivery: exactly_once`: which sinks ask for it, and whether every path into them can give it.
//!
//! A sink is exactly-once when it stores positions with its rows, and every row reaching it
//! carries a position that says which rows are written, by one path per stream. A stream is a
//! source that can replay (a disk buffer, or a Kafka source's partitions), whose batches keep their position through SQL without
//! a window (one batch out per batch in); or a windowed transform, whose emissions carry "every
//! window ending by here" and whose own inputs all replay (see `runtime/windowed.rs`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use tributary_sdk::{ComponentConfig, ConfigError, Replay};

use super::SourceBuffer;
use super::{InputRef, PlannedSink, PlannedSource, PlannedTransform, LATE_OUTPUT};
use crate::config::Guarantee;

/// A sink's `delivery:` option, taken out of its config (the plugin never sees it); `default` is
/// the top-level one.
pub(super) fn sink_guarantee(id: &str, options: &mut serde_yaml::Value, default: Guarantee) -> Result<Guarantee, ConfigError> {
    match options.as_mapping_mut().and_then(|m| m.remove("delivery")) {
        None => Ok(default),
        Some(value) => ComponentConfig::new(id.to_string(), value).decode::<Guarantee>().map_err(|e| e.within("delivery")),
    }
}

/// The sources whose positions reach `sink` when it can be written exactly once, or why it cannot.
pub(super) fn streams(sink: &mut PlannedSink, sources: &[PlannedSource], transforms: &[PlannedTransform]) -> Result<Vec<Arc<str>>, String> {
    let streams = if sink.sink.positions().is_none() {
        Err(format!("the `{}` sink does not store positions with its rows (exactly-once sinks: `timescale`, `parquet`)", sink.type_name))
    } else {
        path_streams(&sink.inputs, sources, transforms)
    };
    streams.map_err(|why| format!("sink `{}` cannot be written exactly once: {why}; or set `delivery: at_least_once` on it", sink.id))
}

fn path_streams(inputs: &[InputRef], sources: &[PlannedSource], transforms: &[PlannedTransform]) -> Result<Vec<Arc<str>>, String> {
    let transforms: HashMap<&str, &PlannedTransform> = transforms.iter().map(|t| (t.id.as_str(), t)).collect();
    // Per stream (a source, or a windowed transform: its emissions have positions of their
    // own), the inputs through which it reaches the sink.
    let mut reached: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut todo: Vec<(&InputRef, &str)> = inputs.iter().map(|r| (r, r.name.as_str())).collect();
    while let Some((r, via)) = todo.pop() {
        if r.output == tributary_sdk::DEAD_LETTER_OUTPUT {
            return Err(format!("its input `{}` carries dead letters, which have no position in a source's stream", r.name));
        }
        if let Some(t) = transforms.get(r.component.as_str()) {
            if t.interval.is_some() {
                return Err(format!(
                    "its input `{}` comes from the interval join `{}`, whose pairs carry no position in a source's stream",
                    r.name, t.id
                ));
            }
            if t.window.is_none() {
                todo.extend(t.inputs.iter().map(|i| (i, via)));
                continue;
            }
            if r.output == LATE_OUTPUT {
                return Err(format!("its input `{}` carries late rows, which are in no emitted window and have no position", r.name));
            }
            window_inputs_replay(t, sources, &transforms)?;
            reached.entry(t.id.as_str()).or_default().push(via);
            continue;
        }
        let Some(source) = sources.iter().find(|s| s.id == r.component) else { continue };
        replays(source)?;
        reached.entry(source.id.as_str()).or_default().push(via);
    }
    if let Some((stream, via)) = reached.iter().find(|(_, via)| via.len() > 1) {
        let paths = via.len();
        let mut via = via.clone();
        via.sort();
        via.dedup();
        let kind = if transforms.contains_key(stream) { "windowed transform" } else { "source" };
        return Err(format!(
            "{kind} `{stream}` reaches it by {paths} paths (through {}), and one position per stream cannot say which path's rows were written",
            via.iter().map(|v| format!("`{v}`")).collect::<Vec<_>>().join(", ")
        ));
    }
    Ok(reached.into_keys().map(Arc::from).collect())
}

/// Whether every row reaching `window` is replayed after a crash until its windows are written
/// (they rebuild the open windows), and by one window only.
fn window_inputs_replay(
    window: &PlannedTransform,
    sources: &[PlannedSource],
    transforms: &HashMap<&str, &PlannedTransform>,
) -> Result<(), String> {
    let mut todo: Vec<&InputRef> = window.inputs.iter().collect();
    while let Some(r) = todo.pop() {
        if r.output == tributary_sdk::DEAD_LETTER_OUTPUT {
            return Err(format!(
                "windowed transform `{}` reads dead letters (`{}`), which are not replayed after a crash",
                window.id, r.name
            ));
        }
        if let Some(t) = transforms.get(r.component.as_str()) {
            if t.window.is_some() {
                return Err(format!(
                    "windowed transform `{}` reads windowed transform `{}`: one window per path can be exactly once",
                    window.id, t.id
                ));
            }
            todo.extend(t.inputs.iter());
            continue;
        }
        if let Some(source) = sources.iter().find(|s| s.id == r.component) {
            replays(source)?;
        }
    }
    Ok(())
}

/// Whether `source` sends again, after a crash, exactly what it sent before and was not written,
/// with positions a sink can store: its own (Kafka offsets), or its disk buffer's.
fn replays(source: &PlannedSource) -> Result<(), String> {
    match (source.source.replay(), &source.buffer) {
        (Replay::FromItsOwnPlace, _) => Err(format!(
            "source `{}` ({}) saves its own place once its rows are acknowledged, so after a crash it sends again rows its disk buffer had stored; its own positions are not stored by sinks yet",
            source.id, source.type_name
        )),
        (Replay::WithPositions, SourceBuffer::Disk(_)) => Err(format!(
            "source `{}` ({}) has positions of its own, which sinks store; its disk buffer would send again after a crash rows it had stored, so remove `buffer: {{type: disk}}`",
            source.id, source.type_name
        )),
        (Replay::WithPositions, SourceBuffer::Memory) => Ok(()),
        (Replay::Nothing, SourceBuffer::Memory) => Err(format!(
            "source `{}` ({}) cannot replay what it sent; give it `buffer: {{type: disk}}`, whose positions the sink stores",
            source.id, source.type_name
        )),
        (Replay::Nothing, SourceBuffer::Disk(_)) => Ok(()),
    }
}
