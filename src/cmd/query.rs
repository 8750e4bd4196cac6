//! `tailscope query`: one SQL statement (or an interactive shell) over local files or a running server.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;

use ::query::format::{self, ARROW_STREAM_MEDIA_TYPE, Format};
use ::query::shell::{HELP, Input, LineBuffer};
use ::query::{Engine, QueryOutput};

use super::CmdResult;

/// Flags of `tailscope query`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The SQL statement. Omit it on a terminal for an interactive shell; `-` (or a pipe) reads it from stdin.
    pub sql: Option<String>,
    /// Query the Parquet files under this data dir directly (default: the config's data_dir, ./tailscope-data).
    #[arg(long, conflicts_with = "server")]
    pub data_dir: Option<PathBuf>,
    /// Query a running collector instead, e.g. http://127.0.0.1:4319 (sees unflushed spans too).
    #[arg(long, env = "TAILSCOPE_SERVER")]
    pub server: Option<String>,
    /// Output format: table, csv, json (an array of row objects), ndjson, arrow or parquet.
    #[arg(long, short, default_value = "table")]
    pub format: Format,
    /// Write the result to this file instead of stdout.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    /// The tailscope config file (data_dir and [query] limits).
    #[arg(long, short, env = "TAILSCOPE_CONFIG")]
    pub config: Option<PathBuf>,
}

/// Where statements run.
enum Backend {
    Local(Engine),
    Remote { url: String, http: reqwest::Client },
}

impl Backend {
    async fn run(&self, sql: &str) -> Result<QueryOutput, Box<dyn std::error::Error + Send + Sync>> {
        match self {
            Backend::Local(engine) => Ok(engine.sql(sql).await?),
            Backend::Remote { url, http } => {
                let response = http
                    .post(url)
                    .header(reqwest::header::ACCEPT, ARROW_STREAM_MEDIA_TYPE)
                    .json(&serde_json::json!({ "sql": sql }))
                    .send()
                    .await
                    .map_err(|e| format!("cannot reach {url}: {e}"))?;
                let status = response.status();
                let body = response.bytes().await.map_err(|e| format!("reading the answer of {url}: {e}"))?;
                if !status.is_success() {
                    let message = serde_json::from_slice::<serde_json::Value>(&body)
                        .ok()
                        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
                        .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
                    return Err(format!("{message} (HTTP {status})").into());
                }
                Ok(format::read_arrow_stream(&body)?)
            }
        }
    }
}

/// Runs `tailscope query`.
pub async fn run(args: Args) -> CmdResult {
    let backend = backend(&args).await?;
    let sql = match args.sql.as_deref() {
        Some("-") => Some(read_stdin()?),
        Some(sql) => Some(sql.to_string()),
        None if !std::io::stdin().is_terminal() => Some(read_stdin()?),
        None => None,
    };
    match sql {
        Some(sql) => {
            let output = backend.run(&sql).await?;
            emit(&args, &output)
        }
        None => shell(&args, &backend).await,
    }
}

async fn backend(args: &Args) -> Result<Backend, Box<dyn std::error::Error + Send + Sync>> {
    if let Some(server) = &args.server {
        let base = server.trim_end_matches('/');
        let base = if base.contains("://") { base.to_string() } else { format!("http://{base}") };
        return Ok(Backend::Remote { url: format!("{base}/api/v1/query"), http: reqwest::Client::new() });
    }
    let config = match &args.config {
        Some(path) => collector::config::Config::load(path)?,
        None => collector::config::Config::default(),
    };
    let data_dir = args.data_dir.clone().unwrap_or(config.data_dir);
    if !data_dir.is_dir() {
        return Err(format!(
            "no data dir at {}: pass --data-dir DIR (where `tailscope serve` writes) or --server URL",
            data_dir.display()
        )
        .into());
    }
    Ok(Backend::Local(Engine::open(data_dir, config.query).await?))
}

fn read_stdin() -> std::io::Result<String> {
    let mut sql = String::new();
    std::io::stdin().read_to_string(&mut sql)?;
    Ok(sql)
}

fn emit(args: &Args, output: &QueryOutput) -> CmdResult {
    match &args.output {
        Some(path) => {
            let file = std::fs::File::create(path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
            let mut out = std::io::BufWriter::new(file);
            format::write(args.format, output, &mut out)?;
            out.flush()?;
        }
        None => {
            if matches!(args.format, Format::Parquet | Format::Arrow) && std::io::stdout().is_terminal() {
                return Err("binary output to a terminal: pass --output FILE or redirect stdout".into());
            }
            let mut out = std::io::BufWriter::new(std::io::stdout());
            format::write(args.format, output, &mut out)?;
            if matches!(args.format, Format::Json) {
                writeln!(out)?;
            }
            out.flush()?;
        }
    }
    Ok(())
}

async fn shell(args: &Args, backend: &Backend) -> CmdResult {
    let mut editor = rustyline::DefaultEditor::new()?;
    let history = std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".tailscope_history"));
    if let Some(path) = &history {
        let _ = editor.load_history(path);
    }
    let target = match backend {
        Backend::Local(_) => "local files",
        Backend::Remote { url, .. } => url.as_str(),
    };
    println!("tailscope SQL over {target}. \\? for help, \\q to quit.");
    let mut buffer = LineBuffer::default();
    loop {
        let prompt = if buffer.is_continuing() { "      -> " } else { "tailscope> " };
        let line = match editor.readline(prompt) {
            Ok(line) => line,
            Err(rustyline::error::ReadlineError::Interrupted) => {
                buffer = LineBuffer::default();
                continue;
            }
            Err(rustyline::error::ReadlineError::Eof) => break,
            Err(e) => return Err(e.into()),
        };
        let Some(input) = buffer.push(&line) else { continue };
        let sql = match input {
            Input::Quit => break,
            Input::Help => {
                println!("{HELP}");
                continue;
            }
            Input::Unknown(cmd) => {
                eprintln!("unknown command {cmd}: \\? lists them");
                continue;
            }
            Input::Describe(sql) => {
                let _ = editor.add_history_entry(line.trim());
                sql
            }
            Input::Sql(sql) => {
                let _ = editor.add_history_entry(format!("{sql};"));
                sql
            }
        };
        let started = std::time::Instant::now();
        match backend.run(&sql).await {
            Ok(output) => {
                // The shell prints tables unless another format was asked for.
                let mut out = std::io::BufWriter::new(std::io::stdout());
                let format =
                    if matches!(args.format, Format::Parquet | Format::Arrow) { Format::Table } else { args.format };
                format::write(format, &output, &mut out)?;
                writeln!(out, "({:.3} s)", started.elapsed().as_secs_f64())?;
            }
            Err(e) => eprintln!("error: {e}"),
        }
    }
    if let Some(path) = &history {
        let _ = editor.save_history(path);
    }
    Ok(())
}
