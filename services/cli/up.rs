//! `pas up`, `pas down`, `pas restart`: run the manager and the programmers of a configuration as
//! supervised child processes, in the foreground or detached in the background.
//!
//! Children are this same binary (`pas --config FILE programmer --id 001`, `pas --config FILE
//! manager`) with the environment passed through unchanged (so `OLLAMA_API_BASE`, API keys and
//! `PAS_*` reach them). The supervising process writes its pid and a state file into the data
//! directory (see [`RunDir`]); `pas down` and `pas restart` find it there, and so does
//! `pas up --detach`, which re-executes itself in the background and waits for the state file to
//! say the pool is healthy.

use super::backoff::Backoff;
use super::probe::{MANAGER_SERVICE, PROGRAMMER_SERVICE};
use super::rollout::{Reread, Rollout};
use super::rundir::{self, ReloadReport, ReloadState, RunDir, RunDirError, UpState};
use super::supervisor::{
    self, ChildReport, ChildSpec, Policy, Readiness, SuperviseError, Supervisor,
};
use crate::config::Config;
use crate::telemetry::LogFormat;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The `--only` key that selects the manager.
pub const MANAGER_KEY: &str = "manager";

/// Start-up (and a rolling restart) gives up on a child once it has exited this many times
/// without ever being healthy.
pub const CRASH_LIMIT: u32 = 3;

/// Command-line arguments of `pas up` (and `pas restart`).
#[derive(Debug, Clone, clap::Args)]
pub struct UpArgs {
    /// Start only these, comma-separated: `manager` and/or programmer ids (e.g. `manager,001,002`).
    /// Default: the manager and every programmer of the configuration.
    #[arg(long, value_delimiter = ',', value_name = "KEYS")]
    pub only: Vec<String>,
    /// Run in the background: pid and log files go to the data directory; `pas down` stops it.
    #[arg(long)]
    pub detach: bool,
    /// How long to wait for every process to report healthy before giving up (and, in a rolling
    /// restart after SIGHUP, for each restarted programmer).
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub wait_timeout_s: u64,
    /// On stop, how long each process may drain after SIGTERM before it gets SIGKILL.
    #[arg(long, value_name = "SECS", default_value_t = 40)]
    pub stop_timeout_s: u64,
}

/// Command-line arguments of `pas down`.
#[derive(Debug, Clone, clap::Args)]
pub struct DownArgs {
    /// How long to wait for the pool to stop before killing what is left.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub timeout_s: u64,
}

/// Command-line arguments of `pas reload`.
#[derive(Debug, Clone, clap::Args)]
pub struct ReloadArgs {
    /// How long to wait for the processes it restarts to come back.
    #[arg(long, value_name = "SECS", default_value_t = 600)]
    pub timeout_s: u64,
}

/// Errors of `pas up` / `pas down` that end the command.
#[derive(Debug, thiserror::Error)]
pub enum UpError {
    #[error("invalid configuration:\n{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("--only {key:?}: not `manager` nor a programmer id of the configuration ({known})")]
    UnknownKey { key: String, known: String },
    #[error("--only selects nothing")]
    EmptySelection,
    #[error(
        "pas up is already running for this data directory (pid {pid}); use `pas down` or `pas restart`"
    )]
    AlreadyRunning { pid: u32 },
    #[error(
        "{name} cannot listen on {addr}: {source} (is another pool or an old process still running?)"
    )]
    PortBusy {
        name: String,
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot find this program's own executable: {0}")]
    CurrentExe(std::io::Error),
    #[error("cannot start the background supervisor: {0}")]
    Detach(std::io::Error),
    #[error("cannot take SIGHUP (to pass it on to the children): {0}")]
    Signal(std::io::Error),
    #[error("pas up is not running for the data directory {0}")]
    NotRunning(PathBuf),
    #[error("pas up (pid {0}) exited before it finished the re-read")]
    Exited(u32),
    #[error(transparent)]
    RunDir(#[from] RunDirError),
    #[error(transparent)]
    Supervise(#[from] SuperviseError),
}

// ---------------------------------------------------------------------------------------------
// Selection
// ---------------------------------------------------------------------------------------------

/// The children to run for `config`: the manager (key `manager`) and every programmer (key = id),
/// restricted to `only` when it is not empty. Programmers come first, the manager last. Each
/// logs to `logs_dir` and keeps its data in `data_dir` (the supervisor's, whatever a re-read
/// file says: see below).
pub fn select_children(
    config: &Config,
    config_path: &Path,
    only: &[String],
    program: &Path,
    log_format: LogFormat,
    logs_dir: &Path,
    data_dir: &Path,
) -> Result<Vec<ChildSpec>, UpError> {
    let only: Vec<&str> = only
        .iter()
        .map(|k| k.trim())
        .filter(|k| !k.is_empty())
        .collect();
    for key in &only {
        if *key != MANAGER_KEY && config.programmer(key).is_none() {
            let known: Vec<&str> = std::iter::once(MANAGER_KEY)
                .chain(config.programmers().iter().map(|p| p.id.as_str()))
                .collect();
            return Err(UpError::UnknownKey {
                key: key.to_string(),
                known: known.join(", "),
            });
        }
    }
    let wanted = |key: &str| only.is_empty() || only.contains(&key);
    let base = |sub: &[&str]| -> Vec<OsString> {
        let format = match log_format {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        };
        let mut args: Vec<OsString> = vec![
            "--config".into(),
            config_path.into(),
            "--log-format".into(),
            format.into(),
        ];
        args.extend(sub.iter().map(OsString::from));
        args
    };
    // Every child, however often restarted (a crash, a rollout for other start-up settings),
    // keeps the data dir `pas up` keeps its own files in: a `data_dir` edited in the file
    // applies with `pas restart`, to all of them at once, never to some.
    let pinned = vec![(
        OsString::from(crate::config::ENV_DATA_DIR),
        data_dir.as_os_str().to_owned(),
    )];
    let mut children: Vec<ChildSpec> = config
        .programmers()
        .iter()
        .filter(|p| wanted(&p.id))
        .map(|p| ChildSpec {
            key: p.id.clone(),
            name: p.agent.clone(),
            program: program.to_path_buf(),
            args: base(&["programmer", "--id", &p.id]),
            log: logs_dir.join(format!("programmer-{}.log", p.id)),
            addr: crate::channel::connect_addr(&p.host, p.port),
            health_service: PROGRAMMER_SERVICE.to_string(),
            probe_tls: config.tls_files("client"),
            env: pinned.clone(),
        })
        .collect();
    if wanted(MANAGER_KEY) {
        let m = &config.pool.manager;
        children.push(ChildSpec {
            key: MANAGER_KEY.to_string(),
            name: "Manager-Code".to_string(),
            program: program.to_path_buf(),
            args: base(&["manager"]),
            log: logs_dir.join("manager.log"),
            addr: crate::channel::connect_addr(&m.host, m.port),
            health_service: MANAGER_SERVICE.to_string(),
            probe_tls: config.tls_files("client"),
            env: pinned,
        });
    }
    if children.is_empty() {
        return Err(UpError::EmptySelection);
    }
    Ok(children)
}

/// Fails when a child's port is taken: a health check would otherwise be answered by whatever
/// holds it (an old pool, say) and the new child would crash-loop unnoticed.
fn check_ports_free(config: &Config, children: &[ChildSpec]) -> Result<(), UpError> {
    for child in children {
        let (host, port) = if child.key == MANAGER_KEY {
            (config.pool.manager.host.clone(), config.pool.manager.port)
        } else {
            match config.programmer(&child.key) {
                Some(p) => (p.host.clone(), p.port),
                None => continue,
            }
        };
        let bind_addr = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        if let Err(source) = std::net::TcpListener::bind(&bind_addr) {
            return Err(UpError::PortBusy {
                name: child.name.clone(),
                addr: bind_addr,
                source,
            });
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// pas up
// ---------------------------------------------------------------------------------------------

/// `pas up`: start the pool in the foreground (until SIGINT/SIGTERM or `pas down`), or detached.
/// Exit 0 once stopped cleanly (foreground) or running healthy (detached); 1 on any failure.
pub fn up(config_path: &Path, log_format: LogFormat, args: UpArgs) -> ExitCode {
    let result = if args.detach {
        detach(config_path, log_format, &args)
    } else {
        crate::telemetry::init_logging(log_format);
        match tokio::runtime::Runtime::new() {
            Ok(rt) => rt.block_on(foreground(config_path, log_format, &args)),
            Err(e) => Err(UpError::Detach(e)),
        }
    };
    exit_with(result)
}

/// `pas down`: stop the pool started by `pas up` for this configuration's data directory.
pub fn down(config_path: &Path, args: DownArgs) -> ExitCode {
    exit_with(stop_running(config_path, Duration::from_secs(args.timeout_s)).map(|_| true))
}

/// `pas reload`: has the running `pas up` re-read the configuration file (SIGHUP) and waits for
/// the outcome it publishes: what applied while running, which processes it restarted, or why it
/// stopped. Exit 0 when every process runs with the file; 1 when the file does not load (it is
/// not sent: the error names file, line and key), a restarted process did not come back, or
/// `timeout_s` passed first.
pub fn reload(config_path: &Path, args: ReloadArgs) -> ExitCode {
    exit_with(reload_running(
        config_path,
        Duration::from_secs(args.timeout_s),
    ))
}

fn reload_running(config_path: &Path, timeout: Duration) -> Result<bool, UpError> {
    let config = Config::load(config_path)?;
    let run = RunDir::new(config.data_dir());
    let Some(pid) = run.running_pid() else {
        return Err(UpError::NotRunning(config.data_dir()));
    };
    let last = |run: &RunDir| run.read_state().ok().flatten().and_then(|s| s.reload);
    let before = last(&run).map_or(0, |r| r.seq);
    let raw = Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX));
    kill(raw, Signal::SIGHUP).map_err(|e| UpError::Signal(e.into()))?;
    println!("configuration file sent to pas up (pid {pid}) to re-read…");
    let deadline = std::time::Instant::now() + timeout;
    let mut rolling_said = false;
    loop {
        match last(&run).filter(|r| r.seq > before) {
            Some(r) if r.state == ReloadState::Done => {
                println!("{}", r.detail);
                return Ok(true);
            }
            Some(r) if r.state == ReloadState::Rolling && !rolling_said => {
                println!("{}…", r.detail);
                rolling_said = true;
            }
            Some(r) if r.state == ReloadState::Rolling => {}
            Some(r) => {
                eprintln!("error: {}", r.detail);
                return Ok(false);
            }
            None => {}
        }
        if !rundir::alive(pid) {
            return Err(UpError::Exited(pid));
        }
        if std::time::Instant::now() >= deadline {
            eprintln!(
                "error: still restarting after {} s; `pas status` and the logs in {} show where it is",
                timeout.as_secs(),
                run.logs_dir().display()
            );
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `pas restart`: `pas down`, then `pas up --detach` with the same selection as before (unless
/// `--only` is given).
pub fn restart(config_path: &Path, log_format: LogFormat, mut args: UpArgs) -> ExitCode {
    let previous = match stop_running(
        config_path,
        Duration::from_secs(args.stop_timeout_s.saturating_add(20)),
    ) {
        Ok(previous) => previous,
        Err(e) => return exit_with(Err(e)),
    };
    if args.only.is_empty()
        && let Some(state) = previous
    {
        args.only = state.only;
    }
    args.detach = true;
    up(config_path, log_format, args)
}

fn exit_with(result: Result<bool, UpError>) -> ExitCode {
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Loads the configuration and resolves the path children get (absolute, so a detached
/// supervisor and its children do not depend on the working directory for it).
fn load(config_path: &Path) -> Result<(Config, PathBuf), UpError> {
    let config = Config::load(config_path)?;
    let absolute = std::path::absolute(config_path).unwrap_or_else(|_| config_path.to_path_buf());
    Ok((config, absolute))
}

/// Supervises the pool in this process until a stop signal.
async fn foreground(
    config_path: &Path,
    log_format: LogFormat,
    args: &UpArgs,
) -> Result<bool, UpError> {
    let (config, config_abs) = load(config_path)?;
    let run = RunDir::new(config.data_dir());
    if let Some(pid) = run.running_pid()
        && pid != std::process::id()
    {
        return Err(UpError::AlreadyRunning { pid });
    }
    let exe = std::env::current_exe().map_err(UpError::CurrentExe)?;
    let children = select_children(
        &config,
        &config_abs,
        &args.only,
        &exe,
        log_format,
        &run.logs_dir(),
        run.data_dir(),
    )?;
    check_ports_free(&config, &children)?;
    reap_leftovers(&run);
    run.write_pid(std::process::id())?;

    let policy = Policy {
        backoff: Backoff::default(),
        stop_grace: Duration::from_secs(args.stop_timeout_s),
        ..Policy::default()
    };
    // Taken before any child starts: from here on SIGHUP is passed on to the children (once they
    // are up), never the end of the pool.
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(UpError::Signal)?;
    let sup = Arc::new(Supervisor::start(children, policy)?);
    let base = UpState {
        pid: std::process::id(),
        config: config_abs.clone(),
        only: args.only.clone(),
        started_ms: chrono::Utc::now().timestamp_millis(),
        ready: false,
        failed: None,
        children: Vec::new(),
        reload: None,
    };
    let (phase_tx, phase_rx) = watch::channel((false, None::<String>));
    let (reload_tx, reload_rx) = watch::channel(None::<ReloadReport>);
    let publisher = tokio::spawn(publish(run.clone(), base, sup.clone(), phase_rx, reload_rx));

    let wait = Duration::from_secs(args.wait_timeout_s);
    // One listener for SIGTERM / Ctrl-C from here to the end: a signal that came between two
    // listeners (say, right after "pool is up" is printed) would be lost, the pool left running.
    let stop = crate::serve::shutdown_signal();
    tokio::pin!(stop);
    let outcome = tokio::select! {
        readiness = sup.wait_ready(wait, CRASH_LIMIT) => Some(readiness),
        () = &mut stop => None,
    };
    let ok = match outcome {
        Some(Readiness::Ready) => {
            let _ = phase_tx.send((true, None));
            println!("{}", children_table(&sup.reports()));
            println!(
                "pool is up (supervisor pid {}); logs in {}. Ctrl-C or `pas down` stops it.",
                std::process::id(),
                run.logs_dir().display()
            );
            // SIGHUP (`kill -HUP <supervisor pid>`, or its terminal going away) is passed on:
            // each child re-reads its configuration and credential files (see `reload`).
            // Programmers added to the file are started first (the manager then finds them) and
            // removed ones stopped after; with `--only`, only the selected ones are followed
            // (one removed from the file stops, one moved restarts, none is added).
            let children_of = |config: &Config| {
                let Some(only) = still_selected(config, &args.only) else {
                    return Ok(Vec::new());
                };
                select_children(
                    config,
                    &config_abs,
                    &only,
                    &exe,
                    log_format,
                    &run.logs_dir(),
                    run.data_dir(),
                )
            };
            let (rollout, rolling) = Rollout::start(
                sup.clone(),
                &config,
                Duration::from_secs(args.wait_timeout_s),
                reload_tx.clone(),
            );
            loop {
                tokio::select! {
                    () = &mut stop => break,
                    Some(()) = hangup.recv() => {
                        let seq = reload_tx.borrow().as_ref().map_or(0, |r| r.seq) + 1;
                        let followed = follow_programmers(&sup, &config_abs, seq, children_of);
                        let sent = sup.signal_healthy(nix::sys::signal::Signal::SIGHUP);
                        tracing::info!(children = sent, "SIGHUP passed on to the children");
                        let report = |state, detail| Some(ReloadReport { seq, state, detail });
                        match followed {
                            Ok(followed) => {
                                for key in &followed.removed {
                                    sup.remove(key);
                                }
                                reload_tx.send_replace(report(
                                    ReloadState::Rolling,
                                    "restarting the processes whose start-up settings changed".into(),
                                ));
                                rollout.follow(followed.reread);
                            }
                            Err(e) => {
                                reload_tx.send_replace(report(ReloadState::Invalid, e.to_string()));
                            }
                        }
                    }
                }
            }
            // It holds the other reference to the supervisor; a restart under way is cut short
            // (the shutdown stops every child anyway).
            rolling.abort();
            let _ = rolling.await;
            println!("stopping the pool…");
            true
        }
        Some(Readiness::TimedOut) => {
            let reason = format!(
                "not every process became healthy within {}s",
                args.wait_timeout_s
            );
            let _ = phase_tx.send((false, Some(reason.clone())));
            println!("{}", children_table(&sup.reports()));
            eprintln!(
                "error: {reason}; see the logs in {}",
                run.logs_dir().display()
            );
            false
        }
        Some(Readiness::CrashLoop(child)) => {
            let reason = format!(
                "{} exited {} times without becoming healthy (last: {})",
                child.name,
                child.restarts,
                child.last_exit.as_deref().unwrap_or("?")
            );
            let _ = phase_tx.send((false, Some(reason.clone())));
            println!("{}", children_table(&sup.reports()));
            eprintln!(
                "error: {reason}; the end of {}:\n{}",
                child.log.display(),
                log_tail(&child.log, 15)
            );
            false
        }
        None => {
            let _ = phase_tx.send((false, Some("interrupted during start-up".into())));
            eprintln!("interrupted: stopping the pool…");
            false
        }
    };
    // The publisher holds the other reference to the supervisor: end it first.
    publisher.abort();
    let _ = publisher.await;
    match Arc::try_unwrap(sup) {
        Ok(sup) => sup.shutdown().await,
        // Unreachable; dropping the supervisor still kills the children (kill_on_drop).
        Err(_) => tracing::error!("supervisor still shared at shutdown: children get SIGKILL"),
    }
    run.clear();
    if ok {
        println!("pool stopped");
    }
    Ok(ok)
}

/// What `--only` selects in a re-read `config`: the selected keys it still has (all of them
/// when `only` is empty); `None` when it has none of them left, so nothing stays selected.
fn still_selected(config: &Config, only: &[String]) -> Option<Vec<String>> {
    if only.is_empty() {
        return Some(Vec::new());
    }
    let kept: Vec<String> = only
        .iter()
        .map(|k| k.trim())
        .filter(|k| *k == MANAGER_KEY || config.programmer(k).is_some())
        .map(str::to_string)
        .collect();
    (!kept.is_empty()).then_some(kept)
}

/// What [`follow_programmers`] did with a re-read file.
struct Followed {
    /// The programmers no longer configured, for the caller to stop once the manager heard of it.
    removed: Vec<String>,
    /// The file, its programmers' children and those started with it: for the [`Rollout`].
    reread: Reread,
}

/// The programmers of the configuration as re-read now (re-read `seq`) against the ones
/// supervised: starts each programmer added (or whose address changed: the old process is
/// stopped), and returns the keys of those no longer configured. A file that does not load
/// changes nothing (the error, with file, line and key; each child logs it too); a new programmer
/// whose port is taken is not started (logged).
fn follow_programmers(
    sup: &Supervisor,
    config_path: &Path,
    seq: u64,
    children_of: impl Fn(&Config) -> Result<Vec<ChildSpec>, UpError>,
) -> Result<Followed, UpError> {
    let (config, wanted) = match Config::load(config_path)
        .map_err(UpError::from)
        .and_then(|c| children_of(&c).map(|w| (c, w)))
    {
        Ok(found) => found,
        Err(e) => {
            tracing::error!("configuration re-read: programmers unchanged: {e}");
            return Err(e);
        }
    };
    let programmers = |specs: Vec<ChildSpec>| -> Vec<ChildSpec> {
        specs.into_iter().filter(|s| s.key != MANAGER_KEY).collect()
    };
    let children = wanted.clone();
    let (wanted, running) = (programmers(wanted), programmers(sup.specs()));
    let mut started = Vec::new();
    for spec in &wanted {
        let before = running.iter().find(|r| r.key == spec.key);
        if before.is_some_and(|r| r.addr == spec.addr) {
            continue;
        }
        if let Some(old) = before {
            tracing::info!(child = %spec.name, from = %old.addr, to = %spec.addr, "programmer moved in the configuration: restarting it");
            sup.remove(&old.key);
        } else if let Err(e) = check_ports_free(&config, std::slice::from_ref(spec)) {
            tracing::error!(child = %spec.name, "programmer added to the configuration not started: {e}");
            continue;
        } else {
            tracing::info!(child = %spec.name, addr = %spec.addr, "programmer added to the configuration: starting it");
        }
        match sup.add(spec.clone()) {
            Ok(()) => started.push(spec.key.clone()),
            Err(e) => tracing::error!(child = %spec.name, "cannot start it: {e}"),
        }
    }
    let removed = running
        .into_iter()
        .filter(|r| !wanted.iter().any(|w| w.key == r.key))
        .map(|r| {
            tracing::info!(child = %r.name, "programmer removed from the configuration: stopping it");
            r.key
        })
        .collect();
    Ok(Followed {
        removed,
        reread: Reread {
            seq,
            config: Arc::new(config),
            children,
            started,
        },
    })
}

/// Keeps the state file in step with the children and the start-up phase.
async fn publish(
    run: RunDir,
    base: UpState,
    sup: Arc<Supervisor>,
    mut phase: watch::Receiver<(bool, Option<String>)>,
    mut reloads: watch::Receiver<Option<ReloadReport>>,
) {
    let mut changes = sup.changes();
    loop {
        let (ready, failed) = phase.borrow_and_update().clone();
        let state = UpState {
            ready,
            failed,
            children: sup.reports(),
            reload: reloads.borrow_and_update().clone(),
            ..base.clone()
        };
        if let Err(e) = run.write_state(&state) {
            tracing::warn!("{e}");
        }
        tokio::select! {
            r = changes.changed() => if r.is_err() { return },
            r = phase.changed() => if r.is_err() { return },
            r = reloads.changed() => if r.is_err() { return },
        }
    }
}

/// Starts `pas up` again in the background and waits until it reports the pool healthy.
fn detach(config_path: &Path, log_format: LogFormat, args: &UpArgs) -> Result<bool, UpError> {
    let (config, config_abs) = load(config_path)?;
    let run = RunDir::new(config.data_dir());
    if let Some(pid) = run.running_pid() {
        return Err(UpError::AlreadyRunning { pid });
    }
    let exe = std::env::current_exe().map_err(UpError::CurrentExe)?;
    // Fail here, with the error on the caller's terminal, rather than in the background.
    let children = select_children(
        &config,
        &config_abs,
        &args.only,
        &exe,
        log_format,
        &run.logs_dir(),
        run.data_dir(),
    )?;
    check_ports_free(&config, &children)?;
    run.clear();
    std::fs::create_dir_all(run.logs_dir()).map_err(UpError::Detach)?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(run.supervisor_log())
        .map_err(UpError::Detach)?;
    let log_err = log.try_clone().map_err(UpError::Detach)?;
    let mut cmd = std::process::Command::new(&exe);
    cmd.arg("--config")
        .arg(&config_abs)
        .arg("--log-format")
        .arg(match log_format {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        })
        .arg("up")
        .arg("--wait-timeout-s")
        .arg(args.wait_timeout_s.to_string())
        .arg("--stop-timeout-s")
        .arg(args.stop_timeout_s.to_string());
    if !args.only.is_empty() {
        cmd.arg("--only").arg(args.only.join(","));
    }
    use std::os::unix::process::CommandExt;
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .process_group(0)
        .spawn()
        .map_err(UpError::Detach)?;
    let pid = child.id();
    let deadline = std::time::Instant::now() + Duration::from_secs(args.wait_timeout_s + 30);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let state = run.read_state().ok().flatten();
            if let Some(state) = &state {
                println!("{}", children_table(&state.children));
            }
            eprintln!(
                "error: the background `pas up` (pid {pid}) {}; its log: {}",
                supervisor::describe_exit(status),
                run.supervisor_log().display()
            );
            eprint!("{}", log_tail(&run.supervisor_log(), 20));
            return Ok(false);
        }
        if let Ok(Some(state)) = run.read_state()
            && state.pid == pid
            && state.ready
        {
            println!("{}", children_table(&state.children));
            println!(
                "pool is up in the background (supervisor pid {pid}); logs in {}. `pas down` stops it.",
                run.logs_dir().display()
            );
            return Ok(true);
        }
        if std::time::Instant::now() > deadline {
            eprintln!(
                "error: the background `pas up` (pid {pid}) did not report ready; stopping it"
            );
            let _ = stop_running(config_path, Duration::from_secs(args.stop_timeout_s + 20));
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The last `lines` lines of a file (empty when unreadable).
fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    let mut tail = all[all.len().saturating_sub(lines)..].join("\n");
    if !tail.is_empty() {
        tail.push('\n');
    }
    tail
}

// ---------------------------------------------------------------------------------------------
// pas down
// ---------------------------------------------------------------------------------------------

/// Stops the running supervisor (SIGTERM, wait up to `timeout`, then SIGKILL it and its
/// children), kills leftovers of a supervisor that died, and removes the run files. Returns the
/// last state the supervisor published. Not running is not an error.
fn stop_running(config_path: &Path, timeout: Duration) -> Result<Option<UpState>, UpError> {
    let config = Config::load(config_path)?;
    let run = RunDir::new(config.data_dir());
    let state = run.read_state().ok().flatten();
    let Some(pid) = run.running_pid() else {
        reap_leftovers(&run);
        run.clear();
        println!("pas up is not running");
        return Ok(state);
    };
    let raw = Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX));
    println!("stopping the pool (supervisor pid {pid})…");
    let _ = kill(raw, Signal::SIGTERM);
    let deadline = std::time::Instant::now() + timeout;
    while rundir::alive(pid) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    if rundir::alive(pid) {
        eprintln!(
            "warning: the supervisor did not stop within {}s; killing it and its children",
            timeout.as_secs()
        );
        let _ = kill(raw, Signal::SIGKILL);
    }
    reap_leftovers(&run);
    run.clear();
    println!("pool stopped");
    Ok(state)
}

/// Kills children listed in a state file whose supervisor is gone (a supervisor killed with
/// SIGKILL cannot stop them). Only processes whose command line still names the state's
/// configuration file are touched, so a recycled pid is left alone.
fn reap_leftovers(run: &RunDir) {
    let Ok(Some(state)) = run.read_state() else {
        return;
    };
    if state.pid != std::process::id() && rundir::alive(state.pid) {
        return; // its supervisor still runs and owns them
    }
    let config = state.config.to_string_lossy().to_string();
    for child in &state.children {
        let Some(pid) = child.pid else { continue };
        let ours = rundir::command_line(pid).is_some_and(|cmd| cmd.contains(&config));
        if rundir::alive(pid) && ours {
            eprintln!(
                "killing {} (pid {pid}) left behind by a supervisor that died",
                child.name
            );
            supervisor::signal_group(Some(pid), Signal::SIGKILL);
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while rundir::alive(pid) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Output
// ---------------------------------------------------------------------------------------------

/// The children as a table: process, pid, address, state, restarts, last exit, log.
pub fn children_table(children: &[ChildReport]) -> comfy_table::Table {
    let mut table = super::table(&[
        "PROCESS",
        "PID",
        "ADDRESS",
        "STATE",
        "RESTARTS",
        "LAST EXIT",
        "LOG",
    ]);
    for c in children {
        table.add_row([
            c.name.clone(),
            c.pid.map_or("-".to_string(), |p| p.to_string()),
            c.addr.clone(),
            c.state.as_str().to_string(),
            c.restarts.to_string(),
            c.last_exit.clone().unwrap_or_else(|| "-".to_string()),
            c.log.display().to_string(),
        ]);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
pool_size: 2
programmers:
  - id: "001"
    port: 16151
    primary_llm: "ollama/qwen2.5-coder:7b-instruct"
    backup_llm: "ollama/qwen2.5-coder:14b-instruct"
    capabilities: ["fast"]
  - id: "002"
    port: 16152
    host: "0.0.0.0"
    primary_llm: "ollama/qwen2.5-coder:7b-instruct"
    backup_llm: "ollama/qwen2.5-coder:14b-instruct"
    capabilities: ["fast"]
"#;

    fn config() -> Config {
        let env = crate::config::PathEnv::in_dir("/tmp");
        Config::from_yaml_with(CONFIG, Path::new("/cfg/pool.yaml"), &env).unwrap()
    }

    fn select(only: &[&str]) -> Result<Vec<ChildSpec>, UpError> {
        let only: Vec<String> = only.iter().map(|s| s.to_string()).collect();
        select_children(
            &config(),
            Path::new("/cfg/pool.yaml"),
            &only,
            Path::new("/bin/pas"),
            LogFormat::Text,
            Path::new("/data/logs"),
            Path::new("/data"),
        )
    }

    #[test]
    fn everything_by_default_programmers_first() {
        let children = select(&[]).unwrap();
        let keys: Vec<&str> = children.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(keys, ["001", "002", "manager"]);
        // Each keeps the supervisor's data dir, whatever a re-read file says.
        for child in &children {
            assert_eq!(child.env, [("PAS_DATA_DIR".into(), "/data".into())]);
        }
        let args: Vec<String> = children[0]
            .args
            .iter()
            .map(|a| a.to_string_lossy().to_string())
            .collect();
        assert_eq!(
            args,
            [
                "--config",
                "/cfg/pool.yaml",
                "--log-format",
                "text",
                "programmer",
                "--id",
                "001"
            ]
        );
        assert_eq!(children[1].addr, "127.0.0.1:16152");
        assert_eq!(children[1].log, Path::new("/data/logs/programmer-002.log"));
        assert_eq!(children[2].health_service, MANAGER_SERVICE);
        assert_eq!(children[2].log, Path::new("/data/logs/manager.log"));
    }

    #[test]
    fn only_selects_a_subset_in_config_order() {
        let children = select(&["manager", "002"]).unwrap();
        let keys: Vec<&str> = children.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(keys, ["002", "manager"]);
        let children = select(&["002", " 001 "]).unwrap();
        let keys: Vec<&str> = children.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(keys, ["001", "002"]);
    }

    #[test]
    fn unknown_keys_are_rejected_with_the_known_ones() {
        let err = select(&["001", "007"]).unwrap_err().to_string();
        assert!(err.contains("\"007\""), "{err}");
        assert!(err.contains("manager, 001, 002"), "{err}");
    }

    #[test]
    fn a_busy_port_is_reported() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let yaml = CONFIG.replace("16151", &port.to_string());
        let env = crate::config::PathEnv::in_dir("/tmp");
        let config = Config::from_yaml_with(&yaml, Path::new("/cfg/pool.yaml"), &env).unwrap();
        let children = select_children(
            &config,
            Path::new("/cfg/pool.yaml"),
            &["001".to_string()],
            Path::new("/bin/pas"),
            LogFormat::Text,
            Path::new("/data/logs"),
            Path::new("/data"),
        )
        .unwrap();
        let err = check_ports_free(&config, &children)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("Prog-001") && err.contains(&port.to_string()),
            "{err}"
        );
    }
}
