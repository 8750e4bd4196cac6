//! The memory ceiling under overload: many concurrent exporters (OTLP/HTTP and OTLP/gRPC, small and large
//! requests) against a server with a small `memory.limit_mb`. The server must not abort, must answer only success
//! or the OTLP retryable refusals, must stay under its ceiling plus a stated margin (sampled from /proc), and must
//! store every acknowledged span exactly once. And a query that needs more memory than ingest leaves it fails with a
//! clear error while ingest keeps going.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use prost::Message;

use crate::support::Server;

/// The ceiling the overload test configures, in MiB.
const LIMIT_MB: u64 = 64;
/// What RSS may exceed idle RSS + the ceiling by: what is not data-sized (read buffers of ~40 connections, tokio
/// and DataFusion threads) and the allocator's slack (memory freed by one thread and kept in its malloc arena while
/// another allocates anew). Measured: VmHWM 96-136 MiB over idle in runs of this test (debug build), i.e. 32-72 MiB
/// over the ceiling; without the ceiling the requests in flight alone would need ~200 MiB.
const MARGIN_MB: u64 = 96;

fn kv(key: &str, value: &str) -> KeyValue {
    let value = Some(AnyValue { value: Some(any_value::Value::StringValue(value.into())) });
    KeyValue { key: key.into(), value, ..Default::default() }
}

/// `n` GenAI spans with span ids `first..first + n`, each with a few hundred bytes of attributes like an agent's
/// and an error status whose message is `message_len` bytes long.
pub(crate) fn request(first: u64, n: u64, message_len: usize) -> ExportTraceServiceRequest {
    let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64;
    let spans = (first..first + n)
        .map(|id| Span {
            trace_id: [&[0x5a; 8][..], &(id / 8).to_be_bytes()].concat(),
            span_id: (id + 1).to_be_bytes().to_vec(),
            name: "chat gpt-4o".into(),
            kind: 3,
            start_time_unix_nano: t + id,
            end_time_unix_nano: t + id + 1_000_000,
            attributes: vec![
                kv("gen_ai.provider.name", "openai"),
                kv("gen_ai.operation.name", "chat"),
                kv("gen_ai.request.model", "gpt-4o"),
                kv("gen_ai.conversation.id", &format!("conv-{:016x}", id / 16)),
                kv("gen_ai.response.id", &format!("chatcmpl-{id:024x}")),
                kv("http.request.body", &"x".repeat(200)),
            ],
            status: Some(Status { message: "e".repeat(message_len), code: 2 }),
            ..Default::default()
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource { attributes: vec![kv("service.name", "overload")], ..Default::default() }),
            scope_spans: vec![ScopeSpans { spans, ..Default::default() }],
            ..Default::default()
        }],
    }
}

/// `(VmRSS, VmHWM)` of `pid` in bytes.
fn rss(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map(|kb| kb * 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// What the exporters saw.
#[derive(Default)]
struct Tally {
    /// Span ids of acknowledged requests.
    acked: Vec<u64>,
    ok: u64,
    /// Retryable refusals (503 / UNAVAILABLE).
    refused: u64,
    /// Anything else, with what it was.
    other: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_times_overload_stays_under_the_memory_ceiling_and_loses_nothing() {
    let mut server = Server::start_with(&format!(
        "[memory]\nlimit_mb = {LIMIT_MB}\n[ingest]\nmax_buffer_bytes = {}\n[storage]\nflush_max_bytes = {}\n",
        32 << 20,
        8 << 20
    ))
    .await;
    let pid = server.pid();
    let (idle, _) = rss(pid).expect("the server's /proc status");
    let tally = Arc::new(Mutex::new(Tally::default()));
    let next_id = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut senders = Vec::new();
    // 24 OTLP/HTTP exporters of ~0.5 MB requests, 8 OTLP/gRPC exporters of the same, and 4 OTLP/HTTP exporters of
    // ~8 MB requests: a demand several times the ceiling, and far more than a debug build can normalise.
    for sender in 0..36u32 {
        let (tally, next_id, stop) = (tally.clone(), next_id.clone(), stop.clone());
        let http = format!("{}/v1/traces", server.http_url());
        let grpc = server.grpc_url();
        senders.push(tokio::spawn(async move {
            let spans = if sender >= 32 { 24_000 } else { 1_500 };
            let client = reqwest::Client::new();
            let mut grpc_client = if (24..32).contains(&sender) {
                Some(TraceServiceClient::connect(grpc).await.expect("connect gRPC"))
            } else {
                None
            };
            while !stop.load(Ordering::Acquire) {
                let first = next_id.fetch_add(spans, Ordering::SeqCst);
                let request = request(first, spans, 20);
                let outcome = match grpc_client.as_mut() {
                    Some(c) => match c.export(request).await {
                        Ok(_) => Ok(()),
                        Err(s) if s.code() == tonic::Code::Unavailable => Err(None),
                        Err(s) => Err(Some(format!("gRPC {:?}: {}", s.code(), s.message()))),
                    },
                    None => {
                        let body = request.encode_to_vec();
                        match client
                            .post(&http)
                            .header("content-type", "application/x-protobuf")
                            .body(body)
                            .send()
                            .await
                        {
                            Ok(r) if r.status() == 200 => Ok(()),
                            Ok(r) if r.status() == 503 && r.headers().contains_key("retry-after") => Err(None),
                            Ok(r) => Err(Some(format!("HTTP {}: {}", r.status(), r.text().await.unwrap_or_default()))),
                            Err(e) => Err(Some(format!("HTTP transport: {e}"))),
                        }
                    }
                };
                let refused = {
                    let mut t = tally.lock().unwrap();
                    match outcome {
                        Ok(()) => {
                            t.ok += 1;
                            t.acked.extend(first..first + spans);
                            false
                        }
                        Err(None) => {
                            t.refused += 1;
                            true
                        }
                        Err(Some(e)) => {
                            t.other.push(e);
                            true
                        }
                    }
                };
                if refused {
                    // Shorter than Retry-After, to keep the pressure on.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }));
    }
    let started = Instant::now();
    let mut peak_rss = 0;
    let mut ready_refused = false;
    let http = reqwest::Client::new();
    while started.elapsed() < Duration::from_secs(10) {
        let (now, _) = rss(pid).expect("the server is running");
        peak_rss = peak_rss.max(now);
        if !ready_refused && let Ok(r) = http.get(format!("{}/readyz", server.api_url())).send().await {
            ready_refused = r.status() == 503;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    stop.store(true, Ordering::Release);
    for s in senders {
        s.await.expect("a sender panicked");
    }
    let (_, hwm) = rss(pid).expect("the server survived");
    let tally = std::mem::take(&mut *tally.lock().unwrap());
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    eprintln!(
        "overload: {} acknowledged requests ({} spans), {} refused; RSS idle {:.0} MiB, peak sampled {:.0} MiB, \
         VmHWM {:.0} MiB (ceiling {LIMIT_MB} MiB + margin {MARGIN_MB} MiB over idle)",
        tally.ok,
        tally.acked.len(),
        tally.refused,
        mib(idle),
        mib(peak_rss),
        mib(hwm)
    );
    assert!(
        tally.other.is_empty(),
        "answers other than success and retryable refusals: {:?}",
        &tally.other[..tally.other.len().min(5)]
    );
    assert!(tally.ok > 0, "nothing was accepted");
    assert!(tally.refused > 0, "the ceiling was never reached: the test did not overload the server");
    assert!(ready_refused, "/readyz never reported the refusals");
    assert!(
        hwm <= idle + (LIMIT_MB + MARGIN_MB) * 1024 * 1024,
        "peak RSS {:.0} MiB passed idle {:.0} MiB + ceiling {LIMIT_MB} MiB + margin {MARGIN_MB} MiB",
        mib(hwm),
        mib(idle)
    );
    let refusals = server.metric("tailscope_memory_refusals_total").await;
    assert!(refusals > 0.0, "memory refusals are not counted on /metrics");

    // Every acknowledged span exactly once, after an unclean restart (the WAL replays what was not flushed).
    server.kill();
    server.restart().await;
    let rows = server.sql("SELECT count(*) AS n, count(DISTINCT span_id) AS d FROM spans").await;
    let (n, d) = (rows[0]["n"].as_i64().unwrap(), rows[0]["d"].as_i64().unwrap());
    assert_eq!(n, d, "a span was stored twice");
    assert_eq!(n, tally.acked.len() as i64, "stored spans differ from acknowledged ones");
    let stored: HashSet<u64> = server
        .sql("SELECT span_id FROM spans")
        .await
        .iter()
        .map(|r| u64::from_str_radix(r["span_id"].as_str().unwrap(), 16).unwrap() - 1)
        .collect();
    assert!(tally.acked.iter().all(|id| stored.contains(id)), "an acknowledged span is missing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_needing_memory_that_ingest_holds_fails_clearly_while_ingest_goes_on() {
    // Flushes only at shutdown: the buffer keeps what is ingested, reserved in a 40 MiB budget (with small caches,
    // whose bounds are reserved too).
    let server = Server::start_with(
        "[memory]\nlimit_mb = 40\n[ingest]\nmax_buffer_bytes = 40000000\n[storage]\nflush_max_bytes = 40000000\n\
         flush_interval = \"1h\"\n[query]\nmemory_limit_mb = 1024\nmetadata_cache_mb = 1\n[pricing]\n\
         cache_bytes = 65536\n",
    )
    .await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/traces", server.http_url());
    let send = |first: u64, n: u64| {
        let body = request(first, n, 1000).encode_to_vec();
        client.post(&url).header("content-type", "application/x-protobuf").body(body).send()
    };
    // A join whose build side holds every span's 1 kB status message: memory proportional to the data, and a hash
    // join's build side does not spill.
    let join = "SELECT count(*) AS n FROM spans a JOIN spans b ON a.span_id = b.span_id \
                WHERE length(a.status_message) + length(b.status_message) > 0";
    assert_eq!(send(0, 2_000).await.unwrap().status(), 200);
    let rows = server.sql(join).await;
    assert_eq!(rows[0]["n"], 2_000, "with memory to spare the query runs");

    // Ingest fills the budget until it is refused.
    let mut next = 2_000;
    loop {
        let r = send(next, 2_000).await.unwrap();
        if r.status() == 503 {
            break;
        }
        assert_eq!(r.status(), 200);
        next += 2_000;
        assert!(next < 2_000_000, "ingest was never refused");
    }
    let (status, body) = server.sql_raw(join).await;
    assert!(!status.is_success(), "the join ran in memory that ingest holds: {body}");
    assert!(body.contains("process memory limit is reached"), "the error does not say which limit: {body}");
    // The server keeps serving: small requests fit in what is left, and queries that need little still run.
    let r = send(10_000_000, 5).await.unwrap();
    assert!(r.status() == 200 || r.status() == 503, "{}", r.status());
    let rows = server.sql("SELECT count(*) AS n FROM spans").await;
    assert!(rows[0]["n"].as_i64().unwrap() >= next as i64);
}
