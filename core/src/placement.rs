//! Placement (residency) rules: which store each row of `spans`, `metrics` and `logs` goes to.
//!
//! `[[storage.placement]]` rules each name a store (`url`) and what its rows look like (`match`: globs over
//! `cloud_provider`, `cloud_region`, `peer_cloud_region`, the project, or a resource attribute). The first rule whose
//! every key matches a row takes it; rows that match none go to the default store (`storage.url`, or the data dir).
//! A row never lands in a store that no rule names for it.
//!
//! The columns a rule may name are the tables' own ([`crate::schema`]): `cloud_provider`, `cloud_region` and
//! `resource_attributes` are resource columns every table has; `peer_cloud_region` is a column of `spans` only. A
//! rule naming a column that a table lacks **never matches that table's rows** (they go on to the next rule, then the
//! default store): a rule is a promise about every key it names, and a row that cannot show it is not taken.

use std::collections::BTreeMap;

use datafusion::arrow::array::{Array, AsArray as _, MapArray, RecordBatch, StringArray};
use serde::{Deserialize, Serialize};

use crate::error::ConfigError;
use crate::glob::{self, Dialect};
use crate::projects::Project;
use crate::schema::{ResourceColumn, Signal, SpanColumn};

/// Which store a file or row is on: 0 is the default store (`storage.url`, or the data dir), `i` the store of the
/// `i`-th placement rule (1-based, in the config's order).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StoreId(pub u16);

impl StoreId {
    /// The default store.
    pub const DEFAULT: StoreId = StoreId(0);
}

/// The most placement rules: far past any residency layout, and small enough that a store id is a `u16`.
pub const MAX_RULES: usize = 64;

/// One `[[storage.placement]]` rule.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PlacementRule {
    /// The rule's name (`[a-z0-9_-]`, 1 to 64 characters): in messages, on `/metrics`, and the local staging
    /// directory of its flushes (`DATA/placement/NAME/`).
    pub name: String,
    /// The store: `s3://bucket/prefix`, `gs://…`, `az://…` (as `storage.url`), or an absolute local path
    /// (`/srv/eu` or `file:///srv/eu`).
    pub url: String,
    /// What a row must look like to go there: every key given must match (globs: `*` any run of characters, `?`
    /// one; a NULL value matches no glob).
    #[serde(rename = "match")]
    pub matches: PlacementMatch,
}

/// The keys of a rule's `match`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PlacementMatch {
    /// Globs over `cloud_provider` (every table).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_provider: Option<Vec<String>>,
    /// Globs over `cloud_region` (every table).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_region: Option<Vec<String>>,
    /// Globs over `peer_cloud_region` (`spans` only: the rule never matches metrics or logs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_cloud_region: Option<Vec<String>>,
    /// Globs over the row's project.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<Vec<String>>,
    /// Globs over resource attributes (`resource."k8s.cluster.name" = ["eu-*"]`), read from the
    /// `resource_attributes` column: the attributes not kept in a column of their own.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub resource: BTreeMap<String, Vec<String>>,
}

impl PlacementMatch {
    /// Every key given, with its globs, as `(key as written, globs)`.
    fn keys(&self) -> Vec<(String, &Vec<String>)> {
        let mut out = Vec::new();
        for (key, globs) in [
            ("cloud_provider", &self.cloud_provider),
            ("cloud_region", &self.cloud_region),
            ("peer_cloud_region", &self.peer_cloud_region),
            ("project", &self.project),
        ] {
            if let Some(globs) = globs {
                out.push((key.to_string(), globs));
            }
        }
        out.extend(self.resource.iter().map(|(k, g)| (format!("resource.{k:?}"), g)));
        out
    }
}

/// Checks the rules as a whole: names unique and usable as a directory, URLs that name a store (each its own, and
/// none the default store's, `default_url`), at least one key per rule and at least one glob per key.
pub fn validate(rules: &[PlacementRule], default_url: Option<&str>) -> Result<(), ConfigError> {
    if rules.len() > MAX_RULES {
        return Err(ConfigError::Invalid {
            field: "storage.placement".into(),
            reason: format!("{} rules; at most {MAX_RULES} are allowed", rules.len()),
        });
    }
    let mut seen = std::collections::BTreeSet::new();
    // Two stores on one location would be one set of tables shown twice: every row counted twice by queries.
    let same_place = |url: &str| url.trim_end_matches('/').to_string();
    let mut urls: BTreeMap<String, String> = BTreeMap::new();
    if let Some(url) = default_url {
        urls.insert(same_place(url), "storage.url".into());
    }
    for (i, rule) in rules.iter().enumerate() {
        let field = format!("storage.placement[{i}] ({:?})", rule.name);
        let invalid = |reason: String| ConfigError::Invalid { field: field.clone(), reason };
        let name_ok = (1..=64).contains(&rule.name.len())
            && rule.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !name_ok {
            return Err(invalid("the name must be 1 to 64 characters of a-z, 0-9, - and _".into()));
        }
        if rule.name == "default" {
            return Err(invalid("`default` names the store of rows no rule takes; give the rule another name".into()));
        }
        if !seen.insert(rule.name.as_str()) {
            return Err(invalid("another rule has the same name; give each rule its own".into()));
        }
        let parsed = store_url(&rule.url).map_err(|reason| invalid(format!("url: {reason}")))?;
        if let Some(other) = urls.insert(same_place(parsed.as_str()), format!("rule {:?}", rule.name)) {
            return Err(invalid(format!(
                "url {:?} is the store of {other} already; each rule needs a store (or prefix) of its own",
                rule.url
            )));
        }
        let keys = rule.matches.keys();
        if keys.is_empty() {
            return Err(invalid(
                "`match` names no key, so the rule would take every row; give it cloud_provider, cloud_region, \
                 peer_cloud_region, project or resource.\"attribute\", or set storage.url for a store of everything"
                    .into(),
            ));
        }
        for (key, globs) in keys {
            if globs.is_empty() {
                return Err(invalid(format!("match.{key} is an empty list, which no row matches; list its globs")));
            }
            if let Some(g) = globs.iter().find(|g| g.is_empty() || g.len() > 256) {
                return Err(invalid(format!("match.{key} holds the glob {g:?}; a glob is 1 to 256 characters")));
            }
        }
        if rule.matches.resource.keys().any(|k| k.is_empty()) {
            return Err(invalid("match.resource names an empty attribute key".into()));
        }
    }
    Ok(())
}

/// A rule's `url` parsed: an object store URL (as `storage.url`), or a `file://` URL of an absolute directory (an
/// absolute path is taken as one).
pub fn store_url(text: &str) -> Result<url::Url, String> {
    if text.starts_with('/') {
        if text.split('/').any(|p| p == "." || p == "..") {
            return Err(format!("{text:?}: `.` and `..` are not allowed in the path"));
        }
        return url::Url::from_directory_path(text).map_err(|()| format!("{text:?} is not an absolute path"));
    }
    if let Some(path) = text.strip_prefix("file://") {
        if !path.starts_with('/') || path.split('/').any(|p| p == "." || p == "..") {
            return Err(format!("{text:?}: write file:///absolute/path"));
        }
        return url::Url::parse(text).map_err(|e| format!("{text:?} is not a URL ({e})"));
    }
    crate::config::storage_url(text).map_err(|e| match e {
        ConfigError::Invalid { reason, .. } => format!("{reason} (or an absolute local path)"),
        other => other.to_string(),
    })
}

/// What a rule's key reads in a table.
#[derive(Debug, Clone)]
enum Source {
    /// A string column of the table (by name).
    Column(&'static str),
    /// The batch's project.
    Project,
    /// One key of `resource_attributes`.
    Resource(String),
}

/// A rule's keys in one table: what each reads, and its globs.
type Keys = Vec<(Source, Vec<String>)>;

#[derive(Debug, Clone)]
struct CompiledRule {
    /// Per table: the keys with their globs, or `None` when the table lacks a column the rule names.
    per_signal: BTreeMap<Signal, Option<Keys>>,
}

/// The rules, ready to route rows.
#[derive(Debug, Clone, Default)]
pub struct Placement {
    rules: Vec<CompiledRule>,
    names: Vec<String>,
}

impl Placement {
    /// The rules of the config (checked by [`validate`] at load).
    pub fn new(rules: &[PlacementRule]) -> Placement {
        let compiled = rules
            .iter()
            .map(|rule| {
                let per_signal = Signal::ALL
                    .iter()
                    .map(|signal| {
                        let schema = signal.schema();
                        let has = |c: &str| schema.field_with_name(c).is_ok();
                        let mut keys = Vec::new();
                        let mut applicable = true;
                        let m = &rule.matches;
                        for (column, globs) in [
                            (ResourceColumn::CloudProvider.name(), &m.cloud_provider),
                            (ResourceColumn::CloudRegion.name(), &m.cloud_region),
                            (SpanColumn::PeerCloudRegion.name(), &m.peer_cloud_region),
                        ] {
                            if let Some(globs) = globs {
                                applicable &= has(column);
                                keys.push((Source::Column(column), globs.clone()));
                            }
                        }
                        if let Some(globs) = &m.project {
                            keys.push((Source::Project, globs.clone()));
                        }
                        if !m.resource.is_empty() {
                            applicable &= has(ResourceColumn::ResourceAttributes.name());
                            keys.extend(m.resource.iter().map(|(k, g)| (Source::Resource(k.clone()), g.clone())));
                        }
                        (*signal, applicable.then_some(keys))
                    })
                    .collect();
                CompiledRule { per_signal }
            })
            .collect();
        Placement { rules: compiled, names: rules.iter().map(|r| r.name.clone()).collect() }
    }

    /// Whether there are rules at all (without, every row goes to the default store).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The stores: the default and one per rule.
    pub fn store_count(&self) -> usize {
        self.rules.len() + 1
    }

    /// The rules that never match `signal`'s rows because the table lacks a column they name (said at start).
    pub fn inapplicable(&self, signal: Signal) -> Vec<&str> {
        self.rules
            .iter()
            .zip(&self.names)
            .filter(|(r, _)| r.per_signal.get(&signal).is_some_and(Option::is_none))
            .map(|(_, n)| n.as_str())
            .collect()
    }

    /// The store of each row of `batch` (rows of `signal` in `project`): the first rule whose every key matches,
    /// else [`StoreId::DEFAULT`]. One pass over the rows; a column the batch lacks (or of another type) matches no
    /// glob, so its rows are not taken by that rule.
    pub fn route(&self, signal: Signal, project: &Project, batch: &RecordBatch) -> Vec<StoreId> {
        let mut out = vec![StoreId::DEFAULT; batch.num_rows()];
        if self.rules.is_empty() {
            return out;
        }
        let strings = |name: &str| batch.column_by_name(name).and_then(|c| c.as_any().downcast_ref::<StringArray>());
        let attributes = batch
            .column_by_name(ResourceColumn::ResourceAttributes.name())
            .and_then(|c| c.as_any().downcast_ref::<MapArray>());
        // Per rule: each key's values (a column, the project, or an attribute per row), resolved once per batch.
        enum Values<'a> {
            Column(Option<&'a StringArray>),
            Constant(&'a str),
            Attribute(&'a str),
        }
        type Resolved<'a> = Vec<(Values<'a>, &'a Vec<String>)>;
        let rules: Vec<Option<Resolved<'_>>> = self
            .rules
            .iter()
            .map(|rule| {
                let keys = rule.per_signal.get(&signal)?.as_ref()?;
                Some(
                    keys.iter()
                        .map(|(source, globs)| {
                            let values = match source {
                                Source::Column(name) => Values::Column(strings(name)),
                                Source::Project => Values::Constant(project.as_str()),
                                Source::Resource(key) => Values::Attribute(key.as_str()),
                            };
                            (values, globs)
                        })
                        .collect(),
                )
            })
            .collect();
        let attribute = |row: usize, key: &str| -> Option<String> {
            let map = attributes?;
            if map.is_null(row) {
                return None;
            }
            let entries = map.value(row);
            let keys = entries.column(0).as_string_opt::<i32>()?;
            let values = entries.column(1).as_string_opt::<i32>()?;
            (0..keys.len())
                .find(|&i| keys.value(i) == key)
                .filter(|&i| values.is_valid(i))
                .map(|i| values.value(i).to_string())
        };
        for (row, store) in out.iter_mut().enumerate() {
            for (i, rule) in rules.iter().enumerate() {
                let Some(keys) = rule else { continue };
                let all = keys.iter().all(|(values, globs)| {
                    let matches = |v: &str| globs.iter().any(|g| glob::matches(Dialect::Exact, g, v));
                    match values {
                        Values::Column(Some(column)) => column.is_valid(row) && matches(column.value(row)),
                        Values::Column(None) => false,
                        Values::Constant(v) => matches(v),
                        Values::Attribute(key) => attribute(row, key).is_some_and(|v| matches(&v)),
                    }
                });
                if all {
                    *store = StoreId(u16::try_from(i + 1).unwrap_or(u16::MAX));
                    break;
                }
            }
        }
        out
    }

    /// `batch` split by store: each store's rows (Arrow's `filter`, no copy when every row goes to one store),
    /// stores with no rows left out.
    pub fn split(
        &self,
        signal: Signal,
        project: &Project,
        batch: &RecordBatch,
    ) -> Result<Vec<(StoreId, RecordBatch)>, datafusion::arrow::error::ArrowError> {
        let routes = self.route(signal, project, batch);
        let Some(first) = routes.first().copied() else {
            return Ok(Vec::new());
        };
        if routes.iter().all(|s| *s == first) {
            return Ok(vec![(first, batch.clone())]);
        }
        let mut stores: Vec<StoreId> = routes.clone();
        stores.sort_unstable();
        stores.dedup();
        stores
            .into_iter()
            .map(|store| {
                let mask: datafusion::arrow::array::BooleanArray = routes.iter().map(|s| Some(*s == store)).collect();
                datafusion::arrow::compute::filter_record_batch(batch, &mask).map(|b| (store, b))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(toml_text: &str) -> Result<Vec<PlacementRule>, String> {
        #[derive(Deserialize)]
        struct Wrapper {
            placement: Vec<PlacementRule>,
        }
        let w: Wrapper = toml::from_str(toml_text).map_err(|e| e.to_string())?;
        validate(&w.placement, Some("s3://tailscope-us/prod/")).map_err(|e| e.to_string())?;
        Ok(w.placement)
    }

    #[test]
    fn invalid_rules_are_refused_naming_the_rule_and_what_to_do() {
        let ok = r#"
            [[placement]]
            name = "eu"
            url = "s3://tailscope-eu/prod"
            match = { cloud_region = ["eu-*", "europe-*"], resource = { "k8s.cluster.name" = ["eu-*"] } }
            [[placement]]
            name = "onprem"
            url = "/srv/tailscope-onprem"
            match = { project = ["factory-*"] }
        "#;
        let parsed = rules(ok).unwrap();
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[0].matches.resource["k8s.cluster.name"], vec!["eu-*".to_string()]);
        let cases = [
            (
                r#"[[placement]]
                name = "eu"
                url = "s3://a/b"
                match = { cloud_region = ["eu-*"] }
                [[placement]]
                name = "eu"
                url = "s3://c/d"
                match = { cloud_region = ["europe-*"] }"#,
                "same name",
            ),
            (
                r#"[[placement]]
                name = "eu"
                url = "ftp://a/b"
                match = { cloud_region = ["eu-*"] }"#,
                "\"eu\"",
            ),
            (
                r#"[[placement]]
                name = "eu"
                url = "relative/dir"
                match = { cloud_region = ["eu-*"] }"#,
                "absolute local path",
            ),
            (
                r#"[[placement]]
                name = "eu"
                url = "s3://a/b"
                match = { cloud_zone = ["eu-*"] }"#,
                "unknown field `cloud_zone`",
            ),
            (
                r#"[[placement]]
                name = "eu"
                url = "s3://a/b"
                match = { cloud_region = [] }"#,
                "empty list",
            ),
            (
                r#"[[placement]]
                name = "eu"
                url = "s3://a/b"
                match = {}"#,
                "names no key",
            ),
            (
                r#"[[placement]]
                name = "eu"
                url = "s3://a/b"
                match = { cloud_region = ["eu-*"] }
                [[placement]]
                name = "eu2"
                url = "s3://a/b/"
                match = { cloud_region = ["europe-*"] }"#,
                "the store of rule \"eu\" already",
            ),
            (
                r#"[[placement]]
                name = "us"
                url = "s3://tailscope-us/prod"
                match = { cloud_region = ["us-*"] }"#,
                "the store of storage.url already",
            ),
            (
                r#"[[placement]]
                name = "EU West"
                url = "s3://a/b"
                match = { cloud_region = ["eu-*"] }"#,
                "a-z, 0-9",
            ),
        ];
        for (text, expected) in cases {
            let err = rules(text).unwrap_err();
            assert!(err.contains(expected), "{expected:?} not in {err}");
        }
    }

    fn spans(regions: &[Option<&str>], peers: &[Option<&str>]) -> RecordBatch {
        use datafusion::arrow::datatypes::{Field, Schema};
        let schema = Schema::new(vec![
            Field::new(ResourceColumn::CloudRegion.name(), datafusion::arrow::datatypes::DataType::Utf8, true),
            Field::new(SpanColumn::PeerCloudRegion.name(), datafusion::arrow::datatypes::DataType::Utf8, true),
        ]);
        RecordBatch::try_new(
            std::sync::Arc::new(schema),
            vec![
                std::sync::Arc::new(StringArray::from(regions.to_vec())),
                std::sync::Arc::new(StringArray::from(peers.to_vec())),
            ],
        )
        .unwrap()
    }

    /// `resource."key"` reads the row's `resource_attributes` map; a row without the key is not taken.
    #[test]
    fn a_resource_attribute_key_reads_the_rows_resource_attributes() {
        use datafusion::arrow::array::{MapBuilder, StringBuilder};
        let rules = rules(
            r#"
            [[placement]]
            name = "onprem"
            url = "/srv/onprem"
            match = { project = ["factory-*"], resource = { "k8s.cluster.name" = ["onprem-*"] } }
        "#,
        )
        .unwrap();
        let mut map = MapBuilder::new(None, StringBuilder::new(), StringBuilder::new());
        for row in [Some("onprem-1"), Some("gke-eu"), None] {
            map.keys().append_value("host.name");
            map.values().append_value("h");
            if let Some(cluster) = row {
                map.keys().append_value("k8s.cluster.name");
                map.values().append_value(cluster);
            }
            map.append(true).unwrap();
        }
        let map = map.finish();
        let schema = datafusion::arrow::datatypes::Schema::new(vec![datafusion::arrow::datatypes::Field::new(
            ResourceColumn::ResourceAttributes.name(),
            map.data_type().clone(),
            true,
        )]);
        let batch = RecordBatch::try_new(std::sync::Arc::new(schema), vec![std::sync::Arc::new(map)]).unwrap();
        let placement = Placement::new(&rules);
        let factory = Project::parse("factory-7").unwrap();
        for signal in Signal::ALL {
            assert_eq!(placement.route(signal, &factory, &batch), vec![StoreId(1), StoreId(0), StoreId(0)]);
            assert_eq!(placement.route(signal, &Project::default(), &batch), vec![StoreId(0); 3]);
        }
    }

    #[test]
    fn the_first_matching_rule_takes_a_row_and_the_rest_go_to_the_default_store() {
        let rules = rules(
            r#"
            [[placement]]
            name = "eu-to-eu"
            url = "s3://eu2/x"
            match = { cloud_region = ["eu-*"], peer_cloud_region = ["eu-*"] }
            [[placement]]
            name = "eu"
            url = "s3://eu/x"
            match = { cloud_region = ["eu-*", "europe-*"] }
        "#,
        )
        .unwrap();
        let placement = Placement::new(&rules);
        let batch = spans(
            &[Some("eu-west-1"), Some("eu-west-1"), Some("us-east-1"), None, Some("europe-west4")],
            &[Some("eu-central-1"), Some("us-east-1"), None, None, None],
        );
        let routes = placement.route(Signal::Spans, &Project::default(), &batch);
        assert_eq!(routes, vec![StoreId(1), StoreId(2), StoreId(0), StoreId(0), StoreId(2)]);
        let split = placement.split(Signal::Spans, &Project::default(), &batch).unwrap();
        let rows: Vec<(StoreId, usize)> = split.iter().map(|(s, b)| (*s, b.num_rows())).collect();
        assert_eq!(rows, vec![(StoreId(0), 2), (StoreId(1), 1), (StoreId(2), 2)]);
        // Metrics have no peer_cloud_region: the first rule never takes their rows, the second does.
        assert_eq!(placement.inapplicable(Signal::Metrics), vec!["eu-to-eu"]);
        assert!(placement.inapplicable(Signal::Spans).is_empty());
        let metric_like = spans(&[Some("eu-west-1")], &[Some("eu-west-1")]);
        assert_eq!(placement.route(Signal::Metrics, &Project::default(), &metric_like), vec![StoreId(2)]);
    }
}
