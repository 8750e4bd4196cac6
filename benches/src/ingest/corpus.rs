//! The requests the ingest benchmark sends: realistic agent spans, pre-encoded once as OTLP protobuf.
//!
//! Each request is what one agent service's SDK exports in a batch: one resource (service, version, cloud,
//! region, environment, host, SDK identity) and `spans_per_request` spans of `invoke_agent` turns: `chat` calls
//! with the GenAI conventions (provider, models, token counts including cached ones, time to first chunk,
//! conversation id, destination cloud and body sizes), `execute_tool` calls and retrievals; about twenty
//! attributes and ~800 bytes of OTLP per span. The services, models and tools are the simulated fleet's
//! (`tailscope_sim::fleet`) and each span's GenAI attributes come from its builders (`tailscope_sim::genai`), so
//! the benchmark sends what the simulator and real instrumentations send; what production spans carry beyond
//! them (user, tenant and HTTP attributes) is added here, to give the spans their production weight. The draws
//! (which model, how many tokens, how long) are this corpus's own and its seed fixed: benchmark figures are
//! compared across runs, so the corpus must stay the same from run to run.
//!
//! Sending pre-encoded bytes keeps the client's CPU out of the way of the servers being measured. What must differ
//! between sends, as in production, is rewritten in place per send (offsets found once): the first 8 bytes of
//! every trace id become the send's sequence number (so every stored span is unique), span and parent ids are
//! XORed with a per-send mask (the trace tree is kept), and every random hex identifier (response ids, tool-call
//! ids, conversation ids, user ids) is re-randomised consistently within the request. Without the last two, a
//! columnar store would see the corpus's few thousand distinct ids repeat and compress unrealistically well.

use std::collections::BTreeSet;

use opentelemetry::KeyValue;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span, status};
use opentelemetry_proto::transform::common::tonic::Attributes;
use prost::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tailscope_sim::fleet::{self, Model, Service};
use tailscope_sim::genai::{AgentTurn, ChatCall, Tokens, ToolCall};

/// One encoded request and where its trace ids sit in the bytes.
#[derive(Debug, Clone)]
pub struct EncodedRequest {
    /// The `ExportTraceServiceRequest` protobuf.
    pub bytes: Vec<u8>,
    /// Byte offsets of the first byte of every trace-id field value (spans' trace ids).
    pub trace_id_offsets: Vec<usize>,
    /// Byte offsets of every span-id and parent-span-id value (8 bytes each).
    pub span_id_offsets: Vec<usize>,
    /// (offset, length) of every random lowercase-hex run inside string values.
    pub hex_runs: Vec<(usize, usize)>,
    /// Spans in the request.
    pub spans: usize,
}

impl EncodedRequest {
    /// A copy of the request whose trace ids are made unique for send number `seq`.
    pub fn stamped(&self, seq: u64) -> Vec<u8> {
        let mut out = self.bytes.clone();
        let stamp = seq.to_be_bytes();
        for &o in &self.trace_id_offsets {
            out[o..o + 8].copy_from_slice(&stamp);
        }
        let mask = splitmix64(seq);
        for &o in &self.span_id_offsets {
            for (i, b) in out[o..o + 8].iter_mut().enumerate() {
                *b ^= (mask >> (i * 8)) as u8;
            }
        }
        // A per-send substitution of each hex digit, by position: the same original id maps to the same new id
        // within the request (a conversation id shared by a turn's spans stays shared).
        let digits = splitmix64(mask);
        for &(o, len) in &self.hex_runs {
            for (i, b) in out[o..o + len].iter_mut().enumerate() {
                let v = match *b {
                    b'0'..=b'9' => *b - b'0',
                    b'a'..=b'f' => *b - b'a' + 10,
                    _ => continue,
                };
                let k = ((digits >> ((i % 16) * 4)) & 0xf) as u8;
                *b = b"0123456789abcdef"[((v + k) & 0xf) as usize];
            }
        }
        out
    }
}

/// The corpus: distinct requests sent round-robin.
#[derive(Debug, Clone)]
pub struct Corpus {
    /// The requests.
    pub requests: Vec<EncodedRequest>,
}

impl Corpus {
    /// Total spans over the distinct requests.
    pub fn spans(&self) -> usize {
        self.requests.iter().map(|r| r.spans).sum()
    }
    /// Total protobuf bytes over the distinct requests.
    pub fn bytes(&self) -> usize {
        self.requests.iter().map(|r| r.bytes.len()).sum()
    }
    /// Attribute count per span, averaged (decoding the corpus).
    pub fn attributes_per_span(&self) -> f64 {
        let mut attrs = 0usize;
        let mut spans = 0usize;
        for r in &self.requests {
            let req = ExportTraceServiceRequest::decode(r.bytes.as_slice()).expect("corpus decodes");
            for rs in &req.resource_spans {
                for ss in &rs.scope_spans {
                    for s in &ss.spans {
                        attrs += s.attributes.len();
                        spans += 1;
                    }
                }
            }
        }
        attrs as f64 / spans.max(1) as f64
    }
    /// Bytes of the requests compressed one by one with zstd at `level` (what an OTLP exporter with zstd
    /// compression puts on the wire), per span.
    pub fn zstd_bytes_per_span(&self, level: i32) -> std::io::Result<f64> {
        let mut total = 0usize;
        for r in &self.requests {
            total += zstd::bulk::compress(&r.bytes, level)?.len();
        }
        Ok(total as f64 / self.spans() as f64)
    }
}

/// The fleet's services whose batches the corpus sends, in turn (one per request).
const SERVICES: [(&str, &str); 6] = [
    ("support-agent", "us-east-1"),
    ("support-agent", "eu-west-1"),
    ("research-agent", "us-central1"),
    ("billing-copilot", "eastus"),
    ("code-agent", "us-east-04"),
    ("code-agent", "us-west-01"),
];

/// The fleet's models the corpus's chat calls pick from (provider, request model).
const MODELS: [(&str, &str); 6] = [
    ("openai", "gpt-4o-mini"),
    ("openai", "gpt-4o"),
    ("anthropic", "claude-sonnet-4-20250514"),
    ("aws.bedrock", "anthropic.claude-3-5-sonnet-20240620-v1:0"),
    ("azure.ai.openai", "gpt-4o"),
    ("gcp.vertex_ai", "gemini-2.5-flash"),
];

/// The fleet's tools the corpus's tool calls pick from.
const TOOLS: [&str; 6] = ["lookup_order", "search_web", "run_sql", "create_ticket", "read_file", "get_invoice"];

fn model(i: usize) -> &'static Model {
    fleet::model(MODELS[i].0, MODELS[i].1)
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

thread_local! {
    /// The random hex identifiers generated for the request being built, to locate in its bytes.
    static HEX_IDS: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn hex(rng: &mut StdRng, bytes: usize) -> String {
    let s: String = (0..bytes).map(|_| format!("{:02x}", rng.random::<u8>())).collect();
    if bytes >= 6 {
        HEX_IDS.with(|h| h.borrow_mut().push(s.clone()));
    }
    s
}

/// Builds `requests` distinct requests of `spans_per_request` spans each, deterministically from `seed`.
pub fn build(requests: usize, spans_per_request: usize, seed: u64) -> Corpus {
    let mut rng = StdRng::seed_from_u64(seed);
    let base_ns: u64 = 1_790_000_000_000_000_000; // 2026-09: a fixed instant keeps the corpus reproducible
    let mut out = Vec::with_capacity(requests);
    for r in 0..requests {
        HEX_IDS.with(|h| h.borrow_mut().clear());
        let (name, region) = SERVICES[r % SERVICES.len()];
        let svc = fleet::service(name, region);
        let resource = resource(svc, &mut rng);
        let mut spans = Vec::with_capacity(spans_per_request);
        let mut trace_id = [0u8; 16];
        let mut root = [0u8; 8];
        let mut conversation = String::new();
        let mut t = base_ns + r as u64 * 10_000_000_000;
        for n in 0..spans_per_request {
            // A new turn every 8 spans: an invoke_agent root, then chats and tools under it.
            let is_root = n % 8 == 0;
            if is_root {
                rng.fill(&mut trace_id);
                rng.fill(&mut root);
                conversation = format!("conv_{}", hex(&mut rng, 12));
            }
            let mut span_id = [0u8; 8];
            rng.fill(&mut span_id);
            let dur_ns = (rng.random_range(20.0..4000.0f64) * 1e6) as u64;
            t += rng.random_range(1_000_000..50_000_000);
            let (name, kind, attributes) = if is_root {
                root_span(svc, model(r % MODELS.len()), &conversation, &mut rng)
            } else if rng.random_bool(0.65) {
                chat_span(svc, &conversation, &mut rng)
            } else {
                tool_span(svc, &conversation, &mut rng)
            };
            let error = rng.random_bool(0.02);
            spans.push(Span {
                trace_id: trace_id.to_vec(),
                span_id: if is_root { root.to_vec() } else { span_id.to_vec() },
                parent_span_id: if is_root { Vec::new() } else { root.to_vec() },
                name,
                kind: kind as i32,
                start_time_unix_nano: t,
                end_time_unix_nano: t + dur_ns,
                attributes: Attributes::from(attributes).0,
                status: Some(if error {
                    Status { code: status::StatusCode::Error as i32, message: "upstream returned 503".into() }
                } else {
                    Status::default()
                }),
                flags: 0x301,
                ..Default::default()
            });
        }
        out.push(encode(resource, spans));
    }
    Corpus { requests: out }
}

/// The resource of a service's SDK.
fn resource(svc: &Service, rng: &mut StdRng) -> Resource {
    let attributes = vec![
        KeyValue::new("service.name", svc.name),
        KeyValue::new("service.version", svc.version),
        KeyValue::new("service.namespace", "acme-agents"),
        KeyValue::new("cloud.provider", svc.place.cloud),
        KeyValue::new("cloud.region", svc.place.region),
        KeyValue::new("deployment.environment.name", "production"),
        KeyValue::new("host.name", format!("{}-{}-{}", svc.name, svc.place.region, hex(rng, 3))),
        KeyValue::new("telemetry.sdk.name", "opentelemetry"),
        KeyValue::new("telemetry.sdk.language", "rust"),
        KeyValue::new("telemetry.sdk.version", "0.33.1"),
    ];
    Resource { attributes: Attributes::from(attributes).0, ..Default::default() }
}

/// A turn's `invoke_agent` root, with what a production agent's front end adds (user, tenant, HTTP).
fn root_span(svc: &Service, model: &'static Model, conversation: &str, rng: &mut StdRng) -> SpanParts {
    let turn = AgentTurn::new(svc.agent, format!("{}-{}", svc.agent, svc.place.region))
        .conversation(conversation)
        .model(model)
        .turn(rng.random_range(1..12_i64) as u32);
    let mut a = turn.attributes();
    a.extend([
        KeyValue::new("user.id", format!("user_{}", hex(rng, 6))),
        KeyValue::new("enduser.pseudo.id", hex(rng, 8)),
        KeyValue::new("http.route", "/v1/agents/{agent}/turns"),
        KeyValue::new("http.request.method", "POST"),
        KeyValue::new("http.response.status_code", 200_i64),
        KeyValue::new("url.scheme", "https"),
        KeyValue::new("server.address", format!("{}.acme.dev", svc.name)),
        KeyValue::new("network.protocol.version", "2"),
        KeyValue::new(
            "client.address",
            format!("10.{}.{}.{}", rng.random::<u8>(), rng.random::<u8>(), rng.random::<u8>()),
        ),
        KeyValue::new("user_agent.original", "acme-web/5.2.0"),
        KeyValue::new("gen_ai.request.max_steps", 8_i64),
        KeyValue::new("app.tenant", format!("tenant-{}", rng.random_range(1..400))),
        KeyValue::new("app.plan", if rng.random_bool(0.3) { "enterprise" } else { "team" }),
    ]);
    (turn.span_name(), span::SpanKind::Internal, a)
}

/// A `chat` call to one of the corpus's models; calls to a SaaS API carry the request options SDKs record.
fn chat_span(svc: &Service, conversation: &str, rng: &mut StdRng) -> SpanParts {
    let model = model(rng.random_range(0..MODELS.len()));
    // i64 draws, as the corpus has always drawn them: another type would draw other values from the seed.
    let input = rng.random_range(800..24_000_i64);
    let output = rng.random_range(20..1500_i64);
    let response_id = format!("chatcmpl-{}", hex(rng, 12));
    let finish_reason = if rng.random_bool(0.5) { "stop" } else { "tool_calls" };
    let cache_read = input * rng.random_range(0..90_i64) / 100;
    let tokens =
        Tokens { input: input as u64, output: output as u64, cache_read: cache_read as u64, ..Tokens::default() };
    let call = ChatCall::new(model)
        .agent(svc.agent)
        .conversation(conversation)
        .request(4096, 0.2)
        .response(response_id, finish_reason, tokens)
        .time_to_first_chunk(rng.random_range(0.15..3.0));
    let mut a = call.attributes();
    if model.hosted_in.is_none() {
        a.extend([
            KeyValue::new("gen_ai.output.type", "text"),
            KeyValue::new("gen_ai.request.seed", rng.random_range(0..1_000_000_i64)),
            KeyValue::new("gen_ai.request.choice.count", 1_i64),
            KeyValue::new("gen_ai.request.top_p", 0.95),
        ]);
    }
    (call.span_name(), span::SpanKind::Client, a)
}

/// An `execute_tool` call, with the HTTP call to the tool service it makes.
fn tool_span(svc: &Service, conversation: &str, rng: &mut StdRng) -> SpanParts {
    let tool = fleet::tool(TOOLS[rng.random_range(0..TOOLS.len())]);
    let call = ToolCall::new(tool.name, tool.kind, format!("call_{}", hex(rng, 12)))
        .description("Looks up records in the order and billing systems")
        .conversation(conversation)
        .agent(svc.agent);
    let mut a = call.attributes();
    a.extend([
        KeyValue::new("http.request.method", "POST"),
        KeyValue::new("url.full", format!("https://tools.internal.acme.dev/v2/{}", tool.name)),
        KeyValue::new("server.address", "tools.internal.acme.dev"),
        KeyValue::new("server.port", 443_i64),
        KeyValue::new("http.response.status_code", 200_i64),
        KeyValue::new("http.request.body.size", rng.random_range(200..4000_i64)),
        KeyValue::new("http.response.body.size", rng.random_range(500..60_000_i64)),
        KeyValue::new("cloud.provider", "aws"),
        KeyValue::new("cloud.region", "us-west-2"),
        KeyValue::new("network.peer.address", format!("10.2.{}.{}", rng.random::<u8>(), rng.random::<u8>())),
        KeyValue::new("network.peer.port", 8443_i64),
        KeyValue::new("rpc.system", "http"),
        KeyValue::new("tool.retries", 0_i64),
    ]);
    (call.span_name(), span::SpanKind::Internal, a)
}

/// A span's name, kind and attributes.
type SpanParts = (String, span::SpanKind, Vec<KeyValue>);

/// Encodes one request and finds in its bytes what [`EncodedRequest::stamped`] rewrites.
fn encode(resource: Resource, spans: Vec<Span>) -> EncodedRequest {
    let n = spans.len();
    let req = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "opentelemetry-instrumentation-genai".into(),
                    version: "0.4.2".into(),
                    ..Default::default()
                }),
                spans,
                ..Default::default()
            }],
            schema_url: "https://opentelemetry.io/schemas/1.37.0".into(),
        }],
    };
    let bytes = req.encode_to_vec();
    let spans = &req.resource_spans[0].scope_spans[0].spans;
    // Field 1 of Span (trace_id, tag 0x0a, 16 bytes); fields 2 (span_id, tag 0x12) and 4 (parent_span_id, tag
    // 0x22), 8 bytes each.
    let trace_ids: BTreeSet<Vec<u8>> = spans.iter().map(|s| s.trace_id.clone()).collect();
    let trace_id_offsets = field_offsets(&bytes, &trace_ids, &[0x0a]);
    let span_ids: BTreeSet<Vec<u8>> = spans.iter().map(|s| s.span_id.clone()).collect();
    let span_id_offsets = field_offsets(&bytes, &span_ids, &[0x12, 0x22]);
    let mut hex_runs = Vec::new();
    let ids: BTreeSet<String> = HEX_IDS.with(|h| h.borrow().iter().cloned().collect());
    for id in &ids {
        hex_runs.extend(occurrences(&bytes, id.as_bytes()).into_iter().map(|p| (p, id.len())));
    }
    EncodedRequest { bytes, trace_id_offsets, span_id_offsets, hex_runs, spans: n }
}

/// Where the values of the length-delimited fields with these `tags` holding one of `ids` start in `bytes`.
fn field_offsets(bytes: &[u8], ids: &BTreeSet<Vec<u8>>, tags: &[u8]) -> Vec<usize> {
    let mut offsets = Vec::new();
    for id in ids {
        for &tag in tags {
            let needle: Vec<u8> = [&[tag, id.len() as u8][..], id].concat();
            offsets.extend(occurrences(bytes, &needle).into_iter().map(|p| p + 2));
        }
    }
    offsets
}

/// Where `needle` starts in `hay`, each occurrence after the end of the one before.
fn occurrences(hay: &[u8], needle: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(p) = find(&hay[from..], needle) {
        out.push(from + p);
        from += p + needle.len();
    }
    out
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamping_makes_trace_ids_unique_and_keeps_the_request_valid() {
        let corpus = build(4, 64, 1);
        for r in &corpus.requests {
            assert_eq!(r.trace_id_offsets.len(), r.spans, "one trace id per span");
            let a = ExportTraceServiceRequest::decode(r.stamped(7).as_slice()).unwrap();
            let b = ExportTraceServiceRequest::decode(r.stamped(8).as_slice()).unwrap();
            let sa = &a.resource_spans[0].scope_spans[0].spans;
            let sb = &b.resource_spans[0].scope_spans[0].spans;
            assert_eq!(sa.len(), r.spans);
            for (x, y) in sa.iter().zip(sb) {
                assert_eq!(&x.trace_id[..8], &7u64.to_be_bytes());
                assert_ne!(x.trace_id, y.trace_id);
                assert_ne!(x.span_id, y.span_id);
                assert_eq!(x.attributes.len(), y.attributes.len());
                assert_eq!(x.name, y.name);
            }
            // The tree survives: every parent is a span of the same request.
            for spans in [sa, sb] {
                for x in spans.iter().filter(|x| !x.parent_span_id.is_empty()) {
                    assert!(spans.iter().any(|p| p.span_id == x.parent_span_id));
                }
            }
        }
        let per_span = corpus.bytes() as f64 / corpus.spans() as f64;
        assert!((600.0..1000.0).contains(&per_span), "{per_span} bytes per span");
        assert!(corpus.attributes_per_span() >= 18.0);
    }

    /// A chat span's attribute keys, before those of a SaaS API call or those of a cloud-hosted model's.
    const CHAT_KEYS: [&str; 16] = [
        "gen_ai.operation.name",
        "gen_ai.provider.name",
        "gen_ai.request.model",
        "gen_ai.response.model",
        "gen_ai.response.id",
        "gen_ai.response.finish_reasons",
        "gen_ai.usage.input_tokens",
        "gen_ai.usage.output_tokens",
        "gen_ai.usage.cache_read.input_tokens",
        "gen_ai.request.max_tokens",
        "gen_ai.request.temperature",
        "gen_ai.conversation.id",
        "gen_ai.agent.name",
        "server.address",
        "server.port",
        "gen_ai.response.time_to_first_chunk",
    ];
    const SAAS_KEYS: [&str; 4] =
        ["gen_ai.output.type", "gen_ai.request.seed", "gen_ai.request.choice.count", "gen_ai.request.top_p"];
    const CLOUD_KEYS: [&str; 4] =
        ["cloud.provider", "cloud.region", "http.request.body.size", "http.response.body.size"];
    const ROOT_KEYS: [&str; 20] = [
        "gen_ai.operation.name",
        "gen_ai.agent.name",
        "gen_ai.agent.id",
        "gen_ai.conversation.id",
        "gen_ai.provider.name",
        "gen_ai.request.model",
        "gen_ai.conversation.turn",
        "user.id",
        "enduser.pseudo.id",
        "http.route",
        "http.request.method",
        "http.response.status_code",
        "url.scheme",
        "server.address",
        "network.protocol.version",
        "client.address",
        "user_agent.original",
        "gen_ai.request.max_steps",
        "app.tenant",
        "app.plan",
    ];
    const TOOL_KEYS: [&str; 20] = [
        "gen_ai.operation.name",
        "gen_ai.tool.name",
        "gen_ai.tool.type",
        "gen_ai.tool.call.id",
        "gen_ai.tool.description",
        "gen_ai.conversation.id",
        "gen_ai.agent.name",
        "http.request.method",
        "url.full",
        "server.address",
        "server.port",
        "http.response.status_code",
        "http.request.body.size",
        "http.response.body.size",
        "cloud.provider",
        "cloud.region",
        "network.peer.address",
        "network.peer.port",
        "rpc.system",
        "tool.retries",
    ];

    /// The builders are shared with the simulator: a change of their order would change the corpus's bytes, and
    /// benchmark figures are compared across runs. These are the orders the figures in docs/benchmarks.md were
    /// measured with.
    #[test]
    fn spans_keep_the_attribute_order_the_benchmark_was_measured_with() {
        let saas_chat = [&CHAT_KEYS[..], &SAAS_KEYS].concat();
        let cloud_chat = [&CHAT_KEYS[..], &CLOUD_KEYS].concat();
        let corpus = build(6, 64, 42);
        let mut seen = [0; 4];
        for r in &corpus.requests {
            let req = ExportTraceServiceRequest::decode(r.bytes.as_slice()).unwrap();
            for span in &req.resource_spans[0].scope_spans[0].spans {
                let keys: Vec<&str> = span.attributes.iter().map(|kv| kv.key.as_str()).collect();
                let (kind, want): (usize, &[&str]) = if span.name.starts_with("invoke_agent ") {
                    (0, &ROOT_KEYS)
                } else if span.name.starts_with("execute_tool ") {
                    (1, &TOOL_KEYS)
                } else if keys.contains(&"cloud.region") {
                    (2, &cloud_chat)
                } else {
                    (3, &saas_chat)
                };
                assert_eq!(keys, want, "{}", span.name);
                seen[kind] += 1;
            }
        }
        assert!(seen.iter().all(|&n| n > 0), "{seen:?}");
    }
}
