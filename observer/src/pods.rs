//! The pod IPs of a cluster, kept by a watch, for attributing spans to
//! their sender's namespace (see `attribution`).

use std::{collections::HashMap, net::IpAddr, sync::Arc};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, ResourceExt,
    runtime::{WatchStreamExt as _, watcher},
};

use crate::attribution::PodIps;

/// The IPs a pod may send from and owns alone: none for a hostNetwork pod
/// (its IP is its node's, shared with every other such pod) or one that has
/// ended (its IP goes to the next pod).
fn owned_ips(pod: &Pod) -> Vec<IpAddr> {
    let host_network = pod
        .spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false);
    let status = pod.status.as_ref();
    let ended = status
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|p| p == "Succeeded" || p == "Failed");
    if host_network || ended || pod.metadata.deletion_timestamp.is_some() {
        return Vec::new();
    }
    let mut ips: Vec<IpAddr> = status
        .and_then(|s| s.pod_ips.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|ip| ip.ip.parse().ok())
        .collect();
    if let Some(ip) = status
        .and_then(|s| s.pod_ip.as_deref())
        .and_then(|ip| ip.parse().ok())
    {
        ips.push(ip);
    }
    ips.sort_unstable();
    ips.dedup();
    ips
}

/// Which pod (by uid) holds each IP, with its namespace: a late deletion of
/// a pod whose IP went to another must not take the new owner's away.
#[derive(Debug, Default)]
struct Owners(HashMap<IpAddr, (String, Arc<str>)>);

impl Owners {
    /// Records `pod`'s IPs, in `ips` too when given (a list is filled
    /// aside and swapped in whole).
    fn apply(&mut self, pod: &Pod, ips: Option<&PodIps>) {
        let uid = pod.uid().unwrap_or_default();
        let owned = owned_ips(pod);
        // IPs this pod held and holds no more.
        let gone: Vec<IpAddr> = self
            .0
            .iter()
            .filter(|(ip, (u, _))| *u == uid && !owned.contains(ip))
            .map(|(ip, _)| *ip)
            .collect();
        for ip in gone {
            self.0.remove(&ip);
            if let Some(ips) = ips {
                ips.remove(ip);
            }
        }
        let namespace: Arc<str> = Arc::from(pod.namespace().unwrap_or_default());
        for ip in owned {
            self.0.insert(ip, (uid.clone(), namespace.clone()));
            if let Some(ips) = ips {
                ips.insert(ip, &namespace);
            }
        }
    }

    fn delete(&mut self, pod: &Pod, ips: &PodIps) {
        let uid = pod.uid().unwrap_or_default();
        self.0.retain(|ip, (u, _)| {
            let keep = *u != uid;
            if !keep {
                ips.remove(*ip);
            }
            keep
        });
    }

    fn table(&self) -> HashMap<IpAddr, Arc<str>> {
        self.0
            .iter()
            .map(|(ip, (_, ns))| (*ip, ns.clone()))
            .collect()
    }
}

/// Follows every pod of the cluster into `ips` until the task is dropped.
/// While the API cannot be read the last table stays: a pod's IP keeps its
/// namespace until a list says otherwise.
pub async fn follow(api: Api<Pod>, ips: PodIps) {
    let mut owners = Owners::default();
    let mut listing: Option<Owners> = None;
    let mut events = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Init) => listing = Some(Owners::default()),
            Ok(watcher::Event::InitApply(pod)) => {
                if let Some(l) = listing.as_mut() {
                    l.apply(&pod, None);
                }
            }
            Ok(watcher::Event::InitDone) => {
                if let Some(l) = listing.take() {
                    owners = l;
                    ips.replace(owners.table());
                    tracing::info!(pods = ips.len(), "pod IPs listed for span attribution");
                }
            }
            Ok(watcher::Event::Apply(pod)) => owners.apply(&pod, Some(&ips)),
            Ok(watcher::Event::Delete(pod)) => owners.delete(&pod, &ips),
            Err(e) => tracing::warn!(error = %e, "cannot watch pods; keeping the last IPs"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Senders as _;

    fn pod(ns: &str, uid: &str, ip: &str, extra: serde_json::Value) -> Pod {
        let mut v = serde_json::json!({
            "metadata": {"name": uid, "namespace": ns, "uid": uid},
            "spec": {"containers": []},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
        });
        if let (Some(base), Some(more)) = (v.as_object_mut(), extra.as_object()) {
            for (k, m) in more {
                if let (Some(b), Some(m)) = (
                    base.get_mut(k).and_then(|b| b.as_object_mut()),
                    m.as_object(),
                ) {
                    b.extend(m.clone());
                }
            }
        }
        serde_json::from_value(v).expect("pod")
    }

    #[test]
    fn an_ip_belongs_to_its_current_pod_only() {
        let ips = PodIps::default();
        let mut owners = Owners::default();
        let ip: IpAddr = "10.0.0.7".parse().expect("ip");
        let old = pod("shop", "a", "10.0.0.7", serde_json::json!({}));
        owners.apply(&old, Some(&ips));
        assert_eq!(ips.namespace(ip).as_deref(), Some("shop"));
        // The IP goes to a pod of another namespace before the old one's
        // deletion arrives: the deletion does not take it away.
        owners.apply(
            &pod("evil", "b", "10.0.0.7", serde_json::json!({})),
            Some(&ips),
        );
        owners.delete(&old, &ips);
        assert_eq!(ips.namespace(ip).as_deref(), Some("evil"));
        // Ended pods and hostNetwork pods own no IP.
        owners.apply(
            &pod(
                "evil",
                "b",
                "10.0.0.7",
                serde_json::json!({"status": {"phase": "Succeeded"}}),
            ),
            Some(&ips),
        );
        assert_eq!(ips.namespace(ip), None);
        owners.apply(
            &pod(
                "kube-system",
                "c",
                "10.0.0.8",
                serde_json::json!({"spec": {"hostNetwork": true}}),
            ),
            Some(&ips),
        );
        assert!(ips.is_empty());
    }
}
