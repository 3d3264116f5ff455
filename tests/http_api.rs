//! The manager's HTTP/JSON API (`/v1/…`) end to end, over real HTTP against real processes: every
//! route, the protobuf JSON mapping (compared with what the gRPC calls return), server-sent events
//! resumed with `Last-Event-ID` after a dropped connection (no event lost or repeated, the task
//! not cancelled by the drop), keep-alive comments, and the error mapping (400 naming the field,
//! 401, 403, 404, 409, 429 with Retry-After) with the same messages as gRPC.
//! Real `pas manager` / `pas programmer`, real aider, `pas llm-sim`.

use crate::common;

use common::pool::{
    PoolOptions, TestPool, TestProgrammer, manager_client, pool_status, sample_dispatch,
    wait_reported,
};
use common::secure::{self, Secured, with_token};
use common::sse::{Item, Reader};
use pas::contract::v1::{
    DispatchRequest, GetTaskRequest, ListTasksRequest, TaskState, WatchTaskRequest,
};
use pas::manager::http::json::to_json;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;

/// How long one real task may take on a loaded 2-core machine.
const TASK_LIMIT: Duration = Duration::from_secs(240);
/// How long a quick answer (an error, a snapshot, a heartbeat) may take.
const QUICK: Duration = Duration::from_secs(30);

/// The sample task as the JSON body of `POST /v1/tasks`.
fn task_body(task_id: &str) -> Value {
    json!({
        "taskId": task_id,
        "taskDescription": "Add docstrings to all functions",
        "files": ["src/module.py"],
        "workspace": "sample",
        "runId": "run-http",
    })
}

/// The task events (data as JSON) of SSE `items`, checking that each `id:` is its seq.
fn task_events(items: &[Item]) -> Vec<Value> {
    items
        .iter()
        .map(|item| {
            let Item::Event { id, name, .. } = item else {
                panic!("not an event: {item:?}")
            };
            assert_eq!(name, "message", "{item:?}");
            let event = item.json();
            assert_eq!(
                id.as_deref(),
                event["seq"].as_str(),
                "id: is the event's seq: {item:?}"
            );
            event
        })
        .collect()
}

/// The seqs of `events`, as numbers.
fn seqs(events: &[Value]) -> Vec<u64> {
    events
        .iter()
        .map(|e| e["seq"].as_str().expect("seq").parse().expect("a number"))
        .collect()
}

/// The result status of the last event (which must carry the result).
fn final_status(events: &[Value]) -> String {
    let last = events.last().expect("events");
    last["result"]["status"]
        .as_str()
        .unwrap_or_else(|| panic!("the last event is no result: {last}"))
        .to_string()
}

/// Sends `request`; the manager must answer it (with any status).
async fn send(request: reqwest::RequestBuilder) -> reqwest::Response {
    request.send().await.expect("the manager answers")
}

/// Sends `request` and reads its JSON answer.
async fn json_of(request: reqwest::RequestBuilder) -> Value {
    send(request).await.json().await.expect("a JSON body")
}

/// Asserts `response` is the JSON error `{code, message}` with `status`; returns the message.
async fn error_of(response: reqwest::Response, status: StatusCode, code: i64) -> String {
    assert_eq!(response.status(), status, "{response:?}");
    let body: Value = response.json().await.expect("a JSON error body");
    assert_eq!(body["code"], code, "{body}");
    body["message"].as_str().expect("message").to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_route_answers_like_the_grpc_service() {
    let pool = TestPool::new(PoolOptions {
        programmers: vec![TestProgrammer::free("001")],
        request_timeout_s: 300,
        task_timeout_s: 300,
        ..PoolOptions::default()
    });
    // One task per caller at a time: the 429 below.
    pool.append_config("limits:\n  per_caller_max_tasks: 1\n");
    pool.sample_repo();
    let _p = pool.start_all_programmers();
    let m = pool.start_manager();
    let c = manager_client(&pool).await;
    // The programmer's own report must be in too: the snapshots below are compared whole.
    wait_reported(&c, 1).await;
    let http = reqwest::Client::new();
    let url = |path: &str| format!("{}{path}", pool.manager_url());

    // --- GET /v1/pool: GetPoolStatus in grpcurl's JSON ---
    let got: Value = json_of(http.get(url("/v1/pool"))).await;
    assert_eq!(got["poolSize"], 1, "{got}");
    assert_eq!(
        got["programmers"][0]["state"], "PROGRAMMER_STATE_AVAILABLE",
        "{got}"
    );
    assert_eq!(
        got,
        to_json(&pool_status(&c).await),
        "same as GetPoolStatus"
    );

    // --- GET /v1/pool/events: a snapshot now, more as the pool changes ---
    let mut pool_events = Reader::new(send(http.get(url("/v1/pool/events"))).await);
    let first = pool_events
        .next_event(QUICK)
        .await
        .expect("a first snapshot");
    assert_eq!(first.json()["poolSize"], 1);

    // --- POST /v1/tasks: Dispatch, its events as SSE ---
    let response = send(http.post(url("/v1/tasks")).json(&task_body("http-1"))).await;
    assert_eq!(response.status(), StatusCode::OK);
    let events = task_events(&Reader::new(response).events_to_end(TASK_LIMIT).await);
    let n = events.len() as u64;
    assert_eq!(seqs(&events), (1..=n).collect::<Vec<_>>(), "{events:#?}");
    assert!(events.iter().all(|e| e["taskId"] == "http-1"));
    assert!(
        events
            .iter()
            .any(|e| e["assigned"]["programmerId"] == "001"),
        "{events:#?}"
    );
    assert!(events.iter().any(|e| e["output"]["text"].is_string()));
    assert_eq!(final_status(&events), "TASK_STATE_SUCCEEDED", "{events:#?}");
    // The pool stream showed the task in flight on 001 while it ran.
    loop {
        let snapshot = pool_events
            .next_event(QUICK)
            .await
            .expect("the pool stream goes on")
            .json();
        if snapshot["programmers"][0]["inFlight"] == 1 {
            break;
        }
    }

    // --- GET /v1/tasks/{id}: GetTask ---
    let record: Value = json_of(http.get(url("/v1/tasks/http-1"))).await;
    assert_eq!(record["state"], "TASK_STATE_SUCCEEDED", "{record}");
    assert!(
        record["result"]["diff"]
            .as_str()
            .is_some_and(|d| d.contains("src/module.py")),
        "{record}"
    );
    let grpc = c
        .clone()
        .get_task(GetTaskRequest {
            task_id: "http-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(record, to_json(&grpc), "same as GetTask");

    // --- GET /v1/tasks: ListTasks with its fields as query parameters ---
    let listed: Value = json_of(http.get(url(
        "/v1/tasks?runId=run-http&states=TASK_STATE_SUCCEEDED&states=TASK_STATE_FAILED&pageSize=10",
    )))
    .await;
    assert_eq!(listed["tasks"][0]["taskId"], "http-1", "{listed}");
    let grpc = c
        .clone()
        .list_tasks(ListTasksRequest {
            run_id: "run-http".into(),
            states: vec![TaskState::Succeeded as i32, TaskState::Failed as i32],
            page_size: 10,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed, to_json(&grpc), "same as ListTasks");
    let none: Value =
        json_of(http.get(url("/v1/tasks?run_id=run-http&states=TASK_STATE_CANCELLED"))).await;
    assert_eq!(none, json!({}), "no tasks: defaults are left out");

    // --- GET /v1/tasks/{id}/events: the same events replayed; Last-Event-ID continues ---
    let replay = Reader::new(send(http.get(url("/v1/tasks/http-1/events"))).await)
        .events_to_end(QUICK)
        .await;
    assert_eq!(
        task_events(&replay),
        events,
        "the replay is the dispatch stream"
    );
    let after_2 = Reader::new(
        send(
            http.get(url("/v1/tasks/http-1/events"))
                .header("Last-Event-ID", "2"),
        )
        .await,
    )
    .events_to_end(QUICK)
    .await;
    assert_eq!(task_events(&after_2), events[2..].to_vec());
    // Resumed after the result, as an EventSource does once the stream ended: 204 (stop
    // reconnecting), not a stream left open with nothing to send.
    let last_seq = seqs(&events).last().copied().expect("events").to_string();
    let after_result = send(
        http.get(url("/v1/tasks/http-1/events"))
            .header("Last-Event-ID", &last_seq),
    )
    .await;
    assert_eq!(
        after_result.status(),
        StatusCode::NO_CONTENT,
        "{after_result:?}"
    );
    // WatchTask from the result on ends at once, with nothing sent.
    let mut watch = c
        .clone()
        .watch_task(WatchTaskRequest {
            task_id: "http-1".into(),
            after_seq: last_seq.parse().unwrap(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(QUICK, watch.message())
        .await
        .expect("the stream ends");
    assert!(matches!(first, Ok(None)), "{first:?}");

    // --- a dropped connection: the task goes on, Last-Event-ID resumes with nothing lost ---
    pool.sim
        .set_script("default:\n  chunk_delay_ms: 40\n  chunk_chars: 4\n")
        .await;
    let response = send(http.post(url("/v1/tasks")).json(&task_body("http-2"))).await;
    let mut reader = Reader::new(response);
    let mut seen = Vec::new();
    while !seen.iter().any(|e: &Value| e["output"].is_object()) {
        let item = reader
            .next_event(TASK_LIMIT)
            .await
            .expect("events until output");
        seen.extend(task_events(&[item]));
    }
    assert!(seen.iter().all(|e| e["result"].is_null()), "{seen:#?}");
    drop(reader); // the connection closes mid-task
    let last_id = seen.last().unwrap()["seq"].as_str().unwrap().to_string();
    let rest = Reader::new(
        send(
            http.get(url("/v1/tasks/http-2/events"))
                .header("Last-Event-ID", &last_id),
        )
        .await,
    )
    .events_to_end(TASK_LIMIT)
    .await;
    seen.extend(task_events(&rest));
    let n = seen.len() as u64;
    assert_eq!(
        seqs(&seen),
        (1..=n).collect::<Vec<_>>(),
        "none lost, none twice"
    );
    assert_eq!(
        final_status(&seen),
        "TASK_STATE_SUCCEEDED",
        "the drop cancelled nothing"
    );
    let replay = Reader::new(send(http.get(url("/v1/tasks/http-2/events"))).await)
        .events_to_end(QUICK)
        .await;
    assert_eq!(task_events(&replay), seen, "resumed = the whole stream");

    // --- a running task: heartbeats, the per-caller limit (429), cancel ---
    pool.sim.set_script("default:\n  fault: hang\n").await;
    let response = send(http.post(url("/v1/tasks")).json(&task_body("http-3"))).await;
    let mut running = Reader::new(response);
    loop {
        let event = running.next_event(TASK_LIMIT).await.expect("events").json();
        if event["assigned"].is_object() {
            break;
        }
    }
    let refused = send(http.post(url("/v1/tasks")).json(&task_body("http-4"))).await;
    assert_eq!(refused.headers()["retry-after"], "1", "{refused:?}");
    let message = error_of(refused, StatusCode::TOO_MANY_REQUESTS, 8).await;
    assert!(
        message.starts_with("limits.per_caller_max_tasks: "),
        "{message}"
    );
    let mut watch = Reader::new(send(http.get(url("/v1/tasks/http-3/events"))).await);
    loop {
        if let Item::Comment(c) = watch.next_within(QUICK).await.expect("the watch goes on") {
            if c.starts_with("heartbeat latest_seq=") {
                break;
            }
        }
    }
    let cancelled: Value = json_of(http.post(url("/v1/tasks/http-3:cancel"))).await;
    assert_eq!(cancelled["cancelled"], true, "{cancelled}");
    assert_eq!(
        cancelled["previousState"], "TASK_STATE_RUNNING",
        "{cancelled}"
    );
    let rest = task_events(&running.events_to_end(TASK_LIMIT).await);
    assert_eq!(final_status(&rest), "TASK_STATE_CANCELLED", "{rest:#?}");
    let finished: Value = json_of(http.post(url("/v1/tasks/http-1:cancel"))).await;
    assert_eq!(
        finished["cancelled"],
        Value::Null,
        "false is left out: {finished}"
    );
    assert_eq!(
        finished["previousState"], "TASK_STATE_SUCCEEDED",
        "{finished}"
    );

    // --- errors: the gRPC code's HTTP status, the gRPC message ---
    let post = |body: String| {
        http.post(url("/v1/tasks"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let no_description = json!({"files": ["src/module.py"], "workspace": "sample"});
    let message = error_of(
        post(no_description.to_string()).await.unwrap(),
        StatusCode::BAD_REQUEST,
        3,
    )
    .await;
    let grpc = c
        .clone()
        .dispatch(DispatchRequest {
            task_description: String::new(),
            ..sample_dispatch("")
        })
        .await
        .expect_err("refused");
    assert_eq!(message, grpc.message(), "the same message as gRPC");
    assert!(message.starts_with("task_description"), "{message}");
    let message = error_of(
        post(json!({"taskDescription": "x", "timeoutS": "soon"}).to_string())
            .await
            .unwrap(),
        StatusCode::BAD_REQUEST,
        3,
    )
    .await;
    assert!(message.starts_with("timeoutS: "), "{message}");
    let message = error_of(
        post("not json".into()).await.unwrap(),
        StatusCode::BAD_REQUEST,
        3,
    )
    .await;
    assert!(message.starts_with("body: "), "{message}");
    let mut other = task_body("http-1");
    other["taskDescription"] = json!("Something else");
    let message = error_of(
        post(other.to_string()).await.unwrap(),
        StatusCode::CONFLICT,
        6,
    )
    .await;
    assert!(message.starts_with("task_id: "), "{message}");
    let message = error_of(
        send(http.get(url("/v1/tasks/no-such-task"))).await,
        StatusCode::NOT_FOUND,
        5,
    )
    .await;
    assert_eq!(message, "task_id: no task \"no-such-task\"");
    let message = error_of(
        send(http.get(url("/v1/tasks?pageSize=5000"))).await,
        StatusCode::BAD_REQUEST,
        3,
    )
    .await;
    assert!(message.starts_with("page_size: "), "{message}");
    let message = error_of(
        send(http.get(url("/v1/tasks?colour=red"))).await,
        StatusCode::BAD_REQUEST,
        3,
    )
    .await;
    assert!(message.starts_with("colour: "), "{message}");
    let message = error_of(
        send(
            http.get(url("/v1/tasks/http-1/events"))
                .header("Last-Event-ID", "yesterday"),
        )
        .await,
        StatusCode::BAD_REQUEST,
        3,
    )
    .await;
    assert!(message.starts_with("Last-Event-ID: "), "{message}");
    error_of(
        send(http.post(url("/v1/tasks/http-1:frobnicate"))).await,
        StatusCode::NOT_FOUND,
        5,
    )
    .await;

    // --- the routes that were there keep working; the dashboard is served ---
    for path in ["/health", "/programmer_pool/status", "/metrics", "/"] {
        let r = send(http.get(url(path))).await;
        assert_eq!(r.status(), StatusCode::OK, "{path}");
    }
    let page = send(http.get(url("/"))).await.text().await.unwrap();
    assert!(page.contains("/dashboard/app.js"), "{page}");
    drop(m);
}

/// A secured pool (TLS, tokens): the HTTP routes need the same roles as their gRPC methods, see
/// only the caller's own tasks, and answer 401 / 403 with the gRPC messages.
#[tokio::test(flavor = "multi_thread")]
async fn http_routes_authenticate_like_grpc() {
    let pool = TestPool::new(PoolOptions {
        programmers: vec![TestProgrammer::free("001")],
        runs_aider: false,
        ..PoolOptions::default()
    });
    pool.sample_repo();
    let s: Secured = secure::secure(&pool, "[]");
    let _p = pool.start_all_programmers();
    let m = pool.start_manager();
    let https = secure::https_client(&s.files("client"));
    let url = |path: &str| format!("https://127.0.0.1:{}{path}", pool.manager_port);
    let get = |path: &str, token: Option<&str>| {
        let mut r = https.get(url(path));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r
    };
    // Available over mTLS, seen through HTTP with a read token.
    common::pool::wait_until(QUICK, "programmer 001 available", || async {
        match get("/v1/pool", Some(&s.read)).send().await {
            Ok(r) if r.status().is_success() => {
                r.json::<Value>().await.is_ok_and(|v| v["available"] == 1)
            }
            _ => false,
        }
    })
    .await;

    // No token: 401 with the gRPC message; the dashboard's page itself is open.
    let refused = send(get("/v1/pool", None)).await;
    assert_eq!(refused.headers()["www-authenticate"], "Bearer");
    let message = error_of(refused, StatusCode::UNAUTHORIZED, 16).await;
    assert!(message.starts_with("missing bearer token"), "{message}");
    error_of(
        send(get("/v1/tasks", Some("pas_wrong"))).await,
        StatusCode::UNAUTHORIZED,
        16,
    )
    .await;
    assert_eq!(send(get("/", None)).await.status(), StatusCode::OK);

    // A read token cannot dispatch (403, naming the method and the roles).
    let mut body = task_body("secure-1");
    body["dryRun"] = json!(true);
    let message = error_of(
        send(
            https
                .post(url("/v1/tasks"))
                .bearer_auth(&s.read)
                .json(&body),
        )
        .await,
        StatusCode::FORBIDDEN,
        7,
    )
    .await;
    assert_eq!(
        message,
        "/pas.v1.ProgrammerPool/Dispatch: token \"watcher\" has role read; this needs dispatch"
    );

    // The dispatch token can; its task is its own.
    let response = send(
        https
            .post(url("/v1/tasks"))
            .bearer_auth(&s.dispatch)
            .json(&body),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let events = task_events(&Reader::new(response).events_to_end(TASK_LIMIT).await);
    assert_eq!(final_status(&events), "TASK_STATE_SUCCEEDED", "{events:#?}");
    let record: Value = json_of(get("/v1/tasks/secure-1", Some(&s.dispatch))).await;
    assert_eq!(record["owner"], "director", "{record}");
    let message = error_of(
        send(get("/v1/tasks/secure-1", Some(&s.other))).await,
        StatusCode::FORBIDDEN,
        7,
    )
    .await;
    let grpc_client = pas::contract::v1::programmer_pool_client::ProgrammerPoolClient::new(
        secure::tls_channel(pool.manager_port, &s.files("client"), false)
            .await
            .unwrap(),
    );
    let grpc = grpc_client
        .clone()
        .get_task(with_token(
            GetTaskRequest {
                task_id: "secure-1".into(),
            },
            &s.other,
        ))
        .await
        .expect_err("another caller's task");
    assert_eq!(message, grpc.message(), "the same message as gRPC");
    let theirs: Value = json_of(get("/v1/tasks", Some(&s.other))).await;
    assert_eq!(theirs, json!({}), "another caller lists none of it");
    let all: Value = json_of(get("/v1/tasks", Some(&s.admin))).await;
    assert_eq!(
        all["tasks"][0]["taskId"], "secure-1",
        "admins see all: {all}"
    );
    let message = error_of(
        send(
            https
                .post(url("/v1/tasks/secure-1:cancel"))
                .bearer_auth(&s.other),
        )
        .await,
        StatusCode::FORBIDDEN,
        7,
    )
    .await;
    assert!(message.starts_with("task_id: "), "{message}");

    // No token reached the log.
    let log = m.log_text();
    for token in s.tokens() {
        assert!(!log.contains(token), "a token in the manager log");
    }
}
