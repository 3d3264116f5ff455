//! A task whose stream breaks every time the manager follows it again is given up on that
//! programmer after the task's lease: stopped there, rerouted, finished elsewhere. Before, the
//! manager followed it again at once, without end (a WatchTask call and two log lines each time).
//!
//! The real programmer 001 runs behind a gRPC proxy in this test (its configured port is the
//! proxy's): the proxy forwards Execute, StopTask and GetStatus, cuts Execute's stream after its
//! first event, and answers every WatchTask with a stream that fails at once: what a programmer
//! that can no longer read its task back (or sends an event the manager cannot decode) looks
//! like. The real programmer has no switch for that fault.

mod common;

use common::pool::{
    PoolOptions, TestPool, TestProgrammer, dispatch_collect, manager_client, rerouted, state_of,
    wait_available, wait_until,
};
use pas::contract::v1::programmer_client::ProgrammerClient;
use pas::contract::v1::programmer_server::{Programmer, ProgrammerServer};
use pas::contract::v1::{
    GetStatusRequest, ProgrammerStatus, StopTaskRequest, StopTaskResponse, TaskEvent, TaskRequest,
    TaskState, WatchTaskRequest,
};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

type EventStream = Pin<Box<dyn Stream<Item = Result<TaskEvent, Status>> + Send>>;

/// What the proxy saw.
#[derive(Default)]
struct Seen {
    executes: AtomicU32,
    watch_calls: AtomicU32,
    stops: AtomicU32,
}

/// A `pas.v1.Programmer` in front of a real programmer, with broken task streams.
struct BreakingProxy {
    upstream: ProgrammerClient<Channel>,
    seen: Arc<Seen>,
}

#[tonic::async_trait]
impl Programmer for BreakingProxy {
    type ExecuteStream = EventStream;
    type WatchTaskStream = EventStream;

    async fn execute(
        &self,
        request: Request<TaskRequest>,
    ) -> Result<Response<EventStream>, Status> {
        self.seen.executes.fetch_add(1, Ordering::SeqCst);
        let upstream = self
            .upstream
            .clone()
            .execute(request.into_inner())
            .await?
            .into_inner();
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
        _request: Request<WatchTaskRequest>,
    ) -> Result<Response<EventStream>, Status> {
        self.seen.watch_calls.fetch_add(1, Ordering::SeqCst);
        let broken = tokio_stream::once(Err(Status::data_loss(
            "proxy: the task's events cannot be read back",
        )));
        Ok(Response::new(Box::pin(broken)))
    }

    async fn stop_task(
        &self,
        request: Request<StopTaskRequest>,
    ) -> Result<Response<StopTaskResponse>, Status> {
        self.seen.stops.fetch_add(1, Ordering::SeqCst);
        self.upstream.clone().stop_task(request.into_inner()).await
    }

    async fn get_status(
        &self,
        request: Request<GetStatusRequest>,
    ) -> Result<Response<ProgrammerStatus>, Status> {
        self.upstream.clone().get_status(request.into_inner()).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_breaks_whenever_followed_is_given_up_after_the_lease() {
    // 001's first model call hangs: the task cannot finish there before the manager gives up.
    let sim = common::Sim::start_with_script(
        "rules:\n  - model: \"primary-001\"\n    fault: hang\n    times: 1\n",
    );
    let lease_s = 3;
    let pool = TestPool::with_sim(
        PoolOptions {
            programmers: vec![TestProgrammer::free("001"), TestProgrammer::free("002")],
            request_timeout_s: 600,
            task_timeout_s: 600,
            queue_timeout_s: 600,
            task_lease_s: lease_s,
            ..PoolOptions::default()
        },
        sim,
    );
    pool.sample_repo();

    // The real 001 on a port of its own; the proxy on the port the configuration gives 001.
    let real_port = common::pool::free_port();
    let _real = pool.start_programmer_with_args("001", &["--port", &real_port.to_string()]);
    let upstream = ProgrammerClient::connect(format!("http://127.0.0.1:{real_port}"))
        .await
        .expect("connect to the real 001");
    let seen = Arc::new(Seen::default());
    let proxy = BreakingProxy {
        upstream,
        seen: seen.clone(),
    };
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<ProgrammerServer<BreakingProxy>>()
        .await;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", pool.ports["001"]))
        .await
        .expect("bind 001's configured port");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(ProgrammerServer::new(proxy))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    // 002 starts once the task runs on 001, and takes it when 001 loses it.
    let manager = pool.start_manager();
    let client = manager_client(&pool).await;
    wait_available(&client, 1).await;

    let request = common::pool::sample_dispatch("Add docstrings to all functions");
    let caller = client.clone();
    let task = tokio::spawn(async move { dispatch_collect(&caller, request).await });
    wait_until(Duration::from_secs(60), "the task sent to 001", || async {
        seen.executes.load(Ordering::SeqCst) > 0
    })
    .await;
    let _other = pool.start_programmer("002");
    let (events, result) = tokio::time::timeout(Duration::from_secs(120), task)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the task never ended; WatchTask calls so far: {}\nmanager:\n{}",
                seen.watch_calls.load(Ordering::SeqCst),
                manager.log_text()
            )
        })
        .expect("the caller's task");
    let log = manager.log_text();

    // Given up on 001 after the lease, and finished on 002.
    let reroutes = rerouted(&events);
    assert_eq!(reroutes.len(), 1, "{reroutes:?}\nmanager:\n{log}");
    assert_eq!(reroutes[0].from_programmer, "001");
    assert!(
        reroutes[0].reason.contains("its stream broke")
            && reroutes[0]
                .reason
                .contains(&format!("carrying nothing for {lease_s} s"))
            && reroutes[0].reason.contains("cannot be read back"),
        "{}",
        reroutes[0].reason
    );
    assert_eq!(
        state_of(&result),
        TaskState::Succeeded,
        "{result:?}\nmanager:\n{log}"
    );
    assert_eq!(reroutes[0].to_programmer, "002");
    assert_eq!(result.programmer_id, "002");

    // Followed again after growing pauses, not without end: 0, 50, 100, … 1,600 ms fill a 3 s
    // lease in 8 calls; a slower machine makes fewer.
    let calls = seen.watch_calls.load(Ordering::SeqCst);
    assert!((2..=9).contains(&calls), "{calls} WatchTask calls\n{log}");
    // And stopped on 001.
    assert!(
        seen.stops.load(Ordering::SeqCst) >= 1,
        "no StopTask reached 001\n{log}"
    );
}
