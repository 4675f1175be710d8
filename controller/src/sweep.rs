//! Leftovers: entries of Experiments that no longer exist, and NodeFaults
//! objects with nothing in them. Every experiment's entries are held by
//! its own field manager (`faultline.dev/experiment-UID`); when the
//! Experiment is gone (deleted while no controller ran, or its finalizer
//! removed by hand), that manager's entries are taken off by applying
//! none in its name. Entries expire on the node anyway (the dead-man's
//! lease); this keeps the objects clean.

use std::collections::BTreeSet;

use faultline_api::{Experiment, NodeFaults};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, ListParams, Preconditions},
};

use crate::{context::Context, errors::Error, nodes::release_node};

/// The prefix of every experiment's field manager on NodeFaults objects.
pub(crate) const MANAGER_PREFIX: &str = "faultline.dev/experiment-";

/// What one sweep found, for logs and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Swept {
    /// (node, experiment uid) whose entries were taken off.
    pub orphans: Vec<(String, String)>,
    /// Empty objects deleted.
    pub deleted: Vec<String>,
}

/// The experiments (by uid) holding entries on `nf` that are not in
/// `alive` (pure).
pub(crate) fn orphaned(nf: &NodeFaults, alive: &BTreeSet<String>) -> Vec<String> {
    let holders: BTreeSet<&str> = nf
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|m| m.manager.as_deref()?.strip_prefix(MANAGER_PREFIX))
        .collect();
    holders
        .into_iter()
        .filter(|uid| !alive.contains(*uid))
        .map(str::to_owned)
        .collect()
}

/// One sweep over every cached NodeFaults object.
pub(crate) async fn sweep(ctx: &Context) -> Result<Swept, Error> {
    let alive: BTreeSet<String> = Api::<Experiment>::all(ctx.client.clone())
        .list_metadata(&ListParams::default())
        .await
        .map_err(Error::Kube)?
        .items
        .into_iter()
        .filter_map(|e| e.metadata.uid)
        .collect();
    let mut swept = Swept::default();
    let api = Api::<NodeFaults>::all(ctx.client.clone());
    for nf in ctx.nodefaults.state() {
        let node = nf.name_any();
        for uid in orphaned(&nf, &alive) {
            release_node(ctx, &format!("{MANAGER_PREFIX}{uid}"), &node).await?;
            tracing::info!(%node, experiment_uid = %uid, "took off the entries of an experiment that no longer exists");
            swept.orphans.push((node.clone(), uid));
        }
        let empty = nf.spec.faults.is_empty()
            && nf
                .status
                .as_ref()
                .is_none_or(|s| s.applied.unwrap_or(0) == 0);
        if empty && swept.orphans.iter().all(|(n, _)| *n != node) {
            // Only as cached: a write since (a run placing entries) wins.
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    resource_version: nf.resource_version(),
                    uid: nf.uid(),
                }),
                ..DeleteParams::default()
            };
            match api.delete(&node, &params).await {
                Ok(_) => swept.deleted.push(node),
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                Err(e) => return Err(Error::Kube(e)),
            }
        }
    }
    Ok(swept)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;

    #[test]
    fn managers_of_gone_experiments_are_orphans_and_others_are_not() {
        let mut nf = NodeFaults::new("node-a", Default::default());
        nf.metadata.managed_fields = Some(
            [
                "faultline.dev/experiment-alive",
                "faultline.dev/experiment-gone",
                "faultline-agent",
                "kubectl",
            ]
            .iter()
            .map(|m| ManagedFieldsEntry {
                manager: Some((*m).into()),
                ..Default::default()
            })
            .collect(),
        );
        let alive = ["alive".to_owned()].into();
        assert_eq!(orphaned(&nf, &alive), ["gone"]);
    }
}
