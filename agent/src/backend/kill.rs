//! Kill faults: a signal to every process of the target.

use faultline_api::{NodeTarget, Signal};
use rustix::process::{Pid, PidfdFlags, Signal as RSignal, pidfd_open, pidfd_send_signal};

use super::BackendError;
use crate::target::Resolver;

fn to_rustix(s: Signal) -> RSignal {
    match s {
        Signal::Hup => RSignal::HUP,
        Signal::Int => RSignal::INT,
        Signal::Quit => RSignal::QUIT,
        Signal::Abrt => RSignal::ABORT,
        Signal::Kill => RSignal::KILL,
        Signal::Usr1 => RSignal::USR1,
        Signal::Usr2 => RSignal::USR2,
        Signal::Term => RSignal::TERM,
        Signal::Cont => RSignal::CONT,
        Signal::Stop => RSignal::STOP,
    }
}

/// Signals every process of the target; returns how many got the signal,
/// or an error when the target cannot be read or a live process refuses it.
///
/// Through pidfds, so a PID that was reused is never hit: each listed
/// process is opened first, the target listed again, and only those still
/// in it are signalled through their pidfd. A process that exited in
/// between was listed again only if its number went to another process
/// of the target, and its pidfd then answers ESRCH: nobody else is hit.
/// A pod's sandbox (`pause`) process is left alone unless `sandbox` says
/// otherwise: signalling it has the kubelet recreate the whole pod.
pub(crate) fn signal_all(
    resolver: &Resolver,
    target: &NodeTarget,
    signal: Signal,
    sandbox: bool,
) -> Result<u64, BackendError> {
    let listed = resolver.processes(target)?;
    let mut opened = Vec::with_capacity(listed.len());
    for pid in listed {
        let Some(p) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
            continue;
        };
        if !sandbox
            && matches!(target, NodeTarget::Pod(_))
            && crate::target::is_pause(&resolver.proc_root, pid)
        {
            continue;
        }
        match pidfd_open(p, PidfdFlags::empty()) {
            Ok(fd) => opened.push((pid, fd)),
            // Exited before it was opened: it got what it was due.
            Err(rustix::io::Errno::SRCH) => {}
            Err(e) => {
                return Err(BackendError::Failed(format!(
                    "cannot open process {pid}: {e}"
                )));
            }
        }
    }
    let still: std::collections::BTreeSet<u32> = match resolver.processes(target) {
        Ok(p) => p.into_iter().collect(),
        // Every process gone since the first listing: nothing left to signal.
        Err(crate::target::TargetError::Gone(_)) => Default::default(),
        Err(e) => return Err(e.into()),
    };
    let sig = to_rustix(signal);
    let mut refused = Vec::new();
    let mut signalled = 0u64;
    for (pid, fd) in opened.iter().filter(|(pid, _)| still.contains(pid)) {
        match pidfd_send_signal(fd, sig) {
            Ok(()) => signalled += 1,
            // Exited meanwhile: it got what it was due.
            Err(rustix::io::Errno::SRCH) => {}
            Err(e) => refused.push(format!("{pid}: {e}")),
        }
    }
    if refused.is_empty() {
        Ok(signalled)
    } else {
        Err(BackendError::Failed(format!(
            "cannot send {signal} to {}",
            refused.join(", ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_match_the_api() {
        for s in [
            Signal::Hup,
            Signal::Int,
            Signal::Quit,
            Signal::Abrt,
            Signal::Kill,
            Signal::Usr1,
            Signal::Usr2,
            Signal::Term,
            Signal::Cont,
            Signal::Stop,
        ] {
            assert_eq!(to_rustix(s).as_raw(), s.number(), "{s}");
        }
    }
}
