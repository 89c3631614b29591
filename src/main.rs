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
    return_freed_memory();
    runtime.block_on(tributary::cli::dispatch(cli))
}

/// glibc keeps what a burst freed in its per-thread arenas: after a 3 MB body of a million rows,
/// resident memory stayed at 99 MB against 36 MB before it. Every few seconds the free pages are
/// handed back (a walk over the arenas' free lists; nothing that is in use moves).
fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    let _ = std::thread::Builder::new().name("malloc-trim".into()).spawn(|| loop {
        std::thread::sleep(std::time::Duration::from_secs(5));
        // SAFETY: malloc_trim takes each arena's lock; it only releases pages no allocation uses.
        unsafe { libc::malloc_trim(0) };
    });
}
