#!/bin/sh
# Instances through the daemon, for `make bench`: `kvmbox start` → guest
# marker on the serial console, next to the very same QEMU command line run
# by hand and to `virsh start` of an equivalent libvirt domain (same kernel,
# initrd, memory, TCG), all in this run and timed by the same file poller;
# then kvmboxd's RSS with that one VM running next to libvirtd's with its
# domain running. Needs root (per-VM uids, system libvirtd).
# Prints table rows: | what | kvmbox | peer | ratio |
# Env: KVMBOX_BIN (default build/kvmbox), BENCH_ROUNDS (default 5).
set -eu
. "$BENCHLIB"
repo=$(cd "$(dirname "$0")/.." && pwd)
K=$(cd "$(dirname "$K")" && pwd)/$(basename "$K")
rounds=${BENCH_ROUNDS:-5}
[ "$(id -u)" -eq 0 ] || { echo "| instances | skipped: needs root | | |"; exit 0; }
cache=$(sh "$repo/qemu-tests/assets.sh" | tail -n 1)
work=$(mktemp -d)
chmod 711 "$work"
cp "$cache/vmlinuz" "$cache/initrd.gz" "$work/"
export KVMBOX_DIR=$work/state KVMBOX_CONF=$work/conf
unset KVMBOX_SOCKET || true
dom=kvmbox-bench-$$
kpid=""; hpid=""; started_libvirtd=""
cleanup() {
    virsh -q -c qemu:///system destroy "$dom" >/dev/null 2>&1 || true
    virsh -q -c qemu:///system undefine "$dom" >/dev/null 2>&1 || true
    [ -z "$hpid" ] || kill -9 "$hpid" 2>/dev/null || true
    if [ -n "$kpid" ]; then
        "$K" delete --force b1 >/dev/null 2>&1 || true
        kill "$kpid" 2>/dev/null || true
        wait "$kpid" 2>/dev/null || true
    fi
    # Only what this script started, by pid.
    for p in $started_libvirtd; do kill "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

now_ms() { echo $(($(date +%s%N) / 1000000)); }
# marker_ms FILE T0: ms from T0 until the guest marker is in FILE.
marker_ms() {
    i=0
    until grep -q KVMBOX-GUEST-READY "$1" 2>/dev/null; do
        i=$((i + 1)); [ $i -lt 6000 ] || { echo "no marker in $1" >&2; return 1; }
        sleep 0.01
    done
    echo $(($(now_ms) - $2))
}
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

# --- kvmbox
"$K" --applet kvmboxd --group root --log-level warn 2>"$work/kvmboxd.log" &
kpid=$!
i=0; until "$K" info >/dev/null 2>&1; do i=$((i + 1)); [ $i -lt 100 ] || exit 1; sleep 0.1; done
"$K" init b1 --kernel "$work/vmlinuz" --initrd "$work/initrd.gz" --cmdline "console=ttyS0 quiet panic=-1" \
    --memory 256MiB -c limits.accel=tcg -c security.apparmor=off >/dev/null
klog=$work/state/instances/b1/vm/qemu/console.log

# The QEMU command line the daemon uses, replayed by hand with its run
# files moved to a scratch directory.
"$K" start b1; marker_ms "$klog" "$(now_ms)" >/dev/null
qpid=$("$K" info b1 --format json | sed -n 's/^  "pid": \([0-9]*\),$/\1/p')
k_rss=$(awk '/^VmRSS/ {print $2}' "/proc/$kpid/status")
mkdir "$work/hand"
tr '\0' '\n' <"/proc/$qpid/cmdline" | tail -n +2 | sed "s|$work/state/instances/b1/vm/qemu|$work/hand|g" >"$work/argv"
"$K" stop --force b1

kvmbox_once() {
    t0=$(now_ms); "$K" start b1; marker_ms "$klog" "$t0" >>"$work/k.txt"
    "$K" stop --force b1
}
hand_once() {
    rm -f "$work/hand/"*
    t0=$(now_ms)
    # One argument per line; none of them holds a newline.
    (IFS='
'; exec qemu-system-x86_64 $(cat "$work/argv")) >/dev/null 2>&1 &
    hpid=$!
    marker_ms "$work/hand/console.log" "$t0" >>"$work/h.txt"
    kill -9 "$hpid"; wait "$hpid" 2>/dev/null || true; hpid=""
}
: >"$work/k.txt"; : >"$work/h.txt"
r=0; while [ $r -lt "$rounds" ]; do
    # Alternate so that neither side always runs on a warmer cache.
    kvmbox_once; hand_once
    r=$((r + 1))
done

# --- libvirt: an equivalent domain, TCG
had=$(pgrep -x 'libvirtd|virtlogd' || true)
start_libvirtd
for p in $(pgrep -x 'libvirtd|virtlogd'); do
    case " $(echo $had) " in *" $p "*) ;; *) started_libvirtd="$started_libvirtd $p" ;; esac
done
cat >"$work/dom.xml" <<EOF
<domain type='qemu'>
  <name>$dom</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>$work/vmlinuz</kernel>
    <initrd>$work/initrd.gz</initrd>
    <cmdline>console=ttyS0 quiet panic=-1</cmdline>
  </os>
  <features><acpi/></features>
  <devices>
    <emulator>$(command -v qemu-system-x86_64)</emulator>
    <serial type='file'><source path='$work/virsh-console.log'/><target port='0'/></serial>
    <interface type='user'><model type='virtio'/></interface>
    <memballoon model='none'/>
  </devices>
</domain>
EOF
virsh -q -c qemu:///system define "$work/dom.xml" >/dev/null
: >"$work/v.txt"
r=0; while [ $r -lt "$rounds" ]; do
    rm -f "$work/virsh-console.log"
    t0=$(now_ms); virsh -q -c qemu:///system start "$dom" >/dev/null
    marker_ms "$work/virsh-console.log" "$t0" >>"$work/v.txt"
    r=$((r + 1))
    [ $r -eq "$rounds" ] || virsh -q -c qemu:///system destroy "$dom" >/dev/null
done
l_rss=$(awk '/^VmRSS/ {print $2}' "/proc/$(pgrep -x libvirtd | head -n 1)/status")

k=$(median <"$work/k.txt"); h=$(median <"$work/h.txt"); v=$(median <"$work/v.txt")
echo "| \`kvmbox start\` → guest marker, TCG, median of $rounds (peer: same QEMU command by hand) | $k ms | $h ms | $(ratio "$k" "$h") |"
echo "| \`kvmbox start\` → guest marker (peer: \`virsh start\` of the same guest) | $k ms | $v ms | $(ratio "$k" "$v") |"
echo "| daemon RSS with one VM running (kvmboxd vs libvirtd) | $k_rss KiB | $l_rss KiB | $(ratio "$k_rss" "$l_rss") |"
