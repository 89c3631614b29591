//! `/api/tables`: each table's columns and types, its time column, first and last time, and rows.

use chrono::{DateTime, FixedOffset};
use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Int64Type, TimeUnit, TimestampNanosecondType};
use datafusion::common::Column;
use datafusion::functions_aggregate::expr_fn::{count, max, min};
use datafusion::logical_expr::Expr;
use datafusion::prelude::lit;
use serde_json::{json, Value};

use super::params::render_time;
use super::{series, Lake, TableDecl};

/// Every table, in name order.
pub async fn describe_all(lake: &Lake) -> anyhow::Result<Value> {
    let mut out = Vec::new();
    for decl in lake.decls().await {
        out.push(describe(lake, &decl).await?);
    }
    Ok(json!({ "tables": out }))
}

async fn describe(lake: &Lake, decl: &TableDecl) -> anyhow::Result<Value> {
    let Some(df) = lake.open(decl, None).await? else {
        return Ok(json!({ "name": decl.name, "columns": [], "time_column": decl.time_column, "first": null, "last": null, "rows": 0 }));
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
    let (first, last, rows) = match &time {
        Some(t) => {
            let ts = Expr::Column(Column::new_unqualified(t));
            let batches = df
                .aggregate(vec![], vec![min(ts.clone()).alias("first"), max(ts).alias("last"), count(lit(1)).alias("rows")])?
                .collect()
                .await?;
            let batch = batches.first().ok_or_else(|| anyhow::anyhow!("table `{}`: no answer", decl.name))?;
            let at = |i: usize| -> anyhow::Result<Option<String>> {
                let col = cast(batch.column(i), &DataType::Timestamp(TimeUnit::Nanosecond, None))?;
                let col = col.as_primitive::<TimestampNanosecondType>();
                let utc = FixedOffset::east_opt(0).expect("UTC");
                Ok(col.is_valid(0).then(|| render_time(DateTime::from_timestamp_nanos(col.value(0)), utc)))
            };
            (at(0)?, at(1)?, batch.column(2).as_primitive::<Int64Type>().value(0))
        }
        None => {
            let n = df.count().await?;
            (None, None, n as i64)
        }
    };
    Ok(json!({ "name": decl.name, "columns": columns, "time_column": time, "first": first, "last": last, "rows": rows }))
}
