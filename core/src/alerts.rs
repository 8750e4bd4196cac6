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
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::{Deserialize, Serialize};

use crate::cost::BudgetKind;

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
    pub spend_usd: f64,
    pub cap_usd: Option<f64>,
    pub cap_share: Option<f64>,
    pub share: Option<f64>,
    pub utilization: f64,
    pub projected_usd: Option<f64>,
    /// One line for humans (and Slack's `text`).
    pub message: String,
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

/// The schema of the `alerts` SQL table: one row per alert event.
pub fn alerts_schema() -> SchemaRef {
    let ts = || DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("seq", DataType::Int64, false),
        Field::new("time", ts(), false),
        Field::new("alert_id", DataType::Utf8, false),
        Field::new("budget", DataType::Utf8, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("scope", DataType::Utf8, true),
        Field::new("period", DataType::Utf8, false),
        Field::new("period_key", DataType::Utf8, false),
        Field::new("period_start", ts(), false),
        Field::new("period_end", ts(), true),
        Field::new("state", DataType::Utf8, false),
        Field::new("severity", DataType::Utf8, false),
        Field::new("event", DataType::Utf8, false),
        Field::new("threshold", DataType::Float64, true),
        Field::new("spend_usd", DataType::Float64, false),
        Field::new("cap_usd", DataType::Float64, true),
        Field::new("cap_share", DataType::Float64, true),
        Field::new("share", DataType::Float64, true),
        Field::new("utilization", DataType::Float64, false),
        Field::new("projected_usd", DataType::Float64, true),
        Field::new("message", DataType::Utf8, false),
    ]))
}

/// Every alert event recorded under `data_dir`, as the `alerts` table. Reads the log afresh on each call (it
/// is small: one line per alert transition).
pub fn alerts_table(data_dir: &Path) -> Result<RecordBatch, String> {
    let path = data_dir.join(ALERTS_DIR).join(EVENTS_FILE);
    let (events, _) = read_events(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    events_batch(&events).map_err(|e| format!("cannot build the alerts table: {e}"))
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
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(events.iter().map(|e| e.seq as i64))),
        t(&|e| Some(ns(&e.time))),
        s(&|e| e.alert_id.clone()),
        s(&|e| e.budget.clone()),
        s(&|e| e.kind.to_string()),
        os(&|e| e.scope.clone()),
        s(&|e| e.period.clone()),
        s(&|e| e.period_key.clone()),
        t(&|e| Some(ns(&e.period_start))),
        t(&|e| e.period_end.as_ref().map(ns)),
        s(&|e| e.state.clone()),
        s(&|e| e.severity.clone()),
        s(&|e| e.event.clone()),
        f(&|e| e.threshold),
        f(&|e| Some(e.spend_usd)),
        f(&|e| e.cap_usd),
        f(&|e| e.cap_share),
        f(&|e| e.share),
        f(&|e| Some(e.utilization)),
        f(&|e| e.projected_usd),
        s(&|e| e.message.clone()),
    ];
    RecordBatch::try_new(alerts_schema(), columns)
}
