//! Pricing at ingest (tokens x price, egress), hedged-request accounting, and budget guardrails.
//!
//! - [`Pricer`] prices every span once, in the normaliser: token cost from a LiteLLM-format model table
//!   ([`prices`]), egress cost from per-cloud data-transfer prices ([`egress`]). The figures land in the span's
//!   `token_cost_usd`, `egress_bytes`, `egress_cost_usd`, `cost_usd` and `price_source` columns.
//! - [`BudgetEngine`] watches acknowledged spans ([`crate::observe::SpanObserver`]), keeps period-to-date spend per
//!   `[[budget]]`, raises and resolves alerts (log, `GET /api/v1/alerts`, the `alerts` SQL table, [`webhook`]s
//!   with their on-disk [`outbox`]es) and answers the hedging guardrail (`GET /api/v1/guardrails/hedging`); its
//!   figures and alert state are Prometheus series too ([`series`]).
//!
//! The settings these read (`[pricing]`, `[[budget]]`, `[alerts]`) and the `alerts` table are in
//! `tailscope-core` ([`tailscope_core::cost`], [`tailscope_core::alerts`]), with the one typed config.
//!
//! `docs/cost.md` documents the rules (token arithmetic, egress paths, the `hedge.*` convention, budgets).

pub mod alerts;
pub mod budget;
pub mod egress;
pub mod engine;
pub mod fleet;
pub mod outbox;
pub mod pricer;
pub mod prices;
pub mod reprice;
pub mod series;
pub mod webhook;

use std::path::PathBuf;

use tailscope_core::error::ConfigError;
use tailscope_core::history::HistoryError;
use thiserror::Error;

pub use budget::BudgetStatus;
pub use egress::EgressTable;
pub use engine::{BudgetEngine, Decider, HedgingDecision, routes};
pub use pricer::Pricer;
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
    #[error("cannot rebuild budget spend: {0}")]
    History(#[from] HistoryError),
    /// The stored spans read for the rebuild lack a column budgets need, or hold it with another type.
    #[error("cannot rebuild budget spend: the stored spans do not fit the budgets' columns: {detail}")]
    HistoryShape { detail: String },
}

impl From<ConfigError> for CostError {
    /// A cost setting refused by its check in `tailscope_core::cost` (when a pricer or the budget engine is built
    /// from a config that was not validated whole): the same key and reason.
    fn from(e: ConfigError) -> CostError {
        match e {
            ConfigError::Invalid { field, reason } => CostError::Config { field, reason },
            other => CostError::Config { field: "config".into(), reason: other.to_string() },
        }
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
    /// The part of `cache_creation_tokens` written with a 1-hour lifetime.
    pub cache_creation_1h_tokens: Option<i64>,
    pub reasoning_tokens: Option<i64>,
    /// The service tier that served the call (`priority`, `flex`, `batch`, `default`...): the response's, else
    /// the request's.
    pub service_tier: Option<&'a str>,
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

    use tailscope_core::config::Config;
    use tailscope_core::cost::{BudgetKind, BudgetPeriod, PricingConfig};

    use super::*;

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
    fn a_missing_price_file_is_named() {
        let pricing = PricingConfig { model_files: vec!["/nonexistent/prices.json".into()], ..Default::default() };
        assert!(Pricer::from_config(&pricing).unwrap_err().to_string().contains("/nonexistent/prices.json"));
    }
}
