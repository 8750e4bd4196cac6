//! Integration tests: one binary that drives the real `tailscope` over real sockets.

mod support;
mod ingest;
mod budget;
mod query;
mod tui;
mod demo;
