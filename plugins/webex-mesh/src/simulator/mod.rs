//! `tributary simulate webex-mesh`: a local server that behaves like the Webex Video Mesh API for
//! demos and tests — OAuth (authorize redirect, code exchange, refresh with rotation and
//! configurable lifetimes), the 12 read endpoints the `webex_mesh` source uses under `/v1` (not the
//! per-cluster/per-node variants, on-demand tests or thresholds: see the README), an
//! organisation with clusters in four time zones, `TrackingID` headers, Webex error bodies, 400 on
//! bad parameters, 401 on bad tokens, 429 + `Retry-After` above a per-endpoint rate limit, and the
//! legacy response shapes behind a switch.

pub mod bodies;
pub mod model;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;
use chrono::{DateTime, Utc};
use rand::distr::{Alphanumeric, SampleString};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::time::{id_key, parse_time};
use bodies::TestKind;
pub use model::Model;

/// Which response shapes to serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Shapes {
    /// The published OpenAPI spec's shapes.
    #[default]
    Spec,
    /// The shapes the public sample client parses (flat bucket lists, top-level arrays, `hostName`
    /// + `ipAddress`, `results`, millisecond `created`).
    Legacy,
}

/// How the simulator behaves.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Fixes every ID and number; two simulators with the same seed serve the same organisation.
    pub seed: u64,
    pub org_name: String,
    pub client_id: String,
    pub client_secret: String,
    /// Webex: 1209599 s (14 days) and 7775999 s (90 days).
    pub access_token_ttl: Duration,
    pub refresh_token_ttl: Duration,
    /// Requests allowed per endpoint within `rate_window` (Webex documents 50 GETs / 5 min).
    pub rate_limit: u32,
    pub rate_window: Duration,
    pub shapes: Shapes,
    /// A token accepted without OAuth and never expiring (Webex's personal access token).
    pub personal_token: Option<String>,
    /// Longest `from`–`to` range the time-ranged reads accept.
    pub max_range: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 1,
            org_name: "Acme Media".into(),
            client_id: "C-simulated-integration".into(),
            client_secret: "simulated-client-secret".into(),
            access_token_ttl: Duration::from_secs(1_209_599),
            refresh_token_ttl: Duration::from_secs(7_775_999),
            rate_limit: 50,
            rate_window: Duration::from_secs(300),
            shapes: Shapes::Spec,
            personal_token: None,
            max_range: Duration::from_secs(7 * 86_400),
        }
    }
}

#[derive(Default)]
struct Tokens {
    /// access token → expiry
    access: HashMap<String, Instant>,
    /// refresh token → expiry
    refresh: HashMap<String, Instant>,
    /// authorization code → (redirect_uri, expiry)
    codes: HashMap<String, (String, Instant)>,
}

struct Sim {
    cfg: SimConfig,
    model: Model,
    tokens: Mutex<Tokens>,
    /// Per endpoint: times of the requests inside the rate window.
    calls: Mutex<HashMap<String, VecDeque<Instant>>>,
    /// Per endpoint (or `token:<grant>`): how often it answered each status.
    served: Mutex<HashMap<(String, u16), u64>>,
    /// Per endpoint: injected failures still to serve.
    faults: Mutex<HashMap<String, VecDeque<u16>>>,
}

/// A running simulator.
#[derive(Clone)]
pub struct SimHandle {
    pub addr: SocketAddr,
    sim: Arc<Sim>,
    stop: CancellationToken,
}

impl SimHandle {
    /// `http://addr/v1`: the source's `base_url`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }
    pub fn model(&self) -> &Model {
        &self.sim.model
    }
    /// How often `endpoint` (`/v1/videoMesh/utilization`, or `token:refresh_token`) answered `status`.
    pub fn served(&self, endpoint: &str, status: u16) -> u64 {
        self.sim.served.lock().unwrap().get(&(endpoint.to_string(), status)).copied().unwrap_or(0)
    }
    /// Every access token issued so far stops working (as if it had expired).
    pub fn expire_access_tokens(&self) {
        self.sim.tokens.lock().unwrap().access.clear();
    }
    /// The next `statuses.len()` requests to `endpoint` answer these statuses instead.
    pub fn inject(&self, endpoint: &str, statuses: &[u16]) {
        self.sim.faults.lock().unwrap().entry(endpoint.into()).or_default().extend(statuses);
    }
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

/// Serve on `listener` until the handle's `stop` (or the process ends).
pub fn spawn(listener: tokio::net::TcpListener, cfg: SimConfig) -> SimHandle {
    let addr = listener.local_addr().expect("bound");
    let sim = Arc::new(Sim {
        model: Model::new(cfg.seed, &cfg.org_name),
        cfg,
        tokens: Mutex::default(),
        calls: Mutex::default(),
        served: Mutex::default(),
        faults: Mutex::default(),
    });
    let stop = CancellationToken::new();
    let app = axum::Router::new().fallback(handle).with_state(sim.clone());
    let token = stop.clone();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).with_graceful_shutdown(token.cancelled_owned()).await;
    });
    SimHandle { addr, sim, stop }
}

/// `tributary simulate webex-mesh`: serve until `shutdown`.
pub async fn run(listen: SocketAddr, cfg: SimConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let listener =
        tokio::net::TcpListener::bind(listen).await.map_err(|e| anyhow::anyhow!("simulate webex-mesh: cannot listen on {listen}: {e}"))?;
    let handle = spawn(listener, cfg.clone());
    tracing::info!(
        "Webex Video Mesh simulator on {} (org `{}`, {} clusters; client_id `{}`; {:?} shapes; {} requests per {:?} per endpoint)",
        handle.base_url(),
        cfg.org_name,
        handle.model().org.clusters.len(),
        cfg.client_id,
        cfg.shapes,
        cfg.rate_limit,
        cfg.rate_window
    );
    shutdown.cancelled().await;
    handle.stop();
    Ok(())
}

fn tracking_id() -> String {
    let r = Alphanumeric.sample_string(&mut rand::rng(), 24).to_uppercase();
    format!("ROUTER_{}-{}-{}-{}", &r[0..8], &r[8..12], &r[12..16], &r[16..24])
}

fn webex_error(status: StatusCode, message: &str, tid: &str) -> Response {
    let body = json!({"message": message, "errors": [{"description": message}], "trackingId": tid});
    json_response(status, &body)
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .expect("valid response")
}

fn query_map(uri: &axum::http::Uri) -> HashMap<String, String> {
    uri.query().map(|q| url::form_urlencoded::parse(q.as_bytes()).into_owned().collect()).unwrap_or_default()
}

async fn handle(State(sim): State<Arc<Sim>>, req: Request) -> Response {
    let tid = tracking_id();
    let (req, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 64 * 1024).await.unwrap_or_default();
    let path = req.uri.path().to_string();
    let endpoint = if path == "/v1/access_token" {
        let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
        format!("token:{}", form.get("grant_type").map(String::as_str).unwrap_or("none"))
    } else if path.starts_with("/v1/organizations") {
        // Path-parameter variants count against their collection's budget.
        "/v1/organizations".to_string()
    } else if path.starts_with("/v1/videoMesh/nodes/availability") {
        "/v1/videoMesh/nodes/availability".to_string()
    } else {
        path.clone()
    };
    let (status, mut response) = sim.route(&req, &body, &path, &endpoint, &tid);
    *sim.served.lock().unwrap().entry((endpoint, status.as_u16())).or_default() += 1;
    response.headers_mut().insert("TrackingID", HeaderValue::from_str(&tid).expect("ascii"));
    response
}

impl Sim {
    fn route(&self, req: &Parts, body: &[u8], path: &str, endpoint: &str, tid: &str) -> (StatusCode, Response) {
        let query = query_map(&req.uri);
        if path == "/v1/authorize" && req.method == Method::GET {
            return self.authorize(&query, tid);
        }
        if path == "/v1/access_token" && req.method == Method::POST {
            let form: HashMap<String, String> = url::form_urlencoded::parse(body).into_owned().collect();
            return self.token(&req.headers, &form, tid);
        }
        if req.method != Method::GET {
            return err(StatusCode::METHOD_NOT_ALLOWED, "The requested method is not allowed for this resource.", tid);
        }
        if let Err(message) = self.check_token(&req.headers) {
            return err(StatusCode::UNAUTHORIZED, message, tid);
        }
        if let Some(retry_after) = self.rate_limited(endpoint) {
            let (s, mut r) = err(StatusCode::TOO_MANY_REQUESTS, "Too Many Requests: the rate limit for this API was exceeded.", tid);
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
            return (s, r);
        }
        if let Some(status) = self.faults.lock().unwrap().get_mut(endpoint).and_then(|q| q.pop_front()) {
            let status = StatusCode::from_u16(status).expect("valid injected status");
            let (s, mut r) = err(status, &format!("Simulated failure: {}", status.canonical_reason().unwrap_or("error")), tid);
            if status == StatusCode::TOO_MANY_REQUESTS {
                r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(1));
            }
            return (s, r);
        }
        match self.read(path, &query) {
            Ok(body) => (StatusCode::OK, json_response(StatusCode::OK, &body)),
            Err((status, message)) => err(status, &message, tid),
        }
    }

    fn authorize(&self, q: &HashMap<String, String>, tid: &str) -> (StatusCode, Response) {
        if q.get("response_type").map(String::as_str) != Some("code") {
            return err(StatusCode::BAD_REQUEST, "response_type must be `code`", tid);
        }
        if q.get("client_id") != Some(&self.cfg.client_id) {
            return err(StatusCode::BAD_REQUEST, "Invalid client_id", tid);
        }
        let Some(redirect) = q.get("redirect_uri") else {
            return err(StatusCode::BAD_REQUEST, "redirect_uri is required", tid);
        };
        let code = Alphanumeric.sample_string(&mut rand::rng(), 40);
        self.tokens.lock().unwrap().codes.insert(code.clone(), (redirect.clone(), Instant::now() + Duration::from_secs(600)));
        let mut location = url::Url::parse(redirect).map_err(|e| e.to_string());
        let Ok(location) = location.as_mut() else {
            return err(StatusCode::BAD_REQUEST, "redirect_uri is not a URL", tid);
        };
        location.query_pairs_mut().append_pair("code", &code);
        if let Some(state) = q.get("state") {
            location.query_pairs_mut().append_pair("state", state);
        }
        let r = Response::builder()
            .status(StatusCode::FOUND)
            .header(header::LOCATION, location.as_str())
            .body(Body::empty())
            .expect("valid response");
        (StatusCode::FOUND, r)
    }

    /// `POST /v1/access_token`: the `authorization_code` and `refresh_token` grants.
    fn token(&self, headers: &HeaderMap, form: &HashMap<String, String>, tid: &str) -> (StatusCode, Response) {
        let basic = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Basic "))
            .and_then(|b| base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b).ok())
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| s.split_once(':').map(|(a, b)| (a.to_string(), b.to_string())));
        let (id, secret) = basic.unwrap_or_else(|| {
            (form.get("client_id").cloned().unwrap_or_default(), form.get("client_secret").cloned().unwrap_or_default())
        });
        if id != self.cfg.client_id || secret != self.cfg.client_secret {
            return err(StatusCode::UNAUTHORIZED, "Invalid client_id or client_secret.", tid);
        }
        let now = Instant::now();
        let mut tokens = self.tokens.lock().unwrap();
        match form.get("grant_type").map(String::as_str) {
            Some("authorization_code") => {
                let code = form.get("code").cloned().unwrap_or_default();
                match tokens.codes.remove(&code) {
                    Some((redirect, expiry)) if expiry > now && form.get("redirect_uri") == Some(&redirect) => {}
                    Some(_) => {
                        return err(StatusCode::BAD_REQUEST, "The authorization code is expired or the redirect_uri does not match.", tid)
                    }
                    None => return err(StatusCode::BAD_REQUEST, "The authorization code is invalid or was already used.", tid),
                }
            }
            Some("refresh_token") => {
                let old = form.get("refresh_token").cloned().unwrap_or_default();
                match tokens.refresh.remove(&old) {
                    Some(expiry) if expiry > now => {}
                    _ => {
                        return err(StatusCode::BAD_REQUEST, "The refresh token provided is expired, revoked, malformed, or invalid.", tid)
                    }
                }
            }
            _ => return err(StatusCode::BAD_REQUEST, "grant_type must be authorization_code or refresh_token", tid),
        }
        let access = Alphanumeric.sample_string(&mut rand::rng(), 64);
        let refresh = Alphanumeric.sample_string(&mut rand::rng(), 64);
        tokens.access.insert(access.clone(), now + self.cfg.access_token_ttl);
        tokens.refresh.insert(refresh.clone(), now + self.cfg.refresh_token_ttl);
        let body = json!({
            "access_token": access,
            "expires_in": self.cfg.access_token_ttl.as_secs(),
            "refresh_token": refresh,
            "refresh_token_expires_in": self.cfg.refresh_token_ttl.as_secs(),
            "token_type": "Bearer",
            "scope": "spark-admin:video_mesh_api_read spark:organizations_read",
        });
        (StatusCode::OK, json_response(StatusCode::OK, &body))
    }

    fn check_token(&self, headers: &HeaderMap) -> Result<(), &'static str> {
        let Some(token) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")) else {
            return Err("The request requires a valid access token set in the Authorization request header.");
        };
        if self.cfg.personal_token.as_deref() == Some(token) {
            return Ok(());
        }
        match self.tokens.lock().unwrap().access.get(token) {
            Some(expiry) if *expiry > Instant::now() => Ok(()),
            Some(_) => Err("The access token expired."),
            None => Err("The request requires a valid access token set in the Authorization request header."),
        }
    }

    /// Seconds to wait when `endpoint` is over its budget, else records the request.
    fn rate_limited(&self, endpoint: &str) -> Option<u64> {
        let now = Instant::now();
        let mut calls = self.calls.lock().unwrap();
        let window = calls.entry(endpoint.to_string()).or_default();
        while window.front().is_some_and(|t| now.duration_since(*t) >= self.cfg.rate_window) {
            window.pop_front();
        }
        if window.len() >= self.cfg.rate_limit as usize {
            let oldest = *window.front().expect("non-empty at the limit");
            let wait = self.cfg.rate_window.saturating_sub(now.duration_since(oldest));
            return Some(wait.as_secs_f64().ceil().max(1.0) as u64);
        }
        window.push_back(now);
        None
    }

    fn read(&self, path: &str, q: &HashMap<String, String>) -> Result<Value, (StatusCode, String)> {
        let m = &self.model;
        let shapes = self.cfg.shapes;
        let bad = |msg: String| (StatusCode::BAD_REQUEST, msg);
        let param = |name: &str| q.get(name).filter(|v| !v.is_empty()).ok_or_else(|| bad(format!("Missing required parameter: {name}")));
        let org = || -> Result<(), (StatusCode, String)> {
            if id_key(param("orgId")?) != id_key(&m.org.id) {
                return Err((StatusCode::NOT_FOUND, "Organization not found or not accessible with this token.".into()));
            }
            Ok(())
        };
        let range = || -> Result<(DateTime<Utc>, DateTime<Utc>), (StatusCode, String)> {
            let from = param("from")?;
            let to = param("to")?;
            let from_t = parse_time(from).ok_or_else(|| bad(format!("Invalid value for from: `{from}` is not an ISO-8601 time")))?;
            let to_t = parse_time(to).ok_or_else(|| bad(format!("Invalid value for to: `{to}` is not an ISO-8601 time")))?;
            if from_t > to_t {
                return Err(bad("from must not be after to".into()));
            }
            if (to_t - from_t).to_std().unwrap_or_default() > self.cfg.max_range {
                return Err(bad(format!("The range between from and to must not exceed {} days", self.cfg.max_range.as_secs() / 86_400)));
            }
            Ok((from_t, to_t))
        };
        let trigger = || -> Result<String, (StatusCode, String)> {
            let t = param("triggerType")?;
            match t.as_str() {
                "All" | "Periodic" | "OnDemand" => Ok(t.clone()),
                other => Err(bad(format!("Invalid value for triggerType: `{other}`; expected OnDemand, Periodic or All"))),
            }
        };
        match path {
            "/v1/organizations" => Ok(bodies::organizations(m, shapes)),
            "/v1/videoMesh/clusters" => {
                org()?;
                Ok(bodies::clusters(m, shapes, Utc::now()))
            }
            "/v1/videoMesh/clusters/availability" => {
                org()?;
                let (from, to) = range()?;
                Ok(bodies::cluster_availability(m, shapes, from, to))
            }
            "/v1/videoMesh/nodes/availability" => {
                let cluster = param("clusterId")?;
                let (from, to) = range()?;
                bodies::node_availability(m, shapes, cluster, from, to)
                    .ok_or_else(|| (StatusCode::NOT_FOUND, format!("Cluster not found: {cluster}")))
            }
            "/v1/videoMesh/utilization" => {
                org()?;
                let (from, to) = range()?;
                Ok(bodies::utilization(m, shapes, from, to))
            }
            "/v1/videoMesh/cloudOverflow" => {
                org()?;
                let (from, to) = range()?;
                Ok(bodies::cloud_overflow(m, shapes, from, to))
            }
            "/v1/videoMesh/callRedirects" => {
                org()?;
                let (from, to) = range()?;
                Ok(bodies::call_redirects(m, shapes, from, to))
            }
            "/v1/videoMesh/clientTypeDistribution" => {
                org()?;
                let (from, to) = range()?;
                let all: Vec<String> = model::DEVICE_TYPES.iter().map(|d| d.0.to_string()).collect();
                let types: Vec<String> = match (q.get("deviceType"), shapes) {
                    (Some(list), _) => list.split(',').map(|s| s.trim().to_string()).collect(),
                    (None, Shapes::Legacy) => all.clone(),
                    (None, Shapes::Spec) => return Err(bad("Missing required parameter: deviceType".into())),
                };
                if let Some(unknown) = types.iter().find(|t| !all.contains(t)) {
                    return Err(bad(format!("Invalid value for deviceType: `{unknown}`")));
                }
                Ok(bodies::client_types(m, shapes, from, to, &types))
            }
            "/v1/videoMesh/testResults/reachabilityTest"
            | "/v1/videoMesh/testResults/mediaHealthMonitorTest"
            | "/v1/videoMesh/testResults/networkTest" => {
                org()?;
                let trigger = trigger()?;
                let (from, to) = range()?;
                let kind = match path.rsplit('/').next() {
                    Some("reachabilityTest") => TestKind::Reachability,
                    Some("mediaHealthMonitorTest") => TestKind::MediaHealth,
                    _ => TestKind::Network,
                };
                Ok(bodies::test_results(m, shapes, kind, from, to, &trigger))
            }
            _ if path.starts_with("/v1/organizations/") => {
                let id = &path["/v1/organizations/".len()..];
                if id_key(id) != id_key(&m.org.id) {
                    return Err((StatusCode::NOT_FOUND, "Organization not found or not accessible with this token.".into()));
                }
                Ok(bodies::organizations(m, shapes)["items"][0].clone())
            }
            _ => Err((StatusCode::NOT_FOUND, format!("The requested resource could not be found: {path}"))),
        }
    }
}

fn err(status: StatusCode, message: &str, tid: &str) -> (StatusCode, Response) {
    (status, webex_error(status, message, tid))
}
