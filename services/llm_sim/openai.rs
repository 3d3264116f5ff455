//! OpenAI `POST /v1/chat/completions` (and `/chat/completions`): SSE chunks ending with
//! `data: [DONE]`, or one JSON completion with `usage`.

use super::state::{Api, Plan, SimState};
use super::wire;
use axum::extract::{OriginalUri, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// Handles a chat completion request.
pub async fn chat_completions(
    State(state): State<SimState>,
    OriginalUri(uri): OriginalUri,
    body: axum::body::Bytes,
) -> Response {
    let Some((req, model, stream)) = wire::parse_request(&body, false) else {
        return wire::bad_request("body is not JSON");
    };
    let include_usage = req
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let messages = wire::messages(req.get("messages"));
    let plan = state.plan(Api::Openai, uri.path(), &model, stream, &messages);
    if let Some(resp) = wire::gate(&plan, error).await {
        return resp;
    }
    let id = format!("chatcmpl-sim-{}", plan.seq);
    let created = wire::unix_now();
    if !stream {
        return wire::json(
            &plan,
            json!({
                "id": id, "object": "chat.completion", "created": created, "model": plan.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": plan.text},
                             "finish_reason": "stop"}],
                "usage": usage(&plan),
            }),
        );
    }
    let chunk = |delta: Value, finish: Value| {
        json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": plan.model,
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    let mut frames = vec![wire::sse_data(&chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    ))];
    for c in &plan.chunks {
        frames.push(wire::sse_data(&chunk(json!({"content": c}), Value::Null)));
    }
    frames.push(wire::sse_data(&chunk(json!({}), json!("stop"))));
    if include_usage {
        frames.push(wire::sse_data(&json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": plan.model,
            "choices": [], "usage": usage(&plan),
        })));
    }
    frames.push(axum::body::Bytes::from_static(b"data: [DONE]\n\n"));
    wire::stream(&plan, "text/event-stream", frames)
}

fn usage(plan: &Plan) -> Value {
    json!({"prompt_tokens": plan.prompt_tokens, "completion_tokens": plan.completion_tokens,
           "total_tokens": plan.prompt_tokens + plan.completion_tokens})
}

/// An error in OpenAI's body format.
fn error(status: StatusCode) -> Response {
    let (kind, code) = match status.as_u16() {
        401 => ("invalid_request_error", "invalid_api_key"),
        404 => ("invalid_request_error", "model_not_found"),
        429 => ("rate_limit_exceeded", "rate_limit_exceeded"),
        400 => ("invalid_request_error", "bad_request"),
        503 => ("server_error", "service_unavailable"),
        _ => ("server_error", "internal_error"),
    };
    // Real OpenAI says "Incorrect API key provided" on 401; litellm keys on that text.
    let message = match status.as_u16() {
        401 => "Incorrect API key provided: llm-sim injected HTTP 401".to_string(),
        c => format!("llm-sim injected HTTP {c}"),
    };
    (
        status,
        axum::Json(json!({"error": {"message": message, "type": kind, "code": code}})),
    )
        .into_response()
}
