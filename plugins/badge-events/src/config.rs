//! The config of a `badge_events` source: one struct per `mode:`, each with only its own options
//! (an option of another mode is an unknown key, named with the keys this mode takes), checked by
//! [`BadgeEventsConfig::from_component`] into the type the source runs.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;
use tributary_sdk::config::ByteSize;
use tributary_sdk::{ComponentConfig, ConfigError, HumanDuration, Period, Secret};

/// How events are read: the value of `mode:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Pubsub,
    Stream,
    Http,
}

/// A checked `badge_events` config.
#[derive(Debug, Clone)]
pub enum BadgeEventsConfig {
    Pubsub(PubsubConfig),
    Stream(StreamConfig),
    Http(HttpMode),
}

/// `mode: pubsub`: subscribe to the API's channels.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PubsubConfig {
    /// `redis://[:password@]host:port/db` (a secret: it may hold a password).
    #[serde(default = "default_url")]
    pub url: Secret,
    /// Channels to subscribe to.
    #[serde(default = "default_channels")]
    pub channels: Vec<String>,
    /// Messages per batch at most (default 500).
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Messages held while the pipeline is busy (default 10000); beyond, the newest are dropped
    /// and counted in `dropped_total` (Pub/Sub cannot be told to wait).
    #[serde(default = "default_max_buffered")]
    pub max_buffered: usize,
    /// Messages are batched for at most this long (default 200ms).
    #[serde(default = "default_batch_wait")]
    pub batch_wait: HumanDuration,
}

/// `mode: stream`: read a Redis Stream through a consumer group.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamConfig {
    /// `redis://[:password@]host:port/db` (a secret: it may hold a password).
    #[serde(default = "default_url")]
    pub url: Secret,
    /// Stream key.
    #[serde(default = "default_stream")]
    pub stream: String,
    /// Consumer group (created at the start of the stream if missing).
    #[serde(default = "default_group")]
    pub group: String,
    /// This consumer's name in the group; keep it stable across restarts so its own pending
    /// entries are re-read.
    #[serde(default = "default_consumer")]
    pub consumer: String,
    /// Entries pending on another consumer for this long are claimed (default 60s).
    #[serde(default = "default_claim_idle")]
    pub claim_idle: Period,
    /// Entries per read (default 500).
    #[serde(default = "default_batch")]
    pub batch_size: usize,
}

/// `mode: http`: receive the events over HTTP.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address to listen on, e.g. `0.0.0.0:8090`.
    #[serde(default)]
    pub address: Option<SocketAddr>,
    /// Path prefix (default `/`): `POST <path><channel>`, or NDJSON envelopes to `<path>`.
    #[serde(default = "default_path")]
    pub path: String,
    /// Require `Authorization: Bearer <token>` (use `${ENV}`).
    #[serde(default)]
    pub token: Option<Secret>,
    /// Largest accepted body (default 1MiB); larger gets 413.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: ByteSize,
    /// Time to send the request headers (default 10s); then the connection is closed.
    #[serde(default = "tributary_sdk::http::default_header_timeout")]
    pub header_timeout: Period,
    /// Time to send the body (default 30s); then 408.
    #[serde(default = "tributary_sdk::http::default_body_timeout")]
    pub body_timeout: Period,
    /// On stop, how long requests in flight may take (default 5s); then connections close.
    #[serde(default = "tributary_sdk::http::default_stop_timeout")]
    pub stop_timeout: Period,
}

/// `mode: http` checked: the address to listen on is known.
#[derive(Debug, Clone)]
pub struct HttpMode {
    pub address: SocketAddr,
    pub options: HttpConfig,
}

impl BadgeEventsConfig {
    /// Decode the options of the `mode:` given and check them.
    pub fn from_component(config: &ComponentConfig) -> Result<Self, ConfigError> {
        let (mode, options) = config.split_tag::<Mode>("mode")?;
        match mode {
            Mode::Pubsub => {
                let cfg: PubsubConfig = options.decode()?;
                check_url(&cfg.url)?;
                if cfg.channels.is_empty() {
                    return Err(ConfigError::at("channels", "name at least one channel"));
                }
                at_least_one("batch_size", cfg.batch_size)?;
                at_least_one("max_buffered", cfg.max_buffered)?;
                Ok(BadgeEventsConfig::Pubsub(cfg))
            }
            Mode::Stream => {
                let cfg: StreamConfig = options.decode()?;
                check_url(&cfg.url)?;
                at_least_one("batch_size", cfg.batch_size)?;
                Ok(BadgeEventsConfig::Stream(cfg))
            }
            Mode::Http => {
                let cfg: HttpConfig = options.decode()?;
                let address = cfg
                    .address
                    .ok_or_else(|| ConfigError::at("address", "`mode: http` needs an address to listen on, e.g. `0.0.0.0:8090`"))?;
                if !cfg.path.starts_with('/') {
                    return Err(ConfigError::at("path", format!("must start with `/`, got `{}`", cfg.path)));
                }
                Ok(BadgeEventsConfig::Http(HttpMode { address, options: cfg }))
            }
        }
    }
}

fn check_url(url: &Secret) -> Result<(), ConfigError> {
    redis::Client::open(url.expose()).map(|_| ()).map_err(|e| ConfigError::at("url", format!("not a Redis URL: {e}")))
}

fn at_least_one(key: &str, n: usize) -> Result<(), ConfigError> {
    if n == 0 {
        return Err(ConfigError::at(key, "must be at least 1"));
    }
    Ok(())
}

fn default_url() -> Secret {
    Secret::new("redis://127.0.0.1:6379")
}
fn default_channels() -> Vec<String> {
    ["high-score-processor", "achievement", "community-message", "fact"].map(String::from).to_vec()
}
fn default_stream() -> String {
    "badge-events".into()
}
fn default_group() -> String {
    "tributary".into()
}
fn default_consumer() -> String {
    "tributary-1".into()
}
fn default_max_buffered() -> usize {
    10_000
}
fn default_claim_idle() -> Period {
    Period(Duration::from_secs(60))
}
fn default_batch() -> usize {
    500
}
fn default_path() -> String {
    "/".into()
}
fn default_max_body() -> ByteSize {
    ByteSize(1 << 20)
}
fn default_batch_wait() -> HumanDuration {
    HumanDuration(Duration::from_millis(200))
}
