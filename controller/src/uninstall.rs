//! What `helm uninstall` leaves to be done once the controller and the
//! agents are gone (the chart's post-delete hook runs
//! `faultline-controller --uninstall`): every NodeFaults object deleted
//! (an agent still running removes its faults as the object goes; the
//! dead-man's lease ends them anyway), every run still in progress
//! recorded as aborted, and every Experiment's finalizer removed, so
//! nothing is left that nobody will ever finish.

use faultline_api::{Experiment, ExperimentStatus, NodeFaults, Phase, Verdict};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams},
};

use crate::reconcile::FINALIZER;

/// What the clean-up did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Cleaned {
    pub nodefaults_deleted: usize,
    pub runs_ended: usize,
    pub finalizers_removed: usize,
}

const MESSAGE: &str = "Faultline was uninstalled; every fault was removed";

pub async fn uninstall(client: Client) -> Result<Cleaned, kube::Error> {
    let mut done = Cleaned::default();
    let nodefaults: Api<NodeFaults> = Api::all(client.clone());
    for nf in nodefaults.list(&ListParams::default()).await? {
        match nodefaults
            .delete(&nf.name_any(), &DeleteParams::default())
            .await
        {
            Ok(_) => done.nodefaults_deleted += 1,
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    let experiments: Api<Experiment> = Api::all(client.clone());
    for exp in experiments.list(&ListParams::default()).await? {
        let Some(ns) = exp.namespace() else { continue };
        let api: Api<Experiment> = Api::namespaced(client.clone(), &ns);
        let name = exp.name_any();
        let status = exp.status.clone().unwrap_or_default();
        let in_progress = status.started_at.is_some()
            && !status
                .phase
                .is_some_and(|p| matches!(p, Phase::Completed | Phase::Recovered | Phase::Invalid));
        let mut current = exp;
        if in_progress {
            let ended = ExperimentStatus {
                phase: Some(Phase::Recovered),
                verdict: Some(Verdict::Aborted),
                injected: Some(0),
                message: Some(MESSAGE.into()),
                ..status
            };
            let patch = serde_json::json!({"status": ended});
            match api
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(updated) => {
                    done.runs_ended += 1;
                    current = updated;
                }
                Err(kube::Error::Api(e)) if e.code == 404 => continue,
                Err(e) => return Err(e),
            }
        }
        if current.finalizers().iter().any(|f| f == FINALIZER) {
            let kept: Vec<&String> = current
                .finalizers()
                .iter()
                .filter(|f| *f != FINALIZER)
                .collect();
            // The resourceVersion makes it a test-and-set: a finalizer
            // list changed meanwhile is not overwritten.
            let patch = serde_json::json!({"metadata": {
                "finalizers": kept,
                "resourceVersion": current.resource_version(),
            }});
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => done.finalizers_removed += 1,
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(done)
}
