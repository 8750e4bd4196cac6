//! A scheduler and executors inside one process on loopback ports, as `tailscope scheduler` and `tailscope executor`
//! run them: the multi-cloud demo, the query benchmark and the tests.

use std::path::Path;

use tailscope_core::config::Config;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::{ClusterError, executor, scheduler};

/// A running in-process cluster; dropping it stops the scheduler and aborts the executors.
#[derive(Debug)]
pub struct InProcess {
    /// The scheduler's address, `df://127.0.0.1:PORT`.
    pub url: String,
    stop_scheduler: Option<oneshot::Sender<()>>,
    tasks: Vec<JoinHandle<()>>,
}

impl InProcess {
    /// Starts a scheduler over the stores `config` names and `executors` executors of `config.cluster.executor_slots`
    /// slots each, with their shuffle files under `work_dir/executor-N`; returns once the scheduler listens (the
    /// executors join it a moment later).
    pub async fn start(config: &Config, executors: usize, work_dir: &Path) -> Result<InProcess, ClusterError> {
        let mut config = config.clone();
        config.cluster.scheduler_listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        let (told, listening) = oneshot::channel();
        let (stop_scheduler, stopped) = oneshot::channel::<()>();
        let scheduler_config = config.clone();
        let mut scheduler = tokio::spawn(async move {
            let stop = async move {
                let _ = stopped.await;
            };
            scheduler::run(&scheduler_config, stop, move |address| {
                let _ = told.send(address);
            })
            .await
        });
        let address = tokio::select! {
            address = listening => address.map_err(|_| ClusterError::Ballista {
                what: "the in-process scheduler",
                detail: "it stopped before it listened".into(),
            })?,
            done = &mut scheduler => return Err(match done {
                Ok(Err(e)) => e,
                Ok(Ok(())) => ClusterError::Ballista { what: "the in-process scheduler", detail: "it stopped".into() },
                Err(e) => ClusterError::Ballista { what: "the in-process scheduler", detail: e.to_string() },
            }),
        };
        let mut tasks = vec![tokio::spawn(async move {
            if let Ok(Err(e)) = scheduler.await {
                tracing::error!(error = %e, "an in-process scheduler stopped");
            }
        })];
        config.cluster.scheduler = address.to_string();
        for i in 0..executors {
            let mut config = config.clone();
            config.cluster.executor_listen = free_loopback()?;
            config.cluster.executor_grpc_port = Some(free_loopback()?.port());
            config.cluster.work_dir = Some(work_dir.join(format!("executor-{i}")));
            tasks.push(tokio::spawn(async move {
                if let Err(e) = executor::run(&config).await {
                    tracing::error!(error = %e, "an in-process executor stopped");
                }
            }));
        }
        Ok(InProcess { url: format!("df://{address}"), stop_scheduler: Some(stop_scheduler), tasks })
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(stop) = self.stop_scheduler.take() {
            let _ = stop.send(());
        }
        // Executors have no stop of their own in-process (the binary's handles SIGTERM): their tasks end here.
        for task in self.tasks.drain(..) {
            task.abort();
        }
    }
}

/// A loopback address with a port free now (the executor binds it a moment later).
fn free_loopback() -> Result<std::net::SocketAddr, ClusterError> {
    let io = |source| ClusterError::Io { what: "cannot find a free loopback port".into(), source };
    std::net::TcpListener::bind("127.0.0.1:0").map_err(io)?.local_addr().map_err(io)
}
