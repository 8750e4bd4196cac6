//! Query benchmark: tailscope's engine against DuckDB on the same Parquet files, in the same run.
//!
//! Generates `--rows` realistic LLM spans (providers, regions, models, log-normal latencies with a tail, sessions,
//! costs) over 24 hours into the collector's layout, then times, in tailscope and in DuckDB (Python module, timed
//! inside Python so process start is not counted):
//! - p50/p95/p99 latency by provider, exact (`quantile_exact` vs DuckDB `quantile_cont`) and approximate
//!   (`approx_percentile_cont` vs DuckDB `approx_quantile`);
//! - cost per session (top 10 sessions by cost);
//! - a one-hour time window (per-provider count and mean latency).
//!
//! Each query runs once to warm caches, then `--runs` times; the median is reported.
//!
//! `cargo run --profile bench -p tailscope-benches --bin query -- --rows 1000000`
//! (needs `python3 -m pip install duckdb`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use clap::Parser;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use collector::catalog::Catalog;
use collector::config::QueryConfig;
use collector::schema::Signal;
use query::Engine;
use query::fixture::{SpanRow, spans_batch, write_parquet};

#[derive(Debug, Parser)]
struct Args {
    /// Spans to generate.
    #[arg(long, default_value_t = 1_000_000)]
    rows: usize,
    /// Timed runs per query (after one warm-up run).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Keep the generated data here (default: a temp dir, removed at exit).
    #[arg(long)]
    data_dir: Option<PathBuf>,
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

fn generate(dir: &Path, rows: usize) -> std::io::Result<()> {
    let mut rng = StdRng::seed_from_u64(42);
    let per_hour = rows.div_ceil(24);
    let mut seq = 0;
    let mut written = 0;
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
                cost_usd: (!tool).then(|| input as f64 * 3e-6 + output as f64 * 15e-6),
            });
        }
        seq += 1;
        write_parquet(dir, Signal::Spans, &spans_batch(&batch), seq)?;
        written += n;
    }
    Ok(())
}

struct Bench {
    name: &'static str,
    tailscope: String,
    duckdb: String,
}

fn benches() -> Vec<Bench> {
    let window_start = "2026-11-20T12:00:00Z";
    let window_end = "2026-11-20T13:00:00Z";
    vec![
        Bench {
            name: "p50/p95/p99 by provider (exact)",
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
            tailscope: "SELECT session_id, sum(cost_usd) AS cost, count(*) AS spans FROM spans \
                        GROUP BY session_id ORDER BY cost DESC, session_id LIMIT 10"
                .into(),
            duckdb: "SELECT session_id, sum(cost_usd) AS cost, count(*) AS spans FROM spans \
                     GROUP BY session_id ORDER BY cost DESC, session_id LIMIT 10"
                .into(),
        },
        Bench {
            name: "one-hour window by provider",
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

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

async fn time_tailscope(engine: &Engine, sql: &str, runs: usize) -> Result<(Duration, usize), String> {
    let warm = engine.sql(sql).await.map_err(|e| format!("{e}\n{sql}"))?;
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        engine.sql(sql).await.map_err(|e| e.to_string())?;
        times.push(started.elapsed());
    }
    Ok((median(times), warm.num_rows()))
}

/// Times every DuckDB query inside one Python process; returns medians in seconds.
fn time_duckdb(dir: &Path, queries: &[&str], runs: usize) -> Result<Vec<f64>, String> {
    let script = r#"
import json, sys, time, duckdb
glob, runs, queries = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
con = duckdb.connect()
con.execute(f"CREATE VIEW spans AS SELECT * FROM read_parquet('{glob}', hive_partitioning=true)")
out = []
for q in queries:
    con.execute(q).fetchall()
    times = []
    for _ in range(runs):
        t = time.perf_counter(); con.execute(q).fetchall(); times.append(time.perf_counter() - t)
    times.sort(); out.append(times[len(times) // 2])
print(json.dumps({"version": duckdb.__version__, "threads": con.execute("SELECT current_setting('threads')").fetchone()[0], "medians": out}))
"#;
    let glob = format!("{}/spans/**/*.parquet", dir.display());
    let out = Command::new("python3")
        .args(["-c", script, &glob, &runs.to_string(), &serde_json::to_string(queries).unwrap()])
        .output()
        .map_err(|e| format!("cannot run python3: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "DuckDB run failed (python3 -m pip install duckdb): {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
    eprintln!("DuckDB {} with {} threads", v["version"], v["threads"]);
    Ok(v["medians"].as_array().unwrap().iter().map(|m| m.as_f64().unwrap()).collect())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let tmp = tempfile::tempdir()?;
    let dir = args.data_dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    let started = Instant::now();
    if !dir.join("spans").exists() {
        generate(&dir, args.rows)?;
    }
    let bytes: u64 = Catalog::open(&dir)?.snapshot(Signal::Spans).files.iter().map(|f| f.size).sum();
    eprintln!(
        "{} spans in {:.1} MiB of Parquet ({:.1} s to generate)",
        args.rows,
        bytes as f64 / 1048576.0,
        started.elapsed().as_secs_f64()
    );

    let config = QueryConfig {
        timeout: Duration::from_secs(600),
        memory_limit_mb: 8192,
        max_concurrent: 1,
    };
    let engine = Engine::open(&dir, config).await?;
    let benches = benches();
    let mut ours = Vec::new();
    for b in &benches {
        let (t, rows) = time_tailscope(&engine, &b.tailscope, args.runs).await?;
        eprintln!("tailscope  {:<40} {:>8.1} ms ({rows} rows)", b.name, t.as_secs_f64() * 1e3);
        ours.push(t.as_secs_f64());
    }
    let theirs = time_duckdb(&dir, &benches.iter().map(|b| b.duckdb.as_str()).collect::<Vec<_>>(), args.runs)?;

    println!("| Query ({} spans) | tailscope (ms) | DuckDB (ms) | tailscope / DuckDB |", args.rows);
    println!("|---|---:|---:|---:|");
    for ((b, ours), theirs) in benches.iter().zip(ours).zip(theirs) {
        println!("| {} | {:.1} | {:.1} | {:.2} |", b.name, ours * 1e3, theirs * 1e3, ours / theirs);
    }
    Ok(())
}
