//! `prometheus_scrape` source: pulls `/metrics` endpoints on the sdk's scheduler (the one the
//! site probes use), each sample a row with its name, value and labels, plus an `up` row per
//! scrape with its duration and error, as Prometheus records it.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{ArrayRef, Float64Array, StringArray, TimestampMicrosecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use serde::Deserialize;
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;
use tributary_sdk::config::{event_time_type, ByteSize};
use tributary_sdk::schedule::{every, offset_for, Slot};
use tributary_sdk::{error_chain, Batch, CancellationToken, ConfigError, Period, Source, SourceContext};

use crate::exposition::{self, Format};
use crate::HttpUrl;

/// Config of a `prometheus_scrape` source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScrapeConfig {
    /// The endpoints to scrape: `http://node-exporter:9100/metrics`.
    #[serde(default)]
    pub targets: Vec<HttpUrl>,
    /// A YAML list of more endpoints, read again when it changes (checked every 5 s).
    pub targets_file: Option<PathBuf>,
    /// How often each target is scraped (default 60s, as Prometheus).
    #[serde(default = "default_interval")]
    pub interval: Period,
    /// Per scrape, body included (default 10s); at most the interval.
    #[serde(default = "default_timeout")]
    pub timeout: Period,
    /// The `job` of every row (default: the source's id).
    pub job: Option<String>,
    /// A scraped `job` or `instance` label that collides with the target's: `false` (default)
    /// keeps the target's and stores the scraped one as `exported_job` / `exported_instance`;
    /// `true` lets the scraped one win.
    #[serde(default)]
    pub honor_labels: bool,
    /// Spread the targets' first scrapes over the interval, each at a slot fixed by its URL.
    #[serde(default = "yes")]
    pub start_jitter: bool,
    /// Scrapes in flight at once, over all targets.
    #[serde(default = "default_concurrency")]
    pub max_concurrency: usize,
    /// A body larger than this fails the scrape.
    #[serde(default = "default_body_limit")]
    pub body_limit: ByteSize,
}

fn default_interval() -> Period {
    Period(Duration::from_secs(60))
}
fn default_timeout() -> Period {
    Period(Duration::from_secs(10))
}
fn yes() -> bool {
    true
}
fn default_concurrency() -> usize {
    64
}
fn default_body_limit() -> ByteSize {
    ByteSize(16 << 20)
}

/// How often `targets_file` is looked at.
const TARGETS_FILE_CHECK: Duration = Duration::from_secs(5);
/// Prometheus' own Accept header: OpenMetrics first, the text format as the fallback.
const ACCEPT: &str = "application/openmetrics-text;version=1.0.0;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("ts", event_time_type(), false),
        Field::new("job", DataType::Utf8, false),
        Field::new("instance", DataType::Utf8, false),
        Field::new("name", DataType::Utf8, false),
        Field::new("type", DataType::Utf8, true),
        Field::new("value", DataType::Float64, false),
        Field::new("labels", DataType::Utf8, false),
        Field::new("duration_ms", DataType::Float64, true),
        Field::new("error", DataType::Utf8, true),
    ]))
}

pub struct ScrapeSource {
    job: String,
    targets: Vec<HttpUrl>,
    targets_file: Option<PathBuf>,
    interval: Duration,
    start_jitter: bool,
    max_concurrency: usize,
    scraper: Arc<Scraper>,
}

impl ScrapeSource {
    pub fn new(id: &str, cfg: ScrapeConfig) -> Result<ScrapeSource, ConfigError> {
        if cfg.targets.is_empty() && cfg.targets_file.is_none() {
            return Err(ConfigError::at("targets", "give at least one target, or `targets_file`"));
        }
        if cfg.interval.0.is_zero() {
            return Err(ConfigError::at("interval", "must be more than 0"));
        }
        if cfg.timeout.0.is_zero() || cfg.timeout.0 > cfg.interval.0 {
            return Err(ConfigError::at(
                "timeout",
                format!("({:?}) must be more than 0 and at most the interval ({:?})", cfg.timeout.0, cfg.interval.0),
            ));
        }
        if cfg.max_concurrency == 0 {
            return Err(ConfigError::at("max_concurrency", "must be at least 1"));
        }
        let http = reqwest::Client::builder()
            .timeout(cfg.timeout.0)
            .user_agent(concat!("tributary/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ConfigError::at("timeout", format!("HTTP client: {e}")))?;
        let scraper = Scraper { http, timeout: cfg.timeout.0, body_limit: cfg.body_limit.0, honor_labels: cfg.honor_labels };
        Ok(ScrapeSource {
            job: cfg.job.unwrap_or_else(|| id.to_string()),
            targets: cfg.targets,
            targets_file: cfg.targets_file,
            interval: cfg.interval.0,
            start_jitter: cfg.start_jitter,
            max_concurrency: cfg.max_concurrency,
            scraper: Arc::new(scraper),
        })
    }

    /// The configured targets and those of `targets_file` (the last good read when it cannot be
    /// read now), by URL.
    fn wanted(&self, from_file: &[HttpUrl]) -> BTreeMap<String, reqwest::Url> {
        self.targets.iter().chain(from_file).map(|u| (u.0.to_string(), u.0.clone())).collect()
    }
}

/// A file's target list.
fn read_targets_file(path: &std::path::Path) -> Result<Vec<HttpUrl>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    serde_yaml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

#[async_trait::async_trait]
impl Source for ScrapeSource {
    async fn run(self: Box<Self>, ctx: SourceContext) -> anyhow::Result<()> {
        let permits = Arc::new(Semaphore::new(self.max_concurrency));
        let (tx, mut rx) = mpsc::channel::<Scraped>(256);
        let mut running: HashMap<String, CancellationToken> = HashMap::new();
        let mut from_file: Vec<HttpUrl> = Vec::new();
        let mut file_problem: Option<String> = None;
        let mut check = tokio::time::interval(TARGETS_FILE_CHECK);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ctx.shutdown.cancelled() => break,
                Some(scraped) = rx.recv() => send(&ctx, scraped).await?,
                _ = check.tick() => {
                    if let Some(path) = &self.targets_file {
                        match read_targets_file(path) {
                            Ok(list) => {
                                from_file = list;
                                file_problem = None;
                            }
                            Err(e) if file_problem.as_ref() != Some(&e) => {
                                tributary_sdk::report_error!(ctx.metrics, warn, source = %ctx.id, "targets_file: {e} (keeping the last targets read)");
                                file_problem = Some(e);
                            }
                            Err(_) => {}
                        }
                    }
                    let wanted = self.wanted(&from_file);
                    running.retain(|url, stop| {
                        let keep = wanted.contains_key(url);
                        if !keep {
                            tracing::info!(source = %ctx.id, target = %url, "no longer scraped");
                            stop.cancel();
                        }
                        keep
                    });
                    for (key, url) in wanted {
                        if running.contains_key(&key) {
                            continue;
                        }
                        let stop = ctx.shutdown.child_token();
                        running.insert(key.clone(), stop.clone());
                        let offset = if self.start_jitter { offset_for(&key, self.interval) } else { Duration::ZERO };
                        let target = Arc::new(Target::new(url, self.job.clone()));
                        let (scraper, permits, tx, interval) = (self.scraper.clone(), permits.clone(), tx.clone(), self.interval);
                        tokio::spawn(async move {
                            let (scraper, target) = (&scraper, &target);
                            let slot = Slot { name: &key, interval, first_due: Instant::now() + offset, permits, stop, lateness: None };
                            every(slot, tx, move || scraper.scrape(target)).await
                        });
                    }
                }
            }
        }
        // The targets finish their scrape in flight; the last results are sent.
        drop(tx);
        while let Some(scraped) = rx.recv().await {
            send(&ctx, scraped).await?;
        }
        Ok(())
    }
}

async fn send(ctx: &SourceContext, scraped: Scraped) -> anyhow::Result<()> {
    if let Some(error) = &scraped.error {
        tributary_sdk::report_error!(ctx.metrics, warn, source = %ctx.id, target = %scraped.url, "scrape failed: {error}");
    }
    ctx.output("").send(Batch::new(scraped.batch()?)).await?;
    Ok(())
}

/// One endpoint, with the labels its rows get.
struct Target {
    url: reqwest::Url,
    job: String,
    /// `host:port`, as Prometheus names an instance.
    instance: String,
}

impl Target {
    fn new(url: reqwest::Url, job: String) -> Target {
        let host = url.host_str().unwrap_or_default();
        let instance = match url.port_or_known_default() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_string(),
        };
        Target { url, job, instance }
    }
}

struct Scraper {
    http: reqwest::Client,
    timeout: Duration,
    body_limit: u64,
    honor_labels: bool,
}

/// One row, column by column.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    ts_us: i64,
    job: String,
    instance: String,
    name: String,
    kind: Option<String>,
    value: f64,
    labels: String,
    duration_ms: Option<f64>,
    error: Option<String>,
}

/// What one scrape gave: its rows (the `up` row last) and why it failed.
struct Scraped {
    url: String,
    rows: Vec<Row>,
    error: Option<String>,
}

impl Scraper {
    async fn scrape(&self, target: &Target) -> Scraped {
        let started_us = tributary_sdk::now_us();
        let clock = std::time::Instant::now();
        let samples = self.fetch(&target.url).await.and_then(|(format, body)| exposition::parse(&body, format));
        let duration_ms = clock.elapsed().as_secs_f64() * 1000.0;
        let (mut rows, error) = match samples {
            Ok(samples) => (samples.into_iter().map(|s| self.row(target, s, started_us)).collect(), None),
            Err(e) => (Vec::new(), Some(e)),
        };
        rows.push(Row {
            ts_us: started_us,
            job: target.job.clone(),
            instance: target.instance.clone(),
            name: "up".into(),
            kind: Some("gauge".into()),
            value: if error.is_none() { 1.0 } else { 0.0 },
            labels: "{}".into(),
            duration_ms: Some(duration_ms),
            error: error.clone(),
        });
        Scraped { url: tributary_sdk::redact::url_for_display(target.url.as_str()), rows, error }
    }

    /// The body and its dialect; an error says why there is none.
    async fn fetch(&self, url: &reqwest::Url) -> Result<(Format, String), String> {
        let sent = self.http.get(url.clone()).header(reqwest::header::ACCEPT, ACCEPT).send().await;
        let mut answer = sent.map_err(|e| self.transport_error(&e))?;
        if !answer.status().is_success() {
            return Err(format!("HTTP {}", answer.status()));
        }
        let content_type = answer.headers().get(reqwest::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
        let format = Format::of_content_type(content_type);
        let mut body = Vec::new();
        while let Some(chunk) = answer.chunk().await.map_err(|e| self.transport_error(&e))? {
            if (body.len() + chunk.len()) as u64 > self.body_limit {
                return Err(format!("the body is larger than body_limit ({} bytes)", self.body_limit));
            }
            body.extend_from_slice(&chunk);
        }
        let body = String::from_utf8(body).map_err(|e| format!("the body is not UTF-8 (at byte {})", e.utf8_error().valid_up_to()))?;
        Ok((format, body))
    }

    fn transport_error(&self, e: &reqwest::Error) -> String {
        if e.is_timeout() {
            format!("timed out after {:?}", self.timeout)
        } else {
            error_chain(e)
        }
    }

    /// A sample as a row. A scraped `job` or `instance` label meets the target's as
    /// `honor_labels` says.
    fn row(&self, target: &Target, sample: exposition::Sample, scraped_at_us: i64) -> Row {
        let (mut job, mut instance) = (target.job.clone(), target.instance.clone());
        let mut labels: BTreeMap<String, String> = BTreeMap::new();
        for (name, value) in sample.labels {
            match (name.as_str(), self.honor_labels) {
                ("job", true) => job = value,
                ("instance", true) => instance = value,
                ("job" | "instance", false) => {
                    labels.insert(format!("exported_{name}"), value);
                }
                _ => {
                    labels.insert(name, value);
                }
            }
        }
        Row {
            ts_us: sample.timestamp_ms.map_or(scraped_at_us, |ms| ms.saturating_mul(1000)),
            job,
            instance,
            name: sample.name,
            kind: sample.kind,
            value: sample.value,
            labels: serde_json::to_string(&labels).unwrap_or_else(|e| unreachable!("a map of strings serializes: {e}")),
            duration_ms: None,
            error: None,
        }
    }
}

impl Scraped {
    fn batch(&self) -> Result<RecordBatch, datafusion::arrow::error::ArrowError> {
        let rows = &self.rows;
        let text = |f: fn(&Row) -> Option<&str>| Arc::new(rows.iter().map(f).collect::<StringArray>()) as ArrayRef;
        let float = |f: fn(&Row) -> Option<f64>| Arc::new(rows.iter().map(f).collect::<Float64Array>()) as ArrayRef;
        RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(TimestampMicrosecondArray::from(rows.iter().map(|r| r.ts_us).collect::<Vec<_>>()).with_timezone("UTC")),
                text(|r| Some(&r.job)),
                text(|r| Some(&r.instance)),
                text(|r| Some(&r.name)),
                text(|r| r.kind.as_deref()),
                float(|r| Some(r.value)),
                text(|r| Some(&r.labels)),
                float(|r| r.duration_ms),
                text(|r| r.error.as_deref()),
            ],
        )
    }
}
