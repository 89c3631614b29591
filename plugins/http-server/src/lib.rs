//! `http_server` source: rows POSTed as JSON (an object, an array of objects, or NDJSON).
//!
//! Status codes tell the client exactly what happened: 200 once the rows are accepted into the
//! pipeline (a clean shutdown still writes them), 400 with the reason for malformed or mistyped
//! input, 401 for a missing or wrong bearer token, 413 over the size limit, 503 (with
//! `Retry-After`) when the pipeline is backpressured or stopping. Nothing is half-accepted.

mod coalesce;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use coalesce::{is_single_line_object, Coalescer};
use serde::Deserialize;
use tributary_sdk::config::{BatchConfig, Batching, ByteSize};
use tributary_sdk::http::{
    decode_off_reactor, default_body_timeout, default_header_timeout, default_stop_timeout, serve, Ingest, OpenConnections, ServeLimits,
};
use tributary_sdk::json::{DocumentError, JsonRows};
use tributary_sdk::{
    BuiltSource, ComponentConfig, ConfigError, DeclaredSchema, HumanDuration, OutputSpec, Period, Secret, Source, SourceContext,
    SourcePlugin,
};

/// Config of an `http_server` source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpServerConfig {
    /// Address to listen on, e.g. `127.0.0.1:8080`.
    pub address: SocketAddr,
    /// Path that accepts POSTs (default `/`).
    #[serde(default = "default_path")]
    pub path: String,
    /// Columns and types of each posted object.
    pub schema: DeclaredSchema,
    /// Require `Authorization: Bearer <token>` (use `${ENV}`).
    pub token: Option<Secret>,
    /// Largest accepted body (default 10MiB); larger gets 413.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: ByteSize,
    /// How long a request waits for room in the pipeline before 503 (default 1s).
    #[serde(default = "default_accept_timeout")]
    pub accept_timeout: HumanDuration,
    /// Timestamp column whose missing values are filled with the receive time (default `ts`).
    #[serde(default = "default_time_column")]
    pub time_column: String,
    /// How long a client may take to send a request's headers (default 10s); then the
    /// connection is closed.
    #[serde(default = "default_header_timeout")]
    pub header_timeout: Period,
    /// How long a client may take to send a request's body (default 30s); then 408.
    #[serde(default = "default_body_timeout")]
    pub body_timeout: Period,
    /// On stop, how long requests in flight may take to finish (default 5s); then every
    /// connection is closed, so no client can hold a stop hostage.
    #[serde(default = "default_stop_timeout")]
    pub stop_timeout: Period,
    /// How single-event requests are batched before the pipeline (`max_rows`, default 1000;
    /// `max_age`, how long the first request of a batch may wait for others, default 1ms; it
    /// waits only while other connections are open that have no request in the batch).
    #[serde(default)]
    pub batch: BatchConfig,
}

/// A lone client never waits; busy concurrent clients wait up to 1ms for each other.
const DEFAULT_BATCHING: Batching = Batching { max_rows: 1000, max_age: Duration::from_millis(1) };

fn default_path() -> String {
    "/".into()
}
fn default_max_body() -> ByteSize {
    ByteSize(10 << 20)
}
fn default_accept_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(1))
}
fn default_time_column() -> String {
    "ts".into()
}

pub struct HttpServerPlugin;

impl SourcePlugin for HttpServerPlugin {
    fn type_name(&self) -> &'static str {
        "http_server"
    }
    fn delivery(&self) -> &'static [tributary_sdk::delivery::SourceDelivery] {
        &[tributary_sdk::delivery::HTTP_RECEIVER]
    }
    fn build(&self, config: &ComponentConfig) -> Result<BuiltSource, ConfigError> {
        let cfg: HttpServerConfig = config.decode()?;
        if !cfg.path.starts_with('/') {
            return Err(ConfigError::at("path", format!("must start with `/`, got `{}`", cfg.path)));
        }
        let batching = cfg.batch.resolve(DEFAULT_BATCHING)?;
        let rows = JsonRows::new(&cfg.schema, Some(&cfg.time_column));
        let outputs = vec![OutputSpec::main(rows.schema().clone())];
        Ok(BuiltSource { outputs, source: Box::new(HttpServerSource { cfg, rows, batching }) })
    }
}

pub struct HttpServerSource {
    cfg: HttpServerConfig,
    rows: JsonRows,
    batching: Batching,
}

struct Shared {
    ingest: Arc<Ingest>,
    rows: JsonRows,
    coalescer: Coalescer,
}

#[async_trait::async_trait]
impl Source for HttpServerSource {
    async fn run(self: Box<Self>, ctx: SourceContext) -> anyhow::Result<()> {
        let ingest = Arc::new(Ingest {
            id: ctx.id.clone(),
            token: self.cfg.token,
            max_body: self.cfg.max_body_bytes.0 as usize,
            accept_timeout: self.cfg.accept_timeout.0,
            body_timeout: self.cfg.body_timeout.0,
            output: ctx.output("").clone(),
            metrics: ctx.metrics.clone(),
        });
        let open = OpenConnections::default();
        let (coalescer, batches) = Coalescer::start(ingest.clone(), self.rows.clone(), self.batching, open.clone());
        let shared = Arc::new(Shared { ingest, rows: self.rows, coalescer });
        let app = Router::new().route(&self.cfg.path, post(ingest_rows)).with_state(shared);
        let limits = ServeLimits {
            header_timeout: self.cfg.header_timeout.0,
            body_timeout: self.cfg.body_timeout.0,
            stop_timeout: self.cfg.stop_timeout.0,
        };
        let served = serve(self.cfg.address, app, &ctx, &format!("http_server on {}", self.cfg.path), limits, &open).await;
        // Every request has been answered and the app dropped: the last batch is on its way.
        batches.await?;
        served
    }
}

async fn ingest_rows(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Body) -> Response {
    let bytes = match shared.ingest.read_body(&headers, body).await {
        Ok(b) => b,
        Err(refused) => return refused,
    };
    if is_single_line_object(&bytes) {
        return shared.coalescer.submit(&shared.ingest, bytes).await;
    }
    let decoding = shared.clone();
    match decode_off_reactor(move || decoding.rows.decode_document(&bytes)).await {
        Ok(Ok(batch)) => shared.ingest.accept(batch).await,
        Ok(Err(DocumentError::TooLarge(reason))) => shared.ingest.reject(StatusCode::PAYLOAD_TOO_LARGE, reason),
        Ok(Err(DocumentError::Invalid(reason))) | Err(reason) => shared.ingest.reject(StatusCode::BAD_REQUEST, reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tributary_sdk::json::MAX_DECODED_PER_BYTE;

    fn rows() -> JsonRows {
        JsonRows::new(&serde_yaml::from_str::<DeclaredSchema>("{ts: timestamp, user: string, score: int}").unwrap(), Some("ts"))
    }

    #[test]
    fn accepts_object_array_and_ndjson_bodies() {
        let r = rows();
        assert_eq!(r.decode_document(b"{\n  \"user\": \"a\",\n  \"score\": 1\n}").unwrap().num_rows(), 1);
        assert_eq!(r.decode_document(br#"[{"user":"a","score":1},{"user":"b","score":2}]"#).unwrap().num_rows(), 2);
        assert_eq!(
            r.decode_document(b"{\"user\":\"a\",\"score\":1}\n{\"user\":\"b\",\"score\":2}\n{\"user\":\"c\"}\n").unwrap().num_rows(),
            3
        );
        assert_eq!(r.decode_document(b"  \n").unwrap().num_rows(), 0);
    }

    #[test]
    fn reports_the_first_bad_line_and_how_many_more() {
        let err =
            rows().decode_document(b"{\"user\":\"a\",\"score\":1}\n{\"user\":\"b\",\"score\":\"lots\"}\n{oops\n").unwrap_err().to_string();
        assert!(err.starts_with("line 2: ") && err.contains("score") && err.ends_with("(and 1 more bad lines)"), "{err}");
        let err = rows().decode_document(b"[{\"user\":1}").unwrap_err().to_string();
        assert!(err.starts_with("malformed JSON array: EOF while parsing a list"), "{err}");
    }

    fn invalid(body: &[u8]) -> String {
        match rows().decode_document(body) {
            Err(DocumentError::Invalid(m)) => m,
            other => panic!("expected a 400 for {:?}, got {other:?}", String::from_utf8_lossy(&body[..body.len().min(80)])),
        }
    }

    /// Nesting past the limit is refused naming it, wherever it is: in a declared string column
    /// (where arrow-json's error message recursed until the stack overflowed), under an unknown
    /// key, at the top, in an array element, in a pretty-printed object.
    #[test]
    fn deep_nesting_is_a_400_naming_the_limit() {
        let deep = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
        let limit = "JSON nested deeper than 64 levels (the limit)";
        assert_eq!(invalid(format!("{{\"user\":{}}}", deep(30_000)).as_bytes()), format!("line 1: {limit}"));
        assert_eq!(invalid(format!("{{\"user\":\"a\"}}\n{{\"other\":{}}}\n", deep(30_000)).as_bytes()), format!("line 2: {limit}"));
        assert_eq!(invalid(deep(30_000).as_bytes()), format!("malformed JSON array: {limit} at line 1"));
        assert_eq!(invalid(format!("{{\n\"user\":\n{}}}", deep(100)).as_bytes()), format!("line 3: {limit}"));
        // 63 levels inside the object are fine for an undeclared key.
        let ok = format!("{{\"user\":\"a\",\"other\":{}}}", deep(63));
        assert_eq!(rows().decode_document(ok.as_bytes()).unwrap().num_rows(), 1);
    }

    /// Exact numbers or a 400 naming the column and the value, on every path: the one-pass
    /// decoder, arrow-json over a whole body, an array, a pretty-printed object.
    #[test]
    fn integers_are_exact_or_refused() {
        for (body, expected) in [
            (
                &b"{\"score\":-9223372036854775809}"[..],
                "line 1: column \"score\": -9223372036854775809 is outside the 64-bit integer range",
            ),
            (b"{\"score\":1.5}", "line 1: column \"score\": 1.5 is not a whole number"),
            (
                b"{\"user\":\"a\",\"score\":1}\n{\"score\":\"2\",\"x\":[1]}\n{\"score\":1.5}",
                "line 3: column \"score\": 1.5 is not a whole number",
            ),
            (b"[{\"score\":1},{\"score\":2.5e0}]", "element 1: column \"score\": 2.5e0 is not a whole number"),
            (
                b"{\n \"score\": 99999999999999999999\n}",
                "line 1: column \"score\": 99999999999999999999 is outside the 64-bit integer range",
            ),
            (
                b"{\"ts\":1e300}",
                "line 1: column \"ts\": 1e300 is outside the supported time range (microseconds since 1970, years -262143 to 262142)",
            ),
            (b"{\"user\":\"a\x01b\"}", "line 1: raw control character U+0001 inside a string (JSON requires it escaped, as \\u0001)"),
        ] {
            assert_eq!(invalid(body), expected, "{}", String::from_utf8_lossy(body));
        }
        let whole = rows().decode_document(b"[{\"score\":1.0},{\"score\":1e2},{\"score\":-9223372036854775808}]").unwrap();
        let scores = whole.column(2).as_any().downcast_ref::<datafusion::arrow::array::Int64Array>().unwrap();
        assert_eq!(scores.values().to_vec(), [1, 100, i64::MIN]);
    }

    /// An array of a million empty objects is decoded as lines, not as a million one-row batches
    /// (1.37 GB); a body whose rows would take more than the documented multiple is a 413.
    #[test]
    fn rows_cost_a_bounded_multiple_of_the_body() {
        let body = format!("[{}{{}}]", "{},".repeat(999_999));
        let batch = rows().decode_document(body.as_bytes()).unwrap();
        assert_eq!(batch.num_rows(), 1_000_000);
        assert!(batch.get_array_memory_size() <= MAX_DECODED_PER_BYTE * body.len(), "{} bytes", batch.get_array_memory_size());
        let wide: DeclaredSchema =
            serde_yaml::from_str(&format!("{{{}}}", (0..40).map(|i| format!("c{i}: int")).collect::<Vec<_>>().join(", "))).unwrap();
        match JsonRows::new(&wide, None).decode_document("{}\n".repeat(10_000).as_bytes()) {
            Err(DocumentError::TooLarge(m)) => assert_eq!(
                m,
                "its 10000 rows would take 3600000 bytes decoded, more than 16 times the body's 30000 bytes (the limit); send fewer, fuller rows per request"
            ),
            other => panic!("{other:?}"),
        }
    }

    /// A large body is decoded off the async workers: the runtime keeps serving other tasks (the
    /// admin API, other sources) meanwhile. Decoded inline, as before, the ticker below could not
    /// run once before the decode finished.
    #[tokio::test(flavor = "current_thread")]
    async fn a_large_body_is_decoded_without_holding_the_runtime() {
        let body: Vec<u8> = (0..100_000).flat_map(|i| format!("{{\"user\":\"u{i}\",\"score\":{i}}}\n").into_bytes()).collect();
        let ticks = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = ticks.clone();
        let ticker = tokio::spawn(async move {
            loop {
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tokio::task::yield_now().await;
            }
        });
        let decoded = decode_off_reactor(move || rows().decode_document(&body)).await.unwrap().unwrap();
        let ran = ticks.load(std::sync::atomic::Ordering::Relaxed);
        ticker.abort();
        assert_eq!(decoded.num_rows(), 100_000);
        assert!(ran > 0, "the runtime ran other tasks while the body was decoded");
    }

    #[test]
    fn token_comparison_is_exact() {
        let token = Secret::new("s3cret");
        assert!(token.matches("s3cret"));
        assert!(!token.matches("s3cre"));
        assert!(!token.matches("s3creT"));
    }
}
