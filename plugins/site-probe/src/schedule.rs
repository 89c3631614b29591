//! Scheduling: one task per target at a fixed rate (first start spread over the interval), a global
//! concurrency limit, no overlap of a target with itself, and a collector that batches rows.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;
use tributary_sdk::{Batch, Batcher, ConfigError, Source, SourceContext};

use crate::config::{SiteProbeConfig, Target};
use crate::probe::{probe, ProbeLimits, ProbeRow};
use crate::rows_to_batch;

/// How late probes started against their schedule (kept for benchmarks and the debug log).
#[derive(Debug, Default)]
pub struct Lateness(Mutex<Vec<Duration>>);

impl Lateness {
    fn record(&self, d: Duration) {
        let mut v = self.0.lock().unwrap();
        if v.len() < 1_000_000 {
            v.push(d);
        }
    }
    /// The `q` quantile (0..=1) of the recorded lateness, and how many were recorded.
    pub fn quantile(&self, q: f64) -> (Duration, usize) {
        let mut v = self.0.lock().unwrap().clone();
        if v.is_empty() {
            return (Duration::ZERO, 0);
        }
        v.sort_unstable();
        let idx = ((v.len() - 1) as f64 * q).round() as usize;
        (v[idx], v.len())
    }
}

pub struct SiteProbeSource {
    targets: Vec<Arc<Target>>,
    limits: ProbeLimits,
    max_concurrency: usize,
    start_jitter: bool,
    flush_interval: Duration,
    /// Set by [`SiteProbeSource::record_lateness`] (benchmarks); production probes record nothing.
    lateness: Option<Arc<Lateness>>,
}

impl SiteProbeSource {
    pub fn new(cfg: &SiteProbeConfig) -> Result<Self, ConfigError> {
        Ok(SiteProbeSource {
            targets: cfg.targets()?.into_iter().map(Arc::new).collect(),
            limits: ProbeLimits { body_limit: cfg.body_limit.0 as usize, max_redirects: cfg.max_redirects },
            max_concurrency: cfg.max_concurrency,
            start_jitter: cfg.start_jitter,
            flush_interval: cfg.flush_interval.0,
            lateness: None,
        })
    }

    /// Start recording how late each probe starts against its schedule; returns the record.
    #[cfg(feature = "lateness")]
    pub fn record_lateness(&mut self) -> Arc<Lateness> {
        self.lateness.get_or_insert_with(Arc::default).clone()
    }
}

#[async_trait::async_trait]
impl Source for SiteProbeSource {
    async fn run(self: Box<Self>, ctx: SourceContext) -> anyhow::Result<()> {
        let permits = Arc::new(Semaphore::new(self.max_concurrency));
        let (tx, rx) = mpsc::channel::<ProbeRow>(4096);
        for target in &self.targets {
            let offset = if self.start_jitter { target.interval.mul_f64(rand::random::<f64>()) } else { Duration::ZERO };
            tokio::spawn(probe_loop(
                target.clone(),
                Instant::now() + offset,
                self.limits,
                permits.clone(),
                tx.clone(),
                ctx.shutdown.clone(),
                self.lateness.clone(),
            ));
        }
        drop(tx);
        // Rows are sent every flush interval or 1024 rows; on shutdown the target tasks finish
        // their in-flight probe, the channel closes, and the last rows are sent.
        let mut batcher: Batcher<ProbeRow> = Batcher::new(rx, 1024, self.flush_interval);
        while let Some(rows) = batcher.next().await {
            ctx.output("").send(Batch::new(rows_to_batch(&rows))).await?;
        }
        Ok(())
    }
}

async fn probe_loop(
    target: Arc<Target>,
    mut due: Instant,
    limits: ProbeLimits,
    permits: Arc<Semaphore>,
    rows: mpsc::Sender<ProbeRow>,
    stop: tributary_sdk::CancellationToken,
    lateness: Option<Arc<Lateness>>,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep_until(due) => {}
        }
        let permit = tokio::select! {
            _ = stop.cancelled() => return,
            p = permits.acquire() => p.expect("never closed"),
        };
        if let Some(l) = &lateness {
            l.record(Instant::now().saturating_duration_since(due));
        }
        let row = probe(&target, limits).await;
        drop(permit);
        if rows.send(row).await.is_err() {
            return;
        }
        // Fixed rate; a probe that overran its interval skips the slots it missed rather than
        // firing a burst (and never overlaps itself).
        due += target.interval;
        let now = Instant::now();
        if due < now {
            let missed = (now - due).as_nanos() / target.interval.as_nanos() + 1;
            tracing::debug!(target = %target.name, missed, "probe overran its interval; skipping missed slots");
            due += target.interval * missed as u32;
        }
    }
}
