//! `/api/series`: one value of one table, aggregated per time bin (and per group), every bin of the
//! range present. The query is built with DataFusion's expression API, never by pasting text into
//! SQL: only `where` is parsed, as an expression over the one table's columns.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, FixedOffset, Utc};
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float64Type, Int64Type, TimeUnit};
use datafusion::common::tree_node::TreeNode;
use datafusion::common::{Column, ScalarValue};
use datafusion::logical_expr::{Expr, SortExpr};
use datafusion::prelude::{cast as cast_expr, lit, DataFrame};

use super::params::{self, Agg, Format, ParamError, SeriesParams};

/// The checked, planned request: ready to run.
pub struct SeriesQuery {
    pub params: SeriesParams,
    pub bin: Duration,
    pub first_bin_ns: i64,
    pub bins: u64,
    df: DataFrame,
}

/// One group's values, one per bin (`None`: no rows in that bin).
pub struct Series {
    pub group: Option<String>,
    pub values: Vec<Option<f64>>,
}

/// The columns a request names, checked against the table.
pub struct ColumnRefs {
    pub table: String,
    pub value: Option<String>,
    pub agg: Agg,
    pub group_by: Option<String>,
    pub time: Option<String>,
    pub filter: Option<String>,
}

impl ColumnRefs {
    fn of(p: &SeriesParams) -> Self {
        ColumnRefs {
            table: p.table.clone(),
            value: Some(p.value.clone()),
            agg: p.agg,
            group_by: p.group_by.clone(),
            time: p.time.clone(),
            filter: p.filter.clone(),
        }
    }

    /// From a query string that did not parse as a whole (to name the column problems as well).
    pub fn from_pairs(pairs: &[(String, String)]) -> Self {
        let get = |k: &str| pairs.iter().find(|(n, v)| n == k && !v.trim().is_empty()).map(|(_, v)| v.trim().to_string());
        ColumnRefs {
            table: get("table").unwrap_or_default(),
            value: get("value"),
            agg: get("agg").and_then(|a| Agg::parse(&a)).unwrap_or(Agg::Avg),
            group_by: get("group_by"),
            time: get("time"),
            filter: get("where"),
        }
    }
}

/// What [`check_columns`] found.
pub struct Checked {
    pub errors: Vec<ParamError>,
    /// The time column and its type.
    pub time: Option<(String, DataType)>,
    /// The table with `where` applied.
    pub df: DataFrame,
}

/// Check the columns a request names (and plan its `where`) against the table behind `df`.
/// `time_column` is the table's declared one (a pipeline's `time_column`), if any.
pub fn check_columns(refs: &ColumnRefs, df: DataFrame, time_column: Option<&str>) -> Checked {
    let mut errors = Vec::new();
    let schema = df.schema().clone();
    let field = |name: &str| schema.field_with_unqualified_name(name).ok().cloned();
    let columns = || schema.fields().iter().map(|f| f.name().as_str()).collect::<Vec<_>>().join(", ");
    let table = &refs.table;
    let no_column = |c: &str| format!("table `{table}` has no column `{c}` (columns: {})", columns());

    let time = refs.time.clone().or(time_column.map(str::to_string)).or_else(|| default_time_column(&df));
    let time = match time {
        None => {
            errors.push(ParamError::new("time", format!("table `{table}` has no timestamp column (columns: {})", columns())));
            None
        }
        Some(t) => match field(&t) {
            Some(f) if matches!(f.data_type(), DataType::Timestamp(..)) => Some((t, f.data_type().clone())),
            Some(f) => {
                errors.push(ParamError::new("time", format!("column `{t}` is {}, not a timestamp", type_name(f.data_type()))));
                None
            }
            None => {
                errors.push(ParamError::new("time", no_column(&t)));
                None
            }
        },
    };
    if let Some(value) = &refs.value {
        match field(value) {
            None => errors.push(ParamError::new("value", no_column(value))),
            Some(f) if refs.agg != Agg::Count && !f.data_type().is_numeric() => errors.push(ParamError::new(
                "value",
                format!("column `{value}` is {}, not a number (only `agg=count` counts non-numeric values)", type_name(f.data_type())),
            )),
            Some(_) => {}
        }
    }
    if let Some(g) = &refs.group_by {
        if field(g).is_none() {
            errors.push(ParamError::new("group_by", no_column(g)));
        }
    }
    let mut df = df;
    if let Some(pred) = &refs.filter {
        match parse_filter(&df, pred) {
            Ok(expr) => match df.clone().filter(expr) {
                Ok(filtered) => df = filtered,
                Err(e) => errors.push(ParamError::new("where", first_line(&e.to_string()))),
            },
            Err(m) => errors.push(ParamError::new("where", m)),
        }
    }
    Checked { errors, time, df }
}

/// Check `params` against the table behind `df` and plan the aggregation.
pub fn plan(params: SeriesParams, df: DataFrame, time_column: Option<&str>, max_points: u64) -> Result<SeriesQuery, Vec<ParamError>> {
    let Checked { mut errors, time, df } = check_columns(&ColumnRefs::of(&params), df, time_column);
    let bin = params.bin.unwrap_or_else(|| {
        params::bin_that_fits(params.from, params.to, params.tz, params::AUTO_BINS)
            .unwrap_or(Duration::from_secs(*params::NICE_BINS.last().expect("bins")))
    });
    let (first_bin_ns, bins) = params::bins(params.from, params.to, bin, params.tz);
    if bins > max_points {
        errors.push(too_many_points(&params, bins, 1, max_points));
    }
    let Some((time, time_type)) = time.filter(|_| errors.is_empty()) else { return Err(errors) };
    let df = select(df, &params, &time, &time_type, bin).map_err(|e| vec![ParamError::new("query", first_line(&e.to_string()))])?;
    Ok(SeriesQuery { params, bin, first_bin_ns, bins, df })
}

/// A column type for people: any of Arrow's string layouts is `string`.
pub fn type_name(dt: &DataType) -> String {
    match dt {
        DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8 => "string".into(),
        DataType::Binary | DataType::BinaryView | DataType::LargeBinary => "binary".into(),
        other => other.to_string(),
    }
}

/// `ts` when it is a timestamp, else the first timestamp column.
pub fn default_time_column(df: &DataFrame) -> Option<String> {
    let fields = df.schema().fields();
    let is_time = |f: &&Arc<datafusion::arrow::datatypes::Field>| matches!(f.data_type(), DataType::Timestamp(..));
    fields.iter().filter(is_time).find(|f| f.name() == "ts").or_else(|| fields.iter().find(is_time)).map(|f| f.name().clone())
}

/// `where` as one expression over the table's columns: no subqueries, only the row-local
/// functions a tap filter may call (the session holds this one table only besides).
fn parse_filter(df: &DataFrame, pred: &str) -> Result<Expr, String> {
    crate::admin::tap_filter::check(pred).map_err(|why| format!("`{pred}`: {why}"))?;
    let expr = df.parse_sql_expr(pred).map_err(|e| first_line(&e.to_string()))?;
    let nested = expr
        .exists(|e| {
            Ok(matches!(
                e,
                Expr::ScalarSubquery(_) | Expr::Exists(_) | Expr::InSubquery(_) | Expr::AggregateFunction(_) | Expr::WindowFunction(_)
            ))
        })
        .unwrap_or(true);
    if nested {
        return Err(format!("`{pred}`: only a condition on this table's columns (no subqueries, aggregates or window functions)"));
    }
    Ok(expr)
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or(s).to_string()
}

fn too_many_points(params: &SeriesParams, bins: u64, groups: u64, max_points: u64) -> ParamError {
    let fits = params::bin_that_fits(params.from, params.to, params.tz, max_points / groups.max(1));
    let advice = match fits {
        Some(b) => format!("bin={} fits", params::render_bin(b)),
        None => "narrow the range or the groups (`where`)".to_string(),
    };
    ParamError::new(
        "bin",
        format!("{bins} bins × {groups} series = {} points is more than the {max_points} one answer holds; {advice}", bins * groups.max(1)),
    )
}

/// The range (and its `date=` partitions), the bin and the aggregate, as a DataFusion plan with
/// the columns `bin` (nanoseconds), `grp` (text) and `value` (float).
fn select(df: DataFrame, p: &SeriesParams, time: &str, time_type: &DataType, bin: Duration) -> datafusion::error::Result<DataFrame> {
    let ts = Expr::Column(Column::new_unqualified(time));
    let mut range = ts
        .clone()
        .gt_eq(lit(time_literal(time_type, params::nanos(p.from))))
        .and(ts.clone().lt(lit(time_literal(time_type, params::nanos(p.to)))));
    if df.schema().field_with_unqualified_name("date").is_ok_and(|f| f.data_type() == &DataType::Utf8) {
        // The sink's `date=` folders are UTC dates: prune the ones outside the range.
        let last = p.to - chrono::Duration::nanoseconds(1);
        let date = Expr::Column(Column::new_unqualified("date"));
        range = range
            .and(date.clone().gt_eq(lit(p.from.format("%Y-%m-%d").to_string())))
            .and(date.lt_eq(lit(last.format("%Y-%m-%d").to_string())));
    }
    let df = df.filter(range)?;
    let tz = match time_type {
        DataType::Timestamp(_, tz) => tz.clone(),
        _ => None,
    };
    let stride =
        lit(ScalarValue::IntervalMonthDayNano(Some(datafusion::arrow::datatypes::IntervalMonthDayNano::new(0, 0, bin.as_nanos() as i64))));
    let origin = lit(ScalarValue::TimestampNanosecond(Some(params::origin_ns(p.tz)), tz));
    let binned = datafusion::functions::expr_fn::date_bin(stride, ts, origin);
    let bin_ns = cast_expr(cast_expr(binned, DataType::Timestamp(TimeUnit::Nanosecond, None)), DataType::Int64).alias("bin");
    let group = match &p.group_by {
        Some(g) => cast_expr(Expr::Column(Column::new_unqualified(g)), DataType::Utf8),
        None => lit(ScalarValue::Utf8(None)),
    }
    .alias("grp");
    let value = Expr::Column(Column::new_unqualified(&p.value));
    let number = cast_expr(value.clone(), DataType::Float64);
    use datafusion::functions_aggregate::expr_fn as f;
    let agg = match p.agg {
        Agg::Avg => f::avg(number),
        Agg::Min => f::min(number),
        Agg::Max => f::max(number),
        Agg::Sum => f::sum(number),
        Agg::Count => cast_expr(f::count(value), DataType::Float64),
        Agg::Percentile(q) => f::percentile_cont(SortExpr::new(number, true, false), lit(q as f64 / 100.0)),
    };
    df.aggregate(vec![bin_ns, group], vec![cast_expr(agg, DataType::Float64).alias("value")])
}

/// `nanos` as a literal of the time column's type (rounded up, so `ts >= lit` and `ts < lit` keep
/// exactly the rows at or after `nanos`).
fn time_literal(time_type: &DataType, nanos: i64) -> ScalarValue {
    let up = |unit: i64| Some(nanos.div_euclid(unit) + i64::from(nanos.rem_euclid(unit) != 0));
    match time_type {
        DataType::Timestamp(TimeUnit::Second, tz) => ScalarValue::TimestampSecond(up(1_000_000_000), tz.clone()),
        DataType::Timestamp(TimeUnit::Millisecond, tz) => ScalarValue::TimestampMillisecond(up(1_000_000), tz.clone()),
        DataType::Timestamp(TimeUnit::Microsecond, tz) => ScalarValue::TimestampMicrosecond(up(1_000), tz.clone()),
        DataType::Timestamp(TimeUnit::Nanosecond, tz) => ScalarValue::TimestampNanosecond(Some(nanos), tz.clone()),
        _ => ScalarValue::TimestampNanosecond(Some(nanos), None),
    }
}

impl SeriesQuery {
    /// Run the plan and lay its rows out bin by bin, one series per group (sorted; nulls last).
    pub async fn run(self, max_points: u64) -> Result<Answer, ParamError> {
        let batches = self.df.collect().await.map_err(|e| ParamError::new("query", first_line(&e.to_string())))?;
        let mut groups: BTreeMap<(bool, String), Vec<Option<f64>>> = BTreeMap::new();
        let bin_ns = self.bin.as_nanos() as i64;
        for batch in &batches {
            add_rows(batch, &mut groups, self.first_bin_ns, bin_ns, self.bins).map_err(|e| ParamError::new("query", e.to_string()))?;
        }
        if groups.is_empty() && self.params.group_by.is_none() {
            groups.insert((false, String::new()), vec![None; self.bins as usize]);
        }
        let count = groups.len() as u64;
        if self.bins * count > max_points {
            return Err(too_many_points(&self.params, self.bins, count, max_points));
        }
        let grouped = self.params.group_by.is_some();
        let series = groups.into_iter().map(|((null, g), values)| Series { group: (grouped && !null).then_some(g), values }).collect();
        Ok(Answer { query: self.params, bin: self.bin, first_bin_ns: self.first_bin_ns, series })
    }
}

fn add_rows(
    batch: &RecordBatch,
    groups: &mut BTreeMap<(bool, String), Vec<Option<f64>>>,
    first_bin_ns: i64,
    bin_ns: i64,
    bins: u64,
) -> datafusion::error::Result<()> {
    let bin = batch.column(0).as_primitive::<Int64Type>();
    let grp = cast(batch.column(1), &DataType::Utf8)?;
    let grp = grp.as_string::<i32>();
    let value = batch.column(2).as_primitive::<Float64Type>();
    for row in 0..batch.num_rows() {
        if bin.is_null(row) {
            continue;
        }
        let index = (bin.value(row) - first_bin_ns).div_euclid(bin_ns);
        let key = if grp.is_null(row) { (true, String::new()) } else { (false, grp.value(row).to_string()) };
        let values = groups.entry(key).or_insert_with(|| vec![None; bins as usize]);
        if (0..bins as i64).contains(&index) && value.is_valid(row) && value.value(row).is_finite() {
            values[index as usize] = Some(value.value(row));
        }
    }
    Ok(())
}

/// The laid-out result.
pub struct Answer {
    pub query: SeriesParams,
    pub bin: Duration,
    pub first_bin_ns: i64,
    pub series: Vec<Series>,
}

impl Answer {
    fn bin_start(&self, i: usize) -> DateTime<Utc> {
        DateTime::from_timestamp_nanos(self.first_bin_ns + i as i64 * self.bin.as_nanos() as i64)
    }

    fn tz(&self) -> FixedOffset {
        self.query.tz
    }

    pub fn format(&self) -> Format {
        self.query.format
    }

    /// `{"table", "value", "agg", "bin", "from", "to", "tz", "group_by", "bins", "series": [{"group", "points": [[bin_start, value], …]}]}`
    pub fn to_json(&self) -> String {
        let q = &self.query;
        let starts: Vec<String> =
            (0..self.series.first().map_or(0, |s| s.values.len())).map(|i| params::render_time(self.bin_start(i), self.tz())).collect();
        let series: Vec<serde_json::Value> = self
            .series
            .iter()
            .map(|s| {
                let points: Vec<serde_json::Value> = s.values.iter().zip(&starts).map(|(v, t)| serde_json::json!([t, v])).collect();
                serde_json::json!({ "group": s.group, "points": points })
            })
            .collect();
        serde_json::json!({
            "table": q.table,
            "value": q.value,
            "agg": q.agg.name(),
            "bin": params::render_bin(self.bin),
            "from": params::render_time(q.from, q.tz),
            "to": params::render_time(q.to, q.tz),
            "tz": q.tz.to_string(),
            "group_by": q.group_by,
            "where": q.filter,
            "bins": starts.len(),
            "series": series,
        })
        .to_string()
    }

    /// `group,bin_start,value`, one line per bin per series (an empty value where a bin has no rows).
    pub fn to_csv(&self) -> String {
        let mut out = String::from("group,bin_start,value\n");
        for s in &self.series {
            let group = s.group.as_deref().map(csv_field).unwrap_or_default();
            for (i, v) in s.values.iter().enumerate() {
                let value = v.map(|v| v.to_string()).unwrap_or_default();
                out.push_str(&format!("{group},{},{value}\n", params::render_time(self.bin_start(i), self.tz())));
            }
        }
        out
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}
