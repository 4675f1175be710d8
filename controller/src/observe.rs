//! The figures checks compare, read from the in-cluster observer's live API
//! (`GET /api/v1/services/{name}`) or, for `http` checks, from the URL.

use std::time::Duration;

use bytes::Bytes;
use faultline_api::{BreakerState, CheckKind};
use faultline_engine::Observed;
use http_body_util::{BodyExt, Empty};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use serde::Deserialize;

/// How long one request to the observer or a check's URL may take.
const OBSERVER_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error("no observer is configured (--observer URL)")]
    NotConfigured,
    #[error("the observer at {url} did not answer: {why}")]
    Unreachable { url: String, why: String },
    #[error("the observer at {url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("the observer's answer from {url} is not what was expected: {why}")]
    Decode { url: String, why: String },
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ServiceFigures {
    requests: u64,
    error_rate: f64,
    #[serde(default)]
    breakers: Vec<BreakerFigures>,
    #[serde(default)]
    percentile: Option<PercentileFigure>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct BreakerFigures {
    name: String,
    state: String,
    for_seconds: f64,
}

#[derive(Debug, Deserialize)]
struct PercentileFigure {
    ms: Option<f64>,
}

/// A client of one observer (or none, when checks need no figures).
#[derive(Debug, Clone)]
pub struct ObserverClient {
    base: Option<String>,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
}

/// The observer's window for a check's window: whole seconds, 1 s to 5 m.
fn window_secs(window: faultline_api::Duration) -> u64 {
    (window.as_millis() / 1000).clamp(1, 300)
}

impl ObserverClient {
    /// `base` like `http://faultline-observer.faultline:9464`.
    pub fn new(base: Option<String>) -> Self {
        ObserverClient {
            base: base.map(|b| b.trim_end_matches('/').to_owned()),
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// Whether an observer was given (checks other than `http` need one).
    pub(crate) fn is_configured(&self) -> bool {
        self.base.is_some()
    }

    /// GET `url`: the status and body, or why nothing came back in time.
    async fn get(&self, url: &str, timeout: Duration) -> Result<(u16, Bytes), String> {
        let req = hyper::Request::get(url)
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let response = tokio::time::timeout(timeout, self.client.request(req))
            .await
            .map_err(|_| format!("no answer within {timeout:?}"))?
            .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let body = tokio::time::timeout(timeout, response.into_body().collect())
            .await
            .map_err(|_| "the body did not arrive in time".to_owned())?
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, body))
    }

    /// One service's figures; None when the observer has never seen it.
    async fn service(
        &self,
        name: &str,
        window: u64,
        percentile: Option<f64>,
    ) -> Result<Option<ServiceFigures>, Error> {
        let base = self.base.as_ref().ok_or(Error::NotConfigured)?;
        let mut url = format!("{base}/api/v1/services/{name}?window={window}s");
        if let Some(p) = percentile {
            url.push_str(&format!("&percentile={p}"));
        }
        let (status, body) =
            self.get(&url, OBSERVER_TIMEOUT)
                .await
                .map_err(|why| Error::Unreachable {
                    url: url.clone(),
                    why,
                })?;
        match status {
            200 => serde_json::from_slice(&body)
                .map(Some)
                .map_err(|e| Error::Decode {
                    url,
                    why: e.to_string(),
                }),
            404 => Ok(None),
            status => Err(Error::Status { url, status }),
        }
    }

    /// The figure a check compares. An observer that cannot be read is an
    /// error, not "no data": no data lets rate checks pass, and an
    /// unreadable observer is no evidence either way.
    pub(crate) async fn observe(&self, kind: &CheckKind) -> Result<Observed, Error> {
        Ok(match kind {
            CheckKind::ErrorRate(c) => {
                match self
                    .service(&c.service, window_secs(c.window), None)
                    .await?
                {
                    Some(f) if f.requests > 0 => Observed::Rate {
                        rate: f.error_rate,
                        requests: f.requests,
                    },
                    _ => Observed::NoData,
                }
            }
            CheckKind::Latency(c) => {
                let f = self
                    .service(&c.service, window_secs(c.window), Some(c.percentile))
                    .await?;
                match f.and_then(|f| Some((f.percentile?.ms?, f.requests))) {
                    Some((ms, requests)) => Observed::LatencyMs { ms, requests },
                    None => Observed::NoData,
                }
            }
            CheckKind::Breaker(c) => {
                let f = self.service(&c.service, 30, None).await?;
                let breaker = f.and_then(|f| f.breakers.into_iter().find(|b| b.name == c.name));
                match breaker
                    .and_then(|b| Some((b.state.parse::<BreakerState>().ok()?, b.for_seconds)))
                {
                    Some((state, for_secs)) => Observed::Breaker { state, for_secs },
                    None => Observed::NoData,
                }
            }
            CheckKind::Http(c) => Observed::Http(
                self.get(&c.url, c.timeout.as_std())
                    .await
                    .ok()
                    .map(|(status, _)| status),
            ),
        })
    }
}
