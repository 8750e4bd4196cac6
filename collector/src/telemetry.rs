//! tailscope's own metrics, served in the Prometheus text format on `GET /metrics`.
//!
//! Counters are labelled by `signal` (spans, metrics, logs) and, for rejections, by `reason`, so an operator
//! can tell "clients send garbage" from "we are applying backpressure" from "the disk is full". Every label value
//! comes from a bounded set: a fixed list, the config (budget and webhook names) or the API's route patterns, never
//! from what a client sends. `docs/operations.md` lists every series.
//!
//! Series computed when scraped (each budget's figures and alert state) come from [`ScrapeSeries`] sources added
//! once they exist ([`Metrics::add_scraped`]); the API's request counters and latencies from [`track_requests`].

use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use parking_lot::RwLock;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels for per-signal counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SignalLabel {
    /// `spans`, `metrics` or `logs`.
    pub signal: String,
}

/// Labels for per-table counters of the Delta tables.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabel {
    /// `spans`, `metrics` or `logs`.
    pub table: String,
}

impl TableLabel {
    /// The label of `signal`'s table.
    pub fn of(signal: tailscope_core::schema::Signal) -> TableLabel {
        TableLabel { table: signal.table_name().to_string() }
    }
}

/// Labels for per-store counters: the store the tables are on (`storage.url`, e.g. `s3://bucket/prefix`), or
/// `local` for tables under the data dir.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreLabel {
    /// The store's URL, or `local`.
    pub store: String,
}

fn upload_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 18))
}

/// Labels for retention's counters: the table, and why partitions went (`age`, `table_size`, `project_size`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RetentionLabel {
    /// `spans`, `metrics` or `logs`.
    pub table: String,
    /// `store::retention::Reason::label`.
    pub reason: String,
}

/// Labels for rejection counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabel {
    /// `spans`, `metrics` or `logs`.
    pub signal: String,
    /// Why: `malformed`, `too_large`, `backpressure`, `storage`, `invalid_trace_id`, ...
    pub reason: String,
}

/// Labels for per-listener counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabel {
    /// `otlp_grpc`, `otlp_http`, `api` or `flight`.
    pub listener: String,
}

/// Labels of `tailscope_auth_refusals_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthRefusalLabel {
    /// `otlp_grpc`, `otlp_http`, `api` or `flight`.
    pub listener: String,
    /// `missing`, `malformed`, `unknown`, `forbidden` or `project`.
    pub reason: String,
}

/// Labels of a webhook's series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabel {
    /// The webhook's name (`alerts.webhooks[].name`, by default its URL's host).
    pub webhook: String,
}

/// Labels of a webhook's series that say why.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookReasonLabel {
    pub webhook: String,
    /// One of a fixed list (`collector::cost::webhook`).
    pub reason: String,
}

/// Labels of the API's request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabel {
    /// The route's pattern (`/api/v1/query`), `unmatched` for a path no route serves.
    pub route: String,
    /// `GET`, `POST`, ... or `other`.
    pub method: String,
    /// The answer's status code.
    pub status: String,
}

/// Labels of the API's latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub route: String,
}

/// A part of the process whose series are computed when scraped (the budgets' figures), added once it exists.
pub trait ScrapeSeries: Send + Sync + 'static {
    /// Encodes its series; a family with no sample is left out.
    fn encode(&self, encoder: &mut DescriptorEncoder<'_>) -> Result<(), std::fmt::Error>;
}

/// The [`ScrapeSeries`] sources, registered once in the registry (which cannot change after start) and filled
/// later. Held weakly: a source dropped (a test's engine) stops being scraped.
#[derive(Default)]
struct Scraped {
    sources: RwLock<Vec<Weak<dyn ScrapeSeries>>>,
}

impl std::fmt::Debug for Scraped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scraped").field("sources", &self.sources.read().len()).finish()
    }
}

impl Collector for Scraped {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let sources: Vec<Arc<dyn ScrapeSeries>> = self.sources.read().iter().filter_map(Weak::upgrade).collect();
        for source in sources {
            source.encode(&mut encoder)?;
        }
        Ok(())
    }
}

/// The buckets of the API's latency histogram: 1 ms to ~65 s (the default query timeout is 60 s), doubling.
fn api_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// Every metric tailscope exports about itself.
pub struct Metrics {
    registry: Registry,
    /// Items (spans, data points, log records) received in requests.
    pub received: Family<SignalLabel, Counter>,
    /// Items acknowledged (durable in the WAL).
    pub accepted: Family<SignalLabel, Counter>,
    /// Items rejected, by reason. Whole-request rejections count every item of the request when it could be
    /// decoded, or one per request otherwise (counted under `requests_rejected`).
    pub rejected: Family<RejectLabel, Counter>,
    /// Requests rejected whole, by reason.
    pub requests_rejected: Family<RejectLabel, Counter>,
    /// Requests refused because the buffer was full (also in `requests_rejected{reason="backpressure"}`).
    pub backpressure: Counter,
    /// Bytes written to the WAL.
    pub wal_bytes: Counter,
    /// WAL fsyncs (one per group commit).
    pub wal_syncs: Counter,
    /// Bytes currently in WAL segments not yet flushed to Parquet.
    pub wal_pending_bytes: Gauge,
    /// Damaged WAL records skipped at recovery (their bytes kept in `wal/corrupt/`).
    pub wal_corrupt_records: Counter,
    /// Bytes of those records.
    pub wal_corrupt_bytes: Counter,
    /// Bytes of torn WAL tails (a last write cut short) cut off at recovery, kept in `wal/corrupt/`.
    pub wal_torn_bytes: Counter,
    /// Records found again in another segment at recovery (replayed once).
    pub wal_duplicate_records: Counter,
    /// Times the segment being written was found deleted and the WAL recreated.
    pub wal_segments_lost: Counter,
    /// 1 while the WAL accepts writes, 0 while they fail (disk full, permissions, directory gone).
    pub wal_writable: Gauge,
    /// Arrow bytes buffered in memory, not yet in Parquet.
    pub buffered_bytes: Gauge,
    /// Completed flushes.
    pub flushes: Counter,
    /// Failed flush attempts (retried).
    pub flush_errors: Counter,
    /// Flush duration in seconds.
    pub flush_seconds: Histogram,
    /// Parquet bytes written.
    pub parquet_bytes: Counter,
    /// Delta commits of flushes, per table.
    pub table_commits: Family<TableLabel, Counter>,
    /// Delta commits of flushes, per store.
    pub store_commits: Family<StoreLabel, Counter>,
    /// Bytes of flushed files uploaded to the store, per store (object stores only).
    pub store_uploaded_bytes: Family<StoreLabel, Counter>,
    /// Seconds to upload one flushed file, per store (object stores only).
    pub store_upload_seconds: Family<StoreLabel, Histogram, fn() -> Histogram>,
    /// Flushes that failed (an upload, a commit) and are retried with backoff, per store.
    pub store_retries: Family<StoreLabel, Counter>,
    /// Compaction commits, per table.
    pub compactions: Family<TableLabel, Counter>,
    /// Small files removed by compaction, per table.
    pub compaction_files_removed: Family<TableLabel, Counter>,
    /// Files written by compaction, per table.
    pub compaction_files_written: Family<TableLabel, Counter>,
    /// Bytes written by compaction, per table.
    pub compaction_bytes_written: Family<TableLabel, Counter>,
    /// Files removed by retention (partitions past the table's maximum age), per table.
    pub retention_files_removed: Family<TableLabel, Counter>,
    /// Partitions removed by retention, per table and reason (age, table or project size cap).
    pub retention_partitions_removed: Family<RetentionLabel, Counter>,
    /// Bytes of the files removed by retention (from the Delta log), per table and reason.
    pub retention_bytes_removed: Family<RetentionLabel, Counter>,
    /// Each table's committed bytes (the Delta snapshot's file sizes), as of the last maintenance round: what
    /// `storage.max_bytes` caps.
    pub table_bytes: Family<TableLabel, Gauge>,
    /// Removed files deleted from storage by vacuum, per table.
    pub vacuum_files_deleted: Family<TableLabel, Counter>,
    /// Compaction, retention or vacuum runs that failed, per table (retried at the next interval).
    pub maintenance_errors: Family<TableLabel, Counter>,
    /// Spans whose model has no price (cost NULL, `price_source = 'unknown'`).
    pub unpriced_spans: Counter,
    /// Requests refused at the process memory ceiling (also in `requests_rejected{reason="memory_limit"}`).
    pub memory_refusals: Counter,
    /// Requests refused for good: they could never fit (a body past `ingest.max_body_bytes`, or needing more than
    /// the whole `memory.limit_mb`), answered 413 / RESOURCE_EXHAUSTED without `RetryInfo` so clients do not retry.
    pub memory_refusals_permanent: Counter,
    /// Bytes reserved in the process memory budget (set when scraped).
    pub memory_used_bytes: Gauge,
    /// The process memory budget, `memory.limit_mb`, in bytes (set when scraped).
    pub memory_limit_bytes: Gauge,
    /// Parquet files found unreadable (a damaged footer or page, a truncated file), once per version of a file.
    pub parquet_unreadable_files: Counter,
    /// Parquet files that queries skip now because they cannot be read.
    pub parquet_skipped_files: Gauge,
    /// Idle connections closed to admit a new one at `server.max_connections`, per listener.
    pub connections_shed: Family<ListenerLabel, Counter>,
    /// TLS handshakes that failed or stalled past `server.header_timeout`, per listener.
    pub tls_handshake_failures: Family<ListenerLabel, Counter>,
    /// Requests refused for their API key (`crate::auth`), per listener and reason.
    pub auth_refusals: Family<AuthRefusalLabel, Counter>,
    /// Alert events delivered (answered 2xx), per webhook.
    pub webhook_deliveries: Family<WebhookLabel, Counter>,
    /// Delivery attempts that failed, per webhook and reason.
    pub webhook_failures: Family<WebhookReasonLabel, Counter>,
    /// Events waiting in a webhook's outbox on disk: queued, or failed and kept for the next try.
    pub webhook_outbox_events: Family<WebhookLabel, Gauge>,
    /// Bytes of those events.
    pub webhook_outbox_bytes: Family<WebhookLabel, Gauge>,
    /// Events not queued for a webhook, per reason (its outbox full, the event too large).
    pub webhook_dropped: Family<WebhookReasonLabel, Counter>,
    /// Unreadable files found in a webhook's outbox, set aside in its `corrupt/` directory.
    pub webhook_outbox_corrupt: Family<WebhookLabel, Counter>,
    /// Requests answered by the API listener, per route pattern, method and status.
    pub api_requests: Family<RequestLabel, Counter>,
    /// Time from a request to the end of its answer's body (a query's result streamed whole), per route pattern.
    pub api_duration: Family<RouteLabel, Histogram, fn() -> Histogram>,
    scraped: Arc<Scraped>,
}

impl Metrics {
    /// Creates and registers every metric.
    // Long by design: one registration per metric, in the order /metrics lists them; split, the list would only be scattered.
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("tailscope");
        let received = Family::<SignalLabel, Counter>::default();
        let accepted = Family::<SignalLabel, Counter>::default();
        let rejected = Family::<RejectLabel, Counter>::default();
        let requests_rejected = Family::<RejectLabel, Counter>::default();
        let backpressure = Counter::default();
        let wal_bytes = Counter::default();
        let wal_syncs = Counter::default();
        let wal_pending_bytes = Gauge::default();
        let buffered_bytes = Gauge::default();
        let wal_corrupt_records = Counter::default();
        let wal_corrupt_bytes = Counter::default();
        let wal_torn_bytes = Counter::default();
        let wal_duplicate_records = Counter::default();
        let wal_segments_lost = Counter::default();
        let wal_writable = Gauge::default();
        wal_writable.set(1);
        let flushes = Counter::default();
        let flush_errors = Counter::default();
        let flush_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        let parquet_bytes = Counter::default();
        let table_commits = Family::<TableLabel, Counter>::default();
        let store_commits = Family::<StoreLabel, Counter>::default();
        let store_uploaded_bytes = Family::<StoreLabel, Counter>::default();
        let store_upload_seconds =
            Family::<StoreLabel, Histogram, fn() -> Histogram>::new_with_constructor(upload_histogram);
        let store_retries = Family::<StoreLabel, Counter>::default();
        let compactions = Family::<TableLabel, Counter>::default();
        let compaction_files_removed = Family::<TableLabel, Counter>::default();
        let compaction_files_written = Family::<TableLabel, Counter>::default();
        let compaction_bytes_written = Family::<TableLabel, Counter>::default();
        let retention_files_removed = Family::<TableLabel, Counter>::default();
        let retention_partitions_removed = Family::<RetentionLabel, Counter>::default();
        let retention_bytes_removed = Family::<RetentionLabel, Counter>::default();
        let table_bytes = Family::<TableLabel, Gauge>::default();
        let vacuum_files_deleted = Family::<TableLabel, Counter>::default();
        let maintenance_errors = Family::<TableLabel, Counter>::default();
        let unpriced_spans = Counter::default();
        let memory_refusals = Counter::default();
        let memory_refusals_permanent = Counter::default();
        let memory_used_bytes = Gauge::default();
        let memory_limit_bytes = Gauge::default();
        let parquet_unreadable_files = Counter::default();
        let parquet_skipped_files = Gauge::default();
        let connections_shed = Family::<ListenerLabel, Counter>::default();
        let tls_handshake_failures = Family::<ListenerLabel, Counter>::default();
        let auth_refusals = Family::<AuthRefusalLabel, Counter>::default();
        let webhook_deliveries = Family::<WebhookLabel, Counter>::default();
        let webhook_failures = Family::<WebhookReasonLabel, Counter>::default();
        let webhook_outbox_events = Family::<WebhookLabel, Gauge>::default();
        let webhook_outbox_bytes = Family::<WebhookLabel, Gauge>::default();
        let webhook_dropped = Family::<WebhookReasonLabel, Counter>::default();
        let webhook_outbox_corrupt = Family::<WebhookLabel, Counter>::default();
        let api_requests = Family::<RequestLabel, Counter>::default();
        let api_duration = Family::<RouteLabel, Histogram, fn() -> Histogram>::new_with_constructor(api_histogram);
        let scraped = Arc::new(Scraped::default());
        registry.register("items_received", "Spans, data points and log records received", received.clone());
        registry.register("items_accepted", "Items acknowledged after the WAL fsync", accepted.clone());
        registry.register("items_rejected", "Items rejected, by reason", rejected.clone());
        registry.register("requests_rejected", "Export requests rejected whole, by reason", requests_rejected.clone());
        registry.register(
            "backpressure_rejections",
            "Requests refused because the write buffer was full",
            backpressure.clone(),
        );
        registry.register("wal_written_bytes", "Bytes written to the write-ahead log", wal_bytes.clone());
        registry.register("wal_syncs", "WAL fsyncs (group commits)", wal_syncs.clone());
        registry.register("wal_pending_bytes", "WAL bytes not yet flushed to Parquet", wal_pending_bytes.clone());
        registry.register(
            "wal_corrupt_records",
            "Damaged WAL records skipped at recovery, kept in wal/corrupt/",
            wal_corrupt_records.clone(),
        );
        registry.register(
            "wal_corrupt_bytes",
            "Bytes of damaged WAL records skipped at recovery",
            wal_corrupt_bytes.clone(),
        );
        registry.register(
            "wal_torn_bytes",
            "Bytes of torn WAL tails cut off at recovery, kept in wal/corrupt/",
            wal_torn_bytes.clone(),
        );
        registry.register(
            "wal_duplicate_records",
            "WAL records found in several segments at recovery, replayed once",
            wal_duplicate_records.clone(),
        );
        registry.register(
            "wal_segments_lost",
            "Times the WAL segment in use was deleted and the WAL recreated",
            wal_segments_lost.clone(),
        );
        registry.register("wal_writable", "1 while WAL writes succeed, 0 while they fail", wal_writable.clone());
        registry.register("buffered_bytes", "Arrow bytes buffered in memory awaiting flush", buffered_bytes.clone());
        registry.register("flushes", "Completed Parquet flushes", flushes.clone());
        registry.register("flush_errors", "Failed flush attempts (retried)", flush_errors.clone());
        registry.register("flush_duration_seconds", "Time to write one flush", flush_seconds.clone());
        registry.register("parquet_written_bytes", "Parquet bytes written", parquet_bytes.clone());
        registry.register("table_commits", "Delta commits of flushes, per table", table_commits.clone());
        registry.register("store_commits", "Delta commits of flushes, per store", store_commits.clone());
        registry.register(
            "store_uploaded_bytes",
            "Bytes of flushed files uploaded to the object store, per store",
            store_uploaded_bytes.clone(),
        );
        registry.register(
            "store_upload_duration_seconds",
            "Time to upload one flushed file to the object store, per store",
            store_upload_seconds.clone(),
        );
        registry.register(
            "store_retries",
            "Flushes that failed (an upload or a commit) and are retried with backoff, per store",
            store_retries.clone(),
        );
        registry.register("compactions", "Compaction commits, per table", compactions.clone());
        registry.register(
            "compaction_files_removed",
            "Small files removed by compaction (deleted later by vacuum), per table",
            compaction_files_removed.clone(),
        );
        registry.register(
            "compaction_files_written",
            "Files written by compaction, per table",
            compaction_files_written.clone(),
        );
        registry.register(
            "compaction_written_bytes",
            "Bytes written by compaction, per table",
            compaction_bytes_written.clone(),
        );
        registry.register(
            "retention_files_removed",
            "Files removed by retention (partitions past the maximum age), per table",
            retention_files_removed.clone(),
        );
        registry.register(
            "retention_partitions_removed",
            "Partitions removed by retention, per table and reason (age, table_size, project_size)",
            retention_partitions_removed.clone(),
        );
        registry.register(
            "retention_removed_bytes",
            "Bytes of the files removed by retention, per table and reason",
            retention_bytes_removed.clone(),
        );
        registry.register(
            "table_bytes",
            "Committed bytes of each table (its Delta snapshot's file sizes), as of the last maintenance round",
            table_bytes.clone(),
        );
        registry.register(
            "vacuum_files_deleted",
            "Removed files deleted from storage by vacuum, per table",
            vacuum_files_deleted.clone(),
        );
        registry.register(
            "maintenance_errors",
            "Compaction, retention or vacuum runs that failed (retried), per table",
            maintenance_errors.clone(),
        );
        registry.register("unpriced_spans", "Spans with tokens whose model has no price", unpriced_spans.clone());
        registry.register(
            "memory_refusals",
            "Requests refused at the memory ceiling (memory.limit_mb)",
            memory_refusals.clone(),
        );
        registry.register(
            "memory_refusals_permanent",
            "Requests refused for good (413 / RESOURCE_EXHAUSTED, not retried): larger than ingest.max_body_bytes or \
             needing more than the whole memory.limit_mb",
            memory_refusals_permanent.clone(),
        );
        registry.register(
            "memory_used_bytes",
            "Bytes reserved in the process memory budget",
            memory_used_bytes.clone(),
        );
        registry.register(
            "memory_limit_bytes",
            "The process memory budget (memory.limit_mb)",
            memory_limit_bytes.clone(),
        );
        registry.register(
            "parquet_unreadable_files",
            "Parquet files found unreadable (damaged or truncated); each is logged by name, skipped by queries, kept",
            parquet_unreadable_files.clone(),
        );
        registry.register(
            "parquet_skipped_files",
            "Parquet files queries skip now because they cannot be read",
            parquet_skipped_files.clone(),
        );
        registry.register(
            "connections_shed",
            "Idle connections closed to admit a new one at the connection cap (server.max_connections)",
            connections_shed.clone(),
        );
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes that failed (no shared version or cipher, a bad or missing client certificate, plaintext \
             on a TLS port) or did not finish within server.header_timeout",
            tls_handshake_failures.clone(),
        );
        registry.register(
            "auth_refusals",
            "Requests refused for their API key: missing, malformed, unknown, forbidden (scope) or project",
            auth_refusals.clone(),
        );
        registry.register(
            "webhook_deliveries",
            "Alert events delivered to a webhook (answered 2xx)",
            webhook_deliveries.clone(),
        );
        registry.register(
            "webhook_failures",
            "Webhook delivery attempts that failed, by reason: unreachable (connection error or timeout), \
             server_error (5xx, 408, 429), redirect (3xx, never followed), refused (other answers)",
            webhook_failures.clone(),
        );
        registry.register(
            "webhook_outbox_events",
            "Alert events waiting in a webhook's outbox on disk (queued, or failed and kept for the next try)",
            webhook_outbox_events.clone(),
        );
        registry.register(
            "webhook_outbox_bytes",
            "Bytes of the events in a webhook's outbox",
            webhook_outbox_bytes.clone(),
        );
        registry.register(
            "webhook_events_dropped",
            "Alert events not queued for a webhook: outbox_full (alerts.outbox_max_events or outbox_max_bytes) or \
             too_large; the event stays in the alert log",
            webhook_dropped.clone(),
        );
        registry.register(
            "webhook_outbox_corrupt_files",
            "Unreadable files found in a webhook's outbox, set aside in its corrupt/ directory",
            webhook_outbox_corrupt.clone(),
        );
        registry.register(
            "api_requests",
            "Requests answered by the API listener, by route pattern (unmatched: no route), method and status",
            api_requests.clone(),
        );
        registry.register(
            "api_request_duration_seconds",
            "Time from an API request to the end of its answer's body (a query's whole result), by route pattern",
            api_duration.clone(),
        );
        registry.register_collector(Box::new(scraped.clone()));
        Arc::new(Metrics {
            registry,
            received,
            accepted,
            rejected,
            requests_rejected,
            backpressure,
            wal_bytes,
            wal_syncs,
            wal_pending_bytes,
            wal_corrupt_records,
            wal_corrupt_bytes,
            wal_torn_bytes,
            wal_duplicate_records,
            wal_segments_lost,
            wal_writable,
            buffered_bytes,
            flushes,
            flush_errors,
            flush_seconds,
            parquet_bytes,
            table_commits,
            store_commits,
            store_uploaded_bytes,
            store_upload_seconds,
            store_retries,
            compactions,
            compaction_files_removed,
            compaction_files_written,
            compaction_bytes_written,
            retention_files_removed,
            retention_partitions_removed,
            retention_bytes_removed,
            table_bytes,
            vacuum_files_deleted,
            maintenance_errors,
            unpriced_spans,
            memory_refusals,
            memory_refusals_permanent,
            memory_used_bytes,
            memory_limit_bytes,
            parquet_unreadable_files,
            parquet_skipped_files,
            connections_shed,
            tls_handshake_failures,
            auth_refusals,
            webhook_deliveries,
            webhook_failures,
            webhook_outbox_events,
            webhook_outbox_bytes,
            webhook_dropped,
            webhook_outbox_corrupt,
            api_requests,
            api_duration,
            scraped,
        })
    }

    /// Adds series computed when scraped. The source is held weakly: scraping stops when it is dropped.
    pub fn add_scraped(&self, source: Weak<dyn ScrapeSeries>) {
        let mut sources = self.scraped.sources.write();
        sources.retain(|s| s.strong_count() > 0);
        sources.push(source);
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// The counter of idle connections shed at the cap on `listener` (for [`crate::net::serve`]).
    pub fn connections_shed(&self, listener: &str) -> Counter {
        self.connections_shed.get_or_create(&ListenerLabel { listener: listener.into() }).clone()
    }

    /// The counters of `listener` for [`crate::net::serve`]: connections shed, TLS handshakes failed.
    pub fn listener_counters(&self, listener: &str) -> crate::net::ListenerCounters {
        let label = ListenerLabel { listener: listener.into() };
        crate::net::ListenerCounters {
            shed: self.connections_shed.get_or_create(&label).clone(),
            tls_handshake_failures: self.tls_handshake_failures.get_or_create(&label).clone(),
        }
    }

    /// Counts `n` items of `signal` under a per-signal family.
    pub fn count(family: &Family<SignalLabel, Counter>, signal: tailscope_core::schema::Signal, n: u64) {
        family.get_or_create(&SignalLabel { signal: signal.table_name().into() }).inc_by(n);
    }

    /// Counts `n` rejected items of `signal` for `reason`.
    pub fn reject(&self, signal: tailscope_core::schema::Signal, reason: &str, n: u64) {
        self.rejected
            .get_or_create(&RejectLabel { signal: signal.table_name().into(), reason: reason.into() })
            .inc_by(n);
    }

    /// Counts one whole-request rejection.
    pub fn reject_request(&self, signal: tailscope_core::schema::Signal, reason: &str) {
        self.requests_rejected
            .get_or_create(&RejectLabel { signal: signal.table_name().into(), reason: reason.into() })
            .inc();
        if reason == "backpressure" {
            self.backpressure.inc();
        }
        if reason == "memory_limit" {
            self.memory_refusals.inc();
        }
    }
}

/// Counts and times every request `router` answers, by route pattern (`tailscope_api_requests_total`,
/// `tailscope_api_request_duration_seconds`). The pattern, not the path, so a client cannot make a series per URL.
pub fn track_requests(router: Router, metrics: Arc<Metrics>) -> Router {
    router.layer(axum::middleware::from_fn_with_state(metrics, track))
}

async fn track(State(metrics): State<Arc<Metrics>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", MatchedPath::as_str).to_string();
    let method = match request.method().as_str() {
        m @ ("GET" | "POST" | "HEAD" | "PUT" | "DELETE" | "OPTIONS" | "PATCH") => m,
        _ => "other",
    }
    .to_string();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics.api_requests.get_or_create(&RequestLabel { route: route.clone(), method, status }).inc();
    let histogram = metrics.api_duration.get_or_create(&RouteLabel { route }).clone();
    let (parts, body) = response.into_parts();
    let timed = Timed { inner: body, started, histogram: Some(histogram) };
    Response::from_parts(parts, axum::body::Body::new(timed))
}

/// A response body that records, when it ends (or is dropped: a client gone early), the time since its request.
struct Timed {
    inner: axum::body::Body,
    started: Instant,
    histogram: Option<Histogram>,
}

impl Timed {
    fn observe(&mut self) {
        if let Some(h) = self.histogram.take() {
            h.observe(self.started.elapsed().as_secs_f64());
        }
    }
}

impl http_body::Body for Timed {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_frame(cx);
        if matches!(poll, Poll::Ready(None | Some(Err(_)))) {
            this.observe();
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Timed {
    fn drop(&mut self) {
        self.observe();
    }
}
