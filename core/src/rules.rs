//! Business rules every reader shares, defined once: the values the normaliser writes and the views, budgets and
//! live windows read. `docs/sql.md` and `docs/cost.md` document them.

use crate::schema::SpanColumn;

/// The `gen_ai_operation` values that are a model inference (OpenTelemetry GenAI semantic conventions): the rows
/// of the `llm_calls` view, and what the cost views count as calls.
pub const INFERENCE_OPERATIONS: [&str; 4] = ["chat", "text_completion", "generate_content", "embeddings"];

/// [`INFERENCE_OPERATIONS`] as an SQL list, `('chat', 'text_completion', …)`, for `gen_ai_operation IN …`.
pub fn inference_operations_sql() -> String {
    let quoted: Vec<String> = INFERENCE_OPERATIONS.iter().map(|op| format!("'{op}'")).collect();
    format!("({})", quoted.join(", "))
}

/// Whether a span is a *duplicate*: a copy of a hedged request (it carries a `hedge_id`) that did not win
/// (`hedge_winner` false or unknown). Its cost is duplicate spend: the `duplicate_inference` budget's, and the cost
/// views' `duplicate_cost_usd`, which read the same rule as SQL ([`duplicate_copy_sql`]).
pub fn is_duplicate_copy(hedge_id: Option<&str>, hedge_winner: Option<bool>) -> bool {
    hedge_id.is_some() && hedge_winner != Some(true)
}

/// [`is_duplicate_copy`] as an SQL predicate over `spans`' columns.
pub fn duplicate_copy_sql() -> String {
    format!("({} IS NOT NULL AND {} IS NOT TRUE)", SpanColumn::HedgeId.name(), SpanColumn::HedgeWinner.name())
}

/// The `price_source` of a span whose model has no price; its cost columns are NULL.
pub const UNPRICED: &str = "unknown";

/// `status_code` values: OTLP's `Status.code`, in lower case.
pub mod status {
    /// `STATUS_CODE_OK`.
    pub const OK: &str = "ok";
    /// `STATUS_CODE_ERROR`: the span failed. Error counts and rates count these.
    pub const ERROR: &str = "error";
    /// `STATUS_CODE_UNSET` (and any unknown code).
    pub const UNSET: &str = "unset";
}

/// The kind of step a span is in an agent session, as the release comparison (`release_compare`, docs/sql.md)
/// groups them: one rule, so that "tool" means the same on every screen that counts steps.
pub mod step {
    /// An agent's own span (`invoke_agent`, `create_agent`): the turn around its steps.
    pub const AGENT: &str = "agent";
    /// A tool call (`execute_tool`, or any span naming a `gen_ai.tool.name`).
    pub const TOOL: &str = "tool";
    /// Memory and retrieval: embeddings, and spans whose name says memory, vector or retrieval.
    pub const MEMORY: &str = "memory";
    /// A model inference that is not an embedding (chat, completion, generate_content).
    pub const MODEL_CALL: &str = "model call";
    /// Anything else (HTTP handlers, the service's own work).
    pub const OTHER: &str = "other";

    /// The rule as an SQL `CASE` over `spans`' columns, checked in this order (a tool call that embeds is a
    /// tool, an agent span is never a model call).
    pub fn step_type_sql() -> String {
        let inference = super::inference_operations_sql();
        format!(
            "(CASE WHEN gen_ai_operation IN ('invoke_agent', 'create_agent') THEN '{AGENT}' \
             WHEN gen_ai_operation = 'execute_tool' OR tool_name IS NOT NULL THEN '{TOOL}' \
             WHEN gen_ai_operation = 'embeddings' OR lower(name) LIKE '%memory%' OR lower(name) LIKE '%vector%' \
             OR lower(name) LIKE '%retriev%' THEN '{MEMORY}' \
             WHEN gen_ai_operation IN {inference} THEN '{MODEL_CALL}' \
             ELSE '{OTHER}' END)"
        )
    }
}

/// When a difference between two releases is beyond noise (`release_compare`, docs/sql.md). A release screen
/// holds tens of comparisons at once (7 figures for every step type and model), so the tests are strict: at the
/// usual 5% about one comparison in twenty would be marked by chance alone.
pub mod noise {
    /// Mann-Whitney U (per-session tokens and cost) and the two-proportion z-test (error and hedge rates): beyond
    /// noise when |z| exceeds this (two-sided p < 0.001).
    pub const TEST_Z: f64 = 3.29;
    /// Latency quantiles: the distribution-free interval of each version's quantile from order statistics (ranks
    /// `n*q -/+ z*sqrt(n*q*(1-q))`) at this z (99% each); beyond noise when the two intervals do not overlap,
    /// about p < 0.0003 for intervals of equal width.
    pub const QUANTILE_INTERVAL_Z: f64 = 2.576;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_inference_list_is_valid_sql() {
        assert_eq!(inference_operations_sql(), "('chat', 'text_completion', 'generate_content', 'embeddings')");
    }

    #[test]
    fn the_step_rule_names_every_type() {
        let sql = step::step_type_sql();
        for t in [step::AGENT, step::TOOL, step::MEMORY, step::MODEL_CALL, step::OTHER] {
            assert!(sql.contains(&format!("'{t}'")), "{sql}");
        }
    }

    #[test]
    fn the_duplicate_rule_reads_the_hedge_columns() {
        assert_eq!(duplicate_copy_sql(), "(hedge_id IS NOT NULL AND hedge_winner IS NOT TRUE)");
        assert!(is_duplicate_copy(Some("h1"), Some(false)));
        assert!(is_duplicate_copy(Some("h1"), None));
        assert!(!is_duplicate_copy(Some("h1"), Some(true)));
        assert!(!is_duplicate_copy(None, Some(false)));
    }
}
