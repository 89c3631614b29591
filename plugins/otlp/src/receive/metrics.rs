//! `<id>.metrics`: one row per data point.

use std::ops::Range;
use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{ArrayRef, BooleanArray, ListArray};
use datafusion::arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::metrics::v1::{metric::Data, number_data_point, AggregationTemporality, Metric};

use super::attributes;
use super::rows::{
    floats, integers, micros, non_empty, origin_columns, origin_fields, texts, timestamp, timestamps, Budget, Origin, Refusal, Rejected,
    ROW_OVERHEAD,
};

/// The output's schema: one for every request, built once (each request used to build its own,
/// a few dozen allocations of field names).
pub fn schema() -> SchemaRef {
    static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(build_schema);
    SCHEMA.clone()
}

fn build_schema() -> SchemaRef {
    let list = |item: DataType| DataType::List(Arc::new(Field::new("item", item, true)));
    let mut fields = vec![
        timestamp("ts", false),
        timestamp("start_ts", true),
        Field::new("name", DataType::Utf8, false),
        Field::new("description", DataType::Utf8, true),
        Field::new("unit", DataType::Utf8, true),
        Field::new("type", DataType::Utf8, false),
        Field::new("temporality", DataType::Utf8, true),
        Field::new("monotonic", DataType::Boolean, true),
        Field::new("value", DataType::Float64, true),
        Field::new("count", DataType::Int64, true),
        Field::new("sum", DataType::Float64, true),
        Field::new("min", DataType::Float64, true),
        Field::new("max", DataType::Float64, true),
        Field::new("bucket_bounds", list(DataType::Float64), true),
        Field::new("bucket_counts", list(DataType::Int64), true),
        Field::new("quantiles", list(DataType::Float64), true),
        Field::new("quantile_values", list(DataType::Float64), true),
        Field::new("attributes", DataType::Utf8, false),
    ];
    fields.extend(origin_fields());
    Arc::new(Schema::new(fields))
}

#[derive(Default)]
struct Row<'a> {
    origin: usize,
    metric: Option<&'a Metric>,
    ts: Option<i64>,
    start_ts: Option<i64>,
    kind: &'static str,
    temporality: Option<&'static str>,
    monotonic: Option<bool>,
    value: Option<f64>,
    count: Option<i64>,
    sum: Option<f64>,
    min: Option<f64>,
    max: Option<f64>,
    bucket_bounds: Option<&'a [f64]>,
    bucket_counts: Option<Vec<i64>>,
    quantiles: Option<Vec<(f64, f64)>>,
    /// Where its attributes' text is in the request's attribute texts (one string for all rows).
    attributes: Range<usize>,
}

fn temporality(code: i32) -> Option<&'static str> {
    match AggregationTemporality::try_from(code) {
        Ok(AggregationTemporality::Delta) => Some("delta"),
        Ok(AggregationTemporality::Cumulative) => Some("cumulative"),
        _ => None,
    }
}

/// A count as the rows' signed integer (a `u64` past `i64::MAX` is refused, not wrapped).
fn count(n: u64) -> Option<i64> {
    i64::try_from(n).ok()
}

/// The rows of a request, what was refused, or why the whole request is.
pub fn rows<'r>(
    request: &'r ExportMetricsServiceRequest,
    received_us: i64,
    budget: &mut Budget,
) -> Result<(RecordBatch, Rejected), Refusal> {
    let mut origins = Vec::new();
    let mut rows: Vec<Row<'r>> = Vec::new();
    let mut attribute_texts = String::new();
    let mut rejected = Rejected::default();
    for resource in &request.resource_metrics {
        for scope in &resource.scope_metrics {
            let origin = origins.len();
            origins.push(Origin::new(resource.resource.as_ref(), scope.scope.as_ref()));
            let origin_size = origins[origin].size();
            budget.charge(origin_size)?;
            for metric in &scope.metrics {
                let shared = ROW_OVERHEAD + origin_size + metric.name.len() + metric.description.len() + metric.unit.len();
                let mut base = |attrs: &[KeyValue], time: u64, start: u64| {
                    let at = attribute_texts.len();
                    attributes::write_object(attrs, &mut attribute_texts);
                    Row {
                        origin,
                        metric: Some(metric),
                        ts: Some(micros(time).unwrap_or(received_us)),
                        start_ts: micros(start),
                        attributes: at..attribute_texts.len(),
                        ..Row::default()
                    }
                };
                // Charged as each row is made, so a crafted request stops at the budget rather
                // than after its rows filled memory.
                let mut push = |row: Row<'r>| {
                    let lists = row.bucket_bounds.map_or(0, |b| b.len() * 8) + row.bucket_counts.as_ref().map_or(0, |c| c.len() * 8);
                    let quantiles = row.quantiles.as_ref().map_or(0, |q| q.len() * 16);
                    budget.charge(shared + row.attributes.len() + lists + quantiles)?;
                    rows.push(row);
                    Ok::<_, Refusal>(())
                };
                match &metric.data {
                    None => {}
                    Some(Data::Gauge(g)) => {
                        for p in &g.data_points {
                            match number(p.value) {
                                Some(value) => push(Row { kind: "gauge", value: Some(value), ..base(&p.attributes, p.time_unix_nano, p.start_time_unix_nano) })?,
                                None => rejected.add(1, || format!("metric `{}`: a gauge point without a value", metric.name)),
                            }
                        }
                    }
                    Some(Data::Sum(s)) => {
                        for p in &s.data_points {
                            match number(p.value) {
                                Some(value) => push(Row {
                                    kind: "sum",
                                    temporality: temporality(s.aggregation_temporality),
                                    monotonic: Some(s.is_monotonic),
                                    value: Some(value),
                                    ..base(&p.attributes, p.time_unix_nano, p.start_time_unix_nano)
                                })?,
                                None => rejected.add(1, || format!("metric `{}`: a sum point without a value", metric.name)),
                            }
                        }
                    }
                    Some(Data::Histogram(h)) => {
                        for p in &h.data_points {
                            let buckets = p.bucket_counts.iter().map(|&n| count(n)).collect::<Option<Vec<i64>>>();
                            let shape_ok = p.bucket_counts.is_empty() || p.bucket_counts.len() == p.explicit_bounds.len() + 1;
                            match (count(p.count), buckets) {
                                _ if !shape_ok => rejected.add(1, || {
                                    format!(
                                        "metric `{}`: a histogram point with {} bucket counts for {} bounds (needs one more count than bounds)",
                                        metric.name,
                                        p.bucket_counts.len(),
                                        p.explicit_bounds.len()
                                    )
                                }),
                                (Some(n), Some(buckets)) => push(Row {
                                    kind: "histogram",
                                    temporality: temporality(h.aggregation_temporality),
                                    count: Some(n),
                                    sum: p.sum,
                                    min: p.min,
                                    max: p.max,
                                    bucket_bounds: Some(&p.explicit_bounds),
                                    bucket_counts: Some(buckets),
                                    ..base(&p.attributes, p.time_unix_nano, p.start_time_unix_nano)
                                })?,
                                _ => rejected.add(1, || format!("metric `{}`: a histogram count above 2^63-1", metric.name)),
                            }
                        }
                    }
                    Some(Data::Summary(s)) => {
                        for p in &s.data_points {
                            match count(p.count) {
                                Some(n) => push(Row {
                                    kind: "summary",
                                    count: Some(n),
                                    sum: Some(p.sum),
                                    quantiles: Some(p.quantile_values.iter().map(|q| (q.quantile, q.value)).collect()),
                                    ..base(&p.attributes, p.time_unix_nano, p.start_time_unix_nano)
                                })?,
                                None => rejected.add(1, || format!("metric `{}`: a summary count above 2^63-1", metric.name)),
                            }
                        }
                    }
                    Some(Data::ExponentialHistogram(h)) => rejected.add(h.data_points.len() as u64, || {
                        format!(
                            "metric `{}`: exponential histograms are not supported; configure the exporter's explicit-bucket histogram aggregation",
                            metric.name
                        )
                    }),
                }
            }
        }
    }
    Ok((batch(&rows, &attribute_texts, &origins), rejected))
}

fn number(value: Option<number_data_point::Value>) -> Option<f64> {
    match value? {
        number_data_point::Value::AsDouble(f) => Some(f),
        number_data_point::Value::AsInt(i) => Some(i as f64),
    }
}

fn batch(rows: &[Row], attribute_texts: &str, origins: &[Origin]) -> RecordBatch {
    fn metric<'r>(r: &Row<'r>) -> &'r Metric {
        r.metric.unwrap_or_else(|| unreachable!("every row has its metric"))
    }
    let float_list = |f: fn(&Row) -> Option<Vec<f64>>| {
        Arc::new(ListArray::from_iter_primitive::<Float64Type, _, _>(rows.iter().map(|r| f(r).map(|v| v.into_iter().map(Some)))))
            as ArrayRef
    };
    let mut columns: Vec<ArrayRef> = vec![
        timestamps(rows.iter().map(|r| r.ts)),
        timestamps(rows.iter().map(|r| r.start_ts)),
        texts(rows.iter().map(|r| Some(metric(r).name.as_str()))),
        texts(rows.iter().map(|r| non_empty(&metric(r).description))),
        texts(rows.iter().map(|r| non_empty(&metric(r).unit))),
        texts(rows.iter().map(|r| Some(r.kind))),
        texts(rows.iter().map(|r| r.temporality)),
        Arc::new(rows.iter().map(|r| r.monotonic).collect::<BooleanArray>()),
        floats(rows.iter().map(|r| r.value)),
        integers(rows.iter().map(|r| r.count)),
        floats(rows.iter().map(|r| r.sum)),
        floats(rows.iter().map(|r| r.min)),
        floats(rows.iter().map(|r| r.max)),
        float_list(|r| r.bucket_bounds.map(<[f64]>::to_vec)),
        Arc::new(ListArray::from_iter_primitive::<Int64Type, _, _>(
            rows.iter().map(|r| r.bucket_counts.as_ref().map(|c| c.iter().map(|&n| Some(n)))),
        )),
        float_list(|r| r.quantiles.as_ref().map(|q| q.iter().map(|(q, _)| *q).collect())),
        float_list(|r| r.quantiles.as_ref().map(|q| q.iter().map(|(_, v)| *v).collect())),
        texts(rows.iter().map(|r| Some(&attribute_texts[r.attributes.clone()]))),
    ];
    columns.extend(origin_columns(rows, origins, |r| r.origin));
    RecordBatch::try_new(schema(), columns).unwrap_or_else(|e| unreachable!("the columns follow the schema: {e}"))
}
