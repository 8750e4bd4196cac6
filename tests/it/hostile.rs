//! Hostile OTLP input (issue #12): requests that are valid but huge in one dimension, or nested without end, must
//! get an answer and leave the server serving, over both transports.

use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;

use crate::support::Server;

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64
}

fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(any_value::Value::StringValue(value.into())) }),
        ..Default::default()
    }
}

/// `n` spans with ids from `first`, each with `attributes`.
fn request(first: u64, n: u64, attributes: &[KeyValue]) -> ExportTraceServiceRequest {
    let t = now_ns();
    let spans = (first..first + n)
        .map(|id| Span {
            trace_id: [&[0xcd; 8][..], &id.to_be_bytes()].concat(),
            span_id: (id + 1).to_be_bytes().to_vec(),
            name: "chat".into(),
            start_time_unix_nano: t,
            end_time_unix_nano: t + 1_000_000,
            attributes: attributes.to_vec(),
            ..Default::default()
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(opentelemetry_proto::tonic::resource::v1::Resource {
                attributes: vec![kv("service.name", "hostile")],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans { spans, ..Default::default() }],
            ..Default::default()
        }],
    }
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
