//! How tailscope's SQL travels on the cluster: Ballista's codecs, extended with tailscope's tables and operators.
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
//! ([`query::Engine::job_state`]). `StringGroupAggregateExec` is not planned on a cluster: it
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

use query::{
    AlertsTable, QUANTILE_EXACT_SHARED, ScanCounters, SignalTable, UnnestInputGuardExec, quantiles_exact_shared_udaf,
};

/// The first bytes of every payload of these codecs. Ballista's own codecs decode their payloads as protobuf; a
/// payload starting with `T` (0x54: field 10, wire type 4, which protobuf never writes) cannot be one of theirs.
const TABLE_TAG: &[u8] = b"TS-TABLE-1:";
const GUARD_TAG: &[u8] = b"TS-UNNEST-GUARD-1:";
/// The largest payload these codecs read: a table's name and a key's projects (at most a few KB in practice).
const MAX_PAYLOAD_BYTES: usize = 1 << 20;

/// A tailscope table as it travels in a plan. Every field is required: a payload without the caller's projects
/// is refused, never read as "every project".
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterTable {
    table: String,
    /// Whether the caller sees every project.
    all_projects: bool,
    /// The projects the caller sees, when not all.
    projects: Vec<String>,
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
        let visible = match (table.all_projects, table.projects.is_empty()) {
            (true, true) => Visibility::All,
            (true, false) => {
                return Err(DataFusionError::Plan(format!(
                    "table {table_ref} in the plan names every project and some projects at once"
                )));
            }
            (false, _) => Visibility::only(
                table
                    .projects
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
            if node.downcast_ref::<AlertsTable>().is_some() {
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
            all_projects: visible.is_all(),
            projects: match visible {
                Visibility::All => Vec::new(),
                Visibility::Only(projects) => projects.iter().map(|p| p.as_str().to_string()).collect(),
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

#[cfg(test)]
mod tests {
    use datafusion::physical_plan::empty::EmptyExec;
    use datafusion_proto::physical_plan::DefaultPhysicalProtoConverter;

    use super::*;

    fn spans(catalog: &Catalog) -> Arc<dyn TableProvider> {
        Arc::new(SignalTable::new(Signal::Spans, catalog.clone(), Arc::default()).unwrap())
    }

    fn scheduler(dir: &std::path::Path) -> TablesCodec {
        TablesCodec::scheduler(Catalog::new(dir), Arc::default())
    }

    fn decode(codec: &TablesCodec, buf: &[u8]) -> Result<Arc<dyn TableProvider>> {
        let schema = query::table_schema(Signal::Spans);
        codec.try_decode_table_provider(buf, &TableReference::bare("spans"), schema, &TaskContext::default())
    }

    fn payload_of(json: &str) -> Vec<u8> {
        [TABLE_TAG, json.as_bytes()].concat()
    }

    fn error_of(result: Result<Arc<dyn TableProvider>>) -> String {
        match result {
            Ok(_) => panic!("decoded"),
            Err(e) => e.to_string(),
        }
    }

    /// A client's table arrives at the scheduler with the client's projects, whatever the scheduler's session says.
    #[test]
    fn a_table_travels_with_its_callers_projects() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::new(dir.path());
        let a = Project::parse("a").unwrap();
        for visible in [Visibility::All, Visibility::only([a.clone()]), Visibility::only([])] {
            let mut buf = Vec::new();
            let client = TablesCodec::client(visible.clone());
            client.try_encode_table_provider(&TableReference::bare("spans"), spans(&catalog), &mut buf).unwrap();
            assert!(buf.starts_with(TABLE_TAG));
            let table = decode(&scheduler(dir.path()), &buf).unwrap();
            let table = table.downcast_ref::<SignalTable>().unwrap();
            assert_eq!(table.signal(), Signal::Spans);
            assert_eq!(table.visibility(), &visible);
        }
    }

    /// Hostile or broken payloads are refused with the reason; none is read as "every project".
    #[test]
    fn a_bad_table_payload_is_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let codec = scheduler(dir.path());
        let cases = [
            (r#"{"table":"spans"}"#, "missing field"),
            (r#"{"table":"spans","all_projects":false}"#, "missing field"),
            (r#"{"table":"spans","all_projects":true,"projects":["a"]}"#, "every project and some"),
            (r#"{"table":"secrets","all_projects":true,"projects":[]}"#, "does not have"),
            (r#"{"table":"spans","all_projects":false,"projects":["../etc"]}"#, "invalid project"),
            (r#"{"table":"spans","all_projects":false,"projects":[],"extra":1}"#, "unknown field"),
            ("not json", "not readable"),
        ];
        for (json, want) in cases {
            let error = error_of(decode(&codec, &payload_of(json)));
            assert!(error.contains(want), "{json}: {error}");
        }
        let huge = payload_of(&"x".repeat(MAX_PAYLOAD_BYTES + 1));
        assert!(error_of(decode(&codec, &huge)).contains("more than"));
        // A table of another version's columns.
        let buf = payload_of(r#"{"table":"spans","all_projects":true,"projects":[]}"#);
        let other = query::table_schema(Signal::Logs);
        let refused =
            codec.try_decode_table_provider(&buf, &TableReference::bare("spans"), other, &TaskContext::default());
        assert!(error_of(refused).contains("same tailscope version"));
        // Only a scheduler decodes tables.
        let client = TablesCodec::client(Visibility::All);
        let buf = payload_of(r#"{"table":"spans","all_projects":true,"projects":[]}"#);
        assert!(error_of(decode(&client, &buf)).contains("only a scheduler"));
        // Bytes that are not ours go to Ballista's codec, which refuses them without panicking.
        assert!(decode(&codec, b"\x0a\xff\xff").is_err());
    }

    /// The alerts table is refused by name: it is each collector's own.
    #[test]
    fn the_alerts_table_does_not_travel() {
        let dir = tempfile::tempdir().unwrap();
        let alerts: Arc<dyn TableProvider> = Arc::new(AlertsTable::new(dir.path()));
        let mut buf = Vec::new();
        let error = TablesCodec::client(Visibility::All)
            .try_encode_table_provider(&TableReference::bare("alerts"), alerts, &mut buf)
            .unwrap_err();
        assert!(error.to_string().contains("each collector's own"), "{error}");
    }

    /// The unnest guard travels with its lists and bound; a guard naming a column its input lacks is refused.
    #[test]
    fn the_unnest_guard_travels_and_a_bad_one_is_refused() {
        let codec = OperatorsCodec::default();
        let converter = DefaultPhysicalProtoConverter {};
        let input: Arc<dyn ExecutionPlan> = Arc::new(EmptyExec::new(query::table_schema(Signal::Spans)));
        let lists = vec![ListUnnest { index_in_input_schema: 3, depth: 1 }];
        let guard: Arc<dyn ExecutionPlan> = Arc::new(UnnestInputGuardExec::new(input.clone(), lists, 1 << 20));
        let mut buf = Vec::new();
        codec.try_encode(guard, &mut buf, &converter).unwrap();
        let back = codec.try_decode(&buf, std::slice::from_ref(&input), &TaskContext::default(), &converter).unwrap();
        let back = back.downcast_ref::<UnnestInputGuardExec>().unwrap();
        assert_eq!(back.max_output_bytes(), 1 << 20);
        assert_eq!(back.lists().iter().map(|l| (l.index_in_input_schema, l.depth)).collect::<Vec<_>>(), [(3, 1)]);

        let bad = [GUARD_TAG, br#"{"lists":[[9999,1]],"max_output_bytes":1}"#].concat();
        let error =
            codec.try_decode(&bad, std::slice::from_ref(&input), &TaskContext::default(), &converter).unwrap_err();
        assert!(error.to_string().contains("names column 9999"), "{error}");
        let error = codec.try_decode(&buf, &[], &TaskContext::default(), &converter).unwrap_err();
        assert!(error.to_string().contains("takes one input"), "{error}");
        let error =
            codec.try_decode(&[GUARD_TAG, b"[".as_slice()].concat(), &[input], &TaskContext::default(), &converter);
        assert!(error.unwrap_err().to_string().contains("not readable"));
    }
}
