//! The protobuf JSON mapping of the `pas.v1` messages — exactly what grpcurl prints and accepts
//! (lowerCamelCase names, enums by name, 64-bit integers as strings, default values left out) —
//! through prost-reflect and the descriptor set the build already writes for gRPC reflection.
//! Nothing here knows a field: a message is re-read as a `DynamicMessage` of its descriptor.

use crate::contract::FILE_DESCRIPTOR_SET;
use prost_reflect::{
    DescriptorPool, DeserializeOptions, DynamicMessage, Kind, MessageDescriptor, SerializeOptions,
};
use std::sync::LazyLock;

/// The descriptors of `proto/pas/v1`, decoded once.
static POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
    DescriptorPool::decode(FILE_DESCRIPTOR_SET)
        .expect("the descriptor set built by build.rs decodes")
});

/// Why a JSON document is not the message it should be. The message names the field (its JSON
/// path), like the gRPC INVALID_ARGUMENT messages do.
#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    /// The body is not JSON, or a field has the wrong type or an unknown name.
    #[error("{path}: {message}")]
    Field {
        /// Where in the document (`files[2]`, `strategy`, `.` for the document itself).
        path: String,
        /// What is wrong there.
        message: String,
    },
}

/// The descriptor of `M` (every generated message implements `prost::Name`).
fn descriptor<M: prost::Name>() -> MessageDescriptor {
    POOL.get_message_by_name(&M::full_name())
        .unwrap_or_else(|| panic!("{} is in the descriptor set", M::full_name()))
}

/// `message` as protobuf JSON (grpcurl's output).
pub fn to_json<M: prost::Message + prost::Name>(message: &M) -> serde_json::Value {
    let dynamic = DynamicMessage::decode(descriptor::<M>(), message.encode_to_vec().as_slice())
        .expect("a message re-decodes with its own descriptor");
    dynamic
        .serialize_with_options(serde_json::value::Serializer, &SerializeOptions::new())
        .expect("a protobuf message serializes to JSON")
}

/// `message` as one line of protobuf JSON.
pub fn to_json_line<M: prost::Message + prost::Name>(message: &M) -> String {
    to_json(message).to_string()
}

/// Parses `body` as the protobuf JSON of `M`: field names in lowerCamelCase or as in the proto,
/// enums by name or number, 64-bit integers as strings or numbers; unknown fields refused.
pub fn from_json<M: prost::Message + prost::Name + Default>(body: &[u8]) -> Result<M, JsonError> {
    use serde::de::DeserializeSeed;
    let mut de = serde_json::Deserializer::from_slice(body);
    let mut track = serde_path_to_error::Track::new();
    let parsed = Seed(descriptor::<M>())
        .deserialize(serde_path_to_error::Deserializer::new(&mut de, &mut track))
        .and_then(|m| de.end().map(|()| m));
    let dynamic = parsed.map_err(|e| {
        let path = track.path().to_string();
        JsonError::Field {
            path: if matches!(path.as_str(), "" | "." | "?") {
                "body".to_string()
            } else {
                path
            },
            message: e.to_string(),
        }
    })?;
    dynamic.transcode_to::<M>().map_err(|e| JsonError::Field {
        path: "body".into(),
        message: e.to_string(),
    })
}

/// Builds the JSON object of message `M` from URL query pairs: `name=value` for a field (either
/// spelling), repeated once per element for a repeated field (`states=RUNNING&states=QUEUED`);
/// booleans as `true`/`false`. Then parsed like a body ([`from_json`]).
pub fn from_query<M: prost::Message + prost::Name + Default>(
    pairs: &[(String, String)],
) -> Result<M, JsonError> {
    let desc = descriptor::<M>();
    let mut object = serde_json::Map::new();
    for (name, value) in pairs {
        let field = desc
            .get_field_by_json_name(name)
            .or_else(|| desc.get_field_by_name(name))
            .ok_or_else(|| JsonError::Field {
                path: name.clone(),
                message: format!("unknown query parameter (fields of {})", desc.full_name()),
            })?;
        let value = match field.kind() {
            Kind::Bool => match value.as_str() {
                "true" => serde_json::Value::Bool(true),
                "false" => serde_json::Value::Bool(false),
                _ => serde_json::Value::String(value.clone()),
            },
            _ => serde_json::Value::String(value.clone()),
        };
        let key = field.json_name().to_string();
        if field.is_list() {
            let entry = object
                .entry(key)
                .or_insert_with(|| serde_json::Value::Array(Vec::new()));
            if let serde_json::Value::Array(items) = entry {
                items.push(value);
            }
        } else if object.insert(key, value).is_some() {
            return Err(JsonError::Field {
                path: name.clone(),
                message: "given more than once".into(),
            });
        }
    }
    from_json(serde_json::Value::Object(object).to_string().as_bytes())
}

/// A `DeserializeSeed` for a message descriptor, so serde_path_to_error can track the path.
struct Seed(MessageDescriptor);

impl<'de> serde::de::DeserializeSeed<'de> for Seed {
    type Value = DynamicMessage;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<DynamicMessage, D::Error> {
        DynamicMessage::deserialize_with_options(self.0, d, &DeserializeOptions::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::v1::{
        DispatchRequest, ListTasksRequest, Strategy, TaskEvent, TaskResult, TaskState,
        task_event::Kind as EventKind,
    };

    #[test]
    fn output_is_grpcurls_mapping() {
        let event = TaskEvent {
            task_id: "t1".into(),
            seq: 3,
            timestamp_ms: 1_700_000_000_000,
            kind: Some(EventKind::Result(Box::new(TaskResult {
                status: TaskState::Succeeded as i32,
                cost_nanousd: 12,
                ..Default::default()
            }))),
        };
        assert_eq!(
            to_json(&event),
            serde_json::json!({
                "taskId": "t1",
                "seq": "3",
                "timestampMs": "1700000000000",
                "result": {"status": "TASK_STATE_SUCCEEDED", "costNanousd": "12"}
            })
        );
    }

    #[test]
    fn input_accepts_both_spellings_and_names_the_bad_field() {
        let req: DispatchRequest = from_json(
            br#"{"taskDescription":"x","files":["a.py"],"strategy":"STRATEGY_ROUND_ROBIN","dry_run":true,"preferFree":false}"#,
        )
        .unwrap();
        assert_eq!(req.task_description, "x");
        assert_eq!(req.strategy, Strategy::RoundRobin as i32);
        assert!(req.dry_run);
        assert_eq!(req.prefer_free, Some(false));
        let err = from_json::<DispatchRequest>(br#"{"files":["a",7]}"#).unwrap_err();
        assert!(err.to_string().starts_with("files[1]: "), "{err}");
        let err = from_json::<DispatchRequest>(br#"{"timeoutS":"soon"}"#).unwrap_err();
        assert!(err.to_string().starts_with("timeoutS: "), "{err}");
        let err = from_json::<DispatchRequest>(br#"{"nope":1}"#).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
        let err = from_json::<DispatchRequest>(b"{").unwrap_err();
        assert!(err.to_string().starts_with("body: "), "{err}");
    }

    #[test]
    fn query_pairs_fill_repeated_fields() {
        let pairs = |p: &[(&str, &str)]| -> Vec<(String, String)> {
            p.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        let req: ListTasksRequest = from_query(&pairs(&[
            ("states", "TASK_STATE_RUNNING"),
            ("states", "TASK_STATE_QUEUED"),
            ("page_size", "10"),
            ("runId", "r"),
        ]))
        .unwrap();
        assert_eq!(
            req.states,
            vec![TaskState::Running as i32, TaskState::Queued as i32]
        );
        assert_eq!((req.page_size, req.run_id.as_str()), (10, "r"));
        let err = from_query::<ListTasksRequest>(&pairs(&[("colour", "red")])).unwrap_err();
        assert!(err.to_string().starts_with("colour: unknown"), "{err}");
        let err = from_query::<ListTasksRequest>(&pairs(&[("pageSize", "many")])).unwrap_err();
        assert!(err.to_string().starts_with("pageSize: "), "{err}");
    }
}
