# The shipped binary as installed: kvmboxd and kvmbox through their
# symlinks, KVMBOX_DIR only, no HOME, clean shutdown on SIGTERM.
. "$TESTLIB"

export KVMBOX_DIR=$PWD/state KVMBOX_CONF=$PWD/conf
unset HOME XDG_RUNTIME_DIR KVMBOX_SOCKET || true
group_args=""
[ "$(id -u)" -ne 0 ] || group_args="--group root"
# Not through the `applet` function: $! must be the daemon itself.
mkdir -p bin; ln -sf "$K" bin/kvmboxd
bin/kvmboxd $group_args 2>daemon.log &
pid=$!
# A failing check must not leave the daemon behind.
trap 'kill $pid 2>/dev/null || true' EXIT
i=0; while [ ! -S state/unix.socket ]; do i=$((i + 1)); [ $i -lt 200 ] || fail "no socket: $(cat daemon.log)"; sleep 0.05; done

out=$(applet kvmbox info)
contains "$out" "trusted"
contains "$(applet kvmbox info --format json)" '"certificate_fingerprint"'
contains "$(applet kvmbox info --format csv)" "key,value"
[ "$(applet kvmbox list --format json)" = "[]" ] || fail "list is not empty"
[ -s conf/client.key ] && [ -s conf/client.crt ] || fail "no client key pair"
[ "$(stat -c %a conf/client.key)" = 600 ] || fail "client key not 0600"

# No HOME and no KVMBOX_CONF: the key pair goes to $XDG_RUNTIME_DIR/kvmbox.
mkdir -m 700 xdg
(unset KVMBOX_CONF; XDG_RUNTIME_DIR=$PWD/xdg applet kvmbox info >/dev/null)
[ -s xdg/kvmbox/client.crt ] || fail "no key pair under XDG_RUNTIME_DIR"
[ "$(stat -c %a xdg/kvmbox)" = 700 ] || fail "client config dir not 0700"

# Bad command lines: exit code 2, one line.
set +e; applet kvmbox info --format xml >/dev/null 2>err.txt; rc=$?; set -e
[ "$rc" -eq 2 ] || fail "bad --format exit code $rc"
set +e; applet kvmbox authenticate a --passphrase-file x >/dev/null 2>err.txt; rc=$?; set -e
[ "$rc" -eq 2 ] || fail "conflicting passphrase sources exit code $rc"
one_line "$(cat err.txt)"
# Refused calls: exit code 1, one line.
expect_fail applet kvmbox config set no.such.key 1
contains "$ERR" "unknown configuration key"
one_line "$ERR"
expect_fail applet kvmbox --socket "$PWD/nothing" info
contains "$ERR" "is kvmboxd running"
one_line "$ERR"

# A secret set as `-` comes from stdin, so it never appears in argv; it is
# stored hashed and shown only as set.
echo stdin-secret-42 | applet kvmbox config set local.passphrase -
[ "$(applet kvmbox config get local.passphrase)" = true ] || fail "passphrase from stdin not set"
if grep -rqs stdin-secret-42 state; then fail "clear passphrase in the state dir"; fi
expect_fail applet kvmbox config set local.passphrase - </dev/null
contains "$ERR" "an empty value unsets"
# The stored value is the one read: a member of the admin group opens the
# socket, then another uid authenticates with it (and not with "-").
if [ "$(id -u)" -eq 0 ] && command -v setpriv >/dev/null; then
    chmod 755 "$PWD" bin
    as() { u=$1; shift; mkdir -p "c$u"; chown "$u" "c$u"; env KVMBOX_CONF="$PWD/c$u" setpriv --reuid "$u" --regid "$u" "$@"; }
    as 52341 --groups 0 -- bin/kvmbox info >/dev/null 2>&1 || true
    (cd bin && ln -sf "$K" kvmbox)
    as 52341 --groups 0 -- bin/kvmbox info >/dev/null || fail "admin-group member not trusted"
    if as 52342 --clear-groups -- bin/kvmbox authenticate - </dev/null >/dev/null 2>&1; then fail "authenticated with '-'"; fi
    echo stdin-secret-42 | as 52342 --clear-groups -- bin/kvmbox authenticate >/dev/null || fail "the stdin passphrase does not authenticate"
fi

kill -TERM $pid
wait $pid || fail "kvmboxd exited non-zero on SIGTERM: $(cat daemon.log)"
[ ! -e state/unix.socket ] || fail "socket left behind"

# The open-file limit: a low soft limit is raised to the hard one, and a
# hard limit too low for the connection slots is said in the log.
(ulimit -Sn 100 && ulimit -Hn 400 && exec bin/kvmboxd $group_args --state-dir "$PWD/lim" 2>lim.log) &
pid=$!
i=0; while [ ! -S lim/unix.socket ]; do i=$((i + 1)); [ $i -lt 200 ] || fail "no socket: $(cat lim.log)"; sleep 0.05; done
soft=$(awk '/^Max open files/ { print $4 }' "/proc/$pid/limits")
[ "$soft" = 400 ] || fail "open-file soft limit $soft, not raised to 400"
contains "$(cat lim.log)" "only 400 open files allowed"
kill -TERM $pid
wait $pid || fail "kvmboxd exited non-zero on SIGTERM: $(cat lim.log)"

# A state directory whose parents do not exist yet: the daemon makes them
# 0755 (its own umask is 077), so that a VM's uid can pass through them.
bin/kvmboxd $group_args --state-dir "$PWD/fresh/var/lib/kvmbox" 2>fresh.log &
pid=$!
i=0; while [ ! -S fresh/var/lib/kvmbox/unix.socket ]; do i=$((i + 1)); [ $i -lt 200 ] || fail "no socket: $(cat fresh.log)"; sleep 0.05; done
for d in fresh fresh/var fresh/var/lib; do
    [ "$(stat -c %a "$d")" = 755 ] || fail "$d was made $(stat -c %a "$d"), not 755"
done
[ "$(stat -c %a fresh/var/lib/kvmbox)" = 711 ] || fail "the state dir is not 711"
kill -TERM $pid
wait $pid || fail "kvmboxd exited non-zero on SIGTERM: $(cat fresh.log)"
