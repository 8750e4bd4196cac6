//! The `spans`, `metrics` and `logs` tables: the catalog's committed Parquet files plus its unflushed batches.
//!
//! Each scan takes a fresh [`Catalog::snapshot`], so a file committed a moment ago and a span acknowledged a moment
//! ago are both in the next query, with no listing cache to expire (DataFusion's `ListingTable` caches its listing
//! since 52). Files are pruned before they are opened: a file's `date`/`hour` and the time range of its rows
//! (known from the catalog) are the statistics of a [`PruningPredicate`] built from the query's filters, so
//! `WHERE start_time > now() - INTERVAL '1 hour'` opens only the last hour's files.
//!
//! Projects are enforced here, below SQL: a scan takes only the files and buffered batches of the projects its
//! session may see ([`visibility`]), before any filter or pruning. Every view, join, subquery, CTE and prepared
//! statement reads the tables through this scan, so none can reach another project's rows; a file or batch of
//! another project is never opened.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, RecordBatch, StringArray, StringBuilder, TimestampNanosecondArray, UInt64Array,
};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::pruning::PruningStatistics;
use datafusion::common::{Column, DFSchema, Result, ScalarValue, project_schema};
use datafusion::datasource::TableType;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::memory::DataSourceExec;
use datafusion::datasource::physical_plan::parquet::CachedParquetFileReaderFactory;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::table_schema::TableSchema;
use datafusion::execution::memory_pool::MemoryConsumer;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::Column as PhysicalColumn;
use datafusion::physical_optimizer::pruning::PruningPredicateBuilder;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};
use datafusion::physical_plan::union::UnionExec;
use futures::StreamExt;

use tailscope_core::catalog::{Catalog, FileCheck, FileStamp, ParquetFile, RemoteTables};
use tailscope_core::placement::StoreId;
use tailscope_core::projects::{Project, Visibility};
use tailscope_core::schema::{PARTITION_COLUMNS, Signal, SpanColumn};

use crate::unreadable::{self, GuardedSource, ScanFiles};

/// Counts of what scans did, for tests and `/metrics`: how many files the catalog listed and how many were read.
#[derive(Debug, Default)]
pub struct ScanCounters {
    /// Files in the catalog at scan time, summed over scans.
    pub files_listed: AtomicU64,
    /// Files handed to the Parquet reader, summed over scans (the rest were pruned, never opened).
    pub files_scanned: AtomicU64,
    /// Buffered (unflushed) rows included, summed over scans.
    pub buffered_rows_scanned: AtomicU64,
}

/// What the session of a scan may see: the [`Visibility`] the engine put in its config (`Engine::scoped`), every
/// project when there is none (a session the engine did not make, as in unit tests).
pub fn visibility(state: &dyn Session) -> Visibility {
    state.config().get_extension::<Visibility>().map(|v| v.as_ref().clone()).unwrap_or_default()
}

/// The query-time schema of a signal: the stored columns (strings as `Utf8View`, see [`scan_file_schema`]), then
/// `date`, `hour` and `project`.
pub fn table_schema(signal: Signal) -> SchemaRef {
    let stored = scan_file_schema(signal);
    let mut fields: Vec<FieldRef> = stored.fields().iter().cloned().collect();
    fields.extend(partition_fields());
    Arc::new(Schema::new_with_metadata(fields, stored.metadata().clone()))
}

/// Columns read dictionary-encoded, as `Dictionary(Int32, Utf8)`: ids that many rows share and that queries group
/// by. The writer dictionary-encodes them (see `tailscope_core::layout::ParquetOptions`), and the Parquet reader then
/// hands over each column chunk's dictionary once plus 4-byte keys per row instead of decoding every string, so a
/// `GROUP BY session_id` interns each distinct id once per file rather than once per row
/// (`crate::string_group`).
pub const DICTIONARY_COLUMNS: [&str; 1] = [SpanColumn::SessionId.name()];

/// The stored schema with top-level `Utf8` columns read as `Utf8View` (DataFusion's `schema_force_view_types`),
/// except [`DICTIONARY_COLUMNS`], read as dictionaries.
///
/// The Parquet reader then points each string at the decoded page instead of copying it into a new buffer, and
/// grouping, hashing and comparing short strings (providers, models) works on the inline 12-byte views. Results
/// leave the engine as plain `Utf8` (see `Engine::sql`), so clients see the stored types.
pub fn scan_file_schema(signal: Signal) -> SchemaRef {
    let stored = signal.schema();
    let fields: Vec<FieldRef> = stored
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::Utf8 if DICTIONARY_COLUMNS.contains(&f.name().as_str()) => Arc::new(
                f.as_ref()
                    .clone()
                    .with_data_type(DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))),
            ),
            DataType::Utf8 => Arc::new(f.as_ref().clone().with_data_type(DataType::Utf8View)),
            _ => f.clone(),
        })
        .collect();
    Arc::new(Schema::new_with_metadata(fields, stored.metadata().clone()))
}

fn partition_fields() -> Vec<FieldRef> {
    PARTITION_COLUMNS.iter().map(|name| Arc::new(Field::new(*name, DataType::Utf8, false))).collect()
}

/// One signal's table over a live [`Catalog`].
#[derive(Debug)]
pub struct SignalTable {
    signal: Signal,
    catalog: Catalog,
    /// The catalog's data dir made absolute once, for object-store paths.
    data_dir: PathBuf,
    schema: SchemaRef,
    counters: Arc<ScanCounters>,
    /// On a cluster's scheduler ([`SignalTable::portable`]): the projects the client's caller may see, decided by
    /// the client (the session here is the scheduler's).
    pinned: Option<Visibility>,
}

impl SignalTable {
    /// The table of `signal` over `catalog`.
    pub fn new(signal: Signal, catalog: Catalog, counters: Arc<ScanCounters>) -> std::io::Result<SignalTable> {
        let data_dir = std::path::absolute(catalog.data_dir())?;
        Ok(SignalTable { signal, catalog, data_dir, schema: table_schema(signal), counters, pinned: None })
    }

    /// This table as a cluster's scheduler scans it (`crate::distributed`): for a caller who sees `visible`, and
    /// with DataFusion's own Parquet scan, which Ballista sends to the executors as it is. The checks of one node
    /// that need its catalog at read time (a file found unreadable is left out of later queries) stay on the
    /// scheduler's footer check; an executor that cannot read a file fails the query, naming it.
    pub fn portable(mut self, visible: Visibility) -> SignalTable {
        self.pinned = Some(visible);
        self
    }

    /// The signal whose rows this table holds.
    pub fn signal(&self) -> Signal {
        self.signal
    }

    /// The projects a portable table's scans see (every project for a table of one node, whose sessions say).
    pub fn visibility(&self) -> &Visibility {
        self.pinned.as_ref().unwrap_or(&Visibility::All)
    }

    /// The object store `store`'s files are on (`storage.url`, a placement rule's), or `None`: under `data_dir`.
    fn remote(&self, store: StoreId) -> Option<&RemoteTables> {
        self.catalog.remote_of(store)
    }

    /// The object store DataFusion reads `store`'s files from: the one its URL names (registered with the
    /// runtime by `Engine::new`), or the local file system.
    fn object_store_url(&self, store: StoreId) -> Result<ObjectStoreUrl> {
        match self.remote(store) {
            Some(remote) => ObjectStoreUrl::parse(remote.store_url()),
            None => Ok(ObjectStoreUrl::local_filesystem()),
        }
    }

    /// The files of `files` that the filters cannot rule out.
    fn prune<'a>(
        &self,
        state: &dyn Session,
        filters: &[Expr],
        files: &'a [ParquetFile],
    ) -> Result<Vec<&'a ParquetFile>> {
        let Some(predicate) = conjunction(filters.iter().cloned()) else {
            return Ok(files.iter().collect());
        };
        if files.is_empty() {
            return Ok(Vec::new());
        }
        let df_schema = DFSchema::try_from(self.schema.clone())?;
        let physical = state.create_physical_expr(predicate, &df_schema)?;
        // A predicate the pruner cannot use (e.g. a UDF over every column) prunes nothing: it is not an error.
        let Ok(pruning) = PruningPredicateBuilder::new().with_file_schema(self.schema.clone()).try_build(physical)
        else {
            return Ok(files.iter().collect());
        };
        if pruning.always_true() {
            return Ok(files.iter().collect());
        }
        let keep = pruning.prune(&FileStatistics { files, time_column: self.signal.time_column() })?;
        Ok(files.iter().zip(keep).filter_map(|(f, keep)| keep.then_some(f)).collect())
    }

    /// The files of `files` still on disk, with their sizes as they are now and their stamps. A file deleted by
    /// hand is dropped from the catalog (and logged) instead of failing this and every later query on the table:
    /// queries go on with the data that is there. One `stat` per file to read, next to the reads themselves.
    fn present(&self, files: Vec<&ParquetFile>) -> Vec<(ParquetFile, FileStamp)> {
        let mut out = Vec::with_capacity(files.len());
        for file in files {
            if self.remote(file.store).is_some() {
                // A committed object never changes (a rewrite gets a new name), so the log's size is its size, and a
                // request per file per query would cost a round trip each: an object deleted by hand fails the
                // query that reads it, naming it.
                out.push((file.clone(), FileStamp { size: file.size, changed_ns: 0 }));
                continue;
            }
            match std::fs::metadata(self.data_dir.join(&file.relative_path)) {
                Ok(meta) => out.push((ParquetFile { size: meta.len(), ..file.clone() }, FileStamp::of(&meta))),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    if self.catalog.forget_file(self.signal, &file.relative_path) {
                        tracing::warn!(
                            table = self.signal.table_name(), file = %file.relative_path.display(),
                            "Parquet file vanished from disk (deleted by hand?); dropped from the table"
                        );
                    }
                }
                // Anything else (permissions, I/O) is for the footer check to find, with the file named; the
                // stamp of a file that cannot be stat'ed changes when it can.
                Err(_) => out.push((file.clone(), FileStamp { size: file.size, changed_ns: 0 })),
            }
        }
        out
    }

    /// The files of `files` that can be read: those whose footer was read before (at the same stamp) and those
    /// whose footer reads now ([`unreadable::check_footer`], on blocking threads, a few at a time). A file found
    /// unreadable now or before is left out, and the catalog logs and counts it once (it is never deleted): every
    /// query answers from the other files instead of failing on it.
    /// On an object store, a footer that cannot be fetched (the store unreachable, refusing) fails the query
    /// instead: the file is not at fault, and leaving it out would answer with rows missing.
    async fn readable(
        &self,
        files: Vec<(ParquetFile, FileStamp)>,
        parallel: usize,
    ) -> Result<Vec<(ParquetFile, Checked)>> {
        let mut known = Vec::with_capacity(files.len());
        let mut unknown = Vec::new();
        for (file, stamp) in files {
            match self.catalog.file_check(&file.relative_path, stamp) {
                Some(FileCheck::Readable { stored_columns }) => known.push((file, Checked { stamp, stored_columns })),
                Some(FileCheck::Unreadable(_)) => {}
                None => unknown.push((file, stamp)),
            }
        }
        if unknown.is_empty() {
            return Ok(known);
        }
        let signal = self.signal;
        let checks = futures::stream::iter(unknown)
            .map(|(file, stamp)| {
                let path = self.data_dir.join(&file.relative_path);
                let remote = self.remote(file.store).cloned();
                async move {
                    if let Some(remote) = remote {
                        let location = remote.object_path(&file.relative_path);
                        let verdict =
                            unreadable::check_footer_remote(remote.store.as_ref(), &location, file.size, signal).await;
                        let verdict = verdict.map_err(|e| {
                            datafusion::error::DataFusionError::Execution(format!(
                                "object store {}: reading the footer of {} failed: {e}; check that the store is \
                                 reachable and the credentials may read there (docs/storage.md), then query again",
                                remote.url,
                                remote.display(&file.relative_path)
                            ))
                        });
                        return (file, stamp, verdict);
                    }
                    let check = move || unreadable::check_footer(&path, signal);
                    let verdict = match tokio::task::spawn_blocking(check).await {
                        Ok(verdict) => verdict,
                        // A reader that panics on a hostile footer: the file is what is wrong.
                        Err(e) => Err(format!("reading its footer failed: {e}")),
                    };
                    (file, stamp, Ok(verdict))
                }
            })
            .buffer_unordered(parallel.max(1))
            .collect::<Vec<_>>()
            .await;
        for (file, stamp, verdict) in checks {
            match verdict? {
                Ok(stored_columns) => {
                    self.catalog.set_readable(&file.relative_path, stamp, stored_columns);
                    known.push((file, Checked { stamp, stored_columns }));
                }
                Err(reason) => {
                    self.catalog.set_unreadable(&file.relative_path, stamp, &reason);
                }
            }
        }
        Ok(known)
    }

    /// A filter the scan can apply exactly and decide per file from the catalog: deterministic, over the time
    /// column and the partition columns only.
    fn is_time_filter(&self, filter: &Expr) -> bool {
        let refs = filter.column_refs();
        !refs.is_empty()
            && !filter.is_volatile()
            && refs.iter().all(|c| c.name == self.signal.time_column() || PARTITION_COLUMNS.contains(&c.name.as_str()))
    }

    /// Per file: do all its rows satisfy every one of `filters`? Decided from the catalog's exact time range and
    /// partition values by asking the pruner whether any row could satisfy a filter's negation; `false` whenever
    /// that cannot be shown (a filter that is not a plain comparison with a literal).
    fn satisfy_all(&self, state: &dyn Session, filters: &[Expr], files: &[&ParquetFile]) -> Result<Vec<bool>> {
        let mut all = vec![true; files.len()];
        let owned: Vec<ParquetFile> = files.iter().map(|f| (*f).clone()).collect();
        for filter in filters {
            let Some(negated) = negate_comparison(filter) else {
                return Ok(vec![false; files.len()]);
            };
            let df_schema = DFSchema::try_from(self.schema.clone())?;
            let physical = state.create_physical_expr(negated, &df_schema)?;
            let Ok(pruning) = PruningPredicateBuilder::new().with_file_schema(self.schema.clone()).try_build(physical)
            else {
                return Ok(vec![false; files.len()]);
            };
            if pruning.always_true() {
                return Ok(vec![false; files.len()]);
            }
            let could_fail =
                pruning.prune(&FileStatistics { files: &owned, time_column: self.signal.time_column() })?;
            for (all, could_fail) in all.iter_mut().zip(could_fail) {
                *all &= !could_fail;
            }
        }
        Ok(all)
    }

    /// `input` (the table's columns `widened`) filtered by `filters`, then cut back to `projection`.
    fn filtered(
        &self,
        state: &dyn Session,
        input: Arc<dyn ExecutionPlan>,
        filters: &[Expr],
        projection: Option<&Vec<usize>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let predicate = conjunction(filters.iter().cloned()).expect("at least one filter");
        let df_schema = DFSchema::try_from(input.schema())?;
        let filter = Arc::new(FilterExec::try_new(state.create_physical_expr(predicate, &df_schema)?, input)?);
        let Some(projection) = projection else {
            return Ok(filter);
        };
        let schema = filter.schema();
        let columns: Vec<(Arc<dyn PhysicalExpr>, String)> = (0..projection.len())
            .map(|i| {
                let name = schema.field(i).name().clone();
                (Arc::new(PhysicalColumn::new(&name, i)) as Arc<dyn PhysicalExpr>, name)
            })
            .collect();
        Ok(Arc::new(ProjectionExec::try_new(columns, filter)?))
    }

    /// The scan of `files`: one Parquet scan per store they are on (placement rules), unioned.
    fn parquet_scan(
        &self,
        state: &dyn Session,
        files: Vec<&ParquetFile>,
        checked: &HashMap<PathBuf, Checked>,
        filters: &[Expr],
        projection: Option<&Vec<usize>>,
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let mut by_store: std::collections::BTreeMap<StoreId, Vec<&ParquetFile>> = Default::default();
        for file in files {
            by_store.entry(file.store).or_default().push(file);
        }
        let mut scans = by_store
            .into_iter()
            .map(|(store, files)| self.store_scan(state, store, files, checked, filters, projection, limit))
            .collect::<Result<Vec<_>>>()?;
        match scans.len() {
            1 => Ok(scans.remove(0)),
            _ => UnionExec::try_new(scans),
        }
    }

    /// The Parquet scan of `files`, all on `store`.
    #[allow(clippy::too_many_arguments)]
    fn store_scan(
        &self,
        state: &dyn Session,
        store: StoreId,
        files: Vec<&ParquetFile>,
        checked: &HashMap<PathBuf, Checked>,
        filters: &[Expr],
        projection: Option<&Vec<usize>>,
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let file_schema = scan_file_schema(self.signal);
        let table_schema =
            TableSchema::builder(file_schema.clone()).with_table_partition_cols(partition_fields()).build();
        // Committed files never change (a rewrite gets a new name), so their footers and page indexes are read
        // once and kept in the runtime's metadata cache (bounded by `datafusion.runtime.metadata_cache_limit`).
        // A portable scan runs on the executors, whose readers and caches are their own.
        let mut source =
            ParquetSource::new(table_schema).with_table_parquet_options(state.table_options().parquet.clone());
        if self.pinned.is_none() {
            let runtime = state.runtime_env();
            let reader = CachedParquetFileReaderFactory::new(
                runtime.object_store(self.object_store_url(store)?)?,
                runtime.cache_manager.get_file_metadata_cache(),
            );
            source = source.with_parquet_file_reader_factory(Arc::new(reader));
        }
        // Row-group and page pruning inside each file, from the filters over stored columns only.
        let stored = self.signal.schema();
        let file_filters: Vec<Expr> = filters
            .iter()
            .filter(|f| f.column_refs().iter().all(|c| stored.field_with_name(&c.name).is_ok()))
            .cloned()
            .collect();
        if let Some(predicate) = conjunction(file_filters) {
            let df_schema = DFSchema::try_from(self.schema.clone())?;
            source = source.with_predicate(state.create_physical_expr(predicate, &df_schema)?);
        }
        let remote = self.remote(store);
        let groups = balanced_groups(
            &self.data_dir,
            remote,
            files.clone(),
            checked,
            state.config().target_partitions(),
            &file_schema,
        );
        if self.pinned.is_some() {
            // One partition even without files, as an `EmptyExec` has (a plan over no partitions fails its checks).
            let groups = if groups.is_empty() { vec![FileGroup::new(Vec::new())] } else { groups };
            let config = FileScanConfigBuilder::new(self.object_store_url(store)?, Arc::new(source))
                .with_file_groups(groups)
                .with_projection_indices(projection.cloned())?
                .with_limit(limit)
                .build();
            return Ok(DataSourceExec::from_data_source(config));
        }
        // Every error of reading a file names the file, and marks it to be skipped by later queries.
        let named_under = match remote {
            Some(remote) => PathBuf::from(remote.url.as_str()),
            None => self.data_dir.clone(),
        };
        let mut scan_files = ScanFiles::new(
            self.catalog.clone(),
            named_under,
            files.iter().filter_map(|f| {
                let stamp = checked.get(&f.relative_path)?.stamp;
                Some((location(&self.data_dir, remote, f), f.relative_path.clone(), stamp))
            }),
        );
        if remote.is_some() {
            scan_files = scan_files.on_object_store();
        }
        let source = GuardedSource::wrapping(Arc::new(source), Arc::new(scan_files));
        let config = FileScanConfigBuilder::new(self.object_store_url(store)?, source)
            .with_file_groups(groups)
            .with_projection_indices(projection.cloned())?
            .with_limit(limit)
            .build();
        Ok(DataSourceExec::from_data_source(config))
    }

    /// The buffered (acknowledged, not yet flushed) batches, converted to the table's columns one batch at a time as
    /// the scan reads them: a query holds the buffer's batches (shared, not copied) and one converted batch per
    /// partition in flight, reserved in its memory pool, instead of a converted copy of the whole buffer.
    fn buffer_scan(
        &self,
        state: &dyn Session,
        batches: Vec<(Project, RecordBatch)>,
        projection: Option<&Vec<usize>>,
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let schema = project_schema(&self.schema, projection)?;
        let partitions = state.config().target_partitions().clamp(1, batches.len().max(1));
        let mut spread: Vec<Vec<(Project, RecordBatch)>> = vec![Vec::new(); partitions];
        for (i, batch) in batches.into_iter().enumerate() {
            spread[i % partitions].push(batch);
        }
        let streams = spread
            .into_iter()
            .map(|batches| {
                Arc::new(BufferPartition {
                    batches,
                    signal: self.signal,
                    table_schema: self.schema.clone(),
                    projection: projection.cloned(),
                    schema: schema.clone(),
                }) as Arc<dyn PartitionStream>
            })
            .collect();
        Ok(Arc::new(StreamingTableExec::try_new(schema, streams, None, Vec::new(), false, limit)?))
    }
}

/// One partition of a [`SignalTable::buffer_scan`].
#[derive(Debug)]
struct BufferPartition {
    batches: Vec<(Project, RecordBatch)>,
    signal: Signal,
    table_schema: SchemaRef,
    projection: Option<Vec<usize>>,
    /// The projected schema.
    schema: SchemaRef,
}

impl PartitionStream for BufferPartition {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, context: Arc<TaskContext>) -> SendableRecordBatchStream {
        let (signal, table_schema, projection) = (self.signal, self.table_schema.clone(), self.projection.clone());
        let reservation =
            MemoryConsumer::new(format!("{} buffer scan", signal.table_name())).register(context.memory_pool());
        let batches = futures::stream::iter(self.batches.clone()).map(move |(project, batch)| {
            let converted = add_partition_columns(&batch, &project, signal, &table_schema, projection.as_deref())?;
            // What the conversion made (partition columns, casts); the stored columns are the buffer's own.
            let made: usize = converted
                .columns()
                .iter()
                .filter(|c| !batch.columns().iter().any(|b| Arc::ptr_eq(b, c)))
                .map(|c| c.get_array_memory_size())
                .sum();
            reservation.try_resize(made)?;
            Ok(converted)
        });
        Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), batches))
    }
}

#[async_trait::async_trait]
impl TableProvider for SignalTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> Result<Vec<TableProviderFilterPushDown>> {
        // Time and partition filters are applied by the scan itself (see `scan`); the rest prune files and row
        // groups only, so DataFusion still filters the rows it gets.
        Ok(filters
            .iter()
            .map(|f| {
                if self.is_time_filter(f) {
                    TableProviderFilterPushDown::Exact
                } else {
                    TableProviderFilterPushDown::Inexact
                }
            })
            .collect())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let mut snapshot = self.catalog.snapshot(self.signal);
        // Before anything else: the rest of the scan never sees another project's files or batches.
        let visible = match &self.pinned {
            Some(pinned) => pinned.clone(),
            None => visibility(state),
        };
        if !visible.is_all() {
            snapshot.files.retain(|f| visible.sees(f.project.as_str()));
            snapshot.batches.retain(|(project, _)| visible.sees(project.as_str()));
        }
        let pruned = self.prune(state, filters, &snapshot.files)?;
        let present = self.present(pruned);
        let readable = self.readable(present, state.config().target_partitions()).await?;
        let checked: HashMap<PathBuf, Checked> =
            readable.iter().map(|(f, check)| (f.relative_path.clone(), *check)).collect();
        let readable: Vec<ParquetFile> = readable.into_iter().map(|(f, _)| f).collect();
        let files: Vec<&ParquetFile> = readable.iter().collect();
        self.counters.files_listed.fetch_add(snapshot.files.len() as u64, Ordering::Relaxed);
        self.counters.files_scanned.fetch_add(files.len() as u64, Ordering::Relaxed);
        let buffered: usize = snapshot.batches.iter().map(|(_, b)| b.num_rows()).sum();
        self.counters.buffered_rows_scanned.fetch_add(buffered as u64, Ordering::Relaxed);
        tracing::debug!(
            table = self.signal.table_name(),
            files = snapshot.files.len(),
            scanned = files.len(),
            buffered_rows = buffered,
            "scan"
        );

        // The time filters DataFusion left to us: files whose whole time range satisfies them are read as they
        // are (no filter, and the time column is not even decoded unless selected); the other files and the buffer
        // get a filter of their own.
        let time_filters: Vec<Expr> = filters.iter().filter(|f| self.is_time_filter(f)).cloned().collect();
        let (covered, partial): (Vec<&ParquetFile>, Vec<&ParquetFile>) = if time_filters.is_empty() {
            (files, Vec::new())
        } else {
            let all_match = self.satisfy_all(state, &time_filters, &files)?;
            let (covered, partial): (Vec<_>, Vec<_>) = files.into_iter().zip(all_match).partition(|(_, all)| *all);
            (covered.into_iter().map(|(f, _)| f).collect(), partial.into_iter().map(|(f, _)| f).collect())
        };
        let widened = widen(projection, &time_filters, &self.schema);

        let mut inputs = Vec::with_capacity(3);
        if !covered.is_empty() {
            inputs.push(self.parquet_scan(state, covered, &checked, filters, projection, limit)?);
        }
        if !partial.is_empty() {
            let scan = self.parquet_scan(state, partial, &checked, filters, widened.as_ref(), None)?;
            inputs.push(self.filtered(state, scan, &time_filters, projection)?);
        }
        if buffered > 0 {
            if time_filters.is_empty() {
                inputs.push(self.buffer_scan(state, snapshot.batches, projection, limit)?);
            } else {
                let scan = self.buffer_scan(state, snapshot.batches, widened.as_ref(), None)?;
                inputs.push(self.filtered(state, scan, &time_filters, projection)?);
            }
        }
        if inputs.is_empty() {
            if self.pinned.is_some() {
                // On a cluster, a Parquet scan of no files instead: with an `EmptyExec` beside a shuffle under a union,
                // Ballista 55's scheduler refuses the executors' task statuses ("task metrics array size 7 does not
                // equal with the stage metrics array size 6") and the job never finishes (seen with `... WHERE
                // project = 'b' UNION ALL ... IN (subquery)` when no file is of `b`).
                return self.store_scan(state, StoreId::DEFAULT, Vec::new(), &checked, filters, projection, limit);
            }
            return Ok(Arc::new(EmptyExec::new(project_schema(&self.schema, projection)?)));
        }
        UnionExec::try_new(inputs)
    }
}

/// `projection` plus the columns `filters` read (appended, so the first `projection.len()` stay in place).
fn widen(projection: Option<&Vec<usize>>, filters: &[Expr], schema: &SchemaRef) -> Option<Vec<usize>> {
    let mut widened = projection?.clone();
    for filter in filters {
        for column in filter.column_refs() {
            if let Ok(i) = schema.index_of(&column.name)
                && !widened.contains(&i)
            {
                widened.push(i);
            }
        }
    }
    Some(widened)
}

/// The exact negation of `column <op> literal` (or `literal <op> column`) and of AND/OR of those, for columns that
/// are never NULL (the time column, the partition columns). `None` for anything else, including NULL literals,
/// where "not true" and "false" differ.
fn negate_comparison(expr: &Expr) -> Option<Expr> {
    use datafusion::logical_expr::{BinaryExpr, Operator};
    let Expr::BinaryExpr(BinaryExpr { left, op, right }) = expr else {
        return None;
    };
    match op {
        Operator::And | Operator::Or => {
            let (l, r) = (negate_comparison(left)?, negate_comparison(right)?);
            Some(if *op == Operator::And { l.or(r) } else { l.and(r) })
        }
        Operator::Eq | Operator::NotEq | Operator::Lt | Operator::LtEq | Operator::Gt | Operator::GtEq => {
            let plain = |e: &Expr| matches!(e, Expr::Column(_));
            let literal = |e: &Expr| matches!(e, Expr::Literal(v, _) if !v.is_null());
            if !((plain(left) && literal(right)) || (literal(left) && plain(right))) {
                return None;
            }
            Some(Expr::BinaryExpr(BinaryExpr::new(left.clone(), op.negate()?, right.clone())))
        }
        _ => None,
    }
}

/// A file found readable, as it was when checked.
#[derive(Debug, Clone, Copy)]
struct Checked {
    stamp: FileStamp,
    /// How many of the table's stored columns it holds ([`FileCheck::Readable`]).
    stored_columns: Option<usize>,
}

/// Splits files into at most `partitions` groups of similar total size, so every core gets a share.
///
/// tailscope's own files (named with their time range) hold the signal's stored columns, so the reader is told to
/// decode them straight into the scan's types, `scan_schema` ([`scan_file_schema`]): that is what makes
/// [`DICTIONARY_COLUMNS`] arrive as dictionaries. A file written before later columns were appended holds the first
/// of them only, and is told just those (its footer said which, see [`Checked`]); DataFusion fills the columns it
/// lacks with NULL. Files placed there by others are read with their own schema and adapted.
fn balanced_groups(
    data_dir: &Path,
    remote: Option<&RemoteTables>,
    files: Vec<&ParquetFile>,
    checked: &HashMap<PathBuf, Checked>,
    partitions: usize,
    scan_schema: &SchemaRef,
) -> Vec<FileGroup> {
    // The leading columns of the scan's schema, by how many a file holds: most files hold them all.
    let mut prefixes: HashMap<usize, SchemaRef> = HashMap::from([(scan_schema.fields().len(), scan_schema.clone())]);
    let mut prefix = |n: usize| -> SchemaRef {
        prefixes
            .entry(n)
            .or_insert_with(|| {
                let fields = scan_schema.fields()[..n].to_vec();
                Arc::new(Schema::new_with_metadata(fields, scan_schema.metadata().clone()))
            })
            .clone()
    };
    let n = partitions.max(1).min(files.len().max(1));
    let mut sorted = files;
    sorted.sort_by_key(|f| std::cmp::Reverse(f.size));
    let mut groups: Vec<(u64, Vec<PartitionedFile>)> = (0..n).map(|_| (0, Vec::new())).collect();
    for file in sorted {
        let lightest = groups.iter_mut().min_by_key(|(bytes, _)| *bytes).expect("n >= 1");
        lightest.0 += file.size;
        let mut part = PartitionedFile::new(location(data_dir, remote, file), file.size).with_partition_values(vec![
            ScalarValue::Utf8(Some(file.date.clone())),
            ScalarValue::Utf8(Some(file.hour.clone())),
            ScalarValue::Utf8(Some(file.project.to_string())),
        ]);
        let stored_columns = checked.get(&file.relative_path).and_then(|c| c.stored_columns);
        if let Some(n) = stored_columns.filter(|_| file.time_range_ns.is_some()) {
            part = part.with_arrow_schema(prefix(n));
        }
        lightest.1.push(part);
    }
    groups.into_iter().filter(|(_, g)| !g.is_empty()).map(|(_, g)| FileGroup::new(g)).collect()
}

/// The object-store location of `file`: its absolute path without the leading `/`, or on an object store its
/// object path (`prefix/spans/…`).
fn location(data_dir: &Path, remote: Option<&RemoteTables>, file: &ParquetFile) -> String {
    match remote {
        Some(remote) => remote.object_path(&file.relative_path).to_string(),
        None => data_dir.join(&file.relative_path).to_string_lossy().trim_start_matches('/').to_string(),
    }
}

/// The columns `projection` asks for (all when `None`) of a buffered batch of `project` in the table's types: `date`
/// and `hour` computed from the time column, as the writer names the directories, `project` the batch's, and stored
/// columns cast to the table's types
/// (strings to `Utf8View`, whose views share the batch's string buffers, and [`DICTIONARY_COLUMNS`] to
/// dictionaries).
fn add_partition_columns(
    batch: &RecordBatch,
    project: &Project,
    signal: Signal,
    schema: &SchemaRef,
    projection: Option<&[usize]>,
) -> Result<RecordBatch> {
    let all: Vec<usize>;
    let projection = match projection {
        Some(p) => p,
        None => {
            all = (0..schema.fields().len()).collect();
            &all
        }
    };
    let stored = batch.num_columns();
    let partitions =
        if projection.iter().any(|&i| i >= stored) { Some(partition_values(batch, signal)?) } else { None };
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(projection.len());
    for &i in projection {
        let field = schema.field(i);
        let column = match (i.checked_sub(stored), &partitions) {
            (None, _) => {
                let column = batch.column(i);
                if column.data_type() == field.data_type() {
                    column.clone()
                } else {
                    datafusion::arrow::compute::cast(column, field.data_type())?
                }
            }
            (Some(0), Some((date, _))) => date.clone(),
            (Some(1), Some((_, hour))) => hour.clone(),
            (Some(2), Some(_)) => {
                let value = ScalarValue::Utf8(Some(project.to_string()));
                value.to_array_of_size(batch.num_rows())?
            }
            _ => {
                return Err(datafusion::error::DataFusionError::Internal(format!(
                    "{signal} has no column {i} ({} stored, then date, hour and project)",
                    stored
                )));
            }
        };
        columns.push(column);
    }
    let projected = Arc::new(schema.project(projection)?);
    Ok(RecordBatch::try_new_with_options(
        projected,
        columns,
        &datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
    )?)
}

/// The `date` and `hour` of every row of a buffered batch, from its time column (formatted once per hour met).
fn partition_values(batch: &RecordBatch, signal: Signal) -> Result<(ArrayRef, ArrayRef)> {
    const HOUR_NS: i64 = 3_600_000_000_000;
    let time = batch
        .column_by_name(signal.time_column())
        .and_then(|c| c.as_any().downcast_ref::<TimestampNanosecondArray>())
        .ok_or_else(|| {
            datafusion::error::DataFusionError::Internal(format!(
                "buffered {signal} batch has no nanosecond `{}` column",
                signal.time_column()
            ))
        })?;
    let rows = time.len();
    let mut dates = StringBuilder::with_capacity(rows, rows * 10);
    let mut hours = StringBuilder::with_capacity(rows, rows * 2);
    let mut last: Option<(i64, String, String)> = None;
    for ns in time.iter() {
        let ns = ns.unwrap_or(0);
        let bucket = ns.div_euclid(HOUR_NS);
        if last.as_ref().is_none_or(|(b, _, _)| *b != bucket) {
            let t = chrono::DateTime::from_timestamp_nanos(ns);
            last = Some((bucket, t.format("%Y-%m-%d").to_string(), t.format("%H").to_string()));
        }
        if let Some((_, date, hour)) = &last {
            dates.append_value(date);
            hours.append_value(hour);
        }
    }
    Ok((Arc::new(dates.finish()), Arc::new(hours.finish())))
}

/// Per-file statistics for the pruner: `date`/`hour` are exact, the time column's min/max come from the catalog.
struct FileStatistics<'a> {
    files: &'a [ParquetFile],
    time_column: &'static str,
}

impl FileStatistics<'_> {
    fn partition_values(&self, column: &Column) -> Option<StringArray> {
        let [date, hour, project] = PARTITION_COLUMNS;
        match column.name.as_str() {
            name if name == date => Some(self.files.iter().map(|f| Some(f.date.as_str())).collect()),
            name if name == hour => Some(self.files.iter().map(|f| Some(f.hour.as_str())).collect()),
            name if name == project => Some(self.files.iter().map(|f| Some(f.project.as_str())).collect()),
            _ => None,
        }
    }

    fn time_bound(&self, column: &Column, pick: fn((i64, i64)) -> i64) -> Option<ArrayRef> {
        (column.name == self.time_column).then(|| {
            let values: TimestampNanosecondArray = self.files.iter().map(|f| f.time_range_ns.map(pick)).collect();
            Arc::new(values.with_timezone("UTC")) as ArrayRef
        })
    }
}

impl PruningStatistics for FileStatistics<'_> {
    fn min_values(&self, column: &Column) -> Option<ArrayRef> {
        self.partition_values(column)
            .map(|a| Arc::new(a) as ArrayRef)
            .or_else(|| self.time_bound(column, |(min, _)| min))
    }

    fn max_values(&self, column: &Column) -> Option<ArrayRef> {
        self.partition_values(column)
            .map(|a| Arc::new(a) as ArrayRef)
            .or_else(|| self.time_bound(column, |(_, max)| max))
    }

    fn num_containers(&self) -> usize {
        self.files.len()
    }

    fn null_counts(&self, column: &Column) -> Option<ArrayRef> {
        // Partition values and the time column are never NULL.
        (PARTITION_COLUMNS.contains(&column.name.as_str()) || column.name == self.time_column)
            .then(|| Arc::new(UInt64Array::from(vec![0u64; self.files.len()])) as ArrayRef)
    }

    fn row_counts(&self) -> Option<ArrayRef> {
        None
    }

    fn contained(&self, column: &Column, values: &HashSet<ScalarValue>) -> Option<BooleanArray> {
        let partition = self.partition_values(column)?;
        Some(partition.iter().map(|v| Some(values.contains(&ScalarValue::Utf8(v.map(str::to_string))))).collect())
    }
}

#[cfg(test)]
mod tests {
    use tailscope_core::schema::LogColumn;

    use super::*;

    #[test]
    fn partition_columns_follow_the_time_column_in_utc() {
        let schema = table_schema(Signal::Logs);
        let stored = Signal::Logs.schema();
        let columns: Vec<ArrayRef> = stored
            .fields()
            .iter()
            .map(|f| {
                if f.name() == LogColumn::Time.name() {
                    // 2026-11-21T23:59:59.999Z and 2026-11-22T00:00:00Z straddle midnight.
                    Arc::new(
                        TimestampNanosecondArray::from(vec![1_795_305_599_999_000_000, 1_795_305_600_000_000_000])
                            .with_timezone("UTC"),
                    ) as ArrayRef
                } else {
                    datafusion::arrow::array::new_null_array(f.data_type(), 2)
                }
            })
            .collect();
        let unchecked_schema = Arc::new(Schema::new(
            stored.fields().iter().map(|f| f.as_ref().clone().with_nullable(true)).collect::<Vec<_>>(),
        ));
        let batch = RecordBatch::try_new(unchecked_schema, columns).unwrap();
        let loose = Arc::new(Schema::new(
            schema.fields().iter().map(|f| f.as_ref().clone().with_nullable(true)).collect::<Vec<_>>(),
        ));
        let out = add_partition_columns(&batch, &Project::default(), Signal::Logs, &loose, None).unwrap();
        let date = out.column_by_name("date").unwrap().as_any().downcast_ref::<StringArray>().unwrap();
        let hour = out.column_by_name("hour").unwrap().as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!((date.value(0), hour.value(0)), ("2026-11-21", "23"));
        assert_eq!((date.value(1), hour.value(1)), ("2026-11-22", "00"));
    }
}
