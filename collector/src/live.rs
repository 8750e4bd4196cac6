//! Live tail-latency windows: exact-to-3-significant-digits latency percentiles per route over the last minute,
//! five minutes and hour, updated as spans are acknowledged and served on `GET /api/v1/live`.
//!
//! A *route* is (`gen_ai_provider`, `cloud_region`, `request_model`, `gen_ai_operation`); a missing value is
//! `"none"`, except a missing provider: spans without one (tools, retrievals, the agent's own steps) are
//! `"(no provider)"`, a label no provider name can be mistaken for, and their rows come after the providers'. Each route keeps, per window, a short ring of sub-window ("slice") HDR histograms that are merged on
//! read, the way Prometheus summaries and HdrHistogram's own `Recorder`/interval pattern age out old samples:
//!
//! | window | slice | slices kept |
//! |--------|-------|-------------|
//! | `1m`   | 10 s  | 6           |
//! | `5m`   | 30 s  | 10          |
//! | `1h`   | 5 min | 12          |
//!
//! A span is recorded once, in the newest 10 s slice; when that slice closes it is added whole to the 30 s and
//! 5 min slices that contain it, and a report of `5m` or `1h` counts the still-open 10 s slice in as well, so every
//! window holds exactly the spans of its slices at the cost of one histogram update per span.
//!
//! A window therefore covers the current (partial) slice plus the previous complete ones: between `window - slice`
//! and `window` of history; rates divide by the time actually covered (at least a second). The per-slice p99 of the window's slices is
//! the sparkline series. Durations are recorded in microseconds with 3 significant digits (relative error
//! < 0.1%), so a 45.2 ms call reads back as 45.2 ms, not 45 ms.
//!
//! Time is the acknowledgement time (wall clock when [`SpanObserver::observe`] runs), not the span's start time:
//! the view answers "what is slow right now", and a late or replayed batch must not rewrite past slices.
//!
//! Memory: an HDR histogram's size grows with the largest value recorded into it (about 60 KiB once values reach
//! tens of seconds), so an active route holds at most ~31 of them (< 2 MiB). Routes idle for longer than the
//! longest window are dropped. At most `[live] max_routes` routes are tracked; spans of further routes are counted
//! under provider `"(other)"` rather than growing memory without bound, and key values are cut to
//! `[live] max_key_bytes`, so that names of megabytes cost no more than short ones. What the routes hold is reserved
//! in the process memory budget (`memory.limit_mb`, [`LiveWindows::with_memory`]) in steps of
//! [`RESERVATION_STEP`]: a new route is admitted only when the budget has room for it (otherwise its spans are
//! counted under `"(other)"`), and growth of the routes' histograms is counted as it happens.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::Int64Type;
use datafusion::arrow::record_batch::RecordBatch;
use hdrhistogram::{Counter, Histogram};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tailscope_core::config::LiveConfig;
use tailscope_core::memory::{MemoryBudget, Reservation};
use tailscope_core::projects::{Project, Visibility};
use tailscope_core::schema::{ResourceColumn, SpanColumn};

use crate::observe::SpanObserver;

pub mod merge;

pub use merge::{HistogramRow, LiveHistograms, LiveMerge, MergeError};

/// The value used for a missing region, model or operation.
pub const NONE: &str = "none";
/// The provider of spans without `gen_ai_provider` (not a provider: the row of everything else).
pub const NO_PROVIDER: &str = "(no provider)";
/// The provider of the overflow route.
pub const OVERFLOW: &str = "(other)";
const SIGFIG: u8 = 3;
/// The routes' reservation in the memory budget grows and shrinks in steps of this many bytes, so that the budget
/// is not touched on every batch.
pub const RESERVATION_STEP: usize = 1 << 20;
const NS_PER_S: i64 = 1_000_000_000;

/// One of the three live windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Window {
    /// The last minute (10 s slices).
    #[serde(rename = "1m")]
    OneMinute,
    /// The last five minutes (30 s slices).
    #[serde(rename = "5m")]
    FiveMinutes,
    /// The last hour (5 min slices).
    #[serde(rename = "1h")]
    OneHour,
}

impl Window {
    /// Every window, shortest first.
    pub const ALL: [Window; 3] = [Window::OneMinute, Window::FiveMinutes, Window::OneHour];

    /// `1m`, `5m` or `1h`.
    pub fn as_str(self) -> &'static str {
        match self {
            Window::OneMinute => "1m",
            Window::FiveMinutes => "5m",
            Window::OneHour => "1h",
        }
    }

    /// Parses `1m`, `5m` or `1h`.
    pub fn parse(s: &str) -> Option<Window> {
        Window::ALL.into_iter().find(|w| w.as_str() == s)
    }

    fn tier(self) -> usize {
        self as usize
    }

    /// Length of one slice.
    pub fn slice_ns(self) -> i64 {
        match self {
            Window::OneMinute => 10 * NS_PER_S,
            Window::FiveMinutes => 30 * NS_PER_S,
            Window::OneHour => 300 * NS_PER_S,
        }
    }

    /// Number of slices (the current one included) that make up the window.
    pub fn slices(self) -> i64 {
        match self {
            Window::OneMinute => 6,
            Window::FiveMinutes => 10,
            Window::OneHour => 12,
        }
    }

    /// Nominal length of the window.
    pub fn length_ns(self) -> i64 {
        self.slice_ns() * self.slices()
    }
}

impl std::fmt::Display for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The identity of a route: what the live view groups spans by.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RouteKey {
    /// The project the spans belong to (`crate::auth`): routes are never merged across projects, and a caller
    /// sees only its projects' routes.
    pub project: String,
    /// `gen_ai_provider`, or `"(no provider)"`.
    pub provider: String,
    /// `cloud_region` (where the caller runs), or `"none"`.
    pub region: String,
    /// `request_model`, or `"none"`.
    pub model: String,
    /// `gen_ai_operation`, or `"none"`.
    pub operation: String,
}

/// Which key columns a report groups by; the others are merged (their histograms added) and reported as `"*"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grouping {
    /// Keep providers apart.
    pub provider: bool,
    /// Keep regions apart.
    pub region: bool,
    /// Keep models apart.
    pub model: bool,
    /// Keep operations apart.
    pub operation: bool,
}

impl Default for Grouping {
    fn default() -> Self {
        Grouping { provider: true, region: true, model: true, operation: true }
    }
}

impl Grouping {
    /// Parses a comma-separated list of `provider`, `region`, `model`, `operation` (empty = everything merged).
    pub fn parse(s: &str) -> Result<Grouping, String> {
        let mut g = Grouping { provider: false, region: false, model: false, operation: false };
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "provider" => g.provider = true,
                "region" => g.region = true,
                "model" => g.model = true,
                "operation" => g.operation = true,
                other => {
                    return Err(format!(
                        "unknown group column {other:?}: use a comma-separated list of provider, region, model, operation"
                    ));
                }
            }
        }
        Ok(g)
    }

    fn project(&self, k: &RouteKey) -> RouteKey {
        let pick = |keep: bool, v: &String| if keep { v.clone() } else { "*".to_string() };
        RouteKey {
            project: k.project.clone(),
            provider: pick(self.provider, &k.provider),
            region: pick(self.region, &k.region),
            model: pick(self.model, &k.model),
            operation: pick(self.operation, &k.operation),
        }
    }
}

/// Exact-match filters on the key columns (`None` = any).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct RouteFilter {
    /// Only the routes of these projects: set from the caller's key, never from the query string.
    #[serde(skip)]
    pub visible: Visibility,
    /// Only this project.
    pub project: Option<String>,
    /// Only this provider.
    pub provider: Option<String>,
    /// Only this region.
    pub region: Option<String>,
    /// Only this model.
    pub model: Option<String>,
    /// Only this operation.
    pub operation: Option<String>,
}

impl RouteFilter {
    fn matches(&self, k: &RouteKey) -> bool {
        let ok = |f: &Option<String>, v: &String| f.as_ref().is_none_or(|f| f == v);
        self.visible.sees(&k.project)
            && ok(&self.project, &k.project)
            && ok(&self.provider, &k.provider)
            && ok(&self.region, &k.region)
            && ok(&self.model, &k.model)
            && ok(&self.operation, &k.operation)
    }
}

/// One histogram bucket of a report: spans with a duration in `(previous le_ms, le_ms]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    /// Upper bound of the bucket, in ms.
    pub le_ms: f64,
    /// Spans in the bucket.
    pub count: u64,
}

/// Latency figures of one (grouped) route over one window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveRow {
    /// Provider, region, model and operation (`"*"` where merged by the grouping).
    #[serde(flatten)]
    pub key: RouteKey,
    /// Spans in the window.
    pub count: u64,
    /// Spans per second over the time the window covers.
    pub rate: f64,
    /// Spans with `status_code = 'error'`.
    pub errors: u64,
    /// `errors / count` (0 when empty).
    pub error_rate: f64,
    /// Latency percentiles and extremes, in ms.
    pub p50_ms: f64,
    /// 95th percentile, ms.
    pub p95_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// 99.9th percentile, ms.
    pub p999_ms: f64,
    /// Largest duration, ms.
    pub max_ms: f64,
    /// Mean duration, ms.
    pub mean_ms: f64,
    /// p99 of each slice of the window, oldest first, in ms (`null` for a slice without spans).
    pub p99_series_ms: Vec<Option<f64>>,
    /// Latency distribution in power-of-two ms buckets, starting at 1 ms (empty when buckets were not asked for).
    pub buckets: Vec<Bucket>,
}

/// The answer of `GET /api/v1/live`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveReport {
    /// The window asked for.
    pub window: Window,
    /// Seconds of history the window actually covers (less than nominal right after start).
    pub covered_s: f64,
    /// Seconds between two points of `p99_series_ms`.
    pub series_step_s: f64,
    /// The configured p99 objective in ms; rows above it are breaching.
    pub slo_p99_ms: f64,
    /// When the report was made (RFC 3339, UTC).
    pub generated_at: String,
    /// One row per route (grouped), busiest first.
    pub rows: Vec<LiveRow>,
}

struct Slice {
    index: i64,
    hist: Histogram<u32>,
    errors: u64,
}

#[derive(Default)]
struct RouteState {
    tiers: [VecDeque<Slice>; 3],
    last_seen_ns: i64,
    /// What this route holds, key and map slot included ([`route_bytes`]), as of its last update.
    bytes: usize,
}

/// Bytes a histogram holds: its counts (a `Vec` that grows by `resize`, so its capacity may be up to twice its
/// length) and itself.
fn histogram_bytes(h: &Histogram<u32>) -> usize {
    size_of::<Slice>() + 2 * h.distinct_values() * size_of::<u32>()
}

/// Bytes a route holds: its key's strings, its map slot (twice over: the table doubles as it grows), its slice
/// rings and their histograms.
fn route_bytes(key: &RouteKey, route: &RouteState) -> usize {
    let key_bytes = key.provider.len() + key.region.len() + key.model.len() + key.operation.len();
    key_bytes + 2 * (size_of::<RouteKey>() + size_of::<RouteState>() + 1) + route_heap_bytes(route)
}

/// Bytes a route's slice rings and their histograms hold.
fn route_heap_bytes(route: &RouteState) -> usize {
    route
        .tiers
        .iter()
        .map(|ring| {
            let spare = (ring.capacity() - ring.len()) * size_of::<Slice>();
            spare + ring.iter().map(|s| histogram_bytes(&s.hist)).sum::<usize>()
        })
        .sum()
}

/// What a new route holds after its first span: its key, one slice with a fresh histogram, and the ring's first
/// allocation (room for four slices).
fn new_route_bytes(key: &RouteKey) -> usize {
    static FRESH: std::sync::LazyLock<usize> = std::sync::LazyLock::new(|| histogram_bytes(&new_histogram()));
    route_bytes(key, &RouteState::default()) + *FRESH + 3 * size_of::<Slice>()
}

/// The routes, and what they hold in the memory budget.
#[derive(Default)]
struct Routes {
    map: HashMap<RouteKey, RouteState>,
    /// The sum of the routes' `bytes`.
    bytes: usize,
    /// `bytes` rounded up to [`RESERVATION_STEP`], held in the process memory budget (none: not accounted).
    memory: Option<Reservation>,
}

impl RouteState {
    /// Records one span in the finest tier's newest slice. The coarser tiers get whole fine slices once they close
    /// ([`RouteState::fold`]): one histogram update per span instead of one per tier (the updates are cache misses
    /// into histograms of ~60 KiB, which made the three tiers 6 % of ingest CPU).
    fn record(&mut self, now_ns: i64, micros: u64, error: bool) {
        self.last_seen_ns = now_ns;
        let fine = Window::ALL[0];
        let index = now_ns.div_euclid(fine.slice_ns());
        if self.tiers[0].back().is_none_or(|s| s.index < index) {
            self.fold();
            let ring = &mut self.tiers[0];
            ring.push_back(Slice { index, hist: new_histogram(), errors: 0 });
            while ring.front().is_some_and(|s| s.index <= index - fine.slices()) {
                ring.pop_front();
            }
        }
        // A clock step backwards lands in the newest slice rather than reopening an old one.
        let slice = self.tiers[0].back_mut().expect("pushed above");
        // Auto-resizing histograms accept any u64; saturating keeps a pathological count from failing.
        let _ = slice.hist.record(micros);
        slice.errors += u64::from(error);
    }

    /// Adds the newest fine slice, which is closing, to the slices of the coarser tiers that contain it. Fine
    /// slices divide the coarse ones evenly, so each fine slice lies in exactly one slice of each tier.
    fn fold(&mut self) {
        let (fine, coarse) = self.tiers.split_at_mut(1);
        let Some(closed) = fine[0].back() else { return };
        let start_ns = closed.index * Window::ALL[0].slice_ns();
        for (window, ring) in Window::ALL[1..].iter().zip(coarse) {
            let index = start_ns.div_euclid(window.slice_ns());
            if ring.back().is_none_or(|s| s.index < index) {
                ring.push_back(Slice { index, hist: new_histogram(), errors: 0 });
            }
            while ring.front().is_some_and(|s| s.index <= index - window.slices()) {
                ring.pop_front();
            }
            let slice = ring.back_mut().expect("pushed above");
            let _ = slice.hist.add(&closed.hist);
            slice.errors += closed.errors;
        }
    }

    /// The slices of `window` with index in `first..=last` as `(index, histogram, errors)`; for a coarse window,
    /// the newest fine slice (not folded yet) comes as an extra entry under the coarse slice it lies in.
    fn slices(&self, window: Window, first: i64, last: i64) -> Vec<(i64, &Histogram<u32>, u64)> {
        let mut out: Vec<_> = self.tiers[window.tier()]
            .iter()
            .filter(|s| s.index >= first && s.index <= last)
            .map(|s| (s.index, &s.hist, s.errors))
            .collect();
        if window.tier() > 0
            && let Some(open) = self.tiers[0].back()
        {
            let index = (open.index * Window::ALL[0].slice_ns()).div_euclid(window.slice_ns());
            if index >= first && index <= last {
                out.push((index, &open.hist, open.errors));
            }
        }
        out
    }
}

fn new_histogram() -> Histogram<u32> {
    Histogram::new(SIGFIG).expect("3 significant digits is a valid precision")
}

/// The live windows of every route. Share one behind an `Arc`: the ingest path calls
/// [`SpanObserver::observe`], the API calls [`LiveWindows::report`].
pub struct LiveWindows {
    routes: Mutex<Routes>,
    slo_p99_ms: f64,
    started_ns: i64,
    max_routes: usize,
    max_key_bytes: usize,
    /// Permits for `/api/v1/live/stream`: a stream holds one for as long as it is open ([`MAX_LIVE_STREAMS`]).
    streams: Arc<tokio::sync::Semaphore>,
}

/// Live streams open at once. Each is a connection held open and a report made every second, so without a cap a
/// client with a query key could hold every connection the API listener takes and starve the probes and every
/// other client; past it a stream is refused with 503 and `Retry-After` (the page falls back to polling).
pub const MAX_LIVE_STREAMS: usize = 64;

impl std::fmt::Debug for LiveWindows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveWindows")
            .field("routes", &self.routes.lock().map.len())
            .field("slo_p99_ms", &self.slo_p99_ms)
            .finish()
    }
}

fn now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

/// A key column's value in row `i`, cut to `max` bytes; `missing` when NULL or empty.
fn value<'a>(
    col: Option<&'a datafusion::arrow::array::StringArray>,
    i: usize,
    max: usize,
    missing: &'static str,
) -> &'a str {
    match col {
        Some(c) if c.is_valid(i) && !c.value(i).is_empty() => truncate(c.value(i), max),
        _ => missing,
    }
}

/// Where spans of a new route go when no route can be added: the project's own overflow route, so its spans stay
/// its own; a further project past the cap shares one overflow route that only admin keys see (projects come from
/// configured keys, but without keys a client may name any).
fn overflow_route(project: &Project, map: &HashMap<RouteKey, RouteState>, max_routes: usize) -> RouteKey {
    let mut overflow = RouteKey {
        project: project.to_string(),
        provider: OVERFLOW.into(),
        region: NONE.into(),
        model: NONE.into(),
        operation: NONE.into(),
    };
    if !map.contains_key(&overflow) && map.len() >= max_routes {
        overflow.project = OVERFLOW.into();
    }
    overflow
}

/// One group's figures as a live report adds them up: every slice's histogram, its errors, and each slice apart.
/// The counter type is the collector's `u32` for its own windows and `u64` where reports of several collectors
/// are merged ([`merge`]).
struct Acc<T: Counter> {
    total: Histogram<T>,
    errors: u64,
    per_slice: Vec<Option<Histogram<T>>>,
}

impl<T: Counter> Acc<T> {
    /// The report's row for `key` at `rate` spans per second; `buckets` adds the histogram's buckets.
    fn row(self, key: RouteKey, rate: f64, buckets: bool) -> LiveRow {
        let ms = |micros: u64| micros as f64 / 1000.0;
        let h = &self.total;
        let count = h.len();
        LiveRow {
            count,
            rate,
            errors: self.errors,
            error_rate: self.errors as f64 / count as f64,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p95_ms: ms(h.value_at_quantile(0.95)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            mean_ms: h.mean() / 1000.0,
            p99_series_ms: self
                .per_slice
                .iter()
                .map(|s| s.as_ref().filter(|h| !h.is_empty()).map(|h| ms(h.value_at_quantile(0.99))))
                .collect(),
            buckets: if buckets { log_buckets(h) } else { Vec::new() },
            key,
        }
    }
}

/// The rows of a report in their order: providers first, busiest first; spans without a provider after them.
fn sort_rows(rows: &mut [LiveRow]) {
    rows.sort_by(|a, b| {
        (a.key.provider == NO_PROVIDER)
            .cmp(&(b.key.provider == NO_PROVIDER))
            .then_with(|| b.count.cmp(&a.count))
            .then_with(|| a.key.cmp(&b.key))
    });
}

/// What a window holds for a report, before it is turned into rows or serialised histograms.
struct Gathered {
    /// Nanoseconds of history the window covers.
    covered_ns: i64,
    /// Index of the window's oldest slice (in slices of the window's length since the Unix epoch).
    first: i64,
    groups: HashMap<RouteKey, Acc<u32>>,
}

impl LiveWindows {
    /// Empty windows; `slo_p99_ms` (from `[live] slo_p99_ms`) is passed through to reports for colouring.
    pub fn new(slo_p99_ms: f64) -> LiveWindows {
        LiveWindows::new_at(slo_p99_ms, now_ns())
    }

    /// Empty windows as if started at `now_ns` (tests drive time explicitly).
    pub fn new_at(slo_p99_ms: f64, now_ns: i64) -> LiveWindows {
        LiveWindows {
            routes: Mutex::new(Routes::default()),
            slo_p99_ms,
            started_ns: now_ns,
            max_routes: LiveConfig::DEFAULT_MAX_ROUTES,
            max_key_bytes: LiveConfig::DEFAULT_MAX_KEY_BYTES,
            streams: Arc::new(tokio::sync::Semaphore::new(MAX_LIVE_STREAMS)),
        }
    }

    /// The same windows tracking at most `max_routes` routes whose key values are cut to `max_key_bytes`: the
    /// keys then take at most `4 * max_routes * max_key_bytes` bytes, whatever names clients send.
    pub fn with_limits(mut self, max_routes: usize, max_key_bytes: usize) -> LiveWindows {
        self.max_routes = max_routes.max(1);
        self.max_key_bytes = max_key_bytes.max(1);
        self
    }

    /// The same windows reserving what their routes hold in `budget` (the collector's: `memory.limit_mb`), in steps
    /// of [`RESERVATION_STEP`]. A route is only added when the budget has room for it; spans of a route that is
    /// not admitted are counted under provider `"(other)"`, as past `max_routes`.
    pub fn with_memory(self, budget: &MemoryBudget) -> LiveWindows {
        self.routes.lock().memory = Some(budget.empty());
        self
    }

    /// Records one batch of `project`'s spans in the `spans` schema as acknowledged at `now_ns`.
    pub fn observe_at(&self, project: &Project, spans: &RecordBatch, now_ns: i64) {
        let rows = spans.num_rows();
        if rows == 0 {
            return;
        }
        let str_col = |c: SpanColumn| c.of(spans).and_then(|c| c.as_string_opt::<i32>());
        let (Some(durations), Some(status)) = (
            SpanColumn::DurationNs.of(spans).and_then(|c| c.as_primitive_opt::<Int64Type>()),
            str_col(SpanColumn::StatusCode),
        ) else {
            tracing::warn!(
                "live windows: batch without {}/{} columns ignored",
                SpanColumn::DurationNs,
                SpanColumn::StatusCode
            );
            return;
        };
        let (provider, region, model, operation) = (
            str_col(SpanColumn::GenAiProvider),
            str_col(SpanColumn::Resource(ResourceColumn::CloudRegion)),
            str_col(SpanColumn::RequestModel),
            str_col(SpanColumn::GenAiOperation),
        );
        let max = self.max_key_bytes;
        // Samples are grouped by borrowed keys outside the lock: a batch holds few routes, so owned keys are
        // built once per route and batch rather than once per span, and the critical section is only
        // histogram updates.
        let mut groups: foldhash::HashMap<[&str; 4], Vec<(u64, bool)>> = Default::default();
        for i in 0..rows {
            let key = [
                value(provider, i, max, NO_PROVIDER),
                value(region, i, max, NONE),
                value(model, i, max, NONE),
                value(operation, i, max, NONE),
            ];
            let ns = if durations.is_valid(i) { durations.value(i).max(0) as u64 } else { 0 };
            let error = status.is_valid(i) && status.value(i) == tailscope_core::rules::status::ERROR;
            groups.entry(key).or_default().push(((ns + 500) / 1000, error));
        }
        let mut routes = self.routes.lock();
        let Routes { map, bytes, memory } = &mut *routes;
        for ([provider, region, model, operation], samples) in groups {
            let key = RouteKey {
                project: project.to_string(),
                provider: provider.into(),
                region: region.into(),
                model: model.into(),
                operation: operation.into(),
            };
            // A new route needs room under `max_routes` and in the memory budget (the overflow route itself is
            // always kept: it is one route whatever comes).
            let admitted = map.contains_key(&key)
                || (map.len() < self.max_routes
                    && memory.as_mut().is_none_or(|m| {
                        m.try_follow(*bytes + new_route_bytes(&key), RESERVATION_STEP, &"a live-window route").is_ok()
                    }));
            let key = if admitted { key } else { overflow_route(project, map, self.max_routes) };
            let fixed = route_bytes(&key, &RouteState::default());
            let route = map.entry(key).or_default();
            for (micros, error) in samples {
                route.record(now_ns, micros, error);
            }
            let size = fixed + route_heap_bytes(route);
            *bytes = (*bytes + size).saturating_sub(route.bytes);
            route.bytes = size;
        }
        // Histograms grow with the values recorded: that memory is held already, so it is counted past the limit
        // if need be (ingest is then refused until the routes shrink or other memory is released).
        if let Some(m) = memory {
            m.follow(*bytes, RESERVATION_STEP);
        }
    }

    /// The figures for `window`, grouped and filtered, as of `now_ns`. `buckets` adds each row's histogram.
    pub fn report_at(
        &self,
        window: Window,
        grouping: Grouping,
        filter: &RouteFilter,
        buckets: bool,
        now_ns: i64,
    ) -> LiveReport {
        let Gathered { covered_ns, groups, .. } = self.gather(window, grouping, filter, now_ns);
        let covered_s = covered_ns as f64 / NS_PER_S as f64;
        let mut rows: Vec<LiveRow> = groups
            .into_iter()
            .filter(|(_, acc)| !acc.total.is_empty())
            .map(|(key, acc)| {
                let rate = acc.total.len() as f64 / covered_s;
                acc.row(key, rate, buckets)
            })
            .collect();
        sort_rows(&mut rows);
        LiveReport {
            window,
            covered_s,
            series_step_s: window.slice_ns() as f64 / NS_PER_S as f64,
            slo_p99_ms: self.slo_p99_ms,
            generated_at: chrono::DateTime::from_timestamp_nanos(now_ns).to_rfc3339(),
            rows,
        }
    }

    /// The same window, grouping and filter as [`LiveWindows::report_at`], as serialised histograms that reports
    /// of other collectors can be merged with ([`merge::LiveMerge`]).
    pub fn histograms_at(
        &self,
        window: Window,
        grouping: Grouping,
        filter: &RouteFilter,
        now_ns: i64,
    ) -> LiveHistograms {
        let Gathered { covered_ns, first, groups } = self.gather(window, grouping, filter, now_ns);
        let mut rows: Vec<(u64, HistogramRow)> = groups
            .into_iter()
            .filter(|(_, acc)| !acc.total.is_empty())
            .filter_map(|(key, acc)| {
                let encoded = merge::encode(&acc.total)
                    .and_then(|total| {
                        let slices = acc.per_slice.iter().map(|s| s.as_ref().map(merge::encode).transpose());
                        Ok((total, slices.collect::<Result<Vec<_>, _>>()?))
                    })
                    .inspect_err(|e| tracing::warn!("live histograms: route {key:?} left out: {e}"))
                    .ok()?;
                let (histogram, slices) = encoded;
                Some((acc.total.len(), HistogramRow { key, errors: acc.errors, histogram, slices }))
            })
            .collect();
        // The report's order (the count is the histogram's, kept aside so as not to decode it again).
        rows.sort_by(|(ca, a), (cb, b)| {
            (a.key.provider == NO_PROVIDER)
                .cmp(&(b.key.provider == NO_PROVIDER))
                .then_with(|| cb.cmp(ca))
                .then_with(|| a.key.cmp(&b.key))
        });
        LiveHistograms {
            window,
            covered_s: covered_ns as f64 / NS_PER_S as f64,
            series_step_s: window.slice_ns() as f64 / NS_PER_S as f64,
            first_slice: first,
            slo_p99_ms: self.slo_p99_ms,
            generated_at: chrono::DateTime::from_timestamp_nanos(now_ns).to_rfc3339(),
            encoding: merge::ENCODING.to_string(),
            rows: rows.into_iter().map(|(_, r)| r).collect(),
        }
    }

    /// Drops idle routes and adds up, per group, the slices of `window` as of `now_ns`.
    fn gather(&self, window: Window, grouping: Grouping, filter: &RouteFilter, now_ns: i64) -> Gathered {
        let slice_ns = window.slice_ns();
        let current = now_ns.div_euclid(slice_ns);
        let first = current - window.slices() + 1;
        // At least a second: in a collector's first second a rate over the few nanoseconds covered would be a
        // spike no one means, and a merge refuses a peer's report covering less (`merge::MIN_COVERED_S`).
        let covered_ns = (now_ns - first * slice_ns).min(now_ns - self.started_ns).max(NS_PER_S);
        let mut groups: HashMap<RouteKey, Acc<u32>> = HashMap::new();
        let mut routes = self.routes.lock();
        let Routes { map: routes, bytes, memory } = &mut *routes;
        let longest = Window::OneHour.length_ns() + Window::OneHour.slice_ns();
        routes.retain(|_, r| {
            let keep = r.last_seen_ns > now_ns - longest;
            if !keep {
                *bytes = bytes.saturating_sub(r.bytes);
            }
            keep
        });
        if let Some(m) = memory {
            m.follow(*bytes, RESERVATION_STEP);
        }
        for (key, route) in routes.iter() {
            if !filter.matches(key) {
                continue;
            }
            let slices = route.slices(window, first, current);
            if slices.is_empty() {
                continue;
            }
            let acc = groups.entry(grouping.project(key)).or_insert_with(|| Acc {
                total: new_histogram(),
                errors: 0,
                per_slice: (0..window.slices()).map(|_| None).collect(),
            });
            for (index, hist, errors) in slices {
                let _ = acc.total.add(hist);
                acc.errors += errors;
                let slot = &mut acc.per_slice[(index - first) as usize];
                match slot {
                    Some(h) => {
                        let _ = h.add(hist);
                    }
                    None => *slot = Some(hist.clone()),
                }
            }
        }
        Gathered { covered_ns, first, groups }
    }

    /// [`LiveWindows::report_at`] as of now.
    pub fn report(&self, window: Window, grouping: Grouping, filter: &RouteFilter, buckets: bool) -> LiveReport {
        self.report_at(window, grouping, filter, buckets, now_ns())
    }

    /// How many routes are tracked.
    pub fn route_count(&self) -> usize {
        self.routes.lock().map.len()
    }
}

impl SpanObserver for LiveWindows {
    fn observe(&self, project: &Project, spans: &RecordBatch) {
        self.observe_at(project, spans, now_ns());
    }
}

/// `s` cut to at most `max` bytes, at a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Power-of-two buckets from 1 ms up to the largest value (sub-millisecond spans fall in the first).
fn log_buckets<T: Counter>(h: &Histogram<T>) -> Vec<Bucket> {
    let mut out = Vec::new();
    let mut le_us: u64 = 1000;
    let mut below: u64 = 0;
    let total = h.len();
    loop {
        let upto = h.count_between(0, le_us);
        // count_between is inclusive of equivalent values; clamp to keep buckets disjoint.
        let upto = upto.min(total);
        out.push(Bucket { le_ms: le_us as f64 / 1000.0, count: upto - below });
        below = upto;
        if below >= total || le_us > h.max() {
            break;
        }
        le_us = le_us.saturating_mul(2);
    }
    out
}

#[derive(Debug, Deserialize)]
struct LiveParams {
    window: Option<String>,
    group: Option<String>,
    buckets: Option<bool>,
    #[serde(flatten)]
    filter: RouteFilter,
}

/// `GET /api/v1/live?window=1m|5m|1h[&group=provider,region][&provider=…&region=…&model=…&operation=…][&buckets=false]`.
///
/// `group` names the key columns kept apart (default all four); merged columns read `"*"`. Filters are exact
/// matches. Each row carries its histogram buckets unless `buckets=false`.
///
/// `GET /api/v1/live/stream` with the same parameters pushes the same report as Server-Sent Events (`event: live`,
/// the JSON as data) at once and then every [`STREAM_EVERY`], so a page shows live values without polling.
///
/// `GET /api/v1/live/histograms` with the same parameters (`buckets` aside) answers each row's histograms
/// instead of its figures ([`LiveHistograms`]), for a client that merges several collectors ([`LiveMerge`]).
pub fn routes(live: Arc<LiveWindows>) -> Router {
    Router::new()
        .route("/api/v1/live", get(live_handler))
        .route("/api/v1/live/histograms", get(histograms_handler))
        .route("/api/v1/live/stream", get(live_stream))
        .with_state(live)
}

/// How often `/api/v1/live/stream` pushes a report: the live windows' finest slices are a second or more apart.
pub const STREAM_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// The window and grouping asked for, or what is wrong with them.
fn report_params(params: &LiveParams) -> Result<(Window, Grouping), String> {
    let window = match params.window.as_deref() {
        None => Window::OneMinute,
        Some(w) => match Window::parse(w) {
            Some(w) => w,
            None => {
                return Err(format!("unknown window {w:?}: use window=1m, 5m or 1h"));
            }
        },
    };
    let grouping = match params.group.as_deref() {
        None => Grouping::default(),
        Some(g) => Grouping::parse(g)?,
    };
    Ok((window, grouping))
}

/// Scopes `params` to what the caller's key may see (`crate::auth`; outside the authentication layer, everything)
/// and reads the window and grouping asked for, or what is wrong with them.
fn scoped_params(
    visible: Option<axum::Extension<Visibility>>,
    params: &mut LiveParams,
) -> Result<(Window, Grouping), String> {
    params.filter.visible = visible.map(|axum::Extension(v)| v).unwrap_or_default();
    report_params(params)
}

async fn live_handler(
    State(live): State<Arc<LiveWindows>>,
    visible: Option<axum::Extension<Visibility>>,
    Query(mut params): Query<LiveParams>,
) -> Response {
    let (window, grouping) = match scoped_params(visible, &mut params) {
        Ok(asked) => asked,
        Err(e) => return bad_request(e),
    };
    Json(live.report(window, grouping, &params.filter, params.buckets.unwrap_or(true))).into_response()
}

async fn histograms_handler(
    State(live): State<Arc<LiveWindows>>,
    visible: Option<axum::Extension<Visibility>>,
    Query(mut params): Query<LiveParams>,
) -> Response {
    // Scoped like the report: a project key gets only its projects' histograms.
    let (window, grouping) = match scoped_params(visible, &mut params) {
        Ok(asked) => asked,
        Err(e) => return bad_request(e),
    };
    Json(live.histograms_at(window, grouping, &params.filter, now_ns())).into_response()
}

async fn live_stream(
    State(live): State<Arc<LiveWindows>>,
    visible: Option<axum::Extension<Visibility>>,
    Query(mut params): Query<LiveParams>,
) -> Response {
    use axum::response::sse::{Event, KeepAlive, Sse};
    // The stream is scoped like the report: a project key sees only its projects' routes, every tick.
    let (window, grouping) = match scoped_params(visible, &mut params) {
        Ok(asked) => asked,
        Err(e) => return bad_request(e),
    };
    let Ok(permit) = live.streams.clone().try_acquire_owned() else {
        let body = Json(serde_json::json!({
            "error": format!("{MAX_LIVE_STREAMS} live streams are open already: retry later, or poll /api/v1/live")
        }));
        return (StatusCode::SERVICE_UNAVAILABLE, [(axum::http::header::RETRY_AFTER, "5")], body).into_response();
    };
    let buckets = params.buckets.unwrap_or(true);
    let filter = params.filter;
    // One report per tick, made when the client has taken the previous one (a slow reader gets fewer, never a
    // queue): nothing is buffered per connection beyond the report being sent.
    let ticks = tokio_stream::wrappers::IntervalStream::new({
        let mut every = tokio::time::interval(STREAM_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        every
    });
    let events = futures::StreamExt::map(ticks, move |_| {
        // The permit lives as long as the stream: a closed stream frees its place.
        let _open = &permit;
        let report = live.report(window, grouping, &filter, buckets);
        Event::default().event("live").json_data(&report)
    });
    Sse::new(events).keep_alive(KeepAlive::default()).into_response()
}

fn bad_request(message: String) -> Response {
    (StatusCode::BAD_REQUEST, Json(serde_json::json!({ "error": message }))).into_response()
}

/// Windows for the merge's tests.
#[cfg(test)]
mod tests_support {
    use super::*;

    /// The 1m histograms of a collector that saw one span of `micros` µs (provider `openai`, everything else
    /// grouped).
    pub(super) fn one_span_windows(micros: i64) -> LiveHistograms {
        use datafusion::arrow::array::{ArrayRef, Int64Array, StringArray};
        use datafusion::arrow::datatypes::Schema;
        let t0 = 1_800_000_000 * NS_PER_S;
        let live = LiveWindows::new_at(0.0, t0 - 600 * NS_PER_S);
        let s = |v: &str| -> ArrayRef { Arc::new(StringArray::from(vec![v])) };
        let columns = [SpanColumn::GenAiProvider, SpanColumn::DurationNs, SpanColumn::StatusCode];
        let schema = Schema::new(columns.map(SpanColumn::field).to_vec());
        let batch = RecordBatch::try_new(
            Arc::new(schema),
            vec![s("openai"), Arc::new(Int64Array::from(vec![micros * 1000])), s("error")],
        )
        .unwrap();
        live.observe_at(&Project::default(), &batch, t0);
        live.histograms_at(Window::OneMinute, Grouping::parse("provider").unwrap(), &RouteFilter::default(), t0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{ArrayRef, Int64Array, StringArray};
    use datafusion::arrow::datatypes::Schema;

    type Row<'a> = (&'a str, &'a str, &'a str, i64, &'a str);

    fn batch(rows: &[Row<'_>]) -> RecordBatch {
        let s = |f: &dyn Fn(&Row<'_>) -> Option<String>| -> ArrayRef {
            Arc::new(StringArray::from(rows.iter().map(f).collect::<Vec<_>>()))
        };
        let schema = Schema::new(
            [
                SpanColumn::GenAiProvider,
                SpanColumn::Resource(ResourceColumn::CloudRegion),
                SpanColumn::RequestModel,
                SpanColumn::GenAiOperation,
                SpanColumn::DurationNs,
                SpanColumn::StatusCode,
            ]
            .map(SpanColumn::field)
            .to_vec(),
        );
        RecordBatch::try_new(
            Arc::new(schema),
            vec![
                s(&|r| (!r.0.is_empty()).then(|| r.0.to_string())),
                s(&|r| Some(r.1.to_string())),
                s(&|r| Some(r.2.to_string())),
                s(&|_| Some("chat".to_string())),
                Arc::new(Int64Array::from(rows.iter().map(|r| r.3).collect::<Vec<_>>())),
                s(&|r| Some(r.4.to_string())),
            ],
        )
        .unwrap()
    }

    const T0: i64 = 1_800_000_000 * NS_PER_S;

    #[test]
    fn percentiles_keep_three_significant_digits() {
        let live = LiveWindows::new_at(1000.0, T0 - 3600 * NS_PER_S);
        // 1..=1000 ms in 1 ms steps plus 45.2 ms: exact p50 is 500 ms, p99 990 ms.
        let mut rows: Vec<_> = (1..=1000).map(|i| ("openai", "us-east-1", "gpt-4o", i * 1_000_000, "ok")).collect();
        rows.push(("openai", "us-east-1", "gpt-4o", 45_200_000, "error"));
        live.observe_at(&Project::default(), &batch(&rows), T0);
        let r = live.report_at(Window::OneMinute, Grouping::default(), &RouteFilter::default(), true, T0);
        assert_eq!(r.rows.len(), 1);
        let row = &r.rows[0];
        assert_eq!(row.count, 1001);
        assert_eq!(row.errors, 1);
        for (got, want) in [(row.p50_ms, 500.0), (row.p99_ms, 990.0), (row.max_ms, 1000.0)] {
            assert!((got - want).abs() / want < 0.001, "got {got}, want {want} within 0.1%");
        }
        let one = LiveWindows::new_at(0.0, T0);
        one.observe_at(&Project::default(), &batch(&[("x", "r", "m", 45_200_000, "ok")]), T0);
        let p = one.report_at(Window::OneHour, Grouping::default(), &RouteFilter::default(), false, T0).rows[0].p99_ms;
        assert!((p - 45.2).abs() < 0.05, "45.2 ms read back as {p}");
        assert_eq!(row.buckets.iter().map(|b| b.count).sum::<u64>(), 1001);
        assert_eq!(row.buckets.last().unwrap().le_ms, 1024.0);
    }

    #[test]
    fn windows_age_out_and_group() {
        let live = LiveWindows::new_at(0.0, T0 - 7200 * NS_PER_S);
        live.observe_at(&Project::default(), &batch(&[("openai", "eu-west-1", "gpt-4o", 100_000_000, "ok")]), T0);
        live.observe_at(
            &Project::default(),
            &batch(&[("openai", "eu-west-1", "gpt-4o-mini", 300_000_000, "error")]),
            T0 + 50 * NS_PER_S,
        );
        live.observe_at(&Project::default(), &batch(&[("", "us-east-1", "", 10_000_000, "ok")]), T0 + 50 * NS_PER_S);
        let now = T0 + 90 * NS_PER_S;
        let none = RouteFilter::default();
        let by_pr = Grouping::parse("provider,region").unwrap();
        let m1 = live.report_at(Window::OneMinute, by_pr, &none, false, now);
        // The first span is 90 s old: gone from 1m, still in 5m.
        let openai = m1.rows.iter().find(|r| r.key.provider == "openai").unwrap();
        assert_eq!((openai.count, openai.errors, openai.key.model.as_str()), (1, 1, "*"));
        // The span without a provider is its own row, after the providers', though it is the busier route here.
        live.observe_at(&Project::default(), &batch(&[("", "us-east-1", "", 20_000_000, "ok")]), T0 + 51 * NS_PER_S);
        let m1 = live.report_at(Window::OneMinute, by_pr, &none, false, now);
        let providers: Vec<&str> = m1.rows.iter().map(|r| r.key.provider.as_str()).collect();
        assert_eq!(providers, ["openai", NO_PROVIDER]);
        assert_eq!((m1.rows[1].count, m1.rows[1].key.region.as_str()), (2, "us-east-1"));
        let m5 = live.report_at(Window::FiveMinutes, by_pr, &none, false, now);
        let openai = m5.rows.iter().find(|r| r.key.provider == "openai").unwrap();
        assert_eq!(openai.count, 2);
        assert!((openai.p99_ms - 300.0).abs() < 0.5);
        assert_eq!(openai.p99_series_ms.len(), 10);
        assert_eq!(openai.p99_series_ms.iter().flatten().count(), 2);
        let only = RouteFilter { model: Some("gpt-4o".into()), ..Default::default() };
        let f = live.report_at(Window::OneHour, Grouping::default(), &only, false, now);
        assert_eq!(f.rows.len(), 1);
        // Everything is dropped once idle for longer than the longest window.
        live.report_at(Window::OneHour, Grouping::default(), &none, false, T0 + 7200 * NS_PER_S);
        assert_eq!(live.route_count(), 0);
    }

    /// The coarse windows are built from folded fine slices plus the open one: they must hold exactly the spans
    /// whose acknowledgement time falls in their slices, as if every tier had recorded every span.
    #[test]
    fn coarse_windows_hold_exactly_their_slices_spans() {
        let start = T0 - T0.rem_euclid(300 * NS_PER_S);
        let live = LiveWindows::new_at(0.0, start - 7200 * NS_PER_S);
        // One span every 7 s for 40 minutes, each 1 ms longer than the last, every fifth an error.
        let spans: Vec<(i64, i64, bool)> =
            (0..343).map(|k| (start + k * 7 * NS_PER_S, (k + 1) * 1_000_000, k % 5 == 0)).collect();
        for &(at, ns, error) in &spans {
            live.observe_at(
                &Project::default(),
                &batch(&[("openai", "r", "m", ns, if error { "error" } else { "ok" })]),
                at,
            );
        }
        for now in [start + 2400 * NS_PER_S, start + 2403 * NS_PER_S, start + 2700 * NS_PER_S] {
            for window in Window::ALL {
                let current = now.div_euclid(window.slice_ns());
                let slices = current - window.slices() + 1..=current;
                let inside: Vec<_> =
                    spans.iter().filter(|(at, ..)| slices.contains(&at.div_euclid(window.slice_ns()))).collect();
                let report = live.report_at(window, Grouping::default(), &RouteFilter::default(), false, now);
                let first = report.rows.first();
                let (count, errors, max_ms) = first.map_or((0, 0, 0.0), |r| (r.count, r.errors, r.max_ms));
                let max = inside.iter().map(|(_, ns, _)| *ns as f64 / 1e6).fold(0.0, f64::max);
                assert_eq!(count, inside.len() as u64, "{window} at {now}");
                assert_eq!(errors, inside.iter().filter(|(.., e)| *e).count() as u64, "{window} at {now}");
                assert!((max_ms - max).abs() <= max * 0.001, "{window} at {now}: max {max_ms} vs {max}");
                if let Some(row) = report.rows.first() {
                    let nonempty = (current - window.slices() + 1..=current)
                        .filter(|i| inside.iter().any(|(at, ..)| at.div_euclid(window.slice_ns()) == *i))
                        .count();
                    assert_eq!(row.p99_series_ms.iter().flatten().count(), nonempty, "{window} at {now}");
                }
            }
        }
    }

    #[test]
    fn bad_group_is_refused() {
        assert!(Grouping::parse("provider,zone").unwrap_err().contains("zone"));
        assert_eq!(Window::parse("5m"), Some(Window::FiveMinutes));
        assert_eq!(Window::parse("2m"), None);
    }

    /// Issue #12, item 8: distinct multi-megabyte model names kept their full text as route keys for good. Keys
    /// are now cut to `max_key_bytes` and routes past `max_routes` are folded into the overflow route.
    #[test]
    fn route_keys_are_bounded_in_bytes() {
        let live = LiveWindows::new_at(0.0, T0).with_limits(100, 64);
        let names: Vec<String> = (0..300).map(|i| format!("{i:03}{}é", "m".repeat(64 << 10))).collect();
        let rows: Vec<_> = names.iter().map(|n| ("openai", "r", n.as_str(), 1_000_000, "ok")).collect();
        live.observe_at(&Project::default(), &batch(&rows), T0);
        let guard = live.routes.lock();
        let routes = &guard.map;
        assert_eq!(routes.len(), 101, "100 routes and the overflow route");
        let key_bytes: usize =
            routes.keys().map(|k| k.provider.len() + k.region.len() + k.model.len() + k.operation.len()).sum();
        assert!(key_bytes <= 101 * 4 * 64, "{key_bytes} bytes of keys");
        assert!(routes.keys().all(|k| k.model.len() <= 64));
        drop(guard);
        // A multi-byte character at the cut is not split.
        assert_eq!(truncate("aé", 2), "a");
        let total: u64 = live
            .report_at(Window::OneMinute, Grouping::default(), &RouteFilter::default(), false, T0)
            .rows
            .iter()
            .map(|r| r.count)
            .sum();
        assert_eq!(total, 300);
    }

    /// Issue #12: caches draw from the one memory budget. The routes reserve what they hold, in steps: the
    /// reservation covers what observing really allocated (histograms grown to minute-long durations included), a
    /// new route is admitted only while the budget has room (its spans go to `(other)` otherwise), and routes that
    /// age out give their memory back.
    #[test]
    fn routes_reserve_what_they_hold_from_the_memory_budget() {
        let budget = MemoryBudget::new(64 << 20);
        let live = LiveWindows::new_at(0.0, T0).with_limits(512, 64).with_memory(&budget);
        let names: Vec<String> = (0..40).map(|i| format!("model-{i}")).collect();
        // Durations from 1 ms to 60 s, over six 10 s slices: every route's histograms grow and fold into the
        // coarser windows.
        let batches: Vec<(RecordBatch, i64)> = (0..6)
            .map(|slice| {
                let rows: Vec<_> = names
                    .iter()
                    .flat_map(|n| (0..50).map(move |k| ("openai", "r", n.as_str(), (1 + k * k * 24) * 1_000_000, "ok")))
                    .collect();
                (batch(&rows), T0 + slice * 10 * NS_PER_S)
            })
            .collect();
        let (_, _, peak) = crate::alloc_meter::measure(|| {
            for (b, at) in &batches {
                live.observe_at(&Project::default(), b, *at);
            }
        });
        let accounted = live.routes.lock().bytes;
        assert_eq!(live.route_count(), 40);
        assert!(accounted > 40 * 100_000, "40 routes of grown histograms: {accounted} bytes accounted");
        // What stays allocated is at most what is accounted; the peak adds one batch's grouping (~40 KiB).
        assert!(peak <= accounted + (256 << 10), "observing allocated {peak} bytes, {accounted} accounted");
        let used = budget.used();
        assert!(used >= accounted && used <= accounted + 2 * RESERVATION_STEP, "{used} reserved for {accounted}");

        // The budget full (ingest holds the rest): new routes are admitted only in what the routes' reservation has
        // spare (less than a step); the spans of the others count under (other).
        let ingest = budget.try_reserve(budget.available(), &"ingest").unwrap();
        let late = T0 + 55 * NS_PER_S;
        let regions: Vec<String> = (0..300).map(|i| format!("region-{i}")).collect();
        let rows: Vec<_> = regions.iter().map(|r| ("anthropic", r.as_str(), "m", 5_000_000, "ok")).collect();
        live.observe_at(&Project::default(), &batch(&rows), late);
        let admitted = live.route_count() - 40 - 1;
        let fresh = new_route_bytes(&RouteKey {
            project: "default".into(),
            provider: "anthropic".into(),
            region: "region-100".into(),
            model: "m".into(),
            operation: "chat".into(),
        });
        assert!(admitted * fresh <= 2 * RESERVATION_STEP, "{admitted} of 300 new routes admitted in a full budget");
        let report = live.report_at(Window::OneMinute, Grouping::default(), &RouteFilter::default(), false, late);
        let other = report.rows.iter().find(|r| r.key.provider == OVERFLOW).expect("the overflow route");
        assert_eq!(other.count, 300 - admitted as u64, "the spans of routes not admitted count under (other)");
        drop(ingest);

        // Routes idle past the longest window are dropped and give their memory back.
        let later = T0 + 3 * 3600 * NS_PER_S;
        live.report_at(Window::OneMinute, Grouping::default(), &RouteFilter::default(), false, later);
        assert_eq!((live.route_count(), budget.used()), (0, 0));
        live.observe_at(&Project::default(), &batch(&[("openai", "r", "m", 1_000_000, "ok")]), later);
        assert_eq!(budget.used(), RESERVATION_STEP);
        drop(live);
        assert_eq!(budget.used(), 0, "dropping the windows releases their reservation");
    }
}
