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

# Lifecycle events: `lxc monitor --type=lifecycle` sees what is done to an
# instance (created, updated, deleted), with its path as the source, and
# none of the operations.
lxc monitor kb: --type=lifecycle --format json >life.json 2>life.err &
mon1=$!
i=0; while [ "$(grep -c 'GET /1.0/events' daemon.log)" -lt 3 ]; do
    i=$((i + 1)); [ $i -lt 200 ] || fail "lifecycle monitor did not connect: $(cat life.err)"; sleep 0.05
done
bin/kvmbox init ev lc1 >/dev/null || fail "init"
bin/kvmbox config set lc1 user.note hi || fail "config set"
bin/kvmbox delete lc1 || fail "delete"
i=0; while ! grep -q 'instance-deleted' life.json; do
    i=$((i + 1)); [ $i -lt 200 ] || fail "no instance-deleted event: $(cat life.json life.err)"; sleep 0.05
done
life=$(tr -d ' \n' <life.json)
contains "$life" '"type":"lifecycle"'
for a in created updated deleted; do contains "$life" "\"action\":\"instance-$a\""; done
contains "$life" '"source":"/1.0/instances/lc1"'
! grep -q '"type": *"operation"' life.json || fail "an operation event reached a lifecycle monitor"
# The operation monitor, conversely, saw no lifecycle event.
! grep -q '"type": *"lifecycle"' local.json || fail "a lifecycle event reached an operation monitor"

# An unknown event type is refused before the upgrade.
out=$(curl -s --unix-socket state/lxd/unix.socket 'http://lxd/1.0/events?type=nope')
contains "$out" '"error_code":400'
contains "$out" 'unknown event type'
echo ok
