//! Consumers of freshly acknowledged spans: live latency windows and budget guardrails.

use datafusion::arrow::record_batch::RecordBatch;

/// Sees every batch of spans right after it was acknowledged (durable in the WAL), in the `spans` schema.
///
/// Called on the ingest path: implementations must be quick (update counters, push to a channel) and never
/// block on I/O.
pub trait SpanObserver: Send + Sync {
    /// One acknowledged batch.
    fn observe(&self, spans: &RecordBatch);
}
