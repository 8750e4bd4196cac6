//! GenAI spans as an agent's instrumentation records them: the attributes of an `invoke_agent` turn, a `chat`
//! call and an `execute_tool` call, by the OpenTelemetry GenAI semantic conventions, or by their deprecated names
//! for services on older instrumentations ([`Names`]). Everything that generates agent spans builds them here:
//! the simulated fleet ([`crate::plan`]) and the ingest benchmark's corpus.
//!
//! Each builder emits its attributes in one fixed order, the order the ingest benchmark's corpus has always sent
//! (its bytes are compared across benchmark runs; `benches/src/ingest/corpus.rs` pins the order in a test that
//! `cargo test --workspace` runs). The names that feed a stored column come from
//! [`tailscope_core::keys`], where the normaliser reads them, so what is sent cannot drift from what is stored;
//! the others (request parameters, ids) are spelled here.

use opentelemetry::{Array, KeyValue, StringValue, Value};
use tailscope_core::keys::span as key;

use crate::fleet::Model;

/// Which generation of the GenAI attribute names an instrumentation sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Names {
    /// `gen_ai.provider.name`, `gen_ai.usage.input_tokens` / `output_tokens`, `gen_ai.conversation.id`.
    #[default]
    Current,
    /// `gen_ai.system`, `gen_ai.usage.prompt_tokens` / `completion_tokens`, `session.id`: what older
    /// instrumentations still send.
    Deprecated,
}

impl Names {
    /// `gen_ai.provider.name`, or the deprecated `gen_ai.system`.
    pub fn provider(self, provider: &'static str) -> KeyValue {
        match self {
            Names::Current => KeyValue::new(key::GEN_AI_PROVIDER, provider),
            Names::Deprecated => KeyValue::new(key::GEN_AI_SYSTEM, provider),
        }
    }

    /// `gen_ai.conversation.id`, or the generic `session.id` that older instrumentations set.
    pub fn conversation(self, id: &str) -> KeyValue {
        match self {
            Names::Current => KeyValue::new(key::CONVERSATION_ID, id.to_string()),
            Names::Deprecated => KeyValue::new(key::SESSION_ID, id.to_string()),
        }
    }

    /// `gen_ai.usage.input_tokens`, or the deprecated `gen_ai.usage.prompt_tokens`.
    pub fn input_tokens(self, n: u64) -> KeyValue {
        match self {
            Names::Current => KeyValue::new(key::INPUT_TOKENS, n as i64),
            Names::Deprecated => KeyValue::new(key::PROMPT_TOKENS, n as i64),
        }
    }

    /// A call's token usage; cache reads only from providers that report them (`caches`).
    fn usage(self, tokens: &Tokens, caches: bool, out: &mut Vec<KeyValue>) {
        // The current name of each token count is listed first in `keys`, the deprecated one second.
        match self {
            Names::Deprecated => {
                out.push(KeyValue::new(key::PROMPT_TOKENS, tokens.input as i64));
                out.push(KeyValue::new(key::COMPLETION_TOKENS, tokens.output as i64));
                if caches {
                    // OpenLLMetry's name, from before the conventions had one.
                    out.push(KeyValue::new(key::CACHE_READ[1], tokens.cache_read as i64));
                }
            }
            Names::Current => {
                out.push(KeyValue::new(key::INPUT_TOKENS, tokens.input as i64));
                out.push(KeyValue::new(key::OUTPUT_TOKENS, tokens.output as i64));
                if caches {
                    out.push(KeyValue::new(key::CACHE_READ[0], tokens.cache_read as i64));
                }
                if tokens.cache_creation > 0 {
                    out.push(KeyValue::new(key::CACHE_CREATION[0], tokens.cache_creation as i64));
                }
                if tokens.reasoning > 0 {
                    out.push(KeyValue::new(key::REASONING[0], tokens.reasoning as i64));
                }
            }
        }
    }
}

/// Token counts of one call, as the provider reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tokens {
    /// Input tokens, cached ones included.
    pub input: u64,
    /// Output tokens, reasoning included.
    pub output: u64,
    /// Input tokens read from the prompt cache.
    pub cache_read: u64,
    /// Input tokens written to the prompt cache (Anthropic-style explicit caching).
    pub cache_creation: u64,
    /// Output tokens spent reasoning.
    pub reasoning: u64,
}

/// What a GenAI call used, for the client metrics (`gen_ai.client.token.usage`, `gen_ai.client.operation.duration`).
#[derive(Debug, Clone, PartialEq)]
pub struct Usage {
    /// `gen_ai.operation.name`.
    pub operation: &'static str,
    /// `gen_ai.provider.name`.
    pub provider: &'static str,
    /// `gen_ai.request.model`.
    pub request_model: &'static str,
    /// `gen_ai.response.model`.
    pub response_model: &'static str,
    /// Input tokens (including cached ones); 0 when the call failed before usage was reported.
    pub input_tokens: u64,
    /// Output tokens (including reasoning).
    pub output_tokens: u64,
    /// `error.type` when the call failed.
    pub error_type: Option<&'static str>,
}

/// What a model answered.
#[derive(Debug, Clone, PartialEq)]
struct Response {
    id: String,
    finish_reason: &'static str,
    tokens: Tokens,
}

/// One `chat` call to a model, as the client span of the calling agent records it.
///
/// ```
/// use tailscope_sim::fleet;
/// use tailscope_sim::genai::{ChatCall, Tokens};
///
/// let tokens = Tokens { input: 1800, output: 240, cache_read: 1200, ..Tokens::default() };
/// let call = ChatCall::new(fleet::model("openai", "gpt-4o"))
///     .agent("support-triage")
///     .conversation("conv_1")
///     .request(4096, 0.7)
///     .response("resp_1", "stop", tokens)
///     .time_to_first_chunk(0.45);
/// assert_eq!(call.span_name(), "chat gpt-4o");
/// assert!(call.attributes().iter().any(|kv| kv.key.as_str() == "gen_ai.usage.cache_read.input_tokens"));
/// ```
#[derive(Debug, Clone)]
pub struct ChatCall {
    model: &'static Model,
    names: Names,
    agent: Option<&'static str>,
    conversation: Option<String>,
    turn: Option<u32>,
    request: Option<(i64, f64)>,
    response: Option<Response>,
    time_to_first_chunk: Option<f64>,
    error_type: Option<&'static str>,
}

impl ChatCall {
    /// A call to `model`, with nothing else known yet.
    pub fn new(model: &'static Model) -> ChatCall {
        ChatCall {
            model,
            names: Names::Current,
            agent: None,
            conversation: None,
            turn: None,
            request: None,
            response: None,
            time_to_first_chunk: None,
            error_type: None,
        }
    }

    /// The attribute names the caller's instrumentation uses.
    pub fn names(mut self, names: Names) -> ChatCall {
        self.names = names;
        self
    }

    /// `gen_ai.agent.name` of the caller.
    pub fn agent(mut self, agent: &'static str) -> ChatCall {
        self.agent = Some(agent);
        self
    }

    /// The conversation (session) the call belongs to.
    pub fn conversation(mut self, id: &str) -> ChatCall {
        self.conversation = Some(id.to_string());
        self
    }

    /// `gen_ai.conversation.turn`, counted from 1.
    pub fn turn(mut self, turn: u32) -> ChatCall {
        self.turn = Some(turn);
        self
    }

    /// `gen_ai.request.max_tokens` and `gen_ai.request.temperature`.
    pub fn request(mut self, max_tokens: i64, temperature: f64) -> ChatCall {
        self.request = Some((max_tokens, temperature));
        self
    }

    /// The model answered: response id, finish reason and token usage. Without it the call failed before any
    /// usage was reported.
    pub fn response(mut self, id: impl Into<String>, finish_reason: &'static str, tokens: Tokens) -> ChatCall {
        self.response = Some(Response { id: id.into(), finish_reason, tokens });
        self
    }

    /// `gen_ai.response.time_to_first_chunk`, in seconds.
    pub fn time_to_first_chunk(mut self, seconds: f64) -> ChatCall {
        self.time_to_first_chunk = Some(seconds);
        self
    }

    /// The call failed: `error.type`.
    pub fn error(mut self, error_type: &'static str) -> ChatCall {
        self.error_type = Some(error_type);
        self
    }

    /// The span's name, `chat {model}`.
    pub fn span_name(&self) -> String {
        format!("chat {}", self.model.request)
    }

    /// The client span's attributes.
    pub fn attributes(&self) -> Vec<KeyValue> {
        let model = self.model;
        let mut a = Vec::with_capacity(24);
        a.push(KeyValue::new(key::GEN_AI_OPERATION, "chat"));
        a.push(self.names.provider(model.provider));
        a.push(KeyValue::new(key::REQUEST_MODEL, model.request));
        if let Some(r) = &self.response {
            a.push(KeyValue::new(key::RESPONSE_MODEL, model.response));
            a.push(KeyValue::new("gen_ai.response.id", r.id.clone()));
            a.push(KeyValue::new(
                "gen_ai.response.finish_reasons",
                Value::Array(Array::String(vec![StringValue::from(r.finish_reason)])),
            ));
            self.names.usage(&r.tokens, model.caches, &mut a);
        }
        if let Some((max_tokens, temperature)) = self.request {
            a.push(KeyValue::new("gen_ai.request.max_tokens", max_tokens));
            a.push(KeyValue::new("gen_ai.request.temperature", temperature));
        }
        if let Some(id) = &self.conversation {
            a.push(self.names.conversation(id));
        }
        if let Some(agent) = self.agent {
            a.push(KeyValue::new(key::AGENT_NAME, agent));
        }
        a.push(KeyValue::new(key::SERVER_ADDRESS, model.server));
        a.push(KeyValue::new("server.port", 443_i64));
        if let Some(turn) = self.turn {
            a.push(KeyValue::new("gen_ai.conversation.turn", turn as i64));
        }
        if let Some(seconds) = self.time_to_first_chunk {
            a.push(KeyValue::new(key::TIME_TO_FIRST_CHUNK, seconds));
        }
        if let (Some(dest), Some(r)) = (model.hosted_in, &self.response) {
            // A cloud-hosted model: the span names where the call went, and its payload sizes (egress).
            a.push(KeyValue::new(key::PEER_CLOUD_PROVIDER, dest.cloud));
            a.push(KeyValue::new(key::PEER_CLOUD_REGION, dest.region));
            a.push(KeyValue::new(key::REQUEST_BODY_SIZE, (r.tokens.input * 4 + 600) as i64));
            a.push(KeyValue::new(key::RESPONSE_BODY_SIZE, (r.tokens.output * 5 + 400) as i64));
        }
        if let Some(e) = self.error_type {
            a.push(KeyValue::new(key::ERROR_TYPE, e));
        }
        a
    }

    /// What the call used, for the client metrics.
    pub fn usage(&self) -> Usage {
        let tokens = self.response.as_ref().map(|r| r.tokens).unwrap_or_default();
        Usage {
            operation: "chat",
            provider: self.model.provider,
            request_model: self.model.request,
            response_model: self.model.response,
            input_tokens: tokens.input,
            output_tokens: tokens.output,
            error_type: self.error_type,
        }
    }
}

/// The `invoke_agent` span at the root of an agent turn.
#[derive(Debug, Clone)]
pub struct AgentTurn {
    agent: &'static str,
    agent_id: String,
    names: Names,
    conversation: Option<String>,
    model: Option<&'static Model>,
    turn: Option<u32>,
}

impl AgentTurn {
    /// A turn of agent `agent` (`gen_ai.agent.name`), deployed as `agent_id` (`gen_ai.agent.id`).
    pub fn new(agent: &'static str, agent_id: impl Into<String>) -> AgentTurn {
        AgentTurn {
            agent,
            agent_id: agent_id.into(),
            names: Names::Current,
            conversation: None,
            model: None,
            turn: None,
        }
    }

    /// The attribute names the agent's instrumentation uses.
    pub fn names(mut self, names: Names) -> AgentTurn {
        self.names = names;
        self
    }

    /// The conversation (session) the turn belongs to.
    pub fn conversation(mut self, id: &str) -> AgentTurn {
        self.conversation = Some(id.to_string());
        self
    }

    /// The model the agent plans and answers with.
    pub fn model(mut self, model: &'static Model) -> AgentTurn {
        self.model = Some(model);
        self
    }

    /// `gen_ai.conversation.turn`, counted from 1.
    pub fn turn(mut self, turn: u32) -> AgentTurn {
        self.turn = Some(turn);
        self
    }

    /// The span's name, `invoke_agent {agent}`.
    pub fn span_name(&self) -> String {
        format!("invoke_agent {}", self.agent)
    }

    /// The root span's attributes.
    pub fn attributes(&self) -> Vec<KeyValue> {
        let mut a = Vec::with_capacity(8);
        a.push(KeyValue::new(key::GEN_AI_OPERATION, "invoke_agent"));
        a.push(KeyValue::new(key::AGENT_NAME, self.agent));
        a.push(KeyValue::new(key::AGENT_ID, self.agent_id.clone()));
        if let Some(id) = &self.conversation {
            a.push(self.names.conversation(id));
        }
        if let Some(model) = self.model {
            a.push(self.names.provider(model.provider));
            a.push(KeyValue::new(key::REQUEST_MODEL, model.request));
        }
        if let Some(turn) = self.turn {
            a.push(KeyValue::new("gen_ai.conversation.turn", turn as i64));
        }
        a
    }
}

/// One `execute_tool` call of an agent.
#[derive(Debug, Clone)]
pub struct ToolCall {
    name: &'static str,
    kind: &'static str,
    call_id: String,
    description: Option<&'static str>,
    names: Names,
    conversation: Option<String>,
    agent: Option<&'static str>,
    error_type: Option<&'static str>,
}

impl ToolCall {
    /// A call of tool `name` (`gen_ai.tool.name`) of type `kind` (`gen_ai.tool.type`: `function`, `extension`,
    /// `datastore`) with the model's `call_id` (`gen_ai.tool.call.id`).
    pub fn new(name: &'static str, kind: &'static str, call_id: impl Into<String>) -> ToolCall {
        ToolCall {
            name,
            kind,
            call_id: call_id.into(),
            description: None,
            names: Names::Current,
            conversation: None,
            agent: None,
            error_type: None,
        }
    }

    /// `gen_ai.tool.description`.
    pub fn description(mut self, text: &'static str) -> ToolCall {
        self.description = Some(text);
        self
    }

    /// The attribute names the caller's instrumentation uses.
    pub fn names(mut self, names: Names) -> ToolCall {
        self.names = names;
        self
    }

    /// The conversation (session) the call belongs to.
    pub fn conversation(mut self, id: &str) -> ToolCall {
        self.conversation = Some(id.to_string());
        self
    }

    /// `gen_ai.agent.name` of the caller.
    pub fn agent(mut self, agent: &'static str) -> ToolCall {
        self.agent = Some(agent);
        self
    }

    /// The call failed: `error.type`.
    pub fn error(mut self, error_type: &'static str) -> ToolCall {
        self.error_type = Some(error_type);
        self
    }

    /// The span's name, `execute_tool {tool}`.
    pub fn span_name(&self) -> String {
        format!("execute_tool {}", self.name)
    }

    /// The span's attributes.
    pub fn attributes(&self) -> Vec<KeyValue> {
        let mut a = Vec::with_capacity(8);
        a.push(KeyValue::new(key::GEN_AI_OPERATION, "execute_tool"));
        a.push(KeyValue::new(key::TOOL_NAME, self.name));
        a.push(KeyValue::new("gen_ai.tool.type", self.kind));
        a.push(KeyValue::new("gen_ai.tool.call.id", self.call_id.clone()));
        if let Some(text) = self.description {
            a.push(KeyValue::new("gen_ai.tool.description", text));
        }
        if let Some(id) = &self.conversation {
            a.push(self.names.conversation(id));
        }
        if let Some(agent) = self.agent {
            a.push(KeyValue::new(key::AGENT_NAME, agent));
        }
        if let Some(e) = self.error_type {
            a.push(KeyValue::new(key::ERROR_TYPE, e));
        }
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet;

    fn keys(attrs: &[KeyValue]) -> Vec<&str> {
        attrs.iter().map(|kv| kv.key.as_str()).collect()
    }

    #[test]
    fn a_chat_call_speaks_either_generation_of_names() {
        let tokens = Tokens { input: 1000, output: 300, cache_read: 600, cache_creation: 0, reasoning: 120 };
        let call = |names| {
            ChatCall::new(fleet::model("gcp.vertex_ai", "gemini-2.5-pro"))
                .names(names)
                .agent("deep-research")
                .conversation("conv_9")
                .response("r", "stop", tokens)
        };
        let current = call(Names::Current).attributes();
        for k in ["gen_ai.provider.name", "gen_ai.usage.input_tokens", "gen_ai.usage.reasoning.output_tokens"] {
            assert!(keys(&current).contains(&k), "{k} missing: {:?}", keys(&current));
        }
        assert!(keys(&current).contains(&"gen_ai.conversation.id"));
        let old = call(Names::Deprecated).attributes();
        for k in ["gen_ai.system", "gen_ai.usage.prompt_tokens", "gen_ai.usage.completion_tokens", "session.id"] {
            assert!(keys(&old).contains(&k), "{k} missing: {:?}", keys(&old));
        }
        // Gemini on Vertex is hosted in a cloud: the destination and the body sizes are on the span.
        assert!(keys(&current).contains(&"cloud.region") && keys(&current).contains(&"http.request.body.size"));
    }

    #[test]
    fn a_failed_chat_call_reports_no_usage_and_no_egress() {
        let call = ChatCall::new(fleet::model("aws.bedrock", "amazon.nova-pro-v1:0")).request(1024, 0.2).error("429");
        let attrs = call.attributes();
        assert_eq!(keys(&attrs).last(), Some(&"error.type"));
        assert!(!keys(&attrs).iter().any(|k| k.starts_with("gen_ai.usage.") || k.starts_with("http.")));
        let usage = call.usage();
        assert_eq!((usage.input_tokens, usage.output_tokens, usage.error_type), (0, 0, Some("429")));
    }
}
