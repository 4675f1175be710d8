//! The install: the Helm chart lints, renders with default and other values
//! into manifests the official Kubernetes schemas accept (1.30 to 1.34), its
//! RBAC is least privilege, and the images' Dockerfile, the demo shop and
//! the e2e workflow pass their linters. helm, kubernetes-validate, hadolint
//! and actionlint come from scripts/test.sh, which sets
//! FAULTLINE_REQUIRE_PEERS so that none of this passes by skipping.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs a peer program; None (the test skips) only when peers are not required.
fn peer(env: &str, default: &str, args: &[&str], extra_env: &[(&str, String)]) -> Option<Output> {
    let program = std::env::var(env).unwrap_or_else(|_| default.to_owned());
    let mut cmd = Command::new(&program);
    cmd.args(args).current_dir(repo());
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    match cmd.output() {
        Ok(out) => Some(out),
        Err(e) => {
            faultline_testkit::skip_without_peer(&format!("{program} ({env}) not available ({e})"));
            None
        }
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

const CHART: &str = "charts/faultline";

/// Other values than the defaults: two controllers, no pod deletion, no
/// own-node policy, forwarding, scheduling constraints.
const OTHER_VALUES: &[&str] = &[
    "--set",
    "controller.replicas=2,controller.podDeletion=false,agent.restrictToOwnNode=false",
    "--set",
    "observer.forward=http://jaeger-collector.observability:4317,otlpEndpoint=http://collector:4317",
    "--set",
    "controller.nodeSelector.role=infra,observer.tolerations[0].operator=Exists,image.tag=dev",
    "--set",
    "controller.leaderElect=false,agent.stateDir=/var/lib/fl",
    "--set",
    "observer.tokenSecret=observer-token,admission.enabled=false,ceilings.maxTargets=0",
    "--set",
    "observer.attributeNamespaces=false",
];

fn render(extra: &[&str]) -> Option<String> {
    let mut args = vec![
        "template",
        "fl",
        CHART,
        "--namespace",
        "faultline",
        "--include-crds",
    ];
    args.extend_from_slice(extra);
    let out = peer("FAULTLINE_HELM", "helm", &args, &[])?;
    assert!(
        out.status.success(),
        "helm template failed:\n{}",
        text(&out)
    );
    Some(String::from_utf8(out.stdout).expect("utf-8"))
}

fn documents(rendered: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(rendered)
        .expect("rendered YAML parses")
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

fn named<'a>(docs: &'a [Value], kind: &str, suffix: &str) -> &'a Value {
    docs.iter()
        .find(|d| {
            d["kind"] == kind
                && d["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.ends_with(suffix))
        })
        .unwrap_or_else(|| panic!("no {kind} named …{suffix}"))
}

/// kubernetes-validate --strict against one Kubernetes version; every
/// document must be reported as passed.
fn validate(file: &Path, version: &str, expected: usize) {
    let Some(out) = peer(
        "FAULTLINE_KUBERNETES_VALIDATE",
        "kubernetes-validate",
        &[
            "--strict",
            "--kubernetes-version",
            version,
            file.to_str().expect("path"),
        ],
        &[],
    ) else {
        return;
    };
    let all = text(&out);
    assert!(out.status.success(), "{version}:\n{all}");
    assert_eq!(
        all.matches(" passed for resource ").count(),
        expected,
        "{version}: every document must pass:\n{all}"
    );
}

#[test]
fn the_chart_lints_strictly() {
    let Some(out) = peer("FAULTLINE_HELM", "helm", &["lint", "--strict", CHART], &[]) else {
        return;
    };
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn every_rendered_manifest_validates_on_kubernetes_1_30_to_1_34() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, extra) in [("default", &[][..]), ("other", OTHER_VALUES)] {
        let Some(rendered) = render(extra) else {
            return;
        };
        let docs = documents(&rendered).len();
        assert!(docs >= 12, "{name}: only {docs} documents");
        let file = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&file, rendered).expect("write");
        for version in ["1.30", "1.31", "1.32", "1.33", "1.34"] {
            validate(&file, version, docs);
        }
    }
    let shop = repo().join("deploy/demo-shop.yaml");
    let docs = documents(&std::fs::read_to_string(&shop).expect("demo shop")).len();
    validate(&shop, "1.34", docs);
}

#[test]
fn rbac_is_least_privilege() {
    for extra in [&[][..], OTHER_VALUES] {
        let Some(rendered) = render(extra) else {
            return;
        };
        let docs = documents(&rendered);
        let roles: Vec<&Value> = docs
            .iter()
            .filter(|d| d["kind"] == "ClusterRole" || d["kind"] == "Role")
            .collect();
        assert!(roles.len() >= 2);
        for role in &roles {
            for rule in role["rules"].as_array().expect("rules") {
                for field in ["apiGroups", "resources", "verbs"] {
                    let values: Vec<&str> = rule[field]
                        .as_array()
                        .expect(field)
                        .iter()
                        .map(|v| v.as_str().expect("string"))
                        .collect();
                    assert!(!values.contains(&"*"), "a wildcard in {role}");
                    if field == "resources" {
                        for forbidden in ["secrets", "configmaps", "serviceaccounts/token"] {
                            assert!(!values.contains(&forbidden), "{forbidden} in {role}");
                        }
                    }
                }
                assert!(
                    rule.get("nonResourceURLs").is_none(),
                    "no non-resource URLs: {role}"
                );
            }
        }
        // The agent reads NodeFaults and writes their status: nothing else.
        let agent = named(&docs, "ClusterRole", "-agent");
        assert_eq!(
            agent["rules"],
            serde_json::json!([
                {"apiGroups": ["faultline.dev"], "resources": ["nodefaults"], "verbs": ["get", "list", "watch"]},
                {"apiGroups": ["faultline.dev"], "resources": ["nodefaults/status"], "verbs": ["patch"]},
            ])
        );
        let controller = named(&docs, "ClusterRole", "-controller");
        let deletes_pods = controller["rules"]
            .as_array()
            .expect("rules")
            .iter()
            .any(|r| {
                r["resources"] == serde_json::json!(["pods"])
                    && r["verbs"] == serde_json::json!(["delete"])
            });
        assert_eq!(
            deletes_pods,
            extra.is_empty(),
            "pod deletion follows controller.podDeletion"
        );
        // Leases only in the release's namespace, and only with leader election.
        let lease_role = docs.iter().find(|d| d["kind"] == "Role");
        assert_eq!(lease_role.is_some(), extra.is_empty());
        if let Some(role) = lease_role {
            assert_eq!(role["metadata"]["namespace"], "faultline");
            assert_eq!(role["rules"][0]["resources"], serde_json::json!(["leases"]));
        }
        // The own-node policy binds the agent's status writes to its node.
        let policy = docs.iter().find(|d| {
            d["kind"] == "ValidatingAdmissionPolicy"
                && d["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.ends_with("-agent-own-node"))
        });
        assert_eq!(policy.is_some(), extra.is_empty());
        // Who may fault a namespace: on by default (admission.enabled).
        let admission = docs.iter().find(|d| {
            d["kind"] == "ValidatingAdmissionPolicy"
                && d["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.ends_with("-experiments"))
        });
        assert_eq!(admission.is_some(), extra.is_empty());
        if let Some(a) = admission {
            assert!(
                a["spec"]["validations"][0]["expression"]
                    .as_str()
                    .is_some_and(|e| e.contains("authorizer.group('').resource('pods')")),
            );
        }
        // Who reaches the observer: OTLP from opted-in namespaces and the
        // release's pods, the API from the controller only.
        let netpol = &named(&docs, "NetworkPolicy", "-observer")["spec"];
        assert_eq!(
            netpol["ingress"][0]["from"][0]["namespaceSelector"]["matchLabels"]["faultline.dev/enabled"],
            "true"
        );
        assert_eq!(
            netpol["ingress"][1]["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"],
            "controller"
        );
        // helm uninstall runs the clean-up once the controller and agents
        // are gone, as its own account, allowed only what it does.
        let hook = named(&docs, "Job", "-uninstall");
        assert_eq!(
            hook["metadata"]["annotations"]["helm.sh/hook"],
            "post-delete"
        );
        assert_eq!(
            hook["spec"]["template"]["spec"]["containers"][0]["args"],
            serde_json::json!(["--uninstall"])
        );
        let rules = &named(&docs, "ClusterRole", "-uninstall")["rules"];
        assert_eq!(
            rules.as_array().map(Vec::len),
            Some(3),
            "experiments list/patch, their status, nodefaults list/delete: {rules}"
        );
        // The observer's token: its Secret mounted for the observer and the
        // controller, and in the OTLP headers of the controller and agents.
        let args = |kind: &str, suffix: &str| -> String {
            named(&docs, kind, suffix)["spec"]["template"]["spec"]["containers"][0]["args"]
                .to_string()
        };
        let token = !extra.is_empty();
        assert_eq!(
            args("Deployment", "-observer").contains("--token-file="),
            token
        );
        assert_eq!(
            args("Deployment", "-controller").contains("--observer-token-file="),
            token
        );
        // By default spans count in their sender's namespace: the observer
        // watches pods (list and watch only) and the controller reads
        // namespaced names.
        let attributed = extra.is_empty();
        assert_eq!(
            args("Deployment", "-observer").contains("--attribute-namespaces"),
            attributed
        );
        assert_eq!(
            args("Deployment", "-controller").contains("--observer-namespaced"),
            attributed
        );
        let observer_pod = &named(&docs, "Deployment", "-observer")["spec"]["template"]["spec"];
        assert_eq!(
            observer_pod["automountServiceAccountToken"] == false,
            !attributed,
            "a token only to watch pods"
        );
        if attributed {
            assert_eq!(
                named(&docs, "ClusterRole", "-observer")["rules"],
                serde_json::json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]}])
            );
        }
        for (kind, suffix) in [("Deployment", "-controller"), ("DaemonSet", "-agent")] {
            let env =
                named(&docs, kind, suffix)["spec"]["template"]["spec"]["containers"][0]["env"]
                    .to_string();
            assert_eq!(env.contains("OTEL_EXPORTER_OTLP_HEADERS"), token, "{kind}");
        }
        if let Some(p) = policy {
            let rule = p["spec"]["validations"][0]["expression"]
                .as_str()
                .expect("expression");
            assert!(
                rule.contains("authentication.kubernetes.io/node-name"),
                "{rule}"
            );
        }

        // Only the agent runs as root, with four capabilities, not privileged.
        let agent_ds = named(&docs, "DaemonSet", "-agent");
        let spec = &agent_ds["spec"]["template"]["spec"];
        assert_eq!(spec["hostPID"], true);
        assert!(spec.get("hostNetwork").is_none(), "no host network");
        let sc = &spec["containers"][0]["securityContext"];
        assert_eq!(sc["privileged"], false);
        assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
        assert_eq!(
            sc["capabilities"]["add"],
            serde_json::json!(["NET_ADMIN", "SYS_ADMIN", "SYS_PTRACE", "KILL"])
        );
        assert!(
            spec["containers"][0]["env"]
                .as_array()
                .expect("env")
                .iter()
                .any(|e| e["name"] == "NODE_NAME"
                    && e["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"),
            "NODE_NAME from the downward API"
        );
        for suffix in ["-controller", "-observer"] {
            let d = named(&docs, "Deployment", suffix);
            let pod = &d["spec"]["template"]["spec"];
            assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{suffix}");
            assert_eq!(
                pod["containers"][0]["securityContext"]["capabilities"]["drop"],
                serde_json::json!(["ALL"]),
                "{suffix}"
            );
        }
    }
}

#[test]
fn the_dockerfile_and_the_workflow_pass_their_linters() {
    if let Some(out) = peer("FAULTLINE_HADOLINT", "hadolint", &["Dockerfile"], &[]) {
        assert!(out.status.success(), "hadolint:\n{}", text(&out));
    }
    let Some(node_path) = faultline_testkit::peer_var("FAULTLINE_ACTIONLINT_NODE_PATH") else {
        return;
    };
    let workflows: Vec<String> = std::fs::read_dir(repo().join(".github/workflows"))
        .expect("workflows")
        .map(|e| e.expect("entry").path().display().to_string())
        .collect();
    let mut args = vec!["scripts/actionlint.cjs"];
    args.extend(workflows.iter().map(String::as_str));
    if let Some(out) = peer("FAULTLINE_NODE", "node", &args, &[("NODE_PATH", node_path)]) {
        assert!(out.status.success(), "actionlint:\n{}", text(&out));
    }
}
