//! Connections on every listener (OTLP/gRPC, OTLP/HTTP, API, Flight SQL) against the real binary: idle sockets,
//! slowloris headers and trickled bodies are cut at their timeouts, a connection flood is capped per listener
//! without starving well-behaved clients, idle connections are shed at the cap (busy ones never), EMFILE on accept
//! is survived without spinning, a client that stops reading is dropped, HTTP/2 keepalive drops silent peers, and
//! alert webhooks do not follow redirects. Raw sockets on 127.0.0.1 only; every wait is bounded.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use opentelemetry::KeyValue;
use opentelemetry::trace::{SpanKind, Tracer, TracerProvider};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue as PKeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource as PResource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span as PSpan};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{Server, Transport, tracer_provider};

/// Short limits, so that every case takes about a second.
const LIMITS: &str = r#"
[server]
idle_timeout = "1s"
header_timeout = "1s"
body_timeout = "1s"
max_connections = 16
"#;

/// The configured timeouts above.
const TIMEOUT: Duration = Duration::from_secs(1);

/// Closing earlier than this would not be the timeout at work.
const EARLIEST: Duration = Duration::from_millis(700);

/// Slack for a loaded machine.
const LATEST: Duration = Duration::from_millis(3500);

fn listeners(server: &Server) -> [(&'static str, SocketAddr); 4] {
    [("otlp_grpc", server.grpc), ("otlp_http", server.http), ("api", server.api), ("flight", server.flight_addr)]
}

/// Reads (and discards) what the server sends until it closes the connection; returns when that happened after
/// `start`, or None if it was still open at `start + limit`.
async fn closed_after(stream: &mut TcpStream, start: Instant, limit: Duration) -> Option<Duration> {
    let mut buf = [0u8; 4096];
    loop {
        let left = limit.checked_sub(start.elapsed())?;
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

fn assert_cut_at_timeout(what: &str, closed: Option<Duration>) {
    match closed {
        None => panic!("{what}: still open after {LATEST:?} (timeout {TIMEOUT:?})"),
        Some(t) => assert!(t >= EARLIEST, "{what}: closed after {t:?}, before the {TIMEOUT:?} timeout"),
    }
}

// --- HTTP/2 by hand: just enough framing to hold a connection the way a client (or an attacker) would. ---

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const ACK: u8 = 1;
const END_STREAM: u8 = 1;
const END_HEADERS: u8 = 4;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK, literal fields without indexing and without Huffman coding (valid, if not compact).
fn hpack(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        assert!(name.len() < 127 && value.len() < 127);
        out.push(0);
        out.push(name.len() as u8);
        out.extend_from_slice(name.as_bytes());
        out.push(value.len() as u8);
        out.extend_from_slice(value.as_bytes());
    }
    out
}

#[derive(Debug, Clone)]
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

/// Reads frames from the server.
struct FrameReader {
    buf: Vec<u8>,
}

impl FrameReader {
    fn new() -> FrameReader {
        FrameReader { buf: Vec::new() }
    }

    /// The next frame, or None when the connection closed or `deadline` passed.
    async fn next(&mut self, stream: &mut (impl AsyncReadExt + Unpin), deadline: Instant) -> Option<Frame> {
        loop {
            if self.buf.len() >= 9 {
                let len = ((self.buf[0] as usize) << 16) | ((self.buf[1] as usize) << 8) | self.buf[2] as usize;
                if self.buf.len() >= 9 + len {
                    let head: Vec<u8> = self.buf.drain(..9 + len).collect();
                    return Some(Frame {
                        kind: head[3],
                        flags: head[4],
                        stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
                        payload: head[9..].to_vec(),
                    });
                }
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout(left, stream.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => self.buf.extend_from_slice(&chunk[..n]),
                _ => return None,
            }
        }
    }
}

/// Opens an HTTP/2 connection: preface, empty SETTINGS, and the ACK of the server's SETTINGS.
async fn h2_connect(addr: SocketAddr) -> (TcpStream, FrameReader) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(PREFACE).await.unwrap();
    stream.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    let mut reader = FrameReader::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let f = reader.next(&mut stream, deadline).await.expect("the server's SETTINGS");
        if f.kind == SETTINGS && f.flags & ACK == 0 {
            stream.write_all(&frame(SETTINGS, ACK, 0, &[])).await.unwrap();
            return (stream, reader);
        }
    }
}

/// Reads frames until the server closes the connection or `limit` passes; answers PINGs if `answer_pings`.
/// Returns the frame kinds seen and when the connection closed (None: still open at `start + limit`).
async fn h2_until_closed(
    stream: &mut TcpStream,
    reader: &mut FrameReader,
    start: Instant,
    limit: Duration,
    answer_pings: bool,
) -> (Vec<u8>, Option<Duration>) {
    let mut kinds = Vec::new();
    while let Some(f) = reader.next(stream, start + limit).await {
        kinds.push(f.kind);
        if answer_pings && f.kind == PING && f.flags & ACK == 0 {
            let _ = stream.write_all(&frame(PING, ACK, 0, &f.payload)).await;
        }
    }
    let elapsed = start.elapsed();
    (kinds, (elapsed < limit).then_some(elapsed))
}

// --- OTLP payloads ---

fn kv(key: &str, value: &str) -> PKeyValue {
    PKeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(any_value::Value::StringValue(value.into())) }),
        ..Default::default()
    }
}

/// One valid span from `service`.
fn one_span(service: &str, id: u8) -> Vec<u8> {
    let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64;
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(PResource { attributes: vec![kv("service.name", service)], ..Default::default() }),
            scope_spans: vec![ScopeSpans {
                spans: vec![PSpan {
                    trace_id: vec![id; 16],
                    span_id: vec![id; 8],
                    name: "chat".into(),
                    kind: 3,
                    start_time_unix_nano: t,
                    end_time_unix_nano: t + 1_000_000,
                    attributes: vec![kv("gen_ai.provider.name", "openai"), kv("gen_ai.request.model", "gpt-4o")],
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

async fn span_count(server: &Server, service: &str) -> i64 {
    let rows = server.sql(&format!("SELECT count(*) AS n FROM spans WHERE service_name = '{service}'")).await;
    rows[0]["n"].as_i64().unwrap()
}

/// A well-behaved client: one span over OTLP/HTTP, one over OTLP/gRPC, then a query; each on a new connection.
async fn well_behaved(server: &Server, service: &str) {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let r = http
        .post(format!("{}/v1/traces", server.http_url()))
        .header("content-type", "application/x-protobuf")
        .body(one_span(service, 1))
        .send()
        .await
        .expect("OTLP/HTTP export");
    assert!(r.status().is_success(), "OTLP/HTTP export: {}", r.status());
    let channel = tonic::transport::Endpoint::from_shared(server.grpc_url())
        .unwrap()
        .timeout(Duration::from_secs(10))
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
        .expect("gRPC connect");
    let request = ExportTraceServiceRequest::decode(&one_span(service, 2)[..]).unwrap();
    TraceServiceClient::new(channel).export(request).await.expect("OTLP/gRPC export");
    assert_eq!(span_count(server, service).await, 2);
}

/// Descriptors open in process `pid`.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// CPU time (user + system) of process `pid`.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces), 1-based from the state field: utime 12, stime 13.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = [11, 12].iter().filter_map(|&i| fields.get(i)?.parse::<u64>().ok()).sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_on_every_listener() {
    let server = Server::start_with(LIMITS).await;
    let start = Instant::now();
    // A socket that never sends a byte, on each listener.
    let mut silent = Vec::new();
    for (name, addr) in listeners(&server) {
        silent.push((name, TcpStream::connect(addr).await.unwrap()));
    }
    // HTTP/1.1 keep-alive connections that completed a request and then wait.
    let mut kept = Vec::new();
    for (name, addr, path) in [("otlp_http", server.http, "/v1/traces"), ("api", server.api, "/healthz")] {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes()).await.unwrap();
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.unwrap().unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 "), "{name}: {:?}", String::from_utf8_lossy(&buf[..n]));
        kept.push((name, s));
    }
    // HTTP/2 connections (gRPC's) past the handshake, answering PINGs like a live client.
    let mut h2 = Vec::new();
    for (name, addr) in [("otlp_grpc", server.grpc), ("flight", server.flight_addr)] {
        let (s, r) = h2_connect(addr).await;
        h2.push((name, s, r));
    }
    let checks = silent.into_iter().map(|(name, mut s)| {
        tokio::spawn(async move { (format!("{name}: silent socket"), closed_after(&mut s, start, LATEST).await) })
    });
    let checks: Vec<_> = checks
        .chain(kept.into_iter().map(|(name, mut s)| {
            tokio::spawn(async move { (format!("{name}: idle keep-alive"), closed_after(&mut s, start, LATEST).await) })
        }))
        .collect();
    let h2_checks: Vec<_> = h2
        .into_iter()
        .map(|(name, mut s, mut r)| {
            tokio::spawn(async move { (name, h2_until_closed(&mut s, &mut r, start, LATEST, true).await) })
        })
        .collect();
    for c in checks {
        let (what, closed) = c.await.unwrap();
        assert_cut_at_timeout(&what, closed);
    }
    for c in h2_checks {
        let (name, (kinds, closed)) = c.await.unwrap();
        assert_cut_at_timeout(&format!("{name}: idle HTTP/2"), closed);
        assert!(kinds.contains(&GOAWAY), "{name}: an idle HTTP/2 connection ends with GOAWAY; got frames {kinds:?}");
    }
    // The server is fine and serves new connections.
    well_behaved(&server, "after-idle").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_headers_are_cut_at_the_header_timeout() {
    let server = Server::start_with(LIMITS).await;
    let trickle = |addr: SocketAddr, bytes: Vec<u8>| async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let start = Instant::now();
        let mut buf = [0u8; 1024];
        for b in bytes.iter().cycle() {
            if start.elapsed() > LATEST {
                return None;
            }
            if s.write_all(&[*b]).await.is_err() {
                return Some(start.elapsed());
            }
            match tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
                _ => {}
            }
        }
        None
    };
    // HTTP/1.1: a request head a byte per 200 ms, never finished.
    let head = b"POST /v1/traces HTTP/1.1\r\nhost: x\r\nx-slow: ".to_vec();
    let tasks = [
        ("otlp_http: headers", tokio::spawn(trickle(server.http, head.clone()))),
        ("api: headers", tokio::spawn(trickle(server.api, head))),
        // HTTP/2: the connection preface itself, a byte per 200 ms.
        ("otlp_grpc: preface", tokio::spawn(trickle(server.grpc, PREFACE.to_vec()))),
        ("flight: preface", tokio::spawn(trickle(server.flight_addr, PREFACE.to_vec()))),
    ];
    for (what, task) in tasks {
        assert_cut_at_timeout(what, task.await.unwrap());
    }
    well_behaved(&server, "after-slowloris").await;
}

/// Sends an HTTP/1.1 request whose body trickles in over ~2.4 s; returns the status line (if any) and when the
/// answer came.
async fn slow_http_body(addr: SocketAddr, path: &str, content_type: &str, body: Vec<u8>) -> (String, Duration) {
    let s = TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let start = Instant::now();
    wr.write_all(head.as_bytes()).await.unwrap();
    let chunk = body.len().div_ceil(12).max(1);
    let writer = tokio::spawn(async move {
        for piece in body.chunks(chunk) {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if wr.write_all(piece).await.is_err() {
                return;
            }
        }
        // Keep the write half open until the test is done reading.
        tokio::time::sleep(Duration::from_secs(2)).await;
    });
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    let mut answered = None;
    while start.elapsed() < LATEST + Duration::from_secs(1) {
        match tokio::time::timeout(Duration::from_millis(100), rd.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                answered.get_or_insert(start.elapsed());
                answer.extend_from_slice(&buf[..n]);
            }
            Err(_) => {}
        }
    }
    writer.abort();
    let text = String::from_utf8_lossy(&answer).to_string();
    (text.lines().next().unwrap_or("").to_string(), answered.unwrap_or(start.elapsed()))
}

/// Sends a gRPC request over a hand-made HTTP/2 stream whose body trickles in over ~2.4 s; returns the frames
/// the server sent on that stream and when the stream ended.
async fn slow_grpc_body(addr: SocketAddr, path: &str, message: Vec<u8>) -> (Vec<Frame>, Option<Duration>) {
    let (s, mut reader) = h2_connect(addr).await;
    let (mut rd, mut wr) = s.into_split();
    let mut body = vec![0u8];
    body.extend_from_slice(&(message.len() as u32).to_be_bytes());
    body.extend_from_slice(&message);
    let headers = hpack(&[
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", "127.0.0.1"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]);
    let start = Instant::now();
    wr.write_all(&frame(HEADERS, END_HEADERS, 1, &headers)).await.unwrap();
    let chunk = body.len().div_ceil(12).max(1);
    let writer = tokio::spawn(async move {
        let pieces: Vec<&[u8]> = body.chunks(chunk).collect();
        for (i, piece) in pieces.iter().enumerate() {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let flags = if i + 1 == pieces.len() { END_STREAM } else { 0 };
            if wr.write_all(&frame(DATA, flags, 1, piece)).await.is_err() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    });
    let mut frames = Vec::new();
    let mut ended = None;
    while let Some(f) = reader.next(&mut rd, start + LATEST).await {
        if f.stream == 1 {
            frames.push(f.clone());
            if f.kind == RST_STREAM || (f.kind == HEADERS && f.flags & END_STREAM != 0) {
                ended = Some(start.elapsed());
                break;
            }
        }
    }
    writer.abort();
    (frames, ended)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_are_cut_at_the_body_timeout_and_nothing_is_stored() {
    let server = Server::start_with(LIMITS).await;
    let http = slow_http_body(server.http, "/v1/traces", "application/x-protobuf", one_span("slow-http", 1));
    let api = slow_http_body(server.api, "/api/v1/query", "application/sql", b"SELECT 1 AS one".to_vec());
    let grpc = slow_grpc_body(
        server.grpc,
        "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
        one_span("slow-grpc", 2),
    );
    let ((http_status, http_at), (api_status, api_at), (grpc_frames, grpc_ended)) = tokio::join!(http, api, grpc);
    for (what, status, at) in [("otlp_http", http_status, http_at), ("api", api_status, api_at)] {
        assert!(
            status.starts_with("HTTP/1.1 408"),
            "{what}: a trickled body is answered 408, got {status:?} after {at:?}"
        );
        assert!(at >= EARLIEST && at < LATEST, "{what}: answered after {at:?}, want about {TIMEOUT:?}");
    }
    let ended =
        grpc_ended.unwrap_or_else(|| panic!("otlp_grpc: the stream was not ended by the server: {grpc_frames:?}"));
    assert!(ended >= EARLIEST, "otlp_grpc: ended after {ended:?}, before the timeout");
    // A success would carry the response message in a DATA frame; the cut stream is a trailers-only error.
    assert!(!grpc_frames.iter().any(|f| f.kind == DATA), "otlp_grpc: the trickled request succeeded: {grpc_frames:?}");
    // Whatever trickled in after the cut, nothing was stored.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(span_count(&server, "slow-http").await, 0, "spans of the cut OTLP/HTTP request were stored");
    assert_eq!(span_count(&server, "slow-grpc").await, 0, "spans of the cut OTLP/gRPC request were stored");
    well_behaved(&server, "after-slow-bodies").await;
}

/// How much of a response body has arrived, and whether all of it has: by `content-length` when the answer has
/// one, else by the chunked encoding's last chunk (query results are streamed as they are produced).
struct BodyProgress {
    read: usize,
    length: Option<usize>,
    tail: Vec<u8>,
}

impl BodyProgress {
    const LAST_CHUNK: &'static [u8] = b"\r\n0\r\n\r\n";

    fn push(&mut self, bytes: &[u8]) {
        self.read += bytes.len();
        self.tail.extend_from_slice(bytes);
        let keep = self.tail.len().saturating_sub(Self::LAST_CHUNK.len());
        self.tail.drain(..keep);
    }

    fn complete(&self) -> bool {
        match self.length {
            Some(length) => self.read >= length,
            None => self.tail == Self::LAST_CHUNK,
        }
    }
}

/// Asks the API for a 16 MiB CSV over HTTP/1.1 on a socket with a small receive buffer; returns the socket after
/// the response head and what of the body was already read.
async fn big_response(server: &Server) -> (TcpStream, BodyProgress) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut s = socket.connect(server.api).await.unwrap();
    let sql = "SELECT%20repeat('x',%201048576)%20AS%20x%20FROM%20generate_series(1,%2016)";
    let head = format!("GET /api/v1/query?sql={sql} HTTP/1.1\r\nhost: x\r\naccept: text/csv\r\n\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let end = loop {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "closed before the response head");
        got.extend_from_slice(&buf[..n]);
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let length =
        head.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse::<usize>().ok());
    assert!(length.is_some() || head.contains("transfer-encoding: chunked"), "no body framing: {head}");
    let mut progress = BodyProgress { read: 0, length, tail: Vec::new() };
    progress.push(&got[end..]);
    (s, progress)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_readers_are_dropped_and_slow_readers_are_served() {
    let server = Server::start_with(LIMITS).await;
    let (stalled, slow) = tokio::join!(
        async {
            // Reads nothing for 3 s (the write-stall limit is 1 s), then drains what was buffered.
            let (mut s, mut body) = big_response(&server).await;
            tokio::time::sleep(Duration::from_secs(3)).await;
            let mut buf = vec![0u8; 1 << 16];
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline && !body.complete() {
                match tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
                    Ok(Ok(n)) if n > 0 => body.push(&buf[..n]),
                    _ => break,
                }
            }
            body
        },
        async {
            // Takes about 4 s for the whole body, longer than idle_timeout + header_timeout, but never stops.
            let (mut s, mut body) = big_response(&server).await;
            let mut buf = vec![0u8; 1 << 16];
            let deadline = Instant::now() + Duration::from_secs(15);
            while !body.complete() && Instant::now() < deadline {
                let mut chunk = 0;
                while chunk < 1 << 20 && !body.complete() {
                    match tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await {
                        Ok(Ok(n)) if n > 0 => {
                            chunk += n;
                            body.push(&buf[..n]);
                        }
                        _ => return body,
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            body
        },
    );
    assert!(
        !stalled.complete(),
        "the stalled reader got the whole response ({} bytes): it was not dropped",
        stalled.read
    );
    assert!(slow.complete(), "a slow reader was cut after {} bytes", slow.read);
    assert!(slow.read > 16 << 20, "the slow reader got {} bytes of a 16 MiB answer", slow.read);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_is_capped_per_listener_and_clients_still_get_served() {
    let server = Server::start_with(LIMITS).await;
    let pid = server.pid();
    let baseline = open_fds(pid);
    // 40 silent sockets on each listener: 160 in all, against a cap of 16 per listener.
    let mut flood = Vec::new();
    for (_, addr) in listeners(&server) {
        for _ in 0..40 {
            flood.push(TcpStream::connect(addr).await.expect("the kernel queues connections beyond the cap"));
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let during = open_fds(pid);
    assert!(
        during <= baseline + 4 * 16 + 8,
        "the server holds {during} descriptors under a flood of 160 sockets ({baseline} before; cap 16 per listener)"
    );
    // While the flood is still connected, a well-behaved client exports over both protocols and queries.
    let started = Instant::now();
    well_behaved(&server, "during-flood").await;
    assert!(started.elapsed() < Duration::from_secs(10), "served only after {:?}", started.elapsed());
    assert!(open_fds(pid) <= baseline + 4 * 16 + 8, "the cap held");
    drop(flood);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emfile_on_accept_is_survived_without_spinning() {
    // Long timeouts: the flood must keep the descriptors busy while the server is measured.
    let config = "[server]\nidle_timeout = \"30s\"\nheader_timeout = \"30s\"\n";
    let server = Server::start_limited(config, 256).await;
    let pid = server.pid();
    let baseline = open_fds(pid);
    // More sockets than descriptors left, on the gRPC port (then accept fails with EMFILE on every listener).
    let mut flood = Vec::new();
    for _ in 0..(256 - baseline + 40) {
        flood.push(TcpStream::connect(server.grpc).await.expect("the kernel queues connections"));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while open_fds(pid) < 250 {
        assert!(Instant::now() < deadline, "no EMFILE reached (fds {}); log:\n{}", open_fds(pid), server.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Out of descriptors: the accept loops back off instead of retrying in a busy loop, and say so.
    let cpu = cpu_time(pid);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let spent = cpu_time(pid) - cpu;
    assert!(spent < Duration::from_millis(500), "the server burnt {spent:?} of CPU in 1.5 s while out of descriptors");
    let log = server.log();
    assert!(log.contains("accept failed") && log.contains("Too many open files"), "EMFILE is logged; log:\n{log}");
    // The flood leaves: the server gets its descriptors back and serves new clients on every protocol.
    drop(flood);
    well_behaved(&server, "after-emfile").await;
    let query = reqwest::Client::new().get(format!("{}/healthz", server.api_url())).send().await.unwrap();
    assert!(query.status().is_success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_keepalive_drops_peers_that_do_not_answer_pings() {
    // A PING every 300 ms, answered within 1 s: the live peer's answers have a second to get through a loaded
    // test runtime, and the dead peer is dropped after ~1.3 s, well inside the 5 s asserted below.
    let config = "[server]\nidle_timeout = \"10s\"\nkeepalive_interval = \"300ms\"\nkeepalive_timeout = \"1s\"\n";
    let server = Server::start_with(config).await;
    let limit = Duration::from_millis(6000);
    for (name, addr) in [("otlp_grpc", server.grpc), ("flight", server.flight_addr)] {
        let start = Instant::now();
        let (mut live, mut live_reader) = h2_connect(addr).await;
        let (mut dead, mut dead_reader) = h2_connect(addr).await;
        let (live_result, dead_result) = tokio::join!(
            h2_until_closed(&mut live, &mut live_reader, start, limit, true),
            h2_until_closed(&mut dead, &mut dead_reader, start, limit, false),
        );
        let (kinds, closed) = live_result;
        assert_eq!(closed, None, "{name}: a peer answering PINGs stays connected ({kinds:?})");
        assert!(kinds.iter().filter(|&&k| k == PING).count() >= 3, "{name}: PINGs every 300 ms: {kinds:?}");
        let (kinds, closed) = dead_result;
        let closed = closed.unwrap_or_else(|| panic!("{name}: a peer ignoring PINGs is still connected ({kinds:?})"));
        assert!(kinds.contains(&PING), "{name}: {kinds:?}");
        assert!(closed < Duration::from_millis(5000), "{name}: dropped after {closed:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// Long by design: a receiver that redirects and one behind the redirect, both watched through one alert's life.
async fn alert_webhooks_do_not_follow_redirects() {
    use axum::Router;
    use axum::http::{StatusCode, header};
    use axum::routing::any;
    // The other host: counts whatever reaches it.
    let other_hits = Arc::new(AtomicU32::new(0));
    let other = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let other_url = format!("http://{}/stolen", other.local_addr().unwrap());
    let hits = other_hits.clone();
    let app = Router::new().fallback(any(move || {
        hits.fetch_add(1, Ordering::SeqCst);
        async { StatusCode::OK }
    }));
    tokio::spawn(async move { axum::serve(other, app).await.unwrap() });
    // The configured webhook answers 307 (which asks a client to POST the same body again) to the other host.
    let hook_hits = Arc::new(AtomicU32::new(0));
    let hook = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_url = format!("http://{}/hook", hook.local_addr().unwrap());
    let hits = hook_hits.clone();
    let app = Router::new().fallback(any(move || {
        hits.fetch_add(1, Ordering::SeqCst);
        let location = other_url.clone();
        async move { (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, location)]) }
    }));
    tokio::spawn(async move { axum::serve(hook, app).await.unwrap() });

    let config = format!(
        r#"
[[budget]]
name = "dup-daily"
kind = "duplicate_inference"
period = "day"
cap_usd = 0.5
warn_at = [0.5]
forecast = false

[alerts]
webhooks = ["{hook_url}"]
initial_backoff = "50ms"
max_backoff = "100ms"
max_attempts = 3
evaluate_interval = "200ms"
"#
    );
    let server = Server::start_with(&config).await;
    // One hedged request: $0.35 of duplicate spend, past the $0.25 warning.
    let sdk = tracer_provider(&server, Transport::HttpProtobuf, vec![KeyValue::new("service.name", "gateway")]);
    let tracer = sdk.tracer("it-connections");
    for winner in [true, false] {
        let mut attrs = vec![
            KeyValue::new("gen_ai.provider.name", "openai"),
            KeyValue::new("gen_ai.operation.name", "chat"),
            KeyValue::new("gen_ai.request.model", "gpt-4o"),
            KeyValue::new("gen_ai.usage.input_tokens", 100_000i64),
            KeyValue::new("gen_ai.usage.output_tokens", 10_000i64),
            KeyValue::new("hedge.id", "h-redirect"),
        ];
        if winner {
            attrs.push(KeyValue::new("hedge.winner", true));
        }
        drop(tracer.span_builder("chat gpt-4o").with_kind(SpanKind::Client).with_attributes(attrs).start(&tracer));
    }
    sdk.force_flush().expect("flush");
    let deadline = Instant::now() + Duration::from_secs(10);
    while hook_hits.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "the alert never reached the webhook; log:\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Time for a followed redirect (or retries) to arrive.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(other_hits.load(Ordering::SeqCst), 0, "the webhook's redirect to another host was followed");
    assert_eq!(hook_hits.load(Ordering::SeqCst), 1, "one POST: a redirect is a failed delivery, not retried at once");
    let log = server.log();
    assert!(log.contains("do not follow redirects"), "the failure says why; log:\n{log}");
    assert!(log.contains("307"), "the failure names the status; log:\n{log}");
    // Not dropped either: the event waits in the webhook's outbox (its name is the URL's host) for a later try.
    let hook = [("webhook", "127.0.0.1")];
    let s = server.scrape().await;
    assert_eq!(s.sum("tailscope_webhook_failures_total", &[hook[0], ("reason", "redirect")]), 1.0, "{}", s.text);
    assert_eq!(s.value("tailscope_webhook_outbox_events", &hook), Some(1.0), "{}", s.text);
    assert_eq!(s.sum("tailscope_webhook_deliveries_total", &hook), 0.0, "{}", s.text);
    let _ = sdk.shutdown();
}

// --- Shedding idle connections at the cap ---

/// The cap of the shedding tests, with timeouts long enough that only shedding can free a slot while they run.
const SHED_CAP: usize = 8;

fn capped(cap: usize) -> String {
    format!(
        "[server]\nidle_timeout = \"120s\"\nheader_timeout = \"30s\"\nbody_timeout = \"30s\"\nmax_connections = {cap}\n"
    )
}

/// An HTTP/1.1 keep-alive connection that completed one request (`head`, without a body) and now waits for the
/// next.
async fn keep_alive(addr: SocketAddr, head: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let mut buf = [0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.expect("an answer").unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", String::from_utf8_lossy(&buf[..n]));
    s
}

/// Whether the server closed `s` within `limit` (reading and discarding what it sends).
async fn closes_within(s: &mut TcpStream, limit: Duration) -> bool {
    closed_after(s, Instant::now(), limit).await.is_some()
}

/// `tailscope_connections_shed_total` of one listener.
async fn shed_total(server: &Server, listener: &str) -> f64 {
    server.metric(&format!("tailscope_connections_shed_total{{listener=\"{listener}\"}}")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_shed_at_the_cap_so_health_checks_queries_and_exports_answer() {
    let server = Server::start_with(&capped(SHED_CAP)).await;
    let pid = server.pid();
    // The readiness probe's connections are gone.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let baseline = open_fds(pid);
    // Every listener at its cap with idle connections, oldest first: HTTP/1.1 keep-alive connections that completed a
    // request, HTTP/2 connections past their handshake. Nothing would close them for two minutes.
    let mut http1 = Vec::new();
    let empty_export =
        "POST /v1/traces HTTP/1.1\r\nhost: x\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
    let health = "GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n";
    for (name, addr, head) in [("otlp_http", server.http, empty_export), ("api", server.api, health)] {
        let mut conns = Vec::new();
        for _ in 0..SHED_CAP {
            conns.push(keep_alive(addr, head).await);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        http1.push((name, conns));
    }
    let mut h2 = Vec::new();
    for (name, addr) in [("otlp_grpc", server.grpc), ("flight", server.flight_addr)] {
        let mut conns = Vec::new();
        for _ in 0..SHED_CAP {
            conns.push(h2_connect(addr).await);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        h2.push((name, conns));
    }
    assert!(open_fds(pid) >= baseline + 4 * SHED_CAP, "the listeners are full");

    // A health check, exports over both protocols, a query and a Flight SQL connection, each on a new connection,
    // answer at once (they used to wait in the accept queue for the 120 s idle timeout).
    let started = Instant::now();
    let health = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let r = health.get(format!("{}/healthz", server.api_url())).send().await.expect("the health check is answered");
    assert!(r.status().is_success());
    drop(health);
    well_behaved(&server, "at-the-cap").await;
    let (_flight, _) = tokio::time::timeout(Duration::from_secs(5), h2_connect(server.flight_addr))
        .await
        .expect("a Flight SQL client gets the server's SETTINGS");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(8), "served only after {took:?}");

    // The longest-idle connections were closed, HTTP/2 ones with a GOAWAY; the newest are still open.
    for (name, conns) in &mut http1 {
        assert!(closes_within(&mut conns[0], Duration::from_secs(2)).await, "{name}: the longest-idle was not shed");
        let newest = conns.last_mut().unwrap();
        assert!(!closes_within(newest, Duration::from_millis(300)).await, "{name}: the newest idle one was shed");
    }
    for (name, conns) in &mut h2 {
        let (s, r) = &mut conns[0];
        let (kinds, closed) = h2_until_closed(s, r, Instant::now(), Duration::from_secs(3), true).await;
        assert!(closed.is_some(), "{name}: the longest-idle HTTP/2 connection was not shed ({kinds:?})");
        assert!(kinds.contains(&GOAWAY), "{name}: a shed HTTP/2 connection gets a GOAWAY, got {kinds:?}");
        let (s, r) = conns.last_mut().unwrap();
        let (kinds, closed) = h2_until_closed(s, r, Instant::now(), Duration::from_millis(300), true).await;
        assert!(closed.is_none() && !kinds.contains(&GOAWAY), "{name}: the newest idle one was shed ({kinds:?})");
    }
    // Counted per listener, and the caps held (one descriptor past a cap while a shed connection closes).
    for (name, _) in listeners(&server) {
        assert!(shed_total(&server, name).await >= 1.0, "{name}: no shed connection counted");
    }
    assert!(open_fds(pid) <= baseline + 4 * (SHED_CAP + 1) + 8, "{} descriptors", open_fds(pid));
}

/// An HTTP/1.1 request to the API whose body is half sent: in progress until the rest comes.
async fn api_request_in_progress(addr: SocketAddr) -> (TcpStream, &'static [u8]) {
    const BODY: &[u8] = br#"{"sql": "SELECT 1 AS one"}"#;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /api/v1/query HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        BODY.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&BODY[..5]).await.unwrap();
    (s, &BODY[5..])
}

/// An OTLP/gRPC export on a new HTTP/2 connection whose message is half sent: in progress until the rest comes.
async fn grpc_export_in_progress(addr: SocketAddr, id: u8) -> (TcpStream, FrameReader, Vec<u8>) {
    let (mut s, reader) = h2_connect(addr).await;
    let message = one_span("busy-grpc", id);
    let mut body = vec![0u8];
    body.extend_from_slice(&(message.len() as u32).to_be_bytes());
    body.extend_from_slice(&message);
    let headers = hpack(&[
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/opentelemetry.proto.collector.trace.v1.TraceService/Export"),
        (":authority", "127.0.0.1"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]);
    s.write_all(&frame(HEADERS, END_HEADERS, 1, &headers)).await.unwrap();
    let rest = body.split_off(body.len() / 2);
    s.write_all(&frame(DATA, 0, 1, &body)).await.unwrap();
    (s, reader, rest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_with_a_request_in_progress_are_not_shed() {
    const CAP: usize = 4;
    let server = Server::start_with(&capped(CAP)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Every slot of the API and of OTLP/gRPC holds a request whose body is still on its way.
    let mut api = Vec::new();
    let mut grpc = Vec::new();
    for i in 0..CAP {
        api.push(api_request_in_progress(server.api).await);
        grpc.push(grpc_export_in_progress(server.grpc, i as u8 + 1).await);
    }
    // New clients wait: no busy connection is shed for them.
    let mut waiting_api = TcpStream::connect(server.api).await.expect("the kernel queues it");
    waiting_api.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let mut waiting_grpc = TcpStream::connect(server.grpc).await.expect("the kernel queues it");
    waiting_grpc.write_all(PREFACE).await.unwrap();
    waiting_grpc.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    let mut buf = [0u8; 4096];
    let api_answer = tokio::time::timeout(Duration::from_millis(1500), waiting_api.read(&mut buf)).await;
    assert!(api_answer.is_err(), "a busy API connection was shed: the waiting client got {api_answer:?}");
    let mut waiting_reader = FrameReader::new();
    let grpc_answer = waiting_reader.next(&mut waiting_grpc, Instant::now() + Duration::from_millis(500)).await;
    assert!(grpc_answer.is_none(), "a busy gRPC connection was shed: the waiting client got {grpc_answer:?}");

    // Every request in progress completes, on the connection it started on.
    for (s, rest) in &mut api {
        s.write_all(rest).await.unwrap();
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.expect("an answer").unwrap();
        let answer = String::from_utf8_lossy(&buf[..n]);
        assert!(answer.starts_with("HTTP/1.1 200"), "a request in progress was cut: {answer:?}");
    }
    for (s, reader, rest) in &mut grpc {
        s.write_all(&frame(DATA, END_STREAM, 1, rest)).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut ended = false;
        while let Some(f) = reader.next(s, deadline).await {
            // Once its answer is produced the connection is idle and may be shed for the waiting client: its GOAWAY
            // can overtake the answer's last frames, but must let stream 1 finish (last stream id >= 1, NO_ERROR).
            let goaway_cuts = f.kind == GOAWAY
                && (u32::from_be_bytes([f.payload[0], f.payload[1], f.payload[2], f.payload[3]]) & 0x7fff_ffff < 1
                    || f.payload[4..8] != [0, 0, 0, 0]);
            assert!(!goaway_cuts && f.kind != RST_STREAM, "an export in progress was cut: {f:?}");
            if f.stream == 1 && f.kind == HEADERS && f.flags & END_STREAM != 0 {
                ended = true;
                break;
            }
        }
        assert!(ended, "an export in progress got no answer");
    }
    assert_eq!(span_count(&server, "busy-grpc").await, CAP as i64, "every export in progress was stored");
    // Now idle, they are shed for the clients that waited, which are answered.
    let n = tokio::time::timeout(Duration::from_secs(5), waiting_api.read(&mut buf)).await.expect("answered").unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", String::from_utf8_lossy(&buf[..n]));
    let settings = waiting_reader.next(&mut waiting_grpc, Instant::now() + Duration::from_secs(5)).await;
    assert!(
        settings.as_ref().is_some_and(|f| f.kind == SETTINGS),
        "the waiting gRPC client was not served: {settings:?}"
    );
    assert!(shed_total(&server, "api").await >= 1.0 && shed_total(&server, "otlp_grpc").await >= 1.0);
}
