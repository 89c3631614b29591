//! The source against the simulator: every endpoint of a poll, 429 + Retry-After, a failing
//! endpoint that does not stop the others, and the call log.

use crate::common;

use std::collections::HashMap;
use std::time::Duration;

use common::simulator;
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Int64Type};
use tributary_sdk::{ComponentConfig, SourcePlugin};
use tributary_testkit::{source_context, SourceHarness};
use tributary_webex_mesh::datasets::output_schemas;
use tributary_webex_mesh::simulator::{SimConfig, SimHandle};
use tributary_webex_mesh::WebexMeshPlugin;

const TOKEN: &str = "personal-test-token";

/// Runs one poll (no backfill) and returns every output's rows once the call log is complete.
async fn poll_once(sim: &SimHandle, extra: &str, expected_calls: usize) -> (HashMap<String, Vec<RecordBatch>>, SourceHarness) {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "base_url: {}\nauth: {{access_token: {TOKEN}}}\ninterval: 30m\nbackfill: 0s\nstate_file: {}\n{extra}",
        sim.base_url(),
        dir.path().join("state.json").display()
    );
    let built = WebexMeshPlugin.build(&ComponentConfig::from_yaml("mesh", &yaml)).unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<&str> = output_schemas().iter().map(|(n, _)| *n).collect();
    let (ctx, mut harness) = source_context("mesh", &names, 64);
    let task = tokio::spawn(built.source.run(ctx));
    let mut got: HashMap<String, Vec<RecordBatch>> = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while got.get("").map_or(0, |b| b.iter().map(|b| b.num_rows()).sum::<usize>()) < expected_calls {
        assert!(tokio::time::Instant::now() < deadline, "the poll did not finish: {got:?}");
        for (name, rx) in harness.outputs.iter_mut() {
            while let Ok(d) = rx.try_recv() {
                got.entry(name.clone()).or_default().push(d.batch.data.clone());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    harness.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), task).await.unwrap().unwrap().unwrap();
    for (name, rx) in harness.outputs.iter_mut() {
        while let Ok(d) = rx.try_recv() {
            got.entry(name.clone()).or_default().push(d.batch.data.clone());
        }
    }
    (got, harness)
}

fn rows(got: &HashMap<String, Vec<RecordBatch>>, output: &str) -> usize {
    got.get(output).map_or(0, |b| b.iter().map(|b| b.num_rows()).sum())
}

/// The call log as (endpoint, status, error) tuples.
fn calls(got: &HashMap<String, Vec<RecordBatch>>) -> Vec<(String, Option<i64>, Option<String>)> {
    let mut out = Vec::new();
    for b in &got[""] {
        let endpoint = b.column_by_name("endpoint").unwrap().as_string::<i32>();
        let status = b.column_by_name("status").unwrap().as_primitive::<Int64Type>();
        let error = b.column_by_name("error").unwrap().as_string::<i32>();
        for i in 0..b.num_rows() {
            out.push((
                endpoint.value(i).to_string(),
                status.is_valid(i).then(|| status.value(i)),
                error.is_valid(i).then(|| error.value(i).to_string()),
            ));
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn one_poll_reads_every_dataset_with_a_personal_token() {
    let sim = simulator(SimConfig { personal_token: Some(TOKEN.into()), ..SimConfig::default() }).await;
    // organizations, clusters, 8 org-level lists, node availability for each of 4 clusters.
    let (got, harness) = poll_once(&sim, "", 14).await;
    let log = calls(&got);
    assert_eq!(log.len(), 14);
    assert!(log.iter().all(|(_, status, error)| *status == Some(200) && error.is_none()), "{log:?}");
    assert_eq!(log.iter().filter(|(e, _, _)| e == "/videoMesh/nodes/availability").count(), 4);
    assert_eq!(rows(&got, "organizations"), 1);
    assert_eq!(rows(&got, "cluster_details"), 9, "one row per cluster × node");
    assert_eq!(rows(&got, "node_details"), 9);
    // 30 minutes: one or two hour segments, three 10-minute buckets (four when the window
    // starts on a mark).
    assert!([4, 8].contains(&rows(&got, "cluster_availability")), "{}", rows(&got, "cluster_availability"));
    assert!([9, 18].contains(&rows(&got, "node_availability")));
    let buckets = rows(&got, "utilization") / 4;
    assert!([3, 4].contains(&buckets) && rows(&got, "utilization") == buckets * 4, "{}", rows(&got, "utilization"));
    assert_eq!(rows(&got, "client_types"), buckets * 4 * 5);
    assert_eq!(harness.metrics.errors.get(), 0);
    // Client types were asked for all five device types.
    assert_eq!(sim.served("/v1/videoMesh/clientTypeDistribution", 400), 0);
}

#[tokio::test]
async fn a_rate_limited_api_is_waited_out_with_retry_after() {
    // Three requests per endpoint per 2 s: the four node-availability calls hit 429.
    let sim = simulator(SimConfig {
        personal_token: Some(TOKEN.into()),
        rate_limit: 3,
        rate_window: Duration::from_secs(2),
        ..SimConfig::default()
    })
    .await;
    let (got, harness) = poll_once(&sim, "datasets: [clusters, node_availability]\nrate_limit: {requests: 1000, per: 1m}", 6).await;
    assert!(sim.served("/v1/videoMesh/nodes/availability", 429) >= 1);
    assert_eq!(sim.served("/v1/videoMesh/nodes/availability", 200), 4);
    let log = calls(&got);
    assert!(log.iter().all(|(_, status, _)| *status == Some(200)), "{log:?}");
    assert!(harness.metrics.retries.get() >= 1);
    assert_eq!(harness.metrics.errors.get(), 0);
    assert!(rows(&got, "node_availability") >= 9);
}

#[tokio::test]
async fn a_failing_endpoint_is_logged_with_its_tracking_id_and_the_others_go_on() {
    let sim = simulator(SimConfig { personal_token: Some(TOKEN.into()), ..SimConfig::default() }).await;
    sim.inject("/v1/videoMesh/utilization", &[500, 503]);
    sim.inject("/v1/videoMesh/callRedirects", &[503]);
    let (got, harness) = poll_once(&sim, "max_attempts: 2", 14).await;
    let log = calls(&got);
    let failed: Vec<_> = log.iter().filter(|(_, _, e)| e.is_some()).collect();
    assert_eq!(failed.len(), 1, "{log:?}");
    let (endpoint, status, error) = failed[0];
    assert_eq!((endpoint.as_str(), *status), ("/videoMesh/utilization", Some(503)));
    assert!(error.as_deref().unwrap().starts_with("503 Simulated failure: Service Unavailable (TrackingID ROUTER_"), "{error:?}");
    assert_eq!(harness.metrics.errors.get(), 1);
    assert_eq!(rows(&got, "utilization"), 0);
    assert!(rows(&got, "client_types") >= 3 * 4 * 5, "the other endpoints delivered");
    // The redirects call succeeded on its second attempt.
    assert_eq!(sim.served("/v1/videoMesh/callRedirects", 503), 1);
    assert_eq!(sim.served("/v1/videoMesh/callRedirects", 200), 1);
}

/// Backfill progress is saved from the acks of the rows it covers: while no sink has written a
/// window, the state file does not move; once every batch is acknowledged it records the target.
#[tokio::test]
async fn backfill_progress_is_saved_only_once_every_sink_wrote_its_rows() {
    let sim = simulator(SimConfig { personal_token: Some(TOKEN.into()), ..SimConfig::default() }).await;
    let dir = tempfile::tempdir().unwrap();
    let state_file = dir.path().join("state.json");
    let yaml = format!(
        "base_url: {}\nauth: {{access_token: {TOKEN}}}\ninterval: 30m\nbackfill: 3d\nbackfill_window: 1d\ndatasets: [clusters, utilization]\nstate_file: {}\n",
        sim.base_url(),
        state_file.display()
    );
    let built = WebexMeshPlugin.build(&ComponentConfig::from_yaml("mesh", &yaml)).unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<&str> = output_schemas().iter().map(|(n, _)| *n).collect();
    let (ctx, mut harness) = source_context("mesh", &names, 256);
    let task = tokio::spawn(built.source.run(ctx));

    // Hold every delivery (nothing written yet) until the source has been quiet for a second.
    let mut held = Vec::new();
    let mut quiet_since = tokio::time::Instant::now();
    let deadline = quiet_since + Duration::from_secs(60);
    while held.iter().filter(|b: &&tributary_sdk::Batch| !b.acks.is_empty()).count() == 0 || quiet_since.elapsed() < Duration::from_secs(1)
    {
        assert!(tokio::time::Instant::now() < deadline, "the backfill did not run");
        for rx in harness.outputs.values_mut() {
            while let Ok(d) = rx.try_recv() {
                held.push(d.batch);
                quiet_since = tokio::time::Instant::now();
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The call log of the backfill windows (the live poll's batches carry no acks).
    let windows: std::collections::BTreeSet<String> = held
        .iter()
        .filter(|b| !b.acks.is_empty() && b.data.schema().column_with_name("endpoint").is_some())
        .flat_map(|b| {
            let from = cast(b.data.column_by_name("from_timestamp").unwrap(), &DataType::Utf8).unwrap();
            (0..from.len()).map(|i| from.as_string::<i32>().value(i).to_string()).collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(windows.len(), 3, "three one-day windows were read: {windows:?}");
    assert!(!state_file.exists(), "nothing is written, so no progress is saved");

    for batch in held {
        batch.acks.release();
    }
    let state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&state_file).expect("saved after the acks")).unwrap();
    let org = state["orgs"].as_object().unwrap().values().next().unwrap().clone();
    assert_eq!(org["reached"], org["target"], "the whole backfill is recorded: {state}");
    harness.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), task).await.unwrap().unwrap().unwrap();
}
