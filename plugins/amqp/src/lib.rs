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

use tributary_sdk::{ConfigError, Secret};

/// The broker's URI with the credentials put in, checked when the component is built.
pub(crate) fn broker_uri(url: &str, user: &Option<String>, password: &Option<Secret>) -> Result<String, ConfigError> {
    let Some(rest) = url.strip_prefix("amqp://") else {
        return Err(ConfigError::at("url", format!("`{url}` is not an AMQP broker address; expected `amqp://host:port/vhost`")));
    };
    if rest.contains('@') {
        return Err(ConfigError::at("url", "put credentials in `user` and `password` (from `${ENV}`), not in the URL"));
    }
    match (user, password) {
        (Some(u), Some(p)) => Ok(format!("amqp://{}:{}@{rest}", percent(u), percent(p.expose()))),
        (None, None) => Ok(url.to_string()),
        (Some(_), None) => Err(ConfigError::at("password", "`user` and `password` go together")),
        (None, Some(_)) => Err(ConfigError::at("user", "`user` and `password` go together")),
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
