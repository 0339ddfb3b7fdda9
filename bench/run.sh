#!/bin/sh
# `make bench`: one table of measured figures, each kvmbox number next to a
# peer measured in the same run where one exists. Every bench/*.sh part
# prints its own rows; this script prints the header and runs them.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
export KVMBOX_BIN="${KVMBOX_BIN:-$here/../build/kvmbox}"
export BENCHLIB="$here/lib.sh"
echo "| what | kvmbox | peer | ratio |"
echo "|---|---|---|---|"
for part in "$here"/[a-z]*.sh; do
    case "$(basename "$part")" in run.sh|lib.sh) continue ;; esac
    work=$(mktemp -d)
    (cd "$work" && sh "$part") || echo "| $(basename "$part" .sh) | failed | | |"
    rm -rf "$work"
done
