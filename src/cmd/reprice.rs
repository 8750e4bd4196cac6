//! `tailscope reprice --since DATE`: computes the cost columns of stored spans again with the current price table
//! (after a price file update or a correction) and rewrites their files, each replaced whole. Budgets follow: they
//! are rebuilt from the stored spans when the collector starts again.
//!
//! It runs on a stopped collector's data dir (it takes the data dir's lock, as `serve` does), so no flush, replay
//! or start-up clean-up runs beside it. Re-pricing is idempotent: a run cut short is finished by running it again.

use std::path::PathBuf;

use chrono::NaiveDate;
use collector::cost::Pricer;
use collector::cost::reprice::{RepriceTotals, reprice_file};
use tailscope_core::catalog::list_parquet_files;
use tailscope_core::config::Config;
use tailscope_core::layout::{ParquetOptions, lock_data_dir};
use tailscope_core::schema::Signal;

use super::CmdResult;

/// Flags of `tailscope reprice`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Re-price spans stored in partitions from this day on (`YYYY-MM-DD`, UTC).
    #[arg(long)]
    pub since: NaiveDate,
    /// ... up to and including this day (default: every later day).
    #[arg(long)]
    pub until: Option<NaiveDate>,
    /// The data dir of a stopped collector (default: the config's data_dir).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The tailscope config file: its data_dir, [pricing] (the prices to apply) and [storage] (file settings).
    #[arg(long, short, env = "TAILSCOPE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Report what would change without writing anything.
    #[arg(long)]
    pub dry_run: bool,
}

/// Runs `tailscope reprice`.
pub async fn run(args: Args) -> CmdResult {
    let config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if args.until.is_some_and(|until| until < args.since) {
        return Err(format!("--until {} is before --since {}", args.until.unwrap_or(args.since), args.since).into());
    }
    let pricer = Pricer::from_config(&config.pricing)?;
    let data_dir = args.data_dir.clone().unwrap_or_else(|| config.data_dir.clone());
    if !data_dir.is_dir() {
        return Err(format!(
            "no data dir at {}: pass --data-dir DIR (where `tailscope serve` writes)",
            data_dir.display()
        )
        .into());
    }
    let _lock = lock_data_dir(&data_dir)?;
    let props = ParquetOptions { row_group_rows: config.storage.row_group_rows, zstd_level: config.storage.zstd_level }
        .properties(Signal::Spans)?;
    let (since, until) = (args.since.to_string(), args.until.map(|d| d.to_string()));
    let mut files: Vec<_> = list_parquet_files(&data_dir, Signal::Spans)
        .map_err(|e| format!("cannot list {}: {e}", data_dir.join(Signal::Spans.table_name()).display()))?
        .into_iter()
        .filter(|f| f.date >= since && until.as_ref().is_none_or(|u| &f.date <= u))
        .collect();
    files.sort_by(|a, b| a.relative_path.cmp(&b.relative_path));

    let dry_run = args.dry_run;
    let (totals, rewritten, failed) = tokio::task::spawn_blocking(move || {
        let mut totals = RepriceTotals::default();
        let (mut rewritten, mut failed) = (0usize, Vec::new());
        for file in &files {
            match reprice_file(&pricer, &data_dir.join(&file.relative_path), &props, dry_run) {
                Ok(t) => {
                    rewritten += usize::from(t.changed_rows > 0);
                    totals.add(&t);
                }
                Err(e) => failed.push(e.to_string()),
            }
        }
        (totals, rewritten, failed)
    })
    .await?;

    let verb = if dry_run { "would rewrite" } else { "rewrote" };
    println!(
        "{} spans in partitions from {since}{}: {} changed; {verb} {rewritten} file(s)",
        totals.rows,
        until.map(|u| format!(" to {u}")).unwrap_or_default(),
        totals.changed_rows,
    );
    println!("cost_usd: ${:.6} before, ${:.6} after", totals.cost_before_usd, totals.cost_after_usd);
    if totals.unpriced_rows > 0 {
        println!("{} span(s) still have no price: `tailscope prices check` lists their models", totals.unpriced_rows);
    }
    if !dry_run && rewritten > 0 {
        println!("budgets and alerts follow the new figures when the collector starts again");
    }
    if failed.is_empty() {
        return Ok(());
    }
    for e in &failed {
        eprintln!("error: {e}");
    }
    Err(format!("{} file(s) could not be re-priced and were left as they were", failed.len()).into())
}
