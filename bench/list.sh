#!/bin/sh
# Listing many instances, for `make bench`: `kvmbox list` with 1,000
# instances next to `virsh list --all` with 1,000 defined domains (a session
# libvirtd started here), and the same kvmbox list with one instance, which
# says how flat the cost stays. Also kvmboxd's CPU time per list, from
# /proc/PID/stat (client and server share the cores).
# Prints table rows: | what | kvmbox | peer | ratio |
# Env: KVMBOX_BIN (default build/kvmbox), BENCH_RUNS (default 20),
# BENCH_INSTANCES (default 1000).
set -eu
. "$BENCHLIB"
K=$(cd "$(dirname "$K")" && pwd)/$(basename "$K")
runs=${BENCH_RUNS:-20}
count=${BENCH_INSTANCES:-1000}
tmp=$(mktemp -d)
chmod 755 "$tmp"
mkdir -p "$tmp/home" "$tmp/xdg" "$tmp/one" "$tmp/many" "$tmp/conf"
chmod 700 "$tmp/xdg"
head -c 4096 /dev/zero >"$tmp/vmlinuz"
pids=""
cleanup() {
    for p in $pids; do kill "$p" 2>/dev/null || true; done
    for p in $pids; do wait "$p" 2>/dev/null || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

# Every daemon and client runs as the same unprivileged user.
if [ "$(id -u)" -eq 0 ]; then
    chown -R 65534:65534 "$tmp"
    AS="setpriv --reuid 65534 --regid 65534 --clear-groups --"
else
    AS=""
fi
export HOME="$tmp/home" XDG_RUNTIME_DIR="$tmp/xdg" KVMBOX_CONF="$tmp/conf"
unset KVMBOX_SOCKET || true

wait_for() { i=0; while [ ! -S "$1" ]; do i=$((i + 1)); [ $i -lt 200 ] || { echo "no socket $1" >&2; exit 1; }; sleep 0.05; done; }
for d in one many; do
    (exec $AS "$K" --applet kvmboxd --state-dir "$tmp/$d" --log-level warn 2>"$tmp/$d.log") &
    pids="$pids $!"
done
many_pid=${pids##* }
(exec $AS libvirtd --timeout 0 >"$tmp/libvirtd.log" 2>&1) &
pids="$pids $!"
wait_for "$tmp/one/unix.socket"; wait_for "$tmp/many/unix.socket"
wait_for "$XDG_RUNTIME_DIR/libvirt/libvirt-sock"
V="virsh -q -c qemu:///session"

$AS "$K" --socket "$tmp/one/unix.socket" init v1 --kernel "$tmp/vmlinuz" >/dev/null
i=1
while [ $i -le "$count" ]; do
    $AS "$K" --socket "$tmp/many/unix.socket" init "v$i" --kernel "$tmp/vmlinuz" >/dev/null
    cat >"$tmp/dom.xml" <<EOF
<domain type='qemu'><name>v$i</name><memory unit='MiB'>64</memory>
<os><type arch='x86_64'>hvm</type><kernel>$tmp/vmlinuz</kernel></os></domain>
EOF
    $AS $V define "$tmp/dom.xml" >/dev/null
    i=$((i + 1))
done

ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
t0=$(ticks "$many_pid")
many=$(wall_ms "$runs" $AS "$K" --socket "$tmp/many/unix.socket" list)
t1=$(ticks "$many_pid")
one=$(wall_ms "$runs" $AS "$K" --socket "$tmp/one/unix.socket" list)
peer=$(wall_ms "$runs" $AS $V list --all)
hz=$(getconf CLK_TCK)
cpu=$(echo "$t0 $t1 $runs $hz" | awk '{ printf "%.2f", ($2 - $1) * 1000 / $4 / $3 }')
row "\`kvmbox list\` vs \`virsh list --all\`, $count instances, mean of $runs" "$many ms" "$peer ms"
row "\`kvmbox list\`, $count instances vs 1" "$many ms" "$one ms"
echo "| kvmboxd CPU per list of $count instances (/proc/PID/stat) | $cpu ms | | |"
