#!/usr/bin/env bash
# Jaeger (v2, the all-in-one `jaeger` binary), built from its official Go
# module pinned in testenv/jaeger/, for the tests that export traces to a
# real Jaeger and read them back through its query API.
#
#   scripts/jaeger.sh build     build it if missing; print the binary's path
#
# Cached by module graph under ${FAULTLINE_PEERS_DIR:-target/peers}, so a
# warm run builds nothing. Go is used only here, never by the product.
set -euo pipefail
cd "$(dirname "$0")/.."

peers="${FAULTLINE_PEERS_DIR:-$PWD/target/peers}"
version="$(awk '$1 == "github.com/jaegertracing/jaeger" && $2 ~ /^v/ { print $2; exit }' testenv/jaeger/go.mod)"
out="$peers/jaeger/$version"

build() {
    # The stamp names the module graph: a changed go.sum rebuilds.
    local stamp
    stamp="$(cat testenv/jaeger/go.mod testenv/jaeger/go.sum | sha256sum | cut -d' ' -f1)"
    if [ -f "$out/stamp" ] && [ "$(cat "$out/stamp")" = "$stamp" ] && [ -x "$out/jaeger" ]; then
        return
    fi
    command -v go >/dev/null || { echo "jaeger.sh: Go 1.26 or newer is needed to build Jaeger" >&2; exit 1; }
    echo "building jaeger $version (once; cached in $out)" >&2
    mkdir -p "$out"
    (cd testenv/jaeger && CGO_ENABLED=0 GOFLAGS=-mod=readonly go build -trimpath -ldflags "-s -w" \
        -o "$out/jaeger" github.com/jaegertracing/jaeger/cmd/jaeger)
    echo "$stamp" > "$out/stamp"
}

case "${1:-}" in
    build)
        build
        echo "$out/jaeger"
        ;;
    *)
        echo "usage: $0 build" >&2
        exit 2
        ;;
esac
