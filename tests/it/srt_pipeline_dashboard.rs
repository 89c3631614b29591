//! The shipped `pipelines/srt-stats.yaml` run for real: it supervises two srt-live-transmit
//! sessions (TX listener, RX caller) fed by UDP, writes PostgreSQL, Parquet and OTLP (to a
//! rotel-agent); then every query of `dashboards/srt.json` runs against the filled database.

use crate::common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_yaml::Value as Yaml;
use tokio::net::UdpSocket;
use tributary_testkit::{free_udp_port, RotelReceiver};

/// The shipped pipeline with this run's session names, ports, Parquet folder and OTLP endpoint.
fn pipeline(run: &str, srt_port: u16, udp_in: u16, udp_out: u16, otlp_http: u16, data: &std::path::Path) -> String {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines/srt-stats.yaml")).unwrap();
    let mut doc: Yaml = serde_yaml::from_str(&text).unwrap();
    doc["admin"]["address"] = Yaml::from(common::free_addr().to_string());
    let sessions = doc["sources"]["srt"]["sessions"].as_sequence_mut().unwrap();
    assert_eq!(sessions.len(), 2);
    for s in sessions.iter_mut() {
        let name = format!("{}-{run}", s["name"].as_str().unwrap());
        s["name"] = Yaml::from(name);
        s["listen_port"] = Yaml::from(srt_port as u64);
    }
    sessions[0]["udp_in"] = Yaml::from(format!("127.0.0.1:{udp_in}"));
    sessions[1]["udp_out"] = Yaml::from(format!("127.0.0.1:{udp_out}"));
    doc["sinks"]["link_metrics"]["endpoint"] = Yaml::from(format!("http://127.0.0.1:{otlp_http}/v1/metrics"));
    doc["sinks"]["stats_parquet"]["path"] = Yaml::from(data.to_str().unwrap());
    doc["sources"]["srt"]["buffer"]["path"] = Yaml::from(data.join("buffer").to_str().unwrap());
    doc.as_mapping_mut().unwrap().remove("tests");
    serde_yaml::to_string(&doc).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srt_pipeline_fills_postgres_parquet_and_otlp_and_every_dashboard_query_answers() {
    tributary_testkit::srt_live_transmit();
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    let run = format!("{:x}", (nanos as u64 ^ std::process::id() as u64) & 0xffffff);
    let (tx, rx) = (format!("studio-tx-{run}"), format!("studio-rx-{run}"));
    let (srt_port, udp_in, udp_out) = (free_udp_port(), free_udp_port(), free_udp_port());
    let otlp = RotelReceiver::start().await;
    let sink = UdpSocket::bind(("127.0.0.1", udp_out)).await.unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while sink.recv(&mut buf).await.is_ok() {}
    });

    let dir = tempfile::tempdir().unwrap();
    let path = common::write(
        dir.path(),
        "srt-stats.yaml",
        &pipeline(&run, srt_port, udp_in, udp_out, otlp.http, &dir.path().join("data/srt_stats")),
    );
    let from_s = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64 - 60;
    let (run_task, shutdown) = common::spawn_pipeline(&path);
    let db = common::pg().await;
    // The transmitter accepted the receiver (its event is in the database), then a stream of
    // packets (the receiver reports its own connect on the first data).
    for attempt in 0.. {
        let n: i64 = db
            .query_one("SELECT count(*) FROM srt_events WHERE session = $1 AND event = 'connected'", &[&tx])
            .await
            .map(|r| r.get(0))
            .unwrap_or(0);
        if n == 1 {
            break;
        }
        assert!(attempt < 200, "the sessions never connected");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sender = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for i in 0..1000u32 {
        sender.send_to(&[0x47; 1316], ("127.0.0.1", udp_in)).await.unwrap();
        if i % 10 == 9 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    shutdown.cancel();
    let report = tokio::time::timeout(Duration::from_secs(30), run_task).await.expect("clean stop").unwrap();
    assert!(report.ok(), "{:?} {:?}", report.failures, report.summary);
    let to_s = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64 + 60;

    // PostgreSQL: counters per connection, the stop recorded, the event history.
    let row = db
        .query_one("SELECT max(send_packets_unique), max(recv_packets), count(*) FILTER (WHERE connected = 1), bool_and(role = 'tx') FROM srt_stats WHERE session = $1", &[&tx])
        .await
        .unwrap();
    let (unique, recv, connected_rows, all_tx): (i64, Option<i64>, i64, bool) = (row.get(0), row.get(1), row.get(2), row.get(3));
    assert!(unique > 900 && unique <= 1000, "the last report covers all but the last 100 packets: {unique}");
    assert_eq!(recv, None, "a transmitter's rows leave the receiver columns null");
    assert!(connected_rows >= 9 && all_tx, "{connected_rows}");
    let rx_packets: i64 = db.query_one("SELECT max(recv_packets_unique) FROM srt_stats WHERE session = $1", &[&rx]).await.unwrap().get(0);
    assert!(rx_packets > 900 && rx_packets <= 1000, "{rx_packets}");
    let last: i64 =
        db.query_one("SELECT connected FROM srt_stats WHERE session = $1 ORDER BY ts DESC LIMIT 1", &[&tx]).await.unwrap().get(0);
    assert_eq!(last, 0, "the clean stop is the last row");
    let mut event_rows = 0;
    for session in [&tx, &rx] {
        let events: Vec<String> = db
            .query("SELECT event FROM srt_events WHERE session = $1 ORDER BY ts", &[session])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        // Whichever session stops second may first see its peer go (a `disconnected`).
        let expected: &[&[&str]] = &[&["started", "connected", "exited"], &["started", "connected", "disconnected", "exited"]];
        assert!(expected.contains(&events.iter().map(String::as_str).collect::<Vec<_>>().as_slice()), "{session}: {events:?}");
        event_rows += events.len();
    }

    // Parquet: the same rows as the stats table.
    let pg_rows: i64 = db.query_one("SELECT count(*) FROM srt_stats WHERE session IN ($1, $2)", &[&tx, &rx]).await.unwrap().get(0);
    let parquet_rows =
        common::query_count(&dir.path().join("data"), &format!("SELECT count(*) AS n FROM srt_stats WHERE session IN ('{tx}', '{rx}')"))
            .await;
    assert_eq!(parquet_rows, pg_rows);

    // OTLP: the link metrics reached the receiver with the session attribute.
    let dump = otlp.output_with(&tx, 0).await;
    for name in ["srt_link_rtt", "srt_mbit_rate", "srt_line_loss", "srt_retransmitted_packets", "srt_reconnections", "srt_connected"] {
        assert!(dump.contains(name), "{name} missing from the OTLP export");
    }

    // Every dashboard query, macros expanded, answers with rows.
    let sessions = common::sql_dashboard_variable(&db, "srt.json", (from_s, to_s)).await;
    assert!(sessions.contains(&tx) && sessions.contains(&rx), "variable query: {sessions:?}");
    let panels = common::sql_dashboard_panels(&db, "srt.json", (from_s, to_s), &[("session", vec![tx.clone(), rx.clone()])]).await;
    assert_eq!(panels.len(), 7);
    for (title, rows) in panels {
        if title == "Reconnections" {
            let got: Vec<(String, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
            assert_eq!(got, [(rx.clone(), 0), (tx.clone(), 0)]);
        }
        if title == "Connection events" {
            assert_eq!(rows.len(), event_rows, "every event of both sessions");
        }
    }
}
