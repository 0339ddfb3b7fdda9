# kvmboxd --log syslog: each line one RFC 3164 datagram with facility daemon
# (3) and the level's severity, sent to a socket this test binds (never the
# host's /dev/log); SIGHUP re-reads the configuration and the trust store
# on disk, and a configuration it cannot read is refused and logged as an
# error.
. "$TESTLIB"

export KVMBOX_DIR=$PWD/state KVMBOX_CONF=$PWD/conf
unset HOME XDG_RUNTIME_DIR KVMBOX_SOCKET NOTIFY_SOCKET || true
group_args=""
[ "$(id -u)" -ne 0 ] || group_args="--group root"
mkdir -p bin; ln -sf "$K" bin/kvmboxd; ln -sf "$K" bin/kvmbox
pids=""
trap 'kill $pids 2>/dev/null || true' EXIT

dgram_sink "$PWD/log.sock" syslog.txt
sink=$!; pids="$sink"

# Bad command lines.
expect_fail bin/kvmboxd --log journal
contains "$ERR" "unknown log target"
expect_fail bin/kvmboxd --syslog-socket "$PWD/log.sock"
contains "$ERR" "--syslog-socket needs --log syslog"

# A hard limit of 300 open files is below what 128 connections per
# listener want: a warning (severity 4) at start.
(ulimit -n 300 && exec bin/kvmboxd $group_args --log syslog --syslog-socket "$PWD/log.sock" \
    --log-level debug) 2>daemon.log &
pid=$!; pids="$pids $pid"
wait_for syslog.txt "ready: serving on"
# <30> is daemon.info, <28> daemon.warning; the tag carries the pid.
grep -q "^<30>kvmboxd\[$pid\]: info: ready: serving on $PWD/state/unix.socket$" syslog.txt ||
    fail "no daemon.info ready line: $(cat syslog.txt)"
grep -q "^<28>kvmboxd\[$pid\]: warn: only 300 open files allowed" syslog.txt ||
    fail "no daemon.warning line: $(cat syslog.txt)"
bin/kvmbox info >/dev/null
# Nothing went to stderr while the socket took the lines.
[ ! -s daemon.log ] || fail "stderr was written: $(cat daemon.log)"

# SIGHUP: a configuration written by hand takes effect.
[ -z "$(bin/kvmbox config get core.https_address)" ] || fail "an https address already"
printf '{"config": {"core.https_address": "127.0.0.1:0"}, "local_socket_open": true}\n' >state/daemon.json
kill -HUP $pid
wait_for syslog.txt "^<30>kvmboxd\[$pid\]: info: received SIGHUP"
wait_for syslog.txt "^<30>kvmboxd\[$pid\]: info: listening on https://127\.0\.0\.1:[0-9]+$"
# At --log-level debug, what was read is said at debug severity: <31>.
wait_for syslog.txt "^<31>kvmboxd\[$pid\]: debug: read $PWD/state/trust.json and daemon.json again$"
[ "$(bin/kvmbox config get core.https_address)" = 127.0.0.1:0 ] || fail "the configuration was not re-read"
# And a trust store written by hand: a provisioning tool adds a client.
ln -sf "$K" bin/kvmbox-cert
bin/kvmbox-cert gen --key prov.key --cert prov.crt --cn provisioned >/dev/null
fp=$(bin/kvmbox-cert fingerprint prov.crt)
python3 - "$fp" <<'PY'
import json, sys
path = "state/trust.json"
try:
    store = json.load(open(path))
except FileNotFoundError:
    store = []
entries = store if isinstance(store, list) else store["certificates"]
entries.append({"fingerprint": sys.argv[1], "name": "provisioned", "type": "client",
                "certificate": open("prov.crt").read(), "role": "operator",
                "projects": [], "added": 0})
json.dump(store, open(path, "w"))
PY
! bin/kvmbox config trust list --format csv | grep -q "$fp" || fail "listed before the reload"
kill -HUP $pid
i=0; until bin/kvmbox config trust list --format csv | grep -q "$fp,"; do
    i=$((i + 1)); [ $i -lt 200 ] || fail "trust store not re-read: $(bin/kvmbox config trust list)"; sleep 0.05
done
# A file that does not parse: an error (<27>), the old one stays in force.
echo '{"config": ' >state/daemon.json
kill -HUP $pid
wait_for syslog.txt "^<27>kvmboxd\[$pid\]: error: reload failed, keeping what was in force: "
[ "$(bin/kvmbox config get core.https_address)" = 127.0.0.1:0 ] || fail "a bad file changed the configuration"

# The syslog daemon goes away: lines go to stderr instead, and the daemon
# goes on.
kill $sink; wait $sink 2>/dev/null || true
rm -f log.sock
kill -HUP $pid
i=0; until grep -q "^kvmboxd: info: received SIGHUP" daemon.log; do
    i=$((i + 1)); [ $i -lt 200 ] || fail "no stderr fallback: $(cat daemon.log)"; sleep 0.05
done
bin/kvmbox info >/dev/null
kill -TERM $pid; wait $pid || fail "kvmboxd exited non-zero: $(cat daemon.log)"

# --log-level warn: the info lines are not sent.
dgram_sink "$PWD/log2.sock" syslog2.txt
pids="$pids $!"
bin/kvmboxd $group_args --log syslog --syslog-socket "$PWD/log2.sock" --log-level warn \
    --state-dir "$PWD/state2" 2>daemon2.log &
pid=$!; pids="$pids $pid"
i=0; until bin/kvmbox --socket state2/unix.socket info >/dev/null 2>&1; do
    i=$((i + 1)); [ $i -lt 200 ] || fail "second daemon did not start: $(cat daemon2.log)"; sleep 0.05
done
kill -TERM $pid; wait $pid || fail "kvmboxd exited non-zero: $(cat daemon2.log)"
! grep -q "info:" syslog2.txt || fail "info lines at --log-level warn: $(cat syslog2.txt)"
