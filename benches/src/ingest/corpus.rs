//! The requests the ingest benchmark sends: realistic agent spans, pre-encoded once as OTLP protobuf.
//!
//! Each request is what one agent service's SDK exports in a batch: one resource (service, version, cloud,
//! region, environment, host, SDK identity) and `spans_per_request` spans of `invoke_agent` turns: `chat` calls
//! with the GenAI conventions (provider, models, token counts including cached ones, time to first chunk,
//! conversation id, destination cloud and body sizes), `execute_tool` calls and retrievals; about twenty
//! attributes and ~800 bytes of OTLP per span.
//!
//! Sending pre-encoded bytes keeps the client's CPU out of the way of the servers being measured. What must differ
//! between sends, as in production, is rewritten in place per send (offsets found once): the first 8 bytes of
//! every trace id become the send's sequence number (so every stored span is unique), span and parent ids are
//! XORed with a per-send mask (the trace tree is kept), and every random hex identifier (response ids, tool-call
//! ids, conversation ids, user ids) is re-randomised consistently within the request. Without the last two, a
//! columnar store would see the corpus's few thousand distinct ids repeat and compress unrealistically well.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, ArrayValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span, status};
use prost::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

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

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue { key: key.to_string(), value: Some(AnyValue { value: Some(value) }), ..Default::default() }
}
fn s(key: &str, v: impl Into<String>) -> KeyValue {
    kv(key, any_value::Value::StringValue(v.into()))
}
fn i(key: &str, v: i64) -> KeyValue {
    kv(key, any_value::Value::IntValue(v))
}
fn f(key: &str, v: f64) -> KeyValue {
    kv(key, any_value::Value::DoubleValue(v))
}

struct Svc {
    name: &'static str,
    version: &'static str,
    cloud: &'static str,
    region: &'static str,
    agent: &'static str,
}

const SERVICES: [Svc; 6] = [
    Svc { name: "support-agent", version: "2.14.1", cloud: "aws", region: "us-east-1", agent: "support-triage" },
    Svc { name: "support-agent", version: "2.14.1", cloud: "aws", region: "eu-west-1", agent: "support-triage" },
    Svc { name: "research-agent", version: "0.9.3", cloud: "gcp", region: "us-central1", agent: "deep-research" },
    Svc { name: "billing-copilot", version: "1.3.0", cloud: "azure", region: "eastus", agent: "billing-assistant" },
    Svc { name: "code-agent", version: "3.0.0", cloud: "coreweave", region: "us-east-04", agent: "code-fixer" },
    Svc { name: "code-agent", version: "2.9.4", cloud: "coreweave", region: "us-west-01", agent: "code-fixer" },
];

// (provider, request model, response model, server, hosted cloud, hosted region)
const MODELS: [(&str, &str, &str, &str, &str, &str); 6] = [
    ("openai", "gpt-4o-mini", "gpt-4o-mini-2024-07-18", "api.openai.com", "", ""),
    ("openai", "gpt-4o", "gpt-4o-2024-08-06", "api.openai.com", "", ""),
    ("anthropic", "claude-sonnet-4-20250514", "claude-sonnet-4-20250514", "api.anthropic.com", "", ""),
    (
        "aws.bedrock",
        "anthropic.claude-3-5-sonnet-20240620-v1:0",
        "anthropic.claude-3-5-sonnet-20240620-v1:0",
        "bedrock-runtime.us-east-1.amazonaws.com",
        "aws",
        "us-east-1",
    ),
    ("azure.ai.openai", "gpt-4o", "gpt-4o-2024-11-20", "acme-prod.openai.azure.com", "azure", "eastus"),
    (
        "gcp.vertex_ai",
        "gemini-2.5-flash",
        "gemini-2.5-flash",
        "us-central1-aiplatform.googleapis.com",
        "gcp",
        "us-central1",
    ),
];

const TOOLS: [&str; 6] = ["lookup_order", "search_web", "run_sql", "create_ticket", "read_file", "get_invoice"];

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
        let svc = &SERVICES[r % SERVICES.len()];
        let resource = Resource {
            attributes: vec![
                s("service.name", svc.name),
                s("service.version", svc.version),
                s("service.namespace", "acme-agents"),
                s("cloud.provider", svc.cloud),
                s("cloud.region", svc.region),
                s("deployment.environment.name", "production"),
                s("host.name", format!("{}-{}-{}", svc.name, svc.region, hex(&mut rng, 3))),
                s("telemetry.sdk.name", "opentelemetry"),
                s("telemetry.sdk.language", "rust"),
                s("telemetry.sdk.version", "0.33.1"),
            ],
            ..Default::default()
        };
        let mut spans = Vec::with_capacity(spans_per_request);
        let mut trace_id = [0u8; 16];
        let mut root = [0u8; 8];
        let mut conversation = String::new();
        let mut t = base_ns + r as u64 * 10_000_000_000;
        for n in 0..spans_per_request {
            // A new turn every 8 spans: an invoke_agent root, then chats and tools under it.
            if n % 8 == 0 {
                rng.fill(&mut trace_id);
                rng.fill(&mut root);
                conversation = format!("conv_{}", hex(&mut rng, 12));
            }
            let mut span_id = [0u8; 8];
            rng.fill(&mut span_id);
            let dur_ns = (rng.random_range(20.0..4000.0f64) * 1e6) as u64;
            t += rng.random_range(1_000_000..50_000_000);
            let is_root = n % 8 == 0;
            let (name, kind, attributes) = if is_root {
                (
                    format!("invoke_agent {}", svc.agent),
                    span::SpanKind::Internal,
                    vec![
                        s("gen_ai.operation.name", "invoke_agent"),
                        s("gen_ai.agent.name", svc.agent),
                        s("gen_ai.agent.id", format!("{}-{}", svc.agent, svc.region)),
                        s("gen_ai.conversation.id", conversation.clone()),
                        s("gen_ai.provider.name", MODELS[r % MODELS.len()].0),
                        s("gen_ai.request.model", MODELS[r % MODELS.len()].1),
                        i("gen_ai.conversation.turn", rng.random_range(1..12)),
                        s("user.id", format!("user_{}", hex(&mut rng, 6))),
                        s("enduser.pseudo.id", hex(&mut rng, 8)),
                        s("http.route", "/v1/agents/{agent}/turns"),
                        s("http.request.method", "POST"),
                        i("http.response.status_code", 200),
                        s("url.scheme", "https"),
                        s("server.address", format!("{}.acme.dev", svc.name)),
                        s("network.protocol.version", "2"),
                        s(
                            "client.address",
                            format!("10.{}.{}.{}", rng.random::<u8>(), rng.random::<u8>(), rng.random::<u8>()),
                        ),
                        s("user_agent.original", "acme-web/5.2.0"),
                        i("gen_ai.request.max_steps", 8),
                        s("app.tenant", format!("tenant-{}", rng.random_range(1..400))),
                        s("app.plan", if rng.random_bool(0.3) { "enterprise" } else { "team" }),
                    ],
                )
            } else if rng.random_bool(0.65) {
                let m = MODELS[rng.random_range(0..MODELS.len())];
                let input = rng.random_range(800..24_000i64);
                let output = rng.random_range(20..1500i64);
                let mut a = vec![
                    s("gen_ai.operation.name", "chat"),
                    s("gen_ai.provider.name", m.0),
                    s("gen_ai.request.model", m.1),
                    s("gen_ai.response.model", m.2),
                    s("gen_ai.response.id", format!("chatcmpl-{}", hex(&mut rng, 12))),
                    kv(
                        "gen_ai.response.finish_reasons",
                        any_value::Value::ArrayValue(ArrayValue {
                            values: vec![AnyValue {
                                value: Some(any_value::Value::StringValue(
                                    if rng.random_bool(0.5) { "stop" } else { "tool_calls" }.into(),
                                )),
                            }],
                        }),
                    ),
                    i("gen_ai.usage.input_tokens", input),
                    i("gen_ai.usage.output_tokens", output),
                    i("gen_ai.usage.cache_read.input_tokens", input * rng.random_range(0..90) / 100),
                    i("gen_ai.request.max_tokens", 4096),
                    f("gen_ai.request.temperature", 0.2),
                    s("gen_ai.conversation.id", conversation.clone()),
                    s("gen_ai.agent.name", svc.agent),
                    s("server.address", m.3),
                    i("server.port", 443),
                    f("gen_ai.response.time_to_first_chunk", rng.random_range(0.15..3.0)),
                ];
                if m.4.is_empty() {
                    a.push(s("gen_ai.output.type", "text"));
                    a.push(i("gen_ai.request.seed", rng.random_range(0..1_000_000)));
                    a.push(i("gen_ai.request.choice.count", 1));
                    a.push(f("gen_ai.request.top_p", 0.95));
                } else {
                    a.push(s("cloud.provider", m.4));
                    a.push(s("cloud.region", m.5));
                    a.push(i("http.request.body.size", input * 4 + 600));
                    a.push(i("http.response.body.size", output * 5 + 400));
                }
                (format!("chat {}", m.1), span::SpanKind::Client, a)
            } else {
                let tool = TOOLS[rng.random_range(0..TOOLS.len())];
                (
                    format!("execute_tool {tool}"),
                    span::SpanKind::Internal,
                    vec![
                        s("gen_ai.operation.name", "execute_tool"),
                        s("gen_ai.tool.name", tool),
                        s("gen_ai.tool.type", "function"),
                        s("gen_ai.tool.call.id", format!("call_{}", hex(&mut rng, 12))),
                        s("gen_ai.tool.description", "Looks up records in the order and billing systems"),
                        s("gen_ai.conversation.id", conversation.clone()),
                        s("gen_ai.agent.name", svc.agent),
                        s("http.request.method", "POST"),
                        s("url.full", format!("https://tools.internal.acme.dev/v2/{tool}")),
                        s("server.address", "tools.internal.acme.dev"),
                        i("server.port", 443),
                        i("http.response.status_code", 200),
                        i("http.request.body.size", rng.random_range(200..4000)),
                        i("http.response.body.size", rng.random_range(500..60_000)),
                        s("cloud.provider", "aws"),
                        s("cloud.region", "us-west-2"),
                        s("network.peer.address", format!("10.2.{}.{}", rng.random::<u8>(), rng.random::<u8>())),
                        i("network.peer.port", 8443),
                        s("rpc.system", "http"),
                        i("tool.retries", 0),
                    ],
                )
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
                attributes,
                status: Some(if error {
                    Status { code: status::StatusCode::Error as i32, message: "upstream returned 503".into() }
                } else {
                    Status::default()
                }),
                flags: 0x301,
                ..Default::default()
            });
        }
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
        let trace_ids: std::collections::BTreeSet<Vec<u8>> =
            req.resource_spans[0].scope_spans[0].spans.iter().map(|s| s.trace_id.clone()).collect();
        let mut offsets = Vec::new();
        for id in &trace_ids {
            // Field 1 of Span, length-delimited: tag 0x0a, length 16, then the id.
            let needle: Vec<u8> = [&[0x0a, 0x10][..], id].concat();
            let mut from = 0;
            while let Some(p) = find(&bytes[from..], &needle) {
                offsets.push(from + p + 2);
                from += p + needle.len();
            }
        }
        let spans_of = &req.resource_spans[0].scope_spans[0].spans;
        let span_ids: std::collections::BTreeSet<Vec<u8>> = spans_of.iter().map(|s| s.span_id.clone()).collect();
        let mut span_id_offsets = Vec::new();
        for id in &span_ids {
            // Field 2 (span_id, tag 0x12) and field 4 (parent_span_id, tag 0x22), 8 bytes each.
            for tag in [0x12u8, 0x22] {
                let needle: Vec<u8> = [&[tag, 0x08][..], id].concat();
                let mut from = 0;
                while let Some(p) = find(&bytes[from..], &needle) {
                    span_id_offsets.push(from + p + 2);
                    from += p + needle.len();
                }
            }
        }
        let mut hex_runs = Vec::new();
        let ids: std::collections::BTreeSet<String> = HEX_IDS.with(|h| h.borrow().iter().cloned().collect());
        for id in &ids {
            let mut from = 0;
            while let Some(p) = find(&bytes[from..], id.as_bytes()) {
                hex_runs.push((from + p, id.len()));
                from += p + id.len();
            }
        }
        out.push(EncodedRequest {
            bytes,
            trace_id_offsets: offsets,
            span_id_offsets,
            hex_runs,
            spans: spans_per_request,
        });
    }
    Corpus { requests: out }
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
}
