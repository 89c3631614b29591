//! One probe: resolve, connect, TLS, request, headers, body — each phase timed — then the status
//! check, extraction and assertions. Every failure becomes a row with `error_kind` and `error`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HOST, LOCATION, USER_AGENT};
use hyper::{Method, Request, Response, Uri};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tributary_sdk::json::first_match_in;

use crate::config::{Extractor, Target};
use crate::tls::{client_config, days_until_expiry};

/// The row a probe produces (see the README's output schema).
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeRow {
    pub ts_us: i64,
    pub name: String,
    pub site: String,
    pub endpoint: String,
    pub url: String,
    pub status_code: i64,
    pub response_time_ms: i64,
    pub total_time_ms: i64,
    pub dns_ms: Option<f64>,
    pub connect_ms: Option<f64>,
    pub tls_ms: Option<f64>,
    pub ttfb_ms: Option<f64>,
    pub sla_ms: i64,
    pub in_sla: bool,
    pub success: bool,
    pub value: Option<String>,
    pub error_kind: Option<&'static str>,
    pub error: Option<String>,
    pub tls_cert_expiry_days: Option<f64>,
    pub body_bytes: Option<i64>,
    pub redirects: i64,
}

/// Limits that apply to every probe of a source.
#[derive(Debug, Clone, Copy)]
pub struct ProbeLimits {
    pub body_limit: usize,
    pub max_redirects: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Phase {
    #[default]
    Dns,
    Connect,
    Tls,
    Headers,
    Body,
}

impl Phase {
    fn describe(self) -> &'static str {
        match self {
            Phase::Dns => "resolving the host",
            Phase::Connect => "connecting",
            Phase::Tls => "in the TLS handshake",
            Phase::Headers => "waiting for response headers",
            Phase::Body => "reading the body",
        }
    }
}

/// What the exchange learned so far; survives a timeout that drops the exchange midway.
#[derive(Default)]
struct Progress {
    phase: Phase,
    dns_ms: Option<f64>,
    connect_ms: Option<f64>,
    tls_ms: Option<f64>,
    ttfb_ms: Option<f64>,
    headers_after: Option<Duration>,
    status: Option<u16>,
    cert_days: Option<f64>,
    body: Vec<u8>,
    body_bytes: Option<u64>,
    redirects: u32,
}

struct ProbeError {
    kind: &'static str,
    message: String,
}

fn fail(kind: &'static str, message: impl Into<String>) -> ProbeError {
    ProbeError { kind, message: message.into() }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Stops the connection task when the probe is done (or dropped by its timeout).
struct AbortOnDrop(tokio::task::JoinHandle<()>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub async fn probe(target: &Target, limits: ProbeLimits) -> ProbeRow {
    let ts_us = tributary_sdk::now_us();
    let start = Instant::now();
    let mut p = Progress::default();
    let outcome = tokio::time::timeout(target.timeout, exchange(target, limits, &mut p, start)).await;
    let total = start.elapsed();
    let mut value = None;
    let problem = match outcome {
        Err(_) => Some(fail("timeout", format!("timeout after {} ms {}", target.timeout.as_millis(), p.phase.describe()))),
        Ok(Err(e)) => Some(e),
        Ok(Ok(())) => evaluate(target, &p, &mut value),
    };
    let response_time_ms = p.headers_after.unwrap_or(total).as_millis() as i64;
    ProbeRow {
        ts_us,
        name: target.name.clone(),
        site: target.site.clone(),
        endpoint: target.endpoint.clone(),
        url: target.url.to_string(),
        status_code: p.status.map(i64::from).unwrap_or(0),
        response_time_ms,
        total_time_ms: total.as_millis() as i64,
        dns_ms: p.dns_ms,
        connect_ms: p.connect_ms,
        tls_ms: p.tls_ms,
        ttfb_ms: p.ttfb_ms,
        sla_ms: target.sla_ms as i64,
        in_sla: p.headers_after.is_some() && response_time_ms <= target.sla_ms as i64,
        success: problem.is_none(),
        value,
        error_kind: problem.as_ref().map(|e| e.kind),
        error: problem.map(|e| e.message),
        tls_cert_expiry_days: p.cert_days,
        body_bytes: p.body_bytes.map(|b| b as i64),
        redirects: p.redirects as i64,
    }
}

async fn exchange(target: &Target, limits: ProbeLimits, p: &mut Progress, start: Instant) -> Result<(), ProbeError> {
    let mut url = target.url.clone();
    let mut method = target.method.clone();
    let mut body = target.body.clone();
    loop {
        let (response, _conn) = request(target, &url, &method, body.as_deref(), p, start).await?;
        let status = response.status();
        if status.is_redirection() && p.redirects < limits.max_redirects {
            if let Some(location) = response.headers().get(LOCATION).and_then(|l| l.to_str().ok()) {
                url = resolve_location(&url, location)?;
                p.redirects += 1;
                if status == hyper::StatusCode::SEE_OTHER || (method == Method::POST && status.as_u16() <= 302) {
                    method = Method::GET;
                    body = None;
                }
                continue;
            }
        }
        p.phase = Phase::Body;
        let mut stream = response.into_body();
        let mut bytes = 0u64;
        while let Some(frame) = stream.frame().await {
            let frame = frame.map_err(|e| fail("connect", format!("reading the body failed: {e}")))?;
            if let Ok(data) = frame.into_data() {
                bytes += data.len() as u64;
                let room = limits.body_limit.saturating_sub(p.body.len());
                p.body.extend_from_slice(&data[..room.min(data.len())]);
            }
        }
        p.body_bytes = Some(bytes);
        return Ok(());
    }
}

fn resolve_location(base: &Uri, location: &str) -> Result<Uri, ProbeError> {
    let bad = |e: String| fail("connect", format!("redirect to an invalid location `{location}`: {e}"));
    let loc: Uri = location.parse().map_err(|e: hyper::http::uri::InvalidUri| bad(e.to_string()))?;
    if loc.scheme().is_some() {
        return Ok(loc);
    }
    let path = if location.starts_with('/') {
        location.to_string()
    } else {
        let dir = base.path().rsplit_once('/').map(|(d, _)| d).unwrap_or("");
        format!("{dir}/{location}")
    };
    Uri::builder()
        .scheme(base.scheme_str().unwrap_or("http"))
        .authority(base.authority().map(|a| a.as_str()).unwrap_or(""))
        .path_and_query(path)
        .build()
        .map_err(|e| bad(e.to_string()))
}

async fn request(
    target: &Target,
    url: &Uri,
    method: &Method,
    body: Option<&str>,
    p: &mut Progress,
    start: Instant,
) -> Result<(Response<hyper::body::Incoming>, AbortOnDrop), ProbeError> {
    let https = url.scheme_str() == Some("https");
    let host = url.host().unwrap_or_default();
    let bare_host = host.trim_start_matches('[').trim_end_matches(']');
    let port = url.port_u16().unwrap_or(if https { 443 } else { 80 });

    p.phase = Phase::Dns;
    let t = Instant::now();
    let addrs: Vec<SocketAddr> =
        tokio::net::lookup_host((bare_host, port)).await.map_err(|e| fail("dns", format!("cannot resolve `{bare_host}`: {e}")))?.collect();
    if addrs.is_empty() {
        return Err(fail("dns", format!("`{bare_host}` has no addresses")));
    }
    p.dns_ms = Some(ms(t.elapsed()));

    p.phase = Phase::Connect;
    let t = Instant::now();
    let mut last_error = None;
    let mut tcp = None;
    for addr in &addrs {
        match TcpStream::connect(addr).await {
            Ok(s) => {
                tcp = Some(s);
                break;
            }
            Err(e) => last_error = Some(format!("cannot connect to {addr}: {e}")),
        }
    }
    let tcp = tcp.ok_or_else(|| fail("connect", last_error.unwrap_or_default()))?;
    let _ = tcp.set_nodelay(true);
    p.connect_ms = Some(ms(t.elapsed()));

    let io: Box<dyn Io> = if https {
        p.phase = Phase::Tls;
        let t = Instant::now();
        let name =
            ServerName::try_from(bare_host.to_string()).map_err(|e| fail("tls", format!("`{bare_host}` is not a TLS server name: {e}")))?;
        let tls = tokio_rustls::TlsConnector::from(client_config(target.tls_verify))
            .connect(name, tcp)
            .await
            .map_err(|e| fail("tls", format!("TLS handshake with {bare_host}:{port} failed: {e}")))?;
        p.tls_ms = Some(ms(t.elapsed()));
        p.cert_days = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| days_until_expiry(leaf, chrono::Utc::now().timestamp()));
        Box::new(tls)
    } else {
        Box::new(tcp)
    };

    p.phase = Phase::Headers;
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(io))
        .await
        .map_err(|e| fail("connect", format!("HTTP handshake failed: {e}")))?;
    let conn = AbortOnDrop(tokio::spawn(async move {
        let _ = conn.await;
    }));
    let mut req = Request::builder()
        .method(method.clone())
        .uri(url.path_and_query().map(|pq| pq.as_str()).unwrap_or("/"))
        .header(HOST, url.authority().map(|a| a.as_str()).unwrap_or(bare_host))
        .header(USER_AGENT, concat!("tributary-site-probe/", env!("CARGO_PKG_VERSION")));
    for (k, v) in &target.headers {
        req = req.header(k, v);
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or_default().to_string())))
        .map_err(|e| fail("connect", format!("cannot build the request: {e}")))?;
    let sent = Instant::now();
    let response = sender.send_request(req).await.map_err(|e| fail("connect", format!("request to {url} failed: {e}")))?;
    p.ttfb_ms = Some(ms(sent.elapsed()));
    p.headers_after = Some(start.elapsed());
    p.status = Some(response.status().as_u16());
    Ok((response, conn))
}

/// Status, extraction and assertions on a complete response; the first failure wins in that order.
fn evaluate(target: &Target, p: &Progress, value: &mut Option<String>) -> Option<ProbeError> {
    let status = p.status.unwrap_or(0);
    let body = String::from_utf8_lossy(&p.body);
    // Parsed at most once, even when both the extractor and an assertion use JSONPath.
    let doc = std::cell::OnceCell::new();
    let first_match = |path: &str| -> Result<Option<String>, String> {
        let parsed = doc.get_or_init(|| serde_json::from_str::<serde_json::Value>(&body).map_err(|e| format!("the body is not JSON: {e}")));
        first_match_in(parsed.as_ref().map_err(Clone::clone)?, path)
    };
    let mut problem = None;
    if !target.expect_status.iter().any(|s| (s.low..=s.high).contains(&status)) {
        let expected: Vec<String> = target.expect_status.iter().map(|s| s.to_string()).collect();
        problem = Some(fail("http_status", format!("status {status} is not one of the expected {}", expected.join(", "))));
    }
    match &target.extract {
        None => {}
        Some(Extractor::JsonPath(path)) => match first_match(path) {
            Ok(Some(v)) => *value = Some(v),
            Ok(None) => problem = problem.or(Some(fail("extract", format!("JSONPath `{path}` matched nothing")))),
            Err(e) => problem = problem.or(Some(fail("extract", e))),
        },
        Some(Extractor::Regex(re)) => match re.captures(&body) {
            Some(c) => *value = c.get(1).or_else(|| c.get(0)).map(|m| m.as_str().to_string()),
            None => problem = problem.or(Some(fail("extract", format!("regex `{}` did not match the body", re.as_str())))),
        },
    }
    if problem.is_some() {
        return problem;
    }
    if let Some(re) = &target.assert_body_regex {
        if !re.is_match(&body) {
            return Some(fail("assertion", format!("the body does not match `{}`", re.as_str())));
        }
    }
    if let Some((path, equals)) = &target.assert_json {
        match (first_match(path), equals) {
            (Err(e), _) => return Some(fail("assertion", e)),
            (Ok(None), _) => return Some(fail("assertion", format!("JSONPath `{path}` matched nothing"))),
            (Ok(Some(got)), Some(want)) if got != *want => {
                return Some(fail("assertion", format!("JSONPath `{path}` is `{got}`, expected `{want}`")))
            }
            _ => {}
        }
    }
    None
}
