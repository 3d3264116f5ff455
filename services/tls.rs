//! TLS for every listener and every client channel of the mesh (rustls, ring provider).
//!
//! The pool has one CA. Each process holds a certificate it signed:
//! - a **programmer** serves TLS and *requires* a client certificate signed by the pool CA, so only
//!   the manager (and operators holding a pool client certificate) can call `Execute` and skip the
//!   manager's budget and authentication;
//! - the **manager** serves TLS and accepts, but does not require, client certificates: its callers
//!   authenticate with bearer tokens (see `manager::auth`); as a client it presents its own
//!   certificate to the programmers and verifies theirs against the CA;
//! - the **CLI** verifies the manager against the CA, and presents the pool's `client`
//!   certificate when it probes programmers directly (`pas up`).
//!
//! Servers answer gRPC (HTTP/2) and the JSON routes (HTTP/1.1) on one port, so the listener offers
//! both in ALPN. Handshakes run concurrently off the accept loop, each bounded in time, so one slow
//! or silent client cannot hold up the others (see [`TlsListener`]). A server's certificate, key
//! and CA are re-read when their files change ([`reloading_server_config`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// How long a client may take to complete its handshake before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; beyond, accepting waits (the kernel's backlog holds the rest).
const MAX_HANDSHAKES: usize = 256;
/// Completed handshakes waiting for the server to take them.
const READY_BACKLOG: usize = 64;

/// The PEM files of one process: the pool CA, its own certificate chain and private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The pool CA certificate(s): what peers' certificates must be signed by.
    pub ca: PathBuf,
    /// This process's certificate chain (leaf first).
    pub cert: PathBuf,
    /// This process's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Whether a server asks its clients for a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Refuse clients without a certificate signed by the pool CA (programmers).
    Required,
    /// Verify a certificate when one is offered, accept clients without one (the manager, whose
    /// callers authenticate with tokens).
    Optional,
}

/// Why TLS could not be set up. Every variant names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What was wrong with it (never its content).
        message: String,
    },
    /// rustls refused the certificate/key combination or the CA.
    #[error("TLS setup with {cert} and {key}: {message}")]
    Setup {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls's reason.
        message: String,
    },
}

fn file_error(path: &Path, message: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

/// Reads every certificate of a PEM file (at least one).
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(path, format!("cannot read certificates: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, format!("not a valid PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(file_error(path, "no PEM certificate in the file"));
    }
    Ok(certs)
}

/// Reads the first private key of a PEM file.
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| file_error(path, format!("no usable PEM private key: {e}")))
}

/// The CA file as a rustls root store.
pub fn root_store(ca: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut store = rustls::RootCertStore::empty();
    for cert in read_certs(ca)? {
        store
            .add(cert)
            .map_err(|e| file_error(ca, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(store)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The rustls server configuration of a process: its certificate, the pool CA for client
/// certificates, ALPN `h2` and `http/1.1`.
pub fn server_config(
    files: &TlsFiles,
    client_auth: ClientAuth,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    Ok(server_settings(files, client_auth)?.config)
}

/// A server's TLS settings: the rustls configuration handshakes are made with, and the verifier
/// of client certificates inside it, kept beside it so that a connection's client certificate
/// can be checked again when the settings are renewed ([`TlsConnection::untrusted`]).
#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub config: Arc<rustls::ServerConfig>,
    pub clients: Arc<dyn rustls::server::danger::ClientCertVerifier>,
}

/// [`server_config`] with its client verifier.
pub fn server_settings(
    files: &TlsFiles,
    client_auth: ClientAuth,
) -> Result<ServerSettings, TlsError> {
    let setup = |message: String| TlsError::Setup {
        cert: files.cert.clone(),
        key: files.key.clone(),
        message,
    };
    let certs = read_certs(&files.cert)?;
    let key = read_key(&files.key)?;
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(root_store(&files.ca)?),
        provider(),
    );
    let verifier = match client_auth {
        ClientAuth::Required => verifier.build(),
        ClientAuth::Optional => verifier.allow_unauthenticated().build(),
    }
    .map_err(|e| file_error(&files.ca, format!("cannot verify clients with it: {e}")))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| setup(e.to_string()))?
        .with_client_cert_verifier(verifier.clone())
        .with_single_cert(certs, key)
        .map_err(|e| setup(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(ServerSettings {
        config: Arc::new(config),
        clients: verifier,
    })
}

/// A server's TLS settings as they are now: re-read while the process runs when its files
/// change (see [`crate::reload`]). Each new connection's handshake uses the current ones.
pub type ServerTls = tokio::sync::watch::Receiver<ServerSettings>;

/// [`server_config`], kept current with its files (the CA, certificate and key) while the
/// process runs. Fails as `server_config` does at start-up; later a set that does not load is
/// logged and the last good one kept. Call inside a tokio runtime.
pub fn reloading_server_config(
    files: &TlsFiles,
    client_auth: ClientAuth,
) -> Result<ServerTls, TlsError> {
    reloading("TLS certificate", "server", files, move |files| {
        server_settings(files, client_auth)
    })
}

/// A certificate in use that expires sooner than this is warned about in the log (at start-up,
/// at each reload, and every [`EXPIRY_CHECK_EVERY`]), for operators who alert on logs rather
/// than on `pas_tls_certificate_expiry_timestamp_seconds`.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

/// How often a running process looks again at when the certificate it presents expires.
const EXPIRY_CHECK_EVERY: Duration = Duration::from_secs(6 * 3600);

/// `build(files)` now, and again whenever one of the files changes (see [`crate::reload`]); each
/// time it succeeds, the expiry of the certificate presented as `role` is published
/// ([`crate::telemetry::metrics::certificate_expiry`]) and, when near, logged ([`expiry_notice`]),
/// as it is every [`EXPIRY_CHECK_EVERY`] while the process runs.
fn reloading<T: Send + Sync + 'static>(
    what: &'static str,
    role: &'static str,
    files: &TlsFiles,
    build: impl Fn(&TlsFiles) -> Result<T, TlsError> + Send + Sync + 'static,
) -> Result<tokio::sync::watch::Receiver<T>, TlsError> {
    // When the certificate in use expires (Unix seconds; unknown: never).
    let in_use = Arc::new(std::sync::atomic::AtomicI64::new(i64::MAX));
    let noted = in_use.clone();
    let build = move |files: &TlsFiles| {
        let value = build(files)?;
        if let Some(not_after) = not_after(&files.cert) {
            crate::telemetry::metrics::certificate_expiry(role, not_after);
            noted.store(not_after, std::sync::atomic::Ordering::Relaxed);
            log_expiry(what, not_after);
        }
        Ok(value)
    };
    let initial = build(files)?;
    let watched = vec![files.ca.clone(), files.cert.clone(), files.key.clone()];
    let files = files.clone();
    let current = crate::reload::reloaded(what, watched, initial, move || build(&files));
    tokio::spawn(async move {
        let mut every = tokio::time::interval(EXPIRY_CHECK_EVERY);
        every.tick().await; // The start-up's build has just said it.
        loop {
            every.tick().await;
            log_expiry(what, in_use.load(std::sync::atomic::Ordering::Relaxed));
        }
    });
    Ok(current)
}

/// Logs [`expiry_notice`] for the certificate of `what` expiring at `not_after`, if any.
fn log_expiry(what: &str, not_after: i64) {
    match expiry_notice(what, not_after, chrono::Utc::now().timestamp()) {
        Some((true, message)) => tracing::error!("{message}"),
        Some((false, message)) => tracing::warn!("{message}"),
        None => {}
    }
}

/// What to say about a certificate of `what` that expires at `not_after` when it is `now` (both
/// Unix seconds): `(expired, message)`, or nothing while more than [`EXPIRY_WARNING`] is left.
pub fn expiry_notice(what: &str, not_after: i64, now: i64) -> Option<(bool, String)> {
    let left = not_after.saturating_sub(now);
    let when = chrono::DateTime::from_timestamp(not_after, 0)
        .map_or_else(|| not_after.to_string(), |t| t.to_rfc3339());
    if left <= 0 {
        return Some((
            true,
            format!(
                "{what} in use expired at {when}: peers refuse it; renew it (pas certs renew, or your CA)"
            ),
        ));
    }
    let warning = i64::try_from(EXPIRY_WARNING.as_secs()).unwrap_or(i64::MAX);
    (left < warning).then(|| {
        let (days, hours) = (left / 86_400, left % 86_400 / 3600);
        (
            false,
            format!("{what} in use expires at {when}, in {days} d {hours} h: renew it"),
        )
    })
}

/// A client's TLS settings as they are now (see [`reloading_client_config`]): each new
/// connection's handshake uses the current ones.
pub type ClientTls = tokio::sync::watch::Receiver<Arc<rustls::ClientConfig>>;

/// The client settings a process uses toward the pool's servers — the pool CA as the only root,
/// its own certificate when its files exist, ALPN `h2` — kept current with the files while it
/// runs: a renewed client certificate, or a new CA, is presented and trusted from the next
/// connection on (see `channel::Dialer`). Call inside a tokio runtime.
pub fn reloading_client_config(files: &TlsFiles) -> Result<ClientTls, TlsError> {
    fn build(files: &TlsFiles) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        let mut config = rustls_client_config(files)?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }
    reloading("TLS client certificate", "client", files, build)
}

/// When the first certificate in the PEM file at `path` stops being valid, Unix seconds (`None`
/// when it cannot be read).
pub fn not_after(path: &Path) -> Option<i64> {
    not_after_der(&read_certs(path).ok()?.into_iter().next()?)
}

/// When a certificate stops being valid (Unix seconds), if it parses.
fn not_after_der(der: &CertificateDer<'_>) -> Option<i64> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// The tonic client TLS settings for reaching a server named `server_name` (the name or IP its
/// certificate carries; usually the host from the configuration). With `present_identity`, this
/// process's certificate is offered to the server (needed by programmers).
pub fn client_config(
    files: &TlsFiles,
    server_name: &str,
    present_identity: bool,
) -> Result<tonic::transport::ClientTlsConfig, TlsError> {
    // Parse first, so a bad file is reported by name now instead of at the first connection.
    root_store(&files.ca)?;
    let read = |path: &Path| {
        std::fs::read(path).map_err(|e| file_error(path, format!("cannot read: {e}")))
    };
    let mut config = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(read(&files.ca)?))
        .domain_name(server_name.trim_start_matches('[').trim_end_matches(']'));
    if present_identity {
        read_certs(&files.cert)?;
        read_key(&files.key)?;
        config = config.identity(tonic::transport::Identity::from_pem(
            read(&files.cert)?,
            read(&files.key)?,
        ));
    }
    Ok(config)
}

/// A rustls client configuration for HTTP clients (reqwest): the pool CA as the only root, and
/// this client's certificate when its files exist.
pub fn rustls_client_config(files: &TlsFiles) -> Result<rustls::ClientConfig, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| file_error(&files.ca, e))?
        .with_root_certificates(root_store(&files.ca)?);
    if files.cert.exists() && files.key.exists() {
        builder
            .with_client_auth_cert(read_certs(&files.cert)?, read_key(&files.key)?)
            .map_err(|e| TlsError::Setup {
                cert: files.cert.clone(),
                key: files.key.clone(),
                message: e.to_string(),
            })
    } else {
        Ok(builder.with_no_client_auth())
    }
}

/// A TCP listener whose connections come out TLS-terminated, for `axum::serve`.
///
/// An accept loop task takes TCP connections (TCP_NODELAY set) and runs each handshake in its own
/// task, at most [`MAX_HANDSHAKES`] at once and each within [`HANDSHAKE_TIMEOUT`]; completed
/// streams wait in a small channel for the server. Failed handshakes (plaintext clients, wrong
/// CA, no client certificate where one is required) are logged at debug and dropped. Dropping the
/// listener stops the accept loop.
#[derive(Debug)]
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsConnection, SocketAddr)>,
    local_addr: SocketAddr,
    accept_loop: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    /// Starts terminating TLS on `tcp` with `config` (as it is when each connection comes).
    pub fn new(tcp: TcpListener, config: ServerTls) -> std::io::Result<Self> {
        let local_addr = tcp.local_addr()?;
        let (tx, ready) = mpsc::channel(READY_BACKLOG);
        let accept_loop = tokio::spawn(accept_loop(tcp, config, tx));
        Ok(Self {
            ready,
            local_addr,
            accept_loop,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accept_loop.abort();
    }
}

async fn accept_loop(
    tcp: TcpListener,
    config: ServerTls,
    ready: mpsc::Sender<(TlsConnection, SocketAddr)>,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let Ok(permit) = handshakes.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match tcp.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: the condition passes; do not spin.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!("cannot set TCP_NODELAY on an accepted connection: {e}");
        }
        // The settings as they are now: a renewed certificate serves from the next connection.
        // Marked seen: the connection's client certificate is checked again at the next renewal.
        let mut settings = config.clone();
        let acceptor = TlsAcceptor::from(settings.borrow_and_update().config.clone());
        let ready = ready.clone();
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await;
            drop(permit);
            match handshake {
                Ok(Ok(tls)) => {
                    let client_chain = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .map(|chain| chain.iter().map(|c| c.clone().into_owned()).collect());
                    let connection = TlsConnection {
                        stream: tls,
                        client_chain,
                        settings,
                    };
                    let _ = ready.send((connection, peer)).await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

/// An accepted TLS connection: the stream, the client certificate chain its handshake verified
/// (if the client presented one), and the server's settings as they were then.
#[derive(Debug)]
pub struct TlsConnection {
    stream: TlsStream<TcpStream>,
    client_chain: Option<Vec<CertificateDer<'static>>>,
    settings: ServerTls,
}

impl TlsConnection {
    /// Resolves once the server's settings were renewed and this connection's client certificate
    /// does not verify under them (a new CA, a certificate taken out of trust), or once that
    /// certificate expires: the connection is then to be closed, its streams with it — it was let
    /// in by a trust that no longer holds. Never resolves for a client without a certificate
    /// (tokens authenticate each of its calls), nor while its certificate is valid and every
    /// renewal still trusts it (a routine renewal under the same CA disturbs nothing).
    /// Called once, when the connection is served: the chain moves into the future.
    pub fn untrusted(&mut self) -> impl Future<Output = ()> + Send + 'static {
        untrusted_after_renewal(self.client_chain.take(), self.settings.clone())
    }
}

async fn untrusted_after_renewal(
    chain: Option<Vec<CertificateDer<'static>>>,
    mut settings: ServerTls,
) {
    let Some((end_entity, intermediates)) = chain.as_deref().and_then(|c| c.split_first()) else {
        return std::future::pending().await;
    };
    // When the certificate expires, on tokio's clock (unknown: never).
    let left = not_after_der(end_entity)
        .map(|not_after| not_after.saturating_sub(chrono::Utc::now().timestamp()));
    let expired = async move {
        match left {
            Some(left) => {
                tokio::time::sleep(Duration::from_secs(u64::try_from(left).unwrap_or(0))).await
            }
            None => std::future::pending().await,
        }
    };
    tokio::pin!(expired);
    // False once the settings are no longer kept (the process is stopping): only expiry remains.
    let mut kept = true;
    loop {
        tokio::select! {
            changed = settings.changed(), if kept => kept = changed.is_ok(),
            () = &mut expired => {
                tracing::warn!("a connection's client certificate expired: closing it");
                return;
            }
        }
        if !kept {
            continue;
        }
        let clients = settings.borrow_and_update().clients.clone();
        let now = rustls::pki_types::UnixTime::now();
        if let Err(e) = clients.verify_client_cert(end_entity, intermediates, now) {
            tracing::warn!(
                "a connection's client certificate is not trusted by the renewed TLS settings ({e}): closing it"
            );
            return;
        }
    }
}

impl tokio::io::AsyncRead for TlsConnection {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for TlsConnection {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsConnection;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The accept loop only ends when the listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}

/// True when every address `host` names is a loopback address (`127.0.0.0/8`, `::1`,
/// `localhost`): such a listener cannot be reached from another machine.
pub async fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return ip.is_loopback();
    }
    match tokio::net::lookup_host((host, 0)).await {
        Ok(addrs) => {
            let addrs: Vec<SocketAddr> = addrs.collect();
            !addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback())
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection's client certificate is checked again at each renewal of the server's
    /// settings: a renewal under the same CA keeps it (a re-issued server certificate, say), one
    /// under a new CA ends it; a client without a certificate is never ended by a renewal.
    #[tokio::test]
    async fn a_renewal_ends_a_connection_only_when_its_client_certificate_is_no_longer_trusted() {
        use crate::cli::certs::{CertsInitArgs, CertsRenewArgs, init, renew};
        use futures::FutureExt;
        let dir = tempfile::tempdir().unwrap();
        let yaml = "pool_size: 1\nprogrammers:\n  - {id: '001', port: 6151, primary_llm: ollama/a, backup_llm: ollama/b}\n";
        let config = crate::config::Config::from_yaml(yaml, &dir.path().join("pool.yaml")).unwrap();
        let set = |name: &str| {
            let certs = dir.path().join(name);
            init(
                &config,
                &CertsInitArgs {
                    dir: certs.clone(),
                    sans: Vec::new(),
                    days: 30,
                    force: true,
                },
            )
            .unwrap();
            certs
        };
        let (first, other) = (set("first"), set("other"));
        let files = |certs: &Path, name: &str| TlsFiles {
            ca: certs.join("ca.pem"),
            cert: certs.join(format!("{name}.pem")),
            key: certs.join(format!("{name}-key.pem")),
        };
        let settings = |certs: &Path| {
            server_settings(&files(certs, "programmer-001"), ClientAuth::Required).unwrap()
        };
        let client_chain = read_certs(&first.join("client.pem")).unwrap();
        let (renew_settings, current) = tokio::sync::watch::channel(settings(&first));
        let mut with_cert = Box::pin(untrusted_after_renewal(Some(client_chain), current.clone()));
        let mut without_cert = Box::pin(untrusted_after_renewal(None, current.clone()));
        // Every certificate re-issued by the same CA: still trusted.
        renew(
            &config,
            &CertsRenewArgs {
                dir: first.clone(),
                sans: Vec::new(),
                days: 30,
            },
        )
        .unwrap();
        renew_settings.send_replace(settings(&first));
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        assert!((&mut with_cert).now_or_never().is_none(), "same CA: kept");
        // A new CA: the connection's client certificate no longer verifies.
        renew_settings.send_replace(settings(&other));
        tokio::time::timeout(std::time::Duration::from_secs(10), &mut with_cert)
            .await
            .expect("ended under a new CA");
        assert!(
            (&mut without_cert).now_or_never().is_none(),
            "no certificate: kept"
        );
    }

    /// A connection whose client certificate expires is ended then, renewal or not (tokio's
    /// clock, paused: it runs ahead to the expiry once nothing else is left to do).
    #[tokio::test(start_paused = true)]
    async fn a_connection_is_ended_when_its_client_certificate_expires() {
        use crate::cli::certs::{CertsInitArgs, init};
        use futures::FutureExt;
        let dir = tempfile::tempdir().unwrap();
        let yaml = "pool_size: 1\nprogrammers:\n  - {id: '001', port: 6151, primary_llm: ollama/a, backup_llm: ollama/b}\n";
        let config = crate::config::Config::from_yaml(yaml, &dir.path().join("pool.yaml")).unwrap();
        let certs = dir.path().join("certs");
        let args = CertsInitArgs {
            dir: certs.clone(),
            sans: Vec::new(),
            days: 2,
            force: false,
        };
        init(&config, &args).unwrap();
        let files = TlsFiles {
            ca: certs.join("ca.pem"),
            cert: certs.join("programmer-001.pem"),
            key: certs.join("programmer-001-key.pem"),
        };
        let chain = read_certs(&certs.join("client.pem")).unwrap();
        let left = not_after_der(&chain[0]).unwrap() - chrono::Utc::now().timestamp();
        let (_keep, current) =
            tokio::sync::watch::channel(server_settings(&files, ClientAuth::Required).unwrap());
        let started = tokio::time::Instant::now();
        let mut ended = Box::pin(untrusted_after_renewal(Some(chain), current));
        assert!((&mut ended).now_or_never().is_none(), "valid: kept");
        tokio::time::timeout(Duration::from_secs(30 * 86_400), ended)
            .await
            .expect("ended at the expiry");
        let after = started.elapsed().as_secs();
        assert!(
            after + 5 >= u64::try_from(left).unwrap(),
            "ended after {after} s, expiring in {left} s"
        );
    }

    #[tokio::test]
    async fn loopback_hosts_are_told_apart_from_reachable_ones() {
        for host in ["127.0.0.1", "127.0.0.7", "::1", "[::1]", "localhost"] {
            assert!(is_loopback_host(host).await, "{host}");
        }
        for host in ["0.0.0.0", "::", "10.1.2.3", "192.168.0.1"] {
            assert!(!is_loopback_host(host).await, "{host}");
        }
    }

    #[test]
    fn a_certificate_near_or_past_its_expiry_is_told_apart() {
        let now = 1_800_000_000;
        let day = 86_400;
        assert_eq!(expiry_notice("TLS certificate", now + 15 * day, now), None);
        let (expired, message) =
            expiry_notice("TLS certificate", now + 13 * day + 7200, now).unwrap();
        assert!(!expired);
        assert!(
            message.contains("in 13 d 2 h") && message.contains("2027-"),
            "{message}"
        );
        let (expired, message) = expiry_notice("TLS certificate", now - 1, now).unwrap();
        assert!(expired && message.contains("expired at"), "{message}");
        assert_eq!(
            expiry_notice("TLS certificate", i64::MAX, now),
            None,
            "unknown: never"
        );
    }

    #[test]
    fn a_missing_or_empty_file_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let err = read_certs(&empty).unwrap_err().to_string();
        assert!(
            err.contains("empty.pem") && err.contains("no PEM certificate"),
            "{err}"
        );
        let missing = dir.path().join("missing.pem");
        let err = read_key(&missing).unwrap_err().to_string();
        assert!(err.contains("missing.pem"), "{err}");
    }
}
