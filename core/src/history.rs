//! The stored spans that budgets rebuild their period-to-date spend from at start-up.
//!
//! Budgets live in the collector, which cannot depend on the query engine (the engine sits beside it, above this
//! crate). The trait lets the binary hand the collector the engine itself, so the rebuild reads history as every
//! other reader does: the same `spans` table over the catalog (files and the write buffer), the same memory pool
//! and concurrency slots, the same handling of damaged files.

use datafusion::arrow::record_batch::RecordBatch;
use futures::future::BoxFuture;
use futures::stream::BoxStream;

use crate::schema::Signal;

/// Batches of stored spans, each holding the requested columns in the requested order.
pub type SpanBatches = BoxStream<'static, Result<RecordBatch, HistoryError>>;

/// Reads stored spans.
pub trait SpanHistory: Send + Sync {
    /// `columns` of every stored span (committed files and rows still buffered) whose `start_time` is at or after
    /// `since_ns`, in no particular order.
    fn spans_since<'a>(
        &'a self,
        since_ns: i64,
        columns: &'a [&'a str],
    ) -> BoxFuture<'a, Result<SpanBatches, HistoryError>>;
}

/// Why stored history could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read stored {signal} since {since_ns} ns: {detail}")]
pub struct HistoryError {
    pub signal: Signal,
    pub since_ns: i64,
    pub detail: String,
}
