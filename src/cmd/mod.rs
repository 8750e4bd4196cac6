//! One module per subcommand: its flags (`Args`) and its `run`.

pub mod demo;
pub mod query;
pub mod serve;
pub mod simulate;
pub mod tui;

/// What a subcommand returns: any error, printed once by `main` as `error: …`.
pub type CmdResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// Structured logs to stderr, filtered by `RUST_LOG` (default `info`); `TAILSCOPE_LOG_FORMAT=json` for JSON lines.
/// Coloured only on a terminal, and not when `NO_COLOR` is set: escape codes in a file or a log collector's input
/// are noise that every reader has to strip.
pub fn init_logging(to_stderr: bool) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    if !to_stderr {
        return;
    }
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(colour);
    if std::env::var("TAILSCOPE_LOG_FORMAT").is_ok_and(|v| v == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
}
