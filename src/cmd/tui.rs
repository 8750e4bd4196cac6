//! `tailscope tui`. (Placeholder: filled in by the tui work.)

use super::CmdResult;

/// Flags of `tailscope tui`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `tailscope tui`.
pub async fn run(_args: Args) -> CmdResult {
    Err("not built yet".into())
}
