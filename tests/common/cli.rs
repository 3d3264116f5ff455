//! Running the `pas` CLI as a user does, against a [`TestPool`]: piped output read line by line
//! (waiting on what it prints, never on the clock), signals, exit codes.

#![allow(dead_code)]

use super::pool::TestPool;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};

/// How long one real task may take on a loaded 2-core machine (aider starts in 4–13 s).
pub const TASK_LIMIT: Duration = Duration::from_secs(240);

/// `pas --config POOL ARGS…`, stdout and stderr piped (so: plain mode), killed when dropped.
pub fn command(pool: &TestPool, args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::from(pool.pas_command(args));
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Runs `cmd` to its end (within [`TASK_LIMIT`]).
pub async fn run_to_end(mut cmd: tokio::process::Command, what: &str) -> Run {
    let out = tokio::time::timeout(TASK_LIMIT, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish in {TASK_LIMIT:?}"))
        .expect("run pas");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A finished `pas` command: exit code and what it printed.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Asserts `pieces` occur in `text` in this order.
pub fn assert_in_order(text: &str, pieces: &[&str]) {
    let mut from = 0;
    for piece in pieces {
        match text[from..].find(piece) {
            Some(at) => from += at + piece.len(),
            None => panic!("missing (or out of order) {piece:?} in:\n{text}"),
        }
    }
}

/// Reads lines from a child's stdout into `seen` until one satisfies `stop` (within
/// [`TASK_LIMIT`]); panics when the stream ends first.
pub async fn read_until(
    lines: &mut Lines<BufReader<ChildStdout>>,
    seen: &mut String,
    stop: impl Fn(&str) -> bool,
) {
    let found = tokio::time::timeout(TASK_LIMIT, async {
        while let Some(line) = lines.next_line().await.expect("read stdout") {
            seen.push_str(&line);
            seen.push('\n');
            if stop(&line) {
                return true;
            }
        }
        false
    })
    .await;
    match found {
        Ok(true) => {}
        Ok(false) => panic!("the stream ended early:\n{seen}"),
        Err(_) => panic!("nothing expected within {TASK_LIMIT:?}:\n{seen}"),
    }
}

/// Reads the rest of a child's stdout and waits for it; returns its exit code and stderr.
pub async fn finish(
    mut child: Child,
    mut lines: Lines<BufReader<ChildStdout>>,
    seen: &mut String,
) -> (i32, String) {
    let mut stderr = child.stderr.take().expect("piped stderr");
    let read_err = async {
        let mut text = String::new();
        let _ = tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut text).await;
        text
    };
    let read_out = async {
        while let Some(line) = lines.next_line().await.expect("read stdout") {
            seen.push_str(&line);
            seen.push('\n');
        }
    };
    let ((), err) = tokio::time::timeout(TASK_LIMIT, async { tokio::join!(read_out, read_err) })
        .await
        .unwrap_or_else(|_| panic!("pas did not end:\n{seen}"));
    let status = child.wait().await.expect("wait for pas");
    (status.code().unwrap_or(-1), err)
}

pub fn spawn_lines(mut cmd: tokio::process::Command) -> (Child, Lines<BufReader<ChildStdout>>) {
    let mut child = cmd.spawn().expect("spawn pas");
    let stdout = child.stdout.take().expect("piped stdout");
    (child, BufReader::new(stdout).lines())
}

pub fn sigint(child: &Child) {
    let pid = nix::unistd::Pid::from_raw(child.id().expect("running child") as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("SIGINT");
}

/// The line aider prints once it is up, just before it asks the model.
pub const AIDER_UP: &str = "Added src/module.py to the chat.";

/// Runs `cmd` (plain mode) until aider is up ([`AIDER_UP`]), sends it SIGINT, and reads it to its
/// end; returns its exit code, stdout and stderr.
pub async fn interrupt_once_aider_is_up(cmd: tokio::process::Command) -> (i32, String, String) {
    let (child, mut lines) = spawn_lines(cmd);
    let mut seen = String::new();
    read_until(&mut lines, &mut seen, |l| l == AIDER_UP).await;
    sigint(&child);
    let (code, stderr) = finish(child, lines, &mut seen).await;
    (code, seen, stderr)
}

/// The task the CLI tests dispatch.
pub const SAMPLE_TASK: &str = "Add docstrings to all functions";

/// `pas dispatch`'s arguments (after `dispatch`) for [`SAMPLE_TASK`] on `src/module.py` of the
/// `sample` workspace, on the programmer holding `capability`.
pub fn sample_task(capability: &str) -> [&str; 7] {
    [
        SAMPLE_TASK,
        "--files",
        "src/module.py",
        "--workspace",
        "sample",
        "--capability",
        capability,
    ]
}
