//! OTLP/gRPC: TraceService, MetricsService and LogsService on one port, gzip accepted and answered.
//!
//! Metrics and logs use `opentelemetry-proto`'s generated services. Traces, the hot path, are served by
//! [`TraceExport`]: the same gRPC method, but the request reaches tailscope as the bytes that arrived, so that
//! [`crate::wire`] can normalise spans without first building prost's owned structs.

use std::convert::Infallible;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use futures::future::BoxFuture;
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder, EnabledCompressionEncodings, EncodeBuf, Encoder};
use tonic::server::{NamedService, UnaryService};

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{LogsService, LogsServiceServer};
use opentelemetry_proto::tonic::collector::logs::v1::{ExportLogsServiceRequest, ExportLogsServiceResponse};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use tonic::codec::CompressionEncoding;
use tonic::{Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::admission::RequestMemory;
use crate::error::IngestError;
use crate::receiver::Receiver;
use crate::schema::Signal;

/// The three OTLP gRPC services over one [`Receiver`].
#[derive(Clone)]
pub struct OtlpGrpc {
    receiver: Receiver,
}

impl OtlpGrpc {
    /// The request's memory reservation (see [`Admission`]), or an empty one.
    fn reservation<T>(&self, request: &Request<T>) -> crate::memory::Reservation {
        match request.extensions().get::<RequestMemory>() {
            Some(memory) => memory.take(),
            None => self.receiver.memory().empty(),
        }
    }

    /// Reserves a decoded message of `len` bytes (tonic inflated and buffered it; the frames were reserved as
    /// they arrived).
    fn reserve_message(
        &self,
        signal: Signal,
        reservation: &mut crate::memory::Reservation,
        len: usize,
    ) -> Result<(), Status> {
        reservation.try_grow(len, &"a request message").map_err(|e| {
            let error = IngestError::from(e);
            self.receiver.refuse_for_memory(signal, &error);
            self.status(error)
        })
    }

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

/// `opentelemetry.proto.collector.trace.v1.TraceService`, taking each request as its encoded bytes.
#[derive(Clone)]
struct TraceExport {
    svc: OtlpGrpc,
    max_body_bytes: usize,
}

impl TraceExport {
    const EXPORT: &'static str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
}

impl NamedService for TraceExport {
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
}

impl<B> tower::Service<http::Request<B>> for TraceExport
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != Self::EXPORT {
            let status = Status::unimplemented(format!("unknown method {}", request.uri().path()));
            return Box::pin(async move { Ok(status.into_http()) });
        }
        let this = self.clone();
        Box::pin(async move {
            let mut gzip = EnabledCompressionEncodings::default();
            gzip.enable(CompressionEncoding::Gzip);
            let mut grpc = tonic::server::Grpc::new(RawRequestCodec)
                .apply_compression_config(gzip, gzip)
                .apply_max_message_size_config(Some(this.max_body_bytes), None);
            Ok(grpc.unary(this, request).await)
        })
    }
}

impl UnaryService<Bytes> for TraceExport {
    type Response = ExportTraceServiceResponse;
    type Future = BoxFuture<'static, Result<Response<ExportTraceServiceResponse>, Status>>;

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let svc = self.svc.clone();
        Box::pin(async move {
            let mut reservation = svc.reservation(&request);
            let body = request.into_inner();
            svc.reserve_message(Signal::Spans, &mut reservation, body.len())?;
            svc.receiver.traces_protobuf(body, &mut reservation).await.map(Response::new).map_err(|e| svc.status(e))
        })
    }
}

/// Decodes a request to its bytes (decompressed, framing removed) and encodes responses with prost.
#[derive(Debug, Clone, Copy, Default)]
struct RawRequestCodec;

impl Codec for RawRequestCodec {
    type Encode = ExportTraceServiceResponse;
    type Decode = Bytes;
    type Encoder = RawRequestCodec;
    type Decoder = RawRequestCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawRequestCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawRequestCodec
    }
}

impl Encoder for RawRequestCodec {
    type Item = ExportTraceServiceResponse;
    type Error = Status;

    fn encode(&mut self, item: ExportTraceServiceResponse, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst).map_err(|e| Status::internal(format!("encoding the response: {e}")))
    }
}

impl Decoder for RawRequestCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

#[tonic::async_trait]
impl MetricsService for OtlpGrpc {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        let mut reservation = self.reservation(&request);
        let request = request.into_inner();
        self.reserve_message(Signal::Metrics, &mut reservation, request.encoded_len())?;
        self.receiver.metrics_export(request, &mut reservation).await.map(Response::new).map_err(|e| self.status(e))
    }
}

#[tonic::async_trait]
impl LogsService for OtlpGrpc {
    async fn export(
        &self,
        request: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        let mut reservation = self.reservation(&request);
        let request = request.into_inner();
        self.reserve_message(Signal::Logs, &mut reservation, request.encoded_len())?;
        self.receiver.logs(request, &mut reservation).await.map(Response::new).map_err(|e| self.status(e))
    }
}

/// tonic answers an over-limit message with OUT_OF_RANGE; the OTLP specification asks for RESOURCE_EXHAUSTED.
/// This rewrites that one status on the way out (errors are trailers-only responses, so it is in the headers).
fn map_too_large(mut response: http::Response<tonic::body::Body>) -> http::Response<tonic::body::Body> {
    let headers = response.headers_mut();
    let too_large = headers.get("grpc-status").is_some_and(|v| v == "11")
        && headers
            .get("grpc-message")
            .is_some_and(|m| m.to_str().is_ok_and(|m| m.contains("too%20large") || m.contains("too large")));
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

/// The OTLP/gRPC services (traces, metrics, logs) as one tower service, for [`crate::net::serve`] with
/// [`crate::net::Protocol::Grpc`].
pub fn service(receiver: Receiver) -> GrpcService {
    let limit = receiver.max_body_bytes();
    let admission = OtlpGrpc { receiver: receiver.clone() };
    let svc = OtlpGrpc { receiver };
    let traces = TraceExport { svc: svc.clone(), max_body_bytes: limit };
    let metrics = MetricsServiceServer::new(svc.clone())
        .accept_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(limit);
    let logs = LogsServiceServer::new(svc)
        .accept_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(limit);
    let routes = tonic::service::Routes::new(traces).add_service(metrics).add_service(logs);
    let admitted = Admission { inner: routes, svc: admission };
    let typed = tower::util::MapRequest::new(admitted, to_tonic_body as ToTonicBody);
    tower::util::MapResponse::new(typed, map_too_large as MapTooLarge)
}

/// What [`service`] returns.
pub type GrpcService =
    tower::util::MapResponse<tower::util::MapRequest<Admission<tonic::service::Routes>, ToTonicBody>, MapTooLarge>;

/// [`map_too_large`].
pub type MapTooLarge = fn(http::Response<tonic::body::Body>) -> http::Response<tonic::body::Body>;

/// [`to_tonic_body`].
pub type ToTonicBody = fn(http::Request<crate::net::TimedBody>) -> http::Request<tonic::body::Body>;

/// The listener hands over its deadline-bound body; the admission layer counts frames of tonic's body type.
fn to_tonic_body(request: http::Request<crate::net::TimedBody>) -> http::Request<tonic::body::Body> {
    request.map(tonic::body::Body::new)
}

/// Admits every OTLP/gRPC request against the memory budget: its body frames are reserved as they arrive (see
/// [`crate::admission`]), and a request cut off at the ceiling is answered UNAVAILABLE with `RetryInfo`, whatever
/// tonic made of the interrupted body.
#[derive(Clone)]
pub struct Admission<S> {
    inner: S,
    svc: OtlpGrpc,
}

impl<S> tower::Service<http::Request<tonic::body::Body>> for Admission<S>
where
    S: tower::Service<http::Request<tonic::body::Body>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let signal = match request.uri().path() {
            p if p.contains("MetricsService") => Signal::Metrics,
            p if p.contains("LogsService") => Signal::Logs,
            _ => Signal::Spans,
        };
        let svc = self.svc.clone();
        let receiver = &svc.receiver;
        let memory = match RequestMemory::admit(receiver.memory(), request.headers(), receiver.max_body_bytes()) {
            Ok(m) => m,
            Err(e) => {
                let error = IngestError::from(e);
                receiver.refuse_for_memory(signal, &error);
                let response = svc.status(error).into_http();
                return Box::pin(async move { Ok(response) });
            }
        };
        let (mut parts, body) = request.into_parts();
        parts.extensions.insert(memory.clone());
        let request = http::Request::from_parts(parts, tonic::body::Body::new(memory.wrap(body)));
        // The clone is the one made ready by `poll_ready` (tower's usual swap), so the future owns its service.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let response = inner.call(request).await?;
            Ok(match memory.refusal() {
                Some(e) => {
                    let error = IngestError::from(e);
                    svc.receiver.refuse_for_memory(signal, &error);
                    svc.status(error).into_http()
                }
                None => response,
            })
        })
    }
}
