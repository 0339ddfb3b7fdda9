#!/bin/sh
# VM start-up: time from "start" to the guest's marker on its serial console,
# through kvmbox's VM layer (bench/vm_boot.rs: Vm::spawn, uid drop, QMP
# handshake included) next to the very same QEMU command line run by hand,
# in the same run, under TCG. Prints markdown rows:
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

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

kvmbox_once() {
    d=$work/k$1
    "$tool" "$cache/vmlinuz" "$cache/initrd.gz" "$d" | sed -n 's/^marker_ms //p'
}

hand_once() {
    d=$work/h$1
    mkdir -p "$d"
    set --
    while IFS= read -r a; do set -- "$@" "$a"; done <<ARGV
$("$tool" "$cache/vmlinuz" "$cache/initrd.gz" "$d" --argv)
ARGV
    start=$(now_ms)
    qemu-system-x86_64 "$@" >"$d/qemu.log" 2>&1 &
    pid=$!
    until grep -q KVMBOX-GUEST-READY "$d/console.log" 2>/dev/null; do
        kill -0 "$pid" 2>/dev/null || { echo "hand-run QEMU died: $(cat "$d/qemu.log")" >&2; exit 1; }
        sleep 0.005
    done
    echo $(( $(now_ms) - start ))
    kill "$pid"; wait "$pid" 2>/dev/null || true
}

: >"$work/k.txt"; : >"$work/h.txt"
i=0
while [ "$i" -lt "$rounds" ]; do
    # Alternate so that neither side always runs on a warmer cache.
    kvmbox_once "$i" >>"$work/k.txt"
    hand_once "$i" >>"$work/h.txt"
    i=$((i + 1))
done
k=$(median <"$work/k.txt"); h=$(median <"$work/h.txt")
echo "| what | kvmbox | peer | ratio |"
echo "|---|---|---|---|"
echo "| VM start → guest marker, TCG, median of $rounds (peer: same QEMU command by hand) | ${k} ms | ${h} ms | $(awk "BEGIN { printf \"%.2f\", $k / $h }") |"
