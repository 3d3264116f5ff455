//! Client channels to the mesh's processes: the one place that knows addresses, schemes, TLS and
//! bearer tokens, for the manager (calling programmers) and the CLI (calling both).

use crate::coalesce::Coalesced;
use crate::tls::TlsFiles;
use tokio_util::either::Either;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

/// The environment variable the CLI reads its bearer token from.
pub const ENV_TOKEN: &str = "PAS_TOKEN";

/// How a client reaches the pool: TLS (the pool CA, and a certificate to present when its files
/// exist) and a bearer token for the manager.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ClientSecurity {
    /// TLS files; `None` = plaintext (h2c).
    pub tls: Option<TlsFiles>,
    /// Bearer token sent as `authorization` metadata; never printed.
    pub token: Option<String>,
}

impl std::fmt::Debug for ClientSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSecurity")
            .field("tls", &self.tls)
            .field("token", &self.token.as_ref().map(|_| "[REDACTED]"))
            .finish()
    }
}

impl ClientSecurity {
    /// What the CLI uses: the config's `tls:` files for the `client` name (when the config
    /// loads and has the section) and `PAS_TOKEN`.
    pub fn for_cli(config_path: &std::path::Path) -> Self {
        Self::for_config(crate::config::Config::load(config_path).ok().as_ref())
    }

    /// [`ClientSecurity::for_cli`] with the configuration already loaded (or none).
    pub fn for_config(config: Option<&crate::config::Config>) -> Self {
        Self {
            tls: config.and_then(|c| c.tls_files("client")),
            token: std::env::var(ENV_TOKEN).ok().filter(|t| !t.is_empty()),
        }
    }

    /// `https` with TLS, else `http`: the URL scheme of gRPC and HTTP calls alike.
    pub fn scheme(&self) -> &'static str {
        scheme(self.tls.as_ref())
    }
}

/// `https` when TLS files are given, else `http`.
pub fn scheme(tls: Option<&TlsFiles>) -> &'static str {
    if tls.is_some() { "https" } else { "http" }
}

/// Why a channel could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The address does not make a URI.
    #[error("bad address {addr:?}: {source}")]
    Address {
        /// The address.
        addr: String,
        /// tonic's reason.
        source: tonic::transport::Error,
    },
    /// The TLS files are unusable.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The host of a TLS address cannot be checked against a certificate.
    #[error("{addr}: the host is not a name a certificate can carry: {reason}")]
    ServerName {
        /// The address.
        addr: String,
        /// rustls's reason.
        reason: String,
    },
    /// The token cannot be sent as a header value.
    #[error("{ENV_TOKEN}: the token has characters a header cannot carry")]
    Token,
}

/// The address to connect to for a process configured to listen on `host:port`: wildcard hosts
/// become loopback, IPv6 hosts get brackets.
pub fn connect_addr(host: &str, port: u16) -> String {
    match host {
        "" | "0.0.0.0" => format!("127.0.0.1:{port}"),
        "::" | "[::]" => format!("[::1]:{port}"),
        h if h.contains(':') && !h.starts_with('[') => format!("[{h}]:{port}"),
        h => format!("{h}:{port}"),
    }
}

/// The host part of a `host:port` address (brackets of IPv6 removed): the name a server's
/// certificate must carry.
pub fn host_of(addr: &str) -> &str {
    let host = match addr.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host,
        _ => addr,
    };
    host.trim_start_matches('[').trim_end_matches(']')
}

/// An endpoint for `addr` (`host:port`): `https` with the pool CA (and this client's certificate
/// when its files exist) when `tls` is given, else `http`; HTTP/2 keepalive on.
pub fn endpoint(addr: &str, tls: Option<&TlsFiles>) -> Result<Endpoint, ChannelError> {
    let scheme = scheme(tls);
    let bad = |source| ChannelError::Address {
        addr: addr.to_string(),
        source,
    };
    // A server that froze or lost its host is noticed, so a followed stream ends instead of
    // hanging (the same period servers use towards their clients).
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
        .map_err(bad)?
        .http2_keep_alive_interval(crate::serve::KEEPALIVE_INTERVAL)
        .keep_alive_timeout(crate::serve::KEEPALIVE_TIMEOUT);
    if let Some(files) = tls {
        let identity = files.cert.exists() && files.key.exists();
        endpoint = endpoint
            .tls_config(crate::tls::client_config(files, host_of(addr), identity)?)
            .map_err(bad)?;
    }
    Ok(endpoint)
}

/// Makes channels to one server that may run for as long as the process: its endpoint (HTTP/2
/// keepalive, connect timeout) and, with TLS, the process's client settings *as they are when
/// each connection is made* ([`crate::tls::ClientTls`]), so a renewed certificate or CA is used
/// from the next connection on instead of from the next restart. (tonic's own TLS settings are
/// fixed when the endpoint is made; here the handshake is ours, and the channel runs HTTP/2
/// over the stream it returns.) What the manager reaches its programmers with.
#[derive(Debug, Clone)]
pub struct Dialer {
    endpoint: Endpoint,
    tls: Option<TlsDial>,
}

impl Dialer {
    /// A dialer for `addr` (`host:port`): TLS with `tls`'s current settings when given (the
    /// server must present a certificate for the host of `addr`), else h2c.
    pub fn new(addr: &str, tls: Option<&crate::tls::ClientTls>) -> Result<Self, ChannelError> {
        // `http` (the endpoint without TLS): with TLS the stream is already TLS when tonic
        // gets it. The TCP connection is ours too (`connect_tcp`, `TCP_NODELAY`): the
        // endpoint's own TCP settings would not reach it.
        let endpoint = endpoint(addr, None)?;
        let tls = match tls {
            None => None,
            Some(config) => {
                let name = rustls::pki_types::ServerName::try_from(host_of(addr).to_string())
                    .map_err(|e| ChannelError::ServerName {
                        addr: addr.to_string(),
                        reason: e.to_string(),
                    })?;
                Some(TlsDial {
                    config: config.clone(),
                    server_name: name,
                })
            }
        };
        Ok(Self { endpoint, tls })
    }

    /// The same dialer with `edit` applied to its endpoint (timeouts and the like).
    pub fn with_endpoint(mut self, edit: impl FnOnce(Endpoint) -> Endpoint) -> Self {
        self.endpoint = edit(self.endpoint);
        self
    }

    /// A channel that connects on first use (and reconnects by itself), on the calling runtime.
    /// Its writes are [`Coalesced`]: a request's HEADERS and DATA leave in one write.
    pub fn connect_lazy(&self) -> Channel {
        let tls = self.tls.clone();
        self.endpoint
            .connect_with_connector_lazy(tower::service_fn(move |uri: http::Uri| {
                let tls = tls.clone();
                async move {
                    let tcp = connect_tcp(&uri).await?;
                    let io = match tls {
                        None => Either::Left(tcp),
                        Some(dial) => Either::Right(dial.handshake(tcp).await?),
                    };
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(Coalesced::new(io)))
                }
            }))
    }
}

/// The TCP connection to `uri`'s host and port, `TCP_NODELAY` set.
async fn connect_tcp(uri: &http::Uri) -> std::io::Result<tokio::net::TcpStream> {
    let invalid =
        |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, what.to_string());
    let host = uri
        .host()
        .ok_or_else(|| invalid("no host in the address"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri
        .port_u16()
        .ok_or_else(|| invalid("no port in the address"))?;
    let tcp = tokio::net::TcpStream::connect((host, port)).await?;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

/// The TLS handshake of a [`Dialer`]: the settings read at each connection.
#[derive(Clone)]
struct TlsDial {
    config: crate::tls::ClientTls,
    server_name: rustls::pki_types::ServerName<'static>,
}

impl std::fmt::Debug for TlsDial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsDial")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl TlsDial {
    /// TLS over `tcp` with the client settings as they are now.
    async fn handshake(
        self,
        tcp: tokio::net::TcpStream,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let connector = tokio_rustls::TlsConnector::from(self.config.borrow().clone());
        connector.connect(self.server_name, tcp).await
    }
}

/// Adds `authorization: Bearer <token>` to every call (nothing without a token).
#[derive(Clone, Default)]
pub struct BearerToken(Option<MetadataValue<Ascii>>);

impl BearerToken {
    /// The interceptor for `token`.
    pub fn new(token: Option<&str>) -> Result<Self, ChannelError> {
        token
            .map(|t| {
                let mut value: MetadataValue<Ascii> = format!("Bearer {t}")
                    .parse()
                    .map_err(|_| ChannelError::Token)?;
                value.set_sensitive(true);
                Ok(value)
            })
            .transpose()
            .map(BearerToken)
    }
}

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken([REDACTED])")
    }
}

impl Interceptor for BearerToken {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A channel that carries the caller's token: what the CLI's pool clients run on.
pub type AuthChannel = InterceptedService<Channel, BearerToken>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_addr_maps_wildcards_to_loopback() {
        assert_eq!(connect_addr("0.0.0.0", 6151), "127.0.0.1:6151");
        assert_eq!(connect_addr("", 1), "127.0.0.1:1");
        assert_eq!(connect_addr("::", 2), "[::1]:2");
        assert_eq!(connect_addr("::1", 3), "[::1]:3");
        assert_eq!(connect_addr("127.0.0.1", 4), "127.0.0.1:4");
        assert_eq!(connect_addr("localhost", 5), "localhost:5");
    }

    #[test]
    fn host_of_strips_port_and_brackets() {
        assert_eq!(host_of("127.0.0.1:6141"), "127.0.0.1");
        assert_eq!(host_of("[::1]:6141"), "::1");
        assert_eq!(host_of("pas-manager"), "pas-manager");
    }

    #[test]
    fn the_token_is_never_in_debug_output() {
        let security = ClientSecurity {
            tls: None,
            token: Some("pas_secret".into()),
        };
        assert!(!format!("{security:?}").contains("pas_secret"));
        let bearer = BearerToken::new(Some("pas_secret")).unwrap();
        assert!(!format!("{bearer:?}").contains("pas_secret"));
    }
}
