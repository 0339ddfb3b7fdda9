#!/bin/sh
# AppArmor profile generation: kvmbox-aa-helper next to libvirt's
# virt-aa-helper for an equivalent domain, in the same run, and the time
# apparmor_parser takes to compile the generated profile.
# Prints markdown table rows: | what | kvmbox | peer | ratio |
# Usage: KVMBOX_BIN=build/kvmbox [N=50] sh bench/aa.sh
set -eu
K=${KVMBOX_BIN:-build/kvmbox}
K=$(cd "$(dirname "$K")" && pwd)/$(basename "$K")
N=${N:-50}
PEER=${VIRT_AA_HELPER:-/usr/lib/libvirt/virt-aa-helper}
PARSER=${APPARMOR_PARSER:-/usr/sbin/apparmor_parser}
UUID=00000000-0000-0000-0000-0123456789ab

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/state/instances/vm1" "$tmp/profiles"
: >"$tmp/disk.img"
dir=$tmp/state/instances/vm1
cat >"$tmp/vm.json" <<EOJ
{"uuid": "$UUID", "name": "bench", "dir": "$dir",
 "disks": [{"path": "$tmp/disk.img", "readonly": false}],
 "qmp_socket": "$dir/qmp.sock", "pid_file": "$dir/qemu.pid", "log_file": "$dir/qemu.log"}
EOJ
cat >"$tmp/dom.xml" <<EOX
<domain type='kvm'>
  <name>bench</name>
  <uuid>$UUID</uuid>
  <memory>524288</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='$tmp/disk.img'/>
      <target dev='vda' bus='virtio'/>
    </disk>
  </devices>
</domain>
EOX

now() { date +%s%N; }
# avg_ms N CMD…: mean wall time of N runs in milliseconds (stdin from $IN).
avg_ms() {
    n=$1; shift
    start=$(now); i=0
    while [ "$i" -lt "$n" ]; do "$@" <"$IN" >/dev/null 2>&1 || return 1; i=$((i + 1)); done
    echo "$(( ($(now) - start) / n ))" | awk '{ printf "%.2f", $1 / 1000000 }'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
row() { echo "| $1 | $2 | $3 | $4 |"; }

helper() {
    "$K" --applet kvmbox-aa-helper "$@" --profile-dir "$tmp/profiles" --state-dir "$tmp/state"
}

IN=$tmp/vm.json
ours=$(avg_ms "$N" helper show)
if [ -x "$PEER" ]; then
    IN=$tmp/dom.xml
    if peer=$(avg_ms "$N" "$PEER" -d -c -u "libvirt-$UUID"); then
        row "profile generation, dry run, mean of $N (ms)" "$ours" "$peer (virt-aa-helper -d -c)" "$(ratio "$ours" "$peer")"
    else
        row "profile generation, dry run, mean of $N (ms)" "$ours" "virt-aa-helper -d -c failed here" "n/a"
    fi
else
    row "profile generation, dry run, mean of $N (ms)" "$ours" "virt-aa-helper not installed" "n/a"
fi

helper create --no-load <"$tmp/vm.json" >/dev/null
if [ -x "$PARSER" ]; then
    IN=/dev/null
    m=$(( N / 5 > 0 ? N / 5 : 1 ))
    compile=$(avg_ms "$m" "$PARSER" -Q -K -T -I "$tmp/profiles" "$tmp/profiles/kvmbox-$UUID")
    # libvirt's profile needs its abstractions (libvirt-daemon-system) to compile.
    if [ -f /etc/apparmor.d/abstractions/libvirt-qemu ]; then
        peer_note="not measured (virt-aa-helper writes only under /etc)"
    else
        peer_note="libvirt's abstractions not installed"
    fi
    row "apparmor_parser -Q -K -T of the generated profile, mean of $m (ms)" "$compile" "$peer_note" "n/a"
else
    row "apparmor_parser -Q -K -T of the generated profile (ms)" "apparmor_parser not installed" "-" "n/a"
fi
