//! A YAML document tree in which every node knows where it was written.
//!
//! serde-based deserializers stop at the first problem; Faultline reports every
//! problem of a file at once, each at its own line and column. So parsing goes
//! through a small located tree built from `granit-parser` events (the parser
//! `serde-saphyr` uses), and typed values are decoded from it (see `decode`).

use std::collections::HashMap;

use granit_parser::{Event, Parser, ScalarStyle};

use crate::diag::{Diagnostic, Pos};

/// Inputs above this size are refused before parsing: no Faultline file is
/// anywhere near it, and it bounds the memory a hostile input can take.
pub const MAX_INPUT_BYTES: usize = 8 << 20;
/// Nodes per document, aliases expanded: stops "billion laughs" inputs.
pub const MAX_NODES: usize = 200_000;
/// Nesting depth; deeper input is refused rather than risking the stack.
pub const MAX_DEPTH: usize = 64;

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub pos: Pos,
    pub kind: NodeKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum NodeKind {
    /// `plain` is false for quoted, block and `!!str`-tagged scalars, which are
    /// always strings; plain scalars may also be null, booleans or numbers.
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

    /// The value under `key` if this is a mapping that has it.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.kind {
            NodeKind::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.scalar() == Some(Scalar::Str(key)))
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
            format!(
                "the input is {} bytes; Faultline reads files up to {} bytes",
                bytes.len(),
                MAX_INPUT_BYTES
            ),
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
    Seq(Pos, Vec<Node>, usize),
    Map(Pos, Vec<(Node, Node)>, Option<Node>, usize),
}

struct Builder {
    doc_pos: Pos,
    stack: Vec<Frame>,
    root: Option<Node>,
    anchors: HashMap<usize, Node>,
    nodes: usize,
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
            failed: None,
            errors: Vec::new(),
        }
    }

    fn fail(&mut self, pos: Pos, msg: impl Into<String>) {
        if self.failed.is_none() {
            self.failed = Some(Diagnostic::new(pos, "", msg));
        }
    }

    fn count(&mut self, n: usize, pos: Pos) -> bool {
        self.nodes = self.nodes.saturating_add(n);
        if self.nodes > MAX_NODES {
            self.fail(
                pos,
                format!("the document has more than {MAX_NODES} nodes (aliases expanded)"),
            );
            return false;
        }
        true
    }

    fn event(&mut self, event: Event<'_>, pos: Pos) {
        match event {
            Event::Scalar(text, style, anchor, tag) => {
                if !self.count(1, pos) {
                    return;
                }
                let mut plain = style == ScalarStyle::Plain;
                if let Some(tag) = tag {
                    match tag.core_suffix() {
                        Some("str") => plain = false,
                        Some(_) => {}
                        None => {
                            return self.fail(
                                pos,
                                format!(
                                    "custom YAML tags like {} are not supported",
                                    tag.original()
                                ),
                            );
                        }
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
            Event::SequenceStart(_, anchor, _) => {
                if self.stack.len() >= MAX_DEPTH {
                    return self.fail(pos, format!("nesting deeper than {MAX_DEPTH} levels"));
                }
                self.stack.push(Frame::Seq(pos, Vec::new(), anchor));
            }
            Event::MappingStart(_, anchor, _) => {
                if self.stack.len() >= MAX_DEPTH {
                    return self.fail(pos, format!("nesting deeper than {MAX_DEPTH} levels"));
                }
                self.stack.push(Frame::Map(pos, Vec::new(), None, anchor));
            }
            Event::SequenceEnd => {
                if let Some(Frame::Seq(p, items, anchor)) = self.stack.pop() {
                    let node = Node {
                        pos: p,
                        kind: NodeKind::Seq(items),
                    };
                    self.count(1, p);
                    self.push(node, anchor);
                }
            }
            Event::MappingEnd => {
                if let Some(Frame::Map(p, entries, _, anchor)) = self.stack.pop() {
                    let node = Node {
                        pos: p,
                        kind: NodeKind::Map(entries),
                    };
                    self.count(1, p);
                    self.push(node, anchor);
                }
            }
            Event::Alias(id) => match self.anchors.get(&id).cloned() {
                Some(mut node) => {
                    if !self.count(node_count(&node), pos) {
                        return;
                    }
                    node.pos = pos;
                    self.push(node, 0);
                }
                None => self.fail(pos, "alias to an anchor that is not defined before it"),
            },
            _ => {}
        }
    }

    fn push(&mut self, node: Node, anchor: usize) {
        if anchor != 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Frame::Seq(_, items, _)) => items.push(node),
            Some(Frame::Map(_, entries, pending, _)) => match pending.take() {
                None => {
                    if !matches!(node.kind, NodeKind::Scalar { .. }) {
                        let pos = node.pos;
                        return self.fail(
                            pos,
                            "mapping keys must be plain values, not lists or mappings",
                        );
                    }
                    if node.get_key_text() == Some("<<") {
                        return self.fail(node.pos, "YAML merge keys (<<) are not supported");
                    }
                    if let Some((first, _)) = entries
                        .iter()
                        .find(|(k, _)| k.get_key_text() == node.get_key_text())
                    {
                        let msg = format!(
                            "duplicate key {} (first at line {})",
                            quote(node.get_key_text().unwrap_or("")),
                            first.pos.line
                        );
                        self.errors.push(Diagnostic::new(node.pos, "", msg));
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

impl Node {
    fn get_key_text(&self) -> Option<&str> {
        match &self.kind {
            NodeKind::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }
}

fn node_count(node: &Node) -> usize {
    match &node.kind {
        NodeKind::Scalar { .. } => 1,
        NodeKind::Seq(items) => 1 + items.iter().map(node_count).sum::<usize>(),
        NodeKind::Map(entries) => {
            1 + entries
                .iter()
                .map(|(k, v)| node_count(k) + node_count(v))
                .sum::<usize>()
        }
    }
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
