#!/bin/sh
# `make bench`: one table of measured figures, each kvmbox number next to a
# peer measured in the same run where one exists. Every bench/*.sh part
# prints its own rows; this script prints the header, runs them, and
# writes the same rows as JSON (BENCH_JSON, default build/bench.json).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
export KVMBOX_BIN="${KVMBOX_BIN:-$here/../build/kvmbox}"
export BENCHLIB="$here/lib.sh"
json=${BENCH_JSON:-$here/../build/bench.json}
rows=$(mktemp)
trap 'rm -f "$rows"' EXIT
start=$(date +%s)
echo "| what | kvmbox | peer | ratio |"
echo "|---|---|---|---|"
for part in "$here"/[a-z]*.sh; do
    case "$(basename "$part")" in run.sh|lib.sh|soak-*.sh) continue ;; esac
    work=$(mktemp -d)
    (cd "$work" && sh "$part") >"$work.out" 2>"$work.err" ||
        echo "| $(basename "$part" .sh) | failed: $(tail -n 1 "$work.err") | | |" >>"$work.out"
    tee -a "$rows" <"$work.out"
    rm -rf "$work" "$work.out" "$work.err"
done
took=$(($(date +%s) - start))
echo
echo "$(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, ${took} s"
# One object a row; each cell as printed (figures carry their units).
mkdir -p "$(dirname "$json")"
awk -v took="$took" '
    function esc(s) { gsub(/\\/, "\\\\", s); gsub(/"/, "\\\"", s); gsub(/^ +| +$/, "", s); return s }
    BEGIN { printf "{\"seconds\": %d, \"rows\": [", took }
    /^\|/ {
        n = split($0, c, "|")
        printf "%s\n  {\"what\": \"%s\", \"kvmbox\": \"%s\", \"peer\": \"%s\", \"ratio\": \"%s\"}",
            (k++ ? "," : ""), esc(c[2]), esc(c[3]), esc(c[4]), esc(c[5])
    }
    END { print "\n]}" }' "$rows" >"$json"
echo "JSON: $json"
