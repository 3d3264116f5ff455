//! `pas status` with the real binary against a stand-in manager on 127.0.0.1:0 that serves
//! `GetPoolStatus` (gRPC) and `/programmer_pool/status` (HTTP JSON) on one port, as the manager does.

use pas::contract::v1::programmer_pool_server::{ProgrammerPool, ProgrammerPoolServer};
use pas::contract::v1::{
    Alert, Budget, CancelTaskRequest, CancelTaskResponse, CircuitState, DispatchRequest,
    GetPoolStatusRequest, GetTaskRequest, PoolStatus, ProgrammerState, ProgrammerSummary,
    TaskEvent, TaskRecord,
};
use std::pin::Pin;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

const PAS: &str = env!("CARGO_BIN_EXE_pas");

/// Answers a fixed pool whose 002 has its breaker open; counts the calls.
#[derive(Clone, Default)]
struct FakePool {
    calls: Arc<AtomicU32>,
}

fn pool_status(calls: u32) -> PoolStatus {
    let programmer = |id: &str, port, open: bool| ProgrammerSummary {
        id: id.into(),
        port,
        primary_llm: "ollama/qwen2.5-coder:7b-instruct".into(),
        backup_llm: "ollama/qwen2.5-coder:14b-instruct".into(),
        capabilities: vec!["fast".into()],
        state: ProgrammerState::Available as i32,
        queue_depth: if open { 2 } else { 0 },
        in_flight: 1,
        circuit_state: if open {
            CircuitState::Open
        } else {
            CircuitState::Closed
        } as i32,
        using_backup: open,
        current_llm: if open {
            "ollama/qwen2.5-coder:14b-instruct"
        } else {
            "ollama/qwen2.5-coder:7b-instruct"
        }
        .into(),
        completed: 10 + u64::from(calls),
        failed: 1,
        paid: false,
    };
    PoolStatus {
        pool_size: 2,
        available: 2,
        unavailable: 0,
        using_backup: 1,
        total_queue_depth: 2,
        programmers: vec![
            programmer("001", 6151, false),
            programmer("002", 6152, true),
        ],
        budget: Some(Budget {
            day: "2026-11-24".into(),
            spent_usd: 12.5,
            reserved_usd: 2.5,
            limit_usd: 50.0,
            remaining_usd: 35.0,
            alert_threshold_usd: 40.0,
        }),
        alerts: vec![Alert {
            kind: "high_backup_usage".into(),
            message: "1 programmers are on their backup LLM".into(),
            since_ms: 1_795_000_000_000,
        }],
        manager_queue_depth: 0,
        manager_queue_capacity: 500,
        strategy: "least_loaded".into(),
        llm_stats: Vec::new(),
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<TaskEvent, Status>> + Send>>;

#[tonic::async_trait]
impl ProgrammerPool for FakePool {
    type DispatchStream = EventStream;

    async fn dispatch(&self, _: Request<DispatchRequest>) -> Result<Response<EventStream>, Status> {
        Err(Status::unimplemented("not scripted"))
    }

    async fn get_pool_status(
        &self,
        _: Request<GetPoolStatusRequest>,
    ) -> Result<Response<PoolStatus>, Status> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(Response::new(pool_status(n)))
    }

    async fn cancel_task(
        &self,
        _: Request<CancelTaskRequest>,
    ) -> Result<Response<CancelTaskResponse>, Status> {
        Err(Status::unimplemented("not scripted"))
    }

    async fn get_task(&self, _: Request<GetTaskRequest>) -> Result<Response<TaskRecord>, Status> {
        Err(Status::unimplemented("not scripted"))
    }
}

async fn start_fake() -> (FakePool, String) {
    let fake = FakePool::default();
    let listener = pas::serve::bind("127.0.0.1", 0).await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let calls = fake.calls.clone();
    let router = tonic::service::Routes::new(ProgrammerPoolServer::new(fake.clone()))
        .into_axum_router()
        .route(
            "/programmer_pool/status",
            axum::routing::get(move || {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    axum::Json(serde_json::json!({
                        "pool_size": 2, "available": 2, "calls": n,
                        "programmers": [{"id": "001"}, {"id": "002"}],
                    }))
                }
            }),
        );
    tokio::spawn(pas::serve::serve(listener, router, std::future::pending()));
    (fake, addr)
}

async fn status(args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(PAS)
        .arg("status")
        .args(args)
        .stdin(Stdio::null())
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), out)
        .await
        .unwrap()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_table_shows_programmers_budget_and_alerts() {
    let (_fake, addr) = start_fake().await;
    let (code, out, err) = status(&["--manager", &addr]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("Pool: 2 of 2 programmers available, 1 on backup LLM, queue 2 (manager 0/500), strategy least_loaded\n"),
        "{out}"
    );
    let row = out.lines().find(|l| l.contains(" 002 ")).unwrap();
    for cell in [
        "6152",
        "available",
        "ollama/qwen2.5-coder:14b-instruct (backup)",
        "open",
        " 2 ",
        " 10 ",
        " 1 ",
    ] {
        assert!(row.contains(cell), "{cell:?} not in {row}");
    }
    let row = out.lines().find(|l| l.contains(" 001 ")).unwrap();
    assert!(
        row.contains("ollama/qwen2.5-coder:7b-instruct (primary)") && row.contains("closed"),
        "{row}"
    );
    assert!(out.contains("Budget 2026-11-24: $12.50 spent + $2.50 reserved of $50.00 ($35.00 left; alert at $40.00)"), "{out}");
    assert!(
        out.contains("  ! high_backup_usage: 1 programmers are on their backup LLM"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn json_prints_the_managers_http_document() {
    let (_fake, addr) = start_fake().await;
    let (code, out, err) = status(&["--manager", &addr, "--json"]).await;
    assert_eq!(code, 0, "{err}");
    let value: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(value["pool_size"], 2);
    assert_eq!(value["programmers"][1]["id"], "002");
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_refreshes_until_interrupted() {
    let (fake, addr) = start_fake().await;
    let child = tokio::process::Command::new(PAS)
        .args(["status", "--manager", &addr, "--watch", "0.3"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    let frames = text.matches("Pool: 2 of 2").count();
    assert!(frames >= 3, "{frames} frames:\n{text}");
    assert!(fake.calls.load(Ordering::SeqCst) >= 3);
    // Each frame is fresh: the counters move between frames.
    assert!(text.contains(" 10 ") && text.contains(" 11 "), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_manager_is_an_error() {
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = free.local_addr().unwrap().to_string();
    drop(free);
    let (code, _, err) = status(&["--manager", &dead]).await;
    assert_eq!(code, 1);
    assert!(err.contains(&dead) && err.contains("pas up"), "{err}");
    let (code, _, err) = status(&["--manager", &dead, "--json"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("/programmer_pool/status"), "{err}");
}
