//! Probes against a real local site ([`tributary_testkit::TestSite`]): every row field that matters, per case.

use std::time::Duration;

use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::datatypes::Int64Type;
use tributary_sdk::ComponentConfig;
use tributary_testkit::source_context;

use super::*;
use tributary_testkit::TestSite;

const LIMITS: ProbeLimits = ProbeLimits { body_limit: 1 << 20, max_redirects: 5 };

fn targets(yaml: &str) -> Vec<Target> {
    let cfg: SiteProbeConfig = ComponentConfig::from_yaml("probes", yaml).decode().map_err(|e| e.to_string()).unwrap();
    cfg.targets().map_err(|e| e.to_string()).unwrap()
}

async fn probe_one(yaml_target: &str) -> ProbeRow {
    let t = targets(&format!("{{targets: [{yaml_target}]}}"));
    probe(&t[0], LIMITS).await
}

fn config_error(yaml: &str) -> String {
    match SiteProbePlugin.build(&ComponentConfig::from_yaml("probes", yaml)) {
        Ok(_) => panic!("should be refused: {yaml}"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn fast_json_endpoint_extracts_and_passes() {
    let site = TestSite::start(Duration::from_millis(400), 30).await.unwrap();
    let r = probe_one(&format!(
        "{{name: api, site: '{}', endpoint: /json, type: json, json_path: '$.currentDateTime', sla_ms: 500}}",
        site.http
    ))
    .await;
    assert_eq!((r.name.as_str(), r.site.as_str(), r.endpoint.as_str()), ("api", site.http.as_str(), "/json"));
    assert_eq!(r.url, format!("{}/json", site.http));
    assert_eq!(r.status_code, 200);
    assert_eq!(r.value.as_deref(), Some("2026-11-22T10:00Z"));
    assert_eq!((r.success, r.in_sla, r.error_kind, r.error.as_deref()), (true, true, None, None));
    assert_eq!(r.body_bytes, Some(75));
    assert_eq!(r.sla_ms, 500);
    assert!(r.dns_ms.is_some() && r.connect_ms.is_some() && r.ttfb_ms.is_some(), "{r:?}");
    assert_eq!((r.tls_ms, r.tls_cert_expiry_days), (None, None), "plain HTTP has no TLS phase");
    assert!(r.response_time_ms <= r.total_time_ms);
}

#[tokio::test]
async fn html_title_regex_group_one_becomes_the_value() {
    let site = TestSite::start(Duration::from_millis(400), 30).await.unwrap();
    let r = probe_one(&format!("{{name: page, url: '{}/title', regex: '<title>([\\w\\s]*)</title>', sla_ms: 500}}", site.http)).await;
    assert_eq!((r.status_code, r.value.as_deref(), r.success), (200, Some("Video Mesh Status"), true));

    let r = probe_one(&format!("{{name: page, url: '{}/title', regex: '<h1>(.*)</h1>'}}", site.http)).await;
    assert_eq!((r.success, r.error_kind), (false, Some("extract")));
    assert_eq!(r.error.as_deref(), Some("regex `<h1>(.*)</h1>` did not match the body"));
    assert_eq!(r.status_code, 200);
}

#[tokio::test]
async fn slow_endpoint_times_out_at_the_sla_by_default_like_the_original() {
    let site = TestSite::start(Duration::from_millis(700), 30).await.unwrap();
    let r = probe_one(&format!("{{name: slow, url: '{}/slow', sla_ms: 200}}", site.http)).await;
    assert_eq!((r.status_code, r.success, r.in_sla, r.error_kind), (0, false, false, Some("timeout")));
    assert_eq!(r.error.as_deref(), Some("timeout after 200 ms waiting for response headers"));
    assert!(r.total_time_ms >= 200, "{r:?}");
}

#[tokio::test]
async fn slow_endpoint_with_its_own_timeout_is_measured_as_out_of_sla() {
    let site = TestSite::start(Duration::from_millis(400), 30).await.unwrap();
    let r = probe_one(&format!("{{name: slow, url: '{}/slow', sla_ms: 200, timeout: 3s}}", site.http)).await;
    assert_eq!((r.status_code, r.success, r.in_sla, r.error_kind), (200, true, false, None));
    assert!(r.response_time_ms >= 400, "{r:?}");
}

#[tokio::test]
async fn server_error_is_an_http_status_failure_unless_expected() {
    let site = TestSite::start(Duration::from_millis(400), 30).await.unwrap();
    let r = probe_one(&format!("{{name: e, url: '{}/error'}}", site.http)).await;
    assert_eq!((r.status_code, r.success, r.in_sla, r.error_kind), (500, false, true, Some("http_status")));
    assert_eq!(r.error.as_deref(), Some("status 500 is not one of the expected 200-299"));

    let r = probe_one(&format!("{{name: e, url: '{}/error', expect_status: [2xx, 500]}}", site.http)).await;
    assert_eq!((r.status_code, r.success), (500, true));
}

#[tokio::test]
async fn redirects_are_followed_and_counted() {
    let site = TestSite::start(Duration::from_millis(400), 30).await.unwrap();
    let r = probe_one(&format!("{{name: r, url: '{}/redirect', json_path: '$.status'}}", site.http)).await;
    assert_eq!((r.status_code, r.redirects, r.value.as_deref(), r.success), (200, 1, Some("up"), true));

    let t = targets(&format!("{{targets: [{{name: r, url: '{}/redirect'}}]}}", site.http));
    let r = probe(&t[0], ProbeLimits { max_redirects: 0, ..LIMITS }).await;
    assert_eq!((r.status_code, r.redirects, r.error_kind), (303, 0, Some("http_status")));
}

#[tokio::test]
async fn refused_port_is_a_connect_failure_row() {
    let site = TestSite::start(Duration::from_millis(400), 30).await.unwrap();
    let r = probe_one(&format!("{{name: down, url: '{}/'}}", site.refused)).await;
    assert_eq!((r.status_code, r.success, r.in_sla, r.error_kind), (0, false, false, Some("connect")));
    let addr = site.refused.trim_start_matches("http://");
    assert!(r.error.as_deref().unwrap().starts_with(&format!("cannot connect to {addr}: Connection refused")), "{r:?}");
    assert_eq!(r.connect_ms, None);
}

#[tokio::test]
async fn self_signed_tls_fails_verification_but_reports_expiry_when_not_verified() {
    let site = TestSite::start(Duration::from_millis(400), 30).await.unwrap();
    let r = probe_one(&format!("{{name: tls, url: '{}/'}}", site.https)).await;
    assert_eq!((r.status_code, r.success, r.error_kind), (0, false, Some("tls")));
    assert!(r.error.as_deref().unwrap().contains("invalid peer certificate: UnknownIssuer"), "{r:?}");

    let r = probe_one(&format!("{{name: tls, url: '{}/', tls_verify: false, assert: {{body_regex: '^secure$'}}}}", site.https)).await;
    assert_eq!((r.status_code, r.success, r.body_bytes), (200, true, Some(6)), "{r:?}");
    assert!(r.tls_ms.is_some());
    let days = r.tls_cert_expiry_days.unwrap();
    assert!((29.99..=30.0).contains(&days), "certificate made for 30 days, read {days}");
}

#[tokio::test]
async fn assertions_fail_with_the_reason() {
    let site = TestSite::start(Duration::from_millis(400), 30).await.unwrap();
    let url = format!("{}/json", site.http);
    let r = probe_one(&format!("{{name: a, url: '{url}', assert: {{json_path: '$.version.major', equals: '4'}}}}")).await;
    assert_eq!((r.success, r.error_kind), (false, Some("assertion")));
    assert_eq!(r.error.as_deref(), Some("JSONPath `$.version.major` is `3`, expected `4`"));
    let r = probe_one(&format!("{{name: a, url: '{url}', assert: {{json_path: '$.version.major', equals: '3', body_regex: 'up'}}}}")).await;
    assert_eq!((r.success, r.error_kind), (true, None));
    let r = probe_one(&format!("{{name: a, url: '{url}', assert: {{body_regex: 'down'}}}}")).await;
    assert_eq!(r.error.as_deref(), Some("the body does not match `down`"));
}

#[tokio::test]
async fn body_is_counted_fully_but_kept_only_up_to_the_limit() {
    let site = TestSite::start(Duration::from_millis(400), 30).await.unwrap();
    let t = targets(&format!("{{targets: [{{name: big, url: '{}/big', regex: '(x+)'}}]}}", site.http));
    let r = probe(&t[0], ProbeLimits { body_limit: 10, ..LIMITS }).await;
    assert_eq!((r.body_bytes, r.value.as_deref()), (Some(100_000), Some("xxxxxxxxxx")));
}

fn column_i64(b: &RecordBatch, name: &str) -> Vec<i64> {
    b.column_by_name(name).unwrap().as_primitive::<Int64Type>().values().to_vec()
}

#[tokio::test]
async fn a_slow_target_never_delays_a_fast_one_and_no_target_overlaps_itself() {
    let site = TestSite::start(Duration::from_millis(900), 30).await.unwrap();
    let yaml = format!(
        "{{interval: 100ms, start_jitter: false, flush_interval: 50ms, timeout: 5s, targets: [{{name: fast, url: '{0}/json'}}, {{name: slow, url: '{0}/slow'}}]}}",
        site.http
    );
    let built = SiteProbePlugin.build(&ComponentConfig::from_yaml("probes", &yaml)).map_err(|e| e.to_string()).unwrap();
    let (ctx, mut h) = source_context("probes", &[""], 64);
    let run = tokio::spawn(built.source.run(ctx));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    h.shutdown.cancel();
    run.await.unwrap().unwrap();
    let mut rows: Vec<(String, i64, i64)> = Vec::new();
    let out = h.outputs.get_mut("").unwrap();
    while let Ok(d) = out.try_recv() {
        let names =
            d.batch.data.column_by_name("name").unwrap().as_string::<i32>().iter().map(|s| s.unwrap().to_string()).collect::<Vec<_>>();
        let ts = d
            .batch
            .data
            .column_by_name("ts")
            .unwrap()
            .as_primitive::<datafusion::arrow::datatypes::TimestampMicrosecondType>()
            .values()
            .to_vec();
        for ((n, t), total) in names.into_iter().zip(ts).zip(column_i64(&d.batch.data, "total_time_ms")) {
            rows.push((n, t, total));
        }
    }
    let fast = rows.iter().filter(|r| r.0 == "fast").count();
    let slow: Vec<_> = rows.iter().filter(|r| r.0 == "slow").collect();
    assert!(fast >= 10, "the fast target kept its 100ms rate while the slow one hung: {fast} probes");
    // The slow target (900ms per probe at a 100ms interval) ran one probe at a time: each starts
    // after the previous one ended. Shutdown waited for the in-flight one.
    assert!(slow.len() >= 2 && slow.len() <= 3, "{slow:?}");
    for w in slow.windows(2) {
        assert!(w[1].1 >= w[0].1 + w[0].2 * 1000, "overlapping probes: {w:?}");
    }
}

#[tokio::test]
async fn concurrency_limit_serialises_probes() {
    let site = TestSite::start(Duration::from_millis(300), 30).await.unwrap();
    let yaml = format!(
        "{{interval: 10s, start_jitter: false, max_concurrency: 1, timeout: 5s, flush_interval: 50ms, targets: [{{name: a, url: '{0}/slow'}}, {{name: b, url: '{0}/slow'}}, {{name: c, url: '{0}/slow'}}]}}",
        site.http
    );
    let built = SiteProbePlugin.build(&ComponentConfig::from_yaml("probes", &yaml)).map_err(|e| e.to_string()).unwrap();
    let (ctx, mut h) = source_context("probes", &[""], 64);
    let run = tokio::spawn(built.source.run(ctx));
    let mut starts = Vec::new();
    let out = h.outputs.get_mut("").unwrap();
    while starts.len() < 3 {
        let d = tokio::time::timeout(Duration::from_secs(5), out.recv()).await.expect("3 probes within 5s").unwrap();
        starts.extend(
            d.batch
                .data
                .column_by_name("ts")
                .unwrap()
                .as_primitive::<datafusion::arrow::datatypes::TimestampMicrosecondType>()
                .values()
                .iter()
                .copied(),
        );
    }
    h.shutdown.cancel();
    run.await.unwrap().unwrap();
    starts.sort();
    assert!(starts[1] - starts[0] >= 300_000 && starts[2] - starts[1] >= 300_000, "one at a time: {starts:?}");
}

#[test]
fn config_errors_name_the_target_and_field() {
    assert_eq!(config_error("{targets: []}"), "targets: at least one target is required");
    assert_eq!(config_error("{targets: [{name: a}]}"), "targets[0].url: missing: give `url`, or `site` and `endpoint`");
    assert_eq!(config_error("{targets: [{name: a, url: 'ftp://x/'}]}"), "targets[0].url: `ftp://x/` must start with http:// or https://");
    assert_eq!(
        config_error("{targets: [{name: a, url: 'http://x/'}, {name: a, url: 'http://y/'}]}"),
        "targets[1].name: duplicate target name `a`"
    );
    assert!(config_error("{targets: [{name: a, url: 'http://x/', regex: '(unclosed'}]}").starts_with("targets[0].regex: invalid regex:"));
    assert!(config_error("{targets: [{name: a, url: 'http://x/', json_path: '$..[?('}]}")
        .starts_with("targets[0].json_path: invalid JSONPath `$..[?(`"));
    assert_eq!(
        config_error("{targets: [{name: a, url: 'http://x/', type: json}]}"),
        "targets[0].json_path: `type: json` needs `json_path`"
    );
    assert_eq!(
        config_error("{targets: [{name: a, url: 'http://x/', expect_status: [2xx, 'fine']}]}"),
        "targets[0].expect_status[1]: `fine` is not a status: use 204, 200-299 or 2xx"
    );
    assert_eq!(
        config_error("{targets: [{name: a, url: 'http://x/', sla: 5}]}"),
        "targets[0].sla: unknown field `sla`, expected one of `name`, `url`, `site`, `endpoint`, `type`, `method`, `headers`, `body`, `interval`, `timeout`, `sla_ms`, `expect_status`, `json_path`, `regex`, `assert`, `tls_verify`"
    );
}
