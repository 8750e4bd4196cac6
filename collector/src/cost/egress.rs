//! Data-transfer (egress) prices per cloud and the rules that decide which cloud pays which rate.

use std::collections::BTreeMap;

use tailscope_core::cost::EgressPrice;

use super::CostError;
use super::prices::glob_match;

/// The built-in egress prices, with citations.
pub const DEFAULT_EGRESS_JSON: &str = include_str!("../../prices/egress.json");

/// Egress prices by `cloud.provider` value (`aws`, `azure`, `gcp`, ...).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EgressTable {
    clouds: BTreeMap<String, EgressPrice>,
}

/// Where a byte travels, as far as billing is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// Same cloud, same region.
    SameRegion,
    /// Same cloud, another region.
    CrossRegion,
    /// Another cloud.
    CrossCloud,
    /// Somewhere that is no known cloud.
    Internet,
}

impl EgressTable {
    /// The built-in table.
    pub fn builtin() -> EgressTable {
        EgressTable::from_json(DEFAULT_EGRESS_JSON, "built-in egress table").expect("the built-in egress table parses")
    }

    /// Parses `{"aws": {"internet_per_gb": 0.09, ...}, ...}`; `origin` names the document in errors.
    pub fn from_json(text: &str, origin: &str) -> Result<EgressTable, CostError> {
        let clouds: BTreeMap<String, EgressPrice> = serde_json::from_str(text)
            .map_err(|e| CostError::PriceFile { origin: origin.to_string(), detail: e.to_string() })?;
        let table = EgressTable { clouds: clouds.into_iter().map(|(k, v)| (k.to_lowercase(), v)).collect() };
        table.validate(origin)?;
        Ok(table)
    }

    fn validate(&self, origin: &str) -> Result<(), CostError> {
        for (cloud, p) in &self.clouds {
            let figures = [
                Some(p.internet_per_gb),
                Some(p.cross_region_per_gb),
                Some(p.same_region_per_gb),
                p.cross_cloud_per_gb,
            ];
            if figures.into_iter().flatten().any(|f| !f.is_finite() || f < 0.0) {
                return Err(CostError::PriceFile {
                    origin: origin.to_string(),
                    detail: format!("egress prices of {cloud:?} must be non-negative numbers"),
                });
            }
        }
        Ok(())
    }

    /// Adds or replaces clouds.
    pub fn merge(&mut self, other: impl IntoIterator<Item = (String, EgressPrice)>) {
        for (k, v) in other {
            self.clouds.insert(k.to_lowercase(), v);
        }
    }

    /// Every cloud and its prices.
    pub fn entries(&self) -> impl Iterator<Item = (&String, &EgressPrice)> {
        self.clouds.iter()
    }

    /// The prices of `cloud`, if known.
    pub fn get(&self, cloud: &str) -> Option<&EgressPrice> {
        self.clouds.get(cloud).or_else(|| self.clouds.get(&cloud.to_lowercase()))
    }

    /// USD per GB that `payer` charges for bytes leaving it along `path`; `None` if the cloud has no prices.
    pub fn rate(&self, payer: &str, path: Path) -> Option<f64> {
        let p = self.get(payer)?;
        Some(match path {
            Path::SameRegion => p.same_region_per_gb,
            Path::CrossRegion => p.cross_region_per_gb,
            Path::CrossCloud => p.cross_cloud_per_gb.unwrap_or(p.internet_per_gb),
            Path::Internet => p.internet_per_gb,
        })
    }
}

/// One end of a call: a cloud (and maybe a region), or the internet when `cloud` is `None`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Endpoint<'a> {
    pub cloud: Option<&'a str>,
    pub region: Option<&'a str>,
}

/// The billing path of bytes sent from `from` to `to`.
///
/// Same cloud with a region missing on either side counts as the same region: an SDK client is normally
/// configured for the caller's own region, and guessing "cross-region" would invent charges. Setting
/// `cloud.region` on the span makes the answer exact.
pub fn path(from: Endpoint<'_>, to: Endpoint<'_>) -> Path {
    match (from.cloud, to.cloud) {
        (Some(a), Some(b)) if a.eq_ignore_ascii_case(b) => match (from.region, to.region) {
            (Some(x), Some(y)) if !x.eq_ignore_ascii_case(y) => Path::CrossRegion,
            _ => Path::SameRegion,
        },
        (Some(_), Some(_)) => Path::CrossCloud,
        _ => Path::Internet,
    }
}

/// Built-in `gen_ai.provider.name` -> cloud rules (patterns, first match wins). `internet` means "no cloud".
pub const DEFAULT_PROVIDER_CLOUDS: [(&str, &str); 8] = [
    ("aws.bedrock", "aws"),
    ("aws.*", "aws"),
    ("azure.ai.*", "azure"),
    ("az.ai.*", "azure"),
    ("azure", "azure"),
    ("gcp.*", "gcp"),
    ("vertex_ai", "gcp"),
    ("google.vertex_ai", "gcp"),
];

/// Maps `gen_ai_provider` to the cloud that serves it: the configured patterns first, then the built-in ones.
#[derive(Debug, Clone, Default)]
pub struct ProviderClouds {
    rules: Vec<(String, Option<String>)>,
}

impl ProviderClouds {
    /// Configured rules (pattern -> cloud or `internet`) ahead of the built-in ones. Exact patterns are tried
    /// before wildcard ones within each group.
    pub fn new(configured: &BTreeMap<String, String>) -> ProviderClouds {
        let mut rules = Vec::new();
        let mut add_group = |group: Vec<(&str, &str)>| {
            let (exact, wild): (Vec<_>, Vec<_>) = group.into_iter().partition(|(p, _)| !p.contains('*'));
            for (p, c) in exact.into_iter().chain(wild) {
                let cloud = (!c.eq_ignore_ascii_case("internet") && !c.is_empty()).then(|| c.to_lowercase());
                rules.push((p.to_lowercase(), cloud));
            }
        };
        add_group(configured.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect());
        add_group(DEFAULT_PROVIDER_CLOUDS.to_vec());
        ProviderClouds { rules }
    }

    /// The cloud serving `provider`, or `None` (the internet).
    pub fn cloud_of(&self, provider: &str) -> Option<&str> {
        self.rules.iter().find(|(p, _)| glob_match(p, provider)).and_then(|(_, c)| c.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep<'a>(cloud: Option<&'a str>, region: Option<&'a str>) -> Endpoint<'a> {
        Endpoint { cloud, region }
    }

    #[test]
    fn paths() {
        assert_eq!(path(ep(Some("aws"), Some("us-east-1")), ep(Some("aws"), Some("us-east-1"))), Path::SameRegion);
        assert_eq!(path(ep(Some("aws"), Some("us-east-1")), ep(Some("aws"), Some("eu-west-1"))), Path::CrossRegion);
        assert_eq!(path(ep(Some("aws"), Some("us-east-1")), ep(Some("aws"), None)), Path::SameRegion);
        assert_eq!(path(ep(Some("aws"), None), ep(Some("gcp"), None)), Path::CrossCloud);
        assert_eq!(path(ep(Some("aws"), None), ep(None, None)), Path::Internet);
    }

    #[test]
    fn provider_clouds() {
        let mut configured = BTreeMap::new();
        configured.insert("my.gateway".to_string(), "gcp".to_string());
        configured.insert("gcp.gemini".to_string(), "internet".to_string());
        let m = ProviderClouds::new(&configured);
        assert_eq!(m.cloud_of("aws.bedrock"), Some("aws"));
        assert_eq!(m.cloud_of("azure.ai.openai"), Some("azure"));
        assert_eq!(m.cloud_of("azure.ai.inference"), Some("azure"));
        assert_eq!(m.cloud_of("gcp.vertex_ai"), Some("gcp"));
        assert_eq!(m.cloud_of("gcp.gemini"), None, "configured rules win");
        assert_eq!(m.cloud_of("my.gateway"), Some("gcp"));
        assert_eq!(m.cloud_of("openai"), None);
        assert_eq!(m.cloud_of("anthropic"), None);
    }

    #[test]
    fn builtin_figures() {
        let t = EgressTable::builtin();
        assert_eq!(t.rate("aws", Path::Internet), Some(0.09));
        assert_eq!(t.rate("azure", Path::Internet), Some(0.087));
        assert_eq!(t.rate("gcp", Path::CrossCloud), Some(0.12));
        assert_eq!(t.rate("aws", Path::SameRegion), Some(0.0));
        assert_eq!(t.rate("oracle", Path::Internet), None);
    }
}
