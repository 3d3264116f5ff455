//! A secured test pool: `pas certs init` for the pool's processes, a tokens file with one token
//! of each role (and a second `dispatch` caller), and the `tls:` + `auth:` sections appended to
//! the pool's configuration. Clients for it: gRPC channels with or without a client certificate,
//! and an HTTPS client.

#![allow(dead_code)]

use super::pool::TestPool;
use pas::tls::TlsFiles;
use std::path::{Path, PathBuf};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// Tokens of a secured pool, one per role, and where its certificates are.
#[derive(Debug, Clone)]
pub struct Secured {
    /// Directory written by `pas certs init`.
    pub certs: PathBuf,
    /// Role `read`, name `watcher`.
    pub read: String,
    /// Role `dispatch`, name `director`.
    pub dispatch: String,
    /// Role `dispatch`, name `intruder` (another caller).
    pub other: String,
    /// Role `admin`, name `ops`.
    pub admin: String,
}

impl Secured {
    /// The TLS files of process `name` (`manager`, `programmer-001`, `client`).
    pub fn files(&self, name: &str) -> TlsFiles {
        TlsFiles {
            ca: self.certs.join("ca.pem"),
            cert: self.certs.join(format!("{name}.pem")),
            key: self.certs.join(format!("{name}-key.pem")),
        }
    }

    /// Every token (to grep logs for).
    pub fn tokens(&self) -> [&str; 4] {
        [&self.read, &self.dispatch, &self.other, &self.admin]
    }
}

/// Runs `pas certs init DIR` for `pool`'s config (panics with its output on failure).
pub fn certs_init(pool: &TestPool, dir: &Path) {
    let out = pool
        .pas_command(&["certs", "init", &dir.to_string_lossy()])
        .output()
        .expect("run pas certs init");
    assert!(
        out.status.success(),
        "pas certs init failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Issues certificates and tokens for `pool` and appends `tls:` and `auth:` to its config, with
/// `open` as `auth.open` (e.g. `[]` or `[status, metrics]`). Call before starting processes.
pub fn secure(pool: &TestPool, open: &str) -> Secured {
    let certs = pool.dir.path().join("certs");
    certs_init(pool, &certs);
    let token = || pas::manager::auth::new_token();
    let secured = Secured {
        certs: certs.clone(),
        read: token(),
        dispatch: token(),
        other: token(),
        admin: token(),
    };
    let hash = pas::manager::auth::token_hash;
    let tokens = format!(
        "# test tokens\nwatcher read {}\ndirector dispatch {}\nintruder dispatch {}\nops admin {}\n",
        hash(&secured.read),
        hash(&secured.dispatch),
        hash(&secured.other),
        hash(&secured.admin)
    );
    let tokens_file = pool.dir.path().join("tokens.txt");
    std::fs::write(&tokens_file, tokens).expect("write tokens file");
    pool.append_config(&format!(
        "tls:\n  ca: \"{c}/ca.pem\"\n  cert: \"{c}/{{name}}.pem\"\n  key: \"{c}/{{name}}-key.pem\"\nauth:\n  tokens_file: \"{}\"\n  open: {open}\n",
        tokens_file.display(),
        c = certs.display(),
    ));
    secured
}

/// A TLS channel to `127.0.0.1:port` trusting the pool CA of `files`, presenting `files`'s
/// certificate when `identity`. Connect errors are returned (tests of refused clients need them).
pub async fn tls_channel(
    port: u16,
    files: &TlsFiles,
    identity: bool,
) -> Result<Channel, tonic::transport::Error> {
    let read = |p: &Path| std::fs::read(p).expect("read PEM file");
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(&files.ca)))
        .domain_name("127.0.0.1");
    if identity {
        tls = tls.identity(Identity::from_pem(read(&files.cert), read(&files.key)));
    }
    Endpoint::from_shared(format!("https://127.0.0.1:{port}"))?
        .tls_config(tls)?
        .connect()
        .await
}

/// A plaintext (h2c) channel to `127.0.0.1:port`.
pub async fn plain_channel(port: u16) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_shared(format!("http://127.0.0.1:{port}"))?
        .connect()
        .await
}

/// An HTTPS client trusting the pool CA (with the `client` certificate when the files have one).
pub fn https_client(files: &TlsFiles) -> reqwest::Client {
    reqwest::Client::builder()
        .use_preconfigured_tls(pas::tls::rustls_client_config(files).expect("client TLS config"))
        .build()
        .expect("https client")
}

/// `request` with `authorization: Bearer <token>`.
pub fn with_token<T>(request: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(request);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("token header"),
    );
    request
}

/// Waits (up to `timeout`) until the manager `client` talks to, asked with `token`, sees `n`
/// programmers available: proof that its own channels to them (mTLS with the manager's
/// certificate) work.
pub async fn wait_available_over_tls(
    client: &pas::contract::v1::programmer_pool_client::ProgrammerPoolClient<Channel>,
    token: &str,
    n: u32,
    timeout: std::time::Duration,
) {
    super::pool::wait_until(
        timeout,
        &format!("the manager to see {n} programmer(s) available over mTLS"),
        || {
            let mut c = client.clone();
            let token = token.to_string();
            async move {
                c.get_pool_status(with_token(
                    pas::contract::v1::GetPoolStatusRequest {},
                    &token,
                ))
                .await
                .is_ok_and(|s| s.into_inner().available == n)
            }
        },
    )
    .await;
}
