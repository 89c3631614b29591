//! GETs against the Webex API: the client's own per-endpoint budget, `Retry-After` on 429/423,
//! backoff on 5xx and transport errors, one refresh-and-retry after a 401, and errors that carry
//! the response's `TrackingID`.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tributary_sdk::retry::Backoff;
use tributary_sdk::{error_chain, ComponentMetrics};

use crate::error_body::webex_message;
use crate::oauth::{Auth, AuthError};

/// At most `limit` requests per endpoint in any `per` window; callers wait for a free slot.
pub struct RateLimiter {
    limit: usize,
    per: Duration,
    calls: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl RateLimiter {
    pub fn new(limit: u32, per: Duration) -> RateLimiter {
        RateLimiter { limit: limit as usize, per, calls: Mutex::default() }
    }

    /// Waits until `endpoint` has budget left, then takes one slot.
    pub async fn acquire(&self, endpoint: &str) {
        loop {
            let wait = {
                let mut calls = self.calls.lock().await;
                let now = Instant::now();
                let window = calls.entry(endpoint.to_string()).or_default();
                while window.front().is_some_and(|t| now.duration_since(*t) >= self.per) {
                    window.pop_front();
                }
                if window.len() < self.limit {
                    window.push_back(now);
                    return;
                }
                self.per - now.duration_since(*window.front().expect("full window"))
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// A successful response.
#[derive(Debug)]
pub struct Reply {
    pub body: Value,
    pub status: u16,
    pub tracking_id: Option<String>,
}

/// A request that failed for good.
#[derive(Debug, Clone)]
pub struct CallError {
    pub status: Option<u16>,
    pub tracking_id: Option<String>,
    pub message: String,
    /// Set when no token could be had (the source then asks for a new authorization).
    pub auth: Option<AuthError>,
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(s) = self.status {
            write!(f, "{s} ")?;
        }
        f.write_str(&self.message)?;
        if let Some(t) = &self.tracking_id {
            write!(f, " (TrackingID {t})")?;
        }
        Ok(())
    }
}

impl From<AuthError> for CallError {
    fn from(e: AuthError) -> Self {
        CallError { status: None, tracking_id: None, message: e.to_string(), auth: Some(e) }
    }
}

pub struct ApiClient {
    pub http: reqwest::Client,
    base: String,
    pub auth: Arc<Auth>,
    limiter: RateLimiter,
    max_attempts: u32,
    shutdown: CancellationToken,
    metrics: Arc<ComponentMetrics>,
    source_id: String,
}

impl ApiClient {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        source_id: &str,
        http: reqwest::Client,
        base_url: &str,
        auth: Arc<Auth>,
        limiter: RateLimiter,
        max_attempts: u32,
        shutdown: CancellationToken,
        metrics: Arc<ComponentMetrics>,
    ) -> ApiClient {
        ApiClient {
            http,
            base: base_url.trim_end_matches('/').into(),
            auth,
            limiter,
            max_attempts,
            shutdown,
            metrics,
            source_id: source_id.into(),
        }
    }

    /// Sleeps unless the pipeline stops first (then the request gives up).
    async fn pause(&self, d: Duration) -> Result<(), CallError> {
        tokio::select! {
            _ = tokio::time::sleep(d) => Ok(()),
            _ = self.shutdown.cancelled() => Err(CallError { status: None, tracking_id: None, message: "stopped while waiting to retry".into(), auth: None }),
        }
    }

    /// `GET <base><path>?query`, budgeted under `path`.
    pub async fn get(&self, path: &str, query: &[(&str, String)]) -> Result<Reply, CallError> {
        let url = format!("{}{path}", self.base);
        let backoff = Backoff { initial: Duration::from_millis(500), max: Duration::from_secs(60), max_attempts: None };
        let mut refreshed = false;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            tokio::select! {
                _ = self.limiter.acquire(path) => {}
                _ = self.shutdown.cancelled() => return Err(CallError { status: None, tracking_id: None, message: "stopped while waiting for the rate budget".into(), auth: None }),
            }
            let token = self.auth.token().await?;
            let last = attempt >= self.max_attempts;
            let resp = match self.http.get(&url).query(query).bearer_auth(token.expose()).send().await {
                Ok(r) => r,
                Err(e) => {
                    let message = format!("request failed: {}", error_chain(&e));
                    if last {
                        return Err(CallError { status: None, tracking_id: None, message, auth: None });
                    }
                    self.retrying(path, attempt, &message, None);
                    self.pause(backoff.delay(attempt)).await?;
                    continue;
                }
            };
            let status = resp.status().as_u16();
            let tracking_id = resp.headers().get("TrackingID").and_then(|v| v.to_str().ok()).map(str::to_string);
            let retry_after = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let body = match resp.bytes().await {
                Ok(b) => b,
                Err(e) => {
                    let message = format!("reading the response failed: {}", error_chain(&e));
                    if last {
                        return Err(CallError { status: Some(status), tracking_id, message, auth: None });
                    }
                    self.retrying(path, attempt, &message, tracking_id.as_deref());
                    self.pause(backoff.delay(attempt)).await?;
                    continue;
                }
            };
            match status {
                200..=299 => {
                    return serde_json::from_slice(&body).map(|body| Reply { body, status, tracking_id: tracking_id.clone() }).map_err(
                        |e| CallError {
                            status: Some(status),
                            tracking_id,
                            message: format!("malformed JSON in the response: {e}"),
                            auth: None,
                        },
                    )
                }
                401 if !refreshed => {
                    // An expired or revoked token: refresh once and try again (not an attempt).
                    refreshed = true;
                    attempt -= 1;
                    tracing::info!(source = %self.source_id, "GET {path}: 401 (TrackingID {}); refreshing the token", tracking_id.as_deref().unwrap_or("-"));
                    self.auth.after_unauthorized(&token).await?;
                }
                429 | 423 | 500..=599 if !last => {
                    let message = webex_message(&body);
                    let wait = match (status, retry_after) {
                        (429 | 423, Some(d)) => d,
                        _ => backoff.delay(attempt),
                    };
                    self.retrying(path, attempt, &format!("{status} {message}; waiting {wait:?}"), tracking_id.as_deref());
                    self.pause(wait).await?;
                }
                _ => return Err(CallError { status: Some(status), tracking_id, message: webex_message(&body), auth: None }),
            }
        }
    }

    fn retrying(&self, path: &str, attempt: u32, what: &str, tracking_id: Option<&str>) {
        self.metrics.retries.inc();
        tracing::warn!(source = %self.source_id, "GET {path} (attempt {attempt}/{}): {what} (TrackingID {})", self.max_attempts, tracking_id.unwrap_or("-"));
    }
}
