//! How a query error reaches a Flight SQL client: each kind of [`QueryError`] mapped once to a gRPC code, as
//! `QueryError::http_status` maps it for the HTTP API.

use query::QueryError;
use tonic::Status;

/// The gRPC status for `e`, its message the error's own.
pub fn grpc_status(e: &QueryError) -> Status {
    let message = e.to_string();
    match e {
        QueryError::InvalidSql(_) | QueryError::LimitExceeded(_) => Status::invalid_argument(message),
        QueryError::ReadOnly { .. } => Status::permission_denied(message),
        QueryError::Timeout { .. } => Status::deadline_exceeded(message),
        QueryError::TooBusy { .. } | QueryError::UnreadableFile(_) => Status::unavailable(message),
        QueryError::ResourcesExhausted(_) | QueryError::BodyTooLarge { .. } => Status::resource_exhausted(message),
        QueryError::Internal(_) => Status::internal(message),
    }
}
