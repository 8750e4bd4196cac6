//! One live view across collectors: each collector serves its live windows as HDR histograms
//! (`GET /api/v1/live/histograms`, [`LiveHistograms`]) and a client adds the histograms of N collectors up into one
//! [`LiveReport`] with the rows of `GET /api/v1/live` ([`LiveMerge`]). Percentiles are read from the summed
//! histograms, so a merged row's p50/p95/p99/max are those of the union of the collectors' spans within the
//! histograms' precision (3 significant digits: < 0.1 %); averaging per-collector percentiles would not be.
//!
//! Histograms travel in HdrHistogram's own V2 format (the `hdrhistogram` crate's `V2Serializer`, interoperable with
//! the Java, Go and C implementations), base64 in JSON; durations in microseconds.
//!
//! A peer's answer is hostile input. The crate's V2 deserialiser allocates from header fields before reading the
//! payload (a counts array from the declared lowest/highest value and precision, a buffer of the declared payload
//! length) and negates a zig-zag value that may be `i64::MIN`, so every histogram is checked before it is handed
//! over ([`decode`]): the plain V2 cookie only (a compressed payload's inflated size is not bounded by the bytes at
//! hand), a payload length equal to the bytes present, this module's precision and lowest value, a highest value
//! under [`MAX_HIGHEST_US`], and no varint out of range. Each answer is at most [`MAX_RESPONSE_BYTES`] and the
//! merged histograms at most [`MAX_MERGE_BYTES`]; past either the merge stops with an error that says so.

use std::collections::{BTreeMap, HashMap};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::{Counter, Histogram};
use serde::{Deserialize, Serialize};

use super::{Acc, LiveReport, LiveRow, NS_PER_S, RouteKey, SIGFIG, Window, sort_rows};

/// The value of [`LiveHistograms::encoding`]: HdrHistogram V2 (uncompressed), base64 (standard alphabet, padded),
/// values in microseconds.
pub const ENCODING: &str = "hdrhistogram-v2+base64";

/// The most bytes read from one collector's `/api/v1/live/histograms` answer. A route's window is at most 13
/// histograms of a few hundred bytes to a few KiB each; 16 MiB holds thousands of routes, far more than
/// `[live] max_routes` (512 by default) of one collector.
pub const MAX_RESPONSE_BYTES: usize = 16 << 20;

/// The most bytes the merged histograms may hold by default ([`LiveMerge::with_limit`]; counts arrays of 64-bit
/// counters, ~120 KiB per histogram of durations up to a minute, and a route holds up to 13). Decoded histograms are sized
/// by their highest value, not by their bytes on the wire, so this bound, not the answers' size, is what keeps a
/// merge of hostile answers from exhausting memory.
pub const MAX_MERGE_BYTES: usize = 256 << 20;

/// The largest highest-trackable value a histogram from a peer may declare, in microseconds: 2^44 µs (203 days)
/// is above any duration an `i64` of nanoseconds holds, so no real histogram is refused.
pub const MAX_HIGHEST_US: u64 = 1 << 44;

/// The most spans one histogram from a peer may count: 2^36 (69 billion) is far above what one collector
/// acknowledges in an hour, and keeps the sum of every histogram of any number of answers that fit in memory
/// below 2^63 (the crate sums counts without overflow checks when reading quantiles).
pub const MAX_SPANS: u64 = 1 << 36;

/// The most spans a merged route may count, so that no count the crate sums can overflow.
const MAX_MERGED_SPANS: u64 = 1 << 62;

/// The least `covered_s` a peer's report may declare: a collector never reports less (its rates divide by at least
/// a second), and with it a route's rate is at most its count, so a tiny `covered_s` (1e-300) cannot turn a few
/// spans into an enormous or infinite rate. The most is the window's length plus one slice of slack.
pub const MIN_COVERED_S: f64 = 1.0;

/// HdrHistogram's V2 cookie (uncompressed; the crate does not export it).
const V2_COOKIE: u32 = 0x1c84_9303 | 0x10;
/// Cookie, payload length, normalising offset, significant digits, lowest, highest, integer-to-double ratio.
const HEADER_BYTES: usize = 40;

/// The answer of `GET /api/v1/live/histograms`: the figures `/api/v1/live` reports, as histograms to merge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveHistograms {
    /// The window asked for.
    pub window: Window,
    /// Seconds of history the window covers on this collector.
    pub covered_s: f64,
    /// Seconds between two slices.
    pub series_step_s: f64,
    /// Index of the window's oldest slice, counted in slices of `series_step_s` since the Unix epoch: slices of
    /// different collectors line up by index whatever their clocks' sub-slice offsets.
    pub first_slice: i64,
    /// The collector's configured p99 objective in ms.
    pub slo_p99_ms: f64,
    /// When the answer was made (RFC 3339, UTC).
    pub generated_at: String,
    /// How histograms are encoded: always [`ENCODING`].
    pub encoding: String,
    /// One row per route (grouped), in `/api/v1/live`'s order.
    pub rows: Vec<HistogramRow>,
}

/// One grouped route of [`LiveHistograms`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistogramRow {
    /// Project, provider, region, model and operation (`"*"` where merged by the grouping).
    #[serde(flatten)]
    pub key: RouteKey,
    /// Spans with `status_code = 'error'`.
    pub errors: u64,
    /// Every span of the window: the sum of `slices`.
    pub histogram: String,
    /// One histogram per slice of the window, oldest first (`null` for a slice without spans).
    pub slices: Vec<Option<String>>,
}

/// Why a histogram from a peer was refused.
#[derive(Debug, thiserror::Error)]
pub enum HistogramError {
    /// Not base64.
    #[error("not base64: {0}")]
    Base64(#[from] base64::DecodeError),
    /// The V2 header is not one this module writes.
    #[error("{0}")]
    Header(String),
    /// The payload is malformed.
    #[error("malformed payload: {0}")]
    Payload(String),
}

/// Why reports could not be merged.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    /// The answer is larger than [`MAX_RESPONSE_BYTES`].
    #[error("the answer is larger than {limit} bytes, the most a live-histograms answer is read to")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// The answer is not a live-histograms document.
    #[error("not a /api/v1/live/histograms answer ({0}): is this a tailscope server of the same version?")]
    NotHistograms(#[from] serde_json::Error),
    /// Histograms in another encoding.
    #[error("histograms encoded as {0:?}; this client reads {ENCODING:?}")]
    Encoding(String),
    /// Reports of different windows.
    #[error("a report of window {got} cannot be merged into window {want}")]
    Window {
        /// The window merged so far.
        want: Window,
        /// The window of the refused report.
        got: Window,
    },
    /// Something in a report contradicts itself.
    #[error("{0}")]
    Inconsistent(String),
    /// A route's histogram was refused.
    #[error("route {route}: {source}")]
    Histogram {
        /// The route, cut for display.
        route: String,
        /// What is wrong with its histogram.
        source: HistogramError,
    },
    /// The merged histograms would exceed [`MAX_MERGE_BYTES`].
    #[error("the merged histograms would hold more than {limit} bytes: group by fewer columns or filter")]
    MergeTooLarge {
        /// The limit.
        limit: usize,
    },
}

/// `h` in [`ENCODING`].
pub fn encode<T: Counter>(h: &Histogram<T>) -> Result<String, HistogramError> {
    let mut bytes = Vec::new();
    V2Serializer::new().serialize(h, &mut bytes).map_err(|e| HistogramError::Payload(format!("{e:?}")))?;
    Ok(STANDARD.encode(bytes))
}

/// A histogram in [`ENCODING`] from a peer, checked before the crate's deserialiser sees it (module docs).
pub fn decode(text: &str) -> Result<Histogram<u64>, HistogramError> {
    let bytes = STANDARD.decode(text)?;
    let header = |msg: String| Err(HistogramError::Header(msg));
    let Some((head, payload)) = bytes.split_at_checked(HEADER_BYTES) else {
        return header(format!("{} bytes, fewer than a V2 header's {HEADER_BYTES}", bytes.len()));
    };
    let u32_at = |i: usize| u32::from_be_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
    let u64_at = |i: usize| (u64::from(u32_at(i)) << 32) | u64::from(u32_at(i + 4));
    let (cookie, payload_len, digits, lowest, highest) = (u32_at(0), u32_at(4), u32_at(12), u64_at(16), u64_at(24));
    if cookie != V2_COOKIE {
        return header(format!("cookie {cookie:#010x} is not HdrHistogram V2's uncompressed {V2_COOKIE:#010x}"));
    }
    if usize::try_from(payload_len).ok() != Some(payload.len()) {
        return header(format!("declares {payload_len} payload bytes, {} are present", payload.len()));
    }
    if digits != u32::from(SIGFIG) || lowest != 1 {
        return header(format!("precision {digits} digits from {lowest}, expected {SIGFIG} digits from 1"));
    }
    if !(2..=MAX_HIGHEST_US).contains(&highest) {
        return header(format!("highest trackable value {highest} µs is outside 2..={MAX_HIGHEST_US}"));
    }
    check_varints(payload)?;
    let h = Deserializer::new()
        .deserialize::<u64, _>(&mut &bytes[..])
        .map_err(|e| HistogramError::Payload(e.to_string()))?;
    if h.len() > MAX_SPANS {
        return Err(HistogramError::Payload(format!("{} spans, more than {MAX_SPANS}", h.len())));
    }
    Ok(h)
}

/// Walks the payload's zig-zag LEB128 varints as the V2 format writes them (up to 9 bytes, the ninth with 8
/// value bits): a value that decodes to `i64::MIN` would overflow the deserialiser's negation (a panic where
/// overflow checks are on), so runs of zeros longer than `i64::MAX` are refused here. The deserialiser refuses
/// counts past the end of its array itself.
fn check_varints(payload: &[u8]) -> Result<(), HistogramError> {
    let mut i = 0;
    while i < payload.len() {
        let mut value: u64 = 0;
        for n in 0..9 {
            let Some(&b) = payload.get(i) else {
                return Err(HistogramError::Payload("the last count is cut short".into()));
            };
            i += 1;
            if n == 8 {
                value |= u64::from(b) << 56;
                break;
            }
            value |= u64::from(b & 0x7f) << (7 * n);
            if b & 0x80 == 0 {
                break;
            }
        }
        if value == u64::MAX {
            return Err(HistogramError::Payload("a run of 2^63 zeros".into()));
        }
    }
    Ok(())
}

/// A route for error messages, cut so that a hostile key does not make a megabyte error.
fn route_name(key: &RouteKey) -> String {
    let full = format!("{}/{}/{}/{}/{}", key.project, key.provider, key.region, key.model, key.operation);
    let mut end = full.len().min(200);
    while !full.is_char_boundary(end) {
        end -= 1;
    }
    if end < full.len() { format!("{}…", &full[..end]) } else { full }
}

/// Bytes a merged histogram holds.
fn held(h: &Histogram<u64>) -> usize {
    h.distinct_values() * size_of::<u64>()
}

/// One group across collectors.
struct Group {
    total: Histogram<u64>,
    errors: u64,
    /// Spans per second, summed over the collectors (each over the time its window covers).
    rate: f64,
    /// Slices by their index since the epoch.
    slices: BTreeMap<i64, Histogram<u64>>,
}

/// Reports of several collectors' `/api/v1/live/histograms` for the same window, grouping and filter, added up.
pub struct LiveMerge {
    window: Option<Window>,
    slo_p99_ms: Option<f64>,
    covered_s: f64,
    /// The newest slice any report holds.
    last_slice: Option<i64>,
    groups: HashMap<RouteKey, Group>,
    /// What the merged histograms hold, bounded by `limit`.
    bytes: usize,
    limit: usize,
}

impl Default for LiveMerge {
    fn default() -> Self {
        LiveMerge::with_limit(MAX_MERGE_BYTES)
    }
}

impl LiveMerge {
    /// Nothing merged yet; the merged histograms may hold up to [`MAX_MERGE_BYTES`].
    pub fn new() -> LiveMerge {
        LiveMerge::default()
    }

    /// Nothing merged yet; the merged histograms may hold up to `limit` bytes.
    pub fn with_limit(limit: usize) -> LiveMerge {
        LiveMerge {
            window: None,
            slo_p99_ms: None,
            covered_s: 0.0,
            last_slice: None,
            groups: HashMap::new(),
            bytes: 0,
            limit,
        }
    }

    /// Adds one collector's answer, as read from the wire (at most [`MAX_RESPONSE_BYTES`]).
    pub fn add_json(&mut self, body: &[u8]) -> Result<(), MergeError> {
        self.add(&parse(body)?)
    }

    /// Adds one collector's answer. On an error the merge may hold part of the answer: drop it, or report the
    /// collector as failed and show the merge as partial.
    pub fn add(&mut self, report: &LiveHistograms) -> Result<(), MergeError> {
        if report.encoding != ENCODING {
            return Err(MergeError::Encoding(report.encoding.clone()));
        }
        let window = report.window;
        if let Some(want) = self.window
            && want != window
        {
            return Err(MergeError::Window { want, got: window });
        }
        let most_s = ((window.length_ns() + window.slice_ns()) / NS_PER_S) as f64;
        // Written so that NaN fails too.
        if !(report.covered_s >= MIN_COVERED_S && report.covered_s <= most_s) {
            return Err(MergeError::Inconsistent(format!(
                "covered_s {:?} is not within [{MIN_COVERED_S}, {most_s}] for window {window} (its length and a slice)",
                report.covered_s
            )));
        }
        // The one other number a merged report takes from a peer as is.
        if !(report.slo_p99_ms.is_finite() && report.slo_p99_ms >= 0.0) {
            return Err(MergeError::Inconsistent(format!("slo_p99_ms {:?} is not a duration", report.slo_p99_ms)));
        }
        let last = report
            .first_slice
            .checked_add(window.slices() - 1)
            .ok_or_else(|| MergeError::Inconsistent(format!("first_slice {} is out of range", report.first_slice)))?;
        self.window = Some(window);
        self.slo_p99_ms.get_or_insert(report.slo_p99_ms);
        self.covered_s = self.covered_s.max(report.covered_s);
        self.last_slice = Some(self.last_slice.map_or(last, |l| l.max(last)));
        for row in &report.rows {
            let route = || route_name(&row.key);
            let bad = |source| MergeError::Histogram { route: route(), source };
            if row.slices.len() as i64 != window.slices() {
                return Err(MergeError::Inconsistent(format!(
                    "route {}: {} slices, window {window} has {}",
                    route(),
                    row.slices.len(),
                    window.slices()
                )));
            }
            let total = decode(&row.histogram).map_err(bad)?;
            let mut in_slices: u64 = 0;
            let mut slices = Vec::new();
            for (offset, slice) in row.slices.iter().enumerate() {
                if let Some(text) = slice {
                    let h = decode(text).map_err(bad)?;
                    in_slices = in_slices.saturating_add(h.len());
                    slices.push((report.first_slice + offset as i64, h));
                }
            }
            if in_slices != total.len() || row.errors > total.len() {
                return Err(MergeError::Inconsistent(format!(
                    "route {}: {} spans in all, {in_slices} in the slices, {} errors",
                    route(),
                    total.len(),
                    row.errors
                )));
            }
            if self.groups.get(&row.key).map_or(0, |g| g.total.len()) + total.len() > MAX_MERGED_SPANS {
                return Err(MergeError::Inconsistent(format!("route {}: more than {MAX_MERGED_SPANS} spans", route())));
            }
            // Finite: at most the count (covered_s >= 1 s), itself below 2^62.
            let rate = total.len() as f64 / report.covered_s;
            let mut bytes = self.bytes;
            let group = self.groups.entry(row.key.clone()).or_insert_with(|| {
                let total = new_histogram();
                bytes += held(&total);
                Group { total, errors: 0, rate: 0.0, slices: BTreeMap::new() }
            });
            group.errors = group.errors.saturating_add(row.errors);
            group.rate += rate;
            let limit = self.limit;
            bytes = add_into(&mut group.total, &total, bytes, limit)?;
            for (index, h) in slices {
                let slot = group.slices.entry(index).or_insert_with(|| {
                    let fresh = new_histogram();
                    bytes += held(&fresh);
                    fresh
                });
                bytes = add_into(slot, &h, bytes, limit)?;
            }
            self.bytes = bytes;
        }
        Ok(())
    }

    /// The merged report, in `/api/v1/live`'s shape: percentiles of the summed histograms, counts and errors
    /// added, rates summed over the collectors (each over the time it covers), `covered_s` the longest any
    /// collector covers, the series over the newest slices any collector holds. `slo_p99_ms` is the first
    /// report's. `None` when nothing was merged.
    pub fn report(self, buckets: bool) -> Option<LiveReport> {
        let window = self.window?;
        let last = self.last_slice?;
        let first = last - window.slices() + 1;
        let mut rows: Vec<LiveRow> = self
            .groups
            .into_iter()
            .filter(|(_, g)| !g.total.is_empty())
            .map(|(key, g)| {
                let mut per_slice: Vec<Option<Histogram<u64>>> = (0..window.slices()).map(|_| None).collect();
                // Slices older than the newest report's window count in the total only.
                for (index, h) in g.slices.into_iter().filter(|(i, _)| *i >= first) {
                    per_slice[(index - first) as usize] = Some(h);
                }
                Acc { total: g.total, errors: g.errors, per_slice }.row(key, g.rate, buckets)
            })
            .collect();
        sort_rows(&mut rows);
        Some(LiveReport {
            window,
            covered_s: self.covered_s,
            series_step_s: (window.slice_ns() / NS_PER_S) as f64,
            slo_p99_ms: self.slo_p99_ms.unwrap_or(0.0),
            generated_at: chrono::Utc::now().to_rfc3339(),
            rows,
        })
    }
}

/// One collector's answer as read from the wire (at most [`MAX_RESPONSE_BYTES`]).
pub fn parse(body: &[u8]) -> Result<LiveHistograms, MergeError> {
    if body.len() > MAX_RESPONSE_BYTES {
        return Err(MergeError::TooLarge { limit: MAX_RESPONSE_BYTES });
    }
    Ok(serde_json::from_slice(body)?)
}

/// The answers of several collectors (named, as read from the wire) merged into one report, and the collectors
/// whose answer could not be read or merged with why. A refused answer leaves the merge as if it had not been
/// given: the others' figures are whole. The report is `None` when no answer was merged.
pub fn merge_answers(
    answers: Vec<(String, Vec<u8>)>,
    buckets: bool,
) -> (Option<LiveReport>, Vec<(String, MergeError)>) {
    let mut merge = LiveMerge::new();
    let mut merged: Vec<LiveHistograms> = Vec::new();
    let mut refused = Vec::new();
    for (name, body) in answers {
        let report = match parse(&body) {
            Ok(report) => report,
            Err(e) => {
                refused.push((name, e));
                continue;
            }
        };
        drop(body);
        if let Err(e) = merge.add(&report) {
            refused.push((name, e));
            // The refused answer may be part-added: merge the others again (they were merged before, and the
            // merge's size grows with what is added, so they merge again).
            merge = LiveMerge::new();
            for r in &merged {
                if let Err(e) = merge.add(r) {
                    tracing::warn!("live merge: an answer merged before is refused now: {e}");
                }
            }
            continue;
        }
        merged.push(report);
    }
    (merge.report(buckets), refused)
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new(SIGFIG).expect("3 significant digits is a valid precision")
}

/// Adds `h` into `into` and returns what the merge holds after it (`bytes` before, at most `limit`). The bound is checked after
/// the addition: one histogram's growth past it is at most ~300 KiB (a highest value under [`MAX_HIGHEST_US`] at 3
/// digits), and the merge is dropped on the error.
fn add_into(into: &mut Histogram<u64>, h: &Histogram<u64>, bytes: usize, limit: usize) -> Result<usize, MergeError> {
    let before = held(into);
    into.add(h).map_err(|e| MergeError::Inconsistent(format!("cannot add histograms: {e:?}")))?;
    let after = bytes + held(into).saturating_sub(before);
    if after > limit {
        return Err(MergeError::MergeTooLarge { limit });
    }
    Ok(after)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{ArrayRef, Int64Array, StringArray};
    use datafusion::arrow::datatypes::Schema;
    use datafusion::arrow::record_batch::RecordBatch;
    use rand::{Rng, SeedableRng};
    use tailscope_core::projects::Project;
    use tailscope_core::schema::{ResourceColumn, SpanColumn};

    use super::*;
    use crate::live::{Grouping, LiveWindows, RouteFilter};

    const T0: i64 = 1_800_000_000 * NS_PER_S;

    /// Spans of `provider` in region `r` with these durations (ns), every `error_every`th an error.
    fn batch(provider: &str, durations: &[i64], error_every: usize) -> RecordBatch {
        let n = durations.len();
        let s = |v: &str| -> ArrayRef { Arc::new(StringArray::from(vec![v; n])) };
        let status: Vec<&str> = (0..n).map(|i| if i % error_every == 0 { "error" } else { "ok" }).collect();
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
                s(provider),
                s("r"),
                s("m"),
                s("chat"),
                Arc::new(Int64Array::from(durations.to_vec())),
                Arc::new(StringArray::from(status)),
            ],
        )
        .unwrap()
    }

    /// The nearest-rank percentile of sorted `values`: the value hdrhistogram's `value_at_quantile` estimates.
    fn exact(sorted: &[u64], q: f64) -> u64 {
        let rank = ((q * sorted.len() as f64).ceil() as usize).max(1);
        sorted[rank - 1]
    }

    fn within(got_ms: f64, want_us: u64, what: &str) {
        let want = want_us as f64 / 1000.0;
        assert!((got_ms - want).abs() <= want * 0.001, "{what}: merged {got_ms} ms, exact {want} ms (> 0.1%)");
    }

    /// The "Done when" of issue #16's live view: random durations spread over three collectors' windows (and over
    /// several slices), merged from their serialised histograms, give the exact percentiles of the union within
    /// 0.1 %; counts and errors add, and rates are summed over each collector's covered time.
    #[test]
    fn merged_percentiles_are_those_of_the_union() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(16);
        for round in 0..20 {
            let servers: Vec<LiveWindows> =
                (0..3).map(|i| LiveWindows::new_at(0.0, T0 - (i + 1) * 600 * NS_PER_S)).collect();
            let mut union: Vec<u64> = Vec::new();
            let mut errors = 0u64;
            for (k, server) in servers.iter().enumerate() {
                // Each collector its own spread: log-uniform from 50 µs to 10^(2+k) ms, in whole microseconds.
                for slice in 0..4 {
                    let n: usize = rng.random_range(1..400);
                    let top = 2.0 + k as f64 + (round % 3) as f64;
                    let us: Vec<u64> = (0..n).map(|_| 10f64.powf(rng.random_range(1.7..top + 3.0)) as u64).collect();
                    let ns: Vec<i64> = us.iter().map(|u| *u as i64 * 1000).collect();
                    errors += n.div_ceil(7) as u64;
                    union.extend(&us);
                    server.observe_at(&Project::default(), &batch("openai", &ns, 7), T0 + slice * 10 * NS_PER_S);
                }
            }
            union.sort_unstable();
            let now = T0 + 45 * NS_PER_S;
            let by = Grouping::parse("provider").unwrap();
            let mut merge = LiveMerge::new();
            let mut rate = 0.0;
            for server in &servers {
                let answer = server.histograms_at(Window::OneMinute, by, &RouteFilter::default(), now);
                rate += server.report_at(Window::OneMinute, by, &RouteFilter::default(), false, now).rows[0].rate;
                // Through JSON, as from the wire.
                merge.add_json(&serde_json::to_vec(&answer).unwrap()).unwrap();
            }
            let report = merge.report(true).unwrap();
            assert_eq!(report.rows.len(), 1);
            let row = &report.rows[0];
            assert_eq!((row.count, row.errors), (union.len() as u64, errors));
            assert!((row.rate - rate).abs() < 1e-9 * rate, "rate {} vs {rate}", row.rate);
            for (got, q) in [(row.p50_ms, 0.5), (row.p95_ms, 0.95), (row.p99_ms, 0.99), (row.p999_ms, 0.999)] {
                within(got, exact(&union, q), &format!("round {round} p{q}"));
            }
            within(row.max_ms, *union.last().unwrap(), "max");
            assert_eq!(row.buckets.iter().map(|b| b.count).sum::<u64>(), union.len() as u64);
            // Four slices with spans, aligned across collectors.
            assert_eq!(row.p99_series_ms.iter().flatten().count(), 4);
            // T0 is a slice boundary: at T0 + 45 s the 1m window starts at T0 - 10 s.
            assert_eq!(report.covered_s, 55.0);
        }
    }

    /// Collectors whose windows end one slice apart (a fetch that straddles a slice boundary): slices line up by
    /// their index since the epoch, and the series ends at the newest slice.
    #[test]
    fn slices_line_up_across_collectors() {
        let a = LiveWindows::new_at(0.0, T0 - 3600 * NS_PER_S);
        let b = LiveWindows::new_at(0.0, T0 - 3600 * NS_PER_S);
        a.observe_at(&Project::default(), &batch("openai", &[100_000_000], 2), T0);
        b.observe_at(&Project::default(), &batch("openai", &[300_000_000], 2), T0 + 10 * NS_PER_S);
        let g = Grouping::parse("provider").unwrap();
        let none = RouteFilter::default();
        let mut merge = LiveMerge::new();
        merge.add(&a.histograms_at(Window::OneMinute, g, &none, T0 + 5 * NS_PER_S)).unwrap();
        merge.add(&b.histograms_at(Window::OneMinute, g, &none, T0 + 15 * NS_PER_S)).unwrap();
        let row = &merge.report(false).unwrap().rows[0];
        let series: Vec<_> = row.p99_series_ms.iter().map(|p| p.map(|p| p.round())).collect();
        assert_eq!(series, [None, None, None, None, Some(100.0), Some(300.0)]);
        assert_eq!(row.count, 2);
        let mut other = LiveMerge::new();
        other.add(&a.histograms_at(Window::OneMinute, g, &none, T0)).unwrap();
        let err = other.add(&a.histograms_at(Window::FiveMinutes, g, &none, T0)).unwrap_err();
        assert!(matches!(err, MergeError::Window { .. }), "{err}");
    }

    /// A V2 header with these fields and `payload`, base64.
    fn forged(cookie: u32, declared_len: u32, digits: u32, lowest: u64, highest: u64, payload: &[u8]) -> String {
        let mut b = Vec::new();
        b.extend(cookie.to_be_bytes());
        b.extend(declared_len.to_be_bytes());
        b.extend(0u32.to_be_bytes());
        b.extend(digits.to_be_bytes());
        b.extend(lowest.to_be_bytes());
        b.extend(highest.to_be_bytes());
        b.extend(1.0f64.to_be_bytes());
        b.extend(payload);
        STANDARD.encode(b)
    }

    /// Histograms from a peer are hostile: each forged header that would make the crate's deserialiser allocate
    /// from it, or panic, is refused with what is wrong; a real one passes.
    #[test]
    fn hostile_histograms_are_refused_before_decoding() {
        let mut real = new_histogram();
        real.record(45_200).unwrap();
        let text = encode(&real).unwrap();
        assert_eq!(decode(&text).unwrap().value_at_quantile(0.99), real.value_at_quantile(0.99));
        let refused = |text: &str, want: &str| {
            let err = decode(text).unwrap_err().to_string();
            assert!(err.contains(want), "{err:?} should say {want:?}");
        };
        refused("not base64!", "not base64");
        refused(&STANDARD.encode([0u8; 10]), "fewer than a V2 header");
        // A 4 GiB payload buffer declared over 2 bytes.
        refused(&forged(V2_COOKIE, u32::MAX, 3, 1, 2048, &[2, 2]), "declares 4294967295 payload bytes, 2 are present");
        // Compressed: its inflated size is not bounded by the bytes at hand.
        refused(&forged(0x1c84_9314, 2, 3, 1, 2048, &[2, 2]), "is not HdrHistogram V2's uncompressed");
        // Five digits from 1 to 2^63: a counts array of tens of MB.
        refused(&forged(V2_COOKIE, 2, 5, 1, 1 << 63, &[2, 2]), "precision 5 digits");
        refused(&forged(V2_COOKIE, 2, 3, 1, u64::MAX, &[2, 2]), "highest trackable value");
        // u64::MAX zig-zags to i64::MIN, whose negation overflows in the deserialiser.
        let min = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        refused(&forged(V2_COOKIE, 9, 3, 1, 2048, &min), "2^63 zeros");
        refused(&forged(V2_COOKIE, 2, 3, 1, 2048, &[0x80, 0x80]), "cut short");
        // Counts past the array's end, and counts that would overflow a sum.
        // A run of 100000 zeros (zig-zag 199999), then a count: past the end of a 2048-value histogram's array.
        refused(&forged(V2_COOKIE, 4, 3, 1, 2048, &[0xbf, 0x9a, 0x0c, 2]), "malformed payload");
        let huge = [
            0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
        ];
        refused(&forged(V2_COOKIE, 18, 3, 1, 2048, &huge), "more than 68719476736");
    }

    /// A report that contradicts itself, or a merge past its memory bound, is an error that says so, never a panic.
    #[test]
    fn inconsistent_reports_are_refused() {
        let live = LiveWindows::new_at(0.0, T0 - 3600 * NS_PER_S);
        live.observe_at(&Project::default(), &batch("openai", &[1_000_000, 2_000_000], 1), T0);
        let good = live.histograms_at(Window::OneMinute, Grouping::default(), &RouteFilter::default(), T0);
        let refused = |edit: &dyn Fn(&mut LiveHistograms), want: &str| {
            let mut r = good.clone();
            edit(&mut r);
            let err = LiveMerge::new().add(&r).unwrap_err().to_string();
            assert!(err.contains(want), "{err:?} should say {want:?}");
        };
        refused(&|r| r.rows[0].errors = 3, "2 spans in all, 2 in the slices, 3 errors");
        refused(
            &|r| {
                r.rows[0].slices.pop();
            },
            "5 slices, window 1m has 6",
        );
        refused(&|r| r.rows[0].slices[0] = Some(r.rows[0].histogram.clone()), "4 in the slices");
        refused(&|r| r.covered_s = f64::NAN, "covered_s NaN");
        // A hostile peer's tiny or endless coverage would make a huge or infinite rate.
        refused(&|r| r.covered_s = 1e-300, "covered_s 1e-300 is not within [1, 70]");
        refused(&|r| r.covered_s = 0.5, "covered_s 0.5");
        refused(&|r| r.covered_s = 70.5, "covered_s 70.5");
        refused(&|r| r.covered_s = f64::INFINITY, "covered_s inf");
        refused(&|r| r.covered_s = -60.0, "covered_s -60.0");
        refused(&|r| r.slo_p99_ms = f64::INFINITY, "slo_p99_ms inf");
        refused(&|r| r.slo_p99_ms = f64::NAN, "slo_p99_ms NaN");
        refused(&|r| r.slo_p99_ms = -1.0, "slo_p99_ms -1.0");
        // The bounds themselves pass (a collector in its first second, a window a slice longer by clock skew), and
        // every number of the merged rows is finite.
        for covered_s in [1.0, 70.0] {
            let mut merge = LiveMerge::new();
            merge.add(&LiveHistograms { covered_s, ..good.clone() }).unwrap();
            let report = merge.report(true).unwrap();
            let row = &report.rows[0];
            assert_eq!(row.rate, 2.0 / covered_s);
            let numbers = [row.rate, row.error_rate, row.p50_ms, row.p95_ms, row.p99_ms, row.p999_ms, row.max_ms];
            assert!(numbers.iter().chain([&row.mean_ms, &report.covered_s, &report.slo_p99_ms]).all(|v| v.is_finite()));
            assert!(row.p99_series_ms.iter().flatten().all(|v| v.is_finite()));
        }
        refused(&|r| r.first_slice = i64::MAX, "out of range");
        refused(&|r| r.encoding = "hdrhistogram-v2-deflate".into(), "encoded as");
        assert!(matches!(LiveMerge::new().add_json(b"{}"), Err(MergeError::NotHistograms(_))));
        assert!(matches!(
            LiveMerge::new().add_json(&vec![b' '; MAX_RESPONSE_BYTES + 1]),
            Err(MergeError::TooLarge { .. })
        ));
        assert!(LiveMerge::new().report(false).is_none());

        // Many routes of histograms declaring the highest value allowed: a few bytes each on the wire, ~300 KiB
        // each once merged. The merge stops at its bound.
        let mut wide = new_histogram();
        wide.record(MAX_HIGHEST_US / 2).unwrap();
        let text = encode(&wide).unwrap();
        let mut many = good.clone();
        many.rows = (0..1000)
            .map(|i| HistogramRow {
                key: RouteKey { model: format!("m{i}"), ..good.rows[0].key.clone() },
                errors: 0,
                histogram: text.clone(),
                slices: vec![Some(text.clone()), None, None, None, None, None],
            })
            .collect();
        let err = LiveMerge::with_limit(16 << 20).add(&many).unwrap_err();
        assert!(matches!(err, MergeError::MergeTooLarge { .. }), "{err}");
    }
}

#[cfg(test)]
mod answers {
    use super::*;
    use crate::live::tests_support::one_span_windows;

    /// A collector whose answer is refused (not JSON, or inconsistent after some rows merged) is named with why,
    /// and the others' figures are whole: not doubled, not part of the refused one.
    #[test]
    fn a_refused_answer_leaves_the_others_whole() {
        let (a, b) = (one_span_windows(100_000), one_span_windows(300_000));
        let mut bad = b.clone();
        bad.rows.push(HistogramRow { errors: 9, ..bad.rows[0].clone() });
        let json = |r: &LiveHistograms| serde_json::to_vec(r).unwrap();
        let (report, refused) = merge_answers(
            vec![
                ("a".into(), json(&a)),
                ("down".into(), b"<html>".to_vec()),
                ("bad".into(), json(&bad)),
                ("b".into(), json(&b)),
            ],
            false,
        );
        let names: Vec<_> = refused.iter().map(|(n, e)| format!("{n}: {e}")).collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(names[0].starts_with("down: not a /api/v1/live/histograms answer"), "{names:?}");
        assert!(names[1].starts_with("bad: route default/openai") && names[1].contains("9 errors"), "{names:?}");
        let rows = report.unwrap().rows;
        assert_eq!((rows.len(), rows[0].count, rows[0].max_ms.round()), (1, 2, 300.0));
        let (none, refused) = merge_answers(vec![("x".into(), b"[]".to_vec())], false);
        assert!(none.is_none() && refused.len() == 1);
    }
}
