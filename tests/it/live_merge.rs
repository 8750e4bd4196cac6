//! One live view across collectors (issue #16): three real `tailscope serve` processes, each sent a third of the
//! spans by the official SDK; their `/api/v1/live/histograms` answers merged give the exact percentiles of the
//! union within 0.1 %, and `tailscope tui --server A,B,C,D` shows the merged figures and names the server that is
//! down.

use std::time::{Duration, SystemTime};

use collector::live::merge;
use opentelemetry::KeyValue;
use opentelemetry::trace::{Span as _, SpanKind, Status, Tracer, TracerProvider};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::support::{Server, Transport, free_addr, tailscope_bin, tracer_provider};
use crate::tui::Tmux;

/// Sends one span of `provider` per duration (µs) to `server`, every `error_every`th with an error status.
async fn send(server: &Server, provider: &str, durations_us: &[u64], error_every: usize) {
    let provider_sdk = tracer_provider(
        server,
        Transport::Grpc,
        vec![KeyValue::new("service.name", "agent"), KeyValue::new("cloud.region", "us-east-1")],
    );
    let tracer = provider_sdk.tracer("it-live-merge");
    let t0 = SystemTime::now() - Duration::from_secs(120);
    for (i, us) in durations_us.iter().enumerate() {
        let mut span = tracer
            .span_builder("chat gpt-4o")
            .with_kind(SpanKind::Client)
            .with_start_time(t0)
            .with_attributes(vec![
                KeyValue::new("gen_ai.provider.name", provider.to_string()),
                KeyValue::new("gen_ai.operation.name", "chat"),
                KeyValue::new("gen_ai.request.model", "gpt-4o"),
            ])
            .start(&tracer);
        if i % error_every == 0 {
            span.set_status(Status::error("upstream 500"));
        }
        span.end_with_timestamp(t0 + Duration::from_micros(*us));
    }
    provider_sdk.force_flush().expect("flush");
}

/// The nearest-rank percentile of sorted `values`: what hdrhistogram's `value_at_quantile` estimates.
fn exact(sorted: &[u64], q: f64) -> u64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).max(1);
    sorted[rank - 1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_collectors_merge_into_the_percentiles_of_the_union() {
    let (a, b, c) = tokio::join!(Server::start(), Server::start(), Server::start());
    let servers = [a, b, c];
    // Each collector its own spread (log-uniform, in whole microseconds: what the collector records), so that no
    // collector's percentiles are the union's.
    let mut rng = StdRng::seed_from_u64(16);
    let mut union: Vec<u64> = Vec::new();
    let mut errors = 0;
    for (k, server) in servers.iter().enumerate() {
        let n = 300 + 100 * k;
        let top = 4.0 + k as f64;
        let us: Vec<u64> = (0..n).map(|_| 10f64.powf(rng.random_range(2.5..top)) as u64).collect();
        errors += n.div_ceil(9) as u64;
        union.extend(&us);
        send(server, "openai", &us, 9).await;
        // For the dashboard below: 111, 222 and 333 ms, 50 each, so that the merged p50 and p99 (222 and 333) are
        // no single collector's.
        send(server, "anthropic", &[111_000 * (k as u64 + 1); 50], 1000).await;
        server.wait_count("SELECT COUNT(*) AS n FROM spans", n as i64 + 50).await;
    }
    union.sort_unstable();

    let mut answers = Vec::new();
    for server in &servers {
        let url =
            format!("{}/api/v1/live/histograms?window=1h&group=provider,region&provider=openai", server.api_url());
        let resp = server.client().get(url).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        answers.push((server.api_url(), resp.bytes().await.unwrap().to_vec()));
    }
    let (report, refused) = merge::merge_answers(answers, true);
    assert!(refused.is_empty(), "{:?}", refused.iter().map(|(s, e)| format!("{s}: {e}")).collect::<Vec<_>>());
    let report = report.expect("merged");
    assert_eq!(report.rows.len(), 1);
    let row = &report.rows[0];
    assert_eq!((row.key.provider.as_str(), row.key.region.as_str()), ("openai", "us-east-1"));
    assert_eq!((row.count, row.errors), (union.len() as u64, errors));
    for (got, q) in [(row.p50_ms, 0.5), (row.p95_ms, 0.95), (row.p99_ms, 0.99), (row.p999_ms, 0.999), (row.max_ms, 1.0)]
    {
        let want = exact(&union, q) as f64 / 1000.0;
        assert!((got - want).abs() <= want * 0.001, "p{q}: merged {got} ms, exact {want} ms of the union (> 0.1%)");
    }
    // The merge is not the average of the collectors' own p99s (what a naive dashboard would show).
    let mut own = Vec::new();
    for server in &servers {
        let url = format!("{}/api/v1/live?window=1h&group=provider&provider=openai", server.api_url());
        let live: serde_json::Value = server.client().get(url).send().await.unwrap().json().await.unwrap();
        own.push(live["rows"][0]["p99_ms"].as_f64().unwrap());
    }
    let average = own.iter().sum::<f64>() / 3.0;
    assert!((average - row.p99_ms).abs() > row.p99_ms * 0.01, "average {average} vs merged {}", row.p99_ms);

    // The dashboard over the three and one that is down: merged figures, and the down one named.
    let down = format!("http://{}", free_addr());
    let list: Vec<String> = servers.iter().map(Server::api_url).chain([down.clone()]).collect();
    let tmux = Tmux::start_sized(
        &format!("{} tui --server {} --refresh 300ms", tailscope_bin().display(), list.join(",")),
        140,
        30,
    );
    let screen = tmux.wait_for(&["anthropic", "merged without", &down]).await;
    let line = screen.lines().find(|l| l.contains("anthropic")).expect("the anthropic row");
    // p50 222 ms and p99 333 ms: only the union has both (each collector alone has one duration).
    assert!(line.contains("222") && line.contains("333"), "merged row:\n{screen}");
    tmux.keys(&["q"]);
    tmux.wait_for(&["EXITED 0"]).await;
}
