//! Prometheus' own protocols. `prometheus_scrape` source: pulls `/metrics` endpoints (text format
//! and OpenMetrics), a row per sample (see [`scrape`]). `prometheus_remote_write` sink: rows as Prometheus series, POSTed
//! as the remote-write 1.0 spec defines (snappy-compressed protobuf) to VictoriaMetrics, Prometheus
//! (`--web.enable-remote-write-receiver`), Mimir, Thanos or any other receiver. Remote write keeps
//! every sample as written: no temporality to choose, unlike OTLP.

mod exposition;
pub mod scrape;
mod series;
pub mod wire;

use std::collections::BTreeMap;
use std::time::Duration;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use serde::Deserialize;
use tributary_sdk::buffer::RowBuffer;
use tributary_sdk::dead_letter::letters_for_rows;
use tributary_sdk::delivery::SinkDelivery;
use tributary_sdk::retry::WriteError;
use tributary_sdk::{
    error_chain, single_input_schema, BatchConfig, Batching, BuiltSource, ComponentConfig, ConfigError, DeadLetter, Durability, OutputSpec,
    Period, Secret, Sink, SinkContext, SinkPlugin, SourcePlugin, Transient, Written,
};

use series::Layout;

/// Config of a `prometheus_remote_write` sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteWriteConfig {
    /// The full URL: `http://victoriametrics:8428/api/v1/write`, `http://prometheus:9090/api/v1/write`.
    pub endpoint: HttpUrl,
    /// Extra request headers, e.g. `Authorization: "Bearer ${REMOTE_WRITE_TOKEN}"`. Values are
    /// secrets: never logged.
    #[serde(default)]
    pub headers: BTreeMap<String, Secret>,
    /// Event-time column of the rows (default `ts`): each sample's timestamp.
    #[serde(default = "default_time_column")]
    pub time_column: String,
    /// The series made from each row.
    pub metrics: Vec<MetricConfig>,
    /// Labels on every series (`job`, `instance`, `env`…).
    #[serde(default)]
    pub external_labels: BTreeMap<String, String>,
    /// Send at `max_rows` buffered rows (default 2000) or every `max_age` (default 1s).
    #[serde(default)]
    pub batch: BatchConfig,
    /// Per-request timeout (default 10s).
    #[serde(default = "default_timeout")]
    pub timeout: Period,
}

/// One series per row and label set: `name{labels} value`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricConfig {
    /// The metric name (`__name__`), e.g. `badge_events`.
    pub name: String,
    /// The numeric column holding the value. Rows where it is null give no sample.
    pub value: String,
    /// Columns that become labels: a column name, or `{column, name}` to rename. A null or empty
    /// value leaves the label out.
    #[serde(default)]
    pub labels: Vec<LabelConfig>,
}

/// A label taken from a column.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum LabelConfig {
    Column(String),
    Renamed { column: String, name: String },
}

impl LabelConfig {
    fn column(&self) -> &str {
        match self {
            LabelConfig::Column(c) | LabelConfig::Renamed { column: c, .. } => c,
        }
    }
    fn name(&self) -> &str {
        match self {
            LabelConfig::Column(c) => c,
            LabelConfig::Renamed { name, .. } => name,
        }
    }
}

/// An `http://` or `https://` URL.
#[derive(Debug, Clone)]
pub struct HttpUrl(reqwest::Url);

impl<'de> Deserialize<'de> for HttpUrl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        match reqwest::Url::parse(&text) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => Ok(HttpUrl(url)),
            _ => Err(serde::de::Error::custom(format!("`{}` is not an http(s) URL", tributary_sdk::redact::url_for_display(&text)))),
        }
    }
}

fn default_time_column() -> String {
    "ts".into()
}
/// As the `otlp` sink's: a row makes a sample per metric, and a request stays well under
/// receivers' body limits (VictoriaMetrics' default is 32 MiB, Prometheus' remote-write queue sends 2000 samples).
const DEFAULT_BATCHING: Batching = Batching { max_rows: 2000, max_age: Duration::from_secs(1) };
fn default_timeout() -> Period {
    Period(Duration::from_secs(10))
}

pub struct ScrapeSourcePlugin;

impl SourcePlugin for ScrapeSourcePlugin {
    fn type_name(&self) -> &'static str {
        "prometheus_scrape"
    }
    fn delivery(&self) -> &'static [tributary_sdk::delivery::SourceDelivery] {
        &[tributary_sdk::delivery::MEASURED]
    }
    fn build(&self, config: &ComponentConfig) -> Result<BuiltSource, ConfigError> {
        let cfg: scrape::ScrapeConfig = config.decode()?;
        let source = scrape::ScrapeSource::new(&config.id, cfg)?;
        Ok(BuiltSource { outputs: vec![OutputSpec::main(scrape::schema())], source: Box::new(source) })
    }
}

pub struct RemoteWriteSinkPlugin;

impl SinkPlugin for RemoteWriteSinkPlugin {
    fn type_name(&self) -> &'static str {
        "prometheus_remote_write"
    }
    fn delivery(&self) -> &'static [SinkDelivery] {
        &[SinkDelivery {
            variant: "",
            durable_when: "the receiver answered 2xx",
            duplicates: "a request retried after a lost answer is sent again; the same samples (same series and timestamps) replace each other in Prometheus and are deduplicated by VictoriaMetrics' `-dedup.minScrapeInterval`",
        }]
    }
    fn build(&self, config: &ComponentConfig, inputs: &[(String, SchemaRef)]) -> Result<Box<dyn Sink>, ConfigError> {
        let cfg: RemoteWriteConfig = config.decode()?;
        if cfg.metrics.is_empty() {
            return Err(ConfigError::at("metrics", "at least one metric is required"));
        }
        let schema = single_input_schema(inputs)?;
        let layout = Layout::new(&cfg, &schema)?;
        let client = Client::new(&cfg).map_err(|e| ConfigError::at("headers", e))?;
        let batching = cfg.batch.resolve(DEFAULT_BATCHING)?;
        let buffer = RowBuffer::new(schema, batching.max_rows);
        Ok(Box::new(RemoteWriteSink { layout, client, buffer, batching, unsent: None }))
    }
}

/// The HTTP side: one client with the spec's headers and the configured ones.
struct Client {
    http: reqwest::Client,
    headers: reqwest::header::HeaderMap,
    endpoint: reqwest::Url,
}

impl Client {
    fn new(cfg: &RemoteWriteConfig) -> Result<Client, String> {
        use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_ENCODING, CONTENT_TYPE};
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/x-protobuf"));
        headers.insert(CONTENT_ENCODING, HeaderValue::from_static("snappy"));
        headers.insert("x-prometheus-remote-write-version", HeaderValue::from_static("0.1.0"));
        for (name, value) in &cfg.headers {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("`{name}` is not a valid header name"))?;
            let mut value = HeaderValue::from_str(value.expose()).map_err(|_| format!("`{name}` has a value that is not valid in HTTP"))?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        let http = reqwest::Client::builder()
            .timeout(cfg.timeout.0)
            .user_agent(concat!("tributary/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(Client { http, headers, endpoint: cfg.endpoint.0.clone() })
    }

    fn endpoint(&self) -> String {
        tributary_sdk::redact::url_for_display(self.endpoint.as_str())
    }

    /// The spec's rules: 2xx is written; 5xx and 429 may pass (retried); any other answer is a
    /// refusal of the whole request.
    async fn send(&self, body: Vec<u8>) -> Result<(), WriteError> {
        let answer = self.http.post(self.endpoint.clone()).headers(self.headers.clone()).body(body).send().await;
        let answer = answer.map_err(|e| WriteError::Transient(error_chain(&e)))?;
        let status = answer.status();
        if status.is_success() {
            return Ok(());
        }
        let text = answer.text().await.unwrap_or_default();
        let message = format!("HTTP {status}: {}", text.trim().chars().take(500).collect::<String>());
        Err(if status.is_server_error() || status.as_u16() == 429 { WriteError::Transient(message) } else { WriteError::Refused(message) })
    }
}

/// A request built from buffered rows and not yet accepted, kept as built for the retry.
struct Unsent {
    rows: RecordBatch,
    body: Vec<u8>,
    /// Rows of `rows` that could not become samples.
    rejected: Vec<DeadLetter>,
}

pub struct RemoteWriteSink {
    layout: Layout,
    client: Client,
    buffer: RowBuffer,
    batching: Batching,
    unsent: Option<Unsent>,
}

impl RemoteWriteSink {
    /// Sends everything buffered. A refused request dead-letters its rows with the receiver's
    /// answer; a transient failure keeps the request for the engine's retry.
    async fn send_buffer(&mut self, ctx: &SinkContext) -> Result<Vec<DeadLetter>, Transient> {
        let unsent = match self.unsent.take() {
            Some(unsent) => unsent,
            None => {
                let Some(rows) = self.buffer.take()? else {
                    return Ok(Vec::new());
                };
                let (request, rejected) = self.layout.request(&rows)?;
                match request {
                    None => return Ok(rejected),
                    Some(request) => Unsent { rows, body: request.body(), rejected },
                }
            }
        };
        match self.client.send(unsent.body.clone()).await {
            Ok(()) => {
                ctx.metrics.bytes_out.add(unsent.body.len() as u64);
                Ok(unsent.rejected)
            }
            Err(WriteError::Refused(msg)) => {
                Ok(letters_for_rows(&unsent.rows, &format!("{} refused the write: {msg}", self.client.endpoint())))
            }
            Err(WriteError::Transient(msg)) => {
                let error = anyhow::anyhow!("writing to {}: {msg}", self.client.endpoint());
                self.unsent = Some(unsent);
                Err(Transient::new(error))
            }
        }
    }
}

#[async_trait::async_trait]
impl Sink for RemoteWriteSink {
    async fn write(&mut self, batch: RecordBatch, _ctx: &SinkContext) -> Result<Written, Transient> {
        let full = self.buffer.push(batch);
        Ok(Written::with(if full { Durability::BufferFull } else { Durability::Buffered }, Vec::new()))
    }

    async fn flush(&mut self, ctx: &SinkContext) -> Result<Vec<DeadLetter>, Transient> {
        // A request left from a failed flush goes first; then whatever was buffered meanwhile.
        let mut rejected = self.send_buffer(ctx).await?;
        if !self.buffer.is_empty() {
            rejected.extend(self.send_buffer(ctx).await?);
        }
        Ok(rejected)
    }

    fn flush_interval(&self) -> Option<Duration> {
        Some(self.batching.max_age)
    }

    fn take_buffered(&mut self) -> Vec<RecordBatch> {
        let mut rows: Vec<RecordBatch> = self.unsent.take().map(|u| u.rows).into_iter().collect();
        rows.extend(self.buffer.take().ok().flatten());
        rows
    }
}

#[cfg(test)]
mod scrape_tests;
#[cfg(test)]
mod tests;
