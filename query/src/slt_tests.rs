//! SQL behaviour as data: the `.slt` files under `query/tests/sql/` (sqllogictest, the format DataFusion's own SQL
//! tests use) run against [`Engine`] over [`dataset`], a few hundred spans with known values, written as two
//! Parquet files plus unflushed rows in the buffer, as `tailscope serve` would hold them.
//!
//! - `views.slt`: the columns and the rows of every view on the dataset.
//! - `quantiles.slt`: `quantile_exact` / `quantile_cont` and the shared quantiles on known values.
//! - `string_group.slt`: run twice, `StringGroupAggregateExec` on and off, and both must give the same rows (and
//!   the expected ones). Every query must be taken over by the operator unless its text says
//!   `-- kept by DataFusion`, in which case it must not be: the file pins which aggregates the operator takes.
//! - `read_only.slt`: the statements the engine refuses, with their error text, and the reads it still runs.
//!
//! Values are printed as `datafusion-sqllogictest` prints them: `NULL`, `(empty)` for the empty string, floats
//! rounded to 12 decimal places without trailing zeros (`NaN`, `Infinity`, `-Infinity`), booleans `true`/`false`,
//! everything else as Arrow displays it (timestamps `2026-11-21T09:00:30Z`). Column types: `I` integer, `R` float,
//! `T` text, `B` boolean, `P` timestamp, `D` date/time, `?` anything else. An error is `[kind] message` (the kind
//! as the HTTP API names it), so `statement error` patterns pin both.
//!
//! `TAILSCOPE_SLT_COMPLETE=1 cargo test slt` rewrites the expected results from what the engine answers (review
//! the diff before committing it: see docs/sql.md, "The SQL tests").

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray,
};
use datafusion::arrow::datatypes::{DataType, Float64Type};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use sqllogictest::{AsyncDB, DBOutput, Runner};

use tailscope_core::catalog::Catalog;
use tailscope_core::config::QueryConfig;
use tailscope_core::schema::Signal;

use crate::fixture::{SpanRow, spans_batch, write_parquet};
use crate::{Engine, QueryError, QueryOutput};

#[tokio::test]
async fn views_slt() {
    run_file("views.slt", Mode::Plain).await;
}

#[tokio::test]
async fn quantiles_slt() {
    run_file("quantiles.slt", Mode::Plain).await;
}

#[tokio::test]
async fn string_group_slt() {
    run_file("string_group.slt", Mode::StringGroupOnAndOff).await;
}

#[tokio::test]
async fn read_only_slt() {
    run_file("read_only.slt", Mode::Plain).await;
}

/// How a file's statements run.
#[derive(Debug, Clone, Copy)]
enum Mode {
    /// On one engine, as every surface runs them.
    Plain,
    /// On an engine with `StringGroupAggregateExec` and one without; see the module documentation.
    StringGroupOnAndOff,
}

fn sql_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("sql")
}

/// Runs (or with `TAILSCOPE_SLT_COMPLETE=1`, rewrites) one file over a fresh copy of the dataset; a failure names
/// the file and line, the SQL and the difference.
async fn run_file(name: &str, mode: Mode) {
    let dir = tempfile::tempdir().unwrap();
    let catalog = load_dataset(dir.path());
    let db = match mode {
        Mode::Plain => Db::Plain(engine(&catalog, true).await),
        Mode::StringGroupOnAndOff => {
            Db::OnAndOff { on: engine(&catalog, true).await, off: engine(&catalog, false).await }
        }
    };
    let mut db = Some(db);
    let mut runner = Runner::new(move || {
        let db = db.take().expect("one connection per file");
        async move { Ok::<_, SltError>(db) }
    });
    runner.with_column_validator(sqllogictest::strict_column_validator);
    let path = sql_dir().join(name);
    if std::env::var_os("TAILSCOPE_SLT_COMPLETE").is_some_and(|v| v == "1") {
        runner
            .update_test_file(
                &path,
                " ",
                sqllogictest::default_validator,
                sqllogictest::default_normalizer,
                sqllogictest::strict_column_validator,
            )
            .await
            .unwrap_or_else(|e| panic!("cannot complete {}: {e}", path.display()));
        return;
    }
    if let Err(e) = runner.run_file_async(&path).await {
        panic!("{}: {}", path.display(), e.display(false));
    }
}

async fn engine(catalog: &Catalog, string_group_aggregate: bool) -> Engine {
    let config = QueryConfig { timeout: Duration::from_secs(60), max_concurrent: 2, ..QueryConfig::default() };
    Engine::with_string_group_aggregate(catalog.clone(), config, string_group_aggregate).await.expect("engine builds")
}

// --- The connection the runner drives. ---

enum Db {
    Plain(Engine),
    OnAndOff { on: Engine, off: Engine },
}

/// What a statement answered, as the `.slt` files spell it.
type Output = DBOutput<ColumnType>;

#[derive(Debug)]
struct SltError(String);

impl std::fmt::Display for SltError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SltError {}

impl From<QueryError> for SltError {
    fn from(e: QueryError) -> SltError {
        SltError(format!("[{}] {e}", e.kind()))
    }
}

/// The marker of a `string_group.slt` query that `StringGroupAggregateExec` must leave to DataFusion.
const KEPT_BY_DATAFUSION: &str = "-- kept by DataFusion";

#[async_trait::async_trait]
impl AsyncDB for Db {
    type Error = SltError;
    type ColumnType = ColumnType;

    async fn run(&mut self, sql: &str) -> Result<Output, SltError> {
        match self {
            Db::Plain(engine) => Ok(output(&engine.sql(sql).await?)?),
            Db::OnAndOff { on, off } => run_on_and_off(on, off, sql).await,
        }
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "tailscope"
    }

    async fn sleep(dur: Duration) {
        tokio::time::sleep(dur).await;
    }
}

/// Runs `sql` with the operator and without: the answers (rows in any order, or the error) must be the same, and
/// the operator must have been used exactly when the statement is not marked [`KEPT_BY_DATAFUSION`].
async fn run_on_and_off(on: &Engine, off: &Engine, sql: &str) -> Result<Output, SltError> {
    let with = on.sql(sql).await.map_err(SltError::from).and_then(|o| output(&o));
    let without = off.sql(sql).await.map_err(SltError::from).and_then(|o| output(&o));
    let (a, b) = (comparable(&with), comparable(&without));
    if a != b {
        return Err(SltError(format!("StringGroupAggregateExec changes the answer:\n{}", answer_diff(&a, &b))));
    }
    if with.is_ok() {
        let expected = !sql.contains(KEPT_BY_DATAFUSION);
        if uses_string_group(on, sql).await? != expected {
            return Err(SltError(if expected {
                format!(
                    "StringGroupAggregateExec did not take this statement over (mark it `{KEPT_BY_DATAFUSION}` if it should not)"
                )
            } else {
                format!("StringGroupAggregateExec took over a statement marked `{KEPT_BY_DATAFUSION}`")
            }));
        }
        if uses_string_group(off, sql).await? {
            return Err(SltError("the engine built without StringGroupAggregateExec used it".into()));
        }
    }
    with
}

/// An answer in a form two engines' answers compare in: types and sorted rows (a statement without a result has
/// none), or the error.
type Comparable = Result<(Vec<ColumnType>, Vec<String>), String>;

fn comparable(answer: &Result<Output, SltError>) -> Comparable {
    match answer {
        Ok(DBOutput::Rows { types, rows }) => {
            let mut rows: Vec<String> = rows.iter().map(|r| r.join(" ")).collect();
            rows.sort();
            Ok((types.clone(), rows))
        }
        // A statement without a result (`output` answers nothing else).
        Ok(_) => Ok((Vec::new(), Vec::new())),
        Err(e) => Err(e.0.clone()),
    }
}

/// What the operator's answer `with` has (`+`) and lacks (`-`) next to DataFusion's `without`.
fn answer_diff(with: &Comparable, without: &Comparable) -> String {
    match (with, without) {
        (Ok((with_types, with)), Ok((without_types, without))) if with_types == without_types => {
            let lacks = without.iter().filter(|r| !with.contains(r)).map(|r| format!("- {r}"));
            let has = with.iter().filter(|r| !without.contains(r)).map(|r| format!("+ {r}"));
            lacks.chain(has).collect::<Vec<_>>().join("\n")
        }
        _ => format!("with it:    {with:?}\nwithout it: {without:?}"),
    }
}

async fn uses_string_group(engine: &Engine, sql: &str) -> Result<bool, SltError> {
    let plan = engine.sql(&format!("EXPLAIN {sql}")).await?;
    let mentions = |c: &ArrayRef| {
        c.as_string_opt::<i32>()
            .is_some_and(|lines| lines.iter().flatten().any(|l| l.contains("StringGroupAggregateExec")))
    };
    Ok(plan.batches.iter().any(|b| b.columns().iter().any(mentions)))
}

// --- Values as DataFusion's sqllogictest prints them. ---

/// A result column's type letter, as `datafusion-sqllogictest` writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ColumnType {
    Boolean,
    DateTime,
    Integer,
    Float,
    Decimal,
    Text,
    Timestamp,
    Another,
}

impl sqllogictest::ColumnType for ColumnType {
    fn from_char(value: char) -> Option<ColumnType> {
        Some(match value {
            'B' => ColumnType::Boolean,
            'D' => ColumnType::DateTime,
            'I' => ColumnType::Integer,
            'P' => ColumnType::Timestamp,
            'R' => ColumnType::Float,
            'T' => ColumnType::Text,
            'L' => ColumnType::Decimal,
            _ => ColumnType::Another,
        })
    }

    fn to_char(&self) -> char {
        match self {
            ColumnType::Boolean => 'B',
            ColumnType::DateTime => 'D',
            ColumnType::Integer => 'I',
            ColumnType::Timestamp => 'P',
            ColumnType::Float => 'R',
            ColumnType::Text => 'T',
            ColumnType::Decimal => 'L',
            ColumnType::Another => '?',
        }
    }
}

fn column_type(t: &DataType) -> ColumnType {
    match t {
        DataType::Boolean => ColumnType::Boolean,
        t if t.is_integer() => ColumnType::Integer,
        t if t.is_floating() => ColumnType::Float,
        DataType::Decimal32(..) | DataType::Decimal64(..) | DataType::Decimal128(..) | DataType::Decimal256(..) => {
            ColumnType::Decimal
        }
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => ColumnType::Text,
        DataType::Date32 | DataType::Date64 | DataType::Time32(_) | DataType::Time64(_) => ColumnType::DateTime,
        DataType::Timestamp(..) => ColumnType::Timestamp,
        _ => ColumnType::Another,
    }
}

fn output(out: &QueryOutput) -> Result<Output, SltError> {
    let types: Vec<ColumnType> = out.schema.fields().iter().map(|f| column_type(f.data_type())).collect();
    let mut rows = Vec::new();
    for batch in &out.batches {
        let cells = batch.columns().iter().map(column_cells).collect::<Result<Vec<_>, _>>()?;
        for row in 0..batch.num_rows() {
            rows.push(cells.iter().map(|c| c[row].clone()).collect());
        }
    }
    if rows.is_empty() && types.is_empty() {
        return Ok(DBOutput::StatementComplete(0));
    }
    Ok(DBOutput::Rows { types, rows })
}

fn column_cells(column: &ArrayRef) -> Result<Vec<String>, SltError> {
    let options = FormatOptions::default();
    let display = ArrayFormatter::try_new(column.as_ref(), &options)
        .map_err(|e| SltError(format!("cannot display a {} column: {e}", column.data_type())))?;
    Ok((0..column.len())
        .map(|i| {
            if column.is_null(i) {
                return "NULL".to_string();
            }
            match column.data_type() {
                DataType::Float64 => float(column.as_primitive::<Float64Type>().value(i)),
                DataType::Float32 | DataType::Float16 => {
                    float(display.value(i).to_string().parse().expect("a float displays as a float"))
                }
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => text(&display.value(i).to_string()),
                _ => display.value(i).to_string(),
            }
        })
        .collect())
}

/// `datafusion-sqllogictest`'s float: the shortest decimal that reads back as `v`, rounded half to even to 12
/// decimal places, without trailing zeros. NaN prints as `NaN` whatever its sign bit (which DataFusion prints, but
/// which differs between processors for the NaN of `inf - inf`).
fn float(v: f64) -> String {
    if v.is_nan() {
        return "NaN".to_string();
    }
    if v.is_infinite() {
        return if v > 0.0 { "Infinity" } else { "-Infinity" }.to_string();
    }
    // Rust prints the shortest round-trip decimal, never with an exponent.
    let shortest = v.abs().to_string();
    let (int, frac) = shortest.split_once('.').unwrap_or((&shortest, ""));
    let mut digits: Vec<u8> = int.bytes().chain(frac.bytes().chain(std::iter::repeat(b'0')).take(12)).collect();
    let rest = frac.get(12..).unwrap_or("");
    let last_odd = digits.last().is_some_and(|d| (d - b'0') % 2 == 1);
    let round_up = match rest.as_bytes().first() {
        Some(b'6'..=b'9') => true,
        Some(b'5') => rest[1..].bytes().any(|d| d != b'0') || last_odd,
        _ => false,
    };
    if round_up {
        let mut i = digits.len();
        loop {
            if i == 0 {
                digits.insert(0, b'1');
                break;
            }
            i -= 1;
            if digits[i] == b'9' {
                digits[i] = b'0';
            } else {
                digits[i] += 1;
                break;
            }
        }
    }
    let (int, frac) = digits.split_at(digits.len() - 12);
    let int = std::str::from_utf8(int).expect("digits");
    let frac = std::str::from_utf8(frac).expect("digits").trim_end_matches('0');
    let magnitude = if frac.is_empty() { int.to_string() } else { format!("{int}.{frac}") };
    if v.is_sign_negative() && magnitude.bytes().any(|d| d.is_ascii_digit() && d != b'0') {
        format!("-{magnitude}")
    } else {
        magnitude
    }
}

/// `datafusion-sqllogictest`'s text: `(empty)` for the empty string, trailing newlines dropped.
fn text(s: &str) -> String {
    if s.is_empty() { "(empty)".to_string() } else { s.trim_end_matches('\n').to_string() }
}

#[test]
fn values_print_as_datafusion_sqllogictest_prints_them() {
    assert_eq!(float(95.05000000000001), "95.05");
    assert_eq!(float(0.1 + 0.2), "0.3");
    assert_eq!(float(25.0), "25");
    assert_eq!(float(-0.0), "0");
    assert_eq!(float(1.0 / 3.0), "0.333333333333");
    assert_eq!(float(2.0 / 3.0), "0.666666666667");
    assert_eq!(float(-1.5), "-1.5");
    assert_eq!(float(1e20), "100000000000000000000");
    assert_eq!(float(1190476.1904761905), "1190476.1904761905");
    // The double nearest 18994.05 is 18994.04999999999927..., printed as 18994.05.
    assert_eq!(float(18994.05), "18994.05");
    assert_eq!(float(38361111.11111111), "38361111.11111111");
    assert_eq!(float(0.0000000000005), "0");
    assert_eq!(float(0.0000000000015), "0.000000000002");
    assert_eq!(float(0.0000000000016), "0.000000000002");
    assert_eq!(float(9.9999999999996), "10");
    assert_eq!(float(-0.0000000000001), "0");
    assert_eq!(float(f64::NAN), "NaN");
    assert_eq!(float(-f64::NAN), "NaN");
    assert_eq!(float(f64::NEG_INFINITY), "-Infinity");
    assert_eq!(text(""), "(empty)");
    assert_eq!(text("a\n"), "a");
}

// --- The dataset. ---

/// 2026-11-21T09:00:00Z.
const NINE: i64 = 1_795_251_600_000_000_000;
const SECOND: i64 = 1_000_000_000;
const MS: i64 = 1_000_000;

/// One span: the fixture's columns plus the cost, cache and agent columns the fixture leaves NULL.
#[derive(Debug, Clone, Default)]
struct Span {
    row: SpanRow,
    response_model: Option<&'static str>,
    cache_read_tokens: Option<i64>,
    cache_creation_tokens: Option<i64>,
    token_cost_usd: Option<f64>,
    egress_bytes: Option<i64>,
    egress_cost_usd: Option<f64>,
    price_source: Option<String>,
    hedge_id: Option<&'static str>,
    hedge_winner: Option<bool>,
    agent_name: Option<&'static str>,
}

/// A span of `trace` starting `start_s` seconds after 09:00, lasting `ms` milliseconds.
fn at(trace: u64, start_s: i64, ms: i64) -> SpanRow {
    SpanRow {
        trace_id: format!("{trace:032x}"),
        start_ns: NINE + start_s * SECOND,
        duration_ns: ms * MS,
        service_name: "agent".into(),
        ..Default::default()
    }
}

/// An inference call: `provider`, `region`, `operation`, `model`, priced at `cost` (token cost only).
struct Call {
    provider: Option<&'static str>,
    region: Option<&'static str>,
    operation: &'static str,
    model: &'static str,
    cost: Option<f64>,
    session: Option<&'static str>,
}

impl Call {
    fn span(&self, row: SpanRow, input: Option<i64>, output: Option<i64>) -> Span {
        Span {
            row: SpanRow {
                name: format!("{} {}", self.operation, self.model),
                cloud_region: self.region.map(Into::into),
                gen_ai_provider: self.provider.map(Into::into),
                gen_ai_operation: Some(self.operation.into()),
                request_model: Some(self.model.into()),
                input_tokens: input,
                output_tokens: output,
                session_id: self.session.map(Into::into),
                cost_usd: self.cost,
                ..row
            },
            token_cost_usd: self.cost,
            price_source: Some(match self.cost {
                Some(_) => format!("default:{}", self.model),
                None => "unknown".to_string(),
            }),
            ..Default::default()
        }
    }
}

/// The spans every `.slt` file reads; each file's header describes them. Costs are multiples of 2^-7, so sums
/// are exact in any order.
fn dataset() -> Vec<Span> {
    let mut spans = Vec::new();
    a_calls_and_tools(&mut spans);
    b_calls_and_others(&mut spans);
    c_and_d_calls(&mut spans);
    hedged_calls(&mut spans);
    local_call_and_agents(&mut spans);
    for (n, span) in spans.iter_mut().enumerate() {
        span.row.span_id = format!("{:016x}", n + 1);
    }
    spans
}

/// The A sessions: their calls and their tools.
fn a_calls_and_tools(spans: &mut Vec<Span>) {
    // A: 100 aws.bedrock chat calls in us-east-1, 09:00:30 + 30 s apart, lasting 1..=100 ms; every tenth fails.
    // Sessions sess-a0..sess-a3 of 25 calls each, traces of 5 calls. $0.25 each.
    let agents = [Some("planner"), Some("coder"), Some(""), None];
    for i in 1..=100i64 {
        let session = ["sess-a0", "sess-a1", "sess-a2", "sess-a3"][((i - 1) / 25) as usize];
        let call = Call {
            provider: Some("aws.bedrock"),
            region: Some("us-east-1"),
            operation: "chat",
            model: "claude-sonnet",
            cost: Some(0.25),
            session: Some(session),
        };
        let mut span = call.span(
            SpanRow { error: i % 10 == 0, ..at(0xa00 + (i as u64 - 1) / 5, 30 * i, i) },
            Some(1000),
            Some(100),
        );
        span.response_model = Some("claude-sonnet-20250929");
        span.cache_read_tokens = (i % 2 == 0).then_some(200);
        span.cache_creation_tokens = (i == 1).then_some(1000);
        span.agent_name = agents[(i % 4) as usize];
        spans.push(span);
    }
    // Tools of the A sessions: 40 execute_tool spans at 09:55:01..09:55:40 lasting 100 + t ms, ten per session,
    // `search` (odd t) or `fetch` (even t); the last one fails.
    for t in 1..=40i64 {
        let session = ["sess-a0", "sess-a1", "sess-a2", "sess-a3"][((t - 1) / 10) as usize];
        spans.push(Span {
            row: SpanRow {
                name: "execute_tool".into(),
                gen_ai_operation: Some("execute_tool".into()),
                tool_name: Some(if t % 2 == 1 { "search" } else { "fetch" }.into()),
                session_id: Some(session.into()),
                error: t == 40,
                ..at(0xa00 + ((t as u64 - 1) / 10) * 5, 3300 + t, 100 + t)
            },
            ..Default::default()
        });
    }
}

/// The B session, its MCP calls, and the health checks outside any session.
fn b_calls_and_others(spans: &mut Vec<Span>) {
    // B: 50 gcp.vertex_ai generate_content calls from europe-west4, 10:01 + 1 min apart, lasting 2, 4, ..., 100 ms.
    // Session sess-b, traces of 10 calls. $0.125 of tokens plus $0.0078125 of egress (4096 bytes) each.
    for j in 1..=50i64 {
        let call = Call {
            provider: Some("gcp.vertex_ai"),
            region: Some("europe-west4"),
            operation: "generate_content",
            model: "gemini-pro",
            cost: Some(0.125),
            session: Some("sess-b"),
        };
        let mut span = call.span(at(0xb00 + (j as u64 - 1) / 10, 3600 + 60 * j, 2 * j), Some(2000), Some(200));
        span.row.cost_usd = Some(0.125 + 0.0078125);
        span.egress_bytes = Some(4096);
        span.egress_cost_usd = Some(0.0078125);
        span.agent_name = (j % 2 == 0).then_some("planner");
        spans.push(span);
    }
    // Two MCP tool calls of sess-b without a gen_ai operation, only a tool name, at 10:55:01 and 10:55:02.
    for m in 1..=2i64 {
        spans.push(Span {
            row: SpanRow {
                name: "mcp calc".into(),
                tool_name: Some("calc".into()),
                session_id: Some("sess-b".into()),
                ..at(0xb00, 6900 + m, 5)
            },
            ..Default::default()
        });
    }
    // 20 health checks of another service, outside any session and any trace of the others, 10:30:01..10:30:20.
    for p in 1..=20i64 {
        spans.push(Span {
            row: SpanRow {
                name: "GET /health".into(),
                service_name: "gateway".into(),
                ..at(0xd00 + p as u64, 5400 + p, 1)
            },
            ..Default::default()
        });
    }
}

/// The C session: azure calls and the unpriced acme call.
fn c_and_d_calls(spans: &mut Vec<Span>) {
    // C: azure.ai.openai in us-east-1, session sess-c: 10 text_completion calls (11:01 + 1 min apart, 10, 20, ...,
    // 100 ms, the last fails, $0.5 each) and 5 embeddings (11:20:01.. lasting 7 ms, no output tokens, $0.0625).
    for k in 1..=10i64 {
        let call = Call {
            provider: Some("azure.ai.openai"),
            region: Some("us-east-1"),
            operation: "text_completion",
            model: "gpt-4o",
            cost: Some(0.5),
            session: Some("sess-c"),
        };
        spans.push(call.span(SpanRow { error: k == 10, ..at(0xc00, 7200 + 60 * k, 10 * k) }, Some(500), Some(50)));
    }
    for k in 1..=5i64 {
        let call = Call {
            provider: Some("azure.ai.openai"),
            region: Some("us-east-1"),
            operation: "embeddings",
            model: "text-embedding-3-small",
            cost: Some(0.0625),
            session: Some("sess-c"),
        };
        spans.push(call.span(at(0xc01, 8400 + k, 7), Some(300), None));
    }
    // D: one call to a model without a price (acme `mystery`, answered as `mystery-v2`), no region, 11:30, 42 ms.
    let call = Call {
        provider: Some("acme"),
        region: None,
        operation: "chat",
        model: "mystery",
        cost: None,
        session: Some("sess-c"),
    };
    let mut mystery = call.span(at(0xc02, 9000, 42), Some(50), Some(5));
    mystery.response_model = Some("mystery-v2");
    spans.push(mystery);
}

/// The H session: three hedged requests, two copies each.
fn hedged_calls(spans: &mut Vec<Span>) {
    // H: three hedged requests of session sess-h from us-west-2, 11:40, 11:41, 11:42, each sent to aws.bedrock
    // (claude-haiku, $0.25) and gcp.vertex_ai (gemini-flash, $0.125):
    // h1 aws wins (1000 ms), gcp ends 50 ms later; h2 gcp wins (2000 ms), aws (no winner flag) 200 ms later;
    // h3 aws wins (3000 ms), gcp 10 ms later.
    let hedges = [
        ("h1", 0, ("aws.bedrock", Some(true), 1000), ("gcp.vertex_ai", Some(false), 1050)),
        ("h2", 1, ("gcp.vertex_ai", Some(true), 2000), ("aws.bedrock", None, 2200)),
        ("h3", 2, ("aws.bedrock", Some(true), 3000), ("gcp.vertex_ai", Some(false), 3010)),
    ];
    for (hedge, n, first, second) in hedges {
        for (provider, winner, ms) in [first, second] {
            let (model, cost) =
                if provider == "aws.bedrock" { ("claude-haiku", 0.25) } else { ("gemini-flash", 0.125) };
            let call = Call {
                provider: Some(provider),
                region: Some("us-west-2"),
                operation: "chat",
                model,
                cost: Some(cost),
                session: Some("sess-h"),
            };
            let mut span = call.span(at(0xe01 + n as u64, 9600 + 60 * n, ms), Some(100), Some(10));
            span.hedge_id = Some(hedge);
            span.hedge_winner = winner;
            spans.push(span);
        }
    }
}

/// The call without a provider, and one agent span per session.
fn local_call_and_agents(spans: &mut Vec<Span>) {
    // One chat call to a local model: no provider, no session, no tokens, no price; 11:50, 5 ms.
    let local =
        Call { provider: None, region: None, operation: "chat", model: "llama-local", cost: None, session: None };
    let mut local = local.span(at(0xf00, 10_200, 5), None, None);
    local.price_source = None;
    spans.push(local);
    // One invoke_agent span per session, starting with its session's first span, 1 ms long.
    for (session, trace, start_s) in [
        ("sess-a0", 0xa00, 30),
        ("sess-a1", 0xa05, 780),
        ("sess-a2", 0xa0a, 1530),
        ("sess-a3", 0xa0f, 2280),
        ("sess-b", 0xb00, 3660),
        ("sess-c", 0xc00, 7260),
        ("sess-h", 0xe01, 9600),
    ] {
        spans.push(Span {
            row: SpanRow {
                name: format!("invoke_agent {session}"),
                gen_ai_operation: Some("invoke_agent".into()),
                session_id: Some(session.into()),
                ..at(trace, start_s, 1)
            },
            agent_name: Some("orchestrator"),
            ..Default::default()
        });
    }
}

/// The dataset in the collector's layout under `dir`: hour 09 and hour 10 as committed Parquet files, hour 11 as
/// rows acknowledged but not flushed yet.
fn load_dataset(dir: &Path) -> Catalog {
    let catalog = Catalog::new(dir);
    let spans = dataset();
    let hour = |h: i64| -> Vec<Span> {
        spans.iter().filter(|s| (s.row.start_ns - NINE) / (3600 * SECOND) == h).cloned().collect()
    };
    let files = vec![
        (Signal::Spans, write_parquet(dir, Signal::Spans, &batch(&hour(0)), 1).unwrap()),
        (Signal::Spans, write_parquet(dir, Signal::Spans, &batch(&hour(1)), 2).unwrap()),
    ];
    catalog.commit_flush(files, 2);
    catalog.add_batch(Signal::Spans, 3, tailscope_core::projects::Project::default(), batch(&hour(2)));
    assert_eq!(hour(0).len() + hour(1).len() + hour(2).len(), spans.len(), "every span is in 09, 10 or 11");
    catalog
}

/// [`spans_batch`] with the columns it leaves NULL filled from the spans.
fn batch(spans: &[Span]) -> RecordBatch {
    let rows: Vec<SpanRow> = spans.iter().map(|s| s.row.clone()).collect();
    let base = spans_batch(&rows);
    let texts = |f: fn(&Span) -> Option<&str>| -> ArrayRef { Arc::new(spans.iter().map(f).collect::<StringArray>()) };
    let ints = |f: fn(&Span) -> Option<i64>| -> ArrayRef { Arc::new(spans.iter().map(f).collect::<Int64Array>()) };
    let floats = |f: fn(&Span) -> Option<f64>| -> ArrayRef { Arc::new(spans.iter().map(f).collect::<Float64Array>()) };
    let filled: Vec<(&str, ArrayRef)> = vec![
        ("response_model", texts(|s| s.response_model)),
        ("cache_read_tokens", ints(|s| s.cache_read_tokens)),
        ("cache_creation_tokens", ints(|s| s.cache_creation_tokens)),
        ("token_cost_usd", floats(|s| s.token_cost_usd)),
        ("egress_bytes", ints(|s| s.egress_bytes)),
        ("egress_cost_usd", floats(|s| s.egress_cost_usd)),
        ("price_source", texts(|s| s.price_source.as_deref())),
        ("hedge_id", texts(|s| s.hedge_id)),
        ("hedge_winner", Arc::new(spans.iter().map(|s| s.hedge_winner).collect::<BooleanArray>())),
        ("agent_name", texts(|s| s.agent_name)),
        // Two releases of service `agent` for `release_compare`: sess-a0 and sess-a1 on 1.0, sess-a2 and sess-a3
        // (the slower half of the A calls, and the failed tool) on 1.1.
        (
            "service_version",
            texts(|s| match s.row.session_id.as_deref() {
                Some("sess-a0" | "sess-a1") => Some("1.0"),
                Some("sess-a2" | "sess-a3") => Some("1.1"),
                _ => None,
            }),
        ),
    ];
    let schema = base.schema();
    let columns = schema
        .fields()
        .iter()
        .zip(base.columns())
        .map(|(field, column)| {
            filled.iter().find(|(name, _)| name == field.name()).map_or_else(|| column.clone(), |(_, c)| c.clone())
        })
        .collect();
    RecordBatch::try_new(schema, columns).expect("the filled columns have the stored types")
}
