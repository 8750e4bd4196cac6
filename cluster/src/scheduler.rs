//! `tailscope scheduler`: Ballista's scheduler, planning over tailscope's tables.

use std::future::Future;
use std::sync::Arc;

use ballista_core::config::TaskSchedulingPolicy;
use ballista_core::extension::SessionConfigExt;
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::SchedulerConfig;
use ballista_scheduler::scheduler_process::{create_scheduler, start_grpc_service_with_listener};
use datafusion::prelude::SessionConfig;
use datafusion_proto::protobuf::{LogicalPlanNode, PhysicalPlanNode};
use query::{Engine, session_config};
use tailscope_core::config::Config;

use crate::ClusterError;
use crate::codec::{OperatorsCodec, TablesCodec};

/// Runs a scheduler for `config` until `shutdown` resolves. `on_listening` is told the address it listens on
/// (`cluster.scheduler_listen`, with the port chosen when that says 0) once clients may connect.
pub async fn run(
    config: &Config,
    shutdown: impl Future<Output = ()>,
    on_listening: impl FnOnce(std::net::SocketAddr),
) -> Result<(), ClusterError> {
    let catalog = crate::catalog(config)?;
    store::refresh_catalog(&catalog).await?;
    let engine = Engine::for_cluster_node(catalog.clone(), config.query.clone()).await?;

    // A statement plans over the tables as the scheduler last read them: commits become visible within one interval.
    let interval = config.cluster.refresh_interval;
    let fresh = catalog.clone();
    let refresher = tokio::spawn(async move {
        let mut failing = false;
        loop {
            tokio::time::sleep(interval).await;
            match store::refresh_catalog(&fresh).await {
                Ok(()) if failing => {
                    tracing::info!("the tables' logs are readable again");
                    failing = false;
                }
                Ok(()) => {}
                Err(e) if !failing => {
                    tracing::warn!("cannot read the tables' logs again (queries see the last snapshot): {e}");
                    failing = true;
                }
                Err(_) => {}
            }
        }
    });

    let listen = config.cluster.scheduler_listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| ClusterError::Io { what: format!("cannot listen on {listen}"), source })?;
    let address = listener
        .local_addr()
        .map_err(|source| ClusterError::Io { what: "cannot read the scheduler's address".into(), source })?;

    let partitions = config.cluster.partitions;
    let mut scheduler = SchedulerConfig::default()
        // Executors serve gRPC and are handed their tasks (`crate::executor`), so a cancelled job's tasks stop.
        .with_scheduler_policy(TaskSchedulingPolicy::PushStaged)
        .with_override_session_builder(Arc::new(move |job: SessionConfig| {
            Ok(job_state(&engine, job.with_target_partitions(partitions)))
        }))
        .with_override_config_producer(Arc::new(|| {
            crate::client::cluster_settings(session_config(SessionConfig::new_with_ballista()))
        }));
    scheduler.bind_host = address.ip().to_string();
    scheduler.external_host = address.ip().to_string();
    scheduler.bind_port = address.port();
    scheduler.override_logical_codec = Some(Arc::new(TablesCodec::scheduler(catalog, Arc::default())));
    scheduler.override_physical_codec = Some(Arc::new(OperatorsCodec::default()));
    // A finished job's state (its plans, statuses) is dropped after a minute instead of Ballista's hour: it is
    // memory the scheduler holds per statement, and nothing reads it after the client has its answer.
    scheduler.finished_job_state_clean_up_interval_seconds = 60;
    scheduler.finished_job_data_clean_up_interval_seconds = 60;
    scheduler
        .validate()
        .map_err(|e| ClusterError::Ballista { what: "the scheduler's settings", detail: e.to_string() })?;
    let scheduler = Arc::new(scheduler);
    let cluster = BallistaCluster::new_from_config(&scheduler)
        .await
        .map_err(|e| ClusterError::Ballista { what: "cannot set up the scheduler's state", detail: e.to_string() })?;
    let server = create_scheduler::<LogicalPlanNode, PhysicalPlanNode>(cluster, scheduler)
        .await
        .map_err(|e| ClusterError::Ballista { what: "cannot start the scheduler", detail: e.to_string() })?;
    on_listening(address);
    let served = tokio::select! {
        served = start_grpc_service_with_listener(listener, server) => served
            .map_err(|e| ClusterError::Ballista { what: "the scheduler stopped", detail: e.to_string() }),
        () = shutdown => Ok(()),
    };
    refresher.abort();
    served
}

/// The session one job plans in: the engine's ([`Engine::job_state`]) with Ballista's logical rules, and adaptive
/// planning off whatever the client asked: it would replace the physical rules, and with them the bound on `unnest`.
fn job_state(engine: &Engine, job: SessionConfig) -> datafusion::execution::session_state::SessionState {
    let state = engine.job_state(crate::client::cluster_settings(job).with_ballista_adaptive_query_planner(false));
    let rules = ballista_core::optimizer::with_ballista_optimizer_rules(state.optimizers());
    datafusion::execution::SessionStateBuilder::new_from_existing(state).with_optimizer_rules(rules).build()
}
