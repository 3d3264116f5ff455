//! A gRPC status as an HTTP/JSON answer: the HTTP status google.api / grpc-gateway map the code
//! to, and the body `{"code": <gRPC code number>, "message": <the same message as on gRPC>}`.
//! RESOURCE_EXHAUSTED carries `Retry-After` from its `google.rpc.RetryInfo`; UNAUTHENTICATED
//! carries `WWW-Authenticate: Bearer`.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use tonic::{Code, Status};
use tonic_types::StatusExt;

/// The HTTP status of a gRPC code (the grpc-gateway / google.api table).
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::from_u16(499).expect("499 is a status code"),
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// The JSON body of a status: `{code, message}`.
pub fn body(status: &Status) -> serde_json::Value {
    serde_json::json!({ "code": status.code() as i32, "message": status.message() })
}

/// The whole HTTP answer for `status`.
pub fn response(status: &Status) -> Response {
    let mut response = (http_status(status.code()), axum::Json(body(status))).into_response();
    let headers = response.headers_mut();
    match status.code() {
        Code::ResourceExhausted => {
            if let Some(delay) = status.get_details_retry_info().and_then(|r| r.retry_delay) {
                // Whole seconds, rounded up: a client must not come back before the delay.
                let secs = delay.as_millis().div_ceil(1000).max(1);
                headers.insert(header::RETRY_AFTER, HeaderValue::from(secs as u64));
            }
        }
        Code::Unauthenticated => {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        _ => {}
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn codes_map_like_grpc_gateway_and_retry_info_becomes_retry_after() {
        assert_eq!(http_status(Code::InvalidArgument), StatusCode::BAD_REQUEST);
        assert_eq!(
            http_status(Code::FailedPrecondition),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(http_status(Code::AlreadyExists), StatusCode::CONFLICT);
        assert_eq!(
            http_status(Code::Unavailable),
            StatusCode::SERVICE_UNAVAILABLE
        );
        let refused = crate::manager::admission::refusal(
            "limits.per_caller_rate_per_s",
            "too fast",
            Duration::from_millis(1200),
        );
        let r = response(&refused);
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "2");
        assert_eq!(
            body(&refused),
            serde_json::json!({"code": 8, "message": "limits.per_caller_rate_per_s: too fast"})
        );
        let r = response(&Status::unauthenticated("no"));
        assert_eq!(r.headers()[header::WWW_AUTHENTICATE], "Bearer");
    }
}
