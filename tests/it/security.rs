//! TLS, API keys and safe defaults (issue 14), with real clients over real sockets: the official SDK's gRPC and
//! HTTP exporters, reqwest on the API, and Arrow Flight SQL.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arrow_flight::sql::client::FlightSqlServiceClient;
use datafusion::arrow::array::Int64Array;
use datafusion::arrow::record_batch::RecordBatch;
use futures::TryStreamExt;
use opentelemetry::KeyValue;
use opentelemetry::trace::{Tracer, TracerProvider as _};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SdkTracerProvider, SimpleSpanProcessor};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::support::{Server, free_addr, tailscope_bin};

/// A test CA and what it signs.
struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
    dir: tempfile::TempDir,
}

/// A certificate and its key, PEM.
struct Leaf {
    cert: String,
    key: String,
}

impl Pki {
    fn new() -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "tailscope test CA");
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Pki { ca, dir: tempfile::tempdir().unwrap() }
    }

    fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// A certificate for `names` (DNS names or IP addresses) signed by the CA.
    fn leaf(&self, names: &[&str]) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        Leaf { cert: cert.pem(), key: key.serialize_pem() }
    }

    /// Writes `leaf` as `NAME.crt` / `NAME.key` (replacing them: a rotation) and the CA as `ca.crt`.
    fn write(&self, name: &str, leaf: &Leaf) {
        // Key first, then the certificate, each by rename: what a rotation looks like to the reloader.
        for (ext, pem) in [("key", &leaf.key), ("crt", &leaf.cert)] {
            let tmp = self.dir.path().join(format!("{name}.{ext}.tmp"));
            std::fs::write(&tmp, pem).unwrap();
            std::fs::rename(&tmp, self.path(&format!("{name}.{ext}"))).unwrap();
        }
        std::fs::write(self.path("ca.crt"), self.ca_pem()).unwrap();
    }

    fn path(&self, file: &str) -> String {
        self.dir.path().join(file).display().to_string()
    }
}

/// Three keys, one per scope, and the `[[auth.keys]]` that accept them.
struct Keys {
    ingest: String,
    query: String,
    admin: String,
}

impl Keys {
    fn new() -> Keys {
        Keys {
            ingest: collector::auth::new_key(),
            query: collector::auth::new_key(),
            admin: collector::auth::new_key(),
        }
    }

    fn toml(&self) -> String {
        [("ingest", &self.ingest), ("query", &self.query), ("admin", &self.admin)]
            .iter()
            .map(|(scope, key)| {
                format!(
                    "[[auth.keys]]\nname = \"{scope}-key\"\nhash = \"{}\"\nscopes = [\"{scope}\"]\n",
                    collector::auth::key_hash(key)
                )
            })
            .collect()
    }
}

fn tls_toml(pki: &Pki, extra: &str) -> String {
    format!(
        "[server.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nreload_interval = \"1s\"\n{extra}\n",
        pki.path("server.crt"),
        pki.path("server.key")
    )
}

/// The gRPC and HTTP transports of the SDK, each with TLS (trusting `ca`, presenting `identity` when given) and
/// `key` as its bearer token.
enum Client<'a> {
    Grpc { ca: &'a str, identity: Option<&'a Leaf> },
    Http { ca: &'a str },
}

fn exporter(server: &Server, client: Client<'_>, key: Option<&str>) -> opentelemetry_otlp::SpanExporter {
    match client {
        Client::Grpc { ca, identity } => {
            let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)).domain_name("localhost");
            if let Some(leaf) = identity {
                tls = tls.identity(Identity::from_pem(&leaf.cert, &leaf.key));
            }
            let mut metadata = tonic::metadata::MetadataMap::new();
            if let Some(key) = key {
                metadata.insert("authorization", format!("Bearer {key}").parse().unwrap());
            }
            opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(format!("https://localhost:{}", server.grpc.port()))
                .with_tls_config(tls)
                .with_metadata(metadata)
                .build()
                .expect("gRPC exporter")
        }
        Client::Http { ca } => {
            let http = reqwest::Client::builder()
                .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap())
                .resolve("localhost", server.http)
                .build()
                .unwrap();
            let headers = key.map(|k| ("authorization".to_string(), format!("Bearer {k}"))).into_iter().collect();
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_http_client(http)
                .with_endpoint(format!("https://localhost:{}/v1/traces", server.http.port()))
                .with_headers(headers)
                .build()
                .expect("HTTP exporter")
        }
    }
}

/// A provider exporting each span at once through `exporter` (on the test's runtime), and its count of failed
/// exports.
fn counted_provider(exporter: opentelemetry_otlp::SpanExporter) -> (SdkTracerProvider, Arc<AtomicU64>) {
    let failed = Arc::new(AtomicU64::new(0));
    let provider = SdkTracerProvider::builder()
        .with_span_processor(SimpleSpanProcessor::new(OnRuntimeCounted {
            inner: exporter,
            handle: tokio::runtime::Handle::current(),
            failed: failed.clone(),
        }))
        .with_resource(Resource::builder_empty().with_attributes([KeyValue::new("service.name", "secure")]).build())
        .build();
    (provider, failed)
}

/// Exports `n` spans named `name` through `exporter` and says whether every export succeeded.
async fn export(exporter: opentelemetry_otlp::SpanExporter, name: &str, n: usize) -> bool {
    let (provider, failed) = counted_provider(exporter);
    let name = name.to_string();
    let sent = tokio::task::spawn_blocking(move || {
        let tracer = provider.tracer("it-security");
        for _ in 0..n {
            tracer.in_span(name.clone(), |_| {});
        }
        let _ = provider.shutdown();
    });
    sent.await.unwrap();
    failed.load(Ordering::Relaxed) == 0
}

/// Runs each export on the test's runtime (the SDK's processor calls from its own thread) and counts failures.
#[derive(Debug)]
struct OnRuntimeCounted {
    inner: opentelemetry_otlp::SpanExporter,
    handle: tokio::runtime::Handle,
    failed: Arc<AtomicU64>,
}

impl opentelemetry_sdk::trace::SpanExporter for OnRuntimeCounted {
    async fn export(&self, batch: Vec<opentelemetry_sdk::trace::SpanData>) -> opentelemetry_sdk::error::OTelSdkResult {
        let result = self.handle.block_on(self.inner.export(batch));
        if result.is_err() {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        result
    }
}

async fn count(server: &Server, name: &str) -> i64 {
    let rows = server.sql(&format!("SELECT count(*) AS n FROM spans WHERE name = '{name}'")).await;
    rows[0]["n"].as_i64().unwrap()
}

async fn flight(server: &Server, ca: &str) -> FlightSqlServiceClient<Channel> {
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)).domain_name("localhost");
    let channel = Channel::from_shared(format!("https://localhost:{}", server.flight_addr.port()))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .expect("Flight over TLS");
    FlightSqlServiceClient::new(channel)
}

async fn flight_count(client: &mut FlightSqlServiceClient<Channel>) -> Result<i64, tonic::Code> {
    let code = |e: arrow_flight::error::FlightError| match e {
        arrow_flight::error::FlightError::Tonic(status) => status.code(),
        other => panic!("not a gRPC status: {other}"),
    };
    let sql = "SELECT count(*) AS n FROM spans".to_string();
    let info = client.execute(sql, None).await.map_err(code)?;
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    let batches: Vec<RecordBatch> = client.do_get(ticket).await.map_err(code)?.try_collect().await.unwrap();
    Ok(batches[0].column(0).as_any().downcast_ref::<Int64Array>().unwrap().value(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// Long by design: one secured server tried on every listener and surface, in the order a client meets them.
async fn keys_and_tls_admit_the_sdk_and_refuse_everyone_else_on_every_listener() {
    let pki = Pki::new();
    pki.write("server", &pki.leaf(&["localhost", "127.0.0.1"]));
    let keys = Keys::new();
    let server = Server::start_secured(&(tls_toml(&pki, "") + &keys.toml()), &pki.ca_pem(), &keys.admin).await;
    let ca = pki.ca_pem();

    // The SDK over TLS with an ingest key, on gRPC and HTTP.
    assert!(export(exporter(&server, Client::Grpc { ca: &ca, identity: None }, Some(&keys.ingest)), "g", 3).await);
    assert!(export(exporter(&server, Client::Http { ca: &ca }, Some(&keys.ingest)), "h", 2).await);
    assert_eq!((count(&server, "g").await, count(&server, "h").await), (3, 2));

    // No key, a wrong key, a key of another scope: every export fails and nothing is stored.
    for key in [None, Some("tsk_not_a_key"), Some(keys.query.as_str())] {
        assert!(!export(exporter(&server, Client::Grpc { ca: &ca, identity: None }, key), "refused", 1).await);
        assert!(!export(exporter(&server, Client::Http { ca: &ca }, key), "refused", 1).await);
    }
    assert_eq!(count(&server, "refused").await, 0);

    // The same refusals with their codes: 401 without a valid key, 403 with one of the wrong scope.
    let otlp = format!("https://localhost:{}/v1/traces", server.http.port());
    let plain = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap())
        .resolve("localhost", server.http)
        .resolve("localhost", server.api)
        .build()
        .unwrap();
    let post = |url: String, key: Option<&str>| {
        let mut request = plain.post(url).header("content-type", "application/json");
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        request.body(r#"{"sql": "SELECT 1"}"#).send()
    };
    assert_eq!(post(otlp.clone(), None).await.unwrap().status(), 401);
    assert_eq!(post(otlp.clone(), Some("tsk_wrong")).await.unwrap().status(), 401);
    assert_eq!(post(otlp.clone(), Some(&keys.query)).await.unwrap().status(), 403);
    let sql = format!("{}/api/v1/query", server.api_url());
    assert_eq!(post(sql.clone(), None).await.unwrap().status(), 401);
    assert_eq!(post(sql.clone(), Some(&keys.ingest)).await.unwrap().status(), 403);
    assert_eq!(post(sql.clone(), Some(&keys.query)).await.unwrap().status(), 200);
    let get = |path: &str, key: Option<&str>| {
        let mut request = plain.get(format!("{}{path}", server.api_url()));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        request.send()
    };
    // Probes stay open; /metrics is for admin keys.
    assert_eq!(get("/healthz", None).await.unwrap().status(), 200);
    assert_eq!(get("/readyz", None).await.unwrap().status(), 200);
    assert_eq!(get("/metrics", None).await.unwrap().status(), 401);
    assert_eq!(get("/metrics", Some(&keys.query)).await.unwrap().status(), 403);
    assert_eq!(get("/metrics", Some(&keys.admin)).await.unwrap().status(), 200);
    assert_eq!(get("/api/v1/alerts", None).await.unwrap().status(), 401);
    assert_eq!(get("/api/v1/live", Some(&keys.query)).await.unwrap().status(), 200);

    // The CLI: --token and --ca-cert (or TAILSCOPE_TOKEN / TAILSCOPE_CA_CERT).
    let cli = |token: Option<&str>| {
        let mut command = Command::new(tailscope_bin());
        command.args(["query", "--format", "csv", "--server", &server.api_url(), "--ca-cert", &pki.path("ca.crt")]);
        command.env_remove("TAILSCOPE_TOKEN");
        if let Some(token) = token {
            command.env("TAILSCOPE_TOKEN", token);
        }
        command.arg("SELECT count(*) AS n FROM spans").output().unwrap()
    };
    let out = cli(Some(&keys.query));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "n\n5\n");
    let out = cli(None);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("needs an API key"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Plaintext on a TLS listener gets no answer.
    assert!(reqwest::Client::new().get(format!("http://{}/healthz", server.api)).send().await.is_err());
    // Failed handshakes and refused keys are counted, by listener (and reason).
    let scrape = server.scrape().await;
    assert!(scrape.sum("tailscope_tls_handshake_failures_total", &[("listener", "api")]) >= 1.0, "{}", scrape.text);
    let refused = |listener: &str, reason: &str| {
        scrape.sum("tailscope_auth_refusals_total", &[("listener", listener), ("reason", reason)])
    };
    assert!(refused("otlp_http", "missing") >= 1.0 && refused("otlp_http", "unknown") >= 1.0, "{}", scrape.text);
    assert!(refused("otlp_grpc", "forbidden") >= 1.0 && refused("api", "forbidden") >= 1.0, "{}", scrape.text);

    // Flight SQL: the key as the handshake's password (the user name is not used), then its bearer token.
    let mut client = flight(&server, &ca).await;
    assert_eq!(flight_count(&mut client).await, Err(tonic::Code::Unauthenticated));
    // The refusal says what a Flight client sends, not the OTLP exporters' variable.
    let missing = client.execute("SELECT 1".to_string(), None).await.unwrap_err().to_string();
    assert!(missing.contains("handshake") && !missing.contains("OTEL_EXPORTER_OTLP_HEADERS"), "{missing}");
    let mut wrong = flight(&server, &ca).await;
    assert!(wrong.handshake("analyst", "tsk_wrong").await.is_err());
    // An ingest key is refused at the handshake already, and as a bearer token on a query.
    let mut ingest = flight(&server, &ca).await;
    let refused = ingest.handshake("analyst", &keys.ingest).await.unwrap_err().to_string();
    assert!(refused.contains("lacks the query scope"), "{refused}");
    ingest.set_header("authorization", format!("Bearer {}", keys.ingest));
    assert_eq!(flight_count(&mut ingest).await, Err(tonic::Code::PermissionDenied));
    client.handshake("analyst", &keys.query).await.expect("handshake with a query key");
    assert_eq!(flight_count(&mut client).await, Ok(5));
    // A bearer header set directly works too.
    let mut bearer = flight(&server, &ca).await;
    bearer.set_header("authorization", format!("Bearer {}", keys.admin));
    assert_eq!(flight_count(&mut bearer).await, Ok(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_admits_only_clients_with_a_certificate_from_the_ca() {
    let pki = Pki::new();
    pki.write("server", &pki.leaf(&["localhost", "127.0.0.1"]));
    // The API stays plaintext on loopback for the harness (a listener's own table overrides the shared one).
    let toml =
        tls_toml(&pki, &format!("client_ca_file = \"{}\"", pki.path("ca.crt"))) + "[server.tls.api]\nenabled = false\n";
    let server = Server::start_with(&toml).await;
    let ca = pki.ca_pem();
    let client_cert = pki.leaf(&["agent-1"]);
    assert!(export(exporter(&server, Client::Grpc { ca: &ca, identity: Some(&client_cert) }, None), "m", 2).await);
    assert!(!export(exporter(&server, Client::Grpc { ca: &ca, identity: None }, None), "anon", 1).await);
    // A certificate from another CA is refused too.
    let stranger = Pki::new().leaf(&["agent-2"]);
    assert!(!export(exporter(&server, Client::Grpc { ca: &ca, identity: Some(&stranger) }, None), "anon", 1).await);
    assert_eq!(count(&server, "m").await, 2);
    assert_eq!(count(&server, "anon").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_rotated_while_an_exporter_sends_fails_no_export() {
    let pki = Pki::new();
    let first = pki.leaf(&["localhost", "127.0.0.1"]);
    pki.write("server", &first);
    let server = Server::start_with(&(tls_toml(&pki, "") + "[server.tls.api]\nenabled = false\n")).await;
    let ca = pki.ca_pem();

    // An exporter sends a span every 20 ms over HTTP (new connections now and then) while the certificate is
    // replaced underneath.
    let sender = {
        let exporter = exporter(&server, Client::Http { ca: &ca }, None);
        tokio::spawn(async move { export_for(exporter, Duration::from_secs(4)).await })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let second = pki.leaf(&["localhost", "127.0.0.1"]);
    pki.write("server", &second);
    // New handshakes get the new certificate within the reload interval (1 s).
    let deadline = Instant::now() + Duration::from_secs(10);
    while served_certificate(server.http, &ca).await != pem_der(&second.cert) {
        assert!(Instant::now() < deadline, "the rotated certificate was not served; log:\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (sent, failed) = sender.await.unwrap();
    assert!(sent > 50, "{sent}");
    assert_eq!(failed, 0, "exports failed across the rotation");
    assert_eq!(count(&server, "rotating").await, sent as i64);
}

/// Sends one span at a time for `duration`; (spans sent, exports failed).
async fn export_for(exporter: opentelemetry_otlp::SpanExporter, duration: Duration) -> (u64, u64) {
    let (provider, failed) = counted_provider(exporter);
    let sent = tokio::task::spawn_blocking(move || {
        let tracer = provider.tracer("it-rotation");
        let start = Instant::now();
        let mut sent = 0;
        while start.elapsed() < duration {
            tracer.in_span("rotating", |_| {});
            sent += 1;
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = provider.shutdown();
        sent
    })
    .await
    .unwrap();
    (sent, failed.load(Ordering::Relaxed))
}

/// The DER of the certificate a fresh TLS handshake with `addr` is served.
async fn served_certificate(addr: std::net::SocketAddr, ca: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from_pem_slice(ca.as_bytes()).unwrap()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn pem_der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap().to_vec()
}

#[test]
fn binding_beyond_loopback_without_tls_and_keys_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let start = |extra: &[&str]| {
        let output = Command::new(tailscope_bin())
            .args(["serve", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(["--otlp-grpc", "0.0.0.0:0", "--otlp-http", &free_addr().to_string()])
            .args(["--api", &free_addr().to_string(), "--flight", &free_addr().to_string()])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_exit(output, Duration::from_secs(5))
    };
    let (code, stderr) = start(&[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("otlp_grpc")
            && stderr.contains("TLS")
            && stderr.contains("API keys")
            && stderr.contains("--insecure"),
        "{stderr}"
    );
    // --insecure serves (it is still running when we stop it).
    let (code, stderr) = start(&["--insecure"]);
    assert_eq!(code, None, "{stderr}");
}

/// An IPv4-mapped IPv6 loopback address (`[::ffff:127.0.0.1]`) is loopback: it serves without TLS and keys.
#[test]
fn an_ipv4_mapped_loopback_bind_counts_as_loopback() {
    let dir = tempfile::tempdir().unwrap();
    // A free port, spelled as the IPv4-mapped address of 127.0.0.1.
    let mapped = format!("[::ffff:127.0.0.1]:{}", free_addr().port());
    let child = Command::new(tailscope_bin())
        .args(["serve", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(["--otlp-grpc", &mapped, "--otlp-http", &free_addr().to_string()])
        .args(["--api", &free_addr().to_string(), "--flight", &free_addr().to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (code, stderr) = wait_exit(child, Duration::from_secs(5));
    if stderr.contains("Address family not supported") || stderr.contains("Cannot assign requested address") {
        eprintln!("no IPv6 here; skipped: {stderr}");
        return;
    }
    assert_eq!(code, None, "a mapped loopback address must serve without TLS and keys: {stderr}");
}

/// Waits up to `wait` for `child` to exit: its exit code (None if it was still running: then it is killed) and
/// stderr.
fn wait_exit(mut child: std::process::Child, wait: Duration) -> (Option<i32>, String) {
    let deadline = Instant::now() + wait;
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    (code, stderr)
}

/// Peers that connect and never start their TLS handshake must not lock clients out: at the connection cap a
/// handshaking connection is shed like an idle one. (Before: each held its slot until `header_timeout`, so a few
/// idle sockets made a TLS listener refuse everyone, while plaintext shed them.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_stalled_before_the_tls_handshake_are_shed_at_the_cap() {
    let pki = Pki::new();
    pki.write("server", &pki.leaf(&["localhost", "127.0.0.1"]));
    let toml = "[server]\nmax_connections = 4\nheader_timeout = \"60s\"\n".to_string()
        + &tls_toml(&pki, "")
        + "[server.tls.api]\nenabled = false\n";
    let server = Server::start_with(&toml).await;
    let mut stalled = Vec::new();
    for _ in 0..12 {
        stalled.push(tokio::net::TcpStream::connect(server.http).await.unwrap());
    }
    // The SDK's export timeout (10 s) is far below header_timeout: it succeeds only if stalled peers make room.
    let ca = pki.ca_pem();
    assert!(export(exporter(&server, Client::Http { ca: &ca }, None), "past-the-stall", 1).await);
    assert_eq!(count(&server, "past-the-stall").await, 1);
    assert!(server.metric("tailscope_connections_shed_total").await >= 1.0);
    drop(stalled);
}

#[test]
fn a_client_ca_without_a_certificate_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(&config, "[server.tls]\nclient_ca_file = \"/etc/hostname\"\n").unwrap();
    let stderr = crate::support::serve_fails_to_start(Some(&config), &dir.path().join("data"));
    assert!(stderr.contains("server.tls.cert_file"), "{stderr}");
}

/// Runs `script` with python3 and `env`; a missing module fails the test with what to install (`.ci/run` installs
/// them), never skips it.
fn python(script: &str, args: &[&str], env: &[(&str, String)]) -> std::process::Output {
    let mut command = Command::new("python3");
    command.args(["-c", script]).args(args);
    // `requests` lets these override the exporter's own CA file (OTEL_EXPORTER_OTLP_CERTIFICATE): a machine that
    // sets them (as some images do) would test the variable's shadow, not the variable. docs/security.md says so.
    command.env_remove("REQUESTS_CA_BUNDLE").env_remove("CURL_CA_BUNDLE");
    for (k, v) in env {
        command.env(k, v);
    }
    let out = command.output().expect("python3");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("ModuleNotFoundError"),
        "python3 -m pip install opentelemetry-sdk opentelemetry-exporter-otlp-proto-grpc \
         opentelemetry-exporter-otlp-proto-http adbc-driver-flightsql pyarrow: {stderr}"
    );
    out
}

/// The Python SDK's exporter, configured only by the standard environment variables, exports `n` spans named
/// `name`; prints OK when every export succeeded.
const PYTHON_EXPORT: &str = r#"
import sys
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
protocol, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
if protocol == "grpc":
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
else:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
exporter = OTLPSpanExporter()
results = []
class Counted(SimpleSpanProcessor):
    def on_end(self, span):
        results.append(exporter.export([span]))
provider = TracerProvider(resource=Resource.create({"service.name": "python-" + protocol}))
provider.add_span_processor(Counted(exporter))
tracer = provider.get_tracer("it-security-python")
for _ in range(n):
    with tracer.start_as_current_span(name):
        pass
ok = len(results) == n and all(r == SpanExportResult.SUCCESS for r in results)
print("OK" if ok else "FAILED %s" % results)
"#;

/// ADBC's Flight SQL driver over TLS, trusting `ca`, with the key as the password.
const PYTHON_ADBC: &str = r#"
import sys
import adbc_driver_flightsql.dbapi as flight_sql
from adbc_driver_flightsql import DatabaseOptions
uri, ca_file, key = sys.argv[1], sys.argv[2], sys.argv[3]
options = {DatabaseOptions.TLS_ROOT_CERTS.value: open(ca_file).read(), "username": "analyst", "password": key}
with flight_sql.connect(uri, db_kwargs=options) as conn:
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) AS n FROM spans WHERE service_name LIKE ?", parameters=("python-%",))
        print(cur.fetchone()[0])
"#;

/// Issue 14: Python's official SDK over TLS with `OTEL_EXPORTER_OTLP_CERTIFICATE` and `OTEL_EXPORTER_OTLP_HEADERS`
/// (gRPC and HTTP), refused without the key and storing nothing then; ADBC Flight SQL over TLS with a query key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_and_adbc_work_over_tls_with_keys() {
    let pki = Pki::new();
    pki.write("server", &pki.leaf(&["localhost", "127.0.0.1"]));
    let keys = Keys::new();
    let server = Server::start_secured(&(tls_toml(&pki, "") + &keys.toml()), &pki.ca_pem(), &keys.admin).await;
    let env = |port: u16, key: Option<&str>| {
        let mut env = vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("https://localhost:{port}")),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", pki.path("ca.crt")),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "10".to_string()),
            ("OTEL_EXPORTER_OTLP_HEADERS", String::new()),
        ];
        if let Some(key) = key {
            // The variable's values are URL-encoded (the OTel spec's W3C Baggage format): the space is %20.
            env[3].1 = format!("authorization=Bearer%20{key}");
        }
        env
    };
    for (protocol, port) in [("grpc", server.grpc.port()), ("http", server.http.port())] {
        let out = python(PYTHON_EXPORT, &[protocol, "py-ok", "3"], &env(port, Some(&keys.ingest)));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("OK"), "{protocol}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        for key in [None, Some(keys.query.as_str())] {
            let out = python(PYTHON_EXPORT, &[protocol, "py-refused", "1"], &env(port, key));
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(stdout.contains("FAILED"), "{protocol} with {key:?}: {stdout}");
        }
    }
    assert_eq!(count(&server, "py-ok").await, 6);
    assert_eq!(count(&server, "py-refused").await, 0);

    let uri = format!("grpc+tls://localhost:{}", server.flight_addr.port());
    let out = python(PYTHON_ADBC, &[&uri, &pki.path("ca.crt"), &keys.query], &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "6");
    let out = python(PYTHON_ADBC, &[&uri, &pki.path("ca.crt"), &keys.ingest], &[]);
    assert!(!out.status.success(), "an ingest key cannot query");
    assert!(String::from_utf8_lossy(&out.stderr).contains("query scope"), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Issue 14: `tailscope query` presents a client certificate (`--client-cert`/`--client-key`) to an API behind
/// mutual TLS, and without one, or with one from another CA, is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_presents_a_client_certificate_to_an_api_behind_mutual_tls() {
    let pki = Pki::new();
    pki.write("server", &pki.leaf(&["localhost", "127.0.0.1"]));
    pki.write("cli", &pki.leaf(&["analyst"]));
    let stranger = Pki::new();
    stranger.write("cli", &stranger.leaf(&["analyst"]));
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tailscope.toml");
    std::fs::write(&config, tls_toml(&pki, &format!("client_ca_file = \"{}\"", pki.path("ca.crt")))).unwrap();
    let api = free_addr();
    let log = std::fs::File::create(dir.path().join("serve.log")).unwrap();
    let mut child = Command::new(tailscope_bin())
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--otlp-grpc", &free_addr().to_string(), "--otlp-http", &free_addr().to_string()])
        .args(["--api", &api.to_string(), "--flight", &free_addr().to_string()])
        .stderr(log)
        .spawn()
        .unwrap();
    let url = format!("https://localhost:{}", api.port());
    let cli = |identity: Option<&Pki>| {
        let mut command = Command::new(tailscope_bin());
        command.args(["query", "--format", "csv", "--server", &url, "--ca-cert", &pki.path("ca.crt")]);
        if let Some(issuer) = identity {
            command.args(["--client-cert", &issuer.path("cli.crt"), "--client-key", &issuer.path("cli.key")]);
        }
        command.arg("SELECT 40 + 2 AS n").output().unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let out = loop {
        let out = cli(Some(&pki));
        if out.status.success() || Instant::now() > deadline {
            break out;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let log = std::fs::read_to_string(dir.path().join("serve.log")).unwrap_or_default();
    assert!(out.status.success(), "{}\n{log}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "n\n42\n");
    for identity in [None, Some(&stranger)] {
        let out = cli(identity);
        assert!(!out.status.success(), "refused without a certificate from the CA");
    }
    // A flag that names something that is not a PEM file says so.
    let out = Command::new(tailscope_bin())
        .args([
            "query",
            "--server",
            &url,
            "--client-cert",
            "/etc/hostname",
            "--client-key",
            "/etc/hostname",
            "SELECT 1",
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a PEM certificate and its key"), "{out:?}");
    let _ = child.kill();
    let _ = child.wait();
}

/// A fleet behind TLS and keys: a member trusting the coordinator's CA (`fleet.ca_file`) reports with an `admin`
/// key and answers from the verdict; a member with a `query` key is refused, and its guardrail says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_members_report_over_tls_with_an_admin_key_only() {
    let pki = Pki::new();
    pki.write("server", &pki.leaf(&["localhost", "127.0.0.1"]));
    let keys = Keys::new();
    let shared = tempfile::tempdir().unwrap();
    let coordinator_toml =
        tls_toml(&pki, "") + &keys.toml() + &crate::fleet::fleet_toml(shared.path(), "coordinator", "");
    let coordinator = Server::start_secured(&coordinator_toml, &pki.ca_pem(), &keys.admin).await;
    let member_toml = |key: &str| {
        crate::fleet::fleet_toml(
            shared.path(),
            "member",
            &format!(
                "coordinator = \"{}\"\nkey = \"{key}\"\nca_file = \"{}\"\non_coordinator_down = \"closed\"\n",
                coordinator.api_url(),
                pki.path("ca.crt")
            ),
        )
    };
    let admitted = Server::start_with(&member_toml(&keys.admin)).await;
    let refused = Server::start_with(&member_toml(&keys.query)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let (mut fresh, mut forbidden) = (false, false);
    while !(fresh && forbidden) {
        let g = crate::budget::guardrail(&admitted).await;
        fresh = g["decided_by"].as_str().is_some_and(|d| d.contains("coordinator at https://localhost"));
        let g = crate::budget::guardrail(&refused).await;
        forbidden = g["decision"] == "deny" && g["reason"].as_str().is_some_and(|r| r.contains("403"));
        assert!(std::time::Instant::now() < deadline, "admitted fresh: {fresh}, refused says 403: {forbidden}: {g}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
