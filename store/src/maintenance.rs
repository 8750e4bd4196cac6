//! Compaction, retention and vacuum of the Delta tables: each a Delta commit (or delta-rs's vacuum), never a change
//! of a file in place.
//!
//! - **Compaction** rewrites the small files of a closed partition into few large ones and commits, in one commit,
//!   the `remove` of the small files and the `add` of the large ones, both with `dataChange = false` (the rows are
//!   the same; streaming readers skip the commit). A reader sees the snapshot before or after, never both or
//!   neither. Memory is bounded: one input batch and one output row group at a time.
//! - **Retention** (`crate::retention`) removes whole partitions past their maximum age or over a size cap with one
//!   `DELETE` commit (`dataChange = true`).
//! - **Vacuum** deletes the files that commits removed, once they have been removed longer than the grace period
//!   (longer than the longest query, which may still read a snapshot from before the remove).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{ArrayRef, TimestampNanosecondArray, new_null_array};
use datafusion::arrow::compute::{max, min};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use deltalake_core::kernel::Action;
use deltalake_core::kernel::transaction::CommitProperties;
use deltalake_core::protocol::DeltaOperation;
use tailscope_core::catalog::{ParquetFile, RemoteTables};
use tailscope_core::layout::{FileName, ParquetOptions};
use tailscope_core::schema::Signal;

use crate::{StoreError, TableView, Tables, add_action, remove_action};

/// When and how files are compacted.
#[derive(Debug, Clone)]
pub struct CompactionPolicy {
    /// Files at least this large are left alone, and outputs are cut near this size.
    pub target_bytes: u64,
    /// A partition is compacted once it holds at least this many small files.
    pub min_files: usize,
    /// A partition is compacted only once its hour ended this long ago (late rows still arrive until then).
    pub closed_after: Duration,
}

/// What one compaction run did on one table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactionReport {
    /// Partitions rewritten.
    pub partitions: usize,
    /// Small files removed from the table (their bytes stay on disk until vacuumed).
    pub files_removed: usize,
    /// Large files added.
    pub files_written: usize,
    /// Bytes read.
    pub bytes_read: u64,
    /// Bytes written.
    pub bytes_written: u64,
    /// Rows rewritten.
    pub rows: u64,
}

/// Rows read from an input file at a time.
const READ_BATCH_ROWS: usize = 8192;

/// When the hour of a partition ends, from its `date` and `hour` values (`None` when they do not parse).
pub fn partition_end(file: &ParquetFile) -> Option<chrono::DateTime<chrono::Utc>> {
    let date = chrono::NaiveDate::parse_from_str(&file.date, "%Y-%m-%d").ok()?;
    let hour: u32 = file.hour.parse().ok()?;
    let start = date.and_hms_opt(hour, 0, 0)?.and_utc();
    Some(start + chrono::Duration::hours(1))
}

/// The partition a file is in: its directory under the table (every partition column's `name=value`).
fn partition_of(file: &ParquetFile) -> PathBuf {
    file.relative_path.parent().map(Path::to_path_buf).unwrap_or_default()
}

impl Tables {
    /// Compacts every closed partition of `signal` with at least `policy.min_files` files under
    /// `policy.target_bytes`, one partition and one commit at a time. Returns what it did and the table after it.
    pub async fn compact(
        &self,
        data_dir: &Path,
        signal: Signal,
        options: &ParquetOptions,
        policy: &CompactionPolicy,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<(CompactionReport, Option<TableView>), StoreError> {
        // On an object store the rewrite works on local copies: the partition's small files are downloaded under a
        // scratch directory (this compaction's own, emptied first: nothing else writes there), rewritten there as on
        // a local disk, and the outputs uploaded before the commit names them.
        let remote = self.remote().cloned();
        let root = match &remote {
            Some(_) => {
                let scratch = data_dir.join(REMOTE_SCRATCH);
                let _ = tokio::fs::remove_dir_all(&scratch).await;
                scratch
            }
            None => data_dir.to_path_buf(),
        };
        let view = self.view(signal).await?;
        let mut groups: std::collections::BTreeMap<PathBuf, Vec<ParquetFile>> = Default::default();
        for file in view.files {
            let closed = partition_end(&file)
                .is_some_and(|end| end + chrono::Duration::from_std(policy.closed_after).unwrap_or_default() <= now);
            if closed && file.size < policy.target_bytes {
                groups.entry(partition_of(&file)).or_default().push(file);
            }
        }
        let mut report = CompactionReport::default();
        let mut last = None;
        for (partition, mut files) in groups {
            if files.len() < policy.min_files.max(2) {
                continue;
            }
            // Time order, so the output stays nearly sorted (each input is sorted) and delta-encodes well.
            files.sort_by_key(|f| (f.time_range_ns.map(|r| r.0), f.relative_path.clone()));
            if let Some(remote) = &remote
                && let Err(e) = download_inputs(remote, &root, &files).await
            {
                tracing::warn!(table = signal.table_name(), partition = %partition.display(), error = %e, "compaction skipped this partition");
                let _ = tokio::fs::remove_dir_all(root.join(&partition)).await;
                continue;
            }
            let (dir, inputs, opts, target) = (root.clone(), files.clone(), options.clone(), policy.target_bytes);
            let rewrite = tokio::task::spawn_blocking(move || rewrite(&dir, signal, &inputs, &opts, target)).await;
            let rewritten = match rewrite {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => {
                    tracing::warn!(table = signal.table_name(), partition = %partition.display(), error = %e, "compaction skipped this partition");
                    clear_scratch(remote.as_ref(), &root, &partition).await;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(table = signal.table_name(), error = %e, "compaction task failed");
                    clear_scratch(remote.as_ref(), &root, &partition).await;
                    continue;
                }
            };
            if rewritten.inputs.len() < 2 {
                remove_files(&root, &rewritten.outputs);
                clear_scratch(remote.as_ref(), &root, &partition).await;
                continue;
            }
            if let Some(remote) = &remote
                && let Err(e) = upload_outputs(remote, &root, &rewritten.outputs).await
            {
                tracing::warn!(table = signal.table_name(), partition = %partition.display(), error = %e, "compaction skipped this partition");
                clear_scratch(Some(remote), &root, &partition).await;
                continue;
            }
            let mut actions: Vec<Action> =
                rewritten.inputs.iter().map(|f| Action::Remove(remove_action(f, false))).collect();
            actions.extend(rewritten.outputs.iter().map(|f| Action::Add(add_action(signal, f, false))));
            let operation = DeltaOperation::Optimize {
                predicate: Some(format!("partition {}", partition.display())),
                target_size: i64::try_from(policy.target_bytes).unwrap_or(i64::MAX),
            };
            match self.commit(signal, actions, operation, CommitProperties::default(), "committing a compaction").await
            {
                Ok(view) => {
                    report.partitions += 1;
                    report.files_removed += rewritten.inputs.len();
                    report.files_written += rewritten.outputs.len();
                    report.bytes_read += rewritten.inputs.iter().map(|f| f.size).sum::<u64>();
                    report.bytes_written += rewritten.outputs.iter().map(|f| f.size).sum::<u64>();
                    report.rows += rewritten.rows;
                    last = Some(view);
                }
                Err(e) => {
                    // Another writer removed some of the inputs first (a compaction elsewhere, retention): the
                    // outputs were never part of the table.
                    remove_files(&root, &rewritten.outputs);
                    if let Some(remote) = &remote {
                        for f in &rewritten.outputs {
                            let _ = crate::remote::delete(remote, &f.relative_path).await;
                        }
                    }
                    tracing::warn!(table = signal.table_name(), partition = %partition.display(), error = %e, "compaction commit failed; its files were removed");
                }
            }
            // The store holds what was committed; the local copies only took disk.
            clear_scratch(remote.as_ref(), &root, &partition).await;
        }
        Ok((report, last))
    }

    /// Deletes the files of `signal`'s table that commits removed more than `grace` ago (delta-rs's vacuum, `lite`
    /// mode: only files the log removed, never a file no commit mentions). Returns how many were deleted.
    pub async fn vacuum(&self, signal: Signal, grace: Duration) -> Result<usize, StoreError> {
        let grace = chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
        self.with_table(signal, async |table| {
            let builder = table
                .clone()
                .vacuum()
                .with_retention_period(grace)
                .with_enforce_retention_duration(false)
                .with_commit_properties(CommitProperties::default().with_create_checkpoint(false));
            let (updated, metrics) = builder.await.map_err(|e| StoreError::Delta {
                table: signal.table_name(),
                location: table.table_url().to_string(),
                action: "vacuuming",
                source: Box::new(e),
            })?;
            *table = updated;
            Ok(metrics.files_deleted.len())
        })
        .await
    }
}

/// Where compaction of a table on an object store keeps its local copies, under the store's staging dir.
const REMOTE_SCRATCH: &str = "compaction";

/// Downloads `files` of a table on `remote` to their relative paths under `root`, one after the other.
async fn download_inputs(remote: &RemoteTables, root: &Path, files: &[ParquetFile]) -> Result<(), StoreError> {
    for f in files {
        crate::remote::download(remote, &f.relative_path, &root.join(&f.relative_path), f.size).await?;
    }
    Ok(())
}

/// Uploads compaction's `outputs` from under `root` to `remote`; on an error the ones already uploaded are deleted
/// (no commit names them).
async fn upload_outputs(remote: &RemoteTables, root: &Path, outputs: &[ParquetFile]) -> Result<(), StoreError> {
    for (i, f) in outputs.iter().enumerate() {
        if let Err(e) = crate::remote::upload(remote, &root.join(&f.relative_path), &f.relative_path).await {
            for done in &outputs[..=i] {
                let _ = crate::remote::delete(remote, &done.relative_path).await;
            }
            return Err(e);
        }
    }
    Ok(())
}

/// Removes the local copies of one partition's compaction on an object store (nothing for a local table, whose
/// files are the table's own).
async fn clear_scratch(remote: Option<&RemoteTables>, root: &Path, partition: &Path) {
    if remote.is_some() {
        let _ = tokio::fs::remove_dir_all(root.join(partition)).await;
    }
}

/// What [`rewrite`] produced.
#[derive(Debug)]
struct Rewritten {
    /// The inputs whose rows are in `outputs` (an input that could not be read is left out, and stays).
    inputs: Vec<ParquetFile>,
    outputs: Vec<ParquetFile>,
    rows: u64,
}

fn remove_files(data_dir: &Path, files: &[ParquetFile]) {
    for f in files {
        let _ = std::fs::remove_file(data_dir.join(&f.relative_path));
    }
}

/// An open output file.
struct Output {
    writer: ArrowWriter<std::fs::File>,
    tmp: PathBuf,
    rows: u64,
    range: Option<(i64, i64)>,
    wal_seq: u64,
}

/// Copies the rows of `inputs` (one partition, in the order given) into files of about `target` bytes, each written
/// to a temporary name, fsynced and renamed into place. An input that cannot be read (damaged, another layout) is
/// left out, and stays in the table. Errors only when an output cannot be written (nothing is then left behind).
fn rewrite(
    data_dir: &Path,
    signal: Signal,
    inputs: &[ParquetFile],
    options: &ParquetOptions,
    target: u64,
) -> Result<Rewritten, String> {
    let schema = signal.schema();
    let props = options.properties(signal).map_err(|e| e.to_string())?;
    let partition = inputs.first().map(partition_of).unwrap_or_default();
    let dir = data_dir.join(&partition);
    let mut done = Rewritten { inputs: Vec::new(), outputs: Vec::new(), rows: 0 };
    let mut out: Option<Output> = None;
    let result = (|| -> Result<(), String> {
        for input in inputs {
            let path = data_dir.join(&input.relative_path);
            let batches = match read_input(&path, &schema) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "compaction leaves a file it cannot read");
                    continue;
                }
            };
            let wal_seq =
                input.relative_path.file_name().and_then(|n| n.to_str()).and_then(FileName::parse).map(|n| n.wal_seq);
            for batch in batches {
                let batch = batch.map_err(|e| format!("reading {}: {e}", path.display()))?;
                let o = match &mut out {
                    Some(o) => o,
                    None => {
                        let tmp = dir.join(format!(".compact-{:016x}.parquet.tmp", rand::random::<u64>()));
                        let file =
                            std::fs::File::create(&tmp).map_err(|e| format!("creating {}: {e}", tmp.display()))?;
                        let writer = ArrowWriter::try_new(file, schema.clone(), Some(props.clone()))
                            .map_err(|e| e.to_string())?;
                        out.insert(Output { writer, tmp, rows: 0, range: None, wal_seq: 0 })
                    }
                };
                o.rows += batch.num_rows() as u64;
                o.writer.write(&batch).map_err(|e| e.to_string())?;
                // The time range from the rows themselves (the time column is never NULL), for the file's name.
                if let Some(times) = batch
                    .column_by_name(signal.time_column())
                    .and_then(|c| c.as_any().downcast_ref::<TimestampNanosecondArray>())
                    && let (Some(lo), Some(hi)) = (min(times), max(times))
                {
                    o.range = Some(o.range.map_or((lo, hi), |(a, b)| (a.min(lo), b.max(hi))));
                }
                o.wal_seq = o.wal_seq.max(wal_seq.unwrap_or(0));
            }
            done.inputs.push(input.clone());
            if out
                .as_ref()
                .is_some_and(|o| o.writer.bytes_written() as u64 + o.writer.in_progress_size() as u64 >= target)
            {
                let o = out.take().expect("open");
                done.outputs.push(finish(data_dir, &dir, o)?);
            }
        }
        if let Some(o) = out.take() {
            done.outputs.push(finish(data_dir, &dir, o)?);
        }
        Ok(())
    })();
    if let Err(e) = result {
        if let Some(o) = out {
            let _ = std::fs::remove_file(&o.tmp);
        }
        remove_files(data_dir, &done.outputs);
        return Err(e);
    }
    done.rows = done.outputs.iter().filter_map(|f| f.rows).sum();
    Ok(done)
}

/// The batches of an input file in `schema`'s columns (a file written before later columns were appended gets
/// them NULL), read [`READ_BATCH_ROWS`] rows at a time.
fn read_input(
    path: &Path,
    schema: &Arc<datafusion::arrow::datatypes::Schema>,
) -> Result<impl Iterator<Item = Result<RecordBatch, datafusion::arrow::error::ArrowError>>, String> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| e.to_string())?;
    let file_schema = builder.schema().clone();
    // Every column of the file must be the table's, with the table's type.
    for field in file_schema.fields() {
        match schema.field_with_name(field.name()) {
            Ok(f) if f.data_type() == field.data_type() => {}
            _ => return Err(format!("its column {} is not the table's", field.name())),
        }
    }
    let reader = builder.with_batch_size(READ_BATCH_ROWS).build().map_err(|e| e.to_string())?;
    let schema = schema.clone();
    Ok(reader.map(move |batch| {
        let batch = batch?;
        let columns: Vec<ArrayRef> = schema
            .fields()
            .iter()
            .map(|f| match batch.column_by_name(f.name()) {
                Some(c) => c.clone(),
                None => new_null_array(f.data_type(), batch.num_rows()),
            })
            .collect();
        RecordBatch::try_new(schema.clone(), columns)
    }))
}

fn finish(data_dir: &Path, dir: &Path, o: Output) -> Result<ParquetFile, String> {
    let Output { writer, tmp, rows, range, wal_seq } = o;
    let file = writer.into_inner().map_err(|e| e.to_string())?;
    file.sync_all().map_err(|e| format!("syncing {}: {e}", tmp.display()))?;
    // A file without rows is never committed (the caller commits only outputs of inputs it read).
    let (min_time_ns, max_time_ns) = range.unwrap_or((0, 0));
    let name = FileName { wal_seq, min_time_ns, max_time_ns, nonce: rand::random() }.to_string();
    let path = dir.join(&name);
    std::fs::rename(&tmp, &path).map_err(|e| format!("renaming {}: {e}", tmp.display()))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let relative = path.strip_prefix(data_dir).map(Path::to_path_buf).unwrap_or(path);
    let mut parsed = ParquetFile::from_relative_path(&relative, size)
        .ok_or_else(|| format!("{} is not in the table's layout", relative.display()))?;
    parsed.rows = Some(rows);
    Ok(parsed)
}
