//! `tailscope serve`: the collector, the SQL/ops API and Flight SQL in one process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use collector::auth::{ApiKeys, Authenticated};
use collector::net::{self, ConnectionLimits, Protocol};
use collector::server::Collector;
use collector::tls::ReloadingTls;
use tailscope_core::config::{Config, ListenAddr, Listener};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::CmdResult;

/// Flags of `tailscope serve`. Each overrides the matching key of the TOML config file, and each can be given as a
/// `TAILSCOPE_*` environment variable instead (a flag wins over its variable).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Args {
    /// TOML config file (every key is shown in tailscope.example.toml, the syntax in docs/config.md); flags
    /// override its values.
    #[arg(long, short = 'c', value_name = "FILE", env = "TAILSCOPE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Where the WAL and Parquet files live [config: data_dir; default: ./tailscope-data].
    #[arg(long, value_name = "DIR", env = "TAILSCOPE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// OTLP/gRPC listen address, host:port (localhost:4317, 0.0.0.0:4317, [::]:4317) [config: server.otlp_grpc;
    /// default: 127.0.0.1:4317].
    #[arg(long, value_name = "ADDR", env = "TAILSCOPE_OTLP_GRPC")]
    pub otlp_grpc: Option<ListenAddr>,
    /// OTLP/HTTP listen address [config: server.otlp_http; default: 127.0.0.1:4318].
    #[arg(long, value_name = "ADDR", env = "TAILSCOPE_OTLP_HTTP")]
    pub otlp_http: Option<ListenAddr>,
    /// API listen address: health, Prometheus metrics, SQL, live windows, alerts [config: server.api;
    /// default: 127.0.0.1:4319].
    #[arg(long, value_name = "ADDR", env = "TAILSCOPE_API")]
    pub api: Option<ListenAddr>,
    /// Arrow Flight SQL listen address [config: server.flight; default: 127.0.0.1:4320].
    #[arg(long, value_name = "ADDR", env = "TAILSCOPE_FLIGHT")]
    pub flight: Option<ListenAddr>,
    /// Serve listeners bound beyond loopback without TLS or API keys (e.g. behind a proxy that provides both)
    /// [config: server.insecure].
    #[arg(long, env = "TAILSCOPE_INSECURE")]
    pub insecure: bool,
    /// TLS certificate chain (PEM) for every listener [config: server.tls.cert_file].
    #[arg(long, value_name = "FILE", requires = "tls_key", env = "TAILSCOPE_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM) [config: server.tls.key_file].
    #[arg(long, value_name = "FILE", requires = "tls_cert", env = "TAILSCOPE_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// CA certificates (PEM) that client certificates must chain to: mutual TLS [config:
    /// server.tls.client_ca_file].
    #[arg(long, value_name = "FILE", env = "TAILSCOPE_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
}

impl Args {
    /// The config file (or the defaults) with these flags applied, validated.
    pub fn load_config(&self) -> Result<Config, tailscope_core::error::ConfigError> {
        let mut config = match &self.config {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        if let Some(d) = &self.data_dir {
            config.data_dir = d.clone();
        }
        let server = &mut config.server;
        for (flag, key) in [
            (&self.otlp_grpc, &mut server.otlp_grpc),
            (&self.otlp_http, &mut server.otlp_http),
            (&self.api, &mut server.api),
            (&self.flight, &mut server.flight),
        ] {
            if let Some(addr) = flag {
                *key = addr.clone();
            }
        }
        if self.insecure {
            config.server.insecure = true;
        }
        if let Some(f) = &self.tls_cert {
            config.server.tls.cert_file = Some(f.clone());
        }
        if let Some(f) = &self.tls_key {
            config.server.tls.key_file = Some(f.clone());
        }
        if let Some(f) = &self.tls_client_ca {
            config.server.tls.client_ca_file = Some(f.clone());
        }
        config.validate()?;
        Ok(config)
    }
}

/// A collector that is listening on every port. Dropping it does not stop it: call [`Running::shutdown`].
pub struct Running {
    /// The bound addresses (useful with port 0).
    pub addrs: Addrs,
    collector: Collector,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
    flusher: tokio::task::JoinHandle<()>,
}

/// The addresses a running collector listens on.
#[derive(Debug, Clone, Copy)]
pub struct Addrs {
    /// OTLP/gRPC.
    pub otlp_grpc: SocketAddr,
    /// OTLP/HTTP.
    pub otlp_http: SocketAddr,
    /// API (health, metrics, SQL, live, alerts).
    pub api: SocketAddr,
    /// Flight SQL.
    pub flight: SocketAddr,
}

/// Descriptors kept for everything but connections: WAL, Parquet files being written and read, the data dir.
const RESERVED_FDS: u64 = 256;

/// Raises the soft open-file limit to the hard one (Go's runtime does the same): the usual soft default, 1,024,
/// is below what four listeners at `server.max_connections` need. Warns when even the hard limit is too low; the
/// server still works then, as accept backs off on EMFILE and serves what is open.
#[cfg(unix)]
fn raise_open_file_limit(max_connections: usize) {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    let wanted = limit.rlim_max.min(1 << 20);
    if limit.rlim_cur < wanted {
        let raised = libc::rlimit { rlim_cur: wanted, rlim_max: limit.rlim_max };
        // SAFETY: setrlimit reads the struct we own; lowering nothing, raising the soft limit only.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            tracing::debug!(from = limit.rlim_cur, to = wanted, "raised the open-file limit");
            limit.rlim_cur = wanted;
        }
    }
    let needed = 4 * max_connections as u64 + RESERVED_FDS;
    if limit.rlim_cur < needed {
        tracing::warn!(
            open_file_limit = limit.rlim_cur,
            needed,
            "the open-file limit is below 4 listeners x server.max_connections + {RESERVED_FDS}: under a connection \
             flood, accept will back off and file opens may fail; raise `ulimit -n` or lower server.max_connections"
        );
    }
}

#[cfg(not(unix))]
fn raise_open_file_limit(_max_connections: usize) {}

/// Binds `addr`. A host name is resolved first, and the first of its addresses that binds is used, IPv4 ones first
/// (as Go's `net.Listen` does): `localhost` listens on 127.0.0.1 where it also names ::1.
async fn bind(addr: &ListenAddr, what: &str, key: &str) -> Result<TcpListener, String> {
    let hint = format!("choose another address with --{key} or server.{}", key.replace('-', "_"));
    let mut candidates: Vec<SocketAddr> = match addr.socket_addr() {
        Some(ip) => vec![ip],
        None => tokio::net::lookup_host(addr.to_string())
            .await
            .map_err(|e| format!("cannot resolve {addr} for {what}: {e}; {hint}"))?
            .collect(),
    };
    candidates.sort_by_key(SocketAddr::is_ipv6);
    let mut failed = Vec::new();
    for candidate in candidates {
        match TcpListener::bind(candidate).await {
            Ok(listener) => return Ok(listener),
            Err(e) if candidate.to_string() == addr.to_string() => failed.push(e.to_string()),
            Err(e) => failed.push(format!("{candidate}: {e}")),
        }
    }
    if failed.is_empty() {
        return Err(format!("{addr} resolves to no address for {what}; {hint}"));
    }
    Err(format!("cannot listen on {addr} for {what}: {}; {hint}", failed.join("; ")))
}

/// A bound listener with its TLS loaded (and reloaded as its files change), or plaintext when none is configured.
fn listening(
    config: &Config,
    listener: Listener,
    tcp: TcpListener,
    protocol: Protocol,
) -> Result<net::Listening, Box<dyn std::error::Error + Send + Sync>> {
    let tls = match config.server.tls.for_listener(listener)? {
        Some(files) => {
            let tls = ReloadingTls::load(files, protocol)
                .map_err(|e| format!("TLS for the {} listener: {e}", listener.name()))?;
            tls.spawn_reloader(listener.name(), config.server.tls.reload_interval);
            Some(tls)
        }
        None => None,
    };
    Ok(net::Listening { name: listener.name(), listener: tcp, protocol, tls })
}

/// Refuses to serve a listener bound beyond loopback without TLS and API keys, unless `server.insecure`: anyone
/// who can reach it could send, read and delete-by-flooding everyone's telemetry.
fn exposure_is_safe(config: &Config, listeners: &[&net::Listening], keys: bool) -> Result<(), String> {
    if config.server.insecure {
        return Ok(());
    }
    for listening in listeners {
        let addr = listening.listener.local_addr().map_err(|e| e.to_string())?;
        // `[::ffff:127.0.0.1]` is loopback too: an IPv4-mapped address is its IPv4 address.
        if addr.ip().to_canonical().is_loopback() {
            continue;
        }
        let mut missing = Vec::new();
        if listening.tls.is_none() {
            missing.push("TLS (server.tls.cert_file and key_file, or --tls-cert and --tls-key)");
        }
        if !keys {
            missing.push("API keys ([[auth.keys]]; `tailscope keys new` makes one)");
        }
        if !missing.is_empty() {
            return Err(format!(
                "refusing to serve the {} listener on {addr}, beyond loopback, without {}; add them, bind a \
                 loopback address, or pass --insecure (server.insecure) if something in front provides both",
                listening.name,
                missing.join(" and ")
            ));
        }
    }
    Ok(())
}

/// Recovers the data dir, binds every port and starts serving. Returns once everything listens.
pub async fn start(config: Config) -> Result<Running, Box<dyn std::error::Error + Send + Sync>> {
    raise_open_file_limit(config.server.max_connections);
    // Bind first: a port in use is an error now, before recovery work, not a dying background task.
    let grpc = bind(&config.server.otlp_grpc, "OTLP/gRPC", "otlp-grpc").await?;
    let http = bind(&config.server.otlp_http, "OTLP/HTTP", "otlp-http").await?;
    let api = bind(&config.server.api, "the API", "api").await?;
    let flight = bind(&config.server.flight, "Flight SQL", "flight").await?;
    let addrs = Addrs {
        otlp_grpc: grpc.local_addr()?,
        otlp_http: http.local_addr()?,
        api: api.local_addr()?,
        flight: flight.local_addr()?,
    };
    // TLS files load before anything is recovered or served: a wrong path stops start-up, naming the file.
    let grpc = listening(&config, Listener::OtlpGrpc, grpc, Protocol::Grpc)?;
    let http = listening(&config, Listener::OtlpHttp, http, Protocol::Http)?;
    let api = listening(&config, Listener::Api, api, Protocol::Http)?;
    let flight = listening(&config, Listener::Flight, flight, Protocol::Grpc)?;
    let keys = Arc::new(ApiKeys::load(&config.auth)?);
    exposure_is_safe(&config, &[&grpc, &http, &api, &flight], keys.enabled())?;

    let (collector, report) = Collector::start(config.clone()).await?;
    if report.records > 0 || report.removed_files > 0 {
        tracing::info!(
            replayed_records = report.records,
            replayed_rows = report.rows,
            removed_uncommitted_files = report.removed_files,
            "recovered from the WAL"
        );
    }
    let live = Arc::new(
        collector::live::LiveWindows::new(config.live.slo_p99_ms)
            .with_limits(config.live.max_routes, config.live.max_key_bytes)
            .with_memory(collector.ingest().memory()),
    );
    collector.add_observer(live.clone());
    let engine = query::Engine::new(collector.catalog(), config.query.clone()).await?;
    // After recovery, so that period-to-date spend is rebuilt from everything stored, replayed WAL included; read
    // through the engine, like every other reader of the history.
    let budgets =
        collector::cost::BudgetEngine::start_fleet(&config, &engine, collector.ingest().clone(), collector.metrics())
            .await?;
    collector.add_observer(budgets.clone());
    // `[query] cluster`: the users' statements run on the Ballista cluster (over the committed tables); budgets
    // read the history here, buffer included.
    let engine = match &config.query.cluster {
        Some(url) => {
            let cluster = cluster::BallistaClient::new(url)?;
            query::Engine::on_cluster(collector.catalog(), config.query.clone(), cluster).await?
        }
        None => engine,
    };

    let api_router = collector
        .ops_router()
        .merge(query::router(engine.clone()))
        .merge(collector::live::routes(live))
        .merge(collector::cost::routes(budgets))
        // The web UI: the same dashboards as `tailscope tui`, drawn in the browser from the routes above.
        .merge(web::router(tailscope_core::dashboard::defaults()?));
    // Data answers are never cached and never sniffed (docs/web.md).
    let api_router = web::api_answers_not_stored(api_router);
    // Every route of the API counted and timed, by its pattern (`tailscope_api_requests_total`).
    let api_router = collector::telemetry::track_requests(api_router, collector.metrics().clone());

    let (stop, stopped) = watch::channel(false);
    let until_stopped = move || {
        let mut rx = stopped.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let mut tasks = JoinSet::new();
    // Every listener gets the same connection limits: a cap, idle/header/body timeouts, keepalive (collector::net).
    let limits = ConnectionLimits::from_config(&config.server);
    let shed = |listener: &str| collector.metrics().listener_counters(listener);
    let (grpc_service, http_router) = (collector.otlp_grpc_service(), collector.otlp_http_router());
    let flight_service = flight::service(engine);
    // Every listener behind the same keys (collector::auth); with none configured, every request passes.
    let refusals = collector.metrics().auth_refusals.clone();
    let authenticated = |listener| (keys.clone(), listener, refusals.clone());
    let grpc_service = Authenticated::new(grpc_service, authenticated(Listener::OtlpGrpc));
    let http_router = Authenticated::new(http_router, authenticated(Listener::OtlpHttp));
    let api_router = Authenticated::new(api_router, authenticated(Listener::Api));
    let flight_service = Authenticated::new(flight_service, authenticated(Listener::Flight));
    tasks.spawn(net::serve(grpc, grpc_service, limits, shed(Listener::OtlpGrpc.name()), until_stopped()));
    tasks.spawn(net::serve(http, http_router, limits, shed(Listener::OtlpHttp.name()), until_stopped()));
    tasks.spawn(net::serve(api, api_router, limits, shed(Listener::Api.name()), until_stopped()));
    tasks.spawn(net::serve(flight, flight_service, limits, shed(Listener::Flight.name()), until_stopped()));
    // The flusher is not a server: it stops when the collector shuts down, after the servers drained.
    let flusher = collector.spawn_flusher();
    tracing::info!(
        otlp_grpc = %addrs.otlp_grpc, otlp_http = %addrs.otlp_http, api = %addrs.api, flight = %addrs.flight,
        data_dir = %config.data_dir.display(), "tailscope is serving"
    );
    Ok(Running { addrs, collector, stop, tasks, flusher })
}

impl Running {
    /// The collector core (catalog, metrics, write path).
    pub fn collector(&self) -> &Collector {
        &self.collector
    }

    /// Waits until a server task ends on its own (an error) or `signal` completes.
    pub async fn serve_until(&mut self, signal: impl std::future::Future<Output = ()>) -> Result<(), String> {
        tokio::select! {
            _ = signal => Ok(()),
            Some(done) = self.tasks.join_next() => match done {
                Ok(()) => Err("a server stopped unexpectedly".into()),
                Err(e) => Err(format!("a server task failed: {e}")),
            },
        }
    }

    /// Stops listening, lets in-flight requests finish (up to 10 s), flushes everything to Parquet.
    pub async fn shutdown(mut self) -> CmdResult {
        let _ = self.stop.send(true);
        let drain = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(10), drain).await.is_err() {
            tracing::warn!("in-flight requests did not finish within 10 s; flushing what was acknowledged");
            self.tasks.abort_all();
        }
        self.collector.shutdown().await?;
        self.flusher.abort();
        tracing::info!("flushed; bye");
        Ok(())
    }
}

/// Completes on Ctrl-C or SIGTERM.
///
/// The handlers are installed when this is called, not when the future is first polled: a SIGTERM that arrives
/// while the collector is still starting (replaying its WAL, opening its stores) is kept until the collector
/// serves, and then shuts it down cleanly, instead of killing the process with the signal's default action.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let unix = {
        use tokio::signal::unix::{SignalKind, signal};
        (signal(SignalKind::terminate()).ok(), signal(SignalKind::interrupt()).ok())
    };
    async move {
        #[cfg(unix)]
        {
            let wait = |s: Option<tokio::signal::unix::Signal>| async move {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            let (term, int) = unix;
            tokio::select! {
                () = wait(term) => {},
                () = wait(int) => {},
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Runs the collector until SIGTERM / Ctrl-C, then flushes and exits.
pub async fn run(args: Args) -> CmdResult {
    let config = args.load_config()?;
    let signal = shutdown_signal();
    let mut running = start(config).await?;
    let outcome = running.serve_until(signal).await;
    tracing::info!("shutting down: flushing acknowledged data to Parquet");
    running.shutdown().await?;
    outcome.map_err(Into::into)
}
