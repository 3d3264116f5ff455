//! Response plumbing shared by the API handlers: latency, hangs, error statuses, paced streams and
//! dropped connections. Each API only says how its frames and error bodies look.

use super::script::Fault;
use super::state::Plan;
use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use serde_json::Value;

/// Pause before a `drop` cuts a stream, so the frames before it are flushed to the client.
const DROP_PAUSE: std::time::Duration = std::time::Duration::from_millis(200);

/// Waits the plan's latency, then returns the error response for an HTTP fault, never returns for a
/// hang, and returns `None` when the request should be answered.
pub async fn gate(plan: &Plan, error: impl FnOnce(StatusCode) -> Response) -> Option<Response> {
    tokio::time::sleep(plan.latency).await;
    match plan.fault {
        Fault::Hang => {
            // The client gives up (or the server stops); axum drops this future then.
            std::future::pending::<()>().await;
            None
        }
        Fault::Http(code) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            Some(error(status))
        }
        _ => None,
    }
}

/// A streamed response: `frames` are sent one by one with the plan's chunk delay between them; a
/// `drop` fault cuts the connection after about half of them.
pub fn stream(plan: &Plan, content_type: &'static str, frames: Vec<Bytes>) -> Response {
    let delay = plan.chunk_delay;
    let cut = match plan.fault {
        Fault::Drop => Some((frames.len() / 2).max(1)),
        _ => None,
    };
    let body =
        futures::stream::iter(frames.into_iter().enumerate()).then(move |(i, frame)| async move {
            if i > 0 && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if cut.is_some_and(|c| i >= c) {
                // Let what was sent so far reach the client first: a drop *mid*-stream.
                tokio::time::sleep(DROP_PAUSE.max(delay)).await;
                return Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "llm-sim: connection dropped mid-stream",
                ));
            }
            Ok::<Bytes, std::io::Error>(frame)
        });
    // Stop after the first error so that the connection is cut right there.
    let body = body.scan(false, |failed, item| {
        let out = if *failed { None } else { Some(item) };
        if let Some(Err(_)) = &out {
            *failed = true;
        }
        futures::future::ready(out)
    });
    let mut resp = Response::new(Body::from_stream(body));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// A non-streamed JSON response; a `drop` fault closes the connection without a complete response.
pub fn json(plan: &Plan, value: serde_json::Value) -> Response {
    if plan.fault == Fault::Drop {
        let body = futures::stream::once(async {
            Err::<Bytes, _>(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "llm-sim: connection dropped",
            ))
        });
        let mut resp = Response::new(Body::from_stream(body));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        return resp;
    }
    axum::Json(value).into_response()
}

/// An SSE `data:` frame.
pub fn sse_data(value: &serde_json::Value) -> Bytes {
    Bytes::from(format!("data: {value}\n\n"))
}

/// An SSE frame with an event name.
pub fn sse_event(event: &str, value: &serde_json::Value) -> Bytes {
    Bytes::from(format!("event: {event}\ndata: {value}\n\n"))
}

/// One NDJSON line.
pub fn ndjson(value: &serde_json::Value) -> Bytes {
    Bytes::from(format!("{value}\n"))
}

/// Seconds since the Unix epoch (for `created` fields).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Joins a message `content` that is either a string or a list of `{type: text, text}` parts.
pub fn content_text(content: Option<&serde_json::Value>) -> String {
    match content {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(|t| t.as_str()))
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

/// Reads `{role, content}` messages from a JSON array.
pub fn messages(value: Option<&serde_json::Value>) -> Vec<super::edit::Message> {
    value
        .and_then(|v| v.as_array())
        .map(|arr| {
            arr.iter()
                .map(|m| {
                    super::edit::Message::new(
                        m.get("role").and_then(|r| r.as_str()).unwrap_or("user"),
                        content_text(m.get("content")),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A 400 for a body that is not the JSON the API expects.
pub fn bad_request(why: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(serde_json::json!({"error": {"message": why, "type": "invalid_request_error"}})),
    )
        .into_response()
}

/// A request body's JSON with its `model` (`""` when absent) and `stream` flag (`default_stream`
/// when absent: the APIs differ); `None` when the body is not JSON.
pub fn parse_request(body: &[u8], default_stream: bool) -> Option<(Value, String, bool)> {
    let req = serde_json::from_slice::<Value>(body).ok()?;
    let model = req
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let stream = req
        .get("stream")
        .and_then(Value::as_bool)
        .unwrap_or(default_stream);
    Some((req, model, stream))
}
