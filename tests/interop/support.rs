//! Support for the interop tests (`tests/interop_*.rs`): a running pool on top of the shared
//! harness ([`crate::common::pool`]), third-party clients (grpcurl, Python, Node) run with a
//! deadline, and checks of a task stream as those clients print it.
//!
//! Declared once by `tests/main.rs` as `interop_support`; a test file takes it with
//! `use crate::interop_support as support;`.

#![allow(dead_code)]

use crate::common::Sim;
use crate::common::pool::{ChildGuard, PoolOptions, SAMPLE_MODULE, TestPool, TestProgrammer};
use crate::common::secure::{Secured, https_client, secure};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A running pool: its programmers and manager (killed first when dropped), then the harness
/// (simulator and temp directory).
pub struct RunningPool {
    /// Programmers in configuration order, then the manager last.
    procs: Vec<ChildGuard>,
    /// The harness: config, workspace root (with the `sample` repository), data dir, simulator.
    pub pool: TestPool,
    /// Certificates and tokens when the pool runs with TLS and bearer tokens
    /// ([`RunningPool::start_secured`]).
    pub secured: Option<Secured>,
}

impl RunningPool {
    /// Writes the config for `programmers`, creates the `sample` repository, starts the simulator
    /// (with `sim_script`, if any), every programmer and the manager, and waits until the manager
    /// sees every programmer available.
    pub fn start(programmers: Vec<TestProgrammer>, sim_script: Option<&str>) -> RunningPool {
        Self::launch(Self::prepare(programmers, sim_script), None)
    }

    /// Like [`RunningPool::start`], with `yaml` appended to the configuration (top-level sections
    /// the harness does not write, e.g. `limits:`).
    pub fn start_with_config(
        programmers: Vec<TestProgrammer>,
        sim_script: Option<&str>,
        yaml: &str,
    ) -> RunningPool {
        let pool = Self::prepare(programmers, sim_script);
        pool.append_config(yaml);
        Self::launch(pool, None)
    }

    /// Like [`RunningPool::start`], with TLS on every listener (programmers require the pool's
    /// client certificate) and bearer tokens on the manager: `pas certs init` and one token per
    /// role ([`secure`]), nothing open without a token but health and reflection.
    pub fn start_secured(
        programmers: Vec<TestProgrammer>,
        sim_script: Option<&str>,
    ) -> RunningPool {
        let pool = Self::prepare(programmers, sim_script);
        let secured = secure(&pool, "[]");
        Self::launch(pool, Some(secured))
    }

    /// The harness for `programmers` with the `sample` repository; no process of the pool yet.
    fn prepare(programmers: Vec<TestProgrammer>, sim_script: Option<&str>) -> TestPool {
        let sim = match sim_script {
            Some(script) => Sim::start_with_script(script),
            None => Sim::start(),
        };
        let pool = TestPool::with_sim(
            PoolOptions {
                programmers,
                ..PoolOptions::default()
            },
            sim,
        );
        pool.sample_repo();
        pool
    }

    /// Starts every programmer, then the manager, and waits until all are available.
    fn launch(pool: TestPool, secured: Option<Secured>) -> RunningPool {
        let n = pool.options.programmers.len();
        let procs = pool.start_all();
        let running = RunningPool {
            procs,
            pool,
            secured,
        };
        running.wait_available(n, Duration::from_secs(30));
        running
    }

    /// The secured pool's certificates and tokens; panics on a plaintext pool.
    pub fn secured(&self) -> &Secured {
        self.secured
            .as_ref()
            .expect("a pool started with RunningPool::start_secured")
    }

    /// The manager's `HOST:PORT` (what grpcurl and the clients dial).
    pub fn manager_target(&self) -> String {
        format!("127.0.0.1:{}", self.pool.manager_port)
    }

    /// Programmer `id`'s `HOST:PORT`.
    pub fn programmer_target(&self, id: &str) -> String {
        format!("127.0.0.1:{}", self.pool.ports[id])
    }

    /// The `sample` repository.
    pub fn sample(&self) -> PathBuf {
        self.pool.workspace_root.join("sample")
    }

    /// Polls the manager's `GET /programmer_pool/status` until `n` programmers are available
    /// (over HTTPS with the `read` token on a secured pool).
    pub fn wait_available(&self, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut last = Value::Null;
        while Instant::now() < deadline {
            if let Some(v) = self.manager_status() {
                if v["available"].as_u64().unwrap_or(0) as usize >= n {
                    return;
                }
                last = v;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "the manager did not see {n} programmers available within {timeout:?}; last status: {last}\n{}",
            self.logs()
        );
    }

    /// The manager's `GET /programmer_pool/status` document; None while it cannot be fetched.
    pub fn manager_status(&self) -> Option<Value> {
        let path = "/programmer_pool/status";
        match &self.secured {
            None => try_get_json(&format!("{}{path}", self.pool.manager_url())),
            Some(s) => fetch_json(|| {
                https_client(&s.files("client"))
                    .get(format!("https://{}{path}", self.manager_target()))
                    .bearer_auth(&s.read)
            }),
        }
    }

    /// Asserts the simulator got no LLM request yet: nothing ran aider (`what` says why not).
    pub fn assert_no_llm_request(&self, what: &str) {
        let requests = get_json(&self.pool.sim.url("/_sim/requests"));
        assert_eq!(requests, serde_json::json!([]), "{what}\n{}", self.logs());
    }

    /// Every process's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for p in &self.procs {
            out.push_str(&format!("--- {} ---\n{}\n", p.name, p.log_text()));
        }
        out.push_str(&format!("--- llm-sim ---\n{}\n", self.pool.sim.log_text()));
        out
    }
}

/// `GET url` as JSON; None when the server cannot be reached or the body is not JSON.
pub fn try_get_json(url: &str) -> Option<Value> {
    fetch_json(|| reqwest::Client::new().get(url))
}

/// Sends the request `build` makes (inside a runtime of its own, so build the client there too)
/// and reads the body as JSON; None when that fails.
pub fn fetch_json(build: impl FnOnce() -> reqwest::RequestBuilder) -> Option<Value> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let resp = build().send().await.ok()?;
        resp.json().await.ok()
    })
}

/// `GET url` as JSON; panics when that fails.
pub fn get_json(url: &str) -> Value {
    try_get_json(url).unwrap_or_else(|| panic!("GET {url} failed or did not return JSON"))
}

// ---------------------------------------------------------------------------------------------
// Third-party clients
// ---------------------------------------------------------------------------------------------

/// What a client process did.
#[derive(Debug)]
pub struct ClientOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl ClientOutput {
    /// Panics with everything the client printed unless it exited 0.
    pub fn assert_success(&self, what: &str) -> &Self {
        assert!(
            self.status.success(),
            "{what} failed ({}):\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }

    /// Asserts a Python or Node client's call ended with gRPC status `code` (e.g.
    /// `PERMISSION_DENIED`): exit status 1 and one line `{"error": {"code": CODE, …}}`.
    pub fn assert_grpc_error(&self, code: &str, what: &str) {
        let context = format!(
            "{what}: the call must fail with {code}:\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.stdout, self.stderr
        );
        assert_eq!(self.status.code(), Some(1), "{context}");
        let lines = self.json_lines();
        assert_eq!(lines.len(), 1, "{context}");
        assert_eq!(lines[0]["error"]["code"], code, "{context}");
    }

    /// stdout as JSON lines (one object per line).
    pub fn json_lines(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| {
                    panic!("not a JSON line ({e}): {l:?}\nstderr:\n{}", self.stderr)
                })
            })
            .collect()
    }

    /// stdout as a sequence of JSON documents (grpcurl prints pretty objects one after another).
    pub fn json_documents(&self) -> Vec<Value> {
        serde_json::Deserializer::from_str(&self.stdout)
            .into_iter::<Value>()
            .collect::<Result<_, _>>()
            .unwrap_or_else(|e| {
                panic!("not JSON ({e}):\n{}\nstderr:\n{}", self.stdout, self.stderr)
            })
    }
}

/// Runs `command` to completion with stdin closed, killing it after `timeout`.
pub fn run_client(mut command: Command, timeout: Duration) -> ClientOutput {
    let dir = tempfile::tempdir().expect("temp dir");
    let (out_path, err_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut child = command
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).expect("stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("stderr file"))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the client") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{command:?} did not finish within {timeout:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                read_or_empty(&out_path),
                read_or_empty(&err_path)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    ClientOutput {
        status,
        stdout: read_or_empty(&out_path),
        stderr: read_or_empty(&err_path),
    }
}

/// The TLS options the Python and Node clients take for a secured pool: `--cacert` (the pool
/// CA), with `client_cert` also `--cert`/`--key` (the pool's `client` certificate), and
/// `--token TOKEN` when given.
pub fn client_tls_args(secured: &Secured, client_cert: bool, token: Option<&str>) -> Vec<String> {
    let files = secured.files("client");
    let mut args = vec!["--cacert".to_string(), files.ca.display().to_string()];
    if client_cert {
        args.extend([
            "--cert".to_string(),
            files.cert.display().to_string(),
            "--key".to_string(),
            files.key.display().to_string(),
        ]);
    }
    if let Some(token) = token {
        args.extend(["--token".to_string(), token.to_string()]);
    }
    args
}

/// A DispatchRequest as proto JSON: the task most interop tests run, docstrings for the sample
/// repository's `src/module.py`, with its run id and task id.
pub fn docstring_request(run_id: &str, task_id: &str) -> String {
    serde_json::json!({
        "task_description": "Add docstrings to all functions",
        "files": ["src/module.py"],
        "workspace": "sample",
        "run_id": run_id,
        "task_id": task_id,
    })
    .to_string()
}

/// The interop venv (`$PAS_INTEROP_VENV` or `<crate>/.interop-venv`). Panics — so the test fails,
/// never skips — when it is missing.
pub fn interop_venv() -> PathBuf {
    let venv = std::env::var_os("PAS_INTEROP_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".interop-venv"));
    for tool in ["bin/python", "bin/grpcurl"] {
        assert!(
            venv.join(tool).exists(),
            "{} not found — run scripts/install-interop.sh (or set PAS_INTEROP_VENV)",
            venv.join(tool).display()
        );
    }
    venv
}

/// `tests/interop/node`, with its dependencies installed. Panics when they are missing.
pub fn node_client_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/node");
    for dep in ["@grpc/grpc-js", "@grpc/proto-loader"] {
        assert!(
            dir.join("node_modules").join(dep).exists(),
            "{dep} is not installed in {} — run scripts/install-interop.sh",
            dir.display()
        );
    }
    dir
}

/// `<crate>/proto`.
pub fn proto_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("proto")
}

// ---------------------------------------------------------------------------------------------
// Task streams as clients print them
// ---------------------------------------------------------------------------------------------

/// The oneof cases of `pas.v1.TaskEvent.kind`.
pub const EVENT_KINDS: [&str; 6] = [
    "queued", "assigned", "output", "failover", "rerouted", "result",
];

/// One task's event stream as a client saw it, checked: `seq` runs 1..=n in order, one task id,
/// exactly one `result`, and it is the last event.
#[derive(Debug)]
pub struct TaskStream {
    /// `(seq, kind, event object)` in arrival order.
    pub events: Vec<(u64, String, Value)>,
    /// The task id every event carried.
    pub task_id: String,
    /// The `result` object.
    pub result: Value,
}

impl TaskStream {
    /// Checks a stream; `events` are whole TaskEvent objects (snake_case or camelCase field names).
    pub fn check(events: Vec<Value>, context: &str) -> TaskStream {
        assert!(!events.is_empty(), "no events at all\n{context}");
        let mut out = Vec::new();
        let mut task_id = None;
        for (i, ev) in events.into_iter().enumerate() {
            let seq = as_u64(field(&ev, "seq"))
                .unwrap_or_else(|| panic!("event {i} has no seq: {ev}\n{context}"));
            assert_eq!(
                seq,
                i as u64 + 1,
                "events out of order or missing: event {i} has seq {seq}\n{context}"
            );
            let kinds: Vec<&str> = EVENT_KINDS
                .iter()
                .copied()
                .filter(|k| ev.get(*k).is_some())
                .collect();
            assert_eq!(
                kinds.len(),
                1,
                "event {seq} must carry exactly one kind, has {kinds:?}: {ev}\n{context}"
            );
            let id = field(&ev, "task_id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            assert!(!id.is_empty(), "event {seq} has no task_id\n{context}");
            match &task_id {
                None => task_id = Some(id),
                Some(t) => assert_eq!(t, &id, "event {seq} belongs to another task\n{context}"),
            }
            out.push((seq, kinds[0].to_string(), ev));
        }
        let results = out.iter().filter(|(_, k, _)| k == "result").count();
        assert_eq!(
            results, 1,
            "exactly one result expected, got {results}\n{context}"
        );
        let (_, last_kind, last) = out.last().expect("non-empty");
        assert_eq!(
            last_kind, "result",
            "the result must be the last event\n{context}"
        );
        let result = last["result"].clone();
        TaskStream {
            task_id: task_id.unwrap_or_default(),
            result,
            events: out,
        }
    }

    /// The kinds in order.
    pub fn kinds(&self) -> Vec<&str> {
        self.events.iter().map(|(_, k, _)| k.as_str()).collect()
    }

    /// A field of the result (snake_case name; camelCase accepted).
    pub fn result_field(&self, name: &str) -> &Value {
        field(&self.result, name).unwrap_or(&Value::Null)
    }

    /// The result's status name (e.g. "TASK_STATE_SUCCEEDED").
    pub fn status(&self) -> &str {
        self.result_field("status").as_str().unwrap_or("")
    }

    /// The first `assigned` event's object.
    pub fn assigned(&self) -> Option<&Value> {
        self.events
            .iter()
            .find(|(_, k, _)| k == "assigned")
            .map(|(_, _, e)| &e["assigned"])
    }

    /// Asserts a real task succeeded with a non-empty diff of `src/module.py` on a branch and
    /// commit that exist in `repo`, and that the commit really holds llm-sim's docstrings.
    pub fn assert_real_success(&self, repo: &Path, context: &str) {
        assert_eq!(
            self.status(),
            "TASK_STATE_SUCCEEDED",
            "result: {}\n{context}",
            self.result
        );
        assert!(
            !self.result_field("dry_run").as_bool().unwrap_or(false),
            "not a dry run\n{context}"
        );
        let diff = self.result_field("diff").as_str().unwrap_or("");
        let adds_docstring = diff
            .lines()
            .any(|l| l.starts_with('+') && l.contains("\"\"\""));
        assert!(
            diff.contains("src/module.py") && adds_docstring,
            "a diff adding docstrings to src/module.py expected: {diff:?}\n{context}"
        );
        let files: Vec<&str> = self
            .result_field("files_changed")
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        assert_eq!(files, ["src/module.py"], "files_changed\n{context}");
        let commit = self.result_field("commit").as_str().unwrap_or("");
        let branch = self.result_field("branch").as_str().unwrap_or("");
        assert!(
            !commit.is_empty() && !branch.is_empty(),
            "branch and commit expected: {}\n{context}",
            self.result
        );
        let at_branch = crate::common::git(repo, &["rev-parse", &format!("refs/heads/{branch}")]);
        assert_eq!(
            at_branch.trim(),
            commit,
            "branch {branch} must point at the result's commit\n{context}"
        );
        let changed = crate::common::git(repo, &["show", &format!("{commit}:src/module.py")]);
        assert_ne!(
            changed, SAMPLE_MODULE,
            "the commit must change src/module.py\n{context}"
        );
        assert!(
            changed.contains("\"\"\""),
            "llm-sim's edit adds docstrings; got:\n{changed}\n{context}"
        );
        assert!(
            self.kinds().contains(&"assigned"),
            "an assigned event expected: {:?}\n{context}",
            self.kinds()
        );
    }
}

/// `obj[name]`, or its camelCase spelling (grpcurl prints proto JSON names).
pub fn field<'a>(obj: &'a Value, name: &str) -> Option<&'a Value> {
    obj.get(name).or_else(|| obj.get(camel_case(name)))
}

/// `files_changed` → `filesChanged`.
pub fn camel_case(name: &str) -> String {
    let mut out = String::new();
    let mut upper = false;
    for c in name.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// A JSON number or a decimal string (proto JSON prints 64-bit integers as strings).
pub fn as_u64(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn read_or_empty(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}
