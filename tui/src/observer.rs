//! Reads the observer's live figures: its `/api/v1/stream` of server-sent
//! events, or, from an observer without one, `/api/v1/services` once a
//! second. Never gives up: a failure is reported and retried.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Empty};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use tokio::sync::mpsc;

use crate::{app::Action, model::Figures};

/// The window the dashboard asks for: short, so a fault shows within
/// seconds, as the demo's checks see it.
const WINDOW: &str = "10s";
/// A stream silent this long is taken as lost (the observer sends a
/// snapshot every second).
const SILENCE: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_secs(1);
/// A larger answer is refused rather than buffered without bound.
const MAX_EVENT_BYTES: usize = 64 << 20;

/// `http://host:port` from what the user typed (`host:port` is taken as
/// http); an error says what is wrong with it.
pub fn base_url(input: &str) -> Result<String, String> {
    let trimmed = input.trim();
    let url = if trimmed.contains("://") {
        trimmed.to_owned()
    } else {
        format!("http://{trimmed}")
    };
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e| format!("{input:?} is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some(other) => {
            return Err(format!(
                "{input:?}: the dashboard speaks plain http to the observer, not {other} (use kubectl port-forward for one in a cluster)"
            ));
        }
        None => return Err(format!("{input:?} has no scheme")),
    }
    let Some(authority) = uri.authority().filter(|a| !a.host().is_empty()) else {
        return Err(format!("{input:?} names no host"));
    };
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(format!(
            "{input:?}: give the observer's address without a path (like http://127.0.0.1:9464)"
        ));
    }
    Ok(format!("http://{authority}"))
}

#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error("{0}")]
    Http(#[from] hyper_util::client::legacy::Error),
    #[error("reading the answer: {0}")]
    Body(#[from] hyper::Error),
    #[error("the observer answered {0}")]
    Status(hyper::StatusCode),
    #[error("the observer sent nothing for {} s", SILENCE.as_secs())]
    Silent,
    #[error("the stream ended")]
    Ended,
    #[error("an event larger than {} MiB", MAX_EVENT_BYTES >> 20)]
    TooLarge,
    #[error("not the observer's JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("bad request URL: {0}")]
    Url(String),
}

/// Feeds `actions` with the observer's figures until the receiver goes.
pub async fn follow(base: String, actions: mpsc::UnboundedSender<Action>) {
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let mut backoff = Duration::from_secs(1);
    let mut streams = true;
    loop {
        let mut delivered = false;
        let result = if streams {
            stream(&client, &base, &actions, &mut delivered).await
        } else {
            poll(&client, &base, &actions, &mut delivered).await
        };
        let error = match result {
            // The dashboard has closed.
            Ok(()) => return,
            // An observer from before the stream: poll instead.
            Err(ReadError::Status(hyper::StatusCode::NOT_FOUND)) if streams => {
                streams = false;
                continue;
            }
            Err(e) => e,
        };
        if delivered {
            backoff = Duration::from_secs(1);
        }
        let down = Action::ObserverDown {
            error: error.to_string(),
            retry_in: backoff,
        };
        if actions.send(down).is_err() {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn get(
    client: &Client<HttpConnector, Empty<Bytes>>,
    url: &str,
) -> Result<hyper::Response<hyper::body::Incoming>, ReadError> {
    let mut req = hyper::Request::get(url)
        .header(hyper::header::ACCEPT, "text/event-stream, application/json");
    // An observer that wants a token (chart observer.tokenSecret).
    if let Ok(token) = std::env::var("FAULTLINE_OBSERVER_TOKEN")
        && !token.is_empty()
    {
        req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let req = req
        .body(Empty::new())
        .map_err(|e| ReadError::Url(e.to_string()))?;
    let response = tokio::time::timeout(SILENCE, client.request(req))
        .await
        .map_err(|_| ReadError::Silent)??;
    if !response.status().is_success() {
        return Err(ReadError::Status(response.status()));
    }
    Ok(response)
}

/// Reads the event stream until it fails; every `snapshot` event becomes
/// an action.
async fn stream(
    client: &Client<HttpConnector, Empty<Bytes>>,
    base: &str,
    actions: &mpsc::UnboundedSender<Action>,
    delivered: &mut bool,
) -> Result<(), ReadError> {
    let mut body = get(client, &format!("{base}/api/v1/stream?window={WINDOW}"))
        .await?
        .into_body();
    let mut events = EventBuffer::default();
    loop {
        let frame = tokio::time::timeout(SILENCE, body.frame())
            .await
            .map_err(|_| ReadError::Silent)?
            .ok_or(ReadError::Ended)??;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        events.push(&data)?;
        while let Some(event) = events.next_event() {
            if event.name.as_deref().is_none_or(|n| n == "snapshot") && !event.data.is_empty() {
                // One event that does not parse is skipped, not the stream.
                let figures: Figures = match serde_json::from_str(&event.data) {
                    Ok(f) => f,
                    Err(e) => {
                        tracing::debug!(error = %e, "skipping an event that is not the observer's JSON");
                        continue;
                    }
                };
                if actions.send(Action::Figures(figures)).is_err() {
                    return Ok(());
                }
                *delivered = true;
            }
        }
    }
}

/// Asks for the figures once a second until a request fails.
async fn poll(
    client: &Client<HttpConnector, Empty<Bytes>>,
    base: &str,
    actions: &mpsc::UnboundedSender<Action>,
    delivered: &mut bool,
) -> Result<(), ReadError> {
    loop {
        let body = get(client, &format!("{base}/api/v1/services?window={WINDOW}"))
            .await?
            .into_body();
        let limited = http_body_util::Limited::new(body, MAX_EVENT_BYTES);
        let bytes = tokio::time::timeout(SILENCE, limited.collect())
            .await
            .map_err(|_| ReadError::Silent)?
            .map_err(|_| ReadError::TooLarge)?
            .to_bytes();
        let figures: Figures = serde_json::from_slice(&bytes)?;
        if actions.send(Action::Figures(figures)).is_err() {
            return Ok(());
        }
        *delivered = true;
        tokio::time::sleep(POLL).await;
    }
}

/// One server-sent event.
#[derive(Debug, Default, PartialEq)]
struct Event {
    name: Option<String>,
    data: String,
}

/// Bytes of an event stream, cut into events at blank lines.
#[derive(Debug, Default)]
struct EventBuffer {
    pending: BytesMut,
    /// How far `pending` is known to hold no blank line: each byte is
    /// looked at once, however the stream is chunked.
    scanned: usize,
}

impl EventBuffer {
    fn push(&mut self, bytes: &[u8]) -> Result<(), ReadError> {
        if self.pending.len() + bytes.len() > MAX_EVENT_BYTES {
            return Err(ReadError::TooLarge);
        }
        self.pending.extend_from_slice(bytes);
        Ok(())
    }

    fn next_event(&mut self) -> Option<Event> {
        loop {
            let (end, separator) = self.blank_line()?;
            let block = self.pending.split_to(end);
            let _ = self.pending.split_to(separator);
            self.scanned = 0;
            let text = String::from_utf8_lossy(&block);
            let mut event = Event::default();
            let mut data: Vec<&str> = Vec::new();
            for line in text.lines() {
                let line = line.strip_suffix('\r').unwrap_or(line);
                let (field, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                match field {
                    "event" => event.name = Some(value.to_owned()),
                    "data" => data.push(value),
                    _ => {} // comments (keep-alives), id, retry
                }
            }
            if !data.is_empty() || event.name.is_some() {
                event.data = data.join("\n");
                return Some(event);
            }
        }
    }

    /// Where the first blank line is: (end of the block before it, length
    /// of the line ending and the blank line). Lines end in LF or CRLF.
    fn blank_line(&mut self) -> Option<(usize, usize)> {
        let buf = &self.pending[..];
        let mut i = self.scanned;
        while let Some(offset) = buf[i..].iter().position(|b| *b == b'\n') {
            let newline = i + offset;
            let mut next = newline + 1;
            if buf.get(next) == Some(&b'\r') {
                next += 1;
            }
            match buf.get(next) {
                Some(b'\n') => {
                    let end = if newline > 0 && buf[newline - 1] == b'\r' {
                        newline - 1
                    } else {
                        newline
                    };
                    return Some((end, next + 1 - end));
                }
                // The line after may be blank, once more bytes come.
                None => {
                    self.scanned = newline;
                    return None;
                }
                Some(_) => i = newline + 1,
            }
        }
        self.scanned = buf.len();
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_cut_at_blank_lines_whatever_the_chunks() {
        let text = b": keep-alive\n\nevent: snapshot\ndata: {\"a\":\ndata: 1}\n\nevent: snapshot\r\ndata: x\r\n\r\ndata: mixed\r\n\n";
        for chunk in [1, 3, 7, text.len()] {
            let mut buf = EventBuffer::default();
            let mut got = Vec::new();
            for piece in text.chunks(chunk) {
                buf.push(piece).expect("small");
                while let Some(e) = buf.next_event() {
                    got.push(e);
                }
            }
            assert_eq!(
                got,
                [
                    Event {
                        name: Some("snapshot".into()),
                        data: "{\"a\":\n1}".into()
                    },
                    Event {
                        name: Some("snapshot".into()),
                        data: "x".into()
                    },
                    Event {
                        name: None,
                        data: "mixed".into()
                    }
                ],
                "chunks of {chunk}"
            );
        }
    }

    #[test]
    fn observer_addresses() {
        assert_eq!(
            base_url("127.0.0.1:9464").as_deref(),
            Ok("http://127.0.0.1:9464")
        );
        assert_eq!(
            base_url("http://observer.faultline:9464/").as_deref(),
            Ok("http://observer.faultline:9464")
        );
        for bad in ["https://x:1", "http://", "x:1/api", "a b"] {
            assert!(base_url(bad).is_err(), "{bad}");
        }
    }
}
