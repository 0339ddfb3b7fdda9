# Getting into a running guest: the Debian guest of qemu-tests/debian
# (TCG), provisioned by cloud-init with an SSH key, then the wall time of
# one command's round trip through the guest agent with `kvmbox exec` on
# the Unix socket, next to `lxc exec` against the same daemon over TLS and
# to `ssh` into the same guest (a forwarded port); and of attaching to and
# detaching from its serial console, next to an ssh login and logout.
. "$BENCHLIB"
[ "$(id -u)" -eq 0 ] || { echo "| guest | skipped: per-VM uids need root | | |"; exit 0; }
command -v lxc >/dev/null && command -v ssh >/dev/null ||
    { echo "| guest | skipped: no lxc or ssh | | |"; exit 0; }
repo=$(cd "$(dirname "$BENCHLIB")/.." && pwd)
img=$(sh "$repo/qemu-tests/debian/image.sh" | tail -n 1)
chmod 711 .
mkdir -p state bin lxc; chmod 711 state
ln -sf "$K" bin/kvmboxd; ln -sf "$K" bin/kvmbox
export KVMBOX_DIR=$PWD/state KVMBOX_CONF=$PWD/conf LXD_CONF=$PWD/lxc
kv() { bin/kvmbox "$@"; }
bin/kvmboxd --group root --https 127.0.0.1:0 2>daemon.log &
kpid=$!
trap 'kill -9 $kpid 2>/dev/null || true; for p in $(grep -lasF "$PWD/state/instances/" /proc/[0-9]*/cmdline | cut -d/ -f3); do kill -9 $p 2>/dev/null || true; done' EXIT
i=0; until grep -q "listening on https://" daemon.log; do
    i=$((i + 1)); [ $i -lt 200 ] || { echo "| guest | kvmboxd did not start | | |"; exit 0; }; sleep 0.05; done
port=$(sed -n 's|.*listening on https://[^ ]*:\([0-9][0-9]*\)$|\1|p' daemon.log)
kv config set core.trust_password bench-pw
kv config set security.apparmor_profile_dir "$PWD/aa"
lxc remote add kb "https://127.0.0.1:$port" --accept-certificate --password bench-pw >/dev/null 2>&1

ssh-keygen -q -t ed25519 -N "" -f key
# The image leaves systemd-networkd off: cloud-init's network config (DHCP
# from QEMU's user-mode NAT) takes effect once it runs.
printf '#cloud-config\nusers:\n  - name: bench\n    shell: /bin/sh\n    ssh_authorized_keys: ["%s"]\nruncmd:\n  - [systemctl, enable, --now, systemd-networkd]\n' \
    "$(cat key.pub)" >user-data
sshport=$((20000 + $$ % 20000))
mkdir -p guest; cp "$img/vmlinuz" "$img/initrd.img" guest/; chmod 755 guest; chmod 644 guest/*
kv image import "$img/root.qcow2" --alias debian >/dev/null
kv launch debian deb --kernel "$PWD/guest/vmlinuz" --initrd "$PWD/guest/initrd.img" \
    --cmdline "$(cat "$img/cmdline")" --memory 1GiB --cpus 2 --forward "$sshport:22" \
    --cloud-init user-data >/dev/null
sshin() {
    ssh -q -i key -p "$sshport" -o BatchMode=yes -o StrictHostKeyChecking=no \
        -o UserKnownHostsFile=/dev/null bench@127.0.0.1 "$@"
}
i=0
until kv exec deb -n -- true 2>/dev/null && sshin true 2>/dev/null; do
    i=$((i + 1)); [ $i -lt 300 ] || { echo "| guest | the guest did not come up | | |"; exit 0; }; sleep 2
done
exec_ms=$(wall_ms 20 kv exec deb -n -- true)
row "exec round trip, ms (kvmbox exec -- true) vs lxc exec over TLS, same daemon" \
    "$exec_ms" "$(wall_ms 20 lxc exec kb:deb -- true)"
ssh_ms=$(wall_ms 20 sshin true)
row "exec round trip, ms (kvmbox exec -- true) vs ssh into the same guest" "$exec_ms" "$ssh_ms"
detach() { printf '\001q' | kv console deb; }
row "console attach and detach, ms (kvmbox console, Ctrl-a q) vs an ssh login and logout" \
    "$(wall_ms 20 detach)" "$ssh_ms"

# Throughput: 10 MB out of the guest (qemu-guest-agent keeps at most 16 MiB
# of a command's output) through `kvmbox exec`'s stdout next to
# ssh's; and 200 kB the guest writes to its serial console, through an
# attached `kvmbox console`, next to the same bytes through ssh.
mbps() { awk -v b="$1" -v ms="$2" 'BEGIN { if (ms > 0) printf "%.2f", b / 1e6 / (ms / 1000); else print 0 }'; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }
size=10000000
t0=$(now_ms); got=$(kv exec deb -- head -c $size /dev/zero | wc -c); k_ms=$(($(now_ms) - t0))
[ "$got" -eq $size ] || k_ms=0
t0=$(now_ms); got=$(sshin head -c $size /dev/zero | wc -c); s_ms=$(($(now_ms) - t0))
[ "$got" -eq $size ] || s_ms=0
row "exec stdout throughput, MB/s (10 MB: kvmbox exec vs ssh)" "$(mbps $size $k_ms)" "$(mbps $size $s_ms)"

csize=200000
mkfifo console.in
kv console deb <console.in >console.out 2>/dev/null &
cpid=$!
exec 3>console.in
sleep 1
t0=$(now_ms)
kv exec deb -- sh -c "head -c $csize /dev/zero | tr '\\0' x >/dev/ttyS0"
i=0; until [ "$(tr -cd x <console.out | wc -c)" -ge $csize ]; do
    i=$((i + 1)); [ $i -lt 6000 ] || break; sleep 0.01; done
c_ms=$(($(now_ms) - t0))
[ "$(tr -cd x <console.out | wc -c)" -ge $csize ] || c_ms=0
printf '\001q' >&3; exec 3>&-
wait $cpid 2>/dev/null || true
t0=$(now_ms); got=$(sshin "head -c $csize /dev/zero | tr '\\0' x" | wc -c); s_ms=$(($(now_ms) - t0))
[ "$got" -eq $csize ] || s_ms=0
row "console throughput, kB/s (200 kB written to ttyS0 in the guest, through kvmbox console; peer: the same bytes through ssh)" \
    "$(mbps $((csize * 1000)) $c_ms)" "$(mbps $((csize * 1000)) $s_ms)"
