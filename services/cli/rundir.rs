//! The files `pas up` keeps in the data directory so later commands can find it: the pid file of
//! the supervisor, a JSON state file with every child's pid, address and state, and the logs.
//!
//! ```text
//! <data_dir>/pas-up.pid         pid of the supervising `pas up` process
//! <data_dir>/pas-up.json        UpState: selection, children (pid, addr, state, restarts, log),
//!                               the last configuration re-read and what came of it
//! <data_dir>/logs/pas-up.log    the supervisor's own log when detached
//! <data_dir>/logs/<key>.log     each child's stdout and stderr (manager.log, programmer-001.log)
//! ```

use super::supervisor::ChildReport;
use nix::sys::signal::kill;
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// What the supervisor publishes about itself and its children.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpState {
    /// Pid of the supervisor.
    pub pid: u32,
    /// The configuration file it runs (absolute).
    pub config: PathBuf,
    /// The `--only` selection it was started with (empty = everything).
    pub only: Vec<String>,
    /// When it started, milliseconds since the Unix epoch.
    pub started_ms: i64,
    /// True once every child was healthy at the same time after start.
    pub ready: bool,
    /// Set when start-up failed and the supervisor is stopping.
    pub failed: Option<String>,
    /// Every child, in start order.
    pub children: Vec<ChildReport>,
    /// The last configuration re-read (SIGHUP) it followed, if any: what `pas reload` waits for.
    #[serde(default)]
    pub reload: Option<ReloadReport>,
}

/// A configuration re-read as `pas up` followed it (see `cli::rollout`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReloadReport {
    /// Which re-read this is: 1 for the first SIGHUP, and so on.
    pub seq: u64,
    /// Where it stands.
    pub state: ReloadState,
    /// What came of it, for people: the processes restarted, or why it stopped or did not load.
    pub detail: String,
}

/// Where a configuration re-read stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReloadState {
    /// Processes whose start-up settings changed are being restarted.
    Rolling,
    /// Applied: every process runs with the file (restarted where needed).
    Done,
    /// A restarted process did not come back: the rollout stopped there.
    Stopped,
    /// The file does not load: nothing changed.
    Invalid,
}

/// Errors reading or writing the run files.
#[derive(Debug, thiserror::Error)]
pub enum RunDirError {
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid state file: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// The run files of one data directory.
#[derive(Debug, Clone)]
pub struct RunDir {
    dir: PathBuf,
}

impl RunDir {
    /// The run files under `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: data_dir.into(),
        }
    }

    /// The data dir itself.
    pub fn data_dir(&self) -> &Path {
        &self.dir
    }

    /// `<data_dir>/pas-up.pid`.
    pub fn pid_file(&self) -> PathBuf {
        self.dir.join("pas-up.pid")
    }

    /// `<data_dir>/pas-up.json`.
    pub fn state_file(&self) -> PathBuf {
        self.dir.join("pas-up.json")
    }

    /// `<data_dir>/logs`.
    pub fn logs_dir(&self) -> PathBuf {
        self.dir.join("logs")
    }

    /// `<data_dir>/logs/pas-up.log`: the detached supervisor's stdout and stderr.
    pub fn supervisor_log(&self) -> PathBuf {
        self.logs_dir().join("pas-up.log")
    }

    /// The pid in the pid file, if there is a readable one.
    pub fn read_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.pid_file())
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// The pid of a live supervisor, if the pid file names one.
    pub fn running_pid(&self) -> Option<u32> {
        self.read_pid().filter(|pid| alive(*pid))
    }

    /// Writes the pid file.
    pub fn write_pid(&self, pid: u32) -> Result<(), RunDirError> {
        write_atomic(&self.pid_file(), format!("{pid}\n").as_bytes())
    }

    /// The state file, if there is one.
    pub fn read_state(&self) -> Result<Option<UpState>, RunDirError> {
        let path = self.state_file();
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(RunDirError::Read { path, source }),
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|source| RunDirError::Parse { path, source })
    }

    /// Replaces the state file atomically (readers never see half a file).
    pub fn write_state(&self, state: &UpState) -> Result<(), RunDirError> {
        let path = self.state_file();
        let json = serde_json::to_vec_pretty(state).map_err(|source| RunDirError::Parse {
            path: path.clone(),
            source,
        })?;
        write_atomic(&path, &json)
    }

    /// Removes the pid and state files (missing ones are fine).
    pub fn clear(&self) {
        for path in [self.pid_file(), self.state_file()] {
            if let Err(e) = std::fs::remove_file(&path)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(path = %path.display(), "cannot remove: {e}");
            }
        }
    }
}

/// Writes `bytes` to a temporary file next to `path` and renames it over `path`.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), RunDirError> {
    let err = |source| RunDirError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(err)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(err)?;
    std::io::Write::write_all(&mut tmp, bytes).map_err(err)?;
    tmp.persist(path).map_err(|e| err(e.error))?;
    Ok(())
}

/// Whether process `pid` exists and is not a zombie (a dead child nobody reaped yet still
/// answers `kill(pid, 0)`).
pub fn alive(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    if raw <= 1 || kill(Pid::from_raw(raw), None).is_err() {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the first field after the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_none_or(|state| state != "Z" && state != "X"),
        Err(_) => true,
    }
}

/// The command line of process `pid` (arguments joined by spaces), when readable.
pub fn command_line(pid: u32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|b| *b == 0)
            .map(String::from_utf8_lossy)
            .collect::<Vec<_>>()
            .join(" ")
            .trim()
            .to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::supervisor::ChildState;

    #[test]
    fn pid_and_state_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path().join("data"));
        assert_eq!(run.read_pid(), None);
        assert_eq!(run.read_state().unwrap(), None);
        run.write_pid(std::process::id()).unwrap();
        assert_eq!(run.running_pid(), Some(std::process::id()));
        let state = UpState {
            pid: 7,
            config: "/x/pool.yaml".into(),
            only: vec!["manager".into()],
            started_ms: 1,
            ready: true,
            failed: None,
            children: vec![ChildReport {
                key: "manager".into(),
                name: "Manager-Code".into(),
                addr: "127.0.0.1:1".into(),
                pid: Some(9),
                state: ChildState::Healthy,
                restarts: 2,
                last_exit: Some("killed by SIGKILL after 1.0s".into()),
                log: "/x/logs/manager.log".into(),
            }],
            reload: Some(ReloadReport {
                seq: 3,
                state: ReloadState::Stopped,
                detail: "Prog-001 did not come back".into(),
            }),
        };
        run.write_state(&state).unwrap();
        assert_eq!(run.read_state().unwrap(), Some(state));
        run.clear();
        assert_eq!(run.read_pid(), None);
        assert_eq!(run.read_state().unwrap(), None);
    }

    #[test]
    fn a_reaped_process_is_not_alive() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(!alive(pid));
        assert!(alive(std::process::id()));
        assert!(command_line(std::process::id()).is_some());
    }

    #[test]
    fn a_zombie_is_not_alive() {
        let child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert!(!alive(pid), "exited but unreaped child counted as alive");
        drop(child);
    }
}
