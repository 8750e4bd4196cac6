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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_inference_list_is_valid_sql() {
        assert_eq!(inference_operations_sql(), "('chat', 'text_completion', 'generate_content', 'embeddings')");
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
