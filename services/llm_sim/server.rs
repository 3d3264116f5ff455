//! The HTTP router: provider API routes plus the `/_sim/*` control and observability routes.
//!
//! Control routes: `GET /_sim/usage` (per-model counters), `GET /_sim/requests` (recent request
//! log), `GET|POST /_sim/script` (read or replace the fault script; the body is YAML or JSON),
//! `POST /_sim/reset` (clear counters and log, back to the startup script), `GET /_sim/health`.

use super::script::Script;
use super::state::SimState;
use super::{anthropic, ollama, openai};
use axum::Router;
use axum::extract::{OriginalUri, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

/// Builds the simulator's router over `state`.
pub fn router(state: SimState) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/chat/completions", post(openai::chat_completions))
        .route("/api/generate", post(ollama::generate))
        .route("/api/chat", post(ollama::chat))
        .route("/api/show", post(ollama::show))
        .route("/api/tags", get(ollama::tags))
        .route("/api/version", get(ollama::version))
        .route("/v1/messages", post(anthropic::messages))
        .route("/_sim/usage", get(usage))
        .route("/_sim/requests", get(requests))
        .route("/_sim/script", get(get_script).post(set_script))
        .route("/_sim/reset", post(reset))
        .route("/_sim/health", get(|| async { "ok" }))
        .fallback(unknown)
        .with_state(state)
}

async fn usage(State(state): State<SimState>) -> Response {
    axum::Json(state.usage()).into_response()
}

async fn requests(State(state): State<SimState>) -> Response {
    axum::Json(state.requests()).into_response()
}

async fn get_script(State(state): State<SimState>) -> Response {
    let (script, remaining) = state.script();
    axum::Json(json!({"script": script, "remaining": remaining})).into_response()
}

async fn set_script(State(state): State<SimState>, body: String) -> Response {
    match Script::parse(&body) {
        Ok(script) => {
            tracing::info!(rules = script.rules.len(), "script replaced");
            state.set_script(script);
            get_script(State(state)).await
        }
        Err(e) => (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": e.to_string()})),
        )
            .into_response(),
    }
}

async fn reset(State(state): State<SimState>) -> Response {
    state.reset();
    axum::Json(json!({"reset": true})).into_response()
}

/// Logs routes the simulator does not serve, so a new client call shows up in the log.
async fn unknown(method: Method, OriginalUri(uri): OriginalUri) -> Response {
    tracing::warn!(%method, path = uri.path(), "unknown route");
    (
        StatusCode::NOT_FOUND,
        axum::Json(json!({"error": format!("llm-sim does not serve {method} {}", uri.path())})),
    )
        .into_response()
}
