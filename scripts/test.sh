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

step "kernel peers (nftables, for the node agent's kernel tests)"
if ! command -v nft >/dev/null 2>&1; then
    apt-get update -qq
    apt-get install -y -qq nftables
fi

step "kernel lab (qemu, busybox and a Debian cloud kernel, for the agent's netem tests)"
# Installs what is missing and caches the kernel under target/kernel-lab/;
# agent/tests/kernel_lab.rs then only builds the initramfs and boots.
cargo run --quiet --locked -p faultline-agent --bin faultline-kernel-lab-boot -- --prepare

export FAULTLINE_REQUIRE_PEERS=1
export FAULTLINE_KUBERNETES_VALIDATE="$peers/venv/bin/kubernetes-validate"
export FAULTLINE_PYTHON="$peers/venv/bin/python"

step "formatting"
cargo fmt --all -- --check

step "lints"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "tests"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --locked --no-fail-fast
    cargo test --workspace --locked --doc
else
    cargo test --workspace --locked --no-fail-fast
fi

step "the main job from a clean build: validate the experiment library"
cargo run --quiet --locked -p faultline -- validate --quiet experiments/

step "all tests passed"
