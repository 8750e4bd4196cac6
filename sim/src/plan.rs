//! Agent turns as data: one [`TracePlan`] per `invoke_agent` turn, generated from a seeded RNG.
//!
//! Generation is pure and deterministic: the n-th plan of a seed is always the same, whatever the pace at which
//! the runner asks for it, because the simulated clock (which decides when the regional incident is on) is
//! derived from the work generated so far, never from the wall clock. The exporter (`super::export`) only anchors
//! the plan's relative offsets at a wall-clock instant and hands the spans to the OpenTelemetry SDK.

use std::time::Duration;

use opentelemetry::logs::Severity;
use opentelemetry::trace::SpanKind;
use opentelemetry::{Array, KeyValue, StringValue, Value};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::fleet::{self, Backend, Model, Place, Service};

/// Who exports a span: an agent service or a backend (each is its own OTel resource).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Emitter {
    /// Index into [`fleet::SERVICES`].
    Service(usize),
    /// Index into [`fleet::backends()`].
    Backend(usize),
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

/// One span of a turn, with times relative to the turn's start.
#[derive(Debug, Clone)]
pub struct SpanPlan {
    /// The exporting service.
    pub emitter: Emitter,
    /// Non-zero span id.
    pub span_id: u64,
    /// The parent's span id; `None` for the turn's root.
    pub parent: Option<u64>,
    /// The parent lives in another service (propagated over the network).
    pub remote_parent: bool,
    /// Span name.
    pub name: String,
    /// Span kind.
    pub kind: SpanKind,
    /// Start, ns after the turn's start.
    pub start_ns: u64,
    /// End, ns after the turn's start.
    pub end_ns: u64,
    /// Error status description; `None` is status unset.
    pub error: Option<String>,
    /// Span attributes.
    pub attributes: Vec<KeyValue>,
    /// For GenAI calls: what to record in the client metrics.
    pub usage: Option<Usage>,
}

/// One log record of a turn.
#[derive(Debug, Clone)]
pub struct LogPlan {
    /// The emitting service.
    pub emitter: Emitter,
    /// The span it was logged in.
    pub span_id: u64,
    /// Time, ns after the turn's start.
    pub at_ns: u64,
    /// Severity.
    pub severity: Severity,
    /// Body.
    pub body: String,
    /// Attributes.
    pub attributes: Vec<KeyValue>,
}

/// One agent turn: an `invoke_agent` trace.
#[derive(Debug, Clone)]
pub struct TracePlan {
    /// Non-zero trace id.
    pub trace_id: u128,
    /// The turn opened a new conversation.
    pub new_session: bool,
    /// Spans, root first.
    pub spans: Vec<SpanPlan>,
    /// Log records.
    pub logs: Vec<LogPlan>,
    /// End of the last span, ns after the turn's start.
    pub duration_ns: u64,
    /// Hedged calls in this turn.
    pub hedges: u32,
    /// Spans with error status.
    pub errors: u32,
}

/// The regional incident: one region's calls slow down and stall for a while, every `period`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Incident {
    /// The region in trouble.
    pub place: Place,
    /// When the first incident starts (simulated time since the run's start).
    pub start: Duration,
    /// How long each lasts.
    pub length: Duration,
    /// Incidents repeat this often (long runs and load tests see more than one).
    pub period: Duration,
}

impl Incident {
    /// Whether the incident is on at simulated time `t`.
    pub fn active_at(&self, t: Duration) -> bool {
        if t < self.start {
            return false;
        }
        let into = (t - self.start).as_nanos() % self.period.as_nanos();
        into < self.length.as_nanos()
    }
}

/// Regions an incident can hit: each hosts an agent service and a model endpoint or a backend.
const INCIDENT_CANDIDATES: [usize; 4] = [0, 4, 2, 6];

/// An ongoing conversation.
#[derive(Debug, Clone)]
struct Conversation {
    id: String,
    service: usize,
    turns_left: u32,
    turn: u32,
    /// Tokens of history carried into the next turn's prompts.
    history_tokens: u64,
}

/// Turns out agent turns for a seed.
#[derive(Debug)]
pub struct Generator {
    rng: StdRng,
    conversations: Vec<Conversation>,
    concurrent: usize,
    incident: Incident,
    service_weights: Vec<f64>,
}

/// Per-call context: what slows a call down right now.
#[derive(Debug, Clone, Copy)]
struct Conditions {
    /// The incident is on now.
    incident_on: bool,
    incident: Place,
    /// The calling service runs in the incident region.
    caller_hit: bool,
}

impl Conditions {
    /// Latency multiplier and stall probability for a call to `dest` (None: a SaaS endpoint outside any cloud).
    fn degradation(&self, dest: Option<Place>) -> (f64, f64, f64) {
        let dest_hit = self.incident_on && dest == Some(self.incident);
        let hit = self.caller_hit || dest_hit;
        if hit {
            // (latency factor, stall probability, error-rate factor)
            (2.6, 0.07, 5.0)
        } else {
            (1.0, 0.004, 1.0)
        }
    }
}

const MS: f64 = 1_000_000.0;

impl Generator {
    /// A generator for `seed` keeping `concurrent_sessions` conversations open at once.
    pub fn new(seed: u64, concurrent_sessions: usize) -> Generator {
        let mut rng = StdRng::seed_from_u64(seed);
        let regions = fleet::SERVICES;
        let pick = INCIDENT_CANDIDATES[rng.random_range(0..INCIDENT_CANDIDATES.len())];
        let incident = Incident {
            place: regions[pick].place,
            start: Duration::from_secs(15),
            length: Duration::from_secs(75),
            period: Duration::from_secs(600),
        };
        Generator {
            rng,
            conversations: Vec::new(),
            concurrent: concurrent_sessions.max(1),
            incident,
            service_weights: fleet::SERVICES.iter().map(|s| s.weight).collect(),
        }
    }

    /// The incident schedule of this run.
    pub fn incident(&self) -> Incident {
        self.incident
    }

    fn hex_id(&mut self, bytes: usize) -> String {
        let mut s = String::with_capacity(bytes * 2);
        for _ in 0..bytes {
            s.push_str(&format!("{:02x}", self.rng.random::<u8>()));
        }
        s
    }

    fn span_id(&mut self) -> u64 {
        loop {
            let id = self.rng.random::<u64>();
            if id != 0 {
                return id;
            }
        }
    }

    /// exp(sigma * N(0,1)) * median: the log-normal that latencies and sizes follow.
    fn lognormal(&mut self, median: f64, sigma: f64) -> f64 {
        // Box-Muller; `1 - u` keeps ln away from 0.
        let u1: f64 = 1.0 - self.rng.random::<f64>();
        let u2: f64 = self.rng.random::<f64>();
        let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
        median * (sigma * z).exp()
    }

    fn weighted(&mut self, weights: &[f64]) -> usize {
        let total: f64 = weights.iter().sum();
        let mut x = self.rng.random::<f64>() * total;
        for (i, w) in weights.iter().enumerate() {
            if x < *w {
                return i;
            }
            x -= w;
        }
        weights.len() - 1
    }

    /// Picks (or opens) the conversation the next turn belongs to.
    fn conversation(&mut self) -> (usize, bool) {
        if self.conversations.len() < self.concurrent {
            let weights = self.service_weights.clone();
            let service = self.weighted(&weights);
            let id = format!("conv_{}", self.hex_id(12));
            // Geometric-ish: most conversations are short, a few run long.
            let turns = 1 + (self.lognormal(3.0, 0.8) as u32).min(40);
            self.conversations.push(Conversation { id, service, turns_left: turns, turn: 0, history_tokens: 0 });
            return (self.conversations.len() - 1, true);
        }
        (self.rng.random_range(0..self.conversations.len()), false)
    }

    /// The next agent turn, ending at simulated time `now` (since the run's start).
    pub fn next_trace(&mut self, now: Duration) -> TracePlan {
        let (ci, new_session) = self.conversation();
        let conv = self.conversations[ci].clone();
        let service_ix = conv.service;
        let service = &fleet::SERVICES[service_ix];
        let cond = Conditions {
            incident_on: self.incident.active_at(now),
            incident: self.incident.place,
            caller_hit: self.incident.active_at(now) && service.place == self.incident.place,
        };
        let mut trace_id = 0u128;
        while trace_id == 0 {
            trace_id = self.rng.random();
        }
        let mut turn = Turn {
            service_ix,
            service,
            session_id: conv.id.clone(),
            spans: Vec::new(),
            logs: Vec::new(),
            hedges: 0,
            cond,
        };
        let root_id = self.span_id();
        let mut cursor: u64 = (self.rng.random_range(1.0..6.0) * MS) as u64;

        let system_prompt = 1200 + self.rng.random_range(0..1800u64);
        let user_msg = 40 + self.rng.random_range(0..400u64);
        let mut context = system_prompt + conv.history_tokens + user_msg;
        let primary = self.pick_model(service);

        // Planning.
        let (end, out) = self.chat(&mut turn, root_id, cursor, primary, context, system_prompt, conv.turn, true);
        cursor = end;
        context += out;

        let steps = 1 + self.weighted(&[0.35, 0.35, 0.2, 0.1]);
        for _ in 0..steps {
            cursor += (self.rng.random_range(0.5..8.0) * MS) as u64;
            let kind = self.weighted(&[0.55, 0.2, 0.25]);
            let added = match kind {
                0 => self.tool_step(&mut turn, root_id, &mut cursor),
                1 => self.memory_step(&mut turn, root_id, &mut cursor),
                _ => self.retrieval_step(&mut turn, root_id, &mut cursor),
            };
            context += added;
            if self.rng.random_bool(0.25) {
                cursor += (self.rng.random_range(0.5..4.0) * MS) as u64;
                let (end, out) =
                    self.chat(&mut turn, root_id, cursor, primary, context, system_prompt, conv.turn, true);
                cursor = end;
                context += out;
            }
        }

        // Answer.
        cursor += (self.rng.random_range(0.5..4.0) * MS) as u64;
        let (end, answer) = self.chat(&mut turn, root_id, cursor, primary, context, system_prompt, conv.turn, false);
        // The root ends once the answer is back and any cancelled hedge copy has wound down.
        let last_child = turn.spans.iter().map(|s| s.end_ns).max().unwrap_or(end);
        cursor = end.max(last_child) + (self.rng.random_range(0.3..3.0) * MS) as u64;

        let errors_in_children = turn.spans.iter().filter(|s| s.error.is_some()).count();
        let mut root_attrs = vec![
            KeyValue::new("gen_ai.operation.name", "invoke_agent"),
            KeyValue::new("gen_ai.agent.name", service.agent),
            KeyValue::new("gen_ai.agent.id", format!("{}-{}", service.agent, service.place.region)),
            KeyValue::new("gen_ai.request.model", primary.request),
        ];
        root_attrs.push(provider_attr(service, primary.provider));
        root_attrs.push(session_attr(service, &conv.id));
        root_attrs.push(KeyValue::new("gen_ai.conversation.turn", conv.turn as i64 + 1));
        turn.spans.insert(
            0,
            SpanPlan {
                emitter: Emitter::Service(service_ix),
                span_id: root_id,
                parent: None,
                remote_parent: false,
                name: format!("invoke_agent {}", service.agent),
                kind: SpanKind::Internal,
                start_ns: 0,
                end_ns: cursor,
                error: None,
                attributes: root_attrs,
                usage: None,
            },
        );
        turn.logs.push(LogPlan {
            emitter: Emitter::Service(service_ix),
            span_id: root_id,
            at_ns: cursor,
            severity: Severity::Info,
            body: format!(
                "agent turn {} of conversation {} done: {} steps, {} context tokens, {} errors",
                conv.turn + 1,
                conv.id,
                steps,
                context,
                errors_in_children
            ),
            attributes: vec![
                KeyValue::new("gen_ai.agent.name", service.agent),
                KeyValue::new("event.name", "agent.turn.completed"),
            ],
        });

        // Carry the conversation forward (or close it).
        let c = &mut self.conversations[ci];
        c.turn += 1;
        c.history_tokens += user_msg + answer;
        c.turns_left -= 1;
        if c.turns_left == 0 {
            self.conversations.swap_remove(ci);
        }

        let errors = turn.spans.iter().filter(|s| s.error.is_some()).count() as u32;
        TracePlan {
            trace_id,
            new_session,
            duration_ns: turn.spans.iter().map(|s| s.end_ns).max().unwrap_or(cursor),
            hedges: turn.hedges,
            errors,
            spans: turn.spans,
            logs: turn.logs,
        }
    }

    fn pick_model(&mut self, service: &Service) -> &'static Model {
        let weights: Vec<f64> = service.models.iter().map(|m| m.2).collect();
        let (p, m, _) = service.models[self.weighted(&weights)];
        fleet::model(p, m)
    }

    /// One model call's latency (ns), time to first token (ns) and whether it stalled.
    fn call_latency(&mut self, model: &Model, output: u64, cond: &Conditions) -> (u64, u64, bool) {
        let (factor, stall_p, _) = cond.degradation(model.hosted_in);
        let ttft = self.lognormal(model.ttft_ms, 0.45) * factor;
        let stream = if model.tokens_per_s > 0.0 {
            output as f64 / model.tokens_per_s * 1000.0 * self.lognormal(1.0, 0.25) * factor
        } else {
            0.0
        };
        let stalled = self.rng.random_bool(stall_p);
        let stall = if stalled { self.rng.random_range(4_000.0..25_000.0) } else { 0.0 };
        (((ttft + stream + stall) * MS) as u64, ((ttft + stall) * MS) as u64, stalled)
    }

    /// A `chat` call (with a retry after a rate limit, and a hedged copy when it is slow). Returns the end of
    /// the answer that was used and its output tokens.
    #[allow(clippy::too_many_arguments)]
    fn chat(
        &mut self,
        turn: &mut Turn,
        parent: u64,
        start: u64,
        model: &'static Model,
        input: u64,
        system_prompt: u64,
        conv_turn: u32,
        planning: bool,
    ) -> (u64, u64) {
        let output =
            if planning { self.lognormal(180.0, 0.6) as u64 + 20 } else { self.lognormal(350.0, 0.55) as u64 + 30 };
        let (_, _, err_factor) = turn.cond.degradation(model.hosted_in);
        // Rate limits and upstream errors: the agent retries once after a back-off.
        let mut start = start;
        if self.rng.random_bool((0.012 * err_factor).min(0.5)) {
            let error_type = if self.rng.random_bool(0.7) { "429" } else { "503" };
            let took = (self.lognormal(120.0, 0.5) * MS) as u64;
            let id = self.span_id();
            let mut attrs = self.chat_attrs(turn.service, model, None, conv_turn, planning);
            attrs.push(KeyValue::new("error.type", error_type));
            attrs.push(KeyValue::new("http.response.status_code", error_type.parse::<i64>().unwrap_or(0)));
            let message = if error_type == "429" { "rate limit exceeded" } else { "upstream unavailable" };
            turn.logs.push(LogPlan {
                emitter: Emitter::Service(turn.service_ix),
                span_id: id,
                at_ns: start + took,
                severity: Severity::Warn,
                body: format!("{} {} call failed ({error_type} {message}); retrying", model.provider, model.request),
                attributes: vec![KeyValue::new("error.type", error_type)],
            });
            turn.spans.push(SpanPlan {
                emitter: Emitter::Service(turn.service_ix),
                span_id: id,
                parent: Some(parent),
                remote_parent: false,
                name: format!("chat {}", model.request),
                kind: SpanKind::Client,
                start_ns: start,
                end_ns: start + took,
                error: Some(message.to_string()),
                attributes: attrs,
                usage: Some(Usage {
                    operation: "chat",
                    provider: model.provider,
                    request_model: model.request,
                    response_model: model.response,
                    input_tokens: 0,
                    output_tokens: 0,
                    error_type: Some(error_type),
                }),
            });
            start += took + (self.rng.random_range(200.0..1500.0) * MS) as u64;
        }

        let (latency, ttft, stalled) = self.call_latency(model, output, &turn.cond);
        let tokens = self.tokens(model, input, system_prompt, conv_turn, output);
        let primary_id = self.span_id();

        // Hedge on time to first token: when no token has arrived after the service's threshold, a copy goes to a
        // second provider. Whichever starts answering first is used; the other is cancelled at that moment,
        // having consumed its prompt but produced nothing.
        let hedge = match turn.service.hedge_after_ms {
            Some(after) if (ttft as f64) > after * MS => {
                let hedge_model = fleet::model(turn.service.hedge_to.0, turn.service.hedge_to.1);
                let h_start = start + (after * MS) as u64;
                let (h_latency, h_ttft, _) = self.call_latency(hedge_model, output, &turn.cond);
                Some((hedge_model, h_start, h_latency, h_ttft))
            }
            _ => None,
        };
        let Some((hedge_model, h_start, h_latency, h_ttft)) = hedge else {
            if stalled {
                turn.logs.push(LogPlan {
                    emitter: Emitter::Service(turn.service_ix),
                    span_id: primary_id,
                    at_ns: start + latency,
                    severity: Severity::Warn,
                    body: format!("slow {} call: {} ms", model.request, latency / 1_000_000),
                    attributes: vec![KeyValue::new("gen_ai.provider.name", model.provider)],
                });
            }
            let span = self.chat_span(
                turn,
                primary_id,
                parent,
                start,
                latency,
                Some(ttft),
                model,
                &tokens,
                conv_turn,
                planning,
            );
            turn.spans.push(span);
            return (start + latency, output);
        };

        turn.hedges += 1;
        let hedge_id = format!("hdg_{}", self.hex_id(8));
        let primary_first = start + ttft;
        let hedge_first = h_start + h_ttft;
        let primary_won = primary_first <= hedge_first;
        let cancel_at = primary_first.min(hedge_first) + (self.rng.random_range(3.0..40.0) * MS) as u64;
        let hedge_tokens = self.tokens(hedge_model, input, system_prompt, conv_turn, output);
        let h_id = self.span_id();
        let copies = [
            (primary_id, model, start, latency, ttft, tokens, primary_won),
            (h_id, hedge_model, h_start, h_latency, h_ttft, hedge_tokens, !primary_won),
        ];
        let mut winner_end = 0;
        for (id, m, s, lat, first, mut tok, won) in copies {
            let span = if won {
                winner_end = s + lat;
                self.chat_span(turn, id, parent, s, lat, Some(first), m, &tok, conv_turn, planning)
            } else {
                tok.output = 0;
                tok.reasoning = 0;
                let mut span = self.chat_span(turn, id, parent, s, cancel_at - s, None, m, &tok, conv_turn, planning);
                span.error = Some("cancelled: the hedged copy answered first".to_string());
                span.attributes.push(KeyValue::new("error.type", "cancelled"));
                if let Some(u) = span.usage.as_mut() {
                    u.error_type = Some("cancelled");
                }
                span
            };
            let mut span = span;
            span.attributes.push(KeyValue::new("hedge.id", hedge_id.clone()));
            span.attributes.push(KeyValue::new("hedge.winner", won));
            turn.spans.push(span);
        }
        let (winner, loser) = if primary_won { (model, hedge_model) } else { (hedge_model, model) };
        turn.logs.push(LogPlan {
            emitter: Emitter::Service(turn.service_ix),
            span_id: primary_id,
            at_ns: cancel_at,
            severity: Severity::Info,
            body: format!(
                "hedged request {hedge_id}: {}/{} answered first, cancelled {}/{}",
                winner.provider, winner.request, loser.provider, loser.request
            ),
            attributes: vec![KeyValue::new("hedge.id", hedge_id)],
        });
        (winner_end, output)
    }

    fn tokens(&mut self, model: &Model, input: u64, system_prompt: u64, conv_turn: u32, output: u64) -> Tokens {
        // Cached prefix: the system prompt (shared by every conversation of the agent) and, after the first
        // turn, most of the history. Providers without prompt caching report none.
        let cache_read = if !model.caches {
            0
        } else if conv_turn == 0 {
            if self.rng.random_bool(0.7) { system_prompt } else { 0 }
        } else {
            ((input - system_prompt) as f64 * self.rng.random_range(0.5..0.9)) as u64 + system_prompt
        };
        let cache_read = cache_read.min(input);
        // Anthropic-style explicit cache writes for the part of the prompt not yet cached.
        let cache_creation = if model.provider == "anthropic" || model.request.starts_with("anthropic.") {
            ((input - cache_read) as f64 * 0.6) as u64
        } else {
            0
        };
        let reasoning = (output as f64 * model.reasoning_share * self.rng.random_range(1.0..3.0)) as u64;
        Tokens { input, output: output + reasoning, cache_read, cache_creation, reasoning }
    }

    fn chat_attrs(
        &mut self,
        service: &Service,
        model: &Model,
        tokens: Option<&Tokens>,
        conv_turn: u32,
        planning: bool,
    ) -> Vec<KeyValue> {
        let mut a = Vec::with_capacity(20);
        a.push(KeyValue::new("gen_ai.operation.name", "chat"));
        a.push(provider_attr(service, model.provider));
        a.push(KeyValue::new("gen_ai.request.model", model.request));
        a.push(KeyValue::new("gen_ai.request.max_tokens", if planning { 1024_i64 } else { 4096 }));
        a.push(KeyValue::new("gen_ai.request.temperature", if planning { 0.2 } else { 0.7 }));
        a.push(KeyValue::new("server.address", model.server));
        a.push(KeyValue::new("server.port", 443_i64));
        a.push(KeyValue::new("gen_ai.agent.name", service.agent));
        a.push(KeyValue::new("gen_ai.conversation.turn", conv_turn as i64 + 1));
        if let Some(t) = tokens {
            a.push(KeyValue::new("gen_ai.response.model", model.response));
            a.push(KeyValue::new("gen_ai.response.id", format!("resp_{}", self.hex_id(10))));
            let finish = if planning { "tool_calls" } else { "stop" };
            a.push(KeyValue::new(
                "gen_ai.response.finish_reasons",
                Value::Array(Array::String(vec![StringValue::from(finish)])),
            ));
            if service.legacy_names {
                a.push(KeyValue::new("gen_ai.usage.prompt_tokens", t.input as i64));
                a.push(KeyValue::new("gen_ai.usage.completion_tokens", t.output as i64));
                if model.caches {
                    // OpenLLMetry's name, from before the conventions had one.
                    a.push(KeyValue::new("gen_ai.usage.cache_read_input_tokens", t.cache_read as i64));
                }
            } else {
                a.push(KeyValue::new("gen_ai.usage.input_tokens", t.input as i64));
                a.push(KeyValue::new("gen_ai.usage.output_tokens", t.output as i64));
                if model.caches {
                    a.push(KeyValue::new("gen_ai.usage.cache_read.input_tokens", t.cache_read as i64));
                }
                if t.cache_creation > 0 {
                    a.push(KeyValue::new("gen_ai.usage.cache_creation.input_tokens", t.cache_creation as i64));
                }
                if t.reasoning > 0 {
                    a.push(KeyValue::new("gen_ai.usage.reasoning.output_tokens", t.reasoning as i64));
                }
            }
        }
        a
    }

    #[allow(clippy::too_many_arguments)]
    fn chat_span(
        &mut self,
        turn: &Turn,
        id: u64,
        parent: u64,
        start: u64,
        latency: u64,
        ttft: Option<u64>,
        model: &'static Model,
        tokens: &Tokens,
        conv_turn: u32,
        planning: bool,
    ) -> SpanPlan {
        let mut attrs = self.chat_attrs(turn.service, model, Some(tokens), conv_turn, planning);
        attrs.push(session_attr(turn.service, &turn.session_id));
        if let Some(ttft) = ttft {
            attrs.push(KeyValue::new("gen_ai.response.time_to_first_chunk", ttft as f64 / 1e9));
        }
        if let Some(dest) = model.hosted_in {
            // A cloud-hosted model: the span names where the call went, and its payload sizes (egress).
            attrs.push(KeyValue::new("cloud.provider", dest.cloud));
            attrs.push(KeyValue::new("cloud.region", dest.region));
            attrs.push(KeyValue::new("http.request.body.size", (tokens.input * 4 + 600) as i64));
            attrs.push(KeyValue::new("http.response.body.size", (tokens.output * 5 + 400) as i64));
        }
        SpanPlan {
            emitter: Emitter::Service(turn.service_ix),
            span_id: id,
            parent: Some(parent),
            remote_parent: false,
            name: format!("chat {}", model.request),
            kind: SpanKind::Client,
            start_ns: start,
            end_ns: start + latency,
            error: None,
            attributes: attrs,
            usage: Some(Usage {
                operation: "chat",
                provider: model.provider,
                request_model: model.request,
                response_model: model.response,
                input_tokens: tokens.input,
                output_tokens: tokens.output,
                error_type: None,
            }),
        }
    }

    /// `execute_tool`: returns the tokens its result adds to the context.
    fn tool_step(&mut self, turn: &mut Turn, parent: u64, cursor: &mut u64) -> u64 {
        let name = turn.service.tools[self.rng.random_range(0..turn.service.tools.len())];
        let tool = fleet::tool(name);
        let (factor, stall_p, err_factor) = turn.cond.degradation(Some(turn.service.place));
        let mut ms = self.lognormal(tool.median_ms, 0.6) * factor;
        let stalled = self.rng.random_bool(stall_p);
        if stalled {
            ms += self.rng.random_range(3_000.0..20_000.0);
        }
        let failed =
            stalled && self.rng.random_bool(0.3) || self.rng.random_bool((tool.error_rate * err_factor).min(0.5));
        let id = self.span_id();
        let mut attrs = vec![
            KeyValue::new("gen_ai.operation.name", "execute_tool"),
            KeyValue::new("gen_ai.tool.name", tool.name),
            KeyValue::new("gen_ai.tool.type", tool.kind),
            KeyValue::new("gen_ai.tool.call.id", format!("call_{}", self.hex_id(12))),
            KeyValue::new("gen_ai.agent.name", turn.service.agent),
            session_attr(turn.service, &turn.session_id),
        ];
        let error = if failed {
            let error_type = if stalled { "timeout" } else { "ToolExecutionError" };
            attrs.push(KeyValue::new("error.type", error_type));
            turn.logs.push(LogPlan {
                emitter: Emitter::Service(turn.service_ix),
                span_id: id,
                at_ns: *cursor + (ms * MS) as u64,
                severity: Severity::Error,
                body: format!("tool {} failed: {error_type}", tool.name),
                attributes: vec![KeyValue::new("gen_ai.tool.name", tool.name), KeyValue::new("error.type", error_type)],
            });
            Some(format!("tool {} failed: {error_type}", tool.name))
        } else {
            None
        };
        let start = *cursor;
        *cursor += (ms * MS) as u64;
        turn.spans.push(SpanPlan {
            emitter: Emitter::Service(turn.service_ix),
            span_id: id,
            parent: Some(parent),
            remote_parent: false,
            name: format!("execute_tool {}", tool.name),
            kind: SpanKind::Internal,
            start_ns: start,
            end_ns: *cursor,
            error,
            attributes: attrs,
            usage: None,
        });
        self.lognormal(400.0, 0.8) as u64
    }

    /// Memory search: an `execute_tool memory_search` span with an embeddings call and a vector-store query
    /// under it. Returns the tokens the memories add.
    fn memory_step(&mut self, turn: &mut Turn, parent: u64, cursor: &mut u64) -> u64 {
        let store = fleet::MEMORY[turn.service.memory];
        let backend_ix = backend_index(&store);
        let tool_id = self.span_id();
        let start = *cursor;
        let mut t = start + (self.rng.random_range(0.2..1.5) * MS) as u64;

        // Embed the query.
        let emb = fleet::model("openai", "text-embedding-3-small");
        let (emb_latency, _, _) = self.call_latency(emb, 0, &turn.cond);
        let emb_tokens = 12 + self.rng.random_range(0..200u64);
        let emb_id = self.span_id();
        turn.spans.push(SpanPlan {
            emitter: Emitter::Service(turn.service_ix),
            span_id: emb_id,
            parent: Some(tool_id),
            remote_parent: false,
            name: format!("embeddings {}", emb.request),
            kind: SpanKind::Client,
            start_ns: t,
            end_ns: t + emb_latency,
            error: None,
            attributes: vec![
                KeyValue::new("gen_ai.operation.name", "embeddings"),
                provider_attr(turn.service, emb.provider),
                KeyValue::new("gen_ai.request.model", emb.request),
                KeyValue::new("gen_ai.response.model", emb.response),
                if turn.service.legacy_names {
                    KeyValue::new("gen_ai.usage.prompt_tokens", emb_tokens as i64)
                } else {
                    KeyValue::new("gen_ai.usage.input_tokens", emb_tokens as i64)
                },
                KeyValue::new("gen_ai.embeddings.dimension.count", 1536_i64),
                KeyValue::new("server.address", emb.server),
                session_attr(turn.service, &turn.session_id),
            ],
            usage: Some(Usage {
                operation: "embeddings",
                provider: emb.provider,
                request_model: emb.request,
                response_model: emb.response,
                input_tokens: emb_tokens,
                output_tokens: 0,
                error_type: None,
            }),
        });
        t += emb_latency + (self.rng.random_range(0.1..1.0) * MS) as u64;

        // Query the vector store (a call to another service, often in another region or cloud).
        let (q_end, response_bytes) = self.remote_call(turn, tool_id, t, &store, backend_ix, RemoteKind::VectorSearch);
        let end = q_end + (self.rng.random_range(0.1..1.0) * MS) as u64;
        turn.spans.push(SpanPlan {
            emitter: Emitter::Service(turn.service_ix),
            span_id: tool_id,
            parent: Some(parent),
            remote_parent: false,
            name: "execute_tool memory_search".to_string(),
            kind: SpanKind::Internal,
            start_ns: start,
            end_ns: end,
            error: None,
            attributes: vec![
                KeyValue::new("gen_ai.operation.name", "execute_tool"),
                KeyValue::new("gen_ai.tool.name", "memory_search"),
                KeyValue::new("gen_ai.tool.type", "datastore"),
                KeyValue::new("gen_ai.tool.call.id", format!("call_{}", self.hex_id(12))),
                KeyValue::new("gen_ai.agent.name", turn.service.agent),
                session_attr(turn.service, &turn.session_id),
            ],
            usage: None,
        });
        *cursor = end;
        response_bytes / 6
    }

    /// Retrieval from a document store: a client span (with the destination's cloud and the body sizes) and the
    /// store's own server span. Returns the tokens the documents add.
    fn retrieval_step(&mut self, turn: &mut Turn, parent: u64, cursor: &mut u64) -> u64 {
        let store = fleet::RETRIEVAL[turn.service.retrieval];
        let backend_ix = backend_index(&store);
        let (end, response_bytes) = self.remote_call(turn, parent, *cursor, &store, backend_ix, RemoteKind::Retrieval);
        *cursor = end;
        (response_bytes / 8).min(24_000)
    }

    /// A call from the agent to a backend service: the client span in the agent, the server span in the backend.
    /// Returns the end of the client span and the response size.
    fn remote_call(
        &mut self,
        turn: &mut Turn,
        parent: u64,
        start: u64,
        store: &Backend,
        backend_ix: usize,
        kind: RemoteKind,
    ) -> (u64, u64) {
        let from = turn.service.place;
        let rtt_ms = if from == store.place {
            1.2
        } else if from.cloud == store.place.cloud {
            self.lognormal(45.0, 0.3)
        } else {
            self.lognormal(70.0, 0.4)
        };
        let (factor, stall_p, err_factor) = turn.cond.degradation(Some(store.place));
        let request_bytes = self.lognormal(2_000.0, 0.5) as u64 + 200;
        let response_bytes = self.lognormal(store.response_bytes, 0.9) as u64 + 500;
        let mut server_ms = self.lognormal(if kind == RemoteKind::Retrieval { 45.0 } else { 18.0 }, 0.6) * factor;
        if self.rng.random_bool(stall_p) {
            server_ms += self.rng.random_range(2_000.0..12_000.0);
        }
        // Transfer at ~40 MB/s across clouds, ~200 MB/s within one.
        let mb_per_s = if from.cloud == store.place.cloud { 200.0 } else { 40.0 };
        let transfer_ms = response_bytes as f64 / (mb_per_s * 1_000_000.0) * 1000.0;
        let failed = self.rng.random_bool((0.004 * err_factor).min(0.5));
        let client_id = self.span_id();
        let server_id = self.span_id();
        let half_rtt = (rtt_ms / 2.0 * MS) as u64;
        let server_start = start + half_rtt;
        let server_end = server_start + (server_ms * MS) as u64;
        let client_end = server_end + half_rtt + (transfer_ms * MS) as u64;
        let (name, route, op_attrs) = match kind {
            RemoteKind::Retrieval => (
                format!("retrieval {}", store.source),
                "/v1/search",
                vec![
                    KeyValue::new("gen_ai.operation.name", "retrieval"),
                    KeyValue::new("gen_ai.data_source.id", store.source),
                ],
            ),
            RemoteKind::VectorSearch => (
                format!("search {}", store.source),
                "/collections/{name}/points/search",
                vec![
                    KeyValue::new("db.system.name", "qdrant"),
                    KeyValue::new("db.operation.name", "search"),
                    KeyValue::new("db.collection.name", store.source),
                ],
            ),
        };
        let status: i64 = if failed { 503 } else { 200 };
        let mut attrs = op_attrs.clone();
        attrs.extend([
            KeyValue::new("http.request.method", "POST"),
            KeyValue::new("url.full", format!("https://{}{}", store.server, route.replace("{name}", store.source))),
            KeyValue::new("server.address", store.server),
            KeyValue::new("server.port", 443_i64),
            KeyValue::new("http.response.status_code", status),
            KeyValue::new("http.request.body.size", request_bytes as i64),
            KeyValue::new("http.response.body.size", if failed { 120 } else { response_bytes as i64 }),
            // The destination, on the span itself: the resource says where the caller runs.
            KeyValue::new("cloud.provider", store.place.cloud),
            KeyValue::new("cloud.region", store.place.region),
            session_attr(turn.service, &turn.session_id),
        ]);
        let error = if failed {
            attrs.push(KeyValue::new("error.type", "503"));
            turn.logs.push(LogPlan {
                emitter: Emitter::Service(turn.service_ix),
                span_id: client_id,
                at_ns: client_end,
                severity: Severity::Error,
                body: format!("{} answered 503 from {}", store.server, store.place.region),
                attributes: vec![KeyValue::new("error.type", "503")],
            });
            Some("503 Service Unavailable".to_string())
        } else {
            None
        };
        turn.spans.push(SpanPlan {
            emitter: Emitter::Service(turn.service_ix),
            span_id: client_id,
            parent: Some(parent),
            remote_parent: false,
            name,
            kind: SpanKind::Client,
            start_ns: start,
            end_ns: client_end,
            error: error.clone(),
            attributes: attrs,
            usage: None,
        });
        let mut server_attrs = op_attrs;
        server_attrs.extend([
            KeyValue::new("http.request.method", "POST"),
            KeyValue::new("http.route", route),
            KeyValue::new("http.response.status_code", status),
            KeyValue::new("http.request.body.size", request_bytes as i64),
            KeyValue::new("http.response.body.size", if failed { 120 } else { response_bytes as i64 }),
            KeyValue::new("client.address", format!("{}.{}.acme.dev", turn.service.name, from.region)),
        ]);
        if failed {
            server_attrs.push(KeyValue::new("error.type", "503"));
        }
        turn.spans.push(SpanPlan {
            emitter: Emitter::Backend(backend_ix),
            span_id: server_id,
            parent: Some(client_id),
            remote_parent: true,
            name: format!("POST {route}"),
            kind: SpanKind::Server,
            start_ns: server_start,
            end_ns: server_end,
            error,
            attributes: server_attrs,
            usage: None,
        });
        (client_end, response_bytes)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RemoteKind {
    Retrieval,
    VectorSearch,
}

/// Token counts of one call, as the provider reports them.
#[derive(Debug, Clone, Copy)]
struct Tokens {
    /// Including cached.
    input: u64,
    /// Including reasoning.
    output: u64,
    cache_read: u64,
    cache_creation: u64,
    reasoning: u64,
}

/// The turn being built.
struct Turn {
    service_ix: usize,
    service: &'static Service,
    session_id: String,
    spans: Vec<SpanPlan>,
    logs: Vec<LogPlan>,
    hedges: u32,
    cond: Conditions,
}

fn backend_index(b: &Backend) -> usize {
    fleet::backends()
        .iter()
        .position(|o| o.service == b.service && o.place == b.place)
        .expect("every backend is in fleet::backends()")
}

/// `gen_ai.provider.name`, or the deprecated `gen_ai.system` for services on the old conventions.
fn provider_attr(service: &Service, provider: &'static str) -> KeyValue {
    if service.legacy_names {
        KeyValue::new("gen_ai.system", provider)
    } else {
        KeyValue::new("gen_ai.provider.name", provider)
    }
}

/// `gen_ai.conversation.id`, or the generic `session.id` that older instrumentations set.
fn session_attr(service: &Service, id: &str) -> KeyValue {
    if service.legacy_names {
        KeyValue::new("session.id", id.to_string())
    } else {
        KeyValue::new("gen_ai.conversation.id", id.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr<'a>(s: &'a SpanPlan, key: &str) -> Option<&'a Value> {
        s.attributes.iter().find(|kv| kv.key.as_str() == key).map(|kv| &kv.value)
    }

    fn turns(seed: u64, n: usize) -> Vec<TracePlan> {
        let mut g = Generator::new(seed, 20);
        (0..n).map(|i| g.next_trace(Duration::from_millis(i as u64 * 50))).collect()
    }

    #[test]
    fn same_seed_same_turns_other_seed_other_turns() {
        let a = turns(7, 200);
        let b = turns(7, 200);
        let c = turns(8, 200);
        let key = |t: &TracePlan| {
            (t.trace_id, t.spans.iter().map(|s| (s.span_id, s.name.clone(), s.end_ns)).collect::<Vec<_>>())
        };
        assert!(a.iter().zip(&b).all(|(x, y)| key(x) == key(y)));
        assert!(a.iter().zip(&c).any(|(x, y)| key(x) != key(y)));
    }

    #[test]
    fn spans_form_one_tree_inside_the_root() {
        for t in turns(1, 500) {
            let root = &t.spans[0];
            assert!(root.parent.is_none() && root.name.starts_with("invoke_agent "));
            assert_eq!(t.spans.iter().filter(|s| s.parent.is_none()).count(), 1);
            for s in &t.spans[1..] {
                let p = t.spans.iter().find(|p| Some(p.span_id) == s.parent).expect("parent in the trace");
                assert!(s.start_ns < s.end_ns, "{} has no duration", s.name);
                // Children start inside the parent; a hedge loser may end after the root only if the root
                // waited for it, which it does not: the cancel lands before the root ends.
                assert!(s.start_ns >= p.start_ns, "{} starts before its parent", s.name);
                assert!(s.end_ns <= root.end_ns, "{} ends after the root", s.name);
            }
            let mut ids: Vec<u64> = t.spans.iter().map(|s| s.span_id).collect();
            ids.sort();
            ids.dedup();
            assert_eq!(ids.len(), t.spans.len());
        }
    }

    #[test]
    fn hedges_pair_a_winner_with_a_cancelled_loser_on_another_provider() {
        let all = turns(3, 3000);
        let mut hedged = 0;
        for t in &all {
            let mut by_id: std::collections::HashMap<String, Vec<&SpanPlan>> = Default::default();
            for s in &t.spans {
                if let Some(v) = attr(s, "hedge.id") {
                    by_id.entry(v.to_string()).or_default().push(s);
                }
            }
            for (_, copies) in by_id {
                hedged += 1;
                assert_eq!(copies.len(), 2);
                let winner: Vec<_> =
                    copies.iter().filter(|s| attr(s, "hedge.winner") == Some(&Value::Bool(true))).collect();
                assert_eq!(winner.len(), 1);
                let loser = copies.iter().find(|s| attr(s, "hedge.winner") == Some(&Value::Bool(false))).unwrap();
                // Cancelled once the winner's first token arrived: after both started, before the winner ended.
                assert!(loser.error.is_some() && loser.end_ns > winner[0].start_ns && loser.end_ns < winner[0].end_ns);
                assert_eq!(loser.usage.as_ref().unwrap().output_tokens, 0);
                assert_ne!(winner[0].usage.as_ref().unwrap().provider, loser.usage.as_ref().unwrap().provider);
            }
        }
        let chats: usize = all.iter().map(|t| t.spans.iter().filter(|s| s.name.starts_with("chat ")).count()).sum();
        assert!(hedged > 0 && hedged * 100 < chats * 20, "{hedged} hedges over {chats} chats");
    }

    #[test]
    fn the_fleet_mixes_everything_the_product_shows() {
        let all = turns(11, 2000);
        let spans: Vec<&SpanPlan> = all.iter().flat_map(|t| &t.spans).collect();
        let has = |key: &str| spans.iter().any(|s| attr(s, key).is_some());
        for key in [
            "gen_ai.provider.name",
            "gen_ai.system",
            "gen_ai.usage.input_tokens",
            "gen_ai.usage.prompt_tokens",
            "gen_ai.usage.cache_read.input_tokens",
            "gen_ai.usage.reasoning.output_tokens",
            "gen_ai.conversation.id",
            "session.id",
            "gen_ai.tool.name",
            "http.response.body.size",
            "error.type",
            "hedge.id",
        ] {
            assert!(has(key), "no span has {key}");
        }
        assert!(spans.iter().any(|s| attr(s, "gen_ai.request.model") == Some(&Value::from(fleet::UNKNOWN_MODEL))));
        assert!(spans.iter().any(|s| matches!(s.emitter, Emitter::Backend(_)) && s.remote_parent));
        // Heavy tail: p99 of chat latency well above its median.
        let mut lat: Vec<u64> =
            spans.iter().filter(|s| s.name.starts_with("chat ")).map(|s| s.end_ns - s.start_ns).collect();
        lat.sort();
        let p50 = lat[lat.len() / 2];
        let p99 = lat[lat.len() * 99 / 100];
        assert!(p99 > 4 * p50, "p50 {p50} p99 {p99}");
    }

    #[test]
    fn the_incident_lifts_its_region_while_it_lasts() {
        let mut g = Generator::new(5, 50);
        let incident = g.incident();
        let region_p99 = |g: &mut Generator, at: Duration| {
            let mut lat = Vec::new();
            for _ in 0..4000 {
                let t = g.next_trace(at);
                let service = match t.spans[0].emitter {
                    Emitter::Service(i) => fleet::SERVICES[i],
                    Emitter::Backend(_) => unreachable!(),
                };
                if service.place == incident.place {
                    lat.extend(t.spans.iter().filter(|s| s.kind == SpanKind::Client).map(|s| s.end_ns - s.start_ns));
                }
            }
            lat.sort();
            lat[lat.len() * 99 / 100]
        };
        let before = region_p99(&mut g, Duration::from_secs(1));
        let during = region_p99(&mut g, incident.start + Duration::from_secs(1));
        assert!(during > 2 * before, "p99 before {before} during {during}");
        assert!(!incident.active_at(incident.start + incident.length));
        assert!(incident.active_at(incident.start + incident.period));
    }
}
