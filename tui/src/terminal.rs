//! Taking the terminal over and giving it back. Errors on the way back are
//! ignored, never printed: after a SIGHUP the terminal is gone, and a write
//! to it would fail (or panic, for `eprintln!`) while faults are being
//! removed.

use std::{
    io::{Stdout, stdout},
    sync::{
        Once,
        atomic::{AtomicBool, Ordering},
    },
};

use crossterm::{
    cursor::{Hide, Show},
    execute,
    terminal::{EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode},
};
use ratatui::{Terminal, backend::CrosstermBackend};

/// Whether the dashboard holds the terminal now (the panic hook restores
/// it only then).
static HELD: AtomicBool = AtomicBool::new(false);
static HOOK: Once = Once::new();

/// Raw mode and the alternate screen; restored by `leave` and, on a panic,
/// by a hook installed once per process.
pub fn enter() -> std::io::Result<Terminal<CrosstermBackend<Stdout>>> {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            leave();
            previous(info);
        }));
    });
    HELD.store(true, Ordering::SeqCst);
    let entered = enable_raw_mode()
        .and_then(|()| execute!(stdout(), EnterAlternateScreen, Hide))
        .and_then(|()| Terminal::new(CrosstermBackend::new(stdout())));
    if entered.is_err() {
        leave();
    }
    entered
}

/// Gives the terminal back, if the dashboard holds it; errors ignored.
pub fn leave() {
    if HELD.swap(false, Ordering::SeqCst) {
        let _ = execute!(stdout(), LeaveAlternateScreen, Show);
        let _ = disable_raw_mode();
    }
}
