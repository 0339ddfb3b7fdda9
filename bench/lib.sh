# Helpers for bench parts: timing by repetition, peak memory by GNU time.
set -eu
K=$KVMBOX_BIN

# wall_ms N CMD…: mean wall time of N runs, in milliseconds (3 decimals).
wall_ms() {
    n=$1; shift
    start=$(date +%s%N)
    i=0; while [ $i -lt "$n" ]; do "$@" >/dev/null 2>&1; i=$((i + 1)); done
    end=$(date +%s%N)
    echo "$start $end $n" | awk '{ printf "%.3f", ($2 - $1) / $3 / 1e6 }'
}

# peak_kib CMD…: maximum resident set size of one run, in KiB.
peak_kib() {
    /usr/bin/time -f %M -o peak.txt "$@" >/dev/null 2>&1 || true
    tail -n 1 peak.txt
}

# ratio A B: A / B to two decimals.
ratio() { echo "$1 $2" | awk '{ if ($2 > 0) printf "%.2f", $1 / $2; else print "n/a" }'; }

# row WHAT OURS PEER: a table row with the ratio of the two.
row() { echo "| $1 | $2 | $3 | $(ratio "${2%% *}" "${3%% *}") |"; }

# start_libvirtd: starts libvirtd (the peer of several rows) if it is not
# running; Debian's package expects these users and directories to exist.
start_libvirtd() {
    getent group libvirt-qemu >/dev/null || groupadd -r libvirt-qemu
    getent passwd libvirt-qemu >/dev/null || useradd -r -g libvirt-qemu -d /var/lib/libvirt -s /usr/sbin/nologin libvirt-qemu
    mkdir -p /var/log/libvirt /var/lib/libvirt/qemu /run/libvirt
    pgrep -x virtlogd >/dev/null || virtlogd -d
    pgrep -x libvirtd >/dev/null || libvirtd -d
    i=0
    until virsh -c qemu:///system list >/dev/null 2>&1; do
        i=$((i + 1)); [ $i -lt 100 ] || { echo "libvirtd did not start" >&2; return 1; }
        sleep 0.1
    done
}
