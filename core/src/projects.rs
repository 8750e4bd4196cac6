//! Projects (tenants): every stored row belongs to one, named by the ingest key that sent it, and a query key sees
//! only the rows of its own projects. Defined once here: what a project name may be ([`Project`]), how an ingest
//! request chooses among its key's projects ([`PROJECT_HEADER`]), and what a caller may see ([`Visibility`]).
//!
//! A project is a directory level of the stored layout (`SIGNAL/project=P/date=…/hour=…`, see
//! [`crate::layout::Partition`]) and a column of every table at query time ([`crate::schema::PROJECT_COLUMN`]).
//! The query engine's table scan reads only the files and buffered batches of the projects a caller may see, so
//! no SQL (views, joins, subqueries, CTEs, parameters) can reach another project's rows.

use std::collections::BTreeSet;
use std::sync::Arc;

/// The project of rows sent without keys (authentication off) and of files stored before projects existed (no
/// `project=` directory level).
pub const DEFAULT_PROJECT: &str = "default";

/// The header (HTTP) or metadata key (gRPC) with which an ingest key that belongs to several projects says which of
/// them a request's rows go to; without it they go to the key's first project.
pub const PROJECT_HEADER: &str = "x-tailscope-project";

/// Longest project name: it is a directory name and a label in alerts.
pub const MAX_PROJECT_CHARS: usize = 64;

/// A project's name: 1 to [`MAX_PROJECT_CHARS`] of `a-z`, `0-9`, `-` and `_`, starting with a letter or digit.
/// Nothing else, since it becomes a directory name (`project=NAME`) and is compared byte for byte.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Project(Arc<str>);

impl Project {
    /// Checks a project name; the error says what is wrong with it.
    pub fn parse(name: &str) -> Result<Project, String> {
        let valid_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_';
        let first_ok = name.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        if name.is_empty() || name.len() > MAX_PROJECT_CHARS || !first_ok || !name.chars().all(valid_char) {
            return Err(format!(
                "{} is not a project name: use 1 to {MAX_PROJECT_CHARS} of a-z, 0-9, '-' and '_', starting with a \
                 letter or digit",
                quoted(name)
            ));
        }
        Ok(Project(Arc::from(name)))
    }

    /// Checks a project name sent as raw bytes (an HTTP header, gRPC metadata): bytes that are not UTF-8 are shown
    /// as U+FFFD in the error rather than dropped, so the sender sees what arrived.
    pub fn parse_bytes(bytes: &[u8]) -> Result<Project, String> {
        Project::parse(String::from_utf8_lossy(bytes).trim())
    }

    /// The [`DEFAULT_PROJECT`].
    pub fn default_project() -> Project {
        Project(Arc::from(DEFAULT_PROJECT))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `name` quoted for an error message, cut to the first [`MAX_PROJECT_CHARS`] characters and its length in bytes when
/// longer (a client may send a name of megabytes: the error must not echo it whole).
fn quoted(name: &str) -> String {
    match name.char_indices().nth(MAX_PROJECT_CHARS) {
        None => format!("{name:?}"),
        Some((cut, _)) => format!("{:?}... ({} bytes)", &name[..cut], name.len()),
    }
}

impl Default for Project {
    fn default() -> Project {
        Project::default_project()
    }
}

impl std::fmt::Display for Project {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which projects' rows a caller sees: all of them (authentication off, an `admin` key, the server's own readers)
/// or only some (a `query` key's projects).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Visibility {
    /// Every project.
    #[default]
    All,
    /// Only these projects.
    Only(Arc<BTreeSet<Project>>),
}

impl Visibility {
    /// Only `projects`.
    pub fn only(projects: impl IntoIterator<Item = Project>) -> Visibility {
        Visibility::Only(Arc::new(projects.into_iter().collect()))
    }

    /// Whether rows of the project named `project` are visible.
    pub fn sees(&self, project: &str) -> bool {
        match self {
            Visibility::All => true,
            Visibility::Only(projects) => projects.iter().any(|p| p.as_str() == project),
        }
    }

    /// Whether every project is visible.
    pub fn is_all(&self) -> bool {
        matches!(self, Visibility::All)
    }
}

/// What an authenticated ingest request writes to: its project, chosen from its key's projects.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IngestProject(pub Project);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_names_are_safe_directory_names() {
        for ok in ["default", "a", "team-7", "x_y", &"a".repeat(MAX_PROJECT_CHARS)] {
            assert_eq!(Project::parse(ok).unwrap().as_str(), ok);
        }
        for bad in ["", "A", "-a", "_a", "a/b", "..", "a b", "é", "a=b", &"a".repeat(MAX_PROJECT_CHARS + 1)] {
            assert!(Project::parse(bad).is_err(), "{bad:?}");
        }
    }

    /// A refused name is shown as it arrived, but never whole when long: a 100 KB name gives a short error, and a
    /// header of Latin-1 bytes shows them as U+FFFD instead of an empty `""`.
    #[test]
    fn a_refused_name_is_quoted_short_and_visible() {
        let long = "x".repeat(100_000) + "/";
        let e = Project::parse(&long).unwrap_err();
        assert!(e.len() < 400, "{} bytes: {}", e.len(), &e[..200]);
        assert!(e.contains(&format!("\"{}\"... (100001 bytes)", "x".repeat(MAX_PROJECT_CHARS))), "{e}");
        let e = Project::parse_bytes(b"caf\xe9").unwrap_err();
        assert!(e.starts_with("\"caf\u{fffd}\" is not a project name"), "{e}");
        assert_eq!(Project::parse_bytes(b" team-a ").unwrap().as_str(), "team-a");
    }

    #[test]
    fn visibility_is_exact() {
        let v = Visibility::only([Project::parse("a").unwrap()]);
        assert!(v.sees("a") && !v.sees("b") && !v.sees("") && !v.sees("a "));
        assert!(Visibility::All.sees("anything"));
    }
}
