//! Row generators. Values follow the domain references: probe latencies around an SLA with
//! occasional timeouts and 5xx, Video Mesh CPU with a daily curve, SRT counters that only grow,
//! badge events on the badge API's channels with its games.

use std::sync::Arc;

use chrono::{DateTime, Timelike, Utc};
use datafusion::arrow::array::{ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tributary_sdk::config::event_time_type;

use crate::DemoKind;

fn field(name: &str, t: DataType, nullable: bool) -> Field {
    Field::new(name, t, nullable)
}

/// The output schema of each kind (see the plugin README for the meaning of each column).
pub fn schema_for(kind: DemoKind) -> SchemaRef {
    use DataType::*;
    let ts = field("ts", event_time_type(), false);
    let fields = match kind {
        DemoKind::Probes => vec![
            ts,
            field("name", Utf8, false),
            field("site", Utf8, false),
            field("endpoint", Utf8, false),
            field("url", Utf8, false),
            field("status_code", Int64, false),
            field("response_time_ms", Int64, false),
            field("total_time_ms", Int64, false),
            field("sla_ms", Int64, false),
            field("in_sla", Boolean, false),
            field("success", Boolean, false),
            field("value", Utf8, true),
            field("error_kind", Utf8, true),
            field("error", Utf8, true),
            field("body_bytes", Int64, false),
        ],
        DemoKind::MeshUtilization => vec![
            ts,
            field("org_id", Utf8, false),
            field("cluster_id", Utf8, false),
            field("cluster_name", Utf8, false),
            field("peak_cpu", Float64, false),
            field("avg_cpu", Float64, false),
            field("active_calls", Int64, false),
            field("active_private_calls", Int64, false),
        ],
        DemoKind::Srt => vec![
            ts,
            field("session", Utf8, false),
            field("role", Utf8, false),
            field("sid", Int64, false),
            field("connected", Int64, false),
            field("reconnections", Int64, false),
            field("link_rtt_ms", Float64, false),
            field("link_bandwidth_mbps", Float64, false),
            field("mbit_rate", Float64, false),
            field("packets", Int64, false),
            field("packets_lost", Int64, false),
            field("packets_retransmitted", Int64, false),
            field("line_loss_pct", Float64, false),
            field("ms_buf", Int64, false),
        ],
        DemoKind::Badges => vec![
            ts,
            field("channel", Utf8, false),
            field("event", Utf8, true),
            field("user_uuid", Utf8, true),
            field("mac_address", Utf8, true),
            field("game", Utf8, true),
            field("score", Int64, true),
            field("duration", Int64, true),
            field("handle", Utf8, true),
            field("points", Int64, true),
            field("message", Utf8, true),
            field("raw", Utf8, false),
        ],
    };
    Arc::new(Schema::new(fields))
}

const PROBE_TARGETS: &[(&str, &str, &str, i64, f64)] = &[
    // name, site, endpoint, sla_ms, typical ms
    ("World Clock", "http://worldclockapi.com", "/api/json/utc/now", 500, 180.0),
    ("Japan Stock Exchange", "https://www.jpx.co.jp", "/", 2500, 900.0),
    ("aiven", "https://aiven.io", "/", 1000, 340.0),
    ("status", "http://127.0.0.1:8080", "/health", 200, 12.0),
    ("billing", "https://billing.example.com", "/api/v1/ping", 800, 420.0),
];

const CLUSTERS: &[(&str, &str, f64)] = &[
    // cluster id, name, UTC offset of its site in hours (drives the daily curve)
    ("Y2lzY29zcGFyazovL3VzL0NMVVNURVIvYTE", "San Jose", -8.0),
    ("Y2lzY29zcGFyazovL3VzL0NMVVNURVIvYjI", "Amsterdam", 1.0),
    ("Y2lzY29zcGFyazovL3VzL0NMVVNURVIvYzM", "Bangalore", 5.5),
];

const GAMES: &[(&str, &str)] = &[("BO", "Breakout"), ("LA", "Labyrinth"), ("RO", "Asteroids"), ("TT", "Tappytime")];
const HANDLES: &[&str] = &["pixelpanda", "0xbadge", "tappyqueen", "labrat", "asteroidz", "breakfast"];

struct SrtSession {
    name: &'static str,
    role: &'static str,
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
    schema: SchemaRef,
    rng: StdRng,
    next: usize,
    srt: Vec<SrtSession>,
}

impl Generator {
    pub fn new(kind: DemoKind, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let srt = [("studio-a", "tx"), ("studio-a", "rx"), ("field-cam", "tx"), ("field-cam", "rx")]
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
        Generator { kind, schema: schema_for(kind), rng, next: 0, srt }
    }

    /// `n` rows stamped over the 100 ms before `now`.
    pub fn batch(&mut self, n: usize, now: DateTime<Utc>) -> RecordBatch {
        let base = now.timestamp_micros();
        let ts: Vec<i64> = (0..n).map(|i| base - ((n - 1 - i) as i64 * 100_000 / n.max(1) as i64)).collect();
        let ts: ArrayRef = Arc::new(TimestampMicrosecondArray::from(ts).with_timezone("UTC"));
        let mut cols = vec![ts];
        match self.kind {
            DemoKind::Probes => cols.extend(self.probes(n)),
            DemoKind::MeshUtilization => cols.extend(self.mesh(n, now)),
            DemoKind::Srt => cols.extend(self.srt(n)),
            DemoKind::Badges => cols.extend(self.badges(n)),
        }
        RecordBatch::try_new(self.schema.clone(), cols).expect("generated columns match the schema")
    }

    fn round_robin(&mut self, len: usize) -> usize {
        let i = self.next % len;
        self.next += 1;
        i
    }

    fn probes(&mut self, n: usize) -> Vec<ArrayRef> {
        let (mut name, mut site, mut endpoint, mut url) = (vec![], vec![], vec![], vec![]);
        let (mut status, mut resp, mut total, mut sla, mut in_sla, mut success) = (vec![], vec![], vec![], vec![], vec![], vec![]);
        let (mut value, mut kind, mut error, mut bytes) = (vec![], vec![], vec![], vec![]);
        for _ in 0..n {
            let (t_name, t_site, t_endpoint, t_sla, typical) = PROBE_TARGETS[self.round_robin(PROBE_TARGETS.len())];
            let roll: f64 = self.rng.random();
            // Log-normal-ish latency: mostly near typical, with a long tail past the SLA.
            let ms = (typical * (0.6 + self.rng.random::<f64>() * 0.8) * if roll > 0.9 { 3.0 } else { 1.0 }) as i64;
            let (code, ms, err_kind, err): (i64, i64, Option<&str>, Option<String>) = if roll > 0.985 {
                (0, t_sla, Some("timeout"), Some(format!("no response within {t_sla} ms")))
            } else if roll > 0.97 {
                (503, ms, Some("http_status"), Some("unexpected status 503 Service Unavailable".into()))
            } else {
                (200, ms, None, None)
            };
            let ok = err.is_none();
            name.push(t_name);
            site.push(t_site);
            endpoint.push(t_endpoint);
            url.push(format!("{t_site}{t_endpoint}"));
            status.push(code);
            resp.push(ms);
            total.push(ms + if code == 0 { 0 } else { self.rng.random_range(1..40) });
            sla.push(t_sla);
            in_sla.push(ms <= t_sla && code != 0);
            success.push(ok && (200..300).contains(&code));
            value.push(ok.then(|| match t_name {
                "World Clock" => now_text(),
                "Japan Stock Exchange" => "Japan Exchange Group".to_string(),
                "aiven" => "Freedom to build awesome applications".to_string(),
                _ => "ok".to_string(),
            }));
            kind.push(err_kind);
            error.push(err);
            bytes.push(if code == 0 { 0 } else { self.rng.random_range(80..40_000) });
        }
        vec![
            Arc::new(StringArray::from(name)),
            Arc::new(StringArray::from(site)),
            Arc::new(StringArray::from(endpoint)),
            Arc::new(StringArray::from(url)),
            Arc::new(Int64Array::from(status)),
            Arc::new(Int64Array::from(resp)),
            Arc::new(Int64Array::from(total)),
            Arc::new(Int64Array::from(sla)),
            Arc::new(BooleanArray::from(in_sla)),
            Arc::new(BooleanArray::from(success)),
            Arc::new(StringArray::from(value)),
            Arc::new(StringArray::from(kind)),
            Arc::new(StringArray::from(error)),
            Arc::new(Int64Array::from(bytes)),
        ]
    }

    fn mesh(&mut self, n: usize, now: DateTime<Utc>) -> Vec<ArrayRef> {
        let (mut org, mut id, mut cname, mut peak, mut avg, mut calls, mut private) =
            (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
        for _ in 0..n {
            let (c_id, c_name, offset) = CLUSTERS[self.round_robin(CLUSTERS.len())];
            let local_hour = (now.hour() as f64 + now.minute() as f64 / 60.0 + offset).rem_euclid(24.0);
            // Business-hours curve peaking mid-afternoon local time.
            let day = (-((local_hour - 14.0) / 4.0).powi(2)).exp();
            let a = 8.0 + 55.0 * day + self.rng.random::<f64>() * 6.0;
            let c = (day * 120.0 + self.rng.random::<f64>() * 10.0) as i64;
            org.push("Y2lzY29zcGFyazovL3VzL09SR0FOSVpBVElPTi9kZW1v");
            id.push(c_id);
            cname.push(c_name);
            avg.push((a * 10.0).round() / 10.0);
            peak.push(((a + 5.0 + self.rng.random::<f64>() * 15.0).min(100.0) * 10.0).round() / 10.0);
            calls.push(c);
            private.push(c / 10);
        }
        vec![
            Arc::new(StringArray::from(org)),
            Arc::new(StringArray::from(id)),
            Arc::new(StringArray::from(cname)),
            Arc::new(Float64Array::from(peak)),
            Arc::new(Float64Array::from(avg)),
            Arc::new(Int64Array::from(calls)),
            Arc::new(Int64Array::from(private)),
        ]
    }

    fn srt(&mut self, n: usize) -> Vec<ArrayRef> {
        let (mut name, mut role, mut sid, mut connected, mut recon) = (vec![], vec![], vec![], vec![], vec![]);
        let (mut rtt, mut bw, mut rate, mut packets, mut lost, mut retrans, mut loss, mut buf) =
            (vec![], vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
        for _ in 0..n {
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
            let new_lost = if up && s.role == "rx" { (sent as f64 * 0.004 * (1.0 + (s.packets % 7) as f64)) as i64 / 3 } else { 0 };
            s.packets += sent;
            s.lost += new_lost;
            s.retransmitted += new_lost + new_lost / 4;
            name.push(s.name);
            role.push(s.role);
            sid.push(s.sid);
            connected.push(if up { 1 } else { 0 });
            recon.push(s.reconnections);
            let r = if up { 18.0 + (i as f64) * 6.0 } else { 0.0 };
            rtt.push(r);
            bw.push(if up { 940.0 } else { 0.0 });
            rate.push(if up { 4.8 + (sent % 5) as f64 * 0.05 } else { 0.0 });
            packets.push(s.packets);
            lost.push(s.lost);
            retrans.push(s.retransmitted);
            loss.push(if s.packets == 0 { 0.0 } else { s.lost as f64 / s.packets as f64 * 100.0 });
            buf.push(if up { 120 } else { 0 });
        }
        let _ = &mut self.rng;
        vec![
            Arc::new(StringArray::from(name)),
            Arc::new(StringArray::from(role)),
            Arc::new(Int64Array::from(sid)),
            Arc::new(Int64Array::from(connected)),
            Arc::new(Int64Array::from(recon)),
            Arc::new(Float64Array::from(rtt)),
            Arc::new(Float64Array::from(bw)),
            Arc::new(Float64Array::from(rate)),
            Arc::new(Int64Array::from(packets)),
            Arc::new(Int64Array::from(lost)),
            Arc::new(Int64Array::from(retrans)),
            Arc::new(Float64Array::from(loss)),
            Arc::new(Int64Array::from(buf)),
        ]
    }

    fn badges(&mut self, n: usize) -> Vec<ArrayRef> {
        let mut rows: Vec<BadgeRow> = Vec::with_capacity(n);
        for _ in 0..n {
            let user = self.rng.random_range(0..HANDLES.len());
            let uuid = format!("5f0c{user:04x}-badg-4e11-9c3a-00000000{user:04x}");
            let mac = format!("24:0a:c4:12:{:02x}:{:02x}", user * 7, user * 13);
            let roll: f64 = self.rng.random();
            let row = if roll < 0.6 {
                let (abbr, game) = GAMES[self.rng.random_range(0..GAMES.len())];
                let score = self.rng.random_range(10..2500);
                let duration = self.rng.random_range(5..300);
                BadgeRow {
                    channel: "high-score-processor",
                    event: Some("high-score"),
                    raw: format!(
                        r#"{{"user_uuid":"{uuid}","mac_address":"{mac}","event":"high-score","high_scores":[["{abbr}",{score},{duration}]]}}"#
                    ),
                    user_uuid: Some(uuid),
                    mac_address: Some(mac),
                    game: Some(game),
                    score: Some(score),
                    duration: Some(duration),
                    ..Default::default()
                }
            } else if roll < 0.8 {
                BadgeRow {
                    channel: "high-score-processor",
                    event: Some("around-the-world"),
                    raw: format!(r#"{{"event":"around-the-world","user_uuid":"{uuid}","mac_address":"{mac}"}}"#),
                    user_uuid: Some(uuid),
                    mac_address: Some(mac),
                    ..Default::default()
                }
            } else if roll < 0.93 {
                let (name, points) = [("Hello World", 5), ("Serial Port Interaction", 5), ("Secret Flag", 10), ("Rick Rolled", 1)]
                    [self.rng.random_range(0..4)];
                BadgeRow {
                    channel: "achievement",
                    raw: format!(
                        r#"{{"handle":"{}","name":"{name}","description":"unlocked on the badge","points":{points}}}"#,
                        HANDLES[user]
                    ),
                    handle: Some(HANDLES[user].to_string()),
                    points: Some(points),
                    message: Some(name.to_string()),
                    ..Default::default()
                }
            } else {
                let text = format!("{} has already unlocked: Hello World", HANDLES[user]);
                BadgeRow { channel: "community-message", raw: text.clone(), message: Some(text), ..Default::default() }
            };
            rows.push(row);
        }
        vec![
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.channel))),
            Arc::new(rows.iter().map(|r| r.event).collect::<StringArray>()),
            Arc::new(rows.iter().map(|r| r.user_uuid.as_deref()).collect::<StringArray>()),
            Arc::new(rows.iter().map(|r| r.mac_address.as_deref()).collect::<StringArray>()),
            Arc::new(rows.iter().map(|r| r.game).collect::<StringArray>()),
            Arc::new(rows.iter().map(|r| r.score).collect::<Int64Array>()),
            Arc::new(rows.iter().map(|r| r.duration).collect::<Int64Array>()),
            Arc::new(rows.iter().map(|r| r.handle.as_deref()).collect::<StringArray>()),
            Arc::new(rows.iter().map(|r| r.points).collect::<Int64Array>()),
            Arc::new(rows.iter().map(|r| r.message.as_deref()).collect::<StringArray>()),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.raw.as_str()))),
        ]
    }
}

#[derive(Default)]
struct BadgeRow {
    channel: &'static str,
    event: Option<&'static str>,
    user_uuid: Option<String>,
    mac_address: Option<String>,
    game: Option<&'static str>,
    score: Option<i64>,
    duration: Option<i64>,
    handle: Option<String>,
    points: Option<i64>,
    message: Option<String>,
    raw: String,
}

fn now_text() -> String {
    Utc::now().format("%Y-%m-%dT%H:%MZ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::datatypes::Int64Type;

    #[test]
    fn every_kind_matches_its_schema_and_is_reproducible() {
        for kind in [DemoKind::Probes, DemoKind::MeshUtilization, DemoKind::Srt, DemoKind::Badges] {
            let now = Utc::now();
            let a = Generator::new(kind, 7).batch(500, now);
            let b = Generator::new(kind, 7).batch(500, now);
            assert_eq!(a.num_rows(), 500);
            assert_eq!(a.schema(), schema_for(kind));
            assert_eq!(a, b, "{kind:?} must be reproducible from its seed");
        }
    }

    #[test]
    fn probe_rows_are_consistent() {
        let b = Generator::new(DemoKind::Probes, 1).batch(2000, Utc::now());
        let status = b.column_by_name("status_code").unwrap().as_primitive::<Int64Type>();
        let kind = b.column_by_name("error_kind").unwrap().as_string::<i32>();
        let success = b.column_by_name("success").unwrap().as_boolean();
        for i in 0..b.num_rows() {
            assert_eq!(status.value(i) == 0, kind.value(i) == "timeout" && kind.is_valid(i), "row {i}");
            assert_eq!(success.value(i), status.value(i) == 200, "row {i}");
        }
        assert!(status.iter().any(|s| s == Some(0)), "some timeouts in 2000 probes");
    }

    #[test]
    fn srt_counters_never_decrease_per_session() {
        let mut g = Generator::new(DemoKind::Srt, 3);
        let b1 = g.batch(4, Utc::now());
        let b2 = g.batch(4, Utc::now());
        let p1 = b1.column_by_name("packets").unwrap().as_primitive::<Int64Type>();
        let p2 = b2.column_by_name("packets").unwrap().as_primitive::<Int64Type>();
        for i in 0..4 {
            assert!(p2.value(i) >= p1.value(i));
        }
    }
}
