//! `demo` source: realistic synthetic rows for the four Tributary domains, at a configurable rate.
//! No server needed, so the quickstart and tests run anywhere.
//!
//! Built into the engine rather than a plugin because it makes its rows with the real plugins'
//! code — the site probe's row type, the SRT stats row builder, the Webex simulator's bodies
//! parsed by the webex_mesh source's parser, badge payloads decoded by the badge_events decoder —
//! so a demo's columns are exactly what the real source would send (plugins may share only the
//! sdk; the engine may use them all).

mod generators;

use std::time::Duration;

use serde::Deserialize;
use tributary_sdk::{BuiltSource, ComponentConfig, ConfigError, OutputSpec, Source, SourceContext, SourcePlugin};

pub use generators::{schema_for, Generator};

/// Which domain's rows to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DemoKind {
    /// Site probe results (the API status monitor's rows).
    Probes,
    /// Webex Video Mesh utilization per cluster.
    MeshUtilization,
    /// SRT session statistics.
    Srt,
    /// Badge API events.
    Badges,
}

/// Config of a `demo` source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DemoConfig {
    /// Which rows to generate.
    pub kind: DemoKind,
    /// Rows per second (default 10).
    #[serde(default = "default_rate")]
    pub rate: f64,
    /// Rows per batch (default: a tenth of a second's worth, at least 1, at most 8192).
    pub batch_size: Option<usize>,
    /// Stop after this many rows (default: run until the pipeline stops).
    pub count: Option<u64>,
    /// Seed for reproducible values (timestamps are still the wall clock).
    pub seed: Option<u64>,
}

fn default_rate() -> f64 {
    10.0
}

pub struct DemoSourcePlugin;

impl SourcePlugin for DemoSourcePlugin {
    fn type_name(&self) -> &'static str {
        "demo"
    }
    fn delivery(&self) -> &'static [tributary_sdk::delivery::SourceDelivery] {
        &[tributary_sdk::delivery::MEASURED]
    }

    fn build(&self, config: &ComponentConfig) -> Result<BuiltSource, ConfigError> {
        let cfg: DemoConfig = config.decode()?;
        if !(cfg.rate > 0.0 && cfg.rate.is_finite()) {
            return Err(ConfigError::at("rate", format!("must be a positive number of rows per second, got {}", cfg.rate)));
        }
        if cfg.batch_size == Some(0) {
            return Err(ConfigError::at("batch_size", "must be at least 1"));
        }
        Ok(BuiltSource { outputs: vec![OutputSpec::main(schema_for(cfg.kind))], source: Box::new(DemoSource { cfg }) })
    }
}

pub struct DemoSource {
    cfg: DemoConfig,
}

#[async_trait::async_trait]
impl Source for DemoSource {
    async fn run(self: Box<Self>, ctx: SourceContext) -> anyhow::Result<()> {
        let cfg = self.cfg;
        let batch_size = cfg.batch_size.unwrap_or(((cfg.rate / 10.0).ceil() as usize).clamp(1, 8192));
        let period = Duration::from_secs_f64(batch_size as f64 / cfg.rate);
        let mut generator = Generator::new(cfg.kind, cfg.seed.unwrap_or_else(rand::random));
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut emitted = 0u64;
        loop {
            tokio::select! {
                _ = ctx.shutdown.cancelled() => return Ok(()),
                _ = ticker.tick() => {}
            }
            let n = match cfg.count {
                Some(limit) if emitted >= limit => return Ok(()),
                Some(limit) => (limit - emitted).min(batch_size as u64) as usize,
                None => batch_size,
            };
            let batch = generator.batch(n, chrono::Utc::now());
            if ctx.send(batch).await.is_err() {
                return Ok(());
            }
            emitted += n as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_non_positive_rates_with_the_option_named() {
        let err = DemoSourcePlugin.build(&ComponentConfig::from_yaml("d", "{kind: probes, rate: 0}")).err().unwrap();
        assert_eq!(err.to_string(), "rate: must be a positive number of rows per second, got 0");
        let err = DemoSourcePlugin.build(&ComponentConfig::from_yaml("d", "{kind: weather}")).err().unwrap();
        assert!(
            err.to_string().starts_with("kind: unknown variant `weather`, expected one of `probes`, `mesh_utilization`, `srt`, `badges`"),
            "{err}"
        );
    }
}
