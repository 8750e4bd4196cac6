//! tailscope's configuration: one typed struct, loaded from TOML, then overridden by command-line flags.
//!
//! Every field has a default, so an empty file (or none) is a working local setup: data in `./tailscope-data`,
//! every port on loopback. Unknown keys are refused, so a typo in a budget name is an error at start, not a
//! silently ignored setting.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cost::{AlertsConfig, BudgetConfig, PricingConfig};
use crate::error::ConfigError;

mod listen;
pub mod substitute;
pub mod units;

pub use listen::ListenAddr;

/// One MiB.
const MIB: usize = 1024 * 1024;
/// The largest size any setting may have, in MiB: 1 TiB. Far above any machine tailscope runs on, and small
/// enough that no conversion to bytes or sum of two sizes overflows.
pub const MAX_SIZE_MIB: usize = 1024 * 1024;
/// The largest size any setting may have, in bytes: 1 TiB.
pub const MAX_SIZE_BYTES: usize = MAX_SIZE_MIB * MIB;
/// The longest timeout or interval any setting may have: one day. Deadlines are `now + setting`: a value of years
/// would overflow them (a panic), and no timeout of tailscope's makes sense past a day.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);
/// The longest `Retry-After` a client is told to wait: an hour (clients follow it literally).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60 * 60);

/// `mib` MiB in bytes: the one conversion of every MiB setting. `None` outside 1 MiB ..= 1 TiB
/// ([`MAX_SIZE_MIB`]), so the product never overflows (and zero, a size nothing can work with, is no size).
pub fn mib_to_bytes(mib: usize) -> Option<usize> {
    if !(1..=MAX_SIZE_MIB).contains(&mib) {
        return None;
    }
    mib.checked_mul(MIB)
}

/// `mib` MiB in bytes for a setting already validated; out-of-range values (a config not validated) are taken at
/// the nearest bound rather than wrapped.
fn validated_mib_to_bytes(mib: usize) -> usize {
    mib_to_bytes(mib.clamp(1, MAX_SIZE_MIB)).unwrap_or(usize::MAX)
}

/// The error for a setting outside its range: the key, the value and what is allowed.
fn out_of_range(field: &str, value: impl std::fmt::Display, allowed: &str) -> ConfigError {
    ConfigError::Invalid { field: field.to_string(), reason: format!("{value} is outside the allowed range {allowed}") }
}

/// A size in MiB: 1 ..= 1 TiB, convertible to bytes.
fn check_mib(field: &str, mib: usize) -> Result<usize, ConfigError> {
    mib_to_bytes(mib).ok_or_else(|| out_of_range(field, mib, &format!("1..={MAX_SIZE_MIB} MiB (1 MiB to 1 TiB)")))
}

/// A size in bytes: 1 ..= 1 TiB.
fn check_bytes(field: &str, bytes: usize) -> Result<(), ConfigError> {
    if !(1..=MAX_SIZE_BYTES).contains(&bytes) {
        return Err(out_of_range(field, bytes, &format!("1..={MAX_SIZE_BYTES} bytes (1 TiB)")));
    }
    Ok(())
}

/// A count: 1 ..= `max`.
fn check_count(field: &str, n: usize, max: usize) -> Result<(), ConfigError> {
    if !(1..=max).contains(&n) {
        return Err(out_of_range(field, n, &format!("1..={max}")));
    }
    Ok(())
}

/// A duration within `min ..= max`.
pub(crate) fn check_duration(field: &str, d: Duration, min: Duration, max: Duration) -> Result<(), ConfigError> {
    if d < min || d > max {
        let show = |d: Duration| humantime_serde::re::humantime::format_duration(d).to_string();
        return Err(out_of_range(field, show(d), &format!("{}..={}", show(min), show(max))));
    }
    Ok(())
}

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
    /// API keys: who may send, query and administer.
    pub auth: AuthConfig,
    /// `[projects.NAME]`: settings of one project (tenant) that override the tables' (retention, size cap).
    pub projects: BTreeMap<String, ProjectConfig>,
    /// `tailscope scheduler` and `tailscope executor`: distributed SQL on Ballista.
    pub cluster: ClusterConfig,
    /// One set of budgets across several collectors (docs/deploy.md, "One budget across collectors").
    pub fleet: FleetConfig,
}

/// What a collector is in a fleet whose budgets are counted as one.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FleetRole {
    /// Budgets count this collector's spans only (the default).
    #[default]
    Standalone,
    /// Decides for the fleet: sums the committed spans of every store plus each member's unflushed spend, fires
    /// the alerts and webhooks, and answers the members' guardrails.
    Coordinator,
    /// Reports its unflushed spend to the coordinator and answers its guardrail from the coordinator's verdict.
    Member,
}

/// What a member's guardrail answers while the coordinator's verdict is stale.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    /// Allow hedging: duplicate spend goes unchecked until the coordinator answers again.
    #[default]
    Open,
    /// Deny hedging until the coordinator answers again.
    Closed,
}

impl FailMode {
    /// `open` or `closed`, as in the config.
    pub fn name(self) -> &'static str {
        match self {
            FailMode::Open => "open",
            FailMode::Closed => "closed",
        }
    }
}

/// `[fleet]`: one budget across collectors. Every collector of a fleet has the same `[[budget]]` tables and writes
/// its spans to stores the coordinator reads (`storage.url` or placement rules, with a rule that takes every row
/// when `storage.url` is not set).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct FleetConfig {
    /// `standalone`, `coordinator` or `member`.
    pub role: FleetRole,
    /// A member: the coordinator's API, `http://HOST:PORT` or `https://…` (its `server.api`).
    pub coordinator: Option<String>,
    /// A member: the API key it sends the coordinator (an `admin` key of the coordinator's `[auth]`); use
    /// `${env:VAR}` or `${file:PATH}` rather than the key itself.
    pub key: Option<String>,
    /// A member: CA certificates (PEM) an `https://` coordinator's certificate chains to, besides the system's.
    pub ca_file: Option<PathBuf>,
    /// How often a member reports and fetches the verdict, and how often the coordinator sums: a member's
    /// guardrail reflects spend acknowledged anywhere in the fleet within twice this.
    #[serde(with = "humantime_serde")]
    pub exchange_interval: Duration,
    /// A member: what its guardrail answers once the coordinator's verdict is older than three exchange intervals
    /// (`open`: allow, `closed`: deny); the answer says which.
    pub on_coordinator_down: FailMode,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            role: FleetRole::Standalone,
            coordinator: None,
            key: None,
            ca_file: None,
            exchange_interval: Duration::from_secs(1),
            on_coordinator_down: FailMode::Open,
        }
    }
}

impl FleetConfig {
    /// How old a member may let the coordinator's verdict get before it answers as `on_coordinator_down` says.
    pub fn stale_after(&self) -> Duration {
        self.exchange_interval.saturating_mul(3)
    }

    fn validate(&self, config: &Config) -> Result<(), ConfigError> {
        let invalid = |field: &str, reason: String| ConfigError::Invalid { field: format!("fleet.{field}"), reason };
        check_duration(
            "fleet.exchange_interval",
            self.exchange_interval,
            Duration::from_millis(100),
            Duration::from_secs(60),
        )?;
        match self.role {
            FleetRole::Standalone => return Ok(()),
            FleetRole::Member => {
                let Some(url) = &self.coordinator else {
                    return Err(invalid(
                        "coordinator",
                        "a member needs the coordinator's API URL (http://HOST:PORT)".into(),
                    ));
                };
                match url::Url::parse(url) {
                    Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
                    _ => return Err(invalid("coordinator", format!("{url:?} is not an http:// or https:// URL"))),
                }
            }
            FleetRole::Coordinator => {
                if self.coordinator.is_some() {
                    return Err(invalid("coordinator", "only a member names a coordinator; remove it here".into()));
                }
            }
        }
        if let Some(b) = config.budgets.iter().find(|b| b.kind == crate::cost::BudgetKind::SessionCost) {
            return Err(ConfigError::Invalid {
                field: format!("budget {:?}", b.name),
                reason: "session_cost budgets are not counted across a fleet (a session's spans may reach several \
                         collectors); watch sessions with the session_cost view in SQL, or run this collector \
                         standalone"
                    .into(),
            });
        }
        // The coordinator counts committed spend from the stores it reads: a row in a collector's own data dir
        // would be invisible to it.
        let takes_every_row = |rule: &crate::placement::PlacementRule| {
            let m = &rule.matches;
            m.cloud_provider.is_none()
                && m.cloud_region.is_none()
                && m.peer_cloud_region.is_none()
                && m.resource.is_empty()
                && m.project.as_ref().is_some_and(|globs| globs.iter().any(|g| g == "*"))
        };
        if self.role == FleetRole::Member
            && config.storage.url.is_none()
            && !config.storage.placement.iter().any(takes_every_row)
        {
            return Err(invalid(
                "role",
                "a member's spans must reach stores the coordinator reads: set storage.url, or end \
                 [[storage.placement]] with a rule that takes every row (match = { project = [\"*\"] })"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// A Ballista cluster of tailscope nodes (docs/deploy.md, "Distributed SQL"). The scheduler and executors read the
/// tables of the stores this config names (`storage.url`, `[[storage.placement]]`, or under `data_dir`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// `tailscope scheduler`: where its gRPC service listens (clients and executors connect there). Port 0 picks
    /// a free port, printed at start.
    pub scheduler_listen: std::net::SocketAddr,
    /// `tailscope executor`: the scheduler to join, `HOST:PORT`.
    pub scheduler: String,
    /// `tailscope executor`: where its Arrow Flight service listens (other executors fetch shuffle data there, and
    /// clients the results). The port must be given: the executor announces it to the scheduler as it is.
    pub executor_listen: std::net::SocketAddr,
    /// `tailscope executor`: the port of its gRPC service, on the listen address's IP: the scheduler hands it tasks
    /// there and cancels the tasks of a statement whose client went away or timed out. Default: the Flight port + 1
    /// (Ballista's own pair, 50051 and 50052).
    pub executor_grpc_port: Option<u16>,
    /// The host other nodes reach this executor at; default: the listen address's IP.
    pub executor_host: Option<String>,
    /// Tasks an executor runs at once; 0: one per core.
    pub executor_slots: usize,
    /// Where an executor keeps shuffle files; default: `DATA_DIR/ballista`.
    pub work_dir: Option<PathBuf>,
    /// `tailscope scheduler`: the partitions each stage of a job is cut into (tasks per stage): about the task slots
    /// of all executors together. Each task costs a round trip to an executor (tens of ms), so more partitions than
    /// slots only add waiting; Ballista's own default is 16.
    pub partitions: usize,
    /// How often the scheduler reads the tables' logs again: a commit is visible to cluster queries this long after
    /// it lands, at most.
    #[serde(with = "humantime_serde")]
    pub refresh_interval: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            scheduler_listen: std::net::SocketAddr::from(([127, 0, 0, 1], 50050)),
            scheduler: "127.0.0.1:50050".into(),
            executor_listen: std::net::SocketAddr::from(([127, 0, 0, 1], 50051)),
            executor_grpc_port: None,
            executor_host: None,
            executor_slots: 0,
            work_dir: None,
            partitions: 4,
            refresh_interval: Duration::from_secs(1),
        }
    }
}

impl ClusterConfig {
    /// Where an executor's gRPC service listens: `executor_grpc_port`, or the Flight port + 1; `None` when neither
    /// is a port (the Flight port is 65535 and none was given).
    pub fn executor_grpc(&self) -> Option<std::net::SocketAddr> {
        let port = match self.executor_grpc_port {
            Some(port) => port,
            None => self.executor_listen.port().checked_add(1)?,
        };
        Some(std::net::SocketAddr::new(self.executor_listen.ip(), port))
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field: &str, reason: String| ConfigError::Invalid { field: format!("cluster.{field}"), reason };
        if self.executor_listen.port() == 0 {
            return Err(invalid(
                "executor_listen",
                "the port must be given (not 0): the executor announces it to the scheduler as it is".into(),
            ));
        }
        match self.executor_grpc() {
            None => {
                return Err(invalid(
                    "executor_grpc_port",
                    format!(
                        "none given, and the Flight port {} has no next port: give one (not 0, not the Flight port)",
                        self.executor_listen.port()
                    ),
                ));
            }
            Some(grpc) if grpc.port() == 0 || grpc.port() == self.executor_listen.port() => {
                return Err(invalid(
                    "executor_grpc_port",
                    format!("{} is 0 or the Flight port: give another port", grpc.port()),
                ));
            }
            Some(_) => {}
        }
        match self.scheduler.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {}
            _ => return Err(invalid("scheduler", format!("{:?} is not HOST:PORT", self.scheduler))),
        }
        check_count("cluster.partitions", self.partitions, 4096)?;
        if self.executor_slots > 0 {
            check_count("cluster.executor_slots", self.executor_slots, 1024)?;
        }
        check_duration("cluster.refresh_interval", self.refresh_interval, Duration::from_millis(100), MAX_DURATION)
    }
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
            auth: AuthConfig::default(),
            projects: BTreeMap::new(),
            cluster: ClusterConfig::default(),
            fleet: FleetConfig::default(),
        }
    }
}

impl Config {
    /// Parses a TOML document, substituting `${env:...}` and `${file:...}` in its values ([`substitute`]);
    /// `origin` names it in errors, and relative `${file:...}` paths start from its directory.
    pub fn from_toml(text: &str, origin: &Path) -> Result<Config, ConfigError> {
        Config::from_toml_with_env(text, origin, &substitute::process_env)
    }

    /// [`Config::from_toml`] with the environment `env` instead of the process's.
    pub fn from_toml_with_env(
        text: &str,
        origin: &Path,
        env: substitute::EnvLookup<'_>,
    ) -> Result<Config, ConfigError> {
        let parse_error =
            |e: toml::de::Error| ConfigError::Parse { path: origin.to_path_buf(), message: e.to_string() };
        let mut document = toml::de::DeTable::parse(text).map_err(parse_error)?;
        substitute::substitute_document(document.get_mut(), origin, env)?;
        let config = Config::deserialize(toml::de::Deserializer::from(document)).map_err(|mut e| {
            // Errors show the line as written, `${...}` and all, never the substituted secret.
            e.set_input(Some(text));
            parse_error(e)
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Reads and parses a TOML file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Config::from_toml(&text, path)
    }

    /// How long after their removal removed files are deleted: `storage.vacuum_grace`, but longer than the longest
    /// query, which may still read a snapshot from before the removal.
    pub fn vacuum_grace(&self) -> Duration {
        self.storage.vacuum_grace.max(self.query.timeout + Duration::from_secs(1))
    }

    /// Checks values that parse but cannot work: every size, duration and count is within its range (the error
    /// names the key, the value and the range), and the settings that depend on each other agree.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field: &str, reason: String| ConfigError::Invalid { field: field.to_string(), reason };
        self.server.validate()?;
        self.auth.validate()?;
        self.ingest.validate()?;
        self.storage.validate()?;
        self.query.validate()?;
        self.cluster.validate()?;
        self.fleet.validate(self)?;
        self.live.validate()?;
        let memory_bytes = check_mib("memory.limit_mb", self.memory.limit_mb)?;
        if self.storage.flush_max_bytes > self.ingest.max_buffer_bytes {
            return Err(invalid(
                "storage.flush_max_bytes",
                format!(
                    "({}) must not exceed ingest.max_buffer_bytes ({}), or ingest would stall before a flush starts",
                    self.storage.flush_max_bytes, self.ingest.max_buffer_bytes
                ),
            ));
        }
        // Ranges first, so an absurd value gets its range in the error rather than a rule of the cost module's
        // or of the sum below.
        self.validate_cost_ranges()?;
        // What may be held in the budget whatever the load: the buffer at its cap and the caches' bounds (reserved
        // at start). They must fit, or ingest would be refused for good once the buffer filled.
        let fixed = [
            ("ingest.max_buffer_bytes", self.ingest.max_buffer_bytes),
            ("pricing.cache_bytes", self.pricing.cache_bytes),
            ("query.metadata_cache_mb", self.query.metadata_cache_bytes()),
        ];
        let total = fixed.iter().fold(0usize, |sum, (_, bytes)| sum.saturating_add(*bytes));
        if total > memory_bytes {
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
        for (i, budget) in self.budgets.iter().enumerate() {
            budget.validate().map_err(|reason| invalid(&format!("budget[{i}] ({})", budget.name), reason))?;
        }
        crate::cost::validate_budgets(&self.budgets)?;
        self.alerts.validate()?;
        self.pricing.validate()?;
        for (name, project) in &self.projects {
            project.validate(name)?;
        }
        Ok(())
    }

    /// The maximum age of `project`'s rows in `table` (`None`: kept forever): the project's own `retention` when it
    /// sets one (`[projects.NAME]`), else the table's ([`StorageConfig::retention_of`]).
    pub fn retention_for(&self, table: crate::schema::Signal, project: &str) -> Option<Duration> {
        match self.projects.get(project).map(|p| p.retention) {
            Some(ProjectRetention::MaxAge(age)) => Some(age),
            Some(ProjectRetention::Forever) => None,
            Some(ProjectRetention::Table) | None => self.storage.retention_of(table),
        }
    }

    /// The most bytes `project`'s rows may take in each table (`[projects.NAME] max_bytes`), if capped.
    pub fn max_bytes_of_project(&self, project: &str) -> Option<u64> {
        self.projects.get(project).and_then(|p| p.max_bytes)
    }

    /// The ranges of the `[alerts]`, `[pricing]` and `[[budget]]` settings (their other rules are the cost
    /// module's).
    fn validate_cost_ranges(&self) -> Result<(), ConfigError> {
        let alerts = &self.alerts;
        let ms = Duration::from_millis;
        for (field, value, min) in [
            ("alerts.timeout", alerts.timeout, ms(1)),
            ("alerts.initial_backoff", alerts.initial_backoff, ms(1)),
            ("alerts.max_backoff", alerts.max_backoff, ms(1)),
            ("alerts.evaluate_interval", alerts.evaluate_interval, ms(100)),
        ] {
            check_duration(field, value, min, MAX_DURATION)?;
        }
        check_count("alerts.max_attempts", usize::try_from(alerts.max_attempts).unwrap_or(usize::MAX), 1000)?;
        check_duration("alerts.outbox_max_backoff", alerts.outbox_max_backoff, ms(1), MAX_DURATION)?;
        check_count("alerts.outbox_max_events", alerts.outbox_max_events, 1_000_000)?;
        let min = crate::cost::MAX_OUTBOX_EVENT_BYTES;
        if !(min..=MAX_SIZE_BYTES).contains(&alerts.outbox_max_bytes) {
            let allowed = format!("{min}..={MAX_SIZE_BYTES} bytes (room for one event of the largest size, to 1 TiB)");
            return Err(out_of_range("alerts.outbox_max_bytes", alerts.outbox_max_bytes, &allowed));
        }
        // Price matching is linear in the name, and a name is looked up per span.
        check_count("pricing.max_name_bytes", self.pricing.max_name_bytes, 65_536)?;
        if self.pricing.cache_bytes > MAX_SIZE_BYTES {
            let allowed = format!("0..={MAX_SIZE_BYTES} bytes (1 TiB)");
            return Err(out_of_range("pricing.cache_bytes", self.pricing.cache_bytes, &allowed));
        }
        check_bytes("pricing.bytes_per_gb", usize::try_from(self.pricing.bytes_per_gb).unwrap_or(usize::MAX))?;
        for (i, budget) in self.budgets.iter().enumerate() {
            if let crate::cost::BudgetPeriod::Rolling(window) = budget.period {
                let field = format!("budget[{i}] ({}).period", budget.name);
                check_duration(&field, window, Duration::from_secs(60), MAX_BUDGET_WINDOW)?;
            }
        }
        Ok(())
    }
}

/// The longest rolling budget window: a year of 365.25 days (calendar periods are `day` and `month`).
const MAX_BUDGET_WINDOW: Duration = Duration::from_secs(31_557_600);

/// Listening addresses, and the limits every listener applies to its connections (`collector::net`).
/// Loopback by default: exposing a collector is a deliberate act.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// OTLP/gRPC. Each address is `host:port`; the host an IP address (IPv6 in brackets: `[::]:4317`) or a name
    /// (`localhost:4317`), resolved at start (see [`ListenAddr`]).
    pub otlp_grpc: ListenAddr,
    /// OTLP/HTTP.
    pub otlp_http: ListenAddr,
    /// Health, Prometheus metrics, SQL, live windows, alerts and guardrails.
    pub api: ListenAddr,
    /// Arrow Flight SQL.
    pub flight: ListenAddr,
    /// A connection with no request in progress for this long is closed (HTTP/2: GOAWAY, then close). Longer
    /// than the OpenTelemetry SDKs' 60 s metric export interval, so a metrics exporter keeps its connection.
    #[serde(with = "units::duration")]
    pub idle_timeout: Duration,
    /// Time allowed for a request's headers, counted from when the connection can take a request (accepted, or
    /// the previous response sent): slowloris clients are cut here. On HTTP/1.1 this also closes keep-alive
    /// connections that wait this long for their next request. HTTP/2 headers arrive as one frame; a connection
    /// that never completes one is idle and falls under `idle_timeout`.
    #[serde(with = "units::duration")]
    pub header_timeout: Duration,
    /// Total time allowed to receive one request's body, from its headers (not an inactivity timeout: a body
    /// trickled a byte at a time is cut too). A request cut here is answered 408 / DEADLINE_EXCEEDED and nothing
    /// of it is stored. Generous: OTLP exporters give up on an export after 10 s by default. The other way, a
    /// peer that takes no byte of a response for this long is dropped (slow readers that make progress are not).
    #[serde(with = "units::duration")]
    pub body_timeout: Duration,
    /// HTTP/2 PING interval on connections (gRPC and HTTP/2 clients), to find dead peers; TCP keepalive probes
    /// start after it too.
    #[serde(with = "units::duration")]
    pub keepalive_interval: Duration,
    /// A peer that does not answer a PING within this is dropped.
    #[serde(with = "units::duration")]
    pub keepalive_timeout: Duration,
    /// Open connections per listener. At the cap, the longest-idle connection (no request in progress) is closed
    /// to admit a new one (HTTP/2: GOAWAY); when every connection is busy, new ones wait in the kernel's accept
    /// queue (using no file descriptor of the process) until one closes.
    pub max_connections: usize,
    /// TLS for every listener, overridable per listener (`[server.tls.api]` ...). Off when no certificate is set.
    pub tls: TlsConfig,
    /// Serve a listener bound beyond loopback without TLS or API keys. Off: start-up refuses, saying what to add.
    pub insecure: bool,
    /// CORS on the OTLP/HTTP listener (`[server.cors]`), so that exporters in web pages may send.
    pub cors: CorsConfig,
}

/// One of the four listeners, to name it in settings, logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Listener {
    OtlpGrpc,
    OtlpHttp,
    Api,
    Flight,
}

impl Listener {
    pub const ALL: [Listener; 4] = [Listener::OtlpGrpc, Listener::OtlpHttp, Listener::Api, Listener::Flight];

    /// The key under `[server]`: `otlp_grpc`, `otlp_http`, `api`, `flight`.
    pub const fn name(self) -> &'static str {
        match self {
            Listener::OtlpGrpc => "otlp_grpc",
            Listener::OtlpHttp => "otlp_http",
            Listener::Api => "api",
            Listener::Flight => "flight",
        }
    }
}

/// `[server.tls]`: certificate, key and optional client CA (mutual TLS) in PEM files, for every listener; a
/// listener's own table (`[server.tls.otlp_grpc]`, `otlp_http`, `api`, `flight`) overrides any of them or turns TLS
/// off there (`enabled = false`). The files are read again every `reload_interval` and a change takes effect for
/// new connections, so a rotation (cert-manager, certbot) needs no restart and drops no connection; a change that
/// does not load (a half-written file, a key that does not match) is logged and the previous files stay in use.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain, leaf first (PEM).
    pub cert_file: Option<PathBuf>,
    /// The certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
    /// Client certificates must chain to these CAs (PEM): mutual TLS. Clients without one are refused.
    pub client_ca_file: Option<PathBuf>,
    /// How often the files are checked for a change.
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
    pub otlp_grpc: Option<ListenerTls>,
    pub otlp_http: Option<ListenerTls>,
    pub api: Option<ListenerTls>,
    pub flight: Option<ListenerTls>,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            cert_file: None,
            key_file: None,
            client_ca_file: None,
            reload_interval: Duration::from_secs(10),
            otlp_grpc: None,
            otlp_http: None,
            api: None,
            flight: None,
        }
    }
}

/// One listener's TLS settings: each one set here wins over `[server.tls]`'s.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ListenerTls {
    /// `false` serves this listener in plaintext even when `[server.tls]` sets a certificate.
    pub enabled: Option<bool>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub client_ca_file: Option<PathBuf>,
}

/// The TLS files one listener serves with.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub client_ca_file: Option<PathBuf>,
}

impl TlsConfig {
    fn own(&self, listener: Listener) -> Option<&ListenerTls> {
        match listener {
            Listener::OtlpGrpc => self.otlp_grpc.as_ref(),
            Listener::OtlpHttp => self.otlp_http.as_ref(),
            Listener::Api => self.api.as_ref(),
            Listener::Flight => self.flight.as_ref(),
        }
    }

    /// The files `listener` serves TLS with, or None for plaintext; an error names the key that is missing.
    pub fn for_listener(&self, listener: Listener) -> Result<Option<TlsFiles>, ConfigError> {
        let own = self.own(listener);
        let pick = |f: fn(&ListenerTls) -> Option<&PathBuf>, shared: &Option<PathBuf>| {
            own.and_then(f).or(shared.as_ref()).cloned()
        };
        let cert = pick(|l| l.cert_file.as_ref(), &self.cert_file);
        let key = pick(|l| l.key_file.as_ref(), &self.key_file);
        let client_ca = pick(|l| l.client_ca_file.as_ref(), &self.client_ca_file);
        // A client CA alone turns TLS on (and so needs a certificate): mutual TLS must never be silently off.
        let enabled = own.and_then(|l| l.enabled).unwrap_or(cert.is_some() || key.is_some() || client_ca.is_some());
        if !enabled {
            return Ok(None);
        }
        let missing = |what: &str| ConfigError::Invalid {
            field: format!("server.tls.{what}"),
            reason: format!(
                "TLS on the {} listener needs a certificate and its key: set server.tls.cert_file and \
                 server.tls.key_file (or under [server.tls.{}]), or enabled = false there",
                listener.name(),
                listener.name()
            ),
        };
        match (cert, key) {
            (Some(cert_file), Some(key_file)) => Ok(Some(TlsFiles { cert_file, key_file, client_ca_file: client_ca })),
            (None, _) => Err(missing("cert_file")),
            (_, None) => Err(missing("key_file")),
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        check_duration("server.tls.reload_interval", self.reload_interval, Duration::from_secs(1), MAX_DURATION)?;
        for listener in Listener::ALL {
            self.for_listener(listener)?;
        }
        Ok(())
    }
}

/// CORS for browser exporters on the OTLP/HTTP listener. Off, with no CORS header at all, unless origins are listed.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CorsConfig {
    /// Origins whose pages may send, as browsers write them: `scheme://host`, with `:port` when it is not the
    /// scheme's default, no path (`https://app.example.com`, `http://localhost:3000`); or `"*"` for any page.
    pub allowed_origins: Vec<String>,
    /// Request headers allowed beside those OTLP exporters send (`Content-Type`, `Content-Encoding`, `Accept`).
    pub allowed_headers: Vec<String>,
    /// How long a browser may reuse a preflight's answer (`Access-Control-Max-Age`); zero, the default, sends no
    /// such header and browsers ask again after a few seconds.
    #[serde(with = "units::duration")]
    pub max_age: Duration,
}

/// The most origins and extra headers `[server.cors]` may list: far more than any deployment names.
const MAX_CORS_ENTRIES: usize = 1024;

impl CorsConfig {
    /// Whether CORS is on: some origin is allowed.
    pub fn enabled(&self) -> bool {
        !self.allowed_origins.is_empty()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid =
            |field: &str, reason: String| ConfigError::Invalid { field: format!("server.cors.{field}"), reason };
        if self.allowed_origins.len() > MAX_CORS_ENTRIES || self.allowed_headers.len() > MAX_CORS_ENTRIES {
            return Err(invalid("allowed_origins", format!("at most {MAX_CORS_ENTRIES} origins and headers")));
        }
        for origin in &self.allowed_origins {
            if origin == "*" {
                continue;
            }
            // Browsers send the origin serialised: lower-case scheme and host, no default port, no path.
            let serialised = url::Url::parse(origin).ok().map(|u| u.origin().ascii_serialization());
            match serialised {
                Some(s) if &s == origin => {}
                Some(s) if s != "null" => {
                    return Err(invalid(
                        "allowed_origins",
                        format!("{origin:?} is not an origin as browsers send it: write {s:?}"),
                    ));
                }
                _ => {
                    return Err(invalid(
                        "allowed_origins",
                        format!(
                            "{origin:?} is not an origin: write scheme://host[:port], e.g. https://app.example.com, or \"*\""
                        ),
                    ));
                }
            }
        }
        for name in &self.allowed_headers {
            let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
            if name.is_empty() || name.len() > 256 || !name.bytes().all(token) {
                return Err(invalid("allowed_headers", format!("{name:?} is not a header name")));
            }
        }
        check_duration("server.cors.max_age", self.max_age, Duration::ZERO, MAX_DURATION)
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            otlp_grpc: ListenAddr::from(SocketAddr::from(([127, 0, 0, 1], 4317))),
            otlp_http: ListenAddr::from(SocketAddr::from(([127, 0, 0, 1], 4318))),
            api: ListenAddr::from(SocketAddr::from(([127, 0, 0, 1], 4319))),
            flight: ListenAddr::from(SocketAddr::from(([127, 0, 0, 1], 4320))),
            idle_timeout: Duration::from_secs(120),
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(60),
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            max_connections: 2048,
            tls: TlsConfig::default(),
            insecure: false,
            cors: CorsConfig::default(),
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
        // At least 100 ms: shorter cuts off ordinary clients (a few seconds or more in production).
        for (field, value) in timeouts {
            check_duration(field, value, Duration::from_millis(100), MAX_DURATION)?;
        }
        check_count("server.max_connections", self.max_connections, 1_000_000)?;
        self.tls.validate()?;
        self.cors.validate()
    }
}

impl IngestConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        check_bytes("ingest.max_body_bytes", self.max_body_bytes)?;
        check_bytes("ingest.max_buffer_bytes", self.max_buffer_bytes)?;
        check_duration("ingest.retry_after", self.retry_after, Duration::from_millis(1), MAX_RETRY_AFTER)?;
        // Kept attributes are read and stored whole: far past any real span, bounded so a typo is not a limit.
        check_count("ingest.max_attributes_per_span", self.max_attributes_per_span, 1 << 20)
    }
}

impl StorageConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.url {
            storage_url(url)?;
        }
        crate::placement::validate(&self.placement, self.url.as_deref())?;
        check_bytes("storage.flush_max_bytes", self.flush_max_bytes)?;
        check_bytes("storage.wal_max_bytes", self.wal_max_bytes)?;
        check_duration("storage.flush_interval", self.flush_interval, Duration::from_millis(1), MAX_DURATION)?;
        // 64 Mi rows: 64 times the default, beyond which one row group outgrows any flush's memory.
        check_count("storage.row_group_rows", self.row_group_rows, 1 << 26)?;
        if !(1..=22).contains(&self.zstd_level) {
            return Err(out_of_range("storage.zstd_level", self.zstd_level, "1..=22"));
        }
        check_bytes("storage.compaction_target_bytes", self.compaction_target_bytes)?;
        if !(2..=100_000).contains(&self.compaction_min_files) {
            return Err(out_of_range("storage.compaction_min_files", self.compaction_min_files, "2..=100000"));
        }
        check_duration("storage.compaction_after", self.compaction_after, Duration::ZERO, MAX_DURATION)?;
        check_duration(
            "storage.maintenance_interval",
            self.maintenance_interval,
            Duration::from_millis(100),
            MAX_DURATION,
        )?;
        for (field, age) in [
            ("storage.retention", self.retention),
            ("storage.retention_spans", self.retention_spans),
            ("storage.retention_metrics", self.retention_metrics),
            ("storage.retention_logs", self.retention_logs),
        ] {
            if let Some(age) = age {
                check_duration(field, age, MIN_RETENTION, MAX_RETENTION)?;
            }
        }
        for (field, cap) in [
            ("storage.max_bytes", self.max_bytes),
            ("storage.max_bytes_spans", self.max_bytes_spans),
            ("storage.max_bytes_metrics", self.max_bytes_metrics),
            ("storage.max_bytes_logs", self.max_bytes_logs),
        ] {
            check_cap(field, cap)?;
        }
        check_duration("storage.vacuum_grace", self.vacuum_grace, Duration::from_secs(1), 30 * MAX_DURATION)?;
        Ok(())
    }
}

impl QueryConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        check_duration("query.timeout", self.timeout, Duration::from_millis(1), MAX_DURATION)?;
        check_mib("query.memory_limit_mb", self.memory_limit_mb)?;
        check_mib("query.max_function_output_mb", self.max_function_output_mb)?;
        // 0 turns the cache off.
        if self.metadata_cache_mb > 0 {
            check_mib("query.metadata_cache_mb", self.metadata_cache_mb)?;
        }
        // Each query in flight holds a planner thread and its own memory pool.
        check_count("query.max_concurrent", self.max_concurrent, 1024)?;
        check_count("query.max_sql_bytes", self.max_sql_bytes, 64 * MIB)?;
        // The planner thread's stack (`query::limits::PLANNER_STACK_BYTES`) is sized for statements at the default
        // depth, 512: twice that is the most allowed, so no setting lets a statement overflow it.
        check_count("query.max_expr_depth", self.max_expr_depth, 1024)?;
        if let Some(url) = &self.cluster {
            let address = url.strip_prefix("df://").unwrap_or_default();
            if address.is_empty() || address.contains('/') || !address.contains(':') {
                return Err(ConfigError::Invalid {
                    field: "query.cluster".into(),
                    reason: format!("{url:?} is not df://HOST:PORT, the address of `tailscope scheduler`"),
                });
            }
        }
        Ok(())
    }

    /// `memory_limit_mb` in bytes.
    pub fn memory_limit_bytes(&self) -> usize {
        validated_mib_to_bytes(self.memory_limit_mb)
    }

    /// `max_function_output_mb` in bytes.
    pub fn max_function_output_bytes(&self) -> usize {
        validated_mib_to_bytes(self.max_function_output_mb)
    }
}

impl LiveConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let day_ms = MAX_DURATION.as_millis() as f64;
        if !(self.slo_p99_ms.is_finite() && self.slo_p99_ms > 0.0 && self.slo_p99_ms <= day_ms) {
            return Err(out_of_range("live.slo_p99_ms", self.slo_p99_ms, &format!("(0, {day_ms}] ms (one day)")));
        }
        // Each route holds up to ~2 MiB of histograms.
        check_count("live.max_routes", self.max_routes, 65_536)?;
        check_count("live.max_key_bytes", self.max_key_bytes, 65_536)
    }
}

/// Limits that keep memory bounded under any load.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    /// Largest accepted request body after decompression (the OTLP spec's 413 / RESOURCE_EXHAUSTED beyond it).
    #[serde(with = "units::bytes")]
    pub max_body_bytes: usize,
    /// Normalised-but-unflushed data held in memory. Past it, ingest answers 503 / UNAVAILABLE with a retry
    /// delay until a flush frees room: backpressure instead of memory growth.
    #[serde(with = "units::bytes")]
    pub max_buffer_bytes: usize,
    /// The delay suggested to clients in `Retry-After` / `RetryInfo` when backpressure applies.
    #[serde(with = "units::duration")]
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
    /// Where the tables are: an object store URL (`s3://bucket/prefix`, `gs://bucket/prefix`,
    /// `az://container/prefix`, `abfs[s]://container@account.dfs.core.windows.net/prefix`), with each cloud's
    /// credentials from its standard environment variables (docs/storage.md). Unset (the default): under
    /// `data_dir`. The WAL stays under `data_dir` either way.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Placement (residency) rules, `[[storage.placement]]`: the first rule whose `match` a row satisfies sends it
    /// to that rule's store; rows no rule takes go to `url` (or the data dir). See [`crate::placement`] and
    /// docs/storage.md.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub placement: Vec<crate::placement::PlacementRule>,
    /// Flush when this much Arrow data is buffered (all signals together).
    #[serde(with = "units::bytes")]
    pub flush_max_bytes: usize,
    /// The most WAL bytes (on local disk) waiting for the tables: while flushes fail (the object store
    /// unreachable or throttling, a full disk) ingest keeps acknowledging into the WAL up to this, then answers
    /// 503 / `UNAVAILABLE` with a retry hint (`ingest.retry_after`) until a flush commits.
    #[serde(with = "units::bytes")]
    pub wal_max_bytes: usize,
    /// Flush at least this often while anything is buffered.
    #[serde(with = "units::duration")]
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
    /// Compaction: files under this size in a closed partition are rewritten into files of about this size.
    #[serde(with = "units::bytes")]
    pub compaction_target_bytes: usize,
    /// Compaction: a partition is rewritten once it holds at least this many files under the target size.
    pub compaction_min_files: usize,
    /// Compaction: a partition is rewritten only once its hour ended this long ago (late rows keep arriving until
    /// then).
    #[serde(with = "units::duration")]
    pub compaction_after: Duration,
    /// How often compaction, retention and vacuum run (in the background, one table and partition at a time).
    #[serde(with = "units::duration")]
    pub maintenance_interval: Duration,
    /// The maximum age of every table's rows (`"30d"`), or `"forever"` (the default). Whole partitions whose hour
    /// ended longer ago are removed by a Delta commit, then vacuumed after `vacuum_grace`.
    #[serde(with = "units::age")]
    pub retention: Option<Duration>,
    /// `retention` for the `spans` table alone (default: `retention`).
    #[serde(with = "units::age", skip_serializing_if = "Option::is_none")]
    pub retention_spans: Option<Duration>,
    /// `retention` for the `metrics` table alone (default: `retention`).
    #[serde(with = "units::age", skip_serializing_if = "Option::is_none")]
    pub retention_metrics: Option<Duration>,
    /// `retention` for the `logs` table alone (default: `retention`).
    #[serde(with = "units::age", skip_serializing_if = "Option::is_none")]
    pub retention_logs: Option<Duration>,
    /// The most bytes each table's committed files may take (from the Delta log's file sizes), or none (the
    /// default). Past it, its oldest whole partitions are removed, never the current hour's.
    #[serde(default, with = "units::optional_bytes", skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
    /// `max_bytes` for the `spans` table alone (default: `max_bytes`).
    #[serde(default, with = "units::optional_bytes", skip_serializing_if = "Option::is_none")]
    pub max_bytes_spans: Option<u64>,
    /// `max_bytes` for the `metrics` table alone (default: `max_bytes`).
    #[serde(default, with = "units::optional_bytes", skip_serializing_if = "Option::is_none")]
    pub max_bytes_metrics: Option<u64>,
    /// `max_bytes` for the `logs` table alone (default: `max_bytes`).
    #[serde(default, with = "units::optional_bytes", skip_serializing_if = "Option::is_none")]
    pub max_bytes_logs: Option<u64>,
    /// Files removed from a table (by compaction or retention) are deleted from storage this long after their
    /// removal, and never sooner than `query.timeout` + 1 s ([`Config::vacuum_grace`]): a query may still read them.
    #[serde(with = "units::duration")]
    pub vacuum_grace: Duration,
}

impl StorageConfig {
    /// The maximum age of `table`'s rows (`None`: kept forever).
    pub fn retention_of(&self, table: crate::schema::Signal) -> Option<Duration> {
        use crate::schema::Signal;
        let own = match table {
            Signal::Spans => self.retention_spans,
            Signal::Metrics => self.retention_metrics,
            Signal::Logs => self.retention_logs,
        };
        own.or(self.retention)
    }

    /// The most bytes `table`'s committed files may take (`None`: no cap).
    pub fn max_bytes_of(&self, table: crate::schema::Signal) -> Option<u64> {
        use crate::schema::Signal;
        let own = match table {
            Signal::Spans => self.max_bytes_spans,
            Signal::Metrics => self.max_bytes_metrics,
            Signal::Logs => self.max_bytes_logs,
        };
        own.or(self.max_bytes)
    }
}

/// How long one project's rows are kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ProjectRetention {
    /// As long as the table's retention says (`storage.retention*`): the project sets none.
    #[default]
    Table,
    /// Forever, whatever the table's retention.
    Forever,
    /// Partitions whose hour ended longer ago than this are removed.
    MaxAge(Duration),
}

/// The URL schemes of the object stores `storage.url` may name.
pub const STORAGE_SCHEMES: [&str; 6] = ["s3", "s3a", "gs", "az", "abfs", "abfss"];

/// `storage.url` parsed and checked: one of [`STORAGE_SCHEMES`], a bucket (or container), no query or fragment.
pub fn storage_url(text: &str) -> Result<url::Url, ConfigError> {
    let invalid = |reason: String| ConfigError::Invalid { field: "storage.url".into(), reason };
    let url = url::Url::parse(text).map_err(|e| {
        invalid(format!(
            "{text:?} is not a URL ({e}); write s3://bucket/prefix, gs://bucket/prefix or az://container/prefix"
        ))
    })?;
    if !STORAGE_SCHEMES.contains(&url.scheme()) {
        return Err(invalid(format!(
            "{text:?}: the scheme {:?} is none of {}; leave storage.url unset to keep the tables under data_dir",
            url.scheme(),
            STORAGE_SCHEMES.join(", ")
        )));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid(format!(
            "{text:?} names no bucket (or container): write {}://BUCKET/prefix",
            url.scheme()
        )));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid(format!("{text:?}: a query (?...) or fragment (#...) has no meaning here; remove it")));
    }
    // The URL parser resolves `..` away (`s3://b/a/../c` is `s3://b/c`): refuse what was written instead.
    if text.split('/').any(|p| p == "." || p == "..") {
        return Err(invalid(format!("{text:?}: `.` and `..` are not allowed in the prefix")));
    }
    Ok(url)
}

/// `[projects.NAME]`: one project's own storage limits, which win over the tables' for its partitions.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ProjectConfig {
    /// The maximum age of the project's rows in every table (`"7d"`), or `"forever"`; unset: the table's.
    #[serde(with = "units::project_retention", skip_serializing_if = "is_table_retention")]
    pub retention: ProjectRetention,
    /// The most bytes the project's committed files may take in each table; past it its oldest whole partitions
    /// are removed (never the current hour's). Unset: no cap of the project's own (the table's still applies).
    #[serde(with = "units::optional_bytes", skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
}

fn is_table_retention(r: &ProjectRetention) -> bool {
    *r == ProjectRetention::Table
}

/// The shortest retention: partitions are whole hours, and the current one is still written.
const MIN_RETENTION: Duration = Duration::from_secs(3600);
/// The longest retention that is not `"forever"`.
const MAX_RETENTION: Duration = Duration::from_secs(100 * 366 * 24 * 3600);
/// The largest size cap: 1 EiB, far past any table, and small enough that sums of sizes do not overflow.
pub const MAX_CAP_BYTES: u64 = 1 << 60;

/// A size cap within 1 byte ..= [`MAX_CAP_BYTES`].
fn check_cap(field: &str, cap: Option<u64>) -> Result<(), ConfigError> {
    match cap {
        Some(bytes) if !(1..=MAX_CAP_BYTES).contains(&bytes) => {
            Err(out_of_range(field, bytes, &format!("1..={MAX_CAP_BYTES} bytes (1 EiB)")))
        }
        _ => Ok(()),
    }
}

impl ProjectConfig {
    fn validate(&self, name: &str) -> Result<(), ConfigError> {
        crate::projects::Project::parse(name)
            .map_err(|reason| ConfigError::Invalid { field: format!("projects.{name}"), reason })?;
        if let ProjectRetention::MaxAge(age) = self.retention {
            check_duration(&format!("projects.{name}.retention"), age, MIN_RETENTION, MAX_RETENTION)?;
        }
        check_cap(&format!("projects.{name}.max_bytes"), self.max_bytes)
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            url: None,
            placement: Vec::new(),
            flush_max_bytes: 128 * 1024 * 1024,
            wal_max_bytes: 4 * 1024 * 1024 * 1024,
            flush_interval: Duration::from_secs(600),
            row_group_rows: 1024 * 1024,
            zstd_level: 1,
            wal_fsync: true,
            compaction_target_bytes: 128 * 1024 * 1024,
            compaction_min_files: 4,
            compaction_after: Duration::from_secs(600),
            maintenance_interval: Duration::from_secs(60),
            retention: None,
            retention_spans: None,
            retention_metrics: None,
            retention_logs: None,
            max_bytes: None,
            max_bytes_spans: None,
            max_bytes_metrics: None,
            max_bytes_logs: None,
            vacuum_grace: Duration::from_secs(3600),
        }
    }
}

/// Bounds on SQL queries.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct QueryConfig {
    /// A query running longer is cancelled.
    #[serde(with = "units::duration")]
    pub timeout: Duration,
    /// DataFusion's memory pool per query, in MiB; operators that can spill do so beyond it.
    #[serde(with = "units::mib")]
    pub memory_limit_mb: usize,
    /// Queries running at once; more wait for a slot (and time out waiting).
    pub max_concurrent: usize,
    /// The longest SQL statement accepted, in bytes (every surface: HTTP, Flight SQL, the CLI).
    #[serde(with = "units::bytes")]
    pub max_sql_bytes: usize,
    /// How deeply expressions, subqueries and plan steps may nest; a chain `a OR b OR ...` is as deep as it is
    /// long. Bounds every recursive pass over the statement (planning, optimisation, evaluation).
    pub max_expr_depth: usize,
    /// The most one call of a growing function (`repeat`, `lpad`, `rpad`, `replace`, `regexp_replace`,
    /// `array_repeat`, `array_resize`, `range`, `generate_series`) may produce for one batch of rows, in MiB.
    #[serde(with = "units::mib")]
    pub max_function_output_mb: usize,
    /// DataFusion's cache of Parquet footers and page indexes (read once per file, kept for the next queries), in
    /// MiB. Reserved from `memory.limit_mb` at start; 0 turns the cache off (every query reads the footers again).
    #[serde(with = "units::mib")]
    pub metadata_cache_mb: usize,
    /// The Ballista scheduler (`df://HOST:PORT`, see `[cluster]`) that runs the statements of the HTTP API, Flight
    /// SQL and `tailscope query`, over the committed tables; none: they run in this process.
    pub cluster: Option<String>,
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
            cluster: None,
        }
    }
}

/// The process-wide memory ceiling (see [`crate::memory`] and docs/reliability.md, "Memory ceiling").
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
    #[serde(with = "units::mib")]
    pub limit_mb: usize,
}

impl MemoryConfig {
    /// The budget in bytes.
    pub fn limit_bytes(&self) -> usize {
        validated_mib_to_bytes(self.limit_mb)
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
    #[serde(with = "units::millis")]
    pub slo_p99_ms: f64,
    /// Routes (provider, region, model, operation) tracked at once; spans of further routes are counted under
    /// provider `(other)`. Each active route holds up to ~2 MiB of histograms.
    pub max_routes: usize,
    /// Longest provider, region, model or operation kept as a route key; longer values are cut to it.
    #[serde(with = "units::bytes")]
    pub max_key_bytes: usize,
}

impl LiveConfig {
    /// The most routes tracked at once by default (`max_routes`); further routes are folded into one overflow
    /// route (`collector::live`).
    pub const DEFAULT_MAX_ROUTES: usize = 512;
    /// The longest key value kept by default (`max_key_bytes`); longer values are cut to it.
    pub const DEFAULT_MAX_KEY_BYTES: usize = 128;
}

impl Default for LiveConfig {
    fn default() -> Self {
        LiveConfig {
            slo_p99_ms: 5000.0,
            max_routes: LiveConfig::DEFAULT_MAX_ROUTES,
            max_key_bytes: LiveConfig::DEFAULT_MAX_KEY_BYTES,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_url_takes_object_store_urls_and_refuses_the_rest_saying_why() {
        for ok in [
            "s3://bucket/prefix",
            "s3://bucket",
            "gs://b/a/b",
            "az://container/p",
            "abfss://c@acct.dfs.core.windows.net/p",
        ] {
            let config = Config::from_toml(&format!("[storage]\nurl = \"{ok}\"\n"), Path::new("t.toml")).unwrap();
            assert_eq!(config.storage.url.as_deref(), Some(ok));
        }
        for (bad, says) in [
            ("bucket/prefix", "not a URL"),
            ("http://host/x", "scheme"),
            ("file:///tmp/x", "scheme"),
            ("s3:///prefix", "no bucket"),
            ("s3://b/p?x=1", "query"),
            ("s3://b/a/../c", "`..`"),
        ] {
            let err = Config::from_toml(&format!("[storage]\nurl = \"{bad}\"\n"), Path::new("t.toml")).unwrap_err();
            let text = err.to_string();
            assert!(text.contains("storage.url") && text.contains(says), "{bad}: {text}");
        }
    }

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
        assert_eq!(config.auth, defaults.auth);
        assert_eq!(config.alerts, defaults.alerts);
        assert_eq!(config.fleet, defaults.fleet);
        assert_eq!(config.budgets.len(), 2);
    }

    #[test]
    fn a_fleet_config_that_cannot_count_every_span_is_refused_saying_why() {
        let check = |toml: &str| Config::from_toml(toml, Path::new("t.toml")).and_then(|c| c.validate().map(|()| c));
        let all_rows = "[[storage.placement]]\nname = \"all\"\nurl = \"/srv/fleet\"\nmatch = { project = [\"*\"] }\n";
        let member = "[fleet]\nrole = \"member\"\ncoordinator = \"http://10.0.0.1:4319\"\n";
        assert!(check(&format!("{all_rows}{member}")).is_ok());
        assert!(check(&format!("[storage]\nurl = \"s3://b/p\"\n{member}")).is_ok());
        for (toml, says) in [
            (format!("{all_rows}[fleet]\nrole = \"member\"\n"), "coordinator's API URL"),
            (format!("{all_rows}[fleet]\nrole = \"member\"\ncoordinator = \"10.0.0.1:4319\"\n"), "http://"),
            (member.to_string(), "stores the coordinator reads"),
            (
                format!(
                    "{all_rows}{member}[[budget]]\nname = \"s\"\nkind = \"session_cost\"\nperiod = \"day\"\ncap_usd = 1.0\n"
                ),
                "session_cost budgets are not counted across a fleet",
            ),
            (format!("{all_rows}{member}exchange_interval = \"10ms\"\n"), "fleet.exchange_interval"),
            ("[fleet]\nrole = \"coordinator\"\ncoordinator = \"http://x:1\"\n".to_string(), "only a member"),
        ] {
            let err = check(&toml).err().unwrap_or_else(|| panic!("accepted:\n{toml}")).to_string();
            assert!(err.contains(says), "{toml}\n{err}");
        }
    }

    /// Sizes, durations and counts an operator (or an attacker with write access to the config) could set to
    /// absurd values: each is refused at start by `validate`, naming the key, the value and the allowed range,
    /// instead of overflowing when converted to bytes, panicking when added to an instant, or sizing anything.
    #[test]
    // Long by design: a table of (key, absurd value, bound) cases.
    fn absurd_sizes_and_durations_are_refused_with_the_key_and_the_bound() {
        let cases: &[(&str, &str, &str, &str)] = &[
            ("[memory]\nlimit_mb = 99999999999\n", "memory.limit_mb", "99999999999", "1..=1048576 MiB"),
            ("[memory]\nlimit_mb = 0\n", "memory.limit_mb", "0", "1..=1048576 MiB"),
            (
                "[query]\nmemory_limit_mb = 9223372036854775807\n",
                "query.memory_limit_mb",
                "9223372036854775807",
                "1..=1048576",
            ),
            (
                "[query]\nmax_function_output_mb = 17592186044416\n",
                "query.max_function_output_mb",
                "17592186044416",
                "1..=1048576",
            ),
            (
                "[ingest]\nmax_body_bytes = 9223372036854775807\n",
                "ingest.max_body_bytes",
                "9223372036854775807",
                "1..=1099511627776",
            ),
            ("[ingest]\nmax_buffer_bytes = 0\n", "ingest.max_buffer_bytes", "0", "1..=1099511627776"),
            ("[ingest]\nretry_after = \"10years\"\n", "ingest.retry_after", "10years", "1ms..=1h"),
            (
                "[ingest]\nmax_attributes_per_span = 9223372036854775807\n",
                "ingest.max_attributes_per_span",
                "9223372036854775807",
                "1..=1048576",
            ),
            ("[query]\ntimeout = \"0s\"\n", "query.timeout", "0s", "1ms..=1day"),
            ("[storage]\ncompaction_min_files = 1\n", "storage.compaction_min_files", "1", "2..=100000"),
            ("[storage]\nretention = \"10m\"\n", "storage.retention", "10m", "1h..="),
            ("[storage]\nretention_logs = \"1000years\"\n", "storage.retention_logs", "1000years", "1h..="),
            ("[storage]\ncompaction_target_bytes = 0\n", "storage.compaction_target_bytes", "0", "1..="),
            ("[query]\ntimeout = \"100years\"\n", "query.timeout", "100years", "1ms..=1day"),
            ("[query]\ntimeout = \"500000000000years\"\n", "query.timeout", "500000000000years", "1ms..=1day"),
            (
                "[query]\nmax_concurrent = 9223372036854775807\n",
                "query.max_concurrent",
                "9223372036854775807",
                "1..=1024",
            ),
            ("[query]\nmax_expr_depth = 1000000\n", "query.max_expr_depth", "1000000", "1..=1024"),
            ("[query]\nmax_sql_bytes = 0\n", "query.max_sql_bytes", "0", "1..=67108864"),
            ("[storage]\nflush_interval = \"0s\"\n", "storage.flush_interval", "0s", "1ms..=1day"),
            ("[storage]\nflush_interval = \"2days\"\n", "storage.flush_interval", "2days", "1ms..=1day"),
            (
                "[storage]\nrow_group_rows = 9223372036854775807\n",
                "storage.row_group_rows",
                "9223372036854775807",
                "1..=67108864",
            ),
            ("[server]\nidle_timeout = \"1000years\"\n", "server.idle_timeout", "1000years", "100ms..=1day"),
            ("[server]\nbody_timeout = \"0s\"\n", "server.body_timeout", "0s", "100ms..=1day"),
            ("[live]\nmax_routes = 0\n", "live.max_routes", "0", "1..=65536"),
            ("[live]\nmax_key_bytes = 9223372036854775807\n", "live.max_key_bytes", "9223372036854775807", "1..=65536"),
            ("[live]\nslo_p99_ms = nan\n", "live.slo_p99_ms", "NaN", "(0, 86400000] ms"),
            ("[live]\nslo_p99_ms = inf\n", "live.slo_p99_ms", "inf", "(0, 86400000] ms"),
            ("[alerts]\nmax_backoff = \"10years\"\n", "alerts.max_backoff", "10years", "1ms..=1day"),
            ("[alerts]\ntimeout = \"0s\"\n", "alerts.timeout", "0s", "1ms..=1day"),
            ("[alerts]\nmax_attempts = 4294967295\n", "alerts.max_attempts", "4294967295", "1..=1000"),
            ("[alerts]\noutbox_max_backoff = \"2days\"\n", "alerts.outbox_max_backoff", "2days", "1ms..=1day"),
            ("[alerts]\noutbox_max_events = 0\n", "alerts.outbox_max_events", "0", "1..=1000000"),
            ("[alerts]\noutbox_max_bytes = 1000\n", "alerts.outbox_max_bytes", "1000", "262144..=1099511627776"),
            (
                "[pricing]\nmax_name_bytes = 9223372036854775807\n",
                "pricing.max_name_bytes",
                "9223372036854775807",
                "1..=65536",
            ),
            (
                "[pricing]\ncache_bytes = 9223372036854775807\n",
                "pricing.cache_bytes",
                "9223372036854775807",
                "0..=1099511627776",
            ),
            (
                "[[budget]]\nname = \"b\"\nkind = \"total\"\nperiod = \"100years\"\ncap_usd = 1\nwarn_at = [1.0]\n",
                "budget[0] (b).period",
                "100years",
                "1m..=1year",
            ),
        ];
        for (toml, key, value, bound) in cases {
            let err = Config::from_toml(toml, Path::new("t.toml")).expect_err(toml).to_string();
            assert!(err.contains(key), "{toml}: the key is named: {err}");
            assert!(err.contains(value), "{toml}: the value is named: {err}");
            assert!(err.contains(bound), "{toml}: the range is named: {err}");
        }
        // Durations too long for humantime are the parser's to refuse, with the file named.
        let err = Config::from_toml("[query]\ntimeout = \"99999999999999years\"\n", Path::new("t.toml")).unwrap_err();
        assert!(err.to_string().contains("t.toml"), "{err}");

        // The bounds themselves are accepted, and the one conversion cannot overflow.
        let edge = "[memory]\nlimit_mb = 1048576\n[ingest]\nretry_after = \"1h\"\n[query]\ntimeout = \"1day\"\n\
                    memory_limit_mb = 1048576\nmax_function_output_mb = 1048576\n";
        let config = Config::from_toml(edge, Path::new("t.toml")).unwrap();
        assert_eq!(config.memory.limit_bytes(), 1 << 40);
        assert_eq!(config.query.memory_limit_bytes(), 1 << 40);
        assert_eq!(mib_to_bytes(MAX_SIZE_MIB), Some(MAX_SIZE_BYTES));
        for absurd in [0, MAX_SIZE_MIB + 1, usize::MAX / 2, usize::MAX] {
            assert_eq!(mib_to_bytes(absurd), None, "{absurd}");
        }
        // A config built in code and never validated is taken at the nearest bound, never wrapped.
        assert_eq!(MemoryConfig { limit_mb: usize::MAX }.limit_bytes(), MAX_SIZE_BYTES);
        assert_eq!(MemoryConfig { limit_mb: 0 }.limit_bytes(), MIB);
    }

    #[test]
    fn values_are_substituted_before_they_are_read_and_checked() {
        let hook = "https://hooks.example.com/T0/B0/x\"y";
        let env = |name: &str| Ok((name == "HOOK").then(|| hook.to_string()));
        let toml = "[alerts]\nwebhooks = [\"${env:HOOK}\"]\n[memory]\nlimit_mb = \"${env:MEM:-512MiB}\"\n\
                    [server]\napi = \"localhost:${env:PORT:-4400}\"\n";
        let config = Config::from_toml_with_env(toml, Path::new("t.toml"), &env).unwrap();
        assert_eq!(config.alerts.webhooks, [crate::webhook::WebhookConfig::url(hook)]);
        assert_eq!(config.memory.limit_mb, 512);
        assert_eq!(config.server.api.to_string(), "localhost:4400");
        // A value that does not read shows its line as written.
        let env = |_: &str| Ok(Some("many".to_string()));
        let err = Config::from_toml_with_env("[memory]\nlimit_mb = \"${env:MEM}\"\n", Path::new("t.toml"), &env);
        let err = err.unwrap_err().to_string();
        assert!(err.contains("limit_mb = \"${env:MEM}\"") && err.contains("t.toml"), "{err}");
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
        for (origin, says) in [
            ("https://App.example.com/", "\"https://app.example.com\""),
            ("https://app.example.com:443", "\"https://app.example.com\""),
            ("app.example.com", "scheme://host"),
            ("file:///tmp/x", "scheme://host"),
        ] {
            let toml = format!("[server.cors]\nallowed_origins = [{origin:?}]\n");
            let err = Config::from_toml(&toml, Path::new("t.toml")).unwrap_err().to_string();
            assert!(err.contains("server.cors.allowed_origins") && err.contains(says), "{origin}: {err}");
        }
        let toml = "[server.cors]\nallowed_origins = [\"*\", \"http://localhost:3000\"]\nallowed_headers = [\"x-tenant\"]\n\
                    max_age = \"2h\"\n";
        let config = Config::from_toml(toml, Path::new("t.toml")).unwrap();
        assert!(config.server.cors.enabled() && !Config::default().server.cors.enabled());
        let err = Config::from_toml("[server.cors]\nallowed_headers = [\"bad header\"]\n", Path::new("t.toml"));
        assert!(err.unwrap_err().to_string().contains("server.cors.allowed_headers"));
    }

    #[test]
    fn projects_override_the_tables_retention_and_caps_are_checked() {
        use crate::schema::Signal;
        let toml = "[storage]\nretention = \"30d\"\nretention_logs = \"2d\"\nmax_bytes = \"1GiB\"\n\
                    max_bytes_logs = 4096\n[projects.a]\nretention = \"7d\"\nmax_bytes = \"10MB\"\n\
                    [projects.b]\nretention = \"forever\"\n[projects.c]\n";
        let config = Config::from_toml(toml, Path::new("t.toml")).unwrap();
        let day = Duration::from_secs(86_400);
        assert_eq!(config.retention_for(Signal::Spans, "a"), Some(7 * day));
        assert_eq!(config.retention_for(Signal::Logs, "a"), Some(7 * day), "the project's wins over the table's");
        assert_eq!(config.retention_for(Signal::Spans, "b"), None);
        assert_eq!(config.retention_for(Signal::Logs, "c"), Some(2 * day));
        assert_eq!(config.retention_for(Signal::Spans, "unnamed"), Some(30 * day));
        assert_eq!(config.storage.max_bytes_of(Signal::Spans), Some(1 << 30));
        assert_eq!(config.storage.max_bytes_of(Signal::Logs), Some(4096));
        assert_eq!((config.max_bytes_of_project("a"), config.max_bytes_of_project("b")), (Some(10_000_000), None));
        // What it serialises reads back the same.
        let again = Config::from_toml(&toml::to_string(&config).unwrap(), Path::new("t.toml")).unwrap();
        assert_eq!(again, config);
        for (bad, says) in [
            ("[projects.\"A/b\"]\n", "projects.A/b"),
            ("[projects.a]\nretention = \"10m\"\n", "projects.a.retention"),
            ("[projects.a]\nmax_bytes = 0\n", "projects.a.max_bytes"),
            ("[projects.a]\nkeep = 1\n", "keep"),
            ("[storage]\nmax_bytes_spans = 0\n", "storage.max_bytes_spans"),
        ] {
            let err = Config::from_toml(bad, Path::new("t.toml")).unwrap_err().to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn project_names_of_keys_and_budgets_are_checked_at_start() {
        let key = |projects: &str| {
            format!(
                "[[auth.keys]]\nname = \"k\"\nhash = \"sha256:{}\"\nscopes = [\"query\"]\nprojects = [{projects}]\n",
                "0".repeat(64)
            )
        };
        let config = Config::from_toml(&key("\"a\", \"team-b\""), Path::new("t.toml")).unwrap();
        assert_eq!(config.auth.keys[0].projects, ["a", "team-b"]);
        for bad in ["\"../a\"", "\"A\"", "\"\""] {
            let err = Config::from_toml(&key(bad), Path::new("t.toml")).unwrap_err().to_string();
            assert!(err.contains("auth.keys[0].projects") && err.contains("not a project name"), "{bad}: {err}");
        }
        let budget = "[[budget]]\nname = \"b\"\nkind = \"total\"\nperiod = \"day\"\ncap_usd = 1\nproject = \"x/y\"\n";
        let err = Config::from_toml(budget, Path::new("t.toml")).unwrap_err().to_string();
        assert!(err.contains("budget[0]") && err.contains("project"), "{err}");
    }
}

/// What an API key may do. `admin` may do everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Send OTLP (gRPC and HTTP).
    Ingest,
    /// SQL (HTTP API, Flight SQL), live windows, alerts, budgets and the guardrail API.
    Query,
    /// Everything, and `/metrics`.
    Admin,
}

impl std::str::FromStr for Scope {
    type Err = String;

    fn from_str(s: &str) -> Result<Scope, String> {
        match s {
            "ingest" => Ok(Scope::Ingest),
            "query" => Ok(Scope::Query),
            "admin" => Ok(Scope::Admin),
            other => Err(format!("unknown scope {other:?}: use ingest, query or admin")),
        }
    }
}

impl Scope {
    pub const fn name(self) -> &'static str {
        match self {
            Scope::Ingest => "ingest",
            Scope::Query => "query",
            Scope::Admin => "admin",
        }
    }
}

/// `[auth]`: the API keys. With none configured every request is accepted (allowed on loopback addresses only,
/// unless `--insecure`); with any, every request but `/healthz` and `/readyz` must carry a key
/// (`Authorization: Bearer <key>`) whose scopes allow it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// `[[auth.keys]]` tables.
    pub keys: Vec<ApiKeyConfig>,
    /// Serve `/metrics` without a key (for a Prometheus that cannot send one); otherwise it needs `admin`.
    pub metrics_open: bool,
}

/// One API key: never the clear key in the file, but its hash (`tailscope keys new` prints it), or where to read
/// the clear key at start (an environment variable or a file, e.g. a mounted Secret).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// Names the key in logs (never the key itself).
    pub name: String,
    /// `sha256:<64 hex digits>`: the SHA-256 of the key.
    pub hash: Option<String>,
    /// An environment variable holding the clear key.
    pub key_env: Option<String>,
    /// A file holding the clear key (surrounding whitespace ignored).
    pub key_file: Option<PathBuf>,
    pub scopes: Vec<Scope>,
    /// The projects (tenants) the key belongs to (`crate::projects`): an ingest key's rows go to the first, or to
    /// the one its request names in `x-tailscope-project`; a query key sees these projects' rows only. Empty:
    /// the `default` project. An `admin` key sees every project.
    pub projects: Vec<String>,
}

/// The prefix of [`ApiKeyConfig::hash`].
pub const KEY_HASH_PREFIX: &str = "sha256:";

impl AuthConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let mut names = std::collections::HashSet::new();
        for (i, key) in self.keys.iter().enumerate() {
            let field = |what: &str| format!("auth.keys[{i}].{what}");
            let invalid = |what: &str, reason: String| ConfigError::Invalid { field: field(what), reason };
            if key.name.trim().is_empty() {
                return Err(invalid("name", "every key needs a name, to tell keys apart in logs".into()));
            }
            if !names.insert(key.name.as_str()) {
                return Err(invalid("name", format!("{:?} names two keys; names must be unique", key.name)));
            }
            let sources = [key.hash.is_some(), key.key_env.is_some(), key.key_file.is_some()];
            if sources.iter().filter(|s| **s).count() != 1 {
                return Err(invalid(
                    "hash",
                    "set exactly one of hash (from `tailscope keys new`), key_env or key_file".into(),
                ));
            }
            if let Some(hash) = &key.hash {
                let hex = hash.strip_prefix(KEY_HASH_PREFIX).unwrap_or("");
                if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(invalid(
                        "hash",
                        format!("must be {KEY_HASH_PREFIX}<64 hex digits>, as `tailscope keys new` prints it"),
                    ));
                }
            }
            if key.scopes.is_empty() {
                return Err(invalid("scopes", "give the key at least one of ingest, query, admin".into()));
            }
            for project in &key.projects {
                crate::projects::Project::parse(project).map_err(|reason| invalid("projects", reason))?;
            }
        }
        Ok(())
    }
}
