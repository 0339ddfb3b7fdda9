# The LXD-compatible socket: plain HTTP that LXD's own tools speak (the real
# `lxc` 5.0 with LXD_DIR, and curl), open to root and the admin group only.
# The mode keeps others out, and the daemon checks the group again, so a
# loosened mode lets no one in. As root (per-uid checks need it); skips
# (passes) otherwise, or if lxc or curl is not installed.
. "$TESTLIB"
[ "$(id -u)" -eq 0 ] || { echo "SKIPPED: needs root"; exit 0; }
command -v lxc >/dev/null || fail "lxc (Debian's lxd-client) is not installed"
command -v curl >/dev/null || fail "curl is not installed"

export KVMBOX_DIR=$PWD/state KVMBOX_CONF=$PWD/conf LXD_CONF=$PWD/lxc
unset HOME XDG_RUNTIME_DIR KVMBOX_SOCKET LXD_SOCKET || true
chmod 711 .
mkdir -p lxc bin; ln -sf "$K" bin/kvmboxd
bin/kvmboxd --group root 2>daemon.log &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
sock=state/lxd/unix.socket
i=0; while [ ! -S "$sock" ] || [ ! -S state/unix.socket ]; do
    i=$((i + 1)); [ $i -lt 200 ] || fail "no socket: $(cat daemon.log)"; sleep 0.05
done
[ "$(stat -c '%a %U %G' "$sock")" = "660 root root" ] || fail "mode: $(stat -c '%a %U %G' "$sock")"

# as UID GROUPS CMD…: runs CMD as UID with exactly these supplementary groups.
as() { u=$1 g=$2; shift 2; setpriv --reuid "$u" --regid "$u" --groups "$g" -- "$@"; }
get() { curl -s --unix-socket "$1" "http://lxd$2"; }

# Root, and a member of the admin group, administer the server.
out=$(get "$sock" /1.0)
contains "$out" '"auth":"trusted"'
contains "$out" '"server":"kvmbox"'
out=$(as 65534 0 curl -s --unix-socket "$sock" http://lxd/1.0/certificates)
contains "$out" '"status_code":200'

# Another user cannot open the socket at all…
out=$(as 65534 65534 curl -s --unix-socket "$sock" http://lxd/1.0 2>&1) && fail "nobody connected: $out"
# …and with the mode loosened by mistake, is still refused by the daemon.
chmod 666 "$sock"
out=$(as 65534 65534 curl -s --unix-socket "$sock" http://lxd/1.0/instances)
contains "$out" '"error_code":403'
contains "$out" "only root and the admin group may use this socket"
out=$(as 65534 65534 curl -s --unix-socket "$sock" http://lxd/1.0)
contains "$out" '"auth":"untrusted"'
chmod 660 "$sock"

# The real lxc, in its local mode (no remote, no certificate).
out=$(LXD_DIR=$PWD/state/lxd timeout 30 lxc info 2>&1) || fail "lxc info: $out"
contains "$out" "server: kvmbox"
out=$(LXD_DIR=$PWD/state/lxd timeout 30 lxc list --format csv 2>&1) || fail "lxc list: $out"
[ -z "$out" ] || fail "lxc list: $out"

# Stopped, the daemon takes its sockets away; --no-lxd-socket serves none.
kill $pid; wait $pid 2>/dev/null || true
[ ! -e "$sock" ] || fail "socket left behind"
bin/kvmboxd --group root --no-lxd-socket 2>daemon2.log &
pid=$!
i=0; while [ ! -S state/unix.socket ]; do i=$((i + 1)); [ $i -lt 200 ] || fail "no socket: $(cat daemon2.log)"; sleep 0.05; done
[ ! -e "$sock" ] || fail "--no-lxd-socket still made $sock"
expect_fail bin/kvmboxd --no-lxd-socket --lxd-socket x
echo ok
