//! `tailscope serve`.

use super::CmdResult;

/// Flags of `tailscope serve`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs the collector until SIGTERM / Ctrl-C.
pub async fn run(_args: Args) -> CmdResult {
    Err("not built yet".into())
}
