//! Server-sent events: a task's event stream (`id:` = seq, so a browser's or curl's
//! `Last-Event-ID` resumes it) and the pool's status whenever it changes.
//!
//! Every stream sends a comment line at least every [`KEEP_ALIVE`] while nothing else happens,
//! so proxies and load balancers keep it open. A dropped connection only drops its follower:
//! the task goes on (tasks outlive connections) and a new request resumes where it left off.

use super::{error, json};
use crate::contract::v1::PoolStatus;
use crate::contract::v1::task_event::Kind;
use crate::manager::{Manager, status};
use crate::task_events::{EventStream, HEARTBEAT_EVERY};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Longest silence on a stream before a keep-alive comment (WatchTask's heartbeat period).
pub const KEEP_ALIVE: Duration = HEARTBEAT_EVERY;

/// How often the pool stream looks at the pool's status; a snapshot is sent only when it changed.
pub const POOL_POLL: Duration = Duration::from_millis(500);

/// `stream` as SSE: one `message` event per task event (`id:` = its seq, `data:` = its protobuf
/// JSON); WatchTask's heartbeats become comments (they are not task events and carry seq 0, which
/// must not become a Last-Event-ID); an error ends the stream with an `error` event whose data is
/// `{code, message}`.
pub fn task_events(stream: EventStream) -> Response {
    let events = stream
        .scan(false, |ended, item| {
            let next = (!*ended).then(|| {
                *ended = item.is_err();
                item
            });
            futures::future::ready(next)
        })
        .map(|item| -> Result<Event, Infallible> {
            Ok(match item {
                Ok(event) => match &event.kind {
                    Some(Kind::Heartbeat(h)) => {
                        Event::default().comment(format!("heartbeat latest_seq={}", h.latest_seq))
                    }
                    _ => Event::default()
                        .id(event.seq.to_string())
                        .data(json::to_json_line(&event)),
                },
                Err(status) => Event::default()
                    .event("error")
                    .data(error::body(&status).to_string()),
            })
        });
    respond(Sse::new(events))
}

/// The pool's status as SSE: the current snapshot at once, then each new one as the pool changes
/// (a programmer's state, breaker or queue, the budget, alerts, per-LLM figures…), read every
/// [`POOL_POLL`] by one poll that all pool streams share ([`shared_pool_status`]).
pub fn pool_events(mgr: &Arc<Manager>, first: PoolStatus) -> Response {
    // The shared value may be older than `first` (it is not polled while no stream is open):
    // the stream waits for the next poll rather than send it.
    let feed = shared_pool_status(mgr);
    let snapshots = futures::stream::unfold(
        (feed, Some(first), None::<Arc<PoolStatus>>),
        |(mut feed, mut first, mut last)| async move {
            loop {
                let status = match first.take() {
                    Some(first) => Arc::new(first),
                    None => {
                        // The poll ended with the manager: so does the stream.
                        feed.changed().await.ok()?;
                        feed.borrow_and_update().clone()
                    }
                };
                if last.as_deref() != Some(&*status) {
                    let event = Event::default().data(json::to_json_line(&*status));
                    last = Some(status);
                    return Some((Ok::<_, Infallible>(event), (feed, first, last)));
                }
            }
        },
    );
    respond(Sse::new(snapshots))
}

/// The pool's status as every pool stream sees it: polled every [`POOL_POLL`] by one task for all
/// of them (started by the first stream, idle while none is open), so a thousand open streams
/// cost the manager's thread what one does.
fn shared_pool_status(mgr: &Arc<Manager>) -> watch::Receiver<Arc<PoolStatus>> {
    mgr.pool_feed
        .get_or_init(|| {
            let (tx, rx) = watch::channel(Arc::new(status::pool_status(mgr)));
            let manager = Arc::downgrade(mgr);
            tokio::spawn(async move {
                let mut interval = tokio::time::interval(POOL_POLL);
                interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    interval.tick().await;
                    let Some(mgr) = manager.upgrade() else {
                        return;
                    };
                    // The manager keeps one receiver: more are open streams.
                    if tx.receiver_count() <= 1 {
                        continue;
                    }
                    let now = status::pool_status(&mgr);
                    tx.send_if_modified(|current| {
                        let changed = **current != now;
                        if changed {
                            *current = Arc::new(now);
                        }
                        changed
                    });
                }
            });
            rx
        })
        .clone()
}

/// The SSE response with keep-alive comments, and the header that tells nginx-style proxies not
/// to buffer it.
fn respond<S>(sse: Sse<S>) -> Response
where
    S: futures::Stream<Item = Result<Event, Infallible>> + Send + 'static,
{
    let mut response = sse
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive"))
        .into_response();
    response
        .headers_mut()
        .insert("x-accel-buffering", http::HeaderValue::from_static("no"));
    response
}
