//! Pods as the controller keeps them. The watch decodes each answer
//! straight into [`SlimPod`] (unknown fields are skipped, never stored) and
//! keeps only what planning reads: a [`PodInfo`] per running pod, by
//! namespace. A full `Pod` is kilobytes even with its fields emptied
//! (k8s-openapi's structs hold every field), and a reflector store adds a
//! key and metadata per object; at 150 000 pods either would be most of
//! the controller's memory.

use std::{
    borrow::Cow,
    collections::{BTreeMap, HashMap, HashSet},
    sync::{Arc, RwLock},
};

use futures::{Stream, StreamExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::watcher;
use serde::{Deserialize, Serialize};

use crate::plan::PodInfo;

/// A pod: its metadata (trimmed by [`SlimPod::trim`]), node, network and
/// phase. Read with `Api<SlimPod>` as a `Pod` is; unknown fields are
/// skipped while decoding, never stored.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct SlimPod {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default, deserialize_with = "or_default")]
    pub spec: SlimPodSpec,
    #[serde(default, deserialize_with = "or_default")]
    pub status: SlimPodStatus,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SlimPodSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// In the node's own network namespace: never a target.
    #[serde(default, deserialize_with = "or_default")]
    pub host_network: bool,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SlimPodStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(default, rename = "podIP", skip_serializing_if = "Option::is_none")]
    pub pod_ip: Option<String>,
    #[serde(
        default,
        rename = "podIPs",
        deserialize_with = "or_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub pod_ips: Vec<PodIp>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct PodIp {
    #[serde(default)]
    pub ip: String,
}

/// A JSON `null` read as the field's default, as for a missing field.
fn or_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Pods by namespace and name: those that can take a fault now (see
/// [`PodInfo::from_pod`]); others are not kept. Filled by [`Pods::follow`].
#[derive(Clone, Debug)]
pub struct Pods {
    state: Arc<RwLock<State>>,
    ready: tokio::sync::watch::Receiver<bool>,
    ready_tx: Arc<tokio::sync::watch::Sender<bool>>,
}

#[derive(Debug, Default)]
struct State {
    by_namespace: HashMap<String, HashMap<String, Arc<PodInfo>>>,
    /// A relist under way: filled until it is done, then taken as a whole
    /// (pods gone meanwhile must not linger).
    relist: Option<HashMap<String, HashMap<String, Arc<PodInfo>>>>,
    /// Every label set, namespace and node name once: a workload's pods
    /// share their labels, a node's pods its name.
    shared: Shared,
    /// Counts the changes to what is kept.
    generation: u64,
}

#[derive(Debug, Default)]
struct Shared {
    labels: Interned<BTreeMap<String, String>>,
    names: Interned<str>,
}

impl Shared {
    fn intern(&mut self, info: &mut PodInfo) {
        self.labels.intern(&mut info.labels);
        self.names.intern(&mut info.namespace);
        self.names.intern(&mut info.node);
    }

    fn prune(&mut self) {
        self.labels.prune();
        self.names.prune();
    }
}

/// One copy of each value, shared by whoever holds an equal one.
#[derive(Debug)]
struct Interned<T: ?Sized> {
    values: HashSet<Arc<T>>,
    /// Placed since the values nobody holds any more were let go.
    since_pruned: usize,
}

impl<T: ?Sized> Default for Interned<T> {
    fn default() -> Self {
        Interned {
            values: HashSet::new(),
            since_pruned: 0,
        }
    }
}

impl<T: ?Sized + Eq + std::hash::Hash> Interned<T> {
    fn intern(&mut self, value: &mut Arc<T>) {
        match self.values.get(&**value) {
            Some(shared) => *value = shared.clone(),
            None => {
                self.values.insert(value.clone());
            }
        }
        self.since_pruned += 1;
        if self.since_pruned >= 4096.max(self.values.len()) {
            self.prune();
        }
    }

    fn prune(&mut self) {
        self.values.retain(|s| Arc::strong_count(s) > 1);
        self.since_pruned = 0;
    }
}

type ByNamespace = HashMap<String, HashMap<String, Arc<PodInfo>>>;

/// Puts a pod in (running) or takes it out (anything else); whether what
/// is kept changed (most updates of a running pod change nothing planning
/// reads).
fn place(map: &mut ByNamespace, shared: &mut Shared, pod: &SlimPod) -> bool {
    let (Some(ns), Some(name)) = (&pod.metadata.namespace, &pod.metadata.name) else {
        return false;
    };
    match PodInfo::from_pod(pod) {
        Some(mut info) => {
            let pods = map.entry(ns.clone()).or_default();
            if pods.get(name).is_some_and(|kept| **kept == info) {
                return false;
            }
            shared.intern(&mut info);
            pods.insert(name.clone(), Arc::new(info));
            true
        }
        None => remove(map, ns, name),
    }
}

/// Takes a pod out; whether it was there.
fn remove(map: &mut ByNamespace, ns: &str, name: &str) -> bool {
    let Some(pods) = map.get_mut(ns) else {
        return false;
    };
    let was = pods.remove(name).is_some();
    if pods.is_empty() {
        map.remove(ns);
    }
    was
}

impl Default for Pods {
    fn default() -> Self {
        let (tx, rx) = tokio::sync::watch::channel(false);
        Pods {
            state: Arc::default(),
            ready: rx,
            ready_tx: Arc::new(tx),
        }
    }
}

impl Pods {
    /// Takes one watch event in.
    pub fn apply(&self, event: watcher::Event<SlimPod>) {
        let mut guard = self.state.write().unwrap_or_else(|e| e.into_inner());
        let s = &mut *guard;
        match event {
            watcher::Event::Init => s.relist = Some(ByNamespace::new()),
            watcher::Event::InitApply(pod) => match s.relist.as_mut() {
                Some(fresh) => {
                    place(fresh, &mut s.shared, &pod);
                }
                None => {
                    if place(&mut s.by_namespace, &mut s.shared, &pod) {
                        s.generation += 1;
                    }
                }
            },
            watcher::Event::InitDone => {
                if let Some(fresh) = s.relist.take() {
                    s.by_namespace = fresh;
                    s.shared.prune();
                    s.generation += 1;
                }
                drop(guard);
                self.ready_tx.send_replace(true);
            }
            watcher::Event::Apply(pod) => {
                if place(&mut s.by_namespace, &mut s.shared, &pod) {
                    s.generation += 1;
                }
            }
            watcher::Event::Delete(pod) => {
                if let (Some(ns), Some(name)) = (&pod.metadata.namespace, &pod.metadata.name)
                    && remove(&mut s.by_namespace, ns, name)
                {
                    s.generation += 1;
                }
            }
        }
    }

    /// Feeds `events` (a pod watch) in until it ends.
    pub async fn follow(
        self,
        events: impl Stream<Item = watcher::Result<watcher::Event<SlimPod>>>,
    ) {
        let mut events = std::pin::pin!(events);
        while let Some(event) = events.next().await {
            match event {
                Ok(event) => self.apply(event),
                // The watcher retries with backoff; the pods known stay.
                Err(e) => tracing::warn!(error = %e, "pod watch"),
            }
        }
    }

    /// The running pods in these namespaces.
    pub fn in_namespaces<'a>(
        &self,
        namespaces: impl IntoIterator<Item = &'a str>,
    ) -> Vec<Arc<PodInfo>> {
        self.in_namespaces_at(namespaces).1
    }

    /// As [`Pods::in_namespaces`], with the generation they were read at:
    /// while it stays the same, so do the pods (whatever else happened).
    pub fn in_namespaces_at<'a>(
        &self,
        namespaces: impl IntoIterator<Item = &'a str>,
    ) -> (u64, Vec<Arc<PodInfo>>) {
        let s = self.state.read().unwrap_or_else(|e| e.into_inner());
        let pods = namespaces
            .into_iter()
            .filter_map(|ns| s.by_namespace.get(ns))
            .flat_map(|pods| pods.values().cloned())
            .collect();
        (s.generation, pods)
    }

    /// How many running pods are known.
    pub fn len(&self) -> usize {
        let s = self.state.read().unwrap_or_else(|e| e.into_inner());
        s.by_namespace.values().map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Until the first list is in.
    pub async fn wait_until_ready(&self) {
        let mut ready = self.ready.clone();
        let _ = ready.wait_for(|r| *r).await;
    }
}

impl kube::Resource for SlimPod {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "Pod".into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        "".into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "pods".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

// Here, not in `plan`: the planner knows pods only as `PodInfo`.
impl PodInfo {
    /// A pod that can take a fault now: scheduled, running, not being
    /// deleted. Others are not candidates (their successor will be).
    pub fn from_pod(pod: &SlimPod) -> Option<PodInfo> {
        let meta = &pod.metadata;
        if meta.deletion_timestamp.is_some() {
            return None;
        }
        if pod.status.phase.as_deref() != Some("Running") {
            return None;
        }
        let node = pod.spec.node_name.as_deref()?;
        let mut ips: Vec<std::net::IpAddr> = pod
            .status
            .pod_ips
            .iter()
            .filter_map(|p| p.ip.parse().ok())
            .collect();
        if ips.is_empty()
            && let Some(ip) = pod.status.pod_ip.as_ref().and_then(|ip| ip.parse().ok())
        {
            ips.push(ip);
        }
        Some(PodInfo {
            uid: meta.uid.as_deref()?.into(),
            name: meta.name.clone()?,
            namespace: meta.namespace.as_deref()?.into(),
            labels: Arc::new(meta.labels.clone().unwrap_or_default()),
            node: node.into(),
            ips,
            host_network: pod.spec.host_network,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_pod_decodes_to_what_planning_reads() {
        let pod: SlimPod = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": "web-1", "namespace": "shop", "uid": "u1",
                "labels": {"app": "web"},
                "annotations": {"big": "x"},
                "managedFields": [{"manager": "kubelet", "fieldsV1": {"f:status": {}}}],
            },
            "spec": {"nodeName": "node-a", "hostNetwork": null,
                     "containers": [{"name": "main", "image": "web:1"}]},
            "status": {"phase": "Running", "podIP": "10.0.0.1",
                       "podIPs": [{"ip": "10.0.0.1"}, {"ip": "fd00::1"}],
                       "containerStatuses": [{"name": "main", "ready": true}]},
        }))
        .expect("decodes");
        assert_eq!(pod.spec.node_name.as_deref(), Some("node-a"));
        assert!(!pod.spec.host_network);
        assert_eq!(pod.status.pod_ips.len(), 2);
        let info = PodInfo::from_pod(&pod).expect("running");
        assert_eq!(info.ips.len(), 2);
        assert_eq!(info.labels.get("app").map(String::as_str), Some("web"));
    }

    #[test]
    fn nulls_and_missing_parts_are_defaults() {
        let pod: SlimPod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"}, "spec": null, "status": {"podIPs": null},
        }))
        .expect("decodes");
        assert_eq!(pod.spec, SlimPodSpec::default());
        assert!(pod.status.pod_ips.is_empty());
    }
}

#[cfg(test)]
mod index_tests {
    use super::*;

    fn pod(ns: &str, name: &str, phase: &str) -> SlimPod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": ns, "uid": format!("{ns}-{name}")},
            "spec": {"nodeName": "node-a"},
            "status": {"phase": phase, "podIP": "10.0.0.1"},
        }))
        .expect("a pod")
    }

    fn names(pods: &Pods, ns: &str) -> Vec<String> {
        let mut v: Vec<String> = pods
            .in_namespaces([ns])
            .iter()
            .map(|p| p.name.clone())
            .collect();
        v.sort();
        v
    }

    #[tokio::test]
    async fn running_pods_are_kept_by_namespace_and_a_relist_replaces_them() {
        let pods = Pods::default();
        pods.apply(watcher::Event::Init);
        pods.apply(watcher::Event::InitApply(pod("shop", "a", "Running")));
        pods.apply(watcher::Event::InitApply(pod("shop", "b", "Pending")));
        pods.apply(watcher::Event::InitApply(pod("other", "c", "Running")));
        // Not ready, and nothing shown, before the list is whole.
        assert!(names(&pods, "shop").is_empty());
        pods.apply(watcher::Event::InitDone);
        pods.wait_until_ready().await;
        assert_eq!(names(&pods, "shop"), ["a"]);
        assert_eq!(pods.len(), 2);

        pods.apply(watcher::Event::Apply(pod("shop", "b", "Running")));
        pods.apply(watcher::Event::Apply(pod("shop", "a", "Succeeded")));
        assert_eq!(names(&pods, "shop"), ["b"]);
        pods.apply(watcher::Event::Delete(pod("other", "c", "Running")));
        assert!(names(&pods, "other").is_empty());

        // A relist after the watch was lost: what it does not list is gone.
        pods.apply(watcher::Event::Init);
        pods.apply(watcher::Event::InitApply(pod("shop", "d", "Running")));
        assert_eq!(
            names(&pods, "shop"),
            ["b"],
            "the old view until the list is done"
        );
        pods.apply(watcher::Event::InitDone);
        assert_eq!(names(&pods, "shop"), ["d"]);
    }

    #[test]
    fn pods_with_the_same_labels_namespace_and_node_share_them() {
        let pods = Pods::default();
        for name in ["a", "b", "c"] {
            pods.apply(watcher::Event::Apply(pod("shop", name, "Running")));
        }
        let all = pods.in_namespaces(["shop"]);
        assert_eq!(all.len(), 3);
        let first = &all[0];
        assert!(all.iter().all(|p| Arc::ptr_eq(&p.labels, &first.labels)
            && Arc::ptr_eq(&p.namespace, &first.namespace)
            && Arc::ptr_eq(&p.node, &first.node)));
        assert!(!Arc::ptr_eq(&all[1].uid, &first.uid));
    }

    #[test]
    fn the_generation_moves_only_when_what_planning_reads_changes() {
        let pods = Pods::default();
        let generation = || pods.in_namespaces_at(["shop"]).0;
        pods.apply(watcher::Event::Init);
        pods.apply(watcher::Event::InitApply(pod("shop", "a", "Running")));
        pods.apply(watcher::Event::InitDone);
        let listed = generation();
        // The same pod again (a status update planning does not read).
        pods.apply(watcher::Event::Apply(pod("shop", "a", "Running")));
        assert_eq!(generation(), listed);
        // A pod not running and never kept, and one deleted that was never kept.
        pods.apply(watcher::Event::Apply(pod("shop", "b", "Pending")));
        pods.apply(watcher::Event::Delete(pod("shop", "c", "Running")));
        assert_eq!(generation(), listed);
        let mut moved = pod("shop", "a", "Running");
        moved.status.pod_ip = Some("10.0.0.2".into());
        pods.apply(watcher::Event::Apply(moved));
        let changed = generation();
        assert!(changed > listed);
        pods.apply(watcher::Event::Apply(pod("shop", "b", "Running")));
        assert!(generation() > changed);
        let added = generation();
        pods.apply(watcher::Event::Delete(pod("shop", "b", "Running")));
        assert!(generation() > added);
    }
}
