//! A real S3 protocol server for tests (moto in server mode, from PyPI), and a proxy in front of it
//! that injects what a cloud bucket does to clients: throttling (503 SlowDown) and uploads that
//! never finish (a client killed mid-upload).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::free_port;

/// Access key the tests use with moto (which accepts any).
pub const ACCESS_KEY: &str = "tributary-test";
pub const SECRET_KEY: &str = "tributary-test-secret";
pub const REGION: &str = "us-east-1";

/// `moto_server` (PyPI `moto[server]`): `MOTO_SERVER`, or found on PATH or beside python3's
/// scripts. Missing is a failure, not a skip (`./scripts/test` installs it).
pub fn moto_server() -> String {
    if let Ok(path) = std::env::var("MOTO_SERVER") {
        return path;
    }
    if let Ok(out) = std::process::Command::new("sh").args(["-c", "command -v moto_server"]).output() {
        let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if out.status.success() && !path.is_empty() {
            return path;
        }
    }
    let out = std::process::Command::new("python3")
        .args(["-c", "import sysconfig, os; print(os.path.join(sysconfig.get_path('scripts'), 'moto_server'))"])
        .output()
        .expect("python3 runs");
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success() && std::path::Path::new(&path).exists(),
        "moto_server (an S3 protocol server) is not installed; this test needs it. `./scripts/test` installs it, \
         or by hand: python3 -m pip install 'moto[server]' (point MOTO_SERVER elsewhere to use another)"
    );
    path
}

/// A moto S3 server on a free port, stopped when dropped.
pub struct MotoServer {
    _child: tokio::process::Child,
    pub port: u16,
    client: reqwest::Client,
}

impl MotoServer {
    /// Starts a server (a port lost to another test between `free_port` and the bind: started
    /// again on a new one).
    pub async fn start() -> MotoServer {
        for _ in 0..3 {
            let port = free_port();
            let mut child = tokio::process::Command::new(moto_server())
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("moto_server starts");
            let client = reqwest::Client::new();
            for _ in 0..600 {
                if client.get(format!("http://127.0.0.1:{port}/moto-api/")).send().await.is_ok() {
                    return MotoServer { _child: child, port, client };
                }
                if let Ok(Some(status)) = child.try_wait() {
                    eprintln!("moto_server on {port} exited ({status}) before listening; retrying on a new port");
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        panic!("moto_server did not start listening after 3 tries");
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates `bucket` (moto takes unsigned requests).
    pub async fn create_bucket(&self, bucket: &str) {
        let res = self.client.put(format!("{}/{bucket}", self.endpoint())).send().await.unwrap();
        assert!(res.status().is_success(), "creating bucket {bucket}: {}", res.status());
    }

    /// Keys of the objects under `prefix`, in key order (every page).
    pub async fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut query = vec![("list-type", "2".to_string()), ("prefix", prefix.to_string())];
            if let Some(t) = &token {
                query.push(("continuation-token", t.clone()));
            }
            let body = self.client.get(format!("{}/{bucket}", self.endpoint())).query(&query).send().await.unwrap().text().await.unwrap();
            keys.extend(xml_values(&body, "Key"));
            token = xml_values(&body, "NextContinuationToken").into_iter().next();
            if token.is_none() {
                return keys;
            }
        }
    }

    /// Multipart uploads started and neither completed nor aborted.
    pub async fn unfinished_uploads(&self, bucket: &str) -> usize {
        let body = self.client.get(format!("{}/{bucket}?uploads", self.endpoint())).send().await.unwrap().text().await.unwrap();
        xml_values(&body, "UploadId").len()
    }
}

/// The texts of every `<tag>…</tag>` in `xml` (S3's listings hold no nesting that matters here).
fn xml_values(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    xml.split(&open).skip(1).filter_map(|s| s.split_once(&close).map(|(v, _)| v.replace("&amp;", "&"))).collect()
}

/// An HTTP proxy in front of an S3 server that records every request and can answer PUTs with
/// `503 SlowDown` or hold multipart completions forever.
#[derive(Clone)]
pub struct S3Proxy {
    pub port: u16,
    state: Arc<ProxyState>,
}

struct ProxyState {
    upstream: String,
    client: reqwest::Client,
    requests: Mutex<Vec<String>>,
    throttle_puts: AtomicUsize,
    throttled: AtomicUsize,
    hold_completions: AtomicBool,
    held: AtomicUsize,
    /// PUTs to keys holding this are forwarded, and then answered 503 as if the answer was lost.
    lose_answers: Mutex<Option<String>>,
    lost: AtomicUsize,
}

impl S3Proxy {
    pub async fn start(upstream: &str) -> S3Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(ProxyState {
            upstream: upstream.trim_end_matches('/').to_string(),
            client: reqwest::Client::new(),
            requests: Mutex::new(Vec::new()),
            throttle_puts: AtomicUsize::new(0),
            throttled: AtomicUsize::new(0),
            hold_completions: AtomicBool::new(false),
            held: AtomicUsize::new(0),
            lose_answers: Mutex::new(None),
            lost: AtomicUsize::new(0),
        });
        let app = axum::Router::new().fallback(forward).with_state(state.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        S3Proxy { port, state }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The next `n` PUT requests (objects and parts) are answered `503 SlowDown`.
    pub fn throttle_puts(&self, n: usize) {
        self.state.throttle_puts.store(n, Ordering::SeqCst);
    }

    /// PUTs answered 503 so far.
    pub fn throttled(&self) -> usize {
        self.state.throttled.load(Ordering::SeqCst)
    }

    /// Hold (never answer, never forward) every `CompleteMultipartUpload` from now on, or not.
    pub fn hold_completions(&self, on: bool) {
        self.state.hold_completions.store(on, Ordering::SeqCst);
    }

    /// Completions held so far.
    pub fn held(&self) -> usize {
        self.state.held.load(Ordering::SeqCst)
    }

    /// Every PUT whose key holds `key_part` from now on (`None`: none) reaches the server, which
    /// stores it, but its client is answered `503 SlowDown`: the answer to a write that happened
    /// was lost on the way.
    pub fn lose_answers_to_puts(&self, key_part: Option<&str>) {
        *self.state.lose_answers.lock().unwrap() = key_part.map(str::to_string);
    }

    /// Answers lost so far.
    pub fn lost(&self) -> usize {
        self.state.lost.load(Ordering::SeqCst)
    }

    /// Every request seen, as `METHOD path?query`.
    pub fn requests(&self) -> Vec<String> {
        self.state.requests.lock().unwrap().clone()
    }

    pub fn clear_requests(&self) {
        self.state.requests.lock().unwrap().clear();
    }
}

const SLOW_DOWN: &str =
    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";

async fn forward(State(state): State<Arc<ProxyState>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let target = parts.uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_default();
    state.requests.lock().unwrap().push(format!("{} {}", parts.method, percent_decoded(&target)));
    let Ok(body) = axum::body::to_bytes(body, usize::MAX).await else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    if parts.method == Method::PUT && state.throttle_puts.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
        state.throttled.fetch_add(1, Ordering::SeqCst);
        return (StatusCode::SERVICE_UNAVAILABLE, [("content-type", "application/xml")], SLOW_DOWN).into_response();
    }
    if parts.method == Method::POST && target.contains("uploadId=") && state.hold_completions.load(Ordering::SeqCst) {
        state.held.fetch_add(1, Ordering::SeqCst);
        std::future::pending::<()>().await;
    }
    let mut headers = HeaderMap::new();
    for (name, value) in &parts.headers {
        if name != "host" && name != "content-length" {
            headers.append(name, value.clone());
        }
    }
    let sent = state.client.request(parts.method.clone(), format!("{}{target}", state.upstream)).headers(headers).body(body).send().await;
    let Ok(answer) = sent else {
        return StatusCode::BAD_GATEWAY.into_response();
    };
    let status = answer.status();
    let lose = state.lose_answers.lock().unwrap().clone();
    if parts.method == Method::PUT && status.is_success() && lose.is_some_and(|part| percent_decoded(&target).contains(&part)) {
        state.lost.fetch_add(1, Ordering::SeqCst);
        return (StatusCode::SERVICE_UNAVAILABLE, [("content-type", "application/xml")], SLOW_DOWN).into_response();
    }
    let mut headers = HeaderMap::new();
    for (name, value) in answer.headers() {
        if name != "content-length" && name != "transfer-encoding" && name != "connection" {
            headers.append(name, value.clone());
        }
    }
    let body = answer.bytes().await.unwrap_or_default();
    (status, headers, Body::from(body)).into_response()
}

/// `%3D` → `=` and `%2F` → `/` in a logged request line (object_store encodes keys' `=`).
fn percent_decoded(s: &str) -> String {
    s.replace("%3D", "=").replace("%3d", "=").replace("%2F", "/").replace("%2f", "/")
}

#[cfg(test)]
mod tests {
    #[test]
    fn xml_values_reads_every_tag() {
        let xml = "<R><Contents><Key>a/b=1.parquet</Key></Contents><Contents><Key>x&amp;y</Key></Contents></R>";
        assert_eq!(super::xml_values(xml, "Key"), vec!["a/b=1.parquet", "x&y"]);
        assert!(super::xml_values(xml, "UploadId").is_empty());
    }
}
