//! `tailscope reprice --since DATE`: computes the cost columns of stored spans again with the current price table
//! (after a price file update or a correction), writes the changed files anew and swaps them for the old ones in one
//! Delta commit: readers see the table before or after, never a mix. Budgets follow: they are rebuilt from the
//! stored spans when the collector starts again.
//!
//! It runs on a stopped collector's data dir (it takes the data dir's lock, as `serve` does), so no flush, replay
//! or start-up clean-up runs beside it. Re-pricing is idempotent: a run cut short is finished by running it again.

use std::path::PathBuf;

use chrono::NaiveDate;
use collector::cost::Pricer;
use collector::cost::reprice::{RepriceTotals, WriterProperties, reprice_file};
use tailscope_core::catalog::ParquetFile;
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
    if let Some(url) = &config.storage.url {
        return Err(format!(
            "tailscope reprice rewrites files under the data dir; the tables are on {url} (storage.url), where it \
             does not run yet"
        )
        .into());
    }
    if !config.storage.placement.is_empty() {
        return Err(
            "tailscope reprice rewrites files under the data dir; storage.placement puts the tables on several \
                    stores, where it does not run yet"
                .into(),
        );
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
    // The files the table holds now (its Delta snapshot), never a directory listing.
    let tables = store::Tables::open(&data_dir, None).await?;
    let files: Vec<ParquetFile> = tables
        .view(Signal::Spans)
        .await?
        .files
        .into_iter()
        .filter(|f| f.date >= since && until.as_ref().is_none_or(|u| &f.date <= u))
        .collect();

    let dry_run = args.dry_run;
    let root = data_dir.clone();
    let (totals, swaps, failed) =
        tokio::task::spawn_blocking(move || reprice_files(&pricer, &root, files, &props, dry_run)).await?;
    let rewritten = swaps.len();
    if !dry_run && !failed.is_empty() {
        // All or nothing: a partial re-pricing would leave the table's figures from two price tables.
        remove_new_files(&data_dir, &swaps);
        for e in &failed {
            eprintln!("error: {e}");
        }
        return Err(format!("{} file(s) could not be re-priced; nothing was changed", failed.len()).into());
    }
    if !dry_run && !swaps.is_empty() {
        let what =
            format!("re-priced spans from {since}{}", until.as_ref().map(|u| format!(" to {u}")).unwrap_or_default());
        commit_swaps(&tables, &data_dir, &swaps, &what).await?;
    }

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
        println!("one commit swapped them; budgets and alerts follow the new figures when the collector starts again");
    }
    if failed.is_empty() {
        return Ok(());
    }
    for e in &failed {
        eprintln!("error: {e}");
    }
    Err(format!("{} file(s) could not be re-priced", failed.len()).into())
}

/// A file whose rows changed, and the new file holding them (none in a dry run).
type Swap = (ParquetFile, Option<PathBuf>);

/// Re-prices `files` one after the other: the totals, the files that changed, and the errors of those that failed.
fn reprice_files(
    pricer: &Pricer,
    data_dir: &std::path::Path,
    files: Vec<ParquetFile>,
    props: &WriterProperties,
    dry_run: bool,
) -> (RepriceTotals, Vec<Swap>, Vec<String>) {
    let mut totals = RepriceTotals::default();
    let (mut swaps, mut failed) = (Vec::new(), Vec::new());
    for file in files {
        match reprice_file(pricer, &data_dir.join(&file.relative_path), props, dry_run) {
            Ok(repriced) => {
                totals.add(&repriced.totals);
                if repriced.totals.changed_rows > 0 {
                    swaps.push((file, repriced.new_file));
                }
            }
            Err(e) => failed.push(e.to_string()),
        }
    }
    (totals, swaps, failed)
}

/// Swaps the old files for the new ones in one commit of the `spans` table; on failure deletes the new files.
async fn commit_swaps(tables: &store::Tables, data_dir: &std::path::Path, swaps: &[Swap], what: &str) -> CmdResult {
    let (old, new): (Vec<ParquetFile>, Vec<ParquetFile>) = swaps
        .iter()
        .filter_map(|(old, new)| {
            let new = new.as_ref()?;
            let size = std::fs::metadata(new).ok()?.len();
            let mut entry = ParquetFile::from_relative_path(new.strip_prefix(data_dir).ok()?, size)?;
            entry.rows = old.rows;
            Some((old.clone(), entry))
        })
        .unzip();
    if old.len() != swaps.len() {
        remove_new_files(data_dir, swaps);
        return Err("a re-priced file is not in the table's layout; nothing was changed".into());
    }
    if let Err(e) = tables.commit_rewrite(Signal::Spans, &old, &new, what).await {
        remove_new_files(data_dir, swaps);
        return Err(format!("committing the re-priced files failed; nothing was changed: {e}").into());
    }
    Ok(())
}

/// Deletes the new files of a re-pricing that is not committed (no commit added them, so no reader saw them).
fn remove_new_files(data_dir: &std::path::Path, swaps: &[Swap]) {
    for new in swaps.iter().filter_map(|(_, new)| new.as_ref()) {
        if let Err(e) = std::fs::remove_file(new) {
            tracing::warn!(file = %new.display(), data_dir = %data_dir.display(), error = %e, "cannot remove an uncommitted re-priced file");
        }
    }
}
