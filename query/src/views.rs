//! The base views every user of tailscope wants, documented in `docs/sql.md`.

use std::sync::Arc;

use datafusion::catalog::{TableFunctionArgs, TableFunctionImpl, TableProvider, view::ViewTable};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, Result as DfResult, ScalarValue, plan_err};
use datafusion::logical_expr::{Expr, Filter, LogicalPlan, lit};
use tailscope_core::rules::noise::{QUANTILE_INTERVAL_Z, TEST_Z};
use tailscope_core::rules::step::step_type_sql;
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

/// `release_compare(service, version_a, version_b [, since])`: two `service_version`s of a service side by side,
/// per step type and model, each figure with its difference and whether it is beyond noise
/// ([`tailscope_core::rules::noise`]); docs/sql.md says how each test works.
pub const RELEASE_COMPARE: &str = "release_compare";

/// The quantiles `release_compare` compares, with their metric names.
const RELEASE_QUANTILES: [(f64, &str); 3] = [(0.5, "p50_ms"), (0.95, "p95_ms"), (0.99, "p99_ms")];

/// The SQL behind [`RELEASE_COMPARE`], with `$1` (service), `$2` (version A), `$3` (version B) and `$4` (the
/// earliest span start) for the table function's arguments.
///
/// Latency: each version's quantile (exact, as every view) and its distribution-free interval: the values at the
/// ranks `n*q -/+ z*sqrt(n*q*(1-q))` of the sorted durations (a rank outside 1..n leaves that side open, NULL).
/// Tokens and cost per session: every session of the version counts, with 0 when it had no such step, and the
/// Mann-Whitney U test (average ranks for ties, the tie-corrected variance) compares the two sets. Error and hedge
/// rates: the two-proportion z-test with the pooled rate.
// Long by design: one SQL statement, its CTEs in the order they feed each other; split, its parts would be read apart.
pub fn release_compare_sql() -> String {
    let step = step_type_sql();
    let error = status::ERROR;
    let qz = QUANTILE_INTERVAL_Z;
    let rank = |q: f64, sign: &str| format!("FLOOR(n * {q} {sign} {qz} * SQRT(n * {q} * (1 - {q})))");
    let mut latency_columns = Vec::new();
    let mut latency_rows = Vec::new();
    for (q, metric) in RELEASE_QUANTILES {
        let p = metric.trim_end_matches("_ms");
        latency_columns.push(format!(
            "quantile_exact(ms, {q}) AS {p}, \
             max(ms) FILTER (WHERE r = {lo}) AS {p}_lo, \
             max(ms) FILTER (WHERE r = {hi} + 1) AS {p}_hi",
            lo = rank(q, "-"),
            hi = rank(q, "+"),
        ));
        latency_rows.push(format!(
            "SELECT step_type, model, '{metric}' AS metric, n_a, n_b, a_{p} AS a, b_{p} AS b, \
                 coalesce(a_{p}_hi < b_{p}_lo OR b_{p}_hi < a_{p}_lo, false) AS beyond_noise, \
                 'quantile intervals (order statistics, 99%)' AS test \
             FROM latency_pairs"
        ));
    }
    let latency_columns = latency_columns.join(",\n");
    let latency_rows = latency_rows.join("\nUNION ALL\n");
    let side_columns = |side: &str| {
        RELEASE_QUANTILES
            .iter()
            .flat_map(|(_, m)| {
                let p = m.trim_end_matches("_ms");
                [
                    format!("{side}.{p} AS {side}_{p}"),
                    format!("{side}.{p}_lo AS {side}_{p}_lo"),
                    format!("{side}.{p}_hi AS {side}_{p}_hi"),
                ]
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (a_columns, b_columns) = (side_columns("a"), side_columns("b"));
    format!(
        "WITH steps AS (
    SELECT CASE WHEN service_version = CAST($2 AS VARCHAR) THEN 'a' ELSE 'b' END AS side,
        session_id,
        {step} AS step_type,
        coalesce(request_model, response_model, '') AS model,
        duration_ns / 1e6 AS ms,
        CAST(coalesce(input_tokens, 0) + coalesce(output_tokens, 0) AS DOUBLE) AS tokens,
        coalesce(cost_usd, 0.0) AS cost_usd,
        CASE WHEN status_code = '{error}' THEN 1.0 ELSE 0.0 END AS failed,
        CASE WHEN hedge_id IS NOT NULL THEN 1.0 ELSE 0.0 END AS hedged
    FROM spans
    WHERE service_name = CAST($1 AS VARCHAR)
        AND service_version IN (CAST($2 AS VARCHAR), CAST($3 AS VARCHAR))
        AND CAST($2 AS VARCHAR) <> CAST($3 AS VARCHAR)
        AND start_time >= $4
),
ranked AS (
    SELECT side, step_type, model, ms,
        ROW_NUMBER() OVER (PARTITION BY side, step_type, model ORDER BY ms) AS r,
        COUNT(*) OVER (PARTITION BY side, step_type, model) AS n
    FROM steps
),
latency AS (
    SELECT side, step_type, model, count(*) AS n,
{latency_columns}
    FROM ranked
    GROUP BY side, step_type, model
),
latency_pairs AS (
    SELECT coalesce(a.step_type, b.step_type) AS step_type, coalesce(a.model, b.model) AS model,
        coalesce(a.n, 0) AS n_a, coalesce(b.n, 0) AS n_b, {a_columns}, {b_columns}
    FROM (SELECT * FROM latency WHERE side = 'a') a
    FULL JOIN (SELECT * FROM latency WHERE side = 'b') b ON a.step_type = b.step_type AND a.model = b.model
),
rates AS (
    SELECT step_type, model, metric,
        count(*) FILTER (WHERE side = 'a') AS n_a,
        count(*) FILTER (WHERE side = 'b') AS n_b,
        avg(x) FILTER (WHERE side = 'a') AS a,
        avg(x) FILTER (WHERE side = 'b') AS b,
        avg(x) AS pooled
    FROM (
        SELECT side, step_type, model, 'error_rate' AS metric, failed AS x FROM steps
        UNION ALL
        SELECT side, step_type, model, 'hedge_rate' AS metric, hedged AS x FROM steps
    ) per_step
    GROUP BY step_type, model, metric
),
sessions AS (SELECT DISTINCT side, session_id FROM steps WHERE session_id IS NOT NULL),
kinds AS (SELECT DISTINCT step_type, model FROM steps),
per_session AS (
    SELECT s.side, k.step_type, k.model, s.session_id,
        coalesce(sum(t.tokens), 0.0) AS tokens, coalesce(sum(t.cost_usd), 0.0) AS cost_usd
    FROM sessions s CROSS JOIN kinds k
    LEFT JOIN steps t ON t.side = s.side AND t.session_id = s.session_id AND t.step_type = k.step_type
        AND t.model = k.model
    GROUP BY s.side, k.step_type, k.model, s.session_id
),
session_values AS (
    SELECT side, step_type, model, 'tokens_per_session' AS metric, tokens AS v FROM per_session
    UNION ALL
    SELECT side, step_type, model, 'cost_per_session_usd' AS metric, cost_usd AS v FROM per_session
),
session_ranked AS (
    SELECT side, step_type, model, metric, v,
        RANK() OVER (PARTITION BY step_type, model, metric ORDER BY v) AS rk,
        COUNT(*) OVER (PARTITION BY step_type, model, metric, v) AS ties
    FROM session_values
),
mann_whitney AS (
    SELECT step_type, model, metric,
        CAST(count(*) FILTER (WHERE side = 'a') AS DOUBLE) AS n_a,
        CAST(count(*) FILTER (WHERE side = 'b') AS DOUBLE) AS n_b,
        avg(v) FILTER (WHERE side = 'a') AS a,
        avg(v) FILTER (WHERE side = 'b') AS b,
        sum(rk + (ties - 1) / 2.0) FILTER (WHERE side = 'a') AS rank_sum_a,
        -- Every member of a run of t ties adds t^2 - 1: the run adds t^3 - t, the tie correction's term.
        sum(CAST(ties AS DOUBLE) * ties - 1) AS tie_term
    FROM session_ranked
    GROUP BY step_type, model, metric
),
compared AS (
{latency_rows}
UNION ALL
SELECT step_type, model, metric, n_a, n_b, a, b,
    coalesce(abs(b - a) / NULLIF(sqrt(pooled * (1 - pooled) * (1.0 / n_a + 1.0 / n_b)), 0) > {TEST_Z}, false)
        AS beyond_noise,
    'two-proportion z' AS test
FROM rates
UNION ALL
SELECT step_type, model, metric, CAST(n_a AS BIGINT), CAST(n_b AS BIGINT), a, b,
    coalesce(abs(rank_sum_a - n_a * (n_a + 1) / 2 - n_a * n_b / 2)
        / NULLIF(sqrt(n_a * n_b / 12 * ((n_a + n_b + 1) - tie_term / NULLIF((n_a + n_b) * (n_a + n_b - 1), 0))), 0)
        > {TEST_Z}, false) AS beyond_noise,
    'Mann-Whitney U' AS test
FROM mann_whitney
)
SELECT step_type, NULLIF(model, '') AS model, metric, n_a, n_b, a, b, b - a AS change,
    b / NULLIF(a, 0) - 1 AS change_rate, beyond_noise, test
FROM compared"
    )
}

/// The table function behind [`RELEASE_COMPARE`]: the planned SQL of [`release_compare_sql`] with its
/// placeholders replaced by the call's argument expressions, so the dashboards' literals and ad-hoc
/// expressions (`now() - INTERVAL '7 days'`) both work and the time bound reaches the scan of `spans`.
#[derive(Debug)]
pub struct ReleaseCompare {
    /// The plan with `$1`..`$4`, as registered.
    plan: LogicalPlan,
}

impl ReleaseCompare {
    pub fn new(plan: LogicalPlan) -> Self {
        ReleaseCompare { plan }
    }
}

impl TableFunctionImpl for ReleaseCompare {
    fn call_with_args(&self, args: TableFunctionArgs) -> DfResult<Arc<dyn TableProvider>> {
        let since = match args.exprs() {
            [_, _, _] => lit(ScalarValue::TimestampNanosecond(Some(0), Some("UTC".into()))),
            [_, _, _, since] => since.clone(),
            other => {
                return plan_err!(
                    "{RELEASE_COMPARE} takes a service, two of its versions and optionally the earliest span start \
                     (release_compare('checkout', '1.4.0', '1.5.0', now() - INTERVAL '7 days')); it was given {} \
                     arguments",
                    other.len()
                );
            }
        };
        let exprs = args.exprs();
        let values = [exprs[0].clone(), exprs[1].clone(), exprs[2].clone(), since];
        let plan = self
            .plan
            .clone()
            .transform_up(|node| {
                node.map_expressions(|e| {
                    e.transform_up(|e| match e {
                        Expr::Placeholder(p) => {
                            let slot =
                                p.id.trim_start_matches('$').parse::<usize>().ok().and_then(|i| i.checked_sub(1));
                            match slot.and_then(|i| values.get(i)) {
                                Some(v) => Ok(Transformed::yes(v.clone())),
                                None => plan_err!("{RELEASE_COMPARE}: unexpected placeholder {}", p.id),
                            }
                        }
                        other => Ok(Transformed::no(other)),
                    })
                })
            })?
            .data;
        Ok(Arc::new(ViewTable::new(plan, None)))
    }
}
