//! `<id>.spans`: one row per span.

use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::ArrayRef;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode, Span};
use serde_json::json;

use super::attributes;
use super::rows::{
    integers, micros, non_empty, origin_columns, origin_fields, texts, timestamp, timestamps, Budget, Origin, Refusal, Rejected,
    ROW_OVERHEAD,
};

/// The output's schema: one for every request, built once (each request used to build its own,
/// a few dozen allocations of field names).
pub fn schema() -> SchemaRef {
    static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(build_schema);
    SCHEMA.clone()
}

fn build_schema() -> SchemaRef {
    let mut fields = vec![
        timestamp("ts", false),
        timestamp("end_ts", true),
        Field::new("duration_ns", DataType::Int64, true),
        Field::new("trace_id", DataType::Utf8, false),
        Field::new("span_id", DataType::Utf8, false),
        Field::new("parent_span_id", DataType::Utf8, true),
        Field::new("trace_state", DataType::Utf8, true),
        Field::new("name", DataType::Utf8, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("status_code", DataType::Utf8, false),
        Field::new("status_message", DataType::Utf8, true),
        Field::new("attributes", DataType::Utf8, false),
        Field::new("events", DataType::Utf8, false),
        Field::new("links", DataType::Utf8, false),
    ];
    fields.extend(origin_fields());
    Arc::new(Schema::new(fields))
}

struct Row<'a> {
    origin: usize,
    span: &'a Span,
    ts: i64,
    trace_id: String,
    span_id: String,
    parent_span_id: Option<String>,
    attributes: String,
    events: String,
    links: String,
}

fn kind(code: i32) -> &'static str {
    match SpanKind::try_from(code) {
        Ok(SpanKind::Internal) => "internal",
        Ok(SpanKind::Server) => "server",
        Ok(SpanKind::Client) => "client",
        Ok(SpanKind::Producer) => "producer",
        Ok(SpanKind::Consumer) => "consumer",
        _ => "unspecified",
    }
}

fn status(span: &Span) -> &'static str {
    match span.status.as_ref().map(|s| StatusCode::try_from(s.code)) {
        Some(Ok(StatusCode::Ok)) => "ok",
        Some(Ok(StatusCode::Error)) => "error",
        _ => "unset",
    }
}

/// Events and links as JSON arrays: `[{"ts_unix_nano", "name", "attributes"}]` and
/// `[{"trace_id", "span_id", "trace_state", "attributes"}]`.
fn events(span: &Span) -> String {
    let events: Vec<_> = span
        .events
        .iter()
        .map(|e| json!({"ts_unix_nano": e.time_unix_nano, "name": e.name, "attributes": attributes::object_value(&e.attributes)}))
        .collect();
    serde_json::Value::Array(events).to_string()
}

fn links(span: &Span) -> String {
    let links: Vec<_> = span
        .links
        .iter()
        .map(|l| {
            json!({"trace_id": attributes::id(&l.trace_id), "span_id": attributes::id(&l.span_id),
                   "trace_state": non_empty(&l.trace_state), "attributes": attributes::object_value(&l.attributes)})
        })
        .collect();
    serde_json::Value::Array(links).to_string()
}

/// A trace id of 16 bytes and a span id of 8, as OTLP requires; else why not.
fn ids(span: &Span) -> Result<(String, String), String> {
    let check = |what: &str, id: &[u8], len: usize| match id.len() == len && id.iter().any(|&b| b != 0) {
        true => Ok(attributes::id(id).unwrap_or_default()),
        false => Err(format!("span `{}`: {what} must be {len} bytes, not all zero (got {} bytes)", span.name, id.len())),
    };
    Ok((check("trace_id", &span.trace_id, 16)?, check("span_id", &span.span_id, 8)?))
}

/// The rows of a request, what was refused, or why the whole request is.
pub fn rows(request: &ExportTraceServiceRequest, received_us: i64, budget: &mut Budget) -> Result<(RecordBatch, Rejected), Refusal> {
    let mut origins = Vec::new();
    let mut rows = Vec::new();
    let mut rejected = Rejected::default();
    for resource in &request.resource_spans {
        for scope in &resource.scope_spans {
            let origin = origins.len();
            origins.push(Origin::new(resource.resource.as_ref(), scope.scope.as_ref()));
            let origin_size = origins[origin].size();
            budget.charge(origin_size)?;
            for span in &scope.spans {
                let (trace_id, span_id) = match ids(span) {
                    Ok(ids) => ids,
                    Err(why) => {
                        rejected.add(1, || why);
                        continue;
                    }
                };
                let row = Row {
                    origin,
                    span,
                    ts: micros(span.start_time_unix_nano).unwrap_or(received_us),
                    trace_id,
                    span_id,
                    parent_span_id: attributes::id(&span.parent_span_id),
                    attributes: attributes::object(&span.attributes),
                    events: events(span),
                    links: links(span),
                };
                let strings = row.attributes.len() + row.events.len() + row.links.len() + span.name.len() + span.trace_state.len() + 64;
                budget.charge(ROW_OVERHEAD + origin_size + strings)?;
                rows.push(row);
            }
        }
    }
    let mut columns: Vec<ArrayRef> = vec![
        timestamps(rows.iter().map(|r| Some(r.ts))),
        timestamps(rows.iter().map(|r| micros(r.span.end_time_unix_nano))),
        // Exact to the nanosecond, which the microsecond time stamps are not.
        integers(rows.iter().map(|r| {
            let s = r.span;
            (s.start_time_unix_nano != 0 && s.end_time_unix_nano != 0).then(|| {
                (i128::from(s.end_time_unix_nano) - i128::from(s.start_time_unix_nano)).clamp(i64::MIN.into(), i64::MAX.into()) as i64
            })
        })),
        texts(rows.iter().map(|r| Some(r.trace_id.as_str()))),
        texts(rows.iter().map(|r| Some(r.span_id.as_str()))),
        texts(rows.iter().map(|r| r.parent_span_id.as_deref())),
        texts(rows.iter().map(|r| non_empty(&r.span.trace_state))),
        texts(rows.iter().map(|r| Some(r.span.name.as_str()))),
        texts(rows.iter().map(|r| Some(kind(r.span.kind)))),
        texts(rows.iter().map(|r| Some(status(r.span)))),
        texts(rows.iter().map(|r| r.span.status.as_ref().and_then(|s| non_empty(&s.message)))),
        texts(rows.iter().map(|r| Some(r.attributes.as_str()))),
        texts(rows.iter().map(|r| Some(r.events.as_str()))),
        texts(rows.iter().map(|r| Some(r.links.as_str()))),
    ];
    columns.extend(origin_columns(&rows, &origins, |r| r.origin));
    Ok((RecordBatch::try_new(schema(), columns).unwrap_or_else(|e| unreachable!("the columns follow the schema: {e}")), rejected))
}
