//! Game days on local processes, end to end: `faultline demo` passes, the
//! same experiment without checkout's breaker fails, Ctrl-C recovers and
//! leaves no process behind, invalid input starts nothing.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

/// `faultline` with a mark in its environment, which the services it starts
/// inherit, so a test finds exactly its own processes.
fn faultline(mark: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_faultline"));
    c.current_dir(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".."))
        .env("FAULTLINE_TEST_MARK", mark);
    c
}

/// Processes carrying `mark` still alive.
fn left_behind(mark: &str) -> usize {
    let needle = format!("FAULTLINE_TEST_MARK={mark}");
    std::fs::read_dir("/proc")
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter(|e| {
                    std::fs::read(e.path().join("environ"))
                        .map(|c| c.split(|b| *b == 0).any(|v| v == needle.as_bytes()))
                        .unwrap_or(false)
                })
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn the_demo_passes_and_without_a_breaker_fails() {
    let out = faultline("pass-fail")
        .args(["demo", "--duration", "30s"])
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("checkout opens its payments breaker") && stdout.contains("PASSED"),
        "{stdout}"
    );
    assert!(
        stdout.contains("Injecting") && stdout.contains("Completed"),
        "{stdout}"
    );

    let out = faultline("pass-fail")
        .args(["demo", "--duration", "30s", "--no-breaker"])
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let failing = stdout
        .lines()
        .find(|l| l.starts_with("checkout opens its payments breaker"))
        .unwrap_or("");
    assert!(failing.contains("FAILED"), "{stdout}");
    assert!(stdout.contains("FAILED: the hypothesis did not hold"));
    assert_eq!(left_behind("pass-fail"), 0, "no process left behind");
}

#[test]
fn ctrl_c_recovers_and_leaves_nothing_behind() {
    let child = faultline("ctrl-c")
        .args(["demo", "--duration", "60s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("runs");
    // Into the fault window (it starts at 10 s).
    std::thread::sleep(Duration::from_secs(13));
    let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("pid");
    rustix::process::kill_process(pid, rustix::process::Signal::INT).expect("SIGINT");
    let started = Instant::now();
    let out = child.wait_with_output().expect("exits");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("ABORTED: every fault was removed"),
        "{stdout}"
    );
    assert!(stdout.contains("interrupted by the user"), "{stdout}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "recovered promptly"
    );
    assert_eq!(left_behind("ctrl-c"), 0, "no process left behind");
}

#[test]
fn invalid_input_starts_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "apiVersion: faultline.dev/v1alpha1\nkind: Experiment\nmetadata: {name: x}\nspec: {duration: 5 minutes}\n").expect("write");
    let topo = dir.path().join("topology.yaml");
    std::fs::write(
        &topo,
        "apiVersion: faultline.dev/v1alpha1\nkind: Topology\nmetadata: {name: t}\nspec:\n  services:\n    - {name: a, port: 7999, command: [sleep, \"60\"]}\n",
    )
    .expect("write");
    let out = faultline("invalid")
        .arg("run")
        .arg(&bad)
        .arg("--local")
        .arg(&topo)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("spec.duration: \"5 minutes\" is not a duration"),
        "{stderr}"
    );
    assert!(stderr.contains("nothing was started"), "{stderr}");
}
