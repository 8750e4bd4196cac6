//! `POST /api/v1/query`: SQL over HTTP, answered as JSON, CSV or Arrow IPC by the `Accept` header.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Deserialize;

use crate::engine::Engine;
use crate::error::QueryError;
use crate::format::{self, Format};

/// The body of `POST /api/v1/query`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct QueryRequest {
    sql: String,
}

/// The query routes, to merge into the API server:
/// - `POST /api/v1/query` with `{"sql": "..."}` (or the SQL itself as a `text/plain` / `application/sql` body);
/// - `GET /api/v1/query?sql=...` for quick use from a browser or `curl`.
///
/// The answer is a JSON array of row objects, or CSV (`Accept: text/csv`), Arrow IPC
/// (`Accept: application/vnd.apache.arrow.stream`), NDJSON (`Accept: application/x-ndjson`). Errors are
/// `{"error": "...", "kind": "..."}` with 400 (bad SQL, writes), 504 (timeout), 503 (too busy), 422 (memory limit)
/// or 500.
pub fn router(engine: Engine) -> Router {
    Router::new().route("/api/v1/query", post(query_post).get(query_get)).with_state(engine)
}

async fn query_post(State(engine): State<Engine>, headers: HeaderMap, body: Bytes) -> Response {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let is_json = content_type.starts_with("application/json")
        || (content_type.is_empty() && body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{'));
    let sql = if is_json {
        match serde_json::from_slice::<QueryRequest>(&body) {
            Ok(request) => request.sql,
            Err(e) => {
                return error_response(QueryError::InvalidSql(format!(
                    "the body must be a JSON object {{\"sql\": \"SELECT ...\"}}: {e}"
                )));
            }
        }
    } else {
        match String::from_utf8(body.to_vec()) {
            Ok(sql) => sql,
            Err(_) => return error_response(QueryError::InvalidSql("the SQL body is not UTF-8".into())),
        }
    };
    run(engine, &headers, &sql).await
}

#[derive(Debug, Deserialize)]
struct QueryParams {
    sql: String,
}

async fn query_get(State(engine): State<Engine>, headers: HeaderMap, Query(params): Query<QueryParams>) -> Response {
    run(engine, &headers, &params.sql).await
}

async fn run(engine: Engine, headers: &HeaderMap, sql: &str) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("application/json");
    let format = Format::from_accept(accept);
    let started = std::time::Instant::now();
    let output = match engine.sql(sql).await {
        Ok(output) => output,
        Err(e) => {
            tracing::info!(error = %e, kind = e.kind(), "query refused or failed");
            return error_response(e);
        }
    };
    let rows = output.num_rows();
    // Encoding a large result is CPU work: keep it off the async workers.
    let encoded = tokio::task::spawn_blocking(move || format::to_bytes(format, &output)).await;
    match encoded {
        Ok(Ok(bytes)) => {
            tracing::debug!(rows, elapsed = ?started.elapsed(), "query answered");
            ([(header::CONTENT_TYPE, format.media_type())], bytes).into_response()
        }
        Ok(Err(e)) => error_response(QueryError::Internal(format!("cannot encode the result: {e}"))),
        Err(e) => error_response(QueryError::Internal(format!("result encoder failed: {e}"))),
    }
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
