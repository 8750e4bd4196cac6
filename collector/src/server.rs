//! A running collector: the durable write path, the OTLP receivers, and its health and metrics endpoints.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tailscope_core::catalog::Catalog;
use tailscope_core::config::Config;
use thiserror::Error;

use crate::cost::Pricer;
use crate::error::StorageError;
use crate::ingest::{Ingest, RecoveryReport};
use crate::observe::SpanObserver;
use crate::receiver::Receiver;
use crate::telemetry::Metrics;

/// Why the collector could not start.
#[derive(Debug, Error)]
pub enum StartError {
    /// The data dir or WAL could not be opened or recovered.
    #[error("cannot open the data directory: {0}")]
    Storage(#[from] StorageError),
    /// The price tables could not be loaded.
    #[error("cannot load prices: {0}")]
    Pricing(String),
    /// A cache's fixed reservation did not fit in the memory budget (config validation makes sure it fits when
    /// nothing else is held, so this means the start-up itself still held memory).
    #[error("cannot reserve the memory of a cache: {0}; raise memory.limit_mb or lower the cache's bound")]
    Memory(#[from] tailscope_core::memory::MemoryError),
}

/// The collector's core, started but not yet serving.
#[derive(Clone)]
pub struct Collector {
    ingest: Arc<Ingest>,
    receiver: Receiver,
    metrics: Arc<Metrics>,
}

impl Collector {
    /// Recovers the data dir (replaying the WAL) and prepares the receivers. Nothing listens yet.
    pub async fn start(config: Config) -> Result<(Collector, RecoveryReport), StartError> {
        let pricer = Pricer::from_config(&config.pricing).map_err(|e| StartError::Pricing(e.to_string()))?;
        let metrics = Metrics::new();
        let (ingest, report) = Ingest::start(config, metrics.clone(), &pricer).await?;
        // After recovery, whose flush released what replay held: the cache's bound is held for as long as it lives.
        pricer.reserve_cache(ingest.memory())?;
        let receiver = Receiver::new(ingest.clone(), Arc::new(pricer));
        Ok((Collector { ingest, receiver, metrics }, report))
    }

    /// What queries can see: committed files plus the acknowledged, unflushed buffer.
    pub fn catalog(&self) -> Catalog {
        self.ingest.catalog().clone()
    }

    /// The collector's own metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The write path.
    pub fn ingest(&self) -> &Arc<Ingest> {
        &self.ingest
    }

    /// Adds a consumer of acknowledged spans. Call before serving.
    pub fn add_observer(&self, observer: Arc<dyn SpanObserver>) {
        self.ingest.add_observer(observer);
    }

    /// The OTLP/HTTP routes (`/v1/traces`, `/v1/metrics`, `/v1/logs`).
    pub fn otlp_http_router(&self) -> Router {
        crate::otlp_http::router(self.receiver.clone())
    }

    /// The OTLP/gRPC services, to serve with [`crate::net::serve`].
    pub fn otlp_grpc_service(&self) -> crate::grpc::GrpcService {
        crate::grpc::service(self.receiver.clone())
    }

    /// `GET /healthz` (the process is up), `GET /readyz` (it accepts data: not shutting down, the WAL writable,
    /// flushes succeeding, not applying backpressure; otherwise 503 with the reason), `GET /metrics` (Prometheus).
    pub fn ops_router(&self) -> Router {
        Router::new()
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz))
            .route("/metrics", get(prometheus))
            .with_state(self.clone())
    }

    /// Runs the periodic flusher, and the tables' compaction, retention and vacuum beside it, until shutdown
    /// begins. Returns the flusher's task.
    pub fn spawn_flusher(&self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(self.ingest.clone().run_maintenance());
        tokio::spawn(self.ingest.clone().run_flusher())
    }

    /// Stops accepting data and flushes everything to Parquet.
    pub async fn shutdown(&self) -> Result<(), StorageError> {
        self.ingest.shutdown().await
    }
}

async fn readyz(State(c): State<Collector>) -> impl IntoResponse {
    let ingest = &c.ingest;
    if ingest.is_shutting_down() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n".to_string());
    }
    // Writes that fail (disk full, permissions, the WAL directory deleted) refuse every request: say so. Probes are
    // open to anyone, so the error's own text (paths, OS messages) stays in the log.
    if let Some(problem) = ingest.not_ready() {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {problem}\n"));
    }
    let memory = ingest.memory();
    // Past 90% of the memory ceiling, requests are about to be refused: not ready (the same rule as the buffer's).
    if memory.used() as f64 > 0.9 * memory.limit() as f64 {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("memory {} of {} bytes (memory.limit_mb) reserved: refusing data\n", memory.used(), memory.limit()),
        );
    }
    let limit = ingest.config().ingest.max_buffer_bytes;
    let buffered = ingest.buffered_bytes();
    // Past 90% of the buffer, new data is about to be refused, and after a refusal clients wait out `retry_after`:
    // tell load balancers to send data elsewhere.
    if buffered as f64 > 0.9 * limit as f64 || ingest.backpressure_within(ingest.config().ingest.retry_after) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("write buffer {buffered} of {limit} bytes: applying backpressure\n"),
        );
    }
    (StatusCode::OK, "ready\n".to_string())
}

async fn prometheus(State(c): State<Collector>) -> impl IntoResponse {
    let memory = c.ingest.memory();
    c.metrics.memory_used_bytes.set(memory.used() as i64);
    c.metrics.memory_limit_bytes.set(memory.limit() as i64);
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], c.metrics.encode())
}
