//! The shipped `pipelines/webex-mesh.yaml` against `tributary simulate webex-mesh` (in process):
//! a backfill and a poll fill PostgreSQL and Parquet, the rows match what the simulator's model
//! says, a second run over overlapping windows adds no duplicates, and every panel and variable
//! query of the `dashboards/webex-mesh-*.json` dashboards answers with rows.

use crate::common;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Utc};
use serde_json::Value;
use serde_yaml::Value as Yaml;
use tributary_webex_mesh::simulator::{self, SimConfig, SimHandle};
use tributary_webex_mesh::time::id_key;

const TOKEN: &str = "e2e-personal-token";

/// The shipped pipeline pointed at the simulator, with a 2-day backfill and this run's files.
fn pipeline(sim: &SimHandle, dir: &Path) -> String {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines/webex-mesh.yaml")).unwrap();
    let mut doc: Yaml = serde_yaml::from_str(&text).unwrap();
    doc["admin"]["address"] = Yaml::from(common::free_addr().to_string());
    let mesh = &mut doc["sources"]["mesh"];
    mesh["base_url"] = Yaml::from(sim.base_url());
    mesh["auth"] = serde_yaml::from_str(&format!("{{access_token: {TOKEN}}}")).unwrap();
    mesh["backfill"] = Yaml::from("2d");
    mesh["interval"] = Yaml::from("30m");
    mesh["state_file"] = Yaml::from(dir.join("state.json").to_str().unwrap());
    mesh["buffer"]["path"] = Yaml::from(dir.join("buffer").to_str().unwrap());
    for (_, sink) in doc["sinks"].as_mapping_mut().unwrap().iter_mut() {
        if sink["type"] == "parquet" {
            let table = sink["path"].as_str().unwrap().rsplit('/').next().unwrap().to_string();
            sink["path"] = Yaml::from(dir.join("data").join(table).to_str().unwrap());
        }
    }
    serde_yaml::to_string(&doc).unwrap()
}

/// Runs the pipeline until `done` says so, then stops it cleanly.
async fn run_until(path: &Path, what: &str, done: impl AsyncFn() -> bool) {
    let (task, shutdown) = common::spawn_pipeline(path);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while !done().await {
        assert!(tokio::time::Instant::now() < deadline, "{what} never happened");
        assert!(!task.is_finished(), "the pipeline stopped early");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    shutdown.cancel();
    let report = tokio::time::timeout(Duration::from_secs(60), task).await.expect("clean stop").unwrap();
    assert!(report.ok(), "{:?} {:?}", report.failures, report.summary);
}

async fn count(db: &tokio_postgres::Client, table: &str, org: &str) -> i64 {
    db.query_one(&format!("SELECT count(*) FROM {table} WHERE organization_id = $1"), &[&org]).await.unwrap().get(0)
}

const TABLES: [&str; 12] = [
    "organizations",
    "cluster_details",
    "node_details",
    "cluster_availability",
    "node_availability",
    "cluster_utilization",
    "cloud_overflow",
    "call_redirects",
    "client_type_distribution",
    "reachability_test_results",
    "media_health_monitoring_test_results",
    "network_test_results",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webex_pipeline_backfills_polls_upserts_and_every_dashboard_query_answers() {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64;
    let seed = nanos ^ std::process::id() as u64;
    let org_name = format!("Acme Media {:x}", seed & 0xffffff);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sim = simulator::spawn(
        listener,
        SimConfig { seed, org_name: org_name.clone(), personal_token: Some(TOKEN.into()), ..SimConfig::default() },
    );
    let model = sim.model();
    let org = id_key(&model.org.id);
    let dir = tempfile::tempdir().unwrap();
    let path = common::write(dir.path(), "webex-mesh.yaml", &pipeline(&sim, dir.path()));
    let db = common::pg().await;
    let state = dir.path().join("state.json");

    // Run 1: the regular 30-minute window, then the backfill (2 days, one request per dataset).
    run_until(&path, "the backfill", async || {
        let Ok(text) = std::fs::read_to_string(&state) else { return false };
        let s: Value = serde_json::from_str(&text).unwrap();
        s["orgs"][&org]["reached"] == s["orgs"][&org]["target"]
    })
    .await;
    let mut first = HashMap::new();
    for t in TABLES {
        first.insert(t, count(&db, t, &org).await);
    }
    let name: String =
        db.query_one("SELECT organization_name FROM organizations WHERE organization_id = $1", &[&org]).await.unwrap().get(0);
    assert_eq!(name, org_name);
    assert_eq!(first["organizations"], 1);
    assert_eq!(first["cluster_details"], 9, "one row per cluster × node");
    assert_eq!(first["node_details"], 9);

    // Utilization: 4 clusters × contiguous 10-minute buckets over 2 days, values as modelled.
    let r = db
        .query_one(
            "SELECT count(DISTINCT measure_timestamp), extract(epoch FROM max(measure_timestamp) - min(measure_timestamp))::bigint / 600 + 1 FROM cluster_utilization WHERE organization_id = $1",
            &[&org],
        )
        .await
        .unwrap();
    let (buckets, span): (i64, i64) = (r.get(0), r.get(1));
    assert_eq!(buckets, span, "no gap between the backfill and the poll");
    assert!(buckets >= 2 * 144, "{buckets}");
    assert_eq!(first["cluster_utilization"], 4 * buckets);
    assert_eq!(first["client_type_distribution"], 4 * 5 * buckets);
    let rows = db
        .query("SELECT cluster_name, measure_timestamp, peak_cpu, avg_cpu, active_calls, active_private_calls FROM cluster_utilization WHERE organization_id = $1", &[&org])
        .await
        .unwrap();
    for row in &rows {
        let cluster = model.org.clusters.iter().find(|c| c.name == row.get::<_, String>(0)).unwrap();
        let at: SystemTime = row.get(1);
        let u = model.usage(cluster, DateTime::<Utc>::from(at));
        let got: (f64, f64, i64, i64) = (row.get(2), row.get(3), row.get(4), row.get(5));
        assert_eq!(
            got,
            (u.peak_cpu, u.avg_cpu, u.active_calls as i64, u.active_private_calls as i64),
            "{} at {:?}",
            cluster.name,
            DateTime::<Utc>::from(at)
        );
    }

    // Availability: hourly segments with the modelled node counts; the flaky Bangalore node's
    // daily outage carries its reason.
    let rows = db.query("SELECT cluster_name, start_timestamp, online_nodes, offline_nodes, total_nodes, availability FROM cluster_availability WHERE organization_id = $1", &[&org]).await.unwrap();
    assert!(rows.len() >= 4 * 48, "{}", rows.len());
    for row in &rows {
        let cluster = model.org.clusters.iter().find(|c| c.name == row.get::<_, String>(0)).unwrap();
        let online = model.online_nodes(cluster, DateTime::<Utc>::from(row.get::<_, SystemTime>(1))) as i64;
        let got: (i64, i64, i64) = (row.get(2), row.get(3), row.get(4));
        assert_eq!(got, (online, cluster.nodes.len() as i64 - online, cluster.nodes.len() as i64));
        assert_eq!(row.get::<_, String>(5), if online > 0 { "Available" } else { "Unavailable" });
    }
    let reasons: Vec<String> = db
        .query("SELECT DISTINCT unavailability_reason FROM node_availability WHERE organization_id = $1 AND host_name = 'vmn2.bangalore.mesh.example.com' AND extract(hour FROM start_timestamp AT TIME ZONE 'UTC') = 6", &[&org])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(reasons, ["Connectivity Issues to the Node"]);
    assert_eq!(first["node_availability"] % 9, 0);

    // Routing and tests: present, and the steady firewall finding shows.
    assert!(first["call_redirects"] > 0 && first["cloud_overflow"] > 0);
    let blocked: Vec<(String, bool)> = db
        .query("SELECT DISTINCT protocol || '/' || port, reachability FROM reachability_test_results WHERE organization_id = $1 AND host_name = 'vmn3.amsterdam.mesh.example.com' AND protocol = 'udp' AND port = 51004", &[&org])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(blocked, [("udp/51004".to_string(), false)]);
    for t in ["reachability_test_results", "media_health_monitoring_test_results", "network_test_results"] {
        assert!(first[t] > 0, "{t}");
    }
    let failed_calls: i64 = db
        .query_one("SELECT count(*) FILTER (WHERE error IS NOT NULL) FROM webex_mesh_calls WHERE organization_id = $1", &[&org])
        .await
        .unwrap()
        .get(0);
    assert_eq!(failed_calls, 0);

    // Parquet: the same utilization rows (distinct: the files are appended, not upserted).
    let parquet = common::query_count(
        &dir.path().join("data"),
        &format!("SELECT count(*) AS n FROM (SELECT DISTINCT cluster_id, measure_timestamp FROM cluster_utilization WHERE organization_id = '{org}') AS t"),
    )
    .await;
    assert_eq!(parquet, first["cluster_utilization"]);

    // Run 2: the backfill is done (state file), so one poll of the last 30 minutes — windows
    // that overlap the first run's. Upserts keep every key once.
    let calls_before: i64 = db.query_one("SELECT count(*) FROM webex_mesh_calls WHERE organization_id = $1", &[&org]).await.unwrap().get(0);
    run_until(&path, "the second poll", async || {
        let n: i64 = db.query_one("SELECT count(*) FROM webex_mesh_calls WHERE organization_id = $1", &[&org]).await.unwrap().get(0);
        n >= calls_before + 13
    })
    .await;
    for t in TABLES {
        let (before, after) = (first[t], count(&db, t, &org).await);
        // Only buckets, segments or test runs that began since the first run are new.
        let new_allowed = match t {
            "cluster_utilization" | "cluster_availability" => 4,
            "client_type_distribution" => 20,
            "node_availability" => 9,
            "reachability_test_results" => 9 * 2 * 4,
            "media_health_monitoring_test_results" => 9 * 3,
            "network_test_results" => 9 * 7,
            "call_redirects" => 12,
            "cloud_overflow" => 2,
            _ => 0,
        };
        assert!(after >= before && after - before <= new_allowed, "{t}: {before} rows after the first run, {after} after the second");
    }

    // Every dashboard query, macros and variables expanded, answers with rows.
    let now = Utc::now().timestamp();
    let clusters: Vec<String> = model.org.clusters.iter().map(|c| c.name.clone()).collect();
    let vars = [("org", vec![org_name.clone()]), ("cluster", clusters.clone())];
    let mut panels_run = 0;
    for file in ["webex-mesh-clusters", "webex-mesh-availability", "webex-mesh-usage", "webex-mesh-tests"] {
        let text = std::fs::read_to_string(format!("{}/dashboards/{file}.json", env!("CARGO_MANIFEST_DIR"))).unwrap();
        let dashboard: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
        for variable in dashboard["templating"]["list"].as_array().unwrap() {
            let sql = common::expand_grafana_sql(variable["query"].as_str().unwrap(), now - 3 * 86_400, now + 3600, 600, &vars);
            let values: Vec<String> =
                db.query(&sql, &[]).await.unwrap_or_else(|e| panic!("{file} variable: {e}\n{sql}")).iter().map(|r| r.get(0)).collect();
            let wanted = if variable["name"] == "org" { vec![org_name.clone()] } else { clusters.clone() };
            assert!(wanted.iter().all(|w| values.contains(w)), "{file} variable {}: {values:?}", variable["name"]);
        }
        for panel in dashboard["panels"].as_array().unwrap() {
            let title = panel["title"].as_str().unwrap();
            assert_eq!(panel["datasource"]["uid"], "timescaledb", "{file}: {title}");
            for target in panel["targets"].as_array().unwrap() {
                let sql = common::expand_grafana_sql(target["rawSql"].as_str().unwrap(), now - 3 * 86_400, now + 3600, 600, &vars);
                let rows = db.query(&sql, &[]).await.unwrap_or_else(|e| panic!("{file}: panel `{title}`: {e}\n{sql}"));
                assert!(!rows.is_empty(), "{file}: panel `{title}` returned no rows\n{sql}");
                panels_run += 1;
            }
        }
    }
    assert_eq!(panels_run, 12 + 5 + 13 + 9);
    sim.stop();
}
