//! Where each key of a YAML file is: a map from key paths to line and column.
//!
//! serde-saphyr gives syntax and type errors a location, but a semantic error found later
//! (`VnfApp::compile`, or figment merging the layers) only has a path such as
//! `vnis[1].flood[0]`. This module walks the file's parse events once and records where
//! every node is, so such a path can be turned back into `FILE:LINE:COLUMN`.
//!
//! Paths are lists of segments: map keys as written, sequence indices as decimal numbers
//! (`vnis[1].flood[0]` is `["vnis", "1", "flood", "0"]`). A node is either a map or a
//! sequence, so a key `"1"` and an index 1 never collide at the same place.
//!
//! Only the first document is walked, aliases are recorded where they are used (paths
//! below them fall back to the alias), and complex (non-scalar) keys are skipped.

use std::collections::HashMap;
use std::fmt;

use serde_saphyr::granit_parser::{Event, Marker, Parser, StructureStyle};

/// A place in the file: 1-based line and column (columns count characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Line, from 1.
    pub line: u64,
    /// Column, from 1.
    pub column: u64,
}

impl Position {
    fn from_marker(marker: Marker) -> Self {
        // granit counts lines from 1 and columns from 0; serde-saphyr reports both from 1.
        Position {
            line: marker.line() as u64,
            column: marker.col() as u64 + 1,
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// The positions of every node of a YAML document.
#[derive(Debug, Default, Clone)]
pub struct Locator {
    positions: HashMap<Vec<String>, Position>,
}

/// A collection being walked.
struct Frame {
    path: Vec<String>,
    /// False inside a complex key: its nodes have no path worth recording.
    live: bool,
    kind: FrameKind,
}

enum FrameKind {
    /// A sequence and the index of its next item.
    Seq(usize),
    /// A mapping; `None` while the next node is a key, `Some` while it is that key's value.
    Map(Option<Key>),
}

struct Key {
    /// `None` for a complex key, whose value is not addressable.
    name: Option<String>,
    position: Position,
}

impl Locator {
    /// Walk `text`. A syntax error ends the walk: what came before it is kept (the caller
    /// reports the syntax error itself, with serde-saphyr's location).
    pub fn parse(text: &str) -> Self {
        let mut locator = Locator::default();
        let mut stack: Vec<Frame> = Vec::new();
        let mut root_seen = false;

        for item in Parser::new_from_str(text) {
            let Ok((event, span)) = item else { break };
            let position = Position::from_marker(span.start);
            let (collection, flow) = match &event {
                Event::Scalar(..) | Event::Alias(_) => (false, true),
                Event::SequenceStart(style, ..) | Event::MappingStart(style, ..) => {
                    (true, *style == StructureStyle::Flow)
                }
                Event::SequenceEnd | Event::MappingEnd => {
                    stack.pop();
                    if stack.is_empty() && root_seen {
                        break;
                    }
                    continue;
                }
                Event::DocumentEnd if root_seen => break,
                _ => continue,
            };

            // Which slot does this node fill?
            let (path, live, key_position) = match stack.last_mut() {
                None if root_seen => break,
                None => {
                    root_seen = true;
                    (Vec::new(), true, None)
                }
                Some(frame) => match &mut frame.kind {
                    FrameKind::Seq(next) => {
                        let mut path = frame.path.clone();
                        path.push(next.to_string());
                        *next += 1;
                        (path, frame.live, None)
                    }
                    FrameKind::Map(slot @ None) => {
                        if let Event::Scalar(name, ..) = &event {
                            *slot = Some(Key {
                                name: Some(name.to_string()),
                                position,
                            });
                            continue;
                        }
                        // A complex key: walk it without recording anything.
                        *slot = Some(Key {
                            name: None,
                            position,
                        });
                        (Vec::new(), false, None)
                    }
                    FrameKind::Map(slot @ Some(_)) => {
                        let key = slot.take();
                        match key.and_then(|k| k.name.map(|name| (name, k.position))) {
                            Some((name, key_position)) => {
                                let mut path = frame.path.clone();
                                path.push(name);
                                (path, frame.live, Some(key_position))
                            }
                            None => (Vec::new(), false, None),
                        }
                    }
                },
            };

            if live {
                // A scalar or a flow collection is best pointed at where its value is; a
                // block collection starts on the next line, so point at its key instead.
                let at = if flow {
                    position
                } else {
                    key_position.unwrap_or(position)
                };
                locator.positions.insert(path.clone(), at);
            }
            if collection {
                let kind = match event {
                    Event::SequenceStart(..) => FrameKind::Seq(0),
                    _ => FrameKind::Map(None),
                };
                stack.push(Frame { path, live, kind });
            } else if stack.is_empty() {
                // The whole document is one scalar.
                break;
            }
        }
        locator
    }

    /// Whether the file holds a document at all (and not only comments or nothing).
    pub fn has_document(&self) -> bool {
        self.positions.contains_key(&Vec::new())
    }

    /// Where `path` is, or where its nearest ancestor present in the file is. The second
    /// value is how many segments of `path` matched.
    pub fn find(&self, path: &[String]) -> Option<(Position, usize)> {
        (0..=path.len())
            .rev()
            .find_map(|depth| self.positions.get(&path[..depth]).map(|p| (*p, depth)))
    }
}

/// The value of the scalar that starts at `position`, if one does (to quote a value that
/// serde-saphyr could not convert).
pub fn scalar_at(text: &str, position: Position) -> Option<String> {
    Parser::new_from_str(text)
        .map_while(Result::ok)
        .find_map(|(event, span)| match event {
            Event::Scalar(value, ..) if Position::from_marker(span.start) == position => {
                Some(value.into_owned())
            }
            _ => None,
        })
}

/// Split a path as `VnfApp::compile` writes it (`vnis[1].flood[0]`, `ports.trunk0.vid`,
/// or empty for the whole config) into segments.
pub fn split_path(path: &str) -> Vec<String> {
    let mut segments = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (name, mut rest) = match part.find('[') {
            Some(i) => part.split_at(i),
            None => (part, ""),
        };
        if !name.is_empty() {
            segments.push(name.to_string());
        }
        // Each `[n]` is one more segment; anything malformed is kept as written.
        while let Some(stripped) = rest.strip_prefix('[') {
            match stripped.split_once(']') {
                Some((index, after)) => {
                    segments.push(index.to_string());
                    rest = after;
                }
                None => {
                    segments.push(rest.to_string());
                    rest = "";
                }
            }
        }
        if !rest.is_empty() {
            segments.push(rest.to_string());
        }
    }
    segments
}

/// The inverse of [`split_path`] for display: numeric segments become `[n]`. (A map key
/// made of digits is shown as an index too; the path still locates correctly.)
pub fn join_path<S: AsRef<str>>(segments: &[S]) -> String {
    let mut out = String::new();
    for segment in segments {
        let segment = segment.as_ref();
        if !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit()) {
            out.push('[');
            out.push_str(segment);
            out.push(']');
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(segment);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(locator: &Locator, path: &str) -> Option<(u64, u64)> {
        let segments = split_path(path);
        locator
            .find(&segments)
            .filter(|(_, depth)| *depth == segments.len())
            .map(|(p, _)| (p.line, p.column))
    }

    const DOC: &str = "\
# comment
name: edge
underlay:
  port: 4789
vnis:
  - id: 5001
    flood: [10.0.0.1, 10.0.0.2]
  - id: 7
    flood:
      - 10.0.0.3
      - \"x\"
ports: {trunk0: {vid: 100}}
";

    #[test]
    fn finds_keys_values_and_items() {
        let l = Locator::parse(DOC);
        assert!(l.has_document());
        assert_eq!(at(&l, ""), Some((2, 1)));
        assert_eq!(at(&l, "name"), Some((2, 7)));
        // A block collection is pointed at by its key.
        assert_eq!(at(&l, "underlay"), Some((3, 1)));
        assert_eq!(at(&l, "underlay.port"), Some((4, 9)));
        assert_eq!(at(&l, "vnis"), Some((5, 1)));
        assert_eq!(at(&l, "vnis[0]"), Some((6, 5)));
        assert_eq!(at(&l, "vnis[0].flood"), Some((7, 12)));
        assert_eq!(at(&l, "vnis[0].flood[1]"), Some((7, 23)));
        assert_eq!(at(&l, "vnis[1].id"), Some((8, 9)));
        assert_eq!(at(&l, "vnis[1].flood[1]"), Some((11, 9)));
        assert_eq!(at(&l, "ports.trunk0.vid"), Some((12, 23)));
    }

    #[test]
    fn falls_back_to_the_nearest_ancestor() {
        let l = Locator::parse(DOC);
        let (pos, depth) = l.find(&split_path("underlay.address")).expect("ancestor");
        assert_eq!((pos.line, depth), (3, 1));
    }

    #[test]
    fn empty_and_comment_only_files_have_no_document() {
        assert!(!Locator::parse("").has_document());
        assert!(!Locator::parse("# nothing here\n\n").has_document());
    }

    #[test]
    fn stops_at_a_syntax_error_without_panicking() {
        let l = Locator::parse("a: 1\nb: [1, 2\nc: 3\n");
        assert_eq!(at(&l, "a"), Some((1, 4)));
    }

    #[test]
    fn aliases_and_complex_keys() {
        let l = Locator::parse("base: &b {x: 1}\nother: *b\n? [k]\n: v\nlast: 2\n");
        assert_eq!(at(&l, "other"), Some((2, 8)));
        assert_eq!(at(&l, "last"), Some((5, 7)));
    }

    #[test]
    fn scalar_at_a_position() {
        let l = Locator::parse(DOC);
        let (p, _) = l.find(&split_path("vnis[1].flood[1]")).expect("found");
        assert_eq!(scalar_at(DOC, p).as_deref(), Some("x"));
        assert_eq!(scalar_at(DOC, Position { line: 1, column: 1 }), None);
    }

    #[test]
    fn paths_split_and_join() {
        assert_eq!(split_path("vnis[1].flood[0]"), ["vnis", "1", "flood", "0"]);
        assert_eq!(split_path("ports.trunk0.vid"), ["ports", "trunk0", "vid"]);
        assert_eq!(split_path("[2]"), ["2"]);
        assert!(split_path("").is_empty());
        assert_eq!(join_path(&["vnis", "1", "flood", "0"]), "vnis[1].flood[0]");
        assert_eq!(join_path(&["a", "b"]), "a.b");
    }
}
