//! Row generators, each producing its rows through the real source's code: probe rows as
//! [`ProbeRow`]s (phase timings included), SRT rows as the stats source's [`StatsRow`]s, Video Mesh
//! utilization as the Webex simulator's API bodies parsed by the `webex_mesh` parser, badge events
//! as the badge API's payloads decoded by the `badge_events` decoder. Values follow the domain
//! references: probe latencies around an SLA with occasional timeouts and 5xx, Video Mesh CPU with
//! a daily curve, SRT counters that only grow, badge events on the API's channels with its games.

use std::collections::VecDeque;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tributary_badge_events::{badge_schema, Message};
use tributary_site_probe::{probe_schema, rows_to_batch, ProbeRow};
use tributary_srt_stats::parse::{Stat, STAT_COUNT};
use tributary_srt_stats::rows::{stats_batch, stats_schema};
use tributary_srt_stats::session::{Role, StatsRow};
use tributary_webex_mesh::datasets::{self, Ctx, Dataset};
use tributary_webex_mesh::simulator::{bodies, Model, Shapes};

use super::DemoKind;

/// The output schema of each kind: the real source's.
pub fn schema_for(kind: DemoKind) -> SchemaRef {
    match kind {
        DemoKind::Probes => probe_schema(),
        DemoKind::MeshUtilization => Dataset::Utilization.schema(),
        DemoKind::Srt => stats_schema(),
        DemoKind::Badges => badge_schema(),
    }
}

const PROBE_TARGETS: &[(&str, &str, &str, i64, f64)] = &[
    // name, site, endpoint, sla_ms, typical ms
    ("World Clock", "http://worldclockapi.com", "/api/json/utc/now", 500, 180.0),
    ("Japan Stock Exchange", "https://www.jpx.co.jp", "/", 2500, 900.0),
    ("aiven", "https://aiven.io", "/", 1000, 340.0),
    ("status", "http://127.0.0.1:8080", "/health", 200, 12.0),
    ("billing", "https://billing.example.com", "/api/v1/ping", 800, 420.0),
];

const GAMES: &[(&str, &str)] = &[("BO", "Breakout"), ("LA", "Labyrinth"), ("RO", "Asteroids"), ("TT", "Tappytime")];
const HANDLES: &[&str] = &["pixelpanda", "0xbadge", "tappyqueen", "labrat", "asteroidz", "breakfast"];

struct SrtSession {
    name: &'static str,
    role: Role,
    sid: i64,
    packets: i64,
    lost: i64,
    retransmitted: i64,
    reconnections: i64,
    connected: bool,
}

/// Generates batches of one kind from a seeded RNG.
pub struct Generator {
    kind: DemoKind,
    rng: StdRng,
    next: usize,
    srt: Vec<SrtSession>,
    mesh: Model,
    /// Utilization rows of the latest bucket not sent yet.
    mesh_rows: VecDeque<datasets::Row>,
}

impl Generator {
    pub fn new(kind: DemoKind, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let srt = [("studio-a", Role::Tx), ("studio-a", Role::Rx), ("field-cam", Role::Tx), ("field-cam", Role::Rx)]
            .into_iter()
            .map(|(name, role)| SrtSession {
                name,
                role,
                sid: rng.random_range(100_000_000..999_999_999),
                packets: 0,
                lost: 0,
                retransmitted: 0,
                reconnections: 0,
                connected: true,
            })
            .collect();
        Generator { kind, rng, next: 0, srt, mesh: Model::new(seed, "Demo Org"), mesh_rows: VecDeque::new() }
    }

    /// `n` rows stamped over the 100 ms before `now` (utilization rows carry their bucket's time).
    pub fn batch(&mut self, n: usize, now: DateTime<Utc>) -> RecordBatch {
        let base = now.timestamp_micros();
        let ts: Vec<i64> = (0..n).map(|i| base - ((n - 1 - i) as i64 * 100_000 / n.max(1) as i64)).collect();
        match self.kind {
            DemoKind::Probes => rows_to_batch(&self.probes(&ts, now)),
            DemoKind::MeshUtilization => self.mesh(n, now),
            DemoKind::Srt => stats_batch(&self.srt(&ts)),
            DemoKind::Badges => {
                let (rows, undecodable) = tributary_badge_events::to_batch(&self.badges(&ts));
                debug_assert!(undecodable.is_empty(), "the demo's badge payloads decode: {undecodable:?}");
                rows
            }
        }
    }

    fn round_robin(&mut self, len: usize) -> usize {
        let i = self.next % len;
        self.next += 1;
        i
    }

    fn probes(&mut self, ts: &[i64], now: DateTime<Utc>) -> Vec<ProbeRow> {
        let mut rows = Vec::with_capacity(ts.len());
        for &ts_us in ts {
            let (t_name, t_site, t_endpoint, t_sla, typical) = PROBE_TARGETS[self.round_robin(PROBE_TARGETS.len())];
            let roll: f64 = self.rng.random();
            // Log-normal-ish latency: mostly near typical, with a long tail past the SLA.
            let ms = (typical * (0.6 + self.rng.random::<f64>() * 0.8) * if roll > 0.9 { 3.0 } else { 1.0 }) as i64;
            let (code, ms, error_kind, error): (i64, i64, Option<&'static str>, Option<String>) = if roll > 0.985 {
                (0, t_sla, Some("timeout"), Some(format!("timeout after {t_sla} ms waiting for response headers")))
            } else if roll > 0.97 {
                (503, ms, Some("http_status"), Some("unexpected status 503 Service Unavailable".into()))
            } else {
                (200, ms, None, None)
            };
            let answered = code != 0;
            let https = t_site.starts_with("https");
            // Phases of the time to headers: DNS, TCP connect, TLS, then the server's first byte.
            let dns = 1.0 + self.rng.random::<f64>() * 20.0;
            let connect = ms as f64 * 0.1 + self.rng.random::<f64>() * 5.0;
            let tls = https.then_some(ms as f64 * 0.2);
            let ok = error.is_none();
            rows.push(ProbeRow {
                ts_us,
                name: t_name.into(),
                site: t_site.into(),
                endpoint: t_endpoint.into(),
                url: format!("{t_site}{t_endpoint}"),
                status_code: code,
                response_time_ms: ms,
                total_time_ms: ms + if answered { self.rng.random_range(1..40) } else { 0 },
                dns_ms: Some((dns * 100.0).round() / 100.0),
                connect_ms: answered.then_some((connect * 100.0).round() / 100.0),
                tls_ms: tls.filter(|_| answered),
                ttfb_ms: answered.then(|| ms as f64 - dns - connect - tls.unwrap_or(0.0)).map(|v| (v.max(0.5) * 100.0).round() / 100.0),
                sla_ms: t_sla,
                in_sla: ms <= t_sla && answered,
                success: ok,
                value: ok.then(|| match t_name {
                    "World Clock" => now.format("%Y-%m-%dT%H:%MZ").to_string(),
                    "Japan Stock Exchange" => "Japan Exchange Group".to_string(),
                    "aiven" => "Freedom to build awesome applications".to_string(),
                    _ => "ok".to_string(),
                }),
                error_kind,
                error,
                tls_cert_expiry_days: https.then_some(61.5),
                body_bytes: answered.then(|| self.rng.random_range(80..40_000)),
                redirects: 0,
            });
        }
        rows
    }

    /// What the `webex_mesh` source would read for the latest 10-minute bucket from `tributary
    /// simulate webex-mesh` (the same model and bodies), one cluster's row after another.
    fn mesh(&mut self, n: usize, now: DateTime<Utc>) -> RecordBatch {
        let mut rows = Vec::with_capacity(n);
        while rows.len() < n {
            if self.mesh_rows.is_empty() {
                self.mesh_rows = self.latest_utilization(now).into();
            }
            match self.mesh_rows.pop_front() {
                Some(row) => rows.push(row),
                None => break,
            }
        }
        datasets::to_batch(Dataset::Utilization.output(), &rows).expect("the simulator's utilization rows fit their schema")
    }

    fn latest_utilization(&self, now: DateTime<Utc>) -> Vec<datasets::Row> {
        let body = bodies::utilization(&self.mesh, Shapes::Spec, now - Duration::minutes(10), now);
        let poll_ts = now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let ctx = Ctx { org_id: &self.mesh.org.id, poll_ts: &poll_ts, trigger_query: "All" };
        datasets::rows(Dataset::Utilization, &body, &ctx).map(|parsed| parsed.rows).unwrap_or_default()
    }

    fn srt(&mut self, ts: &[i64]) -> Vec<StatsRow> {
        let mut rows = Vec::with_capacity(ts.len());
        for &ts_us in ts {
            let i = self.round_robin(self.srt.len());
            let drop_now = self.rng.random_bool(0.002);
            let s = &mut self.srt[i];
            if drop_now && s.connected {
                s.connected = false;
            } else if !s.connected {
                s.connected = true;
                s.reconnections += 1;
                s.sid += 1;
            }
            let up = s.connected;
            let sent = if up { 430 + (i as i64 * 17) } else { 0 };
            let new_lost = if up && s.role == Role::Rx { (sent as f64 * 0.004 * (1.0 + (s.packets % 7) as f64)) as i64 / 3 } else { 0 };
            s.packets += sent;
            s.lost += new_lost;
            s.retransmitted += new_lost + new_lost / 4;
            // Stats srt-live-transmit did not report stay NaN: null columns, as from a real line.
            let mut values = [f64::NAN; STAT_COUNT];
            let mut set = |stat: Stat, v: f64| values[stat as usize] = v;
            set(Stat::LinkRtt, if up { 18.0 + (i as f64) * 6.0 } else { 0.0 });
            set(Stat::LinkBandwidth, if up { 940.0 } else { 0.0 });
            let rate = if up { 4.8 + (sent % 5) as f64 * 0.05 } else { 0.0 };
            let ms_buf = if up { 120.0 } else { 0.0 };
            match s.role {
                Role::Tx => {
                    set(Stat::SendPackets, s.packets as f64);
                    set(Stat::SendPacketsLost, s.lost as f64);
                    set(Stat::SendPacketsRetransmitted, s.retransmitted as f64);
                    set(Stat::SendBytes, (s.packets * 1316) as f64);
                    set(Stat::SendMbitRate, rate);
                    set(Stat::SendMsBuf, ms_buf);
                }
                Role::Rx => {
                    set(Stat::RecvPackets, s.packets as f64);
                    set(Stat::RecvPacketsLost, s.lost as f64);
                    set(Stat::RecvPacketsRetransmitted, s.retransmitted as f64);
                    set(Stat::RecvBytes, (s.packets * 1316) as f64);
                    set(Stat::RecvMbitRate, rate);
                    set(Stat::RecvMsBuf, ms_buf);
                    set(Stat::RecvTsbPdDelay, 120.0);
                }
            }
            rows.push(StatsRow {
                ts_us,
                session: Arc::from(s.name),
                role: Some(s.role),
                sid: Some(s.sid),
                connected: i64::from(up),
                reconnections: s.reconnections,
                values,
                line_loss_pct: if s.packets == 0 { 0.0 } else { s.lost as f64 / s.packets as f64 * 100.0 },
            });
        }
        rows
    }

    /// Messages as the badge API publishes them, on its channels.
    fn badges(&mut self, ts: &[i64]) -> Vec<Message> {
        let mut out = Vec::with_capacity(ts.len());
        for &ts_us in ts {
            let user = self.rng.random_range(0..HANDLES.len());
            let uuid = format!("5f0c{user:04x}-badg-4e11-9c3a-00000000{user:04x}");
            let mac = format!("24:0a:c4:12:{:02x}:{:02x}", user * 7, user * 13);
            let roll: f64 = self.rng.random();
            let (channel, payload) = if roll < 0.6 {
                let (abbr, _) = GAMES[self.rng.random_range(0..GAMES.len())];
                let (score, duration) = (self.rng.random_range(10..2500), self.rng.random_range(5..300));
                (
                    "high-score-processor",
                    format!(
                        r#"{{"user_uuid":"{uuid}","mac_address":"{mac}","event":"high-score","high_scores":[["{abbr}",{score},{duration}]]}}"#
                    ),
                )
            } else if roll < 0.8 {
                ("high-score-processor", format!(r#"{{"event":"around-the-world","user_uuid":"{uuid}","mac_address":"{mac}"}}"#))
            } else if roll < 0.93 {
                let (name, points) = [("Hello World", 5), ("Serial Port Interaction", 5), ("Secret Flag", 10), ("Rick Rolled", 1)]
                    [self.rng.random_range(0..4)];
                (
                    "achievement",
                    format!(r#"{{"handle":"{}","name":"{name}","description":"unlocked on the badge","points":{points}}}"#, HANDLES[user]),
                )
            } else {
                ("community-message", format!("{} has already unlocked: Hello World", HANDLES[user]))
            };
            out.push(Message { ts_us, channel: channel.into(), payload });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::datatypes::{Float64Type, Int64Type};

    #[test]
    fn every_kind_has_its_real_source_s_schema_and_is_reproducible() {
        for kind in [DemoKind::Probes, DemoKind::MeshUtilization, DemoKind::Srt, DemoKind::Badges] {
            let now = Utc::now();
            let a = Generator::new(kind, 7).batch(500, now);
            let b = Generator::new(kind, 7).batch(500, now);
            assert_eq!(a.num_rows(), 500, "{kind:?}");
            assert_eq!(a.schema(), schema_for(kind));
            assert_eq!(a, b, "{kind:?} must be reproducible from its seed");
        }
        assert_eq!(schema_for(DemoKind::Probes), probe_schema());
        assert_eq!(schema_for(DemoKind::Srt), stats_schema());
    }

    #[test]
    fn probe_rows_are_consistent_and_carry_phase_timings() {
        let b = Generator::new(DemoKind::Probes, 1).batch(2000, Utc::now());
        let status = b.column_by_name("status_code").unwrap().as_primitive::<Int64Type>();
        let kind = b.column_by_name("error_kind").unwrap().as_string::<i32>();
        let success = b.column_by_name("success").unwrap().as_boolean();
        let (dns, ttfb) = (
            b.column_by_name("dns_ms").unwrap().as_primitive::<Float64Type>(),
            b.column_by_name("ttfb_ms").unwrap().as_primitive::<Float64Type>(),
        );
        let tls = b.column_by_name("tls_ms").unwrap().as_primitive::<Float64Type>();
        let url = b.column_by_name("url").unwrap().as_string::<i32>();
        for i in 0..b.num_rows() {
            assert_eq!(status.value(i) == 0, kind.is_valid(i) && kind.value(i) == "timeout", "row {i}");
            assert_eq!(success.value(i), status.value(i) == 200, "row {i}");
            assert!(dns.is_valid(i), "row {i}");
            assert_eq!(ttfb.is_valid(i), status.value(i) != 0, "row {i}");
            assert_eq!(tls.is_valid(i), url.value(i).starts_with("https") && status.value(i) != 0, "row {i}");
        }
        assert!(status.iter().any(|s| s == Some(0)), "some timeouts in 2000 probes");
    }

    #[test]
    fn srt_counters_never_decrease_per_session_and_only_the_role_s_columns_are_set() {
        let mut g = Generator::new(DemoKind::Srt, 3);
        let b1 = g.batch(4, Utc::now());
        let b2 = g.batch(4, Utc::now());
        let role = b1.column_by_name("role").unwrap().as_string::<i32>();
        let counter = |b: &RecordBatch, i: usize| {
            let column = if role.value(i) == "tx" { "send_packets" } else { "recv_packets" };
            b.column_by_name(column).unwrap().as_primitive::<Int64Type>().value(i)
        };
        for i in 0..4 {
            assert!(counter(&b2, i) >= counter(&b1, i) && counter(&b1, i) > 0, "row {i}");
            let other = if role.value(i) == "tx" { "recv_packets" } else { "send_packets" };
            assert!(b1.column_by_name(other).unwrap().is_null(i), "row {i}: {other} is the other role's");
        }
    }

    #[test]
    fn utilization_rows_are_what_the_webex_mesh_source_parses_from_the_simulator() {
        let now = Utc::now();
        let b = Generator::new(DemoKind::MeshUtilization, 5).batch(6, now);
        let names = b.column_by_name("cluster_name").unwrap().as_string::<i32>();
        let cpu = b.column_by_name("avg_cpu").unwrap().as_primitive::<Float64Type>();
        let clusters: std::collections::BTreeSet<&str> = (0..6).map(|i| names.value(i)).collect();
        assert!(clusters.len() > 1, "rows go round the clusters: {clusters:?}");
        assert!((0..6).all(|i| (0.0..=100.0).contains(&cpu.value(i))));
    }

    #[test]
    fn badge_payloads_decode_with_the_badge_events_decoder() {
        let mut g = Generator::new(DemoKind::Badges, 9);
        let messages = g.badges(&vec![0; 300]);
        let (rows, undecodable) = tributary_badge_events::to_batch(&messages);
        assert!(undecodable.is_empty(), "{undecodable:?}");
        assert_eq!(rows.num_rows(), 300);
        let channels: std::collections::BTreeSet<String> = messages.iter().map(|m| m.channel.clone()).collect();
        assert_eq!(channels.into_iter().collect::<Vec<_>>(), ["achievement", "community-message", "high-score-processor"]);
    }
}
