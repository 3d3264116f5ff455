//! Interop with Node.js: a client built with @grpc/grpc-js + @grpc/proto-loader straight from
//! `proto/` (`tests/interop/node/pool_client.js`) dispatches a real task to a real pool (llm-sim,
//! real aider, real git), reads the stream to its result, and reads the pool status. Against a
//! secured pool it does the same over TLS with a `dispatch` token, and its Dispatch is refused with
//! a `read` token (PERMISSION_DENIED) or none (UNAUTHENTICATED). The client prints JSON lines; this
//! test checks them.
//!
//! Needs `scripts/install-interop.sh` (node_modules) and the aider venv; fails, never skips,
//! without them.

use crate::common;
use crate::interop_support as support;

use common::pool::TestProgrammer;
use serde_json::{Value, json};
use std::process::Command;
use std::time::Duration;
use support::{ClientOutput, RunningPool, TaskStream};

const CLIENT_TIMEOUT: Duration = Duration::from_secs(150);

/// Runs `pool_client.js … --addr <manager> ARGS…` to its end, whatever its exit status.
fn node_output(mesh: &RunningPool, args: &[&str]) -> ClientOutput {
    let dir = support::node_client_dir();
    let mut cmd = Command::new("node");
    cmd.arg(dir.join("pool_client.js"))
        .arg("--proto-dir")
        .arg(support::proto_dir())
        .args(["--addr", &mesh.manager_target()])
        .args(args)
        .current_dir(&dir);
    support::run_client(cmd, CLIENT_TIMEOUT)
}

/// Runs the client and returns its JSON lines (it must exit 0).
fn node(mesh: &RunningPool, args: &[&str]) -> Vec<Value> {
    let out = node_output(mesh, args);
    if !out.status.success() {
        panic!(
            "node client {args:?} failed ({}):\n--- stdout ---\n{}\n--- stderr ---\n{}\n{}",
            out.status,
            out.stdout,
            out.stderr,
            mesh.logs()
        );
    }
    out.json_lines()
}

/// Checks the client's lines of one Dispatch: TaskEvent lines, then `{"end":"OK"}`.
fn task_stream(lines: &[Value], context: &str) -> TaskStream {
    assert_eq!(
        lines.last(),
        Some(&json!({"end": "OK"})),
        "the stream must end cleanly\n{context}"
    );
    let mut events = Vec::new();
    for line in &lines[..lines.len() - 1] {
        let ev = line
            .get("event")
            .unwrap_or_else(|| panic!("unexpected line {line}\n{context}"));
        // proto-loader with `oneofs: true` names the set case in `kind`.
        assert_eq!(ev["kind"], line["kind"], "{context}");
        assert_eq!(
            support::as_u64(line.get("seq")),
            support::as_u64(ev.get("seq")),
            "{context}"
        );
        events.push(ev.clone());
    }
    // proto-loader with `defaults: true` fills every unset oneof member with null; drop them so
    // the stream check sees exactly the set case.
    let events: Vec<Value> = events
        .into_iter()
        .map(|mut ev| {
            if let Some(obj) = ev.as_object_mut() {
                obj.retain(|k, v| !(support::EVENT_KINDS.contains(&k.as_str()) && v.is_null()));
            }
            ev
        })
        .collect();
    TaskStream::check(events, context)
}

#[test]
fn node_grpc_js_client_streams_a_dispatch_to_its_result() {
    let mesh = RunningPool::start(
        // The real task runs on 001 (002 would run it cold).
        vec![
            TestProgrammer::free("001"),
            TestProgrammer::free("002").without_aider(),
        ],
        None,
    );
    let base = common::git_head(&mesh.sample());

    let request = json!({
        "task_description": "Add docstrings to all functions",
        "files": ["src/module.py"],
        "workspace": "sample",
        "run_id": "interop-node",
        "task_id": "node-real-1",
    })
    .to_string();
    let lines = node(&mesh, &["dispatch", "--request", &request]);
    let context = format!("node dispatch lines: {lines:#?}\n{}", mesh.logs());
    let stream = task_stream(&lines, &context);
    assert_eq!(stream.task_id, "node-real-1", "{context}");
    stream.assert_real_success(&mesh.sample(), &context);
    assert_eq!(
        stream.result_field("base_commit").as_str(),
        Some(base.as_str()),
        "{context}"
    );
    let assigned = stream.assigned().expect("assigned");
    assert_eq!(assigned["strategy"], "least_loaded", "{context}");
    assert_eq!(
        assigned["programmer_id"],
        stream.result_field("programmer_id").clone(),
        "{context}"
    );

    let lines = node(&mesh, &["status"]);
    assert_eq!(lines.len(), 1, "{lines:?}");
    let status = &lines[0]["pool_status"];
    assert_eq!(status["pool_size"], 2, "{status:#}");
    assert_eq!(status["available"], 2, "{status:#}");
    let ids: Vec<&str> = status["programmers"]
        .as_array()
        .expect("programmers")
        .iter()
        .filter_map(|p| p["id"].as_str())
        .collect();
    assert_eq!(ids, ["001", "002"], "{status:#}");
}

#[test]
fn node_client_over_tls_with_a_dispatch_token_runs_a_task_and_the_read_token_is_refused() {
    let mesh = RunningPool::start_secured(vec![TestProgrammer::free("001")], None);
    let secured = mesh.secured();
    let request = support::docstring_request("interop-node-tls", "node-tls-1");
    // The client's TLS options, then the Dispatch.
    let dispatch = |client_cert: bool, token: Option<&str>| {
        let mut args = support::client_tls_args(secured, client_cert, token);
        args.extend(["dispatch".into(), "--request".into(), request.clone()]);
        args
    };

    // TLS without a client certificate: a read token may not dispatch, no token at all is
    // unauthenticated, and neither reaches a programmer.
    node_output(&mesh, &as_strs(&dispatch(false, Some(&secured.read))))
        .assert_grpc_error("PERMISSION_DENIED", "Dispatch with the read token");
    node_output(&mesh, &as_strs(&dispatch(false, None)))
        .assert_grpc_error("UNAUTHENTICATED", "Dispatch without a token");
    mesh.assert_no_llm_request("a refused Dispatch runs nothing");

    // TLS with the pool's client certificate and the dispatch token: a real task to its result.
    let lines = node(&mesh, &as_strs(&dispatch(true, Some(&secured.dispatch))));
    let context = format!("node TLS dispatch lines: {lines:#?}\n{}", mesh.logs());
    let stream = task_stream(&lines, &context);
    assert_eq!(stream.task_id, "node-tls-1", "{context}");
    stream.assert_real_success(&mesh.sample(), &context);
}

fn as_strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}
