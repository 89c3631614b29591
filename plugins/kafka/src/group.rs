//! The consumer-group side of the `kafka` source: which offsets may be committed (only what every
//! sink downstream wrote, partition by partition) and what a rebalance does with batches in flight.
//!
//! On revoke (librdkafka calls back from inside `recv`, while this member still owns the
//! partitions) the member waits up to `rebalance_wait` for the acks of the batches holding the
//! revoked partitions, commits what was delivered, and forgets the rest: the partitions' new
//! owner reads from the commit, so a batch acknowledged after the wait is written twice (a
//! duplicate, never a loss). On assign, librdkafka starts each partition at its committed offset.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tributary_sdk::AckStatus;

/// (topic, partition)
pub(crate) type PartitionKey = (String, i32);

/// A batch sent downstream, waiting for its acknowledgement.
struct Pending {
    seq: u64,
    /// Highest offset per partition in the batch.
    offsets: HashMap<PartitionKey, i64>,
    status: Option<AckStatus>,
    /// Said when its partitions are revoked (a window drops such a batch still on its way).
    withdrawal: Option<tributary_sdk::Withdrawal>,
}

/// Batches in send order with their ack status. A partition's offset is committable up to the
/// last batch before the first unacknowledged batch holding that partition: one slow batch holds
/// back only its own partitions.
#[derive(Default)]
pub(crate) struct CommitTracker {
    pending: VecDeque<Pending>,
    next_seq: u64,
    /// Last offset handed out to commit per partition.
    committed: HashMap<PartitionKey, i64>,
    /// Last offset the group coordinator confirmed per partition (an async commit can fail, e.g.
    /// while a rebalance is in progress).
    confirmed: HashMap<PartitionKey, i64>,
    /// A batch some sink did not write: the source stops without committing it.
    failed: Option<String>,
    /// Partitions being revoked: a batch of theirs that fails now was given up downstream (a
    /// repartitioned window dropped the revoked partition's open windows), not lost, because the
    /// new owner reads it from the commit.
    revoking: HashSet<PartitionKey>,
    /// The source is stopping (see `resolve`).
    stopping: bool,
}

impl CommitTracker {
    /// Record a batch about to be sent; returns its sequence number for the ack.
    pub fn start(&mut self, offsets: HashMap<PartitionKey, i64>) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.pending.push_back(Pending { seq, offsets, status: None, withdrawal: None });
        seq
    }

    /// The ack of batch `seq`, to withdraw if its partitions are revoked before it resolves.
    pub fn withdrawable(&mut self, seq: u64, withdrawal: tributary_sdk::Withdrawal) {
        if let Some(p) = self.pending.iter_mut().find(|p| p.seq == seq) {
            p.withdrawal = Some(withdrawal);
        }
    }

    pub fn resolve(&mut self, seq: u64, status: AckStatus) {
        let Some(p) = self.pending.iter_mut().find(|p| p.seq == seq) else { return };
        // Stopping, a batch that fails is left for the next start: a window written exactly once
        // drops its open windows then, and they are read again.
        let given_up = self.stopping || (!p.offsets.is_empty() && p.offsets.keys().all(|k| self.revoking.contains(k)));
        if status == AckStatus::Failed && self.failed.is_none() && !given_up {
            let mut where_: Vec<String> = p.offsets.iter().map(|((t, part), o)| format!("{t}/{part}@{o}")).collect();
            where_.sort();
            self.failed = Some(format!(
                "a batch (up to {}) was not written by every sink; stopping without committing it, so it is consumed again on restart",
                where_.join(", ")
            ));
        }
        p.status = Some(status);
    }

    pub fn failure(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    /// Batches sent and not yet acknowledged.
    pub fn unacknowledged(&self) -> usize {
        self.pending.iter().filter(|p| p.status.is_none()).count()
    }

    /// Batches still tracked (acknowledged ones wait behind the oldest unacknowledged one).
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    fn unacknowledged_holding(&self, parts: &HashSet<PartitionKey>) -> usize {
        self.pending.iter().filter(|p| p.status.is_none() && p.offsets.keys().any(|k| parts.contains(k))).count()
    }

    /// Offsets (the last delivered message per partition) to commit now, limited to `only` when
    /// given; each is handed out once.
    pub fn ready(&mut self, only: Option<&HashSet<PartitionKey>>) -> HashMap<PartitionKey, i64> {
        let mut blocked: HashSet<&PartitionKey> = HashSet::new();
        let mut ready: HashMap<PartitionKey, i64> = HashMap::new();
        for p in &self.pending {
            for (k, &o) in &p.offsets {
                if blocked.contains(k) || only.is_some_and(|only| !only.contains(k)) {
                    continue;
                }
                if p.status == Some(AckStatus::Delivered) {
                    let e = ready.entry(k.clone()).or_insert(o);
                    *e = (*e).max(o);
                } else {
                    blocked.insert(k);
                }
            }
        }
        ready.retain(|k, o| self.committed.get(k).is_none_or(|c| *o > *c));
        for (k, o) in &ready {
            self.committed.insert(k.clone(), *o);
        }
        // A delivered batch at the front has had every offset handed out (unless limited).
        while only.is_none() && self.pending.front().is_some_and(|p| p.status == Some(AckStatus::Delivered)) {
            self.pending.pop_front();
        }
        ready
    }

    /// The coordinator confirmed `offset` (the last delivered message) for `key`.
    pub fn confirm(&mut self, key: PartitionKey, offset: i64) {
        let e = self.confirmed.entry(key).or_insert(offset);
        *e = (*e).max(offset);
    }

    /// Offsets handed out for `parts` whose commit was not confirmed (yet): a revoke commits
    /// them again, synchronously.
    pub fn unconfirmed(&self, parts: &HashSet<PartitionKey>) -> HashMap<PartitionKey, i64> {
        self.committed
            .iter()
            .filter(|(k, o)| parts.contains(*k) && self.confirmed.get(*k).is_none_or(|c| *o > c))
            .map(|(k, o)| (k.clone(), *o))
            .collect()
    }

    /// Give up `parts` (revoked): no batch commits them any more. Returns how many unacknowledged
    /// batches held them (their rows are read again by the new owner).
    pub fn forget(&mut self, parts: &HashSet<PartitionKey>) -> usize {
        let abandoned = self.unacknowledged_holding(parts);
        for p in &mut self.pending {
            p.offsets.retain(|k, _| !parts.contains(k));
        }
        // A batch of revoked partitions only is nobody's now: its ack, whenever it comes, says
        // nothing about what this member may commit, and whoever holds its rows may drop them.
        self.pending.retain(|p| {
            if p.offsets.is_empty() {
                p.withdrawal.iter().for_each(|w| w.withdraw());
            }
            !p.offsets.is_empty()
        });
        self.committed.retain(|k, _| !parts.contains(k));
        self.confirmed.retain(|k, _| !parts.contains(k));
        self.revoking.retain(|k| !parts.contains(k));
        abandoned
    }

    /// The source stopped reading: what fails from now on is read again at the next start.
    pub fn stopping(&mut self) {
        self.stopping = true;
    }

    /// `parts` are being revoked (see `revoking`).
    pub fn revoking(&mut self, parts: &HashSet<PartitionKey>) {
        self.revoking.extend(parts.iter().cloned());
    }
}

/// State shared by the source loop, the acks (resolved on sink tasks) and librdkafka's rebalance
/// callback.
pub(crate) struct Group {
    pub source_id: String,
    tracker: Mutex<CommitTracker>,
    acked: Condvar,
    /// Wakes the source loop when an ack arrives.
    pub wake: tokio::sync::Notify,
    /// Partitions revoked since the source loop last looked: it drops what it buffered of them.
    revoked: Mutex<Vec<PartitionKey>>,
    /// Partitions assigned since the source loop last looked (exactly once: it asks the sinks
    /// where they stopped in them).
    assigned: Mutex<Vec<PartitionKey>>,
    rebalance_wait: Duration,
    /// Set once the source stops: the revoke of the final leave-group does not wait.
    closing: std::sync::atomic::AtomicBool,
    /// Where a revoke is said, so that windows over a repartitioned stream drop the revoked
    /// partitions' open windows (their new owner builds them again).
    ownership: tributary_sdk::Ownership,
}

impl Group {
    pub fn new(source_id: &str, rebalance_wait: Duration, ownership: tributary_sdk::Ownership) -> Arc<Group> {
        Arc::new(Group {
            source_id: source_id.to_string(),
            tracker: Mutex::new(CommitTracker::default()),
            acked: Condvar::new(),
            wake: tokio::sync::Notify::new(),
            revoked: Mutex::new(Vec::new()),
            assigned: Mutex::new(Vec::new()),
            rebalance_wait,
            closing: Default::default(),
            ownership,
        })
    }

    pub fn tracker(&self) -> MutexGuard<'_, CommitTracker> {
        self.tracker.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Called by a batch's ack.
    pub fn resolve(&self, seq: u64, status: AckStatus) {
        self.tracker().resolve(seq, status);
        self.acked.notify_all();
        self.wake.notify_one();
    }

    pub fn take_revoked(&self) -> HashSet<PartitionKey> {
        std::mem::take(&mut *self.revoked.lock().unwrap_or_else(|e| e.into_inner())).into_iter().collect()
    }

    pub fn take_assigned(&self) -> Vec<PartitionKey> {
        std::mem::take(&mut *self.assigned.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Marks the group as being left when dropped: the final revoke commits without waiting.
    pub fn closing_guard(self: &Arc<Self>) -> ClosingGuard {
        ClosingGuard(self.clone())
    }

    /// Wait (bounded) for the revoked partitions' batches, then return what to commit for them
    /// and how many batches were abandoned.
    fn settle(&self, parts: &HashSet<PartitionKey>) -> (HashMap<PartitionKey, i64>, usize) {
        let wait = if self.closing.load(std::sync::atomic::Ordering::SeqCst) { Duration::ZERO } else { self.rebalance_wait };
        let deadline = Instant::now() + wait;
        let mut t = self.tracker();
        while t.unacknowledged_holding(parts) > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            t = self.acked.wait_timeout(t, left).unwrap_or_else(|e| e.into_inner()).0;
        }
        (Self::to_commit(&mut t, parts), t.forget(parts))
    }

    /// What a revoke commits: newly delivered offsets and those whose earlier commit is unconfirmed.
    fn to_commit(t: &mut CommitTracker, parts: &HashSet<PartitionKey>) -> HashMap<PartitionKey, i64> {
        let mut offsets = t.unconfirmed(parts);
        offsets.extend(t.ready(Some(parts)));
        offsets
    }

    fn on_revoke<C: ConsumerContext>(&self, consumer: &BaseConsumer<C>, tpl: &TopicPartitionList) {
        let parts: HashSet<PartitionKey> = tpl.elements().iter().map(|e| (e.topic().to_string(), e.partition())).collect();
        if parts.is_empty() {
            return;
        }
        self.tracker().revoking(&parts);
        let mut lost: Vec<&PartitionKey> = parts.iter().collect();
        lost.sort();
        lost.into_iter().for_each(|k| self.ownership.lose(crate::replay::stream(&self.source_id, k)));
        // Acks arrive on other tasks: on a multi-thread runtime this worker hands its other tasks
        // over while it waits; on a current-thread one nothing else could run, so no wait.
        let multi_thread =
            tokio::runtime::Handle::try_current().is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        let (ready, abandoned) = if multi_thread {
            tokio::task::block_in_place(|| self.settle(&parts))
        } else {
            let mut t = self.tracker();
            (Self::to_commit(&mut t, &parts), t.forget(&parts))
        };
        let committed = commit(consumer, &ready, CommitMode::Sync, &self.source_id);
        self.revoked.lock().unwrap_or_else(|e| e.into_inner()).extend(parts.iter().cloned());
        tracing::info!(
            source = %self.source_id,
            partitions = %partition_list(tpl),
            committed = %committed,
            abandoned_batches = abandoned,
            "Kafka partitions revoked"
        );
    }
}

pub(crate) struct ClosingGuard(Arc<Group>);

impl Drop for ClosingGuard {
    fn drop(&mut self) {
        self.0.closing.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// `topic/partition` pairs, sorted, comma-separated.
pub(crate) fn partition_list(tpl: &TopicPartitionList) -> String {
    let mut parts: Vec<(String, i32)> = tpl.elements().iter().map(|e| (e.topic().to_string(), e.partition())).collect();
    parts.sort();
    let names: Vec<String> = parts.iter().map(|(t, p)| format!("{t}/{p}")).collect();
    names.join(",")
}

/// Commit `ready` (last delivered offset per partition; Kafka stores the next one to read).
/// Returns what was committed as `topic/partition@next`, for the log.
pub(crate) fn commit<C: ConsumerContext>(
    consumer: &impl Consumer<C>,
    ready: &HashMap<PartitionKey, i64>,
    mode: CommitMode,
    source_id: &str,
) -> String {
    if ready.is_empty() {
        return String::new();
    }
    let mut tpl = TopicPartitionList::new();
    let mut entries: Vec<_> = ready.iter().collect();
    entries.sort();
    for ((topic, partition), offset) in &entries {
        if let Err(e) = tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset + 1)) {
            tracing::warn!(source = %source_id, error = %e, "cannot record an offset to commit");
        }
    }
    let list = entries.iter().map(|((t, p), o)| format!("{t}/{p}@{}", *o + 1)).collect::<Vec<_>>().join(",");
    if let Err(e) = consumer.commit(&tpl, mode) {
        commit_failed(source_id, &list, &e);
    }
    list
}

/// The partitions' next owner reads again from their last confirmed commit.
fn commit_failed(source_id: &str, offsets: &str, error: &dyn std::fmt::Display) {
    tracing::warn!(source = %source_id, offsets = %offsets, error = %error, "Kafka offset commit failed; the messages from the last confirmed commit on are read again by the partitions' next owner");
}

/// The consumer's context: librdkafka's rebalance callbacks go to the [`Group`].
pub(crate) struct GroupContext {
    pub group: Arc<Group>,
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn commit_callback(&self, result: rdkafka::error::KafkaResult<()>, offsets: &TopicPartitionList) {
        let (mut confirmed, mut failed) = (Vec::new(), Vec::new());
        let mut t = self.group.tracker();
        for e in offsets.elements() {
            let Offset::Offset(next) = e.offset() else { continue };
            let name = format!("{}/{}@{next}", e.topic(), e.partition());
            match (&result, e.error()) {
                (Ok(()), Ok(())) => {
                    t.confirm((e.topic().to_string(), e.partition()), next - 1);
                    confirmed.push(name);
                }
                _ => failed.push(name),
            }
        }
        drop(t);
        if !confirmed.is_empty() {
            tracing::debug!(source = %self.group.source_id, offsets = %confirmed.join(","), "Kafka offsets committed");
        }
        if !failed.is_empty() {
            let error = match &result {
                Err(e) => e.to_string(),
                Ok(()) => "refused per partition".to_string(),
            };
            commit_failed(&self.group.source_id, &failed.join(","), &error);
        }
    }

    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            self.group.on_revoke(consumer, tpl);
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let parts: Vec<PartitionKey> = tpl.elements().iter().map(|e| (e.topic().to_string(), e.partition())).collect();
                parts.iter().for_each(|k| self.group.ownership.gain(crate::replay::stream(&self.group.source_id, k)));
                self.group.assigned.lock().unwrap_or_else(|e| e.into_inner()).extend(parts);
                tracing::info!(source = %self.group.source_id, partitions = %partition_list(tpl), "Kafka partitions assigned")
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => tracing::warn!(source = %self.group.source_id, error = %e, "Kafka rebalance error"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offsets(list: &[(&str, i32, i64)]) -> HashMap<PartitionKey, i64> {
        list.iter().map(|(t, p, o)| ((t.to_string(), *p), *o)).collect()
    }

    #[test]
    fn a_slow_batch_holds_back_only_its_own_partitions() {
        let mut t = CommitTracker::default();
        let a = t.start(offsets(&[("t", 0, 10), ("t", 1, 5)]));
        let b = t.start(offsets(&[("t", 0, 20), ("t", 2, 7)]));
        let c = t.start(offsets(&[("t", 1, 9)]));
        t.resolve(b, AckStatus::Delivered);
        t.resolve(c, AckStatus::Delivered);
        // a is open: partitions 0 and 1 wait for it; partition 2 only had b.
        assert_eq!(t.ready(None), offsets(&[("t", 2, 7)]));
        t.resolve(a, AckStatus::Delivered);
        assert_eq!(t.ready(None), offsets(&[("t", 0, 20), ("t", 1, 9)]));
        assert_eq!(t.len(), 0);
        assert!(t.ready(None).is_empty(), "each offset is handed out once");
    }

    #[test]
    fn revoked_partitions_commit_what_was_delivered_and_forget_the_rest() {
        let mut t = CommitTracker::default();
        let a = t.start(offsets(&[("t", 0, 10), ("t", 1, 5)]));
        let _b = t.start(offsets(&[("t", 0, 20), ("t", 1, 8)]));
        t.resolve(a, AckStatus::Delivered);
        let revoked: HashSet<PartitionKey> = [("t".to_string(), 0)].into();
        assert_eq!(t.ready(Some(&revoked)), offsets(&[("t", 0, 10)]));
        assert_eq!(t.forget(&revoked), 1, "b still held partition 0");
        assert_eq!(t.unacknowledged(), 1);
        // Partition 1 stays ours; b's ack later commits it, never partition 0.
        t.resolve(1, AckStatus::Delivered);
        assert_eq!(t.ready(None), offsets(&[("t", 1, 8)]));
    }

    #[test]
    fn a_revoke_commits_again_what_the_coordinator_did_not_confirm() {
        let mut t = CommitTracker::default();
        let a = t.start(offsets(&[("t", 0, 10), ("t", 1, 4)]));
        t.resolve(a, AckStatus::Delivered);
        assert_eq!(t.ready(None), offsets(&[("t", 0, 10), ("t", 1, 4)]));
        t.confirm(("t".to_string(), 1), 4);
        let revoked: HashSet<PartitionKey> = [("t".to_string(), 0), ("t".to_string(), 1)].into();
        assert_eq!(t.unconfirmed(&revoked), offsets(&[("t", 0, 10)]));
        t.forget(&revoked);
        assert!(t.unconfirmed(&revoked).is_empty());
    }

    #[test]
    fn a_failed_batch_is_reported_with_its_offsets() {
        let mut t = CommitTracker::default();
        let a = t.start(offsets(&[("events", 0, 3)]));
        t.resolve(a, AckStatus::Failed);
        assert_eq!(
            t.failure(),
            Some("a batch (up to events/0@3) was not written by every sink; stopping without committing it, so it is consumed again on restart")
        );
        assert!(t.ready(None).is_empty());
    }
}
