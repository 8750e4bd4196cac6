//! One module per subcommand: its flags (`Args`) and its `run`.

pub mod demo;
pub mod query;
pub mod serve;
pub mod simulate;
pub mod tui;

/// What a subcommand returns: any error, printed once by `main` as `error: …`.
pub type CmdResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// Structured logs to stderr, filtered by `RUST_LOG` (default `info`); `TAILSCOPE_LOG_FORMAT=json` for JSON lines.
pub fn init_logging(to_stderr: bool) {
    use tracing_subscriber::EnvFilter;
    if !to_stderr {
        return;
    }
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if std::env::var("TAILSCOPE_LOG_FORMAT").is_ok_and(|v| v == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
}
