# Getting into guests with the real `lxc` 5.0 over TLS and with kvmbox on
# its Unix socket: exec (output, exit status, standard input, stdout and
# stderr apart, signals, record-output), file push and pull (directories,
# symlinks, append, delete), the interactive console (the login prompt,
# Ctrl-a q, the window size), and the hostile cases: an auditor refused exec, a
# guest without the agent answered with the fix at once, a console viewer
# that never reads stalling nobody, the agent killed mid-exec, no daemon
# fd left behind by 50 console attach/detach cycles; and a lifecycle event
# when a QEMU exits by itself. A busybox guest (no agent) is checked while
# the one Debian guest (qemu-tests/debian/image.sh) boots under TCG.
. "$TESTLIB"

[ "$(id -u)" -eq 0 ] || { echo "SKIPPED: per-VM uids and the image build need root"; exit 0; }
command -v qemu-system-x86_64 >/dev/null || { echo "SKIPPED: no qemu-system-x86_64"; exit 0; }
command -v lxc >/dev/null || fail "lxc (Debian's lxd-client) is not installed"
command -v script >/dev/null || fail "script (util-linux) is not installed"
img=$(sh "$REPO/qemu-tests/debian/image.sh" | tail -n 1)
[ -s "$img/root.qcow2" ] || fail "no Debian image in '$img'"

export KVMBOX_DIR=$PWD/state KVMBOX_CONF=$PWD/conf LXD_CONF=$PWD/lxc
unset HOME XDG_RUNTIME_DIR KVMBOX_SOCKET || true
chmod 711 .
guest_assets
mkdir -p bin lxc lxc-aud; ln -sf "$K" bin/kvmboxd; ln -sf "$K" bin/kvmbox
kv() { bin/kvmbox "$@"; }
bin/kvmboxd --group root --https 127.0.0.1:0 >daemon.log 2>&1 &
dpid=$!
bg=
cleanup() {
    rc=$?
    # A failure shows what the daemon made of it.
    [ "$rc" -eq 0 ] || tail -n 25 daemon.log >&2
    kill -9 "$dpid" $bg 2>/dev/null || true
    for p in $(grep -lasF "$PWD/state/instances/" /proc/[0-9]*/cmdline | cut -d/ -f3); do
        kill -9 "$p" 2>/dev/null || true
    done
}
trap cleanup EXIT
port=$(https_port daemon.log)
kv config set security.apparmor_profile_dir "$PWD/aa"
kv config set core.trust_password guest-pw
timeout 60 lxc remote add kb "https://127.0.0.1:$port" --accept-certificate --password guest-pw >/dev/null 2>&1 ||
    fail "lxc remote add"
token=$(kv config trust add --name aud --role auditor 2>/dev/null)
LXD_CONF=$PWD/lxc-aud timeout 60 lxc remote add kba "$token" >/dev/null 2>&1 || fail "lxc remote add (auditor)"

# Scheduled snapshots, checked at the end: a stopped instance snapshotted
# every minute by the daemon, each snapshot kept for a minute.
kv init sched --kernel "$kernel" --initrd "$initrd" --memory 64MiB >/dev/null
for kv_ in "snapshots.schedule=* * * * *" snapshots.schedule.stopped=true snapshots.expiry=1M \
    "snapshots.pattern=auto-%d"; do
    kv config set sched "${kv_%%=*}" "${kv_#*=}"
done
expect_fail kv config set sched snapshots.schedule "61 * * * *"
contains "$ERR" "expected a number from 0 to 59"
expect_fail kv config set sched snapshots.expiry "1 day"
contains "$ERR" "invalid snapshots.expiry"

# The Debian guest boots while the busybox one is checked.
kv image import "$img/root.qcow2" --alias debian >/dev/null
t0=$(date +%s)
kv launch debian deb --kernel "$img/vmlinuz" --initrd "$img/initrd.img" --cmdline "$(cat "$img/cmdline")" \
    --memory 1GiB --cpus 2 >/dev/null

# --- busybox: no guest agent --------------------------------------------
kv launch bb --kernel "$kernel" --initrd "$initrd" --cmdline "console=ttyS0 quiet" --memory 256MiB >/dev/null
i=0
until kv console bb --show-log 2>/dev/null | grep -q KVMBOX-GUEST-READY; do
    i=$((i + 1)); [ $i -lt 600 ] || fail "busybox guest not ready: $(kv console bb --show-log | tail -5)"; sleep 0.1
done
# The log is raw text, as LXD serves it.
curl -s -D head.txt -o log.txt --unix-socket state/lxd/unix.socket http://lxd/1.0/instances/bb/console
contains "$(cat head.txt)" "Content-Type: application/octet-stream"
grep -q KVMBOX-GUEST-READY log.txt || fail "raw log: $(head -c 300 log.txt)"
# No agent: the fix is named, within the agent's time limit, not a hang.
t=$(date +%s)
expect_fail timeout 60 bin/kvmbox exec bb -- true
contains "$ERR" "install and start qemu-guest-agent"
[ $(($(date +%s) - t)) -le 30 ] || fail "kvmbox exec took $(($(date +%s) - t)) s to fail"
expect_fail timeout 60 lxc exec kb:bb -- true </dev/null
contains "$ERR" "qemu-guest-agent"
# The log can be cleared.
kv console bb --show-log | grep -q . || fail "empty log before clearing"
curl -sf -X DELETE --unix-socket state/lxd/unix.socket http://lxd/1.0/instances/bb/console >/dev/null
[ -z "$(kv console bb --show-log)" ] || fail "the log was not cleared"
# 50 console attach/detach cycles leave no fd behind in the daemon, and its
# memory does not grow with them (after 10 cycles that warm its allocator).
fds() { ls /proc/"$dpid"/fd | wc -l; }
rss() { awk '/^VmRSS/ { print $2 }' /proc/"$dpid"/status; }
cycles() {
    n=0
    while [ $n -lt "$1" ]; do
        printf '\001q' | timeout 30 bin/kvmbox console bb >/dev/null || fail "console cycle $n"
        n=$((n + 1))
    done
}
cycles 10
sleep 1
before=$(fds) rss0=$(rss)
cycles 50
i=0
while [ "$(fds)" -ne "$before" ]; do
    i=$((i + 1)); [ $i -lt 100 ] || fail "daemon fds: $before before 50 console cycles, $(fds) after"; sleep 0.1
done
rss1=$(rss)
echo "daemon fds before and after 50 console attach/detach cycles: $before, $(fds); RSS $rss0 KiB, $rss1 KiB"
[ "$rss1" -le $((rss0 + 512)) ] || fail "the daemon grew from $rss0 to $rss1 KiB over 50 console cycles"
# A QEMU that exits by itself is announced as LXD does, once noticed.
lxc monitor kb: --type=lifecycle --format json >life.json 2>life.err &
bg=$!
sleep 2
qpid=$(kv info bb --format json | sed -n 's/.*"pid": \([0-9]*\).*/\1/p' | head -n 1)
[ -n "$qpid" ] || fail "no QEMU pid: $(kv info bb)"
kill -9 "$qpid"
i=0
until tr -d ' \n' <life.json | grep -q '"action":"instance-stopped"'; do
    i=$((i + 1)); [ $i -lt 100 ] || fail "no instance-stopped event: $(cat life.json life.err)"; sleep 0.1
done
life=$(tr -d ' \n' <life.json)
contains "$life" '"reason":"exited"'
contains "$life" '"source":"/1.0/instances/bb"'
kill $bg; wait $bg 2>/dev/null || true; bg=
kv delete bb --force

# --- Debian: exec, files, console ----------------------------------------
console() { kv console deb --show-log | sed 's/\x1b\[[0-9;]*m//g' | tr -d '\r'; }
deadline=$((t0 + 420))
while ! console | grep -aq "^debian login:"; do
    [ "$(date +%s)" -lt "$deadline" ] || fail "no login prompt: $(console | tail -15)"
    sleep 2
done
echo "launch → login prompt: $(($(date +%s) - t0)) s"
until kv exec deb -n -- true 2>/dev/null; do
    [ "$(date +%s)" -lt "$deadline" ] || fail "the guest agent does not answer: $(kv exec deb -- true 2>&1)"
    sleep 2
done

# lxc exec: Debian's os-release and exit 0, an exit status, standard input.
out=$(timeout 120 lxc exec kb:deb -- cat /etc/os-release </dev/null) || fail "lxc exec cat: $out"
contains "$out" 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"'
rc=0; timeout 120 lxc exec kb:deb -- sh -c 'exit 7' </dev/null || rc=$?
[ "$rc" -eq 7 ] || fail "lxc exec 'exit 7' exited $rc"
[ "$(echo piped-in | timeout 120 lxc exec kb:deb -- cat)" = "piped-in" ] || fail "lxc exec did not pass stdin"
# An auditor never gets in.
expect_fail env LXD_CONF=$PWD/lxc-aud timeout 60 lxc exec kba:deb -- true
contains "$ERR" "not authorized"
# kvmbox exec: the same, with stdout and stderr apart, the cwd and env.
out=$(kv exec deb -n -- cat /etc/os-release) || fail "kvmbox exec cat"
contains "$out" 'ID=debian'
rc=0; kv exec deb -n -- sh -c 'exit 7' || rc=$?
[ "$rc" -eq 7 ] || fail "kvmbox exec 'exit 7' exited $rc"
kv exec deb --cwd /etc --env GREETING=hi -n -- sh -c 'echo "$GREETING from $(pwd)"; echo oops >&2' >o.txt 2>e.txt
[ "$(cat o.txt)" = "hi from /etc" ] || fail "stdout: $(cat o.txt)"
[ "$(cat e.txt)" = "oops" ] || fail "stderr: $(cat e.txt)"
head -c 300000 /dev/urandom >in.bin
kv exec deb -- sha256sum <in.bin >sum.txt
[ "$(cut -d' ' -f1 sum.txt)" = "$(sha256sum <in.bin | cut -d' ' -f1)" ] || fail "stdin did not arrive whole"

# Files: lxc and kvmbox push and pull, with the mode.
head -c 100000 /dev/urandom >f.bin; chmod 640 f.bin
timeout 120 lxc file push f.bin kb:deb/root/f.bin || fail "lxc file push"
[ "$(kv exec deb -n -- stat -c %a /root/f.bin)" = "640" ] || fail "mode not applied"
timeout 120 lxc file pull kb:deb/root/f.bin back.bin || fail "lxc file pull"
cmp f.bin back.bin || fail "lxc file round trip differs"
kv file push --mode 600 f.bin deb/tmp/k.bin
[ "$(kv exec deb -n -- stat -c %a /tmp/k.bin)" = "600" ] || fail "kvmbox mode not applied"
kv file pull deb/tmp/k.bin kback.bin
cmp f.bin kback.bin || fail "kvmbox file round trip differs"
expect_fail kv file pull deb/nonexistent/x out.bin
out=$(curl -s --unix-socket state/lxd/unix.socket 'http://lxd/1.0/instances/deb/files?path=')
contains "$out" '"error_code":400'
head -c 5000000 /dev/urandom >big.bin
expect_fail kv file push big.bin deb/tmp/big.bin
contains "$ERR" "too large"

# Directories, symlinks, appending and removing: lxc file push -r and -p,
# pull -r and delete, and the owner, mode and type LXD's headers tell.
mkdir -p tree/sub; echo one >tree/a.txt; echo two >tree/sub/b.txt; ln -s a.txt tree/link
timeout 120 lxc file push -r tree kb:deb/root/ || fail "lxc file push -r"
[ "$(kv exec deb -n -- readlink /root/tree/link)" = "a.txt" ] || fail "the symlink was not pushed as one"
[ "$(kv exec deb -n -- cat /root/tree/sub/b.txt)" = "two" ] || fail "a nested file was not pushed"
timeout 120 lxc file push -p f.bin kb:deb/root/new/deep/f.bin || fail "lxc file push -p"
[ "$(kv exec deb -n -- sha256sum /root/new/deep/f.bin | cut -d' ' -f1)" = "$(sha256sum <f.bin | cut -d' ' -f1)" ] ||
    fail "lxc file push -p: content differs"
rm -rf pulled; mkdir pulled
timeout 120 lxc file pull -r kb:deb/root/tree pulled/ || fail "lxc file pull -r"
[ "$(cat pulled/tree/sub/b.txt)" = "two" ] || fail "lxc file pull -r: nested file"
[ "$(readlink pulled/tree/link)" = "a.txt" ] || fail "lxc file pull -r: symlink"
curl -s -D head.txt -o /dev/null --unix-socket state/lxd/unix.socket 'http://lxd/1.0/instances/deb/files?path=/root/tree/link'
contains "$(tr -d '\r' <head.txt)" "X-LXD-type: symlink"
kv exec deb -n -- chown 1234:5678 /root/tree/sub
curl -s -D head.txt -o list.json --unix-socket state/lxd/unix.socket 'http://lxd/1.0/instances/deb/files?path=/root/tree/sub'
contains "$(tr -d '\r' <head.txt)" "X-LXD-type: directory"
contains "$(tr -d '\r' <head.txt)" "X-LXD-uid: 1234"
contains "$(tr -d '\r' <head.txt)" "X-LXD-gid: 5678"
contains "$(cat list.json)" '"metadata":["b.txt"]'
curl -s -X POST -H 'X-LXD-write: append' --data-binary 'more' --unix-socket state/lxd/unix.socket \
    'http://lxd/1.0/instances/deb/files?path=/root/tree/a.txt' >/dev/null
[ "$(kv exec deb -n -- cat /root/tree/a.txt)" = "$(printf 'one\nmore')" ] || fail "append: $(kv exec deb -n -- cat /root/tree/a.txt)"
timeout 120 lxc file delete kb:deb/root/tree/sub/b.txt || fail "lxc file delete"
kv exec deb -n -- test ! -e /root/tree/sub/b.txt || fail "lxc file delete left the file"
expect_fail timeout 120 lxc file delete kb:deb/root/tree
contains "$ERR" "rmdir"
kv exec deb -n -- test -e /root/tree/a.txt || fail "a refused delete removed something"
# Not there: 404; a FIFO is neither read (it would block) nor followed.
out=$(curl -s --unix-socket state/lxd/unix.socket 'http://lxd/1.0/instances/deb/files?path=/root/nothing-here')
contains "$out" '"error_code":404'
kv exec deb -n -- mkfifo /root/fifo
out=$(curl -s --unix-socket state/lxd/unix.socket 'http://lxd/1.0/instances/deb/files?path=/root/fifo')
contains "$out" "fifo"
out=$(curl -s -X POST -H 'X-LXD-type: socket' --data-binary x --unix-socket state/lxd/unix.socket \
    'http://lxd/1.0/instances/deb/files?path=/root/x')
contains "$out" '"error_code":400'

# record-output: without websockets, the output is kept and served.
op=$(curl -s -X POST --unix-socket state/lxd/unix.socket http://lxd/1.0/instances/deb/exec \
    -d '{"command":["sh","-c","echo rec-out; echo rec-err >&2; exit 3"],"record-output":true}' |
    sed -n 's/.*"operation":"\([^"]*\)".*/\1/p')
[ -n "$op" ] || fail "record-output: no operation"
done=$(curl -s --unix-socket state/lxd/unix.socket "http://lxd$op/wait?timeout=60")
contains "$done" '"return":3'
out1=$(printf '%s' "$done" | sed -n 's/.*"1":"\([^"]*\)".*/\1/p')
out2=$(printf '%s' "$done" | sed -n 's/.*"2":"\([^"]*\)".*/\1/p')
[ "$(curl -s --unix-socket state/lxd/unix.socket "http://lxd$out1")" = "rec-out" ] || fail "record-output stdout"
[ "$(curl -s --unix-socket state/lxd/unix.socket "http://lxd$out2")" = "rec-err" ] || fail "record-output stderr"
contains "$(curl -s --unix-socket state/lxd/unix.socket http://lxd/1.0/instances/deb/logs/exec-output)" "$out1"
out=$(curl -s --unix-socket state/lxd/unix.socket 'http://lxd/1.0/instances/deb/logs/exec-output/instance.json')
contains "$out" '"error_code":404'
curl -s -X DELETE --unix-socket state/lxd/unix.socket "http://lxd$out1" >/dev/null
out=$(curl -s --unix-socket state/lxd/unix.socket "http://lxd$out1")
contains "$out" '"error_code":404'

# Signals reach the command: kvmbox exec and lxc exec pass SIGTERM on, and
# exit as the command did (143).
for c in "bin/kvmbox exec deb -n --" "lxc exec kb:deb --"; do
    kv exec deb -n -- sh -c 'pkill -x sleep; true'
    $c sleep 300 </dev/null &
    epid=$!
    i=0
    until kv exec deb -n -- pgrep -x sleep >/dev/null 2>&1; do
        i=$((i + 1)); [ $i -lt 60 ] || fail "$c: the command did not start"; sleep 1
    done
    kill -TERM "$epid"
    rc=0; wait "$epid" || rc=$?
    [ "$rc" -eq 143 ] || fail "$c ended by SIGTERM exited $rc"
    ! kv exec deb -n -- pgrep -x sleep >/dev/null 2>&1 || fail "$c: the command outlived its signal"
done

# The console tells the guest's terminal the viewer's window size, at once
# and when it changes.
for c in "lxc console kb:deb" "bin/kvmbox console deb"; do
    kv exec deb -n -- stty -F /dev/ttyS0 rows 24 cols 80
    (sleep 4; printf '\001'; sleep 1; printf 'q'; sleep 3) |
        timeout 60 script -qfec "stty rows 37 cols 101; $c" tty.out >/dev/null 2>&1 || fail "$c did not detach"
    [ "$(kv exec deb -n -- stty -F /dev/ttyS0 size)" = "37 101" ] ||
        fail "$c: the guest's terminal is $(kv exec deb -n -- stty -F /dev/ttyS0 size)"
done
(sleep 6; printf '\001'; sleep 1; printf 'q'; sleep 3) |
    timeout 60 script -qfec "stty rows 30 cols 90; (sleep 3; stty rows 50 cols 120 </dev/tty) & bin/kvmbox console deb" \
        tty.out >/dev/null 2>&1 || fail "kvmbox console did not detach after a resize"
[ "$(kv exec deb -n -- stty -F /dev/ttyS0 size)" = "50 120" ] ||
    fail "a resize while attached: the guest's terminal is $(kv exec deb -n -- stty -F /dev/ttyS0 size)"

# The interactive console on a terminal: the login prompt after Enter, and
# Ctrl-a q detaches (lxc's own escape, and kvmbox's).
for c in "lxc console kb:deb" "bin/kvmbox console deb"; do
    rm -f tty.out
    # One byte at a time, as typed: lxc reads its escape byte by byte.
    (sleep 3; printf '\r'; sleep 6; printf '\001'; sleep 1; printf 'q'; sleep 5) |
        timeout 60 script -qfec "$c" tty.out >/dev/null 2>&1 || fail "$c did not detach: $(cat tty.out)"
    grep -aq "debian login:" tty.out || fail "$c showed no login prompt: $(cat tty.out)"
done

# Interactive lxc exec (a terminal): no PTY, the output when it ends.
rm -f tty.out
(sleep 10) | timeout 60 script -qfec "lxc exec kb:deb -- cat /etc/hostname" tty.out >/dev/null 2>&1 ||
    fail "interactive lxc exec: $(cat tty.out)"
tr -d '\r' <tty.out | grep -aqx "debian" || fail "interactive lxc exec output: $(cat tty.out)"

# A viewer that never reads stalls nobody: a reading viewer and the log see
# output long after the stalled one's buffers are full (the daemon drops it).
mkfifo stall
exec 3<>stall
bin/kvmbox console deb </dev/null >stall 2>/dev/null &
bg=$!
bin/kvmbox console deb </dev/null >seen.txt 2>&1 &
bg="$bg $!"
sleep 2
kv exec deb -n -- sh -c 'head -c 1500000 /dev/zero | tr "\0" x >/dev/ttyS0; echo STALL-DONE >/dev/ttyS0'
i=0
until grep -aq STALL-DONE seen.txt; do
    i=$((i + 1)); [ $i -lt 300 ] || fail "the reading viewer stalled"; sleep 0.2
done
console | grep -aq STALL-DONE || fail "the log stalled"
[ "$(kv exec deb -n -- echo alive)" = "alive" ] || fail "the guest stalled"
kill $bg 2>/dev/null || true
wait $bg 2>/dev/null || true
bg=
exec 3<&-

# The guest reboots under an attached console: the viewer sees the reboot
# and the next boot's kernel, and is still attached afterwards.
bin/kvmbox console deb </dev/null >reboot-view.log 2>&1 &
bg=$!
sleep 2
kv exec deb -n -- systemctl reboot >/dev/null 2>&1 || true
deadline=$(($(date +%s) + 480))
until tr -d '\r' <reboot-view.log | awk '/reboot: Restarting system/ { r = 1 } r && /Linux version/ { found = 1 } END { exit !found }'; do
    [ "$(date +%s)" -lt "$deadline" ] || fail "the attached viewer saw no reboot and next boot: $(tail -c 2000 reboot-view.log)"
    sleep 2
done
until kv exec deb -n -- true 2>/dev/null; do
    [ "$(date +%s)" -lt "$deadline" ] || fail "the guest agent did not come back after the reboot"
    sleep 2
done
until tr -d '\r' <reboot-view.log | awk '/reboot: Restarting system/ { r = 1 } r && /login:/ { found = 1 } END { exit !found }'; do
    [ "$(date +%s)" -lt "$deadline" ] || fail "the viewer saw no login prompt after the reboot: $(tail -c 2000 reboot-view.log)"
    sleep 2
done
kill -0 "$bg" 2>/dev/null || fail "the viewer was detached by the reboot"
kill $bg 2>/dev/null || true
wait $bg 2>/dev/null || true
bg=

# A snapshot of the running guest, its filesystems frozen by the agent;
# restoring it stops the VM, puts the disk back and boots it again.
kv exec deb -- sh -c 'echo before >/root/snap-file && sync' || fail "writing the file to snapshot"
kv snapshot deb g0
grep -q "instance deb: snapshot g0 taken with the guest's filesystems frozen" daemon.log ||
    fail "the snapshot did not freeze the guest: $(grep 'snapshot g0' daemon.log)"
[ "$(kv exec deb -- cat /root/snap-file)" = before ] || fail "the guest is not writable after the snapshot"
kv exec deb -- sh -c 'echo after >/root/snap-file && touch /root/later && sync'
kv restore deb g0
deadline=$(($(date +%s) + 480))
until kv exec deb -n -- true 2>/dev/null; do
    [ "$(date +%s)" -lt "$deadline" ] || fail "the agent did not answer after the restore: $(console | tail -5)"
    sleep 2
done
[ "$(kv exec deb -- cat /root/snap-file)" = before ] || fail "the restored guest reads '$(kv exec deb -- cat /root/snap-file)'"
! kv exec deb -- test -e /root/later || fail "a file made after the snapshot is still there"

# The agent killed mid-exec: an error naming the agent, soon, not a hang.
t=$(date +%s)
expect_fail timeout 90 bin/kvmbox exec deb -n -- sh -c 'kill $(pidof qemu-ga); sleep 60'
contains "$ERR" "guest agent"
[ $(($(date +%s) - t)) -le 40 ] || fail "an exec whose agent died took $(($(date +%s) - t)) s to fail"

kv stop deb --force
kv delete deb

# By now the schedule has fired more than once, and what expired is gone.
until grep -q "instance sched: snapshot auto-0 deleted" daemon.log; do
    [ "$(date +%s)" -lt "$deadline" ] || fail "no scheduled snapshot expired: $(grep sched daemon.log)"
    sleep 2
done
grep -q "instance sched: snapshot auto-1 taken" daemon.log || fail "the schedule fired once: $(grep sched daemon.log)"
! kv info sched | grep -qw auto-0 || fail "auto-0 is listed after it expired"
kv delete sched
! grep -lasF "$PWD/state/instances/" /proc/[0-9]*/cmdline >/dev/null || fail "a QEMU of this test still runs"
kill -TERM "$dpid"; wait "$dpid" || fail "kvmboxd exited non-zero: $(cat daemon.log)"
