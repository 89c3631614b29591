//! `otlp` sink: rows as OpenTelemetry metrics, pushed over OTLP (HTTP/protobuf or gRPC) to any
//! collector or straight to VictoriaMetrics (`/opentelemetry/api/v1/push`).
//!
//! Each configured metric reads one value column; every row gives one data point stamped with the
//! row's own event time (gauge and counter), or feeds a histogram point per attribute set and
//! export (histogram). Rows are buffered and exported together; transport errors, timeouts and the
//! retryable answers of the OTLP spec (HTTP 429/502/503/504, gRPC UNAVAILABLE & co.) are retried
//! with backoff, anything else dead-letters the rows with the receiver's message.
//!
//! Why not `opentelemetry-otlp`'s exporter: it exports what the SDK aggregated, stamped with the
//! SDK's clock, and its data points cannot be built by hand. A pipeline's rows carry their own
//! event times (a window's end, a probe's start), so we build the OTLP request ourselves from the
//! same project's wire types (`opentelemetry-proto`) and send it with its gRPC client or reqwest.

mod export;
mod points;
mod receive;

pub use receive::{OtlpSourceConfig, OtlpSourcePlugin};

use std::collections::BTreeMap;
use std::time::Duration;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use serde::Deserialize;
use tributary_sdk::buffer::RowBuffer;
use tributary_sdk::dead_letter::letters_for_rows;
use tributary_sdk::retry::WriteError;
use tributary_sdk::{
    single_input_schema, BatchConfig, Batching, ComponentConfig, ConfigError, DeadLetter, Durability, Period, Secret, Sink, SinkContext,
    SinkPlugin, Transient, Written,
};

use export::Exporter;
pub use export::Protocol;
use points::{Layout, SeriesState};

/// Config of an `otlp` sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpSinkConfig {
    /// The full URL requests go to: `http://collector:4318/v1/metrics` (HTTP),
    /// `http://127.0.0.1:8428/opentelemetry/api/v1/push` (VictoriaMetrics), `http://collector:4317`
    /// (gRPC). `https://` uses TLS with the web PKI roots.
    pub endpoint: String,
    /// `http` (protobuf over HTTP POST, default) or `grpc`.
    #[serde(default)]
    pub protocol: Protocol,
    /// Extra request headers (gRPC metadata), e.g. `Authorization: "Bearer ${OTLP_TOKEN}"`.
    /// Values are secrets: never logged.
    #[serde(default)]
    pub headers: BTreeMap<String, Secret>,
    /// Event-time column of the rows (default `ts`).
    #[serde(default = "default_time_column")]
    pub time_column: String,
    /// Resource attributes (`service.name`, `deployment.environment`, …). `service.name`
    /// defaults to `tributary`.
    #[serde(default)]
    pub resource: BTreeMap<String, String>,
    /// Instrumentation scope name (default `tributary`).
    #[serde(default = "default_scope")]
    pub scope: String,
    /// The metrics made from each row.
    pub metrics: Vec<MetricConfig>,
    /// Export at `max_rows` buffered rows (default 2000) or every `max_age` (default 1s).
    #[serde(default)]
    pub batch: BatchConfig,
    /// Per-request timeout (default 10s).
    #[serde(default = "default_timeout")]
    pub timeout: Period,
    /// The temporality of what the sink aggregates itself: histograms, and counters whose column
    /// holds increases (`temporality: delta`). `cumulative` (default, as the OpenTelemetry SDK):
    /// running totals per series since the sink first saw it, which every receiver takes
    /// (VictoriaMetrics up to v1.131 answers 200 to delta sums and histograms and drops them).
    /// `delta`: each export's own increase, for receivers that prefer it.
    #[serde(default)]
    pub aggregation_temporality: Temporality,
}

/// One metric made from each row.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricConfig {
    /// Metric name, e.g. `badge.events` (VictoriaMetrics v1.93+ keeps `a.b.c` as is; older versions and
    /// Prometheus-style receivers turn the dots into underscores).
    pub name: String,
    /// `gauge`, `counter` (a monotonic sum) or `histogram`.
    pub kind: MetricKind,
    /// The numeric column holding the value. Rows where it is null give no point.
    pub value: String,
    /// Columns that become data-point attributes: a column name, or `{column, name}` to rename.
    /// Null values are left out.
    #[serde(default)]
    pub attributes: Vec<AttributeConfig>,
    #[serde(default)]
    pub unit: String,
    #[serde(default)]
    pub description: String,
    /// Counters: what the column holds: `cumulative` (default: a running total, sent as is) or
    /// `delta` (the increase since the series' previous row; sent as the sink's
    /// `aggregation_temporality` says).
    #[serde(default)]
    pub temporality: Temporality,
    /// Histograms: upper bucket bounds, ascending (default: OpenTelemetry's default bounds).
    #[serde(default)]
    pub buckets: Option<Vec<f64>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricKind {
    Gauge,
    Counter,
    Histogram,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Temporality {
    #[default]
    Cumulative,
    Delta,
}

/// A data-point attribute taken from a column.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum AttributeConfig {
    Column(String),
    Renamed { column: String, name: String },
}

impl AttributeConfig {
    fn column(&self) -> &str {
        match self {
            AttributeConfig::Column(c) | AttributeConfig::Renamed { column: c, .. } => c,
        }
    }
    fn name(&self) -> &str {
        match self {
            AttributeConfig::Column(c) => c,
            AttributeConfig::Renamed { name, .. } => name,
        }
    }
}

/// OpenTelemetry's default explicit histogram bounds.
const DEFAULT_BUCKETS: [f64; 15] = [0.0, 5.0, 10.0, 25.0, 50.0, 75.0, 100.0, 250.0, 500.0, 750.0, 1000.0, 2500.0, 5000.0, 7500.0, 10000.0];

fn default_time_column() -> String {
    "ts".into()
}
fn default_scope() -> String {
    "tributary".into()
}
/// Smaller than the other sinks' 5000: a row makes one point per metric, and a request stays well
/// under receivers' message limits (gRPC's default is 4 MiB).
const DEFAULT_BATCHING: Batching = Batching { max_rows: 2000, max_age: Duration::from_secs(1) };
fn default_timeout() -> Period {
    Period(Duration::from_secs(10))
}

/// OTLP receivers that store cumulative points only, by the path of their endpoint.
const CUMULATIVE_ONLY: [(&str, &str); 2] = [
    ("/opentelemetry/api/v1/push", "VictoriaMetrics (up to v1.131; its `vm_protoparser_rows_dropped_total` counts them)"),
    ("/api/v1/otlp/v1/metrics", "Prometheus (unless its experimental delta-to-cumulative feature is on)"),
];

impl OtlpSinkConfig {
    /// The metrics sent as delta points: histograms and counters of increases, when the sink sends
    /// what it aggregates as deltas.
    fn delta_metrics(&self) -> Vec<&str> {
        if self.aggregation_temporality != Temporality::Delta {
            return Vec::new();
        }
        let delta =
            |m: &&MetricConfig| m.kind == MetricKind::Histogram || (m.kind == MetricKind::Counter && m.temporality == Temporality::Delta);
        self.metrics.iter().filter(delta).map(|m| m.name.as_str()).collect()
    }

    /// The known cumulative-only receiver the endpoint names, when delta points go to it.
    fn delta_dropped_by(&self) -> Option<&'static str> {
        let path = self.endpoint.split_once("://").map_or("", |(_, rest)| rest.find('/').map_or("", |i| &rest[i..]));
        let path = path.split(['?', '#']).next().unwrap_or_default().trim_end_matches('/');
        let receiver = CUMULATIVE_ONLY.iter().find(|(p, _)| path == *p).map(|(_, r)| *r)?;
        (!self.delta_metrics().is_empty()).then_some(receiver)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if !(self.endpoint.starts_with("http://") || self.endpoint.starts_with("https://")) {
            return Err(ConfigError::at("endpoint", format!("`{}` is not an http(s) URL", self.endpoint)));
        }
        if self.metrics.is_empty() {
            return Err(ConfigError::at("metrics", "at least one metric is required"));
        }
        for (i, m) in self.metrics.iter().enumerate() {
            let at = |field: &str| format!("metrics[{i}].{field}");
            if m.name.is_empty() {
                return Err(ConfigError::at(&at("name"), "a metric needs a name"));
            }
            if let Some(b) = &m.buckets {
                if m.kind != MetricKind::Histogram {
                    return Err(ConfigError::at(&at("buckets"), "only histograms have buckets"));
                }
                if b.iter().any(|v| !v.is_finite()) || b.windows(2).any(|w| w[0] >= w[1]) {
                    return Err(ConfigError::at(&at("buckets"), "bucket bounds must be finite and strictly ascending"));
                }
            }
        }
        for name in self.headers.keys() {
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
                return Err(ConfigError::at("headers", format!("`{name}` is not a valid header name")));
            }
        }
        Ok(())
    }
}

pub struct OtlpSinkPlugin;

impl SinkPlugin for OtlpSinkPlugin {
    fn type_name(&self) -> &'static str {
        "otlp"
    }
    fn delivery(&self) -> &'static [tributary_sdk::delivery::SinkDelivery] {
        &[tributary_sdk::delivery::RECEIVER_2XX]
    }
    fn build(&self, config: &ComponentConfig, inputs: &[(String, SchemaRef)]) -> Result<Box<dyn Sink>, ConfigError> {
        let cfg: OtlpSinkConfig = config.decode()?;
        cfg.validate()?;
        let schema = single_input_schema(inputs)?;
        let layout = Layout::new(&cfg, &schema)?;
        let exporter = Exporter::new(&cfg).map_err(|e| ConfigError::at("endpoint", e))?;
        let batching = cfg.batch.resolve(DEFAULT_BATCHING)?;
        let buffer = RowBuffer::new(schema, batching.max_rows);
        Ok(Box::new(OtlpSink { cfg, layout, series: SeriesState::default(), exporter, buffer, batching, unsent: None }))
    }
}

/// A request built from buffered rows and not yet accepted by the receiver. Kept as built for the
/// retry: building advanced the series state (start times, running totals), so it is sent again
/// as is.
struct Unsent {
    rows: RecordBatch,
    request: ExportMetricsServiceRequest,
    /// Rows of `rows` that could not become points.
    rejected: Vec<DeadLetter>,
}

pub struct OtlpSink {
    cfg: OtlpSinkConfig,
    layout: Layout,
    series: SeriesState,
    exporter: Exporter,
    buffer: RowBuffer,
    batching: Batching,
    unsent: Option<Unsent>,
}

impl OtlpSink {
    /// Exports everything buffered. Rows that cannot be points, and a request the receiver refuses
    /// (4xx, or a gRPC status that is not retryable), come back as dead letters; transport errors,
    /// timeouts and retryable answers keep the request for the engine's retry.
    async fn export_buffer(&mut self, ctx: &SinkContext) -> Result<Vec<DeadLetter>, Transient> {
        if self.unsent.is_none() {
            let Some(rows) = self.buffer.take()? else {
                return Ok(Vec::new());
            };
            let (request, rejected) = self.layout.request(&rows, &mut self.series)?;
            match request {
                None => return Ok(rejected),
                Some(request) => self.unsent = Some(Unsent { rows, request, rejected }),
            }
        }
        let unsent = self.unsent.as_ref().expect("set above");
        let outcome = self.exporter.export(&unsent.request, &ctx.metrics).await;
        match outcome {
            Ok(()) => {
                let sent = self.unsent.take().expect("present");
                ctx.metrics.bytes_out.add(prost::Message::encoded_len(&sent.request) as u64);
                Ok(sent.rejected)
            }
            Err(WriteError::Refused(msg)) => {
                // Refused as a whole: every row of the request is dead-lettered with the answer.
                let sent = self.unsent.take().expect("present");
                let endpoint = tributary_sdk::redact::url_for_display(&self.cfg.endpoint);
                Ok(letters_for_rows(&sent.rows, &format!("{endpoint} refused the export: {msg}")))
            }
            Err(WriteError::Transient(msg)) => {
                Err(Transient::new(anyhow::anyhow!("exporting to {}: {msg}", tributary_sdk::redact::url_for_display(&self.cfg.endpoint))))
            }
        }
    }
}

#[async_trait::async_trait]
impl Sink for OtlpSink {
    async fn write(&mut self, batch: RecordBatch, _ctx: &SinkContext) -> Result<Written, Transient> {
        let full = self.buffer.push(batch);
        Ok(Written::with(if full { Durability::BufferFull } else { Durability::Buffered }, Vec::new()))
    }

    async fn flush(&mut self, ctx: &SinkContext) -> Result<Vec<DeadLetter>, Transient> {
        // A request left from a failed flush goes first; then whatever was buffered meanwhile.
        let mut rejected = self.export_buffer(ctx).await?;
        if !self.buffer.is_empty() {
            rejected.extend(self.export_buffer(ctx).await?);
        }
        Ok(rejected)
    }

    fn flush_interval(&self) -> Option<Duration> {
        Some(self.batching.max_age)
    }

    fn warnings(&self) -> Vec<String> {
        self.cfg.delta_dropped_by().map(|receiver| format!(
            "aggregation_temporality: delta sends delta sums and histograms ({}), which {receiver} answers with success and drops; use `cumulative`",
            self.cfg.delta_metrics().join(", ")
        )).into_iter().collect()
    }

    fn take_buffered(&mut self) -> Vec<RecordBatch> {
        let mut rows: Vec<RecordBatch> = self.unsent.take().map(|u| u.rows).into_iter().collect();
        rows.extend(self.buffer.take().ok().flatten());
        rows
    }
}

#[cfg(test)]
mod tests;
