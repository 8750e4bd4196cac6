//! Hostile OTLP input (issue #12): requests that are valid but huge in one dimension, or nested without end, must
//! get an answer and leave the server serving, over both transports.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

use crate::support::{Server, now_ns, string_kv as kv, trace_export};

/// `n` spans with ids from `first`, each with `attributes`.
fn request(first: u64, n: u64, attributes: &[KeyValue]) -> ExportTraceServiceRequest {
    trace_export("hostile", first, n, attributes)
}

fn ordinary(first: u64, n: u64) -> ExportTraceServiceRequest {
    request(first, n, &[kv("gen_ai.provider.name", "openai"), kv("gen_ai.request.model", "gpt-4o")])
}

async fn post(server: &Server, content_type: &str, body: Vec<u8>) -> (reqwest::StatusCode, String) {
    let r = reqwest::Client::new()
        .post(format!("{}/v1/traces", server.http_url()))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST failed ({e}); server log:\n{}", server.log()));
    let status = r.status();
    (status, r.text().await.unwrap_or_default())
}

/// Issue #12, item 1: a span with a 50 MiB attribute, acknowledged, then an ordinary batch. The second request
/// sized its attribute map from the first (55 GiB) and the process aborted; over both transports, the batches after
/// the large one must be stored like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_attribute_then_an_ordinary_batch_over_http_and_grpc() {
    let server = Server::start().await;
    let huge = request(1, 1, &[kv("gen_ai.prompt", &"p".repeat(50 << 20))]);

    let (status, body) = post(&server, "application/x-protobuf", huge.encode_to_vec()).await;
    assert!(status.is_success(), "{status}: {body}");
    let (status, body) = post(&server, "application/x-protobuf", ordinary(100, 1_000).encode_to_vec()).await;
    assert!(status.is_success(), "{status}: {body}; log:\n{}", server.log());

    let mut grpc = TraceServiceClient::connect(server.grpc_url()).await.unwrap().max_decoding_message_size(usize::MAX);
    grpc.export(request(2, 1, &[kv("gen_ai.prompt", &"q".repeat(8 << 20))])).await.unwrap();
    grpc.export(huge).await.unwrap_or_else(|e| panic!("{e}; log:\n{}", server.log()));
    grpc.export(ordinary(10_000, 8_192)).await.unwrap_or_else(|e| panic!("{e}; log:\n{}", server.log()));

    server
        .wait_count("SELECT count(*) AS n FROM spans WHERE service_name = 'hostile'", 1 + 1_000 + 1 + 1 + 8_192)
        .await;
    let rows = server.sql("SELECT length(attributes['gen_ai.prompt']) AS n FROM spans WHERE attributes['gen_ai.prompt'] IS NOT NULL ORDER BY n").await;
    assert_eq!(rows.iter().map(|r| r["n"].as_i64().unwrap()).collect::<Vec<_>>(), [8 << 20, 50 << 20, 50 << 20]);
}

/// Issue #12, item 8: a span of millions of empty attributes keeps `max_attributes_per_span` of them, is stored,
/// and the client learns what was dropped through `partial_success` (HTTP and gRPC alike).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attribute_bomb_is_stored_cut_to_the_limit_with_a_warning() {
    let server = Server::start_with("[ingest]\nmax_attributes_per_span = 100\n").await;
    let mut bomb = request(1, 1, &[kv("gen_ai.request.model", "gpt-4o")]);
    bomb.resource_spans[0].scope_spans[0].spans[0]
        .attributes
        .extend(std::iter::repeat_n(KeyValue::default(), 3_000_000));
    let body = bomb.encode_to_vec();
    let (status, answer) = post(&server, "application/x-protobuf", body).await;
    assert!(status.is_success(), "{status}: {answer}");
    let answer = opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse::decode(
        &reqwest::Client::new()
            .post(format!("{}/v1/traces", server.http_url()))
            .header("content-type", "application/x-protobuf")
            .body(request(2, 1, &vec![kv("k", "v"); 150]).encode_to_vec())
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()[..],
    )
    .unwrap();
    let partial = answer.partial_success.expect("a warning");
    assert_eq!(partial.rejected_spans, 0);
    assert!(
        partial.error_message.contains("50 attributes past ingest.max_attributes_per_span (100)"),
        "{}",
        partial.error_message
    );

    let mut grpc = TraceServiceClient::connect(server.grpc_url()).await.unwrap();
    let answer = grpc.export(request(3, 1, &vec![kv("k", "v"); 101])).await.unwrap().into_inner();
    assert!(answer.partial_success.unwrap().error_message.contains("1 attributes past"));
    server.wait_count("SELECT count(*) AS n FROM spans WHERE service_name = 'hostile'", 3).await;
    let rows = server.sql("SELECT cardinality(attributes) AS n, request_model FROM spans ORDER BY span_id").await;
    assert_eq!(rows[0]["n"], 99, "{rows:?}");
    assert_eq!(rows[0]["request_model"], "gpt-4o");
}

/// A length-delimited field `tag` holding `bytes`.
fn field(tag: u32, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 8);
    prost::encoding::encode_key(tag, prost::encoding::WireType::LengthDelimited, &mut out);
    prost::encoding::encode_varint(bytes.len() as u64, &mut out);
    out.extend_from_slice(bytes);
    out
}

/// `depth` AnyValues nested in arrays, as protobuf, built from the inside out.
fn nested_protobuf(depth: usize) -> Vec<u8> {
    let mut rev: Vec<u8> = Vec::new();
    for _ in 0..depth {
        for tag in [0x0a, 0x2a] {
            let mut n = rev.len();
            let mut len = Vec::new();
            while n >= 0x80 {
                len.push((n as u8) | 0x80);
                n >>= 7;
            }
            len.push(n as u8);
            rev.extend(len.iter().rev());
            rev.push(tag);
        }
    }
    rev.reverse();
    rev
}

/// Nesting 100,000 deep, over protobuf (traces, metrics, logs) and JSON, is refused with 400 / INVALID_ARGUMENT
/// and the server keeps serving: no recursion follows the input's depth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nesting_100k_deep_is_refused_over_protobuf_and_json() {
    let server = Server::start().await;
    let depth = 100_000;
    // A span whose one attribute holds the nested value; the span itself is encoded by prost around it.
    let value = nested_protobuf(depth);
    let mut span =
        Span { trace_id: vec![1; 16], span_id: vec![1; 8], start_time_unix_nano: now_ns(), ..Default::default() }
            .encode_to_vec();
    span.extend(field(9, &field(2, &value)));
    let rs = field(2, &field(2, &span));
    let (status, answer) = post(&server, "application/x-protobuf", field(1, &rs)).await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer.contains("recursion limit"), "{answer}");

    // The same over gRPC: the request's only field carried as bytes, which is the same wire format.
    #[derive(Clone, PartialEq, prost::Message)]
    struct Raw {
        #[prost(bytes = "vec", tag = "1")]
        resource_spans: Vec<u8>,
    }
    let channel = tonic::transport::Channel::from_shared(server.grpc_url()).unwrap().connect().await.unwrap();
    let mut raw = tonic::client::Grpc::new(channel);
    raw.ready().await.unwrap();
    let export = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
    );
    let err = raw
        .unary::<_, opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse, _>(
            tonic::Request::new(Raw { resource_spans: rs }),
            export,
            tonic_prost::ProstCodec::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");

    // Metrics and logs are decoded by prost: a log body nested as deep.
    // ExportLogsServiceRequest.resource_logs (1) > ResourceLogs.scope_logs (2) > ScopeLogs.log_records (2) >
    // LogRecord.body (5).
    let logs = field(1, &field(2, &field(2, &field(5, &value))));
    let r = reqwest::Client::new()
        .post(format!("{}/v1/logs", server.http_url()))
        .header("content-type", "application/x-protobuf")
        .body(logs)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // OTLP/JSON: {"arrayValue":{"values":[ ... ]}} 100,000 deep.
    let mut json = String::with_capacity(depth * 30);
    for _ in 0..depth {
        json.push_str(r#"{"arrayValue":{"values":["#);
    }
    for _ in 0..depth {
        json.push_str("]}}");
    }
    let body = format!(
        r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{{"traceId":"01010101010101010101010101010101","spanId":"0101010101010101","startTimeUnixNano":"1","attributes":[{{"key":"k","value":{json}}}]}}]}}]}}]}}"#
    );
    let (status, answer) = post(&server, "application/json", body.into_bytes()).await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer.contains("recursion limit"), "{answer}");

    // Still serving.
    let (status, answer) = post(&server, "application/x-protobuf", ordinary(50, 10).encode_to_vec()).await;
    assert!(status.is_success(), "{status}: {answer}");
    server.wait_count("SELECT count(*) AS n FROM spans WHERE service_name = 'hostile'", 10).await;
}

/// The server of the "never fits" tests: a 64 MiB budget and a 48 MiB body limit, so that a body can be within
/// the body limit and still need more than the whole budget (small caches, which hold their bound in the budget).
const NEVER_FITS: &str = "[memory]\nlimit_mb = 64\n[ingest]\nmax_body_bytes = 50331648\nmax_buffer_bytes = 33554432\n\
                          [storage]\nflush_max_bytes = 8388608\n[query]\nmetadata_cache_mb = 1\n[pricing]\ncache_bytes = 65536\n";

/// A POST head announcing `length` body bytes.
fn head(path: &str, content_type: &str, length: usize) -> Vec<u8> {
    format!("POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: {content_type}\r\ncontent-length: {length}\r\n\r\n")
        .into_bytes()
}

/// Asserts a permanent refusal over HTTP: 413 with a `google.rpc.Status` saying `says`, no `Retry-After`, the
/// connection closed, all before a byte of the body was sent.
fn assert_refused_for_good(what: &str, answer: &crate::support::RawAnswer, says: &[&str]) {
    assert_eq!(answer.status, 413, "{what}: {answer:?}");
    assert!(answer.header("retry-after").is_none(), "{what}: a permanent refusal has no Retry-After: {answer:?}");
    assert!(answer.closed, "{what}: the connection is closed (its body was not read): {answer:?}");
    let status = crate::support::rpc_status(answer.header("content-type"), &answer.body);
    assert_eq!(status.code, tonic::Code::ResourceExhausted as i32, "{what}: {status:?}");
    for s in says {
        assert!(status.message.contains(s), "{what}: {:?} does not say {s:?}", status.message);
    }
}

/// Issue #12 follow-up: a request that can never fit (its body past `ingest.max_body_bytes`, or needing more than
/// the whole `memory.limit_mb` to be received and decoded) used to get the retryable refusal (503 + Retry-After,
/// UNAVAILABLE + RetryInfo), so an OTLP exporter retried it for ever; a body past the limit got axum's text 413
/// after it was read. It is refused for good: 413 with a `google.rpc.Status` at once, before the body is read,
/// and the connection closed; RESOURCE_EXHAUSTED without RetryInfo over gRPC; counted on /metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_can_never_fit_the_budget_are_refused_for_good() {
    use crate::support::raw_http;
    use std::time::Duration;
    let server = Server::start_with(NEVER_FITS).await;
    let wait = Duration::from_secs(5);

    // Past the body limit: 413 from the head alone.
    let answer = raw_http(server.http, head("/v1/traces", "application/x-protobuf", 100 << 20), wait).await;
    assert_refused_for_good("past max_body_bytes", &answer, &["ingest.max_body_bytes", "split the batch"]);
    // Within it, but twice the body (frames and their copy) is past the budget.
    let answer = raw_http(server.http, head("/v1/logs", "application/json", 40 << 20), wait).await;
    assert_refused_for_good("twice past the budget", &answer, &["memory.limit_mb", "smaller batches"]);
    // Within both, but decoding it needs more than the budget (4x for protobuf traces, 7x for JSON).
    let answer = raw_http(server.http, head("/v1/traces", "application/x-protobuf", 20 << 20), wait).await;
    assert_refused_for_good("decoding past the budget", &answer, &["memory.limit_mb", "smaller batches"]);
    // The API's body limit is refused the same way, in its own JSON error format.
    let answer = raw_http(server.api, head("/api/v1/query", "application/json", 100 << 20), wait).await;
    assert_eq!(answer.status, 413, "{answer:?}");
    assert!(answer.closed, "{answer:?}");
    let error: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(error["kind"], "too_large", "{error}");

    // gRPC: a 40 MiB message is within max_body_bytes, but its frames and their copy need more than the budget.
    let mut grpc = TraceServiceClient::connect(server.grpc_url()).await.unwrap();
    let big = request(1, 1, &[kv("gen_ai.prompt", &"p".repeat(40 << 20))]);
    let err = grpc.export(big).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err}");
    assert!(err.details().is_empty(), "no RetryInfo (or any detail): OTLP clients do not retry it");
    assert!(err.message().contains("memory.limit_mb") && err.message().contains("smaller batches"), "{err}");
    // And one past the body limit, refused from its length prefix.
    let err = grpc.export(request(2, 1, &[kv("gen_ai.prompt", &"p".repeat(50 << 20))])).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err}");
    assert!(err.details().is_empty(), "{err:?}");

    // Counted, apart from the retryable refusals.
    assert_eq!(server.metric("tailscope_memory_refusals_permanent_total").await, 5.0);
    assert_eq!(server.metric("tailscope_memory_refusals_total").await, 0.0);
    // And the server serves ordinary exports, over both transports.
    let (status, body) = post(&server, "application/x-protobuf", ordinary(100, 100).encode_to_vec()).await;
    assert!(status.is_success(), "{status}: {body}");
    grpc.export(ordinary(1_000, 100)).await.unwrap();
    server.wait_count("SELECT count(*) AS n FROM spans WHERE service_name = 'hostile'", 200).await;
}

/// A chunked POST of `body` (one chunk per 16 KiB), ended properly.
fn chunked(path: &str, content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: {content_type}\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    for piece in body.chunks(16 * 1024) {
        out.extend(format!("{:x}\r\n", piece.len()).into_bytes());
        out.extend_from_slice(piece);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// OTLP/HTTP clients read a `google.rpc.Status` from every answer that is not a success, in the request's encoding
/// (JSON when the request has none OTLP knows). Every refusal of /v1/traces, /v1/metrics and /v1/logs is one: a
/// body past the limit without a length (it used to be axum's plain text), an unknown content type or encoding,
/// the memory ceiling (for now: 503 + Retry-After; for good: 413), a body cut at the body timeout (it used to be
/// plain text), a body that does not decode, a bad gzip stream, and a wrong method or path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// Long by design: every refusal path of the OTLP routes, as a table run against one server.
async fn every_refusal_on_the_otlp_routes_is_an_otlp_status() {
    use crate::support::{raw_http, rpc_status};
    use std::time::Duration;
    // A 17 MiB budget less the 1 MiB price cache, and 4 MiB bodies: two requests announcing 4 MiB (held twice:
    // frames and their copy) and sending nothing hold all of the rest.
    let server = Server::start_with(
        "[memory]\nlimit_mb = 17\n[ingest]\nmax_body_bytes = 4194304\nmax_buffer_bytes = 4194304\n\
         [storage]\nflush_max_bytes = 2097152\n[server]\nbody_timeout = \"3s\"\n[query]\nmetadata_cache_mb = 0\n\
         [pricing]\ncache_bytes = 1048576\n",
    )
    .await;
    let wait = Duration::from_secs(2);
    let client = reqwest::Client::new();
    let encodings = [("application/x-protobuf", "application/x-protobuf"), ("application/json", "application/json")];
    let mut checked = 0;
    for path in ["/v1/traces", "/v1/metrics", "/v1/logs"] {
        let url = format!("{}{path}", server.http_url());
        for (content_type, answered_as) in encodings {
            let check = |what: &str, status: u16, want: u16, ct: Option<&str>, body: &[u8], code: tonic::Code| {
                assert_eq!(status, want, "{path} {content_type} {what}: {}", String::from_utf8_lossy(body));
                let ct = ct.unwrap_or_else(|| panic!("{path} {content_type} {what}: no content type"));
                assert!(ct.starts_with(answered_as), "{path} {content_type} {what}: answered as {ct}");
                let s = rpc_status(Some(ct), body);
                assert_eq!(s.code, code as i32, "{path} {content_type} {what}: {s:?}");
                assert!(!s.message.is_empty(), "{path} {content_type} {what}: no message");
            };
            let send = |r: reqwest::RequestBuilder| async move {
                let r = r.send().await.unwrap();
                let status = r.status().as_u16();
                let ct = r.headers().get("content-type").map(|v| v.to_str().unwrap().to_string());
                (status, ct, r.bytes().await.unwrap().to_vec())
            };
            // Past the body limit, chunked: no length to refuse it by before reading.
            // Just past it, so that the server has read (nearly) all of it when it answers and closes.
            let a = raw_http(server.http, chunked(path, content_type, &vec![b' '; (4 << 20) + 20_000]), wait).await;
            check(
                "chunked past the limit",
                a.status,
                413,
                a.header("content-type"),
                &a.body,
                tonic::Code::ResourceExhausted,
            );
            // Does not decode.
            let (s, ct, b) = send(client.post(&url).header("content-type", content_type).body("\u{1}garbage")).await;
            check("malformed", s, 400, ct.as_deref(), &b, tonic::Code::InvalidArgument);
            // Not gzip, though it says so.
            let (s, ct, b) = send(
                client.post(&url).header("content-type", content_type).header("content-encoding", "gzip").body("nope"),
            )
            .await;
            check("bad gzip", s, 400, ct.as_deref(), &b, tonic::Code::InvalidArgument);
            // An encoding OTLP does not define.
            let (s, ct, b) =
                send(client.post(&url).header("content-type", content_type).header("content-encoding", "br").body("x"))
                    .await;
            check("unknown encoding", s, 415, ct.as_deref(), &b, tonic::Code::InvalidArgument);
            // Never fits: decoding 3 MiB of JSON needs more than the 16 MiB budget.
            if content_type == "application/json" {
                let a = raw_http(server.http, head(path, content_type, 3 << 20), wait).await;
                check("never fits", a.status, 413, a.header("content-type"), &a.body, tonic::Code::ResourceExhausted);
            }
            // A wrong method.
            let (s, ct, b) = send(client.get(&url).header("content-type", content_type)).await;
            check("GET", s, 405, ct.as_deref(), &b, tonic::Code::Unimplemented);
            checked += 1;
        }
        // A content type OTLP does not define: answered in JSON.
        let (s, ct, b) = {
            let r = client.post(&url).header("content-type", "text/plain").body("x").send().await.unwrap();
            let s = r.status().as_u16();
            let ct = r.headers().get("content-type").map(|v| v.to_str().unwrap().to_string());
            (s, ct, r.bytes().await.unwrap().to_vec())
        };
        assert_eq!(s, 415, "{path}");
        let status = rpc_status(ct.as_deref(), &b);
        assert!(status.message.contains("application/x-protobuf"), "{status:?}");
    }
    assert_eq!(checked, 6);
    // No such route.
    let r = client.post(format!("{}/v1/nothing", server.http_url())).body("x").send().await.unwrap();
    assert_eq!(r.status(), 404);
    let ct = r.headers().get("content-type").map(|v| v.to_str().unwrap().to_string());
    assert!(rpc_status(ct.as_deref(), &r.bytes().await.unwrap()).message.contains("/v1/traces"));

    // At the memory ceiling, for now: two requests announce 4 MB each and send nothing, holding 2 x 8 MB (their
    // frames and copy) of the 16 MiB until their body timeout; the next one of ~0.5 MB does not fit beside them
    // and is refused with 503 + Retry-After and a Status.
    let holders: Vec<_> = (0..2)
        .map(|_| {
            let head = head("/v1/traces", "application/x-protobuf", 4_000_000);
            tokio::spawn(raw_http(server.http, head, Duration::from_secs(5)))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (content_type, _) in encodings {
        let body = ordinary(1, 5_000).encode_to_vec();
        assert!(body.len() > 400_000, "{}", body.len());
        let r = client.post(format!("{}/v1/traces", server.http_url())).header("content-type", content_type).body(body);
        let r = r.send().await.unwrap();
        assert_eq!(r.status(), 503, "{content_type}");
        assert!(r.headers().get("retry-after").is_some());
        let ct = r.headers().get("content-type").map(|v| v.to_str().unwrap().to_string());
        assert!(ct.as_deref().is_some_and(|c| c.starts_with(content_type)), "{ct:?}");
        let status = rpc_status(ct.as_deref(), &r.bytes().await.unwrap());
        assert_eq!(status.code, tonic::Code::Unavailable as i32);
        assert!(status.message.contains("retry later"), "{status:?}");
    }
    // The holders' bodies never come: cut at the body timeout with 408 and a Status (it used to be plain text).
    for holder in holders {
        let a = holder.await.unwrap();
        assert_eq!(a.status, 408, "{a:?}");
        let status = rpc_status(a.header("content-type"), &a.body);
        assert_eq!(status.code, tonic::Code::DeadlineExceeded as i32, "{status:?}");
        assert!(status.message.contains("server.body_timeout"), "{status:?}");
        assert!(a.closed, "{a:?}");
    }
    // Still serving.
    let (status, body) = post(&server, "application/x-protobuf", ordinary(10, 10).encode_to_vec()).await;
    assert!(status.is_success(), "{status}: {body}");
}

/// Request smuggling (RFC 9112 6.1, 6.3): how a body is framed is decided from the head alone, and a head that
/// frames it two ways never leaves the connection open for a request hidden in the body. Duplicate conflicting
/// `Content-Length`s and malformed ones are refused 400 and the connection closed (by hyper). A request with both
/// `Content-Length` and `Transfer-Encoding: chunked` is read by the chunked framing alone (RFC 9112 6.1 allows
/// this in place of a 400) and the connection is closed after its answer, so the request smuggled after it is
/// never answered. Both OTLP/HTTP and the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framing_is_decided_from_the_head() {
    use crate::support::raw_http;
    use std::time::Duration;
    let server = Server::start().await;
    let wait = Duration::from_secs(3);
    let span = ordinary(7, 1).encode_to_vec();
    let smuggled = "GET /readyz HTTP/1.1\r\nhost: x\r\n\r\n";
    for (addr, path, content_type, body) in [
        (server.http, "/v1/traces", "application/x-protobuf", span.clone()),
        (server.api, "/api/v1/query", "application/sql", b"SELECT 1 AS one".to_vec()),
    ] {
        let n = body.len();
        let start = format!("POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: {content_type}\r\n");
        // Conflicting lengths, in two headers or one list; a length that is not digits.
        for lengths in [
            format!("content-length: {n}\r\ncontent-length: {}\r\n", n + 5),
            format!("content-length: {n}, {}\r\n", n + 5),
            format!("content-length: +{n}\r\n"),
        ] {
            let mut request = format!("{start}{lengths}\r\n").into_bytes();
            request.extend_from_slice(&body);
            request.extend_from_slice(smuggled.as_bytes());
            let a = raw_http(addr, request, wait).await;
            assert_eq!(a.status, 400, "{path} {lengths:?}: {a:?}");
            assert!(a.closed && a.rest.is_empty(), "{path} {lengths:?}: only one answer, then closed: {a:?}");
        }
        // Both framings, in either order: the chunked body is read, and nothing after it.
        for framing in [
            format!("content-length: {}\r\ntransfer-encoding: chunked\r\n", n + smuggled.len()),
            format!("transfer-encoding: chunked\r\ncontent-length: {}\r\n", n + smuggled.len()),
        ] {
            let mut request = format!("{start}{framing}\r\n{n:x}\r\n").into_bytes();
            request.extend_from_slice(&body);
            request.extend_from_slice(b"\r\n0\r\n\r\n");
            request.extend_from_slice(smuggled.as_bytes());
            let a = raw_http(addr, request, wait).await;
            assert!(a.status == 200 || a.status == 400, "{path} {framing:?}: {a:?}");
            assert!(a.closed, "{path} {framing:?}: the connection is closed after the answer: {a:?}");
            assert!(a.rest.is_empty(), "{path} {framing:?}: the smuggled request was answered: {a:?}");
        }
        // A transfer coding other than chunked last cannot frame a request.
        let mut request = format!("{start}transfer-encoding: gzip\r\n\r\n").into_bytes();
        request.extend_from_slice(&body);
        let a = raw_http(addr, request, wait).await;
        assert_eq!(a.status, 400, "{path}: {a:?}");
        assert!(a.closed, "{path}: {a:?}");
    }
}

/// A gRPC message frame (compressed flag set) holding an `ExportLogsServiceRequest` of one log record whose
/// body is a string of `n` bytes of 'a', gzip-compressed as it is written: a gzip bomb of ~n/1000 bytes, built
/// without holding the `n` bytes.
fn gzip_log_bomb(n: usize) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    // resource_logs (1) > scope_logs (2) > log_records (2) > body (5) > string_value (1).
    crate::support::write_nested_string(&[1, 2, 2, 5, 1], n, &mut gz);
    let compressed = gz.finish().unwrap();
    let mut frame = vec![1u8];
    frame.extend_from_slice(&(compressed.len() as u32).to_be_bytes());
    frame.extend_from_slice(&compressed);
    frame
}

/// Sends one gRPC request frame as it is (`grpc-encoding: gzip`) over tonic's HTTP/2 channel; returns the
/// answer's `grpc-status`, `grpc-message` and whether it carried details (`RetryInfo` rides in them).
async fn raw_grpc(channel: &tonic::transport::Channel, path: &str, frame: Vec<u8>) -> (i32, String, bool) {
    use tonic::codegen::Service;
    use tonic::codegen::http;
    let mut channel = channel.clone();
    let request = http::Request::builder()
        .method("POST")
        .uri(path)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-encoding", "gzip")
        .body(tonic::body::Body::new(axum::body::Body::from(frame)))
        .unwrap();
    std::future::poll_fn(|cx| channel.poll_ready(cx)).await.unwrap();
    let response = channel.call(request).await.unwrap();
    let (parts, mut body) = response.into_parts();
    let mut fields = parts.headers.clone();
    // Not trailers-only: the status is in the trailers.
    if !fields.contains_key("grpc-status") {
        use tonic::codegen::Body;
        while let Some(frame) = std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await {
            if let Ok(trailers) = frame.unwrap().into_trailers() {
                fields.extend(trailers);
            }
        }
    }
    let code = fields.get("grpc-status").and_then(|v| v.to_str().ok()?.parse().ok()).unwrap_or(-1);
    let message = fields.get("grpc-message").map(|v| v.to_str().unwrap_or("").to_string()).unwrap_or_default();
    (code, message, fields.contains_key("grpc-status-details-bin"))
}

/// OTLP/gRPC with `grpc-encoding: gzip` used to be inflated by tonic into a buffer of up to
/// `ingest.max_body_bytes` that no budget knew of: a few hundred kB of gzip bomb, a few at once, took RSS hundreds
/// of MiB past the ceiling. It is inflated within the budget now, as over HTTP: a bomb past the body limit is
/// refused for good (RESOURCE_EXHAUSTED, no RetryInfo), bombs at the ceiling for now (UNAVAILABLE), RSS stays within
/// the ceiling plus the overload test's margin, and gzip exports of the official client work on every service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_gzip_is_inflated_within_the_budget() {
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    use tonic::codec::CompressionEncoding;
    const LOGS: &str = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";
    const TRACES: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
    let server = Server::start_with(NEVER_FITS).await;
    let idle = crate::support::proc_mib(server.pid(), "VmRSS");
    let channel = tonic::transport::Channel::from_shared(server.grpc_url()).unwrap().connect().await.unwrap();

    // Past the 48 MiB body limit once inflated: refused for good, on the generated service and the raw one alike.
    let bomb = gzip_log_bomb(60 << 20);
    assert!(bomb.len() < 200_000, "{}", bomb.len());
    for path in [LOGS, TRACES] {
        let (code, message, details) = raw_grpc(&channel, path, bomb.clone()).await;
        assert_eq!(code, tonic::Code::ResourceExhausted as i32, "{path}: {message}");
        assert!(!details, "{path}: no RetryInfo: {message}");
        assert!(message.contains("max_body_bytes"), "{path}: {message}");
    }
    // Eight at once, within the body limit (40 MiB each) and far past the 64 MiB budget together: each is refused,
    // for good or for now, and memory stays bounded.
    let bomb = gzip_log_bomb(40 << 20);
    let bombs: Vec<_> = (0..8)
        .map(|_| {
            let (channel, bomb) = (channel.clone(), bomb.clone());
            tokio::spawn(async move { raw_grpc(&channel, LOGS, bomb).await })
        })
        .collect();
    for bomb in bombs {
        let (code, message, details) = bomb.await.unwrap();
        match tonic::Code::from_i32(code) {
            tonic::Code::ResourceExhausted => assert!(!details, "{message}"),
            tonic::Code::Unavailable => assert!(details, "UNAVAILABLE carries RetryInfo: {message}"),
            other => panic!("a 40 MiB bomb was answered {other:?}: {message}"),
        }
    }
    let peak = crate::support::proc_mib(server.pid(), "VmHWM");
    eprintln!("idle RSS {idle} MiB, peak {peak} MiB after the bombs");
    assert!(peak < idle + 64 + 96, "VmHWM {peak} MiB: past idle ({idle}) + the 64 MiB ceiling + a 96 MiB margin");

    // The official client's gzip exports still work, traces and logs.
    let mut traces = TraceServiceClient::new(channel.clone()).send_compressed(CompressionEncoding::Gzip);
    traces.export(ordinary(1, 1_000)).await.unwrap_or_else(|e| panic!("{e}; log:\n{}", server.log()));
    let mut logs = LogsServiceClient::new(channel.clone()).send_compressed(CompressionEncoding::Gzip);
    let record = LogRecord { time_unix_nano: now_ns(), severity_text: "INFO".into(), ..Default::default() };
    let request = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            scope_logs: vec![ScopeLogs { log_records: vec![record; 500], ..Default::default() }],
            ..Default::default()
        }],
    };
    logs.export(request).await.unwrap_or_else(|e| panic!("{e}; log:\n{}", server.log()));
    server.wait_count("SELECT count(*) AS n FROM spans WHERE service_name = 'hostile'", 1_000).await;
    server.wait_count("SELECT count(*) AS n FROM logs", 500).await;
}

/// `n` copies of `item` (one encoded field) after `head`, wrapped as field `tag`.
fn repeated_field(tag: u32, head: &[u8], item: &[u8], n: usize) -> Vec<u8> {
    let mut inner = Vec::with_capacity(head.len() + item.len() * n);
    inner.extend_from_slice(head);
    for _ in 0..n {
        inner.extend_from_slice(item);
    }
    field(tag, &inner)
}

/// Metrics and logs are decoded by prost into owned structs, where an empty attribute or item costs tens of bytes
/// against its 2 on the wire: a 40 MB export of 20 M empty attributes decoded to ~2.5 GB, past any ceiling. The
/// body is walked first and what decoding it will hold is reserved: such a request is refused for good (413 /
/// RESOURCE_EXHAUSTED, it can never fit) before prost runs, one of 200,000 empty log records is stored with RSS in
/// proportion, and ordinary exports work as before, over both transports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// Long by design: a table of hostile bodies, each sent to the same server with its refusal and memory checked.
async fn metrics_and_logs_are_bounded_before_prost_decodes_them() {
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    use opentelemetry_proto::tonic::metrics::v1::{Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics};
    use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};
    let server = Server::start().await;
    let pid = server.pid();
    let idle = crate::support::proc_mib(pid, "VmRSS");

    // One data point of 20 M empty attributes (NumberDataPoint.attributes = 7): 40 MB.
    let mut time = Vec::new();
    prost::encoding::encode_key(3, prost::encoding::WireType::SixtyFourBit, &mut time);
    time.extend_from_slice(&now_ns().to_le_bytes());
    let point = repeated_field(1, &time, &field(7, &[]), 20_000_000);
    // Gauge (Metric.gauge = 5) > ScopeMetrics.metrics (2) > ResourceMetrics.scope_metrics (2) > request (1).
    let body = field(1, &field(2, &field(2, &field(5, &point))));
    assert!(body.len() > 40_000_000);
    let r = reqwest::Client::new()
        .post(format!("{}/v1/metrics", server.http_url()))
        .header("content-type", "application/x-protobuf")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413, "{}", server.log());
    let ct = r.headers().get("content-type").map(|v| v.to_str().unwrap().to_string());
    let status = crate::support::rpc_status(ct.as_deref(), &r.bytes().await.unwrap());
    assert!(status.message.contains("memory.limit_mb") && status.message.contains("smaller batches"), "{status:?}");
    assert!(status.message.contains("decoding a metrics export"), "{status:?}");

    // 20 M empty log records (ScopeLogs.log_records = 2), 40 MB, over gRPC.
    #[derive(Clone, PartialEq, prost::Message)]
    struct Raw {
        #[prost(bytes = "vec", tag = "1")]
        resource_logs: Vec<u8>,
    }
    let scope_logs = repeated_field(2, &[], &field(2, &[]), 20_000_000);
    let channel = tonic::transport::Channel::from_shared(server.grpc_url()).unwrap().connect().await.unwrap();
    let mut raw = tonic::client::Grpc::new(channel.clone());
    raw.ready().await.unwrap();
    let err = raw
        .unary::<_, opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse, _>(
            tonic::Request::new(Raw { resource_logs: scope_logs }),
            tonic::codegen::http::uri::PathAndQuery::from_static(
                "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
            ),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err}");
    assert!(err.details().is_empty(), "{err:?}");
    let peak = crate::support::proc_mib(pid, "VmHWM");
    eprintln!("idle {idle} MiB, peak {peak} MiB after the 40 MB metrics and logs bombs");
    // Each body is held twice while received (80 MB): nothing near the ~2.5 GB prost would have decoded.
    assert!(peak < idle + 256, "VmHWM {peak} MiB, idle {idle} MiB");

    // 200,000 empty log records (400 kB): stored, each with the time it was received.
    // ResourceLogs.scope_logs (2) holding one ScopeLogs of 200,000 log_records (2).
    let resource_logs = repeated_field(2, &[], &field(2, &[]), 200_000);
    let r = reqwest::Client::new()
        .post(format!("{}/v1/logs", server.http_url()))
        .header("content-type", "application/x-protobuf")
        .body(field(1, &resource_logs))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    server.wait_count("SELECT count(*) AS n FROM logs", 200_000).await;
    let peak = crate::support::proc_mib(pid, "VmHWM");
    eprintln!("peak {peak} MiB after 200,000 empty log records");
    assert!(peak < idle + 320 + 96, "VmHWM {peak} MiB: past idle ({idle}) + the ceiling + a 96 MiB margin");

    // Ordinary exports, both transports.
    let kvs = vec![kv("gen_ai.request.model", "gpt-4o"), kv("gen_ai.provider.name", "openai")];
    let metrics = ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(opentelemetry_proto::tonic::resource::v1::Resource {
                attributes: vec![kv("service.name", "hostile")],
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![Metric {
                    name: "gen_ai.client.token.usage".into(),
                    data: Some(metric::Data::Gauge(Gauge {
                        data_points: (0..100)
                            .map(|i| NumberDataPoint {
                                time_unix_nano: now_ns(),
                                value: Some(number_data_point::Value::AsInt(i)),
                                attributes: kvs.clone(),
                                ..Default::default()
                            })
                            .collect(),
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let r = reqwest::Client::new()
        .post(format!("{}/v1/metrics", server.http_url()))
        .header("content-type", "application/x-protobuf")
        .body(metrics.encode_to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    MetricsServiceClient::new(channel.clone()).export(metrics).await.unwrap();
    let records = (0..100)
        .map(|i| LogRecord {
            time_unix_nano: now_ns(),
            severity_text: format!("INFO {i}"),
            attributes: kvs.clone(),
            ..Default::default()
        })
        .collect();
    let logs = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            scope_logs: vec![ScopeLogs { log_records: records, ..Default::default() }],
            ..Default::default()
        }],
    };
    LogsServiceClient::new(channel).export(logs).await.unwrap();
    server.wait_count("SELECT count(*) AS n FROM metrics WHERE metric_name = 'gen_ai.client.token.usage'", 200).await;
    server.wait_count("SELECT count(*) AS n FROM logs", 200_100).await;
}
