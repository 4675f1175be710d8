//! Writing an experiment's entries into the NodeFaults objects: one
//! server-side apply per node under the experiment's own field manager,
//! only where what is there differs from what is wanted.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    sync::Arc,
};

use faultline_api::{FaultState, NodeFault, NodeFaults, NodeFaultsSpec};
use futures::StreamExt;
use jiff::Timestamp;
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
};

use crate::{
    context::Context,
    errors::{Error, Result},
    live::Written,
    plan::ExperimentRef,
};

/// How long the cache may lag behind a write before a missing object is
/// taken as deleted.
const CACHE_LAG: std::time::Duration = std::time::Duration::from_secs(5);

/// Every cached NodeFaults object by name (shared, not copied).
pub(crate) fn in_store(ctx: &Context) -> BTreeMap<String, Arc<NodeFaults>> {
    ctx.nodefaults
        .state()
        .into_iter()
        .map(|nf| (nf.name_any(), nf))
        .collect()
}

/// This experiment's entries in one object.
pub(crate) fn ours<'a>(
    nf: &'a NodeFaults,
    r: &'a ExperimentRef,
) -> impl Iterator<Item = &'a NodeFault> + 'a {
    nf.spec.faults.iter().filter(|f| r.owns(&f.id))
}

/// A digest of entries as written, to tell whether the same are wanted
/// again while the cache has not caught up with the write.
fn digest(entries: &[NodeFault]) -> u64 {
    use std::hash::Hasher;
    let mut h = std::hash::DefaultHasher::new();
    // Serialization cannot fail for these types; an empty digest would
    // only cost one more write.
    h.write(&serde_json::to_vec(entries).unwrap_or_default());
    h.finish()
}

/// What the agents say of this experiment's entries, borrowed from the
/// cached objects (150 000 ids copied each step would be most of a step's
/// memory).
#[derive(Debug, Default)]
pub(crate) struct Reports<'a> {
    /// Entries applied, as reported for the spec their node holds now: by
    /// fault and pod uid (what an entry id holds after the experiment's
    /// uid), so an instance is looked up without building its id.
    pub applied: HashSet<(&'a str, &'a str), foldhash::fast::RandomState>,
    /// Entry ids that failed, with the agent's reason.
    pub failed: HashMap<&'a str, &'a str>,
    /// What each entry did, as its agent counts it (whatever the state: a
    /// count is evidence even from an entry since removed), from statuses
    /// of the entries as written now.
    pub effects: BTreeMap<&'a str, u64>,
}

/// The agents' word on this experiment's entries. An entry counts as
/// applied only when its node's agent has converged to the object's
/// current generation (so it saw the entry as it is) and the cached
/// object has caught up with this controller's last write there.
pub(crate) fn reports<'a>(
    cached: &'a BTreeMap<String, Arc<NodeFaults>>,
    r: &ExperimentRef,
    written: &BTreeMap<String, Written>,
) -> Reports<'a> {
    let mut out = Reports::default();
    for (name, nf) in cached {
        let Some(status) = &nf.status else { continue };
        let generation = nf.metadata.generation.unwrap_or(0);
        let current = written.get(name).is_none_or(|w| generation >= w.generation)
            && status.observed_generation >= Some(generation);
        for f in status.faults.iter().filter(|f| r.owns(&f.id)) {
            // Only from a status of the entries as written now: an older
            // one may still count a previous run's entry of the same id.
            if current && let Some(n) = f.effect.and_then(|n| u64::try_from(n).ok()) {
                out.effects.insert(&f.id, n);
            }
            match f.state {
                FaultState::Applied if current => {
                    if let Some(instance) = r.instance_of(&f.id) {
                        out.applied.insert(instance);
                    }
                }
                FaultState::Failed => {
                    out.failed
                        .insert(&f.id, f.reason.as_deref().unwrap_or_default());
                }
                _ => {}
            }
        }
    }
    out
}

/// How many of this experiment's entries the agents report as failed.
pub(crate) fn failed(cached: &BTreeMap<String, Arc<NodeFaults>>, r: &ExperimentRef) -> u32 {
    cached
        .values()
        .flat_map(|nf| nf.status.iter().flat_map(|s| s.faults.iter()))
        .filter(|f| f.state == FaultState::Failed && r.owns(&f.id))
        .count() as u32
}

/// What the API server would refuse of a node's entries (the NodeFaults
/// CRD's limits: 4096 entries, 64 peers or destinations each), so a run
/// that cannot be placed stops with the reason instead of retrying.
pub(crate) fn refused(node: &str, entries: &[NodeFault]) -> Option<String> {
    let cannot = |what: String| {
        Some(format!(
            "the entries for node {node} cannot be written: {what}"
        ))
    };
    if entries.len() > faultline_api::MAX_NODE_FAULTS {
        return cannot(format!(
            "spec.faults: has more than {} faults",
            faultline_api::MAX_NODE_FAULTS
        ));
    }
    // One entry of each fault in full: the others differ only in the ids,
    // pods and times this controller generates (checking all of them cost
    // more than the rest of a step at thousands of nodes).
    let mut faults = BTreeSet::new();
    let sample: Vec<NodeFault> = entries
        .iter()
        .filter(|e| faults.insert(e.id.rsplit_once('/').map_or(e.id.as_str(), |(f, _)| f)))
        .cloned()
        .collect();
    let mut problems = faultline_api::Problems::default();
    faultline_api::validate_faults(&sample, &mut problems);
    problems
        .0
        .first()
        .and_then(|p| cannot(format!("{}: {}", p.path, p.message)))
}

/// Writes the entries `manager` holds on one node (an empty list removes
/// them; other experiments' entries are other managers' and stay).
/// Returns the object's generation after the write. The object is owned
/// by its Node, so it goes when the node does.
pub(crate) async fn write_node(
    ctx: &Context,
    manager: &str,
    node: &str,
    entries: &[NodeFault],
) -> Result<i64> {
    let api = Api::<NodeFaults>::all(ctx.client.clone());
    let owner = ctx
        .nodes
        .get(&kube::runtime::reflector::ObjectRef::new(node))
        .and_then(|n| n.metadata.uid.clone())
        .map(|uid| {
            serde_json::json!([{
                "apiVersion": "v1",
                "kind": "Node",
                "name": node,
                "uid": uid,
            }])
        });
    let mut metadata = serde_json::json!({"name": node});
    // Only while it holds entries: one that takes its last away then owns
    // nothing, and leaves the object's managers.
    if let Some(owner) = owner.filter(|_| !entries.is_empty()) {
        metadata["ownerReferences"] = owner;
    }
    let object = serde_json::json!({
        "apiVersion": "faultline.dev/v1alpha1",
        "kind": "NodeFaults",
        "metadata": metadata,
        "spec": NodeFaultsSpec { faults: entries.to_vec() },
    });
    let params = PatchParams::apply(manager).force();
    let written = api
        .patch(node, &params, &Patch::Apply(&object))
        .await
        .map_err(Error::Kube)?;
    ctx.metrics.nodefaults_writes.inc();
    Ok(written.metadata.generation.unwrap_or(0))
}

/// Lets go of everything `manager` holds on `node`'s object: its entries
/// and its part of the owner reference, so it leaves the object's managers.
pub(crate) async fn release_node(ctx: &Context, manager: &str, node: &str) -> Result<()> {
    let api = Api::<NodeFaults>::all(ctx.client.clone());
    let object = serde_json::json!({
        "apiVersion": "faultline.dev/v1alpha1",
        "kind": "NodeFaults",
        "metadata": {"name": node},
    });
    api.patch(
        node,
        &PatchParams::apply(manager).force(),
        &Patch::Apply(&object),
    )
    .await
    .map_err(Error::Kube)?;
    ctx.metrics.nodefaults_writes.inc();
    Ok(())
}

/// Writes at once at most: thousands of nodes at the start of a run.
const WRITES_AT_ONCE: usize = 16;

/// Marks the writes the cache has caught up with: an object missing from
/// it after that was deleted.
pub(crate) fn note_seen(
    written: &mut BTreeMap<String, Written>,
    cached: &BTreeMap<String, Arc<NodeFaults>>,
) {
    for (node, w) in written.iter_mut() {
        if cached
            .get(node)
            .is_some_and(|nf| nf.metadata.generation.unwrap_or(0) >= w.generation)
        {
            w.seen = true;
        }
    }
}

/// Whether a node holds `want` of this experiment now. What it holds is
/// the cached object when that has caught up with this controller's last
/// write there (so an edit or a deletion by someone else is repaired),
/// else that write.
pub(crate) fn holds(
    r: &ExperimentRef,
    want: &[NodeFault],
    cached: Option<&NodeFaults>,
    written: Option<&Written>,
    now: std::time::Instant,
) -> bool {
    let generation = |nf: &NodeFaults| nf.metadata.generation.unwrap_or(0);
    match (written, cached) {
        (Some(w), Some(nf)) if generation(nf) >= w.generation => want.iter().eq(ours(nf, r)),
        // Seen after the write, gone since: deleted (by hand), so nothing
        // of it is there.
        (Some(w), None) if w.seen || now.saturating_duration_since(w.at) >= CACHE_LAG => {
            want.is_empty()
        }
        // The cache has not caught up: what was written is there.
        (Some(w), _) => digest(want) == w.digest,
        (None, Some(nf)) => want.iter().eq(ours(nf, r)),
        (None, None) => want.is_empty(),
    }
}

/// Takes every entry of this experiment away, from every node that holds
/// one or may (a write the cache has not shown yet).
pub(crate) async fn remove_all(
    ctx: &Context,
    r: &ExperimentRef,
    written: &mut BTreeMap<String, Written>,
    now: Timestamp,
) -> Result<()> {
    let cached = in_store(ctx);
    note_seen(written, &cached);
    let instant = std::time::Instant::now();
    let writes: BTreeMap<String, Vec<NodeFault>> = cached
        .keys()
        .chain(written.keys())
        .filter(|node| {
            !holds(
                r,
                &[],
                cached.get(*node).map(|nf| &**nf),
                written.get(*node),
                instant,
            )
        })
        .map(|node| (node.clone(), Vec::new()))
        .collect();
    converge(ctx, r, &writes, written, now, None, None).await.1
}

/// Since when a node holds its entries after a write of `entries` whose
/// ids digest to `ids`: as before when it held the same ids (a renewal),
/// else from now (a new entry's agent gets its whole confirmTimeout).
pub(crate) fn holding_since(
    before: Option<&Written>,
    entries: &[NodeFault],
    ids: u64,
    now: Timestamp,
) -> Option<Timestamp> {
    if entries.is_empty() {
        return None;
    }
    Some(
        before
            .filter(|w| w.ids == ids)
            .and_then(|w| w.holding_since)
            .unwrap_or(now),
    )
}

/// A digest of entries' ids.
fn ids_digest(entries: &[NodeFault]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    for e in entries {
        e.id.hash(&mut h);
    }
    h.finish()
}

/// Writes each node's entries in `writes` (empty: none of this
/// experiment's). No write starts after `until` (a step stays short however
/// many nodes differ, so checks and aborts are not kept waiting); the
/// nodes not started are returned, with Ok when every write that started
/// succeeded.
pub(crate) async fn converge(
    ctx: &Context,
    r: &ExperimentRef,
    writes: &BTreeMap<String, Vec<NodeFault>>,
    written: &mut BTreeMap<String, Written>,
    now: Timestamp,
    until: Option<std::time::Instant>,
    inputs: Option<&BTreeMap<String, u64>>,
) -> (BTreeSet<String>, Result<()>) {
    let mut left: BTreeSet<String> = writes.keys().cloned().collect();
    let manager = r.field_manager();
    let results: Vec<(String, Result<i64>)> = futures::stream::iter(writes.keys().cloned())
        .enumerate()
        // The first few always start, so every step gets somewhere.
        .take_while(|(started, _)| {
            std::future::ready(
                *started < WRITES_AT_ONCE || until.is_none_or(|t| std::time::Instant::now() < t),
            )
        })
        .map(|(_, node)| {
            let want = writes.get(&node).map_or(&[][..], Vec::as_slice);
            let manager = &manager;
            async move {
                let result = write_node(ctx, manager, &node, want).await;
                (node, result)
            }
        })
        .buffer_unordered(WRITES_AT_ONCE)
        .collect()
        .await;
    let mut first_error = None;
    for (node, result) in results {
        left.remove(&node);
        match result {
            Ok(generation) => {
                let entries = writes.get(&node).map_or(&[][..], Vec::as_slice);
                let ids = ids_digest(entries);
                let holding_since = holding_since(written.get(&node), entries, ids, now);
                // Only for a write that succeeded, made from these.
                let made_from = inputs.and_then(|i| i.get(&node).copied());
                written.insert(
                    node,
                    Written {
                        digest: digest(entries),
                        generation,
                        seen: false,
                        at: std::time::Instant::now(),
                        holding_since,
                        ids,
                        inputs: made_from,
                    },
                );
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    (
        left,
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str) -> NodeFault {
        serde_json::from_value(serde_json::json!({
            "id": id,
            "target": {"pod": {"uid": "00000000-0000-4000-8000-000000000001"}},
            "expiresAt": "2030-01-01T00:00:00Z",
            "latency": {"delay": "100ms"},
        }))
        .expect("an entry")
    }

    #[test]
    fn a_renewal_keeps_the_agents_clock_and_a_new_entry_restarts_it() {
        let t = |s: i64| Timestamp::from_second(1_800_000_000 + s).expect("a time");
        let one = [entry("u/slow/a")];
        let two = [entry("u/slow/a"), entry("u/slow/b")];
        let first = holding_since(None, &one, ids_digest(&one), t(0));
        assert_eq!(first, Some(t(0)));
        let before = Written {
            digest: digest(&one),
            generation: 1,
            seen: true,
            at: std::time::Instant::now(),
            holding_since: first,
            ids: ids_digest(&one),
            inputs: None,
        };
        assert_eq!(
            holding_since(Some(&before), &one, ids_digest(&one), t(250)),
            Some(t(0)),
            "the same entries renewed"
        );
        assert_eq!(
            holding_since(Some(&before), &two, ids_digest(&two), t(250)),
            Some(t(250)),
            "an entry added"
        );
        assert_eq!(
            holding_since(Some(&before), &[], ids_digest(&[]), t(250)),
            None
        );
    }
}
