//! The `tributary` command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::query::QueryFormat;
use crate::runtime::RunOptions;

#[derive(Debug, Parser)]
#[command(name = "tributary", version, about = "Streaming pipelines for operations telemetry: sources → DataFusion SQL → sinks")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a pipeline until Ctrl-C / SIGTERM (or --duration), then flush everything and exit.
    Run {
        file: PathBuf,
        /// Stop by itself after this long, e.g. `30s`.
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
        /// Serve /health and /metrics here instead of the file's `admin.address`.
        #[arg(long)]
        admin: Option<SocketAddr>,
        /// How long the drain may take after a stop is requested.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
        drain_timeout: Duration,
        /// Reload the file whenever it changes (SIGHUP always reloads it): only changed
        /// components restart; an invalid file is logged and the pipeline keeps running.
        #[arg(long)]
        watch: bool,
    },
    /// Check a pipeline file (config, wiring, SQL, sink schemas) without running it.
    Validate { file: PathBuf },
    /// Run the `tests:` in pipeline files (fixture rows in, expected rows out; no network).
    Test {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print live rows of a running pipeline's output (`probes`, `slow`, `per_minute.late`).
    Tap {
        output: String,
        /// Only rows matching this SQL predicate, e.g. `response_time_ms > 500`.
        #[arg(long = "where")]
        filter: Option<String>,
        /// Stop after this many rows.
        #[arg(long)]
        limit: Option<u64>,
        /// The pipeline's admin address.
        #[arg(long, default_value = "127.0.0.1:9598")]
        admin: SocketAddr,
        /// The pipeline's `admin.token`, when it sets one.
        #[arg(long, env = "TRIBUTARY_ADMIN_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// A running pipeline's components, refreshed every second: rows in and out (totals and per
    /// second), errors, dead letters, retries, buffer fill, a sink's lag and last write, and the
    /// pipeline's health. Plain text when stdout is not a terminal.
    Top {
        /// The pipeline's admin address.
        #[arg(long, default_value = "127.0.0.1:9598")]
        admin: SocketAddr,
        /// The pipeline's `admin.token`, when it sets one.
        #[arg(long, env = "TRIBUTARY_ADMIN_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// How often to refresh.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
        interval: Duration,
        /// Stop after this many tables (default: until Ctrl-C).
        #[arg(long)]
        count: Option<u64>,
    },
    /// Print a pipeline's DAG as Mermaid text.
    Graph { file: PathBuf },
    /// Run SQL over Parquet output: every folder under --data is a table.
    Query {
        sql: String,
        /// Folder whose sub-folders are tables (default `./data`), or an object store prefix
        /// (`s3://bucket/lake`; endpoint and credentials from `AWS_ENDPOINT_URL`,
        /// `AWS_ACCESS_KEY_ID`, … as for the parquet sink).
        #[arg(long, default_value = "data")]
        data: String,
        /// Extra table, `NAME=PATH` (repeatable).
        #[arg(long = "table", value_name = "NAME=PATH")]
        tables: Vec<String>,
        #[arg(long, value_enum, default_value = "table")]
        format: QueryFormat,
    },
    /// Serve charts of the Parquet outputs: a page at `/`, `/api/tables` and `/api/series`.
    Serve {
        /// Folder whose sub-folders are tables (default `./data`), or an object store prefix
        /// (`s3://bucket/lake`), as for `query`.
        #[arg(long, default_value = "data")]
        data: String,
        #[arg(long, default_value = "127.0.0.1:9600")]
        address: SocketAddr,
        /// Bins × series one `/api/series` answer holds at most; more is refused with a bin that fits.
        #[arg(long, default_value_t = 20_000)]
        max_points: u64,
        /// A query running longer is stopped (answered 503).
        #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
        query_timeout: Duration,
    },
    /// Feed stored dead letters back into the sink that rejected them (after fixing the cause);
    /// prints what became of each letter. Exits 1 when any letter was not written.
    Replay {
        /// A dead-letter file (`./data/dead_letters/<sink>.jsonl`) or a folder of them.
        dead_letters: PathBuf,
        /// The pipeline file whose sink to write with.
        #[arg(long)]
        pipeline: PathBuf,
        /// The sink's id.
        #[arg(long)]
        into: String,
        /// Also write the letters not written (with their new reasons) to this file, to replay later.
        #[arg(long)]
        rejected: Option<PathBuf>,
    },
    /// Run a local stand-in for an external API, for demos and tests.
    #[command(subcommand)]
    Simulate(Simulate),
}

#[derive(Debug, Subcommand)]
pub enum Simulate {
    /// The Webex Video Mesh API: OAuth, the 12 read endpoints the webex_mesh source uses (org-wide
    /// lists; the per-cluster/per-node variants are not served), TrackingIDs, Webex errors,
    /// 429 + Retry-After above the rate limit. Point a `webex_mesh` source's `base_url` at it.
    WebexMesh {
        #[arg(long, default_value = "127.0.0.1:7980")]
        listen: SocketAddr,
        /// Fixes the organisation's IDs and numbers.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long, default_value = "Acme Media")]
        org_name: String,
        #[arg(long, env = "WEBEX_CLIENT_ID", default_value = "C-simulated-integration")]
        client_id: String,
        #[arg(long, env = "WEBEX_CLIENT_SECRET", default_value = "simulated-client-secret", hide_env_values = true)]
        client_secret: String,
        /// A token accepted without OAuth, like a Webex personal access token.
        #[arg(long, env = "WEBEX_ACCESS_TOKEN", hide_env_values = true)]
        personal_token: Option<String>,
        #[arg(long, value_parser = humantime::parse_duration, default_value = "1209599s")]
        access_token_ttl: Duration,
        #[arg(long, value_parser = humantime::parse_duration, default_value = "7775999s")]
        refresh_token_ttl: Duration,
        /// Requests per endpoint per --rate-window before 429.
        #[arg(long, default_value_t = 50)]
        rate_limit: u32,
        #[arg(long, value_parser = humantime::parse_duration, default_value = "5m")]
        rate_window: Duration,
        /// Serve the shapes the public sample client parses instead of the spec's.
        #[arg(long)]
        legacy_shapes: bool,
    },
}

pub async fn dispatch(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Validate { file } => validate(&file).await,
        Command::Test { files } => test(&files).await,
        Command::Tap { output, filter, limit, admin, token } => {
            match crate::tap::print_tap(admin, &output, filter.as_deref(), limit, token.as_deref()).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => failed(format!("tap failed: {e:#}")),
            }
        }
        Command::Top { admin, token, interval, count } => match crate::top::run(admin, token.as_deref(), interval, count).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => failed(format!("top failed: {e:#}")),
        },
        Command::Graph { file } => match crate::config::PipelineFile::load(&file) {
            Ok(f) => {
                print!("{}", crate::graph::mermaid::render(&f.components));
                ExitCode::SUCCESS
            }
            Err(d) => failed(d),
        },
        Command::Query { sql, data, tables, format } => query(&sql, &data, &tables, format).await,
        Command::Serve { data, address, max_points, query_timeout } => serve(data, address, max_points, query_timeout).await,
        Command::Replay { dead_letters, pipeline, into, rejected } => replay(&dead_letters, &pipeline, &into, rejected.as_deref()).await,
        Command::Simulate(Simulate::WebexMesh {
            listen,
            seed,
            org_name,
            client_id,
            client_secret,
            personal_token,
            access_token_ttl,
            refresh_token_ttl,
            rate_limit,
            rate_window,
            legacy_shapes,
        }) => {
            use tributary_webex_mesh::simulator::{Shapes, SimConfig};
            let cfg = SimConfig {
                seed,
                org_name,
                client_id,
                client_secret,
                access_token_ttl,
                refresh_token_ttl,
                rate_limit,
                rate_window,
                shapes: if legacy_shapes { Shapes::Legacy } else { Shapes::Spec },
                personal_token,
                ..SimConfig::default()
            };
            simulate_webex_mesh(listen, cfg).await
        }
        Command::Run { file, duration, admin, drain_timeout, watch } => run(&file, duration, admin, drain_timeout, watch).await,
    }
}

/// Print `message` to stderr; the command failed.
fn failed(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("{message}");
    ExitCode::FAILURE
}

async fn validate(file: &std::path::Path) -> ExitCode {
    match crate::validate_file(file).await {
        Ok(mut plan) => {
            // Checks against the outside world (a parquet source's columns against its files).
            let mut problems = Vec::new();
            for s in &mut plan.sources {
                if let Err(e) = s.source.check().await {
                    problems.push(format!("{}: sources.{}: {e:#}", file.display(), s.id));
                }
            }
            if !problems.is_empty() {
                return failed(problems.join("\n"));
            }
            println!(
                "{}: valid ({} sources, {} transforms, {} sinks)",
                file.display(),
                plan.sources.len(),
                plan.transforms.len(),
                plan.sinks.len()
            );
            for (name, schema) in plan.outputs.iter().filter(|(n, _)| !n.ends_with(".dead_letter")) {
                let cols: Vec<String> = schema.fields().iter().map(|f| format!("{} {}", f.name(), f.data_type())).collect();
                println!("  {name}: {}", cols.join(", "));
            }
            for t in &plan.transforms {
                if let (Some(how), Some(w)) = (t.window.as_ref().and_then(|w| w.repartitioned.as_ref()), &t.window) {
                    let input = w.inputs.first().map(|(n, _)| n.as_str()).unwrap_or_default();
                    println!("  transform {}: will repartition `{input}` {how}, so that one instance of the group windows each key", t.id);
                }
            }
            for t in &plan.tables {
                let cols: Vec<String> = t.table.schema.fields().iter().map(|f| format!("{} {}", f.name(), f.data_type())).collect();
                println!("  table {}: {}", t.name(), cols.join(", "));
            }
            for s in &plan.sinks {
                for warning in s.sink.warnings() {
                    eprintln!("warning: {}: sinks.{}: {warning}", file.display(), s.id);
                }
            }
            ExitCode::SUCCESS
        }
        Err(d) => failed(d),
    }
}

async fn test(files: &[std::path::PathBuf]) -> ExitCode {
    let mut ok = true;
    for file in files {
        match crate::pipeline_tests::test_file(file).await {
            Ok(report) => {
                print!("{}", report.render());
                ok &= report.passed();
            }
            Err(e) => {
                eprintln!("{e}");
                ok = false;
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn query(sql: &str, data: &str, tables: &[String], format: QueryFormat) -> ExitCode {
    let result = async {
        let tables = crate::query::discover_tables(&crate::query::data_location(data)?, tables).await?;
        let batches = crate::query::run_query(sql, &tables).await?;
        crate::query::render(&batches, format)
    }
    .await;
    match result {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => failed(format!("query failed: {e:#}")),
    }
}

async fn serve(data: String, address: SocketAddr, max_points: u64, query_timeout: Duration) -> ExitCode {
    let shutdown = CancellationToken::new();
    spawn_stop_triggers(shutdown.clone(), None);
    let limits = crate::serve::Limits { max_points, query_timeout };
    let result = async {
        let tables = crate::serve::Tables::Under(crate::query::data_location(&data)?);
        crate::serve::serve(address, crate::serve::Lake::new(tables, limits, false)?, shutdown).await
    }
    .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => failed(format!("{e:#}")),
    }
}

async fn replay(dead_letters: &std::path::Path, pipeline: &std::path::Path, into: &str, rejected: Option<&std::path::Path>) -> ExitCode {
    let report = match crate::replay::replay(dead_letters, pipeline, into).await {
        Ok(report) => report,
        Err(e) => return failed(format!("replay failed: {e:#}")),
    };
    print!("{}", report.render());
    if let Some(path) = rejected {
        if let Err(e) = std::fs::write(path, report.still_rejected()) {
            return failed(format!("cannot write {}: {e}", path.display()));
        }
    }
    if report.all_written() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn simulate_webex_mesh(listen: std::net::SocketAddr, cfg: tributary_webex_mesh::simulator::SimConfig) -> ExitCode {
    let shutdown = CancellationToken::new();
    spawn_stop_triggers(shutdown.clone(), None);
    match tributary_webex_mesh::simulator::run(listen, cfg, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => failed(format!("{e:#}")),
    }
}

async fn run(
    file: &std::path::Path,
    duration: Option<Duration>,
    admin: Option<std::net::SocketAddr>,
    drain_timeout: Duration,
    watch: bool,
) -> ExitCode {
    let shutdown = CancellationToken::new();
    if let Some(d) = duration {
        tracing::info!("{}", stop_notice(d, chrono::Utc::now()));
    }
    spawn_stop_triggers(shutdown.clone(), duration);
    let opts = RunOptions { drain_timeout, ..RunOptions::default() };
    let report = match crate::run_file_reloading(file, admin, shutdown, opts, watch).await {
        Ok(report) => report,
        Err(e) => return failed(e),
    };
    for line in &report.summary {
        tracing::info!("{line}");
    }
    if report.ok() {
        tracing::info!("stopped cleanly");
        return ExitCode::SUCCESS;
    }
    for (id, e) in &report.failures {
        eprintln!("component `{id}` failed: {e}");
    }
    ExitCode::FAILURE
}

/// What `run --duration` says as it starts: `running for 3m, until 12:03:00 UTC (Ctrl-C stops
/// sooner; the drain follows)`.
pub fn stop_notice(duration: Duration, now: chrono::DateTime<chrono::Utc>) -> String {
    let until = chrono::Duration::from_std(duration).ok().and_then(|d| now.checked_add_signed(d));
    let until = until.map_or("the end of time".to_string(), |u| format!("{} UTC", u.format("%Y-%m-%d %H:%M:%S")));
    format!("running for {}, until {until} (Ctrl-C stops sooner; the drain follows)", humantime::format_duration(duration))
}

/// Ctrl-C, SIGTERM, or the --duration timer start the drain.
fn spawn_stop_triggers(shutdown: CancellationToken, duration: Option<Duration>) {
    let token = shutdown.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        let timer = async {
            match duration {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("Ctrl-C: stopping"),
            _ = term.recv() => tracing::info!("SIGTERM: stopping"),
            _ = timer => tracing::info!("--duration reached: stopping"),
            _ = token.cancelled() => {}
        }
        token.cancel();
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_with_a_duration_says_when_it_stops() {
        let now = "2026-12-07T12:00:00Z".parse().unwrap();
        assert_eq!(
            stop_notice(Duration::from_secs(180), now),
            "running for 3m, until 2026-12-07 12:03:00 UTC (Ctrl-C stops sooner; the drain follows)"
        );
        assert_eq!(
            stop_notice(Duration::from_secs(u64::MAX), now),
            format!(
                "running for {}, until the end of time (Ctrl-C stops sooner; the drain follows)",
                humantime::format_duration(Duration::from_secs(u64::MAX))
            )
        );
    }
}
