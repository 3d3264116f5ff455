//! The manager's limits on what it accepts (`limits:` in the configuration), decided before any
//! work is done for a call, so that a burst of callers gets fast answers and the control plane
//! (health, status, metrics) keeps its share of the process.
//!
//! Three layers, each refusing with RESOURCE_EXHAUSTED that names the limit and carries
//! `google.rpc.RetryInfo` (see [`refusal`]):
//! - **calls in flight**: at most `max_in_flight_rpcs` calls to the task API are being admitted
//!   at once; one more is shed at once (the [`middleware`], which leaves grpc.health, reflection,
//!   `/health` and `/metrics` alone);
//! - **per-caller rate**: a caller — its bearer token's name, or its IP address when
//!   authentication is off — may make `per_caller_rate_per_s` calls per second with bursts of
//!   `per_caller_burst` (a GCRA token bucket on tokio's clock);
//! - **per-caller tasks**: a caller may have `per_caller_max_tasks` tasks queued or running
//!   ([`Admission::task_slot`]; the slot is held by the task's life and given back when it ends).
//!
//! The queue bound itself (`manager.max_queue`) is the scheduler's ([`super::waitqueue`]).

use crate::config::LimitsConfig;
use crate::manager::auth::Caller;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The gRPC path prefix of the calls the limits apply to.
const TASK_API: &str = "/pas.v1.ProgrammerPool/";
/// What a shed call is told to wait before retrying: the time a busy manager takes to admit a
/// few hundred calls.
const SHED_RETRY: Duration = Duration::from_millis(50);
/// When a caller is at its task limit, the soonest one of its tasks could end is unknown; this
/// is a polite first retry.
const TASKS_RETRY: Duration = Duration::from_secs(1);
/// Past this many callers tracked, idle ones are forgotten (their state is the default anyway);
/// the next sweep waits until the map has doubled from what the last one left, so a crowd of
/// busy callers costs one pass per doubling, not one per call.
const SWEEP_AT: usize = 4096;

/// A refusal by limit `limit` (the configuration key, e.g. `limits.per_caller_rate_per_s`):
/// RESOURCE_EXHAUSTED, `message` naming the limit, and RetryInfo saying when to try again.
pub fn refusal(limit: &str, message: impl std::fmt::Display, retry_after: Duration) -> Status {
    metrics::counter!("pas_admission_refusals_total", "limit" => limit.to_string()).increment(1);
    Status::with_error_details(
        Code::ResourceExhausted,
        format!("{limit}: {message}"),
        ErrorDetails::with_retry_info(Some(retry_after)),
    )
}

/// The peer address of a connection, put in every request's extensions by the server
/// ([`crate::serve`]), so limits can tell callers apart when there are no tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// Who a call counts against: its token's name, else its IP address, else one shared bucket.
pub fn caller_key(extensions: &http::Extensions) -> Arc<str> {
    if let Some(caller) = extensions.get::<Arc<Caller>>() {
        return format!("token {}", caller.name).into();
    }
    match extensions.get::<PeerAddr>() {
        Some(PeerAddr(addr)) => format!("address {}", addr.ip()).into(),
        None => "address unknown".into(),
    }
}

/// Per caller: tasks held and the rate bucket.
#[derive(Debug)]
struct CallerState {
    tasks: u32,
    /// GCRA's theoretical arrival time: the bucket is full when it is not after now.
    tat: Instant,
}

/// The manager's admission limits (see the module docs). Shared by the middleware and the
/// Dispatch handler.
#[derive(Debug)]
pub struct Admission {
    in_flight: Arc<Semaphore>,
    callers: Mutex<Callers>,
}

/// The per-caller states and when to sweep them next, with the limits they are held to (under
/// the same lock, so a re-read configuration's limits apply from the next call on).
#[derive(Debug)]
struct Callers {
    limits: LimitsConfig,
    map: HashMap<Arc<str>, CallerState>,
    sweep_at: usize,
}

impl Admission {
    pub fn new(limits: &LimitsConfig) -> Arc<Self> {
        Arc::new(Self {
            in_flight: Arc::new(Semaphore::new(limits.max_in_flight_rpcs as usize)),
            callers: Mutex::new(Callers {
                limits: limits.clone(),
                map: HashMap::new(),
                sweep_at: SWEEP_AT,
            }),
        })
    }

    fn callers(&self) -> MutexGuard<'_, Callers> {
        // Every critical section is a few assignments: a poisoned map is still consistent.
        self.callers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One call by `caller`, against its rate: refused when its bucket is empty.
    pub fn check_rate(&self, caller: &Arc<str>) -> Result<(), Status> {
        let now = Instant::now();
        let mut callers = self.callers();
        let (rate, burst) = (
            callers.limits.per_caller_rate_per_s.max(1),
            callers.limits.per_caller_burst,
        );
        let interval = Duration::from_secs(1) / rate;
        let tolerance = interval * burst.saturating_sub(1);
        if callers.map.len() >= callers.sweep_at {
            callers.map.retain(|_, c| c.tasks > 0 || c.tat > now);
            callers.sweep_at = (callers.map.len() * 2).max(SWEEP_AT);
        }
        let state = callers
            .map
            .entry(caller.clone())
            .or_insert(CallerState { tasks: 0, tat: now });
        let tat = state.tat.max(now);
        if tat > now + tolerance {
            let retry = tat - now - tolerance;
            return Err(refusal(
                "limits.per_caller_rate_per_s",
                format!(
                    "{caller} made more than {rate} calls per second (bursts of {}); retry in {} ms",
                    burst,
                    retry.as_millis().max(1)
                ),
                retry,
            ));
        }
        state.tat = tat + interval;
        Ok(())
    }

    /// A task slot for `caller`, held for the task's life; refused at `per_caller_max_tasks`.
    pub fn task_slot(self: &Arc<Self>, caller: Arc<str>) -> Result<TaskSlot, Status> {
        let mut callers = self.callers();
        let max = callers.limits.per_caller_max_tasks;
        let state = callers.map.entry(caller.clone()).or_insert(CallerState {
            tasks: 0,
            tat: Instant::now(),
        });
        if state.tasks >= max {
            return Err(refusal(
                "limits.per_caller_max_tasks",
                format!("{caller} already has {max} tasks queued or running"),
                TASKS_RETRY,
            ));
        }
        state.tasks += 1;
        Ok(TaskSlot {
            admission: self.clone(),
            caller,
        })
    }

    /// Tasks `caller` holds now.
    #[cfg(test)]
    pub fn tasks_of(&self, caller: &str) -> u32 {
        self.callers().map.get(caller).map_or(0, |c| c.tasks)
    }

    /// Holds callers to `limits` from the next call on (a re-read configuration). Tasks already
    /// admitted keep their slots; a caller over a lowered `per_caller_max_tasks` is refused new
    /// tasks until it is under it. A lowered `max_in_flight_rpcs` takes its permits back as the
    /// calls holding them end.
    pub fn set_limits(&self, limits: &LimitsConfig) {
        let before = std::mem::replace(&mut self.callers().limits, limits.clone());
        let (was, now) = (
            before.max_in_flight_rpcs as usize,
            limits.max_in_flight_rpcs as usize,
        );
        if now > was {
            self.in_flight.add_permits(now - was);
        } else if now < was {
            let owed = (was - now) - self.in_flight.forget_permits(was - now);
            if owed > 0 {
                // Held by calls in progress: taken back as they end.
                let in_flight = self.in_flight.clone();
                tokio::spawn(async move {
                    if let Ok(permits) = in_flight.acquire_many_owned(owed as u32).await {
                        permits.forget();
                    }
                });
            }
        }
    }

    /// A permit to be admitted now, or None when `max_in_flight_rpcs` calls already are.
    fn try_enter(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.in_flight.clone().try_acquire_owned().ok()
    }
}

/// One of a caller's task slots (see [`Admission::task_slot`]); given back on drop.
#[derive(Debug)]
pub struct TaskSlot {
    admission: Arc<Admission>,
    caller: Arc<str>,
}

impl Drop for TaskSlot {
    fn drop(&mut self) {
        let mut callers = self.admission.callers();
        if let Some(state) = callers.map.get_mut(&self.caller) {
            state.tasks = state.tasks.saturating_sub(1);
            if state.tasks == 0 && state.tat <= Instant::now() {
                callers.map.remove(&self.caller);
            }
        }
    }
}

/// The axum middleware in front of the task API: sheds calls past `max_in_flight_rpcs` and
/// calls past the caller's rate, before any handler runs. Runs after authentication (the caller
/// is known); the HTTP/JSON routes count as the calls they make; every other path passes
/// untouched.
pub async fn middleware(
    axum::extract::State(admission): axum::extract::State<Arc<Admission>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let path = request.uri().path();
    // The HTTP/JSON routes count as the calls they make.
    if !path.starts_with(TASK_API) && super::http::rpc_of(request.method(), path).is_none() {
        return next.run(request).await;
    }
    let Some(_permit) = admission.try_enter() else {
        let max = admission.callers().limits.max_in_flight_rpcs;
        let refused = refusal(
            "limits.max_in_flight_rpcs",
            format!("the manager is admitting {max} calls already"),
            SHED_RETRY,
        );
        return super::http::refusal(path, refused);
    };
    if let Err(refused) = admission.check_rate(&caller_key(request.extensions())) {
        return super::http::refusal(path, refused);
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rate: u32, burst: u32, tasks: u32) -> LimitsConfig {
        LimitsConfig {
            per_caller_rate_per_s: rate,
            per_caller_burst: burst,
            per_caller_max_tasks: tasks,
            ..LimitsConfig::default()
        }
    }

    fn retry_of(status: &Status) -> Duration {
        status
            .get_details_retry_info()
            .and_then(|r| r.retry_delay)
            .expect("RetryInfo with a delay")
    }

    /// Limits set while the manager runs (a re-read configuration) apply from the next call:
    /// a lowered task bound refuses a caller already at it, slots held stay held; a lowered
    /// in-flight bound takes back the permits held as their calls end.
    #[tokio::test]
    async fn limits_set_while_running_apply_from_the_next_call() {
        let admission = Admission::new(&LimitsConfig {
            max_in_flight_rpcs: 2,
            ..limits(1000, 1000, 2)
        });
        let held = admission.task_slot("alice".into()).unwrap();
        let lower = LimitsConfig {
            max_in_flight_rpcs: 1,
            ..limits(1000, 1000, 1)
        };
        let (first, second) = (admission.try_enter(), admission.try_enter());
        assert!(first.is_some() && second.is_some());
        admission.set_limits(&lower);
        let refused = admission.task_slot("alice".into()).unwrap_err();
        assert!(
            refused
                .message()
                .starts_with("limits.per_caller_max_tasks: alice already has 1"),
            "{refused:?}"
        );
        assert_eq!(admission.tasks_of("alice"), 1);
        drop(held);
        let _slot = admission
            .task_slot("alice".into())
            .expect("under the bound again");

        // Both permits held: the one owed is taken back when a call ends.
        drop(first);
        while admission.in_flight.available_permits() > 0 {
            tokio::task::yield_now().await;
        }
        assert!(
            admission.try_enter().is_none(),
            "one call in flight, bound 1"
        );
        drop(second);
        let only = admission.try_enter().expect("the bound's one permit");
        assert!(admission.try_enter().is_none());
        drop(only);

        // Raised: permits added at once.
        admission.set_limits(&LimitsConfig {
            max_in_flight_rpcs: 3,
            ..lower
        });
        let three: Vec<_> = (0..3).map_while(|_| admission.try_enter()).collect();
        assert_eq!(three.len(), 3);
        assert!(admission.try_enter().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_caller_gets_its_burst_then_its_rate() {
        let admission = Admission::new(&limits(10, 5, 100));
        let alice: Arc<str> = "token alice".into();
        let bob: Arc<str> = "token bob".into();
        for _ in 0..5 {
            admission.check_rate(&alice).expect("within the burst");
        }
        let refused = admission.check_rate(&alice).expect_err("burst used up");
        assert_eq!(refused.code(), Code::ResourceExhausted);
        assert!(
            refused
                .message()
                .starts_with("limits.per_caller_rate_per_s: token alice"),
            "{}",
            refused.message()
        );
        assert_eq!(retry_of(&refused), Duration::from_millis(100));
        // Another caller is not affected.
        admission.check_rate(&bob).expect("bob has his own bucket");
        // After the advertised delay, exactly one more call fits.
        tokio::time::advance(Duration::from_millis(100)).await;
        admission.check_rate(&alice).expect("one token refilled");
        admission.check_rate(&alice).expect_err("only one");
        // A second of quiet refills the whole burst.
        tokio::time::advance(Duration::from_secs(1)).await;
        for _ in 0..5 {
            admission.check_rate(&alice).expect("refilled burst");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn task_slots_are_per_caller_and_given_back() {
        let admission = Admission::new(&limits(1000, 1000, 2));
        let alice: Arc<str> = "token alice".into();
        let a1 = admission.task_slot(alice.clone()).expect("first");
        let _a2 = admission.task_slot(alice.clone()).expect("second");
        let refused = admission.task_slot(alice.clone()).expect_err("third");
        assert!(
            refused
                .message()
                .starts_with("limits.per_caller_max_tasks: token alice already has 2"),
            "{}",
            refused.message()
        );
        assert_eq!(retry_of(&refused), TASKS_RETRY);
        let _b = admission.task_slot("token bob".into()).expect("bob");
        drop(a1);
        assert_eq!(admission.tasks_of("token alice"), 1);
        let _a3 = admission.task_slot(alice).expect("a slot came back");
    }

    #[test]
    fn callers_are_told_apart_by_token_then_address() {
        let mut ext = http::Extensions::new();
        assert_eq!(&*caller_key(&ext), "address unknown");
        ext.insert(PeerAddr("10.1.2.3:5555".parse().expect("addr")));
        assert_eq!(&*caller_key(&ext), "address 10.1.2.3");
        ext.insert(Arc::new(Caller {
            name: "alice".into(),
            role: crate::manager::auth::Role::Dispatch,
        }));
        assert_eq!(&*caller_key(&ext), "token alice");
    }
}
