//! What the task store's writes cost on a dispatch's path: the writes a dry-run task makes, one
//! after another as a lone caller's task makes them (record, running, the relayed Assigned event,
//! the result), each awaited — every one is a commit of its own then, and the sum is the store's
//! share of the manager hop's sequential latency (`manager_hop`).
//!
//! Run: `TMPDIR=/dev/shm cargo bench --bench task_store` (tmpfs, as `manager_hop` runs: on a disk
//! the WAL's writes add the device's noise). `PAS_BENCH_TASKS` sets the number of tasks (default
//! 5,000). Prints p50 / p90 / p99 / mean in µs per write kind and per task, and the commits made.
//!
//! Then the budget ledger's two writes of a paid dispatch (the hold before it is placed, the
//! settlement after its result) with 0, 1,000, 10,000 and 50,000 charges already booked that day:
//! what a hold costs on the scheduler's path as a busy day goes on.
//!
//! Last, ListTasks with a filter that matches nothing, on a store of `PAS_BENCH_LIST_TASKS` tasks
//! (default 100,000): one page (at most `LIST_SCAN_ROWS` records examined) against every page to
//! the end (the whole store, which one call read before pages were bounded).
//!
//! And WatchTask on a finished task of 100 to 50,000 events: the one read of every event that a
//! call made on the runtime's thread before, against what it makes there now (the last event)
//! and the pages of `REPLAY_PAGE` events its follower reads on the blocking pool; and what a
//! restarted manager reads to resume such a task (before, "whole": every event).
//!
//! And the programmer's side of that replay: a follower from seq 0 of a finished task of 20,000 to
//! 100,000 events, the ones its log no longer keeps read back from the task's event file a page
//! at a time.
//!
//! Last, retention: lone dispatches' writes on a store of `PAS_BENCH_BACKLOG` finished tasks
//! (default 50,000, 10 events each), with retention off and while the checkpoint thread deletes
//! that backlog (every task already past a retention of 1 ms): what the deletion passes cost the
//! dispatch path, which shares the file's one write lock with them.

#![forbid(unsafe_code)]

use pas::contract::v1::Output;
use pas::contract::v1::TaskRecord;
use pas::contract::v1::{
    Assigned, DispatchRequest, TaskEvent, TaskResult, TaskState, task_event::Kind,
};
use pas::manager::budget::{BudgetLedger, BudgetPolicy};
use pas::manager::store::{Commit, LIST_SCAN_ROWS, NewTask, STORE_VFS, StoreError, TaskStore};
use pas::money::Usd;
use pas::task_events::{MAX_RETAINED, MAX_RETAINED_BYTES, REPLAY_PAGE};
use std::time::{Duration, Instant};

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

fn row(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let mean = samples.iter().sum::<Duration>().as_secs_f64() * 1e6 / samples.len() as f64;
    println!(
        "{name:<28} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
        percentile(&samples, 0.5),
        percentile(&samples, 0.9),
        percentile(&samples, 0.99),
        mean
    );
}

fn event(task_id: &str, seq: u64, kind: Kind) -> TaskEvent {
    TaskEvent {
        task_id: task_id.to_string(),
        seq,
        timestamp_ms: 0,
        kind: Some(kind),
    }
}

/// A new store in a temporary directory (kept while the directory handle lives).
fn fresh_store() -> (tempfile::TempDir, TaskStore) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = TaskStore::open(dir.path().join("tasks.sqlite3")).expect("store");
    (dir, store)
}

/// The dry run every task of this benchmark records, in run `run_id`.
fn sample_request(run_id: &str) -> DispatchRequest {
    DispatchRequest {
        task_description: "Add a usage section to the README".into(),
        files: vec!["README.md".into()],
        workspace: "proj".into(),
        capabilities: vec!["python".into()],
        run_id: run_id.into(),
        dry_run: true,
        ..Default::default()
    }
}

async fn run(tasks: usize) {
    let (_dir, store) = fresh_store();
    let request = sample_request("");
    let (mut insert, mut running, mut assigned, mut result, mut task) =
        (vec![], vec![], vec![], vec![], vec![]);
    for i in 0..tasks {
        let id = format!("task-{i:08}");
        let started = Instant::now();
        let t = Instant::now();
        store
            .insert(&NewTask::from_request(&id, &request))
            .await
            .expect("insert");
        insert.push(t.elapsed());
        let t = Instant::now();
        store
            .set_running(Commit::Now, &id, "001", 1, 0)
            .await
            .expect("running");
        running.push(t.elapsed());
        let assigned_event = Kind::Assigned(Assigned {
            programmer_id: "001".into(),
            llm: "qwen2.5-coder:7b".into(),
            ..Default::default()
        });
        let result_event = Kind::Result(Box::new(TaskResult {
            status: TaskState::Succeeded as i32,
            programmer_id: "001".into(),
            dry_run: true,
            ..Default::default()
        }));
        for (seq, (kind, samples)) in [(assigned_event, &mut assigned), (result_event, &mut result)]
            .into_iter()
            .enumerate()
        {
            let seq = seq as u64 + 1;
            let t = Instant::now();
            store
                .append_event(&id, &event(&id, seq, kind), seq)
                .await
                .expect("journal");
            samples.push(t.elapsed());
        }
        task.push(started.elapsed());
    }
    println!("task store — {tasks} dry-run tasks' writes, one caller, each awaited (µs)");
    println!(
        "{:<28} {:>9} {:>9} {:>9} {:>9}",
        "write", "p50", "p90", "p99", "mean"
    );
    row("insert (record)", insert);
    row("set_running", running);
    row("journal Assigned", assigned);
    row("journal result (finishes)", result);
    row("all four, one task", task);
    println!("commits: {} for {} writes", store.commits(), tasks * 4);
    drop(store);
    as_dispatched(tasks, &request).await;
}

/// The same four writes batched as a lone dispatch batches them: the record goes with its
/// placement (commit 1, awaited before Execute is sent), the Assigned event with the result
/// (commit 2, awaited before the caller sees the result).
async fn as_dispatched(tasks: usize, request: &DispatchRequest) {
    let (_dir, store) = fresh_store();
    let (mut placed, mut finished, mut task) = (vec![], vec![], vec![]);
    for i in 0..tasks {
        let id = format!("task-{i:08}");
        let started = Instant::now();
        let recorded = store.insert_with_next(&NewTask::from_request(&id, request));
        store
            .set_running(Commit::Now, &id, "001", 1, 0)
            .await
            .expect("running");
        recorded.await.expect("insert");
        placed.push(started.elapsed());
        let t = Instant::now();
        let assigned = Kind::Assigned(Assigned {
            programmer_id: "001".into(),
            llm: "qwen2.5-coder:7b".into(),
            ..Default::default()
        });
        let journaled = store.append_event_soon(&id, &event(&id, 1, assigned), 1);
        let result = Kind::Result(Box::new(TaskResult {
            status: TaskState::Succeeded as i32,
            programmer_id: "001".into(),
            dry_run: true,
            ..Default::default()
        }));
        store
            .append_event(&id, &event(&id, 2, result), 2)
            .await
            .expect("result");
        journaled.await.expect("assigned");
        finished.push(t.elapsed());
        task.push(started.elapsed());
    }
    println!("as a lone dispatch commits them: two commits per task (µs)");
    row("record + placement", placed);
    row("Assigned + result", finished);
    row("both, one task", task);
    println!("commits: {} for {} writes", store.commits(), tasks * 4);
}

/// The ledger's hold and settlement of a paid dispatch, by how many charges the day has already.
fn ledger_by_day_volume() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let policy = BudgetPolicy {
        enabled: true,
        max_daily_spend: Usd::from_usd(1_000_000.0).expect("limit"),
        alert_threshold: None,
    };
    let ledger = BudgetLedger::open(
        dir.path().join("budget.sqlite"),
        policy,
        pas::manager::budget::system_clock(),
        pas::config::Durability::ProcessCrash,
    )
    .expect("ledger");
    let cent = Usd::from_usd(0.01).expect("amount");
    println!("budget ledger — a paid dispatch's hold and settlement, by charges booked today (µs)");
    println!(
        "{:<28} {:>9} {:>9} {:>9} {:>9}",
        "write", "p50", "p90", "p99", "mean"
    );
    let mut booked = 0;
    for day_volume in [0, 1_000, 10_000, 50_000] {
        while booked < day_volume {
            let key = format!("fill-{booked}");
            ledger.reserve(&key, cent).expect("reserve");
            ledger.settle(&key, cent).expect("settle");
            booked += 1;
        }
        let (mut holds, mut settlements) = (vec![], vec![]);
        for i in 0..500 {
            let key = format!("probe-{day_volume}-{i}");
            let t = Instant::now();
            ledger.reserve(&key, cent).expect("reserve");
            holds.push(t.elapsed());
            let t = Instant::now();
            ledger.settle(&key, cent).expect("settle");
            settlements.push(t.elapsed());
        }
        booked += 500;
        row(&format!("hold, {day_volume} charges"), holds);
        row(&format!("settlement, {day_volume} charges"), settlements);
    }
}

/// ListTasks with a filter that matches no task: one page, and every page to the end; then
/// callers who see only their own tasks, 1 % and 0.01 % of them.
async fn sparse_listing(tasks: usize) {
    let (_dir, store) = fresh_store();
    let request = sample_request("common");
    let mut writes = Vec::with_capacity(tasks);
    for i in 0..tasks {
        let owner = match i {
            _ if i % 10_000 == 0 => "rare",
            _ if i % 100 == 0 => "tenant",
            _ => "",
        };
        writes.push(store.insert_with_next(&NewTask::dispatched_by(
            &format!("task-{i:08}"),
            &request,
            owner,
        )));
    }
    for write in writes {
        write.await.expect("insert");
    }
    let (first, all, pages, listed) =
        time_pages(|token| store.list(None, "rare".into(), vec![], 50, token)).await;
    assert_eq!(listed, 0);
    listing_table(
        &format!(
            "ListTasks, a filter matching none of {tasks} tasks (µs; {LIST_SCAN_ROWS} examined per page, {pages} pages)"
        ),
        first,
        all,
    );

    // `tenant` has every 100th task, `rare` every 10,000th (those are not `tenant`'s).
    for (owner, count) in [
        ("tenant", tasks.div_ceil(100) - tasks.div_ceil(10_000)),
        ("rare", tasks.div_ceil(10_000)),
    ] {
        let (first, all, pages, listed) =
            time_pages(|token| store.list(Some(owner.into()), String::new(), vec![], 50, token))
                .await;
        assert_eq!(listed, count);
        listing_table(
            &format!(
                "ListTasks by a caller who sees only their own {count} of the {tasks} tasks (µs; 50 a page, {pages} pages)"
            ),
            first,
            all,
        );
    }
}

/// Times `list` (a ListTasks call given a page token) 20 times: its first page, and every page to
/// the end. Returns both samples, the pages of a whole listing and the records it listed.
async fn time_pages<F, Fut>(list: F) -> (Vec<Duration>, Vec<Duration>, usize, usize)
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<(Vec<TaskRecord>, String), StoreError>>,
{
    let (mut first, mut all, mut pages, mut listed) = (vec![], vec![], 0, 0);
    for _ in 0..20 {
        let t = Instant::now();
        list(String::new()).await.expect("list");
        first.push(t.elapsed());
        let t = Instant::now();
        let mut token = String::new();
        (pages, listed) = (0, 0);
        loop {
            let (page, next) = list(token).await.expect("list");
            (pages, listed) = (pages + 1, listed + page.len());
            if next.is_empty() {
                break;
            }
            token = next;
        }
        all.push(t.elapsed());
    }
    (first, all, pages, listed)
}

/// One ListTasks table: the first page and a whole listing.
fn listing_table(title: &str, first: Vec<Duration>, all: Vec<Duration>) {
    println!("{title}");
    println!(
        "{:<28} {:>9} {:>9} {:>9} {:>9}",
        "call", "p50", "p90", "p99", "mean"
    );
    row("one page", first);
    row("every page to the end", all);
}

/// WatchTask on a finished task of `n` events, read whole (as before) and as it is read now.
async fn replay_by_task_length() {
    println!(
        "WatchTask on a finished task (µs; the whole read was on the runtime's thread, now only the last event is; {REPLAY_PAGE} events per page)"
    );
    println!(
        "{:<28} {:>9} {:>9} {:>9} {:>9}",
        "events / read", "p50", "p90", "p99", "mean"
    );
    for n in [100u64, 1_000, 10_000, 50_000] {
        let (_dir, store) = fresh_store();
        let task = format!("task-{n}");
        store
            .insert(&NewTask::from_request(&task, &sample_request("r")))
            .await
            .expect("insert");
        let mut writes = Vec::new();
        for seq in 1..=n {
            let chunk = Kind::Output(Output {
                text: format!("aider output line {seq:>8} of the task\n"),
                stream: "stdout".into(),
                attempt: 1,
            });
            writes.push(store.append_event_soon(&task, &event(&task, seq, chunk), seq));
        }
        for write in writes {
            write.await.expect("journal");
        }
        let rounds = if n >= 10_000 { 20 } else { 200 };
        let (mut whole, mut last, mut page, mut pages) = (vec![], vec![], vec![], vec![]);
        let mut resumed = vec![];
        for _ in 0..rounds {
            let t = Instant::now();
            assert_eq!(store.events(&task).expect("events").len() as u64, n);
            whole.push(t.elapsed());
            let t = Instant::now();
            assert!(store.last_event(&task).expect("last").is_some());
            last.push(t.elapsed());
            let t = Instant::now();
            let first = store.events_after(task.clone(), 0, REPLAY_PAGE).await;
            page.push(t.elapsed());
            assert!(!first.expect("page").is_empty());
            let t = Instant::now();
            let (mut after, mut read) = (0, 0);
            loop {
                let got = store.events_after(task.clone(), after, REPLAY_PAGE).await;
                let got = got.expect("page");
                let Some(end) = got.last() else { break };
                after = end.seq;
                read += got.len() as u64;
            }
            assert_eq!(read, n);
            pages.push(t.elapsed());
            // What a restarted manager reads to resume the task: the events its log keeps, and
            // (a task that may escalate, with older events) the manager's own events.
            let t = Instant::now();
            let kept = store
                .latest_events(&task, MAX_RETAINED, MAX_RETAINED_BYTES)
                .expect("latest");
            if kept.first().is_some_and(|e| e.seq > 1) {
                assert!(store.own_events(&task).expect("own").is_empty());
            }
            resumed.push(t.elapsed());
            assert_eq!(kept.len() as u64, n.min(MAX_RETAINED as u64));
        }
        row(&format!("{n} / whole, before"), whole);
        row(&format!("{n} / last event, now"), last);
        row(&format!("{n} / one page, now"), page);
        row(&format!("{n} / every page, now"), pages);
        row(&format!("{n} / resume's read, now"), resumed);
    }
}

/// A programmer's WatchTask from seq 0 on a finished task of `n` events: all but the latest
/// `MAX_RETAINED` come back from the task's event file, a page at a time.
async fn programmer_replay_by_task_length() {
    use futures::StreamExt;
    use pas::programmer::runs::TaskRuns;
    use pas::task_events::TaskEventSink;
    println!(
        "A programmer's WatchTask from seq 0 on a finished task (µs; the {MAX_RETAINED} latest events in memory, the rest read back from its file, {REPLAY_PAGE} a page)"
    );
    println!(
        "{:<28} {:>9} {:>9} {:>9} {:>9}",
        "events", "p50", "p90", "p99", "mean"
    );
    for n in [20_000u64, 50_000, 100_000] {
        let dir = tempfile::tempdir().expect("temporary directory");
        let (runs, _) = TaskRuns::open(dir.path().join("events"), "001").expect("open");
        let run = runs
            .start("task", tokio_util::sync::CancellationToken::new())
            .expect("start");
        let sink = TaskEventSink::new(run.log.clone());
        for seq in 1..=n {
            sink.send(Kind::Output(Output {
                text: format!("aider output line {seq:>8} of the task\n"),
                stream: "stdout".into(),
                attempt: 1,
            }))
            .await;
        }
        sink.finish(TaskResult {
            status: TaskState::Succeeded as i32,
            ..Default::default()
        })
        .await;
        let mut samples = Vec::new();
        for _ in 0..10 {
            let t = Instant::now();
            let read = run.log.follow(0, None).expect("follow").count().await;
            samples.push(t.elapsed());
            assert_eq!(read as u64, n + 1);
        }
        row(&format!("{n}"), samples);
    }
}

/// The writes of one dry-run dispatch as the manager makes them (record + placement, then the
/// Assigned event with the result, then the result recorded in the task's row), each awaited.
async fn dispatch_writes(store: &TaskStore, id: &str, request: &DispatchRequest) {
    let recorded = store.insert_with_next(&NewTask::from_request(id, request));
    store
        .set_running(Commit::Now, id, "001", 1, 0)
        .await
        .expect("running");
    recorded.await.expect("insert");
    let result = TaskResult {
        status: TaskState::Succeeded as i32,
        programmer_id: "001".into(),
        dry_run: true,
        ..Default::default()
    };
    let assigned = Kind::Assigned(Assigned::default());
    let journaled = store.append_event_soon(id, &event(id, 1, assigned), 1);
    let last = Kind::Result(Box::new(result.clone()));
    store
        .append_event(id, &event(id, 2, last), 2)
        .await
        .expect("result");
    journaled.await.expect("assigned");
    store.finish(id, &result).await.expect("finish");
}

/// Records `tasks` finished tasks of `events` events each, their writes queued a thousand
/// tasks at a time (group-committed: quick to build).
async fn finished_backlog(store: &TaskStore, tasks: usize, events: u64, request: &DispatchRequest) {
    let result = TaskResult {
        status: TaskState::Succeeded as i32,
        ..Default::default()
    };
    for chunk in (0..tasks).collect::<Vec<_>>().chunks(1000) {
        let mut writes: Vec<futures::future::BoxFuture<'_, ()>> = Vec::new();
        for &i in chunk {
            let id = format!("old-{i:08}");
            let recorded = store.insert_with_next(&NewTask::from_request(&id, request));
            writes.push(Box::pin(async move {
                recorded.await.expect("insert");
            }));
            for seq in 1..=events {
                let output = Kind::Output(Output {
                    text: "a line of aider's output\n".into(),
                    ..Default::default()
                });
                let journaled = store.append_event_soon(&id, &event(&id, seq, output), seq);
                writes.push(Box::pin(async move { journaled.await.expect("event") }));
            }
            // An async fn: queued when first polled, which join_all does in this order.
            let result = result.clone();
            writes.push(Box::pin(async move {
                store.finish(&id, &result).await.expect("finish");
            }));
        }
        futures::future::join_all(writes).await;
    }
}

async fn retention_beside_dispatches(backlog: usize, events: u64, tasks: usize) {
    println!(
        "task store retention — {tasks} lone dispatches' writes (each awaited) on a store of \
         {backlog} finished tasks of {events} events (µs per dispatch)"
    );
    println!(
        "{:<28} {:>9} {:>9} {:>9} {:>9} {:>9} {:>14}",
        "", "p50", "p90", "p99", "mean", "max", "tasks deleted"
    );
    let request = sample_request("");
    for (name, retention) in [
        ("retention off", None),
        ("deleting the backlog", Some(Duration::from_millis(1))),
    ] {
        let (dir, store) = fresh_store();
        finished_backlog(&store, backlog, events, &request).await;
        // Opened as the store opens its own (only this process may while the store is open).
        let counter = rusqlite::Connection::open_with_flags_and_vfs(
            dir.path().join("tasks.sqlite3"),
            rusqlite::OpenFlags::default(),
            STORE_VFS,
        )
        .expect("open");
        // The backlog's records left (dispatched tasks, past 1 ms too, may be deleted as well).
        let backlog_left = || -> i64 {
            counter
                .query_row(
                    "SELECT COUNT(*) FROM tasks WHERE task_id LIKE 'old-%'",
                    [],
                    |r| r.get(0),
                )
                .expect("count")
        };
        store.keep_finished_for(retention);
        if retention.is_some() {
            // Measured once the passes have begun (the first is up to a second away).
            while backlog_left() >= backlog as i64 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        let before = backlog_left();
        let mut samples = Vec::with_capacity(tasks);
        for i in 0..tasks {
            let id = format!("new-{i:08}");
            let started = Instant::now();
            dispatch_writes(&store, &id, &request).await;
            samples.push(started.elapsed());
        }
        let deleted = before - backlog_left();
        let max = samples.iter().max().copied().unwrap_or_default();
        samples.sort();
        let mean = samples.iter().sum::<Duration>().as_secs_f64() * 1e6 / samples.len() as f64;
        println!(
            "{name:<28} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>14}",
            percentile(&samples, 0.5),
            percentile(&samples, 0.9),
            percentile(&samples, 0.99),
            mean,
            max.as_secs_f64() * 1e6,
            deleted
        );
    }
}

/// `name`'s value from the environment, or `default`.
fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(run(env_or("PAS_BENCH_TASKS", 5000)));
    ledger_by_day_volume();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(async {
            sparse_listing(env_or("PAS_BENCH_LIST_TASKS", 100_000)).await;
            replay_by_task_length().await;
            programmer_replay_by_task_length().await;
            retention_beside_dispatches(env_or("PAS_BENCH_BACKLOG", 50_000), 10, 20_000).await;
        });
}
