//! A span-aware YAML reader.
//!
//! `saphyr-parser` gives us every event with its position; from those we build a small tree that
//! keeps the line and column of each key and value, then turn it into a `serde_json::Value`
//! (which the JSON Schema validator and serde read) plus a table from JSON pointer to position,
//! so that every later error — schema or semantic — can say where in the file it is.
//! See docs/decisions.md for why this and not serde_yaml.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;

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
    /// Character ranges of the scalars under `/github/auth`: never shown in a code frame.
    pub secret_chars: Vec<Range<usize>>,
}

#[derive(Debug, Clone)]
enum Node {
    Scalar {
        text: String,
        plain: bool,
        tag: Option<String>,
        pos: Pos,
        /// Character range of the scalar in the source, for masking secrets in code frames.
        chars: Range<usize>,
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

/// A finished node with what the limits need to know about it.
#[derive(Debug, Clone)]
struct Built {
    node: Node,
    /// Collections nested in it, itself included (a scalar: 0).
    height: usize,
    /// Nodes in it, itself included.
    size: usize,
    /// Bytes of the scalars in it (keys included).
    bytes: usize,
}

/// A collection whose end event has not come yet.
struct Open {
    pos: Pos,
    anchor: usize,
    items: Vec<Node>,
    /// A mapping alternates keys and values in `items`; a sequence has only items.
    mapping: bool,
    height: usize,
    size: usize,
    bytes: usize,
}

impl Open {
    fn add(&mut self, child: Built) {
        self.height = self.height.max(child.height);
        self.size = self.size.saturating_add(child.size);
        self.bytes = self.bytes.saturating_add(child.bytes);
        self.items.push(child.node);
    }

    fn close(self) -> Built {
        let node = if self.mapping {
            let mut entries = Vec::with_capacity(self.items.len() / 2);
            let mut items = self.items.into_iter();
            // A key without its value (the events stopped early) is dropped.
            while let (Some(key), Some(value)) = (items.next(), items.next()) {
                entries.push((key, value));
            }
            Node::Map(entries, self.pos)
        } else {
            Node::Seq(self.items, self.pos)
        };
        Built {
            node,
            height: self.height + 1,
            size: self.size + 1,
            bytes: self.bytes,
        }
    }
}

struct Builder<'a> {
    events: Parser<'a, saphyr_parser::StrInput<'a>>,
    anchors: BTreeMap<usize, Built>,
    problems: Vec<YamlProblem>,
    /// Nodes copied by alias expansion so far; bounded so that a "billion laughs" file
    /// cannot exhaust memory.
    expanded: usize,
    /// Bytes of scalars copied by alias expansion so far: few aliases of one large scalar
    /// expand to as much memory as many of a small one.
    expanded_bytes: usize,
}

/// The most nodes that aliases may expand to in one document.
const ALIAS_EXPANSION_LIMIT: usize = 10_000;

/// The most scalar bytes that aliases may expand to in one document (4 MiB).
pub const ALIAS_BYTES_LIMIT: usize = 4 << 20;

/// The most lists and mappings nested inside each other. fleet.yaml needs 5; the limit keeps
/// hostile files (`[[[[...`) from exhausting the stack of anything that walks the tree.
pub const MAX_DEPTH: usize = 64;

/// Why building the tree stopped early.
enum Stop {
    /// The syntax is broken past this point.
    Syntax(ScanError),
    /// The document goes past one of the reader's limits.
    Limit { pos: Pos, message: String },
}

impl From<ScanError> for Stop {
    fn from(e: ScanError) -> Stop {
        Stop::Syntax(e)
    }
}

fn too_deep(pos: Pos) -> Stop {
    Stop::Limit {
        pos,
        message: format!(
            "expected at most {MAX_DEPTH} levels of lists and mappings inside each other, found more"
        ),
    }
}

impl<'a> Builder<'a> {
    fn next(&mut self) -> Result<Option<(Event<'a>, Span)>, Stop> {
        match self.events.next() {
            None => Ok(None),
            Some(Err(e)) => Err(Stop::Syntax(e)),
            Some(Ok((ev, span))) => Ok(Some((ev, span))),
        }
    }

    fn remember(&mut self, anchor: usize, built: &Built) {
        if anchor > 0 {
            self.anchors.insert(anchor, built.clone());
        }
    }

    /// Reads one node whose first event is `first`, without recursion: open collections are
    /// kept on a stack whose depth is bounded by [`MAX_DEPTH`].
    fn node(&mut self, first: Event<'a>, span: Span) -> Result<Node, Stop> {
        let mut open: Vec<Open> = Vec::new();
        let mut pending = Some((first, span));
        loop {
            let (ev, span) = match pending.take() {
                Some(event) => event,
                None => match self.next()? {
                    Some(event) => event,
                    // The stream stopped inside a collection: close it as it is.
                    None => (Event::StreamEnd, Span::default()),
                },
            };
            let pos = Pos::from_span(&span);
            let built = match ev {
                Event::Scalar(text, style, anchor, tag) => {
                    let bytes = text.len();
                    let built = Built {
                        node: Node::Scalar {
                            text: text.into_owned(),
                            plain: style == ScalarStyle::Plain,
                            tag: tag.map(|t| format!("{}{}", t.handle, t.suffix)),
                            pos,
                            chars: span.start.index()..span.end.index(),
                        },
                        height: 0,
                        size: 1,
                        bytes,
                    };
                    self.remember(anchor, &built);
                    built
                }
                Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                    if open.len() >= MAX_DEPTH {
                        return Err(too_deep(pos));
                    }
                    open.push(Open {
                        pos,
                        anchor,
                        items: Vec::new(),
                        mapping: matches!(ev, Event::MappingStart(..)),
                        height: 0,
                        size: 0,
                        bytes: 0,
                    });
                    continue;
                }
                Event::SequenceEnd | Event::MappingEnd | Event::StreamEnd => {
                    let Some(done) = open.pop() else {
                        return Err(Stop::Syntax(ScanError::new(
                            span.start,
                            format!("unexpected YAML event {ev:?}"),
                        )));
                    };
                    let anchor = done.anchor;
                    let built = done.close();
                    self.remember(anchor, &built);
                    built
                }
                Event::Alias(id) => self.alias(id, pos, open.len())?,
                other => {
                    return Err(Stop::Syntax(ScanError::new(
                        span.start,
                        format!("unexpected YAML event {other:?}"),
                    )));
                }
            };
            match open.last_mut() {
                Some(parent) => parent.add(built),
                None => return Ok(built.node),
            }
        }
    }

    /// A copy of the anchored node, within the expansion and depth limits.
    fn alias(&mut self, id: usize, pos: Pos, depth: usize) -> Result<Built, Stop> {
        let Some(built) = self.anchors.get(&id) else {
            self.problems.push(YamlProblem {
                pos,
                pointer: String::new(),
                message: "alias to an unknown anchor".into(),
            });
            return Ok(Built {
                node: Node::Scalar {
                    text: String::new(),
                    plain: true,
                    tag: None,
                    pos,
                    chars: 0..0,
                },
                height: 0,
                size: 1,
                bytes: 0,
            });
        };
        self.expanded = self.expanded.saturating_add(built.size);
        self.expanded_bytes = self.expanded_bytes.saturating_add(built.bytes);
        if self.expanded_bytes > ALIAS_BYTES_LIMIT {
            return Err(Stop::Limit {
                pos,
                message: format!(
                    "aliases expand to more than {ALIAS_BYTES_LIMIT} bytes (4 MiB): fleet refuses such alias bombs"
                ),
            });
        }
        if self.expanded > ALIAS_EXPANSION_LIMIT {
            return Err(Stop::Limit {
                pos,
                message: format!(
                    "aliases expand to more than {ALIAS_EXPANSION_LIMIT} nodes: fleet refuses such alias bombs"
                ),
            });
        }
        if depth + built.height > MAX_DEPTH {
            return Err(too_deep(pos));
        }
        Ok(built.clone())
    }
}

/// Reads `source` as a single YAML document.
pub fn parse(source: &str) -> Document {
    let mut builder = Builder {
        events: Parser::new_from_str(source),
        anchors: BTreeMap::new(),
        problems: Vec::new(),
        expanded: 0,
        expanded_bytes: 0,
    };
    let mut roots = Vec::new();
    let outcome = (|| -> Result<(), Stop> {
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
    if let Err(stop) = outcome {
        let (pos, message) = match stop {
            Stop::Syntax(e) => (
                Pos {
                    line: e.marker().line(),
                    col: e.marker().col() + 1,
                },
                syntax_message(&e),
            ),
            Stop::Limit { pos, message } => (pos, message),
        };
        problems.push(YamlProblem {
            pos,
            pointer: String::new(),
            message,
        });
        return Document {
            value: None,
            positions,
            problems,
            secret_chars: Vec::new(),
        };
    }
    if roots.len() > 1 {
        problems.push(YamlProblem {
            pos: roots[1].pos(),
            pointer: String::new(),
            message: "expected a single YAML document, found several (`---`)".into(),
        });
    }
    let mut tree = Tree {
        positions: &mut positions,
        problems: &mut problems,
        secret_chars: Vec::new(),
    };
    let value = match roots.first() {
        Some(root) => tree.value(root, "", None),
        None => Value::Null,
    };
    let secret_chars = tree.secret_chars;
    Document {
        value: Some(value),
        positions,
        problems,
        secret_chars,
    }
}

/// The reader's message for a syntax error. The scanner looks ahead over flow collections and
/// stops at 255 nested `[`/`{` before the tree builder sees the 65th: the same limit, said so.
fn syntax_message(e: &ScanError) -> String {
    if e.info() == "recursion limit exceeded" {
        format!(
            "expected at most {MAX_DEPTH} levels of lists and mappings inside each other, found more than 255 nested `[` or `{{`"
        )
    } else {
        format!("YAML syntax error: {}", e.info())
    }
}

/// Escapes one JSON pointer segment (RFC 6901).
pub fn escape_pointer(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

/// Where the JSON value of the document is made from the tree: positions, problems and the
/// source ranges of values that must never be printed.
struct Tree<'a> {
    positions: &'a mut Positions,
    problems: &'a mut Vec<YamlProblem>,
    secret_chars: Vec<Range<usize>>,
}

/// Values under this pointer are credentials or about credentials: code frames mask them.
pub const SECRET_POINTER: &str = "/github/auth";

/// Whether `pointer` is [`SECRET_POINTER`] or inside it.
pub fn is_secret_pointer(pointer: &str) -> bool {
    pointer
        .strip_prefix(SECRET_POINTER)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

impl Tree<'_> {
    /// Recursion is bounded: the tree is at most [`MAX_DEPTH`] levels deep.
    fn value(&mut self, node: &Node, pointer: &str, key: Option<Pos>) -> Value {
        self.positions.by_pointer.insert(
            pointer.to_string(),
            Location {
                key,
                value: node.pos(),
            },
        );
        match node {
            Node::Scalar {
                text,
                plain,
                tag,
                chars,
                ..
            } => {
                if is_secret_pointer(pointer) {
                    self.secret_chars.push(chars.clone());
                }
                resolve_scalar(text, *plain, tag.as_deref())
            }
            Node::Seq(items, _) => Value::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| self.value(item, &format!("{pointer}/{i}"), None))
                    .collect(),
            ),
            Node::Map(entries, _) => Value::Object(self.mapping(entries, pointer)),
        }
    }

    fn mapping(&mut self, entries: &[(Node, Node)], pointer: &str) -> Map<String, Value> {
        let mut map = Map::new();
        for (k, v) in entries {
            let name = match k {
                Node::Scalar { text, .. } => text.clone(),
                other => {
                    self.problems.push(YamlProblem {
                        pos: other.pos(),
                        pointer: pointer.to_string(),
                        message: "expected a plain key, found a mapping or sequence used as a key"
                            .into(),
                    });
                    continue;
                }
            };
            let child = format!("{pointer}/{}", escape_pointer(&name));
            if map.contains_key(&name) {
                self.problems.push(YamlProblem {
                    pos: k.pos(),
                    pointer: child,
                    message: format!("duplicate key `{name}`: each key may appear once"),
                });
                continue;
            }
            let value = self.value(v, &child, Some(k.pos()));
            map.insert(name, value);
        }
        map
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
        return Value::Number(n);
    }
    if looks_like_float(text)
        && let Ok(f) = text.parse::<f64>()
        && let Some(n) = Number::from_f64(f)
    {
        return Value::Number(n);
    }
    Value::String(text.to_string())
}

/// An integer of the YAML 1.2 core schema, when it fits in an i64 or a u64; larger ones are
/// read as floats (then the schema refuses them where an integer is expected).
fn parse_int(text: &str) -> Option<Number> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (radix, digits) = if let Some(hex) = digits.strip_prefix("0x") {
        (16, hex)
    } else if let Some(oct) = digits.strip_prefix("0o") {
        (8, oct)
    } else {
        (10, digits)
    };
    // from_str_radix alone would also take a second sign (`0x+5`).
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    let magnitude = u64::from_str_radix(digits, radix).ok()?;
    let value = if negative {
        -i128::from(magnitude)
    } else {
        i128::from(magnitude)
    };
    if let Ok(n) = i64::try_from(value) {
        Some(n.into())
    } else {
        u64::try_from(value).ok().map(Number::from)
    }
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

    /// One 900 KB anchored scalar and ten aliases: few nodes, but 9 MB once expanded.
    #[test]
    fn aliases_are_limited_by_the_bytes_they_expand_to() {
        let big = "x".repeat(900_000);
        let aliases = (0..10).map(|i| format!("a{i}: *b\n")).collect::<String>();
        let doc = parse(&format!("big: &b {big}\n{aliases}"));
        assert!(doc.value.is_none());
        assert!(
            doc.problems
                .iter()
                .any(|p| p.message.contains("more than 4194304 bytes (4 MiB)")),
            "{:?}",
            doc.problems.iter().map(|p| &p.message).collect::<Vec<_>>()
        );
        // Four copies stay under 4 MiB.
        let aliases = (0..3).map(|i| format!("a{i}: *b\n")).collect::<String>();
        let doc = parse(&format!("big: &b {big}\n{aliases}"));
        assert!(
            doc.value.is_some(),
            "{:?}",
            doc.problems.first().map(|p| &p.message)
        );
    }

    #[test]
    fn aliases_resolve() {
        let doc = parse("a: &x {k: 1}\nb: *x\n");
        let v = doc.value.expect("value");
        assert_eq!(v["b"]["k"], 1);
    }

    fn depth_problem(doc: &Document) -> &YamlProblem {
        assert!(doc.value.is_none(), "a too-deep document has no value");
        doc.problems
            .iter()
            .find(|p| p.message.contains("levels of lists and mappings"))
            .unwrap_or_else(|| panic!("no depth problem in {:?}", doc.problems))
    }

    #[test]
    fn nesting_up_to_the_limit_is_read() {
        let text = format!("{}x{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        let doc = parse(&text);
        assert!(doc.problems.is_empty(), "{:?}", doc.problems);
        let mut v = doc.value.as_ref().expect("value");
        for _ in 0..MAX_DEPTH {
            v = &v[0];
        }
        assert_eq!(v, "x");
    }

    #[test]
    fn flow_nesting_past_the_limit_is_refused_where_it_crosses() {
        let text = format!("{}x{}", "[".repeat(20_000), "]".repeat(20_000));
        let doc = parse(&text);
        let p = depth_problem(&doc);
        assert_eq!(p.pos, Pos { line: 1, col: 256 });
        // Past the limit but within the scanner's look-ahead: found by the tree builder.
        let text = format!("{}x{}", "[".repeat(100), "]".repeat(100));
        let doc = parse(&text);
        let p = depth_problem(&doc);
        assert_eq!(p.pos.line, 1);
        assert!(p.pos.col == MAX_DEPTH + 1, "{p:?}");
        let text = format!("{}x{}", "{a: ".repeat(100), "}".repeat(100));
        depth_problem(&parse(&text));
    }

    #[test]
    fn block_sequence_nesting_past_the_limit_is_refused() {
        let text = format!("{}x\n", "- ".repeat(20_000));
        let doc = parse(&text);
        let p = depth_problem(&doc);
        assert_eq!(p.pos.line, 1);
        assert_eq!(p.pos.col, 2 * MAX_DEPTH + 1);
    }

    #[test]
    fn block_mapping_nesting_past_the_limit_is_refused() {
        let mut text = String::new();
        for i in 0..200 {
            text.push_str(&" ".repeat(i));
            text.push_str("k:\n");
        }
        let doc = parse(&text);
        let p = depth_problem(&doc);
        assert_eq!(p.pos.line, MAX_DEPTH + 1);
    }

    #[test]
    fn an_alias_cannot_push_a_tree_past_the_limit() {
        let deep = format!(
            "{}x{}",
            "[".repeat(MAX_DEPTH - 1),
            "]".repeat(MAX_DEPTH - 1)
        );
        let doc = parse(&format!("a: &a {deep}\n"));
        assert!(doc.problems.is_empty(), "{:?}", doc.problems);
        let doc = parse(&format!("a: &a {deep}\nb: [*a]\n"));
        let p = depth_problem(&doc);
        assert_eq!(p.pos, Pos { line: 2, col: 5 });
    }

    #[test]
    fn integers_beyond_i64_and_u64() {
        let doc =
            parse("[18446744073709551615, 18446744073709551616, -9223372036854775808, 0x+5, 0x]");
        let v = doc.value.expect("value");
        assert_eq!(v[0], serde_json::json!(u64::MAX));
        assert!(v[1].is_f64(), "{}", v[1]);
        assert_eq!(v[2], serde_json::json!(i64::MIN));
        assert_eq!(v[3], "0x+5");
        assert_eq!(v[4], "0x");
    }

    #[test]
    fn scalars_under_github_auth_are_marked_secret() {
        let text = "github:\n  repo: a/b\n  auth:\n    token: \"ghp_x\"\n    app: { k: v }\n";
        let doc = parse(text);
        let chars: Vec<char> = text.chars().collect();
        let secrets: Vec<String> = doc
            .secret_chars
            .iter()
            .map(|r| chars[r.clone()].iter().collect())
            .collect();
        assert_eq!(secrets, ["\"ghp_x\"", "v"]);
        assert!(is_secret_pointer("/github/auth"));
        assert!(is_secret_pointer("/github/auth/token"));
        assert!(!is_secret_pointer("/github/authx"));
        assert!(!is_secret_pointer("/github/repo"));
    }
}
