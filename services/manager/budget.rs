//! The pool's daily spend ledger: reserve before a paid dispatch, settle to the real cost after.
//!
//! One ledger for the whole pool, kept in SQLite (one file in the data directory, tables prefixed
//! `budget_` so it may share a file with the task store). The day is the UTC calendar day of the
//! injected [`Clock`].
//!
//! # Life of a paid task's money
//!
//! 1. [`BudgetLedger::reserve`] holds the programmer's `max_cost_per_job_usd` *before* the dispatch.
//!    The check and the hold are one `BEGIN IMMEDIATE` transaction, so concurrent dispatches can
//!    never together overspend: `spent + reserved + amount > limit` is refused with
//!    [`BudgetError::Exhausted`].
//! 2. [`BudgetLedger::settle`] turns the hold into spend of the *real* cost (lower or higher than the
//!    hold), booked on the day the reservation was made. [`BudgetLedger::release`] drops a hold for
//!    a task that never ran. Both are idempotent.
//!
//! # Invariants
//!
//! - Money is stored as integer micro-dollars (no float drift over thousands of settlements) and
//!   exposed as `f64` US dollars.
//! - The budget-threshold alert fires at most once per UTC day, and the "fired" mark is persisted, so
//!   a restarted manager does not fire it again.
//! - Restart is conservative: a reservation left behind by a previous process (it crashed before
//!   settling) is booked as spent at its reserved amount when the ledger is opened. We cannot know
//!   what the task really cost; assuming the cap means the budget can only be under-, never
//!   over-spent. Consequence: two live processes must not share one ledger file. Call
//!   [`BudgetLedger::poll_alert`] after opening: the booked orphans may have crossed the threshold.
//! - A disabled budget never refuses, but still records spend so status pages stay truthful; it never
//!   raises the alert.
//!
//! All methods are synchronous and short (one small SQLite transaction). The ledger is `Send + Sync`;
//! async callers may call it directly or through `spawn_blocking`.

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

// ===== Public types =====

/// Where the ledger reads "now" from. Injectable so tests can cross midnight; production uses
/// [`system_clock`].
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// The wall clock (UTC).
pub fn system_clock() -> Clock {
    Arc::new(Utc::now)
}

/// The budget rules (the configuration's `cost_optimization` section, as plain values).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetPolicy {
    /// When false, reservations are never refused (spend is still recorded) and no alert fires.
    pub enabled: bool,
    /// Spend plus holds may not exceed this per UTC day.
    pub max_daily_spend_usd: f64,
    /// Settled spend at or above this raises the budget alert, once per day. `None` = no alert.
    pub alert_threshold_usd: Option<f64>,
}

/// A hold on the budget for one paid task, made by [`BudgetLedger::reserve`].
#[derive(Debug, Clone, PartialEq)]
pub struct Reservation {
    /// The task the money is held for (the ledger's key: one reservation per task).
    pub task_id: String,
    /// The UTC day ("YYYY-MM-DD") the hold, and later its settlement, is booked on.
    pub day: String,
    /// The amount held, in US dollars (rounded to micro-dollars).
    pub amount_usd: f64,
}

/// What [`BudgetLedger::settle`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct Settlement {
    /// False when there was no open reservation for the task (already settled or released, or
    /// never reserved): nothing changed.
    pub settled: bool,
    /// The day the cost was booked on (empty when `settled` is false).
    pub day: String,
    /// That day's settled spend after this settlement, in US dollars.
    pub day_spent_usd: f64,
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
    pub spent_usd: f64,
    /// Held for paid tasks reserved today and not yet settled.
    pub reserved_usd: f64,
    /// Held for paid tasks reserved on earlier days and not yet settled. They count against the
    /// day they were made (where they settle), not today, but stay visible until settled.
    pub earlier_holds_usd: f64,
    /// The daily limit.
    pub limit_usd: f64,
    /// `limit - spent - reserved`, never below 0.
    pub remaining_usd: f64,
    /// The alert threshold (0 when none is configured).
    pub alert_threshold_usd: f64,
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
        "daily budget exhausted: spent ${spent:.2} + reserved ${reserved:.2} + requested ${requested:.2} exceeds the limit of ${limit:.2}"
    )]
    Exhausted {
        /// Settled spend today, US dollars.
        spent: f64,
        /// Held today, US dollars.
        reserved: f64,
        /// The daily limit, US dollars.
        limit: f64,
        /// The amount that was asked for, US dollars.
        requested: f64,
    },
    /// The task already has a reservation or a settled charge; one task is charged once.
    #[error("task {task_id} already has a budget reservation or charge")]
    Duplicate {
        /// The task id.
        task_id: String,
    },
    /// A negative, NaN or infinite amount.
    #[error("invalid amount ${0}: must be a finite number >= 0")]
    InvalidAmount(f64),
    /// The SQLite file could not be opened, read or written.
    #[error("budget ledger storage: {0}")]
    Storage(#[from] rusqlite::Error),
}

// ===== Money =====

const MICROS_PER_USD: f64 = 1_000_000.0;

fn to_micros(usd: f64) -> Result<i64, BudgetError> {
    if !usd.is_finite() || usd < 0.0 {
        return Err(BudgetError::InvalidAmount(usd));
    }
    // `as` saturates for absurdly large values, which is what a limit check wants.
    Ok((usd * MICROS_PER_USD).round() as i64)
}

fn to_usd(micros: i64) -> f64 {
    micros as f64 / MICROS_PER_USD
}

fn day_of(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d").to_string()
}

// ===== The ledger =====

/// The persisted daily ledger. See the module docs for the rules.
pub struct BudgetLedger {
    conn: Mutex<Connection>,
    policy: BudgetPolicy,
    limit_micros: i64,
    alert_micros: Option<i64>,
    clock: Clock,
}

impl std::fmt::Debug for BudgetLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BudgetLedger")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS budget_reservations (
    task_id       TEXT PRIMARY KEY,
    day           TEXT NOT NULL,
    amount_micros INTEGER NOT NULL,
    created_ms    INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS budget_reservations_day ON budget_reservations(day);
CREATE TABLE IF NOT EXISTS budget_charges (
    task_id         TEXT PRIMARY KEY,
    day             TEXT NOT NULL,
    amount_micros   INTEGER NOT NULL,
    reserved_micros INTEGER NOT NULL,
    kind            TEXT NOT NULL,   -- 'settled' | 'orphaned' (left by a previous process)
    booked_ms       INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS budget_charges_day ON budget_charges(day);
CREATE TABLE IF NOT EXISTS budget_alerts (
    day      TEXT PRIMARY KEY,
    fired_ms INTEGER NOT NULL
);
";

impl BudgetLedger {
    /// Opens (creating if needed) the ledger at `path`, in WAL mode with a busy timeout. Holds a
    /// previous process left open stay: their tasks may still be running (see
    /// [`book_orphans`](Self::book_orphans)).
    pub fn open(
        path: impl AsRef<Path>,
        policy: BudgetPolicy,
        clock: Clock,
    ) -> Result<Self, BudgetError> {
        let limit_micros = to_micros(policy.max_daily_spend_usd)?;
        let alert_micros = policy.alert_threshold_usd.map(to_micros).transpose()?;
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.execute_batch(SCHEMA)?;
        Ok(Self {
            conn: Mutex::new(conn),
            policy,
            limit_micros,
            alert_micros,
            clock,
        })
    }

    /// Books every open hold whose key is not in `keep` as spent at its reserved amount: a
    /// restarted manager keeps the holds of the tasks it resumes, and nothing knows what the
    /// others spent, so the ledger must not under-count. Returns how many were booked.
    pub fn book_orphans(
        &self,
        keep: &std::collections::HashSet<String>,
    ) -> Result<usize, BudgetError> {
        let now_ms = (self.clock)().timestamp_millis();
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
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
                "INSERT OR IGNORE INTO budget_charges (task_id, day, amount_micros, reserved_micros, kind, booked_ms)
                 SELECT task_id, day, amount_micros, amount_micros, 'orphaned', ?1
                 FROM budget_reservations WHERE task_id = ?2",
                params![now_ms, key],
            )?;
            tx.execute(
                "DELETE FROM budget_reservations WHERE task_id = ?1",
                params![key],
            )?;
        }
        tx.commit()?;
        Ok(orphans.len())
    }

    /// The amount held for `task_id` (US dollars), if a hold is open.
    pub fn held(&self, task_id: &str) -> Result<Option<f64>, BudgetError> {
        let conn = self.lock();
        let micros: Option<i64> = conn
            .query_row(
                "SELECT amount_micros FROM budget_reservations WHERE task_id = ?1",
                params![task_id],
                |r| r.get(0),
            )
            .optional()?;
        Ok(micros.map(to_usd))
    }

    /// The policy this ledger enforces.
    pub fn policy(&self) -> BudgetPolicy {
        self.policy
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock dropped its transaction (rolled back), so the connection
        // is still consistent: recover it rather than poisoning the whole manager.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Holds `amount_usd` for `task_id` on today's ledger, or refuses when the day would go over
    /// its limit (never refuses when the policy is disabled).
    pub fn reserve(&self, task_id: &str, amount_usd: f64) -> Result<Reservation, BudgetError> {
        let amount = to_micros(amount_usd)?;
        let now = (self.clock)();
        let day = day_of(now);
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
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
        let (spent, reserved) = totals(&tx, &day)?;
        if self.policy.enabled
            && spent.saturating_add(reserved).saturating_add(amount) > self.limit_micros
        {
            return Err(BudgetError::Exhausted {
                spent: to_usd(spent),
                reserved: to_usd(reserved),
                limit: to_usd(self.limit_micros),
                requested: to_usd(amount),
            });
        }
        tx.execute(
            "INSERT INTO budget_reservations (task_id, day, amount_micros, created_ms) VALUES (?1, ?2, ?3, ?4)",
            params![task_id, day, amount, now.timestamp_millis()],
        )?;
        tx.commit()?;
        Ok(Reservation {
            task_id: task_id.to_owned(),
            day,
            amount_usd: to_usd(amount),
        })
    }

    /// Converts `task_id`'s hold into spend of `actual_cost_usd` on the day the hold was made, and
    /// reports whether that made the day cross the alert threshold for the first time. A second
    /// call (or a call without a hold) changes nothing and returns `settled: false`.
    pub fn settle(&self, task_id: &str, actual_cost_usd: f64) -> Result<Settlement, BudgetError> {
        let cost = to_micros(actual_cost_usd)?;
        let now_ms = (self.clock)().timestamp_millis();
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let held: Option<(String, i64)> = tx
            .query_row(
                "SELECT day, amount_micros FROM budget_reservations WHERE task_id = ?1",
                params![task_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((day, reserved)) = held else {
            return Ok(Settlement {
                settled: false,
                day: String::new(),
                day_spent_usd: 0.0,
                alert_crossed: false,
            });
        };
        tx.execute(
            "DELETE FROM budget_reservations WHERE task_id = ?1",
            params![task_id],
        )?;
        tx.execute(
            "INSERT INTO budget_charges (task_id, day, amount_micros, reserved_micros, kind, booked_ms)
             VALUES (?1, ?2, ?3, ?4, 'settled', ?5)",
            params![task_id, day, cost, reserved, now_ms],
        )?;
        let (spent, _) = totals(&tx, &day)?;
        let alert_crossed = self.mark_alert(&tx, &day, spent, now_ms)?;
        tx.commit()?;
        Ok(Settlement {
            settled: true,
            day,
            day_spent_usd: to_usd(spent),
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
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let (spent, _) = totals(&tx, &day)?;
        let fired = self.mark_alert(&tx, &day, spent, now.timestamp_millis())?;
        tx.commit()?;
        Ok(fired)
    }

    /// Records the alert of `day` when `spent` reached the threshold; true when newly recorded.
    fn mark_alert(
        &self,
        conn: &Connection,
        day: &str,
        spent: i64,
        now_ms: i64,
    ) -> rusqlite::Result<bool> {
        match self.alert_micros {
            Some(threshold) if self.policy.enabled && spent >= threshold => Ok(conn.execute(
                "INSERT OR IGNORE INTO budget_alerts (day, fired_ms) VALUES (?1, ?2)",
                params![day, now_ms],
            )? == 1),
            _ => Ok(false),
        }
    }

    /// Drops `task_id`'s hold (the task never ran on a paid model). Returns false when there was
    /// none (already released or settled): calling it twice is harmless.
    pub fn release(&self, task_id: &str) -> Result<bool, BudgetError> {
        let conn = self.lock();
        let n = conn.execute(
            "DELETE FROM budget_reservations WHERE task_id = ?1",
            params![task_id],
        )?;
        Ok(n == 1)
    }

    /// What is left today for new reservations, in US dollars, or `None` when the budget is
    /// disabled (unlimited). Advisory: a later [`reserve`](Self::reserve) is the real check.
    pub fn remaining_usd(&self) -> Result<Option<f64>, BudgetError> {
        if !self.policy.enabled {
            return Ok(None);
        }
        Ok(Some(self.snapshot()?.remaining_usd))
    }

    /// Today's figures. A new UTC day starts from 0.
    pub fn snapshot(&self) -> Result<BudgetSnapshot, BudgetError> {
        let day = day_of((self.clock)());
        let conn = self.lock();
        let (spent, reserved) = totals(&conn, &day)?;
        let earlier: i64 = conn.query_row(
            "SELECT COALESCE(SUM(amount_micros), 0) FROM budget_reservations WHERE day < ?1",
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
        let remaining = self
            .limit_micros
            .saturating_sub(spent)
            .saturating_sub(reserved)
            .max(0);
        Ok(BudgetSnapshot {
            day,
            spent_usd: to_usd(spent),
            reserved_usd: to_usd(reserved),
            earlier_holds_usd: to_usd(earlier),
            limit_usd: to_usd(self.limit_micros),
            remaining_usd: to_usd(remaining),
            alert_threshold_usd: self.alert_micros.map(to_usd).unwrap_or(0.0),
            alert_active: alert_since_ms.is_some(),
            alert_since_ms,
        })
    }
}

/// (settled spend, open holds) of `day`, in micro-dollars.
fn totals(conn: &Connection, day: &str) -> rusqlite::Result<(i64, i64)> {
    conn.query_row(
        "SELECT (SELECT COALESCE(SUM(amount_micros), 0) FROM budget_charges WHERE day = ?1),
                (SELECT COALESCE(SUM(amount_micros), 0) FROM budget_reservations WHERE day = ?1)",
        params![day],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
}

// ===== Tests =====

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use std::sync::atomic::{AtomicI64, Ordering};

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
            max_daily_spend_usd: limit,
            alert_threshold_usd: alert,
        }
    }

    fn open(dir: &tempfile::TempDir, p: BudgetPolicy, clock: Clock) -> BudgetLedger {
        BudgetLedger::open(dir.path().join("ledger.sqlite3"), p, clock).unwrap()
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
                std::thread::spawn(move || l.reserve(&format!("t{i}"), 0.30))
            })
            .collect();
        let mut ok = 0.0;
        let mut granted = 0;
        for h in handles {
            match h.join().unwrap() {
                Ok(r) => {
                    granted += 1;
                    ok += r.amount_usd;
                }
                Err(BudgetError::Exhausted { .. }) => {}
                Err(e) => panic!("unexpected error {e}"),
            }
        }
        assert_eq!(granted, 33);
        assert!(ok <= 10.0 + 1e-9, "reserved {ok}");
        let s = ledger.snapshot().unwrap();
        assert_eq!(s.reserved_usd, 9.9);
        assert_eq!(s.remaining_usd, 0.1);
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
                tokio::task::spawn_blocking(move || l.reserve(&format!("t{i}"), 5.0).is_ok())
            })
            .collect();
        let mut granted = 0;
        for t in tasks {
            if t.await.unwrap() {
                granted += 1;
            }
        }
        assert_eq!(granted, 10);
        assert_eq!(ledger.snapshot().unwrap().reserved_usd, 50.0);
    }

    #[test]
    fn exhausted_error_reports_figures() {
        let dir = tempfile::tempdir().unwrap();
        let (clock, _) = manual_clock(noon());
        let ledger = open(&dir, policy(10.0, None), clock);
        ledger.reserve("a", 4.0).unwrap();
        ledger.settle("a", 3.0).unwrap();
        ledger.reserve("b", 5.0).unwrap();
        match ledger.reserve("c", 2.5) {
            Err(BudgetError::Exhausted {
                spent,
                reserved,
                limit,
                requested,
            }) => {
                assert_eq!((spent, reserved, limit, requested), (3.0, 5.0, 10.0, 2.5));
            }
            other => panic!("expected Exhausted, got {other:?}"),
        }
        // Exactly up to the limit is allowed.
        ledger.reserve("c", 2.0).unwrap();
        assert_eq!(ledger.snapshot().unwrap().remaining_usd, 0.0);
    }

    #[test]
    fn settle_lower_frees_room_and_higher_takes_more() {
        let dir = tempfile::tempdir().unwrap();
        let (clock, _) = manual_clock(noon());
        let ledger = open(&dir, policy(10.0, None), clock);
        ledger.reserve("a", 5.0).unwrap();
        ledger.reserve("b", 5.0).unwrap();
        assert!(matches!(
            ledger.reserve("c", 1.0),
            Err(BudgetError::Exhausted { .. })
        ));
        let s = ledger.settle("a", 0.25).unwrap();
        assert!(s.settled);
        assert_eq!(s.day_spent_usd, 0.25);
        ledger.reserve("c", 4.75).unwrap();
        assert!(matches!(
            ledger.reserve("d", 0.01),
            Err(BudgetError::Exhausted { .. })
        ));
        // Settling above the hold books the real cost.
        ledger.settle("b", 6.0).unwrap();
        let snap = ledger.snapshot().unwrap();
        assert_eq!(snap.spent_usd, 6.25);
        assert_eq!(snap.reserved_usd, 4.75);
        assert_eq!(snap.remaining_usd, 0.0);
    }

    #[test]
    fn settle_and_release_are_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let (clock, _) = manual_clock(noon());
        let ledger = open(&dir, policy(10.0, None), clock);
        ledger.reserve("a", 2.0).unwrap();
        assert!(ledger.settle("a", 1.0).unwrap().settled);
        assert!(!ledger.settle("a", 1.0).unwrap().settled);
        assert!(!ledger.release("a").unwrap());
        assert_eq!(ledger.snapshot().unwrap().spent_usd, 1.0);

        ledger.reserve("b", 2.0).unwrap();
        assert!(ledger.release("b").unwrap());
        assert!(!ledger.release("b").unwrap());
        assert!(!ledger.settle("b", 1.0).unwrap().settled);
        let snap = ledger.snapshot().unwrap();
        assert_eq!((snap.spent_usd, snap.reserved_usd), (1.0, 0.0));
        // A released task may be reserved again (e.g. rerouted to another paid programmer);
        // a settled one may not be charged twice.
        ledger.reserve("b", 2.0).unwrap();
        assert!(matches!(
            ledger.reserve("b", 2.0),
            Err(BudgetError::Duplicate { .. })
        ));
        assert!(matches!(
            ledger.reserve("a", 2.0),
            Err(BudgetError::Duplicate { .. })
        ));
    }

    #[test]
    fn invalid_amounts_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (clock, _) = manual_clock(noon());
        let ledger = open(&dir, policy(10.0, None), clock);
        assert!(matches!(
            ledger.reserve("a", -1.0),
            Err(BudgetError::InvalidAmount(_))
        ));
        assert!(matches!(
            ledger.reserve("a", f64::NAN),
            Err(BudgetError::InvalidAmount(_))
        ));
        ledger.reserve("a", 1.0).unwrap();
        assert!(matches!(
            ledger.settle("a", f64::INFINITY),
            Err(BudgetError::InvalidAmount(_))
        ));
        assert!(ledger.settle("a", 0.0).unwrap().settled);
    }

    #[test]
    fn alert_fires_once_per_day_and_survives_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (clock, secs) = manual_clock(noon());
        let ledger = open(&dir, policy(50.0, Some(40.0)), clock.clone());
        let mut fired = 0;
        for i in 0..12 {
            let id = format!("t{i}");
            ledger.reserve(&id, 5.0).unwrap();
            let s = ledger.settle(&id, 4.0).unwrap();
            if s.alert_crossed {
                fired += 1;
                // 10 × $4 = $40: the tenth settlement reaches the threshold.
                assert_eq!(i, 9);
                assert_eq!(s.day_spent_usd, 40.0);
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
        ledger.reserve("late", 1.0).unwrap();
        assert!(!ledger.settle("late", 1.0).unwrap().alert_crossed);

        // Next day: inactive until crossed again.
        secs.fetch_add(86_400, Ordering::SeqCst);
        assert!(!ledger.snapshot().unwrap().alert_active);
        ledger.reserve("next", 45.0).unwrap();
        assert!(ledger.settle("next", 41.0).unwrap().alert_crossed);
    }

    #[test]
    fn orphaned_reservations_can_raise_the_alert_after_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (clock, _) = manual_clock(noon());
        let ledger = open(&dir, policy(50.0, Some(40.0)), clock.clone());
        ledger.reserve("a", 30.0).unwrap();
        ledger.settle("a", 30.0).unwrap();
        assert!(!ledger.poll_alert().unwrap(), "$30 is below the threshold");
        ledger.reserve("crashed", 15.0).unwrap();
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
        ledger.reserve("a", 49.0).unwrap();
        assert!(!ledger.settle("a", 49.0).unwrap().alert_crossed);
        assert!(!ledger.snapshot().unwrap().alert_active);

        let dir2 = tempfile::tempdir().unwrap();
        let off = BudgetPolicy {
            enabled: false,
            max_daily_spend_usd: 50.0,
            alert_threshold_usd: Some(1.0),
        };
        let ledger = open(&dir2, off, clock);
        ledger.reserve("a", 49.0).unwrap();
        assert!(!ledger.settle("a", 49.0).unwrap().alert_crossed);
    }

    #[test]
    fn reopen_keeps_spend_and_books_orphaned_reservations() {
        let dir = tempfile::tempdir().unwrap();
        let (clock, _) = manual_clock(noon());
        let ledger = open(&dir, policy(50.0, None), clock.clone());
        ledger.reserve("done", 5.0).unwrap();
        ledger.settle("done", 1.5).unwrap();
        ledger.reserve("crashed", 5.0).unwrap();
        drop(ledger);

        let ledger = open(&dir, policy(50.0, None), clock.clone());
        assert_eq!(
            ledger.held("crashed").unwrap(),
            Some(5.0),
            "holds survive a reopen"
        );
        assert_eq!(ledger.held("done").unwrap(), None);
        let keep = std::collections::HashSet::from(["resumed".to_string()]);
        ledger.reserve("resumed", 2.0).unwrap();
        assert_eq!(ledger.book_orphans(&keep).unwrap(), 1);
        assert_eq!(
            ledger.held("resumed").unwrap(),
            Some(2.0),
            "a kept hold stays"
        );
        ledger.release("resumed").unwrap();
        let snap = ledger.snapshot().unwrap();
        assert_eq!(
            snap.spent_usd, 6.5,
            "orphaned hold counted as spent at its reserved amount"
        );
        assert_eq!(snap.reserved_usd, 0.0);
        assert_eq!(snap.remaining_usd, 43.5);
        // The orphan cannot be settled or charged again.
        assert!(!ledger.settle("crashed", 0.1).unwrap().settled);
        assert!(matches!(
            ledger.reserve("crashed", 1.0),
            Err(BudgetError::Duplicate { .. })
        ));
        drop(ledger);

        // A clean reopen books nothing more.
        let ledger = open(&dir, policy(50.0, None), clock);
        assert_eq!(ledger.book_orphans(&keep).unwrap(), 0);
        assert_eq!(ledger.snapshot().unwrap().spent_usd, 6.5);
    }

    #[test]
    fn new_utc_day_starts_from_zero_and_late_settlement_books_on_reservation_day() {
        let dir = tempfile::tempdir().unwrap();
        let (clock, secs) = manual_clock(Utc.with_ymd_and_hms(2026, 11, 3, 23, 59, 0).unwrap());
        let ledger = open(&dir, policy(10.0, None), clock);
        ledger.reserve("a", 6.0).unwrap();
        ledger.settle("a", 6.0).unwrap();
        ledger.reserve("b", 4.0).unwrap();
        assert!(matches!(
            ledger.reserve("c", 1.0),
            Err(BudgetError::Exhausted { .. })
        ));
        assert_eq!(ledger.snapshot().unwrap().day, "2026-11-03");

        secs.fetch_add(120, Ordering::SeqCst); // 00:01 UTC the next day
        let snap = ledger.snapshot().unwrap();
        assert_eq!(snap.day, "2026-11-04");
        assert_eq!(
            (snap.spent_usd, snap.reserved_usd, snap.remaining_usd),
            (0.0, 0.0, 10.0)
        );
        // Yesterday's open hold does not count against today, but it does not vanish either.
        assert_eq!(snap.earlier_holds_usd, 4.0);
        let r = ledger.reserve("c", 10.0).unwrap();
        assert_eq!(r.day, "2026-11-04");
        // "b" was reserved yesterday: its cost goes to yesterday, today stays full.
        let s = ledger.settle("b", 3.0).unwrap();
        assert_eq!(s.day, "2026-11-03");
        assert_eq!(s.day_spent_usd, 9.0);
        let snap = ledger.snapshot().unwrap();
        assert_eq!((snap.spent_usd, snap.earlier_holds_usd), (0.0, 0.0));
    }

    #[test]
    fn disabled_budget_never_refuses_but_records() {
        let dir = tempfile::tempdir().unwrap();
        let (clock, _) = manual_clock(noon());
        let off = BudgetPolicy {
            enabled: false,
            max_daily_spend_usd: 1.0,
            alert_threshold_usd: None,
        };
        let ledger = open(&dir, off, clock);
        for i in 0..20 {
            ledger.reserve(&format!("t{i}"), 5.0).unwrap();
        }
        ledger.settle("t0", 2.0).unwrap();
        let snap = ledger.snapshot().unwrap();
        assert_eq!((snap.spent_usd, snap.reserved_usd), (2.0, 95.0));
        assert_eq!(ledger.remaining_usd().unwrap(), None);
    }

    #[test]
    fn micro_dollars_do_not_drift() {
        let dir = tempfile::tempdir().unwrap();
        let (clock, _) = manual_clock(noon());
        let ledger = open(&dir, policy(1000.0, None), clock);
        for i in 0..1000 {
            let id = format!("t{i}");
            ledger.reserve(&id, 0.5).unwrap();
            ledger.settle(&id, 0.1).unwrap();
        }
        // 1000 × 0.1 summed in f64 is 99.9999999999986; in micro-dollars it is exact.
        assert_eq!(ledger.snapshot().unwrap().spent_usd, 100.0);
    }
}
