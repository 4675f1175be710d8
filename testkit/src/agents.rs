//! Node agents' reports on a real API server, for tests of the controller
//! and the CLI on machines' worth of nodes no kernel backs: every entry of
//! the chosen nodes' NodeFaults is reported applied for the generation
//! seen, as an agent whose kernel took each fault would report it. The
//! real agent, with real faults, runs end to end in
//! agent/tests/control_plane.rs.

use std::{collections::BTreeSet, time::Duration};

use faultline_api::NodeFaults;
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, Patch, PatchParams},
};
use serde_json::json;

/// Reports while it lives; dropping it stops the reports (as an agent that
/// died would: what it reported stays).
#[derive(Debug)]
pub struct Reporting {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Reporting {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reports every entry on `nodes` applied, within about 200 ms of each
/// change to their objects, with no effect counted.
pub fn report_applied(client: Client, nodes: &[&str]) -> Reporting {
    report_applied_counting(client, nodes, None)
}

/// As [`report_applied`], each entry reported with `effect` as the count
/// its kernel made (None: nothing could be counted).
pub fn report_applied_counting(client: Client, nodes: &[&str], effect: Option<i64>) -> Reporting {
    let nodes: BTreeSet<String> = nodes.iter().map(|n| (*n).to_owned()).collect();
    let task = tokio::spawn(async move {
        let api = Api::<NodeFaults>::all(client);
        loop {
            if let Ok(list) = api.list(&ListParams::default()).await {
                for nf in list
                    .items
                    .iter()
                    .filter(|nf| nodes.contains(&nf.name_any()))
                {
                    report(&api, nf, effect).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    Reporting { task }
}

async fn report(api: &Api<NodeFaults>, nf: &NodeFaults, effect: Option<i64>) {
    let generation = nf.metadata.generation;
    if nf.status.as_ref().and_then(|s| s.observed_generation) == generation {
        return;
    }
    let now = jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .unwrap_or_default();
    let faults: Vec<_> = nf
        .spec
        .faults
        .iter()
        .map(|f| {
            let mut s = json!({"id": f.id, "state": "applied", "since": now.to_string()});
            if let Some(n) = effect {
                s["effect"] = json!(n);
            }
            s
        })
        .collect();
    let patch = json!({"status": {
        "observedGeneration": generation,
        "applied": faults.len(),
        "faults": faults,
    }});
    // A conflict or a vanished object is retried on the next round.
    let _ = api
        .patch_status(
            &nf.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await;
}
