//! The real `pas llm-sim` binary on 127.0.0.1:0, driven over HTTP with reqwest: every API in
//! stream and non-stream mode with its wire format, scripted faults, runtime script changes and
//! usage counters.

use crate::common;

use common::Sim;
use futures::StreamExt;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const DIFF_SYSTEM: &str = "Act as an expert software developer.\nDescribe each change with a *SEARCH/REPLACE block* per the examples below.";
const WHOLE_SYSTEM: &str =
    "Act as an expert software developer.\nYou MUST use this *file listing* format:";
const FILE: &str = "def add(a, b):\n    return a + b\n";

fn files_message() -> String {
    format!(
        "I have *added these files to the chat* so you can go ahead and edit them.\n\n*Trust this message as the true contents of these files!*\nAny other messages in the chat may contain outdated versions of the files' contents.\n\nm.py\n```\n{FILE}```\n"
    )
}

fn chat_messages(system: &str, task: &str) -> Value {
    json!([
        {"role": "system", "content": system},
        {"role": "user", "content": files_message()},
        {"role": "assistant", "content": "Ok, any changes I propose will be to those files."},
        {"role": "user", "content": task},
    ])
}

fn openai_body(model: &str, stream: bool) -> Value {
    json!({"model": model, "stream": stream, "stream_options": {"include_usage": true},
           "messages": chat_messages(DIFF_SYSTEM, "Add docstrings to all functions")})
}

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

/// Sends a POST and returns status and full body text.
async fn post(sim: &Sim, path: &str, body: &Value) -> (u16, String) {
    let resp = client()
        .post(sim.url(path))
        .json(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {path}: {e}\n{}", sim.log_text()));
    let status = resp.status().as_u16();
    (status, resp.text().await.expect("body"))
}

/// SSE `data:` payloads in order.
fn sse_data(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(str::to_string)
        .collect()
}

const DOCSTRING_EDIT: &str = "<<<<<<< SEARCH\ndef add(a, b):\n    return a + b\n=======\ndef add(a, b):\n    \"\"\"Add.\"\"\"\n    return a + b\n>>>>>>> REPLACE";

#[tokio::test]
async fn openai_stream_and_non_stream_wire_format() {
    let sim = Sim::start();
    for path in ["/v1/chat/completions", "/chat/completions"] {
        let (status, body) = post(&sim, path, &openai_body("gpt-sim", true)).await;
        assert_eq!(status, 200, "{body}");
        let data = sse_data(&body);
        assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
        let chunks: Vec<Value> = data[..data.len() - 1]
            .iter()
            .map(|d| serde_json::from_str(d).expect("chunk JSON"))
            .collect();
        assert!(
            chunks
                .iter()
                .all(|c| c["object"] == "chat.completion.chunk")
        );
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        let text: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert!(text.contains(DOCSTRING_EDIT), "{text}");
        assert!(chunks.len() > 4, "the reply is streamed in several chunks");
        let finish: Vec<&Value> = chunks
            .iter()
            .filter(|c| c["choices"][0]["finish_reason"] == "stop")
            .collect();
        assert_eq!(finish.len(), 1);
        let usage = &chunks.last().unwrap()["usage"];
        assert!(usage["prompt_tokens"].as_u64().unwrap() > 0);
        assert_eq!(
            usage["completion_tokens"].as_u64().unwrap(),
            (text.chars().count() as u64).div_ceil(4)
        );

        let (status, body) = post(&sim, path, &openai_body("gpt-sim", false)).await;
        assert_eq!(status, 200);
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["choices"][0]["message"]["role"], "assistant");
        assert_eq!(v["choices"][0]["message"]["content"], text);
        assert_eq!(
            v["usage"]["total_tokens"].as_u64().unwrap(),
            v["usage"]["prompt_tokens"].as_u64().unwrap()
                + v["usage"]["completion_tokens"].as_u64().unwrap()
        );
    }
}

#[tokio::test]
async fn whole_format_and_commit_message_replies() {
    let sim = Sim::start();
    let body = json!({"model": "m", "messages": chat_messages(WHOLE_SYSTEM, "Add a header")});
    let (_, text) = post(&sim, "/v1/chat/completions", &body).await;
    let v: Value = serde_json::from_str(&text).unwrap();
    let content = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(
        content
            .contains("m.py\n```\n# llm-sim: Add a header\ndef add(a, b):\n    return a + b\n```"),
        "{content}"
    );
    let body = json!({"model": "m", "messages": [
        {"role": "system", "content": "You are an expert software engineer that generates concise, one-line Git commit messages based on the provided diffs."},
        {"role": "user", "content": "diff --git a/m.py b/m.py\n--- a/m.py\n+++ b/m.py\n@@ -1 +1,2 @@\n+x\n"}]});
    let (_, text) = post(&sim, "/v1/chat/completions", &body).await;
    let v: Value = serde_json::from_str(&text).unwrap();
    let msg = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(msg.lines().count(), 1, "{msg}");
    assert!(msg.contains("m.py"));
    let log = sim.requests().await;
    let kinds: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["edit_whole", "commit_message"]);
}

/// What litellm sends for `ollama/<m>`: the messages flattened into one prompt.
fn ollama_prompt() -> String {
    format!(
        "### System:\n{DIFF_SYSTEM}\n\n### User:\n{}\n\n### Assistant:\nOk, any changes I propose will be to those files.\n\n### User:\nAdd docstrings to all functions\n\n",
        files_message()
    )
}

fn ndjson(body: &str) -> Vec<Value> {
    body.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("NDJSON line"))
        .collect()
}

#[tokio::test]
async fn ollama_generate_and_chat_stream_and_non_stream() {
    let sim = Sim::start();
    // /api/generate, streamed (Ollama's default).
    let (status, body) = post(
        &sim,
        "/api/generate",
        &json!({"model": "qwen-sim", "prompt": ollama_prompt()}),
    )
    .await;
    assert_eq!(status, 200);
    let lines = ndjson(&body);
    assert!(lines.len() > 3);
    let (last, parts) = lines.split_last().unwrap();
    assert!(
        parts
            .iter()
            .all(|l| l["done"] == false && l["model"] == "qwen-sim")
    );
    let text: String = parts
        .iter()
        .map(|l| l["response"].as_str().unwrap())
        .collect();
    assert!(text.contains(DOCSTRING_EDIT), "{text}");
    assert_eq!(last["done"], true);
    assert!(last["prompt_eval_count"].as_u64().unwrap() > 0);
    assert_eq!(
        last["eval_count"].as_u64().unwrap(),
        (text.chars().count() as u64).div_ceil(4)
    );

    let (_, body) = post(
        &sim,
        "/api/generate",
        &json!({"model": "qwen-sim", "prompt": ollama_prompt(), "stream": false}),
    )
    .await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (v["done"].as_bool(), v["response"].as_str()),
        (Some(true), Some(text.as_str()))
    );
    assert!(v["eval_count"].as_u64().unwrap() > 0);

    // /api/chat.
    let msgs = chat_messages(DIFF_SYSTEM, "Add docstrings to all functions");
    let (_, body) = post(
        &sim,
        "/api/chat",
        &json!({"model": "qwen-sim", "messages": msgs, "stream": true}),
    )
    .await;
    let lines = ndjson(&body);
    let (last, parts) = lines.split_last().unwrap();
    let chat_text: String = parts
        .iter()
        .map(|l| l["message"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(chat_text, text);
    assert_eq!(last["done"], true);
    assert!(last["prompt_eval_count"].as_u64().unwrap() > 0);
    let (_, body) = post(
        &sim,
        "/api/chat",
        &json!({"model": "qwen-sim", "messages": msgs, "stream": false}),
    )
    .await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["message"]["content"].as_str(), Some(text.as_str()));
    assert!(v["eval_count"].as_u64().unwrap() > 0);

    // Metadata routes litellm may call.
    let (status, body) = post(&sim, "/api/show", &json!({"name": "qwen-sim"})).await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(v["model_info"]["llama.context_length"].as_u64().unwrap() > 0);
    let tags = sim.get_json("/api/tags").await;
    assert!(
        tags["models"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == "qwen-sim")
    );
}

#[tokio::test]
async fn anthropic_event_stream_and_non_stream() {
    let sim = Sim::start();
    let body = |stream: bool| {
        json!({"model": "claude-sim", "max_tokens": 4096, "stream": stream,
               "system": [{"type": "text", "text": DIFF_SYSTEM}],
               "messages": [
                   {"role": "user", "content": [{"type": "text", "text": files_message()}]},
                   {"role": "assistant", "content": "Ok."},
                   {"role": "user", "content": "Add docstrings to all functions"}]})
    };
    let (status, text) = post(&sim, "/v1/messages", &body(true)).await;
    assert_eq!(status, 200);
    let events: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    let data: Vec<Value> = sse_data(&text)
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(events.len(), data.len());
    for (e, d) in events.iter().zip(&data) {
        assert_eq!(d["type"], *e, "event name matches the data type");
    }
    assert_eq!(events[0], "message_start");
    assert_eq!(events[1], "content_block_start");
    assert_eq!(
        &events[events.len() - 3..],
        ["content_block_stop", "message_delta", "message_stop"]
    );
    assert!(
        data[0]["message"]["usage"]["input_tokens"]
            .as_u64()
            .unwrap()
            > 0
    );
    let reply: String = data
        .iter()
        .filter(|d| d["type"] == "content_block_delta")
        .map(|d| d["delta"]["text"].as_str().unwrap())
        .collect();
    assert!(reply.contains(DOCSTRING_EDIT), "{reply}");
    let delta = &data[data.len() - 2];
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    assert_eq!(
        delta["usage"]["output_tokens"].as_u64().unwrap(),
        (reply.chars().count() as u64).div_ceil(4)
    );

    let (_, text) = post(&sim, "/v1/messages", &body(false)).await;
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["type"], "message");
    assert_eq!(v["content"][0]["text"].as_str(), Some(reply.as_str()));
    assert!(v["usage"]["output_tokens"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn http_faults_use_each_apis_error_format() {
    let sim = Sim::start_with_script(
        "rules:\n  - {model: e500, fault: http_500}\n  - {model: e503, fault: http_503}\n  - {model: e429, fault: http_429}\n  - {model: e401, fault: http_401}\n  - {model: e404, fault: http_404}\n",
    );
    for code in [500u16, 503, 429, 401, 404] {
        let model = format!("e{code}");
        let (status, body) = post(
            &sim,
            "/v1/chat/completions",
            &json!({"model": model, "messages": [], "stream": true}),
        )
        .await;
        assert_eq!(status, code);
        let v: Value = serde_json::from_str(&body).unwrap();
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains(&code.to_string())
        );
        let (status, body) = post(
            &sim,
            "/api/generate",
            &json!({"model": model, "prompt": "x"}),
        )
        .await;
        assert_eq!(status, code);
        assert!(serde_json::from_str::<Value>(&body).unwrap()["error"].is_string());
        let (status, body) = post(
            &sim,
            "/v1/messages",
            &json!({"model": model, "messages": []}),
        )
        .await;
        assert_eq!(status, code);
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["type"], "error");
        assert!(v["error"]["type"].as_str().unwrap().ends_with("_error"));
    }
    let usage = sim.usage().await;
    assert_eq!(usage["e500"]["requests"], 3);
    assert_eq!(usage["e500"]["failures_injected"], 3);
    assert_eq!(usage["e500"]["completion_tokens"], 0);
}

#[tokio::test]
async fn drop_cuts_the_connection_and_hang_never_answers() {
    let sim = Sim::start_with(&[
        "--model-fault",
        "dropper=drop",
        "--model-fault",
        "hanger=hang",
    ]);
    // Streamed: headers and some chunks arrive, then the body breaks.
    let resp = client()
        .post(sim.url("/v1/chat/completions"))
        .json(&openai_body("dropper", true))
        .send()
        .await
        .expect("headers arrive");
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    let mut got = Vec::new();
    let mut error = None;
    while let Some(item) = stream.next().await {
        match item {
            Ok(b) => got.extend_from_slice(&b),
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    assert!(
        error.is_some(),
        "the stream must break, got {} bytes",
        got.len()
    );
    let got = String::from_utf8_lossy(&got);
    assert!(got.contains("data: "), "part of the stream arrived first");
    assert!(!got.contains("[DONE]"));
    // Non-streamed: the connection closes before a complete response.
    let sent = client()
        .post(sim.url("/v1/chat/completions"))
        .json(&openai_body("dropper", false))
        .send()
        .await;
    let broken = match sent {
        Err(e) => !e.is_timeout(),
        Ok(resp) => resp.bytes().await.is_err(),
    };
    assert!(broken, "a dropped non-streamed reply must not arrive whole");

    // Hang: nothing within the client's timeout, on every API.
    for (path, body) in [
        ("/v1/chat/completions", openai_body("hanger", true)),
        ("/api/generate", json!({"model": "hanger", "prompt": "x"})),
        (
            "/v1/messages",
            json!({"model": "hanger", "messages": [], "stream": true}),
        ),
    ] {
        let err = client()
            .post(sim.url(path))
            .timeout(Duration::from_millis(700))
            .json(&body)
            .send()
            .await
            .expect_err("a hung request must not be answered");
        assert!(err.is_timeout(), "{path}: {err}");
    }
    // The simulator still serves others meanwhile.
    let (status, _) = post(&sim, "/v1/chat/completions", &openai_body("fine", false)).await;
    assert_eq!(status, 200);
    let usage = sim.usage().await;
    assert_eq!(usage["hanger"]["requests"], 3);
    assert_eq!(usage["dropper"]["failures_injected"], 2);
}

#[tokio::test]
async fn content_faults_malformed_no_match_and_empty() {
    let sim = Sim::start_with_script(
        r#"{"rules": [{"model": "bad-*", "fault": "malformed"}, {"model": "nomatch", "fault": "no_match"}, {"model": "empty", "fault": "empty"}]}"#,
    );
    let content = |body: String| -> String {
        let v: Value = serde_json::from_str(&body).unwrap();
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (_, body) = post(&sim, "/v1/chat/completions", &openai_body("bad-1", false)).await;
    let text = content(body);
    assert!(
        text.contains("<<<<<<< SEARCH") && !text.contains(">>>>>>> REPLACE"),
        "{text}"
    );
    let (_, body) = post(&sim, "/v1/chat/completions", &openai_body("nomatch", false)).await;
    let text = content(body);
    let search = text
        .split("<<<<<<< SEARCH\n")
        .nth(1)
        .unwrap()
        .split("=======")
        .next()
        .unwrap();
    assert!(
        !FILE.contains(search.trim()),
        "SEARCH must not match: {search}"
    );
    let (status, body) = post(&sim, "/v1/chat/completions", &openai_body("empty", true)).await;
    assert_eq!(status, 200);
    let text: String = sse_data(&body)
        .iter()
        .filter(|d| *d != "[DONE]")
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    assert_eq!(text, "");
}

#[tokio::test]
async fn runtime_script_changes_take_effect_and_fail_next_n_recovers() {
    let sim = Sim::start();
    let (status, _) = post(&sim, "/v1/chat/completions", &openai_body("primary", false)).await;
    assert_eq!(status, 200);
    sim.set_script("rules:\n  - model: 'prim*'\n    fault: http_503\n    times: 3\n")
        .await;
    let script = sim.get_json("/_sim/script").await;
    assert_eq!(script["remaining"][0], 3);
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(
            post(&sim, "/v1/chat/completions", &openai_body("primary", false))
                .await
                .0,
        );
    }
    assert_eq!(statuses, [503, 503, 503, 200, 200]);
    assert_eq!(sim.get_json("/_sim/script").await["remaining"][0], 0);
    // Latency applies before the first byte.
    sim.set_script("default: {latency_ms: 400}").await;
    let t = Instant::now();
    let (status, _) = post(
        &sim,
        "/api/chat",
        &json!({"model": "any", "messages": [], "stream": false}),
    )
    .await;
    assert_eq!(status, 200);
    assert!(t.elapsed() >= Duration::from_millis(400));
    // A bad script is refused and the old one stays.
    let resp = client()
        .post(sim.url("/_sim/script"))
        .body("rules: [{model: x, fault: explode}]")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(
        sim.get_json("/_sim/script").await["script"]["default"]["latency_ms"],
        400
    );
}

#[tokio::test]
async fn usage_counters_request_log_and_reset() {
    let sim = Sim::start_with(&["--model-fault", "flaky=http_429x1"]);
    for model in ["flaky", "flaky", "steady"] {
        post(&sim, "/v1/chat/completions", &openai_body(model, true)).await;
    }
    let usage = sim.usage().await;
    assert_eq!(usage["flaky"]["requests"], 2);
    assert_eq!(usage["flaky"]["failures_injected"], 1);
    assert_eq!(usage["steady"]["requests"], 1);
    assert_eq!(usage["steady"]["failures_injected"], 0);
    let prompt = usage["steady"]["prompt_tokens"].as_u64().unwrap();
    assert!(
        prompt > 100,
        "prompt tokens are estimated from the prompt: {prompt}"
    );
    assert!(usage["steady"]["completion_tokens"].as_u64().unwrap() > 10);
    let log = sim.requests().await;
    let log = log.as_array().unwrap();
    assert_eq!(log.len(), 3);
    assert_eq!(log[0]["fault"], "http_429");
    assert_eq!(log[1]["fault"], "none");
    assert_eq!(log[2]["model"], "steady");
    assert_eq!(log[2]["api"], "openai");
    assert_eq!(log[2]["stream"], true);
    assert!(
        log[2].get("messages").is_none(),
        "no prompt bodies in the log"
    );

    let resp = client().post(sim.url("/_sim/reset")).send().await.unwrap();
    assert!(resp.status().is_success());
    assert_eq!(sim.usage().await, json!({}));
    assert_eq!(sim.requests().await, json!([]));
    // Reset restores the startup script, counters included.
    let (status, _) = post(&sim, "/v1/chat/completions", &openai_body("flaky", false)).await;
    assert_eq!(status, 429);
}

#[tokio::test]
async fn sigterm_stops_the_simulator_even_with_a_hung_request_open() {
    let mut sim = Sim::start_with(&["--fault", "hang"]);
    let url = sim.url("/v1/chat/completions");
    let hung = tokio::spawn(async move {
        client()
            .post(url)
            .json(&openai_body("any", true))
            .send()
            .await
    });
    // Wait until the simulator has the request.
    for _ in 0..100 {
        if sim.usage().await["any"]["requests"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(sim.usage().await["any"]["requests"], 1);
    let status = sim.terminate();
    assert!(status.success(), "{status:?}");
    assert!(
        hung.await.unwrap().is_err(),
        "the hung request ends with the server"
    );
}
