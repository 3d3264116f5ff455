//! Talking to a running pool (real `pas manager` / `pas programmer` processes started by the
//! shared test harness `tests/common/pool.rs`): connect, wait for availability, run a task and
//! time its events at the client.

use crate::common::pool::TestPool;
use anyhow::{Context, bail};
use pas::contract::v1::programmer_client::ProgrammerClient;
use pas::contract::v1::programmer_pool_client::ProgrammerPoolClient;
use pas::contract::v1::task_event::Kind;
use pas::contract::v1::{
    DispatchRequest, GetPoolStatusRequest, TaskEvent, TaskRequest, TaskResult,
};
use std::time::Duration;
use tokio::time::Instant;
use tonic::transport::Channel;

/// A gRPC client of the pool's manager.
pub async fn manager(pool: &TestPool) -> anyhow::Result<ProgrammerPoolClient<Channel>> {
    ProgrammerPoolClient::connect(pool.manager_url())
        .await
        .context("connect to the manager")
}

/// A gRPC client of programmer `id`.
pub async fn programmer(pool: &TestPool, id: &str) -> anyhow::Result<ProgrammerClient<Channel>> {
    ProgrammerClient::connect(pool.programmer_url(id))
        .await
        .with_context(|| format!("connect to programmer {id}"))
}

/// Waits (up to `timeout`) until the manager reports `n` programmers available.
pub async fn wait_available(
    c: &mut ProgrammerPoolClient<Channel>,
    n: u32,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(s) = c.get_pool_status(GetPoolStatusRequest {}).await
            && s.into_inner().available >= n
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("the manager did not see {n} programmers available within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A task's stream as the client saw it: every event with its arrival time.
#[derive(Debug)]
pub struct Run {
    /// When the call was made.
    pub started: Instant,
    pub events: Vec<(Instant, TaskEvent)>,
    pub result: TaskResult,
}

impl Run {
    /// Arrival times and byte lengths of the Output events.
    pub fn outputs(&self) -> Vec<(Instant, usize)> {
        self.events
            .iter()
            .filter_map(|(t, e)| match &e.kind {
                Some(Kind::Output(o)) => Some((*t, o.text.len())),
                _ => None,
            })
            .collect()
    }

    /// Arrival time of the first event matching `f`.
    pub fn first(&self, f: impl Fn(&Kind) -> bool) -> Option<Instant> {
        self.events
            .iter()
            .find(|(_, e)| e.kind.as_ref().is_some_and(&f))
            .map(|(t, _)| *t)
    }
}

/// Reads a task stream to its end, stamping each event.
async fn collect(started: Instant, mut stream: tonic::Streaming<TaskEvent>) -> anyhow::Result<Run> {
    let mut events = Vec::new();
    while let Some(ev) = stream.message().await.context("task stream")? {
        events.push((Instant::now(), ev));
    }
    let result = events
        .iter()
        .rev()
        .find_map(|(_, e)| match &e.kind {
            Some(Kind::Result(r)) => Some(TaskResult::clone(r)),
            _ => None,
        })
        .context("the stream ended without a result")?;
    Ok(Run {
        started,
        events,
        result,
    })
}

/// Dispatches through the manager and reads the whole stream.
pub async fn dispatch(
    c: &mut ProgrammerPoolClient<Channel>,
    req: DispatchRequest,
) -> anyhow::Result<Run> {
    let started = Instant::now();
    let stream = c.dispatch(req).await.context("Dispatch")?.into_inner();
    collect(started, stream).await
}

/// Executes directly on a programmer and reads the whole stream.
pub async fn execute(c: &mut ProgrammerClient<Channel>, req: TaskRequest) -> anyhow::Result<Run> {
    let started = Instant::now();
    let stream = c.execute(req).await.context("Execute")?.into_inner();
    collect(started, stream).await
}

/// Model names the simulator has received requests for so far (one entry per request).
pub async fn sim_requests(pool: &TestPool) -> anyhow::Result<Vec<String>> {
    let v = pool.sim.requests().await;
    let list = v
        .as_array()
        .or_else(|| v["requests"].as_array())
        .context("GET /_sim/requests: not a list")?;
    Ok(list
        .iter()
        .map(|r| r["model"].as_str().unwrap_or("").to_string())
        .collect())
}
