//! Response bodies of the read endpoints, in the published spec's shapes or the legacy shapes the
//! public sample client parses (domain doc, section 6).

use chrono::{DateTime, Duration, TimeZone, Utc};
use serde_json::{json, Value};

use super::model::{
    Cluster, Model, Usage, DESTINATIONS, DEVICE_TYPES, REMEDIATION_CAPACITY, REMEDIATION_CONNECTIVITY, REMEDIATION_UPGRADE,
};
use super::Shapes;
use crate::time::query_time;

/// Hours that overlap `[from, to]`, aligned to the hour (segments are contiguous and hourly, so
/// overlapping reads return the same segments).
fn hours(from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<DateTime<Utc>> {
    let mut t = from.timestamp() - from.timestamp().rem_euclid(3600);
    let mut out = Vec::new();
    while t < to.timestamp() {
        out.push(Utc.timestamp_opt(t, 0).unwrap());
        t += 3600;
    }
    out
}

/// 10-minute bucket marks within `[from, to]`.
pub fn buckets(from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<DateTime<Utc>> {
    let mut t = from.timestamp() + (600 - from.timestamp().rem_euclid(600)) % 600;
    let mut out = Vec::new();
    while t <= to.timestamp() {
        out.push(Utc.timestamp_opt(t, 0).unwrap());
        t += 600;
    }
    out
}

fn z(t: DateTime<Utc>) -> String {
    query_time(t)
}

/// `{"items": [wrapper]}` (spec) or the wrapper's own fields at the top (legacy "flat" shape).
fn bucketed(m: &Model, shapes: Shapes, from: DateTime<Utc>, to: DateTime<Utc>, items: Vec<Value>) -> Value {
    let wrapper = json!({"orgId": m.org.id, "from": z(from), "to": z(to), "aggregationInterval": "10m", "items": items});
    match shapes {
        Shapes::Spec => json!({ "items": [wrapper] }),
        Shapes::Legacy => wrapper,
    }
}

pub fn organizations(m: &Model, shapes: Shapes) -> Value {
    let created = match shapes {
        Shapes::Spec => m.org.created.format("%Y-%m-%dT%H:%M:%S+00:00").to_string(),
        Shapes::Legacy => m.org.created.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
    };
    json!({"items": [{"id": m.org.id.trim_end_matches('='), "displayName": m.org.name, "created": created}]})
}

pub fn clusters(m: &Model, shapes: Shapes, now: DateTime<Utc>) -> Value {
    let clusters: Vec<Value> = m
        .org
        .clusters
        .iter()
        .map(|c| {
            // The next scheduled upgrade: the first schedule day/hour after now, in local time.
            let hour0 = now.timestamp() - now.timestamp().rem_euclid(3600);
            let next = (1..8 * 24).map(|h| Utc.timestamp_opt(hour0 + h * 3600, 0).unwrap()).find(|t| m.upgrading(c, *t)).map(z);
            // Clusters off the stable channel always have one waiting; stable ones now and then.
            let pending = c.release_channel != "stable" || m.unit("pending", &c.id, now.timestamp() / 86_400) < 0.3;
            json!({
                "clusterId": c.id.trim_end_matches('='),
                "clusterName": c.name,
                "releaseChannel": c.release_channel,
                "nodes": c.nodes.iter().map(|n| json!({
                    "nodeId": n.id,
                    "hostNameOrIp": n.host,
                    "deploymentType": n.deployment_type,
                    "location": {"countryCode": c.country_code, "city": c.city, "timeZone": c.time_zone},
                })).collect::<Vec<_>>(),
                "upgradeSchedule": {
                    "scheduleDays": c.schedule_days,
                    "scheduleTime": format!("{:02}:00", c.schedule_hour),
                    "scheduleTimeZone": c.time_zone,
                    "upgradePending": pending,
                    "nextUpgradeTime": next,
                },
            })
        })
        .collect();
    match shapes {
        Shapes::Spec => json!({"items": [{"orgId": m.org.id.trim_end_matches('='), "items": clusters}]}),
        Shapes::Legacy => json!({ "items": clusters }),
    }
}

pub fn cluster_availability(m: &Model, shapes: Shapes, from: DateTime<Utc>, to: DateTime<Utc>) -> Value {
    let items: Vec<Value> = m
        .org
        .clusters
        .iter()
        .map(|c| {
            let segments: Vec<Value> = hours(from, to)
                .into_iter()
                .map(|h| {
                    let online = m.online_nodes(c, h);
                    json!({
                        "segmentStartTime": z(h),
                        "segmentEndTime": z(h + Duration::hours(1)),
                        "availability": if online > 0 { "Available" } else { "Unavailable" },
                        "noOfOnlineNodes": online,
                        "noOfOfflineNodes": c.nodes.len() - online,
                        "totalNodes": c.nodes.len(),
                    })
                })
                .collect();
            json!({"clusterId": c.id, "clusterName": c.name, "availabilitySegments": segments})
        })
        .collect();
    org_segments(m, shapes, from, to, items)
}

fn org_segments(m: &Model, shapes: Shapes, from: DateTime<Utc>, to: DateTime<Utc>, items: Vec<Value>) -> Value {
    let org = json!({"orgId": m.org.id, "items": items, "from": z(from), "to": z(to)});
    match shapes {
        Shapes::Spec => json!({ "items": [org] }),
        Shapes::Legacy => json!([org]),
    }
}

/// Node availability for one cluster; `None` when the cluster is unknown.
pub fn node_availability(m: &Model, shapes: Shapes, cluster_id: &str, from: DateTime<Utc>, to: DateTime<Utc>) -> Option<Value> {
    let c = m.org.clusters.iter().find(|c| c.id.trim_end_matches('=') == cluster_id.trim_end_matches('='))?;
    let items: Vec<Value> = c
        .nodes
        .iter()
        .map(|n| {
            let segments: Vec<Value> = hours(from, to)
                .into_iter()
                .map(|h| {
                    let up = m.node_online(c, n, h);
                    json!({
                        "noOfOnlineNodes": up as u8,
                        "noOfOfflineNodes": (!up) as u8,
                        "segmentStartTime": z(h),
                        "segmentEndTime": z(h + Duration::hours(1)),
                        "availability": if up { "Available" } else { "Unavailable" },
                        "unAvailabilityReason": if up { "NA" } else { "Connectivity Issues to the Node" },
                        "totalNodes": 1,
                    })
                })
                .collect();
            json!({"clusterId": c.id, "clusterName": c.name, "hostNameOrIp": n.host, "nodeId": n.id, "availabilitySegments": segments})
        })
        .collect();
    Some(org_segments(m, shapes, from, to, items))
}

/// One `{timestamp, clusters}` item per bucket; each cluster's entry is made from its usage in
/// that bucket (`None` leaves the cluster out).
fn cluster_buckets(m: &Model, from: DateTime<Utc>, to: DateTime<Utc>, entry: impl Fn(&Cluster, &Usage) -> Option<Value>) -> Vec<Value> {
    buckets(from, to)
        .into_iter()
        .map(|b| {
            let clusters: Vec<Value> = m.org.clusters.iter().filter_map(|c| entry(c, &m.usage(c, b))).collect();
            json!({"timestamp": z(b), "clusters": clusters})
        })
        .collect()
}

pub fn utilization(m: &Model, shapes: Shapes, from: DateTime<Utc>, to: DateTime<Utc>) -> Value {
    let items = cluster_buckets(m, from, to, |c, u| {
        Some(json!({"clusterId": c.id, "clusterName": c.name, "utilizationMetrics": {
            "peakCpu": u.peak_cpu, "avgCpu": u.avg_cpu, "activeCalls": u.active_calls, "activePrivateCalls": u.active_private_calls}}))
    });
    bucketed(m, shapes, from, to, items)
}

pub fn cloud_overflow(m: &Model, shapes: Shapes, from: DateTime<Utc>, to: DateTime<Utc>) -> Value {
    let items = buckets(from, to)
        .into_iter()
        .map(|b| {
            // What no cluster could take goes to the cloud.
            let (mut capacity, mut connectivity) = (0, 0);
            for c in &m.org.clusters {
                let u = m.usage(c, b);
                capacity += u.over_capacity;
                connectivity += u.connectivity_redirects / 2;
            }
            let mut details = Vec::new();
            if capacity > 0 {
                details.push(json!({"overflowReason": "Capacity exceeded", "overflowCount": capacity, "possibleRemediation": REMEDIATION_CAPACITY}));
            }
            if connectivity > 0 {
                details.push(json!({"overflowReason": "Connectivity issues", "overflowCount": connectivity, "possibleRemediation": REMEDIATION_CONNECTIVITY}));
            }
            json!({"timestamp": z(b), "overflowDetails": details})
        })
        .collect();
    bucketed(m, shapes, from, to, items)
}

pub fn call_redirects(m: &Model, shapes: Shapes, from: DateTime<Utc>, to: DateTime<Utc>) -> Value {
    let items = cluster_buckets(m, from, to, |c, u| {
        let details: Vec<Value> = [
            ("Capacity exceeded", u.over_capacity, REMEDIATION_CAPACITY),
            ("Connectivity issues", u.connectivity_redirects, REMEDIATION_CONNECTIVITY),
            ("Node upgrading", u.upgrade_redirects, REMEDIATION_UPGRADE),
        ]
        .into_iter()
        .filter(|(_, n, _)| *n > 0)
        .map(|(reason, n, fix)| json!({"redirectReason": reason, "redirectCount": n, "possibleRemediation": fix}))
        .collect();
        (!details.is_empty()).then(|| json!({"clusterId": c.id, "clusterName": c.name, "redirectDetails": details}))
    });
    bucketed(m, shapes, from, to, items)
}

pub fn client_types(m: &Model, shapes: Shapes, from: DateTime<Utc>, to: DateTime<Utc>, device_types: &[String]) -> Value {
    let items = cluster_buckets(m, from, to, |c, u| {
        let details: Vec<Value> = DEVICE_TYPES
            .iter()
            .enumerate()
            .filter(|(_, (kind, _, _))| device_types.iter().any(|d| d == kind))
            .map(|(i, (kind, description, _))| json!({"deviceType": kind, "description": description, "count": u.joins[i]}))
            .collect();
        Some(json!({"clusterId": c.id, "clusterName": c.name, "clientTypeDistributionDetails": details}))
    });
    bucketed(m, shapes, from, to, items)
}

/// Which kind of test-results list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestKind {
    Reachability,
    MediaHealth,
    Network,
}

impl TestKind {
    fn every_hours(self) -> i64 {
        match self {
            TestKind::MediaHealth => 1,
            TestKind::Reachability => 2,
            TestKind::Network => 4,
        }
    }
    fn tag(self) -> &'static str {
        match self {
            TestKind::Reachability => "reachability",
            TestKind::MediaHealth => "mhm",
            TestKind::Network => "network",
        }
    }
}

const MHM_TESTS: [(&str, u32); 3] = [("Media Signalling", 1003), ("Media Cascade", 1004), ("SIP Signalling", 1002)];

const NETWORK_TESTS: [(&str, &str, &str, &[&str]); 4] = [
    ("DNSResolutionTest", "DNS Resolution issue detected in the Video Mesh Node [Error Code: 1302].", "Please ensure that the configured DNS Servers are correct and healthy, and verify the network settings are adhering to the Video Mesh Deployment Guide. If the issue persists, please contact Cisco Support.", &["WebexCloud", "ThirdPartyCloud"]),
    ("WebSocketConnectivityTest", "Connectivity issue detected between the Video Mesh Node and the Webex Cloud over WebSocket [Error Code: 1206].", "Please verify that outbound WebSocket connections to the Webex Cloud are allowed by your firewall and proxy. If the issue persists, please contact Cisco Support.", &["WebexCloud"]),
    ("HTTPConnectivityTest", "Connectivity issue detected between the Video Mesh Node and the Webex Cloud [Error Code: 1106].", "One or more Webex cloud services may not be responding. Retry the test after some time. If the issue persists, please contact Cisco Support.", &["WebexCloud", "ThirdPartyCloud"]),
    ("BandwidthTest", "Degraded Network Bandwidth speed detected in the Video Mesh Node connectivity to the Webex Cloud [Error Code: 1402,1405].", "Please refer to Video Mesh deployment guide to ensure the network settings are configured correctly, and the minimum internet speed requirements are met. If the issue persists, please contact Cisco Support.", &["WebexCloud", "ThirdPartyCloud"]),
];

/// Test results of one kind in `[from, to]`, filtered by trigger (`All`, `Periodic`, `OnDemand`).
pub fn test_results(m: &Model, shapes: Shapes, kind: TestKind, from: DateTime<Utc>, to: DateTime<Utc>, trigger: &str) -> Value {
    let legacy = shapes == Shapes::Legacy;
    let clusters: Vec<Value> = m
        .org
        .clusters
        .iter()
        .map(|c| {
            let nodes: Vec<Value> = c
                .nodes
                .iter()
                .map(|n| {
                    let runs: Vec<_> = m
                        .test_runs(kind.tag(), n, kind.every_hours(), from, to)
                        .into_iter()
                        .filter(|r| trigger == "All" || r.trigger == trigger)
                        .collect();
                    let t = |at: DateTime<Utc>| at.timestamp();
                    let mut node = match legacy {
                        false => json!({"nodeId": n.id, "hostNameOrIP": n.host}),
                        true => json!({"nodeId": n.id, "hostName": n.host, "ipAddress": n.ip}),
                    };
                    match kind {
                        TestKind::Reachability => {
                            let results: Vec<Value> = DESTINATIONS
                                .iter()
                                .map(|(dest, ip)| {
                                    let stun: Vec<Value> = runs
                                        .iter()
                                        .map(|r| {
                                            let probe = |proto: &str, port: u16| {
                                                // One Amsterdam node's firewall blocks UDP 51004: a steady finding.
                                                let blocked = proto == "udp" && port == 51004 && c.name == "Amsterdam" && n.host.starts_with("vmn3");
                                                let flaky = m.unit(&format!("reach{proto}{port}{dest}"), &n.id, t(r.at)) < 0.05;
                                                json!({"ipAddress": ip, "port": port, "reachable": !(blocked || flaky)})
                                            };
                                            json!({"timestamp": z(r.at), "triggerType": r.trigger, "id": r.id,
                                                   "udp": [probe("udp", 5004), probe("udp", 51004)],
                                                   "tcp": [probe("tcp", 5004), probe("tcp", 51004)]})
                                        })
                                        .collect();
                                    json!({"destinationCluster": dest, "stunResults": stun})
                                })
                                .collect();
                            node["testResults"] = json!(results);
                        }
                        TestKind::MediaHealth => {
                            let results: Vec<Value> = runs
                                .iter()
                                .map(|r| {
                                    let tests: Vec<Value> = MHM_TESTS
                                        .iter()
                                        .map(|(name, code)| {
                                            if m.unit(name, &n.id, t(r.at)) < 0.06 {
                                                json!({"testName": name, "testResult": "Failed", "failureReason": format!("An internal error occurred in monitoring tool [Error Code:{code}]. If the issue persists, please contact Cisco Support.")})
                                            } else {
                                                json!({"testName": name, "testResult": "Success"})
                                            }
                                        })
                                        .collect();
                                    let mut run = json!({"timestamp": z(r.at), "id": r.id, "testResults": tests});
                                    if legacy {
                                        run["triggerType"] = json!(r.trigger);
                                    }
                                    run
                                })
                                .collect();
                            node["mhmTestResults"] = json!(results);
                        }
                        TestKind::Network => {
                            let results: Vec<Value> = runs
                                .iter()
                                .map(|r| {
                                    let checks: Vec<Value> = NETWORK_TESTS
                                        .iter()
                                        .map(|(kind, reason, fix, services)| {
                                            let per_service: Vec<Value> = services
                                                .iter()
                                                .map(|s| {
                                                    if m.unit(&format!("{kind}{s}"), &n.id, t(r.at)) < 0.07 {
                                                        json!({"serviceType": s, "testResult": "Failed", "failureDetails": {"possibleFailureReason": [reason], "possibleRemediation": [fix]}})
                                                    } else {
                                                        json!({"serviceType": s, "testResult": "Success"})
                                                    }
                                                })
                                                .collect();
                                            json!({"type": kind, "results": per_service})
                                        })
                                        .collect();
                                    let key = if legacy { "results" } else { "result" };
                                    json!({"timestamp": z(r.at), "triggerType": r.trigger, "id": r.id, key: checks})
                                })
                                .collect();
                            node["testResults"] = json!(results);
                        }
                    }
                    node
                })
                .collect();
            json!({"clusterId": c.id, "clusterName": c.name, "nodes": nodes})
        })
        .collect();
    let items = if legacy { json!({ "clusters": clusters }) } else { json!([{ "clusters": clusters }]) };
    json!({"orgId": m.org.id, "from": z(from), "to": z(to), "items": items})
}
