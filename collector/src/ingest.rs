//! The write path between the receivers and the disk: backpressure, WAL group commit, the in-memory buffer
//! and Parquet flushes.
//!
//! ```text
//! receiver -> Ingest::submit -> [WAL thread: write + fsync group] -> ack -> Catalog buffer -> Flusher -> Parquet
//! ```
//!
//! A request is answered only after its rows are fsynced in the WAL, so an acknowledged span survives
//! `kill -9`. Flushes rotate the WAL, write Parquet, then advance the checkpoint; a crash anywhere in between
//! is repaired at start by [`Ingest::start`] (uncommitted files removed, WAL replayed), so nothing is lost and
//! nothing is stored twice.

use std::io::IoSlice;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use datafusion::arrow::record_batch::RecordBatch;
use tokio::sync::{Mutex, oneshot};

use crate::catalog::Catalog;
use crate::config::Config;
use crate::cost::Pricer;
use crate::error::{IngestError, StorageError};
use crate::normalize::{self, Normalized};
use crate::observe::SpanObserver;
use crate::schema::Signal;
use crate::telemetry::Metrics;
use crate::wal::{self, RecordData, RecordKind, Wal};
use crate::writer::{self, ParquetOptions};

/// Most records written under one fsync.
const GROUP_MAX_RECORDS: usize = 4096;
/// Most bytes written under one fsync.
const GROUP_MAX_BYTES: usize = 64 * 1024 * 1024;

enum WalCommand {
    Append {
        kind: RecordKind,
        batch: RecordBatch,
        payload: Bytes,
        ack: oneshot::Sender<Result<u64, String>>,
    },
    /// Start a new segment; answers the last sequence number written and the new segment's id.
    Rotate {
        ack: oneshot::Sender<Result<(u64, u64), String>>,
    },
}

/// The durable write path. Cheap to share (`Arc`).
pub struct Ingest {
    wal_tx: std::sync::Mutex<Option<std_mpsc::Sender<WalCommand>>>,
    wal_thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
    catalog: Catalog,
    metrics: Arc<Metrics>,
    observers: parking_lot::RwLock<Vec<Arc<dyn SpanObserver>>>,
    /// Arrow bytes accepted (or being accepted) and not yet flushed.
    buffered: AtomicUsize,
    max_buffer_bytes: usize,
    shutting_down: AtomicBool,
    flush_lock: Mutex<FlushState>,
    config: Config,
    /// When the buffer last became non-empty (ns since start of `epoch`), or -1.
    oldest_unflushed: AtomicI64,
    /// When a request was last refused for backpressure (ns since start of `epoch`), or -1.
    last_backpressure: AtomicI64,
    epoch: Instant,
}

#[derive(Default)]
struct FlushState {
    /// Flushes failed in a row, for the retry backoff.
    failures: u32,
}

/// What recovery did at start, for the log and for tests.
#[derive(Debug, Clone, Default)]
pub struct RecoveryReport {
    /// WAL records replayed.
    pub records: usize,
    /// Rows replayed.
    pub rows: usize,
    /// Files of an interrupted flush removed.
    pub removed_files: usize,
}

impl Ingest {
    /// Opens the data dir, repairs an interrupted flush, replays the WAL into the buffer and flushes it, then
    /// starts the WAL writer thread. The returned catalog view is the one queries should use. `pricer` prices
    /// the trace requests the WAL holds, as it priced them when they were accepted.
    pub async fn start(
        config: Config,
        metrics: Arc<Metrics>,
        pricer: &Pricer,
    ) -> Result<(Arc<Ingest>, RecoveryReport), StorageError> {
        let data_dir = config.data_dir.clone();
        std::fs::create_dir_all(&data_dir).map_err(StorageError::io("creating data directory", &data_dir))?;
        let wal_dir = data_dir.join("wal");
        let recovered = Wal::recover(&wal_dir)?;
        let removed_files = writer::remove_uncommitted(&data_dir, recovered.checkpoint)?;
        let catalog = Catalog::open(&data_dir).map_err(StorageError::io("listing Parquet files", &data_dir))?;
        let mut report = RecoveryReport { records: recovered.records.len(), rows: 0, removed_files };
        let mut buffered = 0;
        let mut last_seq = recovered.checkpoint;
        for record in recovered.records {
            let (signal, batch) = match record.data {
                RecordData::Rows(signal, batch) => (signal, batch),
                RecordData::OtlpTraces(request) => {
                    let limits = normalize::Limits::from(&config.ingest);
                    let normalized = normalize::normalize_traces_limited(&request, pricer, limits).map_err(|e| {
                        StorageError::CorruptWal {
                            path: wal_dir.clone(),
                            offset: 0,
                            detail: format!("record {} holds a trace request that no longer decodes: {e}", record.seq),
                        }
                    })?;
                    (Signal::Spans, normalized.batch)
                }
            };
            report.rows += batch.num_rows();
            buffered += batch.get_array_memory_size();
            last_seq = last_seq.max(record.seq);
            catalog.add_batch(signal, record.seq, batch);
        }
        metrics.wal_pending_bytes.set(recovered.pending_bytes as i64);
        let wal = Wal::open(&wal_dir, last_seq + 1, config.storage.wal_fsync)?;
        let (tx, rx) = std_mpsc::channel();
        let thread = {
            let catalog = catalog.clone();
            let metrics = metrics.clone();
            std::thread::Builder::new()
                .name("tailscope-wal".into())
                .spawn(move || wal_writer(wal, rx, catalog, metrics))
                .map_err(StorageError::io("starting WAL writer thread", &wal_dir))?
        };
        let epoch = Instant::now();
        let ingest = Arc::new(Ingest {
            wal_tx: std::sync::Mutex::new(Some(tx)),
            wal_thread: std::sync::Mutex::new(Some(thread)),
            catalog,
            metrics: metrics.clone(),
            observers: Default::default(),
            buffered: AtomicUsize::new(buffered),
            max_buffer_bytes: config.ingest.max_buffer_bytes,
            shutting_down: AtomicBool::new(false),
            flush_lock: Mutex::new(FlushState::default()),
            config,
            oldest_unflushed: AtomicI64::new(if buffered > 0 { 0 } else { -1 }),
            last_backpressure: AtomicI64::new(-1),
            epoch,
        });
        metrics.buffered_bytes.set(buffered as i64);
        if report.records > 0 {
            tracing::info!(records = report.records, rows = report.rows, "replayed WAL; flushing it to Parquet");
            ingest.flush().await?;
        }
        Ok((ingest, report))
    }

    /// Adds a consumer of acknowledged spans (live windows, budgets). Add observers before serving.
    pub fn add_observer(&self, observer: Arc<dyn SpanObserver>) {
        self.observers.write().push(observer);
    }

    /// What queries can see.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The metrics this path updates.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The configuration the path runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Makes a normalised request durable, then visible; returns once it may be acknowledged.
    ///
    /// `request` is the OTLP trace export (protobuf) that `normalized` was made from, when there is one: the WAL
    /// then stores it instead of encoding the rows, and replay normalises it again.
    pub async fn submit(&self, normalized: &Normalized, request: Option<Bytes>) -> Result<(), IngestError> {
        let signal = normalized.signal;
        let batch = &normalized.batch;
        if batch.num_rows() == 0 {
            return Ok(());
        }
        if self.shutting_down.load(Ordering::Acquire) {
            return Err(IngestError::ShuttingDown);
        }
        let size = batch.get_array_memory_size();
        let before = self.buffered.fetch_add(size, Ordering::AcqRel);
        if before + size > self.max_buffer_bytes && before > 0 {
            self.buffered.fetch_sub(size, Ordering::AcqRel);
            self.last_backpressure.store(self.epoch.elapsed().as_nanos() as i64, Ordering::Release);
            return Err(IngestError::Backpressure { buffered: before, limit: self.max_buffer_bytes });
        }
        let result = self.append(signal, batch, request).await;
        match result {
            Ok(_) => {
                self.metrics.buffered_bytes.set(self.buffered.load(Ordering::Acquire) as i64);
                let now = self.epoch.elapsed().as_nanos() as i64;
                let _ = self.oldest_unflushed.compare_exchange(-1, now, Ordering::AcqRel, Ordering::Acquire);
                if signal == Signal::Spans {
                    for observer in self.observers.read().iter() {
                        observer.observe(batch);
                    }
                }
                Ok(())
            }
            Err(e) => {
                self.buffered.fetch_sub(size, Ordering::AcqRel);
                Err(e)
            }
        }
    }

    async fn append(&self, signal: Signal, batch: &RecordBatch, request: Option<Bytes>) -> Result<u64, IngestError> {
        let (kind, payload) = match request {
            Some(request) if signal == Signal::Spans => (RecordKind::OtlpTraces, request),
            _ => {
                let rows = wal::encode_batch(batch).map_err(|e| IngestError::Storage(e.to_string()))?;
                (RecordKind::Rows(signal), Bytes::from(rows))
            }
        };
        let (ack, done) = oneshot::channel();
        let command = WalCommand::Append { kind, batch: batch.clone(), payload, ack };
        self.send(command)?;
        match done.await {
            Ok(Ok(seq)) => Ok(seq),
            Ok(Err(e)) => Err(IngestError::Storage(e)),
            Err(_) => Err(IngestError::ShuttingDown),
        }
    }

    fn send(&self, command: WalCommand) -> Result<(), IngestError> {
        let tx = self.wal_tx.lock().unwrap_or_else(|p| p.into_inner());
        match tx.as_ref() {
            Some(tx) => tx.send(command).map_err(|_| IngestError::ShuttingDown),
            None => Err(IngestError::ShuttingDown),
        }
    }

    /// Whether a request was refused for backpressure within the last `within`: clients were told to come back
    /// after `ingest.retry_after`, so until then the collector is not ready for more.
    pub fn backpressure_within(&self, within: Duration) -> bool {
        let last = self.last_backpressure.load(Ordering::Acquire);
        last >= 0 && self.epoch.elapsed().as_nanos() as i64 - last <= within.as_nanos() as i64
    }

    /// Bytes of Arrow data not yet flushed.
    pub fn buffered_bytes(&self) -> usize {
        self.buffered.load(Ordering::Acquire)
    }

    /// Whether a flush is due: enough data, or data older than the flush interval.
    pub fn flush_due(&self) -> bool {
        if self.buffered_bytes() >= self.config.storage.flush_max_bytes {
            return true;
        }
        let oldest = self.oldest_unflushed.load(Ordering::Acquire);
        oldest >= 0
            && self.epoch.elapsed().as_nanos() as i64 - oldest >= self.config.storage.flush_interval.as_nanos() as i64
    }

    /// Writes everything acknowledged so far to Parquet and advances the checkpoint. Concurrent calls run one
    /// after the other. On failure nothing is lost: the rows stay in the WAL and the buffer, and the next flush
    /// tries again.
    pub async fn flush(&self) -> Result<(), StorageError> {
        let mut state = self.flush_lock.lock().await;
        let started = Instant::now();
        let buffered_rows: usize = Signal::ALL.iter().map(|s| self.catalog.buffered_rows(*s)).sum();
        if buffered_rows == 0 {
            return Ok(());
        }
        let (ack, done) = oneshot::channel();
        if self.send(WalCommand::Rotate { ack }).is_err() {
            return Ok(());
        }
        let (through_seq, current_segment) = match done.await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                return Err(self.flush_failed(
                    &mut state,
                    StorageError::Io {
                        action: "rotating WAL",
                        path: self.config.data_dir.join("wal"),
                        source: std::io::Error::other(e),
                    },
                ));
            }
            Err(_) => return Ok(()),
        };
        let batches = self.catalog.batches_through(through_seq);
        let data_dir = self.config.data_dir.clone();
        let options = ParquetOptions {
            row_group_rows: self.config.storage.row_group_rows,
            zstd_level: self.config.storage.zstd_level,
        };
        let flushed_bytes: usize = batches.values().flatten().map(|b| b.get_array_memory_size()).sum();
        let write = tokio::task::spawn_blocking(move || -> Result<_, StorageError> {
            let mut files = Vec::new();
            for (signal, batches) in &batches {
                match writer::write_signal(&data_dir, *signal, batches, through_seq, &options) {
                    Ok(written) => files.extend(written.into_iter().map(|f| (*signal, f))),
                    Err(e) => {
                        for (_, f) in &files {
                            let _ = std::fs::remove_file(data_dir.join(&f.relative_path));
                        }
                        return Err(e);
                    }
                }
            }
            if let Err(e) = wal::write_checkpoint(&data_dir.join("wal"), through_seq) {
                for (_, f) in &files {
                    let _ = std::fs::remove_file(data_dir.join(&f.relative_path));
                }
                return Err(e);
            }
            Ok(files)
        })
        .await;
        let files = match write {
            Ok(Ok(files)) => files,
            Ok(Err(e)) => return Err(self.flush_failed(&mut state, e)),
            Err(join) => {
                return Err(self.flush_failed(
                    &mut state,
                    StorageError::Io {
                        action: "flushing",
                        path: self.config.data_dir.clone(),
                        source: std::io::Error::other(join.to_string()),
                    },
                ));
            }
        };
        let bytes: u64 = files.iter().map(|(_, f)| f.size).sum();
        let nfiles = files.len();
        self.catalog.commit_flush(files, through_seq);
        self.buffered.fetch_sub(flushed_bytes.min(self.buffered_bytes()), Ordering::AcqRel);
        let remaining: usize = Signal::ALL.iter().map(|s| self.catalog.buffered_rows(*s)).sum();
        let now = self.epoch.elapsed().as_nanos() as i64;
        self.oldest_unflushed.store(if remaining > 0 { now } else { -1 }, Ordering::Release);
        match Wal::remove_closed_segments(&self.config.data_dir.join("wal"), current_segment) {
            Ok(freed) => {
                self.metrics.wal_pending_bytes.dec_by(freed as i64);
            }
            Err(e) => tracing::warn!(error = %e, "flushed, but could not remove old WAL segments; will retry"),
        }
        state.failures = 0;
        self.metrics.flushes.inc();
        self.metrics.parquet_bytes.inc_by(bytes);
        self.metrics.flush_seconds.observe(started.elapsed().as_secs_f64());
        self.metrics.buffered_bytes.set(self.buffered_bytes() as i64);
        tracing::info!(
            rows = buffered_rows,
            files = nfiles,
            bytes,
            through_seq,
            ms = started.elapsed().as_millis() as u64,
            "flushed to Parquet"
        );
        Ok(())
    }

    fn flush_failed(&self, state: &mut FlushState, e: StorageError) -> StorageError {
        state.failures += 1;
        self.metrics.flush_errors.inc();
        tracing::error!(error = %e, attempt = state.failures, "flush failed; data stays in the WAL and the buffer, retrying");
        e
    }

    /// The delay before retrying after `failures` failed flushes (exponential, capped at a minute).
    pub async fn flush_backoff(&self) -> Duration {
        let failures = self.flush_lock.lock().await.failures;
        Duration::from_millis(500u64.saturating_mul(1 << failures.min(7))).min(Duration::from_secs(60))
    }

    /// Flushes whenever due, until shutdown begins. Run it as a task.
    pub async fn run_flusher(self: Arc<Self>) {
        let mut wait = Duration::from_millis(250);
        loop {
            tokio::time::sleep(wait).await;
            if self.shutting_down.load(Ordering::Acquire) {
                return;
            }
            wait = Duration::from_millis(250);
            if self.flush_due() && self.flush().await.is_err() {
                wait = self.flush_backoff().await;
            }
        }
    }

    /// Stops accepting, flushes everything and stops the WAL thread. Returns the final flush's result.
    pub async fn shutdown(&self) -> Result<(), StorageError> {
        self.shutting_down.store(true, Ordering::Release);
        let result = self.flush().await;
        self.wal_tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        let thread = self.wal_thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        result
    }

    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }
}

/// The group-commit loop: blocks for one command, takes whatever else is queued, writes it all with one
/// fsync, then makes the rows visible and acknowledges.
fn wal_writer(mut wal: Wal, rx: std_mpsc::Receiver<WalCommand>, catalog: Catalog, metrics: Arc<Metrics>) {
    let mut headers: Vec<[u8; wal::RECORD_HEADER]> = Vec::new();
    let mut payloads: Vec<Bytes> = Vec::new();
    let mut group: Vec<(u64, Signal, RecordBatch, oneshot::Sender<Result<u64, String>>)> = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut pending = Some(first);
        let mut rotate = None;
        let mut group_bytes = 0;
        headers.clear();
        payloads.clear();
        group.clear();
        while let Some(command) = pending.take() {
            match command {
                WalCommand::Append { kind, batch, payload, ack } => {
                    let seq = wal.reserve(1);
                    headers.push(wal::record_header(seq, kind, &payload));
                    group_bytes += wal::RECORD_HEADER + payload.len();
                    payloads.push(payload);
                    group.push((seq, kind.signal(), batch, ack));
                }
                WalCommand::Rotate { ack } => {
                    // Rotation applies after the records queued before it.
                    rotate = Some(ack);
                    break;
                }
            }
            if group.len() >= GROUP_MAX_RECORDS || group_bytes >= GROUP_MAX_BYTES {
                break;
            }
            pending = rx.try_recv().ok();
        }
        if !group.is_empty() {
            let mut parts: Vec<IoSlice<'_>> = headers
                .iter()
                .zip(&payloads)
                .flat_map(|(header, payload)| [IoSlice::new(header), IoSlice::new(payload)])
                .collect();
            match wal.append_parts(&mut parts) {
                Ok(()) => {
                    metrics.wal_bytes.inc_by(group_bytes as u64);
                    metrics.wal_pending_bytes.inc_by(group_bytes as i64);
                    metrics.wal_syncs.inc();
                    for (seq, signal, batch, ack) in group.drain(..) {
                        catalog.add_batch(signal, seq, batch);
                        let _ = ack.send(Ok(seq));
                    }
                }
                Err(e) => {
                    let message = e.to_string();
                    tracing::error!(error = %message, records = group.len(), "WAL write failed; requests get a retryable error");
                    for (_, _, _, ack) in group.drain(..) {
                        let _ = ack.send(Err(message.clone()));
                    }
                }
            }
        }
        if let Some(ack) = rotate {
            let last = wal.next_seq() - 1;
            let _ = ack.send(wal.rotate().map(|_| (last, wal.segment_id())).map_err(|e| e.to_string()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Array, Float64Array, StringArray};
    use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    use prost::Message;

    fn attr(key: &str, value: any_value::Value) -> KeyValue {
        KeyValue { key: key.into(), value: Some(AnyValue { value: Some(value) }), ..Default::default() }
    }

    /// Three priced LLM spans, one second apart, and one span with an all-zero trace id (rejected).
    fn request() -> ExportTraceServiceRequest {
        let t0 = 1_700_000_000_000_000_000u64;
        let mut spans: Vec<Span> = (0..3u64)
            .map(|i| Span {
                trace_id: vec![7; 16],
                span_id: (i + 1).to_be_bytes().to_vec(),
                name: "chat gpt-4o".into(),
                start_time_unix_nano: t0 + i * 1_000_000_000,
                end_time_unix_nano: t0 + i * 1_000_000_000 + 5_000_000,
                attributes: vec![
                    attr("gen_ai.provider.name", any_value::Value::StringValue("openai".into())),
                    attr("gen_ai.request.model", any_value::Value::StringValue("gpt-4o".into())),
                    attr("gen_ai.usage.input_tokens", any_value::Value::IntValue(1000 * (i as i64 + 1))),
                    attr("gen_ai.usage.output_tokens", any_value::Value::IntValue(100)),
                ],
                ..Default::default()
            })
            .collect();
        spans.push(Span { trace_id: vec![0; 16], span_id: vec![9; 8], name: "bad".into(), ..Default::default() });
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans { spans, ..Default::default() }],
                ..Default::default()
            }],
        }
    }

    fn column<'a, T: 'static>(batch: &'a RecordBatch, name: &str) -> &'a T {
        batch.column_by_name(name).unwrap().as_any().downcast_ref::<T>().unwrap()
    }

    /// The WAL keeps trace requests as received; after a crash, replay must rebuild exactly the rows that were
    /// acknowledged (same spans, same prices, the same span still rejected).
    #[tokio::test]
    async fn replayed_trace_requests_give_the_acknowledged_rows() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config { data_dir: dir.path().to_path_buf(), ..Config::default() };
        let pricer = Pricer::default();
        let body = Bytes::from(request().encode_to_vec());
        let acknowledged = normalize::normalize_traces_protobuf(&body, &pricer).unwrap();
        assert_eq!((acknowledged.batch.num_rows(), acknowledged.rejected), (3, 1));
        {
            let (ingest, _) = Ingest::start(config.clone(), Metrics::new(), &pricer).await.unwrap();
            ingest.submit(&acknowledged, Some(body.clone())).await.unwrap();
            // Dropped without a flush or shutdown: the rows exist only in the WAL, as after `kill -9`.
        }
        let (ingest, report) = Ingest::start(config, Metrics::new(), &pricer).await.unwrap();
        assert_eq!((report.records, report.rows), (1, 3));
        let files = ingest.catalog().snapshot(Signal::Spans).files;
        assert_eq!(files.len(), 1, "replay flushes the recovered rows");
        let file = std::fs::File::open(dir.path().join(&files[0].relative_path)).unwrap();
        let stored: Vec<RecordBatch> =
            ParquetRecordBatchReaderBuilder::try_new(file).unwrap().build().unwrap().map(|b| b.unwrap()).collect();
        assert_eq!(stored.len(), 1);
        let stored = &stored[0];
        let ids = |b: &RecordBatch| {
            column::<StringArray>(b, "span_id").iter().map(|v| v.map(str::to_string)).collect::<Vec<_>>()
        };
        assert_eq!(ids(stored), ids(&acknowledged.batch));
        let costs = |b: &RecordBatch| column::<Float64Array>(b, "cost_usd").iter().collect::<Vec<_>>();
        assert!(costs(stored).iter().all(|c| c.is_some_and(|c| c > 0.0)), "{:?}", costs(stored));
        assert_eq!(costs(stored), costs(&acknowledged.batch));
        assert_eq!(stored.num_columns(), acknowledged.batch.num_columns());
        for (i, field) in acknowledged.batch.schema().fields().iter().enumerate() {
            assert_eq!(stored.column(i).to_data(), acknowledged.batch.column(i).to_data(), "column {}", field.name());
        }
    }

    /// Issue #12, item 2: a request with a 50 MiB attribute acknowledged while a 60,000-span request was still
    /// being normalised puts both in the WAL in that order. Replay normalised them in turn, the second sized
    /// from the first's per-row hint (63 TiB), and every restart aborted with 60,002 acknowledged spans stuck.
    #[tokio::test]
    async fn replay_of_a_huge_attribute_then_a_big_batch_restores_both() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config { data_dir: dir.path().to_path_buf(), ..Config::default() };
        let pricer = Pricer::default();
        let mut big = request();
        let template = big.resource_spans[0].scope_spans[0].spans[0].clone();
        big.resource_spans[0].scope_spans[0].spans =
            (0..60_000u64).map(|i| Span { span_id: (i + 1).to_be_bytes().to_vec(), ..template.clone() }).collect();
        let big_body = Bytes::from(big.encode_to_vec());
        // Normalised first (the big request was still in flight), stored second.
        let big_rows = normalize::normalize_traces_protobuf(&big_body, &pricer).unwrap();
        let mut huge = request();
        huge.resource_spans[0].scope_spans[0].spans.truncate(2);
        huge.resource_spans[0].scope_spans[0].spans[0]
            .attributes
            .push(attr("gen_ai.prompt", any_value::Value::StringValue("x".repeat(50 << 20))));
        let huge_body = Bytes::from(huge.encode_to_vec());
        let huge_rows = normalize::normalize_traces_protobuf(&huge_body, &pricer).unwrap();
        {
            let (ingest, _) = Ingest::start(config.clone(), Metrics::new(), &pricer).await.unwrap();
            ingest.submit(&huge_rows, Some(huge_body)).await.unwrap();
            ingest.submit(&big_rows, Some(big_body)).await.unwrap();
        }
        let (ingest, report) = Ingest::start(config, Metrics::new(), &pricer).await.unwrap();
        assert_eq!((report.records, report.rows), (2, 60_002));
        let files = ingest.catalog().snapshot(Signal::Spans).files;
        let stored: usize = files
            .iter()
            .map(|f| {
                let file = std::fs::File::open(dir.path().join(&f.relative_path)).unwrap();
                ParquetRecordBatchReaderBuilder::try_new(file)
                    .unwrap()
                    .build()
                    .unwrap()
                    .map(|b| b.unwrap().num_rows())
                    .sum::<usize>()
            })
            .sum();
        assert_eq!(stored, 60_002);
    }
}
