//! OTLP/gRPC: the Collector's three export services on one port.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{LogsService, LogsServiceServer};
use opentelemetry_proto::tonic::collector::logs::v1::{ExportLogsServiceRequest, ExportLogsServiceResponse};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{MetricsService, MetricsServiceServer};
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};
use tributary_sdk::http::decode_sized;
use tributary_sdk::SourceContext;

use super::rows::Refusal;
use super::{convert, Answer, Receiver, Signal};

#[derive(Clone)]
struct Grpc(Arc<Receiver>);

pub async fn serve(address: SocketAddr, receiver: Arc<Receiver>, ctx: &SourceContext, stop_timeout: Duration) -> anyhow::Result<()> {
    let listener =
        tokio::net::TcpListener::bind(address).await.map_err(|e| anyhow::anyhow!("otlp: cannot listen for gRPC on {address}: {e}"))?;
    tracing::info!(source = %ctx.id, %address, "otlp (gRPC) listening");
    let limit = receiver.max_body;
    let grpc = Grpc(receiver);
    let server = tonic::transport::Server::builder()
        .add_service(MetricsServiceServer::new(grpc.clone()).max_decoding_message_size(limit))
        .add_service(LogsServiceServer::new(grpc.clone()).max_decoding_message_size(limit))
        .add_service(TraceServiceServer::new(grpc).max_decoding_message_size(limit))
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), ctx.shutdown.cancelled());
    // On stop, requests in flight get `stop_timeout` to hear their answer; then the server goes.
    let stopped = async {
        ctx.shutdown.cancelled().await;
        tokio::time::sleep(stop_timeout).await;
    };
    tokio::select! {
        served = server => served.map_err(|e| anyhow::anyhow!("otlp: the gRPC server on {address} failed: {e}")),
        () = stopped => Ok(()),
    }
}

impl Grpc {
    async fn export<S: Signal>(&self, request: Request<S>) -> Result<Response<S::Response>, Status> {
        let receiver = &self.0;
        let authorization = request.metadata().get("authorization").and_then(|v| v.to_str().ok());
        if !receiver.authorized(authorization) {
            return Err(Status::unauthenticated("missing or invalid bearer token"));
        }
        let request = request.into_inner();
        // tonic decoded the protobuf already; what is left is making rows.
        let size = request.encoded_len();
        let converted = decode_sized(size, move || (request.records(), convert(&request, size))).await;
        let answer = match converted {
            Ok((records, converted)) => receiver.take::<S>(records, converted).await,
            Err(panicked) => receiver.take::<S>(0, Err(Refusal::Invalid(panicked))).await,
        };
        match answer {
            Answer::Accepted { rejected, message } => Ok(Response::new(S::response(rejected, message))),
            Answer::Busy(message) => Err(Status::unavailable(message)),
            Answer::Refused(Refusal::Invalid(message) | Refusal::TooLarge(message)) => Err(Status::invalid_argument(message)),
        }
    }
}

#[tonic::async_trait]
impl MetricsService for Grpc {
    async fn export(&self, request: Request<ExportMetricsServiceRequest>) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        Grpc::export(self, request).await
    }
}

#[tonic::async_trait]
impl LogsService for Grpc {
    async fn export(&self, request: Request<ExportLogsServiceRequest>) -> Result<Response<ExportLogsServiceResponse>, Status> {
        Grpc::export(self, request).await
    }
}

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(&self, request: Request<ExportTraceServiceRequest>) -> Result<Response<ExportTraceServiceResponse>, Status> {
        Grpc::export(self, request).await
    }
}
