//! The columnar schema of tailscope's three tables, defined once.
//!
//! Every column is a variant of its table's enum ([`SpanColumn`], [`MetricColumn`], [`LogColumn`], with the
//! [`ResourceColumn`]s they share), declared on one line with its name and Arrow type; the schemas are built from
//! those lines, in that order. The normaliser (`collector`) fills its columns by matching on these enums, and
//! every other reader or writer names a column through them, so a column is renamed or added here and the
//! compiler finds every place that has to handle it. `docs/schema.md` documents every column and the OTLP field
//! or attribute it comes from (a test keeps the two equal).
//!
//! Columns are only ever appended at the end of a table: files written before a column existed lack it, and the
//! query layer reads them with the column NULL.
//!
//! The hive partition columns `date` (`YYYY-MM-DD`), `hour` (`HH`) and `project` are not stored inside the files:
//! they are the directory names (`spans/project=a/date=2026-11-21/hour=09/…`, see [`crate::layout::Partition`]),
//! and query engines add them as columns.

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
            Signal::Spans => SpanColumn::StartTime.name(),
            Signal::Metrics => MetricColumn::Time.name(),
            Signal::Logs => LogColumn::Time.name(),
        }
    }

    /// How many of this table's stored columns a file with the top-level `fields` holds: `Some(n)` when they are
    /// the first `n` columns of [`Signal::schema`], with the same names and types, as in every file tailscope
    /// wrote (one written before later columns were appended has fewer); `None` for anything else.
    pub fn stored_prefix(self, fields: &Fields) -> Option<usize> {
        let schema = self.schema();
        let stored = schema.fields();
        let matches = fields.len() <= stored.len()
            && fields.iter().zip(stored.iter()).all(|(f, s)| f.name() == s.name() && f.data_type() == s.data_type());
        matches.then_some(fields.len())
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

/// The column naming the project (tenant) a row belongs to ([`crate::projects`]): a partition column, stored as
/// the `project=` directory level, never inside the files. Rows stored before projects existed read `default`.
pub const PROJECT_COLUMN: &str = "project";

/// The hive partition columns every table gains at query time, in the order they follow the stored columns.
/// Where they are on disk is [`crate::layout::Partition`].
pub const PARTITION_COLUMNS: [&str; 3] = ["date", "hour", PROJECT_COLUMN];

/// Timestamps are nanoseconds since the epoch in UTC, as OTLP sends them.
pub fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into()))
}

/// The names of the fields inside an attribute map ([`attributes_type`]): its entries, and their keys and values.
/// A map's leaf columns in Parquet are `<column>.entries.keys` and `<column>.entries.values`.
pub const MAP_ENTRIES: &str = "entries";
/// See [`MAP_ENTRIES`].
pub const MAP_KEYS: &str = "keys";
/// See [`MAP_ENTRIES`].
pub const MAP_VALUES: &str = "values";

/// `Map<Utf8, Utf8>`: attribute key/values, every value rendered as a string (arrays and maps as JSON).
/// Queried as `attributes['http.request.method']`.
pub fn attributes_type() -> DataType {
    let entries = Field::new(
        MAP_ENTRIES,
        DataType::Struct(Fields::from(vec![
            Field::new(MAP_KEYS, DataType::Utf8, false),
            Field::new(MAP_VALUES, DataType::Utf8, true),
        ])),
        false,
    );
    DataType::Map(Arc::new(entries), false)
}

/// The Arrow types of the stored columns, by the short names the column lists below use.
macro_rules! column_type {
    (Timestamp) => {
        $crate::schema::timestamp_type()
    };
    (Attributes) => {
        $crate::schema::attributes_type()
    };
    ($primitive:ident) => {
        datafusion::arrow::datatypes::DataType::$primitive
    };
}

/// Whether a column may hold NULL: `nullable` in a column list, or nothing for a column that never does.
macro_rules! column_nullable {
    () => {
        false
    };
    (nullable) => {
        true
    };
}

/// Declares the columns of one table once: an enum with a variant per column, its stored order (`ALL`), each
/// column's name and Arrow type, and the [`TableColumn`] implementation. One line per column:
///
/// ```text
/// Variant = "sql_name": ArrowType;             // never NULL
/// Variant = "sql_name": ArrowType, nullable;
/// ```
///
/// `ArrowType` is a `DataType` variant without fields (`Utf8`, `Int64`, `Boolean`, …), or `Timestamp` or
/// `Attributes` ([`timestamp_type`], [`attributes_type`]). In the tables of the three signals, the line
/// `..Resource;` places the [`ResourceColumn`]s there, as the variant `Resource(ResourceColumn)`.
///
/// The enum is generated from the same lines as `ALL`, so `ALL` holds every variant exactly once, in the order
/// written, and the files on disk follow that order: a new column goes at the end of its table (files written
/// before it lack it, and queries read them with the column NULL).
macro_rules! columns {
    (
        $(#[$meta:meta])*
        pub enum $Enum:ident {
            $( $Before:ident = $before:literal : $bty:ident $(, $bnull:ident)?; )*
            ..Resource;
            $( $After:ident = $after:literal : $aty:ident $(, $anull:ident)?; )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $Enum {
            $( $Before, )*
            /// One of the resource columns every signal has.
            Resource($crate::schema::ResourceColumn),
            $( $After, )*
        }

        impl $Enum {
            /// Every column, in stored order.
            pub const ALL: &'static [$Enum] = &{
                use $crate::schema::ResourceColumn;
                const BEFORE: &[$Enum] = &[$($Enum::$Before),*];
                const AFTER: &[$Enum] = &[$($Enum::$After),*];
                const N: usize = BEFORE.len() + ResourceColumn::ALL.len() + AFTER.len();
                let mut all = [$Enum::Resource(ResourceColumn::ALL[0]); N];
                let mut i = 0;
                while i < N {
                    all[i] = if i < BEFORE.len() {
                        BEFORE[i]
                    } else if i < BEFORE.len() + ResourceColumn::ALL.len() {
                        $Enum::Resource(ResourceColumn::ALL[i - BEFORE.len()])
                    } else {
                        AFTER[i - BEFORE.len() - ResourceColumn::ALL.len()]
                    };
                    i += 1;
                }
                all
            };

            /// The column's name in the files and in SQL.
            pub const fn name(self) -> &'static str {
                match self {
                    $( $Enum::$Before => $before, )*
                    $Enum::Resource(c) => c.name(),
                    $( $Enum::$After => $after, )*
                }
            }

            /// The column's Arrow field: name, type and nullability.
            pub fn field(self) -> datafusion::arrow::datatypes::Field {
                let (data_type, nullable) = match self {
                    $( $Enum::$Before => (
                        $crate::schema::column_type!($bty),
                        $crate::schema::column_nullable!($($bnull)?),
                    ), )*
                    $Enum::Resource(c) => return c.field(),
                    $( $Enum::$After => (
                        $crate::schema::column_type!($aty),
                        $crate::schema::column_nullable!($($anull)?),
                    ), )*
                };
                datafusion::arrow::datatypes::Field::new(self.name(), data_type, nullable)
            }
        }

        $crate::schema::columns!(@table $Enum);
    };
    (
        $(#[$meta:meta])*
        pub enum $Enum:ident {
            $( $Variant:ident = $name:literal : $ty:ident $(, $null:ident)?; )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $Enum {
            $( $Variant, )*
        }

        impl $Enum {
            /// Every column, in stored order.
            pub const ALL: &'static [$Enum] = &[$($Enum::$Variant),*];

            /// The column's name in the files and in SQL.
            pub const fn name(self) -> &'static str {
                match self {
                    $( $Enum::$Variant => $name, )*
                }
            }

            /// The column's Arrow field: name, type and nullability.
            pub fn field(self) -> datafusion::arrow::datatypes::Field {
                let (data_type, nullable) = match self {
                    $( $Enum::$Variant => (
                        $crate::schema::column_type!($ty),
                        $crate::schema::column_nullable!($($null)?),
                    ), )*
                };
                datafusion::arrow::datatypes::Field::new(self.name(), data_type, nullable)
            }
        }

        $crate::schema::columns!(@table $Enum);
    };
    (@table $Enum:ident) => {
        impl $Enum {
            /// This column of `batch`, found by name (a batch read back may hold a projection, or an older layout).
            pub fn of(
                self,
                batch: &datafusion::arrow::array::RecordBatch,
            ) -> Option<&datafusion::arrow::array::ArrayRef> {
                batch.column_by_name(self.name())
            }
        }

        impl $crate::schema::TableColumn for $Enum {
            const ALL: &'static [$Enum] = $Enum::ALL;

            fn name(self) -> &'static str {
                $Enum::name(self)
            }

            fn field(self) -> datafusion::arrow::datatypes::Field {
                $Enum::field(self)
            }
        }

        impl std::fmt::Display for $Enum {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}
pub(crate) use {column_nullable, column_type, columns};

/// A column of a table, declared with its name and Arrow type in one place (`columns!`): [`SpanColumn`],
/// [`MetricColumn`], [`LogColumn`], [`ResourceColumn`] (shared by those three) and
/// [`crate::alerts::AlertColumn`]. Code that reads or writes a column names it through these enums, never as a
/// string, so renaming or adding a column is an edit here that the compiler walks through the rest.
pub trait TableColumn: Copy + Eq + std::hash::Hash + std::fmt::Debug + Send + Sync + 'static {
    /// Every column, in stored order.
    const ALL: &'static [Self];

    /// The column's name in the files and in SQL.
    fn name(self) -> &'static str;

    /// The column's Arrow field.
    fn field(self) -> Field;

    /// The table's schema: every column's field, in stored order.
    fn schema() -> Schema {
        Schema::new(Self::ALL.iter().map(|c| c.field()).collect::<Vec<_>>())
    }
}

columns! {
    /// The resource (and instrumentation scope) columns every signal's table has: [`SpanColumn::Resource`],
    /// [`MetricColumn::Resource`], [`LogColumn::Resource`].
    pub enum ResourceColumn {
        ServiceName = "service_name": Utf8;
        ServiceVersion = "service_version": Utf8, nullable;
        ServiceNamespace = "service_namespace": Utf8, nullable;
        DeploymentEnvironment = "deployment_environment": Utf8, nullable;
        CloudProvider = "cloud_provider": Utf8, nullable;
        CloudRegion = "cloud_region": Utf8, nullable;
        CloudAvailabilityZone = "cloud_availability_zone": Utf8, nullable;
        ResourceAttributes = "resource_attributes": Attributes;
        ScopeName = "scope_name": Utf8, nullable;
        ScopeVersion = "scope_version": Utf8, nullable;
    }
}

columns! {
    /// The columns of the `spans` table, in stored order (`docs/schema.md` says where each comes from).
    pub enum SpanColumn {
        TraceId = "trace_id": Utf8;
        SpanId = "span_id": Utf8;
        ParentSpanId = "parent_span_id": Utf8, nullable;
        TraceState = "trace_state": Utf8, nullable;
        Name = "name": Utf8;
        Kind = "kind": Utf8;
        StartTime = "start_time": Timestamp;
        EndTime = "end_time": Timestamp;
        DurationNs = "duration_ns": Int64;
        StatusCode = "status_code": Utf8;
        StatusMessage = "status_message": Utf8, nullable;
        ..Resource;
        PeerCloudProvider = "peer_cloud_provider": Utf8, nullable;
        PeerCloudRegion = "peer_cloud_region": Utf8, nullable;
        GenAiProvider = "gen_ai_provider": Utf8, nullable;
        GenAiOperation = "gen_ai_operation": Utf8, nullable;
        RequestModel = "request_model": Utf8, nullable;
        ResponseModel = "response_model": Utf8, nullable;
        InputTokens = "input_tokens": Int64, nullable;
        OutputTokens = "output_tokens": Int64, nullable;
        CacheReadTokens = "cache_read_tokens": Int64, nullable;
        CacheCreationTokens = "cache_creation_tokens": Int64, nullable;
        ReasoningTokens = "reasoning_tokens": Int64, nullable;
        SessionId = "session_id": Utf8, nullable;
        AgentName = "agent_name": Utf8, nullable;
        AgentId = "agent_id": Utf8, nullable;
        ToolName = "tool_name": Utf8, nullable;
        ErrorType = "error_type": Utf8, nullable;
        TimeToFirstTokenMs = "time_to_first_token_ms": Float64, nullable;
        TokenCostUsd = "token_cost_usd": Float64, nullable;
        EgressBytes = "egress_bytes": Int64, nullable;
        EgressCostUsd = "egress_cost_usd": Float64, nullable;
        CostUsd = "cost_usd": Float64, nullable;
        PriceSource = "price_source": Utf8, nullable;
        HedgeId = "hedge_id": Utf8, nullable;
        HedgeWinner = "hedge_winner": Boolean, nullable;
        Attributes = "attributes": Attributes;
        Events = "events": Utf8, nullable;
        Links = "links": Utf8, nullable;
        ServerAddress = "server_address": Utf8, nullable;
    }
}

columns! {
    /// The columns of the `metrics` table, in stored order.
    pub enum MetricColumn {
        Time = "time": Timestamp;
        StartTime = "start_time": Timestamp, nullable;
        MetricName = "metric_name": Utf8;
        MetricDescription = "metric_description": Utf8, nullable;
        MetricUnit = "metric_unit": Utf8, nullable;
        MetricType = "metric_type": Utf8;
        IsMonotonic = "is_monotonic": Boolean, nullable;
        AggregationTemporality = "aggregation_temporality": Utf8, nullable;
        Value = "value": Float64, nullable;
        Count = "count": Int64, nullable;
        Sum = "sum": Float64, nullable;
        Min = "min": Float64, nullable;
        Max = "max": Float64, nullable;
        Buckets = "buckets": Utf8, nullable;
        Attributes = "attributes": Attributes;
        ..Resource;
    }
}

columns! {
    /// The columns of the `logs` table, in stored order.
    pub enum LogColumn {
        Time = "time": Timestamp;
        ObservedTime = "observed_time": Timestamp, nullable;
        SeverityNumber = "severity_number": Int32, nullable;
        SeverityText = "severity_text": Utf8, nullable;
        Body = "body": Utf8, nullable;
        TraceId = "trace_id": Utf8, nullable;
        SpanId = "span_id": Utf8, nullable;
        EventName = "event_name": Utf8, nullable;
        Attributes = "attributes": Attributes;
        ..Resource;
    }
}

/// The columns of one signal's table.
pub trait SignalColumn: TableColumn {
    /// The signal whose table these are the columns of; its [`Signal::schema`] is [`TableColumn::schema`], built once.
    const SIGNAL: Signal;
}

impl SignalColumn for SpanColumn {
    const SIGNAL: Signal = Signal::Spans;
}

impl SignalColumn for MetricColumn {
    const SIGNAL: Signal = Signal::Metrics;
}

impl SignalColumn for LogColumn {
    const SIGNAL: Signal = Signal::Logs;
}

static SPANS: LazyLock<SchemaRef> = LazyLock::new(|| Arc::new(SpanColumn::schema()));
static METRICS: LazyLock<SchemaRef> = LazyLock::new(|| Arc::new(MetricColumn::schema()));
static LOGS: LazyLock<SchemaRef> = LazyLock::new(|| Arc::new(LogColumn::schema()));

/// The `spans` table: one row per span.
pub fn spans_schema() -> SchemaRef {
    SPANS.clone()
}

/// The `metrics` table: one row per data point.
pub fn metrics_schema() -> SchemaRef {
    METRICS.clone()
}

/// The `logs` table: one row per log record.
pub fn logs_schema() -> SchemaRef {
    LOGS.clone()
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, HashSet};

    use super::*;
    use crate::alerts::AlertColumn;

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

    /// `ALL` is generated from the same lines as the enum (`columns!`), so it cannot miss a variant; this checks
    /// what the generation could still get wrong: a variant twice, the resource columns not expanded once each, and
    /// the schema not following `ALL`.
    fn all_is_the_schema<C: TableColumn>(schema: &Schema) {
        let distinct: HashSet<C> = C::ALL.iter().copied().collect();
        assert_eq!(distinct.len(), C::ALL.len(), "a column is listed twice: {:?}", C::ALL);
        let names: Vec<&str> = C::ALL.iter().map(|c| c.name()).collect();
        let fields: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, fields);
        for (c, field) in C::ALL.iter().zip(schema.fields()) {
            assert_eq!(&c.field(), field.as_ref());
        }
    }

    #[test]
    fn all_lists_every_column_once_in_stored_order() {
        all_is_the_schema::<SpanColumn>(&spans_schema());
        all_is_the_schema::<MetricColumn>(&metrics_schema());
        all_is_the_schema::<LogColumn>(&logs_schema());
        all_is_the_schema::<AlertColumn>(&crate::alerts::alerts_schema());
        all_is_the_schema::<ResourceColumn>(&ResourceColumn::schema());
    }

    /// The files on disk follow the stored order, so it may only grow at the end: the columns of the files written
    /// so far, in their order, begin every table (a column appended later does not change this test).
    #[test]
    fn the_stored_order_only_grows_at_the_end() {
        let resource = [
            "service_name",
            "service_version",
            "service_namespace",
            "deployment_environment",
            "cloud_provider",
            "cloud_region",
            "cloud_availability_zone",
            "resource_attributes",
            "scope_name",
            "scope_version",
        ];
        let spans = [
            &["trace_id", "span_id", "parent_span_id", "trace_state", "name", "kind", "start_time", "end_time"][..],
            &["duration_ns", "status_code", "status_message"],
            &resource,
            &["peer_cloud_provider", "peer_cloud_region", "gen_ai_provider", "gen_ai_operation", "request_model"],
            &["response_model", "input_tokens", "output_tokens", "cache_read_tokens", "cache_creation_tokens"],
            &["reasoning_tokens", "session_id", "agent_name", "agent_id", "tool_name", "error_type"],
            &["time_to_first_token_ms", "token_cost_usd", "egress_bytes", "egress_cost_usd", "cost_usd"],
            &["price_source", "hedge_id", "hedge_winner", "attributes", "events", "links"],
        ];
        let metrics = [
            &["time", "start_time", "metric_name", "metric_description", "metric_unit", "metric_type"][..],
            &["is_monotonic", "aggregation_temporality", "value", "count", "sum", "min", "max", "buckets"],
            &["attributes"],
            &resource,
        ];
        let logs = [
            &["time", "observed_time", "severity_number", "severity_text", "body", "trace_id", "span_id"][..],
            &["event_name", "attributes"],
            &resource,
        ];
        for (signal, written) in [(Signal::Spans, &spans[..]), (Signal::Metrics, &metrics), (Signal::Logs, &logs)] {
            let written: Vec<&str> = written.concat();
            let schema = signal.schema();
            let now: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
            assert!(
                now.starts_with(&written),
                "{signal}: the stored order changed: {now:?} does not begin {written:?}"
            );
            assert_eq!(signal.stored_prefix(&Fields::from(&schema.fields()[..written.len()])), Some(written.len()));
        }
        assert_eq!(Signal::Spans.stored_prefix(Signal::Logs.schema().fields()), None, "another table's file");
    }

    /// The columns one table's section of `docs/schema.md` documents: the names in backticks in the first cell of
    /// each row of its table. The row `resource columns` stands for the [`ResourceColumn`]s.
    fn documented(doc: &str, table: &str) -> BTreeSet<String> {
        let heading = format!("## `{table}`");
        let start = doc.find(&heading).unwrap_or_else(|| panic!("docs/schema.md has no section {heading:?}"));
        let section = &doc[start + heading.len()..];
        let section = &section[..section.find("\n## ").unwrap_or(section.len())];
        let mut names = BTreeSet::new();
        for line in section.lines().filter(|l| l.starts_with('|')) {
            let first = line.split('|').nth(1).unwrap_or_default().trim();
            if first == "column" || first.starts_with("---") {
                continue;
            }
            if first == "resource columns" {
                names.extend(ResourceColumn::ALL.iter().map(|c| c.name().to_string()));
                continue;
            }
            let quoted: Vec<&str> = first.split('`').skip(1).step_by(2).collect();
            assert!(!quoted.is_empty(), "docs/schema.md, `{table}`: a row names no column in backticks: {line}");
            names.extend(quoted.into_iter().map(str::to_string));
        }
        names
    }

    fn documents_exactly<C: TableColumn>(doc: &str, table: &str) {
        let documented = documented(doc, table);
        let stored: BTreeSet<String> = C::ALL.iter().map(|c| c.name().to_string()).collect();
        let missing: Vec<_> = stored.difference(&documented).collect();
        let extra: Vec<_> = documented.difference(&stored).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "docs/schema.md, table `{table}`: columns of the schema it does not document: {missing:?}; columns it \
             documents that the schema does not have: {extra:?}"
        );
    }

    #[test]
    fn docs_document_exactly_the_stored_columns() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/schema.md");
        let doc = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        documents_exactly::<SpanColumn>(&doc, Signal::Spans.table_name());
        documents_exactly::<MetricColumn>(&doc, Signal::Metrics.table_name());
        documents_exactly::<LogColumn>(&doc, Signal::Logs.table_name());
        documents_exactly::<AlertColumn>(&doc, "alerts");
    }
}
