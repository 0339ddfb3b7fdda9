# Readiness for systemd's Type=notify, against datagram sockets this test
# binds (a path, then an abstract name): READY=1 only once the daemon
# answers, with its STATUS; RELOADING=1 then READY=1 again on SIGHUP;
# STOPPING=1 on SIGTERM.
. "$TESTLIB"

export KVMBOX_DIR=$PWD/state KVMBOX_CONF=$PWD/conf
unset HOME XDG_RUNTIME_DIR KVMBOX_SOCKET NOTIFY_SOCKET || true
group_args=""
[ "$(id -u)" -ne 0 ] || group_args="--group root"
mkdir -p bin; ln -sf "$K" bin/kvmboxd; ln -sf "$K" bin/kvmbox
pids=""
trap 'kill $pids 2>/dev/null || true' EXIT

# Each run: ADDR then the file the sink writes.
for addr in "$PWD/notify.sock" "@kvmbox-test-notify-$$-$(od -An -N4 -tx4 /dev/urandom | tr -d ' ')"; do
    rm -f notify.txt
    dgram_sink "$addr" notify.txt
    sink=$!; pids="$pids $sink"
    NOTIFY_SOCKET=$addr bin/kvmboxd $group_args 2>daemon.log &
    pid=$!; pids="$pids $pid"
    wait_for notify.txt "^READY=1$"
    # Ready means ready: answered at once, no retry.
    bin/kvmbox info >/dev/null || fail "READY=1 before the daemon answers ($addr)"
    grep -qx "STATUS=serving on $PWD/state/unix.socket" notify.txt || fail "no STATUS: $(cat notify.txt)"
    kill -HUP $pid
    wait_for notify.txt "^RELOADING=1$"
    i=0; until [ "$(grep -c '^READY=1$' notify.txt)" -eq 2 ]; do
        i=$((i + 1)); [ $i -lt 200 ] || fail "not ready again after SIGHUP: $(cat notify.txt)"; sleep 0.05
    done
    bin/kvmbox info >/dev/null
    kill -TERM $pid; wait $pid || fail "kvmboxd exited non-zero: $(cat daemon.log)"
    wait_for notify.txt "^STOPPING=1$"
    kill $sink; wait $sink 2>/dev/null || true
    rm -f notify.sock
done

# A NOTIFY_SOCKET that is no Unix socket address is said, and the daemon
# runs on.
NOTIFY_SOCKET=vsock:2:999 bin/kvmboxd $group_args 2>daemon.log &
pid=$!; pids="$pids $pid"
i=0; until bin/kvmbox info >/dev/null 2>&1; do
    i=$((i + 1)); [ $i -lt 200 ] || fail "daemon did not start: $(cat daemon.log)"; sleep 0.05
done
contains "$(cat daemon.log)" 'warn: NOTIFY_SOCKET="vsock:2:999" is not a Unix socket path or an abstract name'
kill -TERM $pid; wait $pid || fail "kvmboxd exited non-zero: $(cat daemon.log)"
