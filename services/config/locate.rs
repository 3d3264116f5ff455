//! Where each key of a YAML document is written: key paths and their line/column.
//!
//! serde's derive forgets positions, so semantic validation (which runs on the deserialized
//! [`PoolConfig`](super::PoolConfig)) cannot say *where* a bad value is. This module walks the
//! document's parse events once (with `saphyr-parser`, which reports spans) and records the position
//! of every mapping key and every value under its [`KeyPath`]. Validation then reports errors by key
//! path and looks up the line here.

use saphyr_parser::{Event, Marker, Parser};
use std::collections::HashMap;
use std::fmt;

// ---------------------------------------------------------------------------------------------
// Key paths
// ---------------------------------------------------------------------------------------------

/// One step into a YAML document: a mapping key or a sequence index.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Segment {
    /// A mapping key (the scalar as written).
    Key(String),
    /// A zero-based sequence index.
    Index(usize),
}

/// The path from the document root to a value, e.g. `programmers[3].port`.
///
/// Displayed the way people write it: keys joined with `.`, indices in brackets, and keys that are
/// not plain identifiers (model names such as `ollama/qwen2.5-coder:7b`) in double quotes, so a
/// dot inside a model name is never mistaken for a separator.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyPath(Vec<Segment>);

impl KeyPath {
    /// The document root (displayed as `.`).
    pub fn root() -> Self {
        Self(Vec::new())
    }

    /// This path extended by a mapping key.
    pub fn key(&self, key: impl Into<String>) -> Self {
        let mut segments = self.0.clone();
        segments.push(Segment::Key(key.into()));
        Self(segments)
    }

    /// This path extended by a sequence index.
    pub fn index(&self, index: usize) -> Self {
        let mut segments = self.0.clone();
        segments.push(Segment::Index(index));
        Self(segments)
    }

    /// The path one step up, or `None` at the root.
    pub fn parent(&self) -> Option<Self> {
        let (_, rest) = self.0.split_last()?;
        Some(Self(rest.to_vec()))
    }

    /// The steps, root first.
    pub fn segments(&self) -> &[Segment] {
        &self.0
    }

    /// Whether this is the document root.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<Vec<Segment>> for KeyPath {
    fn from(segments: Vec<Segment>) -> Self {
        Self(segments)
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str(".");
        }
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                Segment::Index(index) => write!(f, "[{index}]")?,
                Segment::Key(key) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    let plain = !key.is_empty()
                        && key
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                    if plain {
                        f.write_str(key)?;
                    } else {
                        write!(f, "{key:?}")?;
                    }
                }
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Positions
// ---------------------------------------------------------------------------------------------

/// A 1-based line and column in the source text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

impl From<Marker> for Position {
    fn from(marker: Marker) -> Self {
        // saphyr: lines are 1-based, columns 0-based.
        Self {
            line: marker.line(),
            column: marker.col() + 1,
        }
    }
}

/// Where one entry is written: its key (for mapping entries) and the start of its value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Entry {
    key: Option<Position>,
    value: Option<Position>,
}

/// Positions of every key and value of one YAML document, by key path.
///
/// Built best-effort: a document that does not parse yields an empty (or partial) map, and
/// lookups then fall back to the nearest ancestor that was seen.
#[derive(Debug, Clone, Default)]
pub struct SourceMap {
    entries: HashMap<KeyPath, Entry>,
}

impl SourceMap {
    /// Walks `yaml`'s first document and records where each key and value starts.
    pub fn build(yaml: &str) -> Self {
        let mut map = Self::default();
        let mut stack: Vec<Frame> = Vec::new();
        for event in Parser::new_from_str(yaml) {
            let Ok((event, span)) = event else { break };
            let start = Position::from(span.start);
            match event {
                Event::Scalar(value, ..) => {
                    if let Some(Frame::Map {
                        path,
                        key: key @ None,
                        ..
                    }) = stack.last_mut()
                    {
                        let key_path = path.key(value.as_ref());
                        map.entries.entry(key_path.clone()).or_default().key = Some(start);
                        *key = Some(key_path);
                    } else {
                        map.value_at(&stack, start);
                        advance(&mut stack);
                    }
                }
                Event::Alias(_) => {
                    map.value_at(&stack, start);
                    advance(&mut stack);
                }
                Event::MappingStart(..) | Event::SequenceStart(..) => {
                    let path = match stack.last() {
                        None => KeyPath::root(),
                        // A complex (non-scalar) mapping key: record nothing under it.
                        Some(Frame::Map { key: None, .. }) | Some(Frame::Opaque) => {
                            stack.push(Frame::Opaque);
                            continue;
                        }
                        Some(frame) => frame.child_path(),
                    };
                    map.value_at(&stack, start);
                    stack.push(if matches!(event, Event::MappingStart(..)) {
                        Frame::Map { path, key: None }
                    } else {
                        Frame::Seq { path, next: 0 }
                    });
                }
                Event::MappingEnd | Event::SequenceEnd => {
                    if let Some(Frame::Opaque) = stack.pop() {
                        // The complex key ended; its value follows under an unknown key.
                        if let Some(Frame::Map {
                            path,
                            key: key @ None,
                        }) = stack.last_mut()
                        {
                            *key = Some(path.key("?"));
                        }
                        continue;
                    }
                    advance(&mut stack);
                }
                Event::DocumentEnd => break,
                _ => {}
            }
        }
        map
    }

    /// Records the start of the value that the innermost open container expects next.
    fn value_at(&mut self, stack: &[Frame], start: Position) {
        let path = match stack.last() {
            None => KeyPath::root(),
            Some(Frame::Opaque) => return,
            Some(frame) => frame.child_path(),
        };
        self.entries
            .entry(path)
            .or_default()
            .value
            .get_or_insert(start);
    }

    /// Where the key of `path` is written, or, when absent from the file, the nearest ancestor's
    /// (top-level keys that are absent have no position).
    pub fn key_position(&self, path: &KeyPath) -> Option<Position> {
        self.nearest(path, |e| e.key.or(e.value))
    }

    /// Where the value of `path` starts, or, when absent from the file, the nearest ancestor's key.
    pub fn value_position(&self, path: &KeyPath) -> Option<Position> {
        if let Some(pos) = self.entries.get(path).and_then(|e| e.value.or(e.key)) {
            return Some(pos);
        }
        self.key_position(&path.parent()?)
    }

    /// Whether `path` is written in the file.
    pub fn contains(&self, path: &KeyPath) -> bool {
        self.entries.contains_key(path)
    }

    fn nearest(
        &self,
        path: &KeyPath,
        pick: impl Fn(&Entry) -> Option<Position>,
    ) -> Option<Position> {
        // The root is never a fallback: "line 1" would point at an unrelated key.
        let mut current = Some(path.clone());
        while let Some(p) = current.filter(|p| !p.is_root()) {
            if let Some(pos) = self.entries.get(&p).and_then(&pick) {
                return Some(pos);
            }
            current = p.parent();
        }
        None
    }
}

/// An open container while walking the events.
enum Frame {
    /// A mapping; `key` is the path of the entry whose value comes next, `None` between entries.
    Map { path: KeyPath, key: Option<KeyPath> },
    /// A sequence; `next` is the index of the item that comes next.
    Seq { path: KeyPath, next: usize },
    /// Inside a complex mapping key: nothing is recorded.
    Opaque,
}

impl Frame {
    /// The path of the value this container expects next.
    fn child_path(&self) -> KeyPath {
        match self {
            Frame::Map { path, key } => key.clone().unwrap_or_else(|| path.key("?")),
            Frame::Seq { path, next } => path.index(*next),
            Frame::Opaque => KeyPath::root(),
        }
    }
}

/// A value just ended: the innermost container moves on to its next entry or item.
fn advance(stack: &mut [Frame]) {
    match stack.last_mut() {
        Some(Frame::Map { key, .. }) => *key = None,
        Some(Frame::Seq { next, .. }) => *next += 1,
        Some(Frame::Opaque) | None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "\
pool_size: 2
programmers:
  - id: \"001\"
    port: 6151
    capabilities: [fast, local]
  - id: \"002\"
    port: 6152
llms:
  ollama/qwen2.5-coder:7b:
    input_cost_per_token: 0
";

    fn pos(line: usize, column: usize) -> Option<Position> {
        Some(Position { line, column })
    }

    #[test]
    fn records_keys_and_values_by_path() {
        let map = SourceMap::build(DOC);
        let root = KeyPath::root();
        assert_eq!(map.value_position(&root.key("pool_size")), pos(1, 12));
        assert_eq!(map.key_position(&root.key("pool_size")), pos(1, 1));
        let p1 = root.key("programmers").index(1);
        assert_eq!(map.value_position(&p1.key("port")), pos(7, 11));
        assert_eq!(map.key_position(&p1.key("port")), pos(7, 5));
        let caps = root.key("programmers").index(0).key("capabilities");
        assert_eq!(map.value_position(&caps.index(1)), pos(5, 26));
        let llm = root.key("llms").key("ollama/qwen2.5-coder:7b");
        assert_eq!(
            map.key_position(&llm.key("input_cost_per_token")),
            pos(10, 5)
        );
    }

    #[test]
    fn absent_keys_fall_back_to_the_nearest_ancestor() {
        let map = SourceMap::build(DOC);
        let p0 = KeyPath::root().key("programmers").index(0);
        assert!(!map.contains(&p0.key("timeout_s")));
        assert_eq!(map.key_position(&p0.key("timeout_s")), pos(3, 5));
        assert_eq!(map.value_position(&p0.key("timeout_s")), pos(3, 5));
        assert_eq!(
            map.key_position(&KeyPath::root().key("manager").key("port")),
            None
        );
    }

    #[test]
    fn displays_paths_as_people_write_them() {
        let p = KeyPath::root().key("programmers").index(3).key("port");
        assert_eq!(p.to_string(), "programmers[3].port");
        let l = KeyPath::root()
            .key("llms")
            .key("openai/gpt-4o")
            .key("provider");
        assert_eq!(l.to_string(), "llms.\"openai/gpt-4o\".provider");
        assert_eq!(KeyPath::root().to_string(), ".");
    }

    #[test]
    fn a_broken_document_yields_what_was_seen_before_the_break() {
        let map = SourceMap::build("a: 1\nb: [\n");
        assert_eq!(map.value_position(&KeyPath::root().key("a")), pos(1, 4));
    }
}
