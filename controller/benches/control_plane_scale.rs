//! One experiment over every pod of a large cluster, on a real
//! kube-apiserver (faultline-testkit's control plane): NODES Node objects
//! and PODS running pods, the chart installed, the `faultline-controller`
//! binary acting as the chart's ServiceAccount. Prints the time from
//! `kubectl apply` to every NodeFaults entry written, the controller's
//! writes, the Experiment's status size, the controller's peak RSS and the
//! API requests it made (counted by the server's audit log).
//!
//! `cargo bench -p faultline-controller --bench control_plane_scale`
//! (FAULTLINE_CONTROL_PLANE from `scripts/control-plane.sh build`,
//! FAULTLINE_HELM as for the tests). FAULTLINE_SCALE_NODES and
//! FAULTLINE_SCALE_PODS change the size; FAULTLINE_CONTROLLER_WRAPPER runs
//! the controller under a profiler (`heaptrack -o /tmp/controller`; the
//! peak RSS printed is then the profiler's, not the controller's).

use std::time::{Duration, Instant};

use faultline_testkit::cluster::{ControlPlane, Options, eventually, faultline_api};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::{
    Api,
    api::{DynamicObject, Patch, PatchParams, PostParams},
};
use serde_json::json;

fn size(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The controller's peak resident set, from /proc.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches(" kB")
        .parse()
        .ok()
}

/// Total entries over every NodeFaults object, and how many objects.
async fn entries(api: &Api<DynamicObject>) -> (usize, usize) {
    let Ok(list) = api.list(&Default::default()).await else {
        return (0, 0);
    };
    let total = list
        .items
        .iter()
        .map(|o| o.data["spec"]["faults"].as_array().map_or(0, Vec::len))
        .sum();
    (total, list.items.len())
}

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::new("warn,kube_client=off"))
        .init();
    let nodes = size("FAULTLINE_SCALE_NODES", 500);
    let pods = size("FAULTLINE_SCALE_PODS", 20_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(bench(nodes, pods));
}

async fn bench(nodes: usize, pods: usize) {
    let controller_user = "system:serviceaccount:faultline:faultline-controller";
    let options = Options {
        audit_users: vec![controller_user.into()],
        ..Options::default()
    };
    // ControlPlane::start logs why when it cannot start.
    let Some(cp) = ControlPlane::start(options).await else {
        return;
    };
    let chart = cp.install_chart().await;
    cp.namespace("shop", true).await;
    let client = cp.client().await;

    let filling = Instant::now();
    let node_api: Api<Node> = Api::all(client.clone());
    let params = PatchParams::apply("faultline-bench").force();
    futures::stream::iter(0..nodes)
        .for_each_concurrent(32, |i| {
            let (api, params) = (&node_api, &params);
            async move {
                let name = format!("node-{i}");
                let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}});
                api.patch(&name, params, &Patch::Apply(&node))
                    .await
                    .expect("a node");
            }
        })
        .await;
    let pod_api: Api<Pod> = Api::namespaced(client.clone(), "shop");
    futures::stream::iter(0..pods)
        .for_each_concurrent(32, |i| {
            let (api, params) = (&pod_api, &params);
            async move {
                let name = format!("web-{i}");
                let ip = format!("10.{}.{}.{}", 64 + (i >> 16), (i >> 8) & 255, i & 255);
                let pod: Pod = serde_json::from_value(json!({"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": name, "labels": {"app": "web"}},
                    "spec": {"nodeName": format!("node-{}", i % nodes),
                             "containers": [{"name": "main", "image": "registry.invalid/web:1"}]}}))
                .expect("a pod");
                api.create(&PostParams::default(), &pod)
                    .await
                    .expect("a pod");
                let status = json!({"apiVersion": "v1", "kind": "Pod", "status": {
                    "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                    "conditions": [{"type": "Ready", "status": "True"}]}});
                api.patch_status(&name, params, &Patch::Apply(&status))
                    .await
                    .expect("a pod's status");
            }
        })
        .await;
    println!(
        "cluster: {nodes} nodes, {pods} running pods, made in {:.1} s",
        filling.elapsed().as_secs_f64()
    );

    let kubeconfig = cp.controller_kubeconfig(&chart).await;
    let (controller, metrics) = cp.start_controller(&kubeconfig, "controller-1", &[]);
    let pid = controller.0.id();
    eventually("the controller ready", Duration::from_secs(120), || async {
        let (status, _) = faultline_testkit::http(metrics, "GET", "/readyz", &[], b"")
            .await
            .ok()?;
        (status == 200).then_some(())
    })
    .await;
    let audit = cp.dir().join("audit.log");
    let requests_before = std::fs::read_to_string(&audit)
        .map(|t| t.lines().count())
        .unwrap_or(0);

    let metric = |text: &str, name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(f64::NAN)
    };
    let scrape = || async {
        let (_, body) = faultline_testkit::http(metrics, "GET", "/metrics", &[], b"")
            .await
            .expect("/metrics");
        String::from_utf8_lossy(&body).into_owned()
    };
    let sum = "faultline_controller_reconcile_duration_seconds_sum";
    let count = "faultline_controller_reconcile_duration_seconds_count";
    // Of each step, the time spent deciding (no API calls).
    let decide_sum = "faultline_controller_decide_duration_seconds_sum";
    let decide_count = "faultline_controller_decide_duration_seconds_count";
    let decide_ms = |text: &str, before: &str| {
        (metric(text, decide_sum) - metric(before, decide_sum))
            / (metric(text, decide_count) - metric(before, decide_count))
            * 1000.0
    };
    let before = scrape().await;
    let started = Instant::now();
    cp.apply(
        "apiVersion: faultline.dev/v1alpha1
kind: Experiment
metadata: {name: wide, namespace: shop}
spec:
  duration: 30m
  # No agents here: entries stay unconfirmed, and must not break the run
  # while the bench reads.
  confirmTimeout: 20m
  targets:
    web: {labels: {app: web}}
  faults:
    - {name: slow, target: web, latency: {delay: 100ms}}
",
    );
    let nf_api = faultline_api(&client, "NodeFaults", None);
    eventually("every entry written", Duration::from_secs(600), || async {
        let (total, objects) = entries(&nf_api).await;
        (total == pods && objects == nodes).then_some(())
    })
    .await;
    let placed = started.elapsed();
    let requests = std::fs::read_to_string(&audit)
        .map(|t| t.lines().count())
        .unwrap_or(0)
        - requests_before;

    let text = scrape().await;
    let writes = metric(&text, "faultline_controller_nodefaults_writes_total");
    let placing_steps = metric(&text, count) - metric(&before, count);
    let placing_ms = (metric(&text, sum) - metric(&before, sum)) / placing_steps * 1000.0;
    let placing_decide_ms = decide_ms(&text, &before);
    let text_placed = text.clone();
    let written_bytes: usize = nf_api
        .list(&Default::default())
        .await
        .map(|l| {
            l.items
                .iter()
                .map(|o| serde_json::to_vec(&o.data["spec"]).map_or(0, |v| v.len()))
                .sum()
        })
        .unwrap_or(0);
    // The run going on: steps that re-plan and find nothing to write.
    let (sum0, count0) = (metric(&text, sum), metric(&text, count));
    // At least three steps, or two minutes: a step at this size may take
    // longer than a tick.
    let watching = Instant::now();
    let text = loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let text = scrape().await;
        if metric(&text, count) - count0 >= 3.0 || watching.elapsed() > Duration::from_secs(120) {
            break text;
        }
    };
    let window = watching.elapsed().as_secs_f64();
    let steps = metric(&text, count) - count0;
    let step_ms = (metric(&text, sum) - sum0) / steps * 1000.0;
    let going_decide_ms = decide_ms(&text, &text_placed);
    let writes_after = metric(&text, "faultline_controller_nodefaults_writes_total") - writes;
    let exps = faultline_api(&client, "Experiment", Some("shop"));
    let status = eventually(
        "the status counting every target",
        Duration::from_secs(60),
        || async {
            let e = exps.get("wide").await.ok()?;
            (e.data["status"]["targets"] == json!(pods)).then(|| e.data["status"].clone())
        },
    )
    .await;
    let status_bytes = serde_json::to_vec(&status).map_or(0, |v| v.len());
    println!(
        "kubectl apply → every NodeFaults entry written: {:.2} s",
        placed.as_secs_f64()
    );
    println!(
        "NodeFaults writes by the controller: {writes} ({nodes} objects, {written_bytes} bytes of spec)"
    );
    println!(
        "steps while placing: {placing_ms:.0} ms each on average ({placing_steps} steps; deciding {placing_decide_ms:.0} ms, writing at most as long, at least 500 ms)"
    );
    println!(
        "steps while the run goes on: {step_ms:.0} ms each on average ({steps} in {window:.0} s, {writes_after} writes; deciding {going_decide_ms:.0} ms)"
    );
    println!(
        "API requests by the controller until then: {requests} ({:.0}/s)",
        requests as f64 / placed.as_secs_f64()
    );
    println!("Experiment status: {status_bytes} bytes");
    println!(
        "controller peak RSS: {:.1} MiB",
        peak_rss_kib(pid).unwrap_or(0) as f64 / 1024.0
    );
}
