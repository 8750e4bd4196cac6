//! What decoding an OTLP metrics or logs export will hold, found before decoding it.
//!
//! Traces are read in place ([`crate::wire`]); metrics and logs are decoded by prost into owned structs, and there
//! the cost is per item, not per byte: an empty attribute is 2 bytes on the wire and a 64-byte `KeyValue` in a
//! `Vec` that doubles as it grows; an empty data point, 2 bytes and a 100-byte struct, then a row of the batch. A
//! factor per body byte cannot bound that (a 40 MB request of empty attributes decoded to 2.5 GB). So the body is
//! first walked once, without allocating: every length-delimited field is classified by the OTLP schema, and each
//! sub-message is counted at the size of its prost struct, each string or bytes field at its length plus an
//! allocation, each packed varint at 8 bytes per byte. Nesting is followed with an explicit stack of at most
//! [`MAX_DEPTH`] levels (prost refuses past 100), never by recursion. The resulting [`Estimate`] is reserved from
//! the memory budget before prost runs: a request whose estimate passes the whole budget is refused for good
//! (413 / RESOURCE_EXHAUSTED, saying to send smaller batches), one that does not fit now is refused for now.

use std::mem::size_of;

use opentelemetry_proto::tonic::common::v1::{
    AnyValue, ArrayValue, EntityRef, InstrumentationScope, KeyValue, KeyValueList,
};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::exponential_histogram_data_point::Buckets;
use opentelemetry_proto::tonic::metrics::v1::summary_data_point::ValueAtQuantile;
use opentelemetry_proto::tonic::metrics::v1::{
    Exemplar, ExponentialHistogram, ExponentialHistogramDataPoint, Gauge, Histogram, HistogramDataPoint, Metric,
    NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, Summary, SummaryDataPoint,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use thiserror::Error;

use tailscope_core::schema::Signal;

/// Nesting followed at most; deeper is refused (prost's own limit is 100 levels, so nothing it accepts is).
pub const MAX_DEPTH: usize = 128;

/// What one heap allocation costs at least, whatever its length (glibc's smallest chunk).
const ALLOCATION_BYTES: usize = 32;

/// Bytes of the normalised batch per row (data point or log record), beside its strings: ~40 columns of
/// offsets, validity bits, timestamps and numbers (measured in `the_estimate_covers_what_decoding_holds`).
pub const ROW_BYTES: usize = 256;

/// Bytes of the normalised batch per body byte, for the strings it copies (with its builders' slack).
pub const BATCH_BYTES_PER_BODY_BYTE: usize = 2;

/// Bytes of the normalised batch per attribute (a map entry: key and value offsets, validity), beside its strings.
pub const ENTRY_BYTES: usize = 16;

/// Why a body could not be walked.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ScanError {
    /// Not protobuf: a varint runs past its field or the body, or a length past its enclosing message.
    #[error("{0}")]
    Malformed(&'static str),
    /// Nested deeper than [`MAX_DEPTH`].
    #[error("recursion limit reached: messages nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
    /// Protobuf groups (deprecated, not in OTLP): left to prost, with the worst-case estimate.
    #[error("protobuf groups are not expected in OTLP")]
    Groups,
}

/// What decoding and normalising a body will hold at most, besides the body.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Estimate {
    /// prost's owned structs: every struct, `Vec` slack, string and bytes.
    pub decoded: usize,
    /// The normalised batch.
    pub batch: usize,
    /// Rows the batch will have (data points or log records).
    pub rows: usize,
    /// Sub-messages in the body (each a prost struct).
    pub messages: usize,
}

impl Estimate {
    /// Decoded structs and batch together.
    pub fn total(&self) -> usize {
        self.decoded.saturating_add(self.batch)
    }

    /// The most any body of `len` bytes could cost, for a body that cannot be walked: every 2 bytes an empty
    /// message of the largest struct.
    pub fn worst_case(len: usize) -> Estimate {
        let messages = len / 2;
        let largest = Kind::ALL.iter().map(|k| k.struct_size()).max().unwrap_or(0);
        let decoded = messages.saturating_mul(2 * largest).saturating_add(len.saturating_mul(8));
        let batch = messages.saturating_mul(ROW_BYTES).saturating_add(len.saturating_mul(3));
        Estimate { decoded, batch, rows: messages, messages }
    }
}

/// Declares [`Kind`] and [`Kind::ALL`] from one list, so that no kind can be missing from `ALL`.
macro_rules! kinds {
    ($($kind:ident),* $(,)?) => {
        /// The OTLP messages whose fields the walk knows.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        enum Kind {
            $($kind),*
        }

        impl Kind {
            /// Every kind, each once.
            const ALL: &'static [Kind] = &[$(Kind::$kind),*];
        }
    };
}

kinds! {
    MetricsRequest,
    ResourceMetrics,
    ScopeMetrics,
    Metric,
    Gauge,
    Sum,
    Histogram,
    ExpHistogram,
    Summary,
    NumberPoint,
    HistogramPoint,
    ExpHistogramPoint,
    Buckets,
    SummaryPoint,
    Quantile,
    Exemplar,
    LogsRequest,
    ResourceLogs,
    ScopeLogs,
    LogRecord,
    Resource,
    Scope,
    KeyValue,
    AnyValue,
    ArrayValue,
    KvList,
    EntityRef,
}

/// What a length-delimited field of a message holds.
enum Field {
    /// A sub-message.
    Message(Kind),
    /// A string or bytes.
    Bytes,
    /// Packed varints, each a `u64`/`i64` once decoded.
    PackedVarints,
    /// Packed fixed-width numbers, as long decoded as on the wire.
    PackedFixed,
    /// Not a field of this message: prost skips it.
    Unknown,
}

impl Kind {
    /// The prost struct this message decodes to.
    fn struct_size(self) -> usize {
        use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
        use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
        match self {
            Kind::MetricsRequest => size_of::<ExportMetricsServiceRequest>(),
            Kind::LogsRequest => size_of::<ExportLogsServiceRequest>(),
            Kind::ResourceMetrics => size_of::<ResourceMetrics>(),
            Kind::ScopeMetrics => size_of::<ScopeMetrics>(),
            Kind::Metric => size_of::<Metric>(),
            Kind::Gauge => size_of::<Gauge>(),
            Kind::Sum => size_of::<Sum>(),
            Kind::Histogram => size_of::<Histogram>(),
            Kind::ExpHistogram => size_of::<ExponentialHistogram>(),
            Kind::Summary => size_of::<Summary>(),
            Kind::NumberPoint => size_of::<NumberDataPoint>(),
            Kind::HistogramPoint => size_of::<HistogramDataPoint>(),
            Kind::ExpHistogramPoint => size_of::<ExponentialHistogramDataPoint>(),
            Kind::Buckets => size_of::<Buckets>(),
            Kind::SummaryPoint => size_of::<SummaryDataPoint>(),
            Kind::Quantile => size_of::<ValueAtQuantile>(),
            Kind::Exemplar => size_of::<Exemplar>(),
            Kind::ResourceLogs => size_of::<ResourceLogs>(),
            Kind::ScopeLogs => size_of::<ScopeLogs>(),
            Kind::LogRecord => size_of::<LogRecord>(),
            Kind::Resource => size_of::<Resource>(),
            Kind::Scope => size_of::<InstrumentationScope>(),
            Kind::KeyValue => size_of::<KeyValue>(),
            Kind::AnyValue => size_of::<AnyValue>(),
            Kind::ArrayValue => size_of::<ArrayValue>(),
            Kind::KvList => size_of::<KeyValueList>(),
            Kind::EntityRef => size_of::<EntityRef>(),
        }
    }

    /// A row of the batch.
    fn is_row(self) -> bool {
        matches!(
            self,
            Kind::NumberPoint | Kind::HistogramPoint | Kind::ExpHistogramPoint | Kind::SummaryPoint | Kind::LogRecord
        )
    }

    /// Singular sub-message fields: held inside the parent's struct, not in a `Vec` of their own.
    fn is_singular(self, number: u32) -> bool {
        use Kind::*;
        matches!(
            (self, number),
            (ResourceMetrics | ResourceLogs | ScopeMetrics | ScopeLogs, 1)
                | (Metric, 5 | 7 | 9 | 10 | 11)
                | (KeyValue, 2)
                | (LogRecord, 5)
                | (AnyValue, 5 | 6)
                | (ExpHistogramPoint, 8 | 9)
        )
    }

    /// Repeated string fields.
    fn is_repeated_string(self, number: u32) -> bool {
        matches!((self, number), (Kind::EntityRef, 3 | 4))
    }

    /// Repeated scalar fields that may also arrive unpacked, one element per field (8 bytes each decoded).
    fn is_repeated_scalar(self, number: u32) -> bool {
        matches!((self, number), (Kind::HistogramPoint, 6 | 7) | (Kind::Buckets, 2))
    }

    /// What length-delimited field `number` of this message holds (the OTLP v1 protos).
    fn field(self, number: u32) -> Field {
        use Field::{Bytes, Message as M, PackedFixed, PackedVarints, Unknown};
        use Kind::*;
        match (self, number) {
            (MetricsRequest, 1) => M(ResourceMetrics),
            (ResourceMetrics, 1) | (ResourceLogs, 1) => M(Resource),
            (ResourceMetrics, 2) => M(ScopeMetrics),
            (ResourceMetrics, 3) | (ResourceLogs, 3) | (ScopeMetrics, 3) | (ScopeLogs, 3) => Bytes,
            (ScopeMetrics, 1) | (ScopeLogs, 1) => M(Scope),
            (ScopeMetrics, 2) => M(Metric),
            (Metric, 1..=3) => Bytes,
            (Metric, 5) => M(Gauge),
            (Metric, 7) => M(Sum),
            (Metric, 9) => M(Histogram),
            (Metric, 10) => M(ExpHistogram),
            (Metric, 11) => M(Summary),
            (Metric, 12) => M(KeyValue),
            (Gauge | Sum, 1) => M(NumberPoint),
            (Histogram, 1) => M(HistogramPoint),
            (ExpHistogram, 1) => M(ExpHistogramPoint),
            (Summary, 1) => M(SummaryPoint),
            (NumberPoint, 7) | (HistogramPoint, 9) | (ExpHistogramPoint, 1) | (SummaryPoint, 7) => M(KeyValue),
            (NumberPoint, 5) | (HistogramPoint, 8) | (ExpHistogramPoint, 11) => M(Exemplar),
            (HistogramPoint, 6 | 7) => PackedFixed,
            (ExpHistogramPoint, 8 | 9) => M(Buckets),
            (Buckets, 2) => PackedVarints,
            (SummaryPoint, 6) => M(Quantile),
            (Exemplar, 7) => M(KeyValue),
            (Exemplar, 4 | 5) => Bytes,
            (LogsRequest, 1) => M(ResourceLogs),
            (ResourceLogs, 2) => M(ScopeLogs),
            (ScopeLogs, 2) => M(LogRecord),
            (LogRecord, 3 | 9 | 10 | 12) => Bytes,
            (LogRecord, 5) => M(AnyValue),
            (LogRecord, 6) => M(KeyValue),
            (Resource, 1) | (Scope, 3) | (KvList, 1) => M(KeyValue),
            (Resource, 3) => M(EntityRef),
            (Scope, 1 | 2) => Bytes,
            (KeyValue, 1) => Bytes,
            (KeyValue, 2) => M(AnyValue),
            (AnyValue, 1 | 7) => Bytes,
            (AnyValue, 5) => M(ArrayValue),
            (AnyValue, 6) => M(KvList),
            (ArrayValue, 1) => M(AnyValue),
            (EntityRef, 1 | 2) => Bytes,
            (EntityRef, 3 | 4) => Bytes,
            _ => Unknown,
        }
    }
}

/// One message being walked.
struct Frame {
    kind: Kind,
    /// Where its fields begin and end in the body.
    start: usize,
    end: usize,
    /// Rows and attributes counted when it began (a resource's or scope's attributes are copied onto each of
    /// its rows).
    rows_before: usize,
    kvs_before: usize,
    /// For a `ResourceX` / `ScopeX`: the batch bytes its resource or scope adds to every row under it.
    per_row: usize,
}

fn varint(body: &[u8], pos: &mut usize, end: usize) -> Result<u64, ScanError> {
    let mut value = 0u64;
    for shift in 0..10 {
        let Some(&b) = body.get(*pos).filter(|_| *pos < end) else {
            return Err(ScanError::Malformed("a varint runs past the end of its message"));
        };
        *pos += 1;
        value |= u64::from(b & 0x7f) << (7 * shift);
        if b < 0x80 {
            return Ok(value);
        }
    }
    Err(ScanError::Malformed("a varint is longer than 10 bytes"))
}

/// Walks a protobuf `ExportMetricsServiceRequest` or `ExportLogsServiceRequest` and bounds what decoding and
/// normalising it will hold. Linear in the body; allocates only the stack of at most [`MAX_DEPTH`] frames.
// Long by design: one pass over the protobuf with an explicit stack; each message type is a case of the same
// loop, and split out each would need the loop's state passed in and out.
pub fn estimate(signal: Signal, body: &[u8]) -> Result<Estimate, ScanError> {
    let root = match signal {
        Signal::Metrics => Kind::MetricsRequest,
        Signal::Logs => Kind::LogsRequest,
        // Traces are read in place, not through prost.
        Signal::Spans => return Ok(Estimate::default()),
    };
    let mut structs = 0usize;
    let mut heap = 0usize;
    let mut rows = 0usize;
    let mut kvs = 0usize;
    let mut messages = 0usize;
    let mut copied = 0usize;
    let mut stack = Vec::with_capacity(16);
    stack.push(Frame { kind: root, start: 0, end: body.len(), rows_before: 0, kvs_before: 0, per_row: 0 });
    let mut pos = 0usize;
    loop {
        // Close the messages that end here.
        while let Some(top) = stack.last() {
            if pos < top.end {
                break;
            }
            let Some(done) = stack.pop() else { break };
            match (done.kind, stack.last_mut()) {
                // A resource's or scope's attributes (entries and their strings), copied onto every row under its
                // ResourceX / ScopeX.
                (Kind::Resource | Kind::Scope, Some(parent)) => {
                    let entries = (kvs - done.kvs_before).saturating_mul(ENTRY_BYTES);
                    parent.per_row = parent.per_row.saturating_add(entries).saturating_add(done.end - done.start);
                }
                (Kind::ResourceMetrics | Kind::ResourceLogs | Kind::ScopeMetrics | Kind::ScopeLogs, _) => {
                    copied = copied.saturating_add(done.per_row.saturating_mul(rows - done.rows_before));
                }
                _ => {}
            }
            if stack.is_empty() {
                let decoded = structs.saturating_mul(2).saturating_add(heap);
                let batch = rows
                    .saturating_mul(ROW_BYTES)
                    .saturating_add(kvs.saturating_mul(ENTRY_BYTES))
                    .saturating_add(body.len().saturating_mul(BATCH_BYTES_PER_BODY_BYTE))
                    .saturating_add(copied);
                return Ok(Estimate { decoded, batch, rows, messages });
            }
        }
        let Some(top) = stack.last() else {
            return Err(ScanError::Malformed("the walk ended early"));
        };
        let (kind, end) = (top.kind, top.end);
        let key = varint(body, &mut pos, end)?;
        let number = (key >> 3) as u32;
        match key & 7 {
            0 => {
                varint(body, &mut pos, end)?;
                if kind.is_repeated_scalar(number) {
                    heap = heap.saturating_add(8);
                }
            }
            1 | 5 => {
                let width = if key & 7 == 1 { 8 } else { 4 };
                if end - pos < width {
                    return Err(ScanError::Malformed("a fixed-width field runs past the end of its message"));
                }
                pos += width;
                if kind.is_repeated_scalar(number) {
                    heap = heap.saturating_add(8);
                }
            }
            2 => {
                let len = varint(body, &mut pos, end)?;
                let len = usize::try_from(len)
                    .ok()
                    .filter(|l| *l <= end - pos)
                    .ok_or(ScanError::Malformed("a length-delimited field is longer than the rest of its message"))?;
                match kind.field(number) {
                    Field::Message(child) => {
                        if stack.len() >= MAX_DEPTH {
                            return Err(ScanError::TooDeep);
                        }
                        messages += 1;
                        // A repeated field's element takes a slot in its `Vec`; a singular one lives inside its
                        // parent's struct (a repeat of it on the wire is merged into the same struct).
                        if !kind.is_singular(number) {
                            structs = structs.saturating_add(child.struct_size());
                        }
                        if child.is_row() {
                            rows += 1;
                        }
                        if child == Kind::KeyValue {
                            kvs += 1;
                        }
                        let frame = Frame {
                            kind: child,
                            start: pos,
                            end: pos + len,
                            rows_before: rows,
                            kvs_before: kvs,
                            per_row: 0,
                        };
                        stack.push(frame);
                        continue;
                    }
                    Field::Bytes => {
                        // The allocation of its bytes, and for repeated strings a `String` in the `Vec`.
                        if len > 0 {
                            heap = heap.saturating_add(len + ALLOCATION_BYTES);
                        }
                        if kind.is_repeated_string(number) {
                            structs = structs.saturating_add(size_of::<String>());
                        }
                    }
                    Field::PackedVarints => heap = heap.saturating_add(len.saturating_mul(8) + ALLOCATION_BYTES),
                    Field::PackedFixed => heap = heap.saturating_add(len + ALLOCATION_BYTES),
                    Field::Unknown => {}
                }
                pos += len;
            }
            3 | 4 => return Err(ScanError::Groups),
            _ => return Err(ScanError::Malformed("invalid wire type")),
        }
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value;
    use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};
    use prost::Message;

    use super::*;
    use crate::alloc_meter::measure;

    fn kv(k: &str, v: &str) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue { value: Some(any_value::Value::StringValue(v.into())) }),
            ..Default::default()
        }
    }

    fn metrics(points: Vec<NumberDataPoint>, resource: Vec<KeyValue>) -> ExportMetricsServiceRequest {
        ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(Resource { attributes: resource, ..Default::default() }),
                scope_metrics: vec![ScopeMetrics {
                    metrics: vec![Metric {
                        name: "gen_ai.client.token.usage".into(),
                        data: Some(metric::Data::Gauge(Gauge { data_points: points })),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    fn logs(records: Vec<LogRecord>, resource: Vec<KeyValue>) -> ExportLogsServiceRequest {
        ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(Resource { attributes: resource, ..Default::default() }),
                scope_logs: vec![ScopeLogs { log_records: records, ..Default::default() }],
                ..Default::default()
            }],
        }
    }

    fn point(i: u64, attributes: Vec<KeyValue>) -> NumberDataPoint {
        NumberDataPoint {
            time_unix_nano: 1_700_000_000_000_000_000 + i,
            value: Some(number_data_point::Value::AsInt(i as i64)),
            attributes,
            ..Default::default()
        }
    }

    fn record(i: u64, attributes: Vec<KeyValue>) -> LogRecord {
        LogRecord {
            time_unix_nano: 1_700_000_000_000_000_000 + i,
            severity_text: "INFO".into(),
            body: Some(AnyValue { value: Some(any_value::Value::StringValue(format!("message {i}"))) }),
            attributes,
            ..Default::default()
        }
    }

    /// The estimate must cover what prost allocates to decode the body and the batch normalising it builds, for
    /// ordinary exports and for the shapes where a factor per byte fails (empty attributes, empty items, resource
    /// attributes repeated on every row); and stay within a small multiple of it for ordinary exports, which must
    /// not be refused for a pessimistic guess.
    #[test]
    fn the_estimate_covers_what_decoding_holds() {
        let attrs = |n: usize| (0..n).map(|i| kv(&format!("attr.{i}"), &format!("value-{i}"))).collect::<Vec<_>>();
        let cases: Vec<(&str, Signal, Vec<u8>, bool)> = vec![
            (
                "ordinary metrics",
                Signal::Metrics,
                metrics((0..2_000).map(|i| point(i, attrs(8))).collect(), attrs(10)).encode_to_vec(),
                true,
            ),
            (
                "ordinary logs",
                Signal::Logs,
                logs((0..2_000).map(|i| record(i, attrs(8))).collect(), attrs(10)).encode_to_vec(),
                true,
            ),
            (
                "empty attributes",
                Signal::Metrics,
                metrics(vec![point(1, vec![KeyValue::default(); 200_000])], vec![]).encode_to_vec(),
                false,
            ),
            (
                "empty points",
                Signal::Metrics,
                metrics(vec![NumberDataPoint::default(); 100_000], vec![]).encode_to_vec(),
                false,
            ),
            ("empty records", Signal::Logs, logs(vec![LogRecord::default(); 100_000], vec![]).encode_to_vec(), false),
            (
                "empty log attributes",
                Signal::Logs,
                logs(vec![record(1, vec![KeyValue::default(); 200_000])], vec![]).encode_to_vec(),
                false,
            ),
            (
                "resource repeated",
                Signal::Logs,
                logs((0..5_000).map(|i| record(i, vec![])).collect(), attrs(200)).encode_to_vec(),
                false,
            ),
        ];
        for (what, signal, body, ordinary) in cases {
            let estimate = estimate(signal, &body).unwrap();
            let (batch, _, decoded_peak) = measure(|| match signal {
                Signal::Metrics => {
                    let r = ExportMetricsServiceRequest::decode(&body[..]).unwrap();
                    crate::normalize::normalize_metrics(&r).batch
                }
                _ => {
                    let r = ExportLogsServiceRequest::decode(&body[..]).unwrap();
                    crate::normalize::normalize_logs(&r, 1).batch
                }
            });
            let arrow = batch.get_array_memory_size();
            eprintln!(
                "{what}: {} body bytes, estimate {} decoded + {} batch; measured peak {decoded_peak}, batch {arrow}",
                body.len(),
                estimate.decoded,
                estimate.batch
            );
            assert!(estimate.total() >= decoded_peak, "{what}: {estimate:?} under the measured peak {decoded_peak}");
            assert!(estimate.batch >= arrow, "{what}: {estimate:?} under the batch {arrow}");
            if ordinary {
                assert!(estimate.total() <= 20 * body.len(), "{what}: {estimate:?} for {} bytes", body.len());
            }
        }
    }

    #[test]
    fn nesting_and_damage_are_refused_without_recursion() {
        // AnyValue > ArrayValue > AnyValue ... 1,000 deep, as a log record's body.
        let mut value: Vec<u8> = Vec::new();
        for _ in 0..1_000 {
            let mut outer = Vec::new();
            prost::encoding::encode_key(5, prost::encoding::WireType::LengthDelimited, &mut outer);
            let mut array = Vec::new();
            prost::encoding::encode_key(1, prost::encoding::WireType::LengthDelimited, &mut array);
            prost::encoding::encode_varint(value.len() as u64, &mut array);
            array.extend_from_slice(&value);
            prost::encoding::encode_varint(array.len() as u64, &mut outer);
            outer.extend_from_slice(&array);
            value = outer;
        }
        // A record whose body is the nested value: resource_logs > scope_logs > log_records > body.
        let wrap = |tag: u32, inner: &[u8]| {
            let mut out = Vec::new();
            prost::encoding::encode_key(tag, prost::encoding::WireType::LengthDelimited, &mut out);
            prost::encoding::encode_varint(inner.len() as u64, &mut out);
            out.extend_from_slice(inner);
            out
        };
        let mut any = wrap(5, &value);
        any = wrap(2, &wrap(2, &any));
        let body = wrap(1, &any);
        assert_eq!(estimate(Signal::Logs, &body), Err(ScanError::TooDeep));
        assert!(ExportLogsServiceRequest::decode(&body[..]).is_err(), "prost refuses it too");
        // Cut short, and a length past the end.
        let good = logs(vec![record(1, vec![kv("a", "b")])], vec![]).encode_to_vec();
        for cut in 1..good.len() {
            let scanned = estimate(Signal::Logs, &good[..cut]);
            if ExportLogsServiceRequest::decode(&good[..cut]).is_ok() {
                assert!(scanned.is_ok(), "cut at {cut}: prost accepts it, the walk must too: {scanned:?}");
            }
        }
        assert!(estimate(Signal::Logs, &good).is_ok());
    }
}
