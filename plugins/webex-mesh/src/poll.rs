//! One poll: organisations, then per organisation its clusters (the IDs per-cluster calls need),
//! then every selected time-ranged dataset in parallel under the request budget. A failing
//! endpoint is logged with its TrackingID, counted and recorded in the call log; the others go on.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use futures::stream::{self, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tributary_sdk::ComponentMetrics;

use crate::client::{ApiClient, CallError};
use crate::config::{WebexMeshConfig, DEVICE_TYPES};
use crate::datasets::{self, Ctx, Dataset, Parsed, Row};
use crate::oauth::AuthError;
use crate::time::{id_key, query_time, rfc3339};

/// An organisation and its clusters (ID as the API gave it, name).
#[derive(Debug, Clone)]
pub struct OrgInfo {
    pub id: String,
    pub clusters: Vec<(String, String)>,
}

/// Rows per output gathered by one poll, and the first authorization failure if any.
#[derive(Debug, Default)]
pub struct Harvest {
    pub rows: BTreeMap<&'static str, Vec<Row>>,
    pub auth_failure: Option<AuthError>,
}

impl Harvest {
    fn add(&mut self, output: &'static str, parsed: Vec<Row>) {
        self.rows.entry(output).or_default().extend(parsed);
    }
}

pub struct Poller {
    pub source_id: String,
    pub client: ApiClient,
    pub cfg: WebexMeshConfig,
    pub metrics: Arc<ComponentMetrics>,
}

/// A time-ranged request.
struct Job {
    dataset: Dataset,
    org: String,
    query: Vec<(&'static str, String)>,
}

impl Poller {
    /// Records one call in the call log (main output) and, when it failed, logs and counts it.
    #[allow(clippy::too_many_arguments)]
    fn log_call(
        &self,
        harvest: &mut Harvest,
        org: Option<&str>,
        endpoint: &str,
        window: Option<(DateTime<Utc>, DateTime<Utc>)>,
        started: Instant,
        result: &Result<(u16, Option<String>, usize), CallError>,
    ) {
        let (status, tracking_id, rows, error) = match result {
            Ok((status, tid, rows)) => (Value::from(*status), tid.clone(), Value::from(*rows as i64), Value::Null),
            Err(e) => {
                tributary_sdk::report_error!(self.metrics, warn, source = %self.source_id, org = org.unwrap_or("-"), "GET {endpoint} failed: {e}");
                if let (Some(a), None) = (&e.auth, &harvest.auth_failure) {
                    harvest.auth_failure = Some(a.clone());
                }
                (e.status.map(Value::from).unwrap_or(Value::Null), e.tracking_id.clone(), Value::from(0), Value::String(e.to_string()))
            }
        };
        let row: Row = [
            ("ts", Value::String(rfc3339(Utc::now()))),
            ("organization_id", org.map(|o| Value::String(id_key(o))).unwrap_or(Value::Null)),
            ("endpoint", Value::String(endpoint.into())),
            ("from_timestamp", window.map(|w| Value::String(rfc3339(w.0))).unwrap_or(Value::Null)),
            ("to_timestamp", window.map(|w| Value::String(rfc3339(w.1))).unwrap_or(Value::Null)),
            ("status", status),
            ("rows", rows),
            ("duration_ms", Value::from(started.elapsed().as_secs_f64() * 1000.0)),
            ("tracking_id", tracking_id.map(Value::String).unwrap_or(Value::Null)),
            ("error", error),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        harvest.add("", vec![row]);
    }

    /// Parsed rows, with skipped elements logged and counted.
    fn take(&self, endpoint: &str, parsed: Parsed, tracking_id: Option<&str>) -> Vec<Row> {
        if parsed.skipped > 0 {
            tributary_sdk::report_error!(
                self.metrics,
                warn,
                count = parsed.skipped,
                source = %self.source_id,
                "GET {endpoint}: skipped {} element(s), first: {} (TrackingID {})",
                parsed.skipped,
                parsed.first_problem.unwrap_or_default(),
                tracking_id.unwrap_or("-")
            );
        }
        parsed.rows
    }

    /// `/organizations` and each organisation's clusters: the dimension rows and the IDs.
    pub async fn discover(&self, poll_ts: DateTime<Utc>, harvest: &mut Harvest) -> Vec<OrgInfo> {
        let ts = rfc3339(poll_ts);
        let started = Instant::now();
        let mut org_ids: Vec<String> = match self.client.get("/organizations", &[]).await {
            Ok(reply) => {
                let parsed = datasets::organizations(&reply.body, &ts);
                let outcome =
                    parsed.as_ref().map(|p| (reply.status, reply.tracking_id.clone(), p.rows.len())).map_err(|e| parse_failure(e, &reply));
                self.log_call(harvest, None, "/organizations", None, started, &outcome);
                let rows = parsed.map(|p| self.take("/organizations", p, reply.tracking_id.as_deref())).unwrap_or_default();
                let wanted = |id: &str| self.cfg.org_ids.is_empty() || self.cfg.org_ids.iter().any(|o| id_key(o) == id_key(id));
                let rows: Vec<Row> = rows.into_iter().filter(|r| wanted(r["organization_id"].as_str().unwrap_or_default())).collect();
                let ids = rows.iter().filter_map(|r| r["organization_id"].as_str().map(str::to_string)).collect();
                harvest.add("organizations", rows);
                ids
            }
            Err(e) => {
                self.log_call(harvest, None, "/organizations", None, started, &Err(e));
                Vec::new()
            }
        };
        if org_ids.is_empty() {
            // Without the list, the configured organisations can still be read.
            org_ids = self.cfg.org_ids.iter().map(|o| id_key(o)).collect();
        }
        let mut orgs = Vec::new();
        for org in org_ids {
            let started = Instant::now();
            let path = Dataset::Clusters.path();
            let ctx = Ctx { org_id: &org, poll_ts: &ts, trigger_query: "All" };
            let clusters = match self.client.get(path, &[("orgId", org.clone())]).await {
                Ok(reply) => match datasets::clusters(&reply.body, &ctx) {
                    Ok((details, nodes, found)) => {
                        self.log_call(
                            harvest,
                            Some(&org),
                            path,
                            None,
                            started,
                            &Ok((reply.status, reply.tracking_id.clone(), details.rows.len())),
                        );
                        if self.cfg.datasets.contains(&Dataset::Clusters) {
                            let details = self.take(path, details, reply.tracking_id.as_deref());
                            let nodes = self.take(path, nodes, reply.tracking_id.as_deref());
                            harvest.add("cluster_details", details);
                            harvest.add("node_details", nodes);
                        }
                        found
                    }
                    Err(e) => {
                        self.log_call(harvest, Some(&org), path, None, started, &Err(parse_failure(&e, &reply)));
                        Vec::new()
                    }
                },
                Err(e) => {
                    self.log_call(harvest, Some(&org), path, None, started, &Err(e));
                    Vec::new()
                }
            };
            orgs.push(OrgInfo { id: org, clusters });
        }
        orgs
    }

    /// Every selected time-ranged dataset of `org` over `[from, to]`.
    pub async fn read_window(&self, org: &OrgInfo, from: DateTime<Utc>, to: DateTime<Utc>, poll_ts: DateTime<Utc>, harvest: &mut Harvest) {
        let range = [("from", query_time(from)), ("to", query_time(to))];
        let mut jobs = Vec::new();
        for &dataset in &self.cfg.datasets {
            let mut query: Vec<(&'static str, String)> = Vec::new();
            match dataset {
                Dataset::Clusters => continue,
                Dataset::NodeAvailability => {
                    for (cluster, _) in &org.clusters {
                        let mut q = vec![("clusterId", cluster.clone())];
                        q.extend(range.iter().cloned());
                        jobs.push(Job { dataset, org: org.id.clone(), query: q });
                    }
                    continue;
                }
                Dataset::ClientTypes => query.push(("deviceType", DEVICE_TYPES.join(","))),
                d if d.is_test_results() => query.push(("triggerType", "All".into())),
                _ => {}
            }
            query.push(("orgId", org.id.clone()));
            query.extend(range.iter().cloned());
            jobs.push(Job { dataset, org: org.id.clone(), query });
        }
        let ts = rfc3339(poll_ts);
        let results: Vec<_> = stream::iter(jobs)
            .map(|job| async move {
                let started = Instant::now();
                let reply = self.client.get(job.dataset.path(), &job.query).await;
                (job, started, reply)
            })
            .buffer_unordered(self.cfg.concurrency)
            .collect()
            .await;
        for (job, started, reply) in results {
            let path = job.dataset.path();
            let reply = match reply {
                Ok(r) => r,
                Err(e) => {
                    self.log_call(harvest, Some(&job.org), path, Some((from, to)), started, &Err(e));
                    continue;
                }
            };
            let ctx = Ctx { org_id: &job.org, poll_ts: &ts, trigger_query: "All" };
            match datasets::rows(job.dataset, &reply.body, &ctx) {
                Ok(p) => {
                    self.log_call(
                        harvest,
                        Some(&job.org),
                        path,
                        Some((from, to)),
                        started,
                        &Ok((reply.status, reply.tracking_id.clone(), p.rows.len())),
                    );
                    let rows = self.take(path, p, reply.tracking_id.as_deref());
                    harvest.add(job.dataset.output(), rows);
                }
                Err(e) => self.log_call(harvest, Some(&job.org), path, Some((from, to)), started, &Err(parse_failure(&e, &reply))),
            }
        }
    }
}

fn parse_failure(e: &str, reply: &crate::client::Reply) -> CallError {
    CallError {
        status: Some(reply.status),
        tracking_id: reply.tracking_id.clone(),
        message: format!("unexpected response: {e}"),
        auth: None,
    }
}

/// Backfill progress per organisation: `[reached, …]` is read; done once `reached <= target`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BackfillState {
    pub orgs: HashMap<String, OrgBackfill>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct OrgBackfill {
    pub target: DateTime<Utc>,
    pub reached: DateTime<Utc>,
}

impl BackfillState {
    pub fn load(path: &Path) -> Result<BackfillState, String> {
        match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| format!("state file {}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BackfillState::default()),
            Err(e) => Err(format!("state file {}: {e}", path.display())),
        }
    }

    pub fn save(&self, path: &Path) -> Result<(), String> {
        let fail = |e: std::io::Error| format!("state file {}: {e}", path.display());
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(fail)?;
        }
        // Written aside, fsynced and renamed: a crash leaves the old state or the new, whole.
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp).map_err(fail)?;
        std::io::Write::write_all(&mut f, serde_json::to_string_pretty(self).expect("serializes").as_bytes()).map_err(fail)?;
        f.sync_all().map_err(fail)?;
        std::fs::rename(&tmp, path).map_err(fail)
    }

    /// `org reached <time> (target <time>)` per organisation, for the log.
    pub fn summary(&self) -> String {
        let mut orgs: Vec<String> = self
            .orgs
            .iter()
            .map(|(org, b)| format!("{org} back to {} (target {})", crate::time::query_time(b.reached), crate::time::query_time(b.target)))
            .collect();
        orgs.sort();
        orgs.join(", ")
    }

    /// Minutes of history still to read for `orgs` (each registered on first sight, as
    /// `next_window` would).
    pub fn minutes_left(&mut self, orgs: &[&str], now: DateTime<Utc>, cfg: &WebexMeshConfig) -> u64 {
        let span = |d: std::time::Duration| chrono::Duration::from_std(d).unwrap_or_default();
        let mut left = 0;
        for org in orgs {
            let entry = self
                .orgs
                .entry(id_key(org))
                .or_insert(OrgBackfill { target: now - span(cfg.backfill.0), reached: now - span(cfg.lookback.0) });
            left += (entry.reached - entry.target).num_minutes().max(0) as u64;
        }
        left
    }

    /// The next window to backfill for `org` (registering it on first sight), or `None` when done.
    pub fn next_window(&mut self, org: &str, now: DateTime<Utc>, cfg: &WebexMeshConfig) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
        let span = |d: std::time::Duration| chrono::Duration::from_std(d).unwrap_or_default();
        let entry =
            self.orgs.entry(id_key(org)).or_insert(OrgBackfill { target: now - span(cfg.backfill.0), reached: now - span(cfg.lookback.0) });
        if entry.reached <= entry.target {
            return None;
        }
        let start = (entry.reached - span(cfg.backfill_window.0)).max(entry.target);
        Some((start, entry.reached))
    }

    /// The oldest time `org`'s backfill reads back to (once registered).
    pub fn target(&self, org: &str) -> Option<DateTime<Utc>> {
        self.orgs.get(&id_key(org)).map(|o| o.target)
    }

    pub fn done_until(&mut self, org: &str, start: DateTime<Utc>) {
        if let Some(e) = self.orgs.get_mut(&id_key(org)) {
            e.reached = start;
        }
    }
}
