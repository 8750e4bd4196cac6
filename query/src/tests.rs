//! Engine tests over real Parquet files in the collector's layout and real buffered batches.

use std::sync::atomic::Ordering;
use std::time::Duration;

use datafusion::arrow::array::{Array, AsArray, StringArray};
use datafusion::arrow::datatypes::{Float64Type, Int64Type};

use tailscope_core::catalog::Catalog;
use tailscope_core::config::QueryConfig;
use tailscope_core::schema::{Signal, SpanColumn};

use crate::fixture::{SpanRow, damage_pages, spans_batch, write_parquet};
use crate::{Engine, QueryError, QueryOutput};

/// 2026-11-21T09:00:00Z.
const NINE: i64 = 1_795_251_600_000_000_000;
const HOUR: i64 = 3_600_000_000_000;
const MS: i64 = 1_000_000;

/// Stored row `i`: a chat call of `provider`'s `model`. Hand-built rather than simulated, as the engine tests assert
/// exact figures (quantiles, counts, which file a row is in) computed from these very values.
fn span(i: usize, start_ns: i64, duration_ms: i64, provider: &str, model: &str) -> SpanRow {
    SpanRow {
        trace_id: format!("{:032x}", i + 1),
        span_id: format!("{:016x}", i + 1),
        name: format!("chat {model}"),
        start_ns,
        duration_ns: duration_ms * MS,
        service_name: "agent".into(),
        cloud_region: Some("us-east-1".into()),
        gen_ai_provider: Some(provider.into()),
        gen_ai_operation: Some("chat".into()),
        request_model: Some(model.into()),
        input_tokens: Some(100),
        output_tokens: Some(10),
        session_id: Some(format!("s{}", i % 3)),
        ..Default::default()
    }
}

fn config() -> QueryConfig {
    QueryConfig { timeout: Duration::from_secs(30), memory_limit_mb: 256, max_concurrent: 4, ..QueryConfig::default() }
}

async fn engine(catalog: &Catalog) -> Engine {
    Engine::new(catalog.clone(), config()).await.expect("engine builds")
}

fn f64_col(out: &QueryOutput, name: &str) -> Vec<Option<f64>> {
    let mut v = Vec::new();
    for b in &out.batches {
        let col = b.column_by_name(name).unwrap_or_else(|| panic!("no column {name}"));
        let col = datafusion::arrow::compute::cast(col, &datafusion::arrow::datatypes::DataType::Float64).unwrap();
        v.extend(col.as_primitive::<Float64Type>().iter());
    }
    v
}

fn i64_col(out: &QueryOutput, name: &str) -> Vec<i64> {
    let mut v = Vec::new();
    for b in &out.batches {
        let col = b.column_by_name(name).unwrap_or_else(|| panic!("no column {name}"));
        let col = datafusion::arrow::compute::cast(col, &datafusion::arrow::datatypes::DataType::Int64).unwrap();
        v.extend(col.as_primitive::<Int64Type>().iter().map(|x| x.unwrap()));
    }
    v
}

fn str_col(out: &QueryOutput, name: &str) -> Vec<Option<String>> {
    let mut v = Vec::new();
    for b in &out.batches {
        let col = b.column_by_name(name).unwrap_or_else(|| panic!("no column {name}"));
        let col = datafusion::arrow::compute::cast(col, &datafusion::arrow::datatypes::DataType::Utf8).unwrap();
        let col = col.as_any().downcast_ref::<StringArray>().unwrap();
        v.extend(col.iter().map(|s| s.map(str::to_string)));
    }
    v
}

#[tokio::test]
async fn provider_latency_is_exact_over_files_and_buffer() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::new(dir.path());
    // Durations with a long tail, different per provider, split between two files and the buffer.
    let mut rows = Vec::new();
    for i in 0..1000usize {
        let (provider, model) = if i % 2 == 0 { ("aws.bedrock", "claude") } else { ("azure.ai.openai", "gpt") };
        let ms = ((i * 7919) % 997) as i64 + if i % 50 == 0 { 5000 } else { 0 };
        rows.push(span(i, NINE + (i as i64) * 1_000_000_000, ms, provider, model));
    }
    let (first, rest) = rows.split_at(400);
    let (second, buffered) = rest.split_at(300);
    let files = vec![
        (Signal::Spans, write_parquet(dir.path(), Signal::Spans, &spans_batch(first), 1).unwrap()),
        (Signal::Spans, write_parquet(dir.path(), Signal::Spans, &spans_batch(second), 2).unwrap()),
    ];
    catalog.commit_flush(files, 2);
    catalog.add_batch(Signal::Spans, 3, tailscope_core::projects::Project::default(), spans_batch(buffered));

    let engine = engine(&catalog).await;
    let out = engine
        .sql("SELECT gen_ai_provider, calls, p50_ms, p95_ms, p99_ms, p999_ms, max_ms FROM provider_latency ORDER BY 1")
        .await
        .unwrap();
    let providers = str_col(&out, "gen_ai_provider");
    assert_eq!(providers, vec![Some("aws.bedrock".into()), Some("azure.ai.openai".into())]);
    for (row, provider) in providers.iter().enumerate() {
        let durations: Vec<f64> =
            rows.iter().filter(|r| r.gen_ai_provider == *provider).map(|r| r.duration_ns as f64 / 1e6).collect();
        assert_eq!(i64_col(&out, "calls")[row], durations.len() as i64);
        for (col, q) in [("p50_ms", 0.5), ("p95_ms", 0.95), ("p99_ms", 0.99), ("p999_ms", 0.999)] {
            let got = f64_col(&out, col)[row].unwrap();
            let want = crate::fixture::numpy_quantile(&durations, q);
            assert_eq!(got, want, "{provider:?} {col}");
        }
        let max = durations.iter().copied().fold(f64::MIN, f64::max);
        assert_eq!(f64_col(&out, "max_ms")[row].unwrap(), max);
    }

    // The approximate percentile stays available beside the exact one.
    let approx = engine.sql("SELECT approx_percentile_cont(duration_ns / 1e6, 0.5) AS p FROM llm_calls").await.unwrap();
    assert!(f64_col(&approx, "p")[0].unwrap() > 0.0);
}

#[tokio::test]
async fn quantile_exact_matches_numpy_on_known_values() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&Catalog::new(dir.path())).await;
    // np.quantile([15, 20, 35, 40, 50], [0.4, 0.95, 0.99]) == [29.0, 48.0, 49.6]; NULLs are ignored.
    let out = engine
        .sql(
            "SELECT quantile_exact(x, 0.4) AS a, quantile_exact(x, 0.95) AS b, quantile_cont(x, 0.99) AS c, \
             quantile_exact(CASE WHEN x > 100 THEN x END, 0.5) AS empty \
             FROM (VALUES (40), (15), (NULL), (50), (35), (20)) AS t(x)",
        )
        .await
        .unwrap();
    assert_eq!(f64_col(&out, "a"), vec![Some(29.0)]);
    assert_eq!(f64_col(&out, "b"), vec![Some(48.0)]);
    assert!((f64_col(&out, "c")[0].unwrap() - 49.6).abs() < 1e-12);
    assert_eq!(f64_col(&out, "empty"), vec![None]);

    let err = engine.sql("SELECT quantile_exact(x, 1.5) FROM (VALUES (1)) AS t(x)").await.unwrap_err();
    assert!(matches!(err, QueryError::InvalidSql(_)), "{err:?}");
    assert!(err.to_string().contains("between 0 and 1"), "{err}");
}

#[tokio::test]
async fn buffered_rows_get_partition_columns_and_join_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::new(dir.path());
    let file = write_parquet(dir.path(), Signal::Spans, &spans_batch(&[span(1, NINE + 5, 10, "p", "m")]), 1).unwrap();
    catalog.commit_flush(vec![(Signal::Spans, file)], 1);
    let engine = engine(&catalog).await;
    assert_eq!(i64_col(&engine.sql("SELECT count(*) AS n FROM spans").await.unwrap(), "n"), vec![1]);

    // A span acknowledged after the engine was built is visible to the next query, with its partition values.
    catalog.add_batch(
        Signal::Spans,
        2,
        tailscope_core::projects::Project::default(),
        spans_batch(&[span(2, NINE + HOUR + 7, 10, "p", "m")]),
    );
    let out = engine.sql("SELECT date, hour FROM spans ORDER BY start_time").await.unwrap();
    assert_eq!(str_col(&out, "date"), vec![Some("2026-11-21".into()), Some("2026-11-21".into())]);
    assert_eq!(str_col(&out, "hour"), vec![Some("09".into()), Some("10".into())]);
    let out = engine.sql("SELECT count(*) AS n FROM spans WHERE hour = '10'").await.unwrap();
    assert_eq!(i64_col(&out, "n"), vec![1]);
}

/// Columns are appended at the end of a table, so a file written before the last one existed holds all the columns
/// before it and lacks that one. It is read with the column NULL, next to files that have it: not taken for a
/// damaged file, and filters and dictionary-read columns (`session_id`) work across both.
#[tokio::test]
async fn files_written_before_the_last_column_was_appended_read_it_as_null() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::new(dir.path());
    let current = spans_batch(&[span(0, NINE, 10, "p", "m"), span(1, NINE + 1, 10, "p", "m")]);
    let before = spans_batch(&[span(2, NINE + 2, 10, "p", "m"), span(3, NINE + 3, 10, "p", "m")]);
    let stored = SpanColumn::ALL.len();
    let before = before.project(&(0..stored - 1).collect::<Vec<_>>()).unwrap();
    let last = SpanColumn::ALL[stored - 1].name();
    catalog.commit_flush(
        vec![
            (Signal::Spans, write_parquet(dir.path(), Signal::Spans, &current, 1).unwrap()),
            (Signal::Spans, write_parquet(dir.path(), Signal::Spans, &before, 2).unwrap()),
        ],
        2,
    );
    let engine = engine(&catalog).await;
    let out = engine.sql(&format!("SELECT span_id, {last} FROM spans ORDER BY span_id")).await.unwrap();
    assert_eq!(str_col(&out, "span_id").len(), 4, "rows of both files");
    // A filter on the column is pushed into the scan of each file, including the one without it.
    let sql = format!("SELECT count(*) AS n FROM spans WHERE {last} IS NULL AND span_id > ''");
    assert_eq!(i64_col(&engine.sql(&sql).await.unwrap(), "n"), vec![4]);
    let out = engine.sql("SELECT session_id, count(*) AS n FROM spans GROUP BY 1 ORDER BY 1").await.unwrap();
    assert_eq!(str_col(&out, "session_id"), vec![Some("s0".into()), Some("s1".into()), Some("s2".into())]);
    assert_eq!(i64_col(&out, "n"), vec![2, 1, 1]);
    let out = engine.sql("SELECT * FROM spans").await.unwrap();
    assert_eq!(out.batches.iter().map(|b| b.num_rows()).sum::<usize>(), 4);
    assert!(catalog.unreadable_files().is_empty(), "{:?}", catalog.unreadable_files());
}

#[tokio::test]
async fn time_predicates_prune_files_before_they_are_opened() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::new(dir.path());
    let mut files = Vec::new();
    for h in 0..3i64 {
        let rows: Vec<_> = (0..10).map(|i| span(i, NINE + h * HOUR + i as i64 * MS, 5, "p", "m")).collect();
        files.push((
            Signal::Spans,
            write_parquet(dir.path(), Signal::Spans, &spans_batch(&rows), h as u64 + 1).unwrap(),
        ));
    }
    // An unreadable file at 08:00, named like tailscope's: any query that opens it fails.
    let rel = std::path::Path::new("spans/date=2026-11-21/hour=08").join(format!(
        "{:020}_{}_{}_{:08x}.parquet",
        9,
        NINE - HOUR,
        NINE - HOUR + 1000,
        1
    ));
    std::fs::create_dir_all(dir.path().join(rel.parent().unwrap())).unwrap();
    std::fs::write(dir.path().join(&rel), b"not parquet").unwrap();
    let corrupt = tailscope_core::catalog::ParquetFile::from_relative_path(&rel, 11).unwrap();
    files.push((Signal::Spans, corrupt));
    catalog.commit_flush(files, 9);
    let engine = engine(&catalog).await;

    let scanned = || engine.counters().files_scanned.load(Ordering::Relaxed);
    let before = scanned();
    let out = engine.sql("SELECT count(*) AS n FROM spans WHERE start_time >= '2026-11-21T10:00:00Z'").await.unwrap();
    assert_eq!(i64_col(&out, "n"), vec![20]);
    assert_eq!(scanned() - before, 2, "only the 10:00 and 11:00 files are read");

    let before = scanned();
    let out =
        engine.sql("SELECT count(*) AS n FROM spans WHERE date = '2026-11-21' AND hour IN ('09', '11')").await.unwrap();
    assert_eq!(i64_col(&out, "n"), vec![20]);
    assert_eq!(scanned() - before, 2);

    let before = scanned();
    let out = engine
        .sql(
            "SELECT count(*) AS n FROM spans \
             WHERE start_time BETWEEN '2026-11-21T09:00:00Z' AND '2026-11-21T09:59:59Z'",
        )
        .await
        .unwrap();
    assert_eq!(i64_col(&out, "n"), vec![10]);
    assert_eq!(scanned() - before, 1);

    // The pruned queries never opened the unreadable file; without a predicate it is opened, found unreadable and
    // skipped (the query answers from the other files): the pruning above is real.
    assert_eq!(catalog.unreadable_files(), Vec::new());
    let out = engine.sql("SELECT count(*) AS n FROM spans").await.unwrap();
    assert_eq!(i64_col(&out, "n"), vec![30]);
    let unreadable = catalog.unreadable_files();
    assert_eq!(unreadable.len(), 1, "{unreadable:?}");
    assert_eq!(unreadable[0].0, rel);
}

/// Files whose footer is garbage, that are cut short, or whose pages are damaged: the first two are skipped by
/// every query, checked once per version of the file; the third fails the query that reads it with its name, and
/// is skipped from then on. Nothing is deleted, and a restored file is read again.
#[tokio::test]
async fn unreadable_files_are_skipped_and_a_damaged_page_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::new(dir.path());
    let mut files = Vec::new();
    for h in 0..4i64 {
        let rows: Vec<_> = (0..10).map(|i| span(i, NINE + h * HOUR + i as i64 * MS, 5, "p", "m")).collect();
        files.push((
            Signal::Spans,
            write_parquet(dir.path(), Signal::Spans, &spans_batch(&rows), h as u64 + 1).unwrap(),
        ));
    }
    catalog.commit_flush(files.clone(), 9);
    let engine = engine(&catalog).await;
    let count = "SELECT count(*) AS n, sum(duration_ns) AS d FROM spans";
    assert_eq!(i64_col(&engine.sql(count).await.unwrap(), "n"), vec![40]);

    let path = |i: usize| dir.path().join(&files[i].1.relative_path);
    let originals: Vec<Vec<u8>> = (0..4).map(|i| std::fs::read(path(i)).unwrap()).collect();
    // 0: garbage in the footer, its length and magic intact.
    let mut bytes = originals[0].clone();
    let n = bytes.len();
    let footer = u32::from_le_bytes(bytes[n - 8..n - 4].try_into().unwrap()) as usize;
    bytes[n - 8 - footer..n - 8].fill(0xff);
    std::fs::write(path(0), &bytes).unwrap();
    // 1: cut in half.
    std::fs::write(path(1), &originals[1][..originals[1].len() / 2]).unwrap();
    // 2: damaged pages.
    damage_pages(&path(2)).unwrap();

    let err = engine.sql(count).await.unwrap_err();
    assert!(matches!(err, QueryError::UnreadableFile(_)), "{err:?}");
    let message = err.to_string();
    assert!(message.contains(&path(2).display().to_string()), "{message}");
    assert!(message.contains("restore it from a backup"), "{message}");
    for _ in 0..3 {
        let out = engine.sql(count).await.unwrap();
        assert_eq!(i64_col(&out, "n"), vec![10], "only the intact file is read");
    }
    let unreadable: Vec<_> = catalog.unreadable_files().into_iter().map(|(p, _)| p).collect();
    assert_eq!(unreadable, (0..3).map(|i| files[i].1.relative_path.clone()).collect::<Vec<_>>());
    for i in 0..4 {
        assert!(path(i).exists(), "nothing is deleted");
    }

    // Restored from a backup (the same bytes, a new change time): read again.
    for (i, original) in originals.iter().enumerate().take(3) {
        std::fs::write(path(i), original).unwrap();
    }
    assert_eq!(i64_col(&engine.sql(count).await.unwrap(), "n"), vec![40]);
    assert!(catalog.unreadable_files().is_empty());
}

#[tokio::test]
async fn writes_and_settings_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&Catalog::new(dir.path())).await;
    for sql in [
        "CREATE TABLE t AS SELECT 1",
        "CREATE VIEW v AS SELECT * FROM spans",
        "CREATE EXTERNAL TABLE x STORED AS PARQUET LOCATION '/tmp'",
        "DROP VIEW llm_calls",
        "INSERT INTO spans SELECT * FROM spans",
        "DELETE FROM spans",
        "COPY (SELECT 1) TO '/tmp/tailscope-copy-test.csv'",
        "SET datafusion.execution.batch_size = 1",
        "EXPLAIN CREATE TABLE t AS SELECT 1",
    ] {
        let err = engine.sql(sql).await.unwrap_err();
        assert!(matches!(err, QueryError::ReadOnly { .. } | QueryError::InvalidSql(_)), "{sql}: {err:?}");
        assert!(err.to_string().contains("read-only") || err.to_string().contains("not supported"), "{sql}: {err}");
        assert_eq!(err.http_status(), http::StatusCode::BAD_REQUEST, "{sql}");
    }
    assert!(!std::path::Path::new("/tmp/tailscope-copy-test.csv").exists());
    let err = engine.sql("CREATE TABLE t AS SELECT 1").await.unwrap_err();
    assert!(matches!(err, QueryError::ReadOnly { ref statement } if statement == "CREATE MEMORY TABLE"), "{err:?}");
    // The views are still there, and reads still run.
    engine.sql("SELECT * FROM llm_calls").await.unwrap();
    engine.sql("EXPLAIN SELECT * FROM spans").await.unwrap();
    engine.sql("SHOW TABLES").await.unwrap();
}

#[tokio::test]
async fn unknown_column_names_the_column() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&Catalog::new(dir.path())).await;
    let err = engine.sql("SELECT no_such_column FROM spans").await.unwrap_err();
    assert!(matches!(err, QueryError::InvalidSql(_)), "{err:?}");
    assert!(err.to_string().contains("no_such_column"), "{err}");
    assert_eq!(err.http_status(), http::StatusCode::BAD_REQUEST);
    let err = engine.sql("SELEC 1").await.unwrap_err();
    assert!(matches!(err, QueryError::InvalidSql(_)), "{err:?}");
    let err = engine.sql("  ; ").await.unwrap_err();
    assert!(matches!(err, QueryError::InvalidSql(_)), "{err:?}");
}

#[tokio::test]
async fn slow_queries_time_out_and_busy_slots_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::new(dir.path());
    let engine = Engine::new(
        catalog,
        QueryConfig {
            timeout: Duration::from_millis(200),
            memory_limit_mb: 64,
            max_concurrent: 1,
            ..QueryConfig::default()
        },
    )
    .await
    .unwrap();
    let err = engine.sql("SELECT sum(value) FROM range(10000000000)").await.unwrap_err();
    assert!(matches!(err, QueryError::Timeout { .. }), "{err:?}");
    assert_eq!(err.http_status(), http::StatusCode::GATEWAY_TIMEOUT);

    // Hold the only slot, as a long query would.
    let permit = engine.inner_slots().acquire().await.unwrap();
    let err = engine.sql("SELECT 1").await.unwrap_err();
    assert!(matches!(err, QueryError::TooBusy { max_concurrent: 1, .. }), "{err:?}");
    assert_eq!(err.http_status(), http::StatusCode::SERVICE_UNAVAILABLE);
    drop(permit);
    engine.sql("SELECT 1").await.unwrap();
}

#[tokio::test]
async fn memory_limit_is_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::new(
        Catalog::new(dir.path()),
        QueryConfig {
            timeout: Duration::from_secs(30),
            memory_limit_mb: 1,
            max_concurrent: 1,
            ..QueryConfig::default()
        },
    )
    .await
    .unwrap();
    // Holding 2M distinct values for an exact quantile cannot fit in 1 MiB and cannot spill.
    let err = engine
        .sql("SELECT value % 3 AS g, quantile_exact(value, 0.5) FROM range(2000000) GROUP BY 1")
        .await
        .unwrap_err();
    assert!(matches!(err, QueryError::ResourcesExhausted(_)), "{err:?}");
}

#[tokio::test]
async fn sessions_view_counts_per_session() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::new(dir.path());
    let mut rows =
        vec![span(0, NINE, 100, "aws.bedrock", "claude"), span(3, NINE + 1000 * MS, 200, "gcp.vertex_ai", "gemini")];
    rows[1].session_id = rows[0].session_id.clone();
    rows[1].error = true;
    let mut tool = span(6, NINE + 500 * MS, 50, "x", "y");
    tool.gen_ai_provider = None;
    tool.gen_ai_operation = Some("execute_tool".into());
    tool.tool_name = Some("search".into());
    tool.input_tokens = None;
    tool.output_tokens = None;
    tool.session_id = rows[0].session_id.clone();
    rows.push(tool);
    catalog.add_batch(Signal::Spans, 1, tailscope_core::projects::Project::default(), spans_batch(&rows));
    let engine = engine(&catalog).await;
    let out = engine.sql("SELECT * FROM sessions").await.unwrap();
    assert_eq!(out.num_rows(), 1);
    assert_eq!(i64_col(&out, "steps"), vec![3]);
    assert_eq!(i64_col(&out, "llm_calls"), vec![2]);
    assert_eq!(i64_col(&out, "tool_calls"), vec![1]);
    assert_eq!(i64_col(&out, "total_tokens"), vec![220]);
    assert_eq!(i64_col(&out, "error_count"), vec![1]);
    assert_eq!(f64_col(&out, "wall_duration_ms"), vec![Some(1200.0)]);
    assert_eq!(str_col(&out, "providers"), vec![Some("aws.bedrock,gcp.vertex_ai".into())]);
}

#[tokio::test]
async fn relations_list_tables_then_views() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&Catalog::new(dir.path())).await;
    let names: Vec<_> = engine.relations().iter().map(|r| (r.name.as_str(), r.kind)).collect();
    for expected in [("spans", "TABLE"), ("metrics", "TABLE"), ("logs", "TABLE"), ("alerts", "TABLE")] {
        assert!(names.contains(&expected), "{names:?}");
    }
    for view in ["llm_calls", "sessions", "provider_latency"] {
        assert!(names.contains(&(view, "VIEW")), "{names:?}");
    }
    let spans = engine.relations().iter().find(|r| r.name == "spans").unwrap().schema.clone();
    assert!(spans.field_with_name("date").is_ok() && spans.field_with_name("hour").is_ok());
}

#[tokio::test]
async fn shell_meta_commands_answer_from_information_schema() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&Catalog::new(dir.path())).await;
    let out = engine.sql(&crate::shell::list_relations_sql()).await.unwrap();
    let names = str_col(&out, "name");
    assert!(names.contains(&Some("provider_latency".into())) && names.contains(&Some("spans".into())), "{names:?}");
    let out = engine.sql(&crate::shell::describe_sql("spans")).await.unwrap();
    let columns = str_col(&out, "column");
    assert_eq!(columns.first(), Some(&Some("trace_id".to_string())));
    assert_eq!(columns.last(), Some(&Some("project".to_string())));
    assert_eq!(str_col(&out, "type").first(), Some(&Some("Utf8".to_string())));
}

#[tokio::test]
async fn introspection_statements_run() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&Catalog::new(dir.path())).await;
    for sql in [
        "EXPLAIN ANALYZE SELECT count(*) FROM spans",
        "DESCRIBE spans",
        "SHOW TABLES",
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY x) FROM (VALUES (1.0), (2.0)) AS t(x)",
        "SELECT median(x) FROM (VALUES (1.0), (2.0)) AS t(x)",
    ] {
        engine.sql(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

#[tokio::test]
async fn quantiles_over_one_value_are_shared_and_answer_as_if_alone() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&Catalog::new(dir.path())).await;
    // 200k shuffled values in 7 groups, enough for partial and final aggregation over several batches.
    let source = "(SELECT value % 7 AS g, CAST((value * 7919) % 200003 AS DOUBLE) / 10 AS x FROM range(200000)) AS t";
    let together = format!(
        "SELECT g, quantile_exact(x, 0.99) AS p99, quantile_exact(x, 0.5) AS p50, count(*) AS n, \
         quantile_cont(x, 0.95) AS p95, quantile_exact(x, 0.5) FILTER (WHERE x > 100) AS p50_over_100, \
         quantile_exact(x, 0.9) FILTER (WHERE x > 100) AS p90_over_100, quantile_exact(x + 1, 0.5) AS p50_plus_one \
         FROM {source} GROUP BY g ORDER BY g"
    );
    let plan = engine.sql(&format!("EXPLAIN {together}")).await.unwrap();
    let text = String::from_utf8(crate::format::to_bytes(crate::format::Format::Csv, &plan).unwrap()).unwrap();
    assert!(text.contains("quantile_exact_shared"), "the rule did not fire:\n{text}");

    let out = engine.sql(&together).await.unwrap();
    let alone = |expr: &str| {
        let sql = format!("SELECT g, {expr} AS v FROM {source} GROUP BY g ORDER BY g");
        let engine = engine.clone();
        async move { f64_col(&engine.sql(&sql).await.unwrap(), "v") }
    };
    assert_eq!(f64_col(&out, "p99"), alone("quantile_exact(x, 0.99)").await);
    assert_eq!(f64_col(&out, "p50"), alone("quantile_exact(x, 0.5)").await);
    assert_eq!(f64_col(&out, "p95"), alone("quantile_exact(x, 0.95)").await);
    // `quantile_cont` is this function, not DataFusion's `percentile_cont` (which answers 18999.6249995 here).
    assert_eq!(alone("quantile_cont(x, 0.95)").await[0], Some(18999.625));
    assert_eq!(f64_col(&out, "p50_over_100"), alone("quantile_exact(x, 0.5) FILTER (WHERE x > 100)").await);
    assert_eq!(f64_col(&out, "p90_over_100"), alone("quantile_exact(x, 0.9) FILTER (WHERE x > 100)").await);
    assert_eq!(f64_col(&out, "p50_plus_one"), alone("quantile_exact(x + 1, 0.5)").await);
    assert_eq!(i64_col(&out, "n"), vec![28572, 28572, 28572, 28571, 28571, 28571, 28571]);
    // Output names are the ones asked for, unqualified columns included.
    let names: Vec<&str> = out.schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(names, ["g", "p99", "p50", "n", "p95", "p50_over_100", "p90_over_100", "p50_plus_one"]);
    // Grouping sets add a grouping id column between the keys and the aggregates; the rewrite keeps it in place.
    let rollup = engine
        .sql(&format!(
            "SELECT g, quantile_exact(x, 0.5) AS a, quantile_exact(x, 0.9) AS b FROM {source} \
             GROUP BY ROLLUP (g) ORDER BY g NULLS FIRST"
        ))
        .await
        .unwrap();
    let whole = engine.sql(&format!("SELECT quantile_exact(x, 0.9) AS b FROM {source}")).await.unwrap();
    assert_eq!(f64_col(&rollup, "b")[0], f64_col(&whole, "b")[0]);
    assert_eq!(f64_col(&rollup, "a")[1..], alone("quantile_exact(x, 0.5)").await[..]);
    // And the same against the numpy definition for one group.
    let values: Vec<f64> = (0..200000u64).filter(|v| v % 7 == 3).map(|v| ((v * 7919) % 200003) as f64 / 10.0).collect();
    let want = crate::fixture::numpy_quantile(&values, 0.99);
    assert_eq!(f64_col(&out, "p99")[3], Some(want));
}

#[tokio::test]
async fn string_columns_leave_the_engine_as_utf8() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::new(dir.path());
    let file =
        write_parquet(dir.path(), Signal::Spans, &spans_batch(&[span(0, NINE, 100, "aws.bedrock", "claude")]), 1)
            .unwrap();
    catalog.commit_flush(vec![(Signal::Spans, file)], 1);
    // The buffer's batches are stored-type `Utf8`; the files are read as views: both must come out alike.
    catalog.add_batch(
        Signal::Spans,
        2,
        tailscope_core::projects::Project::default(),
        spans_batch(&[span(1, NINE + HOUR, 50, "openai", "gpt")]),
    );
    let engine = engine(&catalog).await;
    let sql = "SELECT gen_ai_provider, session_id, array_agg(request_model) AS models FROM spans \
               GROUP BY gen_ai_provider, session_id ORDER BY gen_ai_provider";
    let out = engine.sql(sql).await.unwrap();
    let types: Vec<String> = out.schema.fields().iter().map(|f| f.data_type().to_string()).collect();
    assert_eq!(types[..2], ["Utf8", "Utf8"]);
    assert!(types[2].contains("Utf8") && !types[2].contains("View"), "{}", types[2]);
    for b in &out.batches {
        assert_eq!(b.schema().fields(), out.schema.fields());
    }
    assert_eq!(str_col(&out, "gen_ai_provider"), vec![Some("aws.bedrock".into()), Some("openai".into())]);
    assert_eq!(engine.schema_of(sql).await.unwrap().fields(), out.schema.fields());
    let spans = engine.relations().iter().find(|r| r.name == "spans").unwrap();
    assert_eq!(
        spans.schema.field_with_name("trace_id").unwrap().data_type(),
        &datafusion::arrow::datatypes::DataType::Utf8
    );
}

#[tokio::test]
async fn time_filters_applied_by_the_scan_match_filtering_every_row() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::new(dir.path());
    // Three hourly files of 10 spans 6 minutes apart, and 10 buffered spans in the third hour.
    let mut files = Vec::new();
    for h in 0..3i64 {
        let rows: Vec<_> =
            (0..10).map(|i| span(i, NINE + h * HOUR + i as i64 * 6 * 60_000 * MS, 5 + i as i64, "p", "m")).collect();
        files.push((
            Signal::Spans,
            write_parquet(dir.path(), Signal::Spans, &spans_batch(&rows), h as u64 + 1).unwrap(),
        ));
    }
    catalog.commit_flush(files, 3);
    let buffered: Vec<_> =
        (0..10).map(|i| span(100 + i, NINE + 2 * HOUR + (i as i64 * 5 + 1) * 60_000 * MS, 1, "q", "m")).collect();
    catalog.add_batch(Signal::Spans, 4, tailscope_core::projects::Project::default(), spans_batch(&buffered));
    let engine = engine(&catalog).await;

    // Each predicate, once as the scan takes it and once hidden behind arithmetic the scan does not take (so
    // DataFusion filters every row): the answers must agree. The windows cut files and the buffer mid-way and
    // cover others whole.
    let windows = [
        "start_time >= '2026-11-21T09:30:00Z' AND start_time < '2026-11-21T11:00:00Z'",
        "start_time > '2026-11-21T09:54:00Z'",
        "start_time <= '2026-11-21T10:00:00Z' OR start_time >= '2026-11-21T11:20:00Z'",
        "start_time = '2026-11-21T10:06:00Z'",
        "start_time < '2026-11-21T08:00:00Z'",
        "date = '2026-11-21' AND hour <> '10' AND start_time >= '2026-11-21T09:12:00Z'",
    ];
    for w in windows {
        let hidden = w.replace("start_time", "(start_time + INTERVAL '0 seconds')");
        for select in [
            "count(*) AS n",
            "count(*) AS n, sum(duration_ns) AS d",
            "count(DISTINCT gen_ai_provider) AS n, min(start_time) AS t",
        ] {
            let ours = engine.sql(&format!("SELECT {select} FROM spans WHERE {w}")).await.unwrap();
            let all = engine.sql(&format!("SELECT {select} FROM spans WHERE {hidden}")).await.unwrap();
            let show = |o: &QueryOutput| {
                String::from_utf8(crate::format::to_bytes(crate::format::Format::Csv, o).unwrap()).unwrap()
            };
            assert_eq!(show(&ours), show(&all), "{select} WHERE {w}");
        }
        // And row by row, with the time column not selected.
        let ours = engine
            .sql(&format!("SELECT span_id, hour FROM spans WHERE {w} ORDER BY start_time, span_id"))
            .await
            .unwrap();
        let all = engine
            .sql(&format!("SELECT span_id, hour FROM spans WHERE {hidden} ORDER BY start_time, span_id"))
            .await
            .unwrap();
        assert_eq!(str_col(&ours, "span_id"), str_col(&all, "span_id"), "{w}");
        assert_eq!(str_col(&ours, "hour"), str_col(&all, "hour"), "{w}");
    }
    // The first window: 5 + 10 file rows, and the 09:30-10:59 half of nothing buffered (buffer is 11:01-11:46).
    let out = engine.sql(&format!("SELECT count(*) AS n FROM spans WHERE {}", windows[0])).await.unwrap();
    assert_eq!(i64_col(&out, "n"), vec![15]);
    // A limit pushed into the scan still gives exactly that many rows, from files and buffer alike.
    for limit in [1, 3, 25] {
        let out = engine
            .sql(&format!("SELECT span_id FROM spans WHERE start_time >= '2026-11-21T09:30:00Z' LIMIT {limit}"))
            .await
            .unwrap();
        assert_eq!(out.num_rows(), limit);
    }
    // A window over the whole 10:00 file needs no row filter on it: the plan filters the other two parts only.
    let plan = engine
        .sql("EXPLAIN SELECT count(*) FROM spans WHERE start_time >= '2026-11-21T10:00:00Z' AND start_time < '2026-11-21T11:00:00Z'")
        .await
        .unwrap();
    let text = String::from_utf8(crate::format::to_bytes(crate::format::Format::Csv, &plan).unwrap()).unwrap();
    assert!(text.contains("FilterExec"), "the buffer still gets a filter:\n{text}");
}

/// A string key, a nullable float and a nullable integer per row of `range(200000)`, and the SQL that produces
/// them: NULL keys, the empty key, keys shorter than 8, 8-16 and longer than 16 bytes, a key whose `x` is always
/// NULL.
fn string_group_row(v: i64) -> (Option<String>, Option<f64>, Option<i64>) {
    let key = if v % 101 == 0 {
        None
    } else if v % 103 == 0 {
        Some(String::new())
    } else if v % 77 == 0 {
        Some("only-null-x".to_string())
    } else if v % 2 == 0 {
        Some(format!("k{}", (v * 7919) % 3001))
    } else {
        Some(format!("a-rather-long-session-key-{}", (v * 7919) % 3001))
    };
    let x = (v % 7 != 0).then(|| (v % 1000) as f64 / 2.0);
    let n = (v % 5 != 0).then_some(v);
    (key, x, n)
}

const STRING_GROUP_SOURCE: &str = "(SELECT CASE WHEN value % 101 = 0 THEN NULL WHEN value % 103 = 0 THEN '' \
     WHEN value % 77 = 0 THEN 'only-null-x' \
     WHEN value % 2 = 0 THEN concat('k', CAST((value * 7919) % 3001 AS VARCHAR)) \
     ELSE concat('a-rather-long-session-key-', CAST((value * 7919) % 3001 AS VARCHAR)) END AS k, \
     CASE WHEN value % 7 = 0 THEN NULL ELSE CAST(value % 1000 AS DOUBLE) / 2 END AS x, \
     CASE WHEN value % 5 = 0 THEN NULL ELSE value END AS n FROM range(200000)) AS t";

#[tokio::test]
async fn string_group_aggregate_matches_an_independent_computation() {
    let plain = STRING_GROUP_SOURCE.to_string();
    // The same keys dictionary-encoded (a dictionary per batch, NULL keys among them), as `session_id` is read.
    let dictionary =
        format!("(SELECT arrow_cast(k, 'Dictionary(Int32, Utf8)') AS k, x, n FROM {STRING_GROUP_SOURCE}) AS d");
    for source in [plain, dictionary] {
        string_group_matches(&source).await;
    }
}

// Long by design: every aggregate StringGroupAggregateExec takes over, each run with the rule on and off and compared.
async fn string_group_matches(source: &str) {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&Catalog::new(dir.path())).await;
    let sql = format!("SELECT k, sum(x) AS sx, sum(n) AS sn, count(*) AS c, count(x) AS cx FROM {source} GROUP BY k");
    let plan = engine.sql(&format!("EXPLAIN {sql}")).await.unwrap();
    let text = String::from_utf8(crate::format::to_bytes(crate::format::Format::Csv, &plan).unwrap()).unwrap();
    assert!(text.contains("StringGroupAggregateExec"), "the rule did not fire:\n{text}");

    type Expected = (Option<f64>, Option<i64>, i64, i64);
    let mut expected: std::collections::HashMap<Option<String>, Expected> = Default::default();
    for v in 0..200_000 {
        let (key, x, n) = string_group_row(v);
        let e = expected.entry(key).or_insert((None, None, 0, 0));
        if let Some(x) = x {
            e.0 = Some(e.0.unwrap_or(0.0) + x);
            e.3 += 1;
        }
        if let Some(n) = n {
            e.1 = Some(e.1.unwrap_or(0) + n);
        }
        e.2 += 1;
    }
    assert!(expected.contains_key(&None) && expected.contains_key(&Some(String::new())));
    assert_eq!(expected[&Some("only-null-x".to_string())].0, None);

    let out = engine.sql(&sql).await.unwrap();
    let mut got: std::collections::HashMap<Option<String>, Expected> = Default::default();
    for b in &out.batches {
        let k = b.column_by_name("k").unwrap().as_string::<i32>();
        let sx = b.column_by_name("sx").unwrap().as_primitive::<Float64Type>();
        let sn = b.column_by_name("sn").unwrap().as_primitive::<Int64Type>();
        let c = b.column_by_name("c").unwrap().as_primitive::<Int64Type>();
        let cx = b.column_by_name("cx").unwrap().as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            let key = k.is_valid(i).then(|| k.value(i).to_string());
            let row =
                (sx.is_valid(i).then(|| sx.value(i)), sn.is_valid(i).then(|| sn.value(i)), c.value(i), cx.value(i));
            assert!(got.insert(key.clone(), row).is_none(), "group {key:?} answered twice");
        }
    }
    // The float values are multiples of 0.5 far below 2^52, so every order of addition gives the same sums.
    assert_eq!(got, expected);

    // Quantiles, extremes and means run through their own groups accumulators in the same operator.
    let sql = format!(
        "SELECT k, quantile_exact(x, 0.5) AS p50, quantile_exact(x, 0.99) AS p99, min(x) AS lo, max(x) AS hi, \
         avg(x) AS mean, count(*) AS c FROM {source} GROUP BY k"
    );
    let plan = engine.sql(&format!("EXPLAIN {sql}")).await.unwrap();
    let text = String::from_utf8(crate::format::to_bytes(crate::format::Format::Csv, &plan).unwrap()).unwrap();
    assert!(text.contains("StringGroupAggregateExec"), "the rule did not fire:\n{text}");
    let mut values: std::collections::HashMap<Option<String>, (Vec<f64>, i64)> = Default::default();
    for v in 0..200_000 {
        let (key, x, _) = string_group_row(v);
        let e = values.entry(key).or_default();
        e.0.extend(x);
        e.1 += 1;
    }
    let out = engine.sql(&sql).await.unwrap();
    let mut seen = 0;
    for b in &out.batches {
        let k = b.column_by_name("k").unwrap().as_string::<i32>();
        let col = |name: &str| b.column_by_name(name).unwrap().as_primitive::<Float64Type>().clone();
        let (p50, p99, lo, hi, mean) = (col("p50"), col("p99"), col("lo"), col("hi"), col("mean"));
        let c = b.column_by_name("c").unwrap().as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            let key = k.is_valid(i).then(|| k.value(i).to_string());
            let (xs, n) = &values[&key];
            let get = |a: &datafusion::arrow::array::Float64Array| a.is_valid(i).then(|| a.value(i));
            assert_eq!(c.value(i), *n, "{key:?}");
            if xs.is_empty() {
                assert_eq!((get(&p50), get(&lo), get(&mean)), (None, None, None), "{key:?}");
                continue;
            }
            let want = |q| crate::fixture::numpy_quantile(xs, q);
            assert_eq!(get(&p50), Some(want(0.5)), "{key:?}");
            assert_eq!(get(&p99), Some(want(0.99)), "{key:?}");
            assert_eq!(get(&lo), xs.iter().copied().reduce(f64::min), "{key:?}");
            assert_eq!(get(&hi), xs.iter().copied().reduce(f64::max), "{key:?}");
            let m = xs.iter().sum::<f64>() / xs.len() as f64;
            assert!((get(&mean).unwrap() - m).abs() <= 1e-9 * m.abs().max(1.0), "{key:?}");
            seen += 1;
        }
    }
    assert_eq!(out.num_rows(), values.len());
    assert!(seen > 1000);
}

/// `session_id` as the scan reads it: dictionaries shared by the batches of a file (the operator's cache), from
/// several files and the unflushed buffer, with NULL ids. Checked against sums computed from the rows.
#[tokio::test]
async fn sessions_group_by_their_dictionary_across_files_and_buffer() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::new(dir.path());
    let rows: Vec<SpanRow> = (0..30_000u64)
        .map(|i| SpanRow {
            trace_id: format!("{:032x}", i / 7 + 1),
            span_id: format!("{:016x}", i + 1),
            name: "chat".into(),
            start_ns: NINE + (i as i64) * 400_000_000,
            duration_ns: 1_000_000,
            service_name: "svc".into(),
            session_id: (i % 13 != 0).then(|| format!("session-{}", (i * 7919) % 2503)),
            cost_usd: (i % 3 != 0).then(|| (i % 100) as f64 / 4.0),
            ..Default::default()
        })
        .collect();
    // 30,000 spans 0.4 s apart: the first two hours as files (9,000 rows, more than a batch, each), the rest
    // buffered.
    let hour = |r: &SpanRow| (r.start_ns - NINE) / HOUR;
    let part = |h: i64| rows.iter().filter(|r| hour(r) == h).cloned().collect::<Vec<_>>();
    let files = vec![
        (Signal::Spans, write_parquet(dir.path(), Signal::Spans, &spans_batch(&part(0)), 1).unwrap()),
        (Signal::Spans, write_parquet(dir.path(), Signal::Spans, &spans_batch(&part(1)), 2).unwrap()),
    ];
    catalog.commit_flush(files, 2);
    let buffered: Vec<SpanRow> = rows.iter().filter(|r| hour(r) >= 2).cloned().collect();
    catalog.add_batch(Signal::Spans, 3, tailscope_core::projects::Project::default(), spans_batch(&buffered));
    let engine = engine(&catalog).await;
    let sql = "SELECT session_id, sum(cost_usd) AS cost, count(*) AS spans FROM spans GROUP BY session_id";
    let plan = engine.sql(&format!("EXPLAIN {sql}")).await.unwrap();
    let text = String::from_utf8(crate::format::to_bytes(crate::format::Format::Csv, &plan).unwrap()).unwrap();
    assert!(text.contains("StringGroupAggregateExec"), "the rule did not fire:\n{text}");

    let mut expected: std::collections::HashMap<Option<String>, (Option<f64>, i64)> = Default::default();
    for r in &rows {
        let e = expected.entry(r.session_id.clone()).or_insert((None, 0));
        if let Some(c) = r.cost_usd {
            e.0 = Some(e.0.unwrap_or(0.0) + c);
        }
        e.1 += 1;
    }
    let out = engine.sql(sql).await.unwrap();
    assert_eq!(out.schema.field(0).data_type(), &datafusion::arrow::datatypes::DataType::Utf8);
    let mut got: std::collections::HashMap<Option<String>, (Option<f64>, i64)> = Default::default();
    for b in &out.batches {
        let k = b.column(0).as_string::<i32>();
        let cost = b.column(1).as_primitive::<Float64Type>();
        let n = b.column(2).as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            let key = k.is_valid(i).then(|| k.value(i).to_string());
            let row = (cost.is_valid(i).then(|| cost.value(i)), n.value(i));
            assert!(got.insert(key.clone(), row).is_none(), "session {key:?} answered twice");
        }
    }
    // Costs are multiples of 0.25 far below 2^52: every order of addition gives the same sums.
    assert_eq!(got, expected);
    // A filter leaves each batch's whole dictionary in place: ids that no remaining row uses are no groups.
    let one = engine
        .sql("SELECT session_id, count(*) AS n FROM spans WHERE session_id = 'session-42' GROUP BY session_id")
        .await
        .unwrap();
    assert_eq!(i64_col(&one, "n"), vec![expected[&Some("session-42".to_string())].1]);
    let dear = engine
        .sql(
            "SELECT count(*) AS sessions, sum(n) AS n FROM (SELECT session_id, count(*) AS n FROM spans \
              WHERE cost_usd > 20 GROUP BY session_id)",
        )
        .await
        .unwrap();
    let want: std::collections::HashSet<_> =
        rows.iter().filter(|r| r.cost_usd.is_some_and(|c| c > 20.0)).map(|r| r.session_id.clone()).collect();
    let want_rows = rows.iter().filter(|r| r.cost_usd.is_some_and(|c| c > 20.0)).count() as i64;
    assert_eq!((i64_col(&dear, "sessions"), i64_col(&dear, "n")), (vec![want.len() as i64], vec![want_rows]));
    // Other aggregates over the dictionary column run in DataFusion's own operators.
    let other = engine
        .sql("SELECT count(*) AS n FROM (SELECT session_id, min(start_time) FROM spans GROUP BY session_id)")
        .await
        .unwrap();
    assert_eq!(i64_col(&other, "n"), vec![expected.len() as i64]);
}

#[tokio::test]
async fn string_group_aggregate_falls_back_to_datafusion_under_a_tight_memory_limit() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::new(Catalog::new(dir.path()), QueryConfig { memory_limit_mb: 4, ..config() }).await.unwrap();
    // 400k distinct 40-byte keys: more than 4 MiB of group tables.
    let sql = "SELECT count(*) AS groups, sum(c) AS rows, min(k) AS first FROM (SELECT k, count(*) AS c FROM \
               (SELECT concat('a-key-long-enough-to-fill-the-pool-', CAST(value AS VARCHAR)) AS k FROM range(400000)) \
               GROUP BY k)";
    let analyzed = engine.sql(&format!("EXPLAIN ANALYZE {sql}")).await.unwrap();
    let text = String::from_utf8(crate::format::to_bytes(crate::format::Format::Csv, &analyzed).unwrap()).unwrap();
    assert!(text.contains("StringGroupAggregateExec"), "the rule did not fire:\n{text}");
    assert!(!text.contains("memory_fallbacks=0"), "the tables fit after all:\n{text}");
    let out = engine.sql(sql).await.unwrap();
    assert_eq!(i64_col(&out, "groups"), vec![400_000]);
    assert_eq!(i64_col(&out, "rows"), vec![400_000]);
}

// --- Limits on hostile SQL (issue #12): depth, size, growing functions, streaming, timeouts. ---

async fn empty_engine(config: QueryConfig) -> (tempfile::TempDir, Engine) {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::new(Catalog::new(dir.path()), config).await.unwrap();
    (dir, engine)
}

fn plus_chain(terms: usize) -> String {
    format!("SELECT {}1 AS n", "1 + ".repeat(terms - 1))
}

#[tokio::test]
async fn deep_statements_are_refused_before_they_overflow_a_stack() {
    let (_dir, engine) = empty_engine(config()).await;
    let max = engine.config().max_expr_depth;
    let or_chain = |terms: usize| {
        let terms: Vec<String> = (0..terms).map(|i| format!("value = {i}")).collect();
        format!("SELECT count(*) AS n FROM range(100) WHERE {}", terms.join(" OR "))
    };
    let cte_chain = |n: usize| {
        let mut sql = String::from("WITH t0 AS (SELECT 1 AS x)");
        for i in 1..n {
            sql.push_str(&format!(", t{i} AS (SELECT x + 1 AS x FROM t{})", i - 1));
        }
        sql + &format!(" SELECT x FROM t{}", n - 1)
    };
    // Just under the statement size limit: the parse, the check and dropping the tree all stay on the planner's
    // stack.
    let huge = plus_chain(engine.config().max_sql_bytes / 4 - 10);
    let deep = [
        plus_chain(1_000),
        plus_chain(100_000),
        huge,
        or_chain(20_000),
        format!("SELECT {}", vec!["'a'"; 20_000].join(" || ")),
        format!("SELECT 1 AS n FROM range(1) WHERE {}", vec!["value >= 0"; 20_000].join(" AND ")),
        vec!["SELECT 1 AS n"; 5_000].join(" UNION ALL "),
        cte_chain(2_000),
        format!("EXPLAIN {}", plus_chain(5_000)),
    ];
    for sql in &deep {
        let err = engine.sql(sql).await.unwrap_err();
        assert!(matches!(err, QueryError::LimitExceeded(_)), "{}...: {err:?}", &sql[..60]);
        assert!(err.to_string().contains("max_expr_depth"), "{err}");
        assert_eq!(err.http_status(), http::StatusCode::BAD_REQUEST);
    }
    // Nesting that recurses in the parser stops at its recursion limit, with DataFusion's parse error.
    for sql in [
        format!("SELECT {}1{}", "(".repeat(10_000), ")".repeat(10_000)),
        format!("SELECT {}true", "NOT ".repeat(10_000)),
        format!("SELECT {}1{}", "abs(".repeat(10_000), ")".repeat(10_000)),
        format!("SELECT {}1{}", "(SELECT ".repeat(5_000), ")".repeat(5_000)),
        format!("SELECT {}1{}", "CASE WHEN true THEN ".repeat(5_000), " END".repeat(5_000)),
        format!("SELECT {}", "-".repeat(20_000) + "1"),
    ] {
        let err = engine.sql(&sql).await.unwrap_err();
        assert!(matches!(err, QueryError::InvalidSql(_) | QueryError::LimitExceeded(_)), "{}...: {err:?}", &sql[..40]);
    }
    // Over the size limit: refused before parsing.
    let err = engine.sql(&plus_chain(engine.config().max_sql_bytes)).await.unwrap_err();
    assert!(err.to_string().contains("max_sql_bytes"), "{err}");
    // Flight's GetFlightInfo plans too.
    let err = engine.schema_of(&plus_chain(1_000)).await.unwrap_err();
    assert!(matches!(err, QueryError::LimitExceeded(_)), "{err:?}");

    // Below the limit, chains plan, optimise and evaluate (on the runtime's own threads) to the right answer.
    let n = max - 10;
    let out = engine.sql(&plus_chain(n)).await.unwrap();
    assert_eq!(i64_col(&out, "n"), vec![n as i64]);
    let out = engine.sql(&or_chain(n)).await.unwrap();
    assert_eq!(i64_col(&out, "n"), vec![100]);
    let sum = (0..n).map(|i| format!("(value + {i})")).collect::<Vec<_>>().join(" + ");
    let out = engine.sql(&format!("SELECT sum({sum}) AS n FROM range(10)")).await.unwrap();
    let want: i64 = (0..10i64).map(|v| (0..n as i64).map(|i| v + i).sum::<i64>()).sum();
    assert_eq!(i64_col(&out, "n"), vec![want]);
    let out = engine.sql(&cte_chain(50)).await.unwrap();
    assert_eq!(i64_col(&out, "x"), vec![50]);
}

#[tokio::test]
async fn a_tighter_depth_limit_is_configurable() {
    let (_dir, engine) = empty_engine(QueryConfig { max_expr_depth: 20, ..config() }).await;
    engine.sql(&plus_chain(10)).await.unwrap();
    let err = engine.sql(&plus_chain(30)).await.unwrap_err();
    assert!(err.to_string().contains("max_expr_depth (20)"), "{err}");
    // The views nest plans the statement does not show; they count too, but fit the default.
    let (_dir, engine) = empty_engine(config()).await;
    engine.sql("SELECT * FROM provider_latency").await.unwrap();
    engine.sql("SELECT * FROM session_cost").await.unwrap();
}

#[tokio::test]
async fn growing_functions_are_bounded_before_they_allocate() {
    let (_dir, engine) = empty_engine(QueryConfig { max_function_output_mb: 16, ..config() }).await;
    for sql in [
        "SELECT length(repeat('x', 1000000000)) AS n",
        "SELECT length(repeat(repeat('x', 1000000), 100)) AS n",
        "SELECT length(lpad('x', 2000000000)) AS n",
        "SELECT length(rpad('x', 20000000, '€')) AS n",
        "SELECT length(replace(repeat('x', 1000000), 'x', repeat('y', 100))) AS n",
        "SELECT length(regexp_replace(repeat('x', 1000000), '', repeat('y', 100), 'g')) AS n",
        "SELECT cardinality(range(10000000000)) AS n",
        "SELECT cardinality(range(0, 10000000000, 2)) AS n",
        "SELECT cardinality(generate_series(1, 10000000000)) AS n",
        "SELECT cardinality(range(DATE '1970-01-01', DATE '9999-01-01', INTERVAL '1 second')) AS n",
        "SELECT cardinality(generate_series(TIMESTAMP '1970-01-01', TIMESTAMP '2100-01-01', INTERVAL '1 second')) AS n",
        "SELECT cardinality(array_repeat(1, 1000000000)) AS n",
        "SELECT cardinality(array_resize([1], 1000000000)) AS n",
        // Per row, the sum over a batch counts.
        "SELECT sum(length(repeat('x', value))) AS n FROM range(100000)",
        "SELECT sum(cardinality(range(value))) AS n FROM range(100000)",
    ] {
        let started = std::time::Instant::now();
        let err = engine.sql(sql).await.unwrap_err();
        assert!(matches!(err, QueryError::LimitExceeded(_)), "{sql}: {err:?}");
        assert!(err.to_string().contains("max_function_output_mb (16 MiB)"), "{sql}: {err}");
        assert!(started.elapsed() < Duration::from_secs(5), "{sql} took {:?}", started.elapsed());
    }
    // Within the bound they answer as DataFusion does.
    let out = engine
        .sql(
            "SELECT length(repeat('ab', 1000)) AS r, cardinality(range(5)) AS c, length(lpad('x', 10, '€')) AS p, \
              replace('aXbX', 'X', 'yy') AS s, cardinality(generate_series(1, 3)) AS g",
        )
        .await
        .unwrap();
    assert_eq!(i64_col(&out, "r"), vec![2000]);
    assert_eq!(i64_col(&out, "c"), vec![5]);
    assert_eq!(i64_col(&out, "p"), vec![10]);
    assert_eq!(i64_col(&out, "g"), vec![3]);
    assert_eq!(str_col(&out, "s"), vec![Some("ayybyy".to_string())]);
    let out = engine.sql("SELECT sum(length(repeat('x', value % 100))) AS n FROM range(100000)").await.unwrap();
    assert_eq!(i64_col(&out, "n"), vec![(0..100_000i64).map(|v| v % 100).sum::<i64>()]);
}

#[tokio::test]
async fn results_stream_and_the_timeout_covers_the_whole_stream() {
    use futures::StreamExt;
    let (_dir, engine) =
        empty_engine(QueryConfig { timeout: Duration::from_millis(800), max_concurrent: 1, ..config() }).await;
    // An endless result: the first batch comes at once, nothing more is computed than is read.
    let mut stream = engine.stream("SELECT value FROM range(1000000000000)").await.unwrap();
    let first = stream.next().await.unwrap().unwrap();
    assert!(first.num_rows() > 0);
    // The stream holds the only slot; dropping it frees the slot.
    assert!(matches!(engine.sql("SELECT 1").await.unwrap_err(), QueryError::TooBusy { .. }));
    drop(stream);
    engine.sql("SELECT 1").await.unwrap();

    // A consumer slower than the timeout gets the timeout, in the middle of the stream.
    let mut stream = engine.stream("SELECT value FROM range(1000000000000)").await.unwrap();
    stream.next().await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(900)).await;
    let err = stream.next().await.unwrap().unwrap_err();
    assert!(matches!(err, QueryError::Timeout { .. }), "{err:?}");
    assert!(stream.next().await.is_none(), "nothing follows the timeout");
    drop(stream);
    engine.sql("SELECT 1").await.unwrap();
}

#[test]
fn streamed_chunks_equal_the_whole_result_in_every_format() {
    use crate::format::{Encoder, Format};
    use datafusion::arrow::array::{ArrayRef, Int64Array};
    let batches: Vec<datafusion::arrow::record_batch::RecordBatch> = (0..3)
        .map(|b| {
            datafusion::arrow::record_batch::RecordBatch::try_from_iter([
                ("n", std::sync::Arc::new(Int64Array::from(vec![b, b + 1])) as ArrayRef),
                ("s", std::sync::Arc::new(StringArray::from(vec![Some("a,\"b"), None])) as ArrayRef),
            ])
            .unwrap()
        })
        .collect();
    let output = QueryOutput { schema: batches[0].schema(), batches };
    for format in [Format::Csv, Format::Json, Format::JsonLines, Format::Arrow, Format::Table] {
        let mut encoder = Encoder::new(format, output.schema.clone()).unwrap();
        let mut streamed = Vec::new();
        let mut chunks = 0;
        for batch in &output.batches {
            let chunk = encoder.write(batch).unwrap();
            chunks += usize::from(!chunk.is_empty());
            streamed.extend(chunk);
        }
        streamed.extend(encoder.finish().unwrap());
        if format != Format::Table {
            assert_eq!(chunks, 3, "{format:?}: a chunk per batch");
        }
        let whole = crate::format::to_bytes(format, &output).unwrap();
        assert_eq!(streamed, whole, "{format:?}");
    }
    let json = String::from_utf8(crate::format::to_bytes(Format::Json, &output).unwrap()).unwrap();
    let rows: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
    assert_eq!(rows.len(), 6);
    // An Arrow stream decodes as its bytes arrive, a few at a time.
    let bytes = crate::format::to_bytes(Format::Arrow, &output).unwrap();
    let mut decoder = crate::format::ArrowStreamDecoder::new();
    let mut rows = 0;
    for piece in bytes.chunks(7) {
        rows += decoder.feed(piece).unwrap().iter().map(|b| b.num_rows()).sum::<usize>();
    }
    decoder.finish().unwrap();
    assert_eq!(rows, 6);
    assert_eq!(decoder.schema().unwrap(), output.schema);
}

#[test]
fn post_bodies_are_read_as_users_send_them() {
    use crate::http::sql_of_body;
    let form = "application/x-www-form-urlencoded";
    assert_eq!(sql_of_body(form, br#"{"sql": "SELECT 1"}"#).unwrap(), "SELECT 1");
    assert_eq!(sql_of_body(form, b"sql=SELECT+1+%2B+1").unwrap(), "SELECT 1 + 1");
    assert_eq!(sql_of_body(form, b"SELECT 'a&sql=b'").unwrap(), "SELECT 'a&sql=b'");
    assert_eq!(sql_of_body("text/plain", b"SELECT 1").unwrap(), "SELECT 1");
    assert_eq!(sql_of_body("", b"  {\"sql\": \"SELECT 2\"}").unwrap(), "SELECT 2");
    assert_eq!(sql_of_body("application/json; charset=utf-8", br#"{"sql": "SELECT 3"}"#).unwrap(), "SELECT 3");
    let err = sql_of_body("application/json", br#"{"query": 1}"#).unwrap_err();
    assert!(err.to_string().contains("{\"sql\": "), "{err}");
    assert!(sql_of_body("text/plain", &[0xff, 0xfe]).is_err());
}

/// A small deterministic generator, so a failure names its seed and statement.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Random SQL text: token soup, deep nesting of every kind, long chains of every operator. Whatever the text, the
/// engine answers or refuses cleanly, in bounded time: no panic, no abort, no internal error.
#[tokio::test]
async fn random_sql_text_never_panics_or_aborts() {
    let (_dir, engine) =
        empty_engine(QueryConfig { timeout: Duration::from_secs(5), max_function_output_mb: 16, ..config() }).await;
    const TOKENS: &[&str] = &[
        "SELECT",
        "FROM",
        "WHERE",
        "GROUP BY",
        "ORDER BY",
        "LIMIT",
        "UNION ALL",
        "WITH",
        "AS",
        "JOIN",
        "ON",
        "(",
        ")",
        "(",
        ")",
        ",",
        "+",
        "-",
        "*",
        "/",
        "%",
        "||",
        "=",
        "<",
        ">=",
        "<>",
        "AND",
        "OR",
        "NOT",
        "IN",
        "IS NULL",
        "CASE",
        "WHEN",
        "THEN",
        "ELSE",
        "END",
        "1",
        "2.5",
        "-7",
        "'x'",
        "''",
        "NULL",
        "true",
        "value",
        "spans",
        "range(3)",
        "count(*)",
        "sum(",
        "repeat(",
        "lpad(",
        "array_repeat(",
        "generate_series(",
        "[",
        "]",
        "::",
        "INT",
        "VARCHAR",
        "EXPLAIN",
        "DISTINCT",
        "OVER",
        "PARTITION BY",
        ";",
        "\"",
        "--",
        "/*",
        "*/",
        "'",
        "\\",
        "é",
        "\u{0}",
        "9223372036854775807",
        "1e308",
        "x",
        "t",
        "duration_ns",
        "INTERVAL '1 day'",
        "now()",
    ];
    const OPERATORS: &[&str] = &["+", "-", "*", "OR", "AND", "||", "=", "<", "UNION ALL SELECT", "IS DISTINCT FROM"];
    const OPENERS: &[(&str, &str)] = &[
        ("(", ")"),
        ("abs(", ")"),
        ("(SELECT ", ")"),
        ("NOT ", ""),
        ("- ", ""),
        ("CASE WHEN true THEN ", " END"),
        ("[", "]"),
        ("coalesce(", ", 1)"),
        ("CAST(", " AS BIGINT)"),
    ];
    let mut rng = Lcg(0x7a11_5c0e);
    let started = std::time::Instant::now();
    for case in 0..90 {
        let sql = match case % 3 {
            0 => {
                let n = 1 + rng.below(60);
                let mut sql = String::from(if rng.below(2) == 0 { "SELECT " } else { "" });
                for _ in 0..n {
                    sql.push_str(TOKENS[rng.below(TOKENS.len())]);
                    sql.push(' ');
                }
                sql
            }
            1 => {
                let (open, close) = OPENERS[rng.below(OPENERS.len())];
                let depth = [10, 100, 1_000, 30_000][rng.below(4)];
                format!("SELECT {}1{}", open.repeat(depth), close.repeat(depth))
            }
            _ => {
                let op = OPERATORS[rng.below(OPERATORS.len())];
                let terms = [10, 300, 2_000, 50_000][rng.below(4)];
                let term = ["1", "value", "'a'", "true", "NULL"][rng.below(5)];
                let chain = vec![term; terms].join(&format!(" {op} "));
                format!("SELECT {chain} FROM range(2)")
            }
        };
        match engine.sql(&sql).await {
            Ok(_) => {}
            Err(QueryError::Internal(message)) => {
                assert!(
                    !message.contains("panicked"),
                    "case {case}: {message}\n{}",
                    sql.chars().take(200).collect::<String>()
                );
            }
            Err(_) => {}
        }
    }
    assert!(started.elapsed() < Duration::from_secs(120), "{:?}", started.elapsed());
}

/// The scan reads only the projects the engine is scoped to, files and buffer alike, whatever the SQL: a file in
/// the layout before projects is project `default`, buffered batches carry their own.
#[tokio::test]
async fn a_scoped_engine_scans_only_its_projects() {
    use tailscope_core::projects::{Project, Visibility};
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::new(dir.path());
    let rows: Vec<_> = (0..6).map(|i| span(i, NINE + i as i64 * 1_000_000_000, 10, "p", "m")).collect();
    let file = write_parquet(dir.path(), Signal::Spans, &spans_batch(&rows[..3]), 1).unwrap();
    catalog.commit_flush(vec![(Signal::Spans, file)], 1);
    let project = |name: &str| Project::parse(name).unwrap();
    catalog.add_batch(Signal::Spans, 2, project("a"), spans_batch(&rows[3..5]));
    catalog.add_batch(Signal::Spans, 3, project("b"), spans_batch(&rows[5..]));
    let engine = engine(&catalog).await;
    let count = |visible: Visibility, sql: &'static str| {
        let engine = engine.scoped(visible);
        async move { i64_col(&engine.sql(sql).await.unwrap(), "n")[0] }
    };
    let all = "SELECT count(*) AS n FROM spans";
    assert_eq!(count(Visibility::All, all).await, 6);
    assert_eq!(count(Visibility::only([project("a")]), all).await, 2);
    assert_eq!(count(Visibility::only([project("b")]), all).await, 1);
    assert_eq!(count(Visibility::only([project("default")]), all).await, 3);
    assert_eq!(count(Visibility::only([project("a"), project("b")]), all).await, 3);
    let escape =
        "SELECT count(*) AS n FROM (SELECT * FROM spans WHERE project = 'b' UNION ALL SELECT * FROM llm_calls)";
    assert_eq!(count(Visibility::only([project("a")]), escape).await, 2);
    let out = engine.sql("SELECT project, count(*) AS n FROM spans GROUP BY 1 ORDER BY 1").await.unwrap();
    assert_eq!(str_col(&out, "project"), ["a", "b", "default"].map(|p| Some(p.to_string())));
}

/// A statement on which DataFusion 55 panics while running ("partition not used yet", in a repartition under two
/// cross joins, found by a hostile client) fails with an error: the panic does not reach the caller, and the
/// engine answers the next statement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_inside_datafusion_is_an_error_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    // One file: one scan partition, which the plan repartitions round-robin under the cross join.
    let rows: Vec<SpanRow> = (0..2000).map(|i| span(i, NINE + i as i64 * MS, 10, "openai", "gpt-4o")).collect();
    let file = write_parquet(dir.path(), Signal::Spans, &spans_batch(&rows), 1).unwrap();
    let catalog = Catalog::new(dir.path());
    catalog.reconcile(Signal::Spans, None, vec![file], None);
    let engine = engine(&catalog).await;
    let sql = "SELECT count(*) FROM spans a, spans b, (SELECT 1 k UNION ALL SELECT 2) \
               WHERE concat(a.name, b.name, k) LIKE '%zzz%'";
    match engine.sql(sql).await {
        Err(QueryError::Internal(message)) => assert!(message.contains("failed on this statement"), "{message}"),
        // Should DataFusion stop panicking here, the answer must be right.
        Ok(out) => assert_eq!(i64_col(&out, "count(*)"), [0]),
        Err(e) => panic!("{e}"),
    }
    let out = engine.sql("SELECT count(*) AS n FROM spans").await.unwrap();
    assert_eq!(i64_col(&out, "n"), [2000]);
}
