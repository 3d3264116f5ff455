//! The tasks a programmer has accepted, by id: each one's event log (in memory and in a file per
//! task), its cancellation, and its lease.
//!
//! A task is not tied to the connection that started it. Its events go to a [`TaskLog`] that any
//! number of streams follow (Execute, WatchTask); the log is journaled to
//! `<data_dir>/programmers/<id>/events/<task>.events` (length-delimited `pas.v1.TaskEvent`s) before
//! a follower sees an event. So a manager that lost its stream, or restarted, follows the task
//! again from the last seq it recorded, and after a programmer restart the file still tells how a
//! task ended — a task that was running when the process died gets a HANDED_BACK result on
//! start-up, so the manager knows to run it elsewhere.
//!
//! Finished tasks stay in memory for [`KEEP_IN_MEMORY`] and on disk for [`KEEP_ON_DISK`].

use crate::contract::v1::{ErrorClass, TaskEvent, TaskResult, TaskState, task_event::Kind};
use crate::programmer::worktree::sanitize_task_id;
use crate::task_events::{Journal, TaskLog};
use futures::future::BoxFuture;
use prost::Message;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long a finished task's log stays in memory (later it is read back from its file).
pub const KEEP_IN_MEMORY: Duration = Duration::from_secs(600);

/// How long a task's event file is kept (removed at start-up once older).
pub const KEEP_ON_DISK: Duration = Duration::from_secs(24 * 3600);

/// Extension of event files.
const EXT: &str = "events";

/// Why a task's lease ended it.
pub const LEASE_EXPIRED: &str = "lease expired";

/// One accepted task.
#[derive(Debug, Clone)]
pub struct Run {
    pub log: Arc<TaskLog>,
    /// Stops the task (CancelTask, lease expiry, drain timeout).
    pub cancel: CancellationToken,
    /// Why it was stopped when not by a caller's cancel: the result is then HANDED_BACK.
    pub handed_back: Arc<Mutex<Option<String>>>,
}

impl Run {
    /// Stops the task because nobody may want it any more (`reason` goes into its result).
    pub fn hand_back(&self, reason: String) {
        self.handed_back
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(reason);
        self.cancel.cancel();
    }

    /// The reason given to [`hand_back`](Self::hand_back), if it was called.
    pub fn handed_back_reason(&self) -> Option<String> {
        self.handed_back
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// The tasks of this programmer, running and recently finished.
#[derive(Debug)]
pub struct TaskRuns {
    dir: PathBuf,
    journal: Arc<FileJournal>,
    runs: Mutex<HashMap<String, Run>>,
}

impl TaskRuns {
    /// Opens the event files in `dir` (created if needed): removes those older than
    /// [`KEEP_ON_DISK`] and ends every task a previous process left running with a HANDED_BACK
    /// result. Returns the registry and how many tasks were ended so.
    pub fn open(dir: PathBuf, programmer_id: &str) -> std::io::Result<(Self, usize)> {
        std::fs::create_dir_all(&dir)?;
        let journal = Arc::new(FileJournal { dir: dir.clone() });
        let mut interrupted = 0;
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.extension().is_none_or(|e| e != EXT) {
                continue;
            }
            let age = std::fs::metadata(&path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok());
            if age.is_some_and(|a| a > KEEP_ON_DISK) {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let events = read_events(&path)?;
            let Some(last) = events.last() else {
                let _ = std::fs::remove_file(&path);
                continue;
            };
            if !matches!(last.kind, Some(Kind::Result(_))) {
                let result = TaskResult {
                    status: TaskState::Failed as i32,
                    programmer_id: programmer_id.to_string(),
                    error_class: ErrorClass::HandedBack as i32,
                    error_message: format!(
                        "programmer {programmer_id} restarted while the task ran: handed back for rerouting"
                    ),
                    ..Default::default()
                };
                let event = TaskEvent {
                    task_id: last.task_id.clone(),
                    seq: last.seq + 1,
                    timestamp_ms: crate::task_events::now_unix_ms(),
                    kind: Some(Kind::Result(Box::new(result))),
                };
                journal.write(&event)?;
                interrupted += 1;
            }
        }
        Ok((
            Self {
                dir,
                journal,
                runs: Mutex::new(HashMap::new()),
            },
            interrupted,
        ))
    }

    fn runs(&self) -> MutexGuard<'_, HashMap<String, Run>> {
        self.runs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The task `task_id`, in memory or read back from its file; `None` when this programmer
    /// does not have it.
    pub fn get(&self, task_id: &str) -> Option<Run> {
        if let Some(run) = self.runs().get(task_id) {
            return Some(run.clone());
        }
        let path = self.journal.path(task_id)?;
        let events = read_events(&path).ok()?;
        let first = events.first()?;
        if first.task_id != task_id {
            return None;
        }
        let journal: Arc<dyn Journal> = self.journal.clone();
        let run = Run {
            log: TaskLog::restore(task_id, events, Some(journal)),
            cancel: CancellationToken::new(),
            handed_back: Arc::default(),
        };
        Some(run)
    }

    /// Registers a new task, or returns the one in memory with that id (`Err`: a concurrent
    /// Execute took it). The caller has already asked [`get`](Self::get), which also reads the
    /// task's file, so only memory is checked here: no second read on the admission path.
    pub fn start(&self, task_id: &str, cancel: CancellationToken) -> Result<Run, Run> {
        let mut runs = self.runs();
        if let Some(existing) = runs.get(task_id) {
            return Err(existing.clone());
        }
        let journal: Arc<dyn Journal> = self.journal.clone();
        let run = Run {
            log: TaskLog::new(task_id, Some(journal)),
            cancel,
            handed_back: Arc::default(),
        };
        runs.insert(task_id.to_string(), run.clone());
        Ok(run)
    }

    /// The task has its result: it leaves memory after [`KEEP_IN_MEMORY`] (its file stays).
    pub fn finished(self: &Arc<Self>, task_id: &str) {
        let (runs, task_id) = (self.clone(), task_id.to_string());
        tokio::spawn(async move {
            tokio::time::sleep(KEEP_IN_MEMORY).await;
            runs.runs().remove(&task_id);
        });
    }

    /// Where the event files are.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Reads a task's event file; a torn last record (the process died mid-write) is ignored.
fn read_events(path: &Path) -> std::io::Result<Vec<TaskEvent>> {
    Ok(decode_events(&std::fs::read(path)?, 0, usize::MAX))
}

/// Up to `limit` events of an event file's `bytes` with seq > `after_seq`, in file (seq) order;
/// the records before them are read for their seq only. Stops at a torn record.
fn decode_events(bytes: &[u8], after_seq: u64, limit: usize) -> Vec<TaskEvent> {
    /// A `pas.v1.TaskEvent` read for its seq alone (prost skips the other fields unread).
    #[derive(Clone, PartialEq, prost::Message)]
    struct SeqOnly {
        #[prost(uint64, tag = "2")]
        seq: u64,
    }
    let mut buf = bytes;
    let mut events = Vec::new();
    while !buf.is_empty() && events.len() < limit {
        let Ok(len) = prost::decode_length_delimiter(&mut buf) else {
            break;
        };
        let Some((record, rest)) = buf.split_at_checked(len) else {
            break;
        };
        buf = rest;
        match SeqOnly::decode(record) {
            Ok(SeqOnly { seq }) if seq <= after_seq => continue,
            Ok(_) => {}
            Err(_) => break,
        }
        match TaskEvent::decode(record) {
            Ok(event) => events.push(event),
            Err(_) => break,
        }
    }
    events
}

/// Appends each event to its task's file; the result is synced to disk.
#[derive(Debug)]
struct FileJournal {
    dir: PathBuf,
}

impl FileJournal {
    fn path(&self, task_id: &str) -> Option<PathBuf> {
        let name = sanitize_task_id(task_id).ok()?;
        Some(self.dir.join(format!("{name}.{EXT}")))
    }

    fn write(&self, event: &TaskEvent) -> std::io::Result<()> {
        let path = self.path(&event.task_id).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "task id unusable as a file name",
            )
        })?;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        file.write_all(&event.encode_length_delimited_to_vec())?;
        if matches!(event.kind, Some(Kind::Result(_))) {
            file.sync_data()?;
        }
        Ok(())
    }
}

impl Journal for FileJournal {
    fn append(
        &self,
        _task_id: &str,
        event: &TaskEvent,
        _upstream_seq: u64,
    ) -> BoxFuture<'static, Result<(), String>> {
        // A few hundred bytes appended to a file in the page cache: cheaper than a hand-off.
        let out = self.write(event).map_err(|e| e.to_string());
        Box::pin(async move { out })
    }

    fn replays(&self) -> bool {
        true
    }

    /// Reads the task's file on the blocking pool (the whole file per page: a follower reads
    /// back only what its log dropped, such as a manager catching up after a long restart).
    fn replay(
        &self,
        task_id: &str,
        after_seq: u64,
        limit: usize,
    ) -> BoxFuture<'static, Result<Vec<TaskEvent>, String>> {
        let path = self.path(task_id);
        Box::pin(async move {
            let Some(path) = path else {
                return Ok(Vec::new());
            };
            let read = tokio::task::spawn_blocking(move || {
                std::fs::read(&path).map(|bytes| decode_events(&bytes, after_seq, limit))
            });
            read.await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task_events::TaskEventSink;
    use crate::task_events::tests::output;
    use futures::StreamExt;

    #[tokio::test]
    async fn events_past_those_kept_in_memory_are_read_back_from_the_file() {
        use crate::task_events::{MAX_RETAINED, REPLAY_PAGE};
        let dir = tempfile::tempdir().unwrap();
        let events = dir.path().join("events");
        let total = (MAX_RETAINED + REPLAY_PAGE + 9) as u64;
        let every: Vec<u64> = (1..=total + 1).collect();
        let seqs = |stream: crate::task_events::EventStream| async move {
            let items: Vec<_> = stream.collect().await;
            items
                .into_iter()
                .map(|item| item.expect("no error").seq)
                .collect::<Vec<u64>>()
        };
        {
            let (runs, _) = TaskRuns::open(events.clone(), "001").unwrap();
            let run = runs.start("long", CancellationToken::new()).unwrap();
            // A follower that reads nothing while the task runs far past the log's window (a
            // manager that was away).
            let lagging = run.log.follow(0, None).unwrap();
            let sink = TaskEventSink::new(run.log.clone());
            for i in 0..total {
                sink.send(output(&format!("line {i}"))).await;
            }
            sink.finish(TaskResult {
                status: TaskState::Succeeded as i32,
                ..Default::default()
            })
            .await;
            assert_eq!(seqs(lagging).await, every);
            assert_eq!(seqs(run.log.follow(3, None).unwrap()).await, every[3..]);
        }
        // After a restart the task is read back from its file, and still replayed whole.
        let (runs, interrupted) = TaskRuns::open(events, "001").unwrap();
        assert_eq!(interrupted, 0);
        let run = runs.get("long").expect("read back from its file");
        let mut replayed = Vec::new();
        let mut stream = run.log.follow(0, None).unwrap();
        while let Some(event) = stream.next().await {
            replayed.push(event.unwrap());
        }
        assert_eq!(replayed.iter().map(|e| e.seq).collect::<Vec<_>>(), every);
        assert_eq!(replayed[41].kind, Some(output("line 41")));
    }

    #[tokio::test]
    async fn a_task_running_when_the_process_died_is_handed_back_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let events = dir.path().join("events");
        {
            let (runs, interrupted) = TaskRuns::open(events.clone(), "001").unwrap();
            assert_eq!(interrupted, 0);
            let run = runs.start("t-1", CancellationToken::new()).unwrap();
            let sink = TaskEventSink::new(run.log.clone());
            sink.send(output("working")).await;
            let done = runs.start("t-2", CancellationToken::new()).unwrap();
            TaskEventSink::new(done.log.clone())
                .finish(TaskResult {
                    status: TaskState::Succeeded as i32,
                    ..Default::default()
                })
                .await;
            assert!(
                runs.start("t-1", CancellationToken::new()).is_err(),
                "one run per id"
            );
        }
        // The "process" is gone; a new one opens the same files.
        let (runs, interrupted) = TaskRuns::open(events, "001").unwrap();
        assert_eq!(interrupted, 1);
        let run = runs.get("t-1").expect("known after restart");
        let mut seen = Vec::new();
        let mut stream = run.log.follow(0, None).unwrap();
        while let Some(Ok(ev)) = stream.next().await {
            seen.push(ev);
        }
        assert_eq!(seen.len(), 2);
        let Some(Kind::Result(result)) = &seen[1].kind else {
            panic!("no result: {seen:?}")
        };
        assert_eq!(result.error_class, ErrorClass::HandedBack as i32);
        assert_eq!(
            runs.get("t-2")
                .and_then(|r| r.log.result())
                .map(|r| r.status),
            Some(TaskState::Succeeded as i32)
        );
        assert!(runs.get("unknown").is_none());
    }
}
