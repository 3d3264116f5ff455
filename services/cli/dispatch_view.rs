//! How `pas dispatch` and `pas watch` show a task's stream: live on a terminal (an indicatif spinner with the
//! elapsed time under the scrolling output), plain lines when piped, or one JSON object per event.
//!
//! Aider's output is relayed as it arrives. On a terminal it is printed a line at a time above the
//! spinner (a partial line waits for its end, or for the next notice); when piped, chunks are
//! written as they come.

use crate::contract::v1::{
    Attempt, ErrorClass, TaskEvent, TaskResult, TaskState, task_event::Kind,
};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{Value, json};
use std::io::Write;
use std::time::Duration;

/// Output style.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Terminal: spinner with elapsed time, notices and output above it, colours.
    Live,
    /// Pipe or file: plain lines, output chunks as they arrive.
    Plain,
    /// One JSON object per line on stdout (notices go to stderr).
    Json,
}

use crate::contract::{error_class_name, state_name};

/// An event as one JSON object: `task_id`, `seq`, `timestamp_ms`, `type` and the event's fields.
pub fn event_json(event: &TaskEvent) -> Value {
    let mut value = match &event.kind {
        Some(Kind::Queued(q)) => json!({
            "type": "queued", "position": q.position, "queue": q.queue, "reason": q.reason,
        }),
        Some(Kind::Assigned(a)) => json!({
            "type": "assigned", "programmer_id": a.programmer_id, "llm": a.llm,
            "using_backup": a.using_backup, "strategy": a.strategy,
            "dispatch_attempt": a.dispatch_attempt,
        }),
        Some(Kind::Output(o)) => json!({
            "type": "output", "text": o.text, "stream": o.stream, "attempt": o.attempt,
        }),
        Some(Kind::Failover(f)) => json!({
            "type": "failover", "from_llm": f.from_llm, "to_llm": f.to_llm, "reason": f.reason,
            "attempt": f.attempt, "error_class": error_class_name(f.error_class),
        }),
        Some(Kind::Rerouted(r)) => json!({
            "type": "rerouted", "from_programmer": r.from_programmer,
            "to_programmer": r.to_programmer, "reason": r.reason,
        }),
        Some(Kind::Escalated(x)) => json!({
            "type": "escalated", "from_programmer": x.from_programmer, "from_tier": x.from_tier,
            "to_tier": x.to_tier, "reason": x.reason, "dispatch_attempt": x.dispatch_attempt,
        }),
        Some(Kind::Result(r)) => result_json(r),
        Some(Kind::Heartbeat(h)) => json!({ "type": "heartbeat", "latest_seq": h.latest_seq }),
        None => json!({ "type": "unknown" }),
    };
    if let Value::Object(map) = &mut value {
        map.insert("task_id".into(), json!(event.task_id));
        map.insert("seq".into(), json!(event.seq));
        map.insert("timestamp_ms".into(), json!(event.timestamp_ms));
    }
    value
}

/// A result as JSON (`type: "result"`, enum values as lower-case names).
pub fn result_json(r: &TaskResult) -> Value {
    json!({
        "type": "result",
        "status": state_name(r.status),
        "programmer_id": r.programmer_id,
        "llm_used": r.llm_used,
        "used_backup": r.used_backup,
        "files_changed": r.files_changed,
        "diff": r.diff,
        "change_truncated": r.change_truncated,
        "branch": r.branch,
        "commit": r.commit,
        "base_commit": r.base_commit,
        "pushed_ref": r.pushed_ref,
        "pushed_commit": r.pushed_commit,
        "tokens_sent": r.tokens_sent,
        "tokens_received": r.tokens_received,
        "cost_usd": r.cost_usd,
        "duration_ms": r.duration_ms,
        "error_class": error_class_name(r.error_class),
        "error_message": r.error_message,
        "dry_run": r.dry_run,
        "tier": r.tier,
        "escalation": r.escalation,
        "attempts": r.attempts.iter().map(attempt_json).collect::<Vec<_>>(),
    })
}

fn attempt_json(a: &Attempt) -> Value {
    json!({
        "number": a.number, "llm": a.llm, "backup": a.backup, "programmer_id": a.programmer_id,
        "error_class": error_class_name(a.error_class), "error_message": a.error_message,
        "duration_ms": a.duration_ms, "tokens_sent": a.tokens_sent,
        "tokens_received": a.tokens_received, "cost_usd": a.cost_usd,
    })
}

/// The summary printed after a task: status, programmer, model, files, cost, duration,
/// branch/commit, attempts, error.
pub fn summary(task_id: &str, r: &TaskResult) -> String {
    let mut lines: Vec<(String, String)> = Vec::new();
    let mut add = |k: &str, v: String| lines.push((k.to_string(), v));
    add("status", state_name(r.status).to_string());
    add("task", task_id.to_string());
    let programmer = if r.programmer_id.is_empty() {
        "-".to_string()
    } else {
        r.programmer_id.clone()
    };
    add("programmer", programmer + &tier_suffix(&r.tier));
    if !r.escalation.is_empty() {
        add("escalation", r.escalation.clone());
    }
    if !r.llm_used.is_empty() {
        let which = if r.used_backup { "backup" } else { "primary" };
        add("model", format!("{} ({which})", r.llm_used));
    }
    if r.dry_run {
        add("dry run", "validated and routed; aider was not run".into());
    } else {
        add(
            "files",
            if r.files_changed.is_empty() {
                "none changed".into()
            } else {
                r.files_changed.join(", ")
            },
        );
        add(
            "cost",
            format!(
                "${:.4} ({} tokens sent, {} received)",
                r.cost_usd, r.tokens_sent, r.tokens_received
            ),
        );
    }
    add("duration", format!("{:.1}s", r.duration_ms as f64 / 1000.0));
    if !r.branch.is_empty() {
        add("branch", r.branch.clone());
    }
    if !r.commit.is_empty() {
        let base = if r.base_commit.is_empty() {
            String::new()
        } else {
            format!(" (from {})", abbrev(&r.base_commit))
        };
        add("commit", format!("{}{base}", r.commit));
    }
    if !r.pushed_ref.is_empty() {
        add(
            "pushed",
            format!("{} ({})", r.pushed_ref, abbrev(&r.pushed_commit)),
        );
    }
    for (i, a) in r.attempts.iter().enumerate() {
        let outcome = if a.error_class == ErrorClass::None as i32 {
            "ok".to_string()
        } else {
            let mut s = error_class_name(a.error_class);
            if !a.error_message.is_empty() {
                s.push_str(": ");
                s.push_str(first_line(&a.error_message));
            }
            s
        };
        add(
            if i == 0 { "attempts" } else { "" },
            format!(
                "{}. {}{} — {outcome} ({:.1}s)",
                a.number,
                a.llm,
                if a.backup { " (backup)" } else { "" },
                a.duration_ms as f64 / 1000.0
            ),
        );
    }
    if r.error_class != ErrorClass::None as i32 || !r.error_message.is_empty() {
        add(
            "error",
            format!("{}: {}", error_class_name(r.error_class), r.error_message),
        );
    }
    let mut out = String::from("── result ──\n");
    for (k, v) in lines {
        out.push_str(&format!("{k:<11}{v}\n"));
    }
    out
}

fn abbrev(commit: &str) -> &str {
    commit.get(..12).unwrap_or(commit)
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

/// One line describing a non-output event, e.g. "assigned to programmer 003: ollama/x".
pub fn notice(event: &TaskEvent) -> Option<String> {
    Some(match event.kind.as_ref()? {
        Kind::Queued(q) => {
            let mut s = format!("queued: position {} in the {} queue", q.position, q.queue);
            if !q.reason.is_empty() {
                s.push_str(&format!(" ({})", q.reason));
            }
            s
        }
        Kind::Assigned(a) => {
            let mut s = format!(
                "assigned to programmer {}: {}{}",
                a.programmer_id,
                a.llm,
                if a.using_backup { " (backup)" } else { "" }
            );
            if !a.strategy.is_empty() {
                s.push_str(&format!(" [strategy {}", a.strategy));
                if a.dispatch_attempt > 1 {
                    s.push_str(&format!(", dispatch attempt {}", a.dispatch_attempt));
                }
                s.push(']');
            }
            s
        }
        Kind::Failover(f) => format!(
            "failover: {} → {} (attempt {}): {}",
            f.from_llm, f.to_llm, f.attempt, f.reason
        ),
        Kind::Rerouted(r) => format!(
            "rerouted: programmer {} → {}: {}",
            r.from_programmer, r.to_programmer, r.reason
        ),
        Kind::Escalated(x) => format!(
            "escalated: {} programmer {} failed ({}) → {} tier",
            x.from_tier,
            x.from_programmer,
            first_line(&x.reason),
            x.to_tier
        ),
        Kind::Output(_) | Kind::Result(_) | Kind::Heartbeat(_) => return None,
    })
}

/// " (free)" / " (paid)" after a programmer id, when the result names its tier.
fn tier_suffix(tier: &str) -> String {
    if tier.is_empty() {
        String::new()
    } else {
        format!(" ({tier})")
    }
}

/// Short spinner text for the task's phase.
fn phase(event: &TaskEvent) -> Option<String> {
    Some(match event.kind.as_ref()? {
        Kind::Queued(q) => format!("queued #{} ({})", q.position, q.queue),
        Kind::Assigned(a) => format!("running on {} · {}", a.programmer_id, a.llm),
        Kind::Failover(f) => format!("retrying on {} (attempt {})", f.to_llm, f.attempt),
        Kind::Rerouted(r) => format!("rerouted to {}", r.to_programmer),
        Kind::Escalated(x) => format!("escalating to the {} tier", x.to_tier),
        _ => return None,
    })
}

/// Renders a task's stream in one [`Mode`].
#[derive(Debug)]
pub struct View {
    mode: Mode,
    spinner: Option<ProgressBar>,
    /// Live mode: output received after the last newline.
    partial: String,
    /// Plain mode: whether the cursor is at the start of a line.
    at_line_start: bool,
    color: bool,
}

impl View {
    /// A view in `mode`; live mode starts the spinner.
    pub fn new(mode: Mode, first_phase: &str) -> Self {
        let spinner = (mode == Mode::Live).then(|| {
            let pb = ProgressBar::with_draw_target(None, ProgressDrawTarget::stdout());
            let style = ProgressStyle::with_template("{spinner:.cyan} {msg} [{elapsed}]")
                .unwrap_or_else(|_| ProgressStyle::default_spinner());
            pb.set_style(style);
            pb.set_message(first_phase.to_string());
            pb.enable_steady_tick(Duration::from_millis(100));
            pb
        });
        Self {
            mode,
            spinner,
            partial: String::new(),
            at_line_start: true,
            color: mode == Mode::Live,
        }
    }

    /// Shows one event (results are shown by [`View::finish`]).
    pub fn event(&mut self, event: &TaskEvent) {
        if self.mode == Mode::Json {
            println_flush(&event_json(event).to_string());
            return;
        }
        match &event.kind {
            Some(Kind::Output(o)) => self.output(&o.text),
            Some(Kind::Result(_)) | None => {}
            Some(_) => {
                if let (Some(pb), Some(p)) = (&self.spinner, phase(event)) {
                    pb.set_message(p);
                }
                if let Some(line) = notice(event) {
                    let warn = matches!(
                        event.kind,
                        Some(Kind::Failover(_) | Kind::Rerouted(_) | Kind::Escalated(_))
                    );
                    self.notice(&line, warn);
                }
            }
        }
    }

    /// A line from `pas dispatch` itself (cancelling, …).
    pub fn notice(&mut self, text: &str, warn: bool) {
        let line = if self.color {
            let style = if warn {
                console::Style::new().yellow().bold()
            } else {
                console::Style::new().cyan()
            };
            format!("{} {text}", style.apply_to("==>"))
        } else {
            format!("==> {text}")
        };
        match self.mode {
            Mode::Json => eprintln!("{text}"),
            Mode::Live => {
                self.flush_partial();
                if let Some(pb) = &self.spinner {
                    pb.println(line);
                }
            }
            Mode::Plain => {
                self.end_line();
                println_flush(&line);
            }
        }
    }

    /// A line about the stream itself rather than the task (lost, re-attached, left running):
    /// in JSON mode `value` as a JSON line on stdout (so a program reading the events sees it in
    /// place) and `text` on stderr; otherwise `text` as a notice.
    pub fn announce(&mut self, value: Value, text: &str, warn: bool) {
        if self.mode == Mode::Json {
            println_flush(&value.to_string());
            eprintln!("{text}");
        } else {
            self.notice(text, warn);
        }
    }

    /// Sets the spinner's text (live mode).
    pub fn set_phase(&self, text: &str) {
        if let Some(pb) = &self.spinner {
            pb.set_message(text.to_string());
        }
    }

    fn output(&mut self, text: &str) {
        match self.mode {
            Mode::Live => {
                self.partial.push_str(text);
                while let Some(end) = self.partial.find('\n') {
                    let line: String = self.partial.drain(..=end).collect();
                    if let Some(pb) = &self.spinner {
                        pb.println(line.trim_end_matches(['\n', '\r']));
                    }
                }
            }
            Mode::Plain => {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(text.as_bytes());
                let _ = out.flush();
                if let Some(last) = text.chars().last() {
                    self.at_line_start = last == '\n';
                }
            }
            Mode::Json => {}
        }
    }

    fn flush_partial(&mut self) {
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            if let Some(pb) = &self.spinner {
                pb.println(line.trim_end_matches('\r'));
            }
        }
    }

    fn end_line(&mut self) {
        if !self.at_line_start {
            println_flush("");
            self.at_line_start = true;
        }
    }

    /// Stops the spinner and prints the result: a JSON line, or the summary and the diff.
    pub fn finish(&mut self, task_id: &str, result: &TaskResult, show_diff: bool) {
        self.stop_spinner();
        if self.mode == Mode::Json {
            let mut value = result_json(result);
            if let Value::Object(map) = &mut value {
                map.insert("task_id".into(), json!(task_id));
            }
            println_flush(&value.to_string());
            return;
        }
        self.end_line();
        let text = summary(task_id, result);
        if self.color {
            let ok = result.status == TaskState::Succeeded as i32;
            let style = if ok {
                console::Style::new().green().bold()
            } else {
                console::Style::new().red().bold()
            };
            let status = state_name(result.status);
            let text = text.replacen(
                &format!("status     {status}"),
                &format!("status     {}", style.apply_to(&status)),
                1,
            );
            print!("{text}");
        } else {
            print!("{text}");
        }
        if show_diff && !result.diff.is_empty() {
            println!("── diff ──");
            for line in result.diff.lines() {
                println!("{}", self.diff_line(line));
            }
            if result.change_truncated {
                println!(
                    "── diff cut at 1 MiB; the whole change: git show {} ──",
                    result.commit
                );
            }
        }
        let _ = std::io::stdout().flush();
    }

    /// Stops the spinner, flushing any partial output line.
    pub fn stop_spinner(&mut self) {
        self.flush_partial();
        if let Some(pb) = self.spinner.take() {
            pb.finish_and_clear();
        }
    }

    fn diff_line(&self, line: &str) -> String {
        if !self.color {
            return line.to_string();
        }
        let style = if line.starts_with("+++") || line.starts_with("---") {
            console::Style::new().bold()
        } else if line.starts_with('+') {
            console::Style::new().green()
        } else if line.starts_with('-') {
            console::Style::new().red()
        } else if line.starts_with("@@") {
            console::Style::new().cyan()
        } else {
            return line.to_string();
        };
        style.apply_to(line).to_string()
    }
}

fn println_flush(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::v1::{Assigned, Failover, Output, Queued, Rerouted};

    fn event(kind: Kind) -> TaskEvent {
        TaskEvent {
            task_id: "t1".into(),
            seq: 3,
            timestamp_ms: 42,
            kind: Some(kind),
        }
    }

    #[test]
    fn events_map_to_json_objects() {
        let v = event_json(&event(Kind::Queued(Queued {
            position: 2,
            queue: "manager".into(),
            reason: "full".into(),
        })));
        assert_eq!(
            v,
            json!({"type":"queued","position":2,"queue":"manager","reason":"full","task_id":"t1","seq":3,"timestamp_ms":42})
        );
        let v = event_json(&event(Kind::Failover(Failover {
            from_llm: "a".into(),
            to_llm: "b".into(),
            reason: "api_error: boom".into(),
            attempt: 2,
            error_class: ErrorClass::ApiError as i32,
        })));
        assert_eq!(v["type"], "failover");
        assert_eq!(v["error_class"], "api_error");
        let v = event_json(&event(Kind::Output(Output {
            text: "hi\n".into(),
            stream: "stdout".into(),
            attempt: 1,
        })));
        assert_eq!(v["text"], "hi\n");
        let v = event_json(&event(Kind::Result(Box::new(TaskResult {
            status: TaskState::TimedOut as i32,
            error_class: ErrorClass::Deadline as i32,
            ..Default::default()
        }))));
        assert_eq!(v["status"], "timed_out");
        assert_eq!(v["error_class"], "deadline");
    }

    #[test]
    fn notices_describe_the_events() {
        let n = notice(&event(Kind::Assigned(Assigned {
            programmer_id: "003".into(),
            llm: "ollama/x".into(),
            using_backup: true,
            strategy: "least_loaded".into(),
            dispatch_attempt: 2,
        })))
        .unwrap();
        assert_eq!(
            n,
            "assigned to programmer 003: ollama/x (backup) [strategy least_loaded, dispatch attempt 2]"
        );
        let n = notice(&event(Kind::Rerouted(Rerouted {
            from_programmer: "001".into(),
            to_programmer: "002".into(),
            reason: "stream broke".into(),
        })))
        .unwrap();
        assert_eq!(n, "rerouted: programmer 001 → 002: stream broke");
        assert!(notice(&event(Kind::Output(Output::default()))).is_none());
    }

    /// A task waiting in the manager's queue and one moved to another programmer: the real pool
    /// in `tests/cli_dispatch.rs` shows a programmer-queue wait, these need a full pool or a
    /// programmer dying mid-task.
    #[test]
    fn waiting_and_rerouting_are_named_in_notices_and_the_spinner() {
        let queued = event(Kind::Queued(Queued {
            position: 3,
            queue: "manager".into(),
            reason: "every eligible programmer is busy or unavailable".into(),
        }));
        assert_eq!(
            notice(&queued).unwrap(),
            "queued: position 3 in the manager queue (every eligible programmer is busy or unavailable)"
        );
        assert_eq!(phase(&queued).unwrap(), "queued #3 (manager)");
        let rerouted = event(Kind::Rerouted(Rerouted {
            from_programmer: "001".into(),
            to_programmer: "002".into(),
            reason: "stream broke".into(),
        }));
        assert_eq!(phase(&rerouted).unwrap(), "rerouted to 002");
        let failover = event(Kind::Failover(Failover {
            from_llm: "ollama/a".into(),
            to_llm: "ollama/b".into(),
            reason: "api_error: boom".into(),
            attempt: 2,
            error_class: ErrorClass::ApiError as i32,
        }));
        assert_eq!(
            phase(&failover).unwrap(),
            "retrying on ollama/b (attempt 2)"
        );
        assert_eq!(
            notice(&failover).unwrap(),
            "failover: ollama/a → ollama/b (attempt 2): api_error: boom"
        );
        assert!(phase(&event(Kind::Output(Output::default()))).is_none());
    }

    #[test]
    fn the_summary_lists_the_result() {
        let r = TaskResult {
            status: TaskState::Succeeded as i32,
            programmer_id: "003".into(),
            llm_used: "ollama/b".into(),
            used_backup: true,
            files_changed: vec!["a.py".into(), "b.py".into()],
            branch: "pas/t1".into(),
            commit: "0123456789abcdef".into(),
            base_commit: "fedcba9876543210".into(),
            tokens_sent: 100,
            tokens_received: 20,
            cost_usd: 0.0123,
            duration_ms: 2500,
            attempts: vec![
                Attempt {
                    number: 1,
                    llm: "ollama/a".into(),
                    error_class: ErrorClass::ApiError as i32,
                    error_message: "litellm.APIError: 500\nmore".into(),
                    duration_ms: 1000,
                    ..Default::default()
                },
                Attempt {
                    number: 2,
                    llm: "ollama/b".into(),
                    backup: true,
                    duration_ms: 1500,
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let s = summary("t1", &r);
        for line in [
            "status     succeeded",
            "programmer 003",
            "model      ollama/b (backup)",
            "files      a.py, b.py",
            "cost       $0.0123 (100 tokens sent, 20 received)",
            "duration   2.5s",
            "branch     pas/t1",
            "commit     0123456789abcdef (from fedcba987654)",
            "attempts   1. ollama/a — api_error: litellm.APIError: 500 (1.0s)",
            "           2. ollama/b (backup) — ok (1.5s)",
        ] {
            assert!(s.contains(line), "missing {line:?} in\n{s}");
        }
        assert!(!s.contains("error      "), "{s}");
    }
}
