//! `pipelines/badge-events.yaml` end to end: badge events XADDed to a Redis Stream go through its
//! SQL into PostgreSQL (its timescale sinks) and, through its remote-write sinks, into the real
//! VictoriaMetrics; then every panel and variable query of `dashboards/badges.json` runs against
//! VictoriaMetrics with Grafana's macros expanded, and must answer with exactly the values the
//! events imply. The events leave a minute empty, and the range starts on a minute boundary: the
//! per-minute panels must show no point for the empty minute (nor one after the last), and the
//! stat panels must count the range's first minute.
//!
//! Channel, game and badge names are unique per run, so earlier runs' data in the shared
//! VictoriaMetrics and PostgreSQL cannot make a query pass.

use crate::common;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::AsyncCommands;
use serde_json::Value;
use serde_yaml::Value as Yaml;

fn redis_url() -> String {
    tributary_testkit::test_redis_url()
}
fn vm_addr() -> std::net::SocketAddr {
    let url = tributary_testkit::test_victoriametrics_url();
    url.trim_start_matches("http://").trim_end_matches('/').parse().expect("TRIBUTARY_TEST_VICTORIAMETRICS is http://<ip>:<port>")
}

fn vm_get(path: &str) -> Value {
    let (status, body) = common::get(vm_addr(), path).unwrap_or_else(|e| panic!("VictoriaMetrics at {}: {e}", vm_addr()));
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The shipped pipeline with this run's stream, a scratch Parquet folder, and the test's
/// VictoriaMetrics as the remote-write receiver; everything else as shipped.
fn pipeline(stream: &str, data: &std::path::Path) -> String {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines/badge-events.yaml")).unwrap();
    let mut doc: Yaml = serde_yaml::from_str(&text).unwrap();
    doc["admin"]["address"] = Yaml::from(common::free_addr().to_string());
    doc["sources"]["badges"]["stream"] = Yaml::from(stream);
    doc["sources"]["badges"]["url"] = Yaml::from(redis_url());
    doc["sources"]["badges"]["consumer"] = Yaml::from("dashboard-test");
    let sinks = doc["sinks"].as_mapping_mut().unwrap();
    sinks.get_mut("events_parquet").unwrap()["path"] = Yaml::from(data.to_str().unwrap());
    let mut remote_write = 0;
    for (_, sink) in sinks.iter_mut().filter(|(_, s)| s["type"] == "prometheus_remote_write") {
        sink["endpoint"] = Yaml::from(format!("{}/api/v1/write", tributary_testkit::test_victoriametrics_url()));
        remote_write += 1;
    }
    assert_eq!(remote_write, 2, "the pipeline's remote-write sinks");
    doc.as_mapping_mut().unwrap().remove("tests");
    serde_yaml::to_string(&doc).unwrap()
}

/// A dashboard query with Grafana's macros and this run's variable values filled in.
fn expand(expr: &str, vars: &BTreeMap<&str, String>, range_s: i64) -> String {
    let mut q = expr.replace("$__range", &format!("{range_s}s")).replace("$__rate_interval", "4m").replace("$__interval", "1m");
    for (name, value) in vars {
        q = q.replace(&format!("${{{name}}}"), value).replace(&format!("${name}"), value);
    }
    assert!(!q.contains('$'), "unexpanded macro or variable in {q}");
    q
}

/// `{label value → value}` of an instant vector result.
fn by_label(result: &Value, label: &str) -> BTreeMap<String, f64> {
    result["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["metric"][label].as_str().unwrap_or("").to_string(), s["value"][1].as_str().unwrap().parse().unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn badge_pipeline_fills_postgres_and_victoriametrics_and_every_dashboard_query_answers() {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    let run = format!("{:x}", (nanos as u64 ^ std::process::id() as u64) & 0xffffff);
    let (hs, chat, pong, snake) = (format!("hs-{run}"), format!("chat-{run}"), format!("Pong-{run}"), format!("Snake-{run}"));
    let badge = |n: u32| format!("u-{run}-{n}");

    // Two minutes of events, a couple of hours ago (so no other run's minute is the same series).
    let now_s = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    let base_s = (now_s - 2 * 3600) / 60 * 60 - (std::process::id() as i64 % 60) * 60;
    let stream = format!("badge-dashboard-{run}");
    let mut conn = redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("Redis must run at {} ({e})", redis_url()));
    let score = |user: &str, game: &str, s: i64, d: i64| {
        format!(
            r#"{{"user_uuid":"{user}","mac_address":"mac-{user}","event":"high-score","high_scores":[{{"g":"{game}","s":{s},"d":{d}}}]}}"#
        )
    };
    let entries = [
        (
            base_s * 1000 + 5_000,
            hs.clone(),
            format!(
                r#"{{"user_uuid":"{u}","mac_address":"mac-{u}","event":"high-score","high_scores":[{{"g":"{pong}","s":100,"d":50}},{{"g":"{snake}","s":40,"d":20}}]}}"#,
                u = badge(1)
            ),
        ),
        (base_s * 1000 + 20_000, hs.clone(), score(&badge(2), &pong, 250, 60)),
        (base_s * 1000 + 30_000, chat.clone(), format!(r#"{{"event":"hello","user_uuid":"{u}","mac_address":"mac-{u}"}}"#, u = badge(3))),
        (base_s * 1000 + 70_000, hs.clone(), score(&badge(1), &pong, 300, 55)),
        // Minute 2 has no events.
        (base_s * 1000 + 185_000, hs.clone(), score(&badge(2), &pong, 120, 40)),
    ];
    for (ms, channel, payload) in &entries {
        let _: String =
            conn.xadd(&stream, format!("{ms}-0"), &[("channel", channel.as_str()), ("payload", payload.as_str())]).await.unwrap();
    }
    let last_id = format!("{}-0", entries[4].0);

    let dir = tempfile::tempdir().unwrap();
    let path = common::write(dir.path(), "badge-events.yaml", &pipeline(&stream, &dir.path().join("data/badge_events")));
    let (run_task, shutdown) = common::spawn_pipeline(&path);
    // Every entry delivered to the pipeline; the open windows then flush at the clean stop.
    for attempt in 0.. {
        let groups: Vec<BTreeMap<String, redis::Value>> =
            redis::cmd("XINFO").arg("GROUPS").arg(&stream).query_async(&mut conn).await.unwrap_or_default();
        let delivered = groups.first().and_then(|g| g.get("last-delivered-id")).and_then(|v| redis::from_redis_value::<String>(v).ok());
        if delivered.as_deref() == Some(last_id.as_str()) {
            break;
        }
        assert!(attempt < 300, "the pipeline never read the stream (last delivered: {delivered:?})");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.cancel();
    let report = tokio::time::timeout(Duration::from_secs(30), run_task).await.expect("clean stop").unwrap();
    assert!(report.ok(), "{:?} {:?}", report.failures, report.summary);
    let pending: redis::Value = redis::cmd("XPENDING").arg(&stream).arg("tributary").query_async(&mut conn).await.unwrap();
    let redis::Value::Array(summary) = pending else { panic!("{pending:?}") };
    assert_eq!(redis::from_redis_value::<i64>(&summary[0]).unwrap(), 0, "every entry acknowledged after the sinks wrote it");
    let _: () = redis::cmd("DEL").arg(&stream).query_async(&mut conn).await.unwrap();

    // PostgreSQL: the timescale sinks of the shipped file.
    let db = common::pg().await;
    let rows = db
        .query("SELECT channel, extract(epoch FROM window_start)::bigint, events, badges FROM badge_channel_minutes WHERE channel IN ($1, $2) ORDER BY 2, 1", &[&hs, &chat])
        .await
        .unwrap();
    let got: Vec<(String, i64, i64, i64)> = rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))).collect();
    assert_eq!(
        got,
        [(chat.clone(), base_s, 1, 1), (hs.clone(), base_s, 3, 2), (hs.clone(), base_s + 60, 1, 1), (hs.clone(), base_s + 180, 1, 1)]
    );
    let rows = db
        .query("SELECT game, extract(epoch FROM window_start)::bigint, top_score, top_user, scores FROM badge_game_minutes WHERE game IN ($1, $2) ORDER BY 2, 1", &[&pong, &snake])
        .await
        .unwrap();
    let got: Vec<(String, i64, i64, String, i64)> = rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4))).collect();
    assert_eq!(
        got,
        [
            (pong.clone(), base_s, 250, badge(2), 2),
            (snake.clone(), base_s, 40, badge(1), 1),
            (pong.clone(), base_s + 60, 300, badge(1), 1),
            (pong.clone(), base_s + 180, 120, badge(2), 1)
        ]
    );
    let rows = db
        .query("SELECT user_uuid, mac_address, extract(epoch FROM last_seen)::bigint, last_event FROM badge_registrations WHERE user_uuid LIKE $1 ORDER BY 1", &[&format!("u-{run}-%")])
        .await
        .unwrap();
    let got: Vec<(String, String, i64, String)> = rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))).collect();
    assert_eq!(
        got,
        [
            (badge(1), format!("mac-{}", badge(1)), base_s + 70, "high-score".to_string()),
            (badge(2), format!("mac-{}", badge(2)), base_s + 185, "high-score".to_string()),
            (badge(3), format!("mac-{}", badge(3)), base_s + 30, "hello".to_string()),
        ],
        "one row per badge, the latest event wins"
    );
    // The Parquet copy of the raw events: 6 rows (the first entry holds two scores), 5 of them scores.
    let table =
        common::query(&dir.path().join("data"), "SELECT count(*) AS n, count(game) AS scores, sum(score) AS points FROM badge_events")
            .await;
    assert_eq!(
        table,
        "+---+--------+--------+\n| n | scores | points |\n+---+--------+--------+\n| 6 | 5      | 810    |\n+---+--------+--------+"
    );

    // VictoriaMetrics: series become searchable shortly after ingestion. The range starts on the
    // first event minute's boundary and ends with the last; the per-minute panels are read one
    // minute past it, where no point may appear.
    let (start, end) = (base_s, base_s + 240);
    let range_s = end - start;
    let vars: BTreeMap<&str, String> = [("channel", format!("{hs}|{chat}")), ("game", format!("{pong}|{snake}"))].into();
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/dashboards/badges.json")).unwrap()).unwrap();
    let mut answers: BTreeMap<String, Value> = BTreeMap::new();
    for attempt in 0.. {
        common::get(vm_addr(), "/internal/force_flush").unwrap();
        answers.clear();
        let mut empty = Vec::new();
        for panel in dashboard["panels"].as_array().unwrap() {
            let title = panel["title"].as_str().unwrap().to_string();
            for target in panel["targets"].as_array().unwrap() {
                assert_eq!(target["datasource"]["uid"], "victoriametrics", "{title}");
                let q = encode(&expand(target["expr"].as_str().unwrap(), &vars, range_s));
                let answer = if target["instant"] == true {
                    vm_get(&format!("/api/v1/query?query={q}&time={end}"))
                } else {
                    assert_eq!(panel["interval"], "1m", "{title}: per-minute panels ask for at least one-minute steps");
                    vm_get(&format!("/api/v1/query_range?query={q}&start={start}&end={}&step=60", end + 60))
                };
                assert_eq!(answer["status"], "success", "{title}: {answer}");
                if answer["data"]["result"].as_array().unwrap().is_empty() {
                    empty.push(title.clone());
                }
                answers.insert(title.clone(), answer);
            }
        }
        if empty.is_empty() {
            break;
        }
        assert!(attempt < 50, "panels without data: {empty:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(answers.len(), dashboard["panels"].as_array().unwrap().len());
    let single = |title: &str| by_label(&answers[title], "")[""];
    assert_eq!(single("Events in range"), 6.0, "every minute of the range, its first included");
    assert_eq!(single("Scores posted in range"), 5.0);
    assert_eq!(single("Best score in range"), 300.0);
    assert_eq!(single("Most active badges in a minute"), 2.0);
    assert_eq!(by_label(&answers["Top score per game"], "game"), [(pong.clone(), 300.0), (snake.clone(), 40.0)].into());
    // Each series' points as (seconds after base, value): a minute is stamped at its end.
    let points = |title: &str, label: &str| -> BTreeMap<String, Vec<(i64, String)>> {
        answers[title]["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let values =
                    s["values"].as_array().unwrap().iter().map(|v| (v[0].as_i64().unwrap() - base_s, v[1].as_str().unwrap().to_string()));
                (s["metric"][label].as_str().unwrap().to_string(), values.collect())
            })
            .collect()
    };
    let p = |pairs: &[(i64, &str)]| pairs.iter().map(|(t, v)| (*t, v.to_string())).collect::<Vec<_>>();
    assert_eq!(
        points("Events per minute by channel", "channel"),
        [(chat.clone(), p(&[(60, "1")])), (hs.clone(), p(&[(60, "3"), (120, "1"), (240, "1")]))].into(),
        "no point for the empty minute, none after the last"
    );
    assert_eq!(
        points("Distinct badges per minute by channel", "channel"),
        [(chat.clone(), p(&[(60, "1")])), (hs.clone(), p(&[(60, "2"), (120, "1"), (240, "1")]))].into()
    );
    assert_eq!(
        points("Scores per minute by game", "game"),
        [(pong.clone(), p(&[(60, "2"), (120, "1"), (240, "1")])), (snake.clone(), p(&[(60, "1")]))].into()
    );
    assert_eq!(
        points("Top score per game over time", "game"),
        [(pong.clone(), p(&[(60, "250"), (120, "300"), (240, "120")])), (snake.clone(), p(&[(60, "40")]))].into()
    );

    // Template variables: label_values(metric, label) lists this run's values.
    for var in dashboard["templating"]["list"].as_array().unwrap() {
        let def = var["definition"].as_str().unwrap();
        let inner = def.strip_prefix("label_values(").and_then(|d| d.strip_suffix(')')).unwrap();
        let (metric, label) = inner.split_once(", ").unwrap();
        let values = vm_get(&format!("/api/v1/label/{label}/values?match[]={}&start={start}&end={end}", encode(metric)));
        let values: Vec<&str> = values["data"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        let ours: Vec<&str> = vars[var["name"].as_str().unwrap()].split('|').collect();
        for v in ours {
            assert!(values.contains(&v), "variable {} lacks {v}: {values:?}", var["name"]);
        }
    }
}
