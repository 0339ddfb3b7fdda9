#!/bin/sh
# The load part of `make soak`: tests/sh/test_load.sh at full size and for
# longer. Rounds of 100 clients × 1,000 requests (reads mixed with instance
# creation, config changes and deletion) on the Unix socket and over TLS,
# keep-alive and a fresh handshake per request, then 60 s of slowloris and
# idle connections against the TLS listener while root's requests on the
# Unix socket are timed. Fails on any error, on descriptors the daemon
# holds after a round that it did not before, or on a probe not answered.
# Prints each round's figures (requests/s, latency, fds, RSS).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
K=${KVMBOX_BIN:-$here/../build/kvmbox}
K=$(cd "$(dirname "$K")" && pwd)/$(basename "$K")
work=$(mktemp -d)
cd "$work"
LOADLIB=$here/load.lib
. "$LOADLIB"
fail() { echo "soak-load: FAIL: $*" >&2; exit 1; }
load_build --release || fail "cannot build the load generator"
load_daemon --max-connections 1024 || fail "daemon: $(cat daemon.log)"
trap 'load_end; cd /; rm -rf "$work"' EXIT

round() {
    name=$1; shift
    "$LG" --cert "$CERT" --key "$KEY" --kernel "$PWD/vmlinuz" --pid "$kpid" "$@" >"$name.txt" 2>"$name.err" ||
        fail "$name: $(cat "$name.err")"
    echo "$name: $(tr '\n' ' ' <"$name.txt")"
    [ "$(lg_get "$name.txt" errors)" = 0.000 ] || fail "$name: errors: $(cat "$name.err")"
    b=$(lg_get "$name.txt" fds_before); a=$(lg_get "$name.txt" fds_after)
    [ "${a%.*}" -le "${b%.*}" ] || fail "$name: daemon fds grew from $b to $a"
}
for i in 1 2 3; do
    round "unix-$i" --target unix:state/unix.socket --clients 100 --requests 1000 --mix mixed
    round "tcp-$i" --target "tcp:127.0.0.1:$port" --clients 100 --requests 1000 --mix mixed
    round "fresh-$i" --target "tcp:127.0.0.1:$port" --clients 50 --requests 40 --fresh --mix mixed
done
"$LG" --target unix:state/unix.socket --cert "$CERT" --key "$KEY" --slowloris 300 --idle 300 \
    --flood-target "tcp:127.0.0.1:$port" --flood-secs 60 >flood.txt 2>flood.err || fail "flood: $(cat flood.err)"
echo "flood: $(tr '\n' ' ' <flood.txt)"
[ "$(lg_get flood.txt probe_errors)" = 0.000 ] || fail "root unanswered during the flood: $(cat flood.err)"
[ "$(lg_get flood.txt probe_ok)" != 0.000 ] || fail "no probe answered"
[ "$(bin/kvmbox list --format json)" = "[]" ] || fail "instances left behind"
echo "soak-load: ok"
