//! Routing strategies: which of the eligible programmers with room gets the next task.
//!
//! Pure and fast: no I/O, no allocation on the pick path (round robin allocates a group key once per
//! new group; an indexed p2c pick with skipped members lists their ranks). A strategy picks in one
//! of two ways, with the same result:
//! - [`Strategy::pick`] over a slice with one [`Candidate`] per eligible programmer (see
//!   `eligibility`): a linear scan. It is the reference the indexed pick is tested against, and
//!   what the scheduling simulation (`benches/support/scheduling.rs`) uses;
//! - [`Strategy::pick_indexed`] over a [`CandidateIndex`]: the members of one [`Tier`] that can take
//!   a task now, kept in ordered structures that the balancer updates as members' figures change,
//!   so a pick costs O(log n + |skipped|) instead of O(n). This is the routing path.
//!
//! A strategy never looks beyond the candidates it is given: routing never falls back to "any
//! programmer".
//!
//! | strategy | picks |
//! |---|---|
//! | [`LeastLoaded`] | lowest `queue_depth + in_flight`; ties → configuration order |
//! | [`RoundRobin`] | next in configuration order after the group's previous pick, wrapping |
//! | [`CapabilityMatch`] | first in configuration order (the original document's rule) |
//! | [`P2cPeakEwma`] | two distinct random candidates, the lower `load` wins (tower's p2c idea) |
//! | [`LeastExpectedWait`] | lowest expected finish `(outstanding + 1) × task_ms` while the pool has work to drain; near the end of a backlog, no slower member than a long task can afford; none (the task waits) when a busy member is the better choice |

use crate::contract::v1::Strategy as ProtoStrategy;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

// ===== Inputs =====

/// One eligible programmer as a strategy sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    /// Its place in the routing order (the configuration's `programmers` list, see
    /// `membership::Member::rank`): the tie-breaker and round-robin order.
    pub index: usize,
    /// Tasks waiting on the programmer, as it last reported.
    pub queue_depth: u32,
    /// Tasks the manager has sent to it whose streams have not ended yet.
    pub in_flight: u32,
    /// False when it is at `max_queue_per_programmer` (or otherwise cannot take a task now):
    /// such candidates are never picked.
    pub has_room: bool,
    /// Peak-EWMA latency estimate (tower's `PeakEwma` load): only [`P2cPeakEwma`] reads it.
    pub load: f64,
    /// Healthy and still a member, with room or not: only [`LeastExpectedWait`] reads it, to hold
    /// a task for a busy member that would finish it sooner than any member with room.
    pub available: bool,
    /// Expected milliseconds per task per slot of the LLM it would use now (its measured task
    /// duration ÷ the tasks it runs at once): only [`LeastExpectedWait`] reads it.
    pub task_ms: u64,
    /// Tasks it runs at once (its concurrency, at least 1): only [`LeastExpectedWait`] reads it.
    pub slots: u32,
}

impl Candidate {
    /// `queue_depth + in_flight`, without overflow.
    pub fn outstanding(&self) -> u64 {
        u64::from(self.queue_depth) + u64::from(self.in_flight)
    }

    /// When a task sent here now is expected to finish, ms from now ([`expected_finish_ms`]).
    pub fn expected_finish_ms(&self) -> u64 {
        expected_finish_ms(self.outstanding(), self.task_ms)
    }

    /// When a task sent here now would finish if it were a long one ([`long_finish_ms`]).
    pub fn long_finish_ms(&self) -> u64 {
        long_finish_ms(self.outstanding(), self.task_ms, self.slots)
    }

    /// It has room and a slot that would start a task at once (not queue it).
    fn has_free_slot(&self) -> bool {
        self.has_room && self.outstanding() < u64::from(self.slots.max(1))
    }
}

/// When a task sent now to a member with `outstanding` tasks, each taking `task_ms` per slot, is
/// expected to finish: `(outstanding + 1) × task_ms` (saturating; `task_ms` at least 1, so with
/// equal durations it orders members like least_loaded).
pub fn expected_finish_ms(outstanding: u64, task_ms: u64) -> u64 {
    outstanding.saturating_add(1).saturating_mul(task_ms.max(1))
}

/// How many times its model's mean a *long* task takes: [`LeastExpectedWait`] sends a task to a
/// member that is not the soonest choice only if even a task this long would finish there before
/// the pool has drained its work. Task durations are heavy-tailed (aider runs on one model spread
/// over an order of magnitude); for log-normal durations with σ = 1 (the routing simulation's)
/// 3× the mean is about the 95th percentile.
pub const LONG_TASK_FACTOR: u64 = 3;

/// When a task sent now to a member with `outstanding` tasks would finish if it took
/// [`LONG_TASK_FACTOR`] × the model's mean: the work ahead of it, `outstanding × task_ms`, plus
/// the long task itself on one slot, `LONG_TASK_FACTOR × task_ms × slots` (saturating).
pub fn long_finish_ms(outstanding: u64, task_ms: u64, slots: u32) -> u64 {
    let task_ms = task_ms.max(1);
    outstanding.saturating_mul(task_ms).saturating_add(
        LONG_TASK_FACTOR
            .saturating_mul(task_ms)
            .saturating_mul(u64::from(slots.max(1))),
    )
}

/// Fixed-point scale of a member's rate (tasks per ms) in [`drain_ms`]: exact integer sums, so
/// the indexed pick and the linear one agree to the millisecond.
const RATE_ONE: u64 = 1 << 40;

/// A member's rate for [`drain_ms`]: `RATE_ONE ÷ task_ms` (tasks per ms, fixed point).
fn rate_of(task_ms: u64) -> u64 {
    RATE_ONE / task_ms.max(1)
}

/// When the available members, running at their measured speeds, are expected to have done
/// `work` tasks (their outstanding ones plus `waiting` in the manager's queue), ms from now:
/// `work ÷ Σ rate`. `None` when no member is available.
fn drain_ms(work: u64, rate_sum: u64) -> Option<u64> {
    if rate_sum == 0 {
        return None;
    }
    let ms = u128::from(work) * u128::from(RATE_ONE) / u128::from(rate_sum);
    Some(u64::try_from(ms).unwrap_or(u64::MAX))
}

/// The round-robin key of a task's capability set: sorted, de-duplicated, comma-joined, so
/// `["fast","free"]` and `["free","fast"]` share one cursor. Empty capabilities give `""`.
pub fn group_key(capabilities: &[String]) -> String {
    let mut caps: Vec<&str> = capabilities.iter().map(String::as_str).collect();
    caps.sort_unstable();
    caps.dedup();
    caps.join(",")
}

// ===== The trait =====

/// A routing policy. `&self` with interior state where needed, shared across tasks.
pub trait Strategy: Send + Sync + fmt::Debug {
    /// Which policy this is.
    fn kind(&self) -> StrategyKind;

    /// The position in `candidates` of the one to use, or `None` when none has room. `group` is
    /// the task's capability-set key ([`group_key`]); only round robin keeps state per group.
    /// `waiting` is how many tasks wait in the manager's queue, this one included (at least 1):
    /// only [`LeastExpectedWait`] reads it.
    fn pick(&self, group: &str, candidates: &[Candidate], waiting: u64) -> Option<usize>;

    /// The member index of the one to use among `index`'s members with room, leaving out those
    /// in `skip` (excluded or refused for this route; a short list), or `None`. The same choice
    /// [`pick`](Strategy::pick) makes over a slice of the same members whose
    /// [`Candidate::index`] is their rank in `index`'s routing order, in O(log n + |skip|).
    /// `load` orders two members by their load (only p2c asks).
    fn pick_indexed(
        &self,
        group: &str,
        index: &CandidateIndex,
        skip: &[usize],
        load: &dyn Fn(usize, usize) -> Ordering,
        waiting: u64,
    ) -> Option<usize>;
}

/// The policies by name: the configuration's own `load_balancing.strategy` type, so the
/// config, the contract and the router share one list.
pub use crate::config::StrategyName as StrategyKind;

impl StrategyKind {
    /// Every kind, in the contract's order.
    pub const ALL: [StrategyKind; 5] = [
        Self::LeastLoaded,
        Self::RoundRobin,
        Self::CapabilityMatch,
        Self::P2cPeakEwma,
        Self::LeastExpectedWait,
    ];

    /// The configuration / `Assigned.strategy` name.
    pub fn name(self) -> &'static str {
        self.as_str()
    }

    /// The kind a request asks for; `None` for UNSPECIFIED or unknown values (use the configured one).
    pub fn from_proto(value: i32) -> Option<Self> {
        match ProtoStrategy::try_from(value).ok()? {
            ProtoStrategy::Unspecified => None,
            ProtoStrategy::LeastLoaded => Some(Self::LeastLoaded),
            ProtoStrategy::RoundRobin => Some(Self::RoundRobin),
            ProtoStrategy::CapabilityMatch => Some(Self::CapabilityMatch),
            ProtoStrategy::P2cPeakEwma => Some(Self::P2cPeakEwma),
            ProtoStrategy::LeastExpectedWait => Some(Self::LeastExpectedWait),
        }
    }
}

impl fmt::Display for StrategyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An unknown strategy name.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "unknown load-balancing strategy {0:?} (expected least_loaded, round_robin, capability_match, p2c_peak_ewma or least_expected_wait)"
)]
pub struct UnknownStrategy(pub String);

impl FromStr for StrategyKind {
    type Err = UnknownStrategy;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| UnknownStrategy(s.to_owned()))
    }
}

/// One instance of every strategy, so a per-request override uses the same round-robin cursors
/// and RNG as the configured default.
#[derive(Debug, Default)]
pub struct StrategySet {
    least_loaded: LeastLoaded,
    round_robin: RoundRobin,
    capability_match: CapabilityMatch,
    p2c: P2cPeakEwma,
    least_expected_wait: LeastExpectedWait,
}

impl StrategySet {
    /// A set whose p2c RNG is seeded from the OS.
    pub fn new() -> Self {
        Self::default()
    }

    /// A set whose p2c RNG is seeded with `seed` (reproducible tests).
    pub fn with_seed(seed: u64) -> Self {
        Self {
            p2c: P2cPeakEwma::with_seed(seed),
            ..Self::default()
        }
    }

    /// The strategy of `kind`.
    pub fn get(&self, kind: StrategyKind) -> &dyn Strategy {
        match kind {
            StrategyKind::LeastLoaded => &self.least_loaded,
            StrategyKind::RoundRobin => &self.round_robin,
            StrategyKind::CapabilityMatch => &self.capability_match,
            StrategyKind::P2cPeakEwma => &self.p2c,
            StrategyKind::LeastExpectedWait => &self.least_expected_wait,
        }
    }
}

// ===== Policies =====

/// Positions of candidates with room, with their values.
fn with_room(candidates: &[Candidate]) -> impl Iterator<Item = (usize, &Candidate)> {
    candidates.iter().enumerate().filter(|(_, c)| c.has_room)
}

/// The least busy programmer: lowest reported queue depth plus in-flight streams (counted until
/// each stream ends). Ties go to the earlier one in configuration order.
#[derive(Debug, Default, Clone, Copy)]
pub struct LeastLoaded;

impl Strategy for LeastLoaded {
    fn kind(&self) -> StrategyKind {
        StrategyKind::LeastLoaded
    }

    fn pick(&self, _group: &str, candidates: &[Candidate], _waiting: u64) -> Option<usize> {
        with_room(candidates)
            .min_by_key(|(_, c)| (c.outstanding(), c.index))
            .map(|(pos, _)| pos)
    }

    fn pick_indexed(
        &self,
        _group: &str,
        index: &CandidateIndex,
        skip: &[usize],
        _load: &dyn Fn(usize, usize) -> Ordering,
        _waiting: u64,
    ) -> Option<usize> {
        index.least_loaded(skip)
    }
}

/// Cycles through a group's candidates in configuration order, skipping those without room. Each
/// group (capability set) has its own cursor: the place in the routing order it picked last.
/// Keying the cursor by that place (not by position in a list) keeps the cycle fair when
/// candidates come and go between picks, and a re-read configuration that reorders the members
/// continues the cycle from the same place. Groups are bounded by the capability sets that pass
/// eligibility.
#[derive(Debug, Default)]
pub struct RoundRobin {
    last: Mutex<HashMap<String, usize>>,
}

impl RoundRobin {
    /// A round robin with no history.
    pub fn new() -> Self {
        Self::default()
    }

    /// Picks with `next(the group's previous place)` → `(place, choice)` and moves the group's
    /// cursor to the picked place: the one cursor logic both pick paths share.
    fn advance<T>(
        &self,
        group: &str,
        next: impl FnOnce(Option<usize>) -> Option<(usize, T)>,
    ) -> Option<T> {
        // A panic elsewhere cannot leave a cursor half-written: recover the map.
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let (index, choice) = next(last.get(group).copied())?;
        match last.get_mut(group) {
            Some(cursor) => *cursor = index,
            None => {
                last.insert(group.to_owned(), index);
            }
        }
        Some(choice)
    }
}

impl Strategy for RoundRobin {
    fn kind(&self) -> StrategyKind {
        StrategyKind::RoundRobin
    }

    fn pick(&self, group: &str, candidates: &[Candidate], _waiting: u64) -> Option<usize> {
        self.advance(group, |prev| {
            let mut first: Option<(usize, usize)> = None; // (index, pos) with the lowest index
            let mut next: Option<(usize, usize)> = None; // lowest index after `prev`
            for (pos, c) in with_room(candidates) {
                if first.is_none_or(|(i, _)| c.index < i) {
                    first = Some((c.index, pos));
                }
                if prev.is_some_and(|p| c.index > p) && next.is_none_or(|(i, _)| c.index < i) {
                    next = Some((c.index, pos));
                }
            }
            next.or(first)
        })
    }

    fn pick_indexed(
        &self,
        group: &str,
        index: &CandidateIndex,
        skip: &[usize],
        _load: &dyn Fn(usize, usize) -> Ordering,
        _waiting: u64,
    ) -> Option<usize> {
        self.advance(group, |prev| {
            prev.and_then(|p| index.first_after(p, skip))
                .or_else(|| index.first(skip))
        })
    }
}

/// The first candidate with room in configuration order: the original document's
/// "selects first programmer matching capabilities".
#[derive(Debug, Default, Clone, Copy)]
pub struct CapabilityMatch;

impl Strategy for CapabilityMatch {
    fn kind(&self) -> StrategyKind {
        StrategyKind::CapabilityMatch
    }

    fn pick(&self, _group: &str, candidates: &[Candidate], _waiting: u64) -> Option<usize> {
        with_room(candidates)
            .min_by_key(|(_, c)| c.index)
            .map(|(pos, _)| pos)
    }

    fn pick_indexed(
        &self,
        _group: &str,
        index: &CandidateIndex,
        skip: &[usize],
        _load: &dyn Fn(usize, usize) -> Ordering,
        _waiting: u64,
    ) -> Option<usize> {
        index.first(skip).map(|(_, i)| i)
    }
}

/// Power of two random choices over the candidates with room: draw two distinct ones, send to
/// the one with the lower peak-EWMA `load` (ties → configuration order). One candidate with room
/// is picked without drawing. The RNG is seedable for reproducible tests.
#[derive(Debug)]
pub struct P2cPeakEwma {
    rng: Mutex<StdRng>,
}

impl Default for P2cPeakEwma {
    fn default() -> Self {
        Self::new()
    }
}

impl P2cPeakEwma {
    /// Seeded from the OS's randomness.
    pub fn new() -> Self {
        Self {
            rng: Mutex::new(StdRng::from_rng(&mut rand::rng())),
        }
    }

    /// Seeded with `seed`: the same seed and inputs give the same picks.
    pub fn with_seed(seed: u64) -> Self {
        Self {
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
        }
    }
}

impl P2cPeakEwma {
    /// The p2c rule over `k` choices in configuration order, `nth(j)` being the `j`-th: none, the
    /// only one, or two distinct uniformly drawn ones of which `lighter` (a total order: load,
    /// then routing order) puts the winner first. Both pick paths share it, so with one
    /// seed they draw the same numbers and pick the same member.
    fn choose<T>(
        &self,
        k: usize,
        nth: impl Fn(usize) -> T,
        lighter: impl Fn(&T, &T) -> Ordering,
    ) -> Option<T> {
        let (a, b) = match k {
            0 => return None,
            1 => return Some(nth(0)),
            _ => {
                let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
                let a = rng.random_range(0..k);
                let b = rng.random_range(0..k - 1);
                (a, if b >= a { b + 1 } else { b })
            }
        };
        let (ca, cb) = (nth(a), nth(b));
        Some(if lighter(&ca, &cb).is_le() { ca } else { cb })
    }
}

impl Strategy for P2cPeakEwma {
    fn kind(&self) -> StrategyKind {
        StrategyKind::P2cPeakEwma
    }

    fn pick(&self, _group: &str, candidates: &[Candidate], _waiting: u64) -> Option<usize> {
        let k = candidates.iter().filter(|c| c.has_room).count();
        let nth = |j| with_room(candidates).nth(j).expect("j < k");
        self.choose(k, nth, |(_, a), (_, b)| {
            a.load.total_cmp(&b.load).then(a.index.cmp(&b.index))
        })
        .map(|(pos, _)| pos)
    }

    fn pick_indexed(
        &self,
        _group: &str,
        index: &CandidateIndex,
        skip: &[usize],
        load: &dyn Fn(usize, usize) -> Ordering,
        _waiting: u64,
    ) -> Option<usize> {
        // Ranks (routing order among those with room) of the skipped members with room,
        // so the `j`-th choice is found by select without walking the others.
        let mut skipped: Vec<usize> = skip.iter().filter_map(|&i| index.rank_of(i)).collect();
        skipped.sort_unstable();
        skipped.dedup();
        let k = index.len() - skipped.len();
        let nth = |j: usize| {
            let mut rank = j;
            for &r in &skipped {
                if r <= rank {
                    rank += 1;
                } else {
                    break;
                }
            }
            index.nth(rank)
        };
        self.choose(k, nth, |&a, &b| {
            load(a, b).then_with(|| index.position(a).cmp(&index.position(b)))
        })
    }
}

/// Places a task where it is expected to finish first, without starving slower members while
/// the pool has a backlog, and without betting the end of a backlog on a slow one.
///
/// Its figures: a member's expected finish `(outstanding + 1) × task_ms`
/// ([`expected_finish_ms`]; `task_ms` is its current LLM's measured duration per slot,
/// `manager::durations`, so two tasks queued on a slow model weigh more than two on a fast one);
/// its *long* finish, the same for a task [`LONG_TASK_FACTOR`] × as long ([`long_finish_ms`]);
/// and the pool's drain time, when the available members at their speeds will have done their
/// outstanding tasks plus the `waiting` ones (`Σ work ÷ Σ 1/task_ms`). In order:
///
/// 1. the member with the lowest expected finish (ties: with room first, then configuration
///    order), if it has room and even a long task would finish there before the pool drains;
/// 2. else the member with a free slot (it would start the task at once) and the lowest expected
///    finish, on the same condition: while a backlog lasts an idle member is worth using even if
///    it is slower than a busy one (that is the pool's throughput), and a noisy estimate cannot
///    shut a slow model out for good;
/// 3. else the member with the lowest long finish: near the end of a backlog a task goes where
///    even a long run ends soonest, which keeps long tasks off slow models when nothing else is
///    left to run. If that member is busy (a fast programmer, full), it picks none and the task
///    waits for it.
///
/// On a pool of equal speeds every step picks least_loaded's choice (the lowest outstanding count,
/// ties in configuration order), so it differs only on a pool of mixed speeds.
#[derive(Debug, Default, Clone, Copy)]
pub struct LeastExpectedWait;

impl Strategy for LeastExpectedWait {
    fn kind(&self) -> StrategyKind {
        StrategyKind::LeastExpectedWait
    }

    fn pick(&self, _group: &str, candidates: &[Candidate], waiting: u64) -> Option<usize> {
        let available = || {
            candidates
                .iter()
                .enumerate()
                .filter(|(_, c)| c.has_room || c.available)
        };
        let (work, rate) = available().fold((0u64, 0u64), |(w, r), (_, c)| {
            (w.saturating_add(c.outstanding()), r + rate_of(c.task_ms))
        });
        let drain = drain_ms(work.saturating_add(waiting.max(1)), rate)?;
        let (pos, soonest) =
            available().min_by_key(|(_, c)| (c.expected_finish_ms(), !c.has_room, c.index))?;
        if soonest.has_room && soonest.long_finish_ms() <= drain {
            return Some(pos);
        }
        if let Some((pos, free)) = available()
            .filter(|(_, c)| c.has_free_slot())
            .min_by_key(|(_, c)| (c.expected_finish_ms(), c.index))
            && free.long_finish_ms() <= drain
        {
            return Some(pos);
        }
        let (pos, safest) =
            available().min_by_key(|(_, c)| (c.long_finish_ms(), !c.has_room, c.index))?;
        safest.has_room.then_some(pos)
    }

    fn pick_indexed(
        &self,
        _group: &str,
        index: &CandidateIndex,
        skip: &[usize],
        _load: &dyn Fn(usize, usize) -> Ordering,
        waiting: u64,
    ) -> Option<usize> {
        index.least_expected_wait(skip, waiting)
    }
}

// ===== The index =====

/// A tier of members that may take a task (see `eligibility`) under a stable id: the balancer
/// keeps one [`CandidateIndex`] per distinct tier and finds it by id, without hashing the member
/// list on every decision. Made by a [`TierRegistry`] at admission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tier {
    /// Dense id from the registry that made it: equal ids mean equal member lists.
    pub id: usize,
    /// Configuration indices, ascending.
    pub members: Arc<[usize]>,
}

/// Interns tiers: every distinct member list gets one id, for the life of the manager. Tiers come
/// from capability sets, cost tiers and which paid members the budget covers, all bounded by the
/// configuration, so the registry stays small.
#[derive(Debug, Default)]
pub struct TierRegistry {
    known: Mutex<HashMap<Arc<[usize]>, usize>>,
}

impl TierRegistry {
    /// The tier of `members` (any order; duplicates ignored). O(n) in its length, at admission.
    pub fn intern(&self, mut members: Vec<usize>) -> Tier {
        members.sort_unstable();
        members.dedup();
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((members, &id)) = known.get_key_value(members.as_slice()) {
            return Tier {
                id,
                members: members.clone(),
            };
        }
        let members: Arc<[usize]> = members.into();
        let id = known.len();
        known.insert(members.clone(), id);
        Tier { id, members }
    }
}

/// Positions `0..n` as a set with rank and select in O(log n): a Fenwick tree of counts. Only p2c
/// needs it (the `j`-th member with room), and only a change of *room* updates it.
#[derive(Debug, Clone)]
struct RankSet {
    /// 1-based Fenwick tree: `tree[i]` counts the members in `(i - lowbit(i), i]`.
    tree: Vec<u32>,
    len: usize,
    /// The highest power of two ≤ n (select's first step).
    top: usize,
}

impl RankSet {
    fn new(n: usize) -> Self {
        Self {
            tree: vec![0; n + 1],
            len: 0,
            top: if n == 0 { 0 } else { 1 << n.ilog2() },
        }
    }

    /// Adds (`on`) or removes `pos`, which must not be in the set already / must be in it.
    fn set(&mut self, pos: usize, on: bool) {
        let mut i = pos + 1;
        while i < self.tree.len() {
            self.tree[i] = if on {
                self.tree[i] + 1
            } else {
                self.tree[i] - 1
            };
            i += i & i.wrapping_neg();
        }
        if on {
            self.len += 1;
        } else {
            self.len -= 1;
        }
    }

    /// Members at positions below `pos`.
    fn rank(&self, pos: usize) -> usize {
        let mut i = pos;
        let mut count = 0;
        while i > 0 {
            count += self.tree[i] as usize;
            i &= i - 1;
        }
        count
    }

    /// The position of the `k`-th member (0-based); `k < len`.
    fn select(&self, mut k: usize) -> usize {
        let mut pos = 0;
        let mut step = self.top;
        while step > 0 {
            let next = pos + step;
            if next < self.tree.len() && (self.tree[next] as usize) <= k {
                pos = next;
                k -= self.tree[next] as usize;
            }
            step >>= 1;
        }
        pos
    }
}

/// Positions `0..n` as a 64-ary tree of bit words: level 0 has one bit per position, each level
/// above one bit per non-empty word of the level below, up to a single word. Insert, remove and
/// "the first member at or after a position" touch one word per level: O(log₆₄ n), which is two
/// words up to 4,096 members.
#[derive(Debug, Clone)]
struct Bits {
    levels: Vec<Vec<u64>>,
}

impl Bits {
    fn new(n: usize) -> Self {
        let mut levels = Vec::new();
        let mut len = n.max(1);
        loop {
            let words = len.div_ceil(64);
            levels.push(vec![0; words]);
            if words == 1 {
                return Self { levels };
            }
            len = words;
        }
    }

    fn is_empty(&self) -> bool {
        self.levels.last().is_none_or(|top| top[0] == 0)
    }

    fn insert(&mut self, mut pos: usize) {
        for level in &mut self.levels {
            let word = &mut level[pos / 64];
            let was_empty = *word == 0;
            *word |= 1 << (pos % 64);
            if !was_empty {
                return;
            }
            pos /= 64;
        }
    }

    fn remove(&mut self, mut pos: usize) {
        for level in &mut self.levels {
            let word = &mut level[pos / 64];
            *word &= !(1 << (pos % 64));
            if *word != 0 {
                return;
            }
            pos /= 64;
        }
    }

    /// The lowest position in the set at or after `pos`.
    fn first_from(&self, mut pos: usize) -> Option<usize> {
        // Up until a word holds a bit at or after the position, then down along the first bits.
        let mut level = 0;
        loop {
            let word = *self.levels.get(level)?.get(pos / 64)?;
            let at_or_after = word & (u64::MAX << (pos % 64));
            if at_or_after != 0 {
                pos = pos / 64 * 64 + at_or_after.trailing_zeros() as usize;
                break;
            }
            pos = pos / 64 + 1;
            level += 1;
        }
        while level > 0 {
            level -= 1;
            pos = pos * 64 + self.levels[level][pos].trailing_zeros() as usize;
        }
        Some(pos)
    }
}

/// The members of one [`Tier`] that can take a task now, with their load, in structures over the
/// tier's positions (the members in routing order, each member's *rank* given when the index is
/// built: configuration order) so every strategy picks without scanning the tier:
/// - [`Bits`] of the positions with room: capability_match (the first) and round robin (the first
///   after a rank), O(log₆₄ n + |skipped|);
/// - one [`Bits`] per outstanding count (`queue_depth + in_flight`): least_loaded is the first
///   member of the lowest non-empty count, O(log L + log₆₄ n + |skipped|) for L distinct counts
///   (a member with room has fewer tasks than its capacity, so L stays below the largest capacity);
/// - a [`RankSet`] of the positions with room: p2c's `j`-th member, O(log n + |skipped|);
/// - the available members (with room or busy) ordered by expected finish and by long finish, the
///   members with a free slot by expected finish, and the sums of the available members' work and
///   speed: least_expected_wait looks at the first not skipped of each, O(log n + |skipped|²).
///
/// The owner keeps it current with [`set`](CandidateIndex::set) whenever a member's figures
/// change; nothing is rebuilt per decision. When the routing order changes (a re-read
/// configuration), the owner builds it again.
#[derive(Debug, Clone)]
pub struct CandidateIndex {
    /// Member indices of the tier's members, in routing order (by rank, then member index).
    members: Vec<usize>,
    /// The rank of each position (ascending): where "after a rank" starts, by binary search.
    ranks_in_order: Vec<usize>,
    /// For each member index up to the tier's last member, its position ([`NOT_HERE`] for one
    /// outside the tier): O(1).
    positions: Vec<u32>,
    /// Each position's outstanding count while it has room.
    outstanding: Vec<Option<u64>>,
    room: Bits,
    ranks: RankSet,
    /// Positions with room by outstanding count. Emptied counts stay (bounded, see above), so a
    /// member moving between two counts never allocates.
    by_load: BTreeMap<u64, Bits>,
    /// Each position's outstanding count while it is available *without* room (busy).
    busy: Vec<Option<u64>>,
    /// Each position's expected milliseconds per task ([`Figures::task_ms`]); 1 until told.
    task_ms: Vec<u64>,
    /// Each position's slots ([`Figures::slots`]); 1 until told.
    slots: Vec<u32>,
    /// Available positions by `(expected finish, busy, position)`.
    by_wait: BTreeSet<(u64, bool, usize)>,
    /// Available positions by `(long finish, busy, position)` ([`long_finish_ms`]).
    by_long: BTreeSet<(u64, bool, usize)>,
    /// Positions with room and a free slot by `(expected finish, position)`.
    by_free: BTreeSet<(u64, usize)>,
    /// Σ outstanding over the available positions.
    work_sum: u64,
    /// Σ [`rate_of`] over the available positions.
    rate_sum: u64,
}

/// Where one available position stands in least_expected_wait's structures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct WaitKeys {
    expected_finish: u64,
    long_finish: u64,
    busy: bool,
    free_slot: bool,
    outstanding: u64,
    rate: u64,
}

/// What a [`CandidateIndex`] holds of one available member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Figures {
    /// `queue_depth + in_flight`.
    pub outstanding: u64,
    /// It can take a task now (else it is busy: available, but full or its endpoint pending).
    pub has_room: bool,
    /// Expected milliseconds per task per slot of the LLM it would use now.
    pub task_ms: u64,
    /// Tasks it runs at once (at least 1).
    pub slots: u32,
}

/// [`CandidateIndex::positions`]' mark of a member index outside the tier.
const NOT_HERE: u32 = u32::MAX;

impl CandidateIndex {
    /// An index over `tier` in which no member has room yet, its members ordered by
    /// `rank(member index)` (ties by member index).
    pub fn new(tier: &Tier, rank: impl Fn(usize) -> usize) -> Self {
        let n = tier.members.len();
        let mut ordered: Vec<(usize, usize)> = tier.members.iter().map(|&i| (rank(i), i)).collect();
        ordered.sort_unstable();
        let members: Vec<usize> = ordered.iter().map(|&(_, i)| i).collect();
        let end = tier.members.last().map_or(0, |&last| last + 1);
        let mut positions = vec![NOT_HERE; end];
        for (pos, &i) in members.iter().enumerate() {
            positions[i] = pos as u32;
        }
        Self {
            members,
            ranks_in_order: ordered.iter().map(|&(r, _)| r).collect(),
            positions,
            outstanding: vec![None; n],
            room: Bits::new(n),
            ranks: RankSet::new(n),
            by_load: BTreeMap::new(),
            busy: vec![None; n],
            task_ms: vec![1; n],
            slots: vec![1; n],
            by_wait: BTreeSet::new(),
            by_long: BTreeSet::new(),
            by_free: BTreeSet::new(),
            work_sum: 0,
            rate_sum: 0,
        }
    }

    /// Members with room.
    pub fn len(&self) -> usize {
        self.ranks.len
    }

    /// True when no member has room.
    pub fn is_empty(&self) -> bool {
        self.ranks.len == 0
    }

    /// Records member `index`'s figures: `Some(queue_depth + in_flight)` when it can take a task
    /// now, `None` when it cannot (and is not counted as busy). Its expected time per task stays
    /// what it was. An index outside the tier is ignored.
    pub fn set(&mut self, index: usize, outstanding: Option<u64>) {
        let Some(pos) = self.position(index) else {
            return;
        };
        let (task_ms, slots) = (self.task_ms[pos], self.slots[pos]);
        self.update_at(
            pos,
            outstanding.map(|outstanding| Figures {
                outstanding,
                has_room: true,
                task_ms,
                slots,
            }),
        );
    }

    /// Records member `index`'s figures in full: `None` when it is not available (down, left);
    /// an available member without room is busy ([`LeastExpectedWait`] may hold a task for it).
    /// An index outside the tier is ignored.
    pub fn update(&mut self, index: usize, figures: Option<Figures>) {
        if let Some(pos) = self.position(index) {
            self.update_at(pos, figures);
        }
    }

    /// Position `pos`'s least_expected_wait keys as its figures stand; `None` when unavailable.
    fn wait_keys(&self, pos: usize) -> Option<WaitKeys> {
        let (outstanding, busy) = match (self.outstanding[pos], self.busy[pos]) {
            (Some(o), _) => (o, false),
            (None, Some(o)) => (o, true),
            (None, None) => return None,
        };
        let (task_ms, slots) = (self.task_ms[pos], self.slots[pos]);
        Some(WaitKeys {
            expected_finish: expected_finish_ms(outstanding, task_ms),
            long_finish: long_finish_ms(outstanding, task_ms, slots),
            busy,
            free_slot: !busy && outstanding < u64::from(slots.max(1)),
            outstanding,
            rate: rate_of(task_ms),
        })
    }

    fn update_at(&mut self, pos: usize, figures: Option<Figures>) {
        let before = self.wait_keys(pos);
        self.busy[pos] = figures.filter(|f| !f.has_room).map(|f| f.outstanding);
        if let Some(f) = figures {
            self.task_ms[pos] = f.task_ms.max(1);
            self.slots[pos] = f.slots.max(1);
        }
        self.set_room(pos, figures.filter(|f| f.has_room).map(|f| f.outstanding));
        let after = self.wait_keys(pos);
        if before == after {
            return;
        }
        if let Some(k) = before {
            self.by_wait.remove(&(k.expected_finish, k.busy, pos));
            self.by_long.remove(&(k.long_finish, k.busy, pos));
            if k.free_slot {
                self.by_free.remove(&(k.expected_finish, pos));
            }
            self.work_sum -= k.outstanding;
            self.rate_sum -= k.rate;
        }
        if let Some(k) = after {
            self.by_wait.insert((k.expected_finish, k.busy, pos));
            self.by_long.insert((k.long_finish, k.busy, pos));
            if k.free_slot {
                self.by_free.insert((k.expected_finish, pos));
            }
            self.work_sum += k.outstanding;
            self.rate_sum += k.rate;
        }
    }

    /// Moves position `pos` in the room structures: `Some(outstanding)` with room, `None` without.
    fn set_room(&mut self, pos: usize, outstanding: Option<u64>) {
        let old = std::mem::replace(&mut self.outstanding[pos], outstanding);
        if old == outstanding {
            return;
        }
        if let Some(level) = old.and_then(|o| self.by_load.get_mut(&o)) {
            level.remove(pos);
        }
        if let Some(o) = outstanding {
            let n = self.members.len();
            self.by_load
                .entry(o)
                .or_insert_with(|| Bits::new(n))
                .insert(pos);
        }
        if old.is_some() != outstanding.is_some() {
            if outstanding.is_some() {
                self.room.insert(pos);
            } else {
                self.room.remove(pos);
            }
            self.ranks.set(pos, outstanding.is_some());
        }
    }

    /// The position (place in routing order) of member `index` in the tier, if it is one.
    fn position(&self, index: usize) -> Option<usize> {
        self.positions
            .get(index)
            .filter(|&&pos| pos != NOT_HERE)
            .map(|&pos| pos as usize)
    }

    /// The member index of the `k`-th member with room in routing order; `k < len`.
    fn nth(&self, k: usize) -> usize {
        self.members[self.ranks.select(k)]
    }

    /// The rank (among those with room) of member `index`, if it has room.
    fn rank_of(&self, index: usize) -> Option<usize> {
        let pos = self.position(index)?;
        self.outstanding[pos].map(|_| self.ranks.rank(pos))
    }

    /// The first member of `set` at or after position `from`, not in `skip`: its position and
    /// member index.
    fn first_in(&self, set: &Bits, from: usize, skip: &[usize]) -> Option<(usize, usize)> {
        let mut pos = from;
        loop {
            pos = set.first_from(pos)?;
            let index = self.members[pos];
            if !skip.contains(&index) {
                return Some((pos, index));
            }
            pos += 1;
        }
    }

    /// The first member with room in routing order, not in `skip`: its rank and member index.
    fn first(&self, skip: &[usize]) -> Option<(usize, usize)> {
        self.first_with_room_from(0, skip)
    }

    /// The first member with room whose rank is above `rank`, not in `skip`: its rank and
    /// member index.
    fn first_after(&self, rank: usize, skip: &[usize]) -> Option<(usize, usize)> {
        let from = self.ranks_in_order.partition_point(|&r| r <= rank);
        self.first_with_room_from(from, skip)
    }

    fn first_with_room_from(&self, from: usize, skip: &[usize]) -> Option<(usize, usize)> {
        self.first_in(&self.room, from, skip)
            .map(|(pos, index)| (self.ranks_in_order[pos], index))
    }

    /// [`LeastExpectedWait`]'s pick among the members not in `skip` (see there), `waiting`
    /// tasks in the manager's queue: `None` when the task is better held for a busy member or
    /// nobody is available.
    fn least_expected_wait(&self, skip: &[usize], waiting: u64) -> Option<usize> {
        let (mut work, mut rate) = (self.work_sum, self.rate_sum);
        for (k, &i) in skip.iter().enumerate() {
            if skip[..k].contains(&i) {
                continue;
            }
            if let Some(keys) = self.position(i).and_then(|pos| self.wait_keys(pos)) {
                work -= keys.outstanding;
                rate -= keys.rate;
            }
        }
        let drain = drain_ms(work.saturating_add(waiting.max(1)), rate)?;
        let fits = |pos: usize| {
            self.wait_keys(pos)
                .is_some_and(|k| !k.busy && k.long_finish <= drain)
        };
        let not_skipped = |pos: &usize| !skip.contains(&self.members[*pos]);
        let (_, _, soonest) = *self.by_wait.iter().find(|e| not_skipped(&e.2))?;
        if fits(soonest) {
            return Some(self.members[soonest]);
        }
        if let Some(&(_, free)) = self.by_free.iter().find(|e| not_skipped(&e.1))
            && fits(free)
        {
            return Some(self.members[free]);
        }
        let &(_, busy, safest) = self.by_long.iter().find(|e| not_skipped(&e.2))?;
        (!busy).then(|| self.members[safest])
    }

    /// True when some member not in `skip` has room: a strategy that picked none of them held
    /// the task back (only [`LeastExpectedWait`] does).
    pub fn any_with_room(&self, skip: &[usize]) -> bool {
        self.first(skip).is_some()
    }

    /// The member with room with the lowest `(outstanding, place in routing order)`, not in
    /// `skip`.
    fn least_loaded(&self, skip: &[usize]) -> Option<usize> {
        self.by_load
            .values()
            .filter(|level| !level.is_empty())
            .find_map(|level| self.first_in(level, 0, skip))
            .map(|(_, index)| index)
    }
}

// ===== Tests =====

#[cfg(test)]
mod tests {
    use super::*;
    use rand::seq::SliceRandom;

    fn cand(index: usize, queue_depth: u32) -> Candidate {
        Candidate {
            index,
            queue_depth,
            in_flight: 0,
            has_room: true,
            load: 0.0,
            available: true,
            task_ms: 1,
            slots: 1,
        }
    }

    fn loads(loads: &[f64]) -> Vec<Candidate> {
        loads
            .iter()
            .enumerate()
            .map(|(i, &l)| Candidate {
                load: l,
                ..cand(i, 0)
            })
            .collect()
    }

    #[test]
    fn least_loaded_picks_the_lowest_queue() {
        let c: Vec<_> = [5, 2, 0, 3, 1]
            .iter()
            .enumerate()
            .map(|(i, &q)| cand(i, q))
            .collect();
        assert_eq!(LeastLoaded.pick("", &c, 1), Some(2));
    }

    #[test]
    fn least_loaded_counts_in_flight_skips_full_and_breaks_ties_by_config_order() {
        let mut c: Vec<_> = [5, 2, 0, 3, 1]
            .iter()
            .enumerate()
            .map(|(i, &q)| cand(i, q))
            .collect();
        c[2].in_flight = 4; // 0 + 4
        c[4].in_flight = 1; // 1 + 1 = 2, ties with [1] (2 + 0)
        assert_eq!(LeastLoaded.pick("", &c, 1), Some(1));
        c[1].has_room = false;
        assert_eq!(LeastLoaded.pick("", &c, 1), Some(4));
        // Ties are decided by configuration index, not slice position.
        let c = vec![cand(7, 1), cand(3, 1), cand(5, 1)];
        assert_eq!(LeastLoaded.pick("", &c, 1), Some(1));
    }

    #[test]
    fn nobody_with_room_means_none() {
        let mut c = vec![cand(0, 0), cand(1, 0)];
        for cc in &mut c {
            cc.has_room = false;
        }
        let set = StrategySet::with_seed(1);
        for kind in StrategyKind::ALL {
            assert_eq!(set.get(kind).pick("g", &c, 1), None, "{kind}");
            assert_eq!(set.get(kind).pick("g", &[], 1), None, "{kind}");
        }
    }

    #[test]
    fn round_robin_cycles_and_skips_full() {
        let rr = RoundRobin::new();
        let mut c: Vec<_> = (0..4).map(|i| cand(i, 0)).collect();
        let picks: Vec<_> = (0..6).map(|_| rr.pick("fast", &c, 1).unwrap()).collect();
        assert_eq!(picks, vec![0, 1, 2, 3, 0, 1]);
        c[2].has_room = false;
        let picks: Vec<_> = (0..4).map(|_| rr.pick("fast", &c, 1).unwrap()).collect();
        assert_eq!(picks, vec![3, 0, 1, 3]);
    }

    #[test]
    fn round_robin_keeps_a_cursor_per_group() {
        let rr = RoundRobin::new();
        let fast: Vec<_> = (0..5).map(|i| cand(i, 0)).collect();
        let premium: Vec<_> = (5..8).map(|i| cand(i, 0)).collect();
        assert_eq!(rr.pick("fast", &fast, 1), Some(0));
        assert_eq!(rr.pick("fast", &fast, 1), Some(1));
        assert_eq!(rr.pick("premium", &premium, 1), Some(0)); // index 5
        assert_eq!(rr.pick("fast", &fast, 1), Some(2));
        assert_eq!(rr.pick("premium", &premium, 1), Some(1)); // index 6
        assert_eq!(rr.pick("premium", &premium, 1), Some(2)); // index 7
        assert_eq!(rr.pick("premium", &premium, 1), Some(0)); // wraps to 5
        assert_eq!(rr.pick("fast", &fast, 1), Some(3));
    }

    #[test]
    fn round_robin_follows_config_index_when_candidates_change() {
        let rr = RoundRobin::new();
        let all: Vec<_> = (0..4).map(|i| cand(i, 0)).collect();
        assert_eq!(rr.pick("", &all, 1), Some(0));
        assert_eq!(rr.pick("", &all, 1), Some(1));
        // Programmer 2 disappears from the slice: the next after index 1 is index 3 (position 1).
        let without_2 = vec![all[0], all[3], all[1]];
        assert_eq!(rr.pick("", &without_2, 1), Some(1));
        assert_eq!(rr.pick("", &all, 1), Some(0));
    }

    #[test]
    fn capability_match_respects_config_order() {
        let mut c = vec![cand(4, 0), cand(2, 9), cand(3, 0)];
        assert_eq!(CapabilityMatch.pick("", &c, 1), Some(1)); // index 2, despite its queue
        c[1].has_room = false;
        assert_eq!(CapabilityMatch.pick("", &c, 1), Some(2)); // index 3
    }

    #[test]
    fn p2c_picks_the_lower_load_of_two() {
        let p2c = P2cPeakEwma::with_seed(7);
        let c = loads(&[9.0, 1.0]);
        for _ in 0..50 {
            assert_eq!(p2c.pick("", &c, 1), Some(1));
        }
        // Alone with room, even a heavy candidate is picked.
        let mut c = loads(&[9.0, 1.0]);
        c[1].has_room = false;
        assert_eq!(p2c.pick("", &c, 1), Some(0));
    }

    #[test]
    fn p2c_never_picks_the_heaviest_and_spreads_over_the_rest() {
        let p2c = P2cPeakEwma::with_seed(42);
        let mut c = loads(&[5.0, 1.0, 3.0, 2.0, 4.0]);
        c[1].has_room = false; // the lightest is full
        let mut counts = [0usize; 5];
        for _ in 0..2000 {
            counts[p2c.pick("", &c, 1).unwrap()] += 1;
        }
        assert_eq!(counts[0], 0, "heaviest must always lose its comparison");
        assert_eq!(counts[1], 0, "full candidate must never be picked");
        // Of 6 equally likely pairs among {0,2,3,4}: 3 wins 3, 2 wins 2, 4 wins 1.
        assert!(
            counts[3] > counts[2] && counts[2] > counts[4] && counts[4] > 0,
            "{counts:?}"
        );
    }

    #[test]
    fn p2c_is_reproducible_with_a_seed() {
        let c = loads(&[3.0, 1.0, 4.0, 1.5, 5.0, 9.0, 2.0, 6.0]);
        let run = |seed| {
            let p = P2cPeakEwma::with_seed(seed);
            (0..30)
                .map(|_| p.pick("", &c, 1).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(run(3), run(3));
        assert_ne!(run(3), run(4));
    }

    /// Drives random figure changes and picks through the index and through the linear
    /// reference (the balancer's former per-decision slice: the tier's members minus the skipped
    /// ones, in routing order — configuration order, or a shuffled one) and requires the same
    /// pick from every strategy. The two
    /// strategy sets share a seed, so round-robin cursors and p2c draws evolve alike.
    #[test]
    fn indexed_picks_equal_the_linear_reference() {
        for seed in 0..60u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            // Mostly small tiers (many ties and full members); some past one 64-bit word.
            let n = if seed % 6 == 5 {
                rng.random_range(65..=300usize)
            } else {
                rng.random_range(1..=40usize)
            };
            let mut room: Vec<Option<u64>> = vec![None; n];
            // Available without room (busy), with this outstanding count.
            let mut busy: Vec<Option<u64>> = vec![None; n];
            // Few distinct durations, so expected finishes tie often.
            let mut task_ms: Vec<u64> = vec![1; n];
            let mut slots: Vec<u32> = vec![1; n];
            // Small integers, so loads and outstanding counts tie often.
            let mut loads: Vec<f64> = (0..n)
                .map(|_| f64::from(rng.random_range(0..4u8)))
                .collect();
            // Each member's rank in the routing order: the configuration order for a third of
            // the seeds, else a shuffle (a re-read configuration that reordered the members).
            let mut rank: Vec<usize> = (0..n).collect();
            if seed % 3 != 0 {
                rank.shuffle(&mut rng);
            }
            let registry = TierRegistry::default();
            let tiers: Vec<Tier> = (0..3)
                .map(|_| registry.intern((0..n).filter(|_| rng.random_bool(0.6)).collect()))
                .collect();
            let mut indexes: Vec<CandidateIndex> = tiers
                .iter()
                .map(|t| CandidateIndex::new(t, |i| rank[i]))
                .collect();
            let reference = StrategySet::with_seed(seed);
            let indexed = StrategySet::with_seed(seed);
            for step in 0..600 {
                if rng.random_bool(0.5) {
                    // A member's figures change (dispatch, stream end, report, health, refusal).
                    let i = rng.random_range(0..n);
                    room[i] = (!rng.random_bool(0.3)).then(|| rng.random_range(0..6u64));
                    busy[i] = (room[i].is_none() && rng.random_bool(0.5))
                        .then(|| rng.random_range(4..8u64));
                    loads[i] = f64::from(rng.random_range(0..4u8));
                    // A third of the members keep 1 ms per task and, when not busy, are
                    // recorded with the short form (which keeps the time per task).
                    let short_form = i % 3 == 0;
                    if !short_form && rng.random_bool(0.5) {
                        task_ms[i] = [1, 2, 3, 10][rng.random_range(0..4)];
                        slots[i] = rng.random_range(1..=3);
                    }
                    for index in &mut indexes {
                        if short_form && busy[i].is_none() {
                            index.set(i, room[i]);
                        } else {
                            let figures = room[i]
                                .map(|o| (o, true))
                                .or(busy[i].map(|o| (o, false)))
                                .map(|(outstanding, has_room)| Figures {
                                    outstanding,
                                    has_room,
                                    task_ms: task_ms[i],
                                    slots: slots[i],
                                });
                            index.update(i, figures);
                        }
                    }
                    continue;
                }
                let t = rng.random_range(0..tiers.len());
                let skip: Vec<usize> = (0..rng.random_range(0..4))
                    .map(|_| rng.random_range(0..n))
                    .collect();
                let group = ["fast", "free,local"][rng.random_range(0..2)];
                let mut slice: Vec<Candidate> = tiers[t]
                    .members
                    .iter()
                    .filter(|i| !skip.contains(i))
                    .map(|&i| {
                        let outstanding = room[i].or(busy[i]).unwrap_or(0) as u32;
                        Candidate {
                            index: rank[i],
                            queue_depth: outstanding / 2,
                            in_flight: outstanding - outstanding / 2,
                            has_room: room[i].is_some(),
                            load: loads[i],
                            available: room[i].is_some() || busy[i].is_some(),
                            task_ms: task_ms[i],
                            slots: slots[i],
                        }
                    })
                    .collect();
                // In routing order, as p2c's draws count the candidates in it.
                slice.sort_by_key(|c| c.index);
                let load = |a: usize, b: usize| loads[a].total_cmp(&loads[b]);
                let mut member_at_rank = vec![0; n];
                for (i, &r) in rank.iter().enumerate() {
                    member_at_rank[r] = i;
                }
                // From a lone task to a backlog that keeps every member busy.
                let waiting = [1, 2, 5, 40][rng.random_range(0..4)];
                for kind in StrategyKind::ALL {
                    let want = reference
                        .get(kind)
                        .pick(group, &slice, waiting)
                        .map(|pos| member_at_rank[slice[pos].index]);
                    let got =
                        indexed
                            .get(kind)
                            .pick_indexed(group, &indexes[t], &skip, &load, waiting);
                    assert_eq!(got, want, "seed {seed}, step {step}, {kind}");
                    if let Some(i) = got {
                        assert!(room[i].is_some() && !skip.contains(&i), "{kind} picked {i}");
                        assert!(tiers[t].members.contains(&i), "{kind} left the tier");
                    }
                }
            }
        }
    }

    #[test]
    fn least_expected_wait_weighs_work_by_duration_and_holds_for_a_faster_busy_member() {
        let lew = LeastExpectedWait;
        // Fast (10 ms per task) with 2 tasks: finishes a new one at 30; slow (100 ms) idle: 100.
        let fast = Candidate {
            in_flight: 2,
            task_ms: 10,
            ..cand(0, 0)
        };
        let slow = Candidate {
            task_ms: 100,
            ..cand(1, 0)
        };
        assert_eq!(lew.pick("", &[fast, slow], 1), Some(0));
        // least_loaded counts tasks only and picks the idle slow one.
        assert_eq!(LeastLoaded.pick("", &[fast, slow], 1), Some(1));
        // The fast one is full (5 tasks → 60): still sooner than the slow one, so a lone task
        // waits for it.
        let full = Candidate {
            in_flight: 5,
            has_room: false,
            ..fast
        };
        assert_eq!(lew.pick("", &[full, slow], 1), None);
        // With 40 tasks waiting the pool needs ~410 ms to drain: even a long task (3 × 100) ends
        // on the idle slow member before that, so it is used.
        assert_eq!(lew.pick("", &[full, slow], 40), Some(1));
        // 10 tasks on the fast one (110) against the idle slow one (100): close, and a long task
        // on the slow one (300) would end after the fast one's long finish (130): it waits.
        let swamped = Candidate {
            in_flight: 10,
            ..full
        };
        assert_eq!(lew.pick("", &[swamped, slow], 1), None);
        // With 30 (long finish 330) the slow one is the safer bet too.
        let swamped = Candidate {
            in_flight: 30,
            ..full
        };
        assert_eq!(lew.pick("", &[swamped, slow], 1), Some(1));
        // A member that is down never holds a task.
        let down = Candidate {
            available: false,
            ..full
        };
        assert_eq!(lew.pick("", &[down, slow], 1), Some(1));
        // Equal durations: exactly least_loaded's choice, with or without a backlog.
        let c: Vec<_> = [3, 1, 2]
            .iter()
            .enumerate()
            .map(|(i, &q)| cand(i, q))
            .collect();
        for waiting in [1, 3, 100] {
            assert_eq!(lew.pick("", &c, waiting), LeastLoaded.pick("", &c, waiting));
        }

        // The same through the index, with skip.
        let registry = TierRegistry::default();
        let tier = registry.intern(vec![0, 1]);
        let mut index = CandidateIndex::new(&tier, |i| i);
        let f = |outstanding, has_room, task_ms| {
            Some(Figures {
                outstanding,
                has_room,
                task_ms,
                slots: 1,
            })
        };
        let no_load = |_: usize, _: usize| Ordering::Equal;
        index.update(0, f(5, false, 10));
        index.update(1, f(0, true, 100));
        assert_eq!(lew.pick_indexed("", &index, &[], &no_load, 1), None);
        assert!(index.any_with_room(&[]), "held back, not short of room");
        assert_eq!(lew.pick_indexed("", &index, &[], &no_load, 40), Some(1));
        // An excluded fast member holds nothing back.
        assert_eq!(lew.pick_indexed("", &index, &[0], &no_load, 1), Some(1));
        index.update(0, f(2, true, 10));
        assert_eq!(lew.pick_indexed("", &index, &[], &no_load, 1), Some(0));
        // Its breaker opens: it now runs on a slow backup (200 ms per task).
        index.update(0, f(2, true, 200));
        assert_eq!(lew.pick_indexed("", &index, &[], &no_load, 1), Some(1));
        index.update(1, None);
        assert_eq!(lew.pick_indexed("", &index, &[], &no_load, 1), Some(0));
    }

    #[test]
    fn least_expected_wait_keeps_long_tasks_off_a_slow_member_at_the_end_of_a_backlog() {
        let lew = LeastExpectedWait;
        // Fast (10 ms), full with 5 tasks (a new one would finish at 60; a long one at 80), and
        // slow (50 ms) idle (50; long 150): by the mean the slow member is sooner.
        let fast = Candidate {
            in_flight: 5,
            has_room: false,
            task_ms: 10,
            ..cand(0, 0)
        };
        let slow = Candidate {
            task_ms: 50,
            ..cand(1, 0)
        };
        // A backlog of 20: the pool drains in ~208 ms, after a long task on the slow member
        // would end (150): it takes the task.
        assert_eq!(lew.pick("", &[fast, slow], 20), Some(1));
        // The last task: the pool drains in ~50 ms; a long task would end at 150 on the slow
        // member and at 80 on the fast one, so it waits for the fast one.
        assert_eq!(lew.pick("", &[fast, slow], 1), None);
        // Two slots: a long task occupies one slot of the slow member for 3 × 2 × 30 ms.
        let two_slots = Candidate {
            task_ms: 30,
            slots: 2,
            ..slow
        };
        assert_eq!(two_slots.long_finish_ms(), 180);
        assert_eq!(two_slots.expected_finish_ms(), 30);
    }

    #[test]
    fn indexed_p2c_picks_the_lower_load_of_two_and_honours_skip() {
        let registry = TierRegistry::default();
        let tier = registry.intern(vec![0, 1, 2]);
        let mut index = CandidateIndex::new(&tier, |i| i);
        for i in 0..3 {
            index.set(i, Some(0));
        }
        let loads = [9.0, 1.0, 5.0];
        let load = |a: usize, b: usize| f64::total_cmp(&loads[a], &loads[b]);
        let p2c = P2cPeakEwma::with_seed(7);
        let mut counts = [0usize; 3];
        for _ in 0..300 {
            counts[p2c.pick_indexed("", &index, &[], &load, 1).unwrap()] += 1;
        }
        assert_eq!(counts[0], 0, "the heaviest always loses: {counts:?}");
        assert!(counts[1] > counts[2] && counts[2] > 0, "{counts:?}");
        // Skipping the lightest leaves two; skipping two leaves one; all three, none.
        for _ in 0..20 {
            assert_eq!(p2c.pick_indexed("", &index, &[1], &load, 1), Some(2));
        }
        assert_eq!(p2c.pick_indexed("", &index, &[1, 2], &load, 1), Some(0));
        assert_eq!(p2c.pick_indexed("", &index, &[2, 1, 0, 1], &load, 1), None);
        index.set(1, None);
        assert_eq!(p2c.pick_indexed("", &index, &[2], &load, 1), Some(0));
    }

    #[test]
    fn bits_find_the_next_member_across_levels() {
        // 5,000 positions: three levels of words.
        let n = 5000;
        let mut rng = StdRng::seed_from_u64(11);
        let mut bits = Bits::new(n);
        let mut oracle = std::collections::BTreeSet::new();
        for _ in 0..20_000 {
            let pos = rng.random_range(0..n);
            if rng.random_bool(0.5) {
                if oracle.insert(pos) {
                    bits.insert(pos);
                }
            } else if oracle.remove(&pos) {
                bits.remove(pos);
            }
            let from = rng.random_range(0..n + 70);
            assert_eq!(
                bits.first_from(from),
                oracle.range(from..).next().copied(),
                "from {from}"
            );
            assert_eq!(bits.is_empty(), oracle.is_empty());
        }
    }

    #[test]
    fn tiers_are_interned_by_their_members() {
        let registry = TierRegistry::default();
        let a = registry.intern(vec![3, 1, 2]);
        let b = registry.intern(vec![1, 2, 3, 3]);
        let c = registry.intern(vec![1, 2]);
        assert_eq!(a, b);
        assert_eq!(&*a.members, &[1, 2, 3]);
        assert_ne!(a.id, c.id);
    }

    #[test]
    fn names_parse_and_map_from_the_contract() {
        for kind in StrategyKind::ALL {
            assert_eq!(kind.name().parse::<StrategyKind>(), Ok(kind));
            assert_eq!(StrategySet::new().get(kind).kind(), kind);
        }
        assert!("fastest".parse::<StrategyKind>().is_err());
        assert_eq!(
            StrategyKind::from_proto(ProtoStrategy::Unspecified as i32),
            None
        );
        assert_eq!(StrategyKind::from_proto(99), None);
        assert_eq!(
            StrategyKind::from_proto(ProtoStrategy::RoundRobin as i32),
            Some(StrategyKind::RoundRobin)
        );
        assert_eq!(
            StrategyKind::from_proto(ProtoStrategy::P2cPeakEwma as i32),
            Some(StrategyKind::P2cPeakEwma)
        );
    }

    #[test]
    fn group_key_is_order_insensitive() {
        let a = group_key(&["free".into(), "fast".into(), "fast".into()]);
        assert_eq!(a, "fast,free");
        assert_eq!(a, group_key(&["fast".into(), "free".into()]));
        assert_eq!(group_key(&[]), "");
    }
}
