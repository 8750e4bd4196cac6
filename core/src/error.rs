//! The errors of the shared types, each carrying what a user needs to act on it. The collector's own (ingest,
//! storage) are in `collector::error`, the query engine's in `query::error`; a memory refusal is
//! [`crate::memory::MemoryError`].

use datafusion::parquet::errors::ParquetError;
use thiserror::Error;

/// Parquet writer settings ([`crate::layout::ParquetOptions`]) that Parquet refuses.
#[derive(Debug, Error)]
pub enum ParquetSettingsError {
    /// The zstd level is not one zstd has (`storage.zstd_level` is checked to be within 1..=22 at start).
    #[error("zstd level: {source}")]
    ZstdLevel { level: i32, source: ParquetError },
}
