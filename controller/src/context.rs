//! What every reconcile reads: the client, the watches' stores (pods,
//! namespaces, NodeFaults: one cluster-wide watch each), the observer, the
//! clock and the runs this controller drives.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use faultline_api::{Experiment, NodeFaults};
use futures::{StreamExt, TryStreamExt};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Namespace, Node};
use kube::{
    Api, Client, Resource, ResourceExt,
    core::{DeserializeGuard, PartialObjectMeta},
    runtime::{
        WatchStreamExt,
        events::{Event as KubeEvent, EventType, Recorder, Reporter},
        reflector::{self, Store},
        watcher::{self, Config},
    },
};

use crate::{
    errors::chain,
    live::Live,
    metrics::Metrics,
    observe::ObserverClient,
    pods::{Pods, SlimPod},
};

/// The time, as the controller reads it (tests move it by hand).
pub type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

#[derive(Debug, Clone)]
pub struct Settings {
    /// How often a running experiment is stepped.
    pub tick: Duration,
    /// How often due checks are evaluated.
    pub check_every: Duration,
    /// The longest a waiting experiment (a scheduled one between runs) goes
    /// unlooked at, so a changed clock is noticed.
    pub max_wait: Duration,
    /// How long into a run a check's service may stay unknown to the
    /// observer before an Event names it (most likely misnamed).
    pub unseen_grace: Duration,
    /// The dead-man's switch: an entry expires at the latest this long
    /// after the controller last renewed it, so with the controller gone
    /// or the API unreachable every fault ends within one lease.
    pub fault_lease: Duration,
    /// How often the leader sweeps leftovers (entries of Experiments that
    /// no longer exist, empty NodeFaults objects).
    pub sweep_every: Duration,
    /// How long one step of a run goes on starting NodeFaults writes (a few
    /// always start; longer when deciding took longer); the rest wait for
    /// the next step, which follows at once. Keeps a step short at thousands of nodes, so checks and aborts
    /// are not kept waiting behind the writes.
    pub writing_per_step: Duration,
    /// The cluster's ceilings on pods per run and share of a target
    /// (chart `ceilings`).
    pub ceilings: crate::plan::Ceilings,
    /// Namespaces whose pods are never targets, whatever an Experiment
    /// says (besides those labelled `faultline.dev/protected=true`).
    pub protected_namespaces: Vec<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            tick: Duration::from_secs(1),
            check_every: Duration::from_secs(2),
            max_wait: Duration::from_secs(30),
            unseen_grace: Duration::from_secs(30),
            fault_lease: Duration::from_secs(60),
            ceilings: Default::default(),
            sweep_every: Duration::from_secs(60),
            writing_per_step: Duration::from_millis(500),
            protected_namespaces: crate::plan::ALWAYS_PROTECTED
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
        }
    }
}

/// Everything a reconcile reads besides the experiment.
pub struct Context {
    pub client: Client,
    pub pods: Pods,
    pub namespaces: Store<Namespace>,
    pub nodefaults: Store<NodeFaults>,
    pub nodes: Store<PartialObjectMeta<Node>>,
    pub observer: ObserverClient,
    pub recorder: Recorder,
    pub clock: Clock,
    pub settings: Settings,
    pub metrics: Metrics,
    pub(crate) runs: Mutex<HashMap<String, Live>>,
    /// Runs that ended and were let go of (by Experiment uid, the run's
    /// start): until the cache shows their end, their status must not be
    /// taken for a run in progress.
    pub(crate) let_go: Mutex<HashMap<String, jiff::Timestamp>>,
    /// Per Experiment (by uid): failed reconciles in a row, and the last
    /// failure's kind, for the backoff.
    pub(crate) failures: Mutex<HashMap<String, u32>>,
    /// Every store has listed (set by `reconcile::run`, read by /readyz).
    pub(crate) ready: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// The stores the controller reads from.
#[derive(Clone)]
pub struct Stores {
    pub pods: Pods,
    pub namespaces: Store<Namespace>,
    pub nodefaults: Store<NodeFaults>,
    /// Nodes, metadata only: the owners of their NodeFaults objects.
    pub nodes: Store<PartialObjectMeta<Node>>,
}

impl std::fmt::Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stores").finish_non_exhaustive()
    }
}

impl Stores {
    /// Waits until every store has listed: before that a plan sees no pods.
    /// One waiter at a time: kube's readiness signal wakes only the last
    /// task that polled it.
    pub(crate) async fn ready(&self) {
        self.pods.wait_until_ready().await;
        let _ = self.namespaces.wait_until_ready().await;
        let _ = self.nodefaults.wait_until_ready().await;
        let _ = self.nodes.wait_until_ready().await;
    }
}

/// Managed fields are most of a small object's size; a NodeFaults object
/// keeps its managers' names (the sweeper reads whose entries are there),
/// without the fields each holds.
fn slim_nodefaults(nf: &mut NodeFaults) {
    if let Some(managed) = nf.metadata.managed_fields.as_mut() {
        for m in managed.iter_mut() {
            m.fields_v1 = None;
        }
    }
}

/// The watches the controller reads from, on `client`: the stores, and the
/// future that drives the three watches (run it until shutdown).
pub fn watches(client: &Client) -> (Stores, futures::future::BoxFuture<'static, ()>) {
    let pods = Pods::default();
    let (namespaces, ns_writer) = reflector::store();
    let (nodefaults, nf_writer) = reflector::store();
    let (nodes, node_writer) = reflector::store();
    let pod_stream = pods
        .clone()
        .follow(watcher(Api::<SlimPod>::all(client.clone()), Config::default()).default_backoff());
    let ns_stream = watcher(Api::<Namespace>::all(client.clone()), Config::default())
        .default_backoff()
        .modify(|ns| ns.metadata.managed_fields = None)
        .reflect(ns_writer)
        .touched_objects();
    let node_stream = watcher(
        Api::<PartialObjectMeta<Node>>::all(client.clone()),
        Config::default(),
    )
    .default_backoff()
    .modify(|n| n.metadata.managed_fields = None)
    .reflect(node_writer)
    .touched_objects();
    let nf_stream = watcher(
        Api::<DeserializeGuard<NodeFaults>>::all(client.clone()),
        Config::default(),
    )
    .default_backoff()
    .try_filter_map(|event| std::future::ready(Ok(readable(event))))
    .modify(slim_nodefaults)
    .reflect(nf_writer)
    .touched_objects();
    let driver = async move {
        futures::join!(
            pod_stream,
            ns_stream.for_each(|_| async {}),
            nf_stream.for_each(|_| async {}),
            node_stream.for_each(|_| async {}),
        );
    };
    (
        Stores {
            pods,
            namespaces,
            nodefaults,
            nodes,
        },
        Box::pin(driver),
    )
}

/// A NodeFaults event with what does not decode left out (a guarded watch
/// goes on past it): an object that turned unreadable leaves the store, as
/// if deleted, and the controller's next write sets its own entries again.
fn readable(
    event: watcher::Event<DeserializeGuard<NodeFaults>>,
) -> Option<watcher::Event<NodeFaults>> {
    let gone = |invalid: kube::core::error_boundary::InvalidObject| {
        tracing::warn!(nodefaults = ?invalid.metadata.name, error = %invalid.error, "unreadable NodeFaults object");
        NodeFaults {
            metadata: invalid.metadata,
            spec: Default::default(),
            status: None,
        }
    };
    Some(match event {
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitDone => watcher::Event::InitDone,
        watcher::Event::InitApply(g) => watcher::Event::InitApply(g.0.ok()?),
        watcher::Event::Apply(g) => match g.0 {
            Ok(nf) => watcher::Event::Apply(nf),
            Err(invalid) => watcher::Event::Delete(gone(invalid)),
        },
        watcher::Event::Delete(g) => watcher::Event::Delete(g.0.unwrap_or_else(gone)),
    })
}

fn watcher<K>(
    api: Api<K>,
    config: Config,
) -> impl futures::Stream<Item = watcher::Result<watcher::Event<K>>>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    watcher::watcher(api, config)
}

impl Context {
    pub fn new(
        client: Client,
        stores: Stores,
        observer: ObserverClient,
        clock: Clock,
        settings: Settings,
        metrics: Metrics,
        instance: Option<String>,
    ) -> Context {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "faultline-controller".into(),
                instance,
            },
        );
        Context {
            client,
            pods: stores.pods,
            namespaces: stores.namespaces,
            nodefaults: stores.nodefaults,
            nodes: stores.nodes,
            observer,
            recorder,
            clock,
            settings,
            metrics,
            runs: Mutex::new(HashMap::new()),
            let_go: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            ready: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub(crate) fn take_run(&self, uid: &str) -> Option<Live> {
        self.runs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(uid)
    }

    /// Lets go of a run that ended: its status is the record.
    pub(crate) fn let_go(&self, uid: &str, started_at: jiff::Timestamp) {
        self.let_go
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(uid.to_owned(), started_at);
    }

    /// The start of the run last let go of, if the cache may not show its
    /// end yet; `caught_up` forgets it.
    pub(crate) fn let_go_of(&self, uid: &str, caught_up: bool) -> Option<jiff::Timestamp> {
        let mut all = self.let_go.lock().unwrap_or_else(|e| e.into_inner());
        if caught_up {
            all.remove(uid);
            return None;
        }
        all.get(uid).copied()
    }

    pub(crate) fn keep_run(&self, uid: &str, live: Live) {
        self.runs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(uid.to_owned(), live);
    }

    /// Whether every store has listed and reconciling has begun.
    pub fn is_ready(&self) -> bool {
        self.ready.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits until ready; false when `within` passes first.
    pub async fn wait_ready(&self, within: std::time::Duration) -> bool {
        let started = tokio::time::Instant::now();
        while !self.is_ready() {
            if started.elapsed() >= within {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        true
    }

    pub(crate) async fn event(
        &self,
        exp: &Experiment,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        let ev = KubeEvent {
            type_,
            reason: reason.into(),
            note: Some(event_note(note)),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &exp.object_ref(&())).await {
            tracing::warn!(experiment = %exp.name_any(), reason, error = %chain(&e), "cannot record an event");
        }
    }
}

/// The API refuses an Event whose note is longer than 1024 characters
/// (and the Event would be lost): a longer one is cut, and says so.
fn event_note(note: String) -> String {
    const MOST: usize = 1024;
    if note.chars().count() <= MOST {
        return note;
    }
    let mut cut: String = note.chars().take(MOST - 1).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_notes_fit_the_api() {
        assert_eq!(event_note("short".into()), "short");
        let long = "é".repeat(3000);
        let cut = event_note(long);
        assert_eq!(cut.chars().count(), 1024);
        assert!(cut.ends_with('…'));
    }

    fn guarded(json: serde_json::Value) -> DeserializeGuard<NodeFaults> {
        serde_json::from_value(json).expect("a guard decodes anything with metadata")
    }

    #[test]
    fn an_unreadable_nodefaults_object_leaves_the_store_and_the_watch_goes_on() {
        let good = guarded(serde_json::json!({
            "apiVersion": "faultline.dev/v1alpha1", "kind": "NodeFaults",
            "metadata": {"name": "node-a"}, "spec": {"faults": []},
        }));
        let bad = guarded(serde_json::json!({
            "apiVersion": "faultline.dev/v1alpha1", "kind": "NodeFaults",
            "metadata": {"name": "node-b"}, "spec": {"faults": "not a list"},
        }));
        assert!(matches!(
            readable(watcher::Event::InitApply(good.clone())),
            Some(watcher::Event::InitApply(nf)) if nf.name_any() == "node-a"
        ));
        assert!(readable(watcher::Event::InitApply(bad.clone())).is_none());
        assert!(matches!(
            readable(watcher::Event::Apply(bad)),
            Some(watcher::Event::Delete(nf)) if nf.name_any() == "node-b"
        ));
    }
}
