//! Rows → one OTLP `ExportMetricsServiceRequest`.

use std::collections::HashMap;

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float64Type, Int64Type, SchemaRef, TimeUnit, TimestampNanosecondType};
use datafusion::arrow::record_batch::RecordBatch;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    metric, number_data_point, AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics,
    ScopeMetrics, Sum,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use tributary_sdk::columns::{column_index, text_at, time_column_index};
use tributary_sdk::dead_letter::rows_as_json;
use tributary_sdk::{ConfigError, DeadLetter};

use crate::{MetricKind, OtlpSinkConfig, Temporality, DEFAULT_BUCKETS};

/// Where each metric's value and attributes come from, checked against the input schema.
#[derive(Debug)]
pub(crate) struct Layout {
    time: usize,
    time_name: String,
    /// What is sent for what the sink aggregates itself (histograms, counters of increases).
    aggregation: Temporality,
    metrics: Vec<MetricLayout>,
    resource: Resource,
    scope: InstrumentationScope,
}

#[derive(Debug)]
struct MetricLayout {
    name: String,
    unit: String,
    description: String,
    kind: MetricKind,
    temporality: Temporality,
    bounds: Vec<f64>,
    value: usize,
    /// Integer columns give `as_int` points, everything else `as_double`.
    integer: bool,
    attributes: Vec<(String, usize)>,
}

fn string_value(s: &str) -> AnyValue {
    AnyValue { value: Some(any_value::Value::StringValue(s.to_string())) }
}

impl Layout {
    pub(crate) fn new(cfg: &OtlpSinkConfig, schema: &SchemaRef) -> Result<Layout, ConfigError> {
        let index = |path: &str, name: &str| column_index(schema, path, name);
        let time = time_column_index(schema, &cfg.time_column)?;
        let mut metrics = Vec::new();
        for (i, m) in cfg.metrics.iter().enumerate() {
            let value = index(&format!("metrics[{i}].value"), &m.value)?;
            let dt = schema.field(value).data_type();
            if !dt.is_numeric() {
                return Err(ConfigError::at(&format!("metrics[{i}].value"), format!("column `{}` is {dt}, expected a number", m.value)));
            }
            let attributes = m
                .attributes
                .iter()
                .map(|a| Ok((a.name().to_string(), index(&format!("metrics[{i}].attributes"), a.column())?)))
                .collect::<Result<Vec<_>, ConfigError>>()?;
            metrics.push(MetricLayout {
                name: m.name.clone(),
                unit: m.unit.clone(),
                description: m.description.clone(),
                kind: m.kind,
                temporality: m.temporality,
                bounds: m.buckets.clone().unwrap_or_else(|| DEFAULT_BUCKETS.to_vec()),
                value,
                integer: dt.is_integer(),
                attributes,
            });
        }
        let mut resource: Vec<KeyValue> =
            cfg.resource.iter().map(|(k, v)| KeyValue { key: k.clone(), value: Some(string_value(v)), ..Default::default() }).collect();
        if !cfg.resource.contains_key("service.name") {
            resource.insert(0, KeyValue { key: "service.name".into(), value: Some(string_value("tributary")), ..Default::default() });
        }
        Ok(Layout {
            time,
            time_name: cfg.time_column.clone(),
            aggregation: cfg.aggregation_temporality,
            metrics,
            resource: Resource { attributes: resource, ..Default::default() },
            scope: InstrumentationScope { name: cfg.scope.clone(), version: env!("CARGO_PKG_VERSION").into(), ..Default::default() },
        })
    }

    /// The request for `rows` (`None` when no row gave a point) and the rows that cannot be
    /// points at all (no event time).
    pub(crate) fn request(
        &self,
        rows: &RecordBatch,
        series: &mut SeriesState,
    ) -> anyhow::Result<(Option<ExportMetricsServiceRequest>, Vec<DeadLetter>)> {
        let times = cast(rows.column(self.time), &DataType::Timestamp(TimeUnit::Nanosecond, None))?;
        let times = times.as_primitive::<TimestampNanosecondType>();
        let mut rejected = Vec::new();
        if times.null_count() > 0 {
            let json = rows_as_json(rows);
            for row in (0..rows.num_rows()).filter(|&r| times.is_null(r)) {
                rejected.push(DeadLetter { payload: json[row].clone(), reason: format!("time column `{}` is null", self.time_name) });
            }
        }
        let mut metrics = Vec::with_capacity(self.metrics.len());
        for (index, m) in self.metrics.iter().enumerate() {
            let values = Values::new(rows.column(m.value), m.integer)?;
            let attributes: Vec<(&str, AttributeColumn)> = m
                .attributes
                .iter()
                .map(|(name, col)| Ok((name.as_str(), AttributeColumn::new(rows.column(*col))?)))
                .collect::<anyhow::Result<_>>()?;
            let point_rows = (0..rows.num_rows()).filter(|&r| !times.is_null(r) && !values.is_null(r));
            let attrs_of = |row: usize| -> Vec<KeyValue> {
                attributes
                    .iter()
                    .filter_map(|(name, col)| {
                        col.value(row).map(|v| KeyValue { key: name.to_string(), value: Some(v), ..Default::default() })
                    })
                    .collect()
            };
            let data = match m.kind {
                MetricKind::Gauge => {
                    let data_points: Vec<NumberDataPoint> = point_rows
                        .map(|r| NumberDataPoint {
                            attributes: attrs_of(r),
                            time_unix_nano: nanos(times.value(r)),
                            value: Some(values.point(r)),
                            ..Default::default()
                        })
                        .collect();
                    (!data_points.is_empty()).then_some(metric::Data::Gauge(Gauge { data_points }))
                }
                MetricKind::Counter => {
                    // Increases become running totals per series when the receiver wants cumulative.
                    let accumulate = m.temporality == Temporality::Delta && self.aggregation == Temporality::Cumulative;
                    let sent = if accumulate { Temporality::Cumulative } else { m.temporality };
                    let data_points: Vec<NumberDataPoint> = point_rows
                        .map(|r| {
                            let attributes = attrs_of(r);
                            let time = nanos(times.value(r));
                            let (start, value) = if accumulate {
                                series.running_total(index, &attributes, time, values.point(r))
                            } else {
                                (series.start(index, &attributes, time, m.temporality), values.point(r))
                            };
                            NumberDataPoint {
                                attributes,
                                start_time_unix_nano: start,
                                time_unix_nano: time,
                                value: Some(value),
                                ..Default::default()
                            }
                        })
                        .collect();
                    (!data_points.is_empty()).then_some(metric::Data::Sum(Sum {
                        data_points,
                        aggregation_temporality: otlp_temporality(sent),
                        is_monotonic: true,
                    }))
                }
                MetricKind::Histogram => {
                    let mut data_points = histogram_points(
                        point_rows.filter(|&r| values.float(r).is_finite()),
                        &attrs_of,
                        |r| (nanos(times.value(r)), values.float(r)),
                        &m.bounds,
                    );
                    if self.aggregation == Temporality::Cumulative {
                        data_points = data_points.into_iter().map(|p| series.accumulate_histogram(index, p)).collect();
                    }
                    (!data_points.is_empty()).then_some(metric::Data::Histogram(Histogram {
                        data_points,
                        aggregation_temporality: otlp_temporality(self.aggregation),
                    }))
                }
            };
            if let Some(data) = data {
                metrics.push(Metric {
                    name: m.name.clone(),
                    description: m.description.clone(),
                    unit: m.unit.clone(),
                    data: Some(data),
                    ..Default::default()
                });
            }
        }
        if metrics.is_empty() {
            return Ok((None, rejected));
        }
        let request = ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(self.resource.clone()),
                scope_metrics: vec![ScopeMetrics { scope: Some(self.scope.clone()), metrics, ..Default::default() }],
                ..Default::default()
            }],
        };
        Ok((Some(request), rejected))
    }
}

fn nanos(t: i64) -> u64 {
    t.max(0) as u64
}

/// One histogram point per attribute set over the rows of this export (delta temporality:
/// from the earliest to the latest row time).
fn histogram_points(
    rows: impl Iterator<Item = usize>,
    attrs_of: &dyn Fn(usize) -> Vec<KeyValue>,
    time_and_value: impl Fn(usize) -> (u64, f64),
    bounds: &[f64],
) -> Vec<HistogramDataPoint> {
    let mut by_series: HashMap<Vec<u8>, HistogramDataPoint> = HashMap::new();
    let mut order = Vec::new();
    for r in rows {
        let attributes = attrs_of(r);
        let (time, v) = time_and_value(r);
        let key = series_key(&attributes);
        let p = by_series.entry(key.clone()).or_insert_with(|| {
            order.push(key);
            HistogramDataPoint {
                attributes,
                start_time_unix_nano: time,
                time_unix_nano: time,
                bucket_counts: vec![0; bounds.len() + 1],
                explicit_bounds: bounds.to_vec(),
                sum: Some(0.0),
                min: Some(v),
                max: Some(v),
                ..Default::default()
            }
        });
        p.count += 1;
        p.sum = p.sum.map(|s| s + v);
        p.min = p.min.map(|m| m.min(v));
        p.max = p.max.map(|m| m.max(v));
        // Bucket i holds (bounds[i-1], bounds[i]]; the last one everything above the last bound.
        p.bucket_counts[bounds.partition_point(|b| *b < v)] += 1;
        p.start_time_unix_nano = p.start_time_unix_nano.min(time);
        p.time_unix_nano = p.time_unix_nano.max(time);
    }
    order.into_iter().filter_map(|k| by_series.remove(&k)).collect()
}

/// A series' identity: its attributes in protobuf encoding (exact, and cheap to hash).
fn series_key(attributes: &[KeyValue]) -> Vec<u8> {
    let mut key = Vec::new();
    for a in attributes {
        a.encode_length_delimited(&mut key).expect("Vec grows");
    }
    key
}

fn otlp_temporality(t: Temporality) -> i32 {
    match t {
        Temporality::Cumulative => AggregationTemporality::Cumulative as i32,
        Temporality::Delta => AggregationTemporality::Delta as i32,
    }
}

/// What the sink remembers per series (metric and attribute set), as the OpenTelemetry SDK's
/// cumulative aggregation does: when the series was first and last seen (start times), and for
/// cumulative output the running total of a counter of increases or the accumulated histogram.
#[derive(Debug, Default)]
pub(crate) struct SeriesState {
    series: HashMap<(usize, Vec<u8>), Series>,
}

#[derive(Debug)]
struct Series {
    first: u64,
    last: u64,
    total: Option<number_data_point::Value>,
    histogram: Option<HistogramDataPoint>,
}

/// Beyond this many series the state starts over (start times reset, so receivers see a counter
/// reset), so an attribute with unbounded values cannot grow the sink's memory without limit.
const MAX_SERIES: usize = 100_000;

impl SeriesState {
    fn entry(&mut self, metric: usize, attributes: &[KeyValue], time: u64) -> &mut Series {
        if self.series.len() >= MAX_SERIES {
            self.series.clear();
        }
        let s =
            self.series.entry((metric, series_key(attributes))).or_insert(Series { first: time, last: time, total: None, histogram: None });
        s.first = s.first.min(time);
        s
    }

    /// The start time of a counter point: a cumulative series starts when this sink first saw it;
    /// a delta point starts where the series' previous point ended.
    fn start(&mut self, metric: usize, attributes: &[KeyValue], time: u64, temporality: Temporality) -> u64 {
        let s = self.entry(metric, attributes, time);
        let start = match temporality {
            Temporality::Cumulative => s.first,
            Temporality::Delta if s.last < time => s.last,
            Temporality::Delta => time,
        };
        s.last = s.last.max(time);
        start
    }

    /// Adds an increase to the series' running total: (start time, total so far).
    fn running_total(
        &mut self,
        metric: usize,
        attributes: &[KeyValue],
        time: u64,
        increase: number_data_point::Value,
    ) -> (u64, number_data_point::Value) {
        use number_data_point::Value::{AsDouble, AsInt};
        let s = self.entry(metric, attributes, time);
        s.last = s.last.max(time);
        let total = match (s.total, increase) {
            (None, v) => v,
            (Some(AsInt(a)), AsInt(b)) => AsInt(a.saturating_add(b)),
            (Some(AsDouble(a)), AsDouble(b)) => AsDouble(a + b),
            // A metric's column has one type; mixed values only after a schema change.
            (Some(AsInt(a)), AsDouble(b)) => AsDouble(a as f64 + b),
            (Some(AsDouble(a)), AsInt(b)) => AsDouble(a + b as f64),
        };
        s.total = Some(total);
        (s.first, total)
    }

    /// Folds one export's histogram point into the series' cumulative one and returns that.
    fn accumulate_histogram(&mut self, metric: usize, point: HistogramDataPoint) -> HistogramDataPoint {
        let s = self.entry(metric, &point.attributes, point.start_time_unix_nano);
        let first = s.first;
        let merged = match s.histogram.take() {
            None => point,
            Some(mut acc) => {
                acc.count += point.count;
                acc.sum = Some(acc.sum.unwrap_or(0.0) + point.sum.unwrap_or(0.0));
                acc.min = acc.min.zip(point.min).map(|(a, b)| a.min(b)).or(point.min);
                acc.max = acc.max.zip(point.max).map(|(a, b)| a.max(b)).or(point.max);
                for (a, b) in acc.bucket_counts.iter_mut().zip(&point.bucket_counts) {
                    *a += b;
                }
                acc.time_unix_nano = acc.time_unix_nano.max(point.time_unix_nano);
                acc
            }
        };
        let merged = HistogramDataPoint { start_time_unix_nano: first, ..merged };
        s.histogram = Some(merged.clone());
        merged
    }
}

/// A value column read once as i64 or f64.
enum Values {
    Int(ArrayRef),
    Float(ArrayRef),
}

impl Values {
    fn new(col: &ArrayRef, integer: bool) -> anyhow::Result<Values> {
        Ok(if integer { Values::Int(cast(col, &DataType::Int64)?) } else { Values::Float(cast(col, &DataType::Float64)?) })
    }
    fn is_null(&self, row: usize) -> bool {
        match self {
            Values::Int(a) | Values::Float(a) => a.is_null(row),
        }
    }
    fn point(&self, row: usize) -> number_data_point::Value {
        match self {
            Values::Int(a) => number_data_point::Value::AsInt(a.as_primitive::<Int64Type>().value(row)),
            Values::Float(a) => number_data_point::Value::AsDouble(a.as_primitive::<Float64Type>().value(row)),
        }
    }
    fn float(&self, row: usize) -> f64 {
        match self {
            Values::Int(a) => a.as_primitive::<Int64Type>().value(row) as f64,
            Values::Float(a) => a.as_primitive::<Float64Type>().value(row),
        }
    }
}

/// An attribute column with its OTLP value type: strings, integers, doubles and booleans keep
/// their type; anything else (timestamps, decimals) is written as its text.
enum AttributeColumn {
    Int(ArrayRef),
    Double(ArrayRef),
    Bool(ArrayRef),
    Text(ArrayRef),
}

impl AttributeColumn {
    fn new(col: &ArrayRef) -> anyhow::Result<AttributeColumn> {
        let dt = col.data_type();
        Ok(if dt.is_integer() {
            AttributeColumn::Int(cast(col, &DataType::Int64)?)
        } else if dt.is_floating() {
            AttributeColumn::Double(cast(col, &DataType::Float64)?)
        } else if *dt == DataType::Boolean {
            AttributeColumn::Bool(col.clone())
        } else {
            AttributeColumn::Text(col.clone())
        })
    }

    fn value(&self, row: usize) -> Option<AnyValue> {
        let value = match self {
            AttributeColumn::Int(a) if a.is_valid(row) => any_value::Value::IntValue(a.as_primitive::<Int64Type>().value(row)),
            AttributeColumn::Double(a) if a.is_valid(row) => any_value::Value::DoubleValue(a.as_primitive::<Float64Type>().value(row)),
            AttributeColumn::Bool(a) if a.is_valid(row) => any_value::Value::BoolValue(a.as_boolean().value(row)),
            AttributeColumn::Text(a) => any_value::Value::StringValue(text_at(a, row)?),
            _ => return None,
        };
        Some(AnyValue { value: Some(value) })
    }
}
