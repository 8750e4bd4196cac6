//! `tailscope demo --topology multi-cloud`: the deployment of docs/deploy.md on loopback, in one process.
//!
//! - **Three collectors**, standing for AWS, Azure and GCP. Each takes its cloud's agents; CoreWeave's agents go to
//!   the AWS collector, as a fan-in would send them.
//! - **Four stores**, local directories standing for buckets. Every collector has the same placement rules: each
//!   cloud's rows go to that cloud's store, the rest (CoreWeave) to `other`. Each collector therefore writes its
//!   own cloud's store.
//! - **One budget across the fleet.** The AWS collector is the fleet's budget coordinator; the other two report to
//!   it. A budget alert fires once, at the coordinator.
//! - **A Ballista scheduler with two executors** over the four stores. The collectors' SQL runs there
//!   (`[query] cluster`), and so does the summary at the end.
//! - **The simulated fleet**, each service exporting to its own cloud's collector. The dashboard merges the three
//!   collectors' live windows (`tui --server A,B,C`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use query::Engine;
use tailscope_core::config::{Config, FleetRole};
use tailscope_core::cost::BudgetKind;
use tailscope_core::placement::{PlacementMatch, PlacementRule};
use tailscope_sim::{self as sim, Endpoints, SimConfig, SimStats, Transport};

use super::CmdResult;
use super::demo::{Args, Summary, progress_line, summarise_run};
use super::serve::Running;

/// The collectors, in start order: the first is the fleet's budget coordinator.
const CLOUDS: [&str; 3] = ["aws", "azure", "gcp"];
/// Where the clouds the collectors do not stand for send their spans: the first collector, as a fan-in.
const FAN_IN: [&str; 1] = ["coreweave"];

/// The directories of one run under the demo's data dir.
struct Layout {
    root: PathBuf,
}

impl Layout {
    fn collector(&self, cloud: &str) -> PathBuf {
        self.root.join("collectors").join(cloud)
    }
    fn store(&self, name: &str) -> PathBuf {
        self.root.join("stores").join(name)
    }
    fn cluster(&self) -> PathBuf {
        self.root.join("cluster")
    }
}

/// The same placement for every node: each cloud's rows to its store, the rest to `other`.
fn placement(layout: &Layout) -> Vec<PlacementRule> {
    let mut rules: Vec<PlacementRule> = CLOUDS
        .iter()
        .map(|cloud| PlacementRule {
            name: cloud.to_string(),
            url: layout.store(cloud).display().to_string(),
            matches: PlacementMatch { cloud_provider: Some(vec![cloud.to_string()]), ..Default::default() },
        })
        .collect();
    rules.push(PlacementRule {
        name: "other".into(),
        url: layout.store("other").display().to_string(),
        matches: PlacementMatch { project: Some(vec!["*".into()]), ..Default::default() },
    });
    rules
}

/// Runs the multi-cloud demo. `base` is the single-collector demo's config (budgets, loopback ports).
pub async fn run(args: Args, base: Config) -> CmdResult {
    std::fs::create_dir_all(&args.data_dir)
        .map_err(|e| format!("cannot create the data dir {}: {e}", args.data_dir.display()))?;
    let root = std::fs::canonicalize(&args.data_dir)
        .map_err(|e| format!("cannot resolve the data dir {}: {e}", args.data_dir.display()))?;
    let layout = Layout { root };
    let stores = CLOUDS.iter().chain(["other"].iter()).map(|name| layout.store(name));
    for dir in stores.chain(CLOUDS.iter().map(|cloud| layout.collector(cloud))) {
        std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let mut base = base;
    // A session's spans reach several collectors: session budgets are not summed across a fleet (docs/deploy.md).
    base.budgets.retain(|b| b.kind != BudgetKind::SessionCost);
    base.storage.placement = placement(&layout);
    // Flushed every few seconds, so that the cluster's SQL (over committed tables) follows the run closely.
    base.storage.flush_interval = Duration::from_secs(3);

    let earlier = stored_spans(&layout, &base).await?;

    // The cluster first: the collectors send their SQL there.
    let mut cluster_config = base.clone();
    cluster_config.data_dir = layout.cluster();
    cluster_config.cluster.executor_slots = 1;
    let cluster = cluster::local::InProcess::start(&cluster_config, 2, &layout.cluster()).await?;
    let cluster_url = cluster.url.clone();

    let mut collectors: Vec<(String, Running)> = Vec::new();
    let mut coordinator_api = None;
    for cloud in CLOUDS {
        let mut config = base.clone();
        config.data_dir = layout.collector(cloud);
        config.query.cluster = Some(cluster_url.clone());
        match &coordinator_api {
            None => config.fleet.role = FleetRole::Coordinator,
            Some(api) => {
                config.fleet.role = FleetRole::Member;
                config.fleet.coordinator = Some(format!("http://{api}"));
            }
        }
        config.validate()?;
        let running = super::serve::start(config).await?;
        coordinator_api.get_or_insert(running.addrs.api);
        collectors.push((cloud.to_string(), running));
    }
    print_banner(&args, &layout, &collectors, &cluster_url);

    let grpc =
        |running: &Running| Endpoints::from_base(&format!("http://{}", running.addrs.otlp_grpc), Transport::Grpc);
    let mut by_cloud: BTreeMap<String, Endpoints> =
        collectors.iter().map(|(cloud, running)| (cloud.clone(), grpc(running))).collect();
    for cloud in FAN_IN {
        by_cloud.insert(cloud.to_string(), grpc(&collectors[0].1));
    }
    let stats = Arc::new(SimStats::default());
    let (stop_fleet, fleet_stopped) = tokio::sync::oneshot::channel::<()>();
    let sim_config = SimConfig {
        endpoints: grpc(&collectors[0].1),
        by_cloud,
        transport: Transport::Grpc,
        rate: args.rate,
        duration: args.duration,
        seed: args.seed,
        sessions: args.sessions,
        metric_interval: Duration::from_secs(10),
        scenario: sim::Scenario::Fleet,
    };
    let mut fleet = tokio::spawn(sim::run(sim_config, stats.clone(), async move {
        let _ = fleet_stopped.await;
    }));
    let started = Instant::now();

    let mut fleet_done = None;
    let outcome: Result<(), String> = if args.no_tui {
        // The coordinator's view: every store (through the cluster) and its alerts.
        let coordinator = &collectors[0].1;
        let engine = cluster_engine(coordinator.collector().catalog(), &base, &cluster_url).await?;
        let alerts = Engine::new(coordinator.collector().catalog(), base.query.clone()).await?;
        let mut tick = tokio::time::interval(args.report_every);
        tick.tick().await;
        let stop = super::serve::shutdown_signal();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = tick.tick() => println!("{}", progress_line(&engine, &alerts, &stats, started.elapsed()).await),
                done = &mut fleet => {
                    fleet_done = Some(done);
                    break Ok(());
                }
                () = &mut stop => {
                    eprintln!("stopping the fleet");
                    break Ok(());
                }
            }
        }
    } else {
        let servers: Vec<String> = collectors.iter().map(|(_, r)| format!("http://{}", r.addrs.api)).collect();
        super::demo::dashboard(servers.join(",")).await
    };

    let sim_report = super::demo::stop_fleet_task(stop_fleet, fleet_done, fleet).await;
    // Members first, so that their last spans are committed before the coordinator's final sum; each flushes
    // everything it acknowledged.
    let mut alerts_by_collector = Vec::new();
    for (cloud, running) in collectors.into_iter().rev() {
        let fired = fired_alerts(&running).await;
        running.shutdown().await?;
        alerts_by_collector.push((cloud, fired));
    }
    outcome?;
    // The summary runs on the cluster, over every store, with the coordinator's alerts.
    let catalog = stores_catalog(&layout, &base).await?;
    let engine = cluster_engine(catalog.clone(), &base, &cluster_url).await?;
    let alerts = Engine::new(catalog, base.query.clone()).await?;
    // The scheduler reads the tables' logs every `cluster.refresh_interval`: wait until it shows the last commits.
    let count = "SELECT count(*) AS n FROM spans";
    let stored = super::demo::sql_json(&alerts, count).await?;
    let deadline = Instant::now() + base.cluster.refresh_interval * 10;
    while super::demo::sql_json(&engine, count).await? != stored && Instant::now() < deadline {
        tokio::time::sleep(base.cluster.refresh_interval / 4).await;
    }
    let summary = Summary::from_engines(&engine, &alerts).await;
    drop(cluster);
    let summary = summary?;
    println!(
        "{}",
        summary.render(&format!("the cluster at {cluster_url}, over {}", layout.root.join("stores").display()))
    );
    alerts_by_collector.reverse();
    for (cloud, fired) in &alerts_by_collector {
        println!("alerts fired by the {cloud} collector: {fired}");
    }
    if let Some(n) = earlier.filter(|n| *n > 0) {
        println!("note: {n} of the stored spans come from earlier runs in {}", layout.root.display());
    }
    summarise_run(&summary, &sim_report?, &stats, earlier)
}

/// Every store's tables, with the coordinator's data dir (its alert log).
async fn stores_catalog(layout: &Layout, config: &Config) -> Result<tailscope_core::catalog::Catalog, String> {
    let placed = (config.storage.placement.iter())
        .map(|r| store::remote::connect_placement(&r.url))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    store::open_placed_catalog(&layout.collector(CLOUDS[0]), None, placed).await.map_err(|e| e.to_string())
}

/// Spans an earlier run left in the stores (none when they hold no table yet).
async fn stored_spans(layout: &Layout, config: &Config) -> Result<Option<u64>, String> {
    let engine =
        Engine::new(stores_catalog(layout, config).await?, Default::default()).await.map_err(|e| e.to_string())?;
    let rows = super::demo::sql_json(&engine, "SELECT count(*) AS n FROM spans").await?;
    Ok(rows.first().and_then(|r| r["n"].as_u64()))
}

/// An engine whose statements run on the cluster at `url`, over `catalog`'s tables.
async fn cluster_engine(
    catalog: tailscope_core::catalog::Catalog,
    config: &Config,
    url: &str,
) -> Result<Engine, String> {
    let cluster = cluster::BallistaClient::new(url).map_err(|e| e.to_string())?;
    Engine::on_cluster(catalog, config.query.clone(), cluster).await.map_err(|e| e.to_string())
}

/// Alert events that fired at one collector (its alert log).
async fn fired_alerts(running: &Running) -> u64 {
    let engine = match Engine::new(running.collector().catalog(), Default::default()).await {
        Ok(e) => e,
        Err(_) => return 0,
    };
    super::demo::sql_json(&engine, "SELECT count(*) AS n FROM alerts WHERE state = 'firing'")
        .await
        .ok()
        .and_then(|rows| rows.first().and_then(|r| r["n"].as_u64()))
        .unwrap_or(0)
}

fn print_banner(args: &Args, layout: &Layout, collectors: &[(String, Running)], cluster_url: &str) {
    eprintln!("tailscope demo --topology multi-cloud: data under {}", layout.root.display());
    for (i, (cloud, running)) in collectors.iter().enumerate() {
        let role = if i == 0 { "budget coordinator" } else { "member" };
        eprintln!(
            "  collector {cloud:<6} OTLP/gRPC {}  API http://{}  ({role}; data {})",
            running.addrs.otlp_grpc,
            running.addrs.api,
            layout.collector(cloud).display()
        );
    }
    eprintln!(
        "  stores: {} (aws, azure, gcp, other: one per cloud by placement)",
        layout.root.join("stores").display()
    );
    eprintln!("  Ballista scheduler {cluster_url} with two executors; the collectors' SQL runs there");
    eprintln!(
        "  fleet: {} spans/s, each cloud's agents to its own collector (coreweave's to aws) (seed {}){}",
        args.rate,
        args.seed,
        args.duration.map(|d| format!(" for {}", humantime::format_duration(d))).unwrap_or_default()
    );
}
