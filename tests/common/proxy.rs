//! A `pas.v1.Programmer` in front of a real programmer, with the faults a real programmer has no
//! switch for: an Execute that fails on the wire before reaching it, or whose answer is lost after
//! the programmer took the task; a task stream cut after its first event; a WatchTask that cannot
//! read the task back, or cannot reach the programmer. Everything else is forwarded to the real
//! process, and health answers SERVING, so the manager sees a programmer that stays up.

use super::pool::{ChildGuard, TestPool};
use pas::contract::v1::programmer_client::ProgrammerClient;
use pas::contract::v1::programmer_server::{Programmer, ProgrammerServer};
use pas::contract::v1::{
    GetStatusRequest, ProgrammerStatus, StopTaskRequest, StopTaskResponse, TaskEvent, TaskRequest,
    WatchTaskRequest,
};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use tokio_stream::{Stream, StreamExt};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

type EventStream = Pin<Box<dyn Stream<Item = Result<TaskEvent, Status>> + Send>>;

/// Which faults the proxy injects.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// The first this many Execute calls fail with UNAVAILABLE without reaching the programmer:
    /// what a connection failing around the call looks like.
    pub refuse_executes: u32,
    /// The next this many Execute calls reach the programmer, which takes the task (its first
    /// event comes back), and then fail with UNAVAILABLE: the answer lost on the way back.
    pub lose_execute_answers: u32,
    /// Every Execute is refused as at a full programmer's admission (RESOURCE_EXHAUSTED) while
    /// GetStatus, forwarded, keeps reporting room.
    pub refuse_admission: bool,
    /// Every forwarded Execute stream breaks after its first event.
    pub cut_streams: bool,
    /// Every forwarded Execute stream breaks when a StopTask arrives, before the StopTask is
    /// forwarded (so the programmer's own result can only be read back with WatchTask).
    pub cut_streams_on_stop: bool,
    /// Every WatchTask answers a stream that fails at once (DATA_LOSS).
    pub break_watches: bool,
    /// Every WatchTask fails with UNAVAILABLE without reaching the programmer.
    pub refuse_watches: bool,
}

/// What the proxy saw.
#[derive(Debug, Default)]
pub struct Seen {
    pub executes: AtomicU32,
    pub watch_calls: AtomicU32,
    pub stops: AtomicU32,
}

struct FaultyProgrammer {
    upstream: ProgrammerClient<Channel>,
    faults: Faults,
    seen: Arc<Seen>,
    /// Set when a StopTask arrived (for `cut_streams_on_stop`).
    stopped: tokio::sync::watch::Sender<bool>,
}

#[tonic::async_trait]
impl Programmer for FaultyProgrammer {
    type ExecuteStream = EventStream;
    type WatchTaskStream = EventStream;

    async fn execute(
        &self,
        request: Request<TaskRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let n = self.seen.executes.fetch_add(1, Ordering::SeqCst);
        if self.faults.refuse_admission {
            return Err(Status::resource_exhausted("proxy: the queue is full"));
        }
        if n < self.faults.refuse_executes {
            return Err(Status::unavailable(
                "proxy: connection reset before the call",
            ));
        }
        let mut upstream = self
            .upstream
            .clone()
            .execute(request.into_inner())
            .await?
            .into_inner();
        if n < self.faults.refuse_executes + self.faults.lose_execute_answers {
            // Taken there (its first event came), then the stream is dropped.
            upstream.message().await?;
            return Err(Status::unavailable(
                "proxy: connection reset after the call",
            ));
        }
        if self.faults.cut_streams_on_stop {
            let mut stopped = self.stopped.subscribe();
            let until_stopped = async move {
                let _ = stopped.wait_for(|s| *s).await;
            };
            let cut = futures::StreamExt::take_until(upstream, until_stopped).chain(
                tokio_stream::once(Err(Status::unavailable("proxy: connection reset"))),
            );
            return Ok(Response::new(Box::pin(cut)));
        }
        if !self.faults.cut_streams {
            return Ok(Response::new(Box::pin(upstream)));
        }
        // The first event (Assigned) goes through, then the stream breaks.
        let cut = upstream
            .take(1)
            .chain(tokio_stream::once(Err(Status::unavailable(
                "proxy: connection reset",
            ))));
        Ok(Response::new(Box::pin(cut)))
    }

    async fn watch_task(
        &self,
        request: Request<WatchTaskRequest>,
    ) -> Result<Response<EventStream>, Status> {
        self.seen.watch_calls.fetch_add(1, Ordering::SeqCst);
        if self.faults.refuse_watches {
            return Err(Status::unavailable("proxy: connection reset"));
        }
        if self.faults.break_watches {
            let broken = tokio_stream::once(Err(Status::data_loss(
                "proxy: the task's events cannot be read back",
            )));
            return Ok(Response::new(Box::pin(broken)));
        }
        let upstream = self
            .upstream
            .clone()
            .watch_task(request.into_inner())
            .await?
            .into_inner();
        Ok(Response::new(Box::pin(upstream)))
    }

    async fn stop_task(
        &self,
        request: Request<StopTaskRequest>,
    ) -> Result<Response<StopTaskResponse>, Status> {
        self.seen.stops.fetch_add(1, Ordering::SeqCst);
        self.stopped.send_replace(true);
        self.upstream.clone().stop_task(request.into_inner()).await
    }

    async fn get_status(
        &self,
        request: Request<GetStatusRequest>,
    ) -> Result<Response<ProgrammerStatus>, Status> {
        self.upstream.clone().get_status(request.into_inner()).await
    }
}

/// Serves the proxy on 127.0.0.1:`port` (the port the pool's configuration gives the
/// programmer), forwarding to the real programmer on `upstream_port`, until the test ends.
pub async fn serve(port: u16, upstream_port: u16, faults: Faults) -> Arc<Seen> {
    let upstream = ProgrammerClient::connect(format!("http://127.0.0.1:{upstream_port}"))
        .await
        .expect("connect to the real programmer");
    let seen = Arc::new(Seen::default());
    let proxy = FaultyProgrammer {
        upstream,
        faults,
        seen: seen.clone(),
        stopped: tokio::sync::watch::channel(false).0,
    };
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<ProgrammerServer<FaultyProgrammer>>()
        .await;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind the programmer's configured port");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(ProgrammerServer::new(proxy))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    seen
}

/// Starts the real programmer `id` on a port of its own and the proxy, with `faults`, on the port
/// the pool's configuration gives `id`. Keep the guard: the programmer stops when it drops.
pub async fn start_behind(pool: &TestPool, id: &str, faults: Faults) -> (ChildGuard, Arc<Seen>) {
    let real_port = super::pool::free_port();
    let real = pool.start_programmer_with_args(id, &["--port", &real_port.to_string()]);
    let seen = serve(pool.ports[id], real_port, faults).await;
    (real, seen)
}
