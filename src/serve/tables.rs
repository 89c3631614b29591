//! `/api/tables`: each table's columns and types, its time column, first and last time, rows, and
//! the view the page opens on (`defaults.rs`).

use chrono::{DateTime, FixedOffset, Utc};
use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, TimeUnit, TimestampNanosecondType, UInt64Type};
use datafusion::common::Column;
use datafusion::functions_aggregate::expr_fn::{approx_distinct, count, max, min};
use datafusion::logical_expr::Expr;
use datafusion::prelude::lit;
use serde_json::{json, Value};

use super::defaults::{self, TableShape};
use super::params::render_time;
use super::{series, Lake, TableDecl};

/// Every table: a pipeline's sinks in its file's order, a folder's tables in name order.
pub async fn describe_all(lake: &Lake) -> anyhow::Result<Value> {
    let mut out = Vec::new();
    for decl in lake.decls().await {
        out.push(describe(lake, &decl).await?);
    }
    Ok(json!({ "tables": out }))
}

async fn describe(lake: &Lake, decl: &TableDecl) -> anyhow::Result<Value> {
    let Some(df) = lake.open(decl, None).await? else {
        return Ok(
            json!({ "name": decl.name, "columns": [], "time_column": decl.time_column, "first": null, "last": null, "rows": 0, "default": null }),
        );
    };
    let columns: Vec<Value> = df
        .schema()
        .fields()
        .iter()
        .map(|f| json!({ "name": f.name(), "type": series::type_name(f.data_type()), "numeric": f.data_type().is_numeric() }))
        .collect();
    let time = decl
        .time_column
        .clone()
        .filter(|t| df.schema().field_with_unqualified_name(t).is_ok_and(|f| matches!(f.data_type(), DataType::Timestamp(..))))
        .or_else(|| series::default_time_column(&df));
    let schema = df.schema().as_arrow().clone();
    let strings = defaults::string_columns(&schema);
    // One pass: rows, the time range and its distinct values, and each string column's values
    // and non-null count (for the default view).
    let col = |n: &str| Expr::Column(Column::new_unqualified(n));
    let mut aggs = vec![count(lit(1)).alias("rows")];
    if let Some(t) = &time {
        aggs.extend([min(col(t)).alias("first"), max(col(t)).alias("last"), approx_distinct(col(t)).alias("times")]);
    }
    for (i, s) in strings.iter().enumerate() {
        aggs.extend([approx_distinct(col(s)).alias(format!("distinct_{i}")), count(col(s)).alias(format!("filled_{i}"))]);
    }
    let batches = df.aggregate(vec![], aggs)?.collect().await?;
    let batch = batches.first().ok_or_else(|| anyhow::anyhow!("table `{}`: no answer", decl.name))?;
    let int = |name: &str| -> anyhow::Result<u64> {
        let c = cast(batch.column_by_name(name).ok_or_else(|| anyhow::anyhow!("no `{name}`"))?, &DataType::UInt64)?;
        Ok(c.as_primitive::<UInt64Type>().value(0))
    };
    let at = |name: &str| -> anyhow::Result<Option<DateTime<Utc>>> {
        let c = cast(
            batch.column_by_name(name).ok_or_else(|| anyhow::anyhow!("no `{name}`"))?,
            &DataType::Timestamp(TimeUnit::Nanosecond, None),
        )?;
        let c = c.as_primitive::<TimestampNanosecondType>();
        Ok(c.is_valid(0).then(|| DateTime::from_timestamp_nanos(c.value(0))))
    };
    let rows = int("rows")?;
    let (first, last, distinct_times) = match time {
        Some(_) => (at("first")?, at("last")?, int("times")?),
        None => (None, None, 0),
    };
    let mut shape = TableShape { first, last, distinct_times, strings: Vec::new() };
    for (i, s) in strings.iter().enumerate() {
        if int(&format!("filled_{i}"))? == rows {
            shape.strings.push((s.clone(), int(&format!("distinct_{i}"))?));
        }
    }
    let view = defaults::default_view(&schema, &shape, &decl.chart, lake.live, Utc::now());
    let utc = FixedOffset::east_opt(0).expect("UTC");
    let show = |t: Option<DateTime<Utc>>| t.map(|t| render_time(t, utc));
    Ok(json!({
        "name": decl.name, "columns": columns, "time_column": time, "first": show(first), "last": show(last), "rows": rows,
        "default": { "value": view.value, "group_by": view.group_by, "from": view.from, "to": view.to, "bin": view.bin },
    }))
}
