//! Tributary: YAML-defined streaming pipelines for operations telemetry — sources, DataFusion SQL
//! transforms, sinks. See the README for a tour; `plugins/` for every source and sink.

pub mod admin;
pub mod cli;
pub mod config;
pub mod demo;
pub mod graph;
pub mod logging;
pub mod pipeline_tests;
pub mod plugins;
pub mod query;
pub mod replay;
pub mod runtime;
pub mod serve;
pub mod sql;
pub mod tables;
pub mod tap;
pub mod top;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use config::{Diagnostics, PipelineFile};
use runtime::{RunOptions, RunReport};

/// Load and check a pipeline file without running anything (what `tributary validate` does).
pub async fn validate_file(path: &Path) -> Result<graph::Plan, Diagnostics> {
    let file = PipelineFile::load(path)?;
    graph::plan(&file, &plugins::Registry::builtin()).await
}

/// Why a run did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Invalid(#[from] Diagnostics),
    #[error("{0:#}")]
    Admin(anyhow::Error),
}

/// Validate, start the admin API, and run until `shutdown` is cancelled or every source is done.
/// `admin` overrides the file's `admin.address`.
/// The pipeline's `parquet` sinks as chart tables, named after the sinks.
fn parquet_outputs(file: &PipelineFile) -> Vec<serve::TableDecl> {
    file.components
        .iter()
        .filter(|c| c.kind == config::Kind::Sink && c.type_name == "parquet")
        .filter_map(|c| {
            // The sink's own config (validated already): its place, store options and time column.
            let cfg: tributary_parquet::ParquetSinkConfig =
                tributary_sdk::ComponentConfig::new(c.id.clone(), c.options.clone()).decode().ok()?;
            let location = tributary_parquet::store::read_location(&cfg.path, &cfg.storage).ok()?;
            Some(serve::TableDecl { name: c.id.clone(), location, time_column: Some(cfg.time_column), chart: cfg.chart })
        })
        .collect()
}

pub async fn run_file(
    path: &Path,
    admin: Option<SocketAddr>,
    shutdown: CancellationToken,
    opts: RunOptions,
) -> Result<RunReport, StartError> {
    start(path, admin, shutdown, opts, None).await
}

/// [`run_file`], reloading the file on SIGHUP and, with `watch`, whenever its content changes:
/// only the components whose config changed restart (see `runtime/reload.rs`).
pub async fn run_file_reloading(
    path: &Path,
    admin: Option<SocketAddr>,
    shutdown: CancellationToken,
    opts: RunOptions,
    watch: bool,
) -> Result<RunReport, StartError> {
    let reloads = watch_for_reloads(path.to_path_buf(), watch, shutdown.clone());
    start(path, admin, shutdown, opts, Some(reloads)).await
}

/// Validate the file again on SIGHUP (and every second's change, with `watch`) and hand the
/// result to the running pipeline.
fn watch_for_reloads(
    path: std::path::PathBuf,
    watch: bool,
    shutdown: CancellationToken,
) -> tokio::sync::mpsc::Receiver<runtime::ReloadRequest> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).expect("SIGHUP handler");
    tokio::spawn(async move {
        let mut seen = std::fs::read(&path).ok();
        let mut poll = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            let why = tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = hangup.recv() => {
                    seen = std::fs::read(&path).ok();
                    "SIGHUP"
                }
                _ = poll.tick(), if watch => {
                    let now = std::fs::read(&path).ok();
                    if now.is_none() || now == seen {
                        continue;
                    }
                    seen = now;
                    "the file changed"
                }
            };
            tracing::info!(file = %path.display(), "{why}: reloading");
            let request = match validate_file(&path).await {
                Ok(plan) => runtime::ReloadRequest::Valid(plan),
                Err(diagnostics) => runtime::ReloadRequest::Invalid(diagnostics.to_string()),
            };
            if tx.send(request).await.is_err() {
                break;
            }
        }
    });
    rx
}

async fn start(
    path: &Path,
    admin: Option<SocketAddr>,
    shutdown: CancellationToken,
    opts: RunOptions,
    reloads: Option<tokio::sync::mpsc::Receiver<runtime::ReloadRequest>>,
) -> Result<RunReport, StartError> {
    let file = PipelineFile::load(path)?;
    let plan = graph::plan(&file, &plugins::Registry::builtin()).await?;
    let admin_state = if file.admin.enabled || admin.is_some() {
        let access = admin::TapAccess {
            token: file.admin.token.clone().filter(|t| !t.expose().is_empty()),
            max_rows: file.admin.tap_max_rows,
            max_duration: file.admin.tap_max_duration.0,
        };
        let state = Arc::new(admin::AdminState::new(file.admin.degraded_after.0).with_tap_access(access));
        let address = admin.unwrap_or(file.admin.address);
        let charts =
            serve::Lake::new(serve::Tables::Outputs(parquet_outputs(&file)), serve::Limits::default(), true).map_err(StartError::Admin)?;
        admin::serve(address, state.clone(), charts, shutdown.clone()).await.map_err(StartError::Admin)?;
        Some(state)
    } else {
        None
    };
    Ok(runtime::run_reloadable(plan, admin_state, shutdown, opts, reloads).await)
}
