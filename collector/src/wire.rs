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

use opentelemetry_proto::tonic::common::v1::{AnyValue, ArrayValue, InstrumentationScope, KeyValueList, any_value};
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
    fn merge<M: Message>(&mut self, tag: u32, wire: WireType, into: &mut Option<M>) -> Result<(), WireError>
    where
        M: Default,
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
        };
        AnyValue { value }
    }
}

/// Reads an `AnyValue` message; `None` when it holds no value.
fn any_value(buf: &[u8]) -> Result<Option<Val<'_>>, WireError> {
    let mut r = Reader::new(buf, "AnyValue");
    let mut value = None;
    while let Some((tag, wire)) = r.field()? {
        value = Some(match tag {
            1 => Val::Str(r.string(tag, wire)?),
            2 => Val::Bool(r.varint(tag, wire)? != 0),
            3 => Val::Int(r.varint(tag, wire)? as i64),
            4 => Val::Double(f64::from_bits(r.fixed64(tag, wire)?)),
            5 => {
                let b = r.bytes(tag, wire)?;
                ArrayValue::decode(b).map_err(|e| r.error(e))?;
                Val::Nested(Nested::Array(b))
            }
            6 => {
                let b = r.bytes(tag, wire)?;
                KeyValueList::decode(b).map_err(|e| r.error(e))?;
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
    Ok(value)
}

/// Reads a `KeyValue` message.
fn key_value(buf: &[u8]) -> Result<(&str, Option<Val<'_>>), WireError> {
    let mut r = Reader::new(buf, "KeyValue");
    let (mut key, mut value) = ("", None);
    while let Some((tag, wire)) = r.field()? {
        match tag {
            1 => key = r.string(tag, wire)?,
            2 => value = any_value(r.bytes(tag, wire)?)?,
            _ => r.skip(tag, wire)?,
        }
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
    /// `attributes`, in order.
    pub attributes: Vec<(&'a str, Option<Val<'a>>)>,
    /// The wire bytes of each `Span.Event`.
    pub events: Vec<&'a [u8]>,
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
        self.trace_id = &[];
        self.span_id = &[];
        self.trace_state = "";
        self.parent_span_id = &[];
        self.name = "";
        self.kind = 0;
        self.start_time_unix_nano = 0;
        self.end_time_unix_nano = 0;
        self.attributes.clear();
        self.events.clear();
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
                9 => self.attributes.push(key_value(r.bytes(tag, wire)?)?),
                11 => {
                    let b = r.bytes(tag, wire)?;
                    // Validated now so that a malformed event fails the request like any other malformed field.
                    opentelemetry_proto::tonic::trace::v1::span::Event::decode(b).map_err(|e| r.error(e))?;
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

/// One `ScopeSpans`: its scope (decoded) and its spans (still encoded).
#[derive(Debug, Default)]
pub struct ScopeSpansView<'a> {
    /// `scope`.
    pub scope: Option<InstrumentationScope>,
    /// The wire bytes of each span.
    pub spans: Vec<&'a [u8]>,
}

/// One `ResourceSpans`: its resource (decoded) and its scopes.
#[derive(Debug, Default)]
pub struct ResourceSpansView<'a> {
    /// `resource`.
    pub resource: Option<Resource>,
    /// `scope_spans`.
    pub scope_spans: Vec<ScopeSpansView<'a>>,
}

/// Reads the outer levels of an `ExportTraceServiceRequest`, leaving each span to [`SpanView::read`].
pub fn trace_request(body: &[u8]) -> Result<Vec<ResourceSpansView<'_>>, WireError> {
    let mut out = Vec::new();
    let mut r = Reader::new(body, "ExportTraceServiceRequest");
    while let Some((tag, wire)) = r.field()? {
        match tag {
            1 => out.push(resource_spans(r.bytes(tag, wire)?)?),
            _ => r.skip(tag, wire)?,
        }
    }
    Ok(out)
}

fn resource_spans(buf: &[u8]) -> Result<ResourceSpansView<'_>, WireError> {
    let mut view = ResourceSpansView::default();
    let mut r = Reader::new(buf, "ResourceSpans");
    while let Some((tag, wire)) = r.field()? {
        match tag {
            1 => r.merge(tag, wire, &mut view.resource)?,
            2 => view.scope_spans.push(scope_spans(r.bytes(tag, wire)?)?),
            3 => {
                r.string(tag, wire)?;
            }
            _ => r.skip(tag, wire)?,
        }
    }
    Ok(view)
}

fn scope_spans(buf: &[u8]) -> Result<ScopeSpansView<'_>, WireError> {
    let mut view = ScopeSpansView::default();
    let mut r = Reader::new(buf, "ScopeSpans");
    while let Some((tag, wire)) = r.field()? {
        match tag {
            1 => r.merge(tag, wire, &mut view.scope)?,
            2 => view.spans.push(r.bytes(tag, wire)?),
            3 => {
                r.string(tag, wire)?;
            }
            _ => r.skip(tag, wire)?,
        }
    }
    Ok(view)
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
        let rs = trace_request(&body).unwrap();
        assert_eq!(rs[0].resource.as_ref().unwrap().attributes.len(), 1);
        assert_eq!(rs[0].scope_spans[0].scope.as_ref().unwrap().name, "lib");
        let mut v = SpanView::default();
        v.read(rs[0].scope_spans[0].spans[0]).unwrap();
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
        let rs = trace_request(&body).unwrap();
        let mut v = SpanView::default();
        v.read(rs[0].scope_spans[0].spans[0]).unwrap();
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
}
