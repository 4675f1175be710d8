//! `faultline validate` and `faultline crd` as a user runs them.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn faultline(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_faultline"))
        .args(args)
        .current_dir(repo())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("faultline runs");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input)
            .expect("write");
    }
    drop(child.stdin.take());
    child.wait_with_output().expect("faultline exits")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn write(dir: &Path, name: &str, body: &[u8]) -> PathBuf {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("mkdir");
    }
    std::fs::write(&path, body).expect("write");
    path
}

const VALID: &str = include_str!("../../experiments/kill-one-replica.yaml");

#[test]
fn the_experiment_library_is_valid() {
    let out = faultline(&["validate", "experiments/"], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("Experiment shop/payments-slowdown is valid"),
        "{stdout}"
    );
    assert!(stdout.contains("16 documents valid"), "{stdout}");
}

#[test]
fn problems_are_located_and_exit_2() {
    let dir = tempfile::tempdir().expect("tmp");
    let bad = VALID
        .replace("every: 30s", "every: 5 minutes")
        .replace("mode: one", "mode: uno");
    let file = write(dir.path(), "shop.yaml", bad.as_bytes());
    let out = faultline(&["validate", file.to_str().expect("utf8")], None);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    let f = file.display();
    assert!(
        stderr.contains(&format!("{f}:15:13: spec.targets.one-payments-pod.mode: \"uno\" is not a selection mode; use one of: all, one, fixed, percent")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{f}:19:38: spec.faults[0].kill.every: \"5 minutes\" is not a duration (use 300ms, 30s, 2m, 1h)")),
        "{stderr}"
    );
    assert!(
        stderr.contains("2 problems in 1 input; nothing was applied"),
        "{stderr}"
    );
    assert!(text(&out.stdout).is_empty());
}

#[test]
fn stdin_multi_document_and_several_paths() {
    let stream = format!("{VALID}---\n{VALID}");
    let out = faultline(&["validate", "-"], Some(stream.as_bytes()));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("2 documents valid"));

    let bad = format!("{VALID}---\nkind: Experiment\n");
    let out = faultline(
        &["validate", "-", "experiments/latency-breaker.yaml"],
        Some(bad.as_bytes()),
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("<stdin>:26:1: apiVersion: is required"),
        "{stderr}"
    );
    // The valid inputs are still reported, so a user sees what passed.
    assert!(text(&out.stdout).contains(
        "experiments/latency-breaker.yaml:5: Experiment shop/payments-latency-breaker is valid"
    ));
}

#[test]
fn directories_are_searched_recursively() {
    let dir = tempfile::tempdir().expect("tmp");
    write(dir.path(), "a.yaml", VALID.as_bytes());
    write(
        dir.path(),
        "nested/deeper/b.yml",
        VALID.replace("kill-one-payments-replica", "b").as_bytes(),
    );
    write(dir.path(), "nested/notes.txt", b"not yaml, not read");
    write(dir.path(), ".hidden/c.yaml", b"not: valid");
    write(dir.path(), "nested/empty/.keep", b"");
    let out = faultline(&["validate", dir.path().to_str().expect("utf8")], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("2 documents valid"),
        "{}",
        text(&out.stdout)
    );

    write(dir.path(), "nested/broken.yaml", b"apiVersion: [\n");
    let out = faultline(&["validate", dir.path().to_str().expect("utf8")], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("broken.yaml:1:13: YAML syntax error: unclosed bracket"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn unreadable_empty_and_binary_inputs() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = faultline(&["validate", "does/not/exist.yaml"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("does/not/exist.yaml: cannot read"),
        "{}",
        text(&out.stderr)
    );

    let empty_dir = dir.path().join("empty");
    std::fs::create_dir(&empty_dir).expect("mkdir");
    let out = faultline(&["validate", empty_dir.to_str().expect("utf8")], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("holds no .yaml or .yml files"));

    let empty = write(dir.path(), "empty.yaml", b"");
    let out = faultline(&["validate", empty.to_str().expect("utf8")], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("empty.yaml:1:1: the input is empty"));

    let binary = write(dir.path(), "bin.yaml", b"kind: \xff\xfe\x00");
    let out = faultline(&["validate", binary.to_str().expect("utf8")], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("bin.yaml:1:7: the input is not UTF-8"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn crd_prints_the_checked_in_definitions() {
    let out = faultline(&["crd"], None);
    assert_eq!(out.status.code(), Some(0));
    let printed = text(&out.stdout);
    let dir = repo().join("charts/faultline/crds");
    let expected = [
        std::fs::read_to_string(dir.join("experiments.faultline.dev.yaml")).expect("crd"),
        std::fs::read_to_string(dir.join("nodefaults.faultline.dev.yaml")).expect("crd"),
    ]
    .join("---\n");
    assert_eq!(printed, expected);
}

#[test]
fn endless_inputs_end_with_the_size_error() {
    let out = faultline(&["validate", "/dev/zero"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains(
            "/dev/zero:1:1: the input is larger than 8388608 bytes, the most Faultline reads"
        ),
        "{}",
        text(&out.stderr)
    );

    // `yes | faultline validate -`: the writer never stops on its own.
    let mut child = Command::new(env!("CARGO_BIN_EXE_faultline"))
        .args(["validate", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("faultline runs");
    let mut stdin = child.stdin.take().expect("stdin");
    let writer = std::thread::spawn(move || {
        let chunk = b"y\n".repeat(32 * 1024);
        // Ends when faultline closes the pipe (Rust ignores SIGPIPE, so this is an error).
        while stdin.write_all(&chunk).is_ok() {}
    });
    let out = child.wait_with_output().expect("faultline exits");
    writer.join().expect("writer");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("<stdin>:1:1: the input is larger than 8388608 bytes"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn stdin_given_twice_is_refused() {
    let out = faultline(&["validate", "-", "-"], Some(VALID.as_bytes()));
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("<stdin>: stdin given twice; pass - once"),
        "{stderr}"
    );
    // The first `-` is still read and checked.
    assert!(
        text(&out.stdout).contains("<stdin>:5: Experiment shop/kill-one-payments-replica is valid"),
        "{}",
        text(&out.stdout)
    );
}

#[cfg(unix)]
#[test]
fn symlinked_directories_are_not_followed_while_walking() {
    use std::os::unix::fs::symlink;

    let dir = tempfile::tempdir().expect("tmp");
    let root = dir.path().join("root");
    write(&root, "a.yaml", VALID.as_bytes());
    // A loop back to the walked directory, and a link into another tree.
    symlink(&root, root.join("loop")).expect("symlink");
    let other = dir.path().join("other");
    write(&other, "b.yaml", b"not: valid");
    symlink(&other, root.join("other")).expect("symlink");
    symlink(&other, root.join("dir-link.yaml")).expect("symlink");
    // A symlink to a file is still read.
    let c = write(
        dir.path(),
        "c.yaml",
        VALID.replace("kill-one-payments-replica", "c").as_bytes(),
    );
    symlink(&c, root.join("c.yaml")).expect("symlink");

    let out = faultline(&["validate", root.to_str().expect("utf8")], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("2 documents valid"),
        "{}",
        text(&out.stdout)
    );

    // A symlinked directory named on the command line is followed.
    let named = dir.path().join("named");
    symlink(&root, &named).expect("symlink");
    let out = faultline(&["validate", named.to_str().expect("utf8")], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("2 documents valid"));
}
