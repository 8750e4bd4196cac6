//! tailscope's configuration: one typed struct, loaded from TOML, then overridden by command-line flags.
//!
//! Every field has a default, so an empty file (or none) is a working local setup: data in `./tailscope-data`,
//! every port on loopback. Unknown keys are refused, so a typo in a budget name is an error at start, not a
//! silently ignored setting.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cost::{AlertsConfig, BudgetConfig, PricingConfig};
use crate::error::ConfigError;

/// The whole configuration of a tailscope process.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the WAL, Parquet files and alert state live.
    pub data_dir: PathBuf,
    /// Listening addresses.
    pub server: ServerConfig,
    /// Limits on what one request and the ingest queue may hold.
    pub ingest: IngestConfig,
    /// WAL and Parquet flushing.
    pub storage: StorageConfig,
    /// Query limits.
    pub query: QueryConfig,
    /// Price tables and egress rules.
    pub pricing: PricingConfig,
    /// Budget guardrails: `[[budget]]` tables.
    #[serde(rename = "budget")]
    pub budgets: Vec<BudgetConfig>,
    /// Where alerts go.
    pub alerts: AlertsConfig,
    /// Live tail-latency windows.
    pub live: LiveConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("tailscope-data"),
            server: ServerConfig::default(),
            ingest: IngestConfig::default(),
            storage: StorageConfig::default(),
            query: QueryConfig::default(),
            pricing: PricingConfig::default(),
            budgets: Vec::new(),
            alerts: AlertsConfig::default(),
            live: LiveConfig::default(),
        }
    }
}

impl Config {
    /// Parses a TOML document; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text)
            .map_err(|source| ConfigError::Parse { path: origin.to_path_buf(), message: source.to_string() })?;
        config.validate()?;
        Ok(config)
    }

    /// Reads and parses a TOML file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Config::from_toml(&text, path)
    }

    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field: &str, reason: String| ConfigError::Invalid { field: field.to_string(), reason };
        if self.ingest.max_body_bytes == 0 {
            return Err(invalid("ingest.max_body_bytes", "must be greater than 0".into()));
        }
        if self.storage.flush_max_bytes == 0 {
            return Err(invalid("storage.flush_max_bytes", "must be greater than 0".into()));
        }
        if self.storage.flush_max_bytes > self.ingest.max_buffer_bytes {
            return Err(invalid(
                "storage.flush_max_bytes",
                format!(
                    "({}) must not exceed ingest.max_buffer_bytes ({}), or ingest would stall before a flush starts",
                    self.storage.flush_max_bytes, self.ingest.max_buffer_bytes
                ),
            ));
        }
        if self.storage.row_group_rows == 0 {
            return Err(invalid("storage.row_group_rows", "must be greater than 0".into()));
        }
        if !(1..=22).contains(&self.storage.zstd_level) {
            return Err(invalid("storage.zstd_level", format!("{} is outside 1..=22", self.storage.zstd_level)));
        }
        if self.query.max_concurrent == 0 {
            return Err(invalid("query.max_concurrent", "must be greater than 0".into()));
        }
        for (field, value) in [
            ("query.max_sql_bytes", self.query.max_sql_bytes),
            ("query.max_expr_depth", self.query.max_expr_depth),
            ("query.max_function_output_mb", self.query.max_function_output_mb),
        ] {
            if value == 0 {
                return Err(invalid(field, "must be greater than 0".into()));
            }
        }
        for (i, budget) in self.budgets.iter().enumerate() {
            budget.validate().map_err(|reason| invalid(&format!("budget[{i}] ({})", budget.name), reason))?;
        }
        let cost = |e: crate::cost::CostError| match e {
            crate::cost::CostError::Config { field, reason } => ConfigError::Invalid { field, reason },
            other => ConfigError::Invalid { field: "cost".into(), reason: other.to_string() },
        };
        crate::cost::validate_budgets(&self.budgets).map_err(cost)?;
        self.alerts.validate().map_err(cost)?;
        self.pricing.validate().map_err(cost)?;
        Ok(())
    }
}

/// Listening addresses. Loopback by default: exposing a collector is a deliberate act.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// OTLP/gRPC.
    pub otlp_grpc: SocketAddr,
    /// OTLP/HTTP.
    pub otlp_http: SocketAddr,
    /// Health, Prometheus metrics, SQL, live windows, alerts and guardrails.
    pub api: SocketAddr,
    /// Arrow Flight SQL.
    pub flight: SocketAddr,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            otlp_grpc: SocketAddr::from(([127, 0, 0, 1], 4317)),
            otlp_http: SocketAddr::from(([127, 0, 0, 1], 4318)),
            api: SocketAddr::from(([127, 0, 0, 1], 4319)),
            flight: SocketAddr::from(([127, 0, 0, 1], 4320)),
        }
    }
}

/// Limits that keep memory bounded under any load.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    /// Largest accepted request body after decompression (the OTLP spec's 413 / RESOURCE_EXHAUSTED beyond it).
    pub max_body_bytes: usize,
    /// Normalised-but-unflushed data held in memory. Past it, ingest answers 503 / UNAVAILABLE with a retry
    /// delay until a flush frees room: backpressure instead of memory growth.
    pub max_buffer_bytes: usize,
    /// The delay suggested to clients in `Retry-After` / `RetryInfo` when backpressure applies.
    #[serde(with = "humantime_serde")]
    pub retry_after: Duration,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            max_body_bytes: 64 * 1024 * 1024,
            max_buffer_bytes: 1024 * 1024 * 1024,
            retry_after: Duration::from_secs(1),
        }
    }
}

/// WAL and Parquet settings.
///
/// The defaults favour large files: a flush happens at 256 MiB of buffered Arrow data or after 10 minutes,
/// whichever comes first, giving files of tens of MiB and row groups of up to a million rows. Large row groups
/// compress better (zstd and dictionaries see more repetition) and make scans cheaper (fewer footers and pages);
/// freshness does not suffer, because queries read the unflushed buffer too.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Flush when this much Arrow data is buffered (all signals together).
    pub flush_max_bytes: usize,
    /// Flush at least this often while anything is buffered.
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    /// Rows per Parquet row group.
    pub row_group_rows: usize,
    /// zstd level for Parquet pages. The default, 1 (ClickHouse's default too), spends the least CPU at
    /// ingest; level 3 cost 4 % more ingest CPU for files no smaller on the benchmark corpus
    /// (`docs/benchmarks.md`). Higher levels suit files kept for years and written by a collector with CPU to spare.
    pub zstd_level: i32,
    /// fsync the WAL before acknowledging. Turning this off trades durability on power loss for throughput;
    /// a process crash still loses nothing that was written.
    pub wal_fsync: bool,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            flush_max_bytes: 256 * 1024 * 1024,
            flush_interval: Duration::from_secs(600),
            row_group_rows: 1024 * 1024,
            zstd_level: 1,
            wal_fsync: true,
        }
    }
}

/// Bounds on SQL queries.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct QueryConfig {
    /// A query running longer is cancelled.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// DataFusion's memory pool per query, in MiB; operators that can spill do so beyond it.
    pub memory_limit_mb: usize,
    /// Queries running at once; more wait for a slot (and time out waiting).
    pub max_concurrent: usize,
    /// The longest SQL statement accepted, in bytes (every surface: HTTP, Flight SQL, the CLI).
    pub max_sql_bytes: usize,
    /// How deeply expressions, subqueries and plan steps may nest; a chain `a OR b OR ...` is as deep as it is
    /// long. Bounds every recursive pass over the statement (planning, optimisation, evaluation).
    pub max_expr_depth: usize,
    /// The most one call of a growing function (`repeat`, `lpad`, `rpad`, `replace`, `regexp_replace`,
    /// `array_repeat`, `array_resize`, `range`, `generate_series`) may produce for one batch of rows, in MiB.
    pub max_function_output_mb: usize,
}

impl Default for QueryConfig {
    fn default() -> Self {
        QueryConfig {
            timeout: Duration::from_secs(60),
            memory_limit_mb: 2048,
            max_concurrent: 8,
            max_sql_bytes: 1024 * 1024,
            max_expr_depth: 512,
            max_function_output_mb: 256,
        }
    }
}

/// Live tail-latency windows and the SLOs that colour them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LiveConfig {
    /// p99 above this (ms) is shown as an SLO breach in the dashboard.
    pub slo_p99_ms: f64,
}

impl Default for LiveConfig {
    fn default() -> Self {
        LiveConfig { slo_p99_ms: 5000.0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_parses_and_matches_the_defaults_it_claims() {
        let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../tailscope.example.toml"));
        let text = std::fs::read_to_string(path).unwrap();
        let config = Config::from_toml(&text, path).unwrap();
        let defaults = Config::default();
        assert_eq!(config.server, defaults.server);
        assert_eq!(config.ingest, defaults.ingest);
        assert_eq!(config.storage, defaults.storage);
        assert_eq!(config.query, defaults.query);
        assert_eq!(config.budgets.len(), 2);
    }

    #[test]
    fn unknown_keys_and_impossible_values_are_refused_with_their_name() {
        let err = Config::from_toml("[storage]\nflush_intervall = \"1s\"\n", Path::new("t.toml")).unwrap_err();
        assert!(err.to_string().contains("flush_intervall"), "{err}");
        let err = Config::from_toml("[storage]\nzstd_level = 40\n", Path::new("t.toml")).unwrap_err();
        assert!(err.to_string().contains("storage.zstd_level"), "{err}");
        let err = Config::from_toml("[ingest]\nmax_buffer_bytes = 10\n", Path::new("t.toml")).unwrap_err();
        assert!(err.to_string().contains("flush_max_bytes"), "{err}");
    }
}
