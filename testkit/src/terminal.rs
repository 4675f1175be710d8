//! A real terminal for tests: a detached tmux session whose screen is read
//! with `capture-pane` and typed into with `send-keys`.

use std::{
    process::Command,
    time::{Duration, Instant},
};

/// Whether tmux can be used; without it the test skips, or fails when
/// peers are required (scripts/test.sh installs it).
pub fn tmux_available() -> bool {
    let found = Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        crate::skip_without_peer("tmux is not installed");
    }
    found
}

/// One tmux server of its own (a private socket) with one session; killed
/// on drop.
#[derive(Debug)]
pub struct Tmux {
    socket: String,
}

impl Tmux {
    /// Runs `command` through `sh -c` in a `width`×`height` terminal. The
    /// pane stays after the command ends, so its last screen can be read
    /// (until the `Tmux` is dropped).
    pub fn start(width: u16, height: u16, command: &str) -> Tmux {
        // One server per session: tests running at once never share one.
        static SESSIONS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = SESSIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let socket = format!("faultline-test-{}-{n}", std::process::id());
        let tmux = Tmux { socket };
        tmux.run(&[
            "-f",
            "/dev/null",
            "new-session",
            "-d",
            "-s",
            "main",
            "-x",
            &width.to_string(),
            "-y",
            &height.to_string(),
            // The shell says how the command ended and keeps the pane open,
            // so the last screen stays readable: a dead pane may lose its
            // last output, and tmux may not record the status of a command
            // whose pty closed before it was reaped.
            &format!("{command}; echo \"{EXITED}$?]\"; exec sleep 3600"),
        ]);
        tmux
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("tmux runs");
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The screen as text.
    pub fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "main"])
    }

    /// Types `keys` (tmux key names: `q`, `Enter`, `C-c`).
    pub fn send(&self, keys: &str) {
        self.run(&["send-keys", "-t", "main", keys]);
    }

    /// Reads the screen every 100 ms until `want` holds; the screen then.
    /// Panics with the last screen when `within` passes first.
    pub fn wait_for(
        &self,
        within: Duration,
        what: &str,
        mut want: impl FnMut(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + within;
        loop {
            let screen = self.screen();
            if want(&screen) {
                return screen;
            }
            if Instant::now() > deadline {
                panic!("no {what} within {within:?}; the screen:\n{screen}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The exit status of the pane's command once it has ended; None if
    /// it is still running after `within`.
    pub fn exit_status(&self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        loop {
            let screen = self.screen();
            if let Some(at) = screen.rfind(EXITED) {
                let rest = &screen[at + EXITED.len()..];
                return rest.split(']').next().and_then(|c| c.parse().ok());
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// What the shell prints when the command ends, before its status.
const EXITED: &str = "[exited with status ";

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .arg("kill-server")
            .output();
    }
}
