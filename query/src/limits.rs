//! Bounds on what one SQL statement may ask of the process, checked before and while it runs:
//!
//! - the statement's size and nesting depth ([`check_statement`], [`check_plan_depth`]), so that no recursion over
//!   the statement (parsing, planning, optimisation, evaluation, dropping) goes deeper than a known bound;
//! - planning on a thread of its own with a large stack ([`on_planner_thread`]), so that the bounded recursion of
//!   DataFusion's planner and optimiser (several frames per level) never reaches a stack's end;
//! - the output of the functions whose result can be far larger than their arguments (`repeat`, `lpad`, `range`,
//!   ...), checked from the arguments before they allocate ([`bounded_functions`]);
//! - the output of every function that returns variable-width values, reserved in the process-wide memory budget
//!   for as long as it lives (see [`crate::output_memory`]).
//!
//! DataFusion's memory pool only sees operators that reserve (sorts, aggregations, joins); expression evaluation
//! does not reserve, which is why the functions carry their own bound.

use std::future::Future;
use std::hash::Hash;
use std::ops::ControlFlow;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::datatypes::{DataType, FieldRef, Int64Type, IntervalMonthDayNanoType};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::TreeNode;
use datafusion::common::{ExprSchema, ScalarValue};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::interval_arithmetic::Interval;
use datafusion::logical_expr::preimage::PreimageResult;
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::sort_properties::{ExprProperties, SortProperties};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, Expr, ExpressionPlacement, LogicalPlan, ReturnFieldArgs, ScalarFunctionArgs,
    ScalarUDF, ScalarUDFImpl, Signature, StructFieldMapping, Volatility,
};
use datafusion::sql::sqlparser::ast::{Expr as SqlExpr, Query, Select, Statement, Visit, Visitor};
use tailscope_core::memory::MemoryBudget;

use crate::output_memory;

/// The stack of the thread that parses and plans one statement. Only the pages a statement touches are committed;
/// the size is the headroom that DataFusion's recursive passes (several frames per nesting level, larger in debug
/// builds) have for a statement at the depth limit.
pub const PLANNER_STACK_BYTES: usize = 256 * 1024 * 1024;

/// A statement asked for more than a configured limit allows. Carried through DataFusion as an external error so
/// that [`crate::QueryError`] can tell it from a bug.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LimitExceeded(pub String);

impl LimitExceeded {
    pub(crate) fn into_datafusion(self) -> DataFusionError {
        DataFusionError::External(Box::new(self))
    }
}

/// Finds a [`LimitExceeded`] anywhere in an error's chain of sources.
pub fn find_limit(e: &DataFusionError) -> Option<&LimitExceeded> {
    let mut current: &(dyn std::error::Error + 'static) = e;
    loop {
        if let Some(limit) = current.downcast_ref::<LimitExceeded>() {
            return Some(limit);
        }
        current = current.source()?;
    }
}

/// Runs `work` to completion on a new thread with a [`PLANNER_STACK_BYTES`] stack, inside the current tokio
/// runtime (so DataFusion can spawn and use timers). A panic in `work` comes back as an error; the caller may stop
/// waiting (the thread then finishes on its own, its work bounded by the limits here).
pub fn on_planner_thread<T, F>(work: F) -> Result<tokio::sync::oneshot::Receiver<T>, std::io::Error>
where
    T: Send + 'static,
    F: Future<Output = T> + Send + 'static,
{
    let handle = tokio::runtime::Handle::current();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new().name("tailscope-sql-planner".into()).stack_size(PLANNER_STACK_BYTES).spawn(
        move || {
            let _ = tx.send(handle.block_on(work));
        },
    )?;
    Ok(rx)
}

/// Checks the size of a statement before it is parsed.
pub fn check_sql_size(sql: &str, max_bytes: usize) -> Result<(), LimitExceeded> {
    if sql.len() > max_bytes {
        return Err(LimitExceeded(format!(
            "the statement is {} bytes, more than query.max_sql_bytes ({max_bytes}): shorten it (e.g. a long IN list \
             belongs in a join or a narrower predicate)",
            sql.len()
        )));
    }
    Ok(())
}

/// Checks how deeply the expressions and subqueries of a parsed statement nest. A chain of `a OR b OR c ...` or
/// `1 + 1 + 1 ...` is a nesting of binary operators as deep as the chain is long, which is what every later
/// recursive pass walks. The visit stops at the limit, so it never recurses deeper than `max_depth` expressions.
pub fn check_statement(statement: &Statement, max_depth: usize) -> Result<(), LimitExceeded> {
    struct Depth {
        current: usize,
        /// SELECT blocks and queries (subqueries, CTEs) so far: a `UNION` or `WITH` chain of them is flat in the
        /// text but plans as deep as it is long (and takes quadratic time to plan), so they count against the limit
        /// together.
        blocks: usize,
        max: usize,
    }
    impl Depth {
        fn enter(&mut self) -> ControlFlow<()> {
            self.current += 1;
            if self.current > self.max { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
        }
        fn block(&mut self) -> ControlFlow<()> {
            self.blocks += 1;
            if self.blocks > self.max { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
        }
    }
    impl Visitor for Depth {
        type Break = ();
        fn pre_visit_expr(&mut self, _: &SqlExpr) -> ControlFlow<()> {
            self.enter()
        }
        fn post_visit_expr(&mut self, _: &SqlExpr) -> ControlFlow<()> {
            self.current -= 1;
            ControlFlow::Continue(())
        }
        fn pre_visit_query(&mut self, _: &Query) -> ControlFlow<()> {
            self.block()?;
            self.enter()
        }
        fn pre_visit_select(&mut self, _: &Select) -> ControlFlow<()> {
            self.block()
        }
        fn post_visit_query(&mut self, _: &Query) -> ControlFlow<()> {
            self.current -= 1;
            ControlFlow::Continue(())
        }
    }
    let mut depth = Depth { current: 0, blocks: 0, max: max_depth };
    match statement.visit(&mut depth) {
        ControlFlow::Continue(()) => Ok(()),
        ControlFlow::Break(()) => Err(too_deep(max_depth)),
    }
}

fn too_deep(max_depth: usize) -> LimitExceeded {
    LimitExceeded(format!(
        "the statement nests deeper than query.max_expr_depth ({max_depth}) expressions, subqueries or plan steps, \
         or chains more SELECTs than that (UNION, WITH): a long chain of OR/AND/+ is as deep as it is long; use \
         IN (...) for a list of values, or split the query"
    ))
}

/// Checks the depth of a logical plan (plan nodes, set operations, CTE chains, views) and of every expression in it,
/// subqueries included, stopping at the limit so the check itself recurses at most `max_depth` deep.
pub fn check_plan_depth(plan: &LogicalPlan, max_depth: usize) -> Result<(), LimitExceeded> {
    fn plan_depth(plan: &LogicalPlan, depth: usize, max: usize) -> bool {
        if depth > max {
            return false;
        }
        let mut ok = true;
        let _ = plan.apply_expressions(|e| {
            ok = expr_depth(e, depth, max);
            Ok(if ok {
                datafusion::common::tree_node::TreeNodeRecursion::Continue
            } else {
                datafusion::common::tree_node::TreeNodeRecursion::Stop
            })
        });
        ok && plan.inputs().iter().all(|input| plan_depth(input, depth + 1, max))
    }
    // `depth` counts plan levels and expression levels together: both are recursed through by the same passes.
    fn expr_depth(expr: &Expr, depth: usize, max: usize) -> bool {
        if depth > max {
            return false;
        }
        let subquery = match expr {
            Expr::ScalarSubquery(s) => Some(&s.subquery),
            Expr::Exists(e) => Some(&e.subquery.subquery),
            Expr::InSubquery(i) => Some(&i.subquery.subquery),
            _ => None,
        };
        if let Some(plan) = subquery
            && !plan_depth(plan, depth + 1, max)
        {
            return false;
        }
        let mut ok = true;
        let _ = expr.apply_children(|child| {
            ok = expr_depth(child, depth + 1, max);
            Ok(if ok {
                datafusion::common::tree_node::TreeNodeRecursion::Continue
            } else {
                datafusion::common::tree_node::TreeNodeRecursion::Stop
            })
        });
        ok
    }
    if plan_depth(plan, 1, max_depth) { Ok(()) } else { Err(too_deep(max_depth)) }
}

/// The functions whose output can be far larger than their arguments, and how to bound it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Growth {
    /// `repeat(s, n)`: `len(s) * n`.
    Repeat,
    /// `lpad(s, n [, fill])`, `rpad`: `n` characters of `s` and `fill`.
    Pad,
    /// `replace(s, from, to)`: every occurrence of `from` (every position when it is empty) becomes `to`.
    Replace,
    /// `regexp_replace(s, pattern, replacement [, flags])`: at most one replacement per position; the replacement
    /// may repeat a capture group.
    RegexpReplace,
    /// `array_repeat(e, n)`: `n` copies of `e`.
    ArrayRepeat,
    /// `array_resize(a, n [, v])`: `n` elements.
    ArrayResize,
    /// `range(...)`, `generate_series(...)`: `(stop - start) / step` elements.
    Range,
    /// Every other function: about as large as its arguments (concatenation, case mapping, trimming, ...).
    Inputs,
}

const BOUNDED: [(&str, Growth); 9] = [
    ("repeat", Growth::Repeat),
    ("lpad", Growth::Pad),
    ("rpad", Growth::Pad),
    ("replace", Growth::Replace),
    ("regexp_replace", Growth::RegexpReplace),
    ("array_repeat", Growth::ArrayRepeat),
    ("array_resize", Growth::ArrayResize),
    ("range", Growth::Range),
    ("generate_series", Growth::Range),
];

/// Every scalar function of the session, bounded: the growing ones ([`BOUNDED`]) by `max_output_bytes` per call,
/// checked from their arguments before they run, and every one that returns variable-width values by the process
/// `budget`, which holds its output while it lives. `functions` are the session's own (so names, aliases,
/// signatures and simplifications stay DataFusion's), each listed once.
pub fn bounded_functions(
    functions: impl IntoIterator<Item = Arc<ScalarUDF>>,
    budget: &MemoryBudget,
    max_output_bytes: usize,
) -> Vec<ScalarUDF> {
    functions
        .into_iter()
        .map(|inner| {
            let growth = BOUNDED.iter().find(|(name, _)| *name == inner.name()).map_or(Growth::Inputs, |(_, g)| *g);
            let mut signature = inner.signature().clone();
            if growth != Growth::Inputs {
                // Volatile, so the optimiser does not fold a call over literals into a literal: a folded 100 MB
                // string would be copied by every pass and printed into the column's name. Evaluated per batch.
                signature.volatility = Volatility::Volatile;
            }
            ScalarUDF::new_from_impl(BoundedUdf { inner, signature, growth, max_output_bytes, budget: budget.clone() })
        })
        .collect()
}

/// A scalar function whose output is bounded: checked against `max_output_bytes` (the growing functions), estimated
/// from the arguments before the function runs (so nothing large is allocated) and measured after it ran, and held
/// in the process `budget` while it lives.
#[derive(Debug)]
struct BoundedUdf {
    inner: Arc<ScalarUDF>,
    signature: Signature,
    growth: Growth,
    max_output_bytes: usize,
    budget: MemoryBudget,
}

// The budget is the process's one; two wrappers of the same function with the same bounds are the same function.
impl PartialEq for BoundedUdf {
    fn eq(&self, other: &Self) -> bool {
        self.inner == other.inner
            && self.signature == other.signature
            && self.growth == other.growth
            && self.max_output_bytes == other.max_output_bytes
    }
}

impl Eq for BoundedUdf {}

impl Hash for BoundedUdf {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.inner.hash(state);
        self.signature.hash(state);
        self.growth.hash(state);
        self.max_output_bytes.hash(state);
    }
}

impl BoundedUdf {
    fn refuse(&self, bytes: u64, rows: usize) -> DataFusionError {
        LimitExceeded(format!(
            "{}() would produce about {bytes} bytes for {rows} row{}, more than query.max_function_output_mb \
             ({} MiB): ask for less (a smaller count or range), or filter the rows first",
            self.inner.name(),
            if rows == 1 { "" } else { "s" },
            self.max_output_bytes / (1024 * 1024)
        ))
        .into_datafusion()
    }
}

/// Reads argument `i` of a call at row `row`, whether it is a scalar or an array.
struct Args<'a> {
    args: &'a [ColumnarValue],
}

impl Args<'_> {
    fn int(&self, i: usize, row: usize) -> Option<i64> {
        match self.args.get(i)? {
            ColumnarValue::Scalar(s) => match s {
                ScalarValue::Int64(v) => *v,
                ScalarValue::Int32(v) => v.map(i64::from),
                ScalarValue::Int16(v) => v.map(i64::from),
                ScalarValue::Int8(v) => v.map(i64::from),
                ScalarValue::UInt32(v) => v.map(i64::from),
                ScalarValue::UInt64(v) => v.map(|v| i64::try_from(v).unwrap_or(i64::MAX)),
                _ => None,
            },
            ColumnarValue::Array(a) => {
                let a = a.as_primitive_opt::<Int64Type>()?;
                (row < a.len() && a.is_valid(row)).then(|| a.value(row))
            }
        }
    }

    /// Byte length of a string (or binary) argument.
    fn len(&self, i: usize, row: usize) -> u64 {
        match self.args.get(i) {
            Some(ColumnarValue::Scalar(s)) => match s {
                ScalarValue::Utf8(Some(v)) | ScalarValue::LargeUtf8(Some(v)) | ScalarValue::Utf8View(Some(v)) => {
                    v.len() as u64
                }
                ScalarValue::Binary(Some(v)) | ScalarValue::LargeBinary(Some(v)) | ScalarValue::BinaryView(Some(v)) => {
                    v.len() as u64
                }
                _ => 0,
            },
            Some(ColumnarValue::Array(a)) => array_value_len(a, row),
            None => 0,
        }
    }

    /// The widest character of a string argument, in bytes (4 when unknown).
    fn char_width(&self, i: usize) -> u64 {
        match self.args.get(i) {
            None => 1,
            Some(ColumnarValue::Scalar(
                ScalarValue::Utf8(Some(v)) | ScalarValue::LargeUtf8(Some(v)) | ScalarValue::Utf8View(Some(v)),
            )) => v.chars().map(|c| c.len_utf8() as u64).max().unwrap_or(1),
            Some(_) => 4,
        }
    }

    /// Bytes of one element of argument `i` (for array functions); at least 8.
    fn element_bytes(&self, i: usize, rows: usize) -> u64 {
        let bytes = match self.args.get(i) {
            Some(ColumnarValue::Scalar(s)) => s.size() as u64,
            Some(ColumnarValue::Array(a)) => (a.get_array_memory_size() / rows.max(1)) as u64,
            None => 0,
        };
        bytes.max(8)
    }

    /// The number of elements `range`/`generate_series` would produce for `row`, when the argument types are known.
    fn range_len(&self, row: usize) -> Option<u64> {
        let first = self.args.first()?;
        match first.data_type() {
            DataType::Int64 | DataType::Int32 | DataType::Null => {
                let (start, stop, step) = match self.args.len() {
                    1 => (0, self.int(0, row)?, 1),
                    2 => (self.int(0, row)?, self.int(1, row)?, 1),
                    _ => (self.int(0, row)?, self.int(1, row)?, self.int(2, row)?),
                };
                if step == 0 {
                    return Some(0);
                }
                let span = (i128::from(stop) - i128::from(start)).unsigned_abs();
                Some((span / i128::from(step).unsigned_abs()).min(u128::from(u64::MAX)) as u64)
            }
            DataType::Date32 | DataType::Date64 | DataType::Timestamp(..) => {
                let start = self.nanos(0, row)?;
                let stop = self.nanos(1, row)?;
                let step = self.interval_nanos(2, row)?;
                if step == 0 {
                    return Some(0);
                }
                Some(((stop - start).unsigned_abs() / step).min(u128::from(u64::MAX)) as u64)
            }
            _ => None,
        }
    }

    /// A date or timestamp argument as nanoseconds since the epoch.
    fn nanos(&self, i: usize, row: usize) -> Option<i128> {
        let scalar = match self.args.get(i)? {
            ColumnarValue::Scalar(s) => s.clone(),
            ColumnarValue::Array(a) => ScalarValue::try_from_array(a, row).ok()?,
        };
        const DAY: i128 = 86_400_000_000_000;
        Some(match scalar {
            ScalarValue::Date32(Some(d)) => i128::from(d) * DAY,
            ScalarValue::Date64(Some(ms)) => i128::from(ms) * 1_000_000,
            ScalarValue::TimestampSecond(Some(v), _) => i128::from(v) * 1_000_000_000,
            ScalarValue::TimestampMillisecond(Some(v), _) => i128::from(v) * 1_000_000,
            ScalarValue::TimestampMicrosecond(Some(v), _) => i128::from(v) * 1_000,
            ScalarValue::TimestampNanosecond(Some(v), _) => i128::from(v),
            _ => return None,
        })
    }

    /// The shortest span an interval step can cover, in nanoseconds (a month counted as 28 days).
    fn interval_nanos(&self, i: usize, row: usize) -> Option<u128> {
        let value = match self.args.get(i)? {
            ColumnarValue::Scalar(ScalarValue::IntervalMonthDayNano(Some(v))) => *v,
            ColumnarValue::Array(a) => {
                let a = a.as_primitive_opt::<IntervalMonthDayNanoType>()?;
                (row < a.len() && a.is_valid(row)).then(|| a.value(row))?
            }
            _ => return None,
        };
        const DAY: u128 = 86_400_000_000_000;
        Some(
            u128::from(value.months.unsigned_abs()) * 28 * DAY
                + u128::from(value.days.unsigned_abs()) * DAY
                + u128::from(value.nanoseconds.unsigned_abs()),
        )
    }
}

fn array_value_len(a: &ArrayRef, row: usize) -> u64 {
    if row >= a.len() || a.is_null(row) {
        return 0;
    }
    match a.data_type() {
        DataType::Utf8 => a.as_string::<i32>().value(row).len() as u64,
        DataType::LargeUtf8 => a.as_string::<i64>().value(row).len() as u64,
        DataType::Utf8View => u64::from(a.as_string_view().views()[row] as u32),
        DataType::Binary => a.as_binary::<i32>().value(row).len() as u64,
        DataType::LargeBinary => a.as_binary::<i64>().value(row).len() as u64,
        DataType::BinaryView => u64::from(a.as_binary_view().views()[row] as u32),
        _ => 0,
    }
}

impl BoundedUdf {
    /// An upper bound of the output's bytes for one row.
    fn row_bytes(&self, args: &Args<'_>, row: usize, rows: usize) -> u64 {
        let count = |i: usize| args.int(i, row).unwrap_or(0).max(0) as u64;
        match self.growth {
            Growth::Repeat => args.len(0, row).saturating_mul(count(1)),
            Growth::Pad => args.len(0, row).saturating_add(count(1).saturating_mul(args.char_width(2))),
            Growth::Replace => {
                let (s, from, to) = (args.len(0, row), args.len(1, row), args.len(2, row));
                if to <= from { s } else { s.saturating_add((s / from.max(1) + 1).saturating_mul(to)) }
            }
            Growth::RegexpReplace => {
                let (s, to) = (args.len(0, row), args.len(2, row));
                s.saturating_add((s + 1).saturating_mul(to))
            }
            Growth::ArrayRepeat => count(1).saturating_mul(args.element_bytes(0, rows)),
            Growth::ArrayResize => count(1).saturating_mul(8),
            Growth::Range => args.range_len(row).unwrap_or(0).saturating_mul(8),
            // Estimated for the whole call at once (see `output_memory::arguments_bytes`).
            Growth::Inputs => 0,
        }
    }

    /// The estimated output of a growing function, refused past `max_output_bytes`.
    fn check_arguments(&self, args: &ScalarFunctionArgs) -> Result<u64> {
        let any_array = args.args.iter().any(|a| matches!(a, ColumnarValue::Array(_)));
        let rows = if any_array { args.number_rows } else { 1 };
        let reader = Args { args: &args.args };
        let limit = self.max_output_bytes as u64;
        let mut total: u64 = 0;
        for row in 0..rows {
            total = total.saturating_add(self.row_bytes(&reader, row, rows));
            if total > limit {
                return Err(self.refuse(total, rows));
            }
        }
        Ok(total)
    }
}

fn output_bytes(value: &ColumnarValue) -> usize {
    match value {
        ColumnarValue::Array(a) => a.get_buffer_memory_size(),
        ColumnarValue::Scalar(s) => s.size(),
    }
}

#[warn(clippy::missing_trait_methods)]
impl ScalarUDFImpl for BoundedUdf {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn display_name(&self, args: &[Expr]) -> Result<String> {
        #[expect(deprecated)]
        self.inner.inner().display_name(args)
    }

    fn schema_name(&self, args: &[Expr]) -> Result<String> {
        self.inner.inner().schema_name(args)
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.inner().return_type(arg_types)
    }

    fn with_updated_config(&self, _config: &ConfigOptions) -> Option<ScalarUDF> {
        None
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.inner.inner().return_field_from_args(args)
    }

    fn is_nullable(&self, args: &[Expr], schema: &dyn ExprSchema) -> bool {
        #[expect(deprecated)]
        self.inner.inner().is_nullable(args, schema)
    }

    fn is_strict(&self) -> bool {
        self.inner.inner().is_strict()
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let estimate = match self.growth {
            // A fixed-width result is as long as the batch: nothing to bound beyond what the batch holds.
            Growth::Inputs if !output_memory::variable_width(args.return_field.data_type()) => {
                return self.inner.inner().invoke_with_args(args);
            }
            Growth::Inputs => output_memory::arguments_bytes(&args),
            _ => self.check_arguments(&args)?,
        };
        let reservation = output_memory::reserve_output(&self.budget, self.inner.name(), estimate)?;
        let rows = args.number_rows;
        let output = self.inner.inner().invoke_with_args(args)?;
        let bytes = output_bytes(&output);
        if self.growth != Growth::Inputs && bytes > self.max_output_bytes {
            return Err(self.refuse(bytes as u64, 1));
        }
        output_memory::hold(output, reservation, rows, self.inner.name())
    }

    fn simplify(&self, args: Vec<Expr>, info: &SimplifyContext) -> Result<ExprSimplifyResult> {
        self.inner.inner().simplify(args, info)
    }

    fn preimage(&self, args: &[Expr], lit_expr: &Expr, info: &SimplifyContext) -> Result<PreimageResult> {
        self.inner.inner().preimage(args, lit_expr, info)
    }

    fn short_circuits(&self) -> bool {
        self.inner.inner().short_circuits()
    }

    fn conditional_arguments<'a>(&self, args: &'a [Expr]) -> Option<(Vec<&'a Expr>, Vec<&'a Expr>)> {
        self.inner.inner().conditional_arguments(args)
    }

    fn evaluate_bounds(&self, input: &[&Interval]) -> Result<Interval> {
        self.inner.inner().evaluate_bounds(input)
    }

    fn propagate_constraints(&self, interval: &Interval, inputs: &[&Interval]) -> Result<Option<Vec<Interval>>> {
        self.inner.inner().propagate_constraints(interval, inputs)
    }

    fn output_ordering(&self, inputs: &[ExprProperties]) -> Result<SortProperties> {
        self.inner.inner().output_ordering(inputs)
    }

    fn preserves_lex_ordering(&self, inputs: &[ExprProperties]) -> Result<bool> {
        self.inner.inner().preserves_lex_ordering(inputs)
    }

    fn strictly_order_preserving(&self, inputs: &[ExprProperties]) -> Result<bool> {
        self.inner.inner().strictly_order_preserving(inputs)
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.inner().coerce_types(arg_types)
    }

    fn struct_field_mapping(&self, literal_args: &[Option<ScalarValue>]) -> Option<StructFieldMapping> {
        self.inner.inner().struct_field_mapping(literal_args)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.inner().documentation()
    }

    fn placement(&self, args: &[ExpressionPlacement]) -> ExpressionPlacement {
        self.inner.inner().placement(args)
    }
}
