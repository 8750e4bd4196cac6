//! Query benchmark: tailscope's engine against DuckDB on the same Parquet files, in the same run.
//!
//! Generates `--rows` realistic LLM spans (providers, regions, models, log-normal latencies with a tail, sessions,
//! costs) over 24 hours into a Delta table committed as the collector commits a flush, then times, in tailscope
//! and in DuckDB (Python module, timed inside Python so process start is not counted; DuckDB reads the same Parquet
//! files by glob):
//! - p50/p95/p99 latency by provider, exact (`quantile_exact` vs DuckDB `quantile_cont`) and approximate
//!   (`approx_percentile_cont` vs DuckDB `approx_quantile`);
//! - cost per session (top 10 sessions by cost);
//! - a one-hour time window (per-provider count and mean latency).
//!
//! Each query runs once in each engine to warm caches, then `--runs` rounds alternate one tailscope run and one
//! DuckDB run (DuckDB stays up in one Python process), so load from other work on the machine falls on both
//! engines alike; the medians are reported. Before timing, the exact queries' answers are compared between the
//! engines (same rows, floats within 1e-9 relative), so both sides are known to compute the same thing.
//!
//! `cargo run --profile bench -p tailscope-benches --bin query -- --rows 1000000`
//! (needs `python3 -m pip install duckdb`). `--engine tailscope --only session --runs 50` repeats one query in
//! tailscope alone (for `perf`); `--explain` prints tailscope's `EXPLAIN ANALYZE` of each query.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use query::Engine;
use query::fixture::{SpanRow, spans_batch, write_parquet};
use tailscope_core::catalog::ParquetFile;
use tailscope_core::config::QueryConfig;
use tailscope_core::schema::Signal;

#[derive(Debug, Parser)]
struct Args {
    /// Spans to generate.
    #[arg(long, default_value_t = 1_000_000)]
    rows: usize,
    /// Timed runs per query (after one warm-up run).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Keep the generated data here (default: a temp dir, removed at exit). Reused when it already has spans.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// `both`, or `tailscope` alone (no DuckDB, no comparison: for profiling).
    #[arg(long, default_value = "both")]
    engine: String,
    /// Only the queries whose name contains this.
    #[arg(long)]
    only: Option<String>,
    /// Print tailscope's `EXPLAIN ANALYZE` of each query after timing it (with `--cluster`, the cluster's `EXPLAIN`
    /// too: its stages).
    #[arg(long)]
    explain: bool,
    /// Also run every query on a Ballista cluster, checked against one node's answer and timed in the same rounds:
    /// `local` starts a scheduler and `--executors` executors in this process over `--data-dir` (as `tailscope
    /// scheduler` and `tailscope executor` run them); `df://HOST:PORT` uses a running one over the same files.
    #[arg(long)]
    cluster: Option<String>,
    /// Executors of `--cluster local`, each running `--executor-slots` tasks at once.
    #[arg(long, default_value_t = 2)]
    executors: usize,
    /// Tasks each local executor runs at once.
    #[arg(long, default_value_t = 1)]
    executor_slots: usize,
}

/// 2026-11-20T00:00:00Z.
const DAY_START: i64 = 1_795_132_800_000_000_000;
const HOUR: i64 = 3_600_000_000_000;

const PROVIDERS: [(&str, &[&str], &[&str], f64); 5] = [
    ("aws.bedrock", &["us-east-1", "eu-west-1"], &["anthropic.claude-sonnet-4", "amazon.nova-pro"], 6.7),
    ("azure.ai.openai", &["eastus", "westeurope"], &["gpt-4.1", "gpt-4.1-mini"], 6.5),
    ("gcp.vertex_ai", &["us-central1", "europe-west4"], &["gemini-2.5-pro", "gemini-2.5-flash"], 6.6),
    ("anthropic", &["us"], &["claude-sonnet-4"], 6.8),
    ("openai", &["us"], &["gpt-4.1"], 6.4),
];

/// Standard normal by Box-Muller.
fn normal(rng: &mut StdRng) -> f64 {
    let u1: f64 = rng.random::<f64>().max(1e-12);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// Writes `rows` rows of the stored `spans` table, straight into Parquet: the query benchmark measures queries, not
/// ingest, so it does not go through the simulator and the collector. Its own providers, latencies and seed are
/// kept because the figures in docs/benchmarks.md were measured on exactly these rows. Returns the files written,
/// with their row counts, for the Delta commit that makes them the table.
fn generate(dir: &Path, rows: usize) -> std::io::Result<Vec<ParquetFile>> {
    let mut rng = StdRng::seed_from_u64(42);
    let per_hour = rows.div_ceil(24);
    let mut seq = 0;
    let mut written = 0;
    let mut files = Vec::new();
    for hour in 0..24i64 {
        let n = per_hour.min(rows - written);
        if n == 0 {
            break;
        }
        let mut batch = Vec::with_capacity(n);
        for i in 0..n {
            let id = written + i;
            let (provider, regions, models, mu) = PROVIDERS[rng.random_range(0..PROVIDERS.len())];
            let tool = rng.random_bool(0.3);
            // Log-normal latency (median e^mu ms) with a 1% tail of slow calls.
            let mut ms = (mu + 0.6 * normal(&mut rng)).exp();
            if rng.random_bool(0.01) {
                ms *= 8.0;
            }
            let input = rng.random_range(200..20_000i64);
            let output = rng.random_range(20..2_000i64);
            let offset = (i as i64) * (HOUR / n as i64);
            batch.push(SpanRow {
                trace_id: format!("{:032x}", id / 8 + 1),
                span_id: format!("{:016x}", id + 1),
                name: if tool { "execute_tool search".into() } else { format!("chat {}", models[0]) },
                start_ns: DAY_START + hour * HOUR + offset,
                duration_ns: (ms * 1e6) as i64,
                error: rng.random_bool(0.02),
                service_name: "support-agent".into(),
                cloud_region: Some(regions[rng.random_range(0..regions.len())].into()),
                gen_ai_provider: (!tool).then(|| provider.into()),
                gen_ai_operation: Some(if tool { "execute_tool" } else { "chat" }.into()),
                request_model: (!tool).then(|| models[rng.random_range(0..models.len())].into()),
                input_tokens: (!tool).then_some(input),
                output_tokens: (!tool).then_some(output),
                session_id: Some(format!("session-{}", id / 20)),
                tool_name: tool.then(|| "search".into()),
                cost_usd: (!tool).then_some(input as f64 * 3e-6 + output as f64 * 15e-6),
                ..SpanRow::default()
            });
        }
        seq += 1;
        let mut file = write_parquet(dir, Signal::Spans, &spans_batch(&batch), seq)?;
        file.rows = Some(n as u64);
        files.push(file);
        written += n;
    }
    Ok(files)
}

/// Makes `dir` a data dir whose `spans` Delta table holds `rows` generated rows, committed as a collector's flush
/// is (one commit of `add` actions with row counts and time statistics), so the engine reads the Delta snapshot as
/// it does behind `tailscope serve`. The tables are created before the files are written: a table directory of
/// Parquet files without a log would be converted instead, without row counts.
async fn generate_table(dir: &Path, rows: usize) -> Result<(), Box<dyn std::error::Error>> {
    let tables = store::Tables::open(dir, Some(store::AppId::for_wal("query-bench"))).await?;
    let files = generate(dir, rows)?;
    tables.commit_flush(Signal::Spans, &files, 1).await?;
    Ok(())
}

struct Bench {
    name: &'static str,
    /// Both engines must give the same rows (exact queries); approximate ones are only timed.
    exact: bool,
    tailscope: String,
    duckdb: String,
}

fn benches() -> Vec<Bench> {
    let window_start = "2026-11-20T12:00:00Z";
    let window_end = "2026-11-20T13:00:00Z";
    vec![
        Bench {
            name: "p50/p95/p99 by provider (exact)",
            exact: true,
            tailscope: "SELECT gen_ai_provider, quantile_exact(duration_ns / 1e6, 0.5) AS p50, \
                        quantile_exact(duration_ns / 1e6, 0.95) AS p95, quantile_exact(duration_ns / 1e6, 0.99) AS p99 \
                        FROM spans WHERE gen_ai_provider IS NOT NULL GROUP BY gen_ai_provider"
                .into(),
            duckdb: "SELECT gen_ai_provider, quantile_cont(duration_ns / 1e6, 0.5) AS p50, \
                     quantile_cont(duration_ns / 1e6, 0.95) AS p95, quantile_cont(duration_ns / 1e6, 0.99) AS p99 \
                     FROM spans WHERE gen_ai_provider IS NOT NULL GROUP BY gen_ai_provider"
                .into(),
        },
        Bench {
            name: "p50/p95/p99 by provider (approximate)",
            exact: false,
            tailscope: "SELECT gen_ai_provider, approx_percentile_cont(duration_ns / 1e6, 0.5) AS p50, \
                        approx_percentile_cont(duration_ns / 1e6, 0.95) AS p95, \
                        approx_percentile_cont(duration_ns / 1e6, 0.99) AS p99 \
                        FROM spans WHERE gen_ai_provider IS NOT NULL GROUP BY gen_ai_provider"
                .into(),
            duckdb: "SELECT gen_ai_provider, approx_quantile(duration_ns / 1e6, 0.5) AS p50, \
                     approx_quantile(duration_ns / 1e6, 0.95) AS p95, approx_quantile(duration_ns / 1e6, 0.99) AS p99 \
                     FROM spans WHERE gen_ai_provider IS NOT NULL GROUP BY gen_ai_provider"
                .into(),
        },
        Bench {
            name: "cost per session (top 10)",
            exact: true,
            tailscope: "SELECT session_id, sum(cost_usd) AS cost, count(*) AS spans FROM spans \
                        GROUP BY session_id ORDER BY cost DESC, session_id LIMIT 10"
                .into(),
            duckdb: "SELECT session_id, sum(cost_usd) AS cost, count(*) AS spans FROM spans \
                     GROUP BY session_id ORDER BY cost DESC, session_id LIMIT 10"
                .into(),
        },
        Bench {
            name: "one-hour window by provider",
            exact: true,
            tailscope: format!(
                "SELECT gen_ai_provider, count(*) AS calls, avg(duration_ns) / 1e6 AS mean_ms FROM spans \
                 WHERE start_time >= '{window_start}' AND start_time < '{window_end}' GROUP BY gen_ai_provider"
            ),
            duckdb: format!(
                "SELECT gen_ai_provider, count(*) AS calls, avg(duration_ns) / 1e6 AS mean_ms FROM spans \
                 WHERE start_time >= '{window_start}'::TIMESTAMPTZ_NS AND start_time < '{window_end}'::TIMESTAMPTZ_NS \
                 GROUP BY gen_ai_provider"
            ),
        },
    ]
}

fn median(mut times: Vec<f64>) -> f64 {
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// Runs one tailscope query; returns its time and its rows as JSON objects.
async fn run_tailscope(engine: &Engine, sql: &str) -> Result<(f64, Vec<serde_json::Value>), String> {
    let started = Instant::now();
    let out = engine.sql(sql).await.map_err(|e| format!("{e}\n{sql}"))?;
    let seconds = started.elapsed().as_secs_f64();
    let json = query::format::to_bytes(query::format::Format::Json, &out).map_err(|e| e.to_string())?;
    Ok((seconds, serde_json::from_slice(&json).map_err(|e| e.to_string())?))
}

/// DuckDB in one Python process over the same files: one query per line in, its time (measured inside Python, so
/// process start and the pipe are not counted) and rows out.
struct DuckDb {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl DuckDb {
    const SCRIPT: &str = r#"
import json, sys, time, duckdb
con = duckdb.connect()
con.execute(f"CREATE VIEW spans AS SELECT * FROM read_parquet('{sys.argv[1]}', hive_partitioning=true)")
threads = con.execute("SELECT current_setting('threads')").fetchone()[0]
print(json.dumps({"version": duckdb.__version__, "threads": threads}), flush=True)
for line in sys.stdin:
    q = json.loads(line)
    t = time.perf_counter(); cur = con.execute(q); rows = cur.fetchall(); t = time.perf_counter() - t
    names = [d[0] for d in cur.description]
    print(json.dumps({"seconds": t, "rows": [dict(zip(names, r)) for r in rows]}, default=str), flush=True)
"#;

    fn start(dir: &Path) -> Result<(DuckDb, String), String> {
        // The data files only: a Delta checkpoint under `_delta_log/` is Parquet too.
        let glob = format!("{}/spans/date=*/hour=*/*.parquet", dir.display());
        let mut child = Command::new("python3")
            .args(["-c", Self::SCRIPT, &glob])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run python3: {e}"))?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = BufReader::new(child.stdout.take().expect("piped"));
        let mut duck = DuckDb { child, stdin, stdout };
        let hello = duck.read().map_err(|e| format!("{e} (python3 -m pip install duckdb)"))?;
        Ok((duck, format!("DuckDB {} with {} threads", hello["version"], hello["threads"])))
    }

    fn read(&mut self) -> Result<serde_json::Value, String> {
        let mut line = String::new();
        self.stdout.read_line(&mut line).map_err(|e| e.to_string())?;
        if line.is_empty() {
            return Err("DuckDB's Python process exited (its error is above)".into());
        }
        serde_json::from_str(&line).map_err(|e| format!("{e}: {line}"))
    }

    fn run(&mut self, sql: &str) -> Result<(f64, Vec<serde_json::Value>), String> {
        writeln!(self.stdin, "{}", serde_json::to_string(sql).unwrap()).map_err(|e| e.to_string())?;
        let mut answer = self.read()?;
        let rows = answer["rows"].as_array_mut().map(std::mem::take).unwrap_or_default();
        Ok((answer["seconds"].as_f64().unwrap_or(f64::NAN), rows))
    }
}

impl Drop for DuckDb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The rows as sorted, comparable lists of (column, value) with numbers as f64.
fn normalised(rows: &[serde_json::Value]) -> Vec<Vec<(String, serde_json::Value)>> {
    let mut out: Vec<Vec<(String, serde_json::Value)>> = rows
        .iter()
        .map(|r| {
            let mut cols: Vec<(String, serde_json::Value)> =
                r.as_object().map(|o| o.iter().map(|(k, v)| (k.clone(), v.clone())).collect()).unwrap_or_default();
            cols.sort_by(|a, b| a.0.cmp(&b.0));
            cols
        })
        .collect();
    out.sort_by_key(|r| format!("{r:?}"));
    out
}

fn same_answer(ours: &[serde_json::Value], theirs: &[serde_json::Value]) -> Result<(), String> {
    let (a, b) = (normalised(ours), normalised(theirs));
    let differ = || format!("tailscope: {ours:?}\nDuckDB: {theirs:?}");
    if a.len() != b.len() {
        return Err(format!("{} rows vs {}\n{}", a.len(), b.len(), differ()));
    }
    for (ra, rb) in a.iter().zip(&b) {
        for ((ka, va), (kb, vb)) in ra.iter().zip(rb) {
            let same = ka == kb
                && match (va.as_f64(), vb.as_f64()) {
                    (Some(x), Some(y)) => (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0),
                    _ => va == vb,
                };
            if !same {
                return Err(format!("{ka}={va} vs {kb}={vb}\n{}", differ()));
            }
        }
    }
    Ok(())
}

/// A scheduler and `executors` executors on loopback in this process, over the tables under `dir`, as `tailscope
/// scheduler` and `tailscope executor` run them; returns the cluster once a query runs there.
async fn local_cluster(
    dir: &Path,
    executors: usize,
    slots: usize,
) -> Result<cluster::local::InProcess, Box<dyn std::error::Error>> {
    let mut config = tailscope_core::config::Config { data_dir: dir.to_path_buf(), ..Default::default() };
    config.cluster.executor_slots = slots;
    config.cluster.partitions = executors * slots;
    config.memory.limit_mb = 4096;
    let cluster = cluster::local::InProcess::start(&config, executors, &dir.join("ballista")).await?;
    let url = cluster.url.clone();
    let probe = Engine::on_cluster(
        tailscope_core::catalog::Catalog::new(dir),
        QueryConfig::default(),
        cluster::BallistaClient::new(&url)?,
    )
    .await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(e) = probe.sql("SELECT count(*) FROM spans").await {
        if Instant::now() > deadline {
            return Err(format!("the local cluster never answered: {e}").into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(cluster)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let tmp = tempfile::tempdir()?;
    let dir = args.data_dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    let started = Instant::now();
    if !dir.join("spans").exists() {
        generate_table(&dir, args.rows).await?;
    }
    let bytes: u64 = store::open_catalog(&dir).await?.snapshot(Signal::Spans).files.iter().map(|f| f.size).sum();
    let generated_s = started.elapsed().as_secs_f64();

    let config = QueryConfig {
        timeout: Duration::from_secs(600),
        memory_limit_mb: 8192,
        max_concurrent: 1,
        ..QueryConfig::default()
    };
    // Kept running until the end of the run.
    let mut _local = None;
    let cluster = match args.cluster.as_deref() {
        Some("local") => {
            let running = local_cluster(&dir, args.executors, args.executor_slots).await?;
            let url = running.url.clone();
            _local = Some(running);
            eprintln!("a scheduler and {} executors of {} slots at {url}", args.executors, args.executor_slots);
            let client = cluster::BallistaClient::new(&url)?;
            Some(Engine::on_cluster(tailscope_core::catalog::Catalog::new(&dir), config.clone(), client).await?)
        }
        Some(url) => {
            let client = cluster::BallistaClient::new(url)?;
            Some(Engine::on_cluster(tailscope_core::catalog::Catalog::new(&dir), config.clone(), client).await?)
        }
        None => None,
    };
    let engine = Engine::open(&dir, config).await?;
    // A reused `--data-dir` holds however many spans it was generated with, whatever `--rows` says now.
    let count = engine.sql("SELECT count(*) AS n FROM spans").await?;
    let rows = count.batches[0]
        .column(0)
        .as_any()
        .downcast_ref::<datafusion::arrow::array::Int64Array>()
        .map_or(0, |n| n.value(0));
    eprintln!("{rows} spans in {:.1} MiB of Parquet ({generated_s:.1} s to generate)", bytes as f64 / 1048576.0);
    let mut duck = match args.engine.as_str() {
        "both" => {
            let (duck, hello) = DuckDb::start(&dir)?;
            eprintln!("{hello}");
            Some(duck)
        }
        "tailscope" => None,
        other => return Err(format!("--engine {other}: use both or tailscope").into()),
    };
    let benches: Vec<Bench> =
        benches().into_iter().filter(|b| args.only.as_deref().is_none_or(|o| b.name.contains(o))).collect();

    let (mut table, mut cluster_table) = (Vec::new(), Vec::new());
    for b in &benches {
        // Warm-up, and the check that both engines answer the same.
        let (_, ours) = run_tailscope(&engine, &b.tailscope).await?;
        if let Some(duck) = duck.as_mut() {
            let (_, theirs) = duck.run(&b.duckdb)?;
            if b.exact {
                same_answer(&ours, &theirs).map_err(|e| format!("{}: the engines disagree: {e}", b.name))?;
            }
        }
        if let Some(cluster) = &cluster {
            let (_, many) = run_tailscope(cluster, &b.tailscope).await?;
            if b.exact {
                same_answer(&ours, &many).map_err(|e| format!("{}: the cluster disagrees: {e}", b.name))?;
            }
        }
        let (mut our_times, mut their_times, mut cluster_times) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..args.runs {
            our_times.push(run_tailscope(&engine, &b.tailscope).await?.0);
            if let Some(duck) = duck.as_mut() {
                their_times.push(duck.run(&b.duckdb)?.0);
            }
            if let Some(cluster) = &cluster {
                cluster_times.push(run_tailscope(cluster, &b.tailscope).await?.0);
            }
        }
        let ours_s = median(our_times);
        let theirs_s = (!their_times.is_empty()).then(|| median(their_times));
        let cluster_s = (!cluster_times.is_empty()).then(|| median(cluster_times));
        if let Some(t) = cluster_s {
            eprintln!("{:<40} cluster   {:>8.1} ms  ({:+.1} ms against one node)", b.name, t * 1e3, (t - ours_s) * 1e3);
        }
        eprintln!(
            "{:<40} tailscope {:>8.1} ms  DuckDB {:>8} ms  ({} rows{})",
            b.name,
            ours_s * 1e3,
            theirs_s.map_or("-".into(), |t| format!("{:.1}", t * 1e3)),
            ours.len(),
            if b.exact && duck.is_some() { ", same answer" } else { "" }
        );
        if args.explain {
            let plan = engine.sql(&format!("EXPLAIN ANALYZE {}", b.tailscope)).await?;
            let text = query::format::to_bytes(query::format::Format::Table, &plan)?;
            eprintln!("{}", String::from_utf8_lossy(&text));
            if let Some(cluster) = &cluster {
                let plan = cluster.sql(&format!("EXPLAIN {}", b.tailscope)).await?;
                let text = query::format::to_bytes(query::format::Format::Table, &plan)?;
                eprintln!("{}", String::from_utf8_lossy(&text));
            }
        }
        table.push((b.name, ours_s, theirs_s));
        cluster_table.push((b.name, ours_s, cluster_s));
    }

    println!("| Query ({rows} spans) | tailscope (ms) | DuckDB (ms) | tailscope / DuckDB |");
    println!("|---|---:|---:|---:|");
    for (name, ours, theirs) in table {
        match theirs {
            Some(t) => println!("| {name} | {:.1} | {:.1} | {:.2} |", ours * 1e3, t * 1e3, ours / t),
            None => println!("| {name} | {:.1} | - | - |", ours * 1e3),
        }
    }
    if cluster.is_some() {
        println!();
        println!("| Query ({rows} spans) | one node (ms) | cluster (ms) | overhead (ms) | cluster / one node |");
        println!("|---|---:|---:|---:|---:|");
        for (name, one, many) in cluster_table {
            if let Some(many) = many {
                let (one, many) = (one * 1e3, many * 1e3);
                println!("| {name} | {one:.1} | {many:.1} | {:.1} | {:.2} |", many - one, many / one);
            }
        }
    }
    Ok(())
}
