//! `pas dispatch` as a user runs it: the real binary against a scripted `pas.v1.ProgrammerPool`
//! server on 127.0.0.1 (port 0). The script is chosen by the task description, so each test
//! controls exactly which events, results and errors the command sees.

use pas::contract::v1::programmer_pool_server::{ProgrammerPool, ProgrammerPoolServer};
use pas::contract::v1::{
    Assigned, Attempt, CancelTaskRequest, CancelTaskResponse, DispatchRequest, ErrorClass,
    Failover, GetPoolStatusRequest, GetTaskRequest, Output, PoolStatus, Queued, Rerouted, Strategy,
    TaskEvent, TaskRecord, TaskResult, TaskState, task_event::Kind,
};
use std::pin::Pin;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{Notify, mpsc};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

const PAS: &str = env!("CARGO_BIN_EXE_pas");

const DIFF: &str = "diff --git a/a.py b/a.py\n--- a/a.py\n+++ b/a.py\n@@ -1 +1,2 @@\n+\"\"\"Docs.\"\"\"\n def f(): pass\n";

#[derive(Default)]
struct Recorded {
    requests: Vec<DispatchRequest>,
    cancels: Vec<String>,
}

#[derive(Clone, Default)]
struct FakePool {
    recorded: Arc<Mutex<Recorded>>,
    cancelled: Arc<Notify>,
}

fn event(task_id: &str, seq: u64, kind: Kind) -> Result<TaskEvent, Status> {
    Ok(TaskEvent {
        task_id: task_id.to_string(),
        seq,
        timestamp_ms: 1_700_000_000_000 + seq as i64,
        kind: Some(kind),
    })
}

fn assigned() -> Kind {
    Kind::Assigned(Assigned {
        programmer_id: "003".into(),
        llm: "ollama/qwen2.5-coder:7b-instruct".into(),
        using_backup: false,
        strategy: "least_loaded".into(),
        dispatch_attempt: 1,
    })
}

fn output(text: &str) -> Kind {
    Kind::Output(Output {
        text: text.into(),
        stream: "stdout".into(),
        attempt: 1,
    })
}

fn result(status: TaskState, error: ErrorClass, message: &str) -> Kind {
    let ok = status == TaskState::Succeeded;
    Kind::Result(TaskResult {
        status: status as i32,
        programmer_id: "003".into(),
        llm_used: "ollama/qwen2.5-coder:14b-instruct".into(),
        used_backup: true,
        files_changed: if ok { vec!["a.py".into()] } else { vec![] },
        diff: if ok { DIFF.into() } else { String::new() },
        branch: if ok {
            "pas/task-1".into()
        } else {
            String::new()
        },
        commit: if ok {
            "0123456789abcdef0123".into()
        } else {
            String::new()
        },
        base_commit: "fedcba9876543210fedc".into(),
        tokens_sent: 1200,
        tokens_received: 80,
        cost_usd: 0.0,
        duration_ms: 4200,
        error_class: error as i32,
        error_message: message.into(),
        attempts: vec![Attempt {
            number: 1,
            llm: "ollama/qwen2.5-coder:7b-instruct".into(),
            backup: false,
            error_class: ErrorClass::ApiError as i32,
            error_message: "litellm.APIConnectionError: connection refused".into(),
            duration_ms: 900,
            ..Default::default()
        }],
        dry_run: false,
    })
}

type EventStream = Pin<Box<dyn Stream<Item = Result<TaskEvent, Status>> + Send>>;

#[tonic::async_trait]
impl ProgrammerPool for FakePool {
    type DispatchStream = EventStream;

    async fn dispatch(
        &self,
        request: Request<DispatchRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let req = request.into_inner();
        self.recorded.lock().unwrap().requests.push(req.clone());
        let id = req.task_id.clone();
        let script = req.task_description.clone();
        match script.as_str() {
            "reject" => {
                return Err(Status::invalid_argument(
                    "files[0]: \"../x.py\" leaves the workspace",
                ));
            }
            "impossible" => {
                return Err(Status::failed_precondition(
                    "no programmer has capability \"gpu\"",
                ));
            }
            "full" => {
                return Err(Status::resource_exhausted(
                    "manager queue is full (100 tasks)",
                ));
            }
            _ => {}
        }
        let (tx, rx) = mpsc::channel(16);
        let cancelled = self.cancelled.clone();
        tokio::spawn(async move {
            let send = |seq, kind| {
                let tx = tx.clone();
                let id = id.clone();
                async move {
                    let _ = tx.send(event(&id, seq, kind)).await;
                }
            };
            match script.as_str() {
                "succeed" | "slow" => {
                    let pause = Duration::from_millis(if script == "slow" { 700 } else { 20 });
                    send(
                        1,
                        Kind::Queued(Queued {
                            position: 1,
                            queue: "manager".into(),
                            reason: "all 1 programmers with capability fast are busy".into(),
                        }),
                    )
                    .await;
                    send(2, assigned()).await;
                    tokio::time::sleep(pause).await;
                    send(3, output("Aider v0.86.2\nMain model: ollama/qwen")).await;
                    tokio::time::sleep(pause).await;
                    send(4, output("2.5-coder:7b-instruct\n")).await;
                    send(
                        5,
                        Kind::Failover(Failover {
                            from_llm: "ollama/qwen2.5-coder:7b-instruct".into(),
                            to_llm: "ollama/qwen2.5-coder:14b-instruct".into(),
                            reason: "api_error: connection refused".into(),
                            attempt: 2,
                            error_class: ErrorClass::ApiError as i32,
                        }),
                    )
                    .await;
                    tokio::time::sleep(pause).await;
                    send(
                        6,
                        Kind::Rerouted(Rerouted {
                            from_programmer: "003".into(),
                            to_programmer: "004".into(),
                            reason: "stream broke".into(),
                        }),
                    )
                    .await;
                    send(7, output("Applied edit to a.py\n")).await;
                    tokio::time::sleep(pause).await;
                    send(8, result(TaskState::Succeeded, ErrorClass::None, "")).await;
                }
                "fail" => {
                    send(1, assigned()).await;
                    send(2, output("litellm.APIError: boom\n")).await;
                    send(
                        3,
                        result(
                            TaskState::Failed,
                            ErrorClass::ApiError,
                            "every attempt failed: api_error",
                        ),
                    )
                    .await;
                }
                "timeout" => {
                    send(1, assigned()).await;
                    send(
                        2,
                        result(
                            TaskState::TimedOut,
                            ErrorClass::Deadline,
                            "deadline of 1s passed",
                        ),
                    )
                    .await;
                }
                "hang" => {
                    send(1, assigned()).await;
                    send(2, output("thinking...\n")).await;
                    cancelled.notified().await;
                    send(
                        3,
                        result(
                            TaskState::Cancelled,
                            ErrorClass::Cancelled,
                            "cancelled by the caller",
                        ),
                    )
                    .await;
                }
                "no-result" => {
                    send(1, assigned()).await;
                }
                other => {
                    let _ = tx
                        .send(Err(Status::internal(format!("no script {other:?}"))))
                        .await;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_pool_status(
        &self,
        _: Request<GetPoolStatusRequest>,
    ) -> Result<Response<PoolStatus>, Status> {
        Err(Status::unimplemented("not scripted"))
    }

    async fn cancel_task(
        &self,
        request: Request<CancelTaskRequest>,
    ) -> Result<Response<CancelTaskResponse>, Status> {
        let task_id = request.into_inner().task_id;
        self.recorded.lock().unwrap().cancels.push(task_id.clone());
        self.cancelled.notify_one();
        Ok(Response::new(CancelTaskResponse {
            task_id: task_id.clone(),
            cancelled: true,
            previous_state: TaskState::Running as i32,
            message: format!("task {task_id} is being cancelled"),
        }))
    }

    async fn get_task(&self, _: Request<GetTaskRequest>) -> Result<Response<TaskRecord>, Status> {
        Err(Status::unimplemented("not scripted"))
    }
}

/// Starts the fake manager on 127.0.0.1:0; returns it and its address.
async fn start_fake() -> (FakePool, String) {
    let fake = FakePool::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let service = ProgrammerPoolServer::new(fake.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(incoming),
    );
    (fake, addr)
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `pas dispatch` with `args`, stdout and stderr piped (so: plain mode).
async fn dispatch(addr: &str, args: &[&str]) -> Run {
    let out = tokio::process::Command::new(PAS)
        .arg("dispatch")
        .args(["--manager", addr])
        .args(args)
        .stdin(Stdio::null())
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("pas dispatch did not finish within 60s")
        .expect("cannot run pas");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_successful_task_streams_events_then_summary_and_diff() {
    let (fake, addr) = start_fake().await;
    let run = dispatch(
        &addr,
        &[
            "succeed",
            "--files",
            "a.py",
            "b.py",
            "--workspace",
            "demo",
            "--capability",
            "fast",
            "--prefer-free",
            "--strategy",
            "capability_match",
            "--run-id",
            "run-7",
            "--timeout",
            "120",
            "--base-ref",
            "main",
            "--task-id",
            "my-task",
        ],
    )
    .await;
    assert_eq!(
        run.code, 0,
        "stdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    let expected_in_order = [
        "==> queued: position 1 in the manager queue (all 1 programmers with capability fast are busy)",
        "==> assigned to programmer 003: ollama/qwen2.5-coder:7b-instruct [strategy least_loaded]",
        "Aider v0.86.2\nMain model: ollama/qwen2.5-coder:7b-instruct\n",
        "==> failover: ollama/qwen2.5-coder:7b-instruct → ollama/qwen2.5-coder:14b-instruct (attempt 2): api_error: connection refused",
        "==> rerouted: programmer 003 → 004: stream broke",
        "Applied edit to a.py\n",
        "── result ──\nstatus     succeeded\ntask       my-task\nprogrammer 003\nmodel      ollama/qwen2.5-coder:14b-instruct (backup)\nfiles      a.py\n",
        "duration   4.2s\nbranch     pas/task-1\ncommit     0123456789abcdef0123 (from fedcba987654)\n",
        "── diff ──\n",
        DIFF,
    ];
    let mut from = 0;
    for piece in expected_in_order {
        match run.stdout[from..].find(piece) {
            Some(at) => from += at + piece.len(),
            None => panic!("missing (or out of order) {piece:?} in:\n{}", run.stdout),
        }
    }
    assert!(
        !run.stdout.contains('\x1b'),
        "no colours when piped:\n{}",
        run.stdout
    );

    let recorded = fake.recorded.lock().unwrap();
    let req = &recorded.requests[0];
    assert_eq!(req.task_description, "succeed");
    assert_eq!(req.files, ["a.py", "b.py"]);
    assert_eq!(req.workspace, "demo");
    assert_eq!(req.capabilities, ["fast"]);
    assert_eq!(req.prefer_free, Some(true));
    assert_eq!(req.strategy, Strategy::CapabilityMatch as i32);
    assert_eq!(req.run_id, "run-7");
    assert_eq!(req.timeout_s, 120);
    assert_eq!(req.base_ref, "main");
    assert_eq!(req.task_id, "my-task");
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_and_timed_out_tasks_exit_1_with_the_error() {
    let (_fake, addr) = start_fake().await;
    let run = dispatch(&addr, &["fail", "--files", "a.py", "--workspace", "demo"]).await;
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("status     failed"), "{}", run.stdout);
    assert!(
        run.stdout
            .contains("error      api_error: every attempt failed: api_error"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("files      none changed"),
        "{}",
        run.stdout
    );
    assert!(!run.stdout.contains("── diff ──"), "{}", run.stdout);

    let run = dispatch(
        &addr,
        &["timeout", "--files", "a.py", "--workspace", "demo"],
    )
    .await;
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("status     timed_out"),
        "{}",
        run.stdout
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rejected_requests_exit_2_and_print_the_status_message() {
    let (_fake, addr) = start_fake().await;
    let run = dispatch(
        &addr,
        &["reject", "--files", "../x.py", "--workspace", "demo"],
    )
    .await;
    assert_eq!(run.code, 2, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stderr
            .contains("INVALID_ARGUMENT: files[0]: \"../x.py\" leaves the workspace"),
        "{}",
        run.stderr
    );
    let run = dispatch(
        &addr,
        &["impossible", "--workspace", "demo", "--capability", "gpu"],
    )
    .await;
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("FAILED_PRECONDITION"), "{}", run.stderr);
    let run = dispatch(&addr, &["full", "--workspace", "demo"]).await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("RESOURCE_EXHAUSTED: manager queue is full"),
        "{}",
        run.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_command_lines_exit_2_before_calling_anyone() {
    let (fake, addr) = start_fake().await;
    let run = dispatch(&addr, &["succeed", "--files", "a.py"]).await;
    assert_eq!(run.code, 2, "missing --workspace: {}", run.stderr);
    assert!(run.stderr.contains("--workspace"), "{}", run.stderr);
    let run = dispatch(
        &addr,
        &["succeed", "--workspace", "w", "--strategy", "fastest"],
    )
    .await;
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(fake.recorded.lock().unwrap().requests.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_manager_or_a_stream_without_result_exits_1() {
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = free.local_addr().unwrap().to_string();
    drop(free);
    let run = dispatch(&dead, &["succeed", "--workspace", "w"]).await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains(&dead), "{}", run.stderr);

    let (_fake, addr) = start_fake().await;
    let run = dispatch(&addr, &["no-result", "--workspace", "w"]).await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("without a result"), "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn json_mode_prints_one_object_per_event_then_the_result() {
    let (_fake, addr) = start_fake().await;
    let run = dispatch(
        &addr,
        &["succeed", "--workspace", "w", "--json", "--task-id", "j1"],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let values: Vec<serde_json::Value> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let types: Vec<&str> = values.iter().map(|v| v["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "queued", "assigned", "output", "output", "failover", "rerouted", "output", "result"
        ]
    );
    let seqs: Vec<u64> = values.iter().map(|v| v["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=8).collect::<Vec<u64>>());
    assert!(values.iter().all(|v| v["task_id"] == "j1"));
    let result = values.last().unwrap();
    assert_eq!(result["status"], "succeeded");
    assert_eq!(result["diff"], DIFF);
    assert_eq!(result["attempts"][0]["error_class"], "api_error");
    assert_eq!(values[4]["to_llm"], "ollama/qwen2.5-coder:14b-instruct");

    let run = dispatch(&addr, &["reject", "--workspace", "w", "--json"]).await;
    assert_eq!(run.code, 2);
    let error: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(error["type"], "error");
    assert_eq!(error["code"], "INVALID_ARGUMENT");
}

#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_cancels_the_task_on_the_server_and_exits_130() {
    let (fake, addr) = start_fake().await;
    let mut child = tokio::process::Command::new(PAS)
        .args([
            "dispatch",
            "--manager",
            &addr,
            "hang",
            "--workspace",
            "w",
            "--task-id",
            "c1",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = String::new();
    // Wait until the task runs: its output has arrived.
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            seen.push_str(&line);
            seen.push('\n');
            if line == "thinking..." {
                return;
            }
        }
        panic!("stream ended early:\n{seen}");
    })
    .await
    .unwrap_or_else(|_| panic!("no output within 30s:\n{seen}"));
    let pid = nix::unistd::Pid::from_raw(child.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    while let Some(line) = lines.next_line().await.unwrap() {
        seen.push_str(&line);
        seen.push('\n');
    }
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(130), "{seen}");
    assert_eq!(fake.recorded.lock().unwrap().cancels, ["c1"]);
    assert!(seen.contains("==> cancelling task c1"), "{seen}");
    assert!(seen.contains("status     cancelled"), "{seen}");
}

/// Runs `pas dispatch` on a pseudo-terminal and returns everything it drew.
fn dispatch_on_pty(addr: &str, args: &[&str]) -> (i32, String) {
    use nix::pty::{Winsize, openpty};
    use std::io::Read;
    let size = Winsize {
        ws_row: 40,
        ws_col: 120,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = openpty(Some(&size), None).unwrap();
    let slave = std::fs::File::from(pty.slave);
    let mut child = std::process::Command::new(PAS)
        .arg("dispatch")
        .args(["--manager", addr])
        .args(args)
        .env("TERM", "xterm-256color")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave)
        .spawn()
        .unwrap();
    // The slave's copies now live in the child only, so reading ends (EIO) when it exits.
    let mut master = std::fs::File::from(pty.master);
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match master.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => all.extend_from_slice(&buf[..n]),
            }
        }
        String::from_utf8_lossy(&all).into_owned()
    });
    let status = child.wait().unwrap();
    let drawn = reader.join().unwrap();
    (status.code().unwrap_or(-1), drawn)
}

#[tokio::test(flavor = "multi_thread")]
async fn on_a_terminal_a_spinner_shows_the_phase_and_elapsed_time() {
    let (_fake, addr) = start_fake().await;
    let drawn = tokio::task::spawn_blocking(move || {
        dispatch_on_pty(&addr, &["slow", "--files", "a.py", "--workspace", "demo"])
    });
    let (code, drawn) = tokio::time::timeout(Duration::from_secs(60), drawn)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(code, 0, "{drawn}");
    // The spinner line names the phase and counts seconds while the task runs (~3 s).
    assert!(
        drawn.contains("running on 003 · ollama/qwen2.5-coder:7b-instruct"),
        "{drawn:?}"
    );
    assert!(
        drawn.contains("retrying on ollama/qwen2.5-coder:14b-instruct"),
        "{drawn:?}"
    );
    let elapsed: Vec<&str> = ["[0s]", "[1s]", "[2s]"]
        .into_iter()
        .filter(|s| drawn.contains(*s))
        .collect();
    assert!(
        elapsed.len() >= 2,
        "elapsed time not ticking: {elapsed:?} in {drawn:?}"
    );
    // It is redrawn in place (cursor movement / line clearing), not printed line after line.
    assert!(
        drawn.contains("\x1b[2K") || drawn.contains("\r"),
        "{drawn:?}"
    );
    // Output lines are printed whole above the spinner, in order; the summary is coloured.
    let a = drawn
        .find("Main model: ollama/qwen2.5-coder:7b-instruct")
        .expect("joined output line");
    let b = drawn
        .find("Applied edit to a.py")
        .expect("last output line");
    assert!(a < b);
    assert!(drawn.contains("\x1b["), "colours on a terminal");
    assert!(drawn.contains("── result ──"), "{drawn:?}");
    assert!(drawn.contains("+\"\"\"Docs.\"\"\""), "{drawn:?}");
}
