//! Whose spans these are: on a cluster, an export's sender is a pod, and
//! its namespace (known from its IP) decides where its spans count. A span
//! sent from namespace `evil` naming itself `checkout` is recorded as
//! `evil/checkout`, never as `shop/checkout`; one that claims another
//! namespace (`k8s.namespace.name`) than its sender's is dropped as forged.
//! Relays (collectors in trusted namespaces) pass other pods' spans on, so
//! their claims are taken as said.

use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
    sync::{Arc, RwLock},
};

/// Who holds an IP address now.
pub trait Senders: Send + Sync + std::fmt::Debug {
    /// The namespace of the pod with this IP, if one is known.
    fn namespace(&self, ip: IpAddr) -> Option<Arc<str>>;
}

/// A table of pod IPs kept by a watch (see `pods`), or filled by a test.
#[derive(Debug, Clone, Default)]
pub struct PodIps(Arc<RwLock<HashMap<IpAddr, Arc<str>>>>);

impl PodIps {
    /// Replaces the whole table (after a list).
    pub fn replace(&self, table: HashMap<IpAddr, Arc<str>>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = table;
    }

    pub fn insert(&self, ip: IpAddr, namespace: &str) {
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(ip, Arc::from(namespace));
    }

    pub fn remove(&self, ip: IpAddr) {
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&ip);
    }

    pub fn len(&self) -> usize {
        self.0.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Senders for PodIps {
    fn namespace(&self, ip: IpAddr) -> Option<Arc<str>> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&ip)
            .cloned()
    }
}

/// How spans are attributed; off (names as sent) when none is given.
#[derive(Debug, Clone)]
pub struct Attribution {
    pub senders: Arc<dyn Senders>,
    /// Namespaces whose pods relay others' spans: their
    /// `k8s.namespace.name` claims are believed.
    pub relays: BTreeSet<String>,
}

/// Where one resource's spans are recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Key {
    /// Under this service name (`namespace/service` when attributed).
    As(String),
    /// Dropped: the sender claimed what it is not.
    Forged,
}

impl Attribution {
    /// The key of a resource named `service`, claiming `claimed` as its
    /// namespace, sent from `from`.
    pub(crate) fn key(&self, service: &str, claimed: Option<&str>, from: Option<IpAddr>) -> Key {
        // A slash is how attributed names are made: nobody sends one.
        if service.contains('/') || claimed.is_some_and(|c| c.is_empty() || c.contains('/')) {
            return Key::Forged;
        }
        let Some(sender) = from.and_then(|ip| self.senders.namespace(ip)) else {
            // Not a pod we know (a node, a pod not yet listed): its spans
            // count under the bare name, which no namespaced query reads.
            return Key::As(service.to_owned());
        };
        let namespace = match claimed {
            Some(c) if self.relays.contains(&*sender) => c,
            Some(c) if c != &*sender => return Key::Forged,
            _ => &sender,
        };
        Key::As(format!("{namespace}/{service}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attribution() -> Attribution {
        let ips = PodIps::default();
        ips.insert([10, 0, 0, 1].into(), "shop");
        ips.insert([10, 0, 0, 2].into(), "evil");
        ips.insert([10, 0, 0, 3].into(), "otel");
        Attribution {
            senders: Arc::new(ips),
            relays: ["otel".to_owned()].into(),
        }
    }

    #[test]
    fn a_sender_counts_in_its_own_namespace_only() {
        let a = attribution();
        let shop = Some([10, 0, 0, 1].into());
        let evil = Some([10, 0, 0, 2].into());
        assert_eq!(
            a.key("checkout", None, shop),
            Key::As("shop/checkout".into())
        );
        assert_eq!(
            a.key("checkout", Some("shop"), shop),
            Key::As("shop/checkout".into())
        );
        assert_eq!(
            a.key("checkout", None, evil),
            Key::As("evil/checkout".into()),
            "the same name from another namespace is another service"
        );
        assert_eq!(a.key("checkout", Some("shop"), evil), Key::Forged);
        assert_eq!(a.key("shop/checkout", None, evil), Key::Forged);
    }

    #[test]
    fn relays_are_believed_and_strangers_stay_bare() {
        let a = attribution();
        let relay = Some([10, 0, 0, 3].into());
        assert_eq!(
            a.key("checkout", Some("shop"), relay),
            Key::As("shop/checkout".into())
        );
        assert_eq!(
            a.key("collector", None, relay),
            Key::As("otel/collector".into())
        );
        assert_eq!(a.key("checkout", Some("a/b"), relay), Key::Forged);
        let node = Some([192, 168, 1, 1].into());
        assert_eq!(
            a.key("checkout", Some("shop"), node),
            Key::As("checkout".into())
        );
        assert_eq!(a.key("checkout", None, None), Key::As("checkout".into()));
    }
}
