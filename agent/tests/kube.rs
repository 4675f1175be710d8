//! Kube mode against a mocked Kubernetes API (tower-test), scenario style:
//! the test plays the API server — it answers the watcher's list and watch
//! calls from a script and records every status write — while the real
//! agent loop (with a recording backend) and the real kube-mode tasks run.

use std::{
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

use faultline_agent::{
    Agent, BackendError, Call, Desired, Event, Journal, Metrics, Recording, SystemClock, cluster,
};
use faultline_api::NodeFaults;
use http::{Request, Response};
use kube::client::Body;
use serde_json::{Value, json};
use tokio::sync::mpsc as tmpsc;

const NODE: &str = "node-a";
const PATH: &str = "/apis/faultline.dev/v1alpha1/nodefaults";

fn fault(id: &str) -> Value {
    let expires = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(300);
    json!({"id": id, "target": {"netns": "/run/netns/shop"}, "expiresAt": expires.to_string(),
           "partition": {"direction": "both", "peers": ["10.0.0.2/32"]}})
}

fn object(generation: i64, rv: &str, ids: &[&str]) -> Value {
    json!({
        "apiVersion": "faultline.dev/v1alpha1", "kind": "NodeFaults",
        "metadata": {"name": NODE, "generation": generation, "resourceVersion": rv, "uid": "u-1"},
        "spec": {"faults": ids.iter().map(|i| fault(i)).collect::<Vec<_>>()},
    })
}

/// A status write as the API server received it.
#[derive(Debug, Clone)]
struct StatusWrite {
    content_type: String,
    query: String,
    body: Value,
}

/// What the scripted API server holds.
#[derive(Debug, Default)]
struct ServerState {
    object: Option<Value>,
    lists: usize,
    watches: usize,
}

fn respond(status: u16, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(body).expect("json")))
        .expect("response")
}

fn not_found() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404,
           "message": format!("nodefaults.faultline.dev \"{NODE}\" not found"), "metadata": {}})
}

/// Serves list, watch and status-patch calls until the test ends. Each
/// watch call is answered with the next scripted batch of watch lines (its
/// body then ends, as when the server closes a watch); until a batch is
/// scripted, the watch stays open.
async fn serve(
    mut handle: tower_test::mock::Handle<Request<Body>, Response<Body>>,
    state: Arc<Mutex<ServerState>>,
    mut batches: tmpsc::UnboundedReceiver<(Option<Value>, Vec<Value>)>,
    writes: tmpsc::UnboundedSender<StatusWrite>,
) {
    let mut open_watch: Option<tower_test::mock::SendResponse<Response<Body>>> = None;
    let mut pending: std::collections::VecDeque<(Option<Value>, Vec<Value>)> = Default::default();
    loop {
        if let Some(send) = open_watch.take() {
            match pending.pop_front() {
                Some((object, lines)) => {
                    state.lock().expect("state").object = object;
                    let mut body = Vec::new();
                    for l in lines {
                        body.extend(serde_json::to_vec(&l).expect("json"));
                        body.push(b'\n');
                    }
                    send.send_response(
                        Response::builder()
                            .status(200)
                            .body(Body::from(body))
                            .expect("response"),
                    );
                }
                None => open_watch = Some(send),
            }
        }
        tokio::select! {
            batch = batches.recv() => match batch {
                Some(b) => pending.push_back(b),
                None => return,
            },
            next = handle.next_request() => {
                let Some((req, send)) = next else { return };
                let query = req.uri().query().unwrap_or("").to_owned();
                let path = req.uri().path().to_owned();
                if req.method() == http::Method::GET && path == PATH && query.contains("watch=true") {
                    assert!(query.contains("fieldSelector=metadata.name%3Dnode-a"), "{query}");
                    state.lock().expect("state").watches += 1;
                    open_watch = Some(send);
                } else if req.method() == http::Method::GET && path == PATH {
                    assert!(query.contains("fieldSelector=metadata.name%3Dnode-a"), "{query}");
                    let list = {
                        let mut s = state.lock().expect("state");
                        s.lists += 1;
                        let items: Vec<Value> = s.object.iter().cloned().collect();
                        json!({"apiVersion": "faultline.dev/v1alpha1", "kind": "NodeFaultsList",
                               "metadata": {"resourceVersion": format!("{}", 100 + s.lists)}, "items": items})
                    };
                    send.send_response(respond(200, &list));
                } else if req.method() == http::Method::PATCH && path == format!("{PATH}/{NODE}/status") {
                    let content_type = req
                        .headers()
                        .get("content-type")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned();
                    let bytes = http_body_util::BodyExt::collect(req.into_body())
                        .await
                        .expect("body")
                        .to_bytes();
                    let body: Value = serde_json::from_slice(&bytes).expect("status json");
                    let current = state.lock().expect("state").object.clone();
                    match current {
                        Some(mut o) => {
                            o["status"] = body["status"].clone();
                            send.send_response(respond(200, &o));
                        }
                        None => send.send_response(respond(404, &not_found())),
                    }
                    let _ = writes.send(StatusWrite { content_type, query, body });
                } else {
                    panic!("unexpected call {} {path}?{query}", req.method());
                }
            }
        }
    }
}

fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits for a status write matching `pred`, returning it.
async fn status_where(
    writes: &mut tmpsc::UnboundedReceiver<StatusWrite>,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> StatusWrite {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, writes.recv()).await {
            Ok(Some(w)) if pred(&w.body["status"]) => return w,
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => panic!("no status write with {what}"),
        }
    }
}

type Batches = tmpsc::UnboundedSender<(Option<Value>, Vec<Value>)>;

/// The object becomes generation `generation` holding `ids`, announced by a
/// MODIFIED watch event; returns the status write for that generation.
async fn modified(
    batches: &Batches,
    writes: &mut tmpsc::UnboundedReceiver<StatusWrite>,
    generation: i64,
    ids: &[&str],
) -> StatusWrite {
    let o = object(generation, &format!("{}", 10 + generation), ids);
    batches
        .send((
            Some(o.clone()),
            vec![json!({"type": "MODIFIED", "object": o})],
        ))
        .expect("script");
    status_where(writes, &format!("generation {generation}"), |s| {
        s["observedGeneration"] == generation
    })
    .await
}

/// `wait_for` off the async workers, which serve the mocked API meanwhile.
async fn wait_blocking(what: &'static str, f: impl FnMut() -> Option<()> + Send + 'static) {
    tokio::task::spawn_blocking(move || wait_for(what, Duration::from_secs(10), f))
        .await
        .expect("wait");
}

fn states(status: &Value) -> Vec<(String, String)> {
    status["faults"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|f| {
                    (
                        f["id"].as_str().unwrap_or("").to_owned(),
                        f["state"].as_str().unwrap_or("").to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_events_drive_faults_and_status_is_server_side_applied() {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let api: kube::Api<NodeFaults> = kube::Api::all(client);

    let state = Arc::new(Mutex::new(ServerState {
        object: Some(object(1, "10", &["a"])),
        ..ServerState::default()
    }));
    let (batch_tx, batch_rx) = tmpsc::unbounded_channel();
    let (write_tx, mut writes) = tmpsc::unbounded_channel();
    let server = tokio::spawn(serve(handle, state.clone(), batch_rx, write_tx));

    let dir = tempfile::tempdir().expect("tmp");
    let rec = Recording::default();
    rec.fail(
        Call::Apply("c".into()),
        BackendError::Failed("nft: Operation not permitted".into()),
    );
    let mut agent = Agent::start(
        rec.clone(),
        Journal::open(dir.path()).expect("journal"),
        Desired::Unknown("waiting for the Kubernetes API".into()),
        Metrics::default(),
        jiff::Timestamp::now(),
    );
    let (status_tx, status_rx) = tokio::sync::watch::channel(None);
    agent.report_to(status_tx);
    let (tx, mut rx) = mpsc::channel::<Event>();
    let looper = std::thread::spawn(move || agent.run(&mut rx, &SystemClock));
    let follower = tokio::spawn(cluster::follow(api.clone(), NODE.into(), tx.clone()));
    let writer = tokio::spawn(cluster::write_status(
        api,
        NODE.into(),
        status_rx,
        tokio::sync::watch::channel(None).1,
    ));

    // The initial list applies generation 1 and reports it, by server-side apply.
    let w = status_where(&mut writes, "generation 1", |s| {
        s["observedGeneration"] == 1
    })
    .await;
    assert_eq!(w.content_type, "application/apply-patch+yaml");
    assert!(
        w.query.contains("fieldManager=faultline-agent") && w.query.contains("force=true"),
        "{}",
        w.query
    );
    assert_eq!(states(&w.body["status"]), pairs(&[("a", "applied")]));
    assert_eq!(w.body["status"]["applied"], 1);
    assert_eq!(
        (w.body["apiVersion"].as_str(), w.body["kind"].as_str()),
        (Some("faultline.dev/v1alpha1"), Some("NodeFaults"))
    );
    assert_eq!(rec.calls(), [Call::Apply("a".into())]);

    // A watch event adds b and c; c fails with its reason in the status.
    let w = modified(&batch_tx, &mut writes, 2, &["a", "b", "c"]).await;
    assert_eq!(
        states(&w.body["status"]),
        pairs(&[("a", "applied"), ("b", "applied"), ("c", "failed")])
    );
    assert_eq!(
        w.body["status"]["faults"][2]["reason"],
        "nft: Operation not permitted"
    );
    assert_eq!(w.body["status"]["applied"], 2);

    // The watch's version expires (410): the watcher re-lists. What is
    // applied is not applied again.
    let g2 = state.lock().expect("state").object.clone();
    batch_tx
        .send((
            g2,
            vec![json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1",
                "status": "Failure", "reason": "Expired", "code": 410, "message": "too old resource version", "metadata": {}}})],
        ))
        .expect("script");
    let lists_before = 1;
    let listed = state.clone();
    wait_blocking("a re-list", move || {
        let s = listed.lock().expect("state");
        (s.lists > lists_before && s.watches >= 3).then_some(())
    })
    .await;
    let applies = |rec: &Recording, id: &str| {
        rec.calls()
            .iter()
            .filter(|c| **c == Call::Apply(id.into()))
            .count()
    };
    assert_eq!(
        (applies(&rec, "a"), applies(&rec, "b")),
        (1, 1),
        "{:?}",
        rec.calls()
    );

    // a leaves the object: removed, and gone from the status.
    let w = modified(&batch_tx, &mut writes, 3, &["b"]).await;
    assert_eq!(states(&w.body["status"]), pairs(&[("b", "applied")]));
    assert!(rec.calls().contains(&Call::Remove("a".into())));
    assert_eq!(applies(&rec, "b"), 1, "{:?}", rec.calls());

    // The object is deleted: everything goes; the status write meets a 404.
    let g3 = state.lock().expect("state").object.clone();
    batch_tx
        .send((None, vec![json!({"type": "DELETED", "object": g3})]))
        .expect("script");
    let w = status_where(&mut writes, "no faults", |s| s["applied"] == 0).await;
    assert_eq!(states(&w.body["status"]), pairs(&[]));
    let calls = rec.calls();
    assert!(calls.contains(&Call::Remove("b".into())), "{calls:?}");
    assert_eq!(applies(&rec, "a") + applies(&rec, "b"), 2, "{calls:?}");

    tx.send(Event::Shutdown).expect("shutdown");
    let clean = tokio::task::spawn_blocking(move || looper.join().expect("loop"))
        .await
        .expect("join");
    assert!(clean);
    follower.abort();
    writer.abort();
    drop(batch_tx);
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_api_keeps_applied_faults_and_recovers() {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let api: kube::Api<NodeFaults> = kube::Api::all(client);
    let dir = tempfile::tempdir().expect("tmp");
    let rec = Recording::default();
    let agent = Agent::start(
        rec.clone(),
        Journal::open(dir.path()).expect("journal"),
        Desired::Unknown("waiting for the Kubernetes API".into()),
        Metrics::default(),
        jiff::Timestamp::now(),
    );
    let (tx, mut rx) = mpsc::channel::<Event>();
    let looper = std::thread::spawn(move || agent.run(&mut rx, &SystemClock));
    let follower = tokio::spawn(cluster::follow(api, NODE.into(), tx.clone()));

    // First list: a is desired and applied.
    let (req, send) = handle.next_request().await.expect("list");
    assert!(!req.uri().query().unwrap_or("").contains("watch=true"));
    send.send_response(respond(
        200,
        &json!({"apiVersion": "faultline.dev/v1alpha1", "kind": "NodeFaultsList",
                "metadata": {"resourceVersion": "5"}, "items": [object(1, "5", &["a"])]}),
    ));
    let rec2 = rec.clone();
    wait_blocking("a applied", move || {
        rec2.calls()
            .contains(&Call::Apply("a".into()))
            .then_some(())
    })
    .await;
    // The watch fails (the API server went away), twice.
    for _ in 0..2 {
        let (_, send) = handle.next_request().await.expect("watch");
        send.send_error(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "connection refused",
        ));
    }
    // Still applied: nothing was removed while the API was unreachable.
    assert_eq!(rec.calls(), [Call::Apply("a".into())]);
    // The API is back, with b added.
    let (req, send) = handle.next_request().await.expect("watch again");
    assert!(
        req.uri().query().unwrap_or("").contains("watch=true"),
        "{:?}",
        req.uri()
    );
    let g2 = object(2, "6", &["a", "b"]);
    send.send_response(
        Response::builder()
            .status(200)
            .body(Body::from(
                serde_json::to_vec(&json!({"type": "MODIFIED", "object": g2})).expect("json"),
            ))
            .expect("response"),
    );
    let rec2 = rec.clone();
    wait_blocking("b applied", move || {
        rec2.calls()
            .contains(&Call::Apply("b".into()))
            .then_some(())
    })
    .await;
    assert_eq!(
        rec.calls(),
        [Call::Apply("a".into()), Call::Apply("b".into())]
    );
    tx.send(Event::Shutdown).expect("shutdown");
    let clean = tokio::task::spawn_blocking(move || looper.join().expect("loop"))
        .await
        .expect("join");
    assert!(clean);
    follower.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_clock_behind_the_servers_ends_faults_by_the_servers_and_says_so() {
    // The API server's clock runs two minutes ahead of this node's: a real
    // server will not do that on demand, so this one is scripted.
    const AHEAD: i64 = 120;
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let (write_tx, mut writes) = tmpsc::unbounded_channel();
    let server = tokio::spawn(async move {
        while let Some((req, send)) = handle.next_request().await {
            let server_now = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(AHEAD);
            let date = jiff::fmt::rfc2822::DateTimePrinter::new()
                .timestamp_to_rfc9110_string(&server_now)
                .expect("date");
            let path = req.uri().path().to_owned();
            let body = if path == "/version" {
                json!({"major": "1", "minor": "37", "gitVersion": "v1.37.2"})
            } else {
                assert_eq!(path, format!("{PATH}/{NODE}/status"));
                let bytes = http_body_util::BodyExt::collect(req.into_body())
                    .await
                    .expect("body")
                    .to_bytes();
                let body: Value = serde_json::from_slice(&bytes).expect("status json");
                let _ = write_tx.send(StatusWrite {
                    content_type: String::new(),
                    query: String::new(),
                    body: body.clone(),
                });
                body
            };
            let mut response = respond(200, &body);
            response
                .headers_mut()
                .insert(http::header::DATE, date.parse().expect("header"));
            send.send_response(response);
        }
    });
    let clock = faultline_agent::skew::ServerAware::default();
    let (skew_tx, skew_rx) = tokio::sync::watch::channel(None);
    let measurer = tokio::spawn(faultline_agent::skew::measure(
        client.clone(),
        clock.skew.clone(),
        skew_tx,
    ));
    let dir = tempfile::tempdir().expect("tmp");
    let rec = Recording::default();
    let mut agent = Agent::start(
        rec.clone(),
        Journal::open(dir.path()).expect("journal"),
        Desired::Faults(Vec::new()),
        Metrics::default(),
        jiff::Timestamp::now(),
    );
    let (status_tx, status_rx) = tokio::sync::watch::channel(None);
    agent.report_to(status_tx);
    let (tx, mut rx) = mpsc::channel::<Event>();
    let skew = clock.skew.clone();
    let looper = std::thread::spawn(move || agent.run(&mut rx, &clock));
    let writer = tokio::spawn(cluster::write_status(
        kube::Api::all(client),
        NODE.into(),
        status_rx,
        skew_rx,
    ));
    let measured = skew.clone();
    wait_blocking("the skew measured", move || measured.get().map(|_| ())).await;

    // One minute left by this node's clock is a minute past by the
    // server's: the entry is over and never applied; one with three
    // minutes left by the node's clock is applied.
    let entry = |id: &str, secs: i64| {
        let mut f = fault(id);
        f["expiresAt"] =
            json!((jiff::Timestamp::now() + jiff::SignedDuration::from_secs(secs)).to_string());
        serde_json::from_value::<faultline_api::NodeFault>(f).expect("entry")
    };
    tx.send(Event::Versioned {
        desired: Desired::Faults(vec![entry("stale", 60), entry("live", 180)]),
        generation: 1,
    })
    .expect("send");
    let w = status_where(&mut writes, "generation 1 and the skew", |s| {
        s["observedGeneration"] == 1 && s["clockSkewSeconds"].is_i64()
    })
    .await;
    let reported = w.body["status"]["clockSkewSeconds"].as_i64().unwrap_or(0);
    assert!((AHEAD - 2..=AHEAD + 2).contains(&reported), "{}", w.body);
    assert_eq!(
        rec.calls(),
        [Call::Apply("live".into())],
        "the stale entry is not applied"
    );

    tx.send(Event::Shutdown).expect("shutdown");
    let clean = tokio::task::spawn_blocking(move || looper.join().expect("loop"))
        .await
        .expect("join");
    assert!(clean);
    measurer.abort();
    writer.abort();
    server.abort();
}
