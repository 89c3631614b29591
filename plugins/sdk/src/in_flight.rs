//! Work in flight across a running pipeline, so whoever feeds it can wait until everything it fed
//! has been handled: `tributary test` does between steps, which is how it runs fixtures through
//! the real runtime and still compares exact outputs.
//!
//! Each delivery carries a [`Work`] guard from the moment it is queued until its consumer has
//! handled it (and queued whatever it produced, each with its own guard), so the count is zero
//! only when no component has anything left to do.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

/// Counts deliveries queued or being handled.
#[derive(Default, Debug)]
pub struct InFlight {
    count: AtomicUsize,
    idle: Notify,
}

impl InFlight {
    /// One more piece of work, finished when the guard is dropped.
    pub fn begin(self: &Arc<Self>) -> Work {
        self.count.fetch_add(1, Ordering::AcqRel);
        Work(Some(self.clone()))
    }

    /// Pieces of work not yet finished.
    pub fn pending(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Returns once nothing is in flight.
    pub async fn idle(&self) {
        loop {
            // Registered before the check, so a drop to zero in between is not missed.
            let notified = self.idle.notified();
            if self.pending() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// A piece of work in flight; dropping it marks it done. `Work::default()` tracks nothing (a
/// pipeline run without an [`InFlight`]).
#[derive(Default, Debug)]
pub struct Work(Option<Arc<InFlight>>);

impl Drop for Work {
    fn drop(&mut self) {
        if let Some(in_flight) = self.0.take() {
            if in_flight.count.fetch_sub(1, Ordering::AcqRel) == 1 {
                in_flight.idle.notify_waiters();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn idle_waits_for_every_guard_including_ones_begun_while_waiting() {
        let in_flight = Arc::new(InFlight::default());
        let first = in_flight.begin();
        let second = in_flight.begin();
        assert_eq!(in_flight.pending(), 2);
        let waiter = tokio::spawn({
            let in_flight = in_flight.clone();
            async move { in_flight.idle().await }
        });
        drop(first);
        // Work handed on before the last guard drops keeps the pipeline busy.
        let third = in_flight.begin();
        drop(second);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(third);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter).await.expect("idle once all guards dropped").unwrap();
        assert_eq!(in_flight.pending(), 0);
        // An untracked guard counts nothing.
        drop(Work::default());
        in_flight.idle().await;
    }
}
