//! `kafka` source and sink on librdkafka (rdkafka).
//!
//! - The **sink** writes one message per row (JSON, or the API status monitor's exact message) and
//!   acknowledges a batch only after every delivery report.
//! - The **source** consumes as a group member and commits offsets only after every downstream
//!   sink has durably written the batch: a crash replays, it never skips. Under
//!   `delivery: exactly_once` its batches carry their partition's offset as a position, which the
//!   sinks store with the rows, so a replay writes nothing twice (see `replay.rs`).

mod client;
mod format;
mod group;
mod replay;
mod shuffle;
mod sink;
mod source;

pub use client::SslConfig;
pub use format::api_status_messages;
pub use sink::{KafkaSink, KafkaSinkConfig, KafkaSinkPlugin, SinkFormat};
pub use source::{api_status_schema, decode_api_status_messages, KafkaSource, KafkaSourceConfig, KafkaSourcePlugin, SourceFormat};

#[cfg(test)]
mod tests;
