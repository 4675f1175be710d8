//! Kill faults: a signal to every process of the target.

use faultline_api::{NodeTarget, Signal};
use rustix::process::{Pid, Signal as RSignal, kill_process};

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
pub(crate) fn signal_all(
    resolver: &Resolver,
    target: &NodeTarget,
    signal: Signal,
) -> Result<u64, BackendError> {
    let pids = resolver.processes(target)?;
    let sig = to_rustix(signal);
    let mut refused = Vec::new();
    let mut signalled = 0u64;
    for pid in pids {
        let Some(p) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
            continue;
        };
        match kill_process(p, sig) {
            Ok(()) => signalled += 1,
            // Exited between listing and signalling: it got what it was due.
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
