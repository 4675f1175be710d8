//! Located diagnostics: `LINE:COL: field.path: what is wrong`.

use std::fmt;

/// A 1-based line and column (columns count characters, not bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

impl Pos {
    pub const START: Pos = Pos { line: 1, col: 1 };

    pub fn new(line: usize, col: usize) -> Self {
        Pos { line, col }
    }
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

/// One problem in an input: where, which field, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub pos: Pos,
    /// The field path, like `spec.faults[1].kill.every`; empty for problems
    /// with the document as a whole (syntax errors).
    pub path: String,
    pub message: String,
}

impl Diagnostic {
    pub fn new(pos: Pos, path: impl Into<String>, message: impl Into<String>) -> Self {
        Diagnostic {
            pos,
            path: path.into(),
            message: message.into(),
        }
    }

    /// Formats the diagnostic for a named input: `FILE:LINE:COL: path: message`.
    pub fn display_in<'a>(&'a self, file: &'a str) -> impl fmt::Display + 'a {
        InFile { file, diag: self }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}: {}", self.pos, self.message)
        } else {
            write!(f, "{}: {}: {}", self.pos, self.path, self.message)
        }
    }
}

struct InFile<'a> {
    file: &'a str,
    diag: &'a Diagnostic,
}

impl fmt::Display for InFile<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.diag)
    }
}

/// Keys longer than this many characters are shortened in paths.
pub const MAX_KEY_CHARS: usize = 64;

/// A field path being built while walking a document.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Path(String);

impl Path {
    pub fn root() -> Self {
        Path(String::new())
    }

    /// `a.b`, or `a["app.kubernetes.io/name"]` when the key is not a plain identifier.
    /// Keys longer than `MAX_KEY_CHARS` are shortened with `…`, so a huge key
    /// cannot make every path below it (and every message) huge.
    pub fn key(&self, key: &str) -> Path {
        let short: String;
        let key = match key.char_indices().nth(MAX_KEY_CHARS) {
            Some((cut, _)) => {
                short = format!("{}…", &key[..cut]);
                short.as_str()
            }
            None => key,
        };
        let plain = !key.is_empty()
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if plain {
            if self.0.is_empty() {
                Path(key.to_owned())
            } else {
                Path(format!("{}.{key}", self.0))
            }
        } else {
            Path(format!("{}[{key:?}]", self.0))
        }
    }

    pub fn index(&self, i: usize) -> Path {
        Path(format!("{}[{i}]", self.0))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The enclosing path (`a.b[2].c` → `a.b[2]`), or None at the root.
    pub fn parent(&self) -> Option<Path> {
        if self.0.is_empty() {
            return None;
        }
        let cut = if self.0.ends_with("\"]") {
            self.0.rfind("[\"")
        } else if self.0.ends_with(']') {
            self.0.rfind('[')
        } else {
            self.0.rfind('.')
        }
        .unwrap_or(0);
        Some(Path(self.0[..cut].to_owned()))
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The closest of `candidates` to `word`, if close enough to be a likely typo.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let lower = word.to_ascii_lowercase();
    let candidates: Vec<&'a str> = candidates.into_iter().collect();
    // A word the candidate ends with is a likely shorthand (KILL for SIGKILL).
    if lower.len() >= 3
        && let Some(c) = candidates
            .iter()
            .find(|c| c.to_ascii_lowercase().ends_with(&lower))
    {
        return Some(c);
    }
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(&lower, &c.to_ascii_lowercase()), c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let p = Path::root().key("spec").key("faults").index(1).key("kill");
        assert_eq!(p.as_str(), "spec.faults[1].kill");
        assert_eq!(p.parent().map(|p| p.0), Some("spec.faults[1]".into()));
        let long = "k".repeat(10_000);
        let p = Path::root().key("labels").key(&long).key("x");
        assert_eq!(
            p.as_str(),
            format!("labels[\"{}…\"].x", "k".repeat(MAX_KEY_CHARS))
        );
        assert_eq!(
            p.parent().and_then(|p| p.parent()).map(|p| p.0),
            Some("labels".into())
        );
        let q = Path::root().key(&format!("a/{long}"));
        assert_eq!(q.as_str().chars().count(), MAX_KEY_CHARS + 5);
        assert_eq!(q.parent().map(|p| p.0), Some(String::new()));
        let l = Path::root().key("labels").key("app.kubernetes.io/name");
        assert_eq!(l.as_str(), "labels[\"app.kubernetes.io/name\"]");
        assert_eq!(l.parent().map(|p| p.0), Some("labels".into()));
    }

    #[test]
    fn suggestions() {
        assert_eq!(
            did_you_mean("duraton", ["duration", "schedule"]),
            Some("duration")
        );
        assert_eq!(
            did_you_mean("Latency", ["latency", "kill"]),
            Some("latency")
        );
        assert_eq!(did_you_mean("zzz", ["duration", "schedule"]), None);
    }
}
