# /1.0/events with the real `lxc monitor` (LXD 5.0.2's client): an image
# import's operation is announced as it is created, as its progress moves
# and as it ends, in LXD's event shape, over the LXD-compatible socket and
# over TLS; a type that does not exist is refused. As root (the LXD socket
# is root's); skips (passes) otherwise.
. "$TESTLIB"
[ "$(id -u)" -eq 0 ] || { echo "SKIPPED: needs root"; exit 0; }
command -v lxc >/dev/null || fail "lxc (Debian's lxd-client) is not installed"

export KVMBOX_DIR=$PWD/state KVMBOX_CONF=$PWD/conf LXD_CONF=$PWD/lxc
unset HOME XDG_RUNTIME_DIR KVMBOX_SOCKET LXD_SOCKET || true
chmod 711 .
mkdir -p lxc bin; ln -sf "$K" bin/kvmboxd; ln -sf "$K" bin/kvmbox
bin/kvmboxd --group root --https 127.0.0.1:0 --log-level debug 2>daemon.log &
pid=$!
mon1= mon2=
trap 'kill $pid $mon1 $mon2 2>/dev/null || true' EXIT
port=$(https_port daemon.log)
bin/kvmbox config set core.trust_password events-pw
timeout 30 lxc remote add kb "https://127.0.0.1:$port" --accept-certificate --password events-pw >/dev/null 2>&1 ||
    fail "lxc remote add"

LXD_DIR=$PWD/state/lxd lxc monitor --type operation --format json >local.json 2>local.err &
mon1=$!
lxc monitor kb: --format json >tls.json 2>tls.err &
mon2=$!
# Both listeners are in place once the daemon logged their upgrades.
i=0; while [ "$(grep -c 'GET /1.0/events' daemon.log)" -lt 2 ]; do
    i=$((i + 1)); [ $i -lt 200 ] || fail "monitors did not connect: $(cat local.err tls.err)"; sleep 0.05
done

head -c 8M /dev/urandom >disk.img
bin/kvmbox image import "$PWD/disk.img" --alias ev >/dev/null || fail "image import"

# Each monitor saw the operation running, then succeeded, with the same id.
for f in local.json tls.json; do
    i=0; while ! grep -q '"status_code": *200' "$f"; do
        i=$((i + 1)); [ $i -lt 200 ] || fail "$f: no finished operation: $(cat "$f")"; sleep 0.05
    done
    contains "$(cat "$f")" '"type":"operation"'
    contains "$(cat "$f")" '"status_code":103'
    contains "$(cat "$f")" '"description":"Importing image"'
    contains "$(cat "$f")" '"project":"default"'
done
ids=$(grep -ho '"id": *"[^"]*"' local.json tls.json | sort -u | wc -l)
[ "$ids" -eq 1 ] || fail "expected one operation id, got $ids"

# An unknown event type is refused before the upgrade.
out=$(curl -s --unix-socket state/lxd/unix.socket 'http://lxd/1.0/events?type=nope')
contains "$out" '"error_code":400'
contains "$out" 'unknown event type'
echo ok
