//! `<id>.logs`: one row per log record.

use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{ArrayRef, Int32Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::logs::v1::LogRecord;

use super::attributes;
use super::rows::{micros, non_empty, origin_columns, origin_fields, texts, timestamp, timestamps, Budget, Origin, Refusal, ROW_OVERHEAD};

/// The output's schema: one for every request, built once (each request used to build its own,
/// a few dozen allocations of field names).
pub fn schema() -> SchemaRef {
    static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(build_schema);
    SCHEMA.clone()
}

fn build_schema() -> SchemaRef {
    let mut fields = vec![
        timestamp("ts", false),
        timestamp("observed_ts", true),
        Field::new("severity_number", DataType::Int32, true),
        Field::new("severity_text", DataType::Utf8, true),
        Field::new("body", DataType::Utf8, true),
        Field::new("attributes", DataType::Utf8, false),
        Field::new("event_name", DataType::Utf8, true),
        Field::new("trace_id", DataType::Utf8, true),
        Field::new("span_id", DataType::Utf8, true),
    ];
    fields.extend(origin_fields());
    Arc::new(Schema::new(fields))
}

struct Row<'a> {
    origin: usize,
    record: &'a LogRecord,
    ts: i64,
    body: Option<String>,
    attributes: String,
}

/// The rows of a request, or why the whole request is refused. Every log record can be a row.
pub fn rows(request: &ExportLogsServiceRequest, received_us: i64, budget: &mut Budget) -> Result<RecordBatch, Refusal> {
    let mut origins = Vec::new();
    let mut rows = Vec::new();
    for resource in &request.resource_logs {
        for scope in &resource.scope_logs {
            let origin = origins.len();
            origins.push(Origin::new(resource.resource.as_ref(), scope.scope.as_ref()));
            let origin_size = origins[origin].size();
            budget.charge(origin_size)?;
            for record in &scope.log_records {
                let row = Row {
                    origin,
                    record,
                    // The event's time; else when the SDK saw it; else when it arrived here.
                    ts: micros(record.time_unix_nano).or(micros(record.observed_time_unix_nano)).unwrap_or(received_us),
                    body: attributes::body(record.body.as_ref()),
                    attributes: attributes::object(&record.attributes),
                };
                let strings = row.body.as_ref().map_or(0, String::len) + row.attributes.len() + record.severity_text.len() + 48;
                budget.charge(ROW_OVERHEAD + origin_size + strings)?;
                rows.push(row);
            }
        }
    }
    let ids = |f: fn(&LogRecord) -> &[u8]| -> Vec<Option<String>> { rows.iter().map(|r| attributes::id(f(r.record))).collect() };
    let (trace_ids, span_ids) = (ids(|r| &r.trace_id), ids(|r| &r.span_id));
    let mut columns: Vec<ArrayRef> = vec![
        timestamps(rows.iter().map(|r| Some(r.ts))),
        timestamps(rows.iter().map(|r| micros(r.record.observed_time_unix_nano))),
        // 0 is SEVERITY_NUMBER_UNSPECIFIED.
        Arc::new(rows.iter().map(|r| (r.record.severity_number != 0).then_some(r.record.severity_number)).collect::<Int32Array>()),
        texts(rows.iter().map(|r| non_empty(&r.record.severity_text))),
        texts(rows.iter().map(|r| r.body.as_deref())),
        texts(rows.iter().map(|r| Some(r.attributes.as_str()))),
        texts(rows.iter().map(|r| non_empty(&r.record.event_name))),
        texts(trace_ids.iter().map(Option::as_deref)),
        texts(span_ids.iter().map(Option::as_deref)),
    ];
    columns.extend(origin_columns(&rows, &origins, |r| r.origin));
    Ok(RecordBatch::try_new(schema(), columns).unwrap_or_else(|e| unreachable!("the columns follow the schema: {e}")))
}
