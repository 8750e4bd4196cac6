//! One budget across collectors (`[fleet]`): a coordinator decides, members report.
//!
//! Every span a fleet acknowledged is in exactly one of two places: a committed file of a shared `spans` table, or
//! the write buffer of the collector that acknowledged it (its WAL holds it too). The coordinator counts both:
//!
//! - **Committed spend** from the files of every store's `spans` snapshot, tallied once per file ([`Ledger`]). A
//!   compaction's new file is tallied when it appears and the files it replaced drop out with the snapshot, so
//!   the sum stays exact.
//! - **Unflushed spend** from each collector's report: the tallies of its buffered spans, read while no flush runs
//!   ([`Ingest::unflushed_spans`]), with the range of WAL records they came from. Every later flush commits through
//!   a record at or after the range's last, so the coordinator's snapshot holds either none of the range (its
//!   transaction version for the member is below the range's first record: count the report) or all of it (it is
//!   in the files: do not). No span is counted twice; a span is missed only until its collector's next report.
//!
//! The coordinator reads its own buffer before the snapshot, members' reports arrive before it: a flush in between
//! moves rows into the snapshot, never out of both. Alerts and webhooks fire at the coordinator only, from the
//! fleet's figures; members answer their guardrail from the coordinator's last verdict, and once it is older than
//! [`FleetConfig::stale_after`] they answer as `on_coordinator_down` says, and say so.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use datafusion::arrow::array::{Array, ArrayRef, RecordBatch, new_null_array};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::parquet::arrow::ParquetRecordBatchStreamBuilder;
use datafusion::parquet::arrow::ProjectionMask;
use datafusion::parquet::arrow::async_reader::AsyncFileReader;
use futures::StreamExt;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tailscope_core::alerts::AlertEvent;
use tailscope_core::catalog::ParquetFile;
use tailscope_core::config::{FailMode, FleetConfig};
use tailscope_core::cost::BudgetConfig;
use tailscope_core::placement::StoreId;
use tailscope_core::projects::Project;

use super::budget::{BUDGET_COLUMNS, Budget, BudgetStatus, SpanColumns};
use crate::ingest::{Ingest, SpanStore};

/// Where members send their reports on the coordinator's API (an `admin` key's route).
pub const REPORT_PATH: &str = "/api/v1/fleet/report";
/// The most members one coordinator follows: far past a collector per cloud region, and a bound on its memory and
/// on the transaction versions each sum reads.
pub const MAX_MEMBERS: usize = 64;
/// A member not heard from for this long leaves the sum (its unflushed spend with it) until it reports again: a
/// collector taken out of the fleet must not hold a place, nor its last figures, for ever.
const MEMBER_EXPIRY: Duration = Duration::from_secs(600);
/// The largest spend (or inference spend) one time bucket of a report may carry, in USD: far past any real
/// minute or hour, and small enough that sums over every member and bucket stay finite.
const MAX_BUCKET_USD: f64 = 1e12;
/// The largest report a coordinator reads: a report is a few time buckets per budget.
pub const MAX_REPORT_BYTES: usize = 4 << 20;
/// The largest verdict a member reads.
const MAX_VERDICT_BYTES: usize = 16 << 20;
/// Why a fleet's loop has nothing to count: the collector it belongs to stopped.
const SHUT_DOWN: &str = "the collector is shutting down";
/// How a coordinator's answer begins while it has not summed the fleet yet.
pub(crate) const WARMING: &str = "the coordinator has not finished summing the fleet's spend yet";
/// Alert events a verdict carries (the latest event of each alert, most recent first).
const MAX_VERDICT_ALERTS: usize = 100;

/// Spend per time bucket of one budget, as counters exchange it: `(bucket start ns, spend, inference spend)`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BudgetBuckets {
    pub name: String,
    pub buckets: Vec<(i64, f64, f64)>,
}

/// A collector's acknowledged spans no table holds yet, tallied per budget.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Unflushed {
    /// The first and last WAL record they came from.
    pub first_seq: u64,
    pub last_seq: u64,
    pub budgets: Vec<BudgetBuckets>,
}

/// What a member sends the coordinator every exchange interval (`POST /api/v1/fleet/report`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpendReport {
    /// The member's writer id in the tables' transaction identifiers (`tailscope-wal-…`).
    pub app_id: String,
    /// The locations of the shared stores its rows go to: each must be one the coordinator reads.
    pub stores: Vec<String>,
    /// Its `[[budget]]` tables: they must be the coordinator's.
    pub budgets: Vec<BudgetConfig>,
    /// Its unflushed spend; none when its buffer holds no span.
    pub unflushed: Option<Unflushed>,
}

/// The coordinator's answer to a report: the fleet's figures and alerts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Verdict {
    /// When the coordinator summed these figures.
    pub computed_at: DateTime<Utc>,
    /// Collectors counted: the coordinator and each member that has reported.
    pub collectors: usize,
    pub budgets: Vec<BudgetStatus>,
    /// The latest event of each alert, most recent first (at most 100).
    pub alerts: Vec<AlertEvent>,
}

/// Each budget's spend in `batches` (spans with their project), per time bucket.
fn tally<'a>(
    configs: &[BudgetConfig],
    batches: impl Iterator<Item = (&'a Project, &'a RecordBatch)>,
    now: i64,
) -> Result<Vec<BudgetBuckets>, String> {
    let mut budgets: Vec<Budget> = configs.iter().map(|c| Budget::new(c.clone(), now)).collect();
    for (project, batch) in batches {
        let cols = SpanColumns::from_batch(batch)?.of_project(project.as_str());
        for b in budgets.iter_mut() {
            b.add(&cols, now);
        }
    }
    Ok(budgets.iter().map(|b| BudgetBuckets { name: b.config.name.clone(), buckets: b.buckets() }).collect())
}

/// A collector's unflushed spend, read while no flush runs. Each buffered record is tallied once, when first
/// seen, and forgotten when a flush retires it: the buffer may hold minutes of spans, and a report goes every
/// exchange interval. The cache holds a few dozen bytes per record and budget, against the record's own rows in
/// the buffer.
#[derive(Default)]
pub(crate) struct UnflushedSpend {
    records: Mutex<BTreeMap<u64, Vec<BudgetBuckets>>>,
}

impl UnflushedSpend {
    pub(crate) async fn read(
        &self,
        ingest: &Ingest,
        configs: &[BudgetConfig],
        now: i64,
    ) -> Result<Option<Unflushed>, String> {
        let buffered = ingest.unflushed_spans().await;
        let mut records = self.records.lock();
        // Retired records (flushed) leave; a sequence number is never reused.
        let live: HashSet<u64> = buffered.iter().map(|r| r.0).collect();
        records.retain(|seq, _| live.contains(seq));
        for (seq, project, batch) in &buffered {
            if !records.contains_key(seq) {
                let tallies = tally(configs, std::iter::once((project, batch)), now)?;
                records.insert(*seq, tallies);
            }
        }
        let (Some(first), Some(last)) = (records.keys().next().copied(), records.keys().next_back().copied()) else {
            return Ok(None);
        };
        let mut sums: Vec<BTreeMap<i64, (f64, f64)>> = vec![BTreeMap::new(); configs.len()];
        for tallies in records.values() {
            for (sum, t) in sums.iter_mut().zip(tallies) {
                for (bucket, spend, inference) in &t.buckets {
                    let e = sum.entry(*bucket).or_default();
                    e.0 += spend;
                    e.1 += inference;
                }
            }
        }
        let budgets = configs
            .iter()
            .zip(sums)
            .map(|(c, sum)| BudgetBuckets {
                name: c.name.clone(),
                buckets: sum.into_iter().map(|(t, (s, i))| (t, s, i)).collect(),
            })
            .collect();
        Ok(Some(Unflushed { first_seq: first, last_seq: last, budgets }))
    }
}

/// A report's unflushed spend per budget in the config's order, each amount checked and each bucket of the
/// budget's current period kept (a bucket before it is spend of an earlier period, one past the clock skew no span
/// can have: both are left out, so a member holds at most a period of buckets per budget), with its WAL range; or
/// why the report is refused.
fn checked_buckets(configs: &[BudgetConfig], u: Unflushed, now: i64) -> Result<Unflushed, String> {
    if u.first_seq > u.last_seq {
        return Err(format!("unflushed.first_seq {} is after last_seq {}", u.first_seq, u.last_seq));
    }
    let mut out: Vec<Option<BTreeMap<i64, (f64, f64)>>> = vec![None; configs.len()];
    for b in u.budgets {
        let Some(i) = configs.iter().position(|c| c.name == b.name) else {
            return Err(format!("unflushed spend of an unknown budget {:?}", b.name));
        };
        if out[i].is_some() {
            return Err(format!("budget {:?} is in the report twice", b.name));
        }
        let mut kept = BTreeMap::new();
        let (from, until, width) = Budget::new(configs[i].clone(), now).bucket_range(now);
        for (t, spend, inference) in b.buckets {
            let ok = |v: f64| v.is_finite() && (0.0..=MAX_BUCKET_USD).contains(&v);
            if !(ok(spend) && ok(inference)) {
                return Err(format!(
                    "budget {:?}: bucket {t} has spend {spend} and inference {inference}; each is an amount from \
                     0 to {MAX_BUCKET_USD:e} USD",
                    b.name
                ));
            }
            if t < from || t > until {
                continue;
            }
            let e: &mut (f64, f64) = kept.entry(t.div_euclid(width) * width).or_default();
            e.0 += spend;
            e.1 += inference;
        }
        out[i] = Some(kept);
    }
    let budgets = out
        .into_iter()
        .zip(configs)
        .map(|(kept, c)| BudgetBuckets {
            name: c.name.clone(),
            buckets: kept.unwrap_or_default().into_iter().map(|(t, (s, i))| (t, s, i)).collect(),
        })
        .collect();
    Ok(Unflushed { first_seq: u.first_seq, last_seq: u.last_seq, budgets })
}

/// The budget columns of a stored file's batch, a column the file lacks (an older schema) as nulls.
fn budget_columns(batch: &RecordBatch) -> Result<RecordBatch, String> {
    let mut fields = Vec::with_capacity(BUDGET_COLUMNS.len());
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(BUDGET_COLUMNS.len());
    for name in BUDGET_COLUMNS {
        let column =
            batch.column_by_name(name).cloned().unwrap_or_else(|| new_null_array(&DataType::Null, batch.num_rows()));
        fields.push(Field::new(name, column.data_type().clone(), true));
        columns.push(column);
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(|e| e.to_string())
}

/// One stored file's spend per budget, read with only the budget columns.
async fn tally_file(
    store: &SpanStore,
    file: &ParquetFile,
    configs: &[BudgetConfig],
    now: i64,
) -> Result<Vec<BudgetBuckets>, String> {
    let reader: Box<dyn AsyncFileReader> = match &store.remote {
        // Ranged reads of the budget columns' pages only, not the whole object. parquet 59 deprecates this reader in
        // favour of hand-written ones, which would do the same requests.
        #[allow(deprecated)]
        Some(remote) => Box::new(
            datafusion::parquet::arrow::async_reader::ParquetObjectReader::new(
                remote.store.clone(),
                remote.object_path(&file.relative_path),
            )
            .with_file_size(file.size),
        ),
        None => {
            let path = store.local_dir.join(&file.relative_path);
            Box::new(tokio::fs::File::open(&path).await.map_err(|e| format!("{}: {e}", path.display()))?)
        }
    };
    let builder = ParquetRecordBatchStreamBuilder::new(reader).await.map_err(|e| e.to_string())?;
    let schema = builder.schema().clone();
    let roots: Vec<usize> = BUDGET_COLUMNS.iter().filter_map(|name| schema.index_of(name).ok()).collect();
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
    let mut stream = builder.with_projection(mask).with_batch_size(8192).build().map_err(|e| e.to_string())?;
    let mut budgets: Vec<Budget> = configs.iter().map(|c| Budget::new(c.clone(), now)).collect();
    while let Some(batch) = stream.next().await {
        let batch = budget_columns(&batch.map_err(|e| e.to_string())?)?;
        let cols = SpanColumns::from_batch(&batch)?.of_project(file.project.as_str());
        for b in budgets.iter_mut() {
            b.add(&cols, now);
        }
    }
    Ok(budgets.iter().map(|b| BudgetBuckets { name: b.config.name.clone(), buckets: b.buckets() }).collect())
}

/// Whether `file` may hold spans of a period that starts at `earliest` (files named by tailscope say their time
/// range; others are read).
fn may_count(file: &ParquetFile, earliest: i64) -> bool {
    file.time_range_ns.is_none_or(|(_, max)| max >= earliest)
}

/// The committed spend of every file of the stores' snapshots, tallied once per file.
#[derive(Default)]
struct Ledger {
    files: HashMap<(StoreId, PathBuf), Arc<Vec<BudgetBuckets>>>,
    /// Files that could not be read, with why (counted as nothing; logged once).
    unreadable: HashMap<(StoreId, PathBuf), String>,
}

/// A member as the coordinator follows it.
#[derive(Clone)]
struct MemberState {
    /// Its unflushed spend: the WAL records it came from, and per budget (in the config's order) the buckets of
    /// the budget's current period.
    unflushed: Option<Unflushed>,
    heard: Instant,
}

/// The deciding side of a fleet.
pub(crate) struct Coordinator {
    /// Weak: the collector's ingest holds the budget engine (a span observer), which holds this.
    ingest: std::sync::Weak<Ingest>,
    own_app: store::AppId,
    shared_stores: Vec<String>,
    configs: Vec<BudgetConfig>,
    interval: Duration,
    members: Mutex<BTreeMap<String, MemberState>>,
    ledger: tokio::sync::Mutex<Ledger>,
    own: UnflushedSpend,
    verdict: Mutex<Option<Arc<Verdict>>>,
}

/// Why a report was refused: the status code and what to do.
pub(crate) struct Refusal {
    pub status: axum::http::StatusCode,
    pub error: String,
}

impl Coordinator {
    pub(crate) fn new(ingest: &Arc<Ingest>, configs: Vec<BudgetConfig>, fleet: &FleetConfig) -> Coordinator {
        Coordinator {
            ingest: Arc::downgrade(ingest),
            own_app: ingest.app_id().clone(),
            shared_stores: ingest.shared_store_locations(),
            configs,
            interval: fleet.exchange_interval,
            members: Mutex::new(BTreeMap::new()),
            ledger: tokio::sync::Mutex::new(Ledger::default()),
            own: UnflushedSpend::default(),
            verdict: Mutex::new(None),
        }
    }

    /// How often [`Self::sum`] runs: twice per exchange interval, so that a member's report is in the verdict it
    /// fetches next.
    pub(crate) fn round_interval(&self) -> Duration {
        self.interval / 2
    }

    /// Takes a member's report, or says why not.
    pub(crate) fn receive(&self, report: SpendReport) -> Result<(), Refusal> {
        let bad = |error: String| Refusal { status: axum::http::StatusCode::BAD_REQUEST, error };
        let conflict = |error: String| Refusal { status: axum::http::StatusCode::CONFLICT, error };
        let id = &report.app_id;
        let well_formed = id.strip_prefix("tailscope-wal-").is_some_and(|rest| {
            !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
        if !well_formed || id.len() > 128 {
            return Err(bad(format!("app_id {id:?} is not a collector's writer id (tailscope-wal-…)")));
        }
        if *id == self.own_app.0 {
            return Err(conflict(
                "this report carries the coordinator's own writer id: two collectors share one data dir's WAL id \
                 (a copied data dir?); give each collector its own data dir"
                    .into(),
            ));
        }
        if report.budgets != self.configs {
            let mine: Vec<&str> = self.configs.iter().map(|b| b.name.as_str()).collect();
            let theirs: Vec<&str> = report.budgets.iter().map(|b| b.name.as_str()).collect();
            return Err(conflict(format!(
                "the member's [[budget]] tables differ from the coordinator's (member: {theirs:?}, coordinator: \
                 {mine:?}, or the same names with other settings); give every collector of a fleet the same budgets"
            )));
        }
        let shared = &self.shared_stores;
        if let Some(unknown) = report.stores.iter().find(|s| !shared.contains(s)) {
            return Err(conflict(format!(
                "the member writes spans to {unknown}, which the coordinator does not read (it reads {shared:?}); \
                 give every collector of a fleet the same storage.url and [[storage.placement]] rules"
            )));
        }
        let unflushed = match report.unflushed {
            None => None,
            Some(u) => {
                let checked = checked_buckets(&self.configs, u, super::engine::now_ns()).map_err(bad)?;
                Some(checked)
            }
        };
        let mut members = self.members.lock();
        if !members.contains_key(id) && members.len() >= MAX_MEMBERS {
            return Err(Refusal {
                status: axum::http::StatusCode::SERVICE_UNAVAILABLE,
                error: format!(
                    "the coordinator follows {MAX_MEMBERS} members already (a member silent for {} s leaves); no \
                     more are taken",
                    MEMBER_EXPIRY.as_secs()
                ),
            });
        }
        members.insert(id.clone(), MemberState { unflushed, heard: Instant::now() });
        Ok(())
    }

    /// The last verdict, if a sum has completed.
    pub(crate) fn verdict(&self) -> Option<Arc<Verdict>> {
        self.verdict.lock().clone()
    }

    pub(crate) fn set_verdict(&self, verdict: Verdict) {
        *self.verdict.lock() = Some(Arc::new(verdict));
    }

    /// The fleet's figures now: every store's committed spend plus every collector's unflushed spend, each budget
    /// as a [`Budget`] ready to evaluate.
    pub(crate) async fn sum(&self, now: i64) -> Result<(Vec<Budget>, usize), String> {
        // Own buffer first, then the snapshots: a flush in between moves rows into the snapshot, never out of both.
        let ingest = self.ingest.upgrade().ok_or_else(|| SHUT_DOWN.to_string())?;
        let own = self.own.read(&ingest, &self.configs, now).await?;
        let (ids, reports): (Vec<String>, Vec<Option<Unflushed>>) = {
            let mut members = self.members.lock();
            members.retain(|id, m| {
                let live = m.heard.elapsed() < MEMBER_EXPIRY;
                if !live {
                    tracing::warn!(member = %id, "a fleet member has not reported for 10 minutes; its unflushed spend leaves the sum");
                }
                live
            });
            members.iter().map(|(id, m)| (id.clone(), m.unflushed.clone())).unzip()
        };
        let mut apps = vec![self.own_app.clone()];
        apps.extend(ids.iter().map(|id| store::AppId(id.clone())));
        let stores = ingest.span_stores(&apps).await.map_err(|e| e.to_string())?;
        let mut fleet: Vec<Budget> = self.configs.iter().map(|c| Budget::new(c.clone(), now)).collect();
        let earliest = fleet.iter().map(|b| b.config.period.bounds(now).start_ns).min().unwrap_or(now);
        let absorb = |fleet: &mut [Budget], tallies: &[BudgetBuckets]| {
            for t in tallies {
                let Some(b) = fleet.iter_mut().find(|b| b.config.name == t.name) else { continue };
                for (bucket, spend, inference) in &t.buckets {
                    b.absorb(*bucket, *spend, *inference, now);
                }
            }
        };
        {
            let mut ledger = self.ledger.lock().await;
            let mut seen = HashSet::new();
            for st in &stores {
                for file in &st.files {
                    let key = (st.id, file.relative_path.clone());
                    seen.insert(key.clone());
                    if !may_count(file, earliest) || ledger.unreadable.contains_key(&key) {
                        continue;
                    }
                    let tallies = match ledger.files.get(&key) {
                        Some(t) => t.clone(),
                        None => match tally_file(st, file, &self.configs, now).await {
                            Ok(t) => {
                                let t = Arc::new(t);
                                ledger.files.insert(key, t.clone());
                                t
                            }
                            Err(e) => {
                                tracing::error!(
                                    store = %st.location, file = %file.relative_path.display(), error = %e,
                                    "cannot read a stored file's spend; the fleet's budgets leave it out"
                                );
                                ledger.unreadable.insert(key, e);
                                continue;
                            }
                        },
                    };
                    absorb(&mut fleet, &tallies);
                }
            }
            // Files no snapshot lists any more (compacted, expired) leave the ledger.
            ledger.files.retain(|k, _| seen.contains(k));
            ledger.unreadable.retain(|k, _| seen.contains(k));
        }
        let committed = |i: usize| stores.iter().filter_map(|st| st.committed.get(i).copied().flatten()).max();
        let mut collectors = 1;
        for (i, report) in std::iter::once(own).chain(reports).enumerate() {
            if i > 0 {
                collectors += 1;
            }
            let Some(u) = report else { continue };
            // Counted unless a snapshot holds the records already (see the module's notes).
            if committed(i).is_none_or(|c| c < u.first_seq) {
                absorb(&mut fleet, &u.budgets);
            }
        }
        Ok((fleet, collectors))
    }
}

/// The verdict of `budgets` (statuses now) and `alerts`.
pub(crate) fn verdict_of(budgets: &[Budget], alerts: Vec<Arc<AlertEvent>>, collectors: usize, now: i64) -> Verdict {
    Verdict {
        computed_at: DateTime::<Utc>::from_timestamp_nanos(now),
        collectors,
        budgets: budgets.iter().map(|b| b.status(now)).collect(),
        alerts: alerts.iter().take(MAX_VERDICT_ALERTS).map(|e| e.as_ref().clone()).collect(),
    }
}

/// A file of at most 1 MiB (a CA bundle), whole.
fn read_small(path: &std::path::Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    file.take((1 << 20) + 1).read_to_end(&mut bytes).map_err(|e| e.to_string())?;
    if bytes.len() > 1 << 20 {
        return Err("larger than 1 MiB: not a CA bundle".into());
    }
    Ok(bytes)
}

/// What a member knows of the coordinator.
#[derive(Default)]
struct LinkState {
    verdict: Option<Arc<Verdict>>,
    received: Option<Instant>,
    last_error: Option<String>,
}

/// The reporting side of a fleet.
pub(crate) struct MemberLink {
    /// Weak, as for [`Coordinator`].
    ingest: std::sync::Weak<Ingest>,
    app_id: String,
    shared_stores: Vec<String>,
    configs: Vec<BudgetConfig>,
    pub(crate) coordinator: String,
    url: String,
    key: Option<String>,
    client: reqwest::Client,
    pub(crate) interval: Duration,
    pub(crate) stale_after: Duration,
    pub(crate) on_down: FailMode,
    state: Mutex<LinkState>,
    unflushed: UnflushedSpend,
}

/// What a member's guardrail may answer from.
pub(crate) enum Known {
    /// The coordinator's verdict, this old.
    Fresh(Arc<Verdict>, Duration),
    /// None fresh enough: since when nothing was heard (or never), and the last error.
    Stale { age: Option<Duration>, error: Option<String> },
}

impl MemberLink {
    pub(crate) fn new(
        ingest: &Arc<Ingest>,
        configs: Vec<BudgetConfig>,
        fleet: &FleetConfig,
    ) -> Result<MemberLink, String> {
        let coordinator = fleet.coordinator.clone().unwrap_or_default().trim_end_matches('/').to_string();
        // A report waits at most one interval (at least a second) for its answer: the next one is due then.
        let timeout = fleet.exchange_interval.max(Duration::from_secs(1));
        let mut builder = reqwest::Client::builder();
        if let Some(path) = &fleet.ca_file {
            let pem = read_small(path).map_err(|e| format!("fleet.ca_file {}: {e}", path.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| format!("fleet.ca_file {} is not PEM certificates: {e}", path.display()))?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let client = builder
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("cannot build the HTTP client for the coordinator: {e}"))?;
        Ok(MemberLink {
            ingest: Arc::downgrade(ingest),
            app_id: ingest.app_id().0.clone(),
            shared_stores: ingest.shared_store_locations(),
            configs,
            url: format!("{coordinator}{REPORT_PATH}"),
            coordinator,
            key: fleet.key.clone(),
            client,
            interval: fleet.exchange_interval,
            stale_after: fleet.stale_after(),
            on_down: fleet.on_coordinator_down,
            state: Mutex::new(LinkState::default()),
            unflushed: UnflushedSpend::default(),
        })
    }

    /// What the guardrail may answer from now.
    pub(crate) fn known(&self) -> Known {
        let state = self.state.lock();
        let age = state.received.map(|r| r.elapsed());
        match (&state.verdict, age) {
            (Some(v), Some(age)) if age <= self.stale_after => Known::Fresh(v.clone(), age),
            _ => Known::Stale { age, error: state.last_error.clone() },
        }
    }

    /// The last verdict however old, with its age and the last error (for `/api/v1/alerts`).
    pub(crate) fn last(&self) -> (Option<Arc<Verdict>>, Option<Duration>, Option<String>) {
        let state = self.state.lock();
        (state.verdict.clone(), state.received.map(|r| r.elapsed()), state.last_error.clone())
    }

    /// Reports once and keeps the answer.
    pub(crate) async fn exchange(&self) {
        match self.report().await {
            Ok(verdict) => {
                let mut state = self.state.lock();
                if state.last_error.take().is_some() {
                    tracing::info!(coordinator = %self.coordinator, "the budget coordinator answers again");
                }
                state.verdict = Some(Arc::new(verdict));
                state.received = Some(Instant::now());
            }
            Err((e, warming)) => {
                let mut state = self.state.lock();
                if state.last_error.as_deref() != Some(e.as_str()) {
                    if warming {
                        // A coordinator that just started: normal for a few intervals.
                        tracing::info!(coordinator = %self.coordinator, "{e}");
                    } else {
                        tracing::warn!(
                            coordinator = %self.coordinator, error = %e,
                            "cannot exchange spend with the budget coordinator; retrying every exchange interval"
                        );
                    }
                }
                state.last_error = Some(e);
            }
        }
    }

    /// One report and its verdict; `Err` with whether the coordinator is still summing for the first time.
    async fn report(&self) -> Result<Verdict, (String, bool)> {
        let plain = |e: String| (e, false);
        let ingest = self.ingest.upgrade().ok_or_else(|| plain(SHUT_DOWN.into()))?;
        let now = super::engine::now_ns();
        let report = SpendReport {
            app_id: self.app_id.clone(),
            stores: self.shared_stores.clone(),
            budgets: self.configs.clone(),
            unflushed: self.unflushed.read(&ingest, &self.configs, now).await.map_err(plain)?,
        };
        let mut request = self.client.post(&self.url).json(&report);
        if let Some(key) = &self.key {
            request = request.bearer_auth(key);
        }
        let mut response = request.send().await.map_err(|e| plain(format!("{}: {e}", self.url)))?;
        let status = response.status();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| plain(format!("reading the answer: {e}")))? {
            if body.len() + chunk.len() > MAX_VERDICT_BYTES {
                return Err(plain(format!("the answer is larger than {MAX_VERDICT_BYTES} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        if !status.is_success() {
            let why = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
            // What the coordinator says goes into this collector's log and answers: a few lines of it.
            let why: String = why.chars().filter(|c| !c.is_control()).take(512).collect();
            let warming = status == reqwest::StatusCode::SERVICE_UNAVAILABLE && why.contains(WARMING);
            return Err((format!("the coordinator answered {status}: {why}"), warming));
        }
        serde_json::from_slice(&body).map_err(|e| plain(format!("the coordinator's answer is not a verdict: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cost::budget::tests::{Row, batch};

    #[test]
    fn a_report_tallies_each_budget_per_bucket() {
        let configs = vec![BudgetConfig {
            name: "total".into(),
            kind: tailscope_core::cost::BudgetKind::Total,
            period: tailscope_core::cost::BudgetPeriod::Day,
            cap_usd: Some(10.0),
            warn_at: vec![1.0],
            ..Default::default()
        }];
        let now = super::super::engine::now_ns();
        let rows = [
            Row { t: now, cost: Some(1.5), ..Default::default() },
            Row { t: now, cost: Some(2.0), ..Default::default() },
        ];
        let b = batch(&rows);
        let p = Project::default();
        let t = tally(&configs, std::iter::once((&p, &b)), now).unwrap();
        assert_eq!(t.len(), 1);
        let total: f64 = t[0].buckets.iter().map(|(_, s, _)| s).sum();
        assert_eq!(total, 3.5);
        let mut fleet = Budget::new(configs[0].clone(), now);
        for (bucket, s, i) in &t[0].buckets {
            fleet.absorb(*bucket, *s, *i, now);
            fleet.absorb(*bucket, *s, *i, now);
        }
        assert_eq!(fleet.status(now).figures.spend_usd, 7.0);
        // Spend of an earlier period is not absorbed.
        fleet.absorb(now - 3 * 86_400_000_000_000, 100.0, 0.0, now);
        assert_eq!(fleet.status(now).figures.spend_usd, 7.0);
    }

    fn dup_budget() -> BudgetConfig {
        BudgetConfig {
            name: "dup".into(),
            kind: tailscope_core::cost::BudgetKind::DuplicateInference,
            period: tailscope_core::cost::BudgetPeriod::Rolling(Duration::from_secs(120)),
            cap_usd: Some(1.0),
            warn_at: vec![1.0],
            ..Default::default()
        }
    }

    fn report(buckets: Vec<(i64, f64, f64)>) -> Unflushed {
        Unflushed { first_seq: 1, last_seq: 1, budgets: vec![BudgetBuckets { name: "dup".into(), buckets }] }
    }

    /// Regressions from the hostile pass: each of these reports was taken, and made the fleet's figures infinite,
    /// kept a future bucket counted for ever, or held 360,000 buckets per member.
    #[test]
    fn hostile_reports_are_refused_or_held_to_one_period_of_buckets() {
        let configs = vec![dup_budget()];
        let now = super::super::engine::now_ns();
        let err = checked_buckets(&configs, report(vec![(now, 1.7e308, 0.0)]), now).unwrap_err();
        assert!(err.contains("each is an amount from 0 to 1e12"), "{err}");
        let twice = Unflushed {
            first_seq: 1,
            last_seq: 1,
            budgets: vec![report(vec![]).budgets[0].clone(), report(vec![]).budgets[0].clone()],
        };
        assert!(checked_buckets(&configs, twice, now).unwrap_err().contains("twice"));
        // 45,000 buckets at one time, one far in the future, one before the window: one bucket is kept.
        let mut many = vec![(now, 0.001, 0.0); 45_000];
        many.push((i64::MAX, 5.0, 0.0));
        many.push((now - 3_600_000_000_000, 5.0, 0.0));
        let kept = checked_buckets(&configs, report(many), now).unwrap().budgets;
        assert_eq!(kept[0].buckets.len(), 1, "{:?}", kept[0].buckets);
        assert!((kept[0].buckets[0].1 - 45.0).abs() < 1e-6);
        // A bucket past the clock skew is never absorbed (it used to be moved to "now" at every sum).
        let mut b = Budget::new(configs[0].clone(), now);
        b.absorb(i64::MAX, 5.0, 0.0, now);
        assert_eq!(b.status(now).figures.spend_usd, 0.0);
    }

    #[test]
    fn a_file_without_a_budget_column_reads_as_nulls() {
        let now = super::super::engine::now_ns();
        let b = batch(&[Row { t: now, cost: Some(1.0), ..Default::default() }]);
        let i = b.schema().index_of(BUDGET_COLUMNS[8]).unwrap();
        let mut narrow = b.clone();
        narrow.remove_column(i);
        let full = budget_columns(&narrow).unwrap();
        assert_eq!(full.num_columns(), BUDGET_COLUMNS.len());
        assert!(SpanColumns::from_batch(&full).is_ok());
    }
}
