//! The connection options the source and the sink share.

use std::path::PathBuf;
use std::time::Duration;

use std::sync::Arc;

use anyhow::Context;
use tributary_sdk::{ComponentMetrics, ConfigError, Secret};

/// Where the server is and how to log in: the keys both `nats` components take (each config
/// lists them itself: serde cannot flatten into a struct that refuses unknown keys).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    /// `nats://host:port` (`tls://host:port` for TLS); several servers of a cluster separated by commas.
    pub url: String,
    pub user: Option<String>,
    pub password: Option<Secret>,
    pub token: Option<Secret>,
    /// PEM file of the CA that signed the server's certificate; makes TLS required.
    pub tls_ca_file: Option<PathBuf>,
}

impl Connection {
    /// The server addresses, checked when the component is built (no network).
    pub(crate) fn check(&self) -> Result<(), ConfigError> {
        for server in self.url.split(',') {
            let server = server.trim();
            let rest = ["nats://", "tls://"].iter().find_map(|scheme| server.strip_prefix(scheme));
            let Some(rest) = rest.filter(|r| !r.is_empty()) else {
                return Err(ConfigError::at("url", format!("`{server}` is not a NATS server address; expected `nats://host:port`")));
            };
            if rest.contains('@') {
                return Err(ConfigError::at("url", "put credentials in `user` and `password` (or `token`) from `${ENV}`, not in the URL"));
            }
        }
        if self.user.is_some() != self.password.is_some() {
            return Err(ConfigError::at(if self.user.is_some() { "password" } else { "user" }, "`user` and `password` go together"));
        }
        if self.user.is_some() && self.token.is_some() {
            return Err(ConfigError::at("token", "log in with `user` and `password` or with `token`, not both"));
        }
        Ok(())
    }

    /// Connects, retrying until the server answers (it may still be starting), and reconnecting
    /// by itself for as long as the client lives. While the connection is down the component is
    /// marked failing, so `/health` names it after `admin.degraded_after`: a fetch or publish
    /// only waits for the client to reconnect and never fails by itself.
    pub(crate) async fn connect(&self, name: &str, metrics: &Arc<ComponentMetrics>) -> anyhow::Result<async_nats::Client> {
        let (url, metrics) = (self.url.clone(), metrics.clone());
        let mut options = async_nats::ConnectOptions::new()
            .name(format!("tributary/{name}"))
            .connection_timeout(Duration::from_secs(5))
            .retry_on_initial_connect()
            .event_callback(move |event| {
                let (url, metrics) = (url.clone(), metrics.clone());
                async move { mark_connection(&metrics, &url, &event) }
            });
        if let (Some(user), Some(password)) = (&self.user, &self.password) {
            options = options.user_and_password(user.clone(), password.expose().to_string());
        }
        if let Some(token) = &self.token {
            options = options.token(token.expose().to_string());
        }
        if let Some(ca) = &self.tls_ca_file {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        let servers: Vec<&str> = self.url.split(',').map(str::trim).collect();
        let addresses: Vec<async_nats::ServerAddr> =
            servers.iter().map(|s| s.parse()).collect::<Result<_, _>>().with_context(|| format!("NATS server address `{}`", self.url))?;
        options.connect(addresses).await.with_context(|| format!("connecting to NATS at {}", self.url))
    }
}

/// Marks the component failing while the connection is down, and well again once it is back.
pub(crate) fn mark_connection(metrics: &ComponentMetrics, url: &str, event: &async_nats::Event) {
    match event {
        async_nats::Event::Disconnected => {
            metrics.retries.inc();
            if metrics.failing().is_none() {
                metrics.set_failing(Some((tributary_sdk::now_us(), format!("NATS server {url}: connection lost; reconnecting"))));
            }
            tracing::warn!(url, "NATS connection lost; reconnecting");
        }
        async_nats::Event::Connected => {
            if metrics.failing().is_some() {
                tracing::info!(url, "NATS connection back");
            }
            metrics.set_failing(None);
        }
        _ => {}
    }
}
