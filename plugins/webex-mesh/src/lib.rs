//! `webex_mesh` source: Webex Video Mesh monitoring data (clusters and nodes, availability,
//! utilization, cloud overflow, call redirects, client types, reachability / media health /
//! network test results) polled over a Webex Integration's OAuth tokens, one named output per
//! dataset; and [`simulator`], the API stand-in behind `tributary simulate webex-mesh`.

mod backfill_positions;
pub mod client;
pub mod config;
pub mod datasets;
mod error_body;
pub mod oauth;
pub mod poll;
pub mod simulator;
pub mod time;

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Context;
use chrono::Utc;
use tributary_sdk::progress::AckedProgress;
use tributary_sdk::progress_report::ProgressReport;
use tributary_sdk::{
    AckSet, Batch, BuiltSource, ComponentConfig, ConfigError, OutputSpec, Position, Replay, Source, SourceContext, SourcePlugin,
};

use client::{ApiClient, RateLimiter};
use config::{Credentials, Resolved, WebexMeshConfig};
use oauth::{Auth, AuthError, OAuth};
use poll::{BackfillState, Harvest, Poller};

pub struct WebexMeshPlugin;

impl SourcePlugin for WebexMeshPlugin {
    fn type_name(&self) -> &'static str {
        "webex_mesh"
    }
    fn delivery(&self) -> &'static [tributary_sdk::delivery::SourceDelivery] {
        use tributary_sdk::delivery::SourceDelivery;
        &[SourceDelivery {
            variant: "",
            guarantee: "at-least-once for the backfill (exactly once into `delivery: exactly_once` sinks), in memory for the live poll",
            how: "a backfill window is recorded in `state_file` only when its rows and those of every earlier window are written; poll windows overlap (`lookback`) and the dashboards' tables are upserted on natural keys, so re-reads converge. Each backfill window carries a position in its organisation's stream, which exactly-once sinks store",
            duplicates: "none in upserted tables; no backfill window twice in an exactly-once sink",
            crash_loses: "the poll in flight; never a backfill window",
        }]
    }
    fn build(&self, config: &ComponentConfig) -> Result<BuiltSource, ConfigError> {
        let cfg: WebexMeshConfig = config.decode()?;
        let resolved = cfg.resolve()?;
        let outputs = datasets::output_schemas()
            .into_iter()
            .map(|(name, schema)| if name.is_empty() { OutputSpec::main(schema) } else { OutputSpec::named(name, schema) })
            .collect();
        Ok(BuiltSource { outputs, source: Box::new(WebexMeshSource { id: config.id.clone(), cfg, resolved }) })
    }
}

pub struct WebexMeshSource {
    id: String,
    cfg: WebexMeshConfig,
    resolved: Resolved,
}

#[async_trait::async_trait]
impl Source for WebexMeshSource {
    /// A backfill window is recorded once its rows are acknowledged, and carries a position in
    /// its organisation's backfill (see [`backfill_positions`]).
    fn replay(&self) -> Replay {
        if self.cfg.backfill.0.is_zero() {
            Replay::Nothing
        } else {
            Replay::WithPositions
        }
    }
    async fn run(self: Box<Self>, ctx: SourceContext) -> anyhow::Result<()> {
        let (cfg, Resolved { base_url, credentials }) = (self.cfg, self.resolved);
        let http =
            reqwest::Client::builder().timeout(cfg.timeout.0).user_agent(concat!("tributary/", env!("CARGO_PKG_VERSION"))).build()?;
        let (auth, oauth) = match credentials {
            Credentials::Token(token) => (Auth::Static(token), None),
            Credentials::Integration(integration) => {
                let oauth = Arc::new(OAuth::new(&self.id, *integration, http.clone()).map_err(|e| anyhow::anyhow!("{e}"))?);
                (Auth::OAuth(oauth.clone()), Some(oauth))
            }
        };
        let auth = Arc::new(auth);
        let client = ApiClient::new(
            &self.id,
            http,
            base_url.as_str(),
            auth.clone(),
            RateLimiter::new(cfg.rate_limit.requests, cfg.rate_limit.per.0),
            cfg.max_attempts,
            ctx.shutdown.clone(),
            ctx.metrics.clone(),
        );
        let poller = Poller { source_id: self.id.clone(), client, cfg: cfg.clone(), metrics: ctx.metrics.clone() };
        let mut backfill = BackfillState::load(&cfg.state_file).map_err(|e| anyhow::anyhow!(e))?;
        let progress = backfill_progress(&self.id, &cfg.state_file);
        // The backfill's progress in the log, with its rate and ETA (while there is history left).
        let mut report: Option<ProgressReport> = None;
        let mut sinks_stopped: HashMap<String, Vec<chrono::DateTime<Utc>>> = HashMap::new();
        let mut tick = tokio::time::interval(cfg.interval.0);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = ctx.shutdown.cancelled() => break,
            }
            if let Some(o) = &oauth {
                if !o.has_usable_tokens().await && o.login(&AuthError::NeedsLogin, &ctx.shutdown).await.is_err() {
                    break;
                }
            }
            let now = Utc::now();
            let lookback = chrono::Duration::from_std(cfg.lookback.0).unwrap_or_default();
            let mut harvest = Harvest::default();
            let orgs = poller.discover(now, &mut harvest).await;
            for org in &orgs {
                poller.read_window(org, now - lookback, now, now, &mut harvest).await;
            }
            let auth_failure = harvest.auth_failure.take();
            send(&ctx, harvest, AckSet::none(), None).await?;
            if let (Some(e), Some(o)) = (auth_failure, &oauth) {
                if e.needs_login() {
                    if o.login(&e, &ctx.shutdown).await.is_err() {
                        break;
                    }
                    continue;
                }
            }
            // Backfill, oldest last, one window per request; progress survives restarts.
            if !cfg.backfill.0.is_zero() {
                let ids: Vec<&str> = orgs.iter().map(|o| o.id.as_str()).collect();
                let left = backfill.minutes_left(&ids, now, &cfg);
                if left > 0 && report.is_none() {
                    let id = self.id.clone();
                    report = Some(ProgressReport::logged(
                        "backfill",
                        "minutes of history",
                        left,
                        move |line| tracing::info!(source = %id, "{line}"),
                    ));
                }
                for org in &orgs {
                    // Exactly once: where the sinks stopped in this organisation's backfill, asked
                    // when it is first met in this run.
                    let stops = match (ctx.sink_positions.is_empty(), backfill.target(&org.id)) {
                        (false, Some(target)) if !sinks_stopped.contains_key(&org.id) => {
                            let stops = backfill_positions::sinks_stopped_at(&ctx, &org.id, target)
                                .await
                                .context("asking the exactly-once sinks where they stopped")?;
                            sinks_stopped.entry(org.id.clone()).or_insert(stops)
                        }
                        _ => sinks_stopped.entry(org.id.clone()).or_default(),
                    };
                    while let Some((from, to)) = backfill.next_window(&org.id, now, &cfg) {
                        if ctx.shutdown.is_cancelled() {
                            break;
                        }
                        let from = backfill_positions::cut(from, to, stops);
                        let mut harvest = Harvest::default();
                        poller.read_window(org, from, to, Utc::now(), &mut harvest).await;
                        if harvest.rows.get("").is_some_and(|calls| calls.iter().any(|c| !c["error"].is_null())) {
                            // Retried from the same window next cycle. Exactly once, only the call
                            // log goes now: the window's rows come with its position then.
                            if !ctx.sink_positions.is_empty() {
                                harvest.rows.retain(|output, _| output.is_empty());
                            }
                            send(&ctx, harvest, AckSet::none(), None).await?;
                            break;
                        }
                        backfill.done_until(&org.id, from);
                        let position = backfill
                            .target(&org.id)
                            .filter(|_| !ctx.sink_positions.is_empty())
                            .map(|target| backfill_positions::position(&ctx.id, &org.id, target, from));
                        // Saved once every sink wrote this window's rows (and the windows before).
                        send(&ctx, harvest, AckSet::single(progress.track(backfill.clone())), position).await?;
                        tracing::info!(source = %self.id, org = %org.id, "read the backfill window {} .. {}", time::query_time(from), time::query_time(to));
                        if let Some(r) = &report {
                            r.add((to - from).num_minutes().max(0) as u64);
                        }
                    }
                }
                if backfill.minutes_left(&ids, now, &cfg) == 0 {
                    if let Some(r) = report.take() {
                        r.finish();
                    }
                }
            }
        }
        Ok(())
    }
}

/// Sends every output's rows, each batch holding `acks`. Rows that cannot be encoded are counted
/// and logged; their copy of the acks is dropped, which fails them (a backfill window is read
/// again after a restart rather than skipped).
async fn send(ctx: &SourceContext, harvest: Harvest, acks: AckSet, position: Option<Position>) -> anyhow::Result<()> {
    for (output, rows) in harvest.rows {
        if rows.is_empty() {
            continue;
        }
        match datasets::to_batch(output, &rows) {
            Ok(batch) => ctx.output(output).send(Batch::with_acks(batch, acks.clone()).at(position.clone())).await?,
            Err(e) => {
                tributary_sdk::report_error!(ctx.metrics, error, source = %ctx.id, "rows for output `{output}` could not be encoded: {e}");
                acks.clone().fail();
            }
        }
    }
    acks.release();
    Ok(())
}

/// Saves backfill progress to `state_file` as the windows' acks resolve, in read order.
fn backfill_progress(source: &str, state_file: &std::path::Path) -> AckedProgress<BackfillState> {
    let (source, path) = (source.to_string(), state_file.to_path_buf());
    AckedProgress::new(move |state: BackfillState| match state.save(&path) {
        Ok(()) => tracing::info!(source = %source, "backfill progress saved: {}", state.summary()),
        Err(e) => tracing::error!(source = %source, "cannot save backfill progress: {e}"),
    })
}

#[cfg(test)]
mod tests;
