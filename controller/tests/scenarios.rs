//! Reconcile scenarios against a mocked API server (faultline-testkit): the
//! real controller (watches, finalizer, planning, server-side apply, status,
//! Events) runs; the test plays the user and the cluster, and moves the
//! controller's clock by hand.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use faultline_controller::{
    metrics::Metrics,
    observe::ObserverClient,
    reconcile::{self, Settings},
};
use faultline_testkit::kube::{ApiServer, Write, until};
use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};
use tokio::{sync::oneshot, task::JoinHandle};

const WAIT: Duration = Duration::from_secs(20);

/// A running controller on the mocked API server.
struct Controller {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
    /// The nodes' agents, confirming what is placed.
    agents: JoinHandle<()>,
}

impl Controller {
    async fn start(server: &ApiServer, clock: &Arc<Mutex<Timestamp>>) -> Controller {
        Controller::start_with(server, clock, Settings::default().writing_per_step).await
    }

    /// With each step starting NodeFaults writes for `writing_per_step`.
    async fn start_with(
        server: &ApiServer,
        clock: &Arc<Mutex<Timestamp>>,
        writing_per_step: Duration,
    ) -> Controller {
        // Spans get real ids (nothing is exported), so entries carry a traceparent.
        opentelemetry::global::set_tracer_provider(
            opentelemetry_sdk::trace::SdkTracerProvider::builder().build(),
        );
        // The controller's log shows with a failing test's output.
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "faultline_controller=debug".into()),
            )
            .try_init();
        let clock = clock.clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let (ctx, task) = reconcile::start(
            server.client(),
            ObserverClient::new(None),
            Arc::new(move || *clock.lock().expect("clock")),
            Settings {
                tick: Duration::from_millis(40),
                check_every: Duration::from_millis(40),
                max_wait: Duration::from_millis(100),
                writing_per_step,
                ..Settings::default()
            },
            Metrics::default(),
            Some("test".into()),
            async {
                let _ = stopped.await;
            },
        );
        assert!(
            ctx.wait_ready(WAIT).await,
            "the controller never became ready"
        );

        let agents = {
            let server = server.clone();
            tokio::spawn(async move {
                loop {
                    server.report_applied();
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        };
        Controller {
            stop: Some(stop),
            task,
            agents,
        }
    }

    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = tokio::time::timeout(WAIT, &mut self.task).await;
        self.task.abort();
        self.agents.abort();
    }
}

fn clock() -> Arc<Mutex<Timestamp>> {
    Arc::new(Mutex::new("2026-03-01T10:00:00Z".parse().expect("time")))
}

fn advance(clock: &Arc<Mutex<Timestamp>>, secs: i64) {
    let mut c = clock.lock().expect("clock");
    *c += SignedDuration::from_secs(secs);
}

fn namespace(name: &str, opted_in: bool) -> Value {
    let labels = if opted_in {
        json!({"faultline.dev/enabled": "true"})
    } else {
        json!({})
    };
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
}

fn pod(name: &str, ns: &str, app: &str, node: &str, ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": ns, "labels": {"app": app}},
           "spec": {"nodeName": node, "containers": [{"name": "main", "image": "shop"}]},
           "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}})
}

fn experiment(name: &str, ns: &str, duration: &str, faults: Value) -> Value {
    json!({"apiVersion": "faultline.dev/v1alpha1", "kind": "Experiment",
           "metadata": {"name": name, "namespace": ns},
           "spec": {"duration": duration,
                    "targets": {"payments": {"labels": {"app": "payments"}},
                                "checkout": {"labels": {"app": "checkout"}}},
                    "faults": faults}})
}

fn slow_payments() -> Value {
    json!([{"name": "slow", "target": "payments", "latency": {"delay": "300ms"}}])
}

/// A shop: an opted-in namespace, two payments pods on node-a and node-b,
/// a checkout pod on node-a.
fn shop(server: &ApiServer) -> (String, String, String) {
    server.apply(namespace("shop", true));
    let p1 = server.apply(pod("payments-1", "shop", "payments", "node-a", "10.0.0.1"));
    let p2 = server.apply(pod("payments-2", "shop", "payments", "node-b", "10.0.0.2"));
    let c1 = server.apply(pod("checkout-1", "shop", "checkout", "node-a", "10.0.0.9"));
    let uid = |p: &Value| p["metadata"]["uid"].as_str().expect("uid").to_owned();
    (uid(&p1), uid(&p2), uid(&c1))
}

/// The entry ids on `node`, each experiment's uid shown as
/// `NAMESPACE/NAME` for reading.
fn ids(server: &ApiServer, node: &str) -> Vec<String> {
    let names: std::collections::HashMap<String, String> = server
        .list("Experiment")
        .iter()
        .filter_map(|e| {
            let m = &e["metadata"];
            Some((
                m["uid"].as_str()?.to_owned(),
                format!("{}/{}", m["namespace"].as_str()?, m["name"].as_str()?),
            ))
        })
        .collect();
    server
        .get("NodeFaults", None, node)
        .map(|nf| {
            nf["spec"]["faults"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|f| {
                    let id = f["id"].as_str().expect("id");
                    match id.split_once('/') {
                        Some((uid, rest)) if names.contains_key(uid) => {
                            format!("{}/{rest}", names[uid])
                        }
                        _ => id.to_owned(),
                    }
                })
                .collect::<Vec<_>>()
        })
        .map(|mut ids| {
            ids.sort();
            ids
        })
        .unwrap_or_default()
}

fn status(server: &ApiServer, ns: &str, name: &str) -> Value {
    server
        .get("Experiment", Some(ns), name)
        .map(|e| e["status"].clone())
        .unwrap_or(Value::Null)
}

/// Waits until the agents have confirmed every target's fault: before
/// the clock jumps past the confirmation timeout.
async fn confirmed(server: &ApiServer, ns: &str, name: &str) {
    until(&format!("{name}'s faults confirmed"), WAIT, || {
        let s = status(server, ns, name);
        s["injected"].as_u64() > Some(0) && s["injected"] == s["targets"]
    })
    .await;
}

fn phase(server: &ApiServer, ns: &str, name: &str) -> String {
    status(server, ns, name)["phase"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

fn reasons(server: &ApiServer) -> Vec<String> {
    server
        .events()
        .iter()
        .map(|e| e["reason"].as_str().unwrap_or("").to_owned())
        .collect()
}

fn nodefaults_writes(server: &ApiServer) -> Vec<Write> {
    server
        .writes()
        .into_iter()
        .filter(|w| w.path.contains("/nodefaults/"))
        .collect()
}

#[tokio::test]
async fn an_experiment_places_entries_on_its_targets_nodes_and_removes_them_at_the_end() {
    let server = ApiServer::new();
    let clock = clock();
    let (p1, p2, _) = shop(&server);
    let controller = Controller::start(&server, &clock).await;
    let exp = server.apply(experiment("slow", "shop", "60s", slow_payments()));
    let uid = exp["metadata"]["uid"].as_str().expect("uid").to_owned();

    until("entries on node-a and node-b", WAIT, || {
        ids(&server, "node-a") == [format!("shop/slow/slow/{p1}")]
            && ids(&server, "node-b") == [format!("shop/slow/slow/{p2}")]
    })
    .await;
    let object = server
        .get("Experiment", Some("shop"), "slow")
        .expect("experiment");
    assert_eq!(
        object["metadata"]["finalizers"],
        json!(["faultline.dev/cleanup"])
    );
    // Written by server-side apply, forced, under the experiment's own manager.
    let writes = nodefaults_writes(&server);
    assert!(!writes.is_empty());
    for w in &writes {
        assert_eq!(w.method, "PATCH");
        assert_eq!(w.content_type, "application/apply-patch+yaml");
        assert_eq!(
            w.field_manager().as_deref(),
            Some(format!("faultline.dev/experiment-{uid}").as_str())
        );
        assert!(w.query.contains("force=true"), "{}", w.query);
    }
    let entry = &server.get("NodeFaults", None, "node-a").expect("node-a")["spec"]["faults"][0];
    assert_eq!(entry["target"], json!({"pod": {"uid": p1}}));
    assert_eq!(entry["latency"]["delay"], json!("300ms"));
    assert_eq!(
        entry["expiresAt"],
        json!("2026-03-01T10:01:00Z"),
        "start + the fault's window"
    );
    let tp = entry["traceparent"].as_str().expect("traceparent");
    assert!(tp.starts_with("00-") && tp.len() == 55, "{tp}");

    until("status running", WAIT, || {
        let s = status(&server, "shop", "slow");
        s["phase"] == "Running" && s["injected"] == 2 && s["targets"] == 2
    })
    .await;
    assert!(reasons(&server).contains(&"Started".to_owned()));
    until("an Injected event", WAIT, || {
        reasons(&server).contains(&"Injected".to_owned())
    })
    .await;

    advance(&clock, 61);
    until("entries removed", WAIT, || {
        ids(&server, "node-a").is_empty() && ids(&server, "node-b").is_empty()
    })
    .await;
    until("verdict", WAIT, || {
        status(&server, "shop", "slow")["verdict"] == "Passed"
    })
    .await;
    let s = status(&server, "shop", "slow");
    assert_eq!(s["phase"], "Completed");
    assert_eq!(s["injected"], 0);
    assert_eq!(s["startedAt"], "2026-03-01T10:00:00Z");
    let succeeded = s["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .find(|c| c["type"] == "Succeeded")
        .expect("Succeeded condition");
    assert_eq!(succeeded["status"], "True");
    until("a Passed event", WAIT, || {
        reasons(&server).contains(&"Passed".to_owned())
    })
    .await;
    controller.stop().await;
}

#[tokio::test]
async fn a_pod_created_during_the_window_gets_the_fault_too() {
    let server = ApiServer::new();
    let clock = clock();
    shop(&server);
    let controller = Controller::start(&server, &clock).await;
    server.apply(experiment("slow", "shop", "60s", slow_payments()));
    until("first entries", WAIT, || ids(&server, "node-b").len() == 1).await;
    advance(&clock, 10);
    let p3 = server.apply(pod("payments-3", "shop", "payments", "node-c", "10.0.0.3"));
    let uid = p3["metadata"]["uid"].as_str().expect("uid").to_owned();
    until("the new pod's entry", WAIT, || {
        ids(&server, "node-c") == [format!("shop/slow/slow/{uid}")]
    })
    .await;
    // A deleted pod's entry goes (its replacement has its own).
    server.delete("Pod", Some("shop"), "payments-2");
    until("the deleted pod's entry removed", WAIT, || {
        ids(&server, "node-b").is_empty()
    })
    .await;
    controller.stop().await;
}

#[tokio::test]
async fn an_abort_removes_every_entry_at_once() {
    let server = ApiServer::new();
    let clock = clock();
    shop(&server);
    let controller = Controller::start(&server, &clock).await;
    let mut exp = experiment("slow", "shop", "60s", slow_payments());
    server.apply(exp.clone());
    until("entries", WAIT, || {
        ids(&server, "node-a").len() == 1 && ids(&server, "node-b").len() == 1
    })
    .await;
    exp["metadata"]["annotations"] = json!({"faultline.dev/abort": "game day called off"});
    server.apply(exp);
    until("entries removed", WAIT, || {
        ids(&server, "node-a").is_empty() && ids(&server, "node-b").is_empty()
    })
    .await;
    until("aborted", WAIT, || {
        status(&server, "shop", "slow")["verdict"] == "Aborted"
    })
    .await;
    let s = status(&server, "shop", "slow");
    assert_eq!(s["phase"], "Recovered");
    assert!(
        s["message"]
            .as_str()
            .expect("message")
            .contains("game day called off"),
        "{s}"
    );
    until("an Aborted event", WAIT, || {
        reasons(&server).contains(&"Aborted".to_owned())
    })
    .await;
    controller.stop().await;
}

#[tokio::test]
async fn a_step_writes_for_a_bounded_time_so_an_abort_does_not_wait_for_every_node() {
    const NODES: usize = 64;
    let server = ApiServer::new();
    let clock = clock();
    server.apply(namespace("shop", true));
    for i in 0..NODES {
        server.apply(pod(
            &format!("payments-{i}"),
            "shop",
            "payments",
            &format!("node-{i}"),
            &format!("10.0.1.{i}"),
        ));
    }
    // A busy API server: at 16 writes at once, every node's entries would
    // take four rounds of this.
    server.set_nodefaults_write_delay(Duration::from_millis(300));
    let controller = Controller::start_with(&server, &clock, Duration::from_millis(1)).await;
    let mut exp = experiment("slow", "shop", "60s", slow_payments());
    server.apply(exp.clone());
    let placed = |server: &ApiServer| {
        (0..NODES)
            .filter(|i| !ids(server, &format!("node-{i}")).is_empty())
            .count()
    };
    until("the first entries", WAIT, || placed(&server) > 0).await;
    exp["metadata"]["annotations"] = json!({"faultline.dev/abort": "stop placing"});
    server.apply(exp);
    until("aborted", WAIT, || {
        status(&server, "shop", "slow")["verdict"] == "Aborted"
    })
    .await;
    assert_eq!(placed(&server), 0, "every entry is gone once the run ended");
    let nodes_given_entries: std::collections::BTreeSet<String> = nodefaults_writes(&server)
        .into_iter()
        .filter(|w| {
            w.body["spec"]["faults"]
                .as_array()
                .is_some_and(|f| !f.is_empty())
        })
        .map(|w| w.path)
        .collect();
    assert!(
        nodes_given_entries.len() < NODES,
        "the abort was taken in between the steps placing entries, not after all {NODES} nodes got theirs"
    );
    controller.stop().await;
}

#[tokio::test]
async fn deleting_an_experiment_removes_its_entries_before_it_goes() {
    let server = ApiServer::new();
    let clock = clock();
    shop(&server);
    let controller = Controller::start(&server, &clock).await;
    server.apply(experiment("slow", "shop", "60s", slow_payments()));
    until("entries", WAIT, || ids(&server, "node-a").len() == 1).await;
    server.delete("Experiment", Some("shop"), "slow");
    until("experiment gone", WAIT, || {
        server.get("Experiment", Some("shop"), "slow").is_none()
    })
    .await;
    assert!(ids(&server, "node-a").is_empty() && ids(&server, "node-b").is_empty());
    controller.stop().await;
}

#[tokio::test]
async fn a_restarted_controller_continues_the_run_without_writing_anything_twice() {
    let server = ApiServer::new();
    let clock = clock();
    shop(&server);
    let first = Controller::start(&server, &clock).await;
    server.apply(experiment("slow", "shop", "60s", slow_payments()));
    until("entries", WAIT, || {
        ids(&server, "node-a").len() == 1 && ids(&server, "node-b").len() == 1
    })
    .await;
    until("status running, its faults confirmed", WAIT, || {
        let s = status(&server, "shop", "slow");
        s["phase"] == "Running" && s["injected"] == 2
    })
    .await;
    first.stop().await;
    let before = nodefaults_writes(&server).len();
    let status_before = status(&server, "shop", "slow");
    let node_a = server.get("NodeFaults", None, "node-a").expect("node-a");

    advance(&clock, 20);
    let second = Controller::start(&server, &clock).await;
    // The second controller steps the run and finds nothing to change:
    // not an entry, not the status.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        status(&server, "shop", "slow"),
        status_before,
        "the status stands as written"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        nodefaults_writes(&server).len(),
        before,
        "no entry written again"
    );
    assert_eq!(
        server.get("NodeFaults", None, "node-a").expect("node-a")["spec"],
        node_a["spec"]
    );
    assert_eq!(status(&server, "shop", "slow")["runs"], 1, "the same run");

    advance(&clock, 41);
    until("entries removed by the second controller", WAIT, || {
        ids(&server, "node-a").is_empty() && ids(&server, "node-b").is_empty()
    })
    .await;
    until("verdict", WAIT, || {
        status(&server, "shop", "slow")["verdict"] == "Passed"
    })
    .await;
    second.stop().await;
}

#[tokio::test]
async fn two_experiments_on_one_node_keep_each_others_entries() {
    let server = ApiServer::new();
    let clock = clock();
    let (p1, _, c1) = shop(&server);
    let controller = Controller::start(&server, &clock).await;
    server.apply(experiment("slow", "shop", "30s", slow_payments()));
    server.apply(experiment(
        "cut",
        "shop",
        "60s",
        json!([{"name": "cut", "target": "checkout", "partition": {"peers": ["payments"]}}]),
    ));
    until("both entries on node-a", WAIT, || {
        ids(&server, "node-a") == [format!("shop/cut/cut/{c1}"), format!("shop/slow/slow/{p1}")]
    })
    .await;
    let node_a = server.get("NodeFaults", None, "node-a").expect("node-a");
    let cut = node_a["spec"]["faults"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|f| f.get("partition").is_some())
        .expect("the cut entry");
    assert_eq!(
        cut["partition"]["peers"],
        json!(["10.0.0.1/32", "10.0.0.2/32"])
    );
    confirmed(&server, "shop", "slow").await;
    confirmed(&server, "shop", "cut").await;
    advance(&clock, 31);
    until("slow's entry gone, cut's kept", WAIT, || {
        ids(&server, "node-a") == [format!("shop/cut/cut/{c1}")]
    })
    .await;
    until("slow passed", WAIT, || {
        status(&server, "shop", "slow")["verdict"] == "Passed"
    })
    .await;
    assert_eq!(phase(&server, "shop", "cut"), "Running");
    controller.stop().await;
}

#[tokio::test]
async fn a_namespace_not_opted_in_is_refused_with_nothing_injected() {
    let server = ApiServer::new();
    let clock = clock();
    server.apply(namespace("prod", false));
    server.apply(pod("payments-1", "prod", "payments", "node-a", "10.0.0.1"));
    let controller = Controller::start(&server, &clock).await;
    server.apply(experiment("slow", "prod", "60s", slow_payments()));
    until("refused", WAIT, || {
        status(&server, "prod", "slow")["verdict"] == "Aborted"
    })
    .await;
    let s = status(&server, "prod", "slow");
    let message = s["message"].as_str().expect("message");
    assert!(
        message.contains("namespace prod is not opted in"),
        "{message}"
    );
    assert!(message.contains("faultline.dev/enabled=true"), "{message}");
    assert!(server.list("NodeFaults").is_empty(), "nothing written");
    controller.stop().await;
}

#[tokio::test]
async fn an_invalid_experiment_that_got_past_the_crd_is_marked_invalid() {
    let server = ApiServer::new();
    let clock = clock();
    shop(&server);
    let controller = Controller::start(&server, &clock).await;
    // The real API server's CEL rules refuse this; an older CRD would not.
    server.apply(experiment(
        "broken",
        "shop",
        "60s",
        json!([{"name": "slow", "target": "nobody", "latency": {"delay": "300ms"}}]),
    ));
    until("invalid", WAIT, || {
        phase(&server, "shop", "broken") == "Invalid"
    })
    .await;
    let s = status(&server, "shop", "broken");
    let message = s["message"].as_str().expect("message");
    assert!(message.contains("spec.faults[0].target"), "{message}");
    assert!(server.list("NodeFaults").is_empty(), "nothing injected");
    until("an Invalid event", WAIT, || {
        reasons(&server).contains(&"Invalid".to_owned())
    })
    .await;
    controller.stop().await;
}

#[tokio::test]
async fn a_delete_kill_evicts_pods_through_the_api_each_period() {
    let server = ApiServer::new();
    let clock = clock();
    let (p1, p2, _) = shop(&server);
    let controller = Controller::start(&server, &clock).await;
    server.apply(experiment(
        "kill",
        "shop",
        "60s",
        json!([{"name": "kill", "target": "payments", "kill": {"method": "delete", "every": "20s"}}]),
    ));
    let deletes = |server: &ApiServer| -> Vec<Write> {
        server
            .writes()
            .into_iter()
            .filter(|w| w.method == "POST" && w.path.ends_with("/eviction"))
            .collect()
    };
    until("both pods evicted", WAIT, || deletes(&server).len() == 2).await;
    let uids: Vec<String> = deletes(&server)
        .iter()
        .map(|w| {
            w.body["deleteOptions"]["preconditions"]["uid"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    assert!(
        uids.contains(&p1) && uids.contains(&p2),
        "uid preconditions: {uids:?} in {:?}",
        deletes(&server).first().map(|w| w.body.clone())
    );
    assert!(
        server.list("NodeFaults").is_empty(),
        "no agent entry for a delete kill"
    );
    until("a PodEvicted event", WAIT, || {
        reasons(&server).contains(&"PodEvicted".to_owned())
    })
    .await;
    // The Deployment's replacement is left alone until the next period.
    server.apply(pod("payments-3", "shop", "payments", "node-c", "10.0.0.3"));
    advance(&clock, 5);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(deletes(&server).len(), 2);
    advance(&clock, 15);
    until("the replacement evicted at 20 s", WAIT, || {
        deletes(&server).len() == 3
    })
    .await;
    controller.stop().await;
}

/// The shop with `nightly`, every 5 minutes, waiting for its first start
/// at 10:05; with the first payments pod's uid.
async fn nightly(server: &ApiServer, clock: &Arc<Mutex<Timestamp>>) -> (String, Controller) {
    let (p1, _, _) = shop(server);
    let controller = Controller::start(server, clock).await;
    let mut exp = experiment("nightly", "shop", "30s", slow_payments());
    exp["spec"]["schedule"] = json!("*/5 * * * *");
    server.apply(exp);
    until("the next start time", WAIT, || {
        status(server, "shop", "nightly")["nextRunAt"] == "2026-03-01T10:05:00Z"
    })
    .await;
    (p1, controller)
}

#[tokio::test]
async fn a_scheduled_experiment_runs_at_its_start_times_and_counts_missed_ones() {
    let server = ApiServer::new();
    let clock = clock(); // 10:00:00
    let (p1, controller) = nightly(&server, &clock).await;
    assert!(
        server.list("NodeFaults").is_empty(),
        "nothing before the start time"
    );
    advance(&clock, 300); // 10:05:00
    until("the first run", WAIT, || {
        ids(&server, "node-a") == [format!("shop/nightly/slow/{p1}")]
    })
    .await;
    assert_eq!(status(&server, "shop", "nightly")["runs"], 1);
    confirmed(&server, "shop", "nightly").await;
    advance(&clock, 31);
    until("the run's end and the next start", WAIT, || {
        let s = status(&server, "shop", "nightly");
        s["verdict"] == "Passed" && s["nextRunAt"] == "2026-03-01T10:10:00Z"
    })
    .await;
    assert!(ids(&server, "node-a").is_empty());
    // The controller is away at 10:10; it comes back at 10:16.
    controller.stop().await;
    advance(&clock, 11 * 60 - 31);
    let controller = Controller::start(&server, &clock).await;
    until(
        "the missed start counted, the next one planned",
        WAIT,
        || {
            let s = status(&server, "shop", "nightly");
            s["nextRunAt"] == "2026-03-01T10:20:00Z" && s["missedRuns"] == 2
        },
    )
    .await;
    assert!(
        server
            .list("NodeFaults")
            .iter()
            .all(|nf| nf["spec"]["faults"] == json!([]))
    );
    controller.stop().await;
}

#[tokio::test]
async fn between_runs_the_status_holds_the_schedule_and_an_edit_moves_the_next_start() {
    let server = ApiServer::new();
    let clock = clock(); // 10:00:00
    let (p1, controller) = nightly(&server, &clock).await;
    advance(&clock, 300); // 10:05:00
    until("the first run", WAIT, || {
        ids(&server, "node-a") == [format!("shop/nightly/slow/{p1}")]
    })
    .await;
    confirmed(&server, "shop", "nightly").await;
    advance(&clock, 31); // 10:05:31
    until("the run's end and the next start", WAIT, || {
        let s = status(&server, "shop", "nightly");
        s["verdict"] == "Passed" && s["nextRunAt"] == "2026-03-01T10:10:00Z"
    })
    .await;
    // The ended run is let go of; the edit is read against the status.
    let mut object = server
        .get("Experiment", Some("shop"), "nightly")
        .expect("nightly");
    object["spec"]["schedule"] = json!("*/7 * * * *");
    server.apply(object);
    until("the next start by the new schedule", WAIT, || {
        let s = status(&server, "shop", "nightly");
        s["nextRunAt"] == "2026-03-01T10:07:00Z" && s["observedGeneration"] == 2
    })
    .await;
    advance(&clock, 89); // 10:07:00
    until("the second run, at the new time", WAIT, || {
        status(&server, "shop", "nightly")["runs"] == 2
            && ids(&server, "node-a") == [format!("shop/nightly/slow/{p1}")]
    })
    .await;
    controller.stop().await;
}

#[tokio::test]
async fn an_abort_left_between_runs_does_not_stop_the_next_one() {
    let server = ApiServer::new();
    let clock = clock(); // 10:00:00
    let (p1, controller) = nightly(&server, &clock).await;
    // Aborted while nothing runs: there is nothing to stop.
    let mut object = server
        .get("Experiment", Some("shop"), "nightly")
        .expect("nightly");
    object["metadata"]["annotations"] = json!({"faultline.dev/abort": "stop it"});
    server.apply(object);
    until("the annotation taken off", WAIT, || {
        server
            .get("Experiment", Some("shop"), "nightly")
            .is_some_and(|o| {
                o["metadata"]["annotations"]
                    .get("faultline.dev/abort")
                    .is_none()
            })
    })
    .await;
    assert!(
        server
            .events()
            .iter()
            .any(|e| e["reason"] == "AbortIgnored"),
        "{:?}",
        server.events()
    );
    advance(&clock, 300); // 10:05:00
    until("the run, not aborted", WAIT, || {
        ids(&server, "node-a") == [format!("shop/nightly/slow/{p1}")]
    })
    .await;
    let s = status(&server, "shop", "nightly");
    assert!(
        (s["phase"] == "Injecting" || s["phase"] == "Running") && s["verdict"].is_null(),
        "{s}"
    );
    controller.stop().await;
}

#[tokio::test]
async fn runs_that_cannot_be_placed_or_judged_stop_with_the_reason() {
    let server = ApiServer::new();
    let clock = clock();
    shop(&server);
    // 70 payments pods: one partition would carry 72 peer addresses, more
    // than a NodeFaults entry may hold (64).
    for i in 0..70 {
        server.apply(pod(
            &format!("p-{i}"),
            "shop",
            "payments",
            "node-z",
            &format!("10.1.0.{i}"),
        ));
    }
    let controller = Controller::start(&server, &clock).await;
    server.apply(experiment(
        "wide",
        "shop",
        "60s",
        json!([{"name": "cut", "target": "checkout", "partition": {"peers": ["payments"]}}]),
    ));
    until("refused", WAIT, || {
        status(&server, "shop", "wide")["phase"] == "Recovered"
    })
    .await;
    let message = status(&server, "shop", "wide")["message"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    assert!(
        message.contains("cannot be written") && message.contains("peers"),
        "{message}"
    );
    assert!(
        server
            .list("NodeFaults")
            .iter()
            .all(|nf| nf["spec"]["faults"] == json!([]))
    );

    // Checks that read the observer, on a controller without one.
    let mut judged = experiment("judged", "shop", "60s", slow_payments());
    judged["spec"]["hypothesis"] = json!([{"errorRate": {"service": "checkout", "max": "5%"}}]);
    server.apply(judged);
    until("refused", WAIT, || {
        status(&server, "shop", "judged")["verdict"] == "Aborted"
    })
    .await;
    let message = status(&server, "shop", "judged")["message"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    assert!(message.contains("--observer"), "{message}");
    controller.stop().await;
}

#[tokio::test]
async fn a_spec_changed_mid_run_stops_it_and_an_abort_annotation_goes_with_its_run() {
    let server = ApiServer::new();
    let clock = clock();
    shop(&server);
    let controller = Controller::start(&server, &clock).await;
    let mut exp = experiment("slow", "shop", "60s", slow_payments());
    server.apply(exp.clone());
    until("entries", WAIT, || ids(&server, "node-a").len() == 1).await;
    exp["spec"]["duration"] = json!("90s");
    server.apply(exp);
    until("stopped", WAIT, || {
        status(&server, "shop", "slow")["verdict"] == "Aborted"
    })
    .await;
    assert!(ids(&server, "node-a").is_empty() && ids(&server, "node-b").is_empty());
    let message = status(&server, "shop", "slow")["message"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    assert!(message.contains("spec changed"), "{message}");

    // An abort of another run: once it has ended, the annotation is gone.
    let mut other = experiment("other", "shop", "60s", slow_payments());
    server.apply(other.clone());
    until("entries", WAIT, || ids(&server, "node-a").len() == 1).await;
    other["metadata"]["annotations"] = json!({"faultline.dev/abort": "enough"});
    server.apply(other);
    until("annotation removed", WAIT, || {
        server
            .get("Experiment", Some("shop"), "other")
            .is_some_and(|e| {
                e["metadata"]["annotations"]
                    .get("faultline.dev/abort")
                    .is_none()
            })
    })
    .await;
    assert_eq!(status(&server, "shop", "other")["verdict"], "Aborted");
    controller.stop().await;
}

#[tokio::test]
async fn with_the_api_unreachable_nothing_new_is_placed_and_the_run_recovers_after() {
    let server = ApiServer::new();
    let clock = clock();
    shop(&server);
    let controller = Controller::start(&server, &clock).await;
    server.apply(experiment("slow", "shop", "60s", slow_payments()));
    until("entries confirmed by their agents", WAIT, || {
        ids(&server, "node-b").len() == 1 && status(&server, "shop", "slow")["injected"] == 2
    })
    .await;
    server.set_down(true);
    let writes = server.writes().len();
    // A pod appears and the window passes while the API is down: nothing
    // is written (the agents remove the entries at their expiresAt).
    server.apply(pod("payments-3", "shop", "payments", "node-c", "10.0.0.3"));
    advance(&clock, 61);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(server.writes().len(), writes, "nothing reached the API");
    assert!(server.get("NodeFaults", None, "node-c").is_none());
    server.set_down(false);
    until("the run finished after the outage", WAIT, || {
        ids(&server, "node-a").is_empty()
            && ids(&server, "node-b").is_empty()
            && status(&server, "shop", "slow")["verdict"] == "Passed"
    })
    .await;
    assert!(ids(&server, "node-c").is_empty(), "nothing placed late");
    controller.stop().await;
}

#[tokio::test]
async fn an_entry_removed_by_hand_is_placed_again() {
    let server = ApiServer::new();
    let clock = clock();
    let (p1, _, _) = shop(&server);
    let controller = Controller::start(&server, &clock).await;
    server.apply(experiment("slow", "shop", "60s", slow_payments()));
    until("entries", WAIT, || ids(&server, "node-a").len() == 1).await;
    // Someone empties node-a's object (kubectl edit, a script).
    server.apply(
        json!({"apiVersion": "faultline.dev/v1alpha1", "kind": "NodeFaults",
                        "metadata": {"name": "node-a"}, "spec": {"faults": []}}),
    );
    until("the entry back", WAIT, || {
        ids(&server, "node-a") == [format!("shop/slow/slow/{p1}")]
    })
    .await;
    controller.stop().await;
}
