//! Pricing at ingest (tokens x price, egress), hedged-request accounting, and budget guardrails.
//!
//! CONTRACT (owned by the cost work; the collector core calls only these names):
//! - `PricingConfig`, `BudgetConfig` (+ `validate`), `AlertsConfig`: sections of [`crate::config::Config`].
//! - `Pricer::from_config(&PricingConfig) -> Result<Pricer, CostError>` and `Pricer::price(&SpanFacts) -> SpanCost`,
//!   called once per span by the normaliser.

use serde::{Deserialize, Serialize};

/// Where prices come from. (Placeholder: the cost work fills this in.)
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PricingConfig {}

/// One `[[budget]]` table. (Placeholder: the cost work fills this in.)
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct BudgetConfig {
    /// The budget's name, unique.
    pub name: String,
}

impl BudgetConfig {
    /// Checks the budget's values; the error says what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        Ok(())
    }
}

/// Alert delivery. (Placeholder: the cost work fills this in.)
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AlertsConfig {}

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
    /// Which price entry priced the tokens, or `unknown`; `None` when the span has no tokens to price.
    pub price_source: Option<String>,
}

/// Prices spans. (Placeholder: the cost work fills this in.)
#[derive(Debug, Clone, Default)]
pub struct Pricer {}

impl Pricer {
    /// Builds the pricer from the defaults and the configured override files.
    pub fn from_config(_config: &PricingConfig) -> Result<Pricer, String> {
        Ok(Pricer {})
    }

    /// Prices one span.
    pub fn price(&self, _facts: &SpanFacts<'_>) -> SpanCost {
        SpanCost::default()
    }
}

/// The schema of the `alerts` SQL table. (Placeholder: the cost work fills this in.)
pub fn alerts_schema() -> datafusion::arrow::datatypes::SchemaRef {
    std::sync::Arc::new(datafusion::arrow::datatypes::Schema::empty())
}

/// Every alert event recorded under `data_dir`, as the `alerts` table. (Placeholder: the cost work fills this in.)
pub fn alerts_table(_data_dir: &std::path::Path) -> Result<datafusion::arrow::record_batch::RecordBatch, String> {
    Ok(datafusion::arrow::record_batch::RecordBatch::new_empty(alerts_schema()))
}
