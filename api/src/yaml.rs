//! A YAML document tree in which every node knows where it was written.
//!
//! serde-based deserializers stop at the first problem; Faultline reports every
//! problem of a file at once, each at its own line and column. So parsing goes
//! through a small located tree built from `granit-parser` events (the parser
//! `serde-saphyr` uses), and typed values are decoded from it (see `decode`).

use std::collections::HashMap;

use granit_parser::{Event, Parser, ScalarStyle, Tag};

use crate::diag::{Diagnostic, Pos};

/// Inputs above this size are refused before parsing: no Faultline file is
/// anywhere near it, and it bounds the memory a hostile input can take.
pub const MAX_INPUT_BYTES: usize = 8 << 20;
/// Nodes per document, aliases expanded (and anchored copies kept): stops
/// "billion laughs" inputs.
pub const MAX_NODES: usize = 200_000;
/// Scalar text per document, aliases expanded (and anchored copies kept):
/// nodes alone do not bound memory when one large scalar is aliased many times.
pub const MAX_EXPANDED_BYTES: usize = 32 << 20;
/// Nesting depth, aliases expanded; deeper input is refused rather than
/// risking the stack or building huge field paths.
pub const MAX_DEPTH: usize = 64;

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub pos: Pos,
    pub kind: NodeKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum NodeKind {
    /// `plain` is true when the text resolves under the core schema (plain
    /// scalars, and any tagged `!!int`, `!!float`, `!!bool` or `!!null`), so it
    /// may be null, a boolean or a number; quoted, block and `!!str`-tagged
    /// scalars are always strings.
    Scalar {
        text: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    /// Keys in document order; duplicate keys are refused while building.
    Map(Vec<(Node, Node)>),
}

/// What a scalar means under the YAML 1.2 core schema.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar<'a> {
    Null,
    Bool(bool),
    /// An integer, or `None` when it is too large to represent.
    Int(Option<i64>),
    Float(f64),
    Str(&'a str),
}

impl Node {
    pub fn scalar(&self) -> Option<Scalar<'_>> {
        match &self.kind {
            NodeKind::Scalar { text, plain } => Some(if *plain {
                resolve_plain(text)
            } else {
                Scalar::Str(text)
            }),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self.scalar(), Some(Scalar::Null))
    }

    /// The value under `key` if this is a mapping that has it. Keys match by
    /// their text, as decoding reads them (`{1: x}` has the key "1").
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.kind {
            NodeKind::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.text() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// A short description for "expected X, found Y" messages.
    pub fn describe(&self) -> String {
        match &self.kind {
            NodeKind::Seq(_) => "a list".into(),
            NodeKind::Map(_) => "a mapping".into(),
            NodeKind::Scalar { text, .. } => match self.scalar() {
                Some(Scalar::Null) => "nothing (null)".into(),
                Some(Scalar::Bool(b)) => format!("the boolean {b}"),
                Some(Scalar::Int(_)) | Some(Scalar::Float(_)) => format!("the number {text}"),
                _ => format!("the string {}", quote(text)),
            },
        }
    }
}

/// Quotes a user value for a message, shortened so a huge value cannot flood the output.
pub fn quote(text: &str) -> String {
    const MAX: usize = 60;
    if text.chars().count() > MAX {
        let short: String = text.chars().take(MAX).collect();
        format!("{:?}…", short)
    } else {
        format!("{text:?}")
    }
}

/// Plain words YAML 1.1 (what kubectl reads) resolves to booleans, besides
/// the `true`/`false` forms YAML 1.2 shares.
pub fn is_yaml11_bool(text: &str) -> bool {
    matches!(
        text,
        "y" | "Y"
            | "yes"
            | "Yes"
            | "YES"
            | "n"
            | "N"
            | "no"
            | "No"
            | "NO"
            | "on"
            | "On"
            | "ON"
            | "off"
            | "Off"
            | "OFF"
    )
}

fn resolve_plain(text: &str) -> Scalar<'_> {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Scalar::Null,
        "true" | "True" | "TRUE" => return Scalar::Bool(true),
        "false" | "False" | "FALSE" => return Scalar::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Scalar::Float(f64::INFINITY);
        }
        "-.inf" | "-.Inf" | "-.INF" => return Scalar::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Scalar::Float(f64::NAN),
        _ => {}
    }
    let unsigned = text.strip_prefix(['-', '+']).unwrap_or(text);
    if !unsigned.is_empty() && unsigned.bytes().all(|b| b.is_ascii_digit()) {
        return Scalar::Int(text.parse::<i64>().ok());
    }
    if let Some(hex) = text.strip_prefix("0x")
        && !hex.is_empty()
        && hex.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return Scalar::Int(i64::from_str_radix(hex, 16).ok());
    }
    if let Some(oct) = text.strip_prefix("0o")
        && !oct.is_empty()
        && oct.bytes().all(|b| (b'0'..=b'7').contains(&b))
    {
        return Scalar::Int(i64::from_str_radix(oct, 8).ok());
    }
    if is_core_float(unsigned)
        && let Ok(f) = text.parse::<f64>()
    {
        return Scalar::Float(f);
    }
    Scalar::Str(text)
}

/// `[0-9]*(\.[0-9]*)?([eE][-+]?[0-9]+)?` with at least one digit before the exponent.
fn is_core_float(s: &str) -> bool {
    let (mantissa, exp) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let mut parts = mantissa.splitn(2, '.');
    let int = parts.next().unwrap_or("");
    let frac = parts.next();
    let digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok = digits(int)
        && frac.is_none_or(digits)
        && (int.len() + frac.map_or(0, str::len)) > 0
        && (frac.is_some() || exp.is_some());
    let exp_ok = exp.is_none_or(|e| {
        let e = e.strip_prefix(['-', '+']).unwrap_or(e);
        !e.is_empty() && digits(e)
    });
    mantissa_ok && exp_ok
}

/// One YAML document of a stream: its tree, or why it could not be read.
#[derive(Debug)]
pub struct Document {
    /// Where the document starts (for messages about the document as a whole).
    pub pos: Pos,
    pub root: Result<Node, Vec<Diagnostic>>,
}

/// Splits raw bytes into YAML documents. Fails as a whole (one located
/// diagnostic) when the bytes are not UTF-8 or the input is too large.
pub fn parse_bytes(bytes: &[u8]) -> Result<Vec<Document>, Diagnostic> {
    if bytes.len() > MAX_INPUT_BYTES {
        return Err(Diagnostic::new(
            Pos::START,
            "",
            // Callers may stop reading one byte past the limit, so the
            // length read is not the input's size.
            format!("the input is larger than {MAX_INPUT_BYTES} bytes, the most Faultline reads"),
        ));
    }
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let good = &bytes[..e.valid_up_to()];
            let line = good.iter().filter(|&&b| b == b'\n').count() + 1;
            let line_start = good.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            // Column in characters of the valid prefix of the line.
            let col = String::from_utf8_lossy(&good[line_start..]).chars().count() + 1;
            return Err(Diagnostic::new(
                Pos::new(line, col),
                "",
                format!(
                    "the input is not UTF-8 (byte 0x{:02x} at offset {})",
                    bytes[e.valid_up_to()],
                    e.valid_up_to()
                ),
            ));
        }
    };
    Ok(parse_str(text))
}

/// Splits text into YAML documents. A syntax error ends the stream at the
/// document where it occurs; earlier documents are kept.
pub fn parse_str(text: &str) -> Vec<Document> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let options = granit_parser::options! {
        flow_nesting_limit: MAX_DEPTH,
        block_nesting_limit: MAX_DEPTH,
    };
    let mut parser = Parser::new_from_str_with_options(text, options);
    let mut docs = Vec::new();
    let mut builder: Option<Builder> = None;
    while let Some(next) = parser.next_event() {
        let (event, span) = match next {
            Ok(e) => e,
            Err(e) => {
                let m = e.marker();
                let pos = Pos::new(m.line(), m.col() + 1);
                docs.push(Document {
                    pos: builder.as_ref().map_or(pos, |b| b.doc_pos),
                    root: Err(vec![Diagnostic::new(
                        pos,
                        "",
                        format!("YAML syntax error: {}", e.info()),
                    )]),
                });
                return docs;
            }
        };
        let pos = Pos::new(span.start.line(), span.start.col() + 1);
        match event {
            Event::DocumentStart(..) => builder = Some(Builder::new(pos)),
            Event::DocumentEnd => {
                if let Some(b) = builder.take() {
                    docs.push(b.finish());
                }
            }
            Event::StreamStart | Event::StreamEnd => {}
            other => {
                if let Some(b) = builder.as_mut() {
                    b.event(other, pos);
                    if b.failed.is_some() {
                        // The tree is unusable; skip to the next document.
                        if let Some(b) = builder.take() {
                            docs.push(b.finish());
                        }
                        if !parser_skip_document(&mut parser) {
                            return docs;
                        }
                    }
                }
            }
        }
    }
    if let Some(b) = builder.take() {
        docs.push(b.finish());
    }
    docs
}

/// Skips what is left of the current document; false at the end of the stream.
fn parser_skip_document<'a>(parser: &mut Parser<'a, granit_parser::StrInput<'a>>) -> bool {
    loop {
        match parser.next_event() {
            Some(Ok((Event::DocumentEnd, _))) => return true,
            Some(Ok((Event::StreamEnd, _))) | None | Some(Err(_)) => return false,
            Some(Ok(_)) => {}
        }
    }
}

enum Frame {
    Seq {
        pos: Pos,
        items: Vec<Node>,
        anchor: usize,
    },
    Map {
        pos: Pos,
        entries: Vec<(Node, Node)>,
        /// A key waiting for its value.
        pending: Option<Node>,
        anchor: usize,
        /// Key text → line of its first occurrence; a set keeps the
        /// duplicate check linear in the number of keys.
        seen: HashMap<String, usize>,
    },
}

/// An anchored node with its size measured once, so each alias is charged
/// against the budgets before it is copied.
struct Anchored {
    node: Node,
    nodes: usize,
    bytes: usize,
    depth: usize,
}

struct Builder {
    doc_pos: Pos,
    stack: Vec<Frame>,
    root: Option<Node>,
    anchors: HashMap<usize, Anchored>,
    nodes: usize,
    /// Scalar text bytes, aliases expanded.
    bytes: usize,
    failed: Option<Diagnostic>,
    /// Diagnostics that do not make the tree unusable (duplicate keys).
    errors: Vec<Diagnostic>,
}

impl Builder {
    fn new(doc_pos: Pos) -> Self {
        Builder {
            doc_pos,
            stack: Vec::new(),
            root: None,
            anchors: HashMap::new(),
            nodes: 0,
            bytes: 0,
            failed: None,
            errors: Vec::new(),
        }
    }

    fn fail(&mut self, pos: Pos, msg: impl Into<String>) {
        if self.failed.is_none() {
            self.failed = Some(Diagnostic::new(pos, "", msg));
        }
    }

    /// Charges `nodes` nodes and `bytes` text bytes; false (after failing) when over budget.
    fn count(&mut self, nodes: usize, bytes: usize, pos: Pos) -> bool {
        self.nodes = self.nodes.saturating_add(nodes);
        self.bytes = self.bytes.saturating_add(bytes);
        if self.nodes > MAX_NODES {
            self.fail(
                pos,
                format!("the document has more than {MAX_NODES} nodes (aliases expanded)"),
            );
            return false;
        }
        if self.bytes > MAX_EXPANDED_BYTES {
            self.fail(
                pos,
                format!("the document holds more than {MAX_EXPANDED_BYTES} bytes of text (aliases expanded)"),
            );
            return false;
        }
        true
    }

    fn event(&mut self, event: Event<'_>, pos: Pos) {
        match event {
            Event::Scalar(text, style, anchor, tag) => {
                if !self.count(1, text.len(), pos) {
                    return;
                }
                let mut plain = style == ScalarStyle::Plain;
                if let Some(tag) = tag {
                    match scalar_tag(&tag, &text) {
                        Ok(p) => plain = p,
                        Err(msg) => return self.fail(pos, msg),
                    }
                }
                let node = Node {
                    pos,
                    kind: NodeKind::Scalar {
                        text: text.into_owned(),
                        plain,
                    },
                };
                self.push(node, anchor);
            }
            Event::SequenceStart(_, anchor, tag) => {
                if let Err(msg) = collection_tag(tag.as_deref(), "seq", "a list") {
                    return self.fail(pos, msg);
                }
                if self.stack.len() >= MAX_DEPTH {
                    return self.fail(pos, format!("nesting deeper than {MAX_DEPTH} levels"));
                }
                self.stack.push(Frame::Seq {
                    pos,
                    items: Vec::new(),
                    anchor,
                });
            }
            Event::MappingStart(_, anchor, tag) => {
                if let Err(msg) = collection_tag(tag.as_deref(), "map", "a mapping") {
                    return self.fail(pos, msg);
                }
                if self.stack.len() >= MAX_DEPTH {
                    return self.fail(pos, format!("nesting deeper than {MAX_DEPTH} levels"));
                }
                self.stack.push(Frame::Map {
                    pos,
                    entries: Vec::new(),
                    pending: None,
                    anchor,
                    seen: HashMap::new(),
                });
            }
            Event::SequenceEnd => {
                if let Some(Frame::Seq { pos, items, anchor }) = self.stack.pop() {
                    let node = Node {
                        pos,
                        kind: NodeKind::Seq(items),
                    };
                    if self.count(1, 0, pos) {
                        self.push(node, anchor);
                    }
                }
            }
            Event::MappingEnd => {
                if let Some(Frame::Map {
                    pos,
                    entries,
                    anchor,
                    ..
                }) = self.stack.pop()
                {
                    let node = Node {
                        pos,
                        kind: NodeKind::Map(entries),
                    };
                    if self.count(1, 0, pos) {
                        self.push(node, anchor);
                    }
                }
            }
            Event::Alias(id) => {
                let Some(a) = self.anchors.get(&id) else {
                    return self.fail(pos, "alias to an anchor that is not defined before it");
                };
                let (nodes, bytes, depth) = (a.nodes, a.bytes, a.depth);
                // Expanded, the alias nests its tree here; paths and the
                // decoders' recursion rely on the depth limit holding.
                if self.stack.len().saturating_add(depth) > MAX_DEPTH {
                    return self.fail(
                        pos,
                        format!("nesting deeper than {MAX_DEPTH} levels (aliases expanded)"),
                    );
                }
                if !self.count(nodes, bytes, pos) {
                    return;
                }
                if let Some(mut node) = self.anchors.get(&id).map(|a| a.node.clone()) {
                    node.pos = pos;
                    self.push(node, 0);
                }
            }
            _ => {}
        }
    }

    fn push(&mut self, node: Node, anchor: usize) {
        if anchor != 0 {
            let (nodes, bytes, depth) = measure(&node);
            // The anchor keeps a copy; nested anchors would otherwise copy
            // the same text once per level, uncharged.
            if !self.count(nodes, bytes, node.pos) {
                return;
            }
            self.anchors.insert(
                anchor,
                Anchored {
                    node: node.clone(),
                    nodes,
                    bytes,
                    depth,
                },
            );
        }
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map {
                entries,
                pending,
                seen,
                ..
            }) => match pending.take() {
                None => {
                    let NodeKind::Scalar { text, plain } = &node.kind else {
                        let pos = node.pos;
                        return self.fail(
                            pos,
                            "mapping keys must be plain values, not lists or mappings",
                        );
                    };
                    // Only a plain `<<` is a merge key; a quoted one is an ordinary key.
                    if *plain && text == "<<" {
                        return self.fail(node.pos, "YAML merge keys (<<) are not supported");
                    }
                    match seen.get(text.as_str()) {
                        Some(first) => {
                            let msg =
                                format!("duplicate key {} (first at line {first})", quote(text));
                            self.errors.push(Diagnostic::new(node.pos, "", msg));
                        }
                        None => {
                            seen.insert(text.clone(), node.pos.line);
                        }
                    }
                    *pending = Some(node);
                }
                Some(key) => entries.push((key, node)),
            },
        }
    }

    fn finish(self) -> Document {
        let doc_pos = self.doc_pos;
        let root = match (self.failed, self.root) {
            (Some(d), _) => Err(vec![d]),
            (None, _) if !self.errors.is_empty() => Err(self.errors),
            (None, Some(root)) => Ok(root),
            (None, None) => Ok(Node {
                pos: doc_pos,
                kind: NodeKind::Scalar {
                    text: String::new(),
                    plain: true,
                },
            }),
        };
        Document { pos: doc_pos, root }
    }
}

/// What a tag makes of a scalar: whether it is resolved by the core schema
/// (`true`) or a string (`false`), or why the tag does not fit.
fn scalar_tag(tag: &Tag, text: &str) -> Result<bool, String> {
    let core = tag.core_suffix();
    let (fits, what) = match (core, resolve_plain(text)) {
        (Some("str"), _) => return Ok(false),
        (Some("int"), r) => (matches!(r, Scalar::Int(_)), "an integer"),
        // A float may be written without a fraction (`!!float 1`).
        (Some("float"), r) => (matches!(r, Scalar::Float(_) | Scalar::Int(_)), "a number"),
        (Some("bool"), r) => (matches!(r, Scalar::Bool(_)), "true or false"),
        (Some("null"), r) => (matches!(r, Scalar::Null), "null"),
        (Some(other), _) => {
            return Err(format!(
                "the tag {} is for {}, not a single value",
                tag.original(),
                if other == "seq" { "lists" } else { "mappings" }
            ));
        }
        (None, _) => {
            return Err(format!(
                "custom YAML tags like {} are not supported",
                tag.original()
            ));
        }
    };
    if fits {
        Ok(true)
    } else {
        Err(format!(
            "{} is not {what}, as its tag {} says",
            quote(text),
            tag.original()
        ))
    }
}

/// Checks a collection's tag: none, or the core tag of its kind (`seq`, `map`).
fn collection_tag(tag: Option<&Tag>, core: &str, what: &str) -> Result<(), String> {
    let Some(tag) = tag else {
        return Ok(());
    };
    match tag.core_suffix() {
        Some(c) if c == core => Ok(()),
        Some(_) => Err(format!("the tag {} does not fit {what}", tag.original())),
        None => Err(format!(
            "custom YAML tags like {} are not supported",
            tag.original()
        )),
    }
}

impl Node {
    /// The text of a scalar (a mapping key, for instance), whatever it resolves to.
    pub fn text(&self) -> Option<&str> {
        match &self.kind {
            NodeKind::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }
}

/// Nodes, scalar text bytes and collection nesting depth (0 for a scalar) of
/// a tree. Recursion is bounded: trees are at most `MAX_DEPTH` deep.
fn measure(node: &Node) -> (usize, usize, usize) {
    let children: Vec<&Node> = match &node.kind {
        NodeKind::Scalar { text, .. } => return (1, text.len(), 0),
        NodeKind::Seq(items) => items.iter().collect(),
        NodeKind::Map(entries) => entries.iter().flat_map(|(k, v)| [k, v]).collect(),
    };
    children
        .into_iter()
        .map(measure)
        .fold((1, 0, 1), |(n, b, d), (cn, cb, cd)| {
            (n.saturating_add(cn), b.saturating_add(cb), d.max(cd + 1))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(text: &str) -> Node {
        let mut docs = parse_str(text);
        assert_eq!(docs.len(), 1, "{docs:?}");
        docs.remove(0).root.expect("parses")
    }

    #[test]
    fn positions_are_one_based() {
        let r = root("a: 1\nb:\n  c: [x, y]\n");
        let c = r.get("b").and_then(|b| b.get("c")).expect("c");
        assert_eq!(c.pos, Pos::new(3, 6));
        match &c.kind {
            NodeKind::Seq(items) => assert_eq!(items[1].pos, Pos::new(3, 10)),
            k => panic!("{k:?}"),
        }
    }

    #[test]
    fn core_schema_resolution() {
        let r = root(
            "a: 1\nb: '1'\nc: 1.5\nd: true\ne: ~\nf: 1e3\ng: 99999999999999999999\nh: 1.2.3\ni: !!str 5\n",
        );
        assert_eq!(
            r.get("a").and_then(Node::scalar),
            Some(Scalar::Int(Some(1)))
        );
        assert_eq!(r.get("b").and_then(Node::scalar), Some(Scalar::Str("1")));
        assert_eq!(r.get("c").and_then(Node::scalar), Some(Scalar::Float(1.5)));
        assert_eq!(r.get("d").and_then(Node::scalar), Some(Scalar::Bool(true)));
        assert_eq!(r.get("e").and_then(Node::scalar), Some(Scalar::Null));
        assert_eq!(
            r.get("f").and_then(Node::scalar),
            Some(Scalar::Float(1000.0))
        );
        assert_eq!(r.get("g").and_then(Node::scalar), Some(Scalar::Int(None)));
        assert_eq!(
            r.get("h").and_then(Node::scalar),
            Some(Scalar::Str("1.2.3"))
        );
        assert_eq!(r.get("i").and_then(Node::scalar), Some(Scalar::Str("5")));
    }

    #[test]
    fn duplicate_keys_are_located() {
        let docs = parse_str("a: 1\nb: 2\na: 3\n");
        let errs = docs[0].root.as_ref().expect_err("duplicate");
        assert_eq!(errs[0].pos, Pos::new(3, 1));
        assert!(
            errs[0]
                .message
                .contains("duplicate key \"a\" (first at line 1)")
        );
    }

    #[test]
    fn aliases_expand_within_a_budget() {
        let r = root("a: &x {k: v}\nb: *x\n");
        assert_eq!(
            r.get("b").and_then(|b| b.get("k")).and_then(Node::scalar),
            Some(Scalar::Str("v"))
        );
        let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let prev = format!("*a{}", i - 1);
            bomb.push_str(&format!("a{i}: &a{i} [{}]\n", vec![prev; 10].join(", ")));
        }
        let docs = parse_str(&bomb);
        let err = docs[0].root.as_ref().expect_err("bomb refused");
        assert!(err[0].message.contains("more than"), "{err:?}");
    }

    #[test]
    fn aliases_are_charged_for_bytes_and_depth() {
        let big = format!(
            "a: &a {}\nb: [{}]\n",
            "x".repeat(1 << 20),
            vec!["*a"; 5000].join(", ")
        );
        let docs = parse_str(&big);
        let err = docs[0].root.as_ref().expect_err("too many bytes");
        assert!(err[0].message.contains("bytes of text"), "{err:?}");
        // Anchors are charged for the copy they keep: nested anchors around
        // one large scalar would copy it once per level.
        let nested = format!(
            "a: {}{}{}\n",
            (0..40).map(|i| format!("&n{i} [")).collect::<String>(),
            "x".repeat(1 << 20),
            "]".repeat(40)
        );
        let docs = parse_str(&nested);
        let err = docs[0].root.as_ref().expect_err("too many bytes");
        assert!(err[0].message.contains("bytes of text"), "{err:?}");
        // Within the budget, the expanded tree is kept.
        let r = root("a: &a [[x]]\nb: [*a, *a]\n");
        assert_eq!(measure(&r), (13, 5, 4));
        // An alias may not nest its tree past the depth limit.
        let inner = format!("{}x{}", "[".repeat(40), "]".repeat(40));
        let text = format!("a: &a {inner}\nb: {}*a{}\n", "[".repeat(30), "]".repeat(30));
        let docs = parse_str(&text);
        let err = docs[0].root.as_ref().expect_err("too deep");
        assert_eq!(err[0].pos, Pos::new(2, 34));
        assert!(err[0].message.contains("(aliases expanded)"), "{err:?}");
    }

    #[test]
    fn many_keys_are_checked_in_linear_time() {
        let text: String = (0..90_000).map(|i| format!("k{i}: {i}\n")).collect();
        let r = root(&text);
        assert_eq!(
            r.get("k89999").and_then(Node::scalar),
            Some(Scalar::Int(Some(89_999)))
        );
        let docs = parse_str(&format!("{text}k5: again\n"));
        let err = docs[0].root.as_ref().expect_err("duplicate");
        assert_eq!(err.len(), 1);
        assert!(
            err[0]
                .message
                .contains("duplicate key \"k5\" (first at line 6)")
        );
    }

    #[test]
    fn keys_are_found_by_their_text() {
        let r = root("1: a\ntrue: b\n'x': c\n");
        assert_eq!(r.get("1").and_then(Node::scalar), Some(Scalar::Str("a")));
        assert_eq!(r.get("true").and_then(Node::scalar), Some(Scalar::Str("b")));
        assert_eq!(r.get("x").and_then(Node::scalar), Some(Scalar::Str("c")));
    }

    #[test]
    fn core_tags_must_fit() {
        let r = root(
            "a: !!int \"1\"\nb: !!float 1\nc: !!bool 'true'\nd: !!null ''\ne: !!str 1\nf: !!map {}\ng: !!seq []\n",
        );
        assert_eq!(
            r.get("a").and_then(Node::scalar),
            Some(Scalar::Int(Some(1)))
        );
        assert_eq!(
            r.get("b").and_then(Node::scalar),
            Some(Scalar::Int(Some(1)))
        );
        assert_eq!(r.get("c").and_then(Node::scalar), Some(Scalar::Bool(true)));
        assert_eq!(r.get("d").and_then(Node::scalar), Some(Scalar::Null));
        assert_eq!(r.get("e").and_then(Node::scalar), Some(Scalar::Str("1")));
        for bad in [
            "a: !!int x",
            "a: !!int 1.5",
            "a: !!float x",
            "a: !!bool yes",
            "a: !!null 0",
            "a: !!map x",
            "a: !!seq {}",
            "a: !!map []",
            "a: !!str []",
            "a: !foo {}",
            "a: !foo [x]",
            "!!seq {a: 1}",
        ] {
            let docs = parse_str(bad);
            assert!(docs[0].root.is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn only_plain_double_angle_is_a_merge_key() {
        let docs = parse_str("a: &a {x: 1}\nb: {<<: *a}\n");
        let err = docs[0].root.as_ref().expect_err("merge");
        assert!(err[0].message.contains("merge keys"), "{err:?}");
        for quoted in ["b: {\"<<\": 1}", "b: {'<<': 1}", "b: {!!str <<: 1}"] {
            let r = root(quoted);
            assert_eq!(
                r.get("b").and_then(|b| b.get("<<")).and_then(Node::scalar),
                Some(Scalar::Int(Some(1))),
                "{quoted}"
            );
        }
    }

    #[test]
    fn deep_nesting_is_refused() {
        let text = "[".repeat(10_000);
        let docs = parse_str(&text);
        assert!(docs[0].root.is_err());
    }

    #[test]
    fn syntax_errors_keep_earlier_documents() {
        let docs = parse_str("a: 1\n---\nb: [1, 2\n");
        assert_eq!(docs.len(), 2);
        assert!(docs[0].root.is_ok());
        let err = docs[1].root.as_ref().expect_err("syntax");
        assert!(err[0].message.starts_with("YAML syntax error"), "{err:?}");
    }

    #[test]
    fn non_utf8_is_located() {
        let err = parse_bytes(b"a: 1\nb: \xff\n").expect_err("not utf8");
        assert_eq!(err.pos, Pos::new(2, 4));
    }
}
