//! `tailscope query`: one SQL statement (or an interactive shell) over local files or a running server.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;

use ::query::Engine;
use ::query::format::{ARROW_STREAM_MEDIA_TYPE, ArrowStreamDecoder, Encoder, Format};
use ::query::shell::{HELP, Input, LineBuffer};
use futures::StreamExt;

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
    /// Run the statement on a Ballista cluster, df://HOST:PORT (`tailscope scheduler`), over the committed tables
    /// of the scheduler's stores [config: query.cluster].
    #[arg(long, value_name = "df://HOST:PORT", env = "TAILSCOPE_CLUSTER", conflicts_with = "server")]
    pub cluster: Option<String>,
    /// Output format: table, csv, json (an array of row objects), ndjson, arrow or parquet.
    #[arg(long, short, default_value = "table")]
    pub format: Format,
    /// Write the result to this file instead of stdout.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    /// The tailscope config file (data_dir, [query] limits, and where the tables are: storage.url and
    /// [[storage.placement]], whose stores are all read).
    #[arg(long, short, env = "TAILSCOPE_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub auth: super::ServerAuth,
}

/// Where statements run.
pub(super) enum Backend {
    Local(Engine),
    Remote { url: String, http: reqwest::Client },
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Backend {
    /// Runs `sql` and writes its result in `format` to `out` batch by batch, as the rows come (a large export
    /// never sits whole in memory). Returns the number of rows.
    pub(super) async fn run(&self, sql: &str, format: Format, out: &mut (dyn Write + Send)) -> Result<usize, BoxError> {
        let mut rows = 0;
        match self {
            Backend::Local(engine) => {
                let mut stream = engine.stream(sql).await?;
                let mut encoder = Encoder::new(format, stream.schema())?;
                while let Some(batch) = stream.next().await {
                    let batch = batch?;
                    rows += batch.num_rows();
                    out.write_all(&encoder.write(&batch)?)?;
                }
                out.write_all(&encoder.finish()?)?;
            }
            Backend::Remote { url, http } => {
                let mut response = http
                    .post(url)
                    .header(reqwest::header::ACCEPT, ARROW_STREAM_MEDIA_TYPE)
                    .json(&serde_json::json!({ "sql": sql }))
                    .send()
                    .await
                    .map_err(|e| format!("cannot reach {url}: {e}"))?;
                let status = response.status();
                if !status.is_success() {
                    let body = response.bytes().await.map_err(|e| format!("reading the answer of {url}: {e}"))?;
                    let message = serde_json::from_slice::<serde_json::Value>(&body)
                        .ok()
                        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
                        .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
                    return Err(format!("{message} (HTTP {status})").into());
                }
                // The answer is an Arrow IPC stream, decoded as its chunks arrive.
                let mut decoder = ArrowStreamDecoder::new();
                let mut encoder = None;
                let cut = |e: reqwest::Error| {
                    format!("the answer of {url} was cut short (the query failed or timed out on the server): {e}")
                };
                while let Some(chunk) = response.chunk().await.map_err(cut)? {
                    let batches = decoder.feed(&chunk)?;
                    if encoder.is_none()
                        && let Some(schema) = decoder.schema()
                    {
                        encoder = Some(Encoder::new(format, schema)?);
                    }
                    if let Some(encoder) = encoder.as_mut() {
                        for batch in batches {
                            rows += batch.num_rows();
                            out.write_all(&encoder.write(&batch)?)?;
                        }
                    }
                }
                decoder.finish().map_err(|e| format!("the answer of {url} ended in the middle of the result: {e}"))?;
                let encoder = encoder.ok_or_else(|| format!("the answer of {url} holds no result"))?;
                out.write_all(&encoder.finish()?)?;
            }
        }
        Ok(rows)
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
    let done = match sql {
        Some(sql) => emit(&args, &backend, &sql).await,
        None => shell(&args, &backend).await,
    };
    // A statement that timed out on a cluster is cancelled there by a message this process sends in the background:
    // give it a moment before the runtime, and the message with it, is dropped.
    if let Backend::Local(engine) = &backend {
        engine.settle(std::time::Duration::from_secs(3)).await;
    }
    done
}

async fn backend(args: &Args) -> Result<Backend, BoxError> {
    if let Some(server) = &args.server {
        return remote(server, &args.auth);
    }
    let config = match &args.config {
        Some(path) => tailscope_core::config::Config::load(path)?,
        None => tailscope_core::config::Config::default(),
    };
    if let Some(url) = args.cluster.clone().or_else(|| config.query.cluster.clone()) {
        // The scheduler reads the tables; here they only give the statement its columns.
        let data_dir = args.data_dir.clone().unwrap_or(config.data_dir);
        let catalog = tailscope_core::catalog::Catalog::new(data_dir);
        let cluster = cluster::BallistaClient::new(&url)?;
        return Ok(Backend::Local(Engine::on_cluster(catalog, config.query, cluster).await?));
    }
    local(args.data_dir.clone(), config).await
}

/// A running collector's SQL API at `server` (`http://` assumed when no scheme is given).
pub(super) fn remote(server: &str, auth: &super::ServerAuth) -> Result<Backend, BoxError> {
    let base = server.trim_end_matches('/');
    let base = if base.contains("://") { base.to_string() } else { format!("http://{base}") };
    let http = auth.client_builder()?.build()?;
    Ok(Backend::Remote { url: format!("{base}/api/v1/query"), http })
}

/// The Parquet files under `data_dir` (default: the config's).
pub(super) async fn local(
    data_dir: Option<PathBuf>,
    config: tailscope_core::config::Config,
) -> Result<Backend, BoxError> {
    let data_dir = data_dir.unwrap_or(config.data_dir);
    if !config.storage.placement.is_empty() {
        // Placement rules: the tables are the union of every rule's store and the default store.
        let url = config.storage.url.as_deref();
        return Ok(Backend::Local(Engine::open_placed(data_dir, url, &config.storage.placement, config.query).await?));
    }
    if let Some(url) = config.storage.url.as_deref() {
        // The tables are on the object store: the data dir (the collector's WAL) is not read.
        return Ok(Backend::Local(Engine::open_at(data_dir, Some(url), config.query).await?));
    }
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

async fn emit(args: &Args, backend: &Backend, sql: &str) -> CmdResult {
    match &args.output {
        Some(path) => {
            let file = std::fs::File::create(path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
            let mut out = std::io::BufWriter::new(file);
            backend.run(sql, args.format, &mut out).await?;
            out.flush()?;
        }
        None => {
            if matches!(args.format, Format::Parquet | Format::Arrow) && std::io::stdout().is_terminal() {
                return Err("binary output to a terminal: pass --output FILE or redirect stdout".into());
            }
            let mut out = std::io::BufWriter::new(std::io::stdout());
            backend.run(sql, args.format, &mut out).await?;
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
        // The shell prints tables unless another format was asked for.
        let format = if matches!(args.format, Format::Parquet | Format::Arrow) { Format::Table } else { args.format };
        let mut out = std::io::BufWriter::new(std::io::stdout());
        match backend.run(&sql, format, &mut out).await {
            Ok(_) => writeln!(out, "({:.3} s)", started.elapsed().as_secs_f64())?,
            Err(e) => {
                out.flush()?;
                eprintln!("error: {e}");
            }
        }
        out.flush()?;
    }
    if let Some(path) = &history {
        let _ = editor.save_history(path);
    }
    Ok(())
}
