//! Agent turns as data: one [`TracePlan`] per `invoke_agent` turn, generated from a seeded RNG.
//!
//! Generation is pure and deterministic: the n-th plan of a seed is always the same, whatever the pace at which
//! the runner asks for it, because the simulated clock (which decides when the regional incident is on) is
//! derived from the work generated so far, never from the wall clock. The exporter ([`crate::export`]) only anchors
//! the plan's relative offsets at a wall-clock instant and hands the spans to the OpenTelemetry SDK.

use std::ops::Range;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::logs::Severity;
use opentelemetry::trace::SpanKind;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use tailscope_core::keys::span as key;

use crate::fleet::{self, Backend, Model, Place, Service};
use crate::genai::{AgentTurn, ChatCall, Tokens, ToolCall, Usage};

/// Who exports a span: an agent service or a backend (each is its own OTel resource).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Emitter {
    /// Index into [`fleet::SERVICES`].
    Service(usize),
    /// Index into [`fleet::backends()`].
    Backend(usize),
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
    /// The calling service is the release of the release scenario ([`fleet::RELEASE_AFTER`]).
    release: bool,
}

impl Conditions {
    /// How many times as long the caller's calls to `model` take for what its version changed.
    fn release_latency(&self, model: &Model) -> f64 {
        if self.release && model.request == fleet::RELEASE_SLOWER.0 { fleet::RELEASE_SLOWER.1 } else { 1.0 }
    }

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

    /// The generator for `scenario`: the release scenario opens its conversations on the two versions of
    /// [`fleet::RELEASE_SERVICE`] alike, and on no other service.
    pub fn scenario(mut self, scenario: crate::Scenario) -> Generator {
        self.service_weights = fleet::SERVICES
            .iter()
            .map(|s| match scenario {
                crate::Scenario::Fleet => s.weight,
                crate::Scenario::Release => f64::from(u8::from(s.name == fleet::RELEASE_SERVICE)),
            })
            .collect();
        self
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

    /// A gap drawn uniformly from `ms` milliseconds, in ns.
    fn pause(&mut self, ms: Range<f64>) -> u64 {
        (self.rng.random_range(ms) * MS) as u64
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
        let service = &fleet::SERVICES[conv.service];
        let incident_on = self.incident.active_at(now);
        let cond = Conditions {
            incident_on,
            incident: self.incident.place,
            caller_hit: incident_on && service.place == self.incident.place,
            release: service.name == fleet::RELEASE_SERVICE && service.version == fleet::RELEASE_AFTER,
        };
        let mut trace_id = 0u128;
        while trace_id == 0 {
            trace_id = self.rng.random();
        }
        let root_id = self.span_id();
        let mut cursor = self.pause(1.0..6.0);
        let system_prompt = 1200 + self.rng.random_range(0..1800u64);
        let user_msg = 40 + self.rng.random_range(0..400u64);
        let mut context = system_prompt + conv.history_tokens + user_msg;
        let primary = self.pick_model(service);
        let mut turn = Turn {
            service_ix: conv.service,
            service,
            session_id: conv.id.clone(),
            conv_turn: conv.turn,
            root_id,
            system_prompt,
            spans: Vec::new(),
            logs: Vec::new(),
            hedges: 0,
            cond,
        };

        // Planning.
        let (end, out) = self.chat(&mut turn, cursor, primary, context, Purpose::Planning);
        cursor = end;
        context += out;

        let steps = 1 + self.weighted(&[0.35, 0.35, 0.2, 0.1]);
        for _ in 0..steps {
            cursor += self.pause(0.5..8.0);
            context += match self.weighted(&[0.55, 0.2, 0.25]) {
                0 => self.tool_step(&mut turn, &mut cursor),
                1 => self.memory_step(&mut turn, &mut cursor),
                _ => self.retrieval_step(&mut turn, &mut cursor),
            };
            if self.rng.random_bool(0.25) {
                cursor += self.pause(0.5..4.0);
                let (end, out) = self.chat(&mut turn, cursor, primary, context, Purpose::Planning);
                cursor = end;
                context += out;
            }
        }

        // Answer.
        cursor += self.pause(0.5..4.0);
        let (end, answer) = self.chat(&mut turn, cursor, primary, context, Purpose::Answer);
        // The root ends once the answer is back and any cancelled hedge copy has wound down.
        let last_child = turn.spans.iter().map(|s| s.end_ns).max().unwrap_or(end);
        let root_end = end.max(last_child) + self.pause(0.3..3.0);
        turn.close(primary, root_end, steps, context);

        // Carry the conversation forward (or close it).
        let c = &mut self.conversations[ci];
        c.turn += 1;
        c.history_tokens += user_msg + answer;
        c.turns_left -= 1;
        if c.turns_left == 0 {
            self.conversations.swap_remove(ci);
        }
        turn.into_plan(trace_id, new_session)
    }

    fn pick_model(&mut self, service: &Service) -> &'static Model {
        let weights: Vec<f64> = service.models.iter().map(|m| m.2).collect();
        let (p, m, _) = service.models[self.weighted(&weights)];
        fleet::model(p, m)
    }

    /// One model call's timing (latency, time to first token) and whether it stalled.
    fn call_latency(&mut self, model: &'static Model, start: u64, output: u64, cond: &Conditions) -> (Timing, bool) {
        let (factor, stall_p, _) = cond.degradation(model.hosted_in);
        let factor = factor * cond.release_latency(model);
        let ttft = self.lognormal(model.ttft_ms, 0.45) * factor;
        let stream = if model.tokens_per_s > 0.0 {
            output as f64 / model.tokens_per_s * 1000.0 * self.lognormal(1.0, 0.25) * factor
        } else {
            0.0
        };
        let stalled = self.rng.random_bool(stall_p);
        let stall = if stalled { self.rng.random_range(4_000.0..25_000.0) } else { 0.0 };
        let timing =
            Timing { model, start, latency: ((ttft + stream + stall) * MS) as u64, ttft: ((ttft + stall) * MS) as u64 };
        (timing, stalled)
    }

    /// A `chat` call under the turn's root (with a retry after a rate limit, and a hedged copy when it is slow).
    /// Returns the end of the answer that was used and its output tokens.
    fn chat(&mut self, turn: &mut Turn, start: u64, model: &'static Model, input: u64, purpose: Purpose) -> (u64, u64) {
        let output = match purpose {
            Purpose::Planning => self.lognormal(180.0, 0.6) as u64 + 20,
            Purpose::Answer => self.lognormal(350.0, 0.55) as u64 + 30,
        };
        let prompt = Prompt { input, output, purpose };
        let start = self.failed_attempt(turn, start, model, purpose);
        let (timing, stalled) = self.call_latency(model, start, output, &turn.cond);
        let tokens = self.tokens(model, turn, prompt);
        let primary = Attempt { id: self.span_id(), timing, tokens };

        // Hedge on time to first token: when no token has arrived after the service's threshold, a copy goes to a
        // second provider. Whichever starts answering first is used; the other is cancelled at that moment,
        // having consumed its prompt but produced nothing.
        let hedge = match turn.service.hedge_after_ms {
            Some(after) if (timing.ttft as f64) > after * MS => {
                let hedge_model = fleet::model(turn.service.hedge_to.0, turn.service.hedge_to.1);
                Some(self.call_latency(hedge_model, start + (after * MS) as u64, output, &turn.cond).0)
            }
            _ => None,
        };
        let Some(copy) = hedge else {
            if stalled {
                turn.log(
                    primary.id,
                    start + timing.latency,
                    Severity::Warn,
                    format!("slow {} call: {} ms", model.request, timing.latency / 1_000_000),
                    vec![KeyValue::new(key::GEN_AI_PROVIDER, model.provider)],
                );
            }
            let span = self.chat_span(turn, &primary, purpose, Outcome::Answered);
            turn.spans.push(span);
            return (start + timing.latency, output);
        };
        (self.hedged(turn, primary, copy, prompt), output)
    }

    /// Rate limits and upstream errors: now and then the first attempt of a call fails, and the agent retries
    /// once after a back-off. Returns when the attempt that goes through starts.
    fn failed_attempt(&mut self, turn: &mut Turn, start: u64, model: &'static Model, purpose: Purpose) -> u64 {
        let (_, _, err_factor) = turn.cond.degradation(model.hosted_in);
        if !self.rng.random_bool((0.012 * err_factor).min(0.5)) {
            return start;
        }
        let error_type = if self.rng.random_bool(0.7) { "429" } else { "503" };
        let took = (self.lognormal(120.0, 0.5) * MS) as u64;
        let id = self.span_id();
        let message = if error_type == "429" { "rate limit exceeded" } else { "upstream unavailable" };
        turn.log(
            id,
            start + took,
            Severity::Warn,
            format!("{} {} call failed ({error_type} {message}); retrying", model.provider, model.request),
            vec![KeyValue::new(key::ERROR_TYPE, error_type)],
        );
        // Without the conversation id, as the fleet has always sent its failed attempts.
        let call = turn.chat_call(model, purpose).error(error_type);
        let mut span = turn.span(id, turn.root_id, call.span_name(), SpanKind::Client, start..start + took);
        span.attributes = call.attributes();
        span.attributes.push(KeyValue::new("http.response.status_code", error_type.parse::<i64>().unwrap_or(0)));
        span.error = Some(message.to_string());
        span.usage = Some(call.usage());
        turn.spans.push(span);
        start + took + self.pause(200.0..1500.0)
    }

    /// Both copies of a hedged call: the one whose first token came first answers, the other is cancelled a few
    /// ms later. Returns the end of the answer.
    fn hedged(&mut self, turn: &mut Turn, primary: Attempt, copy: Timing, prompt: Prompt) -> u64 {
        turn.hedges += 1;
        let hedge_id = format!("hdg_{}", self.hex_id(8));
        let primary_first = primary.timing.start + primary.timing.ttft;
        let hedge_first = copy.start + copy.ttft;
        let primary_won = primary_first <= hedge_first;
        let cancel_at = primary_first.min(hedge_first) + self.pause(3.0..40.0);
        let tokens = self.tokens(copy.model, turn, prompt);
        let hedge = Attempt { id: self.span_id(), timing: copy, tokens };
        for (attempt, won) in [(&primary, primary_won), (&hedge, !primary_won)] {
            let outcome = if won { Outcome::Answered } else { Outcome::Cancelled(cancel_at) };
            let mut span = self.chat_span(turn, attempt, prompt.purpose, outcome);
            span.attributes.push(KeyValue::new(key::HEDGE_ID, hedge_id.clone()));
            span.attributes.push(KeyValue::new(key::HEDGE_WINNER, won));
            turn.spans.push(span);
        }
        let (winner, loser) = if primary_won { (&primary, &hedge) } else { (&hedge, &primary) };
        let (w, l) = (winner.timing.model, loser.timing.model);
        turn.log(
            primary.id,
            cancel_at,
            Severity::Info,
            format!(
                "hedged request {hedge_id}: {}/{} answered first, cancelled {}/{}",
                w.provider, w.request, l.provider, l.request
            ),
            vec![KeyValue::new(key::HEDGE_ID, hedge_id)],
        );
        winner.timing.start + winner.timing.latency
    }

    fn tokens(&mut self, model: &Model, turn: &Turn, prompt: Prompt) -> Tokens {
        let (input, system_prompt) = (prompt.input, turn.system_prompt);
        // Cached prefix: the system prompt (shared by every conversation of the agent) and, after the first
        // turn, most of the history. Providers without prompt caching report none.
        let cache_read = if !model.caches {
            0
        } else if turn.conv_turn == 0 {
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
        let reasoning = (prompt.output as f64 * model.reasoning_share * self.rng.random_range(1.0..3.0)) as u64;
        let tokens = Tokens { input, output: prompt.output + reasoning, cache_read, cache_creation, reasoning };
        if turn.cond.release && model.request == fleet::RELEASE_LEANER.0 {
            // The compressed prompt: every input count shrinks alike; the answer (and so the context) does not.
            let lean = |n: u64| (n as f64 * fleet::RELEASE_LEANER.1) as u64;
            return Tokens {
                input: lean(tokens.input),
                cache_read: lean(tokens.cache_read),
                cache_creation: lean(tokens.cache_creation),
                ..tokens
            };
        }
        tokens
    }

    /// The client span of one copy of a chat call.
    fn chat_span(&mut self, turn: &Turn, attempt: &Attempt, purpose: Purpose, outcome: Outcome) -> SpanPlan {
        let t = attempt.timing;
        let response_id = format!("resp_{}", self.hex_id(10));
        let call = turn.chat_call(t.model, purpose).conversation(&turn.session_id);
        let (call, end, error) = match outcome {
            Outcome::Answered => (
                call.response(response_id, purpose.finish_reason(), attempt.tokens)
                    .time_to_first_chunk(t.ttft as f64 / 1e9),
                t.start + t.latency,
                None,
            ),
            Outcome::Cancelled(at) => {
                // The prompt was consumed; nothing came out.
                let tokens = Tokens { output: 0, reasoning: 0, ..attempt.tokens };
                let call = call.response(response_id, purpose.finish_reason(), tokens).error("cancelled");
                (call, at, Some("cancelled: the hedged copy answered first".to_string()))
            }
        };
        let mut span = turn.span(attempt.id, turn.root_id, call.span_name(), SpanKind::Client, t.start..end);
        span.attributes = call.attributes();
        span.usage = Some(call.usage());
        span.error = error;
        span
    }

    /// `execute_tool`: returns the tokens its result adds to the context.
    fn tool_step(&mut self, turn: &mut Turn, cursor: &mut u64) -> u64 {
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
        let mut call = turn.tool_call(tool.name, tool.kind, format!("call_{}", self.hex_id(12)));
        let start = *cursor;
        *cursor += (ms * MS) as u64;
        let error = failed.then(|| {
            let error_type = if stalled { "timeout" } else { "ToolExecutionError" };
            call = call.clone().error(error_type);
            turn.log(
                id,
                *cursor,
                Severity::Error,
                format!("tool {} failed: {error_type}", tool.name),
                vec![KeyValue::new(key::TOOL_NAME, tool.name), KeyValue::new(key::ERROR_TYPE, error_type)],
            );
            format!("tool {} failed: {error_type}", tool.name)
        });
        let mut span = turn.span(id, turn.root_id, call.span_name(), SpanKind::Internal, start..*cursor);
        span.attributes = call.attributes();
        span.error = error;
        turn.spans.push(span);
        self.lognormal(400.0, 0.8) as u64
    }

    /// Memory search: an `execute_tool memory_search` span with an embeddings call and a vector-store query
    /// under it. Returns the tokens the memories add.
    fn memory_step(&mut self, turn: &mut Turn, cursor: &mut u64) -> u64 {
        let store = fleet::MEMORY[turn.service.memory];
        let tool_id = self.span_id();
        let start = *cursor;
        let mut t = start + self.pause(0.2..1.5);

        // Embed the query.
        let emb = fleet::model("openai", "text-embedding-3-small");
        let (emb_timing, _) = self.call_latency(emb, t, 0, &turn.cond);
        let emb_tokens = 12 + self.rng.random_range(0..200u64);
        let emb_id = self.span_id();
        let span = turn.embeddings_span(emb_id, tool_id, &emb_timing, emb_tokens);
        turn.spans.push(span);
        t += emb_timing.latency + self.pause(0.1..1.0);

        // Query the vector store (a call to another service, often in another region or cloud).
        let (q_end, response_bytes) = self.remote_call(turn, tool_id, t, &store, RemoteKind::VectorSearch);
        let end = q_end + self.pause(0.1..1.0);
        let call = turn.tool_call("memory_search", "datastore", format!("call_{}", self.hex_id(12)));
        let mut span = turn.span(tool_id, turn.root_id, call.span_name(), SpanKind::Internal, start..end);
        span.attributes = call.attributes();
        turn.spans.push(span);
        *cursor = end;
        response_bytes / 6
    }

    /// Retrieval from a document store: a client span (with the destination's cloud and the body sizes) and the
    /// store's own server span. Returns the tokens the documents add.
    fn retrieval_step(&mut self, turn: &mut Turn, cursor: &mut u64) -> u64 {
        let store = fleet::RETRIEVAL[turn.service.retrieval];
        let (end, response_bytes) = self.remote_call(turn, turn.root_id, *cursor, &store, RemoteKind::Retrieval);
        *cursor = end;
        (response_bytes / 8).min(24_000)
    }

    /// How one request to a backend goes: round trip, sizes, server time, transfer and failure.
    fn exchange(&mut self, turn: &Turn, store: &Backend, kind: RemoteKind) -> Exchange {
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
        Exchange {
            half_rtt: (rtt_ms / 2.0 * MS) as u64,
            server: (server_ms * MS) as u64,
            transfer: (transfer_ms * MS) as u64,
            request_bytes,
            response_bytes,
            failed,
        }
    }

    /// A call from the agent to a backend service: the client span in the agent, the server span in the backend.
    /// Returns the end of the client span and the response size.
    fn remote_call(
        &mut self,
        turn: &mut Turn,
        parent: u64,
        start: u64,
        store: &Backend,
        kind: RemoteKind,
    ) -> (u64, u64) {
        let x = self.exchange(turn, store, kind);
        let client_id = self.span_id();
        let server_id = self.span_id();
        let server_start = start + x.half_rtt;
        let server_end = server_start + x.server;
        let client_end = server_end + x.half_rtt + x.transfer;
        let (name, route, op_attrs) = kind.operation(store);
        let status: i64 = if x.failed { 503 } else { 200 };
        let response_size = if x.failed { 120 } else { x.response_bytes as i64 };
        let mut client = turn.span(client_id, parent, name, SpanKind::Client, start..client_end);
        client.attributes = op_attrs.clone();
        client.attributes.extend([
            KeyValue::new("http.request.method", "POST"),
            KeyValue::new("url.full", format!("https://{}{}", store.server, route.replace("{name}", store.source))),
            KeyValue::new(key::SERVER_ADDRESS, store.server),
            KeyValue::new("server.port", 443_i64),
            KeyValue::new("http.response.status_code", status),
            KeyValue::new(key::REQUEST_BODY_SIZE, x.request_bytes as i64),
            KeyValue::new(key::RESPONSE_BODY_SIZE, response_size),
            // The destination, on the span itself: the resource says where the caller runs.
            KeyValue::new(key::PEER_CLOUD_PROVIDER, store.place.cloud),
            KeyValue::new(key::PEER_CLOUD_REGION, store.place.region),
            turn.service.names.conversation(&turn.session_id),
        ]);
        let mut server =
            turn.span(server_id, client_id, format!("POST {route}"), SpanKind::Server, server_start..server_end);
        server.emitter = Emitter::Backend(backend_index(store));
        server.remote_parent = true;
        server.attributes = op_attrs;
        server.attributes.extend([
            KeyValue::new("http.request.method", "POST"),
            KeyValue::new("http.route", route),
            KeyValue::new("http.response.status_code", status),
            KeyValue::new(key::REQUEST_BODY_SIZE, x.request_bytes as i64),
            KeyValue::new(key::RESPONSE_BODY_SIZE, response_size),
            KeyValue::new("client.address", format!("{}.{}.acme.dev", turn.service.name, turn.service.place.region)),
        ]);
        if x.failed {
            client.attributes.push(KeyValue::new(key::ERROR_TYPE, "503"));
            server.attributes.push(KeyValue::new(key::ERROR_TYPE, "503"));
            client.error = Some("503 Service Unavailable".to_string());
            server.error = client.error.clone();
            turn.log(
                client_id,
                client_end,
                Severity::Error,
                format!("{} answered 503 from {}", store.server, store.place.region),
                vec![KeyValue::new(key::ERROR_TYPE, "503")],
            );
        }
        turn.spans.push(client);
        turn.spans.push(server);
        (client_end, x.response_bytes)
    }
}

/// What a chat call is for: planning the next step (it ends in tool calls) or answering the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    Planning,
    Answer,
}

impl Purpose {
    fn max_tokens(self) -> i64 {
        match self {
            Purpose::Planning => 1024,
            Purpose::Answer => 4096,
        }
    }

    fn temperature(self) -> f64 {
        match self {
            Purpose::Planning => 0.2,
            Purpose::Answer => 0.7,
        }
    }

    fn finish_reason(self) -> &'static str {
        match self {
            Purpose::Planning => "tool_calls",
            Purpose::Answer => "stop",
        }
    }
}

/// One chat request: its prompt's size, the answer's length and what it is for.
#[derive(Debug, Clone, Copy)]
struct Prompt {
    input: u64,
    output: u64,
    purpose: Purpose,
}

/// When one copy of a chat call ran, in ns from the turn's start.
#[derive(Debug, Clone, Copy)]
struct Timing {
    model: &'static Model,
    start: u64,
    latency: u64,
    /// Time to first token.
    ttft: u64,
}

/// One copy of a chat call: its span id, timing and token usage.
#[derive(Debug, Clone, Copy)]
struct Attempt {
    id: u64,
    timing: Timing,
    tokens: Tokens,
}

/// How a copy of a chat call ended.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    Answered,
    /// Cancelled at this time (ns from the turn's start) because the other copy answered first.
    Cancelled(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RemoteKind {
    Retrieval,
    VectorSearch,
}

impl RemoteKind {
    /// The client span's name, the server's route, and the attributes the client and server spans share.
    fn operation(self, store: &Backend) -> (String, &'static str, Vec<KeyValue>) {
        match self {
            RemoteKind::Retrieval => (
                format!("retrieval {}", store.source),
                "/v1/search",
                vec![
                    KeyValue::new(key::GEN_AI_OPERATION, "retrieval"),
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
        }
    }
}

/// One request to a backend, times in ns.
#[derive(Debug, Clone, Copy)]
struct Exchange {
    half_rtt: u64,
    server: u64,
    transfer: u64,
    request_bytes: u64,
    response_bytes: u64,
    failed: bool,
}

/// The turn being built.
struct Turn {
    service_ix: usize,
    service: &'static Service,
    session_id: String,
    /// The conversation's turn, from 0.
    conv_turn: u32,
    root_id: u64,
    /// Tokens of the agent's system prompt, the cacheable prefix of every prompt.
    system_prompt: u64,
    spans: Vec<SpanPlan>,
    logs: Vec<LogPlan>,
    hedges: u32,
    cond: Conditions,
}

impl Turn {
    /// A span of the turn's agent service, without attributes yet.
    fn span(&self, id: u64, parent: u64, name: String, kind: SpanKind, time: Range<u64>) -> SpanPlan {
        SpanPlan {
            emitter: Emitter::Service(self.service_ix),
            span_id: id,
            parent: Some(parent),
            remote_parent: false,
            name,
            kind,
            start_ns: time.start,
            end_ns: time.end,
            error: None,
            attributes: Vec::new(),
            usage: None,
        }
    }

    /// A log record of the turn's agent service, in span `span_id`.
    fn log(&mut self, span_id: u64, at_ns: u64, severity: Severity, body: String, attributes: Vec<KeyValue>) {
        self.logs.push(LogPlan {
            emitter: Emitter::Service(self.service_ix),
            span_id,
            at_ns,
            severity,
            body,
            attributes,
        });
    }

    /// A chat call by this turn's agent, before its outcome is known.
    fn chat_call(&self, model: &'static Model, purpose: Purpose) -> ChatCall {
        ChatCall::new(model)
            .names(self.service.names)
            .agent(self.service.agent)
            .turn(self.conv_turn + 1)
            .request(purpose.max_tokens(), purpose.temperature())
    }

    /// A tool call by this turn's agent.
    fn tool_call(&self, name: &'static str, kind: &'static str, call_id: String) -> ToolCall {
        ToolCall::new(name, kind, call_id)
            .names(self.service.names)
            .conversation(&self.session_id)
            .agent(self.service.agent)
    }

    /// The embeddings call of a memory search.
    fn embeddings_span(&self, id: u64, parent: u64, timing: &Timing, tokens: u64) -> SpanPlan {
        let model = timing.model;
        let names = self.service.names;
        let name = format!("embeddings {}", model.request);
        let mut span = self.span(id, parent, name, SpanKind::Client, timing.start..timing.start + timing.latency);
        span.attributes = vec![
            KeyValue::new(key::GEN_AI_OPERATION, "embeddings"),
            names.provider(model.provider),
            KeyValue::new(key::REQUEST_MODEL, model.request),
            KeyValue::new(key::RESPONSE_MODEL, model.response),
            names.input_tokens(tokens),
            KeyValue::new("gen_ai.embeddings.dimension.count", 1536_i64),
            KeyValue::new(key::SERVER_ADDRESS, model.server),
            names.conversation(&self.session_id),
        ];
        span.usage = Some(Usage {
            operation: "embeddings",
            provider: model.provider,
            request_model: model.request,
            response_model: model.response,
            input_tokens: tokens,
            output_tokens: 0,
            error_type: None,
        });
        span
    }

    /// Puts the `invoke_agent` root, ending at `end`, before the turn's other spans, and logs the turn's end.
    fn close(&mut self, model: &'static Model, end: u64, steps: usize, context: u64) {
        let errors_in_children = self.spans.iter().filter(|s| s.error.is_some()).count();
        let service = self.service;
        let root = AgentTurn::new(service.agent, format!("{}-{}", service.agent, service.place.region))
            .names(service.names)
            .conversation(&self.session_id)
            .model(model)
            .turn(self.conv_turn + 1);
        let mut span = self.span(self.root_id, 0, root.span_name(), SpanKind::Internal, 0..end);
        // The root has no parent.
        span.parent = None;
        span.attributes = root.attributes();
        self.spans.insert(0, span);
        self.log(
            self.root_id,
            end,
            Severity::Info,
            format!(
                "agent turn {} of conversation {} done: {} steps, {} context tokens, {} errors",
                self.conv_turn + 1,
                self.session_id,
                steps,
                context,
                errors_in_children
            ),
            vec![KeyValue::new(key::AGENT_NAME, service.agent), KeyValue::new("event.name", "agent.turn.completed")],
        );
    }

    fn into_plan(self, trace_id: u128, new_session: bool) -> TracePlan {
        TracePlan {
            trace_id,
            new_session,
            duration_ns: self.spans.iter().map(|s| s.end_ns).max().unwrap_or_default(),
            hedges: self.hedges,
            errors: self.spans.iter().filter(|s| s.error.is_some()).count() as u32,
            spans: self.spans,
            logs: self.logs,
        }
    }
}

fn backend_index(b: &Backend) -> usize {
    fleet::backends()
        .iter()
        .position(|o| o.service == b.service && o.place == b.place)
        .expect("every backend is in fleet::backends()")
}

#[cfg(test)]
mod tests {
    use opentelemetry::Value;

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
