//! The tailscope collector: receives OTLP (gRPC and HTTP, protobuf and JSON), normalises agent spans to one
//! columnar schema ([`tailscope_core::schema`]), prices them ([`cost`]), makes them durable in a write-ahead log
//! ([`wal`]) before acknowledging, and flushes them to Parquet in a hive layout ([`writer`]), each flush one commit per Delta table (`tailscope-store`).
//! The catalog
//! ([`tailscope_core::catalog`]) tells queries which files and buffered rows exist.
//!
//! Data path: `grpc`/`http` receive -> [`normalize`] -> [`ingest`] (WAL group commit, buffer, backpressure)
//! -> [`writer`] (Parquet) -> [`tailscope_core::catalog::Catalog`] (what queries see).
//!
//! What the query side shares with the collector (the schema, the catalog, file naming, the memory budget, the
//! config) is in `tailscope-core`, below both, so that `query` and `tui` do not link this crate.

pub mod admission;
#[cfg(test)]
mod alloc_meter;
pub mod auth;
pub mod cost;
pub mod error;
pub mod failpoint;
pub mod grpc;
pub mod ingest;
pub mod live;
pub mod net;
pub mod normalize;
pub mod observe;
pub mod otlp_http;
pub mod prescan;
pub mod receiver;
pub mod server;
pub mod telemetry;
pub mod tls;
pub mod wal;
pub mod wire;
pub mod writer;
