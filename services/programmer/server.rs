//! The `pas.v1.Programmer` gRPC service: admission (validate, queue), one spawned driver per task
//! that runs it to its end whether or not anyone follows it (within its lease), following a task
//! (Execute, WatchTask), StopTask, and status.

use crate::contract::v1::programmer_server::Programmer as ProgrammerRpc;
use crate::contract::v1::{
    Assigned, ErrorClass, GetStatusRequest, ProgrammerStatus, Queued, StopTaskRequest,
    StopTaskResponse, TaskRequest, TaskResult, TaskState, WatchTaskRequest, task_event::Kind,
};
use crate::programmer::failover::run_task;
use crate::programmer::runs::{LEASE_EXPIRED, Run};
use crate::programmer::state::Programmer;
use crate::programmer::validate::{ValidatedTask, validate};
use crate::task_events::{EventStream, HEARTBEAT_EVERY, TaskEventSink};
use crate::task_sources::TaskSources;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::{Request, Response, Status};

/// The gRPC face of a [`Programmer`].
#[derive(Debug, Clone)]
pub struct ProgrammerService {
    prog: Arc<Programmer>,
}

impl ProgrammerService {
    pub fn new(prog: Arc<Programmer>) -> Self {
        Self { prog }
    }
}

#[tonic::async_trait]
impl ProgrammerRpc for ProgrammerService {
    type ExecuteStream = EventStream;
    type WatchTaskStream = EventStream;

    async fn execute(
        &self,
        request: Request<TaskRequest>,
    ) -> Result<Response<Self::ExecuteStream>, Status> {
        let prog = self.prog.clone();
        // A task this programmer already has (the manager re-sending it): attach, start nothing.
        if let Some(run) = prog.runs.get(&request.get_ref().task_id) {
            return Ok(Response::new(run.log.follow(0, None)?));
        }
        if prog.is_draining() {
            return Err(Status::unavailable(format!(
                "{} is shutting down",
                prog.spec.agent
            )));
        }
        let req = request.into_inner();
        let sources = prog.sources();
        let task = validate(
            req,
            &prog.live().spec.limits,
            &sources.workspaces,
            sources.mirrors.as_ref(),
        )
        .await?;
        // Draining may have begun while the request was validated (it runs git): a task spawned
        // after the drain found no tasks left would be cut off when the server stops.
        if prog.is_draining() {
            return Err(Status::unavailable(format!(
                "{} is shutting down",
                prog.spec.agent
            )));
        }
        let waiting = prog.queue.try_enter().map_err(|full| {
            Status::resource_exhausted(format!("{} queue is full: {full}", prog.spec.agent))
        })?;
        let run = match prog.runs.start(&task.task_id, prog.shutdown.child_token()) {
            Ok(run) => run,
            // Accepted by a concurrent Execute with the same id meanwhile: follow that one.
            Err(existing) => return Ok(Response::new(existing.log.follow(0, None)?)),
        };
        // Followed from the first event before the driver can publish any.
        let stream = run.log.follow(0, None)?;
        tracing::info!(task_id = %task.task_id, run_id = %task.run_id, workspace = %task.workspace_name,
            dry_run = task.dry_run, "task accepted");
        let span = crate::telemetry::spans::programmer_task(
            &task.task_id,
            &task.run_id,
            &prog.spec.id,
            &task.workspace_name,
            task.dry_run,
        );
        let driver = drive_task(prog.clone(), task, sources, run, waiting);
        prog.tasks
            .spawn(tracing::Instrument::instrument(driver, span));
        Ok(Response::new(stream))
    }

    async fn watch_task(
        &self,
        request: Request<WatchTaskRequest>,
    ) -> Result<Response<Self::WatchTaskStream>, Status> {
        let WatchTaskRequest { task_id, after_seq } = request.into_inner();
        let run = self.prog.runs.get(&task_id).ok_or_else(|| {
            Status::not_found(format!(
                "task_id: {} has no task {task_id:?} (it does not run here)",
                self.prog.spec.agent
            ))
        })?;
        Ok(Response::new(
            run.log.follow(after_seq, Some(HEARTBEAT_EVERY))?,
        ))
    }

    async fn stop_task(
        &self,
        request: Request<StopTaskRequest>,
    ) -> Result<Response<StopTaskResponse>, Status> {
        let task_id = request.into_inner().task_id;
        let Some(run) = self.prog.runs.get(&task_id) else {
            return Ok(Response::new(StopTaskResponse {
                message: format!("{} has no task {task_id:?}", self.prog.spec.agent),
                task_id,
                ..Default::default()
            }));
        };
        let previous = run.log.result().map_or(TaskState::Running, |r| r.status());
        let stopped = !run.log.is_finished();
        if stopped {
            run.cancel.cancel();
        }
        Ok(Response::new(StopTaskResponse {
            message: if stopped {
                format!("task {task_id} is being stopped")
            } else {
                format!(
                    "task {task_id} already finished ({})",
                    previous.as_str_name()
                )
            },
            task_id,
            stopped,
            previous_state: previous as i32,
        }))
    }

    async fn get_status(
        &self,
        _: Request<GetStatusRequest>,
    ) -> Result<Response<ProgrammerStatus>, Status> {
        Ok(Response::new(self.prog.status()))
    }
}

/// Drives one accepted task: wait for a slot, run it, send exactly one result.
async fn drive_task(
    prog: Arc<Programmer>,
    task: ValidatedTask,
    sources: Arc<TaskSources>,
    run: Run,
    waiting: crate::programmer::queue::Waiting,
) {
    let started = Instant::now();
    let cancel = run.cancel.clone();
    let sink = TaskEventSink::new(run.log.clone());
    // Nobody following the task for a whole lease: whoever placed it is gone; stop it.
    // The caller's lease (the manager's, as it accepted the task) or, without one, ours.
    let lease = task.lease.unwrap_or_else(|| prog.live().lease);
    let lease = tokio::spawn(hold_lease(run.clone(), lease));

    let (positions_tx, mut positions_rx) = mpsc::unbounded_channel();
    let acquire = waiting.acquire(move |position| {
        let _ = positions_tx.send(position);
    });
    let acquire =
        tracing::Instrument::instrument(acquire, crate::telemetry::spans::queue_wait("programmer"));
    let relay_positions = async {
        let mut first = true;
        while let Some(position) = positions_rx.recv().await {
            crate::telemetry::task_queued("programmer", position, std::mem::take(&mut first));
            let queued = Queued {
                position: position as u32,
                queue: "programmer".into(),
                reason: format!(
                    "{} runs {} task(s) at a time",
                    prog.spec.agent,
                    prog.queue.limits().0
                ),
            };
            sink.send(Kind::Queued(queued)).await;
        }
    };
    let slot = tokio::select! {
        (slot, ()) = async { tokio::join!(acquire, relay_positions) } => slot,
        _ = cancel.cancelled() => {
            let result = ended(&prog, TaskState::Cancelled, ErrorClass::Cancelled, "cancelled while queued", started);
            finish(&prog, &task, &sink, handed_back(&prog, &run, result)).await;
            lease.abort();
            return;
        }
    };
    tracing::debug!(task_id = %task.task_id, waited_ms = started.elapsed().as_millis() as u64, "task started");

    let result = if task.dry_run {
        let (llm, using_backup) = prog.current_llm();
        let assigned = Assigned {
            programmer_id: prog.spec.id.clone(),
            llm: llm.to_string(),
            using_backup,
            ..Default::default()
        };
        sink.send(Kind::Assigned(assigned)).await;
        TaskResult {
            status: TaskState::Succeeded as i32,
            programmer_id: prog.spec.id.clone(),
            llm_used: llm.to_string(),
            used_backup: using_backup,
            dry_run: true,
            duration_ms: started.elapsed().as_millis() as u64,
            ..Default::default()
        }
    } else {
        run_task(&prog, &task, &sources, &sink, cancel.clone(), started).await
    };
    drop(slot);
    finish(&prog, &task, &sink, handed_back(&prog, &run, result)).await;
    lease.abort();
}

/// Stops `run` (handed back) once no stream has followed it for `lease`.
async fn hold_lease(run: Run, lease: std::time::Duration) {
    let mut followers = run.log.followers();
    loop {
        // Wait until nobody follows…
        if followers.wait_for(|n| *n == 0).await.is_err() {
            return;
        }
        // …and give someone a lease's time to follow again.
        match tokio::time::timeout(lease, followers.wait_for(|n| *n > 0)).await {
            Ok(Ok(_)) => continue,
            Ok(Err(_)) => return,
            Err(_) => {
                tracing::warn!(task_id = %run.log.task_id(), lease_s = lease.as_secs(),
                    "no manager followed the task for its lease: stopping it");
                run.hand_back(format!(
                    "{LEASE_EXPIRED}: nobody followed the task for {} s",
                    lease.as_secs()
                ));
                return;
            }
        }
    }
}

/// A task stopped because this programmer is shutting down (the drain timeout cancelled it) or
/// because its lease expired was not cancelled by its caller: say so with a distinct outcome, so
/// the manager dispatches it again elsewhere instead of reporting a cancellation nobody asked for.
fn handed_back(prog: &Programmer, run: &Run, mut result: TaskResult) -> TaskResult {
    if result.status != TaskState::Cancelled as i32 {
        return result;
    }
    let why = if prog.shutdown.is_cancelled() {
        format!(
            "{} stopped before finishing (shutting down; drain timeout passed)",
            prog.spec.agent
        )
    } else if let Some(reason) = run.handed_back_reason() {
        format!("{} stopped the task: {reason}", prog.spec.agent)
    } else {
        return result;
    };
    result.status = TaskState::Failed as i32;
    result.error_class = ErrorClass::HandedBack as i32;
    result.error_message = format!("{why}: handed back for rerouting");
    result
}

fn ended(
    prog: &Programmer,
    status: TaskState,
    class: ErrorClass,
    message: &str,
    started: Instant,
) -> TaskResult {
    TaskResult {
        status: status as i32,
        programmer_id: prog.spec.id.clone(),
        error_class: class as i32,
        error_message: message.into(),
        duration_ms: started.elapsed().as_millis() as u64,
        ..Default::default()
    }
}

/// Counts, logs and sends the terminal event.
async fn finish(prog: &Programmer, task: &ValidatedTask, sink: &TaskEventSink, result: TaskResult) {
    let status = TaskState::try_from(result.status).unwrap_or(TaskState::Unspecified);
    let counter = match status {
        TaskState::Succeeded => &prog.counters.completed,
        TaskState::Cancelled => &prog.counters.cancelled,
        _ => &prog.counters.failed,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    crate::telemetry::task_finished(crate::telemetry::Role::Programmer, &result);
    tracing::info!(task_id = %task.task_id, run_id = %task.run_id, status = status.as_str_name(),
        llm = %result.llm_used, used_backup = result.used_backup, attempts = result.attempts.len(),
        cost_usd = result.cost_usd, duration_ms = result.duration_ms,
        error = %result.error_message, "task finished");
    sink.finish(result).await;
    prog.runs.finished(&task.task_id);
}
