//! The `pas.v1.Programmer` gRPC service: admission (validate, queue), one spawned driver per task,
//! cancellation when the caller goes away, and status.

use crate::contract::v1::programmer_server::Programmer as ProgrammerRpc;
use crate::contract::v1::{
    Assigned, ErrorClass, GetStatusRequest, ProgrammerStatus, Queued, TaskRequest, TaskResult,
    TaskState, task_event::Kind,
};
use crate::programmer::failover::run_task;
use crate::programmer::state::Programmer;
use crate::programmer::validate::{ValidatedTask, validate};
use crate::task_events::{EventItem, TaskEventSink};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

/// Buffered events per task stream; output chunks wait (back-pressure) beyond this.
const EVENT_BUFFER: usize = 256;

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
    type ExecuteStream = ReceiverStream<EventItem>;

    async fn execute(
        &self,
        request: Request<TaskRequest>,
    ) -> Result<Response<Self::ExecuteStream>, Status> {
        let prog = self.prog.clone();
        if prog.is_draining() {
            return Err(Status::unavailable(format!(
                "{} is shutting down",
                prog.spec.agent
            )));
        }
        let req = request.into_inner();
        let task = validate(req, &prog.spec.limits, &prog.workspaces).await?;
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
        let (sink, rx) = TaskEventSink::channel(&task.task_id, EVENT_BUFFER);
        tracing::info!(task_id = %task.task_id, run_id = %task.run_id, workspace = %task.workspace_name,
            dry_run = task.dry_run, "task accepted");
        let span = crate::telemetry::spans::programmer_task(
            &task.task_id,
            &task.run_id,
            &prog.spec.id,
            &task.workspace_name,
            task.dry_run,
        );
        let driver = drive_task(prog.clone(), task, sink, waiting);
        prog.tasks
            .spawn(tracing::Instrument::instrument(driver, span));
        Ok(Response::new(ReceiverStream::new(rx)))
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
    sink: TaskEventSink,
    waiting: crate::programmer::queue::Waiting,
) {
    let started = Instant::now();
    let cancel = prog.shutdown.child_token();
    // The caller cancelling the call or disconnecting drops the receiver: stop the task.
    let watcher = {
        let (sink, cancel) = (sink.clone(), cancel.clone());
        tokio::spawn(async move {
            sink.closed().await;
            cancel.cancel();
        })
    };

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
            finish(&prog, &task, &sink, handed_back_if_draining(&prog, result)).await;
            watcher.abort();
            return;
        }
    };
    tracing::info!(task_id = %task.task_id, waited_ms = started.elapsed().as_millis() as u64, "task started");

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
        run_task(&prog, &task, &sink, cancel.clone(), started).await
    };
    drop(slot);
    finish(&prog, &task, &sink, handed_back_if_draining(&prog, result)).await;
    watcher.abort();
}

/// A task stopped because this programmer is shutting down (the drain timeout cancelled it) was
/// not cancelled by its caller: say so with a distinct outcome, so the manager dispatches it again
/// elsewhere instead of reporting a cancellation nobody asked for.
fn handed_back_if_draining(prog: &Programmer, mut result: TaskResult) -> TaskResult {
    if prog.shutdown.is_cancelled() && result.status == TaskState::Cancelled as i32 {
        result.status = TaskState::Failed as i32;
        result.error_class = ErrorClass::HandedBack as i32;
        result.error_message = format!(
            "{} stopped before finishing (shutting down; drain timeout passed): handed back for rerouting",
            prog.spec.agent
        );
    }
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
}
