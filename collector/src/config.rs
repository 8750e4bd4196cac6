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
    /// The process-wide memory ceiling that ingest and queries share.
    pub memory: MemoryConfig,
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
            memory: MemoryConfig::default(),
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
        self.server.validate()?;
        if self.ingest.max_body_bytes == 0 {
            return Err(invalid("ingest.max_body_bytes", "must be greater than 0".into()));
        }
        if self.ingest.max_attributes_per_span == 0 {
            return Err(invalid("ingest.max_attributes_per_span", "must be greater than 0".into()));
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
        if self.memory.limit_mb == 0 {
            return Err(invalid("memory.limit_mb", "must be greater than 0".into()));
        }
        // What may be held in the budget whatever the load: the buffer at its cap and the caches' bounds (reserved
        // at start). They must fit, or ingest would be refused for good once the buffer filled.
        let fixed = [
            ("ingest.max_buffer_bytes", self.ingest.max_buffer_bytes),
            ("pricing.cache_bytes", self.pricing.cache_bytes),
            ("query.metadata_cache_mb", self.query.metadata_cache_bytes()),
        ];
        let total = fixed.iter().fold(0usize, |sum, (_, bytes)| sum.saturating_add(*bytes));
        if total > self.memory.limit_bytes() {
            let parts: Vec<String> = fixed.iter().map(|(key, bytes)| format!("{key} ({bytes} bytes)")).collect();
            return Err(invalid(
                "memory.limit_mb",
                format!(
                    "({} MiB = {} bytes) cannot hold the fixed reservations {} = {total} bytes: raise memory.limit_mb \
                     or lower those",
                    self.memory.limit_mb,
                    self.memory.limit_bytes(),
                    parts.join(" + ")
                ),
            ));
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

/// Listening addresses, and the limits every listener applies to its connections (`crate::net`).
/// Loopback by default: exposing a collector is a deliberate act.
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
    /// A connection with no request in progress for this long is closed (HTTP/2: GOAWAY, then close). Longer
    /// than the OpenTelemetry SDKs' 60 s metric export interval, so a metrics exporter keeps its connection.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Time allowed for a request's headers, counted from when the connection can take a request (accepted, or
    /// the previous response sent): slowloris clients are cut here. On HTTP/1.1 this also closes keep-alive
    /// connections that wait this long for their next request. HTTP/2 headers arrive as one frame; a connection
    /// that never completes one is idle and falls under `idle_timeout`.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// Total time allowed to receive one request's body, from its headers (not an inactivity timeout: a body
    /// trickled a byte at a time is cut too). A request cut here is answered 408 / DEADLINE_EXCEEDED and nothing
    /// of it is stored. Generous: OTLP exporters give up on an export after 10 s by default. The other way, a
    /// peer that takes no byte of a response for this long is dropped (slow readers that make progress are not).
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// HTTP/2 PING interval on connections (gRPC and HTTP/2 clients), to find dead peers; TCP keepalive probes
    /// start after it too.
    #[serde(with = "humantime_serde")]
    pub keepalive_interval: Duration,
    /// A peer that does not answer a PING within this is dropped.
    #[serde(with = "humantime_serde")]
    pub keepalive_timeout: Duration,
    /// Open connections per listener. At the cap, the longest-idle connection (no request in progress) is closed
    /// to admit a new one (HTTP/2: GOAWAY); when every connection is busy, new ones wait in the kernel's accept
    /// queue (using no file descriptor of the process) until one closes.
    pub max_connections: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            otlp_grpc: SocketAddr::from(([127, 0, 0, 1], 4317)),
            otlp_http: SocketAddr::from(([127, 0, 0, 1], 4318)),
            api: SocketAddr::from(([127, 0, 0, 1], 4319)),
            flight: SocketAddr::from(([127, 0, 0, 1], 4320)),
            idle_timeout: Duration::from_secs(120),
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(60),
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            max_connections: 2048,
        }
    }
}

impl ServerConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let timeouts = [
            ("server.idle_timeout", self.idle_timeout),
            ("server.header_timeout", self.header_timeout),
            ("server.body_timeout", self.body_timeout),
            ("server.keepalive_interval", self.keepalive_interval),
            ("server.keepalive_timeout", self.keepalive_timeout),
        ];
        for (field, value) in timeouts {
            if value < Duration::from_millis(100) {
                return Err(ConfigError::Invalid {
                    field: field.to_string(),
                    reason: format!("{value:?} is too short: at least 100ms (a few seconds or more in production)"),
                });
            }
        }
        if !(1..=1_000_000).contains(&self.max_connections) {
            return Err(ConfigError::Invalid {
                field: "server.max_connections".into(),
                reason: format!("{} is outside 1..=1000000", self.max_connections),
            });
        }
        Ok(())
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
    /// Attributes kept per span; further ones are dropped and reported in `partial_success.error_message`
    /// (the span itself is stored). Bounds the memory one span's attribute list takes while it is normalised.
    pub max_attributes_per_span: usize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            max_body_bytes: 64 * 1024 * 1024,
            max_buffer_bytes: 224 * 1024 * 1024,
            retry_after: Duration::from_secs(1),
            max_attributes_per_span: 4096,
        }
    }
}

/// WAL and Parquet settings.
///
/// The defaults favour large files within the memory ceiling: a flush happens at 128 MiB of buffered Arrow data
/// (~75,000 agent spans of ~1.8 kB in Arrow as requests arrive) or after 10 minutes, whichever comes first. Below
/// ~120 spans/s (most collectors) the 10 minutes come first and files hold everything of those minutes in one row
/// group. Large row groups compress better (zstd and dictionaries see more repetition) and make scans cheaper (fewer
/// footers and pages); freshness does not suffer, because queries read the unflushed buffer too. The flush mark was
/// 256 MiB (files a third smaller per span) before the buffer had to fit in `memory.limit_mb` with a flush and the
/// requests in flight: see docs/benchmarks.md.
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
            flush_max_bytes: 128 * 1024 * 1024,
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
    /// DataFusion's cache of Parquet footers and page indexes (read once per file, kept for the next queries), in
    /// MiB. Reserved from `memory.limit_mb` at start; 0 turns the cache off (every query reads the footers again).
    pub metadata_cache_mb: usize,
}

impl QueryConfig {
    /// `metadata_cache_mb` in bytes.
    pub fn metadata_cache_bytes(&self) -> usize {
        self.metadata_cache_mb.saturating_mul(1024 * 1024)
    }
}

impl Default for QueryConfig {
    fn default() -> Self {
        QueryConfig {
            timeout: Duration::from_secs(60),
            memory_limit_mb: 256,
            max_concurrent: 8,
            max_sql_bytes: 1024 * 1024,
            max_expr_depth: 512,
            max_function_output_mb: 64,
            metadata_cache_mb: 16,
        }
    }
}

/// The process-wide memory ceiling (see `collector::memory` and docs/reliability.md, "Memory ceiling").
///
/// One budget that the data-sized memory of the whole process is reserved from: OTLP request bodies as they
/// arrive and inflate, normalised batches, the unflushed buffer, Parquet flushes and every query's operators. Past
/// it, ingest answers the OTLP retryable refusals (503 + `Retry-After`, UNAVAILABLE + `RetryInfo`) and queries fail
/// with a resources-exhausted error. The caches hold their memory in it too (the price-resolution and Parquet
/// metadata caches their bounds, from start; the live windows what they hold). The default, 320 MiB, keeps the
/// process under 512 MiB of RSS at any load: the rest covers what is not data-sized (binary, runtime, threads,
/// connection buffers) and the allocator's slack (measured in docs/benchmarks.md).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MemoryConfig {
    /// The budget in MiB.
    pub limit_mb: usize,
}

impl MemoryConfig {
    /// The budget in bytes.
    pub fn limit_bytes(&self) -> usize {
        self.limit_mb.saturating_mul(1024 * 1024)
    }
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig { limit_mb: 320 }
    }
}

/// Live tail-latency windows and the SLOs that colour them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LiveConfig {
    /// p99 above this (ms) is shown as an SLO breach in the dashboard.
    pub slo_p99_ms: f64,
    /// Routes (provider, region, model, operation) tracked at once; spans of further routes are counted under
    /// provider `(other)`. Each active route holds up to ~2 MiB of histograms.
    pub max_routes: usize,
    /// Longest provider, region, model or operation kept as a route key; longer values are cut to it.
    pub max_key_bytes: usize,
}

impl Default for LiveConfig {
    fn default() -> Self {
        LiveConfig {
            slo_p99_ms: 5000.0,
            max_routes: crate::live::MAX_ROUTES,
            max_key_bytes: crate::live::MAX_KEY_BYTES,
        }
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
        assert_eq!(config.memory, defaults.memory);
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
        let err = Config::from_toml("[memory]\nlimit_mb = 100\n", Path::new("t.toml")).unwrap_err();
        assert!(
            err.to_string().contains("ingest.max_buffer_bytes") && err.to_string().contains("memory.limit_mb"),
            "{err}"
        );
        // The buffer fits alone, not with the caches' reservations: every key is named.
        let tight = "[memory]\nlimit_mb = 230\n[query]\nmetadata_cache_mb = 8\n";
        let err = Config::from_toml(tight, Path::new("t.toml")).unwrap_err().to_string();
        for key in ["memory.limit_mb", "ingest.max_buffer_bytes", "pricing.cache_bytes", "query.metadata_cache_mb"] {
            assert!(err.contains(key), "{key} is not named: {err}");
        }
        Config::from_toml("[memory]\nlimit_mb = 240\n[query]\nmetadata_cache_mb = 8\n", Path::new("t.toml")).unwrap();
        let err = Config::from_toml("[server]\nmax_connections = 0\n", Path::new("t.toml")).unwrap_err();
        assert!(err.to_string().contains("server.max_connections"), "{err}");
        let err = Config::from_toml("[server]\nheader_timeout = \"0s\"\n", Path::new("t.toml")).unwrap_err();
        assert!(err.to_string().contains("server.header_timeout"), "{err}");
    }
}
