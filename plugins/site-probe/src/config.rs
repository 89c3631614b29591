//! `site_probe` config: the targets and their defaults, validated before anything runs.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use tributary_sdk::config::{ByteSize, PathSeg};
use tributary_sdk::{ConfigError, Period, Secret};

/// Config of a `site_probe` source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteProbeConfig {
    pub targets: Vec<TargetConfig>,
    /// Default time between probe starts of one target (default 10s). Fixed rate: the next probe
    /// is due one interval after the previous one was due, not after it finished.
    #[serde(default = "default_interval")]
    pub interval: Period,
    /// Default response-time SLA in ms (default 1000).
    #[serde(default = "default_sla")]
    pub sla_ms: u64,
    /// Default timeout for a whole probe (default: the target's `sla_ms`, like the original monitor).
    #[serde(default)]
    pub timeout: Option<Period>,
    /// Probes in flight at once across all targets (default 64).
    #[serde(default = "default_concurrency")]
    pub max_concurrency: usize,
    /// Default for verifying TLS certificates (default true).
    #[serde(default = "yes")]
    pub tls_verify: bool,
    /// Redirects followed before the response counts as the result (default 5; 0 = none).
    #[serde(default = "default_redirects")]
    pub max_redirects: u32,
    /// Bytes of a body kept for extraction and assertions (default 1MiB); the rest is counted only.
    #[serde(default = "default_body_limit")]
    pub body_limit: ByteSize,
    /// Spread first probes randomly over each target's interval so targets do not all fire at
    /// once (default true).
    #[serde(default = "yes")]
    pub start_jitter: bool,
    /// Rows are sent at least this often (default 1s).
    #[serde(default = "default_flush")]
    pub flush_interval: Period,
}

/// One probed endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    pub name: String,
    /// Full URL; or `site` + `endpoint` as in the original monitor's `apireader.yml`.
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub site: Option<String>,
    #[serde(default)]
    pub endpoint: Option<String>,
    /// The original monitor's reader type (`json` or `regex`); optional, checked against the extractor.
    #[serde(default, rename = "type")]
    pub reader_type: Option<ReaderType>,
    #[serde(default = "default_method")]
    pub method: String,
    /// Request headers; values may hold secrets (`Authorization: Bearer ${TOKEN}`) and are redacted.
    #[serde(default)]
    pub headers: BTreeMap<String, Secret>,
    #[serde(default)]
    pub body: Option<String>,
    #[serde(default)]
    pub interval: Option<Period>,
    #[serde(default)]
    pub timeout: Option<Period>,
    #[serde(default)]
    pub sla_ms: Option<u64>,
    /// Accepted statuses: codes (`204`), ranges (`200-299`) or classes (`2xx`). Default 2xx.
    #[serde(default)]
    pub expect_status: Option<Vec<StatusSpec>>,
    /// Extract the first match of this JSONPath from a JSON body into `value`.
    #[serde(default)]
    pub json_path: Option<String>,
    /// Extract capture group 1 (or the whole match) of this regex (multi-line) into `value`.
    #[serde(default)]
    pub regex: Option<String>,
    #[serde(default)]
    pub assert: Option<Assertions>,
    #[serde(default)]
    pub tls_verify: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReaderType {
    Json,
    Regex,
}

/// Checks on the body; a failed one makes the probe fail with `error_kind = assertion`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Assertions {
    /// The body must match this regex.
    #[serde(default)]
    pub body_regex: Option<String>,
    /// The JSON body must have a match for this JSONPath ...
    #[serde(default)]
    pub json_path: Option<String>,
    /// ... whose text equals this.
    #[serde(default)]
    pub equals: Option<String>,
}

/// One accepted status specification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusSpec {
    pub low: u16,
    pub high: u16,
}

impl<'de> Deserialize<'de> for StatusSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Code(u16),
            Text(String),
        }
        let bad = |s: &str| serde::de::Error::custom(format!("`{s}` is not a status: use 204, 200-299 or 2xx"));
        match Raw::deserialize(d)? {
            Raw::Code(c) if (100..=599).contains(&c) => Ok(StatusSpec { low: c, high: c }),
            Raw::Code(c) => Err(bad(&c.to_string())),
            Raw::Text(t) => {
                let t = t.trim();
                if let Some(class) = t.strip_suffix("xx").and_then(|c| c.parse::<u16>().ok()).filter(|c| (1..=5).contains(c)) {
                    return Ok(StatusSpec { low: class * 100, high: class * 100 + 99 });
                }
                if let Some((a, b)) = t.split_once('-') {
                    if let (Ok(a), Ok(b)) = (a.trim().parse::<u16>(), b.trim().parse::<u16>()) {
                        if a <= b && (100..=599).contains(&a) && (100..=599).contains(&b) {
                            return Ok(StatusSpec { low: a, high: b });
                        }
                    }
                }
                t.parse::<u16>().ok().filter(|c| (100..=599).contains(c)).map(|c| StatusSpec { low: c, high: c }).ok_or_else(|| bad(t))
            }
        }
    }
}

impl std::fmt::Display for StatusSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.low == self.high {
            write!(f, "{}", self.low)
        } else {
            write!(f, "{}-{}", self.low, self.high)
        }
    }
}

fn default_interval() -> Period {
    Period(Duration::from_secs(10))
}
fn default_sla() -> u64 {
    1000
}
fn default_concurrency() -> usize {
    64
}
fn yes() -> bool {
    true
}
fn default_redirects() -> u32 {
    5
}
fn default_body_limit() -> ByteSize {
    ByteSize(1 << 20)
}
fn default_flush() -> Period {
    Period(Duration::from_secs(1))
}
fn default_method() -> String {
    "GET".into()
}

/// A target with its defaults applied and everything compiled.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub site: String,
    pub endpoint: String,
    pub url: hyper::Uri,
    pub method: hyper::Method,
    pub headers: Vec<(hyper::header::HeaderName, hyper::header::HeaderValue)>,
    pub body: Option<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub sla_ms: u64,
    pub expect_status: Vec<StatusSpec>,
    pub extract: Option<Extractor>,
    pub assert_body_regex: Option<regex::Regex>,
    pub assert_json: Option<(String, Option<String>)>,
    pub tls_verify: bool,
}

#[derive(Debug, Clone)]
pub enum Extractor {
    JsonPath(String),
    Regex(regex::Regex),
}

/// An error at `targets[i].<field>` (field may be dotted: `assert.json_path`).
fn target_err(i: usize, field: &str, message: impl Into<String>) -> ConfigError {
    let mut path = vec![PathSeg::Key("targets".into()), PathSeg::Index(i)];
    path.extend(field.split('.').map(|k| PathSeg::Key(k.to_string())));
    ConfigError { path, message: message.into() }
}

fn multi_line_regex(pattern: &str, i: usize, field: &str) -> Result<regex::Regex, ConfigError> {
    regex::RegexBuilder::new(pattern).multi_line(true).build().map_err(|e| target_err(i, field, format!("invalid regex: {e}")))
}

fn check_json_path(path: &str, i: usize, field: &str) -> Result<(), ConfigError> {
    jsonpath_lib::Compiled::compile(path).map(|_| ()).map_err(|e| target_err(i, field, format!("invalid JSONPath `{path}`: {e}")))
}

impl SiteProbeConfig {
    /// Every target resolved against the defaults; the first problem names its target and field.
    pub fn targets(&self) -> Result<Vec<Target>, ConfigError> {
        if self.targets.is_empty() {
            return Err(ConfigError::at("targets", "at least one target is required"));
        }
        if self.max_concurrency == 0 {
            return Err(ConfigError::at("max_concurrency", "must be at least 1"));
        }
        let mut names = std::collections::HashSet::new();
        let mut out = Vec::new();
        for (i, t) in self.targets.iter().enumerate() {
            if !names.insert(t.name.as_str()) {
                return Err(target_err(i, "name", format!("duplicate target name `{}`", t.name)));
            }
            let (url_text, site, endpoint) = match (&t.url, &t.site) {
                (Some(url), None) => {
                    if t.endpoint.is_some() {
                        return Err(target_err(i, "endpoint", "use `endpoint` with `site`, not with `url`"));
                    }
                    let uri: hyper::Uri = url.parse().map_err(|e| target_err(i, "url", format!("invalid URL `{url}`: {e}")))?;
                    let site = format!("{}://{}", uri.scheme_str().unwrap_or("http"), uri.authority().map(|a| a.as_str()).unwrap_or(""));
                    let endpoint = uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".into());
                    (url.clone(), site, endpoint)
                }
                (None, Some(site)) => {
                    let endpoint = t.endpoint.clone().unwrap_or_else(|| "/".into());
                    (format!("{site}{endpoint}"), site.clone(), endpoint)
                }
                (Some(_), Some(_)) => return Err(target_err(i, "url", "give either `url` or `site` (+ `endpoint`), not both")),
                (None, None) => return Err(target_err(i, "url", "missing: give `url`, or `site` and `endpoint`")),
            };
            let url: hyper::Uri = url_text.parse().map_err(|e| target_err(i, "url", format!("invalid URL `{url_text}`: {e}")))?;
            match url.scheme_str() {
                Some("http") | Some("https") => {}
                _ => return Err(target_err(i, "url", format!("`{url_text}` must start with http:// or https://"))),
            }
            if url.host().is_none() {
                return Err(target_err(i, "url", format!("`{url_text}` has no host")));
            }
            let method = hyper::Method::from_bytes(t.method.to_ascii_uppercase().as_bytes())
                .map_err(|_| target_err(i, "method", format!("`{}` is not an HTTP method", t.method)))?;
            let mut headers = Vec::new();
            for (k, v) in &t.headers {
                let name = hyper::header::HeaderName::from_bytes(k.as_bytes())
                    .map_err(|_| target_err(i, &format!("headers.{k}"), "not a valid header name"))?;
                let mut value = hyper::header::HeaderValue::from_str(v.expose())
                    .map_err(|_| target_err(i, &format!("headers.{k}"), "not a valid header value"))?;
                value.set_sensitive(true);
                headers.push((name, value));
            }
            let extract = match (&t.json_path, &t.regex) {
                (Some(_), Some(_)) => return Err(target_err(i, "regex", "give `json_path` or `regex`, not both")),
                (Some(p), None) => {
                    check_json_path(p, i, "json_path")?;
                    Some(Extractor::JsonPath(p.clone()))
                }
                (None, Some(r)) => Some(Extractor::Regex(multi_line_regex(r, i, "regex")?)),
                (None, None) => None,
            };
            match (t.reader_type, &extract) {
                (Some(ReaderType::Json), Some(Extractor::JsonPath(_)))
                | (Some(ReaderType::Regex), Some(Extractor::Regex(_)))
                | (None, _) => {}
                (Some(ReaderType::Json), _) => return Err(target_err(i, "json_path", "`type: json` needs `json_path`")),
                (Some(ReaderType::Regex), _) => return Err(target_err(i, "regex", "`type: regex` needs `regex`")),
            }
            let (assert_body_regex, assert_json) = match &t.assert {
                None => (None, None),
                Some(a) => {
                    let re = a.body_regex.as_deref().map(|r| multi_line_regex(r, i, "assert.body_regex")).transpose()?;
                    if let Some(p) = &a.json_path {
                        check_json_path(p, i, "assert.json_path")?;
                    } else if a.equals.is_some() {
                        return Err(target_err(i, "assert.equals", "needs `json_path`"));
                    }
                    (re, a.json_path.clone().map(|p| (p, a.equals.clone())))
                }
            };
            let interval = t.interval.unwrap_or(self.interval).0;
            let sla_ms = t.sla_ms.unwrap_or(self.sla_ms);
            let timeout = t.timeout.or(self.timeout).map(|d| d.0).unwrap_or(Duration::from_millis(sla_ms));
            out.push(Target {
                name: t.name.clone(),
                site,
                endpoint,
                url,
                method,
                headers,
                body: t.body.clone(),
                interval,
                timeout,
                sla_ms,
                expect_status: t.expect_status.clone().unwrap_or_else(|| vec![StatusSpec { low: 200, high: 299 }]),
                extract,
                assert_body_regex,
                assert_json,
                tls_verify: t.tls_verify.unwrap_or(self.tls_verify),
            });
        }
        Ok(out)
    }
}
