# A real Debian 12 guest through the daemon, under TCG: the image of
# qemu-tests/debian/image.sh (built once, cached) is imported, launched with
# its kernel, initrd and command line, and must boot systemd to
# multi-user.target with no failed unit, cloud-init provisioning it from the
# daemon's NoCloud seed, and a login prompt on the serial console; then it is stopped
# through the ACPI power button (systemd-logind powers it off) and deleted,
# leaving no QEMU, instance directory or disk overlay behind.
. "$TESTLIB"

[ "$(id -u)" -eq 0 ] || { echo "SKIPPED: per-VM uids and the image build need root"; exit 0; }
command -v qemu-system-x86_64 >/dev/null || { echo "SKIPPED: no qemu-system-x86_64"; exit 0; }
img=$(sh "$REPO/qemu-tests/debian/image.sh" | tail -n 1)
[ -s "$img/root.qcow2" ] || fail "no Debian image in '$img'"

export KVMBOX_DIR=$PWD/state KVMBOX_CONF=$PWD/conf
unset HOME XDG_RUNTIME_DIR KVMBOX_SOCKET || true
chmod 711 .
mkdir -p bin; ln -sf "$K" bin/kvmboxd; ln -sf "$K" bin/kvmbox
kv() { bin/kvmbox "$@"; }
# Its AppArmor profiles go to the scratch directory (this kernel may have
# none; then the daemon logs that QEMU runs without one).
bin/kvmboxd --group root >daemon.log 2>&1 &
dpid=$!
cleanup() {
    kill -9 "$dpid" 2>/dev/null || true
    for p in $(grep -lasF "$PWD/state/instances/" /proc/[0-9]*/cmdline | cut -d/ -f3); do
        kill -9 "$p" 2>/dev/null || true
    done
}
trap cleanup EXIT
i=0; while ! kv info >/dev/null 2>&1; do i=$((i + 1)); [ $i -lt 100 ] || fail "daemon did not start: $(cat daemon.log)"; sleep 0.1; done
kv config set security.apparmor_profile_dir "$PWD/aa"

# console: the serial log so far, escape sequences and carriage returns out.
console() { kv console deb --show-log | sed 's/\x1b\[[0-9;]*m//g' | tr -d '\r'; }
# wait_console PATTERN: waits for it on the console until $deadline.
wait_console() {
    while ! console | grep -aq "$1"; do
        [ "$(date +%s)" -lt "$deadline" ] || fail "no '$1' on the console: $(console | tail -15)"
        sleep 1
    done
}

# Provisioned by the real cloud-init through the NoCloud seed the daemon
# builds: a user with an SSH key, a file, a command, and a static address
# from network-config; the command reports each on the serial console.
key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKvmbox0test0key0for0cloud0init0only00000000 ci@kvmbox"
cat >user-data <<EOF
#cloud-config
users:
  - name: ciuser
    shell: /bin/sh
    ssh_authorized_keys: ["$key"]
write_files:
  - path: /etc/kvmbox-ci
    content: "written-by-cloud-init"
runcmd:
  - [systemctl, enable, --now, systemd-networkd]
  - [sh, -c, 'i=0; until ip -4 -o addr show | grep -q 10.99.0.5 || [ \$i -gt 60 ]; do i=\$((i+1)); sleep 1; done']
  - [sh, -c, 'echo "KVMBOX-CI user=\$(id -un ciuser) file=\$(cat /etc/kvmbox-ci) keys=\$(grep -c kvmbox /home/ciuser/.ssh/authorized_keys) addr=\$(ip -4 -o addr show | grep -o 10.99.0.5/24)" >/dev/ttyS0']
EOF
# The interface's id is its name pattern: cloud-init 22.4 renders a v2 id
# as systemd-networkd's Name= and ignores `match` there.
cat >network-config <<EOF
version: 2
ethernets:
  "en*":
    addresses: [10.99.0.5/24]
EOF
kv image import "$img/root.qcow2" --alias debian >/dev/null
t0=$(date +%s)
kv launch debian deb --kernel "$img/vmlinuz" --initrd "$img/initrd.img" --cmdline "$(cat "$img/cmdline")" \
    --memory 1GiB --cpus 2 --cloud-init user-data -c cloud-init.network-config=@network-config >/dev/null
pid=$(kv info deb --format json | sed -n 's/^  "pid": \([0-9]*\),\{0,1\}$/\1/p' | head -n 1)
[ -n "$pid" ] || fail "no QEMU pid: $(kv info deb)"
# The seed is a read-only disk of its own, built from the config.
tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "node-name=blk-cidata,read-only=on" ||
    fail "QEMU was not given the cloud-init seed read-only: $(tr '\0' ' ' <"/proc/$pid/cmdline")"
# 115-160 s on a two-core machine loaded with other builds.
deadline=$((t0 + 300))
# cloud-init named it after the instance (meta-data local-hostname).
wait_console "^deb login:"
echo "launch → login prompt: $(($(date +%s) - t0)) s"
wait_console "Reached target multi-user.target"
echo "launch → multi-user.target: $(($(date +%s) - t0)) s"
log=$(console)
contains "$log" "Welcome to Debian GNU/Linux 12 (bookworm)!"
# cloud-init's first two stages run before the login prompt, then its
# final stage runs the command, which found everything in place.
contains "$log" "running 'init-local'"
contains "$log" "running 'init'"
wait_console "KVMBOX-CI "
echo "launch → cloud-init's command: $(($(date +%s) - t0)) s"
contains "$(console)" "KVMBOX-CI user=ciuser file=written-by-cloud-init keys=1 addr=10.99.0.5/24"
# cloud-init read the seed as NoCloud. (It renders network-config for
# systemd-networkd, which the image leaves off: the user-data starts it.)
wait_console "Datasource DataSourceNoCloud \[seed=/dev/vd"
! printf '%s\n' "$log" | grep -a "FAILED" || fail "a unit failed during boot"

# A graceful stop: the power button, then systemd's own shutdown.
t0=$(date +%s)
kv stop deb --timeout 120
echo "stop: $(($(date +%s) - t0)) s"
contains "$(console)" "reboot: Power down"
[ ! -d "/proc/$pid" ] || fail "QEMU still runs after stop"
kv delete deb
[ ! -e state/instances/deb ] || fail "the instance directory is left: $(ls -R state/instances)"
[ "$(kv list --format csv)" = "name,state,type" ] || fail "list is not empty: $(kv list)"
! grep -lasF "$PWD/state/instances/" /proc/[0-9]*/cmdline >/dev/null || fail "a QEMU of this test still runs"
kill -TERM "$dpid"; wait "$dpid" || fail "kvmboxd exited non-zero: $(cat daemon.log)"
