//! The figures checks compare, read from the in-cluster observer's live API
//! (`GET /api/v1/services/{name}`) or, for `http` checks, from the URL:
//! http or https (rustls, the system's roots), a bounded read, and never a
//! link-local or cloud metadata address unless the check allows it.

use std::{future::Future, net::SocketAddr, pin::Pin, time::Duration};

use bytes::Bytes;
use faultline_api::{BreakerState, CheckKind, HttpCheck, forbidden_host, forbidden_ip};
use faultline_engine::Observed;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{
        Client,
        connect::{HttpConnector, dns::Name},
    },
    rt::TokioExecutor,
};
use serde::Deserialize;

/// How long one request to the observer or a check's URL may take.
const OBSERVER_TIMEOUT: Duration = Duration::from_secs(2);
/// How much of an observer's answer is read (a services list included).
const OBSERVER_MAX_BYTES: usize = 4 << 20;
/// How much of an http check's answer is read: only its status counts.
const CHECK_MAX_BYTES: usize = 64 << 10;

type Https = HttpsConnector<HttpConnector<Resolver>>;

/// Resolves names as the system does, keeping link-local and metadata
/// addresses out unless allowed: checked where the connection is made, so
/// a name that changes its answer (DNS rebinding) cannot slip past.
#[derive(Debug, Clone, Copy)]
struct Resolver {
    allow_link_local: bool,
}

impl tower::Service<Name> for Resolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let allow = self.allow_link_local;
        Box::pin(async move {
            let all: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            let kept: Vec<SocketAddr> = all
                .into_iter()
                .filter(|a| allow || !forbidden_ip(a.ip()))
                .collect();
            if kept.is_empty() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!("{name} resolves only to link-local or metadata addresses"),
                ));
            }
            Ok(kept.into_iter())
        })
    }
}

fn https_client(allow_link_local: bool) -> Client<Https, Empty<Bytes>> {
    let mut http = HttpConnector::new_with_resolver(Resolver { allow_link_local });
    http.enforce_http(false);
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    // Without readable system roots, https still works for nothing but
    // plain http; the failure shows on the first https check.
    let builder = match builder.with_native_roots() {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(error = %e, "no system root certificates; https checks will fail");
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(
                rustls::ClientConfig::builder()
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth(),
            )
        }
    };
    let connector = builder.https_or_http().enable_http1().wrap_connector(http);
    Client::builder(TokioExecutor::new()).build(connector)
}

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
    #[error("{url} is refused: {why}")]
    Refused { url: String, why: String },
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ServiceFigures {
    requests: u64,
    error_rate: f64,
    #[serde(default)]
    breakers: Vec<BreakerFigures>,
    /// Its calls to each service it called, as its client spans say.
    #[serde(default)]
    edges: Vec<EdgeFigures>,
    #[serde(default)]
    percentile: Option<PercentileFigure>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EdgeFigures {
    to: String,
    requests: u64,
    error_rate: f64,
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

/// A client of one observer (or none, when checks need no figures), and
/// of the URLs `http` checks name.
#[derive(Debug, Clone)]
pub struct ObserverClient {
    base: Option<String>,
    client: Client<Https, Empty<Bytes>>,
    /// For checks that allow link-local and metadata addresses.
    client_link_local: Client<Https, Empty<Bytes>>,
    /// The observer's bearer token, when it wants one.
    token: Option<String>,
    /// The observer records services as `namespace/service`, the sender's
    /// namespace (its `--attribute-namespaces`).
    namespaced: bool,
}

/// `name` as one URL path segment: every byte but the unreserved ones
/// percent-encoded (`shop/checkout` → `shop%2Fcheckout`).
fn path_segment(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
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
            client: https_client(false),
            client_link_local: https_client(true),
            token: None,
            namespaced: false,
        }
    }

    /// Reads services as `namespace/service` (the observer attributes spans
    /// to their sender's namespace): a check's `service` in the
    /// Experiment's namespace, or `other-namespace/service` as written.
    pub fn namespaced(mut self) -> Self {
        self.namespaced = true;
        self
    }

    /// The observer's name for a check's `service` in an Experiment of
    /// `namespace`.
    fn name_of(&self, service: &str, namespace: &str) -> String {
        if self.namespaced && !service.contains('/') {
            format!("{namespace}/{service}")
        } else {
            service.to_owned()
        }
    }

    /// Sends `authorization: Bearer TOKEN` to the observer (never to an
    /// `http` check's URL).
    pub fn with_token(mut self, token: String) -> Self {
        self.token = Some(token);
        self
    }

    /// Whether an observer was given (checks other than `http` need one).
    pub(crate) fn is_configured(&self) -> bool {
        self.base.is_some()
    }

    /// GET `url` from the observer: the status and body (at most
    /// OBSERVER_MAX_BYTES), or why nothing came back in time.
    async fn get(&self, url: &str, timeout: Duration) -> Result<(u16, Bytes), String> {
        let mut req = hyper::Request::get(url);
        if let Some(t) = &self.token {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req.body(Empty::new()).map_err(|e| e.to_string())?;
        let response = tokio::time::timeout(timeout, self.client.request(req))
            .await
            .map_err(|_| format!("no answer within {timeout:?}"))?
            .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let body = Limited::new(response.into_body(), OBSERVER_MAX_BYTES);
        let body = tokio::time::timeout(timeout, body.collect())
            .await
            .map_err(|_| "the body did not arrive in time".to_owned())?
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, body))
    }

    /// An http check: the answer's status, None when nothing answered in
    /// time. The body is read up to CHECK_MAX_BYTES within the same
    /// timeout, then let go. A link-local or metadata host the check does
    /// not allow is refused (an error: the check is not judged).
    async fn http_check(&self, check: &HttpCheck) -> Result<Observed, Error> {
        let refused = |why: String| Error::Refused {
            url: check.url.clone(),
            why,
        };
        let host = faultline_api::url_host(&check.url).map_err(refused)?;
        if !check.allow_link_local && forbidden_host(&host) {
            return Err(refused(
                "a link-local or cloud metadata address (allowLinkLocal: true allows it)".into(),
            ));
        }
        let Ok(req) = hyper::Request::get(check.url.as_str()).body(Empty::new()) else {
            return Err(refused("not a URL this client can request".into()));
        };
        let client = if check.allow_link_local {
            &self.client_link_local
        } else {
            &self.client
        };
        let deadline = tokio::time::Instant::now() + check.timeout.as_std();
        let Ok(Ok(response)) = tokio::time::timeout_at(deadline, client.request(req)).await else {
            return Ok(Observed::Http(None));
        };
        let status = response.status().as_u16();
        // Past the limit, cut short or late: the status is what counts.
        let body = Limited::new(response.into_body(), CHECK_MAX_BYTES);
        let _ = tokio::time::timeout_at(deadline, body.collect()).await;
        Ok(Observed::Http(Some(status)))
    }

    /// One service's figures; None when the observer has never seen it.
    async fn service(
        &self,
        name: &str,
        window: u64,
        percentile: Option<f64>,
    ) -> Result<Option<ServiceFigures>, Error> {
        let base = self.base.as_ref().ok_or(Error::NotConfigured)?;
        let mut url = format!(
            "{base}/api/v1/services/{}?window={window}s",
            path_segment(name)
        );
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

    /// Why the observer has no figures for `name`, with the closest name it
    /// does have. Best effort: the list may be unreadable.
    async fn unseen(&self, name: &str) -> Observed {
        #[derive(Deserialize)]
        struct Services {
            services: Vec<Named>,
        }
        #[derive(Deserialize)]
        struct Named {
            name: String,
        }
        let known: Vec<String> = match &self.base {
            Some(base) => {
                let url = format!("{base}/api/v1/services?window=300s");
                match self.get(&url, OBSERVER_TIMEOUT).await {
                    Ok((200, body)) => serde_json::from_slice::<Services>(&body)
                        .map(|s| s.services.into_iter().map(|n| n.name).collect())
                        .unwrap_or_default(),
                    _ => Vec::new(),
                }
            }
            None => Vec::new(),
        };
        let hint = faultline_api::did_you_mean(name, known.iter().map(String::as_str))
            .map(|n| format!(" (did you mean {n}?)"))
            .unwrap_or_default();
        Observed::Unseen(format!(
            "the observer has no figures for service {name:?}{hint}"
        ))
    }

    /// No calls from `name` to `to` in a check's window: an empty window
    /// when the observer saw such calls in the last 5 minutes, else most
    /// likely a misnamed `to` (never judged, even with `minRequests: 0`),
    /// with the closest callee it did see.
    async fn unseen_edge(&self, name: &str, to: &str, namespaced: &str) -> Result<Observed, Error> {
        let Some(f) = self.service(name, 300, None).await? else {
            return Ok(self.unseen(name).await);
        };
        if f.edges.iter().any(|e| e.to == to || e.to == namespaced) {
            return Ok(Observed::NoData);
        }
        let hint = faultline_api::did_you_mean(to, f.edges.iter().map(|e| e.to.as_str()))
            .map(|n| format!(" (did you mean {n}?)"))
            .unwrap_or_default();
        Ok(Observed::Unseen(format!(
            "the observer has seen no calls from {name:?} to {to:?} in 5 minutes{hint}"
        )))
    }

    /// The figure a check of an Experiment in `namespace` compares. An
    /// observer that cannot be read is an error, not "no data": no data
    /// lets rate checks pass, and an unreadable observer is no evidence
    /// either way.
    pub(crate) async fn observe(
        &self,
        kind: &CheckKind,
        namespace: &str,
    ) -> Result<Observed, Error> {
        let name = kind.service().map(|s| self.name_of(s, namespace));
        let name = name.as_deref().unwrap_or_default();
        Ok(match kind {
            CheckKind::ErrorRate(c) => {
                match self.service(name, window_secs(c.window), None).await? {
                    Some(f) => {
                        // Narrowed to calls to one service: the edge to it,
                        // named as its client spans or its server spans say.
                        let figures = match &c.to {
                            Some(to) => {
                                let namespaced = self.name_of(to, namespace);
                                let edge =
                                    f.edges.iter().find(|e| e.to == *to || e.to == namespaced);
                                match edge {
                                    Some(e) => Some((e.requests, e.error_rate)),
                                    None => {
                                        return self.unseen_edge(name, to, &namespaced).await;
                                    }
                                }
                            }
                            None => Some((f.requests, f.error_rate)),
                        };
                        match figures {
                            Some((requests, rate)) if requests > 0 => {
                                Observed::Rate { rate, requests }
                            }
                            _ => Observed::NoData,
                        }
                    }
                    None => self.unseen(name).await,
                }
            }
            CheckKind::Latency(c) => {
                let Some(f) = self
                    .service(name, window_secs(c.window), Some(c.percentile))
                    .await?
                else {
                    return Ok(self.unseen(name).await);
                };
                match f.percentile.and_then(|p| p.ms) {
                    Some(ms) => Observed::LatencyMs {
                        ms,
                        requests: f.requests,
                    },
                    None => Observed::NoData,
                }
            }
            CheckKind::Breaker(c) => {
                let Some(f) = self.service(name, 30, None).await? else {
                    return Ok(self.unseen(name).await);
                };
                let breaker = f.breakers.into_iter().find(|b| b.name == c.name);
                match breaker
                    .and_then(|b| Some((b.state.parse::<BreakerState>().ok()?, b.for_seconds)))
                {
                    Some((state, for_secs)) => Observed::Breaker { state, for_secs },
                    None => Observed::NoData,
                }
            }
            CheckKind::Http(c) => return self.http_check(c).await,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(url: &str, timeout: &str, allow_link_local: bool) -> CheckKind {
        CheckKind::Http(HttpCheck {
            url: url.into(),
            status: 200,
            timeout: timeout.parse().expect("duration"),
            allow_link_local,
        })
    }

    /// A server whose answer's body never ends.
    async fn endless() -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = axum::Router::new().route(
            "/",
            axum::routing::get(|| async {
                let chunk = Bytes::from(vec![b'x'; 8192]);
                let stream = futures::stream::repeat_with(move || {
                    Ok::<_, std::convert::Infallible>(chunk.clone())
                });
                axum::body::Body::from_stream(stream)
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    #[tokio::test]
    async fn an_error_rate_narrowed_to_calls_reads_the_edge() {
        let observer = faultline_observer::start(
            &faultline_observer::Addresses::ephemeral(),
            faultline_observer::Limits::default(),
        )
        .await
        .expect("observer");
        let otlp = |e| observer.observer.ingest(&e).expect("ingests");
        otlp(faultline_testkit::otlp::server_spans("checkout", 20, 0));
        otlp(faultline_testkit::otlp::client_spans(
            "checkout",
            "inventory",
            20,
            5,
        ));
        let client = ObserverClient::new(Some(format!("http://{}", observer.addresses.api)));
        let rate = |to: Option<&str>| {
            CheckKind::ErrorRate(faultline_api::ErrorRateCheck {
                service: "checkout".into(),
                to: to.map(str::to_owned),
                max: "1%".parse().ok(),
                max_increase: None,
                window: "30s".parse().expect("duration"),
                min_requests: None,
            })
        };
        assert_eq!(
            client.observe(&rate(Some("inventory")), "shop").await.ok(),
            Some(Observed::Rate {
                rate: 0.25,
                requests: 20
            })
        );
        assert_eq!(
            client.observe(&rate(None), "shop").await.ok(),
            Some(Observed::Rate {
                rate: 0.0,
                requests: 20
            }),
            "the requests checkout served"
        );
        assert_eq!(
            client.observe(&rate(Some("inventroy")), "shop").await.ok(),
            Some(Observed::Unseen(
                "the observer has seen no calls from \"checkout\" to \"inventroy\" in 5 minutes (did you mean inventory?)".into()
            )),
            "a callee never seen is not judged, even with minRequests 0"
        );
    }

    #[test]
    fn a_namespaced_observer_is_asked_for_the_experiments_namespace() {
        let plain = ObserverClient::new(Some("http://o".into()));
        assert_eq!(plain.name_of("checkout", "shop"), "checkout");
        let namespaced = plain.namespaced();
        assert_eq!(namespaced.name_of("checkout", "shop"), "shop/checkout");
        assert_eq!(
            namespaced.name_of("payments/api", "shop"),
            "payments/api",
            "another namespace, named"
        );
        assert_eq!(path_segment("shop/check out"), "shop%2Fcheck%20out");
    }

    #[tokio::test]
    async fn an_endless_body_is_read_no_further_than_the_limit() {
        let addr = endless().await;
        let client = ObserverClient::new(None);
        // The check's own timeout is long: only the read limit ends it.
        let observed = tokio::time::timeout(
            Duration::from_secs(30),
            client.observe(&check(&format!("http://{addr}/"), "1m", false), "shop"),
        )
        .await
        .expect("the read stops at the limit")
        .expect("observed");
        assert_eq!(observed, Observed::Http(Some(200)));
    }

    #[tokio::test]
    async fn link_local_and_metadata_hosts_are_refused_unless_allowed() {
        let client = ObserverClient::new(None);
        for url in [
            "http://169.254.169.254/latest/meta-data/",
            "http://[fe80::1]/",
            "http://metadata.google.internal/computeMetadata/v1/",
        ] {
            let err = client
                .observe(&check(url, "200ms", false), "shop")
                .await
                .expect_err(url);
            assert!(
                err.to_string().contains("link-local or cloud metadata"),
                "{err}"
            );
        }
        // Allowed, it would be asked; test traffic stays on loopback, so
        // the resolver's side of allowing is tested below.
    }

    #[tokio::test]
    async fn names_resolving_only_to_link_local_addresses_are_refused() {
        use std::str::FromStr;
        use tower::Service;
        let name = |n: &str| Name::from_str(n).expect("name");
        let mut guarded = Resolver {
            allow_link_local: false,
        };
        let local: Vec<SocketAddr> = guarded
            .call(name("localhost"))
            .await
            .expect("resolves")
            .collect();
        assert!(local.iter().all(|a| a.ip().is_loopback()), "{local:?}");
        // A literal link-local address given as a name resolves to itself.
        let err = guarded
            .call(name("169.254.169.254"))
            .await
            .expect_err("refused");
        assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied);
        let mut open = Resolver {
            allow_link_local: true,
        };
        assert!(open.call(name("169.254.169.254")).await.is_ok());
    }
}
