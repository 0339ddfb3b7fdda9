#!/bin/sh
# VM start-up: time from "start" to the guest's marker on its serial console,
# through kvmbox's VM layer (bench/vm_boot.rs: Vm::spawn, uid drop, QMP
# handshake included) next to the very same QEMU command line run by hand
# (vm-boot --raw: plain exec as root, no QMP client), in the same run, under
# TCG, both timed by the same in-process poller. Prints markdown rows:
#   | what | kvmbox | peer | ratio |
# Usage: bench/vm.sh [ROUNDS]   (median of ROUNDS, default 5)
set -eu
repo=$(cd "$(dirname "$0")/.." && pwd)
rounds=${1:-5}
cache=$(sh "$repo/qemu-tests/assets.sh")
(cd "$repo" && cargo build -q --locked --example vm-boot)
tool=$repo/target/debug/examples/vm-boot
work=$(mktemp -d)
chmod 711 "$work"
trap 'rm -rf "$work"' EXIT

median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

kvmbox_once() {
    d=$work/k$1
    "$tool" "$cache/vmlinuz" "$cache/initrd.gz" "$d" | sed -n 's/^marker_ms //p'
}

hand_once() {
    "$tool" "$cache/vmlinuz" "$cache/initrd.gz" "$work/h$1" --raw | sed -n 's/^marker_ms //p'
}

: >"$work/k.txt"; : >"$work/h.txt"
i=0
while [ "$i" -lt "$rounds" ]; do
    # Alternate so that neither side always runs on a warmer cache.
    kvmbox_once "$i" >>"$work/k.txt"
    hand_once "$i" >>"$work/h.txt"
    i=$((i + 1))
done
[ -z "${BENCH_RAW:-}" ] || { echo "kvmbox: $(tr "\n" " " <"$work/k.txt")"; echo "hand: $(tr "\n" " " <"$work/h.txt")"; } >&2
k=$(median <"$work/k.txt"); h=$(median <"$work/h.txt")
# bench/run.sh prints the table header once.
echo "| VM layer start → guest marker, TCG, median of $rounds (peer: same QEMU command by hand) | ${k} ms | ${h} ms | $(awk "BEGIN { printf \"%.2f\", $k / $h }") |"
