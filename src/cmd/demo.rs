//! `tailscope demo`. (Placeholder: filled in by the demo work.)

use super::CmdResult;

/// Flags of `tailscope demo`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `tailscope demo`.
pub async fn run(_args: Args) -> CmdResult {
    Err("not built yet".into())
}

/// Whether this command shows the dashboard (and so must not log to stderr).
pub fn owns_terminal(_command: &crate::Command) -> bool {
    false
}
