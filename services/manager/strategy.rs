//! Routing strategies: which of the eligible programmers with room gets the next task.
//!
//! Pure and fast: no I/O, no allocation on the pick path (round robin allocates a group key once per
//! new group). Callers pass one [`Candidate`] per eligible programmer (see `eligibility`) with the
//! load figures they track; a strategy returns the *position in that slice* of the candidate it
//! picks, or `None` when no candidate has room. A strategy never looks beyond the candidates it is
//! given: routing never falls back to "any programmer".
//!
//! | strategy | picks |
//! |---|---|
//! | [`LeastLoaded`] | lowest `queue_depth + in_flight`; ties → configuration order |
//! | [`RoundRobin`] | next in configuration order after the group's previous pick, wrapping |
//! | [`CapabilityMatch`] | first in configuration order (the original document's rule) |
//! | [`P2cPeakEwma`] | two distinct random candidates, the lower `load` wins (tower's p2c idea) |

use crate::contract::v1::Strategy as ProtoStrategy;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;

// ===== Inputs =====

/// One eligible programmer as a strategy sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    /// Position in the configuration's `programmers` list: the tie-breaker and round-robin order.
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
}

impl Candidate {
    /// `queue_depth + in_flight`, without overflow.
    pub fn outstanding(&self) -> u64 {
        u64::from(self.queue_depth) + u64::from(self.in_flight)
    }
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
    fn pick(&self, group: &str, candidates: &[Candidate]) -> Option<usize>;
}

/// The four policies by name: the configuration's own `load_balancing.strategy` type, so the
/// config, the contract and the router share one list.
pub use crate::config::StrategyName as StrategyKind;

impl StrategyKind {
    /// Every kind, in the contract's order.
    pub const ALL: [StrategyKind; 4] = [
        Self::LeastLoaded,
        Self::RoundRobin,
        Self::CapabilityMatch,
        Self::P2cPeakEwma,
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
    "unknown load-balancing strategy {0:?} (expected least_loaded, round_robin, capability_match or p2c_peak_ewma)"
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

    fn pick(&self, _group: &str, candidates: &[Candidate]) -> Option<usize> {
        with_room(candidates)
            .min_by_key(|(_, c)| (c.outstanding(), c.index))
            .map(|(pos, _)| pos)
    }
}

/// Cycles through a group's candidates in configuration order, skipping those without room. Each
/// group (capability set) has its own cursor: the configuration index it picked last. Keying the
/// cursor by configuration index (not by position) keeps the cycle fair when candidates come and
/// go between picks. Groups are bounded by the capability sets that pass eligibility.
#[derive(Debug, Default)]
pub struct RoundRobin {
    last: Mutex<HashMap<String, usize>>,
}

impl RoundRobin {
    /// A round robin with no history.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Strategy for RoundRobin {
    fn kind(&self) -> StrategyKind {
        StrategyKind::RoundRobin
    }

    fn pick(&self, group: &str, candidates: &[Candidate]) -> Option<usize> {
        // A panic elsewhere cannot leave a cursor half-written: recover the map.
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let prev = last.get(group).copied();
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
        let (index, pos) = next.or(first)?;
        match last.get_mut(group) {
            Some(cursor) => *cursor = index,
            None => {
                last.insert(group.to_owned(), index);
            }
        }
        Some(pos)
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

    fn pick(&self, _group: &str, candidates: &[Candidate]) -> Option<usize> {
        with_room(candidates)
            .min_by_key(|(_, c)| c.index)
            .map(|(pos, _)| pos)
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

impl Strategy for P2cPeakEwma {
    fn kind(&self) -> StrategyKind {
        StrategyKind::P2cPeakEwma
    }

    fn pick(&self, _group: &str, candidates: &[Candidate]) -> Option<usize> {
        let k = candidates.iter().filter(|c| c.has_room).count();
        let (a, b) = match k {
            0 => return None,
            1 => return with_room(candidates).next().map(|(pos, _)| pos),
            _ => {
                let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
                let a = rng.random_range(0..k);
                let b = rng.random_range(0..k - 1);
                (a, if b >= a { b + 1 } else { b })
            }
        };
        let mut picked = with_room(candidates)
            .enumerate()
            .filter(|(nth, _)| *nth == a || *nth == b)
            .map(|(_, pc)| pc);
        let (pa, ca) = picked.next()?;
        let (pb, cb) = picked.next()?;
        let a_wins = ca
            .load
            .total_cmp(&cb.load)
            .then(ca.index.cmp(&cb.index))
            .is_le();
        Some(if a_wins { pa } else { pb })
    }
}

// ===== Tests =====

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(index: usize, queue_depth: u32) -> Candidate {
        Candidate {
            index,
            queue_depth,
            in_flight: 0,
            has_room: true,
            load: 0.0,
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
        assert_eq!(LeastLoaded.pick("", &c), Some(2));
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
        assert_eq!(LeastLoaded.pick("", &c), Some(1));
        c[1].has_room = false;
        assert_eq!(LeastLoaded.pick("", &c), Some(4));
        // Ties are decided by configuration index, not slice position.
        let c = vec![cand(7, 1), cand(3, 1), cand(5, 1)];
        assert_eq!(LeastLoaded.pick("", &c), Some(1));
    }

    #[test]
    fn nobody_with_room_means_none() {
        let mut c = vec![cand(0, 0), cand(1, 0)];
        for cc in &mut c {
            cc.has_room = false;
        }
        let set = StrategySet::with_seed(1);
        for kind in StrategyKind::ALL {
            assert_eq!(set.get(kind).pick("g", &c), None, "{kind}");
            assert_eq!(set.get(kind).pick("g", &[]), None, "{kind}");
        }
    }

    #[test]
    fn round_robin_cycles_and_skips_full() {
        let rr = RoundRobin::new();
        let mut c: Vec<_> = (0..4).map(|i| cand(i, 0)).collect();
        let picks: Vec<_> = (0..6).map(|_| rr.pick("fast", &c).unwrap()).collect();
        assert_eq!(picks, vec![0, 1, 2, 3, 0, 1]);
        c[2].has_room = false;
        let picks: Vec<_> = (0..4).map(|_| rr.pick("fast", &c).unwrap()).collect();
        assert_eq!(picks, vec![3, 0, 1, 3]);
    }

    #[test]
    fn round_robin_keeps_a_cursor_per_group() {
        let rr = RoundRobin::new();
        let fast: Vec<_> = (0..5).map(|i| cand(i, 0)).collect();
        let premium: Vec<_> = (5..8).map(|i| cand(i, 0)).collect();
        assert_eq!(rr.pick("fast", &fast), Some(0));
        assert_eq!(rr.pick("fast", &fast), Some(1));
        assert_eq!(rr.pick("premium", &premium), Some(0)); // index 5
        assert_eq!(rr.pick("fast", &fast), Some(2));
        assert_eq!(rr.pick("premium", &premium), Some(1)); // index 6
        assert_eq!(rr.pick("premium", &premium), Some(2)); // index 7
        assert_eq!(rr.pick("premium", &premium), Some(0)); // wraps to 5
        assert_eq!(rr.pick("fast", &fast), Some(3));
    }

    #[test]
    fn round_robin_follows_config_index_when_candidates_change() {
        let rr = RoundRobin::new();
        let all: Vec<_> = (0..4).map(|i| cand(i, 0)).collect();
        assert_eq!(rr.pick("", &all), Some(0));
        assert_eq!(rr.pick("", &all), Some(1));
        // Programmer 2 disappears from the slice: the next after index 1 is index 3 (position 1).
        let without_2 = vec![all[0], all[3], all[1]];
        assert_eq!(rr.pick("", &without_2), Some(1));
        assert_eq!(rr.pick("", &all), Some(0));
    }

    #[test]
    fn capability_match_respects_config_order() {
        let mut c = vec![cand(4, 0), cand(2, 9), cand(3, 0)];
        assert_eq!(CapabilityMatch.pick("", &c), Some(1)); // index 2, despite its queue
        c[1].has_room = false;
        assert_eq!(CapabilityMatch.pick("", &c), Some(2)); // index 3
    }

    #[test]
    fn p2c_picks_the_lower_load_of_two() {
        let p2c = P2cPeakEwma::with_seed(7);
        let c = loads(&[9.0, 1.0]);
        for _ in 0..50 {
            assert_eq!(p2c.pick("", &c), Some(1));
        }
        // Alone with room, even a heavy candidate is picked.
        let mut c = loads(&[9.0, 1.0]);
        c[1].has_room = false;
        assert_eq!(p2c.pick("", &c), Some(0));
    }

    #[test]
    fn p2c_never_picks_the_heaviest_and_spreads_over_the_rest() {
        let p2c = P2cPeakEwma::with_seed(42);
        let mut c = loads(&[5.0, 1.0, 3.0, 2.0, 4.0]);
        c[1].has_room = false; // the lightest is full
        let mut counts = [0usize; 5];
        for _ in 0..2000 {
            counts[p2c.pick("", &c).unwrap()] += 1;
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
            (0..30).map(|_| p.pick("", &c).unwrap()).collect::<Vec<_>>()
        };
        assert_eq!(run(3), run(3));
        assert_ne!(run(3), run(4));
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
