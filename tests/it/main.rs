//! Integration tests: one binary that drives the real `tailscope` over real sockets.

mod budget;
mod demo;
mod ingest;
mod query;
mod sql_limits;
mod support;
mod tui;
