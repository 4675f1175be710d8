//! From bytes to typed Faultline resources, or to every located problem.
//!
//! Three passes, each pure: YAML into a located tree (syntax), the tree into
//! typed values (structure, types, formats), then semantic checks on the typed
//! values, whose field paths are mapped back to lines and columns.

use std::collections::{BTreeMap, HashMap, HashSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::{
    decode::{Cx, Fields},
    diag::{Diagnostic, Path, Pos, did_you_mean},
    experiment::{Experiment, ExperimentSpec},
    nodefaults::{NodeFaults, NodeFaultsSpec},
    topology::{Topology, TopologySpec},
    validate::{Problem, Problems, dns_label, dns_subdomain, label_key, label_value},
    yaml::{self, Node, NodeKind, quote},
};

pub const API_VERSION: &str = "faultline.dev/v1alpha1";
pub const KINDS: [&str; 3] = ["Experiment", "NodeFaults", "Topology"];
/// Diagnostics shown per document; a hostile or badly broken file could
/// otherwise produce hundreds of thousands.
pub const MAX_DIAGNOSTICS: usize = 100;

/// A valid Faultline resource of any kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Resource {
    Experiment(Box<Experiment>),
    NodeFaults(Box<NodeFaults>),
    Topology(Box<Topology>),
}

impl Resource {
    pub fn kind(&self) -> &'static str {
        match self {
            Resource::Experiment(_) => "Experiment",
            Resource::NodeFaults(_) => "NodeFaults",
            Resource::Topology(_) => "Topology",
        }
    }

    /// `namespace/name` for namespaced resources, else `name`.
    pub fn display_name(&self) -> String {
        let meta = match self {
            Resource::Experiment(e) => &e.metadata,
            Resource::NodeFaults(n) => &n.metadata,
            Resource::Topology(t) => &t.metadata,
        };
        // With only generateName, the apiserver completes the name.
        let name = match (&meta.name, &meta.generate_name) {
            (Some(n), _) => n.clone(),
            (None, Some(g)) => format!("{g}*"),
            (None, None) => String::new(),
        };
        match &meta.namespace {
            Some(ns) => format!("{ns}/{name}"),
            None => name,
        }
    }
}

/// One document of an input: where it starts and what it holds.
#[derive(Debug)]
pub struct Parsed {
    pub pos: Pos,
    pub result: Result<Resource, Vec<Diagnostic>>,
}

/// Parses every document of an input. An input with no document at all is
/// one error: a Faultline file that says nothing is a mistake.
pub fn parse_documents(bytes: &[u8]) -> Vec<Parsed> {
    let docs = match yaml::parse_bytes(bytes) {
        Ok(docs) => docs,
        Err(d) => {
            return vec![Parsed {
                pos: d.pos,
                result: Err(vec![d]),
            }];
        }
    };
    let mut out: Vec<Parsed> = docs
        .into_iter()
        // A stream like "---\n" followed by nothing, or a trailing "---", adds
        // an empty document; only report emptiness when nothing else is there.
        .filter(|d| !matches!(&d.root, Ok(n) if n.is_null()))
        .map(|d| Parsed {
            pos: d.pos,
            result: d
                .root
                .and_then(|root| resource_from_node(&root))
                .map_err(limited),
        })
        .collect();
    if out.is_empty() {
        out.push(Parsed {
            pos: Pos::START,
            result: Err(vec![Diagnostic::new(
                Pos::START,
                "",
                "the input is empty; expected a Faultline resource (Experiment, NodeFaults or Topology)",
            )]),
        });
    }
    out
}

/// Parses an input that must hold exactly one resource of kind `T`.
pub fn parse_one<T: FromResource>(bytes: &[u8]) -> Result<T, Vec<Diagnostic>> {
    let mut docs = parse_documents(bytes);
    if docs.len() != 1 {
        let pos = docs.get(1).map_or(Pos::START, |d| d.pos);
        return Err(vec![Diagnostic::new(
            pos,
            "",
            format!("expected one {} document, found {}", T::KIND, docs.len()),
        )]);
    }
    let doc = docs.remove(0);
    match doc.result? {
        r if r.kind() == T::KIND => T::from_resource(r).ok_or_else(Vec::new),
        r => Err(vec![Diagnostic::new(
            doc.pos,
            "kind",
            format!("expected a {}, found a {}", T::KIND, r.kind()),
        )]),
    }
}

/// Places problems found after parsing (a check against a topology, say)
/// where their fields are written in the one document of `bytes`; at the
/// document's start when it cannot be read again.
pub fn locate(bytes: &[u8], problems: &Problems) -> Vec<Diagnostic> {
    let root = crate::yaml::parse_bytes(bytes)
        .ok()
        .and_then(|docs| docs.into_iter().next())
        .and_then(|d| d.root.ok());
    match root {
        Some(root) => {
            let index = PathIndex::new(&root, &problems.0);
            problems
                .0
                .iter()
                .map(|p| index.locate(p, root.pos))
                .collect()
        }
        None => problems
            .0
            .iter()
            .map(|p| Diagnostic::new(Pos::START, p.path.as_str(), p.message.clone()))
            .collect(),
    }
}

pub trait FromResource: Sized {
    const KIND: &'static str;
    fn from_resource(r: Resource) -> Option<Self>;
}

impl FromResource for Experiment {
    const KIND: &'static str = "Experiment";
    fn from_resource(r: Resource) -> Option<Self> {
        match r {
            Resource::Experiment(e) => Some(*e),
            _ => None,
        }
    }
}

impl FromResource for NodeFaults {
    const KIND: &'static str = "NodeFaults";
    fn from_resource(r: Resource) -> Option<Self> {
        match r {
            Resource::NodeFaults(n) => Some(*n),
            _ => None,
        }
    }
}

impl FromResource for Topology {
    const KIND: &'static str = "Topology";
    fn from_resource(r: Resource) -> Option<Self> {
        match r {
            Resource::Topology(t) => Some(*t),
            _ => None,
        }
    }
}

/// Metadata fields the apiserver fills in; accepted (so `kubectl get -o yaml`
/// output validates) and ignored.
const SERVER_METADATA: [&str; 10] = [
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "finalizers",
    "ownerReferences",
    "selfLink",
];

fn resource_from_node(root: &Node) -> Result<Resource, Vec<Diagnostic>> {
    let mut cx = Cx::default();
    let top = Path::root();
    let Some(f) = Fields::new(
        &mut cx,
        root,
        &top,
        &["apiVersion", "kind", "metadata", "spec", "status"],
    ) else {
        return Err(cx.errors);
    };
    let api_version: Option<String> = f.req(&mut cx, "apiVersion");
    if let Some(v) = &api_version
        && v != API_VERSION
    {
        let pos = f.node("apiVersion").map_or(root.pos, |n| n.pos);
        cx.error(
            pos,
            &top.key("apiVersion"),
            format!(
                "{} is not a Faultline API version; use {API_VERSION}",
                quote(v)
            ),
        );
    }
    let kind: Option<String> = f.req(&mut cx, "kind");
    let kind = kind.and_then(|k| {
        if KINDS.contains(&k.as_str()) {
            Some(k)
        } else {
            let hint = match did_you_mean(&k, KINDS) {
                Some(s) => format!(" (did you mean {s}?)"),
                None => format!("; Faultline kinds are {}", KINDS.join(", ")),
            };
            let pos = f.node("kind").map_or(root.pos, |n| n.pos);
            cx.error(
                pos,
                &top.key("kind"),
                format!("{} is not a Faultline kind{hint}", quote(&k)),
            );
            None
        }
    });
    let Some(kind) = kind else {
        return Err(cx.errors);
    };
    cx.kubectl = kind != "Topology";
    // A Topology is never stored by an apiserver, so it has no status.
    if kind == "Topology" && f.has_key("status") {
        cx.error(
            f.key_pos("status"),
            &top.key("status"),
            "unknown field; expected one of: apiVersion, kind, metadata, spec",
        );
    }
    let namespaced = kind == "Experiment";
    // An empty `metadata:` is reported at its key, not at the document's start.
    let metadata = decode_metadata(
        &mut cx,
        f.node("metadata"),
        f.key_pos("metadata"),
        namespaced,
    );
    let resource = match kind.as_str() {
        "Experiment" => {
            let spec: Option<ExperimentSpec> = f.req(&mut cx, "spec");
            spec.zip(metadata).map(|(spec, metadata)| {
                let mut problems = Problems::default();
                spec.validate(&mut problems);
                check_names(&metadata, dns_label, "experiment name", &mut problems);
                let mut e = Experiment::new("", spec);
                e.metadata = metadata;
                (Resource::Experiment(Box::new(e)), problems)
            })
        }
        "NodeFaults" => {
            let spec: Option<NodeFaultsSpec> = f.req(&mut cx, "spec");
            spec.zip(metadata).map(|(spec, metadata)| {
                let mut problems = Problems::default();
                spec.validate(&mut problems);
                check_names(&metadata, dns_subdomain, "node name", &mut problems);
                let mut n = NodeFaults::new("", spec);
                n.metadata = metadata;
                (Resource::NodeFaults(Box::new(n)), problems)
            })
        }
        _ => {
            let spec: Option<TopologySpec> = f.req(&mut cx, "spec");
            spec.zip(metadata).map(|(spec, metadata)| {
                let mut problems = Problems::default();
                spec.validate(&mut problems);
                check_names(&metadata, dns_label, "topology name", &mut problems);
                let t = Topology {
                    api_version: API_VERSION.into(),
                    kind: "Topology".into(),
                    metadata,
                    spec,
                };
                (Resource::Topology(Box::new(t)), problems)
            })
        }
    };
    match resource {
        Some((r, problems)) if cx.errors.is_empty() && problems.0.is_empty() => Ok(r),
        Some((_, problems)) => {
            let index = PathIndex::new(root, &problems.0);
            cx.errors
                .extend(problems.0.iter().map(|p| index.locate(p, root.pos)));
            Err(sorted(cx.errors))
        }
        None => Err(sorted(cx.errors)),
    }
}

fn sorted(mut errors: Vec<Diagnostic>) -> Vec<Diagnostic> {
    errors.sort_by_key(|d| d.pos);
    errors.dedup();
    errors
}

/// The first `MAX_DIAGNOSTICS` diagnostics in file order, then one saying how
/// many more there are (located at the first one left out).
fn limited(errors: Vec<Diagnostic>) -> Vec<Diagnostic> {
    let mut errors = sorted(errors);
    if errors.len() > MAX_DIAGNOSTICS {
        let rest = errors.split_off(MAX_DIAGNOSTICS);
        let pos = rest.first().map_or(Pos::START, |d| d.pos);
        let n = rest.len();
        errors.push(Diagnostic::new(
            pos,
            "",
            format!("… and {n} more problem{}", if n == 1 { "" } else { "s" }),
        ));
    }
    errors
}

/// Checks `metadata.name` and `metadata.generateName` with the kind's name rule.
fn check_names(
    meta: &ObjectMeta,
    rule: fn(&str) -> Result<(), String>,
    what: &str,
    problems: &mut Problems,
) {
    let path = Path::root().key("metadata");
    if let Some(name) = &meta.name
        && let Err(e) = rule(name)
    {
        problems.add(path.key("name"), format!("{what} {e}"));
    }
    // As the apiserver checks a prefix: a trailing '-' is allowed (random
    // characters follow it), the rest must be a valid name.
    if let Some(prefix) = &meta.generate_name {
        let masked = match prefix.strip_suffix('-') {
            Some(p) => format!("{p}a"),
            None => prefix.clone(),
        };
        if let Err(e) = rule(&masked) {
            let e = e.replace(&quote(&masked), &quote(prefix));
            problems.add(path.key("generateName"), format!("{what} prefix {e}"));
        }
    }
}

/// `at` is where to report a missing or empty `metadata`.
fn decode_metadata(
    cx: &mut Cx,
    node: Option<&Node>,
    at: Pos,
    namespaced: bool,
) -> Option<ObjectMeta> {
    let path = Path::root().key("metadata");
    let Some(node) = node else {
        cx.error(at, &path, "is required (at least metadata.name)");
        return None;
    };
    let mut known = vec!["name", "generateName", "namespace", "labels", "annotations"];
    known.extend(SERVER_METADATA);
    let f = Fields::new(cx, node, &path, &known)?;
    let name: Option<Option<String>> = f.opt(cx, "name");
    let generate_name: Option<Option<String>> = f.opt(cx, "generateName");
    // generateName stands in for name (`kubectl create` completes it).
    if let (Some(None), Some(None)) = (&name, &generate_name)
        && !f.suggested_any(&["name", "generateName"])
    {
        cx.error(f.key_pos("name"), &path.key("name"), "is required");
    }
    let namespace: Option<Option<String>> = f.opt(cx, "namespace");
    let labels: Option<BTreeMap<String, String>> = f.list(cx, "labels");
    let annotations: Option<BTreeMap<String, String>> = f.list(cx, "annotations");
    if let Some(Some(ns)) = &namespace {
        let pos = f.node("namespace").map_or(f.pos(), |n| n.pos);
        if !namespaced {
            cx.error(
                pos,
                &path.key("namespace"),
                "this kind is cluster-scoped; remove the namespace",
            );
        } else if let Err(e) = dns_label(ns) {
            cx.error(pos, &path.key("namespace"), format!("namespace {e}"));
        }
    }
    let check_map = |cx: &mut Cx,
                     field: &str,
                     map: &Option<BTreeMap<String, String>>,
                     check: &dyn Fn(&str, &str) -> Result<(), String>| {
        for (k, v) in map.iter().flatten() {
            if let Err(e) = check(k, v) {
                let pos = f
                    .node(field)
                    .and_then(|m| m.get(k))
                    .map_or(f.pos(), |n| n.pos);
                cx.error(pos, &path.key(field).key(k), e);
            }
        }
    };
    check_map(cx, "labels", &labels, &|k, v| {
        label_key(k).and_then(|_| label_value(v))
    });
    // Annotation keys follow the label key rules; values are any string.
    check_map(cx, "annotations", &annotations, &|k, _| label_key(k));
    Some(ObjectMeta {
        name: name?,
        generate_name: generate_name?,
        namespace: namespace?,
        labels: labels.filter(|l| !l.is_empty()),
        annotations: annotations.filter(|a| !a.is_empty()),
        ..ObjectMeta::default()
    })
    .filter(|m| m.name.is_some() || m.generate_name.is_some())
}

/// Where the field paths of a document's problems were written.
struct PathIndex(HashMap<String, Pos>);

impl PathIndex {
    /// Indexes only the problems' paths and their ancestors: a path string for
    /// every node of a large document would take far more memory than the tree.
    /// Paths are built with `Path::key`/`Path::index`, as the problems' are.
    fn new(root: &Node, problems: &[Problem]) -> Self {
        let mut wanted: HashSet<String> = HashSet::new();
        for problem in problems {
            let mut path = Some(problem.path.clone());
            while let Some(p) = path {
                // Its ancestors are in already.
                if !wanted.insert(p.as_str().to_owned()) {
                    break;
                }
                path = p.parent();
            }
        }
        fn walk(
            node: &Node,
            path: &Path,
            wanted: &HashSet<String>,
            map: &mut HashMap<String, Pos>,
        ) {
            // Keys shortened alike may collide; the first one written wins.
            map.entry(path.as_str().to_owned()).or_insert(node.pos);
            match &node.kind {
                NodeKind::Map(entries) => {
                    for (k, v) in entries {
                        if let Some(text) = k.text() {
                            let child = path.key(text);
                            if wanted.contains(child.as_str()) {
                                walk(v, &child, wanted, map);
                            }
                        }
                    }
                }
                NodeKind::Seq(items) => {
                    for (i, item) in items.iter().enumerate() {
                        let child = path.index(i);
                        if wanted.contains(child.as_str()) {
                            walk(item, &child, wanted, map);
                        }
                    }
                }
                NodeKind::Scalar { .. } => {}
            }
        }
        let mut map = HashMap::new();
        walk(root, &Path::root(), &wanted, &mut map);
        PathIndex(map)
    }

    /// The position of the problem's field, or of the nearest enclosing field
    /// written in the document (for defaults that were never written).
    fn locate(&self, problem: &Problem, fallback: Pos) -> Diagnostic {
        let mut path = Some(problem.path.clone());
        while let Some(p) = path {
            if let Some(pos) = self.0.get(p.as_str()) {
                return Diagnostic::new(*pos, problem.path.as_str(), problem.message.clone());
            }
            path = p.parent();
        }
        Diagnostic::new(fallback, problem.path.as_str(), problem.message.clone())
    }
}
