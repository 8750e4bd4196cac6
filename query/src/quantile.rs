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

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float64Array, Float64Builder, ListArray, RecordBatch,
};
use datafusion::arrow::buffer::{OffsetBuffer, ScalarBuffer};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Float64Type, Schema};
use datafusion::common::{Result, ScalarValue, plan_err};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::utils::format_state_name;
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, ColumnarValue, EmitTo, GroupsAccumulator, Signature, Volatility,
};

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

/// Reads the constant quantile argument and checks its range.
fn quantile_arg(args: &AccumulatorArgs) -> Result<f64> {
    let Some(expr) = args.exprs.get(1) else {
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
        let item = Field::new_list_field(DataType::Float64, true);
        Ok(vec![Arc::new(Field::new(
            format_state_name(args.name, "values"),
            DataType::List(Arc::new(item)),
            true,
        ))])
    }

    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        if args.is_distinct {
            return plan_err!("{QUANTILE_EXACT}(DISTINCT ...) is not supported");
        }
        Ok(Box::new(QuantileAccumulator {
            q: quantile_arg(&args)?,
            values: Vec::new(),
        }))
    }

    fn groups_accumulator_supported(&self, args: AccumulatorArgs) -> bool {
        !args.is_distinct
    }

    fn create_groups_accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(QuantileGroups {
            q: quantile_arg(&args)?,
            groups: Vec::new(),
            bytes: 0,
        }))
    }
}

fn push_non_null(out: &mut Vec<f64>, values: &Float64Array) {
    if values.null_count() == 0 {
        out.extend_from_slice(values.values());
    } else {
        out.extend(values.iter().flatten());
    }
}

/// One list per group, the intermediate state between partial and final aggregation.
fn to_list(groups: Vec<Vec<f64>>) -> ArrayRef {
    let mut offsets = Vec::with_capacity(groups.len() + 1);
    offsets.push(0i32);
    let mut end = 0i32;
    for g in &groups {
        end += g.len() as i32;
        offsets.push(end);
    }
    let flat: Vec<f64> = groups.into_iter().flatten().collect();
    Arc::new(ListArray::new(
        Arc::new(Field::new_list_field(DataType::Float64, true)),
        OffsetBuffer::new(ScalarBuffer::from(offsets)),
        Arc::new(Float64Array::from(flat)),
        None,
    ))
}

#[derive(Debug)]
struct QuantileAccumulator {
    q: f64,
    values: Vec<f64>,
}

impl Accumulator for QuantileAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        push_non_null(&mut self.values, values[0].as_primitive::<Float64Type>());
        Ok(())
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        for list in states[0].as_list::<i32>().iter().flatten() {
            push_non_null(&mut self.values, list.as_primitive::<Float64Type>());
        }
        Ok(())
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        let list = to_list(vec![std::mem::take(&mut self.values)]);
        Ok(vec![ScalarValue::List(Arc::new(list.as_list::<i32>().clone()))])
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        // Selection only reorders, so evaluating twice (window frames) stays correct.
        Ok(ScalarValue::Float64(quantile_linear(&mut self.values, self.q)))
    }

    fn size(&self) -> usize {
        size_of_val(self) + self.values.capacity() * size_of::<f64>()
    }
}

#[derive(Debug)]
struct QuantileGroups {
    q: f64,
    groups: Vec<Vec<f64>>,
    /// Values held, for the memory pool.
    bytes: usize,
}

impl QuantileGroups {
    fn recount(&mut self) {
        self.bytes = self
            .groups
            .iter()
            .map(|g| g.capacity() * size_of::<f64>())
            .sum::<usize>()
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
        let lists = values[0].as_list::<i32>();
        let flat = lists.values().as_primitive::<Float64Type>();
        let offsets = lists.value_offsets();
        for (i, &g) in group_indices.iter().enumerate() {
            if lists.is_null(i) {
                continue;
            }
            let (start, end) = (offsets[i] as usize, offsets[i + 1] as usize);
            let slice = flat.slice(start, end - start);
            push_non_null(&mut self.groups[g], &slice);
        }
        self.recount();
        Ok(())
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        let groups = emit_to.take_needed(&mut self.groups);
        let mut out = Float64Builder::with_capacity(groups.len());
        for mut values in groups {
            out.append_option(quantile_linear(&mut values, self.q));
        }
        self.recount();
        Ok(Arc::new(out.finish()))
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        let groups = emit_to.take_needed(&mut self.groups);
        self.recount();
        Ok(vec![to_list(groups)])
    }

    fn convert_to_state(&self, values: &[ArrayRef], opt_filter: Option<&BooleanArray>) -> Result<Vec<ArrayRef>> {
        // Each input row becomes a group of its own: a list of its one value, or empty when NULL or filtered out.
        let values = values[0].as_primitive::<Float64Type>();
        let mut offsets = Vec::with_capacity(values.len() + 1);
        let mut flat = Vec::with_capacity(values.len());
        offsets.push(0i32);
        for i in 0..values.len() {
            let keep = values.is_valid(i) && opt_filter.is_none_or(|f| f.is_valid(i) && f.value(i));
            if keep {
                flat.push(values.value(i));
            }
            offsets.push(flat.len() as i32);
        }
        Ok(vec![Arc::new(ListArray::new(
            Arc::new(Field::new_list_field(DataType::Float64, true)),
            OffsetBuffer::new(ScalarBuffer::from(offsets)),
            Arc::new(Float64Array::from(flat)),
            None,
        ))])
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
        if values.is_empty() {
            return None;
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let h = (v.len() - 1) as f64 * q;
        let lo = h.floor() as usize;
        let hi = (lo + 1).min(v.len() - 1);
        let g = h - lo as f64;
        Some(lerp(v[lo], v[hi], g))
    }

    #[test]
    fn matches_numpy_on_known_data() {
        // Expected values printed by numpy 2.x: np.quantile([...], q) (method="linear").
        let data = [15.0, 20.0, 35.0, 40.0, 50.0];
        let cases = [
            (0.0, 15.0),
            (0.25, 20.0),
            (0.4, 29.0),
            (0.5, 35.0),
            (0.95, 48.0),
            (0.99, 49.6),
            (1.0, 50.0),
        ];
        for (q, expected) in cases {
            let got = quantile_linear(&mut data.to_vec(), q).unwrap();
            assert!((got - expected).abs() < 1e-9, "q={q}: got {got}, numpy says {expected}");
        }
        // Even count: the median interpolates halfway.
        assert_eq!(quantile_linear(&mut vec![4.0, 1.0, 3.0, 2.0], 0.5), Some(2.5));
        // One value: every quantile is that value.
        assert_eq!(quantile_linear(&mut vec![7.5], 0.999), Some(7.5));
        // No values: NULL, not zero.
        assert_eq!(quantile_linear(&mut vec![], 0.5), None);
        // Duplicates around the rank.
        assert_eq!(quantile_linear(&mut vec![1.0, 2.0, 2.0, 2.0, 9.0], 0.6), Some(2.0));
    }

    #[test]
    fn agrees_with_sorting_on_random_data() {
        // A deterministic LCG, so a failure reproduces.
        let mut state = 0x2545F4914F6CDD1Du64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        for n in [1usize, 2, 3, 10, 99, 100, 1000, 4097] {
            let values: Vec<f64> = (0..n).map(|_| (next() * 1000.0).exp2().ln() * 3.0).collect();
            for q in [0.0, 0.001, 0.1, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0] {
                assert_eq!(
                    quantile_linear(&mut values.clone(), q),
                    by_sort(&values, q),
                    "n={n} q={q}"
                );
            }
        }
    }
}
