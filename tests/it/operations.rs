//! Acting where operators live: a Prometheus scrape of a running server shows each budget's spend, cap, use and
//! alert state and the API's own counters and latencies; a webhook receiver verifies the HMAC signature and the
//! custom headers; a receiver down for longer than `max_attempts` still gets the event once it is back, across a
//! restart of the server in between.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use hmac::{Hmac, Mac};
use opentelemetry::KeyValue;
use sha2::Sha256;
use tokio::sync::Mutex;

use crate::budget::hedged_request;
use crate::support::{Scrape, Server, Transport, free_addr, tracer_provider, wait_for_items};

const BUDGETS: &str = r#"
[[budget]]
name = "dup-daily"
kind = "duplicate_inference"
period = "day"
cap_usd = 1.0
warn_at = [0.5, 1.0]
forecast = false

[[budget]]
name = "dup-share"
kind = "duplicate_inference"
period = "day"
cap_share = 0.3
warn_at = [1.0]
forecast = false
"#;

fn budget(name: &str) -> [(&str, &str); 2] {
    [("budget", name), ("kind", "duplicate_inference")]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prometheus_scrape_shows_budget_spend_cap_use_and_alert_state() {
    let config = format!("{BUDGETS}\n[alerts]\nevaluate_interval = \"200ms\"\n");
    let server = Server::start_with(&config).await;
    let sdk = tracer_provider(&server, Transport::Grpc, vec![KeyValue::new("service.name", "gateway")]);
    // Three hedged requests: $1.05 of duplicate spend against a $1.00 cap (105%), and duplicates are half of all
    // inference spend ($1.05 of $2.10) against a 30% share cap (167%).
    for hedge in ["h-1", "h-2", "h-3"] {
        hedged_request(&sdk, hedge);
    }
    let _ = sdk.shutdown();
    let firing = |s: &Scrape, name: &str| {
        let labels = [budget(name).as_slice(), &[("alert", "threshold")]].concat();
        s.value("tailscope_budget_alert_firing", &labels) == Some(1.0)
    };
    let s =
        server.scrape_until("both budgets' breach alerts", |s| firing(s, "dup-daily") && firing(s, "dup-share")).await;
    let close = |v: Option<f64>, want: f64| v.is_some_and(|v| (v - want).abs() < 1e-9);

    let dollars = budget("dup-daily");
    assert!(close(s.value("tailscope_budget_spend_usd", &dollars), 1.05), "{}", s.text);
    assert!(close(s.value("tailscope_budget_cap_usd", &dollars), 1.0), "{}", s.text);
    assert!(close(s.value("tailscope_budget_utilization_ratio", &dollars), 1.05), "{}", s.text);
    assert!(close(s.value("tailscope_budget_alert_threshold_ratio", &dollars), 1.0), "{}", s.text);
    let forecast = [dollars.as_slice(), &[("alert", "forecast")]].concat();
    assert_eq!(s.value("tailscope_budget_alert_firing", &forecast), Some(0.0), "{}", s.text);
    assert!(s.find("tailscope_budget_cap_share_ratio", &dollars).is_empty(), "a dollar cap has no share cap");

    // A share cap reads as a share: no dollar cap series, the share and its cap as ratios.
    let share = budget("dup-share");
    assert!(s.find("tailscope_budget_cap_usd", &share).is_empty(), "a share cap is not a dollar cap: {}", s.text);
    assert!(close(s.value("tailscope_budget_cap_share_ratio", &share), 0.3), "{}", s.text);
    assert!(close(s.value("tailscope_budget_share_ratio", &share), 0.5), "{}", s.text);
    assert!(close(s.value("tailscope_budget_utilization_ratio", &share), 0.5 / 0.3), "{}", s.text);
    assert!(close(s.value("tailscope_budget_spend_usd", &share), 1.05), "{}", s.text);
    for family in ["tailscope_budget_spend_usd", "tailscope_budget_utilization_ratio", "tailscope_budget_alert_firing"]
    {
        assert_eq!(s.type_of(family), Some("gauge"), "{family}: {}", s.text);
    }
    assert_eq!(s.type_of("tailscope_unpriced_spans"), Some("counter"), "{}", s.text);

    // The API's own counters and latencies: by route pattern and status, never by the path a client sent.
    server.sql("SELECT 1 AS one").await;
    let (status, _) = server.sql_raw("SELEC nonsense").await;
    assert_eq!(status, 400);
    let r = reqwest::get(format!("{}/no/such/route/{}", server.api_url(), "x".repeat(64))).await.unwrap();
    assert_eq!(r.status(), 404);
    let s = server.scrape().await;
    let query = |status: &str| {
        s.sum("tailscope_api_requests_total", &[("route", "/api/v1/query"), ("method", "POST"), ("status", status)])
    };
    assert!(query("200") >= 1.0 && query("400") >= 1.0, "{}", s.text);
    assert_eq!(s.sum("tailscope_api_requests_total", &[("route", "unmatched"), ("status", "404")]), 1.0, "{}", s.text);
    assert!(!s.text.contains("/no/such/route"), "a client's path is not a label value: {}", s.text);
    let count = s.sum("tailscope_api_request_duration_seconds_count", &[("route", "/api/v1/query")]);
    assert!(count >= 2.0, "{}", s.text);
    let inf = s.sum("tailscope_api_request_duration_seconds_bucket", &[("route", "/api/v1/query"), ("le", "+Inf")]);
    assert_eq!(inf, count, "{}", s.text);
    assert_eq!(s.type_of("tailscope_api_request_duration_seconds"), Some("histogram"), "{}", s.text);
}

const SECRET: &str = "whsec-it-5c1b0e7d9f2a4e68b3c7";
const AUTH: &str = "Bearer it-relay-token-0b8e";

/// What reached the receiver: each request's headers and body as sent.
#[derive(Clone, Default)]
struct Received {
    requests: Arc<Mutex<Vec<(HeaderMap, Bytes)>>>,
}

async fn record(State(r): State<Received>, headers: HeaderMap, body: Bytes) -> StatusCode {
    r.requests.lock().await.push((headers, body));
    StatusCode::OK
}

/// Checks a delivery's signature as a receiver would: `X-Tailscope-Signature: sha256=<hex>` is the HMAC-SHA256,
/// keyed by the shared secret, of `<X-Tailscope-Timestamp>.<body>`, and the timestamp is recent.
fn verify(secret: &str, headers: &HeaderMap, body: &[u8]) -> Result<(), String> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).ok_or(format!("no {name} header"));
    let timestamp = header("x-tailscope-timestamp")?;
    let signature = header("x-tailscope-signature")?.strip_prefix("sha256=").ok_or("no sha256= prefix")?;
    let sent: u64 = timestamp.parse().map_err(|_| format!("timestamp {timestamp:?}"))?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    if now.abs_diff(sent) > 300 {
        return Err(format!("timestamp {sent} is not within 5 minutes of {now}"));
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    let bytes: Vec<u8> = (0..signature.len() / 2)
        .map(|i| u8::from_str_radix(signature.get(2 * i..2 * i + 2).unwrap_or("zz"), 16))
        .collect::<Result<_, _>>()
        .map_err(|_| format!("signature {signature:?} is not hex"))?;
    mac.verify_slice(&bytes).map_err(|_| "signature mismatch".to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_down_longer_than_max_attempts_gets_the_event_when_back_even_after_a_restart() {
    // Nothing listens here until the receiver comes up.
    let hook = free_addr();
    let config = format!(
        r#"{BUDGETS}
[alerts]
initial_backoff = "20ms"
max_backoff = "50ms"
max_attempts = 2
outbox_max_backoff = "300ms"
evaluate_interval = "200ms"

[[alerts.webhooks]]
name = "relay"
url = "http://{hook}/hook"
secret_env = "IT_WEBHOOK_SECRET"
headers = {{ "X-Team" = "platform" }}
headers_env = {{ "Authorization" = "IT_WEBHOOK_AUTH" }}
"#
    );
    let mut server = Server::start_with_env(&config, &[("IT_WEBHOOK_SECRET", SECRET), ("IT_WEBHOOK_AUTH", AUTH)]).await;
    let sdk = tracer_provider(&server, Transport::Grpc, vec![KeyValue::new("service.name", "gateway")]);
    // One hedged request: $0.35 of duplicates, 35% of the dollar cap (no alert) and half of inference spend
    // against a 30% share cap: one breach of dup-share.
    hedged_request(&sdk, "h-1");
    let _ = sdk.shutdown();
    let relay = [("webhook", "relay")];
    let s = server
        .scrape_until("the breach to exhaust its attempts and wait in the outbox", |s| {
            s.sum("tailscope_webhook_failures_total", &relay) >= 2.0
                && s.value("tailscope_webhook_outbox_events", &relay) == Some(1.0)
        })
        .await;
    assert_eq!(s.sum("tailscope_webhook_deliveries_total", &relay), 0.0, "{}", s.text);
    assert!(s.sum("tailscope_webhook_failures_total", &[("webhook", "relay"), ("reason", "unreachable")]) >= 2.0);

    // The server restarts while the receiver is still down: the event is still pending, and retried.
    assert!(server.terminate().success(), "clean exit; log:\n{}", server.log());
    server.restart().await;
    server
        .scrape_until("the outbox to be resumed after the restart", |s| {
            s.value("tailscope_webhook_outbox_events", &relay) == Some(1.0)
                && s.sum("tailscope_webhook_failures_total", &relay) >= 1.0
        })
        .await;

    // The receiver comes up: the event arrives, signed, with the configured headers.
    let received = Received::default();
    let listener = tokio::net::TcpListener::bind(hook).await.expect("bind the webhook's address");
    let app = Router::new().route("/hook", post(record)).with_state(received.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let requests = wait_for_items(&received.requests, 1, "webhook calls").await;
    let (headers, body) = &requests[0];
    verify(SECRET, headers, body).unwrap_or_else(|e| panic!("the signature does not verify: {e}; {headers:?}"));
    // The check can fail: another secret or a changed body does not verify.
    assert!(verify("another-secret", headers, body).is_err());
    let mut tampered = body.to_vec();
    tampered[0] = b' ';
    assert!(verify(SECRET, headers, &tampered).is_err());
    assert_eq!(headers.get("x-team").map(|v| v.as_bytes()), Some(&b"platform"[..]));
    assert_eq!(headers.get("authorization").map(|v| v.as_bytes()), Some(AUTH.as_bytes()));
    assert_eq!(headers.get("content-type").map(|v| v.as_bytes()), Some(&b"application/json"[..]));
    let event: serde_json::Value = serde_json::from_slice(body).unwrap();
    assert_eq!((event["budget"].as_str(), event["severity"].as_str()), (Some("dup-share"), Some("critical")));

    let s = server
        .scrape_until("the outbox to empty", |s| {
            s.value("tailscope_webhook_outbox_events", &relay) == Some(0.0)
                && s.sum("tailscope_webhook_deliveries_total", &relay) == 1.0
        })
        .await;
    assert_eq!(s.sum("tailscope_webhook_events_dropped_total", &relay), 0.0, "{}", s.text);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(received.requests.lock().await.len(), 1, "delivered once");
    let log = server.log();
    assert!(log.contains("outbox"), "the log says the event waits in the outbox:\n{log}");
    assert!(!log.contains(SECRET) && !log.contains(AUTH), "a secret reached the log:\n{log}");
}

/// Live streams are capped: a client holding many `/api/v1/live/stream` connections gets 503 with `Retry-After`
/// past the cap, and the probes and other API calls still answer (before, streams could hold every connection of
/// the API listener and starve `/healthz`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_streams_are_capped_and_the_api_keeps_answering() {
    let server = Server::start().await;
    let url = format!("{}/api/v1/live/stream?window=1m", server.api_url());
    let cap = collector::live::MAX_LIVE_STREAMS;
    let mut open = Vec::new();
    for _ in 0..cap {
        // Each stream on its own client, so each holds its own connection as a browser tab would.
        let response = reqwest::Client::new().get(&url).send().await.unwrap();
        assert_eq!(response.status(), 200);
        open.push(response);
    }
    let refused = reqwest::Client::new().get(&url).send().await.unwrap();
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "5");
    assert!(refused.text().await.unwrap().contains("live streams are open already"));
    let health = reqwest::Client::new().get(format!("{}/healthz", server.api_url())).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(server.sql("SELECT 1 AS n").await[0]["n"], 1);
    // A closed stream frees its place.
    drop(open.pop());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let again = reqwest::Client::new().get(&url).send().await.unwrap();
        if again.status() == 200 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no place freed after a stream closed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
