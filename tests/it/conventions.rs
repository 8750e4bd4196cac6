//! The conventions operators expect of a collector (issue #14), each against the real binary: addresses by host
//! name, settings from the environment and secrets from files, sizes and durations as people write them, zstd and
//! deflate bodies, CORS for browser exporters, answers without `partialSuccess` when everything was accepted, logs
//! without colour codes in files, and Flight SQL prepared statements with parameters and the metadata JDBC asks for.

use crate::support::Server;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_carry_no_colour_codes_when_stderr_is_not_a_terminal() {
    let server = Server::start().await;
    let log = server.log();
    assert!(log.contains("tailscope is serving"), "{log}");
    assert!(!log.contains('\u{1b}'), "ANSI escape codes in a log file: {log:?}");
}
