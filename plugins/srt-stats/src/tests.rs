use datafusion::arrow::array::{Array, Float64Array, Int64Array, StringArray};
use datafusion::arrow::record_batch::RecordBatch;

use super::*;
use crate::parse::{parse_line, parse_timepoint, Line, Side, Stat};
use crate::session::{connected, Role, SessionTracker};

const RX_JSON: &str = include_str!("../tests/fixtures/rx-caller.jsonl");
const TX_CSV: &str = include_str!("../tests/fixtures/tx-listener.csv");

fn int(b: &RecordBatch, col: &str, row: usize) -> Option<i64> {
    let a = b.column_by_name(col).unwrap().as_any().downcast_ref::<Int64Array>().unwrap();
    (!a.is_null(row)).then(|| a.value(row))
}
fn float(b: &RecordBatch, col: &str, row: usize) -> f64 {
    b.column_by_name(col).unwrap().as_any().downcast_ref::<Float64Array>().unwrap().value(row)
}
fn text(b: &RecordBatch, col: &str, row: usize) -> String {
    b.column_by_name(col).unwrap().as_any().downcast_ref::<StringArray>().unwrap().value(row).to_string()
}

#[test]
fn a_real_json_line_parses_to_every_field() {
    let Line::Stats(s) = parse_line(RX_JSON.lines().next().unwrap()).unwrap() else { panic!("not stats") };
    assert_eq!(s.sid, 150975032);
    assert_eq!(s.timepoint_us, Some(parse_timepoint("2026-11-23T05:35:57.795063+0000").unwrap()));
    assert_eq!(s.timepoint_us, Some(1_795_412_157_795_063));
    assert_eq!(s.get(Stat::Time), 1238.0);
    assert_eq!(s.get(Stat::WindowFlow), 8192.0);
    assert_eq!(s.get(Stat::LinkRtt), 0.1);
    assert_eq!(s.get(Stat::LinkMaxBandwidth), 1000.0);
    assert_eq!(s.get(Stat::SendByteAvailBuf), 12288000.0);
    assert_eq!(s.get(Stat::SendPeriod), 12.0);
    assert_eq!(s.get(Stat::RecvPackets), 139.0);
    assert_eq!(s.get(Stat::RecvBytes), 189040.0);
    assert_eq!(s.get(Stat::RecvMsBuf), 40.0);
    assert_eq!(s.get(Stat::RecvMbitRate), 1.22144);
    assert_eq!(s.get(Stat::RecvTsbPdDelay), 120.0);
}

#[test]
fn csv_rows_read_by_position_match_the_same_fields() {
    let mut lines = TX_CSV.lines();
    assert_eq!(parse_line(lines.next().unwrap()).unwrap(), Line::CsvHeader);
    let Line::Stats(s) = parse_line(lines.next().unwrap()).unwrap() else { panic!("not stats") };
    assert_eq!(s.sid, 17576414);
    assert_eq!(s.timepoint_us, parse_timepoint("2026-11-23T05:35:57.674465+0000"));
    assert_eq!(s.get(Stat::Time), 1117.0);
    assert_eq!(s.get(Stat::WindowFlight), 3.0);
    assert_eq!(s.get(Stat::LinkRtt), 0.035);
    assert_eq!(s.get(Stat::LinkBandwidth), 11.592);
    assert_eq!(s.get(Stat::SendPackets), 96.0);
    assert_eq!(s.get(Stat::SendBytes), 130560.0);
    assert_eq!(s.get(Stat::SendMbitRate), 0.934973);
    assert_eq!(s.get(Stat::RecvByteAvailBuf), 12286500.0);
    assert_eq!(s.get(Stat::RecvTsbPdDelay), 120.0);
}

#[test]
fn timepoints_are_local_time_with_an_offset() {
    let utc = parse_timepoint("2026-11-22T10:51:57.202401+0000").unwrap();
    assert_eq!(parse_timepoint("2026-11-22T11:51:57.202401+0100"), Some(utc));
    assert_eq!(parse_timepoint("2026-11-22T05:21:57.202401-0530"), Some(utc));
    assert_eq!(parse_timepoint("2026-11-22T10:51:57.202401Z"), Some(utc));
    assert_eq!(chrono::DateTime::from_timestamp_micros(utc).unwrap().to_rfc3339(), "2026-11-22T10:51:57.202401+00:00");
    assert_eq!(parse_timepoint("2026-13-22T10:51:57.202401+0000"), None);
    assert_eq!(parse_timepoint("yesterday"), None);
}

#[test]
fn all_connect_and_disconnect_forms_and_the_noise() {
    assert_eq!(parse_line("Accepted SRT target connection").unwrap(), Line::Connected(Side::Target));
    assert_eq!(parse_line("SRT target connected").unwrap(), Line::Connected(Side::Target));
    assert_eq!(parse_line("SRT source connected\r\n").unwrap(), Line::Connected(Side::Source));
    assert_eq!(parse_line("Accepted SRT source connection").unwrap(), Line::Connected(Side::Source));
    assert_eq!(parse_line("SRT target disconnected").unwrap(), Line::Disconnected(Side::Target));
    assert_eq!(parse_line("SRT source disconnected").unwrap(), Line::Disconnected(Side::Source));
    assert_eq!(
        parse_line("Media path: 'udp://127.0.0.1:15000' --> 'srt://:19000?mode=listener'").unwrap(),
        Line::MediaPath { srt_input: false, srt_output: true }
    );
    for noise in [
        "1316 bytes lost, 263200 bytes sent, 264516 bytes received",
        "10:51:57.123456/SRT:RcvQ:w1!W:SRT.qr: @1: RCV-DROPPED",
        // srt-live-transmit 1.5.1's main thread logs under its own (cut) name.
        "10:51:45.410554/srt-live-transm!W:SRT.ac: @720476295: processConnectRequest: rsp(REJECT): 1002 - peer rejected",
        "10:51:46.001122/srt-live-transm!E:SRT.cn: @720476295: connection timed out",
        "{\"bandwidth\":12.3}",
        "",
        "  ",
    ] {
        assert_eq!(parse_line(noise).unwrap(), Line::Ignored, "{noise}");
    }
}

/// A 60 KB line of nested arrays (from a supervised process or a container log) used to overflow
/// the stack in the recursive value skipper and abort the process.
#[test]
fn deeply_nested_json_is_an_error_not_a_stack_overflow() {
    let nested =
        format!("{{\"sid\":1,\"timepoint\":\"2026-11-22T10:00:00.000000+0000\",\"x\":{}{}}}", "[".repeat(30_000), "]".repeat(30_000));
    assert_eq!(parse_line(&nested).unwrap_err().0, "malformed JSON statistics line at byte 91: nested deeper than 32 levels");
    let shallow = format!("{{\"sid\":1,\"timepoint\":\"2026-11-22T10:00:00.000000+0000\",\"x\":{}{}}}", "[".repeat(20), "]".repeat(20));
    assert!(parse_line(&shallow).is_ok(), "20 levels are fine");
}

#[test]
fn garbage_and_broken_stats_lines_are_errors_that_say_what() {
    assert_eq!(parse_line("hello world").unwrap_err().0, "not a statistics line or a known message: `hello world`");
    // A timestamped line that is not the SRT library's log format stays an error.
    assert_eq!(
        parse_line("10:51:45.410554/srt-live-transm: something else").unwrap_err().0,
        "not a statistics line or a known message: `10:51:45.410554/srt-live-transm: something else`"
    );
    assert_eq!(parse_line("{\"time\":5}").unwrap_err().0, "JSON statistics line without `sid`");
    assert_eq!(
        parse_line("{\"sid\":1,\"link\":{\"rtt\":}}").unwrap_err().0,
        "malformed JSON statistics line at byte 23: expected a number"
    );
    assert_eq!(
        parse_line("{\"sid\":1,\"link\":{\"rtt\":1}").unwrap_err().0,
        "malformed JSON statistics line at byte 25: expected `,` or `}`"
    );
    assert_eq!(parse_line("{\"sid\":1} trailing").unwrap_err().0, "malformed JSON statistics line at byte 10: text after the JSON object");
    assert_eq!(
        parse_line("2026-11-23T05:35:57.674465+0000,1117,17576414,1117,8149").unwrap_err().0,
        "CSV statistics row has 5 columns, expected 40"
    );
    assert_eq!(
        parse_line("2026-11-23T05:35:57.674465+0000,1117,abc,1117").unwrap_err().0,
        "CSV statistics row: SocketID `abc` is not a number"
    );
}

#[test]
fn json_in_any_key_order_with_unknown_keys_and_escapes() {
    let line = r#"{ "recv": {"packets": 10, "packetsLost": 1, "extra": [1, {"a": "b\"}"}], "ok": true}, "sid": -3, "note": null, "link": {"rtt": 1.5e1} }"#;
    let Line::Stats(s) = parse_line(line).unwrap() else { panic!() };
    assert_eq!(
        (s.sid, s.get(Stat::RecvPackets), s.get(Stat::RecvPacketsLost), s.get(Stat::LinkRtt), s.timepoint_us),
        (-3, 10.0, 1.0, 15.0, None)
    );
}

#[test]
fn passphrases_are_redacted() {
    assert_eq!(
        parse::redact_passphrase("Media path: 'udp://:5000' --> 'srt://h:9000?mode=caller&passphrase=secret-words&pbkeylen=16'"),
        "Media path: 'udp://:5000' --> 'srt://h:9000?mode=caller&passphrase=***&pbkeylen=16'"
    );
}

fn stats_json(sid: i64, send_packets: u64, send_lost: u64, recv_packets: u64, recv_lost: u64) -> String {
    format!(
        r#"{{"sid":{sid},"timepoint":"2026-11-22T10:00:00.000000+0000","time":1,"window":{{"flow":8192,"congestion":8192,"flight":4}},"link":{{"rtt":0.5,"bandwidth":100,"maxBandwidth":1000}},"send":{{"packets":{send_packets},"packetsUnique":{send_packets},"packetsLost":{send_lost},"packetsDropped":0,"packetsRetransmitted":{send_lost},"packetsFilterExtra":0,"bytes":{},"bytesUnique":0,"bytesDropped":0,"byteAvailBuf":0,"msBuf":7,"mbitRate":3.5,"sendPeriod":10}},"recv":{{"packets":{recv_packets},"packetsUnique":{recv_packets},"packetsLost":{recv_lost},"packetsDropped":0,"packetsRetransmitted":0,"packetsBelated":0,"packetsFilterExtra":0,"packetsFilterSupply":0,"packetsFilterLoss":0,"bytes":0,"bytesUnique":0,"bytesLost":0,"bytesDropped":0,"byteAvailBuf":0,"msBuf":9,"mbitRate":2.5,"msTsbPdDelay":120}}}}"#,
        send_packets * 1360
    )
}

#[test]
fn connected_and_reconnections_follow_the_management_api_rules() {
    let mut t = SessionTracker::new("feed", Some(Role::Tx), true);
    let mut out = Emitted::default();
    t.started(1, "started".into(), &mut out);
    assert_eq!(t.connected(), connected::WAITING);
    t.line("Accepted SRT target connection", 2, &mut out).unwrap();
    t.line(&stats_json(100, 1000, 25, 0, 0), 3, &mut out).unwrap();
    assert_eq!((t.connected(), t.reconnections()), (connected::CONNECTED, 0));
    t.line("SRT target disconnected", 4, &mut out).unwrap();
    assert_eq!(t.connected(), connected::WAITING);
    t.line("Accepted SRT target connection", 5, &mut out).unwrap();
    t.line(&stats_json(99, 10, 0, 0, 0), 6, &mut out).unwrap();
    assert_eq!((t.connected(), t.reconnections()), (connected::CONNECTED, 1));
    t.exited(7, "exited (signal: 9)".into(), &mut out);
    assert_eq!(t.connected(), connected::STOPPED);

    let events: Vec<_> = out.events.iter().map(|e| (e.ts_us, e.event, e.sid, e.reconnections, e.message.as_str())).collect();
    assert_eq!(
        events,
        [
            (1, "started", None, 0, "started"),
            (2, "connected", None, 0, "Accepted SRT target connection"),
            (4, "disconnected", Some(100), 0, "SRT target disconnected"),
            (5, "connected", None, 1, "Accepted SRT target connection"),
            (7, "exited", Some(99), 1, "exited (signal: 9)"),
        ]
    );
    let batch = rows::stats_batch(&out.stats);
    // stats, disconnect status row, stats, exit status row
    assert_eq!(batch.num_rows(), 4);
    assert_eq!((0..4).map(|r| int(&batch, "connected", r).unwrap()).collect::<Vec<_>>(), [1, 2, 1, 0]);
    assert_eq!((0..4).map(|r| int(&batch, "sid", r).unwrap()).collect::<Vec<_>>(), [100, 100, 99, 99]);
    assert_eq!((0..4).map(|r| int(&batch, "reconnections", r).unwrap()).collect::<Vec<_>>(), [0, 0, 1, 1]);
    assert_eq!(text(&batch, "role", 0), "tx");
    assert_eq!(int(&batch, "send_packets", 0), Some(1000));
    assert_eq!(int(&batch, "send_packets_lost", 0), Some(25));
    assert_eq!(int(&batch, "recv_packets", 0), None, "a sender's rows leave the receiver columns null");
    assert_eq!(float(&batch, "line_loss_pct", 0), 2.5);
    assert_eq!((float(&batch, "mbit_rate", 0), int(&batch, "ms_buf", 0), int(&batch, "flight_pkts", 0)), (3.5, Some(7), Some(4)));
    assert_eq!(
        (float(&batch, "link_rtt_ms", 0), float(&batch, "link_bandwidth_mbps", 0), float(&batch, "link_max_bandwidth_mbps", 0)),
        (0.5, 100.0, 1000.0)
    );
    // The disconnect row keeps the counters, zeroes link and rate fields.
    assert_eq!(int(&batch, "send_packets", 1), Some(1000));
    assert_eq!(
        (
            float(&batch, "link_rtt_ms", 1),
            float(&batch, "link_bandwidth_mbps", 1),
            float(&batch, "link_max_bandwidth_mbps", 1),
            float(&batch, "mbit_rate", 1)
        ),
        (0.0, 0.0, 0.0, 0.0)
    );
    assert_eq!(float(&batch, "line_loss_pct", 2), 0.0);
    let ev = rows::events_batch(&out.events);
    assert_eq!(text(&ev, "role", 0), "tx");
}

#[test]
fn a_new_sid_without_a_connect_message_is_a_reconnect_and_absorbs_the_late_message() {
    let mut t = SessionTracker::new("rx1", None, true);
    let mut out = Emitted::default();
    t.started(0, "started".into(), &mut out);
    t.line("SRT source connected", 1, &mut out).unwrap();
    t.line(&stats_json(7, 0, 0, 200, 4), 2, &mut out).unwrap();
    // The sender went away and came back; the stats line with the new sid wins the race.
    t.line(&stats_json(6, 0, 0, 50, 0), 3_000_000, &mut out).unwrap();
    assert_eq!(t.reconnections(), 1);
    t.line("SRT source connected", 3_100_000, &mut out).unwrap();
    assert_eq!(t.reconnections(), 1, "the late message is the same reconnect");
    // Much later, a real reconnect.
    t.line("SRT source connected", 60_000_000, &mut out).unwrap();
    t.line(&stats_json(5, 0, 0, 10, 0), 60_000_001, &mut out).unwrap();
    assert_eq!(t.reconnections(), 2);
    assert_eq!(t.role(), Some(Role::Rx), "learnt from the connect message");
    let connects: Vec<_> = out.events.iter().filter(|e| e.event == "connected").map(|e| (e.message.as_str(), e.reconnections)).collect();
    assert_eq!(connects, [("SRT source connected", 0), ("new SRT socket id 6", 1), ("SRT source connected", 2)]);
    let batch = rows::stats_batch(&out.stats);
    assert_eq!(float(&batch, "line_loss_pct", 0), 2.0);
    assert_eq!(int(&batch, "send_packets", 0), None);
    assert_eq!(int(&batch, "recv_packets", 1), Some(50));
    assert_eq!(float(&batch, "mbit_rate", 0), 2.5);
    assert_eq!(int(&batch, "ms_buf", 0), Some(9));
}

#[test]
fn interval_lines_are_summed_per_connection_and_reset_on_a_new_sid() {
    let mut t = SessionTracker::new("tx1", Some(Role::Tx), false);
    let mut out = Emitted::default();
    t.line(&stats_json(1, 100, 0, 0, 0), 1, &mut out).unwrap();
    t.line(&stats_json(1, 100, 4, 0, 0), 2, &mut out).unwrap();
    t.line(&stats_json(1, 50, 1, 0, 0), 3, &mut out).unwrap();
    t.line(&stats_json(2, 10, 0, 0, 0), 4, &mut out).unwrap();
    let batch = rows::stats_batch(&out.stats);
    assert_eq!((0..4).map(|r| int(&batch, "send_packets", r).unwrap()).collect::<Vec<_>>(), [100, 200, 250, 10]);
    assert_eq!((0..4).map(|r| int(&batch, "send_packets_lost", r).unwrap()).collect::<Vec<_>>(), [0, 4, 5, 0]);
    assert_eq!(float(&batch, "line_loss_pct", 2), 2.0);
    // Instantaneous fields are not summed.
    assert_eq!(int(&batch, "ms_buf", 2), Some(7));
    assert_eq!(float(&batch, "mbit_rate", 2), 3.5);
}

#[test]
fn garbage_between_good_lines_is_an_error_and_loses_nothing() {
    let mut t = SessionTracker::new("rx", Some(Role::Rx), true);
    let mut out = Emitted::default();
    let mut errors = 0;
    for line in RX_JSON.lines().take(3).chain(["{\"sid\": broken", "random words"]).chain(RX_JSON.lines().skip(3)) {
        if t.line(line, 0, &mut out).is_err() {
            errors += 1;
        }
    }
    assert_eq!(errors, 2);
    assert_eq!(out.stats.len(), RX_JSON.lines().count());
}

#[test]
fn commands_carry_the_management_api_parameters() {
    let config = ComponentConfig::from_yaml(
        "srt",
        r#"
mode: sessions
sessions:
  - {name: feed, role: tx, mode: caller, host: 10.0.0.2, listen_port: 9000, udp_in: "239.1.1.1:5000", latency_ms: 700,
     srt_bw_kbps: 12000, input_bw_kbps: 4000, overhead_pct: 25, passphrase: "0123456789abcdef", pbkeylen: 16,
     packetfilter: {cols: 10, rows: 5, layout: staircase, arq: always}}
  - {name: back, role: rx, mode: listener, listen_port: 9001, udp_out: "127.0.0.1:5001", ttl: 4, tlpktdrop: true}
"#,
    );
    let SrtStatsConfig::Sessions(cfg) = SrtStatsConfig::from_component(&config).unwrap() else { panic!("sessions mode") };
    assert_eq!(
        cfg.sessions[0].args(100, true),
        [
            "-s:100",
            "-pf:json",
            "-f",
            "udp://239.1.1.1:5000?rcvbuf=1000000",
            "srt://10.0.0.2:9000?mode=caller&latency=700&maxbw=1500000&inputbw=500000&oheadbw=25&passphrase=0123456789abcdef&pbkeylen=16&packetfilter=fec,cols:10,rows:5,layout:staircase,arq:always"
        ]
    );
    assert_eq!(
        cfg.sessions[1].args(50, false),
        ["-s:50", "-pf:json", "srt://:9001?mode=listener&tlpktdrop=true", "udp://127.0.0.1:5001?ttl=4"]
    );
    let shown = cfg.sessions[0].display_command("srt-live-transmit", 100, true);
    assert!(!shown.contains("0123456789abcdef") && shown.contains("passphrase=***"), "{shown}");
    assert!(!format!("{cfg:?}").contains("0123456789abcdef"));
}

fn build_error(yaml: &str) -> String {
    match SrtStatsPlugin.build(&ComponentConfig::from_yaml("srt", yaml)) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("accepted: {yaml}"),
    }
}

#[test]
fn invalid_configs_name_the_option() {
    let base = "mode: sessions\nsessions:\n  - {name: a, role: tx, mode: caller, host: h, listen_port: 9000, udp_in: ':5000'";
    assert_eq!(build_error(&format!("{base}, passphrase: short}}")), "sessions[0].passphrase: must be 10 to 79 characters long (it has 5)");
    assert_eq!(
        build_error(&format!("{base}, pbkeylen: 20, passphrase: 0123456789}}")),
        "sessions[0].pbkeylen: must be 16, 24 or 32, got 20"
    );
    assert_eq!(build_error(&format!("{base}, overhead_pct: 2}}")), "sessions[0].overhead_pct: must be 5 to 100, got 2");
    assert_eq!(
        build_error(&format!("{base}, packetfilter: {{cols: 4, layout: diagonal}}}}")),
        "sessions[0].packetfilter.layout: must be `even` or `staircase`, got `diagonal`"
    );
    assert_eq!(
        build_error("mode: sessions\nsessions: [{name: a, role: rx, mode: caller, host: h, listen_port: 9000}]"),
        "sessions[0].udp_out: a receiver (`role: rx`) needs `udp_out`, e.g. `127.0.0.1:5001`"
    );
    assert_eq!(
        build_error("mode: sessions\nsessions: [{name: a, role: tx, mode: caller, listen_port: 9000, udp_in: ':1'}]"),
        "sessions[0].host: `mode: caller` needs the peer's host"
    );
    assert_eq!(
        build_error(&format!("{base}}}\n  - {{name: a, role: tx, mode: listener, listen_port: 9001, udp_in: ':1'}}")),
        "sessions: session name `a` is used twice"
    );
    assert_eq!(build_error("mode: sessions"), "sessions: `mode: sessions` needs at least one session");
    assert_eq!(build_error("mode: srt_api"), "srt_api: `mode: srt_api` needs `srt_api: {url, username, password}`");
    assert_eq!(
        build_error("mode: srt_api\nsrt_api: {url: srt-api:5000, username: u, password: p}"),
        "srt_api.url: expected an http:// or https:// URL, got `srt-api:5000`"
    );
    assert!(build_error("mode: udp").starts_with("mode: unknown variant `udp`, expected one of `sessions`, `docker`, `srt_api`"));
    let both = build_error("mode: sessions\nsessions: [{name: a, role: both, mode: caller, host: h, listen_port: 9000}]");
    assert!(both.starts_with("sessions[0].role: unknown variant `both`, expected `tx` or `rx`"), "{both}");
    // Each mode takes its own options only.
    assert_eq!(
        build_error("mode: srt_api\nsrt_api: {url: 'http://x', username: u, password: p}\nprogram: /bin/srt"),
        "program: unknown field `program`, expected `srt_api` or `batch_wait`"
    );
    assert_eq!(
        build_error("mode: docker\nsessions: []"),
        "sessions: unknown field `sessions`, expected one of `docker`, `cumulative`, `batch_wait`"
    );
    assert_eq!(
        build_error("mode: docker\ndocker: {labels: []}"),
        "docker.labels: name at least one label, or every container on the host would be followed"
    );
    assert_eq!(build_error("mode: docker\ndocker: {discover_interval: often}").split(':').next().unwrap(), "docker.discover_interval");
}

/// An `srt_api` poller for `url` with user `u`, password `p` and 1 s interval and timeout.
fn api_poller(url: &str) -> api::ApiPoller {
    let cfg = config::ApiConfig {
        url: url.into(),
        username: "u".into(),
        password: tributary_sdk::Secret::new("p"),
        interval: tributary_sdk::Period(Duration::from_secs(1)),
        timeout: tributary_sdk::Period(Duration::from_secs(1)),
    };
    api::ApiPoller::new("srt", cfg).unwrap()
}

/// reqwest's own message ("error sending request for url …") hides why: the cause is appended.
#[tokio::test]
async fn an_unreachable_api_names_the_url_and_the_cause() {
    let port = tributary_testkit::free_port();
    let mut poller = api_poller(&format!("http://127.0.0.1:{port}"));
    let e = poller.poll(Role::Tx).await.unwrap_err().to_string();
    assert!(e.starts_with(&format!("POST http://127.0.0.1:{port}/v1/login: error sending request")), "{e}");
    assert!(e.contains("Connection refused"), "{e}");
}

#[test]
fn api_lists_become_rows_and_state_changes_events() {
    let mut poller = api_poller("http://x");
    let tx = |connected: i64, reconnections: i64| {
        serde_json::json!([{"Id": 1, "ServiceName": "feed", "LinkRtt": 0.4, "LinkBandwidth": 90.5, "LinkMaxBandwidth": 12.0,
            "SendPackets": 4095, "SendPacketsUnique": 3990, "SendPacketsLost": 105, "SendPacketsRetransmitted": 105, "SendBytes": "5569200",
            "SendMbitRate": 3.9, "LineLoss": 2.5641, "Connected": connected, "Reconnections": reconnections}])
    };
    let mut out = Emitted::default();
    poller.rows(Role::Tx, tx(1, 0).as_array().unwrap(), 10, &mut out);
    poller.rows(Role::Tx, tx(2, 0).as_array().unwrap(), 20, &mut out);
    poller.rows(Role::Tx, tx(1, 1).as_array().unwrap(), 30, &mut out);
    poller.rows(Role::Tx, tx(1, 2).as_array().unwrap(), 40, &mut out);
    let b = rows::stats_batch(&out.stats);
    assert_eq!(b.num_rows(), 4);
    assert_eq!((text(&b, "session", 0), text(&b, "role", 0), int(&b, "sid", 0)), ("feed".into(), "tx".into(), None));
    assert_eq!(
        (int(&b, "send_packets", 0), int(&b, "send_packets_lost", 0), int(&b, "send_bytes", 0)),
        (Some(4095), Some(105), Some(5569200))
    );
    assert_eq!((float(&b, "line_loss_pct", 0), float(&b, "mbit_rate", 0), float(&b, "link_max_bandwidth_mbps", 0)), (2.5641, 3.9, 12.0));
    assert_eq!((int(&b, "send_packets_dropped", 0), int(&b, "ms_buf", 0), int(&b, "recv_packets", 0)), (None, None, None));
    let events: Vec<_> = out.events.iter().map(|e| (e.ts_us, e.event, e.reconnections)).collect();
    assert_eq!(events, [(20, "disconnected", 0), (30, "connected", 1), (40, "connected", 2)]);
}
