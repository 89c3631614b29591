//! The datasets: what each output holds, and how a response body (spec or legacy shape) becomes
//! its rows. Each output is one table in [`tables`] that gives both its schema and its rows.

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use serde::Deserialize;

use serde_json::{Map, Value};
use tributary_sdk::config::{DeclaredSchema, FieldType};
use tributary_sdk::json::{json_kind, JsonRows};

use crate::time::id_key;
use mapping::Table;

pub mod mapping;
pub mod tables;

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

    /// The table its response fills (the clusters' also fills [`tables::NODE_DETAILS`]).
    pub fn table(self) -> &'static Table {
        use tables::*;
        match self {
            Dataset::Clusters => &CLUSTER_DETAILS,
            Dataset::ClusterAvailability => &CLUSTER_AVAILABILITY,
            Dataset::NodeAvailability => &NODE_AVAILABILITY,
            Dataset::Utilization => &UTILIZATION,
            Dataset::CloudOverflow => &CLOUD_OVERFLOW,
            Dataset::CallRedirects => &CALL_REDIRECTS,
            Dataset::ClientTypes => &CLIENT_TYPES,
            Dataset::Reachability => &REACHABILITY,
            Dataset::MediaHealth => &MEDIA_HEALTH,
            Dataset::NetworkTests => &NETWORK_TESTS,
        }
    }

    /// The output its rows go to.
    pub fn output(self) -> &'static str {
        self.table().output
    }

    /// The schema of that output.
    pub fn schema(self) -> SchemaRef {
        JsonRows::new(&self.table().declared(), None).schema().clone()
    }

    pub fn is_test_results(self) -> bool {
        matches!(self, Dataset::Reachability | Dataset::MediaHealth | Dataset::NetworkTests)
    }
}

use FieldType::{Float, Int, String as Str, Timestamp as Ts};

/// The main output: one row per API call, written by the poller rather than read from a body.
pub const CALL_LOG: &[(&str, FieldType)] = &[
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
];

/// Encodes rows of one output into Arrow.
fn encoder(output: &str) -> Result<JsonRows, String> {
    let declared = match output {
        "" => declared(CALL_LOG),
        _ => tables::ALL.iter().find(|t| t.output == output).ok_or_else(|| format!("no output `{output}`"))?.declared(),
    };
    Ok(JsonRows::new(&declared, None))
}

/// All declared outputs with their schemas, the main one first.
pub fn output_schemas() -> Vec<(&'static str, SchemaRef)> {
    let declared = std::iter::once(("", declared(CALL_LOG))).chain(tables::ALL.iter().map(|t| (t.output, t.declared())));
    declared.map(|(output, d)| (output, JsonRows::new(&d, None).schema().clone())).collect()
}

fn declared(columns: &[(&str, FieldType)]) -> DeclaredSchema {
    DeclaredSchema(columns.iter().map(|(n, t)| (n.to_string(), *t)).collect())
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
    let (batch, errors) = encoder(output)?.decode_lines(&ndjson);
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

impl Collection {
    fn org(&self, ctx: &Ctx) -> Value {
        Value::String(self.org_id.clone().unwrap_or_else(|| id_key(ctx.org_id)))
    }

    /// A field carried from the response or its per-org wrapper.
    fn carried(&self, field: &str) -> &Value {
        match field {
            "from" => &self.from,
            "to" => &self.to,
            "aggregationInterval" => &self.interval,
            _ => &Value::Null,
        }
    }
}

fn read(table: &Table, collections: &[Collection], ctx: &Ctx) -> Parsed {
    let mut out = Parsed::default();
    for coll in collections {
        table.read(coll, ctx, &mut out);
    }
    out
}

/// Parses `/organizations`.
pub fn organizations(body: &Value, poll_ts: &str) -> Result<Parsed, String> {
    let ctx = Ctx { org_id: "", poll_ts, trigger_query: "All" };
    Ok(read(&tables::ORGANIZATIONS, &collections(body)?, &ctx))
}

/// Cluster rows (one per cluster × node), node rows, and the clusters (ID, name) found.
pub type ClusterLists = (Parsed, Parsed, Vec<(String, String)>);

/// Parses `/videoMesh/clusters`: see [`ClusterLists`].
pub fn clusters(body: &Value, ctx: &Ctx) -> Result<ClusterLists, String> {
    let collections = collections(body)?;
    let details = read(&tables::CLUSTER_DETAILS, &collections, ctx);
    // The same elements are skipped twice: report them once, with the details.
    let nodes = Parsed { skipped: 0, first_problem: None, ..read(&tables::NODE_DETAILS, &collections, ctx) };
    let found = collections
        .iter()
        .flat_map(|c| &c.items)
        .filter_map(|c| Some((c["clusterId"].as_str()?.to_string(), c["clusterName"].as_str().unwrap_or_default().to_string())))
        .collect();
    Ok((details, nodes, found))
}

/// Parses the response of a time-ranged dataset (every one but the clusters) into its rows.
pub fn rows(dataset: Dataset, body: &Value, ctx: &Ctx) -> Result<Parsed, String> {
    Ok(read(dataset.table(), &collections(body)?, ctx))
}
