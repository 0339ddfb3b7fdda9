# The state directory's filesystem full (a 2 MiB tmpfs, mounted in a
# private mount namespace so that nothing stays mounted whatever happens):
# every change fails with a clear error and leaves the old state as it
# was, with no temporary file; the daemon keeps serving reads, and starts
# again on the full disk; once there is room, changes work again.
. "$TESTLIB"

[ "$(id -u)" -eq 0 ] || { echo "SKIPPED: mounting a tmpfs needs root"; exit 0; }
command -v unshare >/dev/null || { echo "SKIPPED: no unshare"; exit 0; }
if [ -z "${KVMBOX_TEST_PRIVATE_MOUNTS:-}" ]; then
    exec unshare --mount --propagation private env KVMBOX_TEST_PRIVATE_MOUNTS=1 sh "$0"
fi

chmod 711 .
mkdir state
mount -t tmpfs -o size=2m,mode=0711 kvmbox-test state
export KVMBOX_DIR=$PWD/state KVMBOX_CONF=$PWD/conf
unset HOME XDG_RUNTIME_DIR KVMBOX_SOCKET || true
mkdir -p bin; ln -sf "$K" bin/kvmboxd; ln -sf "$K" bin/kvmbox; ln -sf "$K" bin/kvmbox-cert
kv() { bin/kvmbox "$@"; }
start_daemon() {
    bin/kvmboxd --group root 2>>daemon.log &
    dpid=$!
    i=0; while ! kv info >/dev/null 2>&1; do i=$((i + 1)); [ $i -lt 100 ] || fail "daemon did not start: $(tail -5 daemon.log)"; sleep 0.1; done
}
trap 'kill -9 ${dpid:-} 2>/dev/null || true' EXIT
start_daemon
kv config set security.apparmor_profile_dir "$PWD/aa"
: >vmlinuz
kv init v1 --kernel "$PWD/vmlinuz" --memory 64MiB >/dev/null
kv config set instances.accel tcg
for c in t1 t2; do bin/kvmbox-cert gen --key $c.key --cert $c.crt --cn $c >/dev/null; done
kv config trust add t1.crt --name t1
head -c 4096 /dev/urandom >small.img
kv image import "$PWD/small.img" --alias small >/dev/null
digest() { (cd state && find . -name '*.json' -type f | sort | xargs sha256sum); }
before=$(digest)

# Full: what is left is filled, and again before each change below, so
# that each meets a full disk whatever was freed since. Space a moment's use
# held (dd has stopped here with 68 KiB left) is filled on the next try.
fill() {
    i=0
    until [ "$(df --output=avail state | tail -n 1 | tr -d ' ')" -eq 0 ]; do
        i=$((i + 1)); [ $i -le 50 ] || fail "the tmpfs is not full: $(df state)"
        dd if=/dev/zero of=state/filler bs=4k oflag=append conv=notrunc 2>/dev/null || true
        sleep 0.1
    done
}
fill

# nospace CMD…: on a full disk, CMD fails, saying why in one line.
nospace() {
    fill
    expect_fail kv "$@"
    one_line "$ERR"
    case $ERR in
    *"no space left on the daemon's disk"* | *"do not fit"*) ;;
    *) fail "kvmbox $*: no word of the full disk in: $ERR" ;;
    esac
}
nospace init v2 --kernel "$PWD/vmlinuz" --memory 64MiB
[ ! -e state/instances/v2 ] || fail "a failed create left its directory"
nospace config set v1 limits.cpu 2
nospace config set instances.accel kvm
nospace config trust add t2.crt --name t2
head -c 65536 /dev/urandom >big.img
nospace image import "$PWD/big.img" --alias big

# Reads are served, and say what was there before.
reads() {
    contains "$(kv list --format csv)" "v1,Stopped"
    [ "$(kv config get instances.accel)" = tcg ] || fail "instances.accel is $(kv config get instances.accel)"
    contains "$(kv config trust list)" "t1"
    ! kv config trust list | grep -q t2 || fail "t2 is trusted"
    contains "$(kv image list)" "small"
    ! kv info v1 --format json | grep -q "limits.cpu" || fail "limits.cpu was set"
}
reads
[ "$(digest)" = "$before" ] || fail "the state changed on a full disk"
state_consistent state
kill -0 "$dpid" || fail "the daemon died on a full disk: $(tail -5 daemon.log)"

# A restart on the full disk serves reads too.
kill -TERM "$dpid"; wait "$dpid" || true
start_daemon
reads
[ "$(digest)" = "$before" ] || fail "a restart on a full disk changed the state"

# Room again: the changes go through.
rm state/filler
kv init v2 --kernel "$PWD/vmlinuz" --memory 64MiB >/dev/null
kv config set v1 limits.cpu 2
kv config trust add t2.crt --name t2
kv image import "$PWD/big.img" --alias big >/dev/null
state_consistent state
kill -TERM "$dpid"; wait "$dpid" || fail "kvmboxd exited non-zero"
