//! API keys on every listener: one tower layer in front of each listener's service, so a refused request is
//! answered before any handler reads its body (nothing of it is stored).
//!
//! A key is sent as `Authorization: Bearer <key>` (what `OTEL_EXPORTER_OTLP_HEADERS="Authorization=Bearer ..."`
//! sets, on gRPC metadata and HTTP headers alike). Flight SQL clients may instead send it as the password of the
//! handshake's `Basic` credentials; the handshake answers with the bearer header they send on later calls.
//! Keys are kept as SHA-256 hashes; a presented key is hashed and compared with every configured hash in constant
//! time. Keys are high-entropy random strings, so a fast hash is the right one (a slow password hash would only
//! make every request slower).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{Either, Full};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use thiserror::Error;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tailscope_core::config::{AuthConfig, KEY_HASH_PREFIX, Listener, Scope};
use tailscope_core::projects::{IngestProject, PROJECT_HEADER, Project, Visibility};

use crate::telemetry::AuthRefusalLabel;

/// Key files larger than this are refused: a key is tens of bytes.
const MAX_KEY_FILE_BYTES: u64 = 4096;

/// The Flight handshake's gRPC path.
const FLIGHT_HANDSHAKE: &str = "/arrow.flight.protocol.FlightService/Handshake";

/// Why the configured keys cannot be loaded.
#[derive(Debug, Error)]
pub enum KeyError {
    #[error("auth key {name:?}: environment variable {var} is not set (or not UTF-8)")]
    Env { name: String, var: String },
    #[error("auth key {name:?}: cannot read key file {path}: {reason}")]
    File { name: String, path: std::path::PathBuf, reason: String },
    #[error(
        "auth key {name:?}: the key read from {source_name} is shorter than {MIN_KEY_CHARS} characters; use \
         `tailscope keys new` (256 random bits)"
    )]
    Weak { name: String, source_name: String },
    #[error("auth keys {first:?} and {second:?} are the same key; give each client its own")]
    Duplicate { first: String, second: String },
}

/// Clear keys shorter than this are refused: a guessable key on a public listener is no key.
const MIN_KEY_CHARS: usize = 20;

/// One configured key.
struct Key {
    name: String,
    hash: [u8; 32],
    scopes: Vec<Scope>,
    /// Its projects, never empty (`default` when the config names none).
    projects: Vec<Project>,
}

impl Key {
    fn allows(&self, needed: Scope) -> bool {
        self.scopes.iter().any(|s| *s == needed || *s == Scope::Admin)
    }

    fn is_admin(&self) -> bool {
        self.scopes.contains(&Scope::Admin)
    }

    /// What the key's queries see: every project for an admin key, its own projects otherwise.
    fn visibility(&self) -> Visibility {
        if self.is_admin() { Visibility::All } else { Visibility::only(self.projects.iter().cloned()) }
    }

    /// The project an ingest request with this key writes to: the one `asked` names (`x-tailscope-project`) if it
    /// is one of the key's (any project for an admin key), else the key's first project.
    fn ingest_project(&self, asked: Option<Project>) -> Result<Project, Refusal> {
        match asked {
            None => Ok(self.projects.first().cloned().unwrap_or_default()),
            Some(p) if self.is_admin() || self.projects.contains(&p) => Ok(p),
            Some(p) => Err(Refusal::Project { key: self.name.clone(), project: p.to_string() }),
        }
    }
}

/// The configured keys. Empty: authentication is off.
pub struct ApiKeys {
    keys: Vec<Key>,
    metrics_open: bool,
}

/// A new random key, `tsk_` and 43 base64url characters (256 bits).
pub fn new_key() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("tsk_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// The `hash` config value of `key`: `sha256:<hex>`.
pub fn key_hash(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    let mut hex = String::with_capacity(KEY_HASH_PREFIX.len() + 64);
    hex.push_str(KEY_HASH_PREFIX);
    for b in digest {
        hex.push_str(&format!("{b:02x}"));
    }
    hex
}

fn parse_hash(text: &str) -> Option<[u8; 32]> {
    let hex = text.strip_prefix(KEY_HASH_PREFIX)?;
    let mut out = [0u8; 32];
    if hex.len() != 64 {
        return None;
    }
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl ApiKeys {
    /// Reads the keys of `[auth]`: hashes as they are, clear keys from their variables and files (hashed here).
    pub fn load(config: &AuthConfig) -> Result<ApiKeys, KeyError> {
        let mut keys = Vec::with_capacity(config.keys.len());
        for key in &config.keys {
            let name = key.name.clone();
            let hash = if let Some(hash) = &key.hash {
                // Validated with the config.
                parse_hash(hash).unwrap_or_default()
            } else if let Some(var) = &key.key_env {
                let clear = std::env::var(var).map_err(|_| KeyError::Env { name: name.clone(), var: var.clone() })?;
                hash_clear(&name, clear.trim(), &format!("${var}"))?
            } else if let Some(path) = &key.key_file {
                let file_error = |reason: String| KeyError::File { name: name.clone(), path: path.clone(), reason };
                let clear = read_key_file(path).map_err(file_error)?;
                hash_clear(&name, clear.trim(), &path.display().to_string())?
            } else {
                continue;
            };
            // One key under two names would get the scopes of whichever is checked last.
            if let Some(other) = keys.iter().find(|k: &&Key| k.hash == hash) {
                return Err(KeyError::Duplicate { first: other.name.clone(), second: name });
            }
            // Validated with the config.
            let mut projects: Vec<Project> = key.projects.iter().filter_map(|p| Project::parse(p).ok()).collect();
            if projects.is_empty() {
                projects.push(Project::default_project());
            }
            keys.push(Key { name, hash, scopes: key.scopes.clone(), projects });
        }
        Ok(ApiKeys { keys, metrics_open: config.metrics_open })
    }

    /// Whether requests must carry a key.
    pub fn enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The key `presented` is, if any. Compares with every key, in constant time each, whatever matches.
    fn find(&self, presented: &str) -> Option<&Key> {
        let hash: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = None;
        for key in &self.keys {
            if bool::from(key.hash.ct_eq(&hash)) {
                found = Some(key);
            }
        }
        found
    }

    /// The scope a request needs on `listener`, or None when it is open to all.
    fn needed(&self, listener: Listener, path: &str) -> Option<Scope> {
        match listener {
            Listener::OtlpGrpc | Listener::OtlpHttp => Some(Scope::Ingest),
            Listener::Flight => Some(Scope::Query),
            Listener::Api => match path {
                // Probes (load balancers, Kubernetes) carry no credentials.
                "/healthz" | "/readyz" => None,
                // The web UI's page and assets hold no data; the page asks for a key when the API refuses it.
                p if tailscope_core::dashboard::is_web_ui_path(p) => None,
                "/metrics" if self.metrics_open => None,
                "/metrics" => Some(Scope::Admin),
                // A report moves the fleet's budgets: only a key that may administer the coordinator sends one.
                crate::cost::fleet::REPORT_PATH => Some(Scope::Admin),
                _ => Some(Scope::Query),
            },
        }
    }

    /// What a request that passed [`Self::check`] with `key` may reach: the projects it sees, and on the OTLP
    /// listeners the project its rows go to (chosen with `x-tailscope-project`; without keys any project may be
    /// named, and `default` is the rest).
    fn access(&self, listener: Listener, key: Option<&Key>, headers: &HeaderMap) -> Result<Access, Refusal> {
        let visibility = key.map_or(Visibility::All, Key::visibility);
        let ingest = match listener {
            Listener::OtlpGrpc | Listener::OtlpHttp => {
                let asked = match headers.get(PROJECT_HEADER) {
                    None => None,
                    Some(value) => Some(Project::parse_bytes(value.as_bytes()).map_err(Refusal::BadProject)?),
                };
                let project = match key {
                    Some(key) => key.ingest_project(asked)?,
                    None => asked.unwrap_or_default(),
                };
                Some(IngestProject(project))
            }
            Listener::Api | Listener::Flight => None,
        };
        Ok(Access { visibility, ingest })
    }

    /// Checks a request's credentials: Ok with the key it carries (None when none was needed), or why not.
    fn check(&self, listener: Listener, path: &str, headers: &HeaderMap) -> Result<Option<&Key>, Refusal> {
        if !self.enabled() {
            return Ok(None);
        }
        let Some(needed) = self.needed(listener, path) else { return Ok(None) };
        let presented = match credentials(headers, listener == Listener::Flight && path == FLIGHT_HANDSHAKE) {
            Credentials::None => return Err(Refusal::Missing),
            Credentials::Malformed => return Err(Refusal::Malformed),
            Credentials::Key(key) => key,
        };
        let key = self.find(&presented).ok_or(Refusal::Unknown)?;
        if !key.allows(needed) {
            return Err(Refusal::Forbidden { key: key.name.clone(), needed });
        }
        Ok(Some(key))
    }
}

fn read_key_file(path: &std::path::Path) -> Result<String, String> {
    use std::io::Read;
    // Only regular files: opening a FIFO would block start-up until something writes to it.
    if !std::fs::metadata(path).map_err(|e| e.to_string())?.is_file() {
        return Err("not a regular file".into());
    }
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut text = String::new();
    file.take(MAX_KEY_FILE_BYTES + 1).read_to_string(&mut text).map_err(|e| e.to_string())?;
    if text.len() as u64 > MAX_KEY_FILE_BYTES {
        return Err(format!("larger than {MAX_KEY_FILE_BYTES} bytes; a key file holds one key"));
    }
    Ok(text)
}

fn hash_clear(name: &str, clear: &str, source_name: &str) -> Result<[u8; 32], KeyError> {
    if clear.chars().count() < MIN_KEY_CHARS {
        return Err(KeyError::Weak { name: name.to_string(), source_name: source_name.to_string() });
    }
    Ok(Sha256::digest(clear.as_bytes()).into())
}

enum Credentials {
    None,
    Malformed,
    Key(String),
}

/// Base64 as `Basic` credentials come: the standard alphabet, with or without padding.
const BASIC_BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// The key a request carries: `Authorization: Bearer <key>`, or on the Flight handshake `Basic` credentials
/// whose password is the key (the user name is not used).
fn credentials(headers: &HeaderMap, basic_allowed: bool) -> Credentials {
    let Some(value) = headers.get(header::AUTHORIZATION) else { return Credentials::None };
    let Ok(value) = value.to_str() else { return Credentials::Malformed };
    let (scheme, rest) = value.trim().split_once(' ').unwrap_or((value, ""));
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") && !rest.is_empty() {
        return Credentials::Key(rest.to_string());
    }
    if basic_allowed && scheme.eq_ignore_ascii_case("basic") {
        // Padded or not: ADBC's Go Flight SQL driver (`AuthenticateBasicToken`) sends base64 without padding.
        let decoded = BASIC_BASE64.decode(rest).ok();
        let text = decoded.and_then(|d| String::from_utf8(d).ok());
        if let Some((_, password)) = text.as_deref().and_then(|t| t.split_once(':'))
            && !password.is_empty()
        {
            return Credentials::Key(password.to_string());
        }
    }
    Credentials::Malformed
}

/// What an accepted request may reach, from its key.
struct Access {
    visibility: Visibility,
    ingest: Option<IngestProject>,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq)]
enum Refusal {
    Missing,
    Malformed,
    Unknown,
    Forbidden {
        key: String,
        needed: Scope,
    },
    /// `x-tailscope-project` names a project the key does not belong to.
    Project {
        key: String,
        project: String,
    },
    /// `x-tailscope-project` is no project name.
    BadProject(String),
}

impl Refusal {
    /// What went wrong and what to send instead, in the terms of `listener`'s clients.
    fn message(&self, listener: Listener) -> String {
        match self {
            Refusal::Missing => match listener {
                Listener::OtlpGrpc | Listener::OtlpHttp => "this endpoint needs an API key: send `Authorization: \
                     Bearer <key>` (OTLP exporters: OTEL_EXPORTER_OTLP_HEADERS=\"Authorization=Bearer <key>\")"
                    .into(),
                Listener::Flight => "Flight SQL needs an API key: give it as the handshake's password (any user \
                     name; ADBC username/password, JDBC user/password) or send the header `authorization: Bearer \
                     <key>` on every call"
                    .into(),
                Listener::Api => "this endpoint needs an API key: send `Authorization: Bearer <key>` (curl -H; \
                     tailscope query/tui --token or TAILSCOPE_TOKEN)"
                    .into(),
            },
            Refusal::Malformed => "the Authorization header is not `Bearer <key>`".into(),
            Refusal::Unknown => "the API key is not valid (unknown or revoked)".into(),
            Refusal::Forbidden { key, needed } => {
                format!("API key {key:?} lacks the {} scope this endpoint needs", needed.name())
            }
            Refusal::Project { key, project } => format!(
                "API key {key:?} does not belong to project {project:?} ({PROJECT_HEADER}); send one of the key's \
                 projects, or no {PROJECT_HEADER} for its first"
            ),
            Refusal::BadProject(reason) => format!("{PROJECT_HEADER}: {reason}"),
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            Refusal::Missing => "missing",
            Refusal::Malformed => "malformed",
            Refusal::Unknown => "unknown",
            Refusal::Forbidden { .. } => "forbidden",
            Refusal::Project { .. } | Refusal::BadProject(_) => "project",
        }
    }

    fn is_forbidden(&self) -> bool {
        matches!(self, Refusal::Forbidden { .. } | Refusal::Project { .. } | Refusal::BadProject(_))
    }
}

/// The refusal in the listener's protocol: a gRPC status (UNAUTHENTICATED / PERMISSION_DENIED) on gRPC listeners,
/// 401 / 403 otherwise, OTLP/HTTP's with a `google.rpc.Status` body in the request's encoding.
fn refusal_response(listener: Listener, headers: &HeaderMap, refusal: &Refusal) -> Response<Full<Bytes>> {
    let message = refusal.message(listener);
    match listener {
        Listener::OtlpGrpc | Listener::Flight => {
            let status = if refusal.is_forbidden() {
                tonic::Status::permission_denied(message)
            } else {
                tonic::Status::unauthenticated(message)
            };
            status.into_http()
        }
        Listener::OtlpHttp | Listener::Api => {
            let status = if refusal.is_forbidden() { StatusCode::FORBIDDEN } else { StatusCode::UNAUTHORIZED };
            let mut response = if listener == Listener::OtlpHttp {
                let code =
                    if refusal.is_forbidden() { tonic::Code::PermissionDenied } else { tonic::Code::Unauthenticated };
                crate::otlp_http::status_response(headers.get(header::CONTENT_TYPE), status, code as i32, message)
            } else {
                let body = serde_json::json!({ "error": message }).to_string();
                let mut response = Response::new(Full::new(Bytes::from(body)));
                response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
                *response.status_mut() = status;
                response
            };
            if !refusal.is_forbidden() {
                response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            response
        }
    }
}

/// A listener's service behind its keys.
#[derive(Clone)]
pub struct Authenticated<S> {
    inner: S,
    keys: Arc<ApiKeys>,
    listener: Listener,
    /// `tailscope_auth_refusals_total{listener,reason}`.
    refusals: Family<AuthRefusalLabel, Counter>,
}

impl<S> Authenticated<S> {
    /// `inner` behind `keys` on `listener`, counting refusals in `refusals`.
    pub fn new(
        inner: S,
        (keys, listener, refusals): (Arc<ApiKeys>, Listener, Family<AuthRefusalLabel, Counter>),
    ) -> Self {
        Authenticated { inner, keys, listener, refusals }
    }
}

impl<S, ReqBody, B> tower::Service<Request<ReqBody>> for Authenticated<S>
where
    S: tower::Service<Request<ReqBody>, Response = Response<B>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<Either<B, Full<Bytes>>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let path = request.uri().path();
        let checked = self
            .keys
            .check(self.listener, path, request.headers())
            .and_then(|key| Ok((key, self.keys.access(self.listener, key, request.headers())?)));
        match checked {
            Ok((key, access)) => {
                let path = path.to_string();
                let path = path.as_str();
                // The handlers read what the key may reach from the request: the projects its queries see (the
                // query engine's table scan enforces it) and the project its rows go to.
                request.extensions_mut().insert(access.visibility);
                if let Some(project) = access.ingest {
                    request.extensions_mut().insert(project);
                }
                // The handshake answers with the bearer header Flight SQL clients send on every later call.
                let handshake = self.listener == Listener::Flight && path == FLIGHT_HANDSHAKE;
                let bearer = if handshake && key.is_some() { bearer_from(request.headers()) } else { None };
                let future = self.inner.call(request);
                Box::pin(async move {
                    let Ok(mut response) = future.await;
                    if let Some(value) = bearer {
                        response.headers_mut().insert(header::AUTHORIZATION, value);
                    }
                    Ok(response.map(Either::Left))
                })
            }
            Err(refusal) => {
                tracing::debug!(listener = self.listener.name(), path, reason = refusal.reason(), "request refused");
                let label =
                    AuthRefusalLabel { listener: self.listener.name().to_string(), reason: refusal.reason().into() };
                self.refusals.get_or_create(&label).inc();
                let response = refusal_response(self.listener, request.headers(), &refusal);
                Box::pin(async move { Ok(response.map(Either::Right)) })
            }
        }
    }
}

/// `Bearer <key>` for the key a request carries (Bearer or the handshake's Basic password).
fn bearer_from(headers: &HeaderMap) -> Option<HeaderValue> {
    match credentials(headers, true) {
        Credentials::Key(key) => HeaderValue::from_str(&format!("Bearer {key}")).ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tailscope_core::config::ApiKeyConfig;

    fn keys(scopes: &[Scope]) -> (ApiKeys, String) {
        let clear = new_key();
        let config = AuthConfig {
            keys: vec![ApiKeyConfig {
                name: "k".into(),
                hash: Some(key_hash(&clear)),
                scopes: scopes.to_vec(),
                ..Default::default()
            }],
            metrics_open: false,
        };
        (ApiKeys::load(&config).unwrap(), clear)
    }

    fn bearer(key: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(&format!("Bearer {key}")).unwrap());
        h
    }

    #[test]
    fn a_hash_printed_for_a_key_is_the_key_it_accepts() {
        let key = new_key();
        assert!(key.starts_with("tsk_") && key.len() == 47, "{key}");
        let hash = key_hash(&key);
        assert_eq!(parse_hash(&hash).unwrap(), <[u8; 32]>::from(Sha256::digest(key.as_bytes())));
        assert!(parse_hash("sha256:zz").is_none());
    }

    #[test]
    fn scopes_decide_and_admin_may_do_everything() {
        let (ingest, key) = keys(&[Scope::Ingest]);
        assert!(ingest.check(Listener::OtlpGrpc, "/x", &bearer(&key)).is_ok());
        assert!(matches!(
            ingest.check(Listener::Api, "/api/v1/query", &bearer(&key)),
            Err(Refusal::Forbidden { needed: Scope::Query, .. })
        ));
        assert_eq!(ingest.check(Listener::Api, "/healthz", &HeaderMap::new()).map(|k| k.is_none()), Ok(true));
        assert_eq!(ingest.check(Listener::Api, "/metrics", &HeaderMap::new()).err(), Some(Refusal::Missing));
        assert_eq!(ingest.check(Listener::OtlpHttp, "/v1/traces", &bearer("tsk_other")).err(), Some(Refusal::Unknown));
        let (admin, key) = keys(&[Scope::Admin]);
        for (listener, path) in
            [(Listener::OtlpHttp, "/v1/traces"), (Listener::Api, "/metrics"), (Listener::Flight, "/")]
        {
            assert!(admin.check(listener, path, &bearer(&key)).is_ok(), "{path}");
        }
    }

    #[test]
    fn the_flight_handshake_takes_the_key_as_basic_password_and_nothing_else_does() {
        let (query, key) = keys(&[Scope::Query]);
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("anyone:{key}"));
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(&format!("Basic {basic}")).unwrap());
        assert!(query.check(Listener::Flight, FLIGHT_HANDSHAKE, &h).is_ok());
        assert_eq!(
            query.check(Listener::Flight, "/arrow.flight.protocol.FlightService/DoGet", &h).err(),
            Some(Refusal::Malformed)
        );
        assert_eq!(bearer_from(&h).unwrap().to_str().unwrap(), format!("Bearer {key}"));
        // Unpadded, as ADBC's Go driver sends it (the key's length makes the padding matter).
        for user in ["a", "ab", "abc"] {
            let unpadded = base64::engine::general_purpose::STANDARD_NO_PAD.encode(format!("{user}:{key}"));
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(&format!("Basic {unpadded}")).unwrap());
            assert!(query.check(Listener::Flight, FLIGHT_HANDSHAKE, &h).is_ok(), "{unpadded}");
        }
    }

    #[test]
    fn a_missing_key_is_explained_in_the_terms_of_the_listeners_clients() {
        assert!(Refusal::Missing.message(Listener::Flight).contains("handshake's password"));
        assert!(!Refusal::Missing.message(Listener::Flight).contains("OTEL_EXPORTER_OTLP_HEADERS"));
        assert!(Refusal::Missing.message(Listener::OtlpHttp).contains("OTEL_EXPORTER_OTLP_HEADERS"));
    }

    #[test]
    fn projects_choose_where_rows_go_and_what_queries_see() {
        let clear = new_key();
        let admin = new_key();
        let entry = |name: &str, key: &str, scopes: Vec<Scope>, projects: &[&str]| ApiKeyConfig {
            name: name.into(),
            hash: Some(key_hash(key)),
            scopes,
            projects: projects.iter().map(|p| p.to_string()).collect(),
            ..Default::default()
        };
        let config = AuthConfig {
            keys: vec![
                entry("ab", &clear, vec![Scope::Ingest, Scope::Query], &["a", "b"]),
                entry("root", &admin, vec![Scope::Admin], &[]),
            ],
            metrics_open: false,
        };
        let keys = ApiKeys::load(&config).unwrap();
        let access = |key: &str, listener, project: Option<&str>| {
            let mut h = bearer(key);
            if let Some(p) = project {
                h.insert(PROJECT_HEADER, HeaderValue::from_str(p).unwrap());
            }
            let found = keys.check(listener, "/v1/traces", &h).unwrap();
            keys.access(listener, found, &h).map(|a| (a.visibility, a.ingest.map(|p| p.0.to_string())))
        };
        let (_, project) = access(&clear, Listener::OtlpHttp, None).unwrap();
        assert_eq!(project.as_deref(), Some("a"), "the first project without a header");
        let (_, project) = access(&clear, Listener::OtlpGrpc, Some("b")).unwrap();
        assert_eq!(project.as_deref(), Some("b"));
        assert!(matches!(access(&clear, Listener::OtlpHttp, Some("c")), Err(Refusal::Project { .. })));
        assert!(matches!(access(&clear, Listener::OtlpHttp, Some("../a")), Err(Refusal::BadProject(_))));
        let (visible, _) = access(&clear, Listener::Api, None).unwrap();
        assert!(visible.sees("a") && visible.sees("b") && !visible.sees("default"));
        let (visible, _) = access(&admin, Listener::Api, None).unwrap();
        assert!(visible.is_all());
        let (_, project) = access(&admin, Listener::OtlpHttp, Some("zeta")).unwrap();
        assert_eq!(project.as_deref(), Some("zeta"), "an admin key may write to any project");
    }

    #[test]
    fn one_key_under_two_names_is_refused() {
        let clear = new_key();
        let entry = |name: &str, scope| ApiKeyConfig {
            name: name.into(),
            hash: Some(key_hash(&clear)),
            scopes: vec![scope],
            ..Default::default()
        };
        let config =
            AuthConfig { keys: vec![entry("a", Scope::Query), entry("b", Scope::Ingest)], metrics_open: false };
        assert!(matches!(ApiKeys::load(&config), Err(KeyError::Duplicate { .. })));
    }

    #[test]
    fn without_keys_everything_is_open() {
        let none = ApiKeys::load(&AuthConfig::default()).unwrap();
        assert!(!none.enabled());
        assert!(none.check(Listener::Api, "/metrics", &HeaderMap::new()).is_ok());
    }

    #[test]
    fn clear_keys_come_from_files_and_short_ones_or_directories_are_refused() {
        let dir = std::env::temp_dir().join(format!("tailscope-keyfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("key");
        std::fs::write(&path, "  tsk_from_a_file_0123456789\n").unwrap();
        let config = |path: std::path::PathBuf| AuthConfig {
            keys: vec![ApiKeyConfig {
                name: "f".into(),
                key_file: Some(path),
                scopes: vec![Scope::Query],
                ..Default::default()
            }],
            metrics_open: false,
        };
        let keys = ApiKeys::load(&config(path.clone())).unwrap();
        assert!(keys.check(Listener::Api, "/api/v1/query", &bearer("tsk_from_a_file_0123456789")).is_ok());
        std::fs::write(&path, "\n").unwrap();
        assert!(matches!(ApiKeys::load(&config(path.clone())), Err(KeyError::Weak { .. })));
        std::fs::write(&path, "tsk_short").unwrap();
        assert!(matches!(ApiKeys::load(&config(path)), Err(KeyError::Weak { .. })));
        // A FIFO would block start-up if it were opened.
        assert!(matches!(ApiKeys::load(&config(dir.clone())), Err(KeyError::File { .. })));
        assert!(matches!(ApiKeys::load(&config(dir.join("missing"))), Err(KeyError::File { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
