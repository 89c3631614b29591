//! Comparing what an output produced with the rows a test expects.

use chrono::{DateTime, SecondsFormat, Utc};
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, TimeUnit, TimestampMicrosecondType};
use datafusion::arrow::util::display::array_value_to_string;
use serde_json::{Map, Value as Json};

use anyhow::bail;

/// One cell as compared and shown: timestamps as RFC 3339 UTC, numbers as numbers.
fn cell(col: &dyn Array, i: usize) -> anyhow::Result<Json> {
    if col.is_null(i) {
        return Ok(Json::Null);
    }
    Ok(match col.data_type() {
        DataType::Timestamp(..) => {
            let us = cast(&col.slice(i, 1), &DataType::Timestamp(TimeUnit::Microsecond, None))?;
            let us = us.as_primitive::<TimestampMicrosecondType>().value(0);
            Json::String(
                DateTime::<Utc>::from_timestamp_micros(us).map(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true)).unwrap_or_default(),
            )
        }
        DataType::Boolean => Json::Bool(col.as_boolean().value(i)),
        dt if dt.is_integer() => serde_json::from_str(&array_value_to_string(col, i)?)?,
        dt if dt.is_floating() => {
            let f = cast(&col.slice(i, 1), &DataType::Float64)?;
            serde_json::Number::from_f64(f.as_primitive::<datafusion::arrow::datatypes::Float64Type>().value(0))
                .map(Json::Number)
                .unwrap_or(Json::Null)
        }
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Json::String(array_value_to_string(col, i)?),
        _ => Json::String(array_value_to_string(col, i)?),
    })
}

fn rows_of(batches: &[RecordBatch]) -> anyhow::Result<Vec<Map<String, Json>>> {
    let mut out = Vec::new();
    for b in batches {
        for i in 0..b.num_rows() {
            let mut row = Map::new();
            for (f, col) in b.schema().fields().iter().zip(b.columns()) {
                row.insert(f.name().clone(), cell(col.as_ref(), i)?);
            }
            out.push(row);
        }
    }
    Ok(out)
}

/// Whether an actual value equals what the test wrote: timestamps by instant, floats within a
/// relative 1e-9, everything else exactly.
fn value_matches(expected: &Json, actual: &Json) -> bool {
    match (expected, actual) {
        (Json::Number(e), Json::Number(a)) => match (e.as_i64(), a.as_i64()) {
            (Some(x), Some(y)) => x == y,
            _ => {
                let (x, y) = (e.as_f64().unwrap_or(f64::NAN), a.as_f64().unwrap_or(f64::NAN));
                x == y || (x - y).abs() <= 1e-9 * x.abs().max(y.abs())
            }
        },
        (Json::String(e), Json::String(a)) => e == a || matches!((parse_time(e), parse_time(a)), (Some(x), Some(y)) if x == y),
        (e, a) => e == a,
    }
}

fn parse_time(s: &str) -> Option<i64> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.timestamp_micros());
    }
    chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f").ok().map(|t| t.and_utc().timestamp_micros())
}

fn row_matches(expected: &Map<String, Json>, actual: &Map<String, Json>) -> bool {
    expected.iter().all(|(k, v)| actual.get(k).is_some_and(|a| value_matches(v, a)))
}

/// `None` when `actual` has exactly the expected rows (in any order, compared on the columns each
/// expected row names); otherwise a readable diff.
pub(super) fn compare(name: &str, expected: &[Map<String, Json>], actual: &[RecordBatch]) -> anyhow::Result<Option<String>> {
    let actual = rows_of(actual)?;
    if let Some(first) = actual.first() {
        for row in expected {
            if let Some(k) = row.keys().find(|k| !first.contains_key(*k)) {
                let cols: Vec<&str> = first.keys().map(String::as_str).collect();
                bail!("expect.{name}: `{k}` is not a column of `{name}`; columns: {}", cols.join(", "));
            }
        }
    }
    let mut used = vec![false; actual.len()];
    let mut missing = Vec::new();
    for e in expected {
        match (0..actual.len()).find(|&i| !used[i] && row_matches(e, &actual[i])) {
            Some(i) => used[i] = true,
            None => missing.push(e),
        }
    }
    let unexpected: Vec<&Map<String, Json>> = actual.iter().zip(&used).filter(|(_, u)| !**u).map(|(r, _)| r).collect();
    if missing.is_empty() && unexpected.is_empty() {
        return Ok(None);
    }
    let mut msg = format!("{name}: expected {} rows, got {}", expected.len(), actual.len());
    for m in missing {
        msg.push_str(&format!("\n  missing:    {}", Json::Object(m.clone())));
    }
    // Show unexpected rows on the columns the test talks about, so the diff stays readable.
    let mut shown_cols: Vec<&String> = expected.iter().flat_map(|r| r.keys()).collect();
    shown_cols.sort();
    shown_cols.dedup();
    for u in unexpected {
        let shown: Map<String, Json> = if shown_cols.is_empty() {
            u.clone()
        } else {
            u.iter().filter(|(k, _)| shown_cols.contains(k)).map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        msg.push_str(&format!("\n  unexpected: {}", Json::Object(shown)));
    }
    Ok(Some(msg))
}
