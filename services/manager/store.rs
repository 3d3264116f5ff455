//! Durable records of every task the manager accepted (SQLite), for `GetTask` and idempotency.
//!
//! One row per task id (table `tasks`). A row holds
//! the request fields a caller may ask about, a fingerprint of the whole request, the state, the
//! programmer, timestamps and the final `pas.v1.TaskResult` (prost-encoded).
//!
//! # Invariants
//!
//! - A task id is used by exactly one request: inserting the same id with the same fingerprint is
//!   [`InsertOutcome::AlreadyExists`] (the caller attaches to it), with a different one
//!   [`StoreError::Conflict`] (ALREADY_EXISTS at the API).
//! - States only move forward: QUEUED → RUNNING → one terminal state. The first result wins;
//!   later `set_running`/`finish` calls on a finished task change nothing and return `false`.
//! - Every event a caller can see is in table `task_events` (the manager's [`Journal`]): a caller
//!   re-attaching with WatchTask, to this process or the next, sees each event once, in order.
//! - A restarted manager takes its unfinished tasks back ([`TaskStore::unfinished`]): each row keeps
//!   the whole request, the dispatch attempt it is on, and its events record the programmer-side
//!   seq they relay, so the task is followed again where it was. Only rows of stores written before
//!   requests were kept cannot be resumed: [`TaskStore::open`] fails those with error class
//!   UNAVAILABLE and the message "manager restarted".
//!
//! # Group commit, flat-combined
//!
//! Every dispatch writes several times (insert, running, events, finished), and a SQLite commit
//! costs far more than the statement it commits (tens to a hundred microseconds for the WAL
//! append), so one commit per write capped the manager's dispatch rate. Writes are therefore
//! group-committed: whoever commits takes every write waiting, runs them inside one transaction,
//! commits once, and only then answers each caller: an answered write is committed. Under load,
//! many writes share a commit. A failing write fails alone: when one fails, the transaction is
//! rolled back and the batch run again with each write in its own savepoint, so the failed one
//! rolls back without the others. Writes rarely fail (a conflicting task id), so a batch does not
//! pay for savepoints up front (a savepoint and its release cost about 5 µs per write, 20 µs of a
//! lone dispatch's two commits: BENCHMARKS.md, "Hot path, part 5"); a write is therefore an
//! operation that can run again, from the same state, with the same outcome.
//!
//! Who commits is decided by flat combining, not by a writer thread: a write is queued, and if
//! nobody is committing, the caller commits the queue itself, on its own thread, at once. So an
//! unloaded dispatch wakes no other thread for its writes (a hand-off to a writer thread and its
//! answer back cost two thread wake-ups per write, the largest share of the manager's hop on the
//! profile in BENCHMARKS.md "Hot path"). Writes queued while someone commits wait for that
//! committer's next batch. A caller commits at most [`INLINE_BATCHES`] batches; if writes still
//! wait after that (a sustained burst), it hands the queue to the store's overflow thread, which
//! commits until the queue is empty, so no async caller is held for long. Writes are applied in
//! the order they were called (one queue, one committer at a time), so a caller may leave a write
//! unawaited (`set_running`) and still know a later `finish` lands after it. Reads (`get`) use
//! their own connection (WAL lets it read while a write is committed) and see every answered
//! write.
//!
//! The store belongs to one process: its connections open the file with [`STORE_VFS`], which
//! holds the file exclusively for the process and keeps the WAL's index in its memory, so a
//! commit takes no file lock, and a second manager on the same data dir is refused
//! ([`StoreError::InUse`]) instead of placing the same tasks beside the first.
//!
//! Not every write needs a commit of its own. A record of a task id the manager made up waits
//! for the task's next write ([`TaskStore::insert_with_next`]); an event nobody waits on yet
//! (anything but a result) waits up to [`EVENT_DELAY`] for another write to commit it
//! ([`TaskStore::append_event_soon`]). A dry run's Assigned then shares its result's commit, and
//! under load the events of many tasks share one: two commits per dispatch instead of three. A
//! follower still sees an event only once it is committed, at most that delay later.
//!
//! WAL checkpoints (copying the log back into the database, with the file syncs that
//! `synchronous = NORMAL` asks for) would otherwise run inside a commit every thousand pages and
//! double the average cost of a write; a checkpoint thread runs them instead, every
//! [`CHECKPOINT_EVERY`] and when the store closes, and starts the WAL over every
//! [`RESTART_EVERY_TICKS`] ticks (under steady writes a WAL only checkpointed passively never
//! does, and grows for as long as they go on), writing the new WAL's header itself, so its flush
//! never falls to a caller's commit; once writes quiet down after a burst it also cuts the WAL
//! file back to nothing.
//!
//! # Retention
//!
//! A finished task is kept for the retention the manager sets ([`TaskStore::keep_finished_for`],
//! `manager.task_retention_s`), counted from its end, then its record and events are deleted
//! ([`forget_finished`]), so the file stops growing with every task ever run. The checkpoint thread
//! does it in small passes: each looks at the oldest [`FORGET_SCAN_ROWS`] records only (rows are in
//! the order they were recorded, so the expired ones are at the front) and deletes at most
//! [`FORGET_MAX_TASKS`] tasks or about [`FORGET_MAX_EVENTS`] events. A pass is a write like any
//! other, which the checkpoint thread queues and commits itself ([`forget_expired`]): a caller's
//! write queued meanwhile is committed right after it, so it waits for at most the pass ahead of it
//! (~1.5 ms) and never sleeps in SQLite's busy handler, as it did while passes ran as transactions
//! on a connection of their own (BENCHMARKS.md, "Task store retention"). Passes follow each other
//! while they find expired tasks, at most [`FORGET_PASSES`] a second. Unfinished tasks are never
//! deleted. Freed pages are reused by later tasks (the file is not shrunk).
//!
//! Age alone does not bound the file: at a dry-run flood's thousands of tasks a second, a week
//! is billions of records. So the manager also caps how many it keeps
//! ([`TaskStore::keep_at_most`], `manager.task_retention_max_tasks`): once more records were
//! made since the oldest one kept than the cap ([`records_span`], two index lookups, compared
//! every checkpoint), the same passes delete the oldest finished tasks whatever their age. The
//! cap is reached at the passes' pace (`FORGET_PASSES × FORGET_MAX_TASKS`, 2,000 tasks a second),
//! so a flood faster than that overshoots it until the flood ends.

use crate::config::Durability;
use crate::contract::v1::{
    DispatchRequest, ErrorClass, TaskEvent, TaskRecord, TaskResult, TaskState, task_event::Kind,
};
use crate::task_events::Journal;
use prost::Message;
use rusqlite::{
    Connection, ErrorCode, OpenFlags, OptionalExtension, Row, TransactionBehavior, params,
};
use sha2::{Digest, Sha256};
use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::oneshot;

/// Error message recorded for tasks a previous manager process left unfinished.
pub const RESTART_MESSAGE: &str = "manager restarted";

// ===== Public types =====

/// A task to record, as accepted by the manager.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTask {
    /// The caller's task id, or one the manager generated.
    pub task_id: String,
    /// The request's description.
    pub task_description: String,
    /// The request's files.
    pub files: Vec<String>,
    /// The request's workspace.
    pub workspace: String,
    /// The request's run id.
    pub run_id: String,
    /// The request's capabilities.
    pub capabilities: Vec<String>,
    /// True for dry runs.
    pub dry_run: bool,
    /// Identity of the request for idempotency (see [`fingerprint`]).
    pub fingerprint: String,
    /// The authenticated caller that dispatched it (empty without authentication).
    pub owner: String,
    /// The whole request (prost-encoded, `task_id` set), so a restarted manager can run it.
    pub request: Vec<u8>,
    /// The task's lease in seconds, fixed as it was accepted (`TaskRequest.lease_s`): a
    /// restarted manager follows it by this one, which its programmer holds it by, not by the
    /// lease its own file says (0: unknown, then that one).
    pub lease_s: u32,
}

impl NewTask {
    /// The record of `req` under `task_id` (which wins over `req.task_id`, so generated ids work),
    /// dispatched without caller authentication.
    pub fn from_request(task_id: &str, req: &DispatchRequest) -> Self {
        Self::dispatched_by(task_id, req, "")
    }

    /// The record of `req` under `task_id`, dispatched by caller `owner` (empty without
    /// authentication). The owner is part of the fingerprint, so a different caller repeating the
    /// id gets ALREADY_EXISTS instead of the owner's result.
    pub fn dispatched_by(task_id: &str, req: &DispatchRequest, owner: &str) -> Self {
        Self {
            task_id: task_id.to_owned(),
            task_description: req.task_description.clone(),
            files: req.files.clone(),
            workspace: req.workspace.clone(),
            run_id: req.run_id.clone(),
            capabilities: req.capabilities.clone(),
            dry_run: req.dry_run,
            fingerprint: fingerprint(req, owner),
            owner: owner.to_owned(),
            lease_s: 0,
            request: DispatchRequest {
                task_id: task_id.to_owned(),
                ..req.clone()
            }
            .encode_to_vec(),
        }
    }
}

/// SHA-256 (hex) of the request's protobuf encoding with `task_id` cleared, preceded by the
/// caller's name and a NUL when there is one: two dispatches are "the same request" when the same
/// caller sent equal fields but the id (prost encodes fields in tag order, so the encoding is
/// canonical for this message). Without a caller the hash is of the encoding alone, as stores
/// written before authentication existed recorded it.
pub fn fingerprint(req: &DispatchRequest, owner: &str) -> String {
    let mut canonical = req.clone();
    canonical.task_id.clear();
    let mut hasher = Sha256::new();
    if !owner.is_empty() {
        hasher.update(owner.as_bytes());
        hasher.update([0u8]);
    }
    hasher.update(canonical.encode_to_vec());
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A task a previous manager process left unfinished (see [`TaskStore::unfinished`]).
#[derive(Debug, Clone)]
pub struct Unfinished {
    pub task_id: String,
    /// The request as accepted.
    pub request: DispatchRequest,
    pub owner: String,
    pub created_ms: i64,
    /// Where it runs, when it had been placed.
    pub placed: Option<Placed>,
    /// Its lease as accepted, in seconds ([`NewTask::lease_s`]; 0: unknown).
    pub lease_s: u32,
}

/// The placement an unfinished task was on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    pub programmer_id: String,
    pub dispatch_attempt: u32,
    /// How many attempts of its leg before this one their programmer never had: a restarted
    /// manager goes on counting from there, so those still do not count as programmers tried.
    pub unsent_before: u32,
    /// The last programmer event it relayed: follow the programmer from here.
    pub upstream_seq: u64,
}

/// What [`TaskStore::insert`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum InsertOutcome {
    /// A new task was recorded, QUEUED.
    Inserted,
    /// The id is already recorded for the same request: here is its current record.
    AlreadyExists(Box<TaskRecord>),
}

/// Errors of the task store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The id is already used by a different request (maps to ALREADY_EXISTS).
    #[error("task id {task_id} is already used by a different request")]
    Conflict {
        /// The task id.
        task_id: String,
    },
    /// No task with this id.
    #[error("no task with id {0}")]
    NotFound(String),
    /// `finish` was given a result whose status is not a terminal state.
    #[error("result status {0:?} is not a terminal state")]
    NotTerminal(TaskState),
    /// A stored row could not be decoded (corrupt or foreign data).
    #[error("task {task_id}: stored {field} is unreadable: {detail}")]
    Corrupt {
        /// The task id.
        task_id: String,
        /// Which column.
        field: &'static str,
        /// The decoder's message.
        detail: String,
    },
    /// The SQLite file could not be opened, read or written.
    #[error("task store storage: {0}")]
    Storage(#[from] rusqlite::Error),
    /// The transaction holding this write failed to commit (the write did not happen).
    #[error("task store commit failed: {0}")]
    Commit(String),
    /// A read run off the async runtime did not finish (it panicked, or the runtime is stopping).
    #[error("task store read did not finish: {0}")]
    Unfinished(String),
    /// The store is closing: it takes no more writes.
    #[error("task store is closed")]
    Closed,
    /// The store's file could not be opened or created (a missing directory, no permission).
    #[error("task store {path}: cannot open: {source}")]
    Open {
        /// The store's file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Another process holds the store's file (see [`STORE_VFS`]).
    #[error(
        "task store {path}: in use by another process (another manager on the same data dir?); \
         a manager keeps its store to itself while it runs"
    )]
    InUse {
        /// The store's file.
        path: String,
    },
    /// A ListTasks page token that this store did not hand out.
    #[error("page_token: {0:?} is not a token from a previous page")]
    BadPageToken(String),
}

// ===== The store =====

/// The task table. See the module docs.
pub struct TaskStore {
    /// The write queue, its connection and who commits (shared with the overflow thread).
    writes: Arc<Writes>,
    overflow_thread: Option<JoinHandle<()>>,
    /// Dropped to stop the checkpoint thread.
    stop_checkpoints: Option<mpsc::Sender<()>>,
    checkpointer: Option<JoinHandle<()>>,
    /// The connection `get` reads with.
    reader: Mutex<StoreConn>,
    /// The connection pages are read with, on the blocking pool ([`list`](Self::list)'s, and
    /// [`events_after`](Self::events_after)'s): a page of a filter that matches few tasks reads
    /// thousands of rows, a task's events may be tens of thousands, and neither the runtime's
    /// thread nor `get`'s connection waits for them.
    pager: Arc<Mutex<StoreConn>>,
    recovered: usize,
    /// How long and how many finished tasks are kept; read by the checkpoint thread.
    retention: Arc<Retention>,
}

/// What the store keeps of finished tasks (see the module docs, "Retention") and of its WAL
/// file; read by the checkpoint thread at each tick. 0 sets no bound of that kind.
#[derive(Debug)]
struct Retention {
    /// Milliseconds after a task's end.
    ms: AtomicU64,
    /// Records: once more than this many were recorded since the oldest one still kept, the
    /// oldest finished ones go whatever their age.
    max_tasks: AtomicU64,
    /// Bytes: a WAL file larger than this is cut back once writes quiet down ([`checkpoint`]).
    wal_shrink_above: AtomicU64,
}

impl std::fmt::Debug for TaskStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskStore")
            .field("recovered", &self.recovered)
            .finish_non_exhaustive()
    }
}

/// One queued write (see [`commit_batch`]).
trait Write: Send {
    /// Runs the operation inside the batch's transaction (again, from the same state, if the
    /// batch is rolled back and run with savepoints); true when it failed.
    fn run(&mut self, conn: &Connection) -> bool;
    /// Answers the caller once the commit's outcome is known, with what the last run returned
    /// (a write that never ran says it was not written).
    fn answer(self: Box<Self>, commit: Result<(), String>);
}

/// A [`Write`] of `op`, answering on `answer`.
struct Queued<T, Op> {
    op: Op,
    /// What the last run of `op` returned.
    out: Option<Result<T, StoreError>>,
    answer: oneshot::Sender<Result<T, StoreError>>,
}

impl<T, Op> Write for Queued<T, Op>
where
    T: Send,
    Op: FnMut(&Connection) -> Result<T, StoreError> + Send,
{
    fn run(&mut self, conn: &Connection) -> bool {
        let out = (self.op)(conn);
        let failed = out.is_err();
        self.out = Some(out);
        failed
    }

    fn answer(self: Box<Self>, commit: Result<(), String>) {
        let out = self.out.unwrap_or_else(|| {
            Err(StoreError::Commit(
                "an earlier write of its batch failed; this one was not run".into(),
            ))
        });
        let _ = self
            .answer
            .send(commit.map_err(StoreError::Commit).and(out));
    }
}

/// The writes waiting for a commit and the one connection that commits them.
struct Writes {
    queue: Mutex<Queue>,
    /// Only the current committer locks it (so it is never contended).
    conn: Mutex<StoreConn>,
    /// Transactions committed (each holds one or more writes).
    commits: AtomicU64,
    /// Wakes the overflow thread to commit what a caller left queued; `None` once the store
    /// drops (a future kept past the drop then commits on its own thread, never waits).
    overflow: Mutex<Option<mpsc::Sender<()>>>,
    /// Whether an async caller commits on its own thread (up to [`INLINE_BATCHES`] when it
    /// writes, the queue to its end when it flushes) before the overflow thread takes over; not
    /// when every commit waits for the disk ([`Durability::PowerLoss`]), which the runtime's
    /// thread must not do: the overflow thread then makes every commit.
    callers_commit: bool,
}

#[derive(Default)]
struct Queue {
    pending: VecDeque<Box<dyn Write>>,
    /// Someone (a caller or the overflow thread) is committing: a new write only queues. While
    /// false, `pending` holds only writes queued [`Commit::WithNext`].
    committing: bool,
}

/// When a write is committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// At once: the caller commits the queue unless someone else is committing it.
    Now,
    /// With the next write committed now, or when the caller awaits it.
    WithNext,
    /// With the next write committed now, or once this long has passed since the caller first
    /// awaited it (a commit delay: writes nobody waits on yet share commits).
    Within(Duration),
}

/// Longest [`Writes::as_committer`] waits for the committer's role.
const ROLE_WAIT: Duration = Duration::from_millis(100);

/// How often [`Writes::as_committer`] looks whether the committer's role is free.
const ROLE_POLL: Duration = Duration::from_micros(100);

/// Most writes one commit takes (bounds the time a transaction holds the file).
const MAX_BATCH: usize = 512;

/// Most batches a caller commits on its own thread before it hands the queue to the overflow
/// thread (one is its own write's; a second takes what queued meanwhile).
const INLINE_BATCHES: usize = 2;

/// Longest an event nobody waits on yet waits for another write to share its commit
/// ([`TaskStore::append_event_soon`]): a follower sees it at most this much later.
pub const EVENT_DELAY: Duration = Duration::from_millis(2);

/// How often the checkpoint thread folds the WAL back into the database.
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tasks (
    task_id          TEXT PRIMARY KEY,
    fingerprint      TEXT NOT NULL,
    task_description TEXT NOT NULL,
    files            TEXT NOT NULL,  -- JSON array of strings
    workspace        TEXT NOT NULL,
    run_id           TEXT NOT NULL,
    capabilities     TEXT NOT NULL,  -- JSON array of strings
    dry_run          INTEGER NOT NULL,
    state            INTEGER NOT NULL, -- pas.v1.TaskState
    programmer_id    TEXT NOT NULL DEFAULT '',
    created_ms       INTEGER NOT NULL,
    started_ms       INTEGER NOT NULL DEFAULT 0,
    finished_ms      INTEGER NOT NULL DEFAULT 0,
    result           BLOB,           -- prost-encoded pas.v1.TaskResult, once finished
    owner            TEXT NOT NULL DEFAULT '', -- the caller's token name (empty without auth)
    request          BLOB,           -- prost-encoded pas.v1.DispatchRequest
    dispatch_attempt INTEGER NOT NULL DEFAULT 0, -- the placement it is on (0: never placed)
    unsent_attempts  INTEGER NOT NULL DEFAULT 0, -- attempts of its leg before that placement that
                                                 -- their programmer never had (not tried there)
    lease_s          INTEGER NOT NULL DEFAULT 0  -- its lease as accepted (0: unknown)
    -- Stores of earlier releases also have `last_seq`, no longer written: a record's latest seq is
    -- read from task_events, so journaling an event does not rewrite the task's row.
);
-- No index but the task id's: each index is one more page in the WAL per commit (a commit of a
-- lone dispatch wrote 4 and 3 pages with the two indexes of earlier releases, 2 and 2 without:
-- BENCHMARKS.md, Hot path, part 6). Rows are in the order they were recorded (rowid), which
-- lists use; the open tasks a restart looks for lie at or after the `open_from` mark below.
-- Stores of earlier releases had indexes of states and creation times: dropped.
-- The one exception, `tasks_by_owner`, holds only the tasks of authenticated callers (owner set):
-- a caller who is not an admin lists only their own tasks, and without it a page of theirs read
-- every other caller's records too (a window of them at a time). A pool without tokens writes no
-- entry of it.
CREATE INDEX IF NOT EXISTS tasks_by_owner ON tasks(owner) WHERE owner != '';
DROP INDEX IF EXISTS tasks_state;
DROP INDEX IF EXISTS tasks_open;
DROP INDEX IF EXISTS tasks_created;
-- `open_from`: a task recorded at or before the oldest open one (every later task is after it in
-- rowid order). Moved forward by the checkpoint thread (see `advance_open_mark`); a store
-- without it is searched whole. Named by task id, not rowid: VACUUM may renumber rowids (it keeps
-- their order).
CREATE TABLE IF NOT EXISTS task_store_marks (
    name    TEXT PRIMARY KEY,
    task_id TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS task_events (
    task_id      TEXT NOT NULL,
    seq          INTEGER NOT NULL,
    attempt      INTEGER NOT NULL, -- the task's dispatch attempt when it was journaled
    upstream_seq INTEGER NOT NULL, -- the programmer event it relays (0: made by the manager)
    event        BLOB NOT NULL,    -- prost-encoded pas.v1.TaskEvent
    PRIMARY KEY (task_id, seq)
) WITHOUT ROWID;
";

/// The open states (QUEUED, RUNNING) as SQL literals.
const OPEN_STATES: &str = "state IN (1, 2)";

/// The rowid of the `open_from` mark's task (0 without one): no task before it is open.
const OPEN_FROM: &str = "COALESCE((SELECT t.rowid FROM tasks t JOIN task_store_marks m
     ON t.task_id = m.task_id WHERE m.name = 'open_from'), 0)";
const _: () = assert!(TaskState::Queued as i32 == 1 && TaskState::Running as i32 == 2);

const RECORD_COLUMNS: &str =
    "task_id, state, task_description, files, workspace, run_id, capabilities,
        programmer_id, created_ms, started_ms, finished_ms, result, dry_run, owner,
        (SELECT COALESCE(MAX(seq), 0) FROM task_events WHERE task_events.task_id = tasks.task_id)";
/// How many columns [`RECORD_COLUMNS`] names (a query may add its own after them).
const RECORD_COLUMN_COUNT: usize = 15;

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn is_open(state: TaskState) -> bool {
    matches!(state, TaskState::Queued | TaskState::Running)
}

impl TaskStore {
    /// Opens (creating if needed) the store at `path` in WAL mode, fails every task a previous
    /// process left QUEUED or RUNNING (error class UNAVAILABLE, message "manager restarted"), and
    /// starts the thread that commits what callers leave queued under load. Durable across a
    /// process crash ([`Durability::ProcessCrash`]); see [`open_with`](Self::open_with).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(path, Durability::ProcessCrash)
    }

    /// [`open`](Self::open) with the given durability. With [`Durability::PowerLoss`] every
    /// commit is synced (SQLite `synchronous = FULL`) and runs on the overflow thread, never on
    /// an async caller's: callers wait for the disk without holding the runtime's thread, and the
    /// writes queued during one sync share the next commit.
    pub fn open_with(path: impl AsRef<Path>, durability: Durability) -> Result<Self, StoreError> {
        let path = path.as_ref();
        let file = StoreFile::shared(path).map_err(|source| StoreError::Open {
            path: path.display().to_string(),
            source,
        })?;
        let connect = |path: &Path| connect(path, durability, &file);
        // The first read takes the file for this process, or finds it taken.
        let in_use = |e: StoreError| match e {
            StoreError::Storage(e) if held_by_another_process(&e) => StoreError::InUse {
                path: path.display().to_string(),
            },
            e => e,
        };
        let mut conn = connect(path).map_err(in_use)?;
        add_columns(&conn)?;
        conn.execute_batch(SCHEMA)?;
        let recovered = recover(&mut conn)?;
        // Checkpoints are the checkpoint thread's job, not the commits'.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        let reader = connect(path)?;
        let pager = Arc::new(Mutex::new(connect(path)?));
        let checkpoints = connect(path)?;
        // It never waits on a lock (see `checkpoint`).
        checkpoints.busy_timeout(Duration::ZERO)?;
        let thread_error =
            |e: std::io::Error| StoreError::Commit(format!("cannot start a thread: {e}"));
        let (overflow, woken) = mpsc::channel::<()>();
        let writes = Arc::new(Writes {
            queue: Mutex::default(),
            conn: Mutex::new(conn),
            commits: AtomicU64::new(0),
            overflow: Mutex::new(Some(overflow)),
            callers_commit: durability == Durability::ProcessCrash,
        });
        let (stop_checkpoints, stopped) = mpsc::channel::<()>();
        let marked = Arc::clone(&writes);
        let retention = Arc::new(Retention {
            ms: AtomicU64::new(0),
            max_tasks: AtomicU64::new(0),
            wal_shrink_above: AtomicU64::new(WAL_SHRINK_ABOVE),
        });
        let kept = Arc::clone(&retention);
        let checkpointer = std::thread::Builder::new()
            .name("task-store-checkpoint".into())
            .spawn(move || checkpoint_until_stopped(checkpoints, &marked, stopped, &kept))
            .map_err(thread_error)?;
        let shared = Arc::clone(&writes);
        let overflow_thread = std::thread::Builder::new()
            .name("task-store".into())
            .spawn(move || {
                while woken.recv().is_ok() {
                    shared.commit_queued(usize::MAX);
                }
            })
            .map_err(thread_error)?;
        Ok(Self {
            writes,
            overflow_thread: Some(overflow_thread),
            stop_checkpoints: Some(stop_checkpoints),
            checkpointer: Some(checkpointer),
            reader: Mutex::new(reader),
            pager,
            recovered,
            retention,
        })
    }

    /// The retention of `manager:` (`task_retention_s`, `task_retention_max_tasks`; 0 is none),
    /// at start-up and when a re-read configuration changes it.
    pub fn retain_as(&self, manager: &crate::config::ManagerConfig) {
        let age = manager.task_retention_s;
        self.keep_finished_for((age > 0).then(|| Duration::from_secs(age)));
        let tasks = manager.task_retention_max_tasks;
        self.keep_at_most((tasks > 0).then_some(tasks));
    }

    /// Keeps finished tasks for `retention` after they ended, then deletes them (see the module
    /// docs, "Retention"); `None` keeps them forever (the default).
    pub fn keep_finished_for(&self, retention: Option<Duration>) {
        let ms = retention.map_or(0, |r| {
            u64::try_from(r.as_millis()).unwrap_or(u64::MAX).max(1)
        });
        self.retention.ms.store(ms, Ordering::Relaxed);
    }

    /// Keeps the records of at most about `tasks` tasks: once more were recorded since the
    /// oldest one kept, the oldest finished ones are deleted whatever their age (unfinished ones
    /// never are), at the retention passes' pace (see the module docs, "Retention"); `None` sets
    /// no cap (the default).
    pub fn keep_at_most(&self, tasks: Option<u64>) {
        let tasks = tasks.map_or(0, |n| n.max(1));
        self.retention.max_tasks.store(tasks, Ordering::Relaxed);
    }

    /// Cuts the WAL file back to nothing once writes quiet down after it grew past `bytes`
    /// (default [`WAL_SHRINK_ABOVE`]; see [`checkpoint`]).
    pub fn shrink_wal_above(&self, bytes: u64) {
        self.retention
            .wal_shrink_above
            .store(bytes, Ordering::Relaxed);
    }

    /// How many unfinished tasks of a previous process [`open`](Self::open) marked FAILED.
    pub fn recovered_on_open(&self) -> usize {
        self.recovered
    }

    /// How many transactions have been committed so far (fewer than writes under load).
    pub fn commits(&self) -> u64 {
        self.writes.commits.load(Ordering::Relaxed)
    }

    fn reader(&self) -> MutexGuard<'_, StoreConn> {
        // A panic while holding the lock left no transaction open: the connection is consistent.
        self.reader.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `op` now (so writes apply in call order, awaited or not) and, with
    /// [`Commit::Now`] if nobody is committing, commits the queue on this thread before returning
    /// (see the module docs); the future answers once `op` is committed.
    fn write<T, Op>(
        &self,
        when: Commit,
        op: Op,
    ) -> impl Future<Output = Result<T, StoreError>> + Send + use<T, Op>
    where
        T: Send + 'static,
        Op: FnMut(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (answer, mut answered) = oneshot::channel();
        let write = Box::new(Queued {
            op,
            out: None,
            answer,
        });
        if self.writes.enqueue(write, when == Commit::Now) {
            self.writes.commit_queued(if self.writes.callers_commit {
                INLINE_BATCHES
            } else {
                0
            });
        }
        // Whoever flushes here commits the queue to its end, normally just this write (or hands
        // it to the overflow thread, when callers commit nothing themselves).
        let flush = (when != Commit::Now).then(|| self.writes.clone());
        async move {
            if let Some(writes) = flush {
                if let Commit::Within(delay) = when {
                    tokio::select! {
                        biased;
                        answer = &mut answered => return answer.map_err(|_| StoreError::Closed)?,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
                // Committed with another write already: a flush now would commit only what was
                // queued after it (another task's record, the open-task mark) in a commit of its
                // own.
                match answered.try_recv() {
                    Ok(answer) => return answer,
                    Err(oneshot::error::TryRecvError::Closed) => return Err(StoreError::Closed),
                    Err(oneshot::error::TryRecvError::Empty) => {}
                }
                writes.flush(if writes.callers_commit { usize::MAX } else { 0 });
            }
            answered.await.map_err(|_| StoreError::Closed)?
        }
    }

    /// Records `task` as QUEUED, or tells that its id is already taken by the same request
    /// (`AlreadyExists`, with the current record) or by a different one (`Conflict`). Queued at
    /// once, like every write: a write queued after it applies after it.
    pub fn insert(
        &self,
        task: &NewTask,
    ) -> impl Future<Output = Result<InsertOutcome, StoreError>> + Send + use<> {
        self.insert_when(Commit::Now, task)
    }

    /// [`insert`](Self::insert) for a task whose id this process made up (so it cannot be taken):
    /// queued now, committed with the next write of any task (its own placement's
    /// [`set_running`](Self::set_running), or its first event: a caller learns the id only from
    /// an event journaled after it) or when the future is awaited, whichever comes first. Saves
    /// a lone task one commit of its own.
    pub fn insert_with_next(
        &self,
        task: &NewTask,
    ) -> impl Future<Output = Result<InsertOutcome, StoreError>> + Send + use<> {
        self.insert_when(Commit::WithNext, task)
    }

    fn insert_when(
        &self,
        when: Commit,
        task: &NewTask,
    ) -> impl Future<Output = Result<InsertOutcome, StoreError>> + Send + use<> {
        let task = task.clone();
        self.write(when, move |conn| insert(conn, &task))
    }

    /// Marks the task RUNNING on `programmer_id` in dispatch attempt `dispatch_attempt` (again
    /// after a reroute: the programmer changes, `started_ms` keeps the first assignment), with
    /// `unsent_before` of its leg's earlier attempts never sent ([`Placed::unsent_before`]). Returns
    /// false, changing nothing, when the task is already finished. Queued at once, committed `when`
    /// says (a dry run's placement need not be durable before its Execute is sent: with the next
    /// write); the caller may leave the answer unawaited; events journaled after it belong to this
    /// attempt.
    pub fn set_running(
        &self,
        when: Commit,
        task_id: &str,
        programmer_id: &str,
        dispatch_attempt: u32,
        unsent_before: u32,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send + 'static {
        let (task_id, programmer_id) = (task_id.to_owned(), programmer_id.to_owned());
        self.write(when, move |conn| {
            let n = conn
                .prepare_cached(
                    "UPDATE tasks SET state = ?1, programmer_id = ?2, dispatch_attempt = ?6,
                         unsent_attempts = ?7,
                         started_ms = CASE WHEN started_ms = 0 THEN ?3 ELSE started_ms END
                     WHERE task_id = ?4 AND state IN (?5, ?1)",
                )?
                .execute(params![
                    TaskState::Running as i32,
                    programmer_id,
                    now_ms(),
                    task_id,
                    TaskState::Queued as i32,
                    dispatch_attempt,
                    unsent_before,
                ])?;
            changed_or_missing(conn, &task_id, n)
        })
    }

    /// Journals one event of a task (see [`Journal`]). The result event also finishes the task's
    /// row ([`finish`](Self::finish)) in the same write, so a crash can never leave a finished
    /// task without its result event, or a journaled result on an unfinished task.
    pub fn append_event(
        &self,
        task_id: &str,
        event: &TaskEvent,
        upstream_seq: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        self.append_event_when(Commit::Now, task_id, event, upstream_seq)
    }

    /// [`append_event`](Self::append_event) committed with the next write, or [`EVENT_DELAY`]
    /// after it is first awaited: for an event nobody waits on yet. A programmer's Assigned and
    /// result a moment later then share one commit, and under load the events of many tasks do.
    pub fn append_event_soon(
        &self,
        task_id: &str,
        event: &TaskEvent,
        upstream_seq: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        let when = Commit::Within(EVENT_DELAY);
        self.append_event_when(when, task_id, event, upstream_seq)
    }

    fn append_event_when(
        &self,
        when: Commit,
        task_id: &str,
        event: &TaskEvent,
        upstream_seq: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        let (task_id, seq, encoded) = (task_id.to_owned(), event.seq, event.encode_to_vec());
        let result = match &event.kind {
            Some(Kind::Result(result)) => Some(result.clone()),
            _ => None,
        };
        self.write(when, move |conn| {
            if let Some(result) = &result {
                check_terminal(result)?;
                finish_row(conn, &task_id, result)?;
            }
            conn.prepare_cached(
                "INSERT OR REPLACE INTO task_events (task_id, seq, attempt, upstream_seq, event)
                 VALUES (?1, ?2, (SELECT dispatch_attempt FROM tasks WHERE task_id = ?1), ?3, ?4)",
            )?
            .execute(params![task_id, seq as i64, upstream_seq as i64, encoded])?;
            Ok(())
        })
    }

    /// Every journaled event of `task_id`, in seq order (followers read pages:
    /// [`events_after`](Self::events_after)).
    pub fn events(&self, task_id: &str) -> Result<Vec<TaskEvent>, StoreError> {
        events_page(&self.reader(), task_id, 0, None)
    }

    /// The latest journaled events of `task_id`, at most `limit` of them and `max_bytes` (as
    /// encoded; the latest one whatever its size), in seq order: what a restarting manager keeps
    /// in memory for a task it resumes (its followers read the older ones back). Rows are read
    /// newest first and no further than the bounds, so a chatty task costs the restart no more
    /// than its log will keep.
    pub fn latest_events(
        &self,
        task_id: &str,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<TaskEvent>, StoreError> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(
            "SELECT event FROM task_events WHERE task_id = ?1 ORDER BY seq DESC LIMIT ?2",
        )?;
        let mut rows = stmt.query(params![task_id, i64::try_from(limit).unwrap_or(i64::MAX)])?;
        let (mut events, mut bytes) = (Vec::new(), 0);
        while let Some(row) = rows.next()? {
            let encoded: Vec<u8> = row.get(0)?;
            bytes += encoded.len();
            if bytes > max_bytes && !events.is_empty() {
                break;
            }
            events.push(decode_event(task_id, &encoded)?);
        }
        events.reverse();
        Ok(events)
    }

    /// The events of `task_id` the manager made itself (not relayed from a programmer: queue
    /// positions, reroutes, escalations), in seq order; only those are decoded.
    pub fn own_events(&self, task_id: &str) -> Result<Vec<TaskEvent>, StoreError> {
        query_events(
            &self.reader(),
            task_id,
            "SELECT event FROM task_events WHERE task_id = ?1 AND upstream_seq = 0 ORDER BY seq",
            params![task_id],
        )
    }

    /// Up to `limit` journaled events of `task_id` with seq > `after_seq`, in seq order. Runs on
    /// the blocking pool.
    pub fn events_after(
        &self,
        task_id: String,
        after_seq: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<TaskEvent>, StoreError>> + Send + 'static {
        let pager = Arc::clone(&self.pager);
        async move {
            tokio::task::spawn_blocking(move || {
                let conn = pager.lock().unwrap_or_else(|e| e.into_inner());
                events_page(&conn, &task_id, after_seq, Some(limit))
            })
            .await
            .map_err(|e| StoreError::Unfinished(format!("reading events: {e}")))?
        }
    }

    /// The latest journaled event of `task_id` (`None` when it has none): one row, read at once.
    pub fn last_event(&self, task_id: &str) -> Result<Option<TaskEvent>, StoreError> {
        let conn = self.reader();
        let bytes = conn
            .prepare_cached(
                "SELECT event FROM task_events WHERE task_id = ?1 ORDER BY seq DESC LIMIT 1",
            )?
            .query_row(params![task_id], |r| r.get::<_, Vec<u8>>(0))
            .optional()?;
        bytes.map(|b| decode_event(task_id, &b)).transpose()
    }

    /// The tasks a previous process left QUEUED or RUNNING, oldest first, with what resuming
    /// them needs.
    pub fn unfinished(&self) -> Result<Vec<Unfinished>, StoreError> {
        let conn = self.reader();
        let mut stmt = conn.prepare(&unfinished_query())?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i32>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, u32>(5)?,
                r.get::<_, i64>(6)?,
                r.get::<_, i64>(7)?,
                r.get::<_, u32>(8)?,
                r.get::<_, u32>(9)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (
                task_id,
                request,
                owner,
                state,
                programmer_id,
                attempt,
                created_ms,
                upstream,
                unsent_before,
                lease_s,
            ) = row?;
            let request =
                DispatchRequest::decode(request.as_slice()).map_err(|e| StoreError::Corrupt {
                    task_id: task_id.clone(),
                    field: "request",
                    detail: e.to_string(),
                })?;
            let placed = (state == TaskState::Running as i32 && attempt > 0).then(|| Placed {
                programmer_id,
                dispatch_attempt: attempt,
                unsent_before,
                upstream_seq: u64::try_from(upstream).unwrap_or(0),
            });
            out.push(Unfinished {
                task_id,
                request,
                owner,
                created_ms,
                placed,
                lease_s,
            });
        }
        Ok(out)
    }

    /// A page of the task records `owner` may see (all when `None`), newest first, filtered by
    /// `run_id` (when not empty) and `states` (when not empty), and the token of the next page
    /// (empty after the last one). A page examines at most [`LIST_SCAN_ROWS`] records (of the
    /// owner's only, when one is named: `tasks_by_owner`): when the
    /// filter matches few of them, the page is shorter than `page_size` (even empty) and its token
    /// goes on below them, so no call reads a whole store. A page also ends early rather than
    /// hold more than [`LIST_PAGE_BYTES`]. Runs on the blocking pool.
    pub async fn list(
        &self,
        owner: Option<String>,
        run_id: String,
        states: Vec<i32>,
        page_size: usize,
        page_token: String,
    ) -> Result<(Vec<TaskRecord>, String), StoreError> {
        let pager = Arc::clone(&self.pager);
        tokio::task::spawn_blocking(move || {
            let conn = pager.lock().unwrap_or_else(|e| e.into_inner());
            let filter = (owner.as_deref(), run_id.as_str(), states.as_slice());
            list_page(&conn, filter, page_size, &page_token, LIST_SCAN_ROWS)
        })
        .await
        .map_err(|e| StoreError::Unfinished(format!("listing tasks: {e}")))?
    }

    /// Stores the task's final result; the state becomes `result.status`, which must be terminal.
    /// Returns false, changing nothing, when the task already has a result (the first one wins).
    pub async fn finish(&self, task_id: &str, result: &TaskResult) -> Result<bool, StoreError> {
        check_terminal(result)?;
        let (task_id, result) = (task_id.to_owned(), result.clone());
        self.write(Commit::Now, move |conn| finish_row(conn, &task_id, &result))
            .await
    }

    /// The task's record, or `None` for an unknown id.
    pub fn get(&self, task_id: &str) -> Result<Option<TaskRecord>, StoreError> {
        read_record(&self.reader(), task_id)
    }

    /// The record of task `task_id` if it was dispatched with `fingerprint` (the same request
    /// by the same owner, see [`fingerprint`]); `None` for an unknown id or another request.
    pub fn get_same(
        &self,
        task_id: &str,
        fingerprint: &str,
    ) -> Result<Option<TaskRecord>, StoreError> {
        let reader = self.reader();
        match fingerprint_of(&reader, task_id)? {
            Some(f) if f == fingerprint => read_record(&reader, task_id),
            _ => Ok(None),
        }
    }
}

/// Most task records one [`TaskStore::list`] page examines.
pub const LIST_SCAN_ROWS: i64 = 5_000;

/// Most bytes of records one [`TaskStore::list`] page holds (unless its first record alone is
/// larger): a record carries its result, diff included (up to 1 MiB), and gRPC clients refuse
/// messages over 4 MiB by default, so a page of a few large results would reach no client.
pub const LIST_PAGE_BYTES: usize = 2 * 1024 * 1024;

/// The rowids of owner `?2`'s records below `?1`, newest first, at most `?3` (`tasks_by_owner`).
const OWNED_BELOW: &str = "SELECT rowid FROM tasks WHERE owner = ?2 AND owner != '' AND rowid < ?1
     ORDER BY rowid DESC LIMIT ?3";

/// One page of [`TaskStore::list`]: of the records examined — the `scan_rows` below the token
/// (the newest ones without a token) of `owner`'s when one is named (through `tasks_by_owner`),
/// of all otherwise — those that match `(owner, run_id, states)`.
fn list_page(
    conn: &Connection,
    (owner, run_id, states): (Option<&str>, &str, &[i32]),
    page_size: usize,
    page_token: &str,
    scan_rows: i64,
) -> Result<(Vec<TaskRecord>, String), StoreError> {
    let before = match page_token {
        "" => conn.query_row("SELECT COALESCE(MAX(rowid), 0) + 1 FROM tasks", [], |r| {
            r.get::<_, i64>(0)
        })?,
        // Tokens are rowids, all positive.
        token => token
            .parse::<i64>()
            .ok()
            .filter(|rowid| *rowid > 0)
            .ok_or_else(|| StoreError::BadPageToken(crate::workspace::shortened(page_token)))?,
    };
    // An owner's records are found through `tasks_by_owner`, which holds every owner but ''.
    let owned = owner.filter(|o| !o.is_empty());
    // The lowest rowid examined: the window's floor, or the owner's `scan_rows`-th record below
    // the token (0 when they have fewer).
    let floor = match owned {
        None => before.saturating_sub(scan_rows),
        Some(owner) => conn
            .prepare_cached(&format!(
                "SELECT COALESCE(MIN(rowid), 0), COUNT(*) FROM ({OWNED_BELOW})"
            ))?
            .query_row(params![before, owner, scan_rows], |r| {
                let (lowest, examined) = (r.get::<_, i64>(0)?, r.get::<_, i64>(1)?);
                Ok(if examined < scan_rows { 0 } else { lowest })
            })?,
    };
    let states_json = serde_json::to_string(states).unwrap_or_else(|_| "[]".into());
    // Spelled out (no `?2 IS NULL OR …`, and `owner != ''`) so SQLite uses `tasks_by_owner`.
    let of_owner = match (owner, owned) {
        (_, Some(_)) => "owner = ?2 AND owner != ''",
        (Some(_), None) => "owner = ?2",
        (None, _) => "?2 IS NULL",
    };
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {RECORD_COLUMNS}, rowid FROM tasks
         WHERE rowid < ?1 AND rowid >= ?6 AND {of_owner}
           AND (?3 = '' OR run_id = ?3)
           AND (?4 = '[]' OR state IN (SELECT value FROM json_each(?4)))
         ORDER BY rowid DESC LIMIT ?5"
    ))?;
    let rows = stmt.query_map(
        params![
            before,
            owner,
            run_id,
            states_json,
            (page_size + 1) as i64,
            floor
        ],
        |r| Ok((RawRow::from_row(r)?, r.get::<_, i64>(RECORD_COLUMN_COUNT)?)),
    )?;
    let (mut records, mut bytes, mut ended_early) = (Vec::new(), 0, false);
    for row in rows {
        let (raw, rowid) = row?;
        let record = raw.into_record()?;
        bytes += record.encoded_len();
        // Past page_size, or past the page's bytes (a record alone may be larger): the page
        // ends before this record, which starts the next one.
        if records.len() == page_size || (bytes > LIST_PAGE_BYTES && !records.is_empty()) {
            ended_early = true;
            break;
        }
        records.push((record, rowid));
    }
    let next = if ended_early {
        records
            .last()
            .map(|(_, rowid)| rowid.to_string())
            .unwrap_or_default()
    } else {
        // What was examined is read to its end: go on below it if anything is there.
        let more: bool = conn.query_row(
            &format!("SELECT EXISTS(SELECT 1 FROM tasks WHERE rowid < ?1 AND {of_owner})"),
            params![floor, owner],
            |r| r.get(0),
        )?;
        if more {
            floor.to_string()
        } else {
            String::new()
        }
    };
    Ok((records.into_iter().map(|(r, _)| r).collect(), next))
}

/// The events of `task_id` with seq > `after_seq`, in seq order, at most `limit` (all without).
fn events_page(
    conn: &Connection,
    task_id: &str,
    after_seq: u64,
    limit: Option<usize>,
) -> Result<Vec<TaskEvent>, StoreError> {
    // SQLite reads a negative LIMIT as none.
    let limit = limit.map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX));
    let after = i64::try_from(after_seq).unwrap_or(i64::MAX);
    query_events(
        conn,
        task_id,
        "SELECT event FROM task_events WHERE task_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
        params![task_id, after, limit],
    )
}

/// The events of `task_id` that `sql` selects (one `event` column), decoded in the order read.
fn query_events(
    conn: &Connection,
    task_id: &str,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<TaskEvent>, StoreError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map(params, |r| r.get::<_, Vec<u8>>(0))?;
    rows.map(|row| decode_event(task_id, &row?)).collect()
}

fn decode_event(task_id: &str, bytes: &[u8]) -> Result<TaskEvent, StoreError> {
    TaskEvent::decode(bytes).map_err(|e| StoreError::Corrupt {
        task_id: task_id.to_owned(),
        field: "event",
        detail: e.to_string(),
    })
}

impl Drop for TaskStore {
    /// Lets the overflow thread finish the writes already queued, so a stopping manager loses
    /// none, then checkpoints a last time.
    fn drop(&mut self) {
        drop(self.writes.overflow().take());
        if let Some(overflow) = self.overflow_thread.take() {
            let _ = overflow.join();
        }
        // Writes queued to go with a next one that never came.
        self.writes.flush(usize::MAX);
        drop(self.stop_checkpoints.take());
        if let Some(checkpointer) = self.checkpointer.take() {
            let _ = checkpointer.join();
        }
    }
}

/// The checkpoint thread: every [`CHECKPOINT_EVERY`], and a last time when the store closes,
/// moves the `open_from` mark forward ([`advance_open_mark`]), deletes expired finished tasks
/// when a retention is set ([`forget_expired`]: every tick while it finds some, else once per
/// retention, at most a minute apart), and checkpoints the WAL and starts it over
/// ([`checkpoint`]: it never waits for a reader, and holds up no caller's thread).
fn checkpoint_until_stopped(
    conn: StoreConn,
    writes: &Writes,
    stopped: mpsc::Receiver<()>,
    retention: &Retention,
) {
    let mut mark = None;
    let mut passes = PassSchedule::starting(std::time::Instant::now());
    // The store's commits at the last checkpoint.
    let mut commits_then = writes.commits.load(Ordering::Relaxed);
    let mut wal = WalTicks::default();
    loop {
        let closing = !matches!(
            stopped.recv_timeout(CHECKPOINT_EVERY),
            Err(mpsc::RecvTimeoutError::Timeout)
        );
        match advance_open_mark(&conn, writes, mark.take()) {
            Ok(moved) => mark = moved,
            Err(e) => tracing::warn!("task store: open-task mark not moved (retried later): {e}"),
        }
        let retention_ms = retention.ms.load(Ordering::Relaxed);
        let max_tasks = retention.max_tasks.load(Ordering::Relaxed);
        let now = std::time::Instant::now();
        let aged = retention_ms > 0 && now >= passes.next_forget;
        let over_cap = max_tasks > 0
            && now >= passes.next_cap
            && records_span(&conn).is_ok_and(|span| span > max_tasks);
        if !closing && (aged || over_cap) {
            let cutoff = match retention_ms {
                0 => 0,
                ms => now_ms().saturating_sub(i64::try_from(ms).unwrap_or(i64::MAX)),
            };
            let keep_newest = match max_tasks {
                0 => i64::MAX,
                n => i64::try_from(n).unwrap_or(i64::MAX),
            };
            let idle =
                Duration::from_millis(retention_ms).clamp(CHECKPOINT_EVERY, FORGET_IDLE_EVERY);
            let found = match forget_expired(writes, cutoff, keep_newest) {
                Ok(Forgotten {
                    tasks: 0,
                    events: 0,
                }) => false,
                Ok(forgotten) => {
                    tracing::debug!(
                        tasks = forgotten.tasks,
                        events = forgotten.events,
                        "task store: finished tasks past their retention deleted"
                    );
                    true
                }
                Err(e) => {
                    tracing::warn!("task store: expired tasks not deleted (retried later): {e}");
                    false
                }
            };
            passes.after(now, found, over_cap, idle);
        }
        if closing {
            // The store's last flush has run: nothing else would commit the mark.
            writes.flush(usize::MAX);
        }
        let shrink_above = retention.wal_shrink_above.load(Ordering::Relaxed);
        let commits = writes.commits.load(Ordering::Relaxed);
        let recent = commits.saturating_sub(std::mem::replace(&mut commits_then, commits));
        if closing {
            // The last checkpoint leaves the WAL started over.
            wal.start_over_next();
        }
        if let Err(e) = checkpoint(&conn, writes, shrink_above, recent, &mut wal) {
            tracing::warn!("task store: checkpoint failed (retried later): {e}");
        }
        if closing {
            return;
        }
    }
}

/// Folds the WAL back into the database and, at every [`RESTART_EVERY_TICKS`]th tick that
/// found commits, starts it over.
///
/// A passive checkpoint copies frames without holding up a write, but the WAL starts over only
/// after one that caught up with the last frame, which under steady writes none does: the WAL
/// grew for as long as they went on (about 95 MB a second under `manager_hop`'s 32 callers, each
/// page a fresh allocation of the filesystem's, the file never shrinking). So the bulk is copied
/// passively, then a RESTART checkpoint copies the frames committed meanwhile and starts the WAL
/// over, with the committer's role held ([`Writes::as_committer`]): a caller meanwhile only queues
/// its write (no thread of theirs waits) and it is committed right after. A reader still on the
/// WAL makes the RESTART give up at once (busy, retried at the next tick), since this connection
/// never waits on a lock.
///
/// Every dispatch waits while the role is held (`pas_task_store_checkpoint_hold_seconds`), so as
/// little as can be is left to it: more PASSIVE checkpoints first ([`catch_up`]), then the WAL
/// and the database file flushed to disk from this thread ([`StoreFile::sync`]), so that the
/// RESTART's own flushes (SQLite flushes the WAL before it copies and the database before the
/// WAL starts over) find the last moment's writes, not a second's. On an ext4 disk under
/// bench-peers' 32 callers that halved the median hold (18–28 ms to 8–12 ms; BENCHMARKS.md,
/// "Peers: the checkpoint's hold"); on tmpfs a flush costs nothing. Only every
/// [`RESTART_EVERY_TICKS`]th tick holds the role at all; the others copy passively.
///
/// While writes go on, the WAL file keeps the size of the busiest interval between two
/// start-overs (~200 MB a second at 5,000 dispatches a second), reused from its start each time:
/// SQLite's own limit (`journal_size_limit`) would truncate it in the first commit after the WAL
/// starts over, on a caller's thread, and that commit then took up to 49 ms
/// (`benches/task_store.rs`, tmpfs) against 0.4–7 ms; nor is each page of a fresh file allocated
/// again (~5 % of the manager's CPU at that load). Once the writes quiet down — a WAL file over
/// `shrink_above` and less than 1/16 of that written since the last checkpoint — this thread cuts
/// it back to nothing (a TRUNCATE checkpoint, the committer's role held like the RESTART), so a
/// burst does not leave its size on disk for as long as the manager runs; at that pace the file
/// cannot grow past `shrink_above` again within a tick, so cuts never follow each other.
fn checkpoint(
    conn: &StoreConn,
    writes: &Writes,
    shrink_above: u64,
    commits: u64,
    wal: &mut WalTicks,
) -> rusqlite::Result<()> {
    // The WAL's frames: since the WAL last started over (`start_wal_over`, or SQLite itself for
    // the next writer once a checkpoint copied every frame and nobody read the WAL).
    let commits_before = writes.commits.load(Ordering::Relaxed);
    let frames = passive_checkpoint(conn)?;
    // No commit while it copied: it took every frame (a commit that landed between the count and
    // the copy's start is taken too, and only makes this look busier than it was).
    let quiet = writes.commits.load(Ordering::Relaxed) == commits_before;
    // Fewer than at the last tick: it started over meanwhile.
    let fresh = match frames - std::mem::replace(&mut wal.frames, frames) {
        n if n < 0 => {
            wal.since_restart = 0;
            frames
        }
        n => n,
    };
    let wal_len = std::fs::metadata(&conn.file.wal).map_or(0, |m| m.len());
    let written = match commits {
        0 => 0,
        // Each frame is a page and its 24-byte header.
        _ => {
            let page = conn.query_row("PRAGMA page_size", [], |r| r.get::<_, i64>(0))?;
            u64::try_from(fresh.saturating_mul(page + 24)).unwrap_or(0)
        }
    };
    let shrink = wal_len > shrink_above && written < shrink_above / 16;
    // Without a commit since the last tick the frames are those of the WAL's start-over
    // (`start_wal_over`) or of a RESTART that found a reader: nothing worth a checkpoint, which
    // would start the WAL over again every tick of an idle store.
    if (frames == 0 || commits == 0) && !shrink {
        return Ok(());
    }
    if !wal.start_over_now(quiet) && !shrink {
        // The passive copy above keeps the database current; the WAL grows on until a later tick.
        return Ok(());
    }
    let mode = if shrink { "TRUNCATE" } else { "RESTART" };
    let started = std::time::Instant::now();
    catch_up(conn, frames)?;
    if let Err(e) = conn.file.sync() {
        tracing::debug!("task store: files not flushed ahead of the checkpoint (it does): {e}");
    }
    let busy = writes
        .as_committer(|| {
            let held = std::time::Instant::now();
            let restarted = conn
                .query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
                    r.get::<_, i64>(0)
                })
                .and_then(|busy| {
                    if busy == 0 {
                        start_wal_over(conn)?;
                    }
                    Ok(busy)
                });
            metrics::histogram!("pas_task_store_checkpoint_hold_seconds")
                .record(held.elapsed().as_secs_f64());
            restarted
        })
        .transpose()?;
    if busy == Some(0) {
        wal.started_over();
    }
    if shrink && busy == Some(0) {
        tracing::info!(
            wal_mib = wal_len >> 20,
            took_ms = started.elapsed().as_millis() as u64,
            "task store: the WAL file cut back after a busy spell"
        );
    }
    Ok(())
}

/// A PASSIVE checkpoint: copies what it can of the WAL into the database without holding up a
/// write (at `synchronous = NORMAL` or `FULL` SQLite flushes the WAL to disk first). Returns the
/// WAL's frames when it started.
fn passive_checkpoint(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(1))
}

/// Most PASSIVE checkpoints [`catch_up`] runs after a tick's first one.
const CATCH_UP_PASSES: usize = 3;

/// Fewer new frames than this since the previous PASSIVE checkpoint: caught up (a few
/// milliseconds of a dispatch flood's commits, about 1 MiB of 4 KiB pages).
const CAUGHT_UP_FRAMES: i64 = 256;

/// Under steady writes the WAL starts over at every this many checkpoint ticks that found
/// commits (and when the store closes, and whenever a burst's WAL file is cut back), not at
/// each: every start-over holds every dispatch for the RESTART within the committer's role,
/// three flushes to disk however few frames are left to copy (~2 ms each on this VM's idle ext4
/// disk, 4–15 ms under a dispatch flood's writes); under bench-peers' 32 callers the dispatches
/// that met a hold were 13–40 % of the slowest 1 % in two runs. A tick with no commit during its
/// passive copy still starts it over at once ([`WalTicks::start_over_now`]). The price: under
/// steady writes the WAL file keeps the size of three ticks' writes instead of one's (83–126 MiB
/// against 31–61 MiB under bench-peers' 32 callers here), still cut back once writes quiet down.
/// BENCHMARKS.md, "Peers: fewer holds".
pub const RESTART_EVERY_TICKS: u32 = 3;

/// What the checkpoint thread knows of the WAL between ticks ([`checkpoint`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct WalTicks {
    /// Ticks with commits since the WAL last started over.
    since_restart: u32,
    /// The WAL's frames at the last tick (to tell what that tick's writes added).
    frames: i64,
}

impl WalTicks {
    /// Counts a tick with commits, and says whether it starts the WAL over: every
    /// [`RESTART_EVERY_TICKS`]th, or at once when no commit came while the tick's passive copy
    /// ran (`quiet`): that copy then took every frame, so little is left for the committer's
    /// role, and, left alone, SQLite would start the WAL over in the next caller's commit,
    /// flushing its header on that caller's thread ([`start_wal_over`]). Under steady writes
    /// commits come during every copy.
    fn start_over_now(&mut self, quiet: bool) -> bool {
        self.since_restart = self.since_restart.saturating_add(1);
        quiet || self.since_restart >= RESTART_EVERY_TICKS
    }

    /// Makes the next tick with commits start the WAL over, whatever the count.
    fn start_over_next(&mut self) {
        self.since_restart = RESTART_EVERY_TICKS;
    }

    /// The WAL started over: its one frame is [`start_wal_over`]'s.
    fn started_over(&mut self) {
        *self = Self {
            since_restart: 0,
            frames: 1,
        };
    }
}

/// Runs PASSIVE checkpoints, with no role held, until one finds few frames beyond the previous
/// one's (`frames`: the first one's), at most [`CATCH_UP_PASSES`]. Under a dispatch flood the
/// tick's first copy takes ~0.1 s (it flushes the second's WAL, tens of MB, then copies its
/// pages), and the RESTART that follows within the committer's role ([`checkpoint`]) copied
/// and flushed all that the callers committed meanwhile, every dispatch waiting for it; each
/// pass here leaves the next one less, so the role finds the last few milliseconds' worth.
/// Returns how many passes it ran.
fn catch_up(conn: &Connection, mut frames: i64) -> rusqlite::Result<usize> {
    for pass in 1..=CATCH_UP_PASSES {
        let now = passive_checkpoint(conn)?;
        // Fewer frames than before: the WAL started over meanwhile (SQLite does it for the
        // next writer once a checkpoint copied every frame and nobody reads the WAL).
        let fresh = now - std::mem::replace(&mut frames, now);
        if fresh < CAUGHT_UP_FRAMES {
            return Ok(pass);
        }
    }
    Ok(CATCH_UP_PASSES)
}

/// Starts the WAL over here, right after a checkpoint that emptied it, with the committer's role
/// still held: a commit that writes the first frame of a WAL also writes its header and, at
/// `synchronous = NORMAL`, flushes it to disk. Left to the next writer, that flush ran on the
/// manager's runtime thread once a checkpoint interval (0.2 ms on this VM's ext4 disk, several
/// on a network volume), holding every dispatch; here it costs a rewrite of page 1 as it is.
fn start_wal_over(conn: &Connection) -> rusqlite::Result<()> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    conn.pragma_update(None, "user_version", version)
}

/// Default of [`TaskStore::shrink_wal_above`]: a WAL file over this is cut back once writes
/// quiet down (see [`checkpoint`]). A few seconds of a dispatch flood; far above an hour of
/// real tasks.
pub const WAL_SHRINK_ABOVE: u64 = 64 << 20;

/// Most records a retention pass looks at (the oldest ones).
pub const FORGET_SCAN_ROWS: i64 = 2_000;

/// Most tasks a retention pass deletes (one transaction: a write queued meanwhile waits for it).
pub const FORGET_MAX_TASKS: usize = 50;

/// A retention pass deletes no further task once it has deleted this many events.
pub const FORGET_MAX_EVENTS: u64 = 1_000;

/// Most retention passes per tick of the checkpoint thread (so at most
/// `FORGET_PASSES × FORGET_MAX_TASKS` tasks deleted a second).
const FORGET_PASSES: usize = 40;

/// Longest pause between retention passes that found nothing to delete.
const FORGET_IDLE_EVERY: Duration = Duration::from_secs(60);

/// What retention passes deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Forgotten {
    tasks: usize,
    events: u64,
}

/// Up to [`FORGET_PASSES`] retention passes ([`forget_finished`]) for tasks that ended before
/// `cutoff_ms`, each a write of its own that this thread commits itself: a write a caller queues
/// meanwhile is committed after it by this thread, so the caller's thread (the manager's one
/// runtime thread) never waits on SQLite's write lock for it, as it would for a transaction on
/// another connection. Stops at the first pass that finds no more to delete.
fn forget_expired(
    writes: &Writes,
    cutoff_ms: i64,
    keep_newest: i64,
) -> Result<Forgotten, StoreError> {
    let mut total = Forgotten::default();
    for _ in 0..FORGET_PASSES {
        let (answer, answered) = oneshot::channel();
        let pass = Queued {
            op: move |conn: &Connection| {
                forget_finished(
                    conn,
                    cutoff_ms,
                    keep_newest,
                    FORGET_SCAN_ROWS,
                    FORGET_MAX_TASKS,
                    FORGET_MAX_EVENTS,
                )
            },
            out: None,
            answer,
        };
        writes.enqueue(Box::new(pass), false);
        // Commits it here unless a caller is committing (it then goes in the caller's next batch).
        writes.flush(usize::MAX);
        let pass = answered.blocking_recv().map_err(|_| StoreError::Closed)??;
        total.tasks += pass.tasks;
        total.events += pass.events;
        if pass.tasks < FORGET_MAX_TASKS && pass.events < FORGET_MAX_EVENTS {
            break;
        }
    }
    Ok(total)
}

/// One retention pass, inside the batch's transaction: among the oldest `scan_rows` records, the
/// finished tasks that ended before `cutoff_ms` (Unix milliseconds), or that were recorded before
/// the newest `keep_newest` records, are deleted, at most `max_tasks`, with their events, at most about `max_events` in all. A task's events go oldest
/// first, its record with its last event: a task with more events than a pass deletes is deleted
/// over several passes (meanwhile a replay of it from seq 0 finds its first events gone), and its
/// id is never free while events of it remain. Runs again from the same state with the same
/// outcome (a write may be run twice, see [`commit_batch`]).
///
/// A deleted task may be the `open_from` mark's: the mark then names no task, and a restart
/// searches the records from the first (all of them still there are after the deleted ones).
fn forget_finished(
    conn: &Connection,
    cutoff_ms: i64,
    keep_newest: i64,
    scan_rows: i64,
    max_tasks: usize,
    max_events: u64,
) -> Result<Forgotten, StoreError> {
    let expired: Vec<String> = conn
        .prepare_cached(&format!(
            "SELECT task_id FROM
               (SELECT rowid AS r, task_id, state, finished_ms FROM tasks ORDER BY rowid LIMIT ?1)
             WHERE NOT ({OPEN_STATES}) AND finished_ms > 0
               AND (finished_ms < ?2 OR r <= (SELECT MAX(rowid) FROM tasks) - ?4)
             LIMIT ?3"
        ))?
        .query_map(
            params![scan_rows, cutoff_ms, max_tasks as i64, keep_newest],
            |r| r.get(0),
        )?
        .collect::<rusqlite::Result<_>>()?;
    let mut done = Forgotten::default();
    for task_id in &expired {
        let budget = max_events.saturating_sub(done.events).max(1);
        let deleted = conn
            .prepare_cached(
                "DELETE FROM task_events WHERE task_id = ?1 AND seq IN
                   (SELECT seq FROM task_events WHERE task_id = ?1 ORDER BY seq LIMIT ?2)",
            )?
            .execute(params![task_id, i64::try_from(budget).unwrap_or(i64::MAX)])?
            as u64;
        done.events += deleted;
        let more = deleted == budget
            && conn
                .prepare_cached("SELECT EXISTS(SELECT 1 FROM task_events WHERE task_id = ?1)")?
                .query_row(params![task_id], |r| r.get::<_, bool>(0))?;
        if more {
            break;
        }
        conn.prepare_cached("DELETE FROM tasks WHERE task_id = ?1")?
            .execute(params![task_id])?;
        done.tasks += 1;
        if done.events >= max_events {
            break;
        }
    }
    Ok(done)
}

/// When the checkpoint thread next runs retention passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PassSchedule {
    /// For age: at once while passes find tasks, else after an idle pause.
    next_forget: std::time::Instant,
    /// When the cap is next compared with the records' span.
    next_cap: std::time::Instant,
}

impl PassSchedule {
    fn starting(now: std::time::Instant) -> Self {
        Self {
            next_forget: now,
            next_cap: now,
        }
    }

    /// After passes at `now` that `found` tasks to delete or not, run because of age or
    /// because the records were `over_cap`. Only passes that found nothing while over the cap
    /// put its check off (the oldest records are then of unfinished tasks); a pass run for age
    /// alone does not, or a store filling up right after one would wait an idle pause before
    /// the cap is looked at again.
    fn after(&mut self, now: std::time::Instant, found: bool, over_cap: bool, idle: Duration) {
        if found {
            *self = Self::starting(now);
            return;
        }
        self.next_forget = now + idle;
        if over_cap {
            self.next_cap = now + FORGET_IDLE_EVERY;
        }
    }
}

/// How many records were made from the oldest one still kept to the newest, both included (a
/// record deleted in between still counts): what [`Retention::max_tasks`] bounds. Two lookups
/// at the ends of the rowid index, however many records there are.
fn records_span(conn: &Connection) -> rusqlite::Result<u64> {
    conn.prepare_cached(
        "SELECT COALESCE((SELECT MAX(rowid) FROM tasks) - (SELECT MIN(rowid) FROM tasks) + 1, 0)",
    )?
    .query_row([], |r| r.get::<_, i64>(0))
    .map(|span| u64::try_from(span).unwrap_or(0))
}

/// Moves the `open_from` mark (see the schema) to the oldest open task, or to the newest task
/// when none is open, reading from the mark `last` (the stored one when `None`): what it reads
/// is one snapshot, so a task recorded after it lies after the newest task it saw. The mark only
/// moves forward, so every task is passed over about once however long the store lives. The
/// new mark is queued to be committed with the next write of any task (a stale mark is only
/// slower at a restart, never wrong); returns it.
fn advance_open_mark(
    conn: &Connection,
    writes: &Writes,
    last: Option<String>,
) -> Result<Option<String>, StoreError> {
    let mark: Option<String> = conn
        .prepare_cached(&format!(
            "SELECT COALESCE(
                 (SELECT task_id FROM tasks
                   WHERE rowid >= COALESCE((SELECT rowid FROM tasks WHERE task_id = ?1), {OPEN_FROM})
                     AND {OPEN_STATES}
                   ORDER BY rowid LIMIT 1),
                 (SELECT task_id FROM tasks ORDER BY rowid DESC LIMIT 1))"
        ))?
        .query_row(params![last], |r| r.get(0))?;
    if let Some(task_id) = mark.as_ref().filter(|&m| Some(m) != last.as_ref()) {
        let (answer, _unheard) = oneshot::channel();
        let task_id = task_id.clone();
        let write = Queued {
            op: move |conn: &Connection| -> Result<(), StoreError> {
                conn.prepare_cached(
                    "INSERT OR REPLACE INTO task_store_marks (name, task_id) VALUES ('open_from', ?1)",
                )?
                .execute(params![task_id])?;
                Ok(())
            },
            out: None,
            answer,
        };
        writes.enqueue(Box::new(write), false);
    }
    Ok(mark.or(last))
}

/// Stores written by earlier versions lack later columns: add them (rows keep their defaults;
/// a row without a request cannot be resumed after a restart).
fn add_columns(conn: &Connection) -> Result<(), StoreError> {
    let has_table = conn
        .prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'tasks'")?
        .exists([])?;
    if !has_table {
        return Ok(());
    }
    for (column, definition) in [
        ("owner", "TEXT NOT NULL DEFAULT ''"),
        ("request", "BLOB"),
        ("dispatch_attempt", "INTEGER NOT NULL DEFAULT 0"),
        ("unsent_attempts", "INTEGER NOT NULL DEFAULT 0"),
        ("lease_s", "INTEGER NOT NULL DEFAULT 0"),
    ] {
        let exists = conn
            .prepare("SELECT 1 FROM pragma_table_info('tasks') WHERE name = ?1")?
            .exists([column])?;
        if !exists {
            conn.execute_batch(&format!(
                "ALTER TABLE tasks ADD COLUMN {column} {definition}"
            ))?;
        }
    }
    Ok(())
}

/// The SQLite VFS every connection to a store's file opens it with: SQLite's own `unix-excl`,
/// which takes a process-wide exclusive lock on the file at the first read and keeps the WAL's
/// index in this process's heap instead of a shared `-shm` file. The store's connections (all in
/// the manager's process) still read while one commits, but a transaction no longer takes and
/// releases `fcntl` locks on the shared index: about 5 µs less per commit, a quarter of a lone
/// dispatch's two commits (BENCHMARKS.md, "Hot path, part 12"). A second process (another
/// manager on the same data dir, or a `sqlite3` shell) cannot open the file while a manager
/// has it: [`StoreError::InUse`]. The budget ledger opens its file with it too, for the same
/// reasons (`BudgetError::InUse`).
pub const STORE_VFS: &str = "unix-excl";

/// Whether `e`, from the first read of a file opened with [`STORE_VFS`], says another process
/// holds that file (it stayed busy for the connection's whole busy timeout).
pub fn held_by_another_process(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == ErrorCode::DatabaseBusy)
}

/// A connection to the store's file as each of its connections is set up, holding `file`.
fn connect(
    path: &Path,
    durability: Durability,
    file: &Arc<StoreFile>,
) -> Result<StoreConn, StoreError> {
    Ok(StoreConn {
        conn: open_connection(path, durability)?,
        file: Arc::clone(file),
    })
}

/// A connection to the file at `path` set up as the store's are, on its own (a tool's view).
fn open_connection(path: &Path, durability: Durability) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags_and_vfs(path, OpenFlags::default(), STORE_VFS)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", durability.sqlite_synchronous())?;
    Ok(conn)
}

/// The store's own handle on its database file, beside SQLite's, so the checkpoint thread can
/// flush the file to disk before it takes the committer's role ([`StoreFile::sync`]).
///
/// SQLite holds the file's `fcntl` lock ([`STORE_VFS`]), and closing *any* descriptor of a file
/// drops every such lock this process holds on it: so this handle is opened once per file and
/// process ([`StoreFile::shared`]), before the first connection, and closed only after the last
/// one ([`StoreConn`] holds it and drops its connection first).
#[derive(Debug)]
struct StoreFile {
    /// `None` only while it closes ([`Drop`]).
    db: Option<std::fs::File>,
    /// The WAL file's path (it carries no lock: opened and closed at each flush; its size is read
    /// at each checkpoint).
    wal: std::path::PathBuf,
    /// The database file's path, its directory resolved: its key in [`OPEN_STORE_FILES`].
    key: std::path::PathBuf,
}

/// Every [`StoreFile`] of this process, by key; an entry leaves once its handle is closed.
static OPEN_STORE_FILES: Mutex<Vec<(std::path::PathBuf, std::sync::Weak<StoreFile>)>> =
    Mutex::new(Vec::new());

impl StoreFile {
    /// The process's handle on the file at `path`: the one already open (a second store on the
    /// same file in this process; closing a second descriptor would drop the first one's lock),
    /// else a new one. A handle still closing is waited for, so its close cannot drop the lock
    /// of the connections that a new handle is opened for.
    fn shared(path: &Path) -> std::io::Result<Arc<Self>> {
        // The file may not exist yet: its directory, resolved, and its name.
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.canonicalize()?,
            _ => std::env::current_dir()?,
        };
        let key = dir.join(path.file_name().unwrap_or_default());
        loop {
            let mut open = OPEN_STORE_FILES.lock().unwrap_or_else(|e| e.into_inner());
            let Some((_, known)) = open.iter().find(|(k, _)| *k == key) else {
                let file = Arc::new(Self::open(key.clone())?);
                open.push((key, Arc::downgrade(&file)));
                return Ok(file);
            };
            if let Some(file) = known.upgrade() {
                return Ok(file);
            }
            // Its last holder is dropping it: its entry leaves once its descriptor is closed.
            drop(open);
            std::thread::yield_now();
        }
    }

    /// Opens (creating it empty, which SQLite takes for an empty database) the file at `key`.
    fn open(key: std::path::PathBuf) -> std::io::Result<Self> {
        let db = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&key)?;
        let mut wal = key.as_os_str().to_owned();
        wal.push("-wal");
        Ok(Self {
            db: Some(db),
            wal: wal.into(),
            key,
        })
    }

    /// Flushes the WAL file, then the database file, to disk from the calling thread.
    fn sync(&self) -> std::io::Result<()> {
        match std::fs::File::open(&self.wal) {
            Ok(wal) => wal.sync_data()?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        self.db.as_ref().map_or(Ok(()), std::fs::File::sync_data)
    }
}

impl Drop for StoreFile {
    /// Closes the descriptor and removes the entry in one step under the registry's lock
    /// (see [`StoreFile::shared`]).
    fn drop(&mut self) {
        let mut open = OPEN_STORE_FILES.lock().unwrap_or_else(|e| e.into_inner());
        drop(self.db.take());
        open.retain(|(k, known)| *k != self.key || known.strong_count() > 0);
    }
}

/// A connection to the store's file that keeps the store's [`StoreFile`] open as long as it
/// lives: the connection field comes first, so it closes before this holder drops the file.
struct StoreConn {
    conn: Connection,
    file: Arc<StoreFile>,
}

impl std::ops::Deref for StoreConn {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        &self.conn
    }
}

impl std::ops::DerefMut for StoreConn {
    fn deref_mut(&mut self) -> &mut Connection {
        &mut self.conn
    }
}

/// The committer's role, held: given back if its holder unwinds, so later writes are not queued
/// forever (a holder that returns gives it back itself, in [`Writes::commit_queued`]).
struct Role<'a>(&'a Writes);

impl Drop for Role<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.queue().committing = false;
        }
    }
}

impl Writes {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn overflow(&self) -> MutexGuard<'_, Option<mpsc::Sender<()>>> {
        self.overflow.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` with the committer's role held, so that nothing is committed meanwhile (a write
    /// queued meanwhile waits for it without blocking its caller's thread), then commits what
    /// queued. Waits for a committer at work to finish (commits take tens of microseconds); None,
    /// without running `f`, when the role stayed taken for [`ROLE_WAIT`].
    fn as_committer<T>(&self, f: impl FnOnce() -> T) -> Option<T> {
        let deadline = std::time::Instant::now() + ROLE_WAIT;
        while std::mem::replace(&mut self.queue().committing, true) {
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(ROLE_POLL);
        }
        let role = Role(self);
        let out = f();
        drop(role);
        self.commit_queued(usize::MAX);
        Some(out)
    }

    /// Queues `write`; true when `lead` and nobody was committing, so the caller must commit now.
    fn enqueue(&self, write: Box<dyn Write>, lead: bool) -> bool {
        let mut queue = self.queue();
        queue.pending.push_back(write);
        lead && !std::mem::replace(&mut queue.committing, true)
    }

    /// Commits what is queued if nobody is committing (writes queued [`Commit::WithNext`] wait
    /// for this or for the next committer).
    fn flush(&self, max_batches: usize) {
        let lead = {
            let mut queue = self.queue();
            !queue.pending.is_empty() && !std::mem::replace(&mut queue.committing, true)
        };
        if lead {
            self.commit_queued(max_batches);
        }
    }

    /// Run by the one committer: commits batches of the queued writes until the queue is empty,
    /// or, after `max_batches`, wakes the overflow thread to go on (the committer's role passes to
    /// it). A committer that panics gives the role up and fails its batch's writes (`Closed`).
    fn commit_queued(&self, max_batches: usize) {
        let _role = Role(self);
        let mut done = 0;
        loop {
            let batch: Vec<Box<dyn Write>> = {
                let mut queue = self.queue();
                if queue.pending.is_empty() {
                    queue.committing = false;
                    return;
                }
                if done == max_batches
                    && let Some(overflow) = self.overflow().as_ref()
                    && overflow.send(()).is_ok()
                {
                    return;
                }
                let n = queue.pending.len().min(MAX_BATCH);
                queue.pending.drain(..n).collect()
            };
            let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
            commit_batch(&conn, batch, &self.commits);
            done += 1;
        }
    }
}

/// One transaction for `batch`; answers every write after the commit (or its failure). The
/// writes run one after another; if one fails, the transaction is rolled back and the batch run
/// again with each write in its own savepoint, so only the failed ones roll back.
fn commit_batch(conn: &Connection, mut batch: Vec<Box<dyn Write>>, commits: &AtomicU64) {
    let run = |sql: &str| conn.prepare_cached(sql)?.execute([]).map(drop);
    if !conn.is_autocommit() {
        // A committer panicked inside a transaction: its writes were never answered as written.
        let _ = run("ROLLBACK");
    }
    // How many writes have run (in the latest attempt): those are answered with what they
    // returned, the rest (after a failed statement) as not written.
    let mut ran = 0;
    let outcome = (|| {
        run("BEGIN IMMEDIATE")?;
        let mut failed = false;
        for write in &mut batch {
            ran += 1;
            if write.run(conn) {
                failed = true;
                break;
            }
        }
        if failed {
            // A lone write has nothing else to protect: it rolls back whole.
            run("ROLLBACK")?;
            if batch.len() == 1 {
                return Ok(());
            }
            ran = 0;
            run("BEGIN IMMEDIATE")?;
            for write in &mut batch {
                ran += 1;
                run("SAVEPOINT write")?;
                if write.run(conn) {
                    run("ROLLBACK TO write")?;
                }
                run("RELEASE write")?;
            }
        }
        run("COMMIT")?;
        commits.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("pas_task_store_commits_total").increment(1);
        Ok(())
    })()
    .map_err(|e: rusqlite::Error| {
        // Nothing of this batch was written: undo it and say so to every write in it.
        let _ = conn.execute_batch("ROLLBACK");
        tracing::error!("task store: a batch of writes was not committed: {e}");
        e.to_string()
    });
    for (i, write) in batch.into_iter().enumerate() {
        write.answer(if i < ran { outcome.clone() } else { Ok(()) });
    }
}

/// The fingerprint task `task_id` was dispatched with (see [`fingerprint`]); `None` for an
/// unknown id.
fn fingerprint_of(conn: &Connection, task_id: &str) -> Result<Option<String>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT fingerprint FROM tasks WHERE task_id = ?1")?
        .query_row(params![task_id], |r| r.get(0))
        .optional()?)
}

/// Insert one task (see [`TaskStore::insert`]), inside the batch's transaction. A new id (the
/// common case) costs the insert alone; only an id already taken is looked up.
fn insert(conn: &Connection, task: &NewTask) -> Result<InsertOutcome, StoreError> {
    let inserted = conn
        .prepare_cached(
            "INSERT INTO tasks (task_id, fingerprint, task_description, files, workspace, run_id,
                 capabilities, dry_run, state, created_ms, owner, request, lease_s)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
             ON CONFLICT (task_id) DO NOTHING",
        )?
        .execute(params![
            task.task_id,
            task.fingerprint,
            task.task_description,
            to_json(&task.files),
            task.workspace,
            task.run_id,
            to_json(&task.capabilities),
            task.dry_run,
            TaskState::Queued as i32,
            now_ms(),
            task.owner,
            task.request,
            task.lease_s,
        ])?;
    if inserted > 0 {
        return Ok(InsertOutcome::Inserted);
    }
    let existing = fingerprint_of(conn, &task.task_id)?;
    if existing.as_deref() != Some(task.fingerprint.as_str()) {
        return Err(StoreError::Conflict {
            task_id: task.task_id.clone(),
        });
    }
    let record = read_record(conn, &task.task_id)?
        .ok_or_else(|| StoreError::NotFound(task.task_id.clone()))?;
    Ok(InsertOutcome::AlreadyExists(Box::new(record)))
}

// ===== Helpers =====

fn check_terminal(result: &TaskResult) -> Result<(), StoreError> {
    let status = result.status();
    if status == TaskState::Unspecified || is_open(status) {
        return Err(StoreError::NotTerminal(status));
    }
    Ok(())
}

/// Stores the final result (see [`TaskStore::finish`]), inside the batch's transaction.
fn finish_row(conn: &Connection, task_id: &str, result: &TaskResult) -> Result<bool, StoreError> {
    let n = conn
        .prepare_cached(
            "UPDATE tasks SET state = ?1, finished_ms = ?2, result = ?3,
                 programmer_id = CASE WHEN ?4 = '' THEN programmer_id ELSE ?4 END
             WHERE task_id = ?5 AND state IN (?6, ?7)",
        )?
        .execute(params![
            result.status,
            now_ms(),
            result.encode_to_vec(),
            result.programmer_id,
            task_id,
            TaskState::Queued as i32,
            TaskState::Running as i32,
        ])?;
    changed_or_missing(conn, task_id, n)
}

fn changed_or_missing(
    conn: &Connection,
    task_id: &str,
    changed: usize,
) -> Result<bool, StoreError> {
    if changed > 0 {
        return Ok(true);
    }
    let exists: bool = conn.query_row(
        "SELECT EXISTS(SELECT 1 FROM tasks WHERE task_id = ?1)",
        params![task_id],
        |r| r.get(0),
    )?;
    if exists {
        Ok(false)
    } else {
        Err(StoreError::NotFound(task_id.to_owned()))
    }
}

fn to_json(list: &[String]) -> String {
    // Serializing a slice of strings cannot fail; fall back to an empty list rather than panic.
    serde_json::to_string(list).unwrap_or_else(|_| "[]".to_owned())
}

fn from_json(task_id: &str, field: &'static str, text: &str) -> Result<Vec<String>, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt {
        task_id: task_id.to_owned(),
        field,
        detail: e.to_string(),
    })
}

/// A row as stored, before the JSON and protobuf columns are decoded.
struct RawRow {
    task_id: String,
    state: i32,
    task_description: String,
    files: String,
    workspace: String,
    run_id: String,
    capabilities: String,
    programmer_id: String,
    created_ms: i64,
    started_ms: i64,
    finished_ms: i64,
    result: Option<Vec<u8>>,
    dry_run: bool,
    owner: String,
    last_seq: i64,
}

impl RawRow {
    fn from_row(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            task_id: r.get(0)?,
            state: r.get(1)?,
            task_description: r.get(2)?,
            files: r.get(3)?,
            workspace: r.get(4)?,
            run_id: r.get(5)?,
            capabilities: r.get(6)?,
            programmer_id: r.get(7)?,
            created_ms: r.get(8)?,
            started_ms: r.get(9)?,
            finished_ms: r.get(10)?,
            result: r.get(11)?,
            dry_run: r.get(12)?,
            owner: r.get(13)?,
            last_seq: r.get(14)?,
        })
    }

    fn into_record(self) -> Result<TaskRecord, StoreError> {
        let files = from_json(&self.task_id, "files", &self.files)?;
        let capabilities = from_json(&self.task_id, "capabilities", &self.capabilities)?;
        let result = self
            .result
            .map(|bytes| TaskResult::decode(bytes.as_slice()))
            .transpose()
            .map_err(|e| StoreError::Corrupt {
                task_id: self.task_id.clone(),
                field: "result",
                detail: e.to_string(),
            })?;
        Ok(TaskRecord {
            task_id: self.task_id,
            state: self.state,
            task_description: self.task_description,
            files,
            workspace: self.workspace,
            run_id: self.run_id,
            capabilities,
            programmer_id: self.programmer_id,
            created_ms: self.created_ms,
            started_ms: self.started_ms,
            finished_ms: self.finished_ms,
            result,
            dry_run: self.dry_run,
            owner: self.owner,
            last_seq: u64::try_from(self.last_seq).unwrap_or(0),
        })
    }
}

fn read_record(conn: &Connection, task_id: &str) -> Result<Option<TaskRecord>, StoreError> {
    let raw = conn
        .prepare_cached(&format!(
            "SELECT {RECORD_COLUMNS} FROM tasks WHERE task_id = ?1"
        ))?
        .query_row(params![task_id], RawRow::from_row)
        .optional()?;
    raw.map(RawRow::into_record).transpose()
}

/// The query of [`TaskStore::unfinished`]: the tasks from the `open_from` mark on (its plan is
/// tested to read only those).
fn unfinished_query() -> String {
    format!(
        "SELECT t.task_id, t.request, t.owner, t.state, t.programmer_id, t.dispatch_attempt,
                t.created_ms,
                (SELECT COALESCE(MAX(e.upstream_seq), 0) FROM task_events e
                  WHERE e.task_id = t.task_id AND e.attempt = t.dispatch_attempt),
                t.unsent_attempts, t.lease_s
         FROM tasks t WHERE t.rowid >= {OPEN_FROM} AND t.{OPEN_STATES} AND t.request IS NOT NULL
         ORDER BY t.rowid"
    )
}

/// Fails every QUEUED/RUNNING task left by a previous process that cannot be resumed (its row
/// predates stored requests); returns how many.
fn recover(conn: &mut Connection) -> Result<usize, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let open: Vec<(String, String, bool, i64)> = {
        let mut stmt = tx.prepare(&format!(
            "SELECT task_id, programmer_id, dry_run, created_ms FROM tasks
                 WHERE rowid >= {OPEN_FROM} AND {OPEN_STATES} AND request IS NULL"
        ))?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    let now = now_ms();
    for (task_id, programmer_id, dry_run, created_ms) in &open {
        let result = TaskResult {
            status: TaskState::Failed as i32,
            programmer_id: programmer_id.clone(),
            error_class: ErrorClass::Unavailable as i32,
            error_message: RESTART_MESSAGE.to_owned(),
            dry_run: *dry_run,
            duration_ms: u64::try_from(now.saturating_sub(*created_ms)).unwrap_or(0),
            ..Default::default()
        };
        tx.execute(
            "UPDATE tasks SET state = ?1, finished_ms = ?2, result = ?3 WHERE task_id = ?4",
            params![
                TaskState::Failed as i32,
                now,
                result.encode_to_vec(),
                task_id
            ],
        )?;
    }
    tx.commit()?;
    Ok(open.len())
}

/// The store journals the manager's task events (see [`TaskStore::append_event`]).
impl Journal for TaskStore {
    fn append(
        &self,
        task_id: &str,
        event: &TaskEvent,
        upstream_seq: u64,
    ) -> futures::future::BoxFuture<'static, Result<(), String>> {
        journaled(self.append_event(task_id, event, upstream_seq))
    }

    fn append_soon(
        &self,
        task_id: &str,
        event: &TaskEvent,
        upstream_seq: u64,
    ) -> futures::future::BoxFuture<'static, Result<(), String>> {
        journaled(self.append_event_soon(task_id, event, upstream_seq))
    }

    fn replays(&self) -> bool {
        true
    }

    fn replay(
        &self,
        task_id: &str,
        after_seq: u64,
        limit: usize,
    ) -> futures::future::BoxFuture<'static, Result<Vec<TaskEvent>, String>> {
        let page = self.events_after(task_id.to_owned(), after_seq, limit);
        Box::pin(async move { page.await.map_err(|e| e.to_string()) })
    }
}

/// A store write as the [`Journal`] answers it.
fn journaled(
    written: impl Future<Output = Result<(), StoreError>> + Send + 'static,
) -> futures::future::BoxFuture<'static, Result<(), String>> {
    Box::pin(async move { written.await.map_err(|e| e.to_string()) })
}

// ===== Tests =====

#[cfg(test)]
mod tests {
    use super::*;

    fn request(desc: &str) -> DispatchRequest {
        DispatchRequest {
            task_description: desc.to_owned(),
            files: vec!["src/lib.rs".into(), "README.md".into()],
            run_id: "run-7".into(),
            capabilities: vec!["fast".into()],
            prefer_free: Some(true),
            workspace: "demo".into(),
            task_id: "caller-id".into(),
            ..Default::default()
        }
    }

    fn open(dir: &tempfile::TempDir) -> TaskStore {
        TaskStore::open(dir.path().join("tasks.sqlite3")).unwrap()
    }

    fn succeeded(programmer: &str) -> TaskResult {
        TaskResult {
            status: TaskState::Succeeded as i32,
            programmer_id: programmer.into(),
            llm_used: "ollama/qwen2.5-coder:7b-instruct".into(),
            files_changed: vec!["src/lib.rs".into()],
            diff: "--- a/src/lib.rs\n+++ b/src/lib.rs\n".into(),
            branch: "pas/t1".into(),
            commit: "0123abcd".into(),
            cost_usd: 0.0125,
            ..Default::default()
        }
    }

    /// Records `ids` in order, each with `events` events; those in `finished` get a result.
    async fn recorded(store: &TaskStore, ids: &[&str], finished: &[&str], events: u64) {
        for &id in ids {
            store
                .insert(&NewTask::from_request(id, &request(id)))
                .await
                .unwrap();
            store
                .set_running(Commit::Now, id, "001", 1, 0)
                .await
                .unwrap();
            for seq in 1..=events {
                let event = TaskEvent {
                    task_id: id.into(),
                    seq,
                    kind: Some(Kind::Heartbeat(Default::default())),
                    ..Default::default()
                };
                store.append_event(id, &event, seq).await.unwrap();
            }
            if finished.contains(&id) {
                assert!(store.finish(id, &succeeded("001")).await.unwrap());
            }
        }
    }

    #[tokio::test]
    async fn finished_tasks_past_their_retention_are_deleted_with_their_events_open_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        // "open" is recorded first: a pass that looks at one record finds nothing to delete.
        recorded(&store, &["open", "a", "b", "c"], &["a", "b", "c"], 3).await;
        let conn = raw_connection(&dir);
        let later = now_ms() + 60_000;
        let pass = |cutoff, scan_rows, max_tasks, max_events| {
            let done =
                forget_finished(&conn, cutoff, i64::MAX, scan_rows, max_tasks, max_events).unwrap();
            (done.tasks, done.events)
        };
        assert_eq!(pass(later, 1, 100, 1_000), (0, 0));
        // Ended after the cutoff: kept.
        assert_eq!(pass(1, 10, 100, 1_000), (0, 0));
        // A task with more events than a pass deletes: its oldest events go first, its record
        // (and its id) stays until its last event goes.
        assert_eq!(pass(later, 10, 100, 2), (0, 2));
        assert!(store.get("a").unwrap().is_some());
        assert_eq!(
            store
                .events("a")
                .unwrap()
                .iter()
                .map(|e| e.seq)
                .collect::<Vec<_>>(),
            [3]
        );
        assert_eq!(pass(later, 10, 100, 1), (1, 1));
        assert!(store.get("a").unwrap().is_none());
        assert!(store.events("a").unwrap().is_empty());
        assert!(store.get("b").unwrap().is_some());
        // The pass's bound on tasks.
        assert_eq!(pass(later, 10, 1, 1_000), (1, 3));
        assert!(store.get("b").unwrap().is_none());
        assert_eq!(pass(later, 10, 100, 1_000), (1, 3));
        for id in ["b", "c"] {
            assert!(store.get(id).unwrap().is_none(), "{id}");
            assert!(store.events(id).unwrap().is_empty(), "{id}");
        }
        let running = store
            .get("open")
            .unwrap()
            .expect("an open task is never deleted");
        assert_eq!(running.state(), TaskState::Running);
        assert_eq!(store.events("open").unwrap().len(), 3);
        // Its id is free again: a new request under it is a new task.
        assert_eq!(
            store
                .insert(&NewTask::from_request("a", &request("another")))
                .await
                .unwrap(),
            InsertOutcome::Inserted
        );
        // A restart still finds the open task (the mark may name a deleted one).
        drop(store);
        let reopened = open(&dir);
        let unfinished: Vec<String> = reopened
            .unfinished()
            .unwrap()
            .into_iter()
            .map(|u| u.task_id)
            .collect();
        assert_eq!(unfinished, ["open", "a"]);
    }

    /// `manager.task_retention_max_tasks`: past the cap, the oldest finished tasks go whatever
    /// their age; an unfinished one stays, and so does every task among the newest records.
    #[tokio::test]
    async fn past_the_cap_the_oldest_finished_tasks_are_deleted_whatever_their_age() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        recorded(
            &store,
            &["open", "a", "b", "c", "d"],
            &["a", "b", "c", "d"],
            2,
        )
        .await;
        let conn = raw_connection(&dir);
        assert_eq!(records_span(&conn).unwrap(), 5);
        // No age limit (nothing ended before the epoch): only the cap deletes.
        let pass = |keep_newest| {
            let done = forget_finished(&conn, 0, keep_newest, 10, 100, 1_000).unwrap();
            (done.tasks, done.events)
        };
        assert_eq!(pass(i64::MAX), (0, 0), "no cap: nothing");
        assert_eq!(pass(5), (0, 0), "within the cap");
        assert_eq!(pass(2), (2, 4), "a and b, recorded before the newest two");
        for gone in ["a", "b"] {
            assert!(store.get(gone).unwrap().is_none(), "{gone}");
            assert!(store.events(gone).unwrap().is_empty(), "{gone}");
        }
        for kept in ["open", "c", "d"] {
            assert!(store.get(kept).unwrap().is_some(), "{kept}");
        }
        // The span now starts at the unfinished task: over the cap, yet nothing more to delete.
        assert_eq!(records_span(&conn).unwrap(), 5);
        assert_eq!(pass(2), (0, 0));
        let d = store.get("d").unwrap().unwrap();
        assert_eq!(d.state(), TaskState::Succeeded);
    }

    /// A burst grows the WAL file; once writes quiet down (a light writer goes on), the
    /// checkpoint thread cuts it back, and the store still reads and writes.
    #[tokio::test]
    async fn a_wal_grown_by_a_burst_is_cut_back_once_writes_quiet_down() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(open(&dir));
        // Quiet: under 128 KiB written in a tick.
        store.shrink_wal_above(2 << 20);
        let ids: Vec<String> = (0..200).map(|i| format!("burst-{i}")).collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        recorded(&store, &refs, &refs, 2).await;
        let wal = dir.path().join("tasks.sqlite3-wal");
        let wal_len = || std::fs::metadata(&wal).map_or(0, |m| m.len());
        assert!(wal_len() > 2 << 20, "the burst grew the WAL: {}", wal_len());
        // A light load: an event every 500 ms (a few pages a second).
        recorded(&store, &["light"], &[], 0).await;
        let writer = {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                for seq in 1.. {
                    let event = TaskEvent {
                        task_id: "light".into(),
                        seq,
                        kind: Some(Kind::Heartbeat(Default::default())),
                        ..Default::default()
                    };
                    store.append_event("light", &event, seq).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            })
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while wal_len() > 2 << 20 {
            assert!(
                std::time::Instant::now() < deadline,
                "the WAL file stayed at {} bytes",
                wal_len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        writer.abort();
        assert_eq!(
            store.get("burst-199").unwrap().unwrap().state(),
            TaskState::Succeeded
        );
        recorded(&store, &["after"], &["after"], 1).await;
        assert!(store.get("after").unwrap().is_some());
    }

    #[test]
    fn a_pass_for_age_that_found_nothing_does_not_put_off_the_cap() {
        let start = std::time::Instant::now();
        let idle = Duration::from_secs(60);
        let mut passes = PassSchedule::starting(start);
        // The first tick's pass for age, on an empty store: the cap is still looked at next tick.
        passes.after(start, false, false, idle);
        assert_eq!(passes.next_forget, start + idle);
        assert_eq!(passes.next_cap, start);
        // Over the cap with nothing to delete (unfinished tasks first): both wait.
        let later = start + CHECKPOINT_EVERY;
        passes.after(later, false, true, idle);
        assert_eq!(passes.next_cap, later + FORGET_IDLE_EVERY);
        // A pass that deleted something: the next one at once.
        passes.after(later, true, true, idle);
        assert_eq!(passes, PassSchedule::starting(later));
    }

    #[tokio::test]
    async fn the_checkpoint_thread_deletes_tasks_once_their_retention_has_passed() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        recorded(&store, &["kept", "gone"], &["gone"], 2).await;
        store.keep_finished_for(Some(Duration::from_millis(1)));
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while store.get("gone").unwrap().is_some() {
            assert!(std::time::Instant::now() < deadline, "never deleted");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(store.events("gone").unwrap().is_empty());
        assert!(store.get("kept").unwrap().is_some(), "unfinished: kept");
    }

    /// The checkpoint sequence number in the header of WAL file `wal`: one more each time the
    /// WAL starts over (`None` before the file has a header).
    fn wal_sequence(wal: &Path) -> Option<u32> {
        use std::io::Read;
        let mut header = [0u8; 16];
        std::fs::File::open(wal)
            .and_then(|mut f| f.read_exact(&mut header))
            .map(|()| u32::from_be_bytes(header[12..16].try_into().unwrap()))
            .ok()
    }

    /// A checkpoint starts the WAL over itself, before it returns: at `synchronous = NORMAL` the
    /// commit that writes a WAL's first frame flushes the WAL's header to disk, and that commit
    /// used to be the next caller's, on the manager's runtime thread (`strace` showed the flush
    /// there). Each round: a caller's write, a checkpoint (run here, beside the store's own
    /// thread), and the WAL header's checkpoint sequence number has moved, with no write between.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_checkpoint_starts_the_wal_over_before_any_caller_writes() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let wal = dir.path().join("tasks.sqlite3-wal");
        let sequence = || wal_sequence(&wal);
        let mut ticks = WalTicks::default();
        for n in 0..5 {
            let id = format!("t{n}");
            store
                .insert(&NewTask::from_request(&id, &request("round")))
                .await
                .unwrap();
            let before = sequence();
            // No commit during any round's passive copy: the WAL starts over at once.
            checkpoint(&store.reader(), &store.writes, u64::MAX, 1, &mut ticks).unwrap();
            assert_ne!(
                sequence(),
                before,
                "round {n}: the WAL was left for the next caller's write to start over"
            );
        }
        assert!(store.get("t4").unwrap().is_some());
    }

    /// Under steady writes (commits during every tick's passive copy) only every
    /// [`RESTART_EVERY_TICKS`]th tick with commits starts the WAL over and holds the committer's
    /// role; a quiet tick starts it over at once (the case run with real files in
    /// `a_checkpoint_starts_the_wal_over_before_any_caller_writes`).
    #[test]
    fn the_wal_starts_over_every_few_ticks_unless_quiet() {
        let mut ticks = WalTicks::default();
        let mut tick = |quiet: bool| {
            let now = ticks.start_over_now(quiet);
            if now {
                ticks.started_over();
            }
            now
        };
        let every = usize::try_from(RESTART_EVERY_TICKS).unwrap();
        let steady: Vec<bool> = (0..2 * every).map(|_| tick(false)).collect();
        let expected: Vec<bool> = (1..=2 * every).map(|n| n % every == 0).collect();
        assert_eq!(steady, expected, "ticks that started the WAL over");
        assert!(!tick(false));
        assert!(tick(true), "quiet: at once");
        assert!(!tick(false), "counted from the last start-over");
    }

    /// Under writes that never pause, the WAL still starts over at checkpoints (so it stays the
    /// size of [`RESTART_EVERY_TICKS`] seconds of writes). Before, checkpoints were passive only:
    /// the WAL started over only after one that finished between two commits, which under steady
    /// load never happened, and a manager's WAL grew for as long as the load lasted
    /// (BENCHMARKS.md, "The WAL started over").
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_wal_starts_over_while_writes_go_on() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(open(&dir));
        // The WAL header's checkpoint sequence number: one more each time the WAL starts over.
        let wal = dir.path().join("tasks.sqlite3-wal");
        let restarts = || wal_sequence(&wal).unwrap_or(0);
        let before = restarts();
        // Writers that keep a commit going at all times (each waits for its own).
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let (store, stop) = (Arc::clone(&store), Arc::clone(&stop));
                tokio::spawn(async move {
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let id = format!("w{w}-{n}");
                        store
                            .insert(&NewTask::from_request(&id, &request("steady")))
                            .await
                            .unwrap();
                        store
                            .set_running(Commit::Now, &id, "001", 1, 0)
                            .await
                            .unwrap();
                    }
                    n
                })
            })
            .collect();
        // A WAL that never starts over grows by gigabytes a minute here: stopped at 4 GiB (one
        // that does keeps the size of three seconds of these writes, under 1 GiB).
        let wal_size = || std::fs::metadata(&wal).map_or(0, |m| m.len());
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while restarts() < before + 2
            && wal_size() < 4 << 30
            && std::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop.store(true, Ordering::Relaxed);
        let mut written = 0;
        for writer in writers {
            written += writer.await.unwrap();
        }
        assert!(
            restarts() >= before + 2,
            "the WAL started over {} time(s) in {written} tasks' writes; it is {} bytes",
            restarts() - before,
            wal_size()
        );
        assert!(store.get("w0-1").unwrap().is_some(), "nothing lost");
    }

    #[tokio::test]
    async fn lifecycle_round_trips_every_field() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let req = request("add docstrings");
        assert_eq!(
            store
                .insert(&NewTask::from_request("t1", &req))
                .await
                .unwrap(),
            InsertOutcome::Inserted
        );

        let rec = store.get("t1").unwrap().unwrap();
        assert_eq!(rec.state(), TaskState::Queued);
        assert_eq!(rec.task_description, "add docstrings");
        assert_eq!(rec.files, vec!["src/lib.rs", "README.md"]);
        assert_eq!(
            (rec.workspace.as_str(), rec.run_id.as_str()),
            ("demo", "run-7")
        );
        assert_eq!(rec.capabilities, vec!["fast"]);
        assert!(rec.created_ms > 0);
        assert_eq!((rec.started_ms, rec.finished_ms), (0, 0));
        assert!(rec.result.is_none());

        assert!(
            store
                .set_running(Commit::Now, "t1", "003", 1, 0)
                .await
                .unwrap()
        );
        let rec = store.get("t1").unwrap().unwrap();
        assert_eq!(rec.state(), TaskState::Running);
        assert_eq!(rec.programmer_id, "003");
        assert!(rec.started_ms >= rec.created_ms);

        let result = succeeded("003");
        assert!(store.finish("t1", &result).await.unwrap());
        let rec = store.get("t1").unwrap().unwrap();
        assert_eq!(rec.state(), TaskState::Succeeded);
        assert!(rec.finished_ms >= rec.started_ms);
        assert_eq!(rec.result, Some(result));
    }

    #[tokio::test]
    async fn insert_is_idempotent_for_the_same_request_and_conflicts_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let req = request("add docstrings");
        store
            .insert(&NewTask::from_request("t1", &req))
            .await
            .unwrap();
        store
            .set_running(Commit::Now, "t1", "001", 1, 0)
            .await
            .unwrap();

        // Same request (even with a different task_id field inside it): attach.
        let mut same = req.clone();
        same.task_id = "t1".into();
        match store
            .insert(&NewTask::from_request("t1", &same))
            .await
            .unwrap()
        {
            InsertOutcome::AlreadyExists(rec) => {
                assert_eq!(rec.state(), TaskState::Running);
                assert_eq!(rec.programmer_id, "001");
            }
            other => panic!("expected AlreadyExists, got {other:?}"),
        }

        // Any other field differing is a different request.
        let changes: [fn(&mut DispatchRequest); 5] = [
            |r: &mut DispatchRequest| r.task_description.push('!'),
            |r: &mut DispatchRequest| r.files.reverse(),
            |r: &mut DispatchRequest| r.prefer_free = None,
            |r: &mut DispatchRequest| r.dry_run = true,
            |r: &mut DispatchRequest| r.base_ref = "main".into(),
        ];
        for change in changes {
            let mut other = req.clone();
            change(&mut other);
            assert!(matches!(
                store.insert(&NewTask::from_request("t1", &other)).await,
                Err(StoreError::Conflict { task_id }) if task_id == "t1"
            ));
        }
        // The record is untouched by the refused inserts.
        assert_eq!(
            store.get("t1").unwrap().unwrap().task_description,
            "add docstrings"
        );
    }

    /// Journals `task_id`'s result (Succeeded on 001) as its event `seq`, committed at once.
    async fn append_result(store: &TaskStore, task_id: &str, seq: u64) {
        let result = TaskEvent {
            task_id: task_id.into(),
            seq,
            kind: Some(Kind::Result(Box::new(succeeded("001")))),
            ..Default::default()
        };
        store.append_event(task_id, &result, seq).await.unwrap();
    }

    /// Records task `id` and marks it RUNNING on programmer 001, attempt 1.
    async fn insert_running(store: &TaskStore, id: &str) {
        store
            .insert(&NewTask::from_request(id, &request("x")))
            .await
            .unwrap();
        store
            .set_running(Commit::Now, id, "001", 1, 0)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn first_result_wins_and_finished_tasks_do_not_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        insert_running(&store, "t1").await;
        // Rerouted: programmer changes, started_ms stays.
        let first_start = store.get("t1").unwrap().unwrap().started_ms;
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert!(
            store
                .set_running(Commit::Now, "t1", "002", 1, 0)
                .await
                .unwrap()
        );
        let rec = store.get("t1").unwrap().unwrap();
        assert_eq!(
            (rec.programmer_id.as_str(), rec.started_ms),
            ("002", first_start)
        );

        let cancelled = TaskResult {
            status: TaskState::Cancelled as i32,
            ..Default::default()
        };
        assert!(store.finish("t1", &cancelled).await.unwrap());
        assert!(!store.finish("t1", &succeeded("002")).await.unwrap());
        assert!(
            !store
                .set_running(Commit::Now, "t1", "003", 1, 0)
                .await
                .unwrap()
        );
        let rec = store.get("t1").unwrap().unwrap();
        assert_eq!(rec.state(), TaskState::Cancelled);
        // An empty programmer_id in the result keeps the recorded one.
        assert_eq!(rec.programmer_id, "002");
        assert_eq!(rec.result.unwrap().status(), TaskState::Cancelled);
    }

    #[tokio::test]
    async fn bad_calls_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        assert!(store.get("nope").unwrap().is_none());
        assert!(matches!(
            store.set_running(Commit::Now, "nope", "001", 1, 0).await,
            Err(StoreError::NotFound(_))
        ));
        assert!(matches!(
            store.finish("nope", &succeeded("001")).await,
            Err(StoreError::NotFound(_))
        ));
        store
            .insert(&NewTask::from_request("t1", &request("x")))
            .await
            .unwrap();
        let running = TaskResult {
            status: TaskState::Running as i32,
            ..Default::default()
        };
        assert!(matches!(
            store.finish("t1", &running).await,
            Err(StoreError::NotTerminal(TaskState::Running))
        ));
        assert!(matches!(
            store.finish("t1", &TaskResult::default()).await,
            Err(StoreError::NotTerminal(_))
        ));
    }

    #[tokio::test]
    async fn reopen_resumes_unfinished_tasks_and_fails_only_those_without_a_request() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        store
            .insert(&NewTask::from_request("queued", &request("a")))
            .await
            .unwrap();
        let mut dry = request("b");
        dry.dry_run = true;
        store
            .insert(&NewTask::from_request("running", &dry))
            .await
            .unwrap();
        store
            .set_running(Commit::Now, "running", "004", 2, 1)
            .await
            .unwrap();
        let relayed = |seq| TaskEvent {
            task_id: "running".into(),
            seq,
            ..Default::default()
        };
        store.append_event("running", &relayed(1), 5).await.unwrap();
        store.append_event("running", &relayed(2), 9).await.unwrap();
        store.append_event("running", &relayed(3), 0).await.unwrap();
        store
            .insert(&NewTask::from_request("legacy", &request("old")))
            .await
            .unwrap();
        store
            .insert(&NewTask::from_request("done", &request("c")))
            .await
            .unwrap();
        store
            .set_running(Commit::Now, "done", "001", 1, 0)
            .await
            .unwrap();
        store.finish("done", &succeeded("001")).await.unwrap();
        drop(store);
        // A row written before requests were kept.
        Connection::open(dir.path().join("tasks.sqlite3"))
            .unwrap()
            .execute(
                "UPDATE tasks SET request = NULL WHERE task_id = 'legacy'",
                [],
            )
            .unwrap();

        let store = open(&dir);
        assert_eq!(store.recovered_on_open(), 1);
        let legacy = store.get("legacy").unwrap().unwrap();
        assert_eq!(legacy.state(), TaskState::Failed);
        let result = legacy.result.unwrap();
        assert_eq!(result.error_class(), ErrorClass::Unavailable);
        assert_eq!(result.error_message, RESTART_MESSAGE);

        let unfinished = store.unfinished().unwrap();
        let ids: Vec<&str> = unfinished.iter().map(|u| u.task_id.as_str()).collect();
        assert_eq!(ids, ["queued", "running"], "oldest first");
        assert_eq!(unfinished[0].placed, None);
        assert_eq!(unfinished[0].request.task_description, "a");
        assert_eq!(unfinished[0].request.task_id, "queued");
        assert_eq!(
            unfinished[1].placed,
            Some(Placed {
                programmer_id: "004".into(),
                dispatch_attempt: 2,
                unsent_before: 1,
                upstream_seq: 9,
            })
        );
        assert!(unfinished[1].request.dry_run);
        assert_eq!(store.get("running").unwrap().unwrap().last_seq, 3);
        let seqs: Vec<u64> = store
            .events("running")
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(seqs, [1, 2, 3]);
        let done = store.get("done").unwrap().unwrap();
        assert_eq!(done.state(), TaskState::Succeeded);
        assert_eq!(done.result, Some(succeeded("001")));
    }

    /// The result event and the finished row are one write: a crash cannot split them.
    #[tokio::test]
    async fn journaling_the_result_event_finishes_the_task() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        store
            .insert(&NewTask::from_request("t1", &request("x")))
            .await
            .unwrap();
        let event = |seq, kind| TaskEvent {
            task_id: "t1".into(),
            seq,
            timestamp_ms: 1,
            kind: Some(kind),
        };
        store
            .append_event("t1", &event(1, Kind::Result(Box::new(succeeded("002")))), 0)
            .await
            .unwrap();
        let record = store.get("t1").unwrap().unwrap();
        assert_eq!(record.state(), TaskState::Succeeded);
        assert_eq!(record.result, Some(succeeded("002")));
        assert_eq!(record.last_seq, 1);
        assert!(store.unfinished().unwrap().is_empty());
        // A result that is not terminal is refused, and nothing of it is written.
        store
            .insert(&NewTask::from_request("t2", &request("y")))
            .await
            .unwrap();
        let open_result = TaskResult {
            status: TaskState::Running as i32,
            ..Default::default()
        };
        assert!(matches!(
            store
                .append_event("t2", &event(1, Kind::Result(Box::new(open_result))), 0)
                .await,
            Err(StoreError::NotTerminal(TaskState::Running))
        ));
        assert!(store.events("t2").unwrap().is_empty());
    }

    #[tokio::test]
    async fn events_are_read_back_a_page_at_a_time_and_the_last_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        for id in ["t1", "t2"] {
            store
                .insert(&NewTask::from_request(id, &request("x")))
                .await
                .unwrap();
        }
        assert_eq!(store.last_event("t1").unwrap(), None);
        let event = |task_id: &str, seq| TaskEvent {
            task_id: task_id.into(),
            seq,
            timestamp_ms: i64::try_from(seq).unwrap(),
            kind: Some(Kind::Output(crate::contract::v1::Output {
                text: format!("chunk {seq}"),
                ..Default::default()
            })),
        };
        for seq in 1..=25 {
            for id in ["t1", "t2"] {
                store.append_event(id, &event(id, seq), 0).await.unwrap();
            }
        }
        let seqs = |events: Vec<TaskEvent>| events.iter().map(|e| e.seq).collect::<Vec<_>>();
        let page = store.events_after("t1".into(), 0, 10).await.unwrap();
        assert_eq!(page[3], event("t1", 4), "whole events, of this task only");
        assert_eq!(seqs(page), (1..=10).collect::<Vec<_>>());
        let rest = store.events_after("t1".into(), 20, 10).await.unwrap();
        assert_eq!(seqs(rest), (21..=25).collect::<Vec<_>>());
        assert!(
            store
                .events_after("t1".into(), 25, 10)
                .await
                .unwrap()
                .is_empty()
        );
        assert!(
            store
                .events_after("t9".into(), 0, 10)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(store.last_event("t2").unwrap(), Some(event("t2", 25)));
        assert_eq!(store.events("t2").unwrap().len(), 25);
    }

    #[tokio::test]
    async fn lists_newest_first_filtered_and_paged() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        for i in 0..5 {
            let mut req = request(&format!("t{i}"));
            req.run_id = if i % 2 == 0 { "even" } else { "odd" }.into();
            let owner = if i == 4 { "bob" } else { "alice" };
            store
                .insert(&NewTask::dispatched_by(&format!("t{i}"), &req, owner))
                .await
                .unwrap();
        }
        store.finish("t0", &succeeded("001")).await.unwrap();
        let ids = |records: &[TaskRecord]| -> Vec<String> {
            records.iter().map(|r| r.task_id.clone()).collect()
        };
        let (page, next) = list(&store, None, "", &[], 2, "").await.unwrap();
        assert_eq!(page.len(), 2);
        let mut all = ids(&page);
        let (page, next) = list(&store, None, "", &[], 2, &next).await.unwrap();
        all.extend(ids(&page));
        let (page, last) = list(&store, None, "", &[], 2, &next).await.unwrap();
        all.extend(ids(&page));
        assert_eq!(last, "");
        let mut expected: Vec<String> = (0..5).map(|i| format!("t{i}")).collect();
        let mut sorted = all.clone();
        sorted.sort();
        expected.sort();
        assert_eq!(sorted, expected, "every task once across pages");
        let (even, _) = list(&store, None, "even", &[], 50, "").await.unwrap();
        assert_eq!(even.len(), 3);
        let queued = [TaskState::Queued as i32];
        let (open_even, _) = list(&store, None, "even", &queued, 50, "").await.unwrap();
        assert_eq!(open_even.len(), 2, "t0 finished");
        let (bobs, _) = list(&store, Some("bob"), "", &[], 50, "").await.unwrap();
        assert_eq!(ids(&bobs), ["t4"]);
        for token in ["garbage", "-1", "0"] {
            assert!(
                matches!(
                    list(&store, None, "", &[], 2, token).await,
                    Err(StoreError::BadPageToken(_))
                ),
                "{token}"
            );
        }
    }

    async fn list(
        store: &TaskStore,
        owner: Option<&str>,
        run_id: &str,
        states: &[i32],
        page_size: usize,
        token: &str,
    ) -> Result<(Vec<TaskRecord>, String), StoreError> {
        let (owner, run_id, states) =
            (owner.map(str::to_owned), run_id.to_owned(), states.to_vec());
        store
            .list(owner, run_id, states, page_size, token.to_owned())
            .await
    }

    /// Large results (a diff may be 1 MiB) end a page before it outgrows what a gRPC client
    /// reads by default; every task is still listed once, newest first, and a record larger
    /// than a page comes alone.
    #[tokio::test]
    async fn a_page_of_large_results_ends_before_it_outgrows_a_grpc_message() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let diff = |lines: usize| "+generated line\n".repeat(lines);
        let sizes = [40_000, 60_000, 60_000, 10, 200_000, 60_000];
        for (i, lines) in sizes.iter().enumerate() {
            let id = format!("t{i}");
            store
                .insert(&NewTask::from_request(&id, &request("x")))
                .await
                .unwrap();
            let result = TaskResult {
                diff: diff(*lines),
                ..succeeded("002")
            };
            assert!(store.finish(&id, &result).await.unwrap());
        }
        let (mut token, mut pages) = (String::new(), Vec::new());
        loop {
            let (page, next) = list(&store, None, "", &[], 50, &token).await.unwrap();
            let bytes: usize = page.iter().map(Message::encoded_len).sum();
            assert!(
                bytes <= LIST_PAGE_BYTES || page.len() == 1,
                "{bytes} bytes in {} records",
                page.len()
            );
            pages.push(page.iter().map(|r| r.task_id.clone()).collect::<Vec<_>>());
            if next.is_empty() {
                break;
            }
            token = next;
        }
        // t5 (0.96 MB) and t4 (3.2 MB, from a programmer that did not cut diffs) do not fit in
        // one page; t4 comes alone; t3, t2 and t1 (1.92 MB) fit; t0 (0.64 MB) more does not.
        assert_eq!(
            pages,
            vec![vec!["t5"], vec!["t4"], vec!["t3", "t2", "t1"], vec!["t0"]]
        );
    }

    /// A filter that matches few tasks does not read the whole store in one call: each page
    /// examines one window of rows, is shorter than asked (even empty) when few match there, and
    /// its token goes on below the window, until every match has been listed once, newest first.
    #[tokio::test]
    async fn a_sparse_filter_is_listed_window_by_window() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        for i in 0..10 {
            let mut req = request(&format!("t{i}"));
            req.run_id = if i == 1 || i == 8 { "rare" } else { "common" }.into();
            let task = NewTask::from_request(&format!("t{i}"), &req);
            store.insert(&task).await.unwrap();
        }
        let conn = raw_connection(&dir);
        let filter = (None, "rare", &[][..]);
        let (mut found, mut pages, mut short_pages) = (vec![], 0, 0);
        let mut token = String::new();
        loop {
            let (page, next) = list_page(&conn, filter, 50, &token, 3).unwrap();
            pages += 1;
            if page.is_empty() && !next.is_empty() {
                short_pages += 1;
            }
            found.extend(page.into_iter().map(|r| r.task_id));
            if next.is_empty() {
                break;
            }
            token = next;
        }
        assert_eq!(found, ["t8", "t1"]);
        assert_eq!(pages, 4, "ten rows, three per window");
        assert!(short_pages > 0, "an empty page still carries a token");
        // A page of a filter that matches enough stops at the page size, as before.
        let (page, next) = list_page(&conn, (None, "common", &[][..]), 2, "", 3).unwrap();
        assert_eq!(
            page.iter().map(|r| r.task_id.as_str()).collect::<Vec<_>>(),
            ["t9", "t7"]
        );
        assert!(!next.is_empty());
    }

    /// A caller who is not an admin lists only their own tasks: a page examines their records
    /// only (through the `tasks_by_owner` index, which SQLite's plan names), so ten of theirs
    /// among other callers' are listed in full pages however far apart they lie, and a filter
    /// within them is still bounded per page. Tasks without an owner have no index entry.
    #[tokio::test]
    async fn an_owner_s_tasks_are_listed_through_their_index() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        for i in 0..60 {
            let owner = match i % 6 {
                0 => "bob",
                1 => "",
                _ => "alice",
            };
            let mut req = request(&format!("t{i}"));
            req.run_id = if i == 0 || i == 54 { "rare" } else { "common" }.into();
            store
                .insert(&NewTask::dispatched_by(&format!("t{i}"), &req, owner))
                .await
                .unwrap();
        }
        let conn = raw_connection(&dir);
        let listed = |filter: (Option<&str>, &str, &[i32]), page_size, scan_rows| {
            let (mut pages, mut token) = (vec![], String::new());
            loop {
                let (page, next) = list_page(&conn, filter, page_size, &token, scan_rows).unwrap();
                pages.push(page.into_iter().map(|r| r.task_id).collect::<Vec<_>>());
                if next.is_empty() {
                    return pages;
                }
                token = next;
            }
        };
        // Bob's ten tasks lie six rows apart: windows of five rows would find at most one each.
        let bob: Vec<String> = (0..10).rev().map(|i| format!("t{}", i * 6)).collect();
        assert_eq!(listed((Some("bob"), "", &[]), 5, 5), [&bob[..5], &bob[5..]]);
        // A filter within bob's tasks examines five of them a page.
        assert_eq!(
            listed((Some("bob"), "rare", &[]), 50, 5),
            [vec!["t54".to_string()], vec!["t0".to_string()]]
        );
        // No owner: every record, the window as before.
        assert_eq!(listed((None, "", &[]), 100, 1000).concat().len(), 60);
        let plan: Vec<String> = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {OWNED_BELOW}"))
            .unwrap()
            .query_map(params![i64::MAX, "bob", 5], |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            plan.iter().any(|step| step.contains("tasks_by_owner")),
            "{plan:?}"
        );
        let indexed: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM tasks INDEXED BY tasks_by_owner WHERE owner != ''",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(indexed, 50, "the ten tasks without an owner have no entry");
    }

    /// A committer held inside its transaction, on a thread of its own, until `release` is sent;
    /// the handle answers with its write's future once released.
    fn hold_a_commit(
        store: &std::sync::Arc<TaskStore>,
    ) -> (
        tokio::task::JoinHandle<impl Future<Output = Result<(), StoreError>> + use<>>,
        std::sync::mpsc::Sender<()>,
    ) {
        let (started, has_started) = std::sync::mpsc::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let store = store.clone();
        let held = tokio::task::spawn_blocking(move || {
            store.write(Commit::Now, move |_| {
                started.send(()).unwrap();
                released.recv().unwrap();
                Ok(())
            })
        });
        has_started.recv().unwrap();
        (held, release)
    }

    /// Writes queued while a commit runs share the next one, and one that fails (a conflicting
    /// id) rolls back alone: every other write of its batch is committed and answered as such.
    /// Then writes from many tasks at once: each answered write is on disk.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queued_writes_share_commits_and_fail_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(open(&dir));
        store
            .insert(&NewTask::from_request("taken", &request("first")))
            .await
            .unwrap();
        store.finish("taken", &succeeded("001")).await.unwrap();
        let before = store.commits();
        let (held, release) = hold_a_commit(&store);
        // Queued behind it, in call order; every sixth is a different request under a taken id.
        let inserts: Vec<_> = (0..300)
            .map(|i| {
                let request = if i % 50 == 7 {
                    NewTask::from_request("taken", &request("other"))
                } else {
                    NewTask::from_request(&format!("t{i}"), &request("x"))
                };
                (i, store.insert(&request))
            })
            .collect();
        release.send(()).unwrap();
        held.await.unwrap().await.unwrap();
        for (i, insert) in inserts {
            let r = insert.await;
            if i % 50 == 7 {
                assert!(matches!(r, Err(StoreError::Conflict { .. })), "{r:?}");
            } else {
                assert!(matches!(r, Ok(InsertOutcome::Inserted)), "{r:?}");
            }
        }
        // The held write's commit, then one for all 300 queued behind it.
        assert_eq!(store.commits() - before, 2);

        let writes: Vec<_> = (0..300)
            .filter(|i| i % 50 != 7)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    let id = format!("t{i}");
                    assert!(
                        store
                            .set_running(Commit::Now, &id, "001", 1, 0)
                            .await
                            .unwrap()
                    );
                    assert!(store.finish(&id, &succeeded("001")).await.unwrap());
                })
            })
            .collect();
        for w in writes {
            w.await.unwrap();
        }
        drop(store);
        // Every answered write is on disk, as a fresh process sees it.
        let store = open(&dir);
        assert_eq!(store.recovered_on_open(), 0);
        for i in (0..300).filter(|i| i % 50 != 7) {
            let rec = store.get(&format!("t{i}")).unwrap().expect("recorded");
            assert_eq!(rec.state(), TaskState::Succeeded);
        }
        assert_eq!(
            store.get("taken").unwrap().unwrap().task_description,
            "first"
        );
    }

    /// A burst longer than a caller's share of commits is finished by the overflow thread: no
    /// write is left queued, and the store closes with all of them on disk.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_is_finished_by_the_overflow_thread() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(open(&dir));
        let (held, release) = hold_a_commit(&store);
        // More than INLINE_BATCHES - 1 batches wait behind the held one.
        let n = MAX_BATCH * INLINE_BATCHES + 1;
        let inserts: Vec<_> = (0..n)
            .map(|i| store.insert(&NewTask::from_request(&format!("b{i}"), &request("x"))))
            .collect();
        release.send(()).unwrap();
        held.await.unwrap().await.unwrap();
        for insert in inserts {
            assert!(matches!(insert.await, Ok(InsertOutcome::Inserted)));
        }
        // The held write's commit, then one per MAX_BATCH queued writes at least.
        assert!(store.commits() > (n as u64).div_ceil(MAX_BATCH as u64));
        drop(store);
        let store = open(&dir);
        assert_eq!(store.unfinished().unwrap().len(), n);
    }

    /// A record queued to go with the next write is committed in that write's transaction, or
    /// when its own future is awaited, or when the store closes: never lost, never alone when
    /// another write follows.
    #[tokio::test]
    async fn a_record_queued_with_the_next_write_shares_its_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let before = store.commits();
        let record = store.insert_with_next(&NewTask::from_request("a", &request("x")));
        assert!(store.get("a").unwrap().is_none(), "not committed yet");
        assert_eq!(store.commits(), before);
        // The placement's write commits both, in one transaction.
        assert!(
            store
                .set_running(Commit::Now, "a", "001", 1, 0)
                .await
                .unwrap()
        );
        assert!(matches!(record.await, Ok(InsertOutcome::Inserted)));
        assert_eq!(store.commits(), before + 1);
        assert_eq!(store.get("a").unwrap().unwrap().state(), TaskState::Running);

        // Awaited alone, it commits itself.
        let record = store.insert_with_next(&NewTask::from_request("b", &request("x")));
        assert!(matches!(record.await, Ok(InsertOutcome::Inserted)));
        assert_eq!(store.commits(), before + 2);

        // Followed by nothing and still unawaited when the store closes: the closing store
        // commits it (and does not wait for the future), which then answers.
        let kept = store.insert_with_next(&NewTask::from_request("c", &request("x")));
        drop(store);
        assert!(matches!(kept.await, Ok(InsertOutcome::Inserted)));
        let store = open(&dir);
        assert_eq!(store.get("c").unwrap().unwrap().state(), TaskState::Queued);
    }

    /// A write already committed with another one commits nothing when it is awaited: what was
    /// queued after it (another task's record, the checkpoint thread's open-task mark) waits for
    /// its own next write instead of taking a commit of its own.
    #[tokio::test]
    async fn awaiting_a_committed_write_commits_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let a = store.insert_with_next(&NewTask::from_request("a", &request("x")));
        assert!(
            store
                .set_running(Commit::Now, "a", "001", 1, 0)
                .await
                .unwrap()
        );
        let before = store.commits();
        let b = store.insert_with_next(&NewTask::from_request("b", &request("x")));
        assert!(matches!(a.await, Ok(InsertOutcome::Inserted)));
        assert_eq!(store.commits(), before, "b waits for a write of its own");
        assert!(store.get("b").unwrap().is_none());
        assert!(matches!(b.await, Ok(InsertOutcome::Inserted)));
        assert_eq!(store.commits(), before + 1);
    }

    /// An event nobody waits on yet shares the next write's commit (a task's result a moment
    /// later), or, if none comes, commits alone [`EVENT_DELAY`] after it is first awaited.
    #[tokio::test(start_paused = true)]
    async fn an_event_nobody_waits_on_shares_the_next_commit_or_waits_its_delay() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        insert_running(&store, "a").await;
        let event = |seq| TaskEvent {
            task_id: "a".into(),
            seq,
            ..Default::default()
        };
        let before = store.commits();
        let mut assigned = Box::pin(store.append_event_soon("a", &event(1), 1));
        // Polled once (as the task's log does), it waits for company, not for the disk.
        assert!(futures::poll!(assigned.as_mut()).is_pending());
        assert_eq!(store.commits(), before);
        assert!(store.events("a").unwrap().is_empty());
        // The result's write commits both, in one transaction, with no time passing.
        let at = tokio::time::Instant::now();
        append_result(&store, "a", 2).await;
        assigned.await.unwrap();
        assert_eq!(store.commits(), before + 1);
        assert_eq!(at.elapsed(), Duration::ZERO);
        assert_eq!(store.events("a").unwrap().len(), 2);

        // Alone, it commits once its delay has passed after it was first awaited.
        store
            .insert(&NewTask::from_request("b", &request("x")))
            .await
            .unwrap();
        let lone = TaskEvent {
            task_id: "b".into(),
            seq: 1,
            ..Default::default()
        };
        let before = store.commits();
        let at = tokio::time::Instant::now();
        store.append_event_soon("b", &lone, 1).await.unwrap();
        assert_eq!(at.elapsed(), EVENT_DELAY);
        assert_eq!(store.commits(), before + 1);
        assert_eq!(store.events("b").unwrap().len(), 1);
    }

    /// A dry run's record and placement, both queued to go with the next write, are committed
    /// with its events: with its first event and its result, one commit for the whole task, and
    /// nothing of it durable before then.
    #[tokio::test(start_paused = true)]
    async fn a_dry_runs_record_and_placement_go_with_its_events_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let before = store.commits();
        let record = store.insert_with_next(&NewTask::from_request("a", &request("x")));
        let running = store.set_running(Commit::WithNext, "a", "001", 1, 0);
        let event = |seq| TaskEvent {
            task_id: "a".into(),
            seq,
            ..Default::default()
        };
        let mut assigned = Box::pin(store.append_event_soon("a", &event(1), 1));
        assert!(futures::poll!(assigned.as_mut()).is_pending());
        assert_eq!(store.commits(), before);
        assert!(store.get("a").unwrap().is_none(), "nothing committed yet");
        append_result(&store, "a", 2).await;
        assert_eq!(store.commits(), before + 1);
        assigned.await.unwrap();
        assert!(matches!(record.await, Ok(InsertOutcome::Inserted)));
        assert!(running.await.unwrap(), "placed before it finished");
        assert_eq!(store.commits(), before + 1, "awaiting them commits nothing");
        let task = store.get("a").unwrap().unwrap();
        assert_eq!(task.state(), TaskState::Succeeded);
        assert_eq!(task.programmer_id, "001");
        assert_eq!(store.events("a").unwrap().len(), 2);
    }

    /// A resumed task's latest events are read within the byte bound as well as the count, the
    /// latest always among them.
    #[tokio::test]
    async fn latest_events_stop_at_their_byte_bound() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        store
            .insert(&NewTask::from_request("a", &request("x")))
            .await
            .unwrap();
        let event = |seq, bytes| TaskEvent {
            task_id: "a".into(),
            seq,
            kind: Some(Kind::Output(crate::contract::v1::Output {
                text: "x".repeat(bytes),
                ..Default::default()
            })),
            ..Default::default()
        };
        let events: Vec<TaskEvent> = (1..=40).map(|seq| event(seq, 1000)).collect();
        let writes: Vec<_> = events
            .iter()
            .map(|e| store.append_event_soon("a", e, 0))
            .collect();
        for write in writes {
            write.await.unwrap();
        }
        let all = store.latest_events("a", 100, usize::MAX).unwrap();
        assert_eq!(all.len(), 40);
        let size = prost::Message::encoded_len(&all[0]);
        let kept = store.latest_events("a", 100, 10 * size + size / 2).unwrap();
        let seqs: Vec<u64> = kept.iter().map(|e| e.seq).collect();
        assert_eq!(
            seqs,
            (31..=40).collect::<Vec<_>>(),
            "the latest ten, in order"
        );
        assert_eq!(store.latest_events("a", 5, usize::MAX).unwrap().len(), 5);
        store
            .append_event_soon("a", &event(41, 5000), 0)
            .await
            .unwrap();
        let huge = store.latest_events("a", 100, size).unwrap();
        assert_eq!(huge.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![41]);
    }

    /// A store in a directory that does not exist is refused with an error naming its file.
    #[test]
    fn a_store_in_a_missing_directory_is_refused_naming_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing").join("tasks.sqlite3");
        let Err(e) = TaskStore::open(&path) else {
            panic!("opened a store in a directory that does not exist");
        };
        assert!(matches!(e, StoreError::Open { .. }), "{e:?}");
        let message = e.to_string();
        assert!(message.contains(&*path.to_string_lossy()), "{message}");
        assert!(message.contains("cannot open"), "{message}");
    }

    /// One handle on a store's file per process, whatever the path's spelling, so that no
    /// second descriptor is closed under the first one's lock; a new one once all are gone.
    #[test]
    fn a_store_file_has_one_handle_per_process() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tasks.sqlite3");
        let first = StoreFile::shared(&path).unwrap();
        let again = StoreFile::shared(&dir.path().join(".").join("tasks.sqlite3")).unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        let other = StoreFile::shared(&dir.path().join("other.sqlite3")).unwrap();
        assert!(!Arc::ptr_eq(&first, &other));
        drop((first, again));
        let later = StoreFile::shared(&path).unwrap();
        assert_eq!(
            Arc::strong_count(&later),
            1,
            "a new handle, not a leaked one"
        );
        later.sync().unwrap();
    }

    /// The checkpoint's catch-up passes go on while a pass finds many new frames, and stop at
    /// the first that finds few.
    #[test]
    fn catch_up_passes_stop_once_caught_up() {
        let dir = tempfile::tempdir().unwrap();
        let conn =
            open_connection(&dir.path().join("t.sqlite3"), Durability::ProcessCrash).unwrap();
        conn.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
        conn.execute_batch("CREATE TABLE t (x BLOB)").unwrap();
        let write = |n: i64| {
            for _ in 0..n {
                conn.execute("INSERT INTO t VALUES (zeroblob(100))", [])
                    .unwrap();
            }
        };
        write(10);
        let first = passive_checkpoint(&conn).unwrap();
        assert_eq!(catch_up(&conn, first).unwrap(), 1, "nothing new: one pass");
        write(CAUGHT_UP_FRAMES + 10);
        assert_eq!(
            catch_up(&conn, first).unwrap(),
            2,
            "a pass for the new frames, one more"
        );
        let (busy, log, copied): (i64, i64, i64) = conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .unwrap();
        assert_eq!((busy, copied), (0, log), "every frame copied");
    }

    /// A connection of its own to the store's file, as a tool opens it (in this process while the
    /// store is open: only the process that holds the file may, see [`STORE_VFS`]).
    fn raw_connection(dir: &tempfile::TempDir) -> Connection {
        open_connection(&dir.path().join("tasks.sqlite3"), Durability::ProcessCrash).unwrap()
    }

    /// The indexes of the tasks table.
    fn task_indexes(store: &TaskStore) -> Vec<String> {
        store
            .reader()
            .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'tasks'")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    /// The stored `open_from` mark, as the checkpoint thread leaves it.
    fn stored_mark(dir: &tempfile::TempDir) -> Option<String> {
        raw_connection(dir)
            .query_row(
                "SELECT task_id FROM task_store_marks WHERE name = 'open_from'",
                [],
                |r| r.get(0),
            )
            .optional()
            .unwrap()
    }

    /// The ids of the tasks a restart would take back, in order.
    fn open_ids(store: &TaskStore) -> Vec<String> {
        let open = store.unfinished().unwrap();
        open.into_iter().map(|u| u.task_id).collect()
    }

    /// Moves the mark as the checkpoint thread does, and commits it.
    fn advance(store: &TaskStore, last: Option<String>) -> Option<String> {
        let mark = advance_open_mark(&store.reader(), &store.writes, last).unwrap();
        store.writes.flush(usize::MAX);
        mark
    }

    /// The tasks table has no index but its ids' (each index was one more page written per
    /// commit); a restart finds the open tasks from the `open_from` mark on, which the checkpoint
    /// thread moves to the oldest open task (to the newest task when none is open), and reads
    /// only the rows from there.
    #[tokio::test]
    async fn open_tasks_are_found_from_the_mark_of_the_oldest_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let ids: Vec<String> = (0..10).map(|i| format!("t{i}")).collect();
        for id in &ids {
            insert_running(&store, id).await;
        }
        for id in &ids {
            if id != "t3" && id != "t7" {
                assert!(store.finish(id, &succeeded("001")).await.unwrap());
            }
        }
        assert_eq!(
            stored_mark(&dir),
            None,
            "no mark yet: a restart reads every row"
        );
        let mark = advance(&store, None);
        assert_eq!(mark.as_deref(), Some("t3"));
        assert_eq!(stored_mark(&dir).as_deref(), Some("t3"));
        assert_eq!(open_ids(&store), ["t3", "t7"]);

        // The oldest open task finishes: the mark moves to the next one, then past the newest.
        store.finish("t3", &succeeded("001")).await.unwrap();
        let mark = advance(&store, mark);
        assert_eq!(mark.as_deref(), Some("t7"));
        store.finish("t7", &succeeded("001")).await.unwrap();
        let mark = advance(&store, mark);
        assert_eq!(mark.as_deref(), Some("t9"), "none open: the newest task");
        assert_eq!(stored_mark(&dir).as_deref(), Some("t9"));
        // A task recorded after the mark is found.
        insert_running(&store, "t10").await;
        assert_eq!(open_ids(&store), ["t10"]);
        let plan: Vec<String> = store
            .reader()
            .prepare(&format!("EXPLAIN QUERY PLAN {}", unfinished_query()))
            .unwrap()
            .query_map([], |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert!(
            plan.iter()
                .any(|step| step.starts_with("SEARCH t USING INTEGER PRIMARY KEY (rowid>?)")),
            "reads from the mark on: {plan:?}"
        );
        assert_eq!(
            task_indexes(&store),
            ["sqlite_autoindex_tasks_1", "tasks_by_owner"],
            "only the ids' index, and the owners' (empty without authentication)"
        );

        // Closed and reopened (the closing store moves and commits the mark a last time), the
        // open task is taken back.
        drop(store);
        assert_eq!(stored_mark(&dir).as_deref(), Some("t10"));
        let store = open(&dir);
        assert_eq!(open_ids(&store), ["t10"]);
    }

    /// VACUUM may renumber rowids (SQLite says so; it keeps their order): the mark names a task,
    /// not a rowid, so the open tasks are still found after one.
    #[tokio::test]
    async fn the_mark_survives_a_vacuum() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        for i in 0..50 {
            insert_running(&store, &format!("t{i:02}")).await;
        }
        for i in 0..50 {
            if i != 40 {
                store
                    .finish(&format!("t{i:02}"), &succeeded("001"))
                    .await
                    .unwrap();
            }
        }
        // Leaves gaps in the rowids that VACUUM closes: rows deleted by hand.
        store
            .writes
            .conn
            .lock()
            .unwrap()
            .execute("DELETE FROM tasks WHERE task_id < 't30'", [])
            .unwrap();
        assert_eq!(advance(&store, None).as_deref(), Some("t40"));
        drop(store);
        raw_connection(&dir).execute_batch("VACUUM").unwrap();
        let store = open(&dir);
        assert_eq!(open_ids(&store), ["t40"]);
    }

    /// A task's lease as accepted is what a restarted manager finds with it; a store of an
    /// earlier release (no `lease_s` column) gains the column, its tasks with 0 (unknown).
    #[tokio::test]
    async fn an_unfinished_task_keeps_the_lease_it_was_accepted_with() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let task = NewTask {
            lease_s: 600,
            ..NewTask::from_request("leased", &request("x"))
        };
        store.insert(&task).await.unwrap();
        insert_running(&store, "older").await;
        drop(store);
        let leases = |store: &TaskStore| -> Vec<(String, u32)> {
            let unfinished = store.unfinished().unwrap();
            unfinished
                .into_iter()
                .map(|t| (t.task_id, t.lease_s))
                .collect()
        };
        let store = open(&dir);
        assert_eq!(
            leases(&store),
            [("leased".to_string(), 600), ("older".to_string(), 0)]
        );
        drop(store);
        raw_connection(&dir)
            .execute_batch("ALTER TABLE tasks DROP COLUMN lease_s")
            .unwrap();
        let store = open(&dir);
        assert_eq!(
            leases(&store),
            [("leased".to_string(), 0), ("older".to_string(), 0)]
        );
    }

    /// Stores of earlier releases had indexes of states and creation times: they are dropped,
    /// and their open tasks are found without a mark (every row is read once).
    #[tokio::test]
    async fn indexes_of_earlier_releases_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        insert_running(&store, "old").await;
        drop(store);
        raw_connection(&dir)
            .execute_batch(
                "DELETE FROM task_store_marks;
                 CREATE INDEX tasks_open ON tasks(state) WHERE state IN (1, 2);
                 CREATE INDEX tasks_created ON tasks(created_ms, task_id);
                 CREATE INDEX tasks_state ON tasks(state);",
            )
            .unwrap();
        let store = open(&dir);
        assert_eq!(open_ids(&store), ["old"]);
        assert_eq!(
            task_indexes(&store),
            ["sqlite_autoindex_tasks_1", "tasks_by_owner"],
            "only the ids' index, and the owners'"
        );
    }

    /// Commits do not checkpoint, yet once the store is closed the database file alone (without
    /// its WAL) holds every write.
    #[tokio::test]
    async fn closing_checkpoints_the_log_into_the_database_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        for i in 0..20 {
            let id = format!("t{i}");
            store
                .insert(&NewTask::from_request(&id, &request("x")))
                .await
                .unwrap();
            store.finish(&id, &succeeded("001")).await.unwrap();
        }
        drop(store);
        let copy = tempfile::tempdir().unwrap();
        std::fs::copy(
            dir.path().join("tasks.sqlite3"),
            copy.path().join("tasks.sqlite3"),
        )
        .unwrap();
        let store = open(&copy);
        for i in 0..20 {
            let rec = store
                .get(&format!("t{i}"))
                .unwrap()
                .expect("in the database file");
            assert_eq!(rec.state(), TaskState::Succeeded);
        }
    }

    #[tokio::test]
    async fn corrupt_rows_are_reported_not_panicked_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tasks.sqlite3");
        let store = TaskStore::open(&path).unwrap();
        store
            .insert(&NewTask::from_request("t1", &request("x")))
            .await
            .unwrap();
        let raw = raw_connection(&dir);
        raw.execute(
            "UPDATE tasks SET files = 'not json' WHERE task_id = 't1'",
            [],
        )
        .unwrap();
        assert!(matches!(
            store.get("t1"),
            Err(StoreError::Corrupt { field: "files", .. })
        ));
    }

    /// `durability: power_loss`: every commit is synced (FULL), so it must not run on an async
    /// caller's thread: a write returns before its commit, which the store's own thread makes.
    #[tokio::test]
    async fn with_power_loss_durability_commits_are_synced_and_off_the_callers_thread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tasks.sqlite3");
        let store = Arc::new(TaskStore::open_with(&path, Durability::PowerLoss).unwrap());
        let synchronous = |conn: &Connection| -> i64 {
            conn.pragma_query_value(None, "synchronous", |r| r.get(0))
                .unwrap()
        };
        assert_eq!(synchronous(&store.writes.conn.lock().unwrap()), 2, "FULL");
        assert_eq!(synchronous(&store.reader()), 2, "FULL");
        let before = store.commits();
        // Whoever commits needs the committing connection, held here: a caller that committed
        // on its own thread would wait for it and never return.
        let held = store.writes.conn.lock().unwrap();
        let (sent, returned) = mpsc::channel();
        let caller = Arc::clone(&store);
        std::thread::spawn(move || {
            let inserted = caller.insert(&NewTask::from_request("t1", &request("x")));
            let _ = sent.send(inserted);
        });
        let inserted = returned
            .recv_timeout(Duration::from_secs(60))
            .expect("the write returned without committing on its caller's thread");
        assert_eq!(
            store.commits(),
            before,
            "nothing committed while the connection is held"
        );
        drop(held);
        assert_eq!(inserted.await.unwrap(), InsertOutcome::Inserted);
        assert_eq!(store.commits(), before + 1);

        // The default keeps SQLite's NORMAL.
        drop(store);
        let store = TaskStore::open(&path).unwrap();
        assert_eq!(synchronous(&store.writes.conn.lock().unwrap()), 1, "NORMAL");
    }

    #[tokio::test]
    async fn shares_a_file_with_the_budget_ledger() {
        use crate::manager::budget::{BudgetLedger, BudgetPolicy, Clock};
        use crate::money::Usd;
        use chrono::TimeZone;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("manager.sqlite3");
        let store = TaskStore::open(&path).unwrap();
        let policy = BudgetPolicy {
            enabled: true,
            max_daily_spend: Usd::from_nanos(10_000_000_000),
            alert_threshold: None,
        };
        let clock: Clock =
            std::sync::Arc::new(|| chrono::Utc.with_ymd_and_hms(2026, 11, 3, 12, 0, 0).unwrap());
        let ledger = BudgetLedger::open(&path, policy, clock, Durability::ProcessCrash).unwrap();
        store
            .insert(&NewTask::from_request("t1", &request("x")))
            .await
            .unwrap();
        ledger
            .reserve("t1", Usd::from_nanos(5_000_000_000))
            .unwrap();
        store
            .set_running(Commit::Now, "t1", "006", 1, 0)
            .await
            .unwrap();
        ledger.settle("t1", Usd::from_nanos(1_000_000_000)).unwrap();
        store.finish("t1", &succeeded("006")).await.unwrap();
        assert_eq!(
            store.get("t1").unwrap().unwrap().state(),
            TaskState::Succeeded
        );
        assert_eq!(
            ledger.snapshot().unwrap().spent,
            Usd::from_nanos(1_000_000_000)
        );
    }
}
