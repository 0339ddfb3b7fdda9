#!/bin/sh
# `make fuzz`: runs every libFuzzer target of fuzz/ for FUZZ_SECONDS each
# (one after the other, at the lowest CPU priority), starting from the
# committed seeds in fuzz/corpus/TARGET. New corpus entries go to a scratch
# directory, not into the tree; a crash leaves its input in
# fuzz/artifacts/TARGET/ and stops the run: fix it, then commit the input
# under fuzz/regressions/TARGET/, which `make test` replays.
#
# Installs what it needs first: the release nightly of cross/release.env
# (scripts/deps.sh) and cargo-fuzz, under $KVMBOX_TOOLS, when missing.
# FUZZ_TARGETS picks some targets (default: all); FUZZ_JOBS runs that many
# targets at once.
set -eu
cd "$(dirname "$0")/.."
. cross/release.env
seconds=${FUZZ_SECONDS:-600}
jobs=${FUZZ_JOBS:-1}

rustup run "$RELEASE_TOOLCHAIN" rustc --version >/dev/null 2>&1 ||
    rustup toolchain install "$RELEASE_TOOLCHAIN" --profile minimal
fuzz_root=$KVMBOX_TOOLS/cargo-fuzz
if [ ! -x "$fuzz_root/bin/cargo-fuzz" ]; then
    echo "fuzz: installing cargo-fuzz into $fuzz_root"
    cargo install --locked cargo-fuzz --root "$fuzz_root"
fi
export PATH="$fuzz_root/bin:$PATH"

targets=${FUZZ_TARGETS:-$(cd fuzz/fuzz_targets && ls ./*.rs | sed 's|^\./||; s|\.rs$||')}
nice -n 19 cargo "+$RELEASE_TOOLCHAIN" fuzz build

scratch=$(mktemp -d "${TMPDIR:-/tmp}/kvmbox-fuzz.XXXXXX")
trap 'rm -rf "$scratch"' EXIT INT TERM

# One target: its corpus grows in scratch, its log says what libFuzzer saw.
run_one() {
    t=$1
    rc=0
    mkdir -p "$scratch/$t/corpus" "$scratch/$t/tmp" "fuzz/artifacts/$t"
    # The targets' scratch files go under TMPDIR, removed with the rest.
    TMPDIR=$scratch/$t/tmp nice -n 19 cargo "+$RELEASE_TOOLCHAIN" fuzz run "$t" \
        "$scratch/$t/corpus" "fuzz/corpus/$t" -- \
        -max_total_time="$seconds" -timeout=30 -rss_limit_mb=2048 -max_len=65536 \
        -print_final_stats=1 >"$scratch/$t.log" 2>&1 || rc=$?
    summary=$(grep -E '^#[0-9]+.*(DONE|pulse|NEW|REDUCE)' "$scratch/$t.log" | tail -1)
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$scratch/$t.log")
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$scratch/$t.log")
    echo "fuzz $t: ${seconds}s, ${execs:-?} runs, ${rate:-?}/s, ${summary:-no stats}"
    if [ "$rc" != 0 ]; then
        echo "fuzz $t: FAILED (exit $rc); its log:" >&2
        tail -60 "$scratch/$t.log" >&2
        return 1
    fi
}

# In batches of FUZZ_JOBS (each target runs its full time regardless).
failed=0
set -- $targets
while [ $# -gt 0 ]; do
    pids=
    n=0
    while [ $# -gt 0 ] && [ "$n" -lt "$jobs" ]; do
        run_one "$1" &
        pids="$pids $!"
        n=$((n + 1))
        shift
    done
    for p in $pids; do
        wait "$p" || failed=1
    done
done
exit "$failed"
