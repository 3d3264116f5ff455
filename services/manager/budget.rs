//! The pool's daily spend ledger: reserve before a paid dispatch, settle to the real cost after.
//!
//! One ledger for the whole pool, kept in SQLite (one file in the data directory, tables prefixed
//! `budget_` so it may share a file with the task store). The day is the UTC calendar day of the
//! injected [`Clock`].
//!
//! # Life of a paid task's money
//!
//! 1. [`BudgetLedger::reserve`] holds the programmer's `max_cost_per_job_usd` *before* the dispatch.
//!    The check (against the day's totals kept in memory) and the hold (one `BEGIN IMMEDIATE`
//!    transaction) are made under the ledger's one lock, in the one process the file belongs to,
//!    so concurrent dispatches can never together overspend: `spent + reserved + amount > limit`
//!    is refused with [`BudgetError::Exhausted`], before any SQL.
//! 2. [`BudgetLedger::settle`] turns the hold into spend of the *real* cost (lower or higher than the
//!    hold), booked on the day the reservation was made. [`BudgetLedger::release`] drops a hold for
//!    a task that never ran. Both are idempotent.
//!
//! # Invariants
//!
//! - Money is [`Usd`]: integer nano-dollars in and out, stored as such (columns `*_nanos`), so the
//!   day's spend is exactly the sum of the costs settled. A ledger written by a version that stored
//!   micro-dollars (`*_micros`) is migrated on open, every figure × 1000.
//! - The budget-threshold alert fires at most once per UTC day, and the "fired" mark is persisted, so
//!   a restarted manager does not fire it again.
//! - Restart is conservative: a reservation left behind by a previous process (it crashed before
//!   settling) is booked as spent at its reserved amount when the ledger is opened. We cannot know
//!   what the task really cost; assuming the cap means the budget can only be under-, never
//!   over-spent. Consequence: two live processes must not share one ledger file, and they cannot:
//!   the ledger opens its file with [`STORE_VFS`], as the task store does, so a second process
//!   (another manager on the same data dir) is refused ([`BudgetError::InUse`]) instead of booking
//!   the first one's live holds as orphans. Call [`BudgetLedger::poll_alert`] after opening: the
//!   booked orphans may have crossed the threshold.
//! - A disabled budget never refuses, but still records spend so status pages stay truthful; it never
//!   raises the alert.
//!
//! All methods are synchronous and short (one small SQLite transaction, never a disk flush). The
//! ledger is `Send + Sync`; async callers may call it directly or through `spawn_blocking`.
//!
//! # Durable across a power loss, off the caller's thread
//!
//! With [`Durability::PowerLoss`] a commit is not durable when the method returns: it is in the
//! WAL, which the kernel holds (that survives a process crash). [`BudgetLedger::durable`] makes
//! every commit made so far survive a power loss as well: it syncs the WAL file on the blocking
//! pool, one sync for all the commits made before it started, and callers await it before they
//! act on a commit (a hold before its Execute is sent, a settlement before the result is
//! published). The reservation is called on the manager's one runtime thread, inside the
//! balancer's decision; a sync there (SQLite `synchronous = FULL`, as before) held every dispatch
//! of the manager for a disk flush per paid task. SQLite's own checkpoints (every thousand pages
//! of the WAL, a few hundred paid tasks) still sync in the commit that starts them.

use crate::config::model::{CostOptimization, Durability};
use crate::manager::store::{STORE_VFS, held_by_another_process};
use crate::money::{MoneyError, Usd};
use chrono::{DateTime, Utc};
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::watch;

// ===== Public types =====

/// Where the ledger reads "now" from. Injectable so tests can cross midnight; production uses
/// [`system_clock`].
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// The wall clock (UTC).
pub fn system_clock() -> Clock {
    Arc::new(Utc::now)
}

/// The budget rules (the configuration's `cost_optimization` section, as integer money).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetPolicy {
    /// When false, reservations are never refused (spend is still recorded) and no alert fires.
    pub enabled: bool,
    /// Spend plus holds may not exceed this per UTC day.
    pub max_daily_spend: Usd,
    /// Settled spend at or above this raises the budget alert, once per day. `None` = no alert.
    pub alert_threshold: Option<Usd>,
}

impl BudgetPolicy {
    /// The policy of a `cost_optimization` section: its dollar figures become [`Usd`] here, once.
    pub fn from_config(cost: &CostOptimization) -> Result<Self, MoneyError> {
        Ok(Self {
            enabled: cost.enabled,
            max_daily_spend: Usd::from_usd(cost.max_daily_spend_usd)?,
            alert_threshold: cost.alert_threshold_usd.map(Usd::from_usd).transpose()?,
        })
    }
}

/// A hold on the budget for one paid task, made by [`BudgetLedger::reserve`].
#[derive(Debug, Clone, PartialEq)]
pub struct Reservation {
    /// The task the money is held for (the ledger's key: one reservation per task).
    pub task_id: String,
    /// The UTC day ("YYYY-MM-DD") the hold, and later its settlement, is booked on.
    pub day: String,
    /// The amount held.
    pub amount: Usd,
}

/// What [`BudgetLedger::settle`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct Settlement {
    /// False when there was no open reservation for the task (already settled or released, or
    /// never reserved): nothing changed.
    pub settled: bool,
    /// The day the cost was booked on (empty when `settled` is false).
    pub day: String,
    /// That day's settled spend after this settlement.
    pub day_spent: Usd,
    /// True exactly once per day: when this settlement made the day's spend reach the alert
    /// threshold for the first time. The caller raises the `budget_threshold` alert.
    pub alert_crossed: bool,
}

/// The ledger as the status page shows it (maps onto `pas.v1.Budget`).
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetSnapshot {
    /// Today, "YYYY-MM-DD" (UTC).
    pub day: String,
    /// Settled spend today (including reservations orphaned by a previous process).
    pub spent: Usd,
    /// Held for paid tasks reserved today and not yet settled.
    pub reserved: Usd,
    /// Held for paid tasks reserved on earlier days and not yet settled. They count against the
    /// day they were made (where they settle), not today, but stay visible until settled.
    pub earlier_holds: Usd,
    /// The daily limit.
    pub limit: Usd,
    /// `limit - spent - reserved`, never below 0.
    pub remaining: Usd,
    /// The alert threshold (0 when none is configured).
    pub alert_threshold: Usd,
    /// True once today's alert has fired (stays true for the rest of the day).
    pub alert_active: bool,
    /// When today's alert fired, milliseconds since the Unix epoch.
    pub alert_since_ms: Option<i64>,
}

/// Errors of the ledger.
#[derive(Debug, thiserror::Error)]
pub enum BudgetError {
    /// The reservation would take the day over its limit (maps to RESOURCE_EXHAUSTED).
    #[error(
        "daily budget exhausted: spent {spent} + reserved {reserved} + requested {requested} exceeds the limit of {limit}"
    )]
    Exhausted {
        /// Settled spend today.
        spent: Usd,
        /// Held today.
        reserved: Usd,
        /// The daily limit.
        limit: Usd,
        /// The amount that was asked for.
        requested: Usd,
    },
    /// The task already has a reservation or a settled charge; one task is charged once.
    #[error("task {task_id} already has a budget reservation or charge")]
    Duplicate {
        /// The task id.
        task_id: String,
    },
    /// A negative amount.
    #[error("invalid amount {0}: must be >= 0")]
    InvalidAmount(Usd),
    /// The SQLite file could not be opened, read or written.
    #[error("budget ledger storage: {0}")]
    Storage(#[from] rusqlite::Error),
    /// The WAL file could not be opened or synced (`durability: power_loss`).
    #[error("budget ledger: cannot sync {path}: {reason}")]
    Sync {
        /// The WAL file.
        path: std::path::PathBuf,
        /// What failed.
        reason: String,
    },
    /// Another process holds the ledger's file (see [`STORE_VFS`]).
    #[error(
        "budget ledger {path}: in use by another process (another manager on the same data dir?); \
         a manager keeps its ledger to itself while it runs"
    )]
    InUse {
        /// The ledger's file.
        path: String,
    },
}

fn non_negative(amount: Usd) -> Result<Usd, BudgetError> {
    if amount < Usd::ZERO {
        return Err(BudgetError::InvalidAmount(amount));
    }
    Ok(amount)
}

fn day_of(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d").to_string()
}

// ===== The ledger =====

/// The persisted daily ledger. See the module docs for the rules.
pub struct BudgetLedger {
    ledger: Mutex<Ledger>,
    /// The `cost_optimization` rules in force (a re-read configuration may change them).
    policy: Mutex<BudgetPolicy>,
    clock: Clock,
    /// With [`Durability::PowerLoss`]: what [`durable`](Self::durable) syncs.
    wal_sync: Option<Arc<WalSync>>,
}

/// Syncs the ledger's WAL file for [`BudgetLedger::durable`]: commits are counted as they are
/// made, and a sync makes every commit counted before it started durable.
struct WalSync {
    /// Where the WAL file is (for errors).
    path: std::path::PathBuf,
    /// The WAL file, open for as long as the ledger (a sync through a descriptor opened after a
    /// failed write-back could miss the failure).
    wal: std::fs::File,
    /// Commits made (bumped after each commit).
    committed: AtomicU64,
    /// Commits known durable; waiters watch it.
    synced: watch::Sender<u64>,
    /// A sync is on the blocking pool (one at a time; waiters that come meanwhile wait for the next).
    syncing: AtomicBool,
    /// The first failed sync: from then on nothing counts as durable (the kernel may have dropped
    /// the pages whose write-back failed).
    failed: Mutex<Option<String>>,
}

impl WalSync {
    /// Syncs on the blocking pool unless a sync is running; wakes every waiter when done.
    fn start(self: &Arc<Self>) {
        if self.syncing.swap(true, Ordering::AcqRel) {
            return;
        }
        let sync = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            // Read before the sync: every commit counted by now is in the file the sync flushes.
            let upto = sync.committed.load(Ordering::Acquire);
            let synced = sync.wal.sync_data();
            // Cleared before waiters wake, so a waiter that needs a later commit starts the next.
            sync.syncing.store(false, Ordering::Release);
            match synced {
                Ok(()) => {
                    sync.synced.send_modify(|s| *s = (*s).max(upto));
                }
                Err(e) => {
                    tracing::error!("budget ledger: cannot sync its WAL file: {e}");
                    let mut failed = sync.failed.lock().unwrap_or_else(|e| e.into_inner());
                    failed.get_or_insert_with(|| e.to_string());
                    drop(failed);
                    sync.synced.send_modify(|_| {});
                }
            }
        });
    }

    fn failure(&self) -> Option<String> {
        self.failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// The ledger's connection and, beside it, each day's totals as its rows sum them.
struct Ledger {
    conn: Connection,
    /// Settled spend and open holds by day: summed from the rows the first time a day is asked
    /// about, then moved by every write as it commits. This process is the file's only writer
    /// (see the module docs), so they stay what the rows sum to, and a reservation or settlement
    /// costs no scan of the day's rows (one was 0.7 ms at 10,000 charges in a day and 4 ms at
    /// 50,000, on the scheduler's path of every paid dispatch).
    days: HashMap<String, DayTotals>,
}

/// One day's settled spend and open holds.
#[derive(Debug, Clone, Copy, PartialEq)]
struct DayTotals {
    spent: Usd,
    reserved: Usd,
}

/// Days whose totals are kept at most; past it they are summed again when asked about.
const MAX_CACHED_DAYS: usize = 64;

impl Ledger {
    /// The totals of `day`, summed from the rows unless already known.
    fn totals(&mut self, day: &str) -> rusqlite::Result<DayTotals> {
        if let Some(totals) = self.days.get(day) {
            return Ok(*totals);
        }
        let totals = totals(&self.conn, day)?;
        self.remember(day, totals);
        Ok(totals)
    }

    /// Keeps `totals` as those of `day` (what its rows sum to now).
    fn remember(&mut self, day: &str, totals: DayTotals) {
        if self.days.len() >= MAX_CACHED_DAYS && !self.days.contains_key(day) {
            self.days.clear();
        }
        self.days.insert(day.to_owned(), totals);
    }

    /// Takes a committed release of `amount` held on `day` into the known totals (a day not
    /// known is summed when next asked about, the release included).
    fn released(&mut self, day: &str, amount: Usd) {
        if let Some(totals) = self.days.get_mut(day) {
            totals.reserved = totals.reserved.saturating_sub(amount);
        }
    }
}

impl std::fmt::Debug for BudgetLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BudgetLedger")
            .field("policy", &self.policy())
            .finish_non_exhaustive()
    }
}

/// Amounts are nano-dollars (`Usd::nanos`).
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS budget_reservations (
    task_id      TEXT PRIMARY KEY,
    day          TEXT NOT NULL,
    amount_nanos INTEGER NOT NULL,
    created_ms   INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS budget_reservations_day ON budget_reservations(day);
CREATE TABLE IF NOT EXISTS budget_charges (
    task_id        TEXT PRIMARY KEY,
    day            TEXT NOT NULL,
    amount_nanos   INTEGER NOT NULL,
    reserved_nanos INTEGER NOT NULL,
    kind           TEXT NOT NULL,   -- 'settled' | 'orphaned' (left by a previous process)
    booked_ms      INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS budget_charges_day ON budget_charges(day);
CREATE TABLE IF NOT EXISTS budget_alerts (
    day      TEXT PRIMARY KEY,
    fired_ms INTEGER NOT NULL
);
";

impl BudgetLedger {
    /// Opens (creating if needed) the ledger at `path`, in WAL mode with a busy timeout, and
    /// migrates a micro-dollar ledger of an older version to nano-dollars. Holds a previous process
    /// left open stay: their tasks may still be running (see [`book_orphans`](Self::book_orphans)).
    /// With [`Durability::PowerLoss`] commits are synced by [`durable`](Self::durable), off the
    /// caller's thread (see the module docs).
    pub fn open(
        path: impl AsRef<Path>,
        policy: BudgetPolicy,
        clock: Clock,
        durability: Durability,
    ) -> Result<Self, BudgetError> {
        non_negative(policy.max_daily_spend)?;
        policy.alert_threshold.map(non_negative).transpose()?;
        let path = path.as_ref();
        let mut conn = Connection::open_with_flags_and_vfs(path, OpenFlags::default(), STORE_VFS)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        // The first read takes the file for this process, or finds it taken.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| match e {
                e if held_by_another_process(&e) => BudgetError::InUse {
                    path: path.display().to_string(),
                },
                e => e.into(),
            })?;
        // Never a flush inside a commit: with `power_loss` the WAL is synced by `durable`.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        migrate_micros_to_nanos(&tx)?;
        tx.execute_batch(SCHEMA)?;
        tx.commit()?;
        let wal_sync = match durability {
            Durability::ProcessCrash => None,
            Durability::PowerLoss => {
                // The commit above made the WAL file; it stays while the connection is open.
                let mut wal = path.as_os_str().to_owned();
                wal.push("-wal");
                let wal = std::path::PathBuf::from(wal);
                let file = std::fs::File::open(&wal).map_err(|e| BudgetError::Sync {
                    path: wal.clone(),
                    reason: e.to_string(),
                })?;
                Some(Arc::new(WalSync {
                    path: wal,
                    wal: file,
                    // What `open` wrote counts: the first `durable` syncs it.
                    committed: AtomicU64::new(1),
                    synced: watch::Sender::new(0),
                    syncing: AtomicBool::new(false),
                    failed: Mutex::new(None),
                }))
            }
        };
        Ok(Self {
            ledger: Mutex::new(Ledger {
                conn,
                days: HashMap::new(),
            }),
            policy: Mutex::new(policy),
            clock,
            wal_sync,
        })
    }

    /// Resolves once every commit this ledger made before the call survives a power loss
    /// (`durability: power_loss`: the WAL file synced on the blocking pool, one sync for the
    /// commits of many callers); at once otherwise. Await it before acting on a commit: before
    /// a held task is sent, before a settled task's result is published.
    pub async fn durable(&self) -> Result<(), BudgetError> {
        let Some(sync) = &self.wal_sync else {
            return Ok(());
        };
        let target = sync.committed.load(Ordering::Acquire);
        let mut synced = sync.synced.subscribe();
        loop {
            if let Some(reason) = sync.failure() {
                return Err(BudgetError::Sync {
                    path: sync.path.clone(),
                    reason,
                });
            }
            if *synced.borrow_and_update() >= target {
                return Ok(());
            }
            sync.start();
            // The sender lives in `sync`, which this call holds: `changed` cannot fail.
            let _ = synced.changed().await;
        }
    }

    /// Counts a commit for [`durable`](Self::durable); call after each one.
    fn committed(&self) {
        if let Some(sync) = &self.wal_sync {
            sync.committed.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Books every open hold whose key is not in `keep` as spent at its reserved amount: a
    /// restarted manager keeps the holds of the tasks it resumes, and nothing knows what the
    /// others spent, so the ledger must not under-count. Returns how many were booked.
    pub fn book_orphans(
        &self,
        keep: &std::collections::HashSet<String>,
    ) -> Result<usize, BudgetError> {
        let now_ms = (self.clock)().timestamp_millis();
        let mut ledger = self.lock();
        let tx = ledger
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let orphans: Vec<String> = {
            let mut stmt = tx.prepare("SELECT task_id FROM budget_reservations")?;
            let keys = stmt.query_map([], |r| r.get::<_, String>(0))?;
            keys.collect::<rusqlite::Result<Vec<_>>>()?
                .into_iter()
                .filter(|k| !keep.contains(k))
                .collect()
        };
        for key in &orphans {
            tx.execute(
                "INSERT OR IGNORE INTO budget_charges (task_id, day, amount_nanos, reserved_nanos, kind, booked_ms)
                 SELECT task_id, day, amount_nanos, amount_nanos, 'orphaned', ?1
                 FROM budget_reservations WHERE task_id = ?2",
                params![now_ms, key],
            )?;
            tx.execute(
                "DELETE FROM budget_reservations WHERE task_id = ?1",
                params![key],
            )?;
        }
        tx.commit()?;
        self.committed();
        // Once, at start-up: summed again when next asked about.
        ledger.days.clear();
        Ok(orphans.len())
    }

    /// The amount held for `task_id`, if a hold is open.
    pub fn held(&self, task_id: &str) -> Result<Option<Usd>, BudgetError> {
        let ledger = self.lock();
        let micros: Option<i64> = ledger
            .conn
            .query_row(
                "SELECT amount_nanos FROM budget_reservations WHERE task_id = ?1",
                params![task_id],
                |r| r.get(0),
            )
            .optional()?;
        Ok(micros.map(Usd::from_nanos))
    }

    /// The policy this ledger enforces.
    pub fn policy(&self) -> BudgetPolicy {
        *self.policy.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Enforces `policy` from the next hold on (a re-read configuration): today's spend and holds
    /// stay as recorded, so a limit lowered below them refuses every paid task until tomorrow.
    pub fn set_policy(&self, policy: BudgetPolicy) -> Result<(), BudgetError> {
        non_negative(policy.max_daily_spend)?;
        policy.alert_threshold.map(non_negative).transpose()?;
        *self.policy.lock().unwrap_or_else(|p| p.into_inner()) = policy;
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, Ledger> {
        // A panic while holding the lock dropped its transaction (rolled back), so the connection
        // is still consistent: recover it rather than poisoning the whole manager. The totals
        // may have missed a committed write: they are summed again, once.
        self.ledger.lock().unwrap_or_else(|e| {
            let mut ledger = e.into_inner();
            ledger.days.clear();
            self.ledger.clear_poison();
            ledger
        })
    }

    /// Holds `amount` for `task_id` on today's ledger, or refuses when the day would go over its
    /// limit (never refuses when the policy is disabled).
    ///
    /// A refusal is decided from the day's totals kept in memory, before any SQL: a paid task
    /// waiting in the queue for room is offered to the ledger again at every change of the pool,
    /// and with a transaction and a query per refusal (and the balancer's snapshot after it), 190
    /// such tasks waiting kept a (debug-build) manager busy, 37 % of its CPU in SQLite's parser
    /// (BENCHMARKS.md, "Test suite time"). So a key already held is reported as
    /// [`BudgetError::Duplicate`] only when the hold would fit.
    pub fn reserve(&self, task_id: &str, amount: Usd) -> Result<Reservation, BudgetError> {
        let amount = non_negative(amount)?;
        let now = (self.clock)();
        let day = day_of(now);
        let mut ledger = self.lock();
        let DayTotals { spent, reserved } = ledger.totals(&day)?;
        let policy = self.policy();
        if policy.enabled
            && spent.saturating_add(reserved).saturating_add(amount) > policy.max_daily_spend
        {
            return Err(BudgetError::Exhausted {
                spent,
                reserved,
                limit: policy.max_daily_spend,
                requested: amount,
            });
        }
        let tx = ledger
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let taken: bool = tx.query_row(
            "SELECT EXISTS(SELECT 1 FROM budget_reservations WHERE task_id = ?1)
                 OR EXISTS(SELECT 1 FROM budget_charges WHERE task_id = ?1)",
            params![task_id],
            |r| r.get(0),
        )?;
        if taken {
            return Err(BudgetError::Duplicate {
                task_id: task_id.to_owned(),
            });
        }
        tx.execute(
            "INSERT INTO budget_reservations (task_id, day, amount_nanos, created_ms) VALUES (?1, ?2, ?3, ?4)",
            params![task_id, day, amount.nanos(), now.timestamp_millis()],
        )?;
        tx.commit()?;
        self.committed();
        let reserved = reserved.saturating_add(amount);
        ledger.remember(&day, DayTotals { spent, reserved });
        Ok(Reservation {
            task_id: task_id.to_owned(),
            day,
            amount,
        })
    }

    /// Converts `task_id`'s hold into spend of `actual_cost` on the day the hold was made, and
    /// reports whether that made the day cross the alert threshold for the first time. A second
    /// call (or a call without a hold) changes nothing and returns `settled: false`.
    pub fn settle(&self, task_id: &str, actual_cost: Usd) -> Result<Settlement, BudgetError> {
        let cost = non_negative(actual_cost)?;
        let now_ms = (self.clock)().timestamp_millis();
        let mut ledger = self.lock();
        let ledger = &mut *ledger;
        let tx = ledger
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let held: Option<(String, i64)> = tx
            .query_row(
                "SELECT day, amount_nanos FROM budget_reservations WHERE task_id = ?1",
                params![task_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((day, reserved)) = held else {
            return Ok(Settlement {
                settled: false,
                day: String::new(),
                day_spent: Usd::ZERO,
                alert_crossed: false,
            });
        };
        tx.execute(
            "DELETE FROM budget_reservations WHERE task_id = ?1",
            params![task_id],
        )?;
        tx.execute(
            "INSERT INTO budget_charges (task_id, day, amount_nanos, reserved_nanos, kind, booked_ms)
             VALUES (?1, ?2, ?3, ?4, 'settled', ?5)",
            params![task_id, day, cost.nanos(), reserved, now_ms],
        )?;
        let after = match ledger.days.get(&day) {
            Some(before) => DayTotals {
                spent: before.spent.saturating_add(cost),
                reserved: before.reserved.saturating_sub(Usd::from_nanos(reserved)),
            },
            // Summed in this transaction: the hold is gone from it and the charge in it already.
            None => totals(&tx, &day)?,
        };
        let spent = after.spent;
        let alert_crossed = self.mark_alert(&tx, &day, spent, now_ms)?;
        tx.commit()?;
        self.committed();
        ledger.remember(&day, after);
        Ok(Settlement {
            settled: true,
            day,
            day_spent: spent,
            alert_crossed,
        })
    }

    /// Raises today's alert if today's spend has reached the threshold and it has not fired yet;
    /// true exactly when this call fired it. [`settle`](Self::settle) does this by itself; call
    /// this after [`open`](Self::open), where reservations orphaned by a previous process may have
    /// pushed the day over the threshold without any settlement.
    pub fn poll_alert(&self) -> Result<bool, BudgetError> {
        let now = (self.clock)();
        let day = day_of(now);
        let mut ledger = self.lock();
        let spent = ledger.totals(&day)?.spent;
        let tx = ledger
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let fired = self.mark_alert(&tx, &day, spent, now.timestamp_millis())?;
        tx.commit()?;
        self.committed();
        Ok(fired)
    }

    /// Records the alert of `day` when `spent` reached the threshold; true when newly recorded.
    fn mark_alert(
        &self,
        conn: &Connection,
        day: &str,
        spent: Usd,
        now_ms: i64,
    ) -> rusqlite::Result<bool> {
        let policy = self.policy();
        match policy.alert_threshold {
            Some(threshold) if policy.enabled && spent >= threshold => Ok(conn.execute(
                "INSERT OR IGNORE INTO budget_alerts (day, fired_ms) VALUES (?1, ?2)",
                params![day, now_ms],
            )? == 1),
            _ => Ok(false),
        }
    }

    /// Drops `task_id`'s hold (the task never ran on a paid model). Returns false when there was
    /// none (already released or settled): calling it twice is harmless.
    pub fn release(&self, task_id: &str) -> Result<bool, BudgetError> {
        let mut ledger = self.lock();
        let released: Option<(String, i64)> = ledger
            .conn
            .query_row(
                "DELETE FROM budget_reservations WHERE task_id = ?1 RETURNING day, amount_nanos",
                params![task_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((day, amount)) = released else {
            return Ok(false);
        };
        self.committed();
        ledger.released(&day, Usd::from_nanos(amount));
        Ok(true)
    }

    /// What is left today for new reservations, or `None` when the budget is disabled
    /// (unlimited). Advisory: a later [`reserve`](Self::reserve) is the real check.
    pub fn remaining(&self) -> Result<Option<Usd>, BudgetError> {
        if !self.policy().enabled {
            return Ok(None);
        }
        Ok(Some(self.snapshot()?.remaining))
    }

    /// Today's figures. A new UTC day starts from 0.
    pub fn snapshot(&self) -> Result<BudgetSnapshot, BudgetError> {
        let day = day_of((self.clock)());
        let mut ledger = self.lock();
        let DayTotals { spent, reserved } = ledger.totals(&day)?;
        let conn = &ledger.conn;
        let earlier: i64 = conn.query_row(
            "SELECT COALESCE(SUM(amount_nanos), 0) FROM budget_reservations WHERE day < ?1",
            params![day],
            |r| r.get(0),
        )?;
        let alert_since_ms: Option<i64> = conn
            .query_row(
                "SELECT fired_ms FROM budget_alerts WHERE day = ?1",
                params![day],
                |r| r.get(0),
            )
            .optional()?;
        let policy = self.policy();
        let limit = policy.max_daily_spend;
        let remaining = limit
            .saturating_sub(spent)
            .saturating_sub(reserved)
            .max(Usd::ZERO);
        Ok(BudgetSnapshot {
            day,
            spent,
            reserved,
            earlier_holds: Usd::from_nanos(earlier),
            limit,
            remaining,
            alert_threshold: policy.alert_threshold.unwrap_or(Usd::ZERO),
            alert_active: alert_since_ms.is_some(),
            alert_since_ms,
        })
    }
}

/// The settled spend and open holds of `day`, summed from its rows.
fn totals(conn: &Connection, day: &str) -> rusqlite::Result<DayTotals> {
    conn.query_row(
        "SELECT (SELECT COALESCE(SUM(amount_nanos), 0) FROM budget_charges WHERE day = ?1),
                (SELECT COALESCE(SUM(amount_nanos), 0) FROM budget_reservations WHERE day = ?1)",
        params![day],
        |r| {
            Ok(DayTotals {
                spent: Usd::from_nanos(r.get(0)?),
                reserved: Usd::from_nanos(r.get(1)?),
            })
        },
    )
}

/// Nano-dollars per micro-dollar: the factor of the migration from the older micro-dollar ledger.
const NANOS_PER_MICRO: i64 = 1_000;

/// Brings the tables of a ledger written by an older version (integer micro-dollars in
/// `amount_micros` / `reserved_micros`) to nano-dollars, in the caller's transaction: each column
/// is renamed and multiplied by 1000, so every figure is kept exactly. Tables already in
/// nano-dollars, or not there yet, are left alone, so running it on every open is harmless.
fn migrate_micros_to_nanos(tx: &Connection) -> rusqlite::Result<()> {
    for (table, column) in [
        ("budget_reservations", "amount"),
        ("budget_charges", "amount"),
        ("budget_charges", "reserved"),
    ] {
        let old = format!("{column}_micros");
        let old_exists: bool = tx.query_row(
            "SELECT EXISTS(SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2)",
            params![table, old],
            |r| r.get(0),
        )?;
        if !old_exists {
            continue;
        }
        let new = format!("{column}_nanos");
        // Capped so the product stays an INTEGER (SQLite turns an overflowing one into a REAL);
        // the cap is $9.2 billion, far beyond any hold or cost.
        tx.execute_batch(&format!(
            "ALTER TABLE {table} RENAME COLUMN {old} TO {new};
             UPDATE {table} SET {new} = MIN({new}, {cap}) * {NANOS_PER_MICRO};",
            cap = i64::MAX / NANOS_PER_MICRO,
        ))?;
    }
    Ok(())
}

// ===== Tests =====

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use std::sync::atomic::{AtomicI64, Ordering};

    /// Dollars in tests (always valid).
    fn usd(dollars: f64) -> Usd {
        Usd::from_usd(dollars).unwrap()
    }

    /// A clock tests can move: seconds since the epoch in an atomic.
    fn manual_clock(start: DateTime<Utc>) -> (Clock, Arc<AtomicI64>) {
        let secs = Arc::new(AtomicI64::new(start.timestamp()));
        let s = secs.clone();
        let clock: Clock = Arc::new(move || {
            Utc.timestamp_opt(s.load(Ordering::SeqCst), 0)
                .single()
                .unwrap_or_default()
        });
        (clock, secs)
    }

    fn noon() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 3, 12, 0, 0).unwrap()
    }

    fn policy(limit: f64, alert: Option<f64>) -> BudgetPolicy {
        BudgetPolicy {
            enabled: true,
            max_daily_spend: usd(limit),
            alert_threshold: alert.map(usd),
        }
    }

    fn open(dir: &tempfile::TempDir, p: BudgetPolicy, clock: Clock) -> BudgetLedger {
        BudgetLedger::open(
            dir.path().join("ledger.sqlite3"),
            p,
            clock,
            Durability::ProcessCrash,
        )
        .unwrap()
    }

    /// Every known day's totals, checked against what its rows sum to.
    fn assert_totals_match_rows(ledger: &BudgetLedger) {
        let state = ledger.lock();
        assert!(!state.days.is_empty(), "some day's totals are known");
        for (day, known) in &state.days {
            assert_eq!(*known, totals(&state.conn, day).unwrap(), "day {day}");
        }
    }

    /// A policy set while the manager runs (a re-read configuration) holds from the next
    /// reservation on; what was spent and held before stays; a negative limit is refused.
    #[test]
    fn a_policy_set_while_running_holds_from_the_next_reservation() {
        let dir = tempfile::tempdir().unwrap();
        let (clock, _) = manual_clock(noon());
        let ledger = open(&dir, policy(1.0, None), clock);
        ledger.reserve("a", usd(0.60)).unwrap();
        assert!(ledger.reserve("b", usd(0.30)).is_ok());
        ledger.set_policy(policy(1.0, None)).unwrap();
        ledger.set_policy(policy(0.5, None)).unwrap();
        assert!(matches!(
            ledger.reserve("c", usd(0.01)),
            Err(BudgetError::Exhausted { .. })
        ));
        assert_eq!(ledger.snapshot().unwrap().limit, usd(0.5));
        assert_eq!(ledger.snapshot().unwrap().reserved, usd(0.90));
        ledger.set_policy(policy(2.0, None)).unwrap();
        assert!(ledger.reserve("c", usd(1.0)).is_ok());
        let negative = BudgetPolicy {
            max_daily_spend: Usd::from_nanos(-1),
            ..policy(1.0, None)
        };
        assert!(ledger.set_policy(negative).is_err());
        assert_eq!(ledger.policy(), policy(2.0, None));
    }

    /// A refusal for want of budget is decided from the totals in memory: it neither waits for
    /// the file nor reads it. Another connection holding the write lock would make a refusal
    /// that opened a transaction wait out the busy timeout (5 s) and fail as a storage error.
    #[test]
    fn a_refusal_for_want_of_budget_does_not_touch_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (clock, _) = manual_clock(noon());
        let ledger = open(&dir, policy(1.0, None), clock);
        ledger.reserve("a", usd(0.60)).unwrap();
        let other = Connection::open_with_flags_and_vfs(
            dir.path().join("ledger.sqlite3"),
            OpenFlags::default(),
            STORE_VFS,
        )
        .unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        assert!(matches!(
            ledger.reserve("b", usd(0.50)),
            Err(BudgetError::Exhausted { .. })
        ));
        other.execute_batch("ROLLBACK").unwrap();
        ledger.reserve("b", usd(0.40)).unwrap();
        assert_totals_match_rows(&ledger);
    }

    /// The day totals a reservation checks against are kept in memory, moved by each write:
    /// across reservations, refusals, settlements above and below the hold, releases, a hold
    /// settled the next day and orphans booked, they stay what the rows sum to, and a ledger
    /// opened afresh on the file (which sums them) agrees.
    #[test]
    fn known_day_totals_stay_what_the_rows_sum_to() {
        let dir = tempfile::tempdir().unwrap();
        let (clock, secs) = manual_clock(noon());
        let ledger = open(&dir, policy(1.0, Some(0.5)), clock.clone());
        ledger.reserve("a", usd(0.30)).unwrap();
        ledger.reserve("b", usd(0.30)).unwrap();
        ledger.reserve("c", usd(0.30)).unwrap();
        assert!(matches!(
            ledger.reserve("d", usd(0.30)),
            Err(BudgetError::Exhausted { .. })
        ));
        assert!(matches!(
            ledger.reserve("a", usd(0.01)),
            Err(BudgetError::Duplicate { .. })
        ));
        assert_totals_match_rows(&ledger);
        assert!(ledger.settle("a", usd(0.10)).unwrap().settled);
        let higher = ledger.settle("b", usd(0.45)).unwrap();
        assert_eq!(higher.day_spent, usd(0.55));
        assert!(higher.alert_crossed);
        assert!(ledger.release("c").unwrap());
        assert!(!ledger.release("c").unwrap());
        ledger.reserve("e", usd(0.20)).unwrap();
        ledger.reserve("f", usd(0.20)).unwrap();
        assert_totals_match_rows(&ledger);
        let today = ledger.snapshot().unwrap();
        assert_eq!((today.spent, today.reserved), (usd(0.55), usd(0.40)));

        // The next day: yesterday's hold settles on yesterday.
        secs.fetch_add(24 * 3600, Ordering::SeqCst);
        ledger.reserve("g", usd(0.25)).unwrap();
        let late = ledger.settle("e", usd(0.05)).unwrap();
        assert_eq!(late.day, "2026-11-03");
        assert_eq!(late.day_spent, usd(0.60));
        assert_totals_match_rows(&ledger);
        let next = ledger.snapshot().unwrap();
        assert_eq!((next.spent, next.reserved), (Usd::ZERO, usd(0.25)));
        assert_eq!(next.earlier_holds, usd(0.20));

        // A restart books the holds nobody resumes ("f", "g") as spent.
        drop(ledger);
        let reopened = open(&dir, policy(1.0, Some(0.5)), clock);
        let fresh = reopened.snapshot().unwrap();
        assert_eq!((fresh.spent, fresh.reserved), (next.spent, next.reserved));
        assert_eq!(reopened.book_orphans(&Default::default()).unwrap(), 2);
        let booked = reopened.snapshot().unwrap();
        assert_eq!((booked.spent, booked.reserved), (usd(0.25), Usd::ZERO));
        assert_eq!(booked.earlier_holds, Usd::ZERO);
        assert_totals_match_rows(&reopened);
    }

    /// A panic while the ledger is locked (here: inside a hold's check) leaves the ledger usable,
    /// with totals that are what the rows sum to.
    #[test]
    fn a_panic_under_the_lock_leaves_true_totals() {
        let dir = tempfile::tempdir().unwrap();
        let (clock, _) = manual_clock(noon());
        let ledger = Arc::new(open(&dir, policy(10.0, None), clock));
        ledger.reserve("a", usd(1.0)).unwrap();
        let poisoner = ledger.clone();
        let panicked = std::thread::spawn(move || {
            let mut state = poisoner.lock();
            // A wrong figure left behind by the panic.
            state.days.values_mut().for_each(|t| t.reserved = Usd::ZERO);
            panic!("while holding the ledger");
        })
        .join();
        assert!(panicked.is_err());
        assert!(ledger.ledger.is_poisoned());
        ledger.reserve("b", usd(2.0)).unwrap();
        assert!(!ledger.ledger.is_poisoned(), "recovered once");
        assert_eq!(ledger.snapshot().unwrap().reserved, usd(3.0));
        assert_totals_match_rows(&ledger);
    }

    #[test]
    fn concurrent_reservations_never_overspend() {
        let dir = tempfile::tempdir().unwrap();
        let (clock, _) = manual_clock(noon());
        // $10 limit, $0.30 each: exactly 33 fit ($9.90), the 34th would be $10.20.
        let ledger = Arc::new(open(&dir, policy(10.0, None), clock));
        let handles: Vec<_> = (0..200)
            .map(|i| {
                let l = ledger.clone();
                std::thread::spawn(move || l.reserve(&format!("t{i}"), usd(0.30)))
            })
            .collect();
        let mut ok = Usd::ZERO;
        let mut granted = 0;
        for h in handles {
            match h.join().unwrap() {
                Ok(r) => {
                    granted += 1;
                    ok = ok.saturating_add(r.amount);
                }
                Err(BudgetError::Exhausted { .. }) => {}
                Err(e) => panic!("unexpected error {e}"),
            }
        }
        assert_eq!(granted, 33);
        assert_eq!(ok, usd(9.9), "reserved {ok}");
        let s = ledger.snapshot().unwrap();
        assert_eq!(s.reserved, usd(9.9));
        assert_eq!(s.remaining, usd(0.1));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_reservations_from_tokio_tasks_never_overspend() {
        let dir = tempfile::tempdir().unwrap();
        let (clock, _) = manual_clock(noon());
        let ledger = Arc::new(open(&dir, policy(50.0, Some(40.0)), clock));
        // $50 limit, $5 each (premium max_cost_per_job_usd): exactly 10 fit.
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let l = ledger.clone();
                tokio::task::spawn_blocking(move || l.reserve(&format!("t{i}"), usd(5.0)).is_ok())
            })
            .collect();
        let mut granted = 0;
        for t in tasks {
            if t.await.unwrap() {
                granted += 1;
            }
        }
        assert_eq!(granted, 10);
        assert_eq!(ledger.snapshot().unwrap().reserved, usd(50.0));
    }

    #[test]
    fn exhausted_error_reports_figures() {
        let dir = tempfile::tempdir().unwrap();
        let (clock, _) = manual_clock(noon());
        let ledger = open(&dir, policy(10.0, None), clock);
        ledger.reserve("a", usd(4.0)).unwrap();
        ledger.settle("a", usd(3.0)).unwrap();
        ledger.reserve("b", usd(5.0)).unwrap();
        match ledger.reserve("c", usd(2.5)) {
            Err(BudgetError::Exhausted {
                spent,
                reserved,
                limit,
                requested,
            }) => {
                assert_eq!(
                    (spent, reserved, limit, requested),
                    (usd(3.0), usd(5.0), usd(10.0), usd(2.5))
                );
            }
            other => panic!("expected Exhausted, got {other:?}"),
        }
        // Exactly up to the limit is allowed.
        ledger.reserve("c", usd(2.0)).unwrap();
        assert_eq!(ledger.snapshot().unwrap().remaining, usd(0.0));
    }

    #[test]
    fn settle_lower_frees_room_and_higher_takes_more() {
        let dir = tempfile::tempdir().unwrap();
        let (clock, _) = manual_clock(noon());
        let ledger = open(&dir, policy(10.0, None), clock);
        ledger.reserve("a", usd(5.0)).unwrap();
        ledger.reserve("b", usd(5.0)).unwrap();
        assert!(matches!(
            ledger.reserve("c", usd(1.0)),
            Err(BudgetError::Exhausted { .. })
        ));
        let s = ledger.settle("a", usd(0.25)).unwrap();
        assert!(s.settled);
        assert_eq!(s.day_spent, usd(0.25));
        ledger.reserve("c", usd(4.75)).unwrap();
        assert!(matches!(
            ledger.reserve("d", usd(0.01)),
            Err(BudgetError::Exhausted { .. })
        ));
        // Settling above the hold books the real cost.
        ledger.settle("b", usd(6.0)).unwrap();
        let snap = ledger.snapshot().unwrap();
        assert_eq!(snap.spent, usd(6.25));
        assert_eq!(snap.reserved, usd(4.75));
        assert_eq!(snap.remaining, usd(0.0));
    }

    #[test]
    fn settle_and_release_are_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let (clock, _) = manual_clock(noon());
        let ledger = open(&dir, policy(10.0, None), clock);
        ledger.reserve("a", usd(2.0)).unwrap();
        assert!(ledger.settle("a", usd(1.0)).unwrap().settled);
        assert!(!ledger.settle("a", usd(1.0)).unwrap().settled);
        assert!(!ledger.release("a").unwrap());
        assert_eq!(ledger.snapshot().unwrap().spent, usd(1.0));

        ledger.reserve("b", usd(2.0)).unwrap();
        assert!(ledger.release("b").unwrap());
        assert!(!ledger.release("b").unwrap());
        assert!(!ledger.settle("b", usd(1.0)).unwrap().settled);
        let snap = ledger.snapshot().unwrap();
        assert_eq!((snap.spent, snap.reserved), (usd(1.0), Usd::ZERO));
        // A released task may be reserved again (e.g. rerouted to another paid programmer);
        // a settled one may not be charged twice.
        ledger.reserve("b", usd(2.0)).unwrap();
        assert!(matches!(
            ledger.reserve("b", usd(2.0)),
            Err(BudgetError::Duplicate { .. })
        ));
        assert!(matches!(
            ledger.reserve("a", usd(2.0)),
            Err(BudgetError::Duplicate { .. })
        ));
    }

    #[test]
    fn negative_amounts_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (clock, _) = manual_clock(noon());
        let ledger = open(&dir, policy(10.0, None), clock);
        let minus = Usd::ZERO.saturating_sub(Usd::from_nanos(1));
        assert!(matches!(
            ledger.reserve("a", minus),
            Err(BudgetError::InvalidAmount(_))
        ));
        ledger.reserve("a", usd(1.0)).unwrap();
        assert!(matches!(
            ledger.settle("a", minus),
            Err(BudgetError::InvalidAmount(_))
        ));
        assert!(ledger.settle("a", Usd::ZERO).unwrap().settled);
    }

    #[test]
    fn alert_fires_once_per_day_and_survives_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (clock, secs) = manual_clock(noon());
        let ledger = open(&dir, policy(50.0, Some(40.0)), clock.clone());
        let mut fired = 0;
        for i in 0..12 {
            let id = format!("t{i}");
            ledger.reserve(&id, usd(5.0)).unwrap();
            let s = ledger.settle(&id, usd(4.0)).unwrap();
            if s.alert_crossed {
                fired += 1;
                // 10 × $4 = $40: the tenth settlement reaches the threshold.
                assert_eq!(i, 9);
                assert_eq!(s.day_spent, usd(40.0));
            }
        }
        assert_eq!(fired, 1);
        let snap = ledger.snapshot().unwrap();
        assert!(snap.alert_active);
        assert_eq!(snap.alert_since_ms, Some(noon().timestamp_millis()));
        drop(ledger);

        // Same day after a restart: already fired, stays quiet.
        let ledger = open(&dir, policy(50.0, Some(40.0)), clock);
        assert!(ledger.snapshot().unwrap().alert_active);
        ledger.reserve("late", usd(1.0)).unwrap();
        assert!(!ledger.settle("late", usd(1.0)).unwrap().alert_crossed);

        // Next day: inactive until crossed again.
        secs.fetch_add(86_400, Ordering::SeqCst);
        assert!(!ledger.snapshot().unwrap().alert_active);
        ledger.reserve("next", usd(45.0)).unwrap();
        assert!(ledger.settle("next", usd(41.0)).unwrap().alert_crossed);
    }

    #[test]
    fn orphaned_reservations_can_raise_the_alert_after_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (clock, _) = manual_clock(noon());
        let ledger = open(&dir, policy(50.0, Some(40.0)), clock.clone());
        ledger.reserve("a", usd(30.0)).unwrap();
        ledger.settle("a", usd(30.0)).unwrap();
        assert!(!ledger.poll_alert().unwrap(), "$30 is below the threshold");
        ledger.reserve("crashed", usd(15.0)).unwrap();
        drop(ledger);

        let ledger = open(&dir, policy(50.0, Some(40.0)), clock);
        assert!(!ledger.snapshot().unwrap().alert_active);
        assert_eq!(ledger.book_orphans(&Default::default()).unwrap(), 1);
        assert!(
            ledger.poll_alert().unwrap(),
            "$45 booked after restart crosses $40"
        );
        assert!(!ledger.poll_alert().unwrap());
        assert!(ledger.snapshot().unwrap().alert_active);
    }

    #[test]
    fn no_alert_without_threshold_or_when_disabled() {
        let dir = tempfile::tempdir().unwrap();
        let (clock, _) = manual_clock(noon());
        let ledger = open(&dir, policy(50.0, None), clock.clone());
        ledger.reserve("a", usd(49.0)).unwrap();
        assert!(!ledger.settle("a", usd(49.0)).unwrap().alert_crossed);
        assert!(!ledger.snapshot().unwrap().alert_active);

        let dir2 = tempfile::tempdir().unwrap();
        let off = BudgetPolicy {
            enabled: false,
            max_daily_spend: usd(50.0),
            alert_threshold: Some(usd(1.0)),
        };
        let ledger = open(&dir2, off, clock);
        ledger.reserve("a", usd(49.0)).unwrap();
        assert!(!ledger.settle("a", usd(49.0)).unwrap().alert_crossed);
    }

    #[test]
    fn reopen_keeps_spend_and_books_orphaned_reservations() {
        let dir = tempfile::tempdir().unwrap();
        let (clock, _) = manual_clock(noon());
        let ledger = open(&dir, policy(50.0, None), clock.clone());
        ledger.reserve("done", usd(5.0)).unwrap();
        ledger.settle("done", usd(1.5)).unwrap();
        ledger.reserve("crashed", usd(5.0)).unwrap();
        drop(ledger);

        let ledger = open(&dir, policy(50.0, None), clock.clone());
        assert_eq!(
            ledger.held("crashed").unwrap(),
            Some(usd(5.0)),
            "holds survive a reopen"
        );
        assert_eq!(ledger.held("done").unwrap(), None);
        let keep = std::collections::HashSet::from(["resumed".to_string()]);
        ledger.reserve("resumed", usd(2.0)).unwrap();
        assert_eq!(ledger.book_orphans(&keep).unwrap(), 1);
        assert_eq!(
            ledger.held("resumed").unwrap(),
            Some(usd(2.0)),
            "a kept hold stays"
        );
        ledger.release("resumed").unwrap();
        let snap = ledger.snapshot().unwrap();
        assert_eq!(
            snap.spent,
            usd(6.5),
            "orphaned hold counted as spent at its reserved amount"
        );
        assert_eq!(snap.reserved, usd(0.0));
        assert_eq!(snap.remaining, usd(43.5));
        // The orphan cannot be settled or charged again.
        assert!(!ledger.settle("crashed", usd(0.1)).unwrap().settled);
        assert!(matches!(
            ledger.reserve("crashed", usd(1.0)),
            Err(BudgetError::Duplicate { .. })
        ));
        drop(ledger);

        // A clean reopen books nothing more.
        let ledger = open(&dir, policy(50.0, None), clock);
        assert_eq!(ledger.book_orphans(&keep).unwrap(), 0);
        assert_eq!(ledger.snapshot().unwrap().spent, usd(6.5));
    }

    #[test]
    fn new_utc_day_starts_from_zero_and_late_settlement_books_on_reservation_day() {
        let dir = tempfile::tempdir().unwrap();
        let (clock, secs) = manual_clock(Utc.with_ymd_and_hms(2026, 11, 3, 23, 59, 0).unwrap());
        let ledger = open(&dir, policy(10.0, None), clock);
        ledger.reserve("a", usd(6.0)).unwrap();
        ledger.settle("a", usd(6.0)).unwrap();
        ledger.reserve("b", usd(4.0)).unwrap();
        assert!(matches!(
            ledger.reserve("c", usd(1.0)),
            Err(BudgetError::Exhausted { .. })
        ));
        assert_eq!(ledger.snapshot().unwrap().day, "2026-11-03");

        secs.fetch_add(120, Ordering::SeqCst); // 00:01 UTC the next day
        let snap = ledger.snapshot().unwrap();
        assert_eq!(snap.day, "2026-11-04");
        assert_eq!(
            (snap.spent, snap.reserved, snap.remaining),
            (Usd::ZERO, Usd::ZERO, usd(10.0))
        );
        // Yesterday's open hold does not count against today, but it does not vanish either.
        assert_eq!(snap.earlier_holds, usd(4.0));
        let r = ledger.reserve("c", usd(10.0)).unwrap();
        assert_eq!(r.day, "2026-11-04");
        // "b" was reserved yesterday: its cost goes to yesterday, today stays full.
        let s = ledger.settle("b", usd(3.0)).unwrap();
        assert_eq!(s.day, "2026-11-03");
        assert_eq!(s.day_spent, usd(9.0));
        let snap = ledger.snapshot().unwrap();
        assert_eq!((snap.spent, snap.earlier_holds), (Usd::ZERO, Usd::ZERO));
    }

    #[test]
    fn disabled_budget_never_refuses_but_records() {
        let dir = tempfile::tempdir().unwrap();
        let (clock, _) = manual_clock(noon());
        let off = BudgetPolicy {
            enabled: false,
            max_daily_spend: usd(1.0),
            alert_threshold: None,
        };
        let ledger = open(&dir, off, clock);
        for i in 0..20 {
            ledger.reserve(&format!("t{i}"), usd(5.0)).unwrap();
        }
        ledger.settle("t0", usd(2.0)).unwrap();
        let snap = ledger.snapshot().unwrap();
        assert_eq!((snap.spent, snap.reserved), (usd(2.0), usd(95.0)));
        assert_eq!(ledger.remaining().unwrap(), None);
    }

    #[tokio::test]
    async fn power_loss_durability_syncs_commits_when_asked_never_inside_them() {
        let dir = tempfile::tempdir().unwrap();
        let open = |durability| {
            BudgetLedger::open(
                dir.path().join("ledger.sqlite3"),
                policy(100.0, None),
                manual_clock(noon()).0,
                durability,
            )
            .unwrap()
        };
        let synchronous = |ledger: &BudgetLedger| -> i64 {
            let state = ledger.lock();
            state
                .conn
                .pragma_query_value(None, "synchronous", |r| r.get(0))
                .unwrap()
        };
        // The default: nothing to sync, `durable` is immediate.
        let crash = open(Durability::ProcessCrash);
        assert_eq!(synchronous(&crash), 1, "NORMAL");
        assert!(crash.wal_sync.is_none());
        crash.reserve("a", usd(1.0)).unwrap();
        crash.durable().await.unwrap();
        drop(crash);

        // power_loss: a commit does not flush (NORMAL); `durable` syncs what came before it.
        let ledger = Arc::new(open(Durability::PowerLoss));
        assert_eq!(synchronous(&ledger), 1, "NORMAL: no flush inside a commit");
        let sync = ledger.wal_sync.clone().expect("a WAL sync");
        for i in 0..20 {
            ledger.reserve(&format!("t{i}"), usd(1.0)).unwrap();
        }
        ledger.settle("t0", usd(0.5)).unwrap();
        assert!(ledger.release("t1").unwrap());
        let made = sync.committed.load(Ordering::Acquire);
        assert!(
            *sync.synced.borrow() < made,
            "nothing synced before it was asked for"
        );
        // Many waiters at once share syncs, and each sees its commits durable.
        let waiters: Vec<_> = (0..8)
            .map(|_| {
                let ledger = Arc::clone(&ledger);
                tokio::spawn(async move { ledger.durable().await })
            })
            .collect();
        for waiter in waiters {
            waiter.await.unwrap().unwrap();
        }
        assert!(*sync.synced.borrow() >= made);
        assert!(sync.failure().is_none());
    }

    #[test]
    fn the_ledger_is_exactly_the_sum_of_sub_micro_dollar_costs() {
        let dir = tempfile::tempdir().unwrap();
        let (clock, _) = manual_clock(noon());
        let ledger = open(&dir, policy(1000.0, None), clock);
        // Costs finer than a micro-dollar (a micro-dollar ledger rounded each of these and the
        // ten roundings added up to 5 µ$ off the sum).
        let costs: Vec<Usd> = (0..1000)
            .map(|i| Usd::from_nanos(100_000_500 + i))
            .collect();
        for (i, &cost) in costs.iter().enumerate() {
            let id = format!("t{i}");
            ledger.reserve(&id, usd(0.5)).unwrap();
            ledger.settle(&id, cost).unwrap();
        }
        let sum: Usd = costs.iter().copied().sum();
        assert_eq!(ledger.snapshot().unwrap().spent, sum);
        assert_eq!(sum.nanos(), 100_000_500_000 + 499_500);
    }

    /// The schema of the micro-dollar version, as it created it.
    const OLD_MICRO_SCHEMA: &str = "
        CREATE TABLE budget_reservations (
            task_id TEXT PRIMARY KEY, day TEXT NOT NULL, amount_micros INTEGER NOT NULL,
            created_ms INTEGER NOT NULL);
        CREATE INDEX budget_reservations_day ON budget_reservations(day);
        CREATE TABLE budget_charges (
            task_id TEXT PRIMARY KEY, day TEXT NOT NULL, amount_micros INTEGER NOT NULL,
            reserved_micros INTEGER NOT NULL, kind TEXT NOT NULL, booked_ms INTEGER NOT NULL);
        CREATE INDEX budget_charges_day ON budget_charges(day);
        CREATE TABLE budget_alerts (day TEXT PRIMARY KEY, fired_ms INTEGER NOT NULL);";

    #[test]
    fn a_micro_dollar_ledger_of_the_old_version_opens_with_every_figure_times_1000() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.sqlite3");
        {
            let old = Connection::open(&path).unwrap();
            old.pragma_update(None, "journal_mode", "WAL").unwrap();
            old.execute_batch(OLD_MICRO_SCHEMA).unwrap();
            old.execute_batch(
                "INSERT INTO budget_charges VALUES ('done#1', '2026-11-03', 1234567, 5000000, 'settled', 1);
                 INSERT INTO budget_charges VALUES ('old#1', '2026-11-02', 7, 5000000, 'settled', 1);
                 INSERT INTO budget_reservations VALUES ('crashed#1', '2026-11-03', 2500001, 1);
                 INSERT INTO budget_alerts VALUES ('2026-11-03', 42);",
            )
            .unwrap();
        }
        let (clock, secs) = manual_clock(noon());
        let ledger = open(&dir, policy(50.0, Some(40.0)), clock.clone());
        assert_eq!(
            ledger.held("crashed#1").unwrap(),
            Some(Usd::from_nanos(2_500_001_000))
        );
        assert_eq!(ledger.book_orphans(&Default::default()).unwrap(), 1);
        let snap = ledger.snapshot().unwrap();
        assert_eq!(snap.day, "2026-11-03");
        // 1_234_567 µ$ settled + 2_500_001 µ$ orphaned hold, each × 1000 exactly.
        assert_eq!(snap.spent, Usd::from_nanos(1_234_567_000 + 2_500_001_000));
        assert_eq!(snap.reserved, Usd::ZERO);
        assert_eq!(snap.alert_since_ms, Some(42), "the alert mark is kept");
        secs.fetch_sub(86_400, Ordering::SeqCst);
        assert_eq!(ledger.snapshot().unwrap().spent, Usd::from_nanos(7_000));
        secs.fetch_add(86_400, Ordering::SeqCst);
        // The migrated file works as a new one, and opening it again migrates nothing twice.
        ledger.reserve("next#1", usd(1.0)).unwrap();
        ledger.settle("next#1", Usd::from_nanos(1)).unwrap();
        drop(ledger);
        let ledger = open(&dir, policy(50.0, Some(40.0)), clock);
        assert_eq!(
            ledger.snapshot().unwrap().spent,
            Usd::from_nanos(1_234_567_000 + 2_500_001_000 + 1)
        );
        // Closed first: the ledger keeps its file to itself while it is open.
        drop(ledger);
        let conn = Connection::open(&path).unwrap();
        let reserved: i64 = conn
            .query_row(
                "SELECT reserved_nanos FROM budget_charges WHERE task_id = 'done#1'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(reserved, 5_000_000_000);
    }
}
