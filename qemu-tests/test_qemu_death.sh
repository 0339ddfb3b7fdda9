# QEMU dying under a running VM, the daemon staying up: SIGKILLed, and
# killed by the kernel's out-of-memory killer (its QEMU moved into a memory
# cgroup with a small limit while the guest boots). Each time the instance
# turns to Error with the reason, its AppArmor profile is unloaded, its tap
# is gone, and its disk is given back to its owner with its old mode; the
# next start hands the disk over again and boots.
. "$TESTLIB"

[ "$(id -u)" -eq 0 ] || { echo "SKIPPED: per-VM uids need root"; exit 0; }
command -v qemu-system-x86_64 >/dev/null || { echo "SKIPPED: no qemu-system-x86_64"; exit 0; }

export KVMBOX_DIR=$PWD/state KVMBOX_CONF=$PWD/conf
unset HOME XDG_RUNTIME_DIR KVMBOX_SOCKET || true
chmod 711 .
guest_assets
parser_wrapper
mkdir -p bin; ln -sf "$K" bin/kvmboxd; ln -sf "$K" bin/kvmbox
kv() { bin/kvmbox "$@"; }
KVMBOX_AA_PARSER=$PWD/parser.sh bin/kvmboxd --group root 2>daemon.log &
dpid=$!
cg=
cleanup() {
    end_daemon
    [ -z "$cg" ] || rmdir "$cg" 2>/dev/null || true
}
trap cleanup EXIT
i=0; while ! kv info >/dev/null 2>&1; do i=$((i + 1)); [ $i -lt 100 ] || fail "daemon did not start: $(cat daemon.log)"; sleep 0.1; done
kv config set security.apparmor_profile_dir "$PWD/aa"
field() { kv info "$1" --format json | sed -n "s/^  \"$2\": \"\{0,1\}\([^\",]*\)\"\{0,1\},\{0,1\}\$/\1/p" | head -n 1; }

qemu-img create -q -f raw data.img 8M
chown 4321:4321 data.img; chmod 640 data.img
owner=$(stat -c %u:%g:%a data.img)
kv init d1 --kernel "$kernel" --initrd "$initrd" --memory 256MiB >/dev/null
kv config device add d1 data disk source="$PWD/data.img" >/dev/null
uuid=$(kv info d1 --format json | sed -n 's/^ *"volatile.uuid": "\(.*\)",\{0,1\}$/\1/p' | head -n 1)
vm_uid=$(kv info d1 --format json | sed -n 's/^ *"volatile.idmap.base": "\([0-9]*\)".*/\1/p' | head -n 1)

# died HOW: QEMU is ended by HOW (a command given the pid); the instance
# must turn to Error within 60 s, the reason in its error, with nothing
# of its run left held.
died() {
    kv start d1
    pid=$(field d1 pid)
    [ "$(stat -c %u data.img)" = "$vm_uid" ] || fail "the disk was not handed to the VM"
    : >parser.log
    "$@" "$pid"
    i=0; while [ "$(field d1 status)" = Running ]; do
        i=$((i + 1)); [ $i -lt 600 ] || fail "d1 still Running 60 s after: $*"; sleep 0.1
    done
    [ "$(field d1 status)" = Error ] || fail "d1 is $(field d1 status) after its QEMU died, not Error"
    error=$(field d1 error)
    # The unload comes after the status changes: wait for it.
    i=0; until [ "$(tail -n 1 parser.log)" = "-R" ]; do
        i=$((i + 1)); [ $i -lt 100 ] || fail "the profile was not unloaded: $(cat parser.log)"; sleep 0.1
    done
    [ "$(stat -c %u:%g:%a data.img)" = "$owner" ] || fail "the disk was not given back: $(stat -c %u:%g:%a data.img)"
    [ "$(qemus_of "$uuid")" -eq 0 ] || fail "a QEMU of d1 is left"
}

died kill -9
contains "$error" "QEMU was killed by signal 9"
grep -q "d1: QEMU was killed by signal 9" daemon.log || fail "the daemon did not log why: $(tail -3 daemon.log)"

# A memory cgroup (v1, else v2) that QEMU outgrows as its guest boots.
oom() {
    if [ -d /sys/fs/cgroup/memory ] && [ ! -e /sys/fs/cgroup/cgroup.controllers ]; then
        cg=/sys/fs/cgroup/memory/kvmbox-test-$$
        mkdir "$cg"
        echo $((16 << 20)) >"$cg/memory.limit_in_bytes"
    else
        cg=/sys/fs/cgroup/kvmbox-test-$$
        mkdir "$cg"
        echo $((16 << 20)) >"$cg/memory.max"
        echo 0 >"$cg/memory.swap.max" 2>/dev/null || true
    fi
    echo "$1" >"$cg/cgroup.procs"
}
if [ -d /sys/fs/cgroup/memory ] || grep -qw memory /sys/fs/cgroup/cgroup.controllers 2>/dev/null; then
    died oom
    contains "$error" "out-of-memory killer"
else
    echo "SKIPPED the out-of-memory kill: no memory cgroup controller"
fi

# It starts again, and its disk is the VM's again.
kv start d1
[ "$(field d1 status)" = Running ] || fail "d1 did not start again"
[ -z "$(field d1 error)" ] || fail "the old error is still shown: $(field d1 error)"
[ "$(stat -c %u data.img)" = "$vm_uid" ] || fail "the disk was not handed over again"
kv delete --force d1
[ "$(stat -c %u:%g:%a data.img)" = "$owner" ] || fail "delete did not give the disk back"
kill -TERM "$dpid"; wait "$dpid" || fail "kvmboxd exited non-zero"
