//! The cost views (`session_cost`, `session_provider_cost`, `provider_cost`, `hedge_copies`, `hedging`,
//! `unpriced_models`),
//! owned by the cost work and documented in `docs/cost.md`.
//!
//! They read the cost columns the collector writes at ingest (`token_cost_usd`, `egress_cost_usd`, `cost_usd`,
//! `price_source`, `hedge_id`, `hedge_winner`) and build on the base view `llm_calls`. A copy of a hedged request
//! is a *duplicate* when it carries a `hedge_id` and is not the winner (`hedge_winner IS NOT TRUE`,
//! [`tailscope_core::rules::is_duplicate_copy`]); its `cost_usd` is duplicate spend. Percentiles are exact (`quantile_exact`, linear interpolation like numpy).

use tailscope_core::rules::{UNPRICED, duplicate_copy_sql, inference_operations_sql};

/// `(view name, SQL)` pairs, registered after the base views, in order.
pub fn cost_views() -> Vec<(&'static str, String)> {
    let inference = inference_operations_sql();
    let duplicate = duplicate_copy_sql();
    COST_VIEWS
        .iter()
        .map(|(name, sql)| {
            let sql = sql.replace("{inference}", &inference).replace("{unpriced}", UNPRICED);
            (*name, sql.replace("{duplicate}", &duplicate))
        })
        .collect()
}

/// The views' SQL, with `{inference}` for the inference operations, `{unpriced}` for the unpriced marker and
/// `{duplicate}` for the duplicate (losing hedge copy) predicate ([`tailscope_core::rules`]).
const COST_VIEWS: &[(&str, &str)] = &[
    (
        "session_cost",
        "SELECT
            session_id,
            min(start_time) AS first_time,
            max(end_time) AS last_time,
            count(*) FILTER (WHERE gen_ai_operation IN {inference})
                AS llm_calls,
            sum(input_tokens) AS input_tokens,
            sum(output_tokens) AS output_tokens,
            sum(cache_read_tokens) AS cache_read_tokens,
            sum(cache_creation_tokens) AS cache_creation_tokens,
            sum(token_cost_usd) AS token_cost_usd,
            sum(egress_bytes) AS egress_bytes,
            sum(egress_cost_usd) AS egress_cost_usd,
            coalesce(sum(cost_usd) FILTER (WHERE {duplicate}), 0.0)
                AS duplicate_cost_usd,
            sum(cost_usd) AS total_cost_usd,
            count(*) FILTER (WHERE price_source = '{unpriced}') AS unpriced_calls,
            array_to_string(array_sort(array_agg(DISTINCT gen_ai_provider)
                FILTER (WHERE gen_ai_provider IS NOT NULL)), ',') AS providers
        FROM spans
        WHERE session_id IS NOT NULL
        GROUP BY session_id",
    ),
    (
        "session_provider_cost",
        "SELECT
            session_id,
            gen_ai_provider,
            count(*) AS calls,
            sum(input_tokens) AS input_tokens,
            sum(output_tokens) AS output_tokens,
            sum(token_cost_usd) AS token_cost_usd,
            sum(egress_cost_usd) AS egress_cost_usd,
            coalesce(sum(cost_usd) FILTER (WHERE {duplicate}), 0.0)
                AS duplicate_cost_usd,
            sum(cost_usd) AS total_cost_usd,
            count(*) FILTER (WHERE price_source = '{unpriced}') AS unpriced_calls
        FROM spans
        WHERE session_id IS NOT NULL AND gen_ai_provider IS NOT NULL
        GROUP BY session_id, gen_ai_provider",
    ),
    (
        "provider_cost",
        "SELECT
            gen_ai_provider,
            cloud_region,
            coalesce(request_model, response_model) AS model,
            count(*) AS calls,
            sum(input_tokens) AS input_tokens,
            sum(output_tokens) AS output_tokens,
            sum(cache_read_tokens) AS cache_read_tokens,
            sum(token_cost_usd) AS token_cost_usd,
            sum(egress_cost_usd) AS egress_cost_usd,
            sum(cost_usd) AS cost_usd,
            sum(token_cost_usd) * 1e6 / nullif(sum(coalesce(input_tokens, 0) + coalesce(output_tokens, 0))
                FILTER (WHERE token_cost_usd IS NOT NULL), 0) AS cost_per_1m_tokens_usd,
            sum(cost_usd) / nullif(count(cost_usd), 0) AS cost_per_call_usd,
            count(*) FILTER (WHERE price_source = '{unpriced}') AS unpriced_calls
        FROM llm_calls
        GROUP BY gen_ai_provider, cloud_region, coalesce(request_model, response_model)",
    ),
    (
        // One row per copy of a hedged request: the duplicate and cancel-latency rules, defined here once for the
        // `hedging` view, the Hedging dashboard and ad-hoc SQL.
        "hedge_copies",
        "WITH copies AS (
            SELECT hedge_id, gen_ai_provider, start_time, cost_usd, coalesce(hedge_winner, false) AS winner,
                {duplicate} AS duplicate,
                CAST(end_time AS BIGINT) AS end_ns,
                -- When a copy's answer was known: its first token when it streamed, else its end.
                CASE WHEN time_to_first_token_ms IS NOT NULL
                    THEN CAST(start_time AS BIGINT) + CAST(time_to_first_token_ms * 1e6 AS BIGINT)
                    ELSE CAST(end_time AS BIGINT) END AS answered_ns
            FROM spans
            WHERE hedge_id IS NOT NULL
        ),
        winners AS (
            SELECT hedge_id, min(answered_ns) AS decided_ns FROM copies WHERE winner GROUP BY hedge_id
        )
        SELECT c.hedge_id, c.gen_ai_provider, c.start_time, c.winner, c.cost_usd,
            -- Every copy but the winner is a duplicate (all of them in a group without a winner).
            CASE WHEN c.duplicate THEN c.cost_usd END AS duplicate_cost_usd,
            -- Cancel latency: from the decision to the loser's end, what a hedging gateway controls. A loser
            -- that had already ended (failed) before the decision was not cancelled and has none.
            CASE WHEN NOT c.winner AND c.end_ns >= w.decided_ns
                THEN (c.end_ns - w.decided_ns) / 1e6 END AS cancel_latency_ms
        FROM copies c LEFT JOIN winners w ON c.hedge_id = w.hedge_id",
    ),
    (
        "hedging",
        "WITH hedged AS (
            SELECT
                gen_ai_provider,
                count(*) AS hedged_calls,
                count(DISTINCT hedge_id) AS hedge_groups,
                count(*) FILTER (WHERE winner) AS wins,
                coalesce(sum(duplicate_cost_usd), 0.0) AS duplicate_cost_usd,
                quantile_exact(cancel_latency_ms, 0.5) AS cancel_latency_p50_ms,
                quantile_exact(cancel_latency_ms, 0.95) AS cancel_latency_p95_ms,
                quantile_exact(cancel_latency_ms, 0.99) AS cancel_latency_p99_ms
            FROM hedge_copies
            GROUP BY gen_ai_provider
        ),
        calls AS (
            SELECT gen_ai_provider, count(*) AS calls, sum(cost_usd) AS inference_cost_usd
            FROM llm_calls
            GROUP BY gen_ai_provider
        )
        SELECT
            coalesce(c.gen_ai_provider, h.gen_ai_provider) AS gen_ai_provider,
            coalesce(c.calls, 0) AS calls,
            coalesce(h.hedged_calls, 0) AS hedged_calls,
            CAST(coalesce(h.hedged_calls, 0) AS DOUBLE) / nullif(coalesce(c.calls, 0), 0) AS hedge_rate,
            coalesce(h.hedge_groups, 0) AS hedge_groups,
            coalesce(h.wins, 0) AS wins,
            CAST(h.wins AS DOUBLE) / nullif(h.hedged_calls, 0) AS win_rate,
            coalesce(h.duplicate_cost_usd, 0.0) AS duplicate_cost_usd,
            coalesce(h.duplicate_cost_usd, 0.0) / nullif(c.inference_cost_usd, 0) AS duplicate_share,
            h.cancel_latency_p50_ms,
            h.cancel_latency_p95_ms,
            h.cancel_latency_p99_ms
        FROM calls c FULL OUTER JOIN hedged h ON c.gen_ai_provider IS NOT DISTINCT FROM h.gen_ai_provider",
    ),
    (
        "unpriced_models",
        "SELECT
            gen_ai_provider,
            coalesce(response_model, request_model) AS model,
            count(*) AS calls,
            sum(input_tokens) AS input_tokens,
            sum(output_tokens) AS output_tokens,
            min(start_time) AS first_seen,
            max(start_time) AS last_seen
        FROM spans
        WHERE price_source = '{unpriced}'
        GROUP BY gen_ai_provider, coalesce(response_model, request_model)",
    ),
];

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{ArrayRef, AsArray, BooleanArray, Float64Array, RecordBatch, StringArray};
    use datafusion::arrow::datatypes::{Float64Type, Int64Type};
    use datafusion::datasource::MemTable;
    use datafusion::prelude::SessionContext;

    use tailscope_core::schema::SpanColumn;

    use super::cost_views;
    use crate::fixture::{SpanRow, spans_batch};

    /// One span of the known set: provider, hedge group, winner, end offset (ms), cost, session.
    struct Copy {
        provider: &'static str,
        hedge: Option<&'static str>,
        winner: Option<bool>,
        end_ms: i64,
        cost: Option<f64>,
        session: &'static str,
        price_source: &'static str,
        /// Time to first token (ms after the common start), for a streaming copy.
        ttft_ms: Option<f64>,
    }

    fn copy(
        provider: &'static str,
        hedge: Option<&'static str>,
        winner: Option<bool>,
        end_ms: i64,
        cost: f64,
        session: &'static str,
    ) -> Copy {
        Copy { provider, hedge, winner, end_ms, cost: Some(cost), session, price_source: "default:x", ttft_ms: None }
    }

    const BASE: i64 = 1_795_000_000_000_000_000;

    fn known_set() -> RecordBatch {
        batch_of(vec![
            // h1: aws wins; the gcp copy ends 50 ms later.
            copy("aws.bedrock", Some("h1"), Some(true), 1000, 0.10, "s1"),
            copy("gcp.vertex_ai", Some("h1"), Some(false), 1050, 0.04, "s1"),
            // h2: gcp wins; aws 200 ms later (winner flag absent on the loser).
            copy("gcp.vertex_ai", Some("h2"), Some(true), 2000, 0.12, "s1"),
            copy("aws.bedrock", Some("h2"), None, 2200, 0.03, "s1"),
            // h3, h4: aws wins; gcp 10 ms and 100 ms later.
            copy("aws.bedrock", Some("h3"), Some(true), 3000, 0.10, "s2"),
            copy("gcp.vertex_ai", Some("h3"), Some(false), 3010, 0.01, "s2"),
            copy("aws.bedrock", Some("h4"), Some(true), 4000, 0.10, "s2"),
            copy("gcp.vertex_ai", Some("h4"), Some(false), 4100, 0.02, "s2"),
            // Unhedged calls.
            copy("aws.bedrock", None, None, 500, 0.10, "s2"),
            copy("aws.bedrock", None, None, 500, 0.10, "s2"),
            copy("gcp.vertex_ai", None, None, 500, 0.10, "s2"),
            Copy {
                cost: None,
                price_source: tailscope_core::rules::UNPRICED,
                ..copy("acme", None, None, 500, 0.0, "s2")
            },
        ])
    }

    /// The spans of `set`, all starting at [`BASE`].
    fn batch_of(set: Vec<Copy>) -> RecordBatch {
        let rows: Vec<SpanRow> = set
            .iter()
            .enumerate()
            .map(|(i, c)| SpanRow {
                trace_id: format!("{:032x}", i + 1),
                span_id: format!("{:016x}", i + 1),
                name: "chat".into(),
                start_ns: BASE,
                duration_ns: c.end_ms * 1_000_000,
                service_name: "agent".into(),
                cloud_region: Some("us-east-1".into()),
                gen_ai_provider: Some(c.provider.into()),
                gen_ai_operation: Some("chat".into()),
                request_model: Some(if c.provider == "acme" { "mystery" } else { "m" }.into()),
                input_tokens: Some(1000),
                output_tokens: Some(100),
                session_id: Some(c.session.into()),
                cost_usd: c.cost,
                ..Default::default()
            })
            .collect();
        let batch = spans_batch(&rows);
        let replace: Vec<(&str, ArrayRef)> = vec![
            (SpanColumn::HedgeId.name(), Arc::new(set.iter().map(|c| c.hedge).collect::<StringArray>())),
            (SpanColumn::HedgeWinner.name(), Arc::new(set.iter().map(|c| c.winner).collect::<BooleanArray>())),
            (SpanColumn::TokenCostUsd.name(), Arc::new(set.iter().map(|c| c.cost).collect::<Float64Array>())),
            (
                SpanColumn::PriceSource.name(),
                Arc::new(set.iter().map(|c| Some(c.price_source)).collect::<StringArray>()),
            ),
            (SpanColumn::TimeToFirstTokenMs.name(), Arc::new(set.iter().map(|c| c.ttft_ms).collect::<Float64Array>())),
        ];
        let schema = batch.schema();
        let columns = schema
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| {
                replace
                    .iter()
                    .find(|(n, _)| n == f.name())
                    .map(|(_, a)| a.clone())
                    .unwrap_or_else(|| batch.column(i).clone())
            })
            .collect();
        RecordBatch::try_new(schema, columns).unwrap()
    }

    async fn context() -> SessionContext {
        context_over(known_set()).await
    }

    async fn context_over(batch: RecordBatch) -> SessionContext {
        let ctx = SessionContext::new();
        ctx.register_udaf(crate::quantile::quantile_exact_udaf());
        ctx.add_optimizer_rule(Arc::new(crate::quantile::ShareQuantiles));
        ctx.register_table("spans", Arc::new(MemTable::try_new(batch.schema(), vec![vec![batch]]).unwrap())).unwrap();
        let views = crate::views::base_views().into_iter().chain(cost_views());
        for (name, sql) in views {
            let view = ctx.sql(&sql).await.unwrap_or_else(|e| panic!("{name}: {e}")).into_view();
            ctx.register_table(name, view).unwrap();
        }
        ctx
    }

    async fn rows(ctx: &SessionContext, sql: &str) -> Vec<RecordBatch> {
        ctx.sql(sql).await.unwrap().collect().await.unwrap()
    }

    fn f64_at(b: &RecordBatch, col: &str, row: usize) -> f64 {
        let c = b.column_by_name(col).unwrap_or_else(|| panic!("no column {col}"));
        assert!(c.is_valid(row), "{col} is NULL");
        c.as_primitive::<Float64Type>().value(row)
    }

    fn i64_at(b: &RecordBatch, col: &str, row: usize) -> i64 {
        b.column_by_name(col).unwrap().as_primitive::<Int64Type>().value(row)
    }

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-9, "{a} != {b}");
    }

    #[tokio::test]
    async fn hedging_figures_from_a_known_set() {
        let ctx = context().await;
        let out = rows(
            &ctx,
            "SELECT * FROM hedging WHERE gen_ai_provider IN ('aws.bedrock', 'gcp.vertex_ai') ORDER BY gen_ai_provider",
        )
        .await;
        let b = &out[0];
        assert_eq!(b.num_rows(), 2);
        // aws: 6 calls, 4 hedged copies (3 wins), one loser 200 ms behind its winner, $0.03 duplicate.
        assert_eq!((i64_at(b, "calls", 0), i64_at(b, "hedged_calls", 0), i64_at(b, "wins", 0)), (6, 4, 3));
        close(f64_at(b, "hedge_rate", 0), 4.0 / 6.0);
        close(f64_at(b, "win_rate", 0), 0.75);
        close(f64_at(b, "duplicate_cost_usd", 0), 0.03);
        close(f64_at(b, "cancel_latency_p50_ms", 0), 200.0);
        close(f64_at(b, "cancel_latency_p99_ms", 0), 200.0);
        // gcp: 5 calls, 4 copies (1 win); losers 50, 10, 100 ms behind: numpy's linear percentiles of
        // [10, 50, 100] are p50 50, p95 95, p99 99.
        assert_eq!((i64_at(b, "calls", 1), i64_at(b, "hedged_calls", 1), i64_at(b, "wins", 1)), (5, 4, 1));
        close(f64_at(b, "hedge_rate", 1), 0.8);
        close(f64_at(b, "win_rate", 1), 0.25);
        close(f64_at(b, "duplicate_cost_usd", 1), 0.07);
        close(f64_at(b, "duplicate_share", 1), 0.07 / 0.29);
        close(f64_at(b, "cancel_latency_p50_ms", 1), 50.0);
        close(f64_at(b, "cancel_latency_p95_ms", 1), 95.0);
        close(f64_at(b, "cancel_latency_p99_ms", 1), 99.0);
        // A provider that never hedges still has a row, with a zero hedge rate.
        let out = rows(&ctx, "SELECT hedge_rate, duplicate_cost_usd FROM hedging WHERE gen_ai_provider = 'acme'").await;
        close(f64_at(&out[0], "hedge_rate", 0), 0.0);
    }

    #[tokio::test]
    async fn cancel_latency_runs_from_the_decision_and_is_never_negative() {
        let streaming = |c: Copy, ttft_ms: f64| Copy { ttft_ms: Some(ttft_ms), ..c };
        let ctx = context_over(batch_of(vec![
            // g1: aws streams its first token at 300 ms (ends at 5 s); gcp is cancelled at 320 ms: 20 ms.
            streaming(copy("aws.bedrock", Some("g1"), Some(true), 5000, 0.10, "s1"), 300.0),
            copy("gcp.vertex_ai", Some("g1"), Some(false), 320, 0.01, "s1"),
            // g2: aws streams at 400 ms; gcp had already failed at 100 ms: not cancelled, no cancel latency.
            streaming(copy("aws.bedrock", Some("g2"), Some(true), 3000, 0.10, "s1"), 400.0),
            copy("gcp.vertex_ai", Some("g2"), Some(false), 100, 0.01, "s1"),
            // g3: gcp answers without streaming at 1 s; aws is cancelled at 1.03 s: 30 ms.
            copy("gcp.vertex_ai", Some("g3"), Some(true), 1000, 0.10, "s1"),
            copy("aws.bedrock", Some("g3"), Some(false), 1030, 0.01, "s1"),
        ]))
        .await;
        let out = rows(
            &ctx,
            "SELECT gen_ai_provider, cancel_latency_p50_ms, cancel_latency_p99_ms FROM hedging ORDER BY gen_ai_provider",
        )
        .await;
        let b = &out[0];
        assert_eq!(b.num_rows(), 2);
        // Measured from the winners' ends, these were -4680 and -2900 ms for gcp.
        close(f64_at(b, "cancel_latency_p50_ms", 0), 30.0);
        close(f64_at(b, "cancel_latency_p50_ms", 1), 20.0);
        close(f64_at(b, "cancel_latency_p99_ms", 1), 20.0);
    }

    #[tokio::test]
    async fn session_cost_splits_duplicates_and_unpriced_calls() {
        let ctx = context().await;
        let out = rows(&ctx, "SELECT * FROM session_cost ORDER BY session_id").await;
        let b = &out[0];
        assert_eq!(b.num_rows(), 2);
        // s1: h1 and h2; duplicates are the gcp h1 copy and the aws h2 copy.
        close(f64_at(b, "total_cost_usd", 0), 0.29);
        close(f64_at(b, "duplicate_cost_usd", 0), 0.07);
        assert_eq!(b.column_by_name("providers").unwrap().as_string::<i32>().value(0), "aws.bedrock,gcp.vertex_ai");
        // s2: one unpriced call, counted and left out of the sum rather than added as zero.
        assert_eq!(i64_at(b, "unpriced_calls", 1), 1);
        assert_eq!(i64_at(b, "llm_calls", 1), 8);
        close(f64_at(b, "duplicate_cost_usd", 1), 0.03);
        let out =
            rows(&ctx, "SELECT * FROM session_provider_cost WHERE session_id = 's1' ORDER BY gen_ai_provider").await;
        close(f64_at(&out[0], "duplicate_cost_usd", 0), 0.03);
        close(f64_at(&out[0], "duplicate_cost_usd", 1), 0.04);
    }

    #[tokio::test]
    async fn provider_cost_and_unpriced_models() {
        let ctx = context().await;
        let out = rows(&ctx, "SELECT * FROM provider_cost WHERE gen_ai_provider = 'aws.bedrock'").await;
        let b = &out[0];
        assert_eq!(i64_at(b, "calls", 0), 6);
        // $0.53 over 6 calls of 1,100 tokens.
        close(f64_at(b, "cost_per_call_usd", 0), 0.53 / 6.0);
        close(f64_at(b, "cost_per_1m_tokens_usd", 0), 0.53 * 1e6 / 6600.0);
        let out = rows(&ctx, "SELECT * FROM unpriced_models").await;
        assert_eq!(out[0].num_rows(), 1);
        assert_eq!(out[0].column_by_name("model").unwrap().as_string::<i32>().value(0), "mystery");
        assert_eq!(i64_at(&out[0], "calls", 0), 1);
    }
}
