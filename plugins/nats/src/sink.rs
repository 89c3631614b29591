//! `nats` sink: each row as a JSON object on a subject made from the row. Through JetStream
//! (`stream`) a batch counts as written once the stream acknowledged every message; each message
//! carries a `Nats-Msg-Id`, and a batch passed again after a failure gets the same ids, so the
//! stream drops what it already stored (within its duplicate window, 2 minutes by default).

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
    single_input_schema, ComponentConfig, ConfigError, DeadLetter, Period, Secret, Sink, SinkContext, SinkPlugin, Transient, Written,
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
                duplicates: "none within the stream's duplicate window for a batch retried by the same process (`Nats-Msg-Id`); after a crash, rows written but not acknowledged upstream are published again with new ids",
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

    /// The id prefix of this batch's messages: a batch passed again after a failure keeps its ids.
    fn id_prefix(&mut self, messages: &[Outgoing]) -> (u64, String) {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        for m in messages {
            (m.row, &m.subject, &m.payload).hash(&mut hasher);
        }
        let fingerprint = hasher.finish();
        match &self.retried {
            Some((f, prefix)) if *f == fingerprint => (fingerprint, prefix.clone()),
            _ => {
                self.batches += 1;
                (fingerprint, format!("{}-{}", self.instance, self.batches))
            }
        }
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
        let (fingerprint, prefix) = self.id_prefix(&messages);
        self.retried = Some((fingerprint, prefix.clone()));
        let mut acks = Vec::with_capacity(messages.len());
        for m in messages {
            let publish = PublishMessage::build().payload(m.payload.into()).message_id(format!("{prefix}-{}", m.row));
            let ack = jetstream.send_publish(m.subject.clone(), publish).await.context("publishing to JetStream")?;
            acks.push((m.subject, ack));
        }
        for (subject, ack) in acks {
            let ack = ack.await.with_context(|| format!("waiting for JetStream's acknowledgement of `{subject}`"))?;
            if ack.stream != stream {
                return Err(Transient::new(anyhow::anyhow!(
                    "stream `{}` stored a message meant for `{stream}`: the subject `{}` belongs to that stream",
                    ack.stream,
                    self.subject
                )));
            }
        }
        self.retried = None;
        Ok(Written::with(tributary_sdk::Durability::Durable, rejected))
    }

    async fn flush(&mut self, _ctx: &SinkContext) -> Result<Vec<DeadLetter>, Transient> {
        Ok(Vec::new())
    }
}
