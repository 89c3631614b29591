//! The chart page in a real browser: `tributary serve` over the fixture lake, loaded in headless
//! Chromium (Debian's `chromium`; `scripts/test` installs it), checked from the rendered DOM.

use crate::common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn serve(data: &std::path::Path) -> (Server, SocketAddr) {
    let addr = common::free_addr();
    let child = Command::new(common::bin())
        .args(["serve", "--data", data.to_str().unwrap(), "--address", &addr.to_string()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let server = Server(child);
    common::wait_for_port(addr).await;
    (server, addr)
}

fn chromium() -> String {
    let path = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(std::path::Path::new(&path).exists(), "no Chromium at {path}: apt-get install chromium (scripts/test does), or set CHROMIUM");
    path
}

/// The page's DOM once its scripts ran (Chromium waits for the fetches within the time budget).
fn rendered_dom(url: &str) -> String {
    let out = headless(&["--dump-dom", url]);
    String::from_utf8(out).unwrap()
}

/// Headless Chromium at 1200×900 with `args` (an action and the URL); its stdout.
fn headless(args: &[&str]) -> Vec<u8> {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1200,900",
            "--virtual-time-budget=15000",
            &format!("--user-data-dir={}", profile.path().display()),
        ])
        .args(args)
        .stderr(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "chromium failed: {:?}", out.status);
    out.stdout
}

/// The opening tag of the element with this id.
fn tag_with_id<'a>(dom: &'a str, id: &str) -> &'a str {
    let at = dom.find(&format!("id=\"{id}\"")).unwrap_or_else(|| panic!("no #{id} in {dom}"));
    let start = dom[..at].rfind('<').unwrap();
    &dom[start..start + dom[start..].find('>').unwrap() + 1]
}

#[tokio::test]
async fn the_page_draws_one_line_per_group_with_every_bin() {
    let dir = tempfile::tempdir().unwrap();
    common::lake::write_fixture(dir.path());
    let (_server, addr) = serve(dir.path()).await;
    let dom = rendered_dom(&format!(
        "http://{addr}/?table=latency&value=ms&agg=avg&bin=1m&from=2026-11-01T00:00:00Z&to=2026-11-01T00:05:00Z&group_by=site"
    ));
    assert!(dom.contains("data-state=\"drawn\""), "the page did not draw: {dom}");
    let chart = tag_with_id(&dom, "chart");
    assert!(chart.contains("data-series=\"2\"") && chart.contains("data-bins=\"5\""), "{chart}");
    // uPlot drew its canvas and a legend with both groups.
    assert!(dom.contains("<canvas"), "no canvas: {dom}");
    assert!(dom.contains("u-legend"), "no legend: {dom}");
    // Per series: 5 bins, of which site a has 2 with data and site b 1 (the rest are gaps).
    assert!(dom.contains(r#"<tr data-group="a"><td>a</td><td class="n">5</td><td class="n">2</td></tr>"#), "{dom}");
    assert!(dom.contains(r#"<tr data-group="b"><td>b</td><td class="n">5</td><td class="n">1</td></tr>"#), "{dom}");
    assert!(dom.contains("2 series × 5 bins of 1m, 2026-11-01T00:00:00Z … 2026-11-01T00:05:00Z"), "{dom}");
}

#[tokio::test]
async fn a_bad_parameter_shows_the_apis_message() {
    let dir = tempfile::tempdir().unwrap();
    common::lake::write_fixture(dir.path());
    let (_server, addr) = serve(dir.path()).await;
    let dom = rendered_dom(&format!("http://{addr}/?table=latency&value=ms&bin=fast&from=2026-11-01T00:00:00Z&to=2026-11-01T00:05:00Z"));
    assert!(dom.contains("data-state=\"refused\""), "{dom}");
    assert!(
        dom.contains(
            "<li data-parameter=\"bin\">bin: `fast` is not a duration such as `30s`, `1m`, `1h`, `1d` (expected number at 0)</li>"
        ),
        "{dom}"
    );
}

/// A newcomer's first look: the quickstart runs, and its chart page opened with no parameters
/// shows the data: its first table, a measurement (not a status code) per site, over the time
/// the rows cover, with data in most bins of every line. The screenshot is the README's
/// (`docs/quickstart-chart.png`, rewritten by every run so it cannot drift).
#[tokio::test]
async fn the_quickstarts_page_opens_on_a_view_its_data_fills() {
    let dir = tempfile::tempdir().unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let addr = common::free_addr();
    let run = Command::new(common::bin())
        .args(["run", root.join("pipelines/quickstart.yaml").to_str().unwrap()])
        .current_dir(dir.path())
        .env("TRIBUTARY_ADMIN", addr.to_string())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let _run = Server(run);
    common::wait_for_port(addr).await;
    // Three flushes of the Parquet sinks (`max_age: 10s`): 30 s of probes on disk.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    loop {
        assert!(std::time::Instant::now() < deadline, "the quickstart wrote no 3 files of probes in 90 s");
        if common::files_ending(&dir.path().join("data/probes"), ".parquet").len() >= 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    let (status, tables) = common::get(addr, "/api/tables").unwrap();
    assert_eq!(status, 200, "{tables}");
    let tables: serde_json::Value = serde_json::from_str(&tables).unwrap();
    let probes = tables["tables"].as_array().unwrap().iter().find(|t| t["name"] == "probes_parquet").unwrap();
    assert_eq!(probes["default"]["value"], "response_time_ms", "{probes}");
    assert_eq!(probes["default"]["group_by"], "site", "{probes}");
    assert_eq!(probes["default"]["to"], "now", "the view follows now while the pipeline runs: {probes}");

    let url = format!("http://{addr}/");
    let dom = rendered_dom(&url);
    assert!(dom.contains("data-state=\"drawn\""), "the page did not draw: {dom}");
    let chart = tag_with_id(&dom, "chart");
    assert!(chart.contains("data-view=\"probes_parquet: avg(response_time_ms) by site\""), "the pipeline's first table: {chart}");
    assert!(chart.contains("data-series=\"5\""), "one line per site: {chart}");
    // Every line (site) has data in more than half its bins.
    let mut lines = 0;
    for row in dom.split("<tr data-group=").skip(1) {
        let cells: Vec<u64> = row.split("<td class=\"n\">").skip(1).map(|c| c[..c.find('<').unwrap()].parse().unwrap()).collect();
        let (bins, filled) = (cells[0], cells[1]);
        assert!(bins >= 10 && filled * 2 > bins, "a line with data in {filled} of {bins} bins: {row}");
        lines += 1;
    }
    assert_eq!(lines, 5, "{dom}");
    assert!(dom.contains("series × ") && dom.contains("bins of 1s"), "{dom}");

    let shot = root.join("docs/quickstart-chart.png");
    std::fs::create_dir_all(shot.parent().unwrap()).unwrap();
    headless(&[&format!("--screenshot={}", shot.display()), &url]);
    let png = std::fs::read(&shot).unwrap();
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "a screenshot of {} bytes", png.len());
}
