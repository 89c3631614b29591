//! `mode: docker` against a real Docker Engine API (Podman's, as `./scripts/test` starts it; set
//! `DOCKER_HOST`). The containers replay srt-live-transmit output: connect messages on stderr,
//! JSON statistics on stdout.

use crate::common;

use std::collections::HashMap;
use std::time::Duration;

use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use bollard::Docker;
use futures::StreamExt;

const IMAGE: &str = "localhost/tributary-srt-replay:latest";

fn docker_host() -> String {
    tributary_testkit::test_docker_host()
}

async fn docker() -> Docker {
    let host = docker_host();
    let d = Docker::connect_with_host(&host).unwrap();
    d.ping().await.unwrap_or_else(|e| panic!("the Docker Engine API at {host} does not answer a ping: {e}"));
    d
}

/// A busybox image made through the API (`docker import` of a one-binary root file system).
async fn ensure_image(d: &Docker) {
    if d.inspect_image(IMAGE).await.is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("bin")).unwrap();
    let busybox =
        ["/bin/busybox", "/usr/bin/busybox"].into_iter().find(|p| std::path::Path::new(p).exists()).expect("busybox-static is required");
    std::fs::copy(busybox, dir.path().join("bin/busybox")).unwrap();
    for applet in ["sh", "echo", "sleep"] {
        std::os::unix::fs::symlink("busybox", dir.path().join("bin").join(applet)).unwrap();
    }
    let tar = std::process::Command::new("tar").arg("-C").arg(dir.path()).args(["-cf", "-", "."]).output().unwrap();
    assert!(tar.status.success());
    let options = CreateImageOptionsBuilder::default().from_src("-").repo("localhost/tributary-srt-replay").tag("latest").build();
    let mut progress = d.create_image(Some(options), Some(bollard::body_full(tar.stdout.into())), None);
    while let Some(p) = progress.next().await {
        p.unwrap();
    }
}

fn stats_line(sid: i64, recv: u64, send: u64) -> String {
    format!(
        r#"{{"sid":{sid},"timepoint":"2026-11-22T10:00:0{}.000000+0000","time":1000,"window":{{"flow":8192,"congestion":8192,"flight":0}},"link":{{"rtt":0.2,"bandwidth":50,"maxBandwidth":1000}},"send":{{"packets":{send},"packetsUnique":{send},"packetsLost":0,"packetsDropped":0,"packetsRetransmitted":0,"packetsFilterExtra":0,"bytes":0,"bytesUnique":0,"bytesDropped":0,"byteAvailBuf":0,"msBuf":0,"mbitRate":0,"sendPeriod":10}},"recv":{{"packets":{recv},"packetsUnique":{recv},"packetsLost":0,"packetsDropped":0,"packetsRetransmitted":0,"packetsBelated":0,"packetsFilterExtra":0,"packetsFilterSupply":0,"packetsFilterLoss":0,"bytes":0,"bytesUnique":0,"bytesLost":0,"bytesDropped":0,"byteAvailBuf":0,"msBuf":120,"mbitRate":4,"msTsbPdDelay":120}}}}"#,
        (recv + send) / 100 % 10
    )
}

/// Create and start a container printing `stderr` lines, then `stdout` lines, then sleeping.
async fn run_container(d: &Docker, name: &str, labels: HashMap<String, String>, stderr: &[&str], stdout: &[String]) -> String {
    let mut script = String::new();
    for l in stderr {
        script.push_str(&format!("echo '{l}' >&2; "));
    }
    // Two pipes into the container runtime keep no order between them: let the messages land
    // before the stats, as they do from srt-live-transmit (its first report follows 100 packets).
    script.push_str("sleep 0.5; ");
    for l in stdout {
        script.push_str(&format!("echo '{l}'; sleep 0.1; "));
    }
    script.push_str("exec sleep 600");
    let body = ContainerCreateBody {
        image: Some(IMAGE.into()),
        cmd: Some(vec!["sh".into(), "-c".into(), script]),
        labels: Some(labels),
        host_config: Some(HostConfig { network_mode: Some("none".into()), ..Default::default() }),
        ..Default::default()
    };
    let _ = d.remove_container(name, Some(RemoveContainerOptionsBuilder::default().force(true).build())).await;
    let id = d.create_container(Some(CreateContainerOptionsBuilder::default().name(name).build()), body).await.unwrap().id;
    d.start_container(&id, None).await.unwrap();
    id
}

async fn remove(d: &Docker, id: &str) {
    let _ = d.remove_container(id, Some(RemoveContainerOptionsBuilder::default().force(true).build())).await;
}

#[tokio::test]
async fn containers_are_discovered_followed_and_noticed_when_they_stop() {
    let d = docker().await;
    ensure_image(&d).await;
    let run = format!("{}", std::process::id());
    let selected = |extra: &[(&str, &str)]| {
        let mut l: HashMap<String, String> = HashMap::from([("tributary.srt.test".into(), run.clone())]);
        l.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        l
    };
    let mut r = common::start(&format!(
        "{{mode: docker, batch_wait: 50ms, docker: {{host: '{}', labels: ['tributary.srt.test={run}'], discover_interval: 200ms}}}}",
        docker_host()
    ));

    // A receiver, named by its labels.
    let a = run_container(
        &d,
        &format!("srt-a-{run}"),
        selected(&[("tributary.srt.session", "camera-1"), ("tributary.srt.role", "rx")]),
        &["Media path: 'srt://10.0.0.1:9000?mode=caller&passphrase=0123456789abc' --> 'udp://127.0.0.1:5001'", "SRT source connected"],
        &[stats_line(11, 100, 0), stats_line(11, 200, 0), "garbage from the container".into(), stats_line(11, 300, 0)],
    )
    .await;
    // Not selected: never followed.
    let other = run_container(
        &d,
        &format!("srt-other-{run}"),
        HashMap::from([("tributary.srt.test".into(), "someone-else".into())]),
        &["SRT source connected"],
        &[stats_line(5, 1, 0)],
    )
    .await;
    r.until("camera-1's rows", Duration::from_secs(30), |r| r.stats_of("camera-1").len() == 3).await;

    // A sender started after the pipeline, without labels naming it: container name, role from its output.
    let b_name = format!("srt-b-{run}");
    let b = run_container(&d, &b_name, selected(&[]), &["Accepted SRT target connection"], &[stats_line(21, 0, 500)]).await;
    r.until("the late container's rows", Duration::from_secs(30), |r| !r.stats_of(&b_name).is_empty()).await;

    d.stop_container(&a, Some(StopContainerOptionsBuilder::default().t(1).build())).await.unwrap();
    r.until("camera-1 to stop", Duration::from_secs(30), |r| !r.events_of("camera-1", "exited").is_empty()).await;
    let r = r.stop().await;
    for id in [&a, &b, &other] {
        remove(&d, id).await;
    }

    let cam = r.stats_of("camera-1");
    assert_eq!(cam.iter().map(|s| s.get("recv_packets")).collect::<Vec<_>>(), [100.0, 200.0, 300.0, 300.0]);
    assert_eq!(cam.iter().map(|s| s.connected).collect::<Vec<_>>(), [1, 1, 1, 0]);
    assert!(cam.iter().all(|s| s.role.as_deref() == Some("rx") && s.sid == Some(11) && s.reconnections == 0));
    let cam_events: Vec<_> = r.events.iter().filter(|e| e.session == "camera-1").map(|e| (e.event.as_str(), e.message.clone())).collect();
    let short: String = a.chars().take(12).collect();
    assert_eq!(
        cam_events,
        [
            ("started", format!("container {short} running")),
            ("connected", "SRT source connected".into()),
            ("exited", format!("container {short}: container stopped")),
        ]
    );
    assert_eq!(r.harness.metrics.errors.get(), 1, "the garbage line is counted");

    let late = r.stats_of(&b_name);
    assert_eq!((late[0].role.as_deref(), late[0].get("send_packets"), late[0].sid), (Some("tx"), 500.0, Some(21)));
    assert_eq!(late[0].columns["recv_packets"], None);
    assert!(r.stats.iter().all(|s| s.session != format!("srt-other-{run}")), "an unselected container was followed");
}

#[tokio::test]
async fn an_unreachable_engine_is_counted_and_retried() {
    let port = tributary_testkit::free_port();
    let r = common::start(&format!("{{mode: docker, docker: {{host: 'tcp://127.0.0.1:{port}', discover_interval: 50ms}}}}"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!r.task.is_finished(), "the source keeps looking for containers");
    let r = r.stop().await;
    assert!(r.harness.metrics.errors.get() >= 2, "errors: {}", r.harness.metrics.errors.get());
}
