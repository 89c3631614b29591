//! Acknowledgements: how a source learns that every sink has durably written what it emitted.
//!
//! An [`Ack`] is a handle to one "delivery obligation". Cloning it (fan-out to several sinks, or a
//! transform deriving several batches from one) creates another holder of the same obligation.
//! Each holder must be [`released`](Ack::release) once its part is durable; the obligation
//! resolves when the last holder is gone. A holder dropped without `release` (a crashed task, a
//! sink that gave up) marks the obligation [`AckStatus::Failed`], so a replayable source never
//! commits data that was not written.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// Outcome of a delivery obligation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckStatus {
    /// Every holder released: all sinks wrote it (or it was filtered out, or dead-lettered durably).
    Delivered,
    /// At least one holder was dropped without releasing.
    Failed,
}

type Callback = Box<dyn FnOnce(AckStatus) + Send>;

struct Obligation {
    callback: Mutex<Option<Callback>>,
    failed: AtomicBool,
    /// The source gave the batch up (see [`Withdrawal`]).
    withdrawn: AtomicBool,
}

impl Drop for Obligation {
    fn drop(&mut self) {
        let status = if self.failed.load(Ordering::SeqCst) { AckStatus::Failed } else { AckStatus::Delivered };
        if let Some(cb) = self.callback.get_mut().ok().and_then(|c| c.take()) {
            cb(status);
        }
    }
}

/// One holder of a delivery obligation. See the module docs.
pub struct Ack {
    inner: Arc<Obligation>,
    released: bool,
}

impl Ack {
    /// A new obligation whose outcome is passed to `callback` when it resolves.
    pub fn new(callback: impl FnOnce(AckStatus) + Send + 'static) -> Self {
        Ack {
            inner: Arc::new(Obligation {
                callback: Mutex::new(Some(Box::new(callback))),
                failed: AtomicBool::new(false),
                withdrawn: AtomicBool::new(false),
            }),
            released: false,
        }
    }

    /// A new obligation and a receiver that yields its outcome.
    pub fn channel() -> (Self, oneshot::Receiver<AckStatus>) {
        let (tx, rx) = oneshot::channel();
        (
            Ack::new(move |status| {
                let _ = tx.send(status);
            }),
            rx,
        )
    }

    /// This holder's part is done (durably written, filtered out, or dead-lettered).
    pub fn release(mut self) {
        self.released = true;
    }

    /// Mark the whole obligation failed (it still resolves when every holder is gone).
    pub fn fail(self) {
        self.inner.failed.store(true, Ordering::SeqCst);
    }

    /// For the source that made the obligation: a way to say later that it gave the batch up,
    /// without holding the obligation open.
    pub fn withdrawal(&self) -> Withdrawal {
        Withdrawal(Arc::downgrade(&self.inner))
    }

    /// Whether the source gave the batch up: a Kafka partition revoked since, whose next owner
    /// reads it again. A component holding its rows may drop them.
    pub fn withdrawn(&self) -> bool {
        self.inner.withdrawn.load(Ordering::SeqCst)
    }
}

/// See [`Ack::withdrawal`].
#[derive(Debug)]
pub struct Withdrawal(std::sync::Weak<Obligation>);

impl Withdrawal {
    pub fn withdraw(&self) {
        if let Some(o) = self.0.upgrade() {
            o.withdrawn.store(true, Ordering::SeqCst);
        }
    }
}

impl Clone for Ack {
    fn clone(&self) -> Self {
        Ack { inner: Arc::clone(&self.inner), released: false }
    }
}

impl Drop for Ack {
    fn drop(&mut self) {
        if !self.released {
            self.inner.failed.store(true, Ordering::SeqCst);
        }
    }
}

impl std::fmt::Debug for Ack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ack")
    }
}

/// The obligations a batch carries (a transform may merge batches from several sources).
#[derive(Clone, Debug, Default)]
pub struct AckSet(Vec<Ack>);

impl AckSet {
    pub fn none() -> Self {
        AckSet(Vec::new())
    }
    pub fn single(ack: Ack) -> Self {
        AckSet(vec![ack])
    }
    pub fn extend(&mut self, other: AckSet) {
        self.0.extend(other.0);
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// Release every holder in the set.
    pub fn release(self) {
        self.0.into_iter().for_each(Ack::release);
    }
    /// Fail every obligation in the set.
    pub fn fail(self) {
        self.0.into_iter().for_each(Ack::fail);
    }
    /// Whether the set has obligations and their sources withdrew them all.
    pub fn withdrawn(&self) -> bool {
        !self.0.is_empty() && self.0.iter().all(Ack::withdrawn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_withdrawal_marks_every_holder_without_holding_the_obligation() {
        let (ack, rx) = Ack::channel();
        let withdrawal = ack.withdrawal();
        let held = AckSet::single(ack.clone());
        assert!(!held.withdrawn() && !AckSet::none().withdrawn());
        withdrawal.withdraw();
        assert!(held.withdrawn() && ack.withdrawn());
        drop(held);
        ack.release();
        assert_eq!(rx.await.unwrap(), AckStatus::Failed, "the dropped holder failed it; the withdrawal held nothing");
        withdrawal.withdraw();
    }

    #[tokio::test]
    async fn resolves_delivered_only_when_every_clone_is_released() {
        let (ack, mut rx) = Ack::channel();
        let a = ack.clone();
        let b = ack.clone();
        ack.release();
        a.release();
        assert!(rx.try_recv().is_err(), "one holder still pending");
        b.release();
        assert_eq!(rx.await.unwrap(), AckStatus::Delivered);
    }

    #[tokio::test]
    async fn dropping_a_holder_without_release_fails_the_obligation() {
        let (ack, rx) = Ack::channel();
        let a = ack.clone();
        ack.release();
        drop(a);
        assert_eq!(rx.await.unwrap(), AckStatus::Failed);
    }

    #[tokio::test]
    async fn explicit_fail_wins_over_other_releases() {
        let (ack, rx) = Ack::channel();
        let mut set = AckSet::single(ack.clone());
        set.extend(AckSet::single(ack));
        let clone = set.clone();
        set.release();
        clone.fail();
        assert_eq!(rx.await.unwrap(), AckStatus::Failed);
    }
}
