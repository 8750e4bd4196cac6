//! The collector end to end: the official SDK over gRPC and HTTP, hand-built OTLP/JSON and gzip bodies, bad
//! input, partial success, crash recovery, backpressure and a full disk. Rows are read back from the Parquet
//! files with plain DataFusion, independent of tailscope's query layer.

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use datafusion::arrow::datatypes::DataType;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use opentelemetry::KeyValue;
use opentelemetry::trace::{
    Link, Span as _, SpanContext, SpanKind, Status, TraceContextExt, TraceFlags, TraceState, Tracer, TracerProvider,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue as PKeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource as PResource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span as PSpan};
use prost::Message;

use crate::support::{
    CRASH_BATCH, Server, Transport, kill_9_under_load, logger_provider, meter_provider, tracer_provider,
};

/// Every row of `table` in the Parquet files under `data_dir`, as JSON objects, ordered by `order_by`.
pub async fn parquet_rows(data_dir: &std::path::Path, table: &str, order_by: &str) -> Vec<serde_json::Value> {
    let dir = data_dir.join(table);
    if !dir.exists() {
        return Vec::new();
    }
    let ctx = SessionContext::new();
    let options = ParquetReadOptions::default().table_partition_cols(vec![
        ("project".into(), DataType::Utf8),
        ("date".into(), DataType::Utf8),
        ("hour".into(), DataType::Utf8),
    ]);
    ctx.register_parquet(table, dir.to_str().unwrap(), options).await.expect("register parquet");
    let df = ctx.sql(&format!("SELECT * FROM {table} ORDER BY {order_by}")).await.expect("sql");
    let schema = df.schema().inner().clone();
    let batches = df.collect().await.expect("collect");
    let output = query::QueryOutput { schema, batches };
    let bytes = query::format::to_bytes(query::format::Format::Json, &output).expect("to json");
    serde_json::from_slice(&bytes).expect("json rows")
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64
}

fn kv(key: &str, value: any_value::Value) -> PKeyValue {
    PKeyValue { key: key.into(), value: Some(AnyValue { value: Some(value) }), ..Default::default() }
}

fn s(v: &str) -> any_value::Value {
    any_value::Value::StringValue(v.into())
}

/// A request of `n` valid spans from `service`, with span ids starting at `first_id`.
fn request(service: &str, first_id: u64, n: u64) -> ExportTraceServiceRequest {
    let t = now_ns();
    let spans = (0..n)
        .map(|i| {
            let id = first_id + i;
            PSpan {
                trace_id: [&[0xab; 8][..], &id.to_be_bytes()].concat(),
                span_id: (id + 1).to_be_bytes().to_vec(),
                name: "chat".into(),
                kind: 3,
                start_time_unix_nano: t,
                end_time_unix_nano: t + 1_000_000 * (1 + id % 100),
                attributes: vec![
                    kv("gen_ai.provider.name", s("openai")),
                    kv("gen_ai.operation.name", s("chat")),
                    kv("gen_ai.request.model", s("gpt-4o")),
                    kv("gen_ai.usage.input_tokens", any_value::Value::IntValue(100)),
                    kv("gen_ai.usage.output_tokens", any_value::Value::IntValue(20)),
                ],
                ..Default::default()
            }
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(PResource {
                attributes: vec![kv("service.name", s(service)), kv("cloud.provider", s("aws"))],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans { spans, ..Default::default() }],
            ..Default::default()
        }],
    }
}

async fn grpc_client(server: &Server) -> TraceServiceClient<tonic::transport::Channel> {
    TraceServiceClient::connect(server.grpc_url()).await.expect("connect gRPC")
}

fn by_name<'a>(rows: &'a [serde_json::Value], name: &str) -> &'a serde_json::Value {
    rows.iter().find(|r| r["name"] == name).unwrap_or_else(|| panic!("no span named {name} in {rows:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// Long by design: one span per column family, sent by the SDK and checked column by column against what was sent.
async fn sdk_spans_over_grpc_and_http_fill_every_column() {
    let mut server = Server::start().await;
    let resource = |service: &str| {
        vec![
            KeyValue::new("service.name", service.to_string()),
            KeyValue::new("service.version", "1.2.3"),
            KeyValue::new("service.namespace", "agents"),
            KeyValue::new("deployment.environment.name", "prod"),
            KeyValue::new("cloud.provider", "aws"),
            KeyValue::new("cloud.region", "us-east-1"),
            KeyValue::new("cloud.availability_zone", "us-east-1a"),
            KeyValue::new("team", "search"),
        ]
    };
    let t0 = SystemTime::now() - Duration::from_secs(5);

    // Current GenAI names, over gRPC.
    let grpc = tracer_provider(&server, Transport::Grpc, resource("planner-svc"));
    let tracer = grpc.tracer("it-new-names");
    let linked = SpanContext::new(
        opentelemetry::trace::TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap(),
        opentelemetry::trace::SpanId::from_hex("b7ad6b7169203331").unwrap(),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    let mut root = tracer
        .span_builder("chat gpt-4o")
        .with_kind(SpanKind::Client)
        .with_start_time(t0)
        .with_links(vec![Link::with_context(linked)])
        .with_attributes(vec![
            KeyValue::new("gen_ai.provider.name", "openai"),
            KeyValue::new("gen_ai.operation.name", "chat"),
            KeyValue::new("gen_ai.request.model", "gpt-4o"),
            KeyValue::new("gen_ai.response.model", "gpt-4o-2024-08-06"),
            KeyValue::new("gen_ai.usage.input_tokens", 1200i64),
            KeyValue::new("gen_ai.usage.output_tokens", 300i64),
            KeyValue::new("gen_ai.usage.cache_read.input_tokens", 200i64),
            KeyValue::new("gen_ai.usage.cache_creation.input_tokens", 100i64),
            KeyValue::new("gen_ai.usage.reasoning.output_tokens", 50i64),
            KeyValue::new("gen_ai.conversation.id", "sess-new"),
            KeyValue::new("gen_ai.agent.name", "planner"),
            KeyValue::new("gen_ai.agent.id", "agent-7"),
            KeyValue::new("gen_ai.response.time_to_first_chunk", 0.25),
            KeyValue::new("error.type", "timeout"),
            KeyValue::new("cloud.provider", "azure"),
            KeyValue::new("cloud.region", "westeurope"),
            KeyValue::new("hedge.id", "h-1"),
            KeyValue::new("hedge.winner", true),
            KeyValue::new("http.request.body.size", 2048i64),
            KeyValue::new("http.response.body.size", 8192i64),
            KeyValue::new("custom.flag", "x"),
        ])
        .start(&tracer);
    root.add_event("retry", vec![KeyValue::new("attempt", 2i64)]);
    root.set_status(Status::error("upstream timed out"));
    let parent_cx = root.span_context().clone();
    let mut tool = tracer
        .span_builder("execute_tool search")
        .with_kind(SpanKind::Internal)
        .with_start_time(t0 + Duration::from_millis(10))
        .with_attributes(vec![
            KeyValue::new("gen_ai.operation.name", "execute_tool"),
            KeyValue::new("gen_ai.tool.name", "web_search"),
            KeyValue::new("session.id", "ignored-when-conversation-id-set"),
            KeyValue::new("gen_ai.conversation.id", "sess-new"),
        ])
        .start_with_context(&tracer, &opentelemetry::Context::new().with_remote_span_context(parent_cx));
    tool.end_with_timestamp(t0 + Duration::from_millis(40));
    root.end_with_timestamp(t0 + Duration::from_millis(1500));
    grpc.force_flush().expect("flush gRPC exporter");

    // Deprecated names, over HTTP/protobuf.
    let http = tracer_provider(&server, Transport::HttpProtobuf, resource("legacy-svc"));
    let tracer = http.tracer("it-old-names");
    let mut old = tracer
        .span_builder("chat claude")
        .with_kind(SpanKind::Client)
        .with_start_time(t0)
        .with_attributes(vec![
            KeyValue::new("gen_ai.system", "anthropic"),
            KeyValue::new("gen_ai.operation.name", "chat"),
            KeyValue::new("gen_ai.request.model", "claude-3-5-sonnet"),
            KeyValue::new("gen_ai.usage.prompt_tokens", 500i64),
            KeyValue::new("gen_ai.usage.completion_tokens", 70i64),
            KeyValue::new("gen_ai.usage.cache_read_input_tokens", 10i64),
            KeyValue::new("gen_ai.usage.cache_creation_input_tokens", 5i64),
            KeyValue::new("session.id", "sess-old"),
            KeyValue::new("deployment.environment", "ignored-on-span"),
        ])
        .start(&tracer);
    old.set_status(Status::Ok);
    old.end_with_timestamp(t0 + Duration::from_millis(700));
    http.force_flush().expect("flush HTTP exporter");
    let _ = grpc.shutdown();
    let _ = http.shutdown();

    // Acknowledged means queryable: visible before any flush.
    server.wait_count("SELECT count(*) AS n FROM spans", 3).await;
    assert!(server.terminate().success(), "clean exit on SIGTERM; log:\n{}", server.log());

    let rows = parquet_rows(&server.data_dir, "spans", "name").await;
    assert_eq!(rows.len(), 3, "{rows:#?}");
    let new = by_name(&rows, "chat gpt-4o");
    let tool = by_name(&rows, "execute_tool search");
    let old = by_name(&rows, "chat claude");

    // Identity and timing.
    assert_eq!(new["trace_id"].as_str().unwrap().len(), 32);
    assert!(new["trace_id"].as_str().unwrap().chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    assert_eq!(new["span_id"].as_str().unwrap().len(), 16);
    assert!(new["parent_span_id"].is_null());
    assert_eq!(tool["parent_span_id"], new["span_id"]);
    assert_eq!(tool["trace_id"], new["trace_id"]);
    assert_eq!(new["kind"], "client");
    assert_eq!(tool["kind"], "internal");
    assert_eq!(new["duration_ns"], 1_500_000_000i64);
    assert_eq!(tool["duration_ns"], 30_000_000i64);
    assert!(new["start_time"].as_str().is_some() && new["end_time"].as_str().is_some(), "{new}");
    assert_eq!(new["status_code"], "error");
    assert_eq!(new["status_message"], "upstream timed out");
    assert_eq!(old["status_code"], "ok");
    assert_eq!(tool["status_code"], "unset");

    // Resource columns.
    assert_eq!(new["service_name"], "planner-svc");
    assert_eq!(new["service_version"], "1.2.3");
    assert_eq!(new["service_namespace"], "agents");
    assert_eq!(new["deployment_environment"], "prod");
    assert_eq!(new["cloud_provider"], "aws");
    assert_eq!(new["cloud_region"], "us-east-1");
    assert_eq!(new["cloud_availability_zone"], "us-east-1a");
    assert_eq!(new["scope_name"], "it-new-names");
    assert_eq!(old["service_name"], "legacy-svc");

    // GenAI columns, current names.
    assert_eq!(new["peer_cloud_provider"], "azure");
    assert_eq!(new["peer_cloud_region"], "westeurope");
    assert_eq!(new["gen_ai_provider"], "openai");
    assert_eq!(new["gen_ai_operation"], "chat");
    assert_eq!(new["request_model"], "gpt-4o");
    assert_eq!(new["response_model"], "gpt-4o-2024-08-06");
    assert_eq!(new["input_tokens"], 1200);
    assert_eq!(new["output_tokens"], 300);
    assert_eq!(new["cache_read_tokens"], 200);
    assert_eq!(new["cache_creation_tokens"], 100);
    assert_eq!(new["reasoning_tokens"], 50);
    assert_eq!(new["session_id"], "sess-new");
    assert_eq!(new["agent_name"], "planner");
    assert_eq!(new["agent_id"], "agent-7");
    assert_eq!(tool["tool_name"], "web_search");
    assert_eq!(tool["session_id"], "sess-new");
    assert_eq!(new["error_type"], "timeout");
    assert_eq!(new["time_to_first_token_ms"], 250.0);
    assert_eq!(new["hedge_id"], "h-1");
    assert_eq!(new["hedge_winner"], true);
    assert_eq!(new["egress_bytes"], 2048 + 8192);
    assert!(new["token_cost_usd"].as_f64().is_some_and(|c| c > 0.0), "gpt-4o is priced: {new}");
    assert!(new["price_source"].as_str().is_some_and(|p| p != "unknown"), "{new}");

    // GenAI columns, deprecated names.
    assert_eq!(old["gen_ai_provider"], "anthropic");
    assert_eq!(old["input_tokens"], 500);
    assert_eq!(old["output_tokens"], 70);
    assert_eq!(old["cache_read_tokens"], 10);
    assert_eq!(old["cache_creation_tokens"], 5);
    assert_eq!(old["session_id"], "sess-old");
    assert!(old["reasoning_tokens"].is_null());

    // What has a column leaves the maps; the rest stays queryable.
    let attrs = new["attributes"].to_string();
    assert!(attrs.contains("custom.flag") && attrs.contains("http.request.body.size"), "{attrs}");
    assert!(!attrs.contains("gen_ai.request.model") && !attrs.contains("hedge.id"), "{attrs}");
    let res = new["resource_attributes"].to_string();
    assert!(res.contains("team") && !res.contains("service.name"), "{res}");
    assert!(new["events"].as_str().unwrap().contains("\"retry\""), "{new}");
    assert!(new["links"].as_str().unwrap().contains("0af7651916cd43dd8448eb211c80319c"), "{new}");
    assert!(new["date"].as_str().unwrap().len() == 10 && new["hour"].as_str().unwrap().len() == 2);

    // The hive layout any engine can read (beside the Delta log), and no temporary files left behind.
    let files: Vec<_> = walk(&server.data_dir.join("spans"))
        .into_iter()
        .filter(|f| !f.to_string_lossy().contains("/_delta_log/"))
        .collect();
    assert!(!files.is_empty());
    for f in &files {
        let rel = f.strip_prefix(&server.data_dir).unwrap().to_str().unwrap().to_string();
        assert!(
            rel.starts_with("spans/project=default/date=") && rel.contains("/hour=") && rel.ends_with(".parquet"),
            "{rel}"
        );
    }
}

/// Every file under `dir`.
pub fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// The OTLP/JSON example of the specification, with the spec's looser forms: a string `intValue`, integer
/// enums, an unknown field and an empty `AnyValue`.
fn spec_json(trace_id: &str, name: &str) -> String {
    let t = now_ns();
    format!(
        r#"{{
  "resourceSpans": [{{
    "resource": {{ "attributes": [
      {{ "key": "service.name", "value": {{ "stringValue": "json-svc" }} }},
      {{ "key": "cloud.provider", "value": {{ "stringValue": "gcp" }} }},
      {{ "key": "cloud.region", "value": {{ "stringValue": "europe-west4" }} }}
    ] }},
    "scopeSpans": [{{
      "scope": {{ "name": "my.library", "version": "1.0.0", "attributes": [] }},
      "spans": [{{
        "traceId": "{trace_id}",
        "spanId": "eee19b7ec3c1b174",
        "parentSpanId": "eee19b7ec3c1b173",
        "name": "{name}",
        "startTimeUnixNano": "{t}",
        "endTimeUnixNano": {end},
        "kind": 3,
        "someFutureField": {{ "ignored": true }},
        "attributes": [
          {{ "key": "gen_ai.system", "value": {{ "stringValue": "gcp.vertex_ai" }} }},
          {{ "key": "gen_ai.usage.input_tokens", "value": {{ "intValue": "42" }} }},
          {{ "key": "gen_ai.usage.output_tokens", "value": {{ "intValue": 7 }} }},
          {{ "key": "empty.value", "value": {{}} }},
          {{ "key": "my.array", "value": {{ "arrayValue": {{ "values": [{{ "stringValue": "a" }}, {{ "intValue": "1" }}] }} }} }}
        ],
        "status": {{ "code": 2, "message": "boom" }}
      }}]
    }}]
  }}]
}}"#,
        end = t + 5_000_000
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_json_protobuf_and_gzip_bodies() {
    let server = Server::start().await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/traces", server.http_url());

    // Plain JSON: the answer is JSON too.
    let r = client
        .post(&url)
        .header("content-type", "application/json")
        .body(spec_json("5b8efff798038103d269b633813fc60c", "json-plain"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("application/json"));
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body.get("partialSuccess").is_none_or(|p| p.get("rejectedSpans").is_none()), "{body}");

    // Gzip JSON.
    let r = client
        .post(&url)
        .header("content-type", "application/json; charset=utf-8")
        .header("content-encoding", "gzip")
        .body(gzip(spec_json("5b8efff798038103d269b633813fc60d", "json-gzip").as_bytes()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());

    // Gzip protobuf: the answer is protobuf.
    let req = request("proto-gzip-svc", 10, 3);
    let r = client
        .post(&url)
        .header("content-type", "application/x-protobuf")
        .header("content-encoding", "gzip")
        .body(gzip(&req.encode_to_vec()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/x-protobuf");
    let resp = ExportTraceServiceResponse::decode(r.bytes().await.unwrap()).unwrap();
    assert!(resp.partial_success.is_none());

    let rows = server.sql("SELECT name, service_name, cloud_provider, gen_ai_provider, input_tokens, output_tokens, kind, status_code, parent_span_id, attributes FROM spans ORDER BY name").await;
    assert_eq!(rows.len(), 5, "{rows:#?}");
    let plain = by_name(&rows, "json-plain");
    assert_eq!(plain["service_name"], "json-svc");
    assert_eq!(plain["cloud_provider"], "gcp");
    assert_eq!(plain["gen_ai_provider"], "gcp.vertex_ai");
    assert_eq!(plain["input_tokens"], 42);
    assert_eq!(plain["output_tokens"], 7);
    assert_eq!(plain["kind"], "client");
    assert_eq!(plain["status_code"], "error");
    assert_eq!(plain["parent_span_id"], "eee19b7ec3c1b173");
    assert!(plain["attributes"].to_string().contains("my.array"), "{plain}");
    by_name(&rows, "json-gzip");
    assert_eq!(rows.iter().filter(|r| r["service_name"] == "proto-gzip-svc").count(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// Long by design: a table of bad inputs against one server, which must still serve after each.
async fn bad_input_gets_clear_errors_and_the_server_keeps_serving() {
    let server = Server::start_with("[ingest]\nmax_body_bytes = 65536\n").await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/traces", server.http_url());
    let post = |ct: &'static str, enc: Option<&'static str>, body: Vec<u8>| {
        let mut r = client.post(&url).header("content-type", ct).body(body);
        if let Some(e) = enc {
            r = r.header("content-encoding", e);
        }
        r.send()
    };

    let r = post("application/x-protobuf", None, vec![0xff, 0xff, 0xff, 0x0f]).await.unwrap();
    assert_eq!(r.status(), 400);
    let status = r.bytes().await.unwrap();
    // google.rpc.Status in protobuf: field 2 is the message.
    let text = String::from_utf8_lossy(&status);
    assert!(text.contains("malformed protobuf"), "{text}");

    let r = post("application/json", None, b"{\"resourceSpans\": [ {".to_vec()).await.unwrap();
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body["message"].as_str().unwrap().contains("malformed JSON"), "{body}");

    let r = post("text/plain", None, b"hello".to_vec()).await.unwrap();
    assert_eq!(r.status(), 415);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body["message"].as_str().unwrap().contains("application/x-protobuf"), "{body}");

    let r = post("application/x-protobuf", Some("br"), vec![1, 2, 3]).await.unwrap();
    assert_eq!(r.status(), 415);

    let r = post("application/x-protobuf", Some("gzip"), b"not gzip at all".to_vec()).await.unwrap();
    assert_eq!(r.status(), 400);

    // Over the limit as sent, and over it only after decompression (a small gzip bomb).
    let big = request("big", 0, 400).encode_to_vec();
    assert!(big.len() > 65536);
    let r = post("application/x-protobuf", None, big.clone()).await.unwrap();
    assert_eq!(r.status(), 413);
    let bomb = gzip(&vec![0u8; 1 << 20]);
    assert!(bomb.len() < 65536);
    let r = post("application/x-protobuf", Some("gzip"), bomb).await.unwrap();
    assert_eq!(r.status(), 413);
    let body = String::from_utf8_lossy(&r.bytes().await.unwrap()).to_string();
    assert!(body.contains("max_body_bytes"), "{body}");

    // gRPC: too large is RESOURCE_EXHAUSTED.
    let mut grpc = grpc_client(&server).await;
    let err = grpc.export(request("big", 0, 400)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err}");

    // gRPC: a body that is not an ExportTraceServiceRequest is INVALID_ARGUMENT, naming where it broke.
    #[derive(Clone, PartialEq, prost::Message)]
    struct NotARequest {
        #[prost(bytes = "vec", tag = "1")]
        resource_spans: Vec<u8>,
    }
    let channel = tonic::transport::Channel::from_shared(server.grpc_url()).unwrap().connect().await.unwrap();
    let mut raw = tonic::client::Grpc::new(channel);
    raw.ready().await.unwrap();
    let export = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
    );
    let not_a_request = NotARequest { resource_spans: vec![0x0a, 0xff] };
    let err = raw
        .unary::<_, opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse, _>(
            tonic::Request::new(not_a_request),
            export,
            tonic_prost::ProstCodec::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    assert!(err.message().contains("malformed protobuf") && err.message().contains("ResourceSpans"), "{err}");

    // Still serving, on both transports.
    let ok = grpc.export(request("after-bad-input", 1000, 5)).await.unwrap();
    assert!(ok.into_inner().partial_success.is_none());
    let r = post("application/x-protobuf", None, request("after-bad-input", 2000, 5).encode_to_vec()).await.unwrap();
    assert_eq!(r.status(), 200);
    server.wait_count("SELECT count(*) AS n FROM spans WHERE service_name = 'after-bad-input'", 10).await;
    assert!(server.metric("tailscope_requests_rejected_total{signal=\"spans\",reason=\"malformed\"}").await >= 4.0);
    assert!(
        server.metric("tailscope_requests_rejected_total{signal=\"spans\",reason=\"unsupported_media_type\"}").await
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_spans_are_rejected_one_by_one() {
    let server = Server::start().await;
    let mut req = request("partial", 0, 3);
    let spans = &mut req.resource_spans[0].scope_spans[0].spans;
    spans[1].trace_id = vec![0; 16];
    spans[2].span_id = vec![1, 2, 3];
    let mut grpc = grpc_client(&server).await;
    let resp = grpc.export(req.clone()).await.unwrap().into_inner();
    let partial = resp.partial_success.expect("partial success");
    assert_eq!(partial.rejected_spans, 2);
    assert!(partial.error_message.contains("trace_id is all zeros"), "{}", partial.error_message);
    assert!(partial.error_message.contains("span_id must be 8 bytes"), "{}", partial.error_message);

    // The same over HTTP/JSON: the message comes back in JSON.
    let json = spec_json("00000000000000000000000000000000", "zero-trace");
    let r = reqwest::Client::new()
        .post(format!("{}/v1/traces", server.http_url()))
        .header("content-type", "application/json")
        .body(json)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    // int64 may be a JSON number or string in OTLP/JSON; clients accept both.
    let rejected = &body["partialSuccess"]["rejectedSpans"];
    assert!(rejected == 1 || rejected == "1", "{body}");
    server.wait_count("SELECT count(*) AS n FROM spans", 1).await;
    assert_eq!(server.metric("tailscope_items_rejected_total{signal=\"spans\",reason=\"invalid\"}").await, 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_spans_survive_kill_9_without_duplicates() {
    // Small, frequent flushes so that kills land before, during and after flushes.
    let mut server = Server::start_with("[storage]\nflush_interval = \"150ms\"\nflush_max_bytes = 200000\n").await;
    let pause = |round| Duration::from_millis(400 + 170 * round);
    let acked = kill_9_under_load(&mut server, 3, 3, pause, |_, first| request("crash", first, CRASH_BATCH)).await;
    let rows = server.sql("SELECT count(*) AS n, count(DISTINCT span_id) AS d FROM spans").await;
    let (n, d) = (rows[0]["n"].as_i64().unwrap(), rows[0]["d"].as_i64().unwrap());
    assert_eq!(n, d, "a span was stored twice");
    // Unacknowledged requests in flight at the kill may or may not have been stored; acknowledged ones must be.
    assert!(n >= acked, "lost acknowledged spans: stored {n}, acknowledged {acked}");
    // Each of the 3 kills can catch each of the 3 senders with one request of 50 spans in flight.
    assert!(n <= acked + 3 * 3 * 50, "stored {n} but only {acked} acknowledged plus 9 requests in flight");
    assert!(server.terminate().success());
    let files = parquet_rows(&server.data_dir, "spans", "span_id").await;
    assert_eq!(files.len() as i64, n, "after a clean shutdown every row is in Parquet");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_write_path_applies_backpressure_then_recovers() {
    let server = Server::start_with(
        "[ingest]\nmax_buffer_bytes = 400000\nretry_after = \"2s\"\n[storage]\nflush_max_bytes = 100000\n",
    )
    .await;
    // Flushes fail while a file stands where today's (and, past midnight, tomorrow's) partition directory should be.
    let blockers: Vec<_> = [chrono::Utc::now(), chrono::Utc::now() + chrono::Duration::hours(1)]
        .iter()
        .map(|t| server.data_dir.join("spans/project=default").join(t.format("date=%Y-%m-%d").to_string()))
        .collect();
    std::fs::create_dir_all(server.data_dir.join("spans/project=default")).unwrap();
    for b in &blockers {
        std::fs::write(b, b"blocker").unwrap();
    }
    let client = reqwest::Client::new();
    let url = format!("{}/v1/traces", server.http_url());
    let mut accepted = 0;
    let mut refused = None;
    for i in 0..200u64 {
        let r = client
            .post(&url)
            .header("content-type", "application/x-protobuf")
            .body(request("bp", i * 100, 100).encode_to_vec())
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            accepted += 100;
        } else {
            refused = Some(r);
            break;
        }
    }
    let r = refused.expect("backpressure never applied");
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "2");
    let mut grpc = grpc_client(&server).await;
    let err = grpc.export(request("bp-grpc", 1 << 40, 10)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);
    assert!(err.message().contains("backpressure"), "{}", err.message());
    assert_eq!(reqwest::get(format!("{}/healthz", server.api_url())).await.unwrap().status(), 200);
    assert_eq!(reqwest::get(format!("{}/readyz", server.api_url())).await.unwrap().status(), 503);
    assert!(server.metric("tailscope_backpressure_rejections_total").await >= 2.0);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while server.metric("tailscope_flush_errors_total").await < 1.0 {
        assert!(std::time::Instant::now() < deadline, "no failed flush was counted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The disk comes back: flushes succeed, ingest resumes, nothing acknowledged was lost.
    for b in &blockers {
        let _ = std::fs::remove_file(b);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let ok = grpc.export(request("bp", 1 << 41, 10)).await.is_ok();
        if ok {
            accepted += 10;
            break;
        }
        assert!(std::time::Instant::now() < deadline, "ingest did not resume");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server.wait_count("SELECT count(*) AS n FROM spans WHERE service_name = 'bp'", accepted).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_retryably_and_loses_nothing() {
    // A real full file system: a 3 MiB tmpfs as the data dir (needs root, as CI has).
    let mount = tempfile::tempdir().unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=3m", "tmpfs"])
        .arg(mount.path())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("SKIPPED a_full_disk_refuses_retryably_and_loses_nothing: cannot mount a tmpfs here (not root?)");
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(mount.path().to_path_buf());
    let data = mount.path().join("data");
    let mut server = Server::start_at(data, "").await;

    let mut grpc = grpc_client(&server).await;
    let mut acked = 0i64;
    let mut storage_error = None;
    for i in 0..400u64 {
        match grpc.export(request("disk", i * 200, 200)).await {
            Ok(_) => acked += 200,
            Err(e) => {
                storage_error = Some(e);
                break;
            }
        }
    }
    let err = storage_error.expect("the 3 MiB disk never filled");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err}");
    assert!(err.message().contains("WAL"), "{}", err.message());
    assert_eq!(reqwest::get(format!("{}/healthz", server.api_url())).await.unwrap().status(), 200);

    // Room again: ingest resumes and every acknowledged span is there.
    let grown =
        std::process::Command::new("mount").args(["-o", "remount,size=256m"]).arg(mount.path()).status().unwrap();
    assert!(grown.success());
    grpc.export(request("disk", 1 << 40, 200)).await.expect("accepting again");
    acked += 200;
    server.wait_count("SELECT count(*) AS n FROM spans WHERE service_name = 'disk'", acked).await;
    assert!(server.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_metrics_and_logs_are_stored_with_resource_columns() {
    use opentelemetry::logs::{LogRecord as _, Logger as _, LoggerProvider as _, Severity};
    use opentelemetry::metrics::MeterProvider as _;
    let server = Server::start().await;
    let resource = |transport: &str| {
        vec![
            KeyValue::new("service.name", format!("metrics-{transport}")),
            KeyValue::new("cloud.provider", "gcp"),
            KeyValue::new("cloud.region", "us-central1"),
        ]
    };
    for (transport, label) in [(Transport::Grpc, "grpc"), (Transport::HttpProtobuf, "http")] {
        let meters = meter_provider(&server, transport, resource(label));
        let meter = meters.meter("it");
        let tokens = meter.u64_histogram("gen_ai.client.token.usage").with_unit("{token}").build();
        tokens.record(120, &[KeyValue::new("gen_ai.token.type", "input")]);
        tokens.record(30, &[KeyValue::new("gen_ai.token.type", "output")]);
        let calls = meter.u64_counter("agent.calls").build();
        calls.add(3, &[KeyValue::new("agent", "planner")]);
        meters.force_flush().expect("metrics export succeeds");
        meters.shutdown().expect("metrics shutdown");

        let loggers = logger_provider(&server, transport, resource(label));
        let logger = loggers.logger("it");
        let mut record = logger.create_log_record();
        record.set_severity_number(Severity::Warn);
        record.set_severity_text("WARN");
        record.set_body(format!("tool timed out over {label}").into());
        record.add_attribute("gen_ai.tool.name", "web_search");
        logger.emit(record);
        loggers.force_flush().expect("logs export succeeds");
        loggers.shutdown().expect("logs shutdown");
    }
    let points = server
        .sql("SELECT service_name, metric_name, metric_type, value, count, sum, cloud_provider, attributes FROM metrics ORDER BY service_name, metric_name, sum")
        .await;
    for label in ["grpc", "http"] {
        let service = format!("metrics-{label}");
        let mine: Vec<_> = points.iter().filter(|p| p["service_name"] == service.as_str()).collect();
        let hist: Vec<_> = mine.iter().filter(|p| p["metric_name"] == "gen_ai.client.token.usage").collect();
        // Cumulative temporality: each collection (force_flush, then shutdown) exports the same totals again.
        assert!(hist.len() >= 2, "one point per token type: {points:#?}");
        assert!(
            hist.iter().all(|p| p["metric_type"] == "histogram" && p["count"] == 1 && p["cloud_provider"] == "gcp")
        );
        let mut sums: Vec<f64> = hist.iter().map(|p| p["sum"].as_f64().unwrap()).collect();
        sums.dedup();
        assert_eq!(sums, vec![30.0, 120.0], "{points:#?}");
        let counters: Vec<_> = mine.iter().filter(|p| p["metric_name"] == "agent.calls").collect();
        assert!(!counters.is_empty() && counters.iter().all(|p| p["metric_type"] == "sum" && p["value"] == 3.0));
    }
    let logs = server
        .sql("SELECT service_name, severity_number, severity_text, body, attributes FROM logs ORDER BY service_name")
        .await;
    assert_eq!(logs.len(), 2, "{logs:#?}");
    assert_eq!(logs[0]["body"], "tool timed out over grpc");
    assert_eq!(logs[1]["body"], "tool timed out over http");
    assert_eq!(logs[0]["severity_number"], 13);
    assert_eq!(logs[0]["severity_text"], "WARN");
    assert!(logs[0]["attributes"].to_string().contains("web_search"));
    assert_eq!(server.metric("tailscope_items_rejected_total").await, 0.0);
}
