//! Keyed repartitioning (a windowed transform's `partition_by`), as Kafka Streams does it: the
//! source's group reads the topics and writes every message again to an internal *repartition
//! topic*, to the partition its key (the `partition_by` columns) hashes to; a second group reads
//! that topic and feeds the pipeline. Every key then lies in one partition of the repartition
//! topic, which one member reads, so a window per key is counted on one instance.
//!
//! - **The first stage** ([`run`]) commits the topics' offsets once the broker acknowledged the
//!   copies (delivery reports). A crash or a rebalance between the copy and the commit copies the
//!   messages again.
//! - **Those copies are dropped by the second stage** ([`Origins`]): each copy carries its
//!   origin (`topic/partition/offset`), and one origin partition's messages reach a repartition
//!   partition in offset order (one owner at a time, an idempotent producer), so a copy at or
//!   below the highest origin offset seen is a copy again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use datafusion::arrow::array::{Array, ArrayRef, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{CommitMode, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;
use tokio::time::Instant;
use tributary_sdk::json::JsonRows;
use tributary_sdk::position::fnv1a;
use tributary_sdk::{AckStatus, CancellationToken, ComponentMetrics};

use crate::client::client_config;
use crate::group::{commit, Group, GroupContext, PartitionKey};
use crate::source::{group_consumer, KafkaSourceConfig};

/// The header naming a copy's origin message.
pub(crate) const ORIGIN: &str = "tributary-origin";

/// What one windowed transform's repartitioning reads and writes.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// The internal topic: `<group_id>-<transform>-repartition`.
    pub topic: String,
    /// The group reading it: `<group_id>-<transform>`.
    pub group: String,
    /// The key columns' names.
    pub by: Vec<String>,
}

impl Plan {
    pub fn new(group_id: &str, transform: &str, by: Vec<String>) -> Plan {
        Plan { topic: format!("{group_id}-{transform}-repartition"), group: format!("{group_id}-{transform}"), by }
    }
}

/// The repartition partition of a message whose key columns read `key`.
pub(crate) fn partition_of(key: &str, partitions: i32) -> i32 {
    (fnv1a(key.as_bytes()) % partitions.max(1) as u64) as i32
}

/// Each row's key: its `by` columns as text, joined by U+001F (null: empty).
fn keys(rows: &datafusion::arrow::record_batch::RecordBatch, by: &[String]) -> anyhow::Result<Vec<String>> {
    let columns: Vec<ArrayRef> = by
        .iter()
        .map(|c| {
            let col = rows.column_by_name(c).with_context(|| format!("the messages have no column `{c}`"))?;
            Ok(cast(col, &DataType::Utf8)?)
        })
        .collect::<anyhow::Result<_>>()?;
    let text: Vec<&StringArray> = columns.iter().filter_map(|c| c.as_any().downcast_ref::<StringArray>()).collect();
    Ok((0..rows.num_rows())
        .map(|i| text.iter().map(|c| if c.is_valid(i) { c.value(i) } else { "" }).collect::<Vec<_>>().join("\u{1f}"))
        .collect())
}

/// Creates the repartition topic with as many partitions as the most partitioned input topic,
/// unless it exists; returns its partition count. A broker that refuses to create topics (ACLs,
/// or librdkafka's mock broker) needs it made beforehand.
pub(crate) async fn ensure_topic(cfg: &KafkaSourceConfig, plan: &Plan, source_id: &str) -> anyhow::Result<i32> {
    let client = client_config(&format!("tributary/{source_id}/admin"), &cfg.bootstrap_servers, cfg.ssl.as_ref(), &[], &cfg.librdkafka);
    let admin: AdminClient<DefaultClientContext> = client.create().context("creating the Kafka admin client")?;
    let count = |topic: &str| -> anyhow::Result<Option<i32>> {
        let md = admin.inner().fetch_metadata(Some(topic), Duration::from_secs(10)).with_context(|| format!("reading topic `{topic}`"))?;
        Ok(md.topics().first().filter(|t| t.error().is_none() && !t.partitions().is_empty()).map(|t| t.partitions().len() as i32))
    };
    if let Some(n) = count(&plan.topic)? {
        return Ok(n);
    }
    let mut partitions = 0;
    for topic in &cfg.topics {
        partitions = partitions.max(count(topic)?.with_context(|| format!("topic `{topic}` does not exist"))?);
    }
    let new = NewTopic::new(&plan.topic, partitions, TopicReplication::Fixed(-1));
    let created = admin.create_topics([&new], &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)))).await;
    match created.as_deref() {
        Ok([Ok(_)]) | Ok([Err((_, RDKafkaErrorCode::TopicAlreadyExists))]) => {}
        other => {
            let why = match other {
                Ok([Err((_, code))]) => code.to_string(),
                Err(e) => e.to_string(),
                _ => "no answer".to_string(),
            };
            bail!(
                "cannot create the repartition topic `{}` ({why}); create it with {partitions} partitions (the input topics' count), or let this client create topics",
                plan.topic
            );
        }
    }
    tracing::info!(source = %source_id, topic = %plan.topic, partitions, "created the repartition topic");
    Ok(partitions)
}

/// The first stage: copy every message of `cfg.topics` to the repartition topic, keyed, and commit
/// once the copies are acknowledged. Runs until `shutdown`.
pub(crate) async fn run(
    source_id: String,
    cfg: KafkaSourceConfig,
    rows: JsonRows,
    plan: Plan,
    partitions: i32,
    shutdown: CancellationToken,
    metrics: Arc<ComponentMetrics>,
) -> anyhow::Result<()> {
    let id = format!("{source_id} (repartition)");
    let group = Group::new(&id, cfg.rebalance_wait.0, Default::default());
    let consumer = group_consumer(&source_id, &cfg, &cfg.topics, &cfg.group_id, cfg.start_from, &group)?;
    // Idempotence keeps one partition's copies in order across retries, which `Origins` needs.
    let producer_defaults = [("enable.idempotence", "true".to_string()), ("linger.ms", "5".to_string())];
    let producer: FutureProducer = client_config(
        &format!("tributary/{source_id}/repartition"),
        &cfg.bootstrap_servers,
        cfg.ssl.as_ref(),
        &producer_defaults,
        &cfg.librdkafka,
    )
    .create()
    .context("creating the Kafka producer of the repartition topic")?;
    let _leaving = group.closing_guard();
    tracing::info!(source = %source_id, topics = %cfg.topics.join(","), group = %cfg.group_id, into = %plan.topic, "repartitioning");
    let copier = Copier { rows, plan, partitions, producer };
    let mut received: Vec<rdkafka::message::OwnedMessage> = Vec::new();
    let mut deadline: Option<Instant> = None;
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = async { tokio::time::sleep_until(deadline.expect("guarded")).await }, if deadline.is_some() => {
                copier.copy(std::mem::take(&mut received), &group, &consumer, &id).await?;
                deadline = None;
            }
            m = consumer.recv() => {
                let revoked = group.take_revoked();
                if !revoked.is_empty() {
                    received.retain(|m| !revoked.contains(&(m.topic().to_string(), m.partition())));
                }
                group.take_assigned();
                match m {
                    Ok(m) => {
                        received.push(m.detach());
                        if received.len() >= cfg.batch_size {
                            copier.copy(std::mem::take(&mut received), &group, &consumer, &id).await?;
                            deadline = None;
                        } else if deadline.is_none() {
                            deadline = Some(Instant::now() + cfg.batch_wait.0);
                        }
                    }
                    Err(e) => {
                        tributary_sdk::report_error!(metrics, warn, source = %source_id, error = %e, "Kafka consume error (repartitioning)");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
    }
    copier.copy(received, &group, &consumer, &id).await?;
    Ok(())
}

struct Copier {
    rows: JsonRows,
    plan: Plan,
    partitions: i32,
    producer: FutureProducer,
}

impl Copier {
    /// Copy `messages` (each to its key's partition) and commit them once every copy is
    /// acknowledged. A message that does not decode goes to a partition of its origin's: the
    /// second stage makes it a dead letter.
    async fn copy(
        &self,
        messages: Vec<rdkafka::message::OwnedMessage>,
        group: &Arc<Group>,
        consumer: &StreamConsumer<GroupContext>,
        id: &str,
    ) -> anyhow::Result<()> {
        if messages.is_empty() {
            return Ok(());
        }
        let mut offsets: HashMap<PartitionKey, i64> = HashMap::new();
        for m in &messages {
            let e = offsets.entry((m.topic().to_string(), m.partition())).or_insert(m.offset());
            *e = (*e).max(m.offset());
        }
        let seq = group.tracker().start(offsets);
        let decoded = self.rows.decode_messages(messages.iter().map(|m| m.payload().unwrap_or_default()));
        let row_keys = keys(&decoded.rows, &self.plan.by)?;
        let mut key_of: Vec<Option<&str>> = vec![None; messages.len()];
        for (row, &message) in decoded.from.iter().enumerate() {
            key_of[message] = Some(&row_keys[row]);
        }
        let mut deliveries = Vec::with_capacity(messages.len());
        for (m, key) in messages.iter().zip(key_of) {
            let origin = format!("{}/{}/{}", m.topic(), m.partition(), m.offset());
            let partition = match key {
                Some(key) => partition_of(key, self.partitions),
                None => partition_of(&format!("{}/{}", m.topic(), m.partition()), self.partitions),
            };
            let headers = OwnedHeaders::new().insert(Header { key: ORIGIN, value: Some(origin.as_bytes()) });
            let mut record = FutureRecord::to(&self.plan.topic).partition(partition).headers(headers);
            if let Some(payload) = m.payload() {
                record = record.payload(payload);
            }
            if let Some(key) = key {
                record = record.key(key);
            }
            // In order: a full queue waits here rather than letting a later message pass.
            loop {
                match self.producer.send_result(record) {
                    Ok(delivery) => {
                        deliveries.push(delivery);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        record = r;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err((e, _)) => bail!("copying {origin} to the repartition topic `{}`: {e}", self.plan.topic),
                }
            }
        }
        for delivery in deliveries {
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => bail!("the repartition topic `{}` refused a copy: {e}", self.plan.topic),
                Err(_) => bail!("the producer of the repartition topic `{}` stopped", self.plan.topic),
            }
        }
        group.resolve(seq, AckStatus::Delivered);
        let ready = group.tracker().ready(None);
        commit(consumer, &ready, CommitMode::Async, id);
        Ok(())
    }
}

/// The second stage's filter of copies made twice: per repartition partition, the highest origin
/// offset seen of each origin partition.
#[derive(Default)]
pub(crate) struct Origins {
    seen: HashMap<PartitionKey, HashMap<String, i64>>,
}

impl Origins {
    /// Whether the message of repartition partition `at` with `headers` is a copy of one already
    /// read; records it otherwise. A message without an origin is never a copy.
    pub fn copied_again(&mut self, at: &PartitionKey, headers: Option<&rdkafka::message::BorrowedHeaders>) -> bool {
        let Some(origin) = headers.and_then(|h| h.iter().find(|h| h.key == ORIGIN)).and_then(|h| h.value) else { return false };
        let Some((partition, offset)) = std::str::from_utf8(origin).ok().and_then(|o| o.rsplit_once('/')) else { return false };
        let Ok(offset) = offset.parse::<i64>() else { return false };
        self.seen_offset(at, partition, offset)
    }

    fn seen_offset(&mut self, at: &PartitionKey, origin_partition: &str, offset: i64) -> bool {
        let seen = self.seen.entry(at.clone()).or_default();
        match seen.get_mut(origin_partition) {
            Some(high) if offset <= *high => true,
            Some(high) => {
                *high = offset;
                false
            }
            None => {
                seen.insert(origin_partition.to_string(), offset);
                false
            }
        }
    }

    /// `at` moved (revoked or assigned again): what was seen there is read again from the commit.
    pub fn forget(&mut self, at: &PartitionKey) {
        self.seen.remove(at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion::arrow::record_batch::RecordBatch;

    #[test]
    fn a_copy_at_or_below_the_highest_origin_offset_seen_is_dropped_per_repartition_partition() {
        let mut o = Origins::default();
        let (r0, r1) = (("t-r".to_string(), 0), ("t-r".to_string(), 1));
        assert!(!o.seen_offset(&r0, "badges/3", 10));
        assert!(!o.seen_offset(&r0, "badges/3", 11));
        assert!(!o.seen_offset(&r0, "badges/4", 2), "another origin partition has its own offsets");
        // The first stage crashed after copying 10 and 11 and copies them again.
        assert!(o.seen_offset(&r0, "badges/3", 10));
        assert!(o.seen_offset(&r0, "badges/3", 11));
        assert!(!o.seen_offset(&r0, "badges/3", 12));
        assert!(!o.seen_offset(&r1, "badges/3", 5), "another repartition partition got other messages of the origin");
        o.forget(&r0);
        assert!(!o.seen_offset(&r0, "badges/3", 12), "a partition read again starts afresh");
    }

    #[test]
    fn keys_join_the_columns_as_text_and_hash_to_a_stable_partition() {
        let schema = Arc::new(Schema::new(vec![Field::new("site", DataType::Utf8, true), Field::new("floor", DataType::Int64, true)]));
        let rows = RecordBatch::try_new(
            schema,
            vec![Arc::new(StringArray::from(vec![Some("lyon"), None])), Arc::new(Int64Array::from(vec![Some(3), Some(1)]))],
        )
        .unwrap();
        let keys = keys(&rows, &["site".into(), "floor".into()]).unwrap();
        assert_eq!(keys, vec!["lyon\u{1f}3".to_string(), "\u{1f}1".to_string()]);
        // FNV-1a of the key, modulo the partition count: the same on every member and release.
        assert_eq!(partition_of("lyon\u{1f}3", 12), (fnv1a("lyon\u{1f}3".as_bytes()) % 12) as i32);
        assert_eq!(partition_of("anything", 1), 0);
        let err = super::keys(&rows, &["badge".into()]).unwrap_err();
        assert_eq!(err.to_string(), "the messages have no column `badge`");
    }
}
