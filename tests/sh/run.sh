#!/bin/sh
# Runs every test_*.sh in the given directories (default: this one), each in
# its own scratch directory, and ends with the plain "N passed, N failed"
# line. A test passes when it exits 0; its output is shown only when it
# fails. TEST_FILTER=substring runs only the tests whose path contains it.
# Usage: run.sh [DIR…]
set -u
[ $# -gt 0 ] || set -- "$(dirname "$0")"
filter=${TEST_FILTER:-}
: "${KVMBOX_BIN:?KVMBOX_BIN must name the kvmbox binary under test}"
export KVMBOX_BIN
export TESTLIB="$(cd "$(dirname "$0")" && pwd)/lib.sh"
export REPO="$(cd "$(dirname "$0")/../.." && pwd)"
pass=0; fail=0; failed=""
for t in $(for dir in "$@"; do ls "$dir"/test_*.sh 2>/dev/null; done); do
    [ -e "$t" ] || continue
    case "$t" in *"$filter"*) ;; *) continue ;; esac
    name=$(basename "$t" .sh)
    scratch=$(mktemp -d)
    start=$(date +%s)
    if (cd "$scratch" && sh "$OLDPWD/$t") >"$scratch.log" 2>&1; then
        pass=$((pass + 1)); echo "ok   $name ($(( $(date +%s) - start ))s)"
    else
        fail=$((fail + 1)); failed="$failed $name"
        echo "FAIL $name ($(( $(date +%s) - start ))s)"; sed 's/^/     | /' "$scratch.log" | tail -40
    fi
    rm -rf "$scratch" "$scratch.log"
done
[ -z "$failed" ] || echo "failed:$failed"
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
