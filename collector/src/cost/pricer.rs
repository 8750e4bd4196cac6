//! The per-span pricer: tokens x model price, plus egress bytes x the paying cloud's rate.

use std::hash::BuildHasher;
use std::sync::Arc;

use parking_lot::RwLock;
use tailscope_core::cost::PricingConfig;
use tailscope_core::memory::{MemoryBudget, MemoryError, Reservation};
use tailscope_core::rules::UNPRICED;

use super::egress::{EgressTable, Endpoint, Path, ProviderClouds, path};
use super::prices::{ModelPrice, PriceTable, ServiceTier, Tier, TokenUsage, candidates, glob_match};
use super::{CostError, SpanCost, SpanFacts};

/// Resolutions cached before the cache is reset (model names are few; this bounds a pathological client, and
/// `pricing.cache_bytes` bounds the bytes it holds).
const CACHE_LIMIT: usize = 8192;

type CacheKey = (Option<String>, Option<String>, Option<String>, Option<String>);
type CacheEntry = (CacheKey, Option<Arc<ModelPrice>>);
type CacheBucket = Vec<CacheEntry>;

/// What the map spends per entry besides the entry: its slot (`u64` hash and bucket `Vec`) and control byte, four
/// times over: a hash table that doubles holds up to ~2.3 slots per entry, and ~3.4 while it moves to a table
/// twice the size (both are allocated then).
const MAP_SLOT_BYTES: usize = 4 * (size_of::<(u64, CacheBucket)>() + 1);

#[derive(Debug, Default)]
struct Cache {
    map: foldhash::HashMap<u64, CacheBucket>,
    len: usize,
    /// Bytes the entries hold: names, the price entries they resolve to, bucket and map slots
    /// ([`Cache::entry_bytes`]); at most `pricing.cache_bytes`.
    bytes: usize,
    /// `pricing.cache_bytes` held in the process memory budget ([`Pricer::reserve_cache`]).
    reservation: Option<Reservation>,
}

impl Cache {
    /// Bytes one entry adds: its names, its copy of the price entry, its place in a bucket (a new bucket holds one
    /// entry; a collision grows an existing bucket to four) and in the map.
    fn entry_bytes(key_bytes: usize, price: Option<&ModelPrice>, new_bucket: bool) -> usize {
        let element = size_of::<CacheEntry>() * if new_bucket { 1 } else { 4 };
        let price = price.map_or(0, |p| {
            2 * size_of::<usize>() // the Arc's counts
                + size_of::<ModelPrice>()
                + p.origin.len()
                + p.key.len()
                + p.tiers.len() * size_of::<Tier>()
        });
        key_bytes + element + price + MAP_SLOT_BYTES
    }
}

/// Prices spans. Built once from [`PricingConfig`]; cheap to clone (shares its tables and resolution cache).
#[derive(Debug, Clone)]
pub struct Pricer {
    models: Arc<PriceTable>,
    aliases: Arc<Vec<(String, String)>>,
    egress: Arc<EgressTable>,
    provider_clouds: Arc<ProviderClouds>,
    bytes_per_gb: f64,
    max_name_bytes: usize,
    cache_bytes: usize,
    cache: Arc<RwLock<Cache>>,
}

impl Default for Pricer {
    /// The built-in tables with no overrides.
    fn default() -> Self {
        Pricer::from_config(&PricingConfig::default()).expect("the built-in pricing parses")
    }
}

impl Pricer {
    /// Builds the pricer from the built-in tables and the configured override files and entries.
    pub fn from_config(config: &PricingConfig) -> Result<Pricer, CostError> {
        config.validate()?;
        let mut models = if config.replace_default_models { PriceTable::default() } else { PriceTable::builtin() };
        for file in &config.model_files {
            let text =
                std::fs::read_to_string(file).map_err(|source| CostError::ReadFile { path: file.clone(), source })?;
            models.merge(PriceTable::from_litellm_json(&text, &file_origin(file))?);
        }
        if !config.models.is_empty() {
            models.merge(PriceTable::from_entries(config.models.iter().map(|(k, v)| (k.as_str(), v)), "config")?);
        }
        let mut egress = if config.replace_default_egress { EgressTable::default() } else { EgressTable::builtin() };
        if let Some(file) = &config.egress_file {
            let text =
                std::fs::read_to_string(file).map_err(|source| CostError::ReadFile { path: file.clone(), source })?;
            let table = EgressTable::from_json(&text, &file.display().to_string())?;
            egress.merge(table.entries().map(|(k, v)| (k.clone(), v.clone())).collect::<Vec<_>>());
        }
        egress.merge(config.egress.clone());
        Ok(Pricer {
            models: Arc::new(models),
            aliases: Arc::new(config.aliases.iter().map(|(k, v)| (k.to_lowercase(), v.clone())).collect()),
            egress: Arc::new(egress),
            provider_clouds: Arc::new(ProviderClouds::new(&config.provider_clouds)),
            bytes_per_gb: config.bytes_per_gb as f64,
            max_name_bytes: config.max_name_bytes,
            cache_bytes: config.cache_bytes,
            cache: Arc::default(),
        })
    }

    /// Holds the resolution cache's bound, `pricing.cache_bytes`, in the process memory budget for as long as this
    /// pricer (or a clone) lives: the cache never holds more ([`Cache::entry_bytes`] counts every byte an entry
    /// adds), so nothing it allocates needs a reservation of its own. Refused when the budget has no room for it.
    pub fn reserve_cache(&self, budget: &MemoryBudget) -> Result<(), MemoryError> {
        let reservation =
            budget.try_reserve_lasting(self.cache_bytes, &"the price-resolution cache (pricing.cache_bytes)")?;
        self.cache.write().reservation = Some(reservation);
        Ok(())
    }

    /// The model price table in use.
    pub fn models(&self) -> &PriceTable {
        &self.models
    }

    /// The cloud that serves `gen_ai_provider`, if any.
    pub fn provider_cloud(&self, gen_ai_provider: &str) -> Option<&str> {
        self.provider_clouds.cloud_of(gen_ai_provider)
    }

    /// Prices one span.
    pub fn price(&self, f: &SpanFacts<'_>) -> SpanCost {
        let has_tokens = f.input_tokens.is_some()
            || f.output_tokens.is_some()
            || f.cache_read_tokens.is_some()
            || f.cache_creation_tokens.is_some()
            || f.cache_creation_1h_tokens.is_some();
        let (token_cost_usd, price_source) = if has_tokens {
            match self.resolve(f) {
                Some(price) => {
                    let usage = TokenUsage {
                        input: f.input_tokens.unwrap_or(0).max(0),
                        output: f.output_tokens.unwrap_or(0).max(0),
                        // A span that reports only its 1-hour cache writes wrote that many.
                        cache_creation: f.cache_creation_tokens.or(f.cache_creation_1h_tokens).unwrap_or(0).max(0),
                        cache_read: f.cache_read_tokens.unwrap_or(0).max(0),
                        cache_creation_1h: f.cache_creation_1h_tokens.unwrap_or(0).max(0),
                        reasoning: f.reasoning_tokens.unwrap_or(0).max(0),
                    };
                    let service = f.service_tier.and_then(ServiceTier::from_attribute);
                    (Some(usage.cost(&price, service)), Some(price.label()))
                }
                None => (None, Some(UNPRICED.to_string())),
            }
        } else {
            (None, None)
        };
        let (egress_bytes, egress_cost_usd) = self.egress(f);
        let unpriced = price_source.as_deref() == Some(UNPRICED);
        let cost_usd = if unpriced || (token_cost_usd.is_none() && egress_cost_usd.is_none()) {
            None
        } else {
            Some(token_cost_usd.unwrap_or(0.0) + egress_cost_usd.unwrap_or(0.0))
        };
        SpanCost { token_cost_usd, egress_bytes, egress_cost_usd, cost_usd, price_source }
    }

    /// Egress bytes and their cost.
    ///
    /// Request bytes leave the caller and are charged by the caller's cloud; response bytes leave the
    /// destination and are charged by the destination's cloud. `egress.bytes`, where set, replaces both: it is
    /// charged by the caller's cloud along the caller -> destination path (or, when the caller runs on no known
    /// cloud, by the destination's cloud at its internet rate).
    pub fn egress(&self, f: &SpanFacts<'_>) -> (Option<i64>, Option<f64>) {
        let src = Endpoint { cloud: f.cloud_provider, region: f.cloud_region };
        let dst_cloud = f.peer_cloud_provider.or_else(|| f.gen_ai_provider.and_then(|p| self.provider_cloud(p)));
        let dst = Endpoint { cloud: dst_cloud, region: f.peer_cloud_region };
        let per_byte = |payer: Option<&str>, p: Path| -> f64 {
            payer.and_then(|c| self.egress.rate(c, p)).unwrap_or(0.0) / self.bytes_per_gb
        };
        if let Some(bytes) = f.egress_bytes.filter(|b| *b >= 0) {
            let rate = if src.cloud.is_some() {
                per_byte(src.cloud, path(src, dst))
            } else {
                per_byte(dst.cloud, Path::Internet)
            };
            return (Some(bytes), Some(bytes as f64 * rate));
        }
        let req = f.request_bytes.filter(|b| *b >= 0);
        let resp = f.response_bytes.filter(|b| *b >= 0);
        if req.is_none() && resp.is_none() {
            return (None, None);
        }
        let (req, resp) = (req.unwrap_or(0), resp.unwrap_or(0));
        let cost = req as f64 * per_byte(src.cloud, path(src, dst)) + resp as f64 * per_byte(dst.cloud, path(dst, src));
        (Some(req + resp), Some(cost))
    }

    /// The price entry for the span's model (response model first, it names the exact version), cached.
    fn resolve(&self, f: &SpanFacts<'_>) -> Option<Arc<ModelPrice>> {
        // A name longer than any real one is treated as absent: it can match no price, and keeping or matching
        // it would cost memory and time in proportion to a client's whim.
        fn name(s: Option<&str>, max: usize) -> Option<&str> {
            s.filter(|s| s.len() <= max)
        }
        let max = self.max_name_bytes;
        let (provider, region) = (name(f.gen_ai_provider, max), name(f.peer_cloud_region.or(f.cloud_region), max));
        let (response_model, request_model) = (name(f.response_model, max), name(f.request_model, max));
        if response_model.is_none() && request_model.is_none() {
            return None;
        }
        // Every priced span comes through here: a fast hash (SipHash was 1 % of ingest CPU), and the cache
        // compares keys in full.
        let hash = foldhash::fast::FixedState::default().hash_one((provider, region, response_model, request_model));
        let same = |k: &CacheKey| {
            k.0.as_deref() == provider
                && k.1.as_deref() == region
                && k.2.as_deref() == response_model
                && k.3.as_deref() == request_model
        };
        if let Some(bucket) = self.cache.read().map.get(&hash)
            && let Some((_, r)) = bucket.iter().find(|(k, _)| same(k))
        {
            return r.clone();
        }
        let found = [response_model, request_model]
            .into_iter()
            .flatten()
            .find_map(|m| self.lookup(provider, region, m))
            .map(|p| Arc::new(p.clone()));
        let key_bytes: usize =
            [provider, region, response_model, request_model].iter().flatten().map(|s| s.len()).sum();
        let mut cache = self.cache.write();
        let new_bucket = !cache.map.contains_key(&hash);
        let entry_bytes = Cache::entry_bytes(key_bytes, found.as_deref(), new_bucket);
        if entry_bytes > self.cache_bytes {
            // An entry larger than the whole cache is not kept (the price is still answered).
            return found;
        }
        if cache.len >= CACHE_LIMIT || cache.bytes + entry_bytes > self.cache_bytes {
            // Emptied rather than evicted entry by entry: the working set of a deployment is a few dozen
            // models, refilled by the next spans; only a client sending ever new names reaches the bounds.
            cache.map = Default::default();
            cache.len = 0;
            cache.bytes = 0;
        }
        let new_bucket = !cache.map.contains_key(&hash);
        let entry_bytes = Cache::entry_bytes(key_bytes, found.as_deref(), new_bucket);
        let key = (
            provider.map(str::to_string),
            region.map(str::to_string),
            response_model.map(str::to_string),
            request_model.map(str::to_string),
        );
        // A bucket of one (a default `Vec` would take room for four): collisions are rare.
        cache.map.entry(hash).or_insert_with(|| Vec::with_capacity(1)).push((key, found.clone()));
        cache.len += 1;
        cache.bytes += entry_bytes;
        found
    }

    /// Resolves one model name: configured aliases first, then the name's [`candidates`], each tried with the
    /// provider (and region) qualified keys before the bare name.
    pub fn lookup(&self, provider: Option<&str>, region: Option<&str>, model: &str) -> Option<&ModelPrice> {
        let lower = model.trim().to_lowercase();
        if let Some((_, target)) = self.aliases.iter().find(|(pattern, _)| glob_match(pattern, &lower))
            && let Some(p) = self.lookup_candidates(provider, region, target)
        {
            return Some(p);
        }
        self.lookup_candidates(provider, region, model)
    }

    fn lookup_candidates(&self, provider: Option<&str>, region: Option<&str>, model: &str) -> Option<&ModelPrice> {
        let prefixes = provider.map(provider_prefixes).unwrap_or_default();
        for c in candidates(model) {
            for p in &prefixes {
                if let Some(r) = region
                    && let Some(hit) = self.models.get(&format!("{p}/{}/{c}", r.to_lowercase()))
                {
                    return Some(hit);
                }
                if let Some(hit) = self.models.get(&format!("{p}/{c}")) {
                    return Some(hit);
                }
            }
            if let Some(hit) = self.models.get(&c) {
                return Some(hit);
            }
        }
        None
    }
}

/// How `price_source` names the entries of a price file: by its file name.
pub fn file_origin(file: &std::path::Path) -> String {
    file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "file".into())
}

/// The key prefixes a provider's entries may use: its OpenTelemetry name and LiteLLM's name for it.
fn provider_prefixes(provider: &str) -> Vec<String> {
    let p = provider.to_lowercase();
    let litellm: &[&str] = match p.as_str() {
        "aws.bedrock" => &["bedrock", "bedrock_converse"],
        "azure.ai.openai" | "az.ai.openai" => &["azure"],
        "azure.ai.inference" | "az.ai.inference" => &["azure_ai"],
        "gcp.vertex_ai" | "vertex_ai" => &["vertex_ai"],
        "gcp.gemini" => &["gemini"],
        "gcp.gen_ai" => &["vertex_ai", "gemini"],
        "mistral_ai" => &["mistral"],
        _ => &[],
    };
    std::iter::once(p.clone()).chain(litellm.iter().map(|s| s.to_string())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const EPS: f64 = 1e-12;

    fn llm<'a>(provider: &'a str, model: &'a str, input: i64, output: i64) -> SpanFacts<'a> {
        SpanFacts {
            gen_ai_provider: Some(provider),
            gen_ai_operation: Some("chat"),
            request_model: Some(model),
            input_tokens: Some(input),
            output_tokens: Some(output),
            ..SpanFacts::default()
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < EPS.max(b.abs() * 1e-9)
    }

    #[test]
    fn plain_tokens() {
        let p = Pricer::default();
        let c = p.price(&llm("openai", "gpt-4o", 1_000_000, 100_000));
        // $2.50/M in + $10/M out.
        assert!(close(c.token_cost_usd.unwrap(), 2.5 + 1.0), "{c:?}");
        assert_eq!(c.cost_usd, c.token_cost_usd);
        assert_eq!(c.price_source.as_deref(), Some("default:gpt-4o"));
        assert_eq!(c.egress_bytes, None);
    }

    #[test]
    fn cached_tokens_are_not_billed_twice() {
        let p = Pricer::default();
        // claude-sonnet-4-5: $3/M input, $0.30/M cache read, $3.75/M cache write, $15/M output.
        let f = SpanFacts {
            cache_read_tokens: Some(80_000),
            cache_creation_tokens: Some(10_000),
            ..llm("anthropic", "claude-sonnet-4-5-20250929", 100_000, 2_000)
        };
        let c = p.price(&f);
        let expected = 10_000.0 * 3e-6 + 80_000.0 * 0.3e-6 + 10_000.0 * 3.75e-6 + 2_000.0 * 15e-6;
        assert!(close(c.token_cost_usd.unwrap(), expected), "{} vs {expected}", c.token_cost_usd.unwrap());
        // The naive formula (input x full rate + cached on top) would have charged far more.
        let naive = 100_000.0 * 3e-6 + 80_000.0 * 0.3e-6 + 10_000.0 * 3.75e-6 + 2_000.0 * 15e-6;
        assert!(naive / expected > 2.5);
        assert_eq!(c.price_source.as_deref(), Some("default:claude-sonnet-4-5"));
    }

    #[test]
    fn input_reported_without_cache_is_detected() {
        let p = Pricer::default();
        // Anthropic's native shape: input_tokens = uncached only (50), cache read 5000.
        let f = SpanFacts { cache_read_tokens: Some(5_000), ..llm("anthropic", "claude-haiku-4-5", 50, 10) };
        let expected = 50.0 * 1e-6 + 5_000.0 * 0.1e-6 + 10.0 * 5e-6;
        assert!(close(p.price(&f).token_cost_usd.unwrap(), expected));
    }

    #[test]
    fn long_context_tier_applies_above_200k() {
        let p = Pricer::default();
        // claude-sonnet-4 (retired: LiteLLM's last list price) kept Anthropic's long-context tier.
        let below = p.price(&llm("anthropic", "claude-sonnet-4-20250514", 200_000, 1_000)).token_cost_usd.unwrap();
        assert!(close(below, 200_000.0 * 3e-6 + 1_000.0 * 15e-6));
        let above = p.price(&llm("anthropic", "claude-sonnet-4-20250514", 200_001, 1_000)).token_cost_usd.unwrap();
        assert!(close(above, 200_001.0 * 6e-6 + 1_000.0 * 22.5e-6), "{above}");
        // Cached tokens count toward the threshold and are priced at the tier's cache rate.
        let f = SpanFacts { cache_read_tokens: Some(150_000), ..llm("gcp.gemini", "gemini-2.5-pro", 250_000, 0) };
        let c = p.price(&f).token_cost_usd.unwrap();
        assert!(close(c, 100_000.0 * 2.5e-6 + 150_000.0 * 0.25e-6), "{c}");
    }

    #[test]
    fn reasoning_tokens_are_part_of_output() {
        let mut config = PricingConfig::default();
        config.models.insert(
            "thinker".into(),
            serde_json::json!({"input_cost_per_token": 1e-6, "output_cost_per_token": 4e-6, "output_cost_per_reasoning_token": 2e-6}),
        );
        let p = Pricer::from_config(&config).unwrap();
        let f = SpanFacts { reasoning_tokens: Some(600), ..llm("x", "thinker", 0, 1_000) };
        assert!(close(p.price(&f).token_cost_usd.unwrap(), 400.0 * 4e-6 + 600.0 * 2e-6));
        // Without a reasoning rate, reasoning is billed as output and never double counted.
        let f = SpanFacts { reasoning_tokens: Some(600), ..llm("openai", "o3", 0, 1_000) };
        assert!(close(Pricer::default().price(&f).token_cost_usd.unwrap(), 1_000.0 * 8e-6));
    }

    /// Issue #17: the service tier that served a call prices it (OpenAI's Priority is twice Standard, Flex and
    /// Batch half). Figures from the built-in gpt-5 entry, computed by hand.
    #[test]
    fn service_tiers_price_priority_flex_and_batch() {
        let p = Pricer::default();
        // 1M input tokens of which 200k cached, 100k output.
        let at = |tier: Option<&'static str>| {
            let f = SpanFacts {
                cache_read_tokens: Some(200_000),
                service_tier: tier,
                ..llm("openai", "gpt-5-2025-08-07", 1_000_000, 100_000)
            };
            p.price(&f).token_cost_usd.unwrap()
        };
        let standard = 800_000.0 * 1.25e-6 + 200_000.0 * 1.25e-7 + 100_000.0 * 1e-5;
        assert!(close(standard, 2.025));
        for tier in [None, Some("default"), Some("auto"), Some("scale"), Some("standard"), Some("nonsense")] {
            assert!(close(at(tier), standard), "{tier:?}: {}", at(tier));
        }
        assert!(close(at(Some("priority")), 800_000.0 * 2.5e-6 + 200_000.0 * 2.5e-7 + 100_000.0 * 2e-5), "priority");
        assert!(close(at(Some("PRIORITY")), 4.05));
        assert!(close(at(Some("flex")), 800_000.0 * 6.25e-7 + 200_000.0 * 6.25e-8 + 100_000.0 * 5e-6), "flex");
        assert!(close(at(Some("batch")), 800_000.0 * 6.25e-7 + 200_000.0 * 6.25e-8 + 100_000.0 * 5e-6), "batch");
        // A tier the model has no price for is priced as standard (gpt-5-nano has no Priority tier).
        let f = SpanFacts { service_tier: Some("priority"), ..llm("openai", "gpt-5-nano", 1_000_000, 0) };
        assert!(close(p.price(&f).token_cost_usd.unwrap(), 0.05));
    }

    /// Service-tier rates combine with long-context thresholds: the tier's own long-context rate where the file
    /// gives one, otherwise the rates the tier sets over the standard long-context ones.
    #[test]
    fn service_tiers_combine_with_long_context_tiers() {
        let mut config = PricingConfig::default();
        config.models.insert(
            "tiered".into(),
            serde_json::json!({
                "input_cost_per_token": 1e-6, "output_cost_per_token": 4e-6,
                "input_cost_per_token_above_200k_tokens": 2e-6, "output_cost_per_token_above_200k_tokens": 6e-6,
                "input_cost_per_token_priority": 3e-6,
                "input_cost_per_token_above_200k_tokens_priority": "6e-6",
                "input_cost_per_token_flex": 5e-7,
            }),
        );
        let p = Pricer::from_config(&config).unwrap();
        let cost = |input: i64, tier: Option<&'static str>| {
            let f = SpanFacts { service_tier: tier, ..llm("x", "tiered", input, 1_000) };
            p.price(&f).token_cost_usd.unwrap()
        };
        assert!(close(cost(100_000, None), 100_000.0 * 1e-6 + 1_000.0 * 4e-6));
        assert!(close(cost(300_000, None), 300_000.0 * 2e-6 + 1_000.0 * 6e-6));
        // Priority sets no output rate: output stays standard (long-context above 200k).
        assert!(close(cost(100_000, Some("priority")), 100_000.0 * 3e-6 + 1_000.0 * 4e-6));
        assert!(close(cost(300_000, Some("priority")), 300_000.0 * 6e-6 + 1_000.0 * 6e-6));
        // Flex has no long-context input rate of its own: its flat rate applies at any prompt size.
        assert!(close(cost(300_000, Some("flex")), 300_000.0 * 5e-7 + 1_000.0 * 6e-6));
        // A malformed tier field names the entry and field.
        let mut config = PricingConfig::default();
        config
            .models
            .insert("bad".into(), serde_json::json!({"input_cost_per_token": 1e-6, "output_cost_per_token_flex": -1}));
        let err = Pricer::from_config(&config).unwrap_err().to_string();
        assert!(err.contains("bad.output_cost_per_token_flex"), "{err}");
    }

    /// Issue #17: 1-hour cache writes cost more than 5-minute ones (Anthropic: 2x input against 1.25x).
    #[test]
    fn one_hour_cache_writes_have_their_own_rate() {
        let p = Pricer::default();
        // claude-sonnet-4-5: input $3/M, 5-minute write $3.75/M, 1-hour write $6/M.
        // 10k input of which 8k cache writes, 6k of them for an hour.
        let f = SpanFacts {
            cache_creation_tokens: Some(8_000),
            cache_creation_1h_tokens: Some(6_000),
            ..llm("anthropic", "claude-sonnet-4-5-20250929", 10_000, 0)
        };
        assert!(close(p.price(&f).token_cost_usd.unwrap(), 2_000.0 * 3e-6 + 2_000.0 * 3.75e-6 + 6_000.0 * 6e-6));
        // Only the 1-hour count reported: that many were written.
        let f = SpanFacts { cache_creation_1h_tokens: Some(6_000), ..llm("anthropic", "claude-sonnet-4-5", 10_000, 0) };
        assert!(close(p.price(&f).token_cost_usd.unwrap(), 4_000.0 * 3e-6 + 6_000.0 * 6e-6));
        // More 1-hour writes than writes: never more than the writes.
        let f = SpanFacts {
            cache_creation_tokens: Some(1_000),
            cache_creation_1h_tokens: Some(9_000),
            ..llm("anthropic", "claude-sonnet-4-5", 10_000, 0)
        };
        assert!(close(p.price(&f).token_cost_usd.unwrap(), 9_000.0 * 3e-6 + 1_000.0 * 6e-6));
        // Above 200k tokens of prompt, the long-context 1-hour rate ($12/M), LiteLLM's
        // `cache_creation_input_token_cost_above_1hr_above_200k_tokens`.
        let mut config = PricingConfig::default();
        config.models.insert(
            "lc".into(),
            serde_json::json!({"input_cost_per_token": 3e-6, "input_cost_per_token_above_200k_tokens": 6e-6,
                "output_cost_per_token": 1.5e-5, "cache_creation_input_token_cost_above_1hr": 6e-6,
                "cache_creation_input_token_cost_above_1hr_above_200k_tokens": 1.2e-5}),
        );
        let lc = Pricer::from_config(&config).unwrap();
        let f = SpanFacts {
            cache_creation_tokens: Some(100_000),
            cache_creation_1h_tokens: Some(100_000),
            ..llm("anthropic", "lc", 300_000, 0)
        };
        assert!(close(lc.price(&f).token_cost_usd.unwrap(), 200_000.0 * 6e-6 + 100_000.0 * 1.2e-5));
        // A table without a 1-hour rate prices 1-hour writes at the cache-write rate.
        let mut config = PricingConfig::default();
        config.models.insert(
            "cw".into(),
            serde_json::json!({"input_cost_per_token": 1e-6, "output_cost_per_token": 1e-6, "cache_creation_input_token_cost": 2e-6}),
        );
        let p = Pricer::from_config(&config).unwrap();
        let f = SpanFacts { cache_creation_1h_tokens: Some(1_000), ..llm("x", "cw", 1_000, 0) };
        assert!(close(p.price(&f).token_cost_usd.unwrap(), 1_000.0 * 2e-6));
    }

    /// Issue #17: the newest families as of the table's date are priced under the names their SDKs report.
    #[test]
    fn the_newest_families_are_priced() {
        let p = Pricer::default();
        let cost = |provider, model, input, output| p.price(&llm(provider, model, input, output)).token_cost_usd;
        assert!(close(cost("openai", "gpt-5.1-2025-11-13", 1_000_000, 100_000).unwrap(), 1.25 + 1.0));
        assert!(close(cost("azure.ai.openai", "gpt-5.1", 1_000_000, 0).unwrap(), 1.25));
        // Gemini 3 Pro: $2/M in and $12/M out, $4 and $18 once the prompt exceeds 200k tokens.
        assert!(close(cost("gcp.gemini", "gemini-3-pro-preview", 100_000, 10_000).unwrap(), 0.2 + 0.12));
        assert!(close(cost("gcp.vertex_ai", "gemini-3-pro-preview", 300_000, 10_000).unwrap(), 1.2 + 0.18));
        let f = SpanFacts { service_tier: Some("flex"), ..llm("openai", "gpt-5.1", 1_000_000, 0) };
        assert!(close(p.price(&f).token_cost_usd.unwrap(), 0.625));
    }

    #[test]
    fn bedrock_prefixes_and_arns_resolve_to_the_base_model() {
        let p = Pricer::default();
        let base = p.price(&llm("anthropic", "claude-3-7-sonnet", 1000, 1000)).token_cost_usd.unwrap();
        for model in [
            "anthropic.claude-3-7-sonnet-20250219-v1:0",
            "us.anthropic.claude-3-7-sonnet-20250219-v1:0",
            "eu.anthropic.claude-3-7-sonnet-20250219-v1:0",
            "apac.anthropic.claude-3-7-sonnet-20250219-v1:0",
            "global.anthropic.claude-3-7-sonnet-20250219-v1:0",
            "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-3-7-sonnet-20250219-v1:0",
            "arn:aws:bedrock:us-west-2::foundation-model/anthropic.claude-3-7-sonnet-20250219-v1:0",
        ] {
            let c = p.price(&llm("aws.bedrock", model, 1000, 1000));
            assert_eq!(c.price_source.as_deref(), Some("default:claude-3-7-sonnet"), "{model}");
            assert!(close(c.token_cost_usd.unwrap(), base), "{model}");
        }
        let c = p.price(&llm("aws.bedrock", "us.amazon.nova-pro-v1:0", 1_000_000, 0));
        assert!(close(c.token_cost_usd.unwrap(), 0.8));
    }

    #[test]
    fn response_model_wins_and_dated_snapshots_keep_their_price() {
        let p = Pricer::default();
        let f = SpanFacts { response_model: Some("gpt-4o-2024-05-13"), ..llm("openai", "gpt-4o", 1_000_000, 0) };
        assert!(close(p.price(&f).token_cost_usd.unwrap(), 5.0));
        let f = SpanFacts { response_model: Some("gpt-4o-2024-08-06"), ..llm("openai", "gpt-4o", 1_000_000, 0) };
        assert!(close(p.price(&f).token_cost_usd.unwrap(), 2.5));
    }

    #[test]
    fn unknown_models_are_null_not_zero() {
        let p = Pricer::default();
        let f =
            SpanFacts { request_bytes: Some(1000), cloud_provider: Some("aws"), ..llm("acme", "mystery-9000", 10, 10) };
        let c = p.price(&f);
        assert_eq!(c.token_cost_usd, None);
        assert_eq!(c.cost_usd, None);
        assert_eq!(c.price_source.as_deref(), Some(UNPRICED));
        assert!(c.egress_cost_usd.is_some(), "egress is still priced");
        // Tokens without any model name are unknown too.
        let f = SpanFacts { input_tokens: Some(5), ..SpanFacts::default() };
        assert_eq!(p.price(&f).price_source.as_deref(), Some(UNPRICED));
        // No tokens at all: not an LLM call, nothing to price.
        let c = p.price(&SpanFacts::default());
        assert_eq!(c, SpanCost::default());
    }

    #[test]
    fn litellm_file_drops_in_with_provider_and_region_keys() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("model_prices_and_context_window.json");
        std::fs::write(
            &file,
            r#"{
              "sample_spec": {"max_tokens": "LEGACY parameter", "input_cost_per_token": 0.0, "output_cost_per_token": 0.0},
              "gpt-4o": {"max_tokens": 16384, "input_cost_per_token": 2.5e-06, "output_cost_per_token": 1e-05,
                         "cache_read_input_token_cost": 1.25e-06, "litellm_provider": "openai", "mode": "chat",
                         "supports_vision": true},
              "bedrock/eu-central-1/anthropic.claude-3-7-sonnet-20250219-v1:0": {"input_cost_per_token": "3.3e-06",
                         "output_cost_per_token": 1.65e-05, "litellm_provider": "bedrock"},
              "dall-e-3": {"input_cost_per_pixel": 1e-07, "litellm_provider": "openai", "mode": "image_generation"},
              "gemini-1.5-pro": {"input_cost_per_token": 1.25e-06, "input_cost_per_token_above_128k_tokens": 2.5e-06,
                         "output_cost_per_token": 5e-06, "output_cost_per_token_above_128k_tokens": 1e-05}
            }"#,
        )
        .unwrap();
        let config = PricingConfig { model_files: vec![file], replace_default_models: true, ..Default::default() };
        let p = Pricer::from_config(&config).unwrap();
        assert_eq!(p.models().len(), 3, "sample_spec and the image model are skipped");
        let c = p.price(&llm("openai", "gpt-4o-2024-11-20", 1_000_000, 0));
        assert_eq!(c.price_source.as_deref(), Some("model_prices_and_context_window.json:gpt-4o"));
        let f = SpanFacts {
            peer_cloud_region: Some("eu-central-1"),
            ..llm("aws.bedrock", "eu.anthropic.claude-3-7-sonnet-20250219-v1:0", 1_000_000, 0)
        };
        let c = p.price(&f);
        assert!(close(c.token_cost_usd.unwrap(), 3.3), "{c:?}");
        // Same model in a region the file has no entry for: unknown (the file replaced the defaults).
        let f = SpanFacts { peer_cloud_region: Some("us-east-1"), ..f };
        assert_eq!(p.price(&f).price_source.as_deref(), Some(UNPRICED));
        let c = p.price(&llm("gcp.vertex_ai", "gemini-1.5-pro-002", 200_000, 1_000)).token_cost_usd.unwrap();
        assert!(close(c, 200_000.0 * 2.5e-6 + 1_000.0 * 1e-5));
    }

    #[test]
    fn aliases_map_deployment_names() {
        let mut config = PricingConfig::default();
        config.aliases.insert("prod-chat-*".into(), "gpt-4.1-mini".into());
        let p = Pricer::from_config(&config).unwrap();
        let c = p.price(&llm("azure.ai.openai", "prod-chat-eastus", 1_000_000, 0));
        assert_eq!(c.price_source.as_deref(), Some("default:gpt-4.1-mini"));
    }

    fn egress_facts<'a>(
        src: (Option<&'a str>, Option<&'a str>),
        dst: (Option<&'a str>, Option<&'a str>),
        provider: Option<&'a str>,
        req: i64,
        resp: i64,
    ) -> SpanFacts<'a> {
        SpanFacts {
            cloud_provider: src.0,
            cloud_region: src.1,
            peer_cloud_provider: dst.0,
            peer_cloud_region: dst.1,
            gen_ai_provider: provider,
            request_bytes: Some(req),
            response_bytes: Some(resp),
            ..SpanFacts::default()
        }
    }

    const GIB: i64 = 1 << 30;

    #[test]
    fn egress_same_region_is_free() {
        let p = Pricer::default();
        let c =
            p.price(&egress_facts((Some("aws"), Some("us-east-1")), (Some("aws"), Some("us-east-1")), None, GIB, GIB));
        assert_eq!(c.egress_bytes, Some(2 * GIB));
        assert_eq!(c.egress_cost_usd, Some(0.0));
        assert_eq!(c.cost_usd, Some(0.0));
        assert_eq!(c.price_source, None);
        // Bedrock in the caller's region, destination derived from the provider.
        let c = p.price(&egress_facts(
            (Some("aws"), Some("us-east-1")),
            (None, Some("us-east-1")),
            Some("aws.bedrock"),
            GIB,
            GIB,
        ));
        assert_eq!(c.egress_cost_usd, Some(0.0));
    }

    #[test]
    fn egress_cross_region_is_charged_both_ways_by_the_sender() {
        let p = Pricer::default();
        let c = p.price(&egress_facts(
            (Some("aws"), Some("us-east-1")),
            (Some("aws"), Some("eu-west-1")),
            None,
            GIB,
            3 * GIB,
        ));
        assert!(close(c.egress_cost_usd.unwrap(), 4.0 * 0.02));
    }

    #[test]
    fn egress_cross_cloud_each_cloud_charges_what_leaves_it() {
        let p = Pricer::default();
        // An agent on GCP calls Bedrock: request bytes leave GCP ($0.12), response bytes leave AWS ($0.09).
        let c = p.price(&egress_facts(
            (Some("gcp"), Some("us-central1")),
            (None, Some("us-east-1")),
            Some("aws.bedrock"),
            GIB,
            2 * GIB,
        ));
        assert!(close(c.egress_cost_usd.unwrap(), 0.12 + 2.0 * 0.09), "{c:?}");
        // Azure OpenAI from AWS.
        let c = p.price(&egress_facts((Some("aws"), None), (None, None), Some("azure.ai.openai"), GIB, GIB));
        assert!(close(c.egress_cost_usd.unwrap(), 0.09 + 0.087));
    }

    #[test]
    fn egress_to_the_internet() {
        let p = Pricer::default();
        // OpenAI's API is no cloud of ours: only the request bytes leave a cloud.
        let c = p.price(&egress_facts((Some("azure"), Some("eastus")), (None, None), Some("openai"), GIB, 5 * GIB));
        assert!(close(c.egress_cost_usd.unwrap(), 0.087));
        // A laptop calling Vertex: only the response leaves a cloud.
        let c = p.price(&egress_facts((None, None), (None, None), Some("gcp.vertex_ai"), GIB, GIB));
        assert!(close(c.egress_cost_usd.unwrap(), 0.12));
        // egress.bytes overrides the body sizes and is charged along the caller's path.
        let f = SpanFacts {
            egress_bytes: Some(2 * GIB),
            ..egress_facts((Some("aws"), None), (Some("gcp"), None), None, 1, 1)
        };
        let c = p.price(&f);
        assert_eq!(c.egress_bytes, Some(2 * GIB));
        assert!(close(c.egress_cost_usd.unwrap(), 2.0 * 0.09));
    }

    #[test]
    fn tokens_and_egress_add_up() {
        let p = Pricer::default();
        let f = SpanFacts {
            cloud_provider: Some("gcp"),
            request_bytes: Some(GIB),
            ..llm("openai", "gpt-4o-mini", 1_000_000, 0)
        };
        let c = p.price(&f);
        assert!(close(c.cost_usd.unwrap(), 0.15 + 0.12));
    }

    /// Issue #12, item 8: matching a long model name was quadratic (a 60 KB name of version-like tokens: 6 s and
    /// 2.5 GB). The work is now linear in the name's length: ten times the name, ten times the bytes of
    /// candidates, and a bounded number of them.
    #[test]
    fn matching_a_long_name_is_linear() {
        use super::super::prices::{MAX_VERSION_STRIPS, candidates};
        let work = |tokens: usize| {
            let c = candidates(&format!("m{}", "-001".repeat(tokens)));
            (c.len(), c.iter().map(String::len).sum::<usize>())
        };
        let (n6, bytes6) = work(1_500);
        let (n60, bytes60) = work(15_000);
        assert!(n60 <= 4 + 2 * MAX_VERSION_STRIPS && n60 == n6, "{n6} then {n60} candidates");
        assert!(bytes60 <= 11 * bytes6, "6 KB name: {bytes6} bytes of candidates, 60 KB: {bytes60}");

        // Priced with the length bound raised past the name: memory in proportion to the name.
        let name = format!("m{}", "-001".repeat(15_000));
        let p = Pricer::from_config(&PricingConfig { max_name_bytes: 1 << 20, ..Default::default() }).unwrap();
        let (cost, _, peak) = crate::alloc_meter::measure(|| p.price(&llm("openai", &name, 10, 10)));
        assert_eq!(cost.price_source.as_deref(), Some(UNPRICED));
        assert!(peak < 64 * name.len(), "peak {peak} for a {}-byte name", name.len());
    }

    /// Issue #12, item 8: 300 distinct 2 MiB model names stayed in the resolution cache for good. Names past
    /// `max_name_bytes` are not looked up nor kept, and the cache holds at most `cache_bytes` of names.
    #[test]
    fn the_resolution_cache_is_bounded_in_bytes() {
        let p = Pricer::default();
        for i in 0..300 {
            let name = format!("{i}{}", "m".repeat(2 << 20));
            assert_eq!(p.price(&llm("openai", &name, 10, 10)).price_source.as_deref(), Some(UNPRICED));
        }
        assert_eq!(p.cache.read().bytes, 0);
        // A real model is still priced and cached.
        assert!(p.price(&llm("openai", "gpt-4o", 10, 10)).cost_usd.is_some());
        assert_eq!(p.cache.read().len, 1);

        let config = PricingConfig { max_name_bytes: 1 << 20, cache_bytes: 1 << 20, ..Default::default() };
        let p = Pricer::from_config(&config).unwrap();
        for i in 0..300 {
            p.price(&llm("openai", &format!("{i}{}", "m".repeat(100_000)), 10, 10));
            let cache = p.cache.read();
            assert!(cache.bytes <= 1 << 20 && cache.len <= 11, "{} bytes in {} entries", cache.bytes, cache.len);
        }
    }

    /// Issue #12: caches draw from the one memory budget. The resolution cache holds `pricing.cache_bytes` in the
    /// budget while a pricer lives (refused when the budget has no room), and what it really allocates, entries,
    /// copies of prices, buckets and map slots included, stays within that bound however many names arrive.
    #[test]
    fn the_resolution_cache_reserves_its_bound_and_allocates_within_it() {
        let cache_bytes = 256 << 10;
        let config = PricingConfig { cache_bytes, ..Default::default() };
        let budget = MemoryBudget::new(1 << 20);
        let p = Pricer::from_config(&config).unwrap();
        p.reserve_cache(&budget).unwrap();
        assert_eq!(budget.used(), cache_bytes);
        let clone = p.clone();
        drop(p);
        assert_eq!(budget.used(), cache_bytes, "clones share the cache and its reservation");

        // Known models (whose entries copy a price) and ever new unknown names, 200 bytes each, well past the bound.
        let names: Vec<String> = (0..20_000).map(|i| format!("gpt-4o-{i:0>194}")).collect();
        let (_, _, peak) = crate::alloc_meter::measure(|| {
            for (i, name) in names.iter().enumerate() {
                let model = if i % 3 == 0 { "gpt-4o-mini" } else { name.as_str() };
                clone.price(&SpanFacts { cloud_region: Some(&name[name.len() - 8..]), ..llm("openai", model, 10, 10) });
            }
        });
        let cache = clone.cache.read();
        assert!(cache.bytes <= cache_bytes, "{} bytes accounted", cache.bytes);
        assert!(cache.len > 100, "the cache was used ({} entries)", cache.len);
        drop(cache);
        // The peak covers the full cache plus one lookup's temporaries (candidate names, a few KiB).
        assert!(peak <= cache_bytes + (32 << 10), "the cache allocated {peak} bytes for a bound of {cache_bytes}");
        assert_eq!(budget.used(), cache_bytes, "filling the cache reserves nothing more");
        drop(clone);
        assert_eq!(budget.used(), 0, "the reservation ends with the last pricer");

        // No room: refused, naming the setting.
        let full = MemoryBudget::new(cache_bytes - 1);
        let err = Pricer::from_config(&config).unwrap().reserve_cache(&full).unwrap_err();
        assert!(err.to_string().contains("pricing.cache_bytes"), "{err}");
        assert_eq!(full.used(), 0);
    }
}
