//! Serving gRPC (h2c) and HTTP/1.1 JSON routes on one listener.
//!
//! The original users ran `curl localhost:6151/health | jq`; the mesh keeps that working on the same
//! port as the gRPC services. tonic's [`Routes`] turns into an axum router, the JSON routes are added
//! to it, and `axum::serve` (with HTTP/2 enabled) answers both protocols on one socket.
//! W3C trace context on incoming calls is picked up by [`crate::telemetry::propagation`].
//! Every process also registers grpc.health.v1 and reflection (v1 and v1alpha, since grpcurl 1.8
//! still speaks v1alpha), so `grpcurl list` and health checks work without .proto files.

use crate::tls::{ServerTls, TlsFiles, TlsListener};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio::net::TcpListener;
use tonic::service::Routes;

/// Errors while setting up a server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("server failed: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error(
        "refusing to listen on {host} (reachable from other machines) without {missing}: \
         configure it (see `pas certs init` and the README's Security section) or pass --insecure"
    )]
    Exposed { host: String, missing: String },
}

/// How a server process secures its port; flattened into `pas manager` and `pas programmer`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SecurityArgs {
    /// Listen on a non-loopback address without TLS (and, for the manager, without tokens).
    /// Logs a warning; without this flag such a start is refused.
    #[arg(long)]
    pub insecure: bool,
    /// This process's certificate (PEM); with --tls-key and --tls-ca, wins over the config's `tls:`.
    #[arg(long, requires_all = ["tls_key", "tls_ca"])]
    pub tls_cert: Option<PathBuf>,
    /// This process's private key (PEM).
    #[arg(long, requires_all = ["tls_cert", "tls_ca"])]
    pub tls_key: Option<PathBuf>,
    /// The pool CA certificate (PEM).
    #[arg(long, requires_all = ["tls_cert", "tls_key"])]
    pub tls_ca: Option<PathBuf>,
}

impl SecurityArgs {
    /// The TLS files of process `name`: the flags when given, else the config's `tls:` section.
    pub fn tls_files(&self, config: &crate::config::Config, name: &str) -> Option<TlsFiles> {
        match (&self.tls_cert, &self.tls_key, &self.tls_ca) {
            (Some(cert), Some(key), Some(ca)) => Some(TlsFiles {
                ca: ca.clone(),
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => config.tls_files(name),
        }
    }
}

/// Refuses to expose a port beyond loopback without the protections that make it safe, unless
/// the operator said `--insecure` (then warns). `missing` names what is absent (empty = nothing).
pub async fn check_exposure(
    host: &str,
    missing: &[&str],
    insecure: bool,
) -> Result<(), ServeError> {
    if missing.is_empty() || crate::tls::is_loopback_host(host).await {
        return Ok(());
    }
    let missing = missing.join(" and ");
    if insecure {
        tracing::warn!(%host, "listening beyond loopback without {missing} (--insecure): anyone who reaches this port can use it");
        return Ok(());
    }
    Err(ServeError::Exposed {
        host: host.to_string(),
        missing,
    })
}

/// A bound port: plaintext, or TLS-terminated with the process's certificate.
#[derive(Debug)]
pub enum Bound {
    /// h2c + HTTP/1.1 in the clear.
    Plain(TcpListener),
    /// TLS (ALPN h2 and http/1.1), client certificates as configured.
    Tls(TlsListener),
}

impl Bound {
    /// Wraps `listener` in TLS when `tls` is given (see [`crate::tls::reloading_server_config`]).
    pub fn new(listener: TcpListener, tls: Option<ServerTls>) -> Result<Self, ServeError> {
        Ok(match tls {
            None => Bound::Plain(listener),
            Some(config) => Bound::Tls(TlsListener::new(listener, config)?),
        })
    }

    /// The address the port is bound to.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match self {
            Bound::Plain(l) => l.local_addr(),
            Bound::Tls(l) => axum::serve::Listener::local_addr(l),
        }
    }
}

/// Binds `host:port` (port 0 picks a free port; read it back with `local_addr`).
pub async fn bind(host: &str, port: u16) -> Result<TcpListener, ServeError> {
    let addr = format!("{host}:{port}");
    TcpListener::bind(&addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })
}

/// Binds `count` (at least one) listening sockets on `host:port` that share the port
/// (`SO_REUSEPORT`: the kernel spreads new connections over them), one for each runtime that
/// serves it: the first, and the others; with `count` 1, one plain socket as [`bind`] makes it.
/// Port 0 picks a free port for all of them.
///
/// A port another socket holds is refused as [`bind`] refuses it: the port is first bound alone,
/// without `SO_REUSEPORT`, and only once that succeeded let go and bound as a group. So a second
/// process started on the same port (a second manager by mistake) fails to start instead of
/// joining the group and silently taking a share of the callers.
pub async fn bind_shared(
    host: &str,
    port: u16,
    count: usize,
) -> Result<(TcpListener, Vec<TcpListener>), ServeError> {
    let first = bind(host, port).await?;
    if count <= 1 {
        return Ok((first, Vec::new()));
    }
    let at = first.local_addr()?;
    drop(first);
    let addr = at.to_string();
    let open = || -> std::io::Result<TcpListener> {
        let socket = if at.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.set_reuseport(true)?;
        socket.bind(at)?;
        socket.listen(LISTEN_BACKLOG)
    };
    let shared = || {
        open().map_err(|source| ServeError::Bind {
            addr: addr.clone(),
            source,
        })
    };
    let first = shared()?;
    let others = (1..count).map(|_| shared()).collect::<Result<_, _>>()?;
    Ok((first, others))
}

/// The accept backlog of each socket [`bind_shared`] makes (what `TcpListener::bind` uses).
const LISTEN_BACKLOG: u32 = 1024;

/// Adds grpc.health.v1 and both reflection versions (covering our contract and the health
/// service) to `routes`. Reflection lists only `served` (plus health and reflection itself): the
/// descriptor set holds both of our services, but each process serves one of them.
pub fn with_health_and_reflection(
    routes: Routes,
    health: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
    served: &str,
) -> Result<Routes, ServeError> {
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::contract::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name(served)
            .with_service_name("grpc.health.v1.Health")
    };
    let v1 = builder().build_v1()?;
    let v1alpha = builder().build_v1alpha()?;
    Ok(routes
        .add_service(health)
        .add_service(v1)
        .add_service(v1alpha))
}

/// Serves `router` (gRPC + JSON routes) on `listener` until `shutdown` resolves, then drains
/// in-flight requests. Every request passes the trace-context middleware first, so a caller's W3C
/// `traceparent` becomes the parent of the spans its handler creates.
/// `limits` bound what one connection may open (`limits.http2_max_concurrent_streams`).
pub async fn serve(
    listener: Bound,
    router: axum::Router,
    limits: &crate::config::LimitsConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let max_streams = limits.http2_max_concurrent_streams;
    let router = router.layer(axum::middleware::from_fn(
        crate::telemetry::propagation::middleware,
    ));
    // TCP_NODELAY on every accepted connection: gRPC streams are many small frames (headers,
    // one event, trailers), and with Nagle's algorithm each small write after the first waits
    // for the peer's delayed ACK (~40 ms on Linux), which showed up as ~40 ms per manager hop.
    // (The TLS listener sets it in its own accept loop.)
    match listener {
        Bound::Plain(listener) => {
            let listener =
                axum::serve::ListenerExt::tap_io(listener, |tcp: &mut tokio::net::TcpStream| {
                    if let Err(e) = tcp.set_nodelay(true) {
                        tracing::debug!("cannot set TCP_NODELAY on an accepted connection: {e}");
                    }
                });
            serve_connections(listener, router, max_streams, shutdown).await;
        }
        Bound::Tls(listener) => serve_connections(listener, router, max_streams, shutdown).await,
    }
    Ok(())
}

/// Serves `router` on `listener` from a thread of its own running a one-thread tokio runtime that
/// nothing else uses, until `shutdown` resolves. The manager answers its probes there (its
/// `admin_port`): a burst of calls on the main port queues its work on the main runtime's workers,
/// and a health check sharing those queues waits behind all of it (478 ms at p99 under 10,000
/// concurrent dispatches); on a thread of its own it waits only for the OS scheduler. This is what
/// linkerd2-proxy does with its admin server. `listener` is bound by the caller (so a port in use
/// fails the start-up), then moved to the thread's runtime. `on_thread` runs first on the new
/// thread (to mark what the thread is for, see `manager::runtimes`).
pub fn serve_on_own_thread(
    name: &str,
    listener: TcpListener,
    tls: Option<ServerTls>,
    router: axum::Router,
    limits: crate::config::LimitsConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_thread: impl FnOnce() + Send + 'static,
) -> Result<std::thread::JoinHandle<()>, ServeError> {
    let listener = listener.into_std()?;
    let thread_name = name.to_string();
    let spawned = std::thread::Builder::new()
        .name(thread_name.clone())
        .spawn(move || {
            on_thread();
            let served = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(ServeError::Io)
                .and_then(|runtime| {
                    runtime.block_on(async move {
                        let listener = TcpListener::from_std(listener)?;
                        let bound = Bound::new(listener, tls)?;
                        serve(bound, router, &limits, shutdown).await
                    })
                });
            if let Err(e) = served {
                tracing::error!(thread = %thread_name, "serving stopped: {e}");
            }
        })?;
    Ok(spawned)
}

/// How often a server pings an idle HTTP/2 connection, and how long it waits for the answer.
/// A peer that vanished without closing (host down, network partition, a process frozen) is
/// noticed within their sum and its streams end, so a programmer stops working for a manager that
/// is gone instead of finishing — and committing — a task the manager has already rerouted.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// See [`KEEPALIVE_INTERVAL`].
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long open connections get to finish once the process stops serving (its own drain — the
/// programmer's running tasks, the manager's cancellations — is already done by then).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Longest an HTTP/1.1 connection may take to send a request's head, and to start the next one
/// once idle: a caller that opens connections and sends nothing (or a byte now and then) cannot
/// hold them, and the file descriptors they cost, for ever. hyper's own default, which it applies
/// only with a timer.
pub const HTTP1_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// A connection that may stop being trusted while it is open: resolves when it has to be closed.
pub trait Revocable {
    /// Called once, before the connection is served.
    fn revoked(&mut self) -> futures::future::BoxFuture<'static, ()>;
}

/// Plaintext: nothing to revoke (loopback-only, or `--insecure`).
impl Revocable for tokio::net::TcpStream {
    fn revoked(&mut self) -> futures::future::BoxFuture<'static, ()> {
        Box::pin(std::future::pending())
    }
}

/// Its client certificate no longer trusted after a renewal ([`crate::tls::TlsConnection::untrusted`]).
impl Revocable for crate::tls::TlsConnection {
    fn revoked(&mut self) -> futures::future::BoxFuture<'static, ()> {
        Box::pin(self.untrusted())
    }
}

/// The accept loop: every connection served by hyper (HTTP/1.1 or HTTP/2, detected per
/// connection) with HTTP/2 keepalive; on `shutdown`, stop accepting, ask every connection to
/// finish gracefully (GOAWAY; in-flight streams complete) and wait for them, at most
/// [`SHUTDOWN_GRACE`]. Like `axum::serve`, whose builder exposes no HTTP/2 settings, hence this
/// loop. Every request carries its connection's [`PeerAddr`](crate::manager::admission::PeerAddr)
/// in its extensions. A connection that is [revoked](Revocable) is closed at once, its streams
/// cut (the pool's clients follow a broken stream again with WatchTask, over a new connection).
async fn serve_connections<L>(
    mut listener: L,
    router: axum::Router,
    max_streams: u32,
    shutdown: impl Future<Output = ()> + Send + 'static,
) where
    L: axum::serve::Listener<Addr = SocketAddr>,
    L::Io: Revocable,
{
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::service::TowerToHyperService;
    // Dropped at shutdown: every connection's `stop.closed()` resolves.
    let (stop, stopping) = tokio::sync::watch::channel(());
    // Every connection holds a receiver; `done.closed()` resolves when the last one ends.
    let (done, connections) = tokio::sync::watch::channel(());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (mut io, peer) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let peer = crate::manager::admission::PeerAddr(peer);
        let service = TowerToHyperService::new(tower::ServiceExt::map_request(
            router.clone(),
            move |mut request: http::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(peer);
                request
            },
        ));
        let (stop, alive) = (stop.clone(), connections.clone());
        let mut revoked = io.revoked();
        tokio::spawn(async move {
            let mut builder = Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(HTTP1_HEADER_READ_TIMEOUT);
            builder
                .http2()
                .timer(TokioTimer::new())
                .keep_alive_interval(KEEPALIVE_INTERVAL)
                .keep_alive_timeout(KEEPALIVE_TIMEOUT)
                .max_concurrent_streams(max_streams);
            let mut conn =
                std::pin::pin!(builder.serve_connection_with_upgrades(TokioIo::new(io), service));
            // Fused: after it fired once (graceful shutdown asked), the loop polls it again.
            let mut stopped = std::pin::pin!(futures::FutureExt::fuse(stop.closed()));
            loop {
                tokio::select! {
                    result = conn.as_mut() => {
                        if let Err(e) = result {
                            tracing::trace!("connection ended: {e}");
                        }
                        break;
                    }
                    () = &mut stopped => conn.as_mut().graceful_shutdown(),
                    () = &mut revoked => break,
                }
            }
            drop(alive);
        });
    }
    drop(stopping);
    drop(listener);
    drop(connections);
    // Requests in flight finish; what still streams after the grace (subscriptions such as a
    // health Watch, which never end by themselves) is cut when the process exits.
    if tokio::time::timeout(SHUTDOWN_GRACE, done.closed())
        .await
        .is_err()
    {
        tracing::info!(
            grace_s = SHUTDOWN_GRACE.as_secs(),
            "connections still open after the shutdown grace are closed"
        );
    }
}

/// Resolves on SIGINT or SIGTERM: the processes stop accepting and drain on either.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An HTTP/1.1 request whose head never completes is answered by closing the connection
    /// after [`HTTP1_HEADER_READ_TIMEOUT`], not held open (paused clock: no real wait).
    #[tokio::test(start_paused = true)]
    async fn an_http1_head_that_never_completes_loses_its_connection() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let bound = Bound::new(listener, None).expect("plaintext listener");
        let router = axum::Router::new().route("/health", axum::routing::get(|| async { "ok" }));
        let limits = crate::config::LimitsConfig::default();
        tokio::spawn(async move { serve(bound, router, &limits, std::future::pending()).await });
        let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
        conn.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            .await
            .expect("part of a head");
        let mut rest = Vec::new();
        let closed =
            tokio::time::timeout(HTTP1_HEADER_READ_TIMEOUT * 4, conn.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "the connection is still open");
    }
}
