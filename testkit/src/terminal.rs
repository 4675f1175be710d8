//! A real terminal for tests: a detached tmux session whose screen is read
//! with `capture-pane` and typed into with `send-keys`; and the processes
//! a test started, found by a mark in their environment.

use std::{
    process::Command,
    time::{Duration, Instant},
};

/// Whether tmux can be used; with `FAULTLINE_REQUIRE_PEERS` set (as
/// scripts/test.sh does, after installing it) a missing tmux panics
/// instead, so no test passes by skipping.
pub fn tmux_available() -> bool {
    let found = Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found && std::env::var_os("FAULTLINE_REQUIRE_PEERS").is_some() {
        panic!("tmux is required (scripts/test.sh installs it)");
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

/// Pids of live processes with `FAULTLINE_TEST_MARK=mark` in their
/// environment (children inherit it, so a test finds exactly its own).
pub fn marked_processes(mark: &str) -> Vec<u32> {
    let needle = format!("FAULTLINE_TEST_MARK={mark}");
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let environ = std::fs::read(e.path().join("environ")).ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            // A zombie has ended; only its parent's wait is missing.
            let zombie = stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
            (!zombie && environ.split(|b| *b == 0).any(|v| v == needle.as_bytes())).then_some(pid)
        })
        .collect()
}
