//! Exponential backoff with jitter for transient failures (connections, writes, polls).

use std::future::Future;
use std::time::Duration;

use rand::Rng;

/// How often and how patiently to retry.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    /// Attempts in total (the first try included); `None` retries until cancelled.
    pub max_attempts: Option<u32>,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { initial: Duration::from_millis(100), max: Duration::from_secs(30), max_attempts: Some(8) }
    }
}

impl Backoff {
    /// Delay before retry number `attempt` (1-based): initial × 2^(attempt−1), capped, with
    /// "equal jitter" (half fixed, half random) so a fleet of retries does not synchronise.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = self.initial.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
        let capped = exp.min(self.max);
        let half = capped / 2;
        half + half.mul_f64(rand::rng().random::<f64>())
    }

    /// Run `op` until it succeeds, `is_transient` says an error is permanent, or attempts run out.
    /// `on_retry` is told about each retry (count it, log it).
    pub async fn retry<T, E, F, Fut>(
        &self,
        mut op: F,
        is_transient: impl Fn(&E) -> bool,
        mut on_retry: impl FnMut(u32, &E, Duration),
    ) -> Result<T, E>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            match op().await {
                Ok(v) => return Ok(v),
                Err(e) => {
                    let exhausted = self.max_attempts.is_some_and(|m| attempt >= m);
                    if exhausted || !is_transient(&e) {
                        return Err(e);
                    }
                    let d = self.delay(attempt);
                    on_retry(attempt, &e, d);
                    tokio::time::sleep(d).await;
                }
            }
        }
    }
}

/// Why a sink's write did not happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteError {
    /// Worth retrying: a transport error, a timeout, an overloaded server (5xx, 429).
    Transient(String),
    /// The server refused the data (a 4xx answer, a schema error): retrying would not help.
    Refused(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn delays_grow_exponentially_within_jitter_bounds_and_cap() {
        let b = Backoff { initial: Duration::from_millis(100), max: Duration::from_secs(1), max_attempts: None };
        for (attempt, full) in [(1, 100), (2, 200), (3, 400), (4, 800), (5, 1000), (30, 1000)] {
            let d = b.delay(attempt).as_millis() as u64;
            assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d}ms not in [{}, {full}]", full / 2);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_transient_errors_then_gives_up() {
        let b = Backoff { initial: Duration::from_millis(10), max: Duration::from_millis(50), max_attempts: Some(3) };
        let calls = Cell::new(0);
        let mut retries = Vec::new();
        let r: Result<(), &str> = b
            .retry(
                || {
                    calls.set(calls.get() + 1);
                    async { Err("connection reset") }
                },
                |_| true,
                |n, _, _| retries.push(n),
            )
            .await;
        assert_eq!(r, Err("connection reset"));
        assert_eq!(calls.get(), 3);
        assert_eq!(retries, [1, 2]);

        calls.set(0);
        let r: Result<(), &str> = b
            .retry(
                || {
                    calls.set(calls.get() + 1);
                    async { Err("constraint") }
                },
                |_| false,
                |_, _, _| {},
            )
            .await;
        assert_eq!((r, calls.get()), (Err("constraint"), 1), "permanent errors are not retried");

        calls.set(0);
        let r: Result<u32, &str> = b
            .retry(
                || {
                    calls.set(calls.get() + 1);
                    let n = calls.get();
                    async move {
                        if n < 2 {
                            Err("x")
                        } else {
                            Ok(n)
                        }
                    }
                },
                |_| true,
                |_, _, _| {},
            )
            .await;
        assert_eq!(r, Ok(2));
    }
}
