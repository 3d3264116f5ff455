//! A server-sent-events reader over a real HTTP response (reqwest): the manager's `/v1` streams
//! as a client sees them — events with their `id:`, `event:` and `data:`, and comment lines.

#![allow(dead_code)]

use futures::StreamExt;
use std::time::Duration;

/// One SSE item.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// An event: `id:` (if any), `event:` name (`message` when absent), `data:` lines joined.
    Event {
        id: Option<String>,
        name: String,
        data: String,
    },
    /// A comment line (`: text`), such as a keep-alive or heartbeat.
    Comment(String),
}

impl Item {
    /// The data as JSON (panics for a comment or non-JSON data).
    pub fn json(&self) -> serde_json::Value {
        match self {
            Item::Event { data, .. } => serde_json::from_str(data)
                .unwrap_or_else(|e| panic!("event data is not JSON ({e}): {self:?}")),
            Item::Comment(c) => panic!("a comment, not an event: {c}"),
        }
    }
}

/// Reads SSE items from a response body.
pub struct Reader {
    body: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buffer: String,
    pending: std::collections::VecDeque<Item>,
}

impl Reader {
    /// The reader of `response` (which must be `text/event-stream`).
    pub fn new(response: reqwest::Response) -> Self {
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        assert!(
            content_type.starts_with("text/event-stream"),
            "not an event stream: {} {content_type}",
            response.status()
        );
        Self {
            body: response.bytes_stream().boxed(),
            buffer: String::new(),
            pending: Default::default(),
        }
    }

    /// The next item; None at the end of the stream. Panics after `timeout` without one.
    pub async fn next_within(&mut self, timeout: Duration) -> Option<Item> {
        tokio::time::timeout(timeout, self.next())
            .await
            .unwrap_or_else(|_| panic!("no SSE item within {timeout:?}"))
    }

    /// The next item; None at the end of the stream.
    pub async fn next(&mut self) -> Option<Item> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                return Some(item);
            }
            match self.body.next().await {
                Some(Ok(chunk)) => {
                    self.buffer.push_str(&String::from_utf8_lossy(&chunk));
                    self.parse();
                }
                Some(Err(e)) => panic!("SSE body broke: {e}"),
                None => return None,
            }
        }
    }

    /// The next event (comments skipped); None at the end.
    pub async fn next_event(&mut self, timeout: Duration) -> Option<Item> {
        loop {
            match self.next_within(timeout).await? {
                Item::Comment(_) => continue,
                event => return Some(event),
            }
        }
    }

    /// Every event to the end of the stream (comments skipped).
    pub async fn events_to_end(&mut self, timeout: Duration) -> Vec<Item> {
        let mut events = Vec::new();
        while let Some(event) = self.next_event(timeout).await {
            events.push(event);
        }
        events
    }

    fn parse(&mut self) {
        while let Some(end) = self.buffer.find("\n\n") {
            let block: String = self.buffer.drain(..end + 2).collect();
            let (mut id, mut name, mut data) = (None, "message".to_string(), Vec::new());
            let mut any_field = false;
            for line in block.lines().filter(|l| !l.is_empty()) {
                if let Some(comment) = line.strip_prefix(':') {
                    self.pending
                        .push_back(Item::Comment(comment.trim().to_string()));
                    continue;
                }
                let (field, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                any_field = true;
                match field {
                    "id" => id = Some(value.to_string()),
                    "event" => name = value.to_string(),
                    "data" => data.push(value.to_string()),
                    _ => {}
                }
            }
            if any_field {
                self.pending.push_back(Item::Event {
                    id,
                    name,
                    data: data.join("\n"),
                });
            }
        }
    }
}
