//! Shared helpers: start the real binary on free loopback ports, wait for it, export with the official SDK,
//! query it back.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use opentelemetry::KeyValue;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::logs::SdkLoggerProvider;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tailscope_sim::export::OnRuntime;

/// The simulated fleet's `scenario` for `seconds` at `rate` spans/s from `seed` into `server` over OTLP/gRPC, through
/// the official SDK. Returns the spans sent, after checking every one was exported (acknowledged).
pub async fn simulate(server: &Server, scenario: tailscope_sim::Scenario, seed: u64, rate: f64, seconds: u64) -> u64 {
    let config = tailscope_sim::SimConfig {
        endpoints: tailscope_sim::Endpoints::from_base(&server.grpc_url(), tailscope_sim::Transport::Grpc),
        by_cloud: Default::default(),
        transport: tailscope_sim::Transport::Grpc,
        rate,
        duration: Some(Duration::from_secs(seconds)),
        seed,
        sessions: 40,
        metric_interval: Duration::from_secs(60),
        scenario,
    };
    let stats = std::sync::Arc::new(tailscope_sim::SimStats::default());
    let report = tailscope_sim::run(config, stats, std::future::pending()).await.unwrap();
    assert!(report.shutdown_errors.is_empty(), "{:?}", report.shutdown_errors);
    assert_eq!(report.exported_spans, report.spans, "every span exported");
    report.spans
}

/// Spans per request of [`kill_9_under_load`].
pub const CRASH_BATCH: u64 = 50;

/// Loads `server` through OTLP/gRPC from `senders` clients at once, each sending requests of [`CRASH_BATCH`] spans
/// (`request(sender, first_id)`; ids are never reused), and kills it with SIGKILL mid-load `rounds` times, after
/// `pause(round)` each, restarting it every time. Returns how many spans were acknowledged: each of those must be
/// stored exactly once, and at most one request per sender per kill more (in flight, stored, never acknowledged).
pub async fn kill_9_under_load<R>(
    server: &mut Server,
    senders: usize,
    rounds: u64,
    pause: impl Fn(u64) -> Duration,
    request: R,
) -> i64
where
    R: Fn(usize, u64) -> opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest
        + Clone
        + Send
        + 'static,
{
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    let acked = Arc::new(AtomicU64::new(0));
    let next_id = Arc::new(AtomicU64::new(0));
    for round in 0..rounds {
        let mut tasks = Vec::new();
        for sender in 0..senders {
            let grpc = server.grpc_url();
            let (acked, next_id, request) = (acked.clone(), next_id.clone(), request.clone());
            tasks.push(tokio::spawn(async move {
                let Ok(mut client) = TraceServiceClient::connect(grpc).await else { return };
                loop {
                    let first = next_id.fetch_add(CRASH_BATCH, Ordering::SeqCst);
                    match client.export(request(sender, first)).await {
                        Ok(_) => acked.fetch_add(CRASH_BATCH, Ordering::SeqCst),
                        Err(_) => return,
                    };
                }
            }));
        }
        tokio::time::sleep(pause(round)).await;
        server.kill();
        for t in tasks {
            let _ = t.await;
        }
        server.restart().await;
    }
    let acked = acked.load(Ordering::SeqCst) as i64;
    assert!(acked > 0, "nothing was acknowledged before the kills");
    acked
}

/// Restarts `server` with `config` but maintenance every 500 ms (from `maintenance_interval = "1h"`), then runs
/// `sql` over and over until vacuum has deleted `replaced` files: every answer must be the first one, and no query
/// may fail, while compaction rewrites and vacuum deletes. Returns the answer and how many queries ran.
pub async fn query_while_compacting(
    server: &mut Server,
    config: &str,
    sql: &str,
    replaced: usize,
) -> (Vec<serde_json::Value>, usize) {
    let fast = config.replace("maintenance_interval = \"1h\"", "maintenance_interval = \"500ms\"");
    assert_ne!(fast, config, "the config must set maintenance_interval = \"1h\"");
    // The harness keeps the config file beside the data dir.
    std::fs::write(server.data_dir.parent().unwrap().join("tailscope.toml"), fast).unwrap();
    server.restart().await;
    let first = server.sql(sql).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut queries = 0;
    loop {
        let (status, body) = server.sql_raw(sql).await;
        assert!(status.is_success(), "a query failed during compaction: {status} {body}");
        let rows: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
        assert_eq!(rows, first, "the answer changed during compaction");
        queries += 1;
        if server.metric("tailscope_vacuum_files_deleted").await >= replaced as f64 {
            return (first, queries);
        }
        assert!(Instant::now() < deadline, "compaction and vacuum did not finish:\n{}", server.log());
    }
}

/// Nanoseconds since the Unix epoch, now.
pub fn now_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_nanos() as u64
}

/// A string attribute, in the OTLP protocol's types.
pub fn string_kv(key: &str, value: &str) -> opentelemetry_proto::tonic::common::v1::KeyValue {
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(any_value::Value::StringValue(value.into())) }),
        ..Default::default()
    }
}

/// A trace export from `service` of `n` spans named `chat`, 1 ms long, with ids from `first`, each with
/// `attributes`.
pub fn trace_export(
    service: &str,
    first: u64,
    n: u64,
    attributes: &[opentelemetry_proto::tonic::common::v1::KeyValue],
) -> opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest {
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    let t = now_ns();
    let spans = (first..first + n)
        .map(|id| Span {
            trace_id: [&[0xcd; 8][..], &id.to_be_bytes()].concat(),
            span_id: (id + 1).to_be_bytes().to_vec(),
            name: "chat".into(),
            start_time_unix_nano: t,
            end_time_unix_nano: t + 1_000_000,
            attributes: attributes.to_vec(),
            ..Default::default()
        })
        .collect();
    opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(opentelemetry_proto::tonic::resource::v1::Resource {
                attributes: vec![string_kv("service.name", service)],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans { spans, ..Default::default() }],
            ..Default::default()
        }],
    }
}

/// Writes to `out` a protobuf message that holds, through the length-delimited fields `path` (outermost first), a
/// string of `n` bytes of 'a', chunk by chunk: through a compressing writer, a bomb of a few kB built without
/// holding the `n` bytes.
pub fn write_nested_string(path: &[u32], n: usize, out: &mut impl std::io::Write) {
    let mut inner = n;
    let mut heads = Vec::new();
    for tag in path.iter().rev() {
        let mut head = Vec::new();
        prost::encoding::encode_key(*tag, prost::encoding::WireType::LengthDelimited, &mut head);
        prost::encoding::encode_varint(inner as u64, &mut head);
        inner += head.len();
        heads.push(head);
    }
    for head in heads.iter().rev() {
        out.write_all(head).expect("write the prefix");
    }
    let chunk = vec![b'a'; 1 << 20];
    let mut left = n;
    while left > 0 {
        let k = left.min(chunk.len());
        out.write_all(&chunk[..k]).expect("write the string");
        left -= k;
    }
}

/// The `tailscope` binary under test.
pub fn tailscope_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tailscope"))
}

/// A loopback address with a port that was free a moment ago.
pub fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr")
}

/// Runs `tailscope serve` on `data_dir` (with the config file `config`, if any) on free ports, for a start-up that
/// must fail: waits up to 30 s for the process to exit (panicking if it keeps running), asserts an error exit (code
/// 1, not a signal) and returns its stderr.
pub fn serve_fails_to_start(config: Option<&Path>, data_dir: &Path) -> String {
    let mut command = Command::new(tailscope_bin());
    command.arg("serve");
    if let Some(config) = config {
        command.arg("--config").arg(config);
    }
    let mut child = command
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--otlp-grpc", &free_addr().to_string(), "--otlp-http", &free_addr().to_string()])
        .args(["--api", &free_addr().to_string(), "--flight", &free_addr().to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tailscope serve");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for tailscope") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let toml = config.map(|c| std::fs::read_to_string(c).unwrap_or_default());
            panic!("tailscope serve kept running on {data_dir:?} with the config {toml:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("piped stderr"), &mut stderr).expect("read stderr");
    assert_eq!(status.code(), Some(1), "an error exit, not a signal: {status}; stderr: {stderr}");
    stderr
}

/// How a spawned server's start ended.
enum Ready {
    Yes,
    /// It exited because one of its ports was taken.
    PortTaken,
}

/// A `tailscope serve` child process with its own temp data dir and ports.
pub struct Server {
    child: Option<Child>,
    tmp: tempfile::TempDir,
    /// The data dir.
    pub data_dir: PathBuf,
    /// OTLP/gRPC address.
    pub grpc: SocketAddr,
    /// OTLP/HTTP address.
    pub http: SocketAddr,
    /// API address.
    pub api: SocketAddr,
    /// Flight SQL address.
    pub flight_addr: SocketAddr,
    config_path: PathBuf,
    log_path: PathBuf,
    /// RLIMIT_NOFILE (soft and hard) of the child, if lowered.
    nofile: Option<u64>,
    /// When the API is served over TLS and behind keys: the CA that signed its certificate (PEM) and the key
    /// the harness's own requests (readiness, SQL, metrics) send.
    secured: Option<(String, String)>,
    /// Environment variables set for the child (secrets the config names by `*_env`).
    env: Vec<(String, String)>,
    /// Set by [`Server::start_custom`]: the arguments after `serve` and the environment, instead of the config file
    /// and the data dir and addresses as flags.
    custom: Option<Launch>,
}

/// The arguments after `serve` and the environment of a [`Server::start_custom`] server.
type Launch = (Vec<String>, Vec<(String, String)>);

/// How [`Server::start_custom`] launches `tailscope serve`.
pub struct Custom {
    /// The directory that holds the config (if any), the log, and is removed with the server.
    pub tmp: tempfile::TempDir,
    /// The arguments after `serve`.
    pub args: Vec<String>,
    /// Environment variables set for the server.
    pub env: Vec<(String, String)>,
    /// The data dir the arguments, config or environment name.
    pub data_dir: PathBuf,
    /// Where the test reaches the four listeners (OTLP/gRPC, OTLP/HTTP, API, Flight SQL), whatever names the
    /// server was given for them.
    pub addrs: [SocketAddr; 4],
}

impl Server {
    /// Starts a server with the default config.
    pub async fn start() -> Server {
        Server::start_with("").await
    }

    /// Starts a server whose config file holds `toml` (data dir and ports are given as flags).
    pub async fn start_with(toml: &str) -> Server {
        Server::start_in(None, toml).await
    }

    /// Starts a server on the data dir `data_dir` (e.g. a small file system) with `toml` as its config.
    pub async fn start_at(data_dir: PathBuf, toml: &str) -> Server {
        Server::start_in(Some(data_dir), toml).await
    }

    /// Starts a server whose open-file limit (soft and hard, so it cannot raise it) is `nofile`.
    pub async fn start_limited(toml: &str, nofile: u64) -> Server {
        Server::start_inner(None, toml, Some(nofile), Vec::new(), None).await
    }

    /// Starts a server with `toml` as its config and the environment variables `env` set (for every restart too).
    pub async fn start_with_env(toml: &str, env: &[(&str, &str)]) -> Server {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Server::start_inner(None, toml, None, env, None).await
    }

    /// Starts a server whose API is served over TLS with a certificate signed by `ca_pem`, and behind keys: the
    /// harness's own requests send `admin_key`.
    pub async fn start_secured(toml: &str, ca_pem: &str, admin_key: &str) -> Server {
        Server::start_inner(None, toml, None, Vec::new(), Some((ca_pem.to_string(), admin_key.to_string()))).await
    }

    async fn start_in(data_dir: Option<PathBuf>, toml: &str) -> Server {
        Server::start_inner(data_dir, toml, None, Vec::new(), None).await
    }

    async fn start_inner(
        data_dir: Option<PathBuf>,
        toml: &str,
        nofile: Option<u64>,
        env: Vec<(String, String)>,
        secured: Option<(String, String)>,
    ) -> Server {
        let tmp = tempfile::tempdir().expect("tempdir");
        let config_path = tmp.path().join("tailscope.toml");
        std::fs::write(&config_path, toml).expect("write config");
        let mut server = Server {
            child: None,
            data_dir: data_dir.unwrap_or_else(|| tmp.path().join("data")),
            log_path: tmp.path().join("server.log"),
            tmp,
            grpc: free_addr(),
            http: free_addr(),
            api: free_addr(),
            flight_addr: free_addr(),
            config_path,
            nofile,
            secured,
            env,
            custom: None,
        };
        server.spawn(true).await;
        server
    }

    /// Starts a server launched as `custom` says (addresses by host name, settings from the environment). Its ports
    /// are in its arguments, so a port found taken is retried as it is, not replaced.
    pub async fn start_custom(custom: Custom) -> Server {
        let Custom { tmp, args, env, data_dir, addrs: [grpc, http, api, flight_addr] } = custom;
        let mut server = Server {
            child: None,
            data_dir,
            log_path: tmp.path().join("server.log"),
            config_path: tmp.path().join("tailscope.toml"),
            tmp,
            grpc,
            http,
            api,
            flight_addr,
            nofile: None,
            secured: None,
            env: Vec::new(),
            custom: Some((args, env)),
        };
        server.spawn(false).await;
        server
    }

    /// Spawns the server and waits until it is ready. A port picked by [`free_addr`] can be taken before the server
    /// binds it (by any socket on the machine, an outgoing connection's ephemeral port included): then the server
    /// is spawned again, on fresh ports when `fresh_ports` (a first start) or on the same ones a moment later.
    async fn spawn(&mut self, fresh_ports: bool) {
        for attempt in 1..=5 {
            let logged = self.log().len();
            self.spawn_once();
            match self.wait_ready().await {
                Ready::Yes => return,
                Ready::PortTaken if attempt < 5 => {
                    let log = self.log();
                    eprintln!(
                        "tailscope serve found a port taken (attempt {attempt}): {}",
                        &log[logged.min(log.len())..]
                    );
                    self.child = None;
                    if fresh_ports {
                        (self.grpc, self.http, self.api, self.flight_addr) =
                            (free_addr(), free_addr(), free_addr(), free_addr());
                    } else {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
                Ready::PortTaken => panic!("tailscope serve found its ports taken 5 times; log:\n{}", self.log()),
            }
        }
    }

    fn spawn_once(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log_path).expect("log file");
        let mut command = Command::new(tailscope_bin());
        if let Some(n) = self.nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: only setrlimit runs between fork and exec (async-signal-safe).
            unsafe {
                command.pre_exec(move || {
                    let limit = libc::rlimit { rlim_cur: n, rlim_max: n };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        command.arg("serve");
        match &self.custom {
            Some((args, env)) => {
                command.args(args).envs(env.iter().map(|(k, v)| (k, v)));
            }
            None => {
                command
                    .arg("--config")
                    .arg(&self.config_path)
                    .arg("--data-dir")
                    .arg(&self.data_dir)
                    .arg("--otlp-grpc")
                    .arg(self.grpc.to_string())
                    .arg("--otlp-http")
                    .arg(self.http.to_string())
                    .arg("--api")
                    .arg(self.api.to_string())
                    .arg("--flight")
                    .arg(self.flight_addr.to_string());
            }
        }
        let child = command
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn tailscope serve");
        self.child = Some(child);
    }

    async fn wait_ready(&mut self) -> Ready {
        let deadline = Instant::now() + Duration::from_secs(60);
        let url = format!("{}/readyz", self.api_url());
        let client = self.client();
        loop {
            if let Ok(r) = client.get(&url).send().await
                && r.status().is_success()
            {
                return Ready::Yes;
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                let log = self.log();
                if log.lines().rev().take(3).any(|l| l.contains("Address already in use")) {
                    return Ready::PortTaken;
                }
                panic!("tailscope serve exited early ({status}); log:\n{log}");
            }
            assert!(Instant::now() < deadline, "tailscope serve not ready after 60 s; log:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The server's stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The temp directory holding the config, the log and the data dir.
    pub fn dir(&self) -> &Path {
        self.tmp.path()
    }

    /// `http://ADDR` of OTLP/gRPC.
    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// `http://ADDR` of OTLP/HTTP.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.http)
    }

    /// `http://ADDR` of the API (`https://localhost:PORT` when it is served over TLS).
    pub fn api_url(&self) -> String {
        match self.secured {
            Some(_) => format!("https://localhost:{}", self.api.port()),
            None => format!("http://{}", self.api),
        }
    }

    /// An HTTP client for the API: trusting its CA and sending the harness's key when it is secured.
    pub fn client(&self) -> reqwest::Client {
        let Some((ca, key)) = &self.secured else { return reqwest::Client::new() };
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {key}").parse().expect("header"));
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).expect("CA"))
            .resolve("localhost", self.api)
            .default_headers(headers)
            .build()
            .expect("client")
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGKILL: no flush, no goodbye.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        // SAFETY: sending a signal to our own child process.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        child.wait().expect("wait for tailscope")
    }

    /// Replaces the environment variables set for the server's next (re)starts.
    pub fn set_env(&mut self, env: &[(&str, &str)]) {
        self.env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    }

    /// Starts the server again on the same data dir, ports and config without waiting for it to be ready, and
    /// returns once its log has a new line containing `text` (start-up got that far), within 60 s.
    pub async fn restart_until_logged(&mut self, text: &str) {
        assert!(self.child.is_none(), "stop the server before restarting it");
        let logged = self.log().len();
        self.spawn_once();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.log().get(logged..).is_some_and(|new| new.contains(text)) {
            assert!(Instant::now() < deadline, "no {text:?} in the log after 60 s:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Starts the server again on the same data dir, ports and config.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the server before restarting it");
        self.spawn(false).await;
    }

    /// Runs SQL through `POST /api/v1/query`; panics with the server's answer on failure.
    pub async fn sql(&self, sql: &str) -> Vec<serde_json::Value> {
        let (status, body) = self.sql_raw(sql).await;
        assert!(status.is_success(), "query failed ({status}): {body}\nSQL: {sql}");
        serde_json::from_str::<Vec<serde_json::Value>>(&body).unwrap_or_else(|e| panic!("bad JSON {e}: {body}"))
    }

    /// Runs SQL and returns the status and body as they came.
    pub async fn sql_raw(&self, sql: &str) -> (reqwest::StatusCode, String) {
        let r = self
            .client()
            .post(format!("{}/api/v1/query", self.api_url()))
            .json(&serde_json::json!({ "sql": sql }))
            .send()
            .await
            .expect("query request");
        let status = r.status();
        (status, r.text().await.unwrap_or_default())
    }

    /// One number from `GET /metrics`: the sum of every sample whose line starts with `prefix`.
    pub async fn metric(&self, prefix: &str) -> f64 {
        let text = self.client().get(format!("{}/metrics", self.api_url())).send().await.unwrap().text().await.unwrap();
        text.lines().filter(|l| l.starts_with(prefix)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
    }

    /// Every sample of `GET /metrics`, parsed.
    pub async fn scrape(&self) -> Scrape {
        let text = self.client().get(format!("{}/metrics", self.api_url())).send().await.unwrap();
        Scrape::parse(&text.text().await.unwrap())
    }

    /// Polls `GET /metrics` until `ready` holds for a scrape, and returns that scrape; panics after 20 s with
    /// `what`, the last scrape and the server's log.
    pub async fn scrape_until(&self, what: &str, ready: impl Fn(&Scrape) -> bool) -> Scrape {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let scrape = self.scrape().await;
            if ready(&scrape) {
                return scrape;
            }
            assert!(
                Instant::now() < deadline,
                "waited 20 s for {what}; last scrape:\n{}\nlog:\n{}",
                scrape.text,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Polls `sql` until its first row's `n` column equals `want` (rows become visible asynchronously only for
    /// exporters' batching; once acknowledged they are queryable at once).
    pub async fn wait_count(&self, sql: &str, want: i64) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let rows = self.sql(sql).await;
            let n = rows.first().and_then(|r| r["n"].as_i64()).unwrap_or(-1);
            if n == want {
                return;
            }
            assert!(Instant::now() < deadline, "{sql}: got {n}, want {want}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// How the SDK exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// OTLP/gRPC (tonic).
    Grpc,
    /// OTLP/HTTP with protobuf bodies.
    HttpProtobuf,
}

/// An official SDK tracer provider (batch processor) exporting to `server`, with `resource` attributes.
pub fn tracer_provider(server: &Server, transport: Transport, resource: Vec<KeyValue>) -> SdkTracerProvider {
    let exporter = match transport {
        Transport::Grpc => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(server.grpc_url())
            .build()
            .expect("gRPC exporter"),
        Transport::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(format!("{}/v1/traces", server.http_url()))
            .build()
            .expect("HTTP exporter"),
    };
    let exporter = OnRuntime::new(exporter, tokio::runtime::Handle::current());
    SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder_empty().with_attributes(resource).build())
        .build()
}

/// An official SDK meter provider exporting to `server` (call `force_flush` to export).
pub fn meter_provider(server: &Server, transport: Transport, resource: Vec<KeyValue>) -> SdkMeterProvider {
    let exporter = match transport {
        Transport::Grpc => opentelemetry_otlp::MetricExporter::builder()
            .with_tonic()
            .with_endpoint(server.grpc_url())
            .build()
            .expect("gRPC metric exporter"),
        Transport::HttpProtobuf => opentelemetry_otlp::MetricExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(format!("{}/v1/metrics", server.http_url()))
            .build()
            .expect("HTTP metric exporter"),
    };
    let reader = PeriodicReader::builder(OnRuntime::new(exporter, tokio::runtime::Handle::current())).build();
    SdkMeterProvider::builder()
        .with_reader(reader)
        .with_resource(Resource::builder_empty().with_attributes(resource).build())
        .build()
}

/// An official SDK logger provider (batch processor) exporting to `server`.
pub fn logger_provider(server: &Server, transport: Transport, resource: Vec<KeyValue>) -> SdkLoggerProvider {
    let exporter = match transport {
        Transport::Grpc => opentelemetry_otlp::LogExporter::builder()
            .with_tonic()
            .with_endpoint(server.grpc_url())
            .build()
            .expect("gRPC log exporter"),
        Transport::HttpProtobuf => opentelemetry_otlp::LogExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(format!("{}/v1/logs", server.http_url()))
            .build()
            .expect("HTTP log exporter"),
    };
    SdkLoggerProvider::builder()
        .with_batch_exporter(OnRuntime::new(exporter, tokio::runtime::Handle::current()))
        .with_resource(Resource::builder_empty().with_attributes(resource).build())
        .build()
}

/// An HTTP/1.1 answer read off a raw socket.
#[derive(Debug)]
pub struct RawAnswer {
    /// The status code (0 if no status line arrived).
    pub status: u16,
    /// Header names (lower case) and values.
    pub headers: Vec<(String, String)>,
    /// The body, by `content-length` when the answer has one, else everything up to the close.
    pub body: Vec<u8>,
    /// Whether the server closed the connection within the wait.
    pub closed: bool,
    /// Bytes that came after the first answer (a second answer on the same connection).
    pub rest: Vec<u8>,
}

impl RawAnswer {
    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}
/// Emits one log record with `body` through `exporter` (a batch exporter on the test's runtime) and shuts the
/// provider down, which exports it: one record's worth of the SDK's log pipeline, for tests that need a log row.
pub async fn emit_one_log(exporter: opentelemetry_otlp::LogExporter, scope: &'static str, body: &'static str) {
    use opentelemetry::logs::{LogRecord as _, Logger as _, LoggerProvider as _};
    let provider = SdkLoggerProvider::builder()
        .with_batch_exporter(OnRuntime::new(exporter, tokio::runtime::Handle::current()))
        .build();
    tokio::task::spawn_blocking(move || {
        let logger = provider.logger(scope);
        let mut record = logger.create_log_record();
        record.set_body(body.into());
        logger.emit(record);
        provider.shutdown().unwrap();
    })
    .await
    .unwrap();
}

/// Sends `request` (a head, and whatever body bytes) on a new connection to `addr`, keeps the write side open, and
/// reads until the server closes the connection or `wait` passes. Write errors are ignored: a server may answer and
/// close before it has read everything.
pub async fn raw_http(addr: SocketAddr, request: Vec<u8>, wait: Duration) -> RawAnswer {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&request).await;
        // Keep the write half open: closing it would tell the server the request ended.
        tokio::time::sleep(Duration::from_secs(3600)).await;
        drop(wr);
    });
    let deadline = tokio::time::Instant::now() + wait;
    let mut answer = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut closed = false;
    loop {
        match tokio::time::timeout_at(deadline, rd.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    writer.abort();
    parse_raw_answer(&answer, closed)
}

fn parse_raw_answer(answer: &[u8], closed: bool) -> RawAnswer {
    let head_end = answer.windows(4).position(|w| w == b"\r\n\r\n");
    let Some(head_end) = head_end else {
        return RawAnswer { status: 0, headers: Vec::new(), body: answer.to_vec(), closed, rest: Vec::new() };
    };
    let head = String::from_utf8_lossy(&answer[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let status = lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|s| s.parse().ok()).unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let after = &answer[head_end + 4..];
    let length = headers.iter().find(|(n, _)| n == "content-length").and_then(|(_, v)| v.parse::<usize>().ok());
    let (body, rest) = match length {
        Some(n) => (after[..n.min(after.len())].to_vec(), after[n.min(after.len())..].to_vec()),
        None => (after.to_vec(), Vec::new()),
    };
    RawAnswer { status, headers, body, closed, rest }
}

/// `google.rpc.Status`, the body of OTLP error answers.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RpcStatus {
    /// A `google.rpc.Code`.
    #[prost(int32, tag = "1")]
    pub code: i32,
    /// What was wrong.
    #[prost(string, tag = "2")]
    pub message: String,
}

/// Decodes an OTLP/HTTP error body as `google.rpc.Status` in the encoding `content_type` names; panics (saying
/// what came) if it is not one.
pub fn rpc_status(content_type: Option<&str>, body: &[u8]) -> RpcStatus {
    use prost::Message;
    let text = String::from_utf8_lossy(body).to_string();
    match content_type.map(|c| c.split(';').next().unwrap_or("").trim()) {
        Some("application/x-protobuf") => {
            RpcStatus::decode(body).unwrap_or_else(|e| panic!("not a protobuf google.rpc.Status ({e}): {text:?}"))
        }
        Some("application/json") => {
            let v: serde_json::Value =
                serde_json::from_slice(body).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"));
            RpcStatus {
                code: v["code"].as_i64().unwrap_or_else(|| panic!("no code in {text}")) as i32,
                message: v["message"].as_str().unwrap_or_else(|| panic!("no message in {text}")).to_string(),
            }
        }
        other => panic!("an OTLP error body has content type {other:?}: {text:?}"),
    }
}

/// A `/proc/PID/status` memory field (`VmRSS`, `VmHWM`) in MiB.
pub fn proc_mib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"));
    kib / 1024
}

/// Waits up to 20 s until `items` (what a test receiver took in) holds at least `n`, and returns them; panics naming
/// `what` otherwise.
pub async fn wait_for_items<T: Clone + std::fmt::Debug>(
    items: &tokio::sync::Mutex<Vec<T>>,
    n: usize,
    what: &str,
) -> Vec<T> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = items.lock().await.clone();
        if got.len() >= n {
            return got;
        }
        assert!(Instant::now() < deadline, "waited for {n} {what}, got {}: {got:#?}", got.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One sample of a Prometheus text exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The series name (`tailscope_budget_spend_usd`, `tailscope_api_requests_total`).
    pub name: String,
    /// Its labels.
    pub labels: std::collections::BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed scrape of `GET /metrics`.
#[derive(Debug, Clone)]
pub struct Scrape {
    /// The text as served.
    pub text: String,
    pub samples: Vec<Sample>,
}

impl Scrape {
    /// Parses the text format: `name{label="value",...} number` lines; comments are kept only in `text`.
    pub fn parse(text: &str) -> Scrape {
        let mut samples = Vec::new();
        for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
            let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("not a sample: {line}"));
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("not a number in {line}"));
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => {
                    (name, rest.strip_suffix('}').unwrap_or_else(|| panic!("unclosed labels: {line}")))
                }
                None => (series, ""),
            };
            let mut parsed = std::collections::BTreeMap::new();
            let mut rest = labels;
            while let Some((key, after)) = rest.split_once("=\"") {
                // Values here never hold an escaped quote.
                let (value, after) = after.split_once('"').unwrap_or_else(|| panic!("unclosed value: {line}"));
                parsed.insert(key.trim_start_matches(',').to_string(), value.to_string());
                rest = after;
            }
            samples.push(Sample { name: name.to_string(), labels: parsed, value });
        }
        Scrape { text: text.to_string(), samples }
    }

    /// The samples named `name` whose labels include every pair of `labels`.
    pub fn find(&self, name: &str, labels: &[(&str, &str)]) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
            .collect()
    }

    /// The value of the one sample named `name` with `labels`, if there is exactly one.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        match self.find(name, labels).as_slice() {
            [one] => Some(one.value),
            _ => None,
        }
    }

    /// The sum of the samples named `name` with `labels` (0 when there are none).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.find(name, labels).iter().map(|s| s.value).sum()
    }

    /// The `# TYPE` the exposition declares for the family `family`.
    pub fn type_of(&self, family: &str) -> Option<&str> {
        self.text.lines().find_map(|l| l.strip_prefix("# TYPE ")?.strip_prefix(family)?.strip_prefix(' '))
    }
}
