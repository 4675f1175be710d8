//! From bytes to typed Faultline resources, or to every located problem.
//!
//! Three passes, each pure: YAML into a located tree (syntax), the tree into
//! typed values (structure, types, formats), then semantic checks on the typed
//! values, whose field paths are mapped back to lines and columns.

use std::collections::{BTreeMap, HashMap};

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
        let name = meta.name.clone().unwrap_or_default();
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
            result: d.root.and_then(|root| resource_from_node(&root)),
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
    let namespaced = kind == "Experiment";
    let metadata = decode_metadata(&mut cx, f.node("metadata"), f.pos(), namespaced);
    let resource = match kind.as_str() {
        "Experiment" => {
            let spec: Option<ExperimentSpec> = f.req(&mut cx, "spec");
            spec.zip(metadata).map(|(spec, metadata)| {
                let mut problems = Problems::default();
                spec.validate(&mut problems);
                if let Some(name) = &metadata.name
                    && let Err(e) = dns_label(name)
                {
                    problems.add(
                        top.key("metadata").key("name"),
                        format!("experiment name {e}"),
                    );
                }
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
                if let Some(name) = &metadata.name
                    && let Err(e) = dns_subdomain(name)
                {
                    problems.add(top.key("metadata").key("name"), format!("node name {e}"));
                }
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
                if let Some(name) = &metadata.name
                    && let Err(e) = dns_label(name)
                {
                    problems.add(
                        top.key("metadata").key("name"),
                        format!("topology name {e}"),
                    );
                }
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
            let index = PathIndex::new(root);
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

fn decode_metadata(
    cx: &mut Cx,
    node: Option<&Node>,
    doc_pos: Pos,
    namespaced: bool,
) -> Option<ObjectMeta> {
    let path = Path::root().key("metadata");
    let Some(node) = node else {
        cx.error(doc_pos, &path, "is required (at least metadata.name)");
        return None;
    };
    let mut known = vec!["name", "namespace", "labels", "annotations"];
    known.extend(SERVER_METADATA);
    let f = Fields::new(cx, node, &path, &known)?;
    let name: Option<String> = f.req(cx, "name");
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
    if let Some(labels) = &labels {
        for (k, v) in labels {
            if let Err(e) = label_key(k).and_then(|_| label_value(v)) {
                let pos = f
                    .node("labels")
                    .and_then(|l| l.get(k))
                    .map_or(f.pos(), |n| n.pos);
                cx.error(pos, &path.key("labels").key(k), e);
            }
        }
    }
    Some(ObjectMeta {
        name,
        namespace: namespace?,
        labels: labels.filter(|l| !l.is_empty()),
        annotations: annotations.filter(|a| !a.is_empty()),
        ..ObjectMeta::default()
    })
    .filter(|m| m.name.is_some())
}

/// Where each field path of a document was written.
struct PathIndex(HashMap<String, Pos>);

impl PathIndex {
    fn new(root: &Node) -> Self {
        let mut map = HashMap::new();
        fn walk(node: &Node, path: &Path, map: &mut HashMap<String, Pos>) {
            map.insert(path.as_str().to_owned(), node.pos);
            match &node.kind {
                NodeKind::Map(entries) => {
                    for (k, v) in entries {
                        if let NodeKind::Scalar { text, .. } = &k.kind {
                            walk(v, &path.key(text), map);
                        }
                    }
                }
                NodeKind::Seq(items) => {
                    for (i, item) in items.iter().enumerate() {
                        walk(item, &path.index(i), map);
                    }
                }
                NodeKind::Scalar { .. } => {}
            }
        }
        walk(root, &Path::root(), &mut map);
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
