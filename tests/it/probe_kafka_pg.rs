//! The API status monitor's two-process design with the shipped pipeline files:
//! `pipelines/probe-producer.yaml` (site_probe → Kafka `statuses`, original message format) and
//! `pipelines/probe-consumer.yaml` (Kafka → PostgreSQL upsert), through librdkafka's MockCluster.

use crate::common;

use std::time::Duration;

use rdkafka::mocking::MockCluster;
use tributary_testkit::TestSite;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_and_consumer_pipelines_deliver_statuses_to_postgres() {
    let site = TestSite::start(Duration::from_millis(400), 30).await.unwrap();
    let mock = MockCluster::new(1).unwrap();
    let topic = format!("statuses_{}", std::process::id());
    mock.create_topic(&topic, 1, 1).unwrap();
    let db = common::pg().await;

    // The pipeline files read these (each has a default for real deployments). They go to the
    // two `tributary run` processes only: this test shares its process with the others.
    let vars = [
        ("KAFKA_BROKERS", mock.bootstrap_servers()),
        ("KAFKA_STATUS_TOPIC", topic.clone()),
        ("PROBE_SITE", site.http.clone()),
        ("API_READ_INTERVAL", "300ms".to_string()),
        ("PG_CONNECTION", tributary_testkit::test_postgres_url()),
    ];
    let run = |pipeline: &str| {
        std::process::Command::new(common::bin())
            .args(["run", pipeline])
            .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
            .env("TRIBUTARY_ADMIN", common::free_addr().to_string())
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let producer = run("pipelines/probe-producer.yaml");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let consumer = run("pipelines/probe-consumer.yaml");

    let count = || async {
        db.query_one("SELECT count(DISTINCT endpoint) FROM api_status WHERE site = $1", &[&site.http])
            .await
            .map(|r| r.get::<_, i64>(0))
            .unwrap_or(0)
    };
    for _ in 0..150 {
        if count().await == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A stop drains and exits 0; a failure on the way would exit 1 and say why on stderr.
    for (name, child) in [("producer", producer), ("consumer", consumer)] {
        common::sigterm(&child);
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "the {name} exited with {}: {}", out.status, String::from_utf8_lossy(&out.stderr));
    }

    // The test site has neither endpoint: both probes answer 404, which travels through Kafka in
    // the original format and lands as the original consumer would have stored it.
    let rows: Vec<(String, i64, String, String, i64, bool)> = db
        .query(
            "SELECT DISTINCT ON (endpoint) endpoint, status_code, log, error, sla_ms, success FROM api_status WHERE site = $1 ORDER BY endpoint, ts",
            &[&site.http],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)))
        .collect();
    let not_found = "status 404 is not one of the expected 200-299".to_string();
    assert_eq!(
        rows,
        vec![
            ("/health".into(), 404, String::new(), not_found.clone(), 500, false),
            ("/metrics".into(), 404, String::new(), not_found, 500, false),
        ]
    );
    db.batch_execute(&format!("DELETE FROM api_status WHERE site = '{}'", site.http)).await.unwrap();
}
