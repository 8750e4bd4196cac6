//! The errors of the shared types, each carrying what a user needs to act on it. The collector's own (ingest,
//! storage) are in `collector::error`, the query engine's in `query::error`; a memory refusal is
//! [`crate::memory::MemoryError`].

use std::path::PathBuf;

use datafusion::parquet::errors::ParquetError;
use thiserror::Error;

/// A configuration that cannot be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    /// The file is not valid TOML for tailscope's config.
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// A value parses but cannot work.
    #[error("invalid config value {field}: {reason}")]
    Invalid { field: String, reason: String },
    /// A `${env:...}` or `${file:...}` in a value cannot be substituted (see `config::substitute`).
    #[error("config file {path}, key {key}: {reason}")]
    Substitution { path: PathBuf, key: String, reason: String },
}

/// Parquet writer settings ([`crate::layout::ParquetOptions`]) that Parquet refuses.
#[derive(Debug, Error)]
pub enum ParquetSettingsError {
    /// The zstd level is not one zstd has (`storage.zstd_level` is checked to be within 1..=22 at start).
    #[error("zstd level: {source}")]
    ZstdLevel { level: i32, source: ParquetError },
}

/// The data dir could not be taken for this process alone ([`crate::layout::lock_data_dir`]).
#[derive(Debug, Error)]
pub enum DataDirLockError {
    #[error(
        "the data dir {data_dir} is in use by another tailscope process (serve, demo or reprice): stop it first, \
         or give this one its own data_dir"
    )]
    InUse { data_dir: PathBuf },
    #[error("cannot lock {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}
