//! `delivery: exactly_once` for the `kafka` source: each partition is a stream of its own
//! (`<source id>/<topic>/<partition>`, the offset as the sequence), and each batch holds one
//! partition and is stamped with its last offset. The exactly-once sinks store that position in the
//! same transaction as the rows.
//!
//! After a crash the group resumes from its last commit, which trails what the sinks wrote (the
//! commit follows their acks). The source asks the sinks where they stopped in each partition it is
//! assigned, skips messages every sink wrote, and ends a batch at each sink's position, so that for
//! every sink a replayed batch is either all written (the engine drops it before that sink) or
//! none of it. This is Flink's Kafka source restoring offsets from the sink's side rather than from
//! the group, without a separate checkpoint store.

use std::collections::HashMap;
use std::sync::Arc;

use tributary_sdk::{Position, Positions};

use crate::group::PartitionKey;

/// Kafka offsets start afresh only when a topic is deleted and made again, which a position
/// cannot see; one epoch for all.
const EPOCH: u64 = 0;

/// The stream name of one partition of `source`'s topics.
pub(crate) fn stream(source: &str, (topic, partition): &PartitionKey) -> Arc<str> {
    Arc::from(format!("{source}/{topic}/{partition}"))
}

/// The position of a batch of `key` whose last message is at `offset`.
pub(crate) fn position(source: &str, key: &PartitionKey, offset: i64) -> Position {
    Position { stream: stream(source, key), epoch: EPOCH, seq: offset.max(0) as u64 }
}

/// Per partition, the last offset each exactly-once sink wrote (`None`: nothing of it).
#[derive(Default)]
pub(crate) struct SinkCuts {
    written: HashMap<PartitionKey, Vec<Option<i64>>>,
}

impl SinkCuts {
    /// What the sinks answered (one [`Positions`] per sink) for `keys`.
    pub fn learn(&mut self, source: &str, keys: &[PartitionKey], per_sink: &[Positions]) {
        for key in keys {
            let stream = stream(source, key);
            let offsets = per_sink.iter().map(|written| written.seq_in(&stream, EPOCH).map(|seq| seq as i64)).collect();
            self.written.insert(key.clone(), offsets);
        }
    }

    /// Whether the sinks were asked about `key` since it was (re)assigned.
    pub fn knows(&self, key: &PartitionKey) -> bool {
        self.written.contains_key(key)
    }

    /// `key` was revoked: whoever owns it next asks the sinks again.
    pub fn forget(&mut self, key: &PartitionKey) {
        self.written.remove(key);
    }

    /// Every sink has written the message at `offset`: it is not sent again.
    pub fn written_everywhere(&self, key: &PartitionKey, offset: i64) -> bool {
        self.written.get(key).is_some_and(|sinks| sinks.iter().all(|w| w.is_some_and(|w| offset <= w)))
    }

    /// A batch of `key` ending at `last` must be sent before the message at `next` joins it: some
    /// sink stopped in between, so that sink needs the part up to `last` dropped and the rest written.
    pub fn cut_between(&self, key: &PartitionKey, last: i64, next: i64) -> bool {
        self.written.get(key).is_some_and(|sinks| sinks.iter().flatten().any(|&w| last <= w && w < next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(p: i32) -> PartitionKey {
        ("events".to_string(), p)
    }

    fn written(list: &[(i32, u64)]) -> Positions {
        list.iter().map(|&(p, seq)| position("in", &key(p), seq as i64)).collect()
    }

    #[test]
    fn skips_what_every_sink_wrote_and_cuts_where_each_sink_stopped() {
        let mut cuts = SinkCuts::default();
        // Sink A wrote partition 0 up to 10, sink B up to 25; partition 1 only A (up to 3).
        cuts.learn("in", &[key(0), key(1), key(2)], &[written(&[(0, 10), (1, 3)]), written(&[(0, 25)])]);
        assert!(cuts.knows(&key(2)) && !cuts.knows(&key(3)));
        assert!(cuts.written_everywhere(&key(0), 10));
        assert!(!cuts.written_everywhere(&key(0), 11), "B wrote it, A did not: sent, and dropped before B");
        assert!(!cuts.written_everywhere(&key(1), 0), "B has nothing of partition 1");
        assert!(!cuts.written_everywhere(&key(2), 0));
        // A batch holding 11..=25 is dropped whole before B and written whole by A; 26 goes on.
        assert!(!cuts.cut_between(&key(0), 11, 12));
        assert!(cuts.cut_between(&key(0), 25, 26));
        assert!(cuts.cut_between(&key(0), 24, 27), "offsets may skip (compaction, transaction markers)");
        assert!(!cuts.cut_between(&key(0), 26, 27));
        assert!(cuts.cut_between(&key(1), 3, 4));
        assert!(!cuts.cut_between(&key(2), 0, 1), "no sink stopped in partition 2");
        cuts.forget(&key(0));
        assert!(!cuts.knows(&key(0)) && !cuts.written_everywhere(&key(0), 0));
    }

    #[test]
    fn stream_names_hold_source_topic_and_partition() {
        assert_eq!(position("in", &key(7), 42), Position { stream: "in/events/7".into(), epoch: 0, seq: 42 });
    }
}
