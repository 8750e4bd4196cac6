//! One module per subcommand: its flags (`Args`) and its `run`.

pub mod cluster;
pub mod demo;
pub mod demo_multi_cloud;
pub mod keys;
pub mod prices;
pub mod projects;
pub mod query;
pub mod reprice;
pub mod retention;
pub mod serve;
pub mod simulate;
pub mod tui;

/// How the CLI reaches a server that is secured (issue 14: TLS and API keys).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServerAuth {
    /// API key with the query scope, sent as `Authorization: Bearer <key>`.
    #[arg(long, env = "TAILSCOPE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Trust this CA certificate (PEM) for an https:// server whose certificate is not publicly trusted.
    #[arg(long, value_name = "FILE", env = "TAILSCOPE_CA_CERT")]
    pub ca_cert: Option<std::path::PathBuf>,
    /// Present this client certificate (PEM) to a server that requires mutual TLS; with --client-key.
    #[arg(long, value_name = "FILE", env = "TAILSCOPE_CLIENT_CERT", requires = "client_key")]
    pub client_cert: Option<std::path::PathBuf>,
    /// The private key (PEM) of --client-cert.
    #[arg(long, value_name = "FILE", env = "TAILSCOPE_CLIENT_KEY", requires = "client_cert")]
    pub client_key: Option<std::path::PathBuf>,
}

/// PEM files are kilobytes; anything past this is a wrong path (a log, a device), not a certificate or key.
const MAX_PEM_BYTES: u64 = 1 << 20;

/// Reads the PEM file a flag names, refusing more than [`MAX_PEM_BYTES`].
fn read_pem(flag: &str, path: &std::path::Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read {flag} {}: {e}", path.display()))?;
    let mut pem = Vec::new();
    file.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut pem)
        .map_err(|e| format!("cannot read {flag} {}: {e}", path.display()))?;
    if pem.len() as u64 > MAX_PEM_BYTES {
        return Err(format!("{flag} {} is larger than 1 MiB: it is not a PEM file", path.display()));
    }
    Ok(pem)
}

impl ServerAuth {
    /// An HTTP client builder that sends the token, trusts the CA and presents the client certificate.
    pub fn client_builder(&self) -> Result<reqwest::ClientBuilder, String> {
        let mut builder = reqwest::Client::builder();
        if let Some(token) = &self.token {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", token.trim()))
                .map_err(|_| "--token holds characters a header cannot carry".to_string())?;
            value.set_sensitive(true);
            let mut headers = reqwest::header::HeaderMap::new();
            headers.insert(reqwest::header::AUTHORIZATION, value);
            builder = builder.default_headers(headers);
        }
        if let Some(path) = &self.ca_cert {
            let pem = read_pem("--ca-cert", path)?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| format!("--ca-cert {} is not PEM certificates: {e}", path.display()))?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        if let (Some(cert), Some(key)) = (&self.client_cert, &self.client_key) {
            let mut pem = read_pem("--client-cert", cert)?;
            pem.push(b'\n');
            pem.extend(read_pem("--client-key", key)?);
            let identity = reqwest::Identity::from_pem(&pem).map_err(|e| {
                format!(
                    "--client-cert {} with --client-key {}: not a PEM certificate and its key: {e}",
                    cert.display(),
                    key.display()
                )
            })?;
            builder = builder.identity(identity);
        }
        Ok(builder)
    }
}

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
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // delta-rs's kernel logs every snapshot it loads at info (several lines a second) and, as an error, every look
    // for a table that does not exist yet (each first start): silent unless RUST_LOG names it. What fails reaches
    // tailscope's own log through the error delta-rs returns.
    if !std::env::var("RUST_LOG").is_ok_and(|v| v.contains("kernel") || v.contains("deltalake")) {
        // Ballista logs each job's whole plan at info (megabytes for a long IN list) and a line per job submitted.
        for directive in [
            "buoyant_kernel=off",
            "buoyant_kernel_engine=off",
            "deltalake_core=warn",
            "ballista_scheduler=warn",
            "ballista_executor=warn",
            "ballista_core=warn",
            "ballista=warn",
        ] {
            if let Ok(d) = directive.parse() {
                filter = filter.add_directive(d);
            }
        }
    }
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(colour);
    if std::env::var("TAILSCOPE_LOG_FORMAT").is_ok_and(|v| v == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
}
