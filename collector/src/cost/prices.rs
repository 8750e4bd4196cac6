//! Model price tables in LiteLLM's `model_prices_and_context_window.json` format, and model-name matching.
//!
//! The format is LiteLLM's so that users can drop their copy of that file in unchanged: a JSON object keyed by
//! model name whose entries carry `input_cost_per_token`, `output_cost_per_token`, `cache_read_input_token_cost`,
//! `cache_creation_input_token_cost`, `cache_creation_input_token_cost_above_1hr` (1-hour cache writes),
//! `output_cost_per_reasoning_token`, long-context variants such as `input_cost_per_token_above_200k_tokens`, and
//! service-tier variants of any of these (`_priority`, `_flex`, `_batches`, e.g. `input_cost_per_token_flex`,
//! `input_cost_per_token_above_200k_tokens_priority`). Every other key (context windows, capability flags, tailscope's own
//! `source` / `as_of` citations) is ignored. Entries without a token price (image or audio models) are skipped.

use std::collections::BTreeMap;

use serde_json::Value;

use super::CostError;

/// USD per token for each kind of token. `None` means the table does not say; see [`Rates::cache_read`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Rates {
    /// Uncached input tokens.
    pub input: Option<f64>,
    /// Output tokens (reasoning tokens included, unless `reasoning` is set).
    pub output: Option<f64>,
    /// Input tokens read from the prompt cache; priced at `input` when absent.
    pub cache_read: Option<f64>,
    /// Input tokens written to the prompt cache; priced at `input` when absent.
    pub cache_creation: Option<f64>,
    /// Input tokens written to the prompt cache with a 1-hour lifetime; priced at `cache_creation` when absent.
    pub cache_creation_1h: Option<f64>,
    /// Reasoning output tokens; priced at `output` when absent.
    pub reasoning: Option<f64>,
}

impl Rates {
    /// `self` with every rate `over` sets replaced.
    fn overlay(self, over: &Rates) -> Rates {
        Rates {
            input: over.input.or(self.input),
            output: over.output.or(self.output),
            cache_read: over.cache_read.or(self.cache_read),
            cache_creation: over.cache_creation.or(self.cache_creation),
            cache_creation_1h: over.cache_creation_1h.or(self.cache_creation_1h),
            reasoning: over.reasoning.or(self.reasoning),
        }
    }
}

/// A provider's service tier, which prices the same tokens differently (LiteLLM's field suffix in brackets).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ServiceTier {
    /// Faster, dearer processing (`_priority`).
    Priority,
    /// Slower, cheaper processing that may be refused under load (`_flex`).
    Flex,
    /// Asynchronous batch jobs (`_batches`).
    Batch,
}

impl ServiceTier {
    /// Every tier, with the suffix LiteLLM's field names carry for it.
    const SUFFIXES: [(&'static str, ServiceTier); 3] =
        [("_priority", ServiceTier::Priority), ("_flex", ServiceTier::Flex), ("_batches", ServiceTier::Batch)];

    /// The tier a span's service-tier attribute names. `default`, `auto`, `standard`, `scale` and anything unknown
    /// are the standard price (`None`): a tier this table cannot tell apart is priced as the common case.
    pub fn from_attribute(value: &str) -> Option<ServiceTier> {
        match value.trim().to_ascii_lowercase().as_str() {
            "priority" => Some(ServiceTier::Priority),
            "flex" => Some(ServiceTier::Flex),
            "batch" | "batches" => Some(ServiceTier::Batch),
            _ => None,
        }
    }

    /// `input_cost_per_token_flex` -> (`input_cost_per_token`, `Flex`).
    fn split(field: &str) -> (&str, Option<ServiceTier>) {
        ServiceTier::SUFFIXES
            .iter()
            .find_map(|(suffix, tier)| field.strip_suffix(suffix).map(|base| (base, Some(*tier))))
            .unwrap_or((field, None))
    }
}

/// Rates that replace the base rates for one service tier and/or once the prompt exceeds `above_input_tokens`.
#[derive(Debug, Clone, PartialEq)]
pub struct Tier {
    /// The service tier these rates are for; `None` for the standard tier.
    pub service: Option<ServiceTier>,
    /// Prompt size (input tokens, cached ones included) above which the tier applies; 0 for a service tier's
    /// rates at any prompt size.
    pub above_input_tokens: i64,
    /// The rates this tier changes.
    pub rates: Rates,
}

/// One priced model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelPrice {
    /// Where the entry came from (`default`, a file name, `config`), for `price_source`.
    pub origin: String,
    /// The key it has in its table.
    pub key: String,
    /// Base rates.
    pub rates: Rates,
    /// Long-context and service tiers: the standard tier's first, then each service tier's, each ascending by
    /// threshold (the order [`ModelPrice::rates_for`] overlays them in).
    pub tiers: Vec<Tier>,
}

impl ModelPrice {
    /// The label written to `price_source`: `origin:key`.
    pub fn label(&self) -> String {
        format!("{}:{}", self.origin, self.key)
    }

    /// The rates for a request served in `service` whose prompt has `prompt_tokens` tokens.
    ///
    /// The standard tier's long-context rates apply first, then the service tier's own rates (and its long-context
    /// rates, where the table has them): a rate the service tier does not set stays the standard one, so a table
    /// that gives only a tier's input and output prices still prices its cached tokens.
    pub fn rates_for(&self, prompt_tokens: i64, service: Option<ServiceTier>) -> Rates {
        let mut rates = self.rates;
        for tier in &self.tiers {
            let applies = tier.service.is_none() || tier.service == service;
            if applies && (tier.above_input_tokens == 0 || prompt_tokens > tier.above_input_tokens) {
                rates = rates.overlay(&tier.rates);
            }
        }
        rates
    }

    /// Whether the table prices `service` differently from the standard tier.
    pub fn has_service_tier(&self, service: ServiceTier) -> bool {
        self.tiers.iter().any(|t| t.service == Some(service))
    }
}

/// Tokens of one call, following the GenAI semantic conventions: `input` includes cached tokens, `output`
/// includes reasoning tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenUsage {
    pub input: i64,
    pub output: i64,
    pub cache_read: i64,
    pub cache_creation: i64,
    /// The part of `cache_creation` written with a 1-hour lifetime.
    pub cache_creation_1h: i64,
    pub reasoning: i64,
}

impl TokenUsage {
    /// The input tokens billed at the full input rate.
    ///
    /// `input` includes cached tokens, so the uncached part is `input - cache_read - cache_creation`. When the
    /// cached tokens exceed `input`, the instrumentation evidently reported input *without* them (Anthropic's
    /// native usage shape); `input` is then taken as the uncached count rather than clamped to zero.
    pub fn uncached_input(&self) -> i64 {
        let cached = self.cache_read + self.cache_creation;
        if cached > self.input { self.input } else { self.input - cached }
    }

    /// The prompt size that selects a long-context tier: every input token, cached or not.
    pub fn prompt_tokens(&self) -> i64 {
        let cached = self.cache_read + self.cache_creation;
        if cached > self.input { self.input + cached } else { self.input }
    }

    /// Cache writes with a 1-hour lifetime: part of `cache_creation`, never more than it.
    fn cache_creation_1h(&self) -> i64 {
        self.cache_creation_1h.clamp(0, self.cache_creation)
    }

    /// Cache writes with the default (5-minute) lifetime.
    fn cache_creation_5m(&self) -> i64 {
        self.cache_creation - self.cache_creation_1h()
    }

    /// Cost in USD at `price`, in the service tier `service` (`None`: standard).
    pub fn cost(&self, price: &ModelPrice, service: Option<ServiceTier>) -> f64 {
        let r = price.rates_for(self.prompt_tokens(), service);
        let input = r.input.unwrap_or(0.0);
        let output = r.output.unwrap_or(0.0);
        let cache_creation = r.cache_creation.unwrap_or(input);
        // Reasoning tokens are part of `output` per the conventions; a reasoning count larger than the output
        // count means the instrumentation reported them separately.
        let (plain_output, reasoning) = if self.reasoning <= self.output {
            (self.output - self.reasoning, self.reasoning)
        } else {
            (self.output, self.reasoning)
        };
        self.uncached_input() as f64 * input
            + self.cache_read as f64 * r.cache_read.unwrap_or(input)
            + self.cache_creation_5m() as f64 * cache_creation
            + self.cache_creation_1h() as f64 * r.cache_creation_1h.unwrap_or(cache_creation)
            + plain_output as f64 * output
            + reasoning as f64 * r.reasoning.unwrap_or(output)
    }
}

/// A set of model prices keyed by model name (lowercase).
#[derive(Debug, Clone, Default)]
pub struct PriceTable {
    entries: BTreeMap<String, ModelPrice>,
}

/// The built-in table, with a citation (`source`, `as_of`) on every entry.
pub const DEFAULT_MODELS_JSON: &str = include_str!("../../prices/models.json");

impl PriceTable {
    /// The built-in table.
    pub fn builtin() -> PriceTable {
        PriceTable::from_litellm_json(DEFAULT_MODELS_JSON, "default").expect("the built-in price table parses")
    }

    /// Parses a LiteLLM-format JSON document; `origin` names it in `price_source` and errors.
    pub fn from_litellm_json(text: &str, origin: &str) -> Result<PriceTable, CostError> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| CostError::PriceFile { origin: origin.to_string(), detail: e.to_string() })?;
        let Value::Object(map) = value else {
            return Err(CostError::PriceFile {
                origin: origin.to_string(),
                detail: "expected a JSON object keyed by model name".into(),
            });
        };
        PriceTable::from_entries(map.iter().map(|(k, v)| (k.as_str(), v)), origin)
    }

    /// Builds a table from `(model, LiteLLM entry)` pairs.
    pub fn from_entries<'a>(
        entries: impl IntoIterator<Item = (&'a str, &'a Value)>,
        origin: &str,
    ) -> Result<PriceTable, CostError> {
        let mut table = PriceTable::default();
        for (key, entry) in entries {
            if key == "sample_spec" {
                continue; // LiteLLM's documentation entry
            }
            let Value::Object(fields) = entry else {
                return Err(CostError::PriceFile {
                    origin: origin.to_string(),
                    detail: format!("entry {key:?} is not an object"),
                });
            };
            if let Some(price) = parse_entry(key, fields, origin)? {
                table.entries.insert(key.to_lowercase(), price);
            }
        }
        Ok(table)
    }

    /// Adds every entry of `other`, replacing entries with the same name.
    pub fn merge(&mut self, other: PriceTable) {
        self.entries.extend(other.entries);
    }

    /// Number of priced models.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry stored under exactly `key` (case-insensitive).
    pub fn get(&self, key: &str) -> Option<&ModelPrice> {
        self.entries.get(key).or_else(|| self.entries.get(&key.to_lowercase()))
    }

    /// Iterates the entries.
    pub fn iter(&self) -> impl Iterator<Item = &ModelPrice> {
        self.entries.values()
    }
}

/// The per-token fields read, each also with a long-context and/or service-tier suffix. The 1-hour cache write
/// comes before the cache write it extends, so that its longer name is matched first ([`tier_field`]).
const TOKEN_FIELDS: [&str; 6] = [
    "input_cost_per_token",
    "output_cost_per_token",
    "cache_read_input_token_cost",
    "cache_creation_input_token_cost_above_1hr",
    "cache_creation_input_token_cost",
    "output_cost_per_reasoning_token",
];

/// Sets the rate a [`TOKEN_FIELDS`] name stands for.
fn set_rate(rates: &mut Rates, base: &str, v: f64) {
    match base {
        "input_cost_per_token" => rates.input = Some(v),
        "output_cost_per_token" => rates.output = Some(v),
        "cache_read_input_token_cost" => rates.cache_read = Some(v),
        "cache_creation_input_token_cost_above_1hr" => rates.cache_creation_1h = Some(v),
        "cache_creation_input_token_cost" => rates.cache_creation = Some(v),
        _ => rates.reasoning = Some(v),
    }
}

fn parse_entry(
    key: &str,
    fields: &serde_json::Map<String, Value>,
    origin: &str,
) -> Result<Option<ModelPrice>, CostError> {
    let num = |field: &str| -> Result<Option<f64>, CostError> {
        match fields.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => number(v).map(Some).ok_or_else(|| CostError::PriceFile {
                origin: origin.to_string(),
                detail: format!("{key}.{field} must be a number of USD per token from 0 to 1, got {v}"),
            }),
        }
    };
    let mut rates = Rates::default();
    for base in TOKEN_FIELDS {
        if let Some(v) = num(base)? {
            set_rate(&mut rates, base, v);
        }
    }
    if rates.input.is_none() && rates.output.is_none() {
        return Ok(None); // priced per image, second or character: not a token model
    }
    // Tiered fields: `<token field>[_above_<N>k_tokens][_priority|_flex|_batches]`. A hostile file can name many
    // of them, but each distinct (tier, threshold) needs its own field, so the tiers are bounded by the entry.
    let mut tiers: BTreeMap<(Option<ServiceTier>, i64), Rates> = BTreeMap::new();
    for (field, value) in fields {
        let (unsuffixed, service) = ServiceTier::split(field);
        let (base, threshold) = match (tier_field(unsuffixed), service) {
            (Some(long_context), _) => long_context,
            (None, Some(_)) => match TOKEN_FIELDS.iter().find(|f| **f == unsuffixed) {
                Some(base) => (*base, 0),
                None => continue,
            },
            (None, None) => continue,
        };
        let Some(v) = number(value) else {
            return Err(CostError::PriceFile {
                origin: origin.to_string(),
                detail: format!("{key}.{field} must be a number of USD per token from 0 to 1, got {value}"),
            });
        };
        set_rate(tiers.entry((service, threshold)).or_default(), base, v);
    }
    Ok(Some(ModelPrice {
        origin: origin.to_string(),
        key: key.to_string(),
        rates,
        tiers: tiers
            .into_iter()
            .map(|((service, above_input_tokens), rates)| Tier { service, above_input_tokens, rates })
            .collect(),
    }))
}

/// The most a token may cost: the dearest models list a few hundredths of a cent per token, so a dollar is already
/// absurd; past this a figure is a typo (per million instead of per token) or hostile, and a product with a token
/// count could overflow to an infinite cost that sums would then hide.
pub const MAX_USD_PER_TOKEN: f64 = 1.0;

/// LiteLLM writes some figures as strings (`"1e-06"`); both are accepted, from 0 to [`MAX_USD_PER_TOKEN`].
fn number(v: &Value) -> Option<f64> {
    let n = match v {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse().ok()?,
        _ => return None,
    };
    (n.is_finite() && (0.0..=MAX_USD_PER_TOKEN).contains(&n)).then_some(n)
}

/// `input_cost_per_token_above_200k_tokens` -> (`input_cost_per_token`, 200000).
fn tier_field(field: &str) -> Option<(&'static str, i64)> {
    for base in TOKEN_FIELDS {
        let Some(rest) = field.strip_prefix(base).and_then(|r| r.strip_prefix("_above_")) else { continue };
        let rest = rest.strip_suffix("_tokens")?;
        let (digits, scale) = if let Some(d) = rest.strip_suffix('k') {
            (d, 1_000)
        } else if let Some(d) = rest.strip_suffix('m') {
            (d, 1_000_000)
        } else {
            (rest, 1)
        };
        return digits.parse::<i64>().ok().map(|n| (base, n * scale));
    }
    None
}

/// Bedrock's cross-region inference-profile prefixes (`us.anthropic.claude-…`).
const GEO_PREFIXES: [&str; 8] = ["us.", "eu.", "apac.", "global.", "us-gov.", "jp.", "au.", "ca."];

/// The names to try for `model`, most specific first.
///
/// 1. the name as given, then lowercased;
/// 2. the last path segment (an ARN's `…/us.anthropic.claude-…`, LiteLLM's `bedrock/…`, `openai/gpt-4o`);
/// 3. without a Bedrock geography prefix (`us.`, `eu.`, `apac.`, `global.`, …);
/// 4. without trailing version tokens, one at a time (`:0`, `-v2`, `@20241022`, `-20250929`, `-2024-08-06`,
///    `-latest`, `-002`), each also without a vendor namespace (`anthropic.`, `amazon.`, `meta.`).
pub fn candidates(model: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut push = |s: &str| {
        if !s.is_empty() && !out.iter().any(|o| o == s) {
            out.push(s.to_string());
        }
    };
    push(model.trim());
    let lower = model.trim().to_lowercase();
    push(&lower);
    let mut name: &str = lower.rsplit('/').next().unwrap_or(&lower);
    push(name);
    for p in GEO_PREFIXES {
        if let Some(rest) = name.strip_prefix(p)
            && (rest.contains('.') || rest.contains('-'))
        {
            name = rest;
            push(name);
            break;
        }
    }
    // Real names carry a few version tokens (`-v2:0`, `-2024-08-06`). Each step copies the name, so stripping
    // every token of a name made of thousands of them was quadratic (a 60 KB name: 6 s and 2.5 GB); after
    // MAX_VERSION_STRIPS steps the work is linear in the name's length.
    let mut current: &str = name;
    for _ in 0..MAX_VERSION_STRIPS {
        if let Some(v) = strip_vendor(current) {
            push(v);
        }
        match strip_version(current) {
            Some(shorter) => {
                current = shorter;
                push(current);
            }
            None => break,
        }
    }
    out
}

/// Version tokens [`candidates`] strips at most (`-2024-08-06` counts as one).
pub const MAX_VERSION_STRIPS: usize = 8;

/// `anthropic.claude-x` -> `claude-x`: a Bedrock vendor namespace is a dot before any dash.
fn strip_vendor(name: &str) -> Option<&str> {
    let dot = name.find('.')?;
    let dash = name.find('-').unwrap_or(usize::MAX);
    let vendor = &name[..dot];
    (dot < dash && !vendor.is_empty() && vendor.chars().all(|c| c.is_ascii_alphanumeric()) && dot + 1 < name.len())
        .then(|| &name[dot + 1..])
}

/// Removes one trailing version token, or returns `None`.
fn strip_version(name: &str) -> Option<&str> {
    if let Some(at) = name.rfind('@') {
        return Some(&name[..at]).filter(|s| !s.is_empty());
    }
    if let Some(colon) = name.rfind(':')
        && colon > 0
        && name[colon + 1..].chars().all(|c| c.is_ascii_digit())
    {
        return Some(&name[..colon]);
    }
    // `-YYYY-MM-DD`
    if name.len() > 11 {
        let (head, tail) = name.split_at(name.len() - 11);
        let b = tail.as_bytes();
        if b[0] == b'-'
            && b[5] == b'-'
            && b[8] == b'-'
            && [1, 2, 3, 4, 6, 7, 9, 10].iter().all(|&i| b[i].is_ascii_digit())
            && !head.is_empty()
        {
            return Some(head);
        }
    }
    let dash = name.rfind('-')?;
    let (head, token) = (&name[..dash], &name[dash + 1..]);
    if head.is_empty() {
        return None;
    }
    let digits = token.chars().all(|c| c.is_ascii_digit());
    let versioned = (digits && (3..=4).contains(&token.len()))
        || (digits && token.len() == 8 && token.starts_with("20"))
        || (token.len() >= 2 && token.starts_with('v') && token[1..].chars().all(|c| c.is_ascii_digit() || c == '.'))
        || token == "latest";
    versioned.then_some(head)
}

/// The pricing and budget settings' glob: `*` any run of characters, the rest itself, ignoring case
/// ([`tailscope_core::glob`]).
pub fn glob_match(pattern: &str, text: &str) -> bool {
    tailscope_core::glob::matches(tailscope_core::glob::Dialect::IgnoreCase, pattern, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_resolve_bedrock_names_to_the_base_model() {
        let c = candidates("us.anthropic.claude-sonnet-4-5-20250929-v1:0");
        assert!(c.contains(&"claude-sonnet-4-5".to_string()), "{c:?}");
        let c = candidates(
            "arn:aws:bedrock:eu-central-1:123456789012:inference-profile/eu.anthropic.claude-3-7-sonnet-20250219-v1:0",
        );
        assert!(c.contains(&"anthropic.claude-3-7-sonnet-20250219-v1:0".to_string()), "{c:?}");
        assert!(c.contains(&"claude-3-7-sonnet".to_string()), "{c:?}");
        let c = candidates("claude-3-5-sonnet-v2@20241022");
        assert!(c.contains(&"claude-3-5-sonnet".to_string()), "{c:?}");
        let c = candidates("gpt-4o-2024-08-06");
        assert_eq!(c.last().unwrap(), "gpt-4o");
        // Names that merely end in a digit are not versions.
        assert_eq!(candidates("gpt-5"), vec!["gpt-5"]);
        assert_eq!(candidates("gpt-4o-mini"), vec!["gpt-4o-mini"]);
    }

    #[test]
    fn tier_fields_parse() {
        assert_eq!(tier_field("input_cost_per_token_above_200k_tokens"), Some(("input_cost_per_token", 200_000)));
        assert_eq!(
            tier_field("cache_read_input_token_cost_above_128k_tokens"),
            Some(("cache_read_input_token_cost", 128_000))
        );
        assert_eq!(tier_field("input_cost_per_token_batches"), None);
        // The 1-hour cache write is a rate of its own, not a threshold of 1 token.
        assert_eq!(tier_field("cache_creation_input_token_cost_above_1hr"), None);
        assert_eq!(
            tier_field("cache_creation_input_token_cost_above_1hr_above_200k_tokens"),
            Some(("cache_creation_input_token_cost_above_1hr", 200_000))
        );
    }

    #[test]
    fn builtin_table_cites_every_entry() {
        let v: Value = serde_json::from_str(DEFAULT_MODELS_JSON).unwrap();
        for (k, e) in v.as_object().unwrap() {
            let src = e.get("source").and_then(Value::as_str).unwrap_or("");
            let as_of = e.get("as_of").and_then(Value::as_str).unwrap_or("");
            assert!(src.starts_with("https://"), "{k} has no source");
            assert!(as_of.starts_with("list price as of "), "{k} has no date");
        }
        assert!(PriceTable::builtin().len() >= 30);
    }
}
