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
use tailscope_core::schema::Signal;
use tonic::codec::CompressionEncoding;
use tonic::{Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::admission::RequestMemory;
use crate::error::IngestError;
use crate::receiver::Receiver;

/// The three OTLP gRPC services over one [`Receiver`].
#[derive(Clone)]
pub struct OtlpGrpc {
    receiver: Receiver,
}

impl OtlpGrpc {
    /// The request's memory reservation (see [`Admission`]), or an empty one.
    fn reservation<T>(&self, request: &Request<T>) -> tailscope_core::memory::Reservation {
        match request.extensions().get::<RequestMemory>() {
            Some(memory) => memory.take(),
            None => self.receiver.memory().empty(),
        }
    }

    /// The project the request's rows go to, as its key chose it (see `crate::auth`); `default` outside the
    /// authentication layer.
    fn project<T>(request: &Request<T>) -> tailscope_core::projects::Project {
        request.extensions().get::<tailscope_core::projects::IngestProject>().map(|p| p.0.clone()).unwrap_or_default()
    }

    /// Reserves a decoded message of `len` bytes (tonic inflated and buffered it; the frames were reserved as
    /// they arrived).
    fn reserve_message(
        &self,
        signal: Signal,
        reservation: &mut tailscope_core::memory::Reservation,
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
            let project = OtlpGrpc::project(&request);
            let body = request.into_inner();
            svc.reserve_message(Signal::Spans, &mut reservation, body.len())?;
            svc.receiver
                .traces_protobuf(body, project, &mut reservation)
                .await
                .map(Response::new)
                .map_err(|e| svc.status(e))
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
        let project = OtlpGrpc::project(&request);
        let request = request.into_inner();
        self.reserve_message(Signal::Metrics, &mut reservation, request.encoded_len())?;
        self.receiver
            .metrics_export(request, project, &mut reservation)
            .await
            .map(Response::new)
            .map_err(|e| self.status(e))
    }
}

#[tonic::async_trait]
impl LogsService for OtlpGrpc {
    async fn export(
        &self,
        request: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        let mut reservation = self.reservation(&request);
        let project = OtlpGrpc::project(&request);
        let request = request.into_inner();
        self.reserve_message(Signal::Logs, &mut reservation, request.encoded_len())?;
        self.receiver.logs(request, project, &mut reservation).await.map(Response::new).map_err(|e| self.status(e))
    }
}

/// tonic answers an over-limit message with OUT_OF_RANGE; the OTLP specification asks for RESOURCE_EXHAUSTED
/// (without `RetryInfo`: it is not retried). This rewrites that one status on the way out (errors are
/// trailers-only responses, so it is in the headers); true if it did.
fn map_too_large(response: &mut http::Response<tonic::body::Body>) -> bool {
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
    too_large
}

/// The OTLP/gRPC services (traces, metrics, logs) as one tower service, for [`crate::net::serve`] with
/// [`crate::net::Protocol::Grpc`].
pub fn service(receiver: Receiver) -> GrpcService {
    let limit = receiver.max_body_bytes();
    let admission = OtlpGrpc { receiver: receiver.clone() };
    let svc = OtlpGrpc { receiver };
    let traces = TraceExport { svc: svc.clone(), max_body_bytes: limit };
    // gzip is inflated by `Admission` within the memory budget; tonic sees uncompressed messages.
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
    tower::util::MapRequest::new(admitted, to_tonic_body as ToTonicBody)
}

/// What [`service`] returns.
pub type GrpcService = tower::util::MapRequest<Admission<tonic::service::Routes>, ToTonicBody>;

/// [`to_tonic_body`].
pub type ToTonicBody = fn(http::Request<crate::net::TimedBody>) -> http::Request<tonic::body::Body>;

/// The listener hands over its deadline-bound body; the admission layer counts frames of tonic's body type.
fn to_tonic_body(request: http::Request<crate::net::TimedBody>) -> http::Request<tonic::body::Body> {
    request.map(tonic::body::Body::new)
}

/// Admits every OTLP/gRPC request against the memory budget: its body frames are reserved as they arrive (see
/// [`crate::admission`]), and a request cut off at the ceiling is answered UNAVAILABLE with `RetryInfo`, whatever
/// tonic made of the interrupted body (RESOURCE_EXHAUSTED without it if the request can never fit). A gzip request
/// is inflated here, within the budget and `ingest.max_body_bytes`, before tonic sees it (tonic would inflate into
/// a buffer of up to its message limit that no budget knows of).
#[derive(Clone)]
pub struct Admission<S> {
    inner: S,
    svc: OtlpGrpc,
}

/// The gRPC message prefix: a compressed flag and a big-endian length.
const GRPC_PREFIX: usize = 5;

impl OtlpGrpc {
    /// Counts and answers a refused request.
    fn refuse(&self, signal: Signal, error: IngestError) -> http::Response<tonic::body::Body> {
        if error.is_retryable() {
            self.receiver.refuse_for_memory(signal, &error);
        } else {
            self.receiver.reject_request(signal, &error);
        }
        self.status(error).into_http()
    }

    /// Reads a request's body (reserved as it arrives) before tonic decodes it, for two reasons. Its gzip messages
    /// are inflated here, within the budget and `ingest.max_body_bytes` (tonic would inflate into a buffer of up to
    /// its message limit that no budget knows of). And a metrics or logs message, which prost decodes into owned
    /// structs, is walked first and what decoding it will hold is reserved ([`Receiver::reserve_prescanned`]).
    /// Returns the messages uncompressed; the reservation then holds them twice (tonic copies them into its
    /// buffer) and the decoding's estimate.
    async fn read_ahead(
        &self,
        signal: Signal,
        memory: &RequestMemory,
        body: tonic::body::Body,
    ) -> Result<Bytes, IngestError> {
        use http_body_util::BodyExt;
        let limit = self.receiver.max_body_bytes();
        // The compressed body may not exceed the decompressed limit either (as over HTTP).
        let limited = http_body_util::Limited::new(memory.wrap(body), limit.saturating_add(GRPC_PREFIX));
        let collected = match limited.collect().await {
            Ok(c) => c.to_bytes(),
            Err(e) => {
                if let Some(refusal) = memory.refusal() {
                    return Err(IngestError::from(refusal));
                }
                if e.is::<http_body_util::LengthLimitError>() {
                    return Err(IngestError::TooLarge { limit });
                }
                // A body cut at server.body_timeout is answered DEADLINE_EXCEEDED by the listener.
                return Err(IngestError::BodyRead(e.to_string()));
            }
        };
        let mut reservation = memory.take();
        // The frames are gone, the collected body remains.
        reservation.force_resize(collected.len());
        let malformed = |detail: &str| IngestError::Malformed { format: "gRPC", detail: detail.to_string() };
        let mut out = Vec::new();
        let mut decoding = 0usize;
        let mut rest = &collected[..];
        while !rest.is_empty() {
            let Some((prefix, after)) = rest.split_first_chunk::<GRPC_PREFIX>() else {
                return Err(malformed("a message prefix is cut short"));
            };
            let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
            let Some((message, after)) = after.split_at_checked(len) else {
                return Err(malformed("a message is shorter than its prefix says"));
            };
            let start = out.len();
            reservation.try_grow(GRPC_PREFIX, &"a request message")?;
            out.extend_from_slice(&[0; GRPC_PREFIX]);
            match prefix[0] {
                0 => {
                    if len > limit {
                        return Err(IngestError::TooLarge { limit });
                    }
                    reservation.try_grow(len, &"a request message")?;
                    out.extend_from_slice(message);
                }
                1 => crate::admission::inflate(
                    crate::admission::Codec::Gzip,
                    message,
                    limit,
                    &mut out,
                    &mut reservation,
                )?,
                flag => return Err(malformed(&format!("unknown compressed flag {flag}"))),
            }
            let inflated = out.len() - start - GRPC_PREFIX;
            if inflated > limit {
                return Err(IngestError::TooLarge { limit });
            }
            let inflated_len = u32::try_from(inflated).map_err(|_| IngestError::TooLarge { limit })?;
            out[start + 1..start + GRPC_PREFIX].copy_from_slice(&inflated_len.to_be_bytes());
            if signal != Signal::Spans {
                let estimate = Receiver::decoding_estimate(signal, &out[start + GRPC_PREFIX..])?;
                let more = estimate.total().saturating_add(crate::receiver::NORMALISED_FIXED_BYTES);
                let purpose = format!(
                    "decoding a {signal} export of {inflated} bytes ({} messages, {} rows)",
                    estimate.messages, estimate.rows
                );
                reservation.try_grow(more, &purpose)?;
                decoding = decoding.saturating_add(more);
            }
            rest = after;
        }
        drop(collected);
        // What exists now, and tonic's copy of it to come (as for the frames of an uncompressed body).
        reservation.try_resize(out.capacity() + out.len() + decoding, &"a request body")?;
        memory.restore(reservation);
        Ok(Bytes::from(out))
    }
}

fn is_gzip(headers: &http::HeaderMap) -> bool {
    headers.get("grpc-encoding").is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"))
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
        let gzip = is_gzip(request.headers());
        let least_peak = |len| Receiver::least_peak(true, gzip, len);
        let memory =
            match RequestMemory::admit(receiver.memory(), request.headers(), receiver.max_body_bytes(), least_peak) {
                Ok(m) => m,
                Err(error) => {
                    let response = svc.refuse(signal, error);
                    return Box::pin(async move { Ok(response) });
                }
            };
        let (mut parts, body) = request.into_parts();
        parts.extensions.insert(memory.clone());
        // The clone is the one made ready by `poll_ready` (tower's usual swap), so the future owns its service.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            // Traces are read in place (`TraceExport`); metrics and logs are walked before prost decodes them.
            let body = if gzip || signal != Signal::Spans {
                match svc.read_ahead(signal, &memory, body).await {
                    Ok(inflated) => {
                        parts.headers.remove("grpc-encoding");
                        parts.headers.remove(http::header::CONTENT_LENGTH);
                        tonic::body::Body::new(http_body_util::Full::new(inflated))
                    }
                    Err(error) => return Ok(svc.refuse(signal, error)),
                }
            } else {
                tonic::body::Body::new(memory.wrap(body))
            };
            let mut response = inner.call(http::Request::from_parts(parts, body)).await?;
            Ok(match memory.refusal() {
                Some(e) => svc.refuse(signal, IngestError::from(e)),
                None => {
                    if map_too_large(&mut response) {
                        svc.receiver
                            .reject_request(signal, &IngestError::TooLarge { limit: svc.receiver.max_body_bytes() });
                    }
                    response
                }
            })
        })
    }
}
