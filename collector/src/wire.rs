//! Borrowing decoding of OTLP trace requests straight from the protobuf wire format.
//!
//! prost decodes a request into owned structs: a `String` for every attribute key and value, a `Vec` for every
//! attribute list, all freed again as soon as the spans have been copied into Arrow builders. For agent spans
//! with ~20 attributes those allocations are most of a decode's cost (measured: `benches/src/bin/normalize.rs`).
//! The trace path therefore walks the wire format once and hands the normaliser views that borrow from the
//! request body: span fields and scalar attribute values are read in place. What is rare or small stays with
//! prost's generated types, so its semantics are not re-implemented: a request's `Resource` and
//! `InstrumentationScope` (decoded once per batch of spans), span events and links, and array or map attribute
//! values (decoded when rendered as JSON).
//!
//! The reader follows protobuf's rules as prost does: fields in any order, unknown fields skipped, the last
//! occurrence of a scalar field wins, repeated messages accumulate, strings must be UTF-8, and a field of a known
//! number with the wrong wire type is an error.

use opentelemetry_proto::tonic::common::v1::{
    AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList, any_value,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use prost::encoding::{DecodeContext, WireType, decode_key, decode_varint, skip_field};

/// Why a request body is not a well-formed `ExportTraceServiceRequest`.
#[derive(Debug, thiserror::Error)]
#[error("{message} in {path}")]
pub struct WireError {
    /// The message (and field) being decoded, e.g. `Span.attributes`.
    pub path: &'static str,
    /// What was wrong.
    pub message: String,
}

/// A cursor over one protobuf message.
#[derive(Debug)]
struct Reader<'a> {
    buf: &'a [u8],
    path: &'static str,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], path: &'static str) -> Self {
        Reader { buf, path }
    }

    fn error(&self, message: impl ToString) -> WireError {
        WireError { path: self.path, message: message.to_string() }
    }

    /// The next field's number and wire type, or `None` at the end of the message.
    fn field(&mut self) -> Result<Option<(u32, WireType)>, WireError> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        decode_key(&mut self.buf).map(Some).map_err(|e| self.error(e))
    }

    fn expect(&self, tag: u32, got: WireType, want: WireType) -> Result<(), WireError> {
        if got == want {
            Ok(())
        } else {
            Err(self.error(format_args!("field {tag} has wire type {got:?}, expected {want:?}")))
        }
    }

    fn varint(&mut self, tag: u32, wire: WireType) -> Result<u64, WireError> {
        self.expect(tag, wire, WireType::Varint)?;
        decode_varint(&mut self.buf).map_err(|e| self.error(e))
    }

    fn fixed<const N: usize>(&mut self, tag: u32, wire: WireType, want: WireType) -> Result<[u8; N], WireError> {
        self.expect(tag, wire, want)?;
        let Some((head, tail)) = self.buf.split_first_chunk::<N>() else {
            return Err(self.error(format_args!("field {tag} is truncated")));
        };
        self.buf = tail;
        Ok(*head)
    }

    fn fixed64(&mut self, tag: u32, wire: WireType) -> Result<u64, WireError> {
        self.fixed::<8>(tag, wire, WireType::SixtyFourBit).map(u64::from_le_bytes)
    }

    fn fixed32(&mut self, tag: u32, wire: WireType) -> Result<u32, WireError> {
        self.fixed::<4>(tag, wire, WireType::ThirtyTwoBit).map(u32::from_le_bytes)
    }

    /// A length-delimited field: bytes, a string or an embedded message.
    fn bytes(&mut self, tag: u32, wire: WireType) -> Result<&'a [u8], WireError> {
        self.expect(tag, wire, WireType::LengthDelimited)?;
        let len = decode_varint(&mut self.buf).map_err(|e| self.error(e))?;
        if len > self.buf.len() as u64 {
            return Err(self.error(format_args!("field {tag} claims {len} bytes but only {} remain", self.buf.len())));
        }
        let (head, tail) = self.buf.split_at(len as usize);
        self.buf = tail;
        Ok(head)
    }

    fn string(&mut self, tag: u32, wire: WireType) -> Result<&'a str, WireError> {
        let bytes = self.bytes(tag, wire)?;
        // Nearly every key and value is short ASCII, which `is_ascii` checks a word at a time; `from_utf8` walks
        // short unaligned input byte by byte (it was 4 % of ingest CPU).
        if bytes.is_ascii() {
            // SAFETY: ASCII is valid UTF-8.
            return Ok(unsafe { std::str::from_utf8_unchecked(bytes) });
        }
        std::str::from_utf8(bytes).map_err(|e| self.error(format_args!("field {tag} is not valid UTF-8: {e}")))
    }

    fn skip(&mut self, tag: u32, wire: WireType) -> Result<(), WireError> {
        skip_field(wire, tag, &mut self.buf, DecodeContext::default()).map_err(|e| self.error(e))
    }

    /// Decodes an embedded message with prost, merging into `into` (protobuf's rule for a repeated singular
    /// message field).
    fn merge<M>(&mut self, tag: u32, wire: WireType, into: &mut Option<M>) -> Result<(), WireError>
    where
        M: Message + Default,
    {
        let bytes = self.bytes(tag, wire)?;
        let path = self.path;
        into.get_or_insert_with(M::default).merge(bytes).map_err(|e| WireError { path, message: e.to_string() })
    }
}

/// An attribute value borrowed from a request (or from a prost-decoded message, for metrics and logs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Val<'a> {
    /// `string_value`.
    Str(&'a str),
    /// `bool_value`.
    Bool(bool),
    /// `int_value`.
    Int(i64),
    /// `double_value`.
    Double(f64),
    /// `bytes_value`.
    Bytes(&'a [u8]),
    /// `string_value_strindex`: a profiles-only reference into a string table.
    Strindex(i32),
    /// An array or key/value list, decoded only when rendered.
    Nested(Nested<'a>),
}

/// An array or key/value list value, still encoded or already decoded by prost.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Nested<'a> {
    /// A prost-decoded `AnyValue` holding an array or a key/value list.
    Decoded(&'a AnyValue),
    /// The wire bytes of an `ArrayValue` (validated when the span was read).
    Array(&'a [u8]),
    /// The wire bytes of a `KeyValueList` (validated when the span was read).
    Kvlist(&'a [u8]),
    /// The wire bytes of an `AnyValue` holding one nested value several times, which protobuf merges.
    Any(&'a [u8]),
    /// The wire bytes of a `KeyValue` holding its value several times, which protobuf merges.
    KeyValue(&'a [u8]),
}

impl<'a> Val<'a> {
    /// The value of a prost `AnyValue`; `None` when it holds none.
    pub fn of(value: Option<&'a AnyValue>) -> Option<Val<'a>> {
        use any_value::Value;
        Some(match value?.value.as_ref()? {
            Value::StringValue(s) => Val::Str(s),
            Value::BoolValue(b) => Val::Bool(*b),
            Value::IntValue(i) => Val::Int(*i),
            Value::DoubleValue(d) => Val::Double(*d),
            Value::BytesValue(b) => Val::Bytes(b),
            Value::StringValueStrindex(i) => Val::Strindex(*i),
            Value::ArrayValue(_) | Value::KvlistValue(_) => Val::Nested(Nested::Decoded(value?)),
        })
    }
}

impl Nested<'_> {
    /// The value as a prost `AnyValue` (decoding wire bytes, which were validated when read).
    pub fn decode(&self) -> AnyValue {
        use any_value::Value;
        let value = match *self {
            Nested::Decoded(v) => return v.clone(),
            Nested::Array(b) => ArrayValue::decode(b).ok().map(Value::ArrayValue),
            Nested::Kvlist(b) => KeyValueList::decode(b).ok().map(Value::KvlistValue),
            Nested::Any(b) => AnyValue::decode(b).ok().and_then(|v| v.value),
            Nested::KeyValue(b) => KeyValue::decode(b).ok().and_then(|kv| kv.value).and_then(|v| v.value),
        };
        AnyValue { value }
    }
}

/// Reads an `AnyValue` message; `None` when it holds no value.
fn any_value(buf: &[u8]) -> Result<Option<Val<'_>>, WireError> {
    let mut r = Reader::new(buf, "AnyValue");
    let mut value = None;
    // Protobuf merges a message field that occurs twice: two arrays in a row make one array of both.
    let mut merged = false;
    while let Some((tag, wire)) = r.field()? {
        value = Some(match tag {
            1 => Val::Str(r.string(tag, wire)?),
            2 => Val::Bool(r.varint(tag, wire)? != 0),
            3 => Val::Int(r.varint(tag, wire)? as i64),
            4 => Val::Double(f64::from_bits(r.fixed64(tag, wire)?)),
            5 => {
                let b = r.bytes(tag, wire)?;
                ArrayValue::decode(b).map_err(|e| r.error(e))?;
                merged |= matches!(value, Some(Val::Nested(Nested::Array(_))));
                Val::Nested(Nested::Array(b))
            }
            6 => {
                let b = r.bytes(tag, wire)?;
                KeyValueList::decode(b).map_err(|e| r.error(e))?;
                merged |= matches!(value, Some(Val::Nested(Nested::Kvlist(_))));
                Val::Nested(Nested::Kvlist(b))
            }
            7 => Val::Bytes(r.bytes(tag, wire)?),
            8 => Val::Strindex(r.varint(tag, wire)? as i32),
            _ => {
                r.skip(tag, wire)?;
                continue;
            }
        });
    }
    if merged && matches!(value, Some(Val::Nested(_))) {
        return Ok(Some(Val::Nested(Nested::Any(buf))));
    }
    Ok(value)
}

/// Reads a `KeyValue` message.
fn key_value(buf: &[u8]) -> Result<(&str, Option<Val<'_>>), WireError> {
    let mut r = Reader::new(buf, "KeyValue");
    let (mut key, mut value) = ("", None);
    let mut values = 0;
    while let Some((tag, wire)) = r.field()? {
        match tag {
            1 => key = r.string(tag, wire)?,
            2 => {
                // A second `value` merges into the first: an empty one changes nothing.
                values += 1;
                if let Some(v) = any_value(r.bytes(tag, wire)?)? {
                    value = Some(v);
                }
            }
            // `key_strindex` (profiles only): checked as protobuf does, not used.
            3 => {
                r.varint(tag, wire)?;
            }
            _ => r.skip(tag, wire)?,
        }
    }
    if values > 1 && matches!(value, Some(Val::Nested(_))) {
        return Ok((key, Some(Val::Nested(Nested::KeyValue(buf)))));
    }
    Ok((key, value))
}

/// One span, borrowed from the request body. Reused from span to span to keep its vectors' capacity.
#[derive(Debug, Default)]
pub struct SpanView<'a> {
    /// `trace_id` (16 bytes when valid).
    pub trace_id: &'a [u8],
    /// `span_id` (8 bytes when valid).
    pub span_id: &'a [u8],
    /// `trace_state` (W3C tracestate).
    pub trace_state: &'a str,
    /// `parent_span_id` (empty for a root).
    pub parent_span_id: &'a [u8],
    /// `name`.
    pub name: &'a str,
    /// `kind` (SpanKind enum value).
    pub kind: i32,
    /// `start_time_unix_nano`.
    pub start_time_unix_nano: u64,
    /// `end_time_unix_nano`.
    pub end_time_unix_nano: u64,
    /// `attributes`, in order (the first `max_attributes` given to [`SpanView::read_limited`]).
    pub attributes: Vec<(&'a str, Option<Val<'a>>)>,
    /// Attributes past that limit: checked like the others, but not kept.
    pub dropped_attributes: usize,
    /// The wire bytes of each `Span.Event`.
    pub events: Vec<&'a [u8]>,
    /// The latest `time_unix_nano` of the events (0 without events).
    pub latest_event_time: u64,
    /// The wire bytes of each `Span.Link`.
    pub links: Vec<&'a [u8]>,
    /// `status.code` (StatusCode enum value).
    pub status_code: i32,
    /// `status.message`.
    pub status_message: &'a str,
}

impl<'a> SpanView<'a> {
    /// Reads a `Span` message into `self`, replacing what was there.
    pub fn read(&mut self, buf: &'a [u8]) -> Result<(), WireError> {
        self.read_limited(buf, usize::MAX)
    }

    /// [`SpanView::read`], keeping at most `max_attributes` attributes: a view takes ~40 bytes per attribute, and
    /// an empty attribute takes two bytes on the wire.
    pub fn read_limited(&mut self, buf: &'a [u8], max_attributes: usize) -> Result<(), WireError> {
        self.trace_id = &[];
        self.span_id = &[];
        self.trace_state = "";
        self.parent_span_id = &[];
        self.name = "";
        self.kind = 0;
        self.start_time_unix_nano = 0;
        self.end_time_unix_nano = 0;
        self.attributes.clear();
        self.dropped_attributes = 0;
        self.events.clear();
        self.latest_event_time = 0;
        self.links.clear();
        self.status_code = 0;
        self.status_message = "";
        let mut r = Reader::new(buf, "Span");
        while let Some((tag, wire)) = r.field()? {
            match tag {
                1 => self.trace_id = r.bytes(tag, wire)?,
                2 => self.span_id = r.bytes(tag, wire)?,
                3 => self.trace_state = r.string(tag, wire)?,
                4 => self.parent_span_id = r.bytes(tag, wire)?,
                5 => self.name = r.string(tag, wire)?,
                6 => self.kind = r.varint(tag, wire)? as i32,
                7 => self.start_time_unix_nano = r.fixed64(tag, wire)?,
                8 => self.end_time_unix_nano = r.fixed64(tag, wire)?,
                9 => {
                    let kv = key_value(r.bytes(tag, wire)?)?;
                    if self.attributes.len() < max_attributes {
                        self.attributes.push(kv);
                    } else {
                        self.dropped_attributes += 1;
                    }
                }
                11 => {
                    let b = r.bytes(tag, wire)?;
                    // Validated now so that a malformed event fails the request like any other malformed field.
                    let event =
                        opentelemetry_proto::tonic::trace::v1::span::Event::decode(b).map_err(|e| r.error(e))?;
                    self.latest_event_time = self.latest_event_time.max(event.time_unix_nano);
                    self.events.push(b);
                }
                13 => {
                    let b = r.bytes(tag, wire)?;
                    opentelemetry_proto::tonic::trace::v1::span::Link::decode(b).map_err(|e| r.error(e))?;
                    self.links.push(b);
                }
                15 => self.read_status(r.bytes(tag, wire)?)?,
                16 => {
                    r.fixed32(tag, wire)?;
                }
                10 | 12 | 14 => {
                    r.varint(tag, wire)?;
                }
                _ => r.skip(tag, wire)?,
            }
        }
        Ok(())
    }

    fn read_status(&mut self, buf: &'a [u8]) -> Result<(), WireError> {
        let mut r = Reader::new(buf, "Status");
        while let Some((tag, wire)) = r.field()? {
            match tag {
                2 => self.status_message = r.string(tag, wire)?,
                3 => self.status_code = r.varint(tag, wire)? as i32,
                _ => r.skip(tag, wire)?,
            }
        }
        Ok(())
    }
}

/// An `ExportTraceServiceRequest` whose levels above the spans are known to be well-formed.
///
/// Nothing is collected per resource, scope or span: a request of millions of empty `ResourceSpans` (two bytes
/// each) would otherwise cost tens of bytes of views per two bytes of input. The levels are walked again as they
/// are used ([`TraceRequest::resource_spans`], [`scope_spans`], [`spans`]), which costs little: the walk skips each
/// span by its length.
#[derive(Debug, Clone, Copy)]
pub struct TraceRequest<'a> {
    body: &'a [u8],
    /// How many spans the request holds (well-formed or not; each is read by [`SpanView::read`]).
    pub spans: usize,
}

impl<'a> TraceRequest<'a> {
    /// The wire bytes of each `ResourceSpans`.
    pub fn resource_spans(&self) -> Fields<'a> {
        Fields::new(self.body, "ExportTraceServiceRequest", 1)
    }
}

/// The wire bytes of every occurrence of one length-delimited field of a message, other fields skipped.
#[derive(Debug)]
pub struct Fields<'a> {
    r: Reader<'a>,
    tag: u32,
}

impl<'a> Fields<'a> {
    fn new(buf: &'a [u8], path: &'static str, tag: u32) -> Self {
        Fields { r: Reader::new(buf, path), tag }
    }

    fn step(&mut self) -> Result<Option<&'a [u8]>, WireError> {
        while let Some((tag, wire)) = self.r.field()? {
            if tag == self.tag {
                return self.r.bytes(tag, wire).map(Some);
            }
            self.r.skip(tag, wire)?;
        }
        Ok(None)
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<&'a [u8], WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        let next = self.step().transpose();
        if matches!(next, Some(Err(_))) {
            // Nothing sensible follows a malformed field.
            self.r.buf = &[];
        }
        next
    }
}

/// Checks the levels of an `ExportTraceServiceRequest` above its spans and counts the spans; each span is
/// read later by [`SpanView::read`].
pub fn trace_request(body: &[u8]) -> Result<TraceRequest<'_>, WireError> {
    let mut spans = 0usize;
    let mut r = Reader::new(body, "ExportTraceServiceRequest");
    while let Some((tag, wire)) = r.field()? {
        match tag {
            1 => spans += check_resource_spans(r.bytes(tag, wire)?)?,
            _ => r.skip(tag, wire)?,
        }
    }
    Ok(TraceRequest { body, spans })
}

fn check_resource_spans(buf: &[u8]) -> Result<usize, WireError> {
    let mut spans = 0;
    let mut r = Reader::new(buf, "ResourceSpans");
    while let Some((tag, wire)) = r.field()? {
        match tag {
            // Decoded (and so checked) by `resource` when its spans are normalised.
            1 => {
                r.bytes(tag, wire)?;
            }
            2 => spans += check_scope_spans(r.bytes(tag, wire)?)?,
            3 => {
                r.string(tag, wire)?;
            }
            _ => r.skip(tag, wire)?,
        }
    }
    Ok(spans)
}

fn check_scope_spans(buf: &[u8]) -> Result<usize, WireError> {
    let mut spans = 0;
    let mut r = Reader::new(buf, "ScopeSpans");
    while let Some((tag, wire)) = r.field()? {
        match tag {
            1 => {
                r.bytes(tag, wire)?;
            }
            2 => {
                r.bytes(tag, wire)?;
                spans += 1;
            }
            3 => {
                r.string(tag, wire)?;
            }
            _ => r.skip(tag, wire)?,
        }
    }
    Ok(spans)
}

/// The `resource` of a `ResourceSpans` (every occurrence merged, as protobuf does).
pub fn resource(resource_spans: &[u8]) -> Result<Option<Resource>, WireError> {
    let mut resource = None;
    let mut r = Reader::new(resource_spans, "ResourceSpans");
    while let Some((tag, wire)) = r.field()? {
        match tag {
            1 => r.merge(tag, wire, &mut resource)?,
            _ => r.skip(tag, wire)?,
        }
    }
    Ok(resource)
}

/// The wire bytes of each `ScopeSpans` of a `ResourceSpans`.
pub fn scope_spans(resource_spans: &[u8]) -> Fields<'_> {
    Fields::new(resource_spans, "ResourceSpans", 2)
}

/// The `scope` of a `ScopeSpans` (every occurrence merged).
pub fn scope(scope_spans: &[u8]) -> Result<Option<InstrumentationScope>, WireError> {
    let mut scope = None;
    let mut r = Reader::new(scope_spans, "ScopeSpans");
    while let Some((tag, wire)) = r.field()? {
        match tag {
            1 => r.merge(tag, wire, &mut scope)?,
            _ => r.skip(tag, wire)?,
        }
    }
    Ok(scope)
}

/// The wire bytes of each span of a `ScopeSpans`.
pub fn spans(scope_spans: &[u8]) -> Fields<'_> {
    Fields::new(scope_spans, "ScopeSpans", 2)
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::KeyValue;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span};

    use super::*;

    fn kv(key: &str, value: any_value::Value) -> KeyValue {
        KeyValue { key: key.into(), value: Some(AnyValue { value: Some(value) }), ..Default::default() }
    }

    fn request(span: Span) -> Vec<u8> {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![kv("service.name", any_value::Value::StringValue("svc".into()))],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope { name: "lib".into(), ..Default::default() }),
                    spans: vec![span],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
        .encode_to_vec()
    }

    /// The `i`-th resource spans, its `j`-th scope spans and that scope's first span.
    fn first(body: &[u8], i: usize, j: usize) -> (&[u8], &[u8], &[u8]) {
        let rs = trace_request(body).unwrap().resource_spans().nth(i).unwrap().unwrap();
        let ss = scope_spans(rs).nth(j).unwrap().unwrap();
        (rs, ss, spans(ss).next().unwrap().unwrap())
    }

    /// Every field the prost types carry comes out of the borrowed reader with the same value.
    #[test]
    fn agrees_with_prost_on_every_span_field() {
        use any_value::Value;
        let span = Span {
            trace_id: vec![7; 16],
            span_id: vec![3; 8],
            trace_state: "k=v".into(),
            parent_span_id: vec![1; 8],
            flags: 0x301,
            name: "chat gpt-4o".into(),
            kind: 3,
            start_time_unix_nano: 1_700_000_000_000_000_000,
            end_time_unix_nano: 1_700_000_000_500_000_000,
            attributes: vec![
                kv("s", Value::StringValue("x".into())),
                kv("b", Value::BoolValue(true)),
                kv("i", Value::IntValue(-42)),
                kv("d", Value::DoubleValue(0.25)),
                kv("y", Value::BytesValue(vec![0xab, 0xcd])),
                kv("a", Value::ArrayValue(ArrayValue { values: vec![AnyValue { value: Some(Value::IntValue(1)) }] })),
                kv("m", Value::KvlistValue(KeyValueList { values: vec![kv("k", Value::StringValue("v".into()))] })),
                KeyValue { key: "empty".into(), value: None, ..Default::default() },
            ],
            dropped_attributes_count: 2,
            events: vec![span::Event { time_unix_nano: 5, name: "e".into(), ..Default::default() }],
            dropped_events_count: 1,
            links: vec![span::Link { trace_id: vec![9; 16], span_id: vec![8; 8], ..Default::default() }],
            dropped_links_count: 3,
            status: Some(Status { message: "boom".into(), code: 2 }),
        };
        let body = request(span.clone());
        let rs = first(&body, 0, 0).0;
        assert_eq!(resource(rs).unwrap().unwrap().attributes.len(), 1);
        let ss = scope_spans(rs).next().unwrap().unwrap();
        assert_eq!(scope(ss).unwrap().unwrap().name, "lib");
        let mut v = SpanView::default();
        v.read(first(&body, 0, 0).2).unwrap();
        assert_eq!(
            (v.trace_id, v.span_id, v.parent_span_id),
            (&span.trace_id[..], &span.span_id[..], &span.parent_span_id[..])
        );
        assert_eq!((v.trace_state, v.name, v.kind), ("k=v", "chat gpt-4o", 3));
        assert_eq!(
            (v.start_time_unix_nano, v.end_time_unix_nano),
            (span.start_time_unix_nano, span.end_time_unix_nano)
        );
        assert_eq!((v.status_code, v.status_message), (2, "boom"));
        assert_eq!((v.events.len(), v.links.len()), (1, 1));
        assert_eq!(span::Event::decode(v.events[0]).unwrap(), span.events[0]);
        let got: Vec<_> = v
            .attributes
            .iter()
            .map(|(k, v)| {
                (
                    *k,
                    v.map(|v| match v {
                        Val::Nested(n) => Val::Nested(Nested::Decoded(Box::leak(Box::new(n.decode())))),
                        v => v,
                    }),
                )
            })
            .collect();
        let want: Vec<_> = span.attributes.iter().map(|kv| (kv.key.as_str(), Val::of(kv.value.as_ref()))).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn names_what_is_malformed() {
        let mut body = request(Span { trace_id: vec![7; 16], span_id: vec![3; 8], ..Default::default() });
        let mut v = SpanView::default();
        v.read(first(&body, 0, 0).2).unwrap();
        // Truncated: the outer length now overruns the body.
        body.pop();
        let e = trace_request(&body).unwrap_err();
        assert_eq!(e.path, "ExportTraceServiceRequest");
        assert!(e.message.contains("remain"), "{e}");
        // A string field holding invalid UTF-8.
        let bad = [0x2a, 0x02, 0xff, 0xfe]; // field 5 (name), 2 bytes
        let e = SpanView::default().read(&bad).unwrap_err();
        assert!(e.path == "Span" && e.message.contains("not valid UTF-8"), "{e}");
        // A known field with the wrong wire type: start time (fixed64) sent as a varint.
        let e = SpanView::default().read(&[0x38, 0x01]).unwrap_err();
        assert!(e.message.contains("wire type"), "{e}");
        // Unknown fields of every wire type are skipped.
        let unknown = [0xa8, 0x06, 0x01, 0xb1, 0x06, 0, 0, 0, 0, 0, 0, 0, 0, 0xba, 0x06, 0x01, 0x00];
        SpanView::default().read(&unknown).unwrap();
    }

    // -----------------------------------------------------------------------------------------------------------
    // The reader against prost: generated requests and byte mutations of them must be accepted or refused alike,
    // and, when accepted, give the same spans. Seeded, so a failure names its case; `WIRE_PROPTEST_CASES` raises
    // the count for a longer run (docs/reliability.md).

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// A span as both readers see it: every field the normaliser uses, attributes and events decoded.
    #[derive(Debug)]
    #[allow(dead_code)] // compared through `Debug`
    struct Seen {
        resource: Option<Resource>,
        scope: Option<InstrumentationScope>,
        ids: (Vec<u8>, Vec<u8>, Vec<u8>),
        strings: (String, String, String),
        kind: i32,
        times: (u64, u64),
        attributes: Vec<(String, Option<AnyValue>)>,
        events: Vec<span::Event>,
        links: Vec<span::Link>,
        status: i32,
    }

    fn owned(v: Option<Val<'_>>) -> Option<AnyValue> {
        use any_value::Value as V;
        let value = match v? {
            Val::Str(s) => V::StringValue(s.into()),
            Val::Bool(b) => V::BoolValue(b),
            Val::Int(i) => V::IntValue(i),
            Val::Double(d) => V::DoubleValue(d),
            Val::Bytes(b) => V::BytesValue(b.to_vec()),
            Val::Strindex(i) => V::StringValueStrindex(i),
            Val::Nested(n) => return Some(n.decode()),
        };
        Some(AnyValue { value: Some(value) })
    }

    fn via_wire(body: &[u8]) -> Result<Vec<Seen>, WireError> {
        let mut out = Vec::new();
        for rs in trace_request(body)?.resource_spans() {
            let rs = rs?;
            let resource = super::resource(rs)?;
            for ss in scope_spans(rs) {
                let ss = ss?;
                let scope = super::scope(ss)?;
                for bytes in spans(ss) {
                    let mut v = SpanView::default();
                    v.read(bytes?)?;
                    out.push(Seen {
                        resource: resource.clone(),
                        scope: scope.clone(),
                        ids: (v.trace_id.to_vec(), v.span_id.to_vec(), v.parent_span_id.to_vec()),
                        strings: (v.trace_state.into(), v.name.into(), v.status_message.into()),
                        kind: v.kind,
                        times: (v.start_time_unix_nano, v.end_time_unix_nano),
                        attributes: v.attributes.iter().map(|(k, v)| (k.to_string(), owned(*v))).collect(),
                        events: v.events.iter().map(|b| span::Event::decode(*b).unwrap()).collect(),
                        links: v.links.iter().map(|b| span::Link::decode(*b).unwrap()).collect(),
                        status: v.status_code,
                    });
                }
            }
        }
        Ok(out)
    }

    fn via_prost(body: &[u8]) -> Result<Vec<Seen>, prost::DecodeError> {
        let request = ExportTraceServiceRequest::decode(body)?;
        let mut out = Vec::new();
        for rs in request.resource_spans {
            for ss in rs.scope_spans {
                for s in ss.spans {
                    let status = s.status.unwrap_or_default();
                    out.push(Seen {
                        resource: rs.resource.clone(),
                        scope: ss.scope.clone(),
                        ids: (s.trace_id, s.span_id, s.parent_span_id),
                        strings: (s.trace_state, s.name, status.message),
                        kind: s.kind,
                        times: (s.start_time_unix_nano, s.end_time_unix_nano),
                        // An attribute whose AnyValue holds nothing reads as no value, as the normaliser stores it.
                        attributes: s
                            .attributes
                            .into_iter()
                            .map(|kv| (kv.key, kv.value.filter(|v| v.value.is_some())))
                            .collect(),
                        events: s.events,
                        links: s.links,
                        status: status.code,
                    });
                }
            }
        }
        Ok(out)
    }

    fn text(rng: &mut StdRng) -> String {
        const PIECES: [&str; 8] = ["gen_ai.request.model", "gpt-4o", "", "x", "é", "日本", "a.b.c", "0"];
        (0..rng.random_range(0..3)).map(|_| PIECES[rng.random_range(0..PIECES.len())]).collect()
    }

    fn value(rng: &mut StdRng, depth: u32) -> AnyValue {
        use any_value::Value as V;
        let value = match rng.random_range(0..if depth > 0 { 10 } else { 8 }) {
            0 => None,
            1 | 2 => Some(V::StringValue(text(rng))),
            3 => Some(V::BoolValue(rng.random())),
            4 => Some(V::IntValue(rng.random())),
            5 => Some(V::DoubleValue(f64::from_bits(rng.random::<u64>() & !(0x7ff << 52)))),
            6 => Some(V::BytesValue((0..rng.random_range(0..4)).map(|_| rng.random()).collect())),
            7 => Some(V::StringValueStrindex(rng.random_range(0..5))),
            8 => Some(V::ArrayValue(ArrayValue {
                values: (0..rng.random_range(0..3)).map(|_| value(rng, depth - 1)).collect(),
            })),
            _ => Some(V::KvlistValue(KeyValueList { values: attributes(rng, depth - 1) })),
        };
        AnyValue { value }
    }

    fn attributes(rng: &mut StdRng, depth: u32) -> Vec<KeyValue> {
        (0..rng.random_range(0..4))
            .map(|_| KeyValue {
                key: text(rng),
                value: rng.random_bool(0.9).then(|| value(rng, depth)),
                key_strindex: if rng.random_bool(0.1) { rng.random_range(0..3) } else { 0 },
            })
            .collect()
    }

    fn id(rng: &mut StdRng, len: usize) -> Vec<u8> {
        let len = if rng.random_bool(0.9) { len } else { rng.random_range(0..20) };
        (0..len).map(|_| rng.random()).collect()
    }

    fn generated(rng: &mut StdRng) -> ExportTraceServiceRequest {
        let resource_spans = (0..rng.random_range(0..3))
            .map(|_| ResourceSpans {
                resource: rng
                    .random_bool(0.8)
                    .then(|| Resource { attributes: attributes(rng, 2), ..Default::default() }),
                scope_spans: (0..rng.random_range(0..3))
                    .map(|_| ScopeSpans {
                        scope: rng.random_bool(0.7).then(|| InstrumentationScope {
                            name: text(rng),
                            version: text(rng),
                            ..Default::default()
                        }),
                        spans: (0..rng.random_range(0..4))
                            .map(|_| Span {
                                trace_id: id(rng, 16),
                                span_id: id(rng, 8),
                                parent_span_id: id(rng, 8),
                                trace_state: text(rng),
                                flags: rng.random(),
                                name: text(rng),
                                kind: rng.random_range(0..6),
                                start_time_unix_nano: rng.random(),
                                end_time_unix_nano: rng.random(),
                                attributes: attributes(rng, 3),
                                dropped_attributes_count: rng.random_range(0..3),
                                events: (0..rng.random_range(0..2))
                                    .map(|_| span::Event {
                                        time_unix_nano: rng.random(),
                                        name: text(rng),
                                        attributes: attributes(rng, 1),
                                        ..Default::default()
                                    })
                                    .collect(),
                                links: (0..rng.random_range(0..2))
                                    .map(|_| span::Link {
                                        trace_id: id(rng, 16),
                                        span_id: id(rng, 8),
                                        attributes: attributes(rng, 1),
                                        ..Default::default()
                                    })
                                    .collect(),
                                status: rng
                                    .random_bool(0.5)
                                    .then(|| Status { message: text(rng), code: rng.random_range(0..3) }),
                                ..Default::default()
                            })
                            .collect(),
                        schema_url: text(rng),
                    })
                    .collect(),
                schema_url: text(rng),
            })
            .collect();
        ExportTraceServiceRequest { resource_spans }
    }

    /// A few random edits: flipped bits, overwritten, inserted and removed bytes, truncation.
    fn mutate(rng: &mut StdRng, body: &mut Vec<u8>) {
        for _ in 0..rng.random_range(1..4) {
            if body.is_empty() {
                body.push(rng.random());
                continue;
            }
            let at = rng.random_range(0..body.len());
            match rng.random_range(0..5) {
                0 => body[at] ^= 1 << rng.random_range(0..8),
                1 => body[at] = rng.random(),
                2 => body.insert(at, rng.random()),
                3 => {
                    let end = (at + rng.random_range(1..8)).min(body.len());
                    body.drain(at..end);
                }
                _ => body.truncate(at),
            }
        }
    }

    fn cases(default: usize) -> usize {
        std::env::var("WIRE_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
    }

    fn agree(body: &[u8], case: &str) -> bool {
        match (via_wire(body), via_prost(body)) {
            (Ok(a), Ok(b)) => {
                // Compared as text: a mutated double may be NaN, which is unequal to itself.
                assert_eq!(
                    format!("{a:?}"),
                    format!("{b:?}"),
                    "{case}: the readers disagree on the spans of {body:02x?}"
                );
                true
            }
            (Err(_), Err(_)) => false,
            (a, b) => panic!("{case}: wire {:?} but prost {:?} for {body:02x?}", a.err(), b.err()),
        }
    }

    #[test]
    fn agrees_with_prost_on_generated_requests() {
        let mut rng = StdRng::seed_from_u64(12);
        for case in 0..cases(300) {
            let body = generated(&mut rng).encode_to_vec();
            assert!(agree(&body, &format!("case {case}")), "case {case}: a valid request was refused");
        }
    }

    #[test]
    fn agrees_with_prost_on_mutated_requests() {
        let mut rng = StdRng::seed_from_u64(1212);
        let mut accepted = 0;
        let n = cases(600);
        for case in 0..n {
            let mut body = generated(&mut rng).encode_to_vec();
            mutate(&mut rng, &mut body);
            accepted += usize::from(agree(&body, &format!("case {case}")));
        }
        // Both outcomes are exercised: some mutations keep a valid request, most break it.
        assert!(accepted > n / 20 && accepted < n * 19 / 20, "{accepted} of {n} mutated requests accepted");
    }

    /// Repeated nested values merge in protobuf: the reader must give what prost gives.
    #[test]
    fn repeated_nested_values_merge_as_in_prost() {
        use any_value::Value as V;
        let array = |i: i64| AnyValue {
            value: Some(V::ArrayValue(ArrayValue { values: vec![AnyValue { value: Some(V::IntValue(i)) }] })),
        };
        let kv = |v: AnyValue| KeyValue { key: "k".into(), value: Some(v), ..Default::default() };
        let base = Span { trace_id: vec![1; 16], span_id: vec![1; 8], ..Default::default() };
        // Two `value` fields in one KeyValue, then two `array_value` fields in one AnyValue.
        let mut twice_in_kv = kv(array(1)).encode_to_vec();
        twice_in_kv.extend(kv(array(2)).encode_to_vec()[3..].iter());
        let mut twice_in_any = array(1).encode_to_vec();
        twice_in_any.extend(array(2).encode_to_vec());
        let in_kv = [&[0x0a, 0x01, b'k', 0x12][..], &[twice_in_any.len() as u8], &twice_in_any].concat();
        for attribute in [twice_in_kv, in_kv] {
            let mut span = base.encode_to_vec();
            span.push(0x4a);
            span.push(attribute.len() as u8);
            span.extend(attribute);
            let mut scope = vec![0x12, span.len() as u8];
            scope.extend(span);
            let mut rs = vec![0x12, scope.len() as u8];
            rs.extend(scope);
            let mut body = vec![0x0a, rs.len() as u8];
            body.extend(rs);
            assert!(agree(&body, "merge"));
            let values = via_wire(&body).unwrap()[0].attributes[0].1.clone().unwrap();
            let int = |i: i64| AnyValue { value: Some(V::IntValue(i)) };
            assert_eq!(values, AnyValue { value: Some(V::ArrayValue(ArrayValue { values: vec![int(1), int(2)] })) });
        }
    }

    /// `depth` AnyValues nested in arrays, built from the inside out without recursion.
    fn nested(depth: usize) -> Vec<u8> {
        fn varint(mut n: usize, out: &mut Vec<u8>) {
            while n >= 0x80 {
                out.push((n as u8) | 0x80);
                n >>= 7;
            }
            out.push(n as u8);
        }
        // Written back to front: each level prepends its tag and length.
        let mut rev: Vec<u8> = Vec::new();
        for _ in 0..depth {
            for tag in [0x0a, 0x2a] {
                let mut len = Vec::new();
                varint(rev.len(), &mut len);
                rev.extend(len.iter().rev());
                rev.push(tag);
            }
        }
        rev.reverse();
        rev
    }

    /// Nesting 100,000 deep is refused as malformed, with no recursion that deep (a stack overflow would abort
    /// the test binary), by the reader and by prost alike.
    #[test]
    fn deep_nesting_is_refused_without_recursion() {
        let value = nested(100_000);
        let attribute = [
            &[0x12][..],
            &{
                let mut l = Vec::new();
                let mut n = value.len();
                while n >= 0x80 {
                    l.push((n as u8) | 0x80);
                    n >>= 7;
                }
                l.push(n as u8);
                l
            },
            &value,
        ]
        .concat();
        let kv = KeyValue::decode(&attribute[..]);
        assert!(kv.is_err(), "prost refuses it too");
        let e = key_value(&attribute).unwrap_err();
        assert!(e.message.contains("recursion limit"), "{e}");
        // Shallow nesting is fine.
        let shallow = nested(20);
        assert!(matches!(any_value(&shallow).unwrap(), Some(Val::Nested(Nested::Array(_)))));
    }
}
