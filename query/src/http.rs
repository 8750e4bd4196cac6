//! `POST /api/v1/query`: SQL over HTTP, answered as JSON, CSV or Arrow IPC by the `Accept` header.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Extension, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Deserialize;

use futures::StreamExt;

use crate::engine::{Engine, QueryStream};
use crate::error::QueryError;
use crate::format::{Encoder, Format};
use tailscope_core::projects::Visibility;

/// The body of `POST /api/v1/query`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct QueryRequest {
    sql: String,
}

/// The query routes, to merge into the API server:
/// - `POST /api/v1/query` with `{"sql": "..."}` (whatever the content type, so `curl -d '{"sql": ...}'` works),
///   a form field `sql=...`, or the SQL itself as a `text/plain` / `application/sql` body;
/// - `GET /api/v1/query?sql=...` for quick use from a browser or `curl`.
///
/// The answer is a JSON array of row objects, or CSV (`Accept: text/csv`), Arrow IPC
/// (`Accept: application/vnd.apache.arrow.stream`), NDJSON (`Accept: application/x-ndjson`). Errors are
/// `{"error": "...", "kind": "..."}` with 400 (bad SQL, writes), 504 (timeout), 503 (too busy; `unreadable_file`: a
/// damaged Parquet file, named, that later queries skip), 422 (memory limit) or 500.
///
/// A body longer than [`max_body_bytes`] is answered 413: at once, before a byte of it is read, and the connection
/// closed, when its `Content-Length` says so; once the limit is reached otherwise (chunked).
pub fn router(engine: Engine) -> Router {
    let limit = max_body_bytes(engine.config().max_sql_bytes);
    Router::new()
        .route("/api/v1/query", post(query_post).get(query_get))
        .layer(axum::middleware::from_fn(move |request: axum::extract::Request, next: axum::middleware::Next| {
            refuse_oversized(limit, request, next)
        }))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(engine)
}

/// The largest `POST /api/v1/query` body: room for a statement of `query.max_sql_bytes` escaped in JSON or a
/// form, and axum's usual 2 MiB at least.
pub fn max_body_bytes(max_sql_bytes: usize) -> usize {
    max_sql_bytes.saturating_mul(2).max(2 * 1024 * 1024)
}

/// Answers a request announcing a body past `limit` with 413 before reading it, and closes the connection (the
/// rest of the body may be on its way: it is not read).
async fn refuse_oversized(limit: usize, request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let announced = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if announced.is_some_and(|len| len > limit as u64) {
        let mut response = error_response(QueryError::BodyTooLarge { limit });
        if request.version() <= http::Version::HTTP_11 {
            response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        return response;
    }
    next.run(request).await
}

/// The engine as the caller's key sees it: only its projects (the authentication layer puts what it may see in the
/// request); every project outside that layer.
fn scoped(engine: &Engine, visible: Option<Extension<Visibility>>) -> Engine {
    engine.scoped(visible.map(|Extension(v)| v).unwrap_or_default())
}

async fn query_post(
    State(engine): State<Engine>,
    visible: Option<Extension<Visibility>>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(axum::extract::rejection::BytesRejection::FailedToBufferBody(
            axum::extract::rejection::FailedToBufferBody::LengthLimitError(_),
        )) => {
            return error_response(QueryError::BodyTooLarge { limit: max_body_bytes(engine.config().max_sql_bytes) });
        }
        Err(e) => return error_response(QueryError::InvalidSql(format!("reading the request body failed: {e}"))),
    };
    let content_type =
        headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_ascii_lowercase();
    let sql = match sql_of_body(&content_type, &body) {
        Ok(sql) => sql,
        Err(e) => return error_response(e),
    };
    run(scoped(&engine, visible), &headers, &sql).await
}

/// The SQL of a `POST` body. A JSON object `{"sql": ...}` is read as JSON whatever the content type says: `curl -d`
/// labels every body `application/x-www-form-urlencoded`, and a form field `sql=...` is taken too. Anything else
/// is the SQL text itself (`text/plain`, `application/sql`, or no content type).
pub(crate) fn sql_of_body(content_type: &str, body: &[u8]) -> Result<String, QueryError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    let media = content_type.split(';').next().unwrap_or("").trim();
    let is_form = media == "application/x-www-form-urlencoded";
    if media == "application/json" || media.ends_with("+json") || first == Some(&b'{') {
        return serde_json::from_slice::<QueryRequest>(body).map(|request| request.sql).map_err(|e| {
            QueryError::InvalidSql(format!(
                "the body must be a JSON object {{\"sql\": \"SELECT ...\"}} (or the SQL as text/plain): {e}"
            ))
        });
    }
    // Only a body that starts as the form `sql=...` is a form: raw SQL sent by `curl -d` is labelled a form too.
    if is_form
        && body.trim_ascii_start().starts_with(b"sql=")
        && let Some(sql) = form_field(body, "sql")
    {
        return Ok(sql);
    }
    String::from_utf8(body.to_vec()).map_err(|_| QueryError::InvalidSql("the SQL body is not UTF-8".into()))
}

/// The value of `name` in a form-encoded body (`sql=SELECT+1`).
fn form_field(body: &[u8], name: &str) -> Option<String> {
    form_urlencoded::parse(body).find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

#[derive(Debug, Deserialize)]
struct QueryParams {
    sql: String,
}

async fn query_get(
    State(engine): State<Engine>,
    visible: Option<Extension<Visibility>>,
    headers: HeaderMap,
    Query(params): Query<QueryParams>,
) -> Response {
    run(scoped(&engine, visible), &headers, &params.sql).await
}

/// Runs the statement and streams its result: the status line waits for the first batch (so the errors that come
/// before it, which are nearly all of them, get their own status), then every batch is encoded and sent as it
/// comes, the next one computed only once the client took the last (HTTP backpressure). An error after the first
/// batch can no longer change the status: the body is cut short (the client sees an incomplete chunked body).
async fn run(engine: Engine, headers: &HeaderMap, sql: &str) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("application/json");
    let format = Format::from_accept(accept);
    let started = std::time::Instant::now();
    let mut stream = match engine.stream(sql).await {
        Ok(stream) => stream,
        Err(e) => return refused(e),
    };
    let first = match stream.next().await {
        Some(Err(e)) => return refused(e),
        first => first,
    };
    let mut encoder = match Encoder::new(format, stream.schema()) {
        Ok(encoder) => encoder,
        Err(e) => {
            return error_response(QueryError::Internal(format!("cannot encode the result: {e}")));
        }
    };
    let ended = first.is_none();
    let head = match first {
        Some(Ok(batch)) => encoder.write(&batch),
        _ => Ok(Vec::new()),
    };
    let head = match head {
        Ok(head) => head,
        Err(e) => {
            return error_response(QueryError::Internal(format!("cannot encode the result: {e}")));
        }
    };
    struct Body {
        stream: Option<QueryStream>,
        encoder: Option<Encoder>,
        started: std::time::Instant,
    }
    let rest = futures::stream::unfold(
        Body {
            // An empty result ended before its first batch: only the encoder's closing bytes are left.
            stream: Some(stream).filter(|_| !ended),
            encoder: Some(encoder),
            started,
        },
        |mut body| async move {
            loop {
                let next = match body.stream.as_mut() {
                    Some(stream) => stream.next().await,
                    None => None,
                };
                let chunk = match next {
                    Some(Ok(batch)) => match body.encoder.as_mut()?.write(&batch) {
                        Ok(bytes) if bytes.is_empty() => continue,
                        Ok(bytes) => Ok(Bytes::from(bytes)),
                        Err(e) => Err(QueryError::Internal(format!("cannot encode the result: {e}"))),
                    },
                    Some(Err(e)) => Err(e),
                    None => {
                        body.stream = None;
                        let encoder = body.encoder.take()?;
                        match encoder.finish() {
                            Ok(bytes) => {
                                tracing::debug!(elapsed = ?body.started.elapsed(), "query answered");
                                return Some((Ok(Bytes::from(bytes)), body));
                            }
                            Err(e) => Err(QueryError::Internal(format!("cannot encode the result: {e}"))),
                        }
                    }
                };
                if let Err(e) = &chunk {
                    tracing::info!(error = %e, kind = e.kind(), "query failed while its result was being sent");
                    // Dropping the stream cancels the query; the body ends with the error.
                    body.stream = None;
                    body.encoder = None;
                }
                return Some((chunk, body));
            }
        },
    );
    let head = futures::stream::once(async move { Ok::<_, QueryError>(Bytes::from(head)) });
    let body = axum::body::Body::from_stream(head.chain(rest));
    ([(header::CONTENT_TYPE, format.media_type())], body).into_response()
}

fn refused(e: QueryError) -> Response {
    tracing::info!(error = %e, kind = e.kind(), "query refused or failed");
    error_response(e)
}

fn error_response(e: QueryError) -> Response {
    let status: StatusCode = e.http_status();
    let body = serde_json::json!({ "error": e.to_string(), "kind": e.kind() });
    let mut response = (status, axum::Json(body)).into_response();
    if matches!(e, QueryError::TooBusy { .. }) {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}
