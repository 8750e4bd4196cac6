//! [`Engine`]: read-only SQL over a [`Catalog`], with a timeout, a memory limit and a bound on concurrency.

use std::num::NonZeroUsize;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, FieldRef, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::TableProvider;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, ScalarValue};
use datafusion::execution::FunctionRegistry;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::cache::cache_manager::CacheManagerConfig;
use datafusion::execution::memory_pool::{
    FairSpillPool, MemoryConsumer, MemoryLimit, MemoryPool, MemoryReservation, TrackConsumersPool,
};
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::session_state::SessionState;
use datafusion::logical_expr::{LogicalPlan, ScalarUDF};
use datafusion::physical_plan::{ExecutionPlan, execute_stream};
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use datafusion::sql::parser::{CopyToSource, Statement as DFStatement};
use futures::{Stream, StreamExt};
use tailscope_core::projects::Visibility;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use tailscope_core::catalog::Catalog;
use tailscope_core::config::QueryConfig;
use tailscope_core::memory::{MemoryBudget, Reservation};
use tailscope_core::schema::Signal;

use datafusion::execution::context::QueryPlanner;

use crate::alerts::AlertsTable;
use crate::error::QueryError;
use crate::limits;
use crate::output_memory::{STRING_CONCAT, StringConcat, StringConcatPlanner};
use crate::quantile::{ShareQuantiles, quantile_exact_udaf};
use crate::redact::PathRedactor;
use crate::string_group::StringGroupAggregate;
use crate::table::{ScanCounters, SignalTable};
use crate::unnest_guard::BoundUnnest;
use crate::views::{RELEASE_COMPARE, ReleaseCompare, SESSIONS, SESSIONS_SINCE, SessionsSince};

/// The catalog name clients see (Flight SQL `GetCatalogs`, `information_schema`).
pub const CATALOG_NAME: &str = "tailscope";
/// The schema holding every table and view.
pub const SCHEMA_NAME: &str = "public";

/// The result of one statement, fully collected.
#[derive(Debug, Clone)]
pub struct QueryOutput {
    /// Column names and types (also valid when there are no rows).
    pub schema: SchemaRef,
    /// The rows.
    pub batches: Vec<RecordBatch>,
}

impl QueryOutput {
    /// Number of rows over all batches.
    pub fn num_rows(&self) -> usize {
        self.batches.iter().map(|b| b.num_rows()).sum()
    }
}

/// The rows of one statement as DataFusion produces them, batch by batch: nothing is held beyond the batch in hand
/// (and what DataFusion's operators hold under the memory pool). The stream holds the query's slot until it is
/// dropped, and ends with [`QueryError::Timeout`] when `query.timeout` (counted from the request) passes; dropping
/// it cancels the work in flight.
pub struct QueryStream {
    schema: SchemaRef,
    inner: Pin<Box<dyn Stream<Item = Result<RecordBatch, QueryError>> + Send>>,
}

impl QueryStream {
    /// Column names and types of every batch.
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// Collects every batch (for small results: the TUI, tests, the CLI's table format).
    pub async fn collect(mut self) -> Result<QueryOutput, QueryError> {
        let mut batches = Vec::new();
        while let Some(batch) = self.next().await {
            batches.push(batch?);
        }
        Ok(QueryOutput { schema: self.schema, batches })
    }
}

impl std::fmt::Debug for QueryStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryStream").field("schema", &self.schema).finish_non_exhaustive()
    }
}

impl Stream for QueryStream {
    type Item = Result<RecordBatch, QueryError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

/// A statement planned but not run ([`Engine::prepare`]).
#[derive(Debug, Clone)]
pub struct Prepared {
    /// Column names and types of its rows.
    pub schema: SchemaRef,
    /// Its parameters, `$1` (the first `?`) first: each the type the planner inferred from where it stands, or
    /// `None` where nothing says (`SELECT ?`) and any value goes. A bound value is cast to its parameter's type.
    pub parameters: Vec<Option<DataType>>,
}

/// A table or view as listed by `\d` and Flight SQL `GetTables`.
#[derive(Debug, Clone)]
pub struct Relation {
    /// Name in SQL.
    pub name: String,
    /// `TABLE` or `VIEW`.
    pub kind: &'static str,
    /// Its columns.
    pub schema: SchemaRef,
}

impl Relation {
    fn new(name: &str, kind: &'static str, schema: SchemaRef) -> Relation {
        Relation { name: name.to_string(), kind, schema }
    }
}

/// A cluster that plans and runs a client engine's statements ([`Engine::on_cluster`]): the `tailscope-cluster`
/// crate's Ballista client. The engine plans each statement here as on one node (limits, views, functions), then
/// hands the logical plan to the cluster's planner.
pub trait Cluster: Send + Sync + std::fmt::Debug {
    /// The session settings statements start from: the cluster's own, then tailscope's ([`session_config`]).
    fn session_config(&self) -> SessionConfig;
    /// The engine's session made a client of the cluster (its planner and logical rules), before tailscope's
    /// functions are registered.
    fn upgrade(&self, state: SessionState) -> datafusion::common::Result<SessionState>;
    /// The planner that sends one statement, whose caller may see `visible`, to the cluster.
    fn planner(&self, config: &SessionConfig, visible: &Visibility) -> Arc<dyn QueryPlanner + Send + Sync>;
    /// The rows of `plan` stopped being read before their end (the statement's timeout passed, a batch failed, or
    /// its caller went away): stop the work the cluster still does for it. Called from a `Drop`, so it must not
    /// block; dropping the client's stream alone leaves the cluster's job running to its end.
    fn abandon(&self, plan: &Arc<dyn ExecutionPlan>);
    /// Waits up to `within` until what [`Cluster::abandon`] started has reached the cluster: a process about to exit
    /// (the CLI after a timed-out statement) would otherwise drop it with its runtime.
    fn settle(&self, within: Duration) -> futures::future::BoxFuture<'_, ()>;
}

/// Tells the cluster when a statement's rows are dropped before their end ([`Cluster::abandon`]).
struct AbandonOnDrop {
    cluster: Arc<dyn Cluster>,
    plan: Arc<dyn ExecutionPlan>,
    /// Every row was read: the job ended by itself.
    finished: bool,
}

impl Drop for AbandonOnDrop {
    fn drop(&mut self) {
        if !self.finished {
            self.cluster.abandon(&self.plan);
        }
    }
}

/// How an engine plans, beyond what [`QueryConfig`] sets.
#[derive(Debug, Clone)]
struct Planning {
    /// `GROUP BY` one string column runs in `StringGroupAggregateExec` (see `crate::string_group`). Only tests
    /// turn it off on one node; a cluster's scheduler never plans it (see `crate::distributed`).
    string_group_aggregate: bool,
    /// The cluster a client engine sends its statements to, or `None`: they run here.
    cluster: Option<Arc<dyn Cluster>>,
}

impl Default for Planning {
    fn default() -> Planning {
        Planning { string_group_aggregate: true, cluster: None }
    }
}

/// SQL over tailscope's tables. Cheap to clone: every clone shares the tables, the slots and the limits.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
    /// The projects this engine's queries see ([`Engine::scoped`]); every project unless scoped.
    visible: Visibility,
}

struct Inner {
    /// Tables, views and functions; each query runs in a copy with its own memory pool.
    base: SessionState,
    config: QueryConfig,
    /// The process-wide budget every query's pool draws from (the catalog's: the collector's in `serve`).
    memory: MemoryBudget,
    slots: Arc<Semaphore>,
    counters: Arc<ScanCounters>,
    relations: Vec<Relation>,
    /// Hides where the tables' files live in the plans `EXPLAIN` answers (`crate::redact`).
    redactor: PathRedactor,
    /// `query.metadata_cache_mb`, the bound of the runtime's Parquet metadata cache, held in the process budget for
    /// as long as the engine (and so the cache) lives.
    _metadata_cache: Reservation,
    /// The cluster statements run on ([`Engine::on_cluster`]).
    cluster: Option<Arc<dyn Cluster>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("config", &self.inner.config).finish_non_exhaustive()
    }
}

impl Engine {
    /// Builds the engine over a live catalog: the three signal tables, `alerts`, the base views, then the cost
    /// views.
    pub async fn new(catalog: Catalog, config: QueryConfig) -> Result<Engine, QueryError> {
        Engine::build(catalog, config, Planning::default()).await
    }

    /// [`Engine::new`] with `StringGroupAggregateExec` on or off: only tests turn it off, to check that every
    /// aggregate it takes over answers the same without it (`crate::slt_tests`, `query/tests/sql/string_group.slt`).
    #[cfg(test)]
    pub(crate) async fn with_string_group_aggregate(
        catalog: Catalog,
        config: QueryConfig,
        on: bool,
    ) -> Result<Engine, QueryError> {
        Engine::build(catalog, config, Planning { string_group_aggregate: on, cluster: None }).await
    }

    /// An engine whose statements run on `cluster` (`[query] cluster`, `tailscope query --cluster`): planned here
    /// with the same SQL, views, functions and limits as one node, scanned and computed by the cluster over the
    /// committed tables (its stores; not this process's unflushed buffer). `catalog` gives the tables' columns only.
    pub async fn on_cluster(
        catalog: Catalog,
        config: QueryConfig,
        cluster: Arc<dyn Cluster>,
    ) -> Result<Engine, QueryError> {
        Engine::build(catalog, config, Planning { string_group_aggregate: false, cluster: Some(cluster) }).await
    }

    /// An engine for a cluster's scheduler or executor ([`Engine::job_state`], [`Engine::function_registry`]): the
    /// same SQL surface as one node, with the tables of `catalog` scanned portably.
    pub async fn for_cluster_node(catalog: Catalog, config: QueryConfig) -> Result<Engine, QueryError> {
        Engine::build(catalog, config, Planning { string_group_aggregate: false, cluster: None }).await
    }

    async fn build(catalog: Catalog, config: QueryConfig, planning: Planning) -> Result<Engine, QueryError> {
        let metadata_cache = catalog
            .memory()
            .try_reserve_lasting(
                config.metadata_cache_bytes(),
                &"DataFusion's Parquet metadata cache (query.metadata_cache_mb)",
            )
            .map_err(|e| QueryError::ResourcesExhausted(e.to_string()))?;
        let session = match &planning.cluster {
            Some(cluster) => cluster.session_config(),
            None => session_config(SessionConfig::new()),
        };
        let mut state = SessionStateBuilder::new()
            .with_config(session)
            .with_runtime_env(runtime_env(&config)?)
            .with_default_features();
        if planning.string_group_aggregate {
            state = state.with_physical_optimizer_rule(Arc::new(StringGroupAggregate));
        }
        let state = state
            .with_physical_optimizer_rule(Arc::new(BoundUnnest {
                max_output_bytes: config.max_function_output_bytes(),
            }))
            .build();
        let state = match &planning.cluster {
            // The cluster's planner in place of DataFusion's; the functions registered below come after its own.
            Some(cluster) => cluster.upgrade(state)?,
            None => state,
        };
        let mut ctx = SessionContext::new_with_state(state);
        // The tables' files on an object store (`storage.url`) are read through it: the scan names it by its
        // scheme and bucket (`table::SignalTable`).
        // Every store's (the placement rules' too): each file names its own.
        for remote in catalog.remotes() {
            let url = datafusion::execution::object_store::ObjectStoreUrl::parse(remote.store_url())?;
            ctx.runtime_env().register_object_store(url.as_ref(), remote.store.clone());
        }
        ctx.register_udaf(quantile_exact_udaf());
        ctx.add_optimizer_rule(Arc::new(ShareQuantiles));
        // Every function bounded, the growing ones per call and all of them in the process budget (expression
        // evaluation reserves no memory of its own); `||` planned as a function so that it is bounded too.
        let max_output = config.max_function_output_bytes();
        let mut functions: Vec<Arc<ScalarUDF>> = ctx.state().scalar_functions().values().cloned().collect();
        functions.push(Arc::new(ScalarUDF::new_from_impl(StringConcat::new())));
        // The registry lists a function once per alias.
        functions.sort_by(|a, b| a.name().cmp(b.name()));
        functions.dedup_by(|a, b| a.name() == b.name());
        for udf in limits::bounded_functions(functions, catalog.memory(), max_output) {
            if udf.name() == STRING_CONCAT {
                // Registered by name too: a plan that travels to a cluster names the function it calls, and the
                // scheduler and executors find it in their registries (made from this one).
                ctx.register_udf(udf.clone());
                ctx.register_expr_planner(Arc::new(StringConcatPlanner::new(Arc::new(udf))))?;
            } else {
                ctx.register_udf(udf);
            }
        }

        let counters = Arc::new(ScanCounters::default());
        let mut relations = Vec::new();
        let internal = |e: std::io::Error| QueryError::Internal(format!("cannot resolve the data dir: {e}"));
        // Made absolute as the scans make it (`SignalTable::new`), so that the plans' paths start with it.
        let redactor = PathRedactor::new(&catalog, &std::path::absolute(catalog.data_dir()).map_err(internal)?);
        for signal in Signal::ALL {
            let table = Arc::new(SignalTable::new(signal, catalog.clone(), counters.clone()).map_err(internal)?);
            relations.push(Relation::new(signal.table_name(), "TABLE", outward_schema(&table.schema())));
            ctx.register_table(signal.table_name(), table)?;
        }
        let alerts = Arc::new(AlertsTable::new(catalog.data_dir()));
        relations.push(Relation::new("alerts", "TABLE", alerts.schema()));
        ctx.register_table("alerts", alerts)?;

        let cost_views = crate::cost_views::cost_views();
        for (name, sql) in crate::views::base_views().into_iter().chain(cost_views) {
            let frame =
                ctx.sql(&sql).await.map_err(|e| QueryError::Internal(format!("view {name} does not plan: {e}")))?;
            if name == SESSIONS {
                ctx.register_udtf(SESSIONS_SINCE, Arc::new(SessionsSince::new(frame.logical_plan().clone())));
            }
            let view = frame.into_view();
            relations.push(Relation::new(name, "VIEW", outward_schema(&view.schema())));
            ctx.register_table(name, view)?;
        }
        let release = ctx
            .sql(&crate::views::release_compare_sql())
            .await
            .map_err(|e| QueryError::Internal(format!("{RELEASE_COMPARE} does not plan: {e}")))?;
        ctx.register_udtf(RELEASE_COMPARE, Arc::new(ReleaseCompare::new(release.logical_plan().clone())));

        Ok(Engine {
            visible: Visibility::All,
            inner: Arc::new(Inner {
                base: ctx.state(),
                slots: Arc::new(Semaphore::new(config.max_concurrent.clamp(1, Semaphore::MAX_PERMITS))),
                memory: catalog.memory().clone(),
                config,
                counters,
                relations,
                redactor,
                _metadata_cache: metadata_cache,
                cluster: planning.cluster,
            }),
        })
    }

    /// An engine over the tables under `data_dir` as their logs say now (no running collector): the CLI's
    /// `--data-dir`.
    pub async fn open(data_dir: impl Into<std::path::PathBuf>, config: QueryConfig) -> Result<Engine, QueryError> {
        let data_dir = data_dir.into();
        let catalog = store::open_catalog(&data_dir)
            .await
            .map_err(|e| QueryError::Internal(format!("cannot read the tables under {}: {e}", data_dir.display())))?;
        Engine::new(catalog, config).await
    }

    /// [`Engine::open`] with the tables on the object store `storage_url` names (`storage.url`) when given.
    pub async fn open_at(
        data_dir: impl Into<std::path::PathBuf>,
        storage_url: Option<&str>,
        config: QueryConfig,
    ) -> Result<Engine, QueryError> {
        let Some(text) = storage_url else {
            return Engine::open(data_dir, config).await;
        };
        let remote = store::remote::connect(text).map_err(|e| QueryError::Internal(e.to_string()))?;
        let data_dir: std::path::PathBuf = data_dir.into();
        let catalog = store::open_remote_catalog(&data_dir, &remote)
            .await
            .map_err(|e| QueryError::Internal(format!("cannot read the tables on {}: {e}", remote.url)))?;
        Engine::new(catalog, config).await
    }

    /// [`Engine::open_at`] over every store of the placement rules (`rules`) too: the tables a query sees are the
    /// union of the default store's (`storage_url`, or under `data_dir`) and each rule's.
    pub async fn open_placed(
        data_dir: impl Into<std::path::PathBuf>,
        storage_url: Option<&str>,
        rules: &[tailscope_core::placement::PlacementRule],
        config: QueryConfig,
    ) -> Result<Engine, QueryError> {
        let connect_error = |e: store::StoreError| QueryError::Internal(e.to_string());
        let default = storage_url.map(store::remote::connect).transpose().map_err(connect_error)?;
        let placed = rules
            .iter()
            .map(|rule| store::remote::connect_placement(&rule.url))
            .collect::<Result<Vec<_>, _>>()
            .map_err(connect_error)?;
        let data_dir: std::path::PathBuf = data_dir.into();
        let catalog = store::open_placed_catalog(&data_dir, default.as_ref(), placed)
            .await
            .map_err(|e| QueryError::Internal(format!("cannot read the tables of every store: {e}")))?;
        Engine::new(catalog, config).await
    }

    /// This engine with its queries seeing only what `visible` allows: the projects of the caller's key. The scan
    /// of every table (`crate::table`, `alerts`) reads the visibility from the query's session, so it holds for
    /// every statement, view, join, subquery and prepared statement run through the returned engine.
    pub fn scoped(&self, visible: Visibility) -> Engine {
        Engine { inner: self.inner.clone(), visible }
    }

    /// The projects this engine's queries see.
    pub fn visibility(&self) -> &Visibility {
        &self.visible
    }

    /// The process-wide memory budget queries draw from.
    pub fn memory(&self) -> &MemoryBudget {
        &self.inner.memory
    }

    /// The limits this engine enforces.
    pub fn config(&self) -> &QueryConfig {
        &self.inner.config
    }

    /// What scans did so far (files listed, files read, buffered rows read).
    pub fn counters(&self) -> &ScanCounters {
        &self.inner.counters
    }

    /// The query slots, so tests can occupy them.
    #[cfg(test)]
    pub(crate) fn inner_slots(&self) -> &Semaphore {
        &self.inner.slots
    }

    /// Every table and view, tables first.
    pub fn relations(&self) -> &[Relation] {
        &self.inner.relations
    }

    /// Waits up to `within` until the cancellations of this engine's abandoned cluster statements have been sent
    /// ([`Cluster::settle`]); at once on one node. For a process about to exit.
    pub async fn settle(&self, within: Duration) {
        if let Some(cluster) = &self.inner.cluster {
            cluster.settle(within).await;
        }
    }

    /// Runs one read-only statement and collects its rows, within the configured timeout, memory and slots.
    pub async fn sql(&self, sql: &str) -> Result<QueryOutput, QueryError> {
        self.stream(sql).await?.collect().await
    }

    /// Runs one read-only statement and streams its rows batch by batch (see [`QueryStream`]). Errors found before
    /// the first batch (bad SQL, limits, a busy server) come back here; later ones end the stream.
    ///
    /// Parsing, planning and optimisation run on a thread of their own with a large stack, after the statement's
    /// size and depth were checked ([`crate::limits`]), so no statement can overflow a stack.
    pub async fn stream(&self, sql: &str) -> Result<QueryStream, QueryError> {
        self.stream_within(sql, self.inner.config.timeout).await
    }

    /// [`Engine::stream`] for a statement with parameters (`?` or `$1`, `$2`, ...; see [`Engine::prepare`]), one
    /// value each, bound after the statement was checked and planned: values are data, never SQL.
    pub async fn stream_with_parameters(
        &self,
        sql: &str,
        parameters: Vec<ScalarValue>,
    ) -> Result<QueryStream, QueryError> {
        self.stream_bound(sql, parameters, self.inner.config.timeout).await
    }

    /// [`Engine::stream`] with a timeout of the caller's instead of `query.timeout`: for the engine's own readers
    /// (budgets rebuilding a month of spend at start-up), whose work is not a user's request.
    pub(crate) async fn stream_within(&self, sql: &str, timeout: Duration) -> Result<QueryStream, QueryError> {
        self.stream_bound(sql, Vec::new(), timeout).await
    }

    async fn stream_bound(
        &self,
        sql: &str,
        parameters: Vec<ScalarValue>,
        timeout: Duration,
    ) -> Result<QueryStream, QueryError> {
        let deadline = Instant::now() + timeout;
        let permit = self.acquire_slot(deadline).await?;
        let ctx = self.context()?;
        let engine = self.clone();
        let sql = sql.to_string();
        // The planner thread holds the slot too: a statement whose planning outlives the timeout still counts
        // against `max_concurrent` until its thread ends.
        let permit = Arc::new(permit);
        let thread_permit = permit.clone();
        let planned = limits::on_planner_thread(async move {
            let _slot = thread_permit;
            let plan = crate::parameters::bind(engine.plan(&ctx, &sql).await?, parameters)?;
            let explains = matches!(plan, LogicalPlan::Explain(_) | LogicalPlan::Analyze(_));
            let schema = outward_schema(plan.schema().as_arrow());
            let physical = ctx.state().create_physical_plan(&plan).await?;
            // The logical plan is dropped here, on the large stack.
            drop(plan);
            Ok::<_, QueryError>((physical, ctx.task_ctx(), schema, explains))
        })
        .map_err(|e| QueryError::Internal(format!("cannot start a planner thread: {e}")))?;
        let (physical, task_ctx, schema, explains) = match tokio::time::timeout_at(deadline, planned).await {
            Ok(Ok(result)) => result?,
            Ok(Err(_)) => return Err(QueryError::Internal("the query planner panicked".into())),
            Err(_) => return Err(QueryError::Timeout { timeout }),
        };
        let on_abandon = self.inner.cluster.as_ref().map(|cluster| AbandonOnDrop {
            cluster: cluster.clone(),
            plan: physical.clone(),
            finished: false,
        });
        let batches = execute_stream(physical, task_ctx)?;
        // A plan names its files without the server's paths, whoever asks (`crate::redact`).
        let redactor = explains.then(|| self.inner.redactor.clone());
        let batches =
            bounded_stream(batches, schema.clone(), deadline, timeout, permit, on_abandon).map(move |batch| {
                match &redactor {
                    Some(redactor) => batch.and_then(|b| redactor.redact_batch(b)),
                    None => batch,
                }
            });
        // A panic inside DataFusion's operators (their tasks re-raise it where the rows are read) ends this statement
        // with an error instead of unwinding into the caller: the CLI, a server's request task. Nothing the panic
        // interrupted is reused: the statement's plan, streams and memory pool are its own and are dropped here.
        let batches = std::panic::AssertUnwindSafe(batches).catch_unwind().map(|item| match item {
            Ok(batch) => batch,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "no message".into());
                tracing::error!("the query engine panicked on a statement ({what}); it was stopped");
                Err(QueryError::Internal(format!(
                    "the query engine failed on this statement ({what}), a fault in DataFusion rather than in the \
                     statement; it was stopped. Rewrite it (e.g. join on a key instead of filtering a cross join)"
                )))
            }
        });
        Ok(QueryStream {
            schema,
            // Fused: polling after the end (or after an error) answers `None` again.
            inner: Box::pin(batches.fuse()),
        })
    }

    /// The schema a statement would produce, without running it (Flight SQL `GetFlightInfo`).
    pub async fn schema_of(&self, sql: &str) -> Result<SchemaRef, QueryError> {
        self.schema_with_parameters(sql, Vec::new()).await
    }

    /// The schema a statement with `parameters` bound would produce (see [`Engine::stream_with_parameters`]),
    /// without running it: refused as running it would be, a wrong number of values or one of the wrong type too.
    pub async fn schema_with_parameters(
        &self,
        sql: &str,
        parameters: Vec<ScalarValue>,
    ) -> Result<SchemaRef, QueryError> {
        self.planned(sql, move |plan| {
            let plan = crate::parameters::bind(plan, parameters)?;
            Ok(outward_schema(plan.schema().as_arrow()))
        })
        .await
    }

    /// Plans a statement without running it: the schema of its rows and the parameters it takes (`?`, numbered in
    /// the order they are written, or `$1`, `$2`, ...). For Flight SQL prepared statements; run it with
    /// [`Engine::stream_with_parameters`].
    pub async fn prepare(&self, sql: &str) -> Result<Prepared, QueryError> {
        self.planned(sql, |plan| {
            let parameters = crate::parameters::parameter_types(&plan)?;
            Ok(Prepared {
                schema: outward_schema(plan.schema().as_arrow()),
                parameters: parameters.into_iter().map(|t| t.as_ref().map(outward_type)).collect(),
            })
        })
        .await
    }

    /// Plans `sql` on a planner thread (see [`Engine::stream`]) and hands the plan to `then` there, within
    /// `query.timeout`.
    async fn planned<T: Send + 'static>(
        &self,
        sql: &str,
        then: impl FnOnce(LogicalPlan) -> Result<T, QueryError> + Send + 'static,
    ) -> Result<T, QueryError> {
        let timeout = self.inner.config.timeout;
        let ctx = self.context()?;
        let engine = self.clone();
        let sql = sql.to_string();
        let planned = limits::on_planner_thread(async move { then(engine.plan(&ctx, &sql).await?) })
            .map_err(|e| QueryError::Internal(format!("cannot start a planner thread: {e}")))?;
        match tokio::time::timeout(timeout, planned).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(QueryError::Internal("the query planner panicked".into())),
            Err(_) => Err(QueryError::Timeout { timeout }),
        }
    }

    /// A query context: the shared tables and functions with a memory pool of its own.
    fn context(&self) -> Result<SessionContext, QueryError> {
        let mut runtime = RuntimeEnv::clone(self.inner.base.runtime_env());
        runtime.memory_pool = memory_pool(&self.inner.memory, &self.inner.config);
        let mut state =
            SessionStateBuilder::new_from_existing(self.inner.base.clone()).with_runtime_env(Arc::new(runtime)).build();
        // The projects the scans may read travel in the session's config, where every table scan finds them.
        state.config_mut().set_extension(Arc::new(self.visible.clone()));
        if let Some(cluster) = &self.inner.cluster {
            // On a cluster they travel in each table of the plan instead, written by this statement's planner.
            let planner = cluster.planner(state.config(), &self.visible);
            state = SessionStateBuilder::new_from_existing(state).with_query_planner(planner).build();
        }
        let ctx = SessionContext::new_with_state(state);
        // The builder re-registers every function in hash order, and DataFusion's `percentile_cont` also answers to
        // `quantile_cont`: register ours last so `quantile_cont` is always the exact, numpy-matching one.
        ctx.register_udaf(quantile_exact_udaf());
        Ok(ctx)
    }

    /// The session a cluster's scheduler plans one job in: this engine's functions, rules and object stores, the
    /// job's settings (`config`), and a memory pool of the job's own. Also what an executor's function registry
    /// is made from: the same bounded functions as one node's.
    pub fn job_state(&self, config: SessionConfig) -> SessionState {
        let mut state = SessionStateBuilder::new_from_existing(self.inner.base.clone())
            .with_config(session_config(config))
            .with_runtime_env(self.job_runtime())
            .build();
        // As in `context`: ours answers `quantile_cont`.
        if let Err(e) = state.register_udaf(Arc::new(quantile_exact_udaf())) {
            tracing::warn!("cannot register quantile_exact: {e}");
        }
        state
    }

    /// The runtime one job runs in: this engine's object stores, a memory pool of the job's own.
    pub fn job_runtime(&self) -> Arc<RuntimeEnv> {
        let mut runtime = RuntimeEnv::clone(self.inner.base.runtime_env());
        runtime.memory_pool = memory_pool(&self.inner.memory, &self.inner.config);
        Arc::new(runtime)
    }

    /// Parses and plans, refusing anything that is not a read and anything beyond the size and depth limits.
    /// Recurses as deep as the statement nests (bounded by `max_expr_depth`): call it on the planner thread.
    async fn plan(&self, ctx: &SessionContext, sql: &str) -> Result<LogicalPlan, QueryError> {
        if sql.trim().trim_end_matches(';').trim().is_empty() {
            return Err(QueryError::InvalidSql("empty statement: give one SQL query".into()));
        }
        let config = &self.inner.config;
        limits::check_sql_size(sql, config.max_sql_bytes)?;
        let state = ctx.state();
        let dialect = state.config().options().sql_parser.dialect;
        let mut statement = state.sql_to_statement(sql, &dialect)?;
        check_statement_depth(&statement, config.max_expr_depth)?;
        crate::parameters::number_placeholders(&mut statement)?;
        let plan = state.statement_to_plan(statement).await?;
        refuse_writes(&plan)?;
        if self.inner.cluster.is_some() {
            refuse_local_tables(&plan)?;
        }
        // Belt and braces: DataFusion's own check, in case a new plan kind appears.
        SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false)
            .verify_plan(&plan)
            .map_err(|e| QueryError::ReadOnly { statement: e.strip_backtrace() })?;
        // Views and CTE chains nest plans that the text does not show.
        limits::check_plan_depth(&plan, config.max_expr_depth)?;
        Ok(plan)
    }

    /// Waits for a query slot until `deadline`.
    async fn acquire_slot(&self, deadline: Instant) -> Result<OwnedSemaphorePermit, QueryError> {
        match tokio::time::timeout_at(deadline, self.inner.slots.clone().acquire_owned()).await {
            Ok(permit) => permit.map_err(|_| QueryError::Internal("query slots closed".into())),
            Err(_) => Err(QueryError::TooBusy {
                max_concurrent: self.inner.config.max_concurrent,
                waited: self.inner.config.timeout,
            }),
        }
    }
}

/// Refuses a statement a cluster cannot answer: one that reads `alerts`, each collector's own table.
fn refuse_local_tables(plan: &LogicalPlan) -> Result<(), QueryError> {
    let mut reads_alerts = false;
    plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node
            && scan.table_name.table() == "alerts"
        {
            reads_alerts = true;
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    if reads_alerts {
        return Err(QueryError::InvalidSql(
            "the alerts table is each collector's own (under its data dir): query it on a collector, not on the \
             cluster"
                .into(),
        ));
    }
    Ok(())
}

/// tailscope's settings on top of `base` (DataFusion's, or Ballista's on a cluster): every node of a cluster plans
/// with the same ones.
pub fn session_config(base: SessionConfig) -> SessionConfig {
    base.with_information_schema(true)
        .with_default_catalog_and_schema(CATALOG_NAME, SCHEMA_NAME)
        // The scan already spreads files over the partitions by size (`table::balanced_groups`). Splitting a
        // file into byte ranges on top of that only helps a file of several row groups; for the usual file of
        // one row group it leaves one partition empty, where one partition and a round-robin repartition above
        // it let the second core aggregate while the first decodes.
        .set_bool("datafusion.optimizer.repartition_file_scans", false)
}

/// The runtime every query's runtime is cloned from (sharing its caches): DataFusion's defaults, with the caches
/// bounded for the process budget. The Parquet metadata cache (footers and page indexes, which the scans read
/// through, see `table::SignalTable`) holds at most `query.metadata_cache_mb`, which [`Engine::new`] reserves.
/// The file-statistics and list-files caches serve DataFusion's `ListingTable`, which tailscope does not use (its
/// tables know their files from the catalog, and DDL that would create one is refused): they are turned off, so
/// that nothing outside the budget can fill them.
fn runtime_env(config: &QueryConfig) -> Result<Arc<RuntimeEnv>, QueryError> {
    let caches = CacheManagerConfig::default()
        .with_metadata_cache_limit(config.metadata_cache_bytes())
        .with_file_statistics_cache_limit(0)
        .with_list_files_cache_limit(0);
    Ok(RuntimeEnvBuilder::new().with_cache_manager(caches).build_arc()?)
}

/// The memory pool of one query: DataFusion's fair spill pool over `query.memory_limit_mb` (operators that can
/// spill share it fairly and spill at their share), drawing every byte from the process-wide budget too. So a query
/// fails with DataFusion's resources-exhausted error (naming its top consumers) when either its own limit or the
/// process ceiling (`memory.limit_mb`, where ingest's buffers and other queries count) is reached, and while it
/// holds memory, ingest is refused sooner.
pub fn memory_pool(budget: &MemoryBudget, config: &QueryConfig) -> Arc<dyn MemoryPool> {
    let limit = config.memory_limit_bytes().min(budget.limit());
    let pool = BudgetPool { inner: FairSpillPool::new(limit), budget: budget.clone() };
    Arc::new(TrackConsumersPool::new(pool, NonZeroUsize::new(3).expect("3 > 0")))
}

/// A pool that reserves in the process-wide [`MemoryBudget`] whatever its inner pool grants.
#[derive(Debug)]
struct BudgetPool {
    inner: FairSpillPool,
    budget: MemoryBudget,
}

impl std::fmt::Display for BudgetPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} within the process budget ({} of {} bytes)", self.inner, self.budget.used(), self.budget.limit())
    }
}

impl MemoryPool for BudgetPool {
    fn name(&self) -> &str {
        "tailscope_budget"
    }

    fn register(&self, consumer: &MemoryConsumer) {
        self.inner.register(consumer);
    }

    fn unregister(&self, consumer: &MemoryConsumer) {
        self.inner.unregister(consumer);
    }

    fn grow(&self, reservation: &MemoryReservation, additional: usize) {
        // Infallible growth is memory an operator holds already: count it, past the limit if need be.
        self.budget.force_add(additional);
        self.inner.grow(reservation, additional);
    }

    fn shrink(&self, reservation: &MemoryReservation, shrink: usize) {
        self.inner.shrink(reservation, shrink);
        self.budget.release(shrink);
    }

    fn try_grow(&self, reservation: &MemoryReservation, additional: usize) -> datafusion::common::Result<()> {
        self.budget
            .try_add(additional, &reservation.consumer().name())
            .map_err(|e| DataFusionError::ResourcesExhausted(format!("{e}; ingest and other queries hold the rest")))?;
        self.inner.try_grow(reservation, additional).inspect_err(|_| self.budget.release(additional))
    }

    fn reserved(&self) -> usize {
        self.inner.reserved()
    }

    fn memory_limit(&self) -> MemoryLimit {
        self.inner.memory_limit()
    }
}

/// Checks the nesting of a parsed statement (see [`limits::check_statement`]); DataFusion's own statements carry
/// a query (`EXPLAIN`) or are writes, refused here before they are planned.
fn check_statement_depth(statement: &DFStatement, max_depth: usize) -> Result<(), QueryError> {
    let mut statement = statement;
    loop {
        match statement {
            DFStatement::Statement(s) => return Ok(limits::check_statement(s, max_depth)?),
            DFStatement::Explain(explain) => statement = &explain.statement,
            DFStatement::CopyTo(copy) => {
                if let CopyToSource::Query(query) = &copy.source {
                    limits::check_statement(
                        &datafusion::sql::sqlparser::ast::Statement::Query(query.clone()),
                        max_depth,
                    )?;
                }
                return Ok(());
            }
            DFStatement::CreateExternalTable(_) | DFStatement::Reset(_) => return Ok(()),
        }
    }
}

/// The batches of a running plan in their outward types, ended by a timeout at `deadline`, holding the query's
/// slot until dropped, and telling a cluster (`on_abandon`) when they are dropped before their end.
fn bounded_stream(
    batches: datafusion::physical_plan::SendableRecordBatchStream,
    schema: SchemaRef,
    deadline: Instant,
    timeout: Duration,
    permit: Arc<OwnedSemaphorePermit>,
    on_abandon: Option<AbandonOnDrop>,
) -> impl Stream<Item = Result<RecordBatch, QueryError>> + Send {
    struct State {
        batches: Option<datafusion::physical_plan::SendableRecordBatchStream>,
        sleep: Pin<Box<tokio::time::Sleep>>,
        schema: SchemaRef,
        timeout: Duration,
        _permit: Arc<OwnedSemaphorePermit>,
        on_abandon: Option<AbandonOnDrop>,
    }
    let state = State {
        batches: Some(batches),
        sleep: Box::pin(tokio::time::sleep_until(deadline)),
        schema,
        timeout,
        _permit: permit,
        on_abandon,
    };
    futures::stream::unfold(state, |mut state| async move {
        let next = {
            let batches = state.batches.as_mut()?;
            tokio::select! {
                biased;
                _ = state.sleep.as_mut() => None,
                next = batches.next() => Some(next),
            }
        };
        let next = match next {
            None => Err(QueryError::Timeout { timeout: state.timeout }),
            Some(None) => {
                if let Some(on_abandon) = state.on_abandon.as_mut() {
                    on_abandon.finished = true;
                }
                return None;
            }
            Some(Some(batch)) => {
                // A cluster's client yields rows only once its job has ended (Ballista fetches the results after the
                // job succeeded): from the first batch on there is nothing left to cancel.
                if let (Ok(_), Some(on_abandon)) = (&batch, state.on_abandon.as_mut()) {
                    on_abandon.finished = true;
                }
                batch.map_err(QueryError::from).and_then(|b| outward_batch(&b, &state.schema))
            }
        };
        if next.is_err() {
            // Dropping DataFusion's stream cancels its tasks; nothing follows an error.
            state.batches = None;
        }
        Some((next, state))
    })
}

/// The type a column has outside the engine: view and dictionary types (which scans use for speed, see
/// [`crate::table::scan_file_schema`]) become the plain types the files store, at any depth, so clients of every
/// surface (JSON, CSV, Arrow IPC, Flight SQL, the TUI) see `Utf8` as before.
fn outward_type(t: &DataType) -> DataType {
    let field = |f: &FieldRef| Arc::new(f.as_ref().clone().with_data_type(outward_type(f.data_type())));
    match t {
        DataType::Utf8View => DataType::Utf8,
        DataType::Dictionary(_, value) => outward_type(value),
        DataType::BinaryView => DataType::Binary,
        DataType::List(f) => DataType::List(field(f)),
        DataType::LargeList(f) => DataType::LargeList(field(f)),
        DataType::FixedSizeList(f, n) => DataType::FixedSizeList(field(f), *n),
        DataType::Struct(fs) => DataType::Struct(fs.iter().map(field).collect()),
        DataType::Map(f, sorted) => DataType::Map(field(f), *sorted),
        other => other.clone(),
    }
}

fn outward_schema(schema: &Schema) -> SchemaRef {
    let fields: Vec<FieldRef> = schema
        .fields()
        .iter()
        .map(|f| Arc::new(f.as_ref().clone().with_data_type(outward_type(f.data_type()))))
        .collect();
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

/// Casts the columns whose type differs from `schema` (view and dictionary types only; results are small next to
/// the scan).
fn outward_batch(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch, QueryError> {
    if batch.schema().fields() == schema.fields() {
        return Ok(batch.clone());
    }
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(c, f)| if c.data_type() == f.data_type() { Ok(c.clone()) } else { cast(c, f.data_type()) })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| QueryError::Internal(format!("cannot convert a result column to its plain type: {e}")))?;
    RecordBatch::try_new(schema.clone(), columns)
        .map_err(|e| QueryError::Internal(format!("cannot convert a result batch to its plain types: {e}")))
}

/// Refuses DDL, DML, `COPY` and session statements (`SET`, transactions, `PREPARE`), naming what was refused.
fn refuse_writes(plan: &LogicalPlan) -> Result<(), QueryError> {
    let mut refused = None;
    plan.apply_with_subqueries(|node| {
        let what = match node {
            LogicalPlan::Ddl(ddl) => Some(words(ddl.name())),
            LogicalPlan::Dml(dml) => Some(dml.op.to_string().to_uppercase()),
            LogicalPlan::Copy(_) => Some("COPY ... TO".to_string()),
            LogicalPlan::Statement(stmt) => Some(words(stmt.name())),
            _ => None,
        };
        Ok(match what {
            Some(what) => {
                refused = Some(what);
                TreeNodeRecursion::Stop
            }
            None => TreeNodeRecursion::Continue,
        })
    })?;
    match refused {
        Some(statement) => Err(QueryError::ReadOnly { statement }),
        None => Ok(()),
    }
}

/// `CreateMemoryTable` -> `CREATE MEMORY TABLE`.
fn words(camel: &str) -> String {
    let mut out = String::new();
    for (i, c) in camel.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push(' ');
        }
        out.extend(c.to_uppercase());
    }
    out
}

#[cfg(test)]
mod memory_budget_tests {
    use super::*;

    /// Queries draw on the process-wide budget: with ingest (here, a reservation) holding nearly all of it, a
    /// query that needs memory fails with a resources-exhausted error that names the process limit; once it is
    /// released the same query runs, and a finished query gives back everything it reserved.
    #[tokio::test]
    async fn queries_share_the_process_budget() {
        let dir = tempfile::tempdir().unwrap();
        let budget = MemoryBudget::new(64 << 20);
        let catalog = Catalog::new(dir.path()).with_memory(budget.clone());
        let config = QueryConfig {
            timeout: Duration::from_secs(30),
            memory_limit_mb: 256,
            max_concurrent: 2,
            ..QueryConfig::default()
        };
        let engine = Engine::new(catalog, config).await.unwrap();
        let cache = QueryConfig::default().metadata_cache_bytes();
        // Holding 200,000 values for an exact quantile needs ~2 MiB that cannot spill.
        let sql = "SELECT value % 3 AS g, quantile_exact(value, 0.5) AS q FROM range(200000) GROUP BY 1";
        let held = budget.try_reserve(budget.available() - (256 << 10), &"ingest").unwrap();
        let err = engine.sql(sql).await.unwrap_err();
        assert!(matches!(err, QueryError::ResourcesExhausted(_)), "{err:?}");
        assert!(err.to_string().contains("process memory limit is reached"), "{err}");
        assert_eq!(budget.used(), cache + held.size(), "a failed query gives back what it reserved");
        drop(held);
        let out = engine.sql(sql).await.unwrap();
        assert_eq!(out.num_rows(), 3);
        assert_eq!(budget.used(), cache, "a finished query gives back what it reserved");
    }

    /// Issue #12: caches draw from the one memory budget. The engine holds `query.metadata_cache_mb` in the budget
    /// for as long as it lives, the runtime's Parquet metadata cache is bounded by exactly that (and shared by
    /// every query's runtime), DataFusion's listing caches, which nothing here uses, are off, and an engine that
    /// does not fit in the budget is refused with the setting named.
    #[tokio::test]
    async fn the_parquet_metadata_cache_is_bounded_and_reserved_in_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let budget = MemoryBudget::new(64 << 20);
        let config = QueryConfig { metadata_cache_mb: 3, ..QueryConfig::default() };
        let engine = Engine::new(Catalog::new(dir.path()).with_memory(budget.clone()), config.clone()).await.unwrap();
        assert_eq!(budget.used(), 3 << 20);
        let caches = &engine.inner.base.runtime_env().cache_manager;
        assert_eq!(caches.get_metadata_cache_limit(), 3 << 20);
        assert!(caches.get_file_statistic_cache().is_none() && caches.get_list_files_cache().is_none());
        let query = engine.context().unwrap();
        let query_caches = &query.runtime_env().cache_manager;
        assert!(
            Arc::ptr_eq(&query_caches.get_file_metadata_cache(), &caches.get_file_metadata_cache()),
            "every query shares the one bounded cache"
        );
        drop(query);
        let clone = engine.clone();
        drop(engine);
        assert_eq!(budget.used(), 3 << 20, "held while an engine lives");
        drop(clone);
        assert_eq!(budget.used(), 0);

        let small = MemoryBudget::new(2 << 20);
        let err = Engine::new(Catalog::new(dir.path()).with_memory(small.clone()), config).await.unwrap_err();
        assert!(err.to_string().contains("query.metadata_cache_mb"), "{err}");
        assert_eq!(small.used(), 0);
    }
}
