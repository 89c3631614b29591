//! Scale-out through a Kafka consumer group: three `tributary run` processes of one pipeline share
//! a 12-partition topic while a producer writes at a steady rate. One member is killed (SIGKILL)
//! and started again, another stops cleanly (SIGTERM); each change is a rebalance. At the end every
//! produced message is in the sinks (0 lost), and every duplicate lies in a range that was never
//! committed: the killed member's tail past its last confirmed commit, or a commit the coordinator
//! refused. (librdkafka's mock broker refuses every commit while a rebalance is in progress, where
//! a Kafka broker accepts the revoking member's commit; the members log each refusal with its
//! offsets, and the test reads them from the logs.)

use crate::common;
use common::scale_out::{written, Member};

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

const PARTITIONS: i32 = 12;

fn start(name: &'static str, dir: &Path, pipeline: &Path) -> Member {
    common::scale_out::start(name, name, dir, pipeline, "info,tributary_kafka=debug", &[])
}

/// The partitions a member holds now, from its log: the last assignment after the last revoke.
fn held(log: &Path) -> BTreeSet<i32> {
    let mut now = BTreeSet::new();
    for line in std::fs::read_to_string(log).unwrap_or_default().lines() {
        if line.contains("Kafka partitions revoked") {
            for p in partitions_field(line) {
                now.remove(&p);
            }
        } else if line.contains("Kafka partitions assigned") {
            now.extend(partitions_field(line));
        }
    }
    now
}

fn partitions_field(line: &str) -> Vec<i32> {
    log_list(line, "partitions").filter_map(|tp| tp.rsplit('/').next()?.parse().ok()).collect()
}

/// The comma-separated entries of a log line's `name=a,b,c` field (none when it lacks it).
fn log_list<'a>(line: &'a str, name: &str) -> impl Iterator<Item = &'a str> {
    let value = line.split(&format!(" {name}=")).nth(1).and_then(|rest| rest.split_whitespace().next()).unwrap_or("");
    value.split(',').filter(|e| !e.is_empty())
}

/// Offsets `from..to` of a partition that a member wrote but did not get committed.
#[derive(Debug)]
struct Uncommitted {
    partition: i32,
    from: i64,
    to: i64,
    cause: &'static str,
}

/// `badges/3@412,badges/7@90` → (partition, next offset) pairs.
fn offsets_field(line: &str) -> Vec<(i32, i64)> {
    log_list(line, "offsets")
        .filter_map(|e| {
            let (tp, next) = e.split_once('@')?;
            Some((tp.rsplit('/').next()?.parse().ok()?, next.parse().ok()?))
        })
        .collect()
}

/// From a member's log: each refused commit, from its last confirmed commit of the partition up
/// to the refused one; for a killed member, everything past its last confirmed commit.
fn uncommitted(log: &Path, killed: bool) -> Vec<Uncommitted> {
    let mut confirmed: BTreeMap<i32, i64> = BTreeMap::new();
    let mut ranges = Vec::new();
    for line in std::fs::read_to_string(log).unwrap_or_default().lines() {
        if line.contains("Kafka offsets committed") {
            for (p, next) in offsets_field(line) {
                let c = confirmed.entry(p).or_insert(next);
                *c = (*c).max(next);
            }
        } else if line.contains("Kafka offset commit failed") {
            for (p, next) in offsets_field(line) {
                ranges.push(Uncommitted { partition: p, from: confirmed.get(&p).copied().unwrap_or(0), to: next, cause: "refused" });
            }
        }
    }
    if killed {
        for p in 0..PARTITIONS {
            ranges.push(Uncommitted { partition: p, from: confirmed.get(&p).copied().unwrap_or(0), to: i64::MAX, cause: "killed" });
        }
    }
    ranges
}

/// Wait until the live members hold all partitions between them, each at least one, none twice.
fn wait_balanced(members: &[&Member], timeline: &mut Vec<String>, t0: Instant) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let held: Vec<BTreeSet<i32>> = members.iter().map(|m| held(&m.log)).collect();
        let total: usize = held.iter().map(BTreeSet::len).sum();
        let union: BTreeSet<i32> = held.iter().flatten().copied().collect();
        if total == PARTITIONS as usize && union.len() == PARTITIONS as usize && held.iter().all(|h| !h.is_empty()) {
            let line = members.iter().zip(&held).map(|(m, h)| format!("{}={:?}", m.name, h)).collect::<Vec<_>>().join("  ");
            timeline.push(format!("{:>5.1}s  {line}", t0.elapsed().as_secs_f64()));
            return;
        }
        assert!(Instant::now() < deadline, "no balanced assignment within 60 s: {held:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn three_members_share_a_topic_through_kills_restarts_and_stops() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("badges", PARTITIONS, 1).unwrap();
    let bootstrap = mock.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        r#"
admin: {{address: "${{ADMIN}}"}}
sources:
  badges:
    type: kafka
    bootstrap_servers: "{bootstrap}"
    topics: [badges]
    group_id: scale-out
    batch_size: 100
    batch_wait: 50ms
    schema: {{id: int, ts: timestamp}}
    # A killed member holds its partitions until its session times out (default 45 s).
    librdkafka: {{session.timeout.ms: "6000", heartbeat.interval.ms: "500"}}
sinks:
  out:
    type: file
    inputs: [badges]
    path: ${{OUT}}
    flush_interval: 100ms
"#
    );
    let pipeline = common::write(dir.path(), "scale.yaml", &yaml);

    // A steady producer (about 400 messages/s); it records where each id landed.
    let placed: Arc<Mutex<HashMap<i64, (i32, i64)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let producer_thread = {
        let (placed, stop, bootstrap) = (placed.clone(), stop.clone(), bootstrap.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let producer: FutureProducer =
                    ClientConfig::new().set("bootstrap.servers", &bootstrap).set("linger.ms", "0").create().unwrap();
                let mut id = 0i64;
                while !stop.load(Ordering::SeqCst) {
                    for _ in 0..8 {
                        let payload = format!(r#"{{"id":{id},"ts":"2026-11-30T10:00:00Z"}}"#);
                        let key = id.to_string();
                        let delivered = producer
                            .send(FutureRecord::to("badges").key(&key).payload(&payload), Duration::from_secs(5))
                            .await
                            .map_err(|(e, _)| e)
                            .unwrap();
                        placed.lock().unwrap().insert(id, (delivered.partition, delivered.offset));
                        id += 1;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            });
        })
    };

    let t0 = Instant::now();
    let mut timeline = Vec::new();
    let mut a1 = start("a1", dir.path(), &pipeline);
    let mut b = start("b", dir.path(), &pipeline);
    let mut c = start("c", dir.path(), &pipeline);
    wait_balanced(&[&a1, &b, &c], &mut timeline, t0);

    // Kill a1 once it has written rows of its own.
    let deadline = Instant::now() + Duration::from_secs(60);
    while written(&a1.out).len() < 300 {
        assert!(Instant::now() < deadline, "a1 wrote {} rows in 60 s", written(&a1.out).len());
        std::thread::sleep(Duration::from_millis(50));
    }
    a1.child.kill().unwrap();
    a1.child.wait().unwrap();
    timeline.push(format!("{:>5.1}s  a1 killed (SIGKILL) after writing {} rows", t0.elapsed().as_secs_f64(), written(&a1.out).len()));
    wait_balanced(&[&b, &c], &mut timeline, t0);

    let mut a2 = start("a2", dir.path(), &pipeline);
    timeline.push(format!("{:>5.1}s  a2 started (a1 again)", t0.elapsed().as_secs_f64()));
    wait_balanced(&[&a2, &b, &c], &mut timeline, t0);
    std::thread::sleep(Duration::from_secs(1));

    common::sigterm(&b.child);
    let status = b.child.wait().unwrap();
    assert!(status.success(), "b stops cleanly on SIGTERM: {status:?}");
    timeline.push(format!("{:>5.1}s  b stopped (SIGTERM)", t0.elapsed().as_secs_f64()));
    wait_balanced(&[&a2, &c], &mut timeline, t0);
    std::thread::sleep(Duration::from_secs(1));

    stop.store(true, Ordering::SeqCst);
    producer_thread.join().unwrap();
    let placed = placed.lock().unwrap().clone();
    let produced = placed.len() as i64;

    // Everything produced reaches a sink.
    let outputs: Vec<(&'static str, PathBuf)> = [&a1, &a2, &b, &c].iter().map(|m| (m.name, m.out.clone())).collect();
    let count_all = || {
        let mut seen: BTreeMap<i64, Vec<&'static str>> = BTreeMap::new();
        for (name, out) in &outputs {
            for id in written(out) {
                seen.entry(id).or_default().push(*name);
            }
        }
        seen
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while (count_all().len() as i64) < produced && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    for m in [&mut a2, &mut c] {
        common::sigterm(&m.child);
        let status = m.child.wait().unwrap();
        assert!(status.success(), "{} stops cleanly on SIGTERM: {status:?}", m.name);
    }
    let seen = count_all();
    let missing: Vec<i64> = (0..produced).filter(|id| !seen.contains_key(id)).collect();

    eprintln!("partition assignments over time:");
    for line in &timeline {
        eprintln!("  {line}");
    }
    let per_member: Vec<String> = outputs.iter().map(|(name, out)| format!("{name} {}", written(out).len())).collect();
    eprintln!("rows written per member: {}", per_member.join(", "));
    assert!(missing.is_empty(), "{} of {produced} messages lost, first: {:?}", missing.len(), &missing[..missing.len().min(10)]);

    // Duplicates: each must lie in a range some member wrote but could not commit: the killed
    // member's tail past its last confirmed commit, or a commit the coordinator refused (the mock
    // broker refuses commits while a rebalance is in progress), past that member's last confirmed
    // commit of the partition.
    let duplicates: BTreeMap<i64, &Vec<&str>> = seen.iter().filter(|(_, w)| w.len() > 1).map(|(id, w)| (*id, w)).collect();
    let ranges: Vec<(&str, Vec<Uncommitted>)> = [&a1, &a2, &b, &c].iter().map(|m| (m.name, uncommitted(&m.log, m.name == "a1"))).collect();
    let mut explained: BTreeMap<&str, usize> = BTreeMap::new();
    for (id, writers) in &duplicates {
        let (p, o) = placed[id];
        let why = ranges
            .iter()
            .filter(|(name, _)| writers.contains(name))
            .find_map(|(name, rs)| rs.iter().find(|r| r.partition == p && r.from <= o && o < r.to).map(|r| (*name, r.cause)));
        let Some((name, cause)) = why else {
            panic!("id {id} (partition {p}, offset {o}) written by {writers:?} but no writer left it uncommitted: {ranges:?}");
        };
        *explained.entry(if cause == "killed" { "a1 (killed)" } else { name }).or_default() += 1;
    }
    eprintln!("{produced} messages produced, 0 lost, {} duplicates, each in an uncommitted range of: {explained:?}", duplicates.len());
    drop(mock);
}
