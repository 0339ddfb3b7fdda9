# The AppArmor helper or apparmor_parser failing or hanging while a VM
# starts: the start fails with the reason, within the daemon's time limit
# on the helper (30 s, twice: the load, then the unload that tidies up
# after it), QEMU never runs, the instance is Stopped and starts once the
# fault is gone, and no helper or parser is left running.
#
# Two daemons side by side, each faulty the way its host makes it: one is
# given a parser (KVMBOX_AA_PARSER, as on kernels without AppArmor) that
# fails, then hangs, in loading; the other is installed with its helper
# beside it (../libexec/kvmbox-aa-helper, which the daemon prefers to
# itself), and that helper fails, then hangs.
. "$TESTLIB"

[ "$(id -u)" -eq 0 ] || { echo "SKIPPED: per-VM uids need root"; exit 0; }
command -v qemu-system-x86_64 >/dev/null || { echo "SKIPPED: no qemu-system-x86_64"; exit 0; }

unset HOME XDG_RUNTIME_DIR KVMBOX_SOCKET || true
chmod 711 .
guest_assets
parser_wrapper
# The parser's fault, read at each call: "", fail or hang.
cat >faulty-parser.sh <<EOF
#!/bin/sh
case "\$*" in
*-r*)
    case \$(cat "$PWD/parser.fault") in
    fail) echo "parser: syntax error in the profile" >&2; exit 1 ;;
    hang) while :; do sleep 1; done ;;
    esac ;;
esac
exec "$PWD/parser.sh" "\$@"
EOF
chmod 755 faulty-parser.sh
: >parser.fault
# An installed daemon, its helper beside it: the real one, or a faulty one.
mkdir -p inst/sbin inst/libexec bin
cp "$K" inst/sbin/kvmboxd
cat >helper.sh <<EOF
#!/bin/sh
case \$(cat "$PWD/helper.fault") in
fail) echo "kvmbox-aa-helper: cannot write the profile" >&2; exit 1 ;;
hang) while :; do sleep 1; done ;;
esac
exec "$K" --applet kvmbox-aa-helper "\$@"
EOF
chmod 755 helper.sh
cp helper.sh inst/libexec/kvmbox-aa-helper
: >helper.fault
ln -sf "$K" bin/kvmbox

# A (parser faults) on ./a, B (helper faults) on ./b.
KVMBOX_DIR=$PWD/a KVMBOX_AA_PARSER=$PWD/faulty-parser.sh "$K" --applet kvmboxd --group root 2>a.log &
apid=$!
KVMBOX_DIR=$PWD/b KVMBOX_AA_PARSER=$PWD/parser.sh inst/sbin/kvmboxd --group root 2>b.log &
bpid=$!
cleanup() {
    kill -9 "$apid" "$bpid" 2>/dev/null || true
    for p in $(grep -las -e "$PWD/[a]/instances/" -e "$PWD/[b]/instances/" -e "$PWD/[f]aulty-parser" -e "$PWD/[i]nst/libexec/" /proc/[0-9]*/cmdline | cut -d/ -f3); do
        kill -9 "$p" 2>/dev/null || true
    done
}
trap cleanup EXIT
a() { KVMBOX_DIR=$PWD/a KVMBOX_CONF=$PWD/a-conf bin/kvmbox "$@"; }
b() { KVMBOX_DIR=$PWD/b KVMBOX_CONF=$PWD/b-conf bin/kvmbox "$@"; }
for d in a b; do
    i=0; while ! $d info >/dev/null 2>&1; do i=$((i + 1)); [ $i -lt 100 ] || fail "daemon $d did not start: $(cat $d.log)"; sleep 0.1; done
    $d config set security.apparmor_profile_dir "$PWD/$d-aa"
    $d init v1 --kernel "$kernel" --initrd "$initrd" --memory 128MiB >/dev/null
done
status() { $1 list --format csv | grep "^v1," | cut -d, -f2; }
# Processes of the faulty parser or helper still there (the patterns are
# bracketed so that grep's own command line does not match).
left() { grep -las -e "$PWD/[f]aulty-parser" -e "$PWD/[i]nst/libexec/" /proc/[0-9]*/cmdline | wc -l; }

# faulty D FAULT MIN MAX TEXT: with FAULT set, daemon D's start of v1
# fails after MIN to MAX seconds, saying TEXT; nothing is left.
faulty() {
    echo "$2" >parser.fault; echo "$2" >helper.fault
    t0=$(date +%s)
    if $1 start v1 >"$1.out" 2>"$1.err"; then fail "$1: the start succeeded with a $2 fault"; fi
    took=$(($(date +%s) - t0))
    [ "$took" -ge "$3" ] && [ "$took" -le "$4" ] ||
        fail "$1: the start with a $2 fault failed after ${took}s: $(cat "$1.err"); daemon: $(tail -n 3 "$1.log")"
    contains "$(cat "$1.err")" "$5"
    [ "$(status "$1")" = Stopped ] || fail "$1: v1 is $(status "$1") after a $2 fault"
    [ "$(qemus_of "$PWD/$1/instances/v1")" -eq 0 ] || fail "$1: QEMU runs after a $2 fault"
    echo "$1 $2: failed in ${took}s: $(cat "$1.err")"
}

# Failing: at once, with the tool's own words.
faulty a fail 0 10 "syntax error in the profile"
tail -n 1 parser.log | grep -qx -- "-R" || fail "a: no unload after the failed load: $(cat parser.log)"
faulty b fail 0 10 "cannot write the profile"

# Hanging: A's parser hangs in the load (30 s), its unload works; B's
# helper hangs in both (60 s). Both at once, to take half the time.
: >parser.log
faulty a hang 29 50 "did not finish within 30s" &
ja=$!
faulty b hang 59 80 "did not finish within 30s" &
jb=$!
wait "$ja" || fail "daemon a"
wait "$jb" || fail "daemon b"
tail -n 1 parser.log | grep -qx -- "-R" || fail "a: no unload after the hung load: $(cat parser.log)"
[ "$(left)" -eq 0 ] || fail "a hung parser or helper is left running"

# Fault gone: both start, and stop.
: >parser.fault; : >helper.fault
for d in a b; do
    $d start v1
    [ "$(status $d)" = Running ] || fail "$d: v1 did not start once the fault was gone: $(tail -3 $d.log)"
    $d delete --force v1
done
kill -TERM "$apid" "$bpid"
wait "$apid" || fail "daemon a exited non-zero"
wait "$bpid" || fail "daemon b exited non-zero"
