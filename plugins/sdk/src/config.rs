//! Typed component configuration: decoding with error paths, secrets, durations, byte sizes and
//! declared schemas.
//!
//! A plugin deserializes its own config struct (with `#[serde(deny_unknown_fields)]`) through
//! [`ComponentConfig::decode`]. Errors carry the path inside the component (`targets[0].url`), which
//! the engine turns into `file:line:col`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

/// One segment of a path inside a YAML document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathSeg {
    Key(String),
    Index(usize),
}

/// Render a path as `a.b[0].c`.
pub fn path_to_string(path: &[PathSeg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            PathSeg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            PathSeg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// A configuration problem at a path relative to the component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: Vec<PathSeg>,
    pub message: String,
}

impl ConfigError {
    /// A problem with the option at `path` (dot-separated, relative to the component).
    pub fn at(path: &str, message: impl Into<String>) -> Self {
        let path = path.split('.').filter(|s| !s.is_empty()).map(|s| PathSeg::Key(s.to_string())).collect();
        ConfigError { path, message: message.into() }
    }

    /// The same problem, located under option `key` (an error decoding `retry:` is at `retry.…`).
    pub fn within(mut self, key: &str) -> Self {
        self.path.insert(0, PathSeg::Key(key.to_string()));
        self
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", path_to_string(&self.path), self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// The options of one component (everything but `type` and `inputs`), already interpolated.
#[derive(Debug, Clone)]
pub struct ComponentConfig {
    pub id: String,
    pub options: serde_yaml::Value,
}

impl ComponentConfig {
    pub fn new(id: impl Into<String>, options: serde_yaml::Value) -> Self {
        ComponentConfig { id: id.into(), options }
    }

    /// Parse options from YAML text (handy in plugin tests).
    pub fn from_yaml(id: &str, yaml: &str) -> Self {
        let options = serde_yaml::from_str(yaml).expect("test config must be valid YAML");
        ComponentConfig::new(id, options)
    }

    /// Deserialize the options into the plugin's typed config, keeping the error's path.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, ConfigError> {
        let value = match &self.options {
            serde_yaml::Value::Null => serde_yaml::Value::Mapping(Default::default()),
            v => v.clone(),
        };
        serde_path_to_error::deserialize(value).map_err(|err| {
            let path = err
                .path()
                .iter()
                .filter_map(|seg| match seg {
                    serde_path_to_error::Segment::Map { key } => Some(PathSeg::Key(key.clone())),
                    serde_path_to_error::Segment::Seq { index } => Some(PathSeg::Index(*index)),
                    _ => None,
                })
                .collect();
            ConfigError { path, message: strip_serde_location(&err.into_inner().to_string()) }
        })
    }
}

impl ComponentConfig {
    /// For a config whose modes are types (`mode: stream` → a `StreamConfig`): the value of the
    /// tag `key` and the options without it. Each mode's struct then decodes on its own, denying
    /// the keys of other modes, with error paths as precise as a flat struct's (serde's
    /// internally tagged enums buffer the options and lose the path of an error inside them).
    pub fn split_tag<M: DeserializeOwned>(&self, key: &str) -> Result<(M, ComponentConfig), ConfigError> {
        let mut options = match &self.options {
            serde_yaml::Value::Mapping(m) => m.clone(),
            serde_yaml::Value::Null => serde_yaml::Mapping::new(),
            _ => return Err(self.decode::<serde_yaml::Mapping>().err().unwrap_or_else(|| ConfigError::at("", "expected a mapping"))),
        };
        let tag = options.remove(key).ok_or_else(|| ConfigError::at("", format!("missing field `{key}`")))?;
        let mode =
            serde_path_to_error::deserialize(tag).map_err(|e| ConfigError::at(key, strip_serde_location(&e.into_inner().to_string())))?;
        Ok((mode, ComponentConfig::new(self.id.clone(), serde_yaml::Value::Mapping(options))))
    }
}

/// serde_yaml appends " at line L column C" relative to the value it was given, which is
/// meaningless once the engine reports the real position; drop it.
fn strip_serde_location(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

/// `batch:` of a sink that buffers rows (influx, otlp, timescale): it writes once `max_rows` are
/// buffered or every `max_age`, whichever comes first. The group, its checks and its meaning are the
/// same on every such sink (and on `http_server`, which batches requests before the pipeline); each
/// gives its own defaults to [`BatchConfig::resolve`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Rows per write at most.
    pub max_rows: Option<usize>,
    /// Buffered rows are written at least this often.
    pub max_age: Option<Period>,
}

/// A sink's checked batching.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    pub max_rows: usize,
    pub max_age: Duration,
}

impl BatchConfig {
    /// The options given, `defaults` for the rest; errors are at `batch.<key>`.
    pub fn resolve(self, defaults: Batching) -> Result<Batching, ConfigError> {
        let batching =
            Batching { max_rows: self.max_rows.unwrap_or(defaults.max_rows), max_age: self.max_age.map_or(defaults.max_age, |p| p.0) };
        if batching.max_rows == 0 {
            return Err(ConfigError::at("batch.max_rows", "must be at least 1"));
        }
        Ok(batching)
    }
}

/// A secret option (token, password). Never printed: `Debug` and `Display` show `***`, and its
/// value is registered with [`crate::redact`], so the engine's log lines show `***` wherever
/// the value itself appears (in an error text from a library, say).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Secret::new(String::deserialize(d)?))
    }
}

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        let value = value.into();
        crate::redact::register_secret(&value);
        Secret(value)
    }
    /// The value, for the one place that must send it (an auth header, a connection string).
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// Whether `given` (a client's bearer token, say) is this secret, compared in constant time
    /// so the answer's timing does not reveal how much of it matched.
    pub fn matches(&self, given: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), given.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
    /// Whether an `Authorization` header value is `Bearer <this secret>`.
    pub fn matches_bearer(&self, authorization: Option<&str>) -> bool {
        authorization.and_then(|v| v.strip_prefix("Bearer ")).is_some_and(|given| self.matches(given))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// A duration written as `500ms`, `30s`, `5m`, `1h 30m` (or a bare number of seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(u64),
            Text(String),
        }
        match Raw::deserialize(d).map_err(|_| serde::de::Error::custom("expected a duration such as `500ms`, `30s` or `5m`"))? {
            Raw::Secs(s) => Ok(HumanDuration(Duration::from_secs(s))),
            Raw::Text(t) => humantime::parse_duration(&t)
                .map(HumanDuration)
                .map_err(|e| serde::de::Error::custom(format!("invalid duration `{t}` ({e}); expected e.g. `500ms`, `30s`, `5m`"))),
        }
    }
}

/// A period or timeout: a [`HumanDuration`] that must be longer than 0. A zero period would make
/// a timer panic or a loop spin, and a zero timeout would fail every call, so `0s` is refused when
/// the config is read (naming the option) rather than at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period(pub Duration);

impl Period {
    pub const fn from_millis(ms: u64) -> Period {
        Period(Duration::from_millis(ms))
    }
    pub const fn from_secs(s: u64) -> Period {
        Period(Duration::from_secs(s))
    }
}

impl<'de> Deserialize<'de> for Period {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let HumanDuration(duration) = HumanDuration::deserialize(d)?;
        if duration.is_zero() {
            return Err(serde::de::Error::custom("must be longer than 0s"));
        }
        Ok(Period(duration))
    }
}

/// A size written as `1048576`, `512KiB`, `1MiB`, `128MB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn parse(text: &str) -> Result<u64, String> {
        let t = text.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num.parse().map_err(|_| format!("invalid size `{text}`"))?;
        let mult = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1_000,
            "kib" => 1 << 10,
            "m" | "mb" => 1_000_000,
            "mib" => 1 << 20,
            "g" | "gb" => 1_000_000_000,
            "gib" => 1 << 30,
            other => return Err(format!("invalid size unit `{other}` in `{text}`; use B, KiB, MiB, GiB, KB, MB or GB")),
        };
        Ok(n * mult)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bytes(u64),
            Text(String),
        }
        match Raw::deserialize(d).map_err(|_| serde::de::Error::custom("expected a size such as `1048576` or `1MiB`"))? {
            Raw::Bytes(b) => Ok(ByteSize(b)),
            Raw::Text(t) => ByteSize::parse(&t).map(ByteSize).map_err(serde::de::Error::custom),
        }
    }
}

/// Column types a user may declare for JSON-decoding sources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldType {
    String,
    Int,
    Float,
    Bool,
    /// RFC 3339 text (`2026-11-22T10:00:00Z`) or integer microseconds since the epoch.
    Timestamp,
    /// Any JSON value, kept as its JSON text.
    Json,
}

impl FieldType {
    pub fn data_type(self) -> DataType {
        match self {
            FieldType::String | FieldType::Json => DataType::Utf8,
            FieldType::Int => DataType::Int64,
            FieldType::Float => DataType::Float64,
            FieldType::Bool => DataType::Boolean,
            FieldType::Timestamp => event_time_type(),
        }
    }
}

/// The event-time type used across Tributary: microseconds, UTC.
pub fn event_time_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// A declared schema: `{column: type, ...}` in YAML, order kept.
#[derive(Debug, Clone, PartialEq)]
pub struct DeclaredSchema(pub Vec<(String, FieldType)>);

impl<'de> Deserialize<'de> for DeclaredSchema {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let map = serde_yaml::Mapping::deserialize(d)?;
        let mut cols = Vec::new();
        for (k, v) in map {
            let name = k.as_str().ok_or_else(|| serde::de::Error::custom("schema column names must be strings"))?.to_string();
            let ty: FieldType = serde_yaml::from_value(v.clone()).map_err(|_| {
                serde::de::Error::custom(format!(
                    "column `{name}`: unknown type {}; expected one of string, int, float, bool, timestamp, json",
                    serde_yaml::to_string(&v).unwrap_or_default().trim()
                ))
            })?;
            cols.push((name, ty));
        }
        if cols.is_empty() {
            return Err(serde::de::Error::custom("schema must declare at least one column"));
        }
        Ok(DeclaredSchema(cols))
    }
}

impl DeclaredSchema {
    pub fn arrow_schema(&self) -> SchemaRef {
        Arc::new(Schema::new(self.0.iter().map(|(n, t)| Field::new(n, t.data_type(), true)).collect::<Vec<_>>()))
    }
    pub fn json_columns(&self) -> Vec<String> {
        self.0.iter().filter(|(_, t)| *t == FieldType::Json).map(|(n, _)| n.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_takes_what_is_given_and_the_sink_s_defaults_for_the_rest() {
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Sink {
            #[serde(default)]
            batch: BatchConfig,
        }
        let defaults = Batching { max_rows: 5000, max_age: Duration::from_secs(1) };
        let resolve = |yaml: &str| {
            ComponentConfig::from_yaml("s", yaml)
                .decode::<Sink>()
                .map_err(|e| e.to_string())?
                .batch
                .resolve(defaults)
                .map_err(|e| e.to_string())
        };
        assert_eq!(resolve("{}"), Ok(defaults));
        assert_eq!(resolve("{batch: {max_age: 50ms}}"), Ok(Batching { max_rows: 5000, max_age: Duration::from_millis(50) }));
        assert_eq!(resolve("{batch: {max_rows: 7}}"), Ok(Batching { max_rows: 7, max_age: Duration::from_secs(1) }));
        assert_eq!(resolve("{batch: {max_rows: 0}}"), Err("batch.max_rows: must be at least 1".to_string()));
        assert_eq!(resolve("{batch: {rows: 7}}"), Err("batch.rows: unknown field `rows`, expected `max_rows` or `max_age`".to_string()));
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Target {
        url: String,
        sla_ms: u64,
    }
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Cfg {
        targets: Vec<Target>,
        interval: Option<HumanDuration>,
    }

    #[test]
    fn a_zero_period_is_refused_with_the_option_named() {
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Timer {
            flush_interval: Period,
        }
        let err = ComponentConfig::from_yaml("f", "flush_interval: 0s").decode::<Timer>().unwrap_err();
        assert_eq!(err.to_string(), "flush_interval: must be longer than 0s");
        let ok: Timer = ComponentConfig::from_yaml("f", "flush_interval: 250ms").decode().unwrap();
        assert_eq!(ok.flush_interval, Period::from_millis(250));
    }

    #[test]
    fn decode_reports_the_path_of_a_wrong_type() {
        let cfg = ComponentConfig::from_yaml("p", "targets: [{url: x, sla_ms: fast}]");
        let err = cfg.decode::<Cfg>().unwrap_err();
        assert_eq!(path_to_string(&err.path), "targets[0].sla_ms");
        assert!(err.message.starts_with("invalid type: string \"fast\", expected u64"), "{}", err.message);
    }

    #[test]
    fn decode_names_valid_keys_for_an_unknown_one() {
        let cfg = ComponentConfig::from_yaml("p", "targets: []\nintervall: 5s");
        let err = cfg.decode::<Cfg>().unwrap_err();
        assert_eq!(err.message, "unknown field `intervall`, expected `targets` or `interval`");
    }

    #[test]
    fn durations_and_sizes_parse_human_forms() {
        let d: HumanDuration = serde_yaml::from_str("1m 30s").unwrap();
        assert_eq!(d.0, Duration::from_secs(90));
        let d: HumanDuration = serde_yaml::from_str("7").unwrap();
        assert_eq!(d.0, Duration::from_secs(7));
        assert!(serde_yaml::from_str::<HumanDuration>("soon").is_err());
        assert_eq!(serde_yaml::from_str::<ByteSize>("1MiB").unwrap().0, 1 << 20);
        assert_eq!(serde_yaml::from_str::<ByteSize>("2048").unwrap().0, 2048);
        let err = serde_yaml::from_str::<ByteSize>("3 parsecs").unwrap_err().to_string();
        assert!(err.contains("invalid size unit `parsecs`"), "{err}");
    }

    #[test]
    fn secrets_never_print() {
        let s: Secret = serde_yaml::from_str("hunter22").unwrap();
        assert_eq!(format!("{s:?} {s}"), "*** ***");
        assert_eq!(s.expose(), "hunter22");
    }

    #[test]
    fn declared_schema_keeps_order_and_rejects_unknown_types() {
        let s: DeclaredSchema = serde_yaml::from_str("{ts: timestamp, user: string, score: int}").unwrap();
        let schema = s.arrow_schema();
        let names: Vec<_> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, ["ts", "user", "score"]);
        assert_eq!(schema.field(0).data_type(), &event_time_type());
        let err = serde_yaml::from_str::<DeclaredSchema>("{x: integer}").unwrap_err().to_string();
        assert!(err.contains("column `x`: unknown type integer"), "{err}");
    }
}
