//! `mode: srt_api`: poll an SRT management REST API (srtXcontrol's): `POST /v1/login` for a JWT,
//! then `GET /v1/get_tx` and `GET /v1/get_rx` (lists of every transmitter and receiver with
//! their latest `Stats` fields). A rejected token (expired) triggers one re-login and a retry.

use std::collections::HashMap;
use std::sync::Arc;

use reqwest::StatusCode;
use serde_json::Value;
use tokio::sync::mpsc;
use tributary_sdk::{error_chain, now_us, CancellationToken, ComponentMetrics};

use crate::config::ApiConfig;
use crate::parse::{Stat, STAT_COUNT};
use crate::session::{connected, Emitted, EventRow, Role, StatsRow};

/// API field → stat, per role. (`LineLoss`, `Connected`, `Reconnections` are columns of their own.)
const TX_FIELDS: &[(&str, Stat)] = &[
    ("LinkRtt", Stat::LinkRtt),
    ("LinkBandwidth", Stat::LinkBandwidth),
    ("LinkMaxBandwidth", Stat::LinkMaxBandwidth),
    ("SendPackets", Stat::SendPackets),
    ("SendPacketsUnique", Stat::SendPacketsUnique),
    ("SendPacketsLost", Stat::SendPacketsLost),
    ("SendPacketsDropped", Stat::SendPacketsDropped),
    ("SendPacketsRetransmitted", Stat::SendPacketsRetransmitted),
    ("SendPacketsFilterExtra", Stat::SendPacketsFilterExtra),
    ("SendBytes", Stat::SendBytes),
    ("SendBytesUnique", Stat::SendBytesUnique),
    ("SendBytesDropped", Stat::SendBytesDropped),
    ("SendMbitRate", Stat::SendMbitRate),
];
const RX_FIELDS: &[(&str, Stat)] = &[
    ("LinkRtt", Stat::LinkRtt),
    ("LinkBandwidth", Stat::LinkBandwidth),
    ("LinkMaxBandwidth", Stat::LinkMaxBandwidth),
    ("RecvPackets", Stat::RecvPackets),
    ("RecvPacketsUnique", Stat::RecvPacketsUnique),
    ("RecvPacketsLost", Stat::RecvPacketsLost),
    ("RecvPacketsDropped", Stat::RecvPacketsDropped),
    ("RecvPacketsRetransmitted", Stat::RecvPacketsRetransmitted),
    ("RecvPacketsBelated", Stat::RecvPacketsBelated),
    ("RecvPacketsFilterExtra", Stat::RecvPacketsFilterExtra),
    ("RecvPacketsFilterSupply", Stat::RecvPacketsFilterSupply),
    ("RecvPacketsFilterLoss", Stat::RecvPacketsFilterLoss),
    ("RecvBytes", Stat::RecvBytes),
    ("RecvBytesUnique", Stat::RecvBytesUnique),
    ("RecvBytesLost", Stat::RecvBytesLost),
    ("RecvBytesDropped", Stat::RecvBytesDropped),
    ("RecvMbitRate", Stat::RecvMbitRate),
];

pub struct ApiPoller {
    source_id: String,
    cfg: ApiConfig,
    http: reqwest::Client,
    token: Option<String>,
    /// Last (connected, reconnections) per (role, session): state changes become events.
    last: HashMap<(Role, String), (i64, i64)>,
}

impl ApiPoller {
    pub fn new(source_id: &str, cfg: ApiConfig) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder().timeout(cfg.timeout.0).build()?;
        Ok(ApiPoller { source_id: source_id.to_string(), cfg, http, token: None, last: HashMap::new() })
    }

    pub async fn run(mut self, rows: mpsc::Sender<Emitted>, shutdown: CancellationToken, metrics: Arc<ComponentMetrics>) {
        let mut tick = tokio::time::interval(self.cfg.interval.0);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! { _ = shutdown.cancelled() => return, _ = tick.tick() => {} }
            let mut out = Emitted::default();
            for role in [Role::Tx, Role::Rx] {
                match self.poll(role).await {
                    Ok(list) => self.rows(role, &list, now_us(), &mut out),
                    Err(e) => {
                        tributary_sdk::report_error!(metrics, warn, source = %self.source_id, endpoint = %endpoint(role), error = %e, "polling the SRT API failed");
                    }
                }
            }
            if !out.is_empty() && rows.send(out).await.is_err() {
                return;
            }
        }
    }

    async fn login(&mut self) -> anyhow::Result<String> {
        let url = format!("{}/v1/login", self.cfg.url.trim_end_matches('/'));
        let body = serde_json::json!({"username": self.cfg.username, "password": self.cfg.password.expose()});
        let resp = self.http.post(&url).json(&body).send().await.map_err(|e| anyhow::anyhow!("POST {url}: {}", error_chain(&e)))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            return Err(anyhow::anyhow!("login to {url} refused ({status}): {}", api_message(&text)));
        }
        let v: Value = serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("login answer from {url} is not JSON: {e}"))?;
        let jwt = v.get("jwt").and_then(Value::as_str).ok_or_else(|| anyhow::anyhow!("login answer from {url} has no `jwt`"))?;
        tracing::info!(source = %self.source_id, "logged in to the SRT API");
        self.token = Some(jwt.to_string());
        Ok(jwt.to_string())
    }

    /// GET the role's list; a 401/422 (expired or invalid token) logs in again once.
    pub(crate) async fn poll(&mut self, role: Role) -> anyhow::Result<Vec<Value>> {
        let url = format!("{}{}", self.cfg.url.trim_end_matches('/'), endpoint(role));
        let mut relogged = false;
        loop {
            let token = match &self.token {
                Some(t) => t.clone(),
                None => {
                    relogged = true;
                    self.login().await?
                }
            };
            let resp =
                self.http.get(&url).bearer_auth(&token).send().await.map_err(|e| anyhow::anyhow!("GET {url}: {}", error_chain(&e)))?;
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            if status == StatusCode::UNAUTHORIZED || status == StatusCode::UNPROCESSABLE_ENTITY {
                self.token = None;
                if relogged {
                    return Err(anyhow::anyhow!("GET {url} refused a fresh token ({status}): {}", api_message(&text)));
                }
                tracing::info!(source = %self.source_id, status = %status, reason = %api_message(&text), "SRT API token rejected; logging in again");
                continue;
            }
            if !status.is_success() {
                return Err(anyhow::anyhow!("GET {url} answered {status}: {}", api_message(&text)));
            }
            return match serde_json::from_str::<Value>(&text) {
                Ok(Value::Array(list)) => Ok(list),
                Ok(_) => Err(anyhow::anyhow!("GET {url}: expected a JSON list")),
                Err(e) => Err(anyhow::anyhow!("GET {url}: not JSON: {e}")),
            };
        }
    }

    /// Rows for one role's list; connection changes since the last poll become events.
    pub fn rows(&mut self, role: Role, list: &[Value], now_us: i64, out: &mut Emitted) {
        let fields = if role == Role::Tx { TX_FIELDS } else { RX_FIELDS };
        for entry in list {
            let Some(session) = entry.get("ServiceName").and_then(Value::as_str) else {
                continue;
            };
            let num = |k: &str| entry.get(k).and_then(as_f64);
            let mut values = [f64::NAN; STAT_COUNT];
            for (key, stat) in fields {
                if let Some(v) = num(key) {
                    values[*stat as usize] = v;
                }
            }
            let state = num("Connected").unwrap_or(0.0) as i64;
            let reconnections = num("Reconnections").unwrap_or(0.0).max(0.0) as i64;
            let session: Arc<str> = session.into();
            out.stats.push(StatsRow {
                ts_us: now_us,
                session: session.clone(),
                role: Some(role),
                sid: None,
                connected: state,
                reconnections,
                values,
                line_loss_pct: num("LineLoss").unwrap_or(0.0),
            });
            let before = self.last.insert((role, session.to_string()), (state, reconnections));
            let event = match before {
                None => None,
                Some((was, _)) if was != connected::CONNECTED && state == connected::CONNECTED => Some("connected"),
                Some((was, _)) if was == connected::CONNECTED && state == connected::WAITING => Some("disconnected"),
                Some((was, _)) if was != connected::STOPPED && state == connected::STOPPED => Some("exited"),
                // Reconnected between two polls.
                Some((_, r)) if reconnections > r && state == connected::CONNECTED => Some("connected"),
                _ => None,
            };
            if let Some(event) = event {
                out.events.push(EventRow {
                    ts_us: now_us,
                    session,
                    role: Some(role),
                    event,
                    sid: None,
                    reconnections,
                    message: format!("{} reports Connected={state} Reconnections={reconnections}", endpoint(role)),
                });
            }
        }
    }
}

fn endpoint(role: Role) -> &'static str {
    match role {
        Role::Tx => "/v1/get_tx",
        Role::Rx => "/v1/get_rx",
    }
}

/// Numbers may come as JSON numbers or numeric strings (MariaDB decimals).
fn as_f64(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// The API's error text (`{"Error": …}`, `{"msg": …}`) or the body's start.
fn api_message(text: &str) -> String {
    if let Ok(Value::Object(o)) = serde_json::from_str::<Value>(text) {
        for k in ["Error", "msg", "message", "TX", "RX"] {
            if let Some(m) = o.get(k).and_then(Value::as_str) {
                return m.to_string();
            }
        }
    }
    crate::parse::excerpt(text.trim())
}
