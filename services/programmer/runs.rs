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
//! Unless it had kept its edit: before an attempt creates the task's kept branch, the result that
//! keeping makes is recorded beside the task's events ([`TaskRuns::keeping`], `<task>.keeping`),
//! and a task that died after that is ended on start-up with that result when the branch is there
//! at the recorded commit. Otherwise the edit would be on `pas/<task>` while the task's result said
//! it was handed back, and on its last dispatch attempt the task would fail with its edit kept.
//!
//! Finished tasks stay in memory for [`KEEP_IN_MEMORY`] (at most [`MAX_FINISHED_IN_MEMORY`] of
//! them, holding at most [`MAX_FINISHED_BYTES_IN_MEMORY`] of events) and on disk for
//! [`KEEP_ON_DISK`].

use crate::config::Durability;
use crate::contract::v1::{ErrorClass, TaskEvent, TaskResult, TaskState, task_event::Kind};
use crate::programmer::worktree::sanitize_task_id;
use crate::task_events::{Journal, TaskLog};
use futures::future::BoxFuture;
use prost::Message;
use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long a finished task's log stays in memory (later it is read back from its file).
pub const KEEP_IN_MEMORY: Duration = Duration::from_secs(600);

/// Most finished tasks kept in memory at once: past it the longest finished leave early (and
/// are read back from their files like any other). Without it a flood of dry runs — thousands a
/// second — held each for [`KEEP_IN_MEMORY`]: ~100 MiB per programmer after 50 s of bench-peers.
pub const MAX_FINISHED_IN_MEMORY: usize = 1_000;

/// Most bytes (events, as encoded) the finished tasks kept in memory may hold together: past it
/// the longest finished leave early, as past [`MAX_FINISHED_IN_MEMORY`]. A real task's log holds
/// up to `MAX_RETAINED_BYTES` (2 MiB) of output, so a thousand chatty tasks finished within
/// [`KEEP_IN_MEMORY`] could otherwise hold gigabytes; the newest finished task stays whatever
/// its size.
pub const MAX_FINISHED_BYTES_IN_MEMORY: usize = 64 << 20;

/// How long a task's event file is kept after its last write (removed at start-up once older,
/// and by the sweep every [`SWEEP_EVERY`] while the programmer runs).
pub const KEEP_ON_DISK: Duration = Duration::from_secs(24 * 3600);

/// How often a running programmer looks for event files past [`KEEP_ON_DISK`]: without it a
/// programmer that runs for weeks would keep a file for every task it ever ran.
pub const SWEEP_EVERY: Duration = Duration::from_secs(3600);

/// Extension of event files.
const EXT: &str = "events";

/// Extension of a task's keep record (see [`TaskRuns::keeping`]).
const KEEPING_EXT: &str = "keeping";

/// What a task recorded before keeping its edit: the repository the kept branch is created in,
/// and the result that keeping makes (its branch and commit among it).
#[derive(Clone, PartialEq, prost::Message)]
struct KeepRecord {
    #[prost(string, tag = "1")]
    repo: String,
    #[prost(message, optional, tag = "2")]
    result: Option<TaskResult>,
}

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
        lock(&self.handed_back).get_or_insert(reason);
        self.cancel.cancel();
    }

    /// The reason given to [`hand_back`](Self::hand_back), if it was called.
    pub fn handed_back_reason(&self) -> Option<String> {
        lock(&self.handed_back).clone()
    }
}

/// The finished tasks kept in memory, in the order they finished (see [`TaskRuns::finished`]).
#[derive(Debug, Default)]
struct Finished {
    /// Each with when it is due to leave memory and the bytes its log holds.
    queue: VecDeque<(tokio::time::Instant, String, usize)>,
    /// The sum of those bytes.
    bytes: usize,
}

/// The tasks of this programmer, running and recently finished.
#[derive(Debug)]
pub struct TaskRuns {
    dir: PathBuf,
    journal: Arc<FileJournal>,
    runs: Mutex<HashMap<String, Run>>,
    /// The finished tasks still in [`runs`](Self::runs), in the order they finished, each with
    /// when it is due to leave memory and the bytes its log holds.
    finished: Mutex<Finished>,
    /// Wakes [`keep_tidy`](Self::keep_tidy) when a task finishes while none waited to leave.
    first_finished: tokio::sync::Notify,
    /// Tasks with a keep record on disk, removed once their result is journaled.
    keep_records: Mutex<std::collections::HashSet<String>>,
}

impl TaskRuns {
    /// Opens the event files in `dir` (created if needed): removes those older than
    /// [`KEEP_ON_DISK`] and ends every task a previous process left running with a HANDED_BACK
    /// result. Returns the registry and how many tasks were ended so.
    pub fn open(dir: PathBuf, programmer_id: &str) -> std::io::Result<(Self, usize)> {
        Self::open_with(dir, programmer_id, Durability::ProcessCrash)
    }

    /// [`open`](Self::open) with the given durability: with [`Durability::PowerLoss`] each
    /// result's file, and the directory that names it, is synced before the result is reported
    /// (on the blocking pool, not on the runtime's thread).
    pub fn open_with(
        dir: PathBuf,
        programmer_id: &str,
        durability: Durability,
    ) -> std::io::Result<(Self, usize)> {
        std::fs::create_dir_all(&dir)?;
        let journal = Arc::new(FileJournal {
            dir: dir.clone(),
            pages: Arc::default(),
            sync_results: durability == Durability::PowerLoss,
        });
        let mut interrupted = 0;
        let (mut events_files, mut keep_records) = (Vec::new(), std::collections::HashSet::new());
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            match path.extension() {
                Some(ext) if ext == EXT => events_files.push(path),
                Some(ext) if ext == KEEPING_EXT => drop(keep_records.insert(path)),
                _ => {}
            }
        }
        for path in events_files {
            // Read (for an interrupted task) and removed with the pass over its events file.
            let record = keep_records.take(&path.with_extension(KEEPING_EXT));
            // A file past KEEP_ON_DISK is removed unread, like an empty one.
            let (events, whole) = if expired(&path) {
                (Vec::new(), 0)
            } else {
                read_events(&path)?
            };
            match events.last() {
                None => {
                    let _ = std::fs::remove_file(&path);
                }
                Some(last) if !matches!(last.kind, Some(Kind::Result(_))) => {
                    let kept = record.as_deref().and_then(kept_before_it_died);
                    let result = kept.unwrap_or_else(|| TaskResult {
                        status: TaskState::Failed as i32,
                        programmer_id: programmer_id.to_string(),
                        error_class: ErrorClass::HandedBack as i32,
                        error_message: format!(
                            "programmer {programmer_id} restarted while the task ran: handed back for rerouting"
                        ),
                        ..Default::default()
                    });
                    let event = TaskEvent {
                        task_id: last.task_id.clone(),
                        seq: last.seq + 1,
                        timestamp_ms: crate::task_events::now_unix_ms(),
                        kind: Some(Kind::Result(Box::new(result))),
                    };
                    // A torn record at the end (the host lost power before the kernel wrote
                    // the file out) goes first: a result appended after it could not be read.
                    std::fs::OpenOptions::new()
                        .write(true)
                        .open(&path)?
                        .set_len(whole)?;
                    let file = journal.write(&event)?;
                    if journal.syncs(&event) {
                        sync_to_disk(&file, &dir)?;
                    }
                    interrupted += 1;
                }
                Some(_) => {}
            }
            if let Some(record) = record {
                let _ = std::fs::remove_file(record);
            }
        }
        // A keep record outlives its task's events only if the process died between removing the
        // one and the other.
        for record in keep_records {
            let _ = std::fs::remove_file(record);
        }
        Ok((
            Self {
                dir,
                journal,
                runs: Mutex::new(HashMap::new()),
                finished: Mutex::default(),
                first_finished: tokio::sync::Notify::new(),
                keep_records: Mutex::default(),
            },
            interrupted,
        ))
    }

    /// Records, before an attempt of `task_id` keeps its edit in `repo` (creates the kept branch
    /// there), the `result` keeping it makes, synced to disk: if the process dies after the branch
    /// exists and before the result is journaled, the next process ends the task with this result
    /// instead of handing it back. Removed when the task's result is journaled
    /// ([`finished`](Self::finished)).
    pub fn keeping(&self, task_id: &str, repo: &Path, result: TaskResult) -> std::io::Result<()> {
        let invalid =
            |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, what.to_string());
        let path = self
            .journal
            .path(task_id)
            .ok_or_else(|| invalid("task id unusable as a file name"))?
            .with_extension(KEEPING_EXT);
        let record = KeepRecord {
            repo: repo
                .to_str()
                .ok_or_else(|| invalid("repository path is not UTF-8"))?
                .to_string(),
            result: Some(result),
        };
        let mut file = std::fs::File::create(&path)?;
        file.write_all(&record.encode_to_vec())?;
        file.sync_data()?;
        lock(&self.keep_records).insert(task_id.to_string());
        Ok(())
    }

    fn runs(&self) -> MutexGuard<'_, HashMap<String, Run>> {
        lock(&self.runs)
    }

    /// The task `task_id`, in memory or read back from its file; `None` when this programmer
    /// does not have it.
    pub fn get(&self, task_id: &str) -> Option<Run> {
        if let Some(run) = self.runs().get(task_id) {
            return Some(run.clone());
        }
        let path = self.journal.path(task_id)?;
        let (events, _) = read_events(&path).ok()?;
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

    /// The task has its result: it leaves memory after [`KEEP_IN_MEMORY`], or earlier once
    /// [`MAX_FINISHED_IN_MEMORY`] tasks finished after it or the finished ones hold more than
    /// [`MAX_FINISHED_BYTES_IN_MEMORY`] (its file stays).
    pub fn finished(&self, task_id: &str) {
        if lock(&self.keep_records).remove(task_id)
            && let Some(path) = self.journal.path(task_id)
        {
            let _ = std::fs::remove_file(path.with_extension(KEEPING_EXT));
        }
        let bytes = self
            .runs()
            .get(task_id)
            .map_or(0, |run| run.log.retained_bytes());
        let mut finished = lock(&self.finished);
        let now = tokio::time::Instant::now();
        finished
            .queue
            .push_back((now + KEEP_IN_MEMORY, task_id.to_string(), bytes));
        finished.bytes += bytes;
        if finished.queue.len() == 1 {
            self.first_finished.notify_one();
        }
        self.forget(&mut finished, now);
    }

    /// Removes from memory the finished tasks whose [`KEEP_IN_MEMORY`] is over, and the longest
    /// finished past [`MAX_FINISHED_IN_MEMORY`] or [`MAX_FINISHED_BYTES_IN_MEMORY`] (never the
    /// newest); returns when the next one is due, if any.
    fn forget(
        &self,
        finished: &mut Finished,
        now: tokio::time::Instant,
    ) -> Option<tokio::time::Instant> {
        while let Some(&(due, _, _)) = finished.queue.front() {
            let over = finished.queue.len() > MAX_FINISHED_IN_MEMORY
                || (finished.bytes > MAX_FINISHED_BYTES_IN_MEMORY && finished.queue.len() > 1);
            if due > now && !over {
                return Some(due);
            }
            if let Some((_, task_id, bytes)) = finished.queue.pop_front() {
                finished.bytes -= bytes;
                self.runs().remove(&task_id);
            }
        }
        None
    }

    /// Where the event files are.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Removes the event files last written more than [`KEEP_ON_DISK`] ago, except those of tasks
    /// still in memory (a task can run quietly for long). Returns how many were removed. Reads the
    /// whole directory: run it on the blocking pool.
    pub fn sweep_expired(&self) -> std::io::Result<usize> {
        let mut removed = 0;
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|ext| ext == EXT)
                && expired(&path)
                && !self.in_memory(&path)
                && std::fs::remove_file(&path).is_ok()
            {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Whether the task whose events are in the file at `path` is in memory (the file names
    /// its task in every record; only the first is read).
    fn in_memory(&self, path: &Path) -> bool {
        let Ok(file) = std::fs::File::open(path) else {
            return false;
        };
        let (first, _) = read_records(&mut std::io::BufReader::new(file), 0, 1);
        first
            .first()
            .is_some_and(|event| self.runs().contains_key(&event.task_id))
    }

    /// The registry's housekeeping, until `stop`: finished tasks leave memory when their
    /// [`KEEP_IN_MEMORY`] is over (one timer for all of them), and
    /// [`sweep_expired`](Self::sweep_expired) runs every [`SWEEP_EVERY`].
    pub async fn keep_tidy(self: Arc<Self>, stop: CancellationToken) {
        let mut next_sweep = tokio::time::Instant::now() + SWEEP_EVERY;
        loop {
            let next_due = self.forget(&mut lock(&self.finished), tokio::time::Instant::now());
            tokio::select! {
                _ = tokio::time::sleep_until(next_sweep) => {}
                _ = tokio::time::sleep_until(next_due.unwrap_or(next_sweep)), if next_due.is_some() => continue,
                _ = self.first_finished.notified(), if next_due.is_none() => continue,
                _ = stop.cancelled() => return,
            }
            next_sweep += SWEEP_EVERY;
            let runs = self.clone();
            match tokio::task::spawn_blocking(move || runs.sweep_expired()).await {
                Ok(Ok(0)) => {}
                Ok(Ok(removed)) => tracing::info!(
                    removed,
                    dir = %self.dir.display(),
                    "removed event files of tasks finished over a day ago"
                ),
                Ok(Err(e)) => tracing::warn!(dir = %self.dir.display(), error = %e,
                    "could not sweep the event files"),
                Err(_) => return, // The runtime is shutting down.
            }
        }
    }
}

/// Whether the file at `path` was last written more than [`KEEP_ON_DISK`] ago.
fn expired(path: &Path) -> bool {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age > KEEP_ON_DISK)
}

/// The result a task recorded before keeping its edit ([`TaskRuns::keeping`]), when its kept
/// branch is there at the recorded commit: the edit was kept, and this is the task's result.
/// `None` without a record, with one that cannot be read, or when the branch is absent or holds
/// another attempt's commit (the keep never happened, or lost to another attempt).
fn kept_before_it_died(record: &Path) -> Option<TaskResult> {
    let bytes = std::fs::read(record).ok()?;
    let KeepRecord { repo, result } = KeepRecord::decode(bytes.as_slice()).ok()?;
    let result = result?;
    let out = crate::git::Git::new(Path::new(&repo))
        .args(["rev-parse", "--verify", "-q", "--end-of-options"])
        .arg(format!("refs/heads/{}^{{commit}}", result.branch))
        .output_blocking()
        .ok()?;
    let tip = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || result.commit.is_empty() || tip.trim() != result.commit {
        return None;
    }
    tracing::warn!(branch = %result.branch, commit = %result.commit,
        "a task kept its edit before the process died: its result is the kept edit");
    Some(result)
}

/// Locks `mutex`, recovering it if a panic poisoned it (every value it guards stays consistent).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Reads a task's event file: its events and the length of the whole records holding them; a
/// torn last record (the process or its host died mid-write) is ignored.
fn read_events(path: &Path) -> std::io::Result<(Vec<TaskEvent>, u64)> {
    let mut file = std::io::BufReader::new(std::fs::File::open(path)?);
    Ok(read_records(&mut file, 0, usize::MAX))
}

/// A record longer than this is not one we wrote: the file is read no further.
const MAX_RECORD_BYTES: usize = 64 << 20;

/// Up to `limit` events with seq > `after_seq` read from an event file's records, in file (seq)
/// order, the records before them read for their seq only; and the bytes read up to the end of
/// the last record returned (or of every record read, when none was). Stops at a torn record.
fn read_records(file: &mut impl BufRead, after_seq: u64, limit: usize) -> (Vec<TaskEvent>, u64) {
    /// A `pas.v1.TaskEvent` read for its seq alone (prost skips the other fields unread).
    #[derive(Clone, PartialEq, prost::Message)]
    struct SeqOnly {
        #[prost(uint64, tag = "2")]
        seq: u64,
    }
    let (mut events, mut read, mut record) = (Vec::new(), 0u64, Vec::new());
    while events.len() < limit {
        let Some(len) = read_length(file) else { break };
        if len > MAX_RECORD_BYTES {
            break;
        }
        record.resize(len, 0);
        if file.read_exact(&mut record).is_err() {
            break;
        }
        match SeqOnly::decode(record.as_slice()) {
            Ok(SeqOnly { seq }) if seq <= after_seq => {}
            Ok(_) => match TaskEvent::decode(record.as_slice()) {
                Ok(event) => events.push(event),
                Err(_) => break,
            },
            Err(_) => break,
        }
        read += (prost::length_delimiter_len(len) + len) as u64;
    }
    (events, read)
}

/// Reads a record's length prefix (a protobuf varint, as `encode_length_delimited` wrote it);
/// `None` at the end of the file or in a torn one.
fn read_length(file: &mut impl BufRead) -> Option<usize> {
    let mut prefix = [0u8; 10];
    for width in 0..prefix.len() {
        let mut byte = [0u8];
        file.read_exact(&mut byte).ok()?;
        prefix[width] = byte[0];
        if byte[0] < 0x80 {
            return prost::decode_length_delimiter(&prefix[..=width]).ok();
        }
    }
    None
}

/// Appends each event to its task's file. By default nothing is synced: a written event is in the
/// kernel's page cache, which outlives the process, so a programmer killed at any point finds every
/// event it journaled (the durability the manager's task store has at `synchronous = NORMAL`). A
/// sync per result cost a dry run more than half its time on a VM's disk and gave a lone caller's
/// dispatch a tail of milliseconds (BENCHMARKS.md "Peers: the programmer's sync"); what it buys — a
/// result that survives a power loss of the programmer's host — the pool gets otherwise: the
/// manager records a result before its caller hears of it, and a task whose programmer lost it is
/// handed to another programmer. An operator who wants it anyway sets `durability: power_loss`
/// ([`FileJournal::sync_results`]).
#[derive(Debug)]
struct FileJournal {
    dir: PathBuf,
    /// Where the next page of a task's file starts, by the task and the last seq of the page
    /// before: a follower reading a long task back page by page reads each record once, not the
    /// whole file for every page. Offsets stay true: a file is only appended to.
    pages: Arc<Mutex<PageStarts>>,
    /// Sync a result's file and the directory before the result is reported
    /// ([`Durability::PowerLoss`]); nothing is synced otherwise.
    sync_results: bool,
}

/// Syncs what was written to `file` in `dir`, and `dir` itself (a file created since the
/// directory was last synced is not found after a power loss without it).
fn sync_to_disk(file: &std::fs::File, dir: &Path) -> std::io::Result<()> {
    file.sync_data()?;
    std::fs::File::open(dir)?.sync_all()
}

/// See [`FileJournal::pages`].
type PageStarts = HashMap<(String, u64), u64>;

/// Page starts kept at most (then forgotten all at once: a page without one reads from the
/// start of its file, as every page did before).
const MAX_PAGE_STARTS: usize = 1024;

impl FileJournal {
    fn path(&self, task_id: &str) -> Option<PathBuf> {
        let name = sanitize_task_id(task_id).ok()?;
        Some(self.dir.join(format!("{name}.{EXT}")))
    }

    /// Whether `event` is synced once written: a result, with [`FileJournal::sync_results`].
    fn syncs(&self, event: &TaskEvent) -> bool {
        self.sync_results && matches!(event.kind, Some(Kind::Result(_)))
    }

    /// Appends `event` to its task's file; returns the file (to sync, when asked).
    fn write(&self, event: &TaskEvent) -> std::io::Result<std::fs::File> {
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
        Ok(file)
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
        let written = self.write(event);
        match written {
            Ok(file) if self.syncs(event) => {
                let dir = self.dir.clone();
                Box::pin(async move {
                    tokio::task::spawn_blocking(move || sync_to_disk(&file, &dir))
                        .await
                        .map_err(|e| e.to_string())?
                        .map_err(|e| e.to_string())
                })
            }
            written => Box::pin(async move { written.map(drop).map_err(|e| e.to_string()) }),
        }
    }

    fn replays(&self) -> bool {
        true
    }

    /// Reads a page of the task's file on the blocking pool, from where the page before ended
    /// when known (a follower reads back only what its log dropped, such as a manager catching up
    /// after a long restart).
    fn replay(
        &self,
        task_id: &str,
        after_seq: u64,
        limit: usize,
    ) -> BoxFuture<'static, Result<Vec<TaskEvent>, String>> {
        let Some(path) = self.path(task_id) else {
            return Box::pin(async { Ok(Vec::new()) });
        };
        let (pages, task_id) = (self.pages.clone(), task_id.to_string());
        let read = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
            let starts = || lock(&pages);
            let key = (task_id, after_seq);
            let start = starts().get(&key).copied().unwrap_or(0);
            let mut file = std::io::BufReader::new(std::fs::File::open(path)?);
            file.seek(SeekFrom::Start(start))?;
            let (events, read) = read_records(&mut file, after_seq, limit);
            if let Some(last) = events.last() {
                let mut starts = starts();
                if starts.len() >= MAX_PAGE_STARTS {
                    starts.clear();
                }
                starts.insert((key.0, last.seq), start + read);
            }
            Ok(events)
        });
        Box::pin(async move {
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
    async fn a_long_task_is_read_back_from_where_the_page_before_ended() {
        use crate::task_events::{MAX_RETAINED, REPLAY_PAGE};
        let dir = tempfile::tempdir().unwrap();
        let (runs, _) = TaskRuns::open(dir.path().join("events"), "001").unwrap();
        let run = runs.start("long", CancellationToken::new()).unwrap();
        let mut follower = run.log.follow(0, None).unwrap();
        let sink = TaskEventSink::new(run.log.clone());
        let total = (MAX_RETAINED + 3 * REPLAY_PAGE) as u64;
        for i in 0..total {
            sink.send(output(&format!("line {i}"))).await;
        }
        let mut seqs = Vec::new();
        for _ in 0..REPLAY_PAGE {
            seqs.push(follower.next().await.unwrap().unwrap().seq);
        }
        // The first page read, its records are made unreadable: the next pages start after them,
        // so they never see it (a page that read the file from its start would stop there).
        let path = runs.dir().join(format!("long.{EXT}"));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[..64].fill(0xff);
        std::fs::write(&path, &bytes).unwrap();
        for _ in REPLAY_PAGE as u64..total {
            seqs.push(follower.next().await.unwrap().expect("no error").seq);
        }
        assert_eq!(seqs, (1..=total).collect::<Vec<_>>());
        // A follower with no page before reads from the start, and stops at the damage.
        assert!(
            run.log
                .follow(0, None)
                .unwrap()
                .next()
                .await
                .unwrap()
                .is_err()
        );
    }

    /// Runs git in `repo` (the tests' own repository), returning its trimmed stdout.
    fn git(repo: &Path, args: &[&str]) -> String {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(repo)
            .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    #[tokio::test]
    async fn a_task_that_kept_its_edit_before_the_process_died_ends_with_that_edit() {
        let dir = tempfile::tempdir().unwrap();
        let (events, repo) = (dir.path().join("events"), dir.path().join("repo"));
        std::fs::create_dir_all(&repo).unwrap();
        git(&repo, &["init", "-q"]);
        git(&repo, &["commit", "-q", "--allow-empty", "-m", "base"]);
        let base = git(&repo, &["rev-parse", "HEAD"]);
        git(&repo, &["commit", "-q", "--allow-empty", "-m", "edit"]);
        let edit = git(&repo, &["rev-parse", "HEAD"]);
        let kept = |task: &str, commit: &str| TaskResult {
            status: TaskState::Succeeded as i32,
            branch: format!("pas/{task}"),
            commit: commit.to_string(),
            diff: "+edit\n".into(),
            ..Default::default()
        };
        {
            let runs = Arc::new(TaskRuns::open(events.clone(), "001").unwrap().0);
            // kept: the branch is there at the recorded commit. never-kept: killed between the
            // record and the branch. lost-race: another attempt's branch (another commit).
            for task in ["kept", "never-kept", "lost-race", "journaled"] {
                let run = runs.start(task, CancellationToken::new()).unwrap();
                TaskEventSink::new(run.log.clone())
                    .send(output("working"))
                    .await;
                runs.keeping(task, &repo, kept(task, &edit)).unwrap();
            }
            git(&repo, &["branch", "pas/kept", &edit]);
            git(&repo, &["branch", "pas/lost-race", &base]);
            git(&repo, &["branch", "pas/journaled", &edit]);
            // One whose result was journaled: its record goes with it.
            let journaled = runs.get("journaled").unwrap();
            TaskEventSink::new(journaled.log.clone())
                .finish(kept("journaled", &edit))
                .await;
            runs.finished("journaled");
            assert!(!events.join("journaled.keeping").exists());
            assert!(events.join("kept.keeping").exists());
        }
        // The process died; a new one opens the same files.
        let (runs, interrupted) = TaskRuns::open(events.clone(), "001").unwrap();
        assert_eq!(interrupted, 3);
        let result = |task: &str| runs.get(task).and_then(|r| r.log.result()).unwrap();
        assert_eq!(
            result("kept"),
            kept("kept", &edit),
            "the kept edit is its result"
        );
        for task in ["never-kept", "lost-race"] {
            assert_eq!(
                result(task).error_class,
                ErrorClass::HandedBack as i32,
                "{task}: {:?}",
                result(task)
            );
        }
        assert_eq!(result("journaled").status, TaskState::Succeeded as i32);
        let left: Vec<_> = std::fs::read_dir(&events)
            .unwrap()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == KEEPING_EXT))
            .collect();
        assert!(
            left.is_empty(),
            "no keep record outlives the restart: {left:?}"
        );
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

    /// Makes the file at `path` look last written `ago`.
    fn age_file(path: &Path, ago: Duration) {
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(std::time::SystemTime::now() - ago)
            .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn the_sweep_removes_files_past_a_day_but_not_a_running_tasks() {
        let dir = tempfile::tempdir().unwrap();
        let events = dir.path().join("events");
        let runs = Arc::new(TaskRuns::open(events.clone(), "001").unwrap().0);
        for task_id in ["old", "recent", "running"] {
            let run = runs.start(task_id, CancellationToken::new()).unwrap();
            let sink = TaskEventSink::new(run.log.clone());
            sink.send(output("working")).await;
            if task_id != "running" {
                sink.finish(TaskResult::default()).await;
                runs.finished(task_id); // Out of memory KEEP_IN_MEMORY later, before the sweep.
            }
        }
        let day_and_more = KEEP_ON_DISK + Duration::from_secs(60);
        age_file(&events.join("old.events"), day_and_more);
        age_file(&events.join("running.events"), day_and_more);
        age_file(&events.join("recent.events"), KEEP_ON_DISK / 2);

        let stop = CancellationToken::new();
        let sweeping = tokio::spawn(runs.clone().keep_tidy(stop.clone()));
        tokio::time::sleep(SWEEP_EVERY - Duration::from_secs(1)).await;
        assert!(events.join("old.events").exists(), "not before SWEEP_EVERY");
        // The sweep runs on the blocking pool: wait for its effect (on the paused clock).
        for _ in 0..600 {
            if !events.join("old.events").exists() {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        assert!(
            !events.join("old.events").exists(),
            "swept after SWEEP_EVERY"
        );
        assert!(events.join("recent.events").exists());
        assert!(
            events.join("running.events").exists(),
            "its task is in memory"
        );
        assert!(runs.get("old").is_none(), "gone for good");
        assert!(runs.get("recent").is_some());
        stop.cancel();
        sweeping.await.unwrap();
    }

    /// Starts and finishes task `task_id` in `runs`.
    async fn run_to_its_end(runs: &TaskRuns, task_id: &str) {
        run_with_output(runs, task_id, 0).await;
    }

    /// Runs `task_id` to its result after `output_bytes` bytes of output in events of at most
    /// 64 KiB (none for 0).
    async fn run_with_output(runs: &TaskRuns, task_id: &str, output_bytes: usize) {
        let run = runs.start(task_id, CancellationToken::new()).unwrap();
        let sink = TaskEventSink::new(run.log.clone());
        let mut left = output_bytes;
        while left > 0 {
            let chunk = left.min(64 << 10);
            sink.send(crate::task_events::tests::output(&"x".repeat(chunk)))
                .await;
            left -= chunk;
        }
        sink.finish(TaskResult {
            status: TaskState::Succeeded as i32,
            ..Default::default()
        })
        .await;
        runs.finished(task_id);
    }

    #[tokio::test(start_paused = true)]
    async fn a_finished_task_leaves_memory_after_keep_in_memory_and_stays_readable() {
        let dir = tempfile::tempdir().unwrap();
        let runs = Arc::new(TaskRuns::open(dir.path().join("events"), "001").unwrap().0);
        let stop = CancellationToken::new();
        let tidying = tokio::spawn(runs.clone().keep_tidy(stop.clone()));
        run_to_its_end(&runs, "t-1").await;
        tokio::time::sleep(KEEP_IN_MEMORY - Duration::from_secs(1)).await;
        assert!(runs.runs().contains_key("t-1"), "still in memory");
        run_to_its_end(&runs, "t-2").await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(!runs.runs().contains_key("t-1"), "left memory when due");
        assert!(runs.runs().contains_key("t-2"), "not due yet");
        tokio::time::sleep(KEEP_IN_MEMORY).await;
        assert!(runs.runs().is_empty());
        for task_id in ["t-1", "t-2"] {
            let result = runs.get(task_id).and_then(|r| r.log.result());
            assert_eq!(result.map(|r| r.status), Some(TaskState::Succeeded as i32));
        }
        stop.cancel();
        tidying.await.unwrap();
    }

    /// Past [`MAX_FINISHED_BYTES_IN_MEMORY`] the longest finished leave memory, whatever their
    /// count, and are read back from their files. Each log keeps at most `MAX_RETAINED_BYTES`
    /// itself, so it takes many chatty tasks.
    #[tokio::test]
    async fn past_max_finished_bytes_in_memory_the_longest_finished_leave_first() {
        use crate::task_events::MAX_RETAINED_BYTES;
        let dir = tempfile::tempdir().unwrap();
        let runs = TaskRuns::open(dir.path().join("events"), "001").unwrap().0;
        // Each task prints more than its log keeps: the log holds just under its budget.
        let chatty = MAX_RETAINED_BYTES + (256 << 10);
        run_with_output(&runs, "chatty-0", chatty).await;
        let per_log = runs.get("chatty-0").unwrap().log.retained_bytes();
        assert!(
            per_log <= MAX_RETAINED_BYTES && per_log > MAX_RETAINED_BYTES / 2,
            "{per_log}"
        );
        let fit = MAX_FINISHED_BYTES_IN_MEMORY / per_log;
        for i in 1..=fit {
            run_with_output(&runs, &format!("chatty-{i}"), chatty).await;
        }
        assert!(
            !runs.runs().contains_key("chatty-0"),
            "the longest finished left"
        );
        for i in 1..=fit {
            assert!(
                runs.runs().contains_key(&format!("chatty-{i}")),
                "chatty-{i} stays"
            );
        }
        let in_memory: usize = runs.runs().values().map(|r| r.log.retained_bytes()).sum();
        assert!(in_memory <= MAX_FINISHED_BYTES_IN_MEMORY, "{in_memory}");
        let replayed = runs.get("chatty-0").expect("read back from its file");
        assert_eq!(
            replayed.log.latest_seq(),
            chatty.div_ceil(64 << 10) as u64 + 1,
            "its output and its result"
        );
    }

    #[tokio::test]
    async fn past_max_finished_in_memory_the_longest_finished_leave_first() {
        let dir = tempfile::tempdir().unwrap();
        let runs = TaskRuns::open(dir.path().join("events"), "001").unwrap().0;
        let running = runs.start("running", CancellationToken::new()).unwrap();
        for i in 0..MAX_FINISHED_IN_MEMORY + 2 {
            run_to_its_end(&runs, &format!("t-{i}")).await;
        }
        // The running task and the newest MAX_FINISHED_IN_MEMORY finished ones.
        assert_eq!(runs.runs().len(), MAX_FINISHED_IN_MEMORY + 1);
        assert!(!runs.runs().contains_key("t-0") && !runs.runs().contains_key("t-1"));
        assert!(runs.runs().contains_key("t-2") && runs.runs().contains_key("running"));
        let result = runs.get("t-0").and_then(|r| r.log.result());
        assert_eq!(
            result.map(|r| r.status),
            Some(TaskState::Succeeded as i32),
            "read back"
        );
        drop(running);
    }

    #[tokio::test]
    async fn a_torn_last_record_is_cut_before_the_handed_back_result() {
        let dir = tempfile::tempdir().unwrap();
        let events = dir.path().join("events");
        {
            let (runs, _) = TaskRuns::open(events.clone(), "001").unwrap();
            let run = runs.start("t-1", CancellationToken::new()).unwrap();
            TaskEventSink::new(run.log.clone())
                .send(output("working"))
                .await;
        }
        // What a power loss can leave: a record's length prefix without all of its bytes.
        let file = events.join("t-1.events");
        let mut torn = std::fs::OpenOptions::new()
            .append(true)
            .open(&file)
            .unwrap();
        torn.write_all(&[40, 8, 2]).unwrap();
        drop(torn);
        let (_, interrupted) = TaskRuns::open(events.clone(), "001").unwrap();
        assert_eq!(interrupted, 1);
        // The next start reads the handed-back result from the file: the task ended once.
        let (runs, interrupted) = TaskRuns::open(events, "001").unwrap();
        assert_eq!(
            interrupted, 0,
            "the result was written after the torn record"
        );
        let result = runs
            .get("t-1")
            .and_then(|r| r.log.result())
            .expect("a result");
        assert_eq!(result.error_class, ErrorClass::HandedBack as i32);
    }
}
