//! Building a task's event stream: numbering (`seq`), timestamps, and the guarantee that a stream
//! carries exactly one terminal `result` event.
//!
//! Both the programmer (which produces events) and the manager (which relays and adds its own)
//! send through a [`TaskEventSink`], so the numbering rules live in one place.

use crate::contract::v1::{TaskEvent, TaskResult, task_event::Kind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use tokio::sync::mpsc;
use tonic::Status;

/// Milliseconds since the Unix epoch, for event timestamps and records.
pub fn now_unix_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The item type of a server-streaming response.
pub type EventItem = Result<TaskEvent, Status>;

/// Sends one task's events to its caller in order. Cheap to clone; clones share the numbering.
#[derive(Debug, Clone)]
pub struct TaskEventSink {
    task_id: Arc<str>,
    tx: mpsc::Sender<EventItem>,
    seq: Arc<AtomicU64>,
    finished: Arc<AtomicBool>,
}

impl TaskEventSink {
    /// A sink for `task_id` and the receiving half to hand to tonic (wrap it in a `ReceiverStream`).
    pub fn channel(task_id: &str, capacity: usize) -> (Self, mpsc::Receiver<EventItem>) {
        let (tx, rx) = mpsc::channel(capacity);
        let sink = Self {
            task_id: task_id.into(),
            tx,
            seq: Arc::new(AtomicU64::new(0)),
            finished: Arc::new(AtomicBool::new(false)),
        };
        (sink, rx)
    }

    /// The task id events are stamped with.
    pub fn task_id(&self) -> &str {
        &self.task_id
    }

    /// Sends a non-terminal event. Returns false when the caller has gone away (or the result was
    /// already sent); the task should then stop.
    pub async fn send(&self, kind: Kind) -> bool {
        if matches!(kind, Kind::Result(_)) {
            return self.finish_kind(kind).await;
        }
        if self.finished.load(Ordering::SeqCst) {
            return false;
        }
        self.push(kind).await
    }

    /// Sends the terminal result. Only the first call sends; later ones are ignored, so a stream
    /// never has two results.
    pub async fn finish(&self, result: TaskResult) -> bool {
        self.finish_kind(Kind::Result(result)).await
    }

    async fn finish_kind(&self, kind: Kind) -> bool {
        if self.finished.swap(true, Ordering::SeqCst) {
            return false;
        }
        self.push(kind).await
    }

    async fn push(&self, kind: Kind) -> bool {
        let event = TaskEvent {
            task_id: self.task_id.to_string(),
            seq: self.seq.fetch_add(1, Ordering::SeqCst) + 1,
            timestamp_ms: now_unix_ms(),
            kind: Some(kind),
        };
        self.tx.send(Ok(event)).await.is_ok()
    }

    /// Resolves when the receiver is dropped: the caller cancelled or disconnected.
    pub async fn closed(&self) {
        self.tx.closed().await
    }

    /// True once the receiver is gone.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// True once the terminal result was sent.
    pub fn is_finished(&self) -> bool {
        self.finished.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::v1::{Output, TaskState};

    fn output(text: &str) -> Kind {
        Kind::Output(Output {
            text: text.into(),
            stream: "stdout".into(),
            attempt: 1,
        })
    }

    #[tokio::test]
    async fn numbers_events_and_sends_one_result() {
        let (sink, mut rx) = TaskEventSink::channel("t1", 16);
        assert!(sink.send(output("a")).await);
        let clone = sink.clone();
        assert!(clone.send(output("b")).await);
        let result = TaskResult {
            status: TaskState::Succeeded as i32,
            ..Default::default()
        };
        assert!(sink.finish(result.clone()).await);
        assert!(!clone.finish(result).await, "second result is dropped");
        assert!(!sink.send(output("late")).await, "nothing after the result");
        drop((sink, clone));
        let mut seqs = Vec::new();
        let mut results = 0;
        while let Some(Ok(ev)) = rx.recv().await {
            assert_eq!(ev.task_id, "t1");
            seqs.push(ev.seq);
            results += matches!(ev.kind, Some(Kind::Result(_))) as usize;
        }
        assert_eq!(seqs, vec![1, 2, 3]);
        assert_eq!(results, 1);
    }

    #[tokio::test]
    async fn reports_a_gone_caller() {
        let (sink, rx) = TaskEventSink::channel("t2", 1);
        drop(rx);
        assert!(sink.is_closed());
        assert!(!sink.send(output("x")).await);
        sink.closed().await;
    }
}
