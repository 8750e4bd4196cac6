//! `tailscope`: one binary for the collector, SQL, the live dashboard and the demo.

mod cmd;

use clap::{Parser, Subcommand};

/// Telemetry pipeline for multi-cloud AI agents: tail latency per provider and region, cost per session,
/// and budget guardrails for egress and hedged inference.
#[derive(Debug, Parser)]
#[command(name = "tailscope", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the collector: OTLP in (gRPC :4317, HTTP :4318), Parquet out, SQL/metrics API (:4319), Flight SQL (:4320).
    Serve(cmd::serve::Args),
    /// Run one SQL statement over the stored telemetry (or an interactive shell when none is given).
    Query(cmd::query::Args),
    /// Open the live terminal dashboard.
    Tui(cmd::tui::Args),
    /// Start a collector, drive a simulated multi-cloud agent fleet into it and open the dashboard.
    Demo(cmd::demo::Args),
    /// Send a simulated multi-cloud agent fleet's telemetry to any OTLP endpoint.
    Simulate(cmd::simulate::Args),
    /// Manage API keys: `keys new --name N --scope ingest` prints a key and the config lines that accept it.
    Keys(cmd::keys::Args),
    /// Check the price table: `prices check` lists its sources and dates, unpriced models and stale entries.
    Prices(cmd::prices::Args),
    /// Re-price stored spans with the current price table and rewrite their cost columns (collector stopped).
    Reprice(cmd::reprice::Args),
    /// List what retention (age and size caps, per table and project) removes now, or remove it (collector stopped).
    Retention(cmd::retention::Args),
    /// List the projects in the tables, or delete one project's data from every table (collector stopped).
    Projects(cmd::projects::Args),
    /// Run a Ballista scheduler over the tables: distributed SQL with `query --cluster df://HOST:PORT`.
    Scheduler(cmd::cluster::SchedulerArgs),
    /// Run a Ballista executor that joins a scheduler and runs the stages of its queries.
    Executor(cmd::cluster::ExecutorArgs),
}

/// Caps glibc's malloc arenas at one per core (at least 2) unless the operator set `MALLOC_ARENA_MAX`.
///
/// Why: glibc gives up to 8 arenas per core, and the threads that touch big buffers here are many (tokio workers,
/// the blocking pool that writes Parquet and commits to Delta). Each arena keeps its own freed pages, so a flush
/// that ran on a new thread leaves its peak behind in yet another arena. Measured on the 10x overload test
/// (2 cores, 64 MiB ceiling): VmHWM 300-315 MiB with glibc's default, 202-205 MiB with two arenas, at the same
/// acknowledged rate; docs/benchmarks.md has the ingest benchmark's figures.
fn bound_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
            return; // glibc read it at start-up; the operator's choice stands.
        }
        let cores = std::thread::available_parallelism().map_or(2, usize::from);
        let arenas = libc::c_int::try_from(cores.max(2)).unwrap_or(libc::c_int::MAX);
        // SAFETY: called first in main, before any thread is started; M_ARENA_MAX only bounds future arenas.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, arenas);
        }
    }
}

fn main() -> std::process::ExitCode {
    bound_malloc_arenas();
    let cli = Cli::parse();
    // The dashboard owns the terminal: log lines would tear its frames.
    let log_to_stderr = !matches!(cli.command, Command::Tui(_)) && !cmd::demo::owns_terminal(&cli.command);
    cmd::init_logging(log_to_stderr);
    if matches!(
        cli.command,
        Command::Prices(_) | Command::Reprice(_) | Command::Keys(_) | Command::Retention(_) | Command::Projects(_)
    ) {
        // Reports piped into `head` end quietly when the reader goes, as other command-line tools do, instead of
        // panicking on the write (Rust ignores SIGPIPE, so println! fails with EPIPE). Only these commands: the
        // servers must see EPIPE on a socket as an error, not die of it.
        // SAFETY: called before any thread is started; SIG_DFL is a valid disposition for SIGPIPE.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => cmd::serve::run(args).await,
            Command::Query(args) => cmd::query::run(args).await,
            Command::Tui(args) => cmd::tui::run(args).await,
            Command::Demo(args) => cmd::demo::run(args).await,
            Command::Simulate(args) => cmd::simulate::run(args).await,
            Command::Keys(args) => cmd::keys::run(args),
            Command::Prices(args) => cmd::prices::run(args).await,
            Command::Reprice(args) => cmd::reprice::run(args).await,
            Command::Retention(args) => cmd::retention::run(args).await,
            Command::Projects(args) => cmd::projects::run(args).await,
            Command::Scheduler(args) => cmd::cluster::scheduler(args).await,
            Command::Executor(args) => cmd::cluster::executor(args).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
