//! Webhook delivery of alert events: JSON POST with retries and exponential backoff, in background tasks.
//!
//! Each webhook has its own worker and queue, so a slow or dead endpoint delays nobody else, and events reach
//! each endpoint in order. Progress is kept in `DATA/alerts/delivery.json` (the last event sequence number each
//! URL has received or given up on, written atomically): after a restart, events recorded but not yet
//! delivered are sent, and nothing delivered is sent again. A URL added to the config starts with new events
//! only.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rand::Rng;
use serde_json::{Value, json};
use tailscope_core::alerts::{ALERTS_DIR, AlertEvent, AlertView};
use tailscope_core::cost::AlertsConfig;
use tokio::sync::mpsc;

/// The delivery progress file inside the alerts directory.
pub const DELIVERY_FILE: &str = "delivery.json";

/// The JSON body POSTed for an event: the event's fields, its figures as text in the units of the budget's cap
/// (`used`, `cap`, `projected`, as [`AlertView`]), and a Slack-compatible `text`.
pub fn payload(event: &AlertEvent) -> Value {
    let mut v = serde_json::to_value(AlertView::from(event)).expect("alert events serialise");
    let icon = match (event.state.as_str(), event.severity.as_str()) {
        ("resolved", _) => ":white_check_mark:",
        (_, "critical") => ":rotating_light:",
        _ => ":warning:",
    };
    if let Value::Object(map) = &mut v {
        map.insert("text".into(), json!(format!("{icon} [tailscope] {}", event.message)));
        map.insert("source".into(), json!("tailscope"));
    }
    v
}

/// How one delivery ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A 2xx answer, after this many attempts.
    Delivered { attempts: u32 },
    /// Given up: a non-retryable answer or attempts exhausted; the reason says which.
    Failed { attempts: u32, reason: String },
}

/// The most of a webhook's error answer kept for the log: enough for Slack's `invalid_payload` and the like.
const MAX_ERROR_BODY_BYTES: usize = 1024;

/// The HTTP client of webhook deliveries. `config.timeout` bounds each attempt as a whole (connect, send, answer).
/// Redirects are never followed: a webhook answering 3xx could send alert contents to any host, so the
/// configured URL must be the final one and a 3xx is a failed delivery.
pub fn client(config: &AlertsConfig) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder().timeout(config.timeout).redirect(reqwest::redirect::Policy::none()).build()
}

/// Up to [`MAX_ERROR_BODY_BYTES`] of an answer's body, lossily as text (for the log); the rest is not read.
async fn error_body(mut resp: reqwest::Response) -> String {
    let mut bytes = Vec::new();
    while bytes.len() < MAX_ERROR_BODY_BYTES {
        match resp.chunk().await {
            Ok(Some(chunk)) => bytes.extend_from_slice(&chunk[..chunk.len().min(MAX_ERROR_BODY_BYTES - bytes.len())]),
            Ok(None) | Err(_) => break,
        }
    }
    String::from_utf8_lossy(&bytes).trim().to_string()
}

/// POSTs `body` to `url` with a client from [`client`] until a 2xx answer, retrying connection errors, timeouts,
/// 408, 429 and 5xx with exponential backoff and jitter (honouring `Retry-After` in seconds, up to `max_backoff`).
/// A redirect (3xx) is not followed and not retried.
pub async fn deliver(client: &reqwest::Client, url: &str, body: &Value, config: &AlertsConfig) -> Outcome {
    let mut backoff = config.initial_backoff;
    let mut last = String::new();
    for attempt in 1..=config.max_attempts {
        let mut wait = backoff;
        match client.post(url).json(body).send().await {
            Ok(resp) if resp.status().is_success() => return Outcome::Delivered { attempts: attempt },
            Ok(resp) if resp.status().is_redirection() => {
                let location = resp
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).chars().take(200).collect::<String>())
                    .unwrap_or_else(|| "nowhere".into());
                let reason = format!(
                    "HTTP {} redirects to {location:?}; webhooks do not follow redirects (the alert could reach \
                     another host): configure the final URL in alerts.webhooks",
                    resp.status()
                );
                return Outcome::Failed { attempts: attempt, reason };
            }
            Ok(resp) => {
                let status = resp.status();
                let retryable = status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429;
                let retry_after = resp
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok());
                let answer = error_body(resp).await;
                last = if answer.is_empty() { format!("HTTP {status}") } else { format!("HTTP {status}: {answer}") };
                if !retryable {
                    return Outcome::Failed { attempts: attempt, reason: format!("{last} is not retryable") };
                }
                if let Some(secs) = retry_after {
                    wait = wait.max(Duration::from_secs(secs)).min(config.max_backoff);
                }
            }
            Err(e) => last = error_chain(&e),
        }
        if attempt == config.max_attempts {
            break;
        }
        let jitter = rand::rng().random_range(0.0..0.2);
        tokio::time::sleep(wait.mul_f64(1.0 + jitter)).await;
        backoff = (backoff * 2).min(config.max_backoff);
    }
    Outcome::Failed {
        attempts: config.max_attempts,
        reason: format!("gave up after {} attempts: {last}", config.max_attempts),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

/// Delivery progress per URL, persisted atomically.
#[derive(Debug)]
pub struct DeliveryLog {
    path: PathBuf,
    delivered: Mutex<BTreeMap<String, u64>>,
}

impl DeliveryLog {
    /// Loads `data_dir/alerts/delivery.json` (empty if absent or unreadable, which re-sends pending events).
    pub fn open(data_dir: &Path) -> DeliveryLog {
        let path = data_dir.join(ALERTS_DIR).join(DELIVERY_FILE);
        let delivered = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), "unreadable webhook delivery state ({e}); pending alerts may be re-sent");
                BTreeMap::new()
            }),
            Err(_) => BTreeMap::new(),
        };
        DeliveryLog { path, delivered: Mutex::new(delivered) }
    }

    /// The last sequence number `url` has been given, if it is known.
    pub fn delivered(&self, url: &str) -> Option<u64> {
        self.delivered.lock().get(url).copied()
    }

    /// Records that `url` is done with `seq` and persists the whole map (temp file, fsync, rename).
    pub fn mark(&self, url: &str, seq: u64) {
        let snapshot = {
            let mut map = self.delivered.lock();
            let entry = map.entry(url.to_string()).or_insert(0);
            *entry = (*entry).max(seq);
            serde_json::to_vec_pretty(&*map).expect("a map of numbers serialises")
        };
        if let Err(e) = write_atomically(&self.path, &snapshot) {
            tracing::warn!(path = %self.path.display(), "cannot persist webhook delivery state: {e}");
        }
    }
}

/// Writes `bytes` to `path` so that a reader (or a crash) sees the old or the new content, never a mix.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    // The rename is durable only once the directory entry is.
    if let Some(dir) = path.parent()
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Queues of the webhook workers.
#[derive(Debug, Clone, Default)]
pub struct Webhooks {
    queues: Vec<mpsc::UnboundedSender<Arc<AlertEvent>>>,
}

impl Webhooks {
    /// Starts one worker per configured URL on `runtime`. `backlog` holds every recorded event; each worker
    /// first sends those after its URL's recorded progress.
    pub fn start(
        config: &AlertsConfig,
        log: Arc<DeliveryLog>,
        backlog: &[Arc<AlertEvent>],
        runtime: &tokio::runtime::Handle,
    ) -> Webhooks {
        let last_seq = backlog.last().map(|e| e.seq).unwrap_or(0);
        let client = match client(config) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("cannot build the webhook HTTP client ({e}); alerts will not be sent to webhooks");
                return Webhooks::default();
            }
        };
        let mut queues = Vec::new();
        for url in &config.webhooks {
            let (tx, mut rx) = mpsc::unbounded_channel::<Arc<AlertEvent>>();
            match log.delivered(url) {
                Some(done) => {
                    for e in backlog.iter().filter(|e| e.seq > done) {
                        let _ = tx.send(e.clone());
                    }
                }
                None => log.mark(url, last_seq),
            }
            let (client, config, log, url) = (client.clone(), config.clone(), log.clone(), url.clone());
            runtime.spawn(async move {
                while let Some(event) = rx.recv().await {
                    match deliver(&client, &url, &payload(&event), &config).await {
                        Outcome::Delivered { attempts } => {
                            tracing::debug!(url, seq = event.seq, attempts, "alert delivered to webhook");
                        }
                        Outcome::Failed { attempts, reason } => {
                            tracing::error!(url, seq = event.seq, alert = %event.alert_id, attempts, "alert not delivered to webhook: {reason}");
                        }
                    }
                    let log = log.clone();
                    let url = url.clone();
                    let seq = event.seq;
                    let _ = tokio::task::spawn_blocking(move || log.mark(&url, seq)).await;
                }
            });
            queues.push(tx);
        }
        Webhooks { queues }
    }

    /// Queues `event` for every webhook (never blocks).
    pub fn send(&self, event: &Arc<AlertEvent>) {
        for q in &self.queues {
            let _ = q.send(event.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use axum::Router;
    use axum::extract::State;
    use axum::http::StatusCode;
    use axum::routing::post;

    use super::*;

    #[derive(Clone, Default)]
    struct Receiver {
        hits: Arc<AtomicU32>,
        fail_first: u32,
        fail_status: u16,
        bodies: Arc<Mutex<Vec<Value>>>,
    }

    async fn receive(State(r): State<Receiver>, axum::Json(body): axum::Json<Value>) -> StatusCode {
        let n = r.hits.fetch_add(1, Ordering::SeqCst) + 1;
        if n <= r.fail_first {
            return StatusCode::from_u16(r.fail_status).unwrap();
        }
        r.bodies.lock().push(body);
        StatusCode::OK
    }

    async fn serve(r: Receiver) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().route("/hook", post(receive)).with_state(r);
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{addr}/hook")
    }

    fn fast() -> AlertsConfig {
        AlertsConfig {
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(40),
            max_attempts: 5,
            timeout: Duration::from_secs(2),
            ..Default::default()
        }
    }

    fn event(seq: u64) -> AlertEvent {
        let t = chrono::DateTime::<chrono::Utc>::from_timestamp_nanos(1_700_000_000_000_000_000);
        AlertEvent {
            seq,
            time: t,
            alert_id: "egress-monthly/2026-11".into(),
            budget: "egress-monthly".into(),
            kind: tailscope_core::cost::BudgetKind::Egress,
            scope: None,
            period: "month".into(),
            period_key: "2026-11".into(),
            period_start: t,
            period_end: Some(t),
            state: "firing".into(),
            severity: "critical".into(),
            event: "threshold".into(),
            threshold: Some(1.0),
            spend_usd: 512.0,
            cap_usd: Some(500.0),
            cap_share: None,
            share: None,
            utilization: 1.024,
            projected_usd: None,
            message: "BREACH egress-monthly: $512.00 of $500.00 (102%)".into(),
            projected_share: None,
        }
    }

    #[tokio::test]
    async fn retries_with_backoff_until_delivered() {
        let r = Receiver { fail_first: 2, fail_status: 503, ..Default::default() };
        let url = serve(r.clone()).await;
        let client = reqwest::Client::new();
        let out = deliver(&client, &url, &payload(&event(1)), &fast()).await;
        assert_eq!(out, Outcome::Delivered { attempts: 3 });
        let bodies = r.bodies.lock();
        assert_eq!(bodies.len(), 1);
        assert_eq!(bodies[0]["budget"], "egress-monthly");
        assert_eq!(bodies[0]["state"], "firing");
        assert_eq!(bodies[0]["spend_usd"], 512.0);
        assert_eq!((bodies[0]["used"].as_str(), bodies[0]["cap"].as_str()), (Some("$512.00"), Some("$500.00")));
        assert!(bodies[0]["text"].as_str().unwrap().contains("BREACH egress-monthly"));
    }

    #[tokio::test]
    async fn client_errors_are_not_retried_and_dead_endpoints_give_up() {
        let r = Receiver { fail_first: 100, fail_status: 400, ..Default::default() };
        let url = serve(r.clone()).await;
        let client = reqwest::Client::new();
        let out = deliver(&client, &url, &payload(&event(1)), &fast()).await;
        assert!(matches!(out, Outcome::Failed { attempts: 1, .. }), "{out:?}");
        assert_eq!(r.hits.load(Ordering::SeqCst), 1);
        // Nothing listens on this port: connection errors are retried, then given up.
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}/hook", l.local_addr().unwrap())
        };
        let out = deliver(&client, &dead, &payload(&event(1)), &AlertsConfig { max_attempts: 3, ..fast() }).await;
        assert!(matches!(out, Outcome::Failed { attempts: 3, .. }), "{out:?}");
    }

    #[tokio::test]
    async fn redirects_are_not_followed_and_error_answers_are_read_bounded() {
        // The other host counts what reaches it; the webhook answers 307 (which would re-POST the body) to it.
        let other = Receiver::default();
        let other_url = serve(other.clone()).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let app =
            Router::new()
                .route(
                    "/hook",
                    post(move || async move {
                        (StatusCode::TEMPORARY_REDIRECT, [(axum::http::header::LOCATION, other_url)])
                    }),
                )
                .route("/big", post(|| async { (StatusCode::BAD_REQUEST, "x".repeat(8 * 1024 * 1024)) }));
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let client = client(&fast()).unwrap();
        let out = deliver(&client, &url, &payload(&event(1)), &fast()).await;
        match &out {
            Outcome::Failed { attempts: 1, reason } => assert!(reason.contains("do not follow redirects"), "{reason}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(other.hits.load(Ordering::SeqCst), 0, "the redirect was followed");
        // An 8 MiB error answer: at most MAX_ERROR_BODY_BYTES of it reach the log.
        let big = url.replace("/hook", "/big");
        let out = deliver(&client, &big, &payload(&event(1)), &fast()).await;
        match &out {
            Outcome::Failed { attempts: 1, reason } => {
                assert!(reason.starts_with("HTTP 400 Bad Request: xxx"), "{reason}");
                assert!(reason.len() < MAX_ERROR_BODY_BYTES + 100, "{} bytes", reason.len());
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn workers_resume_from_recorded_progress() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(ALERTS_DIR)).unwrap();
        let r = Receiver::default();
        let url = serve(r.clone()).await;
        let backlog: Vec<Arc<AlertEvent>> = (1..=3).map(|s| Arc::new(event(s))).collect();
        let log = Arc::new(DeliveryLog::open(dir.path()));
        log.mark(&url, 1);
        let config = AlertsConfig { webhooks: vec![url.clone()], ..fast() };
        let hooks = Webhooks::start(&config, log.clone(), &backlog, &tokio::runtime::Handle::current());
        hooks.send(&Arc::new(event(4)));
        for _ in 0..200 {
            if log.delivered(&url) == Some(4) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let seqs: Vec<u64> = r.bodies.lock().iter().map(|b| b["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, [2, 3, 4]);
        assert_eq!(DeliveryLog::open(dir.path()).delivered(&url), Some(4), "persisted");
    }
}
