//! Finds the dotted key a TOML deserialization error is about, such as
//! `server.max_body_bytes` or `sinks[1].retry.max_attempts`.
//!
//! toml reports a wrong type or an unknown key with a byte span, but its message does not say
//! which key (`invalid type: string, expected u64`). This module reads the same text a second
//! time into a tree of keys with their spans (no values are kept, so no secret is held) and
//! returns the path of the innermost key whose span holds the error's span. It does nothing
//! else: the message itself is built by [`super`].

use std::fmt;
use std::ops::Range;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// serde_spanned's private protocol, as toml's deserializer speaks it: a value asked for as
/// this struct comes back as a map of its start, its end and the value itself, when the
/// value has a span (tables made implicit by a dotted header such as `[[verify.secrets]]`
/// have none and come back as a plain map).
const SPANNED_NAME: &str = "$__serde_spanned_private_Spanned";
const SPANNED_START: &str = "$__serde_spanned_private_start";
const SPANNED_END: &str = "$__serde_spanned_private_end";
const SPANNED_VALUE: &str = "$__serde_spanned_private_value";
const SPANNED_FIELDS: &[&str] = &[SPANNED_START, SPANNED_END, SPANNED_VALUE];

/// The dotted path (array elements as `[i]`) of the innermost key or array element whose
/// value spans `offset` (a table's span covers its keys), or `None` when `text` is not TOML
/// or nothing spans it.
pub(super) fn key_at(text: &str, offset: usize) -> Option<String> {
    let root: Tree = toml::from_str(text).ok()?;
    let mut spans = Vec::new();
    root.spans("", &mut spans);
    // A table's span ends where its own keys end, so a sub-table (`[sinks.retry]`) lies
    // outside its parent's span: take the narrowest span that holds the offset, not a walk
    // down from the root. Of equal spans, the later (inner) one.
    spans
        .into_iter()
        .rev()
        .filter(|(_, span)| span.start <= offset && offset < span.end.max(span.start + 1))
        .min_by_key(|(_, span)| span.end - span.start)
        .map(|(path, _)| path)
}

/// A value with its span when toml knows it.
struct Node {
    span: Option<Range<usize>>,
    tree: Tree,
}

/// The shape of a value: a table's keys, an array's elements, or a leaf (values are dropped).
enum Tree {
    Table(Vec<(String, Node)>),
    Array(Vec<Node>),
    Leaf,
}

impl Tree {
    /// Every node below this one with a span, as (path, span), parents before children.
    fn spans(&self, path: &str, out: &mut Vec<(String, Range<usize>)>) {
        let mut visit = |step: String, node: &Node| {
            if let Some(span) = &node.span {
                out.push((step.clone(), span.clone()));
            }
            node.tree.spans(&step, out);
        };
        match self {
            Tree::Table(entries) => {
                for (key, node) in entries {
                    let step = if path.is_empty() {
                        key.clone()
                    } else {
                        format!("{path}.{key}")
                    };
                    visit(step, node);
                }
            }
            Tree::Array(items) => {
                for (i, node) in items.iter().enumerate() {
                    visit(format!("{path}[{i}]"), node);
                }
            }
            Tree::Leaf => {}
        }
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Node, D::Error> {
        deserializer.deserialize_struct(SPANNED_NAME, SPANNED_FIELDS, NodeVisitor)
    }
}

impl<'de> Deserialize<'de> for Tree {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Tree, D::Error> {
        deserializer
            .deserialize_any(NodeVisitor)
            .map(|node| node.tree)
    }
}

struct NodeVisitor;

impl NodeVisitor {
    fn leaf<E>(self) -> Result<Node, E> {
        Ok(Node {
            span: None,
            tree: Tree::Leaf,
        })
    }
}

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any TOML value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Node, E> {
        self.leaf()
    }

    fn visit_i64<E>(self, _: i64) -> Result<Node, E> {
        self.leaf()
    }

    fn visit_u64<E>(self, _: u64) -> Result<Node, E> {
        self.leaf()
    }

    fn visit_f64<E>(self, _: f64) -> Result<Node, E> {
        self.leaf()
    }

    fn visit_str<E>(self, _: &str) -> Result<Node, E> {
        self.leaf()
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Node>()? {
            items.push(item);
        }
        Ok(Node {
            span: None,
            tree: Tree::Array(items),
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let Some(first) = map.next_key::<String>()? else {
            return Ok(Node {
                span: None,
                tree: Tree::Table(Vec::new()),
            });
        };
        if first == SPANNED_START {
            let start: usize = map.next_value()?;
            let end = match map.next_key::<String>()? {
                Some(key) if key == SPANNED_END => map.next_value::<usize>()?,
                _ => return Err(de::Error::missing_field(SPANNED_END)),
            };
            let tree = match map.next_key::<String>()? {
                Some(key) if key == SPANNED_VALUE => map.next_value::<Tree>()?,
                _ => return Err(de::Error::missing_field(SPANNED_VALUE)),
            };
            return Ok(Node {
                span: Some(start..end),
                tree,
            });
        }
        if first.starts_with("$__toml_private") {
            // A datetime: a leaf.
            map.next_value::<IgnoredAny>()?;
            return self.leaf();
        }
        let mut entries = vec![(first, map.next_value::<Node>()?)];
        while let Some((key, node)) = map.next_entry::<String, Node>()? {
            entries.push((key, node));
        }
        Ok(Node {
            span: None,
            tree: Tree::Table(entries),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The key at the first occurrence of `needle` in `text`.
    fn key_of(text: &str, needle: &str) -> Option<String> {
        key_at(text, text.find(needle).unwrap())
    }

    #[test]
    fn keys_of_values_in_tables_arrays_and_implicit_tables() {
        let text = "top = 1\n[server]\nmax_body_bytes = \"1M\"\n\
                    [[verify.secrets]]\nid = 'a'\n[[verify.secrets]]\nid = 'bee'\n\
                    [[sinks]]\nname = 'x'\n[[sinks]]\nname = 'y'\nevents = ['a', 33]\n\
                    [sinks.retry]\nmax_attempts = 'many'\n\
                    [[sinks]]\nname = 'z'\nretry = { initial_backoff_ms = 'soon' }\n\
                    [store]\nwhen = 1979-05-27T07:32:00Z\n";
        assert_eq!(key_of(text, "1\n").as_deref(), Some("top"));
        assert_eq!(
            key_of(text, "\"1M\"").as_deref(),
            Some("server.max_body_bytes")
        );
        assert_eq!(
            key_of(text, "'bee'").as_deref(),
            Some("verify.secrets[1].id")
        );
        assert_eq!(key_of(text, "33").as_deref(), Some("sinks[1].events[1]"));
        assert_eq!(
            key_of(text, "'many'").as_deref(),
            Some("sinks[1].retry.max_attempts")
        );
        assert_eq!(
            key_of(text, "'soon'").as_deref(),
            Some("sinks[2].retry.initial_backoff_ms")
        );
        assert_eq!(key_of(text, "1979").as_deref(), Some("store.when"));
    }

    #[test]
    fn not_toml_has_no_key() {
        assert_eq!(key_at("[server\nx = 1\n", 3), None);
        assert_eq!(key_at("", 0), None);
    }
}
