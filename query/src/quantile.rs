//! `quantile_exact(x, q)`: the exact quantile of a group, with numpy's default ("linear") interpolation.
//!
//! Tail latency is the question tailscope exists to answer, so the default percentile must be exact: Tempo rounds
//! to powers of two, the spanmetrics connector to fixed buckets, ClickHouse's `quantile` samples 8192 values.
//! An exact quantile needs every value of the group in memory; the work is then a selection
//! (`select_nth_unstable`, O(n)) instead of a sort (O(n log n)), which is what makes it cheaper than DataFusion's
//! stock `percentile_cont`. `approx_percentile_cont` (t-digest) stays available for scans too big to hold.
//!
//! Interpolation matches `numpy.quantile(values, q)` (method `linear`) bit for bit: with `n` values sorted
//! ascending, `h = (n - 1) * q`, `lo = floor(h)`, `g = h - lo`, and the result is numpy's `_lerp(v[lo], v[lo+1], g)`
//! (`a + (b - a) * g`, or `b - (b - a) * (1 - g)` when `g >= 0.5`). NULLs are ignored; a group with no values gives
//! NULL. NaN sorts above +infinity (IEEE total order).
//!
//! The intermediate state between partial and final aggregation is one `LargeBinary` per group holding the group's
//! values as raw `f64`s. A `List<Float64>` would say the same, but repartitioning (`take`) and coalescing
//! (`concat`) a list walk it value by value, while bytes move with one `memcpy` per group: with a few large groups
//! (p99 by provider over millions of spans) that was a third of the query.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float64Array, Float64Builder, LargeBinaryArray, RecordBatch, StructArray,
};
use datafusion::arrow::buffer::{MutableBuffer, OffsetBuffer, ScalarBuffer};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Fields, Float64Type, Schema};
use datafusion::common::tree_node::Transformed;
use datafusion::common::{Column, Result, ScalarValue, plan_err};
use datafusion::functions::core::expr_fn::get_field;
use datafusion::logical_expr::expr::AggregateFunction;
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::utils::format_state_name;
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, ColumnarValue, EmitTo, GroupsAccumulator, Signature, Volatility,
};
use datafusion::logical_expr::{Aggregate, Expr, LogicalPlan, Projection};
use datafusion::optimizer::{ApplyOrder, OptimizerConfig, OptimizerRule};

/// The SQL name of the exact quantile aggregate.
pub const QUANTILE_EXACT: &str = "quantile_exact";

/// The `quantile_exact` aggregate, ready to register (also callable as `quantile_cont`, DuckDB's name).
pub fn quantile_exact_udaf() -> AggregateUDF {
    AggregateUDF::from(QuantileExact::new())
}

/// The quantile `q` (0 ≤ q ≤ 1) of `values` with numpy's linear interpolation. Reorders `values`.
///
/// Public so that tests and benchmarks can check SQL results against the same definition.
pub fn quantile_linear(values: &mut [f64], q: f64) -> Option<f64> {
    let n = values.len();
    if n == 0 {
        return None;
    }
    let h = (n - 1) as f64 * q;
    let lo = (h.floor() as usize).min(n - 1);
    let g = h - lo as f64;
    let (_, lo_value, upper) = values.select_nth_unstable_by(lo, f64::total_cmp);
    let a = *lo_value;
    if g == 0.0 || upper.is_empty() {
        return Some(a);
    }
    // The next order statistic is the smallest value above the selected one.
    let b = upper.iter().copied().min_by(f64::total_cmp).unwrap_or(a);
    Some(lerp(a, b, g))
}

/// The partial state of every exact-quantile aggregate: the group's values as raw f64 bytes.
fn values_state_field(name: &str) -> Vec<FieldRef> {
    vec![Arc::new(Field::new(format_state_name(name, "values"), DataType::LargeBinary, true))]
}

/// numpy's `_lerp`: symmetric so that `g` near 1 lands exactly on `b`.
fn lerp(a: f64, b: f64, g: f64) -> f64 {
    let diff = b - a;
    if g >= 0.5 { b - diff * (1.0 - g) } else { a + diff * g }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct QuantileExact {
    signature: Signature,
    aliases: Vec<String>,
}

impl QuantileExact {
    fn new() -> Self {
        QuantileExact {
            signature: Signature::user_defined(Volatility::Immutable),
            aliases: vec!["quantile_cont".to_string()],
        }
    }
}

/// Reads the constant quantile argument `index` and checks its range.
fn quantile_arg(args: &AccumulatorArgs, index: usize) -> Result<f64> {
    let Some(expr) = args.exprs.get(index) else {
        return plan_err!("{QUANTILE_EXACT}(value, q) needs two arguments");
    };
    let empty = RecordBatch::new_empty(Arc::new(Schema::empty()));
    let q = match expr.evaluate(&empty) {
        Ok(ColumnarValue::Scalar(ScalarValue::Float64(Some(q)))) => q,
        _ => {
            return plan_err!("{QUANTILE_EXACT}(value, q): q must be a constant number between 0 and 1, e.g. 0.99");
        }
    };
    if !(0.0..=1.0).contains(&q) {
        return plan_err!("{QUANTILE_EXACT}(value, q): q must be between 0 and 1, got {q}");
    }
    Ok(q)
}

impl AggregateUDFImpl for QuantileExact {
    fn name(&self) -> &str {
        QUANTILE_EXACT
    }

    fn aliases(&self) -> &[String] {
        &self.aliases
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        let [value, q] = arg_types else {
            return plan_err!("{QUANTILE_EXACT}(value, q) takes 2 arguments, got {}", arg_types.len());
        };
        let numeric = |t: &DataType| t.is_numeric() || t.is_null();
        if !numeric(value) {
            return plan_err!("{QUANTILE_EXACT}(value, q): value must be numeric, got {value}");
        }
        if !numeric(q) {
            return plan_err!("{QUANTILE_EXACT}(value, q): q must be a number between 0 and 1, got {q}");
        }
        Ok(vec![DataType::Float64, DataType::Float64])
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(values_state_field(args.name))
    }

    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        if args.is_distinct {
            return plan_err!("{QUANTILE_EXACT}(DISTINCT ...) is not supported");
        }
        Ok(Box::new(QuantileAccumulator { output: Output::One(quantile_arg(&args, 1)?), values: Vec::new() }))
    }

    fn groups_accumulator_supported(&self, args: AccumulatorArgs) -> bool {
        !args.is_distinct
    }

    fn create_groups_accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(QuantileGroups::new(Output::One(quantile_arg(&args, 1)?))))
    }
}

/// `quantile_exact` several times over the same values: `(value, q1, q2, ...)` gives a struct `{q0, q1, ...}`.
///
/// Not callable from SQL: [`ShareQuantiles`] puts it in place of `quantile_exact` calls that share their input,
/// so `p50, p95, p99` of one column hold its values once and select three ranks from one buffer.
#[derive(Debug, PartialEq, Eq, Hash)]
struct QuantilesExact {
    signature: Signature,
}

impl QuantilesExact {
    fn new() -> Self {
        QuantilesExact { signature: Signature::user_defined(Volatility::Immutable) }
    }
}

/// The aggregate [`ShareQuantiles`] plans, for the codecs that carry its plans to a cluster's nodes (by name:
/// it is not in any registry, so SQL cannot call it).
pub fn quantiles_exact_shared_udaf() -> AggregateUDF {
    AggregateUDF::from(QuantilesExact::new())
}

/// The name of [`quantiles_exact_shared_udaf`].
pub const QUANTILE_EXACT_SHARED: &str = "quantile_exact_shared";

fn quantile_fields(n: usize) -> Fields {
    (0..n).map(|i| Field::new(format!("q{i}"), DataType::Float64, true)).collect()
}

impl AggregateUDFImpl for QuantilesExact {
    fn name(&self) -> &str {
        QUANTILE_EXACT_SHARED
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        Ok(vec![DataType::Float64; arg_types.len()])
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Struct(quantile_fields(arg_types.len().saturating_sub(1))))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(values_state_field(args.name))
    }

    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(QuantileAccumulator { output: Output::Many(quantile_args(&args)?), values: Vec::new() }))
    }

    fn groups_accumulator_supported(&self, args: AccumulatorArgs) -> bool {
        !args.is_distinct
    }

    fn create_groups_accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(QuantileGroups::new(Output::Many(quantile_args(&args)?))))
    }
}

fn quantile_args(args: &AccumulatorArgs) -> Result<Vec<f64>> {
    (1..args.exprs.len()).map(|i| quantile_arg(args, i)).collect()
}

/// What a group evaluates to: one quantile (`Float64`) or several (a struct of `Float64`).
#[derive(Debug, Clone)]
enum Output {
    One(f64),
    Many(Vec<f64>),
}

impl Output {
    fn qs(&self) -> &[f64] {
        match self {
            Output::One(q) => std::slice::from_ref(q),
            Output::Many(qs) => qs,
        }
    }

    /// Evaluates every group (reordering its values) into the output column.
    fn evaluate<'a>(&self, groups: impl Iterator<Item = &'a mut [f64]>) -> ArrayRef {
        let qs = self.qs();
        let mut builders: Vec<Float64Builder> = qs.iter().map(|_| Float64Builder::new()).collect();
        for values in groups {
            for (b, v) in builders.iter_mut().zip(quantiles_linear(values, qs)) {
                b.append_option(v);
            }
        }
        let mut columns: Vec<ArrayRef> = builders.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef).collect();
        match self {
            Output::One(_) => columns.pop().expect("one quantile"),
            Output::Many(qs) => Arc::new(StructArray::new(quantile_fields(qs.len()), columns, None)),
        }
    }
}

/// [`quantile_linear`] for several `qs` over the same values, selecting each rank only among the values above the
/// previous one. Reorders `values`.
pub fn quantiles_linear(values: &mut [f64], qs: &[f64]) -> Vec<Option<f64>> {
    let n = values.len();
    if n == 0 {
        return vec![None; qs.len()];
    }
    let mut order: Vec<usize> = (0..qs.len()).collect();
    order.sort_by(|&a, &b| qs[a].total_cmp(&qs[b]));
    let mut out = vec![None; qs.len()];
    // Everything at or after `start` is >= everything before it.
    let mut start = 0;
    for i in order {
        let h = (n - 1) as f64 * qs[i];
        let lo = (h.floor() as usize).min(n - 1).max(start);
        let g = h - lo as f64;
        let (_, lo_value, upper) = values[start..].select_nth_unstable_by(lo - start, f64::total_cmp);
        let a = *lo_value;
        out[i] = Some(if g <= 0.0 || upper.is_empty() {
            a
        } else {
            lerp(a, upper.iter().copied().min_by(f64::total_cmp).unwrap_or(a), g)
        });
        start = lo;
    }
    out
}

/// Optimizer rule: within one aggregation, `quantile_exact` calls over the same value (and filter) become one
/// [`QuantilesExact`] call, and a projection hands each original column its field. The answers are the same
/// values; the group's values are gathered, moved between partial and final aggregation, and selected from once
/// instead of once per quantile.
#[derive(Debug, Default)]
pub struct ShareQuantiles;

/// The `quantile_exact` calls of an aggregate that share everything but `q`, bucketed: (template call,
/// [(aggr_expr index, q)]).
fn quantile_buckets(aggr_expr: &[Expr]) -> Vec<(&AggregateFunction, Vec<(usize, f64)>)> {
    let mut buckets: Vec<(&AggregateFunction, Vec<(usize, f64)>)> = Vec::new();
    for (i, e) in aggr_expr.iter().enumerate() {
        let inner = match e {
            Expr::Alias(a) => a.expr.as_ref(),
            other => other,
        };
        let Expr::AggregateFunction(f) = inner else { continue };
        if f.func.inner().downcast_ref::<QuantileExact>().is_none() || f.params.distinct {
            continue;
        }
        let [value, Expr::Literal(ScalarValue::Float64(Some(q)), _)] = f.params.args.as_slice() else {
            continue;
        };
        let same = |t: &&AggregateFunction| {
            t.params.args[0] == *value
                && t.params.filter == f.params.filter
                && t.params.order_by == f.params.order_by
                && t.params.null_treatment == f.params.null_treatment
        };
        match buckets.iter_mut().find(|(t, _)| same(t)) {
            Some((_, calls)) => calls.push((i, *q)),
            None => buckets.push((f, vec![(i, *q)])),
        }
    }
    buckets
}

impl OptimizerRule for ShareQuantiles {
    fn name(&self) -> &str {
        "share_exact_quantiles"
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        Some(ApplyOrder::BottomUp)
    }

    fn rewrite(&self, plan: LogicalPlan, _config: &dyn OptimizerConfig) -> Result<Transformed<LogicalPlan>> {
        let LogicalPlan::Aggregate(agg) = plan else {
            return Ok(Transformed::no(plan));
        };
        let mut buckets = quantile_buckets(&agg.aggr_expr);
        buckets.retain(|(_, calls)| calls.len() > 1);
        if buckets.is_empty() {
            return Ok(Transformed::no(LogicalPlan::Aggregate(agg)));
        }

        // Where each original aggregate column comes from: its own call (kept) or a field of a shared call.
        enum Source {
            Kept(usize),
            Shared { bucket: usize, field: usize },
        }
        let mut sources: Vec<Option<Source>> = (0..agg.aggr_expr.len()).map(|_| None).collect();
        for (b, (_, calls)) in buckets.iter().enumerate() {
            for (field, (i, _)) in calls.iter().enumerate() {
                sources[*i] = Some(Source::Shared { bucket: b, field });
            }
        }
        let mut aggr_expr = Vec::new();
        for (i, e) in agg.aggr_expr.iter().enumerate() {
            if sources[i].is_none() {
                sources[i] = Some(Source::Kept(aggr_expr.len()));
                aggr_expr.push(e.clone());
            }
        }
        let kept = aggr_expr.len();
        let shared = Arc::new(AggregateUDF::from(QuantilesExact::new()));
        for (b, (template, calls)) in buckets.iter().enumerate() {
            let mut args = vec![template.params.args[0].clone()];
            args.extend(calls.iter().map(|(_, q)| Expr::Literal(ScalarValue::Float64(Some(*q)), None)));
            let call = AggregateFunction::new_udf(
                shared.clone(),
                args,
                false,
                template.params.filter.clone(),
                template.params.order_by.clone(),
                template.params.null_treatment,
            );
            aggr_expr.push(Expr::AggregateFunction(call).alias(format!("__quantile_exact_shared_{b}")));
        }

        let groups = agg.schema.fields().len() - agg.aggr_expr.len();
        let input = Aggregate::try_new(agg.input.clone(), agg.group_expr.clone(), aggr_expr)?;
        let column = |j: usize| Expr::Column(Column::from(input.schema.qualified_field(j)));
        let exprs = agg
            .schema
            .iter()
            .enumerate()
            .map(|(i, (qualifier, field))| {
                let expr = if i < groups {
                    column(i)
                } else {
                    match sources[i - groups].as_ref().expect("every column has a source") {
                        Source::Kept(j) => column(groups + j),
                        Source::Shared { bucket, field } => {
                            get_field(column(groups + kept + bucket), format!("q{field}"))
                        }
                    }
                };
                expr.alias_qualified(qualifier.cloned(), field.name())
            })
            .collect();
        let projection = Projection::try_new(exprs, Arc::new(LogicalPlan::Aggregate(input)))?;
        Ok(Transformed::yes(LogicalPlan::Projection(projection)))
    }
}

fn push_non_null(out: &mut Vec<f64>, values: &Float64Array) {
    if values.null_count() == 0 {
        out.extend_from_slice(values.values());
    } else {
        out.extend(values.iter().flatten());
    }
}

/// The intermediate state: per group, its values as native-endian `f64` bytes (see the module docs).
fn to_state<'a>(groups: impl ExactSizeIterator<Item = &'a [f64]> + Clone) -> ArrayRef {
    let total: usize = groups.clone().map(<[f64]>::len).sum();
    let mut offsets = Vec::with_capacity(groups.len() + 1);
    offsets.push(0i64);
    let mut bytes = MutableBuffer::with_capacity(total * size_of::<f64>());
    for g in groups {
        bytes.extend_from_slice(g);
        offsets.push(bytes.len() as i64);
    }
    Arc::new(LargeBinaryArray::new(OffsetBuffer::new(ScalarBuffer::from(offsets)), bytes.into(), None))
}

/// Appends the values of one state entry.
fn extend_from_state(out: &mut Vec<f64>, bytes: &[u8]) {
    out.extend(bytes.chunks_exact(size_of::<f64>()).map(|b| f64::from_ne_bytes(b.try_into().expect("8 bytes"))));
}

#[derive(Debug)]
struct QuantileAccumulator {
    output: Output,
    values: Vec<f64>,
}

impl Accumulator for QuantileAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        push_non_null(&mut self.values, values[0].as_primitive::<Float64Type>());
        Ok(())
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        for bytes in states[0].as_binary::<i64>().iter().flatten() {
            extend_from_state(&mut self.values, bytes);
        }
        Ok(())
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        let values = std::mem::take(&mut self.values);
        let bytes = values.iter().flat_map(|v| v.to_ne_bytes()).collect();
        Ok(vec![ScalarValue::LargeBinary(Some(bytes))])
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        // Selection only reorders, so evaluating twice (window frames) stays correct.
        let column = self.output.evaluate(std::iter::once(self.values.as_mut_slice()));
        ScalarValue::try_from_array(&column, 0)
    }

    fn size(&self) -> usize {
        size_of_val(self) + self.values.capacity() * size_of::<f64>()
    }
}

#[derive(Debug)]
struct QuantileGroups {
    output: Output,
    groups: Vec<Vec<f64>>,
    /// Values held, for the memory pool.
    bytes: usize,
}

impl QuantileGroups {
    fn new(output: Output) -> QuantileGroups {
        QuantileGroups { output, groups: Vec::new(), bytes: 0 }
    }

    fn recount(&mut self) {
        self.bytes = self.groups.iter().map(|g| g.capacity() * size_of::<f64>()).sum::<usize>()
            + self.groups.capacity() * size_of::<Vec<f64>>();
    }
}

impl GroupsAccumulator for QuantileGroups {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        let values = values[0].as_primitive::<Float64Type>();
        self.groups.resize_with(total_num_groups, Vec::new);
        let before: usize = self.bytes;
        let mut added = 0usize;
        let raw = values.values();
        match (values.nulls(), opt_filter) {
            (None, None) => {
                for (&g, &v) in group_indices.iter().zip(raw.iter()) {
                    self.groups[g].push(v);
                }
                added = raw.len();
            }
            _ => {
                for (i, &g) in group_indices.iter().enumerate() {
                    if values.is_null(i) || opt_filter.is_some_and(|f| !f.value(i) || f.is_null(i)) {
                        continue;
                    }
                    self.groups[g].push(raw[i]);
                    added += 1;
                }
            }
        }
        // An estimate between recounts: amortised growth is within 2x of this.
        self.bytes = before + added * size_of::<f64>();
        Ok(())
    }

    fn merge_batch(&mut self, values: &[ArrayRef], group_indices: &[usize], total_num_groups: usize) -> Result<()> {
        self.groups.resize_with(total_num_groups, Vec::new);
        let states = values[0].as_binary::<i64>();
        for (i, &g) in group_indices.iter().enumerate() {
            if states.is_valid(i) {
                extend_from_state(&mut self.groups[g], states.value(i));
            }
        }
        self.recount();
        Ok(())
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        let mut groups = emit_to.take_needed(&mut self.groups);
        let out = self.output.evaluate(groups.iter_mut().map(Vec::as_mut_slice));
        self.recount();
        Ok(out)
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        let groups = emit_to.take_needed(&mut self.groups);
        self.recount();
        Ok(vec![to_state(groups.iter().map(Vec::as_slice))])
    }

    fn convert_to_state(&self, values: &[ArrayRef], opt_filter: Option<&BooleanArray>) -> Result<Vec<ArrayRef>> {
        // Each input row becomes a group of its own: its one value, or no values when NULL or filtered out.
        let values = values[0].as_primitive::<Float64Type>();
        let mut offsets = Vec::with_capacity(values.len() + 1);
        let mut bytes = MutableBuffer::with_capacity(values.len() * size_of::<f64>());
        offsets.push(0i64);
        for i in 0..values.len() {
            let keep = values.is_valid(i) && opt_filter.is_none_or(|f| f.is_valid(i) && f.value(i));
            if keep {
                bytes.push(values.value(i));
            }
            offsets.push(bytes.len() as i64);
        }
        Ok(vec![Arc::new(LargeBinaryArray::new(OffsetBuffer::new(ScalarBuffer::from(offsets)), bytes.into(), None))])
    }

    fn size(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The textbook definition, by full sort, written independently of the selection above.
    fn by_sort(values: &[f64], q: f64) -> Option<f64> {
        (!values.is_empty()).then(|| crate::fixture::numpy_quantile(values, q))
    }

    #[test]
    fn matches_numpy_on_known_data() {
        // Expected values printed by numpy 2.x: np.quantile([...], q) (method="linear").
        let data = [15.0, 20.0, 35.0, 40.0, 50.0];
        let cases = [(0.0, 15.0), (0.25, 20.0), (0.4, 29.0), (0.5, 35.0), (0.95, 48.0), (0.99, 49.6), (1.0, 50.0)];
        for (q, expected) in cases {
            let got = quantile_linear(&mut data.to_vec(), q).unwrap();
            assert!((got - expected).abs() < 1e-9, "q={q}: got {got}, numpy says {expected}");
        }
        // Even count: the median interpolates halfway.
        assert_eq!(quantile_linear(&mut [4.0, 1.0, 3.0, 2.0], 0.5), Some(2.5));
        // One value: every quantile is that value.
        assert_eq!(quantile_linear(&mut [7.5], 0.999), Some(7.5));
        // No values: NULL, not zero.
        assert_eq!(quantile_linear(&mut [], 0.5), None);
        // Duplicates around the rank.
        assert_eq!(quantile_linear(&mut [1.0, 2.0, 2.0, 2.0, 9.0], 0.6), Some(2.0));
    }

    #[test]
    fn several_quantiles_from_one_buffer_agree_with_one_at_a_time() {
        let mut state = 0x9E3779B97F4A7C15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % 1000) as f64 / 7.0
        };
        // Unsorted and repeated qs, ranks that coincide, and values with many duplicates.
        let qs = [0.99, 0.5, 0.0, 0.95, 0.5, 1.0, 0.999, 0.25];
        for n in [1usize, 2, 3, 5, 100, 1001, 5000] {
            let values: Vec<f64> = (0..n).map(|_| next()).collect();
            let got = quantiles_linear(&mut values.clone(), &qs);
            let want: Vec<Option<f64>> = qs.iter().map(|&q| by_sort(&values, q)).collect();
            assert_eq!(got, want, "n={n}");
        }
        assert_eq!(quantiles_linear(&mut [], &[0.5, 0.9]), vec![None, None]);
    }

    #[test]
    fn agrees_with_sorting_on_random_data() {
        // A deterministic LCG, so a failure reproduces.
        let mut state = 0x2545F4914F6CDD1Du64;
        let mut next = || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        for n in [1usize, 2, 3, 10, 99, 100, 1000, 4097] {
            let values: Vec<f64> = (0..n).map(|_| (next() * 1000.0).exp2().ln() * 3.0).collect();
            for q in [0.0, 0.001, 0.1, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0] {
                assert_eq!(quantile_linear(&mut values.clone(), q), by_sort(&values, q), "n={n} q={q}");
            }
        }
    }
}

#[cfg(test)]
mod state_tests {
    use datafusion::arrow::array::Float64Array;

    use super::*;

    fn groups(q: f64) -> QuantileGroups {
        QuantileGroups::new(Output::One(q))
    }

    fn column(values: Vec<Option<f64>>) -> ArrayRef {
        Arc::new(Float64Array::from(values))
    }

    fn evaluate(acc: &mut QuantileGroups, emit: EmitTo) -> Vec<Option<f64>> {
        acc.evaluate(emit).unwrap().as_primitive::<Float64Type>().iter().collect()
    }

    /// Partial accumulators hand their values to a final one through the binary state, as two-phase aggregation
    /// does; the answer must equal the quantile over all values of each group.
    #[test]
    fn partial_states_merge_to_the_exact_answer() {
        let mut a = groups(0.9);
        let mut b = groups(0.9);
        // Group 0: 1..=6 split over both partials; group 1: 10, 20 and a NULL; group 2: filtered out entirely.
        a.update_batch(&[column(vec![Some(1.0), Some(10.0), Some(2.0), Some(99.0)])], &[0, 1, 0, 2], None, 3).unwrap();
        let filter = BooleanArray::from(vec![true, true, true, false, true]);
        b.update_batch(
            &[column(vec![Some(3.0), Some(4.0), None, Some(7.0), Some(20.0)])],
            &[0, 0, 1, 2, 1],
            Some(&filter),
            3,
        )
        .unwrap();
        let (sa, sb) = (a.state(EmitTo::All).unwrap(), b.state(EmitTo::All).unwrap());
        assert_eq!(sa[0].data_type(), &DataType::LargeBinary);

        let mut last = groups(0.9);
        last.merge_batch(&sa, &[0, 1, 2], 3).unwrap();
        last.merge_batch(&sb, &[0, 1, 2], 3).unwrap();
        let want0 = quantile_linear(&mut [1.0, 2.0, 3.0, 4.0], 0.9);
        let want1 = quantile_linear(&mut [10.0, 20.0], 0.9);
        // Group 2 got 99 from `a`; `b`'s 7 was filtered out.
        assert_eq!(evaluate(&mut last, EmitTo::First(1)), vec![want0]);
        assert_eq!(evaluate(&mut last, EmitTo::All), vec![want1, Some(99.0)]);
    }

    /// When partial aggregation is skipped, each row becomes a state of its own; NULL and filtered rows are empty.
    #[test]
    fn rows_converted_to_states_merge_like_rows() {
        let acc = groups(0.5);
        let filter = BooleanArray::from(vec![true, true, false, true]);
        let states =
            acc.convert_to_state(&[column(vec![Some(5.0), None, Some(1.0), Some(3.0)])], Some(&filter)).unwrap();
        let mut last = groups(0.5);
        last.merge_batch(&states, &[0, 0, 0, 1], 2).unwrap();
        assert_eq!(evaluate(&mut last, EmitTo::All), vec![Some(5.0), Some(3.0)]);
        let mut empty = groups(0.5);
        empty.merge_batch(&states, &[0, 1, 1, 0], 2).unwrap();
        assert_eq!(evaluate(&mut empty, EmitTo::All), vec![Some(4.0), None]);
    }

    #[test]
    fn row_accumulator_state_round_trips() {
        let mut a = QuantileAccumulator { output: Output::One(0.5), values: Vec::new() };
        a.update_batch(&[column(vec![Some(2.0), None, Some(8.0)])]).unwrap();
        let state = a.state().unwrap();
        let mut b = QuantileAccumulator { output: Output::One(0.5), values: vec![4.0] };
        b.merge_batch(&[state[0].to_array().unwrap()]).unwrap();
        assert_eq!(b.evaluate().unwrap(), ScalarValue::Float64(Some(4.0)));
    }
}
