//! The observer's own telemetry follows docs/architecture.md: exported over OTLP as
//! service `faultline-observer` when OTEL_* say where, silent otherwise.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use faultline_testkit::{KillOnDrop as Killed, free_port as port, otlp::one_span};
use mock_collector::{MockServer, Protocol};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;

fn observer(env: &[(&str, String)], forward: Option<String>) -> (Killed, u16) {
    let (grpc, http, api) = (port(), port(), port());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_faultline-observer"));
    cmd.args([
        "--otlp-grpc",
        &format!("127.0.0.1:{grpc}"),
        "--otlp-http",
        &format!("127.0.0.1:{http}"),
        "--api",
        &format!("127.0.0.1:{api}"),
    ])
    .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
    .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    if let Some(f) = forward {
        cmd.args(["--forward", &f]);
    }
    (Killed(cmd.spawn().expect("observer runs")), grpc)
}

async fn client(grpc: u16) -> TraceServiceClient<tonic::transport::Channel> {
    for _ in 0..100 {
        if let Ok(c) = TraceServiceClient::connect(format!("http://127.0.0.1:{grpc}")).await {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("observer never listened");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_spans_go_where_otel_variables_say() {
    let own = MockServer::builder()
        .protocol(Protocol::Grpc)
        .start()
        .await
        .expect("receiver");
    let downstream = MockServer::builder()
        .protocol(Protocol::Grpc)
        .start()
        .await
        .expect("receiver");
    let env = [
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://{}", own.addr()),
        ),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".to_owned()),
        (
            "OTEL_RESOURCE_ATTRIBUTES",
            "deployment.environment=test".to_owned(),
        ),
    ];
    let (_observer, grpc) = observer(&env, Some(format!("http://{}", downstream.addr())));
    client(grpc)
        .await
        .export(one_span("shop"))
        .await
        .expect("export");
    downstream
        .wait_for_spans(1, Duration::from_secs(10))
        .await
        .expect("forwarded");
    own.wait_until(
        |c| {
            c.spans().iter().any(|s| {
                s.span().name == "forward"
                    && s.resource_attrs().iter().any(|kv| {
                        kv.key == "service.name"
                            && format!("{:?}", kv.value).contains("faultline-observer")
                    })
            })
        },
        Duration::from_secs(10),
    )
    .await
    .expect("the observer's own forward span, as service faultline-observer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_endpoint_nothing_is_exported_and_nothing_complains() {
    let (mut observer, grpc) = observer(&[], None);
    client(grpc)
        .await
        .export(one_span("shop"))
        .await
        .expect("export");
    tokio::time::sleep(Duration::from_millis(700)).await;
    let _ = observer.0.kill();
    let _ = observer.0.wait();
    let mut stderr = String::new();
    if let Some(mut e) = observer.0.stderr.take() {
        std::io::Read::read_to_string(&mut e, &mut stderr).expect("stderr");
    }
    assert_eq!(stderr.lines().count(), 1, "only the startup line: {stderr}");
}
