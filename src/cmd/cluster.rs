//! `tailscope scheduler` and `tailscope executor`: a Ballista cluster over the tables (docs/deploy.md,
//! "Distributed SQL").

use std::net::SocketAddr;
use std::path::PathBuf;

use tailscope_core::config::Config;

use super::CmdResult;

/// Flags both share. Each overrides the matching key of the TOML config file, and each can be given as a
/// `TAILSCOPE_*` environment variable instead.
#[derive(Debug, Clone, clap::Args)]
pub struct NodeArgs {
    /// TOML config file: where the tables are (data_dir, storage.url, [[storage.placement]]), [query] limits and
    /// [cluster]; flags override its values.
    #[arg(long, short = 'c', value_name = "FILE", env = "TAILSCOPE_CONFIG")]
    pub config: Option<PathBuf>,
    /// The data dir whose tables are read when no object store is configured [config: data_dir].
    #[arg(long, value_name = "DIR", env = "TAILSCOPE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
}

impl NodeArgs {
    fn load(&self) -> Result<Config, tailscope_core::error::ConfigError> {
        let mut config = match &self.config {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        if let Some(dir) = &self.data_dir {
            config.data_dir = dir.clone();
        }
        Ok(config)
    }
}

/// Flags of `tailscope scheduler`.
#[derive(Debug, Clone, clap::Args)]
pub struct SchedulerArgs {
    #[command(flatten)]
    pub node: NodeArgs,
    /// Where the scheduler's gRPC service listens, host:port; port 0 picks one [config: cluster.scheduler_listen;
    /// default: 127.0.0.1:50050].
    #[arg(long, value_name = "ADDR", env = "TAILSCOPE_SCHEDULER_LISTEN")]
    pub listen: Option<SocketAddr>,
}

/// Flags of `tailscope executor`.
#[derive(Debug, Clone, clap::Args)]
pub struct ExecutorArgs {
    #[command(flatten)]
    pub node: NodeArgs,
    /// The scheduler to join, host:port [config: cluster.scheduler; default: 127.0.0.1:50050].
    #[arg(long, value_name = "HOST:PORT", env = "TAILSCOPE_SCHEDULER")]
    pub scheduler: Option<String>,
    /// Where the executor's Arrow Flight service (shuffle data, results) listens; the port must be given
    /// [config: cluster.executor_listen; default: 127.0.0.1:50051].
    #[arg(long, value_name = "ADDR", env = "TAILSCOPE_EXECUTOR_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// The port of the executor's gRPC service, on the listen IP: the scheduler hands it tasks there, and cancels
    /// those of a statement whose client timed out or went away [config: cluster.executor_grpc_port; default: the
    /// --listen port + 1].
    #[arg(long, value_name = "PORT", env = "TAILSCOPE_EXECUTOR_GRPC_PORT")]
    pub grpc_port: Option<u16>,
    /// The host other nodes reach this executor at [config: cluster.executor_host; default: the listen IP].
    #[arg(long, value_name = "HOST", env = "TAILSCOPE_EXECUTOR_HOST")]
    pub host: Option<String>,
    /// Tasks run at once; 0: one per core [config: cluster.executor_slots].
    #[arg(long, value_name = "N", env = "TAILSCOPE_EXECUTOR_SLOTS")]
    pub slots: Option<usize>,
    /// Where shuffle files are kept [config: cluster.work_dir; default: DATA_DIR/ballista].
    #[arg(long, value_name = "DIR", env = "TAILSCOPE_EXECUTOR_WORK_DIR")]
    pub work_dir: Option<PathBuf>,
}

/// Runs `tailscope scheduler` until SIGTERM or Ctrl-C.
pub async fn scheduler(args: SchedulerArgs) -> CmdResult {
    let shutdown = super::serve::shutdown_signal();
    let mut config = args.node.load()?;
    if let Some(listen) = args.listen {
        config.cluster.scheduler_listen = listen;
    }
    config.validate()?;
    cluster::scheduler::run(&config, shutdown, |address| {
        // On stdout, so that scripts and tests learn a port chosen with :0.
        println!("tailscope scheduler listening on df://{address}");
        tracing::info!(%address, "scheduler listening");
    })
    .await?;
    Ok(())
}

/// Runs `tailscope executor` until SIGTERM or Ctrl-C.
pub async fn executor(args: ExecutorArgs) -> CmdResult {
    let mut config = args.node.load()?;
    let cluster = &mut config.cluster;
    if let Some(scheduler) = args.scheduler {
        cluster.scheduler = scheduler;
    }
    if let Some(listen) = args.listen {
        cluster.executor_listen = listen;
    }
    if let Some(port) = args.grpc_port {
        cluster.executor_grpc_port = Some(port);
    }
    if let Some(host) = args.host {
        cluster.executor_host = Some(host);
    }
    if let Some(slots) = args.slots {
        cluster.executor_slots = slots;
    }
    if let Some(dir) = args.work_dir {
        cluster.work_dir = Some(dir);
    }
    config.validate()?;
    let cluster = &config.cluster;
    let grpc = cluster.executor_grpc().map(|a| a.to_string()).unwrap_or_default();
    tracing::info!(scheduler = %cluster.scheduler, listen = %cluster.executor_listen, %grpc, "executor starting");
    cluster::executor::run(&config).await?;
    Ok(())
}
