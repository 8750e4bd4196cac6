//! Where the dashboard's figures come from: a running tailscope server over HTTP, or a data directory read
//! locally with DataFusion (history browsing without a server). The HTTP client is the binary's
//! (`src/cmd/tui/http_source.rs`), so that this crate does not link one; it implements [`DataSource`] too.

use std::path::PathBuf;
use std::sync::Arc;

use datafusion::arrow::record_batch::RecordBatch;
use futures::future::BoxFuture;

use crate::data::Table;

/// Why a fetch failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FetchError {
    /// The server could not be reached: the dashboard shows a banner and retries with backoff.
    #[error("{0}")]
    Unreachable(String),
    /// The source answered with an error (bad SQL, timeout, missing table): shown inside the panel.
    #[error("{0}")]
    Failed(String),
}

/// A source of panel data. Implementations return `'static` futures so fetches run on background tasks.
pub trait DataSource: Send + Sync + 'static {
    /// One line for the status bar, e.g. `http://127.0.0.1:4319`.
    fn describe(&self) -> String;
    /// Whether live windows and API paths are available (a server), or only SQL (a data dir).
    fn has_server(&self) -> bool;
    /// Runs one SQL statement.
    fn sql(&self, sql: String) -> BoxFuture<'static, Result<Table, FetchError>>;
    /// Reads the live latency windows (`window` = `1m|5m|1h`, `group` = key columns kept apart).
    fn live(&self, window: &'static str, group: String) -> BoxFuture<'static, Result<Table, FetchError>>;
    /// GETs a JSON API path and reads the rows at `pointer`.
    fn api(&self, path: String, pointer: Option<String>) -> BoxFuture<'static, Result<Table, FetchError>>;
}

/// A data directory read in-process through `query::Engine`: the same tables and views as a server's SQL API,
/// over its Parquet files (listed again for every query, so new files show up) and its alert log.
#[derive(Debug, Clone)]
pub struct LocalSource {
    dir: Arc<PathBuf>,
    catalog: tailscope_core::catalog::Catalog,
    engine: query::Engine,
}

impl LocalSource {
    /// A source over `dir`, with the same tables and views as a server's SQL API; fails when `dir` is not a
    /// directory.
    pub async fn new(dir: PathBuf) -> Result<LocalSource, String> {
        if !dir.is_dir() {
            return Err(format!("--data-dir {} is not a directory", dir.display()));
        }
        let catalog = store::open_catalog(&dir).await.map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
        let engine = query::Engine::new(catalog.clone(), tailscope_core::config::QueryConfig::default())
            .await
            .map_err(|e| e.to_string())?;
        Ok(LocalSource { dir: Arc::new(dir), catalog, engine })
    }

    /// Runs `sql` and returns the record batches. The tables' logs are read again first, so files committed by a
    /// collector writing there appear without restarting the dashboard.
    pub async fn query(&self, sql: &str) -> Result<Vec<RecordBatch>, String> {
        store::refresh_catalog(&self.catalog).await.map_err(|e| format!("cannot read {}: {e}", self.dir.display()))?;
        Ok(self.engine.sql(sql).await.map_err(|e| e.to_string())?.batches)
    }
}

/// Record batches as a [`Table`] (through Arrow's JSON writer, so values look as they do over HTTP: a column that
/// is null in every row is still a column).
pub fn batches_to_table(batches: &[RecordBatch]) -> Result<Table, String> {
    let mut writer = datafusion::arrow::json::WriterBuilder::new()
        .with_explicit_nulls(true)
        .build::<_, datafusion::arrow::json::writer::JsonArray>(Vec::new());
    let refs: Vec<&RecordBatch> = batches.iter().collect();
    writer.write_batches(&refs).map_err(|e| e.to_string())?;
    writer.finish().map_err(|e| e.to_string())?;
    let bytes = writer.into_inner();
    let mut table = if bytes.is_empty() {
        Table::default()
    } else {
        Table::from_json_rows(&String::from_utf8_lossy(&bytes)).map_err(|e| e.to_string())?
    };
    if table.columns.is_empty()
        && let Some(b) = batches.first()
    {
        table.columns = b.schema().fields().iter().map(|f| f.name().clone()).collect();
    }
    Ok(table)
}

impl DataSource for LocalSource {
    fn describe(&self) -> String {
        self.dir.display().to_string()
    }
    fn has_server(&self) -> bool {
        false
    }
    fn sql(&self, sql: String) -> BoxFuture<'static, Result<Table, FetchError>> {
        let me = self.clone();
        Box::pin(async move {
            // DataFusion's planning and decoding are CPU work: off the UI's runtime thread.
            let batches = me.query(&sql).await.map_err(FetchError::Failed)?;
            batches_to_table(&batches).map_err(FetchError::Failed)
        })
    }
    fn live(&self, _window: &'static str, _group: String) -> BoxFuture<'static, Result<Table, FetchError>> {
        Box::pin(async { Err(FetchError::Failed("live windows need a server (--server)".into())) })
    }
    fn api(&self, path: String, _pointer: Option<String>) -> BoxFuture<'static, Result<Table, FetchError>> {
        Box::pin(async move { Err(FetchError::Failed(format!("{path} needs a server (--server)"))) })
    }
}
