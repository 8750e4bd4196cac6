//! The budget engine: counts acknowledged spans against every `[[budget]]`, evaluates alerts in the background,
//! and serves `GET /api/v1/alerts` and `GET /api/v1/guardrails/hedging`.
//!
//! The ingest path only adds numbers under a short lock ([`SpanObserver::observe`]) and nudges the evaluator.
//! A dedicated thread evaluates (at most every 200 ms while spans arrive, and every `alerts.evaluate_interval`
//! regardless, for period ends and rolling windows), appends events to the alert log with fsync, logs them and
//! queues them for the webhook workers, which run on the tokio runtime.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::prelude::{ParquetReadOptions, SessionContext, col, lit};
use datafusion::scalar::ScalarValue;
use futures::StreamExt;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tailscope_core::alerts::AlertEvent;
use tailscope_core::catalog::Catalog;
use tailscope_core::config::Config;
use tailscope_core::cost::{BudgetKind, validate_budgets};
use tailscope_core::schema::{Signal, SpanColumn};

use super::CostError;
use super::alerts::AlertBook;
use super::budget::{BUDGET_COLUMNS, Budget, BudgetStatus, SpanColumns, usd};
use super::prices::glob_match;
use super::webhook::{DeliveryLog, Webhooks};
use crate::observe::SpanObserver;

const DEBOUNCE: Duration = Duration::from_millis(200);

fn now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

struct Inner {
    budgets: Mutex<Vec<Budget>>,
    book: Mutex<AlertBook>,
    webhooks: Webhooks,
}

impl Inner {
    /// Rolls periods, compares figures with alert states, and dispatches new events.
    fn evaluate(&self, now: i64) -> Vec<Arc<AlertEvent>> {
        let budgets = {
            let mut budgets = self.budgets.lock();
            for b in budgets.iter_mut() {
                b.roll(now);
            }
            budgets.clone()
        };
        let statuses: Vec<(&Budget, BudgetStatus)> = budgets.iter().map(|b| (b, b.status(now))).collect();
        let events = match self.book.lock().evaluate(&statuses, DateTime::<Utc>::from_timestamp_nanos(now)) {
            Ok(events) => events,
            Err(e) => {
                tracing::error!("cannot record budget alerts (they will be retried at the next evaluation): {e}");
                return Vec::new();
            }
        };
        for e in &events {
            match (e.state.as_str(), e.severity.as_str()) {
                ("resolved", _) => tracing::info!(alert = %e.alert_id, budget = %e.budget, "{}", e.message),
                (_, "critical") => tracing::error!(alert = %e.alert_id, budget = %e.budget, "{}", e.message),
                _ => tracing::warn!(alert = %e.alert_id, budget = %e.budget, "{}", e.message),
            }
            self.webhooks.send(e);
        }
        events
    }
}

/// Budget guardrails for one collector. Create with [`BudgetEngine::start`], register as a span observer,
/// serve [`routes`].
pub struct BudgetEngine {
    inner: Arc<Inner>,
    wake: SyncSender<()>,
}

impl std::fmt::Debug for BudgetEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BudgetEngine").field("budgets", &self.inner.budgets.lock().len()).finish()
    }
}

impl BudgetEngine {
    /// Validates the budgets, loads the alert log under `config.data_dir/alerts`, rebuilds period-to-date spend
    /// from the spans `catalog` holds (Parquet files and buffered batches), runs a first evaluation, and starts
    /// the evaluator thread and webhook workers (on the current tokio runtime).
    ///
    /// Call it after the WAL was replayed and before ingest starts, and register the engine as an observer of
    /// batches acknowledged from then on: a span counted here and observed again would count twice.
    pub async fn start(config: &Config, catalog: &Catalog) -> Result<Arc<BudgetEngine>, CostError> {
        validate_budgets(&config.budgets)?;
        config.alerts.validate()?;
        let data_dir = &config.data_dir;
        let book = AlertBook::open(data_dir)?;
        let now = now_ns();
        let mut budgets: Vec<Budget> = config.budgets.iter().map(|c| Budget::new(c.clone(), now)).collect();
        if !budgets.is_empty() {
            rebuild(&mut budgets, catalog, now).await?;
        }
        let log = Arc::new(DeliveryLog::open(data_dir));
        let webhooks = Webhooks::start(&config.alerts, log, book.events(), &tokio::runtime::Handle::current());
        let inner = Arc::new(Inner { budgets: Mutex::new(budgets), book: Mutex::new(book), webhooks });
        let (wake, rx) = sync_channel(1);
        let engine = Arc::new(BudgetEngine { inner: inner.clone(), wake });
        let interval = config.alerts.evaluate_interval;
        std::thread::Builder::new()
            .name("tailscope-budgets".into())
            .spawn(move || evaluator(inner, rx, interval))
            .map_err(|e| CostError::Config {
                field: "alerts".into(),
                reason: format!("cannot start the evaluator thread: {e}"),
            })?;
        Ok(engine)
    }

    /// Evaluates now, on the caller's thread, and returns the new events (the background thread does this on
    /// its own; this is for tests and shutdown).
    pub fn evaluate_now(&self) -> Vec<Arc<AlertEvent>> {
        self.inner.evaluate(now_ns())
    }

    /// Every budget's figures now.
    pub fn statuses(&self) -> Vec<BudgetStatus> {
        let now = now_ns();
        self.inner.budgets.lock().iter().map(|b| b.status(now)).collect()
    }

    /// The latest event of each alert, most recent first.
    pub fn alerts(&self, firing_only: bool) -> Vec<Arc<AlertEvent>> {
        self.inner.book.lock().alerts(firing_only)
    }

    /// Whether a gateway may send a hedged (duplicate) request to `provider` now: denied once a
    /// `duplicate_inference` budget that covers the provider has reached its cap (USD or share).
    pub fn hedging_decision(&self, provider: Option<&str>) -> HedgingDecision {
        let now = now_ns();
        let statuses: Vec<BudgetStatus> = self
            .inner
            .budgets
            .lock()
            .iter()
            .filter(|b| b.config.kind == BudgetKind::DuplicateInference)
            .filter(|b| match provider {
                Some(p) => b.config.providers.is_empty() || b.config.providers.iter().any(|pat| glob_match(pat, p)),
                None => true,
            })
            .map(|b| b.status(now))
            .collect();
        let exhausted: Vec<&BudgetStatus> = statuses.iter().filter(|s| s.utilization >= 1.0).collect();
        let (allow, reason) = if let Some(s) = exhausted.first() {
            (false, format!("duplicate-inference budget {:?} is exhausted: {}", s.name, describe(s)))
        } else if statuses.is_empty() {
            (true, "no duplicate_inference budget covers this provider".to_string())
        } else {
            let parts: Vec<String> = statuses.iter().map(|s| format!("{:?}: {}", s.name, describe(s))).collect();
            (true, format!("within budget ({})", parts.join("; ")))
        };
        HedgingDecision {
            decision: if allow { "allow" } else { "deny" }.to_string(),
            allow,
            provider: provider.map(str::to_string),
            reason,
            budgets: statuses,
        }
    }
}

fn describe(s: &BudgetStatus) -> String {
    let mut parts = Vec::new();
    if let Some(cap) = s.cap_usd {
        parts.push(format!("{} of {} this {}", usd(s.spend_usd), usd(cap), s.period));
    }
    if let (Some(share), Some(cap)) = (s.share, s.cap_share) {
        parts.push(format!("{:.1}% of inference spend against a {:.1}% cap", share * 100.0, cap * 100.0));
    }
    format!("{} ({:.0}% used)", parts.join(", "), s.utilization * 100.0)
}

impl SpanObserver for BudgetEngine {
    fn observe(&self, spans: &RecordBatch) {
        if spans.num_rows() == 0 {
            return;
        }
        {
            let mut budgets = self.inner.budgets.lock();
            if budgets.is_empty() {
                return;
            }
            let cols = match SpanColumns::from_batch(spans) {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!("budget engine cannot read a span batch ({e}); its spend is not counted");
                    return;
                }
            };
            let now = now_ns();
            for b in budgets.iter_mut() {
                b.add(&cols, now);
            }
        }
        match self.wake.try_send(()) {
            Ok(()) | Err(TrySendError::Full(())) | Err(TrySendError::Disconnected(())) => {}
        }
    }
}

fn evaluator(inner: Arc<Inner>, rx: Receiver<()>, interval: Duration) {
    loop {
        match rx.recv_timeout(interval) {
            Ok(()) => std::thread::sleep(DEBOUNCE), // let a burst of batches land first
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        while rx.try_recv().is_ok() {}
        inner.evaluate(now_ns());
    }
}

/// Adds the stored spans of every budget's current period.
async fn rebuild(budgets: &mut [Budget], catalog: &Catalog, now: i64) -> Result<(), CostError> {
    let earliest = budgets.iter().map(|b| b.config.period.bounds(now).start_ns).min().unwrap_or(now);
    let snapshot = catalog.snapshot(Signal::Spans);
    let ctx = SessionContext::new();
    let started = std::time::Instant::now();
    let mut rows = 0usize;
    let mut files = 0usize;
    for file in &snapshot.files {
        if file.time_range_ns.is_some_and(|(_, max)| max < earliest) {
            continue;
        }
        let path = catalog.data_dir().join(&file.relative_path);
        let err = |detail: String| CostError::History { path: path.clone(), detail };
        let df = ctx
            .read_parquet(path.to_string_lossy().as_ref(), ParquetReadOptions::default())
            .await
            .map_err(|e| err(e.to_string()))?;
        let ts = ScalarValue::TimestampNanosecond(Some(earliest), Some("UTC".into()));
        let df = df
            .filter(col(SpanColumn::StartTime.name()).gt_eq(lit(ts)))
            .and_then(|df| df.select_columns(&BUDGET_COLUMNS))
            .map_err(|e| err(e.to_string()))?;
        let mut stream = df.execute_stream().await.map_err(|e| err(e.to_string()))?;
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(|e| err(e.to_string()))?;
            let cols = SpanColumns::from_batch(&batch).map_err(err)?;
            rows += cols.len();
            for b in budgets.iter_mut() {
                b.add(&cols, now);
            }
        }
        files += 1;
    }
    for batch in &snapshot.batches {
        let cols = SpanColumns::from_batch(batch)
            .map_err(|detail| CostError::History { path: catalog.data_dir().to_path_buf(), detail })?;
        rows += cols.len();
        for b in budgets.iter_mut() {
            b.add(&cols, now);
        }
    }
    tracing::info!(
        files,
        rows,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "budget spend rebuilt from stored spans"
    );
    Ok(())
}

/// The answer of `GET /api/v1/guardrails/hedging`.
#[derive(Debug, Clone, Serialize)]
pub struct HedgingDecision {
    /// `allow` or `deny`.
    pub decision: String,
    pub allow: bool,
    pub provider: Option<String>,
    /// Why, naming the budget and its figures.
    pub reason: String,
    /// The `duplicate_inference` budgets that were consulted.
    pub budgets: Vec<BudgetStatus>,
}

#[derive(Debug, Deserialize)]
struct HedgingQuery {
    provider: Option<String>,
}

#[derive(Debug, Deserialize)]
struct AlertsQuery {
    /// `firing` to list only firing alerts.
    state: Option<String>,
}

#[derive(Serialize)]
struct AlertsResponse {
    alerts: Vec<Arc<AlertEvent>>,
    budgets: Vec<BudgetStatus>,
}

/// `GET /api/v1/alerts` (each alert's latest event, plus every budget's figures; `?state=firing` filters) and
/// `GET /api/v1/guardrails/hedging?provider=X` (allow or deny, with the reason).
pub fn routes(engine: Arc<BudgetEngine>) -> Router {
    Router::new()
        .route("/api/v1/alerts", get(alerts_handler))
        .route("/api/v1/guardrails/hedging", get(hedging_handler))
        .with_state(engine)
}

async fn alerts_handler(State(engine): State<Arc<BudgetEngine>>, Query(q): Query<AlertsQuery>) -> Response {
    let firing_only = match q.state.as_deref() {
        None | Some("all") => false,
        Some("firing") => true,
        Some(other) => {
            let body = serde_json::json!({"error": format!("unknown state {other:?}: use state=firing or state=all")});
            return (axum::http::StatusCode::BAD_REQUEST, Json(body)).into_response();
        }
    };
    Json(AlertsResponse { alerts: engine.alerts(firing_only), budgets: engine.statuses() }).into_response()
}

async fn hedging_handler(State(engine): State<Arc<BudgetEngine>>, Query(q): Query<HedgingQuery>) -> Response {
    let provider = q.provider.as_deref().map(str::trim).filter(|p| !p.is_empty());
    Json(engine.hedging_decision(provider)).into_response()
}

#[cfg(test)]
mod tests {
    use tailscope_core::cost::{BudgetConfig, BudgetPeriod};

    use super::*;
    use crate::cost::budget::tests::{Row, batch};

    fn config(dir: &std::path::Path) -> Config {
        let mut c = Config { data_dir: dir.to_path_buf(), ..Config::default() };
        c.budgets.push(BudgetConfig {
            name: "dup-daily".into(),
            kind: BudgetKind::DuplicateInference,
            period: BudgetPeriod::Day,
            cap_usd: Some(1.0),
            warn_at: vec![0.5, 1.0],
            providers: vec!["aws.*".into()],
            forecast: false,
            ..Default::default()
        });
        c
    }

    fn loser(cost: f64) -> Row {
        Row {
            t: now_ns(),
            provider: Some("aws.bedrock"),
            hedge_id: Some("h"),
            winner: Some(false),
            cost: Some(cost),
            token_cost: Some(cost),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn guardrail_flips_to_deny_when_the_duplicate_budget_is_spent() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        let engine = BudgetEngine::start(&config, &Catalog::new(dir.path())).await.unwrap();
        let d = engine.hedging_decision(Some("aws.bedrock"));
        assert!(d.allow, "{d:?}");
        engine.observe(&batch(&[loser(0.6)]));
        assert!(engine.hedging_decision(Some("aws.bedrock")).allow);
        let events = engine.evaluate_now();
        assert_eq!(events.len(), 1);
        engine.observe(&batch(&[loser(0.6)]));
        let d = engine.hedging_decision(Some("aws.bedrock"));
        assert!(!d.allow);
        assert!(d.reason.contains("dup-daily") && d.reason.contains("$1.20 of $1.00"), "{}", d.reason);
        // Another provider is not covered by the budget.
        let d = engine.hedging_decision(Some("gcp.vertex_ai"));
        assert!(d.allow && d.reason.contains("no duplicate_inference budget"), "{d:?}");
        // Served over HTTP.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, routes(engine)).await.unwrap() });
        let v: serde_json::Value =
            reqwest::get(format!("http://{addr}/api/v1/guardrails/hedging?provider=aws.bedrock"))
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
        assert_eq!(v["decision"], "deny");
        let v: serde_json::Value =
            reqwest::get(format!("http://{addr}/api/v1/alerts")).await.unwrap().json().await.unwrap();
        assert_eq!(v["alerts"][0]["budget"], "dup-daily");
        assert_eq!(v["budgets"][0]["spend_usd"], 1.2);
        let r = reqwest::get(format!("http://{addr}/api/v1/alerts?state=bogus")).await.unwrap();
        assert_eq!(r.status(), 400);
    }

    #[tokio::test]
    async fn spend_is_rebuilt_from_parquet_files_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        let now = now_ns();
        let day = DateTime::<Utc>::from_timestamp_nanos(now);
        let part = dir.path().join(format!("spans/date={}/hour={}", day.format("%Y-%m-%d"), day.format("%H")));
        std::fs::create_dir_all(&part).unwrap();
        let mut old = loser(5.0);
        old.t = now - 3 * 86_400_000_000_000; // an earlier day: not counted
        let data = batch(&[loser(0.4), loser(0.3), old]);
        let file = std::fs::File::create(part.join("history.parquet")).unwrap();
        let mut writer = datafusion::parquet::arrow::ArrowWriter::try_new(file, data.schema(), None).unwrap();
        writer.write(&data).unwrap();
        writer.close().unwrap();
        let engine = BudgetEngine::start(&config, &Catalog::open(dir.path()).unwrap()).await.unwrap();
        let spend = engine.statuses()[0].spend_usd;
        assert!((spend - 0.7).abs() < 1e-9, "{spend}");
    }

    #[tokio::test]
    async fn spend_is_rebuilt_from_the_catalog_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        let catalog = Catalog::new(dir.path());
        catalog.add_batch(Signal::Spans, 1, batch(&[loser(0.7), loser(0.7)]));
        let engine = BudgetEngine::start(&config, &catalog).await.unwrap();
        assert_eq!(engine.statuses()[0].spend_usd, 1.4);
        assert!(!engine.hedging_decision(None).allow);
    }
}
