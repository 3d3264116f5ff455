//! One aider attempt: spawn the real aider CLI in a task's worktree, stream its output, enforce
//! cancellation and the deadline on its whole process group, and report exit, output and usage.
//!
//! Why it looks like this (see `shared/notes/AIDER.md` for the measurements):
//! - aider runs through our embedded launcher ([`LAUNCHER_PY`]) which disables aider's own retry
//!   loop (the first LLM error is final: our failover owns retrying) and stops aider from reading
//!   the repository's `.aider.conf.yml` and `.env` files;
//! - the task text is data: it is one `--message=<text>` argument, and the launcher makes aider
//!   send it to the LLM as the user message, never run it as an aider command (`!cmd`, `/run`,
//!   `/load`, …), add files it mentions, run shell commands the LLM suggests, or edit a path
//!   outside the worktree; the task files follow `--`, so none is ever read as an option;
//! - no shell, a cleared environment and a private HOME per run, so nothing from the machine or the
//!   repository steers aider; every security-relevant flag is passed explicitly and after the
//!   configured extra flags, so ours win;
//! - the provider's API base is passed as a command-line setting (which beats any `.env`), the API
//!   key only through the environment (never on the command line) and is redacted from all output;
//! - aider runs in its own process group, and every way out of [`run_aider`] (exit, cancel,
//!   deadline, usage cap, the future being dropped) kills that group, so no orphan survives an
//!   attempt;
//! - a task's token and cost caps hold *during* a run, not only between attempts: with a
//!   [`UsageCap`], the analytics log (one `message_send` line per LLM reply, written as it
//!   happens) is tailed every [`USAGE_POLL`], and the run is stopped the moment the task's total
//!   crosses a cap, instead of letting aider start its next (possibly long) LLM call.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use crate::money::Usd;
use crate::programmer::classify::AiderOutput;
use crate::programmer::warm::{WarmChild, WarmPool};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::Serialize;
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The launcher script, embedded so the binary is self-contained; written to each run's private
/// directory before spawning.
pub const LAUNCHER_PY: &str = include_str!("aider_launcher.py");

/// Git identity of aider's commits.
const GIT_NAME: &str = "pas-programmer";
const GIT_EMAIL: &str = "pas-programmer@localhost";

/// How long aider gets between SIGTERM and SIGKILL when cancelled or out of time.
const TERM_GRACE: Duration = Duration::from_millis(1000);
/// How long to wait for the output pipes to close after the process group is gone.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a capped run reads the new lines of aider's analytics log. Each LLM reply is logged
/// once it is complete, so this bounds how long aider runs past the reply that crossed the cap.
pub const USAGE_POLL: Duration = Duration::from_millis(200);

/// The LLM provider API of a model: the configuration's own type.
pub use crate::config::Provider;

/// The LLM an attempt uses, with everything aider needs to reach and price it.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelEndpoint {
    /// litellm model name, e.g. `openai/gpt-4o-mini`, `ollama/qwen2.5-coder:7b`.
    pub name: String,
    /// Which API the name selects (usually [`Provider::from_model_name`]).
    pub provider: Provider,
    /// Base URL of the provider API (from our configuration, never from the caller).
    pub api_base: Option<String>,
    /// API key; passed through the environment only and redacted from output.
    pub api_key: Option<String>,
    /// USD per prompt token (0 for free models); written to the model metadata file so aider
    /// reports cost.
    pub input_cost_per_token: f64,
    /// USD per completion token.
    pub output_cost_per_token: f64,
    /// Aider edit format (`diff`, `whole`, …); `None` = `diff`.
    pub edit_format: Option<String>,
    /// Context window in tokens, for the metadata file.
    pub context_limit: u64,
}

impl ModelEndpoint {
    /// What `prompt` and `completion` tokens cost on this model, in USD: the one formula for the
    /// cap during a run and for the attempt's reported cost.
    pub fn cost_of(&self, prompt: u64, completion: u64) -> Usd {
        crate::config::token_cost(
            prompt,
            completion,
            self.input_cost_per_token,
            self.output_cost_per_token,
        )
    }
}

/// A task's token and cost caps, and what its earlier attempts already used: the run is stopped
/// when earlier + this run cross either cap.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageCap {
    /// `max_tokens_per_job`: tokens sent + received over the whole task.
    pub max_tokens: u64,
    /// `max_cost_per_job_usd` (or the amount the manager reserved): money over the whole task.
    pub max_cost: Usd,
    /// Tokens the task's earlier attempts used.
    pub prior_tokens: u64,
    /// What the task's earlier attempts spent.
    pub prior_cost: Usd,
}

impl UsageCap {
    /// Why the task is over a cap once a run used `tokens` and `cost` on top of the earlier
    /// attempts (the message names the cap, the task's figures and the limit), or `None`.
    pub fn exceeded(&self, tokens: u64, cost: Usd) -> Option<String> {
        let tokens = self.prior_tokens + tokens;
        let cost = self.prior_cost.saturating_add(cost);
        if tokens > self.max_tokens {
            return Some(format!(
                "max_tokens_per_job exceeded: {tokens} tokens used, limit {}",
                self.max_tokens
            ));
        }
        if cost > self.max_cost {
            return Some(format!(
                "max_cost_per_job_usd exceeded: {cost} spent, limit {}",
                self.max_cost
            ));
        }
        None
    }
}

/// Everything one aider attempt needs.
#[derive(Debug, Clone)]
pub struct AiderInvocation {
    /// The venv's python (it must have `aider-chat` installed).
    pub python: PathBuf,
    /// The task's worktree (must be inside a git repository; aider would `git init` otherwise).
    pub workdir: PathBuf,
    /// The LLM to use.
    pub model: ModelEndpoint,
    /// The task description (aider's `--message`).
    pub message: String,
    /// Files to add to the chat, relative to `workdir`.
    pub files: Vec<String>,
    /// Let aider commit its edits.
    pub auto_commit: bool,
    /// Extra aider flags from configuration; placed before ours, so ours win.
    pub extra_flags: Vec<String>,
    /// aider `--timeout`: per-read inactivity timeout of one LLM call, in seconds.
    pub request_timeout_s: u64,
    /// Program and arguments put in front of `python` (e.g. `strace -f -e trace=connect -o F`
    /// in tests that watch the network); normally empty.
    pub launch_prefix: Vec<OsString>,
    /// Extra environment for the process (normally empty; e.g. git identity overrides).
    pub extra_env: Vec<(String, String)>,
    /// Stop the run as soon as the task's usage crosses these caps (`None`: never watched).
    pub usage_cap: Option<UsageCap>,
    /// CPU niceness the launcher sets before aider starts (`aider.nice`), so the services
    /// outrank their workers on a saturated host.
    pub nice: u8,
    /// The launcher's memory ceiling, MiB (`aider.memory_limit_mb`; 0 = none).
    pub max_memory_mib: u64,
    /// Aider's reflection limit (`max_fix_iterations`): how many times it may send the model's
    /// failed edit back for a fix within one run; the launcher sets `Coder.max_reflections`.
    pub max_reflections: u32,
    /// The programmer's warm workers (`aider.start: warm`): the attempt runs on one of them when
    /// one takes it, else cold; `None` (or a `launch_prefix`) = always cold.
    pub warm: Option<Arc<WarmPool>>,
}

/// Which pipe a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputStream {
    /// aider's stdout (with `--no-pretty`, nearly everything).
    Stdout,
    /// aider's stderr.
    Stderr,
}

/// A piece of aider's output as it arrived (API key already redacted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputChunk {
    /// The pipe.
    pub stream: OutputStream,
    /// The text.
    pub text: String,
}

/// LLM usage of one attempt, from aider's analytics log.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct AiderUsage {
    /// LLM calls that got a reply (`message_send` events).
    pub llm_calls: u32,
    /// LLM calls started that never got a reply (`message_send_starting` without `message_send`).
    pub failed_calls: u32,
    /// Replied calls whose reply had no completion tokens (aider's "Empty response").
    pub empty_replies: u32,
    /// Prompt tokens over all replied calls.
    pub prompt_tokens: u64,
    /// Completion tokens over all replied calls.
    pub completion_tokens: u64,
    /// Cost over all replied calls (0 unless the model has prices): each call's reported dollars
    /// become [`Usd`] as they are read (a cost that is not money counts as 0), then add up exactly.
    pub cost: Usd,
}

/// The result of one aider attempt.
#[derive(Debug, Clone, Default)]
pub struct AiderRun {
    /// Exit code, if aider exited (not when killed by a signal).
    pub exit_code: Option<i32>,
    /// The signal that ended aider, if any.
    pub signal: Option<i32>,
    /// stdout and stderr interleaved in arrival order (key redacted), as the classifier read it.
    pub output: AiderOutput,
    /// Usage from the analytics log.
    pub usage: AiderUsage,
    /// The run was stopped by its cancellation token.
    pub cancelled: bool,
    /// The run was stopped by its deadline.
    pub timed_out: bool,
    /// The run was stopped by its [`UsageCap`]: which cap, with the figures seen at that moment.
    pub cap_reached: Option<String>,
    /// Wall time from spawn to the end.
    pub duration: Duration,
    /// The process group id aider ran in (gone when this is returned).
    pub pgid: Option<i32>,
    /// aider ran on a warm worker (false: a cold process).
    pub warm: bool,
}

/// Why an attempt could not even be started.
#[derive(Debug, thiserror::Error)]
pub enum AiderError {
    /// The worktree is missing or not inside a git repository.
    #[error("workdir {0} is not a directory inside a git repository")]
    NotAGitWorktree(PathBuf),
    /// The python interpreter is missing.
    #[error("aider python {0} not found (run scripts/install-aider.sh)")]
    PythonMissing(PathBuf),
    /// The private run directory or its files could not be written.
    #[error("cannot prepare the aider run directory: {0}")]
    Prepare(#[source] std::io::Error),
    /// The process could not be spawned.
    #[error("cannot spawn aider: {0}")]
    Spawn(#[source] std::io::Error),
    /// Waiting for the process failed.
    #[error("waiting for aider failed: {0}")]
    Wait(#[source] std::io::Error),
}

/// The private per-run directory: HOME, launcher, settings, metadata and analytics files.
struct RunDir {
    dir: tempfile::TempDir,
}

impl RunDir {
    fn create(inv: &AiderInvocation) -> Result<Self, AiderError> {
        let dir = tempfile::Builder::new()
            .prefix("pas-aider-")
            .tempdir()
            .map_err(AiderError::Prepare)?;
        let rd = RunDir { dir };
        std::fs::create_dir(rd.home()).map_err(AiderError::Prepare)?;
        // aider asks git for an identity and warns without one.
        std::fs::write(
            rd.home().join(".gitconfig"),
            format!("[user]\n\tname = {GIT_NAME}\n\temail = {GIT_EMAIL}\n"),
        )
        .map_err(AiderError::Prepare)?;
        std::fs::write(rd.launcher(), LAUNCHER_PY).map_err(AiderError::Prepare)?;
        std::fs::write(rd.settings(), model_settings_yaml(&inv.model))
            .map_err(AiderError::Prepare)?;
        std::fs::write(rd.metadata(), model_metadata_json(&inv.model))
            .map_err(AiderError::Prepare)?;
        Ok(rd)
    }
    fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }
    fn launcher(&self) -> PathBuf {
        self.dir.path().join("aider_launcher.py")
    }
    fn settings(&self) -> PathBuf {
        self.dir.path().join("model-settings.yml")
    }
    fn metadata(&self) -> PathBuf {
        self.dir.path().join("model-metadata.json")
    }
    fn analytics(&self) -> PathBuf {
        self.dir.path().join("analytics.jsonl")
    }
}

/// The interpreter's aider is not the one the configuration pins (`aider.version`), or cannot be
/// asked: the programmer refuses to start rather than run an aider whose flags and behaviour the
/// launcher was not written for.
#[derive(Debug, thiserror::Error)]
pub enum AiderVersionError {
    #[error(
        "aider.version: the configuration pins aider-chat {expected}, but {python} has {found} \
         installed (run scripts/install-aider.sh, or set aider.version to {found})"
    )]
    Mismatch {
        python: String,
        expected: String,
        found: String,
    },
    #[error("aider.python: cannot ask {python} for its aider-chat version: {reason}")]
    Unreadable { python: String, reason: String },
}

/// Asks `python` (isolated mode: no user site, no PYTHON* variables) which aider-chat it has and
/// compares it with `expected`.
pub async fn check_installed_version(
    python: &Path,
    expected: &str,
) -> Result<(), AiderVersionError> {
    let shown = python.display().to_string();
    let unreadable = |reason: String| AiderVersionError::Unreadable {
        python: shown.clone(),
        reason,
    };
    let run = Command::new(python)
        .args([
            "-I",
            "-c",
            "import importlib.metadata as m; print(m.version('aider-chat'))",
        ])
        .env_clear()
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .map_err(|_| unreadable("no answer within 60 s".into()))?
        .map_err(|e| unreadable(e.to_string()))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr.lines().last().unwrap_or_default().trim().to_string();
        return Err(unreadable(format!("{}: {last}", out.status)));
    }
    let found = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if found != expected.trim() {
        return Err(AiderVersionError::Mismatch {
            python: shown,
            expected: expected.trim().to_string(),
            found,
        });
    }
    Ok(())
}

/// The `--model-settings-file` content: edit format and no SDK-level retries.
pub fn model_settings_yaml(model: &ModelEndpoint) -> String {
    let entry = serde_json::json!([{
        "name": model.name,
        "edit_format": model.edit_format.as_deref().unwrap_or("diff"),
        "extra_params": {"max_retries": 0},
    }]);
    // JSON is valid YAML.
    entry.to_string()
}

/// The `--model-metadata-file` content: context size and prices keyed by the model name (stops
/// aider's metadata fetch and makes it report cost).
pub fn model_metadata_json(model: &ModelEndpoint) -> String {
    let provider = model.provider.as_str();
    serde_json::json!({
        model.name.clone(): {
            "max_tokens": model.context_limit,
            "max_input_tokens": model.context_limit,
            "max_output_tokens": 8192u64.min(model.context_limit.max(1)),
            "input_cost_per_token": model.input_cost_per_token,
            "output_cost_per_token": model.output_cost_per_token,
            "litellm_provider": provider,
            "mode": "chat",
        }
    })
    .to_string()
}

/// The full argument vector after `python launcher.py`.
pub fn aider_args(
    inv: &AiderInvocation,
    settings: &Path,
    metadata: &Path,
    analytics: &Path,
) -> Vec<OsString> {
    let mut a: Vec<OsString> = inv.extra_flags.iter().map(OsString::from).collect();
    let mut push = |s: &str| a.push(OsString::from(s));
    push("--model");
    push(&inv.model.name);
    push("--edit-format");
    push(inv.model.edit_format.as_deref().unwrap_or("diff"));
    for flag in [
        "--no-check-update",
        "--no-analytics",
        "--no-show-model-warnings",
        "--no-show-release-notes",
        "--no-detect-urls",
        "--no-gitignore",
        "--no-auto-lint",
        "--no-auto-test",
        "--no-pretty",
        "--no-fancy-input",
        "--yes-always",
        "--stream",
        "--no-attribute-co-authored-by",
        "--no-suggest-shell-commands",
    ] {
        push(flag);
    }
    push("--map-tokens");
    push("0");
    push("--chat-history-file");
    push("/dev/null");
    push("--input-history-file");
    push("/dev/null");
    push("--timeout");
    push(&inv.request_timeout_s.max(1).to_string());
    push(if inv.auto_commit {
        "--auto-commits"
    } else {
        "--no-auto-commits"
    });
    // The API base goes on the command line, which beats any environment file.
    match (inv.model.provider, inv.model.api_base.as_deref()) {
        (Provider::OpenAi, Some(base)) => {
            push("--openai-api-base");
            push(base);
            // litellm reads OPENAI_BASE_URL before OPENAI_API_BASE: pin both.
            push("--set-env");
            push(&format!("OPENAI_BASE_URL={base}"));
        }
        (Provider::Ollama | Provider::OllamaChat, Some(base)) => {
            push("--set-env");
            push(&format!("OLLAMA_API_BASE={base}"));
        }
        (Provider::Anthropic, Some(base)) => {
            push("--set-env");
            push(&format!("ANTHROPIC_API_BASE={base}"));
            push("--set-env");
            push(&format!("ANTHROPIC_BASE_URL={base}"));
        }
        _ => {}
    }
    a.push("--model-settings-file".into());
    a.push(settings.into());
    a.push("--model-metadata-file".into());
    a.push(metadata.into());
    a.push("--analytics-log".into());
    a.push(analytics.into());
    // One argument, `--message=<text>`: a description that looks like an option (`--yes-always`)
    // stays the message's value. The launcher makes aider send it to the LLM as it is, never run
    // it as one of aider's own `/` or `!` commands.
    a.push(format!("--message={}", inv.message).into());
    // The files are positional after `--`, so no name is ever read as an option (the request
    // checks refuse a leading `-` too).
    a.push("--".into());
    for f in &inv.files {
        a.push(f.into());
    }
    a
}

/// The environment every aider process starts from, with `home` as HOME: no key, no task setting.
/// A warm zygote imports aider with exactly this (see [`super::warm`]).
pub fn neutral_environment(home: &Path) -> Vec<(String, String)> {
    vec![
        (
            "PATH".to_string(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()),
        ),
        ("HOME".to_string(), home.display().to_string()),
        ("LANG".to_string(), "C.UTF-8".to_string()),
        ("LC_ALL".to_string(), "C.UTF-8".to_string()),
        ("PYTHONIOENCODING".to_string(), "utf-8".to_string()),
        ("PYTHONUNBUFFERED".to_string(), "1".to_string()),
        (
            "LITELLM_LOCAL_MODEL_COST_MAP".to_string(),
            "True".to_string(),
        ),
        ("HF_HUB_OFFLINE".to_string(), "1".to_string()),
        ("COLUMNS".to_string(), "1000".to_string()),
        ("BROWSER".to_string(), "true".to_string()),
        ("GIT_AUTHOR_NAME".to_string(), GIT_NAME.to_string()),
        ("GIT_AUTHOR_EMAIL".to_string(), GIT_EMAIL.to_string()),
        ("GIT_COMMITTER_NAME".to_string(), GIT_NAME.to_string()),
        ("GIT_COMMITTER_EMAIL".to_string(), GIT_EMAIL.to_string()),
        ("GIT_TERMINAL_PROMPT".to_string(), "0".to_string()),
    ]
}

/// The environment variables of the run (everything else is cleared).
fn environment(inv: &AiderInvocation, home: &Path) -> Vec<(String, String)> {
    let mut env = neutral_environment(home);
    env.extend([
        // Read by the launcher before anything else (see aider_launcher.py, item 10).
        ("PAS_AIDER_NICE".to_string(), inv.nice.to_string()),
        (
            "PAS_AIDER_MAX_MEMORY_MIB".to_string(),
            inv.max_memory_mib.to_string(),
        ),
        (
            "PAS_AIDER_MAX_REFLECTIONS".to_string(),
            inv.max_reflections.to_string(),
        ),
    ]);
    let key = inv.model.api_key.clone();
    match inv.model.provider {
        Provider::OpenAi => {
            env.push((
                "OPENAI_API_KEY".into(),
                key.unwrap_or_else(|| "sk-none".into()),
            ));
        }
        Provider::Anthropic => {
            env.push((
                "ANTHROPIC_API_KEY".into(),
                key.unwrap_or_else(|| "sk-ant-none".into()),
            ));
        }
        Provider::Ollama | Provider::OllamaChat => {
            if let Some(k) = key {
                env.push(("OLLAMA_API_KEY".into(), k));
            }
            if let Some(base) = &inv.model.api_base {
                env.push(("OLLAMA_API_BASE".into(), base.clone()));
            }
        }
    }
    if let (Provider::Anthropic, Some(base)) = (inv.model.provider, &inv.model.api_base) {
        env.push(("ANTHROPIC_API_BASE".into(), base.clone()));
    }
    env.extend(inv.extra_env.iter().cloned());
    env
}

/// Kills the process group when dropped unless disarmed: a dropped run leaves no orphans.
pub(crate) struct GroupGuard {
    pgid: Option<Pid>,
}

impl GroupGuard {
    /// Guards group `pgid`.
    pub(crate) fn new(pgid: Pid) -> Self {
        Self { pgid: Some(pgid) }
    }

    /// The group is gone (or someone else guards it now): never signal that id again.
    pub(crate) fn disarm(mut self) {
        self.pgid = None;
    }

    fn kill(&self, signal: Signal) {
        if let Some(pgid) = self.pgid {
            // ESRCH (group already gone) is the normal case after exit.
            let _ = killpg(pgid, signal);
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill(Signal::SIGKILL);
    }
}

/// Removes every occurrence of a secret from streamed text, even when it is split across chunks.
#[derive(Debug)]
pub struct Redactor {
    secret: Option<String>,
    pending: String,
}

/// What a redacted secret is replaced with.
pub const REDACTED: &str = "[REDACTED]";

impl Redactor {
    /// Redacts `secret` (nothing when `None` or empty).
    pub fn new(secret: Option<&str>) -> Self {
        Redactor {
            secret: secret.filter(|s| !s.is_empty()).map(str::to_string),
            pending: String::new(),
        }
    }

    /// Feeds text and returns what can be released now (a possible start of the secret is held).
    pub fn push(&mut self, text: &str) -> String {
        let Some(secret) = &self.secret else {
            return text.to_string();
        };
        self.pending.push_str(text);
        let replaced = self.pending.replace(secret.as_str(), REDACTED);
        // Hold back the longest suffix that is a proper prefix of the secret.
        let hold = (1..secret.len())
            .rev()
            .find(|&n| {
                replaced.len() >= n
                    && replaced.is_char_boundary(replaced.len() - n)
                    && secret.is_char_boundary(n)
                    && replaced.ends_with(&secret[..n])
            })
            .unwrap_or(0);
        let cut = replaced.len() - hold;
        self.pending = replaced[cut..].to_string();
        replaced[..cut].to_string()
    }

    /// Releases whatever is held at the end of the stream.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

/// Decodes UTF-8 across read boundaries (an incomplete trailing sequence waits for the next read).
#[derive(Debug, Default)]
struct Utf8Stream {
    rest: Vec<u8>,
}

impl Utf8Stream {
    fn push(&mut self, bytes: &[u8]) -> String {
        self.rest.extend_from_slice(bytes);
        match std::str::from_utf8(&self.rest) {
            Ok(s) => {
                let s = s.to_string();
                self.rest.clear();
                s
            }
            Err(e) if e.error_len().is_none() => {
                let valid = e.valid_up_to();
                let s = String::from_utf8_lossy(&self.rest[..valid]).into_owned();
                self.rest.drain(..valid);
                s
            }
            Err(_) => {
                let s = String::from_utf8_lossy(&self.rest).into_owned();
                self.rest.clear();
                s
            }
        }
    }
    fn finish(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.rest).into_owned();
        self.rest.clear();
        s
    }
}

/// Reads one pipe to the end, forwarding redacted chunks and appending them to the shared output.
async fn pump(
    mut pipe: impl tokio::io::AsyncRead + Unpin,
    stream: OutputStream,
    secret: Option<String>,
    output: std::sync::Arc<std::sync::Mutex<AiderOutput>>,
    tx: mpsc::Sender<OutputChunk>,
) {
    let mut buf = vec![0u8; 8192];
    let mut utf8 = Utf8Stream::default();
    let mut redactor = Redactor::new(secret.as_deref());
    let mut receiver_open = true;
    loop {
        let (text, done) = match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let tail = utf8.finish();
                let mut t = redactor.push(&tail);
                t.push_str(&redactor.finish());
                (t, true)
            }
            Ok(n) => (redactor.push(&utf8.push(&buf[..n])), false),
        };
        if !text.is_empty() {
            if let Ok(mut out) = output.lock() {
                out.push(&text);
            }
            if receiver_open {
                receiver_open = tx.send(OutputChunk { stream, text }).await.is_ok();
            }
        }
        if done {
            break;
        }
    }
}

/// Sums `message_send` events and counts calls that started but never got a reply.
pub fn parse_analytics(jsonl: &str) -> AiderUsage {
    let mut parser = UsageParser::default();
    jsonl.lines().for_each(|line| parser.line(line));
    parser.finish()
}

/// The analytics log read line by line: usage so far, and whether a call is waiting for its reply.
#[derive(Debug, Default)]
struct UsageParser {
    usage: AiderUsage,
    open_call: bool,
}

impl UsageParser {
    fn line(&mut self, line: &str) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            return;
        };
        let usage = &mut self.usage;
        match v.get("event").and_then(|e| e.as_str()) {
            Some("message_send_starting") => {
                if self.open_call {
                    usage.failed_calls += 1;
                }
                self.open_call = true;
            }
            Some("message_send") => {
                self.open_call = false;
                usage.llm_calls += 1;
                let p = v.get("properties");
                let num = |k: &str| {
                    p.and_then(|p| p.get(k))
                        .and_then(|x| x.as_f64())
                        .unwrap_or(0.0)
                };
                usage.prompt_tokens += num("prompt_tokens") as u64;
                let completion = num("completion_tokens") as u64;
                usage.completion_tokens += completion;
                if completion == 0 {
                    usage.empty_replies += 1;
                }
                let cost = Usd::from_usd(num("cost")).unwrap_or(Usd::ZERO);
                usage.cost = usage.cost.saturating_add(cost);
            }
            _ => {}
        }
    }

    /// The usage of the whole log: a call still open at its end never got a reply.
    fn finish(mut self) -> AiderUsage {
        if self.open_call {
            self.usage.failed_calls += 1;
        }
        self.usage
    }
}

/// Follows the analytics log while aider writes it: each [`poll`](Self::poll) reads only the bytes
/// added since the last one and parses the complete lines among them.
#[derive(Debug)]
struct AnalyticsTail {
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
    parser: UsageParser,
}

impl AnalyticsTail {
    fn new(path: PathBuf) -> Self {
        AnalyticsTail {
            path,
            offset: 0,
            partial: Vec::new(),
            parser: UsageParser::default(),
        }
    }

    /// Usage of the replies logged so far. A log not written yet counts as empty; a read error
    /// leaves the figures as they were (the next poll tries again).
    async fn poll(&mut self) -> &AiderUsage {
        use tokio::io::AsyncSeekExt;
        let mut added = Vec::new();
        if let Ok(mut file) = tokio::fs::File::open(&self.path).await {
            if file
                .seek(std::io::SeekFrom::Start(self.offset))
                .await
                .is_ok()
            {
                if let Ok(n) = file.read_to_end(&mut added).await {
                    self.offset += n as u64;
                }
            }
        }
        self.partial.extend_from_slice(&added);
        if let Some(end) = self.partial.iter().rposition(|&b| b == b'\n') {
            let complete: Vec<u8> = self.partial.drain(..=end).collect();
            String::from_utf8_lossy(&complete)
                .lines()
                .for_each(|line| self.parser.line(line));
        }
        &self.parser.usage
    }
}

/// Runs one aider attempt to the end, to cancellation or to the deadline.
///
/// Output chunks go to `output` as they arrive (a closed receiver is fine: the text is still
/// collected). On cancel or deadline the process group gets SIGTERM, then SIGKILL after 1 s;
/// dropping the returned future kills the group at once.
///
/// A warm worker killed before aider made any LLM call, by nobody here (its zygote died as it
/// took the task, and the worker with it), did not run the task: the attempt runs cold instead.
pub async fn run_aider(
    inv: AiderInvocation,
    output: mpsc::Sender<OutputChunk>,
    cancel: CancellationToken,
    deadline: Instant,
) -> Result<AiderRun, AiderError> {
    let cold = inv.warm.is_some().then(|| {
        let inv = AiderInvocation {
            warm: None,
            ..inv.clone()
        };
        (inv, output.clone())
    });
    let run = run_once(inv, output, cancel.clone(), deadline).await?;
    match cold {
        Some((inv, output)) if run.lost_with_its_zygote() => {
            tracing::warn!(
                "the warm aider worker was killed before it reached the LLM (its zygote died): running the attempt cold"
            );
            run_once(inv, output, cancel, deadline).await
        }
        _ => Ok(run),
    }
}

impl AiderRun {
    /// A warm run that ended by SIGKILL nobody here sent (not a cancel, deadline or usage cap)
    /// before any LLM call: the worker died with its zygote; the task never reached the model.
    fn lost_with_its_zygote(&self) -> bool {
        self.warm
            && self.signal == Some(Signal::SIGKILL as i32)
            && !self.cancelled
            && !self.timed_out
            && self.cap_reached.is_none()
            && self.usage.llm_calls == 0
            && self.usage.failed_calls == 0
    }
}

/// One aider process for the attempt (see [`run_aider`]).
async fn run_once(
    inv: AiderInvocation,
    output: mpsc::Sender<OutputChunk>,
    cancel: CancellationToken,
    deadline: Instant,
) -> Result<AiderRun, AiderError> {
    if !inv.workdir.is_dir() || !is_in_git_repo(&inv.workdir) {
        return Err(AiderError::NotAGitWorktree(inv.workdir.clone()));
    }
    if !inv.python.exists() {
        return Err(AiderError::PythonMissing(inv.python.clone()));
    }
    let run_dir = RunDir::create(&inv)?;
    let args = aider_args(
        &inv,
        &run_dir.settings(),
        &run_dir.metadata(),
        &run_dir.analytics(),
    );
    let env = environment(&inv, &run_dir.home());
    let started = Instant::now();
    let mut process = spawn(&inv, &run_dir, &args, &env, deadline, &cancel).await?;
    let pgid = process.pgid();
    let guard = GroupGuard { pgid };
    let collected = std::sync::Arc::new(std::sync::Mutex::new(AiderOutput::default()));
    let mut pumps = Vec::new();
    for (pipe, stream) in process.take_pipes() {
        pumps.push(tokio::spawn(pump(
            pipe,
            stream,
            inv.model.api_key.clone(),
            collected.clone(),
            output.clone(),
        )));
    }
    drop(output);

    let mut cancelled = false;
    let mut timed_out = false;
    let mut cap_reached = None;
    let mut tail = inv
        .usage_cap
        .as_ref()
        .map(|cap| (cap, AnalyticsTail::new(run_dir.analytics())));
    let mut poll = tokio::time::interval(USAGE_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let status = loop {
        tokio::select! {
            // Cancel safe: a wait interrupted by a poll tick is simply waited on again.
            status = process.wait() => break status?,
            () = cancel.cancelled() => {
                cancelled = true;
                break stop(&mut process, &guard).await?;
            }
            () = tokio::time::sleep_until(deadline) => {
                timed_out = true;
                break stop(&mut process, &guard).await?;
            }
            _ = poll.tick(), if tail.is_some() => {
                let Some((cap, tail)) = tail.as_mut() else { continue };
                let usage = tail.poll().await;
                let tokens = usage.prompt_tokens + usage.completion_tokens;
                let cost = inv.model.cost_of(usage.prompt_tokens, usage.completion_tokens);
                if let Some(why) = cap.exceeded(tokens, cost) {
                    tracing::info!(%why, "usage cap crossed while aider runs: stopping it");
                    cap_reached = Some(why);
                    break stop(&mut process, &guard).await?;
                }
            }
        }
    };
    // Whatever aider left behind in its group (git, a linter) goes too, so the pipes close.
    guard.kill(Signal::SIGKILL);
    // The group is gone now; never signal that id again (it could be reused).
    guard.disarm();
    for p in pumps {
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, p).await;
    }
    let output = collected
        .lock()
        .map(|mut output| {
            output.finish();
            std::mem::take(&mut *output)
        })
        .unwrap_or_default();
    let analytics = std::fs::read_to_string(run_dir.analytics()).unwrap_or_default();
    Ok(AiderRun {
        exit_code: status.code,
        signal: status.signal,
        output,
        usage: parse_analytics(&analytics),
        cancelled,
        timed_out,
        cap_reached,
        duration: started.elapsed(),
        pgid: pgid.map(|p| p.as_raw()),
        warm: matches!(process, Process::Warm(_)),
    })
}

/// SIGTERM to the group, SIGKILL after [`TERM_GRACE`], then reap.
async fn stop(process: &mut Process, guard: &GroupGuard) -> Result<Exit, AiderError> {
    guard.kill(Signal::SIGTERM);
    match tokio::time::timeout(TERM_GRACE, process.wait()).await {
        Ok(status) => status,
        Err(_) => {
            guard.kill(Signal::SIGKILL);
            process.wait().await
        }
    }
}

/// How an aider process ended.
#[derive(Debug, Clone, Copy)]
struct Exit {
    code: Option<i32>,
    signal: Option<i32>,
}

/// A running aider: a cold process we spawned, or a warm worker a zygote forked for us.
enum Process {
    Cold(Child),
    Warm(Box<WarmChild>),
}

/// Starts aider for `inv` in its worktree with `args` and `env`: on a warm worker when the
/// programmer has them and one takes the task, else cold (the same arguments and environment).
/// (A cancel or the deadline while waiting for a warm zygote still importing: cold, and the
/// caller stops it at once.)
async fn spawn(
    inv: &AiderInvocation,
    run_dir: &RunDir,
    args: &[OsString],
    env: &[(String, String)],
    deadline: Instant,
    cancel: &CancellationToken,
) -> Result<Process, AiderError> {
    if let (Some(warm), true) = (&inv.warm, inv.launch_prefix.is_empty()) {
        if let Some(child) = warm.launch(&inv.workdir, args, env, deadline, cancel).await {
            tracing::info!(pid = child.pid.as_raw(), warm = true, "aider started");
            return Ok(Process::Warm(Box::new(child)));
        }
    }
    let mut cmd = match inv.launch_prefix.split_first() {
        Some((program, rest)) => {
            let mut c = Command::new(program);
            c.args(rest).arg(&inv.python);
            c
        }
        None => Command::new(&inv.python),
    };
    cmd.arg(run_dir.launcher())
        .args(args)
        .current_dir(&inv.workdir)
        .env_clear()
        .envs(env.iter().cloned())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let child = cmd.spawn().map_err(AiderError::Spawn)?;
    tracing::info!(pid = child.id(), warm = false, "aider started");
    Ok(Process::Cold(child))
}

type Pipe = Box<dyn tokio::io::AsyncRead + Unpin + Send>;

impl Process {
    /// The process group aider runs in (its own pid in both cases).
    fn pgid(&self) -> Option<Pid> {
        match self {
            Process::Cold(child) => child
                .id()
                .and_then(|id| i32::try_from(id).ok())
                .map(Pid::from_raw),
            Process::Warm(w) => Some(w.pid),
        }
    }

    /// stdout and stderr, once.
    fn take_pipes(&mut self) -> Vec<(Pipe, OutputStream)> {
        let mut pipes: Vec<(Pipe, OutputStream)> = Vec::new();
        match self {
            Process::Cold(child) => {
                if let Some(out) = child.stdout.take() {
                    pipes.push((Box::new(out), OutputStream::Stdout));
                }
                if let Some(err) = child.stderr.take() {
                    pipes.push((Box::new(err), OutputStream::Stderr));
                }
            }
            Process::Warm(w) => {
                if let Some(out) = w.stdout.take() {
                    pipes.push((Box::new(out), OutputStream::Stdout));
                }
                if let Some(err) = w.stderr.take() {
                    pipes.push((Box::new(err), OutputStream::Stderr));
                }
            }
        }
        pipes
    }

    /// Waits for the end (cancel safe: polled again after an interruption).
    async fn wait(&mut self) -> Result<Exit, AiderError> {
        match self {
            Process::Cold(child) => {
                use std::os::unix::process::ExitStatusExt;
                let status = child.wait().await.map_err(AiderError::Wait)?;
                Ok(Exit {
                    code: status.code(),
                    signal: status.signal(),
                })
            }
            Process::Warm(w) => {
                let exit = (&mut w.exit)
                    .await
                    .map_err(|e| AiderError::Wait(std::io::Error::other(e)))?;
                Ok(Exit {
                    code: exit.code,
                    signal: exit.signal,
                })
            }
        }
    }
}

/// True when `dir` is inside a git work tree (a `.git` dir or file here or in a parent).
fn is_in_git_repo(dir: &Path) -> bool {
    dir.ancestors().any(|d| d.join(".git").exists())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redactor_catches_secrets_split_across_chunks() {
        let mut r = Redactor::new(Some("sk-SECRET"));
        let mut out = String::new();
        for piece in ["key is sk-", "SEC", "RET and sk-S", "ECRET!", " sk"] {
            out.push_str(&r.push(piece));
        }
        out.push_str(&r.finish());
        assert_eq!(out, "key is [REDACTED] and [REDACTED]! sk");
        let mut none = Redactor::new(None);
        assert_eq!(none.push("sk-SECRET"), "sk-SECRET");
    }

    #[test]
    fn utf8_split_across_reads_is_kept_whole() {
        let mut u = Utf8Stream::default();
        let bytes = "héllo".as_bytes();
        let a = u.push(&bytes[..2]);
        let b = u.push(&bytes[2..]);
        assert_eq!(format!("{a}{b}{}", u.finish()), "héllo");
    }

    #[test]
    fn analytics_counts_replies_and_failed_calls() {
        let log = r#"{"event": "launched"}
{"event": "message_send_starting", "properties": {}}
{"event": "message_send", "properties": {"prompt_tokens": 100, "completion_tokens": 20, "cost": 0.5}}
{"event": "message_send_starting", "properties": {}}
{"event": "message_send", "properties": {"prompt_tokens": 10, "completion_tokens": 2, "cost": 0.25}}
{"event": "message_send_starting", "properties": {}}
{"event": "message_send_exception", "properties": {}}
not json
"#;
        let u = parse_analytics(log);
        assert_eq!(
            (
                u.llm_calls,
                u.failed_calls,
                u.prompt_tokens,
                u.completion_tokens
            ),
            (2, 1, 110, 22)
        );
        assert_eq!(u.cost, Usd::from_nanos(750_000_000));
    }

    #[test]
    fn analytics_costs_become_integers_per_call_and_add_up_exactly() {
        // Ten calls at 0.1 µ$ + 0.35 n$ each: a micro-dollar per call would lose all of it.
        let call = r#"{"event": "message_send", "properties": {"prompt_tokens": 1, "completion_tokens": 0, "cost": 1.0035e-7}}"#;
        let bad = r#"{"event": "message_send", "properties": {"cost": -5.0}}"#;
        let log = format!("{}\n{bad}\n", [call; 10].join("\n"));
        let u = parse_analytics(&log);
        assert_eq!(u.llm_calls, 11);
        assert_eq!(
            u.cost,
            Usd::from_nanos(10 * 100),
            "a negative cost counts as 0"
        );
    }

    #[test]
    fn a_cap_counts_earlier_attempts_and_names_the_figures() {
        let cap = UsageCap {
            max_tokens: 1000,
            max_cost: Usd::from_nanos(10_000_000),
            prior_tokens: 900,
            prior_cost: Usd::from_nanos(4_000_000),
        };
        assert_eq!(
            cap.exceeded(100, Usd::from_nanos(6_000_000)),
            None,
            "exactly at the caps is allowed"
        );
        assert_eq!(
            cap.exceeded(101, Usd::ZERO).as_deref(),
            Some("max_tokens_per_job exceeded: 1001 tokens used, limit 1000")
        );
        assert_eq!(
            cap.exceeded(0, Usd::from_nanos(6_500_000)).as_deref(),
            Some("max_cost_per_job_usd exceeded: $0.0105 spent, limit $0.01")
        );
    }

    /// The tail reads only what was appended, and a line still being written waits for its end.
    #[tokio::test]
    async fn the_analytics_tail_follows_a_growing_log() {
        use std::io::Write;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("analytics.jsonl");
        let mut tail = AnalyticsTail::new(path.clone());
        assert_eq!(*tail.poll().await, AiderUsage::default(), "no log yet");

        let mut log = std::fs::File::create(&path).expect("create");
        let reply = r#"{"event": "message_send", "properties": {"prompt_tokens": 100, "completion_tokens": 20}}"#;
        write!(log, "{{\"event\": \"message_send_starting\"}}\n{reply}\n").expect("write");
        let (head, rest) = reply.split_at(30);
        write!(log, "{head}").expect("write");
        let usage = tail.poll().await.clone();
        assert_eq!((usage.llm_calls, usage.prompt_tokens), (1, 100));
        writeln!(log, "{rest}").expect("write");
        let usage = tail.poll().await.clone();
        assert_eq!(
            (
                usage.llm_calls,
                usage.prompt_tokens,
                usage.completion_tokens
            ),
            (2, 200, 40)
        );
        assert_eq!(tail.poll().await.llm_calls, 2, "nothing read twice");
    }

    fn endpoint(name: &str) -> ModelEndpoint {
        ModelEndpoint {
            name: name.into(),
            provider: Provider::from_model_name(name).unwrap_or(Provider::OpenAi),
            api_base: Some("http://127.0.0.1:9/v1".into()),
            api_key: Some("sk-secret".into()),
            input_cost_per_token: 1e-6,
            output_cost_per_token: 2e-6,
            edit_format: None,
            context_limit: 32000,
        }
    }

    #[test]
    fn our_flags_come_after_extra_flags_and_the_key_never_is_an_argument() {
        let inv = AiderInvocation {
            python: "/x/python".into(),
            workdir: "/w".into(),
            model: endpoint("openai/gpt-x"),
            message: "do it".into(),
            files: vec!["a.py".into()],
            auto_commit: true,
            extra_flags: vec!["--auto-test".into(), "--test-cmd".into(), "touch X".into()],
            request_timeout_s: 30,
            launch_prefix: vec![],
            extra_env: vec![],
            usage_cap: None,
            nice: 0,
            max_memory_mib: 0,
            max_reflections: 3,
            warm: None,
        };
        let args: Vec<String> = aider_args(&inv, Path::new("s"), Path::new("m"), Path::new("a"))
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let pos = |f: &str| args.iter().position(|a| a == f).unwrap();
        assert!(pos("--auto-test") < pos("--no-auto-test"));
        assert_eq!(args[pos("--openai-api-base") + 1], "http://127.0.0.1:9/v1");
        assert_eq!(args[args.len() - 3..], ["--message=do it", "--", "a.py"]);
        assert!(!args.iter().any(|a| a.contains("sk-secret")));
        let env = environment(&inv, Path::new("/h"));
        assert!(env.contains(&("OPENAI_API_KEY".into(), "sk-secret".into())));
        assert!(env.contains(&("HOME".into(), "/h".into())));
    }

    /// Hostile text stays one `--message=` value, and the files are positional after `--`.
    #[test]
    fn the_message_is_one_argument_and_files_follow_a_double_dash() {
        let message = "--yes-always\n/run touch X --openai-api-base=http://elsewhere/v1";
        let inv = AiderInvocation {
            python: "/x/python".into(),
            workdir: "/w".into(),
            model: endpoint("openai/gpt-x"),
            message: message.into(),
            files: vec!["-rf.py".into(), "--test-cmd=touch X".into()],
            auto_commit: true,
            extra_flags: vec![],
            request_timeout_s: 30,
            launch_prefix: vec![],
            extra_env: vec![],
            usage_cap: None,
            nice: 0,
            max_memory_mib: 0,
            max_reflections: 3,
            warm: None,
        };
        let strings = |inv: &AiderInvocation| -> Vec<String> {
            aider_args(inv, Path::new("s"), Path::new("m"), Path::new("a"))
                .into_iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect()
        };
        let args = strings(&inv);
        let dash = args.iter().position(|a| a == "--").expect("a `--`");
        assert_eq!(args[dash + 1..], ["-rf.py", "--test-cmd=touch X"]);
        assert_eq!(args[dash - 1], format!("--message={message}"));
        assert_eq!(args.iter().filter(|a| *a == "--").count(), 1, "{args:?}");
        // Everything before the message is what a plain task gets: the text added one argument.
        let plain = strings(&AiderInvocation {
            message: "plain".into(),
            ..inv.clone()
        });
        assert_eq!(args[..dash - 1], plain[..dash - 1]);
        assert_eq!(plain[dash - 1], "--message=plain");
    }

    #[test]
    fn provider_from_model_prefix_and_metadata_keyed_by_name() {
        assert_eq!(
            Provider::from_model_name("ollama_chat/q"),
            Some(Provider::OllamaChat)
        );
        assert_eq!(
            Provider::from_model_name("anthropic/claude"),
            Some(Provider::Anthropic)
        );
        assert_eq!(Provider::from_model_name("gpt-4"), None);
        let meta: serde_json::Value =
            serde_json::from_str(&model_metadata_json(&endpoint("openai/gpt-x"))).unwrap();
        assert_eq!(meta["openai/gpt-x"]["input_cost_per_token"], 1e-6);
        assert_eq!(meta["openai/gpt-x"]["max_input_tokens"], 32000);
    }
}
