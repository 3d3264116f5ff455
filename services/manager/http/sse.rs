//! Server-sent events: a task's event stream (`id:` = seq, so a browser's or curl's
//! `Last-Event-ID` resumes it) and the pool's status whenever it changes.
//!
//! Every stream sends a comment line at least every [`KEEP_ALIVE`] while nothing else happens,
//! so proxies and load balancers keep it open. A dropped connection only drops its follower:
//! the task goes on (tasks outlive connections) and a new request resumes where it left off.

use super::{error, json};
use crate::contract::v1::programmer_pool_server::ProgrammerPool;
use crate::contract::v1::task_event::Kind;
use crate::contract::v1::{GetPoolStatusRequest, PoolStatus};
use crate::manager::auth::Caller;
use crate::manager::server::PoolService;
use crate::task_events::{EventStream, HEARTBEAT_EVERY};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

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
/// (a programmer's state, breaker or queue, the budget, alerts, per-LLM figures…), read through
/// GetPoolStatus every [`POOL_POLL`].
pub fn pool_events(
    service: PoolService,
    caller: Option<Arc<Caller>>,
    first: PoolStatus,
) -> Response {
    let mut interval = tokio::time::interval(POOL_POLL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let feed = PoolFeed {
        service,
        caller,
        interval,
        last: None,
        next: Some(first),
        done: false,
    };
    let snapshots = futures::stream::unfold(feed, |mut feed| async move {
        if feed.done {
            return None;
        }
        loop {
            let status = match feed.next.take() {
                Some(status) => status,
                None => {
                    feed.interval.tick().await;
                    match feed.poll().await {
                        Ok(status) => status,
                        Err(status) => {
                            feed.done = true;
                            let event = Event::default()
                                .event("error")
                                .data(error::body(&status).to_string());
                            return Some((Ok::<_, Infallible>(event), feed));
                        }
                    }
                }
            };
            if feed.last.as_ref() != Some(&status) {
                let event = Event::default().data(json::to_json_line(&status));
                feed.last = Some(status);
                return Some((Ok(event), feed));
            }
        }
    });
    respond(Sse::new(snapshots))
}

/// The state of one pool stream.
struct PoolFeed {
    service: PoolService,
    caller: Option<Arc<Caller>>,
    interval: tokio::time::Interval,
    /// The snapshot sent last.
    last: Option<PoolStatus>,
    /// A snapshot already read, to send before polling again.
    next: Option<PoolStatus>,
    /// An error was sent: the stream ends.
    done: bool,
}

impl PoolFeed {
    /// GetPoolStatus as the stream's caller.
    async fn poll(&self) -> Result<PoolStatus, tonic::Status> {
        let mut request = tonic::Request::new(GetPoolStatusRequest {});
        if let Some(caller) = &self.caller {
            request.extensions_mut().insert(caller.clone());
        }
        Ok(self.service.get_pool_status(request).await?.into_inner())
    }
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
