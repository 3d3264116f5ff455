//! Multi-host: the pool spread over "hosts" that are Linux network namespaces on one bridge — a
//! manager host, three programmer hosts, a git server host (`git daemon`), an LLM host
//! (`pas llm-sim`) and a DNS host (dnsmasq) — talking TLS between hosts over their namespace IPs. No directory is shared
//! between hosts except the binaries (and the aider venv): each host has its own config, data
//! dir, workspace root and only its own certificate and key. The repository exists only on the
//! git host; programmers fetch it over `git://` and push their result branch back.
//!
//! Needs root (namespaces, veth, a bridge, nftables). Without it — or where `ip netns add` is not
//! permitted — every test prints `SKIPPED multi_host: <reason>` and passes. The tools come from
//! `scripts/install-netns-tools.sh` (Debian iproute2 + nftables, idempotent).
//!
//! Names are served by dnsmasq on a DNS host: programmers fetch `git://git.pool.test:9418/…` and
//! reach the LLM at `llm.pool.test`. Discovery of programmers is static (the manager's config
//! lists them by namespace IP, which their certificates carry as SANs).

use crate::common;

use common::gitserver::{GitDaemon, bare_repo, diff, pas_branches, ref_commit};
use common::pool::{ChildGuard, SAMPLE_MODULE, first_line_then_drain, server_process};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const SUBNET: &str = "10.213.0";
const MANAGER_IP: &str = "10.213.0.10";
const GIT_IP: &str = "10.213.0.20";
const LLM_IP: &str = "10.213.0.30";
/// The DNS host (dnsmasq): every host resolves through it (`/etc/netns/<ns>/resolv.conf`, which
/// `ip netns exec` mounts over `/etc/resolv.conf`), and the git and LLM hosts are named.
const DNS_IP: &str = "10.213.0.53";
const GIT_NAME: &str = "git.pool.test";
const LLM_NAME: &str = "llm.pool.test";
/// Programmer id and host octet. Ports differ too (6151…6153): the config check refuses a port
/// used twice even on different hosts.
const PROGRAMMERS: [(&str, &str); 3] = [("001", "11"), ("002", "12"), ("003", "13")];

// ===== namespaces =====

/// Runs a command to completion; `Err` with its output when it fails.
fn run(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{args:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

#[track_caller]
fn must(args: &[&str]) -> String {
    run(args).unwrap_or_else(|e| panic!("{e}"))
}

/// The namespaces of one test; all deleted (with their interfaces) when dropped.
struct Net {
    prefix: String,
    made: Vec<String>,
}

impl Net {
    /// `None` (with the reason printed) where namespaces cannot be made.
    fn create(tag: &str) -> Option<Net> {
        if run(&["id", "-u"]).map(|u| u.trim() == "0") != Ok(true) {
            eprintln!("SKIPPED multi_host: needs root for network namespaces");
            return None;
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/install-netns-tools.sh");
        if let Err(e) = run(&[&script.to_string_lossy()]) {
            eprintln!("SKIPPED multi_host: the namespace tools are missing: {e}");
            return None;
        }
        let mut net = Net {
            prefix: format!("pas{}{tag}", std::process::id() % 100_000),
            made: Vec::new(),
        };
        let sw = net.ns("sw");
        if let Err(e) = run(&["ip", "netns", "add", &sw]) {
            eprintln!("SKIPPED multi_host: `ip netns add` is not permitted here: {e}");
            return None;
        }
        net.made.push(sw.clone());
        must(&["ip", "-n", &sw, "link", "add", "br0", "type", "bridge"]);
        must(&["ip", "-n", &sw, "link", "set", "br0", "up"]);
        Some(net)
    }

    fn ns(&self, host: &str) -> String {
        format!("{}{host}", self.prefix)
    }

    /// A host: namespace `<prefix><host>` with `eth0` at `10.213.0.<octet>` on the bridge.
    fn host(&mut self, host: &str, octet: &str) {
        let ns = self.ns(host);
        let sw = self.ns("sw");
        let peer = format!("v{host}");
        must(&["ip", "netns", "add", &ns]);
        self.made.push(ns.clone());
        let etc = Path::new("/etc/netns").join(&ns);
        std::fs::create_dir_all(&etc).expect("/etc/netns/<ns>");
        std::fs::write(etc.join("resolv.conf"), format!("nameserver {DNS_IP}\n"))
            .expect("resolv.conf");
        must(&[
            "ip", "-n", &ns, "link", "add", "eth0", "type", "veth", "peer", "name", &peer, "netns",
            &sw,
        ]);
        must(&["ip", "-n", &sw, "link", "set", &peer, "master", "br0", "up"]);
        must(&[
            "ip",
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{SUBNET}.{octet}/24"),
            "dev",
            "eth0",
        ]);
        must(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
        must(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
    }

    /// `ip netns exec <ns>` as a command prefix.
    fn exec(&self, host: &str) -> Vec<String> {
        vec!["ip".into(), "netns".into(), "exec".into(), self.ns(host)]
    }

    /// Drop every packet between `host` and `peer_ip` (both directions), in `host`'s namespace.
    fn partition(&self, host: &str, peer_ip: &str) {
        let ns = self.ns(host);
        let rules = format!(
            "table inet pas_partition {{\n chain input {{ type filter hook input priority 0; policy accept; ip saddr {peer_ip} drop; }}\n chain output {{ type filter hook output priority 0; policy accept; ip daddr {peer_ip} drop; }}\n}}\n"
        );
        let file = tempfile::NamedTempFile::new().expect("rules file");
        std::fs::write(file.path(), rules).expect("write rules");
        must(&[
            "ip",
            "netns",
            "exec",
            &ns,
            "nft",
            "-f",
            &file.path().to_string_lossy(),
        ]);
    }

    fn heal(&self, host: &str) {
        must(&[
            "ip",
            "netns",
            "exec",
            &self.ns(host),
            "nft",
            "delete",
            "table",
            "inet",
            "pas_partition",
        ]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in self.made.iter().rev() {
            let _ = run(&["ip", "netns", "del", ns]);
            let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(ns));
        }
    }
}

// ===== processes =====

/// Starts `prefix… pas args…` with stderr to `<dir>/<name>.log`, and waits for its first stdout
/// line (`… listening on …`): the process is serving. Killed when the guard drops.
fn start_pas(prefix: &[String], dir: &Path, name: &str, args: &[&str]) -> ChildGuard {
    let log = dir.join(format!("{name}.log"));
    let mut cmd = Command::new(&prefix[0]);
    cmd.args(&prefix[1..])
        .arg(env!("CARGO_BIN_EXE_pas"))
        .args(args);
    let mut child = server_process(&mut cmd, std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("spawn pas");
    let line = first_line_then_drain(&mut child);
    let guard = ChildGuard {
        child,
        name: name.into(),
        log,
    };
    assert!(
        line.contains("listening on"),
        "{name} did not start: {line:?}\n{}",
        guard.log_text()
    );
    guard
}

/// dnsmasq on the DNS host, answering for the git and LLM hosts' names only; ready once it
/// logged `started`.
fn start_dns(net: &Net, hosts: &Path) -> ChildGuard {
    let dir = hosts.join("dns");
    std::fs::create_dir_all(&dir).expect("dns host dir");
    let log = dir.join("dnsmasq.log");
    let exec = net.exec("dns");
    let child = Command::new(&exec[0])
        .args(&exec[1..])
        .args([
            "dnsmasq",
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--log-facility=-",
            "--bind-interfaces",
            "--user=root",
            "--pid-file",
        ])
        .arg(format!("--listen-address={DNS_IP}"))
        .arg(format!("--host-record={GIT_NAME},{GIT_IP}"))
        .arg(format!("--host-record={LLM_NAME},{LLM_IP}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&log).expect("log")))
        .spawn()
        .expect("spawn dnsmasq");
    let guard = ChildGuard {
        child,
        name: "dnsmasq".into(),
        log,
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !guard.log_text().contains("started") {
        assert!(
            std::time::Instant::now() < deadline,
            "dnsmasq did not start: {}",
            guard.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    guard
}

// ===== the hosts' configuration =====

/// The pool's configuration as every host sees it; paths are relative to the host's own
/// directory (its config lives there), so no host reads another's files.
fn config_yaml(lease_s: u64) -> String {
    let mut y = format!("pool_size: {}\n", PROGRAMMERS.len());
    y.push_str("defaults:\n  timeout_s: 300\n  max_duration_per_job_s: 300\nprogrammers:\n");
    for (i, (id, octet)) in PROGRAMMERS.iter().enumerate() {
        let port = 6151 + i;
        y.push_str(&format!(
            "  - id: \"{id}\"\n    port: {port}\n    host: \"{SUBNET}.{octet}\"\n    primary_llm: \"ollama/primary-{id}\"\n    backup_llm: \"ollama/backup-{id}\"\n    capabilities: [\"fast\", \"free\"]\n"
        ));
    }
    y.push_str("load_balancing:\n  strategy: least_loaded\n  health_check_interval_s: 1\n");
    y.push_str("failover:\n  max_retries: 1\n  retry_delay_s: 0.1\n");
    y.push_str(&format!(
        "manager:\n  host: \"{MANAGER_IP}\"\n  port: 6141\n  task_lease_s: {lease_s}\n"
    ));
    y.push_str(&format!(
        "providers:\n  ollama:\n    api_base: \"http://{LLM_NAME}:11434\"\n"
    ));
    y.push_str(&format!(
        "aider:\n  python: \"{}\"\n  request_timeout_s: 60\n",
        common::aider_python().display()
    ));
    y.push_str("workspace_root: workspaces\ndata_dir: data\n");
    y.push_str(
        "tls:\n  ca: certs/ca.pem\n  cert: \"certs/{name}.pem\"\n  key: \"certs/{name}-key.pem\"\n",
    );
    y.push_str(&format!(
        "repositories:\n  allow: [\"git://{GIT_NAME}:9418/*\"]\n"
    ));
    y
}

/// One host's directory: its config, workspace root, data dir, and the certificate files named.
fn host_dir(
    root: &Path,
    host: &str,
    certs: &Path,
    files: &[&str],
    extra_yaml: &str,
    lease_s: u64,
) -> PathBuf {
    let dir = root.join(host);
    std::fs::create_dir_all(dir.join("certs")).expect("host certs dir");
    std::fs::create_dir_all(dir.join("workspaces")).expect("host workspace root");
    for f in files {
        std::fs::copy(certs.join(f), dir.join("certs").join(f)).expect("copy certificate");
    }
    std::fs::write(
        dir.join("pool.yaml"),
        format!("{}{extra_yaml}", config_yaml(lease_s)),
    )
    .expect("config");
    dir
}

/// The whole spread-out pool, running.
struct Cluster {
    net: Net,
    root: tempfile::TempDir,
    bare: PathBuf,
    token: String,
    procs: Vec<ChildGuard>,
    _daemon: GitDaemon,
}

impl Cluster {
    fn start(tag: &str, lease_s: u64) -> Option<Cluster> {
        let mut net = Net::create(tag)?;
        net.host("mgr", "10");
        for (id, octet) in PROGRAMMERS {
            net.host(&format!("p{id}"), octet);
        }
        net.host("git", "20");
        net.host("llm", "30");
        net.host("dns", "53");

        let root = tempfile::tempdir().expect("temp dir");
        // Certificates: issued once (like an operator with a CA), each host gets only its own.
        let issuer = root.path().join("issuer");
        std::fs::create_dir_all(&issuer).expect("issuer dir");
        std::fs::write(issuer.join("pool.yaml"), config_yaml(lease_s)).expect("issuer config");
        let certs = issuer.join("certs");
        must(&[
            env!("CARGO_BIN_EXE_pas"),
            "--config",
            &issuer.join("pool.yaml").to_string_lossy(),
            "certs",
            "init",
            &certs.to_string_lossy(),
        ]);
        let token = pas::manager::auth::new_token();
        let hosts = root.path().join("hosts");
        let mgr = host_dir(
            &hosts,
            "mgr",
            &certs,
            &[
                "ca.pem",
                "manager.pem",
                "manager-key.pem",
                "client.pem",
                "client-key.pem",
            ],
            "auth:\n  tokens_file: tokens.txt\n",
            lease_s,
        );
        std::fs::write(
            mgr.join("tokens.txt"),
            format!(
                "director admin {}\n",
                pas::manager::auth::token_hash(&token)
            ),
        )
        .expect("tokens");

        // The git host serves the only copy of the repository.
        let git_dir = hosts.join("git");
        std::fs::create_dir_all(&git_dir).expect("git host dir");
        let bare = bare_repo(
            &git_dir,
            "sample",
            &[
                ("src/module.py", SAMPLE_MODULE),
                ("README.md", "# sample\n"),
            ],
        );
        let git_prefix: Vec<&str> = vec!["ip", "netns", "exec"];
        let git_ns = net.ns("git");
        let daemon = GitDaemon::start(
            &[git_prefix.as_slice(), &[git_ns.as_str()]].concat(),
            &git_dir,
            GIT_IP,
            9418,
        );

        let mut procs = vec![start_dns(&net, &hosts)];
        let llm_dir = hosts.join("llm");
        std::fs::create_dir_all(&llm_dir).expect("llm host dir");
        procs.push(start_pas(
            &net.exec("llm"),
            &llm_dir,
            "llm-sim",
            &["llm-sim", "--listen", &format!("{LLM_IP}:11434")],
        ));
        for (id, _) in PROGRAMMERS {
            let name = format!("programmer-{id}");
            let dir = host_dir(
                &hosts,
                &format!("p{id}"),
                &certs,
                &["ca.pem", &format!("{name}.pem"), &format!("{name}-key.pem")],
                "",
                lease_s,
            );
            let config = dir.join("pool.yaml").to_string_lossy().into_owned();
            procs.push(start_pas(
                &net.exec(&format!("p{id}")),
                &dir,
                &name,
                &["--config", &config, "programmer", "--id", id],
            ));
        }
        let config = mgr.join("pool.yaml").to_string_lossy().into_owned();
        procs.push(start_pas(
            &net.exec("mgr"),
            &mgr,
            "manager",
            &["--config", &config, "manager"],
        ));
        let cluster = Cluster {
            net,
            root,
            bare,
            token,
            procs,
            _daemon: daemon,
        };
        cluster.wait_available(PROGRAMMERS.len() as u64);
        Some(cluster)
    }

    fn mgr_dir(&self) -> PathBuf {
        self.root.path().join("hosts/mgr")
    }

    /// `pas ARGS…` on the manager host (its config, the `client` certificate, the token).
    fn cli(&self, args: &[&str]) -> Command {
        let exec = self.net.exec("mgr");
        let mut cmd = Command::new(&exec[0]);
        cmd.args(&exec[1..])
            .arg(env!("CARGO_BIN_EXE_pas"))
            .arg("--config")
            .arg(self.mgr_dir().join("pool.yaml"))
            .args(args)
            .env("PAS_TOKEN", &self.token)
            .stdin(Stdio::null());
        cmd
    }

    /// Waits (event: the manager's own status) until `n` programmers are available to it.
    fn wait_available(&self, n: u64) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let out = self
                .cli(&["status", "--json"])
                .output()
                .expect("pas status");
            let status: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
            if status["available"].as_u64() == Some(n) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{n} programmers never became available: {status}\n{}\n{}",
                String::from_utf8_lossy(&out.stderr),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits (event: a log line) until process `name` logged a line holding every one of `needles`.
    fn wait_log(&self, name: &str, needles: &[&str]) {
        let proc = self.procs.iter().find(|p| p.name == name).expect("process");
        let deadline = std::time::Instant::now() + Duration::from_secs(180);
        while !proc
            .log_text()
            .lines()
            .any(|l| needles.iter().all(|n| l.contains(n)))
        {
            assert!(
                std::time::Instant::now() < deadline,
                "{name} never logged {needles:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn logs(&self) -> String {
        self.procs
            .iter()
            .map(|p| format!("--- {} ---\n{}", p.name, p.log_text()))
            .collect()
    }

    /// `pas dispatch --json` on the manager host; events arrive on the channel as they are printed.
    fn dispatch(&self, task_id: &str) -> (Child, mpsc::Receiver<Value>) {
        let url = format!("git://{GIT_NAME}:9418/sample.git");
        let mut child = self
            .cli(&[
                "dispatch",
                "Add docstrings to all functions",
                "--files",
                "src/module.py",
                "--repo-url",
                &url,
                "--task-id",
                task_id,
                "--json",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("pas dispatch");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if tx.send(v).is_err() {
                        return;
                    }
                }
            }
        });
        (child, rx)
    }
}

/// Reads events until the result (a dispatch that ends without one fails the test).
fn result_of(rx: &mpsc::Receiver<Value>, seen: &mut Vec<Value>) -> Value {
    loop {
        let event = rx
            .recv_timeout(Duration::from_secs(300))
            .unwrap_or_else(|e| panic!("no result ({e}); events: {seen:#?}"));
        seen.push(event.clone());
        if event["type"] == "result" {
            return event;
        }
    }
}

/// The result names a branch that the git host has at the reported commit, with exactly the
/// reported diff, and it is the only branch of that task.
#[track_caller]
fn assert_on_git_host(bare: &Path, result: &Value, task_id: &str) {
    let refname = format!("refs/heads/pas/{task_id}");
    let commit = result["commit"].as_str().expect("commit");
    assert_eq!(
        ref_commit(bare, &refname).as_deref(),
        Some(commit),
        "{result:#}"
    );
    if result["status"] == "succeeded" {
        let base = result["base_commit"].as_str().expect("base");
        assert_eq!(
            diff(bare, base, commit),
            result["diff"].as_str().expect("diff")
        );
    }
    let of_task: Vec<String> = pas_branches(bare)
        .into_iter()
        .filter(|b| b.starts_with(&refname))
        .collect();
    assert_eq!(
        of_task,
        std::slice::from_ref(&refname),
        "exactly one branch for the task"
    );
}

#[test]
fn tasks_on_other_hosts_fetch_over_git_and_push_exactly_the_reported_diff_over_tls() {
    let Some(cluster) = Cluster::start("a", 30) else {
        return;
    };
    let (mut a, rx_a) = cluster.dispatch("mh-a");
    let (mut b, rx_b) = cluster.dispatch("mh-b");
    let (mut ea, mut eb) = (Vec::new(), Vec::new());
    let ra = result_of(&rx_a, &mut ea);
    let rb = result_of(&rx_b, &mut eb);
    assert_eq!(a.wait().expect("dispatch a").code(), Some(0), "{ra:#}");
    assert_eq!(b.wait().expect("dispatch b").code(), Some(0), "{rb:#}");
    for (r, id) in [(&ra, "mh-a"), (&rb, "mh-b")] {
        assert_eq!(r["status"], "succeeded", "{r:#}\n{}", cluster.logs());
        assert_eq!(r["pushed_ref"], format!("refs/heads/pas/{id}"));
        assert_eq!(r["pushed_commit"], r["commit"]);
        assert_on_git_host(&cluster.bare, r, id);
    }
    // Each host worked from its own mirror: nothing of the repository exists on the manager host.
    let mgr = cluster.mgr_dir();
    assert!(!mgr.join("data/mirrors").exists());
    for (id, _) in PROGRAMMERS {
        let host = cluster.root.path().join(format!("hosts/p{id}"));
        assert!(
            std::fs::read_dir(host.join("workspaces"))
                .expect("root")
                .next()
                .is_none(),
            "no workspace was shared"
        );
    }
    let worked: Vec<&str> = [&ra, &rb]
        .iter()
        .map(|r| r["programmer_id"].as_str().unwrap_or_default())
        .collect();
    for id in &worked {
        let mirrors = cluster
            .root
            .path()
            .join(format!("hosts/p{id}/data/mirrors"));
        assert!(
            mirrors.exists(),
            "programmer {id} fetched into its own mirror"
        );
    }
}

/// Dispatches `task` and waits for its assignment; returns the dispatch, its event channel, the
/// events so far and the programmer it went to.
fn dispatch_until_assigned(
    cluster: &Cluster,
    task: &str,
) -> (Child, mpsc::Receiver<Value>, Vec<Value>, String) {
    let (child, rx) = cluster.dispatch(task);
    let mut events = Vec::new();
    loop {
        let ev = rx
            .recv_timeout(Duration::from_secs(120))
            .unwrap_or_else(|e| panic!("no assignment ({e}): {events:#?}\n{}", cluster.logs()));
        events.push(ev.clone());
        if ev["type"] == "assigned" {
            let host = ev["programmer_id"].as_str().expect("id").to_string();
            return (child, rx, events, host);
        }
    }
}

/// A final result that names the one branch of `task` on the git host: SUCCEEDED (with exactly
/// its diff there), or ALREADY_KEPT (another attempt's branch landed first). Returns both names.
#[track_caller]
fn assert_one_landed(cluster: &Cluster, result: &Value, task: &str) -> (String, String) {
    let status = result["status"].as_str().unwrap_or_default().to_string();
    let class = result["error_class"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        status == "succeeded" || class == "already_kept",
        "{result:#}\n{}",
        cluster.logs()
    );
    assert_on_git_host(&cluster.bare, result, task);
    (status, class)
}

#[test]
fn a_partitioned_programmer_host_leaves_no_duplicate_branch() {
    let Some(cluster) = Cluster::start("b", 30) else {
        return;
    };
    let task = "mh-part";
    // The task is on some programmer host: cut that host off from the manager (git and the LLM
    // host stay reachable), while it works.
    let (mut child, rx, mut events, host) = dispatch_until_assigned(&cluster, task);
    cluster.net.partition(&format!("p{host}"), MANAGER_IP);
    // The cut-off host finishes the task and pushes its branch (event: the branch appears on the
    // git host) although the manager cannot hear it.
    let refname = format!("refs/heads/pas/{task}");
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    while ref_commit(&cluster.bare, &refname).is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the partitioned host never pushed\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    cluster.net.heal(&format!("p{host}"));
    // Followed after the partition healed, or rerouted and refused by the branch that exists.
    let result = result_of(&rx, &mut events);
    let _ = child.wait();
    let (status, class) = assert_one_landed(&cluster, &result, task);
    eprintln!(
        "multi_host partition: programmer {host} cut off, result {status} {class} from {}",
        result["programmer_id"]
    );
}

#[test]
fn a_host_cut_off_past_the_lease_is_rerouted_and_still_one_branch_lands() {
    // A short lease: the manager gives up on the cut-off host and reroutes while the cut-off host
    // either finishes and pushes, or stops the task nobody follows. Git decides which attempt's
    // branch lands; never both.
    let Some(cluster) = Cluster::start("c", 5) else {
        return;
    };
    let task = "mh-reroute";
    let (mut child, rx, mut events, host) = dispatch_until_assigned(&cluster, task);
    cluster.net.partition(&format!("p{host}"), MANAGER_IP);
    // Healed only once the caller has its result: the task finished without the cut-off host.
    let result = result_of(&rx, &mut events);
    cluster.net.heal(&format!("p{host}"));
    let _ = child.wait();
    let rerouted: Vec<&Value> = events.iter().filter(|e| e["type"] == "rerouted").collect();
    assert!(
        !rerouted.is_empty() && rerouted[0]["from_programmer"] == host.as_str(),
        "rerouted away from the cut-off host {host}: {events:#?}\n{}",
        cluster.logs()
    );
    assert_ne!(result["programmer_id"], host.as_str(), "{result:#}");
    let (status, class) = assert_one_landed(&cluster, &result, task);
    // The cut-off host's own attempt ends too (pushed, refused by the branch that exists, or
    // stopped for want of a follower): the branch still holds the result's commit.
    cluster.wait_log(&format!("programmer-{host}"), &[task, "task finished"]);
    assert_eq!(
        ref_commit(&cluster.bare, &format!("refs/heads/pas/{task}")).as_deref(),
        result["commit"].as_str(),
        "nothing overwrote the kept branch\n{}",
        cluster.logs()
    );
    eprintln!(
        "multi_host reroute: {host} cut off, result {status} {class} from {}",
        result["programmer_id"]
    );
}
