# Load, functional checks only (no timing): 100 clients × 100 requests on
# the Unix socket and over TLS, reads mixed with instance creation, config
# changes and deletion, all answered without an error; the daemon holds no
# more descriptors afterwards than before, nor a thread per request it
# served at once; and while slowloris and idle
# connections flood the TLS listener, root still gets answers on the Unix
# socket. bench/load.sh measures the same at full size.
. "$TESTLIB"
LOADLIB=$REPO/bench/load.lib
. "$LOADLIB"
load_build || fail "cannot build the load generator"
# Short timeouts, so that the flood's connections are cut and replaced
# while it runs; enough slots for 100 clients from one address (a peer may
# hold a quarter of them).
load_daemon --timeout 3 --handshake-timeout 2 --max-connections 512 || fail "daemon: $(cat daemon.log)"

# run NAME LOADGEN-ARGS…: one load round, checked.
run() {
    name=$1; shift
    "$LG" --cert "$CERT" --key "$KEY" --kernel "$PWD/vmlinuz" --pid "$kpid" "$@" >"$name.txt" 2>"$name.err" ||
        fail "$name: loadgen failed: $(cat "$name.err")"
    sed "s/^/$name: /" "$name.txt"
    [ "$(lg_get "$name.txt" errors)" = 0.000 ] || fail "$name: errors: $(cat "$name.txt" "$name.err")"
    [ "$(lg_get "$name.txt" requests)" != 0.000 ] || fail "$name: no requests"
    before=$(lg_get "$name.txt" fds_before); after=$(lg_get "$name.txt" fds_after)
    [ "${after%.*}" -le "${before%.*}" ] || fail "$name: daemon fds grew from $before to $after"
}
run unix --target unix:state/unix.socket --clients 100 --requests 100 --mix mixed
# The file work of 100 clients at once left at most the blocking pool's
# 16 threads behind (and their stacks), not one per concurrent request.
threads=$(lg_get unix.txt threads_after)
[ "${threads%.*}" -le 24 ] || fail "the daemon kept $threads threads after the load"
run tcp --target "tcp:127.0.0.1:$port" --clients 100 --requests 100 --mix mixed
run fresh --target "tcp:127.0.0.1:$port" --clients 20 --requests 10 --fresh
run lxd --target lxd:state/lxd/unix.socket --clients 20 --requests 50

# The flood: root's probe must be answered every time, within 10 s each.
"$LG" --target unix:state/unix.socket --cert "$CERT" --key "$KEY" \
    --slowloris 60 --idle 60 --flood-target "tcp:127.0.0.1:$port" --flood-secs 6 >flood.txt 2>flood.err ||
    fail "flood: loadgen failed: $(cat flood.err)"
sed 's/^/flood: /' flood.txt
[ "$(lg_get flood.txt probe_errors)" = 0.000 ] || fail "root went unanswered during the flood: $(cat flood.txt flood.err)"
[ "$(lg_get flood.txt probe_ok)" != 0.000 ] || fail "no probe answered"
# The daemon cut the flood's connections (timeouts) and is still whole.
bin/kvmbox info >/dev/null || fail "daemon gone after the flood: $(cat daemon.log)"
[ "$(bin/kvmbox list --format json)" = "[]" ] || fail "instances left behind: $(bin/kvmbox list)"
