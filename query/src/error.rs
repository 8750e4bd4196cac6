//! What can go wrong with a query, each kind mapped once to an HTTP status (here) and a gRPC code (the Flight SQL
//! server's business: `flight::grpc_status` in the `tailscope-flight` crate).

use std::time::Duration;

use datafusion::error::DataFusionError;

/// A query that did not produce a result.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The SQL does not parse or does not plan: a syntax error, an unknown table or column, a type mismatch.
    /// The message is DataFusion's, which names the offending column or function.
    #[error("{0}")]
    InvalidSql(String),
    /// The statement would write or change something; tailscope's SQL is read-only.
    #[error("tailscope's SQL is read-only: {statement} is refused (only SELECT, WITH, EXPLAIN, SHOW and DESCRIBE run)")]
    ReadOnly {
        /// What was refused, e.g. `CREATE TABLE`, `INSERT`, `COPY`, `SET`.
        statement: String,
    },
    /// The query ran longer than `query.timeout` and was cancelled.
    #[error(
        "query cancelled after {timeout:?} (query.timeout in the config): narrow the time range with a predicate on \
         start_time/time or date/hour, or raise the timeout"
    )]
    Timeout {
        /// The configured limit.
        timeout: Duration,
    },
    /// Every query slot stayed busy for the whole timeout.
    #[error(
        "too many concurrent queries: all {max_concurrent} slots (query.max_concurrent) stayed busy for {waited:?}; \
         retry later"
    )]
    TooBusy {
        /// The configured number of slots.
        max_concurrent: usize,
        /// How long this query waited.
        waited: Duration,
    },
    /// The query needed more memory than `query.memory_limit_mb` or the process-wide `memory.limit_mb` left it,
    /// and could not spill.
    #[error("{0} (the limits are query.memory_limit_mb per query and memory.limit_mb for the whole process)")]
    ResourcesExhausted(String),
    /// The statement asks for more than a configured bound allows: it is too long or nests too deeply
    /// (`query.max_sql_bytes`, `query.max_expr_depth`), or a function would produce more than
    /// `query.max_function_output_mb`. The message names the limit and what to change.
    #[error("{0}")]
    LimitExceeded(String),
    /// A Parquet file in the data dir could not be read (damaged or truncated): the message names it and says what
    /// to do. Later queries skip the file, so a retry answers from the other files.
    #[error("{0}")]
    UnreadableFile(String),
    /// The request body is larger than the API accepts (see `crate::http::max_body_bytes`); refused before it is
    /// read.
    #[error(
        "the request body exceeds the API's {limit}-byte limit (twice query.max_sql_bytes, at least 2 MiB); send a \
         shorter statement or raise query.max_sql_bytes"
    )]
    BodyTooLarge {
        /// The API's body limit in bytes.
        limit: usize,
    },
    /// Anything else: a bug.
    #[error("internal error while running the query: {0}")]
    Internal(String),
}

impl QueryError {
    /// Classifies a DataFusion error: planning and parsing errors are the user's, the rest are ours.
    pub fn from_datafusion(e: DataFusionError) -> QueryError {
        if let Some(limit) = crate::limits::find_limit(&e) {
            return QueryError::LimitExceeded(limit.0.clone());
        }
        if let Some(file) = crate::unreadable::find_unreadable(&e) {
            return QueryError::UnreadableFile(file.to_string());
        }
        match e.find_root() {
            DataFusionError::SQL(..)
            | DataFusionError::Plan(_)
            | DataFusionError::SchemaError(..)
            | DataFusionError::NotImplemented(_) => QueryError::InvalidSql(e.strip_backtrace()),
            DataFusionError::ResourcesExhausted(_) => QueryError::ResourcesExhausted(e.strip_backtrace()),
            // Type errors at execution (e.g. a bad cast of a literal) are still about the SQL text.
            DataFusionError::ArrowError(inner, _)
                if matches!(
                    **inner,
                    datafusion::arrow::error::ArrowError::CastError(_)
                        | datafusion::arrow::error::ArrowError::ParseError(_)
                        | datafusion::arrow::error::ArrowError::DivideByZero
                        | datafusion::arrow::error::ArrowError::InvalidArgumentError(_)
                ) =>
            {
                QueryError::InvalidSql(e.strip_backtrace())
            }
            _ => QueryError::Internal(e.strip_backtrace()),
        }
    }

    /// A short machine-readable name of the kind, used in JSON error bodies.
    pub fn kind(&self) -> &'static str {
        match self {
            QueryError::InvalidSql(_) => "invalid_sql",
            QueryError::ReadOnly { .. } => "read_only",
            QueryError::Timeout { .. } => "timeout",
            QueryError::TooBusy { .. } => "too_busy",
            QueryError::ResourcesExhausted(_) => "resources_exhausted",
            QueryError::LimitExceeded(_) => "limit_exceeded",
            QueryError::UnreadableFile(_) => "unreadable_file",
            QueryError::BodyTooLarge { .. } => "too_large",
            QueryError::Internal(_) => "internal",
        }
    }

    /// The HTTP status for this error.
    pub fn http_status(&self) -> http::StatusCode {
        use http::StatusCode;
        match self {
            QueryError::InvalidSql(_) | QueryError::ReadOnly { .. } | QueryError::LimitExceeded(_) => {
                StatusCode::BAD_REQUEST
            }
            QueryError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            // Unavailable, not broken: the file is skipped from now on, so the same query answers when retried.
            QueryError::TooBusy { .. } | QueryError::UnreadableFile(_) => StatusCode::SERVICE_UNAVAILABLE,
            QueryError::ResourcesExhausted(_) => StatusCode::UNPROCESSABLE_ENTITY,
            QueryError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            QueryError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<DataFusionError> for QueryError {
    fn from(e: DataFusionError) -> Self {
        QueryError::from_datafusion(e)
    }
}

impl From<crate::limits::LimitExceeded> for QueryError {
    fn from(e: crate::limits::LimitExceeded) -> Self {
        QueryError::LimitExceeded(e.0)
    }
}
