//! The agent's own spans over OTLP to a real receiver (mock-collector over
//! gRPC): one per inject and recover, in the trace the fault's
//! `traceparent` names, from service `faultline-agent`.

mod common;

use std::time::Duration;

use common::*;
use mock_collector::{MockServer, Protocol};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn inject_and_recover_spans_reach_the_collector_in_the_faults_trace() {
    if !kernel_ready() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let collector = rt
        .block_on(MockServer::builder().protocol(Protocol::Grpc).start())
        .expect("receiver");
    let net = NetPair::new();
    let addr = net.listen();
    let mut agent = AgentProc::new();
    agent.env = vec![
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
            format!("http://{}", collector.addr()),
        ),
        ("OTEL_EXPORTER_OTLP_PROTOCOL".into(), "grpc".into()),
    ];
    let (_, far) = in_ms(60_000);
    let traced = fault(
        "traced",
        &net.target_path(),
        &far,
        &format!("traceparent: \"00-{TRACE}-{PARENT}-01\"\npartition: {{peers: [{PEER_IP}/32]}}"),
    );
    agent.write_faults(&[traced]);
    agent.start();
    assert!(
        wait_for(Duration::from_secs(3), || !net.reachable(addr)).is_some(),
        "never applied; log:\n{}",
        agent.log()
    );
    agent.write_faults(&[]);
    assert!(wait_for(Duration::from_secs(3), || net.reachable(addr)).is_some());
    // SIGTERM flushes what is still batched.
    assert!(agent.sigterm().success());

    let found = rt.block_on(collector.wait_until(
        |c| {
            ["inject", "recover"].iter().all(|op| {
                c.spans().iter().any(|s| {
                    let span = s.span();
                    span.name == *op
                        && hex(&span.trace_id) == TRACE
                        && hex(&span.parent_span_id) == PARENT
                        && span.attributes.iter().any(|kv| {
                            kv.key == "faultline.fault.kind"
                                && format!("{:?}", kv.value).contains("partition")
                        })
                        && s.resource_attrs().iter().any(|kv| {
                            kv.key == "service.name"
                                && format!("{:?}", kv.value).contains("faultline-agent")
                        })
                })
            })
        },
        Duration::from_secs(10),
    ));
    let names: Vec<String> = rt.block_on(collector.with_collector(|c| {
        c.spans()
            .iter()
            .map(|s| format!("{} {}", s.span().name, hex(&s.span().trace_id)))
            .collect()
    }));
    assert!(found.is_ok(), "spans received: {names:?}");
}
