//! `amqp` source and sink (RabbitMQ, AMQP 0-9-1, the `lapin` client).
//!
//! - The source consumes a queue with manual acknowledgements: a message is acknowledged only
//!   after every sink wrote its rows (or the engine stored its dead letter), and a batch that
//!   failed downstream is given back to the queue (`basic.nack` with requeue). The prefetch
//!   bounds the messages delivered and not yet acknowledged, so a slow pipeline slows the broker's
//!   deliveries: that is the backpressure. Several processes consuming one queue share it.
//! - The sink publishes each row as a persistent JSON message to an exchange, with a routing key
//!   made from the row, under publisher confirms: a batch counts as written once the broker
//!   confirmed every message. A message no queue is bound for comes back (`mandatory`) and goes to
//!   the dead letters.

mod sink;
mod source;

pub use sink::{AmqpSinkConfig, AmqpSinkPlugin};
pub use source::{AmqpSourceConfig, AmqpSourcePlugin};

use std::path::PathBuf;

use anyhow::Context;
use tributary_sdk::{ConfigError, Secret};

/// Where the broker is: its URI with the credentials put in (never printed), and for
/// `amqps://` the CA that signed its certificate (`None`: the public roots).
pub(crate) struct Broker {
    uri: Secret,
    tls: Option<Option<PathBuf>>,
}

impl Broker {
    /// Checked when the component is built (no network, no files).
    pub(crate) fn parse(
        url: &str,
        user: &Option<String>,
        password: &Option<Secret>,
        tls_ca_file: &Option<PathBuf>,
    ) -> Result<Broker, ConfigError> {
        let (scheme, rest, tls) = match (url.strip_prefix("amqp://"), url.strip_prefix("amqps://")) {
            (Some(rest), _) => ("amqp", rest, None),
            (_, Some(rest)) => ("amqps", rest, Some(tls_ca_file.clone())),
            _ => {
                return Err(ConfigError::at(
                    "url",
                    format!("`{url}` is not an AMQP broker address; expected `amqp://host:port/vhost` or `amqps://host:port/vhost`"),
                ))
            }
        };
        if rest.contains('@') {
            return Err(ConfigError::at("url", "put credentials in `user` and `password` (from `${ENV}`), not in the URL"));
        }
        if tls.is_none() && tls_ca_file.is_some() {
            return Err(ConfigError::at("tls_ca_file", "TLS needs an `amqps://` url"));
        }
        let uri = match (user, password) {
            (Some(u), Some(p)) => format!("{scheme}://{}:{}@{rest}", percent(u), percent(p.expose())),
            (None, None) => url.to_string(),
            (Some(_), None) => return Err(ConfigError::at("password", "`user` and `password` go together")),
            (None, Some(_)) => return Err(ConfigError::at("user", "`user` and `password` go together")),
        };
        Ok(Broker { uri: Secret::new(uri), tls })
    }

    pub(crate) async fn connect(&self) -> anyhow::Result<lapin::Connection> {
        let properties = lapin::ConnectionProperties::default();
        let Some(ca_file) = &self.tls else { return Ok(lapin::Connection::connect(self.uri.expose(), properties).await?) };
        let cert_chain = match ca_file {
            Some(path) => Some(std::fs::read_to_string(path).with_context(|| format!("reading tls_ca_file {}", path.display()))?),
            None => None,
        };
        let tls = lapin::tcp::OwnedTLSConfig { identity: None, cert_chain };
        let builder = lapin::DefaultConnectionBuilder::new()?.with_uri_str(self.uri.expose().to_string()).with_properties(properties);
        Ok(builder.with_tls_config(tls).connect().await?)
    }
}

/// Percent-encodes what a URI's user info cannot hold as is.
fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b"-._~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

#[cfg(test)]
mod tests;
