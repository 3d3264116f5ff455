//! Credentials re-read while the processes run (`services/reload.rs`), with real processes:
//! `pas certs renew` rewrites every certificate of a running pool and both the manager and the
//! programmer serve the new ones (on SIGHUP) without a restart, connections made before keep
//! working; a token deleted from the tokens file is refused and a new one accepted; a tokens file
//! that does not load is reported with its line and the tokens read before stay in force; a file
//! fixed later is taken up by the periodic check alone; a file emptied revokes every token; after a whole new CA, the manager
//! reaches a programmer on the new set with its own new client certificate.

use crate::common;
use crate::telemetry_support as support;

use common::pool::{
    TestPool, TestProgrammer, collect_events, sample_dispatch, state_of, wait_until,
};
use common::secure::{self, Secured, tls_channel, with_token};
use pas::contract::v1::programmer_pool_client::ProgrammerPoolClient;
use pas::contract::v1::{GetPoolStatusRequest, TaskState};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tonic::Code;
use tonic::transport::Channel;

/// A certificate's SHA-256 (hex), to compare certificates in readable failures.
fn fingerprint(der: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The fingerprint of the certificate a TLS server on `127.0.0.1:port` presents, to a client
/// trusting the pool CA of `s` and presenting the pool's `client` certificate (programmers
/// require one).
async fn served_certificate(port: u16, s: &Secured) -> String {
    let files = s.files("client");
    let config = pas::tls::rustls_client_config(&files).expect("client TLS config");
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = connector.connect(name, tcp).await.expect("TLS handshake");
    let (_, session) = tls.get_ref();
    fingerprint(&session.peer_certificates().expect("a server certificate")[0])
}

/// The fingerprint of the leaf certificate in a PEM file.
fn certificate_in(path: &Path) -> String {
    fingerprint(&pas::tls::read_certs(path).expect("PEM certificate")[0])
}

fn sighup(child: &std::process::Child) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .expect("send SIGHUP");
}

/// Waits until `line` is in `log` `times` times.
async fn wait_log(log: &Path, line: &str, times: usize, timeout: Duration) {
    wait_until(
        timeout,
        &format!("{line:?} × {times} in {}", log.display()),
        || async {
            std::fs::read_to_string(log)
                .unwrap_or_default()
                .matches(line)
                .count()
                >= times
        },
    )
    .await;
}

async fn pool_status_code(client: &ProgrammerPoolClient<Channel>, token: &str) -> Code {
    match client
        .clone()
        .get_pool_status(with_token(GetPoolStatusRequest {}, token))
        .await
    {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

/// The manager's `/metrics` (over HTTPS, with a `read` token, checked as Prometheus text): the
/// value of the series `name` with exactly `labels` (`None` when there is none).
async fn metric(
    pool: &TestPool,
    s: &Secured,
    name: &str,
    labels: Vec<(&str, &str)>,
) -> Option<f64> {
    let text = secure::https_client(&s.files("client"))
        .get(format!("https://127.0.0.1:{}/metrics", pool.manager_port))
        .bearer_auth(&s.read)
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text");
    let samples = support::parse_exposition(&text);
    support::Scrape { text, samples }.get(name, &labels)
}

/// A health Watch on the manager over a connection of its own, made with the pool's `client`
/// certificate as the files are now; returned after its first answer.
async fn health_watch(
    port: u16,
    s: &Secured,
) -> tonic::Streaming<tonic_health::pb::HealthCheckResponse> {
    let channel = tls_channel(port, &s.files("client"), true)
        .await
        .expect("TLS connection to the manager");
    let mut stream = tonic_health::pb::health_client::HealthClient::new(channel)
        .watch(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health Watch")
        .into_inner();
    assert!(stream.message().await.expect("first answer").is_some());
    stream
}

/// Runs `pas ARGS…` for `pool`; panics with its stderr unless it succeeds.
fn pas_succeeds(pool: &TestPool, args: &[&str]) {
    let out = pool.pas_command(args).output().expect("run pas");
    assert!(
        out.status.success(),
        "pas {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A dry run through the manager (to the programmer and back) succeeds.
async fn dry_run_succeeds(client: &ProgrammerPoolClient<Channel>, token: &str) {
    let mut dry = sample_dispatch("Add docstrings to all functions");
    dry.dry_run = true;
    let stream = client
        .clone()
        .dispatch(with_token(dry, token))
        .await
        .expect("dry run accepted")
        .into_inner();
    let (_, result) = collect_events(stream).await;
    assert_eq!(state_of(&result), TaskState::Succeeded, "{result:?}");
}

#[tokio::test]
async fn renewed_certificates_and_changed_tokens_are_taken_up_without_a_restart() {
    let pool = TestPool::new(common::pool::PoolOptions {
        programmers: vec![TestProgrammer::free("001")],
        runs_aider: false,
        ..Default::default()
    });
    pool.sample_repo();
    let s = secure::secure(&pool, "[]");
    let programmer = pool.start_programmer("001");
    let mut mgr = pool.start_manager();
    let (manager_port, programmer_port) = (pool.manager_port, pool.ports["001"]);
    let client = ProgrammerPoolClient::new(
        tls_channel(manager_port, &s.files("client"), false)
            .await
            .expect("TLS connection to the manager"),
    );
    secure::wait_available_over_tls(&client, &s.read, 1, Duration::from_secs(30)).await;
    let manager_pem = s.certs.join("manager.pem");
    let programmer_pem = s.certs.join("programmer-001.pem");
    let first = certificate_in(&manager_pem);
    // The expiry of what the manager presents, as a server and to its programmers.
    let scrape = |name: &'static str, labels| metric(&pool, &s, name, labels);
    let expiry = |role| {
        scrape(
            "pas_tls_certificate_expiry_timestamp_seconds",
            vec![("role", role)],
        )
    };
    let not_after = |path: &Path| pas::tls::not_after(path).expect("a readable certificate") as f64;
    assert_eq!(expiry("server").await, Some(not_after(&manager_pem)));
    assert_eq!(expiry("client").await, Some(not_after(&manager_pem)));
    assert_eq!(served_certificate(manager_port, &s).await, first);
    assert_eq!(
        served_certificate(programmer_port, &s).await,
        certificate_in(&programmer_pem)
    );

    // Every certificate renewed with the pool's CA, then SIGHUP: both serve the new ones.
    // A connection made before, whose client certificate the same CA still trusts, stays open.
    let mut same_ca = health_watch(manager_port, &s).await;
    pas_succeeds(
        &pool,
        &["certs", "renew", "--days", "10", &s.certs.to_string_lossy()],
    );
    let renewed = certificate_in(&manager_pem);
    assert_ne!(renewed, first, "renew issued a new certificate");
    sighup(&mgr.child);
    sighup(&programmer.child);
    let wait = Duration::from_secs(30);
    wait_log(&mgr.log, "TLS certificate reloaded", 1, wait).await;
    wait_log(&mgr.log, "TLS client certificate reloaded", 1, wait).await;
    wait_log(&programmer.log, "TLS certificate reloaded", 1, wait).await;
    assert_eq!(served_certificate(manager_port, &s).await, renewed);
    // The gauges follow: a 10-day certificate now, on both sides; the reload counted; and the
    // log warns that it expires within two weeks (both sides again).
    let renewed_until = not_after(&manager_pem);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let day = 86_400.0;
    assert!(
        (now + 9.0 * day..now + 11.0 * day).contains(&renewed_until),
        "renewed for 10 days: {renewed_until} (now {now})"
    );
    assert_eq!(expiry("server").await, Some(renewed_until));
    assert_eq!(expiry("client").await, Some(renewed_until));
    for what in ["TLS certificate", "TLS client certificate"] {
        let warned = format!("{what} in use expires at");
        assert!(
            mgr.log_text().contains(&warned),
            "{warned:?} in\n{}",
            mgr.log_text()
        );
    }
    assert!(
        programmer
            .log_text()
            .contains("TLS certificate in use expires at")
    );
    let reloads = |what, outcome| {
        scrape(
            "pas_reloads_total",
            vec![("what", what), ("outcome", outcome)],
        )
    };
    let failing = |what| scrape("pas_reload_failing", vec![("what", what)]);
    assert!(reloads("TLS certificate", "reloaded").await >= Some(1.0));
    assert_eq!(failing("TLS certificate").await, Some(0.0));
    assert_eq!(
        served_certificate(programmer_port, &s).await,
        certificate_in(&programmer_pem)
    );
    // The connection made before the renewal still serves, and the manager still reaches its
    // programmer over mTLS (its channel's handshake was made with the old certificates; a
    // dry run goes to the programmer and back).
    assert_eq!(pool_status_code(&client, &s.read).await, Code::Ok);
    dry_run_succeeds(&client, &s.dispatch).await;
    assert!(
        futures::FutureExt::now_or_never(same_ca.message()).is_none(),
        "a stream on a connection the renewal still trusts goes on"
    );
    // Both processes are the ones started before: neither restarted.
    assert!(mgr.log_text().matches("manager started").count() == 1);

    // Tokens: `director` deleted, `newcomer` added.
    let hash = pas::manager::auth::token_hash;
    let newcomer = pas::manager::auth::new_token();
    let tokens_file = pool.dir.path().join("tokens.txt");
    let tokens = format!(
        "watcher read {}\nnewcomer dispatch {}\nops admin {}\n",
        hash(&s.read),
        hash(&newcomer),
        hash(&s.admin)
    );
    std::fs::write(&tokens_file, &tokens).unwrap();
    sighup(&mgr.child);
    wait_log(&mgr.log, "caller tokens reloaded", 1, wait).await;
    assert_eq!(
        pool_status_code(&client, &s.dispatch).await,
        Code::Unauthenticated,
        "a deleted token is refused"
    );
    assert_eq!(pool_status_code(&client, &newcomer).await, Code::Ok);

    // A file that does not load: named with its line, and the tokens read before stay.
    std::fs::write(&tokens_file, format!("{tokens}broken entry\n")).unwrap();
    sighup(&mgr.child);
    let named = format!("{}:4", tokens_file.display());
    wait_log(&mgr.log, &named, 1, wait).await;
    assert!(reloads("caller tokens", "failed").await >= Some(1.0));
    assert_eq!(
        failing("caller tokens").await,
        Some(1.0),
        "the files on disk do not load"
    );
    assert!(
        mgr.log_text().contains("caller tokens not reloaded"),
        "{}",
        mgr.log_text()
    );
    assert_eq!(pool_status_code(&client, &newcomer).await, Code::Ok);
    assert_eq!(
        pool_status_code(&client, &s.dispatch).await,
        Code::Unauthenticated
    );

    // Fixed without a signal: the periodic check takes it up (within CHECK_EVERY).
    let later = pas::manager::auth::new_token();
    std::fs::write(
        &tokens_file,
        format!("{tokens}latecomer read {}\n", hash(&later)),
    )
    .unwrap();
    let periodic = pas::reload::CHECK_EVERY * 3;
    wait_log(&mgr.log, "caller tokens reloaded", 2, periodic).await;
    assert_eq!(pool_status_code(&client, &later).await, Code::Ok);
    assert_eq!(failing("caller tokens").await, Some(0.0));

    // Every line deleted: every token is revoked (not kept, as a file that does not load is).
    let reloads_so_far = mgr.log_text().matches("caller tokens reloaded").count();
    std::fs::write(&tokens_file, "# every caller revoked\n").unwrap();
    sighup(&mgr.child);
    wait_log(&mgr.log, "caller tokens reloaded", reloads_so_far + 1, wait).await;
    assert!(
        mgr.log_text().contains("no tokens left in"),
        "{}",
        mgr.log_text()
    );
    for token in [&s.read, &s.admin, &newcomer, &later] {
        assert_eq!(
            pool_status_code(&client, token).await,
            Code::Unauthenticated
        );
    }
    std::fs::write(&tokens_file, &tokens).unwrap();
    sighup(&mgr.child);
    wait_log(&mgr.log, "caller tokens reloaded", reloads_so_far + 2, wait).await;
    assert_eq!(pool_status_code(&client, &newcomer).await, Code::Ok);

    // A new CA and a whole new set (`init --force`): the manager takes up its new client
    // certificate and the new CA as well, so a programmer started on the new set is reached
    // over mTLS without restarting the manager (it trusts only the new CA, and requires a client
    // certificate the new CA signed).
    // Counted before the new set is written: the periodic check may take it up before SIGHUP.
    let client_reloads = mgr
        .log_text()
        .matches("TLS client certificate reloaded")
        .count();
    let server_reloads = mgr.log_text().matches("TLS certificate reloaded").count();
    // A connection made with a client certificate of the old CA: closed once the manager trusts
    // only the new one (it was let in by a trust that no longer holds).
    let mut old_ca = health_watch(manager_port, &s).await;
    pas_succeeds(
        &pool,
        &["certs", "init", "--force", &s.certs.to_string_lossy()],
    );
    sighup(&mgr.child);
    wait_log(
        &mgr.log,
        "TLS client certificate reloaded",
        client_reloads + 1,
        wait,
    )
    .await;
    wait_log(
        &mgr.log,
        "TLS certificate reloaded",
        server_reloads + 1,
        wait,
    )
    .await;
    tokio::time::timeout(wait, async {
        while let Ok(Some(_)) = old_ca.message().await {}
    })
    .await
    .expect("the connection of a client the new CA does not trust is closed");
    wait_log(&mgr.log, "not trusted by the renewed TLS settings", 1, wait).await;
    drop(programmer);
    let programmer = pool.start_programmer("001");
    let client = ProgrammerPoolClient::new(
        tls_channel(manager_port, &s.files("client"), false)
            .await
            .expect("TLS connection to the manager with the new CA"),
    );
    secure::wait_available_over_tls(&client, &s.read, 1, Duration::from_secs(60)).await;
    dry_run_succeeds(&client, &newcomer).await;

    // No token, old or new, ever reaches a log.
    for log in [mgr.log_text(), programmer.log_text()] {
        for token in s
            .tokens()
            .into_iter()
            .chain([newcomer.as_str(), later.as_str()])
        {
            assert!(!log.contains(token), "a token in a log");
        }
    }
    assert!(
        mgr.child.try_wait().is_ok_and(|exit| exit.is_none()),
        "the manager still runs"
    );
}
