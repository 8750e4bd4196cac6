//! `tailscope executor`: Ballista's executor, running the stages of tailscope's plans.

use std::sync::Arc;

use ballista_core::config::TaskSchedulingPolicy;
use ballista_core::extension::SessionConfigExt;
use ballista_core::registry::BallistaFunctionRegistry;
use ballista_executor::executor_process::{ExecutorProcessConfig, start_executor_process};
use datafusion::prelude::SessionConfig;
use query::{Engine, session_config};
use tailscope_core::config::Config;
use tailscope_core::projects::Visibility;

use crate::ClusterError;
use crate::codec::{OperatorsCodec, TablesCodec};

/// Runs an executor for `config` until the process is asked to stop (SIGTERM or Ctrl-C, which Ballista's executor
/// handles itself: it tells the scheduler it is leaving first).
pub async fn run(config: &Config) -> Result<(), ClusterError> {
    let cluster = &config.cluster;
    // No snapshot is read: an executor is handed its files by the scheduler, and needs only the stores to read them.
    let engine = Engine::for_cluster_node(crate::catalog(config)?, config.query.clone()).await?;
    let (scheduler_host, scheduler_port) = cluster
        .scheduler
        .rsplit_once(':')
        .and_then(|(host, port)| Some((host.trim_matches(['[', ']']).to_string(), port.parse::<u16>().ok()?)))
        .ok_or_else(|| ClusterError::Ballista {
            what: "cluster.scheduler",
            detail: format!("{:?} is not HOST:PORT", cluster.scheduler),
        })?;
    let work_dir = cluster.work_dir.clone().unwrap_or_else(|| config.data_dir.join("ballista"));
    std::fs::create_dir_all(&work_dir)
        .map_err(|source| ClusterError::Io { what: format!("cannot create {}", work_dir.display()), source })?;
    let slots = match cluster.executor_slots {
        0 => std::thread::available_parallelism().map_or(2, usize::from),
        n => n,
    };
    let listen = cluster.executor_listen;
    // The executor announces where it is reached; `0.0.0.0` reaches nobody, and the scheduler would drop the
    // executor each time it hands it a task.
    if listen.ip().is_unspecified() && cluster.executor_host.is_none() {
        return Err(ClusterError::Ballista {
            what: "cluster.executor_host",
            detail: format!(
                "the executor listens on {listen}, which other nodes cannot connect to: give the host they reach \
                 it at (--host or cluster.executor_host)"
            ),
        });
    }
    let grpc = cluster.executor_grpc().ok_or_else(|| ClusterError::Ballista {
        what: "cluster.executor_grpc_port",
        detail: format!("none given, and the Flight port {} has no next port", listen.port()),
    })?;
    // Ballista's executor logs a port it cannot bind and exits with success; a supervisor must see a failure.
    for address in [listen, grpc] {
        drop(
            std::net::TcpListener::bind(address)
                .map_err(|source| ClusterError::Io { what: format!("cannot listen on {address}"), source })?,
        );
    }
    // The functions of one node's sessions, bounded as there, `quantile_exact` answering `quantile_cont`.
    let registry = Arc::new(BallistaFunctionRegistry::from(&engine.job_state(SessionConfig::new())));
    let runtime = engine.clone();
    let process = ExecutorProcessConfig {
        bind_host: listen.ip().to_string(),
        external_host: Some(cluster.executor_host.clone().unwrap_or_else(|| listen.ip().to_string())),
        port: listen.port(),
        grpc_port: grpc.port(),
        scheduler_host,
        scheduler_port,
        // The scheduler may still be starting (a whole cluster started at once).
        scheduler_connect_timeout_seconds: 30,
        vcores: slots,
        // Pushed, not pulled: only an executor that serves gRPC can be told to stop the tasks of a cancelled job
        // (a statement whose client timed out or went away); a pulling one runs them to their end.
        task_scheduling_policy: TaskSchedulingPolicy::PushStaged,
        work_dir: Some(work_dir.to_string_lossy().into_owned()),
        // Tasks share `memory.limit_mb`, as one node's queries do.
        memory_pool_size: Some(config.memory.limit_bytes() as u64),
        override_function_registry: Some(registry),
        override_runtime_producer: Some(Arc::new(move |_: &SessionConfig| Ok(runtime.job_runtime()))),
        override_config_producer: Some(Arc::new(|| {
            crate::client::cluster_settings(session_config(SessionConfig::new_with_ballista()))
        })),
        // An executor never decodes a table (the scheduler plans the scans); this codec refuses one, naming why.
        override_logical_codec: Some(Arc::new(TablesCodec::client(Visibility::only([])))),
        override_physical_codec: Some(Arc::new(OperatorsCodec::default())),
        ..ExecutorProcessConfig::default()
    };
    start_executor_process(Arc::new(process))
        .await
        .map_err(|e| ClusterError::Ballista { what: "the executor stopped", detail: e.to_string() })
}
