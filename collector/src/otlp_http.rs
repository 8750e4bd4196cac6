//! OTLP/HTTP: `POST /v1/traces`, `/v1/metrics`, `/v1/logs`, protobuf or JSON, optionally compressed (gzip, deflate
//! or zstd).
//!
//! Follows the OTLP/HTTP specification: the response uses the request's encoding; errors carry a
//! `google.rpc.Status` body (protobuf or JSON) whose message says what was wrong; 503 comes with `Retry-After`.

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::{BytesRejection, FailedToBufferBody};
use axum::extract::{DefaultBodyLimit, Extension, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tailscope_core::config::CorsConfig;
use tailscope_core::memory::Reservation;
use tailscope_core::projects::IngestProject;
use tailscope_core::schema::Signal;
use tower_http::cors::CorsLayer;

use crate::admission::{Codec, RequestMemory};
use crate::error::IngestError;
use crate::receiver::Receiver;

/// The two encodings OTLP/HTTP defines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// `application/x-protobuf`
    Protobuf,
    /// `application/json`
    Json,
}

impl Encoding {
    fn content_type(self) -> &'static str {
        match self {
            Encoding::Protobuf => "application/x-protobuf",
            Encoding::Json => "application/json",
        }
    }

    /// Picks the encoding from a `Content-Type` header (parameters such as `charset` are ignored).
    pub fn from_content_type(value: Option<&HeaderValue>) -> Result<Encoding, IngestError> {
        let raw = value.and_then(|v| v.to_str().ok()).unwrap_or("");
        let mime = raw.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        match mime.as_str() {
            "application/x-protobuf" | "application/protobuf" => Ok(Encoding::Protobuf),
            "application/json" => Ok(Encoding::Json),
            _ => Err(IngestError::UnsupportedMediaType(raw.to_string())),
        }
    }
}

/// The OTLP/HTTP routes. Every answer that is not a success carries a `google.rpc.Status` in the request's
/// encoding (JSON when it has none OTLP defines), as OTLP/HTTP clients expect: unknown paths and methods too.
pub fn router(receiver: Receiver) -> Router {
    // The compressed body may not exceed the decompressed limit either; the limit after decompression is
    // enforced while inflating.
    let limit = receiver.max_body_bytes();
    let cors = cors(&receiver.config().server.cors);
    let router = Router::new()
        .route("/v1/traces", post(traces))
        .route("/v1/metrics", post(metrics))
        .route("/v1/logs", post(logs))
        .method_not_allowed_fallback(wrong_method)
        .fallback(no_route)
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(receiver.clone(), admit))
        .with_state(receiver);
    // Outermost: a preflight is answered before admission, and every answer, refusals too, carries the headers
    // that let the page read it.
    match cors {
        Some(cors) => router.layer(cors),
        None => router,
    }
}

/// `[server.cors]` as a layer; `None` when no origin is allowed, so that no CORS header is ever sent.
fn cors(config: &CorsConfig) -> Option<CorsLayer> {
    use tower_http::cors::{AllowOrigin, ExposeHeaders};
    if !config.enabled() {
        return None;
    }
    // Validated at start (`CorsConfig::validate`); what would not convert is left out rather than trusted.
    let origins = if config.allowed_origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(config.allowed_origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    // What OTLP exporters in browsers send, and the operator's additions.
    let headers = [header::CONTENT_TYPE, header::CONTENT_ENCODING, header::ACCEPT]
        .into_iter()
        .chain(config.allowed_headers.iter().filter_map(|h| http::HeaderName::from_bytes(h.as_bytes()).ok()));
    let mut layer = CorsLayer::new()
        .allow_origin(origins)
        .allow_methods([http::Method::POST])
        .allow_headers(headers.collect::<Vec<_>>())
        // A page told to retry may read when.
        .expose_headers(ExposeHeaders::list([header::RETRY_AFTER]));
    if !config.max_age.is_zero() {
        layer = layer.max_age(config.max_age);
    }
    Some(layer)
}

fn signal_of(path: &str) -> Signal {
    match path {
        "/v1/metrics" => Signal::Metrics,
        "/v1/logs" => Signal::Logs,
        _ => Signal::Spans,
    }
}

fn is_compressed(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| !matches!(v.trim().to_ascii_lowercase().as_str(), "" | "identity"))
}

/// Admits a request against the memory budget before its body is read, and reserves the body as it arrives (see
/// [`crate::admission`]). Refused for now: 503 + `Retry-After`, the OTLP retryable answer, in the request's
/// encoding, once the body is read. Refused for good (it can never fit): 413 at once, before the body is read, and
/// the connection is closed, so the client neither sends the rest nor retries.
async fn admit(State(receiver): State<Receiver>, request: Request, next: Next) -> Response {
    let signal = signal_of(request.uri().path());
    let encoding = Encoding::from_content_type(request.headers().get(header::CONTENT_TYPE)).unwrap_or(Encoding::Json);
    let compressed = is_compressed(request.headers());
    let least_peak = |len| Receiver::least_peak(encoding == Encoding::Protobuf, compressed, len);
    let memory = match RequestMemory::admit(receiver.memory(), request.headers(), receiver.max_body_bytes(), least_peak)
    {
        Ok(m) => m,
        Err(error) if error.is_permanent_refusal() => {
            receiver.reject_request(signal, &error);
            let mut response = error_response(&receiver, encoding, &error);
            // The body was not read: the connection cannot carry another request (HTTP/2 resets the stream).
            if request.version() <= http::Version::HTTP_11 {
                response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            return response;
        }
        Err(error) => {
            receiver.refuse_for_memory(signal, &error);
            crate::admission::drain(request.into_body(), receiver.max_body_bytes()).await;
            return error_response(&receiver, encoding, &error);
        }
    };
    let version = request.version();
    let (mut parts, body) = request.into_parts();
    parts.extensions.insert(memory.clone());
    let mut response = next.run(Request::from_parts(parts, Body::new(memory.wrap(body)))).await;
    // A body cut at server.body_timeout: the rest of it may still be on its way.
    if response.status() == StatusCode::REQUEST_TIMEOUT && version <= http::Version::HTTP_11 {
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    match memory.refusal() {
        // The body was cut off at the ceiling; whatever the extractor answered, the client is told why (to retry
        // later, unless the body alone can never fit).
        Some(e) => {
            let error = IngestError::from(e);
            receiver.refuse_for_memory(signal, &error);
            error_response(&receiver, encoding, &error)
        }
        None => response,
    }
}

/// An OTLP path asked with another method than POST.
async fn wrong_method(State(receiver): State<Receiver>, request: Request) -> Response {
    let encoding = Encoding::from_content_type(request.headers().get(header::CONTENT_TYPE)).unwrap_or(Encoding::Json);
    let error = IngestError::WrongMethod(request.method().to_string());
    let mut response = error_response(&receiver, encoding, &error);
    response.headers_mut().insert(header::ALLOW, HeaderValue::from_static("POST"));
    response
}

/// A path that is not an OTLP route.
async fn no_route(State(receiver): State<Receiver>, request: Request) -> Response {
    let encoding = Encoding::from_content_type(request.headers().get(header::CONTENT_TYPE)).unwrap_or(Encoding::Json);
    error_response(&receiver, encoding, &IngestError::NoRoute(request.uri().path().to_string()))
}

/// What a body that could not be collected means: past `ingest.max_body_bytes` (a chunked body, or an HTTP/2 one
/// without a length), cut at `server.body_timeout`, or a connection that failed.
fn body_error(receiver: &Receiver, rejection: BytesRejection) -> IngestError {
    if let BytesRejection::FailedToBufferBody(FailedToBufferBody::LengthLimitError(_)) = rejection {
        return IngestError::TooLarge { limit: receiver.max_body_bytes() };
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&rejection);
    while let Some(e) = source {
        if let Some(crate::net::BodyError::TimedOut { limit }) = e.downcast_ref::<crate::net::BodyError>() {
            return IngestError::BodyTimedOut { limit: *limit };
        }
        source = e.source();
    }
    IngestError::BodyRead(rejection.body_text())
}

/// Inflates a body in its `Content-Encoding` (gzip, deflate or zstd), refusing to go past `limit` bytes, and
/// reserving what it inflates in `reservation` as it goes (the compressed body's share is given back at the end).
pub fn decompress(
    headers: &HeaderMap,
    body: Bytes,
    limit: usize,
    reservation: &mut Reservation,
) -> Result<Bytes, IngestError> {
    let encoding = headers.get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok()).unwrap_or("identity");
    match Codec::from_content_encoding(encoding)? {
        None => {
            if body.len() > limit {
                return Err(IngestError::TooLarge { limit });
            }
            Ok(body)
        }
        Some(codec) => {
            let compressed = body.len();
            let mut out = Vec::new();
            crate::admission::inflate(codec, &body, limit, &mut out, reservation)?;
            drop(body);
            reservation.shrink(compressed);
            Ok(Bytes::from(out))
        }
    }
}

/// Decodes an export request in either encoding.
pub fn decode<T: Message + Default + DeserializeOwned>(encoding: Encoding, body: &[u8]) -> Result<T, IngestError> {
    match encoding {
        Encoding::Protobuf => T::decode(body).map_err(|e| IngestError::Malformed {
            format: "protobuf",
            detail: format!("{e}; is the body an OTLP Export*ServiceRequest?"),
        }),
        Encoding::Json => serde_json::from_slice(body).map_err(|e| IngestError::Malformed {
            format: "JSON",
            detail: format!("{e}; OTLP/JSON wants lowerCamelCase keys, hex trace/span ids and integer enum values"),
        }),
    }
}

fn encode<T: Message + Serialize>(encoding: Encoding, status: StatusCode, value: &T) -> Response {
    let body = match encoding {
        Encoding::Protobuf => value.encode_to_vec(),
        // Serialising the generated types cannot fail.
        Encoding::Json => {
            serde_json::to_value(value).and_then(|v| serde_json::to_vec(&without_nulls(v))).unwrap_or_default()
        }
    };
    (status, [(header::CONTENT_TYPE, encoding.content_type())], body).into_response()
}

/// `value` without its `null` members. The generated types serialise an absent message field as `null`, where
/// OTLP/JSON (proto3's JSON mapping) leaves it out: a fully accepted export answers `{}`, not
/// `{"partialSuccess": null}`, which clients that check for the key read as a partial success.
fn without_nulls(value: serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(members) => {
            members.into_iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k, without_nulls(v))).collect()
        }
        other => other,
    }
}

/// `google.rpc.Status`, the body of OTLP/HTTP error responses.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

fn error_response(receiver: &Receiver, encoding: Encoding, error: &IngestError) -> Response {
    let status = RpcStatus { code: error.grpc_code() as i32, message: error.to_string() };
    let mut response = encode(encoding, error.http_status(), &status);
    if error.is_retryable() {
        let secs = receiver.retry_after().as_secs().max(1).to_string();
        if let Ok(v) = HeaderValue::from_str(&secs) {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
    }
    response
}

/// Checks the content type, decompresses, hands the body to `store` and answers in the request's encoding.
/// `store` decodes; a body it cannot decode comes back as [`IngestError::Malformed`] (already counted).
async fn handle<Resp, F, Fut>(
    receiver: Receiver,
    signal: Signal,
    headers: HeaderMap,
    memory: RequestMemory,
    body: Result<Bytes, BytesRejection>,
    store: F,
) -> Response
where
    Resp: Message + Serialize,
    F: FnOnce(Receiver, Encoding, Bytes, Reservation) -> Fut,
    Fut: std::future::Future<Output = Result<Resp, IngestError>>,
{
    let encoding = match Encoding::from_content_type(headers.get(header::CONTENT_TYPE)) {
        Ok(e) => e,
        Err(e) => {
            receiver.reject_request(signal, &e);
            // The request's encoding is unknown: answer in JSON, readable by people and tools alike.
            return error_response(&receiver, Encoding::Json, &e);
        }
    };
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            let e = body_error(&receiver, rejection);
            // A body refused at the memory ceiling is answered and counted by `admit`.
            if memory.refusal().is_none() {
                receiver.reject_request(signal, &e);
            }
            return error_response(&receiver, encoding, &e);
        }
    };
    // The frames are gone, the collected body remains.
    let mut reservation = memory.take();
    reservation.force_resize(body.len());
    let body = match decompress(&headers, body, receiver.max_body_bytes(), &mut reservation) {
        Ok(b) => b,
        Err(e) => {
            if e.is_retryable() {
                receiver.refuse_for_memory(signal, &e);
            } else {
                receiver.reject_request(signal, &e);
            }
            return error_response(&receiver, encoding, &e);
        }
    };
    match store(receiver.clone(), encoding, body, reservation).await {
        Ok(response) => encode(encoding, StatusCode::OK, &response),
        Err(e) => error_response(&receiver, encoding, &e),
    }
}

/// [`decode`], counting a body that does not decode as a rejected request.
fn decode_counted<T: Message + Default + DeserializeOwned>(
    receiver: &Receiver,
    signal: Signal,
    encoding: Encoding,
    body: &[u8],
) -> Result<T, IngestError> {
    decode(encoding, body).inspect_err(|e| receiver.reject_request(signal, e))
}

async fn traces(
    State(receiver): State<Receiver>,
    Extension(memory): Extension<RequestMemory>,
    project: Option<Extension<IngestProject>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let project = project.map(|Extension(p)| p.0).unwrap_or_default();
    handle(receiver, Signal::Spans, headers, memory, body, |r, encoding, body, mut reservation| async move {
        match encoding {
            // Protobuf is read in place, without prost's owned structs (the hot path).
            Encoding::Protobuf => r.traces_protobuf(body, project, &mut reservation).await,
            Encoding::Json => {
                r.reserve_owned_decoding(Signal::Spans, &mut reservation, body.len())?;
                let request: ExportTraceServiceRequest = decode_counted(&r, Signal::Spans, encoding, &body)?;
                drop(body);
                r.traces(request, project, &mut reservation).await
            }
        }
    })
    .await
}

async fn metrics(
    State(receiver): State<Receiver>,
    Extension(memory): Extension<RequestMemory>,
    project: Option<Extension<IngestProject>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let project = project.map(|Extension(p)| p.0).unwrap_or_default();
    handle(receiver, Signal::Metrics, headers, memory, body, |r, encoding, body, mut reservation| async move {
        match encoding {
            Encoding::Protobuf => r.reserve_prescanned(Signal::Metrics, &mut reservation, &body)?,
            Encoding::Json => r.reserve_owned_decoding(Signal::Metrics, &mut reservation, body.len())?,
        }
        let request: ExportMetricsServiceRequest = decode_counted(&r, Signal::Metrics, encoding, &body)?;
        drop(body);
        r.metrics_export(request, project, &mut reservation).await
    })
    .await
}

async fn logs(
    State(receiver): State<Receiver>,
    Extension(memory): Extension<RequestMemory>,
    project: Option<Extension<IngestProject>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let project = project.map(|Extension(p)| p.0).unwrap_or_default();
    handle(receiver, Signal::Logs, headers, memory, body, |r, encoding, body, mut reservation| async move {
        match encoding {
            Encoding::Protobuf => r.reserve_prescanned(Signal::Logs, &mut reservation, &body)?,
            Encoding::Json => r.reserve_owned_decoding(Signal::Logs, &mut reservation, body.len())?,
        }
        let request: ExportLogsServiceRequest = decode_counted(&r, Signal::Logs, encoding, &body)?;
        drop(body);
        r.logs(request, project, &mut reservation).await
    })
    .await
}

/// An OTLP/HTTP error answer outside the ingest path (e.g. a refused API key): `google.rpc.Status` with `grpc_code`
/// and `message`, in the encoding the request's `Content-Type` names (JSON when it names none OTLP defines).
pub fn status_response(
    content_type: Option<&HeaderValue>,
    status: StatusCode,
    grpc_code: i32,
    message: String,
) -> http::Response<http_body_util::Full<bytes::Bytes>> {
    let encoding = Encoding::from_content_type(content_type).unwrap_or(Encoding::Json);
    let body = match encoding {
        Encoding::Protobuf => RpcStatus { code: grpc_code, message }.encode_to_vec(),
        Encoding::Json => serde_json::to_vec(&RpcStatus { code: grpc_code, message }).unwrap_or_default(),
    };
    let mut response = http::Response::new(http_body_util::Full::new(bytes::Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(encoding.content_type()));
    response
}
