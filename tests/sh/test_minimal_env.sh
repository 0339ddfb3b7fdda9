# The bare environment of an appliance or an initramfs: an empty
# environment (no HOME, TERM, TMPDIR, XDG_RUNTIME_DIR), a uid with no passwd
# entry, no controlling terminal (setsid, stdin /dev/null), and a read-only
# root with the state directory on a tmpfs, so /tmp and /run cannot be
# written. The daemon must start and answer `kvmbox info` and `kvmbox list`;
# what cannot work (a client with nowhere to keep its key, a state
# directory on the read-only root) must fail with one clear line, never a
# panic. The read-only root is this test's own mount namespace (unshare -m):
# the host's mounts are not touched, and the namespace's mounts go with it.
. "$TESTLIB"
[ "$(id -u)" -eq 0 ] || { echo "needs root (setpriv, unshare): skipped"; exit 0; }
command -v setpriv >/dev/null && command -v unshare >/dev/null ||
    { echo "setpriv or unshare not installed: skipped"; exit 0; }

uid=$(( 40000 + ($$ + 7919) % 20000 ))
while getent passwd $uid >/dev/null || getent group $uid >/dev/null; do uid=$((uid + 1)); done
chmod 755 "$PWD"
mkdir w
cat >inner.sh <<'INNER'
. "$TESTLIB"
uid=$1 w=$PWD/w
mount -t tmpfs -o mode=755 tmpfs "$w"
mkdir -m 711 "$w/state" && mkdir -m 700 "$w/conf" && mkdir "$w/bin"
chown $uid:$uid "$w/state" "$w/conf"
for a in kvmbox kvmboxd kvmbox-cert kvmbox-aa-helper; do ln -s "$K" "$w/bin/$a"; done
mount -o remount,bind,ro /
touch /tmp/kvmbox-probe 2>/dev/null && fail "/tmp is still writable"
touch /run/kvmbox-probe 2>/dev/null && fail "/run is still writable"

# bare CMD…: as the passwd-less uid, empty environment, no terminal.
bare() { env -i setsid -w setpriv --reuid $uid --regid $uid --clear-groups -- "$@" </dev/null; }
# fails_clearly NEEDLE CMD…: exit 1, one line on stderr naming NEEDLE.
fails_clearly() {
    _n=$1; shift
    set +e; "$@" >"$w/out" 2>"$w/err"; _rc=$?; set -e
    [ $_rc -eq 1 ] || fail "exit $_rc, not 1: $* ($(cat "$w/err"))"
    one_line "$(cat "$w/err")"
    contains "$(cat "$w/err")" "$_n"
    ! grep -q panicked "$w/err" || fail "a panic: $(cat "$w/err")"
}

bare "$w/bin/kvmboxd" --state-dir "$w/state" >"$w/daemon.log" 2>&1 &
pid=$!
# setsid forks the daemon off: it is found by its command line, and
# `setsid -w` passes on its exit status.
daemon() {
    for _c in $(grep -lasF "$w/state" /proc/[0-9]*/cmdline); do
        _p=${_c#/proc/}; _p=${_p%/cmdline}
        [ "$(head -c 256 "$_c" | tr '\0' '\n' | head -n 1)" != "$w/bin/kvmboxd" ] || echo "$_p"
    done
}
trap 'kill $pid $(daemon) 2>/dev/null || true' EXIT
i=0; until [ -S "$w/state/unix.socket" ]; do
    i=$((i + 1)); [ $i -lt 200 ] || fail "no socket: $(cat "$w/daemon.log")"; sleep 0.05
done
dpid=$(daemon)
[ -n "$dpid" ] && [ "$dpid" -eq "$dpid" ] 2>/dev/null || fail "no daemon pid ('$dpid')"
! [ -e /proc/$dpid/fd/0 ] || [ "$(readlink /proc/$dpid/fd/0)" = /dev/null ] || fail "stdin is not /dev/null"
[ "$(ps -o tty= -p $dpid | tr -d ' ')" = "?" ] || fail "the daemon has a terminal"
tr '\0' '\n' </proc/$dpid/environ | grep -q . && fail "the daemon's environment is not empty"
export KVMBOX_SOCKET=$w/state/unix.socket
# The client keeps its key pair under KVMBOX_CONF: it answers.
out=$(bare env KVMBOX_CONF="$w/conf" KVMBOX_SOCKET="$KVMBOX_SOCKET" "$w/bin/kvmbox" info)
contains "$out" "trusted"
[ "$(bare env KVMBOX_CONF="$w/conf" KVMBOX_SOCKET="$KVMBOX_SOCKET" "$w/bin/kvmbox" list --format csv)" = "name,state,type" ] ||
    fail "list is not empty"
# Without it, its last resort, /tmp/kvmbox-client-UID, is on the read-only root.
fails_clearly "/tmp/kvmbox-client-$uid" bare env KVMBOX_SOCKET="$KVMBOX_SOCKET" "$w/bin/kvmbox" info
# root's, /run/kvmbox-client-0, likewise.
fails_clearly "/run/kvmbox-client-0" env -i KVMBOX_SOCKET="$KVMBOX_SOCKET" setsid -w "$w/bin/kvmbox" list </dev/null
# A state directory on the read-only root.
fails_clearly "cannot create state directory /var/lib/kvmbox-ro-test" \
    bare "$w/bin/kvmboxd" --state-dir /var/lib/kvmbox-ro-test
# The other applets, in the same bare environment.
bare "$w/bin/kvmbox-cert" gen --key "$w/conf/k.pem" --cert "$w/conf/c.pem" --cn bare >/dev/null
[ "$(bare "$w/bin/kvmbox-cert" fingerprint "$w/conf/c.pem" | wc -c)" -eq 65 ] || fail "no fingerprint"
fails_clearly "Read-only file system" bare "$w/bin/kvmbox-cert" gen --key /k.pem --cert /c.pem --cn x
bare "$w/bin/kvmbox-aa-helper" --help >/dev/null
bare "$w/bin/kvmbox" --list-applets >/dev/null
kill -TERM $dpid; wait $pid || fail "kvmboxd exited non-zero: $(cat "$w/daemon.log")"
! grep -q panicked "$w/daemon.log" || fail "a panic: $(cat "$w/daemon.log")"
INNER
unshare -m --propagation private sh inner.sh $uid
# Nothing of the namespace is left: its tmpfs went with it.
[ -z "$(ls -A w)" ] || fail "the namespace's tmpfs is still mounted here"
! findmnt -rn "$PWD/w" >/dev/null || fail "a mount is left at $PWD/w"
