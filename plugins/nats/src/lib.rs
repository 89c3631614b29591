//! `nats` source and sink: core NATS subjects, and JetStream streams.
//!
//! - The source subscribes to a core `subject` (at most once: core NATS keeps nothing), or reads
//!   an existing JetStream `stream` through a durable pull `consumer` and acknowledges each message
//!   only after every sink wrote its rows (or the engine stored its dead letters). Several
//!   `tributary` processes sharing one durable consumer split the messages between them; a
//!   message left unacknowledged for `ack_wait` (its reader died) is delivered to another one.
//! - The sink publishes each row as a JSON object to a subject made from the row
//!   (`sites.{site}.probes`). With `stream` set it publishes through JetStream, waits for every
//!   acknowledgement, and gives each message a `Nats-Msg-Id`, so the stream drops the copies a
//!   retried batch publishes again.

mod connect;
mod sink;
mod source;

pub use connect::Connection;
pub use sink::{NatsSinkConfig, NatsSinkPlugin};
pub use source::{NatsSourceConfig, NatsSourcePlugin};

#[cfg(test)]
mod tests;
