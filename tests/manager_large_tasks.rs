//! A manager serving tasks larger than one message or one log: the store is written by the real
//! `TaskStore` (as a previous manager process would leave it), then served by the real
//! `pas manager` to a tonic client with its default limits.
//!
//! - WatchTask on a finished task with more events than a task log keeps in memory
//!   (`MAX_RETAINED`): the manager reads them back from its journal a page at a time, so a caller
//!   re-attaching from seq 0, or from any seq, gets every event once, in order, to the result.
//! - ListTasks over tasks whose results carry large diffs: each page stays under the 4 MiB a
//!   gRPC client reads by default, and every task is listed once.

use crate::common;

use common::pool::{PoolOptions, TestPool, collect_events, manager_client, sample_dispatch};
use pas::contract::v1::programmer_pool_client::ProgrammerPoolClient;
use pas::contract::v1::task_event::Kind;
use pas::contract::v1::{
    GetTaskRequest, ListTasksRequest, Output, TaskEvent, TaskResult, TaskState, WatchTaskRequest,
};
use pas::manager::store::{NewTask, TaskStore};
use pas::task_events::{MAX_RETAINED, REPLAY_PAGE};
use tonic::transport::Channel;

const TASK: &str = "long-1";

/// Output chunks past what a log keeps in memory, and past a few replay pages.
const OUTPUTS: u64 = (MAX_RETAINED + 3 * REPLAY_PAGE + 11) as u64;

fn output(seq: u64) -> TaskEvent {
    TaskEvent {
        task_id: TASK.into(),
        seq,
        timestamp_ms: 1_700_000_000_000 + i64::try_from(seq).unwrap(),
        kind: Some(Kind::Output(Output {
            text: format!("chunk {seq}\n"),
            stream: "stdout".into(),
            attempt: 1,
        })),
    }
}

/// Writes a finished task of `OUTPUTS` output chunks and a result into the manager's store.
async fn write_long_task(pool: &TestPool) {
    let store = TaskStore::open(pool.data_dir.join("tasks.sqlite")).expect("open the store");
    let request = sample_dispatch("a task that talked a lot");
    store
        .insert(&NewTask::from_request(TASK, &request))
        .await
        .expect("insert");
    for seq in 1..=OUTPUTS {
        store
            .append_event(TASK, &output(seq), seq)
            .await
            .expect("journal an output");
    }
    let result = TaskEvent {
        task_id: TASK.into(),
        seq: OUTPUTS + 1,
        timestamp_ms: 1_700_000_100_000,
        kind: Some(Kind::Result(Box::new(TaskResult {
            status: TaskState::Succeeded as i32,
            programmer_id: "001".into(),
            ..Default::default()
        }))),
    };
    store
        .append_event(TASK, &result, OUTPUTS + 1)
        .await
        .expect("journal the result");
}

async fn watch(
    c: &ProgrammerPoolClient<Channel>,
    after_seq: u64,
) -> Result<tonic::Streaming<TaskEvent>, tonic::Status> {
    let request = WatchTaskRequest {
        task_id: TASK.into(),
        after_seq,
    };
    Ok(c.clone().watch_task(request).await?.into_inner())
}

#[tokio::test]
async fn a_finished_task_of_more_events_than_a_log_keeps_is_replayed_whole() {
    let pool = TestPool::new(PoolOptions::default());
    write_long_task(&pool).await;
    let _manager = pool.start_manager();
    let c = manager_client(&pool).await;

    let record = c
        .clone()
        .get_task(GetTaskRequest {
            task_id: TASK.into(),
        })
        .await
        .expect("GetTask")
        .into_inner();
    assert_eq!(record.state(), TaskState::Succeeded);
    assert_eq!(record.last_seq, OUTPUTS + 1);

    // From the start: every event once, in order, as journaled (collect_events checks that seq
    // runs 1..n and that the one result is last).
    let (events, result) = collect_events(watch(&c, 0).await.expect("WatchTask from 0")).await;
    assert_eq!(events.len() as u64, OUTPUTS + 1);
    assert_eq!(result.status, TaskState::Succeeded as i32);
    for (event, seq) in events.iter().zip(1..=OUTPUTS) {
        assert_eq!(event, &output(seq), "event {seq} as journaled");
    }

    // From any point: what comes after it, across page boundaries.
    for after in [1, REPLAY_PAGE as u64, OUTPUTS - 3, OUTPUTS] {
        let mut stream = watch(&c, after).await.expect("WatchTask");
        let mut seqs = Vec::new();
        while let Some(event) = stream.message().await.expect("stream") {
            seqs.push(event.seq);
        }
        assert_eq!(
            seqs,
            (after + 1..=OUTPUTS + 1).collect::<Vec<_>>(),
            "after {after}"
        );
    }
    let ahead = watch(&c, OUTPUTS + 2)
        .await
        .expect_err("past the last event");
    assert_eq!(ahead.code(), tonic::Code::OutOfRange, "{ahead:?}");
}

#[tokio::test]
async fn tasks_with_large_results_are_listed_in_pages_a_client_can_read() {
    let pool = TestPool::new(PoolOptions::default());
    let ids: Vec<String> = (0..8).map(|i| format!("big-{i}")).collect();
    {
        let store = TaskStore::open(pool.data_dir.join("tasks.sqlite")).expect("open the store");
        for id in &ids {
            let request = sample_dispatch("regenerate the fixtures");
            store
                .insert(&NewTask::from_request(id, &request))
                .await
                .expect("insert");
            // A diff just under the 1 MiB a programmer puts in a result.
            let result = TaskResult {
                status: TaskState::Succeeded as i32,
                programmer_id: "001".into(),
                diff: "+a generated line of the fixture\n".repeat(30_000),
                ..Default::default()
            };
            assert!(store.finish(id, &result).await.expect("finish"));
        }
    }
    let _manager = pool.start_manager();
    let c = manager_client(&pool).await;
    let (mut token, mut listed, mut pages) = (String::new(), Vec::new(), 0);
    loop {
        let page = c
            .clone()
            .list_tasks(ListTasksRequest {
                page_size: 50,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("ListTasks page {pages}: {e:?}"))
            .into_inner();
        pages += 1;
        listed.extend(page.tasks.into_iter().map(|t| {
            assert!(t.result.is_some_and(|r| r.diff.len() > 900_000));
            t.task_id
        }));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let newest_first: Vec<String> = ids.iter().rev().cloned().collect();
    assert_eq!(listed, newest_first);
    assert!(pages >= 4, "{pages} pages for 8 results of ~1 MB");
}
