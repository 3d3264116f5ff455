//! Ollama: `POST /api/generate` (prompt-based; litellm's `ollama/<m>`), `POST /api/chat`
//! (`ollama_chat/<m>`), both NDJSON streams or one JSON object with `prompt_eval_count` /
//! `eval_count`; plus the metadata routes litellm may ask for (`/api/show`, `/api/tags`,
//! `/api/version`).

use super::edit::Message;
use super::state::{Api, Plan, SimState};
use super::wire;
use axum::extract::{OriginalUri, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// Context length reported by `/api/show`.
const CONTEXT_LENGTH: u64 = 32768;

/// Handles `/api/generate`.
pub async fn generate(
    State(state): State<SimState>,
    OriginalUri(uri): OriginalUri,
    body: axum::body::Bytes,
) -> Response {
    let Some((req, model, stream)) = wire::parse_request(&body, true) else {
        return error(StatusCode::BAD_REQUEST);
    };
    let mut messages = Vec::new();
    if let Some(system) = req.get("system").and_then(Value::as_str) {
        messages.push(Message::new("system", system));
    }
    messages.extend(split_prompt(
        req.get("prompt").and_then(Value::as_str).unwrap_or(""),
    ));
    let plan = state.plan(Api::Ollama, uri.path(), &model, stream, &messages);
    if let Some(resp) = wire::gate(&plan, error).await {
        return resp;
    }
    respond(&plan, stream, |text| json!({"response": text}))
}

/// Handles `/api/chat`.
pub async fn chat(
    State(state): State<SimState>,
    OriginalUri(uri): OriginalUri,
    body: axum::body::Bytes,
) -> Response {
    let Some((req, model, stream)) = wire::parse_request(&body, true) else {
        return error(StatusCode::BAD_REQUEST);
    };
    let messages = wire::messages(req.get("messages"));
    let plan = state.plan(Api::Ollama, uri.path(), &model, stream, &messages);
    if let Some(resp) = wire::gate(&plan, error).await {
        return resp;
    }
    respond(
        &plan,
        stream,
        |text| json!({"message": {"role": "assistant", "content": text}}),
    )
}

/// Builds the NDJSON stream or the single object; `part` makes the API-specific text field.
fn respond(plan: &Plan, stream: bool, part: impl Fn(&str) -> Value) -> Response {
    let created_at = chrono::Utc::now().to_rfc3339();
    let with = |mut v: Value, extra: Value| {
        if let (Some(obj), Some(extra)) = (v.as_object_mut(), extra.as_object()) {
            for (k, x) in extra {
                obj.insert(k.clone(), x.clone());
            }
        }
        v
    };
    let done = json!({
        "model": plan.model, "created_at": created_at, "done": true, "done_reason": "stop",
        "total_duration": 1_000_000u64, "load_duration": 1000u64,
        "prompt_eval_count": plan.prompt_tokens, "prompt_eval_duration": 1000u64,
        "eval_count": plan.completion_tokens, "eval_duration": 1000u64,
    });
    if !stream {
        return wire::json(plan, with(part(&plan.text), done));
    }
    let mut frames: Vec<_> = plan
        .chunks
        .iter()
        .map(|c| {
            wire::ndjson(&with(
                part(c),
                json!({"model": plan.model, "created_at": created_at, "done": false}),
            ))
        })
        .collect();
    frames.push(wire::ndjson(&with(part(""), done)));
    wire::stream(plan, "application/x-ndjson", frames)
}

/// Splits litellm's flattened Ollama prompt (`### System:` / `### User:` / `### Assistant:`
/// sections) back into messages.
pub fn split_prompt(prompt: &str) -> Vec<Message> {
    let mut out: Vec<Message> = Vec::new();
    let mut role: Option<&str> = None;
    let mut buf = String::new();
    for line in prompt.split_inclusive('\n') {
        let header = match line.trim_end() {
            "### System:" => Some("system"),
            "### User:" => Some("user"),
            "### Assistant:" => Some("assistant"),
            _ => None,
        };
        if let Some(next) = header {
            if let Some(r) = role {
                out.push(Message::new(
                    r,
                    buf.trim_end_matches('\n').to_string() + "\n",
                ));
            } else if !buf.trim().is_empty() {
                out.push(Message::new("user", buf.clone()));
            }
            buf.clear();
            role = Some(next);
        } else {
            buf.push_str(line);
        }
    }
    match role {
        Some(r) => out.push(Message::new(
            r,
            buf.trim_end_matches('\n').to_string() + "\n",
        )),
        None if !buf.trim().is_empty() => out.push(Message::new("user", buf)),
        None => {}
    }
    // litellm ends the prompt with an empty assistant turn to answer.
    if out
        .last()
        .is_some_and(|m| m.role == "assistant" && m.content.trim().is_empty())
    {
        out.pop();
    }
    out
}

/// `POST /api/show`: model details with a context length.
pub async fn show(body: axum::body::Bytes) -> Response {
    let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let name = req
        .get("name")
        .or_else(|| req.get("model"))
        .and_then(Value::as_str)
        .unwrap_or("sim");
    tracing::info!(model = name, "ollama show");
    axum::Json(json!({
        "modelfile": format!("FROM {name}\n"), "parameters": "", "template": "{{ .Prompt }}",
        "details": {"format": "gguf", "family": "llama", "parameter_size": "7B",
                    "quantization_level": "Q4_0"},
        "model_info": {"general.architecture": "llama", "llama.context_length": CONTEXT_LENGTH},
        "capabilities": ["completion"],
    }))
    .into_response()
}

/// `GET /api/tags`: the models the script names exactly plus those seen so far.
pub async fn tags(State(state): State<SimState>) -> Response {
    tracing::info!("ollama tags");
    let models: Vec<Value> = state
        .known_models()
        .into_iter()
        .map(|m| {
            json!({"name": m, "model": m, "modified_at": "2026-01-01T00:00:00Z", "size": 0,
                        "digest": "sim", "details": {"format": "gguf", "family": "llama"}})
        })
        .collect();
    axum::Json(json!({ "models": models })).into_response()
}

/// `GET /api/version`.
pub async fn version() -> Response {
    axum::Json(json!({"version": "0.6.0-llm-sim"})).into_response()
}

/// An error in Ollama's body format.
fn error(status: StatusCode) -> Response {
    let message = match status.as_u16() {
        404 => "model not found, try pulling it first (llm-sim injected HTTP 404)".to_string(),
        c => format!("llm-sim injected HTTP {c}"),
    };
    (status, axum::Json(json!({ "error": message }))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flattened_prompt_splits_back_into_messages() {
        let p = "### System:\nbe good\n\n### User:\nfiles here\n\n### Assistant:\nOk.\n\n### User:\ndo it\n\n### Assistant:\n";
        let m = split_prompt(p);
        let roles: Vec<&str> = m.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["system", "user", "assistant", "user"]);
        assert_eq!(m[3].content, "do it\n");
        assert_eq!(split_prompt("plain")[0], Message::new("user", "plain"));
    }
}
