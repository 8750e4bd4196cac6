//! How tailscope's SQL travels on an Apache DataFusion Ballista cluster (`tailscope scheduler`, `tailscope
//! executor`, `[query] cluster`).
//!
//! Ballista sends a statement's logical plan from the client to the scheduler, which plans it physically with its
//! own session and sends each stage's physical plan to the executors. What of tailscope's is not DataFusion's own
//! travels through the two codecs here:
//!
//! - [`TablesCodec`] (logical): a table of tailscope's travels as its name and the projects the caller may see
//!   ([`ClusterTable`]), never as files: the scheduler opens its own [`SignalTable`] over the catalog it keeps
//!   fresh, in [`SignalTable::portable`] mode, whose scan is DataFusion's own Parquet scan and so travels to the
//!   executors as it is. A caller's visibility is in the bytes (a missing or unreadable one is an error, never
//!   "every project"), so project scoping holds on the cluster.
//! - [`OperatorsCodec`] (physical): [`UnnestInputGuardExec`], the bound on what `unnest` may produce, so the guard
//!   holds on the executors too.
//!
//! Views and table functions are expanded into the logical plan on the client; functions travel by name and are
//! found in the scheduler's and executors' registries, which hold the same bounded functions as one node
//! ([`Engine::function_registry`](crate::Engine)). `StringGroupAggregateExec` is not planned on a cluster: it
//! merges per-partition hash tables inside one process, which is what a shuffle between executors does instead.

use std::sync::Arc;

use ballista_core::serde::{BallistaLogicalExtensionCodec, BallistaPhysicalExtensionCodec};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::TableProvider;
use datafusion::common::{DataFusionError, Result, TableReference};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{AggregateUDF, Extension, LogicalPlan};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::unnest::ListUnnest;
use datafusion_proto::logical_plan::LogicalExtensionCodec;
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use serde::{Deserialize, Serialize};
use tailscope_core::catalog::Catalog;
use tailscope_core::projects::{Project, Visibility};
use tailscope_core::schema::Signal;

use crate::quantile::{QUANTILE_EXACT_SHARED, quantiles_exact_shared_udaf};
use crate::table::{ScanCounters, SignalTable};
use crate::unnest_guard::UnnestInputGuardExec;

/// The first bytes of every payload of these codecs. Ballista's own codecs decode their payloads as protobuf; a
/// payload starting with `T` (0x54: field 10, wire type 4, which protobuf never writes) cannot be one of theirs.
const TABLE_TAG: &[u8] = b"TS-TABLE-1:";
const GUARD_TAG: &[u8] = b"TS-UNNEST-GUARD-1:";
/// The largest payload these codecs read: a table's name and a key's projects (at most a few KB in practice).
const MAX_PAYLOAD_BYTES: usize = 1 << 20;

/// A tailscope table as it travels in a plan.
#[derive(Debug, Serialize, Deserialize)]
struct ClusterTable {
    table: String,
    /// The projects the caller may see; `None`: every project.
    visible: Option<Vec<String>>,
}

/// The side of the cluster a codec is on: the scheduler decodes tables into scans over its catalog; a client only
/// encodes them.
#[derive(Debug, Clone)]
enum Side {
    Client { visible: Visibility },
    Scheduler { catalog: Catalog, counters: Arc<ScanCounters> },
}

/// The logical codec: tailscope's tables (see the module documentation), Ballista's own nodes through Ballista's.
#[derive(Debug, Clone)]
pub struct TablesCodec {
    side: Side,
    inner: Arc<BallistaLogicalExtensionCodec>,
}

impl TablesCodec {
    /// The codec of a client whose statement may see `visible`: it encodes every table with it.
    pub fn client(visible: Visibility) -> TablesCodec {
        TablesCodec { side: Side::Client { visible }, inner: Arc::default() }
    }

    /// The scheduler's codec: tables decode into portable scans over `catalog`.
    pub fn scheduler(catalog: Catalog, counters: Arc<ScanCounters>) -> TablesCodec {
        TablesCodec { side: Side::Scheduler { catalog, counters }, inner: Arc::default() }
    }
}

fn payload<'a>(buf: &'a [u8], tag: &[u8], what: &str) -> Result<Option<&'a [u8]>> {
    let Some(rest) = buf.strip_prefix(tag) else {
        return Ok(None);
    };
    if rest.len() > MAX_PAYLOAD_BYTES {
        return Err(DataFusionError::Plan(format!(
            "a plan's {what} is {} bytes, more than the {MAX_PAYLOAD_BYTES} a tailscope node reads",
            rest.len()
        )));
    }
    Ok(Some(rest))
}

/// The aggregates of tailscope's that no registry holds (they are planned, never written), by name.
fn planned_udaf(name: &str) -> Option<Arc<AggregateUDF>> {
    (name == QUANTILE_EXACT_SHARED).then(|| Arc::new(quantiles_exact_shared_udaf()))
}

impl LogicalExtensionCodec for TablesCodec {
    fn try_decode_udaf(&self, name: &str, buf: &[u8]) -> Result<Arc<AggregateUDF>> {
        match planned_udaf(name) {
            Some(udaf) => Ok(udaf),
            None => self.inner.try_decode_udaf(name, buf),
        }
    }

    fn try_decode(&self, buf: &[u8], inputs: &[LogicalPlan], ctx: &TaskContext) -> Result<Extension> {
        self.inner.try_decode(buf, inputs, ctx)
    }

    fn try_encode(&self, node: &Extension, buf: &mut Vec<u8>) -> Result<()> {
        self.inner.try_encode(node, buf)
    }

    fn try_decode_table_provider(
        &self,
        buf: &[u8],
        table_ref: &TableReference,
        schema: SchemaRef,
        ctx: &TaskContext,
    ) -> Result<Arc<dyn TableProvider>> {
        let Some(json) = payload(buf, TABLE_TAG, "table")? else {
            return self.inner.try_decode_table_provider(buf, table_ref, schema, ctx);
        };
        let Side::Scheduler { catalog, counters } = &self.side else {
            return Err(DataFusionError::Plan(format!(
                "table {table_ref} arrived at a node that does not plan scans; only a scheduler decodes tables"
            )));
        };
        let table: ClusterTable = serde_json::from_slice(json)
            .map_err(|e| DataFusionError::Plan(format!("table {table_ref} in the plan is not readable: {e}")))?;
        let signal = Signal::ALL.into_iter().find(|s| s.table_name() == table.table).ok_or_else(|| {
            DataFusionError::Plan(format!("the plan names table {:?}, which tailscope does not have", table.table))
        })?;
        let visible = match table.visible {
            None => Visibility::All,
            Some(names) => Visibility::only(
                names
                    .iter()
                    .map(|n| Project::parse(n))
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(|e| DataFusionError::Plan(format!("table {table_ref}: invalid project: {e}")))?,
            ),
        };
        let scan = SignalTable::new(signal, catalog.clone(), counters.clone())
            .map_err(|e| DataFusionError::Plan(format!("cannot resolve the data dir: {e}")))?
            .portable(visible);
        if scan.schema() != schema {
            return Err(DataFusionError::Plan(format!(
                "table {table_ref} has other columns on the client than on this scheduler: run the same tailscope \
                 version on every node"
            )));
        }
        Ok(Arc::new(scan))
    }

    fn try_encode_table_provider(
        &self,
        table_ref: &TableReference,
        node: Arc<dyn TableProvider>,
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        let Some(table) = node.downcast_ref::<SignalTable>() else {
            if node.downcast_ref::<crate::alerts::AlertsTable>().is_some() {
                return Err(DataFusionError::Plan(
                    "the alerts table is each collector's own (its data dir): query it on the collector, not on the \
                     cluster"
                        .into(),
                ));
            }
            return self.inner.try_encode_table_provider(table_ref, node, buf);
        };
        let visible = match &self.side {
            Side::Client { visible } => visible,
            Side::Scheduler { .. } => table.visibility(),
        };
        let table = ClusterTable {
            table: table.signal().table_name().to_string(),
            visible: match visible {
                Visibility::All => None,
                Visibility::Only(projects) => Some(projects.iter().map(|p| p.as_str().to_string()).collect()),
            },
        };
        buf.extend_from_slice(TABLE_TAG);
        serde_json::to_writer(buf, &table).map_err(|e| DataFusionError::Internal(format!("encoding a table: {e}")))
    }
}

/// The physical codec: [`UnnestInputGuardExec`], Ballista's own operators through Ballista's.
#[derive(Debug, Default)]
pub struct OperatorsCodec {
    inner: BallistaPhysicalExtensionCodec,
}

/// An [`UnnestInputGuardExec`] as it travels; its input travels as the node's child.
#[derive(Debug, Serialize, Deserialize)]
struct GuardNode {
    /// `(index in the input's schema, depth)` of each list unnested.
    lists: Vec<(usize, usize)>,
    max_output_bytes: usize,
}

impl PhysicalExtensionCodec for OperatorsCodec {
    fn try_decode_udaf(&self, name: &str, buf: &[u8]) -> Result<Arc<AggregateUDF>> {
        match planned_udaf(name) {
            Some(udaf) => Ok(udaf),
            None => self.inner.try_decode_udaf(name, buf),
        }
    }

    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let Some(json) = payload(buf, GUARD_TAG, "unnest guard")? else {
            return self.inner.try_decode(buf, inputs, ctx, proto_converter);
        };
        let node: GuardNode = serde_json::from_slice(json)
            .map_err(|e| DataFusionError::Plan(format!("an unnest guard in the plan is not readable: {e}")))?;
        let [input] = inputs else {
            return Err(DataFusionError::Plan(format!(
                "an unnest guard takes one input, the plan gave {}",
                inputs.len()
            )));
        };
        let width = input.schema().fields().len();
        if let Some((index, _)) = node.lists.iter().find(|(index, _)| *index >= width) {
            return Err(DataFusionError::Plan(format!(
                "an unnest guard names column {index} of an input of {width} columns"
            )));
        }
        let lists = node
            .lists
            .into_iter()
            .map(|(index_in_input_schema, depth)| ListUnnest { index_in_input_schema, depth })
            .collect();
        Ok(Arc::new(UnnestInputGuardExec::new(input.clone(), lists, node.max_output_bytes)))
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<()> {
        let Some(guard) = node.downcast_ref::<UnnestInputGuardExec>() else {
            return self.inner.try_encode(node, buf, proto_converter);
        };
        let node = GuardNode {
            lists: guard.lists().iter().map(|l| (l.index_in_input_schema, l.depth)).collect(),
            max_output_bytes: guard.max_output_bytes(),
        };
        buf.extend_from_slice(GUARD_TAG);
        serde_json::to_writer(buf, &node)
            .map_err(|e| DataFusionError::Internal(format!("encoding an unnest guard: {e}")))
    }
}
