//! The interactive shell's grammar, shared by the local and the remote (`--server`) shells: `psql` habits.
//!
//! Meta-commands are answered with SQL over `information_schema`, so they work the same against a local engine
//! and a server.

/// One thing typed at the prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A complete SQL statement (terminated by `;`), without the `;`.
    Sql(String),
    /// `\d` (every table and view) or `\d NAME` (its columns): the SQL that answers it.
    Describe(String),
    /// `\q`, `quit`, `exit`.
    Quit,
    /// `\?`, `help`.
    Help,
    /// An unknown meta-command.
    Unknown(String),
}

/// The help text of the shell.
pub const HELP: &str = "\
Statements end with `;` and may span lines. Meta-commands:
  \\d           list tables and views
  \\d NAME      describe a table or view
  \\q           quit (also Ctrl-D)
  \\?           this help
Tables: spans, metrics, logs (with date/hour partitions), alerts. Views: llm_calls, sessions,
provider_latency and the cost views. quantile_exact(x, q) is an exact percentile; approx_percentile_cont(x, q)
an approximate one. Examples: docs/sql.md.";

/// Accumulates typed lines into statements.
#[derive(Debug, Default)]
pub struct LineBuffer {
    pending: String,
}

impl LineBuffer {
    /// True while a statement is being continued (for the prompt).
    pub fn is_continuing(&self) -> bool {
        !self.pending.trim().is_empty()
    }

    /// Feeds one line; returns what is complete.
    pub fn push(&mut self, line: &str) -> Option<Input> {
        let trimmed = line.trim();
        if !self.is_continuing() {
            if let Some(meta) = meta_command(trimmed) {
                return Some(meta);
            }
            if trimmed.is_empty() {
                return None;
            }
        }
        if !self.pending.is_empty() {
            self.pending.push('\n');
        }
        self.pending.push_str(line);
        if trimmed.ends_with(';') {
            let sql = std::mem::take(&mut self.pending);
            let sql = sql.trim().trim_end_matches(';').trim().to_string();
            return (!sql.is_empty()).then_some(Input::Sql(sql));
        }
        None
    }
}

fn meta_command(line: &str) -> Option<Input> {
    match line.to_ascii_lowercase().as_str() {
        "quit" | "exit" | "\\q" => return Some(Input::Quit),
        "help" | "\\?" | "\\h" => return Some(Input::Help),
        _ => {}
    }
    let rest = line.strip_prefix('\\')?;
    let mut words = rest.split_whitespace();
    match words.next() {
        Some("d") | Some("dt") | Some("dv") => Some(Input::Describe(match words.next() {
            None => list_relations_sql(),
            Some(name) => describe_sql(name.trim_end_matches(';')),
        })),
        _ => Some(Input::Unknown(line.to_string())),
    }
}

/// `\d`: every table and view.
pub fn list_relations_sql() -> String {
    format!(
        "SELECT table_name AS name, CASE table_type WHEN 'BASE TABLE' THEN 'table' ELSE lower(table_type) END AS kind \
         FROM information_schema.tables WHERE table_schema = '{}' ORDER BY kind, name",
        crate::SCHEMA_NAME
    )
}

/// `\d NAME`: its columns, with the types results have (scans read strings as views, results carry `Utf8`).
pub fn describe_sql(name: &str) -> String {
    let name = name.replace('\'', "''");
    format!(
        "SELECT column_name AS column, replace(data_type, 'View', '') AS type, is_nullable AS nullable \
         FROM information_schema.columns WHERE table_schema = '{}' AND table_name = '{name}' \
         ORDER BY ordinal_position",
        crate::SCHEMA_NAME
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_span_lines_and_meta_commands_stand_alone() {
        let mut buf = LineBuffer::default();
        assert_eq!(buf.push("SELECT *"), None);
        assert!(buf.is_continuing());
        // A backslash inside a statement is SQL, not a meta-command.
        assert_eq!(buf.push("FROM spans"), None);
        assert_eq!(buf.push("LIMIT 1;"), Some(Input::Sql("SELECT *\nFROM spans\nLIMIT 1".into())));
        assert!(!buf.is_continuing());
        assert_eq!(buf.push("\\q"), Some(Input::Quit));
        assert_eq!(buf.push("\\d"), Some(Input::Describe(list_relations_sql())));
        assert_eq!(buf.push("\\d spans"), Some(Input::Describe(describe_sql("spans"))));
        assert!(matches!(buf.push("\\x"), Some(Input::Unknown(_))));
        assert_eq!(buf.push(""), None);
        assert_eq!(buf.push(";"), None);
    }
}
