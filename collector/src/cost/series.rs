//! Each budget's figures and alert state as Prometheus series on `GET /metrics`, computed when scraped, so that
//! Alertmanager and Grafana can alert on cost without tailscope's webhooks.
//!
//! Every series is labelled `budget` (its name, from the config) and `kind`. A figure is in the unit its name
//! ends with: `_usd` for money, `_ratio` for a fraction (a share of inference spend, or use against the cap, where
//! 1 is the cap). A budget has the series of the caps it has: a dollar cap gives `tailscope_budget_cap_usd`, a
//! share cap `tailscope_budget_cap_share_ratio`, and nothing reads a share cap as a dollar amount. The figures are
//! [`BudgetFigures`], the same as `/api/v1/alerts` and the dashboard show; `docs/operations.md` lists the series.

use std::collections::BTreeMap;

use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet};
use prometheus_client::metrics::MetricType;
use tailscope_core::cost::BudgetFigures;

use super::engine::BudgetEngine;
use crate::telemetry::ScrapeSeries;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BudgetLabels {
    budget: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AlertLabels {
    budget: String,
    kind: String,
    /// `threshold` (a warning or a breach) or `forecast`.
    alert: String,
}

/// A figure of a budget's: its name after `tailscope_`, its help, and how it reads from the budget's figures
/// (`None`: the budget has no such figure, and no sample).
type Figure = (&'static str, &'static str, fn(&BudgetFigures) -> Option<f64>);

const FIGURES: [Figure; 8] = [
    (
        "budget_spend_usd",
        "Spend counted by a budget this period, USD (session_cost: the most expensive session's)",
        |f| Some(f.spend_usd),
    ),
    ("budget_cap_usd", "A budget's dollar cap per period (budgets with cap_usd), USD", |f| f.cap_usd),
    ("budget_share_ratio", "duplicate_inference: duplicate spend as a fraction of inference spend this period", |f| {
        f.share
    }),
    (
        "budget_cap_share_ratio",
        "A budget's cap as a fraction of inference spend (duplicate_inference budgets with cap_share)",
        |f| f.cap_share,
    ),
    (
        "budget_utilization_ratio",
        "A budget's use against its cap in the cap's unit (the larger of the two for two caps); 1 = cap reached",
        |f| Some(f.utilization),
    ),
    (
        "budget_projected_spend_usd",
        "Spend projected at the period's end from the recent burn rate (calendar periods, once 5% has passed), USD",
        |f| f.projected_usd,
    ),
    (
        "budget_projected_share_ratio",
        "duplicate_inference with cap_share: the share of inference spend projected at the period's end",
        |f| f.projected_share.filter(|_| f.cap_share.is_some()),
    ),
    (
        "budget_projected_utilization_ratio",
        "The projection against the cap, like budget_utilization_ratio",
        BudgetFigures::projected_utilization,
    ),
];

/// The alert kinds `tailscope_budget_alert_firing` reports, each budget always.
const ALERTS: [&str; 2] = ["threshold", "forecast"];

fn gauges<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    samples: &[(L, f64)],
) -> Result<(), std::fmt::Error> {
    if samples.is_empty() {
        return Ok(());
    }
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in samples {
        metric.encode_family(labels)?.encode_gauge(value)?;
    }
    Ok(())
}

impl ScrapeSeries for BudgetEngine {
    fn encode(&self, encoder: &mut DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let statuses = self.statuses();
        let labels: Vec<BudgetLabels> = statuses
            .iter()
            .map(|s| BudgetLabels { budget: s.name.clone(), kind: s.kind.as_str().to_string() })
            .collect();
        for (name, help, read) in FIGURES {
            let samples: Vec<(BudgetLabels, f64)> = statuses
                .iter()
                .zip(&labels)
                .filter_map(|(s, l)| read(&s.figures).filter(|v| v.is_finite()).map(|v| (l.clone(), v)))
                .collect();
            gauges(encoder, name, help, &samples)?;
        }

        // Firing alerts per budget: which kinds, and the highest threshold crossed (sessions' alerts included).
        let mut firing: BTreeMap<&str, (Vec<&str>, f64)> = BTreeMap::new();
        let alerts = self.alerts(true);
        for e in &alerts {
            let entry = firing.entry(e.budget.as_str()).or_default();
            entry.0.push(e.event.as_str());
            if e.event == "threshold" {
                entry.1 = entry.1.max(e.threshold.unwrap_or(0.0));
            }
        }
        let mut state = Vec::new();
        let mut threshold = Vec::new();
        for l in &labels {
            let (kinds, top) = firing.get(l.budget.as_str()).cloned().unwrap_or_default();
            for alert in ALERTS {
                let on = if kinds.contains(&alert) { 1.0 } else { 0.0 };
                state.push((AlertLabels { budget: l.budget.clone(), kind: l.kind.clone(), alert: alert.into() }, on));
            }
            threshold.push((l.clone(), top));
        }
        gauges(
            encoder,
            "budget_alert_firing",
            "1 while an alert of a budget is firing, by alert: threshold (a warning or a breach, any session's \
             included) or forecast",
            &state,
        )?;
        gauges(
            encoder,
            "budget_alert_threshold_ratio",
            "The highest warn_at threshold a firing alert of a budget has crossed (1 and above: a breach); 0 when none \
             fires",
            &threshold,
        )
    }
}
