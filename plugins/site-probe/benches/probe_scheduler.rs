//! Probe scheduler at scale: N targets (default 10,000) at a 10 s interval against a local HTTP
//! server running in a child process, so the CPU measured is the prober's own. Prints CPU per 1,000
//! probes, the share of one core, and the p50/p99 start lateness against the schedule.
//!
//! `cargo bench --bench probe_scheduler` runs 10,000 targets for 40 s (PROBE_TARGETS /
//! PROBE_SECONDS to change); under `cargo test` a 500-target, 12 s smoke pass checks that probes ran.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tributary_sdk::{ComponentConfig, Source};
use tributary_site_probe::{SiteProbeConfig, SiteProbeSource};
use tributary_testkit::source_context;
use tributary_testkit::TestSite;

/// Seconds of CPU (user + system) this process has used.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0 // USER_HZ is 100 on Linux
}

fn main() {
    if std::env::var("PROBE_BENCH_SERVER").is_ok() {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        rt.block_on(async {
            let site = TestSite::start(Duration::from_millis(1), 30).await.unwrap();
            println!("{}", site.http);
            std::future::pending::<()>().await;
        });
        return;
    }
    let full = std::env::args().any(|a| a == "--bench");
    let env = |k: &str, d: u64| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let targets = env("PROBE_TARGETS", if full { 10_000 } else { 500 });
    let seconds = env("PROBE_SECONDS", if full { 40 } else { 12 });

    let mut server = Command::new(std::env::current_exe().unwrap()).env("PROBE_BENCH_SERVER", "1").stdout(Stdio::piped()).spawn().unwrap();
    let mut url = String::new();
    BufReader::new(server.stdout.take().unwrap()).read_line(&mut url).unwrap();
    let url = url.trim().to_string();

    let list: Vec<String> =
        (0..targets).map(|i| format!("{{name: t{i}, url: '{url}/json?t={i}', json_path: $.status, sla_ms: 1000}}")).collect();
    let yaml = format!("{{interval: 10s, max_concurrency: 256, targets: [{}]}}", list.join(", "));
    let cfg: SiteProbeConfig = ComponentConfig::from_yaml("probes", &yaml).decode().unwrap();
    let mut source = SiteProbeSource::new(&cfg).unwrap();
    let lateness = source.record_lateness();

    let rt = tokio::runtime::Runtime::new().unwrap();
    let (probes, failed, cpu, wall) = rt.block_on(async move {
        let (ctx, mut h) = source_context("probes", &[""], 1024);
        let mut out = h.outputs.remove("").unwrap();
        let counter = tokio::spawn(async move {
            let (mut n, mut failed) = (0usize, 0usize);
            while let Some(d) = out.recv().await {
                let ok = d.batch.data.column_by_name("success").unwrap();
                let ok = ok.as_any().downcast_ref::<datafusion::arrow::array::BooleanArray>().unwrap();
                n += ok.len();
                failed += ok.iter().filter(|v| *v == Some(false)).count();
            }
            (n, failed)
        });
        let cpu0 = cpu_seconds();
        let t0 = Instant::now();
        let run = tokio::spawn(Box::new(source).run(ctx));
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        h.shutdown.cancel();
        run.await.unwrap().unwrap();
        let (n, failed) = counter.await.unwrap();
        (n, failed, cpu_seconds() - cpu0, t0.elapsed().as_secs_f64())
    });
    let _ = server.kill();
    let _ = server.wait();
    let (p50, _) = lateness.quantile(0.50);
    let (p99, recorded) = lateness.quantile(0.99);
    println!("probe scheduler: {targets} targets at 10s for {wall:.1}s");
    println!("  probes: {probes} ({failed} failed), {:.0} probes/s", probes as f64 / wall);
    println!("  CPU: {cpu:.2}s = {:.1}% of one core, {:.3} CPU-s per 1000 probes", cpu / wall * 100.0, cpu / probes.max(1) as f64 * 1000.0);
    println!("  start lateness: p50 {:.2} ms, p99 {:.2} ms ({recorded} starts)", p50.as_secs_f64() * 1000.0, p99.as_secs_f64() * 1000.0);
    assert!(probes > 0 && failed == 0, "probes must run and succeed against the local server");
}
