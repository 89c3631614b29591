//! What every signal's rows share: where they came from (resource and scope), time stamps, the
//! decoded-size budget, and the count of what was refused (OTLP's partial success).

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Float64Array, Int64Array, StringArray, TimestampMicrosecondArray};
use datafusion::arrow::datatypes::{DataType, Field, TimeUnit};
use opentelemetry_proto::tonic::common::v1::{InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;

use super::attributes;

/// The resource and scope a group of records came from, rendered once for all of them.
pub struct Origin<'a> {
    pub service_name: Option<&'a str>,
    pub resource: String,
    pub scope_name: Option<&'a str>,
    pub scope_version: Option<&'a str>,
}

impl<'a> Origin<'a> {
    pub fn new(resource: Option<&'a Resource>, scope: Option<&'a InstrumentationScope>) -> Self {
        let resource_attributes: &[KeyValue] = resource.map_or(&[], |r| &r.attributes);
        Origin {
            service_name: attributes::string_value(resource_attributes, "service.name"),
            resource: attributes::object(resource_attributes),
            scope_name: scope.map(|s| s.name.as_str()).filter(|s| !s.is_empty()),
            scope_version: scope.map(|s| s.version.as_str()).filter(|s| !s.is_empty()),
        }
    }

    /// What a row repeats of its origin, in bytes.
    pub fn size(&self) -> usize {
        self.resource.len() + self.service_name.map_or(0, str::len) + self.scope_name.map_or(0, str::len)
    }
}

/// The columns every signal ends with, in this order.
pub fn origin_fields() -> [Field; 4] {
    [
        Field::new("service_name", DataType::Utf8, true),
        Field::new("resource", DataType::Utf8, false),
        Field::new("scope_name", DataType::Utf8, true),
        Field::new("scope_version", DataType::Utf8, true),
    ]
}

pub fn origin_columns<R>(rows: &[R], origins: &[Origin], of: impl Fn(&R) -> usize) -> [ArrayRef; 4] {
    let origin = |r: &R| &origins[of(r)];
    [
        Arc::new(rows.iter().map(|r| origin(r).service_name).collect::<StringArray>()),
        Arc::new(rows.iter().map(|r| Some(origin(r).resource.as_str())).collect::<StringArray>()),
        Arc::new(rows.iter().map(|r| origin(r).scope_name).collect::<StringArray>()),
        Arc::new(rows.iter().map(|r| origin(r).scope_version).collect::<StringArray>()),
    ]
}

pub fn timestamp(name: &str, nullable: bool) -> Field {
    Field::new(name, DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), nullable)
}

pub fn timestamps(values: impl Iterator<Item = Option<i64>>) -> ArrayRef {
    Arc::new(values.collect::<TimestampMicrosecondArray>().with_timezone("UTC"))
}

pub fn texts<'r>(values: impl Iterator<Item = Option<&'r str>>) -> ArrayRef {
    Arc::new(values.collect::<StringArray>())
}

pub fn floats(values: impl Iterator<Item = Option<f64>>) -> ArrayRef {
    Arc::new(values.collect::<Float64Array>())
}

pub fn integers(values: impl Iterator<Item = Option<i64>>) -> ArrayRef {
    Arc::new(values.collect::<Int64Array>())
}

/// OTLP's nanoseconds as the rows' microseconds; 0 (OTLP's "unset") is `None`. Any `u64` of
/// nanoseconds fits once divided.
pub fn micros(nanos: u64) -> Option<i64> {
    (nanos != 0).then_some((nanos / 1000) as i64)
}

/// `""` (protobuf's unset string) as `None`.
pub fn non_empty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

/// How many bytes of rows one request may become: 16 times its size, and never less than 64 MiB,
/// so a small request with a large resource repeated on many points still fits, while a crafted
/// one cannot turn a few megabytes into gigabytes.
pub struct Budget {
    left: usize,
    limit: usize,
    body: usize,
}

/// Fixed bytes of one row besides its strings and lists (offsets, values, validity).
pub const ROW_OVERHEAD: usize = 160;
const MIN_BUDGET: usize = 64 << 20;

impl Budget {
    pub fn for_body(body: usize) -> Self {
        let limit = body.saturating_mul(tributary_sdk::json::MAX_DECODED_PER_BYTE).max(MIN_BUDGET);
        Budget { left: limit, limit, body }
    }

    pub fn charge(&mut self, bytes: usize) -> Result<(), Refusal> {
        self.left = self.left.checked_sub(bytes).ok_or_else(|| {
            Refusal::TooLarge(format!(
                "its rows would take more than {} bytes decoded (the limit for a {}-byte request: 16 times its size, at least 64 MiB); send fewer records per request",
                self.limit, self.body
            ))
        })?;
        Ok(())
    }
}

/// Why a whole request is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Not OTLP, or not this signal: 400 / INVALID_ARGUMENT.
    Invalid(String),
    /// Rows over the [`Budget`]: 413 / INVALID_ARGUMENT.
    TooLarge(String),
}

/// Records refused one by one (OTLP's partial success): how many, and why the first was.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Rejected {
    pub count: u64,
    first: Option<String>,
    others: u64,
}

impl Rejected {
    pub fn add(&mut self, count: u64, why: impl FnOnce() -> String) {
        if count == 0 {
            return;
        }
        self.count += count;
        match self.first {
            None => self.first = Some(why()),
            Some(_) => self.others += 1,
        }
    }

    /// The partial-success message: the first reason, and how many other reasons there were.
    pub fn message(&self) -> String {
        match (&self.first, self.others) {
            (None, _) => String::new(),
            (Some(first), 0) => first.clone(),
            (Some(first), n) => format!("{first} (and {n} more rejections)"),
        }
    }
}
