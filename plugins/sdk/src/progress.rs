//! Progress a source may persist only once the rows it covers are written.
//!
//! A source that resumes from a saved position (a file offset, a backfill window) must not save a
//! position before every row read up to it is durable: a crash would then skip rows nobody wrote.
//! [`AckedProgress`] hands out one [`Ack`] per position, in read order, and commits a position
//! only when its ack and the acks of every earlier position have resolved as delivered, however
//! the sinks reorder them. A failed ack holds progress where it is for the rest of the run, so a
//! restart reads those rows again (at-least-once, never at-most-once).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use crate::ack::{Ack, AckStatus};

/// Positions committed in order as their acks resolve. See the module docs.
pub struct AckedProgress<P> {
    state: Arc<Mutex<State<P>>>,
}

struct State<P> {
    next_seq: u64,
    /// Positions not committed yet, oldest first, with their ack's outcome once known.
    pending: VecDeque<(u64, P, Option<AckStatus>)>,
    commit: Box<dyn FnMut(P) + Send>,
    /// The hold was logged: once per run, not once per failed ack (a stop that keeps thousands of
    /// rows for the next run fails thousands of acks).
    hold_logged: bool,
}

impl<P: Send + 'static> AckedProgress<P> {
    /// `commit` receives each position that became safe to persist (the newest one when several
    /// become safe at once). It runs where the last ack was released, so it must be quick and must
    /// not block on the pipeline: writing a small state file is fine.
    pub fn new(commit: impl FnMut(P) + Send + 'static) -> Self {
        AckedProgress {
            state: Arc::new(Mutex::new(State { next_seq: 0, pending: VecDeque::new(), commit: Box::new(commit), hold_logged: false })),
        }
    }

    /// The ack for the rows read up to `position`. Attach it to every batch and dead letter those
    /// rows became (clone it), and release it directly when they became nothing.
    pub fn track(&self, position: P) -> Ack {
        let mut s = self.state.lock().expect("progress lock");
        let seq = s.next_seq;
        s.next_seq += 1;
        s.pending.push_back((seq, position, None));
        let state = Arc::clone(&self.state);
        Ack::new(move |status| resolve(&state, seq, status))
    }

    /// Positions handed out and not committed yet (held ones included).
    pub fn uncommitted(&self) -> usize {
        self.state.lock().expect("progress lock").pending.len()
    }

    /// Whether a failed ack holds progress for the rest of this run.
    pub fn is_held(&self) -> bool {
        self.state.lock().expect("progress lock").pending.front().is_some_and(|p| p.2 == Some(AckStatus::Failed))
    }
}

fn resolve<P>(state: &Mutex<State<P>>, seq: u64, status: AckStatus) {
    // A poisoned lock means a commit panicked: nothing more can be committed safely.
    let Ok(mut s) = state.lock() else { return };
    let Some(first) = s.pending.front().map(|p| p.0) else { return };
    if let Some(entry) = seq.checked_sub(first).and_then(|i| s.pending.get_mut(i as usize)) {
        entry.2 = Some(status);
    }
    let mut ready = None;
    while s.pending.front().is_some_and(|p| p.2 == Some(AckStatus::Delivered)) {
        ready = s.pending.pop_front().map(|p| p.1);
    }
    if !s.hold_logged && s.pending.front().is_some_and(|p| p.2 == Some(AckStatus::Failed)) {
        s.hold_logged = true;
        tracing::warn!("rows were not written by every sink; progress stays before them, so a restart reads them again");
    }
    if let Some(position) = ready {
        (s.commit)(position);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorder() -> (AckedProgress<u32>, Arc<Mutex<Vec<u32>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = Arc::clone(&seen);
        (AckedProgress::new(move |p| s.lock().unwrap().push(p)), seen)
    }

    #[test]
    fn commits_in_read_order_whatever_order_the_acks_resolve_in() {
        let (progress, seen) = recorder();
        let (a, b, c) = (progress.track(10), progress.track(20), progress.track(30));
        c.release();
        assert_eq!(*seen.lock().unwrap(), Vec::<u32>::new(), "30 waits for 10 and 20");
        a.release();
        assert_eq!(*seen.lock().unwrap(), [10]);
        b.release();
        assert_eq!(*seen.lock().unwrap(), [10, 30], "20 and 30 became safe at once: the newest is committed");
        assert_eq!(progress.uncommitted(), 0);
    }

    #[test]
    fn an_ack_held_by_two_sinks_commits_when_both_released() {
        let (progress, seen) = recorder();
        let ack = progress.track(5);
        let other_sink = ack.clone();
        ack.release();
        assert!(seen.lock().unwrap().is_empty());
        other_sink.release();
        assert_eq!(*seen.lock().unwrap(), [5]);
    }

    #[test]
    fn a_failed_ack_holds_progress_before_it_for_the_rest_of_the_run() {
        let (progress, seen) = recorder();
        let (a, b, c) = (progress.track(1), progress.track(2), progress.track(3));
        a.release();
        drop(b); // dropped without release: not written
        c.release();
        let d = progress.track(4);
        d.release();
        assert_eq!(*seen.lock().unwrap(), [1]);
        assert!(progress.is_held());
        assert_eq!(progress.uncommitted(), 3);
    }

    /// Counts WARN events.
    struct Warnings(Arc<std::sync::atomic::AtomicUsize>);
    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Warnings {
        fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
            if *event.metadata().level() == tracing::Level::WARN {
                self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }

    #[test]
    fn a_hold_is_logged_once_however_many_acks_fail() {
        use tracing_subscriber::layer::SubscriberExt;
        let warnings = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let subscriber = tracing_subscriber::registry().with(Warnings(warnings.clone()));
        let count = || warnings.load(std::sync::atomic::Ordering::Relaxed);
        tracing::subscriber::with_default(subscriber, || {
            // The first ack fails, then a thousand behind it (a stop that keeps its rows for the
            // next run): one line.
            let (progress, _) = recorder();
            let first = progress.track(0);
            let rest: Vec<Ack> = (1..=1000).map(|p| progress.track(p)).collect();
            drop(first);
            drop(rest);
            assert_eq!(count(), 1);
            // Failures behind a pending ack hold nothing until it resolves; then the hold is logged.
            let (progress, _) = recorder();
            let pending = progress.track(0);
            drop((1..=1000).map(|p| progress.track(p)).collect::<Vec<_>>());
            assert_eq!(count(), 1, "nothing held yet");
            pending.release();
            assert!(progress.is_held());
            assert_eq!(count(), 2);
        });
    }
}
