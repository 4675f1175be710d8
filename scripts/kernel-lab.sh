#!/usr/bin/env bash
# The node agent's kernel lab: boots a stock Debian cloud kernel under qemu
# with the agent inside and runs faultline-kernel-lab (agent/lab/main.rs) as
# /init, which exercises netem latency, nftables partitions and crash
# recovery in network namespaces of the guest (see docs/agent.md, "Kernel
# lab"). This script only packs and boots; what runs in the guest runs every
# command as an argument vector.
#
#   scripts/kernel-lab.sh --prepare          install packages, fetch and unpack the kernel
#   scripts/kernel-lab.sh AGENT LAB_INIT     prepare (reusing the cache), build the
#                                            initramfs, boot; the serial console goes
#                                            to stdout, progress to stderr
#
# AGENT and LAB_INIT are the faultline-agent and faultline-kernel-lab binaries
# (target/debug/ after `cargo build -p faultline-agent`).
#
# The kernel and its module archive are cached under target/kernel-lab/
# (FAULTLINE_KERNEL_LAB_DIR overrides). The guest has no network device:
# all its traffic stays inside namespaces it creates.
#
# Environment: FLTLAB_DELAY_MS (default 50) and FLTLAB_SAMPLES (default 20)
# are passed to /init on the kernel command line, as is FLTLAB_BENCH (run only
# the benchmark of agent/benches/kernel_lab.rs, that many times); FLTLAB_TIMEOUT (seconds,
# default 300) bounds the boot. FLTLAB_QEMU_ARGS (default
# "-icount shift=0,sleep=off") are extra qemu options: by default the guest
# clock counts instructions (1 ns each) and jumps over idle time, so RTTs
# and netem delays read in the guest do not depend on how busy the host is,
# and waits cost no wall time. FLTLAB_QEMU_ARGS= (empty) boots with a
# real-time clock instead (RTTs then carry the host's scheduling noise).
#
# Exit codes: 0 the guest ran /init to its end (whether its checks passed is
# for the caller to judge from the FLTLAB lines); 3 the lab cannot run here
# (not root, packages not installable, no kernel reachable); anything else:
# the lab itself broke (qemu failed, timed out: 124).
set -euo pipefail
cd "$(dirname "$0")/.."

lab="${FAULTLINE_KERNEL_LAB_DIR:-$PWD/target/kernel-lab}"

say() { printf 'kernel-lab: %s\n' "$*" >&2; }
cannot() {
    say "cannot run: $*"
    exit 3
}

usage() {
    say "usage: $0 --prepare | $0 AGENT_BINARY LAB_INIT_BINARY"
    exit 2
}

prepare_only=0
agent=""
init=""
case "${1:-}" in
--prepare) [ $# -eq 1 ] || usage; prepare_only=1 ;;
"" | -*) usage ;;
*) [ $# -eq 2 ] || usage; agent="$1" init="$2" ;;
esac

[ "$(id -u)" = 0 ] || cannot "needs root (apt-get, and the initramfs holds root-owned files)"

# --- packages ----------------------------------------------------------------

apt_updated=0
apt_update() {
    if [ "$apt_updated" = 0 ]; then
        say "apt-get update"
        apt-get update -qq >&2 || return 1
        apt_updated=1
    fi
}

missing=()
command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
command -v cpio >/dev/null || missing+=(cpio)
# A static busybox: the dynamic one (package busybox) would need its libraries.
{ [ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1; } || missing+=(busybox-static)
command -v depmod >/dev/null || missing+=(kmod)
for p in ip tc nft; do
    command -v "$p" >/dev/null || missing+=("$([ "$p" = nft ] && echo nftables || echo iproute2)")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    apt_update || cannot "apt-get update failed"
    # No recommends: qemu would pull a whole desktop stack.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 ||
        cannot "apt-get install ${missing[*]} failed"
fi

# --- the kernel ----------------------------------------------------------------

mkdir -p "$lab"
# Which linux-image-<version>-cloud-amd64 the metapackage points at now.
current_version() {
    apt-cache depends linux-image-cloud-amd64 2>/dev/null |
        sed -n 's/^ *Depends: linux-image-\(.*-cloud-amd64\)$/\1/p' | head -n1
}
version="$(current_version || true)"
if [ -z "$version" ]; then
    apt_update || true
    version="$(current_version || true)"
fi
if [ -z "$version" ]; then
    # Offline: whatever was fetched last time.
    version="$(cat "$lab/current" 2>/dev/null || true)"
    [ -n "$version" ] || cannot "no linux-image-cloud-amd64 in apt and nothing cached in $lab"
    say "apt does not know linux-image-cloud-amd64; using the cached $version"
fi

kdir="$lab/kernel/$version"
if [ ! -s "$kdir/vmlinuz" ] || [ ! -s "$kdir/modules.cpio.gz" ]; then
    say "fetching linux-image-$version"
    rm -rf "$kdir.tmp"
    mkdir -p "$kdir.tmp/deb" "$kdir.tmp/mods"
    (cd "$kdir.tmp/deb" && apt-get download -qq "linux-image-$version" >&2 2>/dev/null) ||
        (apt_update && cd "$kdir.tmp/deb" && apt-get download -qq "linux-image-$version" >&2) ||
        cannot "apt-get download linux-image-$version failed"
    dpkg -x "$kdir.tmp/deb"/linux-image-*.deb "$kdir.tmp/root"
    cp "$kdir.tmp/root/boot/vmlinuz-$version" "$kdir.tmp/vmlinuz"
    # Only what networking needs (netem, prio, u32, matchall, veth, nf_tables
    # and what they depend on); the whole tree would triple the boot time.
    src="$kdir.tmp/root/lib/modules/$version"
    dst="$kdir.tmp/mods/lib/modules/$version"
    mkdir -p "$dst/kernel"
    for d in net drivers/net lib crypto arch; do
        [ -d "$src/kernel/$d" ] || continue
        mkdir -p "$dst/kernel/$(dirname "$d")"
        cp -a "$src/kernel/$d" "$dst/kernel/$d"
    done
    cp -a "$src"/modules.builtin* "$src"/modules.order "$dst/" 2>/dev/null || true
    depmod -b "$kdir.tmp/mods" "$version"
    (cd "$kdir.tmp/mods" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --quiet | gzip -1) \
        >"$kdir.tmp/modules.cpio.gz"
    rm -rf "$kdir.tmp/deb" "$kdir.tmp/root" "$kdir.tmp/mods"
    rm -rf "$kdir"
    mv "$kdir.tmp" "$kdir"
fi
echo "$version" >"$lab/current"
# Kernels the metapackage no longer points at.
for old in "$lab"/kernel/*; do
    [ "$old" = "$kdir" ] || rm -rf "$old"
done
say "kernel $version ready in $kdir"

if [ "$prepare_only" = 1 ]; then
    exit 0
fi

# --- the initramfs -----------------------------------------------------------

[ -x "$agent" ] && [ -x "$init" ] || usage
run="$(mktemp -d "$lab/run.XXXXXX")"
trap 'rm -rf "$run"' EXIT
root="$run/root"
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,run,lab/bin,etc}

# Copies a file to the same path inside the initramfs.
put() {
    mkdir -p "$root$(dirname "$1")"
    cp -L "$1" "$root$1"
}
# Copies a program to /lab/bin with the shared libraries ldd names.
program() {
    local from="$1" name="$2"
    cp -L "$from" "$root/lab/bin/$name"
    { ldd "$from" || true; } | grep -o '/[^ ]*' | while read -r lib; do
        [ -e "$root$lib" ] || put "$lib"
    done
}

cp /bin/busybox "$root/bin/busybox"
# Applet links, but not ip/tc: the real ones are called by full path.
/bin/busybox --list-full | while read -r applet; do
    case "${applet##*/}" in ip | tc | busybox) continue ;; esac
    [ -e "$root/$applet" ] || ln -s /bin/busybox "$root/$applet"
done
program "$(command -v ip)" ip
program "$(command -v tc)" tc
program "$(command -v nft)" nft
program "$agent" faultline-agent
program "$init" init
mv "$root/lab/bin/init" "$root/init"
# Debug info is most of a dev build; the guest only runs it.
strip --strip-debug "$root/lab/bin/faultline-agent" "$root/init" 2>/dev/null || true

(cd "$root" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --quiet | gzip -1) >"$run/run.cpio.gz"
# The kernel unpacks concatenated archives in order.
cat "$kdir/modules.cpio.gz" "$run/run.cpio.gz" >"$run/initrd.gz"

# --- boot ----------------------------------------------------------------------

append="console=ttyS0 quiet panic=-1 fltlab.delay_ms=${FLTLAB_DELAY_MS:-50} fltlab.samples=${FLTLAB_SAMPLES:-20} fltlab.bench=${FLTLAB_BENCH:-0}"
say "booting $version ($(du -k "$run/initrd.gz" | cut -f1) KiB initramfs)"
# No network device (-nic none): nothing the guest does reaches the host's network.
# shellcheck disable=SC2086 # FLTLAB_QEMU_ARGS is a list of words
timeout "${FLTLAB_TIMEOUT:-300}" qemu-system-x86_64 \
    -accel tcg -m 1024 -smp 1 -nographic -no-reboot -nic none ${FLTLAB_QEMU_ARGS--icount shift=0,sleep=off} \
    -kernel "$kdir/vmlinuz" -initrd "$run/initrd.gz" -append "$append" </dev/null
