//! Test support for Faultline's crates; a dev-dependency only.

pub mod agents;
pub mod cluster;
pub mod jaeger;
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
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let (status, _, body) = parse_response(&response)?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// One HTTP/1.1 exchange on loopback, from async code: `method path` with
/// these headers (a content-length is added) and body; the status code and
/// the body (de-chunked). Gives up after 10 seconds.
pub async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, Vec<u8>)> {
    http_with_head(addr, method, path, headers, body)
        .await
        .map(|(status, _, body)| (status, body))
}

/// As [`http`], with the response's head (status line and headers,
/// lowercased) between the status code and the body.
pub async fn http_with_head(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, String, Vec<u8>)> {
    http_from(None, addr, method, path, headers, body).await
}

/// As [`http_with_head`], from the local address `from` when given (any
/// of 127.0.0.0/8 reaches a loopback listener, so a test can be several
/// senders).
pub async fn http_from(
    from: Option<std::net::IpAddr>,
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, String, Vec<u8>)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = match from {
            None => tokio::net::TcpStream::connect(addr).await?,
            Some(ip) => {
                let socket = match ip {
                    std::net::IpAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
                    std::net::IpAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
                };
                socket.bind(std::net::SocketAddr::new(ip, 0))?;
                socket.connect(addr).await?
            }
        };
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        parse_response(&response)
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), exchange)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in 10 s"))?
}

/// `GET path` answered 200 with JSON: the JSON. Panics otherwise.
pub async fn get_json(addr: std::net::SocketAddr, path: &str) -> serde_json::Value {
    let (status, body) = http(addr, "GET", path, &[], b"")
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let text = String::from_utf8_lossy(&body);
    assert_eq!(status, 200, "GET {path}: {text}");
    serde_json::from_slice(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {text}"))
}

/// A whole HTTP/1.x response: its status code, its head (lowercased) and
/// its body, de-chunked when sent chunked.
fn parse_response(response: &[u8]) -> std::io::Result<(u16, String, Vec<u8>)> {
    let bad = || {
        let text = String::from_utf8_lossy(response);
        std::io::Error::other(format!("not an HTTP response: {text:?}"))
    };
    let head_end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(bad)?;
    let head = String::from_utf8_lossy(&response[..head_end]).to_ascii_lowercase();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    let body = &response[head_end + 4..];
    let body = if head.contains("\r\ntransfer-encoding: chunked") {
        dechunk(body).ok_or_else(bad)?
    } else {
        body.to_vec()
    };
    Ok((status, head, body))
}

/// The data of a chunked body; None when it is cut short or malformed.
fn dechunk(mut chunked: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = chunked.windows(2).position(|w| w == b"\r\n")?;
        let size = std::str::from_utf8(&chunked[..line_end]).ok()?;
        // A chunk extension (";name=value") may follow the size.
        let size = size.split(';').next()?.trim();
        let size = usize::from_str_radix(size, 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        let data = chunked.get(line_end + 2..line_end + 2 + size)?;
        out.extend_from_slice(data);
        chunked = chunked.get(line_end + 2 + size + 2..)?;
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_parsed_and_de_chunked() {
        let plain = b"HTTP/1.1 404 Not Found\r\ncontent-length: 3\r\n\r\nno!";
        assert_eq!(
            parse_response(plain).ok(),
            Some((
                404,
                "http/1.1 404 not found\r\ncontent-length: 3".into(),
                b"no!".to_vec()
            ))
        );
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
            4\r\n{\"a\"\r\n3;x=y\r\n:1}\r\n0\r\n\r\n";
        assert_eq!(
            parse_response(chunked).ok().map(|(s, _, b)| (s, b)),
            Some((200, b"{\"a\":1}".to_vec()))
        );
        let cut = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n9\r\nabc";
        assert!(parse_response(cut).is_err());
        assert!(parse_response(b"SSH-2.0-OpenSSH\r\n").is_err());
    }

    #[tokio::test]
    async fn an_exchange_over_loopback() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut request = vec![0; 4096];
            let n = s.read(&mut request).await.expect("read");
            request.truncate(n);
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\n{\"ok\":true}")
                .await
                .expect("write");
            String::from_utf8_lossy(&request).into_owned()
        });
        assert_eq!(get_json(addr, "/x").await, serde_json::json!({"ok": true}));
        let request = server.await.expect("server");
        assert!(request.starts_with("GET /x HTTP/1.1\r\n"), "{request}");
        assert!(request.contains("content-length: 0\r\n"), "{request}");
    }
}
