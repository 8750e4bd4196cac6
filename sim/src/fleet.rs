//! The simulated fleet: which services run where, which models they call, and the backends they reach.
//!
//! Everything here is static data. The mix is chosen so every tailscope feature has something to show:
//! the same agent deployed in two regions of one cloud (so a regional incident stands out against its twin),
//! services calling a model hosted in another cloud (egress), services that hedge across providers, services on
//! the deprecated GenAI attribute names, and one fine-tuned model that no price table knows.

use crate::genai::Names;

/// A cloud a service or backend runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place {
    /// `cloud.provider` (semantic-convention values: `aws`, `azure`, `gcp`; `coreweave` is not in the enum yet,
    /// and is what CoreWeave deployments put there).
    pub cloud: &'static str,
    /// `cloud.region`.
    pub region: &'static str,
}

/// One model behind one GenAI provider, with the shape of its latency and output.
#[derive(Debug, Clone, Copy)]
pub struct Model {
    /// `gen_ai.provider.name` (new conventions).
    pub provider: &'static str,
    /// `gen_ai.request.model`.
    pub request: &'static str,
    /// `gen_ai.response.model`: providers answer with a dated snapshot name.
    pub response: &'static str,
    /// Where the provider serves it, when it is a cloud's own service: calls to it from another cloud or region
    /// carry the span's own `cloud.provider`/`cloud.region` and body sizes (egress).
    pub hosted_in: Option<Place>,
    /// `server.address` of the API.
    pub server: &'static str,
    /// Median time to first token, ms.
    pub ttft_ms: f64,
    /// Output tokens per second once streaming.
    pub tokens_per_s: f64,
    /// Share of output tokens spent reasoning (0 for non-reasoning models).
    pub reasoning_share: f64,
    /// Whether the provider reports prompt-cache reads (`gen_ai.usage.cache_read.input_tokens`).
    pub caches: bool,
}

const AWS_US_EAST_1: Place = Place { cloud: "aws", region: "us-east-1" };
const AWS_US_WEST_2: Place = Place { cloud: "aws", region: "us-west-2" };
const AWS_EU_WEST_1: Place = Place { cloud: "aws", region: "eu-west-1" };
const AZURE_EASTUS: Place = Place { cloud: "azure", region: "eastus" };
const AZURE_SWEDEN: Place = Place { cloud: "azure", region: "swedencentral" };
const GCP_US_CENTRAL1: Place = Place { cloud: "gcp", region: "us-central1" };
const GCP_EUROPE_WEST4: Place = Place { cloud: "gcp", region: "europe-west4" };
const CW_US_EAST_04: Place = Place { cloud: "coreweave", region: "us-east-04" };
const CW_US_WEST_01: Place = Place { cloud: "coreweave", region: "us-west-01" };

/// Every model the fleet calls. Names follow the providers' own model ids, as a real SDK reports them.
pub const MODELS: &[Model] = &[
    Model {
        provider: "openai",
        request: "gpt-4o",
        response: "gpt-4o-2024-08-06",
        hosted_in: None,
        server: "api.openai.com",
        ttft_ms: 450.0,
        tokens_per_s: 90.0,
        reasoning_share: 0.0,
        caches: true,
    },
    Model {
        provider: "openai",
        request: "gpt-4o-mini",
        response: "gpt-4o-mini-2024-07-18",
        hosted_in: None,
        server: "api.openai.com",
        ttft_ms: 300.0,
        tokens_per_s: 140.0,
        reasoning_share: 0.0,
        caches: true,
    },
    Model {
        provider: "openai",
        request: "o3-mini",
        response: "o3-mini-2025-01-31",
        hosted_in: None,
        server: "api.openai.com",
        ttft_ms: 1800.0,
        tokens_per_s: 150.0,
        reasoning_share: 0.6,
        caches: true,
    },
    Model {
        provider: "anthropic",
        request: "claude-sonnet-4-20250514",
        response: "claude-sonnet-4-20250514",
        hosted_in: None,
        server: "api.anthropic.com",
        ttft_ms: 700.0,
        tokens_per_s: 75.0,
        reasoning_share: 0.0,
        caches: true,
    },
    Model {
        provider: "anthropic",
        request: "claude-3-5-haiku-20241022",
        response: "claude-3-5-haiku-20241022",
        hosted_in: None,
        server: "api.anthropic.com",
        ttft_ms: 400.0,
        tokens_per_s: 120.0,
        reasoning_share: 0.0,
        caches: true,
    },
    Model {
        provider: "aws.bedrock",
        request: "anthropic.claude-3-5-sonnet-20240620-v1:0",
        response: "anthropic.claude-3-5-sonnet-20240620-v1:0",
        hosted_in: Some(AWS_US_EAST_1),
        server: "bedrock-runtime.us-east-1.amazonaws.com",
        ttft_ms: 650.0,
        tokens_per_s: 70.0,
        reasoning_share: 0.0,
        caches: true,
    },
    Model {
        provider: "aws.bedrock",
        request: "amazon.nova-pro-v1:0",
        response: "amazon.nova-pro-v1:0",
        hosted_in: Some(AWS_US_EAST_1),
        server: "bedrock-runtime.us-east-1.amazonaws.com",
        ttft_ms: 380.0,
        tokens_per_s: 110.0,
        reasoning_share: 0.0,
        caches: false,
    },
    Model {
        provider: "azure.ai.openai",
        request: "gpt-4o",
        response: "gpt-4o-2024-11-20",
        hosted_in: Some(AZURE_EASTUS),
        server: "acme-prod.openai.azure.com",
        ttft_ms: 500.0,
        tokens_per_s: 85.0,
        reasoning_share: 0.0,
        caches: true,
    },
    Model {
        provider: "azure.ai.openai",
        request: "gpt-4o-mini",
        response: "gpt-4o-mini-2024-07-18",
        hosted_in: Some(AZURE_EASTUS),
        server: "acme-prod.openai.azure.com",
        ttft_ms: 320.0,
        tokens_per_s: 130.0,
        reasoning_share: 0.0,
        caches: true,
    },
    Model {
        provider: "gcp.vertex_ai",
        request: "gemini-2.5-pro",
        response: "gemini-2.5-pro",
        hosted_in: Some(GCP_US_CENTRAL1),
        server: "us-central1-aiplatform.googleapis.com",
        ttft_ms: 1200.0,
        tokens_per_s: 120.0,
        reasoning_share: 0.45,
        caches: true,
    },
    Model {
        provider: "gcp.vertex_ai",
        request: "gemini-2.5-flash",
        response: "gemini-2.5-flash",
        hosted_in: Some(GCP_US_CENTRAL1),
        server: "us-central1-aiplatform.googleapis.com",
        ttft_ms: 350.0,
        tokens_per_s: 220.0,
        reasoning_share: 0.2,
        caches: true,
    },
    // A fine-tune served by vLLM on CoreWeave through an OpenAI-compatible API: in no public price table, so it
    // shows up as unpriced (`price_source = 'unknown'`), as it would in a real fleet.
    Model {
        provider: "openai",
        request: "acme-llama-3.3-70b-support-ft",
        response: "acme-llama-3.3-70b-support-ft",
        hosted_in: Some(CW_US_EAST_04),
        server: "inference.us-east-04.acme.coreweave.cloud",
        ttft_ms: 250.0,
        tokens_per_s: 60.0,
        reasoning_share: 0.0,
        caches: false,
    },
    // Embeddings for memory search.
    Model {
        provider: "openai",
        request: "text-embedding-3-small",
        response: "text-embedding-3-small",
        hosted_in: None,
        server: "api.openai.com",
        ttft_ms: 60.0,
        tokens_per_s: 0.0,
        reasoning_share: 0.0,
        caches: false,
    },
];

/// Index into [`MODELS`] by request model and provider; panics on a typo (static data, covered by a test).
pub fn model(provider: &str, request: &str) -> &'static Model {
    MODELS
        .iter()
        .find(|m| m.provider == provider && m.request == request)
        .unwrap_or_else(|| panic!("no simulated model {provider}/{request}"))
}

/// The model the fleet calls when it cannot find a price: see [`MODELS`].
pub const UNKNOWN_MODEL: &str = "acme-llama-3.3-70b-support-ft";

/// A tool an agent can call, and what it talks to.
#[derive(Debug, Clone, Copy)]
pub struct Tool {
    /// `gen_ai.tool.name`.
    pub name: &'static str,
    /// `gen_ai.tool.type`.
    pub kind: &'static str,
    /// Median latency, ms.
    pub median_ms: f64,
    /// Share of calls that fail (`error.type`).
    pub error_rate: f64,
}

/// The tools in the fleet.
pub const TOOLS: &[Tool] = &[
    Tool { name: "lookup_order", kind: "function", median_ms: 80.0, error_rate: 0.01 },
    Tool { name: "search_web", kind: "extension", median_ms: 650.0, error_rate: 0.03 },
    Tool { name: "run_sql", kind: "function", median_ms: 220.0, error_rate: 0.02 },
    Tool { name: "create_ticket", kind: "function", median_ms: 140.0, error_rate: 0.01 },
    Tool { name: "run_tests", kind: "function", median_ms: 2400.0, error_rate: 0.08 },
    Tool { name: "read_file", kind: "function", median_ms: 25.0, error_rate: 0.005 },
    Tool { name: "send_email", kind: "function", median_ms: 300.0, error_rate: 0.01 },
    Tool { name: "get_invoice", kind: "function", median_ms: 110.0, error_rate: 0.01 },
];

/// A backend reached over the network from an agent: a document store (retrieval) or a vector store (memory).
#[derive(Debug, Clone, Copy)]
pub struct Backend {
    /// The backend's own service name (it is a traced service too: its server span is exported under it).
    pub service: &'static str,
    /// Where it runs.
    pub place: Place,
    /// `server.address`.
    pub server: &'static str,
    /// `gen_ai.data_source.id` / `db.collection.name`.
    pub source: &'static str,
    /// Median response size in bytes.
    pub response_bytes: f64,
}

/// Document stores used for retrieval: deliberately in other clouds than most of their callers.
pub const RETRIEVAL: &[Backend] = &[
    Backend {
        service: "docs-retrieval",
        place: AWS_US_WEST_2,
        server: "docs-retrieval.internal.acme.dev",
        source: "product-docs",
        response_bytes: 180_000.0,
    },
    Backend {
        service: "kb-search",
        place: GCP_EUROPE_WEST4,
        server: "kb-search.internal.acme.dev",
        source: "support-kb",
        response_bytes: 90_000.0,
    },
];

/// Vector stores used for memory search.
pub const MEMORY: &[Backend] = &[
    Backend {
        service: "agent-memory",
        place: AZURE_EASTUS,
        server: "agent-memory.internal.acme.dev",
        source: "agent-memory",
        response_bytes: 12_000.0,
    },
    Backend {
        service: "agent-memory",
        place: AWS_US_EAST_1,
        server: "agent-memory-use1.internal.acme.dev",
        source: "agent-memory",
        response_bytes: 12_000.0,
    },
];

/// One deployed agent service (one OTel resource).
#[derive(Debug, Clone, Copy)]
pub struct Service {
    /// `service.name`.
    pub name: &'static str,
    /// `service.version`.
    pub version: &'static str,
    /// Resource `cloud.provider` / `cloud.region`.
    pub place: Place,
    /// `deployment.environment.name`.
    pub environment: &'static str,
    /// `gen_ai.agent.name` of the agent it runs.
    pub agent: &'static str,
    /// The planning / answering models (provider, request model), picked with the given weights.
    pub models: &'static [(&'static str, &'static str, f64)],
    /// When a call's first token has not arrived after this many ms (about its p95), a copy goes to `hedge_to`;
    /// `None`: no hedging.
    pub hedge_after_ms: Option<f64>,
    /// The second provider's model for hedged copies.
    pub hedge_to: (&'static str, &'static str),
    /// The GenAI attribute names its instrumentation sends: some services are still on the deprecated ones
    /// (`gen_ai.system`, `gen_ai.usage.prompt_tokens` / `completion_tokens`, `session.id`).
    pub names: Names,
    /// The tools its agent uses.
    pub tools: &'static [&'static str],
    /// Index into [`RETRIEVAL`] and [`MEMORY`].
    pub retrieval: usize,
    /// Index into [`MEMORY`].
    pub memory: usize,
    /// Relative share of the fleet's sessions.
    pub weight: f64,
}

/// The fleet.
pub const SERVICES: &[Service] = &[
    Service {
        name: "support-agent",
        version: "2.14.1",
        place: AWS_US_EAST_1,
        environment: "production",
        agent: "support-triage",
        models: &[("openai", "gpt-4o-mini", 0.6), ("openai", "gpt-4o", 0.37), ("openai", UNKNOWN_MODEL, 0.03)],
        hedge_after_ms: Some(1000.0),
        hedge_to: ("anthropic", "claude-3-5-haiku-20241022"),
        names: Names::Current,
        tools: &["lookup_order", "create_ticket", "send_email"],
        retrieval: 1,
        memory: 1,
        weight: 3.0,
    },
    Service {
        name: "support-agent",
        version: "2.14.1",
        place: AWS_EU_WEST_1,
        environment: "production",
        agent: "support-triage",
        models: &[("openai", "gpt-4o-mini", 0.6), ("openai", "gpt-4o", 0.4)],
        hedge_after_ms: Some(1000.0),
        hedge_to: ("anthropic", "claude-3-5-haiku-20241022"),
        names: Names::Current,
        tools: &["lookup_order", "create_ticket", "send_email"],
        retrieval: 1,
        memory: 1,
        weight: 2.0,
    },
    Service {
        name: "research-agent",
        version: "0.9.3",
        place: GCP_US_CENTRAL1,
        environment: "production",
        agent: "deep-research",
        models: &[("gcp.vertex_ai", "gemini-2.5-pro", 0.5), ("gcp.vertex_ai", "gemini-2.5-flash", 0.5)],
        hedge_after_ms: Some(2500.0),
        hedge_to: ("openai", "gpt-4o"),
        names: Names::Current,
        tools: &["search_web", "read_file"],
        retrieval: 0,
        memory: 0,
        weight: 1.5,
    },
    Service {
        name: "research-agent",
        version: "0.9.3",
        place: GCP_EUROPE_WEST4,
        environment: "production",
        agent: "deep-research",
        models: &[("gcp.vertex_ai", "gemini-2.5-flash", 0.7), ("openai", "o3-mini", 0.3)],
        hedge_after_ms: None,
        hedge_to: ("openai", "gpt-4o"),
        names: Names::Current,
        tools: &["search_web", "read_file"],
        retrieval: 1,
        memory: 0,
        weight: 1.0,
    },
    Service {
        name: "billing-copilot",
        version: "1.3.0",
        place: AZURE_EASTUS,
        environment: "production",
        agent: "billing-assistant",
        models: &[("azure.ai.openai", "gpt-4o", 0.5), ("azure.ai.openai", "gpt-4o-mini", 0.5)],
        hedge_after_ms: Some(1100.0),
        hedge_to: ("openai", "gpt-4o"),
        names: Names::Current,
        tools: &["get_invoice", "run_sql", "send_email"],
        retrieval: 0,
        memory: 0,
        weight: 1.5,
    },
    Service {
        name: "billing-copilot",
        version: "1.2.7",
        place: AZURE_SWEDEN,
        environment: "production",
        agent: "billing-assistant",
        models: &[("openai", "gpt-4o", 0.5), ("openai", "gpt-4o-mini", 0.5)],
        hedge_after_ms: None,
        hedge_to: ("anthropic", "claude-sonnet-4-20250514"),
        names: Names::Deprecated,
        tools: &["get_invoice", "run_sql"],
        retrieval: 1,
        memory: 0,
        weight: 1.0,
    },
    Service {
        name: "code-agent",
        version: "3.0.0-rc.2",
        place: CW_US_EAST_04,
        environment: "production",
        agent: "code-fixer",
        models: &[
            ("anthropic", "claude-sonnet-4-20250514", 0.6),
            ("aws.bedrock", "anthropic.claude-3-5-sonnet-20240620-v1:0", 0.4),
        ],
        hedge_after_ms: Some(1500.0),
        hedge_to: ("openai", "gpt-4o"),
        names: Names::Current,
        tools: &["read_file", "run_tests", "run_sql"],
        retrieval: 0,
        memory: 1,
        weight: 1.5,
    },
    Service {
        name: "code-agent",
        version: "2.9.4",
        place: CW_US_WEST_01,
        environment: "staging",
        agent: "code-fixer",
        models: &[
            ("aws.bedrock", "anthropic.claude-3-5-sonnet-20240620-v1:0", 0.7),
            ("aws.bedrock", "amazon.nova-pro-v1:0", 0.3),
        ],
        hedge_after_ms: None,
        hedge_to: ("openai", "gpt-4o"),
        names: Names::Deprecated,
        tools: &["read_file", "run_tests"],
        retrieval: 0,
        memory: 1,
        weight: 0.7,
    },
    release_version(RELEASE_BEFORE),
    release_version(RELEASE_AFTER),
];

/// The release scenario ([`crate::Scenario::Release`]): one service in two versions, side by side in one region,
/// the same in everything but what [`RELEASE_SLOWER`] and [`RELEASE_LEANER`] say the new version changed. What the
/// release comparison (`release_compare`, the Release screen) must find, and find alone.
pub const RELEASE_SERVICE: &str = "checkout-agent";
/// The version before the release.
pub const RELEASE_BEFORE: &str = "4.1.0";
/// The release.
pub const RELEASE_AFTER: &str = "4.2.0";
/// The release's calls to this model (request model) take this many times as long (a new, slower code path).
pub const RELEASE_SLOWER: (&str, f64) = ("gpt-4o", 1.8);
/// The release's prompts to this model are this share of the ones before (a compressed prompt): fewer input
/// tokens, a cheaper call; the answers, and so every later prompt, stay the same.
pub const RELEASE_LEANER: (&str, f64) = ("gpt-4o-mini", 0.4);

/// One version of [`RELEASE_SERVICE`] (weight 0: only the release scenario sends it). No hedging, so the slower
/// model does not change the hedge rate, and a region no incident is drawn in.
const fn release_version(version: &'static str) -> Service {
    Service {
        name: RELEASE_SERVICE,
        version,
        place: AWS_EU_WEST_1,
        environment: "production",
        agent: "checkout-assistant",
        models: &[("openai", "gpt-4o", 0.5), ("openai", "gpt-4o-mini", 0.5)],
        hedge_after_ms: None,
        hedge_to: ("anthropic", "claude-3-5-haiku-20241022"),
        names: Names::Current,
        tools: &["lookup_order", "create_ticket"],
        retrieval: 1,
        memory: 1,
        weight: 0.0,
    }
}

/// Looks a service up by name and region; panics on a typo (static data).
pub fn service(name: &str, region: &str) -> &'static Service {
    SERVICES
        .iter()
        .find(|s| s.name == name && s.place.region == region)
        .unwrap_or_else(|| panic!("no simulated service {name} in {region}"))
}

/// Looks a tool up by name; panics on a typo (static data, covered by a test).
pub fn tool(name: &str) -> &'static Tool {
    TOOLS.iter().find(|t| t.name == name).unwrap_or_else(|| panic!("no simulated tool {name}"))
}

/// The backend services (retrieval and memory stores), each with the place it runs, deduplicated by
/// (name, place): each is a separate OTel resource.
pub fn backends() -> Vec<Backend> {
    let mut out: Vec<Backend> = Vec::new();
    for b in RETRIEVAL.iter().chain(MEMORY) {
        if !out.iter().any(|o| o.service == b.service && o.place == b.place) {
            out.push(*b);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reference_resolves() {
        for s in SERVICES {
            let total: f64 = s.models.iter().map(|m| m.2).sum();
            assert!((total - 1.0).abs() < 1e-9, "{} model weights sum to {total}", s.name);
            for (p, m, _) in s.models {
                model(p, m);
            }
            model(s.hedge_to.0, s.hedge_to.1);
            assert_ne!(s.hedge_to.0, s.models[0].0, "{}: a hedge goes to a second provider", s.name);
            for t in s.tools {
                tool(t);
            }
            assert!(s.retrieval < RETRIEVAL.len() && s.memory < MEMORY.len());
        }
        model("openai", "text-embedding-3-small");
        let clouds: Vec<_> = SERVICES.iter().map(|s| s.place.cloud).collect();
        for c in ["aws", "azure", "gcp", "coreweave"] {
            assert!(clouds.contains(&c), "no service on {c}");
        }
    }
}
