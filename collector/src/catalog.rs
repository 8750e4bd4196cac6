//! What a query can see: the committed Parquet files of each table plus the acknowledged rows not yet flushed.
//!
//! The collector keeps this list itself instead of letting query engines list directories, for two reasons:
//! a file appears in the catalog only after it was renamed into place *and* its rows left the buffer, in one
//! step under one lock, so a query never sees a row twice or misses one during a flush; and a query does not pay
//! for a directory walk. A [`Catalog`] opened on a directory without a running collector (the CLI's `--data-dir`)
//! lists the files once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::record_batch::RecordBatch;
use parking_lot::RwLock;

use crate::memory::MemoryBudget;
use crate::schema::Signal;

/// One committed Parquet file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParquetFile {
    /// Path relative to the data dir, e.g. `spans/date=2026-11-21/hour=09/000000000042_…parquet`.
    pub relative_path: PathBuf,
    /// Size in bytes.
    pub size: u64,
    /// The `date=` partition value (`YYYY-MM-DD`).
    pub date: String,
    /// The `hour=` partition value (`HH`).
    pub hour: String,
    /// Smallest and largest value of the signal's time column in the file, in ns since the epoch, when known
    /// (from the file name tailscope gives its files; `None` for files placed there by others).
    pub time_range_ns: Option<(i64, i64)>,
}

impl ParquetFile {
    /// Builds the entry for a file at `relative_path` (`SIGNAL/date=…/hour=…/NAME.parquet`), or `None` when the
    /// path is not in tailscope's layout.
    pub fn from_relative_path(relative_path: &Path, size: u64) -> Option<ParquetFile> {
        let mut parts = relative_path.iter().map(|p| p.to_str());
        let _signal = parts.next()??;
        let date = parts.next()??.strip_prefix("date=")?.to_string();
        let hour = parts.next()??.strip_prefix("hour=")?.to_string();
        let name = parts.next()??;
        if parts.next().is_some() || !name.ends_with(".parquet") {
            return None;
        }
        Some(ParquetFile {
            relative_path: relative_path.to_path_buf(),
            size,
            date,
            hour,
            time_range_ns: crate::writer::FileName::parse(name).map(|n| (n.min_time_ns, n.max_time_ns)),
        })
    }
}

/// A consistent view of one table: files plus in-memory batches, with no row in both.
#[derive(Debug, Clone, Default)]
pub struct TableSnapshot {
    /// Committed Parquet files.
    pub files: Vec<ParquetFile>,
    /// Acknowledged rows not yet in a committed file, in the table's stored schema.
    pub batches: Vec<RecordBatch>,
}

#[derive(Debug, Default)]
struct TableState {
    files: BTreeMap<PathBuf, ParquetFile>,
    /// Batches keyed by the WAL sequence number that made them durable, so a flush can retire exactly the
    /// batches it wrote.
    batches: BTreeMap<u64, Vec<RecordBatch>>,
}

/// The live list of what each table holds. Cheap to clone (an `Arc` inside).
#[derive(Debug, Clone)]
pub struct Catalog {
    data_dir: Arc<PathBuf>,
    tables: Arc<RwLock<BTreeMap<Signal, TableState>>>,
    /// The process-wide memory budget that the buffer is reserved from and that queries over this catalog draw
    /// their operators' memory from. Unlimited for a catalog without a collector.
    memory: MemoryBudget,
}

impl Catalog {
    /// An empty catalog for `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Catalog {
        let tables = Signal::ALL.iter().map(|s| (*s, TableState::default())).collect();
        Catalog {
            data_dir: Arc::new(data_dir.into()),
            tables: Arc::new(RwLock::new(tables)),
            memory: MemoryBudget::unlimited(),
        }
    }

    /// This catalog drawing on `memory` (the collector's budget) instead of an unlimited one.
    pub fn with_memory(mut self, memory: MemoryBudget) -> Catalog {
        self.memory = memory;
        self
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

    /// Makes rows made durable by WAL record `wal_seq` visible to queries.
    pub fn add_batch(&self, signal: Signal, wal_seq: u64, batch: RecordBatch) {
        if batch.num_rows() == 0 {
            return;
        }
        self.tables.write().entry(signal).or_default().batches.entry(wal_seq).or_default().push(batch);
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
    pub fn batches_through(&self, through_seq: u64) -> BTreeMap<Signal, Vec<RecordBatch>> {
        let tables = self.tables.read();
        tables
            .iter()
            .map(|(signal, state)| {
                let batches = state.batches.range(..=through_seq).flat_map(|(_, b)| b.iter().cloned()).collect();
                (*signal, batches)
            })
            .collect()
    }

    /// Every buffered (acknowledged, unflushed) record: its WAL sequence number, signal and rows (one batch per
    /// sequence number). What the WAL must hold again if its segment is lost.
    pub fn buffered_records(&self) -> Result<Vec<(u64, Signal, RecordBatch)>, datafusion::arrow::error::ArrowError> {
        let tables = self.tables.read();
        let mut out = Vec::new();
        for (signal, state) in tables.iter() {
            for (seq, batches) in &state.batches {
                let batch = match batches.as_slice() {
                    [] => continue,
                    [one] => one.clone(),
                    many => datafusion::arrow::compute::concat_batches(&many[0].schema(), many)?,
                };
                out.push((*seq, *signal, batch));
            }
        }
        out.sort_by_key(|(seq, _, _)| *seq);
        Ok(out)
    }

    /// Drops a file that vanished from disk (deleted by hand) from the table, so that queries go on with the
    /// rest. Returns whether it was listed.
    pub fn forget_file(&self, signal: Signal, relative_path: &Path) -> bool {
        self.tables.write().get_mut(&signal).is_some_and(|state| state.files.remove(relative_path).is_some())
    }

    /// Number of buffered (unflushed) rows per signal, for `/metrics`.
    pub fn buffered_rows(&self, signal: Signal) -> usize {
        self.tables.read()[&signal].batches.values().flatten().map(|b| b.num_rows()).sum()
    }
}

/// Every tailscope-layout Parquet file of one signal under `data_dir`, sorted by path.
pub fn list_parquet_files(data_dir: &Path, signal: Signal) -> std::io::Result<Vec<ParquetFile>> {
    let root = data_dir.join(signal.table_name());
    let mut out = Vec::new();
    let dates = match std::fs::read_dir(&root) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for date in dates {
        let date = date?;
        if !date.file_type()?.is_dir() {
            continue;
        }
        for hour in std::fs::read_dir(date.path())? {
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
                let relative = PathBuf::from(signal.table_name())
                    .join(date.file_name())
                    .join(hour.file_name())
                    .join(file.file_name());
                if let Some(pf) = ParquetFile::from_relative_path(&relative, meta.len()) {
                    out.push(pf);
                }
            }
        }
    }
    out.sort_by(|a, b| a.relative_path.cmp(&b.relative_path));
    Ok(out)
}
