//! The write path between the receivers and the disk: backpressure, WAL group commit, the in-memory buffer
//! and Parquet flushes.
//!
//! ```text
//! receiver -> Ingest::submit -> [WAL thread: write + fsync group] -> ack -> Catalog buffer -> Flusher -> Parquet
//! ```
//!
//! A request is answered only after its rows are fsynced in the WAL, so an acknowledged span survives
//! `kill -9`. Flushes rotate the WAL, list the files they are about to write in a pending-flush manifest
//! ([`writer::FlushManifest`]), write Parquet, then advance the checkpoint; a crash anywhere in between is repaired
//! at start by [`Ingest::start`] (the manifest's uncommitted files removed, the WAL replayed), so nothing is lost
//! and nothing is stored twice. Start-up deletes no other file.
//!
//! When the WAL cannot be written (disk full, permissions, its directory deleted), requests get retryable
//! refusals, [`Ingest::not_ready`] says why for `/readyz`, and the WAL thread probes until writes work again.

use std::collections::BTreeMap;
use std::io::IoSlice;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use datafusion::arrow::record_batch::RecordBatch;
use tailscope_core::catalog::{Catalog, ParquetFile};
use tailscope_core::config::Config;
use tailscope_core::layout::ParquetOptions;
use tailscope_core::memory::{MemoryBudget, Reservation};
use tailscope_core::placement::{Placement, StoreId};
use tailscope_core::projects::Project;
use tailscope_core::schema::Signal;
use tokio::sync::{Mutex, oneshot};

use crate::cost::Pricer;
use crate::error::{IngestError, StorageError};
use crate::normalize::{self, Normalized};
use crate::observe::SpanObserver;
use crate::telemetry::{Metrics, RetentionLabel, StoreLabel, TableLabel};
use crate::wal::{self, RecordData, RecordKind, Wal};
use crate::writer;
use store::{AppId, Tables};

/// How often the tables' logs are read again for commits of other writers (other collectors sharing the tables,
/// compaction): the freshness of their rows in this collector's queries.
const TABLE_REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// Most records written under one fsync.
const GROUP_MAX_RECORDS: usize = 4096;
/// Most bytes written under one fsync.
const GROUP_MAX_BYTES: usize = 64 * 1024 * 1024;

/// How long the WAL thread waits for a command before checking that its segment still exists, and, while writes
/// fail, before probing whether they work again.
const WAL_CHECK_INTERVAL: Duration = Duration::from_millis(500);

enum WalCommand {
    Append {
        kind: RecordKind,
        project: Project,
        batch: RecordBatch,
        /// The record's tag and payload, project included ([`wal::project_payload`]).
        tag: u8,
        payload: Bytes,
        ack: oneshot::Sender<Result<u64, String>>,
    },
    /// Start a new segment; answers the last sequence number written and the closed segments (which a flush
    /// through that sequence number may remove once committed).
    Rotate { ack: oneshot::Sender<Result<(u64, Vec<u64>), String>> },
}

/// Why the WAL cannot be written right now, if it cannot; shared by the WAL thread and `/readyz`.
#[derive(Default)]
struct WalHealth {
    problem: parking_lot::Mutex<Option<String>>,
}

impl WalHealth {
    fn fail(&self, metrics: &Metrics, why: String) {
        metrics.wal_writable.set(0);
        *self.problem.lock() = Some(why);
    }

    fn ok(&self, metrics: &Metrics) {
        if self.problem.lock().take().is_some() {
            tracing::info!("the WAL accepts writes again");
        }
        metrics.wal_writable.set(1);
    }

    fn problem(&self) -> Option<String> {
        self.problem.lock().clone()
    }
}

/// The durable write path. Cheap to share (`Arc`).
pub struct Ingest {
    wal_tx: std::sync::Mutex<Option<std_mpsc::Sender<WalCommand>>>,
    wal_thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
    catalog: Catalog,
    /// The stores flushes commit to: the default store first (`storage.url`, or the data dir), then one per
    /// placement rule, in the config's order (`StoreId(i)` is `stores[i]`).
    stores: Vec<Store>,
    /// The placement rules that send each row to its store.
    placement: Placement,
    /// Tables one of whose stores committed a flush that another store's commit then failed: their rows stay in
    /// the buffer for the retry, so the committed store's new files are not shown until it succeeds (a query
    /// would see those rows twice).
    partly_committed: parking_lot::Mutex<std::collections::BTreeSet<Signal>>,
    metrics: Arc<Metrics>,
    observers: parking_lot::RwLock<Vec<Arc<dyn SpanObserver>>>,
    /// Arrow bytes accepted (or being accepted) and not yet flushed. They are reserved in `memory` (detached from
    /// the request's reservation), and released there when a flush retires them.
    buffered: AtomicUsize,
    /// The process-wide memory budget (`memory.limit_mb`).
    memory: MemoryBudget,
    /// Wakes the flusher as soon as the buffer reaches the flush mark, instead of at its next 250 ms tick: at
    /// hundreds of thousands of spans a second, a tick is tens of MiB of buffer.
    flush_wanted: tokio::sync::Notify,
    max_buffer_bytes: usize,
    shutting_down: AtomicBool,
    flush_lock: Mutex<FlushState>,
    /// This collector's writer id in the tables' transaction identifiers.
    app_id: AppId,
    /// The data dir's exclusive lock, held for the life of the process ([`tailscope_core::layout::DATA_DIR_LOCK`]).
    _data_dir_lock: std::fs::File,
    config: Config,
    /// When the buffer last became non-empty (ns since start of `epoch`), or -1.
    oldest_unflushed: AtomicI64,
    /// When a request was last refused for backpressure (ns since start of `epoch`), or -1.
    last_backpressure: AtomicI64,
    epoch: Instant,
    wal_health: Arc<WalHealth>,
    /// The last flush's error while flushes fail (for `/readyz`), else `None`.
    flush_problem: parking_lot::Mutex<Option<String>>,
}

/// One store's `spans` table as [`Ingest::span_stores`] read it.
#[derive(Debug, Clone)]
pub struct SpanStore {
    pub id: StoreId,
    /// The table's URL.
    pub location: String,
    /// The object store its files are on, or `None`: under `local_dir`.
    pub remote: Option<tailscope_core::catalog::RemoteTables>,
    pub local_dir: PathBuf,
    /// The snapshot's files.
    pub files: Vec<ParquetFile>,
    /// For each app asked about, the last WAL record of its that this snapshot holds.
    pub committed: Vec<Option<u64>>,
}

/// One store of the placement: its Delta tables and where its flushes are staged.
struct Store {
    id: StoreId,
    /// `default`, or the placement rule's name.
    name: String,
    tables: Arc<Tables>,
    /// Where its flushes' files are written (then uploaded, on an object store): the data dir for the default
    /// store, `DATA/placement/NAME/` for a rule's.
    staging: PathBuf,
    /// Where its pending-flush manifest is kept: `wal/` for the default store, the staging directory for a rule's.
    manifest_dir: PathBuf,
}

impl Store {
    /// The `/metrics` label of the store: its URL, or `local`.
    fn label(&self) -> StoreLabel {
        StoreLabel { store: self.tables.remote().map_or_else(|| "local".to_string(), |r| r.url.to_string()) }
    }
}

/// Per store and table, the last WAL record of this collector's that the table holds.
type Committed = BTreeMap<StoreId, BTreeMap<Signal, Option<u64>>>;

fn committed_of(committed: &Committed, store: StoreId) -> impl Fn(Signal) -> Option<u64> + Copy + '_ {
    move |signal| committed.get(&store).and_then(|c| c.get(&signal).copied().flatten())
}

#[derive(Default)]
struct FlushState {
    /// Flushes failed in a row, for the retry backoff.
    failures: u32,
}

/// What recovery did at start, for the log and for tests.
#[derive(Debug, Clone, Default)]
pub struct RecoveryReport {
    /// WAL records replayed.
    pub records: usize,
    /// Rows replayed.
    pub rows: usize,
    /// Files of this collector's own interrupted flush removed (listed in its pending-flush manifest).
    pub removed_files: usize,
    /// Damaged WAL records skipped (kept aside in `wal/corrupt/`).
    pub corrupt_records: u64,
    /// Records found in more than one segment, replayed once.
    pub duplicate_records: u64,
    /// Records past the checkpoint that their table's commit already holds (a crash between commit and
    /// checkpoint), not replayed.
    pub already_committed: usize,
}

/// Puts the WAL's records back in the buffer at start: what queries see until the first flush commits them.
struct Replay<'a> {
    catalog: &'a Catalog,
    pricer: &'a Pricer,
    limits: normalize::Limits,
    wal_dir: &'a Path,
}

impl Replay<'_> {
    /// Replays `records` except those their table's commit holds already (`committed`: each table's transaction
    /// version for this WAL); a trace request that no longer decodes is kept aside and counted. Returns the bytes
    /// the replayed rows hold.
    fn records(
        &self,
        records: Vec<wal::WalRecord>,
        committed: impl Fn(Signal) -> Option<u64>,
        metrics: &Metrics,
        report: &mut RecoveryReport,
    ) -> usize {
        let mut buffered = 0;
        for record in records {
            let signal_of_record = match &record.data {
                RecordData::Rows(signal, _) => *signal,
                RecordData::OtlpTraces(_) => Signal::Spans,
            };
            if committed(signal_of_record).is_some_and(|c| record.seq <= c) {
                report.already_committed += 1;
                continue;
            }
            let project = record.project;
            let (signal, batch) = match record.data {
                RecordData::Rows(signal, batch) => (signal, batch),
                RecordData::OtlpTraces(request) => {
                    match normalize::normalize_traces_limited(&request, self.pricer, self.limits) {
                        Ok(normalized) => (Signal::Spans, normalized.batch),
                        Err(e) => {
                            // Its crc holds, so these are the bytes that were written; keep them for inspection.
                            report.corrupt_records += 1;
                            metrics.wal_corrupt_bytes.inc_by(request.len() as u64);
                            let kept = wal::keep_aside(self.wal_dir, &format!("record-{}", record.seq), &request);
                            tracing::warn!(
                                seq = record.seq, error = %e, kept_aside = kept.is_ok(),
                                "WAL record holds a trace request that no longer decodes; skipped"
                            );
                            continue;
                        }
                    }
                }
            };
            report.records += 1;
            report.rows += batch.num_rows();
            buffered += batch.get_array_memory_size();
            self.catalog.add_batch(signal, record.seq, project, batch);
        }
        buffered
    }
}

impl Ingest {
    /// Opens the data dir, repairs an interrupted flush, replays the WAL into the buffer and flushes it, then
    /// starts the WAL writer thread. The returned catalog view is the one queries should use. `pricer` prices
    /// the trace requests the WAL holds, as it priced them when they were accepted.
    pub async fn start(
        config: Config,
        metrics: Arc<Metrics>,
        pricer: &Pricer,
    ) -> Result<(Arc<Ingest>, RecoveryReport), StorageError> {
        let data_dir = config.data_dir.clone();
        std::fs::create_dir_all(&data_dir).map_err(StorageError::io("creating data directory", &data_dir))?;
        let data_dir_lock = tailscope_core::layout::lock_data_dir(&data_dir)?;
        let wal_dir = data_dir.join("wal");
        // No legitimate record is larger than a request body or the whole write buffer.
        let max_record_bytes = config.ingest.max_body_bytes.max(config.ingest.max_buffer_bytes);
        let recovered = Wal::recover(&wal_dir, max_record_bytes)?;
        let app_id = AppId::for_wal(&writer_id(&wal_dir)?);
        let remote = config.storage.url.as_deref().map(store::remote::connect).transpose()?;
        let tables = Arc::new(Tables::open_at(&data_dir, remote.as_ref(), Some(app_id.clone())).await?);
        let mut stores = vec![Store {
            id: StoreId::DEFAULT,
            name: "default".into(),
            tables,
            staging: data_dir.clone(),
            manifest_dir: wal_dir.clone(),
        }];
        let placement = Placement::new(&config.storage.placement);
        for (i, rule) in config.storage.placement.iter().enumerate() {
            let remote = store::remote::connect_placement(&rule.url)?;
            let staging = data_dir.join("placement").join(&rule.name);
            std::fs::create_dir_all(&staging)
                .map_err(StorageError::io("creating a placement's staging directory", &staging))?;
            let tables = Arc::new(Tables::open_at(&staging, Some(&remote), Some(app_id.clone())).await?);
            tracing::info!(rule = %rule.name, url = %remote.url, "placement rule's store opened");
            stores.push(Store {
                id: StoreId(u16::try_from(i + 1).unwrap_or(u16::MAX)),
                name: rule.name.clone(),
                tables,
                staging: staging.clone(),
                manifest_dir: staging,
            });
        }
        for signal in Signal::ALL {
            let rules = placement.inapplicable(signal);
            if !rules.is_empty() {
                tracing::info!(
                    table = signal.table_name(), rules = ?rules,
                    "these placement rules name a column the table lacks, so they never take its rows"
                );
            }
        }
        // What each table of each store holds of this WAL decides what is replayed, not the checkpoint: a crash
        // between a table's commit and the checkpoint leaves records in the WAL that the table holds already.
        let mut views: BTreeMap<StoreId, BTreeMap<Signal, store::TableView>> = BTreeMap::new();
        let mut committed: Committed = BTreeMap::new();
        for st in &stores {
            for signal in Signal::ALL {
                let view = st.tables.view(signal).await?;
                committed.entry(st.id).or_default().insert(signal, view.committed_through);
                views.entry(st.id).or_default().insert(signal, view);
            }
        }
        let mut removed_files = 0;
        for st in &stores {
            let committed = committed_of(&committed, st.id);
            if let Some(remote) = st.tables.remote() {
                settle_remote(remote, &st.staging, &st.manifest_dir, committed).await?;
            }
            removed_files += writer::settle_pending_flush(&st.staging, &st.manifest_dir, committed)?;
        }
        // A record is replayed unless every store holds it; the flush then leaves out, per store, what it holds.
        let committed_everywhere =
            |signal: Signal| stores.iter().map(|st| committed_of(&committed, st.id)(signal)).min().flatten();
        let memory = MemoryBudget::new(config.memory.limit_bytes());
        let catalog = Catalog::new(&data_dir)
            .with_remote(remote)
            .with_placed(stores[1..].iter().filter_map(|st| st.tables.remote().cloned()).collect())
            .with_memory(memory.clone())
            .with_file_metrics(metrics.parquet_unreadable_files.clone(), metrics.parquet_skipped_files.clone());
        for signal in Signal::ALL {
            let snapshots = views
                .iter()
                .filter_map(|(id, v)| v.get(&signal).map(|v| (*id, Some(v.version), v.files.clone())))
                .collect();
            catalog.reconcile_stores(signal, snapshots, None);
        }
        let mut report = RecoveryReport {
            records: 0,
            rows: 0,
            removed_files,
            corrupt_records: recovered.corrupt_records,
            duplicate_records: recovered.duplicate_records,
            already_committed: 0,
        };
        let replay =
            Replay { catalog: &catalog, pricer, limits: normalize::Limits::from(&config.ingest), wal_dir: &wal_dir };
        let buffered = replay.records(recovered.records, committed_everywhere, &metrics, &mut report);
        // Replayed rows exist already: reserve them past the limit if need be (the flush below releases them).
        memory.force_add(buffered);
        metrics.wal_pending_bytes.set(recovered.pending_bytes as i64);
        metrics.wal_corrupt_records.inc_by(report.corrupt_records);
        metrics.wal_corrupt_bytes.inc_by(recovered.corrupt_bytes);
        metrics.wal_torn_bytes.inc_by(recovered.torn_bytes);
        metrics.wal_duplicate_records.inc_by(recovered.duplicate_records);
        let wal = Wal::open(&wal_dir, recovered.next_seq, recovered.segments, config.storage.wal_fsync)?;
        let wal_health = Arc::new(WalHealth::default());
        let (tx, rx) = std_mpsc::channel();
        let thread = spawn_wal_writer(wal, rx, &catalog, &metrics, &wal_health, &wal_dir)?;
        let epoch = Instant::now();
        let ingest = Arc::new(Ingest {
            wal_tx: std::sync::Mutex::new(Some(tx)),
            wal_thread: std::sync::Mutex::new(Some(thread)),
            catalog,
            stores,
            placement,
            partly_committed: Default::default(),
            metrics: metrics.clone(),
            observers: Default::default(),
            buffered: AtomicUsize::new(buffered),
            memory,
            flush_wanted: tokio::sync::Notify::new(),
            max_buffer_bytes: config.ingest.max_buffer_bytes,
            shutting_down: AtomicBool::new(false),
            flush_lock: Mutex::new(FlushState::default()),
            app_id,
            _data_dir_lock: data_dir_lock,
            config,
            oldest_unflushed: AtomicI64::new(if buffered > 0 { 0 } else { -1 }),
            last_backpressure: AtomicI64::new(-1),
            epoch,
            wal_health,
            flush_problem: parking_lot::Mutex::new(None),
        });
        metrics.buffered_bytes.set(buffered as i64);
        if report.already_committed > 0 {
            tracing::info!(
                records = report.already_committed,
                "WAL records past the checkpoint are in their tables already (the last flush committed, then stopped \
                 before its checkpoint); not replayed"
            );
        }
        if report.records > 0 {
            tracing::info!(records = report.records, rows = report.rows, "replayed WAL; flushing it to Parquet");
            ingest.flush().await?;
        }
        Ok((ingest, report))
    }

    /// This collector's writer id in the tables' transaction identifiers (one per WAL directory).
    pub fn app_id(&self) -> &AppId {
        &self.app_id
    }

    /// The stores this collector's rows can reach that another process can read too (the object stores and local
    /// directories of `storage.url` and the placement rules), by location: not the default store under the data dir.
    pub fn shared_store_locations(&self) -> Vec<String> {
        self.stores
            .iter()
            .filter(|st| st.tables.remote().is_some())
            .map(|st| st.tables.location(Signal::Spans).to_string())
            .collect()
    }

    /// The acknowledged spans no table holds yet, each with its WAL sequence number, read while no flush runs: every
    /// flush from here on commits through a record at or after the last one returned, so a reader of the tables
    /// sees either none of these records as committed or all of them.
    pub async fn unflushed_spans(&self) -> Vec<(u64, Project, RecordBatch)> {
        let _no_flush = self.flush_lock.lock().await;
        self.catalog.batches_with_seq_through(u64::MAX).remove(&Signal::Spans).unwrap_or_default()
    }

    /// The `spans` table of every store as its latest snapshot shows it, with the transaction version of each of
    /// `apps` in that same snapshot (what a fleet's coordinator counts).
    pub async fn span_stores(&self, apps: &[AppId]) -> Result<Vec<SpanStore>, StorageError> {
        let mut out = Vec::with_capacity(self.stores.len());
        for st in &self.stores {
            let (view, committed) = st.tables.view_with_apps(Signal::Spans, apps).await?;
            out.push(SpanStore {
                id: st.id,
                location: st.tables.location(Signal::Spans).to_string(),
                remote: st.tables.remote().cloned(),
                local_dir: st.staging.clone(),
                files: view.files,
                committed,
            });
        }
        Ok(out)
    }

    /// Adds a consumer of acknowledged spans (live windows, budgets). Add observers before serving.
    pub fn add_observer(&self, observer: Arc<dyn SpanObserver>) {
        self.observers.write().push(observer);
    }

    /// What queries can see.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The metrics this path updates.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The process-wide memory budget.
    pub fn memory(&self) -> &MemoryBudget {
        &self.memory
    }

    /// The configuration the path runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Makes a normalised request durable, then visible; returns once it may be acknowledged.
    ///
    /// `request` is the OTLP trace export (protobuf) that `normalized` was made from, when there is one: the WAL
    /// then stores it instead of encoding the rows, and replay normalises it again.
    pub async fn submit(
        &self,
        normalized: &Normalized,
        project: Project,
        request: Option<Bytes>,
    ) -> Result<(), IngestError> {
        let mut reservation = self.memory.empty();
        self.submit_reserved(normalized, project, request, &mut reservation).await
    }

    /// [`Self::submit`] for a request whose memory is held by `reservation` (body and normalised batch, see
    /// [`crate::receiver`]). The batch's bytes move from it to the buffer's share of the budget, so that they stay
    /// reserved until a flush writes them; what the reservation lacks is reserved here, or refused.
    pub async fn submit_reserved(
        &self,
        normalized: &Normalized,
        project: Project,
        request: Option<Bytes>,
        reservation: &mut Reservation,
    ) -> Result<(), IngestError> {
        let signal = normalized.signal;
        let batch = &normalized.batch;
        if batch.num_rows() == 0 {
            return Ok(());
        }
        if self.shutting_down.load(Ordering::Acquire) {
            return Err(IngestError::ShuttingDown);
        }
        // What the WAL holds beyond the last flush is on local disk until the tables take it: bounded, so that an
        // object store down for hours cannot fill the disk.
        let pending = u64::try_from(self.metrics.wal_pending_bytes.get()).unwrap_or(0);
        let wal_cap = self.config.storage.wal_max_bytes as u64;
        if pending >= wal_cap {
            self.note_refusal();
            return Err(IngestError::WalFull { pending, limit: wal_cap });
        }
        let size = batch.get_array_memory_size();
        let before = self.buffered.fetch_add(size, Ordering::AcqRel);
        if before + size > self.max_buffer_bytes && before > 0 {
            self.buffered.fetch_sub(size, Ordering::AcqRel);
            self.note_refusal();
            return Err(IngestError::Backpressure { buffered: before, limit: self.max_buffer_bytes });
        }
        if reservation.size() < size
            && let Err(e) = reservation.try_resize(size, &"the write buffer")
        {
            self.buffered.fetch_sub(size, Ordering::AcqRel);
            self.note_refusal();
            return Err(e.into());
        }
        // From here the buffer owns these bytes of the budget; they are released by the flush that writes them, or
        // below if the WAL refuses the request.
        let owned = reservation.detach(size);
        if before < self.config.storage.flush_max_bytes && before + size >= self.config.storage.flush_max_bytes {
            self.flush_wanted.notify_one();
        }
        let result = self.append(signal, &project, batch, request).await;
        match result {
            Ok(_) => {
                self.metrics.buffered_bytes.set(self.buffered.load(Ordering::Acquire) as i64);
                let now = self.epoch.elapsed().as_nanos() as i64;
                let _ = self.oldest_unflushed.compare_exchange(-1, now, Ordering::AcqRel, Ordering::Acquire);
                if signal == Signal::Spans {
                    for observer in self.observers.read().iter() {
                        observer.observe(&project, batch);
                    }
                }
                Ok(())
            }
            Err(e) => {
                self.buffered.fetch_sub(size, Ordering::AcqRel);
                self.memory.release(owned);
                Err(e)
            }
        }
    }

    /// Remembers a refusal for `/readyz` (see [`Self::backpressure_within`]).
    pub fn note_refusal(&self) {
        self.last_backpressure.store(self.epoch.elapsed().as_nanos() as i64, Ordering::Release);
    }

    async fn append(
        &self,
        signal: Signal,
        project: &Project,
        batch: &RecordBatch,
        request: Option<Bytes>,
    ) -> Result<u64, IngestError> {
        let (kind, payload) = match request {
            Some(request) if signal == Signal::Spans => (RecordKind::OtlpTraces, request),
            _ => {
                let rows = wal::encode_batch(batch).map_err(|e| IngestError::Storage(e.to_string()))?;
                (RecordKind::Rows(signal), Bytes::from(rows))
            }
        };
        let (tag, payload) = wal::project_payload(kind, project, payload);
        let (ack, done) = oneshot::channel();
        let command = WalCommand::Append { kind, project: project.clone(), batch: batch.clone(), tag, payload, ack };
        self.send(command)?;
        match done.await {
            Ok(Ok(seq)) => Ok(seq),
            Ok(Err(e)) => Err(IngestError::Storage(e)),
            Err(_) => Err(IngestError::ShuttingDown),
        }
    }

    fn send(&self, command: WalCommand) -> Result<(), IngestError> {
        let tx = self.wal_tx.lock().unwrap_or_else(|p| p.into_inner());
        match tx.as_ref() {
            Some(tx) => tx.send(command).map_err(|_| IngestError::ShuttingDown),
            None => Err(IngestError::ShuttingDown),
        }
    }

    /// Whether a request was refused for backpressure within the last `within`: clients were told to come back
    /// after `ingest.retry_after`, so until then the collector is not ready for more.
    pub fn backpressure_within(&self, within: Duration) -> bool {
        let last = self.last_backpressure.load(Ordering::Acquire);
        last >= 0 && self.epoch.elapsed().as_nanos() as i64 - last <= within.as_nanos() as i64
    }

    /// Why the write path refuses every request now (the WAL or flushes fail), if it does: what `/readyz` says.
    /// Without the error's text (paths, OS messages), since probes are open to anyone; the text is in the log,
    /// where the failure was reported when it happened.
    pub fn not_ready(&self) -> Option<&'static str> {
        if self.wal_health.problem().is_some() {
            return Some("the WAL cannot be written (the log says why; tailscope_wal_writable on /metrics)");
        }
        self.flush_problem
            .lock()
            .is_some()
            .then_some("flushes to Parquet fail (the log says why; tailscope_flush_errors_total on /metrics)")
    }

    /// Bytes of Arrow data not yet flushed.
    pub fn buffered_bytes(&self) -> usize {
        self.buffered.load(Ordering::Acquire)
    }

    /// Whether a flush is due: enough data, or data older than the flush interval.
    pub fn flush_due(&self) -> bool {
        if self.buffered_bytes() >= self.config.storage.flush_max_bytes {
            return true;
        }
        let oldest = self.oldest_unflushed.load(Ordering::Acquire);
        oldest >= 0
            && self.epoch.elapsed().as_nanos() as i64 - oldest >= self.config.storage.flush_interval.as_nanos() as i64
    }

    /// Writes everything acknowledged so far to Parquet and advances the checkpoint. Concurrent calls run one
    /// after the other. On failure nothing is lost: the rows stay in the WAL and the buffer, and the next flush
    /// tries again.
    pub async fn flush(&self) -> Result<(), StorageError> {
        let mut state = self.flush_lock.lock().await;
        let started = Instant::now();
        let buffered_rows: usize = Signal::ALL.iter().map(|s| self.catalog.buffered_rows(*s)).sum();
        if buffered_rows == 0 {
            return Ok(());
        }
        let (ack, done) = oneshot::channel();
        if self.send(WalCommand::Rotate { ack }).is_err() {
            return Ok(());
        }
        let (through_seq, closed_segments) = match done.await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                return Err(self.flush_failed(
                    &mut state,
                    StorageError::Io {
                        action: "rotating WAL",
                        path: self.config.data_dir.join("wal"),
                        source: std::io::Error::other(e),
                    },
                ));
            }
            Err(_) => return Ok(()),
        };
        let seq_batches = self.catalog.batches_with_seq_through(through_seq);
        let options = ParquetOptions {
            row_group_rows: self.config.storage.row_group_rows,
            zstd_level: self.config.storage.zstd_level,
        };
        let bytes_of = |signal: &Signal| -> usize {
            seq_batches.get(signal).map_or(0, |b| b.iter().map(|(_, _, b)| b.get_array_memory_size()).sum())
        };
        let flushed_bytes: usize = Signal::ALL.iter().map(bytes_of).sum();
        let flushed_rows: usize = seq_batches.values().flatten().map(|(_, _, b)| b.num_rows()).sum();
        // The flush's own working set (sort keys, the gather chunk, the Parquet writer's encoded row group and page
        // buffers) is reserved too, past the limit if need be: refusing the flush would keep memory, not free it.
        // While it runs, ingest is refused earlier instead of filling the buffer past the flush mark by as much.
        let _working_set = self.memory.force_reserve(writer::flush_working_set(flushed_bytes, flushed_rows));
        let committed = match self.settle_stores().await {
            Ok(committed) => committed,
            Err(e) => return Err(self.flush_failed(&mut state, e)),
        };
        let per_store = match self.place(&seq_batches, &committed) {
            Ok(per_store) => per_store,
            Err(e) => return Err(self.flush_failed(&mut state, e)),
        };
        let mut files: BTreeMap<StoreId, Vec<(Signal, ParquetFile)>> = BTreeMap::new();
        for (id, batches) in &per_store {
            let st = &self.stores[usize::from(id.0)];
            let written = match self.write_files(st, batches, through_seq, options.clone()).await {
                Ok(written) => written,
                Err(e) => {
                    self.remove_uncommitted_files().await;
                    return Err(self.flush_failed(&mut state, e));
                }
            };
            if let Err(e) = self.upload(st, &written).await {
                self.remove_uncommitted_files().await;
                return Err(self.flush_failed(&mut state, e));
            }
            files.insert(*id, written);
        }
        crate::failpoint::hit("flush-before-commit");
        let (freed, failed) = self.commit_tables(&files, through_seq, bytes_of).await;
        crate::failpoint::hit("flush-after-commit");
        let freed = freed.min(self.buffered_bytes());
        self.buffered.fetch_sub(freed, Ordering::AcqRel);
        self.memory.release(freed);
        let remaining: usize = Signal::ALL.iter().map(|s| self.catalog.buffered_rows(*s)).sum();
        let now = self.epoch.elapsed().as_nanos() as i64;
        self.oldest_unflushed.store(if remaining > 0 { now } else { -1 }, Ordering::Release);
        self.metrics.buffered_bytes.set(self.buffered_bytes() as i64);
        if let Some(e) = failed {
            self.remove_uncommitted_files().await;
            return Err(self.flush_failed(&mut state, e));
        }
        self.checkpoint(through_seq, &closed_segments, files.keys()).await;
        let bytes: u64 = files.values().flatten().map(|(_, f)| f.size).sum();
        let nfiles = files.values().map(Vec::len).sum::<usize>();
        state.failures = 0;
        self.flush_problem.lock().take();
        self.metrics.flushes.inc();
        self.metrics.parquet_bytes.inc_by(bytes);
        self.metrics.flush_seconds.observe(started.elapsed().as_secs_f64());
        self.metrics.buffered_bytes.set(self.buffered_bytes() as i64);
        tracing::info!(
            rows = buffered_rows,
            files = nfiles,
            bytes,
            through_seq,
            ms = started.elapsed().as_millis() as u64,
            "flushed to Parquet and committed to the Delta tables"
        );
        Ok(())
    }

    /// Settles what an earlier flush of each store left behind (its manifest: objects uploaded and never committed,
    /// local copies of committed files), and returns each store's tables' transaction versions for this WAL.
    async fn settle_stores(&self) -> Result<Committed, StorageError> {
        let committed = self.committed_through().await?;
        for st in &self.stores {
            let of = committed_of(&committed, st.id);
            if let Some(remote) = st.tables.remote() {
                settle_remote(remote, &st.staging, &st.manifest_dir, of).await?;
            }
            let (staging, manifest_dir) = (st.staging.clone(), st.manifest_dir.clone());
            let owned = committed.get(&st.id).cloned().unwrap_or_default();
            let settled = tokio::task::spawn_blocking(move || {
                writer::settle_pending_flush(&staging, &manifest_dir, |s| owned.get(&s).copied().flatten())
            })
            .await;
            match settled {
                Ok(result) => {
                    result?;
                }
                Err(join) => {
                    return Err(StorageError::Io {
                        action: "settling an earlier flush",
                        path: st.staging.clone(),
                        source: std::io::Error::other(join.to_string()),
                    });
                }
            }
        }
        Ok(committed)
    }

    /// Splits a flush's rows by placement rule (one pass over each batch, Arrow's `filter` per store it touches),
    /// leaving out for each store the WAL records its table holds already (a crash between two stores' commits).
    #[allow(clippy::type_complexity)]
    fn place(
        &self,
        batches: &BTreeMap<Signal, Vec<(u64, Project, RecordBatch)>>,
        committed: &Committed,
    ) -> Result<BTreeMap<StoreId, BTreeMap<Signal, Vec<(Project, RecordBatch)>>>, StorageError> {
        let mut out: BTreeMap<StoreId, BTreeMap<Signal, Vec<(Project, RecordBatch)>>> = BTreeMap::new();
        for (signal, batches) in batches {
            for (seq, project, batch) in batches {
                let parts = self.placement.split(*signal, project, batch).map_err(|source| StorageError::Arrow {
                    context: format!("placing the {} rows of WAL record {seq}", signal.table_name()),
                    source,
                })?;
                for (store, part) in parts {
                    if committed_of(committed, store)(*signal).is_some_and(|c| *seq <= c) {
                        continue;
                    }
                    out.entry(store).or_default().entry(*signal).or_default().push((project.clone(), part));
                }
            }
        }
        Ok(out)
    }

    /// Writes one store's files of a flush (not yet part of any table): each table's and project's rows, under the
    /// store's manifest.
    async fn write_files(
        &self,
        st: &Store,
        batches: &BTreeMap<Signal, Vec<(Project, RecordBatch)>>,
        through_seq: u64,
        options: ParquetOptions,
    ) -> Result<Vec<(Signal, ParquetFile)>, StorageError> {
        let (staging, manifest_dir) = (st.staging.clone(), st.manifest_dir.clone());
        let batches = batches.clone();
        let write = tokio::task::spawn_blocking(move || {
            write_flush_files(&staging, &manifest_dir, &batches, through_seq, &options)
        })
        .await;
        match write {
            Ok(result) => result,
            Err(join) => Err(StorageError::Io {
                action: "flushing",
                path: st.staging.clone(),
                source: std::io::Error::other(join.to_string()),
            }),
        }
    }

    /// Per table, one commit per store the flush wrote to, each with the WAL position it covers (`through_seq`)
    /// in that store's log. A table's rows leave the buffer, and its stores' new files appear, in one step once
    /// every store of the table committed; a table one of whose commits failed keeps its rows in the buffer and the
    /// WAL (the stores that committed skip them on the retry). Returns the buffered bytes freed and the first
    /// failure.
    async fn commit_tables(
        &self,
        files: &BTreeMap<StoreId, Vec<(Signal, ParquetFile)>>,
        through_seq: u64,
        bytes_of: impl Fn(&Signal) -> usize,
    ) -> (usize, Option<StorageError>) {
        let mut failed = None;
        let mut freed = 0;
        let mut commits = 0;
        for signal in Signal::ALL {
            let mut views = Vec::new();
            let mut all = true;
            for (id, written) in files {
                let st = &self.stores[usize::from(id.0)];
                let mine: Vec<ParquetFile> =
                    written.iter().filter(|(s, _)| *s == signal).map(|(_, f)| f.clone()).collect();
                if mine.is_empty() {
                    continue;
                }
                if commits > 0 && files.len() > 1 {
                    crate::failpoint::hit("flush-between-store-commits");
                }
                commits += 1;
                let outcome = match st.tables.commit_flush(signal, &mine, through_seq).await {
                    Ok(view) => Ok(view),
                    // A commit whose answer was lost may still have happened: the table says.
                    Err(e) => match st.tables.view(signal).await {
                        Ok(view) if view.committed_through.is_some_and(|c| c >= through_seq) => Ok(view),
                        _ => Err(e),
                    },
                };
                match outcome {
                    Ok(view) => {
                        self.metrics.table_commits.get_or_create(&TableLabel::of(signal)).inc();
                        self.metrics.store_commits.get_or_create(&st.label()).inc();
                        if st.tables.remote().is_some() {
                            // The store holds the committed files now; the local copies only took disk.
                            for file in &mine {
                                remove_local_copy(&st.staging, &file.relative_path);
                            }
                        }
                        views.push((st.id, Some(view.version), view.files));
                    }
                    Err(e) => {
                        all = false;
                        tracing::error!(store = %st.name, table = signal.table_name(), error = %e, "commit failed");
                        failed.get_or_insert(StorageError::from(e));
                    }
                }
            }
            // `all` with no commit of this table: every store held its buffered rows already (a restart replayed
            // records that one store lacked, and none of them is that store's); they retire all the same.
            if all {
                if self.partly_committed.lock().remove(&signal) {
                    // A store that committed an earlier, partly failed flush of this table got none of its rows
                    // again: its files of then are shown now, as the buffer retires their rows.
                    for st in &self.stores {
                        if views.iter().any(|(id, _, _)| *id == st.id) {
                            continue;
                        }
                        if let Ok(view) = st.tables.view(signal).await {
                            views.push((st.id, Some(view.version), view.files));
                        }
                    }
                }
                self.catalog.reconcile_stores(signal, views, Some(through_seq));
                freed += bytes_of(&signal);
            } else if !views.is_empty() {
                self.partly_committed.lock().insert(signal);
            }
        }
        (freed, failed)
    }

    /// After a failed flush: removes the files of the tables whose commit failed, in every store (their rows are
    /// still in the WAL).
    async fn remove_uncommitted_files(&self) {
        // Only what the logs say is not committed may go: without an answer from them (a store that does not
        // answer) nothing is removed, and the manifests stay for the next flush or start-up to settle.
        if let Err(e) = self.settle_stores().await {
            tracing::error!(error = %e, "cannot remove a failed flush's files yet; the next flush or start-up retries");
        }
    }

    /// Uploads a store's files of a flush to its object store (nothing to do for tables under the data dir), one
    /// after the other, before their commit: a commit never names an object that is not there.
    async fn upload(&self, st: &Store, files: &[(Signal, ParquetFile)]) -> Result<(), StorageError> {
        let Some(remote) = st.tables.remote() else {
            return Ok(());
        };
        let label = st.label();
        for (_, file) in files {
            let local = st.staging.join(&file.relative_path);
            let started = Instant::now();
            let bytes = store::remote::upload(remote, &local, &file.relative_path).await?;
            self.metrics.store_upload_seconds.get_or_create(&label).observe(started.elapsed().as_secs_f64());
            self.metrics.store_uploaded_bytes.get_or_create(&label).inc_by(bytes);
        }
        Ok(())
    }

    /// Every store's tables hold every row through `through_seq`: the checkpoint only spares the next start reading
    /// records the tables' transaction versions would skip anyway. Then the stores' manifests (`written`: the
    /// stores this flush wrote to) and the WAL segments the flush covered go.
    async fn checkpoint<'a>(
        &self,
        through_seq: u64,
        closed_segments: &[u64],
        written: impl Iterator<Item = &'a StoreId>,
    ) {
        let wal_dir = self.config.data_dir.join("wal");
        let manifests: Vec<PathBuf> = written.map(|id| self.stores[usize::from(id.0)].manifest_dir.clone()).collect();
        let checkpoint = {
            let wal_dir = wal_dir.clone();
            tokio::task::spawn_blocking(move || {
                wal::write_checkpoint(&wal_dir, through_seq)?;
                manifests.iter().try_for_each(|dir| writer::FlushManifest::remove(dir))
            })
            .await
        };
        match checkpoint {
            Ok(Ok(())) => match Wal::remove_segments(&wal_dir, closed_segments) {
                Ok(freed) => {
                    self.metrics.wal_pending_bytes.dec_by(freed as i64);
                }
                Err(e) => tracing::warn!(error = %e, "flushed, but could not remove old WAL segments; will retry"),
            },
            Ok(Err(e)) => tracing::warn!(error = %e, "committed, but could not write the WAL checkpoint; will retry"),
            Err(e) => tracing::warn!(error = %e, "committed, but could not write the WAL checkpoint; will retry"),
        }
    }

    /// Each store's tables' transaction versions for this collector's WAL (the last record each holds), as the
    /// logs say now.
    async fn committed_through(&self) -> Result<Committed, StorageError> {
        let mut out: Committed = BTreeMap::new();
        for st in &self.stores {
            for signal in Signal::ALL {
                out.entry(st.id).or_default().insert(signal, st.tables.view(signal).await?.committed_through);
            }
        }
        Ok(out)
    }

    /// Reads every store's tables' logs again and shows what other writers (other collectors, compaction)
    /// committed. A table with a flush committed to some of its stores only is left as shown until the retry.
    pub async fn refresh_tables(&self) -> Result<(), StorageError> {
        for signal in Signal::ALL {
            let mut snapshots = Vec::with_capacity(self.stores.len());
            let mut through: Option<Option<u64>> = None;
            for st in &self.stores {
                let view = st.tables.view(signal).await?;
                // Retire only what every store holds.
                through = Some(through.map_or(view.committed_through, |t| t.min(view.committed_through)));
                snapshots.push((st.id, Some(view.version), view.files));
            }
            if self.partly_committed.lock().contains(&signal) {
                continue;
            }
            self.catalog.reconcile_stores(signal, snapshots, through.flatten());
        }
        Ok(())
    }

    /// The Delta tables of the default store (`storage.url`, or the data dir).
    pub fn tables(&self) -> &Arc<Tables> {
        &self.stores[0].tables
    }

    fn flush_failed(&self, state: &mut FlushState, e: StorageError) -> StorageError {
        state.failures += 1;
        self.metrics.flush_errors.inc();
        for st in &self.stores {
            self.metrics.store_retries.get_or_create(&st.label()).inc();
        }
        *self.flush_problem.lock() = Some(e.to_string());
        tracing::error!(error = %e, attempt = state.failures, "flush failed; data stays in the WAL and the buffer, retrying");
        e
    }

    /// The delay before retrying after `failures` failed flushes (exponential, capped at a minute).
    pub async fn flush_backoff(&self) -> Duration {
        let failures = self.flush_lock.lock().await.failures;
        Duration::from_millis(500u64.saturating_mul(1 << failures.min(7))).min(Duration::from_secs(60))
    }

    /// Flushes whenever due, until shutdown begins. Run it as a task.
    pub async fn run_flusher(self: Arc<Self>) {
        let mut wait = Duration::from_millis(250);
        let mut last_refresh = Instant::now();
        loop {
            if wait > Duration::from_millis(250) {
                // Backing off after a failed flush: a full buffer must not hurry the retry.
                tokio::time::sleep(wait).await;
            } else {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = self.flush_wanted.notified() => {}
                }
            }
            if self.shutting_down.load(Ordering::Acquire) {
                return;
            }
            wait = Duration::from_millis(250);
            if self.flush_due() && self.flush().await.is_err() {
                wait = self.flush_backoff().await;
            }
            if last_refresh.elapsed() >= TABLE_REFRESH_INTERVAL {
                last_refresh = Instant::now();
                if let Err(e) = self.refresh_tables().await {
                    tracing::warn!(error = %e, "cannot read the tables' logs; queries show what was read last");
                }
            }
        }
    }

    /// Compaction, retention and vacuum of every table, every `storage.maintenance_interval`, until shutdown
    /// begins. Run it as a task. Each step is a Delta commit (or delta-rs's vacuum) of one table; a failed step is
    /// logged, counted (`tailscope_maintenance_errors`) and tried again at the next interval.
    pub async fn run_maintenance(self: Arc<Self>) {
        loop {
            tokio::time::sleep(self.config.storage.maintenance_interval).await;
            if self.shutting_down.load(Ordering::Acquire) {
                return;
            }
            self.maintain(chrono::Utc::now()).await;
        }
    }

    /// One round of compaction, retention and vacuum over every table, as of `now`.
    pub async fn maintain(&self, now: chrono::DateTime<chrono::Utc>) {
        let storage = &self.config.storage;
        let options = ParquetOptions { row_group_rows: storage.row_group_rows, zstd_level: storage.zstd_level };
        let policy = store::maintenance::CompactionPolicy {
            target_bytes: storage.compaction_target_bytes as u64,
            min_files: storage.compaction_min_files,
            closed_after: storage.compaction_after,
        };
        // Every store's tables, one after the other: retention and vacuum run on each (with the same settings, a
        // size cap applying to each store's table on its own); compaction on tables under the data dir only.
        for signal in Signal::ALL {
            let mut table_bytes = 0u64;
            for st in &self.stores {
                table_bytes = table_bytes.saturating_add(self.maintain_table(st, signal, &options, &policy, now).await);
            }
            let label = TableLabel::of(signal);
            self.metrics.table_bytes.get_or_create(&label).set(i64::try_from(table_bytes).unwrap_or(i64::MAX));
        }
    }

    /// One round of maintenance of one store's table; returns its committed bytes after retention.
    async fn maintain_table(
        &self,
        st: &Store,
        signal: Signal,
        options: &ParquetOptions,
        policy: &store::maintenance::CompactionPolicy,
        now: chrono::DateTime<chrono::Utc>,
    ) -> u64 {
        {
            let label = TableLabel::of(signal);
            let bytes = self.apply_retention(st, signal, now).await;
            // On an object store the staging dir holds compaction's local copies (`store::maintenance`).
            let compacted = st.tables.compact(&st.staging, signal, options, policy, now).await;
            match compacted {
                Ok((report, view)) => {
                    if let Some(view) = view {
                        self.catalog.reconcile_stores(signal, vec![(st.id, Some(view.version), view.files)], None);
                    }
                    if report.partitions > 0 {
                        self.metrics.compactions.get_or_create(&label).inc_by(report.partitions as u64);
                        self.metrics.compaction_files_removed.get_or_create(&label).inc_by(report.files_removed as u64);
                        self.metrics.compaction_files_written.get_or_create(&label).inc_by(report.files_written as u64);
                        self.metrics.compaction_bytes_written.get_or_create(&label).inc_by(report.bytes_written);
                        tracing::info!(
                            table = signal.table_name(),
                            partitions = report.partitions,
                            files_removed = report.files_removed,
                            files_written = report.files_written,
                            rows = report.rows,
                            bytes_read = report.bytes_read,
                            bytes_written = report.bytes_written,
                            "compacted"
                        );
                    }
                }
                Err(e) => {
                    self.metrics.maintenance_errors.get_or_create(&label).inc();
                    tracing::warn!(table = signal.table_name(), error = %e, "compaction failed; retrying later");
                }
            }
            match st.tables.vacuum(signal, self.config.vacuum_grace()).await {
                Ok(0) => {}
                Ok(deleted) => {
                    self.metrics.vacuum_files_deleted.get_or_create(&label).inc_by(deleted as u64);
                    tracing::info!(table = signal.table_name(), files = deleted, "vacuum deleted removed files");
                }
                Err(e) => {
                    self.metrics.maintenance_errors.get_or_create(&label).inc();
                    tracing::warn!(table = signal.table_name(), error = %e, "vacuum failed; retrying later");
                }
            }
            bytes
        }
    }

    /// Retention of one table, as of `now`: the partitions past their maximum age or over a size cap
    /// (`store::retention::plan`) go in one Delta commit, logged and counted. Returns the table's committed bytes
    /// (before the round, when it failed). A failure is logged, counted and tried again at the next round.
    async fn apply_retention(&self, st: &Store, signal: Signal, now: chrono::DateTime<chrono::Utc>) -> u64 {
        let label = TableLabel::of(signal);
        let policy = store::retention::RetentionPolicy::from_config(&self.config, signal);
        let result = async {
            let view = st.tables.view(signal).await?;
            let plan = store::retention::plan(signal, &view, &policy, now);
            let after = st.tables.remove_partitions(&plan).await?;
            Ok::<_, store::StoreError>((plan, after))
        }
        .await;
        let (plan, after) = match result {
            Ok(done) => done,
            Err(e) => {
                self.metrics.maintenance_errors.get_or_create(&label).inc();
                tracing::warn!(table = signal.table_name(), store = %st.name, error = %e, "retention failed; retrying later");
                return st.tables.view(signal).await.map_or(0, |v| v.files.iter().map(|f| f.size).sum());
            }
        };
        let bytes = match after {
            Some(view) => {
                let bytes = view.files.iter().map(|f| f.size).sum::<u64>();
                self.catalog.reconcile_stores(signal, vec![(st.id, Some(view.version), view.files)], None);
                bytes
            }
            None => plan.bytes_before,
        };
        for removal in &plan.removals {
            let reason = RetentionLabel { table: label.table.clone(), reason: removal.reason.label().to_string() };
            self.metrics.retention_partitions_removed.get_or_create(&reason).inc();
            self.metrics.retention_bytes_removed.get_or_create(&reason).inc_by(removal.bytes());
            self.metrics.retention_files_removed.get_or_create(&label).inc_by(removal.files.len() as u64);
            tracing::info!(
                table = signal.table_name(),
                store = %st.name,
                project = %removal.partition.project,
                date = %removal.partition.date,
                hour = %removal.partition.hour,
                files = removal.files.len(),
                bytes = removal.bytes(),
                rows = removal.rows(),
                reason = %removal.reason,
                "retention removed a partition"
            );
        }
        for (what, cap, left) in &plan.still_over {
            tracing::warn!(
                table = signal.table_name(), store = %st.name, over = %what, max_bytes = cap, bytes = left,
                "retention cannot meet a size cap without removing the current hour, which it never removes"
            );
        }
        bytes
    }

    /// Stops accepting, flushes everything and stops the WAL thread. Returns the final flush's result.
    pub async fn shutdown(&self) -> Result<(), StorageError> {
        self.shutting_down.store(true, Ordering::Release);
        let result = self.flush().await;
        self.wal_tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        let thread = self.wal_thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        result
    }

    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }
}

/// Writes one flush's files: settles a manifest an earlier flush left behind (`committed_through`: each table's
/// transaction version for this WAL), lists the files in a new manifest, writes them. Returns the files, to be
/// committed; on error none of them stays (they are removed, or, should that fail, left listed in the manifest for
/// the next flush or start-up to remove).
fn write_flush_files(
    data_dir: &Path,
    wal_dir: &Path,
    batches: &BTreeMap<Signal, Vec<(Project, RecordBatch)>>,
    through_seq: u64,
    options: &ParquetOptions,
) -> Result<Vec<(Signal, ParquetFile)>, StorageError> {
    // The store's earlier manifest was settled before ([`Ingest::settle_stores`]): none of these files is
    // committed, so on error every one of them goes.
    let committed_through = |_: Signal| None;
    // One plan per table and project: a project's rows go to its own directories only.
    let mut by_project: BTreeMap<(Signal, Project), Vec<RecordBatch>> = BTreeMap::new();
    for (signal, batches) in batches {
        for (project, batch) in batches {
            by_project.entry((*signal, project.clone())).or_default().push(batch.clone());
        }
    }
    let plans = by_project
        .iter()
        .map(|((signal, project), batches)| {
            writer::plan_signal(*signal, project, batches, through_seq).map(|p| ((*signal, project.clone()), p))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let manifest =
        writer::FlushManifest { through_seq, files: plans.iter().flat_map(|(_, p)| p.relative_paths()).collect() };
    manifest.write(wal_dir)?;
    let mut files = Vec::new();
    let written = plans.iter().try_for_each(|(key, plan)| {
        let batches = by_project.get(key).map(Vec::as_slice).unwrap_or_default();
        files.extend(writer::write_plan(data_dir, plan, batches, options)?.into_iter().map(|f| (key.0, f)));
        Ok::<_, StorageError>(())
    });
    match written {
        Ok(()) => Ok(files),
        Err(e) => {
            if let Err(cleanup) = writer::settle_pending_flush(data_dir, wal_dir, committed_through) {
                tracing::error!(error = %cleanup, "cannot remove the files of a failed flush; the next flush retries");
            }
            Err(e)
        }
    }
}

/// For tables on an object store, the store's half of settling an interrupted flush, before
/// [`writer::settle_pending_flush`] settles the local files and removes the manifest: the uploaded objects of a table
/// whose commit does not cover the flush are deleted (only this collector's own: the files its manifest lists, named
/// with the flush's WAL position), and the local copies of committed files, which the store holds, go. Should a
/// delete fail, the manifest stays for the next try.
async fn settle_remote(
    remote: &tailscope_core::catalog::RemoteTables,
    data_dir: &Path,
    wal_dir: &Path,
    committed_through: impl Fn(Signal) -> Option<u64>,
) -> Result<(), StorageError> {
    let Some(manifest) = writer::FlushManifest::read(wal_dir) else {
        return Ok(());
    };
    let mut deleted = 0;
    for relative in &manifest.files {
        let committed = writer::FlushManifest::signal_of(relative)
            .and_then(&committed_through)
            .is_some_and(|c| c >= manifest.through_seq);
        if committed {
            remove_local_copy(data_dir, relative);
        } else if store::remote::delete(remote, relative).await? {
            deleted += 1;
        }
    }
    if deleted > 0 {
        tracing::info!(
            objects = deleted,
            through_seq = manifest.through_seq,
            url = %remote.url,
            "deleted the uploaded objects of this collector's own flush that never committed; its rows are replayed \
             from the WAL"
        );
    }
    Ok(())
}

/// Removes the local copy of a file the object store holds (committed); a failure only leaves a file on disk.
fn remove_local_copy(data_dir: &Path, relative: &Path) {
    let path = data_dir.join(relative);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "cannot remove the local copy of an uploaded file")
        }
    }
}

/// The WAL segment's writer id (`wal/writer-id`), made once: names this WAL in the tables' transaction identifiers.
fn writer_id(wal_dir: &Path) -> Result<String, StorageError> {
    let path = wal_dir.join(WRITER_ID);
    match std::fs::read_to_string(&path) {
        Ok(text) if is_writer_id(text.trim()) => return Ok(text.trim().to_string()),
        Ok(_) => {
            return Err(StorageError::Io {
                action: "reading the WAL's writer id (it is damaged: restore it, or remove the WAL directory once \
                         its records are flushed)",
                path,
                source: std::io::Error::other("not 32 hex digits"),
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(StorageError::Io { action: "reading the WAL's writer id", path, source: e }),
    }
    std::fs::create_dir_all(wal_dir).map_err(StorageError::io("creating WAL directory", wal_dir))?;
    let id = format!("{:032x}", rand::random::<u128>());
    wal::write_atomically(wal_dir, WRITER_ID, id.as_bytes())?;
    Ok(id)
}

/// The file in the WAL directory that holds its writer id.
pub const WRITER_ID: &str = "writer-id";

fn is_writer_id(text: &str) -> bool {
    text.len() == 32 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A record of the group being written: its sequence number, rows and the request's acknowledgement.
type Queued = (u64, Signal, Project, RecordBatch, oneshot::Sender<Result<u64, String>>);

/// Starts the WAL writer thread ([`wal_writer`]) on its own OS thread: its fsyncs must not block the runtime.
fn spawn_wal_writer(
    wal: Wal,
    rx: std_mpsc::Receiver<WalCommand>,
    catalog: &Catalog,
    metrics: &Arc<Metrics>,
    health: &Arc<WalHealth>,
    wal_dir: &Path,
) -> Result<std::thread::JoinHandle<()>, StorageError> {
    let (catalog, metrics, health) = (catalog.clone(), metrics.clone(), health.clone());
    std::thread::Builder::new()
        .name("tailscope-wal".into())
        .spawn(move || wal_writer(wal, rx, catalog, metrics, health))
        .map_err(StorageError::io("starting WAL writer thread", wal_dir))
}

/// The group-commit loop: blocks for one command, takes whatever else is queued, writes it all with one
/// fsync, then makes the rows visible and acknowledges. Between commands it checks that its segment still exists
/// and, while writes fail, probes until they work again.
// Long by design: the group-commit loop reads as one cycle (take commands, write, fsync, then make visible and
// acknowledge); its steps share the group's buffers, reused across cycles.
fn wal_writer(
    mut wal: Wal,
    rx: std_mpsc::Receiver<WalCommand>,
    catalog: Catalog,
    metrics: Arc<Metrics>,
    health: Arc<WalHealth>,
) {
    let mut headers: Vec<[u8; wal::RECORD_HEADER]> = Vec::new();
    let mut payloads: Vec<Bytes> = Vec::new();
    let mut group: Vec<Queued> = Vec::new();
    loop {
        let first = match rx.recv_timeout(WAL_CHECK_INTERVAL) {
            Ok(command) => command,
            Err(std_mpsc::RecvTimeoutError::Timeout) => {
                check_wal(&mut wal, &catalog, &metrics, &health);
                continue;
            }
            Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
        };
        let mut pending = Some(first);
        let mut rotate = None;
        let mut group_bytes = 0;
        headers.clear();
        payloads.clear();
        group.clear();
        while let Some(command) = pending.take() {
            match command {
                WalCommand::Append { kind, project, batch, tag, payload, ack } => {
                    let seq = wal.reserve(1);
                    headers.push(wal::record_header_tagged(seq, tag, &payload));
                    group_bytes += wal::RECORD_HEADER + payload.len();
                    payloads.push(payload);
                    group.push((seq, kind.signal(), project, batch, ack));
                }
                WalCommand::Rotate { ack } => {
                    // Rotation applies after the records queued before it.
                    rotate = Some(ack);
                    break;
                }
            }
            if group.len() >= GROUP_MAX_RECORDS || group_bytes >= GROUP_MAX_BYTES {
                break;
            }
            pending = rx.try_recv().ok();
        }
        if !group.is_empty() {
            let last_seq = group.last().map_or(0, |g| g.0);
            let write = |wal: &mut Wal| {
                let mut parts: Vec<IoSlice<'_>> = headers
                    .iter()
                    .zip(&payloads)
                    .flat_map(|(header, payload)| [IoSlice::new(header), IoSlice::new(payload)])
                    .collect();
                wal.append_parts(&mut parts, last_seq)
            };
            let mut result = write(&mut wal);
            if let Err(StorageError::WalVanished { .. }) = result {
                // The group went to a deleted file: recreate the WAL with everything acknowledged, then write the
                // group again. Nothing is acknowledged before both are durable.
                result = replace_lost_wal(&mut wal, &catalog, &metrics).and_then(|()| write(&mut wal));
            }
            match result {
                Ok(()) => {
                    health.ok(&metrics);
                    metrics.wal_bytes.inc_by(group_bytes as u64);
                    metrics.wal_pending_bytes.inc_by(group_bytes as i64);
                    metrics.wal_syncs.inc();
                    for (seq, signal, project, batch, ack) in group.drain(..) {
                        catalog.add_batch(signal, seq, project, batch);
                        let _ = ack.send(Ok(seq));
                    }
                }
                Err(e) => {
                    let message = e.to_string();
                    tracing::error!(error = %message, records = group.len(), "WAL write failed; requests get a retryable error");
                    health.fail(&metrics, message.clone());
                    for (_, _, _, _, ack) in group.drain(..) {
                        let _ = ack.send(Err(message.clone()));
                    }
                }
            }
        }
        if let Some(ack) = rotate {
            let mut rotated = wal.rotate();
            if rotated.is_err() && wal.segment_lost() {
                rotated = replace_lost_wal(&mut wal, &catalog, &metrics).and_then(|()| wal.rotate());
            }
            let _ = ack.send(rotated.map(|closed| (wal.last_written(), closed)).map_err(|e| e.to_string()));
        }
    }
}

/// Recreates a lost WAL (its segment unlinked, its directory deleted) holding every acknowledged, unflushed record.
fn replace_lost_wal(wal: &mut Wal, catalog: &Catalog, metrics: &Metrics) -> Result<(), StorageError> {
    let records = catalog
        .buffered_records()
        .map_err(|source| StorageError::Arrow { context: "collecting the unflushed records".into(), source })?;
    tracing::error!(
        dir = %wal.dir().display(), records = records.len(),
        "the WAL segment in use was deleted; recreating the WAL with every acknowledged, unflushed record"
    );
    metrics.wal_segments_lost.inc();
    wal.replace_lost_segment(&records)
}

/// Between commands: a deleted segment is replaced at once (acknowledged rows must not stay in memory only), and
/// while writes fail, a probe write tells when they work again.
fn check_wal(wal: &mut Wal, catalog: &Catalog, metrics: &Metrics, health: &WalHealth) {
    if wal.segment_lost() {
        match replace_lost_wal(wal, catalog, metrics) {
            Ok(()) => health.ok(metrics),
            Err(e) => health.fail(metrics, e.to_string()),
        }
        return;
    }
    if health.problem().is_none() {
        return;
    }
    // The probe needs room for a typical group, not one byte: a full disk often still has part of a page.
    let probe = wal.dir().join("probe.tmp");
    let result = (|| {
        let mut f = std::fs::File::create(&probe)?;
        std::io::Write::write_all(&mut f, &[0u8; 256 * 1024])?;
        f.sync_all()
    })();
    let _ = std::fs::remove_file(&probe);
    match result {
        Ok(()) => health.ok(metrics),
        Err(e) => health.fail(metrics, format!("probe write to {}: {e}", probe.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Array, Float64Array, StringArray};
    use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    use prost::Message;
    use tailscope_core::schema::SpanColumn;

    fn attr(key: &str, value: any_value::Value) -> KeyValue {
        KeyValue { key: key.into(), value: Some(AnyValue { value: Some(value) }), ..Default::default() }
    }

    /// Three priced LLM spans, one second apart, and one span with an all-zero trace id (rejected).
    fn request() -> ExportTraceServiceRequest {
        let t0 = 1_700_000_000_000_000_000u64;
        let mut spans: Vec<Span> = (0..3u64)
            .map(|i| Span {
                trace_id: vec![7; 16],
                span_id: (i + 1).to_be_bytes().to_vec(),
                name: "chat gpt-4o".into(),
                start_time_unix_nano: t0 + i * 1_000_000_000,
                end_time_unix_nano: t0 + i * 1_000_000_000 + 5_000_000,
                attributes: vec![
                    attr("gen_ai.provider.name", any_value::Value::StringValue("openai".into())),
                    attr("gen_ai.request.model", any_value::Value::StringValue("gpt-4o".into())),
                    attr("gen_ai.usage.input_tokens", any_value::Value::IntValue(1000 * (i as i64 + 1))),
                    attr("gen_ai.usage.output_tokens", any_value::Value::IntValue(100)),
                ],
                ..Default::default()
            })
            .collect();
        spans.push(Span { trace_id: vec![0; 16], span_id: vec![9; 8], name: "bad".into(), ..Default::default() });
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans { spans, ..Default::default() }],
                ..Default::default()
            }],
        }
    }

    fn column<T: 'static>(batch: &RecordBatch, column: SpanColumn) -> &T {
        column.of(batch).unwrap().as_any().downcast_ref::<T>().unwrap()
    }

    /// The WAL keeps trace requests as received; after a crash, replay must rebuild exactly the rows that were
    /// acknowledged (same spans, same prices, the same span still rejected).
    #[tokio::test]
    async fn replayed_trace_requests_give_the_acknowledged_rows() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config { data_dir: dir.path().to_path_buf(), ..Config::default() };
        let pricer = Pricer::default();
        let body = Bytes::from(request().encode_to_vec());
        let acknowledged = normalize::normalize_traces_protobuf(&body, &pricer).unwrap();
        assert_eq!((acknowledged.batch.num_rows(), acknowledged.rejected), (3, 1));
        {
            let (ingest, _) = Ingest::start(config.clone(), Metrics::new(), &pricer).await.unwrap();
            ingest.submit(&acknowledged, Project::default(), Some(body.clone())).await.unwrap();
            // Dropped without a flush or shutdown: the rows exist only in the WAL, as after `kill -9`.
        }
        let (ingest, report) = Ingest::start(config, Metrics::new(), &pricer).await.unwrap();
        assert_eq!((report.records, report.rows), (1, 3));
        let files = ingest.catalog().snapshot(Signal::Spans).files;
        assert_eq!(files.len(), 1, "replay flushes the recovered rows");
        let file = std::fs::File::open(dir.path().join(&files[0].relative_path)).unwrap();
        let stored: Vec<RecordBatch> =
            ParquetRecordBatchReaderBuilder::try_new(file).unwrap().build().unwrap().map(|b| b.unwrap()).collect();
        assert_eq!(stored.len(), 1);
        let stored = &stored[0];
        let ids = |b: &RecordBatch| {
            column::<StringArray>(b, SpanColumn::SpanId).iter().map(|v| v.map(str::to_string)).collect::<Vec<_>>()
        };
        assert_eq!(ids(stored), ids(&acknowledged.batch));
        let costs = |b: &RecordBatch| column::<Float64Array>(b, SpanColumn::CostUsd).iter().collect::<Vec<_>>();
        assert!(costs(stored).iter().all(|c| c.is_some_and(|c| c > 0.0)), "{:?}", costs(stored));
        assert_eq!(costs(stored), costs(&acknowledged.batch));
        assert_eq!(stored.num_columns(), acknowledged.batch.num_columns());
        for (i, field) in acknowledged.batch.schema().fields().iter().enumerate() {
            assert_eq!(stored.column(i).to_data(), acknowledged.batch.column(i).to_data(), "column {}", field.name());
        }
    }

    /// Issue #12, item 2: a request with a 50 MiB attribute acknowledged while a 60,000-span request was still
    /// being normalised puts both in the WAL in that order. Replay normalised them in turn, the second sized
    /// from the first's per-row hint (63 TiB), and every restart aborted with 60,002 acknowledged spans stuck.
    #[tokio::test]
    async fn replay_of_a_huge_attribute_then_a_big_batch_restores_both() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config { data_dir: dir.path().to_path_buf(), ..Config::default() };
        let pricer = Pricer::default();
        let mut big = request();
        let template = big.resource_spans[0].scope_spans[0].spans[0].clone();
        big.resource_spans[0].scope_spans[0].spans =
            (0..60_000u64).map(|i| Span { span_id: (i + 1).to_be_bytes().to_vec(), ..template.clone() }).collect();
        let big_body = Bytes::from(big.encode_to_vec());
        // Normalised first (the big request was still in flight), stored second.
        let big_rows = normalize::normalize_traces_protobuf(&big_body, &pricer).unwrap();
        let mut huge = request();
        huge.resource_spans[0].scope_spans[0].spans.truncate(2);
        huge.resource_spans[0].scope_spans[0].spans[0]
            .attributes
            .push(attr("gen_ai.prompt", any_value::Value::StringValue("x".repeat(50 << 20))));
        let huge_body = Bytes::from(huge.encode_to_vec());
        let huge_rows = normalize::normalize_traces_protobuf(&huge_body, &pricer).unwrap();
        {
            let (ingest, _) = Ingest::start(config.clone(), Metrics::new(), &pricer).await.unwrap();
            ingest.submit(&huge_rows, Project::default(), Some(huge_body)).await.unwrap();
            ingest.submit(&big_rows, Project::default(), Some(big_body)).await.unwrap();
        }
        let (ingest, report) = Ingest::start(config, Metrics::new(), &pricer).await.unwrap();
        assert_eq!((report.records, report.rows), (2, 60_002));
        let files = ingest.catalog().snapshot(Signal::Spans).files;
        let stored: usize = files
            .iter()
            .map(|f| {
                let file = std::fs::File::open(dir.path().join(&f.relative_path)).unwrap();
                ParquetRecordBatchReaderBuilder::try_new(file)
                    .unwrap()
                    .build()
                    .unwrap()
                    .map(|b| b.unwrap().num_rows())
                    .sum::<usize>()
            })
            .sum();
        assert_eq!(stored, 60_002);
    }
}
