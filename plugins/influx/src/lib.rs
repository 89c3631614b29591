//! `influx` sink: rows as InfluxDB line protocol, written to the v2 write API (`/api/v2/write`)
//! with the `influxdb2` client. InfluxDB 2 and VictoriaMetrics both accept it.
//!
//! Each row becomes one point: measurement (fixed or from a column), tag columns (null or empty
//! values are left out — line protocol has no empty tags), field columns (nulls left out), and the
//! time column in nanoseconds. Escaping of spaces, commas, equals signs and quotes is the client's
//! (`DataPoint`). Rows that cannot be a point (no time, no field) and a batch a 4xx answer refuses
//! come back to the engine as dead letters with the reason; transport errors, timeouts, 5xx and
//! 429 keep the rows buffered and the engine retries.

use std::time::Duration;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float64Type, Int64Type, SchemaRef, TimeUnit, TimestampNanosecondType};
use influxdb2::models::{DataPoint, FieldValue};
use serde::Deserialize;
use tributary_sdk::buffer::RowBuffer;
use tributary_sdk::columns::{column_index, text_at, time_column_index};
use tributary_sdk::dead_letter::rows_as_json;
use tributary_sdk::retry::WriteError;
use tributary_sdk::{
    single_input_schema, BatchConfig, Batching, ComponentConfig, ConfigError, DeadLetter, Durability, Period, Secret, Sink, SinkContext,
    SinkPlugin, Transient, Written,
};

/// Config of an `influx` sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InfluxSinkConfig {
    /// Base URL of the server, e.g. `http://127.0.0.1:8086` (InfluxDB) or `http://127.0.0.1:8428`
    /// (VictoriaMetrics); `/api/v2/write` is appended.
    pub url: String,
    /// Organization (InfluxDB 2; ignored by VictoriaMetrics).
    #[serde(default)]
    pub org: String,
    /// Bucket (InfluxDB 2; VictoriaMetrics ignores it unless told otherwise).
    pub bucket: String,
    /// API token, from `${ENV}`; sent as `Authorization: Token …`.
    #[serde(default)]
    pub token: Option<Secret>,
    /// A fixed measurement name…
    #[serde(default)]
    pub measurement: Option<String>,
    /// …or the string column that holds it per row.
    #[serde(default)]
    pub measurement_column: Option<String>,
    /// Columns written as tags (any type; values are written as text).
    #[serde(default)]
    pub tags: Vec<String>,
    /// Columns written as fields (numbers, booleans, strings). Default: every other column.
    #[serde(default)]
    pub fields: Option<Vec<String>>,
    /// Timestamp column (default `ts`).
    #[serde(default = "default_time_column")]
    pub time_column: String,
    /// Write at `max_rows` buffered rows (default 5000) or every `max_age` (default 1s).
    #[serde(default)]
    pub batch: BatchConfig,
    /// A write that takes longer fails transiently and is retried (default 30s).
    #[serde(default = "default_timeout")]
    pub timeout: Period,
}

fn default_timeout() -> Period {
    Period(Duration::from_secs(30))
}

fn default_time_column() -> String {
    "ts".into()
}
const DEFAULT_BATCHING: Batching = Batching { max_rows: 5000, max_age: Duration::from_secs(1) };

/// How each column of the input is used.
#[derive(Debug, Clone)]
struct Layout {
    measurement: Measurement,
    tags: Vec<usize>,
    fields: Vec<usize>,
    time: usize,
}

#[derive(Debug, Clone)]
enum Measurement {
    Fixed(String),
    Column(usize),
}

fn is_field_type(dt: &DataType) -> bool {
    dt.is_numeric() || matches!(dt, DataType::Boolean | DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

impl Layout {
    fn new(cfg: &InfluxSinkConfig, schema: &SchemaRef) -> Result<Layout, ConfigError> {
        let index = |path: &str, name: &str| column_index(schema, path, name);
        let measurement = match (&cfg.measurement, &cfg.measurement_column) {
            (Some(m), None) if !m.is_empty() => Measurement::Fixed(m.clone()),
            (None, Some(c)) => {
                let i = index("measurement_column", c)?;
                if !matches!(schema.field(i).data_type(), DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View) {
                    return Err(ConfigError::at("measurement_column", format!("column `{c}` must be a string")));
                }
                Measurement::Column(i)
            }
            _ => return Err(ConfigError::at("measurement", "set exactly one of `measurement` (a name) or `measurement_column`")),
        };
        let time = time_column_index(schema, &cfg.time_column)?;
        let tags = cfg.tags.iter().map(|t| index("tags", t)).collect::<Result<Vec<_>, _>>()?;
        let used = |i: usize| i == time || tags.contains(&i) || matches!(measurement, Measurement::Column(m) if m == i);
        let fields = match &cfg.fields {
            Some(list) => {
                let idx = list.iter().map(|f| index("fields", f)).collect::<Result<Vec<_>, _>>()?;
                for &i in &idx {
                    if !is_field_type(schema.field(i).data_type()) {
                        return Err(ConfigError::at(
                            "fields",
                            format!(
                                "column `{}` is {}; fields are numbers, booleans or strings",
                                schema.field(i).name(),
                                schema.field(i).data_type()
                            ),
                        ));
                    }
                }
                idx
            }
            None => (0..schema.fields().len()).filter(|&i| !used(i) && is_field_type(schema.field(i).data_type())).collect(),
        };
        if fields.is_empty() {
            return Err(ConfigError::at("fields", "no field columns: a point needs at least one field"));
        }
        Ok(Layout { measurement, tags, fields, time })
    }
}

pub struct InfluxSinkPlugin;

impl SinkPlugin for InfluxSinkPlugin {
    fn type_name(&self) -> &'static str {
        "influx"
    }
    fn delivery(&self) -> &'static [tributary_sdk::delivery::SinkDelivery] {
        &[tributary_sdk::delivery::RECEIVER_2XX]
    }
    fn build(&self, config: &ComponentConfig, inputs: &[(String, SchemaRef)]) -> Result<Box<dyn Sink>, ConfigError> {
        let cfg: InfluxSinkConfig = config.decode()?;
        if !(cfg.url.starts_with("http://") || cfg.url.starts_with("https://")) {
            return Err(ConfigError::at("url", format!("`{}` is not an http(s) URL", tributary_sdk::redact::url_for_display(&cfg.url))));
        }
        let schema = single_input_schema(inputs)?;
        let layout = Layout::new(&cfg, &schema)?;
        let token = cfg.token.as_ref().map(|t| t.expose().to_string()).unwrap_or_default();
        let client = influxdb2::Client::new(cfg.url.trim_end_matches('/'), cfg.org.clone(), token);
        let batching = cfg.batch.resolve(DEFAULT_BATCHING)?;
        let buffer = RowBuffer::new(schema, batching.max_rows);
        Ok(Box::new(InfluxSink { cfg, layout, client, buffer, batching }))
    }
}

pub struct InfluxSink {
    cfg: InfluxSinkConfig,
    layout: Layout,
    client: influxdb2::Client,
    buffer: RowBuffer,
    batching: Batching,
}

/// The rows as points, the row index of each point, and the rows that cannot be points.
fn points(batch: &RecordBatch, layout: &Layout) -> anyhow::Result<(Vec<DataPoint>, Vec<usize>, Vec<DeadLetter>)> {
    let schema = batch.schema();
    let times = cast(batch.column(layout.time), &DataType::Timestamp(TimeUnit::Nanosecond, None))?;
    let times = times.as_primitive::<TimestampNanosecondType>();
    // Numbers are read as i64 (integers) or f64 (floats) once per column.
    enum Col {
        Int(ArrayRef),
        Float(ArrayRef),
        Bool(ArrayRef),
        Text(ArrayRef),
    }
    let fields: Vec<(String, Col)> = layout
        .fields
        .iter()
        .map(|&i| {
            let c = batch.column(i);
            let dt = c.data_type();
            let col = if dt.is_integer() {
                Col::Int(cast(c, &DataType::Int64)?)
            } else if dt.is_floating() || dt.is_numeric() {
                Col::Float(cast(c, &DataType::Float64)?)
            } else if *dt == DataType::Boolean {
                Col::Bool(c.clone())
            } else {
                Col::Text(c.clone())
            };
            Ok((schema.field(i).name().clone(), col))
        })
        .collect::<anyhow::Result<_>>()?;
    let tag_names: Vec<&String> = layout.tags.iter().map(|&i| schema.field(i).name()).collect();
    let rows_json = std::cell::OnceCell::new();
    let mut out = Vec::with_capacity(batch.num_rows());
    let mut point_rows = Vec::with_capacity(batch.num_rows());
    let mut rejected = Vec::new();
    for row in 0..batch.num_rows() {
        let reject = |reason: String, rejected: &mut Vec<DeadLetter>| {
            let json: &Vec<String> = rows_json.get_or_init(|| rows_as_json(batch));
            rejected.push(DeadLetter { payload: json[row].clone(), reason });
        };
        if times.is_null(row) {
            reject(format!("time column `{}` is null", schema.field(layout.time).name()), &mut rejected);
            continue;
        }
        let measurement = match &layout.measurement {
            Measurement::Fixed(m) => m.clone(),
            Measurement::Column(i) => match text_at(batch.column(*i), row) {
                Some(m) if !m.is_empty() => m,
                _ => {
                    reject(format!("measurement column `{}` is null or empty", schema.field(*i).name()), &mut rejected);
                    continue;
                }
            },
        };
        let mut point = DataPoint::builder(measurement);
        for (&i, name) in layout.tags.iter().zip(&tag_names) {
            if let Some(v) = text_at(batch.column(i), row).filter(|v| !v.is_empty()) {
                point = point.tag(name.as_str(), v);
            }
        }
        let mut n = 0;
        for (name, col) in &fields {
            let value = match col {
                Col::Int(a) if !a.is_null(row) => FieldValue::I64(a.as_primitive::<Int64Type>().value(row)),
                Col::Float(a) if !a.is_null(row) => {
                    let v = a.as_primitive::<Float64Type>().value(row);
                    if !v.is_finite() {
                        continue; // line protocol has no NaN or infinity
                    }
                    FieldValue::F64(v)
                }
                Col::Bool(a) if !a.is_null(row) => FieldValue::Bool(a.as_boolean().value(row)),
                Col::Text(a) => match text_at(a, row) {
                    Some(s) => FieldValue::String(s),
                    None => continue,
                },
                _ => continue,
            };
            point = point.field(name.as_str(), value);
            n += 1;
        }
        if n == 0 {
            reject("every field of the row is null (a point needs at least one field)".into(), &mut rejected);
            continue;
        }
        match point.timestamp(times.value(row)).build() {
            Ok(p) => {
                out.push(p);
                point_rows.push(row);
            }
            Err(e) => reject(format!("not a valid point: {e}"), &mut rejected),
        }
    }
    Ok((out, point_rows, rejected))
}

impl InfluxSink {
    /// Writes everything buffered. Rows that cannot be points, or that the server refuses (a
    /// 4xx other than 429), come back as dead letters; transport errors, timeouts, 5xx and 429
    /// leave the buffer as it was for the engine's retry.
    async fn write_buffer(&mut self) -> Result<Vec<DeadLetter>, Transient> {
        let Some(rows) = self.buffer.take()? else {
            return Ok(Vec::new());
        };
        let (points, point_rows, mut rejected) = points(&rows, &self.layout)?;
        if points.is_empty() {
            return Ok(rejected);
        }
        let write = self.client.write(&self.cfg.bucket, futures::stream::iter(points));
        let outcome = match tokio::time::timeout(self.cfg.timeout.0, write).await {
            Err(_) => Err(WriteError::Transient(format!("no answer within {:?}", self.cfg.timeout.0))),
            Ok(Ok(())) => Ok(()),
            Ok(Err(influxdb2::RequestError::Http { status, text })) if status.is_client_error() && status.as_u16() != 429 => {
                Err(WriteError::Refused(format!("HTTP {status}: {}", text.trim())))
            }
            Ok(Err(other)) => Err(WriteError::Transient(other.to_string())),
        };
        match outcome {
            Ok(()) => Ok(rejected),
            Err(WriteError::Refused(msg)) => {
                // The server refused the request as a whole: every row that was sent is rejected.
                let json = rows_as_json(&rows);
                let reason = format!("{} refused the write: {msg}", tributary_sdk::redact::url_for_display(&self.cfg.url));
                rejected.extend(point_rows.iter().map(|&row| DeadLetter { payload: json[row].clone(), reason: reason.clone() }));
                Ok(rejected)
            }
            Err(WriteError::Transient(msg)) => {
                self.buffer.push(rows);
                Err(Transient::new(anyhow::anyhow!("writing to {}: {msg}", tributary_sdk::redact::url_for_display(&self.cfg.url))))
            }
        }
    }
}

#[async_trait::async_trait]
impl Sink for InfluxSink {
    async fn write(&mut self, batch: RecordBatch, _ctx: &SinkContext) -> Result<Written, Transient> {
        let full = self.buffer.push(batch);
        Ok(Written::with(if full { Durability::BufferFull } else { Durability::Buffered }, Vec::new()))
    }

    async fn flush(&mut self, _ctx: &SinkContext) -> Result<Vec<DeadLetter>, Transient> {
        self.write_buffer().await
    }

    fn flush_interval(&self) -> Option<Duration> {
        Some(self.batching.max_age)
    }

    fn take_buffered(&mut self) -> Vec<RecordBatch> {
        self.buffer.take().ok().flatten().into_iter().collect()
    }
}

#[cfg(test)]
mod tests;
