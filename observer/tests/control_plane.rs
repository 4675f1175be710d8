//! The observer binary against a real kube-apiserver and etcd: with
//! `--attribute-namespaces`, as the chart's ServiceAccount, spans count in
//! the namespace of the pod that sent them, whatever they claim.

use std::{net::IpAddr, process::Stdio, time::Duration};

use faultline_testkit::{
    KillOnDrop,
    cluster::{ControlPlane, Options, eventually},
    free_port, get_json, http_from, otlp,
};
use prost::Message as _;
use serde_json::json;

/// One export of `export` over OTLP/HTTP from the local address `from`.
async fn send(from: IpAddr, otlp_http: std::net::SocketAddr, export: &[u8]) {
    let (status, _, body) = http_from(
        Some(from),
        otlp_http,
        "POST",
        "/v1/traces",
        &[("content-type", "application/x-protobuf")],
        export,
    )
    .await
    .expect("http");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_count_in_the_namespace_of_the_pod_that_sent_them() {
    let Some(cp) = ControlPlane::start(Options::default()).await else {
        return;
    };
    let chart = cp.install_chart().await;
    cp.node("node-a").await;
    cp.namespace("shop", true).await;
    cp.namespace("evil", false).await;
    // Pods whose IPs are loopback addresses this test can send from.
    let shop: IpAddr = [127, 0, 0, 2].into();
    let evil: IpAddr = [127, 0, 0, 3].into();
    cp.running_pod(
        "shop",
        "checkout-1",
        json!({"app": "checkout"}),
        "node-a",
        "127.0.0.2",
    )
    .await;
    cp.running_pod(
        "evil",
        "mallory",
        json!({"app": "mallory"}),
        "node-a",
        "127.0.0.3",
    )
    .await;
    let kubeconfig = cp.observer_kubeconfig(&chart).await;
    let port = |p: u16| std::net::SocketAddr::from(([127, 0, 0, 1], p));
    let (grpc, http, api) = (port(free_port()), port(free_port()), port(free_port()));
    let log = std::fs::File::create(cp.log("observer")).expect("log");
    let _observer = KillOnDrop(
        std::process::Command::new(env!("CARGO_BIN_EXE_faultline-observer"))
            .env("KUBECONFIG", &kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .arg(format!("--otlp-grpc={grpc}"))
            .arg(format!("--otlp-http={http}"))
            .arg(format!("--api={api}"))
            .arg("--attribute-namespaces")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start faultline-observer"),
    );
    eventually(
        "the observer listening",
        Duration::from_secs(30),
        || async {
            let (status, _) = faultline_testkit::http(api, "GET", "/health", &[], b"")
                .await
                .ok()?;
            (status == 200).then_some(())
        },
    )
    .await;
    // Until the pods are listed, shop's spans keep their bare name.
    eventually(
        "shop's spans attributed to shop",
        Duration::from_secs(30),
        || async {
            send(shop, http, &otlp::one_span("probe").encode_to_vec()).await;
            let (status, _) =
                faultline_testkit::http(api, "GET", "/api/v1/services/shop%2Fprobe", &[], b"")
                    .await
                    .ok()?;
            (status == 200).then_some(())
        },
    )
    .await;

    send(
        shop,
        http,
        &otlp::server_spans("checkout", 10, 0).encode_to_vec(),
    )
    .await;
    // mallory names itself checkout, then claims shop's namespace.
    send(
        evil,
        http,
        &otlp::server_spans("checkout", 40, 40).encode_to_vec(),
    )
    .await;
    let mut claim = otlp::server_spans("checkout", 30, 30);
    claim.resource_spans[0]
        .resource
        .as_mut()
        .expect("resource")
        .attributes
        .push(otlp::attr("k8s.namespace.name", "shop"));
    send(evil, http, &claim.encode_to_vec()).await;

    let checkout = get_json(api, "/api/v1/services/shop%2Fcheckout?window=1m").await;
    assert_eq!(
        (
            checkout["requests"].as_u64(),
            checkout["errorRate"].as_f64()
        ),
        (Some(10), Some(0.0)),
        "shop's checkout holds only shop's spans: {checkout}"
    );
    let theirs = get_json(api, "/api/v1/services/evil%2Fcheckout?window=1m").await;
    assert_eq!(theirs["requests"], 40, "{theirs}");
    let (_, metrics) = faultline_testkit::http(api, "GET", "/metrics", &[], b"")
        .await
        .expect("metrics");
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains("faultline_observer_forged_spans_total 30"),
        "{metrics}"
    );
}
