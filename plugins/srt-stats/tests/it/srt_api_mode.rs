//! `mode: srt_api` against a small server speaking the SRT management API's documented
//! endpoints: `POST /v1/login` → `{"jwt", "exp"}`, `GET /v1/get_tx` / `GET /v1/get_rx` with a
//! bearer token, 401 `{"msg": "Token has expired"}` once a token has served its requests.

use crate::common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

#[derive(Default)]
struct Api {
    logins: AtomicU64,
    /// The valid token and how many more requests it may serve.
    token: Mutex<Option<(String, u32)>>,
    polls: AtomicU64,
    bad_passwords: AtomicU64,
}

const TOKEN_USES: u32 = 3;

async fn login(State(api): State<Arc<Api>>, Json(body): Json<Value>) -> (StatusCode, Json<Value>) {
    if body["username"] != "operator" || body["password"] != "s3cret-pass" {
        api.bad_passwords.fetch_add(1, Ordering::Relaxed);
        return (StatusCode::UNAUTHORIZED, Json(json!({"Error": "Bad username or password"})));
    }
    let n = api.logins.fetch_add(1, Ordering::Relaxed) + 1;
    let jwt = format!("jwt-{n}");
    *api.token.lock().unwrap() = Some((jwt.clone(), TOKEN_USES));
    (StatusCode::OK, Json(json!({"jwt": jwt, "exp": "Mon, 30 Nov 2026 10:00:00 GMT"})))
}

fn authorize(api: &Api, headers: &HeaderMap) -> Result<(), (StatusCode, Json<Value>)> {
    let sent = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let mut token = api.token.lock().unwrap();
    match token.as_mut() {
        Some((jwt, uses)) if sent == format!("Bearer {jwt}") && *uses > 0 => {
            *uses -= 1;
            Ok(())
        }
        Some((jwt, _)) if sent == format!("Bearer {jwt}") => Err((StatusCode::UNAUTHORIZED, Json(json!({"msg": "Token has expired"})))),
        _ => Err((StatusCode::UNAUTHORIZED, Json(json!({"msg": "Missing Authorization Header"})))),
    }
}

async fn get_tx(State(api): State<Arc<Api>>, headers: HeaderMap) -> Result<Json<Value>, (StatusCode, Json<Value>)> {
    authorize(&api, &headers)?;
    let poll = api.polls.fetch_add(1, Ordering::Relaxed);
    // The sender drops its link on the third poll and is back on the fourth.
    let connected = if poll == 2 { 2 } else { 1 };
    let reconnections = if poll >= 3 { 1 } else { 0 };
    Ok(Json(json!([{
        "Id": 1, "ServiceName": "studio-a", "Mode": "listener", "RxIp": "", "ListenPort": 9000, "UdpIn": "239.0.0.1:5000",
        "Latency": 120, "SrtBw": 12000, "PassPhrase": "0123456789", "Status": 1, "ContainerId": "abc",
        "LinkRtt": if connected == 1 { 0.412 } else { 0.0 }, "LinkBandwidth": 95.1, "LinkMaxBandwidth": 12.0,
        "SendPackets": 4095, "SendPacketsUnique": 3990, "SendPacketsLost": 105, "SendPacketsDropped": 0,
        "SendPacketsRetransmitted": 105, "SendPacketsFilterExtra": 0, "SendBytes": 5569200, "SendBytesUnique": 5426400,
        "SendBytesDropped": 0, "SendMbitRate": 3.93, "LineLoss": 2.5641, "Connected": connected, "Reconnections": reconnections
    }])))
}

async fn get_rx(State(api): State<Arc<Api>>, headers: HeaderMap) -> Result<Json<Value>, (StatusCode, Json<Value>)> {
    authorize(&api, &headers)?;
    Ok(Json(json!([{
        "Id": 7, "ServiceName": "studio-a-return", "Mode": "caller", "TxIp": "10.0.0.1", "ListenPort": 9000,
        "LinkRtt": 0.5, "LinkBandwidth": 80.0, "LinkMaxBandwidth": 1000.0, "RecvPackets": 2000, "RecvPacketsUnique": 1990,
        "RecvPacketsLost": 12, "RecvPacketsDropped": 1, "RecvPacketsRetransmitted": 11, "RecvPacketsBelated": 0,
        "RecvPacketsFilterExtra": 0, "RecvPacketsFilterSupply": 0, "RecvPacketsFilterLoss": 0, "RecvBytes": 2720000,
        "RecvBytesUnique": 2706400, "RecvBytesLost": 16320, "RecvBytesDropped": 1360, "RecvMbitRate": 3.9,
        "LineLoss": 0.6, "Connected": 1, "Reconnections": 0
    }])))
}

async fn serve() -> (String, Arc<Api>) {
    let api = Arc::new(Api::default());
    let app = Router::new()
        .route("/v1/login", post(login))
        .route("/v1/get_tx", get(get_tx))
        .route("/v1/get_rx", get(get_rx))
        .with_state(api.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, api)
}

#[tokio::test]
async fn polls_both_lists_relogs_in_when_the_token_expires_and_reports_state_changes() {
    let (url, api) = serve().await;
    let mut r = common::start(&format!(
        "{{mode: srt_api, batch_wait: 50ms, srt_api: {{url: '{url}', username: operator, password: s3cret-pass, interval: 100ms}}}}"
    ));
    r.until("five polls", Duration::from_secs(10), |r| r.stats_of("studio-a").len() >= 5).await;
    let r = r.stop().await;

    // Each token serves 3 requests (tx + rx per poll): the source logged in again, without errors.
    assert!(api.logins.load(Ordering::Relaxed) >= 3, "logins: {}", api.logins.load(Ordering::Relaxed));
    assert_eq!(r.harness.metrics.errors.get(), 0);

    let tx = r.stats_of("studio-a");
    assert_eq!(tx[0].role.as_deref(), Some("tx"));
    assert_eq!((tx[0].get("send_packets"), tx[0].get("send_packets_lost"), tx[0].get("send_bytes")), (4095.0, 105.0, 5569200.0));
    assert_eq!(
        (tx[0].get("line_loss_pct"), tx[0].get("mbit_rate"), tx[0].get("link_rtt_ms"), tx[0].get("link_max_bandwidth_mbps")),
        (2.5641, 3.93, 0.412, 12.0)
    );
    assert_eq!((tx[0].sid, tx[0].columns["ms_buf"], tx[0].columns["recv_packets"]), (None, None, None));
    assert_eq!(tx.iter().take(5).map(|s| (s.connected, s.reconnections)).collect::<Vec<_>>(), [(1, 0), (1, 0), (2, 0), (1, 1), (1, 1)]);
    let events: Vec<_> = r
        .events_of("studio-a", "disconnected")
        .into_iter()
        .chain(r.events_of("studio-a", "connected"))
        .map(|e| (e.event.as_str(), e.reconnections))
        .collect();
    assert_eq!(events, [("disconnected", 0), ("connected", 1)]);

    let rx = r.stats_of("studio-a-return");
    assert_eq!(rx[0].role.as_deref(), Some("rx"));
    assert_eq!(
        (
            rx[0].get("recv_packets"),
            rx[0].get("recv_packets_lost"),
            rx[0].get("recv_packets_retransmitted"),
            rx[0].get("recv_bytes_dropped")
        ),
        (2000.0, 12.0, 11.0, 1360.0)
    );
    assert_eq!((rx[0].get("line_loss_pct"), rx[0].get("mbit_rate")), (0.6, 3.9));
    assert_eq!(rx[0].columns["send_packets"], None);
}

#[tokio::test]
async fn a_wrong_password_is_counted_with_the_apis_reason_and_polling_goes_on() {
    let (url, api) = serve().await;
    let r =
        common::start(&format!("{{mode: srt_api, srt_api: {{url: '{url}', username: operator, password: wrong-pass, interval: 100ms}}}}"));
    for _ in 0..100 {
        if api.bad_passwords.load(Ordering::Relaxed) >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = r.stop().await;
    assert!(api.bad_passwords.load(Ordering::Relaxed) >= 4, "it keeps trying each poll");
    assert!(r.harness.metrics.errors.get() >= 4);
    assert!(r.stats.is_empty());
}

#[tokio::test]
async fn an_unreachable_api_is_an_error_per_poll_not_a_crash() {
    let port = tributary_testkit::free_port();
    let r =
        common::start(&format!("{{mode: srt_api, srt_api: {{url: 'http://127.0.0.1:{port}', username: u, password: p, interval: 50ms}}}}"));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!r.task.is_finished(), "the source keeps polling");
    let r = r.stop().await;
    assert!(r.harness.metrics.errors.get() >= 2);
}
