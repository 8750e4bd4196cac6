//! Retention of the Delta tables: which whole partitions (`project=P/date=D/hour=H`) go, and why (past their maximum
//! age, over a size cap, or their project deleted), then one Delta `DELETE` commit per table that removes their
//! files. The files stay on disk until vacuum (after `storage.vacuum_grace`), so a query that started on the
//! snapshot before the commit still reads them.
//!
//! Planning is a pure function of the table's snapshot (its files, their partition values and sizes from the log:
//! no listing) and the [`RetentionPolicy`], so that `tailscope retention --dry-run` lists exactly what the collector's
//! maintenance (or `tailscope retention`) removes from the same snapshot at the same time.

use std::collections::BTreeMap;
use std::time::Duration;

use deltalake_core::kernel::Action;
use deltalake_core::kernel::transaction::CommitProperties;
use deltalake_core::protocol::DeltaOperation;
use tailscope_core::catalog::ParquetFile;
use tailscope_core::config::Config;
use tailscope_core::projects::Project;
use tailscope_core::schema::{PROJECT_COLUMN, Signal};

use crate::maintenance::partition_end;
use crate::{StoreError, TableView, Tables, remove_action};

/// What limits one table's partitions: ages and size caps, from the config ([`RetentionPolicy::from_config`]).
#[derive(Debug, Clone, Default)]
pub struct RetentionPolicy {
    /// The maximum age of the partitions of a project that sets no retention of its own (`None`: forever).
    pub table_age: Option<Duration>,
    /// Projects whose own retention wins over the table's (`None`: forever).
    pub project_ages: BTreeMap<Project, Option<Duration>>,
    /// The most bytes the table's committed files may take.
    pub table_max_bytes: Option<u64>,
    /// The most bytes one project's committed files may take in the table.
    pub project_max_bytes: BTreeMap<Project, u64>,
}

impl RetentionPolicy {
    /// `signal`'s table's policy under `config`: `storage.retention*`, `storage.max_bytes*` and `[projects.NAME]`.
    /// Project names that are no project name cannot be in `config` (it is validated); any such is left out.
    pub fn from_config(config: &Config, signal: Signal) -> RetentionPolicy {
        let mut policy = RetentionPolicy {
            table_age: config.storage.retention_of(signal),
            table_max_bytes: config.storage.max_bytes_of(signal),
            ..Default::default()
        };
        for name in config.projects.keys() {
            let Ok(project) = Project::parse(name) else { continue };
            if config.retention_for(signal, name) != policy.table_age {
                policy.project_ages.insert(project.clone(), config.retention_for(signal, name));
            }
            if let Some(cap) = config.max_bytes_of_project(name) {
                policy.project_max_bytes.insert(project, cap);
            }
        }
        policy
    }

    /// The maximum age of `project`'s partitions (`None`: forever).
    pub fn age_of(&self, project: &Project) -> Option<Duration> {
        self.project_ages.get(project).copied().unwrap_or(self.table_age)
    }

    /// Whether the policy can remove anything at all (no age and no cap: nothing to plan).
    pub fn is_unlimited(&self) -> bool {
        self.table_age.is_none()
            && self.project_ages.values().all(Option::is_none)
            && self.table_max_bytes.is_none()
            && self.project_max_bytes.is_empty()
    }
}

/// Why a partition is removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Its hour ended longer ago than its maximum age.
    Age {
        /// The maximum age that applied (the project's own or the table's).
        max_age: Duration,
    },
    /// The table's committed bytes were over `storage.max_bytes*`; the oldest partitions go first.
    TableSize {
        /// The cap.
        max_bytes: u64,
    },
    /// The project's committed bytes in the table were over its `[projects.NAME] max_bytes`.
    ProjectSize {
        /// The cap.
        max_bytes: u64,
    },
    /// Its project is being deleted (`tailscope projects delete`).
    ProjectDeleted,
}

impl Reason {
    /// A short label for metrics and JSON: `age`, `table_size`, `project_size`, `project_deleted`.
    pub fn label(&self) -> &'static str {
        match self {
            Reason::Age { .. } => "age",
            Reason::TableSize { .. } => "table_size",
            Reason::ProjectSize { .. } => "project_size",
            Reason::ProjectDeleted => "project_deleted",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::Age { max_age } => write!(f, "age: its hour ended more than {} ago", humantime_age(*max_age)),
            Reason::TableSize { max_bytes } => write!(f, "size: the table is over its cap of {max_bytes} bytes"),
            Reason::ProjectSize { max_bytes } => {
                write!(f, "size: the project is over its cap of {max_bytes} bytes in this table")
            }
            Reason::ProjectDeleted => f.write_str("project deleted"),
        }
    }
}

/// An age as people write it in the config (`7d`, `2h`, `90m`).
fn humantime_age(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        s if s >= 86_400 && s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// One partition of a table, as its snapshot shows it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PartitionKey {
    /// `YYYY-MM-DD`.
    pub date: String,
    /// `HH`.
    pub hour: String,
    /// The project.
    pub project: Project,
}

/// A partition that goes, with its files and why.
#[derive(Debug, Clone)]
pub struct Removal {
    /// Which partition.
    pub partition: PartitionKey,
    /// Its files (every one the snapshot lists in it).
    pub files: Vec<ParquetFile>,
    /// Why it goes.
    pub reason: Reason,
}

impl Removal {
    /// Bytes of its files, from the log.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// Rows of its files, from the log's `numRecords` (`None` when a file has none: converted from an earlier
    /// version).
    pub fn rows(&self) -> Option<u64> {
        self.files.iter().map(|f| f.rows).sum()
    }
}

/// What retention removes from one table's snapshot.
#[derive(Debug, Clone)]
pub struct RetentionPlan {
    /// The table.
    pub signal: Signal,
    /// The snapshot's version the plan was made from.
    pub version: u64,
    /// The table's committed bytes before (sum of the log's file sizes).
    pub bytes_before: u64,
    /// The partitions that go, oldest first.
    pub removals: Vec<Removal>,
    /// A cap that cannot be met without removing the current hour (never removed): the cap and the bytes left.
    pub still_over: Vec<(String, u64, u64)>,
}

impl RetentionPlan {
    /// The table's committed bytes after.
    pub fn bytes_after(&self) -> u64 {
        self.bytes_before.saturating_sub(self.removals.iter().map(Removal::bytes).sum())
    }

    /// Every file that goes.
    pub fn files(&self) -> impl Iterator<Item = &ParquetFile> {
        self.removals.iter().flat_map(|r| r.files.iter())
    }
}

/// The files of `files` by partition, oldest partition first (dates and hours sort as their text).
fn by_partition(files: Vec<ParquetFile>) -> BTreeMap<PartitionKey, Vec<ParquetFile>> {
    let mut partitions: BTreeMap<PartitionKey, Vec<ParquetFile>> = BTreeMap::new();
    for file in files {
        let key = PartitionKey { date: file.date.clone(), hour: file.hour.clone(), project: file.project.clone() };
        partitions.entry(key).or_default().push(file);
    }
    partitions
}

/// What `policy` removes from a table holding `files`, as of `now`:
///
/// 1. every partition whose hour ended more than its project's maximum age ago (the project's own, else the
///    table's);
/// 2. then, for each project over its own cap, its oldest remaining partitions until it fits;
/// 3. then, while the table is over its cap, the oldest remaining partitions of any project.
///
/// A partition whose hour has not ended (the current hour, or a later one from a skewed clock) is never removed
/// for size, nor one whose date or hour does not read (placed by someone else); if a cap cannot be met without
/// them, [`RetentionPlan::still_over`] says so.
pub fn plan(
    signal: Signal,
    view: &TableView,
    policy: &RetentionPolicy,
    now: chrono::DateTime<chrono::Utc>,
) -> RetentionPlan {
    let bytes_before: u64 = view.files.iter().map(|f| f.size).sum();
    let mut plan =
        RetentionPlan { signal, version: view.version, bytes_before, removals: Vec::new(), still_over: Vec::new() };
    let mut kept = by_partition(view.files.clone());
    // When a partition's hour ended, if it has (every file of a partition has its date and hour).
    let ended = |files: &[ParquetFile]| files.first().and_then(partition_end).filter(|end| *end <= now);

    // 1. Age.
    let expired: Vec<(PartitionKey, Duration)> = kept
        .iter()
        .filter_map(|(key, files)| {
            let max_age = policy.age_of(&key.project)?;
            let end = ended(files)?;
            let max_age_chrono = chrono::Duration::from_std(max_age).unwrap_or(chrono::Duration::MAX);
            (now.signed_duration_since(end) >= max_age_chrono).then(|| (key.clone(), max_age))
        })
        .collect();
    for (key, max_age) in expired {
        if let Some(files) = kept.remove(&key) {
            plan.removals.push(Removal { partition: key, files, reason: Reason::Age { max_age } });
        }
    }

    // 2. Each project's own cap, oldest partitions first.
    for (project, &cap) in &policy.project_max_bytes {
        let mut bytes: u64 =
            kept.iter().filter(|(k, _)| &k.project == project).flat_map(|(_, f)| f.iter()).map(|f| f.size).sum();
        let removable: Vec<PartitionKey> = kept
            .iter()
            .filter(|(k, files)| &k.project == project && ended(files).is_some())
            .map(|(k, _)| k.clone())
            .collect();
        for key in removable {
            if bytes <= cap {
                break;
            }
            if let Some(files) = kept.remove(&key) {
                bytes = bytes.saturating_sub(files.iter().map(|f| f.size).sum());
                plan.removals.push(Removal { partition: key, files, reason: Reason::ProjectSize { max_bytes: cap } });
            }
        }
        if bytes > cap {
            plan.still_over.push((format!("project {project}"), cap, bytes));
        }
    }

    // 3. The table's cap, oldest partitions of any project first.
    if let Some(cap) = policy.table_max_bytes {
        let mut bytes: u64 = kept.values().flatten().map(|f| f.size).sum();
        let removable: Vec<PartitionKey> =
            kept.iter().filter(|(_, files)| ended(files).is_some()).map(|(k, _)| k.clone()).collect();
        for key in removable {
            if bytes <= cap {
                break;
            }
            if let Some(files) = kept.remove(&key) {
                bytes = bytes.saturating_sub(files.iter().map(|f| f.size).sum());
                plan.removals.push(Removal { partition: key, files, reason: Reason::TableSize { max_bytes: cap } });
            }
        }
        if bytes > cap {
            plan.still_over.push(("table".to_string(), cap, bytes));
        }
    }
    plan.removals.sort_by(|a, b| a.partition.cmp(&b.partition));
    plan
}

/// Every partition of `project` in a table holding `files`, whatever its age.
pub fn plan_project_deletion(signal: Signal, view: &TableView, project: &Project) -> RetentionPlan {
    let bytes_before: u64 = view.files.iter().map(|f| f.size).sum();
    let removals = by_partition(view.files.iter().filter(|f| &f.project == project).cloned().collect())
        .into_iter()
        .map(|(partition, files)| Removal { partition, files, reason: Reason::ProjectDeleted })
        .collect();
    RetentionPlan { signal, version: view.version, bytes_before, removals, still_over: Vec::new() }
}

/// The partitions of `removals` as an SQL predicate over the partition columns, one disjunct per project and date
/// (`(project = 'a' AND date = '2026-12-03' AND hour IN ('01', '02')) OR ...`): what the `DELETE` commit removed, as
/// Delta readers' histories show it. Values are project names, dates and hours the log gave, quoted.
fn predicate(removals: &[Removal]) -> String {
    let quote = |v: &str| format!("'{}'", v.replace('\'', "''"));
    let mut groups: BTreeMap<(&Project, &str), Vec<&str>> = BTreeMap::new();
    for r in removals {
        groups.entry((&r.partition.project, &r.partition.date)).or_default().push(&r.partition.hour);
    }
    groups
        .into_iter()
        .map(|((project, date), hours)| {
            let hours: Vec<String> = hours.into_iter().map(quote).collect();
            format!(
                "({PROJECT_COLUMN} = {} AND date = {} AND hour IN ({}))",
                quote(project.as_str()),
                quote(date),
                hours.join(", ")
            )
        })
        .collect::<Vec<_>>()
        .join(" OR ")
}

impl Tables {
    /// Removes the files of `plan`'s partitions from its table in one Delta `DELETE` commit (`dataChange = true`).
    /// Returns the table after the commit, or `None` when the plan removes nothing. A file another writer removed
    /// since the plan's snapshot (a compaction) makes the commit conflict: nothing is removed, and the next round
    /// plans again.
    pub async fn remove_partitions(&self, plan: &RetentionPlan) -> Result<Option<TableView>, StoreError> {
        if plan.removals.is_empty() {
            return Ok(None);
        }
        let actions: Vec<Action> = plan.files().map(|f| Action::Remove(remove_action(f, true))).collect();
        let operation = DeltaOperation::Delete { predicate: Some(predicate(&plan.removals)) };
        let view =
            self.commit(plan.signal, actions, operation, CommitProperties::default(), "committing retention").await?;
        Ok(Some(view))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const HOUR: Duration = Duration::from_secs(3600);

    fn file(project: &str, date: &str, hour: &str, n: u32, size: u64) -> ParquetFile {
        let path = format!("spans/project={project}/date={date}/hour={hour}/part-{n}.parquet");
        let mut f = ParquetFile::from_relative_path(Path::new(&path), size).expect("layout");
        f.rows = Some(size / 10);
        f
    }

    fn view(files: Vec<ParquetFile>) -> TableView {
        TableView { version: 7, files, committed_through: None }
    }

    fn now() -> chrono::DateTime<chrono::Utc> {
        "2026-12-03T14:30:00Z".parse().unwrap()
    }

    fn gone(plan: &RetentionPlan) -> Vec<(String, String, &'static str)> {
        plan.removals
            .iter()
            .map(|r| (r.partition.project.to_string(), r.partition.hour.clone(), r.reason.label()))
            .collect()
    }

    fn p(name: &str) -> Project {
        Project::parse(name).unwrap()
    }

    #[test]
    fn a_projects_own_age_wins_over_the_tables_both_ways() {
        let files = ["a", "b", "c"]
            .iter()
            .flat_map(|p| ["08", "11", "14"].map(|h| file(p, "2026-12-03", h, 0, 100)))
            .collect::<Vec<_>>();
        let policy = RetentionPolicy {
            table_age: Some(5 * HOUR),
            project_ages: BTreeMap::from([(p("a"), Some(2 * HOUR)), (p("b"), None)]),
            ..Default::default()
        };
        let plan = plan(Signal::Spans, &view(files), &policy, now());
        // Hour 08 ended 5h30m ago, hour 11 2h30m ago: a loses both, b nothing (forever), c the older one.
        assert_eq!(
            gone(&plan),
            [("a".into(), "08".into(), "age"), ("c".into(), "08".into(), "age"), ("a".into(), "11".into(), "age")]
        );
        assert_eq!(plan.bytes_before, 900);
        assert_eq!(plan.bytes_after(), 600);
        assert_eq!(plan.removals[0].rows(), Some(10));
    }

    #[test]
    fn a_size_cap_removes_the_oldest_whole_partitions_first_and_never_the_current_hour() {
        let files = vec![
            file("a", "2026-12-02", "23", 0, 100),
            file("a", "2026-12-02", "23", 1, 100),
            file("b", "2026-12-03", "01", 0, 300),
            file("a", "2026-12-03", "13", 0, 300),
            file("a", "2026-12-03", "14", 0, 1000),
        ];
        let policy = RetentionPolicy { table_max_bytes: Some(1500), ..Default::default() };
        let plan = plan(Signal::Spans, &view(files.clone()), &policy, now());
        // 1800 bytes: the oldest partition (two files, 200 bytes) is not enough; the next one is.
        assert_eq!(gone(&plan), [("a".into(), "23".into(), "table_size"), ("b".into(), "01".into(), "table_size")]);
        assert_eq!(plan.removals[0].files.len(), 2);
        assert_eq!(plan.bytes_after(), 1300);
        assert!(plan.still_over.is_empty());
        // A cap below the current hour's size removes every ended hour and says it is still over.
        let tiny = RetentionPolicy { table_max_bytes: Some(10), ..Default::default() };
        let plan = super::plan(Signal::Spans, &view(files.clone()), &tiny, now());
        assert_eq!(plan.removals.len(), 3);
        assert!(plan.removals.iter().all(|r| r.partition.hour != "14"));
        assert_eq!(plan.still_over, [("table".to_string(), 10, 1000)]);
        // A project's cap touches only that project.
        let project_cap = RetentionPolicy { project_max_bytes: BTreeMap::from([(p("a"), 1100)]), ..Default::default() };
        let plan = super::plan(Signal::Spans, &view(files), &project_cap, now());
        assert_eq!(gone(&plan), [("a".into(), "23".into(), "project_size"), ("a".into(), "13".into(), "project_size")]);
    }

    #[test]
    fn no_limit_removes_nothing_and_deleting_a_project_removes_all_of_it() {
        let files = vec![file("a", "2020-01-01", "00", 0, 5), file("b", "2026-12-03", "14", 0, 5)];
        let plan = plan(Signal::Logs, &view(files.clone()), &RetentionPolicy::default(), now());
        assert!(plan.removals.is_empty() && RetentionPolicy::default().is_unlimited());
        let plan = plan_project_deletion(Signal::Logs, &view(files), &p("b"));
        assert_eq!(gone(&plan), [("b".into(), "14".into(), "project_deleted")]);
        assert_eq!(predicate(&plan.removals), "(project = 'b' AND date = '2026-12-03' AND hour IN ('14'))");
    }

    #[test]
    fn the_policy_follows_the_config() {
        let toml = "[storage]\nretention = \"30d\"\nmax_bytes_spans = \"1GiB\"\n[projects.a]\nretention = \"7d\"\n\
                    max_bytes = \"10MiB\"\n[projects.b]\nretention = \"forever\"\n[projects.c]\nmax_bytes = 5\n";
        let config = Config::from_toml(toml, Path::new("t.toml")).unwrap();
        let spans = RetentionPolicy::from_config(&config, Signal::Spans);
        assert_eq!(spans.table_age, Some(30 * 24 * HOUR));
        assert_eq!(spans.age_of(&p("a")), Some(7 * 24 * HOUR));
        assert_eq!(spans.age_of(&p("b")), None);
        assert_eq!(spans.age_of(&p("c")), Some(30 * 24 * HOUR));
        assert_eq!(spans.table_max_bytes, Some(1 << 30));
        assert_eq!(spans.project_max_bytes, BTreeMap::from([(p("a"), 10 << 20), (p("c"), 5)]));
        assert_eq!(RetentionPolicy::from_config(&config, Signal::Logs).table_max_bytes, None);
    }
}
