//! `mqtt` source and sink, MQTT 3.1.1 and 5 (the `rumqttc` client).
//!
//! - The source subscribes to topic filters and turns each message (a JSON object) into a row,
//!   with its topic as a column. With QoS 1 or 2 and a persistent session (`clean_session: false`,
//!   a fixed `client_id`), a message is acknowledged (PUBACK, or PUBREC for QoS 2) only after
//!   every sink wrote its rows; the broker keeps what was not acknowledged and delivers it again
//!   when the source reconnects, after a crash too. Shared subscriptions (`$share/group/topic`)
//!   split a topic between processes.
//! - The sink publishes each row as a JSON object on a topic made from the row, at its QoS; a
//!   batch counts as written once the broker acknowledged every message (QoS 1 and 2).

mod client;
mod config;
mod sink;
mod source;

pub use config::{MqttSinkConfig, MqttSourceConfig, Protocol};
pub use sink::MqttSinkPlugin;
pub use source::MqttSourcePlugin;

#[cfg(test)]
mod tests;
