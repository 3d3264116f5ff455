//! Scheduling quality: a discrete-event **simulation of the routing policy**, not a run of the
//! services (dry runs are instant, so a real pool cannot show how durations pack).
//!
//! What is real: the strategies (`pas::manager::strategy`, the exact `pick` the manager calls),
//! tower's `PeakEwma` load estimate (the one the balancer wraps each programmer in; it reads
//! tokio's clock, which the simulation moves with `tokio::time::advance` on a paused runtime),
//! and the shipped config's `max_queue_per_programmer` / `max_concurrent_per_programmer`.
//!
//! What is modelled, mirroring `manager::waitqueue` and `manager::balancer`: one FIFO manager
//! queue; on every event (arrival, completion) a pass offers each waiting task, oldest first, the
//! programmers with room (`in_flight < max_concurrent + max_queue`) as [`Candidate`]s in config
//! order (`in_flight` = tasks sent and not finished, `queue_depth` = 0 since no other caller
//! uses the programmers, `load` = the rank of the PeakEwma cost); a programmer runs
//! `max_concurrent` tasks at a time and queues the rest FIFO. Network and status-poll delays are
//! zero. Durations are drawn from a seeded log-normal distribution.
//!
//! The heterogeneous scenario gives each programmer an LLM with a speed factor (a task's drawn
//! duration × the factor of the LLM its programmer uses when the task starts), and opens one
//! programmer's breaker mid-run (from then on it runs on its slower backup). least_expected_wait
//! reads the manager's real [`DurationEstimates`], fed with every finished task's run time on the
//! simulated clock, exactly as `Manager::finish_task` feeds it; its lower bound is the time at
//! which the pool's summed speed (breaker switch included) has done all the work.

use super::{Dist, Section, table, verdict_le};
use pas::manager::durations::DurationEstimates;
use pas::manager::strategy::{Candidate, StrategyKind, StrategySet};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, Exp, LogNormal};
use serde_json::json;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;
use tower::load::peak_ewma::Handle;
use tower::load::{Load, PeakEwma, TrackCompletion};
use tower::{Service, ServiceExt};

/// The balancer's PeakEwma parameters (`manager::balancer`: `DEFAULT_RTT`, `DECAY`).
const DEFAULT_RTT: Duration = Duration::from_secs(5);
const DECAY: Duration = Duration::from_secs(60);

/// Task durations: log-normal with this median (seconds) and σ of the underlying normal.
const MEDIAN_S: f64 = 30.0;
const SIGMA: f64 = 1.0;
/// Offered load of the open-arrival scenario, as a fraction of the pool's capacity.
const UTILISATION: f64 = 0.9;

// ===== Inputs =====

/// How tasks arrive.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Arrivals {
    /// All tasks are submitted at t = 0 (the "batch").
    Batch,
    /// Poisson arrivals offering `UTILISATION` of the pool's capacity.
    Poisson,
}

/// One simulated task.
#[derive(Debug, Clone, Copy)]
pub struct Job {
    pub arrival_s: f64,
    pub duration_s: f64,
}

/// Pool shape.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub programmers: usize,
    pub max_concurrent: u32,
    pub max_queue: u32,
}

/// Which LLM each programmer uses, and how slow each LLM is.
#[derive(Debug, Clone)]
pub struct Llms {
    /// Per LLM: its name and the factor a task's drawn duration is multiplied by.
    pub llms: Vec<(&'static str, f64)>,
    /// Per programmer: its primary LLM, its backup, and when its breaker opens (seconds; from
    /// then on it uses the backup).
    pub programmers: Vec<(usize, usize, Option<f64>)>,
}

impl Llms {
    /// `n` programmers on one LLM of factor 1 (the homogeneous pool).
    pub fn uniform(n: usize) -> Self {
        Self {
            llms: vec![("uniform", 1.0)],
            programmers: vec![(0, 0, None); n],
        }
    }

    /// The LLM programmer `p` uses at time `t`.
    fn llm_at(&self, p: usize, t: f64) -> usize {
        let (primary, backup, opens) = self.programmers[p];
        if opens.is_some_and(|o| t >= o) {
            backup
        } else {
            primary
        }
    }

    /// Programmer `p`'s speed (work done per second per slot) at `t`.
    fn speed_at(&self, p: usize, t: f64) -> f64 {
        1.0 / self.llms[self.llm_at(p, t)].1
    }

    /// The earliest time by which the pool, every slot busy from t = 0, has done `work`
    /// seconds of factor-1 work: the lower bound of a batch's makespan.
    fn lower_bound(&self, work: f64, slots: f64) -> f64 {
        let done = |t: f64| -> f64 {
            (0..self.programmers.len())
                .map(|p| {
                    let switch = self.programmers[p].2.unwrap_or(f64::INFINITY).min(t);
                    slots * (switch * self.speed_at(p, 0.0) + (t - switch) * self.speed_at(p, t))
                })
                .sum()
        };
        let (mut lo, mut hi) = (0.0f64, 1.0f64);
        while done(hi) < work {
            hi *= 2.0;
        }
        for _ in 0..100 {
            let mid = (lo + hi) / 2.0;
            if done(mid) < work { lo = mid } else { hi = mid }
        }
        hi
    }
}

/// `n` jobs drawn with `seed`.
pub fn jobs(n: usize, seed: u64, arrivals: Arrivals, shape: Shape) -> Vec<Job> {
    let mut rng = StdRng::seed_from_u64(seed);
    let dur = LogNormal::new(MEDIAN_S.ln(), SIGMA).expect("valid log-normal parameters");
    let durations: Vec<f64> = (0..n).map(|_| dur.sample(&mut rng).max(0.5)).collect();
    let mean = (MEDIAN_S.ln() + SIGMA * SIGMA / 2.0).exp();
    let slots = shape.programmers as f64 * f64::from(shape.max_concurrent.max(1));
    let gap = Exp::new(slots * UTILISATION / mean).expect("valid exponential rate");
    let mut t = 0.0;
    durations
        .into_iter()
        .map(|duration_s| {
            let arrival_s = match arrivals {
                Arrivals::Batch => 0.0,
                Arrivals::Poisson => {
                    t += gap.sample(&mut rng);
                    t
                }
            };
            Job {
                arrival_s,
                duration_s,
            }
        })
        .collect()
}

// ===== The simulation =====

/// A task counted in the PeakEwma estimate until it is dropped (the balancer's `UntilStreamEnd`).
#[derive(Debug, Default)]
struct Tracked(Option<Handle>);

#[derive(Debug, Clone, Copy, Default)]
struct UntilDone;

impl TrackCompletion<Handle, Tracked> for UntilDone {
    type Output = Tracked;
    fn track_completion(&self, handle: Handle, mut t: Tracked) -> Tracked {
        t.0 = Some(handle);
        t
    }
}

/// A programmer endpoint that answers at once; the simulation holds the answer until the task ends.
#[derive(Debug, Clone, Copy)]
struct Instant0;

impl Service<()> for Instant0 {
    type Response = Tracked;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Tracked, Infallible>>;
    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn call(&mut self, _: ()) -> Self::Future {
        std::future::ready(Ok(Tracked::default()))
    }
}

struct Prog {
    /// (job, end time, load guard, LLM it ran on, run time)
    running: Vec<(usize, f64, Tracked, usize, f64)>,
    queued: VecDeque<(usize, Tracked)>,
    ewma: PeakEwma<Instant0, UntilDone>,
}

impl Prog {
    fn outstanding(&self) -> u32 {
        (self.running.len() + self.queued.len()) as u32
    }
}

/// What one run produced.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub makespan_s: f64,
    /// Total work / programmers (the lower bound).
    pub lower_bound_s: f64,
    /// max(total work / programmers, longest task, last arrival + its duration).
    pub tight_bound_s: f64,
    /// Start − arrival per task, seconds.
    pub waits_s: Vec<f64>,
}

/// Runs `jobs` through the policy `kind` on `shape`, programmers on `llms`. Must run inside a
/// paused tokio runtime.
pub async fn simulate(
    kind: StrategyKind,
    seed: u64,
    jobs: &[Job],
    shape: Shape,
    llms: &Llms,
) -> Outcome {
    let durations = DurationEstimates::default();
    let strategies = StrategySet::with_seed(seed);
    let strategy = strategies.get(kind);
    let decay_ns = DECAY.as_nanos() as f64;
    let mut progs: Vec<Prog> = (0..shape.programmers)
        .map(|_| Prog {
            running: Vec::new(),
            queued: VecDeque::new(),
            ewma: PeakEwma::new(Instant0, DEFAULT_RTT, decay_ns, UntilDone),
        })
        .collect();
    let capacity = shape.max_concurrent + shape.max_queue;
    let mut start = vec![f64::NAN; jobs.len()];
    let mut finish = vec![f64::NAN; jobs.len()];
    let mut waiting: VecDeque<usize> = VecDeque::new();
    let mut next_arrival = 0usize;
    let mut now = 0.0f64;
    loop {
        while next_arrival < jobs.len() && jobs[next_arrival].arrival_s <= now {
            waiting.push_back(next_arrival);
            next_arrival += 1;
        }
        // One scheduler pass, oldest task first (every task is in one capability group, so the
        // first that does not fit means none behind it does).
        while let Some(&job) = waiting.front() {
            // Every programmer is available; the busy ones (no room) count for
            // least_expected_wait only.
            let room: Vec<usize> = (0..progs.len()).collect();
            let mut cands: Vec<Candidate> = room
                .iter()
                .map(|&i| Candidate {
                    index: i,
                    queue_depth: 0,
                    in_flight: progs[i].outstanding(),
                    has_room: progs[i].outstanding() < capacity,
                    load: 0.0,
                    available: true,
                    task_ms: durations
                        .estimate_ms(llms.llms[llms.llm_at(i, now)].0)
                        .div_ceil(u64::from(shape.max_concurrent.max(1))),
                    slots: shape.max_concurrent.max(1),
                })
                .collect();
            let costs: Vec<_> = room.iter().map(|&i| progs[i].ewma.load()).collect();
            let mut order: Vec<usize> = (0..cands.len()).collect();
            order.sort_by(|&a, &b| {
                costs[a]
                    .partial_cmp(&costs[b])
                    .unwrap_or(std::cmp::Ordering::Equal)
            });
            for (rank, &i) in order.iter().enumerate() {
                cands[i].load = rank as f64;
            }
            let Some(pos) = strategy.pick("", &cands, waiting.len() as u64) else {
                break;
            };
            waiting.pop_front();
            let p = &mut progs[cands[pos].index];
            let guard = match p.ewma.ready().await {
                Ok(svc) => match svc.call(()).await {
                    Ok(t) => t,
                    Err(never) => match never {},
                },
                Err(never) => match never {},
            };
            if p.running.len() < shape.max_concurrent as usize {
                start[job] = now;
                let llm = llms.llm_at(cands[pos].index, now);
                let run = jobs[job].duration_s * llms.llms[llm].1;
                p.running.push((job, now + run, guard, llm, run));
            } else {
                p.queued.push_back((job, guard));
            }
        }
        // The next event: an arrival or a completion.
        let next_end = progs
            .iter()
            .flat_map(|p| p.running.iter().map(|r| r.1))
            .fold(f64::INFINITY, f64::min);
        let next_arr = jobs
            .get(next_arrival)
            .map_or(f64::INFINITY, |j| j.arrival_s);
        let next = next_end.min(next_arr);
        if !next.is_finite() {
            break;
        }
        if next > now {
            tokio::time::advance(Duration::from_secs_f64(next - now)).await;
            now = next;
        }
        for (i, p) in progs.iter_mut().enumerate() {
            let (done, still): (Vec<_>, Vec<_>) = p.running.drain(..).partition(|r| r.1 <= now);
            p.running = still;
            for (job, end, guard, llm, run) in done {
                finish[job] = end;
                drop(guard); // PeakEwma records the task's time (queue + run) now
                durations.record_sample(llms.llms[llm].0, (run * 1000.0).round() as u64);
            }
            while p.running.len() < shape.max_concurrent as usize {
                let Some((job, guard)) = p.queued.pop_front() else {
                    break;
                };
                start[job] = now;
                let llm = llms.llm_at(i, now);
                let run = jobs[job].duration_s * llms.llms[llm].1;
                p.running.push((job, now + run, guard, llm, run));
            }
        }
    }
    let total: f64 = jobs.iter().map(|j| j.duration_s).sum();
    let lower_bound_s = llms.lower_bound(total, f64::from(shape.max_concurrent.max(1)));
    let fastest = llms.llms.iter().map(|l| l.1).fold(f64::INFINITY, f64::min);
    let tight_bound_s = jobs
        .iter()
        .map(|j| j.arrival_s + j.duration_s * fastest)
        .fold(lower_bound_s, f64::max);
    Outcome {
        makespan_s: finish.iter().copied().fold(0.0, f64::max),
        lower_bound_s,
        tight_bound_s,
        waits_s: jobs
            .iter()
            .enumerate()
            .map(|(i, j)| start[i] - j.arrival_s)
            .collect(),
    }
}

// ===== The section =====

/// One row of the results: a scenario × policy over every seed.
#[derive(Debug, serde::Serialize)]
struct Row {
    scenario: &'static str,
    policy: String,
    max_queue_per_programmer: u32,
    /// makespan / (total work / programmers), one per seed.
    makespan_ratio: Dist,
    /// makespan / max(total/programmers, longest arrival+duration), one per seed.
    makespan_ratio_tight: Dist,
    /// p95 of the task waits, seconds, one per seed.
    p95_wait_s: Dist,
    /// p95 wait / the central-queue reference's p95 wait, one per seed.
    p95_wait_vs_central: Dist,
}

/// Runs every scenario × policy over `seeds` seeds of `tasks` tasks.
/// The shipped config's pool shape (10 programmers, its concurrency and queue limit) and a paused
/// tokio runtime to simulate it on.
fn shipped_shape() -> anyhow::Result<(Shape, tokio::runtime::Runtime)> {
    let config_path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/pas/programmer_pool.yaml");
    let config = pas::config::Config::load(&config_path)?;
    let lb = &config.pool.load_balancing;
    let shape = Shape {
        programmers: 10,
        max_concurrent: lb.max_concurrent_per_programmer.max(1),
        max_queue: lb.max_queue_per_programmer,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()?;
    Ok((shape, rt))
}

pub fn run(tasks: usize, seeds: u64) -> anyhow::Result<Section> {
    let (shipped, rt) = shipped_shape()?;
    let central = Shape {
        max_queue: 0,
        ..shipped
    };
    let mut rows = Vec::new();
    for (scenario, arrivals) in [
        ("batch of 1,000 at t=0", Arrivals::Batch),
        ("Poisson arrivals at 90% load", Arrivals::Poisson),
    ] {
        // Reference: one central queue, no programmer queues (greedy list scheduling in FIFO
        // order); the same for every policy, since only idle programmers have room.
        let reference: Vec<Outcome> = (1..=seeds)
            .map(|seed| {
                let js = jobs(tasks, seed, arrivals, shipped);
                rt.block_on(simulate(
                    StrategyKind::LeastLoaded,
                    seed,
                    &js,
                    central,
                    &Llms::uniform(central.programmers),
                ))
            })
            .collect();
        let ref_p95: Vec<f64> = reference
            .iter()
            .map(|o| super::percentile(&o.waits_s, 95.0))
            .collect();
        let mut policies: Vec<(String, Option<StrategyKind>, Shape)> = StrategyKind::ALL
            .iter()
            .map(|&k| (k.name().to_string(), Some(k), shipped))
            .collect();
        policies.push(("central queue (reference)".into(), None, central));
        for (policy, kind, shape) in policies {
            let outcomes: Vec<Outcome> = match kind {
                None => reference.clone(),
                Some(kind) => (1..=seeds)
                    .map(|seed| {
                        let js = jobs(tasks, seed, arrivals, shipped);
                        rt.block_on(simulate(
                            kind,
                            seed,
                            &js,
                            shape,
                            &Llms::uniform(shape.programmers),
                        ))
                    })
                    .collect(),
            };
            let p95: Vec<f64> = outcomes
                .iter()
                .map(|o| super::percentile(&o.waits_s, 95.0))
                .collect();
            rows.push(Row {
                scenario,
                policy,
                max_queue_per_programmer: shape.max_queue,
                makespan_ratio: Dist::of(
                    &outcomes
                        .iter()
                        .map(|o| o.makespan_s / o.lower_bound_s)
                        .collect::<Vec<_>>(),
                ),
                makespan_ratio_tight: Dist::of(
                    &outcomes
                        .iter()
                        .map(|o| o.makespan_s / o.tight_bound_s)
                        .collect::<Vec<_>>(),
                ),
                p95_wait_vs_central: Dist::of(
                    &p95.iter()
                        .zip(&ref_p95)
                        .map(|(a, b)| if *b > 0.0 { a / b } else { f64::NAN })
                        .collect::<Vec<_>>(),
                ),
                p95_wait_s: Dist::of(&p95),
            });
        }
    }

    let mut t = table(&[
        "scenario",
        "policy",
        "queue/prog",
        "makespan ÷ LB (p50 / max over seeds)",
        "÷ tight LB (p50)",
        "p95 wait s (p50 over seeds)",
        "p95 wait ÷ central (p50)",
        "target ≤ 1.10× (least_loaded, batch)",
    ]);
    for r in &rows {
        let verdict = if r.policy == "least_loaded" && r.scenario.starts_with("batch") {
            verdict_le(r.makespan_ratio.max, 1.10)
        } else {
            String::new()
        };
        t.add_row(vec![
            r.scenario.to_string(),
            r.policy.clone(),
            r.max_queue_per_programmer.to_string(),
            format!(
                "{:.3}× / {:.3}×",
                r.makespan_ratio.p50, r.makespan_ratio.max
            ),
            format!("{:.3}×", r.makespan_ratio_tight.p50),
            format!("{:.0}", r.p95_wait_s.p50),
            format!("{:.2}×", r.p95_wait_vs_central.p50),
            verdict,
        ]);
    }
    let markdown = format!(
        "### Scheduling quality (simulation of the routing policy)\n\n\
         {tasks} tasks per run, {seeds} seeds, 10 programmers × {} concurrent, queue limit {} per \
         programmer (from `configs/pas/programmer_pool.yaml`); durations log-normal, median {MEDIAN_S} s, \
         σ = {SIGMA} (mean ≈ {:.0} s). LB = total work ÷ programmers; tight LB = max(LB, latest \
         arrival + duration). The real `pick` of each strategy and tower's `PeakEwma` run on a paused \
         tokio clock; queues, programmers and time are simulated (see `benches/support/scheduling.rs`).\n\n{t}\n",
        shipped.max_concurrent,
        shipped.max_queue,
        (MEDIAN_S.ln() + SIGMA * SIGMA / 2.0).exp(),
    );
    let json = json!({
        "kind": "simulation of the routing policy (real strategies, simulated programmers and time)",
        "tasks": tasks,
        "seeds": seeds,
        "programmers": shipped.programmers,
        "max_concurrent_per_programmer": shipped.max_concurrent,
        "max_queue_per_programmer": shipped.max_queue,
        "durations": {"distribution": "log-normal", "median_s": MEDIAN_S, "sigma": SIGMA},
        "poisson_utilisation": UTILISATION,
        "target": {"least_loaded_makespan_over_lower_bound_le": 1.10},
        "rows": rows,
    });
    Ok(Section {
        name: "scheduling",
        markdown,
        json,
    })
}

// ===== The heterogeneous pool =====

/// Slow LLM's factors: a 14B model next to a 7B one on the same hardware (3×), and a pool where
/// the slow programmers are starved (e.g. on CPU, 6×).
const SLOW: [f64; 2] = [3.0, 6.0];
/// When programmer 001's breaker opens (seconds into the batch): it then runs on its slow backup.
const BREAKER_OPENS_S: f64 = 2000.0;

/// The heterogeneous pool: 001–006 on a fast 7B model (backup: the 14B), 007–010 on the 14B
/// (backup: the 7B), `slow` times slower; 001's breaker opens at [`BREAKER_OPENS_S`].
pub fn heterogeneous_llms(slow: f64) -> Llms {
    let mut programmers = vec![(0, 1, None); 6];
    programmers[0].2 = Some(BREAKER_OPENS_S);
    programmers.extend([(1, 0, None); 4]);
    Llms {
        llms: vec![
            ("ollama/qwen2.5-coder:7b-instruct", 1.0),
            ("ollama/qwen2.5-coder:14b-instruct", slow),
        ],
        programmers,
    }
}

/// One policy on the heterogeneous pool over every seed.
#[derive(Debug, serde::Serialize)]
struct HeteroRow {
    slow_factor: f64,
    policy: String,
    /// The lower bound, seconds, one per seed.
    lower_bound_s: Dist,
    /// makespan ÷ lower bound, one per seed.
    makespan_ratio: Dist,
    /// makespan, seconds, one per seed.
    makespan_s: Dist,
    /// p95 of the task waits, seconds, one per seed.
    p95_wait_s: Dist,
    /// makespan ÷ least_loaded's makespan on the same jobs, one per seed.
    makespan_vs_least_loaded: Dist,
}

/// A batch of `tasks` on the heterogeneous pool, for least_expected_wait, least_loaded and
/// p2c_peak_ewma, over `seeds` seeds.
pub fn run_heterogeneous(tasks: usize, seeds: u64) -> anyhow::Result<Section> {
    let (shape, rt) = shipped_shape()?;
    let policies = [
        StrategyKind::LeastExpectedWait,
        StrategyKind::LeastLoaded,
        StrategyKind::P2cPeakEwma,
    ];
    let mut rows: Vec<HeteroRow> = Vec::new();
    for slow in SLOW {
        let llms = heterogeneous_llms(slow);
        // outcomes[policy][seed]
        let outcomes: Vec<Vec<Outcome>> = policies
            .iter()
            .map(|&kind| {
                (1..=seeds)
                    .map(|seed| {
                        let js = jobs(tasks, seed, Arrivals::Batch, shape);
                        rt.block_on(simulate(kind, seed, &js, shape, &llms))
                    })
                    .collect()
            })
            .collect();
        let least_loaded = &outcomes[1];
        rows.extend(policies.iter().zip(&outcomes).map(|(kind, runs)| {
            let of = |f: &dyn Fn(usize, &Outcome) -> f64| {
                Dist::of(
                    &runs
                        .iter()
                        .enumerate()
                        .map(|(i, o)| f(i, o))
                        .collect::<Vec<_>>(),
                )
            };
            HeteroRow {
                slow_factor: slow,
                policy: kind.name().to_string(),
                lower_bound_s: of(&|_, o| o.lower_bound_s),
                makespan_ratio: of(&|_, o| o.makespan_s / o.lower_bound_s),
                makespan_s: of(&|_, o| o.makespan_s),
                p95_wait_s: of(&|_, o| super::percentile(&o.waits_s, 95.0)),
                makespan_vs_least_loaded: of(&|i, o| o.makespan_s / least_loaded[i].makespan_s),
            }
        }));
    }
    let mut t = table(&[
        "slow model",
        "policy",
        "LB s (p50)",
        "makespan s (p50)",
        "makespan ÷ LB (p50 / max over seeds)",
        "p95 wait s (p50)",
        "makespan ÷ least_loaded (p50 / max)",
        "target ≤ 1.05× LB (p50)",
        "target ≤ 0.85× least_loaded (p50)",
    ]);
    for r in &rows {
        let lew = r.policy == StrategyKind::LeastExpectedWait.name();
        t.add_row(vec![
            format!("{}×", r.slow_factor),
            r.policy.clone(),
            format!("{:.0}", r.lower_bound_s.p50),
            format!("{:.0}", r.makespan_s.p50),
            format!(
                "{:.3}× / {:.3}×",
                r.makespan_ratio.p50, r.makespan_ratio.max
            ),
            format!("{:.0}", r.p95_wait_s.p50),
            format!(
                "{:.3}× / {:.3}×",
                r.makespan_vs_least_loaded.p50, r.makespan_vs_least_loaded.max
            ),
            if lew {
                verdict_le(r.makespan_ratio.p50, 1.05)
            } else {
                String::new()
            },
            if lew {
                verdict_le(r.makespan_vs_least_loaded.p50, 0.85)
            } else {
                String::new()
            },
        ]);
    }
    let markdown = format!(
        "### Heterogeneous pool (simulation of the routing policy)\n\n\
         A batch of {tasks} tasks at t = 0, {seeds} seeds, 10 programmers × {} concurrent, queue \
         limit {} per programmer: 001–006 on a fast model, 007–010 on a model 3× (then 6×) \
         slower; 001's breaker opens at t = {BREAKER_OPENS_S} s and it runs on the slow backup \
         from then on. Durations log-normal as above (× the model's factor). LB = the time at \
         which the pool's summed speed (the switch included) has done all the work. \
         least_expected_wait learns the models' durations from finished tasks (prior \
         {} s, half-life {} s, `manager::durations`); nothing is told to it.\n\n{t}\n",
        shape.max_concurrent,
        shape.max_queue,
        pas::manager::durations::PRIOR.as_secs(),
        pas::manager::durations::HALF_LIFE.as_secs(),
    );
    let json = json!({
        "kind": "simulation of the routing policy on a heterogeneous pool",
        "tasks": tasks,
        "seeds": seeds,
        "slow_factors": SLOW,
        "breaker_opens_s": BREAKER_OPENS_S,
        "max_concurrent_per_programmer": shape.max_concurrent,
        "max_queue_per_programmer": shape.max_queue,
        "target": {"least_expected_wait_makespan_over_lower_bound_le": 1.05,
                   "least_expected_wait_makespan_over_least_loaded_le": 0.85},
        "rows": rows,
    });
    Ok(Section {
        name: "heterogeneous",
        markdown,
        json,
    })
}
