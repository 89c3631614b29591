//! `srt_stats` source: SRT link statistics and connection events, three ways:
//!
//! - `mode: sessions` — Tributary runs and supervises srt-live-transmit transmitters and
//!   receivers declared in YAML (the SRT management API's parameters), restarting any that exits;
//! - `mode: docker` — follows the logs of containers selected by labels (Docker Engine API);
//! - `mode: srt_api` — polls an SRT management REST API.
//!
//! Lines from processes and containers go through one parser ([`parse`]) and a per-session
//! state machine ([`session`]) that applies the management API's rules for `connected`,
//! `reconnections` and `line_loss_pct`. Outputs: `<id>` (stats rows) and `<id>.events`.

pub mod api;
pub mod config;
pub mod docker;
pub mod lines;
pub mod parse;
pub mod rows;
pub mod session;
pub mod supervise;

use std::time::Duration;

use tokio::sync::mpsc;
use tributary_sdk::{Batch, Batcher, BuiltSource, ComponentConfig, ConfigError, OutputSpec, Source, SourceContext, SourcePlugin};

use config::SrtStatsConfig;
use session::Emitted;

/// Longest output line accepted (a JSON stats line is about 900 bytes).
pub const MAX_LINE: usize = 64 * 1024;

/// Reports unparseable lines: the first few per session, then every 1000th (they are all
/// counted in `errors_total`).
pub(crate) struct LineErrors {
    source_id: String,
    session: String,
    seen: u64,
}

impl LineErrors {
    pub fn new(source_id: &str, session: &str) -> Self {
        LineErrors { source_id: source_id.into(), session: session.into(), seen: 0 }
    }
    /// Counts the error; logs the first five and every 1000th at warn, the rest at debug.
    pub fn report(&mut self, metrics: &tributary_sdk::ComponentMetrics, e: &parse::ParseError) {
        self.seen += 1;
        if self.seen <= 5 || self.seen.is_multiple_of(1000) {
            tributary_sdk::report_error!(metrics, warn, source = %self.source_id, session = %self.session, skipped = self.seen, "skipped an output line: {e}");
        } else {
            tributary_sdk::report_error!(metrics, debug, source = %self.source_id, session = %self.session, skipped = self.seen, "skipped an output line: {e}");
        }
    }
}

pub struct SrtStatsPlugin;

impl SourcePlugin for SrtStatsPlugin {
    fn type_name(&self) -> &'static str {
        "srt_stats"
    }
    fn delivery(&self) -> &'static [tributary_sdk::delivery::SourceDelivery] {
        &[tributary_sdk::delivery::MEASURED]
    }
    fn build(&self, config: &ComponentConfig) -> Result<BuiltSource, ConfigError> {
        let cfg = SrtStatsConfig::from_component(config)?;
        Ok(BuiltSource {
            outputs: vec![OutputSpec::main(rows::stats_schema()), OutputSpec::named("events", rows::events_schema())],
            source: Box::new(SrtStatsSource { id: config.id.clone(), cfg }),
        })
    }
}

pub struct SrtStatsSource {
    id: String,
    cfg: SrtStatsConfig,
}

/// Rows waiting to be sent at most this long, or until this many.
const MAX_PENDING_ROWS: usize = 5000;

#[async_trait::async_trait]
impl Source for SrtStatsSource {
    async fn run(self: Box<Self>, ctx: SourceContext) -> anyhow::Result<()> {
        let (tx, rx) = mpsc::channel::<Emitted>(1024);
        // Producers stop on their own token, after which the collector drains what they sent.
        let stop = ctx.shutdown.child_token();
        let mut producers = tokio::task::JoinSet::new();
        let batch_wait = self.cfg.batch_wait();
        match self.cfg {
            SrtStatsConfig::Sessions(mode) => {
                for s in &mode.sessions {
                    let sup = supervise::Supervisor::from_config(&self.id, &mode, s, tx.clone(), stop.clone(), ctx.metrics.clone());
                    producers.spawn(async move {
                        sup.run().await;
                        Ok(())
                    });
                }
            }
            SrtStatsConfig::Docker(mode) => {
                producers.spawn(docker::run(self.id.clone(), mode, tx.clone(), stop.clone(), ctx.metrics.clone()));
            }
            SrtStatsConfig::SrtApi { api, .. } => {
                let poller = api::ApiPoller::new(&self.id, api)?;
                let (tx, stop, metrics) = (tx.clone(), stop.clone(), ctx.metrics.clone());
                producers.spawn(async move {
                    poller.run(tx, stop, metrics).await;
                    Ok(())
                });
            }
        }
        drop(tx);
        let mut batcher: Batcher<Emitted, Emitted> = Batcher::new(rx, MAX_PENDING_ROWS, batch_wait.max(Duration::from_millis(10)));
        loop {
            tokio::select! {
                batch = batcher.next() => match batch {
                    Some(mut rows) => send(&ctx, &mut rows).await?,
                    // Every producer finished (shutdown, or nothing left to run).
                    None => break,
                },
                Some(done) = producers.join_next() => {
                    if let Ok(Err(e)) = done {
                        // A mode that cannot run at all (no Docker API): report and stop the source.
                        stop.cancel();
                        send(&ctx, &mut batcher.take_pending()).await?;
                        return Err(e);
                    }
                }
            }
        }
        Ok(())
    }
}

async fn send(ctx: &SourceContext, pending: &mut Emitted) -> anyhow::Result<()> {
    let Emitted { stats, events } = std::mem::take(pending);
    if !stats.is_empty() {
        ctx.output("").send(Batch::new(rows::stats_batch(&stats))).await?;
    }
    if !events.is_empty() {
        ctx.output("events").send(Batch::new(rows::events_batch(&events))).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
