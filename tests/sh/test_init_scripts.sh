# The runit service and the OpenRC script as `make install` writes them,
# run on this host: neither init system is here, so each is run the way
# its supervisor would run it. The runit `run` script is executed in its
# service directory, as runsv does, and signalled as `sv hup` / `sv down`
# would; the OpenRC script is sourced and its command started with
# busybox's start-stop-daemon as openrc-run would (command, command_args,
# pidfile, background), then its own reload() sends SIGHUP. Each must start
# a daemon that answers `kvmbox info` and stops cleanly.
. "$TESTLIB"

export KVMBOX_DIR=$PWD/state KVMBOX_CONF=$PWD/conf
unset HOME XDG_RUNTIME_DIR KVMBOX_SOCKET NOTIFY_SOCKET || true
group_args=""
[ "$(id -u)" -ne 0 ] || group_args="--group root"
command -v busybox >/dev/null || fail "no busybox (scripts/deps.sh installs busybox-static)"

# Installed under a prefix that is this directory, seen through DESTDIR: the
# scripts name PREFIX/sbin/kvmboxd, a link leads there.
make -s -C "$REPO" install DESTDIR="$PWD/root" PREFIX="$PWD/prefix" SYSCONFDIR=/etc >/dev/null
ln -s "$PWD/root$PWD/prefix" prefix
[ -x prefix/sbin/kvmboxd ] || fail "no installed kvmboxd"
sv=root/etc/sv/kvmboxd
for f in "$sv/run" "$sv/log/run" root/etc/init.d/kvmboxd; do
    [ -x "$f" ] || fail "$f is not executable"
    sh -n "$f" || fail "$f is not valid sh"
    ! grep -q @SBINDIR@ "$f" || fail "$f still has @SBINDIR@"
done
grep -qx "exec $PWD/prefix/sbin/kvmboxd \${KVMBOXD_ARGS:-}" "$sv/run" || fail "run names $(grep exec "$sv/run")"
pids=""
svc=kvmboxd-test-$$
trap 'kill $pids 2>/dev/null || true; rm -f "/run/$svc.pid"' EXIT

wait_info() {
    _i=0; until prefix/bin/kvmbox info >/dev/null 2>&1; do
        _i=$((_i + 1)); [ $_i -lt 200 ] || fail "$1 did not start: $(cat "$2")"; sleep 0.05
    done
}

# runit: options from ./conf, the log on stdout (exec 2>&1) for log/run.
echo "KVMBOXD_ARGS='$group_args'" >"$sv/conf"
(cd "$sv" && exec ./run) >runit.log 2>runit.err &
pid=$!; pids="$pids $pid"
wait_info "the runit service" runit.log
[ "$(readlink /proc/$pid/exe)" = "$PWD/root$PWD/prefix/sbin/kvmboxd" ] || fail "run did not exec the daemon"
kill -HUP $pid  # sv hup
i=0; until grep -q "received SIGHUP" runit.log; do
    i=$((i + 1)); [ $i -lt 200 ] || fail "no SIGHUP in the log: $(cat runit.log)"; sleep 0.05
done
kill -TERM $pid  # sv down
wait $pid || fail "the runit service exited non-zero: $(cat runit.log)"
[ ! -s runit.err ] || fail "stderr was not sent to the log: $(cat runit.err)"

# OpenRC: KVMBOXD_ARGS as /etc/conf.d/kvmboxd would set it, the log to a
# syslog socket of this test's.
dgram_sink "$PWD/log.sock" syslog.txt
pids="$pids $!"
(
    RC_SVCNAME=$svc
    KVMBOXD_ARGS="$group_args --log syslog --syslog-socket $PWD/log.sock"
    ebegin() { :; }
    eend() { return "$1"; }
    . root/etc/init.d/kvmboxd
    type depend >/dev/null && type reload >/dev/null || fail "no depend or reload"
    [ "$command_background" = yes ] || fail "command_background is not yes"
    [ "$pidfile" = "/run/$svc.pid" ] || fail "pidfile $pidfile"
    # openrc-run's start for command_background=yes.
    # shellcheck disable=SC2086
    busybox start-stop-daemon -S -b -m -p "$pidfile" -x "$command" -- $command_args
    wait_info "the OpenRC service" syslog.txt
    # reload() calls OpenRC's `start-stop-daemon --signal SIG --pidfile F`;
    # busybox's says the same as -K -s SIG -p F.
    mkdir ssd
    cat >ssd/start-stop-daemon <<'SSD'
#!/bin/sh
[ "$1 $3" = "--signal --pidfile" ] || { echo "unexpected: start-stop-daemon $*" >&2; exit 1; }
exec busybox start-stop-daemon -K -s "$2" -p "$4"
SSD
    chmod 755 ssd/start-stop-daemon
    PATH=$PWD/ssd:$PATH reload || fail "reload failed"
    wait_for syslog.txt "info: received SIGHUP"
    busybox start-stop-daemon -K -s TERM -p "$pidfile"
    wait_for syslog.txt "info: received SIGTERM, shutting down"
    i=0; while [ -d "/proc/$(cat "$pidfile")" ]; do
        i=$((i + 1)); [ $i -lt 200 ] || fail "the OpenRC service did not stop"; sleep 0.05
    done
    rm -f "$pidfile"
)
