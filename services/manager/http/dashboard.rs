//! The web dashboard at `/`: one HTML page, its stylesheet and script, compiled into the binary
//! (no build step, no CDN). The page reads only the `/v1` routes: `GET /v1/pool/events` for the
//! pool, `GET /v1/tasks` for the list, `GET /v1/tasks/{id}/events` for a task's live output and
//! `GET /v1/tasks/{id}` for its diff; with a token typed in (kept in sessionStorage) it can also
//! dispatch and cancel. It uses `fetch()` streams rather than `EventSource`, so the token travels
//! in the `Authorization` header as on gRPC — never in a URL, where logs and history keep it.
//! These assets are open (they hold no data); every request they make is authenticated.

use axum::Router;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{HeaderValue, header};

const INDEX_HTML: &str = include_str!("dashboard/index.html");
const APP_JS: &str = include_str!("dashboard/app.js");
const STYLE_CSS: &str = include_str!("dashboard/style.css");

/// Paths of the dashboard's assets (open without a token).
pub fn is_asset(path: &str) -> bool {
    path == "/" || path.starts_with("/dashboard/")
}

/// `/`, `/dashboard/app.js`, `/dashboard/style.css`.
pub fn router() -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { asset(INDEX_HTML, "text/html; charset=utf-8") }),
        )
        .route(
            "/dashboard/app.js",
            get(|| async { asset(APP_JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/dashboard/style.css",
            get(|| async { asset(STYLE_CSS, "text/css; charset=utf-8") }),
        )
}

/// An embedded asset; the policy forbids anything but this origin (no CDN, no inline script).
fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}
