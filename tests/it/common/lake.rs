//! A small Parquet lake whose binned values are worked out by hand in the tests that read it.

use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::{Float64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::parquet::arrow::ArrowWriter;

/// `(ts, site, ms, status)` rows of the `latency` table, by UTC date partition.
pub const LATENCY: &[(&str, &str, f64, &str)] = &[
    ("2026-10-31T22:30:00Z", "b", 40.0, "up"),
    ("2026-10-31T23:59:30Z", "a", 100.0, "up"),
    ("2026-11-01T00:00:10Z", "a", 10.0, "up"),
    ("2026-11-01T00:00:50Z", "a", 20.0, "up"),
    ("2026-11-01T00:01:30Z", "b", 5.0, "up"),
    ("2026-11-01T00:03:00Z", "a", 30.0, "up"),
    ("2026-11-01T00:03:59Z", "a", 31.0, "down"),
    ("2026-11-01T00:09:00Z", "b", 7.0, "up"),
    ("2026-11-01T00:12:00Z", "a", 99.0, "up"),
];

/// Write `LATENCY` under `data/latency/date=…/part-0.parquet` the way the parquet sink lays it out
/// (a `Timestamp(µs)` `ts`), plus a table with no timestamp column (`names`).
pub fn write_fixture(data: &Path) {
    let mut dates: Vec<&str> = LATENCY.iter().map(|r| &r.0[..10]).collect();
    dates.dedup();
    for date in dates {
        let rows: Vec<_> = LATENCY.iter().filter(|r| r.0.starts_with(date)).copied().collect();
        write_latency(&data.join("latency").join(format!("date={date}")).join("part-0.parquet"), &rows);
    }
    let names = RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new("name", DataType::Utf8, false)])),
        vec![Arc::new(StringArray::from(vec!["x", "y"]))],
    )
    .unwrap();
    write_parquet(&data.join("names").join("part-0.parquet"), &names);
}

/// One Parquet file of `latency` rows.
pub fn write_latency(path: &Path, rows: &[(&str, &str, f64, &str)]) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("ts", DataType::Timestamp(TimeUnit::Microsecond, None), false),
        Field::new("site", DataType::Utf8, false),
        Field::new("ms", DataType::Float64, true),
        Field::new("status", DataType::Utf8, false),
    ]));
    let ts: Vec<i64> = rows.iter().map(|r| chrono::DateTime::parse_from_rfc3339(r.0).unwrap().timestamp_micros()).collect();
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(TimestampMicrosecondArray::from(ts)),
            Arc::new(StringArray::from(rows.iter().map(|r| r.1).collect::<Vec<_>>())),
            Arc::new(Float64Array::from(rows.iter().map(|r| r.2).collect::<Vec<_>>())),
            Arc::new(StringArray::from(rows.iter().map(|r| r.3).collect::<Vec<_>>())),
        ],
    )
    .unwrap();
    write_parquet(path, &batch);
}

pub fn write_parquet(path: &Path, batch: &RecordBatch) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut w = ArrowWriter::try_new(std::fs::File::create(path).unwrap(), batch.schema(), None).unwrap();
    w.write(batch).unwrap();
    w.close().unwrap();
}
