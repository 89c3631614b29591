//! SQL transform cost per 8192-row batch: a trivial projection (the per-batch overhead of planning
//! once / executing per batch), and filter + projection + computed column over 10 columns, each
//! next to the same work done with arrow kernels directly (the floor).

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use datafusion::arrow::array::{ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use datafusion::arrow::compute::{and, filter_record_batch, kernels::cmp::gt};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use tributary::sql::SqlTransform;
use tributary_sdk::config::event_time_type;

const ROWS: usize = 8192;

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("ts", event_time_type(), false),
        Field::new("site", DataType::Utf8, false),
        Field::new("region", DataType::Utf8, false),
        Field::new("user", DataType::Utf8, false),
        Field::new("status", DataType::Int64, false),
        Field::new("ms", DataType::Int64, false),
        Field::new("sla", DataType::Int64, false),
        Field::new("bytes", DataType::Int64, false),
        Field::new("cpu", DataType::Float64, false),
        Field::new("ok", DataType::Boolean, false),
    ]))
}

fn batch() -> RecordBatch {
    let i = 0..ROWS as i64;
    let cols: Vec<ArrayRef> = vec![
        Arc::new(TimestampMicrosecondArray::from_iter_values(i.clone().map(|i| 1_764_000_000_000_000 + i * 1000)).with_timezone("UTC")),
        Arc::new(StringArray::from_iter_values(i.clone().map(|i| format!("site-{}", i % 50)))),
        Arc::new(StringArray::from_iter_values(i.clone().map(|i| ["eu", "us", "ap"][(i % 3) as usize]))),
        Arc::new(StringArray::from_iter_values(i.clone().map(|i| format!("user-{:06}", i * 7919 % 100_000)))),
        Arc::new(Int64Array::from_iter_values(i.clone().map(|i| if i % 17 == 0 { 503 } else { 200 }))),
        Arc::new(Int64Array::from_iter_values(i.clone().map(|i| (i * 37) % 1200))),
        Arc::new(Int64Array::from_iter_values(i.clone().map(|_| 500))),
        Arc::new(Int64Array::from_iter_values(i.clone().map(|i| 100 + i % 4000))),
        Arc::new(Float64Array::from_iter_values(i.clone().map(|i| (i % 100) as f64 * 0.7))),
        Arc::new(BooleanArray::from_iter(i.map(|i| Some(i % 17 != 0)))),
    ];
    RecordBatch::try_new(schema(), cols).unwrap()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let input = batch();
    let tables = [("probes".to_string(), schema())];
    let trivial = rt.block_on(SqlTransform::plan("SELECT site FROM probes", &tables, &[])).unwrap();
    let work = rt
        .block_on(SqlTransform::plan(
            "SELECT ts, site, region, ms, ms - sla AS over_sla_ms, cpu FROM probes WHERE ms > sla AND ok",
            &tables,
            &[],
        ))
        .unwrap();

    let mut g = c.benchmark_group("sql_transform_8192_rows");
    g.throughput(Throughput::Elements(ROWS as u64));
    g.bench_function("trivial_projection/sql", |b| b.iter(|| rt.block_on(trivial.execute(0, input.clone())).unwrap()));
    g.bench_function("trivial_projection/arrow_floor", |b| b.iter(|| input.project(&[1]).unwrap()));
    g.bench_function("filter_project_compute/sql", |b| b.iter(|| rt.block_on(work.execute(0, input.clone())).unwrap()));
    g.bench_function("filter_project_compute/arrow_floor", |b| {
        b.iter(|| {
            let ms = input.column(5).as_any().downcast_ref::<Int64Array>().unwrap();
            let sla = input.column(6).as_any().downcast_ref::<Int64Array>().unwrap();
            let ok = input.column(9).as_any().downcast_ref::<BooleanArray>().unwrap();
            let mask = and(&gt(ms, sla).unwrap(), ok).unwrap();
            let kept = filter_record_batch(&input.project(&[0, 1, 2, 5, 6, 8]).unwrap(), &mask).unwrap();
            let over = datafusion::arrow::compute::kernels::numeric::sub(kept.column(3), kept.column(4)).unwrap();
            (kept, over)
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
