//! Scheduling: one task per target on the sdk's scheduler (first start spread over the
//! interval, a global concurrency limit, no overlap of a target with itself), and a collector that
//! batches rows.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;
use tributary_sdk::schedule::{every, random_offset, Lateness, Slot};
use tributary_sdk::{Batch, Batcher, ConfigError, Source, SourceContext};

use crate::config::{SiteProbeConfig, Target};
use crate::probe::{probe, ProbeLimits, ProbeRow};
use crate::rows_to_batch;

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
            let offset = if self.start_jitter { random_offset(target.interval) } else { Duration::ZERO };
            let first_due = Instant::now() + offset;
            let (target, limits, permits, stop, lateness, tx) =
                (target.clone(), self.limits, permits.clone(), ctx.shutdown.clone(), self.lateness.clone(), tx.clone());
            tokio::spawn(async move {
                let target = &target;
                let slot = Slot { name: &target.name, interval: target.interval, first_due, permits, stop, lateness };
                every(slot, tx, move || probe(target, limits)).await
            });
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
