//! Shared simulator state: the running script, per-model usage counters and the request log.
//!
//! Every API handler turns its request into a list of [`Message`]s and asks [`SimState::plan`] what
//! to do; the plan holds the decided fault, the timing and the reply text, and the request is
//! counted and logged at that point (so hung and dropped requests show up too).

use super::edit::{self, Message, Spoil};
use super::script::{Engine, Fault, Script};
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How many requests `GET /_sim/requests` remembers.
const LOG_CAPACITY: usize = 1000;
/// How much of the last user message a log entry keeps (characters).
const USER_MESSAGE_CHARS: usize = 4096;

/// Which provider API a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Api {
    /// OpenAI chat completions.
    Openai,
    /// Ollama `/api/generate` and `/api/chat`.
    Ollama,
    /// Anthropic messages.
    Anthropic,
}

impl Api {
    /// The name used in logs and in qualified model names (`ollama/llama3`).
    pub fn as_str(&self) -> &'static str {
        match self {
            Api::Openai => "openai",
            Api::Ollama => "ollama",
            Api::Anthropic => "anthropic",
        }
    }
}

/// Per-model counters served by `GET /_sim/usage`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ModelUsage {
    /// Requests received.
    pub requests: u64,
    /// Requests into which a fault was injected.
    pub failures_injected: u64,
    /// Estimated prompt tokens of all requests.
    pub prompt_tokens: u64,
    /// Estimated completion tokens of the replies sent (or planned, for dropped ones).
    pub completion_tokens: u64,
}

/// One entry of the request log (no prompt bodies beyond the start of the last user message).
#[derive(Debug, Clone, Serialize)]
pub struct RequestRecord {
    /// 1-based sequence number since start or reset.
    pub seq: u64,
    /// Unix time in milliseconds.
    pub at_ms: u128,
    /// The API.
    pub api: Api,
    /// The request path.
    pub path: String,
    /// The model name as sent.
    pub model: String,
    /// Whether a stream was asked for.
    pub stream: bool,
    /// `edit_diff`, `edit_whole` or `commit_message`.
    pub kind: String,
    /// The rule that matched.
    pub rule: String,
    /// The fault injected (`none` if none).
    pub fault: String,
    /// The last user message (for an edit: the task as aider sent it), trimmed, at most
    /// 4096 characters: lets a test see exactly what text reached the LLM.
    pub user_message: String,
    /// Estimated prompt tokens.
    pub prompt_tokens: u64,
    /// Estimated completion tokens.
    pub completion_tokens: u64,
}

/// What to do with one request.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Sequence number (used in response ids).
    pub seq: u64,
    /// The model name as sent.
    pub model: String,
    /// Delay before the first byte.
    pub latency: Duration,
    /// Delay between chunks.
    pub chunk_delay: Duration,
    /// The reply text split into stream chunks.
    pub chunks: Vec<String>,
    /// The whole reply text.
    pub text: String,
    /// Estimated prompt tokens.
    pub prompt_tokens: u64,
    /// Estimated completion tokens.
    pub completion_tokens: u64,
    /// What goes wrong: only `None`, `Http`, `Drop` and `Hang` remain here (content faults are
    /// already in `text`).
    pub fault: Fault,
}

#[derive(Debug)]
struct Inner {
    initial: Script,
    engine: Engine,
    usage: BTreeMap<String, ModelUsage>,
    log: VecDeque<RequestRecord>,
    seq: u64,
}

/// The simulator's shared state (cheap to clone).
#[derive(Debug, Clone)]
pub struct SimState {
    inner: Arc<Mutex<Inner>>,
}

impl SimState {
    /// Starts with `script`; `reset` returns to it.
    pub fn new(script: Script) -> Self {
        SimState {
            inner: Arc::new(Mutex::new(Inner {
                initial: script.clone(),
                engine: Engine::new(script),
                usage: BTreeMap::new(),
                log: VecDeque::new(),
                seq: 0,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain counters behind: keep serving.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Decides, counts and logs one request, and builds its reply.
    pub fn plan(
        &self,
        api: Api,
        path: &str,
        model: &str,
        stream: bool,
        messages: &[Message],
    ) -> Plan {
        let mut inner = self.lock();
        let decision = inner.engine.decide(api.as_str(), model);
        let spoil = match decision.fault {
            Fault::Malformed => Spoil::Malformed,
            Fault::NoMatch => Spoil::NoMatch,
            Fault::Empty => Spoil::Empty,
            _ => Spoil::None,
        };
        let (kind, text) = edit::reply(messages, spoil);
        let prompt: usize = messages.iter().map(|m| m.content.chars().count()).sum();
        let prompt_tokens = (prompt as u64).div_ceil(4);
        let completion_tokens = edit::estimate_tokens(&text);
        let fault = decision.fault;
        inner.seq += 1;
        let seq = inner.seq;
        let usage = inner.usage.entry(model.to_string()).or_default();
        usage.requests += 1;
        if fault != Fault::None {
            usage.failures_injected += 1;
        }
        usage.prompt_tokens += prompt_tokens;
        if !matches!(fault, Fault::Http(_) | Fault::Hang) {
            usage.completion_tokens += completion_tokens;
        }
        let record = RequestRecord {
            seq,
            at_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or(0),
            api,
            path: path.to_string(),
            model: model.to_string(),
            stream,
            kind: kind.as_str().to_string(),
            rule: decision.rule.clone(),
            fault: fault.to_string(),
            user_message: edit::task(messages)
                .chars()
                .take(USER_MESSAGE_CHARS)
                .collect(),
            prompt_tokens,
            completion_tokens,
        };
        tracing::info!(
            seq,
            api = api.as_str(),
            model,
            stream,
            kind = kind.as_str(),
            rule = %decision.rule,
            fault = %fault,
            prompt_tokens,
            completion_tokens,
            "request"
        );
        inner.log.push_back(record);
        while inner.log.len() > LOG_CAPACITY {
            inner.log.pop_front();
        }
        drop(inner);
        let chunks = split_chunks(&text, decision.chunk_chars);
        Plan {
            seq,
            model: model.to_string(),
            latency: decision.latency,
            chunk_delay: decision.chunk_delay,
            chunks,
            text,
            prompt_tokens,
            completion_tokens,
            fault: match fault {
                Fault::Malformed | Fault::NoMatch | Fault::Empty => Fault::None,
                other => other,
            },
        }
    }

    /// Per-model usage counters.
    pub fn usage(&self) -> BTreeMap<String, ModelUsage> {
        self.lock().usage.clone()
    }

    /// The recent request log, oldest first.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.lock().log.iter().cloned().collect()
    }

    /// The running script and its remaining fault counts (rules, then default).
    pub fn script(&self) -> (Script, Vec<Option<u32>>) {
        let inner = self.lock();
        (
            inner.engine.script().clone(),
            inner.engine.remaining().to_vec(),
        )
    }

    /// Replaces the running script (counters restart).
    pub fn set_script(&self, script: Script) {
        self.lock().engine = Engine::new(script);
    }

    /// Clears usage and the log and goes back to the startup script.
    pub fn reset(&self) {
        let mut inner = self.lock();
        inner.engine = Engine::new(inner.initial.clone());
        inner.usage.clear();
        inner.log.clear();
        inner.seq = 0;
    }

    /// Exact model names the script mentions (for Ollama's `/api/tags`).
    pub fn known_models(&self) -> Vec<String> {
        let inner = self.lock();
        let mut names: Vec<String> = inner
            .engine
            .script()
            .rules
            .iter()
            .map(|r| r.model.clone())
            .chain(inner.usage.keys().cloned())
            .filter(|m| !m.contains(['*', '?']))
            .map(|m| m.strip_prefix("ollama/").unwrap_or(&m).to_string())
            .collect();
        names.sort();
        names.dedup();
        names
    }
}

/// Splits text into chunks of about `size` characters (on char boundaries).
fn split_chunks(text: &str, size: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    chars
        .chunks(size.max(1))
        .map(|c| c.iter().collect())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_counts_logs_and_resets() {
        let state = SimState::new(
            Script::parse("rules: [{model: bad, fault: http_500, times: 1}]").unwrap(),
        );
        let msgs = [Message::new("user", "abcdefgh")];
        let p = state.plan(Api::Openai, "/v1/chat/completions", "bad", true, &msgs);
        assert_eq!((p.fault, p.prompt_tokens), (Fault::Http(500), 2));
        let p = state.plan(Api::Openai, "/v1/chat/completions", "bad", false, &msgs);
        assert_eq!(p.fault, Fault::None);
        assert!(!p.text.is_empty());
        assert_eq!(p.chunks.concat(), p.text);
        let u = &state.usage()["bad"];
        assert_eq!(
            (u.requests, u.failures_injected, u.prompt_tokens),
            (2, 1, 4)
        );
        assert_eq!(state.requests().len(), 2);
        assert_eq!(state.requests()[1].user_message, "abcdefgh");
        state.reset();
        assert!(state.usage().is_empty());
        let p = state.plan(Api::Openai, "/x", "bad", true, &msgs);
        assert_eq!(
            p.fault,
            Fault::Http(500),
            "reset restores the startup script's counters"
        );
    }
}
