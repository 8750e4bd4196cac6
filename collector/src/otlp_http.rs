//! OTLP/HTTP: `POST /v1/traces`, `/v1/metrics`, `/v1/logs`, protobuf or JSON, optionally gzip-compressed.
//!
//! Follows the OTLP/HTTP specification: the response uses the request's encoding; errors carry a
//! `google.rpc.Status` body (protobuf or JSON) whose message says what was wrong; 503 comes with `Retry-After`.

use std::io::Read;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::IngestError;
use crate::receiver::Receiver;
use crate::schema::Signal;

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

/// The OTLP/HTTP routes.
pub fn router(receiver: Receiver) -> Router {
    // The compressed body may not exceed the decompressed limit either; the limit after decompression is
    // enforced while inflating.
    let limit = receiver.max_body_bytes();
    Router::new()
        .route("/v1/traces", post(traces))
        .route("/v1/metrics", post(metrics))
        .route("/v1/logs", post(logs))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(receiver)
}

/// Inflates a gzip body, refusing to go past `limit` bytes.
pub fn decompress(headers: &HeaderMap, body: Bytes, limit: usize) -> Result<Bytes, IngestError> {
    let encoding = headers.get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok()).unwrap_or("identity");
    match encoding.trim().to_ascii_lowercase().as_str() {
        "" | "identity" => {
            if body.len() > limit {
                return Err(IngestError::TooLarge { limit });
            }
            Ok(body)
        }
        "gzip" | "x-gzip" => {
            let mut out = Vec::with_capacity((body.len() * 4).min(limit));
            let mut decoder = flate2::read::GzDecoder::new(&body[..]).take(limit as u64 + 1);
            decoder.read_to_end(&mut out).map_err(|e| IngestError::Malformed {
                format: "gzip",
                detail: format!("{e}; the body does not match Content-Encoding: gzip"),
            })?;
            if out.len() > limit {
                return Err(IngestError::TooLarge { limit });
            }
            Ok(Bytes::from(out))
        }
        other => Err(IngestError::UnsupportedEncoding(other.to_string())),
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
        Encoding::Json => serde_json::to_vec(value).unwrap_or_default(),
    };
    (status, [(header::CONTENT_TYPE, encoding.content_type())], body).into_response()
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
async fn handle<Resp, F, Fut>(receiver: Receiver, signal: Signal, headers: HeaderMap, body: Bytes, store: F) -> Response
where
    Resp: Message + Serialize,
    F: FnOnce(Receiver, Encoding, Bytes) -> Fut,
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
    let body = match decompress(&headers, body, receiver.max_body_bytes()) {
        Ok(b) => b,
        Err(e) => {
            receiver.reject_request(signal, &e);
            return error_response(&receiver, encoding, &e);
        }
    };
    match store(receiver.clone(), encoding, body).await {
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

async fn traces(State(receiver): State<Receiver>, headers: HeaderMap, body: Bytes) -> Response {
    handle(receiver, Signal::Spans, headers, body, |r, encoding, body| async move {
        match encoding {
            // Protobuf is read in place, without prost's owned structs (the hot path).
            Encoding::Protobuf => r.traces_protobuf(body).await,
            Encoding::Json => {
                let request: ExportTraceServiceRequest = decode_counted(&r, Signal::Spans, encoding, &body)?;
                r.traces(request).await
            }
        }
    })
    .await
}

async fn metrics(State(receiver): State<Receiver>, headers: HeaderMap, body: Bytes) -> Response {
    handle(receiver, Signal::Metrics, headers, body, |r, encoding, body| async move {
        let request: ExportMetricsServiceRequest = decode_counted(&r, Signal::Metrics, encoding, &body)?;
        r.metrics_export(request).await
    })
    .await
}

async fn logs(State(receiver): State<Receiver>, headers: HeaderMap, body: Bytes) -> Response {
    handle(receiver, Signal::Logs, headers, body, |r, encoding, body| async move {
        let request: ExportLogsServiceRequest = decode_counted(&r, Signal::Logs, encoding, &body)?;
        r.logs(request).await
    })
    .await
}
