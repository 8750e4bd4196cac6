//! Webhook delivery of alert events: a POST per event and webhook in the webhook's format (plain JSON, Slack,
//! PagerDuty Events v2), signed when a secret is set, retried, and kept on disk until delivered.
//!
//! Each webhook has its own worker and outbox ([`super::outbox`]), so a slow or dead endpoint delays nobody else,
//! and events reach each endpoint in order. An event is written to the webhook's outbox before its first attempt
//! and removed once the webhook answered 2xx; nothing is given up:
//!
//! - up to `alerts.max_attempts` attempts in a row, with exponential backoff and jitter (`Retry-After` honoured);
//! - when those fail because the endpoint is unavailable (connection errors, timeouts, 408, 429, 5xx), the event
//!   stays at the head of the queue and the webhook is tried again one attempt at a time, `max_backoff` apart at
//!   first and doubling (with jitter) up to `outbox_max_backoff`; once it answers, the queue drains in order;
//! - when the endpoint refuses the event (a 3xx, never followed: it could send the alert to another host; another
//!   4xx), the event is held back in the outbox for `outbox_max_backoff` (and until the next start, as the fix is
//!   usually a config change) and the queue moves on.
//!
//! `DATA/alerts/delivery.json` records, per webhook, the last event sequence number taken into its outbox: after a
//! restart, events recorded in the alert log after it are queued, and the outbox is resumed. A webhook added to the
//! config starts with new events only. Delivery is at least once: a receiver de-duplicates by
//! `X-Tailscope-Event-Id`. With a secret, each POST carries `X-Tailscope-Timestamp` (Unix seconds) and
//! `X-Tailscope-Signature: sha256=<hex>`, the HMAC-SHA256 of `<timestamp>.<body>` (docs/operations.md shows how to
//! check it).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use rand::Rng;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tailscope_core::alerts::{ALERTS_DIR, AlertEvent, AlertView};
use tailscope_core::cost::AlertsConfig;
use tailscope_core::webhook::{Webhook, WebhookFormat};
use tokio::sync::mpsc;

use super::CostError;
use super::outbox::Outbox;
use crate::telemetry::{Metrics, WebhookLabel, WebhookReasonLabel};

/// The delivery progress file inside the alerts directory.
pub const DELIVERY_FILE: &str = "delivery.json";
/// The directory of the webhooks' outboxes inside the alerts directory, one subdirectory per webhook name.
pub const OUTBOX_DIR: &str = "outbox";
/// `sha256=<hex>`: the HMAC-SHA256 of `<timestamp>.<body>`, keyed by the webhook's secret.
pub const SIGNATURE_HEADER: &str = "x-tailscope-signature";
/// The Unix time (seconds) of the attempt, part of what is signed: a receiver refuses old ones (replays).
pub const TIMESTAMP_HEADER: &str = "x-tailscope-timestamp";
/// The event's sequence number in the alert log, the same on every attempt: a receiver de-duplicates by it.
pub const EVENT_ID_HEADER: &str = "x-tailscope-event-id";

/// The most of `delivery.json` read: one number per webhook.
const MAX_DELIVERY_FILE_BYTES: u64 = 1024 * 1024;

/// The longest `summary` PagerDuty accepts.
const PAGERDUTY_SUMMARY_CHARS: usize = 1024;
/// The longest `dedup_key` PagerDuty accepts.
const PAGERDUTY_DEDUP_KEY_CHARS: usize = 255;

/// One line for chat: the message with an icon for its state.
fn text(event: &AlertEvent) -> String {
    let icon = match (event.state.as_str(), event.severity.as_str()) {
        ("resolved", _) => ":white_check_mark:",
        (_, "critical") => ":rotating_light:",
        _ => ":warning:",
    };
    format!("{icon} [tailscope] {}", event.message)
}

/// The `json` body: the event's fields, its figures as text in the units of the budget's cap (`used`, `cap`,
/// `projected`, as [`AlertView`]), `"source": "tailscope"` and a Slack-compatible `text`.
pub fn payload(event: &AlertEvent) -> Value {
    let mut v = serde_json::to_value(AlertView::from(event)).unwrap_or_else(|_| json!({}));
    if let Value::Object(map) = &mut v {
        map.insert("text".into(), json!(text(event)));
        map.insert("source".into(), json!("tailscope"));
    }
    v
}

/// `s` cut to `max` characters, the cut marked with `…`.
fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Lower-case hex.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One PagerDuty incident per alert: its id (budget, period, session or forecast) prefixed, or, past PagerDuty's
/// 255 characters (a long session id), its start and a hash of the whole.
fn dedup_key(alert_id: &str) -> String {
    let key = format!("tailscope/{alert_id}");
    if key.chars().count() <= PAGERDUTY_DEDUP_KEY_CHARS {
        return key;
    }
    let hash = hex(&Sha256::digest(alert_id.as_bytes())[..16]);
    let head: String = key.chars().take(PAGERDUTY_DEDUP_KEY_CHARS - hash.len() - 1).collect();
    format!("{head}/{hash}")
}

/// A PagerDuty Events API v2 event: `trigger` when the alert fires (again at a higher threshold: the same
/// incident, updated), `resolve` when it resolves.
pub fn pagerduty(event: &AlertEvent, routing_key: &str) -> Value {
    let dedup_key = dedup_key(&event.alert_id);
    if event.state == "resolved" {
        return json!({"routing_key": routing_key, "event_action": "resolve", "dedup_key": dedup_key});
    }
    let severity = match event.severity.as_str() {
        "critical" => "critical",
        "warning" => "warning",
        _ => "info",
    };
    json!({
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": dedup_key,
        "client": "tailscope",
        "payload": {
            "summary": cut(&event.message, PAGERDUTY_SUMMARY_CHARS),
            "severity": severity,
            "source": "tailscope",
            "timestamp": event.time.to_rfc3339(),
            "component": event.budget,
            "group": event.kind.as_str(),
            "class": event.event,
            "custom_details": AlertView::from(event),
        },
    })
}

/// The body `webhook` receives for `event`.
pub fn body(webhook: &Webhook, event: &AlertEvent) -> Value {
    match webhook.format {
        WebhookFormat::Json => payload(event),
        WebhookFormat::Slack => json!({ "text": text(event) }),
        WebhookFormat::PagerDuty => pagerduty(event, webhook.routing_key.as_ref().map_or("", |k| k.expose())),
    }
}

/// `sha256=<hex>`: the HMAC-SHA256 of `<timestamp>.<body>` keyed by `secret`.
pub fn signature(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    // HMAC takes a key of any length (a long one is hashed first).
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex(&mac.finalize().into_bytes()))
}

/// Why an attempt failed, which decides what happens next; the `reason` label of
/// `tailscope_webhook_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No answer: connection refused or reset, DNS, TLS, timeout.
    Unreachable,
    /// 5xx, 408 or 429: the endpoint is there but cannot take it now.
    ServerError,
    /// 3xx: never followed.
    Redirect,
    /// Another answer (4xx): the endpoint refuses this request.
    Refused,
}

impl Failure {
    /// Every kind, in the order of [`WebhookMetrics`]' counters.
    pub const ALL: [Failure; 4] = [Failure::Unreachable, Failure::ServerError, Failure::Redirect, Failure::Refused];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Failure::Unreachable => "unreachable",
            Failure::ServerError => "server_error",
            Failure::Redirect => "redirect",
            Failure::Refused => "refused",
        }
    }

    /// Whether the endpoint is unavailable (try it again later, keeping the order) rather than refusing the event.
    pub fn unavailable(self) -> bool {
        matches!(self, Failure::Unreachable | Failure::ServerError)
    }
}

/// How one delivery ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A 2xx answer, after this many attempts.
    Delivered { attempts: u32 },
    /// Not delivered: the last failure's kind and a reason for the log.
    Failed { attempts: u32, failure: Failure, reason: String },
}

/// The `reason` labels of `tailscope_webhook_events_dropped_total`.
const DROP_REASONS: [&str; 2] = ["outbox_full", "too_large"];

/// One webhook's series, created when it starts so that each is exported (at 0) from then on.
#[derive(Debug, Clone, Default)]
pub struct WebhookMetrics {
    pub deliveries: Counter,
    /// Per [`Failure::ALL`].
    failures: [Counter; 4],
    pub outbox_events: Gauge,
    pub outbox_bytes: Gauge,
    /// Per [`DROP_REASONS`].
    dropped: [Counter; 2],
    pub outbox_corrupt: Counter,
}

impl WebhookMetrics {
    /// The series of the webhook `name` in `metrics`.
    pub fn register(metrics: &Metrics, name: &str) -> WebhookMetrics {
        let label = WebhookLabel { webhook: name.to_string() };
        let reason = |r: &str| WebhookReasonLabel { webhook: name.to_string(), reason: r.to_string() };
        WebhookMetrics {
            deliveries: metrics.webhook_deliveries.get_or_create(&label).clone(),
            failures: Failure::ALL.map(|f| metrics.webhook_failures.get_or_create(&reason(f.label())).clone()),
            outbox_events: metrics.webhook_outbox_events.get_or_create(&label).clone(),
            outbox_bytes: metrics.webhook_outbox_bytes.get_or_create(&label).clone(),
            dropped: DROP_REASONS.map(|r| metrics.webhook_dropped.get_or_create(&reason(r)).clone()),
            outbox_corrupt: metrics.webhook_outbox_corrupt.get_or_create(&label).clone(),
        }
    }

    fn failed(&self, failure: Failure) {
        if let Some(i) = Failure::ALL.iter().position(|f| *f == failure) {
            self.failures[i].inc();
        }
    }

    /// Failed attempts of `failure`'s kind so far.
    pub fn failures(&self, failure: Failure) -> u64 {
        Failure::ALL.iter().position(|f| *f == failure).map_or(0, |i| self.failures[i].get())
    }

    fn dropped(&self, reason: &str) {
        if let Some(i) = DROP_REASONS.iter().position(|r| *r == reason) {
            self.dropped[i].inc();
        }
    }
}

/// A webhook as its worker sends to it: its settings and its extra headers, parsed once.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub webhook: Webhook,
    headers: HeaderMap,
}

impl Endpoint {
    /// Parses the webhook's extra headers (checked when the config was validated; this only converts).
    pub fn new(webhook: Webhook) -> Result<Endpoint, CostError> {
        let mut headers = HeaderMap::new();
        for (name, value) in &webhook.headers {
            let invalid = |reason: String| CostError::Config {
                field: format!("alerts.webhooks ({}).headers.{name:?}", webhook.name),
                reason,
            };
            let header = HeaderName::from_bytes(name.as_bytes()).map_err(|e| invalid(e.to_string()))?;
            let mut value = HeaderValue::from_str(value.expose()).map_err(|e| invalid(e.to_string()))?;
            // Kept out of debug output (an Authorization header's token).
            value.set_sensitive(true);
            headers.insert(header, value);
        }
        Ok(Endpoint { webhook, headers })
    }

    /// One attempt's request: the body, the extra headers, the event id, and a fresh signature.
    fn request(&self, client: &reqwest::Client, seq: u64, body: &Bytes) -> reqwest::RequestBuilder {
        let mut request = client
            .post(&self.webhook.url)
            .headers(self.headers.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(EVENT_ID_HEADER, seq.to_string())
            .body(body.clone());
        if let Some(secret) = &self.webhook.secret {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
            let mut signed = HeaderValue::from_str(&signature(secret.expose().as_bytes(), now, body))
                .unwrap_or_else(|_| HeaderValue::from_static("sha256="));
            signed.set_sensitive(true);
            request = request.header(TIMESTAMP_HEADER, now.to_string()).header(SIGNATURE_HEADER, signed);
        }
        request
    }
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

/// Sends `event` to `endpoint` with a client from [`client`], up to `attempts` times until a 2xx answer,
/// retrying connection errors, timeouts, 408, 429 and 5xx with exponential backoff and jitter (honouring
/// `Retry-After` in seconds, up to `max_backoff`). A redirect (3xx) is not followed and not retried, nor is another
/// 4xx. Every failed attempt and the delivery are counted in `metrics`.
pub async fn deliver(
    client: &reqwest::Client,
    endpoint: &Endpoint,
    event: &AlertEvent,
    attempts: u32,
    config: &AlertsConfig,
    metrics: &WebhookMetrics,
) -> Outcome {
    // A JSON value always serialises.
    let body = Bytes::from(serde_json::to_vec(&body(&endpoint.webhook, event)).unwrap_or_default());
    let mut backoff = config.initial_backoff;
    let mut last = (Failure::Unreachable, String::new());
    for attempt in 1..=attempts {
        let mut wait = backoff;
        match endpoint.request(client, event.seq, &body).send().await {
            Ok(resp) if resp.status().is_success() => {
                metrics.deliveries.inc();
                return Outcome::Delivered { attempts: attempt };
            }
            Ok(resp) if resp.status().is_redirection() => {
                metrics.failed(Failure::Redirect);
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
                return Outcome::Failed { attempts: attempt, failure: Failure::Redirect, reason };
            }
            Ok(resp) => {
                let status = resp.status();
                let retryable = status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429;
                let failure = if retryable { Failure::ServerError } else { Failure::Refused };
                metrics.failed(failure);
                let retry_after = resp
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok());
                let answer = error_body(resp).await;
                let text =
                    if answer.is_empty() { format!("HTTP {status}") } else { format!("HTTP {status}: {answer}") };
                if !retryable {
                    return Outcome::Failed { attempts: attempt, failure, reason: format!("{text} is not retryable") };
                }
                if let Some(secs) = retry_after {
                    wait = wait.max(Duration::from_secs(secs)).min(config.max_backoff);
                }
                last = (failure, text);
            }
            Err(e) => {
                metrics.failed(Failure::Unreachable);
                // Without the URL: a Slack or PagerDuty URL is a credential.
                last = (Failure::Unreachable, error_chain(&e.without_url()));
            }
        }
        if attempt == attempts {
            break;
        }
        tokio::time::sleep(jittered(wait)).await;
        backoff = (backoff * 2).min(config.max_backoff);
    }
    let (failure, text) = last;
    Outcome::Failed { attempts, failure, reason: format!("not delivered after {attempts} attempts: {text}") }
}

/// `wait` stretched by up to 20%, so that webhooks failing together do not retry together.
fn jittered(wait: Duration) -> Duration {
    wait.mul_f64(1.0 + rand::rng().random_range(0.0..0.2))
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

/// Delivery progress per webhook (the last event taken into its outbox), persisted atomically.
#[derive(Debug)]
pub struct DeliveryLog {
    path: PathBuf,
    delivered: Mutex<BTreeMap<String, u64>>,
}

impl DeliveryLog {
    /// Loads `data_dir/alerts/delivery.json` (empty if absent or unreadable, which re-sends pending events).
    pub fn open(data_dir: &Path) -> DeliveryLog {
        let path = data_dir.join(ALERTS_DIR).join(DELIVERY_FILE);
        let mut bytes = Vec::new();
        let read = std::fs::File::open(&path)
            .and_then(|f| f.take(MAX_DELIVERY_FILE_BYTES).read_to_end(&mut bytes))
            .map_err(|e| e.to_string());
        let delivered = match read {
            Ok(_) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), "unreadable webhook delivery state ({e}); pending alerts may be re-sent");
                BTreeMap::new()
            }),
            Err(_) => BTreeMap::new(),
        };
        DeliveryLog { path, delivered: Mutex::new(delivered) }
    }

    /// The last sequence number `key` (a webhook's name; its URL in files written before webhooks had names) has
    /// taken, if it is known.
    pub fn delivered(&self, key: &str) -> Option<u64> {
        self.delivered.lock().get(key).copied()
    }

    /// Records that `key` has taken everything up to `seq` and persists the whole map (temp file, fsync, rename),
    /// under the lock, so that two workers' writes do not mix.
    pub fn mark(&self, key: &str, seq: u64) {
        let mut map = self.delivered.lock();
        let entry = map.entry(key.to_string()).or_insert(0);
        if *entry >= seq && self.path.exists() {
            return;
        }
        *entry = (*entry).max(seq);
        let snapshot = serde_json::to_vec_pretty(&*map).unwrap_or_default();
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
    /// Opens each configured webhook's outbox under `data_dir` and starts its worker on `runtime`. `backlog` holds
    /// every recorded event; the events after a webhook's recorded progress are queued first.
    pub fn start(
        config: &AlertsConfig,
        data_dir: &Path,
        log: Arc<DeliveryLog>,
        backlog: &[Arc<AlertEvent>],
        metrics: &Metrics,
        runtime: &tokio::runtime::Handle,
    ) -> Result<Webhooks, CostError> {
        let hooks = config.webhooks()?;
        let outboxes = data_dir.join(ALERTS_DIR).join(OUTBOX_DIR);
        warn_of_orphans(&outboxes, &hooks);
        if hooks.is_empty() {
            return Ok(Webhooks::default());
        }
        let client = client(config).map_err(|e| CostError::Config {
            field: "alerts.webhooks".into(),
            reason: format!("cannot build the HTTP client: {}", error_chain(&e)),
        })?;
        let last_seq = backlog.last().map(|e| e.seq).unwrap_or(0);
        let mut queues = Vec::new();
        for hook in hooks {
            let metrics = WebhookMetrics::register(metrics, &hook.name);
            let outbox = Outbox::open(outboxes.join(&hook.name), config, metrics.clone())
                .map_err(|e| CostError::AlertState { path: outboxes.join(&hook.name), detail: e.to_string() })?;
            if !outbox.is_empty() {
                tracing::info!(webhook = %hook.name, events = outbox.len(), "resuming the webhook's outbox");
            }
            let (tx, rx) = mpsc::unbounded_channel::<Arc<AlertEvent>>();
            match log.delivered(&hook.name).or_else(|| log.delivered(&hook.url)) {
                Some(done) => {
                    for e in backlog.iter().filter(|e| e.seq > done) {
                        let _ = tx.send(e.clone());
                    }
                }
                None => log.mark(&hook.name, last_seq),
            }
            let worker = Worker {
                dir: outbox.dir().display().to_string(),
                endpoint: Endpoint::new(hook)?,
                client: client.clone(),
                config: config.clone(),
                outbox: Arc::new(Mutex::new(outbox)),
                log: log.clone(),
                metrics,
                rx,
            };
            runtime.spawn(worker.run());
            queues.push(tx);
        }
        Ok(Webhooks { queues })
    }

    /// Queues `event` for every webhook (never blocks).
    pub fn send(&self, event: &Arc<AlertEvent>) {
        for q in &self.queues {
            let _ = q.send(event.clone());
        }
    }
}

/// Says so when the outbox of a webhook no longer configured still holds events (kept, not sent).
fn warn_of_orphans(outboxes: &Path, hooks: &[Webhook]) {
    let Ok(dirs) = std::fs::read_dir(outboxes) else { return };
    for dir in dirs.flatten() {
        let name = dir.file_name().to_string_lossy().into_owned();
        if hooks.iter().any(|h| h.name == name) {
            continue;
        }
        let files = std::fs::read_dir(dir.path()).map(|d| d.flatten().filter(|f| f.path().is_file()).count());
        if let Ok(files) = files
            && files > 0
        {
            tracing::warn!(
                outbox = %dir.path().display(), files,
                "the outbox of a webhook that is no longer configured holds events; they are kept, not sent \
                 (configure a webhook with name = {name:?} to send them, or delete the directory)"
            );
        }
    }
}

/// One webhook's worker: takes events into the outbox, sends the outbox's head, waits out failures.
struct Worker {
    endpoint: Endpoint,
    client: reqwest::Client,
    config: AlertsConfig,
    outbox: Arc<Mutex<Outbox>>,
    log: Arc<DeliveryLog>,
    metrics: WebhookMetrics,
    rx: mpsc::UnboundedReceiver<Arc<AlertEvent>>,
    /// The outbox directory, for the log.
    dir: String,
}

impl Worker {
    fn name(&self) -> &str {
        &self.endpoint.webhook.name
    }

    /// Runs `f` on the outbox on a blocking thread (it writes and fsyncs files). `None` when the runtime is
    /// shutting down.
    async fn with_outbox<T: Send + 'static>(&self, f: impl FnOnce(&mut Outbox) -> T + Send + 'static) -> Option<T> {
        let outbox = self.outbox.clone();
        tokio::task::spawn_blocking(move || f(&mut outbox.lock())).await.ok()
    }

    /// Writes `event` to the outbox and moves the delivery progress as far as it may go. `None`: shutting down.
    async fn take_in(&self, event: Arc<AlertEvent>) -> Option<()> {
        let log = self.log.clone();
        let name = self.name().to_string();
        let (seq, alert) = (event.seq, event.alert_id.clone());
        let pushed = self
            .with_outbox(move |outbox| {
                let pushed = outbox.push(&event);
                log.mark(&name, outbox.progress());
                pushed
            })
            .await?;
        if let Err(e) = pushed {
            match e.dropped_reason() {
                Some(reason) => {
                    self.metrics.dropped(reason);
                    tracing::error!(webhook = %self.name(), seq, alert, "alert not queued for the webhook: {e}");
                }
                None => tracing::error!(webhook = %self.name(), seq, alert, "alert webhook outbox: {e}"),
            }
        }
        Some(())
    }

    /// Takes in every event already queued. `None`: the engine is gone or the runtime shutting down.
    async fn take_in_queued(&mut self) -> Option<()> {
        loop {
            match self.rx.try_recv() {
                Ok(event) => self.take_in(event).await?,
                Err(mpsc::error::TryRecvError::Empty) => return Some(()),
                Err(mpsc::error::TryRecvError::Disconnected) => return None,
            }
        }
    }

    /// Waits until `deadline` (forever when `None`) or an event arrives, taking arriving events in.
    async fn wait(&mut self, deadline: Option<Instant>) -> Option<()> {
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => return Some(()),
                event = self.rx.recv() => {
                    self.take_in(event?).await?;
                    if deadline.is_none() {
                        return Some(());
                    }
                }
            }
        }
    }

    async fn run(mut self) {
        // Some while the endpoint is unavailable: the wait before the next single attempt.
        let mut backoff: Option<Duration> = None;
        while self.take_in_queued().await.is_some() {
            let now = Instant::now();
            let head = self.with_outbox(move |o| o.next(now).map(|seq| (seq, o.read(seq)))).await;
            let (seq, event) = match head {
                None => return,
                Some(None) => {
                    let retry = self.with_outbox(|o| o.next_retry()).await;
                    match retry {
                        Some(retry) if self.wait(retry).await.is_some() => continue,
                        _ => return,
                    }
                }
                Some(Some((seq, event))) => (seq, event),
            };
            let Some(event) = event else { continue }; // set aside: unreadable
            let attempts = if backoff.is_some() { 1 } else { self.config.max_attempts };
            let outcome = deliver(&self.client, &self.endpoint, &event, attempts, &self.config, &self.metrics).await;
            let (name, dir) = (self.name().to_string(), self.dir.clone());
            match outcome {
                Outcome::Delivered { attempts } => {
                    let log = self.log.clone();
                    let Some(pending) = self
                        .with_outbox(move |o| {
                            o.remove(seq);
                            log.mark(&name, o.progress());
                            o.len()
                        })
                        .await
                    else {
                        return;
                    };
                    if backoff.take().is_some() {
                        tracing::info!(webhook = %self.name(), seq, pending, "the webhook answers again; sending its outbox");
                    }
                    tracing::debug!(webhook = %self.name(), seq, attempts, "alert delivered to webhook");
                }
                Outcome::Failed { attempts, failure, reason } if failure.unavailable() => {
                    let wait = match backoff {
                        None => self.config.max_backoff,
                        Some(b) => b * 2,
                    }
                    .min(self.config.outbox_max_backoff);
                    if backoff.is_none() {
                        tracing::error!(
                            webhook = %name, seq, alert = %event.alert_id, attempts,
                            "alert not delivered to webhook: {reason}; it waits in the outbox {dir} with what follows, \
                             and the webhook is tried again from {:?} apart up to {:?}",
                            wait, self.config.outbox_max_backoff
                        );
                    } else {
                        tracing::warn!(webhook = %name, seq, "webhook still unavailable: {reason}");
                    }
                    backoff = Some(wait);
                    if self.wait(Some(Instant::now() + jittered(wait))).await.is_none() {
                        return;
                    }
                }
                Outcome::Failed { attempts, reason, .. } => {
                    backoff = None;
                    let until = Instant::now() + self.config.outbox_max_backoff;
                    tracing::error!(
                        webhook = %name, seq, alert = %event.alert_id, attempts,
                        "alert not delivered to webhook: {reason}; it is kept in the outbox {dir}, tried again in {:?} \
                         and at the next start, and the events after it are sent",
                        self.config.outbox_max_backoff
                    );
                    if self.with_outbox(move |o| o.refuse(seq, until)).await.is_none() {
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use axum::Router;
    use axum::extract::State;
    use axum::http::StatusCode;
    use axum::routing::post;
    use tailscope_core::webhook::{Secret, check_header_name, check_header_value};

    use super::*;

    /// A webhook receiver: answers `fail_status` to the first `fail_first` requests and to events whose seq is in
    /// `refuse`, 200 to the rest, and keeps what it accepted.
    #[derive(Clone, Default)]
    struct Receiver {
        hits: Arc<AtomicU32>,
        fail_first: u32,
        fail_status: u16,
        refuse: Vec<u64>,
        bodies: Arc<Mutex<Vec<Value>>>,
        headers: Arc<Mutex<Vec<axum::http::HeaderMap>>>,
    }

    async fn receive(State(r): State<Receiver>, headers: axum::http::HeaderMap, body: Bytes) -> StatusCode {
        let n = r.hits.fetch_add(1, Ordering::SeqCst) + 1;
        let seq = headers.get(EVENT_ID_HEADER).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if n <= r.fail_first || seq.is_some_and(|s| r.refuse.contains(&s)) {
            return StatusCode::from_u16(r.fail_status).unwrap();
        }
        r.bodies.lock().push(serde_json::from_slice(&body).unwrap());
        r.headers.lock().push(headers);
        StatusCode::OK
    }

    async fn serve_on(r: Receiver, listener: tokio::net::TcpListener) -> String {
        let addr = listener.local_addr().unwrap();
        let app = Router::new().route("/hook", post(receive)).with_state(r);
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{addr}/hook")
    }

    async fn serve(r: Receiver) -> String {
        serve_on(r, tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()).await
    }

    fn fast() -> AlertsConfig {
        AlertsConfig {
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(40),
            outbox_max_backoff: Duration::from_millis(100),
            max_attempts: 5,
            timeout: Duration::from_secs(2),
            ..Default::default()
        }
    }

    pub(crate) fn event(seq: u64) -> AlertEvent {
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
            figures: tailscope_core::cost::BudgetFigures {
                spend_usd: 512.0,
                cap_usd: Some(500.0),
                utilization: 1.024,
                ..Default::default()
            },
            message: "BREACH egress-monthly: $512.00 of $500.00 (102%)".into(),
            project: None,
        }
    }

    fn webhook(url: &str) -> Webhook {
        Webhook {
            name: "test".into(),
            url: url.into(),
            format: WebhookFormat::Json,
            secret: None,
            headers: Vec::new(),
            routing_key: None,
        }
    }

    async fn send(url: &str, config: &AlertsConfig, metrics: &WebhookMetrics) -> Outcome {
        let endpoint = Endpoint::new(webhook(url)).unwrap();
        deliver(&client(config).unwrap(), &endpoint, &event(1), config.max_attempts, config, metrics).await
    }

    /// Polls `done` for up to 10 s.
    async fn until(what: &str, done: impl Fn() -> bool) {
        for _ in 0..1000 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("waited 10 s for {what}");
    }

    #[tokio::test]
    async fn retries_with_backoff_until_delivered() {
        let r = Receiver { fail_first: 2, fail_status: 503, ..Default::default() };
        let url = serve(r.clone()).await;
        let metrics = WebhookMetrics::default();
        assert_eq!(send(&url, &fast(), &metrics).await, Outcome::Delivered { attempts: 3 });
        assert_eq!((metrics.failures(Failure::ServerError), metrics.deliveries.get()), (2, 1));
        let bodies = r.bodies.lock();
        assert_eq!(bodies.len(), 1);
        assert_eq!(bodies[0]["budget"], "egress-monthly");
        assert_eq!(bodies[0]["state"], "firing");
        assert_eq!(bodies[0]["spend_usd"], 512.0);
        assert_eq!((bodies[0]["used"].as_str(), bodies[0]["cap"].as_str()), (Some("$512.00"), Some("$500.00")));
        assert!(bodies[0]["text"].as_str().unwrap().contains("BREACH egress-monthly"));
        let headers = r.headers.lock();
        assert_eq!(headers[0].get(EVENT_ID_HEADER).unwrap(), "1");
        assert!(headers[0].get(SIGNATURE_HEADER).is_none(), "no secret, no signature");
    }

    #[tokio::test]
    async fn client_errors_are_not_retried_and_dead_endpoints_give_up() {
        let r = Receiver { fail_first: 100, fail_status: 400, ..Default::default() };
        let url = serve(r.clone()).await;
        let metrics = WebhookMetrics::default();
        let out = send(&url, &fast(), &metrics).await;
        assert!(matches!(out, Outcome::Failed { attempts: 1, failure: Failure::Refused, .. }), "{out:?}");
        assert_eq!((r.hits.load(Ordering::SeqCst), metrics.failures(Failure::Refused)), (1, 1));
        // Nothing listens on this port: connection errors are retried, then given up, without the URL in the
        // reason (a Slack or PagerDuty URL is a credential).
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}/hook-t0ken", l.local_addr().unwrap())
        };
        let out = send(&dead, &AlertsConfig { max_attempts: 3, ..fast() }, &metrics).await;
        match &out {
            Outcome::Failed { attempts: 3, failure: Failure::Unreachable, reason } => {
                assert!(!reason.contains("t0ken"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(metrics.failures(Failure::Unreachable), 3);
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
        let metrics = WebhookMetrics::default();
        match send(&url, &fast(), &metrics).await {
            Outcome::Failed { attempts: 1, failure: Failure::Redirect, reason } => {
                assert!(reason.contains("do not follow redirects") && reason.contains("307"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(other.hits.load(Ordering::SeqCst), 0, "the redirect was followed");
        assert_eq!(metrics.failures(Failure::Redirect), 1);
        // An 8 MiB error answer: at most MAX_ERROR_BODY_BYTES of it reach the log.
        let big = url.replace("/hook", "/big");
        match send(&big, &fast(), &metrics).await {
            Outcome::Failed { attempts: 1, reason, .. } => {
                assert!(reason.starts_with("HTTP 400 Bad Request: xxx"), "{reason}");
                assert!(reason.len() < MAX_ERROR_BODY_BYTES + 100, "{} bytes", reason.len());
            }
            other => panic!("{other:?}"),
        }
    }

    /// The signature is HMAC-SHA256 over `<timestamp>.<body>`: a vector computed independently (Python's `hmac`).
    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_dot_body() {
        assert_eq!(
            signature(b"whsec_test", 1_700_000_000, b"{\"a\":1}"),
            "sha256=38877139021993b830af32feea6e18a8da83eb2f6e49ee50bd9e4cf4ca4d3789"
        );
    }

    #[tokio::test]
    async fn signed_deliveries_carry_the_configured_headers_and_a_signature_over_what_was_sent() {
        let r = Receiver::default();
        let url = serve(r.clone()).await;
        let hook = Webhook {
            secret: Some(Secret::new("whsec_unit")),
            headers: vec![("X-Team".into(), Secret::new("platform"))],
            ..webhook(&url)
        };
        let config = fast();
        let out = deliver(
            &client(&config).unwrap(),
            &Endpoint::new(hook).unwrap(),
            &event(9),
            1,
            &config,
            &WebhookMetrics::default(),
        )
        .await;
        assert_eq!(out, Outcome::Delivered { attempts: 1 });
        let headers = r.headers.lock()[0].clone();
        let body = serde_json::to_vec(&r.bodies.lock()[0]).unwrap();
        let header = |n: &str| headers.get(n).unwrap().to_str().unwrap().to_string();
        let timestamp: u64 = header(TIMESTAMP_HEADER).parse().unwrap();
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        assert!(now.abs_diff(timestamp) < 60, "{timestamp} vs {now}");
        // serde_json writes the body the receiver parsed back byte for byte (same key order, same numbers).
        assert_eq!(header(SIGNATURE_HEADER), signature(b"whsec_unit", timestamp, &body));
        assert_ne!(header(SIGNATURE_HEADER), signature(b"whsec_other", timestamp, &body));
        assert_eq!((header("x-team"), header("content-type")), ("platform".into(), "application/json".into()));
        assert_eq!(header(EVENT_ID_HEADER), "9");
    }

    #[test]
    fn pagerduty_events_trigger_and_resolve_one_incident_per_alert() {
        let hook = Webhook { format: WebhookFormat::PagerDuty, routing_key: Some(Secret::new("R0UT")), ..webhook("") };
        let firing = body(&hook, &event(1));
        assert_eq!(firing["routing_key"], "R0UT");
        assert_eq!(firing["event_action"], "trigger");
        assert_eq!(firing["dedup_key"], "tailscope/egress-monthly/2026-11");
        let p = &firing["payload"];
        assert_eq!(p["summary"], "BREACH egress-monthly: $512.00 of $500.00 (102%)");
        assert_eq!((p["severity"].as_str(), p["source"].as_str()), (Some("critical"), Some("tailscope")));
        assert_eq!((p["component"].as_str(), p["group"].as_str()), (Some("egress-monthly"), Some("egress")));
        assert_eq!(p["timestamp"], "2023-11-14T22:13:20+00:00");
        assert_eq!(
            (p["custom_details"]["cap"].as_str(), p["custom_details"]["spend_usd"].as_f64()),
            (Some("$500.00"), Some(512.0))
        );
        let resolved = AlertEvent { state: "resolved".into(), severity: "info".into(), ..event(2) };
        let resolve = body(&hook, &resolved);
        assert_eq!(
            resolve,
            json!({"routing_key": "R0UT", "event_action": "resolve", "dedup_key": "tailscope/egress-monthly/2026-11"})
        );
        // PagerDuty's limits: a summary of 1024 characters, a dedup_key of 255, each still one per alert.
        let long = AlertEvent {
            message: "m".repeat(5000),
            alert_id: format!("b/2026-11/session={}", "s".repeat(400)),
            ..event(3)
        };
        let other = AlertEvent { alert_id: format!("b/2026-11/session={}t", "s".repeat(400)), ..long.clone() };
        let (a, b) = (body(&hook, &long), body(&hook, &other));
        assert_eq!(a["payload"]["summary"].as_str().unwrap().chars().count(), 1024);
        assert_eq!(a["dedup_key"].as_str().unwrap().chars().count(), 255);
        assert_ne!(a["dedup_key"], b["dedup_key"]);
        // Slack's format is the text alone.
        let slack = Webhook { format: WebhookFormat::Slack, ..webhook("") };
        assert_eq!(
            body(&slack, &event(1)),
            json!({"text": ":rotating_light: [tailscope] BREACH egress-monthly: $512.00 of $500.00 (102%)"})
        );
    }

    /// The header rule checked when the config is validated (tailscope-core) is the one of the `http` crate that
    /// sends the headers: byte for byte.
    #[test]
    fn the_configs_header_rule_is_the_http_crates() {
        for c in (0u8..128).map(char::from).chain(['é', '€']) {
            let name = format!("x-a{c}b");
            assert_eq!(check_header_name(&name).is_ok(), HeaderName::from_bytes(name.as_bytes()).is_ok(), "{name:?}");
            let value = format!("a{c}b");
            assert_eq!(check_header_value(&value).is_ok(), HeaderValue::from_str(&value).is_ok(), "{value:?}");
        }
    }

    fn start(config: &AlertsConfig, dir: &Path, backlog: &[Arc<AlertEvent>], metrics: &Metrics) -> Webhooks {
        std::fs::create_dir_all(dir.join(ALERTS_DIR)).unwrap();
        let log = Arc::new(DeliveryLog::open(dir));
        Webhooks::start(config, dir, log, backlog, metrics, &tokio::runtime::Handle::current()).unwrap()
    }

    fn series(metrics: &Metrics, name: &str) -> WebhookMetrics {
        WebhookMetrics::register(metrics, name)
    }

    #[tokio::test]
    async fn workers_resume_from_recorded_progress() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(ALERTS_DIR)).unwrap();
        let r = Receiver::default();
        let url = serve(r.clone()).await;
        let backlog: Vec<Arc<AlertEvent>> = (1..=3).map(|s| Arc::new(event(s))).collect();
        // Progress recorded under the URL, as before webhooks had names: still honoured.
        DeliveryLog::open(dir.path()).mark(&url, 1);
        let config = AlertsConfig { webhooks: vec![tailscope_core::webhook::WebhookConfig::url(&url)], ..fast() };
        let metrics = Metrics::new();
        let hooks = start(&config, dir.path(), &backlog, &metrics);
        hooks.send(&Arc::new(event(4)));
        let s = series(&metrics, "127.0.0.1");
        until("three deliveries", || s.deliveries.get() == 3).await;
        let seqs: Vec<u64> = r.bodies.lock().iter().map(|b| b["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, [2, 3, 4]);
        assert_eq!(DeliveryLog::open(dir.path()).delivered("127.0.0.1"), Some(4), "persisted, by name");
        until("an empty outbox", || s.outbox_events.get() == 0).await;
    }

    /// The endpoint is down for longer than `max_attempts`: the events wait in the outbox, in order, and arrive
    /// once it is back, after a restart of the workers too.
    #[tokio::test]
    async fn events_wait_in_the_outbox_while_the_endpoint_is_down_and_arrive_in_order_when_it_is_back() {
        let dir = tempfile::tempdir().unwrap();
        let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let url = format!("http://{addr}/hook");
        let config = AlertsConfig {
            webhooks: vec![tailscope_core::webhook::WebhookConfig {
                name: Some("relay".into()),
                ..tailscope_core::webhook::WebhookConfig::url(&url)
            }],
            max_attempts: 2,
            ..fast()
        };
        let metrics = Metrics::new();
        let s = series(&metrics, "relay");
        let hooks = start(&config, dir.path(), &[], &metrics);
        hooks.send(&Arc::new(event(1)));
        hooks.send(&Arc::new(event(2)));
        until("attempts past max_attempts", || s.failures(Failure::Unreachable) >= 4).await;
        assert_eq!((s.outbox_events.get(), s.deliveries.get()), (2, 0));
        // The workers stop (a restart) while the endpoint is still down.
        drop(hooks);
        // The old worker sees its queue closed and stops.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let metrics = Metrics::new();
        let s = series(&metrics, "relay");
        let _hooks = start(&config, dir.path(), &[], &metrics);
        assert_eq!(s.outbox_events.get(), 2, "resumed from disk");
        let r = Receiver::default();
        serve_on(r.clone(), tokio::net::TcpListener::bind(addr).await.unwrap()).await;
        until("both events delivered", || s.deliveries.get() == 2).await;
        let seqs: Vec<u64> = r.bodies.lock().iter().map(|b| b["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, [1, 2], "in order");
        assert_eq!(s.outbox_events.get(), 0);
    }

    /// An event the endpoint refuses (4xx) is held back in the outbox and tried again later; the events after it
    /// are delivered meanwhile.
    #[tokio::test]
    async fn a_refused_event_is_kept_and_does_not_block_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let r = Receiver { refuse: vec![1], fail_status: 422, ..Default::default() };
        let url = serve(r.clone()).await;
        let config = AlertsConfig { webhooks: vec![tailscope_core::webhook::WebhookConfig::url(&url)], ..fast() };
        let metrics = Metrics::new();
        let s = series(&metrics, "127.0.0.1");
        let hooks = start(&config, dir.path(), &[], &metrics);
        hooks.send(&Arc::new(event(1)));
        hooks.send(&Arc::new(event(2)));
        until("the second event", || s.deliveries.get() == 1).await;
        assert_eq!(r.bodies.lock()[0]["seq"], 2);
        assert_eq!(s.outbox_events.get(), 1, "the refused event is kept");
        // Tried again after outbox_max_backoff (100 ms here), still refused, still kept.
        until("a second try", || s.failures(Failure::Refused) >= 2).await;
        assert_eq!(s.outbox_events.get(), 1);
    }
}
