//! Positions: where a batch stands in a replayable source's stream, and what a sink has written.
//!
//! A source that can replay what it emitted (the engine's disk buffer, for one) stamps each batch
//! with a [`Position`]: "with this batch, every row of the stream up to `seq` has been sent".
//! An exactly-once sink stores the highest position it has written in the same transaction as
//! the rows, and reports those [`Positions`] when it starts; the engine then drops replayed
//! batches at or below them before the sink sees them, so a crash neither loses nor repeats rows.
//! This is how Flink's two-phase-commit sinks and Spark's Delta `txn` action work, in one process.

use std::collections::BTreeMap;
use std::sync::Arc;

/// A point in one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// The stream's name (for the disk buffer: the source id).
    pub stream: Arc<str>,
    /// Which incarnation of the stream: sequence numbers restart when a buffer folder is made
    /// afresh, and a new epoch keeps its numbers from being taken for old ones.
    pub epoch: u64,
    /// Everything up to and including this sequence number has been sent.
    pub seq: u64,
}

/// Per stream, the highest position written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Positions(BTreeMap<Arc<str>, (u64, u64)>);

impl Positions {
    /// Whether `p`'s rows were written already (same epoch, at or below the written seq).
    pub fn covers(&self, p: &Position) -> bool {
        self.0.get(&p.stream).is_some_and(|&(epoch, seq)| epoch == p.epoch && p.seq <= seq)
    }

    /// `p` is written: a later seq, or any seq of a new epoch, replaces what the stream had.
    pub fn advance(&mut self, p: &Position) {
        match self.0.get_mut(&p.stream) {
            Some((epoch, seq)) if *epoch == p.epoch => *seq = (*seq).max(p.seq),
            Some(entry) => *entry = (p.epoch, p.seq),
            None => {
                self.0.insert(p.stream.clone(), (p.epoch, p.seq));
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The seq written in `stream`, when it is of `epoch` (another epoch's numbers are not this one's).
    pub fn seq_in(&self, stream: &str, epoch: u64) -> Option<u64> {
        self.0.get(stream).filter(|(e, _)| *e == epoch).map(|&(_, seq)| seq)
    }

    /// Every stream's position.
    pub fn iter(&self) -> impl Iterator<Item = Position> + '_ {
        self.0.iter().map(|(stream, &(epoch, seq))| Position { stream: stream.clone(), epoch, seq })
    }
}

impl FromIterator<Position> for Positions {
    fn from_iter<I: IntoIterator<Item = Position>>(iter: I) -> Self {
        let mut out = Positions::default();
        iter.into_iter().for_each(|p| out.advance(&p));
        out
    }
}

impl std::fmt::Display for Positions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        for (i, (stream, (epoch, seq))) in self.0.iter().enumerate() {
            write!(f, "{}{stream} #{seq} (epoch {epoch:x})", if i > 0 { ", " } else { "" })?;
        }
        Ok(())
    }
}

/// FNV-1a: a fingerprint that stays the same across builds and machines (std's hasher may change
/// between Rust releases), for epochs derived from what a stream is read from.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

/// A source's line to the exactly-once sinks its positions reach: it asks them which of its
/// streams' positions they have written (a Kafka source, for the partitions it was just assigned).
/// Each sink first makes durable what it holds, then answers from what it stored, so the answer is
/// what a replay must not write again.
#[derive(Clone, Default)]
pub struct SinkPositions {
    sinks: Vec<tokio::sync::mpsc::UnboundedSender<PositionQuery>>,
}

/// One question to one sink: the positions of `streams` it has written.
pub struct PositionQuery {
    pub streams: Vec<Arc<str>>,
    pub answer: tokio::sync::oneshot::Sender<anyhow::Result<Positions>>,
}

impl SinkPositions {
    pub fn new(sinks: Vec<tokio::sync::mpsc::UnboundedSender<PositionQuery>>) -> Self {
        SinkPositions { sinks }
    }

    /// No exactly-once sink reads this source's positions: nothing to stamp, nothing to ask.
    pub fn is_empty(&self) -> bool {
        self.sinks.is_empty()
    }

    /// Per sink, what it has written of `streams`.
    pub async fn written(&self, streams: &[Arc<str>]) -> anyhow::Result<Vec<Positions>> {
        let mut answers = Vec::with_capacity(self.sinks.len());
        for sink in &self.sinks {
            let (answer, reply) = tokio::sync::oneshot::channel();
            sink.send(PositionQuery { streams: streams.to_vec(), answer })
                .map_err(|_| anyhow::anyhow!("an exactly-once sink stopped before it said which positions it had written"))?;
            answers.push(reply);
        }
        let mut written = Vec::with_capacity(answers.len());
        for reply in answers {
            written.push(reply.await.map_err(|_| anyhow::anyhow!("an exactly-once sink stopped before it answered"))??);
        }
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(stream: &str, epoch: u64, seq: u64) -> Position {
        Position { stream: stream.into(), epoch, seq }
    }

    #[test]
    fn covers_only_the_same_epoch_at_or_below_the_written_seq() {
        let written: Positions = [at("http", 7, 10), at("badges", 1, 3)].into_iter().collect();
        assert!(written.covers(&at("http", 7, 10)));
        assert!(written.covers(&at("http", 7, 0)));
        assert!(!written.covers(&at("http", 7, 11)));
        assert!(!written.covers(&at("http", 8, 2)), "a new buffer folder's numbers are not the old ones");
        assert!(!written.covers(&at("files", 7, 1)));
        assert_eq!(written.to_string(), "badges #3 (epoch 1), http #10 (epoch 7)");
        assert_eq!((written.seq_in("http", 7), written.seq_in("http", 8), written.seq_in("files", 7)), (Some(10), None, None));
    }

    #[test]
    fn fnv1a_is_the_published_function() {
        // The FNV-1a 64 test vectors: an epoch derived from it stays the same across releases.
        assert_eq!((fnv1a(b""), fnv1a(b"a"), fnv1a(b"foobar")), (0xcbf29ce484222325, 0xaf63dc4c8601ec8c, 0x85944171f73967e8));
    }

    #[test]
    fn advance_keeps_the_highest_seq_and_a_new_epoch_replaces_the_old() {
        let mut p = Positions::default();
        p.advance(&at("http", 7, 10));
        p.advance(&at("http", 7, 4));
        assert_eq!(p.iter().collect::<Vec<_>>(), vec![at("http", 7, 10)]);
        p.advance(&at("http", 9, 2));
        assert_eq!(p.iter().collect::<Vec<_>>(), vec![at("http", 9, 2)]);
    }
}
