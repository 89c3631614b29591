//! Broker figures: a message broker of the figure's own (its own port and data folder) stopped
//! under a running `tributary` and started again. Every message published must reach the sink,
//! and the broker must end with nothing unacknowledged.
//!
//! - **NATS restarted under the JetStream source**: `nats-server -js` with a file store.
//! - **Mosquitto restarted under the MQTT source**: QoS 1, a persistent session, `persistence true`.
//!
//! - **RabbitMQ restarted under the AMQP source**: a node of its own (`rabbitmq-server` with its
//!   own name, ports and folders beside the machine's), a durable queue, persistent messages
//!   published with confirms.
//!
//! What they found (2026-12-07):
//! - Mosquitto keeps at most `max_queued_messages` (1,000 by default) for a session whose client is
//!   away, counting the messages delivered and not yet acknowledged. The figure stops the broker
//!   right after the first 1,000 messages were written, before their acknowledgements arrived; with
//!   the default, all 1,000 published after the restart were dropped by Mosquitto. With
//!   `max_queued_messages 0` (no limit): 0 lost, 998 duplicates (the unacknowledged first half).
//!   Without `user root` in the config, Mosquitto (started as root) runs as `mosquitto`, cannot
//!   save its sessions in a temp dir, and forgets them.
//! - The NATS one lost 1 message until the source stopped cancelling its fetches (a fetch dropped
//!   mid-flight keeps what the server gave it away for `ack_wait`), and `/health` said 200 during
//!   the outage until the connection's events marked the source failing (a fetch only waits for the
//!   client to reconnect).

use std::path::Path;
use std::time::Duration;

use crate::common::figures::Figure;
use crate::common::*;
use crate::fault::{health, lines_by_score, wait_until, OwnServer};

const TOTAL: i64 = 2000;

fn scores(range: std::ops::RangeInclusive<i64>) -> impl Iterator<Item = String> {
    range.map(|n| format!(r#"{{"score":{n}}}"#))
}

fn file_sink(out: &Path) -> String {
    format!("sinks:\n  out:\n    type: file\n    inputs: [events]\n    path: {}\n    flush_interval: 100ms\n", out.display())
}

/// Counts what the file sink holds against `TOTAL` published.
fn count(f: &mut Figure, out: &Path) {
    let seen = lines_by_score(out);
    f.sent = TOTAL;
    f.written = seen.len() as i64;
    f.lost = (1..=TOTAL).filter(|s| !seen.contains_key(s)).count() as i64;
    f.duplicates = seen.values().map(|n| n - 1).sum::<i64>();
}

pub async fn nats_restart_under_jetstream() -> Figure {
    let mut f = Figure {
        scenario: "NATS restarted under the JetStream source",
        fault: "nats-server stopped 5 s, started again".into(),
        ..Default::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let port = tributary_testkit::free_port();
    let store = dir.path().join("jetstream");
    let args = ["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd", &store.display().to_string()].map(String::from).to_vec();
    let mut server = OwnServer::start("nats-server", args, port).await;
    let url = format!("nats://127.0.0.1:{port}");
    let js = async_nats::jetstream::new(async_nats::connect(&url).await.unwrap());
    let config = async_nats::jetstream::stream::Config { name: "FIG".into(), subjects: vec!["fig.>".into()], ..Default::default() };
    js.create_stream(config).await.unwrap();
    let out = dir.path().join("out.jsonl");
    let admin = free_addr();
    let pipeline = write(
        dir.path(),
        "p.yaml",
        &format!(
            "admin: {{address: \"{admin}\", degraded_after: 2s}}\nsources:\n  events:\n    type: nats\n    url: {url}\n    stream: FIG\n    consumer: c\n    schema: {{score: int}}\n    batch_size: 100\n    ack_wait: 5s\n{}",
            file_sink(&out)
        ),
    );
    let mut child = run_bin(&pipeline);
    wait_for_port(admin).await;
    let publish = async |js: &async_nats::jetstream::Context, range| {
        for body in scores(range) {
            js.publish("fig.a", body.into()).await.unwrap().await.unwrap();
        }
    };
    publish(&js, 1..=TOTAL / 2).await;
    let half = wait_until(Duration::from_secs(30), async || lines_by_score(&out).len() as i64 >= TOTAL / 2).await;
    server.stop();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (status_down, _) = health(admin).await;
    server.restart().await;
    let js = async_nats::jetstream::new(async_nats::connect(&url).await.unwrap());
    publish(&js, TOTAL / 2 + 1..=TOTAL).await;
    let settled = async || {
        let mut consumer: async_nats::jetstream::consumer::PullConsumer = js.get_stream("FIG").await.ok()?.get_consumer("c").await.ok()?;
        let info = consumer.info().await.ok()?;
        Some((info.num_ack_pending, info.num_pending))
    };
    let caught_up =
        wait_until(Duration::from_secs(60), async || lines_by_score(&out).len() as i64 >= TOTAL && settled().await == Some((0, 0))).await;
    sigterm(&child);
    let exit = child.wait().unwrap();
    count(&mut f, &out);
    let left = settled().await;
    f.notes = vec![
        format!("first half written before the stop: {half}"),
        format!("/health while NATS was down: {status_down}"),
        format!("unacknowledged, pending after: {left:?}; exit {}", exit.code().unwrap_or(-1)),
    ];
    f.check(f.lost == 0 && caught_up, format!("{} messages missing", f.lost));
    f.check(left == Some((0, 0)), format!("the consumer still holds {left:?}"));
    f.check(status_down == 503, format!("/health answered {status_down} while NATS was down (expected 503, degraded)"));
    f.check(exit.success(), format!("exit {exit:?}"));
    f
}

pub async fn mosquitto_restart_under_mqtt() -> Figure {
    let mut f = Figure {
        scenario: "Mosquitto restarted under the MQTT source",
        fault: "mosquitto stopped 5 s, started again".into(),
        ..Default::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let port = tributary_testkit::free_port();
    let conf = write(
        dir.path(),
        "mosquitto.conf",
        // `user root`: started as root, Mosquitto otherwise switches to the user `mosquitto`, who
        // cannot write the persistence file here, and a restart then forgets every session.
        // `max_queued_messages 0` (no limit): by default Mosquitto keeps at most 1,000 messages for
        // a session whose client is away, counting the ones delivered and not yet acknowledged,
        // and drops the rest without a word.
        &format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\nuser root\nmax_queued_messages 0\n",
            dir.path().display()
        ),
    );
    let mut server = OwnServer::start("mosquitto", vec!["-c".into(), conf.display().to_string()], port).await;
    let out = dir.path().join("out.jsonl");
    let admin = free_addr();
    let pipeline = write(
        dir.path(),
        "p.yaml",
        &format!(
            "admin: {{address: \"{admin}\", degraded_after: 2s}}\nsources:\n  events:\n    type: mqtt\n    url: mqtt://127.0.0.1:{port}\n    topics: [fig/#]\n    qos: 1\n    protocol: \"5\"\n    client_id: figure-source\n    schema: {{score: int}}\n{}",
            file_sink(&out)
        ),
    );
    let mut child = run_bin(&pipeline);
    wait_for_port(admin).await;
    tokio::time::sleep(Duration::from_secs(1)).await; // subscribed
    let publish = |range| {
        let lines: Vec<String> = scores(range).collect();
        let mut publisher = std::process::Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1", "-t", "fig/a", "-l"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("mosquitto_pub (Debian's mosquitto-clients)");
        use std::io::Write;
        publisher.stdin.take().unwrap().write_all((lines.join("\n") + "\n").as_bytes()).unwrap();
        publisher.wait().unwrap()
    };
    let first = publish(1..=TOTAL / 2);
    let half = wait_until(Duration::from_secs(30), async || lines_by_score(&out).len() as i64 >= TOTAL / 2).await;
    server.stop();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (status_down, _) = health(admin).await;
    server.restart().await;
    let second = publish(TOTAL / 2 + 1..=TOTAL);
    let caught_up = wait_until(Duration::from_secs(60), async || lines_by_score(&out).len() as i64 >= TOTAL).await;
    sigterm(&child);
    let exit = child.wait().unwrap();
    count(&mut f, &out);
    f.notes = vec![
        format!("first half written before the stop: {half}"),
        format!("/health while Mosquitto was down: {status_down}"),
        format!("publishers: {first}, {second}; exit {}", exit.code().unwrap_or(-1)),
    ];
    f.check(first.success() && second.success(), "mosquitto_pub failed");
    f.check(status_down == 503, format!("/health answered {status_down} while Mosquitto was down (expected 503, degraded)"));
    f.check(f.lost == 0 && caught_up, format!("{} messages missing", f.lost));
    f.check(exit.success(), format!("exit {exit:?}"));
    f
}

pub async fn rabbitmq_restart_under_amqp() -> Figure {
    use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
    use lapin::types::FieldTable;
    let mut f = Figure {
        scenario: "RabbitMQ restarted under the AMQP source",
        fault: "rabbitmq-server stopped 5 s, started again".into(),
        ..Default::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let (port, dist) = (tributary_testkit::free_port(), tributary_testkit::free_port());
    // A node of its own beside the shared one: its name, ports, folders and an empty config (the
    // system's would take the shared node's port).
    let base = dir.path().display().to_string();
    std::fs::write(dir.path().join("rabbitmq.conf"), format!("listeners.tcp.local = 127.0.0.1:{port}\n")).unwrap();
    std::fs::write(dir.path().join("enabled_plugins"), "[].\n").unwrap();
    let env = |k: &str, v: String| (k.to_string(), v);
    let envs = vec![
        env("RABBITMQ_NODENAME", format!("tributary-figure-{port}@localhost")),
        env("RABBITMQ_NODE_PORT", port.to_string()),
        env("RABBITMQ_DIST_PORT", dist.to_string()),
        env("RABBITMQ_CONFIG_FILE", format!("{base}/rabbitmq")),
        env("RABBITMQ_ENABLED_PLUGINS_FILE", format!("{base}/enabled_plugins")),
        env("RABBITMQ_MNESIA_BASE", format!("{base}/mnesia")),
        env("RABBITMQ_LOG_BASE", format!("{base}/log")),
        env("RABBITMQ_PID_FILE", format!("{base}/pid")),
    ];
    let mut server = OwnServer::start_with("/usr/lib/rabbitmq/bin/rabbitmq-server", Vec::new(), envs, port).await;
    let url = format!("amqp://127.0.0.1:{port}/%2f");
    let channel = async || {
        let c = lapin::Connection::connect(&url, lapin::ConnectionProperties::default()).await.unwrap();
        let ch = c.create_channel().await.unwrap();
        ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
        (c, ch)
    };
    let (_c, ch) = channel().await;
    let durable = QueueDeclareOptions { durable: true, ..Default::default() };
    ch.queue_declare("fig".into(), durable, FieldTable::default()).await.unwrap();
    let out = dir.path().join("out.jsonl");
    let admin = free_addr();
    let pipeline = write(
        dir.path(),
        "p.yaml",
        &format!(
            "admin: {{address: \"{admin}\", degraded_after: 2s}}\nsources:\n  events:\n    type: amqp\n    url: \"{url}\"\n    queue: fig\n    schema: {{score: int}}\n{}",
            file_sink(&out)
        ),
    );
    let mut child = run_bin(&pipeline);
    wait_for_port(admin).await;
    // Persistent messages, each confirmed by the broker (on disk) before the next.
    let publish = async |ch: &lapin::Channel, range| {
        let persistent = lapin::BasicProperties::default().with_delivery_mode(2);
        for body in scores(range) {
            let confirm = ch.basic_publish("".into(), "fig".into(), BasicPublishOptions::default(), body.as_bytes(), persistent.clone());
            confirm.await.unwrap().await.unwrap();
        }
    };
    publish(&ch, 1..=TOTAL / 2).await;
    let half = wait_until(Duration::from_secs(30), async || lines_by_score(&out).len() as i64 >= TOTAL / 2).await;
    server.stop();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (status_down, _) = health(admin).await;
    server.restart().await;
    let (_c, ch) = channel().await;
    publish(&ch, TOTAL / 2 + 1..=TOTAL).await;
    let left = async || {
        let passive = QueueDeclareOptions { passive: true, ..Default::default() };
        let (_c, ch) = channel().await;
        ch.queue_declare("fig".into(), passive, FieldTable::default()).await.ok().map(|q| q.message_count())
    };
    let caught_up =
        wait_until(Duration::from_secs(60), async || lines_by_score(&out).len() as i64 >= TOTAL && left().await == Some(0)).await;
    sigterm(&child);
    let exit = child.wait().unwrap();
    count(&mut f, &out);
    let ready = left().await;
    f.notes = vec![
        format!("first half written before the stop: {half}"),
        format!("/health while RabbitMQ was down: {status_down}"),
        format!("ready in the queue after: {ready:?}; exit {}", exit.code().unwrap_or(-1)),
    ];
    f.check(f.lost == 0 && caught_up, format!("{} messages missing", f.lost));
    f.check(ready == Some(0), format!("the queue still holds {ready:?}"));
    f.check(status_down == 503, format!("/health answered {status_down} while RabbitMQ was down (expected 503, degraded)"));
    f.check(exit.success(), format!("exit {exit:?}"));
    f
}
