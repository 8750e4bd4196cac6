//! `tailscope demo`: the whole product in one command.
//!
//! Starts the collector in-process on loopback (ephemeral ports) with example budgets sized so that alerts fire
//! within the first two minutes, drives the simulated multi-cloud agent fleet into it through the OpenTelemetry
//! SDK over real OTLP/gRPC, and opens the dashboard on it (or, with `--no-tui`, prints a one-line summary every
//! few seconds). At the end it flushes everything to Parquet and prints a summary computed with SQL over the
//! stored files, the same statements anyone can rerun with `tailscope query --data-dir`.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use query::Engine;
use query::format::{self, Format};
use tailscope_core::config::{Config, ListenAddr};
use tailscope_core::cost::{BudgetConfig, BudgetKind, BudgetPeriod};
use tailscope_core::display::{duration_ms, usd};

use super::CmdResult;
use tailscope_sim::{self as sim, Endpoints, SimConfig, SimStats, Transport};

/// Flags of `tailscope demo`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where the collector keeps its WAL, Parquet files and alert state. The summary covers everything stored
    /// there: use a fresh directory to see one run alone.
    #[arg(long, value_name = "DIR", default_value = "tailscope-data")]
    pub data_dir: PathBuf,
    /// Run headless: print a one-line summary every few seconds instead of opening the dashboard.
    #[arg(long)]
    pub no_tui: bool,
    /// Stop the fleet after this long (e.g. 60s, 10m). Without it, a headless demo runs until Ctrl-C; with the
    /// dashboard, the fleet runs until you quit it (q).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Spans per second the fleet sends. The example budgets scale with it, so alerts fire at about the same
    /// time whatever the rate.
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,
    /// Seed of the simulated fleet: the same seed sends the same sessions, latencies and ids.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Agent conversations open at once.
    #[arg(long, default_value_t = 40)]
    pub sessions: usize,
    /// Headless only: how often the one-line summary is printed.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub report_every: Duration,
    /// `single`: one collector. `multi-cloud`: three collectors standing for AWS, Azure and GCP. Each writes its
    /// cloud's store by placement, they keep one budget across the fleet, and a Ballista scheduler with two
    /// executors answers their SQL. The dashboard merges the three. Everything runs on loopback under --data-dir.
    #[arg(long, value_enum, default_value_t = Topology::Single)]
    pub topology: Topology,
}

/// What `tailscope demo` starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Topology {
    /// One collector.
    Single,
    /// Three collectors, one per cloud, with one budget, and a Ballista cluster (docs/deploy.md).
    MultiCloud,
}

/// Whether this command shows the dashboard (and so must not log to stderr).
pub fn owns_terminal(command: &crate::Command) -> bool {
    matches!(command, crate::Command::Demo(args) if !args.no_tui)
}

/// What one span of the simulated fleet costs on average with the default price table (measured: about $0.004,
/// mostly chat input tokens). The example budgets are derived from it and the rate.
const USD_PER_SPAN: f64 = 0.004;
/// Egress cost per span, measured the same way (cross-cloud retrievals and cloud-hosted model calls).
const EGRESS_USD_PER_SPAN: f64 = 1.1e-6;

/// The demo's collector configuration: loopback with ephemeral ports, and example budgets.
fn demo_config(args: &Args) -> Config {
    let mut config = Config { data_dir: args.data_dir.clone(), ..Config::default() };
    // Ephemeral ports: the demo must not collide with a `tailscope serve` already on the default ports.
    let any_port = ListenAddr::from(SocketAddr::from(([127, 0, 0, 1], 0)));
    config.server.otlp_grpc = any_port.clone();
    config.server.otlp_http = any_port.clone();
    config.server.api = any_port.clone();
    config.server.flight = any_port;
    config.alerts.evaluate_interval = Duration::from_secs(5);
    let per_second = args.rate * USD_PER_SPAN;
    let budget = |name: &str, kind: BudgetKind, period: BudgetPeriod| BudgetConfig {
        name: name.to_string(),
        kind,
        period,
        cap_usd: None,
        cap_share: None,
        warn_at: vec![0.8, 1.0],
        providers: Vec::new(),
        regions: Vec::new(),
        services: Vec::new(),
        forecast: false,
        project: None,
    };
    let hour = BudgetPeriod::Rolling(Duration::from_secs(3600));
    config.budgets = vec![
        // All inference and egress: 80% after about a minute of the fleet, breached at about 75 s.
        BudgetConfig {
            cap_usd: Some(round_cents(per_second * 75.0)),
            ..budget("fleet-spend", BudgetKind::Total, hour)
        },
        // Hedged requests' losing copies: the fleet wastes ~4% of inference spend on them; the guardrail is 3%.
        BudgetConfig { cap_share: Some(0.03), ..budget("hedge-duplicates", BudgetKind::DuplicateInference, hour) },
        // Cross-cloud transfer: 80% at about 90 s.
        BudgetConfig {
            cap_usd: Some((args.rate * EGRESS_USD_PER_SPAN * 110.0 * 10_000.0).ceil() / 10_000.0),
            ..budget("cross-cloud-egress", BudgetKind::Egress, hour)
        },
        // Any one conversation: long ones cross $1.50 within a couple of minutes.
        BudgetConfig {
            cap_usd: Some(1.5),
            warn_at: vec![1.0],
            ..budget("session-cost", BudgetKind::SessionCost, BudgetPeriod::Day)
        },
    ];
    config
}

fn round_cents(usd: f64) -> f64 {
    (usd * 100.0).round().max(1.0) / 100.0
}

/// Runs `tailscope demo`.
pub async fn run(args: Args) -> CmdResult {
    check_args(&args)?;
    if args.topology == Topology::MultiCloud {
        let config = demo_config(&args);
        return super::demo_multi_cloud::run(args, config).await;
    }
    let earlier = stored_spans(&args.data_dir).await;
    let config = demo_config(&args);
    let config_path = save_effective_config(&config)?;
    let mut running = super::serve::start(config.clone()).await?;
    let addrs = running.addrs;
    let api = format!("http://{}", addrs.api);
    print_banner(&args, &config, &addrs, &config_path);

    let stats = Arc::new(SimStats::default());
    let (stop_fleet, fleet_stopped) = tokio::sync::oneshot::channel::<()>();
    let sim_config = SimConfig {
        endpoints: Endpoints::from_base(&format!("http://{}", addrs.otlp_grpc), Transport::Grpc),
        by_cloud: Default::default(),
        transport: Transport::Grpc,
        rate: args.rate,
        duration: args.duration,
        seed: args.seed,
        sessions: args.sessions,
        metric_interval: Duration::from_secs(10),
        scenario: sim::Scenario::Fleet,
    };
    let mut fleet = tokio::spawn(sim::run(sim_config, stats.clone(), async move {
        let _ = fleet_stopped.await;
    }));
    let started = Instant::now();

    let mut fleet_done = None;
    let outcome: Result<(), String> = if args.no_tui {
        let engine = Engine::new(running.collector().catalog(), config.query.clone()).await?;
        let mut tick = tokio::time::interval(args.report_every);
        tick.tick().await;
        // One set of signal handlers for the whole loop, so a signal between two turns is not missed.
        let stop = super::serve::shutdown_signal();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let line = progress_line(&engine, &engine, &stats, started.elapsed()).await;
                    println!("{line}");
                }
                done = &mut fleet => {
                    fleet_done = Some(done);
                    break Ok(());
                }
                () = &mut stop => {
                    eprintln!("stopping the fleet");
                    break Ok(());
                }
                result = running.serve_until(std::future::pending()) => break result,
            }
        }
    } else {
        dashboard(api.clone()).await
    };

    // Stop the fleet; its SDK pipelines flush what they still hold into the collector, which is still up.
    let sim_report = stop_fleet_task(stop_fleet, fleet_done, fleet).await;
    // Everything acknowledged goes to Parquet before the summary reads it.
    running.shutdown().await?;
    outcome?;
    summarise(&config, &sim_report?, &stats, earlier).await
}

/// The dashboard on `server` (one API URL, or several separated by commas: one merged live view), until quit.
pub(super) async fn dashboard(server: String) -> Result<(), String> {
    let tui_args = super::tui::Args {
        server,
        data_dir: None,
        dashboard: None,
        refresh: Duration::from_secs(1),
        timeout: Duration::from_secs(30),
        max_answer_mb: super::tui::DEFAULT_MAX_ANSWER_MB,
        auth: Default::default(),
    };
    super::tui::run(tui_args).await.map_err(|e| format!("dashboard: {e}"))
}

/// The fleet's report once it stopped: told to stop (`stop`) unless it already ended (`done`).
pub(super) async fn stop_fleet_task(
    stop: tokio::sync::oneshot::Sender<()>,
    done: Option<Result<Result<sim::SimReport, sim::SimError>, tokio::task::JoinError>>,
    fleet: tokio::task::JoinHandle<Result<sim::SimReport, sim::SimError>>,
) -> Result<sim::SimReport, String> {
    let _ = stop.send(());
    let done = match done {
        Some(done) => done,
        None => fleet.await,
    };
    match done {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(e) => Err(format!("the fleet task failed: {e}")),
    }
}

/// Refuses flags the demo cannot run with, saying what to pass instead.
fn check_args(args: &Args) -> CmdResult {
    if !(args.rate.is_finite() && args.rate > 0.0) {
        return Err(format!("--rate must be a positive number of spans per second, got {}", args.rate).into());
    }
    if args.report_every < Duration::from_millis(200) {
        return Err("--report-every must be at least 200ms".into());
    }
    if !args.no_tui && !std::io::stdout().is_terminal() {
        return Err("the dashboard needs a terminal: run `tailscope demo --no-tui` to run headless".into());
    }
    Ok(())
}

/// Writes the effective configuration in the data dir, for reading (budget syntax) and for `tailscope serve
/// --config` afterwards; returns its path.
fn save_effective_config(config: &Config) -> Result<PathBuf, Box<dyn std::error::Error + Send + Sync>> {
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| format!("cannot create the data dir {}: {e}", config.data_dir.display()))?;
    let config_path = config.data_dir.join("demo-config.toml");
    let mut saved = config.clone();
    saved.server = tailscope_core::config::ServerConfig::default();
    std::fs::write(&config_path, toml::to_string(&saved)?)
        .map_err(|e| format!("cannot write {}: {e}", config_path.display()))?;
    Ok(config_path)
}

/// Where everything is: the listeners, the web UI, the config and the fleet.
fn print_banner(args: &Args, config: &Config, addrs: &super::serve::Addrs, config_path: &Path) {
    eprintln!("tailscope demo: collector on loopback, data in {}", config.data_dir.display());
    eprintln!(
        "  OTLP/gRPC {}  OTLP/HTTP {}  API {}  Flight SQL {}  (budgets: {})",
        addrs.otlp_grpc,
        addrs.otlp_http,
        addrs.api,
        addrs.flight,
        config_path.display()
    );
    // The same screens in a browser, for whoever is watching beside the terminal.
    eprintln!("  web UI: http://{}/  (the dashboards in a browser; docs/web.md)", addrs.api);
    eprintln!(
        "  fleet: {} spans/s from agent services on aws, azure, gcp and coreweave (seed {}){}",
        args.rate,
        args.seed,
        args.duration.map(|d| format!(" for {}", humantime::format_duration(d))).unwrap_or_default()
    );
}

/// Prints the summary from SQL over the stored data and checks that every span the fleet sent was acknowledged and
/// stored.
async fn summarise(config: &Config, sim_report: &sim::SimReport, stats: &SimStats, earlier: Option<u64>) -> CmdResult {
    let engine = Engine::open(&config.data_dir, Default::default()).await.map_err(|e| e.to_string())?;
    let summary = Summary::from_engines(&engine, &engine).await?;
    println!("{}", summary.render(&format!("the Parquet files in {}", config.data_dir.display())));
    println!("rerun any figure: tailscope query --data-dir {} \"{SQL_P99_BY_PROVIDER}\"", config.data_dir.display());
    if let Some(n) = earlier.filter(|n| *n > 0) {
        println!("note: {n} of the stored spans come from earlier runs in {}", config.data_dir.display());
    }
    summarise_run(&summary, sim_report, stats, earlier)
}

/// Prints what the fleet sent and checks that every span was acknowledged and stored (`earlier`: spans stored
/// before this run).
pub(super) fn summarise_run(
    summary: &Summary,
    sim_report: &sim::SimReport,
    stats: &SimStats,
    earlier: Option<u64>,
) -> CmdResult {
    let sent = sim_report.spans;
    let acked = sim_report.exported_spans;
    println!(
        "fleet: {sent} spans sent in {} turns over {:.1}s, {acked} acknowledged by the collector",
        sim_report.traces,
        sim_report.elapsed.as_secs_f64()
    );
    let failures = stats.export_failures();
    if !failures.is_empty() || acked < sent {
        return Err(format!("the collector did not acknowledge every span: {}", failures.join("; ")).into());
    }
    let expected = acked + earlier.unwrap_or(0);
    if summary.spans != expected {
        return Err(format!("{} spans stored, {expected} expected (acknowledged + earlier)", summary.spans).into());
    }
    Ok(())
}

/// Spans already stored in `dir` (None when it holds no tailscope data).
async fn stored_spans(dir: &Path) -> Option<u64> {
    if !dir.join("spans").exists() {
        return None;
    }
    let engine = Engine::open(dir, Default::default()).await.ok()?;
    let rows = sql_json(&engine, "SELECT count(*) AS n FROM spans").await.ok()?;
    rows.first().and_then(|r| r["n"].as_u64())
}

pub(super) async fn sql_json(engine: &Engine, sql: &str) -> Result<Vec<serde_json::Value>, String> {
    let output = engine.sql(sql).await.map_err(|e| format!("{e} (in: {sql})"))?;
    let bytes = format::to_bytes(Format::Json, &output).map_err(|e| e.to_string())?;
    serde_json::from_slice(&bytes).map_err(|e| e.to_string())
}

/// The headless progress line: the fleet's rate, and SQL figures from the running collector.
pub(super) async fn progress_line(engine: &Engine, alerts: &Engine, stats: &SimStats, elapsed: Duration) -> String {
    let sent = stats.spans.load(Ordering::Relaxed);
    let mut line =
        format!("[{:>4.0}s] sent {sent} spans ({:.0}/s)", elapsed.as_secs_f64(), sent as f64 / elapsed.as_secs_f64());
    match sql_json(engine, SQL_TOTALS).await {
        Ok(rows) => {
            let r = rows.first().cloned().unwrap_or_default();
            line.push_str(&format!(
                " · stored {} · {} sessions · {}",
                r["spans"].as_u64().unwrap_or(0),
                r["sessions"].as_u64().unwrap_or(0),
                usd(r["cost_usd"].as_f64().unwrap_or(0.0))
            ));
        }
        Err(e) => line.push_str(&format!(" · totals unavailable: {e}")),
    }
    let recent = "SELECT gen_ai_provider AS provider, quantile_exact(duration_ns, 0.99) / 1e6 AS p99_ms FROM spans \
                  WHERE gen_ai_operation = 'chat' AND end_time >= now() - INTERVAL '60 seconds' \
                  GROUP BY 1 ORDER BY 1";
    if let Ok(rows) = sql_json(engine, recent).await {
        let parts: Vec<String> = rows
            .iter()
            .map(|r| {
                format!(
                    "{} {}",
                    r["provider"].as_str().unwrap_or("?"),
                    duration_ms(r["p99_ms"].as_f64().unwrap_or(0.0))
                )
            })
            .collect();
        if !parts.is_empty() {
            line.push_str(&format!(" · chat p99 (1m): {}", parts.join(", ")));
        }
    }
    if let Ok(rows) =
        sql_json(alerts, "SELECT count(*) AS n, max(seq) AS last FROM alerts WHERE state = 'firing'").await
    {
        let n = rows.first().and_then(|r| r["n"].as_u64()).unwrap_or(0);
        line.push_str(&format!(" · {n} alerts"));
        if n > 0
            && let Ok(last) =
                sql_json(alerts, "SELECT message FROM alerts WHERE state = 'firing' ORDER BY seq DESC LIMIT 1").await
            && let Some(m) = last.first().and_then(|r| r["message"].as_str())
        {
            line.push_str(&format!(" (latest: {m})"));
        }
    }
    line
}

/// Totals over the stored spans.
pub const SQL_TOTALS: &str =
    "SELECT count(*) AS spans, count(DISTINCT session_id) AS sessions, sum(cost_usd) AS cost_usd FROM spans";
/// Tail latency of chat calls per GenAI provider.
pub const SQL_P99_BY_PROVIDER: &str = "SELECT gen_ai_provider AS provider, count(*) AS calls, \
     quantile_exact(duration_ns, 0.99) / 1e6 AS p99_ms FROM spans \
     WHERE gen_ai_operation = 'chat' AND gen_ai_provider IS NOT NULL GROUP BY 1 ORDER BY 1";
/// Budget alerts that fired.
pub const SQL_ALERTS: &str =
    "SELECT count(*) AS fired, count(DISTINCT budget) AS budgets FROM alerts WHERE state = 'firing'";

/// The end-of-run figures, every one from SQL over the data dir's files.
#[derive(Debug)]
pub(super) struct Summary {
    spans: u64,
    sessions: u64,
    cost_usd: f64,
    p99: Vec<(String, u64, f64)>,
    alerts_fired: u64,
    alert_budgets: u64,
}

impl Summary {
    /// The figures from `engine`'s tables, alerts from `alerts`' alert log (a collector's: a cluster has none).
    pub(super) async fn from_engines(engine: &Engine, alerts: &Engine) -> Result<Summary, String> {
        let totals = sql_json(engine, SQL_TOTALS).await?;
        let t = totals.first().cloned().unwrap_or_default();
        let p99 = sql_json(engine, SQL_P99_BY_PROVIDER)
            .await?
            .iter()
            .map(|r| {
                (
                    r["provider"].as_str().unwrap_or_default().to_string(),
                    r["calls"].as_u64().unwrap_or(0),
                    r["p99_ms"].as_f64().unwrap_or(f64::NAN),
                )
            })
            .collect();
        let alerts = sql_json(alerts, SQL_ALERTS).await?;
        let a = alerts.first().cloned().unwrap_or_default();
        Ok(Summary {
            spans: t["spans"].as_u64().unwrap_or(0),
            sessions: t["sessions"].as_u64().unwrap_or(0),
            cost_usd: t["cost_usd"].as_f64().unwrap_or(0.0),
            p99,
            alerts_fired: a["fired"].as_u64().unwrap_or(0),
            alert_budgets: a["budgets"].as_u64().unwrap_or(0),
        })
    }

    /// The figures, saying what they were computed over (`over`).
    pub(super) fn render(&self, over: &str) -> String {
        let mut out = format!("\nsummary (SQL over {over}):\n");
        out.push_str(&format!("  spans         {}\n", self.spans));
        out.push_str(&format!("  sessions      {}\n", self.sessions));
        out.push_str(&format!("  cost_usd      {:.6}\n", self.cost_usd));
        out.push_str(&format!("  alerts_fired  {} (from {} budgets)\n", self.alerts_fired, self.alert_budgets));
        for (provider, calls, p99) in &self.p99 {
            out.push_str(&format!("  p99_ms        {provider:<16} {p99:>12.3}   ({calls} chat calls)\n"));
        }
        out.pop();
        out
    }
}
