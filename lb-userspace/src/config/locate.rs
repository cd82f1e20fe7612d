//! Positions of YAML nodes by field path.
//!
//! `serde_yaml` reports where a syntax or type error is, but keeps no spans once a
//! parse succeeds, so semantic errors find their line and column here: one walk
//! over the YAML parser's events records each node's path
//! (`vips[1].backends[0].weight`) with the position of its key and its value. The
//! walk also finds duplicate keys, which serde would report without a useful
//! position.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser};

/// A place in the file, both numbers counted from 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

impl Pos {
    /// The start of the file: where errors about the whole document point.
    pub const START: Pos = Pos { line: 1, column: 1 };
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    /// The key's position, for a mapping entry.
    key: Option<Pos>,
    value: Pos,
}

/// A key that appears twice in one mapping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DuplicateKey {
    pub path: String,
    pub at: Pos,
    pub first: Pos,
}

/// Path -> position of every node of the first document.
#[derive(Clone, Debug, Default)]
pub struct PosIndex {
    entries: HashMap<String, Entry>,
    /// Every key and value position with its path, in document order.
    order: Vec<(Pos, String)>,
}

enum Frame {
    /// `key` is `None` while the next node is a key, `Some` while it is that key's value.
    Map {
        path: String,
        key: Option<String>,
        key_pos: Pos,
        seen: HashMap<String, Pos>,
    },
    Seq {
        path: String,
        next: usize,
    },
    /// Inside a complex (non-scalar) mapping key, which has no path of its own.
    Skip {
        depth: usize,
    },
}

enum Node<'a> {
    Scalar(Option<&'a str>),
    Map,
    Seq,
}

/// Builds a child path the way `serde_yaml` prints paths, so both agree.
pub fn child(parent: &str, key: &str) -> String {
    if parent.is_empty() { key.to_owned() } else { format!("{parent}.{key}") }
}

/// The path one level up (`a.b[2]` -> `a.b` -> `a` -> the empty root path), `None` at the root.
pub fn parent(path: &str) -> Option<&str> {
    if path.is_empty() {
        return None;
    }
    if path.ends_with(']')
        && let Some(i) = path.rfind('[')
    {
        return Some(&path[..i]);
    }
    Some(path.rfind('.').map_or("", |i| &path[..i]))
}

impl PosIndex {
    /// Walks `text`. Stops quietly at a syntax error or a second document: `serde_yaml`
    /// reports those, and what was seen before still locates nodes.
    pub fn build(text: &str) -> (PosIndex, Vec<DuplicateKey>) {
        let mut walk = Walk { index: PosIndex::default(), stack: Vec::new(), dups: Vec::new() };
        let mut documents = 0;
        for item in Parser::new_from_str(text) {
            let Ok((event, span)) = item else { break };
            let pos = Pos { line: span.start.line(), column: span.start.col() + 1 };
            match event {
                Event::DocumentStart(_) => {
                    documents += 1;
                    if documents > 1 {
                        break;
                    }
                }
                Event::Scalar(value, ..) => walk.node(pos, &Node::Scalar(Some(&value))),
                Event::Alias(_) => walk.node(pos, &Node::Scalar(None)),
                Event::MappingStart(..) => walk.node(pos, &Node::Map),
                Event::SequenceStart(..) => walk.node(pos, &Node::Seq),
                Event::MappingEnd | Event::SequenceEnd => walk.end(),
                Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => {}
            }
        }
        (walk.index, walk.dups)
    }

    /// Where the node at `path` is: its value, or its key when the value starts on a
    /// later line (a block mapping or list reads best pointed at by its key).
    pub fn get(&self, path: &str) -> Option<Pos> {
        self.entries.get(path).map(|e| match e.key {
            Some(key) if key.line != e.value.line => key,
            _ => e.value,
        })
    }

    /// `path`'s position, or that of its nearest ancestor present in the file.
    pub fn locate(&self, path: &str) -> Pos {
        let mut p = Some(path);
        while let Some(cur) = p {
            if let Some(pos) = self.get(cur) {
                return pos;
            }
            p = parent(cur);
        }
        Pos::START
    }

    /// The first of `paths` present in the file, else the nearest ancestor of the first.
    pub fn locate_any(&self, paths: &[&str]) -> Pos {
        paths
            .iter()
            .find_map(|p| self.get(p))
            .unwrap_or_else(|| paths.first().map_or(Pos::START, |p| self.locate(p)))
    }

    /// The path of the last node that starts at or before `pos`: the best guess at
    /// where a syntax error is.
    pub fn path_before(&self, pos: Pos) -> Option<&str> {
        self.order.iter().rev().find(|(p, _)| *p <= pos).map(|(_, path)| path.as_str())
    }
}

struct Walk {
    index: PosIndex,
    stack: Vec<Frame>,
    dups: Vec<DuplicateKey>,
}

impl Walk {
    fn node(&mut self, pos: Pos, node: &Node<'_>) {
        match self.stack.last_mut() {
            Some(Frame::Skip { depth }) => {
                if !matches!(node, Node::Scalar(_)) {
                    *depth += 1;
                }
                return;
            }
            Some(Frame::Map { path, key: key @ None, key_pos, seen }) => {
                *key_pos = pos;
                match node {
                    Node::Scalar(Some(text)) => {
                        let name = (*text).to_owned();
                        let full = child(path, &name);
                        if let Some(&first) = seen.get(&name) {
                            self.dups.push(DuplicateKey { path: full.clone(), at: pos, first });
                        } else {
                            seen.insert(name.clone(), pos);
                        }
                        self.index.order.push((pos, full));
                        *key = Some(name);
                    }
                    // An alias or a complex key: its value still gets a path, `?`.
                    Node::Scalar(None) => *key = Some("?".to_owned()),
                    Node::Map | Node::Seq => {
                        *key = Some("?".to_owned());
                        self.stack.push(Frame::Skip { depth: 1 });
                    }
                }
                return;
            }
            _ => {}
        }
        let (path, key) = match self.stack.last() {
            None => (String::new(), None),
            Some(Frame::Map { path, key: Some(k), key_pos, .. }) => {
                (child(path, k), Some(*key_pos))
            }
            Some(Frame::Seq { path, next }) => (format!("{path}[{next}]"), None),
            // Handled above.
            Some(Frame::Map { .. } | Frame::Skip { .. }) => return,
        };
        self.index.entries.entry(path.clone()).or_insert(Entry { key, value: pos });
        self.index.order.push((pos, path.clone()));
        match node {
            Node::Scalar(_) => self.done(),
            Node::Map => {
                self.stack.push(Frame::Map { path, key: None, key_pos: pos, seen: HashMap::new() });
            }
            Node::Seq => self.stack.push(Frame::Seq { path, next: 0 }),
        }
    }

    fn end(&mut self) {
        if let Some(Frame::Skip { depth }) = self.stack.last_mut() {
            *depth -= 1;
            if *depth == 0 {
                // The complex key is over; its mapping now expects the value.
                self.stack.pop();
            }
            return;
        }
        self.stack.pop();
        self.done();
    }

    /// A value node is complete: its parent moves on to the next key or item.
    fn done(&mut self) {
        match self.stack.last_mut() {
            Some(Frame::Map { key, .. }) => *key = None,
            Some(Frame::Seq { next, .. }) => *next += 1,
            Some(Frame::Skip { .. }) | None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(clippy::unnecessary_wraps)] // compared with `get`'s result
    fn at(line: usize, column: usize) -> Option<Pos> {
        Some(Pos { line, column })
    }

    #[test]
    fn scalar_values_are_located_at_the_value() {
        let (idx, dups) = PosIndex::build("a: 1\nb:\n  c: [x, {d: 2}]\n");
        assert!(dups.is_empty());
        assert_eq!(idx.get("a"), at(1, 4));
        assert_eq!(idx.get("b.c[0]"), at(3, 7));
        assert_eq!(idx.get("b.c[1].d"), at(3, 14));
    }

    #[test]
    fn block_containers_are_located_at_their_key() {
        let (idx, _) = PosIndex::build("vips:\n  - name: a\n    backends: []\n");
        assert_eq!(idx.get("vips"), at(1, 1));
        assert_eq!(idx.get("vips[0]"), at(2, 5));
        assert_eq!(idx.get("vips[0].backends"), at(3, 15));
    }

    #[test]
    fn missing_paths_fall_back_to_the_nearest_ancestor() {
        let (idx, _) = PosIndex::build("x: 1\nvips:\n  - name: a\n");
        assert_eq!(idx.locate("vips[0].backends[3].weight"), Pos { line: 3, column: 5 });
        assert_eq!(idx.locate("nothing.here"), Pos::START);
        assert_eq!(idx.locate_any(&["tunnel_source", "x"]), Pos { line: 1, column: 4 });
    }

    #[test]
    fn parent_strips_one_component() {
        assert_eq!(parent("a.b[2]"), Some("a.b"));
        assert_eq!(parent("a.b"), Some("a"));
        assert_eq!(parent("a"), Some(""));
        assert_eq!(parent("[0]"), Some(""));
        assert_eq!(parent(""), None);
    }

    #[test]
    fn duplicate_keys_are_found_with_both_positions() {
        let (_, dups) = PosIndex::build("a: 1\nb: 2\na: 3\n");
        assert_eq!(
            dups,
            vec![DuplicateKey {
                path: "a".into(),
                at: Pos { line: 3, column: 1 },
                first: Pos { line: 1, column: 1 },
            }]
        );
    }

    #[test]
    fn complex_keys_and_aliases_do_not_derail_the_walk() {
        let (idx, _) = PosIndex::build("? [a, b]\n: 1\nx: &k {y: 1}\nz: *k\nw: 2\n");
        assert_eq!(idx.get("w"), at(5, 4));
        assert_eq!(idx.get("x.y"), at(3, 11));
    }
}
