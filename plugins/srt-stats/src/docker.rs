//! `mode: docker`: follow the log streams (stdout and stderr, demultiplexed by the Engine API)
//! of containers selected by labels, picking up containers that start later and noticing the
//! ones that stop.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bollard::container::LogOutput;
use bollard::query_parameters::{ListContainersOptionsBuilder, LogsOptionsBuilder};
use bollard::Docker;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tributary_sdk::{now_us, CancellationToken, ComponentMetrics};

use crate::config::{DockerConfig, DockerMode};
use crate::lines::LineSplitter;
use crate::session::{Emitted, Role, SessionTracker};
use crate::supervise::feed;
use crate::{LineErrors, MAX_LINE};

pub fn connect(cfg: &DockerConfig) -> anyhow::Result<Docker> {
    let docker = match &cfg.host {
        Some(host) => Docker::connect_with_host(host),
        None => Docker::connect_with_defaults(),
    };
    docker.map_err(|e| {
        anyhow::anyhow!(
            "cannot use the Docker Engine API at {}: {e}",
            cfg.host.clone().or_else(|| std::env::var("DOCKER_HOST").ok()).unwrap_or_else(|| "the default socket".into())
        )
    })
}

/// A container being followed.
struct Followed {
    id: String,
    session: String,
    role: Option<Role>,
    /// Only log lines from this unix time on (0 = from the container's start).
    since: i64,
}

pub async fn run(
    source_id: String,
    cfg: DockerMode,
    rows: mpsc::Sender<Emitted>,
    shutdown: CancellationToken,
    metrics: Arc<ComponentMetrics>,
) -> anyhow::Result<()> {
    let docker = connect(&cfg.docker)?;
    let started_at = chrono::Utc::now().timestamp();
    let mut first_pass = true;
    let mut following: HashSet<String> = HashSet::new();
    // When we stopped following a container: if it starts again, read only what is new.
    let mut left_at: HashMap<String, i64> = HashMap::new();
    let mut tasks: JoinSet<(String, i64)> = JoinSet::new();
    let filters: HashMap<&str, Vec<&str>> = HashMap::from([("label", cfg.docker.labels.iter().map(String::as_str).collect())]);
    let mut reachable = true;
    loop {
        match docker.list_containers(Some(ListContainersOptionsBuilder::default().filters(&filters).build())).await {
            Ok(containers) => {
                if !reachable {
                    tracing::info!(source = %source_id, "Docker Engine API reachable again");
                    reachable = true;
                }
                for c in containers {
                    let Some(id) = c.id.clone() else { continue };
                    if following.contains(&id) {
                        continue;
                    }
                    let labels = c.labels.clone().unwrap_or_default();
                    let name = c
                        .names
                        .as_ref()
                        .and_then(|n| n.first())
                        .map(|n| n.trim_start_matches('/').to_string())
                        .unwrap_or_else(|| id.chars().take(12).collect());
                    let session = labels.get(&cfg.docker.session_label).cloned().unwrap_or(name);
                    let role = match labels.get(&cfg.docker.role_label).map(String::as_str) {
                        Some("tx") => Some(Role::Tx),
                        Some("rx") => Some(Role::Rx),
                        _ => None,
                    };
                    // Containers already running when the pipeline started: only new lines (a
                    // restarted pipeline must not replay hours of logs). Later ones: from the start.
                    let since = left_at.get(&id).copied().unwrap_or(if first_pass { started_at } else { 0 });
                    tracing::info!(source = %source_id, container = %id.chars().take(12).collect::<String>(), session = %session, "following container");
                    following.insert(id.clone());
                    let f = Followed { id, session, role, since };
                    tasks.spawn(follow(source_id.clone(), docker.clone(), f, cfg.cumulative, rows.clone(), metrics.clone()));
                }
            }
            Err(e) => {
                // Said once per outage at warn; the retries that follow are counted quietly.
                if reachable {
                    tributary_sdk::report_error!(metrics, warn, source = %source_id, error = %e, "listing containers failed; retrying");
                    reachable = false;
                } else {
                    tributary_sdk::report_error!(metrics, debug, source = %source_id, error = %e, "listing containers failed again");
                }
            }
        }
        first_pass = false;
        let wait = tokio::time::sleep(cfg.docker.discover_interval.0);
        tokio::pin!(wait);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    tasks.abort_all();
                    return Ok(());
                }
                _ = &mut wait => break,
                Some(done) = tasks.join_next() => {
                    if let Ok((id, at)) = done {
                        following.remove(&id);
                        left_at.insert(id, at);
                    }
                }
            }
        }
    }
}

/// Follow one container's logs until it stops; returns its id and when we stopped.
async fn follow(
    source_id: String,
    docker: Docker,
    f: Followed,
    cumulative: bool,
    rows: mpsc::Sender<Emitted>,
    metrics: Arc<ComponentMetrics>,
) -> (String, i64) {
    let mut tracker = SessionTracker::new(f.session.as_str(), f.role, cumulative);
    let mut errors = LineErrors::new(&source_id, &f.session);
    let short: String = f.id.chars().take(12).collect();
    let mut out = Emitted::default();
    tracker.started(now_us(), format!("container {short} running"), &mut out);
    let _ = rows.send(out).await;
    let options = LogsOptionsBuilder::default().follow(true).stdout(true).stderr(true).since(f.since as i32).build();
    let mut logs = docker.logs(&f.id, Some(options));
    let (mut out_lines, mut err_lines) = (LineSplitter::new(MAX_LINE), LineSplitter::new(MAX_LINE));
    let ended = loop {
        let Some(item) = logs.next().await else {
            break "container stopped".to_string();
        };
        let mut emitted = Emitted::default();
        match item {
            // A TTY container merges both streams (Console); the line forms tell them apart.
            Ok(LogOutput::StdOut { message }) | Ok(LogOutput::Console { message }) => {
                out_lines.push(&message, |p| feed(&mut tracker, &mut errors, &metrics, p, &mut emitted))
            }
            Ok(LogOutput::StdErr { message }) => err_lines.push(&message, |p| feed(&mut tracker, &mut errors, &metrics, p, &mut emitted)),
            Ok(LogOutput::StdIn { .. }) => {}
            Err(e) => {
                // Logged by the caller with the container, once the stream is given up.
                metrics.errors.inc();
                break format!("log stream failed: {e}");
            }
        }
        if !emitted.is_empty() && rows.send(emitted).await.is_err() {
            break "pipeline stopped".to_string();
        }
    };
    let mut out = Emitted::default();
    out_lines.finish(|p| feed(&mut tracker, &mut errors, &metrics, p, &mut out));
    err_lines.finish(|p| feed(&mut tracker, &mut errors, &metrics, p, &mut out));
    tracker.exited(now_us(), format!("container {short}: {ended}"), &mut out);
    tracing::info!(source = %source_id, container = %short, session = %f.session, reason = %ended, "stopped following container");
    let _ = rows.send(out).await;
    (f.id, chrono::Utc::now().timestamp())
}
