//! YAML text → [`PoolConfig`], with syntax and type errors turned into located [`ConfigIssue`]s.
//!
//! `yaml_serde` gives the line and column of a syntax or type error; `serde_path_to_error` gives
//! the key path (`programmers[3].port`). Unknown keys are type errors too (`deny_unknown_fields`).

use super::error::ConfigIssue;
use super::locate::{KeyPath, Position, Segment, SourceMap};
use super::model::PoolConfig;
use std::path::Path;

/// Deserializes `yaml` into the data model, or returns the first syntax/type error, located.
pub fn parse(yaml: &str, source: &Path, map: &SourceMap) -> Result<PoolConfig, ConfigIssue> {
    if yaml.trim().is_empty() {
        return Err(ConfigIssue {
            file: source.to_path_buf(),
            line: None,
            column: None,
            key: KeyPath::root(),
            message: "the file is empty".into(),
        });
    }
    let deserializer = serde_yaml::Deserializer::from_str(yaml);
    serde_path_to_error::deserialize(deserializer).map_err(|err| {
        let key = key_path(err.path());
        let inner = err.into_inner();
        let position = inner
            .location()
            .map(|l| Position {
                line: l.line(),
                column: l.column(),
            })
            .or_else(|| map.key_position(&key));
        ConfigIssue {
            file: source.to_path_buf(),
            line: position.map(|p| p.line),
            column: position.map(|p| p.column),
            message: bare_message(&inner.to_string(), &key, position),
            key,
        }
    })
}

/// Converts serde_path_to_error's path into ours.
fn key_path(path: &serde_path_to_error::Path) -> KeyPath {
    use serde_path_to_error::Segment as S;
    let segments = path
        .iter()
        .filter_map(|segment| match segment {
            S::Seq { index } => Some(Segment::Index(*index)),
            S::Map { key } => Some(Segment::Key(key.clone())),
            S::Enum { variant } => Some(Segment::Key(variant.clone())),
            S::Unknown => None,
        })
        .collect::<Vec<_>>();
    KeyPath::from(segments)
}

/// yaml_serde's message without the parts we print ourselves: its own `path: ` prefix (the
/// field's path, or for unknown fields the enclosing one) and ` at line L column C` for the
/// position we report. Any further context ("while parsing a flow sequence at line 2 ...") stays.
fn bare_message(message: &str, key: &KeyPath, position: Option<Position>) -> String {
    let mut text = message.to_string();
    if let Some(p) = position {
        text = text.replacen(&format!(" at line {} column {}", p.line, p.column), "", 1);
    }
    let mut path = Some(key.clone());
    while let Some(p) = path {
        if let Some(rest) = text.strip_prefix(&format!("{}: ", serde_style_path(&p))) {
            return rest.to_string();
        }
        path = p.parent().filter(|p| !p.is_root());
    }
    text
}

/// The path as yaml_serde prints it in messages (`a.b[1].c`, keys unquoted).
fn serde_style_path(key: &KeyPath) -> String {
    let mut out = String::new();
    for segment in key.segments() {
        match segment {
            Segment::Index(i) => out.push_str(&format!("[{i}]")),
            Segment::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_err(yaml: &str) -> ConfigIssue {
        let map = SourceMap::build(yaml);
        match parse(yaml, Path::new("t.yaml"), &map) {
            Ok(_) => panic!("expected an error for:\n{yaml}"),
            Err(issue) => issue,
        }
    }

    const MINIMAL: &str = "pool_size: 1\nprogrammers:\n  - id: \"001\"\n    port: 6151\n    primary_llm: ollama/a\n    backup_llm: ollama/b\n";

    #[test]
    fn minimal_document_parses() {
        let map = SourceMap::build(MINIMAL);
        let config = parse(MINIMAL, Path::new("t.yaml"), &map);
        assert!(matches!(config, Ok(c) if c.programmers.len() == 1));
    }

    #[test]
    fn unknown_key_is_located_with_its_path() {
        let issue = parse_err(&format!("{MINIMAL}    prot: 7\n"));
        assert_eq!(issue.key.to_string(), "programmers[0].prot");
        assert_eq!(issue.line, Some(7));
        assert!(
            issue
                .message
                .starts_with("unknown field `prot`, expected one of"),
            "{}",
            issue.message
        );
        assert!(!issue.message.contains(" at line "), "{}", issue.message);
    }

    #[test]
    fn wrong_type_is_located_with_its_path() {
        let issue = parse_err(&MINIMAL.replace("6151", "high"));
        assert_eq!(issue.key.to_string(), "programmers[0].port");
        assert_eq!((issue.line, issue.column), (Some(4), Some(11)));
        assert!(issue.message.contains("invalid type"), "{}", issue.message);
    }

    #[test]
    fn syntax_error_has_a_line() {
        let issue = parse_err("pool_size: 1\nprogrammers: [\n");
        assert!(issue.line.is_some(), "{issue}");
    }

    #[test]
    fn empty_file_is_an_error() {
        assert_eq!(parse_err("  \n").message, "the file is empty");
    }
}
