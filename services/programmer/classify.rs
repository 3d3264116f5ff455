//! Outcome classifier: what an aider attempt really did.
//!
//! aider exits 0 after success *and* after any LLM failure, so the exit code proves nothing.
//! The classifier reads the output (`--no-pretty`, `COLUMNS=1000`: one error per line) and asks the
//! caller whether the repository really changed:
//! - an LLM failure is a line starting with `litellm.<ErrorName>:` (or "Empty response received
//!   from LLM"), mapped to the breaker's failure classes;
//! - an edit failure is the LLM answering in a way aider could not apply;
//! - success needs "Applied edit to" in the output *and* a real repository change.
//!
//! Cancellation and the deadline are decided by the runner and come first.

use super::aider::AiderRun;
use crate::contract::v1::ErrorClass;

/// The failure classes that count for the circuit breaker (the config's `failure_conditions`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LlmFailureClass {
    /// The LLM did not answer in time (litellm `Timeout`).
    Timeout,
    /// The endpoint answered with an error or broke the connection.
    ApiError,
    /// HTTP 429.
    RateLimit,
    /// The model is not served (503 / 404).
    ModelUnavailable,
}

impl LlmFailureClass {
    /// The name used in configuration (`failure_conditions`) and logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            LlmFailureClass::Timeout => "timeout",
            LlmFailureClass::ApiError => "api_error",
            LlmFailureClass::RateLimit => "rate_limit",
            LlmFailureClass::ModelUnavailable => "model_unavailable",
        }
    }
}

/// What one attempt amounted to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// aider applied an edit and the repository changed.
    Success,
    /// The LLM call failed: counts for the breaker and triggers failover.
    LlmFailure(LlmFailureClass, String),
    /// The LLM answered but its edit could not be applied (endpoint healthy; no breaker count).
    EditFailure(String),
    /// The run was cancelled by its token.
    Cancelled,
    /// The run hit its deadline.
    DeadlineExceeded,
    /// Anything else (bad arguments, setup failure, no change made, killed by a signal…).
    Other(String),
}

impl Outcome {
    /// The contract's error class for this outcome (`NONE` for success).
    pub fn error_class(&self) -> ErrorClass {
        match self {
            Outcome::Success => ErrorClass::None,
            Outcome::LlmFailure(c, _) => match c {
                LlmFailureClass::Timeout => ErrorClass::Timeout,
                LlmFailureClass::ApiError => ErrorClass::ApiError,
                LlmFailureClass::RateLimit => ErrorClass::RateLimit,
                LlmFailureClass::ModelUnavailable => ErrorClass::ModelUnavailable,
            },
            Outcome::EditFailure(_) => ErrorClass::EditFailed,
            Outcome::Cancelled => ErrorClass::Cancelled,
            Outcome::DeadlineExceeded => ErrorClass::Deadline,
            Outcome::Other(_) => ErrorClass::Internal,
        }
    }

    /// The human-readable message ("" for success).
    pub fn message(&self) -> &str {
        match self {
            Outcome::Success => "",
            Outcome::LlmFailure(_, m) | Outcome::EditFailure(m) | Outcome::Other(m) => m,
            Outcome::Cancelled => "cancelled",
            Outcome::DeadlineExceeded => "deadline exceeded",
        }
    }
}

/// litellm exception names and their class, most specific first.
const LLM_ERRORS: &[(&str, LlmFailureClass)] = &[
    ("RateLimitError", LlmFailureClass::RateLimit),
    ("Timeout", LlmFailureClass::Timeout),
    ("ServiceUnavailableError", LlmFailureClass::ModelUnavailable),
    ("NotFoundError", LlmFailureClass::ModelUnavailable),
    ("InternalServerError", LlmFailureClass::ApiError),
    ("APIConnectionError", LlmFailureClass::ApiError),
    ("BadRequestError", LlmFailureClass::ApiError),
    ("AuthenticationError", LlmFailureClass::ApiError),
    ("PermissionDeniedError", LlmFailureClass::ApiError),
    ("APIError", LlmFailureClass::ApiError),
    ("APIResponseValidationError", LlmFailureClass::ApiError),
    ("UnprocessableEntityError", LlmFailureClass::ApiError),
    ("ContextWindowExceededError", LlmFailureClass::ApiError),
];

/// Output lines that mean the LLM answered but the edit could not be applied.
const EDIT_FAILURES: &[&str] = &[
    "The LLM did not conform to the edit format",
    "SearchReplaceNoExactMatch",
    "Only 3 reflections allowed, stopping.",
];

const EMPTY_RESPONSE: &str = "Empty response received from LLM";
const APPLIED: &str = "Applied edit to";

/// Classifies one attempt. `repo_changed` must come from git (HEAD moved or the tree is dirty).
pub fn classify(run: &AiderRun, repo_changed: bool) -> Outcome {
    if run.cancelled {
        return Outcome::Cancelled;
    }
    if run.timed_out {
        return Outcome::DeadlineExceeded;
    }
    // The last LLM error wins: with retries off there is normally exactly one.
    let mut llm: Option<(LlmFailureClass, String)> = None;
    let mut edit: Option<String> = None;
    let mut applied = false;
    for line in run.output.lines() {
        let t = line.trim();
        if let Some(found) = llm_error(t) {
            llm = Some(found);
        } else if t.contains(EMPTY_RESPONSE) {
            llm = Some((LlmFailureClass::ApiError, t.to_string()));
        }
        if let Some(marker) = EDIT_FAILURES.iter().find(|m| t.contains(**m)) {
            if edit.is_none() || *marker == "Only 3 reflections allowed, stopping." {
                edit = Some(t.to_string());
            }
        }
        if t.starts_with(APPLIED) {
            applied = true;
        }
    }
    if applied && repo_changed {
        return Outcome::Success;
    }
    if let Some((class, message)) = llm {
        return Outcome::LlmFailure(class, message);
    }
    if let Some(message) = edit {
        return Outcome::EditFailure(message);
    }
    match (run.exit_code, run.signal) {
        (Some(0), _) if applied => Outcome::Other(
            "aider reported an applied edit but the repository did not change".to_string(),
        ),
        (Some(0), _) => Outcome::Other("aider finished without applying any edit".to_string()),
        (Some(code), _) => Outcome::Other(format!(
            "aider exited with status {code}{}",
            last_line(&run.output)
        )),
        (None, Some(sig)) => Outcome::Other(format!("aider was killed by signal {sig}")),
        (None, None) => Outcome::Other("aider ended without an exit status".to_string()),
    }
}

/// Finds `litellm.<ErrorName>: …` anywhere in a line (a stream cut mid-line puts the error right
/// after the partial reply) → (class, the text from `litellm.` on).
fn llm_error(line: &str) -> Option<(LlmFailureClass, String)> {
    let mut from = 0;
    while let Some(i) = line[from..].find("litellm.") {
        let start = from + i;
        let rest = &line[start + "litellm.".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect();
        if !name.is_empty() && rest[name.len()..].starts_with(':') {
            let class = LLM_ERRORS
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, class)| *class)
                // An unknown litellm error is still the endpoint failing.
                .unwrap_or(LlmFailureClass::ApiError);
            let message = line[start..].trim().to_string();
            // litellm reports every Ollama HTTP error as APIConnectionError; Ollama's own
            // "model ... not found" still means the model is not served.
            let lower = message.to_ascii_lowercase();
            let class = if class == LlmFailureClass::ApiError
                && lower.contains("model")
                && lower.contains("not found")
            {
                LlmFailureClass::ModelUnavailable
            } else {
                class
            };
            return Some((class, message));
        }
        from = start + "litellm.".len();
    }
    None
}

fn last_line(output: &str) -> String {
    output
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(|l| format!(": {l}"))
        .unwrap_or_default()
}
