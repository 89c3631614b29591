//! The shipped `pipelines/operations.yaml` run for real: `tributary simulate webex-mesh` in process,
//! two srt-live-transmit sessions fed by UDP, and site probes of the pipeline's own admin server,
//! joined by site through a copy of `pipelines/data/sites.csv` (this run's names). Then every
//! query of `dashboards/operations.json` runs against the filled `site_health` table.

use crate::common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_yaml::Value as Yaml;
use tokio::net::UdpSocket;
use tributary_testkit::free_udp_port;
use tributary_webex_mesh::simulator::{self, SimConfig};

const TOKEN: &str = "operations-personal-token";

/// `sites.csv` with this run's suffix on SRT session names and site names, so concurrent runs
/// and earlier rows in the shared database stay apart.
fn sites_csv(run: &str) -> String {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines/data/sites.csv")).unwrap();
    let mut lines = text.lines();
    let mut out = format!("{}\n", lines.next().unwrap());
    for line in lines {
        let f: Vec<&str> = line.split(',').collect();
        let key = if f[0] == "srt" { format!("{}-{run}", f[1]) } else { f[1].to_string() };
        out.push_str(&format!("{},{key},{}-{run},{}\n", f[0], f[2], f[3]));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_pipeline_joins_three_domains_by_site_and_every_dashboard_query_answers() {
    tributary_testkit::srt_live_transmit();
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64;
    let run = format!("{:x}", (nanos ^ std::process::id() as u64) & 0xffffff);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sim = simulator::spawn(
        listener,
        SimConfig { seed: nanos, org_name: format!("Ops {run}"), personal_token: Some(TOKEN.into()), ..SimConfig::default() },
    );
    let (srt_port, udp_in, udp_out) = (free_udp_port(), free_udp_port(), free_udp_port());
    let sink = UdpSocket::bind(("127.0.0.1", udp_out)).await.unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while sink.recv(&mut buf).await.is_ok() {}
    });

    let dir = tempfile::tempdir().unwrap();
    let sites = common::write(dir.path(), "sites.csv", &sites_csv(&run));
    let admin = common::free_addr();
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines/operations.yaml")).unwrap();
    let mut doc: Yaml = serde_yaml::from_str(&text).unwrap();
    doc.as_mapping_mut().unwrap().remove("tests");
    doc["admin"]["address"] = Yaml::from(admin.to_string());
    doc["tables"]["sites"]["path"] = Yaml::from(sites.to_str().unwrap());
    let mesh = &mut doc["sources"]["mesh"];
    mesh["base_url"] = Yaml::from(sim.base_url());
    mesh["auth"] = serde_yaml::from_str(&format!("{{access_token: {TOKEN}}}")).unwrap();
    mesh["state_file"] = Yaml::from(dir.path().join("state.json").to_str().unwrap());
    let sessions = doc["sources"]["srt"]["sessions"].as_sequence_mut().unwrap();
    for s in sessions.iter_mut() {
        s["name"] = Yaml::from(format!("{}-{run}", s["name"].as_str().unwrap()));
        s["listen_port"] = Yaml::from(srt_port as u64);
    }
    sessions[0]["udp_in"] = Yaml::from(format!("127.0.0.1:{udp_in}"));
    sessions[1]["udp_out"] = Yaml::from(format!("127.0.0.1:{udp_out}"));
    doc["sources"]["probes"]["interval"] = Yaml::from("1s");
    for t in doc["sources"]["probes"]["targets"].as_sequence_mut().unwrap() {
        t["site"] = Yaml::from(format!("http://{admin}"));
    }
    // Five-second windows closed as soon as event time passes them, so the test takes seconds.
    doc["transforms"]["site_health"]["window"] = serde_yaml::from_str("{tumbling: 5s}").unwrap();
    let path = common::write(dir.path(), "operations.yaml", &serde_yaml::to_string(&doc).unwrap());

    let from_s = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64 - 60;
    let (task, shutdown) = common::spawn_pipeline(&path);
    let db = common::pg().await;
    let ams = format!("ams-{run}");
    // Packets through the SRT link until a minute of Amsterdam has all three domains.
    let sender = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        for _ in 0..50 {
            sender.send_to(&[0x47; 1316], ("127.0.0.1", udp_in)).await.unwrap();
        }
        let complete: i64 = db
            .query_one(
                "SELECT count(*) FROM site_health WHERE site = $1 AND probes > 0 AND srt_sessions > 0 AND mesh_total_nodes IS NOT NULL",
                &[&ams],
            )
            .await
            .map(|r| r.get(0))
            .unwrap_or(0);
        if complete > 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no complete health row for {ams}");
        assert!(!task.is_finished(), "the pipeline stopped early");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The tables' sizes are in /metrics: every line of sites.csv, and the simulator's 4 clusters.
    let (status, metrics) = common::get(admin, "/metrics").unwrap();
    assert_eq!(status, 200);
    let table_rows: Vec<&str> = metrics.lines().filter(|l| l.starts_with("tributary_table_rows{")).collect();
    assert_eq!(table_rows, ["tributary_table_rows{table=\"sites\"} 9", "tributary_table_rows{table=\"clusters\"} 4"]);
    assert!(metrics.contains("tributary_table_refresh_failures_total{table=\"sites\"} 0"), "{metrics}");
    shutdown.cancel();
    let report = tokio::time::timeout(Duration::from_secs(60), task).await.expect("clean stop").unwrap();
    assert!(report.ok(), "{:?} {:?}", report.failures, report.summary);
    let to_s = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64 + 60;

    // The Amsterdam cluster's nodes (three in the simulator) reached the site through the table.
    let total: i64 =
        db.query_one("SELECT max(mesh_total_nodes) FROM site_health WHERE site = $1 AND mesh_clusters = 1", &[&ams]).await.unwrap().get(0);
    assert_eq!(total, 3);

    let listed: Vec<String> =
        common::sql_dashboard_variable(&db, "operations.json", (from_s, to_s)).await.into_iter().filter(|s| s.ends_with(&run)).collect();
    // Sydney has a cluster only: no probes or links, so no row of its own.
    assert_eq!(listed, [format!("ams-{run}"), format!("blr-{run}"), format!("sjc-{run}")]);
    let all_sites: Vec<String> = ["ams", "sjc", "blr", "syd"].iter().map(|s| format!("{s}-{run}")).collect();
    let panels = common::sql_dashboard_panels(&db, "operations.json", (from_s, to_s), &[("site", all_sites)]).await;
    assert_eq!(panels.len(), 7);
    let (_, now) = panels.iter().find(|(title, _)| title == "Sites now").unwrap();
    let got: Vec<(String, String)> = now.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(got, [(format!("ams-{run}"), "emea".into()), (format!("blr-{run}"), "apac".into()), (format!("sjc-{run}"), "amer".into())]);
    // Bangalore's only target is a page that does not exist: every probe fails.
    let blr_health: String = now[1].get(2);
    assert_eq!(blr_health, "down");
}
