//! Where each key and value of a YAML document is, by path (`sources.probes.targets[0].url`).
//! serde_yaml keeps no positions once a document is a `Value`, so this index is built from the
//! parser's events and consulted when reporting an error.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::Marker;

/// A 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub line: usize,
    pub col: usize,
}

#[derive(Debug, Default)]
pub struct SpanIndex {
    positions: HashMap<String, Position>,
}

enum Frame {
    Map { path: String, key: Option<String> },
    Seq { path: String, index: usize },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    positions: HashMap<String, Position>,
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

impl Builder {
    /// The path of the node starting now, or None when it is a mapping key.
    fn node_path(&mut self, ev: &Event, mark: Marker) -> Option<String> {
        let pos = Position { line: mark.line(), col: mark.col() + 1 };
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Map { path, key }) => match key.take() {
                None => {
                    if let Event::Scalar(k, ..) = ev {
                        // A mapping is where its first key is (block mappings start at the `:`).
                        self.positions.entry(path.clone()).or_insert(pos);
                        let p = join(path, k);
                        self.positions.entry(p).or_insert(pos);
                        *key = Some(k.clone());
                    } else {
                        *key = Some("?".into());
                    }
                    None
                }
                Some(k) => Some(join(path, &k)),
            },
            Some(Frame::Seq { path, index }) => {
                let p = format!("{path}[{index}]");
                *index += 1;
                if !matches!(ev, Event::MappingStart(..)) {
                    self.positions.entry(p.clone()).or_insert(pos);
                }
                Some(p)
            }
        }
    }
}

impl Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                let is_map = matches!(ev, Event::MappingStart(..));
                let path = self.node_path(&ev, mark).unwrap_or_else(|| "?".into());
                self.stack.push(if is_map { Frame::Map { path, key: None } } else { Frame::Seq { path, index: 0 } });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            Event::Scalar(..) | Event::Alias(..) => {
                self.node_path(&ev, mark);
            }
            _ => {}
        }
    }
}

/// Mappings and sequences nested deeper than this are refused before anything recursive reads
/// the document (yaml-rust2's loader, serde_yaml's and our own walks recurse per level: 10,000
/// levels overflowed the stack and aborted `validate`, and a reload aborted the running pipeline).
pub const MAX_YAML_NESTING: usize = 64;

/// A document nested deeper than [`MAX_YAML_NESTING`], and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TooDeep {
    pub at: Position,
}

impl SpanIndex {
    /// Index a document, reading its events one by one (never recursively). A document that does
    /// not parse gives an empty index (serde_yaml reports the syntax error with its own position);
    /// one nested too deep is refused.
    pub fn build(text: &str) -> Result<Self, TooDeep> {
        let mut b = Builder::default();
        let mut parser = Parser::new_from_str(text);
        loop {
            match parser.next_token() {
                Ok((Event::StreamEnd, _)) => break,
                Ok((ev, mark)) => {
                    b.on_event(ev, mark);
                    if b.stack.len() > MAX_YAML_NESTING {
                        return Err(TooDeep { at: Position { line: mark.line(), col: mark.col() + 1 } });
                    }
                }
                Err(_) => return Ok(SpanIndex::default()),
            }
        }
        Ok(SpanIndex { positions: b.positions })
    }

    /// Position of `path`, or of its nearest ancestor that has one.
    pub fn find(&self, path: &str) -> Option<Position> {
        let mut p = path.to_string();
        loop {
            if let Some(pos) = self.positions.get(&p) {
                return Some(*pos);
            }
            let cut = p.rfind(['.', '['])?;
            p.truncate(cut);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str =
        "sources:\n  probes:\n    type: demo\n    targets:\n      - {url: x, sla_ms: 5}\n      - url: y\n        sla_ms: 7\nsinks: {}\n";

    #[test]
    fn finds_keys_and_sequence_items_with_one_based_positions() {
        let idx = SpanIndex::build(DOC).unwrap();
        assert_eq!(idx.find("sources"), Some(Position { line: 1, col: 1 }));
        assert_eq!(idx.find("sources.probes.type"), Some(Position { line: 3, col: 5 }));
        assert_eq!(idx.find("sources.probes.targets[0].sla_ms"), Some(Position { line: 5, col: 18 }));
        assert_eq!(idx.find("sources.probes.targets[1]"), Some(Position { line: 6, col: 9 }));
        assert_eq!(idx.find("sources.probes.targets[1].sla_ms"), Some(Position { line: 7, col: 9 }));
        assert_eq!(idx.find("sinks"), Some(Position { line: 8, col: 1 }));
    }

    #[test]
    fn unknown_paths_fall_back_to_the_nearest_ancestor() {
        let idx = SpanIndex::build(DOC).unwrap();
        assert_eq!(idx.find("sources.probes.nope.deeper"), Some(Position { line: 2, col: 3 }));
        assert_eq!(idx.find("nothing"), None);
    }

    #[test]
    fn nesting_past_the_limit_is_refused_where_it_goes_too_deep() {
        // A block mapping starts at its first key's `:`.
        let block: String = (0..10_000).map(|i| format!("{}k{i}:\n", " ".repeat(i))).collect();
        assert_eq!(SpanIndex::build(&block).err(), Some(TooDeep { at: Position { line: 65, col: 68 } }));
        let compact = format!("{}1", "- ".repeat(100_000));
        assert_eq!(SpanIndex::build(&compact).err(), Some(TooDeep { at: Position { line: 1, col: 1 + 2 * 64 } }));
        let flow = format!("a: {}{}", "[".repeat(MAX_YAML_NESTING - 1), "]".repeat(MAX_YAML_NESTING - 1));
        assert!(SpanIndex::build(&flow).is_ok(), "the root mapping and 63 sequences are 64 levels");
    }
}
