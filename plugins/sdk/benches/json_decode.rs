//! The JSON decoder alone, on 1 MiB of badge events (the `file` source's chunk): `JsonRows`, what
//! every source decodes with (its one-pass flat decoder, for these lines), against arrow-json's own
//! decoder with nothing around it (the peer a hand-written reader would use). And the cost single-event HTTP requests paid before they were
//! batched: a decoder per one-row body, against one pass over the same bodies as NDJSON.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use datafusion::arrow::json::ReaderBuilder;
use tributary_sdk::config::DeclaredSchema;
use tributary_sdk::json::JsonRows;

const GAMES: [&str; 4] = ["Breakout", "Labyrinth", "Asteroids", "Tappytime"];
const EVENTS: [&str; 4] = ["high-score", "around-the-world", "challenge-check", "status"];

fn badge_line(i: usize) -> String {
    let ts = 1_764_000_000 + (i / 1000) as i64;
    format!(
        r#"{{"ts":"2025-11-24T{:02}:{:02}:{:02}Z","channel":"high-score-processor","event":"{}","user_uuid":"5f0c{:04x}-badg-4e11-9c3a-0000{:08x}","mac_address":"24:0a:c4:12:{:02x}:{:02x}","game":"{}","score":{},"duration":{}}}"#,
        (ts / 3600) % 24,
        (ts / 60) % 60,
        ts % 60,
        EVENTS[i % 4],
        i % 5000,
        i % 5000,
        i % 256,
        (i / 256) % 256,
        GAMES[i % 4],
        (i * 7919) % 3000,
        5 + i % 300
    )
}

fn bench(c: &mut Criterion) {
    let declared: DeclaredSchema = serde_yaml::from_str(
        "{ts: timestamp, channel: string, event: string, user_uuid: string, mac_address: string, game: string, score: int, duration: int}",
    )
    .unwrap();
    let rows = JsonRows::new(&declared, Some("ts"));
    let mut chunk = Vec::new();
    let mut n = 0;
    while chunk.len() < 1 << 20 {
        chunk.extend_from_slice(badge_line(n).as_bytes());
        chunk.push(b'\n');
        n += 1;
    }

    let mut g = c.benchmark_group("ndjson_1mib");
    g.throughput(Throughput::Bytes(chunk.len() as u64));
    g.bench_function("arrow_json_decoder", |b| {
        b.iter(|| {
            let mut decoder = ReaderBuilder::new(rows.schema().clone()).with_batch_size(8192).build_decoder().unwrap();
            let mut rest = &chunk[..];
            let mut got = 0;
            while !rest.is_empty() {
                rest = &rest[decoder.decode(rest).unwrap()..];
                got += decoder.flush().unwrap().map_or(0, |b| b.num_rows());
            }
            assert_eq!(got, n);
        })
    });
    g.bench_function("json_rows_decode_lines", |b| {
        b.iter(|| {
            let (batch, errors) = rows.decode_lines(&chunk);
            assert_eq!((batch.num_rows(), errors.len()), (n, 0));
        })
    });
    g.finish();

    // 64 single-event bodies, as 64 concurrent POSTs bring them.
    let bodies: Vec<String> = (0..64).map(badge_line).collect();
    let mut g = c.benchmark_group("single_event_bodies_64");
    g.throughput(Throughput::Elements(64));
    g.bench_function("one_decoder_per_body", |b| {
        b.iter(|| {
            for body in &bodies {
                let value: serde_json::Value = serde_json::from_str(body).unwrap();
                assert_eq!(rows.decode_values(std::slice::from_ref(&value)).unwrap().num_rows(), 1);
            }
        })
    });
    g.bench_function("one_pass_over_all", |b| {
        b.iter(|| {
            let mut text = Vec::with_capacity(64 * 256);
            for body in &bodies {
                text.extend_from_slice(body.as_bytes());
                text.push(b'\n');
            }
            assert_eq!(rows.decode_lines(&text).0.num_rows(), 64);
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
