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
use tailscope_core::config::FailMode;
use tailscope_core::config::{Config, FleetRole};
use tailscope_core::cost::{BudgetConfig, BudgetKind, validate_budgets};
use tailscope_core::history::SpanHistory;
use tailscope_core::projects::{Project, Visibility};

use super::CostError;
use super::alerts::AlertBook;
use super::budget::{BUDGET_COLUMNS, Budget, BudgetStatus, SpanColumns};
use super::fleet::{Coordinator, Known, MemberLink, SpendReport};
use super::prices::glob_match;
use super::webhook::{DeliveryLog, Webhooks};
use crate::observe::SpanObserver;
use crate::telemetry::Metrics;

const DEBOUNCE: Duration = Duration::from_millis(200);

pub(crate) fn now_ns() -> i64 {
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

/// What decides this collector's budgets.
enum Fleet {
    /// This collector, from its own spans.
    Standalone,
    /// This collector, for the fleet ([`super::fleet`]).
    Coordinator(Arc<Coordinator>),
    /// The coordinator; this collector reports to it.
    Member(Arc<MemberLink>),
}

/// Budget guardrails for one collector. Create with [`BudgetEngine::start`] (or [`BudgetEngine::start_fleet`]),
/// register as a span observer, serve [`routes`].
pub struct BudgetEngine {
    inner: Arc<Inner>,
    wake: SyncSender<()>,
    fleet: Fleet,
    /// The fleet's exchange loop: it ends with the engine (a collector shut down in-process, as the demo does).
    exchange: Option<tokio::task::AbortHandle>,
}

impl Drop for BudgetEngine {
    fn drop(&mut self) {
        if let Some(task) = &self.exchange {
            task.abort();
        }
    }
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
        let engine = Arc::new(BudgetEngine { inner: inner.clone(), wake, fleet: Fleet::Standalone, exchange: None });
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

    /// The budget engine of `config.fleet.role`: [`Self::start`] for a standalone collector; for a fleet's
    /// coordinator, the fleet's figures summed every half exchange interval from the stores `ingest` commits to and
    /// the members' reports, alerts and webhooks fired from them; for a member, reports to the coordinator every
    /// exchange interval and guardrail answers from its verdict (no alert or webhook fires here).
    pub async fn start_fleet(
        config: &Config,
        history: &dyn SpanHistory,
        ingest: Arc<crate::ingest::Ingest>,
        metrics: &Metrics,
    ) -> Result<Arc<BudgetEngine>, CostError> {
        let role = config.fleet.role;
        if role == FleetRole::Standalone {
            return BudgetEngine::start(config, history, metrics).await;
        }
        validate_budgets(&config.budgets)?;
        config.alerts.validate()?;
        let data_dir = &config.data_dir;
        let now = now_ns();
        let budgets: Vec<Budget> = config.budgets.iter().map(|c| Budget::new(c.clone(), now)).collect();
        let runtime = tokio::runtime::Handle::current();
        let log = Arc::new(DeliveryLog::open(data_dir));
        let book = AlertBook::open(data_dir)?;
        let mut alerts = config.alerts.clone();
        if role == FleetRole::Member && !alerts.webhooks.is_empty() {
            tracing::warn!(
                "[alerts] webhooks are not called by a fleet member: the coordinator fires the fleet's alerts; \
                 configure them there"
            );
            alerts.webhooks.clear();
        }
        let webhooks = Webhooks::start(&alerts, data_dir, log, book.events(), metrics, &runtime)?;
        let inner = Arc::new(Inner { budgets: Mutex::new(budgets), book: Mutex::new(book), webhooks });
        // No evaluator thread: the coordinator evaluates after each complete sum only (an evaluation of figures
        // not yet summed would resolve alerts that are firing), and a member never does.
        let (wake, _) = sync_channel(1);
        let configs = config.budgets.clone();
        let (fleet, exchange) = match role {
            FleetRole::Coordinator => {
                let coordinator = Arc::new(Coordinator::new(&ingest, configs, &config.fleet));
                let task = runtime.spawn(coordinate(coordinator.clone(), inner.clone()));
                (Fleet::Coordinator(coordinator), task.abort_handle())
            }
            _ => {
                let link = Arc::new(
                    MemberLink::new(&ingest, configs, &config.fleet)
                        .map_err(|reason| CostError::Config { field: "fleet".into(), reason })?,
                );
                let task = runtime.spawn(report_to_coordinator(link.clone()));
                (Fleet::Member(link), task.abort_handle())
            }
        };
        let engine = Arc::new(BudgetEngine { inner, wake, fleet, exchange: Some(exchange) });
        if role == FleetRole::Coordinator {
            // A member's figures are the coordinator's: only the coordinator exports them.
            let series = Arc::downgrade(&engine);
            metrics.add_scraped(series);
        }
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
        if let Fleet::Member(link) = &self.fleet {
            let (verdict, _, _) = link.last();
            return verdict
                .map(|v| v.budgets.iter().filter(|s| status_visible(s, visible)).cloned().collect())
                .unwrap_or_default();
        }
        let now = now_ns();
        self.inner.budgets.lock().iter().filter(|b| budget_visible(b, visible)).map(|b| b.status(now)).collect()
    }

    /// The latest event of each alert, most recent first (a member: the coordinator's, as of its last verdict).
    pub fn alerts(&self, firing_only: bool) -> Vec<Arc<AlertEvent>> {
        if let Fleet::Member(link) = &self.fleet {
            let (verdict, _, _) = link.last();
            return verdict
                .map(|v| {
                    let firing = |e: &&AlertEvent| !firing_only || e.state != "resolved";
                    v.alerts.iter().filter(firing).map(|e| Arc::new(e.clone())).collect()
                })
                .unwrap_or_default();
        }
        self.inner.book.lock().alerts(firing_only)
    }

    /// Who decides this collector's budgets, and how fresh its figures are (`GET /api/v1/alerts`).
    pub fn decider(&self) -> Decider {
        match &self.fleet {
            Fleet::Standalone => Decider { role: "standalone", coordinator: None, verdict_age_ms: None, error: None },
            Fleet::Coordinator(_) => {
                Decider { role: "coordinator", coordinator: None, verdict_age_ms: None, error: None }
            }
            Fleet::Member(link) => {
                let (_, age, error) = link.last();
                Decider {
                    role: "member",
                    coordinator: Some(link.coordinator.clone()),
                    verdict_age_ms: age.map(|a| a.as_millis() as u64),
                    error,
                }
            }
        }
    }

    /// A fleet coordinator's answer to a member's report: the fleet's verdict, or why not.
    fn take_report(&self, report: SpendReport) -> Response {
        let Fleet::Coordinator(coordinator) = &self.fleet else {
            let body = serde_json::json!({"error": "this collector is not a fleet coordinator ([fleet] role)"});
            return (axum::http::StatusCode::NOT_FOUND, Json(body)).into_response();
        };
        if let Err(refusal) = coordinator.receive(report) {
            return (refusal.status, Json(serde_json::json!({"error": refusal.error}))).into_response();
        }
        match coordinator.verdict() {
            Some(verdict) => Json(verdict.as_ref()).into_response(),
            None => {
                let body = serde_json::json!({
                    "error": format!(
                        "{} (it waits for its members' reports, then reads every stored file of the budgets' \
                         periods once); the report is kept, ask again",
                        super::fleet::WARMING
                    )
                });
                (axum::http::StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
            }
        }
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
        let covers = |c: &BudgetConfig| {
            c.kind == BudgetKind::DuplicateInference
                && (visible.is_all() || c.project.as_deref().is_some_and(|p| visible.sees(p)))
                && match provider {
                    Some(p) => c.providers.is_empty() || c.providers.iter().any(|pat| glob_match(pat, p)),
                    None => true,
                }
        };
        let Fleet::Member(link) = &self.fleet else {
            let statuses: Vec<BudgetStatus> =
                self.inner.budgets.lock().iter().filter(|b| covers(&b.config)).map(|b| b.status(now)).collect();
            let decided_by = match self.fleet {
                Fleet::Coordinator(_) => "this collector, the fleet's coordinator",
                _ => "this collector",
            };
            return decide(provider, statuses, decided_by.to_string(), None);
        };
        let covered: Vec<String> =
            self.inner.budgets.lock().iter().filter(|b| covers(&b.config)).map(|b| b.config.name.clone()).collect();
        let known = match link.known() {
            // A verdict is used only when it answers for every budget that covers the request, with figures that
            // are figures: a coordinator with other budgets, or a broken one, must not read as "allow".
            Known::Fresh(verdict, age) => {
                let missing = covered.iter().find(|n| {
                    !verdict
                        .budgets
                        .iter()
                        .any(|s| &s.name == *n && s.figures.utilization.is_finite() && s.figures.utilization >= 0.0)
                });
                match missing {
                    None => Known::Fresh(verdict, age),
                    Some(n) => Known::Stale {
                        age: Some(age),
                        error: Some(format!("its verdict has no usable figures for budget {n:?}")),
                    },
                }
            }
            stale => stale,
        };
        match known {
            Known::Fresh(verdict, age) => {
                let statuses = verdict.budgets.iter().filter(|s| covered.contains(&s.name)).cloned().collect();
                decide(provider, statuses, format!("the fleet's coordinator at {}", link.coordinator), Some(age))
            }
            Known::Stale { age, error } => {
                let allow = link.on_down == FailMode::Open;
                let heard = match age {
                    Some(age) => format!("has given no usable verdict for {:.1} s", age.as_secs_f64()),
                    None => "has given no usable verdict since this collector started".to_string(),
                };
                let error = error.map(|e| format!(" (last error: {e})")).unwrap_or_default();
                let consequence = if allow {
                    "hedging is allowed and duplicate spend goes unchecked until it answers"
                } else {
                    "hedging is denied until it answers"
                };
                HedgingDecision {
                    decision: if allow { "allow" } else { "deny" }.to_string(),
                    allow,
                    provider: provider.map(str::to_string),
                    reason: format!(
                        "the fleet's budget coordinator at {} {heard}{error}; failing {} as [fleet] \
                         on_coordinator_down = \"{}\" says: {consequence}",
                        link.coordinator,
                        link.on_down.name(),
                        link.on_down.name()
                    ),
                    budgets: Vec::new(),
                    decided_by: format!("this collector, failing {} (coordinator unreachable)", link.on_down.name()),
                    verdict_age_ms: age.map(|a| a.as_millis() as u64),
                    fail_mode: Some(link.on_down.name().to_string()),
                }
            }
        }
    }
}

/// The guardrail's answer from the `duplicate_inference` budgets that cover the request (`statuses`).
fn decide(
    provider: Option<&str>,
    statuses: Vec<BudgetStatus>,
    decided_by: String,
    age: Option<std::time::Duration>,
) -> HedgingDecision {
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
        decided_by,
        verdict_age_ms: age.map(|a| a.as_millis() as u64),
        fail_mode: None,
    }
}

/// Whether a caller who sees `visible` may see the figures of `status` (see [`BudgetEngine::statuses_for`]).
fn status_visible(status: &BudgetStatus, visible: &Visibility) -> bool {
    visible.is_all() || status.project.as_deref().is_some_and(|p| visible.sees(p))
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
        // In a fleet, acknowledged spans are counted from the buffer and the stores ([`super::fleet`]).
        if spans.num_rows() == 0 || !matches!(self.fleet, Fleet::Standalone) {
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
    /// Who decided: this collector, or the fleet's coordinator (`[fleet]`), or this collector failing open or
    /// closed while the coordinator does not answer.
    pub decided_by: String,
    /// A fleet member: how old the coordinator's verdict is (ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verdict_age_ms: Option<u64>,
    /// A fleet member whose coordinator does not answer: `open` or `closed` (`[fleet] on_coordinator_down`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fail_mode: Option<String>,
}

/// Who decides a collector's budgets (`fleet` in `GET /api/v1/alerts`).
#[derive(Debug, Clone, Serialize)]
pub struct Decider {
    /// `standalone`, `coordinator` or `member`.
    pub role: &'static str,
    /// A member: the coordinator's URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub coordinator: Option<String>,
    /// A member: the age of the coordinator's last verdict (ms), none before the first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verdict_age_ms: Option<u64>,
    /// A member: why the last exchange with the coordinator failed, while it fails.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
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
    /// Who decides these figures.
    fleet: Decider,
}

/// `GET /api/v1/alerts` (each alert's latest event, plus every budget's figures; `?state=firing` filters) and
/// `GET /api/v1/guardrails/hedging?provider=X` (allow or deny, with the reason).
pub fn routes(engine: Arc<BudgetEngine>) -> Router {
    Router::new()
        .route("/api/v1/alerts", get(alerts_handler))
        .route("/api/v1/guardrails/hedging", get(hedging_handler))
        .route(
            super::fleet::REPORT_PATH,
            axum::routing::post(report_handler)
                .layer(axum::extract::DefaultBodyLimit::max(super::fleet::MAX_REPORT_BYTES)),
        )
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
    Json(AlertsResponse { alerts, budgets: engine.statuses_for(&visible), fleet: engine.decider() }).into_response()
}

async fn hedging_handler(
    State(engine): State<Arc<BudgetEngine>>,
    visible: Option<axum::Extension<Visibility>>,
    Query(q): Query<HedgingQuery>,
) -> Response {
    let provider = q.provider.as_deref().map(str::trim).filter(|p| !p.is_empty());
    Json(engine.hedging_decision_for(provider, &visible_of(visible))).into_response()
}

async fn report_handler(
    State(engine): State<Arc<BudgetEngine>>,
    report: Result<Json<SpendReport>, axum::extract::rejection::JsonRejection>,
) -> Response {
    match report {
        Ok(Json(report)) => engine.take_report(report),
        Err(e) => {
            let body = serde_json::json!({"error": format!("not a spend report: {}", e.body_text())});
            (e.status(), Json(body)).into_response()
        }
    }
}

/// The coordinator's loop: sums the fleet's spend, installs the figures, evaluates alerts (firing webhooks) and
/// publishes the verdict members fetch, every half exchange interval.
async fn coordinate(coordinator: Arc<Coordinator>, inner: Arc<Inner>) {
    // A coordinator that (re)starts knows no member yet: every live member reports within an exchange interval.
    // Summing before then would leave their unflushed spend out, and an evaluation of such figures could resolve
    // an alert that is firing (to fire it again a moment later).
    tokio::time::sleep(coordinator.round_interval() * 4).await;
    let mut failing: Option<String> = None;
    loop {
        tokio::time::sleep(coordinator.round_interval()).await;
        let now = now_ns();
        match coordinator.sum(now).await {
            Ok((budgets, collectors)) => {
                if failing.take().is_some() {
                    tracing::info!("the fleet's budget figures are summed again");
                }
                *inner.budgets.lock() = budgets;
                let evaluating = inner.clone();
                // Appends to the alert log with fsync: off the async threads.
                if tokio::task::spawn_blocking(move || evaluating.evaluate(now)).await.is_err() {
                    tracing::error!("the fleet's alert evaluation panicked; retrying at the next sum");
                    continue;
                }
                let alerts = inner.book.lock().alerts(false);
                let verdict = super::fleet::verdict_of(&inner.budgets.lock(), alerts, collectors, now);
                coordinator.set_verdict(verdict);
            }
            Err(e) => {
                if failing.as_deref() != Some(e.as_str()) {
                    tracing::error!(
                        error = %e,
                        "cannot sum the fleet's spend; alerts wait and members get the last verdict until it works"
                    );
                }
                failing = Some(e);
            }
        }
    }
}

/// A member's loop: one exchange with the coordinator every exchange interval.
async fn report_to_coordinator(link: Arc<MemberLink>) {
    loop {
        let started = std::time::Instant::now();
        link.exchange().await;
        tokio::time::sleep(link.interval.saturating_sub(started.elapsed())).await;
    }
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
