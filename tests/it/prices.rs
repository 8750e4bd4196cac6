//! Prices that stay true (issue #17): spans sent through the official SDK are priced at the service tier that
//! served them.

use std::time::{Duration, SystemTime};

use opentelemetry::KeyValue;
use opentelemetry::trace::{Span as _, SpanKind, Tracer, TracerProvider};

use crate::support::{Server, Transport, tracer_provider};

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
