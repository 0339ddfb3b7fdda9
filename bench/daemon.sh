#!/bin/sh
# Daemon numbers for `make bench`: `kvmbox info` round-trip wall time and
# the client's peak memory, and kvmboxd's idle RSS, next to `virsh list`
# against a libvirtd started here (a session daemon with its own runtime
# directory, so a system libvirtd, if any, is not touched).
# Prints table rows: | what | kvmbox | peer | ratio |
# Env: KVMBOX_BIN (default build/kvmbox), BENCH_RUNS (default 20).
set -eu
K=${KVMBOX_BIN:-build/kvmbox}
K=$(cd "$(dirname "$K")" && pwd)/$(basename "$K")
N=${BENCH_RUNS:-20}
tmp=$(mktemp -d)
chmod 755 "$tmp"
mkdir -p "$tmp/home" "$tmp/xdg" "$tmp/state" "$tmp/conf"
chmod 700 "$tmp/xdg"
kpid=""; lpid=""
cleanup() {
    for p in $kpid $lpid; do kill "$p" 2>/dev/null || true; done
    # Both are children of this script: wait until they are really gone.
    for p in $kpid $lpid; do wait "$p" 2>/dev/null || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

# Both daemons and both clients run as the same unprivileged user.
if [ "$(id -u)" -eq 0 ]; then
    chown -R 65534:65534 "$tmp/home" "$tmp/xdg" "$tmp/state" "$tmp/conf"
    AS="setpriv --reuid 65534 --regid 65534 --clear-groups --"
else
    AS=""
fi
export HOME="$tmp/home" XDG_RUNTIME_DIR="$tmp/xdg" KVMBOX_CONF="$tmp/conf"
export KVMBOX_SOCKET="$tmp/state/unix.socket"

wait_for() { i=0; while [ ! -S "$1" ]; do i=$((i + 1)); [ $i -lt 200 ] || { echo "no socket $1" >&2; exit 1; }; sleep 0.05; done; }
rss() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
# mean wall time in ms of N runs of a command
wall() { s=$(date +%s%N); i=0; while [ $i -lt "$N" ]; do "$@" >/dev/null; i=$((i + 1)); done; e=$(date +%s%N); echo $(( (e - s) / N / 1000 )); }
peak() { /usr/bin/time -f %M "$@" 2>&1 >/dev/null | tail -1; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
ms() { awk -v u="$1" 'BEGIN { printf "%.2f ms", u / 1000 }'; }

# exec: the background job's pid is the daemon's own (setpriv execs too).
(exec $AS "$K" --applet kvmboxd --state-dir "$tmp/state" --log-level warn 2>"$tmp/kvmboxd.log") &
kpid=$!
(exec $AS libvirtd --timeout 0 >"$tmp/libvirtd.log" 2>&1) &
lpid=$!
wait_for "$KVMBOX_SOCKET"
wait_for "$XDG_RUNTIME_DIR/libvirt/libvirt-sock"
$AS "$K" info >/dev/null          # first use: makes the client key pair
$AS virsh -c qemu:///session list >/dev/null
sleep 1
k_idle=$(rss "$kpid"); l_idle=$(rss "$lpid")

k_wall=$(wall $AS "$K" info); l_wall=$(wall $AS virsh -c qemu:///session list)
k_peak=$(peak $AS "$K" info); l_peak=$(peak $AS virsh -c qemu:///session list)

echo "| \`kvmbox info\` vs \`virsh list\`, mean of $N | $(ms "$k_wall") | $(ms "$l_wall") | $(ratio "$k_wall" "$l_wall") |"
echo "| client peak RSS | ${k_peak} KiB | ${l_peak} KiB | $(ratio "$k_peak" "$l_peak") |"
echo "| daemon idle RSS (kvmboxd vs libvirtd) | ${k_idle} KiB | ${l_idle} KiB | $(ratio "$k_idle" "$l_idle") |"
