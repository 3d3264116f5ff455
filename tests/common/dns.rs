//! DNS discovery harness: a real DNS server (dnsmasq, installed by `scripts/install-dns.sh`) on
//! 127.0.0.1 answering for `*.pas.test` from a hosts directory it re-reads on change, a manager
//! configured with `discovery.mode: dns`, and programmers started from flags (`--id`,
//! `--primary-llm`, `--capabilities`, `--region`, `--host 127.0.X.N`) that the manager's file does
//! not list. Every programmer listens on the same port, each on its own loopback address, like
//! pods behind a Kubernetes headless Service.

#![allow(dead_code)]

use super::pool::{ChildGuard, PoolOptions, TestPool, free_port};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The name the programmers are found under.
pub const NAME: &str = "pas-programmers.pas.test";

/// A dnsmasq process on 127.0.0.1, killed when dropped.
pub struct Dnsmasq {
    child: Child,
    /// `127.0.0.1:PORT` (UDP and TCP).
    pub addr: String,
    hosts: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Dnsmasq {
    /// Starts dnsmasq answering for `pas.test` (names it does not hold are NXDOMAIN, nothing is
    /// forwarded) from a hosts file it re-reads on change; waits until it has read it.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let hosts_dir = dir.path().join("hosts.d");
        std::fs::create_dir_all(&hosts_dir).expect("hosts dir");
        let hosts = hosts_dir.join("programmers");
        std::fs::write(&hosts, "").expect("hosts file");
        let log = dir.path().join("dnsmasq.log");
        let port = free_port();
        let program = ["dnsmasq", "/usr/sbin/dnsmasq"]
            .into_iter()
            .find(|p| Command::new(p).arg("--version").output().is_ok())
            .expect("dnsmasq is not installed: run scripts/install-dns.sh");
        let child = Command::new(program)
            .args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--local=/test/",
                "--bind-interfaces",
                "--listen-address=127.0.0.1",
                "--user=root",
                "--pid-file=",
                "--log-facility=-",
                "--local-ttl=0",
            ])
            .arg(format!("--port={port}"))
            .arg(format!("--hostsdir={}", hosts_dir.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&log).expect("log")))
            .spawn()
            .expect("spawn dnsmasq");
        let dns = Self {
            child,
            addr: format!("127.0.0.1:{port}"),
            hosts,
            log,
            _dir: dir,
        };
        dns.wait_reads(1);
        dns
    }

    fn reads(&self) -> usize {
        let needle = format!("read {}", self.hosts.display());
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .matches(&needle)
            .count()
    }

    /// Waits until dnsmasq has read its hosts file `n` times (its log says so each time).
    fn wait_reads(&self, n: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while self.reads() < n {
            assert!(
                std::time::Instant::now() < deadline,
                "dnsmasq did not read its hosts file {n} times:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Makes [`NAME`] resolve to exactly `addrs` (A records) and waits until dnsmasq re-read it.
    pub fn set_records(&self, addrs: &[Ipv4Addr]) {
        let before = self.reads();
        let text: String = addrs.iter().map(|a| format!("{a} {NAME}\n")).collect();
        // Written beside and renamed in: dnsmasq never reads a half-written file.
        let tmp = self.hosts.with_extension("tmp");
        std::fs::write(&tmp, text).expect("write hosts");
        let outside = self._dir.path().join("next");
        std::fs::rename(&tmp, &outside).expect("stage hosts");
        std::fs::rename(&outside, &self.hosts).expect("replace hosts");
        self.wait_reads(before + 1);
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A test pool whose manager finds its programmers in DNS.
pub struct DnsPool {
    pub pool: TestPool,
    pub dns: Dnsmasq,
    /// The port every programmer listens on (each on its own address).
    pub port: u16,
    /// Third octet of the programmers' addresses (`127.0.<net>.<n>`), distinct per test.
    pub net: u8,
}

impl DnsPool {
    /// A pool with an empty `programmers:` list, `discovery.mode: dns` re-resolving every
    /// `refresh_s`, and a DNS server holding no records yet.
    pub fn new(options: PoolOptions, net: u8, refresh_s: u64) -> Self {
        Self::with_sim(options, net, refresh_s, super::Sim::start())
    }

    /// [`DnsPool::new`] with a simulator the caller started.
    pub fn with_sim(options: PoolOptions, net: u8, refresh_s: u64, sim: super::Sim) -> Self {
        let options = PoolOptions {
            programmers: Vec::new(),
            ..options
        };
        let pool = TestPool::with_sim(options, sim);
        let dns = Dnsmasq::start();
        let port = free_port();
        let yaml = std::fs::read_to_string(&pool.config_path).expect("read config");
        let yaml = yaml.replacen("programmers:\n", "programmers: []\n", 1);
        std::fs::write(&pool.config_path, yaml).expect("write config");
        pool.append_config(&format!(
            "discovery:\n  mode: dns\n  name: {NAME}\n  port: {port}\n  refresh_s: {refresh_s}\n  resolver: \"{}\"\n",
            dns.addr
        ));
        Self {
            pool,
            dns,
            port,
            net,
        }
    }

    /// The address of programmer number `n` (1-based).
    pub fn ip(&self, n: u8) -> Ipv4Addr {
        Ipv4Addr::new(127, 0, self.net, n)
    }

    /// Makes the DNS name resolve to exactly programmers number `ns` (see [`DnsPool::ip`]).
    pub fn publish(&self, ns: &[u8]) {
        let addrs: Vec<Ipv4Addr> = ns.iter().map(|&n| self.ip(n)).collect();
        self.dns.set_records(&addrs);
    }

    /// Starts programmer `id` on `127.0.<net>.<n>:<port>`, described by flags only.
    pub fn start_programmer(
        &self,
        id: &str,
        n: u8,
        capabilities: &str,
        region: &str,
    ) -> ChildGuard {
        self.start_programmer_with(id, n, capabilities, region, &[])
    }

    /// [`Self::start_programmer`] with `extra` flags, e.g. `--aider-start cold` for a programmer
    /// the test runs no aider on (it spares the warm zygote's seconds of CPU, see
    /// `PoolOptions::runs_aider`).
    pub fn start_programmer_with(
        &self,
        id: &str,
        n: u8,
        capabilities: &str,
        region: &str,
        extra: &[&str],
    ) -> ChildGuard {
        let host = self.ip(n).to_string();
        let port = self.port.to_string();
        let mut args = vec![
            "--host",
            &host,
            "--port",
            &port,
            "--primary-llm",
            "ollama/primary-dns",
            "--backup-llm",
            "ollama/backup-dns",
            "--capabilities",
            capabilities,
        ];
        if !region.is_empty() {
            args.extend(["--region", region]);
        }
        args.extend(extra);
        self.pool.start_programmer_with_args(id, &args)
    }
}
