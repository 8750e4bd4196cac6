//! Parquet files that cannot be read are skipped, not allowed to fail every query on their table.
//!
//! Files in the data dir are hostile: a disk damages a block, a copy is cut short, an operator puts something there
//! by mistake. Two guards, both recording their verdict in the catalog ([`Catalog::file_check`]), which logs and
//! counts each unreadable file once and never deletes it:
//!
//! - before a scan, every file it will open has its footer (and page index) read once per version of the file
//!   ([`check_footer`], keyed by path and [`FileStamp`]); a file whose footer does not decode, or that is truncated,
//!   is left out of every query from then on;
//! - a file whose footer is fine but whose data is damaged is found by the query that reads it: every error that
//!   comes out of reading one file is named with that file ([`GuardedSource`] wraps the Parquet source's morsels,
//!   which read one file each), that query fails with [`UnreadableFile`] (HTTP 503 `unreadable_file`), and later
//!   queries skip the file.

use std::collections::HashMap;
use std::fmt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::Result;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{FileScanConfig, FileSource};
use datafusion::datasource::table_schema::TableSchema;
use datafusion::error::DataFusionError;
use datafusion::object_store::{ObjectStore, ObjectStoreExt as _};
use datafusion::parquet::arrow::parquet_to_arrow_schema;
use datafusion::parquet::file::metadata::{PageIndexPolicy, ParquetMetaDataReader};
use datafusion::physical_expr::projection::ProjectionExprs;
use datafusion::physical_expr::{EquivalenceProperties, LexOrdering, PhysicalExpr, PhysicalSortExpr};
use datafusion::physical_plan::filter_pushdown::FilterPushdownPropagation;
use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;
use datafusion::physical_plan::{DisplayFormatType, SortOrderPushdownResult};
use datafusion_datasource::file_stream::FileOpener;
use datafusion_datasource::morsel::{Morsel, MorselPlan, MorselPlanner, Morselizer};
use futures::StreamExt;
use futures::stream::BoxStream;

use tailscope_core::catalog::{Catalog, FileStamp};
use tailscope_core::schema::Signal;

/// The largest footer read. tailscope's own footers are tens of KiB; a length field past this is damage (or a file
/// no query should decode), and refusing it keeps a hostile file from sizing an allocation.
pub const MAX_FOOTER_BYTES: u64 = 16 * 1024 * 1024;

/// A query read a file that cannot be read. The file is skipped by later queries.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot read the Parquet file {path}: {reason}. The file is damaged or truncated; later queries skip it and \
     answer from the other files (it is not deleted): move it out of the data dir, or restore it from a backup"
)]
pub struct UnreadableFile {
    /// The file, as an absolute path.
    pub path: PathBuf,
    /// What the reader said.
    pub reason: String,
}

/// The [`UnreadableFile`] somewhere in `e`'s chain of causes.
pub fn find_unreadable(e: &DataFusionError) -> Option<&UnreadableFile> {
    let mut current: &(dyn std::error::Error + 'static) = e;
    loop {
        if let Some(found) = current.downcast_ref::<UnreadableFile>() {
            return Some(found);
        }
        current = current.source()?;
    }
}

/// Reads the footer of the Parquet file at `path` (and its page index, if it has one) and checks that every column
/// chunk it describes lies inside the file. `Err` says what is wrong, for the log; `Ok` says how many of
/// `signal`'s stored columns the file holds ([`Signal::stored_prefix`]: fewer than the schema has for a file
/// written before later columns were appended, `None` for a file of another layout).
pub fn check_footer(path: &Path, signal: Signal) -> Result<Option<usize>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("cannot open it: {e}"))?;
    let size = file.metadata().map_err(|e| format!("cannot stat it: {e}"))?.len();
    // The tail: a 4-byte footer length and the magic bytes.
    if size < 12 {
        return Err(format!("{size} bytes is too short for a Parquet file (a truncated copy?)"));
    }
    let mut tail = [0u8; 8];
    file.read_exact_at(&mut tail, size - 8).map_err(|e| format!("cannot read its last 8 bytes: {e}"))?;
    match &tail[4..] {
        b"PAR1" => {}
        b"PARE" => return Err("its footer is encrypted, which tailscope does not read".into()),
        _ => return Err("it does not end with Parquet's magic bytes `PAR1` (truncated, or not Parquet)".into()),
    }
    let footer = u64::from(u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]));
    if footer > size - 12 {
        return Err(format!("its footer length ({footer} bytes) reaches past the start of the file ({size} bytes)"));
    }
    if footer > MAX_FOOTER_BYTES {
        return Err(format!("its footer is {footer} bytes, more than the {MAX_FOOTER_BYTES} bytes tailscope reads"));
    }
    let metadata = ParquetMetaDataReader::new()
        .with_page_index_policy(PageIndexPolicy::Optional)
        .parse_and_finish(&file)
        .map_err(|e| format!("its footer does not decode: {e}"))?;
    check_metadata(&metadata, size, signal)
}

/// [`check_footer`] of an object on a store (`storage.url`), from two ranged reads: the last 8 bytes, then the
/// footer (at most [`MAX_FOOTER_BYTES`]). The page index is left to the scan, whose errors name the file too. The
/// outer `Err` is the store's (unreachable, refused): not the file's fault, so the file is not marked.
pub async fn check_footer_remote(
    store: &dyn ObjectStore,
    location: &datafusion::object_store::path::Path,
    size: u64,
    signal: Signal,
) -> std::result::Result<std::result::Result<Option<usize>, String>, datafusion::object_store::Error> {
    if size < 12 {
        return Ok(Err(format!("{size} bytes is too short for a Parquet file (a truncated copy?)")));
    }
    let tail = store.get_range(location, size - 8..size).await?;
    if tail.len() != 8 {
        return Ok(Err(format!("the store gave {} bytes for its last 8", tail.len())));
    }
    match &tail[4..] {
        b"PAR1" => {}
        b"PARE" => return Ok(Err("its footer is encrypted, which tailscope does not read".into())),
        _ => return Ok(Err("it does not end with Parquet's magic bytes `PAR1` (truncated, or not Parquet)".into())),
    }
    let footer = u64::from(u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]));
    if footer > size - 12 {
        return Ok(Err(format!(
            "its footer length ({footer} bytes) reaches past the start of the file ({size} bytes)"
        )));
    }
    if footer > MAX_FOOTER_BYTES {
        return Ok(Err(format!(
            "its footer is {footer} bytes, more than the {MAX_FOOTER_BYTES} bytes tailscope reads"
        )));
    }
    let bytes = store.get_range(location, size - 8 - footer..size - 8).await?;
    let metadata = match ParquetMetaDataReader::decode_metadata(&bytes) {
        Ok(metadata) => metadata,
        Err(e) => return Ok(Err(format!("its footer does not decode: {e}"))),
    };
    Ok(check_metadata(&metadata, size, signal))
}

/// The checks of a decoded footer: every column chunk inside the file's `size` bytes; then how many of `signal`'s
/// stored columns the file holds (see [`check_footer`]).
fn check_metadata(
    metadata: &datafusion::parquet::file::metadata::ParquetMetaData,
    size: u64,
    signal: Signal,
) -> std::result::Result<Option<usize>, String> {
    // The reader asserts on negative offsets (a panic in the middle of a query): refuse them here.
    for (i, row_group) in metadata.row_groups().iter().enumerate() {
        for column in row_group.columns() {
            let start = column.dictionary_page_offset().unwrap_or_else(|| column.data_page_offset());
            let end = u64::try_from(start)
                .ok()
                .zip(u64::try_from(column.compressed_size()).ok())
                .and_then(|(start, len)| start.checked_add(len));
            if end.is_none_or(|end| end > size) {
                return Err(format!(
                    "its footer places column `{}` of row group {i} outside the file (offset {start}, {} bytes, \
                     file {size} bytes)",
                    column.column_path(),
                    column.compressed_size()
                ));
            }
        }
    }
    // The Arrow schema the writer stored in the footer (or the one Parquet's types map to). A file whose schema
    // does not convert is left for the reader to judge, as before this was asked.
    let file_metadata = metadata.file_metadata();
    let columns = parquet_to_arrow_schema(file_metadata.schema_descr(), file_metadata.key_value_metadata())
        .ok()
        .and_then(|schema| signal.stored_prefix(schema.fields()));
    Ok(columns)
}

/// Whether reading a file failed because of the file (its bytes, or the disk under it) rather than the query (a
/// memory limit, a cancelled query, a bound of ours).
fn is_the_files_fault(e: &DataFusionError) -> bool {
    match e.find_root() {
        DataFusionError::ParquetError(_) | DataFusionError::ObjectStore(_) | DataFusionError::IoError(_) => true,
        DataFusionError::ArrowError(inner, _) => {
            !matches!(**inner, ArrowError::ExternalError(_) | ArrowError::MemoryError(_))
        }
        _ => false,
    }
}

/// The files of one scan, by the location the Parquet reader is given, so an error while reading one names it and
/// marks it in the catalog.
#[derive(Debug)]
pub struct ScanFiles {
    catalog: Catalog,
    /// The catalog's data dir, absolute, to name files in errors.
    data_dir: PathBuf,
    /// Location (the absolute path without its leading `/`, as in [`PartitionedFile`]) to the path relative to the
    /// data dir and the stamp the file was checked at.
    by_location: HashMap<String, (PathBuf, FileStamp)>,
    /// The files are on an object store: its errors (unreachable, throttled, refused) are the store's, not a
    /// file's, and must not mark a file that is fine.
    remote: bool,
}

impl ScanFiles {
    /// The files `(location, relative path, stamp)` of a scan over `catalog`; `location` as given to
    /// [`PartitionedFile::new`], which encodes it as an object-store path, as done here.
    pub fn new(
        catalog: Catalog,
        data_dir: PathBuf,
        files: impl IntoIterator<Item = (String, PathBuf, FileStamp)>,
    ) -> ScanFiles {
        let by_location = files
            .into_iter()
            .map(|(location, relative, stamp)| {
                (datafusion::object_store::path::Path::from(location).as_ref().to_string(), (relative, stamp))
            })
            .collect();
        ScanFiles { catalog, data_dir, by_location, remote: false }
    }

    /// These files on an object store ([`ScanFiles::remote`]); `data_dir` is then the store's URL and prefix.
    pub fn on_object_store(mut self) -> ScanFiles {
        self.remote = true;
        self
    }

    /// `e`, from reading the file at `location`, named with the file when it is the file's fault; the file is then
    /// recorded unreadable (logged and counted once), so later queries skip it.
    fn fail(&self, location: &str, e: DataFusionError) -> DataFusionError {
        if find_unreadable(&e).is_some()
            || !is_the_files_fault(&e)
            || (self.remote && matches!(e.find_root(), DataFusionError::ObjectStore(_)))
        {
            return e;
        }
        let reason = e.strip_backtrace();
        let path = match self.by_location.get(location) {
            Some((relative, stamp)) => {
                self.catalog.set_unreadable(relative, *stamp, &reason);
                self.data_dir.join(relative)
            }
            None => PathBuf::from(format!("/{location}")),
        };
        DataFusionError::External(Box::new(UnreadableFile { path, reason }))
    }
}

/// The Parquet source with every error of reading a file named with that file (see the module's documentation).
/// Everything else is the wrapped source's: pushdowns and reorderings return the wrapped result wrapped again.
pub struct GuardedSource {
    inner: Arc<dyn FileSource>,
    files: Arc<ScanFiles>,
}

impl GuardedSource {
    /// `inner` guarded over `files`.
    pub fn wrapping(inner: Arc<dyn FileSource>, files: Arc<ScanFiles>) -> Arc<dyn FileSource> {
        Arc::new(GuardedSource { inner, files })
    }

    fn wrap(&self, inner: Arc<dyn FileSource>) -> Arc<dyn FileSource> {
        GuardedSource::wrapping(inner, self.files.clone())
    }
}

impl FileSource for GuardedSource {
    fn create_file_opener(
        &self,
        object_store: Arc<dyn ObjectStore>,
        base_config: &FileScanConfig,
        partition: usize,
    ) -> Result<Arc<dyn FileOpener>> {
        // The Parquet source reads through morsels only (`create_morselizer`); this answers its own error.
        self.inner.create_file_opener(object_store, base_config, partition)
    }

    fn create_morselizer(
        &self,
        object_store: Arc<dyn ObjectStore>,
        base_config: &FileScanConfig,
        partition: usize,
    ) -> Result<Box<dyn Morselizer>> {
        let inner = self.inner.create_morselizer(object_store, base_config, partition)?;
        Ok(Box::new(GuardedMorselizer { inner, files: self.files.clone() }))
    }

    fn table_schema(&self) -> &TableSchema {
        self.inner.table_schema()
    }

    fn with_batch_size(&self, batch_size: usize) -> Arc<dyn FileSource> {
        self.wrap(self.inner.with_batch_size(batch_size))
    }

    fn filter(&self) -> Option<Arc<dyn PhysicalExpr>> {
        self.inner.filter()
    }

    fn projection(&self) -> Option<&ProjectionExprs> {
        self.inner.projection()
    }

    fn metrics(&self) -> &ExecutionPlanMetricsSet {
        self.inner.metrics()
    }

    fn file_type(&self) -> &str {
        self.inner.file_type()
    }

    fn fmt_extra(&self, t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        self.inner.fmt_extra(t, f)
    }

    fn supports_repartitioning(&self) -> bool {
        self.inner.supports_repartitioning()
    }

    fn repartitioned(
        &self,
        target_partitions: usize,
        repartition_file_min_size: usize,
        output_ordering: Option<LexOrdering>,
        config: &FileScanConfig,
    ) -> Result<Option<FileScanConfig>> {
        self.inner.repartitioned(target_partitions, repartition_file_min_size, output_ordering, config)
    }

    fn try_pushdown_filters(
        &self,
        filters: Vec<Arc<dyn PhysicalExpr>>,
        config: &ConfigOptions,
    ) -> Result<FilterPushdownPropagation<Arc<dyn FileSource>>> {
        let mut result = self.inner.try_pushdown_filters(filters, config)?;
        result.updated_node = result.updated_node.map(|inner| self.wrap(inner));
        Ok(result)
    }

    fn try_pushdown_sort(
        &self,
        order: &[PhysicalSortExpr],
        eq_properties: &EquivalenceProperties,
    ) -> Result<SortOrderPushdownResult<Arc<dyn FileSource>>> {
        Ok(self.inner.try_pushdown_sort(order, eq_properties)?.map(|inner| self.wrap(inner)))
    }

    fn reorder_files(&self, files: Vec<PartitionedFile>) -> Vec<PartitionedFile> {
        self.inner.reorder_files(files)
    }

    fn try_pushdown_projection(&self, projection: &ProjectionExprs) -> Result<Option<Arc<dyn FileSource>>> {
        Ok(self.inner.try_pushdown_projection(projection)?.map(|inner| self.wrap(inner)))
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        self.inner.apply_expressions(f)
    }
}

/// Plans each file with the wrapped morselizer and names every error of that file's planning and reading.
#[derive(Debug)]
struct GuardedMorselizer {
    inner: Box<dyn Morselizer>,
    files: Arc<ScanFiles>,
}

impl Morselizer for GuardedMorselizer {
    fn plan_file(&self, file: PartitionedFile) -> Result<Box<dyn MorselPlanner>> {
        let guard = FileGuard { location: Arc::from(file.object_meta.location.as_ref()), files: self.files.clone() };
        match self.inner.plan_file(file) {
            Ok(inner) => Ok(Box::new(GuardedPlanner { inner, guard })),
            Err(e) => Err(guard.fail(e)),
        }
    }
}

/// The file a planner or morsel works on.
#[derive(Debug, Clone)]
struct FileGuard {
    location: Arc<str>,
    files: Arc<ScanFiles>,
}

impl FileGuard {
    fn fail(&self, e: DataFusionError) -> DataFusionError {
        self.files.fail(&self.location, e)
    }
}

#[derive(Debug)]
struct GuardedPlanner {
    inner: Box<dyn MorselPlanner>,
    guard: FileGuard,
}

impl MorselPlanner for GuardedPlanner {
    fn plan(self: Box<Self>) -> Result<Option<MorselPlan>> {
        let GuardedPlanner { inner, guard } = *self;
        let Some(mut plan) = inner.plan().map_err(|e| guard.fail(e))? else {
            return Ok(None);
        };
        let morsels = plan
            .take_morsels()
            .into_iter()
            .map(|inner| Box::new(GuardedMorsel { inner, guard: guard.clone() }) as Box<dyn Morsel>)
            .collect();
        let planners = plan
            .take_ready_planners()
            .into_iter()
            .map(|inner| Box::new(GuardedPlanner { inner, guard: guard.clone() }) as Box<dyn MorselPlanner>)
            .collect();
        let mut guarded = MorselPlan::new().with_morsels(morsels).with_planners(planners);
        if let Some(pending) = plan.take_pending_planner() {
            guarded.set_pending_planner(async move {
                match pending.await {
                    Ok(inner) => Ok(Box::new(GuardedPlanner { inner, guard }) as Box<dyn MorselPlanner>),
                    Err(e) => Err(guard.fail(e)),
                }
            });
        }
        Ok(Some(guarded))
    }
}

#[derive(Debug)]
struct GuardedMorsel {
    inner: Box<dyn Morsel>,
    guard: FileGuard,
}

impl Morsel for GuardedMorsel {
    fn into_stream(self: Box<Self>) -> BoxStream<'static, Result<RecordBatch>> {
        let guard = self.guard;
        self.inner.into_stream().map(move |batch| batch.map_err(|e| guard.fail(e))).boxed()
    }
}
