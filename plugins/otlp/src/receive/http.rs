//! OTLP/HTTP: `POST /v1/metrics`, `/v1/logs`, `/v1/traces` with a protobuf or JSON body,
//! optionally gzipped. Answers in the request's encoding, as the spec requires: the export
//! response on success, a `google.rpc.Status` otherwise.

use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use tributary_sdk::http::{decode_sized, serve as serve_http, Ingest, OpenConnections, ServeLimits};
use tributary_sdk::SourceContext;

use super::rows::Refusal;
use super::{convert, Answer, OtlpSourceConfig, Receiver, Signal};

struct Http {
    receiver: Arc<Receiver>,
    ingest: Ingest,
}

pub async fn serve(address: SocketAddr, receiver: Arc<Receiver>, ctx: &SourceContext, cfg: &OtlpSourceConfig) -> anyhow::Result<()> {
    let ingest = Ingest {
        id: ctx.id.clone(),
        // Checked here, to answer in OTLP's encoding.
        token: None,
        max_body: receiver.max_body,
        accept_timeout: receiver.accept_timeout,
        body_timeout: cfg.body_timeout.0,
        // Unused: rows go through `Receiver::take`, which waits for their ack.
        output: ctx.output(super::METRICS).clone(),
        metrics: ctx.metrics.clone(),
    };
    let app = Router::new()
        .route("/v1/metrics", post(export::<ExportMetricsServiceRequest>))
        .route("/v1/logs", post(export::<ExportLogsServiceRequest>))
        .route("/v1/traces", post(export::<ExportTraceServiceRequest>))
        .with_state(Arc::new(Http { receiver, ingest }));
    let limits = ServeLimits { header_timeout: cfg.header_timeout.0, body_timeout: cfg.body_timeout.0, stop_timeout: cfg.stop_timeout.0 };
    serve_http(address, app, ctx, "otlp (HTTP)", limits, &OpenConnections::default()).await
}

/// The body's encoding, from `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Encoding {
    Protobuf,
    Json,
}

impl Encoding {
    fn of(headers: &HeaderMap) -> Result<Self, String> {
        let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        match content_type.split(';').next().unwrap_or("").trim() {
            "application/x-protobuf" | "application/protobuf" => Ok(Encoding::Protobuf),
            "application/json" => Ok(Encoding::Json),
            other => Err(format!("Content-Type `{other}` is not OTLP: send application/x-protobuf or application/json")),
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Encoding::Protobuf => "application/x-protobuf",
            Encoding::Json => "application/json",
        }
    }

    pub(super) fn decode<S: Signal>(self, body: &[u8]) -> Result<S, Refusal> {
        let what = match self {
            Encoding::Protobuf => S::decode(body).map_err(|e| format!("not an OTLP protobuf request: {e}")),
            Encoding::Json => serde_json::from_slice(body).map_err(|e| format!("not an OTLP JSON request: {e}")),
        };
        what.map_err(Refusal::Invalid)
    }

    fn encode(self, message: &(impl Message + serde::Serialize)) -> Vec<u8> {
        match self {
            Encoding::Protobuf => message.encode_to_vec(),
            Encoding::Json => serde_json::to_vec(message).unwrap_or_else(|e| unreachable!("OTLP messages serialize: {e}")),
        }
    }
}

/// `google.rpc.Status`, the body of an OTLP/HTTP error.
#[derive(Clone, PartialEq, Message, serde::Serialize)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

fn respond(encoding: Encoding, status: StatusCode, body: Vec<u8>) -> Response {
    let mut response = (status, body).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(encoding.content_type()));
    response
}

/// An error answer; `code` is the gRPC code the HTTP status stands for.
fn error(encoding: Encoding, status: StatusCode, code: tonic::Code, message: String) -> Response {
    let mut response = respond(encoding, status, encoding.encode(&RpcStatus { code: code as i32, message }));
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

/// The body with `Content-Encoding` undone, never larger than `limit`.
pub(super) fn decompressed(headers: &HeaderMap, body: Bytes, limit: usize) -> Result<Bytes, Refusal> {
    match headers.get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok()).map(str::trim) {
        None | Some("") | Some("identity") => Ok(body),
        Some("gzip") => {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&body[..])
                .take(limit as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| Refusal::Invalid(format!("the gzip body does not decompress: {e}")))?;
            if out.len() > limit {
                return Err(Refusal::TooLarge(format!("the body decompresses to more than the limit of {limit} bytes")));
            }
            Ok(out.into())
        }
        Some(other) => Err(Refusal::Invalid(format!("Content-Encoding `{other}` is not supported: send gzip or none"))),
    }
}

async fn export<S: Signal>(State(http): State<Arc<Http>>, headers: HeaderMap, body: Body) -> Response {
    let encoding = match Encoding::of(&headers) {
        Ok(e) => e,
        Err(message) => return http.ingest.reject(StatusCode::UNSUPPORTED_MEDIA_TYPE, message),
    };
    let receiver = &http.receiver;
    if !receiver.authorized(headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok())) {
        return error(encoding, StatusCode::UNAUTHORIZED, tonic::Code::Unauthenticated, "missing or invalid bearer token".into());
    }
    let body = match http.ingest.read_body(&headers, body).await {
        Ok(b) => b,
        Err(refused) => return refused,
    };
    let limit = receiver.max_body;
    // A compressed body may grow to `limit` once undone.
    let compressed = headers.get(header::CONTENT_ENCODING).is_some_and(|v| !matches!(v.to_str().map(str::trim), Ok("" | "identity")));
    let size = if compressed { limit } else { body.len() };
    let converted = decode_sized(size, move || {
        let body = decompressed(&headers, body, limit)?;
        let request: S = encoding.decode(&body)?;
        Ok::<_, Refusal>((request.records(), convert(&request, body.len())))
    })
    .await;
    let answer = match converted {
        Ok(Ok((records, converted))) => receiver.take::<S>(records, converted).await,
        Ok(Err(refusal)) => receiver.take::<S>(0, Err(refusal)).await,
        Err(panicked) => receiver.take::<S>(0, Err(Refusal::Invalid(panicked))).await,
    };
    match answer {
        Answer::Accepted { rejected, message } => respond(encoding, StatusCode::OK, encoding.encode(&S::response(rejected, message))),
        Answer::Busy(message) => error(encoding, StatusCode::SERVICE_UNAVAILABLE, tonic::Code::Unavailable, message),
        Answer::Refused(Refusal::Invalid(message)) => error(encoding, StatusCode::BAD_REQUEST, tonic::Code::InvalidArgument, message),
        Answer::Refused(Refusal::TooLarge(message)) => {
            error(encoding, StatusCode::PAYLOAD_TOO_LARGE, tonic::Code::ResourceExhausted, message)
        }
    }
}
