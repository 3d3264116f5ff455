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

/// The failure classes that count for the circuit breaker: the configuration's
/// `failure_conditions` type, so a class and its config name are one thing.
pub use crate::config::FailureCondition as LlmFailureClass;

/// What one attempt amounted to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// aider applied an edit and the repository changed.
    Success,
    /// The LLM call failed: counts for the breaker and triggers failover.
    LlmFailure(LlmFailureClass, String),
    /// The LLM answered but its edit could not be applied (endpoint healthy; no breaker count).
    EditFailure(String),
    /// aider ran out of memory under its ceiling (`aider.memory_limit_mb`): the launcher's line.
    MemoryCeiling(String),
    /// aider finished normally but the repository did not change: the model proposed no edit
    /// (or one that changed nothing). Endpoint healthy; a stronger model may do better.
    NoEdit(String),
    /// The run was cancelled by its token.
    Cancelled,
    /// The run hit its deadline.
    DeadlineExceeded,
    /// Anything else (bad arguments, setup failure, killed by a signal…).
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
            Outcome::MemoryCeiling(_) => ErrorClass::ResourceLimit,
            Outcome::NoEdit(_) => ErrorClass::NoEdit,
            Outcome::Cancelled => ErrorClass::Cancelled,
            Outcome::DeadlineExceeded => ErrorClass::Deadline,
            Outcome::Other(_) => ErrorClass::Internal,
        }
    }

    /// The human-readable message ("" for success), at most [`MAX_MESSAGE_BYTES`].
    pub fn message(&self) -> &str {
        let message = match self {
            Outcome::Success => "",
            Outcome::LlmFailure(_, m)
            | Outcome::EditFailure(m)
            | Outcome::MemoryCeiling(m)
            | Outcome::NoEdit(m)
            | Outcome::Other(m) => m,
            Outcome::Cancelled => "cancelled",
            Outcome::DeadlineExceeded => "deadline exceeded",
        };
        crate::programmer::worktree::at_most(message, MAX_MESSAGE_BYTES)
    }
}

/// Most bytes of an attempt's message. It is a line of aider's output, whose start says what
/// went wrong, and a line can hold a whole LLM response (litellm prints the body of an error). A
/// task's result carries every attempt's message twice (the attempt's and the summary) and must
/// stay far below gRPC's 4 MiB message limit, or it can never be delivered.
pub const MAX_MESSAGE_BYTES: usize = 4096;

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

/// The line the launcher prints when aider ran out of memory under its ceiling (see
/// aider_launcher.py); it names the ceiling.
const MEMORY_CEILING: &str = "pas: aider ran out of memory under its ceiling";

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
    // Out of memory first: a MemoryError inside litellm may also print as an LLM error.
    if let Some(line) = run.output.lines().find(|l| l.contains(MEMORY_CEILING)) {
        return Outcome::MemoryCeiling(line.trim().to_string());
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
        (Some(0), _) if applied => Outcome::NoEdit(
            "aider reported an applied edit but the repository did not change".to_string(),
        ),
        (Some(0), _) => Outcome::NoEdit("aider finished without applying any edit".to_string()),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn run(output: &str) -> AiderRun {
        AiderRun {
            exit_code: Some(0),
            output: output.to_string(),
            ..AiderRun::default()
        }
    }

    #[test]
    fn captured_outputs_classify_as_expected() {
        for (text, kind, class, marker) in CAPTURED {
            let changed = *kind == "ok";
            let outcome = classify(&run(text), changed);
            let ok = match (*kind, &outcome) {
                ("ok", Outcome::Success) => true,
                ("llm", Outcome::LlmFailure(c, m)) => Some(*c) == *class && m.contains(marker),
                ("edit", Outcome::EditFailure(m)) => m.contains(marker),
                _ => false,
            };
            assert!(
                ok,
                "expected {kind} {class:?} {marker:?}, got {outcome:?} for:\n{text}"
            );
        }
    }

    #[test]
    fn exit_zero_without_a_real_change_is_never_success() {
        for (text, kind, _, _) in CAPTURED {
            if *kind == "ok" {
                // "Applied edit to" but git shows no change.
                assert!(matches!(classify(&run(text), false), Outcome::NoEdit(_)));
            } else {
                // Failures stay failures even if the tree happens to be dirty.
                assert_eq!(classify(&run(text), true), classify(&run(text), false));
            }
        }
        assert!(matches!(
            classify(&run("Aider v0.86.2\n"), true),
            Outcome::NoEdit(_)
        ));
    }

    #[test]
    fn an_llm_error_outranks_the_edit_failures_it_causes() {
        // A stream cut mid-reply: aider reflects on the partial text, then stops.
        let outcome = classify(&run(OPENAI_FDROP), false);
        assert_eq!(outcome.error_class(), ErrorClass::ApiError);
        assert!(OPENAI_FDROP.contains("did not conform"));
    }

    #[test]
    fn cancel_and_deadline_come_first_and_other_exits_are_reported() {
        let mut r = run(OPENAI_F500);
        r.cancelled = true;
        assert_eq!(classify(&r, false), Outcome::Cancelled);
        r.cancelled = false;
        r.timed_out = true;
        assert_eq!(classify(&r, false), Outcome::DeadlineExceeded);
        let r = AiderRun {
            exit_code: Some(2),
            output: "aider: error: unrecognized arguments: --bogus\n".into(),
            ..AiderRun::default()
        };
        match classify(&r, false) {
            Outcome::Other(m) => assert!(m.contains("status 2") && m.contains("--bogus"), "{m}"),
            o => panic!("{o:?}"),
        }
        let r = AiderRun {
            signal: Some(9),
            ..AiderRun::default()
        };
        assert_eq!(
            classify(&r, false),
            Outcome::Other("aider was killed by signal 9".into())
        );
    }

    #[test]
    fn classes_map_to_the_contract() {
        use LlmFailureClass::*;
        let m = |c| Outcome::LlmFailure(c, String::new()).error_class();
        assert_eq!(m(Timeout), ErrorClass::Timeout);
        assert_eq!(m(ApiError), ErrorClass::ApiError);
        assert_eq!(m(RateLimit), ErrorClass::RateLimit);
        assert_eq!(m(ModelUnavailable), ErrorClass::ModelUnavailable);
        assert_eq!(Outcome::Success.error_class(), ErrorClass::None);
        assert_eq!(
            Outcome::EditFailure(String::new()).error_class(),
            ErrorClass::EditFailed
        );
        assert_eq!(
            Outcome::DeadlineExceeded.error_class(),
            ErrorClass::Deadline
        );
        assert_eq!(
            Outcome::Other(String::new()).error_class(),
            ErrorClass::Internal
        );
        assert_eq!(ModelUnavailable.as_str(), "model_unavailable");
    }

    #[test]
    fn a_message_is_the_start_of_a_line_however_long_the_line() {
        // An error line holding a whole response body (multi-byte characters, so the cut must
        // find a character boundary), 6 MB: more than a gRPC message may hold.
        let body = "é".repeat(3 << 20);
        let line = format!("litellm.BadRequestError: OpenAIException - {body}");
        let outcome = classify(&run(&format!("Thinking...\n{line}\n")), false);
        assert_eq!(outcome.error_class(), ErrorClass::ApiError);
        let message = outcome.message();
        assert!(message.len() <= MAX_MESSAGE_BYTES && message.len() > MAX_MESSAGE_BYTES - 4);
        assert!(line.starts_with(message));
        assert!(message.starts_with("litellm.BadRequestError: OpenAIException - é"));
        assert_eq!(Outcome::Other("short".into()).message(), "short");
    }

    #[test]
    fn litellm_error_names_map_per_the_design() {
        use LlmFailureClass::*;
        for (line, class) in [
            ("litellm.InternalServerError: x", ApiError),
            ("litellm.APIConnectionError: x", ApiError),
            ("litellm.BadRequestError: x", ApiError),
            ("litellm.AuthenticationError: x", ApiError),
            ("litellm.RateLimitError: x", RateLimit),
            ("litellm.Timeout: x", Timeout),
            ("litellm.ServiceUnavailableError: x", ModelUnavailable),
            ("litellm.NotFoundError: x", ModelUnavailable),
            ("partial reply textlitellm.Timeout: cut", Timeout),
        ] {
            assert_eq!(llm_error(line).map(|(c, _)| c), Some(class), "{line}");
        }
        assert_eq!(llm_error("see litellm.docs for help"), None);
        assert_eq!(llm_error("import litellm.utils"), None);
    }

    // ---- Real aider 0.86.2 outputs captured through run_aider against `pas llm-sim` ----
    // (tests/aider_real.rs with PAS_CAPTURE_DIR set; one per injected fault and provider.)

    const ANTHROPIC_F401: &str = r###"
Aider v0.86.2
Model: anthropic/f401 with diff edit format
Git repo: .git with 1 files
Repo-map: disabled
Added calc.py to the chat.

litellm.AuthenticationError: AnthropicException - b'{"error":{"message":"llm-sim injected HTTP 401","type":"authentication_error"},"type":"error"}'
The API provider is not able to authenticate you. Check your API key.

"###;
    const ANTHROPIC_F429: &str = r###"
Aider v0.86.2
Model: anthropic/f429 with diff edit format
Git repo: .git with 1 files
Repo-map: disabled
Added calc.py to the chat.

litellm.RateLimitError: AnthropicException - b'{"error":{"message":"llm-sim injected HTTP 429","type":"rate_limit_error"},"type":"error"}'
The API provider has rate limited you. Try again later or check your quotas.

"###;
    const ANTHROPIC_F503: &str = r###"
Aider v0.86.2
Model: anthropic/f503 with diff edit format
Git repo: .git with 1 files
Repo-map: disabled
Added calc.py to the chat.

litellm.ServiceUnavailableError: AnthropicException - b'{"error":{"message":"llm-sim injected HTTP 503","type":"api_error"},"type":"error"}'. Handle with `litellm.ServiceUnavailableError`.
The API provider's servers are down or overloaded.

"###;
    const ANTHROPIC_F529: &str = r###"
Aider v0.86.2
Model: anthropic/f529 with diff edit format
Git repo: .git with 1 files
Repo-map: disabled
Added calc.py to the chat.

litellm.InternalServerError: AnthropicError - b'{"error":{"message":"llm-sim injected HTTP 529","type":"overloaded_error"},"type":"error"}'
The API provider's servers are down or overloaded.

"###;
    const OLLAMA_F404: &str = r###"
Aider v0.86.2
Model: ollama/f404 with diff edit format
Git repo: .git with 1 files
Repo-map: disabled
Added calc.py to the chat.

litellm.APIConnectionError: OllamaException - {"error":"model not found, try pulling it first (llm-sim injected HTTP 404)"}

"###;
    const OLLAMA_F500: &str = r###"
Aider v0.86.2
Model: ollama/f500 with diff edit format
Git repo: .git with 1 files
Repo-map: disabled
Added calc.py to the chat.

litellm.APIConnectionError: OllamaException - {"error":"llm-sim injected HTTP 500"}

"###;
    const OPENAI_F401: &str = r###"
Aider v0.86.2
Model: openai/f401 with diff edit format
Git repo: .git with 1 files
Repo-map: disabled
Added calc.py to the chat.

litellm.AuthenticationError: AuthenticationError: OpenAIException - Incorrect API key provided: llm-sim injected HTTP 401
The API provider is not able to authenticate you. Check your API key.

"###;
    const OPENAI_F404: &str = r###"
Aider v0.86.2
Model: openai/f404 with diff edit format
Git repo: .git with 1 files
Repo-map: disabled
Added calc.py to the chat.

litellm.NotFoundError: OpenAIException - llm-sim injected HTTP 404

"###;
    const OPENAI_F429: &str = r###"
Aider v0.86.2
Model: openai/f429 with diff edit format
Git repo: .git with 1 files
Repo-map: disabled
Added calc.py to the chat.

litellm.RateLimitError: RateLimitError: OpenAIException - llm-sim injected HTTP 429
The API provider has rate limited you. Try again later or check your quotas.

"###;
    const OPENAI_F500: &str = r###"
Aider v0.86.2
Model: openai/f500 with diff edit format
Git repo: .git with 1 files
Repo-map: disabled
Added calc.py to the chat.

litellm.InternalServerError: InternalServerError: OpenAIException - llm-sim injected HTTP 500
The API provider's servers are down or overloaded.

"###;
    const OPENAI_F503: &str = r###"
Aider v0.86.2
Model: openai/f503 with diff edit format
Git repo: .git with 1 files
Repo-map: disabled
Added calc.py to the chat.

litellm.ServiceUnavailableError: ServiceUnavailableError: OpenAIException - llm-sim injected HTTP 503
The API provider's servers are down or overloaded.

"###;
    const OPENAI_FDROP: &str = r###"
Aider v0.86.2
Model: openai/fdrop with diff edit format
Git repo: .git with 1 files
Repo-map: disabled
Added calc.py to the chat.

I will apply "Add docstrings to all functions" to 1 file(s).

calc.py
```python
<<<<<<< SEARCH
def add(a, b):
    return a + b
=======
def add(a, b):
    """Add."""
    return litellm.APIConnectionError: APIConnectionError: OpenAIException - peer closed connection without sending complete message body (incomplete chunked read)

The LLM did not conform to the edit format.
https://aider.chat/docs/troubleshooting/edit-errors.html

I will apply "Add docstrings to all functions" to 1 file(s).

calc.py
```python
<<<<<<< SEARCH
def add(a, b):
    return a + b
=======
def add(a, b):
    """Add."""
    return
^^^ Expected `>>>>>>> REPLACE` or `=======`
I will apply "I will apply "Add docstrings to all functions" to 1 file(s)." to 1 file(s).

calc.py
```python
<<<<<<< SEARCH
def add(a, b):
    return a + b
=======
def add(a, b):
    """Add.""litellm.APIConnectionError: APIConnectionError: OpenAIException - peer closed connection without sending complete message body (incomplete chunked read)

The LLM did not conform to the edit format.
https://aider.chat/docs/troubleshooting/edit-errors.html

I will apply "I will apply "Add docstrings to all functions" to 1 file(s)." to 1 file(s).

calc.py
```python
<<<<<<< SEARCH
def add(a, b):
    return a + b
=======
def add(a, b):
    """Add.""
^^^ Expected `>>>>>>> REPLACE` or `=======`
I will apply "I will apply "I will apply "Add docstrings to all functions"..." to 1 file(s).

calc.py
```python
<<<<<<< SEARCH
def add(a, b):
    return a + b
=======
def add(a, b):
    """Addlitellm.APIConnectionError: APIConnectionError: OpenAIException - peer closed connection without sending complete message body (incomplete chunked read)

The LLM did not conform to the edit format.
https://aider.chat/docs/troubleshooting/edit-errors.html

I will apply "I will apply "I will apply "Add docstrings to all functions"..." to 1 file(s).

calc.py
```python
<<<<<<< SEARCH
def add(a, b):
    return a + b
=======
def add(a, b):
    """Add
^^^ Expected `>>>>>>> REPLACE` or `=======`
I will apply "I will apply "I will apply "I will apply "Add docstrings to ..." to 1 file(s).

calc.py
```python
<<<<<<< SEARCH
def add(a, b):
    return a + b
=======
def add(a, b):
    """Addlitellm.APIConnectionError: APIConnectionError: OpenAIException - peer closed connection without sending complete message body (incomplete chunked read)

The LLM did not conform to the edit format.
https://aider.chat/docs/troubleshooting/edit-errors.html

I will apply "I will apply "I will apply "I will apply "Add docstrings to ..." to 1 file(s).

calc.py
```python
<<<<<<< SEARCH
def add(a, b):
    return a + b
=======
def add(a, b):
    """Add
^^^ Expected `>>>>>>> REPLACE` or `=======`
Only 3 reflections allowed, stopping.
"###;
    const OPENAI_FEMPTY: &str = r###"
Aider v0.86.2
Model: openai/fempty with diff edit format
Git repo: .git with 1 files
Repo-map: disabled
Added calc.py to the chat.

Empty response received from LLM. Check your provider account?

Tokens: 1.9k sent, 0 received. Cost: $0.0058 message, $0.0058 session.
"###;
    const OPENAI_FHANG: &str = r###"
Aider v0.86.2
Model: openai/fhang with diff edit format
Git repo: .git with 1 files
Repo-map: disabled
Added calc.py to the chat.

litellm.Timeout: APITimeoutError - Request timed out. Error_str: Request timed out.
The API provider timed out without returning a response. They may be down or overloaded.

"###;
    const OPENAI_FMALFORMED: &str = r###"
Aider v0.86.2
Model: openai/fmalformed with diff edit format
Git repo: .git with 1 files
Repo-map: disabled
Added calc.py to the chat.

I will apply "Add docstrings to all functions" to 1 file(s).

```
<<<<<<< SEARCH
this reply does not follow the edit format
```

Tokens: 1.9k sent, 33 received. Cost: $0.0063 message, $0.0063 session.
The LLM did not conform to the edit format.
https://aider.chat/docs/troubleshooting/edit-errors.html

I will apply "Add docstrings to all functions" to 1 file(s).

```
<<<<<<< SEARCH

^^^ Bad/missing filename. The filename must be alone on the line before the opening fence ```
I will apply "I will apply "Add docstrings to all functions" to 1 file(s)." to 1 file(s).

```
<<<<<<< SEARCH
this reply does not follow the edit format
```

Tokens: 2.0k sent, 43 received. Cost: $0.0067 message, $0.01 session.
The LLM did not conform to the edit format.
https://aider.chat/docs/troubleshooting/edit-errors.html

I will apply "I will apply "Add docstrings to all functions" to 1 file(s)." to 1 file(s).

```
<<<<<<< SEARCH

^^^ Bad/missing filename. The filename must be alone on the line before the opening fence ```
I will apply "I will apply "I will apply "Add docstrings to all functions"..." to 1 file(s).

```
<<<<<<< SEARCH
this reply does not follow the edit format
```

Tokens: 2.1k sent, 42 received. Cost: $0.0070 message, $0.02 session.
The LLM did not conform to the edit format.
https://aider.chat/docs/troubleshooting/edit-errors.html

I will apply "I will apply "I will apply "Add docstrings to all functions"..." to 1 file(s).

```
<<<<<<< SEARCH

^^^ Bad/missing filename. The filename must be alone on the line before the opening fence ```
I will apply "I will apply "I will apply "I will apply "Add docstrings to ..." to 1 file(s).

```
<<<<<<< SEARCH
this reply does not follow the edit format
```

Tokens: 2.2k sent, 43 received. Cost: $0.0073 message, $0.03 session.
The LLM did not conform to the edit format.
https://aider.chat/docs/troubleshooting/edit-errors.html

I will apply "I will apply "I will apply "I will apply "Add docstrings to ..." to 1 file(s).

```
<<<<<<< SEARCH

^^^ Bad/missing filename. The filename must be alone on the line before the opening fence ```
Only 3 reflections allowed, stopping.
"###;
    const OPENAI_FNOMATCH: &str = r###"
Aider v0.86.2
Model: openai/fnomatch with diff edit format
Git repo: .git with 1 files
Repo-map: disabled
Added calc.py to the chat.

I will apply "Add docstrings to all functions" to 1 file(s).

calc.py
```python
<<<<<<< SEARCH
this line does not exist in the file (llm-sim no_match)
=======
replacement
>>>>>>> REPLACE
```


Tokens: 1.9k sent, 50 received. Cost: $0.0065 message, $0.0065 session.
The LLM did not conform to the edit format.
https://aider.chat/docs/troubleshooting/edit-errors.html

# 1 SEARCH/REPLACE block failed to match!

## SearchReplaceNoExactMatch: This SEARCH block failed to exactly match lines in calc.py
<<<<<<< SEARCH
this line does not exist in the file (llm-sim no_match)
=======
replacement
>>>>>>> REPLACE

The SEARCH section must exactly match an existing block of lines including all white space, comments, indentation, docstrings, etc

I will apply "# 1 SEARCH/REPLACE block failed to match!" to 1 file(s).

calc.py
```python
<<<<<<< SEARCH
this line does not exist in the file (llm-sim no_match)
=======
replacement
>>>>>>> REPLACE
```


Tokens: 2.1k sent, 54 received. Cost: $0.0071 message, $0.01 session.
The LLM did not conform to the edit format.
https://aider.chat/docs/troubleshooting/edit-errors.html

# 1 SEARCH/REPLACE block failed to match!

## SearchReplaceNoExactMatch: This SEARCH block failed to exactly match lines in calc.py
<<<<<<< SEARCH
this line does not exist in the file (llm-sim no_match)
=======
replacement
>>>>>>> REPLACE

The SEARCH section must exactly match an existing block of lines including all white space, comments, indentation, docstrings, etc

I will apply "# 1 SEARCH/REPLACE block failed to match!" to 1 file(s).

calc.py
```python
<<<<<<< SEARCH
this line does not exist in the file (llm-sim no_match)
=======
replacement
>>>>>>> REPLACE
```


Tokens: 2.2k sent, 54 received. Cost: $0.0076 message, $0.02 session.
The LLM did not conform to the edit format.
https://aider.chat/docs/troubleshooting/edit-errors.html

# 1 SEARCH/REPLACE block failed to match!

## SearchReplaceNoExactMatch: This SEARCH block failed to exactly match lines in calc.py
<<<<<<< SEARCH
this line does not exist in the file (llm-sim no_match)
=======
replacement
>>>>>>> REPLACE

The SEARCH section must exactly match an existing block of lines including all white space, comments, indentation, docstrings, etc

I will apply "# 1 SEARCH/REPLACE block failed to match!" to 1 file(s).

calc.py
```python
<<<<<<< SEARCH
this line does not exist in the file (llm-sim no_match)
=======
replacement
>>>>>>> REPLACE
```


Tokens: 2.4k sent, 54 received. Cost: $0.0081 message, $0.03 session.
The LLM did not conform to the edit format.
https://aider.chat/docs/troubleshooting/edit-errors.html

# 1 SEARCH/REPLACE block failed to match!

## SearchReplaceNoExactMatch: This SEARCH block failed to exactly match lines in calc.py
<<<<<<< SEARCH
this line does not exist in the file (llm-sim no_match)
=======
replacement
>>>>>>> REPLACE

The SEARCH section must exactly match an existing block of lines including all white space, comments, indentation, docstrings, etc

Only 3 reflections allowed, stopping.
"###;
    const SUCCESS_ANTHROPIC_CLAUDE_SONNET_4_20250514: &str = r###"
Aider v0.86.2
Model: anthropic/claude-sonnet-4-20250514 with diff edit format
Git repo: .git with 1 files
Repo-map: disabled
Added calc.py to the chat.

I will apply "Add docstrings to all functions" to 1 file(s).

calc.py
```python
<<<<<<< SEARCH
def add(a, b):
    return a + b
=======
def add(a, b):
    """Add."""
    return a + b
>>>>>>> REPLACE
```

calc.py
```python
<<<<<<< SEARCH
def sub(a, b):
    return a - b
=======
def sub(a, b):
    """Sub."""
    return a - b
>>>>>>> REPLACE
```


Tokens: 1.9k sent, 103 received. Cost: $0.0073 message, $0.0073 session.
Applied edit to calc.py
Commit 7a0d2bc chore: apply llm-sim edit to calc.py
"###;
    const SUCCESS_OLLAMA_QWEN2_5_CODER_7B_INSTRUCT: &str = r###"
Aider v0.86.2
Model: ollama/qwen2.5-coder:7b-instruct with diff edit format
Git repo: .git with 1 files
Repo-map: disabled
Added calc.py to the chat.

I will apply "Add docstrings to all functions" to 1 file(s).

calc.py
```python
<<<<<<< SEARCH
def add(a, b):
    return a + b
=======
def add(a, b):
    """Add."""
    return a + b
>>>>>>> REPLACE
```

calc.py
```python
<<<<<<< SEARCH
def sub(a, b):
    return a - b
=======
def sub(a, b):
    """Sub."""
    return a - b
>>>>>>> REPLACE
```


Tokens: 1.9k sent, 103 received.
Applied edit to calc.py
Commit d866bd6 chore: apply llm-sim edit to calc.py
"###;
    const SUCCESS_OPENAI_GPT_4O: &str = r###"
Aider v0.86.2
Model: openai/gpt-4o with diff edit format
Git repo: .git with 1 files
Repo-map: disabled
Added calc.py to the chat.

I will apply "Add docstrings to all functions" to 1 file(s).

calc.py
```python
<<<<<<< SEARCH
def add(a, b):
    return a + b
=======
def add(a, b):
    """Add."""
    return a + b
>>>>>>> REPLACE
```

calc.py
```python
<<<<<<< SEARCH
def sub(a, b):
    return a - b
=======
def sub(a, b):
    """Sub."""
    return a - b
>>>>>>> REPLACE
```


Tokens: 1.9k sent, 103 received. Cost: $0.0073 message, $0.0073 session.
Applied edit to calc.py
Commit 77e889d chore: apply llm-sim edit to calc.py
"###;

    /// (fixture, expected outcome kind, class, text the message must contain)
    const CAPTURED: &[(&str, &str, Option<LlmFailureClass>, &str)] = &[
        (
            ANTHROPIC_F401,
            "llm",
            Some(LlmFailureClass::ApiError),
            "litellm.AuthenticationError:",
        ),
        (
            ANTHROPIC_F429,
            "llm",
            Some(LlmFailureClass::RateLimit),
            "litellm.RateLimitError:",
        ),
        (
            ANTHROPIC_F503,
            "llm",
            Some(LlmFailureClass::ModelUnavailable),
            "litellm.ServiceUnavailableError:",
        ),
        (
            ANTHROPIC_F529,
            "llm",
            Some(LlmFailureClass::ApiError),
            "litellm.InternalServerError:",
        ),
        (
            OLLAMA_F404,
            "llm",
            Some(LlmFailureClass::ModelUnavailable),
            "litellm.APIConnectionError:",
        ),
        (
            OLLAMA_F500,
            "llm",
            Some(LlmFailureClass::ApiError),
            "litellm.APIConnectionError:",
        ),
        (
            OPENAI_F401,
            "llm",
            Some(LlmFailureClass::ApiError),
            "litellm.AuthenticationError:",
        ),
        (
            OPENAI_F404,
            "llm",
            Some(LlmFailureClass::ModelUnavailable),
            "litellm.NotFoundError:",
        ),
        (
            OPENAI_F429,
            "llm",
            Some(LlmFailureClass::RateLimit),
            "litellm.RateLimitError:",
        ),
        (
            OPENAI_F500,
            "llm",
            Some(LlmFailureClass::ApiError),
            "litellm.InternalServerError:",
        ),
        (
            OPENAI_F503,
            "llm",
            Some(LlmFailureClass::ModelUnavailable),
            "litellm.ServiceUnavailableError:",
        ),
        (
            OPENAI_FDROP,
            "llm",
            Some(LlmFailureClass::ApiError),
            "litellm.APIConnectionError:",
        ),
        (
            OPENAI_FEMPTY,
            "llm",
            Some(LlmFailureClass::ApiError),
            "Empty response received from LLM",
        ),
        (
            OPENAI_FHANG,
            "llm",
            Some(LlmFailureClass::Timeout),
            "litellm.Timeout:",
        ),
        (
            OPENAI_FMALFORMED,
            "edit",
            None,
            "Only 3 reflections allowed, stopping.",
        ),
        (
            OPENAI_FNOMATCH,
            "edit",
            None,
            "Only 3 reflections allowed, stopping.",
        ),
        (SUCCESS_ANTHROPIC_CLAUDE_SONNET_4_20250514, "ok", None, ""),
        (SUCCESS_OLLAMA_QWEN2_5_CODER_7B_INSTRUCT, "ok", None, ""),
        (SUCCESS_OPENAI_GPT_4O, "ok", None, ""),
    ];
}
