//! Prices that stay true (issue #17): spans sent through the official SDK are priced at the service tier that
//! served them, and `tailscope prices check` reports unpriced models and stale entries from stored spans.

use std::process::Command;
use std::time::{Duration, SystemTime};

use opentelemetry::KeyValue;
use opentelemetry::trace::{Span as _, SpanKind, Tracer, TracerProvider};

use crate::support::{Server, Transport, tailscope_bin, tracer_provider};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_and_flex_spans_are_priced_at_their_tier() {
    let server = Server::start().await;
    let provider = tracer_provider(&server, Transport::Grpc, vec![KeyValue::new("service.name", "tiers")]);
    let tracer = provider.tracer("it-prices");
    let t0 = SystemTime::now() - Duration::from_secs(5);
    // (span name, request tier, response tier)
    let calls = [
        ("served-priority", Some("auto"), Some("priority")),
        ("asked-flex", Some("flex"), None),
        ("asked-priority-served-default", Some("priority"), Some("default")),
    ];
    for (name, request, response) in calls {
        let mut attributes = vec![
            KeyValue::new("gen_ai.provider.name", "openai"),
            KeyValue::new("gen_ai.operation.name", "chat"),
            KeyValue::new("gen_ai.request.model", "gpt-5"),
            KeyValue::new("gen_ai.usage.input_tokens", 1_000_000i64),
            KeyValue::new("gen_ai.usage.output_tokens", 100_000i64),
        ];
        if let Some(tier) = request {
            attributes.push(KeyValue::new("openai.request.service_tier", tier));
        }
        if let Some(tier) = response {
            attributes.push(KeyValue::new("openai.response.service_tier", tier));
        }
        let mut span = tracer
            .span_builder(name)
            .with_kind(SpanKind::Client)
            .with_start_time(t0)
            .with_attributes(attributes)
            .start(&tracer);
        span.end_with_timestamp(t0 + Duration::from_millis(100));
    }
    provider.force_flush().expect("flush");
    let _ = provider.shutdown();
    server.wait_count("SELECT count(*) AS n FROM spans", 3).await;

    let rows = server
        .sql("SELECT name, cost_usd, attributes['openai.response.service_tier'] AS served FROM spans ORDER BY name")
        .await;
    let cost = |name: &str| {
        let row = rows.iter().find(|r| r["name"] == name).unwrap_or_else(|| panic!("{name} in {rows:?}"));
        row["cost_usd"].as_f64().unwrap_or_else(|| panic!("{name} is priced: {row}"))
    };
    let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
    // gpt-5: Priority $2.50/M in, $20/M out; Flex $0.625/M in, $5/M out; Standard $1.25/M in, $10/M out.
    assert!(close(cost("served-priority"), 1_000_000.0 * 2.5e-6 + 100_000.0 * 2e-5), "{rows:?}");
    assert!(close(cost("asked-flex"), 1_000_000.0 * 6.25e-7 + 100_000.0 * 5e-6), "{rows:?}");
    // The response says what was served: the request's tier does not count.
    assert!(close(cost("asked-priority-served-default"), 1_000_000.0 * 1.25e-6 + 100_000.0 * 1e-5), "{rows:?}");
    // The tier stays queryable in `attributes`.
    assert!(rows.iter().any(|r| r["served"] == "priority"), "{rows:?}");
}

/// Sends one chat span per `(model, input tokens, output tokens)` through the SDK and waits until all are stored.
async fn send_chats(server: &Server, calls: &[(&'static str, i64, i64)]) {
    let provider = tracer_provider(server, Transport::Grpc, vec![KeyValue::new("service.name", "check")]);
    let tracer = provider.tracer("it-prices-check");
    let t0 = SystemTime::now() - Duration::from_secs(5);
    for (model, input, output) in calls {
        let mut span = tracer
            .span_builder(format!("chat {model}"))
            .with_kind(SpanKind::Client)
            .with_start_time(t0)
            .with_attributes(vec![
                KeyValue::new("gen_ai.provider.name", "openai"),
                KeyValue::new("gen_ai.operation.name", "chat"),
                KeyValue::new("gen_ai.request.model", *model),
                KeyValue::new("gen_ai.usage.input_tokens", *input),
                KeyValue::new("gen_ai.usage.output_tokens", *output),
            ])
            .start(&tracer);
        span.end_with_timestamp(t0 + Duration::from_millis(100));
    }
    provider.force_flush().expect("flush");
    let _ = provider.shutdown();
    server.wait_count("SELECT count(*) AS n FROM spans", calls.len() as i64).await;
}

fn prices_check(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(tailscope_bin()).args(["prices", "check"]).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prices_check_reports_unpriced_models_and_stale_entries() {
    // gpt-4o-mini: $0.15/M in, $0.60/M out. 1M in + 1M out = $0.75 for 2M tokens, $0.375 per million.
    let mut server = Server::start().await;
    send_chats(
        &server,
        &[("gpt-4o-mini", 1_000_000, 1_000_000), ("acme-mystery", 3_000, 1_000), ("acme-mystery", 5_000, 1_000)],
    )
    .await;
    let (ok, out, err) = prices_check(&["--server", &server.api_url(), "--max-age", "3650d"]);
    assert!(!ok, "unpriced models fail the check: {out}");
    assert!(err.contains("1 unpriced model(s), 0 stale"), "{err}");
    let line = out.lines().find(|l| l.contains("acme-mystery")).unwrap_or_else(|| panic!("{out}"));
    // 2 spans, 10k tokens, at risk 10k x $0.375/M.
    assert!(line.contains(" 2 ") && line.contains("10000") && line.contains("~$0.003"), "{line}");
    assert!(out.contains("https://openai.com/api/pricing/"), "sources are listed: {out}");

    // The stored files after a clean stop, with a price file whose entry is old.
    assert!(server.terminate().success());
    let file = server.dir().join("old-prices.json");
    std::fs::write(
        &file,
        r#"{"acme-mystery": {"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6,
            "source": "https://example.com/p", "as_of": "list price as of January 2000"}}"#,
    )
    .unwrap();
    let config = server.dir().join("check.toml");
    std::fs::write(&config, format!("[pricing]\nmodel_files = [{:?}]\n", file.display().to_string())).unwrap();
    let dir = server.data_dir.display().to_string();
    let (ok, out, err) =
        prices_check(&["--data-dir", &dir, "--config", &config.display().to_string(), "--max-age", "3650d"]);
    assert!(!ok, "{out}");
    assert!(err.contains("1 unpriced model(s), 1 stale"), "{err}\n{out}");
    assert!(out.contains("old-prices.json:acme-mystery  as of 2000-01"), "{out}");
    assert!(out.contains("https://example.com/p"), "{out}");

    // Every model priced and every entry recent: the check passes.
    let clean = Server::start().await;
    send_chats(&clean, &[("gpt-4o-mini", 1_000, 1_000)]).await;
    let (ok, out, err) = prices_check(&["--server", &clean.api_url(), "--max-age", "3650d"]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("Unpriced models in stored spans: 0"), "{out}");
}

/// Issue #17: the built-in price table prices every model the simulator names, under the names it sends
/// (request model, dated response model, where it is hosted), so the demo shows no unpriced spans but the
/// one it means to: the private fine-tune (`UNKNOWN_MODEL`), which no public table can know.
#[test]
fn the_builtin_table_prices_every_simulated_model() {
    use collector::cost::{Pricer, SpanFacts};
    use tailscope_core::rules::UNPRICED;
    use tailscope_sim::fleet::{MODELS, UNKNOWN_MODEL};
    let pricer = Pricer::default();
    for m in MODELS {
        for (request, response) in [(Some(m.request), Some(m.response)), (Some(m.request), None)] {
            let cost = pricer.price(&SpanFacts {
                gen_ai_provider: Some(m.provider),
                request_model: request,
                response_model: response,
                peer_cloud_provider: m.hosted_in.map(|p| p.cloud),
                peer_cloud_region: m.hosted_in.map(|p| p.region),
                input_tokens: Some(1_000),
                output_tokens: Some(100),
                ..SpanFacts::default()
            });
            let source = cost.price_source.as_deref();
            if m.request == UNKNOWN_MODEL {
                assert_eq!(source, Some(UNPRICED), "the fine-tune stays the demo's one unpriced model");
            } else {
                assert_ne!(source, Some(UNPRICED), "{}/{} ({response:?}) has no price", m.provider, m.request);
                assert!(cost.token_cost_usd.is_some_and(|c| c > 0.0), "{}/{}: {cost:?}", m.provider, m.request);
            }
        }
    }
}

fn reprice(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(tailscope_bin()).arg("reprice").args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The price file the collector of [`reprice_rewrites_stored_costs_and_budgets_follow`] reads, at `input` and
/// `output` USD per million tokens.
fn acme_prices(path: &std::path::Path, input: f64, output: f64) {
    std::fs::write(
        path,
        format!(
            r#"{{"acme-model": {{"input_cost_per_token": {}, "output_cost_per_token": {}, "litellm_provider": "openai"}}}}"#,
            input / 1e6,
            output / 1e6
        ),
    )
    .unwrap();
}

/// Issue #17: after a price change, `tailscope reprice` rewrites the stored cost columns, `session_cost` equals a
/// hand computation at the new prices, the budget's spend follows after a restart, a second run changes nothing,
/// and it refuses to run beside the collector that owns the data dir.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reprice_rewrites_stored_costs_and_budgets_follow() {
    let tmp = tempfile::tempdir().unwrap();
    let prices = tmp.path().join("acme.json");
    acme_prices(&prices, 1.0, 2.0);
    let toml = format!(
        "[pricing]\nmodel_files = [{:?}]\n\n[[budget]]\nname = \"all\"\nkind = \"total\"\nperiod = \"day\"\n\
         cap_usd = 1000.0\nforecast = false\n",
        prices.display().to_string()
    );
    let mut server = Server::start_with(&toml).await;
    // Two sessions: s1 two calls (100k in + 10k out each), s2 one call (1M in + 0 out), one unpriced call.
    // Callers on AWS calling a GCP endpoint: egress is priced from the bodies' sizes, one direction's.
    let resource = vec![
        KeyValue::new("service.name", "reprice"),
        KeyValue::new("cloud.provider", "aws"),
        KeyValue::new("cloud.region", "us-west-2"),
    ];
    let provider = tracer_provider(&server, Transport::Grpc, resource);
    let tracer = provider.tracer("it-reprice");
    let t0 = SystemTime::now() - Duration::from_secs(5);
    for (session, model, input, output) in [
        ("s1", "acme-model", 100_000i64, 10_000i64),
        ("s1", "acme-model", 100_000, 10_000),
        ("s2", "acme-model", 1_000_000, 0),
        ("s2", "acme-unlisted", 1_000, 1_000),
    ] {
        let mut span = tracer
            .span_builder(format!("chat {model}"))
            .with_kind(SpanKind::Client)
            .with_start_time(t0)
            .with_attributes(vec![
                KeyValue::new("gen_ai.provider.name", "openai"),
                KeyValue::new("gen_ai.operation.name", "chat"),
                KeyValue::new("gen_ai.request.model", model),
                KeyValue::new("gen_ai.usage.input_tokens", input),
                KeyValue::new("gen_ai.usage.output_tokens", output),
                KeyValue::new("session.id", session),
                KeyValue::new("cloud.provider", "gcp"),
                KeyValue::new("cloud.region", "us-central1"),
                KeyValue::new("http.request.body.size", 2_005i64),
                KeyValue::new("http.response.body.size", 207_475i64),
            ])
            .start(&tracer);
        span.end_with_timestamp(t0 + Duration::from_millis(100));
    }
    provider.force_flush().expect("flush");
    let _ = provider.shutdown();
    server.wait_count("SELECT count(*) AS n FROM spans", 4).await;
    let session_costs = |rows: Vec<serde_json::Value>| -> Vec<(String, f64)> {
        rows.iter()
            .map(|r| (r["session_id"].as_str().unwrap().to_string(), r["token_cost_usd"].as_f64().unwrap()))
            .collect()
    };
    let sql = "SELECT session_id, token_cost_usd FROM session_cost ORDER BY session_id";
    // The priced spans' egress: an unpriced call has no cost_usd (its tokens' price is unknown), so no budget counts it.
    let egress_sql = "SELECT sum(egress_cost_usd) AS e FROM spans WHERE cost_usd IS NOT NULL";
    let egress_before = server.sql(egress_sql).await;
    assert!(egress_before[0]["e"].as_f64().is_some_and(|e| e > 0.0), "egress is priced: {egress_before:?}");
    // At $1/M in and $2/M out: s1 = 2 x (0.1 + 0.02) = 0.24, s2 = 1.0.
    let before = session_costs(server.sql(sql).await);
    assert_eq!(before.len(), 2, "{before:?}");
    assert!(close(before[0].1, 0.24) && close(before[1].1, 1.0), "{before:?}");

    let data_dir = server.data_dir.display().to_string();
    let config = server.dir().join("tailscope.toml").display().to_string();
    let today = chrono::Utc::now().date_naive() - chrono::Days::new(1);
    let since = today.to_string();
    let (ok, _, err) = reprice(&["--since", &since, "--data-dir", &data_dir, "--config", &config]);
    assert!(!ok && err.contains("in use by another tailscope process"), "the collector owns its data dir: {err}");

    assert!(server.terminate().success());
    // The same prices: nothing changes (egress is priced from the same inputs as at ingest, not from the stored
    // total of bytes).
    let (ok, out, err) = reprice(&["--since", &since, "--data-dir", &data_dir, "--config", &config]);
    assert!(ok && out.contains("0 changed; rewrote 0 file(s)"), "{out}\n{err}");
    acme_prices(&prices, 3.0, 5.0);
    let (ok, out, err) = reprice(&["--since", &since, "--data-dir", &data_dir, "--config", &config, "--dry-run"]);
    assert!(ok && out.contains("3 changed; would rewrite"), "{out}\n{err}");
    let (ok, out, err) = reprice(&["--since", &since, "--data-dir", &data_dir, "--config", &config]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("4 spans") && out.contains("3 changed; rewrote"), "{out}");
    assert!(out.contains("1 span(s) still have no price"), "{out}");
    // Idempotent: the same table again changes nothing.
    let (ok, out, err) = reprice(&["--since", &since, "--data-dir", &data_dir, "--config", &config]);
    assert!(ok && out.contains("0 changed; rewrote 0 file(s)"), "{out}\n{err}");

    server.restart().await;
    // At $3/M in and $5/M out: s1 = 2 x (0.3 + 0.05) = 0.70, s2 = 3.0.
    let after = session_costs(server.sql(sql).await);
    // Egress costs what it cost (same egress prices), and is still part of cost_usd.
    assert_eq!(server.sql(egress_sql).await, egress_before);
    assert!(close(after[0].1, 0.70) && close(after[1].1, 3.0), "{after:?}");
    let rows = server.sql("SELECT price_source, count(*) AS n FROM spans GROUP BY price_source ORDER BY 1").await;
    assert_eq!(rows[0]["price_source"], "acme.json:acme-model", "{rows:?}");
    assert_eq!(rows[1]["price_source"], "unknown", "{rows:?}");
    // The budget rebuilt from the stored spans counts the new figures.
    let budgets: serde_json::Value =
        server.client().get(format!("{}/api/v1/alerts", server.api_url())).send().await.unwrap().json().await.unwrap();
    let spend = budgets["budgets"][0]["spend_usd"].as_f64().unwrap_or_else(|| panic!("{budgets}"));
    let egress = egress_before[0]["e"].as_f64().unwrap();
    assert!(close(spend, 3.70 + egress), "{budgets} (egress {egress})");
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9 * b.abs().max(1.0)
}
