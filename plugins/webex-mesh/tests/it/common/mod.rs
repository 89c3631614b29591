//! The simulator in process, an OAuth login driven like a browser would, and log capture.
#![allow(dead_code)]

use std::io::Write;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;
use tributary_sdk::ComponentConfig;
use tributary_webex_mesh::config::WebexMeshConfig;
use tributary_webex_mesh::oauth::{AuthError, OAuth};
use tributary_webex_mesh::simulator::{self, SimConfig, SimHandle};

pub async fn simulator(cfg: SimConfig) -> SimHandle {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    simulator::spawn(listener, cfg)
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Everything logged while the guard lives (current thread; tests run on a current-thread runtime).
#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    pub fn capture() -> (Logs, tracing::subscriber::DefaultGuard) {
        let logs = Logs::default();
        let writer = logs.clone();
        let subscriber =
            tracing_subscriber::fmt().with_ansi(false).with_max_level(tracing::Level::DEBUG).with_writer(move || writer.clone()).finish();
        (logs.clone(), tracing::subscriber::set_default(subscriber))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A source config for the simulator at `sim`, authorizing through OAuth with tokens in `dir`.
pub fn oauth_config(sim: &SimHandle, dir: &std::path::Path, extra: &str) -> WebexMeshConfig {
    let yaml = format!(
        "base_url: {}\nauth:\n  client_id: C-simulated-integration\n  client_secret: simulated-client-secret\n  redirect_uri: http://127.0.0.1:{}/oauth\n  token_file: {}\n{extra}",
        sim.base_url(),
        free_port(),
        dir.join("tokens.json").display()
    );
    let cfg: WebexMeshConfig = ComponentConfig::from_yaml("mesh", &yaml).decode().unwrap();
    cfg.resolve().unwrap();
    cfg
}

/// Runs the login flow and plays the admin's browser: takes the authorize URL from the log,
/// follows the simulator's redirect to the callback, and returns the page the browser shows.
pub async fn login_like_a_browser(oauth: &Arc<OAuth>, logs: &Logs) -> String {
    let shutdown = CancellationToken::new();
    let flow = {
        let oauth = oauth.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move { oauth.login(&AuthError::NeedsLogin, &shutdown).await })
    };
    let url = loop {
        if let Some(url) = logs.text().split_whitespace().find(|w| w.contains("/v1/authorize?")) {
            break url.to_string();
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let page = reqwest::get(&url).await.unwrap().text().await.unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(10), flow).await.expect("login finishes").unwrap().expect("login succeeds");
    page
}
