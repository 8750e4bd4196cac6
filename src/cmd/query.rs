//! `tailscope query`. (Placeholder: filled in by the query work.)

use super::CmdResult;

/// Flags of `tailscope query`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `tailscope query`.
pub async fn run(_args: Args) -> CmdResult {
    Err("not built yet".into())
}
