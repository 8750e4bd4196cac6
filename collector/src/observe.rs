//! Consumers of freshly acknowledged spans: live latency windows and budget guardrails.

use datafusion::arrow::record_batch::RecordBatch;
use tailscope_core::projects::Project;

/// Sees every batch of spans (of one project) right after it was acknowledged (durable in the WAL), in the `spans` schema.
///
/// Called on the ingest path: implementations must be quick (update counters, push to a channel) and never
/// block on I/O.
pub trait SpanObserver: Send + Sync {
    /// One acknowledged batch.
    fn observe(&self, project: &Project, spans: &RecordBatch);
}
