//! Test support for Faultline's crates; a dev-dependency only.

pub mod kube;
pub mod otlp;
pub mod terminal;

/// A loopback TCP port that was free a moment ago (bound, then released).
/// Panics rather than returning 0: a test that listens on "any port" by
/// accident would pass for the wrong reason.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// One plain HTTP/1.1 GET on loopback: the status code and the body.
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream =
        std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2))?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {response:?}")))?;
    let body = response
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_owned());
    Ok((status, body))
}

/// True when scripts/test.sh asked that no test skip for want of a peer
/// (a tool, root, a kernel feature): `FAULTLINE_REQUIRE_PEERS` is set.
pub fn peers_required() -> bool {
    std::env::var_os("FAULTLINE_REQUIRE_PEERS").is_some()
}

/// A peer the test needs is missing: fails the test when peers are
/// required, else logs the skip so the caller can return.
#[track_caller]
pub fn skip_without_peer(what: &str) {
    assert!(
        !peers_required(),
        "{what} (FAULTLINE_REQUIRE_PEERS is set; scripts/test.sh provides it)"
    );
    tracing::warn!("skipped: {what}; ./scripts/test.sh provides it");
}

/// The value of `var`, which names a peer (a program's path): None when it
/// is unset and peers are not required (the test skips).
#[track_caller]
pub fn peer_var(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) => Some(v),
        Err(_) => {
            skip_without_peer(&format!("{var} is not set"));
            None
        }
    }
}

/// A child process killed and reaped when dropped, whether the test passed.
#[derive(Debug)]
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
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
