//! Business rules every reader shares, defined once: the values the normaliser writes and the views, budgets and
//! live windows read. `docs/sql.md` and `docs/cost.md` document them.

/// The `gen_ai_operation` values that are a model inference (OpenTelemetry GenAI semantic conventions): the rows
/// of the `llm_calls` view, and what the cost views count as calls.
pub const INFERENCE_OPERATIONS: [&str; 4] = ["chat", "text_completion", "generate_content", "embeddings"];

/// [`INFERENCE_OPERATIONS`] as an SQL list, `('chat', 'text_completion', …)`, for `gen_ai_operation IN …`.
pub fn inference_operations_sql() -> String {
    let quoted: Vec<String> = INFERENCE_OPERATIONS.iter().map(|op| format!("'{op}'")).collect();
    format!("({})", quoted.join(", "))
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
}
