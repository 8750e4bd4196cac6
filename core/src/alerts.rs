//! The alert events a collector records, and the `alerts` SQL table that shows them.
//!
//! Budgets raise and resolve alerts in the collector (`collector::cost::alerts`, which owns the lifecycle); every
//! transition is an [`AlertEvent`] appended to `DATA/alerts/events.jsonl` (one JSON object per line, fsynced)
//! before anything else sees it. The query engine reads that log as the `alerts` table ([`alerts_table`]), so a
//! query sees alerts raised a moment ago, from a running collector or from a data dir alone.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use datafusion::arrow::array::{
    ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray, TimestampNanosecondArray,
};
use datafusion::arrow::datatypes::SchemaRef;
use serde::{Deserialize, Serialize};

use crate::cost::{BudgetFigures, BudgetKind};
use crate::schema::TableColumn;

/// The directory under the data dir that holds alert state.
pub const ALERTS_DIR: &str = "alerts";
/// The event log inside [`ALERTS_DIR`].
pub const EVENTS_FILE: &str = "events.jsonl";

/// One alert transition: it fired (at a threshold or on a forecast) or it resolved.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AlertEvent {
    /// Position in the event log, from 1.
    pub seq: u64,
    pub time: DateTime<Utc>,
    /// `budget/period_key[/session=<id>|/forecast]`.
    pub alert_id: String,
    pub budget: String,
    pub kind: BudgetKind,
    /// The session for a `session_cost` budget.
    pub scope: Option<String>,
    /// `day`, `month` or the rolling window.
    pub period: String,
    pub period_key: String,
    pub period_start: DateTime<Utc>,
    pub period_end: Option<DateTime<Utc>>,
    /// `firing` or `resolved`: the alert's state after this event.
    pub state: String,
    /// `warning`, `critical` (a breach) or `info` (resolved).
    pub severity: String,
    /// `threshold`, `forecast` or `resolved`.
    pub event: String,
    /// The threshold crossed (fraction of the cap).
    pub threshold: Option<f64>,
    /// The budget's figures at the event, in the units of its caps.
    #[serde(flatten)]
    pub figures: BudgetFigures,
    /// One line for humans (and Slack's `text`).
    pub message: String,
    /// The project of the budget (`crate::projects`); none for a budget over every project. Only keys of the
    /// project (and admin keys) see the event; events logged before projects existed have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
}

/// An event as `/api/v1/alerts` lists it and webhooks POST it: its fields, then its figures as text in the units of
/// the budget's cap (the `alerts` table's columns of the same names).
#[derive(Debug, Clone, Serialize)]
pub struct AlertView<'a> {
    #[serde(flatten)]
    pub event: &'a AlertEvent,
    /// [`BudgetFigures::used`]: `$410.00`, `4.1%` (of inference spend), `$0.69 · 4.1%`.
    pub used: String,
    /// [`BudgetFigures::cap`]: `$500.00`, `3% of inference`, `$5.00 · 3% of inference`.
    pub cap: String,
    /// [`BudgetFigures::projected`], when the event carries a projection.
    pub projected: Option<String>,
}

impl<'a> From<&'a AlertEvent> for AlertView<'a> {
    fn from(event: &'a AlertEvent) -> Self {
        let f = event.figures;
        AlertView { event, used: f.used(), cap: f.cap(), projected: f.projected() }
    }
}

/// Reads the events of a log and the byte length of its intact prefix (a torn last line is excluded).
pub fn read_events(path: &Path) -> std::io::Result<(Vec<AlertEvent>, u64)> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(e),
    };
    let mut reader = BufReader::new(file);
    let mut events = Vec::new();
    let mut valid = 0u64;
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line)?;
        if n == 0 || line.last() != Some(&b'\n') {
            break; // end, or a torn line
        }
        match serde_json::from_slice::<AlertEvent>(&line) {
            Ok(e) => events.push(e),
            Err(e) => tracing::warn!(path = %path.display(), offset = valid, "skipping an unreadable alert event: {e}"),
        }
        valid += n as u64;
    }
    Ok((events, valid))
}

crate::schema::columns! {
    /// The columns of the `alerts` SQL table, one row per [`AlertEvent`]; each is the event's field of that name,
    /// except `used`, `cap` and `projected`: the event's figures as text in the units of the budget's cap
    /// ([`BudgetFigures`]), computed when the table is read.
    pub enum AlertColumn {
        Seq = "seq": Int64;
        Time = "time": Timestamp;
        AlertId = "alert_id": Utf8;
        Budget = "budget": Utf8;
        Kind = "kind": Utf8;
        Scope = "scope": Utf8, nullable;
        Period = "period": Utf8;
        PeriodKey = "period_key": Utf8;
        PeriodStart = "period_start": Timestamp;
        PeriodEnd = "period_end": Timestamp, nullable;
        State = "state": Utf8;
        Severity = "severity": Utf8;
        Event = "event": Utf8;
        Threshold = "threshold": Float64, nullable;
        SpendUsd = "spend_usd": Float64;
        CapUsd = "cap_usd": Float64, nullable;
        CapShare = "cap_share": Float64, nullable;
        Share = "share": Float64, nullable;
        Utilization = "utilization": Float64;
        ProjectedUsd = "projected_usd": Float64, nullable;
        Message = "message": Utf8;
        // Added after the columns above, which keep their places.
        ProjectedShare = "projected_share": Float64, nullable;
        Used = "used": Utf8;
        Cap = "cap": Utf8;
        Projected = "projected": Utf8, nullable;
        Project = "project": Utf8, nullable;
    }
}

/// The schema of the `alerts` SQL table: one row per alert event.
pub fn alerts_schema() -> SchemaRef {
    Arc::new(AlertColumn::schema())
}

/// Every alert event recorded under `data_dir`, as the `alerts` table. Reads the log afresh on each call (it
/// is small: one line per alert transition).
///
/// `visible`: the projects the reader sees; an event of a budget over every project (or logged before projects
/// existed) is seen only by readers who see every project, since it sums other projects' spend.
pub fn alerts_table(data_dir: &Path, visible: &crate::projects::Visibility) -> Result<RecordBatch, String> {
    let path = data_dir.join(ALERTS_DIR).join(EVENTS_FILE);
    let (mut events, _) = read_events(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    events.retain(|e| event_visible(e, visible));
    events_batch(&events).map_err(|e| format!("cannot build the alerts table: {e}"))
}

/// Whether a reader who sees `visible` may see `event`: every event when it sees every project, else the events of
/// budgets of one of its projects.
pub fn event_visible(event: &AlertEvent, visible: &crate::projects::Visibility) -> bool {
    visible.is_all() || event.project.as_deref().is_some_and(|p| visible.sees(p))
}

/// Builds the `alerts` table from events.
pub fn events_batch(events: &[AlertEvent]) -> Result<RecordBatch, datafusion::arrow::error::ArrowError> {
    let ns = |t: &DateTime<Utc>| t.timestamp_nanos_opt().unwrap_or(i64::MAX);
    let s = |f: &dyn Fn(&AlertEvent) -> String| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(events.iter().map(f)))
    };
    let os = |f: &dyn Fn(&AlertEvent) -> Option<String>| -> ArrayRef {
        Arc::new(StringArray::from(events.iter().map(f).collect::<Vec<_>>()))
    };
    let f = |f: &dyn Fn(&AlertEvent) -> Option<f64>| -> ArrayRef {
        Arc::new(Float64Array::from(events.iter().map(f).collect::<Vec<_>>()))
    };
    let t = |f: &dyn Fn(&AlertEvent) -> Option<i64>| -> ArrayRef {
        Arc::new(TimestampNanosecondArray::from(events.iter().map(f).collect::<Vec<_>>()).with_timezone("UTC"))
    };
    let column = |c: AlertColumn| -> ArrayRef {
        match c {
            AlertColumn::Seq => Arc::new(Int64Array::from_iter_values(events.iter().map(|e| e.seq as i64))),
            AlertColumn::Time => t(&|e| Some(ns(&e.time))),
            AlertColumn::AlertId => s(&|e| e.alert_id.clone()),
            AlertColumn::Budget => s(&|e| e.budget.clone()),
            AlertColumn::Kind => s(&|e| e.kind.to_string()),
            AlertColumn::Scope => os(&|e| e.scope.clone()),
            AlertColumn::Period => s(&|e| e.period.clone()),
            AlertColumn::PeriodKey => s(&|e| e.period_key.clone()),
            AlertColumn::PeriodStart => t(&|e| Some(ns(&e.period_start))),
            AlertColumn::PeriodEnd => t(&|e| e.period_end.as_ref().map(ns)),
            AlertColumn::State => s(&|e| e.state.clone()),
            AlertColumn::Severity => s(&|e| e.severity.clone()),
            AlertColumn::Event => s(&|e| e.event.clone()),
            AlertColumn::Threshold => f(&|e| e.threshold),
            AlertColumn::SpendUsd => f(&|e| Some(e.figures.spend_usd)),
            AlertColumn::CapUsd => f(&|e| e.figures.cap_usd),
            AlertColumn::CapShare => f(&|e| e.figures.cap_share),
            AlertColumn::Share => f(&|e| e.figures.share),
            AlertColumn::Utilization => f(&|e| Some(e.figures.utilization)),
            AlertColumn::ProjectedUsd => f(&|e| e.figures.projected_usd),
            AlertColumn::Message => s(&|e| e.message.clone()),
            AlertColumn::ProjectedShare => f(&|e| e.figures.projected_share),
            AlertColumn::Used => s(&|e| e.figures.used()),
            AlertColumn::Cap => s(&|e| e.figures.cap()),
            AlertColumn::Projected => os(&|e| e.figures.projected()),
            AlertColumn::Project => os(&|e| e.project.clone()),
        }
    };
    let columns: Vec<ArrayRef> = AlertColumn::ALL.iter().map(|&c| column(c)).collect();
    RecordBatch::try_new(alerts_schema(), columns)
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::datatypes::Float64Type;

    use super::*;

    /// A breach of a `duplicate_inference` budget capped at 3% of inference spend (no dollar cap), as the
    /// collector records it.
    fn share_breach() -> AlertEvent {
        let t = DateTime::<Utc>::from_timestamp_nanos(1_700_000_000_000_000_000);
        AlertEvent {
            seq: 1,
            time: t,
            alert_id: "hedge-duplicates/rolling".into(),
            budget: "hedge-duplicates".into(),
            kind: BudgetKind::DuplicateInference,
            scope: None,
            period: "1h".into(),
            period_key: "rolling".into(),
            period_start: t,
            period_end: None,
            state: "firing".into(),
            severity: "critical".into(),
            event: "threshold".into(),
            threshold: Some(1.0),
            figures: BudgetFigures {
                spend_usd: 0.69,
                cap_usd: None,
                cap_share: Some(0.03),
                share: Some(0.041),
                utilization: 0.041 / 0.03,
                projected_usd: None,
                projected_share: None,
            },
            message: "BREACH hedge-duplicates".into(),
            project: None,
        }
    }

    #[test]
    fn the_table_shows_a_share_cap_in_its_unit() {
        let tiny = AlertEvent {
            seq: 2,
            budget: "tiny".into(),
            kind: BudgetKind::Total,
            figures: BudgetFigures {
                spend_usd: 4.994,
                cap_usd: Some(0.001),
                cap_share: None,
                share: None,
                utilization: 4994.0,
                projected_usd: Some(0.0012),
                ..Default::default()
            },
            ..share_breach()
        };
        let batch = events_batch(&[share_breach(), tiny]).unwrap();
        assert_eq!(batch.schema(), alerts_schema());
        let text = |name: &str, row: usize| {
            let c = batch.column_by_name(name).unwrap().as_string::<i32>();
            c.is_valid(row).then(|| c.value(row).to_string())
        };
        let number = |name: &str, row: usize| {
            let c = batch.column_by_name(name).unwrap().as_primitive::<Float64Type>();
            c.is_valid(row).then(|| c.value(row))
        };
        // The numbers as recorded: no dollar cap, the share cap and the share.
        assert_eq!((number("cap_usd", 0), number("cap_share", 0), number("share", 0)), (None, Some(0.03), Some(0.041)));
        // The text columns read in the cap's unit.
        assert_eq!(text("cap", 0).as_deref(), Some("3% of inference"));
        assert_eq!(text("used", 0).as_deref(), Some("4.1%"));
        assert_eq!(text("projected", 0), None);
        assert_eq!(text("cap", 1).as_deref(), Some("$0.001"));
        assert_eq!(text("used", 1).as_deref(), Some("$4.99"));
        assert_eq!(text("projected", 1).as_deref(), Some("$0.0012"));
        // The columns that were there before keep their places.
        let names: Vec<_> = alerts_schema().fields().iter().map(|f| f.name().clone()).collect();
        assert_eq!(
            &names[14..21],
            ["spend_usd", "cap_usd", "cap_share", "share", "utilization", "projected_usd", "message"]
        );
    }

    #[test]
    fn events_logged_before_projected_share_still_read_and_views_carry_the_text() {
        let mut json = serde_json::to_value(share_breach()).unwrap();
        json.as_object_mut().unwrap().remove("projected_share");
        let old: AlertEvent = serde_json::from_value(json).unwrap();
        assert_eq!(old, share_breach());
        let view = serde_json::to_value(AlertView::from(&old)).unwrap();
        assert_eq!(view["cap"], "3% of inference");
        assert_eq!(view["used"], "4.1%");
        assert_eq!(view["cap_share"], 0.03);
        assert!(view["cap_usd"].is_null());
    }

    /// The event log and the table name the same things the same way: each stored column is the event's field of
    /// that name.
    #[test]
    fn every_column_is_the_events_field_of_that_name() {
        let event = AlertEvent {
            seq: 1,
            time: Utc::now(),
            alert_id: "b/2026-11".into(),
            budget: "b".into(),
            kind: BudgetKind::Total,
            scope: None,
            period: "month".into(),
            period_key: "2026-11".into(),
            period_start: Utc::now(),
            period_end: None,
            state: "firing".into(),
            severity: "warning".into(),
            event: "threshold".into(),
            threshold: Some(0.5),
            figures: BudgetFigures {
                spend_usd: 1.0,
                cap_usd: Some(2.0),
                cap_share: None,
                share: None,
                utilization: 0.5,
                projected_usd: None,
                projected_share: None,
            },
            message: "m".into(),
            // Set, so that it is serialised (an event of a budget over every project has none).
            project: Some("a".into()),
        };
        let json = serde_json::to_value(&event).unwrap();
        let keys: Vec<&str> = json.as_object().unwrap().keys().map(String::as_str).collect();
        // `used`, `cap` and `projected` are computed from the event's figures, not stored.
        let computed = [AlertColumn::Used, AlertColumn::Cap, AlertColumn::Projected];
        let mut columns: Vec<&str> =
            AlertColumn::ALL.iter().filter(|c| !computed.contains(c)).map(|c| c.name()).collect();
        let mut keys = keys;
        keys.sort();
        columns.sort();
        assert_eq!(keys, columns);
        assert_eq!(events_batch(&[event]).unwrap().num_rows(), 1);
    }
}
