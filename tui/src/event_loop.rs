//! The dashboard's loop: actions from the keyboard, the observer, the run
//! and a clock go to the app; the app's effects are carried out off the
//! loop; a frame is drawn once the queue is empty, so a burst of updates
//! costs one frame.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use crossterm::event::Event;
use futures::{Stream, StreamExt};
use ratatui::{Terminal, backend::Backend};
use tokio::sync::{mpsc, watch};

use crate::{
    Abort, Sources,
    app::{Action, App, Effect},
    observer, view,
};

/// How often time-based text (time left, seconds in a state) is redrawn
/// when nothing else happens.
const TICK: Duration = Duration::from_secs(1);

/// Runs the dashboard on `terminal` until the user quits or it is closed
/// from outside; `keys` are the terminal's input events.
pub async fn drive<B, K>(
    terminal: &mut Terminal<B>,
    sources: Sources,
    keys: K,
) -> Result<(), B::Error>
where
    B: Backend,
    K: Stream<Item = std::io::Result<Event>> + Unpin + Send + 'static,
{
    let Sources {
        observer,
        run,
        abort,
        close,
        ctrl_c_aborts,
    } = sources;
    let mut app =
        App::new(observer, abort.is_some(), Instant::now()).with_ctrl_c_abort(ctrl_c_aborts);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(forward_keys(keys, tx.clone()));
    tasks.spawn(ticks(tx.clone()));
    if let Some(run) = run {
        tasks.spawn(forward_run(run, tx.clone()));
    }
    if let Some(close) = close {
        tasks.spawn(forward_close(close, tx.clone()));
    }
    let mut effects = app.start();
    loop {
        for effect in effects.drain(..) {
            carry_out(effect, &mut tasks, &tx, abort.as_ref());
        }
        if app.should_quit() {
            break;
        }
        terminal.draw(|frame| view::draw(frame, &mut app))?;
        let Some(action) = rx.recv().await else {
            break;
        };
        effects = app.update(action, Instant::now());
        // Take what else is queued before drawing again.
        while let Ok(action) = rx.try_recv() {
            effects.extend(app.update(action, Instant::now()));
        }
    }
    tasks.abort_all();
    Ok(())
}

fn carry_out(
    effect: Effect,
    tasks: &mut tokio::task::JoinSet<()>,
    tx: &mpsc::UnboundedSender<Action>,
    abort: Option<&Arc<dyn Abort>>,
) {
    match effect {
        Effect::Follow(url) => {
            tasks.spawn(observer::follow(url, tx.clone()));
        }
        Effect::Abort => {
            let tx = tx.clone();
            match abort.cloned() {
                Some(abort) => {
                    tasks.spawn(async move {
                        let result = abort.abort().await;
                        let _ = tx.send(Action::AbortDone(result));
                    });
                }
                None => {
                    let _ = tx.send(Action::AbortDone(Err("nothing to abort with".into())));
                }
            }
        }
    }
}

async fn forward_keys<K>(mut keys: K, tx: mpsc::UnboundedSender<Action>)
where
    K: Stream<Item = std::io::Result<Event>> + Unpin,
{
    while let Some(event) = keys.next().await {
        let action = match event {
            Ok(Event::Key(key)) => Action::Key(key),
            Ok(Event::Resize(..)) => Action::Resize,
            Ok(_) => continue,
            Err(e) => {
                // The terminal is gone (closed window): nothing can be read
                // or shown any more.
                tracing::warn!(error = %e, "cannot read the terminal; closing the dashboard");
                let _ = tx.send(Action::Close);
                return;
            }
        };
        if tx.send(action).is_err() {
            return;
        }
    }
}

async fn ticks(tx: mpsc::UnboundedSender<Action>) {
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    interval.tick().await;
    loop {
        interval.tick().await;
        if tx.send(Action::Tick).is_err() {
            return;
        }
    }
}

async fn forward_run(mut run: watch::Receiver<crate::RunFeed>, tx: mpsc::UnboundedSender<Action>) {
    loop {
        let feed = run.borrow_and_update().clone();
        if tx.send(Action::Run(feed)).is_err() {
            return;
        }
        if run.changed().await.is_err() {
            // The final state may have come with the close.
            let feed = run.borrow().clone();
            let _ = tx.send(Action::Run(feed));
            let _ = tx.send(Action::RunClosed);
            return;
        }
    }
}

async fn forward_close(mut close: watch::Receiver<bool>, tx: mpsc::UnboundedSender<Action>) {
    while !*close.borrow_and_update() {
        if close.changed().await.is_err() {
            return;
        }
    }
    let _ = tx.send(Action::Close);
}
