use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::util::pretty::pretty_format_batches;
use tributary_testkit::{free_port, source_context};

use redis::streams::StreamId;
use redis::AsyncCommands;

use super::*;
use crate::stream::entry_message;
use tributary_sdk::{now_us, Delivery};

fn redis_url() -> String {
    tributary_testkit::test_redis_url()
}

async fn redis_conn() -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("Redis must run at {} for this test ({e})", redis_url()))
}

fn build(yaml: &str) -> Box<dyn Source> {
    BadgeEventsPlugin.build(&ComponentConfig::from_yaml("badges", yaml)).map_err(|e| e.to_string()).unwrap().source
}

const LISTS: &str = r#"{"user_uuid":"u-1","mac_address":"aa:bb","event":"high-score","high_scores":[["BO",1200,95],["TT",37,30]]}"#;
const DICTS: &str = r#"{"user_uuid":"u-2","mac_address":"cc:dd","event":"high-score","high_scores":[{"g":"LA","s":5,"d":9}]}"#;

fn shown(batch: &RecordBatch) -> String {
    let cols = ["channel", "event", "user_uuid", "game", "score", "duration", "handle", "points", "message"];
    let idx: Vec<usize> = cols.iter().map(|c| batch.schema().index_of(c).unwrap()).collect();
    pretty_format_batches(&[batch.project(&idx).unwrap()]).unwrap().to_string()
}

#[tokio::test]
async fn pubsub_events_of_every_channel_arrive_normalised_and_bad_ones_are_dead_lettered() {
    let source = build(&format!("{{mode: pubsub, url: '{}', batch_wait: 50ms}}", redis_url()));
    let (ctx, mut h) = source_context("badges", &[""], 16);
    let task = tokio::spawn(source.run(ctx));
    let mut conn = redis_conn().await;
    // Wait for the subscription (PUBSUB NUMSUB), so nothing is published into the void.
    for _ in 0..100 {
        let n: Vec<(String, i64)> = redis::cmd("PUBSUB").arg("NUMSUB").arg("achievement").query_async(&mut conn).await.unwrap();
        if n[0].1 > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (ch, msg) in [
        ("high-score-processor", LISTS),
        ("high-score-processor", DICTS),
        ("achievement", r#"{"handle":"someone","name":"Rick Rolled","description":"d","points":1}"#),
        ("community-message", "someone has already unlocked: Hello World"),
        ("high-score-processor", "{not json"),
    ] {
        let _: i64 = conn.publish(ch, msg).await.unwrap();
    }
    let mut rows = Vec::new();
    while rows.iter().map(|b: &RecordBatch| b.num_rows()).sum::<usize>() < 5 {
        let d = tokio::time::timeout(Duration::from_secs(10), h.outputs.get_mut("").unwrap().recv()).await.expect("rows arrive").unwrap();
        rows.push(d.batch.data);
    }
    let all = datafusion::arrow::compute::concat_batches(&badge_schema(), &rows).unwrap();
    assert_eq!(
        shown(&all),
        "+----------------------+-------------------+-----------+-----------+-------+----------+---------+--------+-------------------------------------------+\n\
         | channel              | event             | user_uuid | game      | score | duration | handle  | points | message                                   |\n\
         +----------------------+-------------------+-----------+-----------+-------+----------+---------+--------+-------------------------------------------+\n\
         | high-score-processor | high-score        | u-1       | Breakout  | 1200  | 95       |         |        |                                           |\n\
         | high-score-processor | high-score        | u-1       | Tappytime | 37    | 30       |         |        |                                           |\n\
         | high-score-processor | high-score        | u-2       | Labyrinth | 5     | 9        |         |        |                                           |\n\
         | achievement          | achievement       |           |           |       |          | someone | 1      | Rick Rolled                               |\n\
         | community-message    | community-message |           |           |       |          |         |        | someone has already unlocked: Hello World |\n\
         +----------------------+-------------------+-----------+-----------+-------+----------+---------+--------+-------------------------------------------+"
    );
    let dl = tokio::time::timeout(Duration::from_secs(10), h.dead_letters.recv()).await.unwrap().unwrap().batch.data;
    assert_eq!(dl.column_by_name("payload").unwrap().as_string::<i32>().value(0), "{not json");
    assert!(dl.column_by_name("reason").unwrap().as_string::<i32>().value(0).starts_with("channel `high-score-processor`: malformed JSON"));
    h.shutdown.cancel();
    task.await.unwrap().unwrap();
}

async fn pending(conn: &mut redis::aio::MultiplexedConnection, stream: &str, group: &str) -> i64 {
    let summary: redis::Value = redis::cmd("XPENDING").arg(stream).arg(group).query_async(conn).await.unwrap();
    match summary {
        redis::Value::Array(v) => redis::from_redis_value(&v[0]).unwrap(),
        other => panic!("XPENDING: {other:?}"),
    }
}

/// Redis 7 answers `LOADING` to commands between the steps of loading its data at start, so a
/// source reconnecting to a restarted Redis can meet it mid-load (a fast machine does). The source
/// waits that out as for a Redis that is down; it used to end with "creating consumer group".
/// `key-load-delay` (µs per key) and a small `loading-process-events-interval-bytes` stretch the
/// loading of 20,000 keys to seconds, so the source starts while it lasts.
#[tokio::test]
async fn a_stream_source_started_while_redis_loads_its_data_waits_for_it_then_reads() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let redis_server = |extra: &[&str]| {
        let mut c = std::process::Command::new("redis-server");
        c.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--dir"]).arg(dir.path()).args(extra);
        c
    };
    let url = format!("redis://127.0.0.1:{port}");
    let connect = || async { redis::Client::open(url.as_str()).unwrap().get_multiplexed_async_connection().await.unwrap() };
    {
        let _server = tributary_testkit::OwnServer::start(redis_server(&[]), port, Duration::from_secs(10)).await;
        let mut conn = connect().await;
        let _: () =
            redis::cmd("EVAL").arg("for i=1,20000 do redis.call('SET','filler:'..i,i) end").arg(0).query_async(&mut conn).await.unwrap();
        for payload in [LISTS, DICTS] {
            let _: String = conn.xadd("badges", "*", &[("channel", "high-score-processor"), ("payload", payload)]).await.unwrap();
        }
        let _: () = redis::cmd("SAVE").query_async(&mut conn).await.unwrap();
    }
    let _server = tributary_testkit::OwnServer::start(
        redis_server(&["--key-load-delay", "100", "--loading-process-events-interval-bytes", "1024"]),
        port,
        Duration::from_secs(10),
    )
    .await;
    let mut conn = connect().await;
    let info: String = redis::cmd("INFO").arg("persistence").query_async(&mut conn).await.unwrap();
    assert!(info.contains("loading:1"), "the test needs Redis still loading when the source starts:\n{info}");

    let (ctx, mut h) = source_context("badges", &[""], 16);
    let task = tokio::spawn(build(&format!("{{mode: stream, url: '{url}', stream: badges, group: g, consumer: c1}}")).run(ctx));
    let d = tokio::time::timeout(Duration::from_secs(60), h.outputs.get_mut("").unwrap().recv()).await.expect("rows once loaded").unwrap();
    let games = d.batch.data.column_by_name("game").unwrap().as_string::<i32>().clone();
    assert_eq!((0..games.len()).map(|i| games.value(i)).collect::<Vec<_>>(), ["Breakout", "Tappytime", "Labyrinth"]);
    assert!(h.metrics.retries.get() > 0, "the source waited for the loading");
    d.batch.acks.release();
    h.shutdown.cancel();
    task.await.unwrap().unwrap();
}

/// A restart re-reads its pending entries in id order before new ones, without waiting for the
/// batches in flight: a window holds its rows' acks until newer entries close it, so waiting for
/// them would stall the pipeline.
#[tokio::test]
async fn pending_entries_come_in_order_before_new_ones_while_earlier_batches_are_held() {
    let stream = format!("badge-held-{}", std::process::id());
    let mut conn = redis_conn().await;
    let _: () = redis::cmd("DEL").arg(&stream).query_async(&mut conn).await.unwrap();
    let add = |n: i64| format!(r#"{{"user_uuid":"u-{n}","mac_address":"aa","event":"high-score","high_scores":[["BO",{n},1]]}}"#);
    for n in 1..=4 {
        let _: String = conn.xadd(&stream, "*", &[("channel", "high-score-processor"), ("payload", add(n).as_str())]).await.unwrap();
    }
    let yaml = format!("{{mode: stream, url: '{}', stream: {stream}, group: g, consumer: c1, batch_size: 2}}", redis_url());
    let users = |d: &Delivery| {
        let u = d.batch.data.column_by_name("user_uuid").unwrap().as_string::<i32>().clone();
        (0..u.len()).map(|i| u.value(i).to_string()).collect::<Vec<_>>()
    };

    // First run: both batches read, neither written (a crash).
    let (ctx, mut h) = source_context("badges", &[""], 16);
    let task = tokio::spawn(build(&yaml).run(ctx));
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(tokio::time::timeout(Duration::from_secs(10), h.outputs.get_mut("").unwrap().recv()).await.unwrap().unwrap());
    }
    task.abort();
    let _ = task.await;
    std::mem::forget(held);
    let _: String = conn.xadd(&stream, "*", &[("channel", "high-score-processor"), ("payload", add(5).as_str())]).await.unwrap();

    // Restart: the first pending batch is held (never released) while the rest comes, in order.
    let (ctx, mut h) = source_context("badges", &[""], 16);
    let task = tokio::spawn(build(&yaml).run(ctx));
    let mut got = Vec::new();
    let mut deliveries = Vec::new();
    while got.len() < 5 {
        let d = tokio::time::timeout(Duration::from_secs(10), h.outputs.get_mut("").unwrap().recv()).await.expect("not held up").unwrap();
        got.extend(users(&d));
        deliveries.push(d);
    }
    assert_eq!(got, ["u-1", "u-2", "u-3", "u-4", "u-5"]);
    for d in deliveries {
        d.batch.acks.release();
    }
    assert_pending_drains(&mut conn, &stream, "every entry acknowledged once released").await;
    h.shutdown.cancel();
    task.await.unwrap().unwrap();
    let _: () = redis::cmd("DEL").arg(&stream).query_async(&mut conn).await.unwrap();
}

/// Group `g`'s pending list on `stream` empties within 5 s.
async fn assert_pending_drains(conn: &mut redis::aio::MultiplexedConnection, stream: &str, why: &str) {
    for _ in 0..100 {
        if pending(conn, stream, "g").await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(pending(conn, stream, "g").await, 0, "{why}");
}

#[tokio::test]
async fn stream_entries_are_acknowledged_only_after_the_rows_are_released_and_a_restart_rereads_the_rest() {
    let stream = format!("badge-test-{}", std::process::id());
    let mut conn = redis_conn().await;
    let _: () = redis::cmd("DEL").arg(&stream).query_async(&mut conn).await.unwrap();
    for payload in [LISTS, DICTS] {
        let _: String = conn.xadd(&stream, "*", &[("channel", "high-score-processor"), ("payload", payload)]).await.unwrap();
    }
    let yaml = format!("{{mode: stream, url: '{}', stream: {stream}, group: g, consumer: c1, batch_size: 2}}", redis_url());

    // First run: take the first batch (2 entries, 3 rows) but never write it — a crash.
    let (ctx, mut h) = source_context("badges", &[""], 16);
    let task = tokio::spawn(build(&yaml).run(ctx));
    let first = tokio::time::timeout(Duration::from_secs(10), h.outputs.get_mut("").unwrap().recv()).await.unwrap().unwrap();
    assert_eq!(first.batch.data.num_rows(), 3);
    task.abort();
    let _ = task.await;
    std::mem::forget(first); // the ack is neither released nor failed: the process is gone
    assert_eq!(pending(&mut conn, &stream, "g").await, 2, "read but unacknowledged entries stay pending");
    let _: String = conn.xadd(&stream, "*", &[("channel", "high-score-processor"), ("payload", "[1,2]")]).await.unwrap();

    // Restart: the pending entries come again, then the rest; acking everything empties the PEL.
    let (ctx, mut h) = source_context("badges", &[""], 16);
    let task = tokio::spawn(build(&yaml).run(ctx));
    let mut games = Vec::new();
    while games.len() < 3 {
        let d = tokio::time::timeout(Duration::from_secs(10), h.outputs.get_mut("").unwrap().recv()).await.expect("rows").unwrap();
        let g = d.batch.data.column_by_name("game").unwrap().as_string::<i32>().clone();
        games.extend((0..g.len()).map(|i| g.value(i).to_string()));
        d.batch.acks.release();
    }
    assert_eq!(games, ["Breakout", "Tappytime", "Labyrinth"]);
    let dl = tokio::time::timeout(Duration::from_secs(10), h.dead_letters.recv()).await.unwrap().unwrap();
    assert_eq!(
        dl.batch.data.column_by_name("reason").unwrap().as_string::<i32>().value(0),
        "channel `high-score-processor`: expected a JSON object, got an array"
    );
    dl.batch.acks.release();
    assert_pending_drains(&mut conn, &stream, "every entry acknowledged once written").await;
    h.shutdown.cancel();
    task.await.unwrap().unwrap();
    let _: () = redis::cmd("DEL").arg(&stream).query_async(&mut conn).await.unwrap();
}

/// Entries this consumer holds in flight longer than `claim_idle` (a window or a Parquet file
/// holding their acks) are not claimed again: once each. Entries a dead consumer left pending are.
#[tokio::test]
async fn only_other_consumers_entries_are_claimed_never_our_own_in_flight_ones() {
    let stream = format!("badge-claim-{}", std::process::id());
    let mut conn = redis_conn().await;
    let _: () = redis::cmd("DEL").arg(&stream).query_async(&mut conn).await.unwrap();
    let _: () = redis::cmd("XGROUP").arg("CREATE").arg(&stream).arg("g").arg("0").arg("MKSTREAM").query_async(&mut conn).await.unwrap();
    // A consumer that read an entry and died.
    let _: String = conn.xadd(&stream, "*", &[("channel", "high-score-processor"), ("payload", DICTS)]).await.unwrap();
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("g")
        .arg("dead")
        .arg("COUNT")
        .arg(1)
        .arg("STREAMS")
        .arg(&stream)
        .arg(">")
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: String = conn.xadd(&stream, "*", &[("channel", "high-score-processor"), ("payload", LISTS)]).await.unwrap();

    let yaml =
        format!("{{mode: stream, url: '{}', stream: {stream}, group: g, consumer: c1, batch_size: 10, claim_idle: 300ms}}", redis_url());
    let (ctx, mut h) = source_context("badges", &[""], 16);
    let task = tokio::spawn(build(&yaml).run(ctx));
    // Held, not released, for five claim_idle periods.
    let mut held = Vec::new();
    let mut rows = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(1500);
    while let Ok(Some(d)) = tokio::time::timeout_at(deadline, h.outputs.get_mut("").unwrap().recv()).await {
        rows += d.batch.data.num_rows();
        held.push(d.batch.acks);
    }
    // LISTS has 2 scores, DICTS 1: each entry once — ours read with `>`, the dead one's claimed.
    assert_eq!(rows, 3, "each entry delivered once while its acks are held");
    let owners: Vec<(String, String, u64, u64)> =
        redis::cmd("XPENDING").arg(&stream).arg("g").arg("-").arg("+").arg(10).query_async(&mut conn).await.unwrap();
    assert_eq!(owners.iter().map(|(_, c, _, _)| c.as_str()).collect::<Vec<_>>(), ["c1", "c1"]);
    for acks in held {
        acks.release();
    }
    assert_pending_drains(&mut conn, &stream, "every entry acknowledged once released").await;
    h.shutdown.cancel();
    task.await.unwrap().unwrap();
    let _: () = redis::cmd("DEL").arg(&stream).query_async(&mut conn).await.unwrap();
}

/// A pipeline that does not take rows cannot make Pub/Sub wait: the source keeps reading, holds
/// at most `max_buffered` messages, and drops and counts the rest — memory stays bounded.
#[tokio::test]
async fn a_busy_pipeline_bounds_the_pubsub_buffer_and_counts_what_it_drops() {
    let channel = format!("fact-bounded-{}", std::process::id());
    let yaml =
        format!("{{mode: pubsub, url: '{}', channels: [{channel}], batch_size: 1, batch_wait: 10ms, max_buffered: 10}}", redis_url());
    // Capacity 1, and nothing reads the output until the end.
    let (ctx, mut h) = source_context("badges", &[""], 1);
    let task = tokio::spawn(build(&yaml).run(ctx));
    let mut conn = redis_conn().await;
    wait_subscribed(&mut conn, &channel).await;
    for i in 0..50 {
        let _: i64 = conn.publish(&channel, format!("fact {i}")).await.unwrap();
    }
    // Everything published is either held (buffer, channel, one in the emitter's hands) or dropped.
    let mut dropped = 0;
    for _ in 0..100 {
        dropped = h.metrics.dropped.get();
        if dropped >= 50 - 12 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    h.shutdown.cancel();
    let out = h.outputs.get_mut("").unwrap();
    let mut delivered = 0;
    while let Ok(Some(d)) = tokio::time::timeout(Duration::from_secs(5), out.recv()).await {
        delivered += d.batch.data.num_rows() as u64;
    }
    task.await.unwrap().unwrap();
    assert!((10..=12).contains(&delivered), "the buffer (10) plus what was already on its way: {delivered}");
    assert_eq!(delivered + h.metrics.dropped.get(), 50, "every message delivered or counted as dropped");
    assert!(dropped >= 38, "{dropped}");
}

#[test]
fn config_errors_name_the_field() {
    let err = |y: &str| BadgeEventsPlugin.build(&ComponentConfig::from_yaml("b", y)).err().unwrap().to_string();
    assert_eq!(err("{mode: pubsub, channels: []}"), "channels: name at least one channel");
    assert!(
        err("{mode: carrier-pigeon}").starts_with("mode: unknown variant `carrier-pigeon`, expected one of `pubsub`, `stream`, `http`"),
        "{}",
        err("{mode: carrier-pigeon}")
    );
    assert_eq!(err("{mode: http}"), "address: `mode: http` needs an address to listen on, e.g. `0.0.0.0:8090`");
    assert_eq!(err("{mode: http, address: '127.0.0.1:1', path: events}"), "path: must start with `/`, got `events`");
    assert!(err("{mode: stream, url: 'http://x'}").starts_with("url: not a Redis URL"), "{}", err("{mode: stream, url: 'http://x'}"));
    // Each mode takes its own options only: another mode's is named as unknown, with this mode's.
    assert_eq!(
        err("{mode: http, address: '127.0.0.1:1', channels: [fact]}"),
        "channels: unknown field `channels`, expected one of `address`, `path`, `token`, `max_body_bytes`, `header_timeout`, `body_timeout`, `stop_timeout`"
    );
    assert_eq!(
        err("{mode: pubsub, stream: s}"),
        "stream: unknown field `stream`, expected one of `url`, `channels`, `batch_size`, `max_buffered`, `batch_wait`"
    );
    // Paths inside a mode's options stay as precise as a flat struct's.
    assert_eq!(err("{mode: stream, claim_idle: soon}").split(':').next().unwrap(), "claim_idle");
    assert_eq!(err("{mode: pubsub, channels: [a, [b]]}").split(':').next().unwrap(), "channels[1]");
    assert_eq!(err("{url: 'redis://x'}"), "missing field `mode`");
}

async fn next_rows(h: &mut tributary_testkit::SourceHarness) -> RecordBatch {
    tokio::time::timeout(Duration::from_secs(10), h.outputs.get_mut("").unwrap().recv()).await.expect("rows arrive").unwrap().batch.data
}

#[tokio::test]
async fn http_mode_takes_posted_messages_per_channel_and_as_envelopes() {
    let port = free_port();
    let source = build(&format!("{{mode: http, address: '127.0.0.1:{port}', path: /badge/, token: s3cret-token}}"));
    let (ctx, mut h) = source_context("badges", &[""], 16);
    let task = tokio::spawn(source.run(ctx));
    let client = reqwest::Client::new();
    let post = |path: &str, body: &'static str, token: &str| {
        client.post(format!("http://127.0.0.1:{port}{path}")).bearer_auth(token).body(body).send()
    };
    let answer = |r: reqwest::Response| async move { (r.status().as_u16(), r.text().await.unwrap()) };
    let mut first = None;
    for _ in 0..100 {
        match post("/badge/high-score-processor", LISTS, "s3cret-token").await {
            Ok(r) => {
                first = Some(answer(r).await);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    assert_eq!(first.unwrap(), (200, r#"{"accepted":2}"#.to_string()));
    assert_eq!(
        answer(post("/badge/community-message", "someone has already unlocked: Hello World", "s3cret-token").await.unwrap()).await,
        (200, r#"{"accepted":1}"#.into())
    );
    let envelopes = "{\"channel\":\"high-score-processor\",\"payload\":{\"user_uuid\":\"u-2\",\"mac_address\":\"cc:dd\",\"event\":\"high-score\",\"high_scores\":[{\"g\":\"LA\",\"s\":5,\"d\":9}]}}\n\
                     {\"channel\":\"achievement\",\"payload\":\"{\\\"handle\\\":\\\"someone\\\",\\\"name\\\":\\\"Rick Rolled\\\",\\\"points\\\":1}\"}\n\
                     {\"channel\":\"high-score-processor\",\"payload\":\"{not json\"}\n";
    assert_eq!(
        answer(post("/badge", envelopes, "s3cret-token").await.unwrap()).await,
        (200, r#"{"accepted":2}"#.into()),
        "good messages taken, the bad one dead-lettered"
    );
    // Refusals: a bad token, an undecodable single message, a broken envelope.
    assert_eq!(
        answer(post("/badge/fact", "{}", "wrong").await.unwrap()).await,
        (401, r#"{"error":"missing or invalid bearer token"}"#.into())
    );
    let (status, body) = answer(post("/badge/high-score-processor", "[1,2]", "s3cret-token").await.unwrap()).await;
    assert_eq!((status, body.as_str()), (400, r#"{"error":"channel `high-score-processor`: expected a JSON object, got an array"}"#));
    let (status, body) = answer(post("/badge", "{\"channel\":\"fact\"}", "s3cret-token").await.unwrap()).await;
    assert_eq!(status, 400);
    assert!(body.starts_with(r#"{"error":"line 1: not a {\"channel\", \"payload\"} envelope: missing field `payload`"#), "{body}");

    let mut batches = Vec::new();
    while batches.iter().map(|b: &RecordBatch| b.num_rows()).sum::<usize>() < 5 {
        batches.push(next_rows(&mut h).await);
    }
    let all = datafusion::arrow::compute::concat_batches(&badge_schema(), &batches).unwrap();
    assert_eq!(
        shown(&all),
        "+----------------------+-------------------+-----------+-----------+-------+----------+---------+--------+-------------------------------------------+\n\
         | channel              | event             | user_uuid | game      | score | duration | handle  | points | message                                   |\n\
         +----------------------+-------------------+-----------+-----------+-------+----------+---------+--------+-------------------------------------------+\n\
         | high-score-processor | high-score        | u-1       | Breakout  | 1200  | 95       |         |        |                                           |\n\
         | high-score-processor | high-score        | u-1       | Tappytime | 37    | 30       |         |        |                                           |\n\
         | community-message    | community-message |           |           |       |          |         |        | someone has already unlocked: Hello World |\n\
         | high-score-processor | high-score        | u-2       | Labyrinth | 5     | 9        |         |        |                                           |\n\
         | achievement          | achievement       |           |           |       |          | someone | 1      | Rick Rolled                               |\n\
         +----------------------+-------------------+-----------+-----------+-------+----------+---------+--------+-------------------------------------------+"
    );
    let mut reasons = Vec::new();
    while let Ok(d) = h.dead_letters.try_recv() {
        let r = d.batch.data.column_by_name("reason").unwrap().as_string::<i32>().clone();
        reasons.extend((0..r.len()).map(|i| r.value(i).to_string()));
    }
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(reasons[0].starts_with("channel `high-score-processor`: malformed JSON"), "{reasons:?}");
    assert_eq!(reasons[1], "channel `high-score-processor`: expected a JSON object, got an array");
    // 401, 400 (single), 400 (envelope), and the dead-lettered message of the envelope request.
    assert_eq!(h.metrics.errors.get(), 4);
    h.shutdown.cancel();
    task.await.unwrap().unwrap();
}

/// A Redis of our own on a free port, so the test can kill and restart it.
fn start_redis(port: u16) -> std::process::Child {
    let mut child = std::process::Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server is installed");
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return child;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("redis-server did not listen on {port}");
}

async fn wait_subscribed(conn: &mut redis::aio::MultiplexedConnection, channel: &str) {
    for _ in 0..250 {
        let n: Vec<(String, i64)> = redis::cmd("PUBSUB").arg("NUMSUB").arg(channel).query_async(conn).await.unwrap();
        if n[0].1 > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("nobody subscribed to {channel}");
}

#[tokio::test]
async fn pubsub_reconnects_and_resubscribes_after_redis_restarts() {
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let mut redis_server = start_redis(port);
    let source = build(&format!("{{mode: pubsub, url: '{url}', channels: [community-message], batch_wait: 20ms}}"));
    let (ctx, mut h) = source_context("badges", &[""], 16);
    let task = tokio::spawn(source.run(ctx));
    let connect = || async { redis::Client::open(url.as_str()).unwrap().get_multiplexed_async_connection().await.unwrap() };
    let mut conn = connect().await;
    wait_subscribed(&mut conn, "community-message").await;
    let _: i64 = conn.publish("community-message", "before the restart").await.unwrap();
    let message = |b: RecordBatch| b.column_by_name("message").unwrap().as_string::<i32>().value(0).to_string();
    assert_eq!(message(next_rows(&mut h).await), "before the restart");

    redis_server.kill().unwrap();
    redis_server.wait().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut redis_server = start_redis(port);
    let mut conn = connect().await;
    wait_subscribed(&mut conn, "community-message").await;
    let _: i64 = conn.publish("community-message", "after the restart").await.unwrap();
    assert_eq!(message(next_rows(&mut h).await), "after the restart");
    assert_eq!(h.metrics.errors.get(), 1, "the lost connection is counted once");
    assert!(h.metrics.retries.get() >= 1, "reconnect attempts while Redis was down are counted");
    h.shutdown.cancel();
    task.await.unwrap().unwrap();
    redis_server.kill().unwrap();
    let _ = redis_server.wait();
}

/// An entry's time is its id's milliseconds; an explicit id beyond the microsecond range used to
/// overflow `ms * 1000` (a panic in debug builds, a wrapped time in release).
#[test]
fn an_entry_id_beyond_the_time_range_gets_the_read_time() {
    let entry = |id: &str| StreamId { id: id.into(), map: Default::default() };
    assert_eq!(entry_message(&entry("1700000000123-0")).ts_us, 1_700_000_000_123_000);
    let before = now_us();
    let hostile = entry_message(&entry("9223372036854776-0")).ts_us;
    assert!((before..=now_us()).contains(&hostile), "{hostile}");
}
