//! Parquet files in the hive layout `DATA/SIGNAL/date=YYYY-MM-DD/hour=HH/NAME.parquet`.

/// The parts of a Parquet file name tailscope writes: `{wal_seq:020}_{min_ns}_{max_ns}_{nonce}.parquet`.
///
/// `wal_seq` is the last WAL record the file's flush covers: on recovery, files of a flush that never committed
/// carry a sequence above the checkpoint and are removed before the WAL is replayed, so nothing is stored twice.
/// The time range lets queries skip files without opening them.
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

use std::fs::File;
use std::path::{Path, PathBuf};

use datafusion::arrow::array::{Array, TimestampNanosecondArray};
use datafusion::arrow::compute::interleave_record_batch;
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::{Compression, Encoding, ZstdLevel};
use datafusion::parquet::file::properties::{EnabledStatistics, WriterProperties};
use datafusion::parquet::schema::types::ColumnPath;

use crate::catalog::ParquetFile;
use crate::error::StorageError;
use crate::schema::Signal;
use crate::wal::sync_dir;

const NS_PER_HOUR: i64 = 3_600_000_000_000;

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
    /// Random ids and free-form columns ([`Self::UNPRUNABLE`]) get no dictionary attempt where every value is
    /// distinct, and no min/max statistics anywhere: in a row group of random ids min and max span nearly the
    /// whole range, so they never prune, and computing them was a fifth of Parquet encoding's CPU (measured with
    /// `benches/src/bin/normalize.rs`, `TAILSCOPE_PARQUET_VARIANTS=1`).
    pub fn properties(&self, signal: Signal) -> Result<WriterProperties, StorageError> {
        let level = ZstdLevel::try_new(self.zstd_level)
            .map_err(|source| StorageError::Parquet { context: "zstd level".into(), source })?;
        let mut b = WriterProperties::builder()
            .set_compression(Compression::ZSTD(level))
            .set_max_row_group_row_count(Some(self.row_group_rows))
            // Row-group statistics everywhere; page-level ones (the page index) only on the time columns below,
            // where sorted pages let a time-window query skip pages inside a row group.
            .set_statistics_enabled(EnabledStatistics::Chunk)
            .set_created_by(concat!("tailscope ", env!("CARGO_PKG_VERSION")).to_string());
        let time_columns: &[&str] = match signal {
            Signal::Spans => &["start_time", "end_time"],
            Signal::Metrics => &["time", "start_time"],
            Signal::Logs => &["time", "observed_time"],
        };
        for c in time_columns {
            let path = ColumnPath::from(*c);
            b = b
                .set_column_dictionary_enabled(path.clone(), false)
                .set_column_statistics_enabled(path.clone(), EnabledStatistics::Page)
                .set_column_encoding(path, Encoding::DELTA_BINARY_PACKED);
        }
        if signal == Signal::Spans {
            b = b.set_column_bloom_filter_enabled(ColumnPath::from("trace_id"), true);
        }
        let schema = signal.schema();
        for name in Self::UNPRUNABLE {
            let Ok(field) = schema.field_with_name(name) else { continue };
            let is_map = matches!(field.data_type(), DataType::Map(..));
            let leaves: Vec<ColumnPath> = if is_map {
                ["keys", "values"]
                    .iter()
                    .map(|leaf| ColumnPath::new(vec![name.to_string(), "entries".into(), (*leaf).into()]))
                    .collect()
            } else {
                vec![ColumnPath::from(name)]
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
        for name in ["trace_id", "span_id", "parent_span_id"] {
            if schema.field_with_name(name).is_ok() {
                b = b.set_column_dictionary_enabled(ColumnPath::from(name), false);
            }
        }
        if schema.field_with_name("session_id").is_ok() {
            // Queries read `session_id` as a dictionary and group by it per dictionary value, so keep the whole
            // row group's ids in one: 1 MiB (the default) holds ~30,000 UUIDs, fewer than a busy hour's sessions.
            b = b.set_column_dictionary_page_size_limit(ColumnPath::from("session_id"), SESSION_DICTIONARY_BYTES);
        }
        Ok(b.build())
    }

    /// Columns whose min/max statistics cannot prune: random ids, free text, JSON and attribute maps.
    pub const UNPRUNABLE: [&'static str; 13] = [
        "trace_id",
        "span_id",
        "parent_span_id",
        "trace_state",
        "status_message",
        "session_id",
        "hedge_id",
        "attributes",
        "resource_attributes",
        "events",
        "links",
        "body",
        "buckets",
    ];
}

/// Writes one flush's rows of one signal: splits them by hour, sorts each hour by time and writes one file per
/// hour under `data_dir`, each to a temporary name, fsynced, then renamed into place (a reader never sees half a
/// file). Returns the committed files. On error, temporary files are removed and nothing is visible.
///
/// Sorting pays: on the ingest benchmark it makes the files a third smaller than arrival order (44.7 instead of
/// 67.3 bytes per span), since timestamps delta-encode tightly and a trace's spans sit together. It costs one
/// gather: only (time, batch, row) keys are sorted, and rows are copied once, straight from the buffered batches
/// into [`WRITE_CHUNK_ROWS`]-row slices handed to the Parquet writer (no concatenated copy of the flush).
pub fn write_signal(
    data_dir: &Path,
    signal: Signal,
    batches: &[RecordBatch],
    wal_seq: u64,
    options: &ParquetOptions,
) -> Result<Vec<ParquetFile>, StorageError> {
    let batches: Vec<&RecordBatch> = batches.iter().filter(|b| b.num_rows() > 0).collect();
    if batches.is_empty() {
        return Ok(Vec::new());
    }
    let time_column = signal.time_column();
    let mut keys: Vec<(i64, u32, u32)> = Vec::with_capacity(batches.iter().map(|b| b.num_rows()).sum());
    for (b, batch) in batches.iter().enumerate() {
        let time = batch
            .column_by_name(time_column)
            .and_then(|c| c.as_any().downcast_ref::<TimestampNanosecondArray>())
            .ok_or_else(|| StorageError::Arrow {
                context: format!("finding the {time_column} column"),
                source: datafusion::arrow::error::ArrowError::SchemaError(format!("no Timestamp(ns) {time_column}")),
            })?;
        keys.extend(time.values().iter().enumerate().map(|(r, t)| (*t, b as u32, r as u32)));
    }
    // Ties keep arrival order (batch, then row), so a flush's layout is deterministic.
    keys.sort_unstable();

    let props = options.properties(signal)?;
    let mut written = Vec::new();
    let mut start = 0;
    while start < keys.len() {
        let hour = keys[start].0.div_euclid(NS_PER_HOUR);
        let end = start + keys[start..].partition_point(|k| k.0.div_euclid(NS_PER_HOUR) == hour);
        let rows = Rows { batches: &batches, keys: &keys[start..end] };
        match write_file(data_dir, signal, rows, hour, wal_seq, props.clone()) {
            Ok(file) => written.push(file),
            Err(e) => {
                // Files already renamed carry `wal_seq`, above the checkpoint: recovery would remove them, and
                // so does this, so that the retry does not store their rows twice.
                for f in &written {
                    let _ = std::fs::remove_file(data_dir.join(&f.relative_path));
                }
                return Err(e);
            }
        }
        start = end;
    }
    Ok(written)
}

/// Rows handed to the Parquet writer per gather: large enough for the writer's own batching (1024 rows), small
/// enough (~8 MiB of agent spans) to stay under the allocator's mmap threshold, so each gather reuses heap
/// memory instead of faulting in fresh pages (64K-row gathers spent 7% of ingest CPU zeroing pages).
pub const WRITE_CHUNK_ROWS: usize = 8 * 1024;

/// One file's rows: sorted keys into the flush's batches.
struct Rows<'a> {
    batches: &'a [&'a RecordBatch],
    keys: &'a [(i64, u32, u32)],
}

fn write_file(
    data_dir: &Path,
    signal: Signal,
    rows: Rows<'_>,
    hour: i64,
    wal_seq: u64,
    props: WriterProperties,
) -> Result<ParquetFile, StorageError> {
    let (min_time_ns, max_time_ns) = (rows.keys[0].0, rows.keys[rows.keys.len() - 1].0);
    let start = chrono::DateTime::from_timestamp(hour * 3600, 0).unwrap_or_default();
    let date = start.format("%Y-%m-%d").to_string();
    let hh = start.format("%H").to_string();
    let dir: PathBuf = data_dir.join(signal.table_name()).join(format!("date={date}")).join(format!("hour={hh}"));
    std::fs::create_dir_all(&dir).map_err(StorageError::io("creating partition directory", &dir))?;
    let name = FileName { wal_seq, min_time_ns, max_time_ns, nonce: rand::random() }.to_string();
    let tmp = dir.join(format!(".{name}.tmp"));
    let final_path = dir.join(&name);
    let result = (|| {
        let file = File::create(&tmp).map_err(StorageError::io("creating", &tmp))?;
        let parquet = |source| StorageError::Parquet { context: format!("writing {}", tmp.display()), source };
        let mut writer = ArrowWriter::try_new(file, signal.schema(), Some(props)).map_err(parquet)?;
        let mut indices = Vec::with_capacity(WRITE_CHUNK_ROWS.min(rows.keys.len()));
        // Each gather is handed only the batches its rows come from (a time slice touches a few of the flush's
        // thousands of request batches); arrow's interleave does per-column work for every batch it is given.
        let mut slot_of = vec![u32::MAX; rows.batches.len()];
        let mut used: Vec<u32> = Vec::new();
        let mut sources: Vec<&RecordBatch> = Vec::new();
        for chunk in rows.keys.chunks(WRITE_CHUNK_ROWS) {
            indices.clear();
            for &(_, b, r) in chunk {
                let slot = &mut slot_of[b as usize];
                if *slot == u32::MAX {
                    *slot = used.len() as u32;
                    used.push(b);
                }
                indices.push((*slot as usize, r as usize));
            }
            sources.clear();
            sources.extend(used.iter().map(|&b| rows.batches[b as usize]));
            let sorted = interleave_record_batch(&sources, &indices)
                .map_err(|source| StorageError::Arrow { context: "gathering rows in time order".into(), source })?;
            writer.write(&sorted).map_err(parquet)?;
            for b in used.drain(..) {
                slot_of[b as usize] = u32::MAX;
            }
        }
        let file = writer.into_inner().map_err(parquet)?;
        file.sync_all().map_err(StorageError::io("syncing", &tmp))?;
        std::fs::rename(&tmp, &final_path).map_err(StorageError::io("renaming", &tmp))?;
        sync_dir(&dir)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    let size = std::fs::metadata(&final_path).map(|m| m.len()).unwrap_or(0);
    let relative = final_path.strip_prefix(data_dir).unwrap_or(&final_path).to_path_buf();
    Ok(ParquetFile { relative_path: relative, size, date, hour: hh, time_range_ns: Some((min_time_ns, max_time_ns)) })
}

/// Removes files of a flush that never committed (their WAL sequence is above the checkpoint) and leftover
/// temporary files. Their rows are still in the WAL and will be written again.
pub fn remove_uncommitted(data_dir: &Path, checkpoint: u64) -> Result<usize, StorageError> {
    let mut removed = 0;
    for signal in Signal::ALL {
        let root = data_dir.join(signal.table_name());
        for file in crate::catalog::list_parquet_files(data_dir, signal)
            .map_err(StorageError::io("listing Parquet files", &root))?
        {
            let name = file.relative_path.file_name().and_then(|n| n.to_str()).and_then(FileName::parse);
            if name.is_some_and(|n| n.wal_seq > checkpoint) {
                let path = data_dir.join(&file.relative_path);
                std::fs::remove_file(&path).map_err(StorageError::io("removing uncommitted file", &path))?;
                removed += 1;
            }
        }
        removed += remove_temp_files(&root)?;
    }
    Ok(removed)
}

fn remove_temp_files(dir: &Path) -> Result<usize, StorageError> {
    let mut removed = 0;
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(0) };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            removed += remove_temp_files(&path)?;
        } else if path.extension().is_some_and(|e| e == "tmp") {
            std::fs::remove_file(&path).map_err(StorageError::io("removing temporary file", &path))?;
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spans_at(starts_ns: &[i64]) -> RecordBatch {
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
        use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
        let spans = starts_ns
            .iter()
            .enumerate()
            .map(|(i, t)| Span {
                trace_id: vec![1; 16],
                span_id: (i as u64 + 1).to_be_bytes().to_vec(),
                name: format!("s{i}"),
                start_time_unix_nano: *t as u64,
                end_time_unix_nano: *t as u64 + 1000,
                ..Default::default()
            })
            .collect();
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans { spans, ..Default::default() }],
                ..Default::default()
            }],
        };
        crate::normalize::normalize_traces(&request, &crate::cost::Pricer::default()).unwrap().batch
    }

    #[test]
    fn a_flush_writes_one_file_per_hour_and_splits_straddling_batches() {
        let dir = tempfile::tempdir().unwrap();
        let h = 1_700_000_000_000_000_000i64.div_euclid(NS_PER_HOUR) * NS_PER_HOUR;
        let batches = [spans_at(&[h + 5, h + 10]), spans_at(&[h - 1, h + 1, h + NS_PER_HOUR + 7]), spans_at(&[])];
        let options = ParquetOptions { row_group_rows: 1024, zstd_level: 3 };
        let files = write_signal(dir.path(), Signal::Spans, &batches, 9, &options).unwrap();
        let ranges: Vec<_> = files.iter().map(|f| (f.hour.clone(), f.time_range_ns.unwrap())).collect();
        assert_eq!(files.len(), 3, "{ranges:?}");
        assert_eq!(files[0].time_range_ns, Some((h - 1, h - 1)));
        assert_eq!(files[1].time_range_ns, Some((h + 1, h + 10)));
        assert_eq!(files[2].time_range_ns, Some((h + NS_PER_HOUR + 7, h + NS_PER_HOUR + 7)));
        let starts: Vec<Vec<i64>> = files
            .iter()
            .map(|f| {
                let file = std::fs::File::open(dir.path().join(&f.relative_path)).unwrap();
                let reader = datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
                    .unwrap()
                    .build()
                    .unwrap();
                reader
                    .flat_map(|b| {
                        let b = b.unwrap();
                        let t = b.column_by_name("start_time").unwrap();
                        t.as_any().downcast_ref::<TimestampNanosecondArray>().unwrap().values().to_vec()
                    })
                    .collect()
            })
            .collect();
        // Every row once, each file in time order across the batches it came from.
        assert_eq!(starts, vec![vec![h - 1], vec![h + 1, h + 5, h + 10], vec![h + NS_PER_HOUR + 7]]);
        for f in &files {
            let parsed = crate::catalog::ParquetFile::from_relative_path(&f.relative_path, f.size).unwrap();
            assert_eq!(&parsed, f, "the catalog reads back what the writer wrote");
        }
    }

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
}
