//! The options of the `mqtt` source and sink, and the broker address they share.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use tributary_sdk::{ConfigError, DeclaredSchema, Period, Secret};

/// The MQTT protocol version spoken to the broker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum Protocol {
    #[default]
    #[serde(rename = "3.1.1")]
    V311,
    #[serde(rename = "5")]
    V5,
}

/// How a source reads its messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PayloadFormat {
    #[default]
    Json,
    Badge,
}

/// Config of an `mqtt` source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSourceConfig {
    pub url: String,
    /// Topic filters (`+` and `#` wildcards; `$share/group/filter` for a shared subscription).
    pub topics: Vec<String>,
    /// The subscriptions' QoS: 0, 1 or 2 (default 1).
    #[serde(default = "default_qos")]
    pub qos: u8,
    /// This client's id: the broker keeps a persistent session under it (default `tributary-<source id>`).
    #[serde(default)]
    pub client_id: Option<String>,
    /// `false` (default): the broker keeps the subscriptions and the unacknowledged messages
    /// while the source is away.
    #[serde(default)]
    pub clean_session: bool,
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub password: Option<Secret>,
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// `json` (default): one row per JSON message, in the columns of `schema`. `badge`: the badge
    /// API's messages, the topic's last level being the channel, in the badge schema.
    #[serde(default)]
    pub format: PayloadFormat,
    /// Columns and types of the JSON messages (`format: json`).
    #[serde(default)]
    pub schema: Option<DeclaredSchema>,
    /// Timestamp column filled with the receive time when a message lacks it (default `ts`).
    #[serde(default = "default_time_column")]
    pub time_column: String,
    /// The column that holds each message's topic (default `topic`).
    #[serde(default = "default_topic_column")]
    pub topic_column: String,
    /// Messages per batch at most (default 500).
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// How long a partial batch waits for more messages (default 100ms).
    #[serde(default = "default_batch_wait")]
    pub batch_wait: Period,
    /// QoS 1 and 2 messages delivered and not yet acknowledged at most: MQTT 5's receive maximum
    /// (a 3.1.1 broker has its own limit: Mosquitto's `max_inflight_messages`, 20 by default).
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: u16,
    #[serde(default = "default_keep_alive")]
    pub keep_alive: Period,
}

/// Config of an `mqtt` sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSinkConfig {
    pub url: String,
    /// Each row's topic; `{column}` takes the row's value (`sites/{site}/probes`).
    pub topic: String,
    /// QoS of the published messages: 0, 1 or 2 (default 1).
    #[serde(default = "default_qos")]
    pub qos: u8,
    /// Publish as retained messages.
    #[serde(default)]
    pub retain: bool,
    /// This client's id (default `tributary-<sink id>-<process id>-<start time>`).
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub password: Option<Secret>,
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// How long the broker may take to acknowledge a batch (default 10s).
    #[serde(default = "default_timeout")]
    pub timeout: Period,
    #[serde(default = "default_keep_alive")]
    pub keep_alive: Period,
}

fn default_qos() -> u8 {
    1
}
fn default_time_column() -> String {
    "ts".into()
}
fn default_topic_column() -> String {
    "topic".into()
}
fn default_batch_size() -> usize {
    500
}
fn default_batch_wait() -> Period {
    Period::from_millis(100)
}
fn default_max_in_flight() -> u16 {
    1000
}
fn default_keep_alive() -> Period {
    Period::from_secs(30)
}
fn default_timeout() -> Period {
    Period::from_secs(10)
}

/// The QoS levels, named as MQTT names them.
#[allow(clippy::enum_variant_names)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Qos {
    AtMostOnce,
    AtLeastOnce,
    ExactlyOnce,
}

impl Qos {
    pub(crate) fn parse(level: u8) -> Result<Qos, ConfigError> {
        match level {
            0 => Ok(Qos::AtMostOnce),
            1 => Ok(Qos::AtLeastOnce),
            2 => Ok(Qos::ExactlyOnce),
            n => Err(ConfigError::at("qos", format!("{n} is no MQTT QoS; use 0, 1 or 2"))),
        }
    }
}

/// Where the broker is and how to log in, resolved from the config once.
#[derive(Debug, Clone)]
pub(crate) struct Broker {
    pub host: String,
    pub port: u16,
    /// `mqtts://`: TLS, with `tls_ca_file` or the public roots.
    pub tls: Option<Option<PathBuf>>,
    pub client_id: String,
    pub protocol: Protocol,
    pub credentials: Option<(String, Secret)>,
    pub keep_alive: Duration,
}

impl Broker {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn parse(
        url: &str,
        client_id: Option<&str>,
        component: &str,
        protocol: Protocol,
        user: &Option<String>,
        password: &Option<Secret>,
        tls_ca_file: &Option<PathBuf>,
        keep_alive: Duration,
    ) -> Result<Broker, ConfigError> {
        let bad =
            || ConfigError::at("url", format!("`{url}` is not an MQTT broker address; expected `mqtt://host:port` or `mqtts://host:port`"));
        let (tls, rest) = if let Some(rest) = url.strip_prefix("mqtt://") {
            (false, rest)
        } else if let Some(rest) = url.strip_prefix("mqtts://") {
            (true, rest)
        } else {
            return Err(bad());
        };
        let authority = rest.trim_end_matches('/');
        if authority.contains('@') {
            return Err(ConfigError::at("url", "put credentials in `user` and `password` (from `${ENV}`), not in the URL"));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (h, p.parse::<u16>().map_err(|_| bad())?),
            None => (authority, if tls { 8883 } else { 1883 }),
        };
        if host.is_empty() || host.contains('/') {
            return Err(bad());
        }
        if tls_ca_file.is_some() && !tls {
            return Err(ConfigError::at("tls_ca_file", "TLS needs an `mqtts://` url"));
        }
        let credentials = match (user, password) {
            (Some(u), Some(p)) => Some((u.clone(), p.clone())),
            (None, None) => None,
            (Some(_), None) => return Err(ConfigError::at("password", "`user` and `password` go together")),
            (None, Some(_)) => return Err(ConfigError::at("user", "`user` and `password` go together")),
        };
        let client_id = client_id.map(str::to_string).unwrap_or_else(|| format!("tributary-{component}"));
        if client_id.is_empty() || client_id.len() > 65_535 {
            return Err(ConfigError::at("client_id", "a client id is 1 to 65,535 bytes"));
        }
        Ok(Broker {
            host: host.trim_matches(['[', ']']).to_string(),
            port,
            tls: tls.then(|| tls_ca_file.clone()),
            client_id,
            protocol,
            credentials,
            keep_alive,
        })
    }
}

impl std::fmt::Display for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}:{}", if self.tls.is_some() { "mqtts" } else { "mqtt" }, self.host, self.port)
    }
}

/// A topic filter's syntax: `#` only as the last level, `+` and `#` alone in their level.
pub(crate) fn check_filter(filter: &str) -> Result<(), String> {
    if filter.is_empty() {
        return Err("an empty topic filter".into());
    }
    let unshared = match filter.strip_prefix("$share/") {
        Some(rest) => match rest.split_once('/') {
            Some((group, f)) if !group.is_empty() && !f.is_empty() => f,
            _ => return Err(format!("`{filter}`: a shared subscription is `$share/<group>/<filter>`")),
        },
        None => filter,
    };
    let levels: Vec<&str> = unshared.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            return Err(format!("`{filter}`: `#` must be a whole level, and the last"));
        }
        if level.contains('+') && *level != "+" {
            return Err(format!("`{filter}`: `+` must be a whole level"));
        }
    }
    Ok(())
}
