#!/bin/busybox sh
# /init of the confinement guest (qemu-tests/confine/image.sh): kvmboxd under
# its own profile, each VM's QEMU under kvmbox-<uuid>, and every verdict read
# from the kernel (its profile list, /proc/PID/attr/current, its audit log).
# Prints CONFINE-PASS/CONFINE-FAIL lines, CONFINE-NOTE for what this kernel
# cannot decide, and CONFINE-DONE <failures> <passes>, then powers off.
/bin/busybox --install -s /bin
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t securityfs securityfs /sys/kernel/security
mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
exec >/dev/console 2>&1
# The kernel writes its messages (the audit lines among them) to the same
# serial line at any moment, and one landing inside a CONFINE- line would
# hide that line from the test: the log is read with dmesg instead.
dmesg -n 1

fails=0 passes=0
ok() { echo "CONFINE-PASS $*"; passes=$((passes + 1)); }
bad() { echo "CONFINE-FAIL $*"; fails=$((fails + 1)); }
finish() {
    echo "--- the kernel's AppArmor denials:"
    dmesg | grep 'apparmor="DENIED"'
    echo "CONFINE-DONE $fails $passes"
    sync
    poweroff -f
}
ms() { awk '{printf "%d", $1 * 1000}' /proc/uptime; }
loaded() { # UUID: kvmbox-UUID is in the kernel's list, in enforce mode
    [ -n "$1" ] || { bad "no VM UUID to look for"; return 2; }
    grep -qx "kvmbox-$1 (enforce)" /sys/kernel/security/apparmor/profiles
}
label() { cat "/proc/$1/attr/current" 2>/dev/null; }
uuid_of() { kvmbox info "$1" --format json | sed -n 's/^ *"volatile.uuid": "\(.*\)",\{0,1\}$/\1/p' | head -n 1; }
pid_of() { kvmbox info "$1" --format json | sed -n 's/^  "pid": "\{0,1\}\([0-9]*\)"\{0,1\},\{0,1\}$/\1/p' | head -n 1; }
# logged TEXT…: the kernel's log has an apparmor="DENIED" line with each
# TEXT in it. Audit lines reach the log through a kernel thread, a little
# after the refusal itself: they are waited for, up to 5 s.
logged() {
    i=0
    while :; do
        lines=$(dmesg | grep 'apparmor="DENIED"')
        for t in "$@"; do lines=$(echo "$lines" | grep -F "$t") || break; done
        [ -z "$lines" ] || return 0
        i=$((i + 1)); [ $i -lt 50 ] || return 1
        sleep 0.1
    done
}
denied() { logged "profile=\"$1\"" "name=\"$2\""; } # PROFILE PATH: PATH was refused to PROFILE
wait_console() { # NAME TEXT SECONDS
    i=0
    while ! kvmbox console "$1" --show-log 2>/dev/null | grep -q "$2"; do
        i=$((i + 1)); [ $i -lt $(($3 * 2)) ] || return 1
        sleep 0.5
    done
}
# qmp SOCKET COMMAND…: each command's reply, one line each.
qmp() {
    sock=$1; shift
    uconnect "$sock" sh -c '
        reply() { while read -r l; do case $l in *\"return\"*|*\"error\"*) echo "$l" >&2; return;; esac; done; }
        read -r greeting
        echo "{\"execute\":\"qmp_capabilities\"}"; reply 2>/dev/null
        for c in "$@"; do echo "$c"; reply; done' qmp "$@" 2>&1
}
blockdev_ro() { # NODE PATH: a QMP blockdev-add opening PATH read-only
    echo "{\"execute\":\"blockdev-add\",\"arguments\":{\"driver\":\"file\",\"node-name\":\"$1\",\"filename\":\"$2\",\"read-only\":true,\"locking\":\"off\"}}"
}
chardev_client() { # ID PATH: a QMP chardev-add connecting to the socket PATH
    echo "{\"execute\":\"chardev-add\",\"arguments\":{\"id\":\"$1\",\"backend\":{\"type\":\"socket\",\"data\":{\"addr\":{\"type\":\"unix\",\"data\":{\"path\":\"$2\"}},\"server\":false}}}}"
}
# as_helper PROGRAM ARG…: runs PROGRAM under kvmbox-aa-helper's profile,
# entered from unconfined root as aa-exec does (the transition happens at
# exec, so the profile need not grant running PROGRAM).
as_helper() { sh -c 'echo "exec kvmbox-aa-helper" >/proc/self/attr/exec && exec "$@"' as-helper "$@" 2>&1; }
helper_denied() { logged 'profile="kvmbox-aa-helper"' "$@"; } # TEXT…: refused to the helper
# watch_qemu: every 0.1 s, the uptime, each QEMU's pid, label and whether
# it holds /dev/kvm open. Shell builtins only (test -ef follows
# /proc/PID/fd/N to the file): watching takes little from the QEMU watched.
watch_qemu() {
    while :; do
        for p in /proc/[0-9]*; do
            read -r c <"$p/comm" 2>/dev/null || continue
            [ "$c" = qemu-system-x86 ] || continue
            read -r l <"$p/attr/current" 2>/dev/null || continue
            k=
            for f in "$p"/fd/*; do [ "$f" -ef /dev/kvm ] && k=/dev/kvm; done
            read -r up _ </proc/uptime
            echo "$up ${p#/proc/} $l: $k"
        done
        sleep 0.1
    done
}

echo "kernel: $(uname -r); AppArmor enabled: $(cat /sys/module/apparmor/parameters/enabled)"
for p in usr.sbin.kvmboxd usr.libexec.kvmbox-aa-helper; do
    apparmor_parser -r "/etc/apparmor.d/$p" || bad "apparmor_parser -r $p"
done
grep -qx "kvmboxd (enforce)" /sys/kernel/security/apparmor/profiles &&
    grep -qx "kvmbox-aa-helper (enforce)" /sys/kernel/security/apparmor/profiles &&
    ok "the daemon's and the helper's profiles are loaded" || { bad "profiles not loaded"; finish; }

start_daemon() {
    /usr/sbin/kvmboxd --group root >>/tmp/daemon.log 2>&1 &
    dpid=$!
    i=0; while ! kvmbox info >/dev/null 2>&1; do
        i=$((i + 1)); [ $i -lt 200 ] || { bad "the daemon did not start: $(tail -5 /tmp/daemon.log)"; finish; }
        sleep 0.1
    done
}

# --- The accelerator probe: at start the daemon boots a throwaway QEMU on
# /dev/kvm under its child profile qemu. Here /dev/kvm opens (the guest's CPU
# has SVM) but no vCPU ever runs guest code, so the probe is ended at its
# time limit (3 s) and the daemon chooses TCG. The kernel shows what the
# probe ran as, and that it opened /dev/kvm.
for m in irqbypass kvm kvm-amd; do insmod "/lib/modules/$m.ko" || bad "insmod $m"; done
watch_qemu >/tmp/probe.seen 2>/dev/null &
watcher=$!
start_daemon
# Until the probe has come and gone, looking seldom: the CPU is the probe's.
i=0; while [ ! -s /tmp/probe.seen ] || pidof qemu-system-x86_64 >/dev/null; do
    i=$((i + 1)); [ $i -lt 120 ] || { bad "the probe QEMU did not end"; break; }
    sleep 0.5
done
kill $watcher; wait $watcher 2>/dev/null
echo "the probe as the kernel showed it: $(head -n 1 /tmp/probe.seen) ... $(tail -n 1 /tmp/probe.seen)" \
    "($(grep -c /dev/kvm /tmp/probe.seen) of $(wc -l </tmp/probe.seen) looks with /dev/kvm open)"
kvmbox info | grep "^accelerator"
grep -q "kvmboxd//qemu (enforce): /dev/kvm" /tmp/probe.seen &&
    ok "the KVM probe ran as kvmboxd//qemu (enforce) and opened /dev/kvm" || bad "the KVM probe was not seen under kvmboxd//qemu with /dev/kvm open"
dmesg | grep 'apparmor="DENIED"' | grep -q 'profile="kvmboxd' &&
    bad "the probe or the daemon was denied something at start" || ok "no denial for the KVM probe or the daemon at start"
# Without /dev/kvm from here on, a restarted daemon chooses TCG at once.
# KVM lets go of its module a little after the probe's exit.
for m in kvm_amd kvm irqbypass; do
    i=0; until rmmod $m 2>/dev/null; do
        i=$((i + 1)); [ $i -lt 50 ] || { bad "rmmod $m: $(rmmod $m 2>&1)"; break; }
        sleep 0.2
    done
done

[ "$(label $dpid)" = "kvmboxd (enforce)" ] && ok "kvmboxd runs as $(label $dpid)" || bad "kvmboxd runs as '$(label $dpid)'"
kvmbox info | grep -i apparmor

# --- Whatever runs as kvmboxd runs only what the profile names: a shell
# it starts is refused, not run unconfined (it could write policy).
r=$(sh -c 'echo "exec kvmboxd" >/proc/self/attr/exec &&
    exec /bin/busybox sh -c "read l </proc/self/attr/current; echo as \$l; exec /bin/busybox touch /etc/apparmor.d/kvmbox/x"' 2>&1)
echo "a shell under kvmboxd: $r"
case $r in *"as kvmboxd (enforce)"*) ;; *) bad "the shell did not start as kvmboxd: $r" ;; esac
if [ -e /etc/apparmor.d/kvmbox/x ]; then
    bad "a program run by kvmboxd wrote policy"; rm -f /etc/apparmor.d/kvmbox/x
elif denied kvmboxd /bin/busybox; then
    ok "kvmboxd may not run a shell (apparmor=\"DENIED\" exec)"
else
    bad "no exec denial for kvmboxd"
fi
# qemu-img, under its child profile, inspects an imported image.
dd if=/dev/zero of=/srv/base.img bs=1M count=4 2>/dev/null
kvmbox image import /srv/base.img --alias base >/dev/null && kvmbox image list | grep -q raw &&
    ok "an image is imported (qemu-img as kvmboxd//qemu_img)" || bad "image import failed"
# A VM without its own profile runs under the daemon's child profile qemu.
kvmbox init c --kernel /srv/guest/vmlinuz --initrd /srv/guest/initrd.gz --memory 64MiB -c security.apparmor=off >/dev/null
kvmbox start c || bad "start c"
[ "$(label "$(pid_of c)")" = "kvmboxd//qemu (enforce)" ] && ok "QEMU of a VM with security.apparmor=off runs as kvmboxd//qemu" ||
    bad "QEMU of c runs as '$(label "$(pid_of c)")'"
kvmbox stop c --force
kvmbox delete c

# --- A failed start: QEMU's reason reaches the user, no profile stays.
echo "not a kernel" >/srv/notakernel
if err=$(kvmbox launch bad --kernel /srv/notakernel --memory 64MiB 2>&1); then
    bad "a kernel that is not one started"
else
    echo "failed start: $err"
    case $err in *"invalid kernel header"*) ok "a failed start shows QEMU's reason" ;; *) bad "QEMU's reason is lost: $err" ;; esac
fi
ub=$(uuid_of bad)
# Loaded for the start (QEMU failed under it), removed after.
dmesg | grep 'operation="profile_load"' | grep -q "name=\"kvmbox-$ub\"" &&
    dmesg | grep 'operation="profile_remove"' | grep -q "name=\"kvmbox-$ub\"" && ! loaded "$ub" &&
    ok "kvmbox-$ub was loaded for the failed start and is gone after it" || bad "kvmbox-$ub ('$ub') after the failed start"
kvmbox delete bad
ls /etc/apparmor.d/kvmbox | grep -q "$ub" && bad "delete left $(ls /etc/apparmor.d/kvmbox)" || ok "deleting the failed VM left no profile files"

# --- A start whose disk vanished after it was added fails, and leaves no
# profile (the daemon finds the disk gone before it asks for one).
boot="--kernel /srv/guest/vmlinuz --initrd /srv/guest/initrd.gz --memory 256MiB"
dd if=/dev/zero of=/srv/d.img bs=1M count=1 2>/dev/null
kvmbox init d $boot >/dev/null
kvmbox config device add d ddisk disk source=/srv/d.img >/dev/null || bad "d's disk"
rm /srv/d.img
if err=$(kvmbox start d 2>&1); then
    bad "d started without its disk"
else
    echo "start with a vanished disk: $err"
fi
ud=$(uuid_of d)
[ -n "$ud" ] && ! loaded "$ud" && ok "no kvmbox-$ud after the start without its disk" || bad "kvmbox-$ud ('$ud') after the start without its disk"
kvmbox delete d || bad "delete d"

# --- VM a boots confined, and b, stopped and started again, boots beside
# it (two inner guests at once keep both of this guest's vCPUs busy).
cmdline="console=ttyS0 quiet panic=-1"
t0=$(ms)
kvmbox launch a $boot --cmdline "$cmdline" >/dev/null || { bad "launch a"; finish; }
ua=$(uuid_of a) pa=$(pid_of a)
loaded "$ua" && ok "kvmbox-$ua (enforce) is loaded while a runs" || bad "kvmbox-$ua not loaded while a runs"
[ "$(label $pa)" = "kvmbox-$ua (enforce)" ] && ok "a's QEMU runs as $(label $pa)" || bad "a's QEMU runs as '$(label $pa)'"
# The helper's parser child profile, not the daemon, loaded it.
dmesg | grep 'operation="profile_load"' | grep 'profile="kvmbox-aa-helper//parser"' | grep -q "name=\"kvmbox-$ua\"" &&
    ok "kvmbox-$ua was loaded by kvmbox-aa-helper//parser" || bad "kvmbox-$ua was not loaded by the confined helper"
dd if=/dev/zero of=/srv/b.img bs=1M count=8 2>/dev/null
kvmbox init b $boot --cmdline "$cmdline" >/dev/null
kvmbox config device add b bdisk disk source=/srv/b.img >/dev/null || bad "b's disk"
kvmbox start b || bad "start b"
ubb=$(uuid_of b)
loaded "$ubb" && ok "kvmbox-$ubb (enforce) is loaded while b runs" || bad "kvmbox-$ubb not loaded while b runs"
kvmbox stop b --force
! loaded "$ubb" && ok "kvmbox-$ubb is unloaded after b stops" || bad "kvmbox-$ubb still loaded after stop"
tb=$(ms)
kvmbox start b || bad "start b again"
pb=$(pid_of b)
loaded "$ubb" && [ "$(label "$pb")" = "kvmbox-$ubb (enforce)" ] && ok "b's QEMU, started again, runs as $(label "$pb")" ||
    bad "b's QEMU, started again, runs as '$(label "$pb")'"
if wait_console a KVMBOX-GUEST-READY 600; then
    ok "a boots confined: launch to guest marker $(($(ms) - t0)) ms"
else
    bad "a did not boot: $(kvmbox console a --show-log | tail -5)"; finish
fi

# --- Hot-plug into a: granted, seen by the guest, no denial.
dd if=/dev/zero of=/srv/a-data.img bs=1M count=8 2>/dev/null
kvmbox config device add a data disk source=/srv/a-data.img >/dev/null || bad "hot-plug into a"
wait_console a "KVMBOX-DISK vd" 120 && ok "a's guest sees the hot-plugged disk" || bad "no disk in a: $(kvmbox console a --show-log | tail -3)"
dmesg | grep 'apparmor="DENIED"' | grep -q "profile=\"kvmbox-$ua\"" &&
    bad "a's QEMU was denied something while running normally" || ok "no denial for a's QEMU in normal use"

# --- The helper refuses b's disk to a.
if err=$(kvmbox config device add a stolen disk source=/srv/b.img 2>&1); then
    bad "a was given b's disk"
else
    echo "device add of b's disk: $err"; ok "the helper refuses b's disk to a"
fi
if wait_console b KVMBOX-GUEST-READY 600; then
    ok "b boots again confined after a stop: start to guest marker $(($(ms) - tb)) ms"
else
    bad "b did not boot again: $(kvmbox console b --show-log | tail -5)"
fi
dmesg | grep 'apparmor="DENIED"' | grep -q "profile=\"kvmbox-$ubb\"" &&
    bad "b's QEMU was denied something" || ok "no denial for b's QEMU, started again"
# A privileged VM (its QEMU runs as root) on the image: qemu-img, under its
# child profile, makes the overlay that is p's root disk. Its disk boots
# nothing: the firmware finds no system and waits.
kvmbox init base p --memory 64MiB -c security.privileged=true >/dev/null &&
    [ -s /var/lib/kvmbox/instances/p/root.qcow2 ] &&
    ! dmesg | grep 'apparmor="DENIED"' | grep -q 'profile="kvmboxd//qemu_img"' &&
    ok "an instance is made on an image (qemu-img create as kvmboxd//qemu_img)" || bad "no instance on the image"
kvmbox start p || bad "start p"
up=$(uuid_of p) pp=$(pid_of p)
[ "$(label "$pp")" = "kvmbox-$up (enforce)" ] || bad "p's QEMU runs as '$(label "$pp")'"

# --- The kernel refuses a's QEMU what its profile does not grant, asked
# through QMP. The daemon holds the QMP connection, and QEMU serves one
# client: the daemon is killed (a keeps running) and started again after.
# Each file is made world-readable first, so that only AppArmor can refuse.
kill -9 $dpid; wait $dpid 2>/dev/null
state=/var/lib/kvmbox/instances/b/instance.json
chmod 644 /srv/b.img /etc/shadow "$state"
sock=/var/lib/kvmbox/instances/a/vm/qemu/qmp.sock
r=$(qmp "$sock" "$(blockdev_ro own /srv/guest/initrd.gz)")
echo "QMP blockdev-add of a's own initrd: $r"
case $r in *'"return"'*) ok "QMP blockdev-add works for a's own file" ;; *) bad "QMP blockdev-add of a's own file: $r" ;; esac
n=0
for f in /srv/b.img "$state" /etc/shadow; do
    n=$((n + 1))
    r=$(qmp "$sock" "$(blockdev_ro steal$n "$f")")
    echo "QMP blockdev-add $f: $r"
    case $r in *"Permission denied"*) ;; *) bad "a's QEMU opened $f: $r"; continue ;; esac
    if denied "kvmbox-$ua" "$f"; then
        ok "the kernel refused $f to a's QEMU (apparmor=\"DENIED\")"
    elif [ "$f" = /etc/shadow ]; then
        # An explicit deny rule refuses without an audit line; the file is
        # world-readable, so the refusal can only be AppArmor's.
        ok "the kernel refused $f to a's QEMU (explicit deny rule, not logged)"
    else
        bad "no apparmor=\"DENIED\" for $f"
    fi
done

# --- a's QEMU and b's QMP socket: a's QEMU is asked over its own QMP to
# connect a socket chardev to b's. It runs as a uid of its own, without
# capabilities, and b's socket directory is b's uid's alone.
bsock=/var/lib/kvmbox/instances/b/vm/qemu/qmp.sock
r=$(qmp "$sock" "$(chardev_client peek1 "$bsock")")
echo "QMP chardev-add to b's QMP socket: $r"
uid_a=$(awk '/^Uid:/ { print $2 }' "/proc/$pa/status")
bdir=$(stat -c 'uid %u mode %a' "${bsock%/*}")
case $r in
*"Permission denied"*) ok "a's QEMU (uid $uid_a) is refused b's QMP socket, whose directory is $bdir" ;;
*) bad "a's QEMU reached b's QMP socket: $r" ;;
esac
# p's QEMU runs as root with the capabilities that override file modes:
# only its profile's explicit (unlogged) denial of them keeps it out.
psock=/var/lib/kvmbox/instances/p/vm/qemu/qmp.sock
uid_p=$(awk '/^Uid:/ { print $2 }' "/proc/$pp/status")
cap_p=$(awk '/^CapEff:/ { print $2 }' "/proc/$pp/status")
r=$(qmp "$psock" "$(chardev_client peek3 "$bsock")")
echo "QMP chardev-add from p to b's QMP socket: $r"
# CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH are bits 1 and 2.
if [ "$uid_p" != 0 ] || [ $((0x$cap_p & 6)) != 6 ]; then
    bad "p's QEMU runs as uid $uid_p with CapEff $cap_p"
else
    case $r in
    *"Permission denied"*) ok "p's QEMU (uid 0, CapEff $cap_p) is refused b's QMP socket: AppArmor denies it dac_override and dac_read_search" ;;
    *) bad "privileged p's QEMU reached b's QMP socket: $r" ;;
    esac
fi
# With the uid out of the way, the refusal is AppArmor's to make, and this
# kernel cannot make it: connecting to a socket by path is mediated only
# where AppArmor has af_unix support (its features list says so).
bmode=$(stat -c %a "$bsock")
chmod 711 "${bsock%/*}"; chmod 666 "$bsock"
r=$(qmp "$sock" "$(chardev_client peek2 "$bsock")" '{"execute":"chardev-remove","arguments":{"id":"peek2"}}')
chmod 700 "${bsock%/*}"; chmod "$bmode" "$bsock"
if ls -d /sys/kernel/security/apparmor/features/network*/af_unix >/dev/null 2>&1; then
    case $r in *"Permission denied"*) ;; *) bad "a's QEMU connected to b's QMP socket: $r" ;; esac
    denied "kvmbox-$ua" "$bsock" && ok "the kernel refused b's QMP socket to a's QEMU (apparmor=\"DENIED\")" ||
        bad "no apparmor=\"DENIED\" for $bsock"
else
    echo "CONFINE-NOTE this kernel's AppArmor has no af_unix mediation: with b's socket open to every uid, a's QEMU got: $r"
fi

# --- b's QEMU killed while the daemon is away: the daemon finds it gone
# when it starts, and unloads its profile.
kill -9 "$pb"
start_daemon
[ "$(pid_of a)" = "$pa" ] || bad "a was not re-adopted"
i=0; while loaded "$ubb" && [ $i -lt 100 ]; do i=$((i + 1)); sleep 0.1; done
! loaded "$ubb" && ok "kvmbox-$ubb is unloaded after its QEMU was killed while the daemon was away" ||
    bad "kvmbox-$ubb still loaded after its QEMU was killed"

# --- b's QEMU killed under the running daemon: its reaper unloads it.
kvmbox start b || bad "start b again"
pb=$(pid_of b)
loaded "$ubb" && [ "$(label "$pb")" = "kvmbox-$ubb (enforce)" ] || bad "b's QEMU runs as '$(label "$pb")'"
kill -9 "$pb"
t0=$(ms)
i=0; while loaded "$ubb" && [ $i -lt 300 ]; do i=$((i + 1)); sleep 0.1; done
! loaded "$ubb" && ok "kvmbox-$ubb is unloaded $(($(ms) - t0)) ms after its QEMU was killed (SIGKILL)" ||
    bad "kvmbox-$ubb still loaded after its QEMU was killed"

# --- The helper, under its own profile, may write profiles and nothing
# else, and has no network. Each program below runs under kvmbox-aa-helper
# as the helper would; what is refused must be refused by the kernel, in
# its log. First: in normal use it was refused nothing.
dmesg | grep 'apparmor="DENIED"' | grep -q 'profile="kvmbox-aa-helper' &&
    bad "the helper was denied something in normal use" || ok "the helper and its parser were denied nothing in normal use"
as_helper /bin/busybox touch /etc/apparmor.d/kvmbox/helper-probe
[ -e /etc/apparmor.d/kvmbox/helper-probe ] &&
    ok "the helper writes in the profile directory" || bad "the helper cannot write in the profile directory"
rm -f /etc/apparmor.d/kvmbox/helper-probe
as_helper /bin/busybox touch /etc/apparmor.d/helper-probe
[ ! -e /etc/apparmor.d/helper-probe ] && helper_denied 'name="/etc/apparmor.d/helper-probe"' &&
    ok "the kernel refused the helper a file outside the profile directory" || bad "the helper wrote /etc/apparmor.d/helper-probe"
rm -f /etc/apparmor.d/helper-probe
as_helper /bin/busybox dd if=/dev/null of=/sys/kernel/security/apparmor/.remove >/dev/null
helper_denied 'name="/sys/kernel/security/apparmor/.remove"' &&
    ok "the kernel refused the helper its policy interface (only its parser child loads)" || bad "no denial of .remove to the helper"
chmod 644 /srv/a-data.img
r=$(as_helper /bin/busybox wc -c /srv/a-data.img)
chmod 600 /srv/a-data.img
echo "the helper reading a's disk: $r"
case $r in *"Permission denied"*) ;; *) bad "the helper read a's disk: $r" ;; esac
helper_denied 'name="/srv/a-data.img"' && ok "the kernel refused the helper a VM's disk" || bad "no denial of a's disk to the helper"
r=$(as_helper /bin/busybox nc 127.0.0.1 1)
echo "the helper opening a TCP connection: $r"
helper_denied 'operation="create"' 'family="inet"' &&
    ok "the kernel refused the helper an inet socket (apparmor=\"DENIED\")" || bad "no denial of an inet socket to the helper"
r=$(as_helper /usr/bin/uconnect /var/lib/kvmbox/unix.socket /bin/true)
echo "the helper connecting to the daemon's socket: $r"
helper_denied 'operation="create"' 'family="unix"' &&
    ok "the kernel refused the helper a unix socket (apparmor=\"DENIED\")" || bad "no denial of a unix socket to the helper"

# --- Stop and delete: nothing stays in the kernel or on disk.
kvmbox stop a --force
! loaded "$ua" && ok "kvmbox-$ua is unloaded after a stops" || bad "kvmbox-$ua still loaded after stop"
kvmbox delete a
kvmbox delete b
kvmbox stop p --force
! loaded "$up" && ok "kvmbox-$up is unloaded after p stops" || bad "kvmbox-$up still loaded after stop"
kvmbox delete p
left=$(ls /etc/apparmor.d/kvmbox | grep "^kvmbox-")
[ -z "$left" ] && ok "deleting stopped VMs leaves no profile files" || bad "left behind: $left"
grep -E "^kvmbox-[0-9a-f]{8}-" /sys/kernel/security/apparmor/profiles && bad "profiles still loaded" || ok "no kvmbox-<uuid> profile is loaded at the end"
kill $dpid; wait $dpid
finish
