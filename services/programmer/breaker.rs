//! Circuit breaker on a programmer's *primary* LLM.
//!
//! One [`Breaker`] exists per programmer and is shared (it is `Clone`, backed by an
//! `Arc<Mutex<_>>`) by all tasks that programmer runs concurrently. It answers one question for
//! each new task — "does attempt 1 use the primary or the backup?" — and learns from the verdicts
//! the tasks report about the primary.
//!
//! # Semantics (DESIGN.md, "Decided semantics")
//!
//! - **Closed**: tasks use the primary. Every LLM-class failure of a primary attempt is recorded
//!   with its time in a sliding window of [`BreakerPolicy::window`]. Successes do *not* erase
//!   failures (the original decremented the count on success, so a flapping primary never tripped).
//! - When `failure_threshold` failures lie within the window, the breaker **opens** for
//!   [`BreakerPolicy::cooldown`]: every new task starts on the backup.
//! - After the cooldown it is **half-open**: exactly one new task gets the primary as a *probe*;
//!   all others keep using the backup until the probe has a verdict.
//!   - probe success → closed, recorded failures cleared;
//!   - probe failure → open for another full cooldown;
//!   - probe without verdict (its [`PrimaryTicket`] dropped: task cancelled, deadline, panic)
//!     → open for another full cooldown.
//! - Failures of ordinary (non-probe) primary attempts admitted *before* the breaker opened still
//!   count when they arrive later. Only the probe's verdict moves a half-open breaker. Verdicts of
//!   attempts admitted before a probe closed the breaker are ignored: the probe has proven the
//!   primary healthy since then ("counts reset").
//! - `enabled: false`: every task uses the primary and the breaker never opens.
//!
//! Callers record only LLM-class failures (timeout, api_error, rate_limit, model_unavailable);
//! caller errors, git errors and "the LLM answered but its edit did not apply" must be reported as
//! [`PrimaryTicket::primary_succeeded`] (the endpoint is healthy) or simply dropped for non-probes.
//!
//! # Time
//!
//! All time comes from tokio's clock ([`tokio::time::Instant`]), so tests run with
//! `start_paused = true`. Open → half-open happens lazily: it is applied (and announced) by the
//! first [`Breaker::admit`] or [`Breaker::snapshot`] after the cooldown has elapsed. Nothing
//! needs a timer task.
//!
//! # Observing transitions
//!
//! Every state change is broadcast as a [`Transition`] `{ from, to }` on a
//! [`tokio::sync::broadcast`] channel ([`Breaker::subscribe`]); any number of subscribers (metrics,
//! logs, the persistence writer) each see every transition in order. The breaker itself does not
//! log: only the subscriber knows which programmer it belongs to. A subscriber that falls more than
//! [`TRANSITION_CHANNEL_CAPACITY`] transitions behind receives `Lagged`; [`Breaker::snapshot`]
//! stays the authoritative current state.
//!
//! # Persistence
//!
//! The original lost its breaker state on restart. [`Breaker::to_persisted`] captures the state
//! with wall-clock (unix-ms) timestamps, [`Breaker::restore`] maps them back onto tokio instants so
//! the time that passed while the process was down counts, and [`BreakerStore`] keeps it in a small
//! JSON file written atomically.

use std::collections::VecDeque;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::sync::broadcast;
use tokio::time::Instant;

/// How many transitions a slow subscriber may fall behind before it sees `Lagged`.
pub const TRANSITION_CHANNEL_CAPACITY: usize = 64;

/// Version of the [`PersistedBreaker`] file format; other versions are ignored on load.
pub const PERSISTED_FORMAT_VERSION: u32 = 1;

// ===== policy, states, snapshots =====

/// When the breaker opens and for how long. Plain values so this module does not depend on the
/// config model (the programmer maps `circuit_breaker:` from the YAML onto this).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerPolicy {
    /// `false`: every task uses the primary and the breaker never opens.
    pub enabled: bool,
    /// Failures within `window` that open the breaker. `0` is treated as `1`.
    pub failure_threshold: u32,
    /// Length of the sliding window failures are counted in (`window_minutes`).
    pub window: Duration,
    /// How long the breaker stays open before a probe may try the primary (`cooldown_minutes`).
    pub cooldown: Duration,
}

impl BreakerPolicy {
    fn threshold(&self) -> usize {
        usize::try_from(self.failure_threshold.max(1)).unwrap_or(usize::MAX)
    }
}

/// The breaker's state, as reported in status, metrics and transitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Tasks use the primary.
    Closed,
    /// Tasks use the backup until the cooldown ends.
    Open,
    /// Cooldown over: one probe task may use the primary, the others use the backup.
    HalfOpen,
}

impl BreakerState {
    /// Stable lower-case name for metric labels and JSON (`closed`, `open`, `half_open`).
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

impl std::fmt::Display for BreakerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One state change, broadcast to [`Breaker::subscribe`]rs in the order it happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// State before the change.
    pub from: BreakerState,
    /// State after the change.
    pub to: BreakerState,
}

/// Point-in-time view for GetStatus, `/health` and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSnapshot {
    /// Current state (after applying an elapsed cooldown).
    pub state: BreakerState,
    /// Recorded primary failures still inside the sliding window.
    pub failures_in_window: u32,
    /// Time until the breaker turns half-open; `Some` only while open.
    pub cooldown_remaining: Option<Duration>,
    /// What a task admitted now would start on: `true` = backup.
    pub using_backup: bool,
    /// How many times the breaker has transitioned to open (closed→open and half-open→open).
    pub opened_total: u64,
}

// ===== the breaker =====

/// Circuit breaker on one programmer's primary LLM; cheap to clone, all clones share state.
#[derive(Clone)]
pub struct Breaker {
    shared: Arc<Shared>,
}

struct Shared {
    inner: Mutex<Inner>,
    transitions: broadcast::Sender<Transition>,
}

struct Inner {
    /// The policy in force (a re-read configuration may change it: [`Breaker::set_policy`]).
    policy: BreakerPolicy,
    /// Times of recorded primary failures, oldest first.
    failures: VecDeque<Instant>,
    phase: Phase,
    opened_total: u64,
    /// Bumped when a probe closes the breaker; tickets from older epochs no longer count.
    epoch: u64,
    /// Id handed to the next probe, so a stale probe ticket can never settle a newer probe.
    next_probe: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Closed,
    Open { since: Instant, until: Instant },
    HalfOpen { probe: Option<u64> },
}

impl Phase {
    fn state(self) -> BreakerState {
        match self {
            Phase::Closed => BreakerState::Closed,
            Phase::Open { .. } => BreakerState::Open,
            Phase::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }
}

impl std::fmt::Debug for Breaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breaker")
            .field("policy", &self.policy())
            .field("snapshot", &self.snapshot())
            .finish()
    }
}

impl Breaker {
    /// A closed breaker with no recorded failures.
    pub fn new(policy: BreakerPolicy) -> Self {
        Self::with_inner(Inner {
            policy,
            failures: VecDeque::new(),
            phase: Phase::Closed,
            opened_total: 0,
            epoch: 0,
            next_probe: 0,
        })
    }

    fn with_inner(inner: Inner) -> Self {
        let (transitions, _) = broadcast::channel(TRANSITION_CHANNEL_CAPACITY);
        Breaker {
            shared: Arc::new(Shared {
                inner: Mutex::new(inner),
                transitions,
            }),
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> BreakerPolicy {
        self.lock().policy
    }

    /// Puts `policy` in force (a re-read configuration). Disabled, the breaker closes and forgets
    /// its failures (tickets handed out before no longer count). Enabled: an open breaker's
    /// cooldown runs from when it opened for the new length; the failures still in the new
    /// window that reach the new threshold open a closed breaker now.
    pub fn set_policy(&self, policy: BreakerPolicy) {
        let now = Instant::now();
        let mut inner = self.lock();
        if inner.policy == policy {
            return;
        }
        inner.policy = policy;
        if !policy.enabled {
            self.close_and_forget(&mut inner);
            return;
        }
        if let Phase::Open { since, .. } = inner.phase {
            inner.phase = Phase::Open {
                since,
                until: since + policy.cooldown,
            };
        }
        self.advance(&mut inner, now);
        self.prune(&mut inner, now);
        if inner.phase == Phase::Closed && inner.failures.len() >= policy.threshold() {
            self.open(&mut inner, now);
        }
    }

    /// Receive every future [`Transition`] (see the module docs on lagging).
    pub fn subscribe(&self) -> broadcast::Receiver<Transition> {
        self.shared.transitions.subscribe()
    }

    /// Closes the breaker and forgets its failures (its primary LLM was replaced): tickets handed
    /// out before no longer count.
    pub fn forget(&self) {
        let mut inner = self.lock();
        self.close_and_forget(&mut inner);
    }

    fn close_and_forget(&self, inner: &mut Inner) {
        inner.failures.clear();
        inner.epoch = inner.epoch.wrapping_add(1);
        self.set_phase(inner, Phase::Closed);
    }

    /// Decide which LLM attempt 1 of a new task uses. A [`Admission::Primary`] carries the ticket
    /// on which the task reports the primary's verdict.
    pub fn admit(&self) -> Admission {
        let now = Instant::now();
        let mut inner = self.lock();
        if !inner.policy.enabled {
            drop(inner);
            return Admission::Primary(self.ticket(TicketKind::Disabled));
        }
        self.advance(&mut inner, now);
        match inner.phase {
            Phase::Closed => {
                let epoch = inner.epoch;
                drop(inner);
                Admission::Primary(self.ticket(TicketKind::Normal { epoch }))
            }
            Phase::Open { .. } | Phase::HalfOpen { probe: Some(_) } => Admission::Backup,
            Phase::HalfOpen { probe: None } => {
                let id = inner.next_probe;
                inner.next_probe = inner.next_probe.wrapping_add(1);
                inner.phase = Phase::HalfOpen { probe: Some(id) };
                drop(inner);
                Admission::Primary(self.ticket(TicketKind::Probe { id }))
            }
        }
    }

    /// Current state; applies an elapsed cooldown and drops failures that left the window.
    pub fn snapshot(&self) -> BreakerSnapshot {
        let now = Instant::now();
        let mut inner = self.lock();
        if !inner.policy.enabled {
            return BreakerSnapshot {
                state: BreakerState::Closed,
                failures_in_window: 0,
                cooldown_remaining: None,
                using_backup: false,
                opened_total: inner.opened_total,
            };
        }
        self.advance(&mut inner, now);
        self.prune(&mut inner, now);
        let (cooldown_remaining, using_backup) = match inner.phase {
            Phase::Closed | Phase::HalfOpen { probe: None } => (None, false),
            Phase::HalfOpen { probe: Some(_) } => (None, true),
            Phase::Open { until, .. } => (Some(until.saturating_duration_since(now)), true),
        };
        BreakerSnapshot {
            state: inner.phase.state(),
            failures_in_window: u32::try_from(inner.failures.len()).unwrap_or(u32::MAX),
            cooldown_remaining,
            using_backup,
            opened_total: inner.opened_total,
        }
    }

    fn ticket(&self, kind: TicketKind) -> PrimaryTicket {
        PrimaryTicket {
            breaker: self.clone(),
            kind,
            settled: false,
        }
    }

    /// The state is plain data that every method leaves consistent, so a poisoned lock (a panic
    /// elsewhere while holding it) is safe to keep using.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.shared
            .inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn set_phase(&self, inner: &mut Inner, phase: Phase) {
        let from = inner.phase.state();
        inner.phase = phase;
        let to = phase.state();
        if matches!(phase, Phase::Open { .. }) {
            inner.opened_total += 1;
        }
        if from != to {
            // An error only means nobody is subscribed right now.
            let _ = self.shared.transitions.send(Transition { from, to });
        }
    }

    fn open(&self, inner: &mut Inner, now: Instant) {
        let until = now + inner.policy.cooldown;
        self.set_phase(inner, Phase::Open { since: now, until });
    }

    /// Open → half-open once the cooldown has elapsed.
    fn advance(&self, inner: &mut Inner, now: Instant) {
        if let Phase::Open { until, .. } = inner.phase {
            if now >= until {
                self.set_phase(inner, Phase::HalfOpen { probe: None });
            }
        }
    }

    /// Forget failures older than the window (a failure exactly `window` old still counts).
    fn prune(&self, inner: &mut Inner, now: Instant) {
        let window = inner.policy.window;
        while let Some(&oldest) = inner.failures.front() {
            if now.saturating_duration_since(oldest) > window {
                inner.failures.pop_front();
            } else {
                break;
            }
        }
    }

    fn settle(&self, kind: TicketKind, verdict: Verdict) {
        let now = Instant::now();
        let mut inner = self.lock();
        if !inner.policy.enabled {
            return;
        }
        self.advance(&mut inner, now);
        match kind {
            TicketKind::Disabled => {}
            TicketKind::Normal { epoch } => {
                if epoch != inner.epoch || verdict != Verdict::Failed {
                    return;
                }
                inner.failures.push_back(now);
                self.prune(&mut inner, now);
                if inner.phase == Phase::Closed && inner.failures.len() >= inner.policy.threshold()
                {
                    self.open(&mut inner, now);
                }
            }
            TicketKind::Probe { id } => {
                if inner.phase != (Phase::HalfOpen { probe: Some(id) }) {
                    return;
                }
                match verdict {
                    Verdict::Succeeded => {
                        inner.failures.clear();
                        inner.epoch = inner.epoch.wrapping_add(1);
                        self.set_phase(&mut inner, Phase::Closed);
                    }
                    Verdict::Failed => {
                        inner.failures.push_back(now);
                        self.prune(&mut inner, now);
                        self.open(&mut inner, now);
                    }
                    Verdict::Abandoned => self.open(&mut inner, now),
                }
            }
        }
    }
}

// ===== admission and tickets =====

/// Which LLM attempt 1 of a task uses.
#[derive(Debug)]
#[must_use = "a probe ticket dropped without a verdict re-opens the breaker"]
pub enum Admission {
    /// Use the primary; report its verdict on the ticket.
    Primary(PrimaryTicket),
    /// The breaker is open (or another task is probing): start on the backup. Backup outcomes
    /// are not the primary breaker's business, so there is nothing to report.
    Backup,
}

impl Admission {
    /// `true` when attempt 1 uses the backup.
    pub fn uses_backup(&self) -> bool {
        matches!(self, Admission::Backup)
    }

    /// `true` when this task is the half-open probe of the primary.
    pub fn is_probe(&self) -> bool {
        matches!(self, Admission::Primary(t) if t.is_probe())
    }
}

/// The right (and duty) to report how one primary attempt went.
///
/// Consuming [`primary_succeeded`](Self::primary_succeeded) or
/// [`primary_failed`](Self::primary_failed) gives the verdict. Dropping the ticket without a
/// verdict is a no-op for ordinary attempts and re-opens the breaker for a probe (a cancelled
/// probe proves nothing about the primary, and letting the next task probe immediately could
/// hammer a dead endpoint).
#[derive(Debug)]
#[must_use = "report the primary's verdict with primary_succeeded()/primary_failed()"]
pub struct PrimaryTicket {
    breaker: Breaker,
    kind: TicketKind,
    settled: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TicketKind {
    Disabled,
    Normal { epoch: u64 },
    Probe { id: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Succeeded,
    Failed,
    Abandoned,
}

impl PrimaryTicket {
    /// `true` for the single half-open probe.
    pub fn is_probe(&self) -> bool {
        matches!(self.kind, TicketKind::Probe { .. })
    }

    /// The primary answered (whether or not its edit applied): a probe closes the breaker.
    pub fn primary_succeeded(mut self) {
        self.settled = true;
        self.breaker.settle(self.kind, Verdict::Succeeded);
    }

    /// The primary failed with an LLM-class failure: recorded in the window (may open the
    /// breaker); a probe re-opens it for a full cooldown.
    pub fn primary_failed(mut self) {
        self.settled = true;
        self.breaker.settle(self.kind, Verdict::Failed);
    }
}

impl Drop for PrimaryTicket {
    fn drop(&mut self) {
        if !self.settled {
            self.breaker.settle(self.kind, Verdict::Abandoned);
        }
    }
}

// ===== persistence =====

/// Breaker state as stored on disk, with wall-clock timestamps so it survives a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersistedBreaker {
    /// [`PERSISTED_FORMAT_VERSION`] at the time of writing.
    pub version: u32,
    /// When this was captured (unix ms).
    pub saved_at_unix_ms: u64,
    /// State at capture time.
    pub state: PersistedState,
    /// Times of the failures inside the window at capture time (unix ms, oldest first).
    pub failures_unix_ms: Vec<u64>,
    /// Transitions to open so far (kept across restarts for the status page).
    pub opened_total: u64,
}

/// [`BreakerState`] plus what is needed to resume it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PersistedState {
    /// Closed.
    Closed,
    /// Open since `opened_at_unix_ms`; the restoring policy's cooldown applies from then.
    Open {
        /// When the breaker opened (unix ms).
        opened_at_unix_ms: u64,
    },
    /// Half-open. If a probe was in flight, the restart ended it without a verdict, so restore
    /// re-opens the breaker for a full cooldown.
    HalfOpen {
        /// A probe task held the primary at capture time.
        probe_in_flight: bool,
    },
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl Breaker {
    /// Capture the state for [`BreakerStore::save`], timestamps in wall-clock time.
    pub fn to_persisted(&self) -> PersistedBreaker {
        self.to_persisted_at(SystemTime::now())
    }

    /// [`to_persisted`](Self::to_persisted) with an explicit wall clock "now" (tests, or a caller
    /// that wants one timestamp for several breakers).
    pub fn to_persisted_at(&self, wall_now: SystemTime) -> PersistedBreaker {
        let now = Instant::now();
        let mut inner = self.lock();
        self.advance(&mut inner, now);
        self.prune(&mut inner, now);
        let now_ms = unix_ms(wall_now);
        let wall = |at: Instant| {
            let age =
                u64::try_from(now.saturating_duration_since(at).as_millis()).unwrap_or(u64::MAX);
            now_ms.saturating_sub(age)
        };
        let state = match inner.phase {
            Phase::Closed => PersistedState::Closed,
            Phase::Open { since, .. } => PersistedState::Open {
                opened_at_unix_ms: wall(since),
            },
            Phase::HalfOpen { probe } => PersistedState::HalfOpen {
                probe_in_flight: probe.is_some(),
            },
        };
        PersistedBreaker {
            version: PERSISTED_FORMAT_VERSION,
            saved_at_unix_ms: now_ms,
            state,
            failures_unix_ms: inner.failures.iter().map(|&f| wall(f)).collect(),
            opened_total: inner.opened_total,
        }
    }

    /// Rebuild a breaker from [`to_persisted`](Self::to_persisted) output. Wall-clock time that
    /// passed since then counts: failures may have left the window, a cooldown may have shrunk or
    /// ended. A disabled policy yields a closed breaker.
    pub fn restore(policy: BreakerPolicy, persisted: PersistedBreaker) -> Self {
        Self::restore_at(policy, persisted, SystemTime::now())
    }

    /// [`restore`](Self::restore) with an explicit wall clock "now" (tests).
    pub fn restore_at(
        policy: BreakerPolicy,
        persisted: PersistedBreaker,
        wall_now: SystemTime,
    ) -> Self {
        let now = Instant::now();
        let now_ms = unix_ms(wall_now);
        // Timestamps from the future (clock stepped back) count as "just now".
        let age = |ms: u64| Duration::from_millis(now_ms.saturating_sub(ms));
        let instant_of = |age: Duration| now.checked_sub(age).unwrap_or(now);

        let mut failures: VecDeque<Instant> = persisted
            .failures_unix_ms
            .iter()
            .map(|&ms| age(ms))
            .filter(|&a| a <= policy.window)
            .map(instant_of)
            .collect();
        failures.make_contiguous().sort();

        let mut opened_total = persisted.opened_total;
        let phase = if !policy.enabled {
            Phase::Closed
        } else {
            match persisted.state {
                PersistedState::Closed => Phase::Closed,
                PersistedState::Open { opened_at_unix_ms } => {
                    let elapsed = age(opened_at_unix_ms);
                    Phase::Open {
                        since: instant_of(elapsed),
                        until: now + policy.cooldown.saturating_sub(elapsed),
                    }
                }
                PersistedState::HalfOpen {
                    probe_in_flight: false,
                } => Phase::HalfOpen { probe: None },
                PersistedState::HalfOpen {
                    probe_in_flight: true,
                } => {
                    opened_total += 1;
                    Phase::Open {
                        since: now,
                        until: now + policy.cooldown,
                    }
                }
            }
        };
        Self::with_inner(Inner {
            policy,
            failures,
            phase,
            opened_total,
            epoch: 0,
            next_probe: 0,
        })
    }
}

/// Failure to write the breaker file.
#[derive(Debug, Error)]
pub enum BreakerStoreError {
    /// Creating the directory, writing the temp file or renaming it failed.
    #[error("cannot write breaker state to {path}: {source}")]
    Io {
        /// The breaker file.
        path: PathBuf,
        /// Underlying error.
        source: io::Error,
    },
    /// Serialising the state failed (not expected for this plain data).
    #[error("cannot encode breaker state for {path}: {source}")]
    Encode {
        /// The breaker file.
        path: PathBuf,
        /// Underlying error.
        source: serde_json::Error,
    },
}

/// A JSON file holding one programmer's [`PersistedBreaker`].
///
/// Writes are atomic (temp file in the same directory, fsync, rename), so a crash leaves either
/// the old or the new state. Saves through one store are serialised. A missing file means "no
/// state yet"; an unreadable or corrupt file is logged and ignored (the breaker starts closed)
/// because a lost breaker state is far less harmful than a programmer that cannot start.
/// Both methods do small blocking file I/O.
#[derive(Debug)]
pub struct BreakerStore {
    path: PathBuf,
    write_lock: Mutex<()>,
}

impl BreakerStore {
    /// A store for the file at `path` (created on first save, with its directory).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        BreakerStore {
            path: path.into(),
            write_lock: Mutex::new(()),
        }
    }

    /// The file this store reads and writes.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The saved state, or `None` when there is none or it cannot be used (logged).
    pub fn load(&self) -> Option<PersistedBreaker> {
        let bytes = match fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e,
                    "cannot read breaker state; starting with a closed breaker");
                return None;
            }
        };
        match serde_json::from_slice::<PersistedBreaker>(&bytes) {
            Ok(p) if p.version == PERSISTED_FORMAT_VERSION => Some(p),
            Ok(p) => {
                tracing::warn!(path = %self.path.display(), version = p.version,
                    "unsupported breaker state version; starting with a closed breaker");
                None
            }
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e,
                    "corrupt breaker state ignored; starting with a closed breaker");
                None
            }
        }
    }

    /// Atomically replace the file with `state`.
    pub fn save(&self, state: &PersistedBreaker) -> Result<(), BreakerStoreError> {
        let _guard = self
            .write_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        self.write(state)
    }

    /// Capture `breaker` and save it while holding the store's write lock, so concurrent callers
    /// can never leave an older capture on disk after a newer one.
    pub fn save_breaker(&self, breaker: &Breaker) -> Result<(), BreakerStoreError> {
        let _guard = self
            .write_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        self.write(&breaker.to_persisted())
    }

    fn write(&self, state: &PersistedBreaker) -> Result<(), BreakerStoreError> {
        let io_err = |source| BreakerStoreError::Io {
            path: self.path.clone(),
            source,
        };
        let json =
            serde_json::to_vec_pretty(state).map_err(|source| BreakerStoreError::Encode {
                path: self.path.clone(),
                source,
            })?;
        let dir = match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        fs::create_dir_all(&dir).map_err(io_err)?;
        let mut tmp = tempfile::NamedTempFile::new_in(&dir).map_err(io_err)?;
        tmp.write_all(&json).map_err(io_err)?;
        tmp.as_file().sync_all().map_err(io_err)?;
        tmp.persist(&self.path).map_err(|e| io_err(e.error))?;
        Ok(())
    }
}

// ===== tests =====

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::advance;

    const MIN: Duration = Duration::from_secs(60);

    fn policy() -> BreakerPolicy {
        BreakerPolicy {
            enabled: true,
            failure_threshold: 3,
            window: 10 * MIN,
            cooldown: 5 * MIN,
        }
    }

    fn primary(b: &Breaker) -> PrimaryTicket {
        match b.admit() {
            Admission::Primary(t) => t,
            Admission::Backup => panic!("expected the primary, got the backup: {:?}", b.snapshot()),
        }
    }

    fn assert_backup(b: &Breaker) {
        assert!(
            b.admit().uses_backup(),
            "expected the backup: {:?}",
            b.snapshot()
        );
    }

    fn fail_n(b: &Breaker, n: usize) {
        for _ in 0..n {
            primary(b).primary_failed();
        }
    }

    /// Open the breaker, wait out the cooldown: half-open with no probe yet.
    async fn half_open(b: &Breaker) {
        fail_n(b, 3);
        assert_eq!(b.snapshot().state, BreakerState::Open);
        advance(b.policy().cooldown).await;
        assert_eq!(b.snapshot().state, BreakerState::HalfOpen);
    }

    fn drain(rx: &mut broadcast::Receiver<Transition>) -> Vec<(BreakerState, BreakerState)> {
        let mut out = Vec::new();
        while let Ok(t) = rx.try_recv() {
            out.push((t.from, t.to));
        }
        out
    }

    use BreakerState::{Closed, HalfOpen, Open};

    /// A re-read configuration's policy applies to the state in force: a lower threshold opens
    /// on the failures already in the window, a shorter cooldown counts from the opening, and
    /// disabling closes the breaker and voids the tickets handed out before.
    #[tokio::test(start_paused = true)]
    async fn a_new_policy_applies_to_the_state_in_force() {
        let b = Breaker::new(policy());
        let mut rx = b.subscribe();
        fail_n(&b, 2);
        assert_eq!(b.snapshot().state, Closed);
        let lower = BreakerPolicy {
            failure_threshold: 2,
            ..policy()
        };
        b.set_policy(lower);
        assert_eq!(b.snapshot().state, Open);
        assert_backup(&b);
        advance(MIN).await;
        b.set_policy(BreakerPolicy {
            cooldown: 2 * MIN,
            ..lower
        });
        assert_eq!(b.snapshot().cooldown_remaining, Some(MIN));
        advance(MIN).await;
        assert_eq!(b.snapshot().state, HalfOpen);
        let probe = primary(&b);
        let earlier = BreakerPolicy {
            cooldown: 2 * MIN,
            ..lower
        };
        b.set_policy(BreakerPolicy {
            enabled: false,
            ..earlier
        });
        let s = b.snapshot();
        assert_eq!((s.state, s.using_backup), (Closed, false));
        assert!(!b.admit().uses_backup());
        // The probe's verdict, given after the change, counts for nothing, now or once enabled.
        probe.primary_failed();
        b.set_policy(policy());
        let s = b.snapshot();
        assert_eq!((s.state, s.failures_in_window), (Closed, 0));
        assert_eq!(
            drain(&mut rx),
            [(Closed, Open), (Open, HalfOpen), (HalfOpen, Closed)]
        );
        // The same policy again changes nothing.
        b.set_policy(policy());
        assert!(drain(&mut rx).is_empty());
    }

    /// A replaced primary: the breaker closes, its failures are forgotten, and a verdict on a
    /// ticket of the old primary counts for nothing.
    #[tokio::test(start_paused = true)]
    async fn forget_closes_and_voids_earlier_tickets() {
        let b = Breaker::new(policy());
        let late = primary(&b);
        fail_n(&b, 3);
        assert_eq!(b.snapshot().state, Open);
        b.forget();
        late.primary_failed();
        let s = b.snapshot();
        assert_eq!((s.state, s.failures_in_window), (Closed, 0));
        assert!(!b.admit().uses_backup());
    }

    #[tokio::test(start_paused = true)]
    async fn closed_stays_closed_below_threshold() {
        let b = Breaker::new(policy());
        let mut rx = b.subscribe();
        fail_n(&b, 2);
        let s = b.snapshot();
        assert_eq!(s.state, Closed);
        assert_eq!(s.failures_in_window, 2);
        assert!(!s.using_backup);
        assert_eq!(s.cooldown_remaining, None);
        assert!(!b.admit().uses_backup());
        assert!(drain(&mut rx).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn failures_older_than_window_fall_out() {
        let b = Breaker::new(policy());
        fail_n(&b, 2);
        advance(10 * MIN).await;
        // Exactly `window` old: still inside.
        assert_eq!(b.snapshot().failures_in_window, 2);
        advance(Duration::from_millis(1)).await;
        assert_eq!(b.snapshot().failures_in_window, 0);
        // A third failure now is alone in the window: no trip.
        fail_n(&b, 1);
        let s = b.snapshot();
        assert_eq!((s.state, s.failures_in_window), (Closed, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn sliding_window_counts_only_recent_failures() {
        let b = Breaker::new(policy());
        fail_n(&b, 1); // t=0
        advance(6 * MIN).await;
        fail_n(&b, 1); // t=6
        advance(5 * MIN).await; // t=11: the first fell out
        fail_n(&b, 1);
        assert_eq!(b.snapshot().state, Closed);
        assert_eq!(b.snapshot().failures_in_window, 2);
        advance(MIN).await; // t=12: 6 and 11 still in
        fail_n(&b, 1);
        assert_eq!(b.snapshot().state, Open);
    }

    #[tokio::test(start_paused = true)]
    async fn threshold_opens_and_everyone_uses_backup() {
        let b = Breaker::new(policy());
        let mut rx = b.subscribe();
        fail_n(&b, 3);
        let s = b.snapshot();
        assert_eq!(s.state, Open);
        assert!(s.using_backup);
        assert_eq!(s.opened_total, 1);
        assert_eq!(s.cooldown_remaining, Some(5 * MIN));
        assert_eq!(drain(&mut rx), vec![(Closed, Open)]);
        for _ in 0..5 {
            assert_backup(&b);
        }
        advance(4 * MIN).await;
        assert_backup(&b);
        assert_eq!(b.snapshot().cooldown_remaining, Some(MIN));
    }

    #[tokio::test(start_paused = true)]
    async fn successes_do_not_erase_failures() {
        let b = Breaker::new(policy());
        fail_n(&b, 2);
        for _ in 0..10 {
            primary(&b).primary_succeeded();
        }
        assert_eq!(b.snapshot().failures_in_window, 2);
        fail_n(&b, 1);
        assert_eq!(b.snapshot().state, Open);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_admitted_before_opening_still_count() {
        let b = Breaker::new(policy());
        let late = primary(&b);
        fail_n(&b, 3);
        assert_eq!(b.snapshot().failures_in_window, 3);
        late.primary_failed();
        let s = b.snapshot();
        assert_eq!(s.failures_in_window, 4);
        // Counting does not re-open or extend an open breaker.
        assert_eq!(s.opened_total, 1);
        assert_eq!(s.cooldown_remaining, Some(5 * MIN));
    }

    #[tokio::test(start_paused = true)]
    async fn cooldown_then_half_open_with_exactly_one_probe() {
        let b = Breaker::new(policy());
        let mut rx = b.subscribe();
        fail_n(&b, 3);
        advance(5 * MIN - Duration::from_millis(1)).await;
        assert_eq!(b.snapshot().state, Open);
        advance(Duration::from_millis(1)).await;
        let s = b.snapshot();
        assert_eq!(s.state, HalfOpen);
        assert!(!s.using_backup, "a new task would be the probe");
        assert_eq!(drain(&mut rx), vec![(Closed, Open), (Open, HalfOpen)]);

        // Many tasks arrive while half-open: only the first gets the primary.
        let admissions: Vec<Admission> = (0..10).map(|_| b.admit()).collect();
        let probes: Vec<&Admission> = admissions.iter().filter(|a| a.is_probe()).collect();
        assert_eq!(probes.len(), 1);
        assert_eq!(admissions.iter().filter(|a| !a.uses_backup()).count(), 1);
        assert!(admissions[0].is_probe());
        assert!(b.snapshot().using_backup);
        assert_eq!(b.snapshot().state, HalfOpen);
        drop(admissions); // the probe is abandoned here: re-opens
        assert_eq!(b.snapshot().state, Open);
    }

    #[test]
    fn concurrent_admits_from_threads_yield_one_probe() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("runtime");
        let b = rt.block_on(async {
            let b = Breaker::new(policy());
            half_open(&b).await;
            b
        });
        let barrier = Arc::new(std::sync::Barrier::new(16));
        let handles: Vec<_> = (0..16)
            .map(|_| {
                let b = b.clone();
                let barrier = barrier.clone();
                let runtime = rt.handle().clone();
                std::thread::spawn(move || {
                    // The paused clock belongs to the runtime: read time through it.
                    let _clock = runtime.enter();
                    barrier.wait();
                    // Keep the ticket alive until every thread has admitted.
                    let a = b.admit();
                    barrier.wait();
                    let primary = !a.uses_backup();
                    if let Admission::Primary(t) = a {
                        t.primary_succeeded();
                    }
                    primary
                })
            })
            .collect();
        let primaries = handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .filter(|&p| p)
            .count();
        assert_eq!(primaries, 1);
        assert_eq!(b.snapshot().state, Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn probe_success_closes_and_resets() {
        let b = Breaker::new(policy());
        half_open(&b).await;
        let mut rx = b.subscribe();
        let probe = primary(&b);
        assert!(probe.is_probe());
        probe.primary_succeeded();
        let s = b.snapshot();
        assert_eq!(s.state, Closed);
        assert_eq!(s.failures_in_window, 0);
        assert!(!s.using_backup);
        assert_eq!(drain(&mut rx), vec![(HalfOpen, Closed)]);
        // Counts were reset: two new failures do not trip it, the third does.
        fail_n(&b, 2);
        assert_eq!(b.snapshot().state, Closed);
        fail_n(&b, 1);
        assert_eq!(b.snapshot().state, Open);
        assert_eq!(b.snapshot().opened_total, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn verdicts_from_before_the_reset_are_ignored() {
        let b = Breaker::new(policy());
        let stale: Vec<PrimaryTicket> = (0..3).map(|_| primary(&b)).collect();
        half_open(&b).await;
        primary(&b).primary_succeeded();
        for t in stale {
            t.primary_failed();
        }
        let s = b.snapshot();
        assert_eq!((s.state, s.failures_in_window), (Closed, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn non_probe_verdicts_do_not_move_half_open() {
        let b = Breaker::new(policy());
        let early_ok = primary(&b);
        let early_fail = primary(&b);
        half_open(&b).await;
        let probe = primary(&b);
        early_ok.primary_succeeded();
        early_fail.primary_failed();
        assert_eq!(b.snapshot().state, HalfOpen);
        assert!(b.snapshot().using_backup);
        probe.primary_succeeded();
        assert_eq!(b.snapshot().state, Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn probe_failure_reopens_for_a_full_cooldown() {
        let b = Breaker::new(policy());
        half_open(&b).await;
        let mut rx = b.subscribe();
        advance(2 * MIN).await; // half-open for a while before the probe arrives
        primary(&b).primary_failed();
        let s = b.snapshot();
        assert_eq!(s.state, Open);
        assert_eq!(s.cooldown_remaining, Some(5 * MIN));
        assert_eq!(s.opened_total, 2);
        assert_eq!(drain(&mut rx), vec![(HalfOpen, Open)]);
        assert_backup(&b);
        advance(5 * MIN - Duration::from_millis(1)).await;
        assert_backup(&b);
        advance(Duration::from_millis(1)).await;
        assert!(primary(&b).is_probe());
    }

    #[tokio::test(start_paused = true)]
    async fn dropped_probe_reopens() {
        let b = Breaker::new(policy());
        half_open(&b).await;
        let mut rx = b.subscribe();
        let probe = primary(&b);
        assert!(probe.is_probe());
        drop(probe);
        let s = b.snapshot();
        assert_eq!(s.state, Open);
        assert_eq!(s.cooldown_remaining, Some(5 * MIN));
        assert_eq!(drain(&mut rx), vec![(HalfOpen, Open)]);
        assert_backup(&b);
    }

    #[tokio::test(start_paused = true)]
    async fn cancelled_probe_task_reopens() {
        let b = Breaker::new(policy());
        half_open(&b).await;
        let b2 = b.clone();
        let task = tokio::spawn(async move {
            let ticket = primary(&b2);
            tokio::time::sleep(Duration::from_secs(3600)).await;
            ticket.primary_succeeded();
        });
        tokio::task::yield_now().await;
        assert!(
            b.snapshot().using_backup,
            "the spawned task holds the probe"
        );
        task.abort();
        assert!(task.await.is_err_and(|e| e.is_cancelled()));
        assert_eq!(b.snapshot().state, Open);
    }

    #[tokio::test(start_paused = true)]
    async fn dropped_non_probe_ticket_changes_nothing() {
        let b = Breaker::new(policy());
        drop(primary(&b));
        let s = b.snapshot();
        assert_eq!((s.state, s.failures_in_window), (Closed, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn disabled_breaker_always_uses_primary() {
        let b = Breaker::new(BreakerPolicy {
            enabled: false,
            ..policy()
        });
        let mut rx = b.subscribe();
        for _ in 0..20 {
            let t = primary(&b);
            assert!(!t.is_probe());
            t.primary_failed();
        }
        let s = b.snapshot();
        assert_eq!(s.state, Closed);
        assert!(!s.using_backup);
        assert_eq!(s.opened_total, 0);
        assert!(drain(&mut rx).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn zero_threshold_behaves_as_one() {
        let b = Breaker::new(BreakerPolicy {
            failure_threshold: 0,
            ..policy()
        });
        assert!(!b.admit().uses_backup());
        fail_n(&b, 1);
        assert_eq!(b.snapshot().state, Open);
    }

    // ----- persistence -----

    fn wall(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    #[tokio::test(start_paused = true)]
    async fn persisted_open_breaker_resumes_with_the_remaining_cooldown() {
        let b = Breaker::new(policy());
        fail_n(&b, 3);
        advance(MIN).await; // open for 1 of 5 minutes
        let saved = b.to_persisted_at(wall(0));
        assert_eq!(
            saved.state,
            PersistedState::Open {
                opened_at_unix_ms: unix_ms(wall(0)) - 60_000
            }
        );
        assert_eq!(saved.failures_unix_ms.len(), 3);

        // Round-trip through JSON, restore two wall-clock minutes later.
        let json = serde_json::to_string(&saved).expect("encode");
        let loaded: PersistedBreaker = serde_json::from_str(&json).expect("decode");
        assert_eq!(loaded, saved);
        let r = Breaker::restore_at(policy(), loaded, wall(120));
        let s = r.snapshot();
        assert_eq!(s.state, Open);
        assert_eq!(s.cooldown_remaining, Some(2 * MIN));
        assert_eq!(s.failures_in_window, 3);
        assert_eq!(s.opened_total, 1);
        assert_backup(&r);
        advance(2 * MIN).await;
        assert_eq!(r.snapshot().state, HalfOpen);
        assert!(primary(&r).is_probe());
    }

    #[tokio::test(start_paused = true)]
    async fn restore_after_the_cooldown_passed_is_half_open() {
        let b = Breaker::new(policy());
        fail_n(&b, 3);
        let saved = b.to_persisted_at(wall(0));
        let r = Breaker::restore_at(policy(), saved, wall(6 * 60));
        assert_eq!(r.snapshot().state, HalfOpen);
        assert!(primary(&r).is_probe());
    }

    #[tokio::test(start_paused = true)]
    async fn restored_failures_keep_their_age() {
        let b = Breaker::new(policy());
        fail_n(&b, 1);
        advance(8 * MIN).await;
        fail_n(&b, 1);
        let saved = b.to_persisted_at(wall(0));
        // One wall minute later the first failure is 9 min old: still in.
        let r = Breaker::restore_at(policy(), saved.clone(), wall(60));
        assert_eq!(r.snapshot().failures_in_window, 2);
        advance(MIN + Duration::from_millis(1)).await;
        assert_eq!(r.snapshot().failures_in_window, 1);
        // Three wall minutes later it is already gone at restore.
        let r = Breaker::restore_at(policy(), saved, wall(180));
        assert_eq!(r.snapshot().failures_in_window, 1);
        fail_n(&r, 1);
        assert_eq!(r.snapshot().state, Closed);
        fail_n(&r, 1);
        assert_eq!(r.snapshot().state, Open);
    }

    #[tokio::test(start_paused = true)]
    async fn probe_in_flight_at_save_reopens_on_restore() {
        let b = Breaker::new(policy());
        half_open(&b).await;
        let probe = primary(&b);
        let saved = b.to_persisted_at(wall(0));
        assert_eq!(
            saved.state,
            PersistedState::HalfOpen {
                probe_in_flight: true
            }
        );
        let r = Breaker::restore_at(policy(), saved, wall(10));
        let s = r.snapshot();
        assert_eq!(s.state, Open);
        assert_eq!(s.cooldown_remaining, Some(5 * MIN));
        assert_eq!(s.opened_total, 2);
        probe.primary_succeeded(); // belongs to the old breaker only
        assert_eq!(r.snapshot().state, Open);
    }

    #[tokio::test(start_paused = true)]
    async fn store_round_trip_and_atomic_replace() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = BreakerStore::new(dir.path().join("state/breaker-001.json"));
        assert_eq!(store.load(), None, "missing file means no state");

        let b = Breaker::new(policy());
        fail_n(&b, 3);
        store.save_breaker(&b).expect("save");
        let loaded = store.load().expect("saved state loads");
        assert!(matches!(loaded.state, PersistedState::Open { .. }));
        assert_eq!(loaded.failures_unix_ms.len(), 3);
        let r = Breaker::restore(policy(), loaded);
        assert_eq!(r.snapshot().state, Open);

        let closed = Breaker::new(policy()).to_persisted();
        store.save(&closed).expect("save again");
        assert_eq!(store.load(), Some(closed));
        let leftovers: Vec<_> = fs::read_dir(dir.path().join("state"))
            .expect("read dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(leftovers.len(), 1, "no temp files left: {leftovers:?}");
    }

    #[test]
    fn corrupt_or_foreign_file_is_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("breaker.json");
        let store = BreakerStore::new(&path);
        fs::write(&path, b"{ not json").expect("write");
        assert_eq!(store.load(), None);
        let mut future = Breaker::new(policy()).to_persisted();
        future.version = PERSISTED_FORMAT_VERSION + 1;
        fs::write(&path, serde_json::to_vec(&future).expect("encode")).expect("write");
        assert_eq!(store.load(), None);
        // A directory where the file should be: unreadable, logged, ignored.
        let store = BreakerStore::new(dir.path());
        assert_eq!(store.load(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn disabled_policy_restores_closed() {
        let b = Breaker::new(policy());
        fail_n(&b, 3);
        let saved = b.to_persisted_at(wall(0));
        let disabled = BreakerPolicy {
            enabled: false,
            ..policy()
        };
        let r = Breaker::restore_at(disabled, saved, wall(1));
        assert_eq!(r.snapshot().state, Closed);
        assert!(!r.admit().uses_backup());
    }
}
