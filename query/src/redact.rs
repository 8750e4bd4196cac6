//! `EXPLAIN` and `EXPLAIN ANALYZE` print the files a scan reads by their location: on the local file system the data
//! dir's absolute path, on an object store its URL and the bucket's prefix. Those are the server's layout, not the
//! caller's business (a key scoped to projects must learn no more than its projects' rows), so every plan a
//! statement answers names its files relative to the data dir or the store's root, as the tables hold them
//! (`spans/project=a/date=…/…parquet`).
//!
//! The scan itself lists only the files of the projects the caller sees (`table::SignalTable::scan` drops the others
//! before planning), so a scoped plan never names another project's file; this module hides where files live.

use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, StringArray};
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::record_batch::RecordBatch;
use tailscope_core::catalog::Catalog;

use crate::error::QueryError;

/// The locations a plan may name files under, each removed where it prefixes a path.
#[derive(Debug, Clone, Default)]
pub(crate) struct PathRedactor {
    /// Longest first, each ending in `/`, so that a location is removed whole before a part of it could be.
    prefixes: Vec<String>,
}

impl PathRedactor {
    /// The locations of `catalog`'s files: the data dir (`absolute`, as scans name it) and every object store's.
    pub(crate) fn new(catalog: &Catalog, absolute_data_dir: &Path) -> PathRedactor {
        let mut prefixes = Vec::new();
        let dir = absolute_data_dir.to_string_lossy();
        let dir = dir.trim_end_matches('/');
        if !dir.trim_start_matches('/').is_empty() {
            // Scans name local files by their absolute path without the leading `/` (object-store paths); other
            // nodes may print it with the `/`.
            prefixes.push(format!("file://{dir}/"));
            prefixes.push(format!("{dir}/"));
            prefixes.push(format!("{}/", dir.trim_start_matches('/')));
        }
        for remote in catalog.remotes() {
            let store = remote.store_url();
            let prefix = remote.prefix.trim_matches('/');
            if !prefix.is_empty() {
                prefixes.push(format!("{store}/{prefix}/"));
                prefixes.push(format!("{prefix}/"));
            }
            prefixes.push(format!("{store}/"));
        }
        prefixes.sort_by_key(|p| std::cmp::Reverse(p.len()));
        prefixes.dedup();
        PathRedactor { prefixes }
    }

    /// `text` with every location removed where it starts a path: at the start, or after a character that cannot
    /// be part of a path (so `x/data/` is not cut out of `/home/x/data/`).
    pub(crate) fn redact(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        'outer: while !rest.is_empty() {
            let starts_path = out.chars().next_back().is_none_or(|c| !is_path_char(c));
            if starts_path {
                for prefix in &self.prefixes {
                    if let Some(after) = rest.strip_prefix(prefix.as_str()) {
                        rest = after;
                        continue 'outer;
                    }
                }
            }
            let Some(c) = rest.chars().next() else { break };
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
        out
    }

    /// `batch` (a plan: `plan_type`, `plan`) with every string redacted.
    pub(crate) fn redact_batch(&self, batch: RecordBatch) -> Result<RecordBatch, QueryError> {
        if self.prefixes.is_empty() {
            return Ok(batch);
        }
        let columns = batch
            .columns()
            .iter()
            .map(|c| match c.data_type() {
                DataType::Utf8 => {
                    let strings = c.as_string::<i32>();
                    let redacted: StringArray = (0..strings.len())
                        .map(|i| strings.is_valid(i).then(|| self.redact(strings.value(i))))
                        .collect();
                    Arc::new(redacted) as ArrayRef
                }
                _ => c.clone(),
            })
            .collect();
        RecordBatch::try_new(batch.schema(), columns)
            .map_err(|e| QueryError::Internal(format!("cannot redact the plan's file locations: {e}")))
    }
}

/// Characters that continue a path (or a URL's host) rather than end the text before it.
fn is_path_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '/' | '.' | '_' | '-' | '~' | ':' | '%' | '@' | '+')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_are_cut_where_they_start_a_path_only() {
        let r = PathRedactor {
            prefixes: vec!["/srv/tail/data/".into(), "srv/tail/data/".into(), "s3://b/pre/".into(), "pre/".into()],
        };
        assert_eq!(
            r.redact(
                "file_groups={2 groups: [[srv/tail/data/spans/project=a/x.parquet, /srv/tail/data/logs/y.parquet]]}"
            ),
            "file_groups={2 groups: [[spans/project=a/x.parquet, logs/y.parquet]]}"
        );
        assert_eq!(r.redact("[s3://b/pre/spans/z.parquet, pre/spans/w.parquet]"), "[spans/z.parquet, spans/w.parquet]");
        // Inside another path, or part of a longer name: left as it is.
        assert_eq!(r.redact("/home/srv/tail/data/x, apre/x, é pre/x"), "/home/srv/tail/data/x, apre/x, é x");
        assert_eq!(PathRedactor::default().redact("srv/tail/data/x"), "srv/tail/data/x");
    }
}
