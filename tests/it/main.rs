//! Integration tests: one binary that drives the real `tailscope` over real sockets.

mod support;
mod query;
mod tui;
mod budget;
mod demo;
