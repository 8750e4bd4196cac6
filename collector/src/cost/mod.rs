//! Pricing at ingest (tokens x price, egress), hedged-request accounting, and budget guardrails.
//!
//! - [`Pricer`] prices every span once, in the normaliser: token cost from a LiteLLM-format model table
//!   ([`prices`]), egress cost from per-cloud data-transfer prices ([`egress`]). The figures land in the span's
//!   `token_cost_usd`, `egress_bytes`, `egress_cost_usd`, `cost_usd` and `price_source` columns.
//! - [`BudgetEngine`] watches acknowledged spans ([`crate::observe::SpanObserver`]), keeps period-to-date spend per
//!   `[[budget]]`, raises and resolves alerts (log, `GET /api/v1/alerts`, the `alerts` SQL table, webhooks) and
//!   answers the hedging guardrail (`GET /api/v1/guardrails/hedging`).
//!
//! `docs/cost.md` documents the rules (token arithmetic, egress paths, the `hedge.*` convention, budgets).

pub mod alerts;
pub mod budget;
pub mod egress;
pub mod engine;
pub mod pricer;
pub mod prices;
pub mod webhook;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use alerts::{AlertEvent, alerts_schema, alerts_table};
pub use budget::{BudgetKind, BudgetPeriod, BudgetStatus};
pub use egress::{EgressPrice, EgressTable};
pub use engine::{BudgetEngine, HedgingDecision, routes};
pub use pricer::{Pricer, UNKNOWN};
pub use prices::{ModelPrice, PriceTable};

/// What went wrong in the cost module.
#[derive(Debug, Error)]
pub enum CostError {
    /// A price file could not be read.
    #[error("cannot read price file {path}: {source}")]
    ReadFile { path: PathBuf, source: std::io::Error },
    /// A price table is not in the expected format.
    #[error("invalid price table {origin}: {detail}")]
    PriceFile { origin: String, detail: String },
    /// A configuration value cannot work.
    #[error("invalid {field}: {reason}")]
    Config { field: String, reason: String },
    /// The alert state under the data dir cannot be read or written.
    #[error("alert state {path}: {detail}")]
    AlertState { path: PathBuf, detail: String },
    /// Reading the stored spans to rebuild period-to-date spend failed.
    #[error("cannot rebuild budget history from {path}: {detail}")]
    History { path: PathBuf, detail: String },
}

/// `[pricing]`: where model and egress prices come from.
///
/// ```toml
/// [pricing]
/// model_files = ["/etc/tailscope/model_prices_and_context_window.json"]  # LiteLLM format, merged over the defaults
/// egress_file = "/etc/tailscope/egress.json"
/// aliases = { "prod-chat-*" = "gpt-4.1-mini" }           # model-name pattern -> priced model
/// provider_clouds = { "my.gateway" = "gcp" }              # gen_ai.provider.name pattern -> cloud (or "internet")
/// [pricing.models."my-finetune"]                          # inline entries, LiteLLM field names
/// input_cost_per_token = 3e-6
/// output_cost_per_token = 1.2e-5
/// ```
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PricingConfig {
    /// LiteLLM-format JSON files merged over the built-in table, in order (a later entry replaces an earlier one
    /// with the same name).
    pub model_files: Vec<PathBuf>,
    /// Start from an empty model table instead of the built-in one.
    pub replace_default_models: bool,
    /// Inline model entries (LiteLLM field names), merged last.
    pub models: BTreeMap<String, serde_json::Value>,
    /// Model-name patterns (`*` wildcard) mapped to a priced model name, tried before the normal matching:
    /// for Azure deployment names and gateways that rename models.
    pub aliases: BTreeMap<String, String>,
    /// A JSON file of egress prices per cloud (`{"aws": {"internet_per_gb": 0.09, "cross_region_per_gb": 0.02}}`),
    /// merged over the built-in figures.
    pub egress_file: Option<PathBuf>,
    /// Start from no egress prices instead of the built-in ones.
    pub replace_default_egress: bool,
    /// Inline egress prices per cloud, merged last.
    pub egress: BTreeMap<String, EgressPrice>,
    /// `gen_ai.provider.name` patterns mapped to the cloud serving them (`aws`, `azure`, `gcp`, ... or `internet`),
    /// ahead of the built-in map (`aws.bedrock` -> aws, `azure.ai.*` -> azure, `gcp.*` -> gcp).
    pub provider_clouds: BTreeMap<String, String>,
    /// Bytes in the "GB" that egress prices are quoted per. Clouds meter in binary gigabytes (2^30), the default.
    pub bytes_per_gb: u64,
    /// Longest model, provider or region name used to look a price up. A longer one (no real name comes close)
    /// is treated as absent: a span priced by such a model is `unknown`. Bounds the work and memory a hostile
    /// name costs per span.
    pub max_name_bytes: usize,
    /// Bytes the price-resolution cache may hold (names, the prices they resolve to and the map's slots) before it
    /// is emptied; it holds at most 8,192 entries too. Reserved from `memory.limit_mb` at start.
    pub cache_bytes: usize,
}

impl Default for PricingConfig {
    fn default() -> Self {
        PricingConfig {
            model_files: Vec::new(),
            replace_default_models: false,
            models: BTreeMap::new(),
            aliases: BTreeMap::new(),
            egress_file: None,
            replace_default_egress: false,
            egress: BTreeMap::new(),
            provider_clouds: BTreeMap::new(),
            bytes_per_gb: 1 << 30,
            max_name_bytes: 256,
            cache_bytes: 4 << 20,
        }
    }
}

impl PricingConfig {
    /// Checks values that parse but cannot work (the files themselves are read by [`Pricer::from_config`]).
    pub fn validate(&self) -> Result<(), CostError> {
        if self.bytes_per_gb == 0 {
            return Err(CostError::Config {
                field: "pricing.bytes_per_gb".into(),
                reason: "must be greater than 0".into(),
            });
        }
        if self.max_name_bytes == 0 {
            let reason = "must be greater than 0".into();
            return Err(CostError::Config { field: "pricing.max_name_bytes".into(), reason });
        }
        Ok(())
    }
}

/// One `[[budget]]` table.
///
/// ```toml
/// [[budget]]
/// name = "egress-monthly"
/// kind = "egress"            # egress | duplicate_inference | session_cost | total
/// period = "month"           # day | month | a rolling window such as "24h" or "7d"
/// cap_usd = 500
/// warn_at = [0.5, 0.8, 1.0]  # fractions of the cap; 1.0 and above are breaches
/// providers = ["aws.bedrock"] # optional filters: gen_ai_provider, cloud_region, service_name patterns
/// ```
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BudgetConfig {
    /// The budget's name, unique.
    pub name: String,
    /// What is counted.
    pub kind: BudgetKind,
    /// Over which time spend accumulates.
    pub period: BudgetPeriod,
    /// Cap in USD per period (per session for `session_cost`).
    #[serde(default)]
    pub cap_usd: Option<f64>,
    /// For `duplicate_inference`: cap on duplicate spend as a share of inference spend (e.g. `0.05`).
    #[serde(default)]
    pub cap_share: Option<f64>,
    /// Alert thresholds as fractions of the cap; each fires once per period. Those >= 1.0 are breaches.
    #[serde(default = "default_warn_at")]
    pub warn_at: Vec<f64>,
    /// Only spans whose `gen_ai_provider` matches one of these patterns (`*` wildcard); empty = all.
    #[serde(default)]
    pub providers: Vec<String>,
    /// Only spans whose `cloud_region` (the caller's) matches one of these patterns; empty = all.
    #[serde(default)]
    pub regions: Vec<String>,
    /// Only spans whose `service_name` matches one of these patterns; empty = all.
    #[serde(default)]
    pub services: Vec<String>,
    /// Warn when the burn rate projects a breach before the period ends (calendar periods only).
    #[serde(default = "yes")]
    pub forecast: bool,
}

fn default_warn_at() -> Vec<f64> {
    vec![0.8, 1.0]
}

fn yes() -> bool {
    true
}

impl BudgetConfig {
    /// Checks the budget's values; the error says what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.name.trim().is_empty() {
            return Err("name must not be empty".into());
        }
        if self.name.chars().any(|c| c.is_control() || c == '/') {
            return Err(format!("name {:?} must not contain '/' or control characters", self.name));
        }
        let positive = |v: Option<f64>, what: &str| -> Result<(), String> {
            match v {
                Some(x) if !x.is_finite() || x <= 0.0 => Err(format!("{what} must be a positive number, got {x}")),
                _ => Ok(()),
            }
        };
        positive(self.cap_usd, "cap_usd")?;
        positive(self.cap_share, "cap_share")?;
        match self.kind {
            BudgetKind::DuplicateInference => {
                if self.cap_usd.is_none() && self.cap_share.is_none() {
                    return Err("a duplicate_inference budget needs cap_usd, cap_share or both".into());
                }
                if self.cap_share.is_some_and(|s| s > 1.0) {
                    return Err("cap_share is a fraction of inference spend and must be at most 1.0".into());
                }
            }
            _ => {
                if self.cap_share.is_some() {
                    return Err(format!("cap_share applies to duplicate_inference budgets only, not {}", self.kind));
                }
                if self.cap_usd.is_none() {
                    return Err(format!("a {} budget needs cap_usd", self.kind));
                }
            }
        }
        if self.warn_at.is_empty() {
            return Err("warn_at must list at least one threshold (e.g. [0.8, 1.0])".into());
        }
        if let Some(bad) = self.warn_at.iter().find(|t| !t.is_finite() || **t <= 0.0 || **t > 10.0) {
            return Err(format!("warn_at thresholds are fractions of the cap in (0, 10], got {bad}"));
        }
        if let BudgetPeriod::Rolling(window) = self.period
            && window < Duration::from_secs(60)
        {
            let window = humantime_serde::re::humantime::format_duration(window);
            return Err(format!("a rolling period must be at least 1m, got {window}"));
        }
        for (what, patterns) in
            [("providers", &self.providers), ("regions", &self.regions), ("services", &self.services)]
        {
            if patterns.iter().any(|p| p.is_empty()) {
                return Err(format!("{what} must not contain an empty pattern"));
            }
        }
        Ok(())
    }
}

/// Checks a whole `[[budget]]` list: each budget, and that names are unique.
pub fn validate_budgets(budgets: &[BudgetConfig]) -> Result<(), CostError> {
    let mut seen = std::collections::HashSet::new();
    for (i, b) in budgets.iter().enumerate() {
        b.validate().map_err(|reason| CostError::Config { field: format!("budget[{i}] ({})", b.name), reason })?;
        if !seen.insert(b.name.as_str()) {
            return Err(CostError::Config {
                field: format!("budget[{i}]"),
                reason: format!(
                    "the name {:?} is used by two budgets; names identify alerts and must be unique",
                    b.name
                ),
            });
        }
    }
    Ok(())
}

/// `[alerts]`: where alerts go and how hard delivery tries.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AlertsConfig {
    /// Webhook URLs; each alert event is POSTed to each as JSON (Slack-compatible `text` field included).
    /// `http://` or `https://` (TLS with the system's root certificates).
    pub webhooks: Vec<String>,
    /// Per-attempt timeout.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Attempts per event and webhook before the event is given up (and logged as an error).
    pub max_attempts: u32,
    /// Delay before the first retry; doubles each attempt (with jitter) up to `max_backoff`.
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// Longest delay between attempts.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Budgets are re-evaluated at least this often (period ends, rolling windows, forecasts), and at most
    /// a few times a second while spans arrive.
    #[serde(with = "humantime_serde")]
    pub evaluate_interval: Duration,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            webhooks: Vec::new(),
            timeout: Duration::from_secs(5),
            max_attempts: 10,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(60),
            evaluate_interval: Duration::from_secs(10),
        }
    }
}

impl AlertsConfig {
    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), CostError> {
        let invalid = |field: &str, reason: String| CostError::Config { field: format!("alerts.{field}"), reason };
        for url in &self.webhooks {
            let parsed =
                reqwest::Url::parse(url).map_err(|e| invalid("webhooks", format!("{url:?} is not a URL: {e}")))?;
            match parsed.scheme() {
                "http" | "https" => {}
                other => return Err(invalid("webhooks", format!("{url:?}: unsupported scheme {other:?}"))),
            }
        }
        if self.max_attempts == 0 {
            return Err(invalid("max_attempts", "must be at least 1".into()));
        }
        if self.timeout.is_zero() {
            return Err(invalid("timeout", "must be greater than 0".into()));
        }
        if self.evaluate_interval < Duration::from_millis(100) {
            return Err(invalid("evaluate_interval", "must be at least 100ms".into()));
        }
        Ok(())
    }
}

/// What the pricer needs to know about one span, borrowed from the normaliser's working state.
#[derive(Debug, Clone, Copy, Default)]
pub struct SpanFacts<'a> {
    pub gen_ai_provider: Option<&'a str>,
    pub gen_ai_operation: Option<&'a str>,
    pub request_model: Option<&'a str>,
    pub response_model: Option<&'a str>,
    pub input_tokens: Option<i64>,
    pub output_tokens: Option<i64>,
    pub cache_read_tokens: Option<i64>,
    pub cache_creation_tokens: Option<i64>,
    pub reasoning_tokens: Option<i64>,
    /// Resource `cloud.provider` / `cloud.region`: where the caller runs.
    pub cloud_provider: Option<&'a str>,
    pub cloud_region: Option<&'a str>,
    /// The span's own `cloud.provider` / `cloud.region` (the called destination), if set.
    pub peer_cloud_provider: Option<&'a str>,
    pub peer_cloud_region: Option<&'a str>,
    /// `http.request.body.size`.
    pub request_bytes: Option<i64>,
    /// `http.response.body.size`.
    pub response_bytes: Option<i64>,
    /// `egress.bytes`, which overrides the two above where set.
    pub egress_bytes: Option<i64>,
}

/// The cost columns of one span.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SpanCost {
    pub token_cost_usd: Option<f64>,
    pub egress_bytes: Option<i64>,
    pub egress_cost_usd: Option<f64>,
    pub cost_usd: Option<f64>,
    /// Which price entry priced the tokens (`default:gpt-4o`, `<file name>:<key>`, `config:<key>`), or `unknown`;
    /// `None` when the span has no tokens to price.
    pub price_source: Option<String>,
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    fn parse(toml: &str) -> Result<Config, String> {
        Config::from_toml(toml, Path::new("test.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn the_issue_example_parses() {
        let c = parse(
            r#"
            [pricing]
            aliases = { "prod-chat-*" = "gpt-4.1-mini" }
            provider_clouds = { "my.gateway" = "gcp" }
            [pricing.models."my-finetune"]
            input_cost_per_token = 3e-6
            output_cost_per_token = 1.2e-5
            [pricing.egress.aws]
            internet_per_gb = 0.05
            cross_region_per_gb = 0.02

            [[budget]]
            name = "egress-monthly"
            kind = "egress"
            period = "month"
            cap_usd = 500
            warn_at = [0.5, 0.8, 1.0]

            [[budget]]
            name = "hedging"
            kind = "duplicate_inference"
            period = "24h"
            cap_share = 0.05

            [alerts]
            webhooks = ["http://relay.internal:8080/hook"]
            "#,
        )
        .unwrap();
        assert_eq!(c.budgets[0].cap_usd, Some(500.0));
        assert_eq!(c.budgets[0].kind, BudgetKind::Egress);
        assert_eq!(c.budgets[1].period, BudgetPeriod::Rolling(std::time::Duration::from_secs(86_400)));
        assert_eq!(c.budgets[1].warn_at, vec![0.8, 1.0]);
        c.alerts.validate().unwrap();
        let p = Pricer::from_config(&c.pricing).unwrap();
        assert_eq!(p.models().get("my-finetune").unwrap().rates.input, Some(3e-6));
        assert_eq!(p.provider_cloud("my.gateway"), Some("gcp"));
    }

    #[test]
    fn bad_budgets_are_refused_with_the_reason() {
        let err = parse("[[budget]]\nname = \"x\"\nkind = \"egress\"\nperiod = \"month\"\n").unwrap_err();
        assert!(err.contains("needs cap_usd"), "{err}");
        let err = parse("[[budget]]\nname = \"x\"\nkind = \"egres\"\nperiod = \"month\"\ncap_usd = 1\n").unwrap_err();
        assert!(err.contains("egres"), "{err}");
        let err = parse("[[budget]]\nname = \"x\"\nkind = \"total\"\nperiod = \"weekly\"\ncap_usd = 1\n").unwrap_err();
        assert!(err.contains("weekly"), "{err}");
        let err =
            parse("[[budget]]\nname = \"x\"\nkind = \"total\"\nperiod = \"day\"\ncap_usd = 1\ncap = 2\n").unwrap_err();
        assert!(err.contains("cap"), "{err}");
        let err = parse("[[budget]]\nname = \"x\"\nkind = \"total\"\nperiod = \"day\"\ncap_usd = -1\n").unwrap_err();
        assert!(err.contains("positive"), "{err}");
        let err =
            parse("[[budget]]\nname = \"x\"\nkind = \"egress\"\nperiod = \"day\"\ncap_share = 0.1\ncap_usd = 1\n")
                .unwrap_err();
        assert!(err.contains("duplicate_inference budgets only"), "{err}");
        let twice = BudgetConfig { name: "a".into(), cap_usd: Some(1.0), warn_at: vec![1.0], ..Default::default() };
        let err = validate_budgets(&[twice.clone(), twice]).unwrap_err().to_string();
        assert!(err.contains("unique"), "{err}");
    }

    #[test]
    fn webhooks_must_be_http_or_https_urls() {
        let https = AlertsConfig { webhooks: vec!["https://hooks.slack.com/x".into()], ..Default::default() };
        assert!(https.validate().is_ok());
        let ftp = AlertsConfig { webhooks: vec!["ftp://example.com/x".into()], ..Default::default() };
        assert!(ftp.validate().unwrap_err().to_string().contains("unsupported scheme"));
        let junk = AlertsConfig { webhooks: vec!["not a url".into()], ..Default::default() };
        assert!(junk.validate().unwrap_err().to_string().contains("not a URL"));
        let pricing = PricingConfig { model_files: vec!["/nonexistent/prices.json".into()], ..Default::default() };
        assert!(Pricer::from_config(&pricing).unwrap_err().to_string().contains("/nonexistent/prices.json"));
    }
}
