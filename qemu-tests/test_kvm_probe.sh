# The KVM probe (instances.accel auto boots a throwaway QEMU at daemon start)
# dies with the daemon: on SIGKILL through PR_SET_PDEATHSIG, on SIGTERM
# killed and reaped before the daemon exits. Each round catches the probe as
# the daemon's child and freezes it (SIGSTOP; SIGKILL still ends a stopped
# process) so that it stands for a vCPU that hangs: on this kind of host the
# probe QEMU sometimes hangs and sometimes aborts by itself within
# milliseconds, and a probe that ended by itself would prove nothing. Only
# processes naming this test's own state directory are looked at, so probes
# of other daemons on the host do not count.
. "$TESTLIB"

[ "$(id -u)" -eq 0 ] || { echo "SKIPPED: the daemon's group and /dev/kvm need root"; exit 0; }
command -v qemu-system-x86_64 >/dev/null || { echo "SKIPPED: no qemu-system-x86_64"; exit 0; }
[ -r /dev/kvm ] && [ -w /dev/kvm ] || { echo "SKIPPED: no usable /dev/kvm, so no probe runs"; exit 0; }

export KVMBOX_DIR=$PWD/state KVMBOX_CONF=$PWD/conf
unset HOME XDG_RUNTIME_DIR KVMBOX_SOCKET || true
mkdir -p bin; ln -sf "$K" bin/kvmboxd
# A pattern, not the literal path, so that grep does not find itself.
rom="$PWD/state/accel-probe/kvm-probe[.]rom"
dpid=
cleanup() {
    [ -z "$dpid" ] || kill -9 $dpid 2>/dev/null || true
    # A frozen probe a failed check left (only those of this state directory).
    for f in $(grep -las "$rom" /proc/[0-9]*/cmdline); do
        kill -9 "$(echo "$f" | cut -d/ -f3)" 2>/dev/null || true
    done
}
trap cleanup EXIT

# gone PID: no such process, or a zombie waiting for a parent that does not reap.
gone() { [ ! -r /proc/$1/status ] || grep -q "^State:\s*Z" /proc/$1/status; }
# ppid PID
ppid() { sed -n 's/^PPid:\s*//p' /proc/$1/status 2>/dev/null; }
# frozen_probe_of DAEMON: the probe QEMU, caught as the daemon's child and
# stopped; prints its pid, or nothing if it ended before it could be caught.
frozen_probe_of() {
    i=0
    while ! grep -q "accelerator: " daemon.log; do
        for f in $(grep -las "$rom" /proc/[0-9]*/cmdline); do
            p=$(echo "$f" | cut -d/ -f3)
            [ "$(ppid "$p")" = "$1" ] || continue
            kill -STOP "$p" 2>/dev/null || continue
            # Still the probe, and not already exiting.
            if grep -qs "^State:\s*T" /proc/$p/status && grep -qas "$rom" /proc/$p/cmdline; then
                echo "$p"
            fi
            return
        done
        i=$((i + 1)); [ $i -lt 2000 ] || fail "no probe QEMU under kvmboxd $1: $(cat daemon.log)"
    done
}

for round in 1 2 3; do
    for sig in KILL TERM; do
        tries=0
        while :; do
            rm -rf state; : >daemon.log
            bin/kvmboxd --group root 2>daemon.log &
            dpid=$!
            probe=$(frozen_probe_of $dpid)
            [ -z "$probe" ] || break
            kill -9 $dpid; wait $dpid 2>/dev/null || true
            tries=$((tries + 1))
            [ $tries -lt 20 ] || fail "the probe never stayed long enough to be caught: $(cat daemon.log)"
        done
        kill -$sig $dpid
        if [ $sig = TERM ]; then
            wait $dpid || fail "kvmboxd exited non-zero on SIGTERM: $(cat daemon.log)"
            # The daemon reaped it before exiting: not even a zombie is left.
            [ ! -e /proc/$probe ] || fail "round $round: the probe QEMU $probe outlived kvmboxd's SIGTERM"
            grep -q "ended the accelerator probe" daemon.log || fail "no word of the probe at shutdown: $(cat daemon.log)"
        else
            wait $dpid 2>/dev/null || true
            i=0; while ! gone $probe; do
                i=$((i + 1)); [ $i -lt 200 ] || fail "round $round: the probe QEMU $probe outlived kvmboxd's SIGKILL by 2s ($(grep -E '^(State|PPid)' /proc/$probe/status | tr '\n' ' '))"
                sleep 0.01
            done
            echo "round $round: probe gone $((i * 10)) ms after SIGKILL"
        fi
        dpid=
        [ -z "$(grep -las "$rom" /proc/[0-9]*/cmdline)" ] || fail "round $round ($sig): a probe QEMU of this state directory is left"
    done
done
