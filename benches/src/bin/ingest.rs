//! Ingest benchmark: OTLP/gRPC over loopback with concurrent exporters, against the real `tailscope serve`
//! (durability on) and, in the same run and with the same requests, a decode-only gRPC server (tonic + prost:
//! decode, then drop). Reports spans/s, server CPU-seconds per million spans, spans per CPU-second, peak RSS and
//! on-disk bytes per span next to the same requests as OTLP protobuf compressed with zstd.
//!
//! ```text
//! cargo build --profile bench -p tailscope-benches --bin ingest && cargo build --profile bench --bin tailscope
//! target/release/ingest --spans 1000000 --exporters 8 --rounds 3
//! ```
//!
//! Each round measures the decode-only server, then tailscope; the ratios are reported per round and as their
//! median, so that load from other work on the machine falls on both servers alike. With `--tls`, each round also
//! measures tailscope with TLS on its gRPC listener and an API key required (what a public bind needs), and reports
//! its spans per CPU-second against plaintext tailscope's in the same round (the issue's target: at most 15% less).
//!
//! Both servers run as child processes, so their CPU time and memory come from the kernel's accounting of
//! exactly that process (the decode-only server is this binary re-executed with `--baseline-server`).

#[path = "../ingest/corpus.rs"]
mod corpus;
#[path = "../ingest/process.rs"]
mod process;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::BufMut;
use clap::Parser;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Ingest benchmark for tailscope.
#[derive(Debug, Parser)]
#[command(name = "ingest")]
struct Args {
    /// The `tailscope` binary to measure (default: next to this one, i.e. the same profile's build).
    #[arg(long)]
    tailscope: Option<PathBuf>,
    /// Spans to send to each server.
    #[arg(long, default_value_t = 2_000_000)]
    spans: u64,
    /// Concurrent exporters (each with its own connection, like separate services).
    #[arg(long, default_value_t = 8)]
    exporters: usize,
    /// Spans per export request (the SDK batch processor's default batch is 512).
    #[arg(long, default_value_t = 200)]
    spans_per_request: usize,
    /// Distinct requests in the corpus, sent round-robin (with unique trace ids per send).
    #[arg(long, default_value_t = 64)]
    corpus_requests: usize,
    /// Only measure the decode-only baseline.
    #[arg(long)]
    skip_tailscope: bool,
    /// Only measure tailscope.
    #[arg(long)]
    skip_baseline: bool,
    /// Keep tailscope's data directory (printed) for inspection.
    #[arg(long)]
    keep_data: bool,
    /// Rounds of (decode-only, then tailscope); the ratios are each round's, and their median. Other work on
    /// the machine moves single figures by ±5 %; alternating lets it fall on both servers alike.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Also measure tailscope with TLS and API keys on (a certificate made for the run, an ingest key sent as a
    /// bearer token on every request), beside plaintext tailscope in the same round.
    #[arg(long)]
    tls: bool,
    /// Also measure tailscope with its tables on this object store (`storage.url`, e.g. `s3://bench/tables`; the
    /// store's credentials and endpoint come from the environment, e.g. `AWS_ENDPOINT` for an S3 server on
    /// loopback), beside plaintext tailscope on local disk in the same round.
    #[arg(long)]
    storage_url: Option<String>,
    /// Also measure tailscope with three budgets (total, egress, duplicate inference), standalone and as a fleet's
    /// budget coordinator (`[fleet] role = "coordinator"`: it tallies its buffer and every committed file), in the
    /// same round: what joining a fleet costs a collector.
    #[arg(long)]
    fleet: bool,
    /// Internal: run as the decode-only baseline server on this address and print `LISTENING <addr>`.
    #[arg(long, hide = true)]
    baseline_server: Option<SocketAddr>,
}

fn main() -> Result<(), BoxError> {
    let args = Args::parse();
    if let Some(addr) = args.baseline_server {
        return run_baseline_server(addr);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(bench(args))
}

// ---------------------------------------------------------------------------------------------------------------
// The decode-only baseline server.

#[derive(Default)]
struct DecodeOnly {
    spans: AtomicU64,
}

#[tonic::async_trait]
impl TraceService for DecodeOnly {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        // tonic + prost have decoded the whole request by now; count (so the decode cannot be optimised away)
        // and drop it.
        let n: usize =
            request.get_ref().resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len()).sum();
        self.spans.fetch_add(n as u64, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

fn run_baseline_server(addr: SocketAddr) -> Result<(), BoxError> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        println!("LISTENING {local}");
        std::io::stdout().flush()?;
        let incoming = futures::stream::unfold(listener, |l| async move {
            let r = l.accept().await.map(|(s, _)| {
                let _ = s.set_nodelay(true);
                s
            });
            Some((r, l))
        });
        let service = TraceServiceServer::new(DecodeOnly::default()).max_decoding_message_size(64 * 1024 * 1024);
        tonic::transport::Server::builder().add_service(service).serve_with_incoming(incoming).await?;
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------------------------
// The client: pre-encoded requests through a pass-through codec.

#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;
#[derive(Debug, Clone, Copy, Default)]
struct RawEncoder;
#[derive(Debug, Clone, Copy, Default)]
struct ResponseDecoder;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = ExportTraceServiceResponse;
    type Encoder = RawEncoder;
    type Decoder = ResponseDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> ResponseDecoder {
        ResponseDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for ResponseDecoder {
    type Item = ExportTraceServiceResponse;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<ExportTraceServiceResponse>, tonic::Status> {
        ExportTraceServiceResponse::decode(src).map(Some).map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

#[derive(Debug, Default)]
struct Load {
    acked_spans: AtomicU64,
    rejected_spans: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

/// Sends `total` spans from `exporters` concurrent connections; returns the load counters and the wall time.
async fn drive(
    endpoint: &str,
    secure: Option<&Secure>,
    corpus: Arc<corpus::Corpus>,
    total: u64,
    exporters: usize,
) -> Result<(Arc<Load>, Duration), BoxError> {
    let load = Arc::new(Load::default());
    let next = Arc::new(AtomicU64::new(0));
    let per_request = corpus.requests[0].spans as u64;
    let requests_total = total.div_ceil(per_request);
    let mut channels = Vec::new();
    for _ in 0..exporters {
        let mut channel = Channel::from_shared(endpoint.to_string())?.tcp_nodelay(true);
        if let Some(secure) = secure {
            channel = channel.tls_config(secure.client_tls())?;
        }
        channels.push(channel.connect().await?);
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    let bearer: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>> =
        secure.map(|s| format!("Bearer {}", s.key).parse()).transpose()?;
    for channel in channels {
        let (load, next, corpus, bearer) = (load.clone(), next.clone(), corpus.clone(), bearer.clone());
        tasks.push(tokio::spawn(async move {
            let mut grpc = tonic::client::Grpc::new(channel);
            loop {
                let seq = next.fetch_add(1, Ordering::Relaxed);
                if seq >= requests_total {
                    return Ok::<(), String>(());
                }
                let req = &corpus.requests[(seq % corpus.requests.len() as u64) as usize];
                let body = req.stamped(seq);
                loop {
                    grpc.ready().await.map_err(|e| format!("connection lost: {e}"))?;
                    let path = tonic::codegen::http::uri::PathAndQuery::from_static(EXPORT_PATH);
                    let mut request = tonic::Request::new(body.clone());
                    if let Some(bearer) = &bearer {
                        request.metadata_mut().insert("authorization", bearer.clone());
                    }
                    match grpc.unary(request, path, RawCodec).await {
                        Ok(resp) => {
                            let rejected =
                                resp.get_ref().partial_success.as_ref().map(|p| p.rejected_spans as u64).unwrap_or(0);
                            load.rejected_spans.fetch_add(rejected, Ordering::Relaxed);
                            load.acked_spans.fetch_add(req.spans as u64 - rejected, Ordering::Relaxed);
                            load.requests.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        // Backpressure: retry after a pause, as the OTLP spec tells exporters to.
                        Err(s) if matches!(s.code(), tonic::Code::Unavailable | tonic::Code::ResourceExhausted) => {
                            load.retries.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        Err(s) => return Err(format!("export failed: {s}")),
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok((load, started.elapsed()))
}

// ---------------------------------------------------------------------------------------------------------------
// Servers under test.

/// TLS and an API key for `--tls`: a CA and a `localhost` certificate made for the run, and an ingest key.
struct Secure {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
    key: String,
}

impl Secure {
    fn new() -> Result<Secure, BoxError> {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;
        let leaf_key = KeyPair::generate()?;
        let leaf = CertificateParams::new(vec!["localhost".to_string()])?.signed_by(&leaf_key, &ca)?;
        Ok(Secure {
            ca_pem: ca.pem(),
            cert_pem: leaf.pem(),
            key_pem: leaf_key.serialize_pem(),
            key: collector::auth::new_key(),
        })
    }

    /// The config lines that turn TLS and keys on, with the certificate files written in `dir`.
    fn config(&self, dir: &Path) -> Result<String, BoxError> {
        let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
        std::fs::write(&cert, &self.cert_pem)?;
        std::fs::write(&key, &self.key_pem)?;
        Ok(format!(
            "[server.tls]\ncert_file = {cert:?}\nkey_file = {key:?}\n\n[[auth.keys]]\nname = \"bench\"\nhash = \"{}\"\n\
             scopes = [\"ingest\"]\n",
            collector::auth::key_hash(&self.key)
        ))
    }

    fn client_tls(&self) -> tonic::transport::ClientTlsConfig {
        tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&self.ca_pem))
            .domain_name("localhost")
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

async fn wait_for_port(addr: SocketAddr, child: &mut Child, timeout: Duration) -> Result<(), BoxError> {
    let deadline = Instant::now() + timeout;
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            return Err(format!("server exited before listening: {status}").into());
        }
        if Instant::now() > deadline {
            return Err(format!("server not listening on {addr} after {timeout:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What one server did with the load.
#[derive(Debug, Clone)]
struct Measured {
    name: &'static str,
    spans: u64,
    wall: Duration,
    cpu_seconds: f64,
    peak_rss: u64,
    retries: u64,
    rejected: u64,
    /// Parquet bytes and rows stored (tailscope only).
    stored: Option<(u64, u64)>,
}

impl Measured {
    fn spans_per_s(&self) -> f64 {
        self.spans as f64 / self.wall.as_secs_f64()
    }
    fn cpu_per_million(&self) -> f64 {
        self.cpu_seconds / self.spans as f64 * 1e6
    }
    fn spans_per_cpu_second(&self) -> f64 {
        self.spans as f64 / self.cpu_seconds
    }
    /// Parquet bytes per stored row.
    fn bytes_per_span(&self) -> f64 {
        let (bytes, rows) = self.stored.unwrap_or_default();
        bytes as f64 / rows.max(1) as f64
    }
}

async fn measure_baseline(args: &Args, corpus: Arc<corpus::Corpus>) -> Result<Measured, BoxError> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(["--baseline-server", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().ok_or("no stdout")?).read_line(&mut line)?;
    let addr: SocketAddr =
        line.trim().strip_prefix("LISTENING ").ok_or_else(|| format!("unexpected: {line}"))?.parse()?;
    let cpu_before = process::cpu_seconds(child.id())?;
    let (load, wall) = drive(&format!("http://{addr}"), None, corpus, args.spans, args.exporters).await?;
    let exited = process::terminate(&mut child, Duration::from_secs(30))?;
    Ok(Measured {
        name: "decode-only (tonic + prost)",
        spans: load.acked_spans.load(Ordering::Relaxed),
        wall,
        cpu_seconds: exited.cpu_seconds - cpu_before,
        peak_rss: exited.max_rss_bytes,
        retries: load.retries.load(Ordering::Relaxed),
        rejected: load.rejected_spans.load(Ordering::Relaxed),
        stored: None,
    })
}

async fn measure_tailscope(
    args: &Args,
    binary: &Path,
    variant: Variant<'_>,
    corpus: Arc<corpus::Corpus>,
) -> Result<Measured, BoxError> {
    let secure = match variant {
        Variant::Secure(s) => Some(s),
        _ => None,
    };
    let dir = tempfile::Builder::new().prefix("tailscope-ingest-bench-").tempdir()?;
    let data = dir.path().join("data");
    let grpc: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
    let mut config = format!(
        "data_dir = {data:?}\n[server]\notlp_grpc = \"{grpc}\"\notlp_http = \"127.0.0.1:{}\"\napi = \"127.0.0.1:{}\"\nflight = \"127.0.0.1:{}\"\n",
        free_port()?,
        free_port()?,
        free_port()?,
    );
    if let Some(secure) = secure {
        config.push_str(&secure.config(dir.path())?);
    }
    if let Variant::Budgets { fleet } = variant {
        for (name, kind) in [("total", "total"), ("egress", "egress"), ("dup", "duplicate_inference")] {
            config.push_str(&format!(
                "[[budget]]\nname = \"{name}\"\nkind = \"{kind}\"\nperiod = \"day\"\ncap_usd = 1e9\nwarn_at = [1.0]\n"
            ));
        }
        if fleet {
            config.push_str("[fleet]\nrole = \"coordinator\"\n");
        }
    }
    if let Variant::Store(url) = variant {
        // A prefix per run, so that rounds do not append to one table.
        let prefix = dir.path().file_name().and_then(|n| n.to_str()).unwrap_or("run");
        config.push_str(&format!("[storage]\nurl = \"{}/{prefix}\"\n", url.trim_end_matches('/')));
    }
    let config_path = dir.path().join("tailscope.toml");
    std::fs::write(&config_path, config)?;
    let log = std::fs::File::create(dir.path().join("serve.log"))?;
    let mut child = Command::new(binary)
        .arg("serve")
        .arg("--config")
        .arg(&config_path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
    if let Err(e) = wait_for_port(grpc, &mut child, Duration::from_secs(60)).await {
        let log = std::fs::read_to_string(dir.path().join("serve.log")).unwrap_or_default();
        return Err(format!("{e}\n{log}").into());
    }
    let cpu_before = process::cpu_seconds(child.id())?;
    let endpoint = match secure {
        Some(_) => format!("https://localhost:{}", grpc.port()),
        None => format!("http://{grpc}"),
    };
    let (load, wall) = drive(&endpoint, secure, corpus, args.spans, args.exporters).await?;
    // SIGTERM: tailscope flushes everything to Parquet and exits; its CPU time includes that flush.
    let exited = process::terminate(&mut child, Duration::from_secs(300))?;
    if !exited.clean {
        let log = std::fs::read_to_string(dir.path().join("serve.log")).unwrap_or_default();
        return Err(format!("tailscope did not exit cleanly (wait status {}):\n{log}", exited.status).into());
    }
    // Files on an object store are not counted here (the local disk holds only the WAL then).
    let stored = if matches!(variant, Variant::Store(_)) {
        None
    } else {
        let (bytes, files) = process::files_with_suffix(&data.join("spans"), ".parquet")?;
        let mut rows = 0u64;
        for f in &files {
            use datafusion::parquet::file::reader::{FileReader, SerializedFileReader};
            let reader = SerializedFileReader::new(std::fs::File::open(f)?)?;
            rows += reader.metadata().file_metadata().num_rows() as u64;
        }
        Some((bytes, rows))
    };
    if args.keep_data {
        eprintln!("tailscope data kept in {}", dir.keep().display());
    }
    Ok(Measured {
        name: match variant {
            Variant::Secure(_) => "tailscope serve, TLS + API key (WAL fsync on)",
            Variant::Store(_) => "tailscope serve, tables on the object store (WAL fsync on)",
            Variant::Plain => "tailscope serve (WAL fsync on)",
            Variant::Budgets { fleet: false } => "tailscope serve, 3 budgets, standalone (WAL fsync on)",
            Variant::Budgets { fleet: true } => "tailscope serve, 3 budgets, fleet coordinator (WAL fsync on)",
        },
        spans: load.acked_spans.load(Ordering::Relaxed),
        wall,
        cpu_seconds: exited.cpu_seconds - cpu_before,
        peak_rss: exited.max_rss_bytes,
        retries: load.retries.load(Ordering::Relaxed),
        rejected: load.rejected_spans.load(Ordering::Relaxed),
        stored,
    })
}

/// Which tailscope a measurement runs: defaults, TLS + API keys, or tables on an object store.
#[derive(Clone, Copy)]
enum Variant<'a> {
    Plain,
    Secure(&'a Secure),
    Store(&'a str),
    Budgets { fleet: bool },
}

async fn bench(args: Args) -> Result<(), BoxError> {
    let (cores, cpu) = process::machine();
    eprintln!("building the corpus: {} requests x {} spans", args.corpus_requests, args.spans_per_request);
    let corpus = Arc::new(corpus::build(args.corpus_requests, args.spans_per_request, 42));
    let otlp_per_span = corpus.bytes() as f64 / corpus.spans() as f64;
    let zstd_per_span = corpus.zstd_bytes_per_span(3)?;
    let attrs = corpus.attributes_per_span();

    let binary = match &args.tailscope {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("tailscope"),
    };
    let secure = if args.tls { Some(Secure::new()?) } else { None };
    // One entry per round: (decode-only, tailscope), either missing when skipped; and tailscope with TLS + keys.
    let mut rounds: Vec<(Option<Measured>, Option<Measured>)> = Vec::new();
    let mut secured: Vec<Measured> = Vec::new();
    let mut stored: Vec<Measured> = Vec::new();
    let mut budgeted: Vec<Measured> = Vec::new();
    let mut coordinated: Vec<Measured> = Vec::new();
    for round in 1..=args.rounds.max(1) {
        let baseline = if args.skip_baseline {
            None
        } else {
            eprintln!("round {round}: decode-only baseline: {} spans, {} exporters", args.spans, args.exporters);
            Some(measure_baseline(&args, corpus.clone()).await?)
        };
        let ours = if args.skip_tailscope {
            None
        } else {
            eprintln!(
                "round {round}: tailscope ({}): {} spans, {} exporters",
                binary.display(),
                args.spans,
                args.exporters
            );
            Some(measure_tailscope(&args, &binary, Variant::Plain, corpus.clone()).await?)
        };
        if let Some(secure) = secure.as_ref().filter(|_| !args.skip_tailscope) {
            eprintln!(
                "round {round}: tailscope with TLS and API keys: {} spans, {} exporters",
                args.spans, args.exporters
            );
            secured.push(measure_tailscope(&args, &binary, Variant::Secure(secure), corpus.clone()).await?);
        }
        if let Some(url) = args.storage_url.as_deref().filter(|_| !args.skip_tailscope) {
            eprintln!(
                "round {round}: tailscope with tables on {url}: {} spans, {} exporters",
                args.spans, args.exporters
            );
            stored.push(measure_tailscope(&args, &binary, Variant::Store(url), corpus.clone()).await?);
        }
        if args.fleet && !args.skip_tailscope {
            eprintln!("round {round}: tailscope with budgets, standalone then as a fleet coordinator");
            budgeted.push(measure_tailscope(&args, &binary, Variant::Budgets { fleet: false }, corpus.clone()).await?);
            coordinated
                .push(measure_tailscope(&args, &binary, Variant::Budgets { fleet: true }, corpus.clone()).await?);
        }
        rounds.push((baseline, ours));
    }

    let corpus_facts = CorpusFacts { attrs, otlp_per_span, zstd_per_span };
    report(&args, &corpus_facts, &rounds, &[&secured, &stored, &budgeted, &coordinated], (cores, &cpu));
    Ok(())
}

/// What the report says about the corpus.
struct CorpusFacts {
    attrs: f64,
    otlp_per_span: f64,
    zstd_per_span: f64,
}

/// Prints the run as markdown: the machine and command, a row per server and round, bytes per span, and the ratios.
fn report(
    args: &Args,
    corpus: &CorpusFacts,
    rounds: &[(Option<Measured>, Option<Measured>)],
    variants: &[&[Measured]; 4],
    machine: (usize, &str),
) {
    let [secured, stored, budgeted, coordinated] = *variants;
    let command: Vec<String> = std::env::args().collect();
    let (cores, cpu) = machine;
    println!("Machine: {cores} cores ({cpu}); client and server share them.");
    println!("Command: `{}`", command.join(" "));
    println!(
        "Corpus: {} distinct requests of {} spans; {:.1} attributes and {:.0} bytes of OTLP protobuf per span.",
        args.corpus_requests, args.spans_per_request, corpus.attrs, corpus.otlp_per_span
    );
    println!();
    println!(
        "| round | server | spans | spans/s | server CPU-s per 1M spans | spans per CPU-second | peak RSS | retries (backpressure) | rejected |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|");
    for (round, m) in rounds.iter().enumerate().flat_map(|(i, (b, t))| {
        [b.as_ref(), t.as_ref(), secured.get(i), stored.get(i), budgeted.get(i), coordinated.get(i)]
            .into_iter()
            .flatten()
            .map(move |m| (i + 1, m))
    }) {
        println!(
            "| {round} | {} | {} | {:.0} | {:.2} | {:.0} | {:.0} MiB | {} | {} |",
            m.name,
            m.spans,
            m.spans_per_s(),
            m.cpu_per_million(),
            m.spans_per_cpu_second(),
            m.peak_rss as f64 / (1024.0 * 1024.0),
            m.retries,
            m.rejected
        );
    }
    println!();
    println!("| storage | bytes per span |");
    println!("|---|---:|");
    println!("| OTLP protobuf, uncompressed | {:.1} |", corpus.otlp_per_span);
    println!("| OTLP protobuf, zstd level 3 per request | {:.1} |", corpus.zstd_per_span);
    for (round, m) in rounds.iter().enumerate().filter_map(|(i, (_, t))| t.as_ref().map(|t| (i + 1, t))) {
        let (bytes, rows) = m.stored.unwrap_or_default();
        println!(
            "| tailscope Parquet on disk, round {round} (after SIGTERM flush; {rows} rows, {bytes} bytes) | {:.1} |",
            m.bytes_per_span()
        );
        if rows != m.spans {
            println!();
            println!("WARNING: {} spans acknowledged but {rows} rows on disk", m.spans);
        }
    }
    println!();
    ratios(corpus, rounds, secured);
    if !coordinated.is_empty() {
        let per_round = |a: &[Measured], b: &[Measured]| -> Vec<f64> {
            a.iter().zip(b).map(|(x, y)| x.spans_per_cpu_second() / y.spans_per_cpu_second()).collect()
        };
        let plain: Vec<Measured> = rounds.iter().filter_map(|(_, t)| t.clone()).collect();
        let list = |v: &[f64]| v.iter().map(|x| format!("{x:.2}")).collect::<Vec<_>>().join(", ");
        let (budgets, fleet) = (per_round(budgeted, &plain), per_round(coordinated, budgeted));
        println!();
        println!(
            "Budgets: spans per CPU-second with 3 budgets / without = {:.2} [{}]; as the fleet's coordinator / \
             standalone with the same budgets = {:.2} [{}].",
            median(&budgets),
            list(&budgets),
            median(&fleet),
            list(&fleet)
        );
    }
    let on_store: Vec<(f64, f64)> = rounds
        .iter()
        .zip(stored)
        .filter_map(|((_, t), s)| {
            let t = t.as_ref()?;
            Some((s.spans_per_cpu_second() / t.spans_per_cpu_second(), s.spans_per_s() / t.spans_per_s()))
        })
        .collect();
    if !on_store.is_empty() {
        let (cpu, speed): (Vec<f64>, Vec<f64>) = on_store.into_iter().unzip();
        let list = |v: &[f64]| v.iter().map(|x| format!("{x:.2}")).collect::<Vec<_>>().join(", ");
        println!();
        println!(
            "Tables on the object store / on local disk: tailscope spans per CPU-second = {:.2} [{}]; throughput = \
             {:.2} [{}].",
            median(&cpu),
            list(&cpu),
            median(&speed),
            list(&speed)
        );
    }
}

/// The ratios against the baselines, per round and their median.
fn ratios(corpus: &CorpusFacts, rounds: &[(Option<Measured>, Option<Measured>)], secured: &[Measured]) {
    let paired: Vec<(&Measured, &Measured)> =
        rounds.iter().filter_map(|(b, t)| Some((b.as_ref()?, t.as_ref()?))).collect();
    if !paired.is_empty() {
        let cpu: Vec<f64> = paired.iter().map(|(b, t)| t.spans_per_cpu_second() / b.spans_per_cpu_second()).collect();
        let disk: Vec<f64> = paired.iter().map(|(_, t)| t.bytes_per_span() / corpus.zstd_per_span).collect();
        let speed: Vec<f64> = paired.iter().map(|(b, t)| t.spans_per_s() / b.spans_per_s()).collect();
        let list = |v: &[f64]| v.iter().map(|x| format!("{x:.2}")).collect::<Vec<_>>().join(", ");
        println!(
            "Ratios, median of {} rounds (each round's in brackets): tailscope spans per CPU-second / decode-only = \
             {:.2} [{}] (target >= 0.5); Parquet bytes per span / OTLP+zstd = {:.2} [{}] (target <= 0.7); \
             throughput tailscope / decode-only = {:.2} [{}].",
            paired.len(),
            median(&cpu),
            list(&cpu),
            median(&disk),
            list(&disk),
            median(&speed),
            list(&speed)
        );
    }
    let tls: Vec<f64> = rounds
        .iter()
        .zip(secured)
        .filter_map(|((_, t), s)| Some(s.spans_per_cpu_second() / t.as_ref()?.spans_per_cpu_second()))
        .collect();
    if !tls.is_empty() {
        let list = tls.iter().map(|x| format!("{x:.2}")).collect::<Vec<_>>().join(", ");
        println!();
        println!(
            "TLS + API key: tailscope spans per CPU-second with them / without = {:.2} [{list}] (target >= 0.85: \
             TLS and auth cost at most 15%).",
            median(&tls)
        );
    }
}

/// The median (the mean of the middle two for an even count).
fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}
