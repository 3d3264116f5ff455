//! The fault script: how the simulator behaves for each model.
//!
//! A script is a list of rules tried in order plus a default. A rule matches a model by exact name
//! or by glob (`gpt-*`, `qwen?.5*`), against both the name on the wire (`llama3`) and the name with
//! its API in front (`ollama/llama3`), so a script can use the names from the pool configuration.
//! A rule's fault can be limited to the next N requests (`times: 3`), after which the model
//! behaves: that is how a test makes a primary fail three times and then recover. A rule can
//! also start late (`after: 1`): the first N requests it matches fall through to the rules below
//! it, so a test can let aider's first call through and make its next one hang.
//!
//! Scripts come from `--script FILE` (YAML or JSON), from flags (the default behaviour), and at run
//! time from `POST /_sim/script`, which replaces the script and restarts its counters.
//!
//! ```yaml
//! rules:
//!   - model: "ollama/qwen2.5-coder:7b-instruct"   # exact, with or without the API prefix
//!     fault: http_503
//!     times: 3              # the next 3 requests fail, then the model behaves
//!   - model: "claude-*"     # glob
//!     latency_ms: 200       # before the first byte
//!     chunk_delay_ms: 20    # between streamed chunks
//!     chunk_chars: 8
//!   - model: "gpt-4o"
//!     after: 1              # the first matching request skips this rule (answers normally)
//!     fault: hang           # none | http_4xx/5xx | drop | hang | malformed | no_match | empty
//! default:
//!   fault: none
//! ```

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;
use wildmatch::WildMatch;

/// What goes wrong with a request, if anything.
///
/// Written as a string in scripts: `none`, `http_500` (any status 400–599), `drop`, `hang`,
/// `malformed`, `no_match`, `empty`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Fault {
    /// Answer normally with a valid edit.
    #[default]
    None,
    /// Answer with this HTTP error status (in the API's own error body format).
    Http(u16),
    /// Send the headers and part of the reply, then cut the connection.
    Drop,
    /// Accept the request and never answer.
    Hang,
    /// Answer with text that does not follow the requested edit format.
    Malformed,
    /// Answer in the right format but with a SEARCH section that matches nothing in the file.
    NoMatch,
    /// Answer successfully with no content at all.
    Empty,
}

/// A fault string that is not one of the known forms.
#[derive(Debug, thiserror::Error)]
#[error(
    "unknown fault {0:?} (expected none, http_<400-599>, drop, hang, malformed, no_match, empty)"
)]
pub struct BadFault(String);

impl FromStr for Fault {
    type Err = BadFault;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim().to_ascii_lowercase();
        let fault = match t.as_str() {
            "" | "none" | "ok" => Fault::None,
            "drop" => Fault::Drop,
            "hang" => Fault::Hang,
            "malformed" => Fault::Malformed,
            "no_match" | "nomatch" => Fault::NoMatch,
            "empty" => Fault::Empty,
            other => {
                let code = other.strip_prefix("http_").unwrap_or(other);
                match code.parse::<u16>() {
                    Ok(c) if (400..=599).contains(&c) => Fault::Http(c),
                    _ => return Err(BadFault(s.to_string())),
                }
            }
        };
        Ok(fault)
    }
}

impl TryFrom<String> for Fault {
    type Error = BadFault;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Fault> for String {
    fn from(f: Fault) -> String {
        f.to_string()
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::None => f.write_str("none"),
            Fault::Http(c) => write!(f, "http_{c}"),
            Fault::Drop => f.write_str("drop"),
            Fault::Hang => f.write_str("hang"),
            Fault::Malformed => f.write_str("malformed"),
            Fault::NoMatch => f.write_str("no_match"),
            Fault::Empty => f.write_str("empty"),
        }
    }
}

/// How one model behaves: timing and fault.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Behaviour {
    /// Wait this long before the first byte of the response (also before an error status).
    pub latency_ms: u64,
    /// Wait this long between streamed chunks.
    pub chunk_delay_ms: u64,
    /// Characters per streamed chunk (default 16).
    pub chunk_chars: Option<usize>,
    /// The fault to inject.
    pub fault: Fault,
    /// Inject the fault only into the next N matching requests, then behave (absent = always).
    pub times: Option<u32>,
}

/// One script rule: a model pattern and its behaviour.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    /// Exact model name or glob (`*`, `?`), matched against `model` and `api/model`.
    pub model: String,
    /// The rule applies from the (N+1)-th request it matches on; the first N fall through to
    /// the rules after it (then the default). 0 = from the first request.
    #[serde(default)]
    pub after: u32,
    /// What the matching models do.
    #[serde(flatten)]
    pub behaviour: Behaviour,
}

/// A whole script: rules tried in order, then the default.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Script {
    /// Rules, first match wins.
    pub rules: Vec<Rule>,
    /// Behaviour of models no rule matches.
    pub default: Behaviour,
}

/// A script that cannot be read or parsed.
#[derive(Debug, thiserror::Error)]
pub enum ScriptError {
    /// The file could not be read.
    #[error("cannot read script {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The text is not a valid script (YAML or JSON).
    #[error("invalid script: {0}")]
    Parse(#[from] serde_yaml::Error),
}

impl Script {
    /// Parses a script from YAML or JSON text.
    pub fn parse(text: &str) -> Result<Self, ScriptError> {
        if text.trim().is_empty() {
            return Ok(Script::default());
        }
        Ok(serde_yaml::from_str(text)?)
    }

    /// Reads and parses a script file.
    pub fn load(path: &std::path::Path) -> Result<Self, ScriptError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScriptError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text)
    }
}

/// What the engine decided for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Which rule matched (`default` or the rule's pattern).
    pub rule: String,
    /// Delay before the first byte.
    pub latency: Duration,
    /// Delay between chunks.
    pub chunk_delay: Duration,
    /// Characters per chunk (at least 1).
    pub chunk_chars: usize,
    /// The fault to inject into this request (already accounting for `times`).
    pub fault: Fault,
}

/// A script plus its live "fail the next N" counters.
#[derive(Debug, Clone)]
pub struct Engine {
    script: Script,
    /// Remaining faulty requests per rule (index = rule index; last = default).
    remaining: Vec<Option<u32>>,
    /// Requests still to let through per rule before it applies (its `after`, counting down).
    skip: Vec<u32>,
}

impl Engine {
    /// Starts a script with fresh counters.
    pub fn new(script: Script) -> Self {
        let remaining = script
            .rules
            .iter()
            .map(|r| r.behaviour.times)
            .chain(std::iter::once(script.default.times))
            .collect();
        let skip = script.rules.iter().map(|r| r.after).collect();
        Engine {
            script,
            remaining,
            skip,
        }
    }

    /// The script being run.
    pub fn script(&self) -> &Script {
        &self.script
    }

    /// Remaining faulty requests per rule, then the default (`None` = unlimited).
    pub fn remaining(&self) -> &[Option<u32>] {
        &self.remaining
    }

    /// Decides the behaviour of one request to `model` on `api`, consuming one "times" count.
    pub fn decide(&mut self, api: &str, model: &str) -> Decision {
        let qualified = format!("{api}/{model}");
        let skip = &mut self.skip;
        let index = self
            .script
            .rules
            .iter()
            .enumerate()
            .position(|(i, r)| {
                if !(matches(&r.model, model) || matches(&r.model, &qualified)) {
                    return false;
                }
                match skip.get_mut(i) {
                    Some(left) if *left > 0 => {
                        *left -= 1;
                        false
                    }
                    _ => true,
                }
            })
            .unwrap_or(self.script.rules.len());
        let (label, behaviour) = match self.script.rules.get(index) {
            Some(rule) => (rule.model.clone(), &rule.behaviour),
            None => ("default".to_string(), &self.script.default),
        };
        let mut fault = behaviour.fault;
        if fault != Fault::None {
            if let Some(Some(left)) = self.remaining.get_mut(index) {
                if *left == 0 {
                    fault = Fault::None;
                } else {
                    *left -= 1;
                }
            }
        }
        Decision {
            rule: label,
            latency: Duration::from_millis(behaviour.latency_ms),
            chunk_delay: Duration::from_millis(behaviour.chunk_delay_ms),
            chunk_chars: behaviour.chunk_chars.unwrap_or(16).max(1),
            fault,
        }
    }
}

/// True when `pattern` names `name` exactly or matches it as a glob.
fn matches(pattern: &str, name: &str) -> bool {
    pattern == name || WildMatch::new(pattern).matches(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_parse_and_print_round_trip() {
        for s in [
            "none",
            "http_500",
            "http_429",
            "drop",
            "hang",
            "malformed",
            "no_match",
            "empty",
        ] {
            let f: Fault = s.parse().unwrap();
            assert_eq!(f.to_string(), s);
        }
        assert_eq!("503".parse::<Fault>().unwrap(), Fault::Http(503));
        assert!("http_200".parse::<Fault>().is_err());
        assert!("explode".parse::<Fault>().is_err());
    }

    #[test]
    fn rules_match_exact_glob_and_qualified_names_first_wins() {
        let script = Script::parse(
            "rules:\n  - model: ollama/llama3\n    fault: http_404\n  - model: 'gpt-*'\n    fault: http_500\n    latency_ms: 7\ndefault:\n  chunk_delay_ms: 3\n",
        )
        .unwrap();
        let mut e = Engine::new(script);
        assert_eq!(e.decide("ollama", "llama3").fault, Fault::Http(404));
        assert_eq!(e.decide("openai", "llama3").fault, Fault::None);
        let d = e.decide("openai", "gpt-4o");
        assert_eq!(
            (d.fault, d.latency, d.rule.as_str()),
            (Fault::Http(500), Duration::from_millis(7), "gpt-*")
        );
        let d = e.decide("anthropic", "claude");
        assert_eq!(
            (d.fault, d.chunk_delay, d.rule.as_str()),
            (Fault::None, Duration::from_millis(3), "default")
        );
    }

    #[test]
    fn times_limits_the_fault_then_the_model_behaves() {
        let script =
            Script::parse(r#"{"rules":[{"model":"p","fault":"http_503","times":2}]}"#).unwrap();
        let mut e = Engine::new(script);
        let faults: Vec<Fault> = (0..4).map(|_| e.decide("openai", "p").fault).collect();
        assert_eq!(
            faults,
            vec![Fault::Http(503), Fault::Http(503), Fault::None, Fault::None]
        );
        assert_eq!(e.remaining()[0], Some(0));
    }

    #[test]
    fn after_lets_the_first_requests_through_to_the_next_rules() {
        let script = Script::parse(
            "rules:\n  - model: p\n    after: 1\n    fault: hang\n  - model: p\n    after: 1\n    fault: http_500\ndefault:\n  fault: no_match\n",
        )
        .unwrap();
        let mut e = Engine::new(script);
        let decided: Vec<(Fault, String)> = (0..4)
            .map(|_| {
                let d = e.decide("openai", "p");
                (d.fault, d.rule)
            })
            .collect();
        assert_eq!(
            decided,
            vec![
                // Skips both rules (each counts it), so the default answers.
                (Fault::NoMatch, "default".to_string()),
                (Fault::Hang, "p".to_string()),
                (Fault::Hang, "p".to_string()),
                (Fault::Hang, "p".to_string()),
            ]
        );
        // Other models are not counted.
        let mut e = Engine::new(
            Script::parse("rules:\n  - model: p\n    after: 1\n    fault: hang\n").unwrap(),
        );
        assert_eq!(e.decide("openai", "q").fault, Fault::None);
        assert_eq!(e.decide("openai", "p").fault, Fault::None);
        assert_eq!(e.decide("openai", "p").fault, Fault::Hang);
    }

    #[test]
    fn unknown_fields_are_rejected() {
        assert!(Script::parse("rules: []\nbogus: 1\n").is_err());
        assert!(Script::parse("default: {latncy_ms: 5}\n").is_err());
    }
}
