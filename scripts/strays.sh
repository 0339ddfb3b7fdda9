#!/bin/sh
# The last step of `make test`: fails when a QEMU or kvmbox process of THIS
# run is still alive. A process belongs to the run when its environment holds
# KVMBOX_TEST_RUN=RUN (kvmboxd and the applets inherit it from the tests), or
# when its command line names a path under DIR, the run's TMPDIR, and it
# holds a file under DIR open (QEMU starts with an empty environment, but
# its log and disks are in a test's scratch directory).
#
# A command line is anyone's to write, so it alone proves nothing: DIR's
# name is plain to see. An environment only its owner and root can read,
# and only the run can open files in its private scratch directories; so
# another run's processes, and anyone's that merely name DIR, are left
# alone. RUN comes in the environment, not as an argument, for the same
# reason, and is matched by the shell itself, never put on a command line.
#
# Those found are printed and killed, so the next run starts clean. Each is
# checked again just before its kill, with its start time: a pid that ended
# and was reused since the scan is never killed.
# Usage: KVMBOX_TEST_RUN=RUN strays.sh DIR [GRACE]; GRACE tenths of a second
# (default 50) are given to processes still on their way out.
set -uf
usage="usage: KVMBOX_TEST_RUN=RUN strays.sh DIR [GRACE]"
run=${KVMBOX_TEST_RUN:?$usage} dir=${1:?$usage}
grace=${2:-50}
# Open files show as physical paths.
real=$(cd "$dir" 2>/dev/null && pwd -P) || real=$dir
nl='
'

# ours PID: whether the process belongs to this run, as said above.
ours() {
    env=$(tr '\0' '\n' <"/proc/$1/environ" 2>/dev/null) || env=
    case "$nl$env$nl" in *"${nl}KVMBOX_TEST_RUN=$run$nl"*) return 0 ;; esac
    # A zombie has neither environment nor command line: it is gone.
    cmd=$(tr '\0' '\n' <"/proc/$1/cmdline" 2>/dev/null) || return 1
    case "$cmd" in *"$dir/"*) ;; *) return 1 ;; esac
    set +f
    for fd in "/proc/$1/fd/"*; do
        case $(readlink "$fd" 2>/dev/null) in "$real"/*) set -f; return 0 ;; esac
    done
    set -f
    return 1
}

# started PID: when the process started (field 22 of /proc/PID/stat, counted
# after the command name, which may hold spaces and parentheses).
started() {
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    # shellcheck disable=SC2086 # split into its fields
    set -- ${stat##*) }
    [ $# -ge 20 ] || return 1
    shift 19
    echo "$1"
}

# Every stray as PID:START.
strays() {
    set +f
    files=$(grep -lE '^(qemu-system|kvmbox)' /proc/[0-9]*/comm 2>/dev/null)
    set -f
    for f in $files; do
        p=${f#/proc/} && p=${p%/comm}
        ours "$p" && t=$(started "$p") && echo "$p:$t"
    done
}

i=0
while found=$(strays) && [ -n "$found" ] && [ $i -lt "$grace" ]; do
    i=$((i + 1)); sleep 0.1
done
[ -n "$found" ] || exit 0
echo "FAIL: processes of this test run are left:" >&2
for s in $found; do
    p=${s%%:*} t=${s#*:}
    echo "  $p $(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null)" >&2
    if [ "$(started "$p")" = "$t" ] && ours "$p"; then
        kill -9 "$p" 2>/dev/null || true
    fi
done
exit 1
