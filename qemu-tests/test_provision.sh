# Scripted provisioning from an initramfs: a guest whose
# initramfs holds only busybox and the static kvmbox binary — no HOME, no
# /etc/passwd, no terminal — adds the host daemon as a remote with
# --fingerprint and --token over user-mode networking, lists it, and fails
# cleanly with a wrong fingerprint. The guest reaches the host's loopback
# as 10.0.2.2 (QEMU's user-mode NAT), so nothing leaves this machine.
. "$TESTLIB"
cache=$(sh "$REPO/qemu-tests/assets.sh")
kver=$(ls "$cache/kernel/lib/modules" | head -n1)

# Host side: a daemon with a TLS listener on loopback, a token, the fingerprint.
export KVMBOX_DIR=$PWD/state KVMBOX_CONF=$PWD/conf
mkdir -p bin; ln -sf "$K" bin/kvmboxd; ln -sf "$K" bin/kvmbox
bin/kvmboxd --group root --https 127.0.0.1:0 2>daemon.log &
pid=$!
qpid=""
trap 'kill $pid $qpid 2>/dev/null || true' EXIT
port=$(https_port daemon.log)
fp=$(bin/kvmbox --applet kvmbox-cert fingerprint state/server.crt 2>/dev/null || "$K" --applet kvmbox-cert fingerprint state/server.crt)
[ ${#fp} -eq 64 ] || fail "no server fingerprint"
token=$(bin/kvmbox config trust add --name initramfs --role auditor)
wrong=$(echo "$fp" | tr 0-9a-f 1-9a-f0)

# Guest side: a second cpio archive appended to the test initramfs replaces
# /init and adds the binary and the virtio-net modules (the kernel unpacks
# concatenated archives in order).
mkdir -p extra/bin extra/lib/modules
cp "$K" extra/bin/kvmbox
for m in failover net_failover virtio_net; do
    ko=$(find "$cache/kernel/lib/modules/$kver" -name "$m.ko*" | head -n1)
    [ -n "$ko" ] || fail "module $m not in the test kernel"
    case "$ko" in *.xz) xz -dc "$ko" ;; *.zst) zstd -dc "$ko" ;; *) cat "$ko" ;; esac >"extra/lib/modules/$m.ko"
done
cat >extra/init <<INIT
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mkdir -p /tmp /run
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci failover net_failover virtio_net; do
    insmod /lib/modules/\$m.ko || echo "PROV-INSMOD-FAILED \$m"
done
ip link set lo up; ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0; ip route add default via 10.0.2.2
# No user database at all; the kernel gives init HOME=/ and TERM, so the
# client runs with an empty environment and stdin not a terminal.
[ ! -e /etc/passwd ] && [ ! -e /etc/group ] && echo PROV-BARE
k() { env -i /bin/kvmbox "\$@" </dev/null; }
k remote add bad 10.0.2.2:$port --fingerprint $wrong --token $token >/tmp/bad 2>&1
echo "PROV-WRONG-RC=\$? \$(cat /tmp/bad)"
# Without the token the client must reach the server to see the mismatch.
k remote add bad 10.0.2.2:$port --fingerprint $wrong >/tmp/bad 2>&1
echo "PROV-WRONG-SERVER-RC=\$? \$(cat /tmp/bad)"
if k remote add host 10.0.2.2:$port --fingerprint $fp --token $token >/tmp/add 2>&1; then
    echo PROV-ADD-OK
else
    echo "PROV-ADD-FAILED \$(cat /tmp/add)"
fi
echo "PROV-LIST \$(k list host: --format json 2>&1 | tr -d '\n')"
echo PROV-DONE
poweroff -f
INIT
chmod 755 extra/init
(cd extra && find . | busybox cpio -o -H newc 2>/dev/null) | gzip -1 >extra.gz
cat "$cache/initrd.gz" extra.gz >initrd.gz

qemu-system-x86_64 -nodefaults -no-user-config -machine q35 -accel tcg -m 256 -display none \
    -kernel "$cache/vmlinuz" -initrd initrd.gz -append "console=ttyS0 panic=-1 quiet" \
    -netdev user,id=n0,restrict=off -device virtio-net-pci,netdev=n0 \
    -serial file:console.log -no-reboot &
qpid=$!
i=0
until grep -q PROV-DONE console.log 2>/dev/null; do
    i=$((i + 1)); [ $i -lt 600 ] || fail "guest did not finish: $(tail -20 console.log)"
    kill -0 $qpid 2>/dev/null || { grep -q PROV-DONE console.log && break; fail "guest died: $(tail -20 console.log)"; }
    sleep 0.1
done
log=$(tr -d '\r' <console.log)
echo "$log" | grep PROV-
contains "$log" "PROV-BARE"
case "$log" in *PROV-INSMOD-FAILED*) fail "a module did not load" ;; esac
# The wrong fingerprint is refused before anything is sent or saved.
contains "$log" "PROV-WRONG-RC=1 kvmbox:"
contains "$log" "PROV-WRONG-SERVER-RC=1 kvmbox:"
contains "$log" "not the expected"
contains "$log" "PROV-ADD-OK"
contains "$log" "PROV-LIST []"
# The host now trusts the guest's key, with the role the token carried.
contains "$(bin/kvmbox config trust list --format csv)" "initramfs,client,auditor"
