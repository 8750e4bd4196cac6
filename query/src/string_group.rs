//! `StringGroupAggregateExec`: `GROUP BY` one string column, in one operator instead of DataFusion's partial
//! aggregate, hash repartition and final aggregate.
//!
//! Why: "cost per session" (`GROUP BY session_id`, hundreds of thousands of distinct 13-14-byte ids) spent most of
//! its time in DataFusion's string group table (the ids are too long to sit inline in a string view, so every probe
//! follows the view into its buffer), then built Arrow arrays of every partial group, hashed them again to
//! repartition, and interned them again in the final aggregate. Here each input partition interns its rows into
//! one open-addressing table that keeps the key bytes contiguous next to the group's hash, and the final stage
//! merges those tables directly, reusing the stored hashes: each string is hashed once and never leaves the table
//! until the result is built.
//!
//! A key read dictionary-encoded (`session_id`, see `crate::table::DICTIONARY_COLUMNS`) is interned by its
//! dictionary: each distinct value once per dictionary, then one lookup per row.
//!
//! The rewrite is exact and narrow: a `Partial` / `FinalPartitioned` pair over one `Utf8`, `LargeUtf8` or
//! `Utf8View` group key (or a dictionary of `Utf8` / `LargeUtf8` with `Int32` keys), no grouping sets, no
//! `FILTER`, `DISTINCT` or `ORDER BY` inside the aggregates, no group limit, and only `count(x)`, `count(*)`,
//! `sum(Float64)` and `sum(Int64)` (computed here) or [`GENERIC_AGGREGATES`] (computed by their own groups
//! accumulators: updated per input table, merged from the tables' states, evaluated once, as DataFusion's two
//! stages would). Anything else keeps DataFusion's plan.
//! NULL keys form their own group. The output is hash-partitioned exactly as the replaced final aggregate was
//! (DataFusion's repartition hash, modulo the partition count), so operators above that rely on it stay correct.
//! Group tables are charged to the query's memory pool. When the pool refuses them, the output partitions that
//! have not answered yet drop the tables and run the replaced DataFusion plan instead (reading their input
//! again), whose partial aggregation emits early and whose final aggregation spills, rather than failing.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, DictionaryArray, Float64Array, Int32Array, Int64Array, LargeStringBuilder, RecordBatch,
    StringBuilder, StringViewBuilder, UInt32Array,
};
use datafusion::arrow::buffer::{BooleanBuffer, NullBuffer};
use datafusion::arrow::compute::take;
use datafusion::arrow::datatypes::{DataType, Float64Type, Int32Type, Int64Type, SchemaRef};
use datafusion::common::config::ConfigOptions;
use datafusion::common::hash_utils::create_hashes;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode, TreeNodeRecursion};
use datafusion::common::{DataFusionError, Result, internal_err};
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_expr::{Partitioning, PhysicalExpr};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::execution_plan::reset_plan_states;
use datafusion::physical_plan::metrics::{BaselineMetrics, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet, Time};
use datafusion::physical_plan::repartition::{REPARTITION_RANDOM_STATE, RepartitionExec};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    ColumnarValue, DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties,
};
use futures::{StreamExt, TryStreamExt};
use parking_lot::Mutex;
use tokio::sync::mpsc;

/// The physical optimizer rule that puts [`StringGroupAggregateExec`] in place of a matching aggregate pair.
#[derive(Debug, Default)]
pub struct StringGroupAggregate;

impl PhysicalOptimizerRule for StringGroupAggregate {
    fn optimize(&self, plan: Arc<dyn ExecutionPlan>, _config: &ConfigOptions) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| match StringGroupAggregateExec::try_replace(&node)? {
            Some(exec) => Ok(Transformed::yes(Arc::new(exec) as Arc<dyn ExecutionPlan>)),
            None => Ok(Transformed::no(node)),
        })
        .data()
    }

    fn name(&self) -> &str {
        "string_group_aggregate"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// One aggregate the operator computes.
#[derive(Debug, Clone)]
enum AggKind {
    /// `count(x)`: rows where `x` is not NULL (`count(*)` is `count(1)`).
    Count,
    /// `sum(x)` over `Float64`: NULL when the group has no non-NULL value.
    SumF64,
    /// `sum(x)` over `Int64`, wrapping on overflow as DataFusion's `sum` does.
    SumI64,
    /// One of [`GENERIC_AGGREGATES`], through DataFusion's own groups accumulator: updated per input table,
    /// merged from the tables' states, evaluated at the end, as DataFusion's partial and final aggregates would.
    Generic(Arc<AggregateFunctionExpr>),
}

/// Aggregates computed by their own groups accumulator (see [`AggKind::Generic`]): the exact quantiles, so that
/// `p50/p95/p99 GROUP BY provider` interns its keys here too, and the plain extremes and mean.
const GENERIC_AGGREGATES: [&str; 5] = ["quantile_exact", "quantile_exact_shared", "min", "max", "avg"];

/// `GROUP BY` one string column with `count` / `sum`, merged partition tables instead of partial + final
/// aggregation. See the module documentation.
#[derive(Debug)]
pub struct StringGroupAggregateExec {
    /// The input of the replaced partial aggregate.
    input: Arc<dyn ExecutionPlan>,
    /// The group key, evaluated on `input`.
    key: Arc<dyn PhysicalExpr>,
    key_name: String,
    /// Each aggregate's kind and argument, evaluated on `input`.
    aggs: Vec<(AggKind, Arc<dyn PhysicalExpr>)>,
    agg_names: Vec<String>,
    /// The replaced final aggregate's properties: same schema, same hash partitioning.
    properties: Arc<PlanProperties>,
    /// The replaced DataFusion plan: what an output partition runs instead when the memory pool refuses this
    /// operator's tables (DataFusion's aggregation can emit early and spill).
    fallback: Arc<dyn ExecutionPlan>,
    /// Shared by the output partitions of one execution until each has taken its receiver.
    run: Mutex<Option<Arc<Run>>>,
    metrics: ExecutionPlanMetricsSet,
}

impl StringGroupAggregateExec {
    /// The operator equivalent to `node`, if `node` is a final aggregate this operator can replace.
    fn try_replace(node: &Arc<dyn ExecutionPlan>) -> Result<Option<StringGroupAggregateExec>> {
        let Some(fin) = node.downcast_ref::<AggregateExec>() else {
            return Ok(None);
        };
        if *fin.mode() != AggregateMode::FinalPartitioned || fin.limit_options().is_some() {
            return Ok(None);
        }
        let Some(repartition) = fin.input().downcast_ref::<RepartitionExec>() else {
            return Ok(None);
        };
        let Partitioning::Hash(hash_exprs, partitions) = repartition.partitioning().clone() else {
            return Ok(None);
        };
        let Some(partial) = repartition.input().downcast_ref::<AggregateExec>() else {
            return Ok(None);
        };
        if *partial.mode() != AggregateMode::Partial
            || partial.limit_options().is_some()
            || partial.group_expr().has_grouping_set()
            || partial.group_expr().expr().len() != 1
            || partial.filter_expr().iter().any(Option::is_some)
            || hash_exprs.len() != 1
            || fin.properties().output_partitioning().partition_count() != partitions
            || !matches!(fin.properties().output_partitioning(), Partitioning::Hash(..))
        {
            return Ok(None);
        }
        // The repartition must hash the partial's key column (its output column 0), as the final aggregate expects.
        let hashes_key = hash_exprs[0]
            .downcast_ref::<datafusion::physical_expr::expressions::Column>()
            .is_some_and(|c| c.index() == 0);
        if !hashes_key {
            return Ok(None);
        }
        let input_schema = partial.input().schema();
        let (key, key_name) = partial.group_expr().expr()[0].clone();
        let key_type = key.data_type(&input_schema)?;
        let out_schema = fin.schema();
        if !is_string_key(&key_type)
            || out_schema.field(0).data_type() != &key_type
            || out_schema.fields().len() != 1 + partial.aggr_expr().len()
        {
            return Ok(None);
        }
        let mut aggs = Vec::new();
        for (i, agg) in partial.aggr_expr().iter().enumerate() {
            let Some(kind) = agg_kind(agg, &input_schema)? else {
                return Ok(None);
            };
            let out_type = out_schema.field(1 + i).data_type();
            let expected = match &kind {
                AggKind::Count | AggKind::SumI64 => DataType::Int64,
                AggKind::SumF64 => DataType::Float64,
                AggKind::Generic(agg) => agg.field().data_type().clone(),
            };
            if *out_type != expected {
                return Ok(None);
            }
            aggs.push((kind, agg.expressions()[0].clone()));
        }
        Ok(Some(StringGroupAggregateExec {
            input: partial.input().clone(),
            key,
            key_name,
            aggs,
            agg_names: partial.aggr_expr().iter().map(|a| a.name().to_string()).collect(),
            properties: fin.properties().clone(),
            fallback: node.clone(),
            run: Mutex::new(None),
            metrics: ExecutionPlanMetricsSet::new(),
        }))
    }

    fn partitions(&self) -> usize {
        self.properties.output_partitioning().partition_count()
    }

    /// Starts the per-input tasks once per execution; every output partition shares them.
    fn run(&self, context: &Arc<TaskContext>) -> Result<Arc<Run>> {
        let mut slot = self.run.lock();
        if let Some(run) = slot.as_ref() {
            return Ok(run.clone());
        }
        let outputs = self.partitions();
        let inputs = self.input.output_partitioning().partition_count();
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..outputs).map(|_| mpsc::unbounded_channel()).unzip();
        let intern_time = MetricBuilder::new(&self.metrics).subset_time("aggregation_time", 0);
        let mut tasks = Vec::with_capacity(inputs);
        for i in 0..inputs {
            let stream = self.input.execute(i, context.clone())?;
            let reservation =
                MemoryConsumer::new(format!("StringGroupAggregateExec[input {i}]")).register(context.memory_pool());
            let key = self.key.clone();
            let aggs = self.aggs.clone();
            let senders = senders.clone();
            let time = intern_time.clone();
            tasks.push(AbortOnDrop(tokio::spawn(async move {
                let result = build_table(stream, key, aggs, reservation, time).await;
                let result = result.map(Arc::new).map_err(Arc::new);
                for sender in senders {
                    // A closed receiver means that output partition was dropped: nothing to tell it.
                    let _ = sender.send(result.clone());
                }
            })));
        }
        let run = Arc::new(Run {
            receivers: receivers.into_iter().map(|r| Mutex::new(Some(r))).collect(),
            inputs,
            fallback: Arc::new(Mutex::new(None)),
            _tasks: tasks,
        });
        *slot = Some(run.clone());
        Ok(run)
    }
}

/// Whether the operator groups by keys of `t`: strings, or strings dictionary-encoded with `Int32` keys.
fn is_string_key(t: &DataType) -> bool {
    match t {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => true,
        DataType::Dictionary(k, v) => **k == DataType::Int32 && matches!(**v, DataType::Utf8 | DataType::LargeUtf8),
        _ => false,
    }
}

/// The kind of a partial aggregate, if this operator computes it exactly as DataFusion would.
fn agg_kind(agg: &Arc<AggregateFunctionExpr>, schema: &SchemaRef) -> Result<Option<AggKind>> {
    let args = agg.expressions();
    if agg.is_distinct() || !agg.order_bys().is_empty() || args.is_empty() {
        return Ok(None);
    }
    let arg_type = args[0].data_type(schema)?;
    let ret = agg.field().data_type().clone();
    Ok(match (agg.fun().name(), &arg_type, &ret) {
        ("count", _, DataType::Int64) if args.len() == 1 => Some(AggKind::Count),
        ("sum", DataType::Float64, DataType::Float64) if args.len() == 1 => Some(AggKind::SumF64),
        ("sum", DataType::Int64, DataType::Int64) if args.len() == 1 => Some(AggKind::SumI64),
        (name, _, _) if GENERIC_AGGREGATES.contains(&name) && agg.groups_accumulator_supported() => {
            Some(AggKind::Generic(agg.clone()))
        }
        _ => None,
    })
}

/// One execution: the per-input tasks and, for each output partition, where their tables arrive.
struct Run {
    receivers: Vec<Mutex<Option<mpsc::UnboundedReceiver<TableResult>>>>,
    inputs: usize,
    /// The replaced plan with fresh execution state (its subtree shares stateful nodes, such as repartitions,
    /// with this operator's input), made by the first output partition that needs it and run by all that do.
    fallback: Arc<Mutex<Option<Arc<dyn ExecutionPlan>>>>,
    /// Aborted when the last output stream is dropped.
    _tasks: Vec<AbortOnDrop>,
}

impl fmt::Debug for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Run").field("inputs", &self.inputs).finish_non_exhaustive()
    }
}

/// A spawned input task, aborted when the run is dropped (the query finished, failed or was cancelled).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

type TableResult = std::result::Result<Arc<Built>, Arc<DataFusionError>>;

/// One input partition's table, still charged to the memory pool until every output partition has merged it.
#[derive(Debug)]
struct Built {
    table: GroupTable,
    _reservation: MemoryReservation,
}

impl DisplayAs for StringGroupAggregateExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "StringGroupAggregateExec: gby=[{} as {}], aggr=[{}], partitions={}",
            self.key,
            self.key_name,
            self.agg_names.join(", "),
            self.partitions()
        )
    }
}

impl ExecutionPlan for StringGroupAggregateExec {
    fn name(&self) -> &'static str {
        "StringGroupAggregateExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        let mut recursion = f(&self.key)?;
        for (_, arg) in &self.aggs {
            if recursion == TreeNodeRecursion::Stop {
                break;
            }
            recursion = f(arg)?;
        }
        Ok(recursion)
    }

    fn with_new_children(self: Arc<Self>, mut children: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        if children.len() != 1 {
            return internal_err!("StringGroupAggregateExec takes one child, got {}", children.len());
        }
        Ok(Arc::new(StringGroupAggregateExec {
            input: children.swap_remove(0),
            key: self.key.clone(),
            key_name: self.key_name.clone(),
            aggs: self.aggs.clone(),
            agg_names: self.agg_names.clone(),
            properties: self.properties.clone(),
            fallback: self.fallback.clone(),
            run: Mutex::new(None),
            metrics: ExecutionPlanMetricsSet::new(),
        }))
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let run = self.run(&context)?;
        let Some(mut receiver) = run.receivers.get(partition).and_then(|r| r.lock().take()) else {
            return internal_err!("StringGroupAggregateExec partition {partition} executed twice or out of range");
        };
        if run.receivers.iter().all(|r| r.lock().is_none()) {
            // Every output partition holds the run now; the input tasks end (abort) when the last one is dropped.
            *self.run.lock() = None;
        }
        let partitions = self.partitions();
        let schema = self.schema();
        let kinds: Vec<AggKind> = self.aggs.iter().map(|(k, _)| k.clone()).collect();
        let batch_size = context.session_config().batch_size();
        let baseline = BaselineMetrics::new(&self.metrics, partition);
        let fallbacks = MetricBuilder::new(&self.metrics).counter("memory_fallbacks", partition);
        let fallback = self.fallback.clone();
        let fresh_fallback = run.fallback.clone();
        let reservation =
            MemoryConsumer::new(format!("StringGroupAggregateExec[{partition}]")).register(context.memory_pool());
        let out_schema = schema.clone();
        let output = async move {
            let merged = async {
                let mut tables = Vec::with_capacity(run.inputs);
                while tables.len() < run.inputs {
                    match receiver.recv().await {
                        Some(Ok(table)) => tables.push(table),
                        Some(Err(e)) => return Err(DataFusionError::Shared(e)),
                        None => {
                            return internal_err!("StringGroupAggregateExec input task ended without a result");
                        }
                    }
                }
                let _timer = baseline.elapsed_compute().timer();
                merge_tables(&tables, &kinds, partition, partitions, &reservation)
            }
            .await;
            drop(run);
            let merged = match merged {
                Ok(merged) => merged,
                Err(e) if matches!(e.find_root(), DataFusionError::ResourcesExhausted(_)) => {
                    // The tables are gone (the input tasks end with the run); DataFusion's aggregation reads the
                    // input again and can emit early and spill where these tables cannot.
                    drop(reservation);
                    fallbacks.add(1);
                    tracing::debug!(
                        "StringGroupAggregateExec[{partition}] falls back to DataFusion's aggregation: {e}"
                    );
                    let plan = {
                        let mut fresh = fresh_fallback.lock();
                        match fresh.as_ref() {
                            Some(plan) => plan.clone(),
                            None => fresh.insert(reset_plan_states(fallback)?).clone(),
                        }
                    };
                    return plan.execute(partition, context);
                }
                Err(e) => return Err(e),
            };
            let timer = baseline.elapsed_compute().timer();
            let batches = merged.into_batches(&out_schema, batch_size)?;
            timer.done();
            drop(reservation);
            for batch in &batches {
                baseline.record_output(batch.num_rows());
                baseline.output_batches().add(1);
            }
            baseline.done();
            let stream = futures::stream::iter(batches.into_iter().map(Ok));
            Ok(Box::pin(RecordBatchStreamAdapter::new(out_schema, stream)) as SendableRecordBatchStream)
        };
        let stream = futures::stream::once(output).try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}

/// Interns every row of one input partition.
async fn build_table(
    mut stream: SendableRecordBatchStream,
    key: Arc<dyn PhysicalExpr>,
    aggs: Vec<(AggKind, Arc<dyn PhysicalExpr>)>,
    reservation: MemoryReservation,
    time: Time,
) -> Result<Built> {
    let kinds: Vec<AggKind> = aggs.iter().map(|(k, _)| k.clone()).collect();
    let mut table = GroupTable::new(&kinds)?;
    let mut hashes = Vec::new();
    let mut group_ids = Vec::new();
    let mut dictionary = DictionaryGroups::default();
    // The group ids as `usize`, which groups accumulators take: made once per batch for all of them.
    let any_generic = kinds.iter().any(|k| matches!(k, AggKind::Generic(_)));
    let mut wide_ids: Vec<usize> = Vec::new();
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        let _timer = time.timer();
        let rows = batch.num_rows();
        let keys = key.evaluate(&batch)?.into_array(rows)?;
        group_ids.clear();
        if let Some(keys) = keys.as_dictionary_opt::<Int32Type>() {
            dictionary.intern(&mut table, keys, &mut group_ids)?;
        } else {
            hashes.clear();
            hashes.resize(rows, 0);
            // The same hash as `RepartitionExec`, so the output partitions hold the groups the replaced plan put
            // there.
            create_hashes([&keys], REPARTITION_RANDOM_STATE.random_state(), &mut hashes)?;
            table.intern(&keys, &hashes, &mut group_ids)?;
        }
        let groups = table.len();
        if any_generic {
            wide_ids.clear();
            wide_ids.extend(group_ids.iter().map(|&g| g as usize));
        }
        for (acc, (_, arg)) in table.accs.iter_mut().zip(&aggs) {
            acc.update(&batch, arg, &group_ids, &wide_ids, groups)?;
        }
        reservation.try_resize(table.allocated_size())?;
    }
    for acc in &mut table.accs {
        acc.seal()?;
    }
    reservation.try_resize(table.allocated_size())?;
    Ok(Built { table, _reservation: reservation })
}

/// The group ids of a dictionary's values, kept while batches come with the same dictionary: the Parquet reader
/// gives every batch of a column chunk the chunk's one dictionary, so its values are hashed once per file, each
/// value is interned the first time a row uses it, and every other row costs one lookup of its key. Values no row
/// uses (a filter above the scan leaves the dictionary whole) never become groups.
#[derive(Default)]
struct DictionaryGroups {
    /// The dictionary the ids are for, held so that its buffers cannot be freed and reused by another one.
    values: Option<ArrayRef>,
    hashes: Vec<u64>,
    /// Per value, its group, or [`UNSET`] until a row uses it.
    ids: Vec<u32>,
}

/// A dictionary value no row has used yet.
const UNSET: u32 = u32::MAX;

impl DictionaryGroups {
    fn intern(&mut self, table: &mut GroupTable, keys: &DictionaryArray<Int32Type>, out: &mut Vec<u32>) -> Result<()> {
        let values = keys.values().clone();
        if !self.values.as_ref().is_some_and(|seen| same_array(seen, &values)) {
            self.hashes.clear();
            self.hashes.resize(values.len(), 0);
            // A dictionary value hashes as the same string does (DataFusion hashes dictionaries by their values),
            // so the groups land in the output partitions the replaced plan put them in.
            create_hashes([&values], REPARTITION_RANDOM_STATE.random_state(), &mut self.hashes)?;
            self.ids.clear();
            self.ids.resize(values.len(), UNSET);
            self.values = Some(values.clone());
        }
        out.reserve(keys.len());
        let nulls = keys.nulls().filter(|n| n.null_count() > 0);
        let rows = keys.keys().values();
        match values.data_type() {
            DataType::Utf8 => {
                let v = values.as_string::<i32>();
                self.lookup(table, rows, nulls, out, |k| v.is_valid(k).then(|| v.value(k).as_bytes()))
            }
            DataType::LargeUtf8 => {
                let v = values.as_string::<i64>();
                self.lookup(table, rows, nulls, out, |k| v.is_valid(k).then(|| v.value(k).as_bytes()))
            }
            other => internal_err!("StringGroupAggregateExec cannot group by a dictionary of {other}"),
        }?;
        table.resize_accs();
        Ok(())
    }

    fn lookup<'a>(
        &mut self,
        table: &mut GroupTable,
        rows: &[i32],
        nulls: Option<&NullBuffer>,
        out: &mut Vec<u32>,
        value: impl Fn(usize) -> Option<&'a [u8]>,
    ) -> Result<()> {
        for (i, &k) in rows.iter().enumerate() {
            if nulls.is_some_and(|n| n.is_null(i)) {
                // NULL rows keep the hash DataFusion gives them, 0, like NULL values of a string column.
                out.push(table.null_group(0)?);
                continue;
            }
            let k = k as usize;
            let id = match self.ids[k] {
                UNSET => {
                    let id = match value(k) {
                        Some(bytes) => table.find_or_insert(self.hashes[k], bytes)?,
                        None => table.null_group(self.hashes[k])?,
                    };
                    self.ids[k] = id;
                    id
                }
                id => id,
            };
            out.push(id);
        }
        Ok(())
    }
}

/// Whether `a` and `b` are the same array: the same buffers at the same offsets (buffers are immutable).
fn same_array(a: &ArrayRef, b: &ArrayRef) -> bool {
    if a.len() != b.len() || a.data_type() != b.data_type() {
        return false;
    }
    let (a, b) = (a.to_data(), b.to_data());
    let same = |x: &datafusion::arrow::buffer::Buffer, y: &datafusion::arrow::buffer::Buffer| {
        x.as_ptr() == y.as_ptr() && x.len() == y.len()
    };
    a.offset() == b.offset()
        && a.buffers().len() == b.buffers().len()
        && a.buffers().iter().zip(b.buffers()).all(|(x, y)| same(x, y))
        && match (a.nulls(), b.nulls()) {
            (None, None) => true,
            (Some(x), Some(y)) => same(x.buffer(), y.buffer()) && x.offset() == y.offset(),
            _ => false,
        }
}

/// Merges output partition `partition`'s groups of every input table.
fn merge_tables(
    tables: &[Arc<Built>],
    kinds: &[AggKind],
    partition: usize,
    partitions: usize,
    reservation: &MemoryReservation,
) -> Result<GroupTable> {
    let part = |hash: u64| (hash % partitions as u64) as usize;
    let sources: Vec<Vec<u32>> = tables
        .iter()
        .map(|built| {
            (0..built.table.len() as u32).filter(|&g| part(built.table.hashes[g as usize]) == partition).collect()
        })
        .collect();
    // Sized once for every candidate group: no regrowth, and the index is probed with prefetching as in `intern`.
    let mut merged = GroupTable::with_capacity(kinds, sources.iter().map(Vec::len).sum())?;
    reservation.try_resize(merged.allocated_size())?;
    let mut ids = Vec::new();
    for (t, (built, sources)) in tables.iter().zip(&sources).enumerate() {
        let table = &built.table;
        ids.clear();
        for (k, &g) in sources.iter().enumerate() {
            if let Some(&ahead) = sources.get(k + PREFETCH_AHEAD) {
                merged.prefetch(table.hashes[ahead as usize]);
            }
            let hash = table.hashes[g as usize];
            let id = match table.key(g as usize) {
                // The first table's keys are distinct and the merged table is empty before them: no comparisons.
                Some(bytes) if t == 0 => merged.insert_new(hash, bytes)?,
                Some(bytes) => merged.find_or_insert(hash, bytes)?,
                None => merged.null_group(hash)?,
            };
            ids.push(id);
        }
        let groups = merged.len();
        for (into, from) in merged.accs.iter_mut().zip(&table.accs) {
            into.resize(groups);
            into.merge(from, sources, &ids)?;
        }
        reservation.try_resize(merged.allocated_size())?;
    }
    Ok(merged)
}

/// Per-group state of one aggregate, indexed by group id.
enum Acc {
    Count(Vec<i64>),
    SumF64 {
        sums: Vec<f64>,
        seen: Vec<bool>,
    },
    SumI64 {
        sums: Vec<i64>,
        seen: Vec<bool>,
    },
    Generic {
        expr: Arc<AggregateFunctionExpr>,
        /// Until [`Acc::seal`]; afterwards its state is in `state`. (In a mutex only so that sealed tables can be
        /// shared between output partitions: every use has the table to itself.)
        acc: Option<Mutex<Box<dyn GroupsAccumulator>>>,
        /// The accumulator's state once the input is done, one row per group: what the merge takes rows of.
        state: Vec<ArrayRef>,
        groups: usize,
    },
}

impl fmt::Debug for Acc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Acc::Count(c) => write!(f, "Count({} groups)", c.len()),
            Acc::SumF64 { sums, .. } => write!(f, "SumF64({} groups)", sums.len()),
            Acc::SumI64 { sums, .. } => write!(f, "SumI64({} groups)", sums.len()),
            Acc::Generic { expr, groups, .. } => write!(f, "{}({groups} groups)", expr.name()),
        }
    }
}

impl Acc {
    fn new(kind: &AggKind) -> Result<Acc> {
        Ok(match kind {
            AggKind::Count => Acc::Count(Vec::new()),
            AggKind::SumF64 => Acc::SumF64 { sums: Vec::new(), seen: Vec::new() },
            AggKind::SumI64 => Acc::SumI64 { sums: Vec::new(), seen: Vec::new() },
            AggKind::Generic(expr) => Acc::Generic {
                acc: Some(Mutex::new(expr.create_groups_accumulator()?)),
                expr: expr.clone(),
                state: Vec::new(),
                groups: 0,
            },
        })
    }

    fn resize(&mut self, groups: usize) {
        match self {
            Acc::Count(counts) => counts.resize(groups, 0),
            Acc::SumF64 { sums, seen } => {
                sums.resize(groups, 0.0);
                seen.resize(groups, false);
            }
            Acc::SumI64 { sums, seen } => {
                sums.resize(groups, 0);
                seen.resize(groups, false);
            }
            Acc::Generic { groups: n, .. } => *n = groups,
        }
    }

    fn allocated_size(&self) -> usize {
        match self {
            Acc::Count(counts) => counts.capacity() * 8,
            Acc::SumF64 { sums, seen } => sums.capacity() * 8 + seen.capacity(),
            Acc::SumI64 { sums, seen } => sums.capacity() * 8 + seen.capacity(),
            Acc::Generic { acc, state, .. } => {
                let state_bytes: usize = state.iter().map(|s| s.get_array_memory_size()).sum();
                acc.as_ref().map_or(0, |a| a.lock().size()) + state_bytes
            }
        }
    }

    /// Adds one batch's rows to the groups `ids` names (one id per row; `wide_ids` the same as `usize`, for a
    /// generic accumulator); `arg` is the aggregate's first argument and `groups` the table's group count.
    fn update(
        &mut self,
        batch: &RecordBatch,
        arg: &Arc<dyn PhysicalExpr>,
        ids: &[u32],
        wide_ids: &[usize],
        groups: usize,
    ) -> Result<()> {
        if let Acc::Generic { expr, acc: Some(acc), .. } = self {
            let rows = batch.num_rows();
            let args =
                expr.expressions().iter().map(|e| e.evaluate(batch)?.into_array(rows)).collect::<Result<Vec<_>>>()?;
            return acc.get_mut().update_batch(&args, wide_ids, None, groups);
        }
        match (self, arg.evaluate(batch)?) {
            (Acc::Count(counts), ColumnarValue::Scalar(value)) => {
                if !value.is_null() {
                    for &g in ids {
                        counts[g as usize] += 1;
                    }
                }
            }
            (Acc::Count(counts), ColumnarValue::Array(values)) => match values.logical_nulls() {
                None => {
                    for &g in ids {
                        counts[g as usize] += 1;
                    }
                }
                Some(nulls) => {
                    for (&g, valid) in ids.iter().zip(nulls.iter()) {
                        counts[g as usize] += valid as i64;
                    }
                }
            },
            (Acc::SumF64 { sums, seen }, arg) => {
                let values = arg.into_array(ids.len())?;
                let values = values.as_primitive::<Float64Type>();
                sum_into(sums, seen, values.values(), values.nulls(), ids, |a, b| a + b);
            }
            (Acc::SumI64 { sums, seen }, arg) => {
                let values = arg.into_array(ids.len())?;
                let values = values.as_primitive::<Int64Type>();
                sum_into(sums, seen, values.values(), values.nulls(), ids, i64::wrapping_add);
            }
            (Acc::Generic { expr, .. }, _) => {
                return internal_err!("StringGroupAggregateExec: {} updated after its input ended", expr.name());
            }
        }
        Ok(())
    }

    /// Ends an input table's updates: a generic accumulator hands over its state, which merges read.
    fn seal(&mut self) -> Result<()> {
        if let Acc::Generic { acc, state, .. } = self
            && let Some(acc) = acc.take()
        {
            *state = acc.into_inner().state(EmitTo::All)?;
        }
        Ok(())
    }

    /// Adds the states of groups `sources` of `other` into this table's groups `ids`.
    fn merge(&mut self, other: &Acc, sources: &[u32], ids: &[u32]) -> Result<()> {
        if let (Acc::Generic { acc: Some(acc), groups, .. }, Acc::Generic { state, .. }) = (&mut *self, other) {
            let rows = UInt32Array::from(sources.to_vec());
            let taken = state.iter().map(|s| take(s, &rows, None)).collect::<Result<Vec<_>, _>>()?;
            let ids: Vec<usize> = ids.iter().map(|&g| g as usize).collect();
            return acc.get_mut().merge_batch(&taken, &ids, *groups);
        }
        match (self, other) {
            (Acc::Count(into), Acc::Count(from)) => {
                for (&s, &g) in sources.iter().zip(ids) {
                    into[g as usize] += from[s as usize];
                }
            }
            (Acc::SumF64 { sums, seen }, Acc::SumF64 { sums: from, seen: from_seen }) => {
                for (&s, &g) in sources.iter().zip(ids) {
                    if from_seen[s as usize] {
                        sums[g as usize] += from[s as usize];
                        seen[g as usize] = true;
                    }
                }
            }
            (Acc::SumI64 { sums, seen }, Acc::SumI64 { sums: from, seen: from_seen }) => {
                for (&s, &g) in sources.iter().zip(ids) {
                    if from_seen[s as usize] {
                        sums[g as usize] = sums[g as usize].wrapping_add(from[s as usize]);
                        seen[g as usize] = true;
                    }
                }
            }
            _ => return internal_err!("StringGroupAggregateExec merged tables of different aggregates"),
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<ArrayRef> {
        Ok(match self {
            Acc::Count(counts) => Arc::new(Int64Array::from(counts.clone())),
            Acc::SumF64 { sums, seen } => Arc::new(Float64Array::new(
                sums.clone().into(),
                Some(NullBuffer::new(BooleanBuffer::from(seen.as_slice()))),
            )),
            Acc::SumI64 { sums, seen } => Arc::new(Int64Array::new(
                sums.clone().into(),
                Some(NullBuffer::new(BooleanBuffer::from(seen.as_slice()))),
            )),
            Acc::Generic { acc: Some(acc), .. } => acc.get_mut().evaluate(EmitTo::All)?,
            Acc::Generic { expr, .. } => {
                return internal_err!("StringGroupAggregateExec: {} evaluated after its state was taken", expr.name());
            }
        })
    }
}

fn sum_into<T: Copy>(
    sums: &mut [T],
    seen: &mut [bool],
    values: &[T],
    nulls: Option<&NullBuffer>,
    ids: &[u32],
    add: impl Fn(T, T) -> T,
) {
    match nulls {
        None => {
            for (&g, &v) in ids.iter().zip(values) {
                let g = g as usize;
                sums[g] = add(sums[g], v);
                seen[g] = true;
            }
        }
        Some(nulls) => {
            for i in nulls.valid_indices() {
                let g = ids[i] as usize;
                sums[g] = add(sums[g], values[i]);
                seen[g] = true;
            }
        }
    }
}

const TAG: u64 = 0xFFFF_FFFF_0000_0000;
/// How many rows ahead of the probe the index slot is prefetched.
const PREFETCH_AHEAD: usize = 12;
/// Key lengths from this one up are read from `GroupTable::ends` instead of the slot.
const LONG: u64 = 0xFFFF;

/// One entry of the index: enough to reject or confirm a key with one read of the key bytes.
#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    /// 0 when empty, else the group's hash in the high 32 bits and `id + 1` in the low 32.
    meta: u64,
    /// Where the key's bytes start (high 48 bits) and its length (low 16 bits, `LONG` for longer keys).
    loc: u64,
}

/// Groups keyed by string bytes: an open-addressing index (linear probing, at most half full) over group ids,
/// with each group's hash and its key bytes stored contiguously.
#[derive(Debug)]
struct GroupTable {
    slots: Vec<Slot>,
    /// `64 - log2(slots.len())`: slot of a hash = (hash * odd constant) >> shift.
    shift: u32,
    /// Per group: its hash (DataFusion's repartition hash).
    hashes: Vec<u64>,
    /// Group `g`'s key is `bytes[ends[g - 1]..ends[g]]` (from 0 for the first).
    ends: Vec<usize>,
    bytes: Vec<u8>,
    /// The group holding NULL keys, if any (its bytes are empty; it is not in the index).
    null: Option<u32>,
    accs: Vec<Acc>,
}

impl GroupTable {
    fn new(kinds: &[AggKind]) -> Result<GroupTable> {
        GroupTable::with_capacity(kinds, 0)
    }

    /// A table that holds `groups` groups without growing its index.
    fn with_capacity(kinds: &[AggKind], groups: usize) -> Result<GroupTable> {
        let slots = (groups * 2).next_power_of_two().max(1024);
        Ok(GroupTable {
            slots: vec![Slot::default(); slots],
            shift: 64 - slots.trailing_zeros(),
            hashes: Vec::new(),
            ends: Vec::new(),
            bytes: Vec::new(),
            null: None,
            accs: kinds.iter().map(Acc::new).collect::<Result<_>>()?,
        })
    }

    fn len(&self) -> usize {
        self.hashes.len()
    }

    fn allocated_size(&self) -> usize {
        self.slots.capacity() * size_of::<Slot>()
            + self.hashes.capacity() * 8
            + self.ends.capacity() * 8
            + self.bytes.capacity()
            + self.accs.iter().map(Acc::allocated_size).sum::<usize>()
    }

    /// The key of group `g`, `None` for the NULL group.
    fn key(&self, g: usize) -> Option<&[u8]> {
        if self.null == Some(g as u32) {
            return None;
        }
        let start = if g == 0 { 0 } else { self.ends[g - 1] };
        Some(&self.bytes[start..self.ends[g]])
    }

    fn slot_of(&self, hash: u64) -> usize {
        (hash.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> self.shift) as usize
    }

    /// Finds the group ids of every row of `keys` (rows' hashes in `hashes`), adding groups for new keys.
    fn intern(&mut self, keys: &ArrayRef, hashes: &[u64], ids: &mut Vec<u32>) -> Result<()> {
        ids.reserve(keys.len());
        match keys.data_type() {
            DataType::Utf8View => {
                let keys = keys.as_string_view();
                self.intern_rows(keys.nulls(), hashes, ids, |i| unsafe { keys.value_unchecked(i) }.as_bytes())
            }
            DataType::Utf8 => {
                let keys = keys.as_string::<i32>();
                self.intern_rows(keys.nulls(), hashes, ids, |i| unsafe { keys.value_unchecked(i) }.as_bytes())
            }
            DataType::LargeUtf8 => {
                let keys = keys.as_string::<i64>();
                self.intern_rows(keys.nulls(), hashes, ids, |i| unsafe { keys.value_unchecked(i) }.as_bytes())
            }
            other => internal_err!("StringGroupAggregateExec cannot group by {other}"),
        }?;
        self.resize_accs();
        Ok(())
    }

    /// Gives every aggregate a state for every group.
    fn resize_accs(&mut self) {
        for acc in &mut self.accs {
            acc.resize(self.hashes.len());
        }
    }

    fn intern_rows<'a>(
        &mut self,
        nulls: Option<&NullBuffer>,
        hashes: &[u64],
        ids: &mut Vec<u32>,
        key: impl Fn(usize) -> &'a [u8],
    ) -> Result<()> {
        // Probing is bound by the first read of a random slot once the index outgrows the cache; the hashes of the
        // whole batch are known, so fetch the slot a few rows ahead while this row is probed.
        for (i, &hash) in hashes.iter().enumerate() {
            if let Some(&ahead) = hashes.get(i + PREFETCH_AHEAD) {
                self.prefetch(ahead);
            }
            let id = if nulls.is_some_and(|n| n.is_null(i)) {
                self.null_group(hash)?
            } else {
                // SAFETY (in `key`): `i` < the batch's row count, the length of `hashes`.
                self.find_or_insert(hash, key(i))?
            };
            ids.push(id);
        }
        Ok(())
    }

    #[inline]
    fn prefetch(&self, hash: u64) {
        #[cfg(target_arch = "x86_64")]
        {
            let slot = self.slots.as_ptr().wrapping_add(self.slot_of(hash));
            // SAFETY: a prefetch is a hint that never faults; `slot` is within the index.
            unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(slot.cast()) };
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = hash;
    }

    fn null_group(&mut self, hash: u64) -> Result<u32> {
        if let Some(id) = self.null {
            return Ok(id);
        }
        let id = self.push(hash, &[])?;
        self.null = Some(id);
        Ok(id)
    }

    #[inline]
    fn find_or_insert(&mut self, hash: u64, key: &[u8]) -> Result<u32> {
        let mask = self.slots.len() - 1;
        let tag = hash & TAG;
        let len = (key.len() as u64).min(LONG);
        let mut slot = self.slot_of(hash);
        loop {
            let entry = self.slots[slot];
            if entry.meta == 0 {
                break;
            }
            if entry.meta & TAG == tag && entry.loc & LONG == len {
                let g = (entry.meta as u32 - 1) as usize;
                let start = (entry.loc >> 16) as usize;
                let stored =
                    if len < LONG { &self.bytes[start..start + key.len()] } else { &self.bytes[start..self.ends[g]] };
                if bytes_eq(stored, key) {
                    return Ok(g as u32);
                }
            }
            slot = (slot + 1) & mask;
        }
        let start = self.bytes.len() as u64;
        let id = self.push(hash, key)?;
        self.slots[slot] = Slot { meta: tag | (id as u64 + 1), loc: (start << 16) | len };
        if self.hashes.len() * 2 > self.slots.len() {
            self.grow();
        }
        Ok(id)
    }

    /// Adds a group for a key known not to be in the table yet.
    fn insert_new(&mut self, hash: u64, key: &[u8]) -> Result<u32> {
        let mask = self.slots.len() - 1;
        let mut slot = self.slot_of(hash);
        while self.slots[slot].meta != 0 {
            slot = (slot + 1) & mask;
        }
        let start = self.bytes.len() as u64;
        let id = self.push(hash, key)?;
        self.slots[slot] =
            Slot { meta: (hash & TAG) | (id as u64 + 1), loc: (start << 16) | (key.len() as u64).min(LONG) };
        if self.hashes.len() * 2 > self.slots.len() {
            self.grow();
        }
        Ok(id)
    }

    /// Adds a group (not yet in the index).
    fn push(&mut self, hash: u64, key: &[u8]) -> Result<u32> {
        let id = self.hashes.len();
        if id >= u32::MAX as usize - 1 || self.bytes.len() + key.len() >= 1 << 48 {
            return Err(DataFusionError::ResourcesExhausted(
                "StringGroupAggregateExec: more than 4 billion groups or 256 TiB of keys".into(),
            ));
        }
        self.hashes.push(hash);
        self.bytes.extend_from_slice(key);
        self.ends.push(self.bytes.len());
        Ok(id as u32)
    }

    fn grow(&mut self) {
        let capacity = self.slots.len() * 2;
        self.slots = vec![Slot::default(); capacity];
        self.shift = 64 - capacity.trailing_zeros();
        let mask = capacity - 1;
        let mut start = 0;
        for (g, &hash) in self.hashes.iter().enumerate() {
            let end = self.ends[g];
            if self.null != Some(g as u32) {
                let mut slot = self.slot_of(hash);
                while self.slots[slot].meta != 0 {
                    slot = (slot + 1) & mask;
                }
                self.slots[slot] = Slot {
                    meta: (hash & TAG) | (g as u64 + 1),
                    loc: ((start as u64) << 16) | ((end - start) as u64).min(LONG),
                };
            }
            start = end;
        }
    }

    /// The groups as result batches of at most `batch_size` rows, in `schema`.
    fn into_batches(mut self, schema: &SchemaRef, batch_size: usize) -> Result<Vec<RecordBatch>> {
        let groups = self.len();
        if groups == 0 {
            return Ok(Vec::new());
        }
        let accs: Vec<ArrayRef> = self.accs.iter_mut().map(Acc::finish).collect::<Result<_>>()?;
        let batch_size = batch_size.max(1);
        (0..groups)
            .step_by(batch_size)
            .map(|start| {
                // Each batch gets keys of its own: a dictionary holding every group would be re-encoded whole by
                // each consumer that converts rows per batch (a TopK above, `arrow-row` hydrates dictionaries).
                let groups = start..(start + batch_size).min(groups);
                let mut columns = vec![self.key_array(schema.field(0).data_type(), groups.clone())?];
                columns.extend(accs.iter().map(|a| a.slice(groups.start, groups.len())));
                Ok(RecordBatch::try_new(schema.clone(), columns)?)
            })
            .collect()
    }

    /// The keys of `groups`, in group order, as an array of `key_type`.
    fn key_array(&self, key_type: &DataType, groups: std::ops::Range<usize>) -> Result<ArrayRef> {
        let rows = groups.len();
        let bytes_len = self.key_bytes(groups.clone()).len();
        Ok(match key_type {
            DataType::Utf8View => {
                let mut b = StringViewBuilder::with_capacity(rows);
                self.append_keys(groups, |k| b.append_option(k))?;
                Arc::new(b.finish()) as ArrayRef
            }
            DataType::Utf8 => {
                let mut b = StringBuilder::with_capacity(rows, bytes_len);
                self.append_keys(groups, |k| b.append_option(k))?;
                Arc::new(b.finish())
            }
            DataType::LargeUtf8 => {
                let mut b = LargeStringBuilder::with_capacity(rows, bytes_len);
                self.append_keys(groups, |k| b.append_option(k))?;
                Arc::new(b.finish())
            }
            DataType::Dictionary(key, value) if **key == DataType::Int32 => {
                // Every group's key is distinct: the batch's groups are its dictionary, row `i` is key `i`.
                let values = self.key_array(value, groups.clone())?;
                let keys: Int32Array =
                    groups.enumerate().map(|(i, g)| (self.null != Some(g as u32)).then_some(i as i32)).collect();
                Arc::new(DictionaryArray::<Int32Type>::try_new(keys, values)?)
            }
            other => {
                return internal_err!("StringGroupAggregateExec cannot output keys as {other}");
            }
        })
    }

    /// The stored key bytes of `groups`, all together.
    fn key_bytes(&self, groups: std::ops::Range<usize>) -> &[u8] {
        if groups.is_empty() {
            return &[];
        }
        let start = if groups.start == 0 { 0 } else { self.ends[groups.start - 1] };
        &self.bytes[start..self.ends[groups.end - 1]]
    }

    fn append_keys(&self, groups: std::ops::Range<usize>, mut append: impl FnMut(Option<&str>)) -> Result<()> {
        for g in groups {
            match self.key(g) {
                None => append(None),
                // SAFETY: the bytes were copied whole from string arrays, which hold valid UTF-8 (a key is never
                // split: `key` returns exactly the bytes one value put there).
                Some(bytes) => append(Some(unsafe { std::str::from_utf8_unchecked(bytes) })),
            }
        }
        Ok(())
    }
}

/// `a == b`, with the 8-16-byte keys typical of ids compared as two overlapping words instead of a `memcmp` call.
#[inline]
fn bytes_eq(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    if (8..=16).contains(&n) {
        let word = |s: &[u8], at: usize| u64::from_ne_bytes(s[at..at + 8].try_into().expect("8 bytes"));
        return word(a, 0) == word(b, 0) && word(a, n - 8) == word(b, n - 8);
    }
    a == b
}
