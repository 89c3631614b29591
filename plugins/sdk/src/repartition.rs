//! Keyed repartitioning: a windowed transform that groups by columns a source's partitions do not
//! follow (messages keyed by badge, windows per site) asks the source it reads to re-key its rows,
//! so that every key is read by one member of the consumer group. Only a source that reads a
//! partitioned log in a group can (the `kafka` source); everywhere else there is one process and
//! nothing to do.
//!
//! A member that stops owning a part of the re-keyed stream says so through [`Ownership`]: the
//! windows it held for that part are the new owner's now, and it must not emit them.

use std::sync::Arc;

use tokio::sync::broadcast;

/// What a windowed transform asks of the source it reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repartition {
    /// The windowed transform's id (it names what the source creates for it).
    pub transform: String,
    /// The columns every key is made of (`partition_by`).
    pub by: Vec<String>,
}

/// Which streams (see [`crate::Position`]) this process owns: a Kafka partition is revoked or
/// assigned in a rebalance. One per pipeline run, shared by its sources (which say it) and its
/// windowed transforms (which drop the open windows of a stream lost, and the batches of it still
/// on their way, until it is assigned again).
#[derive(Clone)]
pub struct Ownership {
    changes: broadcast::Sender<Owned>,
}

/// A change of what this process owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owned {
    Lost(Arc<str>),
    Gained(Arc<str>),
}

impl Default for Ownership {
    fn default() -> Self {
        // Revokes come in bursts of one partition list; a listener that falls this far behind
        // hears `Lagged` and drops everything it holds.
        Ownership { changes: broadcast::channel(1024).0 }
    }
}

impl Ownership {
    /// This process no longer owns `stream`. Said before the source lets the stream go, so a
    /// listener hears it before any batch of the stream's next owner could reach it.
    pub fn lose(&self, stream: Arc<str>) {
        let _ = self.changes.send(Owned::Lost(stream));
    }

    /// This process owns `stream` (again). Said before the source sends any batch of it.
    pub fn gain(&self, stream: Arc<str>) {
        let _ = self.changes.send(Owned::Gained(stream));
    }

    pub fn listen(&self) -> broadcast::Receiver<Owned> {
        self.changes.subscribe()
    }
}
