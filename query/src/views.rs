//! The base views every user of tailscope wants, documented in `docs/sql.md`.

use tailscope_core::rules::{inference_operations_sql, status};

/// `(view name, SQL)` in registration order: a view may use the ones before it.
pub fn base_views() -> Vec<(&'static str, String)> {
    let inference = inference_operations_sql();
    let error = status::ERROR;
    vec![
        ("llm_calls", format!("SELECT * FROM spans WHERE gen_ai_operation IN {inference}")),
        (
            "sessions",
            format!(
                "SELECT
                    session_id,
                    min(start_time) AS first_time,
                    max(end_time) AS last_time,
                    (CAST(max(end_time) AS BIGINT) - CAST(min(start_time) AS BIGINT)) / 1e6 AS wall_duration_ms,
                    count(*) AS steps,
                    count(DISTINCT trace_id) AS traces,
                    count(*) FILTER (WHERE gen_ai_operation IN {inference}) AS llm_calls,
                    count(*) FILTER (WHERE gen_ai_operation = 'execute_tool' OR tool_name IS NOT NULL) AS tool_calls,
                    sum(input_tokens) AS input_tokens,
                    sum(output_tokens) AS output_tokens,
                    sum(cache_read_tokens) AS cache_read_tokens,
                    coalesce(sum(input_tokens), 0) + coalesce(sum(output_tokens), 0) AS total_tokens,
                    sum(cost_usd) AS cost_usd,
                    array_to_string(array_sort(array_agg(DISTINCT gen_ai_provider)
                        FILTER (WHERE gen_ai_provider IS NOT NULL)), ',') AS providers,
                    count(*) FILTER (WHERE status_code = '{error}') AS error_count
                FROM spans
                WHERE session_id IS NOT NULL
                GROUP BY session_id"
            ),
        ),
        (
            "provider_latency",
            format!(
                "SELECT
                gen_ai_provider,
                cloud_region,
                request_model,
                count(*) AS calls,
                quantile_exact(duration_ns / 1e6, 0.5) AS p50_ms,
                quantile_exact(duration_ns / 1e6, 0.95) AS p95_ms,
                quantile_exact(duration_ns / 1e6, 0.99) AS p99_ms,
                quantile_exact(duration_ns / 1e6, 0.999) AS p999_ms,
                max(duration_ns) / 1e6 AS max_ms,
                avg(CASE WHEN status_code = '{error}' THEN 1.0 ELSE 0.0 END) AS error_rate
            FROM llm_calls
            GROUP BY gen_ai_provider, cloud_region, request_model"
            ),
        ),
    ]
}
