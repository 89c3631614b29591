//! One scheduler for every source that polls targets at an interval (site probes, Prometheus
//! scrapes): each target on its own fixed-rate slot from a first due time (spread over the
//! interval by the caller's jitter), a concurrency limit shared by all targets, and no overlap of
//! a target with itself.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How late jobs started against their schedule (kept for benchmarks and the debug log).
#[derive(Debug, Default)]
pub struct Lateness(Mutex<Vec<Duration>>);

impl Lateness {
    fn record(&self, d: Duration) {
        let mut v = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if v.len() < 1_000_000 {
            v.push(d);
        }
    }
    /// The `q` quantile (0..=1) of the recorded lateness, and how many were recorded.
    pub fn quantile(&self, q: f64) -> (Duration, usize) {
        let mut v = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if v.is_empty() {
            return (Duration::ZERO, 0);
        }
        v.sort_unstable();
        let idx = ((v.len() - 1) as f64 * q).round() as usize;
        (v[idx], v.len())
    }
}

/// A random offset within `interval`, so targets added together do not all start at once.
pub fn random_offset(interval: Duration) -> Duration {
    interval.mul_f64(rand::random::<f64>())
}

/// An offset within `interval` fixed by `key` (Prometheus spreads targets by a hash of their
/// labels the same way): a target keeps its slot across restarts and reloads.
pub fn offset_for(key: &str, interval: Duration) -> Duration {
    // FNV-1a: stable across builds, unlike std's RandomState.
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3));
    interval.mul_f64((hash >> 11) as f64 / (1u64 << 53) as f64)
}

/// One target's slot on the scheduler.
pub struct Slot<'a> {
    /// For the debug log.
    pub name: &'a str,
    pub interval: Duration,
    pub first_due: Instant,
    /// Shared by every target of the source: the concurrency limit.
    pub permits: Arc<Semaphore>,
    pub stop: CancellationToken,
    pub lateness: Option<Arc<Lateness>>,
}

/// Runs `job` every `slot.interval` from `slot.first_due` until `slot.stop` (or `out` closes),
/// one at a time, each under a permit, sending each result to `out`. A job that overran its
/// interval skips the slots it missed rather than firing a burst.
pub async fn every<R, F, Fut>(slot: Slot<'_>, out: mpsc::Sender<R>, mut job: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = R>,
{
    let Slot { name, interval, first_due, permits, stop, lateness } = slot;
    let mut due = first_due;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep_until(due) => {}
        }
        let permit = tokio::select! {
            _ = stop.cancelled() => return,
            p = permits.acquire() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        if let Some(l) = &lateness {
            l.record(Instant::now().saturating_duration_since(due));
        }
        let result = job().await;
        drop(permit);
        if out.send(result).await.is_err() {
            return;
        }
        due += interval;
        let now = Instant::now();
        if due < now {
            let missed = (now - due).as_nanos() / interval.as_nanos() + 1;
            tracing::debug!(target = %name, missed, "the job overran its interval; skipping missed slots");
            due += interval * missed as u32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_stable_and_within_the_interval() {
        let interval = Duration::from_secs(60);
        let a = offset_for("http://a:9100/metrics", interval);
        assert_eq!(a, offset_for("http://a:9100/metrics", interval), "the same key, the same slot");
        assert_ne!(a, offset_for("http://b:9100/metrics", interval));
        for key in ["", "x", "http://a:9100/metrics", "a much longer key than the others, to move every bit"] {
            assert!(offset_for(key, interval) < interval, "{key}");
        }
    }

    /// Fixed rate on the clock, one permit shared: the second target waits for the first, and a
    /// job that overran skips its missed slots.
    #[tokio::test(start_paused = true)]
    async fn fixed_rate_under_a_shared_permit() {
        let permits = Arc::new(Semaphore::new(1));
        let stop = CancellationToken::new();
        let (tx, mut rx) = mpsc::channel(16);
        let start = Instant::now();
        let slow = |name: &'static str, took: Duration| {
            move || async move {
                let began = Instant::now();
                tokio::time::sleep(took).await;
                (name, began.duration_since(start).as_secs())
            }
        };
        let slot = |name, secs, permits| Slot {
            name,
            interval: Duration::from_secs(secs),
            first_due: start,
            permits,
            stop: stop.clone(),
            lateness: None,
        };
        let a = every(slot("a", 10, permits.clone()), tx.clone(), slow("a", Duration::from_secs(25)));
        let b = every(slot("b", 7, permits), tx, slow("b", Duration::from_secs(1)));
        tokio::spawn(a);
        tokio::spawn(b);
        let mut started = Vec::new();
        for _ in 0..4 {
            started.push(rx.recv().await.unwrap());
        }
        stop.cancel();
        // a runs 0–25 s and b waits for the permit (25–26 s); a's slots at 10 and 20 s are
        // skipped, its next is 30 s; b's slots at 7, 14 and 21 s are skipped, its next is 28 s.
        assert_eq!(started, [("a", 0), ("b", 25), ("b", 28), ("a", 30)]);
    }
}
