//! The columnar schema of tailscope's three tables, defined once.
//!
//! The writer (`collector`) and the query side (`query`) both import these definitions, so a column can only be
//! renamed in one place. `docs/schema.md` documents every column and the OTLP field or attribute it comes from.
//!
//! The hive partition columns `date` (`YYYY-MM-DD`) and `hour` (`HH`) are not stored inside the files: they are
//! the directory names (`spans/date=2026-11-21/hour=09/…`), and query engines add them as columns.

use std::sync::{Arc, LazyLock};

use datafusion::arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};

/// One of the three stored signals; each is a table and a top-level directory under the data dir.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Signal {
    /// Trace spans, one row per span.
    Spans,
    /// Metric data points, one row per data point.
    Metrics,
    /// Log records, one row per record.
    Logs,
}

impl Signal {
    /// Every signal, in a fixed order.
    pub const ALL: [Signal; 3] = [Signal::Spans, Signal::Metrics, Signal::Logs];

    /// The table name in SQL and the directory name under the data dir.
    pub fn table_name(self) -> &'static str {
        match self {
            Signal::Spans => "spans",
            Signal::Metrics => "metrics",
            Signal::Logs => "logs",
        }
    }

    /// The stored schema of this signal's table (without the hive columns).
    pub fn schema(self) -> SchemaRef {
        match self {
            Signal::Spans => spans_schema(),
            Signal::Metrics => metrics_schema(),
            Signal::Logs => logs_schema(),
        }
    }

    /// The timestamp column whose value picks the row's `date=`/`hour=` partition.
    pub fn time_column(self) -> &'static str {
        match self {
            Signal::Spans => "start_time",
            Signal::Metrics | Signal::Logs => "time",
        }
    }

    /// A one-byte tag used in WAL records.
    pub fn tag(self) -> u8 {
        match self {
            Signal::Spans => 1,
            Signal::Metrics => 2,
            Signal::Logs => 3,
        }
    }

    /// The inverse of [`Signal::tag`].
    pub fn from_tag(tag: u8) -> Option<Signal> {
        match tag {
            1 => Some(Signal::Spans),
            2 => Some(Signal::Metrics),
            3 => Some(Signal::Logs),
            _ => None,
        }
    }
}

impl std::fmt::Display for Signal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.table_name())
    }
}

/// The hive partition columns every table gains at query time.
pub const PARTITION_COLUMNS: [&str; 2] = ["date", "hour"];

/// Timestamps are nanoseconds since the epoch in UTC, as OTLP sends them.
pub fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into()))
}

/// `Map<Utf8, Utf8>`: attribute key/values, every value rendered as a string (arrays and maps as JSON).
/// Queried as `attributes['http.request.method']`.
pub fn attributes_type() -> DataType {
    let entries = Field::new(
        "entries",
        DataType::Struct(Fields::from(vec![
            Field::new("keys", DataType::Utf8, false),
            Field::new("values", DataType::Utf8, true),
        ])),
        false,
    );
    DataType::Map(Arc::new(entries), false)
}

fn utf8(name: &str, nullable: bool) -> Field {
    Field::new(name, DataType::Utf8, nullable)
}
fn i64f(name: &str) -> Field {
    Field::new(name, DataType::Int64, true)
}
fn f64f(name: &str) -> Field {
    Field::new(name, DataType::Float64, true)
}
fn ts(name: &str, nullable: bool) -> Field {
    Field::new(name, timestamp_type(), nullable)
}
fn attrs(name: &str) -> Field {
    Field::new(name, attributes_type(), false)
}

/// The resource columns shared by all three tables, in order.
fn resource_fields() -> Vec<Field> {
    vec![
        utf8("service_name", false),
        utf8("service_version", true),
        utf8("service_namespace", true),
        utf8("deployment_environment", true),
        utf8("cloud_provider", true),
        utf8("cloud_region", true),
        utf8("cloud_availability_zone", true),
        attrs("resource_attributes"),
        utf8("scope_name", true),
        utf8("scope_version", true),
    ]
}

static SPANS: LazyLock<SchemaRef> = LazyLock::new(|| {
    let mut fields = vec![
        utf8("trace_id", false),
        utf8("span_id", false),
        utf8("parent_span_id", true),
        utf8("trace_state", true),
        utf8("name", false),
        utf8("kind", false),
        ts("start_time", false),
        ts("end_time", false),
        Field::new("duration_ns", DataType::Int64, false),
        utf8("status_code", false),
        utf8("status_message", true),
    ];
    fields.extend(resource_fields());
    fields.extend([
        utf8("peer_cloud_provider", true),
        utf8("peer_cloud_region", true),
        utf8("gen_ai_provider", true),
        utf8("gen_ai_operation", true),
        utf8("request_model", true),
        utf8("response_model", true),
        i64f("input_tokens"),
        i64f("output_tokens"),
        i64f("cache_read_tokens"),
        i64f("cache_creation_tokens"),
        i64f("reasoning_tokens"),
        utf8("session_id", true),
        utf8("agent_name", true),
        utf8("agent_id", true),
        utf8("tool_name", true),
        utf8("error_type", true),
        f64f("time_to_first_token_ms"),
        f64f("token_cost_usd"),
        i64f("egress_bytes"),
        f64f("egress_cost_usd"),
        f64f("cost_usd"),
        utf8("price_source", true),
        utf8("hedge_id", true),
        Field::new("hedge_winner", DataType::Boolean, true),
        attrs("attributes"),
        utf8("events", true),
        utf8("links", true),
    ]);
    Arc::new(Schema::new(fields))
});

/// The `spans` table: one row per span.
pub fn spans_schema() -> SchemaRef {
    SPANS.clone()
}

static METRICS: LazyLock<SchemaRef> = LazyLock::new(|| {
    let mut fields = vec![
        ts("time", false),
        ts("start_time", true),
        utf8("metric_name", false),
        utf8("metric_description", true),
        utf8("metric_unit", true),
        utf8("metric_type", false),
        Field::new("is_monotonic", DataType::Boolean, true),
        utf8("aggregation_temporality", true),
        f64f("value"),
        i64f("count"),
        f64f("sum"),
        f64f("min"),
        f64f("max"),
        utf8("buckets", true),
        attrs("attributes"),
    ];
    fields.extend(resource_fields());
    Arc::new(Schema::new(fields))
});

/// The `metrics` table: one row per data point.
pub fn metrics_schema() -> SchemaRef {
    METRICS.clone()
}

static LOGS: LazyLock<SchemaRef> = LazyLock::new(|| {
    let mut fields = vec![
        ts("time", false),
        ts("observed_time", true),
        Field::new("severity_number", DataType::Int32, true),
        utf8("severity_text", true),
        utf8("body", true),
        utf8("trace_id", true),
        utf8("span_id", true),
        utf8("event_name", true),
        attrs("attributes"),
    ];
    fields.extend(resource_fields());
    Arc::new(Schema::new(fields))
});

/// The `logs` table: one row per log record.
pub fn logs_schema() -> SchemaRef {
    LOGS.clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn column_names_are_unique_and_partition_free() {
        for signal in Signal::ALL {
            let schema = signal.schema();
            let mut names: Vec<_> = schema.fields().iter().map(|f| f.name().clone()).collect();
            let n = names.len();
            names.sort();
            names.dedup();
            assert_eq!(n, names.len(), "{signal} has a duplicate column");
            for p in PARTITION_COLUMNS {
                assert!(schema.field_with_name(p).is_err(), "{signal} stores partition column {p}");
            }
            assert!(schema.field_with_name(signal.time_column()).is_ok());
            assert_eq!(Signal::from_tag(signal.tag()), Some(signal));
        }
    }
}
