# Helpers for bench parts: timing by repetition, peak memory by GNU time.
set -eu
K=$KVMBOX_BIN

# wall_ms N CMD…: mean wall time of N runs, in milliseconds (3 decimals).
wall_ms() {
    n=$1; shift
    start=$(date +%s%N)
    i=0; while [ $i -lt "$n" ]; do "$@" >/dev/null 2>&1; i=$((i + 1)); done
    end=$(date +%s%N)
    echo "$start $end $n" | awk '{ printf "%.3f", ($2 - $1) / $3 / 1e6 }'
}

# peak_kib CMD…: maximum resident set size of one run, in KiB.
peak_kib() {
    /usr/bin/time -f %M -o peak.txt "$@" >/dev/null 2>&1 || true
    tail -n 1 peak.txt
}

# ratio A B: A / B to two decimals.
ratio() { echo "$1 $2" | awk '{ if ($2 > 0) printf "%.2f", $1 / $2; else print "n/a" }'; }

# row WHAT OURS PEER: a table row with the ratio of the two.
row() { echo "| $1 | $2 | $3 | $(ratio "${2%% *}" "${3%% *}") |"; }
