//! What a query can see: the committed Parquet files of each table plus the acknowledged rows not yet flushed.
//!
//! The collector keeps this list itself instead of letting query engines list directories, for two reasons:
//! a file appears in the catalog only after it was renamed into place *and* its rows left the buffer, in one
//! step under one lock, so a query never sees a row twice or misses one during a flush; and a query does not pay
//! for a directory walk. A [`Catalog`] opened on a directory without a running collector (the CLI's `--data-dir`)
//! lists the files once.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::record_batch::RecordBatch;
use parking_lot::{Mutex, RwLock};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use crate::layout::Partition;
use crate::memory::MemoryBudget;
use crate::placement::StoreId;
use crate::projects::Project;
use crate::schema::Signal;

/// One committed Parquet file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParquetFile {
    /// Path relative to the data dir, e.g. `spans/project=a/date=2026-11-21/hour=09/000000000042_…parquet`.
    pub relative_path: PathBuf,
    /// Size in bytes.
    pub size: u64,
    /// The project whose rows the file holds (its `project=` directory; `default` without one).
    pub project: Project,
    /// The `date=` partition value (`YYYY-MM-DD`).
    pub date: String,
    /// The `hour=` partition value (`HH`).
    pub hour: String,
    /// Smallest and largest value of the signal's time column in the file, in ns since the epoch, when known
    /// (from the file name tailscope gives its files; `None` for files placed there by others).
    pub time_range_ns: Option<(i64, i64)>,
    /// Rows in the file, when known (the writer's count, or the Delta log's `numRecords`).
    pub rows: Option<u64>,
    /// The store the file is on (placement rules, [`crate::placement`]): the default store unless a rule sent its
    /// rows elsewhere.
    pub store: StoreId,
}

impl ParquetFile {
    /// Builds the entry for a file at `relative_path` (`SIGNAL/[project=P/]date=…/hour=…/NAME.parquet`, see
    /// [`Partition`]), or `None` when the path is not in tailscope's layout.
    pub fn from_relative_path(relative_path: &Path, size: u64) -> Option<ParquetFile> {
        let (_, Partition { project, date, hour }, name) = Partition::parse(relative_path)?;
        if !name.ends_with(".parquet") {
            return None;
        }
        Some(ParquetFile {
            relative_path: relative_path.to_path_buf(),
            size,
            project,
            date,
            hour,
            time_range_ns: crate::layout::FileName::parse(name).map(|n| (n.min_time_ns, n.max_time_ns)),
            rows: None,
            store: StoreId::DEFAULT,
        })
    }
}

/// What identifies one version of a file on disk: its size and its inode change time, from one `stat`. Truncating,
/// rewriting, restoring from a backup or even `chmod` gives a new stamp, so a verdict about a file is reached again
/// after it changed, and never re-read while it did not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    /// Size in bytes.
    pub size: u64,
    /// Inode change time (`ctime`), in ns since the epoch.
    pub changed_ns: i128,
}

impl FileStamp {
    /// The stamp of a file from its metadata.
    pub fn of(meta: &std::fs::Metadata) -> FileStamp {
        FileStamp {
            size: meta.len(),
            changed_ns: i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
        }
    }
}

/// Whether a committed file can be read, as found the last time it was checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileCheck {
    /// Its footer (and page index) was read. A page may still be damaged: a query that reads it finds out.
    Readable {
        /// How many of its table's stored columns the file holds, as its footer says ([`Signal::stored_prefix`]):
        /// all of them for a file this version wrote, fewer for one written before later columns were appended,
        /// `None` for a file of another layout (read with its own schema, by column name).
        stored_columns: Option<usize>,
    },
    /// It cannot be read, and why: queries skip it until it changes.
    Unreadable(String),
}

/// The verdicts on the committed files (one entry per file checked, dropped with the file), and the metrics that
/// count them.
#[derive(Debug, Clone, Default)]
struct FileHealth {
    checked: Arc<Mutex<HashMap<PathBuf, (FileStamp, FileCheck)>>>,
    /// Files found unreadable, counted once per file version (`tailscope_parquet_unreadable_files_total`).
    unreadable_total: Counter,
    /// Files skipped by queries now (`tailscope_parquet_skipped_files`).
    skipped: Gauge,
}

impl FileHealth {
    /// Sets the gauge from the verdicts; call with the lock held, after a change.
    fn update_gauge(&self, checked: &HashMap<PathBuf, (FileStamp, FileCheck)>) {
        let skipped = checked.values().filter(|(_, c)| matches!(c, FileCheck::Unreadable(_))).count();
        self.skipped.set(i64::try_from(skipped).unwrap_or(i64::MAX));
    }
}

/// A consistent view of one table: files plus in-memory batches, with no row in both.
#[derive(Debug, Clone, Default)]
pub struct TableSnapshot {
    /// Committed Parquet files.
    pub files: Vec<ParquetFile>,
    /// Acknowledged rows not yet in a committed file, in the table's stored schema, each batch with its project.
    pub batches: Vec<(Project, RecordBatch)>,
}

#[derive(Debug, Default)]
struct TableState {
    files: BTreeMap<PathBuf, ParquetFile>,
    /// Per store, the Delta version its `files` come from, when they come from a Delta snapshot
    /// ([`Catalog::reconcile`]).
    versions: BTreeMap<StoreId, u64>,
    /// Batches keyed by the WAL sequence number that made them durable, so a flush can retire exactly the
    /// batches it wrote.
    batches: BTreeMap<u64, Vec<(Project, RecordBatch)>>,
}

/// Where the tables' files are when they are on an object store (`storage.url`) instead of under the data dir: the
/// file at relative path `spans/project=…/x.parquet` is the object `{prefix}/spans/project=…/x.parquet` of `store`.
#[derive(Debug, Clone)]
pub struct RemoteTables {
    /// The configured URL (`s3://bucket/prefix`), without a trailing slash: for messages and table URLs.
    pub url: url::Url,
    /// The store, `/` at the root of the bucket (or container).
    pub store: Arc<dyn datafusion::object_store::ObjectStore>,
    /// The URL's path inside the bucket (`prefix`; empty for the bucket's root).
    pub prefix: String,
}

impl RemoteTables {
    /// The object path of the file at `relative_path` (relative to the data dir, as the catalog holds it).
    pub fn object_path(&self, relative_path: &Path) -> datafusion::object_store::path::Path {
        let relative = relative_path.iter().map(|p| p.to_string_lossy()).collect::<Vec<_>>().join("/");
        let full = if self.prefix.is_empty() { relative } else { format!("{}/{relative}", self.prefix) };
        datafusion::object_store::path::Path::from(full)
    }

    /// The scheme and bucket (`s3://bucket`), the store's key in DataFusion's object store registry.
    pub fn store_url(&self) -> String {
        format!("{}://{}", self.url.scheme(), &self.url[url::Position::BeforeHost..url::Position::AfterPort])
    }

    /// The full URL of the file at `relative_path`, to name it in messages.
    pub fn display(&self, relative_path: &Path) -> String {
        format!("{}/{}", self.store_url(), self.object_path(relative_path))
    }
}

/// The live list of what each table holds. Cheap to clone (an `Arc` inside).
#[derive(Debug, Clone)]
pub struct Catalog {
    data_dir: Arc<PathBuf>,
    /// The object store the default store's files are on, or `None`: under `data_dir`.
    remote: Option<RemoteTables>,
    /// The stores of the placement rules, in order: `StoreId(i)` is `placed[i - 1]`.
    placed: Vec<RemoteTables>,
    tables: Arc<RwLock<BTreeMap<Signal, TableState>>>,
    /// The process-wide memory budget that the buffer is reserved from and that queries over this catalog draw
    /// their operators' memory from. Unlimited for a catalog without a collector.
    memory: MemoryBudget,
    /// Which files were found readable or not (see [`Catalog::file_check`]).
    health: FileHealth,
}

impl Catalog {
    /// An empty catalog for `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Catalog {
        let tables = Signal::ALL.iter().map(|s| (*s, TableState::default())).collect();
        Catalog {
            data_dir: Arc::new(data_dir.into()),
            remote: None,
            placed: Vec::new(),
            tables: Arc::new(RwLock::new(tables)),
            memory: MemoryBudget::unlimited(),
            health: FileHealth::default(),
        }
    }

    /// This catalog counting unreadable files in `unreadable_total` and setting `skipped` to the number of files
    /// queries skip (the collector's `/metrics`); a catalog without a collector counts them for itself.
    pub fn with_file_metrics(mut self, unreadable_total: Counter, skipped: Gauge) -> Catalog {
        self.health.unreadable_total = unreadable_total;
        self.health.skipped = skipped;
        self
    }

    /// This catalog drawing on `memory` (the collector's budget) instead of an unlimited one.
    pub fn with_memory(mut self, memory: MemoryBudget) -> Catalog {
        self.memory = memory;
        self
    }

    /// This catalog's files on the object store `remote` instead of under the data dir.
    pub fn with_remote(mut self, remote: Option<RemoteTables>) -> Catalog {
        self.remote = remote;
        self
    }

    /// The object store the default store's files are on (`None`: under the data dir).
    pub fn remote(&self) -> Option<&RemoteTables> {
        self.remote.as_ref()
    }

    /// This catalog with the stores of the placement rules (`StoreId(1)` first).
    pub fn with_placed(mut self, placed: Vec<RemoteTables>) -> Catalog {
        self.placed = placed;
        self
    }

    /// The object store `store`'s files are on (`None`: under the data dir, for the default store without
    /// `storage.url`, or a store this catalog does not know).
    pub fn remote_of(&self, store: StoreId) -> Option<&RemoteTables> {
        match store.0 {
            0 => self.remote.as_ref(),
            i => self.placed.get(usize::from(i) - 1),
        }
    }

    /// Every object store of this catalog: the default store's (if on one) and the placement rules'.
    pub fn remotes(&self) -> impl Iterator<Item = &RemoteTables> {
        self.remote.iter().chain(self.placed.iter())
    }

    /// The memory budget that the buffer and queries over this catalog share.
    pub fn memory(&self) -> &MemoryBudget {
        &self.memory
    }

    /// A catalog holding every tailscope-layout Parquet file found under `data_dir` (no buffer).
    pub fn open(data_dir: impl Into<PathBuf>) -> std::io::Result<Catalog> {
        let catalog = Catalog::new(data_dir);
        catalog.rescan()?;
        Ok(catalog)
    }

    /// Lists the files on disk again and adds the ones not yet known (e.g. written by another collector sharing
    /// the directory). Files that vanished are dropped.
    pub fn rescan(&self) -> std::io::Result<()> {
        let mut found = BTreeMap::new();
        for signal in Signal::ALL {
            let mut files = Vec::new();
            for file in list_parquet_files(&self.data_dir, signal)? {
                files.push(file);
            }
            found.insert(signal, files);
        }
        let mut tables = self.tables.write();
        for (signal, files) in found {
            let state = tables.entry(signal).or_default();
            state.files = files.into_iter().map(|f| (f.relative_path.clone(), f)).collect();
        }
        // Verdicts about files no longer listed go with them.
        let mut checked = self.health.checked.lock();
        checked.retain(|path, _| tables.values().any(|state| state.files.contains_key(path)));
        self.health.update_gauge(&checked);
        Ok(())
    }

    /// The data dir the relative paths are under.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// A consistent view of one table.
    pub fn snapshot(&self, signal: Signal) -> TableSnapshot {
        let tables = self.tables.read();
        let state = &tables[&signal];
        TableSnapshot {
            files: state.files.values().cloned().collect(),
            batches: state.batches.values().flatten().cloned().collect(),
        }
    }

    /// Replaces a table's files with those of a snapshot of it (a Delta version, or `None` for a listing) and
    /// retires the buffered batches that snapshot holds (this collector's WAL records up to `committed_through`), in
    /// one step under one lock: a query sees those rows in the buffer or in the files, never both, never neither. A
    /// snapshot older than the one shown is ignored (a refresh that read the log before a flush's commit finished
    /// after it). Returns whether it was applied.
    pub fn reconcile(
        &self,
        signal: Signal,
        version: Option<u64>,
        files: Vec<ParquetFile>,
        committed_through: Option<u64>,
    ) -> bool {
        self.reconcile_stores(signal, vec![(StoreId::DEFAULT, version, files)], committed_through)
    }

    /// [`Catalog::reconcile`] of several stores' snapshots of one table at once (placement rules): each store's
    /// files replace that store's, and the buffered batches through `committed_through` retire, in one step under
    /// one lock. A store's snapshot older than the one shown is ignored; when every one given is, nothing changes.
    /// With no snapshot at all, only the batches retire (a flush whose rows every store held already). Returns
    /// whether anything was applied.
    pub fn reconcile_stores(
        &self,
        signal: Signal,
        snapshots: Vec<(StoreId, Option<u64>, Vec<ParquetFile>)>,
        committed_through: Option<u64>,
    ) -> bool {
        let mut tables = self.tables.write();
        let state = tables.entry(signal).or_default();
        let mut applied = snapshots.is_empty();
        for (store, version, files) in snapshots {
            if let (Some(shown), Some(new)) = (state.versions.get(&store), version)
                && new < *shown
            {
                continue;
            }
            match version {
                Some(v) => state.versions.insert(store, v),
                None => state.versions.remove(&store),
            };
            state.files.retain(|_, f| f.store != store);
            state.files.extend(files.into_iter().map(|f| (f.relative_path.clone(), ParquetFile { store, ..f })));
            applied = true;
        }
        if !applied {
            return false;
        }
        if let Some(through) = committed_through {
            state.batches = state.batches.split_off(&through.saturating_add(1));
        }
        let mut checked = self.health.checked.lock();
        checked.retain(|path, _| tables.values().any(|state| state.files.contains_key(path)));
        self.health.update_gauge(&checked);
        true
    }

    /// Makes rows of `project` made durable by WAL record `wal_seq` visible to queries.
    pub fn add_batch(&self, signal: Signal, wal_seq: u64, project: Project, batch: RecordBatch) {
        if batch.num_rows() == 0 {
            return;
        }
        self.tables.write().entry(signal).or_default().batches.entry(wal_seq).or_default().push((project, batch));
    }

    /// Commits a flush in one step: the files become visible and the buffered batches with WAL sequence numbers
    /// up to and including `through_seq` disappear.
    pub fn commit_flush(&self, files: Vec<(Signal, ParquetFile)>, through_seq: u64) {
        let mut tables = self.tables.write();
        for (signal, file) in files {
            tables.entry(signal).or_default().files.insert(file.relative_path.clone(), file);
        }
        for state in tables.values_mut() {
            state.batches = state.batches.split_off(&(through_seq + 1));
        }
    }

    /// The buffered batches of every signal with WAL sequence numbers up to and including `through_seq`: what a
    /// flush through that sequence writes.
    pub fn batches_through(&self, through_seq: u64) -> BTreeMap<Signal, Vec<(Project, RecordBatch)>> {
        let tables = self.tables.read();
        tables
            .iter()
            .map(|(signal, state)| {
                let batches = state.batches.range(..=through_seq).flat_map(|(_, b)| b.iter().cloned()).collect();
                (*signal, batches)
            })
            .collect()
    }

    /// [`Catalog::batches_through`] with each batch's WAL sequence number: a flush to several stores (placement
    /// rules) leaves out, per store, the records that store's commit holds already.
    #[allow(clippy::type_complexity)]
    pub fn batches_with_seq_through(&self, through_seq: u64) -> BTreeMap<Signal, Vec<(u64, Project, RecordBatch)>> {
        let tables = self.tables.read();
        tables
            .iter()
            .map(|(signal, state)| {
                let batches = state
                    .batches
                    .range(..=through_seq)
                    .flat_map(|(seq, b)| b.iter().map(|(p, b)| (*seq, p.clone(), b.clone())))
                    .collect();
                (*signal, batches)
            })
            .collect()
    }

    /// Every buffered (acknowledged, unflushed) record: its WAL sequence number, signal, project and rows (one
    /// batch per sequence number: a record holds one request's rows, of one project). What the WAL must hold again
    /// if its segment is lost.
    #[allow(clippy::type_complexity)]
    pub fn buffered_records(
        &self,
    ) -> Result<Vec<(u64, Signal, Project, RecordBatch)>, datafusion::arrow::error::ArrowError> {
        let tables = self.tables.read();
        let mut out = Vec::new();
        for (signal, state) in tables.iter() {
            for (seq, batches) in &state.batches {
                let Some((project, first)) = batches.first() else { continue };
                let batch = if batches.len() == 1 {
                    first.clone()
                } else {
                    let many: Vec<RecordBatch> = batches.iter().map(|(_, b)| b.clone()).collect();
                    datafusion::arrow::compute::concat_batches(&first.schema(), &many)?
                };
                out.push((*seq, *signal, project.clone(), batch));
            }
        }
        out.sort_by_key(|(seq, _, _, _)| *seq);
        Ok(out)
    }

    /// Drops a file that vanished from disk (deleted by hand) from the table, so that queries go on with the
    /// rest. Returns whether it was listed.
    pub fn forget_file(&self, signal: Signal, relative_path: &Path) -> bool {
        let listed =
            self.tables.write().get_mut(&signal).is_some_and(|state| state.files.remove(relative_path).is_some());
        let mut checked = self.health.checked.lock();
        if checked.remove(relative_path).is_some() {
            self.health.update_gauge(&checked);
        }
        listed
    }

    /// What was found about the file at `relative_path` when it was last checked, if it has not changed since
    /// (`stamp`). `None`: it has to be checked.
    pub fn file_check(&self, relative_path: &Path, stamp: FileStamp) -> Option<FileCheck> {
        let checked = self.health.checked.lock();
        checked.get(relative_path).filter(|(at, _)| *at == stamp).map(|(_, check)| check.clone())
    }

    /// Records that the file at `relative_path`, as it is at `stamp`, reads (its footer does), and how many of its
    /// table's stored columns it holds ([`FileCheck::Readable`]).
    pub fn set_readable(&self, relative_path: &Path, stamp: FileStamp, stored_columns: Option<usize>) {
        let mut checked = self.health.checked.lock();
        let previous = checked.insert(relative_path.to_path_buf(), (stamp, FileCheck::Readable { stored_columns }));
        if matches!(previous, Some((_, FileCheck::Unreadable(_)))) {
            tracing::info!(file = %self.data_dir.join(relative_path).display(), "Parquet file readable again");
            self.health.update_gauge(&checked);
        }
    }

    /// Records that the file at `relative_path`, as it is at `stamp`, cannot be read because of `reason`: queries
    /// skip it from now on, until it changes. The first time for this version of the file, it is logged (warn) by
    /// name with what to do and counted; nothing is deleted. Returns whether this was news.
    pub fn set_unreadable(&self, relative_path: &Path, stamp: FileStamp, reason: &str) -> bool {
        let mut checked = self.health.checked.lock();
        if checked.get(relative_path).is_some_and(|(at, c)| *at == stamp && matches!(c, FileCheck::Unreadable(_))) {
            return false;
        }
        checked.insert(relative_path.to_path_buf(), (stamp, FileCheck::Unreadable(reason.to_string())));
        self.health.unreadable_total.inc();
        self.health.update_gauge(&checked);
        tracing::warn!(
            file = %self.data_dir.join(relative_path).display(),
            size = stamp.size,
            %reason,
            "Parquet file cannot be read (damaged or truncated): queries skip it from now on and answer from the \
             other files. tailscope does not delete it: move it out of the data dir, or restore it from a backup \
             (a changed file is checked again)"
        );
        true
    }

    /// The files queries skip now, with why (relative paths).
    pub fn unreadable_files(&self) -> Vec<(PathBuf, String)> {
        let checked = self.health.checked.lock();
        let mut out: Vec<(PathBuf, String)> = checked
            .iter()
            .filter_map(|(path, (_, check))| match check {
                FileCheck::Unreadable(reason) => Some((path.clone(), reason.clone())),
                FileCheck::Readable { .. } => None,
            })
            .collect();
        out.sort();
        out
    }

    /// Number of buffered (unflushed) rows per signal, for `/metrics`.
    pub fn buffered_rows(&self, signal: Signal) -> usize {
        self.tables.read()[&signal].batches.values().flatten().map(|(_, b)| b.num_rows()).sum()
    }
}

/// Every tailscope-layout Parquet file of one signal under `data_dir`, sorted by path: those in project
/// directories (`SIGNAL/project=P/date=…/hour=…/`) and those stored before projects existed (`SIGNAL/date=…/…`).
pub fn list_parquet_files(data_dir: &Path, signal: Signal) -> std::io::Result<Vec<ParquetFile>> {
    let root = data_dir.join(signal.table_name());
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(&root) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    let table = PathBuf::from(signal.table_name());
    let mut legacy_dates = Vec::new();
    for entry in entries {
        let entry = entry?;
        if !entry.file_type()?.is_dir() {
            continue;
        }
        let name = entry.file_name();
        if name.to_str().and_then(Partition::project_of_dir).is_some() {
            let relative = table.join(&name);
            for date in std::fs::read_dir(entry.path())? {
                let date = date?;
                if date.file_type()?.is_dir() {
                    list_hours(&date.path(), &relative.join(date.file_name()), &mut out)?;
                }
            }
        } else {
            legacy_dates.push(entry);
        }
    }
    for date in legacy_dates {
        list_hours(&date.path(), &table.join(date.file_name()), &mut out)?;
    }
    out.sort_by(|a, b| a.relative_path.cmp(&b.relative_path));
    Ok(out)
}

/// The layout's files under one `date=` directory at `dir` (`relative` to the data dir), added to `out`.
fn list_hours(dir: &Path, relative: &Path, out: &mut Vec<ParquetFile>) -> std::io::Result<()> {
    for hour in std::fs::read_dir(dir)? {
        let hour = hour?;
        if !hour.file_type()?.is_dir() {
            continue;
        }
        for file in std::fs::read_dir(hour.path())? {
            let file = file?;
            let meta = file.metadata()?;
            if !meta.is_file() {
                continue;
            }
            let path = relative.join(hour.file_name()).join(file.file_name());
            if let Some(pf) = ParquetFile::from_relative_path(&path, meta.len()) {
                out.push(pf);
            }
        }
    }
    Ok(())
}
