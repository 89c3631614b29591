//! The loop a source runs when several producer tasks (probe targets, SRT sessions, a Pub/Sub
//! reader) hand it rows over a channel: gather them, and pass them on once enough are pending,
//! once the oldest has waited long enough, and one last time when every producer has finished.

use std::time::Duration;

use tokio::sync::mpsc;

/// Resolves at a pending batch's `deadline`, or never when nothing is pending: the arm of a
/// `select!` that sends a batch once its oldest row has waited long enough.
pub async fn batch_deadline(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// What a [`Batcher`] gathers items into: a `Vec`, or a source's own pending rows.
pub trait Gather<T>: Default {
    fn gather(&mut self, item: T);
    /// Rows pending (an item may carry several).
    fn rows(&self) -> usize;
}

impl<T> Gather<T> for Vec<T> {
    fn gather(&mut self, item: T) {
        self.push(item);
    }
    fn rows(&self) -> usize {
        self.len()
    }
}

/// Batches items from a channel by size and time.
pub struct Batcher<T, G: Gather<T> = Vec<T>> {
    items: mpsc::Receiver<T>,
    max_rows: usize,
    tick: tokio::time::Interval,
    pending: G,
    closed: bool,
}

impl<T, G: Gather<T>> Batcher<T, G> {
    /// A batch when `max_rows` are pending or every `max_wait` (at least 1 ms), whichever is first.
    pub fn new(items: mpsc::Receiver<T>, max_rows: usize, max_wait: Duration) -> Self {
        let every = max_wait.max(Duration::from_millis(1));
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Batcher { items, max_rows: max_rows.max(1), tick, pending: G::default(), closed: false }
    }

    /// The next batch, or `None` once every sender is gone and nothing is pending. Cancel-safe:
    /// what was gathered stays pending, so it can race other branches in a `select!`.
    pub async fn next(&mut self) -> Option<G> {
        loop {
            if self.closed {
                return (self.pending.rows() > 0).then(|| self.take_pending());
            }
            tokio::select! {
                // Items first: a batch that filled up goes out without waiting for the tick.
                biased;
                item = self.items.recv() => match item {
                    Some(item) => {
                        self.pending.gather(item);
                        if self.pending.rows() >= self.max_rows {
                            return Some(self.take_pending());
                        }
                    }
                    None => self.closed = true,
                },
                _ = self.tick.tick() => {
                    if self.pending.rows() > 0 {
                        return Some(self.take_pending());
                    }
                }
            }
        }
    }

    /// What is pending now (when the source must stop early and send what it has).
    pub fn take_pending(&mut self) -> G {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn batches_by_size_by_time_and_once_more_at_the_end() {
        let (tx, rx) = mpsc::channel(16);
        let mut batcher: Batcher<u32> = Batcher::new(rx, 3, Duration::from_secs(1));
        for i in 0..4 {
            tx.send(i).await.unwrap();
        }
        // Full at three rows, without waiting for the tick.
        assert_eq!(batcher.next().await, Some(vec![0, 1, 2]));
        // The fourth waits for the tick.
        let started = tokio::time::Instant::now();
        assert_eq!(batcher.next().await, Some(vec![3]));
        assert!(started.elapsed() >= Duration::from_millis(999), "{:?}", started.elapsed());
        tx.send(4).await.unwrap();
        drop(tx);
        // Senders gone: what is pending comes out, then the end.
        assert_eq!(batcher.next().await, Some(vec![4]));
        assert_eq!(batcher.next().await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_next_keeps_what_it_gathered() {
        let (tx, rx) = mpsc::channel(16);
        let mut batcher: Batcher<u32> = Batcher::new(rx, 10, Duration::from_secs(60));
        tx.send(1).await.unwrap();
        tokio::select! {
            _ = batcher.next() => panic!("not full and not due"),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        assert_eq!(batcher.take_pending(), vec![1]);
    }
}
