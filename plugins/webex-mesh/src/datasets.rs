//! The datasets: what each output holds, and how a response body (spec or legacy shape) becomes
//! its rows. Column names follow the public sample client's tables (domain doc 7.3), with
//! `timestamptz` everywhere, the poll time in `poll_timestamp`, and the fields that client drops
//! kept (`active_private_calls`, `total_nodes`, `unavailability_reason`, every failure reason).

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use serde::Deserialize;
use serde_json::{Map, Value};
use tributary_sdk::config::{DeclaredSchema, FieldType};
use tributary_sdk::json::{json_kind, JsonRows};

use crate::time::{id_key, json_time};

/// What can be selected under `datasets:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dataset {
    /// Clusters and their nodes (`cluster_details`, `node_details`).
    Clusters,
    ClusterAvailability,
    NodeAvailability,
    Utilization,
    CloudOverflow,
    CallRedirects,
    ClientTypes,
    Reachability,
    MediaHealth,
    NetworkTests,
}

impl Dataset {
    pub fn all() -> Vec<Dataset> {
        use Dataset::*;
        vec![
            Clusters,
            ClusterAvailability,
            NodeAvailability,
            Utilization,
            CloudOverflow,
            CallRedirects,
            ClientTypes,
            Reachability,
            MediaHealth,
            NetworkTests,
        ]
    }

    /// The org-level endpoint (node availability is per cluster).
    pub fn path(self) -> &'static str {
        match self {
            Dataset::Clusters => "/videoMesh/clusters",
            Dataset::ClusterAvailability => "/videoMesh/clusters/availability",
            Dataset::NodeAvailability => "/videoMesh/nodes/availability",
            Dataset::Utilization => "/videoMesh/utilization",
            Dataset::CloudOverflow => "/videoMesh/cloudOverflow",
            Dataset::CallRedirects => "/videoMesh/callRedirects",
            Dataset::ClientTypes => "/videoMesh/clientTypeDistribution",
            Dataset::Reachability => "/videoMesh/testResults/reachabilityTest",
            Dataset::MediaHealth => "/videoMesh/testResults/mediaHealthMonitorTest",
            Dataset::NetworkTests => "/videoMesh/testResults/networkTest",
        }
    }

    /// The output the rows go to.
    pub fn output(self) -> &'static str {
        match self {
            Dataset::Clusters => "cluster_details",
            Dataset::ClusterAvailability => "cluster_availability",
            Dataset::NodeAvailability => "node_availability",
            Dataset::Utilization => "utilization",
            Dataset::CloudOverflow => "cloud_overflow",
            Dataset::CallRedirects => "call_redirects",
            Dataset::ClientTypes => "client_types",
            Dataset::Reachability => "reachability",
            Dataset::MediaHealth => "media_health",
            Dataset::NetworkTests => "network_tests",
        }
    }

    pub fn is_test_results(self) -> bool {
        matches!(self, Dataset::Reachability | Dataset::MediaHealth | Dataset::NetworkTests)
    }
}

use FieldType::{Bool, Float, Int, String as Str, Timestamp as Ts};

/// Every output and its columns. `""` (the main output) logs each API call.
pub const OUTPUTS: [(&str, &[(&str, FieldType)]); 13] = [
    (
        "",
        &[
            ("ts", Ts),
            ("organization_id", Str),
            ("endpoint", Str),
            ("from_timestamp", Ts),
            ("to_timestamp", Ts),
            ("status", Int),
            ("rows", Int),
            ("duration_ms", Float),
            ("tracking_id", Str),
            ("error", Str),
        ],
    ),
    ("organizations", &[("poll_timestamp", Ts), ("organization_id", Str), ("organization_name", Str), ("create_timestamp", Ts)]),
    (
        "cluster_details",
        &[
            ("poll_timestamp", Ts),
            ("organization_id", Str),
            ("cluster_id", Str),
            ("cluster_name", Str),
            ("node_id", Str),
            ("release_channel", Str),
            ("upgrade_schedule_days", Str),
            ("upgrade_schedule_time", Str),
            ("upgrade_schedule_timezone", Str),
            ("upgrade_pending", Bool),
            ("next_upgrade_timestamp", Ts),
        ],
    ),
    (
        "node_details",
        &[
            ("poll_timestamp", Ts),
            ("organization_id", Str),
            ("cluster_id", Str),
            ("node_id", Str),
            ("host_name", Str),
            ("deployment_type", Str),
            ("country_code", Str),
            ("city", Str),
            ("timezone", Str),
        ],
    ),
    (
        "cluster_availability",
        &[
            ("poll_timestamp", Ts),
            ("organization_id", Str),
            ("cluster_id", Str),
            ("cluster_name", Str),
            ("online_nodes", Int),
            ("offline_nodes", Int),
            ("total_nodes", Int),
            ("availability", Str),
            ("start_timestamp", Ts),
            ("end_timestamp", Ts),
        ],
    ),
    (
        "node_availability",
        &[
            ("poll_timestamp", Ts),
            ("organization_id", Str),
            ("cluster_id", Str),
            ("cluster_name", Str),
            ("node_id", Str),
            ("host_name", Str),
            ("availability", Str),
            ("unavailability_reason", Str),
            ("start_timestamp", Ts),
            ("end_timestamp", Ts),
        ],
    ),
    (
        "utilization",
        &[
            ("poll_timestamp", Ts),
            ("organization_id", Str),
            ("from_timestamp", Ts),
            ("to_timestamp", Ts),
            ("aggregation_interval", Str),
            ("measure_timestamp", Ts),
            ("cluster_id", Str),
            ("cluster_name", Str),
            ("peak_cpu", Float),
            ("avg_cpu", Float),
            ("active_calls", Int),
            ("active_private_calls", Int),
        ],
    ),
    (
        "cloud_overflow",
        &[
            ("poll_timestamp", Ts),
            ("organization_id", Str),
            ("aggregation_interval", Str),
            ("from_timestamp", Ts),
            ("to_timestamp", Ts),
            ("overflow_timestamp", Ts),
            ("overflow_reason", Str),
            ("overflow_count", Int),
            ("remediation", Str),
        ],
    ),
    (
        "call_redirects",
        &[
            ("poll_timestamp", Ts),
            ("organization_id", Str),
            ("aggregation_interval", Str),
            ("from_timestamp", Ts),
            ("to_timestamp", Ts),
            ("redirect_timestamp", Ts),
            ("cluster_id", Str),
            ("cluster_name", Str),
            ("redirect_reason", Str),
            ("redirect_count", Int),
            ("remediation", Str),
        ],
    ),
    (
        "client_types",
        &[
            ("poll_timestamp", Ts),
            ("organization_id", Str),
            ("aggregation_interval", Str),
            ("from_timestamp", Ts),
            ("to_timestamp", Ts),
            ("distribution_timestamp", Ts),
            ("cluster_id", Str),
            ("cluster_name", Str),
            ("device_type", Str),
            ("device_count", Int),
            ("device_description", Str),
        ],
    ),
    (
        "reachability",
        &[
            ("poll_timestamp", Ts),
            ("from_timestamp", Ts),
            ("to_timestamp", Ts),
            ("organization_id", Str),
            ("cluster_id", Str),
            ("cluster_name", Str),
            ("node_id", Str),
            ("host_name", Str),
            ("ip_address", Str),
            ("destination_cluster", Str),
            ("test_timestamp", Ts),
            ("test_id", Str),
            ("trigger_type", Str),
            ("protocol", Str),
            ("port", Int),
            ("reachability", Bool),
            ("destination_ip_address", Str),
        ],
    ),
    (
        "media_health",
        &[
            ("poll_timestamp", Ts),
            ("from_timestamp", Ts),
            ("to_timestamp", Ts),
            ("organization_id", Str),
            ("cluster_id", Str),
            ("cluster_name", Str),
            ("node_id", Str),
            ("host_name", Str),
            ("ip_address", Str),
            ("test_timestamp", Ts),
            ("test_id", Str),
            ("trigger_type", Str),
            ("test_name", Str),
            ("test_result", Str),
            ("failure_reason", Str),
        ],
    ),
    (
        "network_tests",
        &[
            ("poll_timestamp", Ts),
            ("from_timestamp", Ts),
            ("to_timestamp", Ts),
            ("organization_id", Str),
            ("cluster_id", Str),
            ("cluster_name", Str),
            ("node_id", Str),
            ("host_name", Str),
            ("ip_address", Str),
            ("test_timestamp", Ts),
            ("test_id", Str),
            ("trigger_type", Str),
            ("test_type", Str),
            ("service_type", Str),
            ("test_result", Str),
            ("failure_reason", Str),
            ("possible_remediation", Str),
        ],
    ),
];

/// Encodes rows of one output into Arrow.
pub fn encoder(output: &str) -> JsonRows {
    let (_, cols) = OUTPUTS.iter().find(|(n, _)| *n == output).unwrap_or_else(|| panic!("unknown output `{output}`"));
    JsonRows::new(&DeclaredSchema(cols.iter().map(|(n, t)| (n.to_string(), *t)).collect()), None)
}

pub fn schema(output: &str) -> SchemaRef {
    encoder(output).schema().clone()
}

/// Rows as JSON objects keyed by column.
pub type Row = Map<String, Value>;

pub fn to_batch(output: &str, rows: &[Row]) -> Result<RecordBatch, String> {
    // One NDJSON buffer through arrow-json's whole-buffer path: a backfill window is tens of
    // thousands of rows, which `decode_values` would turn into one batch per row.
    let mut ndjson = Vec::with_capacity(rows.len() * 256);
    for r in rows {
        serde_json::to_writer(&mut ndjson, r).expect("a JSON map serializes");
        ndjson.push(b'\n');
    }
    let (batch, errors) = encoder(output).decode_lines(&ndjson);
    match errors.first() {
        Some(e) => Err(e.to_string()),
        None => Ok(batch),
    }
}

/// What one poll knows besides the body.
pub struct Ctx<'a> {
    pub org_id: &'a str,
    pub poll_ts: &'a str,
    /// The `triggerType` asked for: MHM rows (which carry none in the spec) take it unless `All`.
    pub trigger_query: &'a str,
}

/// Rows parsed from one body, and the elements that had to be skipped.
#[derive(Debug, Default)]
pub struct Parsed {
    pub rows: Vec<Row>,
    pub skipped: usize,
    pub first_problem: Option<String>,
}

impl Parsed {
    fn skip(&mut self, why: String) {
        self.skipped += 1;
        self.first_problem.get_or_insert(why);
    }
}

/// One org's collection after normalisation rules 1–3 (domain doc, section 6): the org, the
/// carried `from` / `to` / `aggregationInterval`, and its items.
#[derive(Debug)]
struct Collection {
    org_id: Option<String>,
    from: Value,
    to: Value,
    interval: Value,
    items: Vec<Value>,
}

fn list(v: &Value) -> Vec<Value> {
    match v {
        Value::Array(a) => a.clone(),
        Value::Object(_) => vec![v.clone()],
        _ => Vec::new(),
    }
}

fn collections(body: &Value) -> Result<Vec<Collection>, String> {
    // Rule 1: a top-level array is the item list.
    let body = match body {
        Value::Array(a) => serde_json::json!({ "items": a }),
        Value::Object(_) => body.clone(),
        other => return Err(format!("expected a JSON object or array, got {}", json_kind(other))),
    };
    if body.get("items").is_none() {
        return Err("the response has no `items`".into());
    }
    // Rule 3: `items` as an object is a one-element list.
    let items = list(&body["items"]);
    let carried = |outer: &Value, inner: &Value, key: &str| inner.get(key).or_else(|| outer.get(key)).cloned().unwrap_or(Value::Null);
    // Rule 2: items that are per-org wrappers are unwrapped one level.
    if items.first().is_some_and(|i| i.get("orgId").is_some() && i.get("items").is_some()) {
        Ok(items
            .iter()
            .map(|w| Collection {
                org_id: w["orgId"].as_str().map(id_key),
                from: carried(&body, w, "from"),
                to: carried(&body, w, "to"),
                interval: carried(&body, w, "aggregationInterval"),
                items: list(&w["items"]),
            })
            .collect())
    } else {
        Ok(vec![Collection {
            org_id: body["orgId"].as_str().map(id_key),
            from: body["from"].clone(),
            to: body["to"].clone(),
            interval: body["aggregationInterval"].clone(),
            items,
        }])
    }
}

fn text(v: &Value) -> Value {
    match v {
        Value::String(s) => Value::String(s.clone()),
        Value::Null => Value::Null,
        other => Value::String(other.to_string()),
    }
}

fn id(v: &Value) -> Value {
    v.as_str().map(|s| Value::String(id_key(s))).unwrap_or(Value::Null)
}

fn time(v: &Value) -> Value {
    json_time(v).map(Value::String).unwrap_or(Value::Null)
}

/// Counts are `number` in the spec: read as f64, stored as integers.
fn count(v: &Value) -> Value {
    v.as_f64().map(|f| Value::from(f.round() as i64)).unwrap_or(Value::Null)
}

fn float(v: &Value) -> Value {
    v.as_f64().map(Value::from).unwrap_or(Value::Null)
}

/// Rule 4: the host under any of its three spellings.
fn host(node: &Value) -> Value {
    text(["hostNameOrIP", "hostNameOrIp", "hostName"].iter().map(|k| &node[*k]).find(|v| !v.is_null()).unwrap_or(&Value::Null))
}

fn row(pairs: Vec<(&str, Value)>) -> Row {
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

impl Collection {
    fn org(&self, ctx: &Ctx) -> Value {
        Value::String(self.org_id.clone().unwrap_or_else(|| id_key(ctx.org_id)))
    }
}

pub fn organizations(body: &Value, poll_ts: &str) -> Result<Parsed, String> {
    let mut out = Parsed::default();
    for o in list(&body["items"]) {
        if o["id"].as_str().is_none() {
            out.skip("an organization without `id`".into());
            continue;
        }
        out.rows.push(row(vec![
            ("poll_timestamp", poll_ts.into()),
            ("organization_id", id(&o["id"])),
            ("organization_name", text(&o["displayName"])),
            ("create_timestamp", time(&o["created"])),
        ]));
    }
    if body.get("items").is_none() {
        return Err("the response has no `items`".into());
    }
    Ok(out)
}

/// Cluster rows (one per cluster × node), node rows, and the clusters (ID, name) found.
pub type ClusterLists = (Parsed, Parsed, Vec<(String, String)>);

/// Parses `/videoMesh/clusters`: see [`ClusterLists`].
pub fn clusters(body: &Value, ctx: &Ctx) -> Result<ClusterLists, String> {
    let (mut details, mut nodes, mut found) = (Parsed::default(), Parsed::default(), Vec::new());
    for coll in collections(body)? {
        let org = coll.org(ctx);
        for c in &coll.items {
            let Some(cluster_id) = c["clusterId"].as_str() else {
                details.skip("a cluster without `clusterId`".into());
                continue;
            };
            found.push((cluster_id.to_string(), c["clusterName"].as_str().unwrap_or_default().to_string()));
            let schedule = &c["upgradeSchedule"];
            let days = schedule["scheduleDays"].as_array().map(|d| d.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(","));
            let pending = match &schedule["upgradePending"] {
                Value::Bool(b) => Value::Bool(*b),
                Value::String(s) => Value::Bool(s.eq_ignore_ascii_case("true")),
                _ => Value::Null,
            };
            for n in c["nodes"].as_array().into_iter().flatten() {
                details.rows.push(row(vec![
                    ("poll_timestamp", ctx.poll_ts.into()),
                    ("organization_id", org.clone()),
                    ("cluster_id", id(&c["clusterId"])),
                    ("cluster_name", text(&c["clusterName"])),
                    ("node_id", id(&n["nodeId"])),
                    ("release_channel", text(&c["releaseChannel"])),
                    ("upgrade_schedule_days", days.clone().map(Value::String).unwrap_or(Value::Null)),
                    ("upgrade_schedule_time", text(&schedule["scheduleTime"])),
                    ("upgrade_schedule_timezone", text(&schedule["scheduleTimeZone"])),
                    ("upgrade_pending", pending.clone()),
                    ("next_upgrade_timestamp", time(&schedule["nextUpgradeTime"])),
                ]));
                let loc = &n["location"];
                nodes.rows.push(row(vec![
                    ("poll_timestamp", ctx.poll_ts.into()),
                    ("organization_id", org.clone()),
                    ("cluster_id", id(&c["clusterId"])),
                    ("node_id", id(&n["nodeId"])),
                    ("host_name", host(n)),
                    ("deployment_type", text(&n["deploymentType"])),
                    ("country_code", text(&loc["countryCode"])),
                    ("city", text(&loc["city"])),
                    ("timezone", text(&loc["timeZone"])),
                ]));
            }
        }
    }
    Ok((details, nodes, found))
}

/// Availability segments: clusters when `nodes` is false, else nodes (with host and reason).
pub fn availability(body: &Value, ctx: &Ctx, nodes: bool) -> Result<Parsed, String> {
    let mut out = Parsed::default();
    for coll in collections(body)? {
        let org = coll.org(ctx);
        for item in &coll.items {
            for s in item["availabilitySegments"].as_array().into_iter().flatten() {
                let (start, end) = (time(&s["segmentStartTime"]), time(&s["segmentEndTime"]));
                if start.is_null() || end.is_null() {
                    out.skip(format!("a segment without a valid segmentStartTime/segmentEndTime: {s}"));
                    continue;
                }
                let mut r = row(vec![
                    ("poll_timestamp", ctx.poll_ts.into()),
                    ("organization_id", org.clone()),
                    ("cluster_id", id(&item["clusterId"])),
                    ("cluster_name", text(&item["clusterName"])),
                    ("availability", text(&s["availability"])),
                    ("start_timestamp", start),
                    ("end_timestamp", end),
                ]);
                if nodes {
                    r.insert("node_id".into(), id(&item["nodeId"]));
                    r.insert("host_name".into(), host(item));
                    r.insert("unavailability_reason".into(), text(&s["unAvailabilityReason"]));
                } else {
                    r.insert("online_nodes".into(), count(&s["noOfOnlineNodes"]));
                    r.insert("offline_nodes".into(), count(&s["noOfOfflineNodes"]));
                    r.insert("total_nodes".into(), count(&s["totalNodes"]));
                }
                out.rows.push(r);
            }
        }
    }
    Ok(out)
}

/// The 10-minute bucket datasets: utilization, cloud overflow, call redirects, client types.
pub fn buckets(dataset: Dataset, body: &Value, ctx: &Ctx) -> Result<Parsed, String> {
    let mut out = Parsed::default();
    for coll in collections(body)? {
        let org = coll.org(ctx);
        let common = |time_col: &str, at: Value| {
            row(vec![
                ("poll_timestamp", ctx.poll_ts.into()),
                ("organization_id", org.clone()),
                ("aggregation_interval", text(&coll.interval)),
                ("from_timestamp", time(&coll.from)),
                ("to_timestamp", time(&coll.to)),
                (time_col, at),
            ])
        };
        for bucket in &coll.items {
            let at = time(&bucket["timestamp"]);
            if at.is_null() {
                out.skip(format!("a bucket without a valid timestamp: {}", bucket["timestamp"]));
                continue;
            }
            let clusters = bucket["clusters"].as_array().into_iter().flatten();
            match dataset {
                Dataset::Utilization => {
                    for c in clusters {
                        let m = &c["utilizationMetrics"];
                        let mut r = common("measure_timestamp", at.clone());
                        r.insert("cluster_id".into(), id(&c["clusterId"]));
                        r.insert("cluster_name".into(), text(&c["clusterName"]));
                        r.insert("peak_cpu".into(), float(&m["peakCpu"]));
                        r.insert("avg_cpu".into(), float(&m["avgCpu"]));
                        r.insert("active_calls".into(), count(&m["activeCalls"]));
                        r.insert("active_private_calls".into(), count(&m["activePrivateCalls"]));
                        out.rows.push(r);
                    }
                }
                Dataset::CloudOverflow => {
                    for d in bucket["overflowDetails"].as_array().into_iter().flatten() {
                        let mut r = common("overflow_timestamp", at.clone());
                        r.insert("overflow_reason".into(), text(&d["overflowReason"]));
                        r.insert("overflow_count".into(), count(&d["overflowCount"]));
                        r.insert("remediation".into(), text(&d["possibleRemediation"]));
                        out.rows.push(r);
                    }
                }
                Dataset::CallRedirects => {
                    for c in clusters {
                        for d in c["redirectDetails"].as_array().into_iter().flatten() {
                            let mut r = common("redirect_timestamp", at.clone());
                            r.insert("cluster_id".into(), id(&c["clusterId"]));
                            r.insert("cluster_name".into(), text(&c["clusterName"]));
                            r.insert("redirect_reason".into(), text(&d["redirectReason"]));
                            r.insert("redirect_count".into(), count(&d["redirectCount"]));
                            r.insert("remediation".into(), text(&d["possibleRemediation"]));
                            out.rows.push(r);
                        }
                    }
                }
                Dataset::ClientTypes => {
                    for c in clusters {
                        for d in c["clientTypeDistributionDetails"].as_array().into_iter().flatten() {
                            let mut r = common("distribution_timestamp", at.clone());
                            r.insert("cluster_id".into(), id(&c["clusterId"]));
                            r.insert("cluster_name".into(), text(&c["clusterName"]));
                            r.insert("device_type".into(), text(&d["deviceType"]));
                            r.insert("device_count".into(), count(&d["count"]));
                            r.insert("device_description".into(), text(&d["description"]));
                            out.rows.push(r);
                        }
                    }
                }
                other => unreachable!("{other:?} is not a bucket dataset"),
            }
        }
    }
    Ok(out)
}

/// Joins every entry of a list of texts (the sample client kept only the first).
fn joined(v: &Value) -> Value {
    match v {
        Value::Array(a) if a.is_empty() => Value::Null,
        Value::Array(a) => {
            Value::String(a.iter().map(|x| x.as_str().map(str::to_string).unwrap_or_else(|| x.to_string())).collect::<Vec<_>>().join("\n"))
        }
        other => text(other),
    }
}

/// Reachability, media health and network test results.
pub fn test_results(dataset: Dataset, body: &Value, ctx: &Ctx) -> Result<Parsed, String> {
    let mut out = Parsed::default();
    for coll in collections(body)? {
        let org = coll.org(ctx);
        for item in &coll.items {
            for c in item["clusters"].as_array().into_iter().flatten() {
                for n in c["nodes"].as_array().into_iter().flatten() {
                    let common = |at: Value, test_id: &Value, trigger: Value| {
                        row(vec![
                            ("poll_timestamp", ctx.poll_ts.into()),
                            ("from_timestamp", time(&coll.from)),
                            ("to_timestamp", time(&coll.to)),
                            ("organization_id", org.clone()),
                            ("cluster_id", id(&c["clusterId"])),
                            ("cluster_name", text(&c["clusterName"])),
                            ("node_id", id(&n["nodeId"])),
                            ("host_name", host(n)),
                            ("ip_address", text(&n["ipAddress"])),
                            ("test_timestamp", at),
                            ("test_id", id(test_id)),
                            ("trigger_type", trigger),
                        ])
                    };
                    match dataset {
                        Dataset::Reachability => {
                            for dest in n["testResults"].as_array().into_iter().flatten() {
                                for stun in dest["stunResults"].as_array().into_iter().flatten() {
                                    let at = time(&stun["timestamp"]);
                                    if at.is_null() {
                                        out.skip(format!("a reachability result without a valid timestamp: {}", stun["timestamp"]));
                                        continue;
                                    }
                                    for proto in ["udp", "tcp"] {
                                        for p in stun[proto].as_array().into_iter().flatten() {
                                            let mut r = common(at.clone(), &stun["id"], text(&stun["triggerType"]));
                                            r.insert("destination_cluster".into(), text(&dest["destinationCluster"]));
                                            r.insert("protocol".into(), proto.into());
                                            r.insert("port".into(), count(&p["port"]));
                                            r.insert(
                                                "reachability".into(),
                                                p["reachable"].as_bool().map(Value::Bool).unwrap_or(Value::Null),
                                            );
                                            r.insert("destination_ip_address".into(), text(&p["ipAddress"]));
                                            out.rows.push(r);
                                        }
                                    }
                                }
                            }
                        }
                        Dataset::MediaHealth => {
                            for run in n["mhmTestResults"].as_array().into_iter().flatten() {
                                let at = time(&run["timestamp"]);
                                if at.is_null() {
                                    out.skip(format!("a media health result without a valid timestamp: {}", run["timestamp"]));
                                    continue;
                                }
                                // Rule 6: the spec's MHM rows carry no trigger; the query's, if specific.
                                let trigger = match (&run["triggerType"], ctx.trigger_query) {
                                    (Value::String(t), _) => Value::String(t.clone()),
                                    (_, "All") => Value::Null,
                                    (_, q) => Value::String(q.into()),
                                };
                                for t in run["testResults"].as_array().into_iter().flatten() {
                                    let mut r = common(at.clone(), &run["id"], trigger.clone());
                                    r.insert("test_name".into(), text(&t["testName"]));
                                    r.insert("test_result".into(), text(&t["testResult"]));
                                    r.insert("failure_reason".into(), text(&t["failureReason"]));
                                    out.rows.push(r);
                                }
                            }
                        }
                        Dataset::NetworkTests => {
                            for run in n["testResults"].as_array().into_iter().flatten() {
                                let at = time(&run["timestamp"]);
                                if at.is_null() {
                                    out.skip(format!("a network test result without a valid timestamp: {}", run["timestamp"]));
                                    continue;
                                }
                                // Rule 5: `result` in the spec, `results` in the legacy shape.
                                let checks = run.get("result").filter(|v| !v.is_null()).or_else(|| run.get("results"));
                                for check in checks.and_then(Value::as_array).into_iter().flatten() {
                                    for s in check["results"].as_array().into_iter().flatten() {
                                        let mut r = common(at.clone(), &run["id"], text(&run["triggerType"]));
                                        r.insert("test_type".into(), text(&check["type"]));
                                        r.insert("service_type".into(), text(&s["serviceType"]));
                                        r.insert("test_result".into(), text(&s["testResult"]));
                                        r.insert("failure_reason".into(), joined(&s["failureDetails"]["possibleFailureReason"]));
                                        r.insert("possible_remediation".into(), joined(&s["failureDetails"]["possibleRemediation"]));
                                        out.rows.push(r);
                                    }
                                }
                            }
                        }
                        other => unreachable!("{other:?} is not a test dataset"),
                    }
                }
            }
        }
    }
    Ok(out)
}

/// All declared outputs with their schemas, the main one first.
pub fn output_schemas() -> Vec<(&'static str, SchemaRef)> {
    OUTPUTS.iter().map(|(n, _)| (*n, schema(n))).collect()
}
