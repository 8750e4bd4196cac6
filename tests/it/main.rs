//! Integration tests: one binary that drives the real `tailscope` over real sockets.

mod browser;
mod budget;
mod cluster;
mod connections;
mod conventions;
mod demo;
mod faults;
mod hostile;
mod ingest;
mod live_merge;
mod object_store;
mod operations;
mod overload;
mod parsers;
mod placement;
mod prices;
mod projects;
mod query;
mod release;
mod retention;
mod security;
mod sql_limits;
mod storage;
mod support;
mod tui;
mod web;
