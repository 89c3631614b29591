//! `mode: stream` positions: a batch's position is the id of its last entry, so exactly-once
//! sinks store how far this consumer's entries are written, and a restart that reads the
//! consumer's pending entries again neither loses nor repeats one.
//!
//! Each consumer of a group reads its own entries in id order, so the positions' stream is one
//! per consumer (`<source>/<stream>/<group>/<consumer>`). Entries claimed from another consumer
//! come out of that order: they carry no position (at least once, as before).

use std::sync::Arc;

use redis::streams::StreamId;
use tributary_sdk::{Position, SourceContext};

use crate::config::StreamConfig;

/// Bits of an entry id's sequence part in a position's `seq` (the rest holds the milliseconds).
const SEQ_BITS: u32 = 22;

/// An entry id (`<ms>-<n>`) as a position's sequence number; `None` for ids beyond what 64 bits
/// hold in order (over 2^42 ms, about year 2109, or 2^22 entries in one millisecond: ids given
/// explicitly by a producer).
pub(crate) fn entry_seq(id: &str) -> Option<u64> {
    let (ms, n) = id.split_once('-')?;
    let (ms, n): (u64, u64) = (ms.parse().ok()?, n.parse().ok()?);
    (ms < 1 << (64 - SEQ_BITS) && n < 1 << SEQ_BITS).then_some(ms << SEQ_BITS | n)
}

/// This consumer's stream of positions and where each exactly-once sink stopped in it.
pub(crate) struct EntryPositions {
    stream: Arc<str>,
    /// Per exactly-once sink, the last entry it wrote (`None`: nothing yet).
    written: Vec<Option<u64>>,
}

impl EntryPositions {
    pub fn new(source: &str, cfg: &StreamConfig) -> Self {
        EntryPositions { stream: format!("{source}/{}/{}/{}", cfg.stream, cfg.group, cfg.consumer).into(), written: Vec::new() }
    }

    /// Asks the exactly-once sinks where they stopped (at start, and after a reconnect, when
    /// pending entries are read again).
    pub async fn ask(&mut self, ctx: &SourceContext) -> anyhow::Result<()> {
        if ctx.sink_positions.is_empty() {
            return Ok(());
        }
        let answers = ctx.sink_positions.written(std::slice::from_ref(&self.stream)).await?;
        self.written = answers.iter().map(|w| w.seq_in(&self.stream, 0)).collect();
        tracing::info!(stream = %self.stream, sinks_wrote = ?self.written, "exactly once: entries the sinks wrote are skipped");
        Ok(())
    }

    /// Whether every exactly-once sink wrote `entry` (it is acknowledged, not sent again).
    pub fn written_everywhere(&self, entry: &StreamId) -> bool {
        !self.written.is_empty() && entry_seq(&entry.id).is_some_and(|s| self.written.iter().all(|w| w.is_some_and(|w| s <= w)))
    }

    /// `entries` (in id order) cut where a sink stopped, so each sink drops whole batches: the
    /// ones it wrote.
    pub fn split(&self, entries: Vec<StreamId>) -> Vec<Vec<StreamId>> {
        let mut pieces = vec![Vec::new()];
        let mut last: Option<u64> = None;
        for e in entries {
            let seq = entry_seq(&e.id);
            if let (Some(a), Some(b)) = (last, seq) {
                if self.written.iter().flatten().any(|&w| a <= w && w < b) {
                    pieces.push(Vec::new());
                }
            }
            last = seq;
            pieces.last_mut().expect("one piece at least").push(e);
        }
        pieces.retain(|p| !p.is_empty());
        pieces
    }

    /// The position of a batch of this consumer's own entries: its last entry's id (`None` when
    /// an id does not fit, see [`entry_seq`]).
    pub fn position(&self, entries: &[StreamId]) -> Option<Position> {
        let seqs: Option<Vec<u64>> = entries.iter().map(|e| entry_seq(&e.id)).collect();
        Some(Position { stream: self.stream.clone(), epoch: 0, seq: *seqs?.last()? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str) -> StreamId {
        StreamId { id: id.into(), map: Default::default() }
    }

    fn ids(pieces: &[Vec<StreamId>]) -> Vec<Vec<&str>> {
        pieces.iter().map(|p| p.iter().map(|e| e.id.as_str()).collect()).collect()
    }

    #[test]
    fn entry_ids_map_to_increasing_sequence_numbers_while_they_fit() {
        assert_eq!(entry_seq("1796653233826-0"), Some(1796653233826 << 22));
        assert!(entry_seq("1796653233826-5") < entry_seq("1796653233827-0"));
        assert_eq!(entry_seq("99999999999999999-0"), None, "an explicit id past 2^42 ms");
        assert_eq!(entry_seq("5-4194304"), None, "2^22 entries in one millisecond");
        assert_eq!(entry_seq("not-an-id"), None);
    }

    #[test]
    fn batches_are_cut_where_a_sink_stopped_and_fully_written_entries_are_known() {
        let cfg: StreamConfig = serde_yaml::from_str("{}").unwrap();
        let mut p = EntryPositions::new("badges", &cfg);
        p.written = vec![entry_seq("100-1"), entry_seq("100-3")];
        let entries: Vec<StreamId> = ["100-0", "100-1", "100-2", "100-3", "100-4"].map(entry).to_vec();
        assert_eq!(ids(&p.split(entries.clone())), [vec!["100-0", "100-1"], vec!["100-2", "100-3"], vec!["100-4"]]);
        assert!(p.written_everywhere(&entries[1]) && !p.written_everywhere(&entries[2]), "both sinks wrote 100-1; one 100-2");
        assert_eq!(p.position(&entries[..2]).map(|p| p.seq), entry_seq("100-1"));
        assert_eq!(&*p.position(&entries[..2]).unwrap().stream, "badges/badge-events/tributary/tributary-1");
        p.written = vec![None];
        assert!(!p.written_everywhere(&entries[0]), "a sink that wrote nothing");
        assert_eq!(ids(&p.split(entries)).len(), 1);
    }
}
