//! `tailscope simulate`. (Placeholder: filled in by the simulate work.)

use super::CmdResult;

/// Flags of `tailscope simulate`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `tailscope simulate`.
pub async fn run(_args: Args) -> CmdResult {
    Err("not built yet".into())
}
