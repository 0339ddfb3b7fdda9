# Provisioning and getting into a guest: the Debian image of
# qemu-tests/debian imported (next to `cp` of the same file) and launched
# under TCG with a cloud-init seed, until cloud-init says it has finished
# (next to raw QEMU booting the same disk with the same seed); then the
# wall time of one command's round trip through the guest agent with
# `kvmbox exec` on the Unix socket, next to `lxc exec` against the same
# daemon over TLS and to `ssh` into the same guest (a forwarded port); of
# attaching to and detaching from its serial console, next to an ssh login
# and logout; and of a snapshot and a restore of the running guest, next
# to qemu-img doing the same to a stopped disk.
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
# Both read the file from the page cache.
cat "$img/root.qcow2" >/dev/null
mb=$(($(stat -c %s "$img/root.qcow2") / 1000000))
import_ms=$(wall_ms 1 kv image import "$img/root.qcow2" --alias debian)
row "image import, MB/s ($mb MB qcow2: kvmbox image import, hashed and stored, vs cp)" \
    "$(awk -v b="$mb" -v ms="$import_ms" 'BEGIN { printf "%.0f", b / (ms / 1000) }')" \
    "$(awk -v b="$mb" -v ms="$(wall_ms 1 cp "$img/root.qcow2" copy.qcow2)" 'BEGIN { printf "%.0f", b / (ms / 1000) }')"
rm -f copy.qcow2
# cloud-init's last module says so on the console (journal+console).
finished() { grep -aq "Cloud-init v. .* finished at" "$1" 2>/dev/null; }
launched=$(date +%s%N)
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
i=0
until kv console deb --show-log >console.log 2>/dev/null && finished console.log; do
    i=$((i + 1)); [ $i -lt 600 ] || break; sleep 1
done
cloud_s=$(echo "$launched $(date +%s%N)" | awk '{ printf "%.1f", ($2 - $1) / 1e9 }')
finished console.log || cloud_s=0
exec_ms=$(wall_ms 20 kv exec deb -n -- true)
row "exec round trip, ms (kvmbox exec -- true) vs lxc exec over TLS, same daemon" \
    "$exec_ms" "$(wall_ms 20 lxc exec kb:deb -- true)"
ssh_ms=$(wall_ms 20 sshin true)
row "exec round trip, ms (kvmbox exec -- true) vs ssh into the same guest" "$exec_ms" "$ssh_ms"
detach() { printf '\001q' | kv console deb; }
row "console attach and detach, ms (kvmbox console, Ctrl-a q) vs an ssh login and logout" \
    "$(wall_ms 20 detach)" "$ssh_ms"

# Throughput: 2 MB out of the guest (the agent hands a command's output
# over in one reply, which kvmbox bounds at 4 MiB of base64, about 3 MiB of
# output) through `kvmbox exec`'s stdout next to ssh's; and 200 kB the guest writes to its serial console, through an
# attached `kvmbox console`, next to the same bytes through ssh.
mbps() { awk -v b="$1" -v ms="$2" 'BEGIN { if (ms > 0) printf "%.2f", b / 1e6 / (ms / 1000); else print 0 }'; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }
size=2000000
t0=$(now_ms); got=$(kv exec deb -- head -c $size /dev/zero | wc -c); k_ms=$(($(now_ms) - t0))
[ "$got" -eq $size ] || k_ms=0
t0=$(now_ms); got=$(sshin head -c $size /dev/zero | wc -c); s_ms=$(($(now_ms) - t0))
[ "$got" -eq $size ] || s_ms=0
row "exec stdout throughput, MB/s (2 MB: kvmbox exec vs ssh)" "$(mbps $size $k_ms)" "$(mbps $size $s_ms)"

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

# A snapshot of the running guest (its filesystems frozen by the agent,
# then QMP) and a restore (QEMU stopped, the disk reverted, QEMU started),
# next to qemu-img on a stopped overlay of the same image.
qemu-img create -q -f qcow2 -b "$img/root.qcow2" -F qcow2 peer.qcow2
row "snapshot of the running guest, ms (kvmbox snapshot) vs qemu-img snapshot -c of a stopped overlay" \
    "$(wall_ms 1 kv snapshot deb b1)" "$(wall_ms 1 qemu-img snapshot -c b1 peer.qcow2)"
row "restore of the running guest, ms (kvmbox restore: stop, revert, start) vs qemu-img snapshot -a of a stopped overlay" \
    "$(wall_ms 1 kv restore deb b1)" "$(wall_ms 1 qemu-img snapshot -a b1 peer.qcow2)"

# Raw QEMU on the same image and seed, the guest alone on the machine.
seed=state/instances/deb/cidata.img
cp "$seed" peer-seed.img
kv stop deb --force >/dev/null
rm -f peer.qcow2; qemu-img create -q -f qcow2 -b "$img/root.qcow2" -F qcow2 peer.qcow2
launched=$(date +%s%N)
qemu-system-x86_64 -accel tcg -smp 2 -m 1G -display none -serial file:peer-console.log \
    -kernel guest/vmlinuz -initrd guest/initrd.img -append "$(cat "$img/cmdline")" \
    -drive file=peer.qcow2,if=virtio,format=qcow2 -drive file=peer-seed.img,if=virtio,format=raw,readonly=on \
    -netdev user,id=n0 -device virtio-net-pci,netdev=n0 -object rng-random,id=rng0,filename=/dev/urandom \
    -device virtio-rng-pci,rng=rng0 &
qpid=$!
i=0; until finished peer-console.log; do i=$((i + 1)); [ $i -lt 600 ] || break; sleep 1; done
raw_s=$(echo "$launched $(date +%s%N)" | awk '{ printf "%.1f", ($2 - $1) / 1e9 }')
finished peer-console.log || raw_s=0
kill -9 $qpid 2>/dev/null || true
row "launch to cloud-init finished, s (Debian cloud image under TCG: kvmbox launch vs raw qemu-system-x86_64, same disk and seed)" \
    "$cloud_s" "$raw_s"
