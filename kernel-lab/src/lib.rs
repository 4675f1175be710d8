//! The kernel lab's host-side support for its test and benchmark: finding
//! the binaries it boots, which live in other packages (the node agent,
//! and the `faultline` CLI the bulkhead scenario runs).
//!
//! Cargo hands a test the binaries of its own package only
//! (`CARGO_BIN_EXE_*`), and the agent is published while the lab is not.
//! `scripts/test.sh` names the binaries its workspace build made in
//! `FAULTLINE_AGENT_BIN` and `FAULTLINE_CLI_BIN`. Without them (the lab run
//! on its own), the lab asks cargo to build each and reads the binary's
//! path from cargo's JSON messages: the binary of this checkout, never a
//! stale file. The suite does not take that way, because a build from
//! inside a running test would relink the binary other tests are starting,
//! and may resolve features differently from the workspace build and
//! rebuild it all.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

/// The profile to build the agent with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    Dev,
    Release,
}

/// The path of the `faultline-agent` binary to test: `FAULTLINE_AGENT_BIN`
/// when set, else this workspace's, built now if needed; Err says why it
/// could not be had.
pub fn agent_binary(profile: Profile) -> Result<PathBuf, String> {
    binary(
        "FAULTLINE_AGENT_BIN",
        "agent",
        "faultline-agent",
        "faultline-agent",
        profile,
    )
}

/// The path of the `faultline` CLI binary, as [`agent_binary`] finds the
/// agent's (from `FAULTLINE_CLI_BIN`).
pub fn cli_binary(profile: Profile) -> Result<PathBuf, String> {
    binary(
        "FAULTLINE_CLI_BIN",
        "cli",
        "faultline",
        "faultline",
        profile,
    )
}

fn binary(
    var: &str,
    dir: &str,
    package: &str,
    bin: &str,
    profile: Profile,
) -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os(var) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!("{var}={} is no file", path.display()))
        };
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(dir)
        .join("Cargo.toml");
    let mut cmd = Command::new(&cargo);
    // Not quiet: a wait for the build lock shows in the test's output.
    cmd.args(["build", "--message-format=json"])
        .args(["--package", package, "--bin", bin])
        .arg("--manifest-path")
        .arg(&manifest)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    if profile == Profile::Release {
        cmd.arg("--release");
    }
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {}: {e}", Path::new(&cargo).display()))?;
    if !out.status.success() {
        return Err(format!("cargo build of {bin} failed ({})", out.status));
    }
    executable(&String::from_utf8_lossy(&out.stdout), bin)
        .ok_or_else(|| format!("cargo named no {bin} executable"))
}

/// The executable of binary `bin` among cargo's JSON messages.
fn executable(messages: &str, bin: &str) -> Option<PathBuf> {
    messages
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == bin)
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_executable_among_messages() {
        let msgs = concat!(
            r#"{"reason":"compiler-artifact","target":{"name":"faultline_api"},"executable":null}"#,
            "\nnot json\n",
            r#"{"reason":"compiler-artifact","target":{"name":"faultline-agent"},"executable":"/t/debug/faultline-agent"}"#,
            "\n",
            r#"{"reason":"build-finished","success":true}"#,
        );
        assert_eq!(
            executable(msgs, "faultline-agent"),
            Some(PathBuf::from("/t/debug/faultline-agent"))
        );
        assert_eq!(executable(msgs, "faultline"), None);
        assert_eq!(
            executable(r#"{"reason":"build-finished"}"#, "faultline-agent"),
            None
        );
    }
}
