//! Where the dashboard's figures come from: a running tailscope server over HTTP, or a data directory read
//! locally with DataFusion (history browsing without a server).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

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

/// A tailscope server's HTTP API.
#[derive(Debug, Clone)]
pub struct HttpSource {
    base: String,
    client: reqwest::Client,
}

impl HttpSource {
    /// A source for the server at `base` (e.g. `http://127.0.0.1:4319`). Each request gives up after `timeout`.
    pub fn new(base: &str, timeout: Duration) -> Result<HttpSource, String> {
        let base = base.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(format!("--server {base:?} must be an http:// or https:// URL"));
        }
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .timeout(timeout)
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(HttpSource { base, client })
    }

    fn get(&self, path_and_query: String) -> BoxFuture<'static, Result<String, FetchError>> {
        let req = self.client.get(format!("{}{path_and_query}", self.base));
        Box::pin(send(req))
    }
}

async fn send(req: reqwest::RequestBuilder) -> Result<String, FetchError> {
    let resp = req.send().await.map_err(|e| {
        if e.is_connect() {
            FetchError::Unreachable(format!("cannot connect: {}", root_cause(&e)))
        } else if e.is_timeout() {
            FetchError::Failed("the server did not answer in time".into())
        } else {
            FetchError::Unreachable(root_cause(&e))
        }
    })?;
    let status = resp.status();
    let body = resp.text().await.map_err(|e| FetchError::Unreachable(root_cause(&e)))?;
    if status.is_success() {
        return Ok(body);
    }
    // The API's errors are {"error": "..."}; show the message, not the envelope.
    let message = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
        .unwrap_or_else(|| body.chars().take(300).collect());
    Err(FetchError::Failed(format!("{status}: {message}")))
}

fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

impl DataSource for HttpSource {
    fn describe(&self) -> String {
        self.base.clone()
    }
    fn has_server(&self) -> bool {
        true
    }
    fn sql(&self, sql: String) -> BoxFuture<'static, Result<Table, FetchError>> {
        let req = self.client.post(format!("{}/api/v1/query", self.base)).json(&serde_json::json!({ "sql": sql }));
        Box::pin(async move {
            let body = send(req).await?;
            Table::from_json_rows(&body).map_err(|e| FetchError::Failed(format!("unexpected query answer: {e}")))
        })
    }
    fn live(&self, window: &'static str, group: String) -> BoxFuture<'static, Result<Table, FetchError>> {
        let get = self.get(format!("/api/v1/live?window={window}&group={group}"));
        Box::pin(async move {
            let body = get.await?;
            let mut table = Table::from_json_at(&body, Some("/rows")).map_err(FetchError::Failed)?;
            table.slo = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("slo_p99_ms").and_then(|s| s.as_f64()));
            Ok(table)
        })
    }
    fn api(&self, path: String, pointer: Option<String>) -> BoxFuture<'static, Result<Table, FetchError>> {
        let get = self.get(path);
        Box::pin(async move {
            let body = get.await?;
            Table::from_json_at(&body, pointer.as_deref()).map_err(FetchError::Failed)
        })
    }
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
        let catalog =
            tailscope_core::catalog::Catalog::open(&dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
        let engine = query::Engine::new(catalog.clone(), tailscope_core::config::QueryConfig::default())
            .await
            .map_err(|e| e.to_string())?;
        Ok(LocalSource { dir: Arc::new(dir), catalog, engine })
    }

    /// Runs `sql` and returns the record batches. The directory is listed again first, so files flushed by a
    /// collector writing there appear without restarting the dashboard.
    pub async fn query(&self, sql: &str) -> Result<Vec<RecordBatch>, String> {
        self.catalog.rescan().map_err(|e| format!("cannot list {}: {e}", self.dir.display()))?;
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
