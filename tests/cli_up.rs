//! `pas up` / `pas down` / `pas restart` with the real binary and real child processes (the
//! manager and programmers of a temporary configuration on free ports of 127.0.0.1).

use crate::common;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const PAS: &str = env!("CARGO_BIN_EXE_pas");

/// A temporary pool: config file, data dir, and the ports it uses.
struct Pool {
    dir: tempfile::TempDir,
    manager_port: u16,
    programmer_ports: Vec<u16>,
}

/// Ports free for the pool (common::pool::free_port: below the ephemeral range, where an outgoing
/// connection cannot take one before the pool binds it).
fn free_ports(n: usize) -> Vec<u16> {
    (0..n).map(|_| common::pool::free_port()).collect()
}

impl Pool {
    fn new(programmers: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ports = free_ports(programmers + 1);
        let pool = Self {
            manager_port: ports[0],
            programmer_ports: ports[1..].to_vec(),
            dir,
        };
        // The workspace root and the data dir in the file (relative to it), so a test may move
        // them.
        let mut yaml = format!(
            "pool_size: {programmers}\nworkspace_root: ws\ndata_dir: data\nmanager:\n  host: 127.0.0.1\n  port: {}\nprogrammers:\n",
            pool.manager_port
        );
        for (i, port) in pool.programmer_ports.iter().enumerate() {
            yaml.push_str(&format!(
                "  - id: \"{:03}\"\n    port: {port}\n    primary_llm: \"ollama/qwen2.5-coder:7b-instruct\"\n    backup_llm: \"ollama/qwen2.5-coder:14b-instruct\"\n    capabilities: [\"fast\", \"free\"]\n",
                i + 1
            ));
        }
        std::fs::create_dir_all(pool.dir.path().join("ws")).unwrap();
        std::fs::write(pool.config(), yaml).unwrap();
        pool
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("pool.yaml")
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// `pas --config <pool> ARGS`, the pool's paths from the file.
    fn pas(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(PAS);
        cmd.arg("--config")
            .arg(self.config())
            .args(args)
            .env_remove("PAS_DATA_DIR")
            .env_remove("PAS_WORKSPACE_ROOT")
            .env(
                "PAS_AIDER_PYTHON",
                Path::new(env!("CARGO_MANIFEST_DIR")).join(".aider-venv/bin/python"),
            )
            .stdin(Stdio::null());
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        let out = self.pas(args).output().expect("cannot run pas");
        eprintln!(
            "$ pas {}\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn state(&self) -> serde_json::Value {
        let text =
            std::fs::read_to_string(self.data().join("pas-up.json")).expect("pas-up.json missing");
        serde_json::from_str(&text).unwrap()
    }

    fn ports(&self) -> Vec<u16> {
        std::iter::once(self.manager_port)
            .chain(self.programmer_ports.iter().copied())
            .collect()
    }
}

impl Drop for Pool {
    /// Never leave a pool running after a failed test.
    fn drop(&mut self) {
        if self.data().join("pas-up.pid").exists() {
            let _ = self.pas(&["down", "--timeout-s", "20"]).output();
        }
    }
}

fn alive(pid: u64) -> bool {
    let pid = nix::unistd::Pid::from_raw(pid as i32);
    if nix::sys::signal::kill(pid, None).is_err() {
        return false;
    }
    // A zombie waiting for init to reap it is gone for our purposes.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

fn listening(port: u16) -> bool {
    TcpStream::connect_timeout(
        &format!("127.0.0.1:{port}").parse().unwrap(),
        Duration::from_millis(500),
    )
    .is_ok()
}

fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn child<'a>(state: &'a serde_json::Value, key: &str) -> &'a serde_json::Value {
    state["children"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["key"] == key)
        .unwrap_or_else(|| panic!("no child {key} in {state}"))
}

/// The supervisor's own log (`pas up --detach`).
fn supervisor_log(pool: &Pool) -> String {
    std::fs::read_to_string(pool.data().join("logs/pas-up.log")).unwrap()
}

/// The pids of children `keys` in the supervisor's state file (`None` between runs).
fn pids<const N: usize>(pool: &Pool, keys: [&str; N]) -> [Option<u64>; N] {
    keys.map(|k| child(&pool.state(), k)["pid"].as_u64())
}

#[test]
fn up_detach_restarts_a_killed_programmer_and_down_leaves_nothing_behind() {
    let pool = Pool::new(2);
    let out = pool.run(&["up", "--detach", "--only", "manager,001,002"]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    for name in ["Prog-001", "Prog-002", "Manager-Code"] {
        let row = stdout
            .lines()
            .find(|l| l.contains(name))
            .unwrap_or_else(|| panic!("{stdout}"));
        assert!(row.contains("healthy"), "{row}");
    }
    for port in pool.ports() {
        assert!(listening(port), "port {port} not listening");
    }
    let state = pool.state();
    assert_eq!(state["ready"], true);
    let supervisor = state["pid"].as_u64().unwrap();
    let first = child(&state, "001")["pid"].as_u64().unwrap();
    let log = pool.data().join("logs/programmer-001.log");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("Prog-001 listening on"), "{text}");

    // A second `pas up` for the same data directory is refused.
    let again = pool.run(&["up", "--detach"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already running"));

    // kill -9 a programmer: it comes back with a new pid, healthy, and the restart is logged.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_until(
        "programmer 001 restarted and healthy",
        Duration::from_secs(30),
        || {
            let state = pool.state();
            let c = child(&state, "001");
            c["restarts"] == 1
                && c["state"] == "healthy"
                && c["pid"].as_u64().is_some_and(|p| p != first)
        },
    );
    let state = pool.state();
    let c = child(&state, "001");
    assert!(
        c["last_exit"]
            .as_str()
            .unwrap()
            .starts_with("killed by SIGKILL"),
        "{c}"
    );
    assert_eq!(child(&state, "002")["restarts"], 0);
    let supervisor_log = supervisor_log(&pool);
    assert!(
        supervisor_log.contains("restarting after backoff") && supervisor_log.contains("Prog-001"),
        "{supervisor_log}"
    );
    assert!(listening(pool.programmer_ports[0]));

    // SIGHUP to the supervisor is passed on to every child, which takes it (here, with nothing
    // to re-read) and keeps running: no child exits, none restarts.
    let before: Vec<(String, u64, u64)> = state["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let key = c["key"].as_str().unwrap().to_string();
            (
                key,
                c["pid"].as_u64().unwrap(),
                c["restarts"].as_u64().unwrap(),
            )
        })
        .collect();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(supervisor as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    let logs = pool.data().join("logs");
    for name in ["manager.log", "programmer-001.log", "programmer-002.log"] {
        wait_until(
            &format!("SIGHUP taken by {name}"),
            Duration::from_secs(30),
            || {
                std::fs::read_to_string(logs.join(name))
                    .unwrap_or_default()
                    .contains("SIGHUP: the configuration and credential files re-read")
            },
        );
    }
    // The supervisor logs once it signalled them all, so a child may log first: wait for it.
    wait_until(
        "the supervisor's line: SIGHUP passed on to 3 children",
        Duration::from_secs(30),
        || {
            let log = std::fs::read_to_string(logs.join("pas-up.log")).unwrap_or_default();
            log.contains("SIGHUP passed on to the children") && log.contains("children=3")
        },
    );
    let state = pool.state();
    for (key, pid, restarts) in &before {
        let c = child(&state, key);
        assert_eq!(
            (
                c["pid"].as_u64(),
                c["restarts"].as_u64(),
                c["state"].as_str()
            ),
            (Some(*pid), Some(*restarts), Some("healthy")),
            "{key} after SIGHUP: {c}"
        );
    }
    assert!(alive(supervisor));

    let pids: Vec<u64> = state["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["pid"].as_u64().unwrap())
        .chain([supervisor])
        .collect();
    let out = pool.run(&["down"]);
    assert!(out.status.success());
    for pid in pids {
        assert!(!alive(pid), "process {pid} survived pas down");
    }
    for port in pool.ports() {
        assert!(
            !listening(port),
            "port {port} still listening after pas down"
        );
    }
    assert!(!pool.data().join("pas-up.pid").exists());
    assert!(!pool.data().join("pas-up.json").exists());

    // Down again: nothing to do, still success.
    let out = pool.run(&["down"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("not running"));
}

#[test]
fn restart_keeps_the_selection_and_replaces_every_process() {
    let pool = Pool::new(2);
    assert!(
        pool.run(&["up", "--detach", "--only", "002"])
            .status
            .success()
    );
    let before = pool.state();
    let old = child(&before, "002")["pid"].as_u64().unwrap();
    assert_eq!(before["children"].as_array().unwrap().len(), 1);

    let out = pool.run(&["restart"]);
    assert!(out.status.success());
    let after = pool.state();
    assert_eq!(after["only"], serde_json::json!(["002"]));
    assert_eq!(after["children"].as_array().unwrap().len(), 1);
    assert!(!alive(old), "the old programmer survived the restart");
    assert_ne!(child(&after, "002")["pid"].as_u64().unwrap(), old);
    assert!(
        !listening(pool.programmer_ports[0]),
        "001 was never selected"
    );
    assert!(listening(pool.programmer_ports[1]));
    assert!(pool.run(&["down"]).status.success());
    assert!(!listening(pool.programmer_ports[1]));
}

#[test]
fn foreground_up_stops_its_children_on_sigterm() {
    let pool = Pool::new(1);
    let stderr_path = pool.dir.path().join("up.stderr");
    let mut up = pool
        .pas(&["up", "--only", "001"])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(up.stdout.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        let n = std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
        assert!(n > 0, "pas up ended before the pool was up:\n{seen}");
        seen.push_str(&line);
        if line.starts_with("pool is up") {
            break;
        }
    }
    assert!(
        seen.contains("Prog-001") && seen.contains("healthy"),
        "{seen}"
    );
    let programmer = child(&pool.state(), "001")["pid"].as_u64().unwrap();
    assert!(listening(pool.programmer_ports[0]));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(up.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = up.wait().unwrap();
    assert!(status.success(), "{status}");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert!(rest.contains("pool stopped"), "{rest}");
    // Stopped gracefully: SIGTERM, and the programmer exited by itself.
    let log = std::fs::read_to_string(&stderr_path).unwrap();
    assert!(log.contains("exited with status 0"), "{log}");
    assert!(!log.contains("SIGKILL"), "{log}");
    assert!(!alive(programmer));
    assert!(!listening(pool.programmer_ports[0]));
    assert!(!pool.data().join("pas-up.pid").exists());
}

#[test]
fn a_busy_port_or_an_unknown_id_is_refused_up_front() {
    let pool = Pool::new(1);
    let _squatter = std::net::TcpListener::bind(("127.0.0.1", pool.programmer_ports[0])).unwrap();
    let out = pool.run(&["up", "--detach"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Prog-001 cannot listen on"), "{stderr}");
    assert!(!pool.data().join("pas-up.pid").exists());

    let out = pool.run(&["up", "--only", "manager,042"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("\"042\"") && stderr.contains("manager, 001"),
        "{stderr}"
    );
}

#[test]
fn the_start_programmers_wrapper_drives_pas_up_status_and_down() {
    let pool = Pool::new(1);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/start_programmers.sh");
    let wrapper = |args: &[&str]| {
        let out = Command::new(&script)
            .args(args)
            .env("PAS_BIN", PAS)
            .env("PAS_CONFIG", pool.config())
            .env("PAS_DATA_DIR", pool.data())
            .env("PAS_WORKSPACE_ROOT", pool.dir.path().join("ws"))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        eprintln!(
            "$ start_programmers.sh {}\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };
    let out = wrapper(&["start", "--only", "001"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("Prog-001"));
    assert!(listening(pool.programmer_ports[0]));
    // Only the programmer runs, so status cannot reach a manager: it says so, shows the
    // processes `pas up` supervises, and fails.
    let out = wrapper(&["status"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Prog-001"));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&pool.manager_port.to_string()));
    let before = child(&pool.state(), "001")["pid"].as_u64().unwrap();
    assert!(wrapper(&["restart"]).status.success());
    assert_ne!(child(&pool.state(), "001")["pid"].as_u64().unwrap(), before);
    assert!(wrapper(&["stop"]).status.success());
    assert!(!listening(pool.programmer_ports[0]));
    assert_eq!(wrapper(&["bogus"]).status.code(), Some(2));
}

/// The manager's status (`pas status --json`), or None while it does not answer.
fn manager_status(pool: &Pool) -> Option<serde_json::Value> {
    let out = pool.pas(&["status", "--json"]).output().ok()?;
    serde_json::from_slice(&out.stdout).ok()
}

/// The state of child `key` in the supervisor's state file, or None when it is not listed.
fn child_state(state: &serde_json::Value, key: &str) -> Option<String> {
    state["children"]
        .as_array()?
        .iter()
        .find(|c| c["key"] == key)
        .and_then(|c| c["state"].as_str().map(str::to_string))
}

/// The state of programmer `id` in the manager's status.
fn programmer_state(status: &serde_json::Value, id: &str) -> Option<String> {
    status["programmers"]
        .as_array()?
        .iter()
        .find(|p| p["id"] == id)
        .and_then(|p| p["state"].as_str().map(str::to_string))
}

/// `text` (a pool's configuration) without programmer `id`, `pool_size` set to `left`.
fn config_without(text: &str, id: &str, left: usize) -> String {
    let start = text.find(&format!("  - id: \"{id}\"\n")).unwrap();
    let end = text[start + 1..]
        .find("  - id: ")
        .map_or(text.len(), |i| start + 1 + i);
    format!("{}{}", &text[..start], &text[end..])
        .replacen("pool_size: 3\n", &format!("pool_size: {left}\n"), 1)
        .replacen("pool_size: 2\n", &format!("pool_size: {left}\n"), 1)
}

/// Replaces `pool`'s configuration file with `text` at once (a rename).
fn rewrite_config(pool: &Pool, text: String) {
    let next = pool.dir.path().join("pool.yaml.next");
    std::fs::write(&next, text).unwrap();
    std::fs::rename(&next, pool.config()).unwrap();
}

/// Sends SIGHUP to the supervisor of `pool` (`pas up`).
fn hup_supervisor(pool: &Pool) {
    let supervisor = pool.state()["pid"].as_u64().unwrap() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(supervisor),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap()
}

#[test]
fn sighup_starts_a_programmer_added_to_the_file_and_stops_one_removed() {
    let pool = Pool::new(3);
    let full = std::fs::read_to_string(pool.config()).unwrap();
    rewrite_config(&pool, config_without(&full, "003", 2));
    assert!(pool.run(&["up", "--detach"]).status.success());
    assert!(!listening(pool.programmer_ports[2]));

    // 003 added: started by the supervisor, taken into the pool by the manager.
    rewrite_config(&pool, full.clone());
    hup_supervisor(&pool);
    wait_until(
        "003 started, healthy, and available in the manager",
        Duration::from_secs(60),
        || {
            child_state(&pool.state(), "003").as_deref() == Some("healthy")
                && manager_status(&pool)
                    .is_some_and(|s| programmer_state(&s, "003").as_deref() == Some("available"))
        },
    );
    let removed_pid = child(&pool.state(), "002")["pid"].as_u64().unwrap();

    // 002 removed: out of the manager's pool, its process stopped, out of the supervisor's list.
    rewrite_config(&pool, config_without(&full, "002", 2));
    hup_supervisor(&pool);
    wait_until(
        "002 stopped and out of the pool",
        Duration::from_secs(60),
        || {
            child_state(&pool.state(), "002").is_none()
                && !alive(removed_pid)
                && manager_status(&pool).is_some_and(|s| programmer_state(&s, "002").is_none())
        },
    );
    assert!(!listening(pool.programmer_ports[1]));
    let log = supervisor_log(&pool);
    assert!(
        log.contains("programmer added to the configuration: starting it")
            && log.contains("programmer removed from the configuration: stopping it"),
        "{log}"
    );
    for key in ["manager", "001", "003"] {
        assert_eq!(child(&pool.state(), key)["restarts"], 0, "{key}");
    }
    assert!(pool.run(&["down"]).status.success());
}

/// Under `pas up --only`, SIGHUP follows the selected programmers only: one removed from the file
/// stops; one added to the file is not started (it was not selected).
#[test]
fn sighup_under_only_stops_a_selected_programmer_removed_and_starts_none() {
    let pool = Pool::new(3);
    let full = std::fs::read_to_string(pool.config()).unwrap();
    rewrite_config(&pool, config_without(&full, "003", 2));
    assert!(
        pool.run(&["up", "--detach", "--only", "001,002"])
            .status
            .success()
    );
    let removed_pid = child(&pool.state(), "002")["pid"].as_u64().unwrap();
    // 003 back in the file, 002 out of it.
    rewrite_config(&pool, config_without(&full, "002", 2));
    hup_supervisor(&pool);
    wait_until("002 stopped", Duration::from_secs(60), || {
        child_state(&pool.state(), "002").is_none() && !alive(removed_pid)
    });
    // The pass that stopped 002 would have started 003 before it: it did not.
    assert!(child_state(&pool.state(), "003").is_none());
    assert!(!listening(pool.programmer_ports[2]));
    assert!(!listening(pool.programmer_ports[1]));
    assert_eq!(child(&pool.state(), "001")["restarts"], 0);
    let log = supervisor_log(&pool);
    assert!(
        log.contains("programmer removed from the configuration: stopping it")
            && !log.contains("programmer added to the configuration"),
        "{log}"
    );
    assert!(pool.run(&["down"]).status.success());
}

/// Whether `pas up`'s state file says its re-read number `seq` is done (the file is written with
/// the children as they are then, so their pids are current).
fn reload_done(pool: &Pool, seq: u64) -> bool {
    let state = pool.state();
    state["reload"]["seq"] == seq && state["reload"]["state"] == "done"
}

/// `GET /health` of the programmer on `port` (HTTP/1.1 JSON on its gRPC port).
fn programmer_health(port: u16) -> serde_json::Value {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let url = format!("http://127.0.0.1:{port}/health");
        let resp = reqwest::get(&url).await.expect("GET /health");
        resp.json().await.expect("/health JSON")
    })
}

/// SIGHUP with a setting the programmers read only at start-up changed (here `aider.nice`)
/// restarts them one at a time — each healthy again, and routed to by the manager, before the next
/// one stops; a change they apply themselves while running (an aider setting, the queue's bound,
/// a new workspace root, which the manager and the programmers follow alike) restarts none.
#[test]
fn sighup_restarts_programmers_one_at_a_time_when_a_setting_read_at_start_up_changed() {
    let pool = Pool::new(2);
    assert!(pool.run(&["up", "--detach"]).status.success());
    let pids = |pool: &Pool| pids(pool, ["001", "002"]);
    let first = pids(&pool);
    let text = std::fs::read_to_string(pool.config()).unwrap();
    let log = || supervisor_log(&pool);
    let default_bound = programmer_health(pool.programmer_ports[0])["max_queue"].clone();
    assert_ne!(default_bound, 7);
    // `beta` exists only under the root the file will name.
    let beta = pool.dir.path().join("ws2/beta");
    std::fs::create_dir_all(beta.join("src")).unwrap();
    std::fs::write(beta.join("src/b.py"), "x = 1\n").unwrap();
    common::git(&beta, &["init", "-q"]);
    common::git(&beta, &["add", "-A"]);
    common::git(
        &beta,
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@e",
            "commit",
            "-qm",
            "b",
        ],
    );
    let dry_run_on_beta = |pool: &Pool| {
        pool.run(&[
            "dispatch",
            "add y",
            "--workspace",
            "beta",
            "--files",
            "src/b.py",
            "--dry-run",
        ])
    };
    let refused = dry_run_on_beta(&pool);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("workspace"),
        "{refused:?}"
    );

    // Live settings (an aider one, the queue's bound): the programmers apply them themselves.
    let live = format!(
        "{text}aider:\n  request_timeout_s: 77\nload_balancing:\n  max_queue_per_programmer: 7\n"
    );
    rewrite_config(&pool, live.clone());
    hup_supervisor(&pool);
    wait_until("the rollout's verdict", Duration::from_secs(60), || {
        reload_done(&pool, 1)
    });
    assert!(log().contains("no process to restart"), "{}", log());
    for port in &pool.programmer_ports[..2] {
        wait_until("the new queue bound", Duration::from_secs(60), || {
            programmer_health(*port)["max_queue"] == 7
        });
    }
    assert_eq!(pids(&pool), first);

    // A new workspace root: the manager and the programmers follow it themselves, none restarts.
    let moved = live.replacen("workspace_root: ws\n", "workspace_root: ws2\n", 1);
    rewrite_config(&pool, moved.clone());
    hup_supervisor(&pool);
    wait_until("the rollout's verdict", Duration::from_secs(60), || {
        reload_done(&pool, 2)
    });
    assert_eq!(
        log().matches("no process to restart").count(),
        2,
        "{}",
        log()
    );
    wait_until("a task in the new root", Duration::from_secs(60), || {
        dry_run_on_beta(&pool).status.success()
    });
    assert_eq!(pids(&pool), first);

    // A setting read at start-up: a rolling restart.
    rewrite_config(
        &pool,
        moved.replacen(
            "  request_timeout_s: 77\n",
            "  request_timeout_s: 77\n  nice: 3\n",
            1,
        ),
    );
    hup_supervisor(&pool);
    wait_until("the rolling restart done", Duration::from_secs(120), || {
        reload_done(&pool, 3)
    });
    let second = pids(&pool);
    for i in 0..2 {
        assert!(
            second[i].is_some() && second[i] != first[i],
            "{first:?} {second:?}"
        );
        assert!(!alive(first[i].unwrap()));
    }
    // One at a time: 002 stopped only once 001 was back.
    let log = log();
    let at = |child: &str, what: &str| {
        log.lines()
            .position(|l| l.contains(what) && l.contains(&format!("child={child}")))
            .unwrap_or_else(|| panic!("no line {what:?} of {child} in\n{log}"))
    };
    let restarting = "settings read at start-up changed: restarting the programmer";
    let healthy =
        "programmer restarted with the re-read settings: healthy, and in the manager's pool";
    let steps = [
        at("Prog-001", restarting),
        at("Prog-001", healthy),
        at("Prog-002", restarting),
        at("Prog-002", healthy),
    ];
    assert!(steps.is_sorted_by(|a, b| a < b), "{steps:?} in\n{log}");
    assert!(log.contains("keys=aider.nice"), "{log}");
    let ran = dry_run_on_beta(&pool);
    assert!(ran.status.success(), "{ran:?}");
    for key in ["manager", "001", "002"] {
        assert_eq!(
            child_state(&pool.state(), key).as_deref(),
            Some("healthy"),
            "{key}"
        );
    }
    assert!(pool.run(&["down"]).status.success());
}

/// SIGHUP with a setting only the manager reads at start-up changed (its admin port) restarts the
/// manager alone; one the programmers read too (`durability`) restarts the programmers one at a
/// time, then the manager.
#[test]
fn sighup_restarts_the_manager_last_when_a_setting_it_reads_at_start_up_changed() {
    let pool = Pool::new(2);
    assert!(pool.run(&["up", "--detach"]).status.success());
    let pids = |pool: &Pool| pids(pool, ["manager", "001", "002"]);
    let first = pids(&pool);
    let text = std::fs::read_to_string(pool.config()).unwrap();
    let log = || supervisor_log(&pool);
    let admin_port = common::pool::free_port();
    assert!(!listening(admin_port));

    let port_line = format!("  port: {}\n", pool.manager_port);
    let admin = text.replacen(
        &port_line,
        &format!("{port_line}  admin_port: {admin_port}\n"),
        1,
    );
    rewrite_config(&pool, admin.clone());
    hup_supervisor(&pool);
    wait_until("the manager restarted", Duration::from_secs(120), || {
        reload_done(&pool, 1)
    });
    let second = pids(&pool);
    assert!(
        second[0].is_some() && second[0] != first[0],
        "{first:?} {second:?}"
    );
    assert_eq!(second[1..], first[1..], "the programmers kept running");
    assert!(!alive(first[0].unwrap()));
    assert!(listening(admin_port));
    let text_now = log();
    assert!(
        !text_now.contains("restarting the programmer"),
        "{text_now}"
    );
    assert!(
        text_now.contains("keys=manager.host / port / admin_port"),
        "{text_now}"
    );

    // With a new data dir too, which the restarted processes do not take: it moves with
    // `pas restart`, all of them at once (each would otherwise open a store of its own there).
    let moved = admin.replacen("data_dir: data\n", "data_dir: data-moved\n", 1);
    rewrite_config(&pool, format!("{moved}durability: power_loss\n"));
    hup_supervisor(&pool);
    wait_until("the second rollout", Duration::from_secs(120), || {
        reload_done(&pool, 2)
    });
    assert!(
        !pool.dir.path().join("data-moved").exists(),
        "a restarted process moved to the new data dir"
    );
    let third = pids(&pool);
    for i in 0..3 {
        assert!(
            third[i].is_some() && third[i] != second[i],
            "{second:?} {third:?}"
        );
    }
    // The programmers first, one at a time, then the manager.
    let text_now = log();
    let last = |what: &str| {
        text_now
            .rfind(what)
            .unwrap_or_else(|| panic!("no {what:?} in\n{text_now}"))
    };
    let manager_restart = last("settings the manager reads at start-up changed");
    assert!(last("programmer restarted with the re-read settings: healthy") < manager_restart);
    assert!(
        text_now[manager_restart..].contains("keys=durability"),
        "{text_now}"
    );
    wait_until(
        "both programmers in the restarted manager's pool",
        Duration::from_secs(60),
        || {
            manager_status(&pool).is_some_and(|s| {
                ["001", "002"]
                    .iter()
                    .all(|id| programmer_state(&s, id).as_deref() == Some("available"))
            })
        },
    );
    assert!(pool.run(&["down"]).status.success());
}

/// A rollout whose new settings keep a programmer from starting stops at it as soon as it keeps
/// exiting: the next programmer keeps running as it was, the manager is not restarted; the file fixed, the next SIGHUP brings
/// that programmer back and nothing else is restarted.
#[test]
fn a_rollout_stops_at_a_programmer_that_does_not_come_back() {
    let pool = Pool::new(2);
    assert!(pool.run(&["up", "--detach"]).status.success());
    let pids = |pool: &Pool| pids(pool, ["manager", "001", "002"]);
    let first = pids(&pool);
    let text = std::fs::read_to_string(pool.config()).unwrap();
    let log = || supervisor_log(&pool);

    // An aider version that is not installed: a programmer refuses to start with it.
    rewrite_config(&pool, format!("{text}aider:\n  version: \"0.0.1\"\n"));
    hup_supervisor(&pool);
    wait_until("the rollout stopped", Duration::from_secs(120), || {
        log().contains("the rolling restart stops here")
            && pool.state()["reload"]["state"] == "stopped"
    });
    let text_now = log();
    assert!(
        text_now.contains("restarting the programmer (it drains first) child=Prog-001"),
        "{text_now}"
    );
    assert!(!text_now.contains("child=Prog-002 keys="), "{text_now}");
    assert!(!text_now.contains("rolling restart done"), "{text_now}");
    // Given up on once it kept exiting, not after `--wait-timeout-s` (60 s).
    let detail = pool.state()["reload"]["detail"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        detail.contains(
            "Prog-001, restarted with the re-read settings, exited 3 times without becoming healthy"
        ),
        "{detail}"
    );
    let untouched_and_001 = |pool: &Pool| {
        let now = pids(pool);
        assert_eq!(
            (now[0], now[2]),
            (first[0], first[2]),
            "manager and 002 untouched"
        );
        child_state(&pool.state(), "001")
    };
    assert_ne!(untouched_and_001(&pool).as_deref(), Some("healthy"));

    rewrite_config(&pool, text);
    hup_supervisor(&pool);
    wait_until("001 back", Duration::from_secs(120), || {
        reload_done(&pool, 2)
    });
    assert_eq!(untouched_and_001(&pool).as_deref(), Some("healthy"));
    assert!(log().contains("restarted=1"), "{}", log());
    assert!(pool.run(&["down"]).status.success());
}

/// `pas reload` has `pas up` re-read the file and reports the outcome: nothing to restart, the
/// processes restarted, or a file that does not load (not sent: the error names the file). A
/// SIGHUP from elsewhere with a bad file is recorded in the state file as invalid.
#[test]
fn pas_reload_reports_what_the_re_read_did() {
    let pool = Pool::new(2);
    assert!(pool.run(&["up", "--detach"]).status.success());
    let text = std::fs::read_to_string(pool.config()).unwrap();
    let stdout = |out: &Output| String::from_utf8_lossy(&out.stdout).into_owned();

    let same = pool.run(&["reload"]);
    assert!(same.status.success());
    assert!(
        stdout(&same).contains("no setting changed; applied while running: no process to restart"),
        "{same:?}"
    );

    rewrite_config(&pool, format!("{text}bogus_key: 1\n"));
    let refused = pool.run(&["reload"]);
    assert_eq!(refused.status.code(), Some(1));
    let message = String::from_utf8_lossy(&refused.stderr).into_owned();
    assert!(
        message.contains("pool.yaml") && message.contains("bogus_key"),
        "{message}"
    );
    assert_eq!(pool.state()["reload"]["seq"], 1, "not sent");
    hup_supervisor(&pool);
    wait_until(
        "the re-read recorded as invalid",
        Duration::from_secs(60),
        || pool.state()["reload"]["state"] == "invalid",
    );
    assert!(
        pool.state()["reload"]["detail"]
            .as_str()
            .unwrap()
            .contains("bogus_key")
    );

    rewrite_config(&pool, format!("{text}aider:\n  nice: 3\n"));
    let rolled = pool.run(&["reload"]);
    assert!(rolled.status.success(), "{rolled:?}");
    assert!(
        stdout(&rolled).contains(
            "changed: aider.nice; restarted with the settings read at start-up: Prog-001, Prog-002"
        ),
        "{rolled:?}"
    );
    assert_eq!(pool.state()["reload"]["seq"], 3);
    assert!(pool.run(&["down"]).status.success());
}
