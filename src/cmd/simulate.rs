//! `tailscope simulate`: a simulated multi-cloud agent fleet exporting to any OTLP endpoint.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::CmdResult;
use tailscope_sim::{self as sim, Endpoints, SimConfig, SimStats, Transport};

/// Flags of `tailscope simulate`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// OTLP endpoint of every signal: for gRPC the server URL, for HTTP the base URL to which `/v1/traces`,
    /// `/v1/metrics` and `/v1/logs` are appended. Without it, as any OpenTelemetry SDK: a signal's
    /// OTEL_EXPORTER_OTLP_{TRACES,METRICS,LOGS}_ENDPOINT as it is, else OTEL_EXPORTER_OTLP_ENDPOINT as a base URL,
    /// else http://127.0.0.1:4317 (gRPC) or http://127.0.0.1:4318 (HTTP). Headers come from
    /// OTEL_EXPORTER_OTLP_HEADERS (`k=v,k2=v2`, URL-encoded values).
    #[arg(long)]
    pub endpoint: Option<String>,
    /// OTLP transport.
    #[arg(long, value_enum, default_value_t = Transport::Grpc)]
    pub protocol: Transport,
    /// Spans per second, on average.
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,
    /// Stop after this long (e.g. `90s`, `10m`); runs until Ctrl-C when absent.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Seed: the same seed sends the same turns, ids and attributes.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Agent conversations open at once (each runs a few turns, then a new one starts).
    #[arg(long, default_value_t = 40)]
    pub sessions: usize,
    /// Which traffic: `fleet` (the multi-cloud fleet) or `release` (one service in two versions, the newer one
    /// slower on gpt-4o and cheaper on gpt-4o-mini: what the Release screen should find).
    #[arg(long, value_enum, default_value_t = sim::Scenario::Fleet)]
    pub scenario: sim::Scenario,
    /// Print a progress line this often.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub report_every: Duration,
}

impl Args {
    /// The simulator settings these flags (and the OpenTelemetry environment variables) describe.
    pub fn sim_config(&self) -> SimConfig {
        SimConfig {
            endpoints: Endpoints::resolve(self.endpoint.as_deref(), self.protocol, |name| std::env::var(name).ok()),
            by_cloud: Default::default(),
            transport: self.protocol,
            rate: self.rate,
            duration: self.duration,
            seed: self.seed,
            sessions: self.sessions,
            metric_interval: Duration::from_secs(10),
            scenario: self.scenario,
        }
    }
}

/// Runs `tailscope simulate` until `--duration` or Ctrl-C / SIGTERM.
pub async fn run(args: Args) -> CmdResult {
    let config = args.sim_config();
    let endpoints = config.endpoints.clone();
    let stats = Arc::new(SimStats::default());
    let started = Instant::now();
    let progress = {
        let stats = stats.clone();
        let every = args.report_every;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                eprintln!("{}", stats.line(started.elapsed()));
            }
        })
    };
    eprintln!(
        "simulating an agent fleet: {} spans/s over OTLP/{} to {} (seed {})",
        args.rate,
        match args.protocol {
            Transport::Grpc => "gRPC",
            Transport::Http => "HTTP",
        },
        endpoints,
        args.seed
    );
    let report = sim::run(config, stats.clone(), super::serve::shutdown_signal()).await;
    progress.abort();
    let report = report?;
    eprintln!("{}", stats.line(report.elapsed));
    let mut problems = stats.export_failures();
    problems.extend(report.shutdown_errors.iter().cloned());
    if problems.is_empty() {
        eprintln!("done: {} spans in {} turns, all exported", report.spans, report.traces);
        Ok(())
    } else {
        for p in &problems {
            eprintln!("  {p}");
        }
        Err(format!(
            "{} of {} spans were not acknowledged by {}: is the endpoint up and speaking OTLP/{:?}?",
            report.spans.saturating_sub(report.exported_spans),
            report.spans,
            endpoints,
            args.protocol
        )
        .into())
    }
}
