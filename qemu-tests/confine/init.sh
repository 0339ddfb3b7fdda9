#!/bin/busybox sh
# /init of the confinement guest (qemu-tests/confine/image.sh): kvmboxd under
# its own profile, each VM's QEMU under kvmbox-<uuid>, and every verdict read
# from the kernel (its profile list, /proc/PID/attr/current, its audit log).
# Prints CONFINE-PASS/CONFINE-FAIL lines and CONFINE-DONE <failures>, then
# powers off.
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

fails=0
ok() { echo "CONFINE-PASS $*"; }
bad() { echo "CONFINE-FAIL $*"; fails=$((fails + 1)); }
finish() {
    echo "--- the kernel's AppArmor denials:"
    dmesg | grep 'apparmor="DENIED"'
    echo "CONFINE-DONE $fails"
    sync
    poweroff -f
}
ms() { awk '{printf "%d", $1 * 1000}' /proc/uptime; }
loaded() { grep -qx "kvmbox-$1 (enforce)" /sys/kernel/security/apparmor/profiles; }
label() { cat "/proc/$1/attr/current" 2>/dev/null; }
uuid_of() { kvmbox info "$1" --format json | sed -n 's/^ *"volatile.uuid": "\(.*\)",\{0,1\}$/\1/p' | head -n 1; }
pid_of() { kvmbox info "$1" --format json | sed -n 's/^  "pid": "\{0,1\}\([0-9]*\)"\{0,1\},\{0,1\}$/\1/p' | head -n 1; }
denied() { # PROFILE PATH: the kernel logged a refusal of PATH to PROFILE
    dmesg | grep 'apparmor="DENIED"' | grep "profile=\"$1\"" | grep -q "name=\"$2\""
}
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
start_daemon
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
elif dmesg | grep 'apparmor="DENIED"' | grep 'profile="kvmboxd"' | grep -q 'name="/bin/busybox"'; then
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
[ -n "$ub" ] && ! loaded "$ub" && ok "no kvmbox-$ub after the failed start" || bad "kvmbox-$ub ('$ub') after the failed start"
kvmbox delete bad
ls /etc/apparmor.d/kvmbox | grep -q "$ub" && bad "delete left $(ls /etc/apparmor.d/kvmbox)" || ok "deleting the failed VM left no profile files"

# --- VM a boots confined.
boot="--kernel /srv/guest/vmlinuz --initrd /srv/guest/initrd.gz --memory 256MiB"
t0=$(ms)
kvmbox launch a $boot --cmdline "console=ttyS0 quiet panic=-1" >/dev/null || { bad "launch a"; finish; }
ua=$(uuid_of a) pa=$(pid_of a)
loaded "$ua" && ok "kvmbox-$ua (enforce) is loaded while a runs" || bad "kvmbox-$ua not loaded while a runs"
[ "$(label $pa)" = "kvmbox-$ua (enforce)" ] && ok "a's QEMU runs as $(label $pa)" || bad "a's QEMU runs as '$(label $pa)'"
# The helper's parser child profile, not the daemon, loaded it.
dmesg | grep 'operation="profile_load"' | grep 'profile="kvmbox-aa-helper//parser"' | grep -q "name=\"kvmbox-$ua\"" &&
    ok "kvmbox-$ua was loaded by kvmbox-aa-helper//parser" || bad "kvmbox-$ua was not loaded by the confined helper"
if wait_console a KVMBOX-GUEST-READY 600; then
    ok "a boots confined: launch to guest marker $(($(ms) - t0)) ms"
else
    bad "a did not boot: $(kvmbox console a --show-log | tail -5)"; finish
fi

# --- VM b with a disk of its own; started and stopped.
dd if=/dev/zero of=/srv/b.img bs=1M count=8 2>/dev/null
kvmbox init b $boot >/dev/null
kvmbox config device add b bdisk disk source=/srv/b.img >/dev/null || bad "b's disk"
kvmbox start b || bad "start b"
ubb=$(uuid_of b)
loaded "$ubb" && ok "kvmbox-$ubb (enforce) is loaded while b runs" || bad "kvmbox-$ubb not loaded while b runs"
kvmbox stop b --force
! loaded "$ubb" && ok "kvmbox-$ubb is unloaded after b stops" || bad "kvmbox-$ubb still loaded after stop"

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
start_daemon
[ "$(pid_of a)" = "$pa" ] || bad "a was not re-adopted"

# --- Stop and delete: nothing stays in the kernel or on disk.
kvmbox stop a --force
! loaded "$ua" && ok "kvmbox-$ua is unloaded after a stops" || bad "kvmbox-$ua still loaded after stop"
kvmbox delete a
kvmbox delete b
left=$(ls /etc/apparmor.d/kvmbox | grep "^kvmbox-")
[ -z "$left" ] && ok "deleting stopped VMs leaves no profile files" || bad "left behind: $left"
grep -E "^kvmbox-[0-9a-f]{8}-" /sys/kernel/security/apparmor/profiles && bad "profiles still loaded" || ok "no kvmbox-<uuid> profile is loaded at the end"
kill $dpid; wait $dpid
finish
