//! Where a lone dispatch's time goes in the manager: timestamps at the steps of a task's
//! acceptance and life, one line per task, for the per-stage table in BENCHMARKS.md ("Hot path,
//! part 5"; `scripts/hop-stages.sh` builds, runs and summarises it).
//!
//! Compiled in only with the `hop-probe` cargo feature, and then active only while
//! `PAS_HOP_STAGES` names the file the lines are appended to; a normal build carries none of it
//! (every function here is then an empty inline one and [`Marks`] has no size). The stages, in
//! order: `entry` (the first middleware), `start` (the Dispatch handler), `workspace`, `routed`,
//! `submitted`, `spawned` (the life handed to the runtime), `life` (its first poll), `recorded`
//! (the record and placement committed), `answered` (the programmer's Execute answer), `relayed`
//! (its first event journaled and published), `result` (its result received), `finished` (the
//! result committed and published), `yielded` (the caller's stream hands the result to tonic).
//! A line starts with `caller=token` when the caller authenticated (the bench's secured twin)
//! and `caller=none` otherwise; the stages follow as `stage=µs since the first one`.

/// Marks of one request before its task id is known (see [`Marks::attach`]).
#[derive(Debug, Default)]
pub struct Marks {
    #[cfg(feature = "hop-probe")]
    marks: Vec<(&'static str, std::time::Instant)>,
    #[cfg(feature = "hop-probe")]
    authenticated: bool,
}

#[cfg(not(feature = "hop-probe"))]
impl Marks {
    /// Starts the marks of a request (`entry` from its extensions, then `start`); `authenticated`
    /// when the caller sent a valid token.
    #[inline(always)]
    pub fn begin(_extensions: &http::Extensions, _authenticated: bool) -> Self {
        Self {}
    }
    /// Marks `stage` now.
    #[inline(always)]
    pub fn at(&mut self, _stage: &'static str) {}
    /// Files the marks under `task_id`, where the task's life adds its own.
    #[inline(always)]
    pub fn attach(self, _task_id: &str) {}
}

/// Marks `stage` of task `task_id` now.
#[cfg(not(feature = "hop-probe"))]
#[inline(always)]
pub fn at(_task_id: &str, _stage: &'static str) {}

/// Notes in `extensions` when a request entered the first middleware.
#[cfg(not(feature = "hop-probe"))]
#[inline(always)]
pub fn entered(_extensions: &mut http::Extensions) {}

/// The caller's stream of task `task_id`, marking `yielded` at its result and writing the task's
/// line.
#[cfg(not(feature = "hop-probe"))]
#[inline(always)]
pub fn on_result(
    stream: crate::task_events::EventStream,
    _task_id: &str,
) -> crate::task_events::EventStream {
    stream
}

#[cfg(feature = "hop-probe")]
pub use probe::*;

#[cfg(feature = "hop-probe")]
mod probe {
    use super::Marks;
    use crate::contract::v1::{TaskEvent, task_event::Kind};
    use std::collections::HashMap;
    use std::io::Write as _;
    use std::sync::{Mutex, OnceLock};
    use std::time::Instant;

    type Pending = HashMap<String, (bool, Vec<(&'static str, Instant)>)>;

    /// The file lines go to, when the probe is on.
    fn output() -> Option<&'static std::path::Path> {
        static OUT: OnceLock<Option<std::path::PathBuf>> = OnceLock::new();
        OUT.get_or_init(|| std::env::var_os("PAS_HOP_STAGES").map(Into::into))
            .as_deref()
    }

    fn pending() -> std::sync::MutexGuard<'static, Pending> {
        static PENDING: OnceLock<Mutex<Pending>> = OnceLock::new();
        PENDING
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    #[derive(Clone, Copy)]
    struct Entered(Instant);

    pub fn entered(extensions: &mut http::Extensions) {
        if output().is_some() {
            extensions.insert(Entered(Instant::now()));
        }
    }

    impl Marks {
        pub fn begin(extensions: &http::Extensions, authenticated: bool) -> Self {
            let mut marks = Vec::new();
            if output().is_some() {
                if let Some(Entered(at)) = extensions.get::<Entered>() {
                    marks.push(("entry", *at));
                }
                marks.push(("start", Instant::now()));
            }
            Self {
                marks,
                authenticated,
            }
        }

        pub fn at(&mut self, stage: &'static str) {
            if output().is_some() {
                self.marks.push((stage, Instant::now()));
            }
        }

        pub fn attach(self, task_id: &str) {
            if output().is_some() {
                pending().insert(task_id.to_owned(), (self.authenticated, self.marks));
            }
        }
    }

    pub fn at(task_id: &str, stage: &'static str) {
        if output().is_some() {
            let now = Instant::now();
            if let Some((_, marks)) = pending().get_mut(task_id) {
                marks.push((stage, now));
            }
        }
    }

    pub fn on_result(
        stream: crate::task_events::EventStream,
        task_id: &str,
    ) -> crate::task_events::EventStream {
        let Some(path) = output() else {
            return stream;
        };
        let task_id = task_id.to_owned();
        Box::pin(futures::StreamExt::inspect(stream, move |item| {
            if let Ok(TaskEvent {
                kind: Some(Kind::Result(_)),
                ..
            }) = item
            {
                at(&task_id, "yielded");
                let Some((authenticated, marks)) = pending().remove(&task_id) else {
                    return;
                };
                let first = marks.first().map_or_else(Instant::now, |m| m.1);
                let mut line = String::from(if authenticated {
                    "caller=token"
                } else {
                    "caller=none"
                });
                for (stage, t) in &marks {
                    line += &format!(" {stage}={}", t.duration_since(first).as_micros());
                }
                line.push('\n');
                // One write per line: both managers of the bench append to the same file.
                let written = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .and_then(|mut f| f.write_all(line.as_bytes()));
                if let Err(e) = written {
                    tracing::warn!("hop probe: cannot write {}: {e}", path.display());
                }
            }
        }))
    }
}
