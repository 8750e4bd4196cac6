//! Acting where operators live: a Prometheus scrape of a running server shows each budget's spend, cap, use and
//! alert state and the API's own counters and latencies.

use opentelemetry::KeyValue;

use crate::budget::hedged_request;
use crate::support::{Scrape, Server, Transport, tracer_provider};

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
