//! `tailscope projects list` and `tailscope projects delete NAME [--dry-run]`: the projects (tenants) the tables
//! hold, and the removal of one project's data from every table (issue 14: a project's data is pruned, retained and
//! deleted on its own).
//!
//! A project is the outermost partition column of every table (`project=P/date=…/hour=…`), so deleting it is one
//! Delta `DELETE` commit per table removing the files of its partitions, read from the snapshot (no listing); vacuum
//! deletes the files after `storage.vacuum_grace`. It runs on a stopped collector's data dir whose WAL holds nothing
//! unflushed: rows still in a WAL would come back into the project at the next start.

use std::collections::BTreeMap;

use serde_json::json;
use tailscope_core::projects::Project;
use tailscope_core::schema::Signal;

use super::CmdResult;
use super::retention::{Location, ReportFormat, apply, human_bytes, open_tables, print_columns, report};

/// Flags of `tailscope projects`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: ProjectsCommand,
}

/// What `tailscope projects` does.
#[derive(Debug, clap::Subcommand)]
pub enum ProjectsCommand {
    /// List the projects found in the tables, with their files, rows and bytes per table (read only).
    List(ListArgs),
    /// Remove every partition of one project from every table: one Delta commit per table (collector stopped).
    Delete(DeleteArgs),
}

/// Flags of `tailscope projects list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub location: Location,
}

/// Flags of `tailscope projects delete`.
#[derive(Debug, clap::Args)]
pub struct DeleteArgs {
    /// The project to delete.
    pub name: String,
    /// List what would go, change nothing (allowed while a collector runs).
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub location: Location,
}

/// Runs `tailscope projects`.
pub async fn run(args: Args) -> CmdResult {
    match args.command {
        ProjectsCommand::List(args) => list(args).await,
        ProjectsCommand::Delete(args) => delete(args).await,
    }
}

/// One project's data in one table.
#[derive(Debug, Default)]
struct Holding {
    files: usize,
    /// `None` once a file has no row count in the log (converted from an earlier version).
    rows: Option<u64>,
    bytes: u64,
    oldest: Option<String>,
    newest: Option<String>,
}

async fn list(args: ListArgs) -> CmdResult {
    let (_, data_dir) = args.location.load()?;
    let (tables, _) = open_tables(&data_dir, true).await?;
    let mut found: BTreeMap<(Project, Signal), Holding> = BTreeMap::new();
    for signal in Signal::ALL {
        for file in tables.view(signal).await?.files {
            let h = found
                .entry((file.project.clone(), signal))
                .or_insert_with(|| Holding { rows: Some(0), ..Default::default() });
            h.files += 1;
            h.rows = h.rows.zip(file.rows).map(|(a, b)| a + b);
            h.bytes += file.size;
            let at = format!("{} {}:00", file.date, file.hour);
            if h.oldest.as_ref().is_none_or(|o| &at < o) {
                h.oldest = Some(at.clone());
            }
            if h.newest.as_ref().is_none_or(|n| &at > n) {
                h.newest = Some(at);
            }
        }
    }
    match args.location.format {
        ReportFormat::Json => {
            let mut projects: BTreeMap<String, serde_json::Map<String, serde_json::Value>> = BTreeMap::new();
            for ((project, signal), h) in &found {
                projects.entry(project.to_string()).or_default().insert(
                    signal.table_name().to_string(),
                    json!({"files": h.files, "rows": h.rows, "bytes": h.bytes, "oldest": h.oldest, "newest": h.newest}),
                );
            }
            let projects: Vec<serde_json::Value> =
                projects.into_iter().map(|(name, tables)| json!({"project": name, "tables": tables})).collect();
            println!("{}", json!({ "projects": projects }));
        }
        ReportFormat::Table => {
            if found.is_empty() {
                println!("no table of {} holds any rows", data_dir.display());
                return Ok(());
            }
            let header = ["project", "table", "files", "rows", "bytes", "oldest hour", "newest hour"];
            let rows: Vec<[String; 7]> = found
                .iter()
                .map(|((project, signal), h)| {
                    [
                        project.to_string(),
                        signal.table_name().to_string(),
                        h.files.to_string(),
                        h.rows.map_or("-".to_string(), |n| n.to_string()),
                        human_bytes(h.bytes),
                        h.oldest.clone().unwrap_or_default(),
                        h.newest.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            print_columns(&header, &rows);
        }
    }
    Ok(())
}

async fn delete(args: DeleteArgs) -> CmdResult {
    let project = Project::parse(&args.name)?;
    let (config, data_dir) = args.location.load()?;
    let (tables, _lock) = open_tables(&data_dir, args.dry_run).await?;
    if !args.dry_run {
        let unflushed = collector::wal::segment_bytes(&data_dir.join("wal"))?;
        if unflushed > 0 {
            return Err(format!(
                "the WAL of {} holds {unflushed} bytes not known to be in the tables (the collector did not stop \
                 cleanly): rows of project {project} among them would come back at its next start. Start the \
                 collector and stop it with SIGTERM (it flushes and empties the WAL), then run this again; nothing \
                 was changed",
                data_dir.display()
            )
            .into());
        }
    }
    let mut plans = Vec::new();
    for signal in Signal::ALL {
        let view = tables.view(signal).await?;
        plans.push(store::retention::plan_project_deletion(signal, &view, &project));
    }
    if plans.iter().all(|p| p.removals.is_empty()) {
        return Err(format!(
            "no table of {} holds rows of project {project} (`tailscope projects list` shows those it holds); \
             nothing was changed",
            data_dir.display()
        )
        .into());
    }
    let vacuumed = if args.dry_run { None } else { Some(apply(&tables, &plans, &config).await?) };
    report(&plans, args.dry_run, vacuumed.as_deref(), args.location.format, &format!("project {project} deleted"));
    if !args.dry_run && args.location.format == ReportFormat::Table {
        println!(
            "keys of project {project} still in [[auth.keys]] would store new rows in it: remove them, or the project \
             starts again with the next export"
        );
    }
    Ok(())
}
