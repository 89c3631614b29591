//! Rows → one remote-write request: each configured metric gives a sample per row, its series
//! named by the metric and labelled by columns, as the `otlp` sink builds its data points.

use std::collections::HashMap;

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float64Type, SchemaRef, TimeUnit, TimestampMillisecondType};
use datafusion::arrow::record_batch::RecordBatch;
use tributary_sdk::columns::{column_index, text_at, time_column_index};
use tributary_sdk::dead_letter::rows_as_json;
use tributary_sdk::{ConfigError, DeadLetter};

use crate::wire::{is_label_name, is_metric_name, Label, Sample, TimeSeries, WriteRequest};
use crate::RemoteWriteConfig;

/// Where each metric's value and labels come from, checked against the input schema at build.
#[derive(Debug)]
pub(crate) struct Layout {
    time: usize,
    time_name: String,
    metrics: Vec<MetricLayout>,
    /// `external_labels`, on every series.
    external: Vec<Label>,
}

#[derive(Debug)]
struct MetricLayout {
    name: String,
    value: usize,
    /// Label name and the column it is read from.
    labels: Vec<(String, usize)>,
}

impl Layout {
    pub(crate) fn new(cfg: &RemoteWriteConfig, schema: &SchemaRef) -> Result<Layout, ConfigError> {
        let time = time_column_index(schema, &cfg.time_column)?;
        for name in cfg.external_labels.keys() {
            if !is_label_name(name) {
                return Err(ConfigError::at(
                    "external_labels",
                    format!("`{name}` is not a Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*, no `__` prefix)"),
                ));
            }
        }
        let mut metrics = Vec::new();
        for (i, m) in cfg.metrics.iter().enumerate() {
            let at = |field: &str| format!("metrics[{i}].{field}");
            if !is_metric_name(&m.name) {
                return Err(ConfigError::at(
                    &at("name"),
                    format!("`{}` is not a Prometheus metric name ([a-zA-Z_:][a-zA-Z0-9_:]*)", m.name),
                ));
            }
            let value = column_index(schema, &at("value"), &m.value)?;
            let dt = schema.field(value).data_type();
            if !dt.is_numeric() {
                return Err(ConfigError::at(&at("value"), format!("column `{}` is {dt}, expected a number", m.value)));
            }
            let mut labels: Vec<(String, usize)> = Vec::new();
            for l in &m.labels {
                let name = l.name();
                if !is_label_name(name) {
                    return Err(ConfigError::at(
                        &at("labels"),
                        format!("`{name}` is not a Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*, no `__` prefix)"),
                    ));
                }
                if labels.iter().any(|(n, _)| n == name) || cfg.external_labels.contains_key(name) {
                    return Err(ConfigError::at(
                        &at("labels"),
                        format!("label `{name}` is given twice (a series has one value per label)"),
                    ));
                }
                labels.push((name.to_string(), column_index(schema, &at("labels"), l.column())?));
            }
            metrics.push(MetricLayout { name: m.name.clone(), value, labels });
        }
        let external = cfg.external_labels.iter().map(|(name, value)| Label { name: name.clone(), value: value.clone() }).collect();
        Ok(Layout { time, time_name: cfg.time_column.clone(), metrics, external })
    }

    /// The request for `rows` (`None` when no row gave a sample), and the rows that cannot be
    /// samples at all (no event time). A null value gives no sample; a null or empty label value
    /// leaves the label out, as Prometheus reads an empty one.
    pub(crate) fn request(&self, rows: &RecordBatch) -> anyhow::Result<(Option<WriteRequest>, Vec<DeadLetter>)> {
        let times = cast(rows.column(self.time), &DataType::Timestamp(TimeUnit::Millisecond, None))?;
        let times = times.as_primitive::<TimestampMillisecondType>();
        let mut rejected = Vec::new();
        if times.null_count() > 0 {
            let json = rows_as_json(rows);
            for row in (0..rows.num_rows()).filter(|&r| times.is_null(r)) {
                rejected.push(DeadLetter { payload: json[row].clone(), reason: format!("time column `{}` is null", self.time_name) });
            }
        }
        let mut series: HashMap<Vec<Label>, Vec<Sample>> = HashMap::new();
        for m in &self.metrics {
            let values = cast(rows.column(m.value), &DataType::Float64)?;
            let values = values.as_primitive::<Float64Type>();
            let label_columns: Vec<_> = m.labels.iter().map(|(name, col)| (name, rows.column(*col))).collect();
            for row in (0..rows.num_rows()).filter(|&r| !times.is_null(r) && !values.is_null(r)) {
                let mut labels = Vec::with_capacity(1 + self.external.len() + label_columns.len());
                labels.push(Label { name: "__name__".into(), value: m.name.clone() });
                labels.extend(self.external.iter().cloned());
                for (name, column) in &label_columns {
                    if let Some(value) = text_at(column, row).filter(|v| !v.is_empty()) {
                        labels.push(Label { name: name.to_string(), value });
                    }
                }
                labels.sort_by(|a, b| a.name.cmp(&b.name));
                series.entry(labels).or_default().push(Sample { value: values.value(row), timestamp: times.value(row) });
            }
        }
        if series.is_empty() {
            return Ok((None, rejected));
        }
        let mut timeseries: Vec<TimeSeries> = series
            .into_iter()
            .map(|(labels, mut samples)| {
                samples.sort_by_key(|s| s.timestamp);
                TimeSeries { labels, samples }
            })
            .collect();
        timeseries.sort_by(|a, b| a.labels.cmp(&b.labels));
        Ok((Some(WriteRequest { timeseries }), rejected))
    }
}
