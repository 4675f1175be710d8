//! Decoding typed values from the located YAML tree, collecting every problem.
//!
//! Each decoder returns `None` after reporting why, so a caller can decode
//! all of a struct's fields (reporting every problem) before giving up.

use std::{collections::BTreeMap, str::FromStr};

use crate::{
    diag::{Diagnostic, Path, Pos, did_you_mean},
    yaml::{Node, NodeKind, Scalar, is_yaml11_bool, quote},
};

/// Collects diagnostics while decoding one document.
#[derive(Debug, Default)]
pub struct Cx {
    pub errors: Vec<Diagnostic>,
    /// The document goes through kubectl, which reads YAML 1.1: plain words
    /// it takes as booleans (`yes`, `no`, `on`, …) are refused where a string
    /// is expected, and integers with a leading zero (octal to it). Off for
    /// local-only kinds (Topology), which only Faultline reads.
    pub kubectl: bool,
}

impl Cx {
    pub fn error(&mut self, pos: Pos, path: &Path, message: impl Into<String>) {
        self.errors
            .push(Diagnostic::new(pos, path.as_str(), message));
    }
}

pub trait Decode: Sized {
    fn decode(cx: &mut Cx, node: &Node, path: &Path) -> Option<Self>;
}

/// The fields of a mapping that decodes into a struct.
#[derive(Debug)]
pub struct Fields<'n> {
    pos: Pos,
    entries: &'n [(Node, Node)],
    path: Path,
    /// Known fields that unknown keys were taken to be typos of.
    suggested: Vec<String>,
}

impl<'n> Fields<'n> {
    /// Checks that `node` is a mapping whose keys are all in `known`; an empty
    /// value (`key:` with nothing) counts as an empty mapping.
    pub fn new(cx: &mut Cx, node: &'n Node, path: &Path, known: &[&str]) -> Option<Fields<'n>> {
        let entries: &[(Node, Node)] = match &node.kind {
            NodeKind::Map(entries) => entries,
            _ if node.is_null() => &[],
            _ => {
                cx.error(
                    node.pos,
                    path,
                    format!("expected a mapping, found {}", node.describe()),
                );
                return None;
            }
        };
        let mut suggested = Vec::new();
        for (key, _) in entries {
            let name = key_text(key);
            if !known.contains(&name) {
                let hint = match did_you_mean(name, known.iter().copied()) {
                    Some(s) => {
                        suggested.push(s.to_owned());
                        format!("unknown field (did you mean {s}?)")
                    }
                    None => format!("unknown field; expected one of: {}", known.join(", ")),
                };
                cx.error(key.pos, &path.key(name), hint);
            }
        }
        Some(Fields {
            pos: node.pos,
            entries,
            path: path.clone(),
            suggested,
        })
    }

    /// Whether an unknown key was reported as a likely typo of one of `keys`;
    /// a "missing X" report would then only repeat that hint.
    pub fn suggested_any(&self, keys: &[&str]) -> bool {
        self.suggested.iter().any(|s| keys.contains(&s.as_str()))
    }

    pub fn pos(&self) -> Pos {
        self.pos
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The value under `key`, unless absent or null.
    pub fn node(&self, key: &str) -> Option<&'n Node> {
        self.entries
            .iter()
            .find(|(k, _)| key_text(k) == key)
            .map(|(_, v)| v)
            .filter(|v| !v.is_null())
    }

    /// Which of `keys` are present (and not null), in the order they were written.
    pub fn present<'k>(&self, keys: &[&'k str]) -> Vec<&'k str> {
        let mut found: Vec<(Pos, &'k str)> = keys
            .iter()
            .filter_map(|k| self.node(k).map(|n| (n.pos, *k)))
            .collect();
        found.sort();
        found.into_iter().map(|(_, k)| k).collect()
    }

    /// Where `key` itself is written (for problems with the key, not its value).
    pub fn key_pos(&self, key: &str) -> Pos {
        self.entries
            .iter()
            .find(|(k, _)| key_text(k) == key)
            .map_or(self.pos, |(k, _)| k.pos)
    }

    /// Whether `key` is written at all, even with an empty value.
    pub fn has_key(&self, key: &str) -> bool {
        self.entries.iter().any(|(k, _)| key_text(k) == key)
    }

    /// A required field: reports it when missing or empty.
    pub fn req<T: Decode>(&self, cx: &mut Cx, key: &str) -> Option<T> {
        match self.node(key) {
            Some(n) => T::decode(cx, n, &self.path.key(key)),
            // A misspelling of it was already reported with a hint.
            None if self.suggested_any(&[key]) => None,
            None => {
                cx.error(self.key_pos(key), &self.path.key(key), "is required");
                None
            }
        }
    }

    /// An optional field: `Some(None)` when absent, `None` when present but invalid.
    pub fn opt<T: Decode>(&self, cx: &mut Cx, key: &str) -> Option<Option<T>> {
        match self.node(key) {
            Some(n) => T::decode(cx, n, &self.path.key(key)).map(Some),
            None => Some(None),
        }
    }

    /// An optional list or map field that defaults to empty.
    pub fn list<T: Decode + Default>(&self, cx: &mut Cx, key: &str) -> Option<T> {
        self.opt(cx, key).map(Option::unwrap_or_default)
    }
}

fn key_text(key: &Node) -> &str {
    key.text().unwrap_or("")
}

/// A plain word that YAML 1.1, which kubectl reads, takes as a boolean while
/// YAML 1.2 takes it as a string (`yes`, `no`, `on`, `off`, `y`, `n`).
fn kubectl_bool<'n>(cx: &Cx, node: &'n Node) -> Option<&'n str> {
    if !cx.kubectl {
        return None;
    }
    match &node.kind {
        NodeKind::Scalar { text, plain: true } if is_yaml11_bool(text) => Some(text),
        _ => None,
    }
}

fn kubectl_bool_message(word: &str) -> String {
    format!(
        "kubectl reads {word} as a boolean; quote it: {}",
        quote(word)
    )
}

/// Why an integer's text would be read differently by kubectl (YAML 1.1) or
/// is not plain decimal (`0x1F`, `0o17`, `017`).
fn not_decimal(cx: &Cx, node: &Node, value: Option<i64>) -> Option<String> {
    let NodeKind::Scalar { text, .. } = &node.kind else {
        return None;
    };
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    let decimal = value.map(|v| format!(": {v}")).unwrap_or_default();
    if digits.starts_with("0x") || digits.starts_with("0o") {
        Some(format!(
            "{} is not decimal; write the number in decimal{decimal}",
            quote(text)
        ))
    } else if cx.kubectl
        && digits.len() > 1
        && digits.starts_with('0')
        && !digits.contains(['.', 'e', 'E'])
    {
        Some(format!(
            "{} has a leading zero, and kubectl reads it as an octal number; write the number in decimal{decimal}",
            quote(text)
        ))
    } else {
        None
    }
}

impl Decode for String {
    fn decode(cx: &mut Cx, node: &Node, path: &Path) -> Option<Self> {
        if let Some(word) = kubectl_bool(cx, node) {
            cx.error(node.pos, path, kubectl_bool_message(word));
            return None;
        }
        match node.scalar() {
            Some(Scalar::Str(s)) => Some(s.to_owned()),
            Some(Scalar::Int(_) | Scalar::Float(_) | Scalar::Bool(_)) => {
                let NodeKind::Scalar { text, .. } = &node.kind else {
                    return None;
                };
                cx.error(
                    node.pos,
                    path,
                    format!(
                        "expected a string, found {} (quote it: {})",
                        node.describe(),
                        quote(text)
                    ),
                );
                None
            }
            _ => {
                cx.error(
                    node.pos,
                    path,
                    format!("expected a string, found {}", node.describe()),
                );
                None
            }
        }
    }
}

impl Decode for bool {
    fn decode(cx: &mut Cx, node: &Node, path: &Path) -> Option<Self> {
        match node.scalar() {
            Some(Scalar::Bool(b)) => Some(b),
            _ => {
                cx.error(
                    node.pos,
                    path,
                    format!("expected true or false, found {}", node.describe()),
                );
                None
            }
        }
    }
}

fn decode_int(cx: &mut Cx, node: &Node, path: &Path, min: i64, max: i64) -> Option<i64> {
    if let Some(Scalar::Int(v)) = node.scalar()
        && let Some(msg) = not_decimal(cx, node, v)
    {
        cx.error(node.pos, path, msg);
        return None;
    }
    let found = match node.scalar() {
        Some(Scalar::Int(Some(v))) if (min..=max).contains(&v) => return Some(v),
        Some(Scalar::Int(Some(v))) => {
            let msg = if v < min {
                format!("{v} is below the minimum of {min}")
            } else {
                format!("{v} is above the maximum of {max}")
            };
            cx.error(node.pos, path, msg);
            return None;
        }
        Some(Scalar::Int(None)) => {
            cx.error(
                node.pos,
                path,
                format!(
                    "{} is too large to represent (at most {max})",
                    node.describe()
                ),
            );
            return None;
        }
        Some(Scalar::Str(s)) if s.trim().parse::<i64>().is_ok() => {
            format!("{} (write the number without quotes)", node.describe())
        }
        _ => node.describe(),
    };
    cx.error(
        node.pos,
        path,
        format!("expected a whole number, found {found}"),
    );
    None
}

macro_rules! int_decode {
    ($($ty:ty),*) => {$(
        impl Decode for $ty {
            fn decode(cx: &mut Cx, node: &Node, path: &Path) -> Option<Self> {
                let min = i64::try_from(<$ty>::MIN).unwrap_or(i64::MIN);
                let max = i64::try_from(<$ty>::MAX).unwrap_or(i64::MAX);
                decode_int(cx, node, path, min, max).and_then(|v| <$ty>::try_from(v).ok())
            }
        }
    )*};
}
int_decode!(u16, u32, u64, i32, i64);

impl Decode for f64 {
    fn decode(cx: &mut Cx, node: &Node, path: &Path) -> Option<Self> {
        if let Some(Scalar::Int(v)) = node.scalar()
            && let Some(msg) = not_decimal(cx, node, v)
        {
            cx.error(node.pos, path, msg);
            return None;
        }
        let v = match node.scalar() {
            Some(Scalar::Int(Some(v))) => v as f64,
            Some(Scalar::Float(f)) if f.is_finite() => f,
            Some(Scalar::Int(None)) => {
                cx.error(
                    node.pos,
                    path,
                    format!("{} is too large to represent", node.describe()),
                );
                return None;
            }
            _ => {
                cx.error(
                    node.pos,
                    path,
                    format!("expected a number, found {}", node.describe()),
                );
                return None;
            }
        };
        Some(v)
    }
}

impl<T: Decode> Decode for Vec<T> {
    fn decode(cx: &mut Cx, node: &Node, path: &Path) -> Option<Self> {
        let NodeKind::Seq(items) = &node.kind else {
            cx.error(
                node.pos,
                path,
                format!("expected a list, found {}", node.describe()),
            );
            return None;
        };
        let decoded: Vec<Option<T>> = items
            .iter()
            .enumerate()
            .map(|(i, item)| T::decode(cx, item, &path.index(i)))
            .collect();
        decoded.into_iter().collect()
    }
}

impl<T: Decode> Decode for BTreeMap<String, T> {
    fn decode(cx: &mut Cx, node: &Node, path: &Path) -> Option<Self> {
        let NodeKind::Map(entries) = &node.kind else {
            cx.error(
                node.pos,
                path,
                format!("expected a mapping, found {}", node.describe()),
            );
            return None;
        };
        let mut ok = true;
        let mut out = BTreeMap::new();
        for (k, v) in entries {
            let key = key_text(k).to_owned();
            // kubectl would turn the key into "true" or "false".
            if let Some(word) = kubectl_bool(cx, k) {
                cx.error(k.pos, &path.key(&key), kubectl_bool_message(word));
                ok = false;
            }
            match T::decode(cx, v, &path.key(&key)) {
                Some(val) => {
                    out.insert(key, val);
                }
                None => ok = false,
            }
        }
        ok.then_some(out)
    }
}

/// Decodes a scalar written as text through its `FromStr`, whose error is the message.
/// Numbers are read as their text, so `every: 30` gets the duration message.
pub fn decode_from_str<T>(cx: &mut Cx, node: &Node, path: &Path) -> Option<T>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    match &node.kind {
        NodeKind::Scalar { text, .. } if !node.is_null() => match text.parse::<T>() {
            Ok(v) => Some(v),
            Err(e) => {
                cx.error(node.pos, path, e.to_string());
                None
            }
        },
        _ => {
            cx.error(
                node.pos,
                path,
                format!("expected a string, found {}", node.describe()),
            );
            None
        }
    }
}

/// Implements `Decode` through `FromStr` for types written as strings.
#[macro_export]
#[doc(hidden)]
macro_rules! decode_via_from_str {
    ($($ty:ty),*) => {$(
        impl $crate::decode::Decode for $ty {
            fn decode(
                cx: &mut $crate::decode::Cx,
                node: &$crate::yaml::Node,
                path: &$crate::diag::Path,
            ) -> Option<Self> {
                $crate::decode::decode_from_str(cx, node, path)
            }
        }
    )*};
}

decode_via_from_str!(
    crate::units::Duration,
    crate::units::Percent,
    crate::units::Rate,
    crate::units::Size,
    crate::units::Cpu
);

/// Defines a string enum: serde and schema names, `FromStr` with a
/// "did you mean" hint, `Display`, and `Decode`.
#[macro_export]
#[doc(hidden)]
macro_rules! string_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident ($what:literal) {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord,
                 serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
        $vis enum $name {
            $( $(#[$vmeta])* #[serde(rename = $text)] $variant ),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::units::UnitError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => {
                        let names = [$($text),+];
                        let hint = match $crate::diag::did_you_mean(s, names) {
                            Some(n) => format!(" (did you mean {n}?)"),
                            None => format!("; use one of: {}", names.join(", ")),
                        };
                        Err($crate::units::UnitError(format!(
                            "{} is not {}{hint}", $crate::yaml::quote(s), $what
                        )))
                    }
                }
            }
        }

        $crate::decode_via_from_str!($name);
    };
}
