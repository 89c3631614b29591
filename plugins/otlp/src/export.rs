//! Sending an export request over OTLP/HTTP (protobuf) or OTLP/gRPC, and sorting failures into
//! retryable and refused as the OTLP specification does.

use std::str::FromStr;

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use prost::Message;
use serde::Deserialize;
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue, MetadataMap};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tributary_sdk::retry::WriteError;
use tributary_sdk::{error_chain, ComponentMetrics};

use crate::OtlpSinkConfig;

/// The OTLP transport.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// Protobuf bodies POSTed to the endpoint URL.
    #[default]
    Http,
    /// The `MetricsService/Export` RPC.
    Grpc,
}

pub(crate) struct Exporter {
    transport: Transport,
    endpoint: String,
}

enum Transport {
    Http { client: reqwest::Client, headers: reqwest::header::HeaderMap },
    Grpc { client: MetricsServiceClient<Channel>, metadata: MetadataMap },
}

impl Exporter {
    /// Builds the client without connecting (gRPC connects lazily and reconnects by itself).
    pub(crate) fn new(cfg: &OtlpSinkConfig) -> Result<Exporter, String> {
        let transport = match cfg.protocol {
            Protocol::Http => {
                let mut headers = reqwest::header::HeaderMap::new();
                headers.insert(reqwest::header::CONTENT_TYPE, "application/x-protobuf".parse().unwrap());
                for (name, value) in &cfg.headers {
                    let name =
                        reqwest::header::HeaderName::from_str(name).map_err(|_| format!("header `{name}` is not a valid header name"))?;
                    let mut value = reqwest::header::HeaderValue::from_str(value.expose())
                        .map_err(|_| format!("header `{name}` has a value that is not valid in HTTP"))?;
                    value.set_sensitive(true);
                    headers.insert(name, value);
                }
                let client = reqwest::Client::builder().timeout(cfg.timeout.0).build().map_err(|e| format!("HTTP client: {e}"))?;
                Transport::Http { client, headers }
            }
            Protocol::Grpc => {
                let mut endpoint = Endpoint::from_shared(cfg.endpoint.clone())
                    .map_err(|e| format!("`{}` is not a valid gRPC endpoint: {e}", cfg.endpoint))?
                    .timeout(cfg.timeout.0);
                if cfg.endpoint.starts_with("https://") {
                    endpoint = endpoint.tls_config(ClientTlsConfig::new().with_webpki_roots()).map_err(|e| format!("TLS: {e}"))?;
                }
                let mut metadata = MetadataMap::new();
                for (name, value) in &cfg.headers {
                    let key = AsciiMetadataKey::from_str(&name.to_ascii_lowercase())
                        .map_err(|_| format!("header `{name}` is not a valid gRPC metadata key"))?;
                    let value = AsciiMetadataValue::try_from(value.expose())
                        .map_err(|_| format!("header `{name}` has a value that is not valid gRPC metadata"))?;
                    metadata.insert(key, value);
                }
                Transport::Grpc { client: MetricsServiceClient::new(endpoint.connect_lazy()), metadata }
            }
        };
        Ok(Exporter { transport, endpoint: cfg.endpoint.clone() })
    }

    /// Points the receiver took the request for but rejected cannot be told apart from the rest:
    /// they are reported as errors on `metrics`, not dead-lettered.
    pub(crate) async fn export(&self, request: &ExportMetricsServiceRequest, metrics: &ComponentMetrics) -> Result<(), WriteError> {
        let response = match &self.transport {
            Transport::Http { client, headers } => {
                let answer = client
                    .post(&self.endpoint)
                    .headers(headers.clone())
                    .body(request.encode_to_vec())
                    .send()
                    .await
                    .map_err(|e| WriteError::Transient(error_chain(&e)))?;
                let status = answer.status();
                let protobuf = answer
                    .headers()
                    .get(reqwest::header::CONTENT_TYPE)
                    .is_some_and(|v| v.as_bytes().starts_with(b"application/x-protobuf"));
                let body = answer.bytes().await.map_err(|e| WriteError::Transient(error_chain(&e)))?;
                if !status.is_success() {
                    let message = format!("HTTP {status}: {}", http_error_message(protobuf, &body));
                    // OTLP/HTTP: only 429, 502, 503 and 504 are worth retrying.
                    return Err(if matches!(status.as_u16(), 429 | 502 | 503 | 504) {
                        WriteError::Transient(message)
                    } else {
                        WriteError::Refused(message)
                    });
                }
                // An empty or non-protobuf 2xx body (VictoriaMetrics answers with nothing) is a success.
                ExportMetricsServiceResponse::decode(body.as_ref()).unwrap_or_default()
            }
            Transport::Grpc { client, metadata } => {
                let mut grpc = tonic::Request::new(request.clone());
                *grpc.metadata_mut() = metadata.clone();
                match client.clone().export(grpc).await {
                    Ok(answer) => answer.into_inner(),
                    Err(status) => {
                        use tonic::Code::*;
                        let message = format!("gRPC {:?}: {}", status.code(), status.message());
                        return Err(match status.code() {
                            Cancelled | DeadlineExceeded | ResourceExhausted | Aborted | OutOfRange | Unavailable | DataLoss => {
                                WriteError::Transient(message)
                            }
                            _ => WriteError::Refused(message),
                        });
                    }
                }
            }
        };
        if let Some(partial) = response.partial_success.filter(|p| p.rejected_data_points > 0) {
            tributary_sdk::report_error!(
                metrics,
                warn,
                count = partial.rejected_data_points,
                endpoint = %self.endpoint,
                "the receiver rejected data points: {}",
                partial.error_message
            );
        }
        Ok(())
    }
}

/// The message of an OTLP/HTTP error body: a protobuf `google.rpc.Status` (its `message`, field
/// 2) or plain text, cut to 500 characters.
fn http_error_message(protobuf: bool, body: &[u8]) -> String {
    #[derive(Clone, PartialEq, prost::Message)]
    struct Status {
        #[prost(int32, tag = "1")]
        code: i32,
        #[prost(string, tag = "2")]
        message: String,
    }
    let text = match Status::decode(body) {
        Ok(s) if protobuf && !s.message.is_empty() => s.message,
        _ => String::from_utf8_lossy(body).trim().to_string(),
    };
    text.chars().take(500).collect()
}
