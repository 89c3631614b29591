//! `webex_mesh` source configuration.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use tributary_sdk::{ConfigError, HumanDuration, Period, Secret};
use url::Url;

use crate::datasets::Dataset;

pub const DEFAULT_SCOPES: [&str; 2] = ["spark-admin:video_mesh_api_read", "spark:organizations_read"];

/// The five `deviceType` values: client types are read for all of them.
pub const DEVICE_TYPES: [&str; 5] = ["webexDevices", "webexAppVdi", "webexForMobile", "sipEndpoint", "webexForDesktop"];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebexMeshConfig {
    /// API root; the OAuth endpoints are `<base_url>/authorize` and `<base_url>/access_token`.
    #[serde(default = "default_base_url")]
    pub base_url: String,
    pub auth: AuthConfig,
    /// How often to poll.
    #[serde(default = "default_interval")]
    pub interval: Period,
    /// Each poll reads `[now − lookback, now]`; more than `interval`, so windows overlap and the
    /// sinks' upserts absorb the re-reads.
    #[serde(default = "default_lookback")]
    pub lookback: HumanDuration,
    /// On the first start, read this far back (resumable, see `state_file`); `0s` turns it off.
    #[serde(default = "default_backfill")]
    pub backfill: HumanDuration,
    /// Backfill request size (the API takes at most 7 days per request).
    #[serde(default = "default_backfill_window")]
    pub backfill_window: HumanDuration,
    /// Where backfill progress is kept, so a restart resumes instead of starting over.
    #[serde(default = "default_state_file")]
    pub state_file: PathBuf,
    /// Which datasets to read (default: all).
    #[serde(default = "Dataset::all")]
    pub datasets: Vec<Dataset>,
    /// Only these organisations (IDs); default every organisation the token sees.
    #[serde(default)]
    pub org_ids: Vec<String>,
    #[serde(default)]
    pub rate_limit: RateLimit,
    /// Requests in flight at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Per-request timeout.
    #[serde(default = "default_timeout")]
    pub timeout: Period,
    /// Attempts per request on 429, 5xx and transport errors.
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// A personal or otherwise obtained token used as is (no refresh): for testing.
    #[serde(default)]
    pub access_token: Option<Secret>,
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub client_secret: Option<Secret>,
    /// Registered with the Webex Integration; its host and port are where the callback is served.
    #[serde(default = "default_redirect_uri")]
    pub redirect_uri: String,
    /// Bind the callback server here instead of the redirect URI's host and port (behind a proxy,
    /// or `0.0.0.0:2808` in a container whose port is published). Empty means unset, so a pipeline
    /// can say `listen: ${WEBEX_CALLBACK_LISTEN:-}`.
    #[serde(default, deserialize_with = "optional_address")]
    pub listen: Option<SocketAddr>,
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    /// Tokens are kept here (mode 0600), so a restart needs no new login.
    #[serde(default = "default_token_file")]
    pub token_file: PathBuf,
    /// Refresh the access token this long before it expires.
    #[serde(default = "default_refresh_margin")]
    pub refresh_margin: HumanDuration,
}

/// The client's own request budget per endpoint (Webex documents 50 GETs per 5 minutes).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub requests: u32,
    pub per: Period,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit { requests: 50, per: Period(Duration::from_secs(300)) }
    }
}

fn default_base_url() -> String {
    "https://webexapis.com/v1".into()
}
fn default_interval() -> Period {
    Period(Duration::from_secs(600))
}
fn default_lookback() -> HumanDuration {
    HumanDuration(Duration::from_secs(1800))
}
fn default_backfill() -> HumanDuration {
    HumanDuration(Duration::from_secs(31 * 86_400))
}
fn default_backfill_window() -> HumanDuration {
    HumanDuration(Duration::from_secs(6 * 86_400))
}
fn default_state_file() -> PathBuf {
    "webex-mesh-state.json".into()
}
fn default_concurrency() -> usize {
    4
}
fn default_timeout() -> Period {
    Period(Duration::from_secs(60))
}
fn default_attempts() -> u32 {
    5
}
fn optional_address<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    match Option::<String>::deserialize(d)? {
        None => Ok(None),
        Some(s) if s.trim().is_empty() => Ok(None),
        Some(s) => s.trim().parse().map(Some).map_err(|e| serde::de::Error::custom(format!("`{s}` is not an IP:port address: {e}"))),
    }
}

fn default_redirect_uri() -> String {
    "http://localhost:2808/oauth".into()
}
fn default_scopes() -> Vec<String> {
    DEFAULT_SCOPES.iter().map(|s| s.to_string()).collect()
}
fn default_token_file() -> PathBuf {
    "webex-tokens.json".into()
}
fn default_refresh_margin() -> HumanDuration {
    HumanDuration(Duration::from_secs(86_400))
}

/// `auth`, resolved at build into one of the two ways to get a token.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// `access_token`: used as is, never refreshed.
    Token(Secret),
    /// `client_id` + `client_secret`: an OAuth Webex Integration.
    Integration(Box<Integration>),
}

/// An OAuth Webex Integration with its URLs parsed and its callback address known.
#[derive(Debug, Clone)]
pub struct Integration {
    pub client_id: String,
    pub client_secret: Secret,
    /// `<base_url>/authorize`, where the admin's browser is sent.
    pub authorize_endpoint: Url,
    /// `<base_url>/access_token`, where codes and refresh tokens become access tokens.
    pub token_endpoint: Url,
    /// As configured: Webex compares it with the registered one character for character, so it
    /// is sent as written, not as `Url` would normalise it (`http://host:1` → `http://host:1/`).
    pub redirect_uri: String,
    /// Where the callback server listens: `auth.listen`, else the redirect URI's host and port.
    pub callback: SocketAddr,
    /// The redirect URI's path, which the callback server answers.
    pub callback_path: String,
    pub scopes: Vec<String>,
    pub token_file: PathBuf,
    pub refresh_margin: HumanDuration,
}

/// The config checked, with what the source uses parsed once.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub base_url: Url,
    pub credentials: Credentials,
}

fn parse_url(key: &str, text: &str) -> Result<Url, ConfigError> {
    Url::parse(text).map_err(|e| ConfigError::at(key, format!("`{text}` is not a URL: {e}")))
}

impl AuthConfig {
    fn resolve(&self, base_url: &str) -> Result<Credentials, ConfigError> {
        // `access_token: ${WEBEX_ACCESS_TOKEN:-}` left empty means "use the OAuth integration".
        if let Some(token) = self.access_token.as_ref().filter(|t| !t.expose().is_empty()) {
            return Ok(Credentials::Token(token.clone()));
        }
        // Empty values (`${WEBEX_CLIENT_ID:-}` unset) count as missing.
        let present = (self.client_id.as_ref().filter(|id| !id.is_empty()), self.client_secret.as_ref().filter(|s| !s.expose().is_empty()));
        let (Some(client_id), Some(client_secret)) = present else {
            return Err(ConfigError::at("auth", "needs client_id and client_secret (an OAuth Webex Integration) or access_token"));
        };
        let redirect_uri = parse_url("auth.redirect_uri", &self.redirect_uri)?;
        let callback = match (self.listen, redirect_uri.port_or_known_default()) {
            (Some(listen), _) => listen,
            (None, Some(port)) => {
                let ip = match redirect_uri.host_str() {
                    Some("localhost") | None => IpAddr::V4(Ipv4Addr::LOCALHOST),
                    Some(h) => h.trim_matches(|c| c == '[' || c == ']').parse().unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
                };
                SocketAddr::new(ip, port)
            }
            (None, None) => return Err(ConfigError::at("auth.redirect_uri", "has no port to serve the callback on; set auth.listen")),
        };
        if self.scopes.is_empty() {
            return Err(ConfigError::at("auth.scopes", "needs at least one scope"));
        }
        let base = base_url.trim_end_matches('/');
        Ok(Credentials::Integration(Box::new(Integration {
            client_id: client_id.clone(),
            client_secret: client_secret.clone(),
            authorize_endpoint: parse_url("base_url", &format!("{base}/authorize"))?,
            token_endpoint: parse_url("base_url", &format!("{base}/access_token"))?,
            callback_path: redirect_uri.path().to_string(),
            redirect_uri: self.redirect_uri.clone(),
            callback,
            scopes: self.scopes.clone(),
            token_file: self.token_file.clone(),
            refresh_margin: self.refresh_margin,
        })))
    }
}

impl WebexMeshConfig {
    /// Checks the config and resolves what the source uses from it.
    pub fn resolve(&self) -> Result<Resolved, ConfigError> {
        let base_url = parse_url("base_url", &self.base_url)?;
        let credentials = self.auth.resolve(&self.base_url)?;
        if self.lookback.0 < self.interval.0 {
            return Err(ConfigError::at(
                "lookback",
                format!(
                    "({:?}) must be at least the interval ({:?}), or data between polls is never read",
                    self.lookback.0, self.interval.0
                ),
            ));
        }
        if self.backfill_window.0.is_zero() || self.backfill_window.0 > Duration::from_secs(7 * 86_400) {
            return Err(ConfigError::at("backfill_window", "must be between 1s and 7 days (the API's longest range)"));
        }
        if self.lookback.0 > Duration::from_secs(7 * 86_400) {
            return Err(ConfigError::at("lookback", "must be at most 7 days (the API's longest range)"));
        }
        if self.rate_limit.requests == 0 {
            return Err(ConfigError::at("rate_limit", "needs requests > 0 and per > 0s"));
        }
        if self.concurrency == 0 {
            return Err(ConfigError::at("concurrency", "must be at least 1"));
        }
        if self.max_attempts == 0 {
            return Err(ConfigError::at("max_attempts", "must be at least 1"));
        }
        if self.datasets.is_empty() {
            return Err(ConfigError::at("datasets", "needs at least one dataset"));
        }
        Ok(Resolved { base_url, credentials })
    }
}
