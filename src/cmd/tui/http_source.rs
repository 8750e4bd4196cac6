//! The dashboard's figures from running tailscope servers' HTTP API: the binary's client, so that the `tui`
//! crate (rendering, screens, the local source) does not link an HTTP client.
//!
//! With several servers (`--server A,B,C`) live panels show one view of all of them: each server's live windows
//! are fetched as histograms (`/api/v1/live/histograms`) at once and merged (`collector::live::merge`), so the
//! percentiles are those of the union of their spans; a server that cannot be read is named in the status bar
//! and the others are still shown. SQL and other API panels read the first server: SQL across collectors is
//! distributed SQL (issue #16's Ballista part), not a merge of answers.

use std::sync::Arc;
use std::time::Duration;

use collector::live::merge;
use futures::future::BoxFuture;
use tui::DataSource;
use tui::data::Table;
use tui::source::FetchError;

/// One or more tailscope servers' HTTP API.
#[derive(Debug, Clone)]
pub struct HttpSource {
    /// The servers, as given; the first answers SQL and API panels.
    bases: Arc<[String]>,
    client: reqwest::Client,
}

impl HttpSource {
    /// A source for the comma-separated servers in `servers` (e.g. `http://127.0.0.1:4319`). Each request gives
    /// up after `timeout`.
    pub fn new(servers: &str, timeout: Duration, auth: &crate::cmd::ServerAuth) -> Result<HttpSource, String> {
        let mut bases: Vec<String> = Vec::new();
        for base in servers.split(',').map(|b| b.trim().trim_end_matches('/')).filter(|b| !b.is_empty()) {
            if !(base.starts_with("http://") || base.starts_with("https://")) {
                return Err(format!("--server {base:?} must be an http:// or https:// URL"));
            }
            // The same server twice would count its spans twice in the merged view.
            if bases.iter().any(|b| b == base) {
                return Err(format!("--server lists {base} twice"));
            }
            bases.push(base.to_string());
        }
        if bases.is_empty() {
            return Err("--server needs at least one http:// or https:// URL".into());
        }
        let client = auth
            .client_builder()?
            .connect_timeout(Duration::from_secs(2))
            .timeout(timeout)
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(HttpSource { bases: bases.into(), client })
    }

    /// The server SQL and API panels read.
    fn first(&self) -> &str {
        &self.bases[0]
    }

    fn get(&self, path_and_query: String) -> BoxFuture<'static, Result<String, FetchError>> {
        let req = self.client.get(format!("{}{path_and_query}", self.first()));
        Box::pin(send(req))
    }

    /// The live windows of every server, merged; servers that could not be read are named in the table's notice.
    fn merged_live(&self, window: &'static str, group: String) -> BoxFuture<'static, Result<Table, FetchError>> {
        let fetches: Vec<_> = self
            .bases
            .iter()
            .map(|base| {
                let req = self.client.get(format!("{base}/api/v1/live/histograms?window={window}&group={group}"));
                let base = base.clone();
                async move { (base, send_limited(req, merge::MAX_RESPONSE_BYTES).await) }
            })
            .collect();
        Box::pin(async move {
            let mut bodies = Vec::new();
            let mut failed: Vec<(String, FetchError)> = Vec::new();
            for (base, answer) in futures::future::join_all(fetches).await {
                match answer {
                    Ok(body) => bodies.push((base, body)),
                    Err(e) => failed.push((base, e)),
                }
            }
            let (report, refused) = merge::merge_answers(bodies, true);
            failed.extend(refused.into_iter().map(|(base, e)| (base, FetchError::Failed(e.to_string()))));
            let named = |failed: &[(String, FetchError)]| {
                failed.iter().map(|(base, e)| format!("{base}: {e}")).collect::<Vec<_>>().join("; ")
            };
            let Some(report) = report else {
                // No server answered: the banner when none could be reached, the panel's error otherwise.
                let all_down = failed.iter().all(|(_, e)| matches!(e, FetchError::Unreachable(_)));
                let message = named(&failed);
                return Err(if all_down { FetchError::Unreachable(message) } else { FetchError::Failed(message) });
            };
            let json = serde_json::to_string(&report).map_err(|e| FetchError::Failed(e.to_string()))?;
            let mut table = Table::from_json_at(&json, Some("/rows")).map_err(FetchError::Failed)?;
            table.slo = Some(report.slo_p99_ms);
            if !failed.is_empty() {
                table.notice = Some(format!("merged without {}", named(&failed)));
            }
            Ok(table)
        })
    }
}

/// Why a request failed, as the dashboard shows it.
fn request_error(e: reqwest::Error) -> FetchError {
    if e.is_connect() {
        FetchError::Unreachable(format!("cannot connect: {}", root_cause(&e)))
    } else if e.is_timeout() {
        FetchError::Failed("the server did not answer in time".into())
    } else {
        FetchError::Unreachable(root_cause(&e))
    }
}

async fn send(req: reqwest::RequestBuilder) -> Result<String, FetchError> {
    let resp = req.send().await.map_err(request_error)?;
    let status = resp.status();
    let body = resp.text().await.map_err(|e| FetchError::Unreachable(root_cause(&e)))?;
    if status.is_success() {
        return Ok(body);
    }
    Err(api_error(status, &body))
}

/// The API's errors are {"error": "..."}; show the message, not the envelope.
fn api_error(status: reqwest::StatusCode, body: &str) -> FetchError {
    let message = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
        .unwrap_or_else(|| body.chars().take(300).collect());
    FetchError::Failed(format!("{status}: {message}"))
}

/// Like [`send`], reading at most `limit` bytes of the answer (a peer's answer is hostile input).
async fn send_limited(req: reqwest::RequestBuilder, limit: usize) -> Result<Vec<u8>, FetchError> {
    let mut resp = req.send().await.map_err(request_error)?;
    let status = resp.status();
    let too_large = || FetchError::Failed(format!("{status}: the answer is larger than {limit} bytes"));
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| FetchError::Unreachable(root_cause(&e)))? {
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    if status.is_success() {
        return Ok(body);
    }
    Err(api_error(status, &String::from_utf8_lossy(&body)))
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
        self.bases.join(", ")
    }
    fn has_server(&self) -> bool {
        true
    }
    fn sql(&self, sql: String) -> BoxFuture<'static, Result<Table, FetchError>> {
        let req = self.client.post(format!("{}/api/v1/query", self.first())).json(&serde_json::json!({ "sql": sql }));
        Box::pin(async move {
            let body = send(req).await?;
            Table::from_json_rows(&body).map_err(|e| FetchError::Failed(format!("unexpected query answer: {e}")))
        })
    }
    fn live(&self, window: &'static str, group: String) -> BoxFuture<'static, Result<Table, FetchError>> {
        if self.bases.len() > 1 {
            return self.merged_live(window, group);
        }
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

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A server that answers every connection once with `status` and the JSON `body`, after reading the request.
    async fn answering(status: &str, body: &str) -> String {
        let response = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                // The whole request (head and body), so that closing does not reset the connection under it.
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !request_is_complete(&request) {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = conn.write_all(response.as_bytes()).await;
            }
        });
        format!("http://{addr}")
    }

    fn request_is_complete(request: &[u8]) -> bool {
        let text = String::from_utf8_lossy(request);
        let Some(head_end) = text.find("\r\n\r\n") else { return false };
        let length = text[..head_end]
            .lines()
            .find_map(|line| line.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(0);
        request.len() >= head_end + 4 + length
    }

    #[test]
    fn only_http_urls_are_servers() {
        let err = HttpSource::new("127.0.0.1:4319", Duration::from_secs(1), &Default::default()).unwrap_err();
        assert_eq!(err, "--server \"127.0.0.1:4319\" must be an http:// or https:// URL");
        let source = HttpSource::new("http://127.0.0.1:4319/", Duration::from_secs(1), &Default::default()).unwrap();
        assert_eq!(source.describe(), "http://127.0.0.1:4319");
        // Several servers: all named; twice the same would count its spans twice in the merged view.
        let several = HttpSource::new("http://a:4319/, https://b:4319", Duration::from_secs(1), &Default::default());
        assert_eq!(several.unwrap().describe(), "http://a:4319, https://b:4319");
        let twice = HttpSource::new("http://a:4319,http://a:4319/", Duration::from_secs(1), &Default::default());
        assert_eq!(twice.unwrap_err(), "--server lists http://a:4319 twice");
        let none = HttpSource::new(" , ", Duration::from_secs(1), &Default::default());
        assert_eq!(none.unwrap_err(), "--server needs at least one http:// or https:// URL");
    }

    #[tokio::test]
    async fn a_closed_port_is_unreachable_and_an_api_error_shows_its_message() {
        // A port nobody listens on: the dashboard's banner case.
        let closed = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap()
        };
        let source = HttpSource::new(&format!("http://{closed}"), Duration::from_secs(5), &Default::default()).unwrap();
        match source.sql("SELECT 1".into()).await {
            Err(FetchError::Unreachable(message)) => assert!(message.starts_with("cannot connect: "), "{message}"),
            other => panic!("{other:?}"),
        }

        // The API's {"error": ...} envelope: the panel shows the status and the message.
        let body = r#"{"error":"no such column: nope","kind":"invalid_sql"}"#;
        let source =
            HttpSource::new(&answering("400 Bad Request", body).await, Duration::from_secs(5), &Default::default())
                .unwrap();
        let err = source.sql("SELECT nope".into()).await.unwrap_err();
        assert_eq!(err, FetchError::Failed("400 Bad Request: no such column: nope".into()));

        // A success is read as the query's rows.
        let source = HttpSource::new(
            &answering("200 OK", r#"[{"n":1},{"n":2}]"#).await,
            Duration::from_secs(5),
            &Default::default(),
        )
        .unwrap();
        let table = source.sql("SELECT n".into()).await.unwrap();
        assert_eq!(table.columns, ["n"]);
        assert_eq!(table.rows.len(), 2);
    }
}
