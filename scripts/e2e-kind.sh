#!/usr/bin/env bash
# End to end on a kind cluster: builds the images, installs the chart and
# the demo shop, runs the latency, kill and partition experiments with
# `faultline run` (asserting their exit codes), and checks that nothing is
# left behind: no NodeFaults entries, no faultline nftables table and no
# netem qdisc in any demo pod's network namespace.
#
# Needs docker, kind, kubectl, helm and cargo. It cannot run where no
# container engine runs (the development machines); CI runs it with
# .github/workflows/e2e-kind.yml. KEEP_CLUSTER=1 leaves the cluster up.
set -euo pipefail
cd "$(dirname "$0")/.."

cluster="${FAULTLINE_KIND_CLUSTER:-faultline-e2e}"
registry=ghcr.io/faultline-dev
tag="$(sed -n 's/^appVersion: "\(.*\)"/\1/p' charts/faultline/Chart.yaml)"
reports="${FAULTLINE_E2E_REPORTS:-target/e2e}"
mkdir -p "$reports"

step() { printf '\n==> %s\n' "$*"; }
fail() { printf 'e2e: %s\n' "$*" >&2; exit 1; }

for tool in docker kind kubectl helm cargo; do
    command -v "$tool" >/dev/null || fail "$tool is needed"
done

cleanup() {
    if [ -z "${KEEP_CLUSTER:-}" ]; then
        kind delete cluster --name "$cluster" >/dev/null 2>&1 || true
    fi
}
trap cleanup EXIT

step "kind cluster $cluster"
kind create cluster --name "$cluster" --wait 180s

step "images ($registry/*:$tag)"
for target in controller agent observer cli; do
    docker build --target "$target" --tag "$registry/faultline-$target:$tag" .
    kind load docker-image --name "$cluster" "$registry/faultline-$target:$tag"
done

step "helm install faultline charts/faultline"
helm install faultline charts/faultline --namespace faultline --create-namespace \
    --set image.pullPolicy=Never --wait --timeout 5m

step "the demo shop"
kubectl apply -f deploy/demo-shop.yaml
for d in payments inventory checkout frontend load; do
    kubectl -n shop rollout status "deployment/$d" --timeout 180s
done
# Traffic flows into the observer before the first steady-state check.
sleep 30

step "faultline run, against the cluster"
cargo build --release --locked -p faultline
faultline=target/release/faultline
expect() {
    local want="$1" file="$2" name
    name="$(basename "$file" .yaml)"
    set +e
    "$faultline" run "$file" --junit "$reports/$name.xml" --json "$reports/$name.json"
    local got=$?
    set -e
    [ "$got" -eq "$want" ] || fail "$file: exit $got, expected $want"
}
expect 0 experiments/latency-breaker.yaml
expect 0 experiments/kill-one-replica.yaml
expect 0 experiments/partition-checkout-inventory.yaml

step "nothing left behind"
entries="$(kubectl get nodefaults -o jsonpath='{range .items[*]}{.spec.faults[*].id}{"\n"}{end}' | grep -c . || true)"
[ "$entries" -eq 0 ] || fail "$entries NodeFaults entries are left"
for node in $(kind get nodes --name "$cluster"); do
    docker exec "$node" sh -c 'command -v nft >/dev/null || (apt-get update -qq && apt-get install -y -qq nftables >/dev/null)'
    for pid in $(docker exec "$node" pgrep -f 'faultline demo-role' || true); do
        if docker exec "$node" nsenter -t "$pid" -n nft list tables | grep -q faultline; then
            fail "a faultline nftables table is left in pid $pid's namespace on $node"
        fi
        if docker exec "$node" nsenter -t "$pid" -n tc qdisc show | grep -q netem; then
            fail "a netem qdisc is left in pid $pid's namespace on $node"
        fi
    done
done

step "helm uninstall leaves nothing behind"
# A run in progress when Faultline goes: the post-delete hook ends it,
# deletes every NodeFaults object and removes the finalizer.
sed -e 's/^  duration: .*/  duration: 10m/' -e 's/^  name: payments-latency-breaker/  name: uninstall-check/' \
    experiments/latency-breaker.yaml | kubectl apply -f -
injected=0
for _ in $(seq 60); do
    injected="$(kubectl get experiment uninstall-check -n shop -o jsonpath='{.status.injected}' 2>/dev/null || true)"
    [ "${injected:-0}" -gt 0 ] && break
    sleep 2
done
[ "${injected:-0}" -gt 0 ] || fail "the run to uninstall under never had a fault in place"
helm uninstall faultline --namespace faultline --wait --timeout 5m
[ "$(kubectl get nodefaults -o name | wc -l)" -eq 0 ] || fail "NodeFaults objects are left"
left="$(kubectl get experiments -A -o jsonpath='{range .items[*]}{.metadata.finalizers}{"\n"}{end}' | grep -c faultline || true)"
[ "$left" -eq 0 ] || fail "$left Experiments keep Faultline's finalizer"

step "e2e passed (reports in $reports)"
