//! Anthropic `POST /v1/messages`: an SSE event stream (`message_start`, `content_block_start`,
//! `content_block_delta`…, `content_block_stop`, `message_delta`, `message_stop`) or one message
//! object, both with `usage`.

use super::edit::Message;
use super::state::{Api, SimState};
use super::wire;
use axum::extract::{OriginalUri, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Handles a messages request.
pub async fn messages(
    State(state): State<SimState>,
    OriginalUri(uri): OriginalUri,
    body: axum::body::Bytes,
) -> Response {
    let Some((req, model, stream)) = wire::parse_request(&body, false) else {
        return error(StatusCode::BAD_REQUEST);
    };
    let mut msgs = Vec::new();
    let system = wire::content_text(req.get("system"));
    if !system.is_empty() {
        msgs.push(Message::new("system", system));
    }
    msgs.extend(wire::messages(req.get("messages")));
    let plan = state.plan(Api::Anthropic, uri.path(), &model, stream, &msgs);
    if let Some(resp) = wire::gate(&plan, error).await {
        return resp;
    }
    let id = format!("msg_sim_{}", plan.seq);
    if !stream {
        return wire::json(
            &plan,
            json!({
                "id": id, "type": "message", "role": "assistant", "model": plan.model,
                "content": [{"type": "text", "text": plan.text}],
                "stop_reason": "end_turn", "stop_sequence": null,
                "usage": {"input_tokens": plan.prompt_tokens, "output_tokens": plan.completion_tokens},
            }),
        );
    }
    let mut frames = vec![
        wire::sse_event(
            "message_start",
            &json!({"type": "message_start", "message": {
                "id": id, "type": "message", "role": "assistant", "model": plan.model,
                "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": plan.prompt_tokens, "output_tokens": 1}}}),
        ),
        wire::sse_event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": 0,
                    "content_block": {"type": "text", "text": ""}}),
        ),
        wire::sse_event("ping", &json!({"type": "ping"})),
    ];
    for c in &plan.chunks {
        frames.push(wire::sse_event(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "text_delta", "text": c}}),
        ));
    }
    frames.push(wire::sse_event(
        "content_block_stop",
        &json!({"type": "content_block_stop", "index": 0}),
    ));
    frames.push(wire::sse_event(
        "message_delta",
        &json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null},
                "usage": {"output_tokens": plan.completion_tokens}}),
    ));
    frames.push(wire::sse_event(
        "message_stop",
        &json!({"type": "message_stop"}),
    ));
    wire::stream(&plan, "text/event-stream", frames)
}

/// An error in Anthropic's body format.
fn error(status: StatusCode) -> Response {
    let kind = match status.as_u16() {
        400 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        // Anthropic's "overloaded" is 529; a 503 is a plain unavailable service.
        529 => "overloaded_error",
        _ => "api_error",
    };
    let message = format!("llm-sim injected HTTP {}", status.as_u16());
    (
        status,
        axum::Json(json!({"type": "error", "error": {"type": kind, "message": message}})),
    )
        .into_response()
}
