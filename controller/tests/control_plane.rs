//! The chart and the controller on a real kube-apiserver (faultline-testkit's
//! control plane): the chart's RBAC and admission policy as installed, and
//! the `faultline-controller` binary acting as the chart's own
//! ServiceAccount — leader Lease, finalizer, server-side apply of NodeFaults
//! under one field manager per experiment, status, Events — through a
//! whole run and a deletion mid-run.

use std::time::Duration;

use faultline_testkit::{
    agents::report_applied,
    cluster::{Chart, ControlPlane, Options, eventually, faultline_api, gone, ready},
};
use k8s_openapi::api::coordination::v1::Lease;
use kube::{
    Api,
    api::{DynamicObject, Patch, PatchParams},
};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

fn nodefaults(client: &kube::Client) -> Api<DynamicObject> {
    faultline_api(client, "NodeFaults", None)
}

fn experiments(client: &kube::Client, ns: &str) -> Api<DynamicObject> {
    faultline_api(client, "Experiment", Some(ns))
}

/// `kubectl auth can-i VERB RESOURCE` as the identity in `kubeconfig`.
fn can_i(cp: &ControlPlane, kubeconfig: &std::path::Path, args: &[&str]) -> bool {
    let out = cp
        .kubectl()
        .env("KUBECONFIG", kubeconfig)
        .args(["auth", "can-i"])
        .args(args)
        .output()
        .expect("run kubectl");
    let answer = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        answer == "yes" || answer == "no",
        "kubectl auth can-i {args:?}: {answer} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    answer == "yes"
}

async fn installed() -> Option<(ControlPlane, Chart)> {
    let cp = ControlPlane::start(Options::default()).await?;
    let chart = cp.install_chart().await;
    for node in ["node-a", "node-b"] {
        cp.node(node).await;
    }
    Some((cp, chart))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_grants_its_accounts_what_they_need_and_no_more() {
    let Some((cp, chart)) = installed().await else {
        return;
    };
    let controller = cp.controller_kubeconfig(&chart).await;
    let agent_a = cp.agent_kubeconfig(&chart, "node-a").await;

    let table: &[(&std::path::Path, &[&str], bool)] = &[
        (&controller, &["list", "secrets", "-A"], false),
        (&controller, &["get", "secrets", "-n", "faultline"], false),
        (
            &controller,
            &["patch", "experiments.faultline.dev", "-A"],
            true,
        ),
        (
            &controller,
            &[
                "patch",
                "experiments.faultline.dev",
                "--subresource=status",
                "-A",
            ],
            true,
        ),
        (&controller, &["create", "nodefaults.faultline.dev"], true),
        (&controller, &["patch", "nodefaults.faultline.dev"], true),
        // The sweeper deletes objects left empty.
        (&controller, &["delete", "nodefaults.faultline.dev"], true),
        (&controller, &["watch", "pods", "-A"], true),
        (&controller, &["watch", "nodes"], true),
        (&controller, &["delete", "nodes"], false),
        (
            &controller,
            &["patch", "leases.coordination.k8s.io", "-n", "faultline"],
            false,
        ),
        (&controller, &["delete", "pods", "-n", "shop"], true),
        (
            &controller,
            &["create", "pods", "--subresource=eviction", "-n", "shop"],
            true,
        ),
        (
            &controller,
            &["create", "events.events.k8s.io", "-n", "shop"],
            true,
        ),
        (
            &controller,
            &["update", "leases.coordination.k8s.io", "-n", "faultline"],
            true,
        ),
        (
            &controller,
            &["update", "leases.coordination.k8s.io", "-n", "kube-system"],
            false,
        ),
        (&agent_a, &["watch", "nodefaults.faultline.dev"], true),
        (
            &agent_a,
            &["patch", "nodefaults.faultline.dev", "--subresource=status"],
            true,
        ),
        (&agent_a, &["patch", "nodefaults.faultline.dev"], false),
        (&agent_a, &["list", "secrets", "-A"], false),
        (&agent_a, &["list", "pods", "-A"], false),
    ];
    let wrong: Vec<String> = table
        .iter()
        .filter(|(who, args, want)| can_i(&cp, who, args) != *want)
        .map(|(who, args, want)| {
            format!(
                "{} {args:?}: expected {}",
                who.file_name().unwrap_or_default().to_string_lossy(),
                if *want { "yes" } else { "no" }
            )
        })
        .collect();
    assert!(wrong.is_empty(), "RBAC differs from the intent: {wrong:#?}");

    // RBAC lets an agent patch every NodeFaults status; the admission
    // policy narrows it to its own node's object.
    let admin = nodefaults(&cp.client().await);
    for node in ["node-a", "node-b"] {
        let object = json!({"apiVersion": "faultline.dev/v1alpha1", "kind": "NodeFaults",
            "metadata": {"name": node}, "spec": {"faults": []}});
        admin
            .patch(
                node,
                &PatchParams::apply("test").force(),
                &Patch::Apply(&object),
            )
            .await
            .expect("create a NodeFaults object");
    }
    let agent = nodefaults(&cp.client_for_kubeconfig(&agent_a).await);
    let status = |node: &str| {
        json!({"apiVersion": "faultline.dev/v1alpha1", "kind": "NodeFaults",
            "metadata": {"name": node}, "status": {"observedGeneration": 1, "applied": 0}})
    };
    let params = PatchParams::apply("faultline-agent").force();
    agent
        .patch_status("node-a", &params, &Patch::Apply(&status("node-a")))
        .await
        .expect("an agent writes its own node's status");
    match agent
        .patch_status("node-b", &params, &Patch::Apply(&status("node-b")))
        .await
    {
        Err(kube::Error::Api(e)) => assert!(
            e.message
                .contains("an agent writes only its own node's NodeFaults status"),
            "{e:?}"
        ),
        other => panic!("node-a's agent wrote node-b's status: {other:?}"),
    }
}

const SLOW_PAYMENTS: &str = "apiVersion: faultline.dev/v1alpha1
kind: Experiment
metadata: {name: slow-payments, namespace: shop}
spec:
  duration: DURATION
  targets:
    payments: {labels: {app: payments}}
  faults:
    - {name: slow, target: payments, latency: {delay: 300ms}}
";

/// The id of `fault`'s entry for `pod` of Experiment `name` in shop:
/// `EXPERIMENT-UID/FAULT/POD-UID`.
async fn entry_id(client: &kube::Client, name: &str, fault: &str, pod: &str) -> String {
    let exps = experiments(client, "shop");
    let uid = eventually(&format!("experiment {name}"), WAIT, || async {
        exps.get(name).await.ok()?.metadata.uid
    })
    .await;
    format!("{uid}/{fault}/{pod}")
}

/// The ids of the entries on `node` and the managers that hold fields there.
async fn node_state(api: &Api<DynamicObject>, node: &str) -> (Vec<String>, Vec<String>) {
    let Ok(object) = api.get(node).await else {
        return (Vec::new(), Vec::new());
    };
    let ids = object.data["spec"]["faults"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f["id"].as_str().map(str::to_owned))
        .collect();
    let managers = object
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|m| m.manager.clone())
        .collect();
    (ids, managers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_runs_an_experiment_as_its_service_account() {
    let Some((cp, chart)) = installed().await else {
        return;
    };
    cp.namespace("shop", true).await;
    let uids = cp.pods_on("shop", "payments", &["node-a", "node-b"]).await;
    let (p1, p2) = (&uids[0], &uids[1]);
    let kubeconfig = cp.controller_kubeconfig(&chart).await;
    // The nodes' agents confirm what is placed on them.
    let _agents = report_applied(cp.client().await, &["node-a", "node-b"]);
    // The API server's own certificate is what the https check trusts.
    let ca = cp.ca_file();
    let (_controller, metrics) = cp.start_controller_with_env(
        &kubeconfig,
        "controller-1",
        &["--lease-seconds", "6"],
        &[("SSL_CERT_FILE", ca.to_str().expect("utf-8 path"))],
    );
    let client = cp.client().await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "faultline");
    eventually("the controller to hold the Lease", WAIT, || async {
        let lease = leases.get("faultline-controller").await.ok()?;
        (lease.spec?.holder_identity? == "controller-1").then_some(())
    })
    .await;
    ready(metrics, WAIT).await;

    // An https check, before and after the fault, of a real TLS server.
    cp.apply(&format!(
        "{}  hypothesis:\n    - name: api answers\n      when: [before, after]\n      http: {{url: \"{}/livez\"}}\n",
        SLOW_PAYMENTS.replace("DURATION", "6s"),
        cp.url
    ));
    let exps = experiments(&client, "shop");
    let uid = exps
        .get("slow-payments")
        .await
        .expect("the experiment")
        .metadata
        .uid
        .expect("uid");
    let manager = format!("faultline.dev/experiment-{uid}");
    let nfs = nodefaults(&client);
    for (node, pod) in [("node-a", p1), ("node-b", p2)] {
        let (ids, managers) = eventually(&format!("the entry on {node}"), WAIT, || async {
            let state = node_state(&nfs, node).await;
            (!state.0.is_empty()).then_some(state)
        })
        .await;
        assert_eq!(ids, [entry_id(&client, "slow-payments", "slow", pod).await]);
        assert!(managers.contains(&manager), "{managers:?}");
    }
    let object = exps.get("slow-payments").await.expect("the experiment");
    assert_eq!(
        object.metadata.finalizers.unwrap_or_default(),
        ["faultline.dev/cleanup"]
    );
    eventually("the run to complete", WAIT, || async {
        let e = exps.get("slow-payments").await.ok()?;
        (e.data["status"]["phase"] == "Completed").then_some(())
    })
    .await;
    let status = exps.get("slow-payments").await.expect("experiment").data["status"].clone();
    assert_eq!(status["verdict"], "Passed", "{status}");
    assert_eq!(status["checks"][0]["passed"], true, "{status}");
    assert_eq!(status["checks"][0]["observed"], "HTTP 200", "{status}");
    assert!(
        serde_json::to_vec(&status).expect("json").len() < 4096,
        "status stays small: {status}"
    );
    // Entries gone, and the experiment's manager holds nothing any more:
    // objects do not grow run after run.
    for node in ["node-a", "node-b"] {
        let (ids, managers) = eventually(&format!("{node} emptied"), WAIT, || async {
            let state = node_state(&nfs, node).await;
            (state.0.is_empty() && !state.1.contains(&manager)).then_some(state)
        })
        .await;
        assert!(ids.is_empty(), "{ids:?} {managers:?}");
    }
    let events = cp
        .kubectl()
        .args(["get", "events.events.k8s.io", "-n", "shop", "-o", "json"])
        .output()
        .expect("kubectl get events");
    let events: Value = serde_json::from_slice(&events.stdout).expect("json");
    let reasons: Vec<&str> = events["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["regarding"]["name"] == "slow-payments")
        .filter_map(|e| e["reason"].as_str())
        .collect();
    assert!(reasons.contains(&"Started"), "{reasons:?}");

    // A finished run deleted goes at once; a running one, deleted, has
    // its finalizer take every entry away first.
    exps.delete("slow-payments", &Default::default())
        .await
        .expect("delete");
    gone(&exps, "slow-payments", WAIT).await;
    cp.apply(&SLOW_PAYMENTS.replace("DURATION", "10m"));
    eventually("entries of the second run", WAIT, || async {
        let (ids, _) = node_state(&nfs, "node-a").await;
        (!ids.is_empty()).then_some(())
    })
    .await;
    exps.delete("slow-payments", &Default::default())
        .await
        .expect("delete");
    gone(&exps, "slow-payments", WAIT).await;
    for node in ["node-a", "node-b"] {
        let (ids, _) = node_state(&nfs, node).await;
        assert!(ids.is_empty(), "{node} still holds {ids:?}");
    }
}

/// The generation of every NodeFaults object, by name.
async fn generations(api: &Api<DynamicObject>) -> Vec<(String, i64)> {
    api.list(&Default::default())
        .await
        .map(|l| {
            l.items
                .into_iter()
                .map(|o| {
                    (
                        o.metadata.name.unwrap_or_default(),
                        o.metadata.generation.unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_within_the_lease_and_the_run_goes_on() {
    let Some((cp, chart)) = installed().await else {
        return;
    };
    cp.namespace("shop", true).await;
    cp.pods_on("shop", "payments", &["node-a", "node-b"]).await;
    let kubeconfig = cp.controller_kubeconfig(&chart).await;
    // The nodes' agents confirm what is placed on them.
    let _agents = report_applied(cp.client().await, &["node-a", "node-b"]);
    let lease_args = ["--lease-seconds", "6"];
    let (mut first, _) = cp.start_controller(&kubeconfig, "controller-1", &lease_args);
    let client = cp.client().await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "faultline");
    let holder = || async {
        leases
            .get("faultline-controller")
            .await
            .ok()?
            .spec?
            .holder_identity
    };
    eventually("controller-1 leads", WAIT, || async {
        (holder().await? == "controller-1").then_some(())
    })
    .await;
    let (_second, _) = cp.start_controller(&kubeconfig, "controller-2", &lease_args);

    // A kill too: an agent kills once per entry id, so an entry written
    // again by the new leader would not kill twice, but one written anew
    // (another id) would.
    cp.apply(&format!(
        "{}    - {{name: kill, target: payments, kill: {{signal: SIGKILL}}}}\n",
        SLOW_PAYMENTS.replace("DURATION", "40s")
    ));
    let exps = experiments(&client, "shop");
    let nfs = nodefaults(&client);
    eventually("entries on both nodes", WAIT, || async {
        let a = node_state(&nfs, "node-a").await.0.len();
        let b = node_state(&nfs, "node-b").await.0.len();
        (a == 2 && b == 2).then_some(())
    })
    .await;
    let ids_before = node_state(&nfs, "node-a").await.0;
    let started = eventually("the run's start in its status", WAIT, || async {
        let e = exps.get("slow-payments").await.ok()?;
        let started = e.data["status"]["startedAt"].clone();
        started.is_string().then_some(started)
    })
    .await;
    let before = generations(&nfs).await;

    // The leader crashes; the standby takes the Lease once it expires.
    let _ = first.0.kill();
    let _ = first.0.wait();
    let took_over = std::time::Instant::now();
    eventually("controller-2 leads", WAIT, || async {
        (holder().await? == "controller-2").then_some(())
    })
    .await;
    assert!(
        took_over.elapsed() < Duration::from_secs(6 + 10),
        "took over after {:?}",
        took_over.elapsed()
    );
    // The new leader carries on the same run: same start, nothing rewritten.
    assert_eq!(node_state(&nfs, "node-a").await.0, ids_before);
    eventually(
        "the run to complete under controller-2",
        Duration::from_secs(60),
        || async {
            let e = exps.get("slow-payments").await.ok()?;
            (e.data["status"]["phase"] == "Completed").then_some(e)
        },
    )
    .await;
    let status = exps.get("slow-payments").await.expect("experiment").data["status"].clone();
    assert_eq!(
        status["startedAt"], started,
        "one run, not a restart: {status}"
    );
    assert_eq!(status["runs"], json!(1), "{status}");
    // The same entries throughout: one write placed each node's entries
    // and one removed them; the new
    // leader found the entries as wanted and wrote nothing in between.
    let after = generations(&nfs).await;
    for (node, generation) in &before {
        let now = after.iter().find(|(n, _)| n == node).map_or(0, |(_, g)| *g);
        assert_eq!(now, generation + 1, "{node}: {before:?} → {after:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_experiment_that_no_longer_decodes_is_invalid_alone() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let Some((cp, chart)) = installed().await else {
        return;
    };
    cp.namespace("shop", true).await;
    cp.pods_on("shop", "payments", &["node-a", "node-b"]).await;
    let kubeconfig = cp.controller_kubeconfig(&chart).await;
    let _agents = report_applied(cp.client().await, &["node-a", "node-b"]);
    let (_controller, _) = cp.start_controller(&kubeconfig, "controller-1", &[]);
    let client = cp.client().await;
    let exps = experiments(&client, "shop");
    let nfs = nodefaults(&client);
    // Running, with its entries placed and its finalizer on.
    cp.apply(
        &SLOW_PAYMENTS
            .replace("slow-payments", "turns-bad")
            .replace("DURATION", "10m"),
    );
    // Its entries' ids start with its uid.
    let bad = entry_id(&client, "turns-bad", "slow", "").await;
    eventually("its entries placed", WAIT, || async {
        let (ids, _) = node_state(&nfs, "node-a").await;
        ids.iter().any(|i| i.starts_with(&bad)).then_some(())
    })
    .await;

    // Under a looser CRD (as an older version was), its spec is changed
    // into something this controller cannot decode; then the CRD is put
    // back. The object stays as stored.
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let strict = crds
        .get("experiments.faultline.dev")
        .await
        .expect("the CRD");
    let mut loose = strict.clone();
    for v in &mut loose.spec.versions {
        if let Some(schema) = v
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            schema.x_kubernetes_validations = None;
            if let Some(props) = schema.properties.as_mut() {
                props.insert(
                    "spec".into(),
                    serde_json::from_value(
                        json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
                    )
                    .expect("schema"),
                );
            }
        }
    }
    crds.replace("experiments.faultline.dev", &Default::default(), &loose)
        .await
        .expect("loosen the CRD");
    eventually("the loose schema in force", WAIT, || async {
        exps.patch(
            "turns-bad",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"faults": [{"name": "slow", "target": "payments", "latency": {"delay": "very slow"}}]}})),
        )
        .await
        .ok()
    })
    .await;
    let mut back = crds
        .get("experiments.faultline.dev")
        .await
        .expect("the CRD");
    back.spec = strict.spec.clone();
    crds.replace("experiments.faultline.dev", &Default::default(), &back)
        .await
        .expect("restore the CRD");

    // A good one beside it runs as ever.
    cp.apply(&SLOW_PAYMENTS.replace("DURATION", "4s"));
    let status = eventually("the bad one marked Invalid", WAIT, || async {
        let e = exps.get("turns-bad").await.ok()?;
        (e.data["status"]["phase"] == "Invalid").then(|| e.data["status"].clone())
    })
    .await;
    let message = status["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("cannot read this Experiment") && message.contains("very slow"),
        "{status}"
    );
    eventually("its entries removed", WAIT, || async {
        let (ids, _) = node_state(&nfs, "node-a").await;
        (!ids.iter().any(|i| i.starts_with(&bad))).then_some(())
    })
    .await;
    let good = eventually(
        "the good one completes",
        Duration::from_secs(60),
        || async {
            let e = exps.get("slow-payments").await.ok()?;
            (e.data["status"]["phase"] == "Completed").then(|| e.data["status"].clone())
        },
    )
    .await;
    assert_eq!(good["verdict"], "Passed", "{good}");
    // Deleted, it goes: its finalizer is taken off.
    exps.delete("turns-bad", &Default::default())
        .await
        .expect("delete");
    gone(&exps, "turns-bad", WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_write_shows_as_degraded_and_clears_when_allowed() {
    use k8s_openapi::api::rbac::v1::ClusterRole;
    let Some((cp, chart)) = installed().await else {
        return;
    };
    cp.namespace("shop", true).await;
    cp.pods_on("shop", "payments", &["node-a", "node-b"]).await;
    let kubeconfig = cp.controller_kubeconfig(&chart).await;
    let _agents = report_applied(cp.client().await, &["node-a", "node-b"]);
    let client = cp.client().await;
    // The controller may no longer write NodeFaults: a refusal that
    // asking again will not change.
    let roles: Api<ClusterRole> = Api::all(client.clone());
    let role_name = format!("{}-controller", chart.fullname());
    let granted = roles.get(&role_name).await.expect("the controller's role");
    let mut narrowed = granted.clone();
    for rule in narrowed.rules.iter_mut().flatten() {
        if rule.resources.iter().flatten().any(|r| r == "nodefaults") {
            rule.verbs.retain(|v| v != "create" && v != "patch");
        }
    }
    roles
        .replace(&role_name, &Default::default(), &narrowed)
        .await
        .expect("narrow the role");
    let (_controller, metrics) = cp.start_controller(&kubeconfig, "controller-1", &[]);
    // Long enough to outlast the refusal: the run's clock starts when its
    // start is recorded, before the first refused write.
    cp.apply(&SLOW_PAYMENTS.replace("DURATION", "30s"));
    let exps = experiments(&client, "shop");
    let degraded = |e: &DynamicObject| {
        e.data["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "Degraded")
            .cloned()
    };
    let condition = eventually("Degraded, with the API's word", WAIT, || async {
        degraded(&exps.get("slow-payments").await.ok()?)
    })
    .await;
    assert_eq!(condition["status"], "True", "{condition}");
    assert_eq!(condition["reason"], "Forbidden", "{condition}");
    // The run's start was recorded before its first write was tried.
    let started =
        exps.get("slow-payments").await.expect("experiment").data["status"]["startedAt"].clone();
    assert!(started.is_string(), "{started}");
    assert!(
        condition["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("403: ") && m.contains("nodefaults")),
        "{condition}"
    );
    let (_, body) = faultline_testkit::http(metrics, "GET", "/metrics", &[], b"")
        .await
        .expect("metrics");
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.lines().any(|l| l.starts_with(
            "faultline_controller_reconcile_errors_total{kind=\"permanent\",reason=\"Forbidden\"}"
        )),
        "{text}"
    );

    // Allowed again: the run goes on at the next try and the condition goes.
    let mut back = roles.get(&role_name).await.expect("the role");
    back.rules = granted.rules.clone();
    roles
        .replace(&role_name, &Default::default(), &back)
        .await
        .expect("restore the role");
    // Cleared by the first reconcile that goes through, just after the
    // status it writes: at worst a whole backoff (a minute, ±25 %) away if
    // a retry raced the role's change.
    let status = eventually(
        "the run completes, not Degraded",
        Duration::from_secs(150),
        || async {
            let e = exps.get("slow-payments").await.ok()?;
            (e.data["status"]["phase"] == "Completed" && degraded(&e).is_none()).then_some(e)
        },
    )
    .await;
    assert_eq!(
        status.data["status"]["startedAt"], started,
        "the same run, resumed: {:?}",
        status.data["status"]
    );
    assert_eq!(status.data["status"]["runs"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leftovers_are_swept_and_a_deleted_object_is_written_again() {
    let Some((cp, chart)) = installed().await else {
        return;
    };
    cp.namespace("shop", true).await;
    let pods = cp.pods_on("shop", "payments", &["node-a"]).await;
    let kubeconfig = cp.controller_kubeconfig(&chart).await;
    let _agents = report_applied(cp.client().await, &["node-a"]);
    let (_controller, _) =
        cp.start_controller(&kubeconfig, "controller-1", &["--sweep-every", "1s"]);
    let client = cp.client().await;
    let nfs = nodefaults(&client);
    let exps = experiments(&client, "shop");
    cp.apply(&SLOW_PAYMENTS.replace("DURATION", "10m"));
    let first = entry_id(&client, "slow-payments", "slow", &pods[0]).await;
    eventually("the entry on node-a", WAIT, || async {
        (node_state(&nfs, "node-a").await.0 == [first.clone()]).then_some(())
    })
    .await;
    // Owned by its Node.
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    let node_uid = nodes.get("node-a").await.expect("node-a").metadata.uid;
    let object = nfs.get("node-a").await.expect("node-a's object");
    let owners = object.metadata.owner_references.unwrap_or_default();
    assert_eq!(
        owners
            .iter()
            .map(|o| (o.kind.as_str(), o.name.as_str(), Some(o.uid.clone())))
            .collect::<Vec<_>>(),
        [("Node", "node-a", node_uid)]
    );

    // Deleted by hand: written again.
    nfs.delete("node-a", &Default::default())
        .await
        .expect("delete node-a's object");
    eventually("node-a's object written again", WAIT, || async {
        let o = nfs.get("node-a").await.ok()?;
        (o.metadata.deletion_timestamp.is_none()
            && node_state(&nfs, "node-a").await.0 == [first.clone()])
        .then_some(())
    })
    .await;

    // The Experiment goes without its clean-up (its finalizer taken off by
    // hand): its entries are swept, then the empty object.
    exps.patch(
        "slow-payments",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .expect("drop the finalizer");
    exps.delete("slow-payments", &Default::default())
        .await
        .expect("delete");
    gone(&nfs, "node-a", WAIT).await;

    // The same name again is another experiment: its own entry only.
    cp.apply(&SLOW_PAYMENTS.replace("DURATION", "10m"));
    let second = eventually("the new experiment's uid", WAIT, || async {
        let uid = exps.get("slow-payments").await.ok()?.metadata.uid?;
        (!first.starts_with(&uid)).then_some(format!("{uid}/slow/{}", pods[0]))
    })
    .await;
    eventually("the new entry on node-a", WAIT, || async {
        (node_state(&nfs, "node-a").await.0 == [second.clone()]).then_some(())
    })
    .await;
}

/// `faultline_controller_leader` of the controller serving `metrics`.
async fn leads(metrics: std::net::SocketAddr) -> Option<bool> {
    let (_, body) = faultline_testkit::http(metrics, "GET", "/metrics", &[], b"")
        .await
        .ok()?;
    let text = String::from_utf8_lossy(&body);
    let value = text
        .lines()
        .find_map(|l| l.strip_prefix("faultline_controller_leader "))?;
    Some(value.trim() == "1")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standbys_are_ready_hand_over_on_sigterm_and_a_cut_off_leader_steps_down() {
    let Some((mut cp, chart)) = installed().await else {
        return;
    };
    cp.namespace("shop", true).await;
    cp.pods_on("shop", "payments", &["node-a", "node-b"]).await;
    let kubeconfig = cp.controller_kubeconfig(&chart).await;
    let _agents = report_applied(cp.client().await, &["node-a", "node-b"]);
    // A long lease: handing over by SIGTERM must be much quicker than
    // waiting for it to expire. Entries need no renewal within the run
    // (`--fault-lease`), so every write is counted below.
    let lease_args = ["--lease-seconds", "24", "--fault-lease", "5m"];
    let (mut first, first_metrics) = cp.start_controller(&kubeconfig, "controller-1", &lease_args);
    let client = cp.client().await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "faultline");
    let holder = || async {
        leases
            .get("faultline-controller")
            .await
            .ok()?
            .spec?
            .holder_identity
    };
    eventually("controller-1 leads", WAIT, || async {
        (holder().await? == "controller-1").then_some(())
    })
    .await;
    let (second, second_metrics) = cp.start_controller(&kubeconfig, "controller-2", &lease_args);
    // The standby is warm: ready, and not leading.
    ready(second_metrics, WAIT).await;
    assert_eq!(leads(second_metrics).await, Some(false));
    assert_eq!(leads(first_metrics).await, Some(true));

    cp.apply(&SLOW_PAYMENTS.replace("DURATION", "90s"));
    let exps = experiments(&client, "shop");
    let nfs = nodefaults(&client);
    eventually("entries on both nodes", WAIT, || async {
        let a = node_state(&nfs, "node-a").await.0.len();
        let b = node_state(&nfs, "node-b").await.0.len();
        (a == 1 && b == 1).then_some(())
    })
    .await;
    let before = generations(&nfs).await;

    // An upgrade, as a rolling update does it: a new replica comes up and
    // is ready, the old one gets SIGTERM and lets go of the Lease, which a
    // standby takes at its next look — well before it would have expired.
    let sigterm = |child: &mut faultline_testkit::KillOnDrop| {
        let pid = rustix::process::Pid::from_raw(child.0.id() as i32).expect("pid");
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM");
        child.0.wait().expect("wait")
    };
    let (third, third_metrics) = cp.start_controller(&kubeconfig, "controller-3", &lease_args);
    ready(third_metrics, WAIT).await;
    let handed = std::time::Instant::now();
    assert!(sigterm(&mut first).success(), "controller-1 stops cleanly");
    let next = eventually("a standby leads", WAIT, || async {
        holder().await.filter(|h| h != "controller-1")
    })
    .await;
    assert!(
        handed.elapsed() < Duration::from_secs(16),
        "handed over after {:?}: the Lease was not let go",
        handed.elapsed()
    );
    let (mut leader, leader_metrics, standby_metrics) = if next == "controller-2" {
        (second, second_metrics, third_metrics)
    } else {
        (third, third_metrics, second_metrics)
    };
    eventually("the new leader says so", WAIT, || async {
        leads(leader_metrics).await?.then_some(())
    })
    .await;

    // The API goes away: the leader cannot renew, and stops leading on its
    // own within two thirds of the lease, before anyone could take over.
    cp.stop_apiserver();
    let cut = std::time::Instant::now();
    eventually(
        "the cut-off leader steps down",
        Duration::from_secs(30),
        || async { (!leads(leader_metrics).await?).then_some(()) },
    )
    .await;
    assert!(
        cut.elapsed() < Duration::from_secs(24),
        "stepped down after {:?}, past the lease",
        cut.elapsed()
    );
    assert_eq!(leads(standby_metrics).await, Some(false));
    cp.start_apiserver().await;
    let client = cp.client().await;
    let exps_after = experiments(&client, "shop");
    let nfs = nodefaults(&client);
    eventually("someone leads again", Duration::from_secs(60), || async {
        let a = leads(leader_metrics).await?;
        let b = leads(standby_metrics).await?;
        (a || b).then_some(())
    })
    .await;
    drop(exps);
    // One run throughout: the same entries, written once to place and
    // once to remove.
    let status = eventually("the run to complete", Duration::from_secs(120), || async {
        let e = exps_after.get("slow-payments").await.ok()?;
        (e.data["status"]["phase"] == "Completed").then(|| e.data["status"].clone())
    })
    .await;
    assert_eq!(status["runs"], json!(1), "{status}");
    let after = generations(&nfs).await;
    for (node, generation) in &before {
        let now = after.iter().find(|(n, _)| n == node).map_or(0, |(_, g)| *g);
        assert_eq!(now, generation + 1, "{node}: {before:?} → {after:?}");
    }
    assert!(sigterm(&mut leader).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_recover_from_410_gone_and_a_recreated_pod_gets_the_fault() {
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::{ListParams, WatchParams};
    // Watches served by etcd itself (no watch cache, which answers an old
    // resourceVersion with the current state instead), compacted every
    // second: a watch resumed after a restart meets 410 Gone.
    // The audit log shows the controller's own list calls.
    let options = Options {
        compaction_interval: Some(Duration::from_secs(1)),
        watch_cache: false,
        audit_users: vec!["system:serviceaccount:faultline:faultline-controller".into()],
        ..Options::default()
    };
    let Some(mut cp) = ControlPlane::start(options).await else {
        return;
    };
    let chart = cp.install_chart().await;
    for node in ["node-a", "node-b"] {
        cp.node(node).await;
    }
    cp.namespace("shop", true).await;
    let old_uid = cp
        .running_pod(
            "shop",
            "payments-1",
            json!({"app": "payments"}),
            "node-a",
            "10.0.0.1",
        )
        .await;
    let kubeconfig = cp.controller_kubeconfig(&chart).await;
    // The nodes' agents confirm what is placed on them.
    let _agents = report_applied(cp.client().await, &["node-a", "node-b"]);
    // A long lease: the pause below must not cost it the lead.
    let (controller, _) =
        cp.start_controller(&kubeconfig, "controller-1", &["--lease-seconds", "120"]);
    cp.apply(&SLOW_PAYMENTS.replace("DURATION", "10m"));
    let client = cp.client().await;
    let nfs = nodefaults(&client);
    let old_entry = entry_id(&client, "slow-payments", "slow", &old_uid).await;
    eventually("the entry on node-a", WAIT, || async {
        let (ids, _) = node_state(&nfs, "node-a").await;
        (ids == [old_entry.clone()]).then_some(())
    })
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "shop");
    let seen = pods
        .list(&ListParams::default())
        .await
        .expect("list pods")
        .metadata
        .resource_version
        .expect("a resourceVersion");

    // Restarted, with writes in between and etcd compacted: every watch
    // the controller resumes from where it was is too old. The controller
    // is paused meanwhile, so it cannot resume before the compaction.
    let pid = rustix::process::Pid::from_raw(controller.0.id() as i32).expect("pid");
    rustix::process::kill_process(pid, rustix::process::Signal::STOP).expect("SIGSTOP");
    cp.stop_apiserver();
    cp.start_apiserver().await;
    let client = cp.client().await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "shop");
    let nfs = nodefaults(&client);
    cp.running_pod(
        "shop",
        "payments-2",
        json!({"app": "payments"}),
        "node-b",
        "10.0.0.2",
    )
    .await;
    eventually(
        "a watch from before the restart to be gone",
        WAIT,
        || async {
            match pods.watch(&WatchParams::default(), &seen).await {
                Err(kube::Error::Api(e)) if e.code == 410 => Some(()),
                Ok(stream) => {
                    use futures::StreamExt;
                    // The server answers 200 and sends the 410 as the first event.
                    let first = Box::pin(stream).next().await;
                    matches!(first, Some(Ok(kube::api::WatchEvent::Error(ref e))) if e.code == 410)
                        .then_some(())
                }
                Err(_) => None,
            }
        },
    )
    .await;
    let pod_lists = || {
        std::fs::read_to_string(cp.dir().join("audit.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("\"verb\":\"list\"") && l.contains("\"resource\":\"pods\""))
            .count()
    };
    let lists_before = pod_lists();
    rustix::process::kill_process(pid, rustix::process::Signal::CONT).expect("SIGCONT");
    let new_pod = eventually("the new pod's entry on node-b", WAIT, || async {
        let (ids, _) = node_state(&nfs, "node-b").await;
        (ids.len() == 1).then_some(ids)
    })
    .await;
    let prefix = entry_id(&client, "slow-payments", "slow", "").await;
    assert!(new_pod[0].starts_with(&prefix), "{new_pod:?}");
    assert!(
        pod_lists() > lists_before,
        "the controller met 410 Gone and listed pods again"
    );

    // The pod deleted and recreated under the same name: a new uid, and
    // the fault follows it.
    cp.delete_pod("shop", "payments-1").await;
    gone(&pods, "payments-1", WAIT).await;
    let new_uid = cp
        .running_pod(
            "shop",
            "payments-1",
            json!({"app": "payments"}),
            "node-a",
            "10.0.0.3",
        )
        .await;
    assert_ne!(new_uid, old_uid);
    eventually("the fault on the recreated pod", WAIT, || async {
        let (ids, _) = node_state(&nfs, "node-a").await;
        (ids == [format!("{prefix}{new_uid}")]).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_experiment_runs_at_its_next_start_and_a_deleted_node_loses_its_pods() {
    let options = Options {
        controller_manager: true,
        ..Options::default()
    };
    let Some(cp) = ControlPlane::start(options).await else {
        return;
    };
    let chart = cp.install_chart().await;
    for node in ["node-a", "node-b"] {
        cp.node(node).await;
    }
    cp.namespace("shop", true).await;
    cp.pods_on("shop", "payments", &["node-a", "node-b"]).await;
    let kubeconfig = cp.controller_kubeconfig(&chart).await;
    // The nodes' agents confirm what is placed on them.
    let _agents = report_applied(cp.client().await, &["node-a", "node-b"]);
    let (_controller, _) = cp.start_controller(&kubeconfig, "controller-1", &[]);
    // Every minute: the next start is at most a minute away.
    cp.apply(
        &SLOW_PAYMENTS
            .replace("DURATION", "3m")
            .replace("spec:\n", "spec:\n  schedule: \"* * * * *\"\n"),
    );
    let client = cp.client().await;
    let exps = experiments(&client, "shop");
    let next = eventually("a planned start", WAIT, || async {
        let e = exps.get("slow-payments").await.ok()?;
        e.data["status"]["nextRunAt"].as_str().map(str::to_owned)
    })
    .await;
    let nfs = nodefaults(&client);
    let status = eventually(
        "the run at its start time",
        Duration::from_secs(90),
        || async {
            let e = exps.get("slow-payments").await.ok()?;
            (e.data["status"]["phase"] == "Running").then(|| e.data["status"].clone())
        },
    )
    .await;
    assert_eq!(
        status["startedAt"].as_str(),
        Some(next.as_str()),
        "{status}"
    );
    eventually("entries on both nodes", WAIT, || async {
        let a = node_state(&nfs, "node-a").await.0.len();
        let b = node_state(&nfs, "node-b").await.0.len();
        (a == 1 && b == 1).then_some(())
    })
    .await;

    // node-b goes; the controller-manager's pod GC deletes its pods, and
    // the run drops their entries and goes on with node-a's.
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    nodes
        .delete("node-b", &Default::default())
        .await
        .expect("delete node-b");
    eventually(
        "node-b's entry removed",
        Duration::from_secs(90),
        || async { node_state(&nfs, "node-b").await.0.is_empty().then_some(()) },
    )
    .await;
    assert_eq!(node_state(&nfs, "node-a").await.0.len(), 1);
    let e = exps.get("slow-payments").await.expect("experiment");
    assert_eq!(e.data["status"]["phase"], "Running", "{}", e.data["status"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_experiments_share_a_node_and_an_unopted_namespace_is_refused() {
    let Some((cp, chart)) = installed().await else {
        return;
    };
    cp.namespace("shop", true).await;
    cp.namespace("bank", false).await;
    let pod = cp
        .running_pod(
            "shop",
            "payments-1",
            json!({"app": "payments"}),
            "node-a",
            "10.0.0.1",
        )
        .await;
    cp.running_pod(
        "bank",
        "ledger-1",
        json!({"app": "ledger"}),
        "node-a",
        "10.0.0.7",
    )
    .await;
    let kubeconfig = cp.controller_kubeconfig(&chart).await;
    // The nodes' agents confirm what is placed on them.
    let _agents = report_applied(cp.client().await, &["node-a", "node-b"]);
    let (_controller, _) = cp.start_controller(&kubeconfig, "controller-1", &[]);
    let client = cp.client().await;
    let nfs = nodefaults(&client);

    // Two experiments' entries on one object, each under its own manager:
    // the short one ends and takes only its own.
    cp.apply(&SLOW_PAYMENTS.replace("DURATION", "10m"));
    cp.apply(
        &SLOW_PAYMENTS
            .replace("DURATION", "10s")
            .replace("name: slow-payments", "name: brief"),
    );
    let both = [
        entry_id(&client, "brief", "slow", &pod).await,
        entry_id(&client, "slow-payments", "slow", &pod).await,
    ];
    eventually("both entries on node-a", WAIT, || async {
        let (mut ids, _) = node_state(&nfs, "node-a").await;
        let mut want = both.to_vec();
        ids.sort();
        want.sort();
        (ids == want).then_some(())
    })
    .await;
    let (_, managers) = eventually("one entry left on node-a", WAIT, || async {
        let state = node_state(&nfs, "node-a").await;
        (state.0 == [both[1].clone()]).then_some(state)
    })
    .await;
    let brief = experiments(&client, "shop")
        .get("brief")
        .await
        .expect("brief")
        .metadata
        .uid
        .expect("uid");
    assert!(
        !managers.contains(&format!("faultline.dev/experiment-{brief}")),
        "{managers:?}"
    );

    // A namespace not labelled faultline.dev/enabled: refused at admission
    // when the Experiment lives there; from another namespace (whose
    // labels admission cannot read) by the controller, nothing placed.
    let cut_ledger = |ns: &str, targets: &str| {
        format!(
            "apiVersion: faultline.dev/v1alpha1
kind: Experiment
metadata: {{name: cut-ledger, namespace: {ns}}}
spec:
  duration: 1m
  targets:
    ledger: {{{targets}labels: {{app: ledger}}}}
  faults:
    - {{name: cut, target: ledger, partition: {{peers: [10.0.0.0/8]}}}}
"
        )
    };
    let e = cp
        .apply_as(None, &cut_ledger("bank", ""))
        .expect_err("refused at admission");
    assert!(
        e.contains("namespace bank is targeted but not opted in"),
        "{e}"
    );
    cp.apply(&cut_ledger("shop", "namespaces: [bank], "));
    let bank = experiments(&client, "shop");
    let status = eventually("the run refused", WAIT, || async {
        let e = bank.get("cut-ledger").await.ok()?;
        (e.data["status"]["verdict"] == "Aborted").then(|| e.data["status"].clone())
    })
    .await;
    let message = status["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("namespace bank is not opted in"),
        "{status}"
    );
    assert!(message.contains("faultline.dev/enabled=true"), "{status}");
    let (ids, _) = node_state(&nfs, "node-a").await;
    assert!(!ids.iter().any(|id| id.starts_with("bank/")), "{ids:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protected_namespaces_and_host_network_pods_are_never_targets() {
    let Some((cp, chart)) = installed().await else {
        return;
    };
    cp.namespace("shop", true).await;
    // Opted in, and still never a target: the cluster's own namespaces,
    // the controller's, and any labelled faultline.dev/protected=true.
    cp.namespace("kube-system", true).await;
    cp.namespace("vault", true).await;
    let labelled = cp
        .kubectl()
        .args([
            "label",
            "namespace",
            "vault",
            "faultline.dev/protected=true",
        ])
        .output()
        .expect("kubectl label");
    assert!(labelled.status.success(), "{labelled:?}");
    let pod = cp
        .running_pod(
            "shop",
            "payments-1",
            json!({"app": "payments"}),
            "node-a",
            "10.0.0.1",
        )
        .await;
    // In the node's own network namespace: a fault on it would be on the node.
    cp.pod_with_spec(
        "shop",
        "payments-host",
        json!({"app": "payments"}),
        "node-b",
        "127.0.0.1",
        json!({"hostNetwork": true}),
    )
    .await;
    for ns in ["kube-system", "vault"] {
        cp.running_pod(ns, "dns-1", json!({"app": "dns"}), "node-a", "10.0.0.9")
            .await;
    }
    let kubeconfig = cp.controller_kubeconfig(&chart).await;
    let _agents = report_applied(cp.client().await, &["node-a", "node-b"]);
    let (_controller, _) = cp.start_controller(&kubeconfig, "controller-1", &[]);
    let client = cp.client().await;
    let nfs = nodefaults(&client);

    cp.apply(&SLOW_PAYMENTS.replace("DURATION", "10m"));
    let entry = entry_id(&client, "slow-payments", "slow", &pod).await;
    eventually("the ordinary pod's entry on node-a", WAIT, || async {
        let (ids, _) = node_state(&nfs, "node-a").await;
        (ids == [entry.clone()]).then_some(())
    })
    .await;
    let exps = experiments(&client, "shop");
    let status = eventually("the run placed", WAIT, || async {
        let e = exps.get("slow-payments").await.ok()?;
        (e.data["status"]["injected"] == 1).then(|| e.data["status"].clone())
    })
    .await;
    assert_eq!(
        status["targets"], 1,
        "the host-network pod is no target: {status}"
    );
    let (ids, _) = node_state(&nfs, "node-b").await;
    assert!(ids.is_empty(), "nothing for the host-network pod: {ids:?}");

    // The cluster's own namespaces are refused at admission already; one
    // labelled protected (which admission cannot see from another
    // namespace) by the controller.
    for (name, ns) in [("cut-dns", "kube-system"), ("cut-vault", "vault")] {
        let refused = cp.apply_as(
            None,
            &format!(
                "apiVersion: faultline.dev/v1alpha1
kind: Experiment
metadata: {{name: {name}, namespace: shop}}
spec:
  duration: 1m
  targets:
    dns: {{namespaces: [{ns}], labels: {{app: dns}}}}
  faults:
    - {{name: cut, target: dns, partition: {{peers: [10.0.0.0/8]}}}}
"
            ),
        );
        if ns == "kube-system" {
            let e = refused.expect_err("admission refuses kube-system");
            assert!(
                e.contains("kube-system, kube-public, kube-node-lease and faultline are protected"),
                "{e}"
            );
            continue;
        }
        refused.expect("admitted: vault's label is not visible from shop");
        let status = eventually("the run refused", WAIT, || async {
            let e = exps.get(name).await.ok()?;
            (e.data["status"]["verdict"] == "Aborted").then(|| e.data["status"].clone())
        })
        .await;
        let message = status["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(&format!("namespace {ns} is protected")),
            "{status}"
        );
    }
    let (ids, _) = node_state(&nfs, "node-a").await;
    assert_eq!(
        ids.len(),
        1,
        "nothing placed in a protected namespace: {ids:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_share_ceiling_refuses_a_run_that_would_take_too_much_of_a_target() {
    let Some((cp, chart)) = installed().await else {
        return;
    };
    cp.namespace("shop", true).await;
    cp.pods_on("shop", "payments", &["node-a", "node-b"]).await;
    let kubeconfig = cp.controller_kubeconfig(&chart).await;
    let _agents = report_applied(cp.client().await, &["node-a", "node-b"]);
    // As the chart sets it for ceilings.maxPercent: 50.
    let (_controller, _) =
        cp.start_controller(&kubeconfig, "controller-1", &["--max-percent", "50"]);
    let exps = experiments(&cp.client().await, "shop");
    let slow = |name: &str, mode: &str| {
        format!(
            "apiVersion: faultline.dev/v1alpha1
kind: Experiment
metadata: {{name: {name}, namespace: shop}}
spec:
  duration: 1m
  targets:
    payments: {{labels: {{app: payments}}, {mode}}}
  faults:
    - {{name: slow, target: payments, latency: {{delay: 300ms}}}}
"
        )
    };
    // Both of two pods: admitted (a count, not a share), refused at start.
    cp.apply(&slow("both", "mode: fixed, value: 2"));
    let status = eventually("the run refused", WAIT, || async {
        let e = exps.get("both").await.ok()?;
        (e.data["status"]["verdict"] == "Aborted").then(|| e.data["status"].clone())
    })
    .await;
    assert!(
        status["message"].as_str().unwrap_or_default().contains(
            "target payments would take 2 of the 2 pods it matches, more than limits.maxPercent = 50%"
        ),
        "{status}"
    );
    assert_eq!(status["injected"].as_u64().unwrap_or(0), 0, "{status}");
    // One of two is half: it runs.
    cp.apply(&slow("one", "mode: one"));
    eventually("the run placed", WAIT, || async {
        let e = exps.get("one").await.ok()?;
        (e.data["status"]["injected"] == 1).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kills_by_eviction_respect_disruption_budgets_and_force_delete_does_not() {
    // The disruption controller keeps the budget's status.
    let options = Options {
        controller_manager: true,
        ..Options::default()
    };
    let Some(cp) = ControlPlane::start(options).await else {
        return;
    };
    let chart = cp.install_chart().await;
    cp.node("node-a").await;
    cp.namespace("shop", true).await;
    cp.running_pod(
        "shop",
        "payments-1",
        json!({"app": "payments"}),
        "node-a",
        "10.0.0.1",
    )
    .await;
    cp.apply(
        "apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: payments, namespace: shop}
spec:
  minAvailable: 1
  selector: {matchLabels: {app: payments}}
",
    );
    let client = cp.client().await;
    let pdbs: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        "shop",
        &kube::discovery::ApiResource::from_gvk(&kube::core::GroupVersionKind::gvk(
            "policy",
            "v1",
            "PodDisruptionBudget",
        )),
    );
    eventually("the budget counted", WAIT, || async {
        let p = pdbs.get("payments").await.ok()?;
        (p.data["status"]["currentHealthy"] == 1).then_some(())
    })
    .await;
    let kubeconfig = cp.controller_kubeconfig(&chart).await;
    let _agents = report_applied(cp.client().await, &["node-a"]);
    let (_controller, _) = cp.start_controller(&kubeconfig, "controller-1", &[]);
    let exps = experiments(&client, "shop");
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), "shop");
    let kill = |name: &str, method: &str| {
        format!(
            "apiVersion: faultline.dev/v1alpha1
kind: Experiment
metadata: {{name: {name}, namespace: shop}}
spec:
  duration: 6s
  confirmTimeout: 3s
  targets:
    payments: {{labels: {{app: payments}}}}
  faults:
    - {{name: kill, target: payments, kill: {{method: {method}}}}}
"
        )
    };
    let finished = |name: &'static str| {
        let exps = exps.clone();
        async move {
            eventually("the run's end", Duration::from_secs(60), || async {
                let e = exps.get(name).await.ok()?;
                let s = &e.data["status"];
                (s["phase"] == "Completed" || s["phase"] == "Recovered").then(|| s.clone())
            })
            .await
        }
    };

    // The budget allows no disruption: the eviction is refused, counted,
    // and the run cannot be carried out (Broken), the pod untouched.
    cp.apply(&kill("evict", "delete"));
    let status = finished("evict").await;
    assert_eq!(status["verdict"], "Broken", "{status}");
    let message = status["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("eviction of shop/payments-1 refused"),
        "{status}"
    );
    assert!(
        status["faults"][0]["evictionsRefused"].as_u64() >= Some(1),
        "{status}"
    );
    let pod = pods
        .get("payments-1")
        .await
        .expect("the pod is still there");
    assert!(pod.metadata.deletion_timestamp.is_none());

    // force-delete is the explicit way past the budget.
    cp.apply(&kill("force", "force-delete"));
    let status = finished("force").await;
    assert_eq!(status["verdict"], "Passed", "{status}");
    assert_eq!(
        status["faults"][0]["effect"],
        json!({"count": 1, "what": "pods deleted"}),
        "{status}"
    );
    let gone = pods
        .get_opt("payments-1")
        .await
        .expect("get")
        .is_none_or(|p| p.metadata.deletion_timestamp.is_some());
    assert!(gone, "deleted past the budget");

    // A budget that allows it: the evictions go through, several at once.
    let replicas = ["payments-2", "payments-3", "payments-4"];
    for (i, name) in replicas.iter().enumerate() {
        cp.running_pod(
            "shop",
            name,
            json!({"app": "payments"}),
            "node-a",
            &format!("10.0.0.{}", i + 2),
        )
        .await;
    }
    cp.apply(
        "apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: payments, namespace: shop}
spec:
  minAvailable: 0
  selector: {matchLabels: {app: payments}}
",
    );
    eventually("the budget allowing three disruptions", WAIT, || async {
        let p = pdbs.get("payments").await.ok()?;
        (p.data["status"]["disruptionsAllowed"].as_u64() >= Some(3)).then_some(())
    })
    .await;
    cp.apply(&kill("allowed", "delete"));
    let status = finished("allowed").await;
    assert_eq!(status["verdict"], "Passed", "{status}");
    assert_eq!(
        status["faults"][0]["effect"],
        json!({"count": 3, "what": "pods evicted"}),
        "{status}"
    );
    for name in replicas {
        let evicted = pods
            .get_opt(name)
            .await
            .expect("get")
            .is_none_or(|p| p.metadata.deletion_timestamp.is_some());
        assert!(evicted, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_asks_who_may_fault_each_namespace_and_holds_the_ceilings() {
    let Some((cp, _chart)) = installed().await else {
        return;
    };
    for ns in ["team-a", "team-b"] {
        cp.namespace(ns, true).await;
    }
    cp.namespace("unopted", false).await;
    // Alice owns team-a: she may write Experiments there and delete and
    // patch its pods; nothing in team-b.
    cp.apply(
        "apiVersion: v1
kind: ServiceAccount
metadata: {name: alice, namespace: team-a}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: chaos, namespace: team-a}
rules:
  - {apiGroups: [faultline.dev], resources: [experiments], verbs: [get, list, create, update, patch]}
  - {apiGroups: [''], resources: [pods], verbs: [get, list, delete, patch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: alice-chaos, namespace: team-a}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: chaos}
subjects: [{kind: ServiceAccount, name: alice, namespace: team-a}]
",
    );
    let token = cp.token("team-a", "alice", None).await;
    let alice = cp.kubeconfig_with_token("alice", &token);
    let experiment = |name: &str, ns: &str, extra: &str, targets: &str, fault: &str| {
        format!(
            "apiVersion: faultline.dev/v1alpha1
kind: Experiment
metadata: {{name: {name}, namespace: {ns}}}
spec:
  duration: 1m
{extra}  targets:
    t: {{{targets}labels: {{app: payments}}}}
  faults:
    - {{name: f, target: t, {fault}}}
"
        )
    };
    let kill = "kill: {}";
    let cut = "partition: {peers: [10.0.0.0/8]}";
    // Her own namespace: allowed, for kills and network faults alike.
    cp.apply_as(Some(&alice), &experiment("own", "team-a", "", "", kill))
        .expect("alice may fault team-a");
    cp.apply_as(Some(&alice), &experiment("own-cut", "team-a", "", "", cut))
        .expect("alice may cut team-a");
    // Another team's: refused, whatever the fault.
    for fault in [kill, cut] {
        let e = cp
            .apply_as(
                Some(&alice),
                &experiment("theirs", "team-a", "", "namespaces: [team-b], ", fault),
            )
            .expect_err("alice may not fault team-b");
        assert!(e.contains("you may not fault every namespace"), "{e}");
    }
    // The administrator may; ceilings and protection hold for everyone.
    cp.apply_as(
        None,
        &experiment("admin", "team-a", "", "namespaces: [team-b], ", kill),
    )
    .expect("the administrator may fault team-b");
    let refusals = [
        (
            experiment("long", "team-a", "", "", kill).replace("duration: 1m", "duration: 5h"),
            "an Experiment lasts at most 4h",
        ),
        (
            experiment("wide", "team-a", "  limits: {maxTargets: 500}\n", "", kill),
            "limits.maxTargets is at most 100",
        ),
        (
            experiment("system", "team-a", "", "namespaces: [kube-public], ", kill),
            "are protected",
        ),
        (
            experiment("unopted", "unopted", "", "", kill),
            "namespace unopted is targeted but not opted in",
        ),
    ];
    for (yaml, why) in refusals {
        let e = cp.apply_as(None, &yaml).expect_err(why);
        assert!(e.contains(why), "{why}: {e}");
    }
    // An abort annotation changes no fault: no right over the pods needed.
    let annotate = cp
        .kubectl()
        .arg("--kubeconfig")
        .arg(&alice)
        .args([
            "annotate",
            "experiment",
            "admin",
            "-n",
            "team-a",
            "faultline.dev/abort=stop",
        ])
        .output()
        .expect("kubectl annotate");
    assert!(
        annotate.status.success(),
        "{}",
        String::from_utf8_lossy(&annotate.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_uninstall_leaves_no_entry_run_or_finalizer_behind() {
    let Some((cp, chart)) = installed().await else {
        return;
    };
    cp.namespace("shop", true).await;
    cp.pods_on("shop", "payments", &["node-a", "node-b"]).await;
    let kubeconfig = cp.controller_kubeconfig(&chart).await;
    let _agents = report_applied(cp.client().await, &["node-a", "node-b"]);
    let (mut controller, _) = cp.start_controller(&kubeconfig, "controller-1", &[]);
    cp.apply(&SLOW_PAYMENTS.replace("DURATION", "10m"));
    let client = cp.client().await;
    let exps = experiments(&client, "shop");
    let nfs = nodefaults(&client);
    eventually("the run placed", WAIT, || async {
        let e = exps.get("slow-payments").await.ok()?;
        (e.data["status"]["injected"] == 2).then_some(())
    })
    .await;
    // helm uninstall: the controller goes with its Deployment; then the
    // post-delete hook runs as its own ServiceAccount.
    let _ = controller.0.kill();
    let _ = controller.0.wait();
    let token = cp
        .token(
            &chart.namespace,
            &format!("{}-uninstall", chart.fullname()),
            None,
        )
        .await;
    let hook = cp.kubeconfig_with_token("uninstall", &token);
    let out = std::process::Command::new(faultline_testkit::cluster::workspace_bin(
        "faultline-controller",
    ))
    .env("KUBECONFIG", &hook)
    .env_remove("KUBERNETES_SERVICE_HOST")
    .arg("--uninstall")
    .output()
    .expect("run the hook");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("nodefaults_deleted=2"), "{log}");
    assert!(log.contains("runs_ended=1"), "{log}");
    let left = nfs.list(&Default::default()).await.expect("list");
    assert!(left.items.is_empty(), "no NodeFaults left");
    let e = exps.get("slow-payments").await.expect("still there");
    assert_eq!(e.data["status"]["verdict"], "Aborted", "{:?}", e.data);
    assert_eq!(
        e.data["status"]["message"],
        "Faultline was uninstalled; every fault was removed"
    );
    assert!(e.metadata.finalizers.unwrap_or_default().is_empty());
    // Nothing holds it any more: it goes at once.
    exps.delete("slow-payments", &Default::default())
        .await
        .expect("delete");
    gone(&exps, "slow-payments", Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dead_mans_switch_bounds_every_entry_by_the_lease() {
    let Some((cp, chart)) = installed().await else {
        return;
    };
    cp.namespace("shop", true).await;
    cp.running_pod(
        "shop",
        "payments-1",
        json!({"app": "payments"}),
        "node-a",
        "10.0.0.1",
    )
    .await;
    let kubeconfig = cp.controller_kubeconfig(&chart).await;
    let _agents = report_applied(cp.client().await, &["node-a", "node-b"]);
    let (mut controller, _) =
        cp.start_controller(&kubeconfig, "controller-1", &["--fault-lease", "6s"]);
    let client = cp.client().await;
    let nfs = nodefaults(&client);
    let expires = || async {
        let nf = nfs.get("node-a").await.ok()?;
        let at = nf.data["spec"]["faults"][0]["expiresAt"].as_str()?;
        at.parse::<jiff::Timestamp>().ok()
    };
    // A 10-minute fault: its entry expires within one lease, renewed
    // every half lease while the controller runs.
    cp.apply(&SLOW_PAYMENTS.replace("DURATION", "10m"));
    let first = eventually("the entry placed", WAIT, || async { expires().await }).await;
    let ahead = first.duration_since(jiff::Timestamp::now());
    assert!(
        ahead <= jiff::SignedDuration::from_secs(7),
        "expires {ahead:?} ahead, more than a lease"
    );
    let renewed = eventually("the lease renewed", WAIT, || async {
        expires().await.filter(|t| *t > first)
    })
    .await;
    assert!(renewed.duration_since(first) >= jiff::SignedDuration::from_secs(2));

    // The controller gone, nobody renews: the entry's end comes within a
    // lease, and an agent removes the fault then on its own.
    let _ = controller.0.kill();
    let _ = controller.0.wait();
    let killed = jiff::Timestamp::now();
    let last = expires().await.expect("the entry stays in the spec");
    assert!(
        last.duration_since(killed) <= jiff::SignedDuration::from_secs(7),
        "{last} is more than a lease after {killed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abort_check_nobody_can_read_aborts_the_run_within_its_grace() {
    use faultline_testkit::{KillOnDrop, cluster::workspace_bin, free_port};
    let Some((cp, chart)) = installed().await else {
        return;
    };
    cp.namespace("shop", true).await;
    cp.running_pod(
        "shop",
        "payments-1",
        json!({"app": "payments"}),
        "node-a",
        "10.0.0.1",
    )
    .await;
    let api = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let otlp_http = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    // The observer wants a token; the controller reads it from a file, as
    // from a mounted Secret.
    let token_file = cp.dir().join("observer-token");
    std::fs::write(&token_file, "t0ken\n").expect("write the token");
    let mut observer = KillOnDrop(
        std::process::Command::new(workspace_bin("faultline-observer"))
            .arg("--token-file")
            .arg(&token_file)
            .arg("--otlp-grpc")
            .arg(format!("127.0.0.1:{}", free_port()))
            .arg("--otlp-http")
            .arg(otlp_http.to_string())
            .arg("--api")
            .arg(api.to_string())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start faultline-observer"),
    );
    let bearer = ("authorization", "Bearer t0ken");
    eventually("the observer's API", WAIT, || async {
        faultline_testkit::http(api, "GET", "/api/v1/services", &[bearer], b"")
            .await
            .ok()
            .filter(|(status, _)| *status == 200)
    })
    .await;
    // One span of checkout's, in OTLP/JSON: the observer knows the service
    // (an unknown one is never judged), its window almost empty.
    let now = jiff::Timestamp::now().as_nanosecond();
    let span = json!({"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "checkout"}}]},
        "scopeSpans": [{"spans": [{
            "traceId": "5b8efff798038103d269b633813fc60c",
            "spanId": "eee19b7ec3c1b174",
            "name": "GET /",
            "kind": 2,
            "startTimeUnixNano": (now - 2_000_000_000).to_string(),
            "endTimeUnixNano": (now - 1_000_000_000).to_string(),
        }]}],
    }]});
    let (status, body) = faultline_testkit::http(
        otlp_http,
        "POST",
        "/v1/traces",
        &[("content-type", "application/json"), bearer],
        span.to_string().as_bytes(),
    )
    .await
    .expect("the observer takes OTLP/JSON");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let kubeconfig = cp.controller_kubeconfig(&chart).await;
    // The nodes' agents confirm what is placed on them.
    let _agents = report_applied(cp.client().await, &["node-a", "node-b"]);
    let observer_url = format!("http://{api}");
    let (_controller, _) = cp.start_controller(
        &kubeconfig,
        "controller-1",
        &[
            "--observer",
            &observer_url,
            "--observer-token-file",
            token_file.to_str().expect("a path"),
            "--unseen-grace",
            "3s",
        ],
    );
    // minRequests 0: with the observer up, an empty window is judged met,
    // so only the observer's going can leave the check unjudged.
    cp.apply(&format!(
            "{}  abortGrace: 4s\n  hypothesis:\n    - errorRate: {{service: chekout, max: 5%}}\n  abort:\n    - errorRate: {{service: checkout, max: 50%, window: 10s, minRequests: 0}}\n",
            SLOW_PAYMENTS.replace("DURATION", "5m")
        ),
    );
    let client = cp.client().await;
    let exps = experiments(&client, "shop");
    let nfs = nodefaults(&client);
    eventually("the abort check judged during the fault", WAIT, || async {
        let e = exps.get("slow-payments").await.ok()?;
        let judged = e.data["status"]["checks"]
            .as_array()?
            .iter()
            .any(|c| c["abort"] == true && c["lastJudgedAt"].is_string());
        let placed = node_state(&nfs, "node-a").await.0.len() == 1;
        (judged && placed).then_some(())
    })
    .await;

    // A service the observer has no figures for is not judged, and says so.
    let typo = eventually("the misnamed check evaluated", WAIT, || async {
        let e = exps.get("slow-payments").await.ok()?;
        e.data["status"]["checks"]
            .as_array()?
            .iter()
            .find(|c| c["abort"] != true && c["evaluations"].as_u64() > Some(0))
            .cloned()
    })
    .await;
    assert!(typo["passed"].is_null(), "{typo}");
    assert!(
        typo["notJudged"]
            .as_str()
            .is_some_and(|m| m.contains("no figures for service \"chekout\"")),
        "{typo}"
    );
    // Past the grace, an Event names it once, with the likely name.
    let said = eventually("an UnseenService Event", WAIT, || async {
        let out = cp
            .kubectl()
            .args(["get", "events.events.k8s.io", "-n", "shop", "-o", "json"])
            .output()
            .ok()?;
        let events: Value = serde_json::from_slice(&out.stdout).ok()?;
        let notes: Vec<String> = events["items"]
            .as_array()?
            .iter()
            .filter(|e| e["reason"] == "UnseenService")
            .filter_map(|e| e["note"].as_str().map(str::to_owned))
            .collect();
        (!notes.is_empty()).then_some(notes)
    })
    .await;
    assert_eq!(said.len(), 1, "once per run: {said:?}");
    assert!(
        said[0].contains("\"chekout\"")
            && said[0].contains("did you mean")
            && said[0].contains("checkout"),
        "{said:?}"
    );

    let _ = observer.0.kill();
    let _ = observer.0.wait();
    let status = eventually("the run aborted", WAIT, || async {
        let e = exps.get("slow-payments").await.ok()?;
        (e.data["status"]["verdict"] == "Aborted").then(|| e.data["status"].clone())
    })
    .await;
    let message = status["message"].as_str().unwrap_or_default();
    assert!(message.contains("could not be judged for 4s"), "{status}");
    // By the controller's clock (whole seconds): aborted within the grace
    // and two seconds of the last judgement.
    let time = |v: &serde_json::Value| {
        v.as_str()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            .expect("a time")
    };
    let judged = status["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["abort"] == true)
        .map(|c| time(&c["lastJudgedAt"]))
        .expect("the abort check");
    let took = time(&status["finishedAt"]).duration_since(judged);
    assert!(
        took.as_secs() >= 3 && took.as_secs() <= 6,
        "aborted {took:?} after the last judgement: {status}"
    );
    eventually("every fault gone", WAIT, || async {
        node_state(&nfs, "node-a").await.0.is_empty().then_some(())
    })
    .await;
}
