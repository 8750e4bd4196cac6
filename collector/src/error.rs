//! The collector's errors, each carrying what a user needs to act on it. A configuration that cannot be used is
//! `tailscope_core::error::ConfigError`; a memory refusal `tailscope_core::memory::MemoryError`.
//!
//! One place ([`IngestError::grpc_status`], [`IngestError::http_status`]) decides how an ingest failure maps to
//! gRPC codes and HTTP statuses, following the OTLP specification: retryable conditions are UNAVAILABLE / 503,
//! bad input is INVALID_ARGUMENT / 400, too much is RESOURCE_EXHAUSTED / 413.

use std::path::PathBuf;

use thiserror::Error;

/// Why an export request was not accepted.
#[derive(Debug, Error)]
pub enum IngestError {
    /// The body could not be decoded.
    #[error("malformed {format} body: {detail}")]
    Malformed { format: &'static str, detail: String },
    /// The body is larger than `ingest.max_body_bytes` (after decompression).
    #[error("request body exceeds the {limit}-byte limit (ingest.max_body_bytes); split the batch or raise the limit")]
    TooLarge { limit: usize },
    /// The body did not arrive in full within `server.body_timeout`; nothing of it was stored.
    #[error(
        "the request body did not arrive within server.body_timeout ({limit:?}); nothing was stored: send it \
         faster or raise the limit"
    )]
    BodyTimedOut { limit: std::time::Duration },
    /// The body could not be read (the connection failed); nothing of it was stored.
    #[error("reading the request body failed ({0}); nothing was stored")]
    BodyRead(String),
    /// No such OTLP/HTTP route.
    #[error("no OTLP route {0:?}: POST to /v1/traces, /v1/metrics or /v1/logs")]
    NoRoute(String),
    /// An OTLP/HTTP route asked with another method than POST.
    #[error("method {0} is not allowed: OTLP/HTTP exports are POSTed")]
    WrongMethod(String),
    /// The content type is not one OTLP/HTTP defines.
    #[error("unsupported content type {0:?}: send application/x-protobuf or application/json")]
    UnsupportedMediaType(String),
    /// The content encoding is not supported.
    #[error("unsupported content encoding {0:?}: send identity, gzip, deflate or zstd")]
    UnsupportedEncoding(String),
    /// The write path is behind; the client should retry after the suggested delay.
    #[error("tailscope is applying backpressure: the write buffer is full ({buffered} of {limit} bytes); retry later")]
    Backpressure { buffered: usize, limit: usize },
    /// Accepting the request would pass the process-wide memory ceiling (`memory.limit_mb`); the client should
    /// retry after the suggested delay, when flushes or queries have released memory.
    #[error("tailscope is at its memory limit ({0}); retry later")]
    MemoryLimit(tailscope_core::memory::MemoryError),
    /// The request needs more memory than the whole budget holds (`memory.limit_mb`): it can never be accepted,
    /// so it is refused for good (413 / RESOURCE_EXHAUSTED without `RetryInfo`) instead of being retried for ever.
    #[error(
        "the request can never fit in tailscope's memory budget: {purpose} needs {needed} bytes, more than the whole \
         memory.limit_mb ({limit} bytes); send smaller batches (lower the exporter's batch size) or raise \
         memory.limit_mb",
        purpose = .0.purpose, needed = .0.held.saturating_add(.0.requested), limit = .0.limit
    )]
    NeverFits(tailscope_core::memory::MemoryError),
    /// The WAL holds `storage.wal_max_bytes` not yet committed to the tables (flushes fail: the object store is
    /// unreachable, the disk is full); the client should retry after the suggested delay.
    #[error(
        "tailscope is applying backpressure: {pending} bytes of the WAL wait for the tables (storage.wal_max_bytes is \
         {limit}; flushes fail, the log says why); retry later"
    )]
    WalFull { pending: u64, limit: u64 },
    /// The WAL could not be written (disk full, read-only, I/O error). Nothing of the request was acknowledged.
    #[error("cannot write to the WAL ({0}); nothing was stored, retry later")]
    Storage(String),
    /// The collector is shutting down.
    #[error("tailscope is shutting down; retry against another collector or later")]
    ShuttingDown,
}

impl From<tailscope_core::memory::MemoryError> for IngestError {
    /// A refusal at the ceiling is retryable, unless the request needs more than the whole budget.
    fn from(e: tailscope_core::memory::MemoryError) -> IngestError {
        if e.can_never_fit() { IngestError::NeverFits(e) } else { IngestError::MemoryLimit(e) }
    }
}

impl IngestError {
    /// Whether the request can never be accepted as it is, whatever the load: too large for a configured limit.
    /// Counted in `tailscope_memory_refusals_permanent_total`.
    pub fn is_permanent_refusal(&self) -> bool {
        matches!(self, IngestError::TooLarge { .. } | IngestError::NeverFits(_))
    }

    /// Whether the client may send the same request again.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            IngestError::Backpressure { .. }
                | IngestError::WalFull { .. }
                | IngestError::MemoryLimit(_)
                | IngestError::Storage(_)
                | IngestError::ShuttingDown
        )
    }

    /// The gRPC status code for this error.
    pub fn grpc_code(&self) -> tonic::Code {
        match self {
            IngestError::Malformed { .. }
            | IngestError::BodyRead(_)
            | IngestError::UnsupportedMediaType(_)
            | IngestError::UnsupportedEncoding(_) => tonic::Code::InvalidArgument,
            IngestError::BodyTimedOut { .. } => tonic::Code::DeadlineExceeded,
            IngestError::NoRoute(_) | IngestError::WrongMethod(_) => tonic::Code::Unimplemented,
            // Without RetryInfo, OTLP clients do not retry RESOURCE_EXHAUSTED.
            IngestError::TooLarge { .. } | IngestError::NeverFits(_) => tonic::Code::ResourceExhausted,
            IngestError::Backpressure { .. }
            | IngestError::WalFull { .. }
            | IngestError::MemoryLimit(_)
            | IngestError::Storage(_)
            | IngestError::ShuttingDown => tonic::Code::Unavailable,
        }
    }

    /// The HTTP status for this error.
    pub fn http_status(&self) -> http::StatusCode {
        use http::StatusCode as S;
        match self {
            IngestError::Malformed { .. } | IngestError::BodyRead(_) => S::BAD_REQUEST,
            // As for every listener's cut bodies (collector::net).
            IngestError::BodyTimedOut { .. } => S::REQUEST_TIMEOUT,
            IngestError::NoRoute(_) => S::NOT_FOUND,
            IngestError::WrongMethod(_) => S::METHOD_NOT_ALLOWED,
            // RFC 7694: an unsupported content coding is answered with 415 too.
            IngestError::UnsupportedMediaType(_) | IngestError::UnsupportedEncoding(_) => S::UNSUPPORTED_MEDIA_TYPE,
            IngestError::TooLarge { .. } | IngestError::NeverFits(_) => S::PAYLOAD_TOO_LARGE,
            IngestError::Backpressure { .. }
            | IngestError::WalFull { .. }
            | IngestError::MemoryLimit(_)
            | IngestError::Storage(_)
            | IngestError::ShuttingDown => S::SERVICE_UNAVAILABLE,
        }
    }

    /// A short label for the `reason` of rejection counters.
    pub fn reason(&self) -> &'static str {
        match self {
            IngestError::Malformed { .. } => "malformed",
            IngestError::BodyTimedOut { .. } => "body_timeout",
            IngestError::BodyRead(_) => "body_read",
            IngestError::NoRoute(_) => "no_route",
            IngestError::WrongMethod(_) => "wrong_method",
            IngestError::TooLarge { .. } => "too_large",
            IngestError::UnsupportedMediaType(_) => "unsupported_media_type",
            IngestError::UnsupportedEncoding(_) => "unsupported_encoding",
            IngestError::Backpressure { .. } => "backpressure",
            IngestError::WalFull { .. } => "wal_full",
            IngestError::MemoryLimit(_) => "memory_limit",
            IngestError::NeverFits(_) => "exceeds_memory_limit",
            IngestError::Storage(_) => "storage",
            IngestError::ShuttingDown => "shutting_down",
        }
    }
}

/// A failure of the storage path (WAL, Parquet).
#[derive(Debug, Error)]
pub enum StorageError {
    /// An I/O operation on a file failed.
    #[error("{action} {path}: {source}")]
    Io { action: &'static str, path: PathBuf, source: std::io::Error },
    /// A WAL segment is damaged beyond its last complete record.
    #[error("WAL segment {path} is corrupt at byte {offset}: {detail}")]
    CorruptWal { path: PathBuf, offset: u64, detail: String },
    /// The WAL segment being written was unlinked (e.g. `rm -rf DATA/wal`): what was written to it is not durable.
    #[error("WAL segment {path} was deleted while in use; the WAL is being recreated")]
    WalVanished { path: PathBuf },
    /// Arrow or Parquet failed to encode or decode.
    #[error("{context}: {source}")]
    Arrow { context: String, source: datafusion::arrow::error::ArrowError },
    /// Parquet failed to encode or decode.
    #[error("{context}: {source}")]
    Parquet { context: String, source: datafusion::parquet::errors::ParquetError },
    /// Parquet refused the writer settings (`storage.*`).
    #[error(transparent)]
    ParquetSettings(#[from] tailscope_core::error::ParquetSettingsError),
    /// A Delta table could not be opened, read or committed to.
    #[error(transparent)]
    Table(#[from] store::StoreError),
    /// Another process holds the data dir.
    #[error(transparent)]
    DataDirLocked(#[from] tailscope_core::error::DataDirLockError),
}

impl StorageError {
    /// Wraps an I/O error with what was being done to which file.
    pub fn io(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> StorageError {
        let path = path.into();
        move |source| StorageError::Io { action, path, source }
    }
}
