//! Interop with Python: a client generated from `proto/` with grpcio-tools at test time
//! (`tests/interop/python/pool_client.py`) dispatches a real task to a real pool (llm-sim, real
//! aider, real git) and reads the stream to its result, cancels another task mid-stream through
//! `CancelTask`, and reads the pool status. Against a secured pool it dispatches a real task over
//! TLS with a `dispatch` token (`--cacert/--cert/--key/--token`), and its Dispatch is refused with a
//! `read` token (PERMISSION_DENIED) or none (UNAUTHENTICATED). The client prints JSON lines; this
//! test checks them.
//!
//! Needs `scripts/install-interop.sh` (the `.interop-venv`) and the aider venv; fails, never skips,
//! without them.

use crate::common;
use crate::interop_support as support;

use common::pool::TestProgrammer;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use support::{ClientOutput, RunningPool, TaskStream};

/// Requests to programmer 003's models never get an answer, so its task is surely still running
/// when the client cancels it.
const HANGING_MODELS: &str = "rules:\n  - model: \"*slow-coder*\"\n    fault: hang\n";

const CLIENT_TIMEOUT: Duration = Duration::from_secs(150);

struct PyClient {
    python: PathBuf,
    script: PathBuf,
    gen_dir: PathBuf,
    addr: String,
    /// Options before the command: TLS and token (empty: plaintext).
    options: Vec<String>,
}

impl PyClient {
    /// Generates the client from `proto/` with grpcio-tools into `gen_dir` (checking the modules
    /// it wrote) and returns it pointed at `mesh`'s manager, in plaintext.
    fn generate(mesh: &RunningPool, gen_dir: &Path) -> PyClient {
        let venv = support::interop_venv();
        let client = PyClient {
            python: venv.join("bin/python"),
            script: Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/interop/python/pool_client.py"),
            gen_dir: gen_dir.to_path_buf(),
            addr: mesh.manager_target(),
            options: Vec::new(),
        };
        let mut generate = Command::new(&client.python);
        generate
            .arg(&client.script)
            .arg("generate")
            .arg("--proto-dir")
            .arg(support::proto_dir())
            .arg("--out")
            .arg(&client.gen_dir);
        let out = support::run_client(generate, Duration::from_secs(60));
        out.assert_success("grpc_tools.protoc");
        let generated = &out.json_lines()[0]["generated"];
        for module in [
            "pas/v1/pool_pb2.py",
            "pas/v1/pool_pb2_grpc.py",
            "pas/v1/task_pb2.py",
            "pas/v1/programmer_pb2.py",
        ] {
            assert!(
                generated
                    .as_array()
                    .is_some_and(|a| a.contains(&json!(module))),
                "{module} not generated: {generated}"
            );
            assert!(
                client.gen_dir.join(module).is_file(),
                "{module} missing on disk"
            );
        }
        client
    }

    /// The same client with other options (TLS, token).
    fn with_options(&self, options: Vec<String>) -> PyClient {
        PyClient {
            python: self.python.clone(),
            script: self.script.clone(),
            gen_dir: self.gen_dir.clone(),
            addr: self.addr.clone(),
            options,
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.python);
        cmd.arg(&self.script)
            .arg("--gen")
            .arg(&self.gen_dir)
            .args(["--addr", &self.addr])
            .args(&self.options)
            .args(args);
        cmd
    }

    /// Runs a client command to its end, whatever its exit status.
    fn output(&self, args: &[&str]) -> ClientOutput {
        support::run_client(self.command(args), CLIENT_TIMEOUT)
    }

    /// Runs a client command and returns its JSON lines (the client must exit 0).
    fn run(&self, args: &[&str], mesh: &RunningPool) -> Vec<Value> {
        let out = self.output(args);
        if !out.status.success() {
            panic!(
                "python client {args:?} failed ({}):\n--- stdout ---\n{}\n--- stderr ---\n{}\n{}",
                out.status,
                out.stdout,
                out.stderr,
                mesh.logs()
            );
        }
        out.json_lines()
    }
}

/// Splits the client's lines into the checked task stream and the other lines; the stream must
/// have ended cleanly (`{"end":"OK"}` last).
fn task_stream(lines: &[Value], context: &str) -> (TaskStream, Vec<Value>) {
    assert_eq!(
        lines.last(),
        Some(&json!({"end": "OK"})),
        "the stream must end cleanly\n{context}"
    );
    let mut events = Vec::new();
    let mut other = Vec::new();
    for line in lines {
        match line.get("event") {
            Some(ev) => {
                // The client's own summary must agree with the event it printed.
                assert_eq!(
                    support::as_u64(line.get("seq")),
                    support::as_u64(ev.get("seq")),
                    "{line}"
                );
                assert!(
                    ev.get(line["kind"].as_str().unwrap_or("?")).is_some(),
                    "kind mismatch: {line}"
                );
                events.push(ev.clone());
            }
            None => other.push(line.clone()),
        }
    }
    (TaskStream::check(events, context), other)
}

#[test]
fn python_generated_client_dispatches_cancels_and_reads_pool_status() {
    let slow = TestProgrammer {
        primary: "ollama/slow-coder:7b".into(),
        backup: "ollama/slow-coder:14b".into(),
        capabilities: vec!["slow".into(), "local".into(), "free".into()],
        ..TestProgrammer::free("003")
    };
    let mesh = RunningPool::start(
        vec![
            TestProgrammer::free("001"),
            // The real tasks go to 001 and 003 (002 would run one cold).
            TestProgrammer::free("002").without_aider(),
            slow,
        ],
        Some(HANGING_MODELS),
    );
    // 1. Generate the client from proto/ with grpcio-tools.
    let gen_dir = tempfile::tempdir().expect("temp dir");
    let client = PyClient::generate(&mesh, gen_dir.path());

    // 2. Dispatch a real task and read its stream to the result.
    let base = common::git_head(&mesh.sample());
    let request = json!({
        "task_description": "Add docstrings to all functions",
        "files": ["src/module.py"],
        "workspace": "sample",
        "run_id": "interop-python",
        "capabilities": ["fast"],
        "task_id": "py-real-1",
    })
    .to_string();
    let lines = client.run(&["dispatch", "--request", &request], &mesh);
    let context = format!("python dispatch lines: {lines:#?}\n{}", mesh.logs());
    let (stream, other) = task_stream(&lines, &context);
    assert_eq!(other, vec![json!({"end": "OK"})], "{context}");
    assert_eq!(stream.task_id, "py-real-1", "{context}");
    stream.assert_real_success(&mesh.sample(), &context);
    let programmer = stream
        .result_field("programmer_id")
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        ["001", "002"].contains(&programmer.as_str()),
        "a fast programmer must run it, got {programmer:?}\n{context}"
    );
    assert_eq!(
        stream.result_field("base_commit").as_str(),
        Some(base.as_str()),
        "{context}"
    );
    assert_eq!(
        common::git_head(&mesh.sample()),
        base,
        "the task works on its own branch, not the checkout"
    );

    // 3. Dispatch a task to the hanging programmer and cancel it once aider is producing output.
    let request = json!({
        "task_description": "Add docstrings to all functions",
        "files": ["src/module.py"],
        "workspace": "sample",
        "run_id": "interop-python",
        "capabilities": ["slow"],
        "task_id": "py-cancel-1",
    })
    .to_string();
    let lines = client.run(
        &["cancel", "--request", &request, "--after", "output"],
        &mesh,
    );
    let context = format!("python cancel lines: {lines:#?}\n{}", mesh.logs());
    let (stream, other) = task_stream(&lines, &context);
    assert_eq!(
        other.len(),
        2,
        "one cancel reply and the end: {other:?}\n{context}"
    );
    let reply = &other[0]["cancel"];
    assert_eq!(reply["task_id"], "py-cancel-1", "{context}");
    assert_eq!(reply["cancelled"], true, "{context}");
    assert_eq!(reply["previous_state"], "TASK_STATE_RUNNING", "{context}");
    // The cancel reply is printed right after the first output event; the result comes later.
    let cancel_at = lines
        .iter()
        .position(|l| l.get("cancel").is_some())
        .expect("cancel line");
    let first_output = lines
        .iter()
        .position(|l| l["kind"] == "output")
        .expect("an output event");
    assert_eq!(cancel_at, first_output + 1, "{context}");
    assert_eq!(stream.status(), "TASK_STATE_CANCELLED", "{context}");
    assert_eq!(
        stream.result_field("error_class"),
        &json!("ERROR_CLASS_CANCELLED"),
        "{context}"
    );
    assert_eq!(
        stream.result_field("programmer_id"),
        &json!("003"),
        "{context}"
    );
    assert_eq!(
        stream.result_field("commit"),
        &json!(""),
        "a cancelled task keeps nothing\n{context}"
    );
    assert_eq!(
        stream.assigned().map(|a| a["programmer_id"].clone()),
        Some(json!("003")),
        "{context}"
    );

    // The cancellation reached programmer 003: it counts one cancelled task, runs nothing, and
    // kept no branch for it.
    let health_url = format!("http://{}/health", mesh.programmer_target("003"));
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let mut health = support::get_json(&health_url);
    while !(health["cancelled"] == 1 && health["running"] == 0 && health["queue_depth"] == 0) {
        assert!(
            std::time::Instant::now() < deadline,
            "programmer 003 did not record the cancellation: {health:#}\n{context}"
        );
        std::thread::sleep(Duration::from_millis(200));
        health = support::get_json(&health_url);
    }
    assert_eq!(health["completed"], 0, "{health:#}");
    let branches = common::git(&mesh.sample(), &["for-each-ref", "--format=%(refname)"]);
    assert!(
        !branches.contains("py-cancel-1"),
        "a cancelled task keeps no branch: {branches}"
    );

    // 4. The pool status.
    let lines = client.run(&["status"], &mesh);
    assert_eq!(lines.len(), 1, "{lines:?}");
    let status = &lines[0]["pool_status"];
    let context = format!("pool status: {status:#}");
    assert_eq!(status["pool_size"], 3, "{context}");
    assert_eq!(status["available"], 3, "{context}");
    assert_eq!(status["unavailable"], 0, "{context}");
    assert_eq!(status["strategy"], "least_loaded", "{context}");
    assert!(
        status["manager_queue_capacity"].as_u64().unwrap_or(0) > 0,
        "{context}"
    );
    assert!(
        status["budget"]["limit_usd"].as_f64().unwrap_or(0.0) > 0.0,
        "{context}"
    );
    let ids: Vec<&str> = status["programmers"]
        .as_array()
        .expect("programmers")
        .iter()
        .filter_map(|p| p["id"].as_str())
        .collect();
    assert_eq!(ids, ["001", "002", "003"], "{context}");
    for p in status["programmers"].as_array().expect("programmers") {
        for key in [
            "port",
            "primary_llm",
            "backup_llm",
            "capabilities",
            "state",
            "queue_depth",
            "circuit_state",
            "current_llm",
        ] {
            assert!(p.get(key).is_some(), "programmer field {key} missing: {p}");
        }
        assert_eq!(p["state"], "PROGRAMMER_STATE_AVAILABLE", "{p}");
    }
    let by_id = |id: &str| {
        status["programmers"]
            .as_array()
            .and_then(|a| a.iter().find(|p| p["id"] == id))
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(
        by_id("003")["primary_llm"],
        "ollama/slow-coder:7b",
        "{context}"
    );
    let ports: Vec<u64> = ["001", "002", "003"]
        .iter()
        .map(|id| u64::from(mesh.pool.ports[*id]))
        .collect();
    let reported: Vec<u64> = status["programmers"]
        .as_array()
        .expect("programmers")
        .iter()
        .filter_map(|p| p["port"].as_u64())
        .collect();
    assert_eq!(reported, ports, "{context}");
}

#[test]
fn python_client_over_tls_with_a_dispatch_token_runs_a_task_and_the_read_token_is_refused() {
    let mesh = RunningPool::start_secured(vec![TestProgrammer::free("001")], None);
    let secured = mesh.secured();
    let gen_dir = tempfile::tempdir().expect("temp dir");
    let client = PyClient::generate(&mesh, gen_dir.path());
    let request = support::docstring_request("interop-python-tls", "py-tls-1");
    let dispatch = ["dispatch", "--request", request.as_str()];

    // TLS without a client certificate: a read token may not dispatch, no token at all is
    // unauthenticated, and neither reaches a programmer.
    let read = client.with_options(support::client_tls_args(
        secured,
        false,
        Some(&secured.read),
    ));
    read.output(&dispatch)
        .assert_grpc_error("PERMISSION_DENIED", "Dispatch with the read token");
    let anonymous = client.with_options(support::client_tls_args(secured, false, None));
    anonymous
        .output(&dispatch)
        .assert_grpc_error("UNAUTHENTICATED", "Dispatch without a token");
    mesh.assert_no_llm_request("a refused Dispatch runs nothing");

    // TLS with the pool's client certificate and the dispatch token: a real task to its result.
    let director = client.with_options(support::client_tls_args(
        secured,
        true,
        Some(&secured.dispatch),
    ));
    let lines = director.run(&dispatch, &mesh);
    let context = format!("python TLS dispatch lines: {lines:#?}\n{}", mesh.logs());
    let (stream, other) = task_stream(&lines, &context);
    assert_eq!(other, vec![json!({"end": "OK"})], "{context}");
    assert_eq!(stream.task_id, "py-tls-1", "{context}");
    stream.assert_real_success(&mesh.sample(), &context);

    // The read token still reads the pool status.
    let lines = read.run(&["status"], &mesh);
    assert_eq!(lines[0]["pool_status"]["available"], 1, "{lines:?}");
}
