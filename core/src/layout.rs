//! The on-disk layout of the stored tables: Parquet files in the hive layout
//! `DATA/SIGNAL/project=P/date=YYYY-MM-DD/hour=HH/NAME.parquet` ([`Partition`]), how tailscope names them
//! ([`FileName`]) and how it encodes them ([`ParquetOptions`]). The collector's writer (`collector::writer`) writes them; the [`crate::catalog`]
//! lists them; test fixtures and benchmarks write files exactly like the collector's with the same settings.

use datafusion::arrow::datatypes::DataType;
use datafusion::parquet::basic::{Compression, Encoding, ZstdLevel};
use datafusion::parquet::file::properties::{EnabledStatistics, WriterProperties};
use datafusion::parquet::schema::types::ColumnPath;

use std::path::{Path, PathBuf};

use crate::error::ParquetSettingsError;
use crate::projects::Project;
use crate::schema::{MAP_ENTRIES, MAP_KEYS, MAP_VALUES, Signal};

/// Where a file sits in the hive layout: its project, date and hour, the directories
/// `SIGNAL/project=P/date=YYYY-MM-DD/hour=HH/` (the partition columns [`crate::schema::PARTITION_COLUMNS`]). The one
/// definition of the directory levels: the writer names directories with [`Partition::dir`], the catalog reads
/// them back with [`Partition::parse`].
///
/// The project is the outermost level so that one project's data is one directory per table: pruned, retained,
/// backed up or deleted on its own (`rm -r DATA/*/project=P`). Files stored before projects existed
/// (`SIGNAL/date=…/hour=…/`) still read, as project [`crate::projects::DEFAULT_PROJECT`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// The project the file's rows belong to.
    pub project: Project,
    /// `YYYY-MM-DD` (UTC) of the file's rows' time column.
    pub date: String,
    /// `HH` (UTC).
    pub hour: String,
}

/// The prefix of the project directory level.
const PROJECT_DIR: &str = "project=";

impl Partition {
    /// The directory of this partition's files of `signal`, relative to the data dir.
    pub fn dir(&self, signal: Signal) -> PathBuf {
        Partition::project_dir(signal, &self.project)
            .join(format!("date={}", self.date))
            .join(format!("hour={}", self.hour))
    }

    /// The directory of everything `project` stored in `signal`'s table, relative to the data dir.
    pub fn project_dir(signal: Signal, project: &Project) -> PathBuf {
        PathBuf::from(signal.table_name()).join(format!("{PROJECT_DIR}{project}"))
    }

    /// The partition and file name of a file at `relative_path` (`SIGNAL/[project=P/]date=…/hour=…/NAME`), or
    /// `None` when the path is not in the layout (a project directory whose name is no project name included).
    pub fn parse(relative_path: &Path) -> Option<(Signal, Partition, &str)> {
        let parts: Vec<&str> = relative_path.iter().map(|p| p.to_str()).collect::<Option<_>>()?;
        let (signal, project, rest) = match parts.as_slice() {
            [signal, project, rest @ ..] if project.starts_with(PROJECT_DIR) => {
                (*signal, Project::parse(&project[PROJECT_DIR.len()..]).ok()?, rest)
            }
            [signal, rest @ ..] => (*signal, Project::default_project(), rest),
            [] => return None,
        };
        let signal = Signal::ALL.into_iter().find(|s| s.table_name() == signal)?;
        let [date, hour, name] = rest else { return None };
        let date = date.strip_prefix("date=")?.to_string();
        let hour = hour.strip_prefix("hour=")?.to_string();
        Some((signal, Partition { project, date, hour }, name))
    }

    /// Whether a directory directly under a table's directory holds one project's partitions (`project=P`);
    /// otherwise it is a `date=` directory of the layout before projects.
    pub fn project_of_dir(name: &str) -> Option<Project> {
        Project::parse(name.strip_prefix(PROJECT_DIR)?).ok()
    }
}

/// The parts of a Parquet file name tailscope writes: `{wal_seq:020}_{min_ns}_{max_ns}_{nonce}.parquet`.
///
/// `wal_seq` is the last WAL record the file's flush covers (informative: which files a flush wrote is recorded in
/// its manifest, `collector::writer::FlushManifest`, never inferred from names, since other collectors may write
/// to the same directory). The time range lets queries skip files without opening them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileName {
    /// Last WAL sequence number covered by the flush that wrote the file.
    pub wal_seq: u64,
    /// Smallest time-column value in the file (ns since the epoch).
    pub min_time_ns: i64,
    /// Largest time-column value in the file.
    pub max_time_ns: i64,
    /// Random, so that collectors sharing a directory never collide.
    pub nonce: u32,
}

impl FileName {
    /// Parses a file name (not a path); `None` when it is not one of tailscope's.
    pub fn parse(name: &str) -> Option<FileName> {
        let stem = name.strip_suffix(".parquet")?;
        let mut parts = stem.split('_');
        let name = FileName {
            wal_seq: parts.next()?.parse().ok()?,
            min_time_ns: parts.next()?.parse().ok()?,
            max_time_ns: parts.next()?.parse().ok()?,
            nonce: u32::from_str_radix(parts.next()?, 16).ok()?,
        };
        parts.next().is_none().then_some(name)
    }
}

impl std::fmt::Display for FileName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:020}_{}_{}_{:08x}.parquet", self.wal_seq, self.min_time_ns, self.max_time_ns, self.nonce)
    }
}

/// Largest dictionary page of `session_id` before the writer falls back to plain pages for the rest of a row group.
const SESSION_DICTIONARY_BYTES: usize = 16 * 1024 * 1024;

/// How Parquet files are encoded.
#[derive(Debug, Clone)]
pub struct ParquetOptions {
    /// Rows per row group.
    pub row_group_rows: usize,
    /// zstd level.
    pub zstd_level: i32,
}

impl ParquetOptions {
    /// The writer properties for one signal's files.
    ///
    /// zstd with dictionaries for the many repetitive strings (service, provider, model, region), delta
    /// encoding for timestamps (sorted, so deltas are small), statistics for pruning, and a bloom filter on
    /// `trace_id` so that looking up one trace skips the row groups that cannot hold it.
    ///
    /// Random ids and free-form columns (`EncodedColumns::unprunable`) get no dictionary attempt where every value is
    /// distinct, and no min/max statistics anywhere: in a row group of random ids min and max span nearly the
    /// whole range, so they never prune, and computing them was a fifth of Parquet encoding's CPU (measured with
    /// `benches/src/bin/normalize.rs`, `TAILSCOPE_PARQUET_VARIANTS=1`).
    pub fn properties(&self, signal: Signal) -> Result<WriterProperties, ParquetSettingsError> {
        let level = ZstdLevel::try_new(self.zstd_level)
            .map_err(|source| ParquetSettingsError::ZstdLevel { level: self.zstd_level, source })?;
        let mut b = WriterProperties::builder()
            .set_compression(Compression::ZSTD(level))
            .set_max_row_group_row_count(Some(self.row_group_rows))
            // Row-group statistics everywhere; page-level ones (the page index) only on the time columns below,
            // where sorted pages let a time-window query skip pages inside a row group.
            .set_statistics_enabled(EnabledStatistics::Chunk)
            .set_created_by(concat!("tailscope ", env!("CARGO_PKG_VERSION")).to_string());
        let columns = EncodedColumns::of(signal);
        for c in columns.time {
            let path = ColumnPath::from(*c);
            b = b
                .set_column_dictionary_enabled(path.clone(), false)
                .set_column_statistics_enabled(path.clone(), EnabledStatistics::Page)
                .set_column_encoding(path, Encoding::DELTA_BINARY_PACKED);
        }
        if let Some(c) = columns.bloom_filter {
            b = b.set_column_bloom_filter_enabled(ColumnPath::from(c), true);
        }
        let schema = signal.schema();
        for name in columns.unprunable {
            let Ok(field) = schema.field_with_name(name) else { continue };
            let is_map = matches!(field.data_type(), DataType::Map(..));
            let leaves: Vec<ColumnPath> = if is_map {
                [MAP_KEYS, MAP_VALUES]
                    .iter()
                    .map(|leaf| ColumnPath::new(vec![name.to_string(), MAP_ENTRIES.into(), (*leaf).into()]))
                    .collect()
            } else {
                vec![ColumnPath::from(*name)]
            };
            for path in leaves {
                // Attribute maps hold most of a span's strings (~20 keys and values each). Dictionary-encoding
                // them spent 0.5 µs a span interning values that zstd compresses about as well from plain pages
                // (their values are largely distinct ids, sizes and addresses, and the dictionary spills anyway).
                if is_map {
                    b = b.set_column_dictionary_enabled(path.clone(), false);
                }
                b = b.set_column_statistics_enabled(path, EnabledStatistics::None);
            }
        }
        for name in columns.ids {
            b = b.set_column_dictionary_enabled(ColumnPath::from(*name), false);
        }
        if let Some(c) = columns.session {
            // Queries read `session_id` as a dictionary and group by it per dictionary value, so keep the whole
            // row group's ids in one: 1 MiB (the default) holds ~30,000 UUIDs, fewer than a busy hour's sessions.
            b = b.set_column_dictionary_page_size_limit(ColumnPath::from(c), SESSION_DICTIONARY_BYTES);
        }
        Ok(b.build())
    }
}

/// The columns of one signal that [`ParquetOptions::properties`] encodes in their own way, named through the
/// column enums.
struct EncodedColumns {
    /// Timestamps: delta-encoded, with page statistics.
    time: &'static [&'static str],
    /// Random ids: no dictionary (every value is distinct).
    ids: &'static [&'static str],
    /// Columns whose min/max statistics cannot prune: random ids, free text, JSON and attribute maps.
    unprunable: &'static [&'static str],
    /// The column with a bloom filter (looking up one trace).
    bloom_filter: Option<&'static str>,
    /// The session id, whose dictionary holds a whole row group.
    session: Option<&'static str>,
}

impl EncodedColumns {
    const SPANS: EncodedColumns = {
        use crate::schema::SpanColumn as S;
        EncodedColumns {
            time: &[S::StartTime.name(), S::EndTime.name()],
            ids: &[S::TraceId.name(), S::SpanId.name(), S::ParentSpanId.name()],
            unprunable: &[
                S::TraceId.name(),
                S::SpanId.name(),
                S::ParentSpanId.name(),
                S::TraceState.name(),
                S::StatusMessage.name(),
                S::SessionId.name(),
                S::HedgeId.name(),
                S::Attributes.name(),
                RESOURCE_ATTRIBUTES,
                S::Events.name(),
                S::Links.name(),
            ],
            bloom_filter: Some(S::TraceId.name()),
            session: Some(S::SessionId.name()),
        }
    };

    const METRICS: EncodedColumns = {
        use crate::schema::MetricColumn as M;
        EncodedColumns {
            time: &[M::Time.name(), M::StartTime.name()],
            ids: &[],
            unprunable: &[M::Attributes.name(), RESOURCE_ATTRIBUTES, M::Buckets.name()],
            bloom_filter: None,
            session: None,
        }
    };

    const LOGS: EncodedColumns = {
        use crate::schema::LogColumn as L;
        EncodedColumns {
            time: &[L::Time.name(), L::ObservedTime.name()],
            ids: &[L::TraceId.name(), L::SpanId.name()],
            unprunable: &[
                L::TraceId.name(),
                L::SpanId.name(),
                L::Attributes.name(),
                RESOURCE_ATTRIBUTES,
                L::Body.name(),
            ],
            bloom_filter: None,
            session: None,
        }
    };

    fn of(signal: Signal) -> &'static EncodedColumns {
        match signal {
            Signal::Spans => &Self::SPANS,
            Signal::Metrics => &Self::METRICS,
            Signal::Logs => &Self::LOGS,
        }
    }

    /// Every column named here, for the test that they exist.
    #[cfg(test)]
    fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        let single = [self.bloom_filter, self.session].into_iter().flatten();
        self.time.iter().chain(self.ids).chain(self.unprunable).copied().chain(single)
    }
}

const RESOURCE_ATTRIBUTES: &str = crate::schema::ResourceColumn::ResourceAttributes.name();

/// The file in a data dir that the one process writing it (`serve`, `reprice`) holds an exclusive lock on. The
/// operating system releases the lock when that process exits, however it exits, so a stale lock never blocks a
/// restart; and two processes never rewrite, replay or clean up the same WAL and files at once.
pub const DATA_DIR_LOCK: &str = "tailscope.lock";

/// Takes the exclusive lock of `data_dir` (created if missing) for as long as the returned file is kept open.
pub fn lock_data_dir(data_dir: &std::path::Path) -> Result<std::fs::File, crate::error::DataDirLockError> {
    use crate::error::DataDirLockError;
    let path = data_dir.join(DATA_DIR_LOCK);
    let io = |source| DataDirLockError::Io { path: path.clone(), source };
    std::fs::create_dir_all(data_dir).map_err(io)?;
    let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(io)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(DataDirLockError::InUse { data_dir: data_dir.to_path_buf() }),
        Err(std::fs::TryLockError::Error(source)) => Err(io(source)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_round_trip() {
        let n = FileName {
            wal_seq: 42,
            min_time_ns: 1_700_000_000_000_000_000,
            max_time_ns: 1_700_000_001_000_000_000,
            nonce: 0xdead_beef,
        };
        assert_eq!(FileName::parse(&n.to_string()), Some(n));
        assert_eq!(FileName::parse("part-0.parquet"), None);
    }

    #[test]
    fn partitions_round_trip_and_the_layout_before_projects_reads_as_default() {
        let p = Partition { project: Project::parse("team-a").unwrap(), date: "2026-11-21".into(), hour: "09".into() };
        let path = p.dir(Signal::Logs).join("f.parquet");
        assert_eq!(path, PathBuf::from("logs/project=team-a/date=2026-11-21/hour=09/f.parquet"));
        assert_eq!(Partition::parse(&path), Some((Signal::Logs, p, "f.parquet")));
        let (signal, old, _) = Partition::parse(Path::new("spans/date=2026-11-21/hour=09/f.parquet")).unwrap();
        assert_eq!((signal, old.project.as_str(), old.hour.as_str()), (Signal::Spans, "default", "09"));
        for bad in ["spans/project=../date=x/hour=y/f", "spans/project=A/date=x/hour=y/f", "other/date=x/hour=y/f"] {
            assert_eq!(Partition::parse(Path::new(bad)), None, "{bad}");
        }
    }

    #[test]
    fn specially_encoded_columns_exist() {
        for signal in Signal::ALL {
            let schema = signal.schema();
            for name in EncodedColumns::of(signal).names() {
                assert!(schema.field_with_name(name).is_ok(), "{signal} has no column {name}");
            }
        }
    }
}
