//! `nats` sink: each row as a JSON object on a subject made from the row. Through JetStream
//! (`stream`) a batch counts as written once the stream acknowledged every message; each message
//! carries a `Nats-Msg-Id`, and the same rows passed again get the same ids, so the stream drops
//! what it already stored (within its duplicate window, 2 minutes by default):
//! - rows straight from a disk buffer are named by the buffer record they are and their index in
//!   it, which a replay after a crash keeps however it cuts the batches;
//! - other rows at a position (through a transform, or from Kafka) by the position and the
//!   batch's content: the same position can come back in a batch cut otherwise, and an id made
//!   of the position alone would then name other rows, which the stream would drop as copies;
//! - other rows get ids of this run, kept for a batch retried after a failure.

use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::message::PublishMessage;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use serde::Deserialize;
use tributary_sdk::dead_letter::rows_as_json;
use tributary_sdk::template::RowTemplate;
use tributary_sdk::{
    single_input_schema, ComponentConfig, ConfigError, DeadLetter, Period, Position, Secret, Sink, SinkContext, SinkPlugin, Transient,
    Written,
};

use crate::connect::Connection;

/// Config of a `nats` sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSinkConfig {
    pub url: String,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub password: Option<Secret>,
    #[serde(default)]
    pub token: Option<Secret>,
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// The subject of each row's message; `{column}` takes the row's value (`sites.{site}.probes`).
    pub subject: String,
    /// Publish through JetStream into this existing stream (which must capture the subjects), and
    /// count a batch as written once the stream acknowledged every message.
    #[serde(default)]
    pub stream: Option<String>,
    /// How long to wait for the server: the flush of core publishes, or JetStream's
    /// acknowledgements of a batch (default 10s).
    #[serde(default = "default_timeout")]
    pub timeout: Period,
}

fn default_timeout() -> Period {
    Period::from_secs(10)
}

/// Messages published before the oldest one's acknowledgement is awaited (below the client's
/// 5,000 permits for unacknowledged messages).
const ACKS_IN_FLIGHT: usize = 1024;

/// Characters a subject token cannot take from a row: wildcards and whitespace (a `.` in a value
/// makes more tokens, which is allowed).
const NOT_IN_SUBJECTS: [char; 3] = [' ', '*', '>'];

pub struct NatsSinkPlugin;

impl SinkPlugin for NatsSinkPlugin {
    fn type_name(&self) -> &'static str {
        "nats"
    }
    fn delivery(&self) -> &'static [tributary_sdk::delivery::SinkDelivery] {
        use tributary_sdk::delivery::SinkDelivery;
        &[
            SinkDelivery {
                variant: "with `stream` (JetStream)",
                durable_when: "the stream acknowledged every message of the batch",
                duplicates: "none within the stream's duplicate window (`Nats-Msg-Id`) for a retried batch, and after a crash for rows straight from a disk buffer (named by their buffer record) or replayed at a position in the same batch; other rows written but not acknowledged when the process died are published again",
            },
            SinkDelivery {
                variant: "without `stream` (core NATS)",
                durable_when: "the messages were flushed to the server, which keeps nothing: subscribers absent then never see them",
                duplicates: "a batch retried after a lost connection",
            },
        ]
    }
    fn build(&self, config: &ComponentConfig, inputs: &[(String, SchemaRef)]) -> Result<Box<dyn Sink>, ConfigError> {
        let cfg: NatsSinkConfig = config.decode()?;
        let schema = single_input_schema(inputs)?;
        let connection = Connection {
            url: cfg.url.clone(),
            user: cfg.user.clone(),
            password: cfg.password.clone(),
            token: cfg.token.clone(),
            tls_ca_file: cfg.tls_ca_file.clone(),
        };
        connection.check()?;
        let subject = RowTemplate::parse(&cfg.subject, &schema).map_err(|m| ConfigError::at("subject", m))?;
        Ok(Box::new(NatsSink {
            id: config.id.clone(),
            connection,
            subject,
            stream: cfg.stream,
            timeout: cfg.timeout.0,
            client: None,
            retried: None,
            batches: 0,
            instance: String::new(),
            next_at: None,
            records: None,
        }))
    }
}

struct Client {
    core: async_nats::Client,
    jetstream: async_nats::jetstream::Context,
}

pub struct NatsSink {
    id: String,
    connection: Connection,
    subject: RowTemplate,
    stream: Option<String>,
    timeout: Duration,
    client: Option<Client>,
    /// The last batch that failed, by fingerprint, and the id prefix its messages had: the same
    /// rows passed again get the same ids.
    retried: Option<(u64, String)>,
    batches: u64,
    /// Tells this run's ids from another run's (the process and its start time).
    instance: String,
    /// Where the next batch stands in a replayable stream, and the records it holds.
    next_at: Option<Position>,
    records: Option<Vec<(u64, u32)>>,
}

/// One message to publish: the row's index, subject and JSON.
struct Outgoing {
    row: usize,
    subject: String,
    payload: String,
}

impl NatsSink {
    /// The rows as messages, and the rows that cannot be one (a subject from a null, a message
    /// over the server's `max_payload`).
    fn messages(&self, batch: &RecordBatch, max_payload: usize) -> (Vec<Outgoing>, Vec<DeadLetter>) {
        let payloads = rows_as_json(batch);
        let mut out = Vec::with_capacity(payloads.len());
        let mut rejected = Vec::new();
        for (row, (subject, payload)) in self.subject.render(batch, &NOT_IN_SUBJECTS).into_iter().zip(payloads).enumerate() {
            let subject = subject.and_then(|s| {
                if s.is_empty() || s.split('.').any(str::is_empty) {
                    Err(format!("subject `{s}` has an empty token"))
                } else {
                    Ok(s)
                }
            });
            match subject {
                Err(reason) => rejected.push(DeadLetter { payload, reason }),
                Ok(_) if payload.len() > max_payload => rejected.push(DeadLetter {
                    reason: format!("the message is {} bytes, over the server's max_payload of {max_payload}", payload.len()),
                    payload,
                }),
                Ok(subject) => out.push(Outgoing { row, subject, payload }),
            }
        }
        (out, rejected)
    }

    /// Each message's `Nats-Msg-Id`, the same in every run for the same rows:
    /// - rows of known records: `<sink>-<stream>-<epoch>-<record>-<row in it>`, however the
    ///   batches are cut (a replay sends records one by one that went merged);
    /// - else rows at a position: the position and the batch's fingerprint, so a batch cut
    ///   otherwise gets other ids rather than the ids of other rows;
    /// - else ids of this run, kept by a batch passed again after a failure.
    fn message_ids(&mut self, messages: &[Outgoing], rows: usize) -> Vec<String> {
        // Record and index of each row of the batch (the engine passes records whose counts add
        // up to the batch's rows).
        let of_row: Option<Vec<(u64, u32)>> = self
            .records
            .as_ref()
            .map(|records| records.iter().flat_map(|&(seq, n)| (0..n).map(move |i| (seq, i))).collect())
            .filter(|of_row: &Vec<_>| of_row.len() == rows);
        if let (Some(p), Some(of_row)) = (&self.next_at, of_row) {
            return messages
                .iter()
                .map(|m| {
                    let (seq, i) = of_row[m.row];
                    format!("{}-{}-{:x}-{seq}-{i}", self.id, p.stream, p.epoch)
                })
                .collect();
        }
        // SipHash with fixed keys: the same rows give the same fingerprint in every run of one
        // build (another Rust release may hash otherwise: then a replay just gets new ids).
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        for m in messages {
            (m.row, &m.subject, &m.payload).hash(&mut hasher);
        }
        let fingerprint = hasher.finish();
        let prefix = match (&self.next_at, &self.retried) {
            (Some(p), _) => format!("{}-{}-{:x}-{}-{fingerprint:016x}", self.id, p.stream, p.epoch, p.seq),
            (None, Some((f, prefix))) if *f == fingerprint => prefix.clone(),
            (None, _) => {
                self.batches += 1;
                format!("{}-{}", self.instance, self.batches)
            }
        };
        self.retried = Some((fingerprint, prefix.clone()));
        messages.iter().map(|m| format!("{prefix}-{}", m.row)).collect()
    }
}

#[async_trait::async_trait]
impl Sink for NatsSink {
    async fn start(&mut self, ctx: &SinkContext) -> anyhow::Result<()> {
        let core = self.connection.connect(&self.id, &ctx.metrics).await?;
        let jetstream = async_nats::jetstream::ContextBuilder::new().timeout(self.timeout).build(core.clone());
        if let Some(stream) = &self.stream {
            jetstream
                .get_stream(stream)
                .await
                .with_context(|| format!("JetStream stream `{stream}` (the sink publishes into an existing stream)"))?;
        }
        self.client = Some(Client { core, jetstream });
        self.instance = format!("{}-{:x}-{:x}", self.id, std::process::id(), tributary_sdk::now_us());
        Ok(())
    }

    async fn write(&mut self, batch: RecordBatch, _ctx: &SinkContext) -> Result<Written, Transient> {
        let Some(client) = &self.client else { return Err(Transient::new(anyhow::anyhow!("not connected"))) };
        // 0 until the server has said its limit (the client connects in the background); the
        // server refuses a larger message then, and the write fails transiently.
        let max_payload = match client.core.server_info().max_payload {
            0 => usize::MAX,
            limit => limit,
        };
        let (messages, rejected) = self.messages(&batch, max_payload);
        let Some(stream) = self.stream.clone() else {
            let core = client.core.clone();
            for m in messages {
                core.publish(m.subject, m.payload.into()).await.context("publishing to NATS")?;
            }
            tokio::time::timeout(self.timeout, core.flush()).await.context("flushing to NATS timed out")?.context("flushing to NATS")?;
            return Ok(Written::with(tributary_sdk::Durability::Durable, rejected));
        };
        let jetstream = client.jetstream.clone();
        let ids = self.message_ids(&messages, batch.num_rows());
        // At most ACKS_IN_FLIGHT acknowledgements are awaited at once: the client lends a permit per
        // unacknowledged message (5,000 by default) and `send_publish` waits for one, so sending a
        // larger batch before awaiting any acknowledgement would wait forever.
        let mut in_flight = std::collections::VecDeque::with_capacity(ACKS_IN_FLIGHT);
        let mut copies = 0usize;
        let mut messages = messages.into_iter().zip(ids);
        loop {
            let next = if in_flight.len() < ACKS_IN_FLIGHT { messages.next() } else { None };
            if let Some((m, id)) = next {
                let publish = PublishMessage::build().payload(m.payload.into()).message_id(id);
                let ack = jetstream.send_publish(m.subject.clone(), publish).await.context("publishing to JetStream")?;
                in_flight.push_back((m.subject, ack));
                continue;
            }
            let Some((subject, ack)) = in_flight.pop_front() else { break };
            let ack = ack.await.with_context(|| format!("waiting for JetStream's acknowledgement of `{subject}`"))?;
            copies += usize::from(ack.duplicate);
            if ack.stream != stream {
                return Err(Transient::new(anyhow::anyhow!(
                    "stream `{}` stored a message meant for `{stream}`: the subject `{}` belongs to that stream",
                    ack.stream,
                    self.subject
                )));
            }
        }
        self.retried = None;
        if copies > 0 {
            tracing::info!(sink = %self.id, copies, "JetStream dropped messages it had stored already (same Nats-Msg-Id)");
        }
        Ok(Written::with(tributary_sdk::Durability::Durable, rejected))
    }

    async fn flush(&mut self, _ctx: &SinkContext) -> Result<Vec<DeadLetter>, Transient> {
        Ok(Vec::new())
    }

    fn next_at(&mut self, position: Option<&Position>, records: Option<&[(u64, u32)]>) {
        self.next_at = position.cloned();
        self.records = records.map(<[_]>::to_vec);
    }
}
