#!/usr/bin/env bash
# The tests' Kubernetes control plane, built from the official Go modules
# pinned in testenv/ (kube-apiserver, etcd, kube-controller-manager, and
# kubectl of the same release).
#
#   scripts/control-plane.sh build       build what is missing; print the folder
#   scripts/control-plane.sh up DIR      start it in the background; DIR/kubeconfig
#   scripts/control-plane.sh down DIR    stop what `up DIR` started
#
# Binaries are cached by version under ${FAULTLINE_PEERS_DIR:-target/peers},
# so a warm run builds nothing. Go is used only here, never by the product.
set -euo pipefail
# DIR is the caller's, not the repository's.
if [ $# -eq 2 ]; then
    mkdir -p "$2"
    dir="$(cd "$2" && pwd)"
fi
cd "$(dirname "$0")/.."

peers="${FAULTLINE_PEERS_DIR:-$PWD/target/peers}"
version="$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v/ { print $2; exit }' testenv/go.mod)"
out="$peers/control-plane/$version"

build() {
    # The stamp names the module graph: a changed go.sum rebuilds.
    local stamp
    stamp="$(cat testenv/go.mod testenv/go.sum testenv/*/*.go | sha256sum | cut -d' ' -f1)"
    if [ -f "$out/stamp" ] && [ "$(cat "$out/stamp")" = "$stamp" ]; then
        return
    fi
    command -v go >/dev/null || { echo "control-plane.sh: Go 1.26 or newer is needed to build the control plane" >&2; exit 1; }
    echo "building kube-apiserver, etcd and kube-controller-manager $version (once; cached in $out)" >&2
    mkdir -p "$out"
    local ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$version"
    ldflags+=" -X k8s.io/component-base/version.gitMajor=$(echo "$version" | cut -d. -f1 | tr -d v)"
    ldflags+=" -X k8s.io/component-base/version.gitMinor=$(echo "$version" | cut -d. -f2)"
    (cd testenv && CGO_ENABLED=0 GOFLAGS=-mod=readonly go build -trimpath -ldflags "$ldflags" -o "$out/" \
        ./etcd k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
        k8s.io/kubernetes/cmd/kubectl)
    echo "$stamp" > "$out/stamp"
}

case "${1:-}" in
    build)
        build
        echo "$out"
        ;;
    up)
        [ $# -eq 2 ] || { echo "usage: $0 up DIR" >&2; exit 2; }
        build
        command -v openssl >/dev/null || { echo "control-plane.sh: openssl is needed (Debian package openssl)" >&2; exit 1; }
        exec cargo run --quiet --locked -p faultline-testkit --bin faultline-control-plane -- up "$dir" --bin "$out"
        ;;
    down)
        [ $# -eq 2 ] || { echo "usage: $0 down DIR" >&2; exit 2; }
        exec cargo run --quiet --locked -p faultline-testkit --bin faultline-control-plane -- down "$dir"
        ;;
    *)
        echo "usage: $0 build | up DIR | down DIR" >&2
        exit 2
        ;;
esac
