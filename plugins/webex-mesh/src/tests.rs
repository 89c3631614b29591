use chrono::{TimeZone, Utc};
use serde_json::{json, Value};

use crate::datasets::{self, Ctx, Dataset, Row};
use crate::poll::BackfillState;
use crate::simulator::{bodies, Model, Shapes};
use crate::*;

fn ctx<'a>(org: &'a str) -> Ctx<'a> {
    Ctx { org_id: org, poll_ts: "2026-11-22T10:00:00Z", trigger_query: "All" }
}

fn err(yaml: &str) -> String {
    match WebexMeshPlugin.build(&ComponentConfig::from_yaml("mesh", yaml)) {
        Ok(_) => panic!("accepted: {yaml}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn config_errors_name_the_option() {
    assert_eq!(err("{}"), "missing field `auth`");
    assert_eq!(err("auth: {client_id: abc}"), "auth: needs client_id and client_secret (an OAuth Webex Integration) or access_token");
    assert_eq!(
        err("{auth: {access_token: t}, interval: 10m, lookback: 5m}"),
        "lookback: (300s) must be at least the interval (600s), or data between polls is never read"
    );
    assert_eq!(
        err("{auth: {access_token: t}, backfill_window: 8d}"),
        "backfill_window: must be between 1s and 7 days (the API's longest range)"
    );
    assert!(
        err("{auth: {access_token: t}, datasets: [utilisation]}").contains("unknown variant `utilisation`"),
        "{}",
        err("{auth: {access_token: t}, datasets: [utilisation]}")
    );
    assert_eq!(
        err("{auth: {client_id: a, client_secret: b, redirect_uri: 'not a url'}}"),
        "auth.redirect_uri: `not a url` is not a URL: relative URL without a base"
    );
    let built = WebexMeshPlugin.build(&ComponentConfig::from_yaml("mesh", "auth: {client_id: a, client_secret: b}")).unwrap();
    let names: Vec<_> = built.outputs.iter().map(|o| o.name.clone()).collect();
    assert_eq!(
        names,
        [
            "",
            "organizations",
            "cluster_details",
            "node_details",
            "cluster_availability",
            "node_availability",
            "utilization",
            "cloud_overflow",
            "call_redirects",
            "client_types",
            "reachability",
            "media_health",
            "network_tests"
        ]
    );
}

/// `listen: ${WEBEX_CALLBACK_LISTEN:-}` left empty serves the callback on the redirect URI's address.
#[test]
fn an_empty_callback_listen_is_unset() {
    let listen = |v: &str| {
        serde_yaml::from_str::<config::WebexMeshConfig>(&format!("auth: {{client_id: a, client_secret: b, listen: '{v}'}}"))
            .unwrap()
            .auth
            .listen
    };
    assert_eq!(listen(""), None);
    assert_eq!(listen("0.0.0.0:2808"), Some("0.0.0.0:2808".parse().unwrap()));
    assert!(
        err("{auth: {client_id: a, client_secret: b, listen: 'port 2808'}}").contains("`port 2808` is not an IP:port address"),
        "{}",
        err("{auth: {client_id: a, client_secret: b, listen: 'port 2808'}}")
    );
}

/// The domain doc's utilization example (4.4), spec shape.
#[test]
fn utilization_example_from_the_spec() {
    let body = json!({"items": [{
        "orgId": "T1JHPQ==", "aggregationInterval": "10m", "from": "2022-03-23T10:22:03Z", "to": "2022-03-24T10:22:03Z",
        "items": [{"timestamp": "2022-03-23T10:30:00Z", "clusters": [
            {"clusterId": "Q0xVU1RFUi8x=", "clusterName": "sanjose", "utilizationMetrics": {"peakCpu": 54.54, "avgCpu": 4.27, "activeCalls": 5, "activePrivateCalls": 1}},
            {"clusterId": "Q0xVU1RFUi8y", "clusterName": "bangalore", "utilizationMetrics": {"peakCpu": 62, "avgCpu": 3.64, "activeCalls": 0.0, "activePrivateCalls": 0}}]}]}]});
    let rows = datasets::rows(Dataset::Utilization, &body, &ctx("other")).unwrap().rows;
    assert_eq!(rows.len(), 2);
    assert_eq!(
        Value::Object(rows[0].clone()),
        json!({"poll_timestamp": "2026-11-22T10:00:00Z", "organization_id": "T1JHPQ", "aggregation_interval": "10m",
               "from_timestamp": "2022-03-23T10:22:03Z", "to_timestamp": "2022-03-24T10:22:03Z", "measure_timestamp": "2022-03-23T10:30:00Z",
               "cluster_id": "Q0xVU1RFUi8x", "cluster_name": "sanjose", "peak_cpu": 54.54, "avg_cpu": 4.27, "active_calls": 5, "active_private_calls": 1})
    );
    assert_eq!(rows[1]["peak_cpu"], json!(62.0));
    assert_eq!(rows[1]["active_calls"], json!(0), "counts typed as number are stored as integers");
    let batch = datasets::to_batch("utilization", &rows).unwrap();
    assert_eq!(batch.num_rows(), 2);
}

fn without(rows: Vec<Row>, cols: &[&str]) -> Vec<Value> {
    rows.into_iter()
        .map(|mut r| {
            for c in cols {
                r.remove(*c);
            }
            Value::Object(r)
        })
        .collect()
}

/// The legacy shapes (top-level arrays, flat bucket lists, `items` as an object, `hostName`,
/// `results`) normalise to the same rows as the spec shapes.
#[test]
fn legacy_and_spec_shapes_give_the_same_rows() {
    let m = Model::new(7, "Acme");
    let org = m.org.id.clone();
    let from = Utc.with_ymd_and_hms(2026, 11, 20, 8, 3, 0).unwrap();
    let to = Utc.with_ymd_and_hms(2026, 11, 20, 14, 3, 0).unwrap();
    let both = |f: &dyn Fn(Shapes) -> Value, parse: &dyn Fn(&Value) -> Vec<Row>| (parse(&f(Shapes::Spec)), parse(&f(Shapes::Legacy)));

    let (spec, legacy) =
        both(&|s| bodies::utilization(&m, s, from, to), &|b| datasets::rows(Dataset::Utilization, b, &ctx(&org)).unwrap().rows);
    assert_eq!(spec.len(), 36 * 4, "6 hours of 10-minute buckets for 4 clusters");
    assert_eq!(spec, legacy);
    for ds in [Dataset::CloudOverflow, Dataset::CallRedirects] {
        let f = |s| {
            if ds == Dataset::CloudOverflow {
                bodies::cloud_overflow(&m, s, from, to)
            } else {
                bodies::call_redirects(&m, s, from, to)
            }
        };
        let (spec, legacy) = both(&f, &|b| datasets::rows(ds, b, &ctx(&org)).unwrap().rows);
        assert_eq!(spec, legacy, "{ds:?}");
    }
    let all: Vec<String> = crate::config::DEVICE_TYPES.iter().map(|s| s.to_string()).collect();
    let (spec, legacy) =
        both(&|s| bodies::client_types(&m, s, from, to, &all), &|b| datasets::rows(Dataset::ClientTypes, b, &ctx(&org)).unwrap().rows);
    assert_eq!(spec.len(), 36 * 4 * 5);
    assert_eq!(spec, legacy);

    let (spec, legacy) = both(&|s| bodies::cluster_availability(&m, s, from, to), &|b| {
        datasets::rows(Dataset::ClusterAvailability, b, &ctx(&org)).unwrap().rows
    });
    assert_eq!(spec.len(), 7 * 4, "hour-aligned segments 08:00 .. 14:00 for 4 clusters");
    assert_eq!(spec, legacy);
    let cluster = &m.org.clusters[0];
    let (spec, legacy) = both(&|s| bodies::node_availability(&m, s, &cluster.id, from, to).unwrap(), &|b| {
        datasets::rows(Dataset::NodeAvailability, b, &ctx(&org)).unwrap().rows
    });
    assert_eq!(spec.len(), 7 * cluster.nodes.len());
    assert_eq!(spec, legacy);
    assert_eq!(spec[0]["host_name"], json!(cluster.nodes[0].host));

    let (spec, legacy) = both(&|s| bodies::clusters(&m, s, to), &|b| datasets::clusters(b, &ctx(&org)).unwrap().1.rows);
    assert_eq!(spec.len(), 9, "one row per node");
    assert_eq!(spec, legacy);

    // Test results: the legacy node also has `ipAddress`, and MHM runs their `triggerType`.
    let span = (Utc.with_ymd_and_hms(2026, 11, 19, 0, 0, 0).unwrap(), Utc.with_ymd_and_hms(2026, 11, 20, 0, 0, 0).unwrap());
    for (ds, kind) in [
        (Dataset::Reachability, bodies::TestKind::Reachability),
        (Dataset::MediaHealth, bodies::TestKind::MediaHealth),
        (Dataset::NetworkTests, bodies::TestKind::Network),
    ] {
        let (spec, legacy) =
            both(&|s| bodies::test_results(&m, s, kind, span.0, span.1, "All"), &|b| datasets::rows(ds, b, &ctx(&org)).unwrap().rows);
        assert!(!spec.is_empty(), "{ds:?}");
        assert!(legacy.iter().all(|r| r["ip_address"].as_str().is_some_and(|ip| ip.starts_with("10."))), "{ds:?}");
        assert!(spec.iter().all(|r| r["ip_address"].is_null()), "{ds:?}");
        let ignore: &[&str] = if ds == Dataset::MediaHealth { &["ip_address", "trigger_type"] } else { &["ip_address"] };
        assert_eq!(without(spec, ignore), without(legacy, ignore), "{ds:?}");
    }
}

#[test]
fn test_results_rows_carry_every_failure_reason() {
    let body = json!({"orgId": "O=", "from": "2023-01-15T15:53:00Z", "to": "2023-01-20T15:53:00Z", "items": [{"clusters": [{
        "clusterId": "C", "clusterName": "sanjose", "nodes": [{"nodeId": "N=", "hostNameOrIP": "abc.company.com", "testResults": [{
            "timestamp": "2022-03-15T15:53:00.000+00:00", "triggerType": "OnDemand", "id": "T",
            "result": [{"type": "BandwidthTest", "results": [
                {"serviceType": "WebexCloud", "testResult": "Failed", "failureDetails": {"possibleFailureReason": ["slow [1402]", "slower [1405]"], "possibleRemediation": ["check the link"]}},
                {"serviceType": "ThirdPartyCloud", "testResult": "Success"}]}]}]}]}]}]});
    let rows = datasets::rows(Dataset::NetworkTests, &body, &ctx("O")).unwrap().rows;
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["test_timestamp"], json!("2022-03-15T15:53:00Z"));
    assert_eq!(rows[0]["failure_reason"], json!("slow [1402]\nslower [1405]"));
    assert_eq!(rows[0]["possible_remediation"], json!("check the link"));
    assert_eq!(rows[0]["organization_id"], json!("O"));
    assert_eq!(rows[0]["node_id"], json!("N"));
    assert_eq!(rows[1]["failure_reason"], Value::Null);
    // MHM rows without a trigger take the query's when it names one.
    let mhm = json!({"orgId": "O", "items": [{"clusters": [{"clusterId": "C", "nodes": [{"nodeId": "N", "hostName": "h", "mhmTestResults": [
        {"timestamp": "2022-03-15T15:53:00Z", "id": "T", "testResults": [{"testName": "SIP Signalling", "testResult": "Success"}]}]}]}]}]});
    let periodic = Ctx { trigger_query: "Periodic", ..ctx("O") };
    assert_eq!(datasets::rows(Dataset::MediaHealth, &mhm, &periodic).unwrap().rows[0]["trigger_type"], json!("Periodic"));
    assert_eq!(datasets::rows(Dataset::MediaHealth, &mhm, &ctx("O")).unwrap().rows[0]["trigger_type"], Value::Null);
}

#[test]
fn bad_bodies_are_errors_and_bad_elements_are_skipped() {
    assert_eq!(
        datasets::rows(Dataset::Utilization, &json!("oops"), &ctx("O")).unwrap_err(),
        "expected a JSON object or array, got a string"
    );
    assert_eq!(datasets::rows(Dataset::Utilization, &json!({"message": "x"}), &ctx("O")).unwrap_err(), "the response has no `items`");
    let body = json!({"items": [{"timestamp": "yesterday", "clusters": []}, {"timestamp": "2022-03-23T10:30:00Z", "clusters": [{"clusterId": "C", "utilizationMetrics": {"peakCpu": "n/a", "avgCpu": 1}}]}]});
    let parsed = datasets::rows(Dataset::Utilization, &body, &ctx("O")).unwrap();
    assert_eq!(parsed.skipped, 1);
    assert_eq!(parsed.first_problem.as_deref(), Some("a bucket without a valid `timestamp`: \"yesterday\""));
    assert_eq!(parsed.rows.len(), 1);
    assert_eq!(parsed.rows[0]["peak_cpu"], Value::Null, "a wrong type is a null, not a lost row");
}

#[tokio::test(start_paused = true)]
async fn the_rate_limiter_keeps_under_the_budget_per_endpoint() {
    let limiter = client::RateLimiter::new(50, std::time::Duration::from_secs(300));
    let start = tokio::time::Instant::now();
    for _ in 0..50 {
        limiter.acquire("/videoMesh/utilization").await;
    }
    assert_eq!(start.elapsed(), std::time::Duration::ZERO);
    limiter.acquire("/videoMesh/callRedirects").await;
    assert_eq!(start.elapsed(), std::time::Duration::ZERO, "other endpoints have their own budget");
    limiter.acquire("/videoMesh/utilization").await;
    assert_eq!(start.elapsed(), std::time::Duration::from_secs(300), "the 51st request waits for the window");
}

#[test]
fn backfill_walks_back_in_windows_and_resumes() {
    let cfg: WebexMeshConfig =
        ComponentConfig::from_yaml("m", "{auth: {access_token: t}, backfill: 31d, backfill_window: 6d, lookback: 30m}").decode().unwrap();
    let now = Utc.with_ymd_and_hms(2026, 11, 22, 12, 0, 0).unwrap();
    let mut state = BackfillState::default();
    let mut windows = Vec::new();
    // 31 days back from 30 minutes ago (the live poll's lookback reads those).
    assert_eq!(state.minutes_left(&["ORG"], now, &cfg), 31 * 24 * 60 - 30);
    while let Some((from, to)) = state.next_window("ORG==", now, &cfg) {
        windows.push((from, to));
        state.done_until("ORG", from);
        let read: i64 = windows.iter().map(|(f, t)| (*t - *f).num_minutes()).sum();
        assert_eq!(state.minutes_left(&["ORG"], now, &cfg), (31 * 24 * 60 - 30 - read) as u64, "the progress report's count");
        if windows.len() == 2 {
            // A restart: the state file brings the progress back.
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("state.json");
            state.save(&path).unwrap();
            state = BackfillState::load(&path).unwrap();
        }
    }
    assert_eq!(windows.len(), 6, "31 days in 6-day windows");
    assert_eq!(
        windows[0],
        (Utc.with_ymd_and_hms(2026, 11, 16, 11, 30, 0).unwrap(), Utc.with_ymd_and_hms(2026, 11, 22, 11, 30, 0).unwrap())
    );
    assert!(windows.windows(2).all(|w| w[0].0 == w[1].1), "contiguous");
    assert_eq!(windows[5].0, Utc.with_ymd_and_hms(2026, 10, 22, 12, 0, 0).unwrap());
    assert_eq!(state.next_window("ORG", now + chrono::Duration::days(1), &cfg), None, "done stays done");
}

/// The tables are data: a column that reads a level its walk lacks would be silently null.
#[test]
fn every_column_reads_a_level_of_its_walk_and_is_named_once() {
    for table in datasets::tables::ALL {
        let levels: Vec<_> = table.walk.iter().map(|s| s.level).collect();
        let mut names = std::collections::HashSet::new();
        for column in table.columns {
            assert!(names.insert(column.name), "`{}` declares `{}` twice", table.output, column.name);
            if let Some(level) = column.from.level() {
                assert!(levels.contains(&level), "`{}.{}` reads `{level}`, which its walk {levels:?} lacks", table.output, column.name);
            }
        }
    }
}

/// The clusters' response fills two outputs; a schedule's days join, `upgradePending` as text
/// is a boolean, and a cluster without an ID is skipped once.
#[test]
fn cluster_rows_from_the_spec_shape() {
    let body = json!({"items": [
        {"clusterId": "Qz0=", "clusterName": "sanjose", "releaseChannel": "stable",
         "upgradeSchedule": {"scheduleDays": ["sunday", "monday"], "scheduleTime": "02:00", "scheduleTimeZone": "UTC", "upgradePending": "True", "nextUpgradeTime": "2026-11-29T02:00:00.000Z"},
         "nodes": [{"nodeId": "Tg==", "hostNameOrIp": "n1.example", "deploymentType": "ova", "location": {"countryCode": "US", "city": "San Jose", "timeZone": "America/Los_Angeles"}}]},
        {"clusterName": "no id", "nodes": [{"nodeId": "X"}]}]});
    let (details, nodes, found) = datasets::clusters(&body, &ctx("O")).unwrap();
    assert_eq!(
        Value::Object(details.rows[0].clone()),
        json!({"poll_timestamp": "2026-11-22T10:00:00Z", "organization_id": "O", "cluster_id": "Qz0", "cluster_name": "sanjose", "node_id": "Tg",
               "release_channel": "stable", "upgrade_schedule_days": "sunday,monday", "upgrade_schedule_time": "02:00",
               "upgrade_schedule_timezone": "UTC", "upgrade_pending": true, "next_upgrade_timestamp": "2026-11-29T02:00:00Z"})
    );
    assert_eq!(
        Value::Object(nodes.rows[0].clone()),
        json!({"poll_timestamp": "2026-11-22T10:00:00Z", "organization_id": "O", "cluster_id": "Qz0", "node_id": "Tg", "host_name": "n1.example",
               "deployment_type": "ova", "country_code": "US", "city": "San Jose", "timezone": "America/Los_Angeles"})
    );
    assert_eq!((details.rows.len(), nodes.rows.len()), (1, 1));
    assert_eq!((details.skipped, details.first_problem.as_deref()), (1, Some("a cluster without a valid `clusterId`: null")));
    assert_eq!(nodes.skipped, 0, "reported once, with the details");
    assert_eq!(found, [("Qz0=".to_string(), "sanjose".to_string())]);
    for (output, rows) in [("cluster_details", &details.rows), ("node_details", &nodes.rows)] {
        assert_eq!(datasets::to_batch(output, rows).unwrap().num_rows(), 1);
    }
}

/// One row per port, under `udp` then `tcp`, the protocol read from the key.
#[test]
fn reachability_rows_take_the_protocol_from_the_key() {
    let body = json!({"orgId": "O", "from": "2026-11-22T09:00:00Z", "to": "2026-11-22T10:00:00Z", "items": [{"clusters": [{"clusterId": "C", "clusterName": "c", "nodes": [{
        "nodeId": "N", "hostName": "h", "ipAddress": "10.0.0.1", "testResults": [{"destinationCluster": "AWS", "stunResults": [
            {"timestamp": "2026-11-22T09:30:00Z", "id": "T", "triggerType": "Periodic",
             "udp": [{"port": 5004, "reachable": true, "ipAddress": "1.1.1.1"}], "tcp": [{"port": 5004, "reachable": false, "ipAddress": "1.1.1.2"}]},
            {"timestamp": null, "udp": [{"port": 1}]}]}]}]}]}]});
    let parsed = datasets::rows(Dataset::Reachability, &body, &ctx("O")).unwrap();
    let ports: Vec<_> =
        parsed.rows.iter().map(|r| (r["protocol"].clone(), r["reachability"].clone(), r["destination_ip_address"].clone())).collect();
    assert_eq!(ports, [(json!("udp"), json!(true), json!("1.1.1.1")), (json!("tcp"), json!(false), json!("1.1.1.2"))]);
    assert_eq!(
        Value::Object(parsed.rows[0].clone()),
        json!({"poll_timestamp": "2026-11-22T10:00:00Z", "from_timestamp": "2026-11-22T09:00:00Z", "to_timestamp": "2026-11-22T10:00:00Z",
               "organization_id": "O", "cluster_id": "C", "cluster_name": "c", "node_id": "N", "host_name": "h", "ip_address": "10.0.0.1",
               "destination_cluster": "AWS", "test_timestamp": "2026-11-22T09:30:00Z", "test_id": "T", "trigger_type": "Periodic",
               "protocol": "udp", "port": 5004, "reachability": true, "destination_ip_address": "1.1.1.1"})
    );
    assert_eq!(parsed.first_problem.as_deref(), Some("a reachability result without a valid `timestamp`: null"));
    assert_eq!(datasets::to_batch("reachability", &parsed.rows).unwrap().num_rows(), 2);
    assert_eq!(datasets::to_batch("reachability_typo", &parsed.rows).unwrap_err(), "no output `reachability_typo`");
}

/// The source against the simulator with a backfill already under way (`state_file`), as on an
/// exactly-once path with two sinks: one stopped at the 6th (it has the backfill from there to
/// the present), the other at the 4th. Windows end at both points, and each carries its position.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_backfill_windows_end_where_the_sinks_stopped() {
    use tributary_sdk::{Position, PositionQuery, Positions, SinkPositions};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sim = simulator::spawn(listener, simulator::SimConfig { personal_token: Some("tok".into()), ..Default::default() });
    let org = time::id_key(&sim.model().org.id);
    let day = |d| Utc.with_ymd_and_hms(2026, 11, d, 0, 0, 0).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    std::fs::write(&state, json!({"orgs": {&org: {"target": day(1), "reached": day(7)}}}).to_string()).unwrap();
    let yaml = format!(
        "{{base_url: '{}', auth: {{access_token: tok}}, backfill: 40d, backfill_window: 2d, interval: 1h, lookback: 1h, state_file: '{}', datasets: [cluster_availability]}}",
        sim.base_url(),
        state.display()
    );
    let built = WebexMeshPlugin.build(&ComponentConfig::from_yaml("mesh", &yaml)).unwrap();
    assert_eq!(built.source.replay(), Replay::WithPositions);
    let names: Vec<String> = built.outputs.iter().map(|o| o.name.clone()).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let (ctx, mut harness) = tributary_testkit::source_context("mesh", &names, 64);

    let at = |d| crate::backfill_positions::position("mesh", &org, day(1), day(d));
    let mut sinks = Vec::new();
    for stopped in [at(6), at(4)] {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<PositionQuery>();
        sinks.push(tx);
        tokio::spawn(async move {
            while let Some(query) = rx.recv().await {
                let _ = query.answer.send(Ok([stopped.clone()].into_iter().collect::<Positions>()));
            }
        });
    }
    let shutdown = harness.shutdown.clone();
    let task = tokio::spawn(built.source.run(ctx.with_sink_positions(SinkPositions::new(sinks))));
    let mut availability = harness.outputs.remove("cluster_availability").unwrap();
    let mut positions: Vec<Position> = Vec::new();
    while positions.len() < 4 {
        let delivery = tokio::time::timeout(std::time::Duration::from_secs(30), availability.recv()).await.unwrap().unwrap();
        // The live poll's rows carry none.
        positions.extend(delivery.batch.position.clone());
        delivery.batch.acks.release();
    }
    shutdown.cancel();
    task.await.unwrap().unwrap();
    assert_eq!(positions, [at(6), at(4), at(2), at(1)], "[6th, 7th), [4th, 6th), [2nd, 4th), [1st, 2nd)");
    assert!(positions.iter().all(|p| *p.stream == format!("mesh/{org}")));
}
