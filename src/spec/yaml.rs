//! A span-aware YAML reader.
//!
//! `saphyr-parser` gives us every event with its position; from those we build a small tree that
//! keeps the line and column of each key and value, then turn it into a `serde_json::Value`
//! (which the JSON Schema validator and serde read) plus a table from JSON pointer to position,
//! so that every later error — schema or semantic — can say where in the file it is.
//! See docs/decisions.md for why this and not serde_yaml.

use std::collections::{BTreeMap, HashMap};

use saphyr_parser::{Event, Parser, ScalarStyle, ScanError, Span};
use serde_json::{Map, Number, Value};

/// A position in the source: 1-based line and 1-based column (in characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

impl Default for Pos {
    /// The start of the file, for problems of the whole document.
    fn default() -> Self {
        Pos { line: 1, col: 1 }
    }
}

impl Pos {
    fn from_span(span: &Span) -> Pos {
        Pos {
            line: span.start.line(),
            col: span.start.col() + 1,
        }
    }
}

/// Where a value sits, and where its key sits when it is a mapping entry.
#[derive(Debug, Clone, Copy, Default)]
pub struct Location {
    pub key: Option<Pos>,
    pub value: Pos,
}

/// JSON pointer (`/pools/gpu/count`) to source location.
#[derive(Debug, Default, Clone)]
pub struct Positions {
    by_pointer: HashMap<String, Location>,
}

impl Positions {
    /// The location of the value at `pointer`, or of its nearest parent that has one.
    pub fn value(&self, pointer: &str) -> Pos {
        self.lookup(pointer).value
    }

    /// The location of the key of the entry at `pointer` (falls back to its value).
    pub fn key(&self, pointer: &str) -> Pos {
        let loc = self.lookup(pointer);
        loc.key.unwrap_or(loc.value)
    }

    fn lookup(&self, pointer: &str) -> Location {
        let mut p = pointer;
        loop {
            if let Some(loc) = self.by_pointer.get(p) {
                return *loc;
            }
            match p.rfind('/') {
                Some(i) => p = &p[..i],
                None => return Location::default(),
            }
        }
    }
}

/// Something wrong at the YAML level: a syntax error, a duplicate key, an unsupported construct.
#[derive(Debug, Clone)]
pub struct YamlProblem {
    pub pos: Pos,
    pub pointer: String,
    pub message: String,
}

/// The result of reading a YAML document: the value (when the syntax allowed one), where
/// everything is, and the problems found along the way.
#[derive(Debug)]
pub struct Document {
    pub value: Option<Value>,
    pub positions: Positions,
    pub problems: Vec<YamlProblem>,
}

#[derive(Debug, Clone)]
enum Node {
    Scalar {
        text: String,
        plain: bool,
        tag: Option<String>,
        pos: Pos,
    },
    Seq(Vec<Node>, Pos),
    Map(Vec<(Node, Node)>, Pos),
}

impl Node {
    fn pos(&self) -> Pos {
        match self {
            Node::Scalar { pos, .. } | Node::Seq(_, pos) | Node::Map(_, pos) => *pos,
        }
    }
}

struct Builder<'a> {
    events: Parser<'a, saphyr_parser::StrInput<'a>>,
    anchors: BTreeMap<usize, Node>,
    problems: Vec<YamlProblem>,
    /// Nodes copied by alias expansion so far; bounded so that a "billion laughs" file
    /// cannot exhaust memory.
    expanded: usize,
}

/// The most nodes that aliases may expand to in one document.
const ALIAS_EXPANSION_LIMIT: usize = 10_000;

fn size(node: &Node) -> usize {
    match node {
        Node::Scalar { .. } => 1,
        Node::Seq(items, _) => 1 + items.iter().map(size).sum::<usize>(),
        Node::Map(entries, _) => {
            1 + entries
                .iter()
                .map(|(k, v)| size(k) + size(v))
                .sum::<usize>()
        }
    }
}

/// Stop building the tree: the syntax is broken past this point.
struct Syntax(ScanError);

impl<'a> Builder<'a> {
    fn next(&mut self) -> Result<Option<(Event<'a>, Span)>, Syntax> {
        match self.events.next() {
            None => Ok(None),
            Some(Err(e)) => Err(Syntax(e)),
            Some(Ok((ev, span))) => Ok(Some((ev, span))),
        }
    }

    fn remember(&mut self, anchor: usize, node: &Node) {
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
    }

    /// Reads one node whose first event is `ev`.
    fn node(&mut self, ev: Event<'a>, span: Span) -> Result<Node, Syntax> {
        let pos = Pos::from_span(&span);
        match ev {
            Event::Scalar(text, style, anchor, tag) => {
                let node = Node::Scalar {
                    text: text.into_owned(),
                    plain: style == ScalarStyle::Plain,
                    tag: tag.map(|t| format!("{}{}", t.handle, t.suffix)),
                    pos,
                };
                self.remember(anchor, &node);
                Ok(node)
            }
            Event::SequenceStart(anchor, _) => {
                let mut items = Vec::new();
                loop {
                    match self.next()? {
                        Some((Event::SequenceEnd, _)) | None => break,
                        Some((ev, span)) => items.push(self.node(ev, span)?),
                    }
                }
                let node = Node::Seq(items, pos);
                self.remember(anchor, &node);
                Ok(node)
            }
            Event::MappingStart(anchor, _) => {
                let mut entries = Vec::new();
                loop {
                    let key = match self.next()? {
                        Some((Event::MappingEnd, _)) | None => break,
                        Some((ev, span)) => self.node(ev, span)?,
                    };
                    let value = match self.next()? {
                        Some((ev, span)) => self.node(ev, span)?,
                        None => break,
                    };
                    entries.push((key, value));
                }
                let node = Node::Map(entries, pos);
                self.remember(anchor, &node);
                Ok(node)
            }
            Event::Alias(id) => match self.anchors.get(&id) {
                Some(node) => {
                    self.expanded += size(node);
                    if self.expanded > ALIAS_EXPANSION_LIMIT {
                        return Err(Syntax(ScanError::new(
                            span.start,
                            format!("aliases expand to more than {ALIAS_EXPANSION_LIMIT} nodes"),
                        )));
                    }
                    Ok(node.clone())
                }
                None => {
                    self.problems.push(YamlProblem {
                        pos,
                        pointer: String::new(),
                        message: "alias to an unknown anchor".into(),
                    });
                    Ok(Node::Scalar {
                        text: String::new(),
                        plain: true,
                        tag: None,
                        pos,
                    })
                }
            },
            other => Err(Syntax(ScanError::new(
                span.start,
                format!("unexpected YAML event {other:?}"),
            ))),
        }
    }
}

/// Reads `source` as a single YAML document.
pub fn parse(source: &str) -> Document {
    let mut builder = Builder {
        events: Parser::new_from_str(source),
        anchors: BTreeMap::new(),
        problems: Vec::new(),
        expanded: 0,
    };
    let mut roots = Vec::new();
    let outcome = (|| -> Result<(), Syntax> {
        while let Some((ev, span)) = builder.next()? {
            match ev {
                Event::StreamStart
                | Event::StreamEnd
                | Event::DocumentStart(_)
                | Event::DocumentEnd
                | Event::Nothing => {}
                ev => {
                    let node = builder.node(ev, span)?;
                    roots.push(node);
                }
            }
        }
        Ok(())
    })();

    let mut positions = Positions::default();
    let mut problems = std::mem::take(&mut builder.problems);
    if let Err(Syntax(e)) = outcome {
        problems.push(YamlProblem {
            pos: Pos {
                line: e.marker().line(),
                col: e.marker().col() + 1,
            },
            pointer: String::new(),
            message: format!("YAML syntax error: {}", e.info()),
        });
        return Document {
            value: None,
            positions,
            problems,
        };
    }
    if roots.len() > 1 {
        problems.push(YamlProblem {
            pos: roots[1].pos(),
            pointer: String::new(),
            message: "expected a single YAML document, found several (`---`)".into(),
        });
    }
    let value = match roots.into_iter().next() {
        Some(root) => to_json(&root, "", None, &mut positions, &mut problems),
        None => Value::Null,
    };
    Document {
        value: Some(value),
        positions,
        problems,
    }
}

/// Escapes one JSON pointer segment (RFC 6901).
pub fn escape_pointer(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

fn to_json(
    node: &Node,
    pointer: &str,
    key: Option<Pos>,
    positions: &mut Positions,
    problems: &mut Vec<YamlProblem>,
) -> Value {
    positions.by_pointer.insert(
        pointer.to_string(),
        Location {
            key,
            value: node.pos(),
        },
    );
    match node {
        Node::Scalar {
            text, plain, tag, ..
        } => resolve_scalar(text, *plain, tag.as_deref()),
        Node::Seq(items, _) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    to_json(item, &format!("{pointer}/{i}"), None, positions, problems)
                })
                .collect(),
        ),
        Node::Map(entries, _) => {
            let mut map = Map::new();
            for (k, v) in entries {
                let name = match k {
                    Node::Scalar { text, .. } => text.clone(),
                    other => {
                        problems.push(YamlProblem {
                            pos: other.pos(),
                            pointer: pointer.to_string(),
                            message:
                                "expected a plain key, found a mapping or sequence used as a key"
                                    .into(),
                        });
                        continue;
                    }
                };
                let child = format!("{pointer}/{}", escape_pointer(&name));
                if map.contains_key(&name) {
                    problems.push(YamlProblem {
                        pos: k.pos(),
                        pointer: child,
                        message: format!("duplicate key `{name}`: each key may appear once"),
                    });
                    continue;
                }
                let value = to_json(v, &child, Some(k.pos()), positions, problems);
                map.insert(name, value);
            }
            Value::Object(map)
        }
    }
}

/// Resolves a scalar by the YAML 1.2 core schema: plain `null`/`~`/empty, `true`/`false`,
/// integers (decimal, `0x`, `0o`) and floats are typed; everything quoted is a string.
fn resolve_scalar(text: &str, plain: bool, tag: Option<&str>) -> Value {
    match tag {
        Some("tag:yaml.org,2002:str") | Some("!!str") => return Value::String(text.to_string()),
        _ => {}
    }
    if !plain {
        return Value::String(text.to_string());
    }
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    if let Some(n) = parse_int(text) {
        return Value::Number(n.into());
    }
    if looks_like_float(text)
        && let Ok(f) = text.parse::<f64>()
        && let Some(n) = Number::from_f64(f)
    {
        return Value::Number(n);
    }
    Value::String(text.to_string())
}

fn parse_int(text: &str) -> Option<i64> {
    let (sign, digits) = match text.strip_prefix('-') {
        Some(rest) => (-1, rest),
        None => (1, text.strip_prefix('+').unwrap_or(text)),
    };
    let magnitude = if let Some(hex) = digits.strip_prefix("0x") {
        i64::from_str_radix(hex, 16).ok()?
    } else if let Some(oct) = digits.strip_prefix("0o") {
        i64::from_str_radix(oct, 8).ok()?
    } else if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        digits.parse::<i64>().ok()?
    } else {
        return None;
    };
    magnitude.checked_mul(sign)
}

fn looks_like_float(text: &str) -> bool {
    let body = text.trim_start_matches(['-', '+']);
    !body.is_empty()
        && body.bytes().any(|b| b.is_ascii_digit())
        && body.bytes().all(|b| {
            b.is_ascii_digit() || b == b'.' || b == b'e' || b == b'E' || b == b'-' || b == b'+'
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_of_keys_and_values() {
        let doc = parse("a: 1\nb:\n  c: [x, 'y']\n");
        assert!(doc.problems.is_empty(), "{:?}", doc.problems);
        let v = doc.value.expect("value");
        assert_eq!(v["a"], 1);
        assert_eq!(v["b"]["c"][1], "y");
        assert_eq!(doc.positions.value("/a"), Pos { line: 1, col: 4 });
        assert_eq!(doc.positions.key("/b/c"), Pos { line: 3, col: 3 });
        assert_eq!(doc.positions.value("/b/c/1"), Pos { line: 3, col: 10 });
        // unknown pointers fall back to their nearest parent
        assert_eq!(doc.positions.value("/b/c/9"), Pos { line: 3, col: 6 });
    }

    #[test]
    fn core_schema_scalars() {
        let doc = parse("[1, -2, 0x10, 1.5, true, ~, '3', \"false\", 16g, 1e3, yes]");
        let v = doc.value.expect("value");
        assert_eq!(
            v,
            serde_json::json!([
                1, -2, 16, 1.5, true, null, "3", "false", "16g", 1000.0, "yes"
            ])
        );
    }

    #[test]
    fn duplicate_keys_are_reported_with_position() {
        let doc = parse("a: 1\nb: 2\na: 3\n");
        assert_eq!(doc.problems.len(), 1);
        assert_eq!(doc.problems[0].pos, Pos { line: 3, col: 1 });
        assert!(doc.problems[0].message.contains("duplicate key `a`"));
    }

    #[test]
    fn syntax_errors_have_a_position() {
        let doc = parse("a: [1, 2\nb: 3\n");
        assert!(doc.value.is_none());
        assert_eq!(doc.problems.len(), 1);
        assert!(doc.problems[0].message.starts_with("YAML syntax error"));
        assert!(doc.problems[0].pos.line >= 1);
    }

    #[test]
    fn aliases_resolve() {
        let doc = parse("a: &x {k: 1}\nb: *x\n");
        let v = doc.value.expect("value");
        assert_eq!(v["b"]["k"], 1);
    }
}
