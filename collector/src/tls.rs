//! TLS on the listeners: rustls server configs built from PEM files and rebuilt when the files change.
//!
//! Rotation (cert-manager renewing a Secret, certbot renewing a certificate) replaces the files in place; the
//! reloader reads them every `server.tls.reload_interval` and, when their bytes changed and they load, swaps the
//! config that *new* handshakes use. Open connections keep the session they negotiated, so nothing is dropped. A
//! change that does not load (a key written before its certificate, a key that does not match) is logged and the
//! previous files stay in use until a later read loads.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use thiserror::Error;
use tokio_rustls::TlsAcceptor;

use tailscope_core::config::TlsFiles;

use crate::net::Protocol;

/// PEM files larger than this are refused: a certificate chain or key is a few KiB, a CA bundle at most a few
/// hundred (the Mozilla bundle is ~220 KiB).
const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// Why a listener's TLS files do not load.
#[derive(Debug, Error)]
pub enum TlsError {
    #[error("cannot read TLS file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("TLS file {path} is larger than {MAX_PEM_BYTES} bytes; is it the right file?")]
    TooLarge { path: PathBuf },
    #[error("TLS file {path} holds no {what} in PEM form (-----BEGIN {what}-----)")]
    Missing { path: PathBuf, what: &'static str },
    #[error("TLS file {path} is not valid PEM: {reason}")]
    Pem { path: PathBuf, reason: String },
    #[error("the client CA file {path} holds no usable CA certificate: {reason}")]
    ClientCa { path: PathBuf, reason: String },
    #[error("certificate {cert} and key {key} do not make a TLS config: {reason}")]
    Config { cert: PathBuf, key: PathBuf, reason: String },
}

/// The files of one listener as last read: what a reload compares against.
#[derive(PartialEq, Eq)]
struct Contents {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

/// A listener's TLS: the config new handshakes use, and the files it came from.
pub struct ReloadingTls {
    files: TlsFiles,
    protocol: Protocol,
    current: RwLock<(Arc<rustls::ServerConfig>, Contents)>,
}

impl ReloadingTls {
    /// Loads `files` for a listener speaking `protocol`; an error names the file and what is wrong with it.
    pub fn load(files: TlsFiles, protocol: Protocol) -> Result<Arc<ReloadingTls>, TlsError> {
        let contents = read_contents(&files)?;
        let config = build(&files, &contents, protocol)?;
        Ok(Arc::new(ReloadingTls { files, protocol, current: RwLock::new((config, contents)) }))
    }

    /// The acceptor for the next handshake.
    pub fn acceptor(&self) -> TlsAcceptor {
        let current = self.current.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        TlsAcceptor::from(current.0.clone())
    }

    /// Whether clients must present a certificate.
    pub fn mutual(&self) -> bool {
        self.files.client_ca_file.is_some()
    }

    /// Reads the files again; swaps the config if they changed and load. Ok(true) when swapped.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let contents = read_contents(&self.files)?;
        if self.current.read().unwrap_or_else(|p| p.into_inner()).1 == contents {
            return Ok(false);
        }
        let config = build(&self.files, &contents, self.protocol)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = (config, contents);
        Ok(true)
    }

    /// Checks the files every `interval` for as long as the process runs; `listener` names it in logs.
    pub fn spawn_reloader(self: &Arc<Self>, listener: &'static str, interval: Duration) {
        let tls = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut failing = false;
            loop {
                tokio::time::sleep(interval).await;
                let Some(tls) = tls.upgrade() else { return };
                // Blocking file reads, off the runtime's workers.
                let result = match tokio::task::spawn_blocking(move || tls.reload()).await {
                    Ok(result) => result,
                    Err(e) => {
                        tracing::error!(listener, "TLS reload task failed: {e}");
                        continue;
                    }
                };
                match result {
                    Ok(true) => {
                        failing = false;
                        tracing::info!(listener, "TLS certificate reloaded; new connections use it");
                    }
                    Ok(false) => failing = false,
                    Err(e) => {
                        // Logged once per episode: a rotation in progress fails a read or two.
                        if !failing {
                            tracing::warn!(listener, error = %e, "TLS files changed but do not load; still serving the previous ones");
                        }
                        failing = true;
                    }
                }
            }
        });
    }
}

fn read_contents(files: &TlsFiles) -> Result<Contents, TlsError> {
    Ok(Contents {
        cert: read_pem_file(&files.cert_file)?,
        key: read_pem_file(&files.key_file)?,
        client_ca: files.client_ca_file.as_deref().map(read_pem_file).transpose()?,
    })
}

fn read_pem_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    let read = |source| TlsError::Read { path: path.to_path_buf(), source };
    // Only regular files: opening a FIFO blocks until a writer comes, which would hang start-up, freeze the
    // reloader for good and keep the process from exiting.
    if !std::fs::metadata(path).map_err(read)?.is_file() {
        return Err(read(std::io::Error::other("not a regular file")));
    }
    let file = std::fs::File::open(path).map_err(read)?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_BYTES + 1).read_to_end(&mut bytes).map_err(read)?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(TlsError::TooLarge { path: path.to_path_buf() });
    }
    Ok(bytes)
}

fn certificates(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem { path: path.to_path_buf(), reason: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsError::Missing { path: path.to_path_buf(), what: "CERTIFICATE" });
    }
    Ok(certs)
}

fn build(files: &TlsFiles, contents: &Contents, protocol: Protocol) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain = certificates(&files.cert_file, &contents.cert)?;
    let key = PrivateKeyDer::from_pem_slice(&contents.key).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            TlsError::Missing { path: files.key_file.clone(), what: "PRIVATE KEY" }
        }
        e => TlsError::Pem { path: files.key_file.clone(), reason: e.to_string() },
    })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config_error =
        |reason: String| TlsError::Config { cert: files.cert_file.clone(), key: files.key_file.clone(), reason };
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| config_error(e.to_string()))?;
    let builder = match (&files.client_ca_file, &contents.client_ca) {
        (Some(path), Some(pem)) => {
            let mut roots = RootCertStore::empty();
            for cert in certificates(path, pem)? {
                roots.add(cert).map_err(|e| TlsError::ClientCa { path: path.clone(), reason: e.to_string() })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::ClientCa { path: path.clone(), reason: e.to_string() })?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| config_error(e.to_string()))?;
    // gRPC is HTTP/2 only; the HTTP listeners take both, as they do in plaintext.
    config.alpn_protocols = match protocol {
        Protocol::Grpc => vec![b"h2".to_vec()],
        Protocol::Http => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
    };
    Ok(Arc::new(config))
}
