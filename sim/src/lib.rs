//! A simulated multi-cloud agent fleet that exports through the official OpenTelemetry SDK: what `tailscope demo`
//! and `tailscope simulate` send, and what the benchmarks and tests generate their agent spans with.
//!
//! [`fleet`] is the static data (services, regions, models, tools, backends); [`plan`] generates agent turns
//! (`invoke_agent` traces) as data from a seed, with the span attributes built by [`genai`]; [`export`] hands them
//! to one SDK pipeline per simulated service.
//! [`run`] paces generation at the requested span rate in real time: span start and end times are simulated
//! (log-normal latencies, stalls, a regional incident), not slept, so a turn that "took" 40 s costs nothing to
//! produce.

pub mod endpoint;
pub mod export;
pub mod fleet;
pub mod genai;
pub mod plan;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

pub use endpoint::Endpoints;
pub use export::ExportCounters;

/// How the fleet exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Transport {
    /// OTLP/gRPC (a server URL, e.g. `http://127.0.0.1:4317`, for every signal).
    Grpc,
    /// OTLP/HTTP with protobuf bodies (a URL per signal, e.g. `http://127.0.0.1:4318/v1/traces`).
    Http,
}

/// Which traffic the fleet sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Scenario {
    /// The multi-cloud fleet: every service of [`fleet::SERVICES`] by its weight, with the regional incident.
    #[default]
    Fleet,
    /// A release side by side with the version before it: [`fleet::RELEASE_SERVICE`] in versions
    /// [`fleet::RELEASE_BEFORE`] and [`fleet::RELEASE_AFTER`], half the sessions each; the release is slower on one
    /// model and cheaper on another ([`fleet::RELEASE_SLOWER`], [`fleet::RELEASE_LEANER`]) and the same otherwise.
    Release,
}

/// What to simulate and where to send it.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Where each signal goes.
    pub endpoints: Endpoints,
    /// Where the agents and backends of one cloud (`cloud.provider`: `aws`, `azure`, `gcp`, `coreweave`) send instead:
    /// a collector per cloud. Clouds not named here use `endpoints`.
    pub by_cloud: std::collections::BTreeMap<String, Endpoints>,
    /// gRPC or HTTP.
    pub transport: Transport,
    /// Spans per second, on average (a turn's spans leave together).
    pub rate: f64,
    /// Stop after this much simulated (= wall-clock) time; `None`: until stopped.
    pub duration: Option<Duration>,
    /// Seed: the same seed produces the same turns, ids and attributes.
    pub seed: u64,
    /// Conversations open at once.
    pub sessions: usize,
    /// How often metrics are exported.
    pub metric_interval: Duration,
    /// Which traffic.
    pub scenario: Scenario,
}

/// Errors of the simulator.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// An OTLP exporter could not be built (bad endpoint, no runtime).
    #[error("cannot set up the OpenTelemetry exporters: {0}")]
    Exporter(String),
    /// Bad settings.
    #[error("invalid simulator setting: {0}")]
    Config(String),
    /// The generator thread died.
    #[error("the simulator stopped unexpectedly: {0}")]
    Crashed(String),
}

/// Live counters of what the fleet generated and what the endpoint accepted; shared with whoever reports.
#[derive(Debug, Default)]
pub struct SimStats {
    /// Agent turns (traces) generated.
    pub traces: AtomicU64,
    /// Spans handed to the SDK.
    pub spans: AtomicU64,
    /// Log records handed to the SDK.
    pub logs: AtomicU64,
    /// Conversations opened.
    pub sessions: AtomicU64,
    /// Hedged calls (each is two spans).
    pub hedges: AtomicU64,
    /// Spans with error status.
    pub error_spans: AtomicU64,
    /// What the exporters delivered.
    pub export: ExportCounters,
}

impl SimStats {
    /// A one-line account, for periodic progress output.
    pub fn line(&self, elapsed: Duration) -> String {
        let spans = self.spans.load(Ordering::Relaxed);
        let secs = elapsed.as_secs_f64().max(1e-3);
        let mut line = format!(
            "{:>6.0}s  {} spans ({:.0}/s)  {} turns  {} sessions  {} hedged  {} error spans  exported {} spans, {} logs",
            elapsed.as_secs_f64(),
            spans,
            spans as f64 / secs,
            self.traces.load(Ordering::Relaxed),
            self.sessions.load(Ordering::Relaxed),
            self.hedges.load(Ordering::Relaxed),
            self.error_spans.load(Ordering::Relaxed),
            self.export.spans.exported.load(Ordering::Relaxed),
            self.export.logs.exported.load(Ordering::Relaxed),
        );
        let failed = self.export.spans.failed.load(Ordering::Relaxed)
            + self.export.logs.failed.load(Ordering::Relaxed)
            + self.export.metrics.failed.load(Ordering::Relaxed);
        if failed > 0 {
            line.push_str(&format!("  FAILED {failed}"));
        }
        line
    }

    /// Export failures so far, each signal with its latest error; empty when every export succeeded.
    pub fn export_failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (name, c) in [
            ("spans", &self.export.spans),
            ("metric exports", &self.export.metrics),
            ("log records", &self.export.logs),
        ] {
            let failed = c.failed.load(Ordering::Relaxed);
            if failed > 0 {
                let last = c.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone().unwrap_or_default();
                out.push(format!("{failed} {name} not delivered (latest error: {last})"));
            }
        }
        out
    }
}

/// The end of a run.
#[derive(Debug, Clone)]
pub struct SimReport {
    /// Wall-clock time the run took.
    pub elapsed: Duration,
    /// Spans handed to the SDK.
    pub spans: u64,
    /// Agent turns.
    pub traces: u64,
    /// Spans the endpoint acknowledged.
    pub exported_spans: u64,
    /// Problems met while shutting the SDK pipelines down (final flush failures).
    pub shutdown_errors: Vec<String>,
}

/// Runs the fleet until `duration` (if any) or until `stop` resolves, then flushes every SDK pipeline.
/// Must be called inside a multi-threaded tokio runtime.
pub async fn run(
    config: SimConfig,
    stats: Arc<SimStats>,
    stop: impl Future<Output = ()> + Send,
) -> Result<SimReport, SimError> {
    if !(config.rate.is_finite() && config.rate > 0.0) {
        return Err(SimError::Config(format!(
            "--rate must be a positive number of spans per second, got {}",
            config.rate
        )));
    }
    if config.sessions == 0 {
        return Err(SimError::Config("--sessions must be at least 1".into()));
    }
    let target = export::Target {
        endpoints: config.endpoints.clone(),
        by_cloud: config.by_cloud.clone(),
        transport: config.transport,
        metric_interval: config.metric_interval,
        // Short batches keep the live dashboard fresh; the queue absorbs a few seconds at the requested rate.
        batch_delay: Duration::from_millis(500),
        queue_size: ((config.rate * 4.0) as usize).clamp(4096, 1 << 20),
    };
    let halt = Arc::new(AtomicBool::new(false));
    let worker = {
        let halt = halt.clone();
        let stats = stats.clone();
        tokio::task::spawn_blocking(move || -> Result<SimReport, SimError> {
            let fleet = export::Fleet::new(&target, &stats.export)?;
            let started = Instant::now();
            let result = generate(&config, &fleet, &stats, &halt, started);
            let shutdown_errors = fleet.shutdown();
            result.map(|()| SimReport {
                elapsed: started.elapsed(),
                spans: stats.spans.load(Ordering::Relaxed),
                traces: stats.traces.load(Ordering::Relaxed),
                exported_spans: stats.export.spans.exported.load(Ordering::Relaxed),
                shutdown_errors,
            })
        })
    };
    tokio::pin!(worker);
    tokio::select! {
        done = &mut worker => return done.map_err(|e| SimError::Crashed(e.to_string()))?,
        () = stop => halt.store(true, Ordering::Relaxed),
    }
    worker.await.map_err(|e| SimError::Crashed(e.to_string()))?
}

/// The pacing loop: turn after turn, never ahead of the wall clock by more than a few milliseconds.
fn generate(
    config: &SimConfig,
    fleet: &export::Fleet,
    stats: &SimStats,
    halt: &AtomicBool,
    started: Instant,
) -> Result<(), SimError> {
    let wall_start = SystemTime::now();
    let mut generator = plan::Generator::new(config.seed, config.sessions).scenario(config.scenario);
    tracing::info!(
        seed = config.seed,
        incident_region = generator.incident().place.region,
        incident_cloud = generator.incident().place.cloud,
        incident_start_s = generator.incident().start.as_secs(),
        "simulated fleet started"
    );
    let mut emitted: u64 = 0;
    while !halt.load(Ordering::Relaxed) {
        // The simulated clock advances with the work done, so the n-th turn of a seed is always the same.
        let now = Duration::from_secs_f64(emitted as f64 / config.rate);
        if config.duration.is_some_and(|d| now >= d) {
            break;
        }
        let ahead = now.saturating_sub(started.elapsed());
        if ahead > Duration::from_millis(5) {
            std::thread::sleep(ahead.min(Duration::from_millis(100)));
            continue;
        }
        let turn = generator.next_trace(now);
        // The turn ends "now": the SDK exports a span when it ends, so a real service's spans arrive after
        // the fact, with start times up to the turn's length in the past.
        let t0 = (wall_start + now).checked_sub(Duration::from_nanos(turn.duration_ns)).unwrap_or(wall_start);
        let n = fleet.emit(&turn, t0) as u64;
        emitted += n;
        stats.spans.fetch_add(n, Ordering::Relaxed);
        stats.traces.fetch_add(1, Ordering::Relaxed);
        stats.logs.fetch_add(turn.logs.len() as u64, Ordering::Relaxed);
        stats.hedges.fetch_add(turn.hedges as u64, Ordering::Relaxed);
        stats.error_spans.fetch_add(turn.errors as u64, Ordering::Relaxed);
        if turn.new_session {
            stats.sessions.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}
