//! srt_stats parser throughput on real srt-live-transmit 1.5.1 JSON statistics lines (goal:
//! ≥ 500k lines/s on one core, so one collector follows thousands of sessions). Next to it, the
//! same lines through serde_json into a `Value` (a general JSON parser: the baseline), the CSV
//! form, and the full per-session path (parse + state machine + rows into an Arrow batch).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tributary_srt_stats::parse::parse_line;
use tributary_srt_stats::rows::stats_batch;
use tributary_srt_stats::session::{Emitted, Role, SessionTracker};

const JSON: &str = include_str!("../tests/fixtures/rx-caller.jsonl");
const CSV: &str = include_str!("../tests/fixtures/tx-listener.csv");

fn bench(c: &mut Criterion) {
    let json: Vec<&str> = JSON.lines().collect();
    let csv: Vec<&str> = CSV.lines().skip(1).collect();
    let mut g = c.benchmark_group("srt_stats_lines");
    g.throughput(Throughput::Elements(json.len() as u64));
    g.bench_function("json/parse_line", |b| {
        b.iter(|| {
            json.iter().for_each(|l| {
                std::hint::black_box(parse_line(l).unwrap());
            })
        })
    });
    g.bench_function("json/serde_json_value_baseline", |b| {
        b.iter(|| {
            json.iter().for_each(|l| {
                std::hint::black_box(serde_json::from_str::<serde_json::Value>(l).unwrap());
            })
        })
    });
    g.bench_function("json/tracker_and_arrow_batch", |b| {
        b.iter(|| {
            let mut t = SessionTracker::new("rx", Some(Role::Rx), true);
            let mut out = Emitted::default();
            for l in &json {
                t.line(l, 0, &mut out).unwrap();
            }
            stats_batch(&out.stats)
        })
    });
    g.throughput(Throughput::Elements(csv.len() as u64));
    g.bench_function("csv/parse_line", |b| {
        b.iter(|| {
            csv.iter().for_each(|l| {
                std::hint::black_box(parse_line(l).unwrap());
            })
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
