//! OTLP/gRPC: TraceService, MetricsService and LogsService on one port, gzip accepted and answered.

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{LogsService, LogsServiceServer};
use opentelemetry_proto::tonic::collector::logs::v1::{ExportLogsServiceRequest, ExportLogsServiceResponse};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use tonic::codec::CompressionEncoding;
use tonic::{Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::error::IngestError;
use crate::receiver::Receiver;

/// The three OTLP gRPC services over one [`Receiver`].
#[derive(Clone)]
pub struct OtlpGrpc {
    receiver: Receiver,
}

impl OtlpGrpc {
    fn status(&self, error: IngestError) -> Status {
        let message = error.to_string();
        if error.is_retryable() {
            // OTLP clients honour RetryInfo's delay before retrying UNAVAILABLE.
            let details = ErrorDetails::with_retry_info(Some(self.receiver.retry_after()));
            Status::with_error_details(error.grpc_code(), message, details)
        } else {
            Status::new(error.grpc_code(), message)
        }
    }
}

#[tonic::async_trait]
impl TraceService for OtlpGrpc {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        self.receiver.traces(request.into_inner()).await.map(Response::new).map_err(|e| self.status(e))
    }
}

#[tonic::async_trait]
impl MetricsService for OtlpGrpc {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        self.receiver.metrics_export(request.into_inner()).await.map(Response::new).map_err(|e| self.status(e))
    }
}

#[tonic::async_trait]
impl LogsService for OtlpGrpc {
    async fn export(
        &self,
        request: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        self.receiver.logs(request.into_inner()).await.map(Response::new).map_err(|e| self.status(e))
    }
}

/// tonic answers an over-limit message with OUT_OF_RANGE; the OTLP specification asks for RESOURCE_EXHAUSTED.
/// This rewrites that one status on the way out (errors are trailers-only responses, so it is in the headers).
fn map_too_large(mut response: http::Response<tonic::body::Body>) -> http::Response<tonic::body::Body> {
    let headers = response.headers_mut();
    let too_large = headers.get("grpc-status").is_some_and(|v| v == "11")
        && headers.get("grpc-message").is_some_and(|m| m.to_str().is_ok_and(|m| m.contains("too%20large") || m.contains("too large")));
    if too_large {
        headers.insert("grpc-status", http::HeaderValue::from_static("8"));
        headers.insert(
            "grpc-message",
            http::HeaderValue::from_static(
                "request exceeds ingest.max_body_bytes after decompression; split the batch or raise the limit",
            ),
        );
    }
    response
}

/// Serves OTLP/gRPC on `addr` until `shutdown` completes.
pub async fn serve(
    receiver: Receiver,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let limit = receiver.max_body_bytes();
    let svc = OtlpGrpc { receiver };
    let traces = TraceServiceServer::new(svc.clone())
        .accept_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(limit);
    let metrics = MetricsServiceServer::new(svc.clone())
        .accept_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(limit);
    let logs = LogsServiceServer::new(svc)
        .accept_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(limit);
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tonic::transport::Server::builder()
        .layer(tower_layer_map_response())
        .add_service(traces)
        .add_service(metrics)
        .add_service(logs)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

fn tower_layer_map_response() -> tower::util::MapResponseLayer<fn(http::Response<tonic::body::Body>) -> http::Response<tonic::body::Body>> {
    tower::util::MapResponseLayer::new(map_too_large as fn(_) -> _)
}
