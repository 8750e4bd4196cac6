//! The base views every user of tailscope wants, documented in `docs/sql.md`.

use std::sync::Arc;

use datafusion::catalog::{TableFunctionArgs, TableFunctionImpl, TableProvider, view::ViewTable};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, Result as DfResult, plan_err};
use datafusion::logical_expr::{Expr, Filter, LogicalPlan};
use tailscope_core::rules::{inference_operations_sql, status};
use tailscope_core::schema::{Signal, SpanColumn};

/// The per-session view: the one definition of a session's figures (its cost among them), windowed by
/// [`SESSIONS_SINCE`].
pub const SESSIONS: &str = "sessions";

/// Per service and session: the base of the health views.
pub const SERVICE_SESSIONS: &str = "service_sessions";

/// `(view name, SQL)` in registration order: a view may use the ones before it.
pub fn base_views() -> Vec<(&'static str, String)> {
    let inference = inference_operations_sql();
    let error = status::ERROR;
    vec![
        ("llm_calls", format!("SELECT * FROM spans WHERE gen_ai_operation IN {inference}")),
        (
            SESSIONS,
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
        // Health per service, for people who do not write SQL (dashboards/health.toml): one row per service and
        // session (a session that crossed services counts for each), then per service and day. A session
        // succeeded when none of its steps in that service failed.
        (
            SERVICE_SESSIONS,
            format!(
                "SELECT
                    service_name,
                    session_id,
                    min(start_time) AS first_time,
                    max(end_time) AS last_time,
                    (CAST(max(end_time) AS BIGINT) - CAST(min(start_time) AS BIGINT)) / 1e6 AS wall_duration_ms,
                    count(*) AS steps,
                    count(*) FILTER (WHERE status_code = '{error}') AS error_count,
                    sum(cost_usd) AS cost_usd
                FROM spans
                WHERE session_id IS NOT NULL
                GROUP BY service_name, session_id"
            ),
        ),
        (
            "service_health",
            format!(
                "SELECT
                    service_name,
                    date_trunc('day', first_time) AS day,
                    count(*) AS sessions,
                    avg(CASE WHEN error_count = 0 THEN 1.0 ELSE 0.0 END) AS success_rate,
                    quantile_exact(wall_duration_ms, 0.95) AS p95_session_wall_ms,
                    sum(cost_usd) / count(*) AS cost_per_session_usd,
                    sum(cost_usd) AS cost_usd
                FROM {SERVICE_SESSIONS}
                GROUP BY service_name, date_trunc('day', first_time)"
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

/// `sessions_since(since)`: the `sessions` view over the spans that started at or after `since`, so a dashboard
/// with a time window reads one definition of per-session figures and still prunes by time (a filter on the
/// view's `last_time` would aggregate the whole history first).
pub const SESSIONS_SINCE: &str = "sessions_since";

/// The table function behind [`SESSIONS_SINCE`]: the `sessions` view's plan with `start_time >= since` put on its
/// scan of `spans`, where the scan prunes files and row groups by it.
#[derive(Debug)]
pub struct SessionsSince {
    /// The `sessions` view's plan, as registered.
    sessions: LogicalPlan,
}

impl SessionsSince {
    pub fn new(sessions: LogicalPlan) -> Self {
        SessionsSince { sessions }
    }
}

impl TableFunctionImpl for SessionsSince {
    fn call_with_args(&self, args: TableFunctionArgs) -> DfResult<Arc<dyn TableProvider>> {
        let [since] = args.exprs() else {
            return plan_err!(
                "{SESSIONS_SINCE} takes one argument, the earliest span start (a timestamp such as \
                 now() - INTERVAL '1 hour'); it was given {}",
                args.exprs().len()
            );
        };
        let spans = Signal::Spans.table_name();
        let windowed = self
            .sessions
            .clone()
            .transform_up(|node| match node {
                LogicalPlan::TableScan(scan) if scan.table_name.table() == spans => {
                    let start = Expr::Column(Column::new(Some(scan.table_name.clone()), SpanColumn::StartTime.name()));
                    let filter = Filter::try_new(start.gt_eq(since.clone()), Arc::new(LogicalPlan::TableScan(scan)))?;
                    Ok(Transformed::yes(LogicalPlan::Filter(filter)))
                }
                other => Ok(Transformed::no(other)),
            })?
            .data;
        Ok(Arc::new(ViewTable::new(windowed, None)))
    }
}
