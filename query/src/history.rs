//! [`SpanHistory`] over the engine: budgets rebuild their spend with a statement on `spans`, so they read what
//! every query reads (files and the write buffer, one memory pool, damaged files skipped) instead of a reader of
//! their own.

use std::time::Duration;

use futures::future::BoxFuture;
use futures::{StreamExt, TryStreamExt};
use tailscope_core::history::{HistoryError, SpanBatches, SpanHistory};
use tailscope_core::schema::Signal;

use crate::engine::Engine;

/// How long a rebuild may read. It runs once, at start-up, before ingest opens, over up to a month of spans: far
/// longer than a user's `query.timeout` may need to be, yet not for ever should storage hang.
const HISTORY_TIMEOUT: Duration = Duration::from_secs(30 * 60);

impl SpanHistory for Engine {
    fn spans_since<'a>(
        &'a self,
        since_ns: i64,
        columns: &'a [&'a str],
    ) -> BoxFuture<'a, Result<SpanBatches, HistoryError>> {
        Box::pin(async move {
            let error = move |detail: String| HistoryError { signal: Signal::Spans, since_ns, detail };
            let list = columns.iter().map(|c| format!("\"{c}\"")).collect::<Vec<_>>().join(", ");
            let sql = format!(
                "SELECT {list} FROM {table} WHERE start_time >= arrow_cast({since_ns}, 'Timestamp(Nanosecond, Some(\"UTC\"))')",
                table = Signal::Spans.table_name()
            );
            let stream = self.stream_within(&sql, HISTORY_TIMEOUT).await.map_err(|e| error(e.to_string()))?;
            Ok(stream.map_err(move |e| error(e.to_string())).boxed())
        })
    }
}
