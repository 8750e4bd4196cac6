//! OTLP requests -> Arrow record batches in tailscope's schema ([`tailscope_core::schema`]).
//!
//! Each export request becomes one batch per signal. Attributes that have a column of their own (GenAI
//! conventions under both their current and their deprecated names, `cloud.*`, hedging, session ids) are moved
//! into that column; every other key/value stays queryable in the `attributes` / `resource_attributes` maps.
//! Items that cannot be stored (a trace id of the wrong length or all zeros, a missing start time) are rejected
//! one by one and reported back through OTLP's `partial_success`, while the rest of the request is stored.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};

use datafusion::arrow::array::{
    ArrayBuilder, ArrayRef, BooleanBuilder, Float64Builder, Int32Builder, Int64Builder, MapBuilder, MapFieldNames,
    StringBuilder, TimestampNanosecondBuilder,
};
use datafusion::arrow::record_batch::RecordBatch;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value::Value};
use opentelemetry_proto::tonic::metrics::v1::{metric::Data, number_data_point};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::{Event, Link};
use prost::Message as _;
use tailscope_core::rules::{UNPRICED, status};
use tailscope_core::schema::{
    LogColumn, MAP_ENTRIES, MAP_KEYS, MAP_VALUES, MetricColumn, ResourceColumn, Signal, SignalColumn, SpanColumn,
};

use crate::cost::{Pricer, SpanFacts};
use crate::wire::{self, SpanView, Val, WireError};

/// The outcome of normalising one request.
#[derive(Debug)]
pub struct Normalized {
    /// Which table the rows belong to.
    pub signal: Signal,
    /// The accepted rows.
    pub batch: RecordBatch,
    /// Items rejected one by one.
    pub rejected: u64,
    /// Why the first few were rejected, for `partial_success.error_message`.
    pub reject_message: String,
    /// Spans whose tokens could not be priced (unknown model).
    pub unpriced: u64,
}

impl Normalized {
    /// Items received: accepted plus rejected.
    pub fn received(&self) -> u64 {
        self.batch.num_rows() as u64 + self.rejected
    }
}

/// Collects per-item rejections into a count and a readable message (the first few reasons, then a count).
#[derive(Debug, Default)]
struct Rejections {
    count: u64,
    message: String,
}

impl Rejections {
    const SHOWN: u64 = 5;

    fn add(&mut self, what: std::fmt::Arguments<'_>) {
        self.count += 1;
        if self.count <= Self::SHOWN {
            if !self.message.is_empty() {
                self.message.push_str("; ");
            }
            let _ = self.message.write_fmt(what);
        }
    }

    /// Adds a warning that rejects nothing (OTLP's `partial_success` with no rejected items).
    fn note(&mut self, what: std::fmt::Arguments<'_>) {
        if !self.message.is_empty() {
            self.message.push_str("; ");
        }
        let _ = self.message.write_fmt(what);
    }

    fn finish(mut self) -> (u64, String) {
        if self.count > Self::SHOWN {
            let _ = write!(self.message, "; and {} more", self.count - Self::SHOWN);
        }
        (self.count, self.message)
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Attribute values

/// Renders an attribute value as the string stored in the attribute maps: scalars as themselves, bytes as hex,
/// arrays and maps as JSON.
pub fn any_value_to_string(value: &AnyValue) -> Option<String> {
    Val::of(Some(value)).map(render)
}

fn render(value: Val<'_>) -> String {
    match value {
        Val::Str(s) => s.to_string(),
        Val::Bool(b) => b.to_string(),
        Val::Int(i) => i.to_string(),
        Val::Double(d) => d.to_string(),
        Val::Bytes(b) => hex(b),
        Val::Strindex(i) => i.to_string(),
        Val::Nested(n) => any_value_to_json(&n.decode()).to_string(),
    }
}

/// An attribute value as JSON (used for arrays, maps, log bodies, events).
pub fn any_value_to_json(value: &AnyValue) -> serde_json::Value {
    use serde_json::Value as J;
    match value.value.as_ref() {
        None => J::Null,
        Some(Value::StringValue(s)) => J::String(s.clone()),
        Some(Value::BoolValue(b)) => J::Bool(*b),
        Some(Value::IntValue(i)) => J::from(*i),
        Some(Value::DoubleValue(d)) => serde_json::Number::from_f64(*d).map(J::Number).unwrap_or(J::Null),
        Some(Value::BytesValue(b)) => J::String(hex(b)),
        Some(Value::ArrayValue(a)) => J::Array(a.values.iter().map(any_value_to_json).collect()),
        Some(Value::KvlistValue(kv)) => J::Object(
            kv.values
                .iter()
                .map(|kv| (kv.key.clone(), kv.value.as_ref().map(any_value_to_json).unwrap_or(J::Null)))
                .collect(),
        ),
        // A profiles-only reference into a string table that span, metric and log payloads do not carry.
        Some(Value::StringValueStrindex(i)) => J::from(*i),
    }
}

/// Appends an attribute value to a string column without an intermediate `String` for the common scalars.
fn append_any_value(b: &mut StringBuilder, value: Option<Val<'_>>) {
    match value {
        None => b.append_null(),
        Some(Val::Str(s)) => b.append_value(s),
        Some(Val::Bool(v)) => b.append_value(if v { "true" } else { "false" }),
        Some(Val::Int(i)) => b.append_value(itoa::Buffer::new().format(i)),
        Some(Val::Double(d)) => {
            let _ = write!(b, "{d}");
            b.append_value("");
        }
        Some(v) => b.append_value(render(v)),
    }
}

/// A prost key/value as the borrowed pair the attribute helpers take.
fn pair(kv: &KeyValue) -> (&str, Option<Val<'_>>) {
    (kv.key.as_str(), Val::of(kv.value.as_ref()))
}

/// Appends one attribute map entry list and closes the row's map.
fn append_attributes<'a>(map: &mut AttrMapBuilder, attributes: impl IntoIterator<Item = (&'a str, Option<Val<'a>>)>) {
    for (key, value) in attributes {
        map.keys().append_value(key);
        append_any_value(map.values(), value);
    }
    // Appending a map entry cannot fail when keys and values were appended in pairs.
    let _ = map.append(true);
}

fn attributes_to_json(attributes: &[KeyValue]) -> serde_json::Value {
    serde_json::Value::Object(
        attributes
            .iter()
            .map(|kv| (kv.key.clone(), kv.value.as_ref().map(any_value_to_json).unwrap_or(serde_json::Value::Null)))
            .collect(),
    )
}

fn as_str(value: Option<Val<'_>>) -> Option<&str> {
    match value? {
        Val::Str(s) => Some(s),
        _ => None,
    }
}

/// An attribute as a string, converting scalars (some SDKs send ids as ints).
fn as_string(value: Option<&AnyValue>) -> Option<String> {
    value.and_then(any_value_to_string)
}

/// An integer attribute; also accepts doubles with no fraction and numeric strings, as some SDKs send those.
fn as_i64(value: Option<Val<'_>>) -> Option<i64> {
    match value? {
        Val::Int(i) => Some(i),
        Val::Double(d) if d.fract() == 0.0 && d.is_finite() => Some(d as i64),
        Val::Str(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn as_f64(value: Option<Val<'_>>) -> Option<f64> {
    match value? {
        Val::Int(i) => Some(i as f64),
        Val::Double(d) => Some(d),
        Val::Str(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn as_bool(value: Option<Val<'_>>) -> Option<bool> {
    match value? {
        Val::Bool(b) => Some(b),
        Val::Str(s) => match s {
            "true" | "True" | "TRUE" | "1" => Some(true),
            "false" | "False" | "FALSE" | "0" => Some(false),
            _ => None,
        },
        Val::Int(i) => Some(i != 0),
        _ => None,
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(HEX[(b >> 4) as usize] as char);
        out.push(HEX[(b & 0xf) as usize] as char);
    }
    out
}

// ---------------------------------------------------------------------------------------------------------------
// Resource columns, shared by the three tables

/// The resource attributes that have columns; the rest stay in `resource_attributes`.
use tailscope_core::keys::resource as resource_keys;

/// One resource (and scope), decoded once and repeated on every row it covers.
#[derive(Debug, Default, Clone)]
struct ResourceRow {
    service_name: String,
    service_version: Option<String>,
    service_namespace: Option<String>,
    deployment_environment: Option<String>,
    cloud_provider: Option<String>,
    cloud_region: Option<String>,
    cloud_availability_zone: Option<String>,
    /// Remaining attributes, already rendered.
    attributes: Vec<(String, Option<String>)>,
    scope_name: Option<String>,
    scope_version: Option<String>,
}

impl ResourceRow {
    fn new(resource: Option<&Resource>) -> ResourceRow {
        use resource_keys::*;
        let mut row = ResourceRow::default();
        let mut env_old = None;
        for kv in resource.map(|r| r.attributes.as_slice()).unwrap_or_default() {
            let v = kv.value.as_ref();
            match kv.key.as_str() {
                SERVICE_NAME => row.service_name = as_string(v).unwrap_or_default(),
                SERVICE_VERSION => row.service_version = as_string(v),
                SERVICE_NAMESPACE => row.service_namespace = as_string(v),
                DEPLOYMENT_ENVIRONMENT => row.deployment_environment = as_string(v),
                DEPLOYMENT_ENVIRONMENT_OLD => env_old = as_string(v),
                CLOUD_PROVIDER => row.cloud_provider = as_string(v),
                CLOUD_REGION => row.cloud_region = as_string(v),
                CLOUD_AZ => row.cloud_availability_zone = as_string(v),
                _ => row.attributes.push((kv.key.clone(), v.and_then(any_value_to_string))),
            }
        }
        if row.deployment_environment.is_none() {
            row.deployment_environment = env_old;
        }
        if row.service_name.is_empty() {
            // The OTel SDK specification's fallback for a missing service.name.
            row.service_name = "unknown_service".to_string();
        }
        row
    }

    /// Bytes of strings this row adds to each span it covers.
    fn bytes(&self) -> usize {
        let opt = |s: &Option<String>| s.as_ref().map_or(0, String::len);
        let columns = [
            &self.service_version,
            &self.service_namespace,
            &self.deployment_environment,
            &self.cloud_provider,
            &self.cloud_region,
            &self.cloud_availability_zone,
            &self.scope_name,
            &self.scope_version,
        ];
        self.service_name.len()
            + columns.iter().map(|s| opt(s)).sum::<usize>()
            + self.attributes.iter().map(|(k, v)| k.len() + opt(v) + 8).sum::<usize>()
    }

    fn with_scope(&self, scope: Option<&InstrumentationScope>) -> ResourceRow {
        let mut row = self.clone();
        row.scope_name = scope.map(|s| s.name.clone()).filter(|s| !s.is_empty());
        row.scope_version = scope.map(|s| s.version.clone()).filter(|s| !s.is_empty());
        row
    }
}

type AttrMapBuilder = MapBuilder<StringBuilder, StringBuilder>;

fn attr_map_builder(capacity: usize) -> AttrMapBuilder {
    map_builder(capacity, StringBuilder::new(), StringBuilder::new())
}

fn map_builder(capacity: usize, keys: StringBuilder, values: StringBuilder) -> AttrMapBuilder {
    let names = MapFieldNames { entry: MAP_ENTRIES.into(), key: MAP_KEYS.into(), value: MAP_VALUES.into() };
    MapBuilder::with_capacity(Some(names), keys, values, capacity)
}

/// How much an attribute map took per row in the last request, so that the next request's map starts at that size
/// instead of doubling its way up from 1 KiB: every doubling copies the bytes again, and the span maps hold most
/// of a request's strings (reallocation was ~5 % of ingest CPU). Requests of one deployment look alike; a stale
/// hint costs one reallocation, nothing else. Sizes are kept in 1/16ths of a row.
struct MapSizeHint {
    entries_x16: AtomicUsize,
    key_bytes_x16: AtomicUsize,
    value_bytes_x16: AtomicUsize,
}

/// The `attributes` map of spans.
static SPAN_ATTRIBUTES: MapSizeHint = MapSizeHint::new();
/// The `resource_attributes` map of spans.
static SPAN_RESOURCE_ATTRIBUTES: MapSizeHint = MapSizeHint::new();

impl MapSizeHint {
    const fn new() -> MapSizeHint {
        MapSizeHint {
            entries_x16: AtomicUsize::new(0),
            key_bytes_x16: AtomicUsize::new(0),
            value_bytes_x16: AtomicUsize::new(0),
        }
    }

    /// A map builder for `rows` rows like the last ones, with an eighth to spare, for a request of `body_bytes`.
    ///
    /// The hint is what an earlier request held, which may have been one span with a 50 MiB attribute: taken as
    /// is for a request of 1,000 spans it asked for 55 GiB and aborted the process (and the WAL replay after it).
    /// So what is reserved (offsets and strings) is capped by the request's own size, scaled down evenly when the
    /// hint asks for more. A request that does need more (values rendered longer than they were encoded,
    /// resource attributes repeated on many rows) grows its builders as it would have without a hint.
    fn builder(&self, rows: usize, body_bytes: usize) -> AttrMapBuilder {
        let hinted = |x16: &AtomicUsize| (rows.saturating_mul(x16.load(Ordering::Relaxed)) / 16).saturating_mul(9) / 8;
        let (mut entries, mut keys, mut values) =
            (hinted(&self.entries_x16), hinted(&self.key_bytes_x16), hinted(&self.value_bytes_x16));
        // Each entry takes an offset of 4 bytes in the keys and in the values.
        let total = entries.saturating_mul(8).saturating_add(keys).saturating_add(values);
        if total > body_bytes {
            let scale = |x: usize| (x as u128 * body_bytes as u128 / total as u128) as usize;
            (entries, keys, values) = (scale(entries), scale(keys), scale(values));
        }
        map_builder(
            rows,
            StringBuilder::with_capacity(entries + 64, keys + 64),
            StringBuilder::with_capacity(entries + 64, values + 64),
        )
    }

    /// Remembers what `map` holds for `rows` rows.
    fn learn(&self, map: &mut AttrMapBuilder, rows: usize) {
        if rows == 0 {
            return;
        }
        let x16 = |total: usize| total * 16 / rows;
        self.entries_x16.store(x16(map.keys().len()), Ordering::Relaxed);
        self.key_bytes_x16.store(x16(map.keys().values_slice().len()), Ordering::Relaxed);
        self.value_bytes_x16.store(x16(map.values().values_slice().len()), Ordering::Relaxed);
    }
}

/// Builders for the resource columns, finished by name ([`ResourceBuilders::finish`]).
struct ResourceBuilders {
    service_name: StringBuilder,
    service_version: StringBuilder,
    service_namespace: StringBuilder,
    deployment_environment: StringBuilder,
    cloud_provider: StringBuilder,
    cloud_region: StringBuilder,
    cloud_availability_zone: StringBuilder,
    resource_attributes: AttrMapBuilder,
    scope_name: StringBuilder,
    scope_version: StringBuilder,
}

impl ResourceBuilders {
    fn new(capacity: usize) -> Self {
        ResourceBuilders::with_attributes(capacity, attr_map_builder(capacity))
    }

    /// Builders for `capacity` rows whose `resource_attributes` go to `attributes`.
    fn with_attributes(capacity: usize, attributes: AttrMapBuilder) -> Self {
        ResourceBuilders {
            service_name: StringBuilder::with_capacity(capacity, capacity * 8),
            service_version: StringBuilder::new(),
            service_namespace: StringBuilder::new(),
            deployment_environment: StringBuilder::new(),
            cloud_provider: StringBuilder::new(),
            cloud_region: StringBuilder::new(),
            cloud_availability_zone: StringBuilder::new(),
            resource_attributes: attributes,
            scope_name: StringBuilder::new(),
            scope_version: StringBuilder::new(),
        }
    }

    fn append(&mut self, r: &ResourceRow) {
        self.service_name.append_value(&r.service_name);
        self.service_version.append_option(r.service_version.as_deref());
        self.service_namespace.append_option(r.service_namespace.as_deref());
        self.deployment_environment.append_option(r.deployment_environment.as_deref());
        self.cloud_provider.append_option(r.cloud_provider.as_deref());
        self.cloud_region.append_option(r.cloud_region.as_deref());
        self.cloud_availability_zone.append_option(r.cloud_availability_zone.as_deref());
        for (k, v) in &r.attributes {
            self.resource_attributes.keys().append_value(k);
            self.resource_attributes.values().append_option(v.as_deref());
        }
        // Appending a map entry cannot fail when keys and values were appended in pairs.
        let _ = self.resource_attributes.append(true);
        self.scope_name.append_option(r.scope_name.as_deref());
        self.scope_version.append_option(r.scope_version.as_deref());
    }

    /// The finished `column`. Each column is finished once, when its table's batch is built.
    fn finish(&mut self, column: ResourceColumn) -> ArrayRef {
        match column {
            ResourceColumn::ServiceName => self.service_name.finish_array(),
            ResourceColumn::ServiceVersion => self.service_version.finish_array(),
            ResourceColumn::ServiceNamespace => self.service_namespace.finish_array(),
            ResourceColumn::DeploymentEnvironment => self.deployment_environment.finish_array(),
            ResourceColumn::CloudProvider => self.cloud_provider.finish_array(),
            ResourceColumn::CloudRegion => self.cloud_region.finish_array(),
            ResourceColumn::CloudAvailabilityZone => self.cloud_availability_zone.finish_array(),
            ResourceColumn::ResourceAttributes => self.resource_attributes.finish_array(),
            ResourceColumn::ScopeName => self.scope_name.finish_array(),
            ResourceColumn::ScopeVersion => self.scope_version.finish_array(),
        }
    }
}

/// A builder's array as a column (`ArrayBuilder::finish`, which the builders' own `finish` hides).
trait FinishArray {
    fn finish_array(&mut self) -> ArrayRef;
}

impl<B: ArrayBuilder> FinishArray for B {
    fn finish_array(&mut self) -> ArrayRef {
        ArrayBuilder::finish(self)
    }
}

/// One signal's batch, each column finished by `column`, which is asked for them by name in the schema's order: the
/// order of the columns is the schema's business alone, and a column added to it does not compile until `column`
/// (an exhaustive `match` over the table's column enum) builds it.
fn build_batch<C: SignalColumn>(column: impl FnMut(C) -> ArrayRef) -> RecordBatch {
    let columns: Vec<ArrayRef> = C::ALL.iter().copied().map(column).collect();
    // Every column exists by name; what the compiler cannot see is a builder of another type than the schema's, or
    // a row appended to some builders and not others. That is a programming error, which every normaliser test
    // (and every request) would hit, never something input can cause.
    RecordBatch::try_new(C::SIGNAL.schema(), columns).expect("normaliser columns match the schema")
}

// ---------------------------------------------------------------------------------------------------------------
// Spans

/// Span attributes with a column of their own (defined in core, where the simulator that writes them finds them too).
use tailscope_core::keys::span as span_keys;

/// The attributes of one span that feed columns, borrowed from the request.
#[derive(Default)]
struct SpanAttrs<'a> {
    provider: Option<Val<'a>>,
    system: Option<Val<'a>>,
    operation: Option<Val<'a>>,
    request_model: Option<Val<'a>>,
    response_model: Option<Val<'a>>,
    input_tokens: Option<Val<'a>>,
    prompt_tokens: Option<Val<'a>>,
    output_tokens: Option<Val<'a>>,
    completion_tokens: Option<Val<'a>>,
    cache_read: [Option<Val<'a>>; 3],
    cache_creation: [Option<Val<'a>>; 3],
    reasoning: [Option<Val<'a>>; 3],
    conversation_id: Option<Val<'a>>,
    session_id: Option<Val<'a>>,
    agent_name: Option<Val<'a>>,
    agent_id: Option<Val<'a>>,
    tool_name: Option<Val<'a>>,
    error_type: Option<Val<'a>>,
    ttfc: Option<Val<'a>>,
    ttft: Option<Val<'a>>,
    peer_provider: Option<Val<'a>>,
    peer_region: Option<Val<'a>>,
    hedge_id: Option<Val<'a>>,
    hedge_winner: Option<Val<'a>>,
    request_bytes: Option<Val<'a>>,
    response_bytes: Option<Val<'a>>,
    egress_bytes: Option<Val<'a>>,
    server_address: Option<Val<'a>>,
    service_tier: [Option<Val<'a>>; 4],
    cache_creation_1h: Option<Val<'a>>,
}

fn first_of(values: &[Option<Val<'_>>]) -> Option<i64> {
    values.iter().find_map(|v| as_i64(*v))
}

impl<'a> SpanAttrs<'a> {
    /// Sorts a span's attributes into columns; returns the attributes that stay in the map.
    fn split(attributes: &[(&'a str, Option<Val<'a>>)], rest: &mut Vec<(&'a str, Option<Val<'a>>)>) -> SpanAttrs<'a> {
        use span_keys::*;
        let mut a = SpanAttrs::default();
        for &(key, v) in attributes {
            let kv = (key, v);
            let slot = match key {
                GEN_AI_PROVIDER => &mut a.provider,
                GEN_AI_SYSTEM => &mut a.system,
                GEN_AI_OPERATION => &mut a.operation,
                REQUEST_MODEL => &mut a.request_model,
                RESPONSE_MODEL => &mut a.response_model,
                INPUT_TOKENS => &mut a.input_tokens,
                PROMPT_TOKENS => &mut a.prompt_tokens,
                OUTPUT_TOKENS => &mut a.output_tokens,
                COMPLETION_TOKENS => &mut a.completion_tokens,
                CONVERSATION_ID => &mut a.conversation_id,
                SESSION_ID => &mut a.session_id,
                AGENT_NAME => &mut a.agent_name,
                AGENT_ID => &mut a.agent_id,
                TOOL_NAME => &mut a.tool_name,
                ERROR_TYPE => &mut a.error_type,
                TIME_TO_FIRST_CHUNK => &mut a.ttfc,
                TIME_TO_FIRST_TOKEN => &mut a.ttft,
                PEER_CLOUD_PROVIDER => &mut a.peer_provider,
                PEER_CLOUD_REGION => &mut a.peer_region,
                HEDGE_ID => &mut a.hedge_id,
                HEDGE_WINNER => &mut a.hedge_winner,
                REQUEST_BODY_SIZE => {
                    a.request_bytes = v;
                    rest.push(kv);
                    continue;
                }
                RESPONSE_BODY_SIZE => {
                    a.response_bytes = v;
                    rest.push(kv);
                    continue;
                }
                EGRESS_BYTES => {
                    a.egress_bytes = v;
                    rest.push(kv);
                    continue;
                }
                SERVER_ADDRESS => {
                    a.server_address = v;
                    rest.push(kv);
                    continue;
                }
                CACHE_CREATION_1H => {
                    a.cache_creation_1h = v;
                    rest.push(kv);
                    continue;
                }
                _ => {
                    if let Some(i) = SERVICE_TIER.iter().position(|n| *n == key) {
                        a.service_tier[i] = v;
                        rest.push(kv);
                        continue;
                    }
                    let lists: [(&[&str], &mut [Option<Val<'a>>; 3]); 3] = [
                        (CACHE_READ, &mut a.cache_read),
                        (CACHE_CREATION, &mut a.cache_creation),
                        (REASONING, &mut a.reasoning),
                    ];
                    let mut matched = false;
                    for (names, slots) in lists {
                        if let Some(i) = names.iter().position(|n| *n == key) {
                            slots[i] = v;
                            matched = true;
                        }
                    }
                    if !matched {
                        rest.push(kv);
                    }
                    continue;
                }
            };
            *slot = v;
        }
        a
    }
}

/// Builders for the `spans` table, finished by name ([`SpanBuilders::finish_column`]).
struct SpanBuilders {
    trace_id: StringBuilder,
    span_id: StringBuilder,
    parent_span_id: StringBuilder,
    trace_state: StringBuilder,
    name: StringBuilder,
    kind: StringBuilder,
    start_time: TimestampNanosecondBuilder,
    end_time: TimestampNanosecondBuilder,
    duration_ns: Int64Builder,
    status_code: StringBuilder,
    status_message: StringBuilder,
    resource: ResourceBuilders,
    peer_cloud_provider: StringBuilder,
    peer_cloud_region: StringBuilder,
    gen_ai_provider: StringBuilder,
    gen_ai_operation: StringBuilder,
    request_model: StringBuilder,
    response_model: StringBuilder,
    input_tokens: Int64Builder,
    output_tokens: Int64Builder,
    cache_read_tokens: Int64Builder,
    cache_creation_tokens: Int64Builder,
    reasoning_tokens: Int64Builder,
    session_id: StringBuilder,
    agent_name: StringBuilder,
    agent_id: StringBuilder,
    tool_name: StringBuilder,
    error_type: StringBuilder,
    time_to_first_token_ms: Float64Builder,
    token_cost_usd: Float64Builder,
    egress_bytes: Int64Builder,
    egress_cost_usd: Float64Builder,
    cost_usd: Float64Builder,
    price_source: StringBuilder,
    hedge_id: StringBuilder,
    hedge_winner: BooleanBuilder,
    attributes: AttrMapBuilder,
    events: StringBuilder,
    links: StringBuilder,
    server_address: StringBuilder,
}

impl SpanBuilders {
    /// Builders for `n` rows of a request of `body_bytes`.
    fn new(n: usize, body_bytes: usize) -> Self {
        let ids = |bytes_each: usize| StringBuilder::with_capacity(n, n * bytes_each);
        SpanBuilders {
            trace_id: ids(32),
            span_id: ids(16),
            parent_span_id: ids(16),
            trace_state: StringBuilder::new(),
            name: ids(16),
            kind: ids(8),
            start_time: TimestampNanosecondBuilder::with_capacity(n).with_timezone("UTC"),
            end_time: TimestampNanosecondBuilder::with_capacity(n).with_timezone("UTC"),
            duration_ns: Int64Builder::with_capacity(n),
            status_code: ids(5),
            status_message: StringBuilder::new(),
            resource: ResourceBuilders::with_attributes(n, SPAN_RESOURCE_ATTRIBUTES.builder(n, body_bytes)),
            peer_cloud_provider: StringBuilder::new(),
            peer_cloud_region: StringBuilder::new(),
            gen_ai_provider: StringBuilder::new(),
            gen_ai_operation: StringBuilder::new(),
            request_model: StringBuilder::new(),
            response_model: StringBuilder::new(),
            input_tokens: Int64Builder::with_capacity(n),
            output_tokens: Int64Builder::with_capacity(n),
            cache_read_tokens: Int64Builder::with_capacity(n),
            cache_creation_tokens: Int64Builder::with_capacity(n),
            reasoning_tokens: Int64Builder::with_capacity(n),
            session_id: StringBuilder::new(),
            agent_name: StringBuilder::new(),
            agent_id: StringBuilder::new(),
            tool_name: StringBuilder::new(),
            error_type: StringBuilder::new(),
            time_to_first_token_ms: Float64Builder::with_capacity(n),
            token_cost_usd: Float64Builder::with_capacity(n),
            egress_bytes: Int64Builder::with_capacity(n),
            egress_cost_usd: Float64Builder::with_capacity(n),
            cost_usd: Float64Builder::with_capacity(n),
            price_source: StringBuilder::new(),
            hedge_id: StringBuilder::new(),
            hedge_winner: BooleanBuilder::with_capacity(n),
            attributes: SPAN_ATTRIBUTES.builder(n, body_bytes),
            events: StringBuilder::new(),
            links: StringBuilder::new(),
            server_address: StringBuilder::new(),
        }
    }

    fn finish(mut self) -> RecordBatch {
        let rows = self.trace_id.len();
        SPAN_ATTRIBUTES.learn(&mut self.attributes, rows);
        SPAN_RESOURCE_ATTRIBUTES.learn(&mut self.resource.resource_attributes, rows);
        build_batch(|column: SpanColumn| self.finish_column(column))
    }

    fn finish_column(&mut self, column: SpanColumn) -> ArrayRef {
        match column {
            SpanColumn::TraceId => self.trace_id.finish_array(),
            SpanColumn::SpanId => self.span_id.finish_array(),
            SpanColumn::ParentSpanId => self.parent_span_id.finish_array(),
            SpanColumn::TraceState => self.trace_state.finish_array(),
            SpanColumn::Name => self.name.finish_array(),
            SpanColumn::Kind => self.kind.finish_array(),
            SpanColumn::StartTime => self.start_time.finish_array(),
            SpanColumn::EndTime => self.end_time.finish_array(),
            SpanColumn::DurationNs => self.duration_ns.finish_array(),
            SpanColumn::StatusCode => self.status_code.finish_array(),
            SpanColumn::StatusMessage => self.status_message.finish_array(),
            SpanColumn::Resource(c) => self.resource.finish(c),
            SpanColumn::PeerCloudProvider => self.peer_cloud_provider.finish_array(),
            SpanColumn::PeerCloudRegion => self.peer_cloud_region.finish_array(),
            SpanColumn::GenAiProvider => self.gen_ai_provider.finish_array(),
            SpanColumn::GenAiOperation => self.gen_ai_operation.finish_array(),
            SpanColumn::RequestModel => self.request_model.finish_array(),
            SpanColumn::ResponseModel => self.response_model.finish_array(),
            SpanColumn::InputTokens => self.input_tokens.finish_array(),
            SpanColumn::OutputTokens => self.output_tokens.finish_array(),
            SpanColumn::CacheReadTokens => self.cache_read_tokens.finish_array(),
            SpanColumn::CacheCreationTokens => self.cache_creation_tokens.finish_array(),
            SpanColumn::ReasoningTokens => self.reasoning_tokens.finish_array(),
            SpanColumn::SessionId => self.session_id.finish_array(),
            SpanColumn::AgentName => self.agent_name.finish_array(),
            SpanColumn::AgentId => self.agent_id.finish_array(),
            SpanColumn::ToolName => self.tool_name.finish_array(),
            SpanColumn::ErrorType => self.error_type.finish_array(),
            SpanColumn::TimeToFirstTokenMs => self.time_to_first_token_ms.finish_array(),
            SpanColumn::TokenCostUsd => self.token_cost_usd.finish_array(),
            SpanColumn::EgressBytes => self.egress_bytes.finish_array(),
            SpanColumn::EgressCostUsd => self.egress_cost_usd.finish_array(),
            SpanColumn::CostUsd => self.cost_usd.finish_array(),
            SpanColumn::PriceSource => self.price_source.finish_array(),
            SpanColumn::HedgeId => self.hedge_id.finish_array(),
            SpanColumn::HedgeWinner => self.hedge_winner.finish_array(),
            SpanColumn::Attributes => self.attributes.finish_array(),
            SpanColumn::Events => self.events.finish_array(),
            SpanColumn::Links => self.links.finish_array(),
            SpanColumn::ServerAddress => self.server_address.finish_array(),
        }
    }
}

fn span_kind(kind: i32) -> &'static str {
    // SpanKind: 0 unspecified, 1 internal, 2 server, 3 client, 4 producer, 5 consumer. Unspecified is treated
    // as internal, as the specification says a span without a kind is internal.
    match kind {
        2 => "server",
        3 => "client",
        4 => "producer",
        5 => "consumer",
        _ => "internal",
    }
}

fn status_code(code: i32) -> &'static str {
    match code {
        1 => status::OK,
        2 => status::ERROR,
        _ => status::UNSET,
    }
}

/// Why a span cannot be stored, or `None` when it can.
fn invalid_span(span: &SpanView<'_>) -> Option<&'static str> {
    if span.trace_id.len() != 16 {
        return Some("trace_id must be 16 bytes (32 hex characters)");
    }
    if span.trace_id.iter().all(|b| *b == 0) {
        return Some("trace_id is all zeros");
    }
    if span.span_id.len() != 8 {
        return Some("span_id must be 8 bytes (16 hex characters)");
    }
    if span.span_id.iter().all(|b| *b == 0) {
        return Some("span_id is all zeros");
    }
    if !span.parent_span_id.is_empty() && span.parent_span_id.len() != 8 {
        return Some("parent_span_id must be empty or 8 bytes");
    }
    if span.start_time_unix_nano == 0 {
        return Some("start_time_unix_nano is missing");
    }
    if span.end_time_unix_nano < span.start_time_unix_nano {
        return Some("end_time_unix_nano is before start_time_unix_nano");
    }
    // Stored as i64 nanoseconds: a u64 past i64::MAX would wrap to before 1970.
    if span.start_time_unix_nano > i64::MAX as u64 || span.end_time_unix_nano > i64::MAX as u64 {
        return Some("timestamp is out of range (after 2262)");
    }
    if span.latest_event_time > i64::MAX as u64 {
        return Some("an event's time_unix_nano is out of range (after 2262)");
    }
    None
}

/// A span's events as a JSON array (`None` when it has none). Events are rare; they are decoded with prost here.
fn events_json(span: &SpanView<'_>) -> Option<String> {
    if span.events.is_empty() {
        return None;
    }
    let events: Vec<_> = span
        .events
        .iter()
        // Validated when the span was read.
        .filter_map(|b| Event::decode(*b).ok())
        .map(|e| {
            serde_json::json!({
                "time_unix_nano": e.time_unix_nano,
                "name": e.name,
                "attributes": attributes_to_json(&e.attributes),
            })
        })
        .collect();
    Some(serde_json::Value::Array(events).to_string())
}

/// A span's links as a JSON array (`None` when it has none).
fn links_json(span: &SpanView<'_>) -> Option<String> {
    if span.links.is_empty() {
        return None;
    }
    let links: Vec<_> = span
        .links
        .iter()
        .filter_map(|b| Link::decode(*b).ok())
        .map(|l| {
            serde_json::json!({
                "trace_id": hex(&l.trace_id),
                "span_id": hex(&l.span_id),
                "trace_state": l.trace_state,
                "attributes": attributes_to_json(&l.attributes),
            })
        })
        .collect();
    Some(serde_json::Value::Array(links).to_string())
}

/// Bounds on what one request may make the normaliser hold, from `[ingest]` in the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Attributes kept per span (`ingest.max_attributes_per_span`); the rest are dropped and the client is told
    /// through `partial_success`.
    pub max_attributes_per_span: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits::from(&tailscope_core::config::IngestConfig::default())
    }
}

impl From<&tailscope_core::config::IngestConfig> for Limits {
    fn from(c: &tailscope_core::config::IngestConfig) -> Self {
        Limits { max_attributes_per_span: c.max_attributes_per_span }
    }
}

/// Builders are sized for at most one row per this many bytes of request, so that a request of millions of
/// empty spans (two bytes each, all rejected) does not reserve ~250 bytes of columns for each. Real spans take
/// several hundred bytes; a request of smaller ones grows its builders as it goes.
const PRESIZED_SPAN_BYTES: usize = 128;

/// Why a trace request could not be normalised.
#[derive(Debug, thiserror::Error)]
pub enum NormalizeError {
    /// The body is not a well-formed `ExportTraceServiceRequest`.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The resource (and scope) columns, repeated on every span they cover, would take far more memory than the
    /// request itself: e.g. a resource attribute of megabytes over thousands of spans.
    #[error(
        "the request repeats its resource and scope attributes on each span, which would take more than {limit} \
         bytes ({factor}x the {body}-byte request + 64 MiB); send fewer spans per resource or smaller resource attributes"
    )]
    TooRepetitive {
        /// The request's size.
        body: usize,
        /// The bound that was passed.
        limit: usize,
        /// [`REPEATED_BYTES_FACTOR`].
        factor: usize,
    },
}

/// Resource and scope strings are copied onto every span they cover; a request may make the normaliser copy at
/// most this many times its own size of them (plus 64 MiB), so that its memory stays in proportion to it.
pub const REPEATED_BYTES_FACTOR: usize = 8;

/// Normalises an encoded `ExportTraceServiceRequest` (OTLP protobuf) into the `spans` table, pricing each span,
/// with the default [`Limits`].
pub fn normalize_traces_protobuf(body: &[u8], pricer: &Pricer) -> Result<Normalized, NormalizeError> {
    normalize_traces_limited(body, pricer, Limits::default())
}

/// Normalises an encoded `ExportTraceServiceRequest` (OTLP protobuf) into the `spans` table, pricing each span.
///
/// The body is read in place ([`crate::wire`]): the hot path allocates nothing per attribute. A body that is
/// not a well-formed request is an error for the whole request; spans that are well-formed but cannot be stored
/// are rejected one by one.
pub fn normalize_traces_limited(body: &[u8], pricer: &Pricer, limits: Limits) -> Result<Normalized, NormalizeError> {
    let request = wire::trace_request(body)?;
    let repeated_limit = body.len().saturating_mul(REPEATED_BYTES_FACTOR).saturating_add(64 << 20);
    let mut repeated = 0usize;
    let mut b = SpanBuilders::new(request.spans.min(body.len() / PRESIZED_SPAN_BYTES), body.len());
    let mut rejections = Rejections::default();
    let mut truncated = 0u64;
    let mut unpriced = 0;
    let mut span = SpanView::default();
    let mut rest = Vec::with_capacity(32);
    for rs in request.resource_spans() {
        let rs = rs?;
        let resource = ResourceRow::new(wire::resource(rs)?.as_ref());
        for ss in wire::scope_spans(rs) {
            let ss = ss?;
            let row = resource.with_scope(wire::scope(ss)?.as_ref());
            let row_bytes = row.bytes();
            for bytes in wire::spans(ss) {
                span.read_limited(bytes?, limits.max_attributes_per_span)?;
                if let Some(reason) = invalid_span(&span) {
                    rejections.add(format_args!("span {:?} ({}): {reason}", span.name, hex(span.span_id)));
                    continue;
                }
                repeated += row_bytes;
                if repeated > repeated_limit {
                    return Err(NormalizeError::TooRepetitive {
                        body: body.len(),
                        limit: repeated_limit,
                        factor: REPEATED_BYTES_FACTOR,
                    });
                }
                if span.dropped_attributes > 0 {
                    truncated += 1;
                    if truncated == 1 {
                        rejections.note(format_args!(
                            "span {:?} ({}): {} attributes past ingest.max_attributes_per_span ({}) were dropped",
                            span.name,
                            hex(span.span_id),
                            span.dropped_attributes,
                            limits.max_attributes_per_span
                        ));
                    }
                }
                rest.clear();
                let a = SpanAttrs::split(&span.attributes, &mut rest);
                append_span(&mut b, &span, &row, &a, &rest, pricer, &mut unpriced);
            }
        }
    }
    if truncated > 1 {
        rejections.note(format_args!("{truncated} spans in all had attributes dropped"));
    }
    let (rejected, reject_message) = rejections.finish();
    Ok(Normalized { signal: Signal::Spans, batch: b.finish(), rejected, reject_message, unpriced })
}

/// Normalises a decoded trace export request (OTLP/JSON arrives this way) through the same path as protobuf.
///
/// prost's encoding of what it decoded is well-formed; the request may still be refused as
/// [`NormalizeError::TooRepetitive`].
pub fn normalize_traces(request: &ExportTraceServiceRequest, pricer: &Pricer) -> Result<Normalized, NormalizeError> {
    normalize_traces_protobuf(&request.encode_to_vec(), pricer)
}

fn append_span(
    b: &mut SpanBuilders,
    span: &SpanView<'_>,
    resource: &ResourceRow,
    a: &SpanAttrs<'_>,
    rest: &[(&str, Option<Val<'_>>)],
    pricer: &Pricer,
    unpriced: &mut u64,
) {
    append_ids(b, span);
    b.trace_state.append_option(Some(span.trace_state).filter(|s| !s.is_empty()));
    b.name.append_value(span.name);
    b.kind.append_value(span_kind(span.kind));
    let start = span.start_time_unix_nano as i64;
    let end = span.end_time_unix_nano as i64;
    b.start_time.append_value(start);
    b.end_time.append_value(end);
    b.duration_ns.append_value(end - start);
    b.status_code.append_value(status_code(span.status_code));
    b.status_message.append_option(Some(span.status_message).filter(|m| !m.is_empty()));
    b.resource.append(resource);

    let provider = as_str(a.provider).or_else(|| as_str(a.system));
    let operation = as_str(a.operation);
    let request_model = as_str(a.request_model);
    let response_model = as_str(a.response_model);
    let input_tokens = as_i64(a.input_tokens).or_else(|| as_i64(a.prompt_tokens));
    let output_tokens = as_i64(a.output_tokens).or_else(|| as_i64(a.completion_tokens));
    let cache_read = first_of(&a.cache_read);
    let cache_creation = first_of(&a.cache_creation);
    let reasoning = first_of(&a.reasoning);
    let peer_provider = as_str(a.peer_provider);
    let peer_region = as_str(a.peer_region);
    b.peer_cloud_provider.append_option(peer_provider);
    b.peer_cloud_region.append_option(peer_region);
    b.gen_ai_provider.append_option(provider);
    b.gen_ai_operation.append_option(operation);
    b.request_model.append_option(request_model);
    b.response_model.append_option(response_model);
    b.input_tokens.append_option(input_tokens);
    b.output_tokens.append_option(output_tokens);
    b.cache_read_tokens.append_option(cache_read);
    b.cache_creation_tokens.append_option(cache_creation);
    b.reasoning_tokens.append_option(reasoning);
    append_any_value(&mut b.session_id, a.conversation_id.or(a.session_id));
    b.agent_name.append_option(as_str(a.agent_name));
    append_any_value(&mut b.agent_id, a.agent_id);
    b.tool_name.append_option(as_str(a.tool_name));
    b.error_type.append_option(as_str(a.error_type));
    b.time_to_first_token_ms.append_option(as_f64(a.ttfc).or_else(|| as_f64(a.ttft)).map(|s| s * 1000.0));

    let facts = SpanFacts {
        gen_ai_provider: provider,
        gen_ai_operation: operation,
        request_model,
        response_model,
        input_tokens,
        output_tokens,
        cache_read_tokens: cache_read,
        cache_creation_tokens: cache_creation,
        cache_creation_1h_tokens: as_i64(a.cache_creation_1h),
        reasoning_tokens: reasoning,
        service_tier: a.service_tier.iter().find_map(|v| as_str(*v)),
        cloud_provider: resource.cloud_provider.as_deref(),
        cloud_region: resource.cloud_region.as_deref(),
        peer_cloud_provider: peer_provider,
        peer_cloud_region: peer_region,
        request_bytes: as_i64(a.request_bytes),
        response_bytes: as_i64(a.response_bytes),
        egress_bytes: as_i64(a.egress_bytes),
    };
    append_cost(b, &facts, pricer, unpriced);
    append_any_value(&mut b.hedge_id, a.hedge_id);
    b.hedge_winner.append_option(as_bool(a.hedge_winner));

    append_attributes(&mut b.attributes, rest.iter().copied());
    b.events.append_option(events_json(span));
    b.links.append_option(links_json(span));
    b.server_address.append_option(as_str(a.server_address));
}

/// The span's trace, span and parent ids as lowercase hex (a missing or all-zero parent is NULL).
fn append_ids(b: &mut SpanBuilders, span: &SpanView<'_>) {
    let mut buf = [0u8; 32];
    b.trace_id.append_value(hex_into(span.trace_id, &mut buf));
    b.span_id.append_value(hex_into(span.span_id, &mut buf));
    if span.parent_span_id.is_empty() || span.parent_span_id.iter().all(|x| *x == 0) {
        b.parent_span_id.append_null();
    } else {
        b.parent_span_id.append_value(hex_into(span.parent_span_id, &mut buf));
    }
}

/// Prices the span once, at ingest, and fills its cost columns; counts it when no entry prices it.
fn append_cost(b: &mut SpanBuilders, facts: &SpanFacts<'_>, pricer: &Pricer, unpriced: &mut u64) {
    let cost = pricer.price(facts);
    if cost.price_source.as_deref() == Some(UNPRICED) {
        *unpriced += 1;
    }
    b.token_cost_usd.append_option(cost.token_cost_usd);
    b.egress_bytes.append_option(cost.egress_bytes);
    b.egress_cost_usd.append_option(cost.egress_cost_usd);
    b.cost_usd.append_option(cost.cost_usd);
    b.price_source.append_option(cost.price_source.as_deref());
}

/// Lowercase hex of an id into a stack buffer (ids are at most 16 bytes), avoiding an allocation per id.
fn hex_into<'b>(bytes: &[u8], buf: &'b mut [u8; 32]) -> &'b str {
    let n = bytes.len().min(16);
    for (i, b) in bytes[..n].iter().enumerate() {
        buf[2 * i] = HEX[(b >> 4) as usize];
        buf[2 * i + 1] = HEX[(b & 0xf) as usize];
    }
    // Only ASCII hex digits were written.
    std::str::from_utf8(&buf[..2 * n]).expect("hex is ASCII")
}

// ---------------------------------------------------------------------------------------------------------------
// Metrics

struct MetricBuilders {
    time: TimestampNanosecondBuilder,
    start_time: TimestampNanosecondBuilder,
    metric_name: StringBuilder,
    metric_description: StringBuilder,
    metric_unit: StringBuilder,
    metric_type: StringBuilder,
    is_monotonic: BooleanBuilder,
    aggregation_temporality: StringBuilder,
    value: Float64Builder,
    count: Int64Builder,
    sum: Float64Builder,
    min: Float64Builder,
    max: Float64Builder,
    buckets: StringBuilder,
    attributes: AttrMapBuilder,
    resource: ResourceBuilders,
}

/// One data point's type-specific values.
#[derive(Default)]
struct PointValues {
    value: Option<f64>,
    count: Option<i64>,
    sum: Option<f64>,
    min: Option<f64>,
    max: Option<f64>,
    buckets: Option<String>,
}

/// What every data point of one metric shares.
struct MetricInfo<'a> {
    name: &'a str,
    description: &'a str,
    unit: &'a str,
    kind: &'static str,
    monotonic: Option<bool>,
    temporality: Option<&'static str>,
}

impl PointValues {
    fn histogram(
        count: u64,
        sum: Option<f64>,
        min: Option<f64>,
        max: Option<f64>,
        buckets: &serde_json::Value,
    ) -> Self {
        PointValues { count: Some(i64_of(count)), sum, min, max, buckets: Some(buckets.to_string()), value: None }
    }
}

fn temporality(t: i32) -> Option<&'static str> {
    match t {
        1 => Some("delta"),
        2 => Some("cumulative"),
        _ => None,
    }
}

impl MetricBuilders {
    fn new(n: usize) -> Self {
        MetricBuilders {
            time: TimestampNanosecondBuilder::with_capacity(n).with_timezone("UTC"),
            start_time: TimestampNanosecondBuilder::with_capacity(n).with_timezone("UTC"),
            metric_name: StringBuilder::new(),
            metric_description: StringBuilder::new(),
            metric_unit: StringBuilder::new(),
            metric_type: StringBuilder::new(),
            is_monotonic: BooleanBuilder::new(),
            aggregation_temporality: StringBuilder::new(),
            value: Float64Builder::new(),
            count: Int64Builder::new(),
            sum: Float64Builder::new(),
            min: Float64Builder::new(),
            max: Float64Builder::new(),
            buckets: StringBuilder::new(),
            attributes: attr_map_builder(n),
            resource: ResourceBuilders::new(n),
        }
    }

    fn append(
        &mut self,
        info: &MetricInfo<'_>,
        time: u64,
        start: u64,
        attributes: &[KeyValue],
        v: PointValues,
        resource: &ResourceRow,
    ) {
        self.time.append_value(time as i64);
        self.start_time.append_option((start != 0).then_some(start as i64));
        self.metric_name.append_value(info.name);
        self.metric_description.append_option(Some(info.description).filter(|s| !s.is_empty()));
        self.metric_unit.append_option(Some(info.unit).filter(|s| !s.is_empty()));
        self.metric_type.append_value(info.kind);
        self.is_monotonic.append_option(info.monotonic);
        self.aggregation_temporality.append_option(info.temporality);
        self.value.append_option(v.value);
        self.count.append_option(v.count);
        self.sum.append_option(v.sum);
        self.min.append_option(v.min);
        self.max.append_option(v.max);
        self.buckets.append_option(v.buckets);
        append_attributes(&mut self.attributes, attributes.iter().map(pair));
        self.resource.append(resource);
    }

    fn finish(mut self) -> RecordBatch {
        build_batch(|column: MetricColumn| match column {
            MetricColumn::Time => self.time.finish_array(),
            MetricColumn::StartTime => self.start_time.finish_array(),
            MetricColumn::MetricName => self.metric_name.finish_array(),
            MetricColumn::MetricDescription => self.metric_description.finish_array(),
            MetricColumn::MetricUnit => self.metric_unit.finish_array(),
            MetricColumn::MetricType => self.metric_type.finish_array(),
            MetricColumn::IsMonotonic => self.is_monotonic.finish_array(),
            MetricColumn::AggregationTemporality => self.aggregation_temporality.finish_array(),
            MetricColumn::Value => self.value.finish_array(),
            MetricColumn::Count => self.count.finish_array(),
            MetricColumn::Sum => self.sum.finish_array(),
            MetricColumn::Min => self.min.finish_array(),
            MetricColumn::Max => self.max.finish_array(),
            MetricColumn::Buckets => self.buckets.finish_array(),
            MetricColumn::Attributes => self.attributes.finish_array(),
            MetricColumn::Resource(c) => self.resource.finish(c),
        })
    }
}

fn number_value(v: &Option<number_data_point::Value>) -> Option<f64> {
    match v {
        Some(number_data_point::Value::AsDouble(d)) => Some(*d),
        Some(number_data_point::Value::AsInt(i)) => Some(*i as f64),
        None => None,
    }
}

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Normalises a metrics export request into the `metrics` table (one row per data point).
pub fn normalize_metrics(request: &ExportMetricsServiceRequest) -> Normalized {
    let mut b = MetricBuilders::new(64);
    let mut rejections = Rejections::default();
    for rm in &request.resource_metrics {
        let resource = ResourceRow::new(rm.resource.as_ref());
        for sm in &rm.scope_metrics {
            let row = resource.with_scope(sm.scope.as_ref());
            for m in &sm.metrics {
                append_metric(&mut b, m, &row, &mut rejections);
            }
        }
    }
    let (rejected, reject_message) = rejections.finish();
    Normalized { signal: Signal::Metrics, batch: b.finish(), rejected, reject_message, unpriced: 0 }
}

/// Appends one row per data point of `m`, whatever its kind; points whose times do not fit are rejected.
fn append_metric(
    b: &mut MetricBuilders,
    m: &opentelemetry_proto::tonic::metrics::v1::Metric,
    row: &ResourceRow,
    rejections: &mut Rejections,
) {
    let Some(data) = &m.data else {
        // A metric with no data has no points to store (and none to reject).
        return;
    };
    let mut info = MetricInfo {
        name: &m.name,
        description: &m.description,
        unit: &m.unit,
        kind: "gauge",
        monotonic: None,
        temporality: None,
    };
    let check = |time: u64, start: u64, rejections: &mut Rejections| match point_time_problem(time, start) {
        None => true,
        Some(problem) => {
            rejections.add(format_args!("data point of {:?}: {problem}", m.name));
            false
        }
    };
    match data {
        Data::Gauge(g) => {
            for p in &g.data_points {
                if check(p.time_unix_nano, p.start_time_unix_nano, rejections) {
                    let v = PointValues { value: number_value(&p.value), ..Default::default() };
                    b.append(&info, p.time_unix_nano, p.start_time_unix_nano, &p.attributes, v, row);
                }
            }
        }
        Data::Sum(s) => {
            info.kind = "sum";
            info.monotonic = Some(s.is_monotonic);
            info.temporality = temporality(s.aggregation_temporality);
            for p in &s.data_points {
                if check(p.time_unix_nano, p.start_time_unix_nano, rejections) {
                    let v = PointValues { value: number_value(&p.value), ..Default::default() };
                    b.append(&info, p.time_unix_nano, p.start_time_unix_nano, &p.attributes, v, row);
                }
            }
        }
        Data::Histogram(h) => {
            info.kind = "histogram";
            info.temporality = temporality(h.aggregation_temporality);
            for p in &h.data_points {
                if check(p.time_unix_nano, p.start_time_unix_nano, rejections) {
                    let buckets = serde_json::json!({
                        "explicit_bounds": p.explicit_bounds,
                        "bucket_counts": p.bucket_counts,
                    });
                    let v = PointValues::histogram(p.count, p.sum, p.min, p.max, &buckets);
                    b.append(&info, p.time_unix_nano, p.start_time_unix_nano, &p.attributes, v, row);
                }
            }
        }
        Data::ExponentialHistogram(h) => {
            info.kind = "exponential_histogram";
            info.temporality = temporality(h.aggregation_temporality);
            for p in &h.data_points {
                if check(p.time_unix_nano, p.start_time_unix_nano, rejections) {
                    let buckets = exponential_buckets(p);
                    let v = PointValues::histogram(p.count, p.sum, p.min, p.max, &buckets);
                    b.append(&info, p.time_unix_nano, p.start_time_unix_nano, &p.attributes, v, row);
                }
            }
        }
        Data::Summary(s) => {
            info.kind = "summary";
            for p in &s.data_points {
                if check(p.time_unix_nano, p.start_time_unix_nano, rejections) {
                    let v = summary_values(p);
                    b.append(&info, p.time_unix_nano, p.start_time_unix_nano, &p.attributes, v, row);
                }
            }
        }
    }
}

/// Why a data point's times cannot be stored, if they cannot: they are stored as i64 nanoseconds, and a u64 past
/// i64::MAX would wrap to before 1970.
fn point_time_problem(time: u64, start: u64) -> Option<&'static str> {
    if time == 0 {
        Some("time_unix_nano is missing")
    } else if time > i64::MAX as u64 {
        Some("time_unix_nano is out of range (after 2262)")
    } else if start > i64::MAX as u64 {
        Some("start_time_unix_nano is out of range (after 2262)")
    } else {
        None
    }
}

/// The `buckets` JSON of an exponential histogram point: its scale, zero bucket and both sides.
fn exponential_buckets(
    p: &opentelemetry_proto::tonic::metrics::v1::ExponentialHistogramDataPoint,
) -> serde_json::Value {
    let side = |b: &Option<opentelemetry_proto::tonic::metrics::v1::exponential_histogram_data_point::Buckets>| {
        b.as_ref().map(|b| serde_json::json!({"offset": b.offset, "bucket_counts": b.bucket_counts}))
    };
    serde_json::json!({
        "scale": p.scale,
        "zero_count": p.zero_count,
        "zero_threshold": p.zero_threshold,
        "positive": side(&p.positive),
        "negative": side(&p.negative),
    })
}

/// A summary point: its count and sum, and its quantiles as the `buckets` JSON.
fn summary_values(p: &opentelemetry_proto::tonic::metrics::v1::SummaryDataPoint) -> PointValues {
    let q: Vec<_> =
        p.quantile_values.iter().map(|q| serde_json::json!({"quantile": q.quantile, "value": q.value})).collect();
    PointValues {
        count: Some(i64_of(p.count)),
        sum: Some(p.sum),
        buckets: Some(serde_json::json!({ "quantiles": q }).to_string()),
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Logs

/// Normalises a logs export request into the `logs` table. A record without a timestamp takes its observed time,
/// and without either, the time it was received, as the OTLP data model allows.
pub fn normalize_logs(request: &ExportLogsServiceRequest, received_ns: i64) -> Normalized {
    let n: usize = request.resource_logs.iter().flat_map(|r| &r.scope_logs).map(|s| s.log_records.len()).sum();
    let mut time = TimestampNanosecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut observed = TimestampNanosecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut severity_number = Int32Builder::with_capacity(n);
    let mut severity_text = StringBuilder::new();
    let mut body = StringBuilder::new();
    let mut trace_id = StringBuilder::new();
    let mut span_id = StringBuilder::new();
    let mut event_name = StringBuilder::new();
    let mut attributes = attr_map_builder(n);
    let mut resource_b = ResourceBuilders::new(n);
    let mut rejections = Rejections::default();
    for rl in &request.resource_logs {
        let resource = ResourceRow::new(rl.resource.as_ref());
        for sl in &rl.scope_logs {
            let row = resource.with_scope(sl.scope.as_ref());
            for r in &sl.log_records {
                if r.time_unix_nano > i64::MAX as u64 || r.observed_time_unix_nano > i64::MAX as u64 {
                    rejections.add(format_args!("log record: timestamp is out of range"));
                    continue;
                }
                if !r.trace_id.is_empty() && r.trace_id.len() != 16 {
                    rejections.add(format_args!("log record: trace_id must be empty or 16 bytes"));
                    continue;
                }
                let t = [r.time_unix_nano, r.observed_time_unix_nano].into_iter().find(|t| *t != 0);
                time.append_value(t.map(|t| t as i64).unwrap_or(received_ns));
                observed.append_option((r.observed_time_unix_nano != 0).then_some(r.observed_time_unix_nano as i64));
                severity_number.append_option((r.severity_number != 0).then_some(r.severity_number));
                severity_text.append_option(Some(r.severity_text.as_str()).filter(|s| !s.is_empty()));
                body.append_option(r.body.as_ref().and_then(|b| match &b.value {
                    Some(Value::StringValue(s)) => Some(s.clone()),
                    Some(_) => Some(any_value_to_json(b).to_string()),
                    None => None,
                }));
                trace_id.append_option((!r.trace_id.is_empty()).then(|| hex(&r.trace_id)));
                span_id.append_option((!r.span_id.is_empty()).then(|| hex(&r.span_id)));
                event_name.append_option(Some(r.event_name.as_str()).filter(|s| !s.is_empty()));
                append_attributes(&mut attributes, r.attributes.iter().map(pair));
                resource_b.append(&row);
            }
        }
    }
    let batch = build_batch(|column: LogColumn| match column {
        LogColumn::Time => time.finish_array(),
        LogColumn::ObservedTime => observed.finish_array(),
        LogColumn::SeverityNumber => severity_number.finish_array(),
        LogColumn::SeverityText => severity_text.finish_array(),
        LogColumn::Body => body.finish_array(),
        LogColumn::TraceId => trace_id.finish_array(),
        LogColumn::SpanId => span_id.finish_array(),
        LogColumn::EventName => event_name.finish_array(),
        LogColumn::Attributes => attributes.finish_array(),
        LogColumn::Resource(c) => resource_b.finish(c),
    });
    let (rejected, reject_message) = rejections.finish();
    Normalized { signal: Signal::Logs, batch, rejected, reject_message, unpriced: 0 }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{Array, MapArray, StringArray, TimestampNanosecondArray};
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
    use opentelemetry_proto::tonic::metrics::v1::{Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics};
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, span};

    use super::*;
    use crate::alloc_meter::measure;

    const T0: u64 = 1_700_000_000_000_000_000;

    fn kv(key: &str, value: &str) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(any_value::Value::StringValue(value.into())) }),
            ..Default::default()
        }
    }

    fn span(i: u64, attributes: Vec<KeyValue>) -> Span {
        Span {
            trace_id: [i.to_be_bytes(), 1u64.to_be_bytes()].concat(),
            span_id: (i + 1).to_be_bytes().to_vec(),
            name: "chat".into(),
            start_time_unix_nano: T0 + i,
            end_time_unix_nano: T0 + i + 1_000_000,
            attributes,
            ..Default::default()
        }
    }

    fn request(spans: Vec<Span>) -> Vec<u8> {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource { attributes: vec![kv("service.name", "agent")], ..Default::default() }),
                scope_spans: vec![ScopeSpans { spans, ..Default::default() }],
                ..Default::default()
            }],
        }
        .encode_to_vec()
    }

    fn ordinary(n: u64) -> Vec<u8> {
        let attrs = || vec![kv("gen_ai.request.model", "gpt-4o"), kv("gen_ai.provider.name", "openai"), kv("k", "v")];
        request((0..n).map(|i| span(i, attrs())).collect())
    }

    /// `server.address` (the endpoint called) has a column, and stays in `attributes` as before it had one.
    #[test]
    fn server_address_fills_its_column_and_stays_an_attribute() {
        let attributes = vec![kv("server.address", "api.openai.com"), kv("gen_ai.request.model", "gpt-4o")];
        let n = normalize_traces_protobuf(&request(vec![span(1, attributes), span(2, vec![])]), &Pricer::default())
            .unwrap();
        let column = SpanColumn::ServerAddress.of(&n.batch).unwrap().as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(column.iter().collect::<Vec<_>>(), vec![Some("api.openai.com"), None]);
        let map = SpanColumn::Attributes.of(&n.batch).unwrap().as_any().downcast_ref::<MapArray>().unwrap();
        let keys = map.value(0).column(0).as_any().downcast_ref::<StringArray>().unwrap().clone();
        assert_eq!(keys.iter().collect::<Vec<_>>(), vec![Some("server.address")], "the model left the map");
    }

    /// Issue #12, item 1: one span with a 50 MiB attribute, then an ordinary batch of 1,000 spans. The second
    /// request used to size its attribute map from the first one's per-row size: 55 GiB, and the process aborted.
    #[test]
    fn a_huge_attribute_does_not_size_the_next_request() {
        let pricer = Pricer::default();
        let huge = request(vec![span(1, vec![kv("gen_ai.prompt", &"x".repeat(50 << 20))])]);
        let n = normalize_traces_protobuf(&huge, &pricer).unwrap();
        assert_eq!(n.batch.num_rows(), 1);
        for spans in [1_000, 8_192] {
            let body = ordinary(spans);
            let (n, largest, peak) = measure(|| normalize_traces_protobuf(&body, &pricer).unwrap());
            assert_eq!(n.batch.num_rows(), spans as usize);
            // The batch is a few times the request; nothing near the 50 MiB of the request before.
            assert!(
                largest < 4 * body.len() + (1 << 20),
                "largest allocation {largest} for a {}-byte body",
                body.len()
            );
            assert!(peak < 16 * body.len() + (4 << 20), "peak {peak} for a {}-byte body", body.len());
        }
    }

    /// Issue #12, item 8: millions of empty attributes (two bytes each on the wire) used to cost ~80 bytes each
    /// while being normalised. Now a span keeps `max_attributes_per_span` of them, says so in the answer, and the
    /// normaliser's memory stays proportional to the request.
    #[test]
    fn an_attribute_bomb_is_cut_to_the_limit_and_costs_memory_in_proportion() {
        let pricer = Pricer::default();
        let mut bomb = span(1, vec![kv("gen_ai.request.model", "gpt-4o")]);
        bomb.attributes.extend(std::iter::repeat_n(KeyValue::default(), 2_000_000));
        let body = request(vec![bomb, span(2, vec![kv("a", "b")])]);
        let limits = Limits { max_attributes_per_span: 1000 };
        let (n, _, peak) = measure(|| normalize_traces_limited(&body, &pricer, limits).unwrap());
        assert_eq!((n.batch.num_rows(), n.rejected), (2, 0));
        assert!(
            n.reject_message.contains("1999001 attributes past ingest.max_attributes_per_span (1000)"),
            "{}",
            n.reject_message
        );
        let attributes = SpanColumn::Attributes.of(&n.batch).unwrap().as_any().downcast_ref::<MapArray>().unwrap();
        assert_eq!(attributes.value_length(0), 999, "the model went to its column, 999 kept in the map");
        assert_eq!(
            SpanColumn::RequestModel.of(&n.batch).unwrap().as_any().downcast_ref::<StringArray>().unwrap().value(0),
            "gpt-4o"
        );
        // The attribute maps may be sized for up to the body's bytes (a hint from another request).
        assert!(peak < 3 * body.len(), "peak {peak} for a {}-byte body", body.len());

        // Millions of empty resource and scope levels, and millions of empty (rejected) spans.
        let empty_resources = [0x0a, 0x00].repeat(2_000_000);
        let (n, _, peak) = measure(|| normalize_traces_protobuf(&empty_resources, &pricer).unwrap());
        assert_eq!(n.received(), 0);
        assert!(peak < empty_resources.len(), "peak {peak} for a {}-byte body", empty_resources.len());
        let empty_spans = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans { spans: vec![Span::default(); 2_000_000], ..Default::default() }],
                ..Default::default()
            }],
        }
        .encode_to_vec();
        let (n, _, peak) = measure(|| normalize_traces_protobuf(&empty_spans, &pricer).unwrap());
        assert_eq!((n.batch.num_rows(), n.rejected), (0, 2_000_000));
        // Columns are sized for at most one row per PRESIZED_SPAN_BYTES (~250 bytes of columns each), the maps
        // for at most the body's size each.
        assert!(peak < 6 * empty_spans.len(), "peak {peak} for a {}-byte body", empty_spans.len());
    }

    /// A resource attribute of a megabyte over hundreds of spans would be copied onto each: refused with a
    /// reason, before the copies are made, rather than holding hundreds of times the request.
    #[test]
    fn resource_attributes_repeated_past_the_bound_are_refused() {
        let pricer = Pricer::default();
        let mut body = ExportTraceServiceRequest::decode(&ordinary(300)[..]).unwrap();
        body.resource_spans[0].resource.as_mut().unwrap().attributes.push(kv("blob", &"r".repeat(1 << 20)));
        let body = body.encode_to_vec();
        let (result, _, peak) = measure(|| normalize_traces_protobuf(&body, &pricer));
        let e = result.unwrap_err();
        assert!(matches!(e, NormalizeError::TooRepetitive { .. }), "{e}");
        assert!(e.to_string().contains("send fewer spans per resource"), "{e}");
        // The copies made before the bound was reached, in a builder that doubles as it grows.
        let limit = REPEATED_BYTES_FACTOR * body.len() + (64 << 20);
        assert!(peak < 2 * limit + 4 * body.len(), "peak {peak} for a bound of {limit}");
        // The same resource over a few spans is fine.
        let mut few = ExportTraceServiceRequest::decode(&ordinary(3)[..]).unwrap();
        few.resource_spans[0].resource.as_mut().unwrap().attributes.push(kv("blob", &"r".repeat(1 << 20)));
        assert_eq!(normalize_traces_protobuf(&few.encode_to_vec(), &pricer).unwrap().batch.num_rows(), 3);
    }

    /// Issue #12, item 11: a u64 time past i64::MAX wrapped to 1969. Every signal refuses it, by name.
    #[test]
    fn nanosecond_times_past_i64_are_rejected_not_wrapped() {
        let point = |time: u64, start: u64| NumberDataPoint {
            time_unix_nano: time,
            start_time_unix_nano: start,
            ..Default::default()
        };
        let metrics = ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                scope_metrics: vec![ScopeMetrics {
                    metrics: vec![Metric {
                        name: "m".into(),
                        data: Some(Data::Gauge(Gauge {
                            data_points: vec![point(T0, u64::MAX), point(u64::MAX, T0), point(T0, T0 - 1)],
                        })),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let n = normalize_metrics(&metrics);
        assert_eq!((n.batch.num_rows(), n.rejected), (1, 2));
        assert!(n.reject_message.contains("start_time_unix_nano is out of range"), "{}", n.reject_message);
        assert!(n.reject_message.contains("time_unix_nano is out of range"), "{}", n.reject_message);
        let start =
            MetricColumn::StartTime.of(&n.batch).unwrap().as_any().downcast_ref::<TimestampNanosecondArray>().unwrap();
        assert_eq!(start.value(0), (T0 - 1) as i64);

        let mut late_event = span(1, vec![]);
        late_event.events = vec![span::Event { time_unix_nano: u64::MAX, name: "e".into(), ..Default::default() }];
        let mut late_end = span(2, vec![]);
        late_end.end_time_unix_nano = u64::MAX;
        let n = normalize_traces_protobuf(&request(vec![late_event, late_end, span(3, vec![])]), &Pricer::default())
            .unwrap();
        assert_eq!((n.batch.num_rows(), n.rejected), (1, 2));
        assert!(n.reject_message.contains("an event's time_unix_nano is out of range"), "{}", n.reject_message);
        assert!(n.reject_message.contains("timestamp is out of range"), "{}", n.reject_message);
    }
}
