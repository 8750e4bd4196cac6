//! The attribute names tailscope reads from what it receives: the input side of the stored [`schema`](crate::schema),
//! defined once for the normaliser that reads them and for the simulator that writes them, so the two cannot
//! drift apart. `docs/schema.md` says which column each one feeds.

/// Span attributes with a column of their own. Deprecated names are listed after the current ones: where both
/// are present, the current name wins.
pub mod span {
    pub const GEN_AI_PROVIDER: &str = "gen_ai.provider.name";
    pub const GEN_AI_SYSTEM: &str = "gen_ai.system";
    pub const GEN_AI_OPERATION: &str = "gen_ai.operation.name";
    pub const REQUEST_MODEL: &str = "gen_ai.request.model";
    pub const RESPONSE_MODEL: &str = "gen_ai.response.model";
    pub const INPUT_TOKENS: &str = "gen_ai.usage.input_tokens";
    pub const PROMPT_TOKENS: &str = "gen_ai.usage.prompt_tokens";
    pub const OUTPUT_TOKENS: &str = "gen_ai.usage.output_tokens";
    pub const COMPLETION_TOKENS: &str = "gen_ai.usage.completion_tokens";
    pub const CACHE_READ: &[&str] = &[
        "gen_ai.usage.cache_read.input_tokens",
        "gen_ai.usage.cache_read_input_tokens",
        "gen_ai.usage.input_tokens.cached",
    ];
    pub const CACHE_CREATION: &[&str] = &[
        "gen_ai.usage.cache_creation.input_tokens",
        "gen_ai.usage.cache_creation_input_tokens",
        "gen_ai.usage.input_tokens.cache_write",
    ];
    pub const REASONING: &[&str] = &[
        "gen_ai.usage.reasoning.output_tokens",
        "gen_ai.usage.output_tokens.reasoning",
        "gen_ai.usage.reasoning_tokens",
    ];
    pub const CONVERSATION_ID: &str = "gen_ai.conversation.id";
    pub const SESSION_ID: &str = "session.id";
    pub const AGENT_NAME: &str = "gen_ai.agent.name";
    pub const AGENT_ID: &str = "gen_ai.agent.id";
    pub const TOOL_NAME: &str = "gen_ai.tool.name";
    pub const ERROR_TYPE: &str = "error.type";
    /// Seconds, per the GenAI conventions; stored in milliseconds.
    pub const TIME_TO_FIRST_CHUNK: &str = "gen_ai.response.time_to_first_chunk";
    pub const TIME_TO_FIRST_TOKEN: &str = "gen_ai.response.time_to_first_token";
    pub const PEER_CLOUD_PROVIDER: &str = "cloud.provider";
    pub const PEER_CLOUD_REGION: &str = "cloud.region";
    pub const HEDGE_ID: &str = "hedge.id";
    pub const HEDGE_WINNER: &str = "hedge.winner";
    /// Kept in `attributes` too: they are inputs of `egress_bytes`, not its value.
    pub const REQUEST_BODY_SIZE: &str = "http.request.body.size";
    pub const RESPONSE_BODY_SIZE: &str = "http.response.body.size";
    pub const EGRESS_BYTES: &str = "egress.bytes";
    /// The service tier (`priority`, `flex`, `batch`, `default`), an input of the price: the response's first (it
    /// says what was served; a request for `auto` is answered with the tier used), then the request's, each under
    /// its current and its older `gen_ai.`-prefixed name. Kept in `attributes` too.
    pub const SERVICE_TIER: &[&str] = &[
        "openai.response.service_tier",
        "gen_ai.openai.response.service_tier",
        "openai.request.service_tier",
        "gen_ai.openai.request.service_tier",
    ];
    /// Cache writes with a 1-hour lifetime (Anthropic's `usage.cache_creation.ephemeral_1h_input_tokens`), an
    /// input of the price; part of the cache-creation count. Kept in `attributes` too.
    pub const CACHE_CREATION_1H: &str = "gen_ai.usage.cache_creation.ephemeral_1h_input_tokens";
    /// The host of the endpoint called (the provider's API, a tool or a vector store). Kept in `attributes` too, as
    /// it was before it had a column, so queries of `attributes['server.address']` still find it.
    pub const SERVER_ADDRESS: &str = "server.address";
}

/// The resource attributes that have columns; the rest stay in `resource_attributes`.
pub mod resource {
    pub const SERVICE_NAME: &str = "service.name";
    pub const SERVICE_VERSION: &str = "service.version";
    pub const SERVICE_NAMESPACE: &str = "service.namespace";
    pub const DEPLOYMENT_ENVIRONMENT: &str = "deployment.environment.name";
    pub const DEPLOYMENT_ENVIRONMENT_OLD: &str = "deployment.environment";
    pub const CLOUD_PROVIDER: &str = "cloud.provider";
    pub const CLOUD_REGION: &str = "cloud.region";
    pub const CLOUD_AZ: &str = "cloud.availability_zone";
}
