//! `mode: http`: badge events POSTed instead of PUBLISHed, through `http_server`'s ingest.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use tributary_sdk::http::{serve, Ingest, ServeLimits};
use tributary_sdk::{now_us, SourceContext};

use crate::{to_batch, HttpMode, Message};

struct Shared {
    ingest: Ingest,
    dead_letters: tributary_sdk::DeadLetters,
}

pub(crate) async fn run(id: String, mode: HttpMode, ctx: SourceContext) -> anyhow::Result<()> {
    let cfg = &mode.options;
    let ingest = Ingest {
        id,
        token: cfg.token.clone(),
        max_body: cfg.max_body_bytes.0 as usize,
        accept_timeout: std::time::Duration::from_secs(1),
        body_timeout: cfg.body_timeout.0,
        output: ctx.output("").clone(),
        metrics: ctx.metrics.clone(),
    };
    let shared = Arc::new(Shared { ingest, dead_letters: ctx.dead_letters.clone() });
    let prefix = cfg.path.trim_end_matches('/');
    let app = Router::new()
        .route(&format!("{prefix}/{{channel}}"), post(one_message))
        .route(if prefix.is_empty() { "/" } else { prefix }, post(envelopes))
        .with_state(shared);
    let limits = ServeLimits { header_timeout: cfg.header_timeout.0, body_timeout: cfg.body_timeout.0, stop_timeout: cfg.stop_timeout.0 };
    serve(mode.address, app, &ctx, "badge_events (http)", limits, &Default::default()).await
}

/// `POST <path><channel>`: the body is one message, exactly what the API would PUBLISH.
async fn one_message(State(shared): State<Arc<Shared>>, Path(channel): Path<String>, headers: HeaderMap, body: Body) -> Response {
    let bytes = match shared.ingest.read_body(&headers, body).await {
        Ok(b) => b,
        Err(refused) => return refused,
    };
    let payload = String::from_utf8_lossy(&bytes).into_owned();
    deliver(&shared, vec![Message { ts_us: now_us(), channel, payload }]).await
}

/// `POST <path>`: NDJSON, one `{"channel": …, "payload": …}` per line (`payload` a string, or
/// JSON that is passed on as its text).
async fn envelopes(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Body) -> Response {
    let bytes = match shared.ingest.read_body(&headers, body).await {
        Ok(b) => b,
        Err(refused) => return refused,
    };
    let ts_us = now_us();
    let decoded = tributary_sdk::http::decode_off_reactor(move || read_envelopes(&bytes, ts_us)).await.and_then(|r| r);
    match decoded {
        Ok(messages) => deliver(&shared, messages).await,
        // The envelope itself is the client's mistake: nothing of the request is taken.
        Err(reason) => shared.ingest.reject(StatusCode::BAD_REQUEST, reason),
    }
}

/// The messages of an NDJSON envelope body, or why a line is not an envelope.
fn read_envelopes(bytes: &[u8], ts_us: i64) -> Result<Vec<Message>, String> {
    #[derive(serde::Deserialize)]
    struct Envelope {
        channel: String,
        payload: serde_json::Value,
    }
    let mut messages = Vec::new();
    for (n, line) in bytes.split(|b| *b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let e = serde_json::from_slice::<Envelope>(line)
            .map_err(|e| format!("line {}: not a {{\"channel\", \"payload\"}} envelope: {e}", n + 1))?;
        let payload = match e.payload {
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        };
        messages.push(Message { ts_us, channel: e.channel, payload });
    }
    Ok(messages)
}

/// Decodable messages go to the pipeline; undecodable ones to the dead-letter output (after the
/// good ones are accepted, so a 503 retry does not dead-letter twice). A request whose messages
/// all fail to decode gets 400 with the first reason.
async fn deliver(shared: &Shared, messages: Vec<Message>) -> Response {
    let (batch, dead) = to_batch(&messages);
    if batch.num_rows() == 0 && !dead.is_empty() {
        let reason = dead[0].reason.clone();
        // `reject` reports the first; the others are counted here.
        tributary_sdk::report_error!(shared.ingest.metrics, debug, count = dead.len() - 1, source = %shared.ingest.id, "more undecodable badge events in the refused request");
        let _ = shared.dead_letters.send(dead, Default::default()).await;
        return shared.ingest.reject(StatusCode::BAD_REQUEST, reason);
    }
    let response = shared.ingest.accept(batch).await;
    if response.status() == StatusCode::OK && !dead.is_empty() {
        tributary_sdk::report_error!(
            shared.ingest.metrics,
            warn,
            count = dead.len(),
            source = %shared.ingest.id,
            first_reason = %dead[0].reason,
            "undecodable badge events"
        );
        let _ = shared.dead_letters.send(dead, Default::default()).await;
    }
    response
}
