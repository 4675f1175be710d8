#!/bin/sh
# /init of the kernel lab (scripts/kernel-lab.sh builds the initramfs).
#
# Runs the real faultline-agent against the stock kernel and prints one
# machine-readable line per result on the console, parsed by
# agent/tests/kernel_lab.rs:
#
#   FLTLAB config delay_ms=50 samples=20
#   FLTLAB rtt phase=PHASE dst=ADDR ms=0.412        one per ping reply
#   FLTLAB check name=NAME ok|fail detail=TEXT      one per boolean check
#   FLTLAB done                                     /init reached its end
#
# With fltlab.bench=N on the command line, only the benchmark runs (see
# agent/benches/kernel_lab.rs): FLTLAB bench i=I op=apply|remove at_us=TIME
# lines, then the agent's log as FLTLAB agentlog LINE.
#
# RTT phases: baseline (no fault), to (latency to 10.201.1.2 only), restored
# (after its removal), all (latency without `to`), dual (latency to
# 10.201.1.2 and fd00:201:1::2), recovered (after a SIGKILL and a restart
# that swept the journal). Each pings every destination below from tgt, but
# recovered pings only the two that were delayed.
#
# Network (all inside the guest, which has no network device of its own):
#
#   tgt t1 10.201.1.1/24 fd00:201:1::1/64 ── p1 pa: 10.201.1.2/24 10.201.1.3/24
#                                                    fd00:201:1::2/64 fd00:201:1::3/64
#   tgt t2 10.201.2.1/24                  ── p2 pb: 10.201.2.2/24
#
# Faults target /run/netns/tgt. 10.201.1.3 and fd00:201:1::3 share the
# delayed destinations' interface; 10.201.2.2 is behind the other one.
# Busybox sh prefers its own applets, so the real ip/tc/nft are called by
# their full path under /lab/bin.

export PATH=/bin:/sbin:/usr/bin:/usr/sbin
IP=/lab/bin/ip
TC=/lab/bin/tc
NFT=/lab/bin/nft
AGENT=/lab/bin/faultline-agent
DESIRED=/tmp/desired.yaml
STATE=/tmp/agent-state
LOG=/tmp/agent.log
DELAYED=10.201.1.2
SAME_LINK=10.201.1.3
OTHER_LINK=10.201.2.2
DELAYED6=fd00:201:1::2
SAME_LINK6=fd00:201:1::3
AGENT_PID=

mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
# udev's links, for programs that open /dev/stdin and the like.
ln -sf /proc/self/fd /dev/fd
ln -sf /proc/self/fd/0 /dev/stdin
ln -sf /proc/self/fd/1 /dev/stdout
ln -sf /proc/self/fd/2 /dev/stderr
mount -t tmpfs tmp /tmp
mount -t tmpfs run /run
mkdir -p /run/netns /sys/fs/cgroup
mount -t cgroup2 cgroup2 /sys/fs/cgroup

arg() { sed -n "s/.*fltlab\.$1=\([0-9]*\).*/\1/p" /proc/cmdline; }
DELAY_MS=$(arg delay_ms)
SAMPLES=$(arg samples)
: "${DELAY_MS:=50}" "${SAMPLES:=20}"

out() { echo "FLTLAB $*"; }
# check NAME DETAIL COMMAND...: runs COMMAND, reports ok when it succeeds.
check() {
    name=$1 detail=$2
    shift 2
    if "$@" >/dev/null 2>&1; then
        out "check name=$name ok detail=$detail"
    else
        out "check name=$name fail detail=$detail"
    fi
}
not() { ! "$@"; }
info() { sed "s/^/# $1: /"; }
# Seconds since boot, for the console's reader.
stamp() { echo "# t=$(cut -d' ' -f1 /proc/uptime) $*"; }

# --- namespaces ----------------------------------------------------------------

netup() {
    $IP netns add tgt && $IP netns add pa && $IP netns add pb &&
        $IP link add t1 netns tgt type veth peer name p1 netns pa &&
        $IP link add t2 netns tgt type veth peer name p2 netns pb &&
        $IP -n tgt addr add 10.201.1.1/24 dev t1 &&
        $IP -n tgt addr add 10.201.2.1/24 dev t2 &&
        $IP -n pa addr add $DELAYED/24 dev p1 &&
        $IP -n pa addr add $SAME_LINK/24 dev p1 &&
        $IP -n pb addr add $OTHER_LINK/24 dev p2 &&
        $IP -n tgt addr add fd00:201:1::1/64 dev t1 nodad &&
        $IP -n pa addr add $DELAYED6/64 dev p1 nodad &&
        $IP -n pa addr add $SAME_LINK6/64 dev p1 nodad &&
        for l in tgt:t1 tgt:t2 pa:p1 pb:p2 tgt:lo pa:lo pb:lo; do
            $IP -n "${l%%:*}" link set "${l#*:}" up || return 1
        done
}

in_tgt() { $IP netns exec tgt "$@"; }
reachable() { in_tgt /bin/busybox ping -c 2 -i 0.2 -W 1 -w 3 "$1"; }
qdiscs() { $TC -n tgt qdisc show; }
ruleset() { in_tgt $NFT list ruleset; }
has_netem() { qdiscs | grep -q "netem"; }
has_netem_delay() { qdiscs | grep -q "netem .*delay ${DELAY_MS}ms"; }
has_netem_delay_on() { $TC -n tgt qdisc show dev "$1" | grep -q "netem .*delay ${DELAY_MS}ms"; }
has_table() { ruleset | grep -q "table inet faultline"; }
# has_rule TEXT: nft, decoding what the agent wrote over netlink, prints TEXT.
has_rule() { ruleset | grep -qF "$1"; }

# rtt PHASE DST: SAMPLES pings from the target, one line per reply.
rtt() {
    in_tgt /bin/busybox ping -c 1 -W 2 "$2" >/dev/null 2>&1 # neighbour entry
    in_tgt /bin/busybox ping -c "$SAMPLES" -i 0.05 -W 3 "$2" 2>&1 |
        sed -n "s/.*time=\([0-9.]*\) ms.*/FLTLAB rtt phase=$1 dst=$2 ms=\1/p"
}
rtt_all() {
    for d in $DELAYED $SAME_LINK $OTHER_LINK $DELAYED6 $SAME_LINK6; do rtt "$1" "$d"; done
}

# --- the agent -----------------------------------------------------------------

now=$(date +%s)
EXPIRES=$(date -u -d "@$((now + 600))" +%Y-%m-%dT%H:%M:%SZ)

# desired ENTRY...: replaces the desired file atomically.
desired() {
    {
        echo "apiVersion: faultline.dev/v1alpha1"
        echo "kind: NodeFaults"
        echo "metadata: {name: kernel-lab}"
        echo "spec:"
        if [ $# -eq 0 ]; then
            echo "  faults: []"
        else
            echo "  faults:"
            for f in "$@"; do echo "$f"; done
        fi
    } >$DESIRED.tmp && mv $DESIRED.tmp $DESIRED
}
entry() { # ID ACTION
    printf '    - id: %s\n      target: {netns: /run/netns/tgt}\n      expiresAt: "%s"\n      %s' \
        "$1" "$EXPIRES" "$2"
}
latency_to() { entry "$1" "latency: {delay: ${DELAY_MS}ms, to: [\"$DELAYED/32\"]}"; }
latency_dual() { entry "$1" "latency: {delay: ${DELAY_MS}ms, to: [\"$DELAYED/32\", \"$DELAYED6/128\"]}"; }
latency_all() { entry "$1" "latency: {delay: ${DELAY_MS}ms}"; }
partition() { entry "$1" "partition: {peers: [\"$OTHER_LINK/32\"]}"; }

start_agent() {
    $AGENT standalone --desired $DESIRED --state-dir $STATE --poll-ms 20 \
        --tc $TC --ip $IP 2>>$LOG &
    AGENT_PID=$!
}
# logged TEXT: waits up to 10 s for the agent to log TEXT.
logged() {
    i=0
    while [ $i -lt 100 ]; do
        grep -qF "$1" $LOG && return 0
        sleep 0.1
        i=$((i + 1))
    done
    return 1
}

# --- scenarios -----------------------------------------------------------------

stamp init
out "config delay_ms=$DELAY_MS samples=$SAMPLES"
check net-setup "three namespaces joined by two veth pairs" netup
uname -r | info kernel
qdiscs >/tmp/qdisc.before
info "qdisc before" </tmp/qdisc.before

# --- benchmark (fltlab.bench=N: only this, then power off) ---------------------
# N adds and removals of a latency fault. Before each desired file is
# written, the time is printed (microseconds, from adjtimex: file times and
# busybox date are coarser); the agent's log, whose lines say when each apply
# and removal was done, is copied to the console at the end.
BENCH=$(arg bench)
now_us() { adjtimex | awk '/tv_sec/ { s = $2 } /tv_usec/ { u = $2 } END { printf "%d%06d", s, u }'; }
if [ -n "$BENCH" ] && [ "$BENCH" -gt 0 ]; then
    stamp bench
    desired
    start_agent
    logged "started:" || out "check name=bench-agent fail detail=the agent did not start"
    n=1 # not i: logged() counts with i
    while [ "$n" -le "$BENCH" ]; do
        out "bench i=$n op=apply at_us=$(now_us)"
        desired "$(latency_to "b$n")"
        logged "b$n: applied latency" || out "check name=bench-apply-$n fail detail=never applied"
        out "bench i=$n op=remove at_us=$(now_us)"
        desired
        logged "b$n: removed latency" || out "check name=bench-remove-$n fail detail=never removed"
        n=$((n + 1))
    done
    kill -TERM "$AGENT_PID"
    wait "$AGENT_PID"
    sed 's/^/FLTLAB agentlog /' $LOG
    stamp done
    out done
    sync
    poweroff -f
fi

stamp baseline
rtt_all baseline

# Latency to one destination.
desired "$(latency_to lat-to)"
start_agent
check agent-applied-to "the agent logged lat-to: applied latency" logged "lat-to: applied latency"
check netem-present-to "tc shows netem delay ${DELAY_MS}ms in the target" has_netem_delay
qdiscs | info "qdisc with lat-to"
$TC -n tgt filter show dev t1 | info "filters on t1"
stamp to
rtt_all to

desired
check agent-removed-to "the agent logged lat-to: removed latency" logged "lat-to: removed latency"
qdiscs >/tmp/qdisc.after
check qdisc-restored-to "tc qdisc show equals what was there before lat-to" cmp /tmp/qdisc.before /tmp/qdisc.after
stamp restored
rtt_all restored

# Latency to every destination, on every interface.
desired "$(latency_all lat-all)"
check agent-applied-all "the agent logged lat-all: applied latency" logged "lat-all: applied latency"
check netem-present-all "tc shows netem delay ${DELAY_MS}ms in the target" has_netem_delay
stamp all
rtt_all all
# An interface created while the fault is active is covered at the next
# refresh (every 2 s); it goes again before the removal is checked.
$IP netns add pc
$IP link add t3 netns tgt type veth peer name p3 netns pc
$IP -n tgt link set t3 up
$IP -n pc link set p3 up
check agent-refreshed-all "the agent logged lat-all: latency extended to interfaces created since" \
    logged "lat-all: latency extended to interfaces created since"
check netem-on-new-interface "tc shows netem delay ${DELAY_MS}ms on t3, created after lat-all" \
    has_netem_delay_on t3
$IP -n tgt link del t3
$IP netns del pc
desired
check agent-removed-all "the agent logged lat-all: removed latency" logged "lat-all: removed latency"
qdiscs >/tmp/qdisc.after
check qdisc-restored-all "tc qdisc show equals what was there before lat-all" cmp /tmp/qdisc.before /tmp/qdisc.after

# Latency to one IPv4 and one IPv6 destination (the kernel wants one filter
# prio per protocol).
desired "$(latency_dual lat-dual)"
check agent-applied-dual "the agent logged lat-dual: applied latency" logged "lat-dual: applied latency"
$TC -n tgt filter show dev t1 | info "filters on t1"
stamp dual
rtt_all dual
desired
check agent-removed-dual "the agent logged lat-dual: removed latency" logged "lat-dual: removed latency"
qdiscs >/tmp/qdisc.after
check qdisc-restored-dual "tc qdisc show equals what was there before lat-dual" cmp /tmp/qdisc.before /tmp/qdisc.after

# A root qdisc someone else configured is refused, and what was done on the
# other interface before the refusal is undone.
$TC -n tgt qdisc add dev t2 root handle 1: pfifo
qdiscs >/tmp/qdisc.foreign
desired "$(latency_all lat-foreign)"
check foreign-refused "the agent refused lat-foreign (t2 has root pfifo 1:)" \
    logged "lat-foreign: cannot apply latency: interface t2 has root qdisc pfifo 1:"
desired
sleep 1 # a retry in flight finishes (apply, then its undo)
qdiscs >/tmp/qdisc.after
check foreign-untouched "tc qdisc show unchanged: nothing left on t1, pfifo 1: kept on t2" \
    cmp /tmp/qdisc.foreign /tmp/qdisc.after
$TC -n tgt qdisc del dev t2 root

stamp partition
# Partition (nftables).
check partition-baseline "$OTHER_LINK reachable before the partition" reachable $OTHER_LINK
desired "$(partition part)"
check agent-applied-partition "the agent logged part: applied partition" logged "part: applied partition"
check partition-table "table inet faultline exists in the target" has_table
check partition-rule-in "nft lists ip saddr $OTHER_LINK drop comment \"faultline part\"" \
    has_rule "ip saddr $OTHER_LINK drop comment \"faultline part\""
check partition-rule-out "nft lists ip daddr $OTHER_LINK drop comment \"faultline part\"" \
    has_rule "ip daddr $OTHER_LINK drop comment \"faultline part\""
check partition-cuts "$OTHER_LINK unreachable while partitioned" not reachable $OTHER_LINK
check partition-scoped "$DELAYED still reachable while $OTHER_LINK is partitioned" reachable $DELAYED
desired
check agent-removed-partition "the agent logged part: removed partition" logged "part: removed partition"
check partition-table-gone "no table inet faultline after removal" not has_table
check partition-healed "$OTHER_LINK reachable after removal" reachable $OTHER_LINK

stamp crash
# Crash recovery: SIGKILL with latency and partition applied, nothing desired
# any more, restart with the same state directory.
desired "$(latency_to crash-lat)" "$(partition crash-part)"
check crash-applied-latency "the agent logged crash-lat: applied latency" logged "crash-lat: applied latency"
check crash-applied-partition "the agent logged crash-part: applied partition" logged "crash-part: applied partition"
kill -9 "$AGENT_PID"
wait "$AGENT_PID" 2>/dev/null
check crash-left-netem "SIGKILL left the netem qdisc, as a crash does" has_netem
check crash-left-table "SIGKILL left table inet faultline, as a crash does" has_table
desired
start_agent
check crash-restart-swept "the restarted agent removed both from its journal first" \
    logged "started: 2 fault(s) in the journal, 2 stale removed before anything else"
check crash-no-netem "no netem qdisc left after the restart" not has_netem
qdiscs >/tmp/qdisc.after
check crash-qdisc-restored "tc qdisc show equals what was there before any fault" cmp /tmp/qdisc.before /tmp/qdisc.after
check crash-no-table "no table inet faultline left after the restart" not has_table
check crash-peer-reachable "$OTHER_LINK reachable after the restart" reachable $OTHER_LINK
rtt recovered $DELAYED
rtt recovered $DELAYED6

kill -TERM "$AGENT_PID"
wait "$AGENT_PID"
rc=$?
check agent-sigterm "the agent exits 0 on SIGTERM (exit $rc)" test "$rc" = 0

lsmod | info lsmod
info "agent log" <$LOG
stamp done
out done
sync
poweroff -f
