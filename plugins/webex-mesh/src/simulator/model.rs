//! The simulated organisation and every number it reports, derived from (seed, entity, time) so
//! that re-reading an overlapping window returns identical values — exactly what lets a poller's
//! upserts converge.

use base64::Engine;
use chrono::{DateTime, Datelike, Duration, TimeZone, Timelike, Utc};

/// Webex device types (the `deviceType` enumeration) with their descriptions and a typical share
/// of call joins.
pub const DEVICE_TYPES: [(&str, &str, f64); 5] = [
    ("webexDevices", "Webex Devices", 0.34),
    ("webexForDesktop", "Webex App Desktop", 0.30),
    ("webexForMobile", "Webex App Mobile", 0.15),
    ("sipEndpoint", "SIP Devices", 0.13),
    ("webexAppVdi", "Webex App VDI", 0.08),
];

pub const REMEDIATION_CAPACITY: &str =
    "Video Mesh exceeded its capacity. If this happens frequently, consider adding more nodes to your clusters.";
pub const REMEDIATION_CONNECTIVITY: &str = "Connectivity Issues between Video Mesh Node and Cloud. Check your network configuration.";
pub const REMEDIATION_UPGRADE: &str = "Video Mesh Node is being upgraded. Please wait for upgrades to finish.";

pub struct Org {
    pub id: String,
    pub uuid: String,
    pub name: String,
    pub created: DateTime<Utc>,
    pub clusters: Vec<Cluster>,
}

pub struct Cluster {
    pub id: String,
    pub name: String,
    pub release_channel: &'static str,
    pub time_zone: &'static str,
    /// Fixed UTC offset in minutes standing in for the zone (daily patterns, upgrade windows).
    pub utc_offset_min: i64,
    pub country_code: &'static str,
    pub city: &'static str,
    pub schedule_days: Vec<&'static str>,
    /// Local upgrade hour (`HH:00`).
    pub schedule_hour: u32,
    /// Concurrent calls one node carries.
    pub calls_per_node: u32,
    /// Concurrent calls the site wants at its busiest.
    pub peak_demand: f64,
    pub nodes: Vec<Node>,
}

pub struct Node {
    pub id: String,
    pub host: String,
    pub ip: String,
    pub deployment_type: &'static str,
}

/// One cluster's 10-minute bucket.
#[derive(Debug, Clone, PartialEq)]
pub struct Usage {
    pub peak_cpu: f64,
    pub avg_cpu: f64,
    pub active_calls: u64,
    pub active_private_calls: u64,
    /// Calls that wanted this cluster but found it full.
    pub over_capacity: u64,
    pub connectivity_redirects: u64,
    pub upgrade_redirects: u64,
    /// Call joins in the bucket, per entry of [`DEVICE_TYPES`].
    pub joins: [u64; 5],
}

/// A test run on a node: its time, ID and trigger.
#[derive(Debug, Clone)]
pub struct TestRun {
    pub at: DateTime<Utc>,
    pub id: String,
    pub trigger: &'static str,
}

struct ClusterTemplate {
    name: &'static str,
    time_zone: &'static str,
    offset_min: i64,
    country: &'static str,
    city: &'static str,
    nodes: usize,
    channel: &'static str,
    days: &'static [&'static str],
    hour: u32,
    calls_per_node: u32,
    peak: f64,
}

const CLUSTERS: [ClusterTemplate; 4] = [
    ClusterTemplate {
        name: "Amsterdam",
        time_zone: "Europe/Amsterdam",
        offset_min: 60,
        country: "NL",
        city: "Amsterdam",
        nodes: 3,
        channel: "stable",
        days: &["sunday"],
        hour: 2,
        calls_per_node: 40,
        peak: 120.0,
    },
    ClusterTemplate {
        name: "San Jose",
        time_zone: "America/Los_Angeles",
        offset_min: -480,
        country: "US",
        city: "San Jose",
        nodes: 3,
        channel: "stable",
        days: &["saturday", "sunday"],
        hour: 3,
        calls_per_node: 50,
        peak: 170.0,
    },
    ClusterTemplate {
        name: "Bangalore",
        time_zone: "Asia/Kolkata",
        offset_min: 330,
        country: "IN",
        city: "Bangalore",
        nodes: 2,
        channel: "latest",
        days: &["friday"],
        hour: 1,
        calls_per_node: 30,
        peak: 55.0,
    },
    ClusterTemplate {
        name: "Sydney",
        time_zone: "Australia/Sydney",
        offset_min: 600,
        country: "AU",
        city: "Sydney",
        nodes: 1,
        channel: "alpha",
        days: &["wednesday"],
        hour: 4,
        calls_per_node: 25,
        peak: 22.0,
    },
];

/// Destination media clusters of reachability tests.
pub const DESTINATIONS: [(&str, &str); 2] = [("Amsterdam Cluster", "62.109.192.10"), ("San Jose Cluster", "170.72.0.10")];

pub struct Model {
    pub seed: u64,
    pub org: Org,
}

impl Model {
    pub fn new(seed: u64, org_name: &str) -> Model {
        let org_uuid = uuid(seed, "org", 0);
        let org_id = b64(&format!("ciscospark://us/ORGANIZATION/{org_uuid}"));
        let mut host_n = 0;
        let clusters = CLUSTERS
            .iter()
            .enumerate()
            .map(|(ci, t)| {
                let cluster_uuid = uuid(seed, "cluster", ci as u64);
                let nodes = (0..t.nodes)
                    .map(|ni| {
                        host_n += 1;
                        let hex = uuid(seed, "node", (ci * 16 + ni) as u64).replace('-', "");
                        Node {
                            id: b64(&format!("ciscospark://us/HYBRID_CONNECTOR/{org_uuid}:{hex}")),
                            host: format!("vmn{}.{}.mesh.example.com", ni + 1, t.city.to_lowercase().replace(' ', "")),
                            ip: format!("10.{}.{}.{}", 10 + ci, 20, 11 + ni),
                            deployment_type: if ni == 0 && t.nodes == 1 { "Video Mesh Node Lite" } else { "Video Mesh Node" },
                        }
                    })
                    .collect();
                Cluster {
                    id: b64(&format!("ciscospark://us/HYBRID_CLUSTER/{org_uuid}:{cluster_uuid}")),
                    name: t.name.into(),
                    release_channel: t.channel,
                    time_zone: t.time_zone,
                    utc_offset_min: t.offset_min,
                    country_code: t.country,
                    city: t.city,
                    schedule_days: t.days.to_vec(),
                    schedule_hour: t.hour,
                    calls_per_node: t.calls_per_node,
                    peak_demand: t.peak,
                    nodes,
                }
            })
            .collect();
        Model {
            seed,
            org: Org {
                id: org_id,
                uuid: org_uuid,
                name: org_name.into(),
                created: Utc.with_ymd_and_hms(2019, 4, 2, 9, 30, 12).unwrap(),
                clusters,
            },
        }
    }

    /// A number in [0, 1) fixed by the seed, a tag, an entity and a time.
    pub fn unit(&self, tag: &str, entity: &str, t: i64) -> f64 {
        let mut h = self.seed ^ fnv(tag) ^ fnv(entity).rotate_left(17) ^ (t as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        h = splitmix(h);
        (h >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Is the node up during the hour starting at `hour`? About 3 % of node-hours are outages,
    /// and Bangalore's second node has a long one every day (a flaky site for the dashboards).
    pub fn node_online(&self, cluster: &Cluster, node: &Node, hour: DateTime<Utc>) -> bool {
        let h = hour.timestamp() / 3600;
        if cluster.name == "Bangalore" && node.host.starts_with("vmn2") && (hour.hour() == 6 || hour.hour() == 7) {
            return false;
        }
        self.unit("outage", &node.id, h) >= 0.03
    }

    pub fn online_nodes(&self, cluster: &Cluster, hour: DateTime<Utc>) -> usize {
        cluster.nodes.iter().filter(|n| self.node_online(cluster, n, hour)).count()
    }

    /// Is the cluster in its upgrade window (its local schedule day and hour)?
    pub fn upgrading(&self, cluster: &Cluster, t: DateTime<Utc>) -> bool {
        let local = t + Duration::minutes(cluster.utc_offset_min);
        let day = weekday_name(local.weekday());
        cluster.schedule_days.contains(&day) && local.hour() == cluster.schedule_hour
    }

    /// The cluster's 10-minute bucket ending at `bucket`: demand follows the local working day
    /// (weekends quieter), capacity follows the nodes that are up.
    pub fn usage(&self, cluster: &Cluster, bucket: DateTime<Utc>) -> Usage {
        let t = bucket.timestamp();
        let local = bucket + Duration::minutes(cluster.utc_offset_min);
        let hour = local.hour() as f64 + local.minute() as f64 / 60.0;
        let weekend = matches!(local.weekday(), chrono::Weekday::Sat | chrono::Weekday::Sun);
        let day_shape = (-((hour - 13.0) / 3.2).powi(2)).exp();
        let level = if weekend { 0.04 + 0.18 * day_shape } else { 0.05 + 0.95 * day_shape };
        let demand = (cluster.peak_demand * level * (0.85 + 0.3 * self.unit("demand", &cluster.id, t))).round() as u64;
        let hour_start = Utc.timestamp_opt(t - t.rem_euclid(3600), 0).unwrap();
        let online = self.online_nodes(cluster, hour_start);
        let capacity = online as u64 * cluster.calls_per_node as u64;
        let upgrading = self.upgrading(cluster, bucket);
        let active_calls = demand.min(capacity);
        let over_capacity = demand - active_calls;
        let connectivity_redirects =
            if online < cluster.nodes.len() { (demand as f64 * 0.08 * self.unit("conn", &cluster.id, t)).round() as u64 } else { 0 };
        let upgrade_redirects = if upgrading { 1 + (demand as f64 * 0.1).round() as u64 } else { 0 };
        let private = (active_calls as f64 * 0.12 * self.unit("private", &cluster.id, t)).round() as u64;
        let load = if capacity == 0 { 0.0 } else { active_calls as f64 / capacity as f64 };
        let avg_cpu = if online == 0 { 0.0 } else { round2(2.5 + 68.0 * load + 4.0 * self.unit("cpu", &cluster.id, t)) };
        let peak_cpu = if online == 0 { 0.0 } else { round2((avg_cpu + 4.0 + 28.0 * self.unit("peak", &cluster.id, t)).min(100.0)) };
        // Joins in ten minutes: roughly the calls that started, spread over the client types.
        let joins_total = demand as f64 * 0.6;
        let mut joins = [0u64; 5];
        for (i, (kind, _, share)) in DEVICE_TYPES.iter().enumerate() {
            joins[i] = (joins_total * share * (0.8 + 0.4 * self.unit(kind, &cluster.id, t))).round() as u64;
        }
        Usage {
            peak_cpu,
            avg_cpu,
            active_calls,
            active_private_calls: private,
            over_capacity,
            connectivity_redirects,
            upgrade_redirects,
            joins,
        }
    }

    /// Periodic test runs of one kind on a node within `[from, to]`: every `every_h` hours at a
    /// node-specific minute, and about one run in eight triggered on demand instead.
    pub fn test_runs(&self, kind: &str, node: &Node, every_h: i64, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<TestRun> {
        let period = every_h * 3600;
        let offset = ((fnv(&node.id) ^ fnv(kind)) % 3000) as i64 + 60;
        let mut start = from.timestamp() - (from.timestamp() - offset).rem_euclid(period);
        if start < from.timestamp() {
            start += period;
        }
        let mut runs = Vec::new();
        let mut t = start;
        while t <= to.timestamp() {
            let on_demand = self.unit("trigger", &format!("{kind}{}", node.id), t) < 0.125;
            runs.push(TestRun {
                at: Utc.timestamp_opt(t, 0).unwrap(),
                id: b64(&format!(
                    "ciscospark://us/HYBRID_COMMAND_ID/{}:{}",
                    self.org.uuid,
                    uuid(self.seed ^ fnv(kind), &node.id, t as u64)
                )),
                trigger: if on_demand { "OnDemand" } else { "Periodic" },
            });
            t += period;
        }
        runs
    }
}

pub fn weekday_name(d: chrono::Weekday) -> &'static str {
    ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"][d.num_days_from_monday() as usize]
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Standard base64 with padding, as Webex IDs are.
pub fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

fn fnv(s: &str) -> u64 {
    tributary_sdk::position::fnv1a(s.as_bytes())
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A UUID-shaped hex string fixed by the inputs.
pub fn uuid(seed: u64, tag: &str, n: u64) -> String {
    let a = splitmix(seed ^ fnv(tag) ^ n.wrapping_mul(0x2545_F491_4F6C_DD1D));
    let b = splitmix(a);
    let hex = format!("{a:016x}{b:016x}");
    format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}
