//! Budget guardrails end to end: the real server with a small duplicate-inference cap, spans exported by the
//! official SDK, and a local webhook receiver. The warning and the breach arrive once each, survive a restart
//! without firing again, and the hedging guardrail flips to deny.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use opentelemetry::KeyValue;
use opentelemetry::trace::{SpanKind, Tracer, TracerProvider};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tokio::sync::Mutex;

use crate::support::{Server, Transport, tracer_provider, wait_for_items};

/// Webhook bodies received, in order. The first POST is answered 503 to exercise the retry path.
#[derive(Clone, Default)]
pub(crate) struct Receiver {
    pub(crate) bodies: Arc<Mutex<Vec<serde_json::Value>>>,
    hits: Arc<Mutex<u32>>,
}

async fn receive(State(r): State<Receiver>, axum::Json(body): axum::Json<serde_json::Value>) -> StatusCode {
    let mut hits = r.hits.lock().await;
    *hits += 1;
    if *hits == 1 {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    r.bodies.lock().await.push(body);
    StatusCode::OK
}

pub(crate) async fn webhook_receiver() -> (String, Receiver) {
    let r = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().route("/hook", post(receive)).with_state(r.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/hook"), r)
}

impl Receiver {
    pub(crate) async fn wait_for(&self, n: usize) -> Vec<serde_json::Value> {
        wait_for_items(&self.bodies, n, "webhook calls").await
    }
}

/// One hedged request: the winner and one loser, both gpt-4o with 100k input and 10k output tokens
/// ($0.25 + $0.10 = $0.35 each at $2.50/M in, $10/M out).
pub(crate) fn hedged_request(provider: &SdkTracerProvider, hedge: &str) {
    let tracer = provider.tracer("it-budget");
    for winner in [true, false] {
        let mut attrs = vec![
            KeyValue::new("gen_ai.provider.name", "openai"),
            KeyValue::new("gen_ai.operation.name", "chat"),
            KeyValue::new("gen_ai.request.model", "gpt-4o"),
            KeyValue::new("gen_ai.usage.input_tokens", 100_000i64),
            KeyValue::new("gen_ai.usage.output_tokens", 10_000i64),
            KeyValue::new("gen_ai.conversation.id", "sess-budget"),
            KeyValue::new("hedge.id", hedge.to_string()),
        ];
        if winner {
            attrs.push(KeyValue::new("hedge.winner", true));
        }
        let span = tracer.span_builder("chat gpt-4o").with_kind(SpanKind::Client).with_attributes(attrs).start(&tracer);
        drop(span);
    }
    provider.force_flush().expect("flush");
}

pub(crate) async fn guardrail(server: &Server) -> serde_json::Value {
    reqwest::get(format!("{}/api/v1/guardrails/hedging?provider=openai", server.api_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warning_and_breach_arrive_once_and_survive_restart() {
    let (url, receiver) = webhook_receiver().await;
    let config = format!(
        r#"
[[budget]]
name = "dup-daily"
kind = "duplicate_inference"
period = "day"
cap_usd = 1.0
warn_at = [0.5, 1.0]
forecast = false

[alerts]
webhooks = ["{url}"]
initial_backoff = "50ms"
max_backoff = "200ms"
evaluate_interval = "200ms"
"#
    );
    let mut server = Server::start_with(&config).await;
    let sdk = tracer_provider(&server, Transport::Grpc, vec![KeyValue::new("service.name", "gateway")]);

    let g = guardrail(&server).await;
    assert_eq!(g["decision"], "allow", "{g}");

    // Two hedged requests: $0.70 of duplicate spend, 70% of the cap: the warning.
    hedged_request(&sdk, "h-1");
    hedged_request(&sdk, "h-2");
    let bodies = receiver.wait_for(1).await;
    assert_eq!(bodies[0]["budget"], "dup-daily");
    assert_eq!(bodies[0]["severity"], "warning");
    assert_eq!(bodies[0]["state"], "firing");
    assert_eq!(bodies[0]["threshold"], 0.5);
    assert!((bodies[0]["spend_usd"].as_f64().unwrap() - 0.70).abs() < 1e-9, "{}", bodies[0]);
    assert!(bodies[0]["text"].as_str().unwrap().contains("WARNING dup-daily"), "{}", bodies[0]);
    assert_eq!(guardrail(&server).await["decision"], "allow");

    // A third: $1.05, the breach; the guardrail now denies hedging.
    hedged_request(&sdk, "h-3");
    let bodies = receiver.wait_for(2).await;
    assert_eq!(bodies[1]["severity"], "critical");
    assert_eq!(bodies[1]["threshold"], 1.0);
    assert!((bodies[1]["spend_usd"].as_f64().unwrap() - 1.05).abs() < 1e-9, "{}", bodies[1]);
    let g = guardrail(&server).await;
    assert_eq!(g["decision"], "deny", "{g}");
    assert!(g["reason"].as_str().unwrap().contains("dup-daily"), "{g}");
    let _ = sdk.shutdown();

    // Give the evaluator a few more rounds: nothing else may arrive.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(receiver.bodies.lock().await.len(), 2);

    // Restart: spend is rebuilt from the stored spans, the alert log says both already fired.
    assert!(server.terminate().success(), "clean exit; log:\n{}", server.log());
    server.restart().await;
    let g = guardrail(&server).await;
    assert_eq!(g["decision"], "deny", "after restart: {g}");
    assert!((g["budgets"][0]["spend_usd"].as_f64().unwrap() - 1.05).abs() < 1e-9, "{g}");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(receiver.bodies.lock().await.len(), 2, "no alert fired again after the restart");

    // The alert is visible in the API and in SQL.
    let alerts: serde_json::Value =
        reqwest::get(format!("{}/api/v1/alerts?state=firing", server.api_url())).await.unwrap().json().await.unwrap();
    assert_eq!(alerts["alerts"].as_array().unwrap().len(), 1, "{alerts}");
    assert_eq!(alerts["alerts"][0]["severity"], "critical");
    let rows = server.sql("SELECT budget, severity, threshold FROM alerts ORDER BY seq").await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[1]["severity"], "critical");
    let rows = server.sql("SELECT duplicate_cost_usd FROM hedging WHERE gen_ai_provider = 'openai'").await;
    assert!((rows[0]["duplicate_cost_usd"].as_f64().unwrap() - 1.05).abs() < 1e-9, "{rows:?}");
}
