//! Interop with Node.js: a client built with @grpc/grpc-js + @grpc/proto-loader straight from
//! `proto/` (`tests/interop/node/pool_client.js`) dispatches a real task to a real pool (llm-sim,
//! real aider, real git), reads the stream to its result, and reads the pool status. The client
//! prints JSON lines; this test checks them.
//!
//! Needs `scripts/install-interop.sh` (node_modules) and the aider venv; fails, never skips,
//! without them.

mod common;
#[path = "interop/support.rs"]
mod support;

use common::pool::TestProgrammer;
use serde_json::{Value, json};
use std::process::Command;
use std::time::Duration;
use support::{RunningPool, TaskStream};

const CLIENT_TIMEOUT: Duration = Duration::from_secs(150);

fn node(mesh: &RunningPool, args: &[&str]) -> Vec<Value> {
    let dir = support::node_client_dir();
    let mut cmd = Command::new("node");
    cmd.arg(dir.join("pool_client.js"))
        .arg("--proto-dir")
        .arg(support::proto_dir())
        .args(["--addr", &mesh.manager_target()])
        .args(args)
        .current_dir(&dir);
    let out = support::run_client(cmd, CLIENT_TIMEOUT);
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

#[test]
fn node_grpc_js_client_streams_a_dispatch_to_its_result() {
    let mesh = RunningPool::start(
        vec![TestProgrammer::free("001"), TestProgrammer::free("002")],
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
    let stream = TaskStream::check(events, &context);
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
