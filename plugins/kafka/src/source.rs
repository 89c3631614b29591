//! `kafka` source: a consumer group member whose offsets are committed only after every sink
//! downstream has durably written the batch (and its dead letters). Undecodable messages go to the
//! dead-letter output and are committed with their batch, never retried forever.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use datafusion::arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch, TimestampMicrosecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::Message;
use serde::Deserialize;
use tokio::time::Instant;
use tributary_sdk::config::event_time_type;
use tributary_sdk::json::JsonRows;
use tributary_sdk::{
    Ack, AckSet, Batch, BuiltSource, ComponentConfig, ConfigError, DeadLetter, DeclaredSchema, HumanDuration, OutputSpec, Position,
    Repartition, Replay, Secret, Source, SourceContext, SourcePlugin,
};

use crate::client::{client_config, SslConfig};
use crate::group::{commit, Group, GroupContext, PartitionKey};
use crate::replay::{self, SinkCuts};
use crate::shuffle;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceFormat {
    /// JSON objects decoded into the declared `schema`.
    #[default]
    Json,
    /// The API status monitor's messages, with `timestamp` (epoch seconds) turned into `ts` and
    /// `success` computed as its consumer did.
    ApiStatusMonitor,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartFrom {
    /// A new consumer group starts at the oldest retained message.
    #[default]
    Earliest,
    Latest,
}

/// Config of a `kafka` source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSourceConfig {
    pub bootstrap_servers: String,
    pub topics: Vec<String>,
    pub group_id: String,
    #[serde(default)]
    pub format: SourceFormat,
    /// Columns and types of the JSON values (format `json`).
    #[serde(default)]
    pub schema: Option<DeclaredSchema>,
    /// Timestamp column filled with the ingestion time when a message lacks it (default `ts`).
    #[serde(default = "default_time_column")]
    pub time_column: String,
    #[serde(default)]
    pub start_from: StartFrom,
    /// Messages per batch at most (default 1000).
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// How long a partial batch waits for more messages (default 200ms).
    #[serde(default = "default_batch_wait")]
    pub batch_wait: HumanDuration,
    /// Batches sent but not yet acknowledged before consumption pauses (default 2048). Only their
    /// offsets are kept here (the rows are in the channels and sinks, bounded there), but it must
    /// exceed what the sinks buffer before they write (a `parquet` sink's `max_rows`), or
    /// consumption waits for the sink's `max_age`.
    #[serde(default = "default_max_pending")]
    pub max_pending_batches: usize,
    /// On a rebalance, how long a member waits for the acks of the revoked partitions' batches
    /// before it commits what was written and lets the rest go to the new owner (default 10s;
    /// below librdkafka's `max.poll.interval.ms`).
    #[serde(default = "default_rebalance_wait")]
    pub rebalance_wait: HumanDuration,
    /// `api_status_monitor`: seconds added to `timestamp`, for producers whose clock was shifted by
    /// their UTC offset (the original used a naive `utcnow()`); default 0.
    #[serde(default)]
    pub timestamp_offset_secs: i64,
    #[serde(default)]
    pub ssl: Option<SslConfig>,
    #[serde(default)]
    pub librdkafka: BTreeMap<String, Secret>,
}

fn default_time_column() -> String {
    "ts".into()
}
fn default_batch_size() -> usize {
    1000
}
fn default_batch_wait() -> HumanDuration {
    HumanDuration(Duration::from_millis(200))
}
fn default_max_pending() -> usize {
    2048
}
fn default_rebalance_wait() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}

/// The original monitor's message as declared columns.
fn api_status_declared() -> DeclaredSchema {
    serde_yaml::from_str(
        "{site: string, endpoint: string, status_code: int, log: string, error: string, response_time_ms: int, sla_ms: int, in_sla: bool, timestamp: int}",
    )
    .expect("valid declaration")
}

/// Output schema of `format: api_status_monitor`.
pub fn api_status_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("ts", event_time_type(), false),
        Field::new("site", DataType::Utf8, true),
        Field::new("endpoint", DataType::Utf8, true),
        Field::new("status_code", DataType::Int64, true),
        Field::new("log", DataType::Utf8, true),
        Field::new("error", DataType::Utf8, true),
        Field::new("response_time_ms", DataType::Int64, true),
        Field::new("sla_ms", DataType::Int64, true),
        Field::new("in_sla", DataType::Boolean, true),
        Field::new("success", DataType::Boolean, false),
    ]))
}

pub struct KafkaSourcePlugin;

impl SourcePlugin for KafkaSourcePlugin {
    fn type_name(&self) -> &'static str {
        "kafka"
    }
    fn delivery(&self) -> &'static [tributary_sdk::delivery::SourceDelivery] {
        use tributary_sdk::delivery::SourceDelivery;
        &[SourceDelivery {
            variant: "",
            guarantee: "at-least-once; exactly once with `delivery: exactly_once` into exactly-once sinks",
            how: "offsets committed per partition only after the acks resolve; on a rebalance the member losing a partition waits up to `rebalance_wait` for its batches' acks and commits what was written before the partition moves",
            duplicates: "rows written but not yet committed are read again after a restart, or by a partition's next owner",
            crash_loses: "nothing acknowledged",
        }]
    }
    fn build(&self, config: &ComponentConfig) -> Result<BuiltSource, ConfigError> {
        let cfg: KafkaSourceConfig = config.decode()?;
        if cfg.topics.is_empty() {
            return Err(ConfigError::at("topics", "at least one topic is required"));
        }
        if cfg.batch_size == 0 || cfg.max_pending_batches == 0 {
            return Err(ConfigError::at("batch_size", "batch_size and max_pending_batches must be at least 1"));
        }
        // librdkafka's default; past it the group drops a member that has not come back to poll.
        let max_poll_ms = match cfg.librdkafka.get("max.poll.interval.ms") {
            Some(v) => v.expose().parse::<u64>().map_err(|_| {
                ConfigError::at("librdkafka.max.poll.interval.ms", format!("`{}` is not a number of milliseconds", v.expose()))
            })?,
            None => 300_000,
        };
        if cfg.rebalance_wait.0 >= Duration::from_millis(max_poll_ms) {
            return Err(ConfigError::at(
                "rebalance_wait",
                format!(
                    "{:?} must be shorter than max.poll.interval.ms ({max_poll_ms} ms), or the group drops this member mid-rebalance",
                    cfg.rebalance_wait.0
                ),
            ));
        }
        let (rows, schema) = match (cfg.format, &cfg.schema) {
            (SourceFormat::Json, Some(s)) => {
                let rows = JsonRows::new(s, Some(&cfg.time_column));
                let schema = rows.schema().clone();
                (rows, schema)
            }
            (SourceFormat::Json, None) => {
                return Err(ConfigError::at("schema", "format `json` needs the columns and types of the messages"))
            }
            (SourceFormat::ApiStatusMonitor, None) => (JsonRows::new(&api_status_declared(), None), api_status_schema()),
            (SourceFormat::ApiStatusMonitor, Some(_)) => {
                return Err(ConfigError::at("schema", "format `api_status_monitor` has a fixed schema; remove `schema`"))
            }
        };
        Ok(BuiltSource {
            outputs: vec![OutputSpec::main(schema.clone())],
            source: Box::new(KafkaSource { id: config.id.clone(), cfg, rows, repartition: None }),
        })
    }
}

pub struct KafkaSource {
    id: String,
    cfg: KafkaSourceConfig,
    rows: JsonRows,
    /// Set by a windowed transform's `partition_by` (see `shuffle.rs`): the pipeline then reads
    /// the repartition topic.
    repartition: Option<shuffle::Plan>,
}

struct Received {
    topic: String,
    partition: i32,
    offset: i64,
    payload: Option<Vec<u8>>,
}

impl KafkaSource {
    /// The topics the pipeline's rows come from, the group reading them, and where a new group starts.
    fn reads(&self) -> (Vec<String>, String, StartFrom) {
        match &self.repartition {
            None => (self.cfg.topics.clone(), self.cfg.group_id.clone(), self.cfg.start_from),
            // Whatever the first stage copied is to be read, from the first copy on.
            Some(plan) => (vec![plan.topic.clone()], plan.group.clone(), StartFrom::Earliest),
        }
    }

    fn consumer(&self, group: &Arc<Group>) -> anyhow::Result<StreamConsumer<GroupContext>> {
        let (topics, group_id, start_from) = self.reads();
        group_consumer(&self.id, &self.cfg, &topics, &group_id, start_from, group)
    }

    /// Commit what every sink has written; a batch a sink refused stops the source uncommitted.
    fn commit_acknowledged(&self, consumer: &StreamConsumer<GroupContext>, group: &Group, mode: CommitMode) -> anyhow::Result<()> {
        let ready = {
            let mut t = group.tracker();
            if let Some(failure) = t.failure() {
                bail!("{failure}");
            }
            t.ready(None)
        };
        commit(consumer, &ready, mode, &self.id);
        Ok(())
    }

    /// Send what was received: in one batch, or exactly once, in one batch per partition stamped
    /// with its last offset (see `replay.rs`).
    async fn emit(&self, ctx: &SourceContext, received: Vec<Received>, group: &Arc<Group>) -> anyhow::Result<()> {
        // Repartitioned, a window keeps its open windows per partition, so each batch holds one.
        if ctx.sink_positions.is_empty() && self.repartition.is_none() {
            return self.emit_batch(ctx, received, group, None).await;
        }
        let mut by_partition: BTreeMap<PartitionKey, Vec<Received>> = BTreeMap::new();
        for m in received {
            by_partition.entry((m.topic.clone(), m.partition)).or_default().push(m);
        }
        for (key, messages) in by_partition {
            // A partition's messages arrive in offset order.
            let last = messages.last().map_or(0, |m| m.offset);
            self.emit_batch(ctx, messages, group, Some(replay::position(&self.id, &key, last))).await?;
        }
        Ok(())
    }

    /// Asks the exactly-once sinks where they stopped in `partitions`.
    async fn ask_sinks(&self, ctx: &SourceContext, cuts: &mut SinkCuts, partitions: &[PartitionKey]) -> anyhow::Result<()> {
        let streams: Vec<Arc<str>> = partitions.iter().map(|k| replay::stream(&self.id, k)).collect();
        let written = ctx.sink_positions.written(&streams).await.context("asking the exactly-once sinks where they stopped")?;
        cuts.learn(&self.id, partitions, &written);
        let said: Vec<String> = written.iter().map(|w| w.to_string()).collect();
        tracing::info!(source = %self.id, partitions = partitions.len(), sinks_wrote = %said.join("; "), "exactly once: replayed messages the sinks wrote are skipped");
        Ok(())
    }

    /// Decode a batch of messages, send the rows and dead letters under one acknowledgement.
    async fn emit_batch(
        &self,
        ctx: &SourceContext,
        received: Vec<Received>,
        group: &Arc<Group>,
        position: Option<Position>,
    ) -> anyhow::Result<()> {
        if received.is_empty() {
            return Ok(());
        }
        let mut offsets = HashMap::new();
        for m in &received {
            let e = offsets.entry((m.topic.clone(), m.partition)).or_insert(m.offset);
            *e = (*e).max(m.offset);
        }
        let seq = group.tracker().start(offsets);
        let g = group.clone();
        let ack = Ack::new(move |status| g.resolve(seq, status));
        group.tracker().withdrawable(seq, ack.withdrawal());

        let decoded = self.rows.decode_messages(received.iter().map(|m| m.payload.as_deref().unwrap_or_default()));
        let mut letters: Vec<DeadLetter> = decoded
            .bad
            .into_iter()
            .map(|e| {
                let m = &received[e.message];
                DeadLetter { payload: e.raw, reason: format!("{}/{}@{}: {}", m.topic, m.partition, m.offset, e.reason) }
            })
            .collect();
        let batch = decoded.rows;
        let batch = match self.cfg.format {
            SourceFormat::Json => batch,
            SourceFormat::ApiStatusMonitor => {
                let (rows, out_of_range) = api_status_rows(&batch, self.cfg.timestamp_offset_secs);
                letters.extend(out_of_range);
                rows
            }
        };
        if !letters.is_empty() {
            // The dead letters carry each reason; the log says how many and the first.
            tributary_sdk::report_error!(ctx.metrics, debug, count = letters.len(), source = %self.id, first_reason = %letters[0].reason, "undecodable messages");
            ctx.dead_letters.send(letters, AckSet::single(ack.clone())).await?;
        }
        if batch.num_rows() == 0 {
            ack.release();
        } else {
            ctx.output("").send(Batch::with_acks(batch, AckSet::single(ack)).at(position)).await?;
        }
        Ok(())
    }
}

/// A member of `group_id` reading `topics`, committing by hand (what the sinks wrote), with
/// `group`'s rebalance callbacks.
pub(crate) fn group_consumer(
    source_id: &str,
    cfg: &KafkaSourceConfig,
    topics: &[String],
    group_id: &str,
    start_from: StartFrom,
    group: &Arc<Group>,
) -> anyhow::Result<StreamConsumer<GroupContext>> {
    let offset_reset = match start_from {
        StartFrom::Earliest => "earliest",
        StartFrom::Latest => "latest",
    };
    let defaults = [
        ("group.id", group_id.to_string()),
        ("enable.auto.commit", "false".to_string()),
        ("enable.auto.offset.store", "false".to_string()),
        ("auto.offset.reset", offset_reset.to_string()),
    ];
    let client = client_config(&format!("tributary/{source_id}"), &cfg.bootstrap_servers, cfg.ssl.as_ref(), &defaults, &cfg.librdkafka);
    let consumer: StreamConsumer<GroupContext> =
        client.create_with_context(GroupContext { group: group.clone() }).context("creating the Kafka consumer")?;
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&names).with_context(|| format!("subscribing to {}", topics.join(", ")))?;
    Ok(consumer)
}

/// The API status monitor's messages (one JSON object per line of `text`) as rows, exactly as the
/// source decodes them, and the dead letters for the lines it cannot use. Public for the fuzz
/// targets in `tests/it/hostile.rs`.
pub fn decode_api_status_messages(text: &[u8], timestamp_offset_secs: i64) -> (RecordBatch, Vec<DeadLetter>) {
    let (raw, errors) = JsonRows::new(&api_status_declared(), None).decode_lines(text);
    let (rows, mut letters) = api_status_rows(&raw, timestamp_offset_secs);
    letters.extend(errors.into_iter().map(|e| DeadLetter { payload: e.raw, reason: format!("line {}: {}", e.line, e.reason) }));
    (rows, letters)
}

/// Latest event time a message may carry: 9999-12-31T23:59:59Z, in epoch seconds.
const MAX_EPOCH_SECS: i64 = 253_402_300_799;

/// The original consumer's view: `ts` from epoch seconds (plus the correction), `success` as
/// `error == "" && 200 <= status_code < 300`. Messages whose `timestamp` is not a time (beyond
/// year 9999 or before 1970, e.g. milliseconds sent as seconds) come back as dead letters.
fn api_status_rows(raw: &RecordBatch, offset_secs: i64) -> (RecordBatch, Vec<DeadLetter>) {
    let stamp = raw.column_by_name("timestamp").expect("declared").as_primitive::<Int64Type>();
    let secs = |s: i64| s.checked_add(offset_secs).filter(|t| (0..=MAX_EPOCH_SECS).contains(t));
    let in_range: BooleanArray = stamp.iter().map(|s| Some(s.is_none_or(|s| secs(s).is_some()))).collect();
    let mut letters = Vec::new();
    if in_range.false_count() > 0 {
        let json = tributary_sdk::dead_letter::rows_as_json(raw);
        for i in (0..raw.num_rows()).filter(|&i| !in_range.value(i)) {
            letters.push(DeadLetter {
                payload: json[i].clone(),
                reason: format!("timestamp {} is not a time in epoch seconds (1970 to 9999)", stamp.value(i)),
            });
        }
    }
    let raw = &datafusion::arrow::compute::filter_record_batch(raw, &in_range).expect("same length");
    let col = |n: &str| raw.column_by_name(n).expect("declared").clone();
    let stamp = raw.column_by_name("timestamp").expect("declared").as_primitive::<Int64Type>();
    let ts: TimestampMicrosecondArray = stamp
        .iter()
        .map(|s| Some(s.and_then(secs).map(|s| s * 1_000_000).unwrap_or_else(now_micros)))
        .collect::<TimestampMicrosecondArray>()
        .with_timezone("UTC");
    let status = raw.column_by_name("status_code").expect("declared").as_primitive::<Int64Type>();
    let error = raw.column_by_name("error").expect("declared").as_string::<i32>();
    let success: BooleanArray = (0..raw.num_rows())
        .map(|i| {
            let code = if status.is_valid(i) { status.value(i) } else { 0 };
            let no_error = !error.is_valid(i) || error.value(i).is_empty();
            Some(no_error && (200..300).contains(&code))
        })
        .collect();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(ts),
        col("site"),
        col("endpoint"),
        col("status_code"),
        col("log"),
        col("error"),
        col("response_time_ms"),
        col("sla_ms"),
        col("in_sla"),
        Arc::new(success),
    ];
    (RecordBatch::try_new(api_status_schema(), columns).expect("api_status columns"), letters)
}

fn now_micros() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

#[async_trait::async_trait]
impl Source for KafkaSource {
    /// Offsets are committed once the rows are acknowledged, and are positions sinks can store.
    fn replay(&self) -> Replay {
        Replay::WithPositions
    }
    fn repartition(&mut self, r: &Repartition) -> Result<Option<String>, String> {
        if let Some(other) = &self.repartition {
            return Err(format!("it already re-keys its rows for another window (into `{}`); one `partition_by` per source", other.topic));
        }
        let decoded = self.rows.schema();
        if let Some(c) = r.by.iter().find(|c| decoded.field_with_name(c).is_err()) {
            return Err(format!(
                "`{c}` is not in the messages as they arrive (the repartitioning reads it before any decoding step of `format`)"
            ));
        }
        let plan = shuffle::Plan::new(&self.cfg.group_id, &r.transform, r.by.clone());
        let how = format!(
            "by {} through Kafka topic `{}` (created with the partition count of {}), read by consumer group `{}`",
            r.by.join(", "),
            plan.topic,
            self.cfg.topics.iter().map(|t| format!("`{t}`")).collect::<Vec<_>>().join(", "),
            plan.group
        );
        self.repartition = Some(plan);
        Ok(Some(how))
    }
    async fn run(self: Box<Self>, mut ctx: SourceContext) -> anyhow::Result<()> {
        let mut copying = match &self.repartition {
            None => None,
            Some(plan) => {
                let partitions = shuffle::ensure_topic(&self.cfg, plan, &self.id).await?;
                let copy = shuffle::run(
                    self.id.clone(),
                    self.cfg.clone(),
                    self.rows.clone(),
                    plan.clone(),
                    partitions,
                    ctx.shutdown.clone(),
                    ctx.metrics.clone(),
                );
                Some(tokio::spawn(copy))
            }
        };
        let mut origins = shuffle::Origins::default();
        let group = Group::new(&self.id, self.cfg.rebalance_wait.0, ctx.ownership.clone());
        let consumer = self.consumer(&group)?;
        // Dropped before the consumer (reverse order), however `run` ends (an abort included): the
        // revoke of the final leave-group then does not wait for acks.
        let _leaving = group.closing_guard();
        let (topics, group_id, _) = self.reads();
        tracing::info!(source = %self.id, topics = %topics.join(","), group = %group_id, "consuming");
        let shutdown = ctx.shutdown.clone();
        let mut received: Vec<Received> = Vec::new();
        let mut deadline: Option<Instant> = None;
        // Exactly once: where the sinks stopped, per partition; and partitions assigned since the
        // sinks were last asked.
        let exactly_once = !ctx.sink_positions.is_empty();
        let mut cuts = SinkCuts::default();
        let mut unasked: BTreeSet<PartitionKey> = BTreeSet::new();
        loop {
            let can_poll = group.tracker().len() < self.cfg.max_pending_batches;
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = group.wake.notified() => self.commit_acknowledged(&consumer, &group, CommitMode::Async)?,
                copied = async { copying.as_mut().expect("guarded").await }, if copying.is_some() => {
                    copying = None;
                    copied.context("the repartitioning task")?.context("repartitioning")?;
                }
                _ = async { tokio::time::sleep_until(deadline.expect("guarded")).await }, if deadline.is_some() => {
                    self.emit(&ctx, std::mem::take(&mut received), &group).await?;
                    deadline = None;
                }
                m = consumer.recv(), if can_poll => {
                    // A rebalance runs inside `recv`: what was buffered of revoked partitions is
                    // left to their new owner, who reads it from the last commit.
                    let revoked = group.take_revoked();
                    if !revoked.is_empty() {
                        received.retain(|m| !revoked.contains(&(m.topic.clone(), m.partition)));
                        revoked.iter().for_each(|k| cuts.forget(k));
                        revoked.iter().for_each(|k| origins.forget(k));
                    }
                    // What the sinks said of a partition before it was (re)assigned is stale: its
                    // last owner may have written more since.
                    for k in group.take_assigned() {
                        cuts.forget(&k);
                        origins.forget(&k);
                        unasked.insert(k);
                    }
                    match m {
                        Ok(m) => {
                            let key = (m.topic().to_string(), m.partition());
                            if self.repartition.is_some() && origins.copied_again(&key, m.headers()) {
                                ctx.metrics.replay_skipped.add(1);
                                continue;
                            }
                            if exactly_once {
                                if !cuts.knows(&key) {
                                    unasked.insert(key.clone());
                                    let partitions: Vec<PartitionKey> = std::mem::take(&mut unasked).into_iter().collect();
                                    self.ask_sinks(&ctx, &mut cuts, &partitions).await?;
                                }
                                if cuts.written_everywhere(&key, m.offset()) {
                                    ctx.metrics.replay_skipped.add(1);
                                    continue;
                                }
                                let last = received.iter().rev().find(|r| r.topic == key.0 && r.partition == key.1).map(|r| r.offset);
                                if last.is_some_and(|last| cuts.cut_between(&key, last, m.offset())) {
                                    self.emit(&ctx, std::mem::take(&mut received), &group).await?;
                                    deadline = None;
                                }
                            }
                            received.push(Received {
                                topic: m.topic().to_string(),
                                partition: m.partition(),
                                offset: m.offset(),
                                payload: m.payload().map(<[u8]>::to_vec),
                            });
                            if received.len() >= self.cfg.batch_size {
                                self.emit(&ctx, std::mem::take(&mut received), &group).await?;
                                deadline = None;
                            } else if deadline.is_none() {
                                deadline = Some(Instant::now() + self.cfg.batch_wait.0);
                            }
                        }
                        Err(e) => {
                            tributary_sdk::report_error!(ctx.metrics, warn, source = %self.id, error = %e, "Kafka consume error");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            }
        }
        self.emit(&ctx, received, &group).await?;
        group.tracker().stopping();
        // Let downstream drain and flush, then commit what it acknowledged before leaving.
        ctx.close_outputs();
        let drain_until = Instant::now() + Duration::from_secs(25);
        while group.tracker().unacknowledged() > 0 {
            if tokio::time::timeout_at(drain_until, group.wake.notified()).await.is_err() {
                let pending = group.tracker().unacknowledged();
                tracing::warn!(source = %self.id, pending, "batches still unacknowledged at shutdown; they will be consumed again");
                break;
            }
        }
        self.commit_acknowledged(&consumer, &group, CommitMode::Sync)?;
        // The first stage stops on the same shutdown: it copies what it read, then commits.
        if let Some(copying) = copying {
            copying.await.context("the repartitioning task")?.context("repartitioning")?;
        }
        Ok(())
    }
}
