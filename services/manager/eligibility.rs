//! Which programmers may take a task, in which order of preference: capabilities, cost and budget.
//!
//! Pure: the caller passes the programmers (configuration order) as [`Member`]s, the task's
//! [`TaskNeeds`] and what the budget can still cover ([`PaidBudget`]), and gets ordered [`Eligibility`]
//! tiers of member indices — or the reason nobody ever can serve the task. Picking *one* member
//! of a tier is the routing strategy's job (`strategy`).
//!
//! # Rules
//!
//! - A member holds a task when it holds *every* requested capability (its tags plus the names of
//!   the `capability_routing` groups that list it, see [`member_capabilities`]). Nobody else is
//!   eligible: there is no fallback to "any programmer", so free-only work never lands on a paid model.
//! - No configured member holds them → [`EligibilityError::NoneCanServe`] (FAILED_PRECONDITION).
//!   Unavailable members still count here: they may come back.
//! - A paid member is eligible only if the budget can cover its `max_cost_per_job_usd`, unless the
//!   task is a dry run (dry runs are never charged, but are still routed). Free members are never
//!   blocked by the budget.
//! - Only paid members hold the task and none is affordable → [`EligibilityError::BudgetExhausted`]
//!   (RESOURCE_EXHAUSTED).
//! - `prefer_free`: tier 1 = free holders, tier 2 = affordable paid holders; the manager tries tier 2
//!   only when no tier-1 member is available or has room. Without it: one tier with all holders
//!   (affordable paid ones included) in configuration order.
//! - Unavailable members are left out of the tiers; empty tiers are dropped. All tiers empty
//!   (every holder is down) is not an error here: the manager decides whether to wait.
//!
//! The budget figure is advisory (read before routing); the reservation made at dispatch is the
//! real check, and a refused reservation sends the manager back to the next choice.

use crate::money::Usd;
use std::collections::{BTreeMap, BTreeSet};

/// One configured programmer, as eligibility sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    /// Configured id, e.g. "006" (for messages).
    pub id: String,
    /// Its tags and the capability_routing groups that list it ([`member_capabilities`]).
    pub capabilities: BTreeSet<String>,
    /// True when its LLMs cost money (it then needs a budget reservation).
    pub paid: bool,
    /// What the manager reserves before dispatching to it (when paid).
    pub max_cost_per_job_usd: f64,
    /// Healthy and reachable now.
    pub available: bool,
}

/// What the task asks for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TaskNeeds<'a> {
    /// Capabilities the programmer must all hold; empty = any programmer.
    pub capabilities: &'a [String],
    /// Free members first, paid only when needed (request value, or the configured default).
    pub prefer_free: bool,
    /// Validate and route only: never charged, so the budget does not restrict it.
    pub dry_run: bool,
}

/// What the daily budget can still cover for a paid reservation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PaidBudget {
    /// Budget disabled: paid members are never excluded for cost.
    Unlimited,
    /// Money left today (limit − spent − reserved).
    Remaining(Usd),
}

impl PaidBudget {
    /// True when a reservation of `amount_usd` fits (compared as [`Usd`], like the ledger; an
    /// amount that is not money never fits).
    pub fn covers(self, amount_usd: f64) -> bool {
        match self {
            Self::Unlimited => true,
            Self::Remaining(left) => Usd::from_usd(amount_usd).is_ok_and(|amount| amount <= left),
        }
    }
}

/// The members that may take the task, best tier first; each tier in configuration order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Eligibility {
    /// Non-empty tiers of indices into the members slice.
    pub tiers: Vec<Vec<usize>>,
}

impl Eligibility {
    /// True when no member is eligible right now (all holders unavailable).
    pub fn is_empty(&self) -> bool {
        self.tiers.is_empty()
    }
}

/// Why a task can not be routed at all.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EligibilityError {
    /// No configured programmer holds all the capabilities (FAILED_PRECONDITION).
    #[error("no configured programmer has all of the capabilities [{}]", .capabilities.join(", "))]
    NoneCanServe {
        /// The task's capabilities.
        capabilities: Vec<String>,
    },
    /// Only paid programmers can serve the task and the daily budget cannot cover one more job
    /// (RESOURCE_EXHAUSTED).
    #[error(
        "daily budget exhausted: capabilities [{}] need a paid programmer (${needed_usd:.2} per job) but only ${remaining_usd:.2} is left today",
        .capabilities.join(", ")
    )]
    BudgetExhausted {
        /// The task's capabilities.
        capabilities: Vec<String>,
        /// The cheapest reservation among the paid programmers that hold them.
        needed_usd: f64,
        /// What the budget has left.
        remaining_usd: f64,
    },
}

/// The capability set of programmer `id`: its own `tags` plus every `capability_routing` group
/// that lists it (the original config routes by both).
pub fn member_capabilities(
    id: &str,
    tags: &[String],
    routing: &BTreeMap<String, Vec<String>>,
) -> BTreeSet<String> {
    tags.iter()
        .cloned()
        .chain(
            routing
                .iter()
                .filter(|(_, ids)| ids.iter().any(|i| i == id))
                .map(|(group, _)| group.clone()),
        )
        .collect()
}

/// How much to reserve before dispatching a task to `member`: `None` for free members and dry runs.
pub fn reservation_usd(member: &Member, dry_run: bool) -> Option<f64> {
    (member.paid && !dry_run).then_some(member.max_cost_per_job_usd)
}

/// Orders the members that may take `task`. See the module docs for the rules.
pub fn eligible(
    members: &[Member],
    task: &TaskNeeds<'_>,
    budget: PaidBudget,
) -> Result<Eligibility, EligibilityError> {
    let holds = |m: &Member| task.capabilities.iter().all(|c| m.capabilities.contains(c));
    let holders: Vec<usize> = (0..members.len()).filter(|&i| holds(&members[i])).collect();
    if holders.is_empty() {
        return Err(EligibilityError::NoneCanServe {
            capabilities: task.capabilities.to_vec(),
        });
    }

    let affordable = |m: &Member| !m.paid || task.dry_run || budget.covers(m.max_cost_per_job_usd);
    let any_free = holders.iter().any(|&i| !members[i].paid);
    if !any_free && !holders.iter().any(|&i| affordable(&members[i])) {
        let needed_usd = holders
            .iter()
            .map(|&i| members[i].max_cost_per_job_usd)
            .fold(f64::INFINITY, f64::min);
        let remaining_usd = match budget {
            PaidBudget::Remaining(left) => left.as_usd_f64(),
            PaidBudget::Unlimited => f64::INFINITY, // unreachable: Unlimited covers everything
        };
        return Err(EligibilityError::BudgetExhausted {
            capabilities: task.capabilities.to_vec(),
            needed_usd,
            remaining_usd,
        });
    }

    let usable = |i: &usize| members[*i].available && affordable(&members[*i]);
    let tiers = if task.prefer_free {
        let free = holders
            .iter()
            .copied()
            .filter(|&i| !members[i].paid)
            .filter(usable)
            .collect();
        let paid = holders
            .iter()
            .copied()
            .filter(|&i| members[i].paid)
            .filter(usable)
            .collect();
        vec![free, paid]
    } else {
        vec![holders.iter().copied().filter(usable).collect()]
    };
    Ok(Eligibility {
        tiers: tiers
            .into_iter()
            .filter(|t: &Vec<usize>| !t.is_empty())
            .collect(),
    })
}

/// Orders `tiers` for a task that asks for a region: every tier's members of the region first
/// (tier order kept), then the same tiers' members of other regions, empty tiers dropped. The
/// balancer tries tiers in order, so another region is used only when no member of the task's
/// region can take the task (eligible, with room and budget): the cost rules inside each half
/// are unchanged, and no member outside the eligible tiers is ever added.
pub fn prefer_region(tiers: Vec<Vec<usize>>, in_region: impl Fn(usize) -> bool) -> Vec<Vec<usize>> {
    let (near, far): (Vec<Vec<usize>>, Vec<Vec<usize>>) = tiers
        .into_iter()
        .map(|t| t.into_iter().partition(|&i| in_region(i)))
        .unzip();
    near.into_iter()
        .chain(far)
        .filter(|t| !t.is_empty())
        .collect()
}

// ===== Tests =====

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_members_come_first_in_every_tier_and_others_follow() {
        // Tiers: free [0, 1, 2], paid [3, 4]; region holds 1 and 4.
        let near = |i: usize| i == 1 || i == 4;
        assert_eq!(
            prefer_region(vec![vec![0, 1, 2], vec![3, 4]], near),
            vec![vec![1], vec![4], vec![0, 2], vec![3]]
        );
        // Nobody in the region: the tiers as they were. Everybody: likewise.
        assert_eq!(
            prefer_region(vec![vec![0, 2], vec![3]], near),
            vec![vec![0, 2], vec![3]]
        );
        assert_eq!(prefer_region(vec![vec![1, 4]], near), vec![vec![1, 4]]);
    }

    /// The shipped pool: 001–005 fast/local/free, 006–007 premium/reasoning (Claude, $5),
    /// 008 premium/openai ($5), 009–010 deepseek/local/free; groups as in `capability_routing`.
    fn shipped_pool() -> Vec<Member> {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let ids =
            |r: std::ops::RangeInclusive<u32>| r.map(|i| format!("{i:03}")).collect::<Vec<_>>();
        let free = ids(1..=5)
            .into_iter()
            .chain(ids(9..=10))
            .collect::<Vec<_>>();
        let routing: BTreeMap<String, Vec<String>> = [
            ("fast", ids(1..=5)),
            ("premium", ids(6..=8)),
            ("reasoning", ids(6..=8)),
            ("free", free.clone()),
            ("local", free),
            ("paid", ids(6..=8)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        (1..=10)
            .map(|i| {
                let id = format!("{i:03}");
                let (tags, paid, cost) = match i {
                    1..=5 => (s(&["fast", "local", "free"]), false, 2.5),
                    6 | 7 => (s(&["premium", "reasoning", "paid"]), true, 5.0),
                    8 => (s(&["premium", "openai", "paid"]), true, 5.0),
                    _ => (s(&["deepseek", "local", "free"]), false, 2.5),
                };
                Member {
                    capabilities: member_capabilities(&id, &tags, &routing),
                    id,
                    paid,
                    max_cost_per_job_usd: cost,
                    available: true,
                }
            })
            .collect()
    }

    fn caps(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn ids(members: &[Member], tier: &[usize]) -> Vec<String> {
        tier.iter().map(|&i| members[i].id.clone()).collect()
    }

    fn needs(c: &[String], prefer_free: bool) -> TaskNeeds<'_> {
        TaskNeeds {
            capabilities: c,
            prefer_free,
            dry_run: false,
        }
    }

    const PLENTY: PaidBudget = PaidBudget::Remaining(Usd::from_nanos(50_000_000_000));
    const BROKE: PaidBudget = PaidBudget::Remaining(Usd::from_nanos(4_990_000_000));

    #[test]
    fn capability_groups_come_from_tags_and_routing() {
        let routing: BTreeMap<String, Vec<String>> =
            [("reasoning".to_string(), caps(&["008"]))].into();
        let c = member_capabilities("008", &caps(&["premium", "openai"]), &routing);
        assert_eq!(
            c,
            ["openai", "premium", "reasoning"]
                .iter()
                .map(|s| s.to_string())
                .collect()
        );
        // The shipped 008 is in the reasoning group though not tagged with it.
        assert!(shipped_pool()[7].capabilities.contains("reasoning"));
    }

    #[test]
    fn fast_goes_to_001_to_005_only() {
        let pool = shipped_pool();
        let c = caps(&["fast"]);
        for prefer_free in [true, false] {
            let e = eligible(&pool, &needs(&c, prefer_free), PLENTY).unwrap();
            assert_eq!(e.tiers.len(), 1);
            assert_eq!(ids(&pool, &e.tiers[0]), ["001", "002", "003", "004", "005"]);
        }
    }

    #[test]
    fn premium_goes_to_006_to_008_only() {
        let pool = shipped_pool();
        let c = caps(&["premium"]);
        for prefer_free in [true, false] {
            let e = eligible(&pool, &needs(&c, prefer_free), PLENTY).unwrap();
            assert_eq!(e.tiers.len(), 1);
            assert_eq!(ids(&pool, &e.tiers[0]), ["006", "007", "008"]);
        }
        let c = caps(&["premium", "openai"]);
        let e = eligible(&pool, &needs(&c, true), PLENTY).unwrap();
        assert_eq!(ids(&pool, &e.tiers[0]), ["008"]);
    }

    #[test]
    fn free_work_never_reaches_a_paid_member() {
        let mut pool = shipped_pool();
        for m in pool.iter_mut().filter(|m| !m.paid) {
            m.available = false;
        }
        for c in [caps(&["free"]), caps(&["local"]), caps(&["fast", "free"])] {
            for prefer_free in [true, false] {
                let e = eligible(&pool, &needs(&c, prefer_free), PaidBudget::Unlimited).unwrap();
                assert!(e.is_empty(), "{c:?} must wait for a free member, got {e:?}");
            }
        }
    }

    #[test]
    fn prefer_free_puts_paid_members_in_a_second_tier() {
        let pool = shipped_pool();
        let any: Vec<String> = vec![];
        let e = eligible(&pool, &needs(&any, true), PLENTY).unwrap();
        assert_eq!(e.tiers.len(), 2);
        assert_eq!(
            ids(&pool, &e.tiers[0]),
            ["001", "002", "003", "004", "005", "009", "010"]
        );
        assert_eq!(ids(&pool, &e.tiers[1]), ["006", "007", "008"]);

        let e = eligible(&pool, &needs(&any, false), PLENTY).unwrap();
        assert_eq!(e.tiers, vec![(0..10).collect::<Vec<_>>()]);
    }

    #[test]
    fn prefer_free_falls_to_paid_only_when_no_free_member_is_available() {
        let mut pool = shipped_pool();
        let any: Vec<String> = vec![];
        for i in [0, 1, 2, 3, 4, 8] {
            pool[i].available = false;
        }
        // 010 is still up: it is tier 1.
        let e = eligible(&pool, &needs(&any, true), PLENTY).unwrap();
        assert_eq!(ids(&pool, &e.tiers[0]), ["010"]);
        assert_eq!(ids(&pool, &e.tiers[1]), ["006", "007", "008"]);
        pool[9].available = false;
        let e = eligible(&pool, &needs(&any, true), PLENTY).unwrap();
        assert_eq!(e.tiers.len(), 1);
        assert_eq!(ids(&pool, &e.tiers[0]), ["006", "007", "008"]);
    }

    #[test]
    fn exhausted_budget_with_prefer_free_keeps_only_the_free_tier() {
        let pool = shipped_pool();
        let any: Vec<String> = vec![];
        for prefer_free in [true, false] {
            let e = eligible(&pool, &needs(&any, prefer_free), BROKE).unwrap();
            assert_eq!(e.tiers.len(), 1);
            assert_eq!(
                ids(&pool, &e.tiers[0]),
                ["001", "002", "003", "004", "005", "009", "010"]
            );
        }
        // Exactly the job cap left is enough.
        let e = eligible(
            &pool,
            &needs(&any, true),
            PaidBudget::Remaining(Usd::from_nanos(5_000_000_000)),
        )
        .unwrap();
        assert_eq!(e.tiers.len(), 2);
    }

    #[test]
    fn premium_only_with_exhausted_budget_is_budget_exhausted() {
        let pool = shipped_pool();
        let c = caps(&["premium"]);
        let err = eligible(&pool, &needs(&c, true), BROKE).unwrap_err();
        assert_eq!(
            err,
            EligibilityError::BudgetExhausted {
                capabilities: c.clone(),
                needed_usd: 5.0,
                remaining_usd: 4.99
            }
        );
        assert!(err.to_string().contains("daily budget exhausted"), "{err}");
        // Even when the paid members are also down, the budget is the reason given.
        let mut down = pool.clone();
        for m in &mut down {
            m.available = false;
        }
        assert!(matches!(
            eligible(&down, &needs(&c, true), BROKE),
            Err(EligibilityError::BudgetExhausted { .. })
        ));
    }

    #[test]
    fn dry_runs_are_never_blocked_by_the_budget() {
        let pool = shipped_pool();
        let c = caps(&["premium"]);
        let task = TaskNeeds {
            capabilities: &c,
            prefer_free: true,
            dry_run: true,
        };
        let e = eligible(&pool, &task, PaidBudget::Remaining(Usd::ZERO)).unwrap();
        assert_eq!(ids(&pool, &e.tiers[0]), ["006", "007", "008"]);
        assert_eq!(reservation_usd(&pool[5], true), None);
        assert_eq!(reservation_usd(&pool[5], false), Some(5.0));
        assert_eq!(reservation_usd(&pool[0], false), None);
    }

    #[test]
    fn unknown_or_unmatched_capabilities_are_none_can_serve() {
        let pool = shipped_pool();
        for c in [
            caps(&["gpu"]),
            caps(&["fast", "premium"]),
            caps(&["free", "paid"]),
        ] {
            let err = eligible(&pool, &needs(&c, true), PLENTY).unwrap_err();
            assert_eq!(
                err,
                EligibilityError::NoneCanServe {
                    capabilities: c.clone()
                }
            );
        }
        assert!(matches!(
            eligible(&[], &needs(&[], true), PLENTY),
            Err(EligibilityError::NoneCanServe { .. })
        ));
    }

    #[test]
    fn unavailable_members_still_count_for_can_ever_serve() {
        let mut pool = shipped_pool();
        for m in &mut pool {
            m.available = false;
        }
        let c = caps(&["deepseek"]);
        let e = eligible(&pool, &needs(&c, true), PLENTY).unwrap();
        assert!(e.is_empty());
    }
}
