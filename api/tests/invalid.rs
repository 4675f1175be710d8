//! Every kind of invalid input the issue lists is refused with a located,
//! specific message. Cases are edits of one valid experiment, so each test
//! shows exactly what changed.

use faultline_api::parse_documents;

const BASE: &str = include_str!("../../experiments/payments-slowdown.yaml");

/// All diagnostics of an input as `LINE:COL: path: message`.
fn diagnostics(text: &[u8]) -> Vec<String> {
    parse_documents(text)
        .into_iter()
        .flat_map(|d| match d.result {
            Ok(_) => Vec::new(),
            Err(diags) => diags.iter().map(ToString::to_string).collect(),
        })
        .collect()
}

/// The base experiment with one edit applied; the edit must match exactly once.
fn edit(from: &str, to: &str) -> String {
    assert_eq!(
        BASE.matches(from).count(),
        1,
        "edit target {from:?} must be unique"
    );
    BASE.replacen(from, to, 1)
}

#[track_caller]
fn assert_refused(text: &str, expected: &[&str]) {
    let diags = diagnostics(text.as_bytes());
    assert!(!diags.is_empty(), "accepted:\n{text}");
    for e in expected {
        assert!(
            diags.iter().any(|d| d.contains(e)),
            "no diagnostic contains {e:?}; got:\n{}",
            diags.join("\n")
        );
    }
}

#[track_caller]
fn assert_valid(text: &str) {
    assert_eq!(
        diagnostics(text.as_bytes()),
        Vec::<String>::new(),
        "refused:\n{text}"
    );
}

#[test]
fn the_base_experiment_is_valid() {
    assert_eq!(diagnostics(BASE.as_bytes()), Vec::<String>::new());
}

#[test]
fn the_issue_example_of_a_bad_duration() {
    assert_refused(
        &edit("every: 20s", "every: 5 minutes"),
        &[
            "31:38: spec.faults[1].kill.every: \"5 minutes\" is not a duration (use 300ms, 30s, 2m, 1h)",
        ],
    );
}

#[test]
fn yaml_syntax_errors() {
    assert_refused(
        &edit("labels: {app: cart}", "labels: {app: cart"),
        &["YAML syntax error"],
    );
    assert_refused("a: b: c\n", &["1:5: YAML syntax error"]);
    assert_refused("key: [1, 2\n", &["YAML syntax error"]);
}

#[test]
fn api_version_and_kind() {
    assert_refused(
        &edit("faultline.dev/v1alpha1", "faultline.dev/v1"),
        &[
            "4:13: apiVersion: \"faultline.dev/v1\" is not a Faultline API version; use faultline.dev/v1alpha1",
        ],
    );
    assert_refused(
        &edit("kind: Experiment", "kind: Experimnt"),
        &["5:7: kind: \"Experimnt\" is not a Faultline kind (did you mean Experiment?)"],
    );
    assert_refused(
        &edit("kind: Experiment", "kind: Deployment"),
        &["Faultline kinds are Experiment, NodeFaults, Topology"],
    );
    assert_refused(&edit("kind: Experiment\n", ""), &["kind: is required"]);
}

#[test]
fn unknown_and_misspelt_fields() {
    assert_refused(
        &edit("  duration: 2m", "  duraton: 2m"),
        &["11:3: spec.duraton: unknown field (did you mean duration?)"],
    );
    // The misspelling is the one problem: no second report of a missing `duration`.
    assert_eq!(
        diagnostics(edit("  duration: 2m", "  duraton: 2m").as_bytes()).len(),
        1
    );
    assert_refused(
        &edit("maxTargets: 20", "maxTarget: 20"),
        &["spec.limits.maxTarget: unknown field (did you mean maxTargets?)"],
    );
    assert_refused(
        &edit("  limits:", "  blastRadius:"),
        &["spec.blastRadius: unknown field; expected one of: description, duration"],
    );
    assert_refused(
        &edit(
            "{delay: 300ms, jitter: 50ms}",
            "{delay: 300ms, jiter: 50ms}",
        ),
        &["spec.faults[0].latency.jiter: unknown field (did you mean jitter?)"],
    );
}

#[test]
fn wrong_types() {
    assert_refused(
        &edit("value: 1 ", "value: one "),
        &["spec.targets.cart.value: expected a whole number, found the string \"one\""],
    );
    assert_refused(
        &edit("value: 1 ", "value: \"1\" "),
        &["write the number without quotes"],
    );
    assert_refused(
        &edit("labels: {app: cart}", "labels: [app, cart]"),
        &["spec.targets.cart.labels: expected a mapping, found a list"],
    );
    assert_refused(
        &edit("labels: {app: cart}", "labels: {app: 7}"),
        &["spec.targets.cart.labels.app: expected a string, found the number 7 (quote it: \"7\")"],
    );
    assert_refused(
        &edit("percentile: 99", "percentile: high"),
        &["spec.hypothesis[2].latency.percentile: expected a number, found the string \"high\""],
    );
    assert_refused(
        &edit("  faults:\n", "  faults: nope\n  x:\n"),
        &["spec.faults: expected a list, found the string \"nope\""],
    );
}

#[test]
fn durations() {
    assert_refused(
        &edit("duration: 2m", "duration: -2m"),
        &["spec.duration: \"-2m\" is negative"],
    );
    assert_refused(
        &edit("duration: 2m", "duration: 0s"),
        &["spec.duration: must be greater than 0s"],
    );
    assert_refused(
        &edit("duration: 2m", "duration: 25h"),
        &["spec.duration: \"25h\" is longer than 24h"],
    );
    assert_refused(
        &edit("duration: 2m", "duration: 120"),
        &["spec.duration: \"120\" is not a duration"],
    );
    assert_refused(
        &edit("delay: 300ms", "delay: 0ms"),
        &["spec.faults[0].latency.delay: must be greater than 0s"],
    );
    assert_refused(
        &edit("every: 20s", "every: 0s"),
        &["spec.faults[1].kill.every: must be greater than 0s"],
    );
    assert_refused(
        &edit("window: 10s", "window: 0s"),
        &["spec.abort[0].errorRate.window: 0s is too short"],
    );
    assert_refused(
        &edit("timeout: 2s", "timeout: 0s"),
        &["spec.hypothesis[3].http.timeout: must be greater than 0s"],
    );
}

#[test]
fn percentages() {
    assert_refused(
        &edit("max: 5%", "max: 105%"),
        &["spec.hypothesis[0].errorRate.max: \"105%\" is above 100%"],
    );
    assert_refused(&edit("max: 5%", "max: -5%"), &["\"-5%\" is negative"]);
    assert_refused(
        &edit("max: 5%", "max: 5"),
        &["\"5\" is not a percentage (write it like 5% or 0.5%)"],
    );
    assert_refused(
        &edit("jitter: 50ms}", "jitter: 50ms, loss: 150%}"),
        &["spec.faults[0].latency.loss: \"150%\" is above 100%"],
    );
    assert_refused(
        &edit("value: 1 ", "value: 1\n      mode: percent\n"),
        &["duplicate key \"mode\""],
    );
}

#[test]
fn fault_kinds() {
    assert_refused(
        &edit(
            "      kill: {signal: SIGKILL, every: 20s}            # without `every`: once\n",
            "",
        ),
        &[
            "spec.faults[1]: a fault needs one fault kind: latency, network, kill, partition or stress",
        ],
    );
    assert_refused(
        &edit(
            "      kill: {signal: SIGKILL, every: 20s}",
            "      kill: {signal: SIGKILL, every: 20s}\n      latency: {delay: 1s}",
        ),
        &["32:7: spec.faults[1].latency: a fault has one kind only; it already has kill"],
    );
}

#[test]
fn references_to_targets_and_faults() {
    assert_refused(
        &edit("target: inventory", "target: inventroy"),
        &[
            "33:15: spec.faults[2].target: \"inventroy\" is not a target of this experiment (did you mean inventory?)",
        ],
    );
    assert_refused(
        &edit("peers: [payments]", "peers: [paymnts]"),
        &[
            "spec.faults[2].partition.peers[0]: \"paymnts\" is not a target of this experiment (did you mean payments?) or a CIDR",
        ],
    );
    assert_refused(
        &edit("peers: [payments]", "peers: [inventory]"),
        &["\"inventory\" is the fault's own target"],
    );
    assert_valid(&edit(
        "peers: [payments]",
        "peers: [10.0.0.0/8, payments, \"fd00::/8\"]",
    ));
    assert_refused(
        &edit("peers: [payments]", "peers: []"),
        &["spec.faults[2].partition.peers: needs at least one peer"],
    );
    assert_refused(
        &edit(
            "name: payments, state: open, within: 20s}",
            "name: payments, state: open, within: 20s, fault: slow-paymets}",
        ),
        &[
            "spec.hypothesis[1].breaker.fault: \"slow-paymets\" is not a fault of this experiment (did you mean slow-payments?)",
        ],
    );
}

#[test]
fn duplicates() {
    assert_refused(
        &edit("name: kill-a-cart", "name: slow-payments"),
        &["spec.faults[1].name: duplicate fault name \"slow-payments\""],
    );
    assert_refused(
        &edit(
            "    inventory:\n      labels: {app: inventory}",
            "    cart:\n      labels: {app: inventory}",
        ),
        &["duplicate key \"cart\" (first at line"],
    );
    assert_refused(
        &edit("name: frontend answers", "name: checkout stays healthy"),
        &["spec.hypothesis[3].name: duplicate check name"],
    );
}

#[test]
fn fault_windows() {
    assert_refused(
        &edit("start: 60s", "start: 2m"),
        &["spec.faults[2].start: starts at 2m, not before the experiment's duration of 2m ends"],
    );
    assert_refused(
        &edit("duration: 30s ", "duration: 90s "),
        &[
            "spec.faults[2].duration: start 1m + duration 1m30s runs past the experiment's duration of 2m",
        ],
    );
    assert_refused(
        &edit("every: 20s", "every: 90s"),
        &["spec.faults[1].kill.every: 1m30s is not shorter than the fault's active time"],
    );
}

#[test]
fn cron_and_signals() {
    assert_refused(
        &edit("\"0 10 * * 1-5\"", "\"0 10 * * 1-8\""),
        &[
            "spec.schedule: \"0 10 * * 1-8\" is not a valid cron schedule: day of week field: 8 is out of range 0-6",
        ],
    );
    assert_refused(
        &edit("\"0 10 * * 1-5\"", "\"every day\""),
        &["needs 5 fields"],
    );
    assert_refused(
        &edit("\"0 10 * * 1-5\"", "\"0 0 31 2 *\""),
        &["never fires"],
    );
    assert_refused(
        &edit("signal: SIGKILL", "signal: SIGKIL"),
        &["spec.faults[1].kill.signal: \"SIGKIL\" is not a signal name (did you mean SIGKILL?)"],
    );
    assert_refused(
        &edit("signal: SIGKILL", "signal: 9"),
        &["\"9\" is not a signal name"],
    );
}

#[test]
fn empty_and_missing_lists() {
    let no_faults = {
        let start = BASE.find("  faults:\n").expect("faults");
        let end = BASE.find("  hypothesis:\n").expect("hypothesis");
        format!("{}  faults: []\n{}", &BASE[..start], &BASE[end..])
    };
    assert_refused(&no_faults, &["spec.faults: needs at least one fault"]);
    assert_refused(
        &edit("  targets:\n", "  selection:\n"),
        &["spec.targets: is required"],
    );
    assert_refused(
        &edit("labels: {app: cart}", "labels: {}"),
        &["spec.targets.cart.labels: needs at least one label"],
    );
}

#[test]
fn selection_modes() {
    assert_refused(
        &edit("mode: fixed", "mode: some"),
        &[
            "spec.targets.cart.mode: \"some\" is not a selection mode; use one of: all, one, fixed, percent",
        ],
    );
    assert_refused(
        &edit("value: 1 ", "value: 0 "),
        &["spec.targets.cart.value: must be at least 1"],
    );
    assert_refused(
        &edit("mode: all ", "mode: all\n      value: 3 "),
        &["value only applies to modes fixed and percent, not all"],
    );
    assert_valid(&edit("mode: fixed", "mode: percent"));
    assert_refused(
        edit("value: 1 ", "value: 101 ")
            .replace("mode: fixed", "mode: percent")
            .as_str(),
        &["101 is not a percentage of pods"],
    );
}

#[test]
fn a_sandbox_is_signalled_not_deleted() {
    assert_refused(
        &edit(
            "kill: {signal: SIGKILL, every: 20s}",
            "kill: {method: delete, sandbox: true}",
        ),
        &["kill.sandbox: is for signals; method delete takes the whole pod already"],
    );
}

#[test]
fn numbers_too_large() {
    assert_refused(
        &edit("maxTargets: 20", "maxTargets: 99999999999999999999999"),
        &[
            "spec.limits.maxTargets: the number 99999999999999999999999 is too large to represent (at most 4294967295)",
        ],
    );
    assert_refused(
        &edit("maxTargets: 20", "maxTargets: 4294967296"),
        &["4294967296 is above the maximum of 4294967295"],
    );
    assert_refused(
        &edit("maxTargets: 20", "maxTargets: -1"),
        &["-1 is below the minimum of 0"],
    );
    assert_refused(
        &edit("maxTargets: 20", "maxTargets: 0"),
        &["spec.limits.maxTargets: must be at least 1"],
    );
    for share in ["0", "101"] {
        assert_refused(
            &edit(
                "maxTargets: 20",
                &format!("maxTargets: 20\n    maxPercent: {share}"),
            ),
            &[&format!("spec.limits.maxPercent: {share} is not 1 to 100")],
        );
    }
    assert_refused(
        &edit("percentile: 99", "percentile: 1e999"),
        &["spec.hypothesis[2].latency.percentile: expected a number"],
    );
    assert_refused(
        &edit("status: 200", "status: 99999"),
        &["99999 is above the maximum of 65535"],
    );
}

#[test]
fn empty_inputs_and_bytes() {
    assert_refused("", &["1:1: the input is empty"]);
    assert_refused("# only a comment\n", &["the input is empty"]);
    assert_refused("---\n---\n", &["the input is empty"]);
    let diags = diagnostics(b"apiVersion: faultline.dev/v1alpha1\nkind: \xc3\x28\n");
    assert_eq!(
        diags,
        vec!["2:7: the input is not UTF-8 (byte 0xc3 at offset 41)".to_string()]
    );
    assert_refused(
        "just a string\n",
        &["expected a mapping, found the string \"just a string\""],
    );
}

#[test]
fn metadata() {
    assert_refused(
        &edit("name: payments-slowdown", "name: Payments_Slowdown"),
        &["metadata.name: experiment name \"Payments_Slowdown\" must be lowercase"],
    );
    assert_refused(
        &edit("  name: payments-slowdown\n", ""),
        &["metadata.name: is required"],
    );
    assert_refused(
        &edit("namespace: shop", "namespace: Shop"),
        &["metadata.namespace: namespace \"Shop\" must be lowercase"],
    );
    // Output of `kubectl get -o yaml` validates: server fields are accepted.
    assert_eq!(
        diagnostics(
            edit(
                "  namespace: shop\n",
                "  namespace: shop\n  uid: 1234\n  resourceVersion: \"5\"\n"
            )
            .as_bytes()
        ),
        Vec::<String>::new()
    );
}

#[test]
fn checks() {
    assert_refused(
        &edit("percentile: 99", "percentile: 0"),
        &["spec.hypothesis[2].latency.percentile: 0 is not a percentile"],
    );
    assert_refused(
        &edit("percentile: 99", "percentile: 100.5"),
        &["100.5 is not a percentile"],
    );
    assert_refused(
        &edit("state: open", "state: opened"),
        &["\"opened\" is not a breaker state (did you mean open?)"],
    );
    assert_refused(
        &edit(
            "\"http://frontend.shop:8080/health\"",
            "\"frontend:8080/health\"",
        ),
        &[
            "spec.hypothesis[3].http.url: \"frontend:8080/health\" is not an http:// or https:// URL",
        ],
    );
    assert_refused(
        &edit("status: 200", "status: 42"),
        &["42 is not an HTTP status"],
    );
    assert_refused(
        &edit("within: 20s", "within: 5m"),
        &["spec.hypothesis[1].breaker.within: 5m is longer than the experiment's duration of 2m"],
    );
    assert_refused(
        &edit(
            "  - errorRate: {service: frontend",
            "  - when: [before]\n      errorRate: {service: frontend",
        ),
        &["spec.abort[0].when: abort checks are evaluated throughout the run"],
    );
    assert_refused(
        &edit(
            "- name: frontend answers\n",
            "- name: frontend answers\n      when: [during, durin]\n",
        ),
        &["spec.hypothesis[3].when[1]: \"durin\" is not a check phase (did you mean during?)"],
    );
    assert_refused(
        &edit(
            "      errorRate: {service: checkout, max: 5%, window: 30s}\n",
            "",
        ),
        &["38:7: spec.hypothesis[0]: a check needs one kind: errorRate, latency, breaker or http"],
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = edit("duration: 2m", "duration: 2 minutes")
        .replace("signal: SIGKILL", "signal: KILL")
        .replace("max: 5%", "max: 5");
    let diags = diagnostics(text.as_bytes());
    assert_eq!(diags.len(), 3, "{diags:#?}");
}

const NODE_FAULTS: &str = "apiVersion: faultline.dev/v1alpha1
kind: NodeFaults
metadata: {name: node-1}
spec:
  faults:
    - id: a/b/c/0
      target: {pod: {uid: 6f1c2d3e-0000-4000-8000-000000000001}}
      expiresAt: \"2026-11-22T10:02:00Z\"
      latency: {delay: 300ms, to: [\"10.0.0.0/8\"]}
    - id: a/b/d/0
      target: {netns: /run/netns/blue}
      expiresAt: \"2026-11-22T10:02:00Z\"
      partition: {direction: egress, peers: [10.1.0.0/16], ports: [443]}
";

#[test]
fn node_faults() {
    assert_eq!(diagnostics(NODE_FAULTS.as_bytes()), Vec::<String>::new());
    let e = |from: &str, to: &str| NODE_FAULTS.replacen(from, to, 1);
    assert_refused(
        &e("id: a/b/d/0", "id: a/b/c/0"),
        &["spec.faults[1].id: duplicate fault id \"a/b/c/0\""],
    );
    assert_refused(
        &e("10.0.0.0/8", "payments"),
        &[
            "spec.faults[0].latency.to[0]: \"payments\" is not a CIDR; NodeFaults carry resolved addresses",
        ],
    );
    assert_refused(
        &e("\"2026-11-22T10:02:00Z\"", "tomorrow"),
        &["8:18: spec.faults[0].expiresAt: \"tomorrow\" is not an RFC 3339 time"],
    );
    assert_refused(
        &e(
            "{netns: /run/netns/blue}",
            "{netns: /run/netns/blue, pid: 4}",
        ),
        &["spec.faults[1].target.pid: a target is one thing only; it already has netns"],
    );
    assert_refused(
        &e("{netns: /run/netns/blue}", "{}"),
        &["spec.faults[1].target: needs one of pod, netns, pid or cgroup"],
    );
    assert_refused(
        &e("{netns: /run/netns/blue}", "{netns: blue}"),
        &["\"blue\" is not an absolute path"],
    );
    assert_refused(
        &e("{netns: /run/netns/blue}", "{pid: 0}"),
        &["spec.faults[1].target.pid: must be a process id"],
    );
    assert_refused(
        &e("uid: 6f1c2d3e-0000-4000-8000-000000000001", "uid: nope"),
        &["\"nope\" is not a pod UID"],
    );
    assert_refused(
        &e("ports: [443]", "ports: [443, 443]"),
        &["port 443 is listed twice"],
    );
    assert_refused(
        &e("ports: [443]", "ports: [70000]"),
        &["70000 is above the maximum of 65535"],
    );
    assert_refused(
        &e(
            "metadata: {name: node-1}",
            "metadata: {name: node-1, namespace: x}",
        ),
        &["metadata.namespace: this kind is cluster-scoped"],
    );
    assert_refused(
        &e(
            "      latency:",
            "      traceparent: \"00-xyz-01\"\n      latency:",
        ),
        &["spec.faults[0].traceparent: \"00-xyz-01\" is not a W3C traceparent"],
    );
    // An empty desired state is valid: it tells the agent to remove everything.
    assert_eq!(
        diagnostics(b"apiVersion: faultline.dev/v1alpha1\nkind: NodeFaults\nmetadata: {name: n1}\nspec: {faults: []}\n"),
        Vec::<String>::new()
    );
}

const TOPOLOGY: &str = "apiVersion: faultline.dev/v1alpha1
kind: Topology
metadata: {name: shop}
spec:
  services:
    - name: payments
      labels: {app: payments}
      command: [faultline-demo, payments, --listen, \"127.0.0.1:7003\"]
      port: 7003
    - name: checkout
      labels: {app: checkout}
      command: [faultline-demo, checkout, --listen, \"127.0.0.1:7002\"]
      port: 7002
      env: {LOG: info}
      dependsOn: [payments]
";

#[test]
fn topology() {
    assert_eq!(diagnostics(TOPOLOGY.as_bytes()), Vec::<String>::new());
    let e = |from: &str, to: &str| TOPOLOGY.replacen(from, to, 1);
    assert_refused(
        &e("dependsOn: [payments]", "dependsOn: [paymnts]"),
        &[
            "spec.services[1].dependsOn[0]: \"paymnts\" is not a service of this topology (did you mean payments?)",
        ],
    );
    assert_refused(
        &e("dependsOn: [payments]", "dependsOn: [checkout]"),
        &["a service cannot depend on itself"],
    );
    assert_refused(
        &e(
            "      port: 7003\n",
            "      port: 7003\n      dependsOn: [checkout]\n",
        ),
        &["dependencies form a cycle: payments → checkout → payments"],
    );
    assert_refused(
        &e("port: 7002", "port: 7003"),
        &["spec.services[1].port: port 7003 is used by another service"],
    );
    assert_refused(
        &e("port: 7002", "port: 70000"),
        &["70000 is above the maximum of 65535"],
    );
    assert_refused(
        &e(
            "command: [faultline-demo, payments, --listen, \"127.0.0.1:7003\"]",
            "command: []",
        ),
        &["spec.services[0].command: needs at least the program to run"],
    );
    assert_refused(
        &e("env: {LOG: info}", "env: {LOG LEVEL: info}"),
        &["\"LOG LEVEL\" is not an environment variable name"],
    );
    assert_refused(
        &e("env: {LOG: info}", "env: {PAYMENTS_ADDR: x}"),
        &["spec.services[1].env.PAYMENTS_ADDR: is set by the runtime"],
    );
    assert_refused(
        &e("name: checkout", "name: payments"),
        &["duplicate service name \"payments\""],
    );
    assert_refused(
        &e("  services:\n", "  services: []\n  x:\n"),
        &["spec.x: unknown field"],
    );
}

#[test]
fn topology_limits() {
    let limited = |limits: &str| {
        TOPOLOGY.replacen(
            "      port: 7003\n",
            &format!("      port: 7003\n      limits: {limits}\n"),
            1,
        )
    };
    assert_eq!(
        diagnostics(limited("{cpu: 250m, memory: 128Mi}").as_bytes()),
        Vec::<String>::new()
    );
    assert_eq!(
        diagnostics(limited("{cpu: 2}").as_bytes()),
        Vec::<String>::new()
    );
    let topo: faultline_api::Topology =
        faultline_api::parse_one(limited("{cpu: 250m, memory: 128Mi}").as_bytes()).expect("valid");
    let limits = topo.spec.services[0].limits.clone().expect("limits");
    assert_eq!(limits.cpu.map(faultline_api::Cpu::millicores), Some(250));
    assert_eq!(
        limits.memory.map(faultline_api::Size::bytes),
        Some(128 << 20)
    );
    assert_eq!(
        diagnostics(limited("{cpu: 5m}").as_bytes()),
        vec![
            "10:21: spec.services[0].limits.cpu: \"5m\" is below 10m, the least CPU a cgroup can be limited to"
        ]
    );
    assert_refused(
        &limited("{cpu: 0.5}"),
        &["spec.services[0].limits.cpu: \"0.5\" is not an amount of CPU (write it like 500m"],
    );
    assert_refused(
        &limited("{memory: 128M}"),
        &["spec.services[0].limits.memory: \"128M\" is not a size"],
    );
    assert_refused(
        &limited("{cpus: 1}"),
        &["spec.services[0].limits.cpus: unknown field"],
    );
    assert_refused(
        &limited("{}"),
        &["spec.services[0].limits: names no limit; set cpu, memory or both"],
    );

    // A host that cannot enforce a limit refuses it at its field.
    let topo: faultline_api::Topology =
        faultline_api::parse_one(limited("{cpu: 250m, memory: 128Mi}").as_bytes()).expect("valid");
    let paths = |usable: Result<&[&str], &str>| -> Vec<String> {
        faultline_api::limit_refusals(&topo, usable)
            .0
            .iter()
            .map(ToString::to_string)
            .collect()
    };
    assert_eq!(paths(Ok(&["cpu", "memory"])), Vec::<String>::new());
    assert_eq!(
        paths(Ok(&["memory"])),
        vec![
            "spec.services[0].limits.cpu: local mode cannot enforce this limit here: the cgroup v2 hierarchy here does not offer the cpu controller (a hybrid host keeps it in cgroup v1)"
        ]
    );
    assert_eq!(
        paths(Err("it needs root")),
        vec![
            "spec.services[0].limits.cpu: local mode cannot enforce this limit here: it needs root",
            "spec.services[0].limits.memory: local mode cannot enforce this limit here: it needs root",
        ]
    );
}

#[test]
fn several_documents_in_one_stream() {
    let text = format!("{BASE}---\n{NODE_FAULTS}---\n{TOPOLOGY}");
    let docs = parse_documents(text.as_bytes());
    assert_eq!(docs.len(), 3);
    assert!(docs.iter().all(|d| d.result.is_ok()));
    // A problem in the third document is reported at its line in the stream.
    let bad = text.replace("port: 7002", "port: 0");
    let diags = diagnostics(bad.as_bytes());
    let line = text
        .lines()
        .position(|l| l.contains("port: 7002"))
        .expect("line")
        + 1;
    assert_eq!(
        diags,
        vec![format!(
            "{line}:13: spec.services[1].port: port 0 is not a port; use 1 to 65535"
        )]
    );
}

// ---- review findings: limits, strict formats, YAML 1.1, tags, positions ----

#[test]
fn aliases_are_charged_for_their_bytes_and_depth() {
    // A 1 MB scalar aliased 5000 times would expand to 5 GB.
    let big = format!(
        "a: &a {}\nb: [{}]\n",
        "x".repeat(1_000_000),
        vec!["*a"; 5000].join(", ")
    );
    assert_eq!(
        diagnostics(big.as_bytes()),
        vec!["2:129: the document holds more than 33554432 bytes of text (aliases expanded)"]
    );
    // Each level aliases the one before inside a new list: few nodes, deep nesting.
    let mut deep = String::from("a0: &a0 [x]\n");
    for i in 1..70 {
        deep.push_str(&format!("a{i}: &a{i} [*a{}]\n", i - 1));
    }
    assert_eq!(
        diagnostics(deep.as_bytes()),
        vec!["64:12: nesting deeper than 64 levels (aliases expanded)"]
    );
}

#[test]
fn long_keys_are_shortened_in_paths() {
    let key = "k".repeat(300);
    let diags = diagnostics(
        edit(
            "labels: {app: cart}",
            &format!("labels: {{app: cart, {key}: x}}"),
        )
        .as_bytes(),
    );
    assert_eq!(
        diags,
        vec![format!(
            "19:329: spec.targets.cart.labels[\"{}…\"]: \"{}\"… is not a valid label key (name or prefix/name; names are at most 63 letters, digits, '-', '_', '.')",
            "k".repeat(64),
            "k".repeat(60)
        )]
    );
}

#[test]
fn diagnostics_are_capped_per_document() {
    let namespaces = vec!["1"; 150].join(", ");
    let text = edit("namespaces: [shop]", &format!("namespaces: [{namespaces}]"));
    let diags = diagnostics(text.as_bytes());
    assert_eq!(diags.len(), 101, "{diags:#?}");
    assert_eq!(
        diags[0],
        "15:20: spec.targets.payments.namespaces[0]: expected a string, found the number 1 (quote it: \"1\")"
    );
    assert_eq!(diags[100], "15:320: … and 50 more problems");
}

#[test]
fn list_limits_are_reported_once() {
    let peers = (0..100)
        .map(|i| format!("nope{i}"))
        .collect::<Vec<_>>()
        .join(", ");
    assert_eq!(
        diagnostics(edit("peers: [payments]", &format!("peers: [{peers}]")).as_bytes()),
        vec!["36:43: spec.faults[2].partition.peers: lists more than 64 entries"]
    );
    let ports = vec!["0"; 65].join(", ");
    assert_eq!(
        diagnostics(
            edit(
                "peers: [payments]}",
                &format!("peers: [payments], ports: [{ports}]}}")
            )
            .as_bytes()
        ),
        vec!["36:62: spec.faults[2].partition.ports: lists more than 64 ports"]
    );
    let namespaces = (0..65)
        .map(|i| format!("ns{i}"))
        .collect::<Vec<_>>()
        .join(", ");
    assert_eq!(
        diagnostics(
            edit(
                "namespaces: [shop]",
                &format!("namespaces: [{namespaces}, Bad]")
            )
            .as_bytes()
        ),
        vec!["15:19: spec.targets.payments.namespaces: has more than 64 namespaces"]
    );
    let labels = (0..33)
        .map(|i| format!("l{i}: x"))
        .collect::<Vec<_>>()
        .join(", ");
    assert_eq!(
        diagnostics(edit("labels: {app: cart}", &format!("labels: {{{labels}}}")).as_bytes()),
        vec!["19:15: spec.targets.cart.labels: has more than 32 labels"]
    );
    // Large but legal lists are checked in linear time.
    let mut many = String::from(
        "apiVersion: faultline.dev/v1alpha1\nkind: NodeFaults\nmetadata: {name: node-1}\nspec:\n  faults:\n",
    );
    for i in 0..4097 {
        many.push_str(&format!(
            "    - {{id: f{i}, target: {{pid: 1}}, expiresAt: \"2026-11-22T10:02:00Z\", kill: {{}}}}\n"
        ));
    }
    assert_eq!(
        diagnostics(many.as_bytes()),
        vec!["6:5: spec.faults: has more than 4096 faults"]
    );
}

#[test]
fn every_crd_limit_is_enforced() {
    assert_refused(
        &edit(
            "description: Payments answers 300 ms slower; checkout must open its breaker and keep errors under 5%.",
            &format!("description: {}", "d".repeat(1025)),
        ),
        &["10:16: spec.description: is longer than 1024 characters"],
    );
    assert_valid(&edit(
        "description: Payments answers 300 ms slower; checkout must open its breaker and keep errors under 5%.",
        &format!("description: {}", "é".repeat(1024)),
    ));
    assert_refused(
        &edit(
            "name: frontend answers",
            &format!("name: {}", "n".repeat(129)),
        ),
        &["44:13: spec.hypothesis[3].name: is longer than 128 characters"],
    );
    assert_refused(
        &edit(
            "\"http://frontend.shop:8080/health\"",
            &format!("\"http://frontend.shop/{}\"", "p".repeat(2048)),
        ),
        &["spec.hypothesis[3].http.url: the URL is longer than 2048 characters"],
    );
    assert_refused(
        &edit(
            "\"0 10 * * 1-5\"",
            &format!("\"0 10 * * {}1\"", "1,".repeat(64)),
        ),
        &[
            "12:13: spec.schedule: \"0 10 * * 1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1\"… is longer than 128 characters",
        ],
    );
    assert_refused(
        &edit("name: kill-a-cart", &format!("name: {}", "k".repeat(64))),
        &[
            "28:13: spec.faults[1].name: fault name \"kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk\"… is longer than 63 characters",
        ],
    );
}

#[test]
fn values_match_the_crd_patterns_exactly() {
    assert_refused(
        &edit("max: 5%", "max: 5 %"),
        &[
            "39:43: spec.hypothesis[0].errorRate.max: \"5 %\" is not a percentage (write it like 5% or 0.5%)",
        ],
    );
    assert_refused(
        &edit("max: 5%", "max: 005%"),
        &["\"005%\" is not a percentage"],
    );
    assert_refused(
        &edit("max: 5%", "max: 100.0000000001%"),
        &["\"100.0000000001%\" is above 100%"],
    );
    assert_refused(
        &edit("max: 5%", "max: \" 5%\""),
        &["\" 5%\" is not a percentage"],
    );
    assert_refused(
        &edit("duration: 2m", "duration: \" 2m\""),
        &["11:13: spec.duration: \" 2m\" is not a duration (use 300ms, 30s, 2m, 1h)"],
    );
    assert_refused(
        &edit("duration: 2m", "duration: \"2m \""),
        &["\"2m \" is not a duration"],
    );
    assert_refused(
        &edit("\"0 10 * * 1-5\"", "\" @daily\""),
        &["12:13: spec.schedule: \" @daily\" is not a cron schedule: remove the spaces around it"],
    );
    assert_refused(
        &edit("\"0 10 * * 1-5\"", "\"0 10 * *\u{2003}1-5\""),
        &["needs 5 fields"],
    );
    assert_refused(
        &edit("\"0 10 * * 1-5\"", "\"0 10 * * 7\""),
        &["day of week field: 7 is out of range 0-6"],
    );
    assert_valid(&edit("\"0 10 * * 1-5\"", "\"0 10 * * 0\""));
}

#[test]
fn expires_at_is_strict_rfc3339() {
    let e = |from: &str, to: &str| NODE_FAULTS.replacen(from, to, 1);
    assert_refused(
        &e("\"2026-11-22T10:02:00Z\"", "\"2026-11-22 10:02:00Z\""),
        &[
            "8:18: spec.faults[0].expiresAt: \"2026-11-22 10:02:00Z\" is not an RFC 3339 time (like 2026-11-22T10:02:00Z)",
        ],
    );
    assert_refused(
        &e("\"2026-11-22T10:02:00Z\"", "\"2026-11-22T10:02:00+0100\""),
        &["is not an RFC 3339 time"],
    );
    assert_refused(
        &e("\"2026-11-22T10:02:00Z\"", "\"2026-11-22T10:02:00Z[UTC]\""),
        &["is not an RFC 3339 time"],
    );
    assert_valid(&e(
        "\"2026-11-22T10:02:00Z\"",
        "\"2026-11-22T11:02:00.5+01:00\"",
    ));
}

#[test]
fn yaml_1_1_booleans_and_non_decimal_numbers() {
    assert_refused(
        &edit("labels: {app: cart}", "labels: {app: cart, canary: yes}"),
        &[
            "19:35: spec.targets.cart.labels.canary: kubectl reads yes as a boolean; quote it: \"yes\"",
        ],
    );
    assert_valid(&edit(
        "labels: {app: cart}",
        "labels: {app: cart, canary: \"yes\"}",
    ));
    assert_valid(&edit(
        "labels: {app: cart}",
        "labels: {app: cart, canary: !!str yes}",
    ));
    assert_refused(
        &edit("labels: {app: cart}", "labels: {app: cart, on: x}"),
        &["19:27: spec.targets.cart.labels.on: kubectl reads on as a boolean; quote it: \"on\""],
    );
    // A target named `no` would reach the apiserver as the key "false".
    assert_refused(
        &edit("    inventory:\n", "    no:\n").replace("target: inventory", "target: \"no\""),
        &["22:5: spec.targets.no: kubectl reads no as a boolean; quote it: \"no\""],
    );
    assert_refused(
        &edit("namespace: shop", "namespace: n"),
        &["8:14: metadata.namespace: kubectl reads n as a boolean; quote it: \"n\""],
    );
    assert_refused(
        &edit("maxTargets: 20", "maxTargets: 0x14"),
        &[
            "49:17: spec.limits.maxTargets: \"0x14\" is not decimal; write the number in decimal: 20",
        ],
    );
    assert_refused(
        &edit("maxTargets: 20", "maxTargets: 0o24"),
        &["\"0o24\" is not decimal; write the number in decimal: 20"],
    );
    assert_refused(
        &edit("maxTargets: 20", "maxTargets: 020"),
        &[
            "\"020\" has a leading zero, and kubectl reads it as an octal number; write the number in decimal: 20",
        ],
    );
    assert_refused(
        &edit("percentile: 99", "percentile: 0x63"),
        &["spec.hypothesis[2].latency.percentile: \"0x63\" is not decimal"],
    );
    assert_valid(&edit("percentile: 99", "percentile: 99.0"));
}

#[test]
fn metadata_generate_name_annotations_and_status() {
    assert_valid(&edit(
        "  name: payments-slowdown\n",
        "  generateName: payments-slowdown-\n",
    ));
    assert_refused(
        &edit("  name: payments-slowdown\n", "  generateName: Payments-\n"),
        &["7:17: metadata.generateName: experiment name prefix \"Payments-\" must be lowercase"],
    );
    assert_refused(
        &edit(
            "  namespace: shop\n",
            "  namespace: shop\n  annotations: {\"bad key\": x, \"example.com/ok\": \"any value at all\"}\n",
        ),
        &["9:28: metadata.annotations[\"bad key\"]: \"bad key\" is not a valid label key"],
    );
    assert_eq!(
        diagnostics(
            edit(
                "  namespace: shop\n",
                "  namespace: shop\n  annotations: {\"bad key\": x, \"example.com/ok\": \"any value at all\"}\n"
            )
            .as_bytes()
        )
        .len(),
        1
    );
    // A numeric-looking key is found by its text for the position.
    assert_refused(
        &edit(
            "  namespace: shop\n",
            "  namespace: shop\n  labels: {1: \"-x\"}\n",
        ),
        &["9:15: metadata.labels.1: \"-x\" is not a valid label value"],
    );
    // `kubectl get -o yaml` output of an Experiment carries a status: ignored.
    assert_valid(&format!("{BASE}status: {{phase: Running, targets: 3}}\n"));
    assert_refused(
        &format!("{TOPOLOGY}status: {{}}\n"),
        &["16:1: status: unknown field; expected one of: apiVersion, kind, metadata, spec"],
    );
    assert_refused(
        &edit(
            "metadata:\n  name: payments-slowdown\n  namespace: shop\n",
            "metadata:\n",
        ),
        &["6:1: metadata: is required (at least metadata.name)"],
    );
}

#[test]
fn urls_are_checked_strictly() {
    let url = |u: &str| edit("\"http://frontend.shop:8080/health\"", &format!("\"{u}\""));
    assert_valid(&url("HTTP://frontend.shop:8080/health"));
    assert_valid(&url("http://[fd00::1]:8080/health"));
    assert_refused(
        &url("http://a:b:c/"),
        &["45:19: spec.hypothesis[3].http.url: \"http://a:b:c/\" has an invalid port"],
    );
    assert_refused(
        &url("http://x:+80/"),
        &["\"http://x:+80/\" has an invalid port"],
    );
    assert_refused(
        &url("http://[::1/"),
        &["\"http://[::1/\" has an unclosed [ in its host"],
    );
    assert_refused(
        &url("http://[::1]:0/"),
        &["\"http://[::1]:0/\" has an invalid port"],
    );
}

#[test]
fn yaml_tags_must_fit_their_nodes() {
    assert_valid(&edit("maxTargets: 20", "maxTargets: !!int \"20\""));
    assert_valid(&edit("labels: {app: cart}", "labels: !!map {app: cart}"));
    assert_refused(
        &edit("labels: {app: cart}", "labels: !!seq {app: cart}"),
        &["19:21: the tag !!seq does not fit a mapping"],
    );
    assert_refused(
        &edit("labels: {app: cart}", "labels: !!str {app: cart}"),
        &["19:21: the tag !!str does not fit a mapping"],
    );
    assert_refused(
        &edit("labels: {app: cart}", "labels: !thing {app: cart}"),
        &["19:22: custom YAML tags like !thing are not supported"],
    );
    assert_refused(
        &edit("peers: [payments]", "peers: !!map [payments]"),
        &["36:49: the tag !!map does not fit a list"],
    );
    assert_refused(
        &edit("maxTargets: 20", "maxTargets: !!int twenty"),
        &["49:23: \"twenty\" is not an integer, as its tag !!int says"],
    );
    assert_refused(
        &edit("maxTargets: 20", "maxTargets: !!bool yes"),
        &["\"yes\" is not true or false, as its tag !!bool says"],
    );
    assert_refused(
        &edit("maxTargets: 20", "maxTargets: !!seq 20"),
        &["49:23: the tag !!seq is for lists, not a single value"],
    );
}

#[test]
fn only_a_plain_merge_key_is_a_merge_key() {
    let base = &edit("labels: {app: cart}", "labels: &l {app: cart}");
    assert_refused(
        &base.replacen("labels: {app: inventory}", "labels: {<<: *l}", 1),
        &["23:16: YAML merge keys (<<) are not supported"],
    );
    // Quoted, it is an ordinary key (here, not a valid label key).
    assert_refused(
        &base.replacen("labels: {app: inventory}", "labels: {\"<<\": x}", 1),
        &["23:22: spec.targets.inventory.labels[\"<<\"]: \"<<\" is not a valid label key"],
    );
}

#[test]
fn topology_is_read_as_yaml_1_2_only() {
    // Only Faultline reads a Topology, never kubectl: YAML 1.1 readings do not apply.
    assert_valid(
        &TOPOLOGY
            .replacen(
                "--listen, \"127.0.0.1:7003\"",
                "--listen, \"127.0.0.1:7003\", --verbose, yes",
                1,
            )
            .replacen("{LOG: info}", "{LOG: on}", 1)
            .replacen("port: 7003", "port: 07003", 1),
    );
    assert_refused(
        &TOPOLOGY.replacen("port: 7003", "port: 0x1B5B", 1),
        &[
            "9:13: spec.services[0].port: \"0x1B5B\" is not decimal; write the number in decimal: 7003",
        ],
    );
}

#[test]
fn topology_service_names_start_with_a_letter() {
    let text = TOPOLOGY
        .replace("name: payments", "name: 1payments")
        .replace("dependsOn: [payments]", "dependsOn: [1payments]");
    assert_refused(
        &text,
        &[
            "6:13: spec.services[0].name: service name \"1payments\" must start with a letter: dependents find it at 1PAYMENTS_ADDR, which must be an environment variable name",
        ],
    );
}

#[test]
fn relative_checks_need_a_limit_and_room_for_a_baseline() {
    // slow-payments starts at 0s: no steady state to measure first.
    assert_refused(
        &edit("max: 800ms,", "maxRatio: 1.5,"),
        &[
            "43:62: spec.hypothesis[2].latency.maxRatio: compares with a baseline measured before the first fault, and a fault starts at 0s",
        ],
    );
    assert_refused(
        &edit("max: 5%,", "maxIncrease: 2%,"),
        &[
            "spec.hypothesis[0].errorRate.maxIncrease: compares with a baseline measured before the first fault",
        ],
    );
    let later = |text: String| {
        text.replacen(
            "      latency: {delay: 300ms",
            "      start: 10s\n      latency: {delay: 300ms",
            1,
        )
    };
    assert_valid(&later(edit("max: 800ms,", "maxRatio: 1.5,")));
    assert_valid(&later(edit("max: 5%,", "max: 5%, maxIncrease: 2%,")));
    assert_refused(
        &later(edit("max: 800ms,", "maxRatio: 0,")),
        &["spec.hypothesis[2].latency.maxRatio: 0 is not a ratio"],
    );
    assert_refused(
        &edit("max: 800ms,", ""),
        &["spec.hypothesis[2].latency: needs max (a latency) or maxRatio"],
    );
    assert_refused(
        &edit("max: 5%,", ""),
        &["spec.hypothesis[0].errorRate: needs max (an error rate) or maxIncrease"],
    );
    assert_refused(
        &later(edit(
            "errorRate: {service: checkout, max: 5%, window: 30s}",
            "errorRate: {service: checkout, maxIncrease: 2%}\n      when: [before]",
        )),
        &[
            "spec.hypothesis[0].errorRate.maxIncrease: compares with the baseline, measured while no fault has started, so `before` has nothing to compare with",
        ],
    );
}

#[test]
fn http_checks_refuse_link_local_and_metadata_addresses() {
    for host in ["169.254.169.254", "[fe80::1]", "metadata.google.internal"] {
        let text = edit(
            "http://frontend.shop:8080/health",
            &format!("http://{host}/latest"),
        );
        assert_refused(
            &text,
            &[
                "spec.hypothesis[3].http.url: ",
                "names a link-local or cloud metadata address; set allowLinkLocal: true on this check to allow it",
            ],
        );
        assert_valid(&text.replace("timeout: 2s}", "timeout: 2s, allowLinkLocal: true}"));
    }
}

#[test]
fn confirm_timeout_and_abort_grace_bounds() {
    assert_refused(
        &edit("  duration: 2m\n", "  duration: 2m\n  confirmTimeout: 0s\n"),
        &["spec.confirmTimeout: 0s is not 1s to 1h"],
    );
    assert_refused(
        &edit("  duration: 2m\n", "  duration: 2m\n  abortGrace: 0s\n"),
        &["spec.abortGrace: must be greater than 0s"],
    );
    assert_valid(&edit(
        "  duration: 2m\n",
        "  duration: 2m\n  confirmTimeout: 45s\n",
    ));
}

#[test]
fn network_faults() {
    let with = |network: &str| {
        edit(
            "latency: {delay: 300ms, jitter: 50ms}",
            &format!("network: {network}"),
        )
    };
    assert_valid(&with(
        "{loss: 10%, lossCorrelation: 25%, corrupt: 1%, duplicate: 2%, rate: 1mbit}",
    ));
    assert_valid(&with(
        "{delay: 50ms, jitter: 5ms, reorder: 25%, to: [cart]}",
    ));
    assert_refused(
        &with("{to: [cart]}"),
        &["spec.faults[0].network: impairs nothing"],
    );
    assert_refused(
        &with("{loss: 0%}"),
        &["spec.faults[0].network: impairs nothing"],
    );
    assert_refused(
        &with("{reorder: 25%, loss: 1%}"),
        &["spec.faults[0].network.reorder: needs a delay"],
    );
    assert_refused(
        &with("{jitter: 5ms, loss: 1%}"),
        &["spec.faults[0].network.jitter: needs a delay"],
    );
    assert_refused(
        &with("{lossCorrelation: 25%, corrupt: 1%}"),
        &["spec.faults[0].network.lossCorrelation: needs a loss"],
    );
    assert_refused(
        &with("{rate: 1.5mbit}"),
        &[
            "spec.faults[0].network.rate: \"1.5mbit\" is not a rate (write it like 1mbit, 500kbit or 2gbit)",
        ],
    );
    assert_refused(
        &with("{rate: 0kbit}"),
        &["spec.faults[0].network.rate: \"0kbit\" is not above 0"],
    );
    assert_refused(
        &with("{corrupt: 101%}"),
        &["spec.faults[0].network.corrupt: \"101%\" is above 100%"],
    );
    assert_refused(&with("{lose: 10%}"), &["spec.faults[0].network.lose"]);
}

#[test]
fn stress_faults() {
    let with = |stress: &str| {
        edit(
            "latency: {delay: 300ms, jitter: 50ms}",
            &format!("stress: {stress}"),
        )
    };
    assert_valid(&with("{cpu: {workers: 2, load: 50%}}"));
    assert_valid(&with("{cpu: {}, memory: {size: 256Mi, rampUp: 30s}}"));
    assert_valid(&with("{memory: {size: 2Gi}}"));
    assert_refused(
        &with("{}"),
        &["spec.faults[0].stress: stresses nothing: set cpu, memory or both"],
    );
    assert_refused(
        &with("{cpu: {workers: 0}}"),
        &["spec.faults[0].stress.cpu.workers: must be 1 to 64"],
    );
    assert_refused(
        &with("{cpu: {workers: 65}}"),
        &["spec.faults[0].stress.cpu.workers: must be 1 to 64"],
    );
    assert_refused(
        &with("{cpu: {load: 0%}}"),
        &["spec.faults[0].stress.cpu.load: must be above 0%"],
    );
    assert_refused(
        &with("{cpu: {load: 150%}}"),
        &["spec.faults[0].stress.cpu.load: \"150%\" is above 100%"],
    );
    assert_refused(
        &with("{memory: {size: 64MB}}"),
        &[
            "spec.faults[0].stress.memory.size: \"64MB\" is not a size (write it like 64Mi, 512Ki or 2Gi)",
        ],
    );
    assert_refused(
        &with("{memory: {size: 100Gi}}"),
        &["spec.faults[0].stress.memory.size: \"100Gi\" is above 64Gi"],
    );
    assert_refused(
        &with("{memory: {rampUp: 10s}}"),
        &["spec.faults[0].stress.memory.size"],
    );
    assert_refused(
        &with("{cpu: {threads: 2}}"),
        &["spec.faults[0].stress.cpu.threads"],
    );
    // Every diagnostic names its line and column.
    let diags = diagnostics(with("{cpu: {workers: 0}}").as_bytes());
    assert!(
        diags
            .iter()
            .all(|d| d.split(':').take(2).all(|n| n.parse::<u32>().is_ok())),
        "{diags:?}"
    );
}

#[test]
fn an_error_rate_narrowed_to_calls() {
    let with = |check: &str| {
        edit(
            "errorRate: {service: checkout, max: 5%, window: 30s}",
            &format!("errorRate: {check}"),
        )
    };
    assert_valid(&with("{service: checkout, to: inventory, max: 1%}"));
    assert_refused(
        &with("{service: checkout, to: checkout, max: 1%}"),
        &["errorRate.to: names the service itself"],
    );
    assert_refused(
        &with("{service: checkout, to: \"\", max: 1%}"),
        &["errorRate.to: must not be empty"],
    );
    assert_refused(
        &with("{service: checkout, peer: inventory, max: 1%}"),
        &["errorRate.peer"],
    );
}
