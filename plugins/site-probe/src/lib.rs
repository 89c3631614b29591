//! `site_probe` source: HTTP(S) availability probes in the spirit of the API status monitor, with
//! blackbox-grade measurements: DNS/connect/TLS/TTFB timings, certificate expiry, expected
//! statuses, JSONPath/regex extraction and body assertions. One row per probe; a failed probe is a
//! row with its error, never a crash.

pub mod config;
mod probe;
mod schedule;
mod tls;

use std::sync::Arc;

use datafusion::arrow::array::{BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use tributary_sdk::config::event_time_type;
use tributary_sdk::{BuiltSource, ComponentConfig, ConfigError, OutputSpec, SourcePlugin};

pub use config::{SiteProbeConfig, Target};
pub use probe::{probe, ProbeLimits, ProbeRow};
pub use schedule::SiteProbeSource;
pub use tributary_sdk::schedule::Lateness;

/// The output schema: one row per probe.
pub fn probe_schema() -> SchemaRef {
    let f = |name: &str, dt: DataType, nullable: bool| Field::new(name, dt, nullable);
    Arc::new(Schema::new(vec![
        f("ts", event_time_type(), false),
        f("name", DataType::Utf8, false),
        f("site", DataType::Utf8, false),
        f("endpoint", DataType::Utf8, false),
        f("url", DataType::Utf8, false),
        f("status_code", DataType::Int64, false),
        f("response_time_ms", DataType::Int64, false),
        f("total_time_ms", DataType::Int64, false),
        f("dns_ms", DataType::Float64, true),
        f("connect_ms", DataType::Float64, true),
        f("tls_ms", DataType::Float64, true),
        f("ttfb_ms", DataType::Float64, true),
        f("sla_ms", DataType::Int64, false),
        f("in_sla", DataType::Boolean, false),
        f("success", DataType::Boolean, false),
        f("value", DataType::Utf8, true),
        f("error_kind", DataType::Utf8, true),
        f("error", DataType::Utf8, true),
        f("tls_cert_expiry_days", DataType::Float64, true),
        f("body_bytes", DataType::Int64, true),
        f("redirects", DataType::Int64, false),
    ]))
}

/// Rows as an Arrow batch of [`probe_schema`].
pub fn rows_to_batch(rows: &[ProbeRow]) -> RecordBatch {
    let s = |f: fn(&ProbeRow) -> &str| Arc::new(StringArray::from_iter_values(rows.iter().map(f)));
    let i = |f: fn(&ProbeRow) -> i64| Arc::new(Int64Array::from_iter_values(rows.iter().map(f)));
    let fl = |f: fn(&ProbeRow) -> Option<f64>| Arc::new(Float64Array::from_iter(rows.iter().map(f)));
    let b = |f: fn(&ProbeRow) -> bool| Arc::new(BooleanArray::from_iter(rows.iter().map(|r| Some(f(r)))));
    RecordBatch::try_new(
        probe_schema(),
        vec![
            Arc::new(TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.ts_us)).with_timezone("UTC")),
            s(|r| &r.name),
            s(|r| &r.site),
            s(|r| &r.endpoint),
            s(|r| &r.url),
            i(|r| r.status_code),
            i(|r| r.response_time_ms),
            i(|r| r.total_time_ms),
            fl(|r| r.dns_ms),
            fl(|r| r.connect_ms),
            fl(|r| r.tls_ms),
            fl(|r| r.ttfb_ms),
            i(|r| r.sla_ms),
            b(|r| r.in_sla),
            b(|r| r.success),
            Arc::new(StringArray::from_iter(rows.iter().map(|r| r.value.as_deref()))),
            Arc::new(StringArray::from_iter(rows.iter().map(|r| r.error_kind))),
            Arc::new(StringArray::from_iter(rows.iter().map(|r| r.error.as_deref()))),
            fl(|r| r.tls_cert_expiry_days),
            Arc::new(Int64Array::from_iter(rows.iter().map(|r| r.body_bytes))),
            i(|r| r.redirects),
        ],
    )
    .expect("probe columns match probe_schema")
}

pub struct SiteProbePlugin;

impl SourcePlugin for SiteProbePlugin {
    fn type_name(&self) -> &'static str {
        "site_probe"
    }
    fn delivery(&self) -> &'static [tributary_sdk::delivery::SourceDelivery] {
        &[tributary_sdk::delivery::MEASURED]
    }
    fn build(&self, config: &ComponentConfig) -> Result<BuiltSource, ConfigError> {
        let cfg: SiteProbeConfig = config.decode()?;
        let source = SiteProbeSource::new(&cfg)?;
        Ok(BuiltSource { outputs: vec![OutputSpec::main(probe_schema())], source: Box::new(source) })
    }
}

#[cfg(test)]
mod tests;
