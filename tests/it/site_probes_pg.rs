//! Site probes against real local endpoints → SQL → the timescale sink on the machine's real
//! PostgreSQL; the rows are read back column by column.

use crate::common;

use std::time::Duration;

use tributary_testkit::TestSite;

fn pg_url() -> String {
    tributary_testkit::test_postgres_url()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_of_real_endpoints_land_in_postgres_column_by_column() {
    let site = TestSite::start(Duration::from_millis(600), 30).await.unwrap();
    let db = common::pg().await;
    let table = format!("probes_e2e_{}", std::process::id());
    let breaches = format!("breaches_e2e_{}", std::process::id());
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        r#"
admin: {{address: "{admin}"}}
sources:
  probes:
    type: site_probe
    interval: 1h
    start_jitter: false
    flush_interval: 100ms
    targets:
      - {{name: json, site: "{http}", endpoint: /json, type: json, json_path: $.currentDateTime, sla_ms: 500}}
      - {{name: title, url: "{http}/title", regex: '<title>([\w\s]*)</title>', sla_ms: 500}}
      - {{name: slow, url: "{http}/slow", sla_ms: 200, timeout: 3s}}
      - {{name: error, url: "{http}/error", sla_ms: 500}}
      - {{name: redirect, url: "{http}/redirect", json_path: $.status, sla_ms: 500}}
      - {{name: refused, url: "{refused}/", sla_ms: 500}}
      - {{name: tls_unverified, url: "{https}/", tls_verify: false, sla_ms: 1000}}
      - {{name: tls_verified, url: "{https}/", sla_ms: 1000}}
transforms:
  sla_breaches:
    inputs: [probes]
    sql: SELECT ts, name, status_code, error_kind FROM probes WHERE NOT in_sla OR NOT success
sinks:
  db:
    type: timescale
    inputs: [probes]
    connection: "{pg}"
    table: {table}
    mode: upsert
    key: [name, ts]
    batch: {{max_age: 100ms}}
  breaches_db:
    type: timescale
    inputs: [sla_breaches]
    connection: "{pg}"
    table: {breaches}
    batch: {{max_age: 100ms}}
"#,
        admin = common::free_addr(),
        http = site.http,
        https = site.https,
        refused = site.refused,
        pg = pg_url(),
    );
    let path = common::write(dir.path(), "probes.yaml", &yaml);
    let (run, stop) = common::spawn_pipeline(&path);

    let mut n = 0i64;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        n = match db.query_one(&format!("SELECT count(*) FROM \"{table}\""), &[]).await {
            Ok(r) => r.get(0),
            Err(_) => 0,
        };
        if n == 8 {
            break;
        }
    }
    stop.cancel();
    let report = run.await.unwrap();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert_eq!(n, 8, "one row per target");

    type Row = (String, i64, bool, bool, Option<String>, Option<String>, Option<String>, i64, Option<i64>);
    let rows: Vec<Row> = db
        .query(
            &format!(
                "SELECT name, status_code, success, in_sla, value, error_kind, error, redirects, body_bytes FROM \"{table}\" ORDER BY name"
            ),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5), r.get(6), r.get(7), r.get(8)))
        .collect();
    let refused_addr = site.refused.trim_start_matches("http://");
    let s = |v: &str| Some(v.to_string());
    let expected: Vec<Row> = vec![
        ("error".into(), 500, false, true, None, s("http_status"), s("status 500 is not one of the expected 200-299"), 0, Some(16)),
        ("json".into(), 200, true, true, s("2026-11-22T10:00Z"), None, None, 0, Some(75)),
        ("redirect".into(), 200, true, true, s("up"), None, None, 1, Some(75)),
        (
            "refused".into(),
            0,
            false,
            false,
            None,
            s("connect"),
            s(&format!("cannot connect to {refused_addr}: Connection refused (os error 111)")),
            0,
            None,
        ),
        ("slow".into(), 200, true, false, None, None, None, 0, Some(7)),
        ("title".into(), 200, true, true, s("Video Mesh Status"), None, None, 0, Some(94)),
        ("tls_unverified".into(), 200, true, true, None, None, None, 0, Some(6)),
    ];
    assert_eq!(&rows[..7], &expected[..]);
    let tls = &rows[7];
    assert_eq!((tls.0.as_str(), tls.1, tls.2, tls.5.as_deref()), ("tls_verified", 0, false, Some("tls")));
    assert!(tls.6.as_deref().unwrap().contains("invalid peer certificate: UnknownIssuer"), "{tls:?}");

    // Timings and TLS columns: present where the phase happened, null where it did not.
    // name, dns/connect/tls timed, days until the certificate expires, response and SLA ms.
    type Timing = (String, bool, bool, bool, Option<f64>, i64, i64);
    let timing: Vec<Timing> = db
        .query(
            &format!(
                "SELECT name, dns_ms IS NOT NULL, connect_ms IS NOT NULL, tls_ms IS NOT NULL, tls_cert_expiry_days, response_time_ms, sla_ms FROM \"{table}\" ORDER BY name"
            ),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5), r.get(6)))
        .collect();
    let by = |n: &str| timing.iter().find(|t| t.0 == n).unwrap().clone();
    assert_eq!((by("json").1, by("json").2, by("json").3, by("json").4), (true, true, false, None));
    assert_eq!((by("refused").1, by("refused").2), (true, false));
    let days = by("tls_unverified").4.unwrap();
    assert!(by("tls_unverified").3 && (29.99..=30.0).contains(&days), "{days}");
    assert!(by("slow").5 >= 600 && by("slow").6 == 200, "{:?}", by("slow"));

    let breached: Vec<(String, i64, Option<String>)> = db
        .query(&format!("SELECT name, status_code, error_kind FROM \"{breaches}\" ORDER BY name"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        breached,
        vec![
            ("error".into(), 500, Some("http_status".into())),
            ("refused".into(), 0, Some("connect".into())),
            ("slow".into(), 200, None),
            ("tls_verified".into(), 0, Some("tls".into())),
        ]
    );
    db.batch_execute(&format!("DROP TABLE \"{table}\"; DROP TABLE \"{breaches}\"")).await.unwrap();
}
