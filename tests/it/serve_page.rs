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
            "--dump-dom",
            url,
        ])
        .stderr(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "chromium failed: {:?}", out.status);
    String::from_utf8(out.stdout).unwrap()
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
