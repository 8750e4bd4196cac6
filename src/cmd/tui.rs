//! `tailscope tui`: the live terminal dashboard.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::CmdResult;

mod http_source;

pub(crate) use http_source::DEFAULT_MAX_ANSWER_MB;
use http_source::HttpSource;

/// Flags of `tailscope tui`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The tailscope server to read live figures and SQL from (its API address). Several, comma-separated
    /// (A,B,C): live panels merge every server's live windows into one view (percentiles of the union of their
    /// spans; a server that cannot be read is named in the status bar), while SQL and alert panels read the first
    /// server only (SQL across collectors is distributed SQL, not a merge).
    #[arg(
        long,
        value_name = "URL[,URL...]",
        default_value = "http://127.0.0.1:4319",
        env = "TAILSCOPE_SERVER",
        conflicts_with = "data_dir"
    )]
    pub server: String,
    /// Browse the history in a data directory instead, without a server (SQL only: no live windows or alerts API).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Which screens: a default's name (overview, cost, hedging, alerts, session), a .toml file, or a directory of
    /// them. All defaults when omitted.
    #[arg(long, value_name = "NAME|FILE")]
    pub dashboard: Option<String>,
    /// How often panels refresh, e.g. 1s, 500ms, 5s.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub refresh: Duration,
    /// Give up on one fetch after this long (the panel shows the error; the screen never blocks).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Read at most this many MiB of one SQL or API answer; past it the panel shows an error instead of the
    /// dashboard allocating without limit (live histograms from several servers are read to 16 MiB each).
    #[arg(long, value_name = "MIB", default_value_t = http_source::DEFAULT_MAX_ANSWER_MB,
          value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub max_answer_mb: u64,
    #[command(flatten)]
    pub auth: super::ServerAuth,
}

/// Runs `tailscope tui`.
pub async fn run(args: Args) -> CmdResult {
    // Every screen is checked before the terminal is taken over: a bad file is an error on a normal terminal.
    let screens = tui::dashboard::resolve(args.dashboard.as_deref())?;
    if screens.is_empty() {
        return Err(format!("no dashboards in {}", args.dashboard.unwrap_or_default()).into());
    }
    if args.refresh < Duration::from_millis(100) {
        return Err("--refresh must be at least 100ms".into());
    }
    let source: Arc<dyn tui::DataSource> = match args.data_dir {
        Some(dir) => Arc::new(tui::LocalSource::new(dir).await?),
        None => Arc::new(HttpSource::new(&args.server, args.timeout, args.max_answer_mb, &args.auth)?),
    };
    tui::run(screens, source, args.refresh).await?;
    Ok(())
}
