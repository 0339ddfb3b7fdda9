#!/bin/sh
# The last step of `make test`: fails when a QEMU or kvmbox process of THIS
# run is still alive. A process belongs to the run when its environment holds
# KVMBOX_TEST_RUN=RUN (kvmboxd and the applets inherit it from the tests) or
# its command line names a path under DIR, the run's TMPDIR (QEMU starts with
# an empty environment, but its files are in a test's scratch directory).
# Another run on the same host has another RUN and DIR, so its processes are
# left alone. Those found are printed and killed, so the next run starts clean.
# Usage: strays.sh RUN DIR [GRACE]; GRACE tenths of a second (default 50)
# are given to processes still on their way out.
set -u
run=${1:?usage: strays.sh RUN DIR [GRACE]} dir=${2:?usage: strays.sh RUN DIR [GRACE]}
grace=${3:-50}

strays() {
    for f in $(grep -lE '^(qemu-system|kvmbox)' /proc/[0-9]*/comm 2>/dev/null); do
        p=${f%/comm}
        # A zombie has neither environment nor command line: it is gone.
        if { tr '\0' '\n' <"$p/environ" | grep -qxF "KVMBOX_TEST_RUN=$run"; } 2>/dev/null ||
            { tr '\0' '\n' <"$p/cmdline" | grep -qF "$dir/"; } 2>/dev/null; then
            echo "${p#/proc/}"
        fi
    done
}

i=0
while found=$(strays) && [ -n "$found" ] && [ $i -lt "$grace" ]; do
    i=$((i + 1)); sleep 0.1
done
[ -n "$found" ] || exit 0
echo "FAIL: processes of this test run are left:" >&2
for p in $found; do
    echo "  $p $(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null)" >&2
    kill -9 "$p" 2>/dev/null || true
done
exit 1
