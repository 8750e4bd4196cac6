//! SQL over tailscope's telemetry: Apache DataFusion over the collector's Parquet files and its unflushed buffer.
//!
//! - [`Engine`]: read-only SQL with a timeout, a memory limit and bounded concurrency, over the `spans`, `metrics`,
//!   `logs` and `alerts` tables and the views (`llm_calls`, `sessions`, `provider_latency`, the cost views).
//! - [`Engine`] is also the [`tailscope_core::history::SpanHistory`] budgets rebuild their spend from at start-up.
//! - [`router`]: `POST /api/v1/query` (JSON, CSV or Arrow IPC), merged into the API server.
//! - [`format`]: rendering results as a table, CSV, JSON, Arrow IPC or Parquet (CLI and HTTP share it).
//!
//! Arrow Flight SQL over the engine is the `tailscope-flight` crate, above this one, so that readers of the engine
//! (the dashboard, the CLI) do not link a gRPC server.

mod alerts;
mod cost_views;
mod engine;
mod error;
pub mod fixture;
pub mod format;
mod history;
mod http;
mod limits;
mod output_memory;
mod parameters;
mod quantile;
mod redact;
pub mod shell;
#[cfg(test)]
mod slt_tests;
mod string_group;
mod table;
#[cfg(test)]
mod tests;
mod unnest_guard;
mod unreadable;
mod views;

pub use alerts::AlertsTable;
pub use engine::{
    CATALOG_NAME, Cluster, Engine, Prepared, QueryOutput, QueryStream, Relation, SCHEMA_NAME, memory_pool,
    session_config,
};
pub use error::QueryError;
pub use http::router;
pub use quantile::{QUANTILE_EXACT, QUANTILE_EXACT_SHARED, quantile_linear, quantiles_exact_shared_udaf};
pub use table::{ScanCounters, SignalTable, table_schema};
pub use unnest_guard::UnnestInputGuardExec;
