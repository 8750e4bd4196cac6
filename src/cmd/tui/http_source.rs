//! The dashboard's figures from running tailscope servers' HTTP API: the binary's client, so that the `tui`
//! crate (rendering, screens, the local source) does not link an HTTP client.
//!
//! With several servers (`--server A,B,C`) live panels show one view of all of them: each server's live windows
//! are fetched as histograms (`/api/v1/live/histograms`) at once and merged (`collector::live::merge`), so the
//! percentiles are those of the union of their spans; a server that cannot be read is named in the status bar
//! and the others are still shown. SQL and other API panels read the first server: SQL across collectors is
//! distributed SQL (issue #16's Ballista part), not a merge of answers.
//!
//! A server's answer is outside input: every body is read chunk by chunk and the read stops at a bound
//! (`--max-answer-mb` for SQL and API answers, [`merge::MAX_RESPONSE_BYTES`] for live histograms), so a broken or
//! hostile server cannot make the dashboard allocate without limit.

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
    /// The most bytes read of one SQL or API answer.
    max_answer: usize,
}

/// The default of `--max-answer-mb`: a panel shows at most a few thousand rows; 8 MiB of JSON holds far more.
pub const DEFAULT_MAX_ANSWER_MB: u64 = 8;

impl HttpSource {
    /// A source for the comma-separated servers in `servers` (e.g. `http://127.0.0.1:4319`). Each request gives
    /// up after `timeout`; a SQL or API answer is read to at most `max_answer_mb` MiB.
    pub fn new(
        servers: &str,
        timeout: Duration,
        max_answer_mb: u64,
        auth: &crate::cmd::ServerAuth,
    ) -> Result<HttpSource, String> {
        let max_answer = max_answer_mb
            .checked_mul(1 << 20)
            .and_then(|b| usize::try_from(b).ok())
            .filter(|b| *b > 0)
            .ok_or_else(|| format!("--max-answer-mb {max_answer_mb} must be from 1 to {}", usize::MAX >> 20))?;
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
        Ok(HttpSource { bases: bases.into(), client, max_answer })
    }

    /// The server SQL and API panels read.
    fn first(&self) -> &str {
        &self.bases[0]
    }

    fn get(&self, path_and_query: String) -> BoxFuture<'static, Result<String, FetchError>> {
        let req = self.client.get(format!("{}{path_and_query}", self.first()));
        Box::pin(send(req, self.first().to_string(), self.max_answer))
    }

    /// The live windows of every server, merged; servers that could not be read are named in the table's notice.
    fn merged_live(&self, window: &'static str, group: String) -> BoxFuture<'static, Result<Table, FetchError>> {
        let fetches: Vec<_> = self
            .bases
            .iter()
            .map(|base| {
                let req = self.client.get(format!("{base}/api/v1/live/histograms?window={window}&group={group}"));
                let base = base.clone();
                let advice = "the most a live-histograms answer is read to: group by fewer columns or filter";
                async move {
                    let answer = send_limited(req, &base, merge::MAX_RESPONSE_BYTES, advice).await;
                    (base, answer)
                }
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

/// A SQL or API answer of `server`, read to at most `limit` bytes.
async fn send(req: reqwest::RequestBuilder, server: String, limit: usize) -> Result<String, FetchError> {
    let body = send_limited(req, &server, limit, "narrow the query or raise --max-answer-mb").await?;
    // The API answers UTF-8 JSON; anything else is shown as it came, not refused for a stray byte.
    Ok(String::from_utf8(body).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
}

/// The API's errors are {"error": "..."}; show the message, not the envelope.
fn api_error(status: reqwest::StatusCode, body: &str) -> FetchError {
    let message = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
        .unwrap_or_else(|| body.chars().take(300).collect());
    FetchError::Failed(format!("{status}: {message}"))
}

/// The answer of `server` to `req`, read chunk by chunk to at most `limit` bytes (a server's answer is hostile
/// input): past it the read stops, the connection is dropped, and the error names the server, the bound and
/// `advice`. A non-success status is the API's error.
async fn send_limited(
    req: reqwest::RequestBuilder,
    server: &str,
    limit: usize,
    advice: &str,
) -> Result<Vec<u8>, FetchError> {
    let mut resp = req.send().await.map_err(request_error)?;
    let status = resp.status();
    let too_large = || {
        let mib = limit as f64 / f64::from(1 << 20);
        FetchError::Failed(format!("{status}: the answer of {server} passed {mib} MiB: {advice}"))
    };
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
        let answer = send(req, self.first().to_string(), self.max_answer);
        Box::pin(async move {
            let body = answer.await?;
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
        let err = HttpSource::new("127.0.0.1:4319", Duration::from_secs(1), DEFAULT_MAX_ANSWER_MB, &Default::default())
            .unwrap_err();
        assert_eq!(err, "--server \"127.0.0.1:4319\" must be an http:// or https:// URL");
        let source = HttpSource::new(
            "http://127.0.0.1:4319/",
            Duration::from_secs(1),
            DEFAULT_MAX_ANSWER_MB,
            &Default::default(),
        )
        .unwrap();
        assert_eq!(source.describe(), "http://127.0.0.1:4319");
        // Several servers: all named; twice the same would count its spans twice in the merged view.
        let several = HttpSource::new(
            "http://a:4319/, https://b:4319",
            Duration::from_secs(1),
            DEFAULT_MAX_ANSWER_MB,
            &Default::default(),
        );
        assert_eq!(several.unwrap().describe(), "http://a:4319, https://b:4319");
        let twice = HttpSource::new(
            "http://a:4319,http://a:4319/",
            Duration::from_secs(1),
            DEFAULT_MAX_ANSWER_MB,
            &Default::default(),
        );
        assert_eq!(twice.unwrap_err(), "--server lists http://a:4319 twice");
        let none = HttpSource::new(" , ", Duration::from_secs(1), DEFAULT_MAX_ANSWER_MB, &Default::default());
        assert_eq!(none.unwrap_err(), "--server needs at least one http:// or https:// URL");
    }

    #[tokio::test]
    async fn a_closed_port_is_unreachable_and_an_api_error_shows_its_message() {
        // A port nobody listens on: the dashboard's banner case.
        let closed = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap()
        };
        let source = HttpSource::new(
            &format!("http://{closed}"),
            Duration::from_secs(5),
            DEFAULT_MAX_ANSWER_MB,
            &Default::default(),
        )
        .unwrap();
        match source.sql("SELECT 1".into()).await {
            Err(FetchError::Unreachable(message)) => assert!(message.starts_with("cannot connect: "), "{message}"),
            other => panic!("{other:?}"),
        }

        // The API's {"error": ...} envelope: the panel shows the status and the message.
        let body = r#"{"error":"no such column: nope","kind":"invalid_sql"}"#;
        let source = HttpSource::new(
            &answering("400 Bad Request", body).await,
            Duration::from_secs(5),
            DEFAULT_MAX_ANSWER_MB,
            &Default::default(),
        )
        .unwrap();
        let err = source.sql("SELECT nope".into()).await.unwrap_err();
        assert_eq!(err, FetchError::Failed("400 Bad Request: no such column: nope".into()));

        // A success is read as the query's rows.
        let source = HttpSource::new(
            &answering("200 OK", r#"[{"n":1},{"n":2}]"#).await,
            Duration::from_secs(5),
            DEFAULT_MAX_ANSWER_MB,
            &Default::default(),
        )
        .unwrap();
        let table = source.sql("SELECT n".into()).await.unwrap();
        assert_eq!(table.columns, ["n"]);
        assert_eq!(table.rows.len(), 2);
    }

    /// A server that answers 200 with a body that never ends (no length, written until the client goes away) and
    /// counts the bytes the client took.
    async fn endless() -> (String, tokio::task::JoinHandle<u64>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let served = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            while !request_is_complete(&request) {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => return 0,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n[";
            conn.write_all(head.as_bytes()).await.unwrap();
            let row = r#"{"n":1},"#.repeat(8 << 10);
            let mut written = 0u64;
            // Until the client closes (a write error), or far past any bound (a client that reads without one).
            while written < 256 << 20 && conn.write_all(row.as_bytes()).await.is_ok() {
                written += row.len() as u64;
            }
            written
        });
        (format!("http://{addr}"), served)
    }

    /// A broken or hostile server cannot make the dashboard allocate without bound: an endless SQL answer, or one
    /// that declares more than the bound, is refused at `--max-answer-mb` with an error that says what to do, and
    /// the connection is dropped there (the server could write not much more than the bound and the sockets'
    /// buffers).
    #[tokio::test]
    async fn an_endless_answer_stops_at_the_bound() {
        let (url, served) = endless().await;
        let source = HttpSource::new(&url, Duration::from_secs(60), 1, &Default::default()).unwrap();
        let err = source.sql("SELECT n FROM spans".into()).await.unwrap_err();
        assert_eq!(
            err,
            FetchError::Failed(format!(
                "200 OK: the answer of {url} passed 1 MiB: narrow the query or raise --max-answer-mb"
            ))
        );
        let written = served.await.unwrap();
        assert!(written < 64 << 20, "the server wrote {written} bytes before the client went away");

        // API panels read through the same bound.
        let (url, served) = endless().await;
        let source = HttpSource::new(&url, Duration::from_secs(60), 2, &Default::default()).unwrap();
        let err = source.api("/api/v1/alerts".into(), None).await.unwrap_err();
        assert!(matches!(&err, FetchError::Failed(m) if m.contains("passed 2 MiB")), "{err:?}");
        assert!(served.await.unwrap() < 64 << 20);

        // A declared length past the bound is refused before any of the body is read.
        let huge = "HTTP/1.1 200 OK\r\ncontent-length: 10000000000\r\nconnection: close\r\n\r\n[";
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf).await;
            let _ = conn.write_all(huge.as_bytes()).await;
            // Held open: the client must not wait for the body.
            let _ = conn.read(&mut buf).await;
        });
        let source = HttpSource::new(&format!("http://{addr}"), Duration::from_secs(60), 1, &Default::default());
        let err = source.unwrap().sql("SELECT 1".into()).await.unwrap_err();
        assert!(matches!(&err, FetchError::Failed(m) if m.contains("passed 1 MiB: narrow the query")), "{err:?}");

        // The flag's bound is checked.
        let zero = HttpSource::new(&url, Duration::from_secs(1), 0, &Default::default()).unwrap_err();
        assert!(zero.starts_with("--max-answer-mb 0 must be from 1"), "{zero}");
    }
}
