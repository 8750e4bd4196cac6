//! How every listener (OTLP/gRPC, OTLP/HTTP, the API, Flight SQL) takes and keeps connections.
//!
//! One accept loop and one connection driver serve all four, so they share the same guarantees:
//! - **A cap per listener** (`server.max_connections`). At the cap, the listener accepts one more connection and
//!   makes room for it by closing the longest-idle connection (no request in progress, no response being
//!   written; HTTP/2 gets a GOAWAY), as nginx and Envoy do, counted in `tailscope_connections_shed_total`. So idle
//!   keep-alive connections cannot make a health check, an export or a query wait for the idle timeout. A
//!   connection with a request in progress is never shed: when every connection is busy, further clients wait in
//!   the kernel's accept queue, using no descriptor of this process, until one closes (they are not refused: a
//!   reset OTLP export waits out a retry backoff).
//! - **Accept errors are survived**: `EMFILE`/`ENFILE`/`ENOBUFS` back off (10 ms doubling to 1 s, logged once
//!   per episode) and the loop keeps serving; it never exits on them nor retries in a busy loop.
//! - **Header timeout** (`server.header_timeout`): hyper's HTTP/1 `header_read_timeout`, which runs from when the
//!   connection can take a request, so it also ends HTTP/1.1 keep-alive waits.
//! - **Idle timeout** (`server.idle_timeout`): a connection with no request in progress for that long is shut
//!   down gracefully (HTTP/2: GOAWAY). This is gRPC's `MAX_CONNECTION_IDLE`, and it also bounds a client that
//!   connects and sends nothing, or an HTTP/2 preface or frame trickled a byte at a time.
//! - **Body timeout** (`server.body_timeout`): a request body must arrive in full within that long of its headers;
//!   otherwise the request is answered 408 (HTTP) or DEADLINE_EXCEEDED (gRPC) before any handler sees the body,
//!   so nothing of it is stored or acknowledged.
//! - **Stalled readers**: a peer that accepts no byte of a response for `server.body_timeout` is dropped (a
//!   response still being written keeps its connection from counting as idle).
//! - **HTTP/2 keepalive** (`server.keepalive_interval`, `server.keepalive_timeout`) PINGs peers and drops those
//!   that do not answer; accepted sockets get TCP keepalive too.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, Version, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use prometheus_client::metrics::counter::Counter;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

use tailscope_core::config::ServerConfig;
use tokio_rustls::TlsAcceptor;

use crate::tls::ReloadingTls;

/// Boxed errors, as hyper and tower pass them.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Concurrent HTTP/2 streams per connection (hyper's default, stated here so that it is a decision).
const MAX_STREAMS_PER_CONNECTION: u32 = 200;

/// The most an HTTP/1.1 connection reads ahead into its own buffer (hyper's default is ~400 KiB, grown adaptively
/// while a large body streams in). That buffer is outside the memory budget, and an open-loop overload keeps
/// hundreds of connections mid-body at once; 64 KiB still reads a body in few syscalls.
const HTTP1_READ_BUFFER_BYTES: usize = 64 * 1024;

/// First and last delay between `accept()` attempts that fail for want of resources.
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(1));

/// How long a shed connection may take to close after its GOAWAY (an HTTP/2 peer acknowledges it with a PING
/// round trip) before it is dropped, if it is still idle; at most `server.header_timeout`.
const SHED_GRACE: Duration = Duration::from_secs(1);

/// How often a listener at its cap with a client waiting looks again for an idle connection to shed, when none
/// was idle (every connection had a request in progress) or the one chosen took a request meanwhile.
const SHED_RETRY: Duration = Duration::from_millis(50);

/// The per-connection limits of one listener, from `[server]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Close a connection with no request in progress for this long.
    pub idle_timeout: Duration,
    /// Time allowed for a request's headers.
    pub header_timeout: Duration,
    /// Time allowed for a request's body, from its headers.
    pub body_timeout: Duration,
    /// HTTP/2 PING interval (and TCP keepalive time).
    pub keepalive_interval: Duration,
    /// Time allowed for a PING's answer.
    pub keepalive_timeout: Duration,
    /// Open connections on this listener.
    pub max_connections: usize,
}

impl ConnectionLimits {
    /// The limits configured under `[server]`.
    pub fn from_config(server: &ServerConfig) -> ConnectionLimits {
        ConnectionLimits {
            idle_timeout: server.idle_timeout,
            header_timeout: server.header_timeout,
            body_timeout: server.body_timeout,
            keepalive_interval: server.keepalive_interval,
            keepalive_timeout: server.keepalive_timeout,
            max_connections: server.max_connections,
        }
    }
}

/// What a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1, and HTTP/2 with prior knowledge (told apart by the connection preface).
    Http,
    /// gRPC: HTTP/2 only.
    Grpc,
}

/// Why a request body ended early.
#[derive(Debug, Error)]
pub enum BodyError {
    /// The connection failed while the body was read.
    #[error("reading the request body: {0}")]
    Read(#[from] hyper::Error),
    /// The body did not arrive in time.
    #[error(
        "the request body did not arrive within server.body_timeout ({limit:?}); send it faster or raise the limit"
    )]
    TimedOut {
        /// `server.body_timeout`.
        limit: Duration,
    },
}

/// A request body that must arrive in full before a deadline set when its headers arrived.
///
/// A total deadline rather than an inactivity timeout: a body trickled a byte at a time cannot hold a connection
/// (and a slot) for longer than `server.body_timeout`.
#[derive(Debug)]
pub struct TimedBody {
    inner: Incoming,
    deadline: Instant,
    limit: Duration,
    /// Created at the first wait: bodies that are already complete cost no timer.
    sleep: Option<Pin<Box<Sleep>>>,
    expired: Arc<AtomicBool>,
}

impl Body for TimedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        // Data that has arrived is taken even past the deadline: only waiting is cut.
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(BodyError::Read)));
        }
        let deadline = this.deadline;
        let sleep = this.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.as_mut().poll(cx).is_ready() {
            this.expired.store(true, Ordering::Relaxed);
            return Poll::Ready(Some(Err(BodyError::TimedOut { limit: this.limit })));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Counts a request as in progress on its connection until its response body is done (or dropped).
struct InFlight(Arc<ConnState>);

impl InFlight {
    fn start(conn: &Arc<ConnState>) -> InFlight {
        conn.busy.send_modify(|n| *n += 1);
        conn.touch();
        InFlight(conn.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.busy.send_modify(|n| *n = n.saturating_sub(1));
        self.0.touch();
    }
}

/// What the accept loop knows of one open connection, to choose the longest-idle one at the cap.
struct ConnState {
    /// Requests in progress (from their headers until their response body is sent or dropped).
    busy: watch::Sender<usize>,
    /// Whether a response is waiting for the peer to take its bytes (see [`StallIo`]).
    writing: Arc<AtomicBool>,
    /// When a request last started or ended (or the connection was accepted), in ms since the listener started.
    last_active_ms: AtomicU64,
    /// The listener's clock.
    epoch: Instant,
    /// Chosen to be shed; cleared if it turned out busy.
    shedding: AtomicBool,
    /// Closing already (idle, shed or the server stopping): no candidate for shedding.
    closing: AtomicBool,
    /// Wakes the connection's task to shed it.
    shed: Notify,
}

impl ConnState {
    fn touch(&self) {
        self.last_active_ms.store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// No request in progress and no response waiting to be written.
    fn is_idle(&self) -> bool {
        *self.busy.borrow() == 0 && !self.writing.load(Ordering::Relaxed)
    }
}

/// The open connections of one listener.
struct Registry {
    conns: Mutex<HashMap<u64, Arc<ConnState>>>,
    next_id: AtomicU64,
    /// Connections chosen to be shed that have not closed yet (or turned out busy).
    pending_sheds: AtomicUsize,
    epoch: Instant,
    /// `tailscope_connections_shed_total{listener}`.
    shed_total: Counter,
    /// `tailscope_tls_handshake_failures_total{listener}`.
    tls_failures: Counter,
}

/// The counters of one listener on `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct ListenerCounters {
    /// Connections shed at the cap (`tailscope_connections_shed_total{listener}`).
    pub shed: Counter,
    /// TLS handshakes that failed or did not finish within `server.header_timeout`
    /// (`tailscope_tls_handshake_failures_total{listener}`).
    pub tls_handshake_failures: Counter,
}

impl Registry {
    fn new(counters: ListenerCounters) -> Registry {
        let ListenerCounters { shed: shed_total, tls_handshake_failures: tls_failures } = counters;
        Registry {
            conns: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            pending_sheds: AtomicUsize::new(0),
            epoch: Instant::now(),
            shed_total,
            tls_failures,
        }
    }

    /// Registers a new connection; it is removed when the returned guard drops.
    fn register(self: &Arc<Registry>, writing: Arc<AtomicBool>) -> Registered {
        let state = Arc::new(ConnState {
            busy: watch::channel(0).0,
            writing,
            last_active_ms: AtomicU64::new(0),
            epoch: self.epoch,
            shedding: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            shed: Notify::new(),
        });
        state.touch();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.conns.lock().unwrap_or_else(|e| e.into_inner()).insert(id, state.clone());
        Registered { registry: self.clone(), id, state }
    }

    /// Asks the longest-idle connection not already being shed to close; false if every connection is busy.
    fn shed_longest_idle(&self) -> bool {
        let conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        let chosen = conns
            .values()
            .filter(|c| !c.shedding.load(Ordering::Relaxed) && !c.closing.load(Ordering::Relaxed) && c.is_idle())
            .min_by_key(|c| c.last_active_ms.load(Ordering::Relaxed));
        match chosen {
            Some(c) => {
                c.shedding.store(true, Ordering::Relaxed);
                self.pending_sheds.fetch_add(1, Ordering::Relaxed);
                c.shed.notify_one();
                true
            }
            None => false,
        }
    }

    /// A connection chosen to be shed is done with it (closed, or busy again).
    fn shed_settled(&self, state: &ConnState) {
        if state.shedding.swap(false, Ordering::Relaxed) {
            self.pending_sheds.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// A connection's place in its listener's [`Registry`], given up when dropped.
struct Registered {
    registry: Arc<Registry>,
    id: u64,
    state: Arc<ConnState>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.registry.shed_settled(&self.state);
        self.registry.conns.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.id);
    }
}

/// A response body that keeps its request counted as in progress while it is sent.
pub struct ConnBody<B> {
    body: Either<B, Full<Bytes>>,
    _in_flight: InFlight,
}

impl<B> Body for ConnBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The hyper service of one connection: counts requests in progress (for the idle timeout) and puts the body
/// deadline on each request.
struct ConnService<S> {
    inner: S,
    conn: Arc<ConnState>,
    body_timeout: Duration,
}

impl<S, B> hyper::service::Service<Request<Incoming>> for ConnService<S>
where
    S: tower::Service<Request<TimedBody>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<ConnBody<B>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let in_flight = InFlight::start(&self.conn);
        let expired = Arc::new(AtomicBool::new(false));
        let limit = self.body_timeout;
        let grpc = is_grpc(&request);
        let version = request.version();
        let request = request.map(|inner| TimedBody {
            inner,
            deadline: Instant::now() + limit,
            limit,
            sleep: None,
            expired: expired.clone(),
        });
        let service = self.inner.clone();
        Box::pin(async move {
            let Ok(response) = service.oneshot(request).await;
            // The handler saw a body error and answered something generic (400, INTERNAL): say what happened.
            // A handler that said so itself (OTLP/HTTP answers a 408 with an OTLP Status body) is left alone.
            let said_so = !grpc && response.status() == StatusCode::REQUEST_TIMEOUT;
            let response = if expired.load(Ordering::Relaxed) && !said_so {
                body_timeout_response(grpc, version, limit)
            } else {
                response.map(Either::Left)
            };
            Ok(response.map(|body| ConnBody { body, _in_flight: in_flight }))
        })
    }
}

fn is_grpc<B>(request: &Request<B>) -> bool {
    request.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

fn body_timeout_response<B>(grpc: bool, version: Version, limit: Duration) -> Response<Either<B, Full<Bytes>>> {
    let message = BodyError::TimedOut { limit }.to_string();
    if grpc {
        // Retryable for OTLP clients; nothing of the request was stored.
        return tonic::Status::deadline_exceeded(message).into_http::<Full<Bytes>>().map(Either::Right);
    }
    let mut response = Response::new(Either::Right(Full::from(format!("{message}\n"))));
    *response.status_mut() = StatusCode::REQUEST_TIMEOUT;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    // The rest of the body may still be on its way: the connection cannot carry another request.
    if version <= Version::HTTP_11 {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

fn builder(protocol: Protocol, limits: &ConnectionLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    if protocol == Protocol::Grpc {
        builder = builder.http2_only();
    }
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true)
        .max_buf_size(HTTP1_READ_BUFFER_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.keepalive_interval)
        .keep_alive_timeout(limits.keepalive_timeout)
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION);
    builder
}

/// A bound listener: its name in logs and metrics, what it speaks, and its TLS (None: plaintext).
pub struct Listening {
    pub name: &'static str,
    pub listener: TcpListener,
    pub protocol: Protocol,
    pub tls: Option<Arc<ReloadingTls>>,
}

/// Serves `service` on `listener` until `shutdown` completes, then lets open connections finish their requests.
///
/// `name` names the listener in logs; `shed` counts idle connections closed at the cap. Never returns early: accept
/// errors are logged and retried with backoff.
pub async fn serve<S, B>(
    listening: Listening,
    service: S,
    limits: ConnectionLimits,
    counters: ListenerCounters,
    shutdown: impl Future<Output = ()>,
) where
    S: tower::Service<Request<TimedBody>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<BoxError>,
{
    let Listening { name, listener, protocol, tls } = listening;
    let builder = Arc::new(builder(protocol, &limits));
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let registry = Arc::new(Registry::new(counters));
    let (stop, stopped) = watch::channel(false);
    let mut shutdown = pin!(shutdown);
    let mut failures = AcceptFailures::new(name);
    let mut at_cap_logged = false;
    'accept: loop {
        // At the cap, a slot is found once a client is waiting for one: accepting first means an idle connection is
        // shed only to admit a real one, at the cost of one descriptor past the cap while it closes.
        let permit = slots.clone().try_acquire_owned().ok();
        if permit.is_some() && slots.available_permits() > limits.max_connections / 2 {
            at_cap_logged = false;
        }
        let (stream, peer) = loop {
            tokio::select! {
                _ = &mut shutdown => break 'accept,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => {
                        failures.recovered();
                        break accepted;
                    }
                    Err(e) => {
                        if failures.wait(e, &mut shutdown).await {
                            break 'accept;
                        }
                    }
                },
            }
        };
        let permit = match permit {
            Some(permit) => permit,
            None => {
                if !at_cap_logged {
                    tracing::warn!(
                        listener = name,
                        max_connections = limits.max_connections,
                        "connection cap reached; idle connections are closed to admit new ones, and when every \
                         connection is busy new ones wait until one closes (server.max_connections)"
                    );
                    at_cap_logged = true;
                }
                match make_room(&slots, &registry, &mut shutdown).await {
                    Some(permit) => permit,
                    None => break 'accept,
                }
            }
        };
        tracing::trace!(listener = name, %peer, "connection accepted");
        configure_socket(&stream, &limits);
        let task = Connection {
            tls: tls.as_ref().map(|tls| tls.acceptor()),
            permit,
            service: service.clone(),
            builder: builder.clone(),
            stop: stopped.clone(),
            limits,
            registry: registry.clone(),
        };
        tokio::spawn(task.run(stream));
    }
    // Stop listening at once (the kernel stops completing handshakes), then let connections finish.
    drop(listener);
    let _ = stop.send(true);
    drop(stopped);
    stop.closed().await;
}

/// Waits for a free slot at the cap, shedding the longest-idle connection (one at a time) to free one. None if
/// `shutdown` completed meanwhile (it must not be polled again).
async fn make_room(
    slots: &Arc<Semaphore>,
    registry: &Registry,
    shutdown: &mut Pin<&mut impl Future<Output = ()>>,
) -> Option<OwnedSemaphorePermit> {
    loop {
        if let Ok(permit) = slots.clone().try_acquire_owned() {
            return Some(permit);
        }
        // One shed at a time: each admits one connection, so a burst of clients does not empty the listener of
        // idle connections that are about to be reused.
        if registry.pending_sheds.load(Ordering::Relaxed) == 0 {
            registry.shed_longest_idle();
        }
        tokio::select! {
            _ = shutdown.as_mut() => return None,
            permit = slots.clone().acquire_owned() => return permit.ok(),
            _ = tokio::time::sleep(SHED_RETRY) => {}
        }
    }
}

/// `accept()` failures of one listener: the backoff, and logging once per episode rather than per attempt.
struct AcceptFailures {
    name: &'static str,
    count: u64,
    delay: Duration,
}

impl AcceptFailures {
    fn new(name: &'static str) -> AcceptFailures {
        AcceptFailures { name, count: 0, delay: ACCEPT_BACKOFF.0 }
    }

    /// Waits before the next attempt; true if `shutdown` completed meanwhile (it must not be polled again).
    async fn wait(&mut self, e: std::io::Error, shutdown: &mut Pin<&mut impl Future<Output = ()>>) -> bool {
        use std::io::ErrorKind;
        // The peer gave up between the handshake and accept(): nothing is wrong here, try the next one.
        if matches!(e.kind(), ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset | ErrorKind::ConnectionRefused)
        {
            return false;
        }
        self.count += 1;
        if self.count == 1 {
            tracing::error!(
                listener = self.name,
                error = %e,
                "accept failed; retrying with backoff while serving open connections (too many open files: raise \
                 `ulimit -n` or lower server.max_connections)"
            );
        }
        let stopped = tokio::select! {
            _ = tokio::time::sleep(self.delay) => false,
            _ = shutdown.as_mut() => true,
        };
        self.delay = (self.delay * 2).min(ACCEPT_BACKOFF.1);
        stopped
    }

    fn recovered(&mut self) {
        if self.count > 0 {
            tracing::warn!(listener = self.name, failed_attempts = self.count, "accepting connections again");
        }
        self.count = 0;
        self.delay = ACCEPT_BACKOFF.0;
    }
}

fn configure_socket(stream: &TcpStream, limits: &ConnectionLimits) {
    // No Nagle delay on small responses: an exporter waits for each answer before sending its next batch.
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!("cannot set TCP_NODELAY: {e}");
    }
    // Finds peers that vanished (power loss, a dropped NAT entry) on connections waiting for a long response.
    let keepalive =
        socket2::TcpKeepalive::new().with_time(limits.keepalive_interval).with_interval(limits.keepalive_interval);
    if let Err(e) = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive) {
        tracing::debug!("cannot set TCP keepalive: {e}");
    }
}

/// One accepted connection, served until it closes, idles out or the server stops.
struct Connection<S> {
    /// The TLS config current when the connection was accepted; None for plaintext.
    tls: Option<TlsAcceptor>,
    /// The listener's slot, given back when the connection is dropped.
    permit: OwnedSemaphorePermit,
    service: S,
    builder: Arc<auto::Builder<TokioExecutor>>,
    stop: watch::Receiver<bool>,
    limits: ConnectionLimits,
    registry: Arc<Registry>,
}

impl<S, B> Connection<S>
where
    S: tower::Service<Request<TimedBody>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<BoxError>,
{
    async fn run(self, stream: TcpStream) {
        let io = StallIo::new(stream, self.limits.body_timeout);
        let writing = io.writing.clone();
        // Registered from the start: a connection still in its TLS handshake has no request in progress, so at the
        // cap it is as sheddable as an idle one. Otherwise peers that connect and never finish a handshake would
        // hold every slot until `header_timeout` and lock real clients out.
        let registered = self.registry.register(writing.clone());
        let Some(acceptor) = self.tls.clone() else {
            return self.drive(io, registered, writing).await;
        };
        let mut stop = self.stop.clone();
        // The handshake gets the header timeout: a peer that stalls it holds a slot no longer than a plaintext peer
        // that sends no request line.
        let handshake = tokio::time::timeout(self.limits.header_timeout, acceptor.accept(io));
        let stopping = async move {
            let _ = stop.wait_for(|stop| *stop).await;
        };
        let tls = tokio::select! {
            done = handshake => match done {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    self.registry.tls_failures.inc();
                    return tracing::debug!("TLS handshake failed: {e}");
                }
                Err(_) => {
                    self.registry.tls_failures.inc();
                    return tracing::debug!("TLS handshake not completed within server.header_timeout; dropped");
                }
            },
            _ = registered.state.shed.notified() => {
                self.registry.shed_total.inc();
                return tracing::debug!("connection shed at the cap during its TLS handshake");
            }
            _ = stopping => return,
        };
        self.drive(tls, registered, writing).await
    }

    /// Serves HTTP on `io` (plaintext or TLS) until it closes, idles out, is shed or the server stops.
    async fn drive<I>(self, io: I, registered: Registered, writing: Arc<AtomicBool>)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Connection { tls: _, permit, service, builder, mut stop, limits, registry } = self;
        let state = registered.state.clone();
        let mut busy_rx = state.busy.subscribe();
        let service = ConnService { inner: service, conn: state.clone(), body_timeout: limits.body_timeout };
        let mut conn = pin!(builder.serve_connection(TokioIo::new(io), service));
        let why = loop {
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!("connection ended: {e}");
                    }
                    drop(registered);
                    drop(permit);
                    return;
                }
                _ = idle_for(&mut busy_rx, &writing, limits.idle_timeout) => break "idle",
                _ = stop.wait_for(|stop| *stop) => break "server stopping",
                _ = state.shed.notified() => {
                    // Chosen as the longest idle at the cap; a request may have started since.
                    if state.is_idle() {
                        break "shed";
                    }
                    registry.shed_settled(&state);
                }
            }
        };
        tracing::debug!(reason = why, "closing connection");
        state.closing.store(true, Ordering::Relaxed);
        if why != "shed" {
            // Chosen to be shed while it idled out or the server stopped: it is closing anyway, and its slot comes
            // back when it has closed. Another may be chosen meanwhile.
            registry.shed_settled(&state);
        }
        if why == "shed" {
            registry.shed_total.inc();
            // HTTP/1: closes at once (no request in progress); HTTP/2: GOAWAY, then closes once the peer has seen
            // it. A request that started meanwhile is finished first (the GOAWAY admits no further one); an idle
            // peer that has not closed within the grace is dropped.
            conn.as_mut().graceful_shutdown();
            if tokio::time::timeout(SHED_GRACE.min(limits.header_timeout), conn.as_mut()).await.is_err() {
                tokio::select! {
                    _ = conn.as_mut() => {}
                    _ = idle_for(&mut busy_rx, &writing, SHED_RETRY) => {
                        tracing::debug!("shed connection did not close within its grace; dropped");
                    }
                }
            }
            drop(registered);
            drop(permit);
            return;
        }
        // HTTP/1: closes after the request in progress, if any; HTTP/2: GOAWAY, then closes when streams finish.
        // A peer that does not go along (never finishes its handshake, never answers the GOAWAY's PING) is
        // dropped after `header_timeout`.
        conn.as_mut().graceful_shutdown();
        if tokio::time::timeout(limits.header_timeout, conn.as_mut()).await.is_err() {
            tracing::debug!(reason = why, "connection did not close gracefully in time; dropped");
        }
        drop(registered);
        drop(permit);
    }
}

/// Completes once no request has been in progress for `idle` and no response is waiting to be written (a large
/// response can outlive its body: hyper holds the last bytes until the socket takes them).
async fn idle_for(busy: &mut watch::Receiver<usize>, writing: &AtomicBool, idle: Duration) {
    loop {
        if busy.wait_for(|n| *n == 0).await.is_err() {
            return std::future::pending().await;
        }
        // `wait_for` marked the value seen: a request starting during the wait wakes `changed`.
        match tokio::time::timeout(idle, busy.changed()).await {
            Err(_) if !writing.load(Ordering::Relaxed) => return,
            Err(_) | Ok(Ok(())) => continue,
            Ok(Err(_)) => return std::future::pending().await,
        }
    }
}

/// A connection's socket that fails writes the peer has not taken for `limit`: a client that stops reading
/// cannot hold its connection, its slot and the response's memory for ever. Progress of any size resets the
/// clock, so slow readers are served.
struct StallIo {
    inner: TcpStream,
    limit: Duration,
    /// Running while a write waits for the peer.
    stall: Option<Pin<Box<Sleep>>>,
    /// Whether a write is waiting for the peer (read by the idle timeout).
    writing: Arc<AtomicBool>,
}

impl StallIo {
    fn new(inner: TcpStream, limit: Duration) -> StallIo {
        StallIo { inner, limit, stall: None, writing: Arc::new(AtomicBool::new(false)) }
    }

    /// What a write that returned `poll` gives back: progress resets the clock, waiting runs it.
    fn check<T>(&mut self, poll: Poll<std::io::Result<T>>, cx: &mut Context<'_>) -> Poll<std::io::Result<T>> {
        if poll.is_ready() {
            self.stall = None;
            self.writing.store(false, Ordering::Relaxed);
            return poll;
        }
        self.writing.store(true, Ordering::Relaxed);
        let limit = self.limit;
        let stall = self.stall.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        if stall.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the peer took no data for server.body_timeout ({limit:?})"),
            )));
        }
        Poll::Pending
    }
}

impl AsyncRead for StallIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for StallIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.check(poll, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.check(poll, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_flush(cx);
        this.check(poll, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
