//! The cost sections of the config, `[pricing]`, `[[budget]]` and `[alerts]`, and the value types they name
//! (egress prices, budget kinds and periods), with the checks that a value can work, and [`BudgetFigures`]: how a
//! budget's spend, cap and projection read in the units of its cap.
//!
//! The rules that use them are the collector's (`collector::cost`): pricing spans at ingest, budget accounting,
//! the alert lifecycle and webhooks. They are here because the one typed [`crate::config::Config`] holds them, and
//! the `alerts` table ([`crate::alerts`]) names a budget's kind. `docs/cost.md` documents the rules.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use crate::display::{percent, usd};
use crate::error::ConfigError;
use crate::webhook::{Webhook, WebhookConfig};

/// `[pricing]`: where model and egress prices come from.
///
/// ```toml
/// [pricing]
/// model_files = ["/etc/tailscope/model_prices_and_context_window.json"]  # LiteLLM format, merged over the defaults
/// egress_file = "/etc/tailscope/egress.json"
/// aliases = { "prod-chat-*" = "gpt-4.1-mini" }           # model-name pattern -> priced model
/// provider_clouds = { "my.gateway" = "gcp" }              # gen_ai.provider.name pattern -> cloud (or "internet")
/// [pricing.models."my-finetune"]                          # inline entries, LiteLLM field names
/// input_cost_per_token = 3e-6
/// output_cost_per_token = 1.2e-5
/// ```
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PricingConfig {
    /// LiteLLM-format JSON files merged over the built-in table, in order (a later entry replaces an earlier one
    /// with the same name).
    pub model_files: Vec<PathBuf>,
    /// Start from an empty model table instead of the built-in one.
    pub replace_default_models: bool,
    /// Inline model entries (LiteLLM field names), merged last.
    pub models: BTreeMap<String, serde_json::Value>,
    /// Model-name patterns (`*` wildcard) mapped to a priced model name, tried before the normal matching:
    /// for Azure deployment names and gateways that rename models.
    pub aliases: BTreeMap<String, String>,
    /// A JSON file of egress prices per cloud (`{"aws": {"internet_per_gb": 0.09, "cross_region_per_gb": 0.02}}`),
    /// merged over the built-in figures.
    pub egress_file: Option<PathBuf>,
    /// Start from no egress prices instead of the built-in ones.
    pub replace_default_egress: bool,
    /// Inline egress prices per cloud, merged last.
    pub egress: BTreeMap<String, EgressPrice>,
    /// `gen_ai.provider.name` patterns mapped to the cloud serving them (`aws`, `azure`, `gcp`, ... or `internet`),
    /// ahead of the built-in map (`aws.bedrock` -> aws, `azure.ai.*` -> azure, `gcp.*` -> gcp).
    pub provider_clouds: BTreeMap<String, String>,
    /// Bytes in the "GB" that egress prices are quoted per. Clouds meter in binary gigabytes (2^30), the default.
    #[serde(with = "crate::config::units::bytes")]
    pub bytes_per_gb: u64,
    /// Longest model, provider or region name used to look a price up. A longer one (no real name comes close)
    /// is treated as absent: a span priced by such a model is `unknown`. Bounds the work and memory a hostile
    /// name costs per span.
    #[serde(with = "crate::config::units::bytes")]
    pub max_name_bytes: usize,
    /// Bytes the price-resolution cache may hold (names, the prices they resolve to and the map's slots) before it
    /// is emptied; it holds at most 8,192 entries too. Reserved from `memory.limit_mb` at start.
    #[serde(with = "crate::config::units::bytes")]
    pub cache_bytes: usize,
}

impl Default for PricingConfig {
    fn default() -> Self {
        PricingConfig {
            model_files: Vec::new(),
            replace_default_models: false,
            models: BTreeMap::new(),
            aliases: BTreeMap::new(),
            egress_file: None,
            replace_default_egress: false,
            egress: BTreeMap::new(),
            provider_clouds: BTreeMap::new(),
            bytes_per_gb: 1 << 30,
            max_name_bytes: 256,
            cache_bytes: 4 << 20,
        }
    }
}

impl PricingConfig {
    /// Checks values that parse but cannot work (the files themselves are read by
    /// `collector::cost::Pricer::from_config`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.bytes_per_gb == 0 {
            return Err(ConfigError::Invalid {
                field: "pricing.bytes_per_gb".into(),
                reason: "must be greater than 0".into(),
            });
        }
        if self.max_name_bytes == 0 {
            let reason = "must be greater than 0".into();
            return Err(ConfigError::Invalid { field: "pricing.max_name_bytes".into(), reason });
        }
        Ok(())
    }
}

/// One `[[budget]]` table.
///
/// ```toml
/// [[budget]]
/// name = "egress-monthly"
/// kind = "egress"            # egress | duplicate_inference | session_cost | total
/// period = "month"           # day | month | a rolling window such as "24h" or "7d"
/// cap_usd = 500
/// warn_at = [0.5, 0.8, 1.0]  # fractions of the cap; 1.0 and above are breaches
/// providers = ["aws.bedrock"] # optional filters: gen_ai_provider, cloud_region, service_name patterns
/// ```
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BudgetConfig {
    /// The budget's name, unique.
    pub name: String,
    /// What is counted.
    pub kind: BudgetKind,
    /// Over which time spend accumulates.
    pub period: BudgetPeriod,
    /// Cap in USD per period (per session for `session_cost`).
    #[serde(default)]
    pub cap_usd: Option<f64>,
    /// For `duplicate_inference`: cap on duplicate spend as a share of inference spend (e.g. `0.05`).
    #[serde(default)]
    pub cap_share: Option<f64>,
    /// Alert thresholds as fractions of the cap; each fires once per period. Those >= 1.0 are breaches.
    #[serde(default = "default_warn_at")]
    pub warn_at: Vec<f64>,
    /// Only spans whose `gen_ai_provider` matches one of these patterns (`*` wildcard); empty = all.
    #[serde(default)]
    pub providers: Vec<String>,
    /// Only spans whose `cloud_region` (the caller's) matches one of these patterns; empty = all.
    #[serde(default)]
    pub regions: Vec<String>,
    /// Only spans whose `service_name` matches one of these patterns; empty = all.
    #[serde(default)]
    pub services: Vec<String>,
    /// Warn when the burn rate projects a breach before the period ends (calendar periods only).
    #[serde(default = "yes")]
    pub forecast: bool,
    /// Only spans of this project (`crate::projects`); its alerts carry it and only keys of the project (and
    /// admin keys) see the budget and its alerts. None: every project's spans.
    #[serde(default)]
    pub project: Option<String>,
}

fn default_warn_at() -> Vec<f64> {
    vec![0.8, 1.0]
}

fn yes() -> bool {
    true
}

impl BudgetConfig {
    /// Checks the budget's values; the error says what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.name.trim().is_empty() {
            return Err("name must not be empty".into());
        }
        if self.name.chars().any(|c| c.is_control() || c == '/') {
            return Err(format!("name {:?} must not contain '/' or control characters", self.name));
        }
        if let Some(project) = &self.project {
            crate::projects::Project::parse(project).map_err(|e| format!("project: {e}"))?;
        }
        let positive = |v: Option<f64>, what: &str| -> Result<(), String> {
            match v {
                Some(x) if !x.is_finite() || x <= 0.0 => Err(format!("{what} must be a positive number, got {x}")),
                _ => Ok(()),
            }
        };
        positive(self.cap_usd, "cap_usd")?;
        positive(self.cap_share, "cap_share")?;
        match self.kind {
            BudgetKind::DuplicateInference => {
                if self.cap_usd.is_none() && self.cap_share.is_none() {
                    return Err("a duplicate_inference budget needs cap_usd, cap_share or both".into());
                }
                if self.cap_share.is_some_and(|s| s > 1.0) {
                    return Err("cap_share is a fraction of inference spend and must be at most 1.0".into());
                }
            }
            _ => {
                if self.cap_share.is_some() {
                    return Err(format!("cap_share applies to duplicate_inference budgets only, not {}", self.kind));
                }
                if self.cap_usd.is_none() {
                    return Err(format!("a {} budget needs cap_usd", self.kind));
                }
            }
        }
        if self.warn_at.is_empty() {
            return Err("warn_at must list at least one threshold (e.g. [0.8, 1.0])".into());
        }
        if let Some(bad) = self.warn_at.iter().find(|t| !t.is_finite() || **t <= 0.0 || **t > 10.0) {
            return Err(format!("warn_at thresholds are fractions of the cap in (0, 10], got {bad}"));
        }
        if let BudgetPeriod::Rolling(window) = self.period
            && window < Duration::from_secs(60)
        {
            let window = humantime_serde::re::humantime::format_duration(window);
            return Err(format!("a rolling period must be at least 1m, got {window}"));
        }
        for (what, patterns) in
            [("providers", &self.providers), ("regions", &self.regions), ("services", &self.services)]
        {
            if patterns.iter().any(|p| p.is_empty()) {
                return Err(format!("{what} must not contain an empty pattern"));
            }
        }
        Ok(())
    }
}

/// Checks a whole `[[budget]]` list: each budget, and that names are unique.
pub fn validate_budgets(budgets: &[BudgetConfig]) -> Result<(), ConfigError> {
    let mut seen = std::collections::HashSet::new();
    for (i, b) in budgets.iter().enumerate() {
        b.validate().map_err(|reason| ConfigError::Invalid { field: format!("budget[{i}] ({})", b.name), reason })?;
        if !seen.insert(b.name.as_str()) {
            return Err(ConfigError::Invalid {
                field: format!("budget[{i}]"),
                reason: format!(
                    "the name {:?} is used by two budgets; names identify alerts and must be unique",
                    b.name
                ),
            });
        }
    }
    Ok(())
}

/// `[alerts]`: where alerts go and how hard delivery tries.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AlertsConfig {
    /// Webhooks; each alert event is POSTed to each. An entry is a URL (plain JSON with a Slack-compatible `text`)
    /// or a table with a format (`json`, `slack`, `pagerduty`), a signing secret and extra headers
    /// ([`crate::webhook::WebhookConfig`]). `http://` or `https://` (TLS with the system's root certificates).
    #[serde(deserialize_with = "crate::webhook::deserialize_webhooks")]
    pub webhooks: Vec<WebhookConfig>,
    /// Per-attempt timeout.
    #[serde(with = "crate::config::units::duration")]
    pub timeout: Duration,
    /// Attempts per event and webhook in a row, before the event waits in the webhook's outbox and the webhook is
    /// tried again less often (up to `outbox_max_backoff` apart). No event is given up.
    pub max_attempts: u32,
    /// Delay before the first retry; doubles each attempt (with jitter) up to `max_backoff`.
    #[serde(with = "crate::config::units::duration")]
    pub initial_backoff: Duration,
    /// Longest delay between attempts in a row.
    #[serde(with = "crate::config::units::duration")]
    pub max_backoff: Duration,
    /// Once `max_attempts` failed, a webhook is tried again after `max_backoff`, doubling (with jitter) up to this;
    /// an event a webhook refused (3xx, 4xx) is tried again after this long, and at every start.
    #[serde(with = "humantime_serde")]
    pub outbox_max_backoff: Duration,
    /// Events one webhook's outbox (`DATA/alerts/outbox/NAME/`) may hold; past it, new events are not queued for
    /// that webhook (logged and counted in `tailscope_webhook_events_dropped_total`).
    pub outbox_max_events: usize,
    /// Bytes one webhook's outbox may hold, likewise; at least [`MAX_OUTBOX_EVENT_BYTES`].
    pub outbox_max_bytes: usize,
    /// Budgets are re-evaluated at least this often (period ends, rolling windows, forecasts), and at most
    /// a few times a second while spans arrive.
    #[serde(with = "crate::config::units::duration")]
    pub evaluate_interval: Duration,
}

/// The largest event file an outbox writes or reads: an alert event is a few hundred bytes; one this large is not
/// queued (and a file this large in an outbox is set aside unread).
pub const MAX_OUTBOX_EVENT_BYTES: usize = 256 * 1024;

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            webhooks: Vec::new(),
            timeout: Duration::from_secs(5),
            max_attempts: 10,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(60),
            outbox_max_backoff: Duration::from_secs(600),
            outbox_max_events: 10_000,
            outbox_max_bytes: 16 * 1024 * 1024,
            evaluate_interval: Duration::from_secs(10),
        }
    }
}

impl AlertsConfig {
    /// Checks values that parse but cannot work, the webhooks' included (their secrets are read from the
    /// environment to check that they are set).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field: &str, reason: String| ConfigError::Invalid { field: format!("alerts.{field}"), reason };
        self.webhooks()?;
        if self.max_attempts == 0 {
            return Err(invalid("max_attempts", "must be at least 1".into()));
        }
        if self.timeout.is_zero() {
            return Err(invalid("timeout", "must be greater than 0".into()));
        }
        if self.evaluate_interval < Duration::from_millis(100) {
            return Err(invalid("evaluate_interval", "must be at least 100ms".into()));
        }
        Ok(())
    }

    /// The webhooks ready to send with: names and URLs decided, secrets read from the config or the environment,
    /// every value checked (the error names the key).
    pub fn webhooks(&self) -> Result<Vec<Webhook>, ConfigError> {
        crate::webhook::resolve(&self.webhooks, "alerts.webhooks")
    }
}

/// One cloud's egress prices, USD per GB (see [`PricingConfig::bytes_per_gb`]): a `[pricing.egress.CLOUD]` table,
/// or an entry of an egress price file (`collector::cost::EgressTable`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EgressPrice {
    /// Out of the cloud: to the internet or to another cloud.
    pub internet_per_gb: f64,
    /// Between two regions of the same cloud.
    pub cross_region_per_gb: f64,
    /// Within one region (the published figure is 0 for same-zone traffic).
    #[serde(default)]
    pub same_region_per_gb: f64,
    /// To another cloud, when it differs from the internet rate (defaults to `internet_per_gb`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cross_cloud_per_gb: Option<f64>,
    /// Where the figures come from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// When they were read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_of: Option<String>,
}

/// What a budget counts.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum BudgetKind {
    /// `egress_cost_usd`: data transfer.
    Egress,
    /// `cost_usd` of the non-winning copies of hedged requests (`hedge.id` set, `hedge.winner` not true).
    DuplicateInference,
    /// `cost_usd` per `session_id`: the cap applies to each session.
    SessionCost,
    /// `cost_usd` of everything.
    #[default]
    Total,
}

impl BudgetKind {
    /// The name used in the config and in alerts.
    pub fn as_str(self) -> &'static str {
        match self {
            BudgetKind::Egress => "egress",
            BudgetKind::DuplicateInference => "duplicate_inference",
            BudgetKind::SessionCost => "session_cost",
            BudgetKind::Total => "total",
        }
    }
}

impl fmt::Display for BudgetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A budget's figures in the units of its caps: money against `cap_usd`, a share of inference spend against
/// `cap_share` (`duplicate_inference`), both when it has both. Built from a budget's live status
/// (`collector::cost::BudgetStatus`) or from an alert event ([`crate::alerts::AlertEvent::figures`]); its text
/// forms are what the dashboard's gauges and Alerts screen, the `used` / `cap` / `projected` fields of
/// `/api/v1/alerts`, the `alerts` table, the alert messages (log and webhooks) and the guardrail's reasons show.
///
/// Budget statuses and alert events carry it flattened, so their JSON (the API, webhooks, the event log) has these
/// fields at the top level.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct BudgetFigures {
    /// Spend counted this period (for a session, the session's).
    pub spend_usd: f64,
    #[serde(default)]
    pub cap_usd: Option<f64>,
    /// Duplicate spend's share of inference spend (`duplicate_inference`).
    #[serde(default)]
    pub share: Option<f64>,
    #[serde(default)]
    pub cap_share: Option<f64>,
    /// Use against the cap, from [`BudgetFigures::utilization_of`]; 1.0 = cap reached.
    pub utilization: f64,
    /// Spend projected at the period's end.
    #[serde(default)]
    pub projected_usd: Option<f64>,
    /// The share projected at the period's end. Absent from events recorded before it existed.
    #[serde(default)]
    pub projected_share: Option<f64>,
}

impl BudgetFigures {
    /// Use against the caps, in each cap's own unit: the larger of `spend / cap_usd` and `share / cap_share`
    /// (a missing share counts as 0); 0 when there is no cap.
    pub fn utilization_of(spend_usd: f64, share: Option<f64>, cap_usd: Option<f64>, cap_share: Option<f64>) -> f64 {
        let by_usd = cap_usd.map(|cap| spend_usd / cap);
        let by_share = cap_share.map(|cap| share.unwrap_or(0.0) / cap);
        by_usd.into_iter().chain(by_share).fold(0.0, f64::max)
    }

    /// The projected use against the caps, when something is projected.
    pub fn projected_utilization(&self) -> Option<f64> {
        let by_usd = self.projected_usd.zip(self.cap_usd).map(|(p, cap)| p / cap);
        let by_share = self.projected_share.zip(self.cap_share).map(|(p, cap)| p / cap);
        by_usd.into_iter().chain(by_share).reduce(f64::max)
    }

    fn shows_usd(&self) -> bool {
        self.cap_usd.is_some() || self.cap_share.is_none()
    }

    /// The cap: `$500.00`, `3% of inference`, or `$5.00 · 3% of inference` for both.
    pub fn cap(&self) -> String {
        let parts: Vec<String> = self
            .cap_usd
            .map(usd)
            .into_iter()
            .chain(self.cap_share.map(|s| format!("{} of inference", percent(s))))
            .collect();
        if parts.is_empty() { "-".into() } else { parts.join(" · ") }
    }

    /// What is used, in the cap's units: `$410.00`, `4.1%` (of inference spend), or `$0.69 · 4.1%`.
    pub fn used(&self) -> String {
        let usd_part = self.shows_usd().then(|| usd(self.spend_usd));
        let share_part = self.cap_share.map(|_| percent(self.share.unwrap_or(0.0)));
        usd_part.into_iter().chain(share_part).collect::<Vec<_>>().join(" · ")
    }

    /// The projection at the period's end, in the cap's units like [`BudgetFigures::used`], when there is one.
    pub fn projected(&self) -> Option<String> {
        let usd_part = self.projected_usd.filter(|_| self.shows_usd()).map(usd);
        let share_part = self.projected_share.filter(|_| self.cap_share.is_some()).map(percent);
        let parts: Vec<String> = usd_part.into_iter().chain(share_part).collect();
        (!parts.is_empty()).then(|| parts.join(" · "))
    }

    /// The figures against the cap in words, for messages: `$512.00 of $500.00 (102%) spent`,
    /// `4.1% of inference spend against a 3% cap (137%), $0.69 spent`, or
    /// `$0.69 of $5.00 spent, 4.1% of inference spend against a 3% cap (137%)`.
    pub fn summary(&self) -> String {
        let util = percent(self.utilization);
        let share = |cap: f64| {
            format!("{} of inference spend against a {} cap", percent(self.share.unwrap_or(0.0)), percent(cap))
        };
        match (self.cap_usd, self.cap_share) {
            (Some(cap), Some(cap_share)) => {
                format!("{} of {} spent, {} ({util})", usd(self.spend_usd), usd(cap), share(cap_share))
            }
            (None, Some(cap_share)) => format!("{} ({util}), {} spent", share(cap_share), usd(self.spend_usd)),
            (Some(cap), None) => format!("{} of {} ({util}) spent", usd(self.spend_usd), usd(cap)),
            (None, None) => format!("{} spent", usd(self.spend_usd)),
        }
    }

    /// The projection in words, for messages: `$640.00 (128%)`, `4.5% of inference spend (150%)`, or
    /// `$6.40 and 4.5% of inference spend (150%)`.
    pub fn projected_summary(&self) -> Option<String> {
        let usd_part = self.projected_usd.filter(|_| self.shows_usd()).map(usd);
        let share_part = self
            .projected_share
            .filter(|_| self.cap_share.is_some())
            .map(|s| format!("{} of inference spend", percent(s)));
        let parts: Vec<String> = usd_part.into_iter().chain(share_part).collect();
        if parts.is_empty() {
            return None;
        }
        let util = self.projected_utilization().map(|u| format!(" ({})", percent(u))).unwrap_or_default();
        Some(format!("{}{util}", parts.join(" and ")))
    }
}

/// Over which time spend accumulates. Calendar periods are in UTC.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum BudgetPeriod {
    /// The UTC calendar day.
    Day,
    /// The UTC calendar month.
    #[default]
    Month,
    /// The trailing window ending now.
    Rolling(Duration),
}

impl TryFrom<String> for BudgetPeriod {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        match s.trim() {
            "day" | "daily" => Ok(BudgetPeriod::Day),
            "month" | "monthly" => Ok(BudgetPeriod::Month),
            other => humantime_serde::re::humantime::parse_duration(other.strip_prefix("rolling:").unwrap_or(other))
                .map(BudgetPeriod::Rolling)
                .map_err(|e| {
                    format!("period {other:?} is not \"day\", \"month\" or a rolling window like \"24h\" ({e})")
                }),
        }
    }
}

impl From<BudgetPeriod> for String {
    fn from(p: BudgetPeriod) -> String {
        p.to_string()
    }
}

impl fmt::Display for BudgetPeriod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BudgetPeriod::Day => f.write_str("day"),
            BudgetPeriod::Month => f.write_str("month"),
            BudgetPeriod::Rolling(d) => write!(f, "{}", humantime_serde::re::humantime::format_duration(*d)),
        }
    }
}

const NS_PER_DAY: i64 = 24 * 3_600_000_000_000;

/// The current period's bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeriodBounds {
    /// Inclusive start, ns since the epoch.
    pub start_ns: i64,
    /// Exclusive end for calendar periods.
    pub end_ns: Option<i64>,
    /// `2026-11` for a month, `2026-11-22` for a day, `rolling` for a window.
    pub key: String,
}

impl BudgetPeriod {
    /// The period containing `now_ns`.
    pub fn bounds(self, now_ns: i64) -> PeriodBounds {
        let now = DateTime::<Utc>::from_timestamp_nanos(now_ns);
        let date = now.date_naive();
        let midnight = |d: NaiveDate| {
            d.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc().timestamp_nanos_opt().unwrap_or(i64::MAX)
        };
        match self {
            BudgetPeriod::Day => {
                let start = midnight(date);
                PeriodBounds {
                    start_ns: start,
                    end_ns: Some(start + NS_PER_DAY),
                    key: date.format("%Y-%m-%d").to_string(),
                }
            }
            BudgetPeriod::Month => {
                let first = NaiveDate::from_ymd_opt(date.year(), date.month(), 1).expect("first of month exists");
                let next = if date.month() == 12 {
                    NaiveDate::from_ymd_opt(date.year() + 1, 1, 1)
                } else {
                    NaiveDate::from_ymd_opt(date.year(), date.month() + 1, 1)
                }
                .expect("first of next month exists");
                PeriodBounds {
                    start_ns: midnight(first),
                    end_ns: Some(midnight(next)),
                    key: date.format("%Y-%m").to_string(),
                }
            }
            BudgetPeriod::Rolling(w) => PeriodBounds {
                start_ns: now_ns.saturating_sub(w.as_nanos().min(i64::MAX as u128) as i64),
                end_ns: None,
                key: "rolling".to_string(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    fn parse(toml: &str) -> Result<Config, String> {
        Config::from_toml(toml, Path::new("test.toml")).map_err(|e| e.to_string())
    }

    fn ns(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s).unwrap().timestamp_nanos_opt().unwrap()
    }

    #[test]
    fn bad_budgets_are_refused_with_the_reason() {
        let err = parse("[[budget]]\nname = \"x\"\nkind = \"egress\"\nperiod = \"month\"\n").unwrap_err();
        assert!(err.contains("needs cap_usd"), "{err}");
        let err = parse("[[budget]]\nname = \"x\"\nkind = \"egres\"\nperiod = \"month\"\ncap_usd = 1\n").unwrap_err();
        assert!(err.contains("egres"), "{err}");
        let err = parse("[[budget]]\nname = \"x\"\nkind = \"total\"\nperiod = \"weekly\"\ncap_usd = 1\n").unwrap_err();
        assert!(err.contains("weekly"), "{err}");
        let err =
            parse("[[budget]]\nname = \"x\"\nkind = \"total\"\nperiod = \"day\"\ncap_usd = 1\ncap = 2\n").unwrap_err();
        assert!(err.contains("cap"), "{err}");
        let err = parse("[[budget]]\nname = \"x\"\nkind = \"total\"\nperiod = \"day\"\ncap_usd = -1\n").unwrap_err();
        assert!(err.contains("positive"), "{err}");
        let err =
            parse("[[budget]]\nname = \"x\"\nkind = \"egress\"\nperiod = \"day\"\ncap_share = 0.1\ncap_usd = 1\n")
                .unwrap_err();
        assert!(err.contains("duplicate_inference budgets only"), "{err}");
        let twice = BudgetConfig { name: "a".into(), cap_usd: Some(1.0), warn_at: vec![1.0], ..Default::default() };
        let err = validate_budgets(&[twice.clone(), twice]).unwrap_err().to_string();
        assert!(err.contains("unique"), "{err}");
    }

    #[test]
    fn webhooks_must_be_http_or_https_urls() {
        let https =
            AlertsConfig { webhooks: vec![WebhookConfig::url("https://hooks.slack.com/x")], ..Default::default() };
        assert!(https.validate().is_ok());
        let ftp = AlertsConfig { webhooks: vec![WebhookConfig::url("ftp://example.com/x")], ..Default::default() };
        assert!(ftp.validate().unwrap_err().to_string().contains("unsupported scheme"));
        let junk = AlertsConfig { webhooks: vec![WebhookConfig::url("not a url")], ..Default::default() };
        assert!(junk.validate().unwrap_err().to_string().contains("not a URL"));
    }

    #[test]
    fn period_parsing_and_bounds() {
        assert_eq!(BudgetPeriod::try_from("month".to_string()), Ok(BudgetPeriod::Month));
        assert_eq!(BudgetPeriod::try_from("24h".to_string()), Ok(BudgetPeriod::Rolling(Duration::from_secs(86400))));
        assert!(BudgetPeriod::try_from("weekly".to_string()).is_err());
        let b = BudgetPeriod::Month.bounds(ns("2026-12-31T23:59:59Z"));
        assert_eq!(b.key, "2026-12");
        assert_eq!(b.end_ns, Some(ns("2027-01-01T00:00:00Z")));
        let b = BudgetPeriod::Day.bounds(ns("2026-11-22T10:00:00Z"));
        assert_eq!((b.start_ns, b.key.as_str()), (ns("2026-11-22T00:00:00Z"), "2026-11-22"));
    }
    #[test]
    fn budget_figures_read_in_the_units_of_the_cap() {
        // A share-only duplicate_inference cap: no dollar cap to show, the share against the share cap.
        let share = BudgetFigures {
            spend_usd: 0.69,
            share: Some(0.041),
            cap_share: Some(0.03),
            utilization: BudgetFigures::utilization_of(0.69, Some(0.041), None, Some(0.03)),
            projected_usd: Some(0.9),
            projected_share: Some(0.045),
            ..Default::default()
        };
        assert!((share.utilization - 0.041 / 0.03).abs() < 1e-12);
        assert_eq!(share.cap(), "3% of inference");
        assert_eq!(share.used(), "4.1%");
        assert_eq!(share.projected().as_deref(), Some("4.5%"));
        assert_eq!(share.projected_utilization(), Some(0.045 / 0.03));
        assert_eq!(share.summary(), "4.1% of inference spend against a 3% cap (137%), $0.69 spent");
        assert_eq!(share.projected_summary().as_deref(), Some("4.5% of inference spend (150%)"));

        // A tiny dollar cap: every figure keeps its digits.
        let tiny = BudgetFigures {
            spend_usd: 4.994,
            cap_usd: Some(0.001),
            utilization: BudgetFigures::utilization_of(4.994, None, Some(0.001), None),
            projected_usd: Some(0.0012),
            ..Default::default()
        };
        assert_eq!(
            (tiny.cap(), tiny.used(), tiny.projected()),
            ("$0.001".into(), "$4.99".into(), Some("$0.0012".into()))
        );
        assert_eq!(tiny.summary(), "$4.99 of $0.001 (499,400%) spent");

        // Both caps: both figures, the use is the larger ratio.
        let both = BudgetFigures {
            spend_usd: 0.69,
            cap_usd: Some(5.0),
            share: Some(0.041),
            cap_share: Some(0.03),
            utilization: BudgetFigures::utilization_of(0.69, Some(0.041), Some(5.0), Some(0.03)),
            ..Default::default()
        };
        assert_eq!((both.cap(), both.used()), ("$5.00 · 3% of inference".into(), "$0.69 · 4.1%".into()));
        assert_eq!(both.summary(), "$0.69 of $5.00 spent, 4.1% of inference spend against a 3% cap (137%)");
        assert_eq!((both.projected(), both.projected_utilization()), (None, None));

        // A dollar cap alone reads as before.
        let plain = BudgetFigures { spend_usd: 512.0, cap_usd: Some(500.0), utilization: 1.024, ..Default::default() };
        assert_eq!(plain.summary(), "$512.00 of $500.00 (102%) spent");
        assert_eq!(BudgetFigures::utilization_of(1.0, None, None, None), 0.0);
    }
}
