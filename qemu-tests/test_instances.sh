# Instances through the daemon, booting real guests under TCG: launch from an
# imported image + kernel → guest marker → list Running → QEMU under its own
# uid with seccomp → hot-plugged disk seen by the guest (profile updated
# first) → daemon SIGKILLed and restarted, VM re-adopted and controllable →
# restart → graceful stop (ACPI button) → delete leaves nothing. Failure cases: missing
# kernel, bad memory size, duplicate name, a kernel that is not one (profile
# unloaded), security.apparmor=required without AppArmor, deleting a running
# VM without --force, a port forward on an IPv6 address.
#
# This kernel has no AppArmor, so the helper is given a parser wrapper that
# logs its arguments and compiles with the real `apparmor_parser -Q -K -T`.
. "$TESTLIB"

[ "$(id -u)" -eq 0 ] || { echo "SKIPPED: per-VM uids need root"; exit 0; }
command -v qemu-system-x86_64 >/dev/null || { echo "SKIPPED: no qemu-system-x86_64"; exit 0; }

export KVMBOX_DIR=$PWD/state KVMBOX_CONF=$PWD/conf
unset HOME XDG_RUNTIME_DIR KVMBOX_SOCKET || true
chmod 711 .
guest_assets
parser_wrapper
log=$PWD/parser.log

mkdir -p bin; ln -sf "$K" bin/kvmboxd; ln -sf "$K" bin/kvmbox
kv() { bin/kvmbox "$@"; }
pids=""
start_daemon() {
    KVMBOX_AA_PARSER=$PWD/parser.sh bin/kvmboxd --group root 2>>daemon.log &
    dpid=$!
    i=0; while ! kv info >/dev/null 2>&1; do i=$((i + 1)); [ $i -lt 100 ] || fail "daemon did not start: $(cat daemon.log)"; sleep 0.1; done
}
cleanup() {
    kill -9 ${dpid:-} 2>/dev/null || true
    # Also any QEMU of this state directory whose pid a failed check did
    # not get to record.
    for p in $pids $(grep -lasF "$PWD/state/instances/" /proc/[0-9]*/cmdline | cut -d/ -f3); do
        kill -9 "$p" 2>/dev/null || true
    done
    [ -z "${br:-}" ] || ip link del "$br" 2>/dev/null || true
}
trap cleanup EXIT
# field NAME KEY: a top-level field of the instance's JSON.
field() { kv info "$1" --format json | sed -n "s/^  \"$2\": \"\{0,1\}\([^\",]*\)\"\{0,1\},\{0,1\}\$/\1/p" | head -n 1; }
uuid_of() { kv info "$1" --format json | sed -n 's/^ *"volatile.uuid": "\(.*\)",\{0,1\}$/\1/p' | head -n 1; }
# alive PID: running (a zombie left for a parent that does not reap is not).
alive() { [ -r /proc/$1/status ] && ! grep -q "^State:\s*Z" /proc/$1/status; }
wait_console() { # NAME TEXT SECONDS
    i=0; while ! kv console "$1" --show-log | grep -q "$2"; do
        i=$((i + 1)); [ $i -lt $(($3 * 10)) ] || fail "no '$2' on $1's console: $(kv console "$1" --show-log | tail -5)"
        sleep 0.1
    done
}
boot="--kernel $kernel --initrd $initrd --memory 256MiB"

start_daemon
kv config set security.apparmor_profile_dir "$PWD/aa"
contains "$(kv info)" "accelerator_reason"

# --- Failure cases: clear errors, nothing half-made.
expect_fail kv launch bad1 --kernel "$PWD/nope" --memory 256MiB
contains "$ERR" "does not exist"; one_line "$ERR"
[ ! -e state/instances/bad1 ] || fail "a failed create left its directory"
expect_fail kv launch bad2 --kernel "$kernel" --memory 12bananas
contains "$ERR" "limits.memory"
[ ! -e state/instances/bad2 ] || fail "a failed create left its directory"
echo "not a kernel" >notakernel
expect_fail kv launch bad3 --kernel "$PWD/notakernel" --memory 256MiB
contains "$ERR" "QEMU exited during start-up"
[ "$(field bad3 status)" = Stopped ] || fail "a failed start is not Stopped"
u3=$(uuid_of bad3)
grep -q -- "-r .*kvmbox-$u3" "$log" || fail "the profile was not loaded before the failed start: $(cat "$log")"
[ "$(tail -n 1 "$log")" = "-R" ] || fail "the profile was not unloaded after the failed start: $(cat "$log")"
expect_fail kv launch bad3 $boot
contains "$ERR" "already exists"
kv delete bad3
[ ! -e "aa/kvmbox-$u3" ] || fail "delete left the profile"
kv init req $boot -c security.apparmor=required
expect_fail kv start req
contains "$ERR" "security.apparmor=required"
contains "$ERR" "refusing to start req unconfined"
[ "$(field req status)" = Stopped ] || fail "a refused start is not Stopped"
kv delete req

# --- An image, and a VM launched from it with a direct-boot kernel.
qemu-img create -q -f raw base.img 8M
kv image import base.img --alias base >/dev/null
contains "$(kv image list)" "raw"
: >"$log"
t0=$(date +%s%N)
# eth0 on a bridge of its own: the daemon makes the tap and QEMU inherits it.
net=""
if command -v ip >/dev/null; then
    br=kvbr$$
    ip link add "$br" type bridge
    net="--network $br"
fi
kv launch base v1 $boot $net --cmdline "console=ttyS0 quiet panic=-1" >/dev/null
p1=$(field v1 pid); pids="$pids $p1"
wait_console v1 KVMBOX-GUEST-READY 60
echo "launch → guest marker: $((($(date +%s%N) - t0) / 1000000)) ms"
wait_console v1 "KVMBOX-DISK vda" 10
contains "$(kv list)" "Running"
u1=$(uuid_of v1)
tap=kb$(echo "$u1" | cut -c1-8)n0
if [ -n "$net" ]; then
    [ "$(basename "$(readlink "/sys/class/net/$tap/master")")" = "$br" ] || fail "tap $tap is not on bridge $br"
fi
status=$(cat /proc/$p1/status)
uid=$(echo "$status" | sed -n 's/^Uid:\s*\([0-9]*\).*/\1/p')
[ "$uid" != 0 ] || fail "QEMU runs as root"
[ "$uid" = "$(kv info v1 --format json | sed -n 's/^ *"volatile.idmap.base": "\([0-9]*\)".*/\1/p' | head -n 1)" ] || fail "QEMU's uid $uid is not the instance's"
echo "$status" | grep -q "^Seccomp:\s*2" || fail "QEMU runs without seccomp"
[ -s "aa/kvmbox-$u1" ] && [ -s "aa/kvmbox-$u1.files" ] || fail "no profile written"
# QEMU's own log is inherited from the daemon: without a rule an enforcing
# kernel would revoke it at exec.
grep -q '/qemu/qemu.log" rw' "aa/kvmbox-$u1.files" || fail "QEMU's log is not in the profile: $(cat "aa/kvmbox-$u1.files")"
grep -q -- "-r .*aa/kvmbox-$u1" "$log" || fail "the profile was not compiled: $(cat "$log")"
contains "$(kv info v1)" "kvmbox-$u1"

# --- Hotplug: the profile grants the disk before QEMU opens it.
qemu-img create -q -f raw data.img 16M
owner=$(stat -c %u:%g:%a data.img)
loads=$(grep -c -- "^-r" "$log")
kv config device add v1 data disk source="$PWD/data.img" >/dev/null
[ "$(grep -c -- "^-r" "$log")" -gt "$loads" ] || fail "no add-file reload before the hotplug"
grep -q "data.img" "aa/kvmbox-$u1.files" || fail "the hot-plugged disk is not in the profile"
wait_console v1 "KVMBOX-DISK vdb" 10
[ "$(stat -c %u data.img)" = "$uid" ] || fail "the hot-plugged disk is not the VM's"

# --- SIGKILL the daemon: the VM keeps running and is taken over again.
kill -9 $dpid; wait $dpid 2>/dev/null || true
alive "$p1" || fail "QEMU died with the daemon"
# What a creation cut short by the kill would leave: a directory, no record.
mkdir state/instances/ghost
start_daemon
! kv list | grep -q ghost || fail "a directory without a record became an instance"
kv init ghost $boot >/dev/null
kv delete ghost
[ "$(field v1 status)" = Running ] || fail "not Running after the daemon restart"
[ "$(field v1 pid)" = "$p1" ] || fail "another pid after the daemon restart"
expect_fail kv delete v1
contains "$ERR" "is running"
expect_fail kv start v1
contains "$ERR" "already running"
kv config device remove v1 data >/dev/null
! kv info v1 | grep -q "device data" || fail "the unplugged disk is still listed"
[ "$(stat -c %u:%g:%a data.img)" = "$owner" ] || fail "the unplugged disk did not get its owner back"
# Restart: the re-adopted QEMU is powered down and a new one boots.
kv restart v1 --timeout 30
p2=$(field v1 pid); pids="$pids $p2"
[ -n "$p2" ] && [ "$p2" != "$p1" ] || fail "restart kept the same QEMU"
! alive "$p1" || fail "the old QEMU still runs after restart"
wait_console v1 KVMBOX-GUEST-READY 60
p1=$p2
kv stop v1 --timeout 30
kv console v1 --show-log | grep -q KVMBOX-POWERDOWN || fail "the guest did not see the ACPI power button"
[ "$(field v1 status)" = Stopped ] || fail "not Stopped after stop"
! alive "$p1" || fail "QEMU still runs after stop"
[ "$(tail -n 1 "$log")" = "-R" ] || fail "the profile was not unloaded after stop: $(tail -3 "$log")"
[ ! -e "/sys/class/net/$tap" ] || fail "tap $tap left after stop"

# --- Two starts at once are serialised: the second sees the first's VM.
(if kv start v1 2>s1.err; then echo 0; else echo 1; fi >s1.rc) & j1=$!
(if kv start v1 2>s2.err; then echo 0; else echo 1; fi >s2.rc) & j2=$!
wait $j1 $j2
[ "$(cat s1.rc s2.rc | sort | tr -d '\n')" = "01" ] || fail "concurrent starts: exit codes $(cat s1.rc s2.rc)"
grep -q "already running" s1.err s2.err || fail "the second start did not say why: $(cat s1.err s2.err)"
pids="$pids $(field v1 pid)"
kv stop v1 --force

# --- security.privileged: QEMU as root, and the daemon says what that costs.
# Its port forwards listen on loopback unless an address is given.
free_port() { p=$1; while [ -n "$(ss -Hltn "sport = :$p")" ]; do p=$((p + 1)); done; echo $p; }
fa=$(free_port $((20000 + $$ % 20000))); fb=$(free_port $((fa + 1)))
kv init p1 $boot -c security.privileged=true -c security.apparmor=off --forward "$fa:22" --forward "127.0.0.2:$fb:23" >/dev/null
kv start p1
pp=$(field p1 pid); pids="$pids $pp"
[ "$(sed -n 's/^Uid:\s*\([0-9]*\).*/\1/p' /proc/$pp/status)" = 0 ] || fail "a privileged VM does not run as root"
[ "$(ss -Hltn "sport = :$fa" | awk '{print $4}')" = "127.0.0.1:$fa" ] || fail "--forward $fa:22 listens on: $(ss -Hltn "sport = :$fa")"
[ "$(ss -Hltn "sport = :$fb" | awk '{print $4}')" = "127.0.0.2:$fb" ] || fail "--forward 127.0.0.2:$fb:23 listens on: $(ss -Hltn "sport = :$fb")"
expect_fail kv init p2 $boot --forward "[::1]:$fa:22"
contains "$ERR" "IPv4 addresses only"; one_line "$ERR"
grep -q "security.privileged is set: QEMU runs as root" daemon.log || fail "no warning for a privileged VM"
kv delete --force p1

# --- Delete leaves nothing behind.
kv delete v1
[ ! -e state/instances/v1 ] || fail "the instance directory is left"
ls aa | grep -q "$u1" && fail "the profile is left: $(ls aa)"
[ "$(kv list --format csv)" = "name,state,type" ] || fail "list is not empty: $(kv list)"
kill -TERM $dpid; wait $dpid || fail "kvmboxd exited non-zero"
