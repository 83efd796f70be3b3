//! Where each key of the YAML file sits: a map from a key path (`ports[0].framing.type`) to its line
//! and column, so that every configuration error can point at the text the user has to fix.
//!
//! serde_yaml parses the file into our types but keeps no positions once it has; this index is built
//! from a second, event-level pass of yaml-rust2 over the same text.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// A 1-based line and column in the configuration file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

/// Key path → position of that key (for sequence items, of the item).
#[derive(Debug, Default)]
pub struct LocationIndex {
    positions: HashMap<String, Location>,
}

impl LocationIndex {
    /// Indexes `text`; a file that does not parse yields an empty index (serde_yaml reports the syntax
    /// error with its own position).
    pub fn build(text: &str) -> LocationIndex {
        let mut builder = Builder::default();
        let mut parser = Parser::new_from_str(text);
        let _ = parser.load(&mut builder, false);
        LocationIndex { positions: builder.positions }
    }

    /// The position of `path`, or of its nearest ancestor that has one.
    pub fn find(&self, path: &str) -> Option<Location> {
        let mut p = path;
        loop {
            if let Some(loc) = self.positions.get(p) {
                return Some(*loc);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }
}

enum Frame {
    Map { key: Option<String>, expect_key: bool },
    Seq { next: usize },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    positions: HashMap<String, Location>,
}

impl Builder {
    fn path(&self) -> String {
        let mut s = String::new();
        for f in &self.stack {
            match f {
                Frame::Map { key: Some(k), .. } => {
                    if !s.is_empty() {
                        s.push('.');
                    }
                    s.push_str(k);
                }
                Frame::Map { key: None, .. } => {}
                Frame::Seq { next } => s.push_str(&format!("[{}]", next.saturating_sub(1))),
            }
        }
        s
    }

    /// Called when a node starts. Returns true if the node is a mapping key. A mapping's own start
    /// marker points past its first key, so a mapping is located by its first key instead.
    fn node(&mut self, mark: Marker, scalar: Option<&str>, is_map: bool) -> bool {
        let loc = Location { line: mark.line(), column: mark.col() + 1 };
        match self.stack.last_mut() {
            Some(Frame::Map { key, expect_key }) if *expect_key => {
                *expect_key = false;
                *key = Some(scalar.unwrap_or("?").to_string());
                let p = self.path();
                if let Some(cut) = p.rfind('.').or_else(|| p.rfind('[')) {
                    self.positions.entry(p[..cut].to_string()).or_insert(loc);
                }
                self.positions.entry(p).or_insert(loc);
                true
            }
            Some(Frame::Map { expect_key, .. }) => {
                *expect_key = true;
                false
            }
            Some(Frame::Seq { next }) => {
                *next += 1;
                if !is_map {
                    let p = self.path();
                    self.positions.entry(p).or_insert(loc);
                }
                false
            }
            None => false,
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::Scalar(s, ..) => {
                self.node(mark, Some(&s), false);
            }
            Event::Alias(_) => {
                self.node(mark, None, false);
            }
            Event::MappingStart(..) => {
                self.node(mark, None, true);
                self.stack.push(Frame::Map { key: None, expect_key: true });
            }
            Event::SequenceStart(..) => {
                self.node(mark, None, false);
                self.stack.push(Frame::Seq { next: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_nested_keys_and_sequence_items() {
        let text = "gateway:\n  name: x\nports:\n  - name: gps\n    framing:\n      type: lines\n  - name: pm\n";
        let idx = LocationIndex::build(text);
        assert_eq!(idx.find("gateway.name"), Some(Location { line: 2, column: 3 }));
        assert_eq!(idx.find("ports[0].framing.type"), Some(Location { line: 6, column: 7 }));
        assert_eq!(idx.find("ports[1].name"), Some(Location { line: 7, column: 5 }));
        // An unknown child falls back to its parent.
        assert_eq!(idx.find("ports[1].nope"), Some(Location { line: 7, column: 5 }));
    }
}
