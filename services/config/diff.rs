//! Which keys differ between two versions of the configuration file, as the dotted paths an
//! operator wrote (`limits.per_caller_max_tasks`, `cost_optimization.max_daily_spend`): what a
//! process that re-reads its file tells apart as applied now or read only at start-up.
//!
//! Both versions are compared as their serialized data model (defaults filled in), so a key
//! written out with its default value is no change, and a key removed is a change only when the
//! value in force changes. Maps (sections, `llms`, `capability_routing`) are compared key by key;
//! lists (`programmers`, `auth.open`) and plain values as a whole, named by their own key.

use super::model::PoolConfig;
use serde_json::Value;

/// The keys whose values differ between `old` and `new`, in the file's section order, each once.
pub fn changed_keys(old: &PoolConfig, new: &PoolConfig) -> Vec<String> {
    let (old, new) = (as_value(old), as_value(new));
    let mut changed = Vec::new();
    walk("", &old, &new, &mut changed);
    changed
}

/// Whether `key` is one of `keys` or under one of them (`limits.per_caller_burst` is under
/// `limits`; `escalation_x` is not under `escalation`).
pub fn under(key: &str, keys: &[&str]) -> bool {
    keys.iter()
        .any(|k| key == *k || (key.starts_with(k) && key.as_bytes().get(k.len()) == Some(&b'.')))
}

/// The keys of `settings` (a key and whether its setting differs between two versions) that
/// differ, in order: how a process's start-up settings name what changed.
pub fn differing(settings: impl IntoIterator<Item = (&'static str, bool)>) -> Vec<&'static str> {
    settings
        .into_iter()
        .filter_map(|(key, differs)| differs.then_some(key))
        .collect()
}

fn as_value(config: &PoolConfig) -> Value {
    // The model is plain data (strings, numbers, maps with string keys): it always serializes.
    serde_json::to_value(config).unwrap_or(Value::Null)
}

fn walk(path: &str, old: &Value, new: &Value, changed: &mut Vec<String>) {
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            // Keys of the old version first (its order), then keys only the new one has.
            let keys = a.keys().chain(b.keys().filter(|k| !a.contains_key(*k)));
            for key in keys {
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                let missing = Value::Null;
                walk(
                    &child,
                    a.get(key).unwrap_or(&missing),
                    b.get(key).unwrap_or(&missing),
                    changed,
                );
            }
        }
        (a, b) if a != b => changed.push(path.to_string()),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::path::Path;

    fn pool(yaml: &str) -> PoolConfig {
        Config::from_yaml(yaml, Path::new("test.yaml"))
            .unwrap_or_else(|e| panic!("{e}"))
            .pool
    }

    const BASE: &str = "\
pool_size: 2
programmers:
  - {id: a, port: 7001, primary_llm: ollama/qwen2.5-coder:7b, backup_llm: ollama/llama3:8b}
  - {id: b, port: 7002, primary_llm: ollama/qwen2.5-coder:7b, backup_llm: ollama/llama3:8b}
limits:
  per_caller_max_tasks: 10
";

    #[test]
    fn the_same_file_has_no_changes_and_a_default_written_out_is_none() {
        assert!(changed_keys(&pool(BASE), &pool(BASE)).is_empty());
        let with_default = format!("{BASE}  per_caller_burst: 2000\n");
        assert!(changed_keys(&pool(BASE), &pool(&with_default)).is_empty());
    }

    #[test]
    fn each_changed_key_is_named_by_its_dotted_path() {
        let new = BASE.replace("per_caller_max_tasks: 10", "per_caller_max_tasks: 3")
            + "manager:\n  port: 7100\n  max_queue: 9\ncost_optimization:\n  max_daily_spend_usd: 2.5\n";
        let mut keys = changed_keys(&pool(BASE), &pool(&new));
        keys.sort();
        assert_eq!(
            keys,
            [
                "cost_optimization.max_daily_spend_usd",
                "limits.per_caller_max_tasks",
                "manager.max_queue",
                "manager.port",
            ]
        );
    }

    #[test]
    fn a_list_or_a_section_added_is_one_key() {
        let new = BASE.replace("port: 7002", "port: 7003")
            + "auth:\n  tokens_file: tokens.txt\n  open: [status]\n";
        let keys = changed_keys(&pool(BASE), &pool(&new));
        assert!(keys.contains(&"programmers".to_string()), "{keys:?}");
        assert!(keys.contains(&"auth".to_string()), "{keys:?}");
        assert_eq!(keys.len(), 2, "{keys:?}");
    }
}
