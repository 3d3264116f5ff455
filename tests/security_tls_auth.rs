//! Issue 10's transport and caller security, with real processes: `pas certs init`, TLS on every
//! port, programmers that require a pool client certificate (mTLS), bearer tokens with roles and
//! task ownership on the manager, tokens never in logs, and the loopback-only default.

use crate::common;

use common::pool::{TestPool, TestProgrammer, collect_events, sample_dispatch, state_of};
use common::secure::{self, Secured, plain_channel, tls_channel, with_token};
use pas::contract::v1::programmer_client::ProgrammerClient;
use pas::contract::v1::programmer_pool_client::ProgrammerPoolClient;
use pas::contract::v1::{
    CancelTaskRequest, GetPoolStatusRequest, GetStatusRequest, GetTaskRequest, TaskState,
};
use std::time::Duration;
use tonic::Code;
use tonic::transport::Channel;

fn one_programmer() -> TestPool {
    let pool = TestPool::new(common::pool::PoolOptions {
        programmers: vec![TestProgrammer::free("001")],
        ..Default::default()
    });
    pool.sample_repo();
    pool
}

/// A TLS client of the manager (no client certificate: callers authenticate with tokens).
async fn manager(pool: &TestPool, s: &Secured) -> ProgrammerPoolClient<Channel> {
    let channel = tls_channel(pool.manager_port, &s.files("client"), false)
        .await
        .expect("TLS connection to the manager");
    ProgrammerPoolClient::new(channel)
}

/// Waits until the manager, over TLS, sees its programmer available: proof that its own channel
/// to the programmer (mTLS with the manager's certificate) works.
async fn wait_programmer_available(client: &ProgrammerPoolClient<Channel>, s: &Secured) {
    secure::wait_available_over_tls(client, &s.read, 1, Duration::from_secs(30)).await;
}

fn code_of<T: std::fmt::Debug>(result: Result<T, tonic::Status>) -> Code {
    match result {
        Ok(v) => panic!("expected an error status, got {v:?}"),
        Err(status) => status.code(),
    }
}

#[tokio::test]
async fn programmers_accept_only_pool_certificates_and_the_manager_runs_tasks_over_mtls() {
    let pool = one_programmer();
    let s = secure::secure(&pool, "[]");
    // A second, unrelated CA: its client certificate must not open a programmer.
    let stranger = pool.dir.path().join("stranger-certs");
    secure::certs_init(&pool, &stranger);
    let mut programmer = pool.start_programmer("001");
    let mut mgr = pool.start_manager();
    let port = pool.ports["001"];

    // Plaintext gRPC to the programmer: no answer.
    let plain = match plain_channel(port).await {
        Ok(channel) => ProgrammerClient::new(channel)
            .get_status(GetStatusRequest {})
            .await
            .map(|_| ()),
        Err(e) => Err(tonic::Status::unavailable(e.to_string())),
    };
    assert!(plain.is_err(), "a plaintext client must not be served");

    // TLS without a client certificate, and with a certificate of another CA: refused.
    for (what, files, identity) in [
        ("no client certificate", s.files("client"), false),
        (
            "a certificate from another CA",
            pas::tls::TlsFiles {
                ca: s.certs.join("ca.pem"),
                cert: stranger.join("client.pem"),
                key: stranger.join("client-key.pem"),
            },
            true,
        ),
        (
            "a programmer's certificate (servers only)",
            s.files("programmer-001"),
            true,
        ),
    ] {
        let answer = match tls_channel(port, &files, identity).await {
            Ok(channel) => ProgrammerClient::new(channel)
                .get_status(GetStatusRequest {})
                .await
                .map(|_| ()),
            Err(e) => Err(tonic::Status::unavailable(e.to_string())),
        };
        assert!(
            answer.is_err(),
            "{what}: the programmer must refuse the call"
        );
    }

    // The pool's client certificate opens it.
    let channel = tls_channel(port, &s.files("client"), true)
        .await
        .expect("mTLS connection with the pool client certificate");
    let status = ProgrammerClient::new(channel)
        .get_status(GetStatusRequest {})
        .await
        .expect("GetStatus over mTLS")
        .into_inner();
    assert_eq!(status.programmer_id, "001");

    // Through the manager, over TLS with a token: a real task (aider + llm-sim) succeeds.
    let client = manager(&pool, &s).await;
    wait_programmer_available(&client, &s).await;
    let stream = client
        .clone()
        .dispatch(with_token(
            sample_dispatch("Add docstrings to all functions"),
            &s.dispatch,
        ))
        .await
        .expect("Dispatch accepted")
        .into_inner();
    let (_, result) = collect_events(stream).await;
    assert_eq!(
        state_of(&result),
        TaskState::Succeeded,
        "task over TLS failed: {result:?}\n{}\n{}",
        mgr.log_text(),
        programmer.log_text()
    );

    // HTTPS on the same port: /health open, the status document needs a token.
    let https = secure::https_client(&s.files("client"));
    let base = format!("https://127.0.0.1:{}", pool.manager_port);
    let health = https.get(format!("{base}/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let status = https
        .get(format!("{base}/programmer_pool/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(status.status(), 401);
    let status = https
        .get(format!("{base}/programmer_pool/status"))
        .bearer_auth(&s.read)
        .send()
        .await
        .unwrap();
    assert_eq!(status.status(), 200);
    let doc: serde_json::Value = status.json().await.unwrap();
    assert_eq!(doc["available"], 1, "{doc}");
    mgr.kill();
    programmer.kill();
}

#[tokio::test]
async fn tokens_decide_who_may_call_what_and_see_which_task() {
    let pool = one_programmer();
    let s = secure::secure(&pool, "[metrics]");
    let mut programmer = pool.start_programmer("001");
    let mut mgr = pool.start_manager();
    let client = manager(&pool, &s).await;
    wait_programmer_available(&client, &s).await;
    let mut c = client.clone();
    let dry = || {
        let mut req = sample_dispatch("Add docstrings to all functions");
        req.dry_run = true;
        req
    };

    // No token, an unknown token: UNAUTHENTICATED, for every method.
    assert_eq!(code_of(c.dispatch(dry()).await), Code::Unauthenticated);
    assert_eq!(
        code_of(c.get_pool_status(GetPoolStatusRequest {}).await),
        Code::Unauthenticated
    );
    assert_eq!(
        code_of(c.dispatch(with_token(dry(), "pas_not-a-known-token")).await),
        Code::Unauthenticated
    );
    // A read token may read the pool but not dispatch.
    c.get_pool_status(with_token(GetPoolStatusRequest {}, &s.read))
        .await
        .expect("read token reads the pool status");
    assert_eq!(
        code_of(c.dispatch(with_token(dry(), &s.read)).await),
        Code::PermissionDenied
    );

    // The dispatch token runs a task; it is recorded as the owner.
    let mut req = dry();
    req.task_id = "owned-by-director".into();
    let stream = c
        .dispatch(with_token(req.clone(), &s.dispatch))
        .await
        .expect("dispatch token dispatches")
        .into_inner();
    let (_, result) = collect_events(stream).await;
    assert_eq!(state_of(&result), TaskState::Succeeded, "{result:?}");
    let get = |token: &str| {
        with_token(
            GetTaskRequest {
                task_id: "owned-by-director".into(),
            },
            token,
        )
    };
    let record = c
        .get_task(get(&s.dispatch))
        .await
        .expect("the owner reads its task")
        .into_inner();
    assert_eq!(record.owner, "director");
    // Another dispatch caller can neither read, cancel nor replay it; admin can read it.
    assert_eq!(
        code_of(c.get_task(get(&s.other)).await),
        Code::PermissionDenied
    );
    assert_eq!(
        code_of(
            c.cancel_task(with_token(
                CancelTaskRequest {
                    task_id: "owned-by-director".into()
                },
                &s.other
            ))
            .await
        ),
        Code::PermissionDenied
    );
    assert_eq!(
        code_of(c.dispatch(with_token(req.clone(), &s.other)).await),
        Code::AlreadyExists,
        "another caller repeating the id must not get the owner's result"
    );
    assert_eq!(
        c.get_task(get(&s.admin))
            .await
            .expect("admin reads any task")
            .into_inner()
            .owner,
        "director"
    );
    assert_eq!(
        code_of(c.get_task(get(&s.read)).await),
        Code::PermissionDenied
    );

    // Probes stay open: grpc.health without a token, /health; metrics opened by the config.
    let mut health = tonic_health::pb::health_client::HealthClient::new(
        tls_channel(pool.manager_port, &s.files("client"), false)
            .await
            .unwrap(),
    );
    let served = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "pas.v1.ProgrammerPool".into(),
        })
        .await
        .expect("health without a token")
        .into_inner();
    assert_eq!(served.status, 1, "SERVING");
    let https = secure::https_client(&s.files("client"));
    let status_of = |path: &str| {
        let request = https.get(format!("https://127.0.0.1:{}{path}", pool.manager_port));
        async move { request.send().await.expect("HTTPS request").status() }
    };
    assert_eq!(status_of("/metrics").await, 200);
    assert_eq!(status_of("/programmer_pool/status").await, 401);

    // The CLI: PAS_TOKEN carries the token (over TLS with the config's client certificate).
    let cli = |token: Option<&str>, args: &[&str]| {
        let mut cmd = pool.pas_command(args);
        cmd.env_remove("PAS_TOKEN");
        if let Some(t) = token {
            cmd.env("PAS_TOKEN", t);
        }
        cmd.output().expect("run pas")
    };
    let dispatch_args = [
        "dispatch",
        "Add docstrings to all functions",
        "--files",
        "src/module.py",
        "--workspace",
        "sample",
        "--dry-run",
        "--task-id",
        "tls-cli-1",
    ];
    let out = cli(Some(&s.dispatch), &dispatch_args);
    assert!(
        out.status.success(),
        "pas dispatch with PAS_TOKEN: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // pas watch and pas tasks connect the same way: TLS from the config, PAS_TOKEN; a dispatch
    // token sees its own task, another caller's token does not.
    let text = |out: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let out = cli(Some(&s.dispatch), &["watch", "tls-cli-1"]);
    assert!(
        out.status.success() && text(&out).contains("task       tls-cli-1"),
        "{}",
        text(&out)
    );
    let out = cli(Some(&s.other), &["watch", "tls-cli-1"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("error: PERMISSION_DENIED: "),
        "{}",
        text(&out)
    );
    let listed = |token: &str| {
        let out = cli(Some(token), &["tasks", "--json"]);
        assert!(out.status.success(), "{}", text(&out));
        let tasks: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        tasks
            .as_array()
            .expect("array")
            .iter()
            .map(|t| t["task_id"].as_str().unwrap_or_default().to_string())
            .collect::<Vec<_>>()
    };
    assert!(listed(&s.dispatch).contains(&"tls-cli-1".to_string()));
    assert!(listed(&s.admin).contains(&"tls-cli-1".to_string()));
    assert!(!listed(&s.other).contains(&"tls-cli-1".to_string()));
    let out = cli(None, &["tasks"]);
    assert!(
        out.status.code() == Some(1) && text(&out).contains("error: UNAUTHENTICATED: "),
        "{}",
        text(&out)
    );
    let out = cli(None, &dispatch_args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success() && text.contains("bearer token"),
        "{text}"
    );
    let out = cli(Some(&s.read), &["status", "--json"]);
    assert!(
        out.status.success(),
        "pas status --json with a read token: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(Some(&s.read), &["status"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("1 of 1 programmers available"), "{table}");

    // No token appears in any log.
    mgr.kill();
    programmer.kill();
    for log in [mgr.log_text(), programmer.log_text()] {
        for token in s.tokens() {
            assert!(!log.contains(token), "a token leaked into a log:\n{log}");
        }
    }
}

/// Runs `pas ARGS…` for `pool` and waits for its first stdout line or its exit.
fn start_or_exit(pool: &TestPool, args: &[&str]) -> (std::process::Child, String) {
    use std::io::BufRead;
    let mut child = pool
        .pas_command(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn pas");
    let mut line = String::new();
    let _ = std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line);
    (child, line)
}

#[test]
fn without_tls_and_tokens_only_loopback_is_served_unless_insecure() {
    let pool = one_programmer();
    const EXPOSED_PROGRAMMER: [&str; 7] = [
        "programmer",
        "--id",
        "001",
        "--host",
        "0.0.0.0",
        "--port",
        "0",
    ];
    // Refused beyond loopback, with a message that says why and what to do.
    for args in [
        &["manager", "--host", "0.0.0.0", "--port", "0"][..],
        &EXPOSED_PROGRAMMER[..],
    ] {
        let out = pool.pas_command(args).output().expect("run pas");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} must not start");
        assert!(
            stderr.contains("refusing to listen on 0.0.0.0") && stderr.contains("--insecure"),
            "{args:?}: {stderr}"
        );
    }
    // --insecure starts, with a warning in the log.
    let insecure = [&EXPOSED_PROGRAMMER[..], &["--insecure"]].concat();
    let (mut child, line) = start_or_exit(&pool, &insecure);
    assert!(line.contains("listening on 0.0.0.0:"), "{line:?}");
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("without TLS (--insecure)"),
        "no warning: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // With tls: and auth: configured, the manager serves any address without the flag.
    let _ = secure::secure(&pool, "[]");
    let (mut child, line) = start_or_exit(&pool, &["manager", "--host", "0.0.0.0", "--port", "0"]);
    let _ = child.kill();
    let _ = child.wait();
    assert!(line.contains("listening on 0.0.0.0:"), "{line:?}");
}
