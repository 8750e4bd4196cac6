//! Integration tests: one binary that drives the real `tailscope` over real sockets.

mod budget;
mod demo;
mod hostile;
mod ingest;
mod query;
mod support;
mod tui;
