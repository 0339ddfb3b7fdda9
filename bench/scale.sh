#!/bin/sh
# How the daemon's cost grows, for `make bench`: the latency of
# `GET /1.0/instances?recursion=1` (one keep-alive client on the Unix
# socket, median of 200, bench/loadgen.rs) and kvmboxd's RSS with 1, 10 and
# 100 defined instances and with 1, 4 and 8 running (busybox guests of
# qemu-tests/assets.sh, TCG, 128 MiB each); and the time from `kvmbox
# start` to the guest's marker on its console for one VM alone and for
# four started at once (until the last marker). Each row's peer is the
# same figure at the smallest count, so the ratio is the growth. Needs root
# (per-VM uids).
# Prints table rows: | what | kvmbox | peer | ratio |
. "$BENCHLIB"
[ "$(id -u)" -eq 0 ] || { echo "| scale | skipped: needs root | | |"; exit 0; }
repo=$(cd "$(dirname "$BENCHLIB")/.." && pwd)
cache=$(sh "$repo/qemu-tests/assets.sh" | tail -n 1)
LOADLIB=$repo/bench/load.lib
. "$LOADLIB"
load_build --release || { echo "| scale | loadgen did not build | | |"; exit 0; }
load_daemon || { echo "| scale | kvmboxd did not start | | |"; exit 0; }
mkdir -p guest; cp "$cache/vmlinuz" "$cache/initrd.gz" guest/; chmod 755 guest; chmod 644 guest/*
kv() { bin/kvmbox "$@"; }

define() {
    kv init "$1" --kernel "$PWD/guest/vmlinuz" --initrd "$PWD/guest/initrd.gz" \
        --cmdline "console=ttyS0 quiet panic=-1" --memory 128MiB \
        -c limits.accel=tcg -c security.apparmor=off >/dev/null
}
# measure LABEL: p50 ms of the list and the daemon's RSS, kept as LABEL.lat, LABEL.rss.
measure() {
    "$LG" --target unix:state/unix.socket --cert "$CERT" --key "$KEY" --clients 1 --requests 200 \
        --path "/1.0/instances?recursion=1" >"$1.txt" 2>&1
    lg_get "$1.txt" p50_ms | awk '{ printf "%.2f", $1 }' >"$1.lat"
    awk '/^VmRSS/ { print $2 }' "/proc/$kpid/status" >"$1.rss"
}
# starts NAME…: `kvmbox start` of each at once; returns when all returned
# (a bare `wait` would wait for the daemon too).
starts() {
    _pids=""
    for _v in "$@"; do kv start "$_v" & _pids="$_pids $!"; done
    for _p in $_pids; do wait "$_p"; done
}
now_ms() { echo $(($(date +%s%N) / 1000000)); }
# ready NAME…: waits until every named guest has put its marker out.
ready() {
    for n in "$@"; do
        i=0
        until grep -q KVMBOX-GUEST-READY "state/instances/$n/vm/qemu/console.log" 2>/dev/null; do
            i=$((i + 1)); [ $i -lt 12000 ] || { echo "no marker from $n" >&2; return 1; }
            sleep 0.01
        done
    done
}

n=0
for count in 1 10 100; do
    while [ $n -lt $count ]; do n=$((n + 1)); define "v$n"; done
    measure "def$count"
done
# One VM alone; then, once it is stopped, four at once (so that four run).
t0=$(now_ms); kv start v1; ready v1; one=$(($(now_ms) - t0))
measure run1
kv stop --force v1 >/dev/null
rm -f state/instances/v1/vm/qemu/console.log
t0=$(now_ms)
starts v1 v2 v3 v4
ready v1 v2 v3 v4; four=$(($(now_ms) - t0))
measure run4
starts v5 v6 v7 v8
ready v5 v6 v7 v8
measure run8
for v in v1 v2 v3 v4 v5 v6 v7 v8; do kv stop --force "$v" >/dev/null 2>&1 || true; done

lat() { cat "$1.lat"; }
rssk() { cat "$1.rss"; }
for c in 10 100; do
    row "\`GET /1.0/instances?recursion=1\` p50 ms, $c defined (peer: 1 defined)" "$(lat def$c)" "$(lat def1)"
    row "daemon RSS KiB, $c defined (peer: 1 defined)" "$(rssk def$c)" "$(rssk def1)"
done
for c in 1 4 8; do
    row "\`GET /1.0/instances?recursion=1\` p50 ms, 100 defined, $c running (peer: none running)" "$(lat run$c)" "$(lat def100)"
    row "daemon RSS KiB, 100 defined, $c running (peer: none running)" "$(rssk run$c)" "$(rssk def100)"
done
row "\`kvmbox start\` → guest marker, TCG: 4 VMs at once, until the last (peer: 1 VM alone), ms" "$four" "$one"
