//! `tailscope retention [--dry-run]`: what the configured retention (`storage.retention*`, `storage.max_bytes*`,
//! `[projects.NAME]`) removes from each table now, partition by partition and why; without `--dry-run` it removes
//! it (one Delta `DELETE` commit per table, then vacuum of what is past the grace), on a stopped collector's data
//! dir, as the collector's own maintenance round would.
//!
//! The plan is `store::retention::plan`, the collector's own, so a dry run lists exactly what a run on the same
//! snapshot removes.

use std::path::{Path, PathBuf};

use serde_json::json;
use store::retention::{RetentionPlan, RetentionPolicy};
use tailscope_core::config::Config;
use tailscope_core::layout::lock_data_dir;
use tailscope_core::schema::Signal;

use super::CmdResult;

/// How a report is written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ReportFormat {
    /// Aligned columns for people.
    #[default]
    Table,
    /// One JSON document for scripts.
    Json,
}

/// Flags of `tailscope retention`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// List what would go, change nothing (allowed while a collector runs).
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub location: Location,
}

/// Where the data is and how to print the answer: the flags `retention` and `projects` share.
#[derive(Debug, clap::Args)]
pub struct Location {
    /// The data dir (default: the config's data_dir). To change the tables, that of a stopped collector.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The tailscope config file: its data_dir, [storage] retention, size caps and vacuum_grace, and [projects.NAME].
    #[arg(long, short, env = "TAILSCOPE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub format: ReportFormat,
}

impl Location {
    /// The config (the defaults without `--config`) and the data dir it or `--data-dir` names.
    pub fn load(&self) -> Result<(Config, PathBuf), Box<dyn std::error::Error + Send + Sync>> {
        let config = match &self.config {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        let data_dir = self.data_dir.clone().unwrap_or_else(|| config.data_dir.clone());
        // These commands work on the tables under a stopped collector's data dir, under its lock; on an object
        // store that lock guards nothing, and a running collector applies retention there itself.
        if let Some(url) = &config.storage.url {
            return Err(format!(
                "the tables are on {url} (storage.url): this command works on tables under the data dir only; a \
                 collector on that store applies the retention settings itself every storage.maintenance_interval"
            )
            .into());
        }
        if !config.storage.placement.is_empty() {
            return Err("storage.placement puts the tables on several stores: this command works on tables under the \
                        data dir only; a collector applies the retention settings to every store itself every \
                        storage.maintenance_interval"
                .into());
        }
        Ok((config, data_dir))
    }
}

/// Runs `tailscope retention`.
pub async fn run(args: Args) -> CmdResult {
    let (config, data_dir) = args.location.load()?;
    let (tables, _lock) = open_tables(&data_dir, args.dry_run).await?;
    let now = chrono::Utc::now();
    let mut plans = Vec::new();
    for signal in Signal::ALL {
        let policy = RetentionPolicy::from_config(&config, signal);
        let view = tables.view(signal).await?;
        plans.push(store::retention::plan(signal, &view, &policy, now));
    }
    let vacuumed = if args.dry_run { None } else { Some(apply(&tables, &plans, &config).await?) };
    report(&plans, args.dry_run, vacuumed.as_deref(), args.location.format, "retention");
    Ok(())
}

/// The tables of `data_dir`: read only for a dry run (a collector may be running), else under the data dir's lock
/// (held while the returned lock lives), so no collector flushes, compacts or replays beside the change.
pub(super) async fn open_tables(
    data_dir: &Path,
    dry_run: bool,
) -> Result<(store::Tables, Option<std::fs::File>), Box<dyn std::error::Error + Send + Sync>> {
    if !data_dir.is_dir() {
        return Err(format!(
            "no data dir at {}: pass --data-dir DIR (where `tailscope serve` writes)",
            data_dir.display()
        )
        .into());
    }
    let lock = if dry_run { None } else { Some(lock_data_dir(data_dir)?) };
    // Opening creates a missing table or converts one of an earlier version: a write, left to the collector.
    if let Some(signal) = Signal::ALL.into_iter().find(|s| !store::is_delta_table(data_dir, *s)) {
        return Err(format!(
            "{} holds no Delta table {} yet: a collector creates the tables (or converts an earlier version's) at its \
             first start; start it once on this data dir",
            data_dir.display(),
            signal.table_name()
        )
        .into());
    }
    Ok((store::Tables::open(data_dir, None).await?, lock))
}

/// Commits each plan (one commit per table that loses anything), then vacuums every table: files removed longer
/// than the grace ago are deleted (those removed now stay until a later vacuum, for queries still reading them).
/// Returns the files each table's vacuum deleted.
pub(super) async fn apply(
    tables: &store::Tables,
    plans: &[RetentionPlan],
    config: &Config,
) -> Result<Vec<usize>, Box<dyn std::error::Error + Send + Sync>> {
    for plan in plans {
        tables.remove_partitions(plan).await?;
    }
    let mut vacuumed = Vec::new();
    for plan in plans {
        vacuumed.push(tables.vacuum(plan.signal, config.vacuum_grace()).await?);
    }
    Ok(vacuumed)
}

/// A byte count as people read it (`12.3 MiB`).
pub(super) fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

/// Prints the plans: what goes (or went), per table, project and partition, and why. `vacuumed`: the files each
/// table's vacuum deleted, after a run. `what` names the command in the closing line.
pub(super) fn report(
    plans: &[RetentionPlan],
    dry_run: bool,
    vacuumed: Option<&[usize]>,
    format: ReportFormat,
    what: &str,
) {
    match format {
        ReportFormat::Json => report_json(plans, dry_run, vacuumed),
        ReportFormat::Table => report_table(plans, dry_run, vacuumed, what),
    }
}

/// [`report`] as one JSON document: per table, each partition with its file paths.
fn report_json(plans: &[RetentionPlan], dry_run: bool, vacuumed: Option<&[usize]>) {
    let tables: Vec<serde_json::Value> = plans
        .iter()
        .enumerate()
        .map(|(i, plan)| {
            let partitions: Vec<serde_json::Value> = plan
                .removals
                .iter()
                .map(|r| {
                    json!({
                        "project": r.partition.project.as_str(),
                        "date": r.partition.date,
                        "hour": r.partition.hour,
                        "files": r.files.len(),
                        "rows": r.rows(),
                        "bytes": r.bytes(),
                        "reason": r.reason.label(),
                        "why": r.reason.to_string(),
                        "paths": r.files.iter().map(|f| f.relative_path.to_string_lossy().into_owned()).collect::<Vec<_>>(),
                    })
                })
                .collect();
            let still_over: Vec<serde_json::Value> = plan
                .still_over
                .iter()
                .map(|(over, cap, left)| json!({"over": over, "max_bytes": cap, "bytes": left}))
                .collect();
            json!({
                "table": plan.signal.table_name(),
                "version": plan.version,
                "bytes_before": plan.bytes_before,
                "bytes_after": plan.bytes_after(),
                "partitions": partitions,
                "still_over": still_over,
                "vacuum_deleted_files": vacuumed.and_then(|v| v.get(i)),
            })
        })
        .collect();
    println!("{}", json!({ "dry_run": dry_run, "tables": tables }));
}

/// [`report`] as a table of partitions, then a line per table.
fn report_table(plans: &[RetentionPlan], dry_run: bool, vacuumed: Option<&[usize]>, what: &str) {
    let header = ["table", "project", "partition", "files", "rows", "bytes", "why"];
    let mut rows: Vec<[String; 7]> = Vec::new();
    for plan in plans {
        for r in &plan.removals {
            rows.push([
                plan.signal.table_name().to_string(),
                r.partition.project.to_string(),
                format!("{} {}:00", r.partition.date, r.partition.hour),
                r.files.len().to_string(),
                r.rows().map_or("-".to_string(), |n| n.to_string()),
                human_bytes(r.bytes()),
                r.reason.to_string(),
            ]);
        }
    }
    if !rows.is_empty() {
        print_columns(&header, &rows);
        println!();
    }
    let verb = if dry_run { "would remove" } else { "removed" };
    for (i, plan) in plans.iter().enumerate() {
        let files = plan.files().count();
        let mut line = format!(
            "{}: {verb} {} partition(s), {files} file(s), {} of {} (left: {})",
            plan.signal.table_name(),
            plan.removals.len(),
            human_bytes(plan.bytes_before - plan.bytes_after()),
            human_bytes(plan.bytes_before),
            human_bytes(plan.bytes_after()),
        );
        if let Some(deleted) = vacuumed.and_then(|v| v.get(i)) {
            line.push_str(&format!("; vacuum deleted {deleted} file(s) removed earlier"));
        }
        println!("{line}");
        for (over, cap, left) in &plan.still_over {
            println!(
                "  still over: {over} holds {} against its cap of {}; the current hour is never removed",
                human_bytes(*left),
                human_bytes(*cap)
            );
        }
    }
    if !dry_run && plans.iter().any(|p| !p.removals.is_empty()) {
        println!(
            "{what}: one DELETE commit per table; the files stay on disk for queries still reading them and \
             are deleted by vacuum after storage.vacuum_grace"
        );
    }
}

/// Prints `rows` under `header` in left-aligned columns.
pub(super) fn print_columns<const N: usize>(header: &[&str; N], rows: &[[String; N]]) {
    let mut widths = header.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}
