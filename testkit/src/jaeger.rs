//! A real Jaeger (v2, the all-in-one binary with in-memory storage) for
//! tests: OTLP in over gRPC and HTTP, its query API out, every port free
//! and on loopback. The binary comes from `scripts/jaeger.sh build`, named
//! in `FAULTLINE_JAEGER` (scripts/test.sh sets it).

use std::{
    net::SocketAddr,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use crate::{KillOnDrop, free_port, http_get, peer_var};

/// A running Jaeger, stopped when dropped.
#[derive(Debug)]
pub struct Jaeger {
    /// Where spans go in: OTLP over gRPC (`http://ADDR`) …
    pub otlp_grpc: SocketAddr,
    /// … and over HTTP (`http://ADDR/v1/traces`).
    pub otlp_http: SocketAddr,
    /// Its query API and UI (`http://ADDR/api/traces?service=NAME`).
    pub query: SocketAddr,
    dir: tempfile::TempDir,
    _process: KillOnDrop,
}

/// Only what the tests read: OTLP receivers, the in-memory store and the
/// query API; the collector's own metrics off (they would take a fixed
/// port).
fn config(grpc: SocketAddr, http: SocketAddr, query: SocketAddr, query_grpc: SocketAddr) -> String {
    format!(
        "service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    logs:
      level: info
extensions:
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: 100000
  jaeger_query:
    storage:
      traces: memstore
    http:
      endpoint: {query}
    grpc:
      endpoint: {query_grpc}
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: {grpc}
      http:
        endpoint: {http}
processors:
  batch:
    timeout: 200ms
exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
"
    )
}

impl Jaeger {
    /// Starts Jaeger and waits until its query API answers; None when
    /// `FAULTLINE_JAEGER` is unset and peers are not required (the test
    /// skips). Panics, with Jaeger's log, when it does not come up.
    pub fn start() -> Option<Jaeger> {
        let program = peer_var("FAULTLINE_JAEGER")?;
        let dir = tempfile::tempdir().expect("a temporary directory");
        let loopback = |port| SocketAddr::from(([127, 0, 0, 1], port));
        let ports: Vec<u16> = std::iter::repeat_with(free_port)
            .scan(Vec::new(), |seen: &mut Vec<u16>, p| {
                let fresh = !seen.contains(&p);
                seen.push(p);
                Some(fresh.then_some(p))
            })
            .flatten()
            .take(4)
            .collect();
        let [grpc, http, query, query_grpc] = [0, 1, 2, 3].map(|i| loopback(ports[i]));
        let config_path = dir.path().join("jaeger.yaml");
        std::fs::write(&config_path, config(grpc, http, query, query_grpc))
            .expect("write Jaeger's config");
        let log_path = dir.path().join("jaeger.log");
        let log = std::fs::File::create(&log_path).expect("a log file");
        let child = Command::new(&program)
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("the log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
        let mut jaeger = Jaeger {
            otlp_grpc: grpc,
            otlp_http: http,
            query,
            dir,
            _process: KillOnDrop(child),
        };
        let started = Instant::now();
        loop {
            if matches!(http_get(query, "/api/services"), Ok((200, _))) {
                return Some(jaeger);
            }
            let exited = jaeger._process.0.try_wait().ok().flatten();
            if exited.is_some() || started.elapsed() > Duration::from_secs(60) {
                panic!(
                    "Jaeger did not come up ({exited:?}); its log:\n{}",
                    jaeger.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// What Jaeger printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("jaeger.log")).unwrap_or_default()
    }

    /// The traces holding spans of `service` (its query API's JSON, the
    /// `data` array): each with `spans` (`traceID`, `spanID`,
    /// `operationName`, `references`, `tags`, `logs`, `processID`) and
    /// `processes` (`serviceName` per process id).
    pub fn traces(&self, service: &str) -> Vec<serde_json::Value> {
        let path = format!("/api/traces?service={service}&limit=100000&lookback=1h");
        match http_get(self.query, &path) {
            Ok((200, body)) => serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["data"].as_array().cloned())
                .unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    /// The services Jaeger has spans of.
    pub fn services(&self) -> Vec<String> {
        match http_get(self.query, "/api/services") {
            Ok((200, body)) => serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| {
                    v["data"].as_array().map(|a| {
                        a.iter()
                            .filter_map(|s| s.as_str().map(str::to_owned))
                            .collect()
                    })
                })
                .unwrap_or_default(),
            _ => Vec::new(),
        }
    }
}
