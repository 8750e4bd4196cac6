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

use crate::cost::Pricer;
use crate::error::IngestError;
use crate::ingest::Ingest;
use crate::normalize::{self, Normalized};
use crate::schema::Signal;
use crate::telemetry::Metrics;

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

    /// The configured largest body, after decompression.
    pub fn max_body_bytes(&self) -> usize {
        self.ingest.config().ingest.max_body_bytes
    }

    /// The delay suggested to clients under backpressure.
    pub fn retry_after(&self) -> std::time::Duration {
        self.ingest.config().ingest.retry_after
    }

    /// Counts a request rejected before it could be decoded.
    pub fn reject_request(&self, signal: Signal, error: &IngestError) {
        self.metrics().reject_request(signal, error.reason());
    }

    /// `request`: the trace export's protobuf, for the WAL (see [`Ingest::submit`]).
    async fn accept(&self, normalized: Normalized, request: Option<Bytes>) -> Result<Outcome, IngestError> {
        let metrics = self.metrics();
        let signal = normalized.signal;
        Metrics::count(&metrics.received, signal, normalized.received());
        if let Err(e) = self.ingest.submit(&normalized, request).await {
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

    /// Stores a trace export that arrived as OTLP protobuf, read in place (see [`crate::wire`]).
    pub async fn traces_protobuf(&self, body: Bytes) -> Result<ExportTraceServiceResponse, IngestError> {
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
        Ok(Self::trace_response(self.accept(normalized, Some(body)).await?))
    }

    /// Stores a decoded trace export (OTLP/JSON).
    pub async fn traces(&self, request: ExportTraceServiceRequest) -> Result<ExportTraceServiceResponse, IngestError> {
        // One normaliser for both encodings: prost's encoding of what it decoded is well-formed, and it is what
        // the WAL keeps.
        self.traces_protobuf(Bytes::from(request.encode_to_vec())).await
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
    ) -> Result<ExportMetricsServiceResponse, IngestError> {
        let outcome = self.accept(normalize::normalize_metrics(&request), None).await?;
        Ok(ExportMetricsServiceResponse {
            partial_success: (outcome.rejected > 0).then_some(ExportMetricsPartialSuccess {
                rejected_data_points: outcome.rejected,
                error_message: outcome.message,
            }),
        })
    }

    /// Stores a logs export.
    pub async fn logs(&self, request: ExportLogsServiceRequest) -> Result<ExportLogsServiceResponse, IngestError> {
        let now = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0);
        let outcome = self.accept(normalize::normalize_logs(&request, now), None).await?;
        Ok(ExportLogsServiceResponse {
            partial_success: (outcome.rejected > 0).then_some(ExportLogsPartialSuccess {
                rejected_log_records: outcome.rejected,
                error_message: outcome.message,
            }),
        })
    }
}
