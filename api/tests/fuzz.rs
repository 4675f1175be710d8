//! No input of any kind panics: arbitrary bytes, YAML-shaped noise, and random
//! mutations of valid experiments. Whatever is accepted round-trips.

use faultline_api::{Resource, parse_documents};
use proptest::prelude::*;

const BASES: [&str; 4] = [
    include_str!("../../experiments/payments-slowdown.yaml"),
    include_str!("../../experiments/weekday-gameday.yaml"),
    include_str!("../../experiments/guarded-blast-radius.yaml"),
    include_str!("../../experiments/latency-and-kill.yaml"),
];

/// Fragments that steer mutations towards interesting YAML.
const TOKENS: [&str; 36] = [
    ":",
    "- ",
    "[",
    "]",
    "{",
    "}",
    ",",
    "\n",
    "  ",
    "&a ",
    "*a",
    "!!str ",
    "!foo ",
    "'",
    "\"",
    "#",
    "---\n",
    "~",
    "-1",
    "0",
    "99999999999999999999",
    "1e309",
    ".nan",
    "0s",
    "25h",
    "101%",
    "\u{0}",
    "\t",
    "<<: ",
    "? ",
    "yes",
    "0x1F",
    "017",
    "!!int ",
    "!!seq ",
    "\"<<\": ",
];

#[derive(Debug, Clone)]
enum Mutation {
    Delete { at: usize, len: usize },
    Insert { at: usize, token: usize },
    InsertByte { at: usize, byte: u8 },
    DuplicateLine { line: usize },
    SwapLines { a: usize, b: usize },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1usize..20).prop_map(|(at, len)| Mutation::Delete { at, len }),
        (any::<usize>(), 0..TOKENS.len()).prop_map(|(at, token)| Mutation::Insert { at, token }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::InsertByte { at, byte }),
        any::<usize>().prop_map(|line| Mutation::DuplicateLine { line }),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::SwapLines { a, b }),
    ]
}

fn apply(base: &str, mutations: &[Mutation]) -> Vec<u8> {
    let mut bytes = base.as_bytes().to_vec();
    for m in mutations {
        let n = bytes.len().max(1);
        match m {
            Mutation::Delete { at, len } => {
                let at = at % n;
                let end = (at + len).min(bytes.len());
                bytes.drain(at.min(bytes.len())..end);
            }
            Mutation::Insert { at, token } => {
                let at = at % (bytes.len() + 1);
                bytes.splice(at..at, TOKENS[*token].bytes());
            }
            Mutation::InsertByte { at, byte } => {
                let at = at % (bytes.len() + 1);
                bytes.insert(at, *byte);
            }
            Mutation::DuplicateLine { line } | Mutation::SwapLines { a: line, .. } => {
                let mut lines: Vec<Vec<u8>> =
                    bytes.split(|b| *b == b'\n').map(<[u8]>::to_vec).collect();
                let i = line % lines.len();
                if let Mutation::SwapLines { b, .. } = m {
                    let j = b % lines.len();
                    lines.swap(i, j);
                } else {
                    let copy = lines[i].clone();
                    lines.insert(i, copy);
                }
                bytes = lines.join(&b'\n');
            }
        }
    }
    bytes
}

/// Parsing never panics, every diagnostic is located inside the input, and
/// every accepted resource serializes to YAML that parses back to itself.
fn check(bytes: &[u8]) {
    let lines = bytes.split(|b| *b == b'\n').count();
    for doc in parse_documents(bytes) {
        match doc.result {
            Err(diags) => {
                assert!(!diags.is_empty());
                for d in diags {
                    assert!(
                        d.pos.line >= 1 && d.pos.line <= lines + 1,
                        "{d} outside {lines} lines"
                    );
                    assert!(d.pos.col >= 1, "{d}");
                    assert!(!d.message.is_empty());
                }
            }
            Ok(resource) => {
                let yaml = match &resource {
                    Resource::Experiment(e) => serde_saphyr::to_string(e.as_ref()),
                    Resource::NodeFaults(n) => serde_saphyr::to_string(n.as_ref()),
                    Resource::Topology(t) => serde_saphyr::to_string(t.as_ref()),
                }
                .expect("serializes");
                let again = parse_documents(yaml.as_bytes());
                assert_eq!(again.len(), 1, "{yaml}");
                match &again[0].result {
                    Ok(r) => assert_eq!(r, &resource, "{yaml}"),
                    Err(d) => panic!("re-parse of accepted resource failed: {d:?}\n{yaml}"),
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        check(&bytes);
    }

    #[test]
    fn yaml_shaped_noise(tokens in proptest::collection::vec(0..TOKENS.len(), 0..64), words in proptest::collection::vec("[a-zA-Z0-9 ]{0,8}", 64)) {
        let text: String = tokens.iter().zip(words.iter()).map(|(t, w)| format!("{}{w}", TOKENS[*t])).collect();
        check(text.as_bytes());
    }

    #[test]
    fn mutated_experiments(base in 0..BASES.len(), mutations in proptest::collection::vec(mutation(), 1..6)) {
        check(&apply(BASES[base], &mutations));
    }
}

#[test]
fn every_base_round_trips() {
    for base in BASES {
        check(base.as_bytes());
        assert!(
            parse_documents(base.as_bytes())
                .iter()
                .all(|d| d.result.is_ok())
        );
    }
}

#[test]
fn yaml_1_1_words_round_trip_quoted() {
    // Accepted when quoted; the serializer must quote them again.
    let base = BASES[0].replacen(
        "labels: {app: cart}",
        "labels: {app: cart, canary: \"yes\", \"on\": \"off\", v: \"017\", w: \"0x1F\", \"y\": \"N\"}",
        1,
    );
    assert!(
        parse_documents(base.as_bytes())
            .iter()
            .all(|d| d.result.is_ok())
    );
    check(base.as_bytes());
}
