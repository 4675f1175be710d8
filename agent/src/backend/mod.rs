//! Fault backends: the only code that changes the kernel, behind one small
//! trait so the agent's loop runs against a recording backend in tests.

pub(crate) mod kill;
pub(crate) mod netem;
pub(crate) mod netlink;
pub(crate) mod nfnl;
pub(crate) mod nft;
pub(crate) mod rtnl;
pub(crate) mod stress;

use std::sync::{Arc, Mutex};

use faultline_api::{FaultAction, Network, NodeFault, NodeTarget};

use crate::{
    netns::NetnsError,
    reconcile::Receipt,
    target::{Resolver, TargetError},
};

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum BackendError {
    /// The target is gone: nothing can be applied to it, and nothing of the
    /// fault is left to remove.
    #[error("target gone: {0}")]
    Gone(String),
    #[error("{0}")]
    Failed(String),
}

impl From<TargetError> for BackendError {
    fn from(e: TargetError) -> Self {
        match e {
            TargetError::Gone(m) => BackendError::Gone(m),
            other => BackendError::Failed(other.to_string()),
        }
    }
}

impl From<NetnsError> for BackendError {
    fn from(e: NetnsError) -> Self {
        match e {
            NetnsError::Gone { .. } => BackendError::Gone(crate::report(&e)),
            other => BackendError::Failed(crate::report(&other)),
        }
    }
}

/// Applies and removes faults. Both are idempotent: applying twice leaves
/// one copy, removing what is not there succeeds.
pub trait Backend: Send {
    fn apply(&mut self, fault: &NodeFault, receipt: &Receipt) -> Result<(), BackendError>;
    fn remove(&mut self, fault: &NodeFault, receipt: &Receipt) -> Result<(), BackendError>;
    /// Fires a repeating fault again (kill with `every`) or refreshes it
    /// (latency: interfaces created since); true when it changed something.
    fn repeat(&mut self, fault: &NodeFault, receipt: &Receipt) -> Result<bool, BackendError>;
    /// Lets go of what no fault needs any more (idle sockets); called on
    /// every turn of the loop.
    fn tidy(&mut self) {}
    /// Why an applied fault stopped acting before its end, when it did (a
    /// stress fault's workers killed by the target's OOM killer).
    fn ended(&mut self, _fault: &NodeFault) -> Option<String> {
        None
    }
    /// What the applied fault has done so far, as the kernel counts it:
    /// packets a partition dropped, packets a latency fault delayed,
    /// processes a kill signalled, CPU milliseconds stress workers used.
    /// None when nothing can be counted.
    fn effect(
        &mut self,
        _fault: &NodeFault,
        _receipt: &Receipt,
    ) -> Result<Option<u64>, BackendError> {
        Ok(None)
    }
}

/// The real kernel.
#[derive(Debug, Default)]
pub struct Kernel {
    pub resolver: Resolver,
    /// Netlink sockets of targets with applied partitions.
    pub partitions: nft::Partitions,
    /// Interfaces each applied latency fault was last seen to cover.
    pub latency_links: std::collections::HashMap<String, Vec<String>>,
    /// Processes each kill fault has signalled, by fault id.
    pub signalled: std::collections::HashMap<String, u64>,
    /// Workers of applied stress faults.
    pub stressors: stress::Stressors,
}

impl Kernel {
    /// The network namespace a fault on `target` is applied in. A pod in
    /// the node's own namespace (hostNetwork) is refused: a fault there
    /// would be a fault on the whole node.
    fn netns_to_apply(&self, target: &NodeTarget) -> Result<std::path::PathBuf, BackendError> {
        let ns = self.resolver.netns(target)?;
        if let NodeTarget::Pod(pod) = target {
            // Unreadable, the pod might be in it: refused (fail safe).
            let host = crate::netns::id_of(&self.resolver.host_netns).map_err(|e| {
                BackendError::Failed(format!(
                    "cannot tell the node's network namespace from pod {}'s: {} (see --host-netns)",
                    pod.uid,
                    crate::report(&e)
                ))
            })?;
            if crate::netns::id_of(&ns)? == host {
                return Err(BackendError::Failed(format!(
                    "pod {} is in the node's own network namespace (hostNetwork): refused, a fault there would cut the whole node",
                    pod.uid
                )));
            }
        }
        Ok(ns)
    }

    fn signal(
        &mut self,
        fault: &NodeFault,
        signal: faultline_api::Signal,
    ) -> Result<(), BackendError> {
        let sandbox = matches!(&fault.action, FaultAction::Kill(k) if k.sandbox);
        let n = kill::signal_all(&self.resolver, &fault.target, signal, sandbox)?;
        let total = self.signalled.entry(fault.id.clone()).or_default();
        *total = total.saturating_add(n);
        Ok(())
    }
}

/// Latency and network faults: one netem band each (a latency fault is a
/// network fault with a delay).
impl Kernel {
    fn apply_netem(
        &mut self,
        fault: &NodeFault,
        receipt: &Receipt,
        impairment: &Network,
    ) -> Result<(), BackendError> {
        let Receipt::Latency { band } = receipt else {
            return Err(BackendError::Failed(format!(
                "{} fault without a band in its journal record",
                fault.action.kind()
            )));
        };
        let ns = self.netns_to_apply(&fault.target)?;
        let devs = netem::apply(&ns, *band, impairment)?;
        self.latency_links.insert(fault.id.clone(), devs);
        Ok(())
    }

    fn refresh_netem(
        &mut self,
        fault: &NodeFault,
        receipt: &Receipt,
        impairment: &Network,
    ) -> Result<bool, BackendError> {
        let Receipt::Latency { band } = receipt else {
            return Ok(false);
        };
        let ns = self.resolver.netns(&fault.target)?;
        // Applied by an earlier agent: the first refresh looks at every interface.
        let known = self
            .latency_links
            .get(&fault.id)
            .map_or(&[][..], Vec::as_slice);
        let (devs, changed) = netem::refresh(&ns, *band, impairment, known)?;
        if let Some(devs) = devs {
            self.latency_links.insert(fault.id.clone(), devs);
        }
        Ok(changed)
    }
}

impl Backend for Kernel {
    fn apply(&mut self, fault: &NodeFault, receipt: &Receipt) -> Result<(), BackendError> {
        match &fault.action {
            FaultAction::Partition(p) => {
                let ns = self.netns_to_apply(&fault.target)?;
                self.partitions.apply(&ns, &fault.id, p)
            }
            FaultAction::Kill(k) => self.signal(fault, k.signal),
            FaultAction::Latency(l) => self.apply_netem(fault, receipt, &Network::from(l)),
            FaultAction::Network(n) => self.apply_netem(fault, receipt, n),
            FaultAction::Stress(st) => self.stressors.start(&self.resolver, fault, st),
        }
    }

    fn remove(&mut self, fault: &NodeFault, receipt: &Receipt) -> Result<(), BackendError> {
        match &fault.action {
            FaultAction::Partition(_) => match self.resolver.netns(&fault.target) {
                Ok(ns) => self.partitions.remove(&ns, &fault.id),
                Err(e) => {
                    let e = BackendError::from(e);
                    if matches!(e, BackendError::Gone(_)) {
                        // Nothing left to remove; the socket must not keep
                        // the dead namespace alive.
                        self.partitions.forget(&fault.id);
                    }
                    Err(e)
                }
            },
            // A signal cannot be taken back; stopping the repeats is the
            // removal, and a stopped process is let go on again.
            FaultAction::Kill(k) => {
                self.signalled.remove(&fault.id);
                if k.signal == faultline_api::Signal::Stop {
                    match kill::signal_all(
                        &self.resolver,
                        &fault.target,
                        faultline_api::Signal::Cont,
                        k.sandbox,
                    ) {
                        Ok(n) => {
                            tracing::info!(fault = %fault.id, "{}: SIGCONT to {n} stopped process(es)", fault.id)
                        }
                        Err(e) => return Err(e),
                    }
                }
                Ok(())
            }
            FaultAction::Latency(_) | FaultAction::Network(_) => {
                let Receipt::Latency { band } = receipt else {
                    // Journaled without a band means nothing was ever applied.
                    return Ok(());
                };
                self.latency_links.remove(&fault.id);
                let ns = self.resolver.netns(&fault.target)?;
                netem::remove(&ns, *band)
            }
            FaultAction::Stress(_) => self.stressors.stop(&self.resolver, fault),
        }
    }

    fn repeat(&mut self, fault: &NodeFault, receipt: &Receipt) -> Result<bool, BackendError> {
        match &fault.action {
            FaultAction::Kill(k) => self.signal(fault, k.signal).map(|()| true),
            FaultAction::Latency(l) => self.refresh_netem(fault, receipt, &Network::from(l)),
            FaultAction::Network(n) => self.refresh_netem(fault, receipt, n),
            FaultAction::Stress(st) => self.stressors.check(&self.resolver, fault, st),
            FaultAction::Partition(_) => Ok(false),
        }
    }

    fn ended(&mut self, fault: &NodeFault) -> Option<String> {
        self.stressors.ended(&fault.id)
    }

    fn tidy(&mut self) {
        self.partitions.prune();
    }

    fn effect(
        &mut self,
        fault: &NodeFault,
        receipt: &Receipt,
    ) -> Result<Option<u64>, BackendError> {
        match (&fault.action, receipt) {
            (FaultAction::Partition(_), _) => {
                let ns = self.resolver.netns(&fault.target)?;
                self.partitions.dropped(&ns, &fault.id).map(Some)
            }
            (FaultAction::Latency(_) | FaultAction::Network(_), Receipt::Latency { band }) => {
                let ns = self.resolver.netns(&fault.target)?;
                netem::delayed(&ns, *band).map(Some)
            }
            (FaultAction::Latency(_) | FaultAction::Network(_), Receipt::None) => Ok(None),
            (FaultAction::Kill(_), _) => {
                Ok(Some(self.signalled.get(&fault.id).copied().unwrap_or(0)))
            }
            (FaultAction::Stress(_), _) => Ok(self.stressors.cpu_ms(&fault.id)),
        }
    }
}

/// One call a [`Recording`] backend saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Apply(String),
    Remove(String),
    Repeat(String),
}

/// Records calls and answers from a script of failures; for unit tests.
#[derive(Debug, Clone, Default)]
pub struct Recording {
    pub calls: Arc<Mutex<Vec<Call>>>,
    /// Calls that fail, with the error they return.
    pub failures: Arc<Mutex<Vec<(Call, BackendError)>>>,
    /// What `effect` answers, by fault id (None for ids not in it).
    pub effects: Arc<Mutex<std::collections::HashMap<String, u64>>>,
}

impl Recording {
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }

    pub fn fail(&self, call: Call, err: BackendError) {
        if let Ok(mut f) = self.failures.lock() {
            f.push((call, err));
        }
    }

    fn record(&self, call: Call) -> Result<(), BackendError> {
        if let Ok(mut c) = self.calls.lock() {
            c.push(call.clone());
        }
        let failures = self.failures.lock().map(|f| f.clone()).unwrap_or_default();
        match failures.into_iter().find(|(c, _)| *c == call) {
            Some((_, e)) => Err(e),
            None => Ok(()),
        }
    }
}

impl Backend for Recording {
    fn apply(&mut self, fault: &NodeFault, _: &Receipt) -> Result<(), BackendError> {
        self.record(Call::Apply(fault.id.clone()))
    }
    fn remove(&mut self, fault: &NodeFault, _: &Receipt) -> Result<(), BackendError> {
        self.record(Call::Remove(fault.id.clone()))
    }
    fn repeat(&mut self, fault: &NodeFault, _: &Receipt) -> Result<bool, BackendError> {
        self.record(Call::Repeat(fault.id.clone())).map(|()| true)
    }
    fn effect(&mut self, fault: &NodeFault, _: &Receipt) -> Result<Option<u64>, BackendError> {
        Ok(self
            .effects
            .lock()
            .ok()
            .and_then(|e| e.get(&fault.id).copied()))
    }
}
