//! Scale-out on a real broker: three `tributary run` processes share one JetStream durable pull
//! consumer while 20,000 messages are published. One process is killed (SIGKILL) mid-stream. The
//! server delivers what it had not acknowledged to the other two after `ack_wait`, so at the end
//! every message is in a sink (0 lost). The only duplicates are messages the killed process had
//! written but not yet acknowledged.

use crate::common;
use common::scale_out::{written, Member};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};

const MESSAGES: i64 = 20_000;

fn start(name: &'static str, dir: &Path, pipeline: &Path) -> Member {
    common::scale_out::start(name, name, dir, pipeline, "info", &[])
}

async fn wait_until(what: &str, seconds: u64, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while !done() {
        assert!(Instant::now() < deadline, "{what} within {seconds} s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_share_a_durable_consumer_and_a_killed_one_loses_nothing() {
    let url = tributary_testkit::test_nats_url();
    let name = format!("SCALE_{}_{}", std::process::id(), tributary_sdk::now_us());
    let subject = format!("{}.badges", name.to_lowercase());
    let js = jetstream::new(async_nats::connect(&url).await.unwrap());
    js.create_stream(stream::Config { name: name.clone(), subjects: vec![subject.clone()], ..Default::default() }).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        r#"
admin: {{address: "${{ADMIN}}"}}
sources:
  badges:
    type: nats
    url: {url}
    stream: {name}
    consumer: shared
    schema: {{id: int, ts: timestamp}}
    batch_size: 100
    batch_wait: 50ms
    ack_wait: 3s
sinks:
  out:
    type: file
    inputs: [badges]
    path: ${{OUT}}
    flush_interval: 100ms
"#
    );
    let pipeline = common::write(dir.path(), "scale.yaml", &yaml);
    let t0 = Instant::now();
    let mut members = [start("a", dir.path(), &pipeline), start("b", dir.path(), &pipeline), start("c", dir.path(), &pipeline)];
    for m in &members {
        let log = m.log.clone();
        wait_until(&format!("{} reading", m.name), 30, || {
            std::fs::read_to_string(&log).unwrap_or_default().contains("reading (JetStream)")
        })
        .await;
    }

    // About 2,000 messages a second, each acknowledged by the stream before it counts as sent.
    let publisher = {
        let (js, subject) = (js.clone(), subject.clone());
        tokio::spawn(async move {
            for chunk in 0..MESSAGES / 100 {
                let mut acks = Vec::new();
                for id in chunk * 100..(chunk + 1) * 100 {
                    let body = format!(r#"{{"id":{id},"ts":"2026-12-06T10:00:00Z"}}"#);
                    acks.push(js.publish(subject.clone(), body.into()).await.unwrap());
                }
                for ack in acks {
                    ack.await.unwrap();
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    // Kill b once it has written rows of its own, with messages still flowing.
    let b_out = members[1].out.clone();
    wait_until("b writing 500 rows", 60, || written(&b_out).len() >= 500).await;
    members[1].child.kill().unwrap();
    members[1].child.wait().unwrap();
    let killed_at = (t0.elapsed().as_secs_f64(), written(&b_out).len());
    publisher.await.unwrap();

    let outputs: Vec<(&'static str, PathBuf)> = members.iter().map(|m| (m.name, m.out.clone())).collect();
    let count_all = || {
        let mut seen: BTreeMap<i64, Vec<&'static str>> = BTreeMap::new();
        for (name, out) in &outputs {
            for id in written(out) {
                seen.entry(id).or_default().push(*name);
            }
        }
        seen
    };
    // The killed member's unacknowledged messages come back after `ack_wait` (3 s).
    wait_until("every message written", 60, || count_all().len() as i64 >= MESSAGES).await;
    for m in [0, 2] {
        common::sigterm(&members[m].child);
        let status = members[m].child.wait().unwrap();
        assert!(status.success(), "{} stops cleanly on SIGTERM: {status:?}", members[m].name);
    }

    let seen = count_all();
    let stored: usize = seen.values().map(Vec::len).sum();
    let missing: Vec<i64> = (0..MESSAGES).filter(|id| !seen.contains_key(id)).collect();
    let duplicates: Vec<(i64, &Vec<&str>)> = seen.iter().filter(|(_, w)| w.len() > 1).map(|(id, w)| (*id, w)).collect();
    let per_member: Vec<String> = outputs.iter().map(|(name, out)| format!("{name} {}", written(out).len())).collect();
    eprintln!("b killed at {:.1}s after writing {} rows; rows written per member: {}", killed_at.0, killed_at.1, per_member.join(", "));
    eprintln!(
        "sent {MESSAGES}, acked by the stream {MESSAGES}, stored {stored}, lost {}, duplicates {} (each written by the killed b)",
        missing.len(),
        duplicates.len()
    );
    assert!(missing.is_empty(), "{} of {MESSAGES} messages lost, first: {:?}", missing.len(), &missing[..missing.len().min(10)]);
    for (id, writers) in &duplicates {
        assert!(writers.contains(&"b"), "id {id} written by {writers:?}: only the killed member's unacknowledged messages may repeat");
        assert_eq!(writers.len(), 2, "id {id} written by {writers:?}");
    }
    assert!(duplicates.len() <= killed_at.1, "no more duplicates than b wrote");

    // The consumer holds nothing back: every message was acknowledged by a survivor.
    let mut consumer: jetstream::consumer::PullConsumer = js.get_stream(&name).await.unwrap().get_consumer("shared").await.unwrap();
    let info = consumer.info().await.unwrap();
    assert_eq!((info.num_ack_pending, info.num_pending), (0, 0));
    assert!(members.iter().all(|m| m.name == "b" || !written(&m.out).is_empty()), "every survivor took a share");
    js.delete_stream(&name).await.unwrap();
}
