//! tailscope's tables (`spans`, `metrics`, `logs`) as Delta Lake tables, through delta-rs.
//!
//! Each table is a Delta table at `DATA/SIGNAL/` (its log in `DATA/SIGNAL/_delta_log/`), partitioned by
//! [`PARTITION_COLUMNS`] in the same `date=YYYY-MM-DD/hour=HH/` directories as before, its files the collector's zstd
//! Parquet. What a table holds is its Delta snapshot: the files its log adds and has not removed. A file on disk that
//! no commit added (a flush that crashed before its commit) is not part of the table, and a file a commit removed
//! (compaction, retention) is not read even while it is still on disk.
//!
//! Exactly once: a flush's commit carries, next to its files, a Delta transaction identifier (`txn` action) whose
//! app id names the collector's WAL ([`AppId`]) and whose version is the last WAL record the flush covers. Delta
//! applies a commit's actions all or nothing, so "these rows are in the table" and "the table says so" are one fact:
//! at start the collector replays from its WAL only the records above each table's
//! [`TableView::committed_through`], whatever the WAL checkpoint says (see `docs/storage.md`).
//!
//! The Delta schema is the stored Arrow schema plus the partition columns. Timestamps are nanoseconds in the files;
//! the Delta schema declares them `timestamp` (microseconds, UTC), the type every Delta reader knows (nanosecond
//! timestamps need a table feature few readers support), and readers cast.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use deltalake_core::kernel::engine::arrow_conversion::TryIntoKernel as _;
use deltalake_core::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake_core::kernel::{Action, Add, Remove, StructField, StructType, Transaction};
use deltalake_core::operations::create::CreateBuilder;
use deltalake_core::protocol::{DeltaOperation, SaveMode};
use deltalake_core::{DeltaTable, DeltaTableBuilder, DeltaTableError};
use tailscope_core::catalog::{Catalog, ParquetFile, RemoteTables, list_parquet_files};
use tailscope_core::layout::FileName;
use tailscope_core::placement::StoreId;
use tailscope_core::projects::Project;
use tailscope_core::schema::{PARTITION_COLUMNS, PROJECT_COLUMN, Signal};
use url::Url;

pub mod maintenance;
pub mod remote;
pub mod retention;
mod txn;

/// What went wrong with a table, with the table and what was being done.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A Delta operation failed (the log could not be read or written, a commit conflicted past its retries, ...).
    #[error("Delta table {table} ({location}): {action} failed: {source}")]
    Delta {
        /// The table's name.
        table: &'static str,
        /// Where the table is.
        location: String,
        /// What was being done.
        action: &'static str,
        /// delta-rs's error.
        #[source]
        source: Box<DeltaTableError>,
    },
    /// The table's directory could not be made or named.
    #[error("cannot use {path} as the {table} table: {detail}")]
    Location {
        /// The table's name.
        table: &'static str,
        /// Its directory.
        path: PathBuf,
        /// Why.
        detail: String,
    },
    /// `storage.url` names no store tailscope can build.
    #[error("cannot use the object store {url}: {detail}")]
    Connect {
        /// The configured URL.
        url: String,
        /// Why, and what to do.
        detail: String,
    },
    /// An object of a store could not be written, read or deleted.
    #[error("object store {store}: {action} {object} failed: {detail}; {hint}")]
    Object {
        /// The store's URL.
        store: String,
        /// The object's URL.
        object: String,
        /// What was being done.
        action: &'static str,
        /// The store's (or the local file's) error.
        detail: String,
        /// What to do.
        hint: &'static str,
    },
    /// The table's log holds something tailscope cannot use as one of its files.
    #[error("Delta table {table}: {detail}")]
    Log {
        /// The table's name.
        table: &'static str,
        /// What is wrong.
        detail: String,
    },
}

/// Names one writer's WAL in the tables' transaction identifiers: `tailscope-wal-{id}`, the id made once per WAL
/// directory (`wal/writer-id`), so that collectors sharing a table each keep their own position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppId(pub String);

impl AppId {
    /// The app id of the WAL whose id is `id`.
    pub fn for_wal(id: &str) -> AppId {
        AppId(format!("tailscope-wal-{id}"))
    }
}

/// One table as a snapshot shows it.
#[derive(Debug, Clone)]
pub struct TableView {
    /// The snapshot's Delta version.
    pub version: u64,
    /// Its files, with partition values from the log.
    pub files: Vec<ParquetFile>,
    /// The last WAL record of this collector's that the table holds (its `txn` version), if any.
    pub committed_through: Option<u64>,
}

/// The Delta tables of one data directory, opened (created, or converted from the plain hive layout of earlier
/// versions) once. Commits and refreshes of a table run one at a time.
pub struct Tables {
    app_id: Option<AppId>,
    /// The object store the tables are on, or `None`: under the data dir.
    remote: Option<RemoteTables>,
    tables: BTreeMap<Signal, tokio::sync::Mutex<DeltaTable>>,
    locations: BTreeMap<Signal, String>,
    /// Other writers' `txn` versions, followed commit by commit ([`Tables::view_with_apps`]); locked after the
    /// table's lock.
    app_versions: tokio::sync::Mutex<BTreeMap<Signal, txn::AppVersions>>,
}

impl std::fmt::Debug for Tables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tables").field("app_id", &self.app_id).field("locations", &self.locations).finish()
    }
}

/// The directory of `signal`'s table under `data_dir`.
pub fn table_dir(data_dir: &Path, signal: Signal) -> PathBuf {
    data_dir.join(signal.table_name())
}

/// Whether `signal`'s table under `data_dir` is a Delta table already (has a log).
pub fn is_delta_table(data_dir: &Path, signal: Signal) -> bool {
    table_dir(data_dir, signal).join("_delta_log").is_dir()
}

fn table_url(data_dir: &Path, signal: Signal) -> Result<Url, StoreError> {
    let dir = table_dir(data_dir, signal);
    let location = |detail: String| StoreError::Location { table: signal.table_name(), path: dir.clone(), detail };
    let absolute = std::path::absolute(&dir).map_err(|e| location(e.to_string()))?;
    // delta-rs's kernel reads a backslash in a table's path as a directory separator (it then finds no log where
    // it wrote one): refuse it at start with the reason instead.
    if absolute.to_string_lossy().contains('\\') {
        return Err(location(
            "delta-rs reads a backslash in a table's path as a directory separator; choose a data dir whose path \
             has no backslash"
                .into(),
        ));
    }
    Url::from_directory_path(&absolute).map_err(|()| location("not an absolute path".into()))
}

/// The Delta schema of `signal`'s table: its stored columns, then the partition columns (strings).
pub fn delta_schema(signal: Signal) -> Result<Vec<StructField>, StoreError> {
    let schema = signal.schema();
    let stored: StructType =
        schema.as_ref().try_into_kernel().map_err(|e: datafusion::arrow::error::ArrowError| StoreError::Log {
            table: signal.table_name(),
            detail: format!("the stored schema has no Delta equivalent: {e}"),
        })?;
    let mut fields: Vec<StructField> = stored.fields().cloned().collect();
    fields.extend(PARTITION_COLUMNS.iter().map(|c| {
        StructField::new(
            *c,
            deltalake_core::kernel::DataType::Primitive(deltalake_core::kernel::PrimitiveType::String),
            false,
        )
    }));
    Ok(fields)
}

/// The partition values of a file: its project, date and hour, which the catalog read from its path
/// ([`tailscope_core::layout::Partition`]; a file from before projects is in project `default`).
fn partition_values(file: &ParquetFile) -> HashMap<String, Option<String>> {
    PARTITION_COLUMNS
        .iter()
        .map(|&column| {
            let value = match column {
                "date" => file.date.clone(),
                "hour" => file.hour.clone(),
                PROJECT_COLUMN => file.project.as_str().to_string(),
                other => unreachable!("partition column {other} has no value in ParquetFile"),
            };
            (column.to_string(), Some(value))
        })
        .collect()
}

/// The path of a file relative to its table's directory (`date=…/hour=…/NAME.parquet`), as the log holds it.
fn path_in_table(file: &ParquetFile) -> String {
    let mut parts = file.relative_path.iter();
    parts.next();
    parts.map(|p| p.to_string_lossy()).collect::<Vec<_>>().join("/")
}

/// A timestamp in a Delta statistics value: ISO 8601 with microseconds, rounded outwards so the range holds
/// every row.
fn stats_timestamp(ns: i64, round_up: bool) -> String {
    let micros = if round_up { ns.div_euclid(1000) + i64::from(ns.rem_euclid(1000) != 0) } else { ns.div_euclid(1000) };
    chrono::DateTime::from_timestamp_micros(micros).unwrap_or_default().format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// The `add` action of a file this collector wrote (`data_change`: new rows, or rows moved by compaction).
pub fn add_action(signal: Signal, file: &ParquetFile, data_change: bool) -> Add {
    let mut stats = serde_json::Map::new();
    if let Some(rows) = file.rows {
        stats.insert("numRecords".into(), rows.into());
    }
    if let Some((min, max)) = file.time_range_ns {
        let time = signal.time_column().to_string();
        stats.insert("minValues".into(), serde_json::json!({ time.clone(): stats_timestamp(min, false) }));
        stats.insert("maxValues".into(), serde_json::json!({ time: stats_timestamp(max, true) }));
    }
    Add {
        path: path_in_table(file),
        partition_values: partition_values(file),
        size: i64::try_from(file.size).unwrap_or(i64::MAX),
        modification_time: chrono::Utc::now().timestamp_millis(),
        data_change,
        stats: (!stats.is_empty()).then(|| serde_json::Value::Object(stats).to_string()),
        ..Default::default()
    }
}

/// The `remove` action of a file of the table.
pub fn remove_action(file: &ParquetFile, data_change: bool) -> Remove {
    Remove {
        path: path_in_table(file),
        data_change,
        deletion_timestamp: Some(chrono::Utc::now().timestamp_millis()),
        extended_file_metadata: Some(true),
        partition_values: Some(partition_values(file)),
        size: Some(i64::try_from(file.size).unwrap_or(i64::MAX)),
        ..Default::default()
    }
}

impl Tables {
    /// Opens every table under `data_dir`, creating the ones that do not exist. A table directory of an earlier
    /// version (Parquet files in the hive layout, no Delta log) becomes a Delta table in place: one commit adds
    /// every file found, nothing is copied or moved. `app_id`: the collector's, for its flushes' commits; `None`
    /// for a reader.
    pub async fn open(data_dir: &Path, app_id: Option<AppId>) -> Result<Tables, StoreError> {
        Tables::open_at(data_dir, None, app_id).await
    }

    /// [`Tables::open`] with the tables on `remote` (`storage.url`) when given, else under `data_dir`. A table on
    /// an object store is created there when missing; nothing of an earlier version is converted there.
    pub async fn open_at(
        data_dir: &Path,
        remote: Option<&RemoteTables>,
        app_id: Option<AppId>,
    ) -> Result<Tables, StoreError> {
        let mut tables = BTreeMap::new();
        let mut locations = BTreeMap::new();
        for signal in Signal::ALL {
            let table = match remote {
                Some(remote) => open_or_create_remote(remote, signal).await?,
                None => open_or_create(data_dir, signal).await?,
            };
            locations.insert(signal, table.table_url().to_string());
            tables.insert(signal, tokio::sync::Mutex::new(table));
        }
        Ok(Tables { app_id, remote: remote.cloned(), tables, locations, app_versions: Default::default() })
    }

    /// The object store the tables are on (`None`: under the data dir).
    pub fn remote(&self) -> Option<&RemoteTables> {
        self.remote.as_ref()
    }

    fn error(&self, signal: Signal, action: &'static str) -> impl FnOnce(DeltaTableError) -> StoreError + '_ {
        move |e| StoreError::Delta {
            table: signal.table_name(),
            location: self.locations.get(&signal).cloned().unwrap_or_default(),
            action,
            source: Box::new(e),
        }
    }

    /// The table as its latest version shows it (the log read from where it was last read).
    pub async fn view(&self, signal: Signal) -> Result<TableView, StoreError> {
        let mut table = self.tables[&signal].lock().await;
        table.update_incremental(None).await.map_err(self.error(signal, "reading the log"))?;
        self.view_of(signal, &table).await
    }

    /// The table as its latest version shows it, with the transaction version (the last WAL record the table holds)
    /// of each of `apps`, read from the same snapshot: a fleet's coordinator reads which of its members' rows are
    /// committed and which files hold them in one consistent cut.
    pub async fn view_with_apps(
        &self,
        signal: Signal,
        apps: &[AppId],
    ) -> Result<(TableView, Vec<Option<u64>>), StoreError> {
        let mut table = self.tables[&signal].lock().await;
        table.update_incremental(None).await.map_err(self.error(signal, "reading the log"))?;
        let (version, files) = self.files_of(signal, &table)?;
        let snapshot = table.snapshot().map_err(self.error(signal, "reading the snapshot"))?;
        let log_store = table.log_store();
        // This collector's own version is followed with the others' (not read by a replay of its own).
        let mut asked = apps.to_vec();
        if let Some(own) = self.app_id.as_ref().filter(|own| !apps.contains(own)) {
            asked.push(own.clone());
        }
        let mut followed = self.app_versions.lock().await;
        let mut versions: Vec<Option<u64>> = followed
            .entry(signal)
            .or_default()
            .read(snapshot, log_store.as_ref(), &asked)
            .await
            .map_err(self.error(signal, "reading the writers' transaction versions"))?
            .into_iter()
            .map(|v| v.and_then(|v| u64::try_from(v).ok()))
            .collect();
        let committed_through = match &self.app_id {
            Some(own) => asked.iter().position(|a| a == own).and_then(|i| versions[i]),
            None => None,
        };
        versions.truncate(apps.len());
        Ok((TableView { version, files, committed_through }, versions))
    }

    /// The snapshot's version and files, sorted by path.
    fn files_of(&self, signal: Signal, table: &DeltaTable) -> Result<(u64, Vec<ParquetFile>), StoreError> {
        let snapshot = table.snapshot().map_err(self.error(signal, "reading the snapshot"))?;
        let log_data = snapshot.log_data();
        let mut files = Vec::with_capacity(log_data.num_files());
        // The snapshot holds its files already (delta-rs materialises them when it loads the log).
        for view in log_data.iter() {
            files.push(file_of(signal, &view.path(), view.size(), view.num_records(), &view.partition_values_map())?);
        }
        files.sort_by(|a, b| a.relative_path.cmp(&b.relative_path));
        Ok((snapshot.version(), files))
    }

    async fn view_of(&self, signal: Signal, table: &DeltaTable) -> Result<TableView, StoreError> {
        let (version, files) = self.files_of(signal, table)?;
        let committed_through = match &self.app_id {
            Some(app) => table
                .snapshot()
                .map_err(self.error(signal, "reading the snapshot"))?
                .transaction_version(table.log_store().as_ref(), &app.0)
                .await
                .map_err(self.error(signal, "reading this collector's transaction version"))?
                .and_then(|v| u64::try_from(v).ok()),
            None => None,
        };
        Ok(TableView { version, files, committed_through })
    }

    /// Commits a flush's files of one table with the WAL position they cover (`through_seq`, as this collector's
    /// transaction version), in one commit: both or neither. Returns the table after the commit.
    pub async fn commit_flush(
        &self,
        signal: Signal,
        files: &[ParquetFile],
        through_seq: u64,
    ) -> Result<TableView, StoreError> {
        let app = self.app_id.as_ref().ok_or_else(|| StoreError::Log {
            table: signal.table_name(),
            detail: "a reader cannot commit flushes".into(),
        })?;
        let actions: Vec<Action> = files.iter().map(|f| Action::Add(add_action(signal, f, true))).collect();
        let version = i64::try_from(through_seq).unwrap_or(i64::MAX);
        let operation = DeltaOperation::Write {
            mode: SaveMode::Append,
            partition_by: Some(PARTITION_COLUMNS.iter().map(|c| c.to_string()).collect()),
            predicate: None,
        };
        let properties = CommitProperties::default()
            .with_application_transaction(Transaction::new(&app.0, version))
            .with_create_checkpoint(true);
        self.commit(signal, actions, operation, properties, "committing a flush").await
    }

    /// Replaces `old` files of `signal`'s table with `new` ones that hold the same rows with changed values (a
    /// re-pricing), in one commit: a reader sees every old file or every new one, never a mix. `what` says in the
    /// log what changed.
    pub async fn commit_rewrite(
        &self,
        signal: Signal,
        old: &[ParquetFile],
        new: &[ParquetFile],
        what: &str,
    ) -> Result<TableView, StoreError> {
        let mut actions: Vec<Action> = old.iter().map(|f| Action::Remove(remove_action(f, true))).collect();
        actions.extend(new.iter().map(|f| Action::Add(add_action(signal, f, true))));
        let operation = DeltaOperation::Update { predicate: Some(what.to_string()) };
        self.commit(signal, actions, operation, CommitProperties::default(), "committing a rewrite").await
    }

    /// Commits `actions` to `signal`'s table (retrying on conflicts with other writers' appends, which delta-rs
    /// checks), then returns the table after the commit.
    pub async fn commit(
        &self,
        signal: Signal,
        actions: Vec<Action>,
        operation: DeltaOperation,
        properties: CommitProperties,
        action: &'static str,
    ) -> Result<TableView, StoreError> {
        let mut table = self.tables[&signal].lock().await;
        let log_store = table.log_store();
        let finalized = {
            let snapshot = table.snapshot().map_err(self.error(signal, action))?;
            CommitBuilder::from(properties)
                .with_actions(actions)
                .build(Some(snapshot), log_store, operation)
                .await
                .map_err(self.error(signal, action))?
        };
        let _ = finalized.version();
        table.update_incremental(None).await.map_err(self.error(signal, "reading the log after a commit"))?;
        self.view_of(signal, &table).await
    }

    /// Runs `f` on `signal`'s Delta table, with no commit or refresh of it in between (vacuum, for one).
    pub async fn with_table<T>(&self, signal: Signal, f: impl AsyncFnOnce(&mut DeltaTable) -> T) -> T {
        let mut table = self.tables[&signal].lock().await;
        f(&mut table).await
    }

    /// Where `signal`'s table is (a URL).
    pub fn location(&self, signal: Signal) -> &str {
        self.locations.get(&signal).map(String::as_str).unwrap_or_default()
    }
}

/// The catalog entry of a file the log lists: `path` relative to the table, partition values from the log.
fn file_of(
    signal: Signal,
    path: &str,
    size: i64,
    rows: Option<usize>,
    partition_values: &HashMap<String, Option<String>>,
) -> Result<ParquetFile, StoreError> {
    // A path the log gives is the table's business, but it names a file under the table's directory: anything that
    // could step out of it is refused instead of read.
    let relative = Path::new(path);
    if relative.is_absolute()
        || path.contains("://")
        || !relative.components().all(|c| matches!(c, std::path::Component::Normal(_)))
    {
        return Err(StoreError::Log {
            table: signal.table_name(),
            detail: format!("the log lists the file {path:?}, which is not inside the table's directory"),
        });
    }
    let value = |column: &str| partition_values.get(column).cloned().flatten().unwrap_or_default();
    let project = partition_values
        .get(PROJECT_COLUMN)
        .cloned()
        .flatten()
        .map(|p| Project::parse(&p))
        .transpose()
        .map_err(|detail| StoreError::Log {
            table: signal.table_name(),
            detail: format!("the log gives the file {path:?} a project that is no project name: {detail}"),
        })?
        .unwrap_or_default();
    let name = relative.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    Ok(ParquetFile {
        relative_path: Path::new(signal.table_name()).join(relative),
        size: u64::try_from(size).unwrap_or(0),
        project,
        date: value("date"),
        hour: value("hour"),
        time_range_ns: FileName::parse(name).map(|n| (n.min_time_ns, n.max_time_ns)),
        rows: rows.map(|r| r as u64),
        // The catalog says which store a table's files are on (`Catalog::reconcile_stores`).
        store: StoreId::DEFAULT,
    })
}

/// Wraps a delta-rs error with the table, its location and what was being done.
fn delta_error(signal: Signal, url: &Url, action: &'static str) -> impl FnOnce(DeltaTableError) -> StoreError {
    let location = url.to_string();
    move |e| StoreError::Delta { table: signal.table_name(), location, action, source: Box::new(e) }
}

async fn open_or_create(data_dir: &Path, signal: Signal) -> Result<DeltaTable, StoreError> {
    let url = table_url(data_dir, signal)?;
    let error = |action| delta_error(signal, &url, action);
    let dir = table_dir(data_dir, signal);
    std::fs::create_dir_all(&dir).map_err(|e| StoreError::Location {
        table: signal.table_name(),
        path: dir.clone(),
        detail: format!("cannot create it: {e}"),
    })?;
    let mut table =
        DeltaTableBuilder::from_url(url.clone()).map_err(error("opening"))?.build().map_err(error("opening"))?;
    match table.load().await {
        Ok(()) => return Ok(table),
        Err(DeltaTableError::NotATable(_)) => {}
        Err(e) => return Err(error("reading the log")(e)),
    }
    // No log yet: a new table, or the directory of an earlier version, whose files become the first commit.
    let existing = list_parquet_files(data_dir, signal).map_err(|e| StoreError::Location {
        table: signal.table_name(),
        path: dir.clone(),
        detail: format!("cannot list the files of an earlier version: {e}"),
    })?;
    let adds: Vec<Action> = existing.iter().map(|f| Action::Add(add_action(signal, f, true))).collect();
    let created = CreateBuilder::new()
        .with_location(url.to_string())
        .with_table_name(signal.table_name())
        .with_columns(delta_schema(signal)?)
        .with_partition_columns(PARTITION_COLUMNS)
        .with_save_mode(SaveMode::Ignore)
        .with_actions(adds)
        .await;
    match created {
        Ok(table) => {
            if !existing.is_empty() {
                tracing::info!(
                    table = signal.table_name(),
                    files = existing.len(),
                    "converted the table of an earlier version to a Delta table in place (one commit adds its files)"
                );
            }
            Ok(table)
        }
        // Another collector created it at the same moment: use theirs.
        Err(_) if table.load().await.is_ok() => Ok(table),
        Err(e) => Err(error("creating the table")(e)),
    }
}

/// Opens `signal`'s table on `remote`, creating it when its log does not exist.
async fn open_or_create_remote(remote: &RemoteTables, signal: Signal) -> Result<DeltaTable, StoreError> {
    let url = remote::table_url(remote, signal)?;
    let error = |action| delta_error(signal, &url, action);
    let mut table = DeltaTable::new(remote::log_store(remote, &url).map_err(error("opening"))?);
    match table.load().await {
        Ok(()) => return Ok(table),
        Err(DeltaTableError::NotATable(_)) => {}
        Err(e) => return Err(error("reading the log")(e)),
    }
    let created = CreateBuilder::new()
        .with_log_store(table.log_store())
        .with_table_name(signal.table_name())
        .with_columns(delta_schema(signal)?)
        .with_partition_columns(PARTITION_COLUMNS)
        .with_save_mode(SaveMode::Ignore)
        .await;
    match created {
        Ok(created) => {
            tracing::info!(table = signal.table_name(), url = %url, "created the table on the object store");
            Ok(created)
        }
        // Another collector created it at the same moment: use theirs.
        Err(_) if table.load().await.is_ok() => Ok(table),
        Err(e) => Err(error("creating the table")(e)),
    }
}

/// A catalog of the tables on `remote` as they are now, for a reader without a collector; `data_dir` is where the
/// reader's own files would be (none are read from it). A table no collector has created yet is empty.
pub async fn open_remote_catalog(data_dir: &Path, remote: &RemoteTables) -> Result<Catalog, StoreError> {
    let catalog = Catalog::new(data_dir).with_remote(Some(remote.clone()));
    refresh_remote_catalog(&catalog, remote, StoreId::DEFAULT).await?;
    Ok(catalog)
}

/// A catalog for a reader of the tables of every store: the default store (`default`, `storage.url`, or under
/// `data_dir` when `None`) and those of the placement rules (`placed`, in order). A query sees their union.
pub async fn open_placed_catalog(
    data_dir: &Path,
    default: Option<&RemoteTables>,
    placed: Vec<RemoteTables>,
) -> Result<Catalog, StoreError> {
    let catalog = Catalog::new(data_dir).with_remote(default.cloned()).with_placed(placed);
    refresh_catalog(&catalog).await?;
    Ok(catalog)
}

async fn refresh_remote_catalog(catalog: &Catalog, remote: &RemoteTables, store: StoreId) -> Result<(), StoreError> {
    for signal in Signal::ALL {
        let url = remote::table_url(remote, signal)?;
        let error = |action| delta_error(signal, &url, action);
        let mut table = DeltaTable::new(remote::log_store(remote, &url).map_err(error("opening"))?);
        match table.load().await {
            Ok(()) => {}
            Err(DeltaTableError::NotATable(_)) => continue,
            Err(e) => return Err(error("reading the log")(e)),
        }
        let reader = Tables {
            app_id: None,
            remote: Some(remote.clone()),
            tables: BTreeMap::new(),
            locations: BTreeMap::from([(signal, url.to_string())]),
            app_versions: Default::default(),
        };
        let view = reader.view_of(signal, &table).await?;
        catalog.reconcile_stores(signal, vec![(store, Some(view.version), view.files)], None);
    }
    Ok(())
}

/// A catalog of the tables under `data_dir` as they are now, for a reader without a collector (the CLI's
/// `--data-dir`, the dashboard): a Delta table's snapshot; a table directory of an earlier version that no collector
/// has converted yet is listed as before (a reader does not write).
pub async fn open_catalog(data_dir: &Path) -> Result<Catalog, StoreError> {
    let catalog = Catalog::new(data_dir);
    refresh_catalog(&catalog).await?;
    Ok(catalog)
}

/// Reads every table of `catalog`'s data dir again (see [`open_catalog`]).
pub async fn refresh_catalog(catalog: &Catalog) -> Result<(), StoreError> {
    // The placement rules' stores first, then the default store (which returns early on an object store).
    let placed: Vec<RemoteTables> = catalog.remotes().skip(usize::from(catalog.remote().is_some())).cloned().collect();
    for (i, remote) in placed.iter().enumerate() {
        refresh_remote_catalog(catalog, remote, StoreId(u16::try_from(i + 1).unwrap_or(u16::MAX))).await?;
    }
    if let Some(remote) = catalog.remote() {
        return refresh_remote_catalog(catalog, remote, StoreId::DEFAULT).await;
    }
    let data_dir = catalog.data_dir().to_path_buf();
    for signal in Signal::ALL {
        if is_delta_table(&data_dir, signal) {
            let url = table_url(&data_dir, signal)?;
            let error = |action| delta_error(signal, &url, action);
            let table = DeltaTableBuilder::from_url(url.clone())
                .map_err(error("opening"))?
                .load()
                .await
                .map_err(error("reading the log"))?;
            let reader = Tables {
                app_id: None,
                remote: None,
                tables: BTreeMap::new(),
                locations: BTreeMap::from([(signal, url.to_string())]),
                app_versions: Default::default(),
            };
            let view = reader.view_of(signal, &table).await?;
            catalog.reconcile(signal, Some(view.version), view.files, None);
        } else {
            let files = list_parquet_files(&data_dir, signal).map_err(|e| StoreError::Location {
                table: signal.table_name(),
                path: table_dir(&data_dir, signal),
                detail: format!("cannot list it: {e}"),
            })?;
            catalog.reconcile(signal, None, files, None);
        }
    }
    Ok(())
}

/// Shared handle.
pub type SharedTables = Arc<Tables>;

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str) -> ParquetFile {
        let mut f = ParquetFile::from_relative_path(Path::new(path), 10).expect("layout");
        f.rows = Some(3);
        f
    }

    #[test]
    fn add_actions_carry_partition_values_rows_and_a_time_range_that_holds_every_row() {
        let f = file(
            "spans/date=2026-12-03/hour=14/00000000000000000042_1764770400000001500_1764770400000002001_0000abcd.parquet",
        );
        let add = add_action(Signal::Spans, &f, true);
        assert_eq!(
            add.path,
            "date=2026-12-03/hour=14/00000000000000000042_1764770400000001500_1764770400000002001_0000abcd.parquet"
        );
        assert_eq!(add.partition_values.len(), PARTITION_COLUMNS.len());
        assert_eq!(add.partition_values["date"].as_deref(), Some("2026-12-03"));
        assert_eq!(add.partition_values["hour"].as_deref(), Some("14"));
        let stats: serde_json::Value = serde_json::from_str(add.stats.as_deref().unwrap()).unwrap();
        assert_eq!(stats["numRecords"], 3);
        // Microseconds, the minimum rounded down and the maximum up.
        assert_eq!(stats["minValues"]["start_time"], "2025-12-03T14:00:00.000001Z");
        assert_eq!(stats["maxValues"]["start_time"], "2025-12-03T14:00:00.000003Z");
    }

    #[test]
    fn a_log_path_outside_the_table_is_refused() {
        let values = HashMap::new();
        for path in ["../other/x.parquet", "/etc/passwd", "s3://bucket/x.parquet", "date=a/../../x.parquet"] {
            assert!(file_of(Signal::Spans, path, 1, None, &values).is_err(), "{path}");
        }
        let ok = file_of(Signal::Logs, "part-0001.parquet", 5, Some(2), &values).unwrap();
        assert_eq!(ok.relative_path, Path::new("logs/part-0001.parquet"));
        assert_eq!((ok.rows, ok.time_range_ns), (Some(2), None));
    }

    #[test]
    fn the_delta_schema_is_the_stored_columns_then_the_partition_columns() {
        for signal in Signal::ALL {
            let fields = delta_schema(signal).unwrap();
            assert_eq!(fields.len(), signal.schema().fields().len() + PARTITION_COLUMNS.len());
            let names: Vec<&str> = fields.iter().map(|f| f.name().as_str()).collect();
            assert_eq!(&names[names.len() - PARTITION_COLUMNS.len()..], &PARTITION_COLUMNS[..]);
        }
    }

    /// A flush's commit and its transaction version are one fact: the version is read back from the log, and a
    /// reader that did not commit sees the files.
    #[tokio::test]
    async fn a_commit_records_the_wal_position_it_covers() {
        let dir = tempfile::tempdir().unwrap();
        let tables = Tables::open(dir.path(), Some(AppId::for_wal("00ff"))).await.unwrap();
        assert_eq!(tables.view(Signal::Spans).await.unwrap().committed_through, None);
        let f = file(
            "spans/date=2026-12-03/hour=14/00000000000000000042_1764770400000001500_1764770400000002001_0000abcd.parquet",
        );
        let view = tables.commit_flush(Signal::Spans, std::slice::from_ref(&f), 42).await.unwrap();
        assert_eq!(view.committed_through, Some(42));
        assert_eq!(view.files.len(), 1);
        assert_eq!(view.files[0].relative_path, f.relative_path);
        assert_eq!(view.files[0].rows, Some(3));
        // Another writer's id sees none of it as its own.
        let other = Tables::open(dir.path(), Some(AppId::for_wal("0e0e"))).await.unwrap();
        let seen = other.view(Signal::Spans).await.unwrap();
        assert_eq!((seen.committed_through, seen.files.len()), (None, 1));
        let catalog = open_catalog(dir.path()).await.unwrap();
        assert_eq!(catalog.snapshot(Signal::Spans).files.len(), 1);
    }

    /// A placement rule's store on a local path is used like a bucket (object_store's local file system): its
    /// tables are created and committed to there, and a reader's catalog shows their files as that store's, next to
    /// the default store's.
    #[tokio::test]
    async fn a_placement_store_on_a_local_path_holds_its_own_tables_and_readers_union_them() {
        let data = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let url = elsewhere.path().join("eu").to_string_lossy().into_owned();
        let remote = remote::connect_placement(&url).unwrap();
        assert_eq!(remote.store_url(), "file://");
        let app = Some(AppId::for_wal("00ff"));
        let placed = Tables::open_at(&data.path().join("placement/eu"), Some(&remote), app.clone()).await.unwrap();
        let default = Tables::open(data.path(), app).await.unwrap();
        let f = file(
            "spans/date=2026-12-03/hour=14/00000000000000000042_1764770400000001500_1764770400000002001_0000abcd.parquet",
        );
        let view = placed.commit_flush(Signal::Spans, std::slice::from_ref(&f), 42).await.unwrap();
        assert_eq!((view.committed_through, view.files.len()), (Some(42), 1));
        assert!(elsewhere.path().join("eu/spans/_delta_log/00000000000000000001.json").is_file());
        assert_eq!(default.view(Signal::Spans).await.unwrap().files.len(), 0, "the default store holds none of it");
        let catalog = open_placed_catalog(data.path(), None, vec![remote]).await.unwrap();
        let files = catalog.snapshot(Signal::Spans).files;
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].store, StoreId(1));
        assert!(catalog.remote_of(StoreId(1)).is_some() && catalog.remote_of(StoreId::DEFAULT).is_none());
        // A relative path names no store.
        assert!(remote::connect_placement("relative/eu").is_err());
    }

    /// A reader's view of other writers' `txn` versions, followed from commit to commit, always equals what the log
    /// says when read afresh: across interleaved commits, a checkpoint, a writer asked about only later, and a jump
    /// of more commits than are followed one by one.
    #[tokio::test]
    async fn other_writers_versions_follow_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, never) = (AppId::for_wal("000a"), AppId::for_wal("000b"), AppId::for_wal("0000"));
        let writer_a = Tables::open(dir.path(), Some(a.clone())).await.unwrap();
        let writer_b = Tables::open(dir.path(), Some(b.clone())).await.unwrap();
        let reader = Tables::open(dir.path(), Some(AppId::for_wal("00cc"))).await.unwrap();
        let mut n = 0u64;
        let mut commit = async |writer: &Tables, seq: u64| {
            n += 1;
            let f = file(&format!(
                "spans/date=2026-12-03/hour=14/{seq:020}_1764770400000001500_1764770400000002001_{n:08x}.parquet"
            ));
            writer.commit_flush(Signal::Spans, std::slice::from_ref(&f), seq).await.unwrap();
        };
        let truth = async |apps: &[AppId]| -> Vec<Option<u64>> {
            let fresh = Tables::open(dir.path(), None).await.unwrap();
            let table = fresh.tables[&Signal::Spans].lock().await;
            let snapshot = table.snapshot().unwrap();
            let mut out = Vec::new();
            for app in apps {
                let v = snapshot.transaction_version(table.log_store().as_ref(), &app.0).await.unwrap();
                out.push(v.map(|v| v as u64));
            }
            out
        };
        let check = async |apps: &[AppId], want: &[Option<u64>]| {
            let (_, seen) = reader.view_with_apps(Signal::Spans, apps).await.unwrap();
            assert_eq!(seen, want);
            assert_eq!(seen, truth(apps).await, "against the log read afresh");
        };
        check(&[a.clone(), b.clone()], &[None, None]).await;
        commit(&writer_a, 10).await;
        commit(&writer_b, 20).await;
        check(&[a.clone(), b.clone()], &[Some(10), Some(20)]).await;
        // Interleaved commits, read after each few, past the checkpoint at version 100.
        let mut seq = 20;
        for round in 0..35u64 {
            for _ in 0..3 {
                seq += 1;
                commit(if seq % 2 == 0 { &writer_a } else { &writer_b }, seq).await;
            }
            let (last_a, last_b) = if seq % 2 == 0 { (seq, seq - 1) } else { (seq - 1, seq) };
            check(&[a.clone(), b.clone()], &[Some(last_a), Some(last_b)]).await;
            if round == 20 {
                // A writer asked about for the first time, and one that never committed.
                check(&[b.clone(), never.clone(), a.clone()], &[Some(last_b), None, Some(last_a)]).await;
            }
        }
        // More commits at once than are followed one by one: read again from the snapshot.
        for _ in 0..(txn::MAX_COMMITS_FOLLOWED + 5) {
            seq += 1;
            commit(&writer_b, seq).await;
        }
        let (_, seen) = reader.view_with_apps(Signal::Spans, &[a.clone(), b.clone()]).await.unwrap();
        assert_eq!(seen, truth(&[a.clone(), b.clone()]).await);
        assert_eq!(seen[1], Some(seq));
        // A writer's own version comes with the others', as its replayed `view` says.
        let (view, seen) = writer_a.view_with_apps(Signal::Spans, std::slice::from_ref(&b)).await.unwrap();
        assert_eq!(seen, vec![Some(seq)]);
        assert!(view.committed_through.is_some());
        assert_eq!(view.committed_through, writer_a.view(Signal::Spans).await.unwrap().committed_through);
    }
}
