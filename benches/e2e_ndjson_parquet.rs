//! End to end: NDJSON badge-like events → `file` source → SQL filter/projection → `parquet` sink,
//! next to a baseline measured in the same run: arrow-json's reader straight into the Parquet writer
//! (same compression), no engine. Each side runs in its own child process so its peak RSS is its own.
//!
//! `cargo bench --bench e2e_ndjson_parquet` runs 1,000,000 events (set E2E_EVENTS to change);
//! under `cargo test` it runs a 20,000-event smoke pass that still checks the row counts.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::json::ReaderBuilder;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::properties::WriterProperties;
use tokio_util::sync::CancellationToken;
use tributary_sdk::config::event_time_type;

const GAMES: [&str; 4] = ["Breakout", "Labyrinth", "Asteroids", "Tappytime"];
const EVENTS: [&str; 4] = ["high-score", "around-the-world", "challenge-check", "status"];

fn generate(path: &Path, n: usize) {
    let mut w = BufWriter::new(std::fs::File::create(path).unwrap());
    for i in 0..n {
        let ts = 1_764_000_000 + (i / 1000) as i64;
        let secs = ts % 60;
        let mins = (ts / 60) % 60;
        let hours = (ts / 3600) % 24;
        writeln!(
            w,
            r#"{{"ts":"2025-11-24T{hours:02}:{mins:02}:{secs:02}Z","channel":"high-score-processor","event":"{}","user_uuid":"5f0c{:04x}-badg-4e11-9c3a-0000{:08x}","mac_address":"24:0a:c4:12:{:02x}:{:02x}","game":"{}","score":{},"duration":{}}}"#,
            EVENTS[i % 4],
            i % 5000,
            i % 5000,
            i % 256,
            (i / 256) % 256,
            GAMES[i % 4],
            (i * 7919) % 3000,
            5 + i % 300
        )
        .unwrap();
    }
}

fn count_parquet_rows(dir: &Path) -> usize {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let location = tributary_parquet::store::ObjectLocation::local(dir).unwrap();
    let tables = vec![tributary::query::Table { name: "t".into(), location }];
    let batches = rt.block_on(tributary::query::run_query("SELECT count(*) FROM t", &tables)).unwrap();
    let col = batches[0].column(0).as_any().downcast_ref::<datafusion::arrow::array::Int64Array>().unwrap();
    col.value(0) as usize
}

fn baseline(input: &Path, out: &Path) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("ts", event_time_type(), true),
        Field::new("channel", DataType::Utf8, true),
        Field::new("event", DataType::Utf8, true),
        Field::new("user_uuid", DataType::Utf8, true),
        Field::new("mac_address", DataType::Utf8, true),
        Field::new("game", DataType::Utf8, true),
        Field::new("score", DataType::Int64, true),
        Field::new("duration", DataType::Int64, true),
    ]));
    std::fs::create_dir_all(out).unwrap();
    let start = Instant::now();
    let reader = ReaderBuilder::new(schema.clone())
        .with_batch_size(8192)
        .build(std::io::BufReader::new(std::fs::File::open(input).unwrap()))
        .unwrap();
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_max_row_group_row_count(Some(128 * 1024))
        .build();
    let mut w = ArrowWriter::try_new(std::fs::File::create(out.join("part-0.parquet")).unwrap(), schema, Some(props)).unwrap();
    for b in reader {
        w.write(&b.unwrap()).unwrap();
    }
    w.close().unwrap();
    println!("RESULT {} {}", start.elapsed().as_secs_f64(), tributary_testkit::peak_rss_mb());
}

/// The pipeline; `disk`: the file source goes through a disk buffer (`buffer: {type: disk}`).
fn pipeline(input: &Path, out: &Path, disk: bool) {
    let buffer = if disk {
        format!("{{type: disk, max_size: 4GiB, path: \"{}\"}}", out.with_extension("buffer").display())
    } else {
        "{type: memory}".into()
    };
    let yaml = format!(
        r#"
admin: {{enabled: false}}
sources:
  badges:
    type: file
    path: {input}
    schema: {{ts: timestamp, channel: string, event: string, user_uuid: string, mac_address: string, game: string, score: int, duration: int}}
    checkpoint_file: {checkpoint}
    buffer: {buffer}
transforms:
  scores:
    inputs: [badges]
    sql: SELECT ts, user_uuid, game, score, duration FROM badges WHERE event = 'high-score'
sinks:
  lake:
    type: parquet
    inputs: [scores]
    path: {out}
"#,
        input = input.display(),
        out = out.display(),
        checkpoint = out.with_extension("checkpoint.json").display()
    );
    let file = out.with_extension("yaml");
    std::fs::write(&file, yaml).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let start = Instant::now();
    let report = rt.block_on(tributary::run_file(&file, None, CancellationToken::new(), Default::default())).unwrap();
    assert!(report.ok(), "{report:?}");
    println!("RESULT {} {}", start.elapsed().as_secs_f64(), tributary_testkit::peak_rss_mb());
}

fn child(phase: &str, input: &Path, out: &Path) -> (f64, f64) {
    let o = Command::new(std::env::current_exe().unwrap()).args(["--phase", phase]).arg(input).arg(out).output().unwrap();
    assert!(o.status.success(), "{phase} failed: {}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout);
    let line = text.lines().find(|l| l.starts_with("RESULT ")).unwrap_or_else(|| panic!("{phase}: no result in {text}"));
    let mut parts = line.split_whitespace().skip(1).map(|v| v.parse::<f64>().unwrap());
    (parts.next().unwrap(), parts.next().unwrap())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--phase") {
        let (phase, input, out) = (&args[i + 1], PathBuf::from(&args[i + 2]), PathBuf::from(&args[i + 3]));
        match phase.as_str() {
            "baseline" => baseline(&input, &out),
            "pipeline" => pipeline(&input, &out, false),
            "pipeline-disk" => pipeline(&input, &out, true),
            other => panic!("unknown phase {other}"),
        }
        return;
    }
    let benching = args.iter().any(|a| a == "--bench");
    let n: usize = if benching { std::env::var("E2E_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000) } else { 20_000 };
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.ndjson");
    generate(&input, n);
    let size_mb = std::fs::metadata(&input).unwrap().len() as f64 / 1e6;

    let (base_s, base_rss) = child("baseline", &input, &dir.path().join("baseline"));
    let (pipe_s, pipe_rss) = child("pipeline", &input, &dir.path().join("pipeline"));
    let (disk_s, disk_rss) = child("pipeline-disk", &input, &dir.path().join("pipeline-disk"));
    assert_eq!(count_parquet_rows(&dir.path().join("baseline")), n);
    assert_eq!(count_parquet_rows(&dir.path().join("pipeline")), n.div_ceil(4), "every 4th event is a high score");
    assert_eq!(count_parquet_rows(&dir.path().join("pipeline-disk")), n.div_ceil(4), "the same through the disk buffer");

    let base_rate = n as f64 / base_s;
    let pipe_rate = n as f64 / pipe_s;
    println!("e2e NDJSON → Parquet, {n} events ({size_mb:.0} MB)");
    println!("  baseline (arrow-json → parquet, no engine): {base_rate:>12.0} events/s   peak RSS {base_rss:.0} MB");
    println!("  tributary (file → SQL → parquet):           {pipe_rate:>12.0} events/s   peak RSS {pipe_rss:.0} MB");
    let disk_rate = n as f64 / disk_s;
    println!("  tributary, disk buffer on the source:       {disk_rate:>12.0} events/s   peak RSS {disk_rss:.0} MB");
    println!("  ratio: {:.0}% of baseline (goal ≥ 70%); peak RSS goal < 300 MB", pipe_rate / base_rate * 100.0);
    println!("  disk buffer: {:.0}% of memory-buffered (goal ≥ 70%)", disk_rate / pipe_rate * 100.0);
}
