//! A whole pool for integration tests: `pas llm-sim`, two or three `pas programmer` processes and
//! `pas manager`, all real processes on 127.0.0.1 with a temporary config, workspace root (holding a
//! real git repository `sample` with `src/module.py`) and data dir. Plus helpers to run third-party
//! clients (grpcurl, Python, Node) with a deadline and read their JSON output.
//!
//! Include next to `common` (it uses [`crate::common`]'s simulator and git helpers):
//!
//! ```ignore
//! mod common;
//! #[path = "common/pool.rs"]
//! mod pool;
//! ```
//!
//! Every process is killed when its [`Proc`] is dropped, so a failing test leaves nothing behind.

#![allow(dead_code)]

use crate::common::{self, Sim};
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a process may take to print its `listening on` line.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The sample repository's Python file: two functions without docstrings, so llm-sim's docstring
/// edit changes both.
pub const MODULE_PY: &str =
    "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n";

/// One programmer of the test pool.
#[derive(Debug, Clone)]
pub struct ProgrammerDef {
    pub id: &'static str,
    pub primary: &'static str,
    pub backup: &'static str,
    pub capabilities: &'static [&'static str],
}

impl ProgrammerDef {
    /// A free local programmer on the simulator's default (well-behaved) models.
    pub fn fast(id: &'static str) -> Self {
        Self {
            id,
            primary: "ollama/qwen2.5-coder:7b-instruct",
            backup: "ollama/qwen2.5-coder:14b-instruct",
            capabilities: &["fast", "local", "free"],
        }
    }
}

/// A running child process, killed (and reaped) when dropped.
pub struct Proc {
    child: Child,
    /// What it is ("Prog-001", "Manager-Code", …).
    pub name: String,
    /// The address it printed.
    pub addr: SocketAddr,
    /// Its stdout and stderr, for failure messages.
    pub log: PathBuf,
}

impl Proc {
    /// Starts `command` (stdout and stderr to `log`) and waits for the line
    /// `"{name} listening on ADDR"` (an optional `http://` before ADDR is accepted).
    pub fn start(mut command: Command, name: &str, log: PathBuf) -> Proc {
        let stderr = std::fs::File::create(&log).expect("create the process log");
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        // Keep draining stdout after the first line: a process whose stdout pipe is closed fails
        // its next println!.
        let (tx, rx) = mpsc::channel();
        let prefix = format!("{name} listening on ");
        let out_log = log.with_extension("stdout");
        let wanted = prefix.clone();
        std::thread::spawn(move || {
            let mut copy = std::fs::File::create(out_log).ok();
            let mut sent = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(f) = copy.as_mut() {
                    let _ = writeln!(f, "{line}");
                }
                if !sent && let Some(rest) = line.trim().strip_prefix(&wanted) {
                    sent = true;
                    let _ = tx.send(rest.trim_start_matches("http://").to_string());
                }
            }
        });
        let addr = match rx.recv_timeout(START_TIMEOUT) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().ok();
                panic!(
                    "{name} did not print {prefix:?} within {START_TIMEOUT:?} (exit: {status:?})\n--- log ---\n{}",
                    read_or_empty(&log)
                );
            }
        };
        let addr = addr
            .parse()
            .unwrap_or_else(|e| panic!("{name} printed a bad address {addr:?}: {e}"));
        Proc {
            child,
            name: name.to_string(),
            addr,
            log,
        }
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        read_or_empty(&self.log)
    }

    /// `HOST:PORT`.
    pub fn target(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running pool. Dropping it kills the manager, the programmers and the simulator (in that
/// order) and deletes the temporary directory.
pub struct Pool {
    /// Manager-Code.
    pub manager: Proc,
    /// The programmers, in configuration order.
    pub programmers: Vec<Proc>,
    /// The LLM simulator every programmer talks to.
    pub sim: Sim,
    /// The configuration file the processes read.
    pub config: PathBuf,
    /// The workspace root; `sample` is a git repository in it.
    pub workspace_root: PathBuf,
    /// The task store and budget ledger.
    pub data_dir: PathBuf,
    dir: tempfile::TempDir,
}

impl Pool {
    /// Starts the simulator (with `sim_script`, if any), one `pas programmer` per entry of
    /// `programmers` and the manager, and waits until the manager sees every programmer available.
    pub fn start(programmers: &[ProgrammerDef], sim_script: Option<&str>) -> Pool {
        let aider_python = common::aider_python();
        let sim = match sim_script {
            Some(script) => Sim::start_with_script(script),
            None => Sim::start(),
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let workspace_root = dir.path().join("workspaces");
        let data_dir = dir.path().join("data");
        std::fs::create_dir_all(&data_dir).expect("mkdir data");
        make_sample_repo(&workspace_root.join("sample"));

        let ports: Vec<u16> = programmers.iter().map(|_| free_port()).collect();
        let manager_port = free_port();
        let config = dir.path().join("programmer_pool.yaml");
        let yaml = config_yaml(
            programmers,
            &ports,
            manager_port,
            &sim.base,
            &aider_python,
            &workspace_root,
            &data_dir,
        );
        std::fs::write(&config, yaml).expect("write the config");

        let env = [
            ("PAS_CONFIG", config.as_os_str().to_owned()),
            ("PAS_WORKSPACE_ROOT", workspace_root.as_os_str().to_owned()),
            ("PAS_DATA_DIR", data_dir.as_os_str().to_owned()),
            ("PAS_AIDER_PYTHON", aider_python.as_os_str().to_owned()),
            ("OLLAMA_API_BASE", sim.base.clone().into()),
            ("RUST_LOG", "info".into()),
        ];
        let pas = |args: &[&str]| {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_pas"));
            cmd.arg("--config").arg(&config).args(args);
            for (k, v) in &env {
                cmd.env(k, v);
            }
            cmd
        };
        let mut procs = Vec::new();
        for (def, port) in programmers.iter().zip(&ports) {
            let port = port.to_string();
            let name = format!("Prog-{}", def.id);
            let log = dir.path().join(format!("{name}.log"));
            procs.push(Proc::start(
                pas(&["programmer", "--id", def.id, "--port", &port]),
                &name,
                log,
            ));
        }
        let manager = Proc::start(
            pas(&["manager"]),
            "Manager-Code",
            dir.path().join("manager.log"),
        );
        assert_eq!(
            manager.addr.port(),
            manager_port,
            "the manager must use the configured port"
        );
        let pool = Pool {
            manager,
            programmers: procs,
            sim,
            config,
            workspace_root,
            data_dir,
            dir,
        };
        pool.wait_available(programmers.len(), Duration::from_secs(30));
        pool
    }

    /// The `sample` repository.
    pub fn sample(&self) -> PathBuf {
        self.workspace_root.join("sample")
    }

    /// Polls the manager's `GET /programmer_pool/status` until `n` programmers are available.
    pub fn wait_available(&self, n: usize, timeout: Duration) {
        let url = format!("http://{}/programmer_pool/status", self.manager.addr);
        let deadline = Instant::now() + timeout;
        let mut last = Value::Null;
        while Instant::now() < deadline {
            if let Some(v) = try_get_json(&url) {
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

    /// Every process's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for p in std::iter::once(&self.manager).chain(&self.programmers) {
            out.push_str(&format!("--- {} ---\n{}\n", p.name, p.log_text()));
        }
        out.push_str(&format!("--- llm-sim ---\n{}\n", self.sim.log_text()));
        out
    }
}

/// `GET url` as JSON; None when the server cannot be reached or the body is not JSON.
pub fn try_get_json(url: &str) -> Option<Value> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let resp = reqwest::get(url).await.ok()?;
        resp.json().await.ok()
    })
}

/// `GET url` as JSON; panics when that fails.
pub fn get_json(url: &str) -> Value {
    try_get_json(url).unwrap_or_else(|| panic!("GET {url} failed or did not return JSON"))
}

/// A free port on 127.0.0.1 (bound, read and released; the manager needs programmer ports up-front).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// Creates a git repository at `path` with `src/module.py` ([`MODULE_PY`]) and a README in one commit.
pub fn make_sample_repo(path: &Path) {
    std::fs::create_dir_all(path.join("src")).expect("mkdir sample/src");
    std::fs::write(path.join("src/module.py"), MODULE_PY).expect("write module.py");
    std::fs::write(path.join("README.md"), "# sample\n").expect("write README");
    common::git(path, &["init", "-q"]);
    common::git(path, &["add", "-A"]);
    common::git(path, &["commit", "-q", "-m", "initial commit"]);
}

/// The pool's configuration: the given programmers on the given ports, the simulator as the
/// Ollama endpoint, short health polling and retry delay so tests stay quick.
fn config_yaml(
    programmers: &[ProgrammerDef],
    ports: &[u16],
    manager_port: u16,
    sim_base: &str,
    aider_python: &Path,
    workspace_root: &Path,
    data_dir: &Path,
) -> String {
    let q = |s: &str| serde_json::to_string(s).expect("quote");
    let mut y = format!("pool_size: {}\nprogrammers:\n", programmers.len());
    let mut models = std::collections::BTreeSet::new();
    for (def, port) in programmers.iter().zip(ports) {
        let caps: Vec<String> = def.capabilities.iter().map(|c| q(c)).collect();
        y.push_str(&format!(
            "  - id: {}\n    port: {port}\n    primary_llm: {}\n    backup_llm: {}\n    capabilities: [{}]\n",
            q(def.id),
            q(def.primary),
            q(def.backup),
            caps.join(", ")
        ));
        models.insert(def.primary);
        models.insert(def.backup);
    }
    y.push_str(
        "load_balancing:\n  strategy: least_loaded\n  prefer_free_models: true\n  max_queue_per_programmer: 5\n  \
         health_check_interval_s: 1\n  max_concurrent_per_programmer: 1\n\
         failover:\n  enabled: true\n  max_retries: 2\n  retry_delay_s: 0.2\n  always_failover: true\n",
    );
    y.push_str(&format!(
        "manager:\n  host: \"127.0.0.1\"\n  port: {manager_port}\n  queue_timeout_s: 120\n"
    ));
    y.push_str(&format!(
        "providers:\n  ollama:\n    api_base_env: OLLAMA_API_BASE\n    api_base: {}\n",
        q(sim_base)
    ));
    y.push_str("llms:\n");
    for m in models {
        y.push_str(&format!(
            "  {}:\n    input_cost_per_token: 0\n    output_cost_per_token: 0\n",
            q(m)
        ));
    }
    y.push_str(&format!(
        "aider:\n  python: {}\n  request_timeout_s: 30\nworkspace_root: {}\ndata_dir: {}\n",
        q(&aider_python.to_string_lossy()),
        q(&workspace_root.to_string_lossy()),
        q(&data_dir.to_string_lossy())
    ));
    y
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
        let at_branch = common::git(repo, &["rev-parse", &format!("refs/heads/{branch}")]);
        assert_eq!(
            at_branch.trim(),
            commit,
            "branch {branch} must point at the result's commit\n{context}"
        );
        let changed = common::git(repo, &["show", &format!("{commit}:src/module.py")]);
        assert_ne!(
            changed, MODULE_PY,
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
