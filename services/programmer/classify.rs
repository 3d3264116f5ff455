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
        crate::workspace::at_most(message, MAX_MESSAGE_BYTES)
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

/// aider's line when a reply ran into the model's token limit (`show_exhausted_error`): the
/// call's reply was printed, and no call follows it in the run.
const EXHAUSTED: &str = "has hit a token limit!";
const APPLIED: &str = "Applied edit to";

/// Classifies one attempt. `repo_changed` must come from git (HEAD moved or the tree is dirty).
pub fn classify(run: &AiderRun, repo_changed: bool) -> Outcome {
    if run.cancelled {
        return Outcome::Cancelled;
    }
    if run.timed_out {
        return Outcome::DeadlineExceeded;
    }
    let seen = &run.output.seen;
    // Out of memory first: a MemoryError inside litellm may also print as an LLM error.
    if let Some(line) = &seen.memory_ceiling {
        return Outcome::MemoryCeiling(line.clone());
    }
    if seen.applied && repo_changed {
        return Outcome::Success;
    }
    if let Some((class, message)) = &seen.llm
        && aider_saw_a_call_fail(run)
    {
        return Outcome::LlmFailure(*class, message.clone());
    }
    if let Some(message) = &seen.empty_reply
        && aider_got_an_empty_reply(run)
    {
        return Outcome::LlmFailure(LlmFailureClass::ApiError, message.clone());
    }
    if let Some(message) = &seen.edit {
        return Outcome::EditFailure(message.clone());
    }
    match (run.exit_code, run.signal) {
        (Some(0), _) if seen.applied => Outcome::NoEdit(
            "aider reported an applied edit but the repository did not change".to_string(),
        ),
        (Some(0), _) => Outcome::NoEdit("aider finished without applying any edit".to_string()),
        (Some(code), _) => Outcome::Other(format!(
            "aider exited with status {code}{}",
            if seen.last_line.is_empty() {
                String::new()
            } else {
                format!(": {}", seen.last_line)
            }
        )),
        (None, Some(sig)) => Outcome::Other(format!("aider was killed by signal {sig}")),
        (None, None) => Outcome::Other("aider ended without an exit status".to_string()),
    }
}

/// Whether an LLM error line in the output can be aider's own report of a failed call: such a call
/// leaves a start without a reply in aider's analytics log. When every call got its reply, the
/// line is part of a reply (the model repeating what the task text asked it to print) and must
/// not count against the endpoint — its breaker, a failover to the paid backup. A log without any
/// call (aider ended before it wrote one) cannot tell: the line is believed.
///
/// A reply cut at the token limit also leaves its call without a `message_send` event, after
/// printing whatever the model wrote: once aider reports that, an error line is the reply's.
fn aider_saw_a_call_fail(run: &AiderRun) -> bool {
    (run.usage.failed_calls > 0 || run.usage.llm_calls == 0) && !run.output.seen.exhausted
}

/// Whether aider's "Empty response" line can be true: some reply had no completion tokens (or
/// the analytics log has no call to tell). Otherwise a reply printed the line.
fn aider_got_an_empty_reply(run: &AiderRun) -> bool {
    run.usage.empty_replies > 0 || run.usage.llm_calls == 0
}

/// Most bytes of one output line the classifier reads at once: a longer line (aider streaming a
/// reply without a newline) is read in pieces of about this size, so what the classifier holds
/// stays bounded.
const MAX_LINE_BYTES: usize = 64 << 10;

/// Bytes of an attempt's output kept as text from its start, and again from its end (see
/// [`AiderOutput::text`]).
const KEPT_TEXT_BYTES: usize = 64 << 10;

/// An attempt's output (stdout and stderr in arrival order, key redacted), read as it arrives:
/// the classifier's findings over every line, and the output's first and last
/// [`KEPT_TEXT_BYTES`] as text. Nothing here grows with the output: a task whose aider prints
/// for its whole deadline costs its programmer no more memory than a short one (its output
/// still reaches followers whole, as events).
#[derive(Debug, Clone, Default)]
pub struct AiderOutput {
    /// What the classifier found, line by line.
    pub seen: Seen,
    /// The line not yet ended by a newline.
    line: String,
    head: String,
    tail: String,
    /// Bytes between `head` and `tail` that were not kept.
    left_out: usize,
}

/// What the classifier found in the output lines read so far.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    /// The launcher's out-of-memory line (the first).
    pub memory_ceiling: Option<String>,
    /// The last LLM failure: with retries off there is normally exactly one.
    pub llm: Option<(LlmFailureClass, String)>,
    /// aider's line for a reply with no content (the last one).
    pub empty_reply: Option<String>,
    /// aider said a reply hit the model's token limit.
    pub exhausted: bool,
    /// The first edit failure, or the reflections' limit when it was reached.
    pub edit: Option<String>,
    /// aider said it applied an edit.
    pub applied: bool,
    /// The last line that is not blank, trimmed.
    pub last_line: String,
}

impl AiderOutput {
    /// `text` read whole, as if it were an attempt's entire output.
    pub fn of(text: &str) -> Self {
        let mut output = Self::default();
        output.push(text);
        output.finish();
        output
    }

    /// Reads the next piece of output (any split: a line may span pieces).
    pub fn push(&mut self, text: &str) {
        self.keep_text(text);
        let mut pieces = text.split('\n');
        let first = pieces.next().unwrap_or_default();
        self.line.push_str(first);
        for piece in pieces {
            self.end_line();
            self.line.push_str(piece);
        }
        if self.line.len() > MAX_LINE_BYTES {
            self.end_line();
        }
    }

    /// Reads the last line, which no newline ended. Call once the output is over.
    pub fn finish(&mut self) {
        if !self.line.is_empty() {
            self.end_line();
        }
    }

    /// The output as text: all of it, or its first and last [`KEPT_TEXT_BYTES`] with a line
    /// between them saying how much was left out.
    pub fn text(&self) -> String {
        if self.left_out == 0 {
            return format!("{}{}", self.head, self.tail);
        }
        format!(
            "{}\n[pas: {} bytes of aider's output left out]\n{}",
            self.head, self.left_out, self.tail
        )
    }

    fn keep_text(&mut self, mut text: &str) {
        // The head takes text until it is full; from then on everything goes to the tail.
        if self.tail.is_empty() && self.head.len() < KEPT_TEXT_BYTES {
            let room = crate::workspace::at_most(text, KEPT_TEXT_BYTES - self.head.len());
            self.head.push_str(room);
            text = &text[room.len()..];
        }
        self.tail.push_str(text);
        if self.tail.len() > 2 * KEPT_TEXT_BYTES {
            let mut cut = self.tail.len() - KEPT_TEXT_BYTES;
            while !self.tail.is_char_boundary(cut) {
                cut += 1;
            }
            self.left_out += cut;
            self.tail.drain(..cut);
        }
    }

    fn end_line(&mut self) {
        let line = std::mem::take(&mut self.line);
        self.seen.read(&line);
        self.line = line;
        self.line.clear();
    }
}

/// The output as [`AiderOutput::text`] gives it.
impl std::fmt::Display for AiderOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text())
    }
}

impl Seen {
    /// Reads one line of output.
    fn read(&mut self, line: &str) {
        let t = line.trim();
        if t.is_empty() {
            return;
        }
        if self.memory_ceiling.is_none() && t.contains(MEMORY_CEILING) {
            self.memory_ceiling = Some(t.to_string());
        }
        if let Some(found) = llm_error(t) {
            self.llm = Some(found);
        } else if t.contains(EMPTY_RESPONSE) {
            self.empty_reply = Some(t.to_string());
        }
        if let Some(marker) = EDIT_FAILURES.iter().find(|m| t.contains(**m))
            && (self.edit.is_none() || *marker == "Only 3 reflections allowed, stopping.")
        {
            self.edit = Some(t.to_string());
        }
        if t.starts_with(APPLIED) {
            self.applied = true;
        }
        if t.contains(EXHAUSTED) {
            self.exhausted = true;
        }
        self.last_line.clear();
        self.last_line.push_str(t);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn run(output: &str) -> AiderRun {
        AiderRun {
            exit_code: Some(0),
            output: AiderOutput::of(output),
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

    /// An LLM error line counts only when aider's analytics show a call without its reply (or no
    /// call at all); an "Empty response" line only when a reply was empty.
    #[test]
    fn llm_error_lines_count_only_when_a_call_failed() {
        let is_llm = |r: &AiderRun| matches!(classify(r, false), Outcome::LlmFailure(..));
        let mut r = run("litellm.RateLimitError: quota exceeded\n");
        let mut seen = vec![is_llm(&r)]; // no calls logged: believed
        r.usage.llm_calls = 2;
        seen.push(is_llm(&r)); // every call answered: a reply's text
        r.usage.failed_calls = 1;
        seen.push(is_llm(&r)); // one call failed
        let mut r = run("Empty response received from LLM. Check your provider account?\n");
        r.usage.llm_calls = 1;
        seen.push(is_llm(&r)); // the reply had tokens
        r.usage.empty_replies = 1;
        seen.push(is_llm(&r)); // an empty reply
        // A reply cut at the token limit leaves its call open too, after printing the line.
        let mut r =
            run("litellm.RateLimitError: x\naaaa\n\nModel openai/gpt-4o has hit a token limit!\n");
        r.usage.failed_calls = 1;
        seen.push(is_llm(&r));
        assert_eq!(seen, [true, false, true, false, true, false]);
    }

    /// `text` read in pieces of `size` bytes (cut on char boundaries), as the pipes give it.
    fn in_pieces(text: &str, size: usize) -> AiderOutput {
        let mut output = AiderOutput::default();
        let mut rest = text;
        while !rest.is_empty() {
            let mut end = size.min(rest.len());
            while !rest.is_char_boundary(end) {
                end += 1;
            }
            output.push(&rest[..end]);
            rest = &rest[end..];
        }
        output.finish();
        output
    }

    #[test]
    fn output_read_in_any_pieces_classifies_as_read_whole() {
        for (text, kind, _, _) in CAPTURED {
            let whole = classify(&run(text), *kind == "ok");
            for size in [1, 2, 7, 100, 8192] {
                let r = AiderRun {
                    output: in_pieces(text, size),
                    ..run("")
                };
                assert_eq!(classify(&r, *kind == "ok"), whole, "pieces of {size}");
                assert_eq!(r.output.text(), *text, "short output is kept whole");
            }
        }
        // The last line needs no newline, and a piece may end mid-line.
        let r = AiderRun {
            exit_code: Some(3),
            output: in_pieces("starting\n  boom at the end  ", 3),
            ..AiderRun::default()
        };
        assert_eq!(
            classify(&r, false),
            Outcome::Other("aider exited with status 3: boom at the end".into())
        );
    }

    #[test]
    fn a_flood_of_output_is_classified_whole_but_kept_only_at_its_ends() {
        // Tens of MB, as an aider printing for its whole deadline could: the edit is applied
        // early, a rate limit hits in the middle, and a line far longer than any buffer follows.
        let mut output = AiderOutput::default();
        let mut pushed = 0;
        let mut push = |output: &mut AiderOutput, text: &str| {
            pushed += text.len();
            output.push(text);
        };
        push(&mut output, "Aider v0.86.2\nApplied edit to calc.py\n");
        let noise = "some streamed reply text, line after line\n".repeat(200);
        for i in 0..2_000 {
            push(&mut output, &noise);
            if i == 1_000 {
                push(
                    &mut output,
                    "litellm.RateLimitError: RateLimitError: OpenAIException - slow down\n",
                );
            }
        }
        let long = "z".repeat(1000);
        for _ in 0..1_000 {
            push(&mut output, &long);
            assert!(output.line.len() <= MAX_LINE_BYTES, "{}", output.line.len());
        }
        push(&mut output, "\nthe end\n");
        output.finish();
        let r = AiderRun { output, ..run("") };
        assert_eq!(classify(&r, true), Outcome::Success);
        match classify(&r, false) {
            Outcome::LlmFailure(LlmFailureClass::RateLimit, m) => assert!(m.contains("slow down")),
            o => panic!("{o:?}"),
        }
        assert_eq!(r.output.seen.last_line, "the end");
        let (head, tail) = (r.output.head.len(), r.output.tail.len());
        assert_eq!(
            head + r.output.left_out + tail,
            pushed,
            "every byte is counted"
        );
        assert!(head <= KEPT_TEXT_BYTES && tail <= 2 * KEPT_TEXT_BYTES);
        let text = r.output.text();
        assert!(text.starts_with("Aider v0.86.2\nApplied edit to calc.py\n"));
        assert!(text.ends_with("zzz\nthe end\n"));
        assert!(text.contains(&format!(
            "\n[pas: {} bytes of aider's output left out]\n",
            r.output.left_out
        )));
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
            output: AiderOutput::of("aider: error: unrecognized arguments: --bogus\n"),
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
