//! Alert lifecycle and persistence.
//!
//! An *alert* is identified by `budget/period_key` (plus `/session=<id>` for a session budget's session and
//! `/forecast` for the projection). It fires when utilisation crosses a threshold, fires again only for a
//! *higher* threshold, and resolves when its period ends, its budget leaves the config, or (rolling windows)
//! utilisation falls below 95% of the lowest threshold. Every transition is an [`AlertEvent`].
//!
//! Events are appended to `DATA/alerts/events.jsonl` (one JSON object per line, fsynced) before anything else
//! sees them. That file is the only state: on start it is replayed to rebuild each alert's status, so after a
//! restart an alert that already fired does not fire again. A torn last line (crash mid-write) is cut off. The
//! event and the log's reader are in [`tailscope_core::alerts`], which the query engine's `alerts` table reads too.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tailscope_core::alerts::{ALERTS_DIR, AlertEvent, EVENTS_FILE, read_events};
use tailscope_core::cost::{BudgetFigures, BudgetKind};
use tailscope_core::display::percent;

use super::CostError;
use super::budget::{Budget, BudgetStatus, last_day};

/// A rolling-window alert resolves once utilisation is below this share of the lowest threshold, so a budget
/// hovering at a threshold does not flap.
pub const RESOLVE_MARGIN: f64 = 0.95;

#[derive(Debug, Clone, PartialEq)]
struct AlertState {
    firing: bool,
    /// The highest threshold fired in the current episode.
    max_fired: f64,
    last: Arc<AlertEvent>,
}

/// Every alert's current state plus the event log.
#[derive(Debug)]
pub struct AlertBook {
    path: PathBuf,
    file: File,
    next_seq: u64,
    states: BTreeMap<String, AlertState>,
    events: Vec<Arc<AlertEvent>>,
}

impl AlertBook {
    /// Opens (or creates) `data_dir/alerts/events.jsonl` and replays it.
    pub fn open(data_dir: &Path) -> Result<AlertBook, CostError> {
        let dir = data_dir.join(ALERTS_DIR);
        let path = dir.join(EVENTS_FILE);
        let err = |detail: String| CostError::AlertState { path: path.clone(), detail };
        std::fs::create_dir_all(&dir).map_err(|e| err(format!("cannot create the directory: {e}")))?;
        let (events, valid_len) = read_events(&path).map_err(|e| err(e.to_string()))?;
        let file =
            OpenOptions::new().create(true).append(true).read(true).open(&path).map_err(|e| err(e.to_string()))?;
        let len = file.metadata().map_err(|e| err(e.to_string()))?.len();
        if valid_len < len {
            tracing::warn!(path = %path.display(), kept = valid_len, len, "alert log ends in a torn line; cutting it off");
            file.set_len(valid_len).map_err(|e| err(format!("cannot truncate the torn tail: {e}")))?;
        }
        let mut book = AlertBook { path, file, next_seq: 1, states: BTreeMap::new(), events: Vec::new() };
        for e in events {
            book.apply(Arc::new(e));
        }
        Ok(book)
    }

    fn apply(&mut self, e: Arc<AlertEvent>) {
        self.next_seq = self.next_seq.max(e.seq + 1);
        let state = self.states.entry(e.alert_id.clone()).or_insert_with(|| AlertState {
            firing: false,
            max_fired: 0.0,
            last: e.clone(),
        });
        if e.state == "firing" {
            state.max_fired =
                if state.firing { state.max_fired.max(e.threshold.unwrap_or(0.0)) } else { e.threshold.unwrap_or(0.0) };
            state.firing = true;
        } else {
            state.firing = false;
            state.max_fired = 0.0;
        }
        state.last = e.clone();
        self.events.push(e);
    }

    /// Every event so far, oldest first.
    pub fn events(&self) -> &[Arc<AlertEvent>] {
        &self.events
    }

    /// The sequence number of the last event (0 when none).
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// The latest event of each alert, most recent first; `firing_only` keeps alerts that are firing.
    pub fn alerts(&self, firing_only: bool) -> Vec<Arc<AlertEvent>> {
        let mut out: Vec<_> =
            self.states.values().filter(|s| s.firing || !firing_only).map(|s| s.last.clone()).collect();
        out.sort_by_key(|e| std::cmp::Reverse(e.seq));
        out
    }

    /// Compares each budget's status with the alerts' states and records the transitions. Returns the new
    /// events (already durable in the log).
    pub fn evaluate(
        &mut self,
        budgets: &[(&Budget, BudgetStatus)],
        now: DateTime<Utc>,
    ) -> Result<Vec<Arc<AlertEvent>>, CostError> {
        let mut drafts: Vec<AlertEvent> = Vec::new();
        let current: BTreeMap<&str, (&Budget, &BudgetStatus)> =
            budgets.iter().map(|(b, s)| (b.config.name.as_str(), (*b, s))).collect();

        for (budget, status) in budgets {
            let levels = budget.levels();
            let base = format!("{}/{}", status.name, status.period_key);
            let budget_subject = Subject {
                id: &base,
                scope: None,
                utilization: status.figures.utilization,
                spend: status.figures.spend_usd,
            };
            self.threshold(&mut drafts, &budget_subject, levels, status, now);
            let mut scoped = BTreeSet::new();
            for s in &status.sessions {
                let id = format!("{base}/session={}", s.session_id);
                let session = Subject {
                    id: &id,
                    scope: Some(s.session_id.as_str()),
                    utilization: s.utilization,
                    spend: s.spend_usd,
                };
                self.threshold(&mut drafts, &session, levels, status, now);
                scoped.insert(id);
            }
            // Sessions that dropped out of the list (rolling window) resolve like any other alert.
            if status.kind == BudgetKind::SessionCost {
                let prefix = format!("{base}/session=");
                let lowest = levels.first().copied().unwrap_or(1.0);
                for (id, st) in &self.states {
                    if st.firing && id.starts_with(&prefix) && !scoped.contains(id) {
                        let reason = "the session's spend left the window".to_string();
                        drafts.push(resolved(&st.last, status, now, lowest, reason));
                    }
                }
            }
            self.forecast(&mut drafts, budget, &base, status, now);
        }
        // Alerts of ended periods and removed budgets.
        for (id, st) in &self.states {
            if !st.firing || drafts.iter().any(|d| &d.alert_id == id) {
                continue;
            }
            let last = &st.last;
            match current.get(last.budget.as_str()) {
                None => drafts.push(resolved_plain(last, now, "the budget was removed from the config")),
                Some((_, status)) if status.period_key != last.period_key => {
                    drafts.push(resolved_plain(last, now, &format!("period {} ended", last.period_key)))
                }
                _ => {}
            }
        }
        self.record(drafts)
    }

    /// Fires `subject`'s alert at the highest threshold its use crossed (again only for a higher one), or resolves
    /// it once its use is back under the lowest by the resolve margin.
    fn threshold(
        &self,
        drafts: &mut Vec<AlertEvent>,
        subject: &Subject<'_>,
        levels: &[f64],
        status: &BudgetStatus,
        now: DateTime<Utc>,
    ) {
        let Subject { id, utilization, spend, .. } = *subject;
        let state = self.states.get(id).filter(|s| s.firing);
        let top = levels
            .iter()
            .copied()
            .filter(|l| utilization >= *l)
            .fold(None, |m: Option<f64>, l| Some(m.map_or(l, |m| m.max(l))));
        match (top, state) {
            (Some(top), None) => drafts.push(fired(subject, status, top, now)),
            (Some(top), Some(st)) if top > st.max_fired => drafts.push(fired(subject, status, top, now)),
            (None, Some(st)) => {
                let lowest = levels.first().copied().unwrap_or(1.0);
                if utilization < lowest * RESOLVE_MARGIN {
                    let reason = format!("back to {}", scoped(status, utilization, spend).summary());
                    drafts.push(resolved(&st.last, status, now, utilization, reason));
                }
            }
            _ => {}
        }
    }

    fn forecast(
        &self,
        drafts: &mut Vec<AlertEvent>,
        budget: &Budget,
        base: &str,
        status: &BudgetStatus,
        now: DateTime<Utc>,
    ) {
        if !budget.config.forecast || status.figures.utilization >= 1.0 {
            return;
        }
        let (Some(pu), Some(end)) = (status.projected_utilization, status.period_end) else {
            return;
        };
        let id = format!("{base}/forecast");
        if pu < 1.0 || self.states.contains_key(&id) {
            return; // one forecast per period
        }
        let figures = status.figures;
        let Some(projection) = figures.projected_summary() else { return };
        let message = format!(
            "{} projected to reach {projection} by {}; {} so far this {}",
            status.name,
            last_day(end),
            figures.summary(),
            status.period
        );
        let subject =
            Subject { id: &id, scope: None, utilization: status.figures.utilization, spend: status.figures.spend_usd };
        let verdict = Verdict { severity: "warning", event: "forecast", threshold: None };
        let mut e = draft(&subject, status, now, verdict, message);
        e.figures.projected_usd = status.figures.projected_usd;
        e.figures.projected_share = status.figures.projected_share;
        drafts.push(e);
    }

    fn record(&mut self, drafts: Vec<AlertEvent>) -> Result<Vec<Arc<AlertEvent>>, CostError> {
        if drafts.is_empty() {
            return Ok(Vec::new());
        }
        let mut out = Vec::with_capacity(drafts.len());
        let mut buf = Vec::new();
        for (seq, mut e) in (self.next_seq..).zip(drafts) {
            e.seq = seq;
            serde_json::to_writer(&mut buf, &e).expect("alert events serialise");
            buf.push(b'\n');
            out.push(Arc::new(e));
        }
        let err = |detail: String| CostError::AlertState { path: self.path.clone(), detail };
        self.file.write_all(&buf).map_err(|e| err(format!("cannot append events: {e}")))?;
        self.file.sync_data().map_err(|e| err(format!("cannot fsync events: {e}")))?;
        for e in &out {
            self.apply(e.clone());
        }
        Ok(out)
    }
}

/// What an alert is about: a budget, or one session of a per-session budget, with its use and spend.
#[derive(Debug, Clone, Copy)]
struct Subject<'a> {
    id: &'a str,
    /// The session, for a session's alert.
    scope: Option<&'a str>,
    utilization: f64,
    spend: f64,
}

/// How a firing event is classed: its severity, what raised it (`threshold`, `forecast`) and the threshold crossed.
#[derive(Debug, Clone, Copy)]
struct Verdict {
    severity: &'static str,
    event: &'static str,
    threshold: Option<f64>,
}

fn fired(subject: &Subject<'_>, status: &BudgetStatus, threshold: f64, now: DateTime<Utc>) -> AlertEvent {
    let Subject { scope, utilization, spend, .. } = *subject;
    let breach = threshold >= 1.0;
    let what = match scope {
        Some(session) => format!("session {session} of {}", status.name),
        None => status.name.clone(),
    };
    let mut message = format!(
        "{} {what}: {} this {}{}",
        if breach { "BREACH" } else { "WARNING" },
        scoped(status, utilization, spend).summary(),
        status.period,
        if status.period_key == "rolling" { String::new() } else { format!(" ({})", status.period_key) },
    );
    message.push_str(&format!("; crossed the {} threshold", percent(threshold)));
    let severity = if breach { "critical" } else { "warning" };
    let verdict = Verdict { severity, event: "threshold", threshold: Some(threshold) };
    let mut e = draft(subject, status, now, verdict, message);
    e.figures.projected_usd = status.figures.projected_usd;
    e.figures.projected_share = status.figures.projected_share;
    e
}

/// The budget's figures for one alert: a session's spend and use for a session's alert, the budget's otherwise.
fn scoped(status: &BudgetStatus, utilization: f64, spend: f64) -> BudgetFigures {
    BudgetFigures { spend_usd: spend, utilization, ..status.figures }
}

fn resolved(
    last: &AlertEvent,
    status: &BudgetStatus,
    now: DateTime<Utc>,
    utilization: f64,
    reason: String,
) -> AlertEvent {
    let mut e = resolved_plain(last, now, &reason);
    e.figures.spend_usd = status.figures.spend_usd;
    e.figures.utilization = utilization;
    e.figures.share = status.figures.share;
    e
}

fn resolved_plain(last: &AlertEvent, now: DateTime<Utc>, reason: &str) -> AlertEvent {
    AlertEvent {
        seq: 0,
        time: now,
        state: "resolved".into(),
        severity: "info".into(),
        event: "resolved".into(),
        threshold: None,
        figures: BudgetFigures { projected_usd: None, projected_share: None, ..last.figures },
        message: format!("RESOLVED {}: {reason}", last.alert_id),
        ..last.clone()
    }
}

/// A firing event of `subject`, with the budget's period and figures as `status` has them.
fn draft(
    subject: &Subject<'_>,
    status: &BudgetStatus,
    now: DateTime<Utc>,
    verdict: Verdict,
    message: String,
) -> AlertEvent {
    let Subject { id, scope, utilization, spend } = *subject;
    let Verdict { severity, event, threshold } = verdict;
    AlertEvent {
        seq: 0,
        time: now,
        alert_id: id.to_string(),
        budget: status.name.clone(),
        kind: status.kind,
        project: status.project.clone(),
        scope: scope.map(str::to_string),
        period: status.period.clone(),
        period_key: status.period_key.clone(),
        period_start: status.period_start,
        period_end: status.period_end,
        state: "firing".into(),
        severity: severity.into(),
        event: event.into(),
        threshold,
        figures: BudgetFigures {
            spend_usd: spend,
            utilization,
            projected_usd: None,
            projected_share: None,
            ..status.figures
        },
        message,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tailscope_core::alerts::{alerts_schema, alerts_table};
    use tailscope_core::cost::BudgetPeriod;

    use super::*;
    use crate::cost::budget::SpanColumns;
    use crate::cost::budget::tests::{Row, batch, config, ns};

    fn spend(b: &mut Budget, t: i64, usd: f64, now: i64) {
        let rows = [Row { t, egress_cost: Some(usd), cost: Some(usd), ..Default::default() }];
        b.add(&SpanColumns::from_batch(&batch(&rows)).unwrap(), now);
    }

    fn eval(book: &mut AlertBook, b: &Budget, now: i64) -> Vec<Arc<AlertEvent>> {
        let status = b.status(now);
        book.evaluate(&[(b, status)], DateTime::<Utc>::from_timestamp_nanos(now)).unwrap()
    }

    #[test]
    fn lifecycle_fires_once_per_threshold_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let now = ns("2026-11-02T12:00:00Z");
        let mut c = config("egress-monthly", BudgetKind::Egress, BudgetPeriod::Month, 100.0);
        c.forecast = false;
        let mut b = Budget::new(c, now);
        let mut book = AlertBook::open(dir.path()).unwrap();
        assert!(eval(&mut book, &b, now).is_empty());

        spend(&mut b, now, 55.0, now);
        let e = eval(&mut book, &b, now);
        assert_eq!(e.len(), 1);
        assert_eq!((e[0].severity.as_str(), e[0].threshold), ("warning", Some(0.5)));
        assert!(e[0].message.contains("$55.00 of $100.00 (55%)"), "{}", e[0].message);
        assert!(eval(&mut book, &b, now).is_empty(), "de-duplicated");

        // Jumping past two thresholds fires once, at the higher one.
        spend(&mut b, now, 50.0, now);
        let e = eval(&mut book, &b, now);
        assert_eq!(e.len(), 1);
        assert_eq!((e[0].severity.as_str(), e[0].threshold, e[0].state.as_str()), ("critical", Some(1.0), "firing"));

        // A restart replays the log: nothing fires again.
        drop(book);
        let mut book = AlertBook::open(dir.path()).unwrap();
        assert_eq!(book.events().len(), 2);
        assert!(eval(&mut book, &b, now).is_empty());
        assert_eq!(book.alerts(true).len(), 1);

        // The month ends: the alert resolves, once.
        let next = ns("2026-12-01T00:00:05Z");
        b.roll(next);
        let e = eval(&mut book, &b, next);
        assert_eq!(e.len(), 1);
        assert_eq!((e[0].event.as_str(), e[0].alert_id.as_str()), ("resolved", "egress-monthly/2026-11"));
        assert!(eval(&mut book, &b, next).is_empty());

        // The table mirrors the log.
        let table = alerts_table(dir.path(), &tailscope_core::projects::Visibility::All).unwrap();
        assert_eq!(table.num_rows(), 3);
        assert_eq!(table.schema(), alerts_schema());
    }

    #[test]
    fn rolling_alerts_resolve_when_spend_falls_and_can_fire_again() {
        let dir = tempfile::tempdir().unwrap();
        let now = ns("2026-11-02T12:00:00Z");
        let c = config("hourly", BudgetKind::Total, BudgetPeriod::Rolling(Duration::from_secs(3600)), 10.0);
        let mut b = Budget::new(c, now);
        let mut book = AlertBook::open(dir.path()).unwrap();
        spend(&mut b, now, 12.0, now);
        assert_eq!(eval(&mut book, &b, now)[0].severity, "critical");
        let later = now + 2 * 3_600_000_000_000;
        b.roll(later);
        let e = eval(&mut book, &b, later);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].state, "resolved");
        spend(&mut b, later, 6.0, later);
        let e = eval(&mut book, &b, later);
        assert_eq!((e.len(), e[0].threshold), (1, Some(0.5)), "a new episode");
    }

    #[test]
    fn forecast_fires_once_per_period() {
        let dir = tempfile::tempdir().unwrap();
        let now = ns("2026-11-16T00:00:00Z");
        let mut b = Budget::new(config("egress-monthly", BudgetKind::Egress, BudgetPeriod::Month, 500.0), now);
        for d in 1..=15 {
            spend(&mut b, ns(&format!("2026-11-{d:02}T12:00:00Z")), 320.0 / 15.0, now);
        }
        let mut book = AlertBook::open(dir.path()).unwrap();
        let e = eval(&mut book, &b, now);
        // $320 is 64%: the 50% warning, plus the projection of $640 (128%) by 30 Nov.
        assert_eq!(e.len(), 2, "{e:?}");
        let f = e.iter().find(|e| e.event == "forecast").unwrap();
        assert!(f.message.starts_with("egress-monthly projected to reach $640.00 (128%) by 30 Nov"), "{}", f.message);
        assert_eq!(f.alert_id, "egress-monthly/2026-11/forecast");
        assert!(eval(&mut book, &b, now + 3_600_000_000_000).is_empty());
    }

    /// A `duplicate_inference` budget capped at 3% of inference spend and nothing in dollars: the breach names
    /// the share against the share cap, and the event's figures read as shares (never a $0.00 cap).
    #[test]
    fn a_share_cap_breach_reads_as_a_share_in_the_event_and_message() {
        let dir = tempfile::tempdir().unwrap();
        let now = ns("2026-11-02T12:00:00Z");
        let mut c = crate::cost::budget::tests::config(
            "hedge-duplicates",
            BudgetKind::DuplicateInference,
            BudgetPeriod::Rolling(Duration::from_secs(3600)),
            1.0,
        );
        c.cap_usd = None;
        c.cap_share = Some(0.03);
        c.warn_at = vec![1.0];
        let mut b = Budget::new(c, now);
        let rows = [
            Row { t: now, cost: Some(16.14), token_cost: Some(16.14), ..Default::default() },
            Row {
                t: now,
                hedge_id: Some("h"),
                winner: Some(false),
                cost: Some(0.69),
                token_cost: Some(0.69),
                ..Default::default()
            },
        ];
        b.add(&SpanColumns::from_batch(&batch(&rows)).unwrap(), now);
        let mut book = AlertBook::open(dir.path()).unwrap();
        let e = eval(&mut book, &b, now);
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(
            e[0].message,
            "BREACH hedge-duplicates: 4.1% of inference spend against a 3% cap (137%), $0.69 spent this 1h; \
             crossed the 100% threshold"
        );
        assert_eq!((e[0].figures.cap_usd, e[0].figures.cap_share), (None, Some(0.03)));
        let f = e[0].figures;
        assert_eq!((f.used(), f.cap()), ("4.1%".to_string(), "3% of inference".to_string()));
        // The webhook's text is the message; its body carries the figures as text too.
        let body = crate::cost::webhook::payload(&e[0]);
        assert_eq!(body["text"], format!(":rotating_light: [tailscope] {}", e[0].message));
        assert_eq!((body["cap"].as_str(), body["used"].as_str()), (Some("3% of inference"), Some("4.1%")));
    }

    #[test]
    fn session_alerts_are_per_session() {
        let dir = tempfile::tempdir().unwrap();
        let now = ns("2026-11-02T12:00:00Z");
        let mut b = Budget::new(config("per-session", BudgetKind::SessionCost, BudgetPeriod::Day, 1.0), now);
        let rows = [
            Row { t: now, session: Some("s1"), cost: Some(1.5), ..Default::default() },
            Row { t: now, session: Some("s2"), cost: Some(0.6), ..Default::default() },
        ];
        b.add(&SpanColumns::from_batch(&batch(&rows)).unwrap(), now);
        let mut book = AlertBook::open(dir.path()).unwrap();
        let e = eval(&mut book, &b, now);
        let ids: BTreeSet<_> = e.iter().map(|e| e.alert_id.as_str()).collect();
        assert!(ids.contains("per-session/2026-11-02/session=s1"));
        assert!(ids.contains("per-session/2026-11-02/session=s2"));
        assert!(ids.contains("per-session/2026-11-02"));
        assert_eq!(e.iter().find(|e| e.scope.as_deref() == Some("s1")).unwrap().severity, "critical");
    }

    #[test]
    fn torn_tail_is_cut_and_removed_budgets_resolve() {
        let dir = tempfile::tempdir().unwrap();
        let now = ns("2026-11-02T12:00:00Z");
        let mut b = Budget::new(config("gone", BudgetKind::Total, BudgetPeriod::Day, 1.0), now);
        spend(&mut b, now, 2.0, now);
        let mut book = AlertBook::open(dir.path()).unwrap();
        assert_eq!(eval(&mut book, &b, now).len(), 1);
        drop(book);
        let path = dir.path().join(ALERTS_DIR).join(EVENTS_FILE);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"seq\": 2, \"ti").unwrap();
        drop(f);
        let mut book = AlertBook::open(dir.path()).unwrap();
        assert_eq!(book.events().len(), 1);
        let e = book.evaluate(&[], DateTime::<Utc>::from_timestamp_nanos(now)).unwrap();
        assert_eq!(e.len(), 1);
        assert!(e[0].message.contains("removed from the config"));
        assert_eq!(e[0].seq, 2);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2);
        assert!(text.lines().all(|l| serde_json::from_str::<AlertEvent>(l).is_ok()));
    }
}
