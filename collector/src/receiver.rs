//! What both OTLP transports do with a decoded request: normalise, make durable, count, and answer with
//! OTLP's `partial_success` where items were rejected one by one.

use std::sync::Arc;

use bytes::Bytes;
use prost::Message;

use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};

use tailscope_core::memory::{MemoryBudget, Reservation};
use tailscope_core::projects::Project;
use tailscope_core::schema::Signal;

use crate::cost::Pricer;
use crate::error::IngestError;
use crate::ingest::Ingest;
use crate::normalize::{self, Normalized};
use crate::telemetry::Metrics;

/// Bytes that normalising an OTLP trace export holds at its peak per byte of protobuf body, on top of the body
/// (Arrow builders with their doubling capacity, then the finished batch), plus [`NORMALISED_FIXED_BYTES`]. The
/// finished batch of an SDK-like export is 1.6-2.2 bytes per body byte from 200 spans up
/// (`the_normalise_reservation_covers_the_batch` below), 2.03 on the benchmark corpus (the `arrow:` line of
/// `benches/src/bin/normalize.rs`); the batch is reserved exactly once it exists.
pub const NORMALISED_BYTES_PER_BODY_BYTE: usize = 3;

/// What a batch holds whatever its rows: ~50 columns, each a few buffers with their builders' initial capacity
/// (136 kB for a one-span request).
pub const NORMALISED_FIXED_BYTES: usize = 256 * 1024;

/// The same for bodies decoded into prost's owned structs first (OTLP/JSON, metrics, logs): the structs, then
/// the batch.
pub const DECODED_BYTES_PER_BODY_BYTE: usize = 6;

/// What decoding a body of `body_len` bytes holds at its peak, `factor` bytes per body byte on top of the body.
fn decode_peak(body_len: usize, factor: usize) -> usize {
    body_len.saturating_add(body_len.saturating_mul(factor)).saturating_add(NORMALISED_FIXED_BYTES)
}

/// Accepts decoded export requests of every signal. Shared by the gRPC and HTTP servers.
#[derive(Clone)]
pub struct Receiver {
    ingest: Arc<Ingest>,
    pricer: Arc<Pricer>,
}

/// How many items a request held and how many were rejected, with why.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    /// Items rejected one by one.
    pub rejected: i64,
    /// Why (empty when nothing was rejected).
    pub message: String,
}

impl Receiver {
    /// A receiver writing through `ingest`, pricing spans with `pricer`.
    pub fn new(ingest: Arc<Ingest>, pricer: Arc<Pricer>) -> Receiver {
        Receiver { ingest, pricer }
    }

    /// The write path's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        self.ingest.metrics()
    }

    /// The server's configuration.
    pub fn config(&self) -> &tailscope_core::config::Config {
        self.ingest.config()
    }

    /// The configured largest body, after decompression.
    pub fn max_body_bytes(&self) -> usize {
        self.ingest.config().ingest.max_body_bytes
    }

    /// The delay suggested to clients under backpressure.
    pub fn retry_after(&self) -> std::time::Duration {
        self.ingest.config().ingest.retry_after
    }

    /// The process-wide memory budget requests are admitted against.
    pub fn memory(&self) -> &MemoryBudget {
        self.ingest.memory()
    }

    /// Counts a request refused at the memory ceiling before it could be decoded, and remembers the refusal for
    /// `/readyz` (unless it could never have fit: that says nothing about the load).
    pub fn refuse_for_memory(&self, signal: Signal, error: &IngestError) {
        if error.is_retryable() {
            self.ingest.note_refusal();
        }
        self.reject_request(signal, error);
    }

    /// Reserves what decoding and normalising `body_len` bytes will hold at their peak, on top of the body that
    /// `reservation` holds already (see [`NORMALISED_BYTES_PER_BODY_BYTE`]); refused past the ceiling, counted.
    fn reserve_decoding(
        &self,
        signal: Signal,
        reservation: &mut Reservation,
        body_len: usize,
        factor: usize,
    ) -> Result<(), IngestError> {
        let peak = decode_peak(body_len, factor);
        reservation.try_resize(peak.max(reservation.size()), &"decoding a request").map_err(|e| {
            let error = IngestError::from(e);
            self.refuse_for_memory(signal, &error);
            error
        })
    }

    /// The least a body of `body_len` bytes holds while it is decoded and normalised (the body included): a
    /// request announcing a length whose peak passes the whole budget is refused before it is read. `protobuf`:
    /// the body is OTLP protobuf (not JSON); `compressed`: it is, so its decoded length is unknown.
    pub fn least_peak(protobuf: bool, compressed: bool, body_len: usize) -> usize {
        if compressed {
            return 0;
        }
        // Protobuf metrics and logs are estimated by a walk of the body (`crate::prescan`), never below the
        // batch's share.
        let factor = if protobuf { NORMALISED_BYTES_PER_BODY_BYTE } else { DECODED_BYTES_PER_BODY_BYTE };
        decode_peak(body_len, factor)
    }

    /// Counts a request rejected before it could be decoded.
    pub fn reject_request(&self, signal: Signal, error: &IngestError) {
        self.metrics().reject_request(signal, error.reason());
        if error.is_permanent_refusal() {
            self.metrics().memory_refusals_permanent.inc();
        }
    }

    /// `request`: the trace export's protobuf, for the WAL (see [`Ingest::submit`]). `reservation` holds the
    /// request's memory; it is set to what exists now (the body and the batch) and the batch's share moves to the
    /// buffer.
    async fn accept(
        &self,
        normalized: Normalized,
        project: Project,
        request: Option<Bytes>,
        body_len: usize,
        reservation: &mut Reservation,
    ) -> Result<Outcome, IngestError> {
        let metrics = self.metrics();
        let signal = normalized.signal;
        Metrics::count(&metrics.received, signal, normalized.received());
        // What the request holds now: its body (the WAL writes it) and the batch. Both exist already, so this is
        // not refused; the decode peak reserved before is given back.
        reservation.force_resize(body_len + normalized.batch.get_array_memory_size());
        if let Err(e) = self.ingest.submit_reserved(&normalized, project, request, reservation).await {
            metrics.reject_request(signal, e.reason());
            metrics.reject(signal, e.reason(), normalized.received());
            return Err(e);
        }
        Metrics::count(&metrics.accepted, signal, normalized.batch.num_rows() as u64);
        if normalized.rejected > 0 {
            metrics.reject(signal, "invalid", normalized.rejected);
            tracing::debug!(%signal, rejected = normalized.rejected, reason = %normalized.reject_message, "partial success");
        }
        metrics.unpriced_spans.inc_by(normalized.unpriced);
        Ok(Outcome { rejected: normalized.rejected as i64, message: normalized.reject_message })
    }

    /// Stores a trace export that arrived as OTLP protobuf, read in place (see [`crate::wire`]). `reservation`
    /// holds the body's memory (see [`crate::admission`]); the normalised batch is reserved before it is built.
    pub async fn traces_protobuf(
        &self,
        body: Bytes,
        project: Project,
        reservation: &mut Reservation,
    ) -> Result<ExportTraceServiceResponse, IngestError> {
        self.reserve_decoding(Signal::Spans, reservation, body.len(), NORMALISED_BYTES_PER_BODY_BYTE)?;
        let limits = normalize::Limits::from(&self.ingest.config().ingest);
        let normalized = normalize::normalize_traces_limited(&body, &self.pricer, limits).map_err(|e| {
            let detail = match e {
                normalize::NormalizeError::Wire(e) => format!("{e}; is the body an OTLP ExportTraceServiceRequest?"),
                e @ normalize::NormalizeError::TooRepetitive { .. } => e.to_string(),
            };
            let error = IngestError::Malformed { format: "protobuf", detail };
            self.reject_request(Signal::Spans, &error);
            error
        })?;
        let body_len = body.len();
        Ok(Self::trace_response(self.accept(normalized, project, Some(body), body_len, reservation).await?))
    }

    /// Stores a decoded trace export (OTLP/JSON).
    pub async fn traces(
        &self,
        request: ExportTraceServiceRequest,
        project: Project,
        reservation: &mut Reservation,
    ) -> Result<ExportTraceServiceResponse, IngestError> {
        // One normaliser for both encodings: prost's encoding of what it decoded is well-formed, and it is what
        // the WAL keeps.
        let body = Bytes::from(request.encode_to_vec());
        drop(request);
        self.traces_protobuf(body, project, reservation).await
    }

    /// Reserves the decode peak of a body in a format decoded to owned structs (OTLP/JSON, metrics, logs) before
    /// decoding it.
    pub fn reserve_owned_decoding(
        &self,
        signal: Signal,
        reservation: &mut Reservation,
        body_len: usize,
    ) -> Result<(), IngestError> {
        self.reserve_decoding(signal, reservation, body_len, DECODED_BYTES_PER_BODY_BYTE)
    }

    /// Reserves what decoding a protobuf metrics or logs body with prost, then normalising it, will hold, as
    /// [`crate::prescan`] bounds it from the body's messages (not its bytes: an empty item costs tens of bytes
    /// decoded). A body that does not walk as protobuf is refused as malformed, like prost would; one whose
    /// estimate passes the whole budget is refused for good (413 / RESOURCE_EXHAUSTED), one that does not fit now,
    /// for now.
    pub fn reserve_prescanned(
        &self,
        signal: Signal,
        reservation: &mut Reservation,
        body: &[u8],
    ) -> Result<(), IngestError> {
        let estimate = Self::decoding_estimate(signal, body).inspect_err(|e| self.reject_request(signal, e))?;
        let peak = body.len().saturating_add(estimate.total()).saturating_add(NORMALISED_FIXED_BYTES);
        let purpose = format!(
            "decoding a {signal} export of {} bytes ({} messages, {} rows)",
            body.len(),
            estimate.messages,
            estimate.rows
        );
        reservation.try_resize(peak.max(reservation.size()), &purpose).map_err(|e| {
            let error = IngestError::from(e);
            self.refuse_for_memory(signal, &error);
            error
        })
    }

    /// What decoding a protobuf metrics or logs body with prost and normalising it will hold besides the body
    /// ([`crate::prescan`]); a body that cannot be walked is malformed, as prost would find it.
    pub fn decoding_estimate(signal: Signal, body: &[u8]) -> Result<crate::prescan::Estimate, IngestError> {
        match crate::prescan::estimate(signal, body) {
            Ok(e) => Ok(e),
            // Groups are not OTLP, but prost skips them: let it, with the estimate of the worst body.
            Err(crate::prescan::ScanError::Groups) => Ok(crate::prescan::Estimate::worst_case(body.len())),
            Err(e) => Err(IngestError::Malformed {
                format: "protobuf",
                detail: format!("{e}; is the body an OTLP Export*ServiceRequest?"),
            }),
        }
    }

    fn trace_response(outcome: Outcome) -> ExportTraceServiceResponse {
        ExportTraceServiceResponse {
            // With nothing rejected, a message is a warning (attributes dropped), which OTLP sends the same way.
            partial_success: (outcome.rejected > 0 || !outcome.message.is_empty()).then_some(
                ExportTracePartialSuccess { rejected_spans: outcome.rejected, error_message: outcome.message },
            ),
        }
    }

    /// Stores a metrics export.
    pub async fn metrics_export(
        &self,
        request: ExportMetricsServiceRequest,
        project: Project,
        reservation: &mut Reservation,
    ) -> Result<ExportMetricsServiceResponse, IngestError> {
        let normalized = normalize::normalize_metrics(&request);
        let held = request.encoded_len();
        drop(request);
        let outcome = self.accept(normalized, project, None, held, reservation).await?;
        Ok(ExportMetricsServiceResponse {
            partial_success: (outcome.rejected > 0).then_some(ExportMetricsPartialSuccess {
                rejected_data_points: outcome.rejected,
                error_message: outcome.message,
            }),
        })
    }

    /// Stores a logs export.
    pub async fn logs(
        &self,
        request: ExportLogsServiceRequest,
        project: Project,
        reservation: &mut Reservation,
    ) -> Result<ExportLogsServiceResponse, IngestError> {
        let now = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0);
        let normalized = normalize::normalize_logs(&request, now);
        let held = request.encoded_len();
        drop(request);
        let outcome = self.accept(normalized, project, None, held, reservation).await?;
        Ok(ExportLogsServiceResponse {
            partial_success: (outcome.rejected > 0).then_some(ExportLogsPartialSuccess {
                rejected_log_records: outcome.rejected,
                error_message: outcome.message,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

    fn kv(key: &str, value: any_value::Value) -> KeyValue {
        KeyValue { key: key.into(), value: Some(AnyValue { value: Some(value) }), ..Default::default() }
    }

    /// An SDK-like export of `n` agent LLM spans with ~20 attributes each (the ingest benchmark's shape).
    fn agent_request(n: u64) -> ExportTraceServiceRequest {
        let s = |v: String| any_value::Value::StringValue(v);
        let i = any_value::Value::IntValue;
        let spans = (0..n)
            .map(|k| Span {
                trace_id: [k.to_be_bytes(), (k * 7).to_be_bytes()].concat(),
                span_id: (k + 1).to_be_bytes().to_vec(),
                parent_span_id: (k / 4 + 1).to_be_bytes().to_vec(),
                name: "chat gpt-4o".into(),
                kind: 3,
                start_time_unix_nano: 1_700_000_000_000_000_000 + k * 1_000_000,
                end_time_unix_nano: 1_700_000_000_500_000_000 + k * 1_000_000,
                attributes: vec![
                    kv("gen_ai.provider.name", s("openai".into())),
                    kv("gen_ai.operation.name", s("chat".into())),
                    kv("gen_ai.request.model", s("gpt-4o".into())),
                    kv("gen_ai.response.model", s("gpt-4o-2024-08-06".into())),
                    kv("gen_ai.response.id", s(format!("chatcmpl-{:032x}", k * 0x9e37_79b9))),
                    kv("gen_ai.conversation.id", s(format!("{:032x}", k / 16))),
                    kv("gen_ai.usage.input_tokens", i(1000 + k as i64)),
                    kv("gen_ai.usage.output_tokens", i(200)),
                    kv("gen_ai.usage.cached_tokens", i(300)),
                    kv("gen_ai.request.temperature", any_value::Value::DoubleValue(0.2)),
                    kv("gen_ai.request.max_tokens", i(4096)),
                    kv("gen_ai.response.finish_reasons", s("stop".into())),
                    kv("server.address", s("api.openai.com".into())),
                    kv("server.port", i(443)),
                    kv("cloud.region", s("us-east-1".into())),
                    kv("destination.cloud.provider", s("azure".into())),
                    kv("http.request.body.size", i(8000 + k as i64)),
                    kv("http.response.body.size", i(2000)),
                    kv("user.id", s(format!("user-{:016x}", k % 97))),
                    kv("time_to_first_chunk_ms", any_value::Value::DoubleValue(180.5)),
                ],
                ..Default::default()
            })
            .collect();
        let resource = Resource {
            attributes: (0..10).map(|r| kv(&format!("resource.attr{r}"), s(format!("value-{r}")))).collect(),
            ..Default::default()
        };
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(resource),
                scope_spans: vec![ScopeSpans { spans, ..Default::default() }],
                ..Default::default()
            }],
        }
    }

    /// The reservation made before normalising (`NORMALISED_BYTES_PER_BODY_BYTE` per body byte) must cover the
    /// batch it produces, or the buffer would hold more than the budget knows.
    #[test]
    fn the_normalise_reservation_covers_the_batch() {
        let pricer = Pricer::default();
        let sizes: Vec<(u64, usize, usize)> = [1, 10, 200, 2000, 20_000]
            .into_iter()
            .map(|n| {
                let body = agent_request(n).encode_to_vec();
                let batch = normalize::normalize_traces_protobuf(&body, &pricer).unwrap().batch;
                (n, body.len(), batch.get_array_memory_size())
            })
            .collect();
        for &(n, body, arrow) in &sizes {
            let ratio = arrow as f64 / body as f64;
            eprintln!("{n} spans: {} body bytes/span, {arrow} Arrow bytes, {ratio:.2} per body byte", body as u64 / n);
        }
        for &(n, body, arrow) in &sizes {
            let reserved = NORMALISED_BYTES_PER_BODY_BYTE * body + NORMALISED_FIXED_BYTES;
            assert!(arrow <= reserved, "{n} spans: {arrow} Arrow bytes for {body} body bytes, {reserved} reserved");
        }
    }
}
