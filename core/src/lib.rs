//! What every tailscope crate shares, at the bottom of the crate graph: the columnar [`schema`] of the stored
//! tables, the [`catalog`] of what a query can see, the on-disk [`layout`] (file names and the Parquet writer's
//! settings), the process-wide [`memory`] budget, the typed [`config`] (with its [`cost`] sections and the alert
//! [`webhook`] settings), the [`alerts`] table, the [`history`] trait that budgets read stored spans through, the
//! business [`rules`] every reader shares, the attribute names the normaliser reads ([`keys`]), and how figures
//! read to people ([`display`]: money, shares, latencies), and the [`dashboard`] files both renderers (terminal and
//! web) draw.
//!
//! The crate graph reads as the data path: `tailscope-core` -> `tailscope-collector` (receive, normalise, price,
//! WAL, Parquet) and `tailscope-query` (SQL over what the catalog lists) -> `tailscope-tui` -> the `tailscope`
//! binary, which wires them together. Nothing here opens a socket: no gRPC, HTTP or OpenTelemetry crate is a
//! dependency, so `query` and `tui` get the schema and the catalog without linking the collector's receivers, its
//! WAL or its webhooks.

pub mod alerts;
pub mod catalog;
pub mod config;
pub mod cost;
pub mod dashboard;
pub mod display;
pub mod error;
pub mod glob;
pub mod history;
pub mod keys;
pub mod layout;
pub mod memory;
pub mod placement;
pub mod projects;
pub mod rules;
pub mod schema;
pub mod webhook;
