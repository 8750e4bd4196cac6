//! The Ballista client a [`query::Engine`] runs its statements through (`tailscope query --cluster`,
//! `[query] cluster`).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ballista_core::JobId;
use ballista_core::config::BALLISTA_CLIENT_PULL;
use ballista_core::execution_plans::DistributedQueryExec;
use ballista_core::extension::{SessionConfigExt, SessionStateExt};
use ballista_core::planner::BallistaQueryPlanner;
use ballista_core::serde::protobuf::CancelJobParams;
use ballista_core::serde::protobuf::scheduler_grpc_client::SchedulerGrpcClient;
use ballista_core::utils::create_grpc_client_endpoint;
use datafusion::execution::context::QueryPlanner;
use datafusion::execution::session_state::SessionState;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionConfig;
use datafusion_proto::protobuf::LogicalPlanNode;
use query::{Cluster, session_config};
use tailscope_core::projects::Visibility;
use tokio::sync::Semaphore;

use crate::ClusterError;
use crate::codec::{OperatorsCodec, TablesCodec};

/// A Ballista scheduler at `df://HOST:PORT`.
#[derive(Debug, Clone)]
pub struct BallistaClient {
    url: String,
    /// The jobs whose cancellation the scheduler accepted, newest last, at most [`CANCELLED_KEPT`].
    cancelled: Arc<Mutex<VecDeque<JobId>>>,
    /// One permit per cancellation being sent, at most [`CANCELS_IN_FLIGHT`]: a scheduler too slow to answer (when
    /// timeouts happen most) does not collect a task and a connection per abandoned statement.
    cancels: Arc<Semaphore>,
}

impl BallistaClient {
    /// The client of the scheduler at `url` (`df://HOST:PORT`).
    pub fn new(url: &str) -> Result<Arc<BallistaClient>, ClusterError> {
        let url = url.trim();
        let address = url.strip_prefix("df://").unwrap_or_default();
        match address.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && !host.contains('/') && port.parse::<u16>().is_ok() => {}
            _ => {
                return Err(ClusterError::Ballista {
                    what: "the cluster's address",
                    detail: format!("{url:?} is not df://HOST:PORT (the address of `tailscope scheduler`)"),
                });
            }
        }
        Ok(Arc::new(BallistaClient {
            url: url.to_string(),
            cancelled: Arc::default(),
            cancels: Arc::new(Semaphore::new(CANCELS_IN_FLIGHT)),
        }))
    }

    /// The last jobs this client cancelled at the scheduler (statements dropped before their end), newest last.
    pub fn cancelled_jobs(&self) -> Vec<String> {
        self.cancelled.lock().unwrap_or_else(PoisonError::into_inner).iter().map(JobId::to_string).collect()
    }
}

impl Cluster for BallistaClient {
    fn session_config(&self) -> SessionConfig {
        // Adaptive planning would replace the scheduler's physical rules, and with them the bound on `unnest`; the
        // scheduler turns it off for every job too (`crate::scheduler`).
        cluster_settings(session_config(SessionConfig::new_with_ballista()))
            .with_ballista_adaptive_query_planner(false)
            .with_ballista_physical_extension_codec(Arc::new(OperatorsCodec::default()))
            // Polling the job's status (every 50 ms) instead of waiting for its pushed updates: the scheduler pushes
            // the first only when a stage ends, and until then the client has no job id to cancel (`abandon`).
            .set_bool(BALLISTA_CLIENT_PULL, true)
    }

    fn upgrade(&self, state: SessionState) -> datafusion::common::Result<SessionState> {
        state.upgrade_for_ballista(self.url.clone())
    }

    fn planner(&self, config: &SessionConfig, visible: &Visibility) -> Arc<dyn QueryPlanner + Send + Sync> {
        Arc::new(BallistaQueryPlanner::<LogicalPlanNode>::with_extension(
            self.url.clone(),
            config.ballista_config(),
            Arc::new(TablesCodec::client(visible.clone())),
        ))
    }

    /// Cancels the statement's job at the scheduler, which tells the executors to stop its tasks: Ballista's
    /// client only stops polling when its stream is dropped, and the job would run to its end for nobody.
    fn abandon(&self, plan: &Arc<dyn ExecutionPlan>) {
        let Some(job) = submitted_job(plan) else {
            // Not submitted yet (the timeout passed while connecting): the dropped submission sends nothing more.
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(%job, "cannot cancel the cluster job of an abandoned statement: no runtime to send it on");
            return;
        };
        let Ok(permit) = self.cancels.clone().try_acquire_owned() else {
            tracing::warn!(%job, "{CANCELS_IN_FLIGHT} cancellations are waiting for the scheduler already; this \
                abandoned statement's job runs to its end");
            return;
        };
        let scheduler = format!("http://{}", self.url.trim_start_matches("df://"));
        let cancelled = self.cancelled.clone();
        runtime.spawn(async move {
            let _permit = permit;
            let cancel = async {
                let channel = create_grpc_client_endpoint(scheduler.clone(), None)?.connect().await?;
                let answer = SchedulerGrpcClient::new(channel)
                    .cancel_job(CancelJobParams { job_id: job.to_string() })
                    .await
                    .map_err(|status| status.message().to_string())?;
                Ok::<bool, Box<dyn std::error::Error + Send + Sync>>(answer.into_inner().cancelled)
            };
            match tokio::time::timeout(CANCEL_TIMEOUT, cancel).await {
                Ok(Ok(accepted)) => {
                    tracing::info!(%job, accepted, "cancelled the cluster job of a statement whose rows were dropped");
                    let mut cancelled = cancelled.lock().unwrap_or_else(PoisonError::into_inner);
                    if cancelled.len() == CANCELLED_KEPT {
                        cancelled.pop_front();
                    }
                    cancelled.push_back(job);
                }
                Ok(Err(e)) => tracing::warn!(%job, %scheduler, "cannot cancel the cluster job of an abandoned \
                    statement; it runs to its end: {e}"),
                Err(_) => tracing::warn!(%job, %scheduler, "the scheduler did not answer the cancellation of an \
                    abandoned statement's job within {CANCEL_TIMEOUT:?}; it runs to its end"),
            }
        });
    }

    fn settle(&self, within: Duration) -> futures::future::BoxFuture<'_, ()> {
        Box::pin(async move {
            // Every permit back: no cancellation is being sent.
            let all = self.cancels.acquire_many(CANCELS_IN_FLIGHT as u32);
            if tokio::time::timeout(within, all).await.is_err() {
                tracing::warn!(
                    "cancellations of abandoned statements still unsent after {within:?}; their jobs may \
                    run to their end"
                );
            }
        })
    }
}

/// How many cancellations a client sends at once ([`BallistaClient::abandon`]).
const CANCELS_IN_FLIGHT: usize = 64;

/// How many cancelled jobs a client remembers ([`BallistaClient::cancelled_jobs`]).
const CANCELLED_KEPT: usize = 16;

/// How long the cancellation of an abandoned statement's job may take, connecting included.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(10);

/// The job id of the Ballista query in `plan`, once the scheduler has accepted it. The client plans the
/// distributed query as the root, but the whole (planner-bounded) tree is searched, without recursion.
fn submitted_job(plan: &Arc<dyn ExecutionPlan>) -> Option<JobId> {
    let mut pending = vec![plan.clone()];
    while let Some(node) = pending.pop() {
        if let Some(query) = node.downcast_ref::<DistributedQueryExec<LogicalPlanNode>>() {
            return query.job_id();
        }
        pending.extend(node.children().into_iter().cloned());
    }
    None
}

/// The settings where a cluster plans as one node does, whatever Ballista's defaults: hash joins, as one node
/// prefers. Ballista's default (sort-merge joins) answered `... IN (subquery) ORDER BY k LIMIT n` with too few rows,
/// often none (a `TopK` pushed below the join); `tests/it/cluster.rs` holds such statements.
pub fn cluster_settings(config: SessionConfig) -> SessionConfig {
    config.set_bool("datafusion.optimizer.prefer_hash_join", true)
}
