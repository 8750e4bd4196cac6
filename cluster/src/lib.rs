//! Distributed SQL for tailscope on Apache DataFusion Ballista: `tailscope scheduler` and `tailscope executor`.
//!
//! Both embed Ballista's own scheduler and executor and read the tables of the stores the config names (`storage.url`,
//! `[[storage.placement]]`, or under `data_dir`):
//!
//! - [`scheduler::run`]: Ballista's scheduler, whose jobs plan in a session with tailscope's functions, rules and
//!   object stores ([`query::Engine::job_state`]), over a catalog of the tables' Delta snapshots read again every
//!   `cluster.refresh_interval`. It decodes tailscope's tables from the clients' plans ([`codec::TablesCodec`]).
//! - [`executor::run`]: Ballista's executor, which finds tailscope's functions by name (the registry of
//!   [`query::Engine::job_state`]) and reads the stores' objects itself.
//!
//! A client is any [`query::Engine`] made with [`query::Engine::on_cluster`] and a [`BallistaClient`]: `tailscope
//! query --cluster`, and the HTTP API and Flight SQL of `tailscope serve` with `[query] cluster`. docs/deploy.md
//! says how to run one.

pub mod client;
pub mod codec;
pub mod executor;
pub mod local;
pub mod scheduler;

pub use client::BallistaClient;

use tailscope_core::catalog::{Catalog, RemoteTables};
use tailscope_core::config::Config;
use tailscope_core::memory::MemoryBudget;
use thiserror::Error;

/// What stopped a scheduler or an executor.
#[derive(Debug, Error)]
pub enum ClusterError {
    /// A store the config names cannot be opened or read.
    #[error("cannot read the tables: {0}")]
    Store(#[from] store::StoreError),
    /// The SQL surface could not be built.
    #[error("cannot set up SQL: {0}")]
    Query(#[from] query::QueryError),
    /// An address could not be bound or resolved.
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    /// Ballista refused to start or failed while serving.
    #[error("{what}: {detail}")]
    Ballista { what: &'static str, detail: String },
}

/// The stores the config names: the default one (`storage.url`, or `None`: under the data dir) and the placement
/// rules', in order.
fn stores(config: &Config) -> Result<(Option<RemoteTables>, Vec<RemoteTables>), ClusterError> {
    let default = config.storage.url.as_deref().map(store::remote::connect).transpose()?;
    let placed = config
        .storage
        .placement
        .iter()
        .map(|rule| store::remote::connect_placement(&rule.url))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((default, placed))
}

/// A catalog of the config's stores, drawing on `memory.limit_mb`, with nothing read yet.
fn catalog(config: &Config) -> Result<Catalog, ClusterError> {
    let (default, placed) = stores(config)?;
    Ok(Catalog::new(&config.data_dir)
        .with_memory(MemoryBudget::new(config.memory.limit_bytes()))
        .with_remote(default)
        .with_placed(placed))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use query::Engine;
    use query::fixture::{SpanRow, spans_batch, write_parquet};
    use tailscope_core::config::QueryConfig;
    use tailscope_core::projects::{Project, Visibility};
    use tailscope_core::schema::Signal;

    use super::*;

    /// Files of projects `a` (2 spans), `b` (3) and `default` (1) under a data dir, in the collector's layout.
    fn three_projects(dir: &std::path::Path) {
        let row = |i: i64| SpanRow {
            trace_id: format!("{i:032x}"),
            span_id: format!("{i:016x}"),
            name: "chat".into(),
            start_ns: 1_764_841_200_000_000_000 + i * 1_000_000,
            duration_ns: 1_000_000 * (i + 1),
            service_name: "svc".into(),
            gen_ai_operation: Some("chat".into()),
            ..SpanRow::default()
        };
        let mut seq = 0;
        for (project, n) in [("a", 2), ("b", 3), ("default", 1)] {
            let rows: Vec<SpanRow> = (0..n).map(|i| row(seq * 10 + i)).collect();
            seq += 1;
            let file = write_parquet(dir, Signal::Spans, &spans_batch(&rows), seq as u64).unwrap();
            if project != "default" {
                // Into the project's directory, where the collector writes a project's files.
                let from = dir.join(&file.relative_path);
                let rest = file.relative_path.strip_prefix("spans").unwrap();
                let to = dir.join("spans").join(format!("project={project}")).join(rest);
                std::fs::create_dir_all(to.parent().unwrap()).unwrap();
                std::fs::rename(from, to).unwrap();
            }
        }
    }

    /// A scheduler and an executor with `slots` task slots in this process, over the tables under `dir`.
    async fn in_process_cluster(dir: &std::path::Path, slots: usize) -> local::InProcess {
        let mut config = Config { data_dir: dir.to_path_buf(), ..Config::default() };
        config.cluster.executor_slots = slots;
        local::InProcess::start(&config, 1, &dir.join("work")).await.unwrap()
    }

    /// The first column of the first row of `sql` on `client`, as `i64`, retried for 30 s while the executor may
    /// not have joined yet.
    async fn count_on(client: &Engine, visible: Visibility, sql: &str) -> i64 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match client.scoped(visible.clone()).sql(sql).await {
                Ok(out) => {
                    let column = out.batches[0].column(0);
                    let n = column.as_any().downcast_ref::<datafusion::arrow::array::Int64Array>().unwrap();
                    return n.value(0);
                }
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!("waiting for the cluster: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("{sql}: {e}"),
            }
        }
    }

    /// A scheduler and an executor in this process over a data dir of three projects: a statement scoped to some
    /// projects sees only their rows on the cluster, whatever the SQL, because each table in the plan carries its
    /// caller's projects (`query::distributed`).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_scoped_statement_sees_only_its_projects_on_the_cluster() {
        let dir = tempfile::tempdir().unwrap();
        three_projects(dir.path());
        let running = in_process_cluster(dir.path(), 2).await;
        let cluster = BallistaClient::new(&running.url).unwrap();
        let client = Engine::on_cluster(Catalog::new(dir.path()), QueryConfig::default(), cluster).await.unwrap();
        let count = async |visible: Visibility, sql: &str| count_on(&client, visible, sql).await;
        let project = |name: &str| Project::parse(name).unwrap();
        let all = "SELECT count(*) FROM spans";
        assert_eq!(count(Visibility::All, all).await, 6);
        assert_eq!(count(Visibility::only([project("a")]), all).await, 2);
        assert_eq!(count(Visibility::only([project("b")]), all).await, 3);
        assert_eq!(count(Visibility::only([project("a"), project("b")]), all).await, 5);
        // Asking for another project's rows by name, through a view, or through a subquery finds none: only the
        // two of `a` that `llm_calls` holds.
        let sneaky = "SELECT count(*) FROM (SELECT span_id FROM spans WHERE project = 'b' UNION ALL \
                      SELECT span_id FROM llm_calls UNION ALL SELECT span_id FROM spans WHERE span_id IN \
                      (SELECT span_id FROM spans WHERE project = 'default'))";
        assert_eq!(count(Visibility::only([project("a")]), sneaky).await, 2);
        assert_eq!(count(Visibility::only([project("nobody")]), all).await, 0);
    }

    /// A statement that outlives `query.timeout` on the cluster is cancelled there, not only at the client: its job
    /// ends as cancelled at the scheduler (which tells the executors to stop its tasks) instead of running to its
    /// end for nobody. A statement read to its end cancels nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_timed_out_statement_is_cancelled_on_the_cluster() {
        use ballista_core::serde::protobuf::scheduler_grpc_client::SchedulerGrpcClient;
        use ballista_core::serde::protobuf::{GetJobStatusParams, job_status};

        let dir = tempfile::tempdir().unwrap();
        let rows: Vec<SpanRow> = (0..2000)
            .map(|i: i64| SpanRow {
                trace_id: format!("{i:032x}"),
                span_id: format!("{i:016x}"),
                name: "chat".into(),
                start_ns: 1_764_841_200_000_000_000 + i * 1_000_000,
                duration_ns: 1_000_000 + i,
                service_name: "svc".into(),
                ..SpanRow::default()
            })
            .collect();
        write_parquet(dir.path(), Signal::Spans, &spans_batch(&rows), 1).unwrap();
        let running = in_process_cluster(dir.path(), 1).await;
        let url = running.url.clone();
        let cluster = BallistaClient::new(&url).unwrap();
        let engine = async |timeout: Duration| {
            let config = QueryConfig { timeout, ..QueryConfig::default() };
            Engine::on_cluster(Catalog::new(dir.path()), config, cluster.clone()).await.unwrap()
        };
        let patient = engine(Duration::from_secs(120)).await;
        assert_eq!(count_on(&patient, Visibility::All, "SELECT count(*) FROM spans").await, 2000);
        assert_eq!(cluster.cancelled_jobs(), Vec::<String>::new(), "a statement read to its end is not cancelled");

        // 8e9 rows of a cross join, summed (a count could come from the files' statistics): many seconds.
        let hurried = engine(Duration::from_secs(2)).await;
        let endless = "SELECT sum(a.duration_ns + b.duration_ns + c.duration_ns) FROM spans a, spans b, spans c";
        match hurried.sql(endless).await {
            Err(query::QueryError::Timeout { .. }) => {}
            other => panic!("the cross join should time out at the client: {other:?}"),
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        let job = loop {
            if let Some(job) = cluster.cancelled_jobs().pop() {
                break job;
            }
            assert!(Instant::now() < deadline, "the timed-out statement's job was not cancelled");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        // The scheduler says so: the job failed as cancelled, not still running.
        let mut scheduler = SchedulerGrpcClient::connect(url.replace("df://", "http://")).await.unwrap();
        let status = loop {
            let answer = scheduler.get_job_status(GetJobStatusParams { job_id: job.clone() }).await.unwrap();
            let status = answer.into_inner().status.and_then(|s| s.status);
            if !matches!(status, Some(job_status::Status::Running(_)) | Some(job_status::Status::Queued(_))) {
                break status;
            }
            assert!(Instant::now() < deadline, "job {job} still runs: {status:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        match status {
            Some(job_status::Status::Failed(failed)) => assert!(failed.error.contains("Cancelled"), "{failed:?}"),
            other => panic!("job {job} should have been cancelled: {other:?}"),
        }
        // And the cluster goes on answering.
        assert_eq!(count_on(&patient, Visibility::All, "SELECT count(*) FROM spans").await, 2000);
        assert_eq!(cluster.cancelled_jobs(), vec![job]);
    }

    /// An executor that nobody could reach, or whose gRPC port is taken, stops at start with the reason instead of
    /// joining: the scheduler would drop it at every task it pushed.
    #[tokio::test]
    async fn an_executor_refuses_to_start_where_it_cannot_be_reached() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config { data_dir: dir.path().to_path_buf(), ..Config::default() };
        config.cluster.work_dir = Some(dir.path().join("work"));
        let free_port = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        config.cluster.executor_listen = std::net::SocketAddr::from(([0, 0, 0, 0], free_port()));
        let e = executor::run(&config).await.unwrap_err().to_string();
        assert!(e.contains("executor_host") && e.contains("0.0.0.0"), "{e}");

        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        config.cluster.executor_listen = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
        config.cluster.executor_grpc_port = Some(taken.local_addr().unwrap().port());
        let e = executor::run(&config).await.unwrap_err().to_string();
        assert!(e.contains(&format!("cannot listen on {}", taken.local_addr().unwrap())), "{e}");
    }
}
