//! `otlp` source: an OpenTelemetry receiver (OTLP/gRPC and OTLP/HTTP, protobuf and JSON) whose
//! metrics, logs and spans become rows on `<id>.metrics`, `<id>.logs` and `<id>.spans`.
//!
//! The OTLP answer is the ack: a client hears success only once every sink wrote the rows (or,
//! with `buffer: {type: disk}`, once they are fsynced), and a retryable UNAVAILABLE / 503 when the
//! pipeline stays full or a write failed. Records that cannot be rows (an exponential histogram,
//! a point without a value, a span without ids) are counted in the answer's partial success, with
//! the reason, while the rest of the request is accepted.

mod attributes;
mod grpc;
mod http;
mod logs;
mod metrics;
mod rows;
mod spans;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use datafusion::arrow::record_batch::RecordBatch;
use opentelemetry_proto::tonic::collector::logs::v1::{ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use serde::Deserialize;
use tributary_sdk::config::ByteSize;
use tributary_sdk::delivery::SourceDelivery;
use tributary_sdk::http::{default_body_timeout, default_header_timeout, default_stop_timeout};
use tributary_sdk::merge::MergedOutput;
use tributary_sdk::{
    Ack, AckStatus, BuiltSource, ComponentConfig, ComponentMetrics, ConfigError, HumanDuration, Output, OutputSpec, Period, Secret, Source,
    SourceContext, SourcePlugin, TrySendError,
};

use rows::{Budget, Refusal, Rejected};

/// Config of an `otlp` source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpSourceConfig {
    /// Where OTLP/gRPC is served, e.g. `0.0.0.0:4317`.
    pub grpc_address: Option<SocketAddr>,
    /// Where OTLP/HTTP is served (`POST /v1/metrics`, `/v1/logs`, `/v1/traces`), e.g. `0.0.0.0:4318`.
    pub http_address: Option<SocketAddr>,
    /// Require `Authorization: Bearer <token>` on both (use `${ENV}`).
    pub token: Option<Secret>,
    /// Largest accepted request (default 4MiB, as the Collector's gRPC receiver), after gzip is
    /// undone; larger is HTTP 413, gRPC OUT_OF_RANGE.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: ByteSize,
    /// How long a request waits for room in the pipeline before 503 / UNAVAILABLE (default 1s).
    #[serde(default = "default_accept_timeout")]
    pub accept_timeout: HumanDuration,
    /// How long an HTTP client may take to send its headers (default 10s).
    #[serde(default = "default_header_timeout")]
    pub header_timeout: Period,
    /// How long an HTTP client may take to send its body (default 30s); then 408.
    #[serde(default = "default_body_timeout")]
    pub body_timeout: Period,
    /// On stop, how long requests in flight may take to finish (default 5s).
    #[serde(default = "default_stop_timeout")]
    pub stop_timeout: Period,
}

fn default_max_body() -> ByteSize {
    ByteSize(4 << 20)
}
fn default_accept_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(1))
}

/// The outputs, by OTLP signal.
pub const METRICS: &str = "metrics";
pub const LOGS: &str = "logs";
pub const SPANS: &str = "spans";

const OTLP_RECEIVER: SourceDelivery = SourceDelivery {
    variant: "",
    guarantee: "at-least-once: OK means written by every sink (or fsynced with `buffer: {type: disk}`)",
    how: "the OTLP success answer (HTTP 200, gRPC OK) waits for the rows' ack; UNAVAILABLE / 503 + `Retry-After` when the pipeline stays full or a write failed, which exporters retry",
    duplicates: "an exporter that retries after its timeout or a lost answer",
    crash_loses: "nothing answered OK",
};

pub struct OtlpSourcePlugin;

impl SourcePlugin for OtlpSourcePlugin {
    fn type_name(&self) -> &'static str {
        "otlp"
    }
    fn delivery(&self) -> &'static [SourceDelivery] {
        &[OTLP_RECEIVER]
    }
    fn build(&self, config: &ComponentConfig) -> Result<BuiltSource, ConfigError> {
        let cfg: OtlpSourceConfig = config.decode()?;
        let listen = match (cfg.grpc_address, cfg.http_address) {
            (None, None) => {
                return Err(ConfigError::at("", "set `grpc_address`, `http_address` or both: the addresses to receive OTLP on"))
            }
            (Some(g), Some(h)) if g == h => {
                return Err(ConfigError::at("http_address", format!("is `{h}`, the same as `grpc_address`; serve them on two ports")))
            }
            (grpc, http) => Listen { grpc, http },
        };
        let outputs = vec![
            OutputSpec::named(METRICS, metrics::schema()),
            OutputSpec::named(LOGS, logs::schema()),
            OutputSpec::named(SPANS, spans::schema()),
        ];
        Ok(BuiltSource { outputs, source: Box::new(OtlpSource { cfg, listen }) })
    }
}

/// At least one of the two.
struct Listen {
    grpc: Option<SocketAddr>,
    http: Option<SocketAddr>,
}

pub struct OtlpSource {
    cfg: OtlpSourceConfig,
    listen: Listen,
}

#[async_trait::async_trait]
impl Source for OtlpSource {
    async fn run(self: Box<Self>, ctx: SourceContext) -> anyhow::Result<()> {
        let outputs = [ctx.output(METRICS).clone(), ctx.output(LOGS).clone(), ctx.output(SPANS).clone()];
        let started = outputs.clone().map(|o| MergedOutput::start(o, MERGED_MAX_ROWS));
        let merged = started.each_ref().map(|(m, _)| m.clone());
        let merging = started.map(|(_, task)| task);
        let receiver = Arc::new(Receiver {
            id: ctx.id.clone(),
            outputs,
            merged,
            accept_timeout: self.cfg.accept_timeout.0,
            max_body: self.cfg.max_body_bytes.0 as usize,
            token: self.cfg.token.clone(),
            metrics: ctx.metrics.clone(),
        });
        let grpc = async {
            match self.listen.grpc {
                Some(address) => grpc::serve(address, receiver.clone(), &ctx, self.cfg.stop_timeout.0).await,
                None => Ok(()),
            }
        };
        let http = async {
            match self.listen.http {
                Some(address) => http::serve(address, receiver.clone(), &ctx, &self.cfg).await,
                None => Ok(()),
            }
        };
        let served = tokio::try_join!(grpc, http);
        // The servers answered their last request; the merging tasks end once it is handed on.
        drop(receiver);
        let until = tokio::time::Instant::now() + self.cfg.stop_timeout.0;
        for task in merging {
            let _ = tokio::time::timeout_at(until, task).await;
        }
        served?;
        Ok(())
    }
}

/// Rows a merged batch holds at most (see `tributary_sdk::merge`).
const MERGED_MAX_ROWS: usize = 65_536;

/// One OTLP export request type: its rows and its answer.
pub trait Signal: prost::Message + Default + serde::de::DeserializeOwned + Send + 'static {
    type Response: prost::Message + serde::Serialize + Send + 'static;
    /// Index into [`Receiver::outputs`].
    const OUTPUT: usize;
    /// What its records are called in messages.
    const RECORDS: &'static str;
    fn rows(&self, received_us: i64, budget: &mut Budget) -> Result<(RecordBatch, Rejected), Refusal>;
    /// How many records the request holds.
    fn records(&self) -> u64;
    fn response(rejected: u64, message: String) -> Self::Response;
}

impl Signal for ExportMetricsServiceRequest {
    type Response = ExportMetricsServiceResponse;
    const OUTPUT: usize = 0;
    const RECORDS: &'static str = "data points";
    fn rows(&self, received_us: i64, budget: &mut Budget) -> Result<(RecordBatch, Rejected), Refusal> {
        metrics::rows(self, received_us, budget)
    }
    fn records(&self) -> u64 {
        let points = |data: &Option<Data>| match data {
            None => 0,
            Some(Data::Gauge(g)) => g.data_points.len(),
            Some(Data::Sum(s)) => s.data_points.len(),
            Some(Data::Histogram(h)) => h.data_points.len(),
            Some(Data::ExponentialHistogram(h)) => h.data_points.len(),
            Some(Data::Summary(s)) => s.data_points.len(),
        };
        let metrics = self.resource_metrics.iter().flat_map(|r| &r.scope_metrics).flat_map(|s| &s.metrics);
        metrics.map(|m| points(&m.data) as u64).sum()
    }
    fn response(rejected: u64, message: String) -> Self::Response {
        let partial = ExportMetricsPartialSuccess { rejected_data_points: rejected as i64, error_message: message };
        ExportMetricsServiceResponse { partial_success: (rejected > 0).then_some(partial) }
    }
}

impl Signal for ExportLogsServiceRequest {
    type Response = ExportLogsServiceResponse;
    const OUTPUT: usize = 1;
    const RECORDS: &'static str = "log records";
    fn rows(&self, received_us: i64, budget: &mut Budget) -> Result<(RecordBatch, Rejected), Refusal> {
        Ok((logs::rows(self, received_us, budget)?, Rejected::default()))
    }
    fn records(&self) -> u64 {
        self.resource_logs.iter().flat_map(|r| &r.scope_logs).map(|s| s.log_records.len() as u64).sum()
    }
    fn response(rejected: u64, message: String) -> Self::Response {
        let partial = ExportLogsPartialSuccess { rejected_log_records: rejected as i64, error_message: message };
        ExportLogsServiceResponse { partial_success: (rejected > 0).then_some(partial) }
    }
}

impl Signal for ExportTraceServiceRequest {
    type Response = ExportTraceServiceResponse;
    const OUTPUT: usize = 2;
    const RECORDS: &'static str = "spans";
    fn rows(&self, received_us: i64, budget: &mut Budget) -> Result<(RecordBatch, Rejected), Refusal> {
        spans::rows(self, received_us, budget)
    }
    fn records(&self) -> u64 {
        self.resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len() as u64).sum()
    }
    fn response(rejected: u64, message: String) -> Self::Response {
        let partial = ExportTracePartialSuccess { rejected_spans: rejected as i64, error_message: message };
        ExportTraceServiceResponse { partial_success: (rejected > 0).then_some(partial) }
    }
}

/// A request made into rows (on the blocking pool: this is the CPU part). `body` is its size in
/// bytes, which sets the [`Budget`].
pub fn convert<S: Signal>(request: &S, body: usize) -> Result<(RecordBatch, Rejected), Refusal> {
    let received_us = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64);
    request.rows(received_us, &mut Budget::for_body(body))
}

/// What the client hears.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// Success, with what was refused record by record (OTLP's partial success).
    Accepted { rejected: u64, message: String },
    /// Retryable: the pipeline stayed full, is stopping, or a write failed.
    Busy(String),
    /// Not retryable: the request itself is wrong.
    Refused(Refusal),
}

/// What both servers share: the outputs and the limits.
pub struct Receiver {
    id: String,
    outputs: [Output; 3],
    /// The same outputs, with concurrent requests' rows merged into one batch.
    merged: [MergedOutput; 3],
    accept_timeout: Duration,
    max_body: usize,
    token: Option<Secret>,
    metrics: Arc<ComponentMetrics>,
}

impl Receiver {
    /// Whether an `Authorization` header value carries the token (always, without one).
    fn authorized(&self, authorization: Option<&str>) -> bool {
        self.token.as_ref().is_none_or(|token| token.matches_bearer(authorization))
    }

    /// Hand converted rows to the pipeline and wait for their ack.
    pub async fn take<S: Signal>(&self, records: u64, converted: Result<(RecordBatch, Rejected), Refusal>) -> Answer {
        let (rows, rejected) = match converted {
            Ok(converted) => converted,
            Err(refusal) => {
                tributary_sdk::report_error!(self.metrics, debug, source = %self.id, ?refusal, "OTLP request refused");
                return Answer::Refused(refusal);
            }
        };
        if rejected.count > 0 {
            tributary_sdk::report_error!(self.metrics, debug, count = rejected.count, source = %self.id, reason = %rejected.message(), "OTLP records rejected");
        }
        let output = &self.outputs[S::OUTPUT];
        if output.is_unconnected() {
            // The client learns its records went nowhere instead of hearing a plain success (the
            // Collector does not serve a signal no pipeline takes; one port serves all three here).
            self.metrics.dropped.add(rows.num_rows() as u64);
            let output = [METRICS, LOGS, SPANS][S::OUTPUT];
            let message = format!("nothing reads `{}.{output}`: its {records} {} were dropped", self.id, S::RECORDS);
            return Answer::Accepted { rejected: records, message };
        }
        let n = rows.num_rows();
        if n == 0 {
            return Answer::Accepted { rejected: rejected.count, message: rejected.message() };
        }
        let (ack, written) = Ack::channel();
        match self.merged[S::OUTPUT].send_within(rows, ack, self.accept_timeout).await {
            Err(TrySendError::Full) => return Answer::Busy("the pipeline is busy (backpressure); retry later".into()),
            Err(TrySendError::Closed) => return Answer::Busy("the pipeline is stopping; retry later".into()),
            Ok(()) => self.metrics.rows_in.add(n as u64),
        }
        match written.await {
            Ok(AckStatus::Delivered) => Answer::Accepted { rejected: rejected.count, message: rejected.message() },
            Ok(AckStatus::Failed) | Err(_) => Answer::Busy("the rows were not written (a sink failed); retry later".into()),
        }
    }
}
