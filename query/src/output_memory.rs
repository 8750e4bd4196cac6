//! The memory of what expressions produce, counted in the process-wide budget.
//!
//! DataFusion's memory pool sees only the operators that reserve (sorts, aggregations, joins); what a scalar
//! function returns is allocated outside it. A statement can nest such calls (`concat(repeat(..), repeat(..), ...)`,
//! `a || b || ...`) so that each call is modest but together they hold gigabytes. So every call of a function that
//! returns variable-width values (strings, binaries, lists, structs, maps) reserves its output in the shared
//! [`MemoryBudget`] before it runs, estimated from its arguments, and keeps that reservation inside the returned
//! array ([`hold`]): the bytes stay counted for as long as the array lives and are released when it is dropped. A
//! call that does not fit fails the query with a resources-exhausted error instead of allocating.
//!
//! The string concatenation operator `||` is a binary expression in DataFusion, evaluated outside any function; the
//! [`StringConcatPlanner`] plans it as the [`StringConcat`] function instead, with the operator's own typing and
//! null semantics, so that it is counted the same way.

use std::ptr::NonNull;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayData, ArrayRef, make_array};
use datafusion::arrow::buffer::Buffer;
use datafusion::arrow::compute::kernels::concat_elements::concat_elements_dyn;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{DFSchema, ExprSchema, Result, ScalarValue};
use datafusion::error::DataFusionError;
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::planner::{ExprPlanner, PlannerResult, RawBinaryExpr};
use datafusion::logical_expr::type_coercion::binary::BinaryTypeCoercer;
use datafusion::logical_expr::{
    ColumnarValue, Expr, ExprSchemable, Operator, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::sql::sqlparser::ast::BinaryOperator;
use tailscope_core::memory::{MemoryBudget, Reservation};

/// Whether values of this type have a size that depends on the data (and so may be far larger than the inputs).
pub fn variable_width(data_type: &DataType) -> bool {
    !(data_type.is_primitive() || matches!(data_type, DataType::Boolean | DataType::Null))
}

/// The bytes of an argument over `rows` rows: an array's own slice, a scalar once per row.
pub fn argument_bytes(value: &ColumnarValue, rows: usize) -> u64 {
    match value {
        ColumnarValue::Array(a) => {
            let data = a.to_data();
            data.get_slice_memory_size().unwrap_or_else(|_| a.get_array_memory_size()) as u64
        }
        ColumnarValue::Scalar(s) => (s.size() as u64).saturating_mul(rows as u64),
    }
}

/// The bytes of all arguments of one call: what a function that does not grow its input (concatenation, case
/// mapping, trimming, ...) needs at most, within a small factor.
pub fn arguments_bytes(args: &ScalarFunctionArgs) -> u64 {
    let any_array = args.args.iter().any(|a| matches!(a, ColumnarValue::Array(_)));
    let rows = if any_array { args.number_rows } else { 1 };
    args.args.iter().map(|a| argument_bytes(a, rows)).fold(0, u64::saturating_add)
}

/// Reserves `bytes` for the output of `function` from the process budget, or says why not.
pub fn reserve_output(budget: &MemoryBudget, function: &str, bytes: u64) -> Result<Reservation> {
    let bytes = usize::try_from(bytes).unwrap_or(usize::MAX);
    budget.try_reserve(bytes, &format_args!("the output of {function}()")).map_err(exhausted)
}

/// Keeps `reservation` inside `value` (resized to the value's size), so that the bytes stay counted while the value
/// lives and are released when it is dropped. A scalar cannot carry it, and a statement can hold any number of
/// them at once (`concat(repeat('x', 60000000), repeat('y', 60000000), ...)` without a table evaluates each call
/// once): a scalar result becomes an array of the call's `rows` (what a consumer would broadcast it to anyway),
/// reserved first.
pub fn hold(value: ColumnarValue, mut reservation: Reservation, rows: usize, function: &str) -> Result<ColumnarValue> {
    let array = match value {
        ColumnarValue::Array(array) => array,
        ColumnarValue::Scalar(scalar) => {
            let bytes = (scalar.size() as u64).saturating_mul(rows as u64);
            let more = usize::try_from(bytes).unwrap_or(usize::MAX).saturating_sub(reservation.size());
            reservation.try_grow(more, &format_args!("the output of {function}()")).map_err(exhausted)?;
            scalar.to_array_of_size(rows)?
        }
    };
    reservation.force_resize(array.get_buffer_memory_size());
    Ok(ColumnarValue::Array(hold_array(array, reservation)))
}

fn exhausted(e: tailscope_core::memory::MemoryError) -> DataFusionError {
    DataFusionError::ResourcesExhausted(format!(
        "{e}; ask for less (filter the rows, or take less of each value) or raise memory.limit_mb"
    ))
}

/// A buffer's bytes, kept alive together with the reservation that counts them.
struct Held {
    _buffer: Buffer,
    _reservation: Reservation,
}

/// Puts the reservation into the array's largest buffer (the values of a string or the offsets of a list, or the
/// largest buffer of its first child when the array has none of its own, e.g. a struct).
fn hold_array(array: ArrayRef, reservation: Reservation) -> ArrayRef {
    if reservation.size() == 0 {
        return array;
    }
    match hold_data(array.to_data(), reservation) {
        Some(data) => make_array(data),
        // Nothing to hold it in (an array of no bytes): the reservation is released, which is right.
        None => array,
    }
}

fn hold_data(data: ArrayData, reservation: Reservation) -> Option<ArrayData> {
    let largest = data.buffers().iter().enumerate().filter(|(_, b)| !b.is_empty()).max_by_key(|(_, b)| b.len());
    if let Some((index, buffer)) = largest {
        let ptr = NonNull::new(buffer.as_ptr().cast_mut())?;
        let len = buffer.len();
        let owner = Arc::new(Held { _buffer: buffer.clone(), _reservation: reservation });
        // SAFETY: `ptr..ptr+len` is the memory of `buffer`, which `owner` keeps alive and which is never written
        // again (Arrow buffers are immutable once shared); the new buffer reads exactly those bytes.
        let held = unsafe { Buffer::from_custom_allocation(ptr, len, owner) };
        let mut buffers = data.buffers().to_vec();
        buffers[index] = held;
        // SAFETY: the same data with one buffer replaced by a buffer of identical bytes: valid as before.
        return Some(unsafe { data.into_builder().buffers(buffers).build_unchecked() });
    }
    // No buffer of its own (a struct, a run-end array): hold it in the first child, one level down per type level.
    let child = data.child_data().first()?.clone();
    let held = hold_data(child, reservation)?;
    let mut children = data.child_data().to_vec();
    children[0] = held;
    // SAFETY: as above, one child replaced by the same data.
    Some(unsafe { data.into_builder().child_data(children).build_unchecked() })
}

/// The name of [`StringConcat`]: not an identifier, so SQL text cannot call it other than as `||`.
pub const STRING_CONCAT: &str = "||";

/// `a || b` on strings and binaries, as DataFusion's operator types and evaluates it (NULL if either side is NULL),
/// but as a function, so that its output is bounded like every other function's (see [`StringConcatPlanner`]).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct StringConcat {
    signature: Signature,
}

impl StringConcat {
    pub fn new() -> StringConcat {
        StringConcat { signature: Signature::user_defined(Volatility::Immutable) }
    }

    fn coercer_types(arg_types: &[DataType]) -> Result<(DataType, DataType)> {
        match arg_types {
            [left, right] => BinaryTypeCoercer::new(left, &Operator::StringConcat, right).get_input_types(),
            _ => Err(DataFusionError::Plan(format!("|| takes two operands, got {}", arg_types.len()))),
        }
    }
}

impl Default for StringConcat {
    fn default() -> Self {
        StringConcat::new()
    }
}

impl ScalarUDFImpl for StringConcat {
    fn name(&self) -> &str {
        STRING_CONCAT
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn display_name(&self, args: &[Expr]) -> Result<String> {
        match args {
            [left, right] => Ok(format!("{left} || {right}")),
            _ => Ok("||".to_string()),
        }
    }

    fn schema_name(&self, args: &[Expr]) -> Result<String> {
        match args {
            [left, right] => Ok(format!("{} || {}", left.schema_name(), right.schema_name())),
            _ => Ok("||".to_string()),
        }
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        let (left, right) = Self::coercer_types(arg_types)?;
        Ok(vec![left, right])
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        match arg_types {
            [left, right] => BinaryTypeCoercer::new(left, &Operator::StringConcat, right).get_result_type(),
            _ => Err(DataFusionError::Plan(format!("|| takes two operands, got {}", arg_types.len()))),
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let all_scalar = args.args.iter().all(|a| matches!(a, ColumnarValue::Scalar(_)));
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let [left, right] = arrays.as_slice() else {
            return Err(DataFusionError::Internal(format!("|| called with {} operands", arrays.len())));
        };
        let output = concat_elements_dyn(left.as_ref(), right.as_ref())?;
        if all_scalar {
            return Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(&output, 0)?));
        }
        Ok(ColumnarValue::Array(output))
    }
}

/// Plans `a || b` on two non-list operands as the [`StringConcat`] function (lists keep DataFusion's `array_concat`
/// and friends, planned by its nested-function planner before this one).
#[derive(Debug)]
pub struct StringConcatPlanner {
    function: Arc<ScalarUDF>,
}

impl StringConcatPlanner {
    /// `function` is the session's (bounded) [`StringConcat`].
    pub fn new(function: Arc<ScalarUDF>) -> StringConcatPlanner {
        StringConcatPlanner { function }
    }
}

impl ExprPlanner for StringConcatPlanner {
    fn plan_binary_op(&self, expr: RawBinaryExpr, schema: &DFSchema) -> Result<PlannerResult<RawBinaryExpr>> {
        if expr.op != BinaryOperator::StringConcat {
            return Ok(PlannerResult::Original(expr));
        }
        let is_list = |e: &Expr| -> Result<bool> {
            let data_type = e.get_type(schema as &dyn ExprSchema)?;
            Ok(matches!(data_type, DataType::List(_) | DataType::LargeList(_) | DataType::FixedSizeList(..)))
        };
        if is_list(&expr.left)? || is_list(&expr.right)? {
            return Ok(PlannerResult::Original(expr));
        }
        let RawBinaryExpr { left, right, .. } = expr;
        Ok(PlannerResult::Planned(Expr::ScalarFunction(ScalarFunction::new_udf(
            self.function.clone(),
            vec![left, right],
        ))))
    }
}
