use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = tributary::cli::Cli::parse();
    // `tributary test` runs the real runtime, whose progress lines would bury the report.
    let default = if matches!(cli.command, tributary::cli::Command::Test { .. }) { "error" } else { "info" };
    let filter = EnvFilter::try_from_env("TRIBUTARY_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(tributary::logging::RedactedStderr).with_ansi(ansi).init();
    // The main thread's 8 MiB for every worker (tokio's default is 2 MiB): DataFusion plans and
    // evaluates expressions recursively, and SQL within the limits (`sql::limits`) still nests.
    let runtime = tokio::runtime::Builder::new_multi_thread().thread_stack_size(8 << 20).enable_all().build().expect("tokio runtime");
    runtime.block_on(tributary::cli::dispatch(cli))
}
