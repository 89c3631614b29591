//! `/health`, `/metrics` (Prometheus text) and `/tap/{output}` (live rows) for a running pipeline,
//! on localhost by default.

use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use datafusion::arrow::datatypes::SchemaRef;
use tokio::sync::mpsc::WeakSender;
use tokio_util::sync::CancellationToken;
use tributary_sdk::dead_letter::rows_as_json;
use tributary_sdk::{ComponentMetrics, Delivery, Tap};

use crate::config::Kind;
use crate::sql::SqlTransform;

pub(crate) mod tap_filter;

/// What the admin endpoints know about one component.
pub struct ComponentInfo {
    pub id: String,
    pub kind: Kind,
    pub type_name: String,
    pub metrics: Arc<ComponentMetrics>,
    /// The component's input channel (transforms and sinks), for buffer fill.
    pub input: Option<WeakSender<Delivery>>,
    /// A source with `buffer: {type: disk}` (its bytes on disk are a gauge).
    pub disk_buffer: bool,
}

#[derive(Default)]
pub struct AdminState {
    components: RwLock<Vec<ComponentInfo>>,
    /// Every output by its `inputs:` name, with its schema, for `tributary tap`.
    taps: RwLock<HashMap<String, (SchemaRef, Arc<Tap>)>>,
    stopping: AtomicBool,
    /// A component failing this long makes `/health` answer `degraded`.
    degraded_after: std::time::Duration,
    tap_access: TapAccess,
    config: std::sync::Mutex<ConfigGeneration>,
    /// The run's lookup tables (`tables:`), with what their loads came to.
    tables: RwLock<Vec<(Arc<crate::sql::LookupTable>, Arc<crate::tables::TableStats>)>>,
}

/// Which version of the pipeline file runs: 1 at start, one more per applied reload.
struct ConfigGeneration {
    generation: u64,
    /// RFC 3339, UTC.
    loaded_at: String,
    /// Why the last reload was refused (cleared by the next applied one).
    last_reload_error: Option<String>,
}

impl Default for ConfigGeneration {
    fn default() -> Self {
        ConfigGeneration { generation: 1, loaded_at: now_rfc3339(), last_reload_error: None }
    }
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// Who may tap and how much one tap may take.
#[derive(Clone)]
pub struct TapAccess {
    /// When set, `/tap` needs `Authorization: Bearer <token>` (it serves rows and dead letters).
    pub token: Option<tributary_sdk::Secret>,
    /// Rows one tap streams at most (`limit` can ask for fewer).
    pub max_rows: u64,
    /// How long one tap stays open at most.
    pub max_duration: std::time::Duration,
}

impl Default for TapAccess {
    fn default() -> Self {
        TapAccess { token: None, max_rows: 10_000, max_duration: std::time::Duration::from_secs(600) }
    }
}

impl AdminState {
    pub fn new(degraded_after: std::time::Duration) -> Self {
        AdminState { degraded_after, ..Default::default() }
    }

    pub fn with_tap_access(mut self, access: TapAccess) -> Self {
        self.tap_access = access;
        self
    }

    pub fn set_taps(&self, taps: HashMap<String, (SchemaRef, Arc<Tap>)>) {
        *self.taps.write().expect("admin lock") = taps;
    }

    pub fn set_tables(&self, tables: &[crate::tables::PlannedTable]) {
        *self.tables.write().expect("admin lock") = tables.iter().map(|t| (t.table.clone(), t.stats.clone())).collect();
    }

    pub fn set_components(&self, infos: Vec<ComponentInfo>) {
        *self.components.write().expect("admin lock") = infos;
    }

    /// A reload added an output (of a component it added).
    pub fn add_tap(&self, name: String, schema: SchemaRef, tap: Arc<Tap>) {
        self.taps.write().expect("admin lock").insert(name, (schema, tap));
    }

    /// A reload added a component.
    pub fn add_component(&self, info: ComponentInfo) {
        self.components.write().expect("admin lock").push(info);
    }

    /// A reload removed a component.
    pub fn remove_component(&self, id: &str) {
        self.components.write().expect("admin lock").retain(|c| c.id != id);
    }
    /// A reload was applied (the generation goes up) or refused (the reason is kept).
    pub fn record_reload(&self, outcome: Result<(), String>) {
        let mut c = self.config.lock().unwrap_or_else(|e| e.into_inner());
        match outcome {
            Ok(()) => {
                c.generation += 1;
                c.loaded_at = now_rfc3339();
                c.last_reload_error = None;
            }
            Err(e) => c.last_reload_error = Some(e),
        }
    }

    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// Prometheus text exposition of every component's counters.
    pub fn render_metrics(&self) -> String {
        let comps = self.components.read().expect("admin lock");
        let mut out = String::new();
        type Get = fn(&ComponentMetrics) -> u64;
        let counters: [(&str, &str, Get); 14] = [
            ("rows_in_total", "Rows received by the component.", |m| m.rows_in.get()),
            ("rows_out_total", "Rows sent by the component to its main or named outputs.", |m| m.rows_out.get()),
            ("rows_written_total", "Rows a sink durably wrote (dead-lettered rows not included).", |m| m.rows_written.get()),
            ("bytes_in_total", "Bytes received (payload bytes for sources, Arrow memory for others).", |m| m.bytes_in.get()),
            ("bytes_out_total", "Arrow memory of the rows sent.", |m| m.bytes_out.get()),
            ("batches_in_total", "Batches received.", |m| m.batches_in.get()),
            ("batches_out_total", "Batches sent.", |m| m.batches_out.get()),
            ("errors_total", "Errors: bad input, failed writes, failed queries, failed tasks.", |m| m.errors.get()),
            ("dead_letters_total", "Rows or payloads sent to the component's dead-letter output.", |m| m.dead_letters.get()),
            ("retries_total", "Retried operations.", |m| m.retries.get()),
            ("dropped_total", "Rows dropped: the pipeline was busy and the source cannot push back (Redis Pub/Sub), or its disk buffer was full (`when_full: drop_newest`).", |m| {
                m.dropped.get()
            }),
            ("buffer_fsyncs_total", "Disk buffer fsyncs (one serves every append waiting at the time).", |m| m.buffer_fsyncs.get()),
            ("replay_skipped_rows_total", "Replayed rows an exactly-once sink had written already (their position was stored with them): dropped before the sink; for a Kafka source, messages every exactly-once sink had written, not sent again.", |m| m.replay_skipped.get()),
            ("buffer_replayed_rows_total", "Rows a disk buffer replayed at start (stored by an earlier run, not yet written by every sink).", |m| m.buffer_replayed.get()),
        ];
        for (name, help, get) in counters {
            let _ = writeln!(out, "# HELP tributary_component_{name} {help}\n# TYPE tributary_component_{name} counter");
            for c in comps.iter() {
                let _ = writeln!(out, "tributary_component_{name}{{{}}} {}", labels(c), get(&c.metrics));
            }
        }
        let _ = writeln!(
            out,
            "# HELP tributary_component_buffer_fill_ratio How full the component's input buffer is (0 to 1).\n# TYPE tributary_component_buffer_fill_ratio gauge"
        );
        for c in comps.iter() {
            let fill = c.input.as_ref().and_then(|w| w.upgrade()).map(|s| 1.0 - s.capacity() as f64 / s.max_capacity() as f64);
            if let Some(fill) = fill {
                let _ = writeln!(out, "tributary_component_buffer_fill_ratio{{{}}} {fill}", labels(c));
            }
        }
        let _ = writeln!(
            out,
            "# HELP tributary_component_failing_seconds How long the component has been retrying a transient failure (0 when it is not).\n# TYPE tributary_component_failing_seconds gauge"
        );
        let now = tributary_sdk::now_us();
        for c in comps.iter() {
            let seconds = c.metrics.failing().map_or(0.0, |(since, _)| (now - since) as f64 / 1e6);
            let _ = writeln!(out, "tributary_component_failing_seconds{{{}}} {seconds}", labels(c));
        }
        let _ = writeln!(
            out,
            "# HELP tributary_component_disk_buffer_bytes Bytes a source's disk buffer holds on disk (not yet reclaimed).\n# TYPE tributary_component_disk_buffer_bytes gauge"
        );
        for c in comps.iter().filter(|c| c.disk_buffer) {
            let _ = writeln!(out, "tributary_component_disk_buffer_bytes{{{}}} {}", labels(c), c.metrics.buffer_bytes.get());
        }
        let sinks: Vec<&ComponentInfo> = comps.iter().filter(|c| c.kind == Kind::Sink).collect();
        let _ = writeln!(
            out,
            "# HELP tributary_sink_last_write_timestamp_seconds When the sink last made rows durable (0: not yet).\n# TYPE tributary_sink_last_write_timestamp_seconds gauge"
        );
        for c in &sinks {
            let _ = writeln!(
                out,
                "tributary_sink_last_write_timestamp_seconds{{{}}} {}",
                labels(c),
                c.metrics.last_write_us.get() as f64 / 1e6
            );
        }
        let _ = writeln!(
            out,
            "# HELP tributary_sink_last_write_duration_seconds How long the sink's last durable write or flush took, retries included.\n# TYPE tributary_sink_last_write_duration_seconds gauge"
        );
        for c in &sinks {
            let _ = writeln!(
                out,
                "tributary_sink_last_write_duration_seconds{{{}}} {}",
                labels(c),
                c.metrics.last_write_latency_us.get() as f64 / 1e6
            );
        }
        self.render_table_metrics(&mut out);
        let _ = writeln!(out, "# HELP tributary_up 1 while the pipeline runs, 0 while it stops.\n# TYPE tributary_up gauge");
        let _ = writeln!(out, "tributary_up {}", if self.stopping.load(Ordering::SeqCst) { 0 } else { 1 });
        out
    }

    /// The lookup tables' sizes and loads.
    fn render_table_metrics(&self, out: &mut String) {
        let tables = self.tables.read().expect("admin lock");
        if tables.is_empty() {
            return;
        }
        type Get = fn(&crate::sql::lookup::Snapshot, &crate::tables::TableStats) -> u64;
        let series: [(&str, &str, &str, Get); 4] = [
            ("rows", "gauge", "Rows the lookup table holds now.", |s, _| s.rows as u64),
            ("bytes", "gauge", "Memory the lookup table's rows take (Arrow buffers).", |s, _| s.bytes as u64),
            ("loads_total", "counter", "Loads of the lookup table that succeeded (the first one and each refresh).", |_, t| {
                t.loads.load(Ordering::Relaxed)
            }),
            ("refresh_failures_total", "counter", "Loads that failed; the table kept its previous rows.", |_, t| {
                t.failures.load(Ordering::Relaxed)
            }),
        ];
        for (name, kind, help, get) in series {
            let _ = writeln!(out, "# HELP tributary_table_{name} {help}\n# TYPE tributary_table_{name} {kind}");
            for (table, stats) in tables.iter() {
                let _ = writeln!(out, "tributary_table_{name}{{table=\"{}\"}} {}", table.name, get(&table.snapshot(), stats));
            }
        }
    }

    /// `ok`, `degraded` (a component failing for `degraded_after` or longer; named in
    /// `failing`), or `stopping`. Only `ok` answers 200.
    pub fn health(&self) -> (StatusCode, String) {
        let comps = self.components.read().expect("admin lock");
        let now = tributary_sdk::now_us();
        let mut failing = Vec::new();
        let components: serde_json::Map<String, serde_json::Value> = comps
            .iter()
            .map(|c| {
                let mut entry = serde_json::json!({"kind": c.kind.label(), "type": c.type_name, "errors": c.metrics.errors.get()});
                if let Some((since, error)) = c.metrics.failing() {
                    let seconds = ((now - since).max(0) / 1_000_000) as u64;
                    entry["failing_for_s"] = seconds.into();
                    entry["last_error"] = error.into();
                    if seconds >= self.degraded_after.as_secs() {
                        failing.push(c.id.clone());
                    }
                }
                (c.id.clone(), entry)
            })
            .collect();
        let stopping = self.stopping.load(Ordering::SeqCst);
        let status = if stopping {
            "stopping"
        } else if !failing.is_empty() {
            "degraded"
        } else {
            "ok"
        };
        let config = {
            let c = self.config.lock().unwrap_or_else(|e| e.into_inner());
            let mut config = serde_json::json!({"generation": c.generation, "loaded_at": c.loaded_at});
            if let Some(e) = &c.last_reload_error {
                config["last_reload_error"] = e.clone().into();
            }
            config
        };
        let mut body = serde_json::json!({"status": status, "config": config, "components": components});
        if !failing.is_empty() {
            body["failing"] = failing.into();
        }
        (if status == "ok" { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, body.to_string())
    }
}

fn labels(c: &ComponentInfo) -> String {
    format!("component=\"{}\",kind=\"{}\",type=\"{}\"", c.id, c.kind.label(), c.type_name)
}

async fn metrics(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.render_metrics())
}

async fn health(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    let (status, body) = state.health();
    (status, [(header::CONTENT_TYPE, "application/json")], body)
}

#[derive(Debug, serde::Deserialize)]
struct TapParams {
    /// A SQL predicate over the output's columns, e.g. `latency_ms > 500`.
    #[serde(rename = "where")]
    filter: Option<String>,
    limit: Option<u64>,
}

/// Batches an observer may lag behind before it is dropped.
const TAP_CAPACITY: usize = 64;

/// `GET /tap/{output}?where=SQL&limit=N`: live rows of one output as JSON lines, filtered with
/// DataFusion on this task (not the pipeline's). The last line, `{"tap_closed": "…"}`, says why
/// the stream ended.
async fn tap(
    State(state): State<Arc<AdminState>>,
    Path(name): Path<String>,
    Query(params): Query<TapParams>,
    headers: axum::http::HeaderMap,
) -> Response {
    let access = state.tap_access.clone();
    if let Some(token) = &access.token {
        if !bearer(&headers).is_some_and(|g| token.matches(g)) {
            let msg =
                "the admin token is required for /tap (`Authorization: Bearer …`; `tributary tap --token` or TRIBUTARY_ADMIN_TOKEN)\n";
            return (StatusCode::UNAUTHORIZED, msg).into_response();
        }
    }
    let found = state.taps.read().expect("admin lock").get(&name).cloned();
    let Some((schema, tap)) = found else {
        let mut names: Vec<String> = state.taps.read().expect("admin lock").keys().cloned().collect();
        names.sort();
        let msg = format!("no output `{name}`; outputs: {}\n", names.join(", "));
        return (StatusCode::NOT_FOUND, msg).into_response();
    };
    let filter = match &params.filter {
        None => None,
        Some(pred) => {
            let planned = match tap_filter::check(pred) {
                Ok(()) => SqlTransform::plan(&format!("SELECT * FROM tapped WHERE {pred}"), &[("tapped".into(), schema.clone())], &[])
                    .await
                    .map_err(|e| e.to_string()),
                Err(why) => Err(why),
            };
            match planned {
                Ok(plan) => Some(plan),
                Err(why) => return (StatusCode::BAD_REQUEST, format!("invalid --where `{pred}`: {why}\n")).into_response(),
            }
        }
    };
    let (rx, fell_behind) = tap.subscribe(TAP_CAPACITY);
    let limit = params.limit.unwrap_or(access.max_rows).min(access.max_rows);
    let deadline = tokio::time::Instant::now() + access.max_duration;
    let stream = futures::stream::unfold((rx, filter, 0u64, false), move |(mut rx, filter, sent, done)| {
        let fell_behind = fell_behind.clone();
        async move {
            if done {
                return None;
            }
            loop {
                if sent >= limit {
                    let why = if limit == access.max_rows { "row budget (admin.tap_max_rows) reached" } else { "limit reached" };
                    return Some((closing(why), (rx, filter, sent, true)));
                }
                let Ok(next) = tokio::time::timeout_at(deadline, rx.recv()).await else {
                    return Some((closing("time budget (admin.tap_max_duration) used up"), (rx, filter, sent, true)));
                };
                let Some(batch) = next else {
                    let why = if fell_behind.load(Ordering::Acquire) {
                        "dropped: this tap fell behind the pipeline"
                    } else {
                        "the pipeline stopped"
                    };
                    return Some((closing(why), (rx, filter, sent, true)));
                };
                let rows = match &filter {
                    None => vec![batch],
                    Some(f) => match f.execute(0, batch).await {
                        Ok(rows) => rows,
                        Err(e) => return Some((closing(&format!("filter failed: {e}")), (rx, filter, sent, true))),
                    },
                };
                let mut text = String::new();
                let mut n = sent;
                'rows: for b in &rows {
                    for line in rows_as_json(b) {
                        if n >= limit {
                            break 'rows;
                        }
                        text.push_str(&line);
                        text.push('\n');
                        n += 1;
                    }
                }
                if !text.is_empty() {
                    return Some((Ok::<_, std::convert::Infallible>(text), (rx, filter, n, false)));
                }
            }
        }
    });
    ([(header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(stream)).into_response()
}

/// The `Authorization: Bearer …` token of a request.
fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "))
}

fn closing(reason: &str) -> Result<String, std::convert::Infallible> {
    Ok(format!("{}\n", serde_json::json!({ "tap_closed": reason })))
}

/// Bind the admin address (failing fast if it is taken) and serve until `stop` is cancelled.
/// `charts` adds the chart page and its API (`/`, `/api/…`) over the pipeline's Parquet outputs;
/// with `admin.token` set, the API needs the token too (the page takes it from `#token=…`).
pub async fn serve(
    address: SocketAddr,
    state: Arc<AdminState>,
    charts: crate::serve::Lake,
    stop: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|e| anyhow::anyhow!("cannot serve the admin API on {address}: {e} (set `admin.address` in the pipeline, or `--admin`)"))?;
    let bound = listener.local_addr()?;
    let token = state.tap_access.token.clone();
    let charts =
        crate::serve::router(charts).layer(axum::middleware::from_fn(move |req: axum::extract::Request, next: axum::middleware::Next| {
            let token = token.clone();
            async move {
                let needs_token = req.uri().path().starts_with("/api/");
                if let (true, Some(token)) = (needs_token, &token) {
                    if !bearer(req.headers()).is_some_and(|g| token.matches(g)) {
                        let msg = "the admin token is required for /api (`Authorization: Bearer …`; the page takes it from `#token=…`)\n";
                        return (StatusCode::UNAUTHORIZED, msg).into_response();
                    }
                }
                next.run(req).await
            }
        }));
    let app = Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/tap/{output}", get(tap))
        .with_state(state)
        .merge(charts);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await }).await;
    });
    tracing::info!(address = %bound, "admin API: /health, /metrics, /tap/{{output}}; charts of the parquet outputs at http://{bound}/");
    Ok(bound)
}
