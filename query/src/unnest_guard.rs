//! A bound on what `unnest` produces from one batch.
//!
//! DataFusion's `UnnestExec` turns each input batch into one output batch of as many rows as the lists hold, and
//! copies every other column once per element (`take`). Neither is reserved in a memory pool, and a list of
//! millions of elements beside a long string is millions of copies of the string: `SELECT s, unnest(range(8e6))`
//! over a 1 KB `s` asks for 8 GB in one allocation. [`BoundUnnest`] puts an [`UnnestInputGuardExec`] under every
//! `UnnestExec`: it estimates each input row's output (its element count times the bytes of the row's other
//! columns, as an average over the batch, plus the elements), cuts input batches into slices whose output stays
//! under `query.max_function_output_mb`, and refuses a single row whose output alone would exceed it, before
//! `UnnestExec` allocates anything.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode, TreeNodeRecursion};
use datafusion::common::{Result, internal_err};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::execution_plan::{ChildrenPropertiesMode, ReplaceChildrenOptions};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::unnest::{ListUnnest, UnnestExec};
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use futures::StreamExt;

use crate::limits::LimitExceeded;

/// Puts an [`UnnestInputGuardExec`] under every `UnnestExec` of a plan.
#[derive(Debug)]
pub struct BoundUnnest {
    pub max_output_bytes: usize,
}

impl PhysicalOptimizerRule for BoundUnnest {
    fn optimize(&self, plan: Arc<dyn ExecutionPlan>, _config: &ConfigOptions) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let Some(unnest) = node.downcast_ref::<UnnestExec>() else {
                return Ok(Transformed::no(node));
            };
            if unnest.input().is::<UnnestInputGuardExec>() {
                return Ok(Transformed::no(node));
            }
            let guard = UnnestInputGuardExec {
                input: unnest.input().clone(),
                lists: unnest.list_column_indices().to_vec(),
                max_output_bytes: self.max_output_bytes,
            };
            // The guard passes its input's batches on unchanged in schema, order and partitioning.
            let keep = ReplaceChildrenOptions::new(ChildrenPropertiesMode::Keep);
            let guarded = node.clone().replace_children(vec![Arc::new(guard)], keep)?;
            Ok(Transformed::yes(guarded))
        })
        .data()
    }

    fn name(&self) -> &str {
        "bound_unnest"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// Passes its input's batches on, cut so that `UnnestExec` above it produces at most `max_output_bytes` from each
/// (see the module documentation).
#[derive(Debug)]
pub struct UnnestInputGuardExec {
    input: Arc<dyn ExecutionPlan>,
    lists: Vec<ListUnnest>,
    max_output_bytes: usize,
}

impl UnnestInputGuardExec {
    /// The guard over `input` of an unnest of `lists` (as `UnnestExec` names them).
    pub fn new(input: Arc<dyn ExecutionPlan>, lists: Vec<ListUnnest>, max_output_bytes: usize) -> UnnestInputGuardExec {
        UnnestInputGuardExec { input, lists, max_output_bytes }
    }

    /// The lists of the unnest above.
    pub fn lists(&self) -> &[ListUnnest] {
        &self.lists
    }

    /// The bound on one input slice's output.
    pub fn max_output_bytes(&self) -> usize {
        self.max_output_bytes
    }
}

impl DisplayAs for UnnestInputGuardExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "UnnestInputGuardExec: max_output_bytes={}", self.max_output_bytes)
    }
}

impl ExecutionPlan for UnnestInputGuardExec {
    fn name(&self) -> &'static str {
        "UnnestInputGuardExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(self: Arc<Self>, mut children: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        if children.len() != 1 {
            return internal_err!("UnnestInputGuardExec takes one child, got {}", children.len());
        }
        Ok(Arc::new(UnnestInputGuardExec {
            input: children.swap_remove(0),
            lists: self.lists.clone(),
            max_output_bytes: self.max_output_bytes,
        }))
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context)?;
        let schema = input.schema();
        let bound = Bound { lists: self.lists.clone(), max_output_bytes: self.max_output_bytes as u64 };
        let stream = input.flat_map(move |batch| {
            let slices = match batch {
                Ok(batch) => bound.cut(&batch),
                Err(e) => vec![Err(e)],
            };
            futures::stream::iter(slices)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}

struct Bound {
    lists: Vec<ListUnnest>,
    max_output_bytes: u64,
}

impl Bound {
    /// The batch cut into slices whose unnested output stays under the bound, or an error for a row that alone
    /// exceeds it.
    fn cut(&self, batch: &RecordBatch) -> Vec<Result<RecordBatch>> {
        let rows = batch.num_rows();
        if rows == 0 {
            return vec![Ok(batch.clone())];
        }
        let listed: Vec<usize> = self.lists.iter().map(|l| l.index_in_input_schema).collect();
        // The bytes each output row copies from the other columns: their average per input row.
        let others: u64 = (0..batch.num_columns())
            .filter(|i| !listed.contains(i))
            .map(|i| slice_bytes(batch.column(i)))
            .fold(0, u64::saturating_add);
        let per_row_copy = others / rows as u64;
        let mut slices = Vec::new();
        let (mut start, mut bytes) = (0usize, 0u64);
        for row in 0..rows {
            let elements =
                self.lists.iter().map(|l| elements_at_depth(batch.column(l.index_in_input_schema), row, l.depth));
            let elements = elements.max().unwrap_or(0);
            // Each output row: the other columns copied, and about 8 bytes of element and index.
            let row_bytes = elements.saturating_mul(per_row_copy.saturating_add(16));
            if row_bytes > self.max_output_bytes {
                return vec![Err(LimitExceeded(format!(
                    "unnest would produce {elements} rows of about {row_bytes} bytes from one row, more than \
                     query.max_function_output_mb ({} MiB): unnest shorter lists (e.g. a smaller range), or select \
                     fewer or shorter columns beside the unnested one",
                    self.max_output_bytes / (1024 * 1024)
                ))
                .into_datafusion())];
            }
            if bytes.saturating_add(row_bytes) > self.max_output_bytes && row > start {
                slices.push(Ok(batch.slice(start, row - start)));
                (start, bytes) = (row, 0);
            }
            bytes = bytes.saturating_add(row_bytes);
        }
        if start == 0 {
            return vec![Ok(batch.clone())];
        }
        slices.push(Ok(batch.slice(start, rows - start)));
        slices
    }
}

/// The bytes of an array's own slice.
fn slice_bytes(array: &ArrayRef) -> u64 {
    array.to_data().get_slice_memory_size().unwrap_or_else(|_| array.get_array_memory_size()) as u64
}

/// How many elements unnesting `depth` levels of row `row` of a list column yields (0 for NULL or a non-list).
fn elements_at_depth(column: &ArrayRef, row: usize, depth: usize) -> u64 {
    let (mut array, mut start, mut end) = (column.clone(), row, row + 1);
    for _ in 0..depth.max(1) {
        if start >= end {
            return 0;
        }
        let (first, last, values): (usize, usize, ArrayRef) = match array.data_type() {
            DataType::List(_) => {
                let list = array.as_list::<i32>();
                let offsets = list.value_offsets();
                (offsets[start] as usize, offsets[end] as usize, list.values().clone())
            }
            DataType::LargeList(_) => {
                let list = array.as_list::<i64>();
                let offsets = list.value_offsets();
                (offsets[start] as usize, offsets[end] as usize, list.values().clone())
            }
            DataType::FixedSizeList(_, size) => {
                let size = usize::try_from(*size).unwrap_or(0);
                (start * size, end * size, array.as_fixed_size_list().values().clone())
            }
            _ => return 0,
        };
        (array, start, end) = (values, first, last);
    }
    end.saturating_sub(start) as u64
}
