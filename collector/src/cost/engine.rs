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
use futures::StreamExt;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tailscope_core::alerts::{AlertEvent, AlertView};
use tailscope_core::config::Config;
use tailscope_core::cost::{BudgetKind, validate_budgets};
use tailscope_core::history::SpanHistory;
use tailscope_core::projects::{Project, Visibility};

use super::CostError;
use super::alerts::AlertBook;
use super::budget::{BUDGET_COLUMNS, Budget, BudgetStatus, SpanColumns};
use super::prices::glob_match;
use super::webhook::{DeliveryLog, Webhooks};
use crate::observe::SpanObserver;
use crate::telemetry::Metrics;

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
    /// from the spans `history` holds (Parquet files and buffered batches), runs a first evaluation, and starts
    /// the evaluator thread and webhook workers (on the current tokio runtime, each resuming its outbox). Every
    /// budget's figures and alert state are series of `metrics` from then on ([`super::series`]), beside the
    /// webhooks' deliveries.
    ///
    /// Call it after the WAL was replayed and before ingest starts, and register the engine as an observer of
    /// batches acknowledged from then on: a span counted here and observed again would count twice.
    /// `history` is the query engine in the binary: budgets read the stored spans as every query does.
    pub async fn start(
        config: &Config,
        history: &dyn SpanHistory,
        metrics: &Metrics,
    ) -> Result<Arc<BudgetEngine>, CostError> {
        validate_budgets(&config.budgets)?;
        config.alerts.validate()?;
        let data_dir = &config.data_dir;
        let book = AlertBook::open(data_dir)?;
        let now = now_ns();
        let mut budgets: Vec<Budget> = config.budgets.iter().map(|c| Budget::new(c.clone(), now)).collect();
        if !budgets.is_empty() {
            rebuild(&mut budgets, history, now).await?;
        }
        let log = Arc::new(DeliveryLog::open(data_dir));
        let runtime = tokio::runtime::Handle::current();
        let webhooks = Webhooks::start(&config.alerts, data_dir, log, book.events(), metrics, &runtime)?;
        let inner = Arc::new(Inner { budgets: Mutex::new(budgets), book: Mutex::new(book), webhooks });
        let (wake, rx) = sync_channel(1);
        let engine = Arc::new(BudgetEngine { inner: inner.clone(), wake });
        let series = Arc::downgrade(&engine);
        metrics.add_scraped(series);
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
        self.statuses_for(&Visibility::All)
    }

    /// The figures of the budgets a caller who sees `visible` may see: a budget of one of its projects; a budget
    /// over every project only when it sees every project (its spend sums other projects' too).
    pub fn statuses_for(&self, visible: &Visibility) -> Vec<BudgetStatus> {
        let now = now_ns();
        self.inner.budgets.lock().iter().filter(|b| budget_visible(b, visible)).map(|b| b.status(now)).collect()
    }

    /// The latest event of each alert, most recent first.
    pub fn alerts(&self, firing_only: bool) -> Vec<Arc<AlertEvent>> {
        self.inner.book.lock().alerts(firing_only)
    }

    /// Whether a gateway may send a hedged (duplicate) request to `provider` now: denied once a
    /// `duplicate_inference` budget that covers the provider has reached its cap (USD or share).
    pub fn hedging_decision(&self, provider: Option<&str>) -> HedgingDecision {
        self.hedging_decision_for(provider, &Visibility::All)
    }

    /// [`Self::hedging_decision`] for a caller who sees `visible`: decided by the budgets it may see (its
    /// projects' budgets; budgets over every project only for a caller who sees every project).
    pub fn hedging_decision_for(&self, provider: Option<&str>, visible: &Visibility) -> HedgingDecision {
        let now = now_ns();
        let statuses: Vec<BudgetStatus> = self
            .inner
            .budgets
            .lock()
            .iter()
            .filter(|b| b.config.kind == BudgetKind::DuplicateInference)
            .filter(|b| budget_visible(b, visible))
            .filter(|b| match provider {
                Some(p) => b.config.providers.is_empty() || b.config.providers.iter().any(|pat| glob_match(pat, p)),
                None => true,
            })
            .map(|b| b.status(now))
            .collect();
        let exhausted: Vec<&BudgetStatus> = statuses.iter().filter(|s| s.figures.utilization >= 1.0).collect();
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

/// Whether a caller who sees `visible` may see `budget`: see [`BudgetEngine::statuses_for`].
fn budget_visible(budget: &Budget, visible: &Visibility) -> bool {
    visible.is_all() || budget.config.project.as_deref().is_some_and(|p| visible.sees(p))
}

/// A budget's figures against its cap in words, in the cap's units.
fn describe(s: &BudgetStatus) -> String {
    format!("{} this {}", s.figures.summary(), s.period)
}

impl SpanObserver for BudgetEngine {
    fn observe(&self, project: &Project, spans: &RecordBatch) {
        if spans.num_rows() == 0 {
            return;
        }
        {
            let mut budgets = self.inner.budgets.lock();
            if budgets.is_empty() {
                return;
            }
            let cols = match SpanColumns::from_batch(spans) {
                Ok(c) => c.of_project(project.as_str()),
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

/// Adds the stored spans of every budget's current period, read through `history` (files and the write buffer).
async fn rebuild(budgets: &mut [Budget], history: &dyn SpanHistory, now: i64) -> Result<(), CostError> {
    let earliest = budgets.iter().map(|b| b.config.period.bounds(now).start_ns).min().unwrap_or(now);
    let started = std::time::Instant::now();
    let mut rows = 0usize;
    // With each row's project (a partition column of the table), for budgets of one project.
    let mut columns = BUDGET_COLUMNS.to_vec();
    columns.push(tailscope_core::schema::PROJECT_COLUMN);
    let mut batches = history.spans_since(earliest, &columns).await?;
    while let Some(batch) = batches.next().await {
        let batch = batch?;
        let cols = SpanColumns::from_batch(&batch).map_err(|detail| CostError::HistoryShape { detail })?;
        rows += cols.len();
        for b in budgets.iter_mut() {
            b.add(&cols, now);
        }
    }
    tracing::info!(rows, elapsed_ms = started.elapsed().as_millis() as u64, "budget spend rebuilt from stored spans");
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
struct AlertsResponse<'a> {
    /// Each with its figures as text in the units of the budget's cap.
    alerts: Vec<AlertView<'a>>,
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

/// What the caller's key may see (`crate::auth`); outside the authentication layer, everything.
fn visible_of(visible: Option<axum::Extension<Visibility>>) -> Visibility {
    visible.map(|axum::Extension(v)| v).unwrap_or_default()
}

async fn alerts_handler(
    State(engine): State<Arc<BudgetEngine>>,
    visible: Option<axum::Extension<Visibility>>,
    Query(q): Query<AlertsQuery>,
) -> Response {
    let visible = visible_of(visible);
    let firing_only = match q.state.as_deref() {
        None | Some("all") => false,
        Some("firing") => true,
        Some(other) => {
            let body = serde_json::json!({"error": format!("unknown state {other:?}: use state=firing or state=all")});
            return (axum::http::StatusCode::BAD_REQUEST, Json(body)).into_response();
        }
    };
    let alerts = engine.alerts(firing_only);
    let alerts = alerts
        .iter()
        .filter(|e| tailscope_core::alerts::event_visible(e, &visible))
        .map(|e| AlertView::from(e.as_ref()))
        .collect();
    Json(AlertsResponse { alerts, budgets: engine.statuses_for(&visible) }).into_response()
}

async fn hedging_handler(
    State(engine): State<Arc<BudgetEngine>>,
    visible: Option<axum::Extension<Visibility>>,
    Query(q): Query<HedgingQuery>,
) -> Response {
    let provider = q.provider.as_deref().map(str::trim).filter(|p| !p.is_empty());
    Json(engine.hedging_decision_for(provider, &visible_of(visible))).into_response()
}

#[cfg(test)]
mod tests {
    use tailscope_core::catalog::Catalog;
    use tailscope_core::cost::{BudgetConfig, BudgetPeriod};
    use tailscope_core::schema::Signal;

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
            project: None,
            ..Default::default()
        });
        c
    }

    /// Stored spans as the binary hands them to budgets: the query engine over the catalog.
    async fn history(catalog: Catalog) -> query::Engine {
        query::Engine::new(catalog, Default::default()).await.unwrap()
    }

    /// `narrow` (the budget columns) as the write buffer holds rows: the whole `spans` schema.
    fn buffered(narrow: RecordBatch) -> RecordBatch {
        let rows = vec![query::fixture::SpanRow::default(); narrow.num_rows()];
        let full = query::fixture::spans_batch(&rows);
        let columns = (full.schema().fields().iter().enumerate())
            .map(|(i, f)| narrow.column_by_name(f.name()).unwrap_or(full.column(i)).clone())
            .collect();
        RecordBatch::try_new(full.schema(), columns).unwrap()
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
        let engine =
            BudgetEngine::start(&config, &history(Catalog::new(dir.path())).await, &Metrics::new()).await.unwrap();
        let d = engine.hedging_decision(Some("aws.bedrock"));
        assert!(d.allow, "{d:?}");
        engine.observe(&Project::default(), &batch(&[loser(0.6)]));
        assert!(engine.hedging_decision(Some("aws.bedrock")).allow);
        let events = engine.evaluate_now();
        assert_eq!(events.len(), 1);
        engine.observe(&Project::default(), &batch(&[loser(0.6)]));
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

    /// A budget capped by share alone: the API's budget figures, its alert and the guardrail's reason all read
    /// in shares, and nothing shows a dollar cap it does not have.
    #[tokio::test]
    async fn a_share_cap_reads_as_a_share_in_the_api_and_the_guardrail() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = config(dir.path());
        config.budgets[0].cap_usd = None;
        config.budgets[0].cap_share = Some(0.03);
        config.budgets[0].warn_at = vec![1.0];
        let engine =
            BudgetEngine::start(&config, &history(Catalog::new(dir.path())).await, &Metrics::new()).await.unwrap();
        let winner = Row { winner: Some(true), cost: Some(16.14), token_cost: Some(16.14), ..loser(0.0) };
        engine.observe(&Project::default(), &batch(&[winner, loser(0.69)]));
        assert_eq!(engine.evaluate_now().len(), 1);
        let d = engine.hedging_decision(Some("aws.bedrock"));
        assert!(!d.allow, "{d:?}");
        assert_eq!(
            d.reason,
            "duplicate-inference budget \"dup-daily\" is exhausted: 4.1% of inference spend against a 3% cap \
             (137%), $0.69 spent this day"
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, routes(engine)).await.unwrap() });
        let v: serde_json::Value =
            reqwest::get(format!("http://{addr}/api/v1/alerts")).await.unwrap().json().await.unwrap();
        let budget = &v["budgets"][0];
        assert_eq!((budget["cap"].as_str(), budget["used"].as_str()), (Some("3% of inference"), Some("4.1%")), "{v}");
        assert!(budget["cap_usd"].is_null() && budget["cap_share"] == 0.03, "{v}");
        assert!((budget["utilization"].as_f64().unwrap() - 0.69 / 16.83 / 0.03).abs() < 1e-9, "{v}");
        let alert = &v["alerts"][0];
        assert_eq!((alert["cap"].as_str(), alert["used"].as_str()), (Some("3% of inference"), Some("4.1%")), "{v}");
        assert!(alert["message"].as_str().unwrap().contains("4.1% of inference spend against a 3% cap"), "{v}");
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
        let engine = BudgetEngine::start(&config, &history(Catalog::open(dir.path()).unwrap()).await, &Metrics::new())
            .await
            .unwrap();
        let spend = engine.statuses()[0].figures.spend_usd;
        assert!((spend - 0.7).abs() < 1e-9, "{spend}");
    }

    #[tokio::test]
    async fn spend_is_rebuilt_from_the_catalog_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        let catalog = Catalog::new(dir.path());
        catalog.add_batch(
            Signal::Spans,
            1,
            tailscope_core::projects::Project::default(),
            buffered(batch(&[loser(0.7), loser(0.7)])),
        );
        let engine = BudgetEngine::start(&config, &history(catalog).await, &Metrics::new()).await.unwrap();
        assert_eq!(engine.statuses()[0].figures.spend_usd, 1.4);
        assert!(!engine.hedging_decision(None).allow);
    }
}
