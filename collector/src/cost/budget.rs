//! Budget accounting: period-to-date spend per `[[budget]]`, utilisation against its cap, and the burn-rate
//! projection. Pure bookkeeping over spans; [`super::alerts`] turns the figures into alert events and
//! [`super::engine`] feeds spans in and runs the evaluation.
//!
//! Spend is kept in time buckets (an hour for calendar periods, a minute for rolling windows) keyed by the span's
//! `start_time`, so a status is a sum over at most a few thousand buckets, a rolling window slides by dropping
//! old buckets, and the projection can read the recent burn rate.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use datafusion::arrow::array::{
    Array, AsArray, BooleanArray, Float64Array, RecordBatch, StringArray, TimestampNanosecondArray,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, TimeUnit};
use serde::{Deserialize, Serialize};
use tailscope_core::cost::{BudgetConfig, BudgetFigures, BudgetKind, BudgetPeriod};
use tailscope_core::rules::is_duplicate_copy;
use tailscope_core::schema::{ResourceColumn, SpanColumn};

use super::prices::glob_match;

const NS_PER_MIN: i64 = 60_000_000_000;
const NS_PER_HOUR: i64 = 60 * NS_PER_MIN;

/// The width of a budget's time buckets: an hour for calendar periods, a minute for rolling windows.
fn bucket_ns(period: BudgetPeriod) -> i64 {
    match period {
        BudgetPeriod::Rolling(_) => NS_PER_MIN,
        _ => NS_PER_HOUR,
    }
}

/// The columns of the `spans` schema a budget reads, borrowed from one batch.
pub struct SpanColumns {
    start: TimestampNanosecondArray,
    service: StringArray,
    region: StringArray,
    provider: StringArray,
    session: StringArray,
    cost: Float64Array,
    token_cost: Float64Array,
    egress_cost: Float64Array,
    hedge_id: StringArray,
    hedge_winner: BooleanArray,
    /// The project of each row: the batch's `project` column when it has one (history read through SQL), else
    /// the project the whole batch belongs to (an acknowledged batch, see [`SpanColumns::of_project`]).
    project: RowProjects,
}

/// The project of a batch's rows.
enum RowProjects {
    One(String),
    PerRow(StringArray),
}

/// The `spans` columns budgets need, in the order [`SpanColumns::from_batch`] expects when reading history.
pub const BUDGET_COLUMNS: [&str; 10] = [
    SpanColumn::StartTime.name(),
    SpanColumn::Resource(ResourceColumn::ServiceName).name(),
    SpanColumn::Resource(ResourceColumn::CloudRegion).name(),
    SpanColumn::GenAiProvider.name(),
    SpanColumn::SessionId.name(),
    SpanColumn::CostUsd.name(),
    SpanColumn::TokenCostUsd.name(),
    SpanColumn::EgressCostUsd.name(),
    SpanColumn::HedgeId.name(),
    SpanColumn::HedgeWinner.name(),
];

impl SpanColumns {
    /// Reads the columns by name, casting view and dictionary string types to `Utf8`. `Err` names a column
    /// missing or of the wrong type.
    pub fn from_batch(batch: &RecordBatch) -> Result<SpanColumns, String> {
        let get = |name: SpanColumn, ty: &DataType| -> Result<std::sync::Arc<dyn Array>, String> {
            let col = name.of(batch).ok_or_else(|| format!("column {name} is missing"))?;
            if col.data_type() == ty {
                Ok(col.clone())
            } else {
                cast(col, ty).map_err(|e| format!("column {name}: {e}"))
            }
        };
        let ts = DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into()));
        let s = |name: SpanColumn| get(name, &DataType::Utf8).map(|a| a.as_string::<i32>().clone());
        let f = |name: SpanColumn| {
            get(name, &DataType::Float64).map(|a| a.as_primitive::<datafusion::arrow::datatypes::Float64Type>().clone())
        };
        Ok(SpanColumns {
            start: get(SpanColumn::StartTime, &ts)?
                .as_primitive::<datafusion::arrow::datatypes::TimestampNanosecondType>()
                .clone(),
            service: s(SpanColumn::Resource(ResourceColumn::ServiceName))?,
            region: s(SpanColumn::Resource(ResourceColumn::CloudRegion))?,
            provider: s(SpanColumn::GenAiProvider)?,
            session: s(SpanColumn::SessionId)?,
            cost: f(SpanColumn::CostUsd)?,
            token_cost: f(SpanColumn::TokenCostUsd)?,
            egress_cost: f(SpanColumn::EgressCostUsd)?,
            hedge_id: s(SpanColumn::HedgeId)?,
            hedge_winner: get(SpanColumn::HedgeWinner, &DataType::Boolean)?.as_boolean().clone(),
            project: match batch.column_by_name(tailscope_core::schema::PROJECT_COLUMN) {
                Some(c) => RowProjects::PerRow(
                    cast(c, &DataType::Utf8).map_err(|e| format!("column project: {e}"))?.as_string::<i32>().clone(),
                ),
                None => RowProjects::One(tailscope_core::projects::DEFAULT_PROJECT.to_string()),
            },
        })
    }

    /// These columns, all of whose rows belong to `project` (an acknowledged batch carries no project column).
    pub fn of_project(mut self, project: &str) -> SpanColumns {
        self.project = RowProjects::One(project.to_string());
        self
    }

    fn project(&self, i: usize) -> &str {
        match &self.project {
            RowProjects::One(p) => p,
            RowProjects::PerRow(a) => opt_str(a, i).unwrap_or(tailscope_core::projects::DEFAULT_PROJECT),
        }
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.start.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.start.is_empty()
    }
}

fn opt_str(a: &StringArray, i: usize) -> Option<&str> {
    a.is_valid(i).then(|| a.value(i))
}

fn opt_f64(a: &Float64Array, i: usize) -> Option<f64> {
    a.is_valid(i).then(|| a.value(i)).filter(|v| v.is_finite())
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Tally {
    spend: f64,
    inference: f64,
}

#[derive(Debug, Clone, Copy, Default)]
struct SessionTally {
    cost: f64,
    last_ns: i64,
}

/// The most memory one `session_cost` budget spends on following sessions: ids come from spans, so a client
/// inventing a new session id per span would otherwise grow the map for the whole period (a month).
pub const MAX_SESSION_BYTES: usize = 8 << 20;
/// What one followed session costs beyond its id's bytes: the map entry, the ordered index entry, two `Arc`
/// headers and the tally.
const SESSION_OVERHEAD_BYTES: usize = 96;

/// A cost with a total order, for the index of sessions by spend.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Spend(f64);

impl Eq for Spend {}

impl PartialOrd for Spend {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Spend {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// The sessions a `session_cost` budget follows, within [`MAX_SESSION_BYTES`]. When a new session would not fit,
/// the sessions that have spent least are forgotten first: a budget is there to catch the expensive ones, and a
/// flood of new ids can only push out sessions cheaper than each of them. Forgotten sessions are counted
/// (`sessions_forgotten` in the status), and one that comes back starts from its new spend.
#[derive(Debug, Clone)]
struct SessionTallies {
    by_id: HashMap<Arc<str>, SessionTally>,
    by_spend: BTreeSet<(Spend, Arc<str>)>,
    bytes: usize,
    max_bytes: usize,
    forgotten: u64,
}

impl SessionTallies {
    fn new(max_bytes: usize) -> SessionTallies {
        SessionTallies { by_id: HashMap::new(), by_spend: BTreeSet::new(), bytes: 0, max_bytes, forgotten: 0 }
    }

    fn entry_bytes(id: &str) -> usize {
        id.len() + SESSION_OVERHEAD_BYTES
    }

    fn add(&mut self, id: &str, cost: f64, t: i64) {
        if let Some((key, tally)) = self.by_id.get_key_value(id).map(|(k, v)| (k.clone(), *v)) {
            self.by_spend.remove(&(Spend(tally.cost), key.clone()));
            let tally = SessionTally { cost: tally.cost + cost, last_ns: tally.last_ns.max(t) };
            self.by_spend.insert((Spend(tally.cost), key.clone()));
            self.by_id.insert(key, tally);
            return;
        }
        let needed = Self::entry_bytes(id);
        if needed > self.max_bytes {
            self.forgotten += 1;
            return;
        }
        while self.bytes + needed > self.max_bytes {
            let Some((_, cheapest)) = self.by_spend.pop_first() else { break };
            self.by_id.remove(&cheapest);
            self.bytes -= Self::entry_bytes(&cheapest);
            self.forgotten += 1;
        }
        let key: Arc<str> = Arc::from(id);
        self.by_spend.insert((Spend(cost), key.clone()));
        self.by_id.insert(key, SessionTally { cost, last_ns: t });
        self.bytes += needed;
    }

    /// Keeps the sessions seen at or after `from_ns`.
    fn retain_since(&mut self, from_ns: i64) {
        let by_id = std::mem::take(&mut self.by_id);
        for (id, tally) in by_id {
            if tally.last_ns >= from_ns {
                self.by_id.insert(id, tally);
            } else {
                self.by_spend.remove(&(Spend(tally.cost), id.clone()));
                self.bytes -= Self::entry_bytes(&id);
            }
        }
    }

    fn clear(&mut self) {
        self.by_id.clear();
        self.by_spend.clear();
        self.bytes = 0;
        self.forgotten = 0;
    }
}

/// One session's figures against a `session_cost` budget.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SessionStatus {
    pub session_id: String,
    pub spend_usd: f64,
    pub utilization: f64,
}

/// Where a budget stands now (also as a fleet's coordinator sends it to its members).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BudgetStatus {
    pub name: String,
    pub kind: BudgetKind,
    /// The project whose spend the budget counts; none: every project's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// `day`, `month` or the rolling window (`24h`).
    pub period: String,
    /// `2026-11`, `2026-11-22` or `rolling`.
    pub period_key: String,
    pub period_start: DateTime<Utc>,
    pub period_end: Option<DateTime<Utc>>,
    /// Spend (for `session_cost`: the most expensive session's), duplicate spend's share of inference spend
    /// (`duplicate_inference`), the caps, use against them in each cap's own unit
    /// ([`BudgetFigures::utilization_of`]; 1.0 = cap reached), and the projections at the period's end from the
    /// recent burn rate (calendar periods, once enough of the period has passed to say).
    #[serde(flatten)]
    pub figures: BudgetFigures,
    /// `duplicate_inference`: all inference (token) spend in scope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inference_usd: Option<f64>,
    /// The projection against the cap, like `utilization`.
    pub projected_utilization: Option<f64>,
    /// The figures as text in the cap's unit ([`BudgetFigures`]): `$410.00`, `4.1%` (of inference spend) or both.
    pub used: String,
    /// `$500.00`, `3% of inference`, or both.
    pub cap: String,
    /// The projection like `used`, when there is one.
    pub projected: Option<String>,
    /// `session_cost`: sessions at or above the lowest threshold, most expensive first (at most 100).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sessions: Vec<SessionStatus>,
    /// `session_cost`: sessions this period that were forgotten to keep the budget's memory bounded (the least
    /// expensive ones, see [`MAX_SESSION_BYTES`]); their spend is no longer followed.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub sessions_forgotten: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A projection needs this share of the period behind it, so one early burst does not cry wolf.
pub const FORECAST_MIN_ELAPSED: f64 = 0.05;
/// The burn rate is measured over the trailing fifth of the period (or all of it so far, if less).
pub const FORECAST_LOOKBACK: f64 = 0.2;
const MAX_SESSIONS_REPORTED: usize = 100;
/// How far ahead of the collector's clock a span may start and still be counted at its own time.
const MAX_CLOCK_SKEW_NS: i64 = 3_600_000_000_000;

/// One budget's running figures.
#[derive(Debug, Clone)]
pub struct Budget {
    /// Its configuration.
    pub config: BudgetConfig,
    levels: Vec<f64>,
    buckets: BTreeMap<i64, Tally>,
    sessions: SessionTallies,
    period_key: String,
}

impl Budget {
    /// A budget with nothing counted yet. `config` must be valid.
    pub fn new(config: BudgetConfig, now_ns: i64) -> Budget {
        let mut levels = config.warn_at.clone();
        levels.sort_by(f64::total_cmp);
        levels.dedup();
        let period_key = config.period.bounds(now_ns).key;
        Budget {
            config,
            levels,
            buckets: BTreeMap::new(),
            sessions: SessionTallies::new(MAX_SESSION_BYTES),
            period_key,
        }
    }

    /// The thresholds, ascending.
    pub fn levels(&self) -> &[f64] {
        &self.levels
    }

    fn matches(&self, cols: &SpanColumns, i: usize) -> bool {
        let test = |patterns: &[String], value: Option<&str>| {
            patterns.is_empty() || value.is_some_and(|v| patterns.iter().any(|p| glob_match(p, v)))
        };
        self.config.project.as_deref().is_none_or(|p| p == cols.project(i))
            && test(&self.config.providers, opt_str(&cols.provider, i))
            && test(&self.config.regions, opt_str(&cols.region, i))
            && test(&self.config.services, opt_str(&cols.service, i))
    }

    /// Counts the rows of one batch that fall in the current period and match the filters.
    pub fn add(&mut self, cols: &SpanColumns, now_ns: i64) {
        let start_ns = self.config.period.bounds(now_ns).start_ns;
        let width = bucket_ns(self.config.period);
        // Spans stamped far ahead (a wrong clock, or a hostile client) count as now: each would otherwise open a
        // time bucket of its own that no period roll ever drops.
        let latest = now_ns.saturating_add(MAX_CLOCK_SKEW_NS);
        for i in 0..cols.len() {
            let t = cols.start.value(i);
            if t < start_ns {
                continue; // an earlier period, or outside the window
            }
            let t = if t > latest { now_ns } else { t };
            let cost = opt_f64(&cols.cost, i);
            let (spend, inference) = match self.config.kind {
                BudgetKind::Egress => (opt_f64(&cols.egress_cost, i).unwrap_or(0.0), 0.0),
                BudgetKind::Total => (cost.unwrap_or(0.0), 0.0),
                BudgetKind::DuplicateInference => {
                    let winner = cols.hedge_winner.is_valid(i).then(|| cols.hedge_winner.value(i));
                    let duplicate =
                        is_duplicate_copy(cols.hedge_id.is_valid(i).then(|| cols.hedge_id.value(i)), winner);
                    (if duplicate { cost.unwrap_or(0.0) } else { 0.0 }, opt_f64(&cols.token_cost, i).unwrap_or(0.0))
                }
                BudgetKind::SessionCost => {
                    let Some(session) = opt_str(&cols.session, i) else { continue };
                    let Some(cost) = cost.filter(|c| *c != 0.0) else { continue };
                    if !self.matches(cols, i) {
                        continue;
                    }
                    self.sessions.add(session, cost, t);
                    (cost, 0.0)
                }
            };
            if spend == 0.0 && inference == 0.0 {
                continue;
            }
            if self.config.kind != BudgetKind::SessionCost && !self.matches(cols, i) {
                continue;
            }
            let b = self.buckets.entry(t.div_euclid(width) * width).or_default();
            b.spend += spend;
            b.inference += inference;
        }
    }

    /// The spend counted so far, per time bucket: `(bucket start ns, spend, inference spend)`.
    pub fn buckets(&self) -> Vec<(i64, f64, f64)> {
        self.buckets.iter().map(|(t, tally)| (*t, tally.spend, tally.inference)).collect()
    }

    /// The first bucket of the current period, the latest time a span may be counted at (`now_ns` plus the clock
    /// skew allowed), and the buckets' width, in ns.
    pub fn bucket_range(&self, now_ns: i64) -> (i64, i64, i64) {
        let width = bucket_ns(self.config.period);
        let from = self.config.period.bounds(now_ns).start_ns.div_euclid(width) * width;
        (from, now_ns.saturating_add(MAX_CLOCK_SKEW_NS), width)
    }

    /// Adds spend another counter tallied for this budget (a fleet's coordinator sums files and members this
    /// way). `t` is any time in the bucket; spend before the current period is left out, as [`Self::add`] does.
    pub fn absorb(&mut self, t: i64, spend: f64, inference: f64, now_ns: i64) {
        let (from, until, width) = self.bucket_range(now_ns);
        // Past the skew no counter puts a span (see `add`): such a bucket would stay in every period.
        if t < from || t > until || (spend == 0.0 && inference == 0.0) {
            return;
        }
        let b = self.buckets.entry(t.div_euclid(width) * width).or_default();
        b.spend += spend;
        b.inference += inference;
    }

    /// Starts a new calendar period when the old one ended and drops data that left a rolling window.
    /// Returns the key of the period that ended, if one did.
    pub fn roll(&mut self, now_ns: i64) -> Option<String> {
        let bounds = self.config.period.bounds(now_ns);
        let width = bucket_ns(self.config.period);
        let keep_from = bounds.start_ns.div_euclid(width) * width;
        self.buckets = self.buckets.split_off(&keep_from);
        self.sessions.retain_since(bounds.start_ns);
        if bounds.key != self.period_key {
            self.sessions.clear();
            Some(std::mem::replace(&mut self.period_key, bounds.key))
        } else {
            None
        }
    }

    /// The budget's figures at `now_ns`.
    pub fn status(&self, now_ns: i64) -> BudgetStatus {
        let c = &self.config;
        let bounds = c.period.bounds(now_ns);
        let width = bucket_ns(c.period);
        let from = bounds.start_ns.div_euclid(width) * width;
        let total = self.buckets.range(from..).fold(Tally::default(), |mut acc, (_, t)| {
            acc.spend += t.spend;
            acc.inference += t.inference;
            acc
        });
        let mut status = BudgetStatus {
            name: c.name.clone(),
            kind: c.kind,
            project: c.project.clone(),
            period: c.period.to_string(),
            period_key: bounds.key.clone(),
            period_start: DateTime::<Utc>::from_timestamp_nanos(bounds.start_ns),
            period_end: bounds.end_ns.map(DateTime::<Utc>::from_timestamp_nanos),
            figures: BudgetFigures {
                spend_usd: total.spend,
                cap_usd: c.cap_usd,
                cap_share: c.cap_share,
                ..BudgetFigures::default()
            },
            inference_usd: None,
            projected_utilization: None,
            used: String::new(),
            cap: String::new(),
            projected: None,
            sessions: Vec::new(),
            sessions_forgotten: 0,
        };
        let share_of = |t: &Tally| if t.inference > 0.0 { t.spend / t.inference } else { 0.0 };
        match c.kind {
            BudgetKind::DuplicateInference => {
                status.inference_usd = Some(total.inference);
                status.figures.share = Some(share_of(&total));
            }
            BudgetKind::SessionCost => {
                let lowest = self.levels.first().copied().unwrap_or(1.0);
                let mut sessions: Vec<SessionStatus> = self
                    .sessions
                    .by_id
                    .iter()
                    .filter(|(_, s)| s.last_ns >= bounds.start_ns)
                    .map(|(id, s)| SessionStatus {
                        session_id: id.to_string(),
                        spend_usd: s.cost,
                        utilization: BudgetFigures::utilization_of(s.cost, None, c.cap_usd, None),
                    })
                    .collect();
                sessions
                    .sort_by(|a, b| b.spend_usd.total_cmp(&a.spend_usd).then_with(|| a.session_id.cmp(&b.session_id)));
                status.figures.spend_usd = sessions.first().map(|s| s.spend_usd).unwrap_or(0.0);
                sessions.retain(|s| s.utilization >= lowest);
                sessions.truncate(MAX_SESSIONS_REPORTED);
                status.sessions = sessions;
                status.sessions_forgotten = self.sessions.forgotten;
            }
            _ => {}
        }
        status.figures.utilization =
            BudgetFigures::utilization_of(status.figures.spend_usd, status.figures.share, c.cap_usd, c.cap_share);
        if c.kind != BudgetKind::SessionCost
            && let Some(end) = bounds.end_ns
            && let Some(projected) = self.project(bounds.start_ns, end, now_ns, total)
        {
            status.figures.projected_usd = Some(projected.spend);
            if c.kind == BudgetKind::DuplicateInference {
                status.figures.projected_share = Some(share_of(&projected));
            }
        }
        let figures = status.figures;
        status.projected_utilization = figures.projected_utilization();
        status.used = figures.used();
        status.cap = figures.cap();
        status.projected = figures.projected();
        status
    }

    /// Period-end spend (and inference spend) at the recent burn rate: so far + rate over the trailing lookback x
    /// time left.
    fn project(&self, start: i64, end: i64, now: i64, total: Tally) -> Option<Tally> {
        let length = (end - start) as f64;
        let elapsed = now.saturating_sub(start);
        if (elapsed as f64) < FORECAST_MIN_ELAPSED * length || now >= end {
            return None;
        }
        let width = bucket_ns(self.config.period);
        let lookback = (elapsed as f64).min(FORECAST_LOOKBACK * length) as i64;
        let from = (now - lookback).div_euclid(width) * width;
        let from = from.max(start);
        let recent = self.buckets.range(from..).fold(Tally::default(), |mut acc, (_, t)| {
            acc.spend += t.spend;
            acc.inference += t.inference;
            acc
        });
        let left = (end - now) as f64 / (now - from).max(1) as f64;
        Some(Tally { spend: total.spend + recent.spend * left, inference: total.inference + recent.inference * left })
    }
}

/// The last day of the period, as in "by 30 Nov".
pub fn last_day(end: DateTime<Utc>) -> String {
    (end - chrono::Duration::nanoseconds(1)).format("%-d %b").to_string()
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use datafusion::arrow::array::{ArrayRef, BooleanArray, Float64Array, StringArray, TimestampNanosecondArray};

    use tailscope_core::display::percent;

    use super::*;

    /// A span for budget tests.
    #[derive(Clone, Default)]
    pub struct Row {
        pub t: i64,
        pub service: &'static str,
        pub region: Option<&'static str>,
        pub provider: Option<&'static str>,
        pub session: Option<&'static str>,
        pub cost: Option<f64>,
        pub token_cost: Option<f64>,
        pub egress_cost: Option<f64>,
        pub hedge_id: Option<&'static str>,
        pub winner: Option<bool>,
    }

    /// A batch with exactly the budget columns.
    pub fn batch(rows: &[Row]) -> RecordBatch {
        let spans = tailscope_core::schema::spans_schema();
        let schema = Arc::new(spans.project(&BUDGET_COLUMNS.map(|c| spans.index_of(c).unwrap())).unwrap());
        let cols: Vec<ArrayRef> = vec![
            Arc::new(TimestampNanosecondArray::from(rows.iter().map(|r| r.t).collect::<Vec<_>>()).with_timezone("UTC")),
            Arc::new(StringArray::from(rows.iter().map(|r| Some(r.service)).collect::<Vec<_>>())),
            Arc::new(StringArray::from(rows.iter().map(|r| r.region).collect::<Vec<_>>())),
            Arc::new(StringArray::from(rows.iter().map(|r| r.provider).collect::<Vec<_>>())),
            Arc::new(StringArray::from(rows.iter().map(|r| r.session).collect::<Vec<_>>())),
            Arc::new(Float64Array::from(rows.iter().map(|r| r.cost).collect::<Vec<_>>())),
            Arc::new(Float64Array::from(rows.iter().map(|r| r.token_cost).collect::<Vec<_>>())),
            Arc::new(Float64Array::from(rows.iter().map(|r| r.egress_cost).collect::<Vec<_>>())),
            Arc::new(StringArray::from(rows.iter().map(|r| r.hedge_id).collect::<Vec<_>>())),
            Arc::new(BooleanArray::from(rows.iter().map(|r| r.winner).collect::<Vec<_>>())),
        ];
        RecordBatch::try_new(schema, cols).unwrap()
    }

    pub fn ns(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s).unwrap().timestamp_nanos_opt().unwrap()
    }

    pub fn config(name: &str, kind: BudgetKind, period: BudgetPeriod, cap: f64) -> BudgetConfig {
        BudgetConfig {
            name: name.into(),
            kind,
            period,
            cap_usd: Some(cap),
            warn_at: vec![0.5, 0.8, 1.0],
            forecast: true,
            project: None,
            ..Default::default()
        }
    }

    fn add(b: &mut Budget, rows: &[Row], now: i64) {
        b.add(&SpanColumns::from_batch(&batch(rows)).unwrap(), now);
    }

    #[test]
    fn a_project_budget_counts_its_project_only_acknowledged_or_read_back() {
        let now = ns("2026-11-15T12:00:00Z");
        let mut c = config("a-total", BudgetKind::Total, BudgetPeriod::Month, 10.0);
        c.project = Some("a".into());
        let mut b = Budget::new(c, now);
        let rows = [Row { t: now, cost: Some(2.0), ..Default::default() }];
        // Acknowledged batches: the project comes with the batch.
        for project in ["b", "default", "a"] {
            b.add(&SpanColumns::from_batch(&batch(&rows)).unwrap().of_project(project), now);
        }
        // History read through SQL: a `project` column per row.
        let narrow = batch(&[rows[0].clone(), rows[0].clone()]);
        let mut fields: Vec<_> = narrow.schema().fields().iter().cloned().collect();
        fields.push(Arc::new(datafusion::arrow::datatypes::Field::new("project", DataType::Utf8, false)));
        let mut columns = narrow.columns().to_vec();
        columns.push(Arc::new(StringArray::from(vec!["a", "b"])));
        let wide = RecordBatch::try_new(Arc::new(datafusion::arrow::datatypes::Schema::new(fields)), columns).unwrap();
        b.add(&SpanColumns::from_batch(&wide).unwrap(), now);
        assert_eq!(b.status(now).figures.spend_usd, 4.0, "two spans of project a, none of the others");
        assert_eq!(b.status(now).project.as_deref(), Some("a"));
    }

    #[test]
    fn egress_budget_counts_the_current_month_and_matching_spans_only() {
        let now = ns("2026-11-15T12:00:00Z");
        let mut c = config("egress-monthly", BudgetKind::Egress, BudgetPeriod::Month, 500.0);
        c.providers = vec!["aws.*".into()];
        let mut b = Budget::new(c, now);
        let row = |t: &str, p: &'static str, e: f64| Row {
            t: ns(t),
            provider: Some(p),
            egress_cost: Some(e),
            cost: Some(e + 1.0),
            ..Default::default()
        };
        add(
            &mut b,
            &[
                row("2026-11-01T00:00:00Z", "aws.bedrock", 100.0),
                row("2026-11-15T11:00:00Z", "aws.bedrock", 150.0),
                row("2026-10-31T23:59:59Z", "aws.bedrock", 1000.0), // last month
                row("2026-11-10T00:00:00Z", "gcp.vertex_ai", 1000.0), // filtered out
            ],
            now,
        );
        let s = b.status(now);
        assert_eq!(s.figures.spend_usd, 250.0);
        assert_eq!(s.figures.utilization, 0.5);
        assert_eq!(s.period_key, "2026-11");
        // A new month starts from zero.
        let later = ns("2026-12-01T00:00:01Z");
        assert_eq!(b.roll(later).as_deref(), Some("2026-11"));
        assert_eq!(b.status(later).figures.spend_usd, 0.0);
    }

    #[test]
    fn projection_uses_the_recent_burn_rate() {
        // 30-day month; $10/day for 15 days = $150 so far; the last 6 days burned $10/day as well.
        let now = ns("2026-11-16T00:00:00Z");
        let mut b = Budget::new(config("egress-monthly", BudgetKind::Egress, BudgetPeriod::Month, 200.0), now);
        let rows: Vec<Row> = (1..=15)
            .map(|d| Row { t: ns(&format!("2026-11-{d:02}T12:00:00Z")), egress_cost: Some(10.0), ..Default::default() })
            .collect();
        add(&mut b, &rows, now);
        let s = b.status(now);
        assert_eq!(s.figures.spend_usd, 150.0);
        let p = s.figures.projected_usd.unwrap();
        assert!((p - 300.0).abs() < 1e-6, "{p}");
        assert!((s.projected_utilization.unwrap() - 1.5).abs() < 1e-9);
        assert_eq!(last_day(s.period_end.unwrap()), "30 Nov");
        // Too early in the period to project.
        let early = ns("2026-11-01T06:00:00Z");
        assert_eq!(Budget::new(b.config.clone(), early).status(early).figures.projected_usd, None);
    }

    #[test]
    fn duplicate_inference_counts_losers_and_the_share() {
        let now = ns("2026-11-15T12:00:00Z");
        let mut c = config("dup", BudgetKind::DuplicateInference, BudgetPeriod::Day, 10.0);
        c.cap_share = Some(0.1);
        let mut b = Budget::new(c, now);
        let t = ns("2026-11-15T11:00:00Z");
        let r = |hedge: Option<&'static str>, winner: Option<bool>, cost: f64| Row {
            t,
            hedge_id: hedge,
            winner,
            cost: Some(cost),
            token_cost: Some(cost),
            ..Default::default()
        };
        add(
            &mut b,
            &[
                r(Some("h1"), Some(true), 1.0),
                r(Some("h1"), Some(false), 0.5),
                r(Some("h2"), None, 0.25), // no winner flag: a loser
                r(Some("h2"), Some(true), 1.0),
                r(None, None, 2.25),
            ],
            now,
        );
        let s = b.status(now);
        assert_eq!(s.figures.spend_usd, 0.75);
        assert_eq!(s.inference_usd, Some(5.0));
        assert_eq!(s.figures.share, Some(0.15));
        // Share 15% against a 10% cap dominates 0.75/10.
        assert!((s.figures.utilization - 1.5).abs() < 1e-9);
        assert_eq!((s.used.as_str(), s.cap.as_str()), ("$0.75 · 15%", "$10.00 · 10% of inference"));
    }

    /// A `duplicate_inference` budget capped by share alone: its use, cap and projection are shares, never a
    /// dollar cap of zero.
    #[test]
    fn a_share_cap_reads_and_projects_as_a_share() {
        let now = ns("2026-11-15T12:00:00Z");
        let mut c = config("hedge-duplicates", BudgetKind::DuplicateInference, BudgetPeriod::Day, 1.0);
        c.cap_usd = None;
        c.cap_share = Some(0.03);
        let mut b = Budget::new(c, now);
        let r = |t: &str, hedge: Option<&'static str>, winner: Option<bool>, cost: f64| Row {
            t: ns(t),
            hedge_id: hedge,
            winner,
            cost: Some(cost),
            token_cost: Some(cost),
            ..Default::default()
        };
        // The morning: 2% duplicates. The last hours: 6%, so the day is projected above the cap.
        add(
            &mut b,
            &[
                r("2026-11-15T01:00:00Z", None, None, 9.8),
                r("2026-11-15T01:00:00Z", Some("h1"), Some(false), 0.2),
                r("2026-11-15T10:00:00Z", None, None, 9.4),
                r("2026-11-15T10:00:00Z", Some("h2"), Some(false), 0.6),
            ],
            now,
        );
        let s = b.status(now);
        assert_eq!(s.figures.cap_usd, None);
        assert!((s.figures.share.unwrap() - 0.04).abs() < 1e-12, "{s:?}");
        assert!((s.figures.utilization - 0.04 / 0.03).abs() < 1e-9, "{s:?}");
        assert_eq!((s.used.as_str(), s.cap.as_str()), ("4%", "3% of inference"));
        let projected_share = s.figures.projected_share.unwrap();
        assert!(projected_share > 0.04 && projected_share < 0.06, "{s:?}");
        assert!((s.projected_utilization.unwrap() - projected_share / 0.03).abs() < 1e-9, "{s:?}");
        assert_eq!(s.projected.as_deref(), Some(percent(projected_share).as_str()));
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(
            (v["cap"].as_str(), v["used"].as_str(), v["cap_usd"].is_null()),
            (Some("3% of inference"), Some("4%"), true)
        );
    }

    #[test]
    fn rolling_window_forgets_old_spend() {
        let now = ns("2026-11-15T12:00:00Z");
        let mut b =
            Budget::new(config("r", BudgetKind::Total, BudgetPeriod::Rolling(Duration::from_secs(3600)), 10.0), now);
        add(
            &mut b,
            &[
                Row { t: ns("2026-11-15T11:30:00Z"), cost: Some(4.0), ..Default::default() },
                Row { t: ns("2026-11-15T10:30:00Z"), cost: Some(100.0), ..Default::default() },
            ],
            now,
        );
        assert_eq!(b.status(now).figures.spend_usd, 4.0);
        let later = ns("2026-11-15T12:31:00Z");
        assert_eq!(b.roll(later), None);
        assert_eq!(b.status(later).figures.spend_usd, 0.0);
        assert_eq!(b.status(later).figures.projected_usd, None);
    }

    #[test]
    fn session_cost_caps_each_session() {
        let now = ns("2026-11-15T12:00:00Z");
        let mut b = Budget::new(config("per-session", BudgetKind::SessionCost, BudgetPeriod::Day, 1.0), now);
        let r =
            |s: &'static str, cost: f64| Row { t: now - 1, session: Some(s), cost: Some(cost), ..Default::default() };
        add(&mut b, &[r("a", 0.3), r("a", 0.3), r("b", 1.2), r("c", 0.1)], now);
        let s = b.status(now);
        assert_eq!(s.figures.spend_usd, 1.2);
        assert!((s.figures.utilization - 1.2).abs() < 1e-9);
        let ids: Vec<_> = s.sessions.iter().map(|s| s.session_id.as_str()).collect();
        assert_eq!(ids, ["b", "a"], "c is below the lowest threshold (0.5)");
    }

    /// A client inventing a session id per span: the budget follows at most MAX bytes of sessions, keeps the
    /// expensive ones and says how many it forgot.
    #[test]
    fn a_flood_of_session_ids_is_bounded_in_bytes_and_keeps_the_expensive_sessions() {
        let mut tallies = SessionTallies::new(64 * 1024);
        tallies.add("big-spender", 50.0, 1);
        for i in 0..200_000u64 {
            tallies.add(&format!("flood-{i:032}"), 0.001, 2);
            assert!(tallies.bytes <= 64 * 1024);
        }
        tallies.add("big-spender", 1.0, 3);
        assert_eq!(tallies.by_id.len(), tallies.by_spend.len());
        let kept = tallies.by_id.len() as u64;
        assert!(kept > 400, "{kept} sessions in 64 KiB");
        assert_eq!(tallies.forgotten, 200_001 - kept);
        let big = tallies.by_id.get("big-spender").copied().unwrap_or_default();
        assert_eq!((big.cost, big.last_ns), (51.0, 3));
        // An id larger than the whole bound is not followed at all, and nothing is pushed out for it.
        tallies.add(&"x".repeat(70 * 1024), 100.0, 4);
        assert_eq!(tallies.by_id.len() as u64, kept);
        // Bytes are given back when sessions leave the window.
        tallies.retain_since(3);
        assert_eq!(tallies.by_id.len(), 1);
        assert_eq!(tallies.bytes, SessionTallies::entry_bytes("big-spender"));
    }

    /// Spans stamped in the far future count now instead of each opening a time bucket that is never dropped.
    #[test]
    fn far_future_spans_count_now_and_open_no_buckets() {
        let now = ns("2026-11-15T12:00:00Z");
        let mut b = Budget::new(config("total", BudgetKind::Total, BudgetPeriod::Day, 10.0), now);
        let rows: Vec<Row> = (1..=5_000i64)
            .map(|i| Row { t: now + i * 86_400_000_000_000, cost: Some(0.001), ..Default::default() })
            .collect();
        add(&mut b, &rows, now);
        assert!(b.buckets.len() <= 2, "{} buckets", b.buckets.len());
        assert!((b.status(now).figures.spend_usd - 5.0).abs() < 1e-6);
    }
}
