//! Semantic checks on typed values, independent of where they came from.
//!
//! Problems carry a field path; the document layer turns paths into line and
//! column, and the controller can show them as they are at admission time.

use std::{collections::HashSet, fmt};

use crate::{diag::Path, yaml::quote};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: Path,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

#[derive(Debug, Default)]
pub struct Problems(pub Vec<Problem>);

impl Problems {
    pub(crate) fn add(&mut self, path: Path, message: impl Into<String>) {
        self.0.push(Problem {
            path,
            message: message.into(),
        });
    }

    pub fn into_result(self) -> Result<(), Vec<Problem>> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self.0)
        }
    }
}

/// RFC 1123 label: what Kubernetes accepts as a namespace or a DNS-safe name.
pub fn dns_label(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > 63 {
        return Err(format!("{} is longer than 63 characters", quote(s)));
    }
    let ok_chars = s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let ends_ok = !s.starts_with('-') && !s.ends_with('-');
    if ok_chars && ends_ok {
        Ok(())
    } else {
        Err(format!(
            "{} must be lowercase letters, digits and '-', starting and ending with a letter or digit",
            quote(s)
        ))
    }
}

/// RFC 1123 subdomain: what Kubernetes accepts as most object names (node names).
pub fn dns_subdomain(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > 253 {
        return Err(format!("{} is longer than 253 characters", quote(s)));
    }
    if s.split('.').all(|part| dns_label(part).is_ok()) {
        Ok(())
    } else {
        Err(format!(
            "{} must be lowercase letters, digits, '-' and '.', each part starting and ending with a letter or digit",
            quote(s)
        ))
    }
}

fn label_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric()
}

/// A Kubernetes label key: `name` or `prefix/name`.
pub fn label_key(s: &str) -> Result<(), String> {
    let (prefix, name) = match s.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    if prefix.is_some_and(|p| dns_subdomain(p).is_err()) || !label_name(name) {
        return Err(format!(
            "{} is not a valid label key (name or prefix/name; names are at most 63 letters, digits, '-', '_', '.')",
            quote(s)
        ));
    }
    Ok(())
}

/// A Kubernetes label value: empty, or a label name.
pub fn label_value(s: &str) -> Result<(), String> {
    if s.is_empty() || label_name(s) {
        Ok(())
    } else {
        Err(format!(
            "{} is not a valid label value (at most 63 letters, digits, '-', '_', '.', starting and ending with a letter or digit)",
            quote(s)
        ))
    }
}

/// Checks names are unique; reports every repeat at its own index.
pub fn unique<'a>(p: &mut Problems, items: impl IntoIterator<Item = (Path, &'a str)>, what: &str) {
    let mut seen: HashSet<&str> = HashSet::new();
    for (path, name) in items {
        if !seen.insert(name) {
            p.add(path, format!("duplicate {what} {}", quote(name)));
        }
    }
}

/// A string is at most `max` characters long (as the CRD's `maxLength`
/// counts: characters, not bytes).
pub fn max_chars(s: &str, max: usize) -> Result<(), String> {
    if s.chars().nth(max).is_some() {
        Err(format!("is longer than {max} characters"))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(dns_label("payments-slowdown").is_ok());
        assert!(dns_label("Payments").is_err());
        assert!(dns_label("-a").is_err());
        assert!(dns_label(&"a".repeat(64)).is_err());
        assert!(dns_subdomain("node-1.example.com").is_ok());
        assert!(dns_subdomain("node_1").is_err());
        assert!(label_key("app").is_ok());
        assert!(label_key("app.kubernetes.io/name").is_ok());
        assert!(label_key("bad key").is_err());
        assert!(label_key("/name").is_err());
        assert!(label_value("").is_ok());
        assert!(label_value("v1.2_3").is_ok());
        assert!(label_value("-x").is_err());
    }
}
