//! `faultline dashboard`: the observer's services, breakers and edges, and
//! the running experiment, live in the terminal — for a local run or a
//! cluster's observer.

mod app;
mod event_loop;
pub mod model;
mod observer;
mod terminal;
mod view;

use std::{future::Future, pin::Pin, sync::Arc};

use tokio::sync::watch;

pub use app::{Action, App, Effect, RunFeed};
pub use event_loop::drive;
pub use observer::{base_url, follow as follow_observer};
pub use view::{MIN_HEIGHT, MIN_WIDTH, draw};

/// Stops the running experiment: what to tell the user, or why it failed.
pub trait Abort: Send + Sync {
    fn abort(&self) -> Pin<Box<dyn Future<Output = Result<String, String>> + Send + '_>>;
}

/// What the dashboard shows and can do.
#[derive(Default)]
pub struct Sources {
    /// The observer's address (`http://host:port`); without it, the one
    /// the run names, once it does.
    pub observer: Option<String>,
    /// The run, as it goes.
    pub run: Option<watch::Receiver<RunFeed>>,
    /// How to abort the run; None: the dashboard cannot.
    pub abort: Option<Arc<dyn Abort>>,
    /// Set to true to close the dashboard (a signal, the run's owner).
    pub close: Option<watch::Receiver<bool>>,
    /// Ctrl-C aborts at once, as it would without the dashboard: for the
    /// run this process drives. A viewer of someone else's run quits
    /// instead.
    pub ctrl_c_aborts: bool,
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sources")
            .field("observer", &self.observer)
            .field("run", &self.run.is_some())
            .field("abort", &self.abort.is_some())
            .field("ctrl_c_aborts", &self.ctrl_c_aborts)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot start the dashboard's runtime")]
    Runtime(#[source] std::io::Error),
    #[error("cannot use the terminal")]
    Terminal(#[source] std::io::Error),
}

/// Runs the dashboard on the process's terminal until the user quits or
/// `sources.close` is set; blocks, so call it from a thread of its own —
/// then a terminal that blocks (a paused tmux pane) holds up only the
/// dashboard. The terminal is restored on every way out, panics included.
pub fn run(sources: Sources) -> Result<(), Error> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Error::Runtime)?;
    let mut terminal = terminal::enter().map_err(Error::Terminal)?;
    let result = rt.block_on(async {
        drive(&mut terminal, sources, crossterm::event::EventStream::new()).await
    });
    terminal::leave();
    // Its drop would show the cursor again and, when the terminal is gone
    // (SIGHUP), report that with `eprintln!`, which panics on a dead
    // stderr; `leave` has shown it already.
    std::mem::forget(terminal);
    // Without waiting for what may still block (a DNS lookup of an
    // unresolvable --observer): the dashboard is closed.
    rt.shutdown_background();
    result.map_err(Error::Terminal)
}
