//! Kube mode: the NodeFaults object named after this node, followed through
//! the Kubernetes API, and the agent's status written back to it.
//!
//! - A watch (kube-runtime's watcher: list, then watch from that version,
//!   re-listing when the version is gone) with the default backoff between
//!   failed attempts (0.8 s doubling to 30 s, with jitter).
//! - While the API cannot be read, the agent is told the desired state is
//!   unknown: it keeps what is applied until each deadline and applies
//!   nothing new. When the stream recovers, the last known state is valid
//!   again (the watch resumes from it) and is sent again.
//! - Every object is validated with the same code as `faultline validate`;
//!   an invalid one counts as unknown, with each problem logged.
//! - No object for this node (never created, or deleted) means no faults.
//! - Status goes to the status subresource by server-side apply, as field
//!   manager `faultline-agent`, after every change the agent publishes.

use std::time::Duration;

use faultline_api::{NodeFaults, NodeFaultsStatus, Problems};
use futures::StreamExt as _;
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{WatchStreamExt as _, watcher},
};
use std::sync::mpsc::Sender;
use tokio::sync::watch;

use crate::{agent::Event, reconcile::Desired};

/// The field manager of every status the agent writes.
pub const FIELD_MANAGER: &str = "faultline-agent";

/// Turns watch events for one node's object into agent events (pure).
#[derive(Debug)]
pub struct Follower {
    node: String,
    /// The object was seen in the current (re-)list.
    listed: bool,
    /// The last desired state sent, to send again after a failure.
    last: Option<Event>,
    failing: bool,
}

impl Follower {
    pub fn new(node: &str) -> Follower {
        Follower {
            node: node.to_owned(),
            listed: false,
            last: None,
            failing: false,
        }
    }

    /// The agent events one item of the watch stream calls for.
    pub fn on<E: std::fmt::Display>(
        &mut self,
        item: Result<watcher::Event<NodeFaults>, E>,
    ) -> Vec<Event> {
        let event = match item {
            Err(e) => {
                self.failing = true;
                return vec![Event::Desired(Desired::Unknown(format!(
                    "cannot read NodeFaults {} from the Kubernetes API: {e}",
                    self.node
                )))];
            }
            Ok(event) => event,
        };
        let mut out = Vec::new();
        if std::mem::take(&mut self.failing)
            && let Some(last) = &self.last
        {
            out.push(last.clone());
        }
        let desired = match event {
            watcher::Event::Init => {
                self.listed = false;
                None
            }
            watcher::Event::InitApply(o) | watcher::Event::Apply(o) if self.is_ours(&o) => {
                self.listed = true;
                Some(desired_of(&o))
            }
            watcher::Event::InitDone if !self.listed => Some(no_faults()),
            watcher::Event::Delete(o) if self.is_ours(&o) => Some(no_faults()),
            _ => None,
        };
        if let Some(d) = desired {
            // The state resent above is superseded by this one.
            out.clear();
            self.last = Some(d.clone());
            out.push(d);
        }
        out
    }

    fn is_ours(&self, o: &NodeFaults) -> bool {
        o.name_any() == self.node
    }
}

fn no_faults() -> Event {
    Event::Desired(Desired::Faults(Vec::new()))
}

/// The desired state an object holds, validated; problems are logged.
pub fn desired_of(o: &NodeFaults) -> Event {
    let name = o.name_any();
    let mut problems = Problems::default();
    o.spec.validate(&mut problems);
    let desired = match problems.into_result() {
        Ok(()) => Desired::Faults(o.spec.faults.clone()),
        Err(problems) => {
            for p in &problems {
                tracing::warn!("NodeFaults {name}: {p}");
            }
            Desired::Unknown(format!(
                "NodeFaults {name} has {} problem(s)",
                problems.len()
            ))
        }
    };
    Event::Versioned {
        desired,
        generation: o.metadata.generation.unwrap_or(0),
    }
}

/// Follows the node's object until every receiver is gone.
pub async fn follow(api: Api<NodeFaults>, node: String, tx: Sender<Event>) {
    let config = watcher::Config::default().fields(&format!("metadata.name={node}"));
    let stream = watcher(api, config).default_backoff();
    futures::pin_mut!(stream);
    let mut follower = Follower::new(&node);
    while let Some(item) = stream.next().await {
        for event in follower.on(item) {
            if tx.send(event).is_err() {
                return;
            }
        }
    }
}

const STATUS_RETRY_FIRST: Duration = Duration::from_secs(1);
const STATUS_RETRY_MAX: Duration = Duration::from_secs(30);

/// Writes each status the agent publishes, the latest first when several
/// queue up; a failed write is retried with backoff, a missing object (404:
/// deleted, nothing to report on) is skipped. The clock skew `skew`
/// reports goes with it, and a change of it alone is written too.
pub async fn write_status(
    api: Api<NodeFaults>,
    node: String,
    mut statuses: watch::Receiver<Option<NodeFaultsStatus>>,
    mut skew: watch::Receiver<Option<i64>>,
) {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut retry = STATUS_RETRY_FIRST;
    loop {
        // Without a skew measurer the statuses alone drive the writes.
        let open = tokio::select! {
            c = statuses.changed() => c.is_ok(),
            Ok(()) = skew.changed() => true,
        };
        if !open {
            return;
        }
        let Some(mut status) = statuses.borrow_and_update().clone() else {
            continue;
        };
        status.clock_skew_seconds = *skew.borrow_and_update();
        let patch = status_patch(&status);
        match api
            .patch_status(&node, &params, &Patch::Apply(&patch))
            .await
        {
            Ok(_) => retry = STATUS_RETRY_FIRST,
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => {
                tracing::warn!(
                    "cannot write the status of NodeFaults {node} (retrying in {}s): {e}",
                    retry.as_secs()
                );
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(STATUS_RETRY_MAX);
                statuses.mark_changed();
            }
        }
    }
}

/// The server-side apply body: only the status, owned whole by the agent.
pub fn status_patch(status: &NodeFaultsStatus) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "faultline.dev/v1alpha1",
        "kind": "NodeFaults",
        "status": status,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::tests::partition;
    use faultline_api::NodeFaultsSpec;

    fn object(name: &str, generation: i64, ids: &[&str]) -> NodeFaults {
        let mut o = NodeFaults::new(
            name,
            NodeFaultsSpec {
                faults: ids
                    .iter()
                    .map(|id| partition(id, "/run/netns/x", "10.0.0.1", 60))
                    .collect(),
            },
        );
        o.metadata.generation = Some(generation);
        o
    }

    fn ids(events: &[Event]) -> Vec<String> {
        events
            .iter()
            .map(|e| match e {
                Event::Versioned {
                    desired: Desired::Faults(f),
                    generation,
                } => format!(
                    "g{generation}:{}",
                    f.iter()
                        .map(|f| f.id.as_str())
                        .collect::<Vec<_>>()
                        .join(",")
                ),
                Event::Desired(Desired::Faults(f)) if f.is_empty() => "none".into(),
                Event::Desired(Desired::Unknown(_)) => "unknown".into(),
                other => format!("{other:?}"),
            })
            .collect()
    }

    type Item = Result<watcher::Event<NodeFaults>, String>;

    #[test]
    fn list_watch_delete() {
        let mut f = Follower::new("node-a");
        let mut run = |item: Item| ids(&f.on(item));
        assert!(run(Ok(watcher::Event::Init)).is_empty());
        assert_eq!(
            run(Ok(watcher::Event::InitApply(object("node-a", 1, &["a"])))),
            ["g1:a"]
        );
        assert!(run(Ok(watcher::Event::InitDone)).is_empty());
        assert_eq!(
            run(Ok(watcher::Event::Apply(object("node-a", 2, &["a", "b"])))),
            ["g2:a,b"]
        );
        // Another node's object (a selector mistake) is ignored.
        assert!(run(Ok(watcher::Event::Apply(object("node-b", 9, &["x"])))).is_empty());
        assert_eq!(
            run(Ok(watcher::Event::Delete(object("node-a", 2, &[])))),
            ["none"]
        );
    }

    #[test]
    fn no_object_in_the_list_means_no_faults() {
        let mut f = Follower::new("node-a");
        assert!(f.on::<String>(Ok(watcher::Event::Init)).is_empty());
        assert_eq!(ids(&f.on::<String>(Ok(watcher::Event::InitDone))), ["none"]);
    }

    #[test]
    fn a_failure_is_unknown_and_recovery_restores_the_last_state() {
        let mut f = Follower::new("node-a");
        let mut run = |item: Item| ids(&f.on(item));
        run(Ok(watcher::Event::Apply(object("node-a", 3, &["a"]))));
        assert_eq!(run(Err("connection refused".into())), ["unknown"]);
        assert_eq!(run(Err("connection refused".into())), ["unknown"]);
        // The watch resumed: an event of no consequence brings the last state back.
        assert_eq!(run(Ok(watcher::Event::Init)), ["g3:a"]);
        // A relist that brings a new version sends only that one.
        run(Err("gone".into()));
        assert_eq!(
            run(Ok(watcher::Event::InitApply(object("node-a", 4, &["b"])))),
            ["g4:b"]
        );
    }

    #[test]
    fn an_invalid_object_is_unknown() {
        let mut o = object("node-a", 5, &["a", "a"]);
        o.spec.faults[1].id = "a".into();
        let mut f = Follower::new("node-a");
        match f.on::<String>(Ok(watcher::Event::Apply(o))).as_slice() {
            [
                Event::Versioned {
                    desired: Desired::Unknown(why),
                    generation: 5,
                },
            ] => assert!(why.contains("1 problem"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_patch_holds_only_the_status() {
        let p = status_patch(&NodeFaultsStatus {
            observed_generation: Some(2),
            applied: Some(1),
            faults: Vec::new(),
            clock_skew_seconds: Some(-30),
        });
        assert_eq!(
            p,
            serde_json::json!({"apiVersion": "faultline.dev/v1alpha1", "kind": "NodeFaults",
                "status": {"observedGeneration": 2, "applied": 1, "clockSkewSeconds": -30}})
        );
    }
}
