//! A mocked Kubernetes API server for the controller's scenarios: an
//! in-memory object store behind a tower service, answering the calls the
//! controller makes — list and watch (with resource versions), JSON patch
//! (finalizers), server-side apply of NodeFaults (a list-map keyed by `id`,
//! items owned per field manager as the real server tracks them) and of
//! Experiment status, pod deletion and Events — and recording every write.
//! No kube-apiserver can run on these machines; this plays one, the way
//! kube-rs's controller-rs tests do with tower-test. It serves a kube
//! client in-process (`client`) or over loopback HTTP with a kubeconfig
//! (`serve`), so a binary (the CLI, the agent) can talk to it too.

use std::{
    collections::{BTreeMap, BTreeSet},
    convert::Infallible,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http::{Method, Request, Response, request::Parts};
use http_body_util::{BodyExt, StreamBody, combinators::BoxBody};
use hyper::body::Frame;
use kube::client::Body;
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// A write the server took, for assertions.
#[derive(Debug, Clone)]
pub struct Write {
    pub method: String,
    pub path: String,
    pub query: String,
    pub content_type: String,
    pub body: Value,
}

impl Write {
    pub fn field_manager(&self) -> Option<String> {
        self.query
            .split('&')
            .find_map(|kv| kv.strip_prefix("fieldManager="))
            .map(|m| m.replace("%2F", "/"))
    }
}

type Key = (String, Option<String>, String); // resource, namespace, name

struct Watcher {
    resource: String,
    namespace: Option<String>,
    name: Option<String>,
    tx: mpsc::UnboundedSender<Result<Frame<Bytes>, Infallible>>,
}

#[derive(Default)]
struct State {
    objects: BTreeMap<Key, Value>,
    /// NodeFaults items' owners: (node, id) → field managers.
    owners: BTreeMap<(String, String), BTreeSet<String>>,
    rv: u64,
    watchers: Vec<Watcher>,
    writes: Vec<Write>,
    events: Vec<Value>,
    /// Every watch event, by resource version, for watches that start late.
    log: Vec<(u64, Key, Vec<u8>)>,
    /// Answer every call with 503 (the API server is unreachable).
    down: bool,
    /// How long each NodeFaults write waits before it is carried out (a
    /// busy API server).
    nodefaults_write_delay: std::time::Duration,
}

/// The API served over loopback HTTP; stops when dropped.
#[derive(Debug)]
pub struct Served {
    pub addr: std::net::SocketAddr,
    /// A kubeconfig naming the server (for KUBECONFIG).
    pub kubeconfig: std::path::PathBuf,
    _dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The server; clone it freely (shared state).
#[derive(Clone, Default)]
#[allow(missing_debug_implementations)]
pub struct ApiServer {
    state: Arc<Mutex<State>>,
}

fn resource_of(kind: &str) -> &'static str {
    match kind {
        "Pod" => "pods",
        "Namespace" => "namespaces",
        "Node" => "nodes",
        "Experiment" => "experiments",
        "NodeFaults" => "nodefaults",
        other => panic!("unknown kind {other}"),
    }
}

fn api_version_of(resource: &str) -> &'static str {
    match resource {
        "pods" | "namespaces" | "nodes" => "v1",
        _ => "faultline.dev/v1alpha1",
    }
}

fn kind_of(resource: &str) -> &'static str {
    match resource {
        "pods" => "Pod",
        "namespaces" => "Namespace",
        "nodes" => "Node",
        "experiments" => "Experiment",
        "nodefaults" => "NodeFaults",
        other => panic!("unknown resource {other}"),
    }
}

fn status(code: u16, reason: &str, message: &str) -> (u16, Value) {
    (
        code,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "reason": reason, "message": message, "code": code}),
    )
}

impl State {
    fn bump(&mut self) -> String {
        self.rv += 1;
        self.rv.to_string()
    }

    /// Stores `object` (new or changed) and tells the watchers.
    fn put(&mut self, key: Key, mut object: Value, event: &str) -> Value {
        let rv = self.bump();
        object["metadata"]["resourceVersion"] = json!(rv);
        self.notify(&key, event, &object);
        if event == "DELETED" {
            self.objects.remove(&key);
        } else {
            self.objects.insert(key, object.clone());
        }
        object
    }

    fn notify(&mut self, key: &Key, event: &str, object: &Value) {
        let mut line = serde_json::to_vec(&json!({"type": event, "object": object})).expect("json");
        line.push(b'\n');
        self.log.push((self.rv, key.clone(), line.clone()));
        self.watchers.retain(|w| {
            if w.resource != key.0
                || (w.namespace.is_some() && w.namespace != key.1)
                || w.name.as_ref().is_some_and(|n| n != &key.2)
            {
                return !w.tx.is_closed();
            }
            w.tx.send(Ok(Frame::data(Bytes::from(line.clone()))))
                .is_ok()
        });
    }

    fn list(&self, resource: &str, namespace: Option<&str>, name: Option<&str>) -> Value {
        let items: Vec<&Value> = self
            .objects
            .iter()
            .filter(|((r, ns, n), _)| {
                r == resource
                    && (namespace.is_none() || ns.as_deref() == namespace)
                    && name.is_none_or(|want| n == want)
            })
            .map(|(_, v)| v)
            .collect();
        json!({"apiVersion": api_version_of(resource), "kind": format!("{}List", kind_of(resource)),
               "metadata": {"resourceVersion": self.rv.to_string()}, "items": items})
    }
}

/// A request path: resource, namespace, name, subresource.
type Route = (String, Option<String>, Option<String>, Option<String>);

fn route(path: &str) -> Option<Route> {
    let rest = path
        .strip_prefix("/api/v1/")
        .or_else(|| path.strip_prefix("/apis/faultline.dev/v1alpha1/"))
        .or_else(|| path.strip_prefix("/apis/events.k8s.io/v1/"))?;
    let parts: Vec<&str> = rest.split('/').collect();
    let (ns, parts) = match parts.as_slice() {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest.to_vec()),
        _ => (None, parts),
    };
    let resource = parts.first()?.to_string();
    let name = parts.get(1).map(|s| s.to_string());
    let sub = parts.get(2).map(|s| s.to_string());
    Some((resource, ns, name, sub))
}

fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

impl ApiServer {
    pub fn new() -> Self {
        Self::default()
    }

    /// A kube client talking to this server.
    pub fn client(&self) -> kube::Client {
        let server = self.clone();
        let service = tower::service_fn(move |req: Request<Body>| {
            let server = server.clone();
            async move {
                let (parts, body) = req.into_parts();
                let body = body.collect_bytes().await.unwrap_or_default();
                Ok::<_, Infallible>(server.handle(parts, body).await)
            }
        });
        kube::Client::new(service, "default")
    }

    pub fn set_down(&self, down: bool) {
        self.state.lock().expect("state").down = down;
        if down {
            // Open watches end, as when the connection drops.
            self.state.lock().expect("state").watchers.clear();
        }
    }

    /// Makes every NodeFaults write wait this long before it is carried
    /// out, as a busy API server does.
    pub fn set_nodefaults_write_delay(&self, delay: std::time::Duration) {
        self.state.lock().expect("state").nodefaults_write_delay = delay;
    }

    /// Creates or replaces an object as a user's `kubectl apply` would.
    pub fn apply(&self, object: Value) -> Value {
        let mut s = self.state.lock().expect("state");
        apply_locked(&mut s, object)
    }

    /// Deletes as the API server does: with finalizers, the object stays
    /// (with a deletionTimestamp) until the last finalizer is removed.
    pub fn delete(&self, kind: &str, namespace: Option<&str>, name: &str) {
        let mut s = self.state.lock().expect("state");
        let key = (
            resource_of(kind).to_owned(),
            namespace.map(str::to_owned),
            name.to_owned(),
        );
        delete_locked(&mut s, key);
    }

    pub fn get(&self, kind: &str, namespace: Option<&str>, name: &str) -> Option<Value> {
        let s = self.state.lock().expect("state");
        s.objects
            .get(&(
                resource_of(kind).to_owned(),
                namespace.map(str::to_owned),
                name.to_owned(),
            ))
            .cloned()
    }

    pub fn list(&self, kind: &str) -> Vec<Value> {
        let s = self.state.lock().expect("state");
        s.objects
            .iter()
            .filter(|((r, _, _), _)| r == resource_of(kind))
            .map(|(_, v)| v.clone())
            .collect()
    }

    pub fn writes(&self) -> Vec<Write> {
        self.state.lock().expect("state").writes.clone()
    }

    pub fn events(&self) -> Vec<Value> {
        self.state.lock().expect("state").events.clone()
    }

    /// Reports every NodeFaults entry applied, for the generation seen, as
    /// agents whose kernels took every fault would (one pass; objects
    /// already reported are left alone).
    pub fn report_applied(&self) {
        let mut s = self.state.lock().expect("state");
        let stale: Vec<_> = s
            .objects
            .iter()
            .filter(|((kind, _, _), o)| {
                kind == "nodefaults"
                    && o["status"]["observedGeneration"] != o["metadata"]["generation"]
            })
            .map(|(k, o)| (k.clone(), o.clone()))
            .collect();
        for (key, mut object) in stale {
            let faults: Vec<Value> = object["spec"]["faults"]
                .as_array()
                .into_iter()
                .flatten()
                .map(
                    |f| json!({"id": f["id"], "state": "applied", "since": "2026-01-01T00:00:00Z"}),
                )
                .collect();
            object["status"] = json!({
                "observedGeneration": object["metadata"]["generation"],
                "applied": faults.len(),
                "faults": faults,
            });
            s.put(key, object, "MODIFIED");
        }
    }

    /// Serves the API over HTTP on a loopback port until the returned
    /// guard is dropped; the kubeconfig file names it (namespace `default`).
    pub async fn serve(&self) -> Served {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("address");
        let server = self.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let server = server.clone();
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let server = server.clone();
                            async move {
                                let (parts, body) = req.into_parts();
                                let body = body
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                Ok::<_, Infallible>(server.handle(parts, body).await)
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        let dir = tempfile::tempdir().expect("temporary directory");
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1
kind: Config
clusters: [{{name: mock, cluster: {{server: \"http://{addr}\"}}}}]
users: [{{name: mock, user: {{token: mock}}}}]
contexts: [{{name: mock, context: {{cluster: mock, user: mock, namespace: default}}}}]
current-context: mock
"
            ),
        )
        .expect("write kubeconfig");
        Served {
            addr,
            kubeconfig,
            _dir: dir,
            task,
        }
    }

    async fn handle(&self, parts: Parts, body: Bytes) -> Response<BoxBody<Bytes, Infallible>> {
        let path = parts.uri.path().to_owned();
        let query = parts.uri.query().unwrap_or("").to_owned();
        let content_type = parts
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        tracing::debug!(method = %parts.method, %path, %query, "mocked API server");
        if self.state.lock().expect("state").down {
            let (code, v) = status(503, "ServiceUnavailable", "the API server is down");
            return respond(code, &v);
        }
        let Some((resource, ns, name, sub)) = route(&path) else {
            let (code, v) = status(404, "NotFound", &format!("no route {path}"));
            return respond(code, &v);
        };
        let delay = self.state.lock().expect("state").nodefaults_write_delay;
        if resource == "nodefaults" && parts.method != Method::GET && !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let parsed: Value = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&body).unwrap_or(Value::Null)
        };
        if parts.method != Method::GET {
            self.state.lock().expect("state").writes.push(Write {
                method: parts.method.to_string(),
                path: path.clone(),
                query: query.clone(),
                content_type: content_type.clone(),
                body: parsed.clone(),
            });
        }
        // `fieldSelector=metadata.name=X`, as an agent watches its node's object.
        let named = query_param(&query, "fieldSelector").and_then(|f| {
            f.replace("%3D", "=")
                .strip_prefix("metadata.name=")
                .map(str::to_owned)
        });
        match (parts.method.clone(), name) {
            (Method::GET, None) if query_param(&query, "watch") == Some("true") => {
                let since: u64 = query_param(&query, "resourceVersion")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let (tx, rx) = mpsc::unbounded_channel();
                {
                    let mut s = self.state.lock().expect("state");
                    // Replay what changed since the version the client listed at.
                    for (rv, (r, n, name), line) in &s.log {
                        if *rv > since
                            && r == &resource
                            && (ns.is_none() || &ns == n)
                            && named.as_ref().is_none_or(|want| want == name)
                        {
                            let _ = tx.send(Ok(Frame::data(Bytes::from(line.clone()))));
                        }
                    }
                    s.watchers.push(Watcher {
                        resource: resource.clone(),
                        namespace: ns.clone(),
                        name: named.clone(),
                        tx,
                    });
                }
                let stream = tokio_stream::wrappers::UnboundedReceiverStream::new(rx);
                Response::builder()
                    .status(200)
                    .header("content-type", "application/json")
                    .body(BoxBody::new(StreamBody::new(stream)))
                    .expect("response")
            }
            (Method::GET, None) => {
                let s = self.state.lock().expect("state");
                respond(200, &s.list(&resource, ns.as_deref(), named.as_deref()))
            }
            (Method::GET, Some(name)) => {
                let s = self.state.lock().expect("state");
                match s.objects.get(&(resource.clone(), ns.clone(), name.clone())) {
                    Some(v) => respond(200, v),
                    None => {
                        let (code, v) =
                            status(404, "NotFound", &format!("{resource} {name} not found"));
                        respond(code, &v)
                    }
                }
            }
            // The event recorder patches a repeated event's series.
            (Method::PATCH, Some(_)) if resource == "events" => respond(200, &parsed),
            (Method::POST, None) if resource == "events" => {
                self.state
                    .lock()
                    .expect("state")
                    .events
                    .push(parsed.clone());
                respond(201, &parsed)
            }
            // An eviction (no PodDisruptionBudget here): the pod is deleted,
            // unless the uid precondition names another one.
            (Method::POST, Some(name))
                if resource == "pods" && sub.as_deref() == Some("eviction") =>
            {
                let mut s = self.state.lock().expect("state");
                let key = (resource.clone(), ns.clone(), name.clone());
                let want = parsed["deleteOptions"]["preconditions"]["uid"].as_str();
                match s.objects.get(&key).cloned() {
                    Some(v) if want.is_none_or(|u| v["metadata"]["uid"] == u) => {
                        delete_locked(&mut s, key);
                        respond(201, &parsed)
                    }
                    Some(_) => {
                        let (code, v) = status(409, "Conflict", "the uid precondition failed");
                        respond(code, &v)
                    }
                    None => {
                        let (code, v) =
                            status(404, "NotFound", &format!("{resource} {name} not found"));
                        respond(code, &v)
                    }
                }
            }
            (Method::DELETE, Some(name)) => {
                let mut s = self.state.lock().expect("state");
                let key = (resource.clone(), ns.clone(), name.clone());
                match s.objects.get(&key).cloned() {
                    Some(v) => {
                        delete_locked(&mut s, key);
                        respond(200, &v)
                    }
                    None => {
                        let (code, v) =
                            status(404, "NotFound", &format!("{resource} {name} not found"));
                        respond(code, &v)
                    }
                }
            }
            (Method::PATCH, Some(name)) => {
                let mut s = self.state.lock().expect("state");
                let manager = query_param(&query, "fieldManager")
                    .unwrap_or("")
                    .replace("%2F", "/");
                let key = (resource.clone(), ns.clone(), name.clone());
                let (code, v) = if content_type == "application/json-patch+json" {
                    json_patch_locked(&mut s, key, &parsed)
                } else if content_type == "application/apply-patch+yaml"
                    && sub.as_deref() == Some("status")
                {
                    apply_status_locked(&mut s, key, &parsed)
                } else if content_type == "application/apply-patch+yaml" && resource == "nodefaults"
                {
                    apply_nodefaults_locked(&mut s, key, &parsed, &manager)
                } else if content_type == "application/apply-patch+yaml" {
                    (200, apply_locked(&mut s, parsed.clone()))
                } else if content_type == "application/merge-patch+json" {
                    merge_patch_locked(&mut s, key, &parsed)
                } else {
                    status(
                        415,
                        "UnsupportedMediaType",
                        &format!("{content_type} on {path}"),
                    )
                };
                respond(code, &v)
            }
            _ => {
                let (code, v) =
                    status(405, "MethodNotAllowed", &format!("{} {path}", parts.method));
                respond(code, &v)
            }
        }
    }
}

fn respond(code: u16, body: &Value) -> Response<BoxBody<Bytes, Infallible>> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(BoxBody::new(http_body_util::Full::new(Bytes::from(
            serde_json::to_vec(body).expect("json"),
        ))))
        .expect("response")
}

/// Creates, or replaces the spec, labels and annotations of, an object.
fn apply_locked(s: &mut State, mut object: Value) -> Value {
    let resource = resource_of(object["kind"].as_str().expect("kind"));
    let name = object["metadata"]["name"]
        .as_str()
        .expect("name")
        .to_owned();
    let ns = object["metadata"]["namespace"].as_str().map(str::to_owned);
    let key = (resource.to_owned(), ns, name.clone());
    let event = match s.objects.get(&key) {
        Some(old) => {
            let meta = old["metadata"].clone();
            let spec_changed = old.get("spec") != object.get("spec");
            let generation = meta["generation"].as_i64().unwrap_or(1) + i64::from(spec_changed);
            let annotations = object["metadata"]["annotations"].clone();
            let labels = object["metadata"]["labels"].clone();
            object["metadata"] = meta;
            object["metadata"]["generation"] = json!(generation);
            if !annotations.is_null() {
                object["metadata"]["annotations"] = annotations;
            }
            if !labels.is_null() {
                object["metadata"]["labels"] = labels;
            }
            if let Some(st) = old.get("status")
                && object.get("status").is_none()
            {
                object["status"] = st.clone();
            }
            "MODIFIED"
        }
        None => {
            // UUIDs, as the agent checks pod UIDs.
            object["metadata"]["uid"] = json!(format!("00000000-0000-4000-8000-{:012x}", s.rv + 1));
            object["metadata"]["generation"] = json!(1);
            object["metadata"]["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
            "ADDED"
        }
    };
    s.put(key, object, event)
}

fn delete_locked(s: &mut State, key: Key) {
    let Some(mut object) = s.objects.get(&key).cloned() else {
        return;
    };
    let has_finalizers = object["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|f| !f.is_empty());
    if has_finalizers {
        if object["metadata"]["deletionTimestamp"].is_null() {
            object["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:01Z");
            s.put(key, object, "MODIFIED");
        }
    } else {
        if key.0 == "nodefaults" {
            s.owners.retain(|(node, _), _| node != &key.2);
        }
        s.put(key, object, "DELETED");
    }
}

fn json_patch_locked(s: &mut State, key: Key, patch: &Value) -> (u16, Value) {
    let Some(mut object) = s.objects.get(&key).cloned() else {
        return status(404, "NotFound", "not found");
    };
    // The API server's JSON patch reads a missing field as null (kube's
    // finalizer helper tests `/metadata/finalizers` against null).
    if object["metadata"].get("finalizers").is_none() {
        object["metadata"]["finalizers"] = Value::Null;
    }
    let patch: json_patch::Patch = match serde_json::from_value(patch.clone()) {
        Ok(p) => p,
        Err(e) => return status(400, "BadRequest", &e.to_string()),
    };
    if let Err(e) = json_patch::patch(&mut object, &patch) {
        return status(422, "Invalid", &e.to_string());
    }
    let gone = !object["metadata"]["deletionTimestamp"].is_null()
        && object["metadata"]["finalizers"]
            .as_array()
            .is_none_or(|f| f.is_empty());
    let stored = s.put(key.clone(), object, "MODIFIED");
    if gone {
        delete_locked(s, key);
    }
    (200, stored)
}

fn merge_patch_locked(s: &mut State, key: Key, patch: &Value) -> (u16, Value) {
    let Some(mut object) = s.objects.get(&key).cloned() else {
        return status(404, "NotFound", "not found");
    };
    let spec = object.get("spec").cloned();
    json_patch::merge(&mut object, patch);
    if object.get("spec").cloned() != spec {
        let generation = object["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
        object["metadata"]["generation"] = json!(generation);
    }
    (200, s.put(key, object, "MODIFIED"))
}

fn apply_status_locked(s: &mut State, key: Key, body: &Value) -> (u16, Value) {
    let Some(mut object) = s.objects.get(&key).cloned() else {
        return status(404, "NotFound", "not found");
    };
    // The controller owns the whole status: what it leaves out goes.
    if object.get("status") == body.get("status") {
        return (200, object);
    }
    object["status"] = body["status"].clone();
    (200, s.put(key, object, "MODIFIED"))
}

/// Server-side apply of `spec.faults` (listType map, key `id`): the items
/// in the body become this manager's (content replaced); items it owned
/// and left out lose it as an owner, and go when no owner is left.
fn apply_nodefaults_locked(s: &mut State, key: Key, body: &Value, manager: &str) -> (u16, Value) {
    assert!(
        !manager.is_empty(),
        "server-side apply needs a field manager"
    );
    let node = key.2.clone();
    let mut object = s.objects.get(&key).cloned().unwrap_or_else(|| {
        json!({"apiVersion": "faultline.dev/v1alpha1", "kind": "NodeFaults",
               "metadata": {"name": node, "uid": format!("uid-nf-{node}"), "generation": 0,
                            "creationTimestamp": "2026-01-01T00:00:00Z"},
               "spec": {"faults": []}})
    });
    let existed = s.objects.contains_key(&key);
    let mut items: BTreeMap<String, Value> = object["spec"]["faults"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| (f["id"].as_str().expect("id").to_owned(), f.clone()))
        .collect();
    let wanted: BTreeMap<String, Value> = body["spec"]["faults"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| (f["id"].as_str().expect("id").to_owned(), f.clone()))
        .collect();
    for ((n, id), owners) in s.owners.iter_mut() {
        if n == &node && !wanted.contains_key(id) {
            owners.remove(manager);
            if owners.is_empty() {
                items.remove(id);
            }
        }
    }
    s.owners.retain(|_, o| !o.is_empty());
    for (id, item) in wanted {
        s.owners
            .entry((node.clone(), id.clone()))
            .or_default()
            .insert(manager.to_owned());
        items.insert(id, item);
    }
    let faults: Vec<Value> = items.into_values().collect();
    // What the CRD's schema would refuse, refused as the API server does.
    let candidate = json!({"apiVersion": "faultline.dev/v1alpha1", "kind": "NodeFaults",
                           "metadata": {"name": node}, "spec": {"faults": faults}});
    if let Err(problems) = faultline_api::parse_one::<faultline_api::NodeFaults>(
        serde_json::to_string(&candidate).expect("json").as_bytes(),
    ) {
        let message: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        return status(422, "Invalid", &message.join("; "));
    }
    if existed && object["spec"]["faults"] == json!(faults) {
        return (200, object);
    }
    if !existed && faults.is_empty() {
        // Applying nothing to nothing still creates the object, as SSA does.
    }
    object["spec"]["faults"] = json!(faults);
    object["metadata"]["generation"] =
        json!(object["metadata"]["generation"].as_i64().unwrap_or(0) + 1);
    let event = if existed { "MODIFIED" } else { "ADDED" };
    (200, s.put(key, object, event))
}

/// Waits until `f` holds, or panics with `what` after `timeout`.
pub async fn until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !f() {
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
