//! The manager's HTTP/JSON face beside gRPC, on the same port, and the web dashboard.
//!
//! Every `/v1` route calls the same [`PoolService`] method a gRPC call would, in process: the
//! same validation, admission, ownership checks and messages. The JSON is the protobuf JSON
//! mapping grpcurl prints ([`json`]); a gRPC error becomes the HTTP status grpc-gateway maps it
//! to with `{code, message}` ([`error`]); streams are server-sent events ([`sse`]).
//! Authentication and the admission limits are the same middlewares as for gRPC: they ask
//! [`rpc_of`] which method a route stands for.
//!
//! | route                          | gRPC method   |
//! |--------------------------------|---------------|
//! | `POST /v1/tasks`               | Dispatch (SSE)|
//! | `GET /v1/tasks`                | ListTasks     |
//! | `GET /v1/tasks/{id}`           | GetTask       |
//! | `GET /v1/tasks/{id}/events`    | WatchTask (SSE, `Last-Event-ID`) |
//! | `POST /v1/tasks/{id}:cancel`   | CancelTask    |
//! | `GET /v1/pool`                 | GetPoolStatus |
//! | `GET /v1/pool/events`          | GetPoolStatus, polled (SSE of changes) |

pub mod dashboard;
pub mod error;
pub mod json;
pub mod sse;

use crate::contract::v1::programmer_pool_server::ProgrammerPool;
use crate::contract::v1::{
    CancelTaskRequest, DispatchRequest, GetPoolStatusRequest, GetTaskRequest, ListTasksRequest,
    WatchTaskRequest,
};
use crate::manager::server::PoolService;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use http::Method;
use http::request::Parts;
use tonic::Status;

/// Prefix of the HTTP/JSON API routes (their errors are JSON `{code, message}`).
pub const API_PREFIX: &str = "/v1/";

/// The suffix of the cancel route's last segment (`/v1/tasks/{id}:cancel`, google.api style).
const CANCEL_SUFFIX: &str = ":cancel";

/// The gRPC method path (`/pas.v1.ProgrammerPool/…`) an HTTP route calls, so authentication and
/// admission treat it exactly like that call; None for any other request.
pub fn rpc_of(method: &Method, path: &str) -> Option<&'static str> {
    let rest = path.strip_prefix(API_PREFIX)?;
    // Decoded as the router decodes them (`t1%3Acancel` is the cancel route), so no spelling of
    // a route is asked as another.
    let decoded: Vec<_> = rest
        .split('/')
        .map(|segment| percent_encoding::percent_decode_str(segment).decode_utf8_lossy())
        .collect();
    let segments: Vec<&str> = decoded.iter().map(|segment| segment.as_ref()).collect();
    Some(match (method, segments.as_slice()) {
        (&Method::POST, ["tasks"]) => "/pas.v1.ProgrammerPool/Dispatch",
        (&Method::GET, ["tasks"]) => "/pas.v1.ProgrammerPool/ListTasks",
        (&Method::GET, ["tasks", _]) => "/pas.v1.ProgrammerPool/GetTask",
        (&Method::GET, ["tasks", _, "events"]) => "/pas.v1.ProgrammerPool/WatchTask",
        (&Method::POST, ["tasks", id]) if id.ends_with(CANCEL_SUFFIX) => {
            "/pas.v1.ProgrammerPool/CancelTask"
        }
        (&Method::GET, ["pool"] | ["pool", "events"]) => "/pas.v1.ProgrammerPool/GetPoolStatus",
        _ => return None,
    })
}

/// True for the JSON API's paths (where a refusal is answered as JSON, not as a gRPC status).
pub fn is_api(path: &str) -> bool {
    path.starts_with(API_PREFIX)
}

/// A refusal by a middleware (authentication, admission) for `path`: JSON for the API routes,
/// a gRPC status otherwise.
pub fn refusal(path: &str, status: Status) -> Response {
    if is_api(path) {
        error::response(&status)
    } else {
        status.into_http::<axum::body::Body>()
    }
}

/// The `/v1` routes and the dashboard, answering through `service`.
pub fn router(service: PoolService) -> Router {
    Router::new()
        .route("/v1/tasks", get(list_tasks).post(dispatch))
        .route("/v1/tasks/{id}", get(get_task).post(cancel_task))
        .route("/v1/tasks/{id}/events", get(watch_task))
        .route("/v1/pool", get(pool_status))
        .route("/v1/pool/events", get(pool_events))
        .with_state(service)
        .merge(dashboard::router())
}

/// The gRPC request the HTTP request stands for: its headers as metadata (the bearer token among
/// them) and its extensions (the authenticated caller, the peer address) with `message`.
fn grpc_request<T>(parts: &Parts, message: T) -> tonic::Request<T> {
    let mut request = http::Request::new(message);
    *request.headers_mut() = parts.headers.clone();
    *request.extensions_mut() = parts.extensions.clone();
    tonic::Request::from_http(request)
}

/// A body or query that is not the message: INVALID_ARGUMENT naming the field.
fn bad_json(e: json::JsonError) -> Status {
    Status::invalid_argument(e.to_string())
}

/// What the routes that take query parameters extract.
type QueryPairs = Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>;

/// The query string of a request read into message `M` (its fields as parameters); a query that
/// is not one, or names no field of `M`, is INVALID_ARGUMENT.
fn query_message<M: prost::Message + prost::Name + Default>(
    query: QueryPairs,
) -> Result<M, Status> {
    let Query(pairs) = query.map_err(|e| Status::invalid_argument(format!("query: {e}")))?;
    json::from_query::<M>(&pairs).map_err(bad_json)
}

/// A JSON answer from a unary call.
fn unary<M: prost::Message + prost::Name>(result: Result<tonic::Response<M>, Status>) -> Response {
    match result {
        Ok(response) => axum::Json(json::to_json(response.get_ref())).into_response(),
        Err(status) => error::response(&status),
    }
}

/// `POST /v1/tasks`: Dispatch; the task's events as SSE.
async fn dispatch(State(service): State<PoolService>, parts: Parts, body: Bytes) -> Response {
    let request: DispatchRequest = match json::from_json(&body) {
        Ok(r) => r,
        Err(e) => return error::response(&bad_json(e)),
    };
    match service.dispatch(grpc_request(&parts, request)).await {
        Ok(stream) => sse::task_events(stream.into_inner()),
        Err(status) => error::response(&status),
    }
}

/// `GET /v1/tasks?runId=…&states=…&pageSize=…&pageToken=…`: ListTasks.
async fn list_tasks(
    State(service): State<PoolService>,
    parts: Parts,
    query: QueryPairs,
) -> Response {
    match query_message::<ListTasksRequest>(query) {
        Ok(request) => unary(service.list_tasks(grpc_request(&parts, request)).await),
        Err(status) => error::response(&status),
    }
}

/// `GET /v1/tasks/{id}`: GetTask.
async fn get_task(
    State(service): State<PoolService>,
    Path(task_id): Path<String>,
    parts: Parts,
) -> Response {
    unary(
        service
            .get_task(grpc_request(&parts, GetTaskRequest { task_id }))
            .await,
    )
}

/// `POST /v1/tasks/{id}:cancel`: CancelTask. (Any other POST on a task is not a route.)
async fn cancel_task(
    State(service): State<PoolService>,
    Path(segment): Path<String>,
    parts: Parts,
) -> Response {
    let Some(task_id) = segment.strip_suffix(CANCEL_SUFFIX) else {
        let status = Status::not_found(format!(
            "no route POST {}: cancel is POST /v1/tasks/{{id}}:cancel",
            parts.uri.path()
        ));
        return error::response(&status);
    };
    let request = CancelTaskRequest {
        task_id: task_id.to_string(),
    };
    unary(service.cancel_task(grpc_request(&parts, request)).await)
}

/// `GET /v1/tasks/{id}/events[?afterSeq=N]`: WatchTask as SSE. A `Last-Event-ID` header (what an
/// EventSource sends when it reconnects) wins over `afterSeq`: the stream goes on after it.
async fn watch_task(
    State(service): State<PoolService>,
    Path(task_id): Path<String>,
    parts: Parts,
    query: QueryPairs,
) -> Response {
    let mut request = match query_message::<WatchTaskRequest>(query) {
        Ok(r) => r,
        Err(status) => return error::response(&status),
    };
    request.task_id = task_id;
    if let Some(last) = parts.headers.get("last-event-id") {
        match last
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
        {
            Some(seq) => request.after_seq = seq,
            None => {
                let status = Status::invalid_argument(
                    "Last-Event-ID: expected the seq of an event (a number)",
                );
                return error::response(&status);
            }
        }
    }
    match service.watch_task(grpc_request(&parts, request)).await {
        Ok(stream) => {
            let mut stream = stream.into_inner();
            // Resumed after the result (an EventSource reconnects once a stream ends, sending the
            // result's seq): 204, the one answer that tells it to stop reconnecting.
            match stream.next().now_or_never() {
                Some(None) => axum::http::StatusCode::NO_CONTENT.into_response(),
                Some(Some(first)) => {
                    sse::task_events(Box::pin(futures::stream::iter([first]).chain(stream)))
                }
                None => sse::task_events(stream),
            }
        }
        Err(status) => error::response(&status),
    }
}

/// `GET /v1/pool`: GetPoolStatus.
async fn pool_status(State(service): State<PoolService>, parts: Parts) -> Response {
    unary(
        service
            .get_pool_status(grpc_request(&parts, GetPoolStatusRequest {}))
            .await,
    )
}

/// `GET /v1/pool/events`: the pool's status as SSE, a snapshot whenever it changed.
async fn pool_events(State(service): State<PoolService>, parts: Parts) -> Response {
    let first = match service
        .get_pool_status(grpc_request(&parts, GetPoolStatusRequest {}))
        .await
    {
        Ok(status) => status.into_inner(),
        Err(status) => return error::response(&status),
    };
    sse::pool_events(service.manager(), first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_stand_for_their_grpc_methods() {
        let pool = |m: &str| Some(format!("/pas.v1.ProgrammerPool/{m}"));
        let of = |method: Method, path: &str| rpc_of(&method, path).map(str::to_string);
        assert_eq!(of(Method::POST, "/v1/tasks"), pool("Dispatch"));
        assert_eq!(of(Method::GET, "/v1/tasks"), pool("ListTasks"));
        assert_eq!(of(Method::GET, "/v1/tasks/t1"), pool("GetTask"));
        assert_eq!(of(Method::GET, "/v1/tasks/t1/events"), pool("WatchTask"));
        assert_eq!(of(Method::POST, "/v1/tasks/t1:cancel"), pool("CancelTask"));
        assert_eq!(of(Method::GET, "/v1/pool"), pool("GetPoolStatus"));
        assert_eq!(of(Method::GET, "/v1/pool/events"), pool("GetPoolStatus"));
        // Anything else is no method: it needs a read token and finds no route.
        assert_eq!(of(Method::POST, "/v1/tasks/t1"), None);
        assert_eq!(of(Method::DELETE, "/v1/tasks"), None);
        assert_eq!(of(Method::GET, "/v1/tasks/t1/events/more"), None);
        // Percent-encoded, a route is still itself: the cancel route needs cancel's role.
        assert_eq!(
            of(Method::POST, "/v1/tasks/t1%3Acancel"),
            pool("CancelTask")
        );
        assert_eq!(of(Method::GET, "/v1/tasks/t1/%65vents"), pool("WatchTask"));
        assert_eq!(of(Method::GET, "/programmer_pool/status"), None);
        assert!(is_api("/v1/pool") && !is_api("/health"));
    }
}
