//! A task's event log: numbering (`seq`), timestamps, exactly one terminal `result`, an optional
//! durable [`Journal`], and any number of followers that replay the log and then tail it.
//!
//! Both the programmer (which produces events) and the manager (which relays and adds its own)
//! write through a [`TaskEventSink`], so the numbering rules live in one place. A task's events
//! do not go to one caller's connection: they go into the task's [`TaskLog`], and every stream
//! that shows them (Execute, Dispatch, WatchTask) is a [`TaskLog::follow`]er. So a task outlives
//! the connection that started it, a caller whose stream broke re-attaches from the last seq it
//! saw, and every follower sees every event once, in order.
//!
//! An event is journaled before any follower can see it: a caller never hears of an event that a
//! restarted process could not replay. Journal writes are queued in seq order as events are
//! numbered, and an event is *published* (made visible to followers) once its write is durable,
//! so a producer does not wait for the disk between two events: a burst of events shares one
//! commit (the store commits queued writes together). Only the result is awaited by its producer,
//! which therefore knows, when `finish` returns, that the task's end is durable and published.

use crate::contract::v1::{Heartbeat, TaskEvent, TaskResult, task_event::Kind};
use futures::FutureExt;
use futures::future::BoxFuture;
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::watch;
use tonic::Status;

/// Milliseconds since the Unix epoch, for event timestamps and records.
pub fn now_unix_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The item type of a server-streaming response.
pub type EventItem = Result<TaskEvent, Status>;

/// A follower's stream of events, as tonic serves it.
pub type EventStream = Pin<Box<dyn futures::Stream<Item = EventItem> + Send + 'static>>;

/// Most events a log keeps in memory; older ones are dropped first. A follower asking for them
/// reads them back from the journal when it [`replays`](Journal::replays), and gets OUT_OF_RANGE
/// naming the oldest kept otherwise. The result is always kept: it is last.
pub const MAX_RETAINED: usize = 10_000;

/// Most bytes (events, as encoded) a log keeps in memory, however few the events: a running
/// aider task's output arrives in chunks of up to 8 KiB, so [`MAX_RETAINED`] alone would let one
/// chatty task hold ~80 MB in the programmer and as much again in the manager. Past it the
/// oldest events are dropped, as past [`MAX_RETAINED`]; the newest event always stays. A live
/// follower reads from memory while it keeps within this much of the newest event.
pub const MAX_RETAINED_BYTES: usize = 2 << 20;

/// Most events of one log that may be numbered but not yet durable: past it, a producer waits
/// for its event's journal write (so a flood of output cannot queue without bound).
pub const MAX_UNPUBLISHED: u64 = 256;

/// How often an idle WatchTask stream carries a heartbeat.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);

/// Where a log's events are made durable before followers see them.
pub trait Journal: Send + Sync + 'static {
    /// Stores `event` of `task_id`. `upstream_seq` is the seq of the programmer event it relays
    /// (manager only; 0 for events made here). Resolves once the event is durable.
    fn append(
        &self,
        task_id: &str,
        event: &TaskEvent,
        upstream_seq: u64,
    ) -> BoxFuture<'static, Result<(), String>>;

    /// [`append`](Self::append) for an event nobody waits on yet (not a result): the journal
    /// may hold the write back briefly to commit it with the next one, so events that arrive
    /// together, of one task or many, share a commit. It is still durable before it resolves.
    fn append_soon(
        &self,
        task_id: &str,
        event: &TaskEvent,
        upstream_seq: u64,
    ) -> BoxFuture<'static, Result<(), String>> {
        self.append(task_id, event, upstream_seq)
    }

    /// True when [`replay`](Self::replay) reads back what this journal stored, so a follower
    /// may ask for events its log no longer keeps in memory.
    fn replays(&self) -> bool {
        false
    }

    /// Up to `limit` stored events of `task_id` with seq > `after_seq`, in seq order (empty when
    /// this journal cannot read back: see [`replays`](Self::replays)). A follower reads the
    /// events its log dropped from memory here, a page at a time.
    fn replay(
        &self,
        _task_id: &str,
        _after_seq: u64,
        _limit: usize,
    ) -> BoxFuture<'static, Result<Vec<TaskEvent>, String>> {
        Box::pin(async { Ok(Vec::new()) })
    }
}

/// Most events a follower reads back from the journal at once: what it holds in memory while
/// it replays events its log no longer keeps.
pub const REPLAY_PAGE: usize = 512;

#[derive(Debug, Default)]
struct LogState {
    /// Numbered events, in seq order; followers see those up to the published seq.
    events: VecDeque<TaskEvent>,
    /// Bytes of `events`, as encoded.
    bytes: usize,
    /// Seq of the latest numbered event (0: none yet).
    latest: u64,
    /// The result was numbered: nothing more is appended.
    closed: bool,
}

impl LogState {
    /// Keeps `event` (the newest), then drops the oldest events past [`MAX_RETAINED`] or
    /// [`MAX_RETAINED_BYTES`].
    fn keep(&mut self, event: TaskEvent) {
        self.bytes += prost::Message::encoded_len(&event);
        self.events.push_back(event);
        while self.events.len() > 1
            && (self.events.len() > MAX_RETAINED || self.bytes > MAX_RETAINED_BYTES)
        {
            if let Some(dropped) = self.events.pop_front() {
                self.bytes -= prost::Message::encoded_len(&dropped);
            }
        }
    }
}

/// One task's events, in memory (bounded by [`MAX_RETAINED`] and [`MAX_RETAINED_BYTES`]) and,
/// with a journal, on disk.
pub struct TaskLog {
    task_id: Arc<str>,
    state: Mutex<LogState>,
    /// The latest published seq (every event up to it is durable); followers wait on it.
    published: Arc<watch::Sender<u64>>,
    /// How many followers are open now (a programmer's lease watches this).
    followers: watch::Sender<usize>,
    journal: Option<Arc<dyn Journal>>,
}

impl std::fmt::Debug for TaskLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskLog")
            .field("task_id", &self.task_id)
            .field("latest", &self.latest_seq())
            .finish_non_exhaustive()
    }
}

impl TaskLog {
    /// Bytes of the events this log holds in memory, as encoded: what keeping a finished log
    /// costs its process.
    pub fn retained_bytes(&self) -> usize {
        self.state().bytes
    }

    /// An empty log for `task_id`.
    pub fn new(task_id: &str, journal: Option<Arc<dyn Journal>>) -> Arc<Self> {
        Self::restore(task_id, Vec::new(), journal)
    }

    /// A log holding `events` already journaled (a restarted process rebuilding its tasks).
    /// They must be in seq order; the log continues numbering after the last.
    pub fn restore(
        task_id: &str,
        events: Vec<TaskEvent>,
        journal: Option<Arc<dyn Journal>>,
    ) -> Arc<Self> {
        let latest = events.last().map_or(0, |e| e.seq);
        let closed = events
            .last()
            .is_some_and(|e| matches!(e.kind, Some(Kind::Result(_))));
        let mut state = LogState {
            latest,
            closed,
            ..LogState::default()
        };
        for event in events {
            state.keep(event);
        }
        Arc::new(Self {
            task_id: task_id.into(),
            state: Mutex::new(state),
            published: Arc::new(watch::channel(latest).0),
            followers: watch::channel(0).0,
            journal,
        })
    }

    fn state(&self) -> MutexGuard<'_, LogState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The task id events are stamped with.
    pub fn task_id(&self) -> &str {
        &self.task_id
    }

    /// Seq of the latest published event (0 before the first).
    pub fn latest_seq(&self) -> u64 {
        *self.published.borrow()
    }

    /// True once the terminal result was published.
    pub fn is_finished(&self) -> bool {
        self.with_result(|_| ()).is_some()
    }

    /// The result, once published.
    pub fn result(&self) -> Option<TaskResult> {
        self.with_result(TaskResult::clone)
    }

    /// `f` of the result, once published, looked at in place (the result, diff and all, is
    /// copied only by a caller that wants it).
    fn with_result<T>(&self, f: impl FnOnce(&TaskResult) -> T) -> Option<T> {
        let published = self.latest_seq();
        match self.state().events.back() {
            Some(TaskEvent {
                seq,
                kind: Some(Kind::Result(r)),
                ..
            }) if *seq <= published => Some(f(r)),
            _ => None,
        }
    }

    /// The number of open followers, to watch (see the programmer's lease).
    pub fn followers(&self) -> watch::Receiver<usize> {
        self.followers.subscribe()
    }

    /// Appends `kind` unless the result was already appended (then returns false): numbers and
    /// stamps it and queues its journal write (in seq order, under the state lock), then
    /// publishes it once the write is durable. A non-terminal event returns without waiting for
    /// that (unless [`MAX_UNPUBLISHED`] events are already waiting), and its write may share a
    /// later commit ([`Journal::append_soon`]); the result returns once it is published.
    async fn append(&self, kind: Kind, upstream_seq: u64) -> bool {
        let terminal = matches!(kind, Kind::Result(_));
        let (seq, durable) = {
            let mut state = self.state();
            if state.closed {
                return false;
            }
            let event = TaskEvent {
                task_id: self.task_id.to_string(),
                seq: state.latest + 1,
                timestamp_ms: now_unix_ms(),
                kind: Some(kind),
            };
            let durable = self.journal.as_ref().map(|journal| {
                if terminal {
                    journal.append(&self.task_id, &event, upstream_seq)
                } else {
                    journal.append_soon(&self.task_id, &event, upstream_seq)
                }
            });
            let seq = event.seq;
            state.latest = seq;
            state.closed = terminal;
            state.keep(event);
            (seq, durable)
        };
        let Some(mut durable) = durable else {
            publish(&self.published, &self.task_id, seq, Ok(()));
            return true;
        };
        // A journal that wrote at once (the programmer's file) publishes here, without a task.
        if let Some(written) = (&mut durable).now_or_never() {
            publish(&self.published, &self.task_id, seq, written);
            return true;
        }
        if terminal || seq.saturating_sub(self.latest_seq()) > MAX_UNPUBLISHED {
            publish(&self.published, &self.task_id, seq, durable.await);
        } else {
            let (published, task_id) = (self.published.clone(), self.task_id.clone());
            tokio::spawn(async move { publish(&published, &task_id, seq, durable.await) });
        }
        true
    }

    /// Follows the log: the events with seq > `after_seq`, then new ones as they are published,
    /// ending after the result. Events no longer kept in memory are read back from the journal,
    /// a page at a time; OUT_OF_RANGE when the journal cannot read back. With `heartbeat`, an
    /// idle stream carries a [`Heartbeat`] that often.
    pub fn follow(
        self: &Arc<Self>,
        after_seq: u64,
        heartbeat: Option<Duration>,
    ) -> Result<EventStream, Status> {
        {
            let state = self.state();
            if let Some(oldest) = state.events.front().map(|e| e.seq)
                && after_seq.saturating_add(1) < oldest
                && !self.journal.as_ref().is_some_and(|j| j.replays())
            {
                return Err(out_of_range(&self.task_id, oldest));
            }
            let published = self.latest_seq();
            if after_seq > published {
                return Err(Status::out_of_range(format!(
                    "after_seq: task {:?} has no event {after_seq} yet (latest is {published})",
                    self.task_id
                )));
            }
        }
        let follower = Follower {
            log: self.clone(),
            cursor: after_seq,
            replayed: VecDeque::new(),
            published: self.published.subscribe(),
            heartbeat,
            // Followed from its result on (a client resuming at the seq it last saw, as an
            // EventSource does once the stream ended): nothing is left to send, ever.
            done: after_seq >= self.latest_seq() && self.is_finished(),
        };
        self.followers.send_modify(|n| *n += 1);
        Ok(Box::pin(futures::stream::unfold(follower, |mut f| async {
            let item = f.next().await?;
            Some((item, f))
        })))
    }

    /// The event after `cursor`: `Ok(Some)`, `Ok(None)` if not published yet, or the seq of the
    /// oldest kept event when the one after `cursor` was dropped.
    fn next_after(&self, cursor: u64) -> Result<Option<TaskEvent>, u64> {
        if cursor >= self.latest_seq() {
            return Ok(None);
        }
        let state = self.state();
        let Some(oldest) = state.events.front().map(|e| e.seq) else {
            return Ok(None);
        };
        if cursor + 1 < oldest {
            return Err(oldest);
        }
        let index = usize::try_from(cursor + 1 - oldest).unwrap_or(usize::MAX);
        Ok(state.events.get(index).cloned())
    }
}

/// Publishes event `seq` of `task_id` once its journal write has ended: makes it (and, since
/// the journal commits in order, every earlier one) visible to followers. A failed write is
/// logged and the event published anyway: losing durability of one event beats stopping the
/// work.
fn publish(published: &watch::Sender<u64>, task_id: &str, seq: u64, written: Result<(), String>) {
    if let Err(e) = written {
        tracing::error!(%task_id, seq, "event journal: {e}");
    }
    published.send_if_modified(|p| {
        let newer = seq > *p;
        if newer {
            *p = seq;
        }
        newer
    });
}

fn out_of_range(task_id: &str, oldest: u64) -> Status {
    Status::out_of_range(format!(
        "after_seq: events of task {task_id:?} before seq {oldest} are no longer kept; \
         follow it with after_seq >= {}",
        oldest - 1
    ))
}

/// One open follower of a [`TaskLog`]; counted in [`TaskLog::followers`] until dropped.
struct Follower {
    log: Arc<TaskLog>,
    cursor: u64,
    /// A page read back from the journal, not yet yielded (events the log no longer keeps).
    replayed: VecDeque<TaskEvent>,
    published: watch::Receiver<u64>,
    heartbeat: Option<Duration>,
    done: bool,
}

impl Follower {
    async fn next(&mut self) -> Option<EventItem> {
        if self.done {
            return None;
        }
        loop {
            let next = match self.replayed.pop_front() {
                Some(event) => Ok(Some(event)),
                None => self.log.next_after(self.cursor),
            };
            match next {
                Ok(Some(event)) => {
                    self.cursor = event.seq;
                    self.done = matches!(event.kind, Some(Kind::Result(_)));
                    return Some(Ok(event));
                }
                Ok(None) => {}
                Err(oldest) => {
                    // The log dropped what this follower has not read yet: read it back.
                    match self.read_back(oldest).await {
                        Ok(()) => continue,
                        Err(status) => {
                            self.done = true;
                            return Some(Err(status));
                        }
                    }
                }
            }
            let idle = async {
                match self.heartbeat {
                    Some(every) => tokio::time::sleep(every).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                changed = self.published.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                }
                () = idle => {
                    return Some(Ok(TaskEvent {
                        task_id: self.log.task_id.to_string(),
                        seq: 0,
                        timestamp_ms: now_unix_ms(),
                        kind: Some(Kind::Heartbeat(Heartbeat { latest_seq: self.log.latest_seq() })),
                    }));
                }
            }
        }
    }
}

impl Follower {
    /// Fills `replayed` with the journal's next page after the cursor; OUT_OF_RANGE (naming
    /// `oldest`, the log's oldest kept event) when the journal cannot read back or has nothing
    /// after the cursor.
    async fn read_back(&mut self, oldest: u64) -> Result<(), Status> {
        let Some(journal) = self.log.journal.as_ref().filter(|j| j.replays()) else {
            return Err(out_of_range(&self.log.task_id, oldest));
        };
        let page = journal
            .replay(&self.log.task_id, self.cursor, REPLAY_PAGE)
            .await
            .map_err(|e| {
                Status::unavailable(format!(
                    "task {:?}: reading back its events: {e}",
                    self.log.task_id
                ))
            })?;
        if page.is_empty() {
            return Err(out_of_range(&self.log.task_id, oldest));
        }
        // What the log still keeps comes from the log: it may not be published yet. A journal
        // that lost an event's write (see `publish`) leaves a gap, skipped rather than fatal.
        let cursor = self.cursor;
        self.replayed = page
            .into_iter()
            .filter(|e| e.seq > cursor && e.seq < oldest)
            .collect();
        if self.replayed.is_empty() {
            self.cursor = oldest - 1;
        }
        Ok(())
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.log.followers.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Writes one task's events into its [`TaskLog`]. Cheap to clone; clones share the numbering.
#[derive(Debug, Clone)]
pub struct TaskEventSink {
    log: Arc<TaskLog>,
}

impl TaskEventSink {
    /// A sink writing into `log`.
    pub fn new(log: Arc<TaskLog>) -> Self {
        Self { log }
    }

    /// The log this sink writes.
    pub fn log(&self) -> &Arc<TaskLog> {
        &self.log
    }

    /// The task id events are stamped with.
    pub fn task_id(&self) -> &str {
        self.log.task_id()
    }

    /// Appends a non-terminal event. Returns false when the result was already sent.
    pub async fn send(&self, kind: Kind) -> bool {
        self.log.append(kind, 0).await
    }

    /// Appends an event relayed from the programmer's event `upstream_seq` (journaled with it, so
    /// a restarted manager knows where to resume following the programmer).
    pub async fn send_relayed(&self, kind: Kind, upstream_seq: u64) -> bool {
        self.log.append(kind, upstream_seq).await
    }

    /// Appends the terminal result. Only the first call does; later ones are ignored, so a log
    /// never has two results.
    pub async fn finish(&self, result: impl Into<Box<TaskResult>>) -> bool {
        self.log.append(Kind::Result(result.into()), 0).await
    }

    /// True once the terminal result was sent.
    pub fn is_finished(&self) -> bool {
        self.log.is_finished()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::contract::v1::{Output, TaskState};
    use futures::StreamExt;

    /// An output chunk, for tests of event logs.
    pub(crate) fn output(text: &str) -> Kind {
        Kind::Output(Output {
            text: text.into(),
            stream: "stdout".into(),
            attempt: 1,
        })
    }

    fn succeeded() -> TaskResult {
        TaskResult {
            status: TaskState::Succeeded as i32,
            ..Default::default()
        }
    }

    async fn seqs(mut stream: EventStream) -> Vec<u64> {
        let mut seqs = Vec::new();
        while let Some(Ok(ev)) = stream.next().await {
            seqs.push(ev.seq);
        }
        seqs
    }

    #[tokio::test]
    async fn numbers_events_and_keeps_one_result() {
        let log = TaskLog::new("t1", None);
        let sink = TaskEventSink::new(log.clone());
        let live = log.follow(0, None).unwrap();
        assert!(sink.send(output("a")).await);
        let clone = sink.clone();
        assert!(clone.send(output("b")).await);
        assert!(sink.finish(succeeded()).await);
        assert!(!clone.finish(succeeded()).await, "second result is dropped");
        assert!(!sink.send(output("late")).await, "nothing after the result");
        assert_eq!(seqs(live).await, vec![1, 2, 3]);
        // A follower that joins later replays, from any point.
        assert_eq!(seqs(log.follow(0, None).unwrap()).await, vec![1, 2, 3]);
        assert_eq!(seqs(log.follow(2, None).unwrap()).await, vec![3]);
        assert_eq!(log.result().map(|r| r.status), Some(succeeded().status));
        // Followed from the result on (a client resuming at the last seq it saw): it ends at
        // once, heartbeat or not, instead of staying open with nothing ever to send.
        for heartbeat in [None, Some(HEARTBEAT_EVERY)] {
            let mut after_result = log.follow(3, heartbeat).unwrap();
            assert!(
                matches!(
                    futures::FutureExt::now_or_never(after_result.next()),
                    Some(None)
                ),
                "heartbeat {heartbeat:?}"
            );
        }
    }

    #[tokio::test]
    async fn followers_are_counted_until_dropped() {
        let log = TaskLog::new("t2", None);
        let followers = log.followers();
        let a = log.follow(0, None).unwrap();
        let b = log.follow(0, None).unwrap();
        assert_eq!(*followers.borrow(), 2);
        drop(a);
        assert_eq!(*followers.borrow(), 1);
        drop(b);
        assert_eq!(*followers.borrow(), 0);
    }

    #[tokio::test]
    async fn asking_for_dropped_events_is_out_of_range() {
        let log = TaskLog::new("t3", None);
        let sink = TaskEventSink::new(log.clone());
        for i in 0..MAX_RETAINED + 5 {
            sink.send(output(&i.to_string())).await;
        }
        let err = log.follow(0, None).err().expect("out of range");
        assert_eq!(err.code(), tonic::Code::OutOfRange);
        assert!(err.message().contains("before seq 6"), "{}", err.message());
        assert!(log.follow(5, None).is_ok());
        let ahead = log
            .follow(MAX_RETAINED as u64 + 6, None)
            .err()
            .expect("ahead");
        assert_eq!(ahead.code(), tonic::Code::OutOfRange);
        let last = log.follow(u64::MAX, None).err().expect("far ahead");
        assert_eq!(last.code(), tonic::Code::OutOfRange, "not an overflow");
    }

    /// A journal that keeps every event and reads them back, as the manager's store does.
    #[derive(Default)]
    struct Kept(Mutex<Vec<TaskEvent>>);
    impl Journal for Kept {
        fn append(
            &self,
            _: &str,
            event: &TaskEvent,
            _: u64,
        ) -> BoxFuture<'static, Result<(), String>> {
            self.0.lock().unwrap().push(event.clone());
            Box::pin(async { Ok(()) })
        }
        fn replays(&self) -> bool {
            true
        }
        fn replay(
            &self,
            _: &str,
            after_seq: u64,
            limit: usize,
        ) -> BoxFuture<'static, Result<Vec<TaskEvent>, String>> {
            let page: Vec<TaskEvent> = self
                .0
                .lock()
                .unwrap()
                .iter()
                .filter(|e| e.seq > after_seq)
                .take(limit)
                .cloned()
                .collect();
            Box::pin(async move { Ok(page) })
        }
    }

    #[tokio::test]
    async fn events_no_longer_kept_are_read_back_from_a_journal_that_replays() {
        let journal = Arc::new(Kept::default());
        let log = TaskLog::new("t7", Some(journal.clone()));
        let sink = TaskEventSink::new(log.clone());
        // A follower that reads nothing while the log runs far past its window.
        let mut lagging = log.follow(0, None).unwrap();
        let total = MAX_RETAINED + 2 * REPLAY_PAGE + 7;
        for i in 0..total {
            sink.send(output(&i.to_string())).await;
        }
        sink.finish(succeeded()).await;
        assert!(
            log.state().events.front().unwrap().seq > 1,
            "the log dropped its oldest events"
        );
        let every: Vec<u64> = (1..=total as u64 + 1).collect();
        let mut seen = Vec::new();
        while let Some(event) = lagging.next().await {
            seen.push(event.expect("no error").seq);
        }
        assert_eq!(
            seen, every,
            "the lagging follower read every event once, in order"
        );
        assert_eq!(seqs(log.follow(0, None).unwrap()).await, every);
        assert_eq!(
            seqs(log.follow(REPLAY_PAGE as u64 + 3, None).unwrap()).await,
            every[REPLAY_PAGE + 3..]
        );
        // A gap the journal lost (a failed write) is skipped, not fatal.
        journal.0.lock().unwrap().retain(|e| e.seq != 5);
        let gapped = seqs(log.follow(0, None).unwrap()).await;
        assert_eq!(gapped.len(), every.len() - 1);
        assert!(!gapped.contains(&5) && gapped.windows(2).all(|w| w[0] < w[1]));
        // A journal that lost everything before the window: OUT_OF_RANGE, as without one.
        journal.0.lock().unwrap().clear();
        let mut lost = log.follow(0, None).unwrap();
        let err = lost.next().await.unwrap().expect_err("out of range");
        assert_eq!(err.code(), tonic::Code::OutOfRange);
        assert!(lost.next().await.is_none());
    }

    /// A journal whose writes end only when the test says so, in order (like the store's
    /// writer), and that reads back only the writes that ended: a slow disk.
    #[derive(Default)]
    struct Gated {
        pending: Mutex<Vec<(TaskEvent, tokio::sync::oneshot::Sender<()>)>>,
        durable: Kept,
    }
    impl Journal for Gated {
        fn append(
            &self,
            _: &str,
            event: &TaskEvent,
            _: u64,
        ) -> BoxFuture<'static, Result<(), String>> {
            let (done, written) = tokio::sync::oneshot::channel();
            self.pending.lock().unwrap().push((event.clone(), done));
            Box::pin(async move { written.await.map_err(|e| e.to_string()) })
        }
        fn replays(&self) -> bool {
            true
        }
        fn replay(
            &self,
            task_id: &str,
            after_seq: u64,
            limit: usize,
        ) -> BoxFuture<'static, Result<Vec<TaskEvent>, String>> {
            self.durable.replay(task_id, after_seq, limit)
        }
    }
    impl Gated {
        fn all_durable(&self) {
            let pending = self.pending.lock().unwrap().len();
            self.durable(pending);
        }
        /// Makes the oldest `upto` pending writes durable.
        fn durable(&self, upto: usize) {
            for (event, done) in self.pending.lock().unwrap().drain(..upto) {
                self.durable.0.lock().unwrap().push(event);
                let _ = done.send(());
            }
        }
    }

    #[tokio::test]
    async fn a_chatty_log_keeps_at_most_its_byte_budget_and_followers_read_the_rest_back() {
        let journal = Arc::new(Gated::default());
        let log = TaskLog::new("t8", Some(journal.clone()));
        let sink = TaskEventSink::new(log.clone());
        let mut live = log.follow(0, None).unwrap();
        // Large chunks, more than the budget holds, written while the journal has made none of
        // them durable yet.
        let chunk = "x".repeat(16 << 10);
        let chunks = MAX_RETAINED_BYTES / chunk.len() + 40;
        assert!(
            (chunks as u64) < MAX_UNPUBLISHED,
            "the producer never waits here"
        );
        for i in 0..chunks {
            assert!(sink.send(output(&format!("{i} {chunk}"))).await);
        }
        let kept_bytes: usize = log
            .state()
            .events
            .iter()
            .map(prost::Message::encoded_len)
            .sum();
        assert_eq!(log.retained_bytes(), kept_bytes);
        assert!(log.retained_bytes() <= MAX_RETAINED_BYTES);
        let oldest = log.state().events.front().unwrap().seq;
        assert!(
            oldest > 30,
            "the oldest events left memory (oldest kept: {oldest})"
        );
        journal.all_durable();
        // The live follower reads every event once, in order: the dropped ones from the journal.
        for seq in 1..=chunks as u64 {
            let event = live.next().await.unwrap().expect("no error");
            assert_eq!(event.seq, seq);
            let Some(Kind::Output(out)) = event.kind else {
                panic!("output expected")
            };
            assert!(out.text.starts_with(&format!("{} ", seq - 1)));
        }
        // One event larger than the whole budget still stays, as the newest.
        let huge = "y".repeat(MAX_RETAINED_BYTES + 1);
        let finishing = tokio::spawn({
            let sink = sink.clone();
            async move {
                sink.send(output(&huge)).await;
                sink.finish(succeeded()).await
            }
        });
        while !finishing.is_finished() {
            journal.all_durable();
            tokio::task::yield_now().await;
        }
        assert!(finishing.await.unwrap());
        assert_eq!(
            log.state().events.len(),
            1,
            "only the result is left in memory"
        );
        assert!(log.result().is_some());
        assert_eq!(seqs(live).await, vec![chunks as u64 + 1, chunks as u64 + 2]);
        // A log restored from many large events keeps the same budget.
        let restored = TaskLog::restore("t8", journal.durable.0.lock().unwrap().clone(), None);
        assert!(restored.retained_bytes() <= MAX_RETAINED_BYTES);
        assert!(restored.is_finished());
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_follower_gets_heartbeats_with_the_latest_seq() {
        let log = TaskLog::new("t4", None);
        let sink = TaskEventSink::new(log.clone());
        sink.send(output("a")).await;
        let mut stream = log.follow(1, Some(HEARTBEAT_EVERY)).unwrap();
        let beat = stream.next().await.unwrap().unwrap();
        assert_eq!(beat.seq, 0);
        assert!(matches!(
            beat.kind,
            Some(Kind::Heartbeat(Heartbeat { latest_seq: 1 }))
        ));
        sink.finish(succeeded()).await;
        assert_eq!(stream.next().await.unwrap().unwrap().seq, 2);
        assert!(stream.next().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn events_are_published_only_once_durable_and_a_producer_does_not_wait_between_them() {
        let journal = Arc::new(Gated::default());
        let log = TaskLog::new("t6", Some(journal.clone()));
        let sink = TaskEventSink::new(log.clone());
        let mut live = log.follow(0, None).unwrap();
        // Two events queued without waiting for their writes.
        assert!(sink.send(output("a")).await);
        assert!(sink.send(output("b")).await);
        assert_eq!(
            log.latest_seq(),
            0,
            "nothing is published before it is durable"
        );
        assert!(
            tokio::time::timeout(Duration::from_secs(1), live.next())
                .await
                .is_err(),
            "a follower sees nothing yet"
        );
        let after = log.follow(0, None).unwrap();
        journal.durable(1);
        assert_eq!(live.next().await.unwrap().unwrap().seq, 1);
        assert_eq!(log.latest_seq(), 1);
        // The result waits for its own write; until then the task is not finished.
        let finishing = tokio::spawn({
            let sink = sink.clone();
            async move { sink.finish(succeeded()).await }
        });
        tokio::task::yield_now().await;
        assert!(!log.is_finished() && log.result().is_none());
        assert!(!sink.send(output("late")).await, "nothing after the result");
        journal.durable(2);
        assert!(finishing.await.unwrap());
        assert!(log.is_finished());
        assert_eq!(seqs(live).await, vec![2, 3]);
        assert_eq!(seqs(after).await, vec![1, 2, 3]);
    }

    struct Recorder(Mutex<Vec<(u64, u64)>>);
    impl Journal for Recorder {
        fn append(
            &self,
            _: &str,
            event: &TaskEvent,
            upstream: u64,
        ) -> BoxFuture<'static, Result<(), String>> {
            self.0.lock().unwrap().push((event.seq, upstream));
            Box::pin(async { Ok(()) })
        }
    }

    #[tokio::test]
    async fn events_are_journaled_with_their_upstream_seq_and_restored() {
        let journal = Arc::new(Recorder(Mutex::new(Vec::new())));
        let log = TaskLog::new("t5", Some(journal.clone()));
        let sink = TaskEventSink::new(log.clone());
        sink.send(output("a")).await;
        sink.send_relayed(output("b"), 7).await;
        assert_eq!(*journal.0.lock().unwrap(), vec![(1, 0), (2, 7)]);
        let events: Vec<TaskEvent> = log.state().events.iter().cloned().collect();
        let restored = TaskLog::restore("t5", events, None);
        assert_eq!(restored.latest_seq(), 2);
        TaskEventSink::new(restored.clone())
            .finish(succeeded())
            .await;
        assert_eq!(seqs(restored.follow(0, None).unwrap()).await, vec![1, 2, 3]);
    }
}
