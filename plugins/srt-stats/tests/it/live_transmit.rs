//! `mode: sessions` with the real srt-live-transmit (Debian's srt-tools): a supervised TX
//! listener and RX caller on 127.0.0.1, fed by a UDP sender, read by a UDP sink.

use crate::common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{start, Running};
use tokio::net::UdpSocket;
use tributary_testkit::free_udp_port;

const PAYLOAD: [u8; 1316] = [0x47; 1316];

fn program() -> String {
    tributary_testkit::srt_live_transmit()
}

fn require_program() {
    program();
}

/// Counts datagrams arriving on a UDP port.
async fn udp_sink(port: u16) -> Arc<AtomicU64> {
    let sock = UdpSocket::bind(("127.0.0.1", port)).await.unwrap();
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while sock.recv(&mut buf).await.is_ok() {
            c.fetch_add(1, Ordering::Relaxed);
        }
    });
    count
}

/// Sends `count` TS-sized datagrams at about 1000/s.
async fn send_packets(port: u16, count: u64) {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for i in 0..count {
        sock.send_to(&PAYLOAD, ("127.0.0.1", port)).await.unwrap();
        if i % 10 == 9 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Sends until `stop`, about 400 datagrams/s.
fn send_until(port: u16, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        while !stop.load(Ordering::Relaxed) {
            for _ in 0..4 {
                let _ = sock.send_to(&PAYLOAD, ("127.0.0.1", port)).await;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
}

fn pair_yaml(udp_in: u16, srt_port: u16, call_port: u16, udp_out: u16) -> String {
    format!(
        r#"
mode: sessions
program: {program}
report_every_packets: 100
batch_wait: 100ms
restart_initial: 300ms
sessions:
  - {{name: feed-tx, role: tx, mode: listener, listen_port: {srt_port}, udp_in: "127.0.0.1:{udp_in}"}}
  - {{name: feed-rx, role: rx, mode: caller, host: 127.0.0.1, listen_port: {call_port}, udp_out: "127.0.0.1:{udp_out}"}}
"#,
        program = program()
    )
}

/// The TX has accepted the RX's connection. (The RX prints its own connect message only once
/// data arrives: srt-live-transmit reports the source connected on its first read.)
async fn linked(r: &mut Running) {
    r.until("the receiver to connect to the transmitter", Duration::from_secs(20), |r| !r.events_of("feed-tx", "connected").is_empty())
        .await;
}

#[tokio::test]
async fn a_tx_listener_and_an_rx_caller_report_what_was_sent() {
    require_program();
    let (udp_in, srt_port, udp_out) = (free_udp_port(), free_udp_port(), free_udp_port());
    let received = udp_sink(udp_out).await;
    let mut r = start(&pair_yaml(udp_in, srt_port, srt_port, udp_out));
    linked(&mut r).await;
    const SENT: u64 = 1000;
    send_packets(udp_in, SENT).await;
    // Reports are packet-driven (one per 100): the last one covers all but the last interval.
    r.until("the last reports", Duration::from_secs(20), |r| {
        r.last_stats("feed-tx").is_some_and(|s| s.get("send_packets_unique") > (SENT - 100) as f64)
            && r.last_stats("feed-rx").is_some_and(|s| s.get("recv_packets_unique") > (SENT - 100) as f64)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = r.stop().await;

    let tx = r.last_stats("feed-tx").unwrap();
    let rx = r.last_stats("feed-rx").unwrap();
    assert_eq!((tx.role.as_deref(), rx.role.as_deref()), (Some("tx"), Some("rx")));
    assert_eq!((tx.reconnections, rx.reconnections), (0, 0));
    assert!(tx.get("send_packets_unique") <= SENT as f64 && tx.get("send_packets") >= tx.get("send_packets_unique"), "{tx:?}");
    assert!(rx.get("recv_packets_unique") <= SENT as f64, "{rx:?}");
    assert_eq!(tx.get("send_bytes_unique"), tx.get("send_packets_unique") * 1360.0, "1316-byte payloads count 1360 bytes with headers");
    assert_eq!((tx.columns["recv_packets"], rx.columns["send_packets"]), (None, None));
    assert_eq!((tx.get("line_loss_pct"), rx.get("line_loss_pct")), (0.0, 0.0));
    assert_eq!(rx.get("tsbpd_delay_ms"), 120.0);
    assert!(tx.get("link_rtt_ms") > 0.0 && tx.get("link_max_bandwidth_mbps") == 1000.0, "{tx:?}");
    assert!(tx.sid.is_some() && rx.sid.is_some() && tx.sid != rx.sid);
    // Every stats row of a connection carries the same sid.
    assert!(r.stats_of("feed-rx").iter().filter(|s| s.connected == 1).all(|s| s.sid == rx.sid));
    assert_eq!(received.load(Ordering::Relaxed), SENT, "every datagram reached the receiver's UDP output");

    let messages = |s: &str, e: &str| r.events_of(s, e).iter().map(|e| e.message.clone()).collect::<Vec<_>>();
    assert_eq!(messages("feed-tx", "connected"), ["Accepted SRT target connection"]);
    assert_eq!(messages("feed-rx", "connected"), ["SRT source connected"]);
    let commands = [
        ("feed-tx", format!("'-s:100' '-pf:json' '-f' 'udp://127.0.0.1:{udp_in}' 'srt://:{srt_port}?mode=listener'")),
        ("feed-rx", format!("'-s:100' '-pf:json' '-f' 'srt://127.0.0.1:{srt_port}?mode=caller' 'udp://127.0.0.1:{udp_out}'")),
    ];
    for (s, command) in commands {
        let started = messages(s, "started");
        assert_eq!(started.len(), 1, "{started:?}");
        assert!(started[0].starts_with("started (pid ") && started[0].ends_with(&format!("): {} {command}", program())), "{started:?}");
        let exited = messages(s, "exited");
        assert_eq!(exited.len(), 1);
        assert!(exited[0].starts_with("stopped ("), "{exited:?}");
        // The last row says the session is stopped.
        assert_eq!(r.stats_of(s).last().unwrap().connected, 0);
    }
}

/// Forwards datagrams between a caller and `server`, dropping every `nth` in each direction.
async fn lossy_relay(listen: u16, server: u16, nth: u64) {
    let front = Arc::new(UdpSocket::bind(("127.0.0.1", listen)).await.unwrap());
    let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    back.connect(("127.0.0.1", server)).await.unwrap();
    let client = Arc::new(tokio::sync::Mutex::new(None));
    let (f, b, c) = (front.clone(), back.clone(), client.clone());
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        let mut n = 0u64;
        loop {
            // An ICMP "port unreachable" for an earlier send surfaces as a receive error on a
            // UDP socket; the relay must outlive it (the RX may call before the TX listens).
            let Ok((len, from)) = f.recv_from(&mut buf).await else {
                continue;
            };
            *c.lock().await = Some(from);
            n += 1;
            if !n.is_multiple_of(nth) {
                let _ = b.send(&buf[..len]).await;
            }
        }
    });
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        let mut n = 0u64;
        loop {
            let Ok(len) = back.recv(&mut buf).await else {
                continue;
            };
            n += 1;
            let to = *client.lock().await;
            if let (Some(to), true) = (to, !n.is_multiple_of(nth)) {
                let _ = front.send_to(&buf[..len], to).await;
            }
        }
    });
}

#[tokio::test]
async fn loss_on_the_path_shows_as_lost_and_retransmitted_packets() {
    require_program();
    let (udp_in, srt_port, relay, udp_out) = (free_udp_port(), free_udp_port(), free_udp_port(), free_udp_port());
    let _received = udp_sink(udp_out).await;
    lossy_relay(relay, srt_port, 20).await;
    let mut r = start(&pair_yaml(udp_in, srt_port, relay, udp_out));
    linked(&mut r).await;
    send_packets(udp_in, 2000).await;
    r.until("loss to be reported", Duration::from_secs(20), |r| {
        r.last_stats("feed-rx").is_some_and(|s| {
            s.get("recv_packets_lost") > 0.0 && s.get("recv_packets_retransmitted") > 0.0 && s.get("recv_packets") > 1500.0
        }) && r.last_stats("feed-tx").is_some_and(|s| s.get("send_packets_retransmitted") > 0.0)
    })
    .await;
    let r = r.stop().await;
    let rx = r.last_stats("feed-rx").unwrap();
    let expected = rx.get("recv_packets_lost") / rx.get("recv_packets") * 100.0;
    assert!(rx.get("line_loss_pct") > 0.0);
    assert!((rx.get("line_loss_pct") - expected).abs() < 1e-9, "{rx:?}");
    let tx = r.last_stats("feed-tx").unwrap();
    assert!(tx.get("send_packets") > tx.get("send_packets_unique"), "retransmissions are counted in send_packets: {tx:?}");
    assert!((tx.get("line_loss_pct") - tx.get("send_packets_lost") / tx.get("send_packets") * 100.0).abs() < 1e-9);
}

#[tokio::test]
async fn a_killed_receiver_is_restarted_and_both_ends_count_the_reconnection() {
    require_program();
    let (udp_in, srt_port, udp_out) = (free_udp_port(), free_udp_port(), free_udp_port());
    let _received = udp_sink(udp_out).await;
    let mut r = start(&pair_yaml(udp_in, srt_port, srt_port, udp_out));
    linked(&mut r).await;
    let stop = Arc::new(AtomicBool::new(false));
    let sender = send_until(udp_in, stop.clone());
    r.until("stats from the receiver", Duration::from_secs(20), |r| r.last_stats("feed-rx").is_some()).await;
    let started = r.events_of("feed-rx", "started")[0].message.clone();
    let pid: i32 = started
        .split("pid ")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {started}"));
    // SAFETY: signalling the receiver process this test's source started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);

    // The TX notices after SRT's peer idle timeout (~5 s); the supervisor restarts the RX, which
    // connects again.
    r.until("the reconnection on both ends", Duration::from_secs(40), |r| {
        r.events_of("feed-tx", "connected").iter().any(|e| e.reconnections == 1)
            && r.events_of("feed-rx", "connected").iter().any(|e| e.reconnections == 1)
            && r.stats_of("feed-tx").iter().any(|s| s.connected == 1 && s.reconnections == 1)
            && r.stats_of("feed-rx").iter().any(|s| s.connected == 1 && s.reconnections == 1)
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    sender.await.unwrap();
    let r = r.stop().await;

    let rx_events: Vec<_> = r.events.iter().filter(|e| e.session == "feed-rx").map(|e| e.event.as_str()).collect();
    assert_eq!(rx_events, ["started", "connected", "exited", "started", "connected", "exited"]);
    let killed = &r.events_of("feed-rx", "exited")[0].message;
    assert!(killed.starts_with("exited (signal: 9"), "{killed}");
    let tx_events: Vec<_> = r.events.iter().filter(|e| e.session == "feed-tx").map(|e| (e.event.as_str(), e.reconnections)).collect();
    // (At the stop the RX may go first, so the TX can log one more disconnect before it exits.)
    assert_eq!(tx_events[..4], [("started", 0), ("connected", 0), ("disconnected", 0), ("connected", 1)]);
    assert_eq!(tx_events.last(), Some(&("exited", 1)));
    assert_eq!(r.events_of("feed-tx", "disconnected")[0].message, "SRT target disconnected");
    // The new connection is a new socket.
    let sids: std::collections::BTreeSet<_> = r.stats_of("feed-tx").iter().filter(|s| s.connected == 1).map(|s| s.sid).collect();
    assert_eq!(sids.len(), 2, "{sids:?}");
}
